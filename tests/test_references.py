"""Independent references, small and worked out by hand (or by another library), for the functions whose
small mistakes nothing else would notice: conformal ranks, the order and members of sets, decisions exactly at
the threshold, labelling rules and each tolerance at its edge, early-stopping ties, gradient norms against
autograd, the default checkpoint among several runs, and eval's figures against scikit-learn's metrics."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from foodcls.config import load_config
from foodcls.inference.calibration import conformal_threshold, decisions, prediction_sets
from foodcls.inference.network import Outputs
from tests.conftest import SAMPLES, needs_samples, write_config


# --- conformal sets -------------------------------------------------------------------------------------------

def test_the_conformal_threshold_is_the_ceil_n_plus_1_times_coverage_th_smallest_score():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9, sorted: 0.1 … 0.9
    assert conformal_threshold(scores, 0.8) == 0.8  # ⌈10 · 0.8⌉ = 8: the 8th smallest
    assert conformal_threshold(scores, 0.5) == 0.5  # ⌈5⌉ = 5th
    assert conformal_threshold(scores, 0.51) == 0.6  # ⌈5.1⌉ = 6th
    assert conformal_threshold(scores, 0.9) == 0.9  # ⌈9⌉ = 9th, the largest
    assert conformal_threshold(scores, 0.95) == 1.0  # ⌈9.5⌉ = 10 > n: too few rows, every class
    assert conformal_threshold(np.array([]), 0.5) == 1.0


def test_sets_hold_every_class_within_the_threshold_most_probable_first():
    p = np.array([[0.10, 0.50, 0.40, 0.00],    # 1 − p: 0.9, 0.5, 0.6, 1.0
                  [0.25, 0.25, 0.30, 0.20],    # 0.75, 0.75, 0.7, 0.8
                  [0.05, 0.05, 0.05, 0.85]])   # nothing within 0.1 but the top: the top alone
    assert prediction_sets(p, 0.6) == [[1, 2], [2], [3]]  # row 2: none within 0.6 → never empty, the top class
    assert prediction_sets(p, 0.75) == [[1, 2], [2, 0, 1], [3]]  # ties in order of the class index
    assert prediction_sets(p, 1.0) == [[1, 2, 0, 3], [2, 0, 1, 3], [3, 0, 1, 2]]
    # Against the definition, brute force, on random rows of five classes.
    rng = np.random.default_rng(1)
    rows = rng.dirichlet(np.ones(5) * 0.5, size=200)
    for q in (0.3, 0.6, 0.9):
        brute = []
        for row in rows:
            members = [k for k in sorted(range(5), key=lambda k: (-row[k], k)) if 1 - row[k] <= q]
            brute.append(members or [int(np.argmax(row))])
        assert prediction_sets(rows, q) == brute


# --- decisions at the threshold --------------------------------------------------------------------------------

def test_a_decision_exactly_at_min_confidence_is_the_class_below_it_unsure():
    classes = ("beverages", "meats", "snacks", "desserts")
    p = np.array([[0.75, 0.25, 0, 0], [0.25, 0.25, 0.5, 0], [0.125, 0.125, 0.125, 0.625]], dtype=np.float32)
    assert decisions(p, classes, 0.75) == ["beverages", "unsure", "unsure"]
    assert decisions(p, classes, 0.5) == ["beverages", "snacks", "desserts"]
    assert decisions(p, classes, None) == ["beverages", "snacks", "desserts"]


def test_the_checkpoints_min_confidence_decides_unless_the_call_overrides_it(trained_run):
    from foodcls.inference.judge import TrustOptions, judge_outputs
    from foodcls.inference.predict import load_predictor

    predictor = dataclasses.replace(load_predictor(trained_run.best_checkpoint), min_confidence=0.75)
    p = np.array([[0.75, 0.25, 0, 0], [0.5, 0.5, 0, 0]], dtype=np.float32)
    outputs = Outputs(p, np.log(np.clip(p, 1e-9, 1))[None])
    assert judge_outputs(predictor, outputs).decisions == ["beverages", "unsure"]
    assert judge_outputs(predictor, outputs, TrustOptions(min_confidence=0.5)).decisions == ["beverages", "beverages"]
    assert judge_outputs(dataclasses.replace(predictor, min_confidence=None), outputs).decisions == ["beverages", "beverages"]


# --- labelling rules and tolerances ------------------------------------------------------------------------------

HEADER = ["code", "product_name", "categories_tags", "proteins_100g", "carbohydrates_100g", "fat_100g", "additives_n",
          "sugars_100g", "saturated-fat_100g"]
# (code, categories, protein, carbs, fat, additives, sugars, saturated fat) → what a build with --other makes of it
HAND_ROWS = [
    ("1001", "en:beverages", 1, 10, 0, 0, 10, 0, "beverages"),
    ("1002", "en:null", 5, 20, 5, 1, 5, 1, "no_class"),  # OFF's "no category"
    ("1003", "", 5, 20, 5, 1, 5, 1, "no_class"),
    ("1004", "en:cheeses", 25, 1, 30, 0, 0, 20, "other"),
    ("1005", "en:null,en:cheeses", 24, 1, 31, 0, 0, 20, "other"),
    ("1006", "en:beverages,en:meats", 10, 10, 10, 0, 1, 1, "ambiguous_class"),
    ("1007", "en:sugary-snacks", 5, 60, 20, 2, 40, 10, "near_class"),  # a near tag: perhaps a snack after all
    ("1008", "en:snacks", 5, 50, 20, 1, 55, 5, "snacks"),  # sugars = carbs + 5: the tolerance's edge, kept
    ("1009", "en:snacks", 5, 50, 20, 1, 55.5, 5, "sugars_over_carbs"),
    ("1010", "en:meats", 20, 1, 10, 1, 0, 15, "meats"),  # saturated fat = fat + 5, kept
    ("1011", "en:meats", 20, 1, 10, 1, 0, 15.5, "saturated_fat_over_fat"),
    ("1012", "en:desserts", 5, 50, 50, 0, 30, 10, "desserts"),  # protein + carbs + fat = 105, kept
    ("1013", "en:desserts", 5.5, 50, 50, 0, 30, 10, "nutrients_sum_over_105"),
    ("1014", "en:snacks", 5, 50, 20, 1.5, 10, 5, "fractional_additives"),
    ("1015", "en:snacks", "", 50, 20, 1, 10, 5, "missing_protein"),
]


def test_labels_and_tolerances_on_hand_made_products(tmp_path):
    from foodcls.offdata.build import build_dataset

    export = tmp_path / "hand.tsv"
    export.write_text("\t".join(HEADER) + "\n" + "".join(
        "\t".join([code, f"product {code}", tags, *map(str, values)]) + "\n" for code, tags, *values, _ in HAND_ROWS), encoding="utf-8")
    card = build_dataset([export], tmp_path / "out", other=True)
    kept = {row["code"]: row["label"] for split in ("train", "val", "test")
            for row in csv.DictReader((tmp_path / "out" / f"{split}.csv").read_text(encoding="utf-8").splitlines())}
    expected_kept = {code: what for code, *_, what in HAND_ROWS if what in ("beverages", "meats", "snacks", "desserts", "other")}
    assert kept == expected_kept
    dropped = {reason: n for reason, n in card["dropped"].items() if n}
    expected_dropped: dict[str, int] = {}
    for *_, what in HAND_ROWS:
        if what not in expected_kept.values():
            expected_dropped[what] = expected_dropped.get(what, 0) + 1
    assert dropped == expected_dropped


@needs_samples
def test_en_null_is_no_category_on_the_shared_2026_export(tmp_path):
    """Read by Python's csv module, not by the build: the 2026 TSV's products whose only category is `en:null`
    (414 of its rows) are never `other`."""
    from foodcls.offdata.build import build_dataset

    export = SAMPLES / "off-2026-products.tsv"
    csv.field_size_limit(1 << 30)
    with open(export, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        code, tags = header.index("code"), header.index("categories_tags")
        null_only = {row[code].lstrip("0") for row in reader if len(row) == len(header) and row[tags].strip() == "en:null"}
    assert len(null_only) > 300
    card = build_dataset([export], tmp_path / "out", other=True)
    built = [row for split in ("train", "val", "test") for row in csv.DictReader((tmp_path / "out" / f"{split}.csv").read_text(encoding="utf-8").splitlines())]
    assert not {row["code"].lstrip("0") for row in built} & null_only
    assert card["dropped"]["no_class"] >= len(null_only)


# --- early stopping ------------------------------------------------------------------------------------------------

def test_a_tie_is_no_improvement_and_min_delta_is_strict():
    from foodcls.training.run import _improved

    assert _improved(0.5, None, "val_loss", 0.0)
    assert not _improved(0.5, 0.5, "val_loss", 0.0) and not _improved(0.8, 0.8, "val_accuracy", 0.0)
    assert _improved(0.4999, 0.5, "val_loss", 0.0) and _improved(0.8001, 0.8, "val_accuracy", 0.0)
    assert not _improved(0.49, 0.5, "val_loss", 0.01) and _improved(0.4899, 0.5, "val_loss", 0.01)
    assert not _improved(0.81, 0.8, "val_accuracy", 0.01) and _improved(0.8101, 0.8, "val_accuracy", 0.01)
    assert not _improved(0.6, 0.5, "val_loss", 0.0) and not _improved(0.7, 0.8, "val_accuracy", 0.0)


# --- gradient norms against autograd --------------------------------------------------------------------------------

def test_the_recorded_gradient_norms_are_each_layers_mean_over_the_steps_of_autograds(tmp_path, demo_dir):
    """SGD with a learning rate of 1e-9: the weights barely move during the epoch, so each step's gradient is
    autograd's at the saved weights; the record must be each layer's mean over the epoch's 3 steps."""
    import torch

    from foodcls.data import read_labelled_csv
    from foodcls.inference.predict import load_predictor
    from foodcls.training.epoch import epoch_order
    from foodcls.training.fit import train

    config = load_config(write_config(tmp_path / "c.yaml", demo_dir, epochs=1, batch_size=250, lr=1e-9))
    run = train(config, runs_root=tmp_path / "runs", name="norms")
    recorded = [json.loads(line) for line in open(run.run_dir / "metrics.jsonl")][0]["grad_norms"]
    predictor = load_predictor(run.last_checkpoint)
    data = read_labelled_csv(demo_dir / "train.csv")
    order = epoch_order(config.train.seed, 1, len(data))
    x = torch.tensor(predictor.inputs(data.features), dtype=torch.float64)
    y = torch.tensor(data.labels)
    weights = [torch.tensor(w[0], dtype=torch.float64, requires_grad=True) for w, _ in predictor.layers]
    biases = [torch.tensor(b[0], dtype=torch.float64, requires_grad=True) for _, b in predictor.layers]
    per_step = []
    for start in range(0, len(order), 250):  # 600 rows: 250, 250, 100
        rows = torch.tensor(order[start:start + 250])
        h = x[rows]
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = h @ w.T + b
            if i < len(weights) - 1:
                h = torch.relu(h)
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(h, y[rows]), weights)
        per_step.append([float(g.norm()) for g in grads])
    assert len(per_step) == 3
    expected = np.mean(per_step, axis=0)
    assert np.allclose(recorded, expected, rtol=1e-4), (recorded, expected.tolist(), np.sum(per_step, axis=0).tolist())


# --- the default checkpoint -----------------------------------------------------------------------------------------

def test_the_default_checkpoint_is_the_newest_finished_runs_of_several(tmp_path, demo_dir):
    from foodcls.runs import newest_best_checkpoint
    from foodcls.training.fit import train

    config = load_config(write_config(tmp_path / "c.yaml", demo_dir, epochs=1))
    first = train(config, runs_root=tmp_path / "runs", name="first")
    second = train(config, runs_root=tmp_path / "runs", name="second")
    third = train(config, runs_root=tmp_path / "runs", name="third")
    summary = json.loads((third.run_dir / "summary.json").read_text())
    (third.run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    assert newest_best_checkpoint(tmp_path / "runs") == second.best_checkpoint != first.best_checkpoint


# --- eval's figures against scikit-learn ----------------------------------------------------------------------------

def test_eval_figures_are_scikit_learns_on_the_same_predictions(trained_run, demo_dir, tmp_path):
    from sklearn import metrics

    from foodcls.data import read_labelled_csv
    from foodcls.inference.evaluate import evaluate_checkpoint
    from foodcls.inference.predict import load_predictor

    report = evaluate_checkpoint(trained_run.best_checkpoint, [demo_dir / "test.csv"])
    predictor = load_predictor(trained_run.best_checkpoint)
    data = read_labelled_csv(demo_dir / "test.csv")
    p = predictor.probabilities(data.features)
    y, predicted = data.labels, p.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(y, predicted))
    assert report["macro_f1"] == pytest.approx(metrics.f1_score(y, predicted, average="macro"))
    assert report["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(y, predicted))
    assert report["confusion_matrix"] == metrics.confusion_matrix(y, predicted, labels=range(4)).tolist()
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y, predicted, labels=range(4), zero_division=0)
    for k, name in enumerate(predictor.classes):
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((precision[k], recall[k], f1[k], support[k]))
    assert report["nll"] == pytest.approx(metrics.log_loss(y, p.astype(np.float64), labels=range(4)), rel=1e-5)
    assert report["brier"] == pytest.approx(np.mean(np.sum((p - np.eye(4)[y]) ** 2, axis=1)), rel=1e-6)
    # ECE by its definition: 10 equal-width bins of the top probability, |accuracy − confidence| weighted by size.
    top, right = p.max(axis=1), predicted == y
    bins = np.minimum((top * 10).astype(int), 9)
    ece = sum((bins == b).mean() * abs(right[bins == b].mean() - top[bins == b].mean()) for b in range(10) if (bins == b).any())
    assert report["ece"] == pytest.approx(ece, rel=1e-6)
    # Wilson interval of the accuracy, from its formula.
    n, acc, z = len(y), right.mean(), 1.959963984540054
    centre, half = (acc + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert report["accuracy_ci"] == pytest.approx([centre - half, centre + half], abs=1e-9)


def test_open_set_auroc_is_scikit_learns():
    from sklearn.metrics import roc_auc_score

    from foodcls.inference.calibration import auroc

    rng = np.random.default_rng(0)
    inside, outside = rng.integers(0, 20, 300) / 20, rng.integers(0, 20, 200) / 25  # many ties
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[inside, outside])
    assert auroc(inside, outside) == pytest.approx(expected, abs=1e-12)



def test_open_set_figures_on_ten_hand_made_products():
    from sklearn.metrics import roc_auc_score

    from foodcls.inference.calibration import in_class_score, labelled_open_set

    classes = ("beverages", "meats", "other")
    # Six in-class products (labels 0 / 1) and four `other` ones (label 2); 1 − p(other) is each one's score.
    p = np.array([[0.90, 0.05, 0.05], [0.60, 0.30, 0.10], [0.20, 0.70, 0.10], [0.10, 0.50, 0.40], [0.45, 0.35, 0.20],
                  [0.30, 0.60, 0.10], [0.05, 0.05, 0.90], [0.91, 0.04, 0.05], [0.20, 0.10, 0.70], [0.90, 0.00, 0.10]])
    labels = np.array([0, 0, 1, 1, 0, 0, 2, 0, 2, 2])
    assert in_class_score(p, classes).tolist() == pytest.approx([0.95, 0.9, 0.9, 0.6, 0.8, 0.9, 0.1, 0.95, 0.3, 0.9])
    assert in_class_score(p, ("a", "b", "c")).tolist() == pytest.approx(p.max(axis=1).tolist())  # no `other`: the top
    figures = labelled_open_set(p, labels, classes)
    inside = np.array([0.95, 0.9, 0.9, 0.6, 0.8, 0.9, 0.95])  # rows 0–5 and 7 (label 0, 0, 1, 1, 0, 0, 0)
    outside = np.array([0.1, 0.3, 0.9])
    assert figures["n"] == 3
    assert figures["auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(7), np.zeros(3)], np.r_[inside, outside]))
    # 90 % of 7 in-class: the threshold is the lower 10 % quantile, 0.6 (all 7 kept): two of three outside below it.
    assert figures["rejected_at_coverage"] == {"0.90": pytest.approx(2 / 3), "0.95": pytest.approx(2 / 3)}
    # Kept: all seven; their most probable named class: 0, 0, 1, 1, 0, 1 (row 5: 0.3 < 0.6, wrong), 0 → 6 of 7.
    assert figures["accuracy_of_kept"] == {"0.90": pytest.approx(6 / 7), "0.95": pytest.approx(6 / 7)}
    assert figures["share_confident_over_0_9"] == pytest.approx(1 / 3)  # row 9, exactly 0.9 (row 7's 0.91 is in-class)
    with_scores = labelled_open_set(p, labels, classes, scores=np.linspace(1.0, 0.1, 10))  # a score of one's own
    assert with_scores["auroc"] == pytest.approx(roc_auc_score(labels != 2, np.linspace(1.0, 0.1, 10)))

@needs_samples
def test_the_shared_exports_build_into_the_counts_written_down(tmp_path):
    """The per-class counts of `data build --other` over the eleven shared exports, written down once (and
    quoted in docs/how-to/real-data.md): a change in labelling, cleaning or de-duplication moves them."""
    from foodcls.offdata.build import build_dataset

    card = build_dataset(sorted(SAMPLES.glob("off-*")), tmp_path / "off", other=True)
    assert card["per_class"] == {"beverages": 280, "meats": 196, "snacks": 913, "desserts": 58, "other": 1664}
    assert card["rows_read"] == 12136 and card["dropped"]["no_class"] == 5842 and card["dropped"]["near_class"] == 431


# --- batch predictions -------------------------------------------------------------------------------------------

def test_a_batch_is_its_input_with_each_rows_probabilities_decision_and_set(trained_run, tmp_path):
    from foodcls.feature_table import read_feature_table
    from foodcls.inference.judge import TrustOptions
    from foodcls.inference.predict import load_predictor, predict_csv, predict_table

    predictor = load_predictor(trained_run.best_checkpoint)
    values = np.array([[20, 1, 12, 2], [1, 10, 0, 0], [5, 60, 20, 3]], dtype=np.float32)
    batch = tmp_path / "in.csv"
    batch.write_text("code,protein,carbs,fat,additives\n" + "".join(f"c{i},{','.join(f'{v:g}' for v in row)}\n" for i, row in enumerate(values)),
                     encoding="utf-8")
    text, warnings = predict_csv(trained_run.best_checkpoint, batch, options=TrustOptions(min_confidence=0.9))
    assert warnings == []
    lines = list(csv.reader(text.splitlines()))
    classes = list(predictor.classes)
    assert lines[0] == ["code", "protein", "carbs", "fat", "additives", "predicted", *(f"p_{c}" for c in classes), "decision", "suggest"]
    assert len(lines) == 4
    p = predictor.probabilities(values)
    for i, line in enumerate(lines[1:]):
        top = classes[int(np.argmax(p[i]))]
        assert line[:5] == [f"c{i}", *(f"{v:g}" for v in values[i])] and line[5] == top
        assert line[6:6 + len(classes)] == [f"{x:.6f}" for x in p[i]]
        assert line[6 + len(classes):] == [top if p[i].max() >= 0.9 else "unsure", "false"]
    # Sets: with conformal scores of ten calibration rows, at 0.8 the 9th smallest (⌈11 · 0.8⌉ = 9) is q.
    scored = dataclasses.replace(predictor, conformal_scores=np.linspace(0.05, 0.95, 10))
    header, rows = predict_table(scored, read_feature_table(batch, predictor.features), options=TrustOptions(coverage=0.8))
    assert header[-1] == "set"
    for i, row in enumerate(rows):
        in_set = sorted((k for k in range(len(classes)) if 1 - p[i][k] <= 0.85 + 1e-12), key=lambda k: (-p[i][k], k))
        assert row[-1] == "|".join(classes[k] for k in in_set or [int(np.argmax(p[i]))])
    explained, _ = predict_csv(trained_run.best_checkpoint, batch, explain=True)
    header, *rows = list(csv.reader(explained.splitlines()))
    assert header[-4:] == [f"contrib_{f}" for f in predictor.features] and "set" not in header
    for row, line in zip(rows, lines[1:]):
        assert row[:6 + len(classes)] == line[:6 + len(classes)]  # the same answers, and the contributions after them
        assert all(math.isfinite(float(c)) for c in row[-4:])
