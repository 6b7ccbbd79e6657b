"""Wall time of the quick commands: `foodcls predict` (one product) and `foodcls --help`, against `import torch`.

Runs each command N times as a fresh process through the installed console script (next to this
Python) and prints the median. Needs a trained run: `foodcls train --config configs/mlp.yaml` first.

    python benchmarks/startup.py [--repeat 7] [--named-checkpoint RUN_OR_CHECKPOINT]

--named-checkpoint adds `foodcls predict --name …` of a model that reads names (configs/off_names.yaml's run):
its checkpoint holds the name table (32,768 × 16 floats per network), read at every start.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_wall(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--named-checkpoint", help="a name model's run or checkpoint: time its predict too")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("foodcls")
    foodcls = [str(script)] if script.exists() else [shutil.which("foodcls") or "foodcls"]
    commands = {
        "foodcls predict (one product)": [*foodcls, "predict", "--protein", "20", "--carbs", "1", "--fat", "12", "--additives", "2"],
        "foodcls --help": [*foodcls, "--help"],
        **({"foodcls predict --name (name model)": [*foodcls, "predict", "--checkpoint", args.named_checkpoint, "--protein", "0", "--carbs", "84",
                                                    "--fat", "0", "--additives", "1", "--sugars", "84", "--saturated-fat", "0", "--salt", "0",
                                                    "--fiber", "0", "--energy", "336", "--name", "Sirop de fraise"]}
           if args.named_checkpoint else {}),
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    results = {name: median_wall(command, args.repeat) for name, command in commands.items()}
    for name, seconds in results.items():
        print(f"{name:<32} {seconds:6.3f} s (median of {args.repeat})")
    torch_time = results["python -c 'import torch'"]
    print(f"predict is {torch_time / results['foodcls predict (one product)']:.1f}x faster than importing torch")


if __name__ == "__main__":
    main()
