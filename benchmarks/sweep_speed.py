"""Wall time of a 12-run sweep (3 learning rates × 4 seeds, 300 epochs, the demo set): foodcls's sweep,
whose runs of one shape train in lockstep stacks (one per worker), against the way sweeps ran before —
a pool of 2 worker processes, each run trained alone (a stack of one) as its own task. Same runs, same
files in every run directory; also checks the final weights agree between the two.

    python benchmarks/sweep_speed.py [--epochs 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LRS = (0.1, 0.03, 0.01)
SEEDS = 4


def solo(overrides: list[str], root: str) -> str:
    """One run alone in a worker process, as the process-pool sweep trained each."""
    from foodcls.config import load_config
    from foodcls.training.fit import train

    # One evaluation thread, as each worker of the process-pool sweep trained.
    return str(train(load_config(REPO / "configs" / "mlp.yaml", overrides), runs_root=root, name="solo", eval_threads=1).last_checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from foodcls.inference.checkpoint import load_checkpoint
    from foodcls.experiments.sweep import run_sweep

    root = Path(tempfile.mkdtemp(prefix="foodcls-sweep-bench-"))
    runs = [[f"train.lr={lr}", f"train.seed={seed}", f"train.epochs={args.epochs}"] for lr in LRS for seed in range(SEEDS)]

    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        solo_checkpoints = list(pool.map(solo, runs, [str(root / "pool")] * len(runs)))
    pool_seconds = time.perf_counter() - start

    start = time.perf_counter()
    report = run_sweep(REPO / "configs" / "mlp.yaml", [f"train.lr={','.join(map(str, LRS))}"], seeds=SEEDS,
                       overrides=[f"train.epochs={args.epochs}"], workers=args.workers, runs_root=root / "lockstep")
    lockstep_seconds = time.perf_counter() - start

    lockstep = {(r["params"]["train.lr"], r["seed"]): r["run_dir"] for e in report["results"] for r in e["runs"]}
    worst = 0.0
    for (lr_override, seed_override, _), checkpoint in zip(runs, solo_checkpoints):
        key = (float(lr_override.split("=")[1]), int(seed_override.split("=")[1]))
        a = load_checkpoint(checkpoint).arrays
        b = load_checkpoint(Path(lockstep[key]) / "checkpoints" / "last.safetensors").arrays
        worst = max(worst, max(float(np.abs(a[k] - b[k]).max()) for k in a if k.startswith("net.")))
    print(f"12 runs (lr {', '.join(map(str, LRS))} × {SEEDS} seeds), {args.epochs} epochs each, {args.workers} workers")
    print(f"process pool, one run per task: {pool_seconds:7.2f} s")
    print(f"foodcls sweep, lockstep stacks: {lockstep_seconds:7.2f} s   ({pool_seconds / lockstep_seconds:.1f}x faster)")
    print(f"largest difference of a final weight between the two: {worst:.2e}")
    if worst != 0.0:  # the lockstep promise is bit-identity with solo runs: a difference is a bug, not noise
        raise SystemExit(f"lockstep runs differ from solo runs by up to {worst:.2e}: they must be bit-identical")


if __name__ == "__main__":
    main()
