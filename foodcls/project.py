"""`foodcls init [DIR]`: a working directory for a wheel install — the shipped recipes (package data) and
the demo sets (generated, byte-identical to a checkout's data/), so that the README's commands run
without the repository."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from foodcls.errors import ConfigError
from foodcls.fileio import atomic_write_text
from foodcls.synth import write_demo_set

# data/<name>: (rich, archetypes), as `foodcls data synth` writes them with the default seed.
DEMO_SETS = {"demo": (False, "demo"), "demo-rich": (True, "demo"), "synth-off": (True, "off")}


def recipe_names() -> list[str]:
    return sorted(p.name for p in resources.files("foodcls.recipes").iterdir() if p.name.endswith(".yaml"))


def init_project(directory: str | Path = ".") -> list[Path]:
    """Write DIR/configs/*.yaml and DIR/data/{demo,demo-rich,synth-off}/{train,test}.csv; refuses, before
    writing anything, when any of those files exists. Returns the files written."""
    root = Path(directory)
    recipes = recipe_names()
    targets = [root / "configs" / name for name in recipes]
    targets += [root / "data" / name / f"{split}.csv" for name in DEMO_SETS for split in ("train", "test")]
    existing = next((t for t in targets if t.exists()), None)
    if existing is not None:
        raise ConfigError(f"{existing}: already exists; foodcls init writes only into a directory without these files")
    for name in recipes:
        atomic_write_text(root / "configs" / name, resources.files("foodcls.recipes").joinpath(name).read_text(encoding="utf-8"))
    for name, (rich, kind) in DEMO_SETS.items():
        write_demo_set(root / "data" / name, rich=rich, kind=kind)
    return targets
