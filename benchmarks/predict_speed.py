"""Throughput and peak memory of `foodcls predict --input EXPORT` (a model over an Open Food Facts export), as
TSV and Parquet, at each size.

The exports are made as benchmarks/scale.py makes them (the real samples in ../shared repeated with a unique
barcode and name per copy: about 2.5 KB a TSV row, OFF's Parquet schema), cached in --workdir. The model is
--checkpoint, or one trained here in a few seconds on data/demo-rich (nine nutrients: every nutrient column is
read and parsed; the network's size is not what costs). Each predict runs in a fresh process writing its CSV
into --workdir; prints rows/s (process wall time, start-up included) and peak RSS (sampled every 20 ms),
side by side, and the same for `data build` of the same export when --build is given.

    python benchmarks/predict_speed.py [--rows 1000000] [--max-rows 4000000] [--formats tsv,parquet]
                                       [--checkpoint PATH] [--workdir DIR] [--build] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_speed import SAMPLES, generate_tsv  # noqa: E402 - sibling scripts, not a package
from scale import generate_parquet, measure  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def model(workdir: Path) -> Path:
    """A nine-nutrient checkpoint trained in seconds (the benchmark measures reading and writing, not the network)."""
    runs = workdir / "runs"
    if not (runs.is_dir() and any(runs.glob("*/checkpoints/best.safetensors"))):
        measure([sys.executable, "-m", "foodcls", "train", "--config", str(REPO / "configs" / "mlp.yaml"), "--runs-root", str(runs),
                 "--set", f"data.train={REPO / 'data' / 'demo-rich' / 'train.csv'}", "--set", f"data.test={REPO / 'data' / 'demo-rich' / 'test.csv'}",
                 "--set", "data.features=[protein,carbs,fat,additives,sugars,saturated_fat,salt,fiber,energy]",
                 "--set", "train.epochs=5", "--set", "data.val_fraction=0.1", "--set", "train.suggest_precision=0.9"])
    return sorted(runs.glob("*/checkpoints/best.safetensors"))[-1]


def export(fmt: str, rows: int, workdir: Path) -> Path:
    path = workdir / f"off-{rows}.{'tsv' if fmt == 'tsv' else 'parquet'}"
    if not path.exists():
        if fmt == "tsv":
            generate_tsv(SAMPLES / "off-2024-first1000.tsv", rows, path)
        else:
            generate_parquet(rows, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-rows", type=int, default=None, help="also this size (e.g. 4000000: peak memory)")
    parser.add_argument("--formats", default="tsv,parquet")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "foodcls-predict-speed")
    parser.add_argument("--build", action="store_true", help="also time `data build` of each export, side by side")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or model(args.workdir)
    results = []
    sizes = [args.rows] + ([args.max_rows] if args.max_rows and args.max_rows != args.rows else [])
    print(f"{'format':<8} {'rows':>9} {'command':<8} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}")
    for rows in sizes:
        for fmt in args.formats.split(","):
            path = export(fmt, rows, args.workdir)
            out = args.workdir / f"predictions-{rows}-{fmt}.csv"
            seconds, peak, stdout = measure([sys.executable, "-m", "foodcls", "predict", "--checkpoint", str(checkpoint),
                                             "--input", str(path), "--output", str(out), "--json"])
            summary = json.loads(stdout)
            assert summary["rows"] == rows, (summary["rows"], rows)
            entry = {"format": fmt, "rows": rows, "command": "predict", "seconds": round(seconds, 2),
                     "rows_per_second": round(rows / seconds), "peak_mb": round(peak), "inner_rows_per_second": summary["rows_per_second"]}
            results.append(entry)
            print(f"{fmt:<8} {rows:>9,} {'predict':<8} {seconds:>8.1f} {rows / seconds:>10,.0f} {peak:>8.0f}", flush=True)
            out.unlink()
            if args.build:
                seconds, peak, _ = measure([sys.executable, "-m", "foodcls", "data", "build", str(path), "--other",
                                            "--out", str(args.workdir / "build"), "--force"])
                results.append({"format": fmt, "rows": rows, "command": "build", "seconds": round(seconds, 2),
                                "rows_per_second": round(rows / seconds), "peak_mb": round(peak)})
                print(f"{fmt:<8} {rows:>9,} {'build':<8} {seconds:>8.1f} {rows / seconds:>10,.0f} {peak:>8.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
