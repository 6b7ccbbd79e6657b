import numpy as np
from sklearn import metrics

from foodcls.inference.evaluate import classification_report


def test_report_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 4, 500))
    report = classification_report(y_true, y_pred, ["a", "b", "c", "d"])
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y_true, y_pred, labels=range(4))
    assert report["accuracy"] == metrics.accuracy_score(y_true, y_pred)
    assert report["confusion_matrix"] == metrics.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    for i, name in enumerate("abcd"):
        assert np.isclose(report["per_class"][name]["precision"], precision[i])
        assert np.isclose(report["per_class"][name]["recall"], recall[i])
        assert np.isclose(report["per_class"][name]["f1"], f1[i])
        assert report["per_class"][name]["support"] == support[i]
    assert np.isclose(report["macro_f1"], metrics.f1_score(y_true, y_pred, average="macro"))
    assert np.isclose(report["balanced_accuracy"], metrics.balanced_accuracy_score(y_true, y_pred))


def test_confusion_rows_are_true_class_and_unpredicted_class_has_zero_precision():
    report = classification_report(np.array([0, 0, 1]), np.array([1, 1, 1]), ["x", "y"])
    assert report["confusion_matrix"] == [[0, 2], [0, 1]]
    assert report["per_class"]["x"]["precision"] == 0.0
    assert report["n"] == 3
