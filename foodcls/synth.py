"""The synthetic demo set: each class a mixture of product archetypes measured on real Open Food Facts data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foodcls.data import LabelledData, write_labelled_csv
from foodcls.features import SEED_FEATURES
from foodcls.labels import CLASSES

DEFAULT_SEED = 20261128
Z_90 = 1.2816  # the 90th percentile of a standard normal: a 10th–90th range spans 2 × Z_90 sigmas


@dataclass(frozen=True)
class Archetype:
    name: str
    share: float
    protein: tuple[float, float]  # roughly the 10th–90th percentile, g per 100 g
    carbs: tuple[float, float]
    fat: tuple[float, float]
    mean_additives: float


ARCHETYPES: dict[str, tuple[Archetype, ...]] = {
    "beverages": (
        Archetype("water, tea, zero/light drinks", 0.45, (0, 0.5), (0, 4), (0, 0.3), 1.8),
        Archetype("sodas, juices, nectars", 0.30, (0, 1), (8, 16), (0, 0.5), 1.3),
        Archetype("milk and plant-based drinks", 0.20, (1, 3.5), (3, 12), (1, 3.5), 1.0),
        Archetype("powders and syrups", 0.05, (1, 5), (60, 85), (0, 3), 1.0),
    ),
    "meats": (
        Archetype("ham, poultry, lean cooked meats", 0.48, (13, 22), (0.5, 3), (2, 9), 1.6),
        Archetype("sausages, salami, bacon", 0.26, (12, 22), (0.5, 3), (17, 35), 1.8),
        Archetype("dried and cured lean meats", 0.18, (25, 40), (0, 3), (3, 12), 1.2),
        Archetype("breaded and prepared meat products", 0.08, (9, 15), (12, 25), (8, 15), 1.1),
    ),
    "snacks": (
        Archetype("biscuits, cakes, bars", 0.47, (5, 9), (50, 65), (15, 28), 1.8),
        Archetype("sweets and candy", 0.28, (0, 6), (75, 95), (0, 5), 2.4),
        Archetype("crisps, chips, salted nuts", 0.20, (6, 12), (30, 50), (30, 45), 0.3),
        Archetype("protein and other low-carb snacks", 0.05, (10, 30), (10, 25), (3, 20), 2.5),
    ),
    "desserts": (
        Archetype("yogurts and dairy desserts", 0.59, (3, 6), (10, 19), (1, 5), 1.4),
        Archetype("ice cream and cream desserts", 0.15, (3, 5), (20, 32), (12, 22), 5.4),
        Archetype("cakes and pastries", 0.21, (4, 7), (45, 62), (10, 20), 4.7),
        Archetype("jellies and sugar-heavy desserts", 0.05, (0, 5), (70, 90), (0, 10), 2.5),
    ),
}

# Share of real products with no additive at all, per class.
NO_ADDITIVE_SHARE: dict[str, float] = {"beverages": 0.41, "meats": 0.35, "snacks": 0.48, "desserts": 0.26}


def _nutrient(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    """Normal with the given 10th–90th percentiles, clipped at 0 (real labels pile up at 0 g)."""
    low, high = bounds
    return np.clip(rng.normal((low + high) / 2, (high - low) / (2 * Z_90), n), 0, 100)


def _additives(rng: np.random.Generator, mean: float, no_additive_share: float, n: int) -> np.ndarray:
    """Zero-inflated count: none with the class's share, else 1 + Poisson, matching the archetype's mean."""
    zero_share = no_additive_share if mean >= 1 - no_additive_share else 1 - mean
    extra = max(mean / (1 - zero_share) - 1, 0.0)
    counts = 1 + rng.poisson(extra, n)
    return np.where(rng.random(n) < zero_share, 0, counts)


def sample_class(rng: np.random.Generator, class_name: str, n: int) -> np.ndarray:
    """n products (n, 4) of one class: protein, carbs, fat rounded to 0.1 g, additives a whole count."""
    archetypes = ARCHETYPES[class_name]
    shares = np.array([a.share for a in archetypes])
    counts = rng.multinomial(n, shares / shares.sum())
    parts = []
    for archetype, count in zip(archetypes, counts):
        nutrients = np.stack([_nutrient(rng, b, count) for b in (archetype.protein, archetype.carbs, archetype.fat)], axis=1)
        total = nutrients.sum(axis=1, keepdims=True)
        nutrients = np.where(total > 100, nutrients * (100 / np.maximum(total, 1e-9)), nutrients)
        nutrients = np.floor(nutrients * 10) / 10  # round down so the sum stays ≤ 100
        additives = _additives(rng, archetype.mean_additives, NO_ADDITIVE_SHARE[class_name], count)
        parts.append(np.column_stack([nutrients, additives]))
    return np.concatenate(parts).astype(np.float32)


def generate(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A balanced, shuffled set of n products (n must split evenly enough: class sizes differ by ≤ 1)."""
    sizes = [n // len(CLASSES) + (1 if i < n % len(CLASSES) else 0) for i in range(len(CLASSES))]
    features = np.concatenate([sample_class(rng, name, size) for name, size in zip(CLASSES, sizes)])
    labels = np.repeat(np.arange(len(CLASSES)), sizes)
    order = rng.permutation(n)
    return features[order], labels[order]


def write_demo_set(out_dir: str | Path, n_train: int = 8000, n_test: int = 2000, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write out_dir/train.csv and out_dir/test.csv from independent streams of one seed."""
    out = Path(out_dir)
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    paths = {"train": out / "train.csv", "test": out / "test.csv"}
    for (split, path), rng, n in zip(paths.items(), (train_rng, test_rng), (n_train, n_test)):
        features, labels = generate(n, rng)
        write_labelled_csv(path, LabelledData(features, labels, SEED_FEATURES, str(path)))
    return paths
