"""The synthetic sets: each class a mixture of product archetypes measured on real Open Food Facts data.

data/demo holds the seed's four features (protein, carbs, fat, additives); data/demo-rich holds the same
products with the five richer nutrients (sugars, saturated fat, salt, fiber, energy) drawn from a
separate random stream, so that adding them leaves the four-feature set byte-for-byte as it was.
data/synth-off (archetype set "off") adds the archetypes real exports have and the demo lacks; the
real-data recipes mix it, train-only, into the real rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foodcls.data import LabelledData, write_labelled_csv
from foodcls.errors import ConfigError
from foodcls.features import ALL_FEATURES, SEED_FEATURES
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
    no_additive_share: float | None = None  # share of products without additives; None: the class's share


@dataclass(frozen=True)
class RichNutrients:
    """An archetype's richer nutrients, 10th–90th percentiles measured on the real rows built from
    ../shared/data/off-exports, each real product assigned to its class's nearest archetype in
    (protein, carbs, fat); ranges resting on fewer than ten products were widened by hand."""

    sugars_share: tuple[float, float]  # sugars as a share of the carbohydrates
    saturated_share: tuple[float, float]  # saturated fat as a share of the fat
    salt: tuple[float, float]  # g per 100 g
    fiber: tuple[float, float]  # g per 100 g


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

RICH: dict[str, tuple[RichNutrients, ...]] = {  # in the order of ARCHETYPES
    "beverages": (
        RichNutrients((0.3, 1.0), (0.0, 0.2), (0.0, 0.19), (0.0, 0.3)),
        RichNutrients((0.86, 1.0), (0.0, 0.1), (0.0, 0.16), (0.0, 0.6)),
        RichNutrients((0.3, 1.0), (0.1, 0.7), (0.03, 0.3), (0.0, 1.0)),
        RichNutrients((0.5, 1.0), (0.2, 0.9), (0.0, 0.9), (0.0, 5.0)),
    ),
    "meats": (
        RichNutrients((0.1, 1.0), (0.25, 0.44), (1.2, 2.2), (0.0, 0.1)),
        RichNutrients((0.1, 1.0), (0.30, 0.46), (1.4, 4.0), (0.0, 1.0)),
        RichNutrients((0.1, 1.0), (0.34, 0.52), (2.8, 5.6), (0.0, 0.1)),
        RichNutrients((0.03, 0.24), (0.14, 0.38), (0.54, 2.1), (0.0, 2.1)),
    ),
    "snacks": (
        RichNutrients((0.24, 0.96), (0.08, 0.8), (0.03, 1.34), (0.5, 8.0)),
        RichNutrients((0.45, 0.96), (0.1, 1.0), (0.0, 0.67), (0.0, 5.0)),
        RichNutrients((0.55, 1.0), (0.31, 0.74), (0.02, 0.36), (0.5, 7.9)),
        RichNutrients((0.0, 0.79), (0.16, 0.63), (0.0, 1.07), (0.0, 16.0)),
    ),
    "desserts": (
        RichNutrients((0.82, 1.0), (0.57, 0.73), (0.02, 0.15), (0.0, 1.6)),
        RichNutrients((0.73, 0.98), (0.45, 0.70), (0.05, 0.24), (0.0, 1.2)),
        RichNutrients((0.52, 0.81), (0.12, 0.51), (0.2, 0.72), (1.5, 4.7)),
        RichNutrients((0.6, 0.95), (0.25, 0.68), (0.05, 0.45), (0.0, 1.0)),
    ),
}
# Archetypes real Open Food Facts products have and the demo set lacks: what `data synth --archetypes off`
# adds, for the sets mixed into real training rows (data/synth-off). Each was found by leave-one-source-out
# cross-validation (the real products a model trained on the demo archetypes got wrong, grouped) and measured
# on the real rows as above. Shares are relative to the demo's archetypes of the class, which sum to 1.
OFF_EXTRA: dict[str, tuple[tuple[Archetype, RichNutrients], ...]] = {
    "desserts": (
        # Six of the 41 real desserts (in three exports) are fruit ices and compotes: protein 0-0.5 g,
        # carbohydrates 16-28 g (84-98 % of it sugars), fat 0-4.6 g, about one additive; called juices.
        (Archetype("sorbets, compotes and fruit desserts", 0.12, (0, 1), (14, 30), (0, 1), 1.0),
         RichNutrients((0.7, 1.0), (0.0, 0.5), (0.0, 0.05), (0.5, 2.5))),
        # Eight of the 41 have under 12 g of carbohydrates: plain yogurts, fromage frais and skyr, protein
        # 2.8-7.9 g, carbohydrates 4.3-11 g (nearly all of it lactose), fat 0.1-6.8 g, salt about 0.1 g, mostly
        # no additive. The demo's yogurts are the sweetened kind (10-19 g carbohydrates): these were called milk.
        (Archetype("plain yogurts, fromage frais, skyr", 0.2, (3.8, 8.5), (3.5, 8), (0, 6), 0.3),
         RichNutrients((0.85, 1.0), (0.6, 0.72), (0.05, 0.15), (0.0, 0.3))),
    ),
    # 29 of the 372 real snacks are cereal bars, crackers and low-fat biscuits: protein 4-10.5 g, carbohydrates
    # 45-72 g, fat 5-13.5 g, often high in fiber. The demo's biscuits carry 15-28 g of fat, so these fell
    # between its biscuits and its dessert cakes, and a model trained on it called them desserts.
    "snacks": (
        (Archetype("cereal bars, crackers, low-fat biscuits", 0.12, (4, 10.5), (45, 72), (5, 13.5), 4.0),
         RichNutrients((0.05, 0.75), (0.1, 0.8), (0.2, 2.2), (1.5, 15.0))),
        # 22 real snacks (in two exports) are mints labelled 0 g of everything: a US label rounds a 0.5 g
        # serving's nutrients to 0, and the export scales those zeros to 100 g. They carry 3-11 additives
        # (colours, flavourings, glazing agents); the water and zero drinks that share their zeros, few or none.
        (Archetype("mints labelled 0 g (tiny servings rounded to zero)", 0.06, (0, 0), (0, 0), (0, 0), 6.5, 0.0),
         RichNutrients((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))),
    ),
    # Light and zero soft drinks carry as many additives (sweeteners, acids, preservatives, colours): 28 of the
    # real beverages have under 5 g of carbohydrates and 3-11 additives, about 5 on average. The demo's water
    # and zero drinks average 1.8, which, beside the mints, would make every light drink a snack.
    "beverages": (
        (Archetype("light and zero soft drinks", 0.15, (0, 0.4), (0, 4), (0, 0.3), 5.0, 0.05),
         RichNutrients((0.0, 1.0), (0.0, 0.3), (0.0, 0.1), (0.0, 0.3))),
    ),
}
ARCHETYPE_SETS = ("demo", "off")


def archetype_tables(kind: str = "demo") -> tuple[dict[str, tuple[Archetype, ...]], dict[str, tuple[RichNutrients, ...]]]:
    """(archetypes, their richer nutrients) per class: the demo set's, or with kind "off" also OFF_EXTRA's."""
    if kind not in ARCHETYPE_SETS:
        raise ConfigError(f"--archetypes {kind!r}: expected one of {', '.join(ARCHETYPE_SETS)}")
    archetypes, rich = dict(ARCHETYPES), dict(RICH)
    if kind == "off":
        for name, extra in OFF_EXTRA.items():
            archetypes[name] = archetypes[name] + tuple(a for a, _ in extra)
            rich[name] = rich[name] + tuple(r for _, r in extra)
    return archetypes, rich


# Label energy is protein × 4 + carbs × 4 + fat × 9 + fiber × 2 kcal, within a few percent of rounding.
ENERGY_NOISE = 0.02

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


def sample_class(rng: np.random.Generator, class_name: str, n: int,
                 archetypes: tuple[Archetype, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n products (n, 4) of one class (from the given archetypes, by default the demo set's): protein,
    carbs, fat rounded to 0.1 g, additives a whole count; and each product's archetype index."""
    archetypes = ARCHETYPES[class_name] if archetypes is None else archetypes
    shares = np.array([a.share for a in archetypes])
    counts = rng.multinomial(n, shares / shares.sum())
    parts = []
    for archetype, count in zip(archetypes, counts):
        nutrients = np.stack([_nutrient(rng, b, count) for b in (archetype.protein, archetype.carbs, archetype.fat)], axis=1)
        total = nutrients.sum(axis=1, keepdims=True)
        nutrients = np.where(total > 100, nutrients * (100 / np.maximum(total, 1e-9)), nutrients)
        nutrients = np.floor(nutrients * 10) / 10  # round down so the sum stays ≤ 100
        no_additive = NO_ADDITIVE_SHARE[class_name] if archetype.no_additive_share is None else archetype.no_additive_share
        additives = _additives(rng, archetype.mean_additives, no_additive, count)
        parts.append(np.column_stack([nutrients, additives]))
    return np.concatenate(parts).astype(np.float32), np.repeat(np.arange(len(archetypes)), counts)


def _share(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return np.clip(_nutrient(rng, bounds, n), 0, 1)


def sample_rich(rng: np.random.Generator, seed_values: np.ndarray, labels: np.ndarray, archetypes: np.ndarray,
                rich_table: dict[str, tuple[RichNutrients, ...]] | None = None) -> np.ndarray:
    """The five richer nutrients (n, 5) for products whose seed values, classes and archetypes are given:
    sugars ≤ carbs and saturated fat ≤ fat by construction, energy from 4/4/9/2 kcal per g."""
    n = len(labels)
    rich = np.zeros((n, 5), dtype=np.float64)
    for class_index, name in enumerate(CLASSES):
        for archetype_index, nutrients in enumerate((RICH if rich_table is None else rich_table)[name]):
            rows = np.flatnonzero((labels == class_index) & (archetypes == archetype_index))
            if not len(rows):
                continue
            protein, carbs, fat = (seed_values[rows, i].astype(np.float64) for i in range(3))
            sugars = carbs * _share(rng, nutrients.sugars_share, len(rows))
            saturated = fat * _share(rng, nutrients.saturated_share, len(rows))
            salt = _nutrient(rng, nutrients.salt, len(rows))
            fiber = _nutrient(rng, nutrients.fiber, len(rows))
            energy = (4 * protein + 4 * carbs + 9 * fat + 2 * fiber) * (1 + rng.normal(0, ENERGY_NOISE, len(rows)))
            rich[rows] = np.column_stack([
                np.floor(sugars * 10) / 10, np.floor(saturated * 10) / 10, np.round(salt, 2), np.round(fiber, 1),
                np.clip(np.round(energy), 0, 900),
            ])
    return rich.astype(np.float32)


def generate(n: int, rng: np.random.Generator, rich_rng: np.random.Generator | None = None,
             kind: str = "demo") -> tuple[np.ndarray, np.ndarray]:
    """A balanced, shuffled set of n products (class sizes differ by ≤ 1) of the archetype set `kind`: the
    four seed features, or all nine when rich_rng is given (the same four, plus five from rich_rng)."""
    archetypes, rich_table = archetype_tables(kind)
    sizes = [n // len(CLASSES) + (1 if i < n % len(CLASSES) else 0) for i in range(len(CLASSES))]
    samples = [sample_class(rng, name, size, archetypes[name]) for name, size in zip(CLASSES, sizes)]
    features = np.concatenate([values for values, _ in samples])
    archetypes = np.concatenate([which for _, which in samples])
    labels = np.repeat(np.arange(len(CLASSES)), sizes)
    order = rng.permutation(n)
    if rich_rng is not None:
        features = np.column_stack([features, sample_rich(rich_rng, features, labels, archetypes, rich_table)])
    return features[order], labels[order]


def write_demo_set(out_dir: str | Path, n_train: int = 8000, n_test: int = 2000, seed: int = DEFAULT_SEED,
                   rich: bool = False, kind: str = "demo") -> dict[str, Path]:
    """Write out_dir/train.csv and out_dir/test.csv from independent streams of one seed; rich: the same
    products with all nine nutrients; kind: the archetype set (demo, or off: the demo's and OFF_EXTRA's)."""
    out = Path(out_dir)
    # Children 0 and 1 draw the seed features of train and test; 2 and 3 their richer nutrients.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    paths = {"train": out / "train.csv", "test": out / "test.csv"}
    features_written = ALL_FEATURES if rich else SEED_FEATURES
    for i, ((split, path), n) in enumerate(zip(paths.items(), (n_train, n_test))):
        features, labels = generate(n, streams[i], streams[i + 2] if rich else None, kind)
        write_labelled_csv(path, LabelledData(features, labels, features_written, str(path)))
    return paths
