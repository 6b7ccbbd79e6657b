"""Labelling rules: which OFF category tags make a product one of the classes (any names, in the file's
order), whether products whose categories name none of them are kept as `other`, and the tags that
almost name a class (kept out of `other`, since such a product may well belong to a class)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from foodcls.config import read_yaml
from foodcls.errors import ConfigError
from foodcls.labels import OTHER, class_problem

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")
KEYS = ("classes", "precedence", "other", "near")


@dataclass(frozen=True)
class LabelRules:
    classes: dict[str, tuple[str, ...]]  # class → tags, in the file's order (the class indices)
    precedence: tuple[str, ...]  # resolves products matching several classes; empty: drop them
    source: str
    other: bool = False  # keep products with categories but no class as `other` (the last class)
    near: tuple[str, ...] = ()  # tags that almost name a class: with `other`, such products are dropped, not `other`

    @property
    def names(self) -> tuple[str, ...]:
        """The class list the built files' labels use: the rules' classes, then `other` when kept."""
        return (*self.classes, OTHER) if self.other else tuple(self.classes)

    def to_json(self) -> dict:
        return {"file": self.source, "classes": {k: list(v) for k, v in self.classes.items()}, "precedence": list(self.precedence),
                "other": self.other, "near": list(self.near)}


def _tags(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t.strip() for t in value):
        return None
    return tuple(t.strip().lower() for t in value)


def load_rules(path: str | Path | None = None, other: bool | None = None) -> LabelRules:
    """Read and check a rules file (default: the shipped one). other: True/False overrides the file's
    `other` (the --other flag)."""
    path = Path(path) if path is not None else DEFAULT_RULES
    raw, _ = read_yaml(path, "rules")
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise ConfigError(f"{path}: a rules file needs a 'classes' mapping of class → list of category tags")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(KEYS)})")
    keep_other = raw.get("other", False)
    if not isinstance(keep_other, bool):
        raise ConfigError(f"{path}: other: expected true or false, got {keep_other!r}")
    keep_other = keep_other if other is None else other
    if OTHER in raw["classes"]:
        raise ConfigError(f"{path}: classes.{OTHER}: reserved for products in none of the classes (other: true)")
    problem = class_problem([*raw["classes"], *([OTHER] if keep_other else [])])
    if problem is not None:
        raise ConfigError(f"{path}: classes: {problem}")
    classes: dict[str, tuple[str, ...]] = {}
    for name, tags in raw["classes"].items():
        parsed = _tags(tags)
        if parsed is None:
            raise ConfigError(f"{path}: classes.{name}: expected a non-empty list of category tags")
        classes[name] = parsed
    precedence = raw.get("precedence") or []
    if not isinstance(precedence, list) or any(p not in classes for p in precedence):
        raise ConfigError(f"{path}: precedence: expected a list of class names from 'classes', got {precedence!r}")
    near = () if raw.get("near") in (None, []) else _tags(raw.get("near"))
    if near is None:
        raise ConfigError(f"{path}: near: expected a list of category tags, got {raw.get('near')!r}")
    return LabelRules(classes, tuple(precedence), str(path), keep_other, near)


def _matches(tags: pl.Expr, wanted: tuple[str, ...]) -> pl.Expr:
    pattern = r"(?:^|,)\s*(?:" + "|".join(re.escape(t) for t in wanted) + r")\s*(?:,|$)"
    return tags.str.contains(pattern).fill_null(False)


def has_categories(tags: pl.Expr) -> pl.Expr:
    """Whether a comma-separated tags column names a category. `en:null` is what some exports write for "no
    category": such a product has none (with --other it is no_class, not other; `--uncategorised` keeps it)."""
    return tags.fill_null("").str.replace_all(r"\ben:null\b", "").str.contains(r"[^,\s]")


def label_expressions(rules: LabelRules, tags: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(class index or null, number of classes matched, whether the product is `other`-eligible but
    near a class) from a comma-separated tags column. With rules.other, a product with categories that
    match no class and no near tag gets the `other` index."""
    matches = [(index, _matches(tags, class_tags)) for index, class_tags in enumerate(rules.classes.values())]
    n_matched = pl.sum_horizontal([m.cast(pl.Int8) for _, m in matches])
    single = pl.lit(None, pl.Int8)
    for index, matched in matches:
        single = pl.when(matched & (n_matched == 1)).then(pl.lit(index, pl.Int8)).otherwise(single)
    # Built from the last listed class up, so the first listed class is the outermost and wins.
    label = single
    by_index = dict(matches)
    names = list(rules.classes)
    for name in reversed(rules.precedence):
        matched = by_index[names.index(name)]
        label = pl.when((n_matched > 1) & matched).then(pl.lit(names.index(name), pl.Int8)).otherwise(label)
    near = pl.lit(False)
    if rules.other:
        near = _matches(tags, rules.near) if rules.near else pl.lit(False)
        other = (n_matched == 0) & has_categories(tags) & ~near
        label = pl.when(other).then(pl.lit(len(names), pl.Int8)).otherwise(label)
        near = (n_matched == 0) & has_categories(tags) & near
    return label, n_matched, near
