"""Reading a checkpoint into a predictor (inference/predict.py), on checkpoints made here by hand — no training:
a network whose outputs are worked out on paper, what each piece of metadata becomes (temperature, conformal
scores, min_confidence, calibration rows, operating point, name vectors), and each damage refused with its own
message (issue 30: a reference that is not the code under test)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from foodcls.errors import CheckpointError
from foodcls.inference.checkpoint import Checkpoint
from foodcls.inference.predict import predictor_from_checkpoint

CLASSES = ["beverages", "meats", "other"]
FEATURES = ["protein", "carbs", "fat", "additives"]


def hand_made() -> Checkpoint:
    """One hidden layer of two ReLUs: h = relu([x₀ − x₁, x₂]) of the scaled inputs (x − shift) / scale; logits
    [h₀, h₁, 0]. Scale 10 (fat: 5), shift 0 (protein: 1), the missing fat filled with 20."""
    arrays = {
        "net.0.weight": np.array([[1, -1, 0, 0], [0, 0, 1, 0]], np.float32), "net.0.bias": np.zeros(2, np.float32),
        "net.2.weight": np.array([[1, 0], [0, 1], [0, 0]], np.float32), "net.2.bias": np.zeros(3, np.float32),
        "scale": np.array([10, 10, 5, 10], np.float32), "shift": np.array([1, 0, 0, 0], np.float32),
        "fill": np.array([0, 0, 20, 0], np.float32),
    }
    meta = {"classes": list(CLASSES), "features": list(FEATURES), "model": {"hidden": [2], "activation": "relu"},
            "config": {"train": {"min_confidence": 0.6}}, "metrics": {"val_accuracy": 0.5}}
    return Checkpoint(arrays, meta, Path("hand.safetensors"))


def test_the_hand_made_network_answers_what_paper_says():
    predictor = predictor_from_checkpoint(hand_made())
    # protein 21, carbs 1, fat unknown (20), additives 0 → scaled [2, 0.1, 4, 0] → h = [1.9, 4] → softmax [1.9, 4, 0]
    logits = np.array([1.9, 4.0, 0.0])
    expected = np.exp(logits) / np.exp(logits).sum()
    assert predictor.probabilities(np.array([[21, 1, np.nan, 0]], np.float32))[0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert predictor.min_confidence == 0.6 and predictor.temperature == 1.0 and predictor.metrics == {"val_accuracy": 0.5}
    assert predictor.fill_values == {"protein": 0.0, "carbs": 0.0, "fat": 20.0, "additives": 0.0}
    assert predictor.open_set_score == "not_other" and predictor.conformal_scores is None and predictor.calibration is None
    hot = hand_made()
    hot.meta["temperature"] = 2.0
    assert predictor_from_checkpoint(hot).probabilities(np.array([[21, 1, np.nan, 0]], np.float32))[0].tolist() == pytest.approx(
        (np.exp(logits / 2) / np.exp(logits / 2).sum()).tolist(), abs=1e-6)


def test_calibration_rows_and_the_operating_point_are_read_back():
    checkpoint = hand_made()
    checkpoint.arrays.update({"calibration.probabilities": np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32),
                              "calibration.labels": np.array([0, 2], np.int64), "calibration.open_set_scores": np.array([0.9, 0.2]),
                              "calibration.scores.energy": np.array([1.5, -0.5]), "calibration.scores.broken": np.array([1.0, np.inf]),
                              "conformal_scores": np.array([0.1, 0.3], np.float32)})
    checkpoint.meta.update(calibration={"method": "sources", "sources": ["off-a.tsv", "off-b.csv"]},
                           operating_point={"precision": 0.9, "thresholds": {"beverages": 0.75, "meats": None}})
    predictor = predictor_from_checkpoint(checkpoint)
    calibration = predictor.calibration
    assert calibration.method == "sources" and calibration.sources == ("off-a.tsv", "off-b.csv")
    assert calibration.labels.tolist() == [0, 2] and calibration.labels.dtype == np.int64
    assert calibration.probabilities.ravel().tolist() == pytest.approx([0.7, 0.2, 0.1, 0.1, 0.1, 0.8])
    assert calibration.open_set_scores.tolist() == [0.9, 0.2] and set(calibration.scores_by_kind) == {"energy"}  # not the damaged one
    assert predictor.conformal_scores.tolist() == pytest.approx([0.1, 0.3]) and predictor.conformal_scores.dtype == np.float64
    assert predictor.operating_point.precision == 0.9
    assert predictor.operating_point.thresholds == {"beverages": 0.75, "meats": None}  # `other` gets none
    checkpoint.meta["calibration"] = {}
    assert predictor_from_checkpoint(checkpoint).calibration.method == "temperature"  # before methods were named
    del checkpoint.arrays["calibration.open_set_scores"]
    assert predictor_from_checkpoint(checkpoint).calibration is None


def _damage(**changes):
    """A hand-made checkpoint with meta keys (meta__key) or arrays (arrays__name) set, or removed (None)."""
    checkpoint = hand_made()
    checkpoint = Checkpoint(dict(checkpoint.arrays), copy.deepcopy(checkpoint.meta), checkpoint.path)
    for key, value in changes.items():
        where, name = key.split("__")
        target = checkpoint.meta if where == "meta" else checkpoint.arrays
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return checkpoint


DAMAGES = {
    "activation": (dict(meta__model={"hidden": [2], "activation": "swish"}), "unknown activation 'swish'"),
    "feature": (dict(meta__features=["protein", "carbs", "fat", "color"]), "unknown feature 'color' in the checkpoint"),
    "input width": (dict(meta__features=["protein", "carbs", "fat"]), "weights or scaling do not match its 3 features$"),
    "scaling shape": (dict(arrays__scale=np.ones(3, np.float32)), "weights or scaling do not match its 4 features"),
    "zero scale": (dict(arrays__scale=np.array([1, 0, 1, 1], np.float32)), "its feature scaling holds zeros or non-finite numbers"),
    "nan fill": (dict(arrays__fill=np.array([0, np.nan, 0, 0], np.float32)), "its feature scaling holds zeros or non-finite"),
    "classes": (dict(meta__classes=["beverages", "meats"]), "the output layer does not match its 2 classes"),
    "temperature 0": (dict(meta__temperature=0), "temperature must be a positive number, got 0"),
    "temperature true": (dict(meta__temperature=True), "temperature must be a positive number, got True"),
    "temperature inf": (dict(meta__temperature=float("inf")), "temperature must be a positive number, got inf"),
    "conformal": (dict(arrays__conformal_scores=np.array([0.1, np.nan])), "its conformal scores are not a list of finite numbers"),
    "conformal 2-d": (dict(arrays__conformal_scores=np.zeros((2, 2))), "its conformal scores are not a list of finite numbers"),
    "conformal ints": (dict(arrays__conformal_scores=np.array([1, 2])), "its conformal scores are not a list of finite numbers"),
    "min_confidence": (dict(meta__config={"train": {"min_confidence": 1.5}}), r"train.min_confidence must lie within 0-1, got 1.5"),
    "min_confidence bool": (dict(meta__config={"train": {"min_confidence": False}}), r"train.min_confidence must lie within 0-1, got False"),
    "open-set score": (dict(meta__open_set_score="mahalanobis"), "unknown open-set score 'mahalanobis'"),
    "knn without rows": (dict(meta__open_set_score="knn"), "its knn open-set score lacks the reference rows of its hidden layer"),
    "knn rows": (dict(meta__open_set_score="knn", **{"arrays__knn.reference": np.zeros((1, 3, 5), np.float32)}),
                 "its knn open-set score lacks the reference rows"),
    "name meta": (dict(meta__name={"buckets": 8, "colour": 1}),
                  r"name must give buckets, ngram_min, ngram_max, max_ngrams and dim \(and words, true or false\), got \{'buckets': 8, 'colour': 1\}"),
    "name words": (dict(meta__name={"buckets": 8, "ngram_min": 2, "ngram_max": 3, "max_ngrams": 4, "dim": 1, "words": "yes"}),
                   "name must give buckets"),
    "name zero": (dict(meta__name={"buckets": 0, "ngram_min": 2, "ngram_max": 3, "max_ngrams": 4, "dim": 1}), "name must give buckets"),
    "name table": (dict(meta__name={"buckets": 8, "ngram_min": 2, "ngram_max": 3, "max_ngrams": 4, "dim": 1}),
                   "its name vectors are missing or malformed"),
    "operating point": (dict(meta__operating_point={"precision": 0.9, "thresholds": {"cereals": 0.5}}),
                        "operating_point must give a precision and a threshold per class"),
    "operating point bool": (dict(meta__operating_point={"precision": True, "thresholds": {}}), "operating_point must give a precision"),
    "operating point list": (dict(meta__operating_point=[0.9]), "operating_point must give a precision and a threshold per class"),
    "operating point text": (dict(meta__operating_point={"precision": 0.9, "thresholds": {"meats": "0.5"}}), "operating_point must give"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_damage_is_refused_with_its_own_message(damage):
    changes, message = DAMAGES[damage]
    with pytest.raises(CheckpointError, match=r"^hand\.safetensors: .*" + message):
        predictor_from_checkpoint(_damage(**changes))


def test_layers_that_do_not_chain_and_calibration_rows_out_of_shape_are_refused():
    checkpoint = _damage(**{"arrays__net.2.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(CheckpointError, match="layer shapes do not chain"):
        predictor_from_checkpoint(checkpoint)
    rows = {"calibration.probabilities": np.full((2, 3), 1 / 3), "calibration.labels": np.array([0, 3]),
            "calibration.open_set_scores": np.zeros(2)}
    with pytest.raises(CheckpointError, match="its calibration rows are malformed"):
        predictor_from_checkpoint(_damage(meta__calibration={"method": "temperature"}, **{f"arrays__{k}": v for k, v in rows.items()}))
    rows["calibration.labels"] = np.array([0.0, 1.0])
    with pytest.raises(CheckpointError, match="its calibration rows are malformed"):
        predictor_from_checkpoint(_damage(meta__calibration={}, **{f"arrays__{k}": v for k, v in rows.items()}))


def test_a_name_model_and_an_ensemble_are_read_as_members():
    hashing = {"buckets": 8, "ngram_min": 2, "ngram_max": 3, "max_ngrams": 4, "dim": 1}
    checkpoint = _damage(meta__name=hashing, **{"arrays__name.embedding": np.ones((8, 1), np.float32)})
    with pytest.raises(CheckpointError, match=r"weights or scaling do not match its 4 features and the name's vector"):
        predictor_from_checkpoint(checkpoint)
    checkpoint.arrays["net.0.weight"] = np.array([[1, -1, 0, 0, 0], [0, 0, 1, 0, 2]], np.float32)
    predictor = predictor_from_checkpoint(checkpoint)
    assert predictor.name.tables.shape == (1, 8, 1) and predictor.members == 1
    # Every n-gram's vector is 1: a named product's h₁ grows by 2 (its mean vector, 1, times 2); a nameless one's not.
    p = predictor.probabilities(np.array([[21, 1, np.nan, 0]] * 2, np.float32), ["Jus", ""])
    assert p[0].tolist() == pytest.approx((np.exp([1.9, 6, 0]) / np.exp([1.9, 6, 0]).sum()).tolist(), abs=1e-6)
    assert p[1].tolist() == pytest.approx((np.exp([1.9, 4, 0]) / np.exp([1.9, 4, 0]).sum()).tolist(), abs=1e-6)


def test_one_products_values_checked_as_predict_and_serve_check_them():
    from foodcls.errors import DataError
    from foodcls.inference.predict import check_product, review_product

    features = ("protein", "carbs", "fat", "additives")
    fill = {"protein": 1.0, "carbs": 2.0, "fat": 20.0, "additives": 0.0}
    # Every problem at once (serve names each bad field): a negative, a fractional count; fat unknown; sugars unused.
    review = review_product({"protein": -1, "carbs": 10, "fat": None, "additives": 1.5, "sugars": 3}, features, fill)
    assert review.problems == [("protein", "must lie within 0-100 g per 100 g, got -1"), ("additives", "must be a whole number within 0-100, got 1.5")]
    assert review.missing == ["fat"] and review.values[:2] == [-1.0, 10.0] and math.isnan(review.values[2])
    assert review.warnings == ["ignored --sugars: this model uses protein, carbs, fat, additives"]  # no fill warning: fat is missing
    allowed = review_product({"protein": 5, "carbs": 80, "fat": None, "additives": 0, "sugars": 90}, features, fill, allow_missing=True)
    assert allowed.missing == [] and allowed.problems == []
    assert allowed.warnings == ["sugars (90 g) exceeds carbs (80 g); check the label", "ignored --sugars: this model uses protein, carbs, fat, additives",
                                "unknown fat (filled with the training median 20)"]
    with pytest.raises(DataError, match=r"^--protein must lie within 0-100 g per 100 g, got -1$"):
        check_product({"protein": -1, "carbs": 10, "fat": 1, "additives": 1}, features, fill)
    with pytest.raises(DataError, match=r"^missing --fat, --additives \(this model uses protein, carbs, fat, additives; --allow-missing fills"):
        check_product({"protein": 1, "carbs": 10}, features, fill)
    checked = check_product({"protein": 1, "carbs": 10}, features, fill, allow_missing=True, name_of=lambda f: f"`{f}`")
    assert checked.warnings == ["unknown fat (filled with the training median 20)", "unknown additives (filled with the training median 0)"]
    assert check_product({"protein": 1, "carbs": 10, "fat": 1, "additives": 0}, features, fill).warnings == []
    from foodcls.inference.predict import fill_warnings

    assert fill_warnings({"salt": 3, "fiber": 0}, {}, 10) == ["unknown salt in 3 of 10 rows (filled with the training median nan)"]
    # An optional nutrient the model uses may be unknown without --allow-missing: filled, and said so.
    optional = check_product({"protein": 1, "carbs": 10, "fat": 1, "additives": 0}, (*features, "sugars"), {**fill, "sugars": 4.5})
    assert optional.warnings == ["unknown sugars (filled with the training median 4.5)"] and math.isnan(optional.values[4])


def test_a_batch_from_a_named_checkpoint_with_an_operating_point(tmp_path):
    from foodcls.errors import DataError
    from foodcls.inference.checkpoint import save_checkpoint
    from foodcls.inference.explain import integrated_gradients
    from foodcls.inference.judge import TrustOptions
    from foodcls.inference.predict import load_predictor, predict_csv

    hashing = {"buckets": 8, "ngram_min": 2, "ngram_max": 3, "max_ngrams": 4, "dim": 1}
    checkpoint = _damage(meta__name=hashing, meta__operating_point={"precision": 0.9, "thresholds": {"beverages": 0.9, "meats": 0.5}},
                         **{"arrays__name.embedding": np.ones((8, 1), np.float32)})
    checkpoint.arrays["net.0.weight"] = np.array([[1, -1, 0, 0, 0], [0, 0, 1, 0, 2]], np.float32)
    path = tmp_path / "named.safetensors"
    save_checkpoint(path, checkpoint.arrays, checkpoint.meta)
    batch = tmp_path / "in.csv"
    # Row 1: h = [1.9, 4 + 2] (fat unknown: 20) → meats, 1 − p(other) = 0.9975 ≥ 0.5: suggested. Row 2: all logits 0
    # → beverages (the first of three equal), 1 − 1/3 < 0.9: not suggested.
    batch.write_text("protein,carbs,fat,additives,name\n21,1,,0,Jus\n1,0,0,0,\n", encoding="utf-8")
    with pytest.raises(DataError, match="fat"):
        predict_csv(path, batch)  # an unknown fat without allow_missing
    text, warnings = predict_csv(path, batch, allow_missing=True, explain=True)
    assert "\r" not in text and warnings == ["unknown fat in 1 of 2 rows (filled with the training median 20)"]
    header, first, second = [line.split(",") for line in text.splitlines()]
    assert header == ["protein", "carbs", "fat", "additives", "name", "predicted", "p_beverages", "p_meats", "p_other", "decision",
                      "suggest", "contrib_protein", "contrib_carbs", "contrib_fat", "contrib_additives", "contrib_name"]
    p = np.exp([1.9, 6.0, 0.0]) / np.exp([1.9, 6.0, 0.0]).sum()
    assert first[5:11] == ["meats", *(f"{x:.6f}" for x in p), "meats", "true"]
    assert second[5:11] == ["beverages", "0.333333", "0.333333", "0.333333", "unsure", "false"]  # 1/3 < min_confidence 0.6
    predictor = load_predictor(path)
    expected = integrated_gradients(predictor, np.array([21, 1, np.nan, 0], np.float32), target=1, name="Jus")
    assert first[11:] == [*(f"{c:.6f}" for c in expected.contributions), f"{expected.name:.6f}"]
    assert float(first[-1]) > 0  # the name pushed towards meats
    with pytest.raises(DataError, match="--coverage: this checkpoint holds no calibration scores"):
        predict_csv(path, batch, options=TrustOptions(coverage=0.9), allow_missing=True)
    labelled = tmp_path / "seed.csv"  # the seed's headerless format: the first cell one of the checkpoint's classes
    labelled.write_text("other,21,1,20,0\n", encoding="utf-8")
    nameless = np.exp([1.9, 4.0, 0.0]) / np.exp([1.9, 4.0, 0.0]).sum()  # no name column: an empty bag
    assert predict_csv(path, labelled)[0].splitlines()[1].split(",")[:9] == ["other", "21", "1", "20", "0", "meats",
                                                                           *(f"{x:.6f}" for x in nameless)]
