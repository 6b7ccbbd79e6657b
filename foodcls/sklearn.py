"""foodcls's network as a scikit-learn classifier: in a Pipeline, cross_val_score, GridSearchCV, a conformal
wrapper (MAPIE, crepes) — anywhere an estimator goes.

    from foodcls.sklearn import FoodClassifier
    clf = FoodClassifier(hidden=(32, 32), optimizer="adam", lr=0.003, epochs=200, random_state=0).fit(X, y)

It trains with the training stack of `foodcls train` (training/fit.py: the same explicit backpropagation,
optimizers, early stopping and calibration; no second training loop), on any numeric columns and labels,
in a temporary run directory that is removed afterwards; what it learns is the checkpoint, kept in memory
(and pickled with the estimator), and predictions come from the numpy predictor, as `foodcls predict`'s.
Constructor arguments are stored as given; everything learnt ends in `_` (skorch's and scikit-learn's way).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from foodcls.inference.checkpoint import Checkpoint
from foodcls.inference.predict import predictor_from_checkpoint

__all__ = ["FoodClassifier"]


class FoodClassifier(ClassifierMixin, BaseEstimator):
    """An MLP trained by foodcls. The parameters are the config's keys of the same names (README, Config
    reference): `hidden`, `activation`, `optimizer`, `lr`, `batch_size`, `epochs`, `weight_decay`, `momentum`,
    `scaling`, `feature_dropout`, `label_smoothing`, `class_weight` (None, "balanced", "sqrt_balanced", {label: weight}),
    `early_stopping` (patience in epochs, on a `validation_fraction` of the rows), `calibration` ("auto",
    "temperature", "none": one temperature fitted on the validation rows), `ensemble` (K members averaged).
    random_state None draws a seed (scikit-learn's convention); an int makes fit reproducible, bit for bit."""

    def __init__(self, hidden: tuple[int, ...] = (32, 32), activation: str = "relu", optimizer: str = "sgd", lr: float = 0.01,
                 batch_size: int = 256, epochs: int = 1000, random_state: int | None = None, weight_decay: float = 0.0,
                 momentum: float = 0.0, scaling: str = "standard", feature_dropout: float = 0.0, label_smoothing: float = 0.0,
                 class_weight: str | None = None, early_stopping: int | None = None, validation_fraction: float | None = None,
                 calibration: str = "auto", ensemble: int = 1) -> None:
        self.hidden = hidden
        self.activation = activation
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.random_state = random_state
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.scaling = scaling
        self.feature_dropout = feature_dropout
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.calibration = calibration
        self.ensemble = ensemble

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # an unknown value is filled with its training median, as foodcls does
        tags.non_deterministic = self.random_state is None
        return tags

    def _class_weights(self, classes: list[str]) -> Any:
        """class_weight as the config takes it: its name, or {label: weight} mapped onto the internal class names."""
        if isinstance(self.class_weight, dict):
            by_label = {label: classes[i] for i, label in enumerate(self.classes_.tolist())}
            unknown = [label for label in self.class_weight if label not in by_label]
            if unknown:
                raise ValueError(f"class_weight: {unknown[0]!r} is not a class of y ({', '.join(map(str, self.classes_))})")
            return {by_label[label]: float(weight) for label, weight in self.class_weight.items()}
        return self.class_weight or "none"

    def _config(self, columns: list[str], classes: list[str], seed: int):
        """A foodcls Config with these hyperparameters, over generic columns (not the nutrients' vocabulary)."""
        from foodcls.config import validate_config
        from foodcls.errors import ConfigError

        train: dict[str, Any] = {"optimizer": self.optimizer, "lr": float(self.lr), "batch_size": int(self.batch_size),
                                 "epochs": int(self.epochs), "seed": seed, "weight_decay": float(self.weight_decay),
                                 "momentum": float(self.momentum), "feature_dropout": float(self.feature_dropout),
                                 "label_smoothing": float(self.label_smoothing), "calibration": self.calibration,
                                 "class_weights": self._class_weights(classes), "checkpoint_seconds": 1e9}
        if self.early_stopping is not None:
            train["early_stopping"] = {"patience": int(self.early_stopping), "monitor": "val_loss"}
        raw = {"data": {"train": "<memory>", "classes": classes, "scaling": self.scaling,
                        "val_fraction": self.validation_fraction if self.validation_fraction is None else float(self.validation_fraction)},
               "model": {"hidden": [int(h) for h in self.hidden], "activation": self.activation, "ensemble": int(self.ensemble)},
               "train": train}
        try:
            config = validate_config(raw, "FoodClassifier")
        except ConfigError as error:
            raise ValueError(str(error)) from None
        # The stack reads only the number of columns; their names go to the checkpoint as they are.
        return config.model_copy(update={"data": config.data.model_copy(update={"features": tuple(columns)})})

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FoodClassifier:
        from foodcls.data import LabelledData, Splits, stratified_split

        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"FoodClassifier needs at least two classes in y, got {len(self.classes_)} class "
                             "(Classifier can't train when only one class is present)")
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64)
        seed = int(self.random_state) if self.random_state is not None else int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        columns = [str(c) for c in getattr(self, "feature_names_in_", [f"x{i}" for i in range(X.shape[1])])]
        classes = [f"c{i}" for i in range(len(self.classes_))]
        config = self._config(columns, classes, seed)
        data = LabelledData(X.astype(np.float32), labels.astype(np.int64), tuple(columns), "X", weights.astype(np.float32),
                            classes=tuple(classes))
        val = None
        if self.validation_fraction is not None:
            kept, held = stratified_split(data.labels, float(self.validation_fraction), seed)
            data, val = data.subset(kept), data.subset(held)
        root = Path(tempfile.mkdtemp(prefix="foodcls-sklearn-"))
        try:
            stored = _train(config, Splits(data, val, None), root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        self.checkpoint_ = (stored.arrays, stored.meta)
        self.predictor_ = predictor_from_checkpoint(Checkpoint(stored.arrays, stored.meta, Path("<FoodClassifier>")))
        self.n_epochs_ = int(stored.meta.get("epoch", 0))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "predictor_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return self.predictor_.probabilities(X.astype(np.float32)).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        probabilities = self.predict_proba(X)  # (checks that the estimator was fitted, first)
        return self.classes_[probabilities.argmax(axis=1)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("predictor_", None)  # rebuilt from the checkpoint's arrays on unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "checkpoint_" in state:
            arrays, meta = state["checkpoint_"]
            self.predictor_ = predictor_from_checkpoint(Checkpoint(arrays, meta, Path("<FoodClassifier>")))

    @staticmethod
    def expected_failed_checks() -> dict[str, str]:
        """The scikit-learn estimator checks this estimator does not pass, and why (parametrize_with_checks'
        expected_failed_checks; tests/test_sklearn.py passes these)."""
        return {
            # Minibatch SGD: a row of weight 2 is not the same as that row twice (the batches differ), nor is a
            # row of weight 0 the same as no row (the epochs' orders and batches differ) — as for scikit-learn's
            # own MLPClassifier, which these checks skip the same way.
            "check_sample_weight_equivalence_on_dense_data": "minibatch SGD: weights are not repetitions",
            "check_sample_weights_invariance": "minibatch SGD: a zero weight changes the batches",
            "check_sample_weight_equivalence_on_sparse_data": "minibatch SGD: weights are not repetitions",
        }


def _train(config, splits, root: Path) -> Checkpoint:
    """Train one run (the members of an ensemble side by side) with foodcls's stack under root; its best checkpoint,
    loaded (an ensemble's assembled, calibrated where asked)."""
    from foodcls import runs
    from foodcls.inference.checkpoint import load_checkpoint
    from foodcls.training import composite
    from foodcls.training.fit import RunSpec, fit_runs

    run_dir = root / "run"
    (run_dir / runs.CHECKPOINT_DIR).mkdir(parents=True)
    if not config.composite:
        fit_runs([RunSpec(config, run_dir, "sklearn", splits=splits, part=True)])
        return load_checkpoint(runs.best_checkpoint(run_dir))
    plan = composite.plan(config, run_dir, "sklearn", splits)
    fit_runs(plan.specs)
    composite.assemble(plan, drawn=False)
    return load_checkpoint(runs.best_checkpoint(run_dir))
