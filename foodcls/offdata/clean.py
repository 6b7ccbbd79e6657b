"""Cleaning: parse the nutrients, give every rejected row one drop reason, build the duplicate key."""

from __future__ import annotations

from typing import TypeVar

import polars as pl

from foodcls.features import ALL_FEATURES, MACROS, NUTRIENTS, PARTS, SEED_FEATURES, TOLERANCE_G
from foodcls.offdata.rules import LabelRules, label_expressions

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
NUMERIC = ALL_FEATURES  # the nine nutrients, in the column order of the built CSVs
KJ_PER_KCAL = 4.184
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


def _number(column: str) -> pl.Expr:
    """Decimal point or comma; non-numeric, NaN and infinities become null (counted as missing)."""
    value = pl.col(column).str.strip_chars().str.replace(",", ".", literal=True).cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value).otherwise(None)


def _energy_copied() -> pl.Expr:
    """An export that gives the same figure as kcal and as kJ copied one into the other (a spreadsheet
    sample puts a juice's 59 kJ in both); the macros, at 4/4/9 kcal per g, decide which unit it was:
    the kJ reading where it lies nearer them in ratio, i.e. where the figure exceeds √4.184 × theirs."""
    kcal, kj = _number("energy_kcal"), _number("energy_kj")
    from_macros = 4 * pl.col("protein") + 4 * pl.col("carbs") + 9 * pl.col("fat")
    return ((kcal == kj) & (kcal > 0) & (kcal > KJ_PER_KCAL ** 0.5 * from_macros)).fill_null(False)


def _energy() -> pl.Expr:
    """kcal per 100 g: energy-kcal_100g, else energy_100g (kJ) ÷ 4.184; a kJ figure copied into the kcal
    field is converted (needs the macro columns)."""
    kcal = pl.when(pl.col("energy_copied")).then(_number("energy_kj") / KJ_PER_KCAL).otherwise(_number("energy_kcal"))
    return pl.coalesce(kcal, _number("energy_kj") / KJ_PER_KCAL)


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


def classify(batch: Frame, rules: LabelRules) -> Frame:
    """Add label, the nine nutrients, energy_copied (a kJ figure found in the kcal field and converted),
    key, content_key, and reason: 0 for a row kept (before
    de-duplication), i + 1 for a row dropped for DROP_REASONS[i]. Works lazily too."""
    tags = pl.col("categories_tags").fill_null("").str.to_lowercase()
    label, n_matched, near = label_expressions(rules, tags)
    numbers = [_number(c).alias(c) for c in NUMERIC if c != "energy"]
    frame = batch.with_columns(label.alias("label"), n_matched.alias("n_matched"), near.alias("near_class"), *numbers)
    frame = frame.with_columns(_energy_copied().alias("energy_copied")).with_columns(_energy().alias("energy"))
    macros = [pl.col(c) for c in MACROS]
    checks = [
        # No class: no category of the rules' classes (and, with `other`, no categories at all).
        ("no_class", (pl.col("n_matched") == 0) & pl.col("label").is_null() & ~pl.col("near_class")),
        ("near_class", pl.col("near_class")),  # with `other`: a near tag, so perhaps in a class after all
        ("ambiguous_class", pl.col("label").is_null()),
        ("missing_protein", pl.col("protein").is_null()),
        ("missing_carbs", pl.col("carbs").is_null()),
        ("missing_fat", pl.col("fat").is_null()),
        ("missing_additives", pl.col("additives").is_null()),
        ("fractional_additives", pl.col("additives") != pl.col("additives").round(0)),
        ("negative_value", pl.min_horizontal([pl.col(c) for c in NUMERIC]) < 0),
        ("nutrient_over_100", pl.max_horizontal([pl.col(c) for c in GRAMS]) > 100),
        ("nutrients_sum_over_105", pl.sum_horizontal(macros) > SUM_TOLERANCE),
        ("energy_over_900", pl.col("energy") > NUTRIENTS["energy"].high),
        *[(f"{part}_over_{whole}", pl.col(part) > pl.col(whole) + TOLERANCE_G) for part, whole in PARTS],
        ("additives_over_100", pl.col("additives") > NUTRIENTS["additives"].high),
    ]
    first_failed = pl.lit(0, pl.UInt8)
    for reason, failed in reversed(checks):  # built inside out, so the first check wins
        first_failed = pl.when(failed.fill_null(False)).then(pl.lit(reason_code(reason), pl.UInt8)).otherwise(first_failed)
    key, content_key = _duplicate_keys()
    return frame.with_columns(first_failed.alias("reason"), key.alias("key"), content_key.alias("content_key"))


def reason_code(reason: str) -> int:
    return DROP_REASONS.index(reason) + 1
