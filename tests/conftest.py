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

# The longest files (a wheel built and installed, the docs' commands run, clusters started), started first: with two
# workers each taking a file at a time (pyproject's addopts), one of them last would run on alone for a minute or two.
LONGEST_FIRST = ("test_wheel.py", "test_docs.py", "test_cluster.py", "test_tune.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the order inside each file, and of the other files, is kept


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


# `foodcls train …` whose every epoch waits, once its metrics line is written, until the test says go on: the
# real command line (its signal handling, exit codes, progress callback) with the epoch callback wrapped.
PACED = """
import sys
from foodcls.training import fit

def paced(callback):
    def on_epoch(record, total):
        if callback is not None:
            callback(record, total)
        print(record["epoch"], flush=True)
        sys.stdin.readline()
    return on_epoch

train, resume = fit.train, fit.resume
fit.train = lambda *a, on_epoch=None, **k: train(*a, on_epoch=paced(on_epoch), **k)
fit.resume = lambda *a, on_epoch=None, **k: resume(*a, on_epoch=paced(on_epoch), **k)
from foodcls.cli import app
sys.argv[0] = "foodcls"
app()
"""


class PacedRun:
    """A training in a child process that a test stops at an exact epoch (to kill it, signal it, or try to
    resume it while it lives) — an event, never a race against the clock."""

    def __init__(self, *args: object, cwd: Path | None = None) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen([sys.executable, "-c", PACED, *map(str, args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd or REPO)

    def next_epoch(self, timeout: float = 120) -> int:
        """The epoch the run now waits after (it wrote that epoch's metrics line and waits for go_on)."""
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the run reported no epoch in {timeout:g} s"
        line = self.process.stdout.readline()
        assert line.strip().isdigit(), f"the run ended before the epoch a test waits for: {line!r} {self.process.stderr.read()[-2000:]}"
        return int(line)

    def go_on(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def stop_at(self, epoch: int) -> None:
        """Let the run go on until it waits after `epoch`."""
        while (reached := self.next_epoch()) < epoch:
            self.go_on()
        assert reached == epoch
