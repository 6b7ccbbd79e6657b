"""Byte streams under the readers: hashing what is read (as stored on disk), blocks of UTF-8, a block
iterator read as a stream, and batches produced a little ahead in a thread of their own."""

from __future__ import annotations

import codecs
import ctypes
import functools
import io
import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from foodcls.offdata.sniff import ExportFormat, decompressed

T = TypeVar("T")
# Bytes read, decoded and parsed at a time. The environment variable is for tests, which show memory
# flat in the rows with small blocks instead of GBs of export.
BLOCK_BYTES = int(os.environ.get("FOODCLS_READ_BLOCK_BYTES", 32 << 20))
# glibc's mallopt parameters (malloc.h), and the values reading sets: below 256 MB an allocation comes from the
# heap, and up to 128 MB of freed heap is kept for the next one (1 GB kept 30 MB more at peak, for no less time).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES, HEAP_UP_TO_BYTES = 128 << 20, 256 << 20


@functools.cache
def reuse_freed_blocks() -> bool:
    """Let the process reuse the memory of the blocks it frees. glibc gives each allocation over 32 MB (a read
    block, a block joined to the last one's partial line) pages of its own and hands them back when it is freed,
    so every block's pages are faulted in and zeroed anew. On this VM that is at times slow: predict on a million
    TSV rows spent 3.2–5.2 s of system time in it (13.2 / 10.0 s wall), against 1.0 with the blocks on the heap
    (9.3 / 8.5 s); at quiet times the faults are cheap (~1 s) and the runs the same. The cost: the heap kept,
    peak RSS 381 against 311 MB at a million rows (423 MB at four million; the goal is 500). Once per process;
    False where the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # (musl and others: no libc.so.6)
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_UP_TO_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


class ReadCounter(Protocol):
    bytes_read: int  # of the file as stored, so far (a source's stats: for the progress bar)


class HashingReader(io.RawIOBase):
    """Pass reads through, hashing the bytes as stored on disk (compressed or not)."""

    def __init__(self, handle, digest, stats: ReadCounter | None = None) -> None:
        self.handle, self.digest, self.stats = handle, digest, stats

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.handle.readinto(buffer)
        if self.digest is not None:  # None: no checksum wanted (predict reads an export without one)
            self.digest.update(memoryview(buffer)[:n])
        if self.stats is not None:
            self.stats.bytes_read += n
        return n


class BlockStream(io.RawIOBase):
    """An iterator of byte blocks as a readable stream, one block in memory at a time."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.pending = blocks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self.pending):
            block = next(self.blocks, None)
            if block is None:
                return 0
            self.pending = memoryview(block)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def utf8_blocks(path: Path, fmt: ExportFormat, digest, stats: ReadCounter) -> Iterator[bytes]:
    """The file as UTF-8 bytes in large blocks, hashing the raw bytes on the way."""
    reuse_freed_blocks()
    with open(path, "rb", buffering=0) as raw:
        stream = io.BufferedReader(HashingReader(raw, digest, stats), buffer_size=BLOCK_BYTES)
        handle = decompressed(stream, fmt.compression)
        decoder = None if fmt.encoding == "utf-8" else codecs.getincrementaldecoder(fmt.encoding)(errors="replace")
        while True:
            block = handle.read(BLOCK_BYTES)
            if decoder is not None:
                block = decoder.decode(block, final=not block).lstrip("\ufeff").encode("utf-8")
            if not block:
                return
            yield block


_DONE = object()


def prefetched(batches: Iterator[T], depth: int = 2) -> Iterator[T]:
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
