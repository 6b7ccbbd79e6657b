"""How the cost grows with the rows: `foodcls data build` of synthetic exports of 10k, 100k and 1M rows
(4M with --max-rows 4000000) in every format, then `foodcls train` for 3 epochs on what the TSV build
kept; and training on synthetic labelled sets (`data synth`) of the same sizes, with the time to load
and check the training file apart. Seconds (process wall time, start-up included) and peak RSS (the
process and its children, sampled every 20 ms) at each size: a table on stdout, --json and a log-log
plot (--plot, docs/scale.png in the README).

The exports repeat the real samples in ../shared/data/off-exports with a unique barcode and name per
copy, so de-duplication keeps the copies: TSV, .tsv.gz, .tsv.zst and a quoted comma CSV (a spreadsheet
re-save) from off-2024-first1000.tsv (the first 1,000 products of OFF's CSV export, every column: about
2.5 KB a row, as the full export), Parquet from off-2026-products.parquet (OFF's Parquet schema) and
JSONL from off-2026-raw100.jsonl, slimmed to the fields data build reads (a full JSONL product is ~20 KB:
4M of them would not fit this machine's disk). Builds use --other (the open-set recipe's data). Each
export is deleted once built, so the 4M size needs ~12 GB of free disk at a time in --workdir.

    python benchmarks/scale.py [--max-rows 1000000] [--formats tsv,gz,zst,csv,jsonl,parquet] [--workdir DIR]
                               [--plot docs/scale.png] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_speed import SAMPLES, generate_tsv  # noqa: E402 - a sibling script, not a package

REPO = Path(__file__).resolve().parent.parent
SIZES = (10_000, 100_000, 1_000_000, 4_000_000)
FORMATS = ("tsv", "gz", "zst", "csv", "jsonl", "parquet")
JSONL_FIELDS = ("code", "product_name", "brands", "categories_tags", "nutriments", "nutrition", "schema_version",
                "additives_n", "additives_tags")
NUTRIENTS = "[protein, carbs, fat, additives, sugars, saturated_fat, salt, fiber, energy]"


def measure(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of the process and its children, stdout) of a command; exits on failure."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr}")
    return time.perf_counter() - start, peak / 1e6, stdout


def generate_gz(tsv: Path, out: Path) -> None:
    from isal import igzip

    with open(tsv, "rb") as source, igzip.open(out, "wb", compresslevel=2) as target:
        shutil.copyfileobj(source, target, 16 << 20)


def generate_zst(tsv: Path, out: Path) -> None:
    import zstandard

    with open(tsv, "rb") as source, open(out, "wb") as target:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(source, target)


def generate_csv(tsv: Path, out: Path) -> None:
    """The TSV re-saved as a spreadsheet would: commas, cells quoted where they hold one."""
    with open(tsv, encoding="utf-8", newline="") as source, open(out, "w", encoding="utf-8", newline="") as target:
        writer = csv.writer(target)
        for line in source:
            writer.writerow(line.rstrip("\n").split("\t"))


def generate_jsonl(rows: int, out: Path) -> None:
    products = [json.loads(line) for line in (SAMPLES / "off-2026-raw100.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    slim = [{k: p[k] for k in JSONL_FIELDS if k in p} for p in products]
    with open(out, "w", encoding="utf-8") as handle:
        for start in range(0, rows, len(slim)):
            lines = []
            for i, product in enumerate(slim[: rows - start]):
                copy = dict(product, code=f"7{start + i:012d}", product_name=f"{product.get('product_name') or ''} #{start + i}")
                lines.append(json.dumps(copy, separators=(",", ":")))
            handle.write("\n".join(lines) + "\n")


def generate_parquet(rows: int, out: Path) -> None:
    """OFF's Parquet schema, repeated with unique codes and names, in row groups as OFF writes them."""
    import polars as pl

    base = pl.read_parquet(SAMPLES / "off-2026-products.parquet")
    parts = []
    for start in range(0, rows, len(base)):
        suffix = f" #{start}"
        part = base.head(rows - start).with_columns(
            (pl.lit(f"8{start:06d}") + pl.int_range(pl.len()).cast(pl.String).str.zfill(6)).alias("code"),
            pl.col("product_name").list.eval(pl.struct(
                pl.element().struct.field("lang"), (pl.element().struct.field("text") + suffix).alias("text"))),
        )
        parts.append(part)
    pl.concat(parts).write_parquet(out, row_group_size=50_000)


def exports_for(size: int, formats: list[str], workdir: Path):
    """(format, path) of each export of this size, generated one at a time and deleted after use."""
    tsv = workdir / f"off-{size}.tsv"
    if any(f in formats for f in ("tsv", "gz", "zst", "csv")):
        generate_tsv(SAMPLES / "off-2024-first1000.tsv", size, tsv)
    makers = {"gz": (generate_gz, ".tsv.gz"), "zst": (generate_zst, ".tsv.zst"), "csv": (generate_csv, ".csv")}
    for name in formats:
        if name == "tsv":
            yield name, tsv
            continue
        if name in makers:
            make, suffix = makers[name]
            path = workdir / f"off-{size}{suffix}"
            make(tsv, path)
        else:
            path = workdir / f"off-{size}.{name}"
            (generate_jsonl if name == "jsonl" else generate_parquet)(size, path)
        yield name, path
        path.unlink()
    tsv.unlink(missing_ok=True)


def built_config(path: Path, data_dir: Path) -> Path:
    """The open-set recipe's data settings and model (configs/off_open.yaml) on a build's files, 3 epochs."""
    path.write_text(
        f"data:\n  train: {data_dir / 'train.csv'}\n  val: {data_dir / 'val.csv'}\n  test: {data_dir / 'test.csv'}\n"
        f"  classes: [beverages, meats, snacks, desserts, other]\n  features: {NUTRIENTS}\n  missing: median\n"
        "  scaling: standard\nmodel:\n  hidden: [64, 64]\n  activation: relu\n"
        "train:\n  optimizer: adam\n  lr: 0.003\n  batch_size: 256\n  epochs: 3\n  seed: 0\n",
        encoding="utf-8",
    )
    return path


def synth_config(path: Path, data_dir: Path) -> Path:
    """configs/mlp.yaml (the demo recipe) on a synthetic set, 3 epochs."""
    text = (REPO / "configs" / "mlp.yaml").read_text(encoding="utf-8")
    text = text.replace("data/demo/train.csv", str(data_dir / "train.csv")).replace("data/demo/test.csv", str(data_dir / "test.csv"))
    path.write_text(text.replace("epochs: 1000", "epochs: 3"), encoding="utf-8")
    return path


def load_seconds(config: Path) -> float:
    """Seconds to read and check a config's data files (train, val, test), in a fresh process."""
    code = ("import time; from foodcls.config import load_config; from foodcls.data import load_splits; "
            f"c = load_config({str(config)!r}); t = time.perf_counter(); load_splits(c); print(time.perf_counter() - t)")
    return float(measure([sys.executable, "-c", code])[2])


def train(config: Path, runs_root: Path) -> tuple[float, float, float]:
    """(load seconds, train wall seconds, train peak RSS MB) of `foodcls train` for the config."""
    wall, peak, _ = measure([sys.executable, "-m", "foodcls", "train", "--config", str(config), "--runs-root", str(runs_root)])
    shutil.rmtree(runs_root, ignore_errors=True)
    return load_seconds(config), wall, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-rows", type=int, default=1_000_000, help="largest size (4000000 adds the 4M size)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "foodcls-scale")
    parser.add_argument("--plot", type=Path, default=None, help="write the log-log plot here (e.g. docs/scale.png)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        sys.exit(f"--formats: unknown {', '.join(unknown)} (known: {', '.join(FORMATS)})")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {"build": [], "train_built": [], "train_synth": []}
    print(f"{'step':<14} {'rows':>10} {'file MB':>8} {'wall s':>8} {'rows/s':>10} {'peak RSS MB':>12} {'kept':>10}", flush=True)
    for size in [s for s in SIZES if s <= args.max_rows]:
        built = args.workdir / f"built-{size}"
        for name, export in exports_for(size, formats, args.workdir):
            out = args.workdir / f"built-{size}-{name}"
            wall, peak, stdout = measure([sys.executable, "-m", "foodcls", "data", "build", str(export), "--out", str(out),
                                          "--other", "--force", "--json"])
            card = json.loads(stdout)
            row = {"format": name, "rows": card["rows_read"], "file_mb": export.stat().st_size / 1e6, "seconds": wall,
                   "peak_rss_mb": peak, "kept": card["rows_kept"]}
            results["build"].append(row)
            print(f"build {name:<8} {row['rows']:>10,} {row['file_mb']:>8,.0f} {wall:>8.2f} {row['rows'] / wall:>10,.0f} "
                  f"{peak:>12,.0f} {row['kept']:>10,}", flush=True)
            if not built.exists():
                out.rename(built)
            else:
                shutil.rmtree(out)
        if built.exists():
            config = built_config(args.workdir / "built.yaml", built)
            load, wall, peak = train(config, args.workdir / "runs")
            rows = sum(1 for _ in open(built / "train.csv", encoding="utf-8")) - 1
            results["train_built"].append({"rows": rows, "export_rows": size, "load_seconds": load, "seconds": wall, "peak_rss_mb": peak})
            print(f"train built    {rows:>10,} {'':>8} {wall:>8.2f} {rows * 3 / wall:>10,.0f} {peak:>12,.0f}   load {load:.2f} s", flush=True)
            shutil.rmtree(built)
        synth = args.workdir / f"synth-{size}"
        measure([sys.executable, "-m", "foodcls", "data", "synth", "--out", str(synth), "--n-train", str(size), "--n-test", "2000"])
        config = synth_config(args.workdir / "synth.yaml", synth)
        load, wall, peak = train(config, args.workdir / "runs")
        results["train_synth"].append({"rows": size, "load_seconds": load, "seconds": wall, "peak_rss_mb": peak})
        print(f"train synth    {size:>10,} {'':>8} {wall:>8.2f} {size * 3 / wall:>10,.0f} {peak:>12,.0f}   load {load:.2f} s", flush=True)
        shutil.rmtree(synth)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(results, args.plot)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {f"build {f}": [r for r in results["build"] if r["format"] == f] for f in FORMATS}
    series["train 3 epochs (built, by export rows)"] = [dict(r, rows=r["export_rows"]) for r in results["train_built"]]
    series["train 3 epochs (synth)"] = results["train_synth"]
    for label, rows in series.items():
        if rows:
            style = "--" if label.startswith("train") else "-"
            time_axis.plot([r["rows"] for r in rows], [r["seconds"] for r in rows], style, marker="o", label=label)
            memory_axis.plot([r["rows"] for r in rows], [r["peak_rss_mb"] for r in rows], style, marker="o", label=label)
    for axis, title in ((time_axis, "seconds (wall, start-up included)"), (memory_axis, "peak RSS, MB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("rows")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    memory_axis.axhline(1000, color="grey", linewidth=0.8)
    time_axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
