import dataclasses
import json
import sys

import numpy as np
import pytest

from foodcls import runs
from foodcls.inference.checkpoint import load_checkpoint
from foodcls.config import load_config
from foodcls.errors import DataError
from foodcls.training.fit import train
from tests.conftest import REPO, write_config

REPO_CONFIG = REPO / "configs" / "mlp.yaml"


def metrics_without_time(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_metrics(run_dir)]


def test_run_directory_holds_config_metrics_checkpoints_summary_and_plots(trained_run):
    run_dir = trained_run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "learning_curves.png", "confusion_matrix.png", "grad_norms.png",
                 "MODEL_CARD.md"):
        assert (run_dir / name).is_file(), name
    assert trained_run.best_checkpoint.is_file() and trained_run.last_checkpoint.is_file()
    records = runs.read_metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, 31))
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "grad_norms"} <= set(records[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 30
    assert summary["test_accuracy"] == trained_run.test_accuracy
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_the_summary_says_while_running_and_after_what_the_run_is_and_how_it_ended(tmp_path):
    import os
    import platform
    from datetime import datetime, timedelta, timezone

    rows = ["beverages,0.2,5,0.1,0", "meats,20,1,12,2", "snacks,7,60,22,1", "desserts,4,15,3,3"] * 3
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    config = load_config(write_config(tmp_path / "c.yaml", tmp_path), [f"data.train={tmp_path / 'tiny.csv'}", "data.val=null",
                                                                       "data.test=null", "train.epochs=2"])
    seen = []

    def look(record, total):
        run_dir = next((tmp_path / "runs").iterdir())
        seen.append(runs.read_summary(run_dir))
        if len(seen) == 2:
            raise RuntimeError("the callback broke")

    before = datetime.now(timezone.utc).replace(microsecond=0)
    with pytest.raises(RuntimeError, match="the callback broke"):
        train(config, runs_root=tmp_path / "runs", name="tiny", on_epoch=look)
    running = seen[0]
    assert running["status"] == "running" and running["pid"] == os.getpid() and running["name"] == "tiny"
    assert running["monitor"] == "train_loss" and running["data"] == {"train": 12, "val": 0, "test": 0}
    assert running["versions"]["python"] == platform.python_version() and set(running["versions"]) == {"foodcls", "torch", "numpy", "python"}
    started = datetime.fromisoformat(running["started_at"])
    assert started.utcoffset() == timedelta(0) and started.microsecond == 0 and before <= started <= before + timedelta(minutes=5)
    run_dir = next((tmp_path / "runs").iterdir())
    failed = runs.read_summary(run_dir)
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: the callback broke"
    assert failed["started_at"] == running["started_at"] and datetime.fromisoformat(failed["finished_at"]) >= started


def test_how_a_run_ends_pruned_early_stopped_and_with_the_rate_lowered_on_a_plateau(tmp_path):
    from foodcls.training.run import RunPruned

    rows = ["beverages,0.2,5,0.1,0", "meats,20,1,12,2", "snacks,7,60,22,1", "desserts,4,15,3,3"] * 3
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    base = [f"data.train={tmp_path / 'tiny.csv'}", f"data.val={tmp_path / 'tiny.csv'}", "data.test=null", "train.optimizer=sgd"]

    def prune_at_once(record, total):
        raise RunPruned

    pruned = train(load_config(write_config(tmp_path / "c.yaml", tmp_path), [*base, "train.epochs=5"]), runs_root=tmp_path / "runs",
                   name="pruned", on_epoch=prune_at_once)
    summary = runs.read_summary(pruned.run_dir)
    assert (summary["status"], summary["stop_reason"], summary["epochs_run"]) == ("pruned", "pruned", 1)
    assert (pruned.run_dir / "learning_curves.png").is_file()  # one epoch is enough to draw
    # A rate of 1e-9 leaves the validation loss where it was: no improvement from epoch 2 on. Early stopping after
    # 3 such epochs; the plateau schedule halves the rate once 1 epoch has passed without one (after epochs 3, 5).
    flat = [*base, "train.lr=1e-9", "train.epochs=20", "train.early_stopping={patience: 4, monitor: val_loss, min_delta: 0.000001}",
            "train.scheduler=plateau", "train.scheduler_step_size=1"]
    stopped = train(load_config(write_config(tmp_path / "c.yaml", tmp_path), flat), runs_root=tmp_path / "runs", name="flat")
    summary = runs.read_summary(stopped.run_dir)
    assert (summary["status"], summary["stop_reason"], summary["epochs_run"]) == ("finished", "early_stopping", 5)
    records = runs.read_metrics(stopped.run_dir)
    assert [r["lr"] for r in records] == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10], rel=1e-6)
    # The finished run's figures: its time (summed from the epochs' records), the evaluation of its splits, the
    # calibration its validation rows give (train.calibration: auto), and its plots.
    seconds = sum(r["seconds"] for r in records)
    assert summary["train_seconds"] == pytest.approx(seconds, abs=2e-3) and summary["train_seconds"] > 0
    assert summary["seconds_per_epoch"] == pytest.approx(seconds / 5, abs=2e-4)
    assert set(summary["evaluation"]) == {"val"} and summary["warnings"] == []
    assert load_checkpoint(stopped.best_checkpoint).meta["temperature"] > 0
    assert "conformal_scores" in load_checkpoint(stopped.best_checkpoint).arrays
    assert (stopped.run_dir / "learning_curves.png").is_file() and (stopped.run_dir / "MODEL_CARD.md").is_file()


def test_each_rows_weight_is_its_files_times_its_classs():
    from foodcls.data import LabelledData
    from foodcls.training.run import row_weights

    config = load_config(REPO_CONFIG, ["train.class_weights=balanced"])
    data = LabelledData(np.zeros((3, 4), np.float32), np.array([0, 0, 1]), ("protein", "carbs", "fat", "additives"), "",
                        weights=np.array([1.0, 2.0, 1.0], np.float32))
    # Balanced over 4 classes: n / (4 · count) = 3/8 for class 0 (2 rows), 3/4 for class 1; times the file weights.
    assert row_weights(config, data).tolist() == pytest.approx([0.375, 0.75, 0.75])
    plain = load_config(REPO_CONFIG)
    assert row_weights(plain, data).tolist() == [1.0, 2.0, 1.0]
    assert row_weights(plain, dataclasses.replace(data, weights=np.ones(3, np.float32))) is None  # all 1: no weights at all


def test_model_fits_a_tiny_dataset(tmp_path):
    rows = ["beverages,0.2,5,0.1,0", "meats,20,1,12,2", "snacks,7,60,22,1", "desserts,4,15,3,3"] * 5
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    config = load_config(write_config(tmp_path / "c.yaml", tmp_path), [
        f"data.train={tmp_path / 'tiny.csv'}", f"data.test={tmp_path / 'tiny.csv'}",
        "train.optimizer=adam", "train.epochs=300", "train.batch_size=8",
    ])
    result = train(config, runs_root=tmp_path / "runs", name="tiny")
    assert result.test_accuracy == 1.0


def test_training_leaves_the_process_able_to_represent_subnormal_floats(config_file, tmp_path):
    # Training flushes subnormals for speed; code run later in the same process (hypothesis refuses to
    # generate floats otherwise) must find IEEE arithmetic as it was.
    smallest_normal = sys.float_info.min
    assert smallest_normal / 2 > 0
    train(load_config(config_file, ["train.epochs=1"]), runs_root=tmp_path / "runs", name="a")
    assert smallest_normal / 2 > 0
    assert np.float32(1e-39) * np.float32(1.0) > 0


def test_same_config_and_seed_give_identical_metrics_and_weights(config_file, tmp_path):
    config = load_config(config_file)
    first = train(config, runs_root=tmp_path / "runs", name="a")
    second = train(config, runs_root=tmp_path / "runs", name="a")
    assert first.run_dir != second.run_dir  # same second, still a new directory
    assert metrics_without_time(first.run_dir) == metrics_without_time(second.run_dir)
    a, b = load_checkpoint(first.last_checkpoint), load_checkpoint(second.last_checkpoint)
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays if k.startswith("net."))
    other_seed = train(load_config(config_file, ["train.seed=1"]), runs_root=tmp_path / "runs", name="a")
    assert metrics_without_time(other_seed.run_dir) != metrics_without_time(first.run_dir)


def test_interrupt_leaves_a_valid_run_whose_last_checkpoint_is_the_last_completed_epoch(config_file, tmp_path):
    def stop_after_two(record, total):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    config = load_config(config_file, ["train.epochs=10", "train.checkpoint_every=5"])
    result = train(config, runs_root=tmp_path / "runs", name="x", on_epoch=stop_after_two)
    assert result.status == "interrupted" and result.epochs_run == 2
    assert load_checkpoint(result.last_checkpoint).meta["epoch"] == 2
    assert json.loads((result.run_dir / "summary.json").read_text())["status"] == "interrupted"


def test_bad_data_writes_nothing(config_file, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("meats,20,1,12,2\nmeats,20,x,12,2\n")
    with pytest.raises(DataError, match=r"bad.csv:2: carbs is not a number"):
        train(load_config(config_file, [f"data.train={bad}"]), runs_root=tmp_path / "runs", name="bad")
    assert not (tmp_path / "runs").exists()


def test_best_checkpoint_is_chosen_on_training_loss_without_validation_data(trained_run):
    summary = runs.read_summary(trained_run.run_dir)
    records = runs.read_metrics(trained_run.run_dir)
    assert summary["monitor"] == "train_loss"
    assert summary["best_epoch"] == min(records, key=lambda r: r["train_loss"])["epoch"]


def test_runs_trained_in_lockstep_end_bit_identical_to_the_same_runs_trained_alone(config_file, tmp_path):
    from foodcls.training.fit import train_many

    overrides = [["train.lr=0.05"], ["train.lr=0.01", "train.seed=3"], ["train.optimizer=adam", "train.lr=0.003"],
                 ["train.momentum=0.9", "train.class_weights=balanced"],
                 ["train.optimizer=adam", "train.feature_dropout=0.2", "train.label_smoothing=0.1", "train.seed=5",
                  "train.class_weights=sqrt_balanced"]]
    configs = [load_config(config_file, o + ["train.epochs=6"]) for o in overrides]
    together = train_many([(c, f"k{i}") for i, c in enumerate(configs)], tmp_path / "together")
    for config, stacked in zip(configs, together):
        alone = train(config, runs_root=tmp_path / "alone", name="solo")
        a, b = load_checkpoint(stacked.last_checkpoint), load_checkpoint(alone.last_checkpoint)
        assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays if k.startswith(("net.", "optim.")))
        assert metrics_without_time(stacked.run_dir) == metrics_without_time(alone.run_dir)


def test_runs_that_leave_the_stack_at_different_epochs_still_match_solo_runs_bit_for_bit(config_file, tmp_path):
    from foodcls import runs
    from foodcls.training.fit import train_many

    common = ["data.val_fraction=0.2", "train.optimizer=adam", "train.lr=0.01"]
    overrides = [["train.epochs=4"], ["train.epochs=12", "train.seed=2"],
                 ["train.epochs=40", "train.early_stopping.patience=2", "train.early_stopping.min_delta=0.05"],
                 ["train.epochs=9", "train.momentum=0.5", "train.optimizer=sgd"]]
    configs = [load_config(config_file, [*common, *o]) for o in overrides]
    together = train_many([(c, f"k{i}") for i, c in enumerate(configs)], tmp_path / "together")
    ends = [r.epochs_run for r in together]
    assert len(set(ends)) == 4 and ends[2] < 40 and runs.read_summary(together[2].run_dir)["stop_reason"] == "early_stopping"
    for config, stacked in zip(configs, together):
        alone = train(config, runs_root=tmp_path / "alone", name="solo")
        for a_path, b_path in ((stacked.last_checkpoint, alone.last_checkpoint), (stacked.best_checkpoint, alone.best_checkpoint)):
            a, b = load_checkpoint(a_path), load_checkpoint(b_path)
            assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays), a_path
        assert metrics_without_time(stacked.run_dir) == metrics_without_time(alone.run_dir)


def test_runs_with_different_row_counts_in_one_stack_match_solo_runs_closely(tmp_path, demo_dir):
    import csv

    from foodcls.inference.predict import load_predictor
    from foodcls.training.fit import train_many

    rows = list(csv.reader((demo_dir / "train.csv").read_text().splitlines()))
    configs = []
    for i, n in enumerate((200, 333, 450)):  # different numbers of batches and partial last batches
        path = tmp_path / f"train{n}.csv"
        path.write_text("\n".join(",".join(r) for r in rows[: n + 1]) + "\n")
        configs.append(load_config(write_config(tmp_path / f"c{i}.yaml", demo_dir), [f"data.train={path}", "train.epochs=5",
                                                                                     "train.optimizer=adam", "train.lr=0.01"]))
    together = train_many([(c, f"r{i}") for i, c in enumerate(configs)], tmp_path / "together")
    x = np.array([[20, 1, 12, 2], [3.5, 14, 3, 1], [0.2, 10, 0, 2], [6, 60, 20, 1]], dtype=np.float32)
    for config, stacked in zip(configs, together):
        alone = train(config, runs_root=tmp_path / "alone", name="solo")
        p_stacked = load_predictor(stacked.last_checkpoint).probabilities(x)
        p_alone = load_predictor(alone.last_checkpoint).probabilities(x)
        assert np.abs(p_stacked - p_alone).max() <= 1e-4


def test_balanced_class_weights_can_follow_only_the_rows_that_are_not_train_only(config_file):
    from foodcls.training.run import class_weights

    labels = np.array([0] * 6 + [1] * 2 + [0, 1, 2, 3] * 10)  # 8 real rows (6 beverages, 2 meats), 40 synthetic
    train_only = np.array([False] * 8 + [True] * 40)
    weights = lambda *o: class_weights(load_config(config_file, list(o)), labels, train_only)  # noqa: E731
    assert weights("train.class_weights=balanced") == pytest.approx(48 / (4 * np.array([16, 12, 10, 10])))
    real = weights("train.class_weights=balanced", "train.class_weights_from=not_train_only")
    assert real == pytest.approx([8 / 24, 8 / 8, 1, 1])  # classes the real rows lack weigh 1
    assert weights("train.class_weights=sqrt_balanced", "train.class_weights_from=not_train_only") == pytest.approx(np.sqrt(real))
    assert weights("train.class_weights=none") is None


def test_feature_dropout_puts_fill_values_in_about_its_share_of_the_inputs_and_leaves_the_rest(config_file, tmp_path):
    import torch

    from foodcls.data import load_splits
    from foodcls.training.run import Run, RunSpec
    from foodcls.training.stack import Stack

    def first_epoch_inputs(*overrides):
        config = load_config(config_file, list(overrides))
        run = Run(RunSpec(config, tmp_path / "r", "r"), load_splits(config), torch.device("cpu"))
        return Stack([run], torch.device("cpu")).epoch_batches()[0][0, :, :-1], torch.from_numpy(run.fill_input)  # less the bias column

    plain, fill = first_epoch_inputs()
    dropped, same_fill = first_epoch_inputs("train.feature_dropout=0.3")
    assert torch.equal(fill, same_fill)
    changed = dropped != plain
    assert torch.equal(dropped[changed], fill.expand_as(dropped)[changed])  # a changed value is its fill value
    could_change = plain != fill  # a value already equal to its fill value cannot show a change
    assert abs(changed.sum().item() / could_change.sum().item() - 0.3) < 0.03
    again, _ = first_epoch_inputs("train.feature_dropout=0.3")
    assert torch.equal(again, dropped)  # a function of seed and epoch


def test_the_model_card_says_what_the_run_is_how_it_scored_and_which_file_it_describes(trained_run):
    import hashlib

    from typer.testing import CliRunner

    from foodcls.cli import app

    card = (trained_run.run_dir / "MODEL_CARD.md").read_text()
    for heading in ("## Model", "## Data", "## Evaluation", "## Intended use and limitations", "## Provenance"):
        assert heading in card
    assert "every product gets one of these" in card  # no `other` class: said plainly
    assert f"accuracy **{trained_run.test_accuracy:.3f}**" in card and "95 % interval" in card
    assert hashlib.sha256(trained_run.best_checkpoint.read_bytes()).hexdigest() in card
    (trained_run.run_dir / "MODEL_CARD.md").unlink()
    result = CliRunner().invoke(app, ["card", str(trained_run.run_dir)])
    assert result.exit_code == 0 and (trained_run.run_dir / "MODEL_CARD.md").read_text() == card


def test_a_checkpoint_to_fine_tune_must_fit_the_config(tmp_path):
    from foodcls.errors import ConfigError
    from foodcls.inference.checkpoint import save_checkpoint
    from foodcls.training.run import init_checkpoint

    four = ["protein", "carbs", "fat", "additives"]
    classes = ["beverages", "meats", "snacks", "desserts"]

    def saved(stem, features=four, out=classes, hidden=2, **meta):
        arrays = {"net.0.weight": np.zeros((hidden, len(features)), np.float32), "net.0.bias": np.zeros(hidden, np.float32),
                  "net.2.weight": np.zeros((len(out), hidden), np.float32), "net.2.bias": np.zeros(len(out), np.float32),
                  **{k: np.ones(len(features), np.float32) for k in ("scale", "shift", "fill")}}
        path = tmp_path / f"{stem}.safetensors"
        save_checkpoint(path, arrays, {"features": features, "classes": out, "model": {"hidden": [hidden], "activation": "relu"},
                                       "config": {}, **meta})
        return path

    def config(path):
        return load_config(REPO_CONFIG, [f"train.init_from={path}", "model.hidden=[2]"])

    good = saved("good")
    assert init_checkpoint(config(good)).path == good
    assert init_checkpoint(load_config(REPO_CONFIG)) is None
    cases = {
        saved("three", features=four[:3]): "uses features protein, carbs, fat, the config protein, carbs, fat, additives$",
        saved("named", name={"buckets": 8}): "uses features protein, carbs, fat, additives and the name, the config protein, carbs, fat, additives$",
        saved("two", out=classes[:2]): "has classes beverages, meats, the config beverages, meats, snacks, desserts: its output layer cannot",
        saved("wide", hidden=3): r"has model \{'hidden': \[3\], 'activation': 'relu'\}, the config \{'hidden': \[2\], 'activation': 'relu'",
        saved("ensemble", ensemble=1): "is an ensemble; start from one network",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=r"^train.init_from: " + str(path) + " " + message):
            init_checkpoint(config(path))
