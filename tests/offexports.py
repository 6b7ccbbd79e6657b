"""Hand-made Open Food Facts exports, one writer per quirk, all holding the same products."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
from pathlib import Path

HEADER = ["code", "url", "product_name", "brands", "categories_tags", "additives_n", "fat_100g", "-lactose_100g",
          "carbohydrates_100g", "proteins_100g"]

# (code, name, brand, categories_tags, protein, carbs, fat, additives), then what becomes of the row.
PRODUCTS = [
    ("3017620422003", "Pâte à tartiner", "Ferrero", "en:snacks,en:sweet-snacks", "6.3", "57.5", "30.9", "1"),  # snacks
    ("0000000012345", "Cola", "Fizz", "en:beverages,en:sodas", "0", "10.6", "0", "2"),  # beverages
    ("12345", "Cola", "Fizz", "en:beverages,en:sodas", "0", "10.6", "0", "2"),  # duplicate (leading zeros)
    ("2000000000017", "Jambon", "Porc", "en:meats,en:hams", "20", "1", "12", "2"),  # meats
    ("2000000000024", "Yaourt", "Lait", "en:desserts,en:dairy-desserts", "4", "15", "3", "3"),  # desserts
    ("2000000000031", "Barre", "X", "en:snacks,en:desserts", "5", "60", "20", "1"),  # ambiguous_class
    ("2000000000048", "Brie", "Y", "en:cheeses", "20", "1", "28", "0"),  # no_class
    ("2000000000055", "Saucisse", "Z", "en:meats", "", "1", "20", "1"),  # missing_protein
    ("2000000000062", "Soda", "Z", "en:beverages", "0", "abc", "0", "0"),  # missing_carbs
    ("2000000000079", "Chips", "Z", "en:salty-snacks", "6", "50", "-1", "0"),  # negative_value
    ("2000000000086", "Sucre", "Z", "en:sweet-snacks", "0", "120", "0", "0"),  # nutrient_over_100
    ("2000000000093", "Noix", "Z", "en:salty-snacks", "60", "40", "10", "0"),  # nutrients_sum_over_105
    ("2000000000109", "Glace", "Z", "en:frozen-desserts", "3", "25", "12", "1.5"),  # fractional_additives
    ("2000000000116", "Thé", "Z", "en:beverages", "0", "0", "0", ""),  # missing_additives
]
EXPECTED_KEPT = {"beverages": 1, "meats": 1, "snacks": 1, "desserts": 1}
EXPECTED_DROPPED = {
    "ragged_row": 1, "no_class": 1, "ambiguous_class": 1, "missing_protein": 1, "missing_carbs": 1, "missing_fat": 0,
    "missing_additives": 1, "fractional_additives": 1, "negative_value": 1, "nutrient_over_100": 1,
    "nutrients_sum_over_105": 1, "duplicate": 1,
}
RAGGED = ["3000000000015", "http://x", "Cassé"]  # too few fields


def _rows(decimal_comma: bool = False, mangle_barcodes: bool = False) -> list[list[str]]:
    rows = []
    for code, name, brand, tags, protein, carbs, fat, additives in PRODUCTS:
        if mangle_barcodes and len(code.lstrip("0")) >= 12:
            code = f"{int(code):.2E}".replace("E+", "E+")  # 3017620422003 → 3.02E+12
            code = code.replace(".", ",") if decimal_comma else code
        values = [protein, carbs, fat]
        if decimal_comma:
            values = [v.replace(".", ",") for v in values]
        protein, carbs, fat = values
        rows.append([code, f"http://off/{code}", name, brand, tags, additives, fat, "", carbs, protein])
    return rows


def off_tsv(path: Path, gz: bool = False) -> Path:
    """OFF's own export: tab-separated, no quoting (a quote inside a name is literal)."""
    lines = ["\t".join(HEADER)] + ["\t".join(r) for r in _rows()] + ["\t".join(RAGGED)]
    lines[1] = lines[1].replace("Pâte à tartiner", 'Pâte "à" tartiner')
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
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


def off_jsonl(path: Path, gz: bool = False) -> Path:
    lines = []
    for code, name, brand, tags, protein, carbs, fat, additives in PRODUCTS:
        number = lambda v: float(v) if v.replace(".", "").replace("-", "").isdigit() else (v or None)  # noqa: E731
        lines.append(json.dumps({
            "code": code, "product_name": name, "brands": brand, "categories_tags": tags.split(","),
            "additives_n": number(additives),
            "nutriments": {"proteins_100g": number(protein), "carbohydrates_100g": number(carbs), "fat_100g": number(fat)},
        }))
    lines.append('{"code": "broken", ')  # an unparsable line
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
