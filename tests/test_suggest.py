"""Ensembles, calibration across sources, suggestions at a precision: hand-computed references, the paths that
must agree (numpy, ONNX, explain, serve), a checkpoint of the previous release, and the bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from foodcls.config import load_config
from foodcls.data import read_labelled_csv, write_labelled_csv
from foodcls.inference.predict import load_predictor
from foodcls.inference.suggest import suggest_thresholds, suggestion_figures, suggestions
from tests.conftest import REPO

FIXTURES = Path(__file__).parent / "fixtures"
CLASSES = ("beverages", "meats", "snacks", "desserts", "other")


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO)


def test_thresholds_are_the_lowest_score_that_keeps_the_precision_ties_never_split():
    # Six products predicted snacks (column 2), by score: right, right, wrong (other), right, wrong, right.
    p = np.zeros((6, 5))
    p[:, 2] = 1
    labels = np.array([2, 2, 4, 2, 0, 2])
    scores = np.array([0.99, 0.95, 0.90, 0.85, 0.80, 0.80])
    # Precision from the top: 1, 1, 2/3, 3/4, then 4/6 at 0.80 (the two rows at 0.80 go together).
    assert suggest_thresholds(p, labels, scores, CLASSES, 0.75)["snacks"] == 0.85
    assert suggest_thresholds(p, labels, scores, CLASSES, 0.6)["snacks"] == 0.80
    assert suggest_thresholds(p, labels, scores, CLASSES, 1.0)["snacks"] == 0.95
    thresholds = suggest_thresholds(p, labels, scores, CLASSES, 0.75)
    assert thresholds["meats"] is None and "other" not in thresholds  # nothing predicted meats: never suggested
    made = suggestions(p, scores, CLASSES, thresholds)
    assert made.tolist() == [True, True, True, True, False, False]
    figures = suggestion_figures(p, labels, made, CLASSES)
    assert figures["precision"] == 0.75 and figures["per_class"]["snacks"]["suggested"] == 4
    assert figures["recall"] == 3 / 5  # of the five products of a named class, three were suggested their class
    # A product predicted `other` is never suggested, whatever its score.
    other = np.zeros((1, 5))
    other[0, 4] = 1
    assert not suggestions(other, np.array([1.0]), CLASSES, {c: 0.0 for c in CLASSES[:4]})[0]


def test_the_entropy_score_is_minus_the_entropy_and_ranks_a_diffuse_answer_last():
    from foodcls.inference.suggest import OPEN_SET_SCORES, open_set_scores

    probabilities = np.array([[0.6, 0.1, 0.1, 0.1, 0.1],   # a beverage at 0.6, the rest spread over four classes
                              [0.6, 0.0, 0.0, 0.4, 0.0],   # at 0.6 too, against a dessert at 0.4 (zeros: 0·log 0 = 0)
                              [0.0, 0.0, 1.0, 0.0, 0.0]])  # certain
    scores = open_set_scores("entropy", probabilities, np.zeros((1, 3, 5)), CLASSES)
    by_hand = [0.6 * np.log(0.6) + 4 * 0.1 * np.log(0.1), 0.6 * np.log(0.6) + 0.4 * np.log(0.4), 0.0]
    np.testing.assert_allclose(scores, by_hand, rtol=1e-12)
    assert scores[2] > scores[1] > scores[0] and "entropy" in OPEN_SET_SCORES
    # The top probability cannot tell the first two apart; the score can: the diffuse one (an `other`
    # product here) falls below the threshold that keeps precision 0.9.
    labels = np.array([4, 0, 2])
    assert suggest_thresholds(probabilities, labels, scores, CLASSES, 0.9) == {"beverages": scores[1], "meats": None, "snacks": 0.0, "desserts": None}
    assert suggestions(probabilities, scores, CLASSES, {"beverages": scores[1], "snacks": 0.0}).tolist() == [False, True, True]


def test_a_checkpoint_of_the_previous_release_loads_and_answers_as_it_did():
    checkpoint = FIXTURES / "previous-release" / "best.safetensors"
    expected = json.loads((FIXTURES / "previous-release" / "predictions.json").read_text())
    for values, answer in zip([(20, 1, 12, 2), (0, 10.6, 0, 2), (6, 60, 25, 3)], expected):
        result = run_cli("predict", "--checkpoint", checkpoint, "--protein", values[0], "--carbs", values[1], "--fat", values[2],
                         "--additives", values[3], "--coverage", 0.9, "--json")
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        assert got["class"] == answer["class"] and got["decision"] == answer["decision"] and got["set"] == answer["set"]
        assert got["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-7)
        assert got["suggest"] is False  # it has no operating point
    shown = json.loads(run_cli("eval", "--checkpoint", checkpoint, "--data", REPO / "data" / "demo" / "test.csv", "--json").stdout)
    assert shown["calibration"]["method"] == "temperature" and shown["calibration"]["operating_point"] is None


@pytest.fixture(scope="module")
def sourced(tmp_path_factory, demo_dir):
    """The demo set with a `source` column of three exports, and `other` products, as `data build --other` writes."""
    root = tmp_path_factory.mktemp("sourced")
    for split in ("train", "test"):
        data = read_labelled_csv(demo_dir / f"{split}.csv")
        rng = np.random.default_rng(1 if split == "train" else 2)
        labels = data.labels.copy()
        labels[rng.random(len(labels)) < 0.2] = 4  # a fifth of them in none of the four
        from foodcls.data import LabelledData

        columns = {"source": np.array([f"export-{i % 3}.tsv" for i in range(len(labels))], dtype=object)}
        write_labelled_csv(root / f"{split}.csv", LabelledData(data.features, labels, data.feature_names, "", columns=columns,
                                                               classes=CLASSES), ("source",))
    return root


def _config(root: Path, path: Path, **train) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "mlp.yaml").read_text())
    raw["data"] = {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "val_fraction": 0.2, "classes": list(CLASSES)}
    raw["model"] = {"hidden": [16], "activation": "relu", "ensemble": train.pop("ensemble", 1)}
    raw["train"].update({"epochs": 12, "optimizer": "adam", "lr": 0.01, "batch_size": 64, **train})
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def calibrated_ensemble(sourced, tmp_path_factory):
    from foodcls.training.fit import train

    tmp = tmp_path_factory.mktemp("ensemble")
    config = load_config(_config(sourced, tmp / "ens.yaml", ensemble=3, calibration="sources", suggest_precision=0.8))
    return train(config, runs_root=tmp / "runs", name="ens")


def test_an_ensemble_calibrated_across_sources_is_one_checkpoint_that_averages_its_members(calibrated_ensemble, sourced):
    from foodcls.inference.calibration import softmax
    from foodcls.runs import best_checkpoint, member_dirs

    run = calibrated_ensemble
    assert run.status == "finished"
    members = member_dirs(run.run_dir)
    assert [m.name for m in members] == ["m1", "m2", "m3"]
    folds = json.loads((run.run_dir / "sources" / "folds.json").read_text())
    assert sorted(folds.values()) == ["export-0.tsv", "export-1.tsv", "export-2.tsv"]
    predictor = load_predictor(run.best_checkpoint)
    assert predictor.members == 3 and predictor.calibration.method == "sources"
    assert predictor.calibration.sources == ("export-0.tsv", "export-1.tsv", "export-2.tsv")
    assert predictor.operating_point.precision == 0.8
    # The calibration rows are every scorable row, predicted by the models that never saw its source.
    assert len(predictor.calibration.labels) == len(read_labelled_csv(sourced / "train.csv", classes=CLASSES))
    # The ensemble's probabilities: the mean of its members' softmax(logits / T), each member's weights its own best.
    rows = read_labelled_csv(sourced / "test.csv", classes=CLASSES).features[:50]
    member_logits = np.stack([load_predictor(best_checkpoint(m)).member_logits(predictor.prep.apply(rows))[0][0] for m in members])
    expected = softmax(member_logits, predictor.temperature)
    assert predictor.probabilities(rows) == pytest.approx(expected, abs=1e-6)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["calibration"]["method"] == "sources" and "suggestions" in summary["evaluation"]["test"]
    assert {"learning_curves.png", "confusion_matrix.png", "MODEL_CARD.md"} <= {p.name for p in run.run_dir.iterdir()}
    assert not (members[0] / "MODEL_CARD.md").exists()  # a part writes no card of its own
    # Its training time is the one stack's (12 parts stepping together), within the run's own span: never their sum.
    parts = [json.loads(p.read_text())["train_seconds"] for p in run.run_dir.glob("*/**/summary.json")]
    span = datetime.fromisoformat(summary["finished_at"]) - datetime.fromisoformat(summary["started_at"])
    assert len(parts) == 12 and summary["train_seconds"] == max(parts) <= span.total_seconds() + 1


def test_an_ensemble_agrees_across_onnx_explain_serve_and_predict(calibrated_ensemble, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from foodcls.inference.explain import integrated_gradients
    from foodcls.inference.export import export
    from foodcls.serve.app import create_app

    predictor = load_predictor(calibrated_ensemble.best_checkpoint)
    rows = np.array([[20, 1, 12, 2], [0, 10.6, 0, 2], [6, 60, 25, 3], [np.nan, 5, 5, 0]], dtype=np.float32)
    path = export(calibrated_ensemble.best_checkpoint, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path))
    probabilities, label = session.run(None, {"features": rows})
    assert probabilities == pytest.approx(predictor.probabilities(rows), abs=1e-5)
    assert label.tolist() == predictor.probabilities(rows).argmax(axis=1).tolist()
    explanation = integrated_gradients(predictor, rows[0].astype(np.float64))
    assert explanation.contributions.sum() == pytest.approx(explanation.probability - explanation.baseline_probability, abs=2e-3)
    client = TestClient(create_app(calibrated_ensemble.best_checkpoint), base_url="http://127.0.0.1")
    answer = client.post("/predict", json={"protein": 20, "carbs": 1, "fat": 12, "additives": 2}).json()
    assert answer["probabilities"] == pytest.approx(dict(zip(CLASSES, predictor.probabilities(rows[:1])[0].tolist())), abs=1e-6)
    assert isinstance(answer["suggest"], bool)
    model = client.get("/model").json()
    assert model["members"] == 3 and model["operating_point"]["precision"] == 0.8
    batch = client.post("/predict/batch", json={"products": [{"protein": 20, "carbs": 1, "fat": 12, "additives": 2}], "precision": 0.99}).json()
    assert "suggest" in batch["predictions"][0]
    cli = json.loads(run_cli("predict", "--checkpoint", calibrated_ensemble.run_dir, "--protein", 20, "--carbs", 1, "--fat", 12,
                             "--additives", 2, "--precision", 0.5, "--json").stdout)
    assert cli["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-7)


def test_a_killed_composite_run_resumes_its_parts_and_assembles(sourced, tmp_path):
    """A composite run interrupted after its parts trained but before it was assembled resumes to the same checkpoint."""
    from foodcls.inference.checkpoint import load_checkpoint
    from foodcls.runs import SUMMARY_FILE, best_checkpoint
    from foodcls.training.fit import resume, train

    config = load_config(_config(sourced, tmp_path / "c.yaml", ensemble=2))
    first = train(config, runs_root=tmp_path / "runs", name="c")
    reference = load_checkpoint(first.best_checkpoint).arrays
    # As if killed: the composite still says running, its checkpoint gone; its parts finished.
    summary = json.loads((first.run_dir / SUMMARY_FILE).read_text())
    (first.run_dir / SUMMARY_FILE).write_text(json.dumps({**summary, "status": "running", "pid": 2 ** 22 + 7}))
    best_checkpoint(first.run_dir).unlink()
    again = resume(first.run_dir)
    assert again.status == "finished"
    restored = load_checkpoint(again.best_checkpoint).arrays
    assert all(np.array_equal(restored[name], value) for name, value in reference.items())


@pytest.mark.parametrize(("setting", "message"), [
    (["--set", "model.ensemble=0"], "model.ensemble: Input should be greater than or equal to 1"),
    (["--set", "train.suggest_precision=1.5"], "train.suggest_precision: Input should be less than or equal to 1"),
    (["--set", "train.open_set_score=not_other"], "train.open_set_score: not_other needs an `other` class"),
    (["--set", "train.calibration=sources"], "train.calibration: sources: the training data have no 'source' column"),
])
def test_bad_trust_settings_are_one_line_errors_with_no_run_directory(config_file, tmp_path, setting, message):
    result = run_cli("train", "--config", config_file, "--runs-root", tmp_path / "runs", *setting)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_calibration_across_sources_with_one_source_is_a_one_line_error(sourced, tmp_path):
    text = (sourced / "train.csv").read_text()
    single = tmp_path / "single"
    single.mkdir()
    (single / "train.csv").write_text(text.replace("export-1.tsv", "export-0.tsv").replace("export-2.tsv", "export-0.tsv"))
    (single / "test.csv").write_text((sourced / "test.csv").read_text())
    result = run_cli("train", "--config", _config(single, tmp_path / "one.yaml", calibration="sources"), "--runs-root", tmp_path / "runs")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("error: train.calibration: sources needs rows from at least 3 sources (the data's 'source' "
                                     "column); the data hold 1: export-0.tsv")
    assert not (tmp_path / "runs").exists()


def test_predict_refuses_a_precision_it_cannot_mean(trained_run):
    result = run_cli("predict", "--checkpoint", trained_run.run_dir, "--protein", 1, "--carbs", 1, "--fat", 1, "--additives", 0,
                     "--precision", 1.5)
    assert result.returncode == 1 and "--precision 1.5: expected a precision within 0-1" in result.stderr
