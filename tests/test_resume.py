"""Exact resume: a run killed at any moment and resumed ends with exactly the uninterrupted run's model."""

import json
import signal
import subprocess
import sys

import numpy as np

from foodcls import runs
from foodcls.inference.checkpoint import load_checkpoint
from foodcls.config import load_config
from foodcls.training.fit import resume, train
from tests.conftest import PacedRun

# Adam (optimizer state), a cosine schedule (scheduler state), a val split and early stopping that
# never fires (its counter is state too), feature dropout (random per epoch) and label smoothing.
RESUMABLE = ["train.optimizer=adam", "train.lr=0.003", "train.scheduler=cosine", "data.val_fraction=0.2",
             "train.early_stopping.patience=1000", "train.feature_dropout=0.1", "train.label_smoothing=0.05"]


def assert_same_model(a, b):
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first.meta["epoch"] == second.meta["epoch"]
    for name in first.arrays:
        if name.startswith(("net.", "optim.")):
            assert np.array_equal(first.arrays[name], second.arrays[name]), name


def metric_lines(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_metrics(run_dir)]


def kill_mid_run(config_file, runs_root, overrides, epoch):
    """Start `foodcls train`, SIGKILL it while it waits after `epoch` (its metrics line written); the run directory."""
    args = ["train", "--config", config_file, "--runs-root", runs_root]
    for override in overrides:
        args += ["--set", override]
    run = PacedRun(*args)
    try:
        run.stop_at(epoch)
    finally:
        run.process.send_signal(signal.SIGKILL)
        run.process.communicate()
    run_dir = next(runs_root.glob("small-*"))
    assert runs.run_overview(run_dir)["status"] == "interrupted"
    return run_dir


def resume_and_compare(run_dir, reference, epochs):
    result = subprocess.run([sys.executable, "-m", "foodcls", "train", "--resume", str(run_dir), "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs_run"] == epochs
    assert_same_model(runs.last_checkpoint(run_dir), reference.last_checkpoint)
    assert_same_model(runs.best_checkpoint(run_dir), reference.best_checkpoint)
    assert metric_lines(run_dir) == metric_lines(reference.run_dir)  # each epoch exactly once
    assert runs.read_summary(run_dir)["status"] == "finished"


def test_sigkill_between_two_checkpoint_writes_then_resume_ends_identical(config_file, tmp_path):
    # A checkpoint every 20 epochs (and never by the clock): killed at epoch 47, the run resumes from epoch 40
    # and redoes 41-47, whose metrics lines it had written.
    overrides = [*RESUMABLE, "train.epochs=300", "train.checkpoint_seconds=86400", "train.checkpoint_every=20"]
    reference = train(load_config(config_file, overrides), runs_root=tmp_path / "reference", name="r")
    run_dir = kill_mid_run(config_file, tmp_path / "killed", overrides, 47)
    assert load_checkpoint(runs.last_checkpoint(run_dir)).meta["epoch"] == 40
    assert len(runs.read_metrics(run_dir)) == 47
    resume_and_compare(run_dir, reference, 300)


def test_sigkill_before_the_first_checkpoint_then_resume_starts_over_identically(config_file, tmp_path):
    overrides = [*RESUMABLE, "train.epochs=60", "train.checkpoint_seconds=1000"]
    reference = train(load_config(config_file, overrides), runs_root=tmp_path / "reference", name="r")
    run_dir = kill_mid_run(config_file, tmp_path / "killed", overrides, 10)
    assert not runs.last_checkpoint(run_dir).exists() and len(runs.read_metrics(run_dir)) == 10
    resume_and_compare(run_dir, reference, 60)


def test_resume_after_ctrl_c_with_more_epochs_equals_one_longer_run(config_file, tmp_path):
    def stop_at_7(record, total):
        if record["epoch"] == 7:
            raise KeyboardInterrupt

    short = train(load_config(config_file, [*RESUMABLE, "train.scheduler=none", "train.epochs=10"]),
                  runs_root=tmp_path / "a", name="s", on_epoch=stop_at_7)
    assert short.status == "interrupted"
    resumed = resume(short.run_dir, ["train.epochs=20"])
    longer = train(load_config(config_file, [*RESUMABLE, "train.scheduler=none", "train.epochs=20"]), runs_root=tmp_path / "b", name="l")
    assert resumed.epochs_run == 20
    assert_same_model(resumed.last_checkpoint, longer.last_checkpoint)
    assert [r["epoch"] for r in runs.read_metrics(short.run_dir)] == list(range(1, 21))


def test_resume_refuses_a_changed_model(config_file, tmp_path):
    import pytest

    from foodcls.errors import ConfigError

    run = train(load_config(config_file), runs_root=tmp_path, name="m")
    with pytest.raises(ConfigError, match="model section cannot change"):
        resume(run.run_dir, ["model.hidden=[8]"])


def test_ctrl_c_in_the_middle_of_an_epoch_saves_the_last_completed_epoch(config_file, tmp_path, monkeypatch):
    import foodcls.training.stack as training

    overrides = [*RESUMABLE, "train.epochs=12", "train.checkpoint_every=5"]
    real = training.loss_gradients
    calls = {"n": 0}

    def interrupt_in_epoch_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7 * 8 + 3:  # 8 batches per epoch (480 rows, batch 64): 3 steps into epoch 8
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "loss_gradients", interrupt_in_epoch_8)
    interrupted = train(load_config(config_file, overrides), runs_root=tmp_path / "a", name="i")
    monkeypatch.setattr(training, "loss_gradients", real)
    assert interrupted.status == "interrupted" and interrupted.epochs_run == 7
    assert load_checkpoint(interrupted.last_checkpoint).meta["epoch"] == 7
    resume(interrupted.run_dir)
    reference = train(load_config(config_file, overrides), runs_root=tmp_path / "b", name="r")
    assert_same_model(interrupted.last_checkpoint, reference.last_checkpoint)


def test_resume_of_a_run_still_training_is_refused_naming_its_pid_and_a_killed_run_is_not_left_locked(config_file, tmp_path):
    import pytest

    from foodcls.errors import RunError

    run = PacedRun("train", "--config", config_file, "--runs-root", tmp_path, "--set", "train.epochs=100000")
    process = run.process
    try:
        run.stop_at(2)  # it lives, holding its lock, and waits
        run_dir = next(tmp_path.glob("small-*"))
        metrics_before = (run_dir / runs.METRICS_FILE).stat().st_size
        with pytest.raises(RunError, match=rf"still training in another process \(pid {process.pid}\)"):
            resume(run_dir)
        cli = subprocess.run([sys.executable, "-m", "foodcls", "train", "--resume", str(run_dir)], capture_output=True, text=True)
        assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1 and f"pid {process.pid}" in cli.stderr
        assert runs.read_summary(run_dir)["pid"] == process.pid  # the live run's files are untouched by the refusals
        assert (run_dir / runs.METRICS_FILE).stat().st_size == metrics_before
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    runs.lock_run(run_dir).close()  # the kernel dropped the killed process's lock
