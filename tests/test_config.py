import re

import pydantic
import pytest

from foodcls.config import load_config
from foodcls.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = "data:\n  train: t.csv\n  test: s.csv\nmodel:\n  hidden: [32, 32]\ntrain:\n  lr: 0.01\n  epochs: 10\n"


def test_reference_config_is_the_recipe():
    config = load_config(REPO / "configs" / "mlp.yaml")
    assert config.model.hidden == (32, 32) and config.model.activation == "relu"
    t = config.train
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.seed, t.device) == ("sgd", 0.01, 256, 1000, 0, "cpu")
    assert config.data.train == "data/demo/train.csv" and config.data.test == "data/demo/test.csv"


def test_unknown_key_names_closest_valid_key_with_file_and_line(tmp_path):
    path = write(tmp_path, BASE + "  epoch: 5\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:9: train.epoch: unknown key (did you mean 'train.epochs'?)"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  train: [a, b\nmodel: {}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: YAML syntax error"):
        load_config(path)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=0", "train.lr"),
        ("train.lr=-1e-3", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("model.hidden=[32, 0]", "model.hidden.1"),
        ("model.activation=gelu", "model.activation"),
        ("train.epochs=ten", "train.epochs"),
        ("train.batch_size=2.5", "train.batch_size"),
        ("train.epochs=true", "train.epochs"),
        ("train.optimizer=rmsprop", "train.optimizer"),
        ("train.device=tpu", "train.device"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf": {key}: "):
        load_config(write(tmp_path, BASE), [override])


def test_scientific_notation_is_read_as_a_float(tmp_path):
    config = load_config(write(tmp_path, BASE.replace("lr: 0.01", "lr: 1e-3")))
    assert config.train.lr == pytest.approx(0.001)


def test_set_overrides_any_key_with_validation(tmp_path):
    config = load_config(write(tmp_path, BASE), ["train.epochs=5", "model.hidden=[64,64]", "train.lr=5E-2"])
    assert config.train.epochs == 5 and config.model.hidden == (64, 64) and config.train.lr == 0.05


@pytest.mark.parametrize("override", ["train.epochs", "=5", "train..epochs=5"])
def test_malformed_set_is_refused(tmp_path, override):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(write(tmp_path, BASE), [override])


def test_unknown_set_key_names_closest_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.seeds: unknown key \(did you mean 'train.seed'\?\)"):
        load_config(write(tmp_path, BASE), ["train.seeds=1"])


def test_empty_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        load_config(write(tmp_path, ""))


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, BASE))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.train.lr = 1.0


def test_early_stopping_needs_validation_data(tmp_path):
    with pytest.raises(ConfigError, match="early_stopping needs data.val"):
        load_config(write(tmp_path, BASE), ["train.early_stopping.patience=3"])
    config = load_config(write(tmp_path, BASE), ["train.early_stopping.patience=3", "data.val_fraction=0.2"])
    assert config.train.early_stopping.monitor == "val_loss"


def test_class_weights_must_name_known_classes(tmp_path):
    assert load_config(write(tmp_path, BASE), ["train.class_weights={desserts: 3}"]).train.class_weights == {"desserts": 3.0}
    with pytest.raises(ConfigError, match="unknown class 'cakes'"):
        load_config(write(tmp_path, BASE), ["train.class_weights={cakes: 3}"])


@pytest.mark.parametrize("override, why", [
    ("train.lr=.inf", "finite number"), ("train.weight_decay=.inf", "finite number"), ("train.lr=.nan", "finite number"),
    ("train.checkpoint_seconds=.inf", "finite number"),
    # Union-typed keys: pydantic reports the first alternative's complaint; the key and the value are named.
    ("data.train=[{path: t.csv, weight: .inf}]", "inf"), ("train.class_weights={desserts: .inf}", "inf"),
])
def test_infinite_or_nan_numbers_are_refused_with_the_key(tmp_path, override, why):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(override)}: {re.escape(key)}.*{why}"):
        load_config(write(tmp_path, BASE), [override])
