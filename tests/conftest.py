"""Shared fixtures: a small synthetic data set, a shrunken copy of the reference config, a trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from foodcls.config import load_config
from foodcls.synth import write_demo_set

# Fuzzing budgets: `ci` (the default, about a minute in all) and `long` (100x; --hypothesis-profile=long).
settings.register_profile("ci", max_examples=40, deadline=10_000)
settings.register_profile("long", max_examples=4000, deadline=10_000)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
# The real Open Food Facts samples beside the repository (never copied into it). Tests that need them skip
# where they are absent, but fail where FOODCLS_REQUIRE_SAMPLES=1 (CI sets it: a silent skip there would
# hide every real-data check).
SAMPLES = Path(os.environ.get("FOODCLS_OFF_SAMPLES", REPO.parent / "shared" / "data" / "off-exports"))


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        message = f"real OFF samples not found at {SAMPLES} (set FOODCLS_OFF_SAMPLES)"
        if os.environ.get("FOODCLS_REQUIRE_SAMPLES") == "1":
            pytest.fail(message + "; FOODCLS_REQUIRE_SAMPLES=1 asks for them")
        pytest.skip(message)
    return SAMPLES


needs_samples = pytest.mark.usefixtures("samples")


def write_config(path: Path, data_dir: Path, **train_overrides) -> Path:
    """The real configs/mlp.yaml with its data pointed at data_dir and training shrunk."""
    raw = yaml.safe_load((REPO / "configs" / "mlp.yaml").read_text())
    raw["data"] = {"train": str(data_dir / "train.csv"), "test": str(data_dir / "test.csv")}
    raw["train"].update({"epochs": 4, "batch_size": 64, **train_overrides})
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_set(out, n_train=600, n_test=200, seed=7)
    return out


@pytest.fixture
def config_file(tmp_path, demo_dir) -> Path:
    return write_config(tmp_path / "small.yaml", demo_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_dir):
    from foodcls.training.fit import train

    tmp = tmp_path_factory.mktemp("trained")
    config = load_config(write_config(tmp / "small.yaml", demo_dir, epochs=30, optimizer="adam", lr=0.01))
    return train(config, runs_root=tmp / "runs", name="small")
