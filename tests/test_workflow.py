"""Validation, early stopping, schedules, class weights, runs list / compare, sweeps, plots, baselines."""

import json

import pytest
from typer.testing import CliRunner

from foodcls import runs
from foodcls.cli import app
from foodcls.config import load_config
from foodcls.training.fit import train

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_early_stopping_stops_and_best_is_the_best_monitored_epoch(config_file, tmp_path):
    config = load_config(config_file, ["data.val_fraction=0.25", "train.epochs=500", "train.optimizer=adam", "train.lr=0.05",
                                       "train.early_stopping.patience=5", "train.early_stopping.monitor=val_accuracy"])
    result = train(config, runs_root=tmp_path, name="es")
    records = runs.read_metrics(result.run_dir)
    assert result.epochs_run < 500 and len(records) == result.epochs_run
    best = max(records, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    assert result.best_epoch == best["epoch"]
    assert result.epochs_run == result.best_epoch + 5
    summary = runs.read_summary(result.run_dir)
    assert summary["stop_reason"] == "early_stopping" and summary["best_epoch"] == result.best_epoch
    assert summary["data"]["val"] == 4 * 38 and summary["data"]["train"] == 600 - 4 * 38  # 25 % of 150 per class, rounded


def test_val_file_is_scored_every_epoch(config_file, demo_dir, tmp_path):
    config = load_config(config_file, [f"data.val={demo_dir / 'test.csv'}"])
    result = train(config, runs_root=tmp_path, name="v")
    assert all("val_loss" in r and "val_accuracy" in r for r in runs.read_metrics(result.run_dir))
    assert runs.read_summary(result.run_dir)["monitor"] == "val_loss"
    assert result.val_accuracy is not None


def test_step_schedule_changes_the_learning_rate(config_file, tmp_path):
    config = load_config(config_file, ["train.epochs=6", "train.scheduler=step", "train.scheduler_step_size=2", "train.scheduler_gamma=0.5"])
    lrs = [r["lr"] for r in runs.read_metrics(train(config, runs_root=tmp_path, name="s").run_dir)]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_grad_norms_cover_every_layer(config_file, tmp_path):
    result = train(load_config(config_file, ["model.hidden=[8,8,8]"]), runs_root=tmp_path, name="g")
    norms = runs.read_metrics(result.run_dir)[0]["grad_norms"]
    assert len(norms) == 4 and all(n > 0 for n in norms)


def test_class_weights_change_training(config_file, demo_dir, tmp_path):
    from foodcls.inference.predict import load_predictor

    plain = train(load_config(config_file), runs_root=tmp_path, name="p")
    weighted = train(load_config(config_file, ["train.class_weights={desserts: 5.0}"]), runs_root=tmp_path, name="w")
    last = lambda r: runs.read_metrics(r.run_dir)[-1]["train_loss"]  # noqa: E731
    assert last(plain) != last(weighted)
    # A skewed set (one dessert in ten of the others' count): balanced weights must favour the rare class.
    lines = (demo_dir / "train.csv").read_text().splitlines()
    desserts = [line for line in lines if line.startswith("desserts")]
    skewed = tmp_path / "skewed.csv"
    skewed.write_text("\n".join([line for line in lines if not line.startswith("desserts")] + desserts[: len(desserts) // 10]) + "\n")
    overrides = [f"data.train={skewed}", "train.epochs=30", "train.optimizer=adam", "train.lr=0.01"]
    unweighted = train(load_config(config_file, overrides), runs_root=tmp_path, name="u")
    balanced = train(load_config(config_file, [*overrides, "train.class_weights=balanced"]), runs_root=tmp_path, name="b")
    test = [line.split(",") for line in (demo_dir / "test.csv").read_text().splitlines() if line.startswith("desserts")]
    x = [[float(v) for v in row[1:]] for row in test]
    recall = lambda r: float((load_predictor(r.best_checkpoint).predict(x) == 3).mean())  # noqa: E731
    assert recall(balanced) > recall(unweighted)


def test_eval_reports_macro_f1_balanced_accuracy_and_baselines(trained_run):
    report = json.loads(invoke("eval", "--checkpoint", trained_run.best_checkpoint, "--baselines", "--json").stdout)
    assert 0 <= report["macro_f1"] <= 1 and 0 <= report["balanced_accuracy"] <= 1
    assert set(report["baselines"]) == {"majority", "logistic_regression", "random_forest", "gradient_boosting"}
    assert report["baselines"]["majority"] == pytest.approx(0.25, abs=0.05)  # balanced demo classes
    assert report["baselines"]["gradient_boosting"] > 0.6


def test_runs_list_and_compare(config_file, tmp_path):
    first = train(load_config(config_file), runs_root=tmp_path, name="a")
    second = train(load_config(config_file, ["train.lr=0.05", "train.epochs=3"]), runs_root=tmp_path, name="b")
    listed = json.loads(invoke("runs", "list", "--runs-root", tmp_path, "--json").stdout)
    assert [r["run_dir"] for r in listed] == [str(first.run_dir), str(second.run_dir)]
    assert all(r["status"] == "finished" for r in listed)
    assert "finished" in invoke("runs", "list", "--runs-root", tmp_path).stdout
    compared = json.loads(invoke("runs", "compare", first.run_dir, second.run_dir, "--json").stdout)
    assert compared["config_diff"] == {"train.lr": [0.01, 0.05], "train.epochs": [4, 3]}
    assert compared["metrics"]["test_accuracy"] == [first.test_accuracy, second.test_accuracy]
    assert len(compared["runs"]) == 2


def test_sweep_runs_every_combination_and_survives_a_failed_run(config_file, tmp_path):
    result = invoke("sweep", "--config", config_file, "--grid", "train.lr=0.05,0.01", "--grid", "model.hidden=[8],[16,16]",
                    "--seeds", 2, "--set", "train.epochs=2", "--workers", 2, "--runs-root", tmp_path, "--json")
    report = json.loads(result.stdout)
    assert len(report["results"]) == 4 and all(len(r["runs"]) == 2 for r in report["results"])
    assert {json.dumps(r["params"], sort_keys=True) for r in report["results"]} == {
        json.dumps({"train.lr": lr, "model.hidden": h}, sort_keys=True) for lr in (0.05, 0.01) for h in ([8], [16, 16])}
    entry = report["results"][0]
    accuracies = [r["test_accuracy"] for r in entry["runs"]]
    assert entry["mean"]["test_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert report["best"]["mean"]["test_accuracy"] == max(r["mean"]["test_accuracy"] for r in report["results"])
    assert (tmp_path / report["sweep_dir"].split("/")[-1] / "sweep.json").exists()

    failing = json.loads(invoke("sweep", "--config", config_file, "--grid", f"data.train={config_file.parent / 'missing.csv'},"
                                f"{json.loads(json.dumps(str(config_file.parent.parent)))}/none.csv", "--set", "train.epochs=1",
                                "--workers", 1, "--runs-root", tmp_path / "f", "--json").stdout)
    assert all(run["status"] == "failed" and "file not found" in run["error"] for e in failing["results"] for run in e["runs"])


def test_plot_redraws_and_overlays(trained_run, config_file, tmp_path):
    other = train(load_config(config_file), runs_root=tmp_path, name="o")
    written = invoke("plot", trained_run.run_dir, other.run_dir, "--out", tmp_path / "plots").stdout.split()
    assert str(tmp_path / "plots" / "compare_learning_curves.png") in written
    for path in written:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_cosine_and_plateau_schedules_lower_the_learning_rate(config_file, tmp_path, schedule):
    config = load_config(config_file, ["train.epochs=12", f"train.scheduler={schedule}", "train.scheduler_step_size=1",
                                       "train.optimizer=adam", "train.lr=0.5"])
    lrs = [r["lr"] for r in runs.read_metrics(train(config, runs_root=tmp_path, name=schedule).run_dir)]
    assert lrs[0] == 0.5 and min(lrs) < 0.5 and all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_train_json_reports_best_epoch_with_early_stopping(config_file, tmp_path):
    result = invoke("train", "--config", config_file, "--runs-root", tmp_path, "--json", "--set", "data.val_fraction=0.2",
                    "--set", "train.early_stopping.patience=2", "--set", "train.epochs=200", "--set", "train.lr=0.5")
    trained = json.loads(result.stdout)
    assert trained["epochs_run"] == trained["best_epoch"] + 2 < 200
    assert trained["val_accuracy"] is not None


def test_runs_list_fits_an_80_column_terminal_keeping_whole_run_names(config_file, tmp_path):
    import os
    import subprocess
    import sys

    root = tmp_path / "runs"
    for _ in range(2):
        train(load_config(config_file, ["train.epochs=1"]), runs_root=root, name="a-rather-long-config-name")
    env = {**os.environ, "COLUMNS": "80"}
    # The runs root given relative (the first line names it): pytest's own tmp path grows with its run count
    # (pytest-of-root/pytest-105/…) and once made that line 81 characters.
    narrow = subprocess.run([sys.executable, "-m", "foodcls", "runs", "list", "--runs-root", "runs"], capture_output=True,
                            text=True, env=env, cwd=tmp_path).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert all(p.name in narrow for p in root.iterdir()) and "…" not in narrow  # whole names, no squeezed cells
    header = narrow.splitlines()[2]
    # What a narrow table keeps (issue 31): run, status, val and test accuracy; the least wanted go first.
    assert all(c in header for c in ("run", "status", "val acc", "test acc")) and "config" not in header
    wide = subprocess.run([sys.executable, "-m", "foodcls", "runs", "list", "--runs-root", str(root), "--wide"],
                          capture_output=True, text=True, env={**env, "COLUMNS": "200"}).stdout
    assert "config" in wide and "started (UTC)" in wide
