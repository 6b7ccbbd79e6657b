"""Cleaning: parse the nutrients, give every rejected row one drop reason, build the duplicate key."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import polars as pl

from foodcls.features import ALL_FEATURES, KJ_PER_KCAL, KJ_RATIO, MACROS, NUTRIENTS, PARTS, SEED_FEATURES, TOLERANCE_G
from foodcls.offdata.columns import NUMBER_COLUMNS
from foodcls.offdata.rules import LabelRules, label_expressions

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
NUMERIC = ALL_FEATURES  # the nine nutrients, in the column order of the built CSVs
# Every reason a row can be dropped for, in the order they are checked (a row counts under the first).
DROP_REASONS = (
    "ragged_row",
    "no_class",
    "near_class",
    "ambiguous_class",
    "missing_protein",
    "missing_carbs",
    "missing_fat",
    "missing_additives",
    "fractional_additives",
    "negative_value",
    "nutrient_over_100",
    "nutrients_sum_over_105",
    "energy_over_900",
    "sugars_over_carbs",
    "saturated_fat_over_fat",
    "additives_over_100",
    "duplicate",
)
SUM_TOLERANCE = 100.0 + TOLERANCE_G  # protein + carbs + fat may exceed 100 g by rounding on the label
MANGLED_BARCODE = r"^\d+(?:[.,]\d+)?[eE][+-]?\d+$"  # 8.01E+12: a spreadsheet turned it into a number
GRAMS = tuple(n for n in ALL_FEATURES if NUTRIENTS[n].unit == "g per 100 g")


def _number(column: str, dtype: pl.DataType) -> pl.Expr:
    """A column of numbers as they are (the Parquet export's), or of text: decimal point or comma, spaces around;
    non-numeric, NaN and infinities become null (counted as missing)."""
    if dtype.is_numeric():
        value = pl.col(column).cast(pl.Float64)
    else:
        value = pl.col(column).str.strip_chars().str.replace(",", ".", literal=True).cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value).otherwise(None)


def _energy_copied() -> pl.Expr:
    """An export that gives the same figure as kcal and as kJ copied one into the other (a spreadsheet
    sample puts a juice's 59 kJ in both); the macros, at 4/4/9 kcal per g, decide which unit it was:
    the kJ reading where it lies nearer them in ratio, i.e. where the figure exceeds √4.184 × theirs."""
    kcal, kj = pl.col("energy_kcal"), pl.col("energy_kj")
    from_macros = 4 * pl.col("protein") + 4 * pl.col("carbs") + 9 * pl.col("fat")
    return ((kcal == kj) & (kcal > 0) & (kcal > KJ_RATIO * from_macros)).fill_null(False)


def _energy() -> pl.Expr:
    """kcal per 100 g: energy-kcal_100g, else energy_100g (kJ) ÷ 4.184; a kJ figure copied into the kcal
    field is converted (needs the macro columns)."""
    kj = pl.col("energy_kj") / KJ_PER_KCAL
    kcal = pl.when(pl.col("energy_copied")).then(kj).otherwise(pl.col("energy_kcal"))
    return pl.coalesce(kcal, kj)


def _content_key() -> pl.Expr:
    return pl.concat_str(
        [
            pl.lit("product:"),
            pl.col("product_name").fill_null("").str.strip_chars().str.to_lowercase(),
            pl.lit("|"),
            pl.col("brands").fill_null("").str.strip_chars().str.to_lowercase(),
            *[e for c in SEED_FEATURES for e in (pl.lit("|"), pl.col(c).cast(pl.String))],
        ]
    )


def _duplicate_keys() -> tuple[pl.Expr, pl.Expr]:
    """(key, content_key). key: the barcode without leading zeros, or, where it is missing or mangled,
    name + brand + nutrients; it also decides the split. content_key: name + brand + nutrients where
    there is a name, so a mangled copy of a product with a good barcode is caught too."""
    code = pl.col("code").fill_null("").str.strip_chars()
    stripped = code.str.strip_chars_start("0")
    usable = (code != "") & ~code.str.contains(MANGLED_BARCODE)
    barcode_key = pl.concat_str([pl.lit("code:"), pl.when(stripped == "").then(pl.lit("0")).otherwise(stripped)])
    named = pl.col("product_name").fill_null("").str.strip_chars() != ""
    return pl.when(usable).then(barcode_key).otherwise(_content_key()), pl.when(named).then(_content_key()).otherwise(None)


def with_nutrients(batch: Frame) -> Frame:
    """Add the nine nutrients as numbers (null where unknown or not a number), energy in kcal, and
    energy_copied (a kJ figure found in the kcal field and converted); energy_kcal and energy_kj become
    numbers too. Works lazily too."""
    schema = batch.collect_schema()
    numbers = [_number(c, schema[c]).alias(c) for c in NUMBER_COLUMNS]
    frame = batch.with_columns(*numbers)
    return frame.with_columns(_energy_copied().alias("energy_copied")).with_columns(_energy().alias("energy"))


def value_checks(features: tuple[str, ...] = NUMERIC, required: tuple[str, ...] = SEED_FEATURES) -> list[tuple[str, pl.Expr]]:
    """(reason, failed) of every check of a product's values over these features, in DROP_REASONS' order:
    a required one missing, then values no label can hold. The one definition of a plausible product, for
    `data build` (all nine, the seed's four required) and `predict --input EXPORT` (the model's features)."""
    checks = [(f"missing_{f}", pl.col(f).is_null()) for f in SEED_FEATURES if f in required and f in features]
    if "additives" in features:
        checks.append(("fractional_additives", pl.col("additives") != pl.col("additives").round(0)))
    checks.append(("negative_value", pl.min_horizontal([pl.col(c) for c in features]) < 0))
    grams = [pl.col(c) for c in GRAMS if c in features]
    if grams:
        checks.append(("nutrient_over_100", pl.max_horizontal(grams) > 100))
    if all(m in features for m in MACROS):
        checks.append(("nutrients_sum_over_105", pl.sum_horizontal([pl.col(c) for c in MACROS]) > SUM_TOLERANCE))
    if "energy" in features:
        checks.append(("energy_over_900", pl.col("energy") > NUTRIENTS["energy"].high))
    checks += [(f"{part}_over_{whole}", pl.col(part) > pl.col(whole) + TOLERANCE_G)
               for part, whole in PARTS if part in features and whole in features]
    if "additives" in features:
        checks.append(("additives_over_100", pl.col("additives") > NUTRIENTS["additives"].high))
    return checks


def first_failed(checks: list[tuple[str, pl.Expr]], value: Callable[[str], pl.Expr], otherwise: pl.Expr) -> pl.Expr:
    """value(reason) of the first check that fails (null counts as passing), else otherwise."""
    out = otherwise
    for reason, failed in reversed(checks):  # built inside out, so the first check wins
        out = pl.when(failed.fill_null(False)).then(value(reason)).otherwise(out)
    return out


def classify(batch: Frame, rules: LabelRules) -> Frame:
    """Add label, the nine nutrients, energy_copied (a kJ figure found in the kcal field and converted),
    key, content_key, and reason: 0 for a row kept (before
    de-duplication), i + 1 for a row dropped for DROP_REASONS[i]. Works lazily too."""
    tags = pl.col("categories_tags").fill_null("").str.to_lowercase()
    label, n_matched, near = label_expressions(rules, tags)
    frame = with_nutrients(batch.with_columns(label.alias("label"), n_matched.alias("n_matched"), near.alias("near_class")))
    checks = [
        # No class: no category of the rules' classes (and, with `other`, no categories at all).
        ("no_class", (pl.col("n_matched") == 0) & pl.col("label").is_null() & ~pl.col("near_class")),
        ("near_class", pl.col("near_class")),  # with `other`: a near tag, so perhaps in a class after all
        ("ambiguous_class", pl.col("label").is_null()),
        *value_checks(),
    ]
    reason = first_failed(checks, lambda r: pl.lit(reason_code(r), pl.UInt8), pl.lit(0, pl.UInt8))
    key, content_key = _duplicate_keys()
    return frame.with_columns(reason.alias("reason"), key.alias("key"), content_key.alias("content_key"),
                              product_name().alias("name"))


def product_name() -> pl.Expr:
    """The name the name feature reads: product_name, and generic_name after it where it says more; control
    characters as spaces (a name stays one line of the built CSVs)."""
    name, generic = (pl.col(c).fill_null("").str.strip_chars() for c in ("product_name", "generic_name"))
    joined = pl.when((generic != "") & (generic.str.to_lowercase() != name.str.to_lowercase())).then(
        pl.concat_str([name, generic], separator=" ")).otherwise(name)
    return joined.str.replace_all(r"[\x00-\x1f\x7f]+", " ").str.strip_chars()


def reason_code(reason: str) -> int:
    return DROP_REASONS.index(reason) + 1
