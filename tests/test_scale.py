"""Scale: data build's memory does not grow with the rows, its streaming de-duplication and splits equal the
plain in-memory algorithm's on the real samples, and the column-speed reader gives the row-by-row reader's arrays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foodcls.columnar import read_labelled_columns
from foodcls.data import LABEL_COLUMNS, _format_value, read_labelled_csv, read_labelled_rows
from foodcls.errors import DataError
from foodcls.features import ALL_FEATURES, SEED_FEATURES
from foodcls.labels import DEFAULT_CLASSES
from foodcls.offdata.build import build_dataset, split_of
from foodcls.offdata.clean import NUMERIC, classify
from foodcls.offdata.dedup import SeenKeys
from foodcls.offdata.read import SourceStats, read_export
from foodcls.offdata.rules import load_rules
from tests import offexports as off
from tests.conftest import REPO, SAMPLES, needs_samples

needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc (Linux)")


def _big_tsv(path: Path, rows: int) -> Path:
    """The hand-made export's rows repeated with unique barcodes and names (all kept but the drops)."""
    base = off._rows()
    lines = ["\t".join(off.HEADER)]
    for i in range(rows):
        fields = list(base[i % len(base)])
        fields[0], fields[2] = f"9{i:012d}", f"{fields[2]} #{i}"
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _build_peak_rss_mb(export: Path, out: Path) -> float:
    """Peak RSS of a fresh process that runs the build: its own VmHWM (ru_maxrss would also count the
    forking pytest process's size, which a child inherits across exec on Linux)."""
    code = ("import re, sys; from foodcls.offdata.build import build_dataset; "
            "build_dataset([sys.argv[1]], sys.argv[2], other=True); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    # Blocks of 1 MB and batches of 5,000 rows, so both sizes are many blocks long (at the defaults, 32 MB and
    # 50,000 rows, a few blocks are in flight at once and a file shorter than that is wholly in memory).
    env = {**os.environ, "FOODCLS_READ_BLOCK_BYTES": str(1 << 20), "FOODCLS_READ_BATCH_ROWS": "5000"}
    result = subprocess.run([sys.executable, "-c", code, str(export), str(out)], capture_output=True, text=True, timeout=300,
                            check=True, env=env)
    return int(result.stdout.strip()) / 1024


def _to_parquet(tsv: Path, out: Path) -> Path:
    """The TSV's columns as a flat Parquet file (nutrients as <name>_100g columns), in row groups of 20,000."""
    pl.read_csv(tsv, separator="\t", quote_char=None, infer_schema=False).write_parquet(out, row_group_size=20_000)
    return out


@needs_proc
@pytest.mark.parametrize("kind", ["tsv", "parquet"])
def test_build_memory_does_not_grow_with_the_rows(tmp_path, kind):
    # Before: every kept row in Python lists and the duplicate keys in a set of strings (TSV ~+60 MB here
    # for the 150,000 more rows), Parquet ~1.6 KB a row in polars' streaming engine.
    sizes = {}
    for rows in (50_000, 200_000):
        export = _big_tsv(tmp_path / f"{rows}.tsv", rows)
        if kind == "parquet":
            export = _to_parquet(export, tmp_path / f"{rows}.parquet")
        sizes[rows] = _build_peak_rss_mb(export, tmp_path / f"out-{rows}")
        card = json.loads((tmp_path / f"out-{rows}" / "datacard.json").read_text())
        assert card["rows_read"] == rows and card["rows_kept"] > rows // 10
    # Measured here: +10 to +16 MB (TSV), +10 MB (Parquet), nearly all of it the de-duplication state (16 bytes a
    # kept row, and the merges' temporaries; without de-duplication the build is flat). The code before this
    # test grew by 105 MB (Parquet) and 138 MB (TSV) between these two sizes.
    assert sizes[200_000] - sizes[50_000] < 24, sizes


def _plain_build(sources: list[Path], rules, fractions) -> dict[str, list[str]]:
    """The algorithm as it was before streaming, as the oracle: every source classified, kept rows
    de-duplicated in file order against a set of the key strings, each split a list in memory."""
    seen: set[str] = set()
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for source in sources:
        for batch in read_export(source, SourceStats(source), lambda frame: classify(frame, rules)):
            for key, content_key, code, name, *values, label in batch.filter(pl.col("reason") == 0).select(
                    "key", "content_key", "code", "name", *NUMERIC, "label").iter_rows():
                if key in seen or content_key in seen:
                    continue
                seen.add(key)
                if content_key is not None:
                    seen.add(content_key)
                rows[split_of(key, fractions)].append((rules.names[label], *values, source.name, (code or "").strip(), name))
    return rows


@needs_samples
@pytest.mark.parametrize("other", [False, True])
def test_streaming_build_keeps_and_splits_the_same_products_as_the_plain_algorithm(tmp_path, other):
    sources = sorted(p for p in SAMPLES.iterdir() if p.name.startswith("off-"))
    rules = load_rules(None, True if other else None)
    expected = _plain_build(sources, rules, (0.8, 0.1, 0.1))
    build_dataset(sources, tmp_path / "out", other=True if other else None)
    for split, rows in expected.items():
        built = pl.read_csv(tmp_path / "out" / f"{split}.csv", infer_schema=False).fill_null("").rows()
        assert len(built) == len(rows), split
        for got, want in zip(built, rows):
            # label, the nutrients as the writer formats them (float32, %g), source, code, name: same product, same order
            values = ["" if v is None else _format_value(float(np.float32(v)), f) for v, f in zip(want[1:-3], ALL_FEATURES)]
            assert list(got) == [want[0], *values, *want[-3:]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 40), st.one_of(st.none(), st.integers(0, 40))), max_size=30), max_size=6))
def test_seen_keys_decide_like_a_set_of_keys_in_file_order(batches):
    seen, oracle = SeenKeys(), set()
    for batch in batches:
        keys = np.array([k for k, _ in batch], dtype=np.uint64)
        contents = np.array([c if c is not None else 0 for _, c in batch], dtype=np.uint64)
        has = np.array([c is not None for _, c in batch], dtype=bool)
        new = seen.first_seen(keys, contents, has)
        expected = []
        for key, content in batch:
            fresh = key not in oracle and (content is None or content not in oracle)
            expected.append(fresh)
            if fresh:
                oracle.update({key} | ({content} if content is not None else set()))
        assert new.tolist() == expected
    assert len(seen) == len(oracle)


def _same(a, b) -> bool:
    return (a.features.tobytes() == b.features.tobytes() and np.array_equal(a.labels, b.labels) and a.source == b.source
            and a.columns.keys() == b.columns.keys() and all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)
            and np.array_equal(a.weights, b.weights) and np.array_equal(a.train_only, b.train_only))


def _fast_taken(path, features, classes=DEFAULT_CLASSES, ignore=()) -> bool:
    return read_labelled_columns(path, features, classes, ignore, LABEL_COLUMNS) is not None


@needs_samples
def test_the_column_reader_gives_the_row_reader_arrays_on_built_real_data(tmp_path):
    sources = sorted(p for p in SAMPLES.iterdir() if p.name.startswith("off-"))
    build_dataset(sources, tmp_path / "out", other=True)
    classes = (*DEFAULT_CLASSES, "other")
    for split in ("train", "val", "test"):
        path = tmp_path / "out" / f"{split}.csv"
        for features in (SEED_FEATURES, ALL_FEATURES):
            for kwargs in ({"classes": classes}, {"ignore": ("other",)}):
                assert _fast_taken(path, features, kwargs.get("classes", DEFAULT_CLASSES), kwargs.get("ignore", ()))
                assert _same(read_labelled_csv(path, features, **kwargs), read_labelled_rows(path, features, **kwargs))


SHIPPED_SETS = ("demo", "demo-rich", "synth-off")  # not data/off: a user's build, with labels of its own


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for s in SHIPPED_SETS for p in (REPO / "data" / s).glob("*.csv")))
def test_the_column_reader_gives_the_row_reader_arrays_on_the_shipped_sets(path):
    path = REPO / path
    features = ALL_FEATURES if "rich" in str(path) or "synth-off" in str(path) else SEED_FEATURES
    assert _fast_taken(path, features)
    assert _same(read_labelled_csv(path, features), read_labelled_rows(path, features))


decimal = st.one_of(
    st.floats(0, 100, allow_nan=False).map(repr),
    st.decimals(0, 100, places=12, allow_nan=False, allow_infinity=False).map(str),
    st.integers(0, 100).map(str),
    st.floats(0, 100, allow_nan=False).map(lambda v: f"{v:.6e}"),
    st.floats(0, 100, allow_nan=False).map(lambda v: f"{v:.17g}"),
)
text_cell = st.text(alphabet=st.sampled_from(list('ab ,"é\t')), max_size=6)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DEFAULT_CLASSES), decimal, decimal, decimal, st.integers(0, 30), text_cell), min_size=1, max_size=40),
       st.booleans(), st.booleans())
def test_the_column_reader_gives_the_row_reader_arrays_bit_for_bit(tmp_path_factory, rows, crlf, bom):
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n" if crlf else "\n").writerows(
        [["label", "protein", "carbs", "fat", "additives", "note"], *[[c, p, k, f, str(a), note] for c, p, k, f, a, note in rows]])
    path = tmp_path_factory.mktemp("csv") / "rows.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    assert _fast_taken(path, SEED_FEATURES)
    assert _same(read_labelled_csv(path, SEED_FEATURES), read_labelled_rows(path, SEED_FEATURES))


@pytest.mark.parametrize("body, message", [
    ("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\nsnacks,1,x,3,1\n", ":3: carbs is not a number: 'x'"),
    ("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\nsnacks,1,2,3\n", ":3: expected 5 fields"),
    ("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\nfruit,1,2,3,1\n", ":3: unknown class 'fruit'"),
    ("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\nsnacks,,2,3,1\n", ":3: protein is empty (it is required)"),
    ("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\nsnacks,1,2,nan,1\n", ":3: fat "),
    ("label,protein,carbs,fat,additives\nsnacks,1,2,3,1,9\n", ":2: expected 5 fields"),
])
def test_a_bad_file_is_reported_by_the_row_reader_naming_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body, encoding="utf-8")
    assert not _fast_taken(path, SEED_FEATURES)
    with pytest.raises(DataError, match=f"bad.csv{message}".replace("(", r"\(").replace(")", r"\)")):
        read_labelled_csv(path, SEED_FEATURES)


def test_a_file_read_twice_in_a_process_is_read_once_and_not_writable(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\nmeats,20,1,12,2\n", encoding="utf-8")
    first = read_labelled_csv(path, SEED_FEATURES)
    assert read_labelled_csv(path, SEED_FEATURES) is first
    with pytest.raises(ValueError):
        first.features[0, 0] = 5.0  # shared by the runs of this process: nobody may change it
    path.write_text("label,protein,carbs,fat,additives\nsnacks,1,2,3,1\n", encoding="utf-8")
    os.utime(path, ns=(0, 0))  # a new mtime (and size): the file is read again
    assert len(read_labelled_csv(path, SEED_FEATURES)) == 1


@pytest.mark.parametrize("block_rows", [64, 300])  # a step per block; blocks that end inside a step's rows
def test_an_epoch_gathered_a_block_at_a_time_trains_bit_for_bit_as_one_block(tmp_path, demo_dir, monkeypatch, block_rows):
    """Training gathers an epoch's rows a block at a time (memory): the same weights, optimizer state and
    metrics as the whole epoch at once, with feature dropout, label smoothing, row weights and a ragged stack."""
    from foodcls import runs
    from foodcls.config import load_config
    from foodcls.inference.checkpoint import load_checkpoint
    from foodcls.training import stack
    from foodcls.training.fit import train_many
    from tests.conftest import write_config

    rows = (demo_dir / "train.csv").read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(rows[:451]) + "\n")  # 450 rows: a different number of batches
    common = ["train.feature_dropout=0.2", "train.label_smoothing=0.1", "train.class_weights=balanced", "train.epochs=3",
              "train.optimizer=adam", "train.lr=0.01"]
    configs = [load_config(write_config(tmp_path / "c.yaml", demo_dir), common),
               load_config(write_config(tmp_path / "c.yaml", demo_dir), [*common, f"data.train={tmp_path / 'short.csv'}", "train.seed=3"])]

    def trained(root):
        results = train_many([(c, f"r{i}") for i, c in enumerate(configs)], tmp_path / root)
        return [(load_checkpoint(r.last_checkpoint).arrays, [dict(m, seconds=0) for m in runs.read_metrics(r.run_dir)])
                for r in results]

    whole = trained("whole")
    monkeypatch.setattr(stack, "EPOCH_BLOCK_ROWS", block_rows)
    for (arrays, metrics), (block_arrays, block_metrics) in zip(whole, trained("blocks")):
        assert arrays.keys() == block_arrays.keys()
        assert all(np.array_equal(arrays[k], block_arrays[k]) for k in arrays)
        assert metrics == block_metrics
