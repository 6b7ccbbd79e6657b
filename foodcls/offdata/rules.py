"""Labelling rules: which OFF category tags make a product a beverage, a meat, a snack or a dessert."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from foodcls.config import read_yaml
from foodcls.errors import ConfigError
from foodcls.labels import CLASSES

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")


@dataclass(frozen=True)
class LabelRules:
    classes: dict[str, tuple[str, ...]]  # class → tags, in CLASSES order
    precedence: tuple[str, ...]  # resolves products matching several classes; empty: drop them
    source: str

    def to_json(self) -> dict:
        return {"file": self.source, "classes": {k: list(v) for k, v in self.classes.items()}, "precedence": list(self.precedence)}


def load_rules(path: str | Path | None = None) -> LabelRules:
    path = Path(path) if path is not None else DEFAULT_RULES
    raw, _ = read_yaml(path, "rules")
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise ConfigError(f"{path}: a rules file needs a 'classes' mapping of class → list of category tags")
    unknown = sorted(set(raw) - {"classes", "precedence"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected classes, precedence)")
    classes: dict[str, tuple[str, ...]] = {}
    for name, tags in raw["classes"].items():
        if name not in CLASSES:
            raise ConfigError(f"{path}: classes.{name}: unknown class; classes are {', '.join(CLASSES)}")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
            raise ConfigError(f"{path}: classes.{name}: expected a non-empty list of category tags")
        classes[name] = tuple(t.strip().lower() for t in tags)
    precedence = raw.get("precedence") or []
    if not isinstance(precedence, list) or any(p not in classes for p in precedence):
        raise ConfigError(f"{path}: precedence: expected a list of class names from 'classes', got {precedence!r}")
    ordered = {name: classes[name] for name in CLASSES if name in classes}
    return LabelRules(ordered, tuple(precedence), str(path))


def label_expressions(rules: LabelRules, tags: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(class index or null, number of classes matched) from a comma-separated tags column."""
    matches = []
    for name, class_tags in rules.classes.items():
        pattern = r"(?:^|,)\s*(?:" + "|".join(re.escape(t) for t in class_tags) + r")\s*(?:,|$)"
        matches.append((CLASSES.index(name), tags.str.contains(pattern).fill_null(False)))
    n_matched = pl.sum_horizontal([m.cast(pl.Int8) for _, m in matches])
    single = pl.lit(None, pl.Int8)
    for index, matched in matches:
        single = pl.when(matched & (n_matched == 1)).then(pl.lit(index, pl.Int8)).otherwise(single)
    # Built from the last listed class up, so the first listed class is the outermost and wins.
    label = single
    by_index = dict(matches)
    for name in reversed(rules.precedence):
        matched = by_index[CLASSES.index(name)]
        label = pl.when((n_matched > 1) & matched).then(pl.lit(CLASSES.index(name), pl.Int8)).otherwise(label)
    return label, n_matched
