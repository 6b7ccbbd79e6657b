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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from foodcls.errors import DataError, first_line
from foodcls.offdata.columns import COLUMNS, EXPORT_NAMES, REQUIRED, missing_required
from foodcls.offdata.jsonl import product_row
from foodcls.offdata.parquet import BATCH_ROWS, parquet_batches
from foodcls.offdata.sniff import DAMAGED_STREAM_ERRORS, ExportFormat, line_too_long, sniff
from foodcls.offdata.streams import BlockStream, prefetched, utf8_blocks

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
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
    lines: int = 0  # of a text export, read so far (its header included): the line numbers of ragged lines
    bytes_read: int = 0  # of the file as stored, so far: for a progress bar


def _header_indices(names: list[str], path: Path, required: tuple[str, ...] = REQUIRED) -> dict[str, int]:
    """Our column → its index in the export's header."""
    normalised = [n.strip().strip('"').lstrip("\ufeff").strip().lower() for n in names]
    found = {}
    for column, export_names in EXPORT_NAMES.items():
        for export_name in export_names:
            if export_name in normalised:
                found[column] = normalised.index(export_name)
                break
    _require(found, path, required)
    return found


def looks_like_export(path: Path) -> bool:
    """Whether a file is an Open Food Facts export (Parquet, JSONL, or a CSV/TSV whose header names `code` and
    categories_tags or an export's nutrient column such as proteins_100g), not a CSV of our feature columns."""
    fmt = sniff(path)
    if fmt.kind in ("parquet", "jsonl"):
        return True
    blocks = utf8_blocks(path, fmt, None, SourceStats(path))
    try:
        head = next(blocks, b"")
    finally:
        blocks.close()
    names = {n.strip().strip('"').lstrip("\ufeff").strip().lower()
             for n in head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r").split(fmt.separator)}
    telling = {name for column, spellings in EXPORT_NAMES.items() if column not in ("code", "product_name", "brands")
               for name in spellings}
    return "code" in names and bool(names & telling)


def _require(found, path: Path, required: tuple[str, ...]) -> None:
    missing = missing_required(found, required)
    if missing:
        raise DataError(f"{path}: not an Open Food Facts export: no {', '.join(missing)} column")


def _frame(columns: dict[str, list]) -> pl.DataFrame:
    return pl.DataFrame(columns, schema={k: pl.String for k in columns})


def _tsv_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest, keep_invalid: bool,
                 required: tuple[str, ...]) -> Iterator[pl.DataFrame]:
    tail = b""
    indices: dict[str, int] | None = None
    width = 0
    # Reading, decompressing and hashing in a thread of their own, a block ahead of the parsing.
    for block in prefetched(utf8_blocks(path, fmt, digest, stats), depth=1):
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
            indices, width = _header_indices(names, path, required), len(names)
            stats.lines = 1
        yield from _parse_tsv_block(lines, indices, width, stats, keep_invalid)
    if indices is None and tail and not tail.isspace():  # a header without a line end, and nothing else
        _header_indices(tail.decode("utf-8", errors="replace").rstrip("\r").split("\t"), path, required)
        return
    if indices is None:
        raise DataError(f"{path}: file is empty")
    if tail and not tail.isspace():
        yield from _parse_tsv_block(tail + b"\n", indices, width, stats, keep_invalid)


def line_problem(line: bytes, width: int) -> str | None:
    """'blank', 'ragged' (wrong number of tab-separated fields) or None for a well-formed line."""
    if not line.strip():
        return "blank"
    return "ragged" if line.count(b"\t") != width - 1 else None


TAB = b"\t"
LONG_LINE = 256  # bytes: lines longer on average have their ends found by bytes.find (line_ends)
MAX_RECOUNTED_LINES = 256  # lines of a block counted one by one (tabs_per_line) before it is counted in 16 bits
INVALID = "invalid_line"  # with keep_invalid: why a row of the export could not be read (else null)


def line_ends(block: bytes, raw: np.ndarray) -> np.ndarray:
    """The positions of the block's line ends. An export's lines run to thousands of bytes: bytes.find (memchr)
    skips from one to the next in a third of the time numpy takes to compare every byte and gather the matches;
    where the lines turn out short (under LONG_LINE bytes on average, checked every 4,096), numpy's road
    finds the rest."""
    ends: list[int] = []
    find = block.find
    position = find(b"\n")
    while position != -1:
        ends.append(position)
        if len(ends) % 4096 == 0 and position < len(ends) * LONG_LINE:
            rest = np.flatnonzero(raw[position + 1 :] == ord("\n")) + (position + 1)
            return np.concatenate([np.array(ends, dtype=np.int64), rest])
        position = find(b"\n", position + 1)
    return np.array(ends, dtype=np.int64)


def tabs_per_line(block: bytes, expected: int | None = None) -> np.ndarray:
    """The number of tabs on each line of a block that ends with a line end. Checked per line, not per block:
    a line with a tab too many and another with one too few add up to the right total, and were kept with
    shifted columns (a jerky's protein read from the next field). Counted in numpy (which releases the GIL
    meanwhile), exactly for a line too long for 16 bits.

    With `expected` (the tabs of a well-formed line) under 256, counted in 8 bits first, which is 7x faster
    than in 16 (3 ms against 24 per 32 MB block; in 64 bits it was 115): that gives each count modulo 256.
    A line whose count differs from `expected` modulo 256 is recounted exactly; each other line has
    expected + 256·j tabs with j ≥ 0, so the block's total number of tabs is what those counts add up to only
    when every j is 0. Otherwise (or with many lines to recount) the block is counted in 16 bits."""
    raw = np.frombuffer(block, dtype=np.uint8)
    ends = line_ends(block, raw)
    if not len(ends):
        return np.zeros(0, np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1])  # each line's segment runs to the next start: never empty
    is_tab = (raw == ord("\t")).view(np.uint8)
    if expected is not None and 0 <= expected < 256:
        counts = np.add.reduceat(is_tab, starts, dtype=np.uint8).astype(np.int64)  # modulo 256
        odd = np.flatnonzero(counts != expected)
        if len(odd) <= MAX_RECOUNTED_LINES:
            for i in odd.tolist():
                counts[i] = block.count(TAB, int(starts[i]), int(ends[i]))
            if int(np.count_nonzero(is_tab)) == int(counts.sum()):
                return counts
    counts = np.add.reduceat(is_tab, starts, dtype=np.uint16).astype(np.int64)
    for i in np.flatnonzero(ends - starts >= np.iinfo(np.uint16).max).tolist():
        counts[i] = block.count(TAB, int(starts[i]), int(ends[i]))
    return counts


def _parse_tsv_block(block: bytes, indices: dict[str, int], width: int, stats: SourceStats,
                     keep_invalid: bool = False) -> Iterator[pl.DataFrame]:
    """The well-formed lines of a block (whole lines) as a frame. A ragged line is counted; with keep_invalid
    it stays in its place as a row of nulls whose invalid_line says why and where, so that a caller can
    account for every line. Blank lines are skipped."""
    tabs = tabs_per_line(block, width - 1)
    first_line = stats.lines + 1
    stats.lines += len(tabs)
    if not block or block.isspace():  # (isspace stops at the first other byte; strip would copy the block)
        return
    wrong = np.flatnonzero(tabs != width - 1)
    problems: list[tuple[int, str]] = []
    lines = len(tabs)
    if len(wrong):
        split = block.split(b"\n")[:-1]
        problems = [(i, f"ragged line {first_line + i}: {split[i].count(TAB) + 1} fields, expected {width}")
                    for i in wrong.tolist() if line_problem(split[i], width) == "ragged"]
        left_out = set(wrong.tolist())
        kept = [line for i, line in enumerate(split) if i not in left_out]
        stats.ragged += len(problems)
        lines = len(kept) + len(problems)
        block = b"\n".join(kept) + b"\n" if kept else b""
    stats.rows += lines
    order = sorted(indices.items(), key=lambda item: item[1])
    names = [name for name, _ in order]
    if block:
        frame = pl.read_csv(
            block, separator="\t", quote_char=None, has_header=False, columns=[i for _, i in order],
            infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy",
        )
        frame = frame.rename(dict(zip(frame.columns, names)))
    else:
        frame = _frame({name: [] for name in names})
    if keep_invalid:
        frame = _with_invalid_rows(frame, problems, names, [i for i in wrong.tolist()])
    if len(frame):
        yield frame


def _with_invalid_rows(frame: pl.DataFrame, problems: list[tuple[int, str]], columns: list[str],
                       left_out: list[int]) -> pl.DataFrame:
    """The frame of a block's readable lines with, in the place of each unreadable one, a row of nulls whose
    invalid_line says why (problems: the line's index in the block, why; left_out: every line index not in
    the frame, blank ones included)."""
    frame = frame.with_columns(pl.lit(None, pl.String).alias(INVALID))
    if not problems:
        return frame
    # Where each readable row and each broken line stood among the block's lines.
    skipped = set(left_out)
    total = len(frame) + len(left_out)
    kept_at = np.array([i for i in range(total) if i not in skipped], dtype=np.int64)
    broken_at = np.array([i for i, _ in problems], dtype=np.int64)
    invalid = pl.DataFrame({**{name: [None] * len(problems) for name in columns}, INVALID: [why for _, why in problems]},
                           schema={**{name: pl.String for name in columns}, INVALID: pl.String})
    return (pl.concat([frame.with_columns(pl.Series("_at", kept_at)), invalid.with_columns(pl.Series("_at", broken_at))])
            .sort("_at").drop("_at"))


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


def _quoted_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest, keep_invalid: bool,
                    required: tuple[str, ...]) -> Iterator[pl.DataFrame]:
    text = io.TextIOWrapper(io.BufferedReader(BlockStream(utf8_blocks(path, fmt, digest, stats))), encoding="utf-8", newline="")
    reader = csv.reader(text, delimiter=fmt.separator)
    rows = _rows(reader, path)
    names = next(rows, None)
    if names is None:
        raise DataError(f"{path}: file is empty")
    indices = _header_indices(names, path, required)
    batch = _Batch([*indices, *([INVALID] if keep_invalid else [])])
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        stats.rows += 1
        if len(row) != len(names):
            stats.ragged += 1
            if keep_invalid:
                batch.add_invalid(f"ragged line {reader.line_num}: {len(row)} fields, expected {len(names)}")
            continue
        batch.add({name: row[index] for name, index in indices.items()})
        if len(batch) >= BATCH_ROWS:
            yield batch.take()
    if len(batch):
        yield batch.take()


class _Batch:
    """Rows gathered as columns of strings, a batch at a time; an unreadable row is a row of nulls whose
    invalid_line (a column only when the caller keeps such rows) says why."""

    def __init__(self, names: list[str]) -> None:
        self.columns: dict[str, list] = {name: [] for name in names}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def add(self, values: dict[str, str | None]) -> None:
        for name, column in self.columns.items():
            column.append(values.get(name))

    def add_invalid(self, why: str) -> None:
        self.add({INVALID: why})

    def take(self) -> pl.DataFrame:
        frame = _frame(self.columns)
        self.columns = {name: [] for name in self.columns}
        return frame


def _jsonl_batches(path: Path, fmt: ExportFormat, stats: SourceStats, digest, keep_invalid: bool) -> Iterator[pl.DataFrame]:
    batch = _Batch([*COLUMNS, *([INVALID] if keep_invalid else [])])
    tail = b""
    for block in utf8_blocks(path, fmt, digest, stats):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        line_too_long(path, len(tail))
        yield from _json_lines(lines, batch, stats, keep_invalid, final=False)
    yield from _json_lines([tail], batch, stats, keep_invalid, final=True)


def _json_lines(lines: list[bytes], batch: _Batch, stats: SourceStats, keep_invalid: bool, final: bool) -> Iterator[pl.DataFrame]:
    for line in lines:
        stats.lines += 1
        if not line.strip():
            continue
        stats.rows += 1
        try:
            product = json.loads(line)
            if not isinstance(product, dict):
                raise ValueError
        except (ValueError, RecursionError):
            stats.ragged += 1  # a line that does not parse as one product's JSON object
            if keep_invalid:
                batch.add_invalid(f"line {stats.lines}: not a product's JSON object")
            continue
        batch.add(product_row(product))
        if len(batch) >= BATCH_ROWS:
            yield batch.take()
    if final and len(batch):
        yield batch.take()


def _numbered(batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    row = 0
    for batch in batches:
        yield batch.with_row_index("row", offset=row)
        row += len(batch)


def _completer(keep_invalid: bool) -> Callable[[Frame], Frame]:
    """What adds the optional columns a source lacks, as nulls (and invalid_line, when it is kept)."""
    wanted = (*COLUMNS, INVALID) if keep_invalid else COLUMNS

    def complete(frame: Frame) -> Frame:
        names = frame.collect_schema().names()
        return frame.with_columns([pl.lit(None, pl.String).alias(c) for c in wanted if c not in names])

    return complete


def _read_guarded(path: Path, batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Turn what a damaged file makes the readers raise into one DataError naming the file."""
    try:
        yield from batches
    except DataError:
        raise
    except DAMAGED_STREAM_ERRORS as error:
        reason = first_line(error)
        raise DataError(f"{path}: cannot read ({reason[:200]})") from None


def read_export(path: str | Path, stats: SourceStats, transform: Transform = lambda frame: frame, *,
                keep_invalid: bool = False, required: tuple[str, ...] = REQUIRED, checksum: bool = True) -> Iterator[pl.DataFrame]:
    """Batches with columns row, code, product_name, brands, categories_tags, the nutrients (text; numbers from
    Parquet), in file order, passed through transform (lazily, on the fast path). A line that cannot be read (ragged,
    not JSON) is counted in stats and left out, or with keep_invalid kept in its place as a row of nulls
    whose invalid_line says why (every other row has it null). required: the columns without which the file
    is refused (one line naming them). checksum: stats.sha256 is the file's (a datacard's provenance; it
    costs a core's time on a large export). stats is complete once the batches are exhausted."""
    path = Path(path)
    fmt = sniff(path)
    stats.format = fmt.describe()
    yield from _read_guarded(path, _read_export(path, fmt, stats, transform, keep_invalid, required, checksum))


def _read_export(path: Path, fmt: ExportFormat, stats: SourceStats, transform: Transform, keep_invalid: bool,
                 required: tuple[str, ...], checksum: bool) -> Iterator[pl.DataFrame]:
    digest = hashlib.sha256() if checksum else None
    complete = _completer(keep_invalid)
    if fmt.kind == "parquet":
        yield from parquet_batches(path, fmt, stats, lambda frame: transform(complete(frame)), required, checksum)
        return
    if fmt.kind == "jsonl":
        batches = _numbered(_jsonl_batches(path, fmt, stats, digest, keep_invalid))
    elif fmt.quoted:
        batches = _numbered(_quoted_batches(path, fmt, stats, digest, keep_invalid, required))
    else:  # OFF's own export (plain, gzip or zstd) and other unquoted TSVs
        batches = _numbered(_tsv_batches(path, fmt, stats, digest, keep_invalid, required))
    # Lazily: polars' optimiser shares the sub-expressions of classify (half the time of running it eagerly).
    yield from prefetched(transform(complete(batch.lazy())).collect() for batch in batches)
    stats.sha256 = digest.hexdigest() if digest is not None else ""
