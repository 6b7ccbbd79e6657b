"""The fast path for OFF's own export (tab-separated, unquoted, UTF-8, uncompressed): polars scans the
file in streaming batches on its threads while a Python thread hashes it and checks every line's
field count, so a 10 GB export is read once at disk speed with bounded memory."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from foodcls.offdata.sniff import line_too_long

BLOCK_BYTES = 16 << 20
BATCH_ROWS = 50_000  # rows per batch handed to Python: small ones cost a fixed overhead each
TAB, NEWLINE = 9, 10


@dataclass
class LineCheck:
    """What the checking thread found: the file's hash, its data lines, and the lines to leave out.
    The reader takes the bad lines as the check passes them (`bad`, in line order), so what is kept
    is bounded by how far the check runs ahead, not by the file."""

    sha256: str = ""
    lines: int = 0
    ragged: int = 0  # data lines with the wrong number of fields
    blank: int = 0
    bad: deque[int] = field(default_factory=deque)  # indices of ragged or blank lines not yet taken by the reader
    checked: int = 0  # data lines checked so far: every bad line below it is in `bad` (or was taken)
    bytes_read: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def bad_lines_before(self, line: int) -> list[int]:
        """The bad lines below `line`, taken out of `bad`; waits until the check has passed it."""
        while self.checked < line and not self.done.wait(0.002):
            pass
        if self.error is not None:
            raise self.error
        taken = []
        while self.bad and self.bad[0] < line:
            taken.append(self.bad.popleft())
        return taken


def line_problem(line: bytes, width: int) -> str | None:
    """'blank', 'ragged' (wrong number of tab-separated fields) or None for a well-formed line."""
    if not line.strip():
        return "blank"
    return "ragged" if line.count(b"\t") != width - 1 else None


def _exact_check(segment: bytes, first_line: int, width: int, result: LineCheck) -> None:
    for offset, line in enumerate(segment.split(b"\n")[:-1]):
        problem = line_problem(line, width)
        if problem == "blank":
            result.blank += 1
        elif problem == "ragged":
            result.ragged += 1
        if problem is not None:
            result.bad.append(first_line + offset)


def check_lines(path: Path, header_bytes: int, width: int, result: LineCheck) -> None:
    """Hash the file and find ragged or blank data lines. Counting tabs and newlines per block is
    cheap; a block whose counts disagree with the width is re-read line by line."""
    try:
        digest = hashlib.sha256()
        buffer = bytearray(BLOCK_BYTES)
        view = memoryview(buffer)
        carry = b""  # the unfinished line at the end of the previous block
        line = 0
        with open(path, "rb", buffering=0) as handle:
            digest.update(handle.read(header_bytes))
            while n := handle.readinto(buffer):
                result.bytes_read += n
                digest.update(view[:n])
                data = np.frombuffer(buffer, dtype=np.uint8, count=n)
                newlines = int(np.count_nonzero(data == NEWLINE))
                if newlines == 0:
                    carry += bytes(view[:n])
                    line_too_long(path, len(carry))
                    continue
                last = buffer.rfind(b"\n", 0, n)
                tabs = int(np.count_nonzero(data == TAB)) - buffer.count(b"\t", last + 1, n) + carry.count(b"\t")
                # A blank, short or long line breaks the equality (blank lines have no tabs).
                if tabs != newlines * (width - 1):
                    _exact_check(carry + bytes(view[: last + 1]), line, width, result)
                line += newlines
                result.checked = line
                carry = bytes(view[last + 1 : n])
        if carry.strip():
            _exact_check(carry + b"\n", line, width, result)
            line += 1
        result.lines = result.checked = line
        result.sha256 = digest.hexdigest()
    except BaseException as error:  # reported by the reader, in the main thread
        result.error = error
    finally:
        result.done.set()


def scan_tsv(
    path: Path, header_bytes: int, columns: dict[str, int], width: int, transform: Callable[[pl.LazyFrame], pl.LazyFrame]
) -> tuple[Iterator[pl.DataFrame], LineCheck]:
    """Batches of transform(the named columns, as strings, plus `row`, the data-line index) without the
    ragged and blank lines, and the check result, complete once the batches are exhausted. transform
    runs inside polars' streaming engine, in parallel."""
    result = LineCheck()
    checker = threading.Thread(target=check_lines, args=(path, header_bytes, width, result), daemon=True)

    def batches() -> Iterator[pl.DataFrame]:
        checker.start()
        frame = pl.scan_csv(
            path, separator="\t", quote_char=None, has_header=False, skip_rows=1,
            schema={f"c{i}": pl.String for i in range(width)}, truncate_ragged_lines=True, encoding="utf8-lossy",
            missing_columns="insert",  # a short first line must not make polars refuse the file (ragged lines are counted)
        )
        selected = frame.select(*(pl.col(f"c{index}").alias(name) for name, index in columns.items())).with_row_index("row")
        for batch in transform(selected).collect_batches(chunk_size=BATCH_ROWS):
            if len(batch):
                bad = result.bad_lines_before(int(batch["row"][-1]) + 1)
                yield batch.filter(~pl.col("row").is_in(bad)) if bad else batch
        checker.join()
        if result.error is not None:
            raise result.error

    return batches(), result
