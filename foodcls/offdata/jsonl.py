"""One product of OFF's JSONL dump as our columns (as strings).

Two nutrition schemas: the legacy one, `nutriments` with `<name>_100g` keys, and schema 1003 (OFF's
products are migrating to it; its category classifier reads only it since January 2026), where the
values live under `nutrition.aggregated_set.nutrients.<name>.value` with a `unit`, and the set says what
it is `per` (100g / 100ml) and its `preparation`. The aggregated set is read first, the legacy fields
fill what it lacks.
"""

from __future__ import annotations

from foodcls.offdata.columns import EXPORT_NAMES

# Schema 1003's unit → the factor to the unit of our column (g per 100 g; kcal; kJ).
_GRAMS = {"g": 1.0, "mg": 1e-3, "µg": 1e-6, "mcg": 1e-6}
_ENERGY = {"energy-kcal_100g": {"kcal": 1.0, "kj": 1 / 4.184}, "energy_100g": {"kj": 1.0, "kcal": 4.184},
           "energy-kj_100g": {"kj": 1.0, "kcal": 4.184}}
# A set per 100 g or per 100 ml, as sold: what the legacy `_100g` fields always held (OFF gives liquids per
# 100 ml there too). A set for the prepared product (a powder made up with milk…) describes something
# else: its values are not used, and without legacy fields the product is dropped as missing_protein.
_USABLE_PER = ("100g", "100ml")


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def aggregated_nutrients(product: dict) -> dict[str, float]:
    """Schema 1003's aggregated values, by the legacy `<name>_100g` key, converted to its unit; empty
    when the product has no usable set (another schema, per serving, or prepared)."""
    nutrition = product.get("nutrition")
    aggregated = nutrition.get("aggregated_set") if isinstance(nutrition, dict) else None
    if not isinstance(aggregated, dict) or aggregated.get("per") not in _USABLE_PER:
        return {}
    if aggregated.get("preparation", "as_sold") != "as_sold":
        return {}
    nutrients = aggregated.get("nutrients")
    if not isinstance(nutrients, dict):
        return {}
    values = {}
    for name, entry in nutrients.items():
        if not isinstance(entry, dict):
            continue
        value, unit = entry.get("value"), str(entry.get("unit", "")).strip().lower().replace("μ", "µ")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = f"{name}_100g"
        factor = _ENERGY[key].get(unit) if key in _ENERGY else _GRAMS.get(unit or "g")
        if factor is not None:
            values[key] = float(value) * factor
    return values


def product_row(product: dict) -> dict[str, str | None]:
    """Our columns from one product of the JSONL dump (either nutrition schema)."""
    nutriments = product.get("nutriments")
    nutriments = nutriments if isinstance(nutriments, dict) else {}
    aggregated = aggregated_nutrients(product)
    row = {}
    lang = product.get("lang") if isinstance(product.get("lang"), str) else None
    for column, export_names in EXPORT_NAMES.items():
        value = None
        for export_name in export_names:
            if export_name.endswith("_100g"):
                value = aggregated.get(export_name, nutriments.get(export_name, product.get(export_name)))
            else:
                value = product.get(export_name)
                if column in NAMES and not value and lang:  # the main language's name, where the plain field is empty
                    value = product.get(f"{export_name}_{lang}")
            if value is not None:
                break
        row[column] = _text(value)
    return row


NAMES = ("product_name", "generic_name")
