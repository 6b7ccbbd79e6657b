"""One product of OFF's JSONL dump as our columns (as strings)."""

from __future__ import annotations

from foodcls.offdata.columns import EXPORT_NAMES


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def product_row(product: dict) -> dict[str, str | None]:
    """Our columns from one product of the JSONL dump: nutrients under `nutriments` as <name>_100g keys."""
    nutriments = product.get("nutriments")
    nutriments = nutriments if isinstance(nutriments, dict) else {}
    row = {}
    for column, export_names in EXPORT_NAMES.items():
        value = None
        for export_name in export_names:
            value = nutriments.get(export_name, product.get(export_name)) if export_name.endswith("_100g") else product.get(export_name)
            if value is not None:
                break
        row[column] = _text(value)
    return row
