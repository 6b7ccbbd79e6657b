"""Wall time of numpy predict (no torch) on a batch of named products: hashing the names' n-grams, their
bucket vectors, the network; side by side with the same batch without names, in one process.

The names and nutrients are real products' (the shared exports' built rows, repeated to --rows); the model is
--checkpoint (a model that reads names, e.g. configs/off_names.yaml's run), or one trained here in seconds on
data/off (`foodcls data build ../shared/data/off-exports/off-* --other --out data/off` first).

    python benchmarks/name_speed.py [--rows 100000] [--repeat 5] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def model(workdir: Path) -> Path:
    runs = workdir / "runs"
    if not any(runs.glob("*/checkpoints/best.safetensors")):
        subprocess.run([sys.executable, "-m", "foodcls", "train", "--config", str(REPO / "configs" / "off_open.yaml"), "--runs-root",
                        str(runs), "--set", "data.train=data/off/train.csv", "--set", "train.epochs=3", "--set",
                        "data.features=[protein,carbs,fat,additives,sugars,saturated_fat,salt,fiber,energy,name]"],
                       check=True, cwd=REPO, capture_output=True)
    return sorted(runs.glob("*/checkpoints/best.safetensors"))[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "foodcls-name-speed")
    args = parser.parse_args()
    from foodcls.data import read_labelled_csv
    from foodcls.inference.predict import load_predictor

    predictor = load_predictor(args.checkpoint or model(args.workdir))
    classes = (*predictor.classes,)
    data = read_labelled_csv(REPO / "data" / "off" / "train.csv", predictor.features, classes=classes)
    repeat = -(-args.rows // len(data))
    features = np.tile(data.features, (repeat, 1))[: args.rows]
    names = (list(data.columns["name"]) * repeat)[: args.rows]
    timings = {}
    for label, batch_names in (("with names", names), ("without names", None)):
        seconds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            predictor.probabilities(features, batch_names)
            seconds.append(time.perf_counter() - start)
        timings[label] = statistics.median(seconds)
        print(f"{args.rows:,} products {label:<14} {timings[label]:6.3f} s (median of {args.repeat}); "
              f"{args.rows / timings[label]:,.0f} products/s")
    print(f"'torch' imported: {'torch' in sys.modules}")


if __name__ == "__main__":
    main()
