"""`foodcls tune`: a real Optuna study in SQLite under tmp_path; kill and continue; pruning; bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foodcls import runs
from foodcls.errors import ConfigError
from foodcls.experiments.tune import load_space, run_tune, show_tune
from tests.conftest import REPO

SPACE = """
train.lr: {float: [0.0001, 0.3], log: true}
model.hidden: {choice: [[8], [16, 16]]}
model.activation: {choice: [relu, sigmoid]}
"""


@pytest.fixture
def tune_files(config_file, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return config_file, space


OVERRIDES = ["data.val_fraction=0.2", "train.epochs=20", "train.optimizer=adam"]


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=REPO, **kwargs)


def test_a_search_killed_midway_continues_with_its_finished_trials_and_prunes(tune_files, tmp_path):
    config, space = tune_files
    args = [sys.executable, "-m", "foodcls", "tune", "--config", str(config), "--space", str(space), "--trials", "10",
            "--study", "s", "--runs-root", str(tmp_path / "runs"), "--pruner", "median", "--json"]
    for override in OVERRIDES:
        args += ["--set", override]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_dir = tmp_path / "runs" / "tune-s"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(study_dir.glob("trial-*/summary.json"))) < 4:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = show_tune("s", runs_root=tmp_path / "runs")
    finished = {t["number"]: t for t in before["trials"] if t["state"] in ("complete", "pruned")}
    assert 1 <= len(finished) < 10

    result = cli("tune", "--config", config, "--space", space, "--trials", 10, "--study", "s", "--runs-root", tmp_path / "runs",
                 *[x for o in OVERRIDES for x in ("--set", o)], "--json")
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    counted = [t for t in after["trials"] if t["state"] in ("complete", "pruned", "fail")]
    assert len(counted) == 10
    for number, trial in finished.items():  # the trials done before the kill are intact
        assert after["trials"][number]["value"] == trial["value"] and after["trials"][number]["params"] == trial["params"]
    pruned = [t for t in after["trials"] if t["state"] == "pruned"]
    assert pruned, "the median pruner stopped no trial"
    assert runs.read_summary(Path(pruned[0]["run_dir"]))["status"] == "pruned"
    listed = cli("runs", "list", "--runs-root", tmp_path / "runs", "--json")
    assert "pruned" in {r["status"] for r in json.loads(listed.stdout)}

    # best.yaml is an ordinary config that reproduces the best trial.
    best = after["best"]
    reproduced = cli("train", "--config", best["config"], "--runs-root", tmp_path / "again", "--json")
    assert json.loads(reproduced.stdout)["val_accuracy"] == pytest.approx(best["value"])


def test_the_same_study_seed_gives_the_same_parameters(tune_files, tmp_path):
    config, space = tune_files
    reports = [run_tune(config, space, trials=4, sampler="tpe", pruner="none", overrides=OVERRIDES + ["train.epochs=2"], study_name="d",
                        runs_root=tmp_path / f"r{i}") for i in range(2)]
    assert [t["params"] for t in reports[0]["trials"]] == [t["params"] for t in reports[1]["trials"]]
    assert [t["value"] for t in reports[0]["trials"]] == [t["value"] for t in reports[1]["trials"]]


@pytest.mark.parametrize(("space", "fragment"), [
    ("train.lrr: {float: [0.1, 1]}\n", "did you mean 'train.lr'"),
    ("train.lr: {float: [0.5, 0.1]}\n", "low 0.5 > high 0.1"),
    ("train.lr: {float: [0, 0.1], log: true}\n", "log: true needs low > 0"),
    ("train.lr: {floats: [0, 0.1]}\n", "expected exactly one of"),
    ("train.epochs: {int: [1.5, 3]}\n", "int must be [low, high]"),
    ("model.hidden: {choice: []}\n", "non-empty list"),
])
def test_bad_search_spaces_are_one_line_and_write_nothing(tune_files, tmp_path, space, fragment):
    config, path = tune_files
    path.write_text(space)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_space(path)
    result = cli("tune", "--config", config, "--space", path, "--trials", 2, "--runs-root", tmp_path / "runs",
                 *[x for o in OVERRIDES for x in ("--set", o)])
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unusable_storage_or_cluster_is_one_line(tune_files, tmp_path):
    config, space = tune_files
    for extra, fragment in [(["--storage", "postgresql://nobody@127.0.0.1:1/nothing"], "--storage"),
                            (["--storage", "sqlite:////nonexistent/dir/x.db"], "--storage"),
                            (["--cluster", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler")]:
        result = cli("tune", "--config", config, "--space", space, "--trials", 2, "--runs-root", tmp_path / "runs", *extra,
                     *[x for o in OVERRIDES for x in ("--set", o)])
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_storage_password_is_never_shown(tune_files, tmp_path):
    from foodcls.experiments.tune import redacted

    assert redacted("postgresql://user:s3cret@db.example:5432/optuna") == "postgresql://user:***@db.example:5432/optuna"
    assert redacted("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db" and redacted("mysql://u@h/db") == "mysql://u@h/db"
    config, space = tune_files
    result = cli("tune", "--config", config, "--space", space, "--trials", 2, "--runs-root", tmp_path / "runs",
                 "--storage", "postgresql://user:s3cret@127.0.0.1:1/optuna", *[x for o in OVERRIDES for x in ("--set", o)])
    assert result.returncode == 1 and "s3cret" not in result.stderr + result.stdout
    assert "postgresql://user:***@127.0.0.1:1/optuna" in result.stderr
