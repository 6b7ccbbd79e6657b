"""Stream an export as batches of the columns we use, as strings; ragged rows are counted and skipped.

OFF's own export, plain UTF-8 TSV, takes the fast path in scan.py. Other unquoted TSVs (gzip, UTF-16,
cp1252) are decoded in large blocks and parsed by polars block by block, with bounded memory. Quoted
spreadsheet re-saves go through Python's csv module (they are small: spreadsheets stop at about a
million rows); JSONL through json.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import polars as pl

from foodcls.errors import DataError
from foodcls.offdata.scan import line_problem, scan_tsv
from foodcls.offdata.sniff import ExportFormat, sniff

# Export column → our column. product_name and brands only serve the fallback duplicate key.
COLUMNS = {
    "code": "code",
    "product_name": "product_name",
    "brands": "brands",
    "categories_tags": "categories_tags",
    "proteins_100g": "protein",
    "carbohydrates_100g": "carbs",
    "fat_100g": "fat",
    "additives_n": "additives",
}
REQUIRED = ("code", "categories_tags", "proteins_100g", "carbohydrates_100g", "fat_100g", "additives_n")
JSON_NUTRIMENTS = ("proteins_100g", "carbohydrates_100g", "fat_100g")
Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
Transform = Callable[[Frame], Frame]
BLOCK_BYTES = 32 << 20
BATCH_ROWS = 50_000


@dataclass
class SourceStats:
    """Filled in while a source is read; complete once its batches are exhausted."""

    path: Path
    format: str = ""
    sha256: str = ""
    rows: int = 0
    ragged: int = 0
    # Row indices (the `row` column) to leave out after the fact: the fast path learns which rows
    # were ragged or blank only once the whole file has been checked.
    excluded: set[int] = field(default_factory=set)


class _HashingReader(io.RawIOBase):
    """Pass reads through, hashing the bytes as stored on disk (compressed or not)."""

    def __init__(self, handle, digest) -> None:
        self.handle, self.digest = handle, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.handle.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        return n


def _utf8_blocks(path: Path, fmt: ExportFormat, digest) -> Iterator[bytes]:
    """The file as UTF-8 bytes in large blocks, hashing the raw bytes on the way."""
    with open(path, "rb", buffering=0) as raw:
        stream = io.BufferedReader(_HashingReader(raw, digest), buffer_size=BLOCK_BYTES)
        handle = gzip.GzipFile(fileobj=stream) if fmt.gzipped else stream
        decoder = None if fmt.encoding == "utf-8" else codecs.getincrementaldecoder(fmt.encoding)(errors="replace")
        while True:
            block = handle.read(BLOCK_BYTES)
            if decoder is not None:
                block = decoder.decode(block, final=not block).lstrip("\ufeff").encode("utf-8")
            if not block:
                return
            yield block


def _header_indices(names: list[str], path: Path) -> dict[str, int]:
    normalised = [n.strip().strip('"').lstrip("\ufeff").strip().lower() for n in names]
    found = {name: normalised.index(name) for name in COLUMNS if name in normalised}
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise DataError(f"{path}: not an Open Food Facts export: no {', '.join(missing)} column")
    return found


def _frame(columns: dict[str, list]) -> pl.DataFrame:
    return pl.DataFrame({COLUMNS[k]: v for k, v in columns.items()}, schema={COLUMNS[k]: pl.String for k in columns})


def _tsv_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest) -> Iterator[pl.DataFrame]:
    tail = b""
    indices: dict[str, int] | None = None
    width = 0
    for block in _utf8_blocks(path, fmt, digest):
        block = tail + block
        cut = block.rfind(b"\n") + 1
        block, tail = block[:cut], block[cut:]
        if indices is None:
            header, _, block = block.partition(b"\n")
            names = header.decode("utf-8", errors="replace").rstrip("\r").split("\t")
            indices, width = _header_indices(names, path), len(names)
        yield from _parse_tsv_block(block, indices, width, stats)
    if tail.strip():
        yield from _parse_tsv_block(tail + b"\n", indices or {}, width, stats)
    if indices is None:
        raise DataError(f"{path}: file is empty")


def _parse_tsv_block(block: bytes, indices: dict[str, int], width: int, stats: SourceStats) -> Iterator[pl.DataFrame]:
    if not block.strip():
        return
    lines = block.count(b"\n")
    if block.count(b"\t") != lines * (width - 1):
        # Some line is blank or has too many or too few fields: keep only the well-formed ones.
        problems = [(line, line_problem(line, width)) for line in block.split(b"\n")[:-1]]
        kept = [line for line, problem in problems if problem is None]
        blank = sum(1 for _, problem in problems if problem == "blank")
        stats.ragged += lines - len(kept) - blank
        lines -= blank
        block = b"\n".join(kept) + b"\n"
    stats.rows += lines
    if not block.strip():
        return
    order = sorted(indices.items(), key=lambda item: item[1])
    frame = pl.read_csv(
        io.BytesIO(block), separator="\t", quote_char=None, has_header=False, columns=[i for _, i in order],
        infer_schema=False, truncate_ragged_lines=True,
    )
    yield frame.rename(dict(zip(frame.columns, (COLUMNS[name] for name, _ in order))))


def _quoted_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest) -> Iterator[pl.DataFrame]:
    text = io.TextIOWrapper(io.BytesIO(b"".join(_utf8_blocks(path, fmt, digest))), encoding="utf-8", newline="")
    reader = csv.reader(text, delimiter=fmt.separator)
    names = next(reader, None)
    if names is None:
        raise DataError(f"{path}: file is empty")
    indices = _header_indices(names, path)
    columns: dict[str, list] = {k: [] for k in indices}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        stats.rows += 1
        if len(row) != len(names):
            stats.ragged += 1
            continue
        for name, index in indices.items():
            columns[name].append(row[index])
        if len(columns["code"]) >= BATCH_ROWS:
            yield _frame(columns)
            columns = {k: [] for k in indices}
    if columns["code"]:
        yield _frame(columns)


def _json_value(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _jsonl_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest) -> Iterator[pl.DataFrame]:
    columns: dict[str, list] = {k: [] for k in COLUMNS}
    tail = b""
    for block in _utf8_blocks(path, fmt, digest):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        yield from _json_lines(lines, columns, stats, final=False)
    yield from _json_lines([tail], columns, stats, final=True)


def _json_lines(lines: list[bytes], columns: dict[str, list], stats: SourceStats, final: bool) -> Iterator[pl.DataFrame]:
    for line in lines:
        if not line.strip():
            continue
        stats.rows += 1
        try:
            product = json.loads(line)
            if not isinstance(product, dict):
                raise ValueError
        except ValueError:
            stats.ragged += 1
            continue
        nutriments = product.get("nutriments") or {}
        for name in COLUMNS:
            value = nutriments.get(name, product.get(name)) if name in JSON_NUTRIMENTS else product.get(name)
            columns[name].append(_json_value(value))
        if len(columns["code"]) >= BATCH_ROWS:
            yield _frame(columns)
            for values in columns.values():
                values.clear()
    if final and columns["code"]:
        yield _frame(columns)


def _fast_batches(path: Path, stats: SourceStats, transform: Transform) -> Iterator[pl.DataFrame]:
    with open(path, "rb") as handle:
        header = handle.readline()
    names = header.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    indices = _header_indices(names, path)
    columns = {COLUMNS[k]: i for k, i in indices.items()}
    batches, check = scan_tsv(path, len(header), columns, len(names), lambda frame: transform(_complete(frame)))
    yield from batches
    stats.sha256 = check.sha256
    stats.rows = check.lines - len(check.blank)
    stats.ragged = len(check.ragged)
    stats.excluded = check.ragged | check.blank


def _numbered(batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    row = 0
    for batch in batches:
        yield batch.with_row_index("row", offset=row)
        row += len(batch)


def _complete(frame: Frame) -> Frame:
    """Add the optional columns a source lacks, as nulls."""
    names = frame.collect_schema().names()
    return frame.with_columns([pl.lit(None, pl.String).alias(c) for c in COLUMNS.values() if c not in names])


def read_export(path: str | Path, stats: SourceStats, transform: Transform = lambda frame: frame) -> Iterator[pl.DataFrame]:
    """Batches with columns row, code, product_name, brands, categories_tags, protein, carbs, fat,
    additives (strings), in file order, passed through transform (lazily, on the fast path).
    stats is complete once the batches are exhausted."""
    path = Path(path)
    fmt = sniff(path)
    stats.format = fmt.describe()
    digest = hashlib.sha256()
    if fmt.kind == "csv" and not fmt.quoted and not fmt.gzipped and fmt.encoding == "utf-8":
        yield from _fast_batches(path, stats, transform)
        return
    elif fmt.kind == "jsonl":
        batches = _numbered(_jsonl_batches(path, fmt, stats, digest))
    elif fmt.quoted:
        batches = _numbered(_quoted_batches(path, fmt, stats, digest))
    else:
        batches = _numbered(_tsv_batches(path, fmt, stats, digest))
    for batch in batches:
        yield transform(_complete(batch))
    if not stats.sha256:
        stats.sha256 = digest.hexdigest()
