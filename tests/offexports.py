"""Hand-made Open Food Facts exports, one writer per quirk, all holding the same products."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
from pathlib import Path

HEADER = ["code", "url", "product_name", "brands", "categories_tags", "additives_n", "fat_100g", "-lactose_100g",
          "carbohydrates_100g", "proteins_100g", "sugars_100g", "saturated-fat_100g", "salt_100g", "fiber_100g",
          "energy_100g"]
NUTRIENT_COLUMNS = ("protein", "carbs", "fat", "additives", "sugars", "saturated_fat", "salt", "fiber", "energy_kj")

# (code, name, brand, categories_tags, protein, carbs, fat, additives, sugars, saturated fat, salt, fiber,
# energy in kJ), then what becomes of the row.
PRODUCTS = [
    ("3017620422003", "Pâte à tartiner", "Ferrero", "en:snacks,en:sweet-snacks", "6.3", "57.5", "30.9", "1", "56.3", "10.6", "0.107", "", "2252"),  # snacks
    ("0000000012345", "Cola", "Fizz", "en:beverages,en:sodas", "0", "10.6", "0", "2", "10.6", "0", "0", "0", "180"),  # beverages
    ("12345", "Cola", "Fizz", "en:beverages,en:sodas", "0", "10.6", "0", "2", "10.6", "0", "0", "0", "180"),  # duplicate (leading zeros)
    ("2000000000017", "Jambon", "Porc", "en:meats,en:hams", "20", "1", "12", "2", "1", "4", "2", "", ""),  # meats
    ("2000000000024", "Yaourt", "Lait", "en:desserts,en:dairy-desserts", "4", "15", "3", "3", "14", "2", "0.1", "0", "418.4"),  # desserts
    ("2000000000031", "Barre", "X", "en:snacks,en:desserts", "5", "60", "20", "1", "", "", "", "", ""),  # ambiguous_class
    ("2000000000048", "Brie", "Y", "en:cheeses", "20", "1", "28", "0", "", "", "", "", ""),  # no_class
    ("2000000000055", "Saucisse", "Z", "en:meats", "", "1", "20", "1", "", "", "", "", ""),  # missing_protein
    ("2000000000062", "Soda", "Z", "en:beverages", "0", "abc", "0", "0", "", "", "", "", ""),  # missing_carbs
    ("2000000000079", "Chips", "Z", "en:salty-snacks", "6", "50", "-1", "0", "", "", "", "", ""),  # negative_value
    ("2000000000086", "Sucre", "Z", "en:sweet-snacks", "0", "120", "0", "0", "", "", "", "", ""),  # nutrient_over_100
    ("2000000000093", "Noix", "Z", "en:salty-snacks", "60", "40", "10", "0", "", "", "", "", ""),  # nutrients_sum_over_105
    ("2000000000109", "Glace", "Z", "en:frozen-desserts", "3", "25", "12", "1.5", "", "", "", "", ""),  # fractional_additives
    ("2000000000116", "Thé", "Z", "en:beverages", "0", "0", "0", "", "", "", "", "", ""),  # missing_additives
    ("2000000000123", "Huile", "Z", "en:snacks", "0", "0", "99", "0", "", "", "", "", "4000"),  # energy_over_900
    ("2000000000130", "Bonbon", "Z", "en:snacks", "0", "50", "0", "0", "80", "", "", "", ""),  # sugars_over_carbs
    ("2000000000147", "Lard", "Z", "en:meats", "10", "0", "30", "0", "", "40", "", "", ""),  # saturated_fat_over_fat
    ("2000000000154", "Chimie", "Z", "en:snacks", "1", "1", "1", "150", "", "", "", "", ""),  # additives_over_100
]
EXPECTED_KEPT = {"beverages": 1, "meats": 1, "snacks": 1, "desserts": 1}
EXPECTED_DROPPED = {
    "ragged_row": 1, "no_class": 1, "near_class": 0, "ambiguous_class": 1, "missing_protein": 1, "missing_carbs": 1, "missing_fat": 0,
    "missing_additives": 1, "fractional_additives": 1, "negative_value": 1, "nutrient_over_100": 1,
    "nutrients_sum_over_105": 1, "energy_over_900": 1, "sugars_over_carbs": 1, "saturated_fat_over_fat": 1,
    "additives_over_100": 1, "duplicate": 1,
}
# The four kept products as the built CSVs hold them: label, nine nutrients (energy in kcal), source added by the test.
EXPECTED_ROWS = [
    "snacks,6.3,57.5,30.9,1,56.3,10.6,0.107,,538.241",
    "beverages,0,10.6,0,2,10.6,0,0,0,43.021",
    "meats,20,1,12,2,1,4,2,,",
    "desserts,4,15,3,3,14,2,0.1,0,100",
]
RAGGED = ["3000000000015", "http://x", "Cassé"]  # too few fields


def _rows(decimal_comma: bool = False, mangle_barcodes: bool = False) -> list[list[str]]:
    rows = []
    for code, name, brand, tags, protein, carbs, fat, additives, sugars, saturated, salt, fiber, energy in PRODUCTS:
        if mangle_barcodes and len(code.lstrip("0")) >= 12:
            code = f"{int(code):.2E}".replace("E+", "E+")  # 3017620422003 → 3.02E+12
            code = code.replace(".", ",") if decimal_comma else code
        values = [protein, carbs, fat, sugars, saturated, salt, fiber, energy]
        if decimal_comma:
            values = [v.replace(".", ",") for v in values]
        protein, carbs, fat, sugars, saturated, salt, fiber, energy = values
        rows.append([code, f"http://off/{code}", name, brand, tags, additives, fat, "", carbs, protein, sugars, saturated,
                     salt, fiber, energy])
    return rows


def off_tsv(path: Path, gz: bool = False, zst: bool = False) -> Path:
    """OFF's own export: tab-separated, no quoting (a quote inside a name is literal)."""
    lines = ["\t".join(HEADER)] + ["\t".join(r) for r in _rows()] + ["\t".join(RAGGED)]
    lines[1] = lines[1].replace("Pâte à tartiner", 'Pâte "à" tartiner')
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(_compress(data, gz, zst))
    return path


def spreadsheet_csv(
    path: Path, separator: str = ",", encoding: str = "utf-8-sig", decimal_comma: bool = False, multiline_cell: bool = True
) -> Path:
    """A spreadsheet re-save: quoted cells, BOM or another encoding, mangled barcodes, damaged headers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=separator, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow([h if not h.startswith("-") else "#NAME?" for h in HEADER])
    rows = _rows(decimal_comma=decimal_comma, mangle_barcodes=True)
    if multiline_cell:
        rows[3][2] = "Jambon, cuit\nsupérieur"  # a quoted cell with the separator and a newline
    writer.writerows(rows)
    writer.writerow(RAGGED)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def utf16_tsv(path: Path) -> Path:
    lines = ["\t".join(HEADER)] + ["\t".join(r) for r in _rows()] + ["\t".join(RAGGED)]
    path.write_bytes(codecs.BOM_UTF16_LE + ("\r\n".join(lines) + "\r\n").encode("utf-16-le"))
    return path


def _number(text: str):
    return float(text) if text.replace(".", "").replace("-", "").isdigit() else (text or None)


NUTRIMENT_KEYS = {"protein": "proteins", "carbs": "carbohydrates", "fat": "fat", "sugars": "sugars",
                  "saturated_fat": "saturated-fat", "salt": "salt", "fiber": "fiber", "energy_kj": "energy"}


def _product(row: tuple) -> tuple[dict, dict]:
    """(the product's plain fields, its nutrients by OFF nutriment name)."""
    code, name, brand, tags = row[:4]
    values = dict(zip(NUTRIENT_COLUMNS, row[4:]))
    nutrients = {NUTRIMENT_KEYS[k]: _number(v) for k, v in values.items() if k != "additives" and v != ""}
    return {"code": code, "name": name, "brand": brand, "tags": tags.split(","), "additives": _number(values["additives"])}, nutrients


def off_jsonl(path: Path, gz: bool = False, zst: bool = False) -> Path:
    lines = []
    for row in PRODUCTS:
        product, nutrients = _product(row)
        lines.append(json.dumps({
            "code": product["code"], "product_name": product["name"], "brands": product["brand"],
            "categories_tags": product["tags"], "additives_n": product["additives"],
            "nutriments": {f"{k}_100g": v for k, v in nutrients.items()},
        }))
    lines.append('{"code": "broken", ')  # an unparsable line
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(_compress(data, gz, zst))
    return path


def _compress(data: bytes, gz: bool, zst: bool) -> bytes:
    if zst:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return gzip.compress(data) if gz else data


def off_parquet(path: Path, zst: bool = False) -> Path:
    """The official Parquet export's layout: nutriments a list of {name, value, 100g, …} structs,
    product_name a list of {lang, text}, categories_tags a list. A value that is not a number is
    simply absent there, as in the real export."""
    import polars as pl

    records = []
    for row in PRODUCTS:
        product, nutrients = _product(row)
        additives = product["additives"]
        records.append({
            "code": product["code"], "brands": product["brand"], "categories_tags": product["tags"],
            "additives_n": int(additives) if isinstance(additives, float) and additives.is_integer() else None,
            "product_name": [{"lang": "main", "text": product["name"]}, {"lang": "fr", "text": product["name"]}],
            "nutriments": [
                {"name": name, "value": value, "100g": value, "serving": None, "unit": "g"}
                for name, value in nutrients.items() if isinstance(value, float)
            ],
        })
    schema = {
        "code": pl.String, "brands": pl.String, "categories_tags": pl.List(pl.String), "additives_n": pl.Int32,
        "product_name": pl.List(pl.Struct({"lang": pl.String, "text": pl.String})),
        "nutriments": pl.List(pl.Struct({"name": pl.String, "value": pl.Float32, "100g": pl.Float32,
                                         "serving": pl.Float32, "unit": pl.String})),
    }
    frame = pl.DataFrame(records, schema=schema)
    if zst:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        path.write_bytes(_compress(buffer.getvalue(), False, True))
    else:
        frame.write_parquet(path)
    return path
