"""The columns we read from an Open Food Facts export, and the names each export format gives them."""

from __future__ import annotations

from collections.abc import Container

# Our column → the export's names for it, first found wins. product_name (with generic_name) is the name the
# name feature reads; with brands it also serves the fallback duplicate key. Older exports spell saturated_fat_100g with an underscore; energy_100g is kJ.
EXPORT_NAMES: dict[str, tuple[str, ...]] = {
    "code": ("code",),
    "product_name": ("product_name",),
    "generic_name": ("generic_name",),  # often a longer, plainer name ("strawberry syrup" for a brand's name)
    "brands": ("brands",),
    "categories_tags": ("categories_tags",),
    "protein": ("proteins_100g",),
    "carbs": ("carbohydrates_100g",),
    "fat": ("fat_100g",),
    "additives": ("additives_n",),
    "sugars": ("sugars_100g",),
    "saturated_fat": ("saturated-fat_100g", "saturated_fat_100g"),
    "salt": ("salt_100g",),
    "fiber": ("fiber_100g",),
    "energy_kcal": ("energy-kcal_100g",),
    "energy_kj": ("energy_100g", "energy-kj_100g"),
}
COLUMNS = tuple(EXPORT_NAMES)
# The columns that hold numbers (the nutrients per 100 g, the additives count, energy as kcal and as kJ).
NUMBER_COLUMNS = tuple(c for c in EXPORT_NAMES if c not in ("code", "product_name", "generic_name", "brands", "categories_tags"))
REQUIRED = ("code", "categories_tags", "protein", "carbs", "fat", "additives")


# What `predict --input EXPORT` needs: a product's code; the nutrient columns depend on the model.
PREDICT_REQUIRED = ("code",)
# Our nutrient names → the export columns they are read from (energy: the kcal or the kJ figure).
NUTRIENT_COLUMNS = {"protein": ("protein",), "carbs": ("carbs",), "fat": ("fat",), "additives": ("additives",),
                    "sugars": ("sugars",), "saturated_fat": ("saturated_fat",), "salt": ("salt",), "fiber": ("fiber",),
                    "energy": ("energy_kcal", "energy_kj")}


def missing_required(found: Container[str], required: tuple[str, ...] = REQUIRED) -> list[str]:
    """The export's names of the required columns not found (in the export's spelling, for the error)."""
    return [EXPORT_NAMES[name][0] for name in required if name not in found]
