"""Throughput and peak memory of `foodcls data build` on a large export, as TSV, .tsv.gz and Parquet.

Generates (once, cached in --workdir) ROWS-row exports from the real samples with unique barcodes and
names: the TSV and its gzip copy from off-2024-first1000.tsv, the Parquet file from
off-2026-products.parquet. Each is built by `foodcls data build` in a fresh process; prints rows/s
(process wall time, start-up included) and the child's peak RSS, side by side.

    python benchmarks/build_speed.py [--rows 1000000] [--formats tsv,gz,parquet] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("FOODCLS_OFF_SAMPLES", REPO.parent / "shared" / "data" / "off-exports"))


def generate_tsv(sample: Path, rows: int, out: Path) -> None:
    """Repeat the sample's rows with unique barcodes and names (so de-duplication keeps the copies)."""
    header, *body = sample.read_bytes().decode("utf-8").rstrip("\n").split("\n")
    name_column = header.split("\t").index("product_name")
    body = [line.split("\t") for line in body if line.strip()]
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for start in range(0, rows, len(body)):
            block = []
            for i, fields in enumerate(body[: rows - start]):
                fields = list(fields)
                fields[0] = f"9{start + i:012d}"
                fields[name_column] = f"{fields[name_column]} #{start + i}"
                block.append("\t".join(fields))
            handle.write("\n".join(block) + "\n")


def generate_gz(tsv: Path, out: Path) -> None:
    with open(tsv, "rb") as source, gzip.open(out, "wb", compresslevel=6) as target:
        while chunk := source.read(16 << 20):
            target.write(chunk)


def generate_parquet(sample: Path, rows: int, out: Path) -> None:
    """The official export's columns, repeated with unique codes, in row groups as OFF writes them."""
    import polars as pl

    base = pl.read_parquet(sample)
    writer_parts = []
    for start in range(0, rows, len(base)):
        part = base.head(rows - start).with_columns(
            (pl.lit(f"8{start:06d}") + pl.int_range(pl.len()).cast(pl.String).str.zfill(6)).alias("code"))
        writer_parts.append(part)
    pl.concat(writer_parts).write_parquet(out, row_group_size=50_000)


def build(export: Path, out: Path) -> tuple[int, float, float]:
    """(rows read, wall seconds, peak RSS MB) of `foodcls data build` in a fresh process."""
    start = time.perf_counter()
    process = psutil.Popen([sys.executable, "-m", "foodcls", "data", "build", str(export), "--out", str(out), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(stderr)
    return json.loads(stdout)["rows_read"], wall, peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="tsv,gz,parquet")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "foodcls-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    exports = {
        "tsv": args.workdir / f"off-{args.rows}.tsv",
        "gz": args.workdir / f"off-{args.rows}.tsv.gz",
        "parquet": args.workdir / f"off-{args.rows}.parquet",
    }
    formats = args.formats.split(",")
    if ("tsv" in formats or "gz" in formats) and not exports["tsv"].exists():
        print(f"generating {exports['tsv'].name} ...", flush=True)
        generate_tsv(SAMPLES / "off-2024-first1000.tsv", args.rows, exports["tsv"])
    if "gz" in formats and not exports["gz"].exists():
        print(f"generating {exports['gz'].name} ...", flush=True)
        generate_gz(exports["tsv"], exports["gz"])
    if "parquet" in formats and not exports["parquet"].exists():
        print(f"generating {exports['parquet'].name} ...", flush=True)
        generate_parquet(SAMPLES / "off-2026-products.parquet", args.rows, exports["parquet"])
    print(f"{'format':<10} {'file':>10} {'rows':>11} {'wall s':>8} {'rows/s':>10} {'peak RSS':>9}")
    for name in formats:
        rows, wall, peak = build(exports[name], args.workdir / f"built-{name}")
        size = exports[name].stat().st_size / 1e9
        print(f"{name:<10} {size:8.2f} GB {rows:11,} {wall:8.2f} {rows / wall:10,.0f} {peak:7,.0f} MB", flush=True)


if __name__ == "__main__":
    main()
