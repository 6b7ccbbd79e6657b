"""Labelled CSVs read at column speed: polars parses the file and the checks run on whole columns.

This path takes only files it reads exactly as the csv module would (one row per line, as wide as the
first, quoted lines checked against the csv module; no NUL, lone CR or blank line; every number one
polars parses to a finite double) and gives bit-identical arrays: Python's float() and polars both round
a decimal to the nearest double, and both cast it to float32 the same way. Anything else, a bad value
included, returns None, and data.py reads the file row by row, which names the culprit (file:line).
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if "polars" not in sys.modules:
    # polars' allocator (its own jemalloc, configured by this variable when the library loads) keeps the pages
    # it frees for ~10 s; a training reads its files once and then allocates its own data, so the parser's
    # freed memory sat on top of the run's peak: 437 MB for a 1M-row train.csv, 418 MB with pages given back at
    # once, the read as fast (0.54-0.63 s against 0.58 s). Not where polars is already loaded (`data build`
    # loads it first): there the default was 20-35 % faster.
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
import polars as pl  # noqa: E402

from foodcls.features import NUTRIENTS, REQUIRED_FEATURES, SEED_FEATURES, invalid_mask
from foodcls.labels import names_a_class

ASCII_SPACE = " \t\n\r\x0b\x0c"
BOM = b"\xef\xbb\xbf"
LINE_BLOCK = 4 << 20


@dataclass(frozen=True)
class LabelledColumns:
    features: np.ndarray  # (n, F) float32, NaN where an optional cell is empty
    labels: np.ndarray  # (n,) int64
    text: dict[str, np.ndarray]  # carried columns, as read (object arrays)


def _rows_match_lines(raw: bytes, frame: pl.DataFrame, width: int, first_line: int, columns: list[int]) -> bool:
    """Whether polars read one row per line (from first_line), each as the csv module reads it: lines
    without a quote have exactly width - 1 commas (polars pads a short row and, reading some columns,
    cuts a long one; the csv module keeps both, an error); lines with one are read by the csv module
    and compared, cell by cell. Counted block by block, so the temporaries stay small."""
    line, position, quoted = 0, 0, []
    while position < len(raw):
        stop = raw.rfind(b"\n", position, position + LINE_BLOCK) + 1 if position + LINE_BLOCK < len(raw) else len(raw)
        if stop <= position:  # one line longer than a block
            stop = raw.find(b"\n", position) + 1 or len(raw)
        block = np.frombuffer(raw, dtype=np.uint8, count=stop - position, offset=position)
        ends = np.flatnonzero(block == ord("\n"))
        if stop == len(raw) and not raw.endswith(b"\n"):
            ends = np.append(ends, len(block))
        commas = np.diff(np.searchsorted(np.flatnonzero(block == ord(",")), ends), prepend=0)
        quotes = np.diff(np.searchsorted(np.flatnonzero(block == ord('"')), ends), prepend=0)
        data_line = np.arange(line, line + len(ends)) >= first_line
        if (commas[(quotes == 0) & data_line] != width - 1).any():
            return False
        starts = np.concatenate([[0], ends[:-1] + 1])
        quoted += [(line + i - first_line, position + starts[i], position + ends[i]) for i in np.flatnonzero(quotes & data_line)]
        line, position = line + len(ends), stop
    if line - first_line != len(frame):
        return False  # a quoted cell spans lines
    for row_index, start, end in quoted:
        try:
            row = next(csv.reader([raw[start:end].decode("utf-8")]))
            expected = [cell if dtype == pl.String else (float(cell) if cell.strip() else None)
                        for cell, dtype in zip((row[c] for c in columns), frame.dtypes)]
        except (csv.Error, UnicodeDecodeError, StopIteration, ValueError, IndexError):
            return False
        if len(row) != width or expected != list(frame.row(row_index)):
            return False
    return True


def _first_row(raw: bytes) -> list[str] | None:
    line = raw.split(b"\n", 1)[0]
    try:
        return next(csv.reader([line.decode("utf-8")]))
    except (csv.Error, UnicodeDecodeError, StopIteration):
        return None


def read_labelled_columns(
    path: str | Path, features: tuple[str, ...], classes: tuple[str, ...], ignore: tuple[str, ...],
    label_columns: tuple[str, ...],
) -> LabelledColumns | None:
    """The file's labelled rows, or None where only the row-by-row reader can say what it holds."""
    if str(path) == "-":
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None  # the row-by-row reader words the error
    raw = raw[len(BOM):] if raw.startswith(BOM) else raw
    if (b"\x00" in raw or raw.count(b"\r") != raw.count(b"\r\n") or not raw.strip()
            or raw.startswith((b"\n", b"\r\n")) or b"\n\n" in raw or b"\n\r\n" in raw):
        return None  # NUL, old Mac line ends, blank lines: left to the csv module
    cells = _first_row(raw)
    if not cells or not cells[0].strip():
        return None
    first = [cell.strip() for cell in cells]
    width = len(first)
    header = int(not names_a_class(first[0], classes))  # lines before the data: the header, or none
    if header:
        lowered = [c.lower() for c in first]
        label_at = next((lowered.index(label) for label in label_columns if label in lowered), None)
        if label_at is None or any(f not in lowered for f in features) or b'"' in raw.split(b"\n", 1)[0]:
            return None
        columns = [lowered.index(f) for f in features]
        text_columns = {c.lower(): i for i, c in enumerate(first) if c and c.lower() not in (*NUTRIENTS, *label_columns)}
    else:
        if set(features) - set(SEED_FEATURES) or width != 1 + len(SEED_FEATURES):
            return None
        label_at, text_columns = 0, {}
        columns = [1 + SEED_FEATURES.index(f) for f in features]
    read = sorted({label_at, *columns, *text_columns.values()})
    schema = {f"c{i}": pl.Float64 if i in columns else pl.String for i in range(width)}
    try:
        frame = pl.read_csv(raw, has_header=False, skip_lines=header, schema=schema, columns=read,
                            empty_string_is_null=False, encoding="utf8")
    except (pl.exceptions.PolarsError, ValueError):
        return None  # a cell that is not a number, a row longer than the first, bad UTF-8: reported row by row
    if not len(frame) or not _rows_match_lines(raw, frame, width, header, read):
        return None
    del raw  # peak memory: the file's bytes are no longer needed
    label_cells = frame[f"c{label_at}"]
    if label_cells.str.contains(r"^\s|\s$").any():  # (stripped only where needed: a copy of a million labels)
        label_cells = label_cells.str.strip_chars(ASCII_SPACE)
    if ignore:
        keep = ~label_cells.is_in(list(ignore))
        frame, label_cells = frame.filter(keep), label_cells.filter(keep)
        if not len(frame):
            return None
    try:  # a class is named, or given by its index: codes 0..k-1 for the names, k..2k-1 for the indices
        codes = label_cells.cast(pl.Enum([*classes, *(str(i) for i in range(len(classes)))])).to_physical().to_numpy()
    except pl.exceptions.PolarsError:
        return None  # an unknown class (or a class named like an index): reported row by row
    labels = codes.astype(np.int64) % len(classes)
    values = np.empty((len(frame), len(features)), dtype=np.float32)
    for j, (column, feature) in enumerate(zip(columns, features)):
        cells = frame[f"c{column}"]
        if feature in REQUIRED_FEATURES and cells.null_count():
            return None
        if not cells.drop_nulls().is_finite().all():
            return None
        with np.errstate(over="ignore"):
            values[:, j] = cells.to_numpy()  # an empty cell (null) → NaN
        if invalid_mask(feature, cells.to_numpy()).any():
            return None
    text = {name: frame[f"c{i}"].to_numpy().astype(object) for name, i in text_columns.items()}
    return LabelledColumns(values, labels, text)
