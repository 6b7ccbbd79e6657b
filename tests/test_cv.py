"""Cross-validation: folds, train-only files, pooled out-of-fold figures, the JSON contract."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from foodcls.cli import app
from foodcls.experiments.cv import run_cv
from foodcls.data import read_labelled_csv
from foodcls.errors import DataError
from tests.conftest import REPO, SAMPLES, needs_samples

runner = CliRunner()


@pytest.fixture
def sourced(tmp_path, demo_dir):
    """The small demo set as real-data files: a source column (three sources), plus a train-only synthetic file."""
    rows = list(csv.reader((demo_dir / "train.csv").read_text().splitlines()))[1:241]
    train = tmp_path / "train.csv"
    with open(train, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "protein", "carbs", "fat", "additives", "source", "code"])
        for i, row in enumerate(rows):
            writer.writerow([*row, f"export-{i % 3}.tsv", f"{1000 + i}"])
    val = tmp_path / "val.csv"
    val.write_text("label,protein,carbs,fat,additives,source\nmeats,20,1,12,2,export-0.tsv\n"
                   "beverages,0,10,0,1,export-1.tsv\nsnacks,7,60,22,1,export-2.tsv\ndesserts,4,15,3,3,export-2.tsv\n")
    raw = yaml.safe_load((REPO / "configs" / "mlp.yaml").read_text())
    raw["data"] = {"train": [str(train), {"path": str(demo_dir / "test.csv"), "weight": 0.5, "train_only": True}],
                   "val": str(val), "test": str(demo_dir / "test.csv")}
    raw["train"].update(epochs=3, batch_size=32)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_leave_one_source_out_scores_every_row_once_and_never_the_train_only_file(sourced, tmp_path):
    report = run_cv(sourced, group_by="source", runs_root=tmp_path / "runs", workers=1)
    assert [f["group"] for f in report["folds"]] == ["export-0.tsv", "export-1.tsv", "export-2.tsv"]
    assert report["pooled"]["n"] == 240 + 4 == sum(f["n_eval"] for f in report["folds"])
    predictions = list(csv.DictReader(Path(report["cv_dir"], "predictions.csv").read_text(encoding="utf-8").splitlines()))
    assert len(predictions) == 244 and {p["source"] for p in predictions} == {"export-0.tsv", "export-1.tsv", "export-2.tsv"}
    for fold in report["folds"]:
        config = yaml.safe_load(open(fold["run_dir"] + "/config.yaml"))
        train_only = [e for e in config["data"]["train"] if e.get("train_only")]
        assert len(train_only) == 1 and train_only[0]["weight"] == 0.5  # kept whole, with its weight, in every fold
        held_out = read_labelled_csv(config["data"]["test"])
        assert len(held_out) == fold["n_eval"]
        assert config["data"]["val"] is None and config["data"]["val_fraction"] == pytest.approx(4 / 244, abs=1e-4)
        assert fold["n_train"] + fold["n_eval"] == 244


def test_commands_without_a_checkpoint_pass_over_cv_folds_for_the_newest_real_run(sourced, tmp_path):
    from foodcls.config import load_config
    from foodcls.runs import newest_best_checkpoint
    from foodcls.training.fit import train

    runs = tmp_path / "runs"
    trained = train(load_config(sourced), runs_root=runs, name="mine")
    report = run_cv(sourced, folds=2, runs_root=runs, workers=1)  # newer runs, each of part of the data
    assert all(fold["run_dir"].startswith(str(runs)) for fold in report["folds"])
    assert newest_best_checkpoint(runs) == trained.best_checkpoint


def test_stratified_folds_keep_class_shares_and_write_the_json_contract(sourced, tmp_path):
    result = runner.invoke(app, ["cv", "--config", str(sourced), "--folds", "4", "--runs-root", str(tmp_path / "runs"), "--json",
                                 "--workers", "2", "--baselines"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["folds"]) == 4
    for fold in report["folds"]:
        assert {"fold", "group", "n_train", "n_eval", "accuracy", "macro_f1", "balanced_accuracy", "per_class_recall"} <= set(fold)
        assert fold["group"] is None and 55 <= fold["n_eval"] <= 65
    assert set(report["mean"]) >= {"accuracy", "macro_f1", "balanced_accuracy"} and set(report["std"]) >= set(report["mean"])
    assert {"n", "accuracy", "macro_f1", "balanced_accuracy", "per_class_recall"} <= set(report["pooled"])
    assert report["pooled"]["n"] == 244
    assert set(report["baselines"]) == {"majority", "logistic_regression", "random_forest", "gradient_boosting"}
    # Pooled figures are those of all out-of-fold predictions taken together.
    predictions = list(csv.DictReader(Path(report["cv_dir"], "predictions.csv").read_text(encoding="utf-8").splitlines()))
    hits = np.mean([p["label"] == p["predicted"] for p in predictions])
    assert report["pooled"]["accuracy"] == pytest.approx(hits)


def test_a_missing_group_column_is_one_line_naming_it_and_writes_nothing(config_file, tmp_path):
    with pytest.raises(DataError, match="no 'source' column"):
        run_cv(config_file, group_by="source", runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, ["cv", "--config", str(config_file), "--group-by", "brand", "--runs-root", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "no 'brand' column" in result.output


@needs_samples
@pytest.mark.parametrize("recipe", ["off", "off_rich", "off_open"])
def test_the_shipped_real_data_recipes_cross_validate_by_source_on_the_shared_exports(recipe, tmp_path, monkeypatch):
    from foodcls.offdata.build import build_dataset

    samples = sorted(SAMPLES.glob("off-*"))
    build_dataset(samples, tmp_path / "data" / "off", other=True)  # the build every shipped recipe reads
    (tmp_path / "data" / "synth-off").symlink_to(REPO / "data" / "synth-off")
    monkeypatch.chdir(tmp_path)  # the configs name data/off and data/synth-off relative to where they run
    report = run_cv(REPO / "configs" / f"{recipe}.yaml", group_by="source", overrides=["train.epochs=2"],
                    runs_root=tmp_path / "runs", workers=1)
    rows = [r for s in ("train", "val") for r in csv.DictReader((tmp_path / "data" / "off" / f"{s}.csv").read_text(encoding="utf-8").splitlines())]
    four = {"beverages", "meats", "snacks", "desserts"}
    classes = four | {"other"} if recipe == "off_open" else four
    assert report["pooled"]["n"] == sum(r["label"] in classes for r in rows)  # every real row of its classes once; no synthetic row
    assert len(report["folds"]) == 10 and {f["group"] for f in report["folds"]} >= {"off-2026-products.parquet", "off-2026-raw100.jsonl"}
    assert set(report["pooled"]["per_class_recall"]) == classes
    assert ("open_set" in report["pooled"]) == (recipe == "off_open")
