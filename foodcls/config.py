"""Typed, frozen, strictly validated experiment config: YAML file + `--set KEY=VALUE` overrides."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from foodcls.errors import ConfigError
from foodcls.features import NAME, SEED_FEATURES, check_features, nutrients_of
from foodcls.labels import DEFAULT_CLASSES, class_problem
from foodcls.yamlfile import YamlLoader, key_lines_of, parse_yaml_value, read_yaml  # noqa: F401 - re-exported

StrictInt = Annotated[int, Strict()]
# Finite only: `lr: .inf` passes `lr > 0`, then every weight becomes NaN.
StrictFloat = Annotated[float, Strict(), AllowInfNan(False)]
StrictStr = Annotated[str, Strict()]
StrictBool = Annotated[bool, Strict()]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainFile(_Section):
    """One training file: its rows weigh `weight` in the loss; train-only rows are never scored by cv
    (nor held out by val_fraction), e.g. a synthetic set mixed with real rows."""

    path: StrictStr  # a labelled CSV
    weight: Annotated[StrictFloat, Field(gt=0)] = 1.0  # its rows' weight in the loss
    train_only: StrictBool = False  # never scored by cv nor held out by val_fraction (e.g. a synthetic mix)
    # Its products have no names (a synthetic mix), and are read as such by a model that reads names: each an
    # empty bag, which teaches the network the nutrients alone. (Any other file without a `name` column is refused.)
    nameless: StrictBool = False


class DataConfig(_Section):
    # Training CSV(s): a path, or a list of paths and {path, weight, train_only}.
    train: StrictStr | Annotated[tuple[StrictStr | TrainFile, ...], Field(min_length=1)]
    test: StrictStr | None = None  # scored every epoch and at the end; never picks a checkpoint
    val: StrictStr | None = None  # picks the best checkpoint, drives early stopping and calibration
    val_fraction: Annotated[StrictFloat, Field(gt=0, lt=1)] | None = None  # instead of val: a stratified, seeded share of train
    # Nutrients (protein, carbs, fat, additives, sugars, saturated_fat, salt, fiber, energy) and `name`.
    features: tuple[StrictStr, ...] = SEED_FEATURES
    missing: Literal["median", "drop"] = "median"  # unknown optional nutrients: training medians, or drop the row
    # Network inputs: each feature divided by its training maximum, or standardised (mean 0, std 1).
    scaling: Literal["max", "standard"] = "max"
    # The class names the labels of the data files use, in output order (a rules file's classes, plus
    # `other` for a build with --other); the checkpoint carries them.
    classes: tuple[StrictStr, ...] = DEFAULT_CLASSES
    # Rows labelled one of these are skipped, e.g. [other] for a four-class model read from a build made
    # with --other (which the five-class recipe uses too).
    ignore_labels: tuple[StrictStr, ...] = ()

    @field_validator("classes")
    @classmethod
    def _usable_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problem = class_problem(list(value))
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _ignored_labels_are_not_classes(self) -> DataConfig:
        learnt = sorted(set(self.ignore_labels) & set(self.classes))
        if learnt:
            raise ValueError(f"data.ignore_labels: {learnt[0]!r} is one of data.classes; a class cannot be skipped")
        return self

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_features(value)

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.val is not None and self.val_fraction is not None:
            raise ValueError("give data.val or data.val_fraction, not both")
        return self

    @property
    def train_files(self) -> tuple[TrainFile, ...]:
        entries = (self.train,) if isinstance(self.train, str) else self.train
        return tuple(TrainFile(path=e) if isinstance(e, str) else e for e in entries)


class NameConfig(_Section):
    """How the product's name enters the network (data.features holding `name`; text.py): each word's character
    n-grams of ngram_min…ngram_max (with `words`, the whole words too), hashed into `buckets`, at most
    max_ngrams a name; a learnt vector of `dim`
    per bucket, their mean concatenated with the scaled nutrients."""

    buckets: Annotated[StrictInt, Field(ge=16, le=1 << 22)] = 1 << 15  # how many hashed n-gram ids
    ngram_min: Annotated[StrictInt, Field(ge=1, le=8)] = 2  # the shortest n-gram (in characters, word marks included)
    ngram_max: Annotated[StrictInt, Field(ge=1, le=8)] = 4  # the longest
    max_ngrams: Annotated[StrictInt, Field(ge=1, le=1024)] = 96  # a name's n-grams kept (bigrams first)
    dim: Annotated[StrictInt, Field(ge=1, le=256)] = 16  # each bucket's learnt vector
    words: StrictBool = False  # each whole word hashed as an id too, before its n-grams (fastText's word + subwords)

    def stored(self) -> dict[str, int | bool]:
        """As a checkpoint's `name` metadata holds it: the hashing's own form (text.NameHashing.to_json)."""
        from foodcls.text import NameHashing  # here, not at the top: text.py pulls in numpy, which loading a config need not

        return NameHashing(**self.model_dump()).to_json()

    @model_validator(mode="after")
    def _range(self) -> NameConfig:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"model.name: ngram_min ({self.ngram_min}) exceeds ngram_max ({self.ngram_max})")
        return self


class ModelConfig(_Section):
    hidden: tuple[Annotated[StrictInt, Field(ge=1)], ...] = (32, 32)  # hidden layer widths
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"  # the hidden layers' activation
    # K networks (seeds train.seed … train.seed + K − 1) trained side by side in one lockstep stack; the
    # checkpoint holds them all and predicts the mean of their probabilities.
    ensemble: Annotated[StrictInt, Field(ge=1, le=64)] = 1
    # With the name feature: the ensemble's last N members never read the name (train.name_dropout 1 and name
    # vectors of zeros: nutrient-only networks) and are averaged with the members that do.
    nameless_members: Annotated[StrictInt, Field(ge=0, le=63)] = 0
    name: NameConfig = NameConfig()  # used when data.features holds `name`


class EarlyStoppingConfig(_Section):
    patience: Annotated[StrictInt, Field(ge=1)]  # epochs without improvement before training stops
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    min_delta: Annotated[StrictFloat, Field(ge=0)] = 0.0  # an improvement smaller than this is none


class TrainConfig(_Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[StrictFloat, Field(gt=0)] = 0.01  # learning rate (1e-3 is read as a float)
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0  # SGD's
    weight_decay: Annotated[StrictFloat, Field(ge=0)] = 0.0  # L2
    batch_size: Annotated[StrictInt, Field(ge=1)] = 256
    epochs: Annotated[StrictInt, Field(ge=1)] = 1000
    seed: Annotated[StrictInt, Field(ge=0)] = 0  # weights, data order and val split all follow from it
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: CUDA when present
    early_stopping: EarlyStoppingConfig | None = None  # {patience, monitor, min_delta}; needs validation data
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"  # the learning rate's schedule
    # step: multiply lr by scheduler_gamma every scheduler_step_size epochs; plateau: when the
    # monitored loss has not improved for scheduler_step_size epochs.
    scheduler_step_size: Annotated[StrictInt, Field(ge=1)] = 100
    scheduler_gamma: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.5  # step and plateau's factor
    # balanced: n / (classes × count of the class); sqrt_balanced: its square root (a milder correction);
    # or {class: weight} by hand.
    class_weights: Literal["none", "balanced", "sqrt_balanced"] | dict[StrictStr, Annotated[StrictFloat, Field(gt=0)]] = "none"
    # The rows whose class counts the balanced weights follow: all training rows, or only those of files that
    # are not train-only (the real rows, when a synthetic set is mixed in to teach but not to set the balance).
    class_weights_from: Literal["all", "not_train_only"] = "all"
    # Cross-entropy against (1 - e) × the true class + e spread over all classes: less certainty on rows a
    # label may have wrong.
    label_smoothing: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    # Each input value of a training row is replaced by its fill value (the stored median, what an unknown
    # value becomes) with this probability, drawn anew each epoch: the network learns to read every nutrient
    # on its own and to cope when some are unknown.
    feature_dropout: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    # With the name feature: each training row's name is left out (an empty bag) with this probability, drawn
    # anew each epoch, so the network does not lean on the names it saw (new sources name things otherwise).
    # At 1 the name is never read: the name vectors start (and stay) at zeros, so predict reads none either.
    name_dropout: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.0
    # The resumable last checkpoint (and the best) are written when this many seconds have passed since
    # the previous write, at the end and on interrupt; checkpoint_every adds a write every N epochs.
    checkpoint_seconds: Annotated[StrictFloat, Field(ge=0)] = 5.0
    checkpoint_every: Annotated[StrictInt, Field(ge=1)] | None = None
    # Start from this checkpoint's weights, feature scaling and fill values (fine-tuning), not at random.
    init_from: StrictStr | None = None
    # After training, fit one temperature (and keep the rows' conformal scores, the suggestion thresholds) so
    # the probabilities mean what they say: on the validation rows (temperature; auto: when there is
    # validation data, else none), or on out-of-source predictions (sources: a model per source of the data,
    # trained on the others, predicts it; the final model is trained on all rows as ever and carries what
    # those predictions fitted): what holds on a source the model never saw.
    calibration: Literal["auto", "temperature", "sources", "none"] = "auto"
    # Below this top probability, predict's decision is `unsure` (abstention); null: never abstain.
    min_confidence: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None
    # The operating point of `suggest`: per-class thresholds on the open-set score, the lowest that keep the
    # suggestions' precision at this on the calibration rows (products of no class count as errors).
    suggest_precision: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    # Which score says "in one of the named classes" (suggest, the open-set figures): probability,
    # not_other (1 − p(other)), max_logit, energy, knn, entropy (minus the probabilities' entropy); null:
    # not_other with an `other` class, else probability.
    open_set_score: Literal["probability", "not_other", "max_logit", "energy", "knn", "entropy"] | None = None


class TrackingConfig(_Section):
    # An MLflow tracking URI (sqlite:///mlruns.db, a file store path, http://…): each run is logged there
    # when it ends (foodcls/tracking.py); null: nothing is logged anywhere but the run directory.
    mlflow: StrictStr | None = None
    # Where logged, the run's MLflow model is also added to the model registry under this name (a new version).
    registered_model: StrictStr | None = None


class Config(_Section):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _class_weights_name_known_classes(self) -> Config:
        weights = self.train.class_weights
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(self.data.classes))
            if unknown:
                raise ValueError(f"train.class_weights: unknown class {unknown[0]!r}; classes are {', '.join(self.data.classes)}")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> Config:
        if self.train.early_stopping is not None and not self.has_validation:
            raise ValueError("train.early_stopping needs data.val or data.val_fraction")
        if self.train.calibration == "temperature" and not self.has_validation:
            raise ValueError("train.calibration: temperature needs validation rows (data.val or data.val_fraction)")
        return self

    @model_validator(mode="after")
    def _trust_settings_fit_the_classes(self) -> Config:
        from foodcls.labels import OTHER

        if self.train.open_set_score == "not_other" and OTHER not in self.data.classes:
            raise ValueError(f"train.open_set_score: not_other needs an `{OTHER}` class in data.classes")
        if self.train.suggest_precision is not None and self.train.calibration == "none":
            raise ValueError("train.suggest_precision needs calibration rows: train.calibration temperature, sources or auto "
                             "(with validation data)")
        if self.train.suggest_precision is not None and not self.calibrates:
            raise ValueError("train.suggest_precision needs validation rows (data.val or data.val_fraction) or train.calibration: sources")
        return self

    @model_validator(mode="after")
    def _one_start_per_member(self) -> Config:
        if self.model.ensemble > 1 and self.train.init_from is not None:
            raise ValueError("train.init_from: an ensemble's members would all start from the same weights; "
                             "fine-tune one network (model.ensemble: 1)")
        return self

    @model_validator(mode="after")
    def _names_to_drop(self) -> Config:
        if self.train.name_dropout > 0 and not self.uses_name:
            raise ValueError(f"train.name_dropout: {self.train.name_dropout} without `name` in data.features (no names to drop)")
        if self.model.nameless_members and not self.uses_name:
            raise ValueError(f"model.nameless_members: {self.model.nameless_members} without `name` in data.features")
        if self.model.nameless_members >= self.model.ensemble:
            raise ValueError(f"model.nameless_members: {self.model.nameless_members} must be under model.ensemble "
                             f"({self.model.ensemble}): at least one member reads the name")
        return self

    @property
    def nutrients(self) -> tuple[str, ...]:
        """The network's numeric inputs: data.features without `name`."""
        return nutrients_of(self.data.features)

    @property
    def uses_name(self) -> bool:
        return NAME in self.data.features

    @property
    def composite(self) -> bool:
        """Whether a run of this config is made of several networks: an ensemble, or a model per source for calibration."""
        return self.model.ensemble > 1 or self.train.calibration == "sources"

    @property
    def has_validation(self) -> bool:
        return self.data.val is not None or self.data.val_fraction is not None

    @property
    def calibrates(self) -> bool:
        """Whether training ends by fitting a temperature (on the validation rows, or out of source)."""
        return self.train.calibration in ("temperature", "sources") or (self.train.calibration == "auto" and self.has_validation)


def valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for arg in _nested_models(field.annotation):
            keys.extend(valid_keys(arg, prefix + name + "."))
    return keys


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]


def _describe(error: ValidationError, key_lines: dict[str, int], origin: str, overrides: dict[str, str] | None = None) -> str:
    first = error.errors()[0]
    # Drop pydantic's union-branch labels (e.g. 'literal[...]', 'dict[str,...]') from the path.
    parts = [str(p) for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    key = ".".join(parts)
    # A key set (or inside a section set) by --set is reported with that --set as its origin.
    setter = next((a for k, a in (overrides or {}).items() if key == k or key.startswith(k + ".")), None)
    if setter is not None:
        where = f"--set {setter}: "
    else:
        where = f"{origin}:{key_lines[key]}: " if key in key_lines else (f"{origin}: " if origin else "")
    if first["type"] == "extra_forbidden":
        valid = valid_keys(Config)
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}{key}: unknown key{hint}"
    message = first["msg"].removeprefix("Value error, ")
    if not key:
        return f"{where}{message}"
    return f"{where}{key}: {message} (got {first.get('input')!r})"


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `KEY=VALUE` override to the raw config dict in place."""
    key, sep, value_text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.epochs=5")
    try:
        value = parse_yaml_value(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment!r}: cannot parse value {value_text!r}") from None
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def validate_config(raw: Any, origin: str = "", key_lines: dict[str, int] | None = None,
                    overrides: dict[str, str] | None = None) -> Config:
    """Build a Config from a raw dict, turning pydantic's errors into one ConfigError line that names
    the file and line, or the --set that introduced the bad value (overrides: key → KEY=VALUE)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the config must be a mapping with data/model/train sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, key_lines or {}, origin, overrides)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `--set` overrides, validate strictly."""
    path = Path(path)
    raw, text = read_yaml(path, "config")
    key_lines = key_lines_of(text)
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping with data/model/train sections")
    for assignment in overrides:
        apply_override(raw, assignment)
    overridden = {a.partition("=")[0].strip(): a for a in overrides}
    return validate_config(raw, str(path), key_lines, overridden)


def derive(base: Config, params: dict[str, Any], origin: str) -> Config:
    """A config made from base with some keys set (a sweep's combination, a trial's parameters, a cv
    fold's files), validated as strictly as a file; errors name the origin."""
    raw = config_to_dict(base)
    for key, value in params.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    return validate_config(raw, origin)


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.01}} → {'train.lr': 0.01}; used to diff configs."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value and key != "class_weights":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
