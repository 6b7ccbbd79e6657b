"""The nutrient vocabulary: names, units and valid ranges — one definition of a valid product, used by
`data build`, every CSV reader, `predict` and `serve`.

Imports nothing heavier than numpy, so the quick paths (predict, serve) can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Nutrient:
    name: str  # the column name in our CSVs, the key in configs and in the HTTP API
    unit: str
    high: float  # values must lie within 0..high
    description: str
    whole: bool = False  # a count: whole numbers only

    @property
    def option(self) -> str:
        """The `foodcls predict` option: --saturated-fat for saturated_fat."""
        return "--" + self.name.replace("_", "-")

    @property
    def rule(self) -> str:
        """What a valid value is, as error messages say it."""
        return f"be a whole number within 0-{self.high:g}" if self.whole else f"lie within 0-{self.high:g} {self.unit}"


_NUTRIENTS = (
    Nutrient("protein", "g per 100 g", 100, "protein"),
    Nutrient("carbs", "g per 100 g", 100, "carbohydrates"),
    Nutrient("fat", "g per 100 g", 100, "fat"),
    # No real product lists a hundred additives; the bound keeps absurd counts (1e308) out.
    Nutrient("additives", "additives", 100, "number of food additives", whole=True),
    Nutrient("sugars", "g per 100 g", 100, "sugars (part of the carbohydrates)"),
    Nutrient("saturated_fat", "g per 100 g", 100, "saturated fat (part of the fat)"),
    Nutrient("salt", "g per 100 g", 100, "salt"),
    Nutrient("fiber", "g per 100 g", 100, "dietary fiber"),
    # Pure fat is 900 kcal per 100 g: nothing edible holds more.
    Nutrient("energy", "kcal per 100 g", 900, "energy"),
)
NUTRIENTS: dict[str, Nutrient] = {n.name: n for n in _NUTRIENTS}
ALL_FEATURES: tuple[str, ...] = tuple(NUTRIENTS)
SEED_FEATURES: tuple[str, ...] = ("protein", "carbs", "fat", "additives")  # the classic recipe's four
RICH_FEATURES: tuple[str, ...] = ALL_FEATURES
# A product needs these to be kept by `data build`; the others may be unknown (an empty cell).
REQUIRED_FEATURES: tuple[str, ...] = SEED_FEATURES

# Labels round each figure: protein + carbs + fat may exceed 100 g, sugars the carbs and saturated fat
# the fat, by this much before the product counts as inconsistent.
TOLERANCE_G = 5.0
PARTS: tuple[tuple[str, str], ...] = (("sugars", "carbs"), ("saturated_fat", "fat"))
MACROS: tuple[str, ...] = ("protein", "carbs", "fat")


def value_problem(name: str, value: float) -> str | None:
    """Why `value` cannot be a `name` figure (not finite, out of range, fractional count), or None."""
    nutrient = NUTRIENTS[name]
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if not 0 <= value <= nutrient.high or (nutrient.whole and not float(value).is_integer()):
        return f"must {nutrient.rule}, got {value:g}"
    return None


def invalid_mask(name: str, values: np.ndarray) -> np.ndarray:
    """Rows whose `name` value fails value_problem (NaN counts as unknown, not invalid)."""
    nutrient = NUTRIENTS[name]
    with np.errstate(invalid="ignore"):
        bad = np.isinf(values) | (values < 0) | (values > nutrient.high)
        if nutrient.whole:
            bad |= np.isfinite(values) & (values != np.round(values))
    return bad


KJ_PER_KCAL = 4.184
# Energy given in kJ where kcal was meant: the macros (4/4/9 kcal per g) decide, the figure being nearer
# 4.184 × theirs than theirs in ratio (the same rule `data build` uses to mend a kJ figure in a kcal field).
KJ_RATIO = KJ_PER_KCAL ** 0.5
KJ_MARGIN_KCAL = 40.0  # and beyond this many kcal (a drink of 0 g and 1 kcal is not a unit mistake)


def kcal_of_macros(values: dict[str, float]) -> float:
    return 4 * values["protein"] + 4 * values["carbs"] + 9 * values["fat"]


def consistency_problems(values: dict[str, float]) -> list[str]:
    """Figures that contradict each other beyond rounding (sum of macros, sugars > carbs, energy in kJ, …)."""
    problems = []
    if "energy" in values and all(n in values and math.isfinite(values[n]) for n in MACROS) and math.isfinite(values["energy"]):
        macros = kcal_of_macros(values)
        if values["energy"] > KJ_RATIO * macros + KJ_MARGIN_KCAL:
            problems.append(f"energy {values['energy']:g} kcal is {values['energy'] / max(macros, 1e-9):.1f} times what protein, carbs and "
                            f"fat make ({macros:.0f} kcal): was it given in kJ? {values['energy']:g} kJ is "
                            f"{values['energy'] / KJ_PER_KCAL:.0f} kcal (alcohol and polyols carry energy too)")
    if all(n in values and math.isfinite(values[n]) for n in MACROS):
        total = sum(values[n] for n in MACROS)
        if total > 100:
            problems.append(f"protein + carbs + fat = {total:g} g exceeds 100 g per 100 g; check the label")
    for part, whole in PARTS:
        if part in values and whole in values and math.isfinite(values[part]) and values[part] > values[whole] + TOLERANCE_G:
            problems.append(f"{part} ({values[part]:g} g) exceeds {whole} ({values[whole]:g} g); check the label")
    return problems


NAME = "name"  # the text feature: the product's name (text.py), beside the nutrients


def check_features(features: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a feature list (known names, no repeats, at least one nutrient); returns it as a tuple."""
    unknown = [f for f in features if f not in NUTRIENTS and f != NAME]
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r}; features are {', '.join(ALL_FEATURES)} and {NAME}")
    if len(set(features)) != len(features):
        raise ValueError("a feature is listed twice")
    if not [f for f in features if f != NAME]:
        raise ValueError("at least one nutrient is needed (the name alone is not a model foodcls trains)")
    return tuple(features)


def nutrients_of(features: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The nutrients of a feature list (the name left out): the network's numeric inputs, in order."""
    return tuple(f for f in features if f != NAME)
