"""Calibration figures against values worked out by hand on a few rows, or against another library (scipy's
bounded minimiser for the temperature): softmax of one network and of an ensemble, NLL, the temperature, the
conformal scores, ECE and its bins, Brier, risk–coverage and the set figures (issue 30: references that are not
the code under test). Fast: numpy only, no model is trained."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foodcls.inference import calibration as cal

# Five products of four classes: top probabilities 0.95 (right), 0.95 (wrong), 0.65 (right), 0.3 (right), 1.0 (right).
P = np.array([[0.95, 0.02, 0.02, 0.01], [0.95, 0.02, 0.02, 0.01], [0.65, 0.35, 0.0, 0.0], [0.3, 0.25, 0.25, 0.2], [1.0, 0.0, 0.0, 0.0]])
LABELS = np.array([0, 1, 0, 0, 0])


def test_softmax_of_a_network_at_a_temperature_and_of_an_ensemble():
    ln3 = math.log(3)
    assert cal.softmax(np.array([[0.0, ln3]]))[0].tolist() == pytest.approx([0.25, 0.75])
    assert cal.softmax(np.array([[0.0, ln3]]), 2.0)[0].tolist() == pytest.approx([1 / (1 + 3**0.5), 3**0.5 / (1 + 3**0.5)])
    assert cal.softmax(np.array([[[0.0, ln3]], [[ln3, 0.0]]]))[0].tolist() == pytest.approx([0.5, 0.5])  # the members' mean
    assert cal.softmax(np.array([[1000.0, 0.0]])).tolist() == [[1.0, 0.0]]  # no overflow
    # Each row shifted by its own largest logit: a row of 1000s beside a row of small ones leaves the latter intact.
    assert cal.softmax(np.array([[1000.0, 0.0], [0.0, ln3]]))[1].tolist() == pytest.approx([0.25, 0.75])
    assert cal.softmax(np.array([[[1000.0, 0.0], [0.0, ln3]]]))[1].tolist() == pytest.approx([0.25, 0.75])
    assert cal.softmax(np.array([[0.0, ln3]], np.float32)).dtype == np.float64  # float64 from float32 logits


def test_nll_and_brier_by_hand():
    p, labels = np.array([[0.25, 0.75], [1.0, 0.0]]), np.array([1, 1])
    assert cal.nll(p, labels) == pytest.approx(-(math.log(0.75) + math.log(1e-12)) / 2)  # a zero clipped at 1e-12
    assert cal.brier(p, labels) == pytest.approx((0.125 + 2.0) / 2)  # (0.25² + 0.25²), (1² + 1²)
    assert math.isnan(cal.nll(p[:0], labels[:0])) and math.isnan(cal.brier(p[:0], labels[:0]))


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])  # under-, roughly and over-confident logits
def test_the_temperature_minimises_the_nll_as_scipys_bounded_search_finds_it(scale):
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4)) + 2.0 * np.eye(4)[labels]
    logits[rng.random(400) < 0.25] = rng.normal(size=(4,)) * 2  # a quarter of them noise: not separable
    logits *= scale
    found = cal.fit_temperature(logits, labels)
    best = minimize_scalar(lambda log_t: cal.nll(cal.softmax(logits, math.exp(log_t)), labels),
                           bounds=(math.log(0.05), math.log(20)), method="bounded", options={"xatol": 1e-9})
    assert found == pytest.approx(math.exp(best.x), rel=1e-4)
    ensemble = np.stack([logits, logits * 0.5])
    best = minimize_scalar(lambda log_t: cal.nll(cal.softmax(ensemble, math.exp(log_t)), labels),
                           bounds=(math.log(0.05), math.log(20)), method="bounded", options={"xatol": 1e-9})
    assert cal.fit_temperature(ensemble, labels) == pytest.approx(math.exp(best.x), rel=1e-4)


def test_the_temperature_at_its_bounds_and_without_rows():
    labels = np.array([0, 1, 0, 1])
    # Margins of 1: at T = 0.05 still 1 − 2·10⁻⁹, so the NLL falls all the way down (with larger ones, p = 1.0
    # exactly below some T and the NLL is flat there).
    separable = np.array([[0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, 0.5]])
    assert cal.fit_temperature(separable, labels) == pytest.approx(0.05, rel=1e-6)  # sharper is always better
    assert cal.fit_temperature(-separable, labels) == pytest.approx(20.0, rel=1e-6)  # always wrong: flatter
    assert cal.fit_temperature(separable[:0], labels[:0]) == 1.0


def test_conformal_scores_are_one_minus_the_true_class_probability_sorted():
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    scores = cal.conformal_scores(p, np.array([1, 1, 0]))
    assert scores.dtype == np.float32 and scores.tolist() == pytest.approx([0.2, 0.5, 0.6])


def test_ece_and_its_bins_by_hand():
    # Bins of 0.1: bin 9 holds 0.95, 0.95, 1.0 (2 of 3 right, confidence 0.9667), bin 6 the 0.65 (right), bin 3
    # the 0.3 (right): 3/5·|2/3 − 0.9667| + 1/5·|1 − 0.65| + 1/5·|1 − 0.3| = 0.18 + 0.07 + 0.14.
    assert cal.expected_calibration_error(P, LABELS) == pytest.approx(0.39)
    assert cal.expected_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == 1.0  # a certain, wrong answer: the last bin
    # Bins of 0.5: 0.95, 0.95, 0.65, 1.0 (3 of 4 right, confidence 0.8875) and the 0.3: 4/5·0.1375 + 1/5·0.7.
    assert cal.expected_calibration_error(P, LABELS, bins=2) == pytest.approx(0.25)
    bins = cal.reliability(P, LABELS)
    assert [(b["low"], b["high"], b["n"]) for b in bins] == [(0.3, 0.4, 1), (0.6, 0.7, 1), (0.9, 1.0, 3)]
    assert [b["confidence"] for b in bins] == pytest.approx([0.3, 0.65, 2.9 / 3])
    assert [b["accuracy"] for b in bins] == pytest.approx([1.0, 1.0, 2 / 3])


def test_risk_coverage_by_hand():
    table = {row["threshold"]: (row["coverage"], row["accuracy"]) for row in cal.risk_coverage(P, LABELS)}
    assert list(table) == list(cal.RISK_THRESHOLDS)
    expected = {0.0: (1.0, 0.8), 0.3: (1.0, 0.8), 0.4: (0.8, 0.75), 0.5: (0.8, 0.75), 0.6: (0.8, 0.75), 0.7: (0.6, 2 / 3),
                0.8: (0.6, 2 / 3), 0.9: (0.6, 2 / 3), 0.95: (0.6, 2 / 3), 0.99: (0.2, 1.0)}
    assert {t: (c, pytest.approx(a)) for t, (c, a) in expected.items()} == table
    assert cal.risk_coverage(P[:0], LABELS[:0])[0] == {"threshold": 0.0, "coverage": 0.0, "accuracy": None}


def test_set_figures_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    # Nine scores 0.1 … 0.9: at 0.8 the 8th smallest, 0.8. Sets {k: 1 − p_k ≤ 0.8}: {0, 1}, {0, 1, 2}, {2}.
    figures = cal.set_figures(p, np.array([0, 1, 0]), np.linspace(0.1, 0.9, 9), 0.8)
    assert figures.to_json() == {"coverage_target": 0.8, "empirical_coverage": pytest.approx(2 / 3), "mean_size": pytest.approx(2.0)}
    empty = cal.set_figures(p[:0], np.array([], dtype=int), np.linspace(0.1, 0.9, 9), 0.8)
    assert math.isnan(empty.empirical_coverage) and math.isnan(empty.mean_size)


def test_open_set_figures_without_labels_and_without_outside_products():
    classes = ("a", "b", "other")
    inside = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    figures = cal.open_set(inside, inside[:0], classes)
    assert figures == {"n": 0, "auroc": None, "rejected_at_coverage": {"0.90": None, "0.95": None}, "share_confident_over_0_9": None}
    assert math.isnan(cal.auroc(np.array([0.5]), np.array([])))


def test_edges_of_the_threshold_auroc_and_empty_inputs_without_warnings():
    import warnings

    assert cal.conformal_threshold(np.array([0.3]), 0.5) == 0.3  # n = 1: ⌈2 · 0.5⌉ = 1st
    assert cal.auroc(np.array([0.9]), np.array([0.1, 0.2])) == 1.0  # one positive
    assert cal.auroc(np.array([0.5, 0.9]), np.array([0.7])) == 0.5  # one negative
    classes = ("a", "b", "other")
    # An outside score exactly at the threshold (0.6, the lower 10 % quantile of the inside ones) is kept, not rejected.
    inside = np.array([[0.5, 0.1, 0.4], [0.8, 0.1, 0.1], [0.45, 0.45, 0.1]])  # 1 − p(other): 0.6, 0.9, 0.9
    outside = np.array([[0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])  # 0.6, 0.2
    assert cal.open_set(inside, outside, classes)["rejected_at_coverage"] == {"0.90": 0.5, "0.95": 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # empty inputs give None or NaN quietly, never "mean of empty slice"
        assert math.isnan(cal.auroc(np.array([]), np.array([0.5]))) and math.isnan(cal.auroc(np.array([0.5]), np.array([])))
        assert math.isnan(cal.nll(inside[:0], np.array([], dtype=int))) and math.isnan(cal.brier(inside[:0], np.array([], dtype=int)))
        figures = cal.open_set(inside[:0], outside, classes, in_class_labels=np.array([], dtype=int))
        assert figures["rejected_at_coverage"] == {"0.90": 1.0, "0.95": 1.0}  # no threshold: every outside product rejected
        assert figures["accuracy_of_kept"] == {"0.90": None, "0.95": None} and figures["auroc"] is None
        empty = cal.set_figures(inside[:0], np.array([], dtype=int), np.linspace(0.1, 0.9, 9), 0.8)
        assert math.isnan(empty.empirical_coverage) and math.isnan(empty.mean_size)
