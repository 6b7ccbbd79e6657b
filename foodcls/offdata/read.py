"""Stream an export as batches of the columns we use, as strings; ragged rows are counted and skipped.

OFF's own export, plain UTF-8 TSV, takes the fast path in scan.py. Other unquoted TSVs (gzip, UTF-16,
cp1252) are decoded in large blocks and parsed by polars block by block. Quoted spreadsheet re-saves
go through Python's csv module, JSONL through json, both streamed. Memory stays bounded on every path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
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
from foodcls.offdata.parquet import parquet_batches
from foodcls.offdata.scan import LineCheck, line_problem, scan_tsv
from foodcls.offdata.sniff import DAMAGED_STREAM_ERRORS, MAX_LINE_BYTES, ExportFormat, decompressed, line_too_long, sniff
from foodcls.offdata.streams import BLOCK_BYTES, BlockStream, HashingReader, utf8_blocks

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
Transform = Callable[[Frame], Frame]
# Ingredient lists can be long: a cell may hold up to 16 MiB (the csv module's default stops at 128 KiB).
csv.field_size_limit(16 << 20)
BATCH_ROWS = 50_000


@dataclass
class SourceStats:
    """Filled in while a source is read; complete once its batches are exhausted."""

    path: Path
    format: str = ""
    sha256: str = ""
    rows: int = 0
    ragged: int = 0
    lines: int = 0  # data lines, blank ones included (the fast path's row numbering)
    bytes_read: int = 0  # of the file as stored, so far: for a progress bar
    check: LineCheck | None = None  # the fast path's line check, while it runs (bytes_read follows it)

    def bytes_so_far(self) -> int:
        return self.check.bytes_read if self.check is not None else self.bytes_read


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
    for block in utf8_blocks(path, fmt, digest, stats):
        block = tail + block
        cut = block.rfind(b"\n") + 1
        block, tail = block[:cut], block[cut:]
        line_too_long(path, len(tail))
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


def _fast_batches(path: Path, stats: SourceStats, transform: Transform, named: Path | None = None) -> Iterator[pl.DataFrame]:
    """OFF's own TSV through scan.py; `named` is the file errors name (the export, when path is its
    decompressed copy)."""
    with open(path, "rb") as handle:
        header = handle.readline()
    names = header.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    columns = _header_indices(names, named or path)
    batches, check = scan_tsv(path, len(header), columns, len(names), lambda frame: transform(_complete(frame)))
    stats.check = check
    yield from batches
    stats.check = None
    stats.sha256 = check.sha256
    stats.lines = check.lines
    stats.rows = check.lines - check.blank
    stats.ragged = check.ragged
    stats.bytes_read += check.bytes_read


# A compressed export is decompressed in a thread of its own into temporary chunk files of about this
# size, each scanned by the fast path while the next is decompressed; at most two chunks exist at once.
CHUNK_BYTES = 64 << 20
# In memory (tmpfs) where the system has one: a disk write of every chunk would cost more than inflating it.
CHUNK_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _decompressed_chunks(path: Path, fmt: ExportFormat, digest, chunks: queue.Queue, stats: SourceStats) -> None:
    """In a thread: decompress the export (ISA-L for gzip), hashing the compressed bytes, into chunk files
    that each start with the header and end at a line end; puts (path, None), then (None, error or None)."""
    import tempfile

    try:
        with open(path, "rb", buffering=0) as raw:
            hashed = io.BufferedReader(HashingReader(raw, digest, stats), buffer_size=BLOCK_BYTES)
            if fmt.compression == "gzip":
                from isal import igzip_threaded

                source = igzip_threaded.open(hashed, "rb", threads=1)
            else:  # zstd's reader has no readline: buffered, it does
                source = io.BufferedReader(decompressed(hashed, fmt.compression), buffer_size=BLOCK_BYTES)
            with source:
                header = source.readline(MAX_LINE_BYTES + 1)
                line_too_long(path, len(header) if not header.endswith(b"\n") else 0)
                carry = b""
                block = bytearray(CHUNK_BYTES)
                while True:
                    n = source.readinto(block)
                    view = memoryview(block)[:n]
                    cut = block.rfind(b"\n", 0, n) + 1 if n else 0
                    if n and cut == 0:
                        carry += bytes(view)  # a line longer than a chunk: keep reading
                        line_too_long(path, len(carry))
                        continue
                    body = view[:cut] if n else memoryview(b"")
                    if carry or len(body):
                        fd, name = tempfile.mkstemp(prefix="foodcls-chunk-", suffix=".tsv", dir=CHUNK_DIR)
                        with open(fd, "wb") as target:  # written from views: no copy of the 64 MB block
                            target.write(header)
                            target.write(carry)
                            target.write(body)
                            if not n and not carry.endswith(b"\n"):
                                target.write(b"\n")
                        chunks.put((Path(name), None))
                    if not n:
                        break
                    carry = bytes(view[cut:])
        chunks.put((None, None))
    except BaseException as error:  # reported by the reader, in the main thread
        chunks.put((None, error))


def _chunked_batches(path: Path, fmt: ExportFormat, stats: SourceStats, transform: Transform, digest) -> Iterator[pl.DataFrame]:
    """A compressed OFF TSV: decompression in its own thread, each chunk through the fast path, rows
    numbered across chunks."""
    chunks: queue.Queue = queue.Queue(maxsize=1)
    worker = threading.Thread(target=_decompressed_chunks, args=(path, fmt, digest, chunks, stats), daemon=True)
    worker.start()
    offset, rows, ragged = 0, 0, 0
    try:
        while True:
            chunk, error = chunks.get()
            if error is not None:
                raise error
            if chunk is None:
                break
            try:
                part = SourceStats(chunk)
                for batch in _fast_batches(chunk, part, transform, named=path):
                    yield batch.with_columns(pl.col("row") + offset)
                rows += part.rows
                ragged += part.ragged
                offset += part.lines
            finally:
                chunk.unlink(missing_ok=True)
    finally:
        while worker.is_alive():  # let the thread finish (or fail) so no chunk file is left behind
            try:
                leftover, _ = chunks.get(timeout=0.1)
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
            except queue.Empty:
                pass
    stats.rows, stats.ragged = rows, ragged
    stats.sha256 = digest.hexdigest()  # of the export as stored, compressed


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
    if fmt.kind == "csv" and not fmt.quoted and fmt.compression is None and fmt.encoding == "utf-8":
        yield from _fast_batches(path, stats, transform)
        return
    if fmt.kind == "csv" and not fmt.quoted and fmt.encoding == "utf-8":
        yield from _chunked_batches(path, fmt, stats, transform, digest)
        return
    if fmt.kind == "parquet":
        yield from parquet_batches(path, fmt, stats, lambda frame: transform(_complete(frame)))
        return
    if fmt.kind == "jsonl":
        batches = _numbered(_jsonl_batches(path, fmt, stats, digest))
    elif fmt.quoted:
        batches = _numbered(_quoted_batches(path, fmt, stats, digest))
    else:
        batches = _numbered(_tsv_batches(path, fmt, stats, digest))
    for batch in batches:
        yield transform(_complete(batch))
    if not stats.sha256:
        stats.sha256 = digest.hexdigest()
