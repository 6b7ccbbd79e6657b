"""Recognise an export from its first bytes: compression, encoding, JSONL or CSV, separator, quoting."""

from __future__ import annotations

import codecs
import gzip
from dataclasses import dataclass
from pathlib import Path

from foodcls.errors import DataError

SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class ExportFormat:
    gzipped: bool
    encoding: str  # a Python codec; utf-8 input is passed through untouched
    kind: str  # "csv" or "jsonl"
    separator: str = "\t"
    quoted: bool = False

    def describe(self) -> str:
        if self.kind == "jsonl":
            text = "JSONL"
        else:
            text = {"\t": "tab", ",": "comma", ";": "semicolon"}[self.separator] + "-separated" + (", quoted" if self.quoted else "")
        return f"{text}, {self.encoding}{', gzip' if self.gzipped else ''}"


def open_binary(path: Path, gzipped: bool):
    return gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115 - caller closes


def sniff(path: Path) -> ExportFormat:
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with open_binary(path, gzipped) as handle:
            head = handle.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
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
        return ExportFormat(gzipped, encoding, "jsonl")
    header = text.split("\n", 1)[0]
    counts = {sep: header.count(sep) for sep in ("\t", ";", ",")}
    separator = max(counts, key=counts.get)
    if counts[separator] == 0:
        raise DataError(f"{path}: not an Open Food Facts export (no tab-, comma- or semicolon-separated header)")
    # OFF's own export is tab-separated and never quoted (quotes inside names are literal); a
    # spreadsheet re-save quotes its cells, which shows in the header or in another separator.
    quoted = separator != "\t" or '"' in header
    return ExportFormat(gzipped, encoding, "csv", separator, quoted)
