"""Throughput and peak memory of `foodcls data build` on a large OFF TSV export.

Generates (once, cached) a ROWS-row tab-separated export by repeating the rows of a real sample with
unique barcodes, then runs `foodcls data build` on it in a fresh process and prints rows/s (process
wall time, start-up included) and the child's peak RSS.

    python benchmarks/build_speed.py [--rows 1000000] [--sample PATH] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLE = Path(os.environ.get("FOODCLS_OFF_SAMPLES", REPO.parent / "shared" / "data" / "off-exports")) / "off-2024-first1000.tsv"


def generate(sample: Path, rows: int, out: Path) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "foodcls-bench")
    args = parser.parse_args()
    if not args.sample.is_file():
        sys.exit(f"sample not found: {args.sample} (set FOODCLS_OFF_SAMPLES)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    export = args.workdir / f"off-{args.rows}.tsv"
    if not export.exists():
        print(f"generating {export} from {args.sample.name} ...", flush=True)
        generate(args.sample, args.rows, export)
    size_gb = export.stat().st_size / 1e9

    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "foodcls", "data", "build", str(export), "--out", str(args.workdir / "built"), "--json"],
        capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stderr)
    card = json.loads(result.stdout)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"input: {card['rows_read']:,} rows, {size_gb:.2f} GB, {card['rows_kept']:,} kept")
    print(f"wall: {wall:.2f} s (process, start-up included)")
    print(f"throughput: {card['rows_read'] / wall:,.0f} rows/s")
    print(f"peak RSS: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
