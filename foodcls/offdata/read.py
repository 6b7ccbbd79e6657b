"""Stream an export as batches of the columns we use, as strings; ragged rows are counted and skipped.

Unquoted TSVs (OFF's own export, plain, gzip or zstd; UTF-16, cp1252) are read in 32 MB blocks (decoded
to UTF-8 where they are not) and parsed by polars block by block; quoted spreadsheet re-saves go through
Python's csv module, JSONL through json; Parquet in slices (parquet.py). Each path is pulled a batch at
a time, produced in a thread a batch or two ahead: memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import polars as pl

from foodcls.errors import DataError, first_line
from foodcls.offdata.columns import COLUMNS, EXPORT_NAMES, missing_required
from foodcls.offdata.jsonl import product_row
from foodcls.offdata.parquet import BATCH_ROWS, parquet_batches
from foodcls.offdata.sniff import DAMAGED_STREAM_ERRORS, ExportFormat, line_too_long, sniff
from foodcls.offdata.streams import BlockStream, utf8_blocks

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
T = TypeVar("T")
Transform = Callable[[Frame], Frame]
# Ingredient lists can be long: a cell may hold up to 16 MiB (the csv module's default stops at 128 KiB).
csv.field_size_limit(16 << 20)


@dataclass
class SourceStats:
    """Filled in while a source is read; complete once its batches are exhausted."""

    path: Path
    format: str = ""
    sha256: str = ""
    rows: int = 0
    ragged: int = 0
    bytes_read: int = 0  # of the file as stored, so far: for a progress bar


def _header_indices(names: list[str], path: Path) -> dict[str, int]:
    """Our column → its index in the export's header."""
    normalised = [n.strip().strip('"').lstrip("\ufeff").strip().lower() for n in names]
    found = {}
    for column, export_names in EXPORT_NAMES.items():
        for export_name in export_names:
            if export_name in normalised:
                found[column] = normalised.index(export_name)
                break
    _require(found, path)
    return found


def _require(found, path: Path) -> None:
    missing = missing_required(found)
    if missing:
        raise DataError(f"{path}: not an Open Food Facts export: no {', '.join(missing)} column")


def _frame(columns: dict[str, list]) -> pl.DataFrame:
    return pl.DataFrame(columns, schema={k: pl.String for k in columns})


def _tsv_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest) -> Iterator[pl.DataFrame]:
    tail = b""
    indices: dict[str, int] | None = None
    width = 0
    # Reading, decompressing and hashing in a thread of their own, a block ahead of the parsing.
    for block in _prefetched(utf8_blocks(path, fmt, digest, stats), depth=1):
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line end in this block: a line longer than a block
            tail += block
            line_too_long(path, len(tail))
            continue
        lines, tail = b"".join((tail, memoryview(block)[:cut])), block[cut:]  # one copy of the block
        line_too_long(path, len(tail))
        if indices is None:
            header, _, lines = lines.partition(b"\n")
            names = header.decode("utf-8", errors="replace").rstrip("\r").split("\t")
            indices, width = _header_indices(names, path), len(names)
        yield from _parse_tsv_block(lines, indices, width, stats)
    if indices is None and tail and not tail.isspace():  # a header without a line end, and nothing else
        _header_indices(tail.decode("utf-8", errors="replace").rstrip("\r").split("\t"), path)
        return
    if indices is None:
        raise DataError(f"{path}: file is empty")
    if tail and not tail.isspace():
        yield from _parse_tsv_block(tail + b"\n", indices, width, stats)


def line_problem(line: bytes, width: int) -> str | None:
    """'blank', 'ragged' (wrong number of tab-separated fields) or None for a well-formed line."""
    if not line.strip():
        return "blank"
    return "ragged" if line.count(b"\t") != width - 1 else None


def _parse_tsv_block(block: bytes, indices: dict[str, int], width: int, stats: SourceStats) -> Iterator[pl.DataFrame]:
    if not block or block.isspace():  # (isspace stops at the first other byte; strip would copy the block)
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
    if not block or block.isspace():
        return
    order = sorted(indices.items(), key=lambda item: item[1])
    frame = pl.read_csv(
        block, separator="\t", quote_char=None, has_header=False, columns=[i for _, i in order],
        infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy",
    )
    yield frame.rename(dict(zip(frame.columns, (name for name, _ in order))))


def _rows(reader, path: Path) -> Iterator[list[str]]:
    """The csv module's rows; a row it cannot parse (a cell past the size limit, a stray NUL) is a
    one-line error naming the file and line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}:{reader.line_num}: unreadable CSV row ({error})") from None
        yield row


def _quoted_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest) -> Iterator[pl.DataFrame]:
    text = io.TextIOWrapper(io.BufferedReader(BlockStream(utf8_blocks(path, fmt, digest, stats))), encoding="utf-8", newline="")
    rows = _rows(csv.reader(text, delimiter=fmt.separator), path)
    names = next(rows, None)
    if names is None:
        raise DataError(f"{path}: file is empty")
    indices = _header_indices(names, path)
    columns: dict[str, list] = {k: [] for k in indices}
    for row in rows:
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


def _jsonl_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest) -> Iterator[pl.DataFrame]:
    columns: dict[str, list] = {k: [] for k in COLUMNS}
    tail = b""
    for block in utf8_blocks(path, fmt, digest, stats):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        line_too_long(path, len(tail))
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
        except (ValueError, RecursionError):
            stats.ragged += 1  # a line that does not parse as one product's JSON object
            continue
        for name, value in product_row(product).items():
            columns[name].append(value)
        if len(columns["code"]) >= BATCH_ROWS:
            yield _frame(columns)
            for values in columns.values():
                values.clear()
    if final and columns["code"]:
        yield _frame(columns)


_DONE = object()


def _prefetched(batches: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The batches, produced in a thread at most `depth` ahead: reading, decompressing, hashing, parsing
    and classifying (which release the GIL) overlap with the caller's work on the previous batch, and,
    unlike polars' streaming engine, which runs ahead of its reader, memory stays bounded."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        results.put((batch, None), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            results.put((_DONE, None))
        except BaseException as error:  # reported by the reader, in the caller's thread
            results.put((_DONE, error))
        finally:
            batches.close()  # type: ignore[attr-defined]

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        while True:
            batch, error = results.get()
            if error is not None:
                raise error
            if batch is _DONE:
                return
            yield batch
    finally:
        stop.set()
        while producer.is_alive():  # let it see `stop` (its put would wait on a full queue)
            try:
                results.get(timeout=0.05)
            except queue.Empty:
                pass


def _numbered(batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    row = 0
    for batch in batches:
        yield batch.with_row_index("row", offset=row)
        row += len(batch)


def _complete(frame: Frame) -> Frame:
    """Add the optional columns a source lacks, as nulls."""
    names = frame.collect_schema().names()
    return frame.with_columns([pl.lit(None, pl.String).alias(c) for c in COLUMNS if c not in names])


def _read_guarded(path: Path, batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Turn what a damaged file makes the readers raise into one DataError naming the file."""
    try:
        yield from batches
    except DataError:
        raise
    except DAMAGED_STREAM_ERRORS as error:
        reason = first_line(error)
        raise DataError(f"{path}: cannot read ({reason[:200]})") from None


def read_export(path: str | Path, stats: SourceStats, transform: Transform = lambda frame: frame) -> Iterator[pl.DataFrame]:
    """Batches with columns row, code, product_name, brands, categories_tags, protein, carbs, fat,
    additives (strings), in file order, passed through transform (lazily, on the fast path).
    stats is complete once the batches are exhausted."""
    path = Path(path)
    fmt = sniff(path)
    stats.format = fmt.describe()
    yield from _read_guarded(path, _read_export(path, fmt, stats, transform))


def _read_export(path: Path, fmt: ExportFormat, stats: SourceStats, transform: Transform) -> Iterator[pl.DataFrame]:
    digest = hashlib.sha256()
    if fmt.kind == "parquet":
        yield from parquet_batches(path, fmt, stats, lambda frame: transform(_complete(frame)))
        return
    if fmt.kind == "jsonl":
        batches = _numbered(_jsonl_batches(path, fmt, stats, digest))
    elif fmt.quoted:
        batches = _numbered(_quoted_batches(path, fmt, stats, digest))
    else:  # OFF's own export (plain, gzip or zstd) and other unquoted TSVs
        batches = _numbered(_tsv_batches(path, fmt, stats, digest))
    # Lazily: polars' optimiser shares the sub-expressions of classify (half the time of running it eagerly).
    yield from _prefetched(transform(_complete(batch.lazy())).collect() for batch in batches)
    stats.sha256 = digest.hexdigest()
