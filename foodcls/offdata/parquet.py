"""The official Open Food Facts Parquet export, read column-wise and streamed by polars.

`nutriments` is a list of structs {name, value, 100g, serving, unit, …}: each nutrient we use is the
`100g` field of the entry with its name. `product_name` is a list of {lang, text}; `categories_tags`
a list of tags. A Parquet file with flat `<name>_100g` columns (the CSV layout) is read too. Numbers stay
numbers (float64, each float32 rounded as its text would be: the values of every format are the same), text
stays text; the cleaning step (offdata/clean.py) takes either.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from foodcls.errors import DataError, first_line
from foodcls.offdata.columns import EXPORT_NAMES, NUMBER_COLUMNS, REQUIRED, missing_required
from foodcls.offdata.sniff import DAMAGED_STREAM_ERRORS, ExportFormat, decompressed

# Rows per batch handed to Python (each batch costs a fixed few ms); the environment variable is for tests.
BATCH_ROWS = int(os.environ.get("FOODCLS_READ_BATCH_ROWS", 50_000))
# Our column → the nutriment's name in the `nutriments` list.
NUTRIMENT_NAMES = {
    "protein": "proteins",
    "carbs": "carbohydrates",
    "fat": "fat",
    "sugars": "sugars",
    "saturated_fat": "saturated-fat",
    "salt": "salt",
    "fiber": "fiber",
    "energy_kcal": "energy-kcal",
    "energy_kj": "energy",
}


def _text(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.String)


def _number(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A number column as it is (the cleaning step, clean._number, makes it float64), text as text. A float32
    (the export's nutriments) goes through its shortest decimal, as a text export writes it and the cleaning
    step of text reads it: 12.3 g stays 12.3, not 12.300000190734863 — the same value from every format."""
    if dtype == pl.Float32:
        return expr.cast(pl.String).cast(pl.Float64, strict=False)
    return expr if dtype.is_numeric() else _text(expr)


def _list_of_structs(dtype: pl.DataType, *fields: str) -> bool:
    return isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct) and all(f in {x.name for x in dtype.inner.fields} for f in fields)


def _nutriment(name: str) -> pl.Expr:
    entry = pl.element().struct
    return pl.col("nutriments").list.eval(entry.field("100g").filter(entry.field("name") == name)).list.first()


def _name_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """A name column: as it is, or from a list of {lang, text} the main language's text (else the first)."""
    if _list_of_structs(dtype, "lang", "text"):
        names = pl.col(column)
        main = names.list.eval(pl.element().struct.field("text").filter(pl.element().struct.field("lang") == "main")).list.first()
        return main.fill_null(names.list.first().struct.field("text"))
    return _text(pl.col(column))


def _tags_expr(dtype: pl.DataType) -> pl.Expr:
    return pl.col("categories_tags").list.join(",") if isinstance(dtype, pl.List) else _text(pl.col("categories_tags"))


def column_expressions(schema: dict[str, pl.DataType], path: Path, required: tuple[str, ...] = REQUIRED) -> list[pl.Expr]:
    """Our columns (numbers as numbers, the rest as text) from the Parquet schema; a one-line error when a required
    one is missing."""
    nested = "nutriments" in schema and _list_of_structs(schema["nutriments"], "name", "100g")
    per_100g = next((f.dtype for f in schema["nutriments"].inner.fields if f.name == "100g"), None) if nested else None
    found: dict[str, pl.Expr] = {}
    for column, export_names in EXPORT_NAMES.items():
        if nested and column in NUTRIMENT_NAMES:
            found[column] = _number(_nutriment(NUTRIMENT_NAMES[column]), per_100g)
            continue
        name = next((n for n in export_names if n in schema), None)
        if name is None:
            continue
        if column in ("product_name", "generic_name"):
            found[column] = _name_expr(name, schema[name])
        elif column == "categories_tags":
            found[column] = _tags_expr(schema[name])
        elif isinstance(schema[name], (pl.List, pl.Struct)):
            raise DataError(f"{path}: column {name} is {schema[name]}, expected a single value per product")
        elif column in NUMBER_COLUMNS:
            found[column] = _number(pl.col(name), schema[name])
        else:
            found[column] = _text(pl.col(name))
    missing = missing_required(found, required)
    if missing:
        hint = " (nor a nutriments list of {name, 100g})" if not nested and any(c in NUTRIMENT_NAMES for c in required if c not in found) else ""
        raise DataError(f"{path}: not an Open Food Facts export: no {', '.join(missing)} column{hint}")
    return [expr.alias(column) for column, expr in found.items()]


def _hash_file(path: Path, out: list[str]) -> None:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    out.append(digest.hexdigest())


@contextmanager
def _plain_parquet(path: Path, compression: str | None) -> Iterator[Path]:
    """Parquet needs random access: a whole-file gzip/zstd copy is decompressed to a temp file first."""
    if compression is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="foodcls-parquet-") as tmp:
        plain = Path(tmp) / "export.parquet"
        with open(path, "rb") as raw, decompressed(raw, compression) as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target, 8 << 20)
        yield plain


def parquet_batches(path: Path, fmt: ExportFormat, stats, transform: Callable[[pl.LazyFrame], pl.LazyFrame],
                    required: tuple[str, ...] = REQUIRED, checksum: bool = True) -> Iterator[pl.DataFrame]:
    """Batches of transform(our columns + `row`), streamed by polars; the file is hashed alongside."""
    digest: list[str] = []
    hasher = threading.Thread(target=_hash_file, args=(path, digest), daemon=True)
    if checksum:
        hasher.start()
    with _plain_parquet(path, fmt.compression) as plain:
        try:
            frame = pl.scan_parquet(plain)
            schema = dict(frame.collect_schema())
        except DAMAGED_STREAM_ERRORS as error:
            reason = first_line(error)
            raise DataError(f"{path}: not a readable Parquet file ({reason[:200]})") from None
        expressions = column_expressions(schema, path, required)
        total_rows = frame.select(pl.len()).collect().item()  # from the footer
        size = path.stat().st_size
        # A slice at a time, the next ones read in two threads while this one is used (polars releases the GIL): the
        # streaming engine (collect_batches, or a sink) runs ahead of its reader and kept ~1.6 KB a row of the
        # `nutriments` lookups (1.7 GB at 1M rows). A slice reads only the row groups it overlaps (a row group
        # larger than a slice is decoded in part).
        def read_slice(start: int) -> pl.DataFrame:
            return transform(frame.slice(start, BATCH_ROWS).select(expressions).with_row_index("row", offset=start)).collect()

        with ThreadPoolExecutor(max_workers=2) as pool:
            starts = iter(range(0, total_rows, BATCH_ROWS))
            pending = [pool.submit(read_slice, start) for start in itertools.islice(starts, 3)]
            while pending:
                batch = pending.pop(0).result()
                pending += [pool.submit(read_slice, start) for start in itertools.islice(starts, 1)]
                stats.rows += len(batch)
                stats.bytes_read = size * stats.rows // max(total_rows, 1)
                yield batch
    if checksum:
        hasher.join()
    stats.sha256 = digest[0] if digest else ""
