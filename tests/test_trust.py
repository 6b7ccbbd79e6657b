"""Trust in predictions: calibration, conformal sets, abstention, open-set figures — checked against
independent computations, and end to end on a class list other than the four."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from foodcls.cli import app
from foodcls.inference import calibration as cal
from foodcls.inference.checkpoint import load_checkpoint, save_checkpoint
from foodcls.inference.predict import load_predictor

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_the_fitted_temperature_recovers_the_one_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20_000, 4)) * 3
    probabilities = cal.softmax(logits, 2.5)
    labels = np.array([rng.choice(4, p=p) for p in probabilities])
    assert cal.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)
    assert cal.expected_calibration_error(cal.softmax(logits, 2.5), labels) < 0.02 < cal.expected_calibration_error(cal.softmax(logits), labels)


def test_split_conformal_sets_cover_as_promised_on_exchangeable_rows():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6000, 5)) * 2
    probabilities = cal.softmax(logits)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    scores = cal.conformal_scores(probabilities[:3000], labels[:3000])
    for coverage in (0.8, 0.9, 0.95):
        figures = cal.set_figures(probabilities[3000:], labels[3000:], scores, coverage)
        assert coverage - 0.02 <= figures.empirical_coverage <= coverage + 0.03
        assert 1 <= figures.mean_size <= 5
    assert cal.conformal_threshold(scores[:5], 0.9) == 1.0  # too few rows for 90 %: every class


def test_metrics_match_a_second_computation():
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    rng = np.random.default_rng(2)
    probabilities = cal.softmax(rng.normal(size=(500, 3)))
    labels = rng.integers(0, 3, 500)
    assert cal.nll(probabilities, labels) == pytest.approx(log_loss(labels, probabilities, labels=[0, 1, 2]))
    binary = np.column_stack([1 - probabilities[:, 0], probabilities[:, 0]])
    assert cal.brier(binary, (labels == 0).astype(int)) == pytest.approx(2 * brier_score_loss(labels == 0, probabilities[:, 0]))
    inside, outside = rng.normal(1, 1, 300).round(1), rng.normal(0, 1, 200).round(1)  # rounded: ties
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[inside, outside])
    assert cal.auroc(inside, outside) == pytest.approx(expected)
    # ECE by hand: one row in each of the bins [0.5, 0.6), [0.6, 0.7), [0.9, 1.0]; right, wrong, right
    p = np.array([[0.55, 0.45], [0.65, 0.35], [0.95, 0.05]])
    assert cal.expected_calibration_error(p, np.array([0, 1, 0])) == pytest.approx((abs(1 - 0.55) + abs(0 - 0.65) + abs(1 - 0.95)) / 3)


def test_decisions_abstain_below_the_threshold_and_name_other():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert cal.decisions(p, ("a", "b", "other"), 0.6) == ["unsure", "other"]
    assert cal.decisions(p, ("a", "b", "other"), None) == ["a", "other"]


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A model of three classes that are not the four (drinks, savoury, other), with validation rows."""
    root = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(3)
    centres = {"drinks": (1, 8, 1, 1), "savoury": (20, 3, 15, 2), "other": (8, 40, 10, 1)}

    def rows(n):
        out = ["label,protein,carbs,fat,additives"]
        for _ in range(n):
            name = rng.choice(list(centres))
            values = np.clip(np.array(centres[name]) + rng.normal(0, 7, 4), 0, 60)
            out.append(f"{name},{values[0]:.1f},{values[1]:.1f},{values[2]:.1f},{int(values[3])}")
        return "\n".join(out) + "\n"

    (root / "train.csv").write_text(rows(900))
    (root / "test.csv").write_text(rows(300))
    (root / "out.csv").write_text("name,protein,carbs,fat,additives\n" + "".join(f"x{i},{30 + i % 20},{50 - i % 30},{30},{0}\n" for i in range(60)))
    config = {"data": {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "val_fraction": 0.25,
                       "classes": ["drinks", "savoury", "other"]},
              "model": {"hidden": [16]}, "train": {"optimizer": "adam", "lr": 0.02, "epochs": 40, "batch_size": 64}}
    (root / "three.yaml").write_text(yaml.safe_dump(config))
    result = invoke("train", "--config", root / "three.yaml", "--runs-root", root / "runs", "--json")
    assert result.exit_code == 0, result.output
    return root, json.loads(result.stdout)


def test_a_three_class_model_trains_calibrates_and_answers_with_decision_and_set(three_classes):
    root, trained = three_classes
    predictor = load_predictor(trained["run_dir"])
    assert predictor.classes == ("drinks", "savoury", "other") and predictor.temperature != 1.0
    assert predictor.conformal_scores is not None and len(predictor.conformal_scores) == 225
    result = invoke("predict", "--checkpoint", trained["run_dir"], "--protein", 20, "--carbs", 3, "--fat", 15, "--additives", 2,
                    "--coverage", 0.9, "--json")
    answer = json.loads(result.stdout)
    assert set(answer["probabilities"]) == {"drinks", "savoury", "other"} and answer["decision"] == "savoury"
    assert answer["set"][0] == "savoury"
    unsure = json.loads(invoke("predict", "--checkpoint", trained["run_dir"], "--protein", 10, "--carbs", 20, "--fat", 8,
                               "--additives", 1, "--min-confidence", 0.999, "--json").stdout)
    assert unsure["decision"] == "unsure"
    summary = json.loads((root / "runs" / trained["run_dir"].split("/")[-1] / "summary.json").read_text())
    assert summary["calibration"]["val_ece_after"] <= summary["calibration"]["val_ece_before"]
    assert (root / "runs" / trained["run_dir"].split("/")[-1] / "reliability.png").stat().st_size > 0
    card = (root / "runs" / trained["run_dir"].split("/")[-1] / "MODEL_CARD.md").read_text()
    assert "`other` stands for products in none of the named classes" in card and "Products in none of the classes" in card
    assert "temperature of" in card and "90 % conformal sets held the true class" in card


def test_eval_reports_calibration_sets_risk_coverage_and_out_of_class_figures(three_classes):
    root, trained = three_classes
    result = invoke("eval", "--checkpoint", trained["run_dir"], "--out-of-class", root / "out.csv", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == ["drinks", "savoury", "other"] and report["accuracy"] > 0.9
    assert 0 <= report["ece"] <= 1 and report["nll"] > 0 and 0 <= report["brier"] <= 2
    assert [r["threshold"] for r in report["risk_coverage"]] == list(cal.RISK_THRESHOLDS)
    assert report["risk_coverage"][0]["coverage"] == 1.0
    assert report["conformal"]["coverage_target"] == 0.9 and report["conformal"]["mean_size"] >= 1
    open_set = report["open_set"]
    assert open_set["n"] == 60 and set(open_set["rejected_at_coverage"]) == {"0.90", "0.95"}
    assert 0 <= open_set["auroc"] <= 1 and 0 <= open_set["share_confident_over_0_9"] <= 1
    text = invoke("eval", "--checkpoint", trained["run_dir"], "--out-of-class", root / "out.csv")
    assert "calibration: temperature" in text.stdout and "AUROC" in text.stdout


def test_onnx_and_serve_apply_the_temperature_as_predict_does(three_classes, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    from fastapi.testclient import TestClient

    from foodcls.serve.app import create_app

    root, trained = three_classes
    predictor = load_predictor(trained["run_dir"])
    assert invoke("export", "--checkpoint", trained["run_dir"], "--format", "onnx", "--out", tmp_path / "m.onnx").exit_code == 0
    x = np.array([[20, 3, 15, 2], [1, 8, 1, 1], [8, 40, 10, np.nan]], dtype=np.float32)
    onnx_p = ort.InferenceSession(str(tmp_path / "m.onnx")).run(["probabilities"], {"features": x})[0]
    assert np.abs(onnx_p - predictor.probabilities(x)).max() < 1e-5
    client = TestClient(create_app(trained["run_dir"]), base_url="http://127.0.0.1")
    body = {"protein": 20, "carbs": 3, "fat": 15, "additives": 2, "coverage": 0.9}
    served = client.post("/predict", json=body).json()
    assert max(abs(served["probabilities"][c] - p) for c, p in zip(predictor.classes, predictor.probabilities(x[:1])[0])) < 1e-6
    assert served["decision"] == "savoury" and served["set"][0] == "savoury"
    bad = client.post("/predict", json={**body, "coverage": 1.5})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "coverage"


def test_a_checkpoint_from_before_calibration_still_loads_and_predicts(trained_run, tmp_path):
    old = load_checkpoint(trained_run.best_checkpoint)
    meta = {k: v for k, v in old.meta.items() if k != "temperature"}
    meta["config"] = json.loads(json.dumps(meta["config"]))
    for key in ("calibration", "min_confidence"):
        meta["config"]["train"].pop(key, None)
    meta["config"]["data"].pop("classes", None)
    arrays = {k: v for k, v in old.arrays.items() if k != "conformal_scores"}
    save_checkpoint(tmp_path / "old.safetensors", arrays, meta)
    predictor = load_predictor(tmp_path / "old.safetensors")
    assert predictor.temperature == 1.0 and predictor.conformal_scores is None and predictor.min_confidence is None
    result = invoke("predict", "--checkpoint", tmp_path / "old.safetensors", "--protein", 20, "--carbs", 1, "--fat", 12,
                    "--additives", 2, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["decision"] in predictor.classes
    refused = invoke("predict", "--checkpoint", tmp_path / "old.safetensors", "--protein", 20, "--carbs", 1, "--fat", 12,
                     "--additives", 2, "--coverage", 0.9)
    assert refused.exit_code == 1 and "holds no calibration scores" in refused.output


@pytest.mark.parametrize("args, message", [
    (["--coverage", "1.5"], "--coverage 1.5: expected a share strictly between 0 and 1"),
    (["--coverage", "0"], "--coverage 0: expected a share"),
    (["--min-confidence", "-1"], "--min-confidence -1: expected a probability within 0-1"),
])
def test_bad_trust_options_are_one_line_errors(three_classes, args, message):
    _, trained = three_classes
    result = invoke("predict", "--checkpoint", trained["run_dir"], "--protein", 1, "--carbs", 1, "--fat", 1, "--additives", 0, *args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and message in result.output


def test_an_other_label_in_a_four_class_config_and_a_bad_out_of_class_file_are_one_line_errors(tmp_path, trained_run, config_file):
    data = tmp_path / "five.csv"
    data.write_text("label,protein,carbs,fat,additives\nother,1,2,3,0\nmeats,20,1,12,2\n")
    result = invoke("train", "--config", config_file, "--set", f"data.train={data}", "--runs-root", tmp_path / "runs")
    assert result.exit_code == 1 and "unknown class 'other'; expected one of beverages, meats, snacks, desserts" in result.output
    assert not (tmp_path / "runs").exists()
    bad = tmp_path / "no-features.csv"
    bad.write_text("name,sugar\nx,1\n")
    result = invoke("eval", "--checkpoint", trained_run.run_dir, "--out-of-class", bad)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "no-features.csv" in result.output
