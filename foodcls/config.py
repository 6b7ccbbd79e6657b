"""Typed, frozen, strictly validated experiment config: YAML file + `--set KEY=VALUE` overrides."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from foodcls.errors import ConfigError, first_line
from foodcls.features import SEED_FEATURES, check_features
from foodcls.labels import DEFAULT_CLASSES, class_problem

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

    path: StrictStr
    weight: Annotated[StrictFloat, Field(gt=0)] = 1.0
    train_only: StrictBool = False


class DataConfig(_Section):
    train: StrictStr | Annotated[tuple[StrictStr | TrainFile, ...], Field(min_length=1)]
    test: StrictStr | None = None
    val: StrictStr | None = None
    val_fraction: Annotated[StrictFloat, Field(gt=0, lt=1)] | None = None
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


class ModelConfig(_Section):
    hidden: tuple[Annotated[StrictInt, Field(ge=1)], ...] = (32, 32)
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"


class EarlyStoppingConfig(_Section):
    patience: Annotated[StrictInt, Field(ge=1)]
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    min_delta: Annotated[StrictFloat, Field(ge=0)] = 0.0


class TrainConfig(_Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[StrictFloat, Field(gt=0)] = 0.01
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[StrictFloat, Field(ge=0)] = 0.0
    batch_size: Annotated[StrictInt, Field(ge=1)] = 256
    epochs: Annotated[StrictInt, Field(ge=1)] = 1000
    seed: Annotated[StrictInt, Field(ge=0)] = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    early_stopping: EarlyStoppingConfig | None = None
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"
    # step: multiply lr by scheduler_gamma every scheduler_step_size epochs; plateau: when the
    # monitored loss has not improved for scheduler_step_size epochs.
    scheduler_step_size: Annotated[StrictInt, Field(ge=1)] = 100
    scheduler_gamma: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.5
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
    # The resumable last checkpoint (and the best) are written when this many seconds have passed since
    # the previous write, at the end and on interrupt; checkpoint_every adds a write every N epochs.
    checkpoint_seconds: Annotated[StrictFloat, Field(ge=0)] = 5.0
    checkpoint_every: Annotated[StrictInt, Field(ge=1)] | None = None
    # Start from this checkpoint's weights, feature scaling and fill values (fine-tuning), not at random.
    init_from: StrictStr | None = None
    # After training, fit one temperature on the validation rows (and keep their conformal scores) so the
    # probabilities mean what they say; auto: temperature when there is validation data, else none.
    calibration: Literal["auto", "temperature", "none"] = "auto"
    # Below this top probability, predict's decision is `unsure` (abstention); null: never abstain.
    min_confidence: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None


class TrackingConfig(_Section):
    # An MLflow tracking URI (sqlite:///mlruns.db, a file store path, http://…): each run is logged there
    # when it ends (foodcls/tracking.py); null: nothing is logged anywhere but the run directory.
    mlflow: StrictStr | None = None


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

    @property
    def has_validation(self) -> bool:
        return self.data.val is not None or self.data.val_fraction is not None

    @property
    def calibrates(self) -> bool:
        """Whether training ends by fitting a temperature on the validation rows."""
        return self.train.calibration == "temperature" or (self.train.calibration == "auto" and self.has_validation)


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` and `5E+2` as floats (YAML 1.1 wants a dot)."""


_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)
YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    YamlLoader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in YamlLoader.yaml_implicit_resolvers.get(_first, []) if tag != "tag:yaml.org,2002:float"
    ]
    YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, [_first])


def parse_yaml_value(text: str) -> Any:
    """Parse a scalar or flow value the way the config file would (`1e-3` → 0.001, `[64,64]` → list)."""
    return yaml.load(text, Loader=YamlLoader)


def key_lines_of(text: str) -> dict[str, int]:
    """Map dotted key paths to their 1-based line in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    seen: set[int] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode) and id(node) not in seen:
            seen.add(id(node))  # an alias may point back at a mapping that holds it
            for key_node, value_node in node.value:
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path + ".")

    root = yaml.compose(text, Loader=YamlLoader)
    if root is not None:
        walk(root, "")
    return lines


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


def read_yaml(path: str | Path, what: str) -> tuple[Any, str]:
    """(the parsed YAML, its text) of a file we read (a config, a search space, rules): a missing or
    unreadable file and a syntax error are one line naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read {what} ({error})") from None
    try:
        _refuse_duplicate_keys(path, yaml.compose(text, Loader=YamlLoader))
        return yaml.load(text, Loader=YamlLoader), text
    except RecursionError:  # an alias that contains itself
        raise ConfigError(f"{path}: a YAML alias refers to itself (recursive structure)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or first_line(error)
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, seen: set[int] | None = None) -> None:
    """YAML keeps the last of two equal keys without a word; a key named twice is a mistake we name."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in keys:
                    raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: {key_node.value}: named twice")
                keys.add(key_node.value)
            _refuse_duplicate_keys(path, value_node, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item, seen)


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
