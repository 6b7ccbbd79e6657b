"""foodcls as a library: foodcls.load (numpy only) and foodcls.train, the same numbers as the command line,
every kind of X, and one-line errors naming the culprit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import foodcls
from foodcls.errors import CheckpointError, DataError
from tests.conftest import REPO

PRODUCTS = {"protein": [20.0, 0.2, 6.0], "carbs": [1.0, 10.0, 60.0], "fat": [12.0, 0.0, 20.0], "additives": [2, 2, 1]}


def test_load_predicts_every_kind_of_x_with_the_clis_numbers_and_without_torch(trained_run):
    code = (f"import sys, json, foodcls; m = foodcls.load({str(trained_run.run_dir)!r}); "
            f"print(json.dumps(m.predict_proba({PRODUCTS!r}).tolist())); assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    probabilities = np.array(json.loads(result.stdout))
    cli = json.loads(subprocess.run([sys.executable, "-m", "foodcls", "predict", "--checkpoint", str(trained_run.run_dir), "--protein",
                                     "20", "--carbs", "1", "--fat", "12", "--additives", "2", "--json"], capture_output=True,
                                    text=True, cwd=REPO).stdout)
    model = foodcls.load(trained_run.best_checkpoint)
    assert list(cli["probabilities"].values()) == pytest.approx(probabilities[0].tolist(), abs=1e-7)
    pandas, polars = pytest.importorskip("pandas"), pytest.importorskip("polars")
    rows = [dict(zip(PRODUCTS, values)) for values in zip(*PRODUCTS.values())]
    array = np.column_stack([PRODUCTS[f] for f in model.features])
    for x in (pandas.DataFrame(PRODUCTS), polars.DataFrame(PRODUCTS), rows, array, {k.upper(): v for k, v in PRODUCTS.items()}):
        assert model.predict_proba(x) == pytest.approx(probabilities, abs=1e-7)
    assert model.predict(rows).tolist() == [model.classes[k] for k in probabilities.argmax(axis=1)]
    decided = model.decide(rows, min_confidence=0.99, coverage=0.9 if model.predictor.conformal_scores is not None else None)
    assert decided.decision == [c if p.max() >= 0.99 else "unsure" for c, p in zip(decided.predicted, probabilities)]
    assert len(model.explain(rows[:1])[0].contributions) == 4


def test_train_returns_the_run_and_its_model(config_file, tmp_path):
    run = foodcls.train(config_file, overrides=["train.epochs=2"], runs_root=tmp_path / "runs")
    assert run.summary["status"] == "finished" and run.summary["epochs_run"] == 2
    assert run.model.predict_proba(PRODUCTS).shape == (3, 4)


def test_bad_input_is_one_line_naming_the_culprit(trained_run, tmp_path):
    model = foodcls.load(trained_run.run_dir)
    with pytest.raises(DataError, match=r"X: no 'fat' column \(this model uses protein, carbs, fat, additives"):
        model.predict({"protein": [1], "carbs": [2], "additives": [0]})
    with pytest.raises(DataError, match=r"X\['carbs'\] row 1: unknown \(NaN or missing\); allow_missing=True fills it"):
        model.predict({**PRODUCTS, "carbs": [1.0, float("nan"), 3.0]})
    assert model.predict({**PRODUCTS, "carbs": [1.0, float("nan"), 3.0]}, allow_missing=True).shape == (3,)
    with pytest.raises(DataError, match=r"X\['protein'\] row 0: protein must lie within 0-100 g per 100 g, got 120"):
        model.predict({**PRODUCTS, "protein": [120.0, 1.0, 1.0]})
    with pytest.raises(DataError, match=r"X: a 2-D array needs 4 columns"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"X\['fat'\]: not a number: 'x'"):
        model.predict({**PRODUCTS, "fat": [1, "x", 2]})
    (tmp_path / "not.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a valid foodcls checkpoint"):
        foodcls.load(tmp_path / "not.safetensors")
