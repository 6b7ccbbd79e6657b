"""Recognise an export from its first bytes: compression, Parquet, encoding, JSONL or CSV, separator, quoting."""

from __future__ import annotations

import codecs
import zlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import zstandard
from isal import igzip, isal_zlib

from foodcls.errors import DataError

SNIFF_BYTES = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
# What reading a truncated or corrupt export raises, from the decompressors, the OS and polars.
# No export line comes near this (the longest in the shared samples is a few KB); a file without a newline
# for this long is not an export, and reading on would hold all of it in memory.
MAX_LINE_BYTES = 16 << 20


def line_too_long(path: Path, carried: int) -> None:
    """Refuse, in one line naming the file, a line that has grown past MAX_LINE_BYTES."""
    if carried > MAX_LINE_BYTES:
        raise DataError(f"{path}: a line longer than {MAX_LINE_BYTES >> 20} MB (no newline): not an export, or a damaged one")


DAMAGED_STREAM_ERRORS = (OSError, EOFError, ValueError, zlib.error, isal_zlib.error, zstandard.ZstdError, pl.exceptions.PolarsError)


@dataclass(frozen=True)
class ExportFormat:
    compression: str | None  # None, "gzip" or "zstd" (the whole file)
    encoding: str  # a Python codec; utf-8 input is passed through untouched
    kind: str  # "csv", "jsonl" or "parquet"
    separator: str = "\t"
    quoted: bool = False

    def describe(self) -> str:
        if self.kind in ("jsonl", "parquet"):
            text = {"jsonl": "JSONL", "parquet": "Parquet"}[self.kind]
        else:
            text = {"\t": "tab", ",": "comma", ";": "semicolon"}[self.separator] + "-separated" + (", quoted" if self.quoted else "")
            text += f", {self.encoding}"
        return text + (f", {self.compression}" if self.compression else "")


def compression_of(path: Path) -> str | None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    return "zstd" if magic == ZSTD_MAGIC else None


def decompressed(handle, compression: str | None):
    """A binary file object reading the decompressed bytes of `handle` (which the caller closes)."""
    if compression == "gzip":
        return igzip.IGzipFile(fileobj=handle)  # ISA-L: the gzip module's interface, 3-4x its speed
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
    return handle


def sniff(path: Path) -> ExportFormat:
    try:
        compression = compression_of(path)
        with open(path, "rb") as raw, decompressed(raw, compression) as handle:
            head = handle.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an export file") from None
    except DAMAGED_STREAM_ERRORS as error:
        raise DataError(f"{path}: cannot read ({type(error).__name__}: {error})") from None
    if head.startswith(PARQUET_MAGIC):
        return ExportFormat(compression, "binary", "parquet")
    if not head.strip():
        raise DataError(f"{path}: file is empty")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    else:
        try:
            head.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError as error:
            # A cut multi-byte character at the end of the sample is still UTF-8.
            encoding = "utf-8" if error.start >= len(head) - 3 else "cp1252"
    text = head.decode("utf-16" if encoding == "utf-16" else encoding, errors="replace").lstrip("\ufeff")
    if text.lstrip().startswith("{"):
        return ExportFormat(compression, encoding, "jsonl")
    header = text.split("\n", 1)[0]
    counts = {sep: header.count(sep) for sep in ("\t", ";", ",")}
    separator = max(counts, key=counts.get)
    if counts[separator] == 0:
        raise DataError(f"{path}: not an Open Food Facts export (no tab-, comma- or semicolon-separated header)")
    # OFF's own export is tab-separated and never quoted (quotes inside names are literal); a
    # spreadsheet re-save quotes its cells, which shows in the header or in another separator.
    quoted = separator != "\t" or '"' in header
    return ExportFormat(compression, encoding, "csv", separator, quoted)
