"""Property-based fuzzing of every reader of outside input. The invariant: correct output, or one of our
own errors in one line that names the culprit — never another exception, never a hang.

CI runs the `ci` profile (bounded); `pytest tests/test_fuzz.py --hypothesis-profile=long` runs 100x more.
"""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from foodcls.inference.checkpoint import load_checkpoint
from foodcls.config import load_config
from foodcls.data import read_labelled_csv
from foodcls.feature_table import read_feature_table
from foodcls.errors import FoodclsError
from foodcls.features import ALL_FEATURES, NUTRIENTS, SEED_FEATURES
from foodcls.labels import CLASSES
from foodcls.offdata.build import build_dataset
from foodcls.offdata.rules import load_rules
from foodcls.inference.predict import load_predictor
from tests import offexports as off
from tests.conftest import REPO

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def assert_our_error(error: FoodclsError, culprit: str) -> None:
    message = str(error)
    assert message and "\n" not in message, message
    assert culprit in message, (culprit, message)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


# --- labelled CSVs (train, eval, cv) and batch-predict CSVs -------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10, 10**6).map(str),
    st.sampled_from(["", " ", "1e308", "-0", "0x10", "1,5", "nan", "inf", "١٢", "1_0"]),
    st.text(string.printable, max_size=6),
)
cells = st.one_of(numbers, st.sampled_from(CLASSES), st.text(max_size=8))


@st.composite
def csv_texts(draw) -> str:
    header = draw(st.one_of(
        st.just(""),
        st.just("label,protein,carbs,fat,additives\n"),
        st.just("class," + ",".join(ALL_FEATURES) + ",source\n"),
        st.lists(st.sampled_from(["label", "class", *ALL_FEATURES, "name", ""]), min_size=1, max_size=11).map(lambda h: ",".join(h) + "\n"),
    ))
    width = draw(st.integers(1, 12))
    rows = draw(st.lists(st.lists(cells, min_size=width, max_size=width), max_size=8))
    separator = draw(st.sampled_from([",", ";", "\t"]))
    quoted = draw(st.booleans())
    body = "\n".join(separator.join(f'"{c}"' if quoted else c for c in row) for row in rows)
    return header + body + draw(st.sampled_from(["", "\n", "\r\n", '"']))


@FUZZ
@given(text=csv_texts(), features=st.sampled_from([SEED_FEATURES, ALL_FEATURES]))
@example(text="meats,1e308,1,2,0\n", features=SEED_FEATURES)
@example(text="label,protein,carbs,fat,additives\nmeats,nan,1,2,0\n", features=SEED_FEATURES)
@example(text="¹", features=SEED_FEATURES)  # '¹'.isdigit() is True, int('¹') fails: found by the long profile
def test_labelled_csv_reader_returns_valid_rows_or_one_of_our_errors(tmp_path_factory, text, features):
    path = write(tmp_path_factory.mktemp("csv"), "data.csv", text)
    try:
        data = read_labelled_csv(path, features)
    except FoodclsError as error:
        assert_our_error(error, str(path))
        return
    assert data.features.shape == (len(data), len(features)) and len(data) > 0
    for j, name in enumerate(features):
        known = data.features[:, j][~np.isnan(data.features[:, j])]
        assert ((known >= 0) & (known <= NUTRIENTS[name].high)).all()
        if name in SEED_FEATURES:
            assert len(known) == len(data)  # the seed features are never unknown
    assert set(data.labels.tolist()) <= set(range(len(CLASSES)))


@FUZZ
@given(text=csv_texts(), features=st.sampled_from([SEED_FEATURES, ALL_FEATURES]))
def test_batch_predict_reader_returns_valid_rows_or_one_of_our_errors(tmp_path_factory, text, features):
    path = write(tmp_path_factory.mktemp("batch"), "in.csv", text)
    try:
        table = read_feature_table(path, features)
    except FoodclsError as error:
        assert_our_error(error, str(path))
        return
    assert table.features.shape == (len(table.rows), len(features))
    assert all(len(row) == len(table.header) for row in table.rows)


# --- configs, --set values and rules files -----------------------------------------------------------

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**9), st.floats(allow_nan=True), st.text(max_size=10),
                         st.sampled_from(["1e-3", "[32, 32]", "{a: 1}", "relu", "adam", "balanced", "- x", "&a", "*a", ":"]))
config_keys = st.sampled_from(["data.train", "data.test", "data.val", "data.val_fraction", "data.features", "data.missing",
                               "data.scaling", "model.hidden", "model.activation", "train.lr", "train.epochs", "train.optimizer",
                               "train.batch_size", "train.seed", "train.class_weights", "train.early_stopping",
                               "train.early_stopping.patience", "train.scheduler", "train.checkpoint_seconds", "train.init_from",
                               "train.epoch", "trian", "model", "data"])


@FUZZ
@given(overrides=st.lists(st.tuples(config_keys, yaml_scalars), max_size=4), mangle=st.integers(0, 3), junk=st.text(max_size=30))
def test_config_loader_returns_a_valid_config_or_one_of_our_errors(tmp_path_factory, overrides, mangle, junk):
    tmp = tmp_path_factory.mktemp("config")
    text = (REPO / "configs" / "mlp.yaml").read_text()
    if mangle == 1:
        text = text[: len(text) // 2] + junk  # a cut or damaged file
    elif mangle == 2:
        text = junk
    path = write(tmp, "c.yaml", text)
    assignments = [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides]
    try:
        config = load_config(path, assignments)
    except FoodclsError as error:
        message = str(error)
        assert message and "\n" not in message
        assert str(path) in message or "--set" in message
        return
    assert config.train.lr > 0 and config.train.epochs >= 1 and all(h >= 1 for h in config.model.hidden)


@FUZZ
@given(raw=st.recursive(yaml_scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                                 st.dictionaries(st.text(max_size=12), children, max_size=4)),
                        max_leaves=12))
@example(raw={"classes": {"meats": ["en:meats"]}, "precedence": ["snacks"]})
def test_rules_loader_returns_rules_or_one_of_our_errors(tmp_path_factory, raw):
    path = write(tmp_path_factory.mktemp("rules"), "rules.yaml", yaml.safe_dump(raw, allow_unicode=True))
    try:
        rules = load_rules(path)
    except FoodclsError as error:
        assert_our_error(error, str(path))
        return
    assert set(rules.classes) <= set(CLASSES) and all(rules.classes.values())


# --- checkpoints ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    from foodcls.config import load_config as load
    from foodcls.training.fit import train
    from foodcls.synth import write_demo_set
    from tests.conftest import write_config

    tmp = tmp_path_factory.mktemp("ckpt")
    write_demo_set(tmp, n_train=80, n_test=20, seed=1)
    result = train(load(write_config(tmp / "c.yaml", tmp, epochs=1)), runs_root=tmp / "runs", name="c")
    return result.best_checkpoint.read_bytes()


def _edit_metadata(data: bytes, edit) -> bytes:
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    meta = json.loads(header["__metadata__"]["foodcls"])
    header["__metadata__"]["foodcls"] = json.dumps(edit(meta))
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + data[8 + header_size :]


metadata_edits = st.sampled_from([
    lambda m: {**m, "features": ["protein", "carbs"]},
    lambda m: {**m, "features": ["protein", "carbs", "fat", "vitamins"]},
    lambda m: {**m, "classes": ["a"]},
    lambda m: {**m, "model": {"hidden": [3], "activation": "relu"}},
    lambda m: {**m, "model": {"activation": "swish"}},
    lambda m: {k: v for k, v in m.items() if k != "config"},
    lambda m: {**m, "format_version": 99},
    lambda m: {**m, "features": "protein"},
    lambda m: {**m, "classes": None},
])


@FUZZ
@given(data=st.data())
def test_checkpoint_loader_returns_a_working_predictor_or_one_of_our_errors(tmp_path_factory, checkpoint_bytes, data):
    blob = bytearray(checkpoint_bytes)
    kind = data.draw(st.sampled_from(["flip", "truncate", "metadata", "garbage"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "metadata":
        blob = bytearray(_edit_metadata(bytes(blob), data.draw(metadata_edits)))
    else:
        blob = bytearray(data.draw(st.binary(max_size=200)))
    assert_working_model_or_our_error(write(tmp_path_factory.mktemp("ck"), "model.safetensors", bytes(blob)))


def assert_working_model_or_our_error(path, also=lambda checkpoint: None) -> None:
    """Every reader of the checkpoint at path (and `also`) gives a predictor that answers, or one of our errors."""
    try:
        checkpoint = load_checkpoint(path)
        predictor = load_predictor(path)
        also(checkpoint)
    except FoodclsError as error:
        assert_our_error(error, str(path))
        return
    probabilities = predictor.probabilities(np.full((2, len(predictor.features)), 1.0, dtype=np.float32))
    assert probabilities.shape == (2, len(predictor.classes))


# --- Open Food Facts exports ---------------------------------------------------------------------------

WRITERS = {
    "tsv": off.off_tsv, "csv": off.spreadsheet_csv, "utf16": off.utf16_tsv, "jsonl": off.off_jsonl,
    "parquet": off.off_parquet, "gz": lambda p: off.off_tsv(p, gz=True), "zst": lambda p: off.off_jsonl(p, zst=True),
}


@FUZZ
@given(data=st.data())
def test_export_reader_builds_a_dataset_or_fails_with_one_of_our_errors(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("export")
    flavour = data.draw(st.sampled_from(sorted(WRITERS)))
    blob = bytearray(WRITERS[flavour](tmp / f"in.{flavour}").read_bytes())
    change = data.draw(st.sampled_from(["truncate", "flip", "insert", "huge_field", "reencode", "garbage", "none"]))
    if change == "truncate" and blob:
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif change == "flip" and blob:
        for _ in range(data.draw(st.integers(1, 6))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    elif change == "insert":
        at = data.draw(st.integers(0, len(blob)))
        blob[at:at] = data.draw(st.sampled_from([b"\t", b"\n", b'"', b"\x00", b"\t\t\t\n", b"{", b"\xff\xfe"]))
    elif change == "huge_field":
        text = gzip.decompress(bytes(blob)) if flavour == "gz" else bytes(blob)
        text = text.replace(b"Ferrero", b"F" * 200_000, 1)
        blob = bytearray(gzip.compress(text) if flavour == "gz" else text)
    elif change == "reencode":
        blob = bytearray(bytes(blob).decode("utf-8", "replace").encode(data.draw(st.sampled_from(["utf-16-be", "latin-1", "utf-32"])), "replace"))
    elif change == "garbage":
        blob = bytearray(data.draw(st.binary(max_size=300)))
    path = write(tmp, f"export.{flavour}", bytes(blob))
    out = tmp / "out"
    try:
        card = build_dataset([path], out)
    except FoodclsError as error:
        assert_our_error(error, str(path) if str(path) in str(error) else str(out))
        assert not out.exists()  # nothing half-written
        return
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "datacard.json", "test.csv", "train.csv", "val.csv"]
    assert card["rows_kept"] == sum(card["splits"].values())
    for split in ("train", "val", "test"):
        text = (out / f"{split}.csv").read_text()
        if text.count("\n") > 1:
            data_read = read_labelled_csv(out / f"{split}.csv", ALL_FEATURES)
            assert np.isfinite(data_read.features[:, :4]).all()


def _json_values():
    scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=6)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                        max_leaves=6)


def _paths(node, prefix=()):
    """Every path into a JSON value: the nodes a structural mutation may replace or delete."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _mutated(meta, data):
    """The metadata with one node anywhere in it replaced by arbitrary JSON, or deleted, or the whole of it
    replaced (a list, a number…): structural damage, not a fixed list of edits."""
    import copy

    paths = list(_paths(meta))
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(_json_values())
    if not path:
        return replacement
    meta = copy.deepcopy(meta)
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return meta


def _retyped(data: bytes, dtype: str) -> bytes:
    """The file with its first weight's dtype changed to a 2-byte float numpy lacks (BF16, F8 pairs), shape
    doubled so the byte count still matches: a valid safetensors file that numpy cannot read."""
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    name = next(k for k in header if k.startswith("net.") and header[k]["dtype"] == "F32")
    entry = header[name]
    entry["dtype"], entry["shape"] = dtype, [*entry["shape"][:-1], entry["shape"][-1] * (2 if dtype == "BF16" else 4)]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + data[8 + header_size :]


@pytest.fixture(scope="module")
def last_checkpoint_bytes(tmp_path_factory) -> bytes:
    from foodcls.config import load_config as load
    from foodcls.synth import write_demo_set
    from foodcls.training.fit import train
    from tests.conftest import write_config

    tmp = tmp_path_factory.mktemp("last")
    write_demo_set(tmp, n_train=80, n_test=20, seed=1)
    result = train(load(write_config(tmp / "c.yaml", tmp, epochs=1, optimizer="adam")), runs_root=tmp / "runs", name="c")
    return result.last_checkpoint.read_bytes()


@FUZZ
@given(data=st.data())
def test_structurally_damaged_metadata_is_a_working_model_or_one_of_our_errors(tmp_path_factory, last_checkpoint_bytes, data):
    """Every reader of a checkpoint — predict, eval's config, resume's training state — on metadata damaged
    anywhere, and on tensors of a dtype numpy lacks."""
    from foodcls.training.trainstate import restore_state

    if data.draw(st.integers(0, 9)) == 0:
        blob = _retyped(last_checkpoint_bytes, data.draw(st.sampled_from(["BF16", "F8_E4M3", "F8_E5M2"])))
    else:
        blob = _edit_metadata(last_checkpoint_bytes, lambda meta: _mutated(meta, data))
    assert_working_model_or_our_error(write(tmp_path_factory.mktemp("meta"), "last.safetensors", blob), restore_state)
