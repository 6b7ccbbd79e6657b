"""The honest check of the real-data recipes: train each on the shared exports less two locked away, and
score the two locked exports (products of the four classes, and products in none of them) once.

    python scripts/locked_sources.py [--shared ../shared/data/off-exports] [--workdir /tmp/foodcls-locked]
                                     [--locked off-search-2018-mixed.tsv off-search-2019-snacks.tsv]
                                     [--recipes off off_rich off_open] [--cv] [--seeds N] [--set KEY=VALUE ...]

In the work directory: data/off (`data build --other` of the design exports), locked/ (the locked exports'
build, less any barcode the design exports hold, split into in-class.csv and other.csv), runs/. With --cv
it first prints each recipe's leave-one-source-out figures over the design exports (what recipes are
chosen by). Prints one JSON object per recipe and seed (train.seed 0…N-1): the locked figures; then, per recipe,
the headline figures' mean and sd over the seeds. Every run of it is a look at the locked exports: say so
where its figures are reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LOCKED = ("off-search-2018-mixed.tsv", "off-search-2019-snacks.tsv")


def split_locked(locked_dir: Path, design_dir: Path) -> tuple[Path, Path]:
    """locked/in-class.csv and locked/other.csv: the locked build's products, less those whose barcode the
    design build holds too (the same product in two exports would leak)."""
    def rows(directory: Path) -> tuple[list[str], list[list[str]]]:
        header, out = [], []
        for split in ("train", "val", "test"):
            with open(directory / f"{split}.csv", newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                header = next(reader)
                out += list(reader)
        return header, out

    header, design = rows(design_dir)
    code = header.index("code")
    seen = {r[code] for r in design if r[code]}
    header, locked = rows(locked_dir)
    kept = [r for r in locked if not (r[code] and r[code] in seen)]
    paths = (locked_dir.parent / "in-class.csv", locked_dir.parent / "other.csv")
    for path, wanted in zip(paths, (lambda r: r[0] != "other", lambda r: r[0] == "other")):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(r for r in kept if wanted(r))
    print(json.dumps({"locked_products": len(locked), "also_in_design": len(locked) - len(kept)}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data" / "off-exports")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/foodcls-locked"))
    parser.add_argument("--locked", nargs=2, default=list(LOCKED))
    parser.add_argument("--recipes", nargs="+", default=["off", "off_rich", "off_open"])
    parser.add_argument("--cv", action="store_true", help="first cross-validate each recipe by source on the design exports")
    parser.add_argument("--seeds", type=int, default=1, help="train each recipe with train.seed 0…N-1")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every recipe, as `foodcls train --set` (e.g. model.ensemble=3)")
    args = parser.parse_args()
    from foodcls.config import load_config
    from foodcls.experiments.cv import run_cv
    from foodcls.inference.evaluate import evaluate_checkpoint
    from foodcls.offdata.build import build_dataset
    from foodcls.training.fit import train

    shared, work = args.shared.resolve(), args.workdir.resolve()
    exports = sorted(shared.glob("off-*"))
    design = [p for p in exports if p.name not in args.locked]
    locked = [shared / name for name in args.locked]
    work.mkdir(parents=True, exist_ok=True)
    build_dataset(design, work / "data" / "off", other=True, force=True)
    build_dataset(locked, work / "locked" / "off", other=True, force=True)
    if not (work / "data" / "synth-off").exists():
        (work / "data" / "synth-off").symlink_to(REPO / "data" / "synth-off")
    in_class, other = split_locked(work / "locked" / "off", work / "data" / "off")
    os.chdir(work)  # the recipes name data/off and data/synth-off relative to where they run
    for recipe in args.recipes:
        config_path = REPO / "configs" / f"{recipe}.yaml"
        if args.cv:
            report = run_cv(config_path, group_by="source", overrides=args.overrides, runs_root=work / "runs", workers=2)
            print(json.dumps({"recipe": recipe, "cv_pooled": report["pooled"]}))
        seen = []
        for seed in range(args.seeds):
            config = load_config(config_path, [*args.overrides, f"train.seed={seed}"])
            result = train(config, runs_root=work / "runs", name=f"{recipe}-seed{seed}")
            figures = evaluate_checkpoint(result.best_checkpoint, [in_class], other)
            keep = ("n", "accuracy", "balanced_accuracy", "per_class", "calibration", "ece", "nll", "brier", "conformal",
                    "risk_coverage", "open_set", "suggestions", "warnings")
            print(json.dumps({"recipe": recipe, "overrides": args.overrides, "seed": seed, "run_dir": str(result.run_dir), **{k: figures.get(k) for k in keep}}))
            seen.append(headline(figures))
        print(json.dumps({"recipe": recipe, "overrides": args.overrides, "seeds": args.seeds, "mean_sd": {
            key: [round(float(np.mean(v)), 4), round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else 0.0]
            for key in seen[0] if None not in (v := [s[key] for s in seen])}}))


def headline(figures: dict) -> dict:
    """The figures a recipe is judged by on the locked exports."""
    open_set, conformal, suggestions = figures.get("open_set") or {}, figures.get("conformal") or {}, figures.get("suggestions") or {}
    return {"accuracy": figures["accuracy"], "balanced_accuracy": figures["balanced_accuracy"], "ece": figures["ece"],
            "set_coverage": conformal.get("empirical_coverage"), "set_size": conformal.get("mean_size"),
            "auroc": open_set.get("auroc"), "suggest_precision": suggestions.get("precision"),
            "suggest_recall": suggestions.get("recall")}


if __name__ == "__main__":
    main()
