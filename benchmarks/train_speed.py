"""Time one training epoch: foodcls's trainer against the tutorial's per-sample Dataset + DataLoader loop.

Same model (4-32-32-4 ReLU), same data (data/demo/train.csv, 8,000 rows), batch 256, SGD lr 0.01, one
process. Prints seconds per epoch for each and the ratio; also times foodcls's epoch at 1 and 2 torch
threads (how TORCH_THREADS in foodcls/train.py was chosen).

    python benchmarks/train_speed.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from foodcls.config import ModelConfig
from foodcls.data import fit_scale, read_labelled_csv
from foodcls.model import build_model
from foodcls.train import TORCH_THREADS, _train_epoch, epoch_order


class ProductDataset(Dataset):
    """The tutorial's dataset: one product per __getitem__."""

    def __init__(self, features, labels):
        self.features, self.labels = features, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.tensor(self.features[i], dtype=torch.float32), torch.tensor(self.labels[i], dtype=torch.long)


def tutorial_epoch(model, optimizer, loader) -> float:
    loss_fn = nn.CrossEntropyLoss()
    total = 0.0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def timed_interleaved(fns: dict[str, object], epochs: int) -> dict[str, float]:
    """Median seconds per epoch of each function, run in turns so that a shared machine's drift in
    speed hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(epochs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data", default="data/demo/train.csv")
    args = parser.parse_args()

    data = read_labelled_csv(args.data)
    scale = fit_scale(data.features)
    features = data.features / scale
    x, y = torch.from_numpy(features), torch.from_numpy(data.labels)

    def fresh():
        torch.manual_seed(0)
        model = build_model(ModelConfig(), 4, 4)
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    def foodcls_epoch(threads: int):
        model, optimizer = fresh()
        epoch = iter(range(1, 10**6))

        def run() -> None:
            torch.set_num_threads(threads)
            _train_epoch(model, "relu", optimizer, x, y, epoch_order(0, next(epoch), len(y)), 256, None)

        return run

    model, optimizer = fresh()
    loader = DataLoader(ProductDataset(features, data.labels), batch_size=256, shuffle=True)
    default_threads = torch.get_num_threads()

    def tutorial() -> None:
        torch.set_num_threads(default_threads)  # the tutorial runs with torch's defaults
        tutorial_epoch(model, optimizer, loader)

    results = timed_interleaved(
        {"foodcls, 1 thread": foodcls_epoch(1), "foodcls, 2 threads": foodcls_epoch(2), "tutorial DataLoader loop": tutorial},
        args.epochs,
    )
    tutorial_time = results.pop("tutorial DataLoader loop")
    foodcls_time = results[f"foodcls, {TORCH_THREADS} thread" + ("s" if TORCH_THREADS > 1 else "")]
    print(f"torch {torch.__version__}, {len(y)} rows, batch 256, median of {args.epochs} epochs each, interleaved")
    for name, seconds in results.items():
        print(f"{name:<24} {seconds * 1000:8.2f} ms/epoch")
    print(f"{'tutorial DataLoader loop':<24} {tutorial_time * 1000:8.2f} ms/epoch")
    print(f"speed-up: {tutorial_time / foodcls_time:.1f}x (tutorial / foodcls at TORCH_THREADS={TORCH_THREADS}, as it trains)")


if __name__ == "__main__":
    main()
