import csv
import json
import os
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foodcls.errors import ConfigError, DataError
from foodcls.offdata.build import build_dataset, parse_split, split_of
from foodcls.offdata.read import SourceStats, read_export
from foodcls.offdata.rules import load_rules
from foodcls.offdata.sniff import sniff
from tests import offexports as off
from tests.conftest import REPO

WRITERS = {
    "off.tsv": off.off_tsv,
    "off.tsv.gz": lambda p: off.off_tsv(p, gz=True),
    "off.tsv.zst": lambda p: off.off_tsv(p, zst=True),  # regression: the chunked path called readline on zstd's reader
    "comma-bom.csv": off.spreadsheet_csv,
    "semicolon-cp1252-decimal-comma.csv": lambda p: off.spreadsheet_csv(p, ";", "cp1252", decimal_comma=True),
    "utf16.tsv": off.utf16_tsv,
    "off.jsonl": off.off_jsonl,
    "off.jsonl.gz": lambda p: off.off_jsonl(p, gz=True),
    "off.jsonl.zst": lambda p: off.off_jsonl(p, zst=True),
    "off.parquet": off.off_parquet,
    "off.parquet.zst": lambda p: off.off_parquet(p, zst=True),
}


@pytest.mark.parametrize("name", WRITERS)
def test_every_export_flavour_gives_the_same_products(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    card = build_dataset([path], tmp_path / "out")
    assert card["per_class"] == off.EXPECTED_KEPT
    expected_dropped = dict(off.EXPECTED_DROPPED)
    if "parquet" in name:
        # Parquet has no ragged rows, and its integer additives_n cannot hold 1.5: that value is absent.
        expected_dropped.update(ragged_row=0, fractional_additives=0, missing_additives=2)
    assert card["dropped"] == expected_dropped
    assert card["sources"][0]["rows"] == len(off.PRODUCTS) + (0 if "parquet" in name else 1)
    rows = []
    for split in ("train", "val", "test"):
        header, *body = csv.reader((tmp_path / "out" / f"{split}.csv").read_text().splitlines())
        assert header == ["label", "protein", "carbs", "fat", "additives", "sugars", "saturated_fat", "salt", "fiber", "energy", "source",
                          "code", "name"]
        rows += body
    assert sorted(",".join(row[:10]) for row in rows) == sorted(off.EXPECTED_ROWS)
    assert {row[10] for row in rows} == {name}
    assert all(row[11] for row in rows)  # the barcode, as the export holds it (mangled by spreadsheets)
    # The product's name, as the export gives it (the spreadsheet's quoted cell with a newline: one line).
    assert sorted(row[12] for row in rows) in (sorted(["Pâte \"à\" tartiner", "Cola", "Jambon", "Yaourt"]),
                                               sorted(["Pâte à tartiner", "Cola", "Jambon", "Yaourt"]),
                                               sorted(["Pâte à tartiner", "Cola", "Jambon, cuit supérieur", "Yaourt"]))


def test_format_detection(tmp_path):
    assert sniff(off.off_tsv(tmp_path / "a.tsv")).describe() == "tab-separated, utf-8"
    assert sniff(off.off_tsv(tmp_path / "a.gz", gz=True)).describe() == "tab-separated, utf-8, gzip"
    assert sniff(off.spreadsheet_csv(tmp_path / "b.csv", ";", "cp1252")).describe() == "semicolon-separated, quoted, cp1252"
    assert sniff(off.utf16_tsv(tmp_path / "c.tsv")).describe() == "tab-separated, utf-16"
    assert sniff(off.off_jsonl(tmp_path / "d.jsonl")).describe() == "JSONL"
    assert sniff(off.off_jsonl(tmp_path / "d.bin", zst=True)).describe() == "JSONL, zstd"
    assert sniff(off.off_parquet(tmp_path / "e.data")).describe() == "Parquet"
    assert sniff(off.off_parquet(tmp_path / "e.zst", zst=True)).describe() == "Parquet, zstd"


def test_build_writes_training_files_datacard_and_readme(tmp_path):
    card = build_dataset([off.off_tsv(tmp_path / "a.tsv")], tmp_path / "out")
    assert set(os.listdir(tmp_path / "out")) == {"train.csv", "val.csv", "test.csv", "datacard.json", "README.md"}
    assert json.loads((tmp_path / "out" / "datacard.json").read_text()) == card
    assert card["sources"][0]["sha256"] == __import__("hashlib").sha256((tmp_path / "a.tsv").read_bytes()).hexdigest()
    assert sum(card["splits"].values()) == card["rows_kept"] == 4
    readme = (tmp_path / "out" / "README.md").read_text()
    assert card["sources"][0]["sha256"] in readme and "nutrients_sum_over_105" in readme
    from foodcls.data import read_labelled_csv

    assert len(read_labelled_csv(tmp_path / "out" / "train.csv")) == card["splits"]["train"]


def test_gzip_source_is_hashed_as_stored(tmp_path):
    path = off.off_tsv(tmp_path / "a.tsv.gz", gz=True)
    card = build_dataset([path], tmp_path / "out")
    assert card["sources"][0]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_duplicates_across_sources_are_dropped(tmp_path):
    first = off.utf16_tsv(tmp_path / "a.tsv")
    second = off.spreadsheet_csv(tmp_path / "b.csv", multiline_cell=False)
    card = build_dataset([first, second], tmp_path / "out")
    assert card["per_class"] == off.EXPECTED_KEPT
    # Good barcodes match by code; the mangled ones (3.02E+12) by name + brand + nutrients.
    assert card["dropped"]["duplicate"] == 1 + 1 + 4  # within each file, then all four across files


def test_not_an_export_names_the_file_and_what_is_missing(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("name,price\napple,1\n")
    with pytest.raises(DataError, match=r"x.csv: not an Open Food Facts export: no code, categories_tags, proteins_100g"):
        build_dataset([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_is_a_stable_function_of_the_key():
    fractions = parse_split("0.8,0.1,0.1")
    keys = [f"code:{i}" for i in range(5000)]
    splits = Counter(split_of(k, fractions) for k in keys)
    assert abs(splits["train"] / 5000 - 0.8) < 0.03 and abs(splits["test"] / 5000 - 0.1) < 0.03
    assert [split_of(k, fractions) for k in keys] == [split_of(k, fractions) for k in keys]


def test_more_data_never_moves_a_product_between_splits(tmp_path):
    small = build_dataset([off.off_tsv(tmp_path / "a.tsv")], tmp_path / "small")
    off.off_jsonl(tmp_path / "b.jsonl")
    extra = tmp_path / "extra.tsv"
    extra.write_text("\t".join(off.HEADER) + "\n" + "\n".join(
        "\t".join([f"4{i:012d}", "u", f"P{i}", "B", "en:meats", "1", "5", "", "1", "20", "", "", "", "", ""]) for i in range(200)) + "\n")
    build_dataset([extra, tmp_path / "a.tsv"], tmp_path / "big")
    for split in ("train", "val", "test"):
        before = set((tmp_path / "small" / f"{split}.csv").read_text().splitlines()[1:])
        after = set((tmp_path / "big" / f"{split}.csv").read_text().splitlines()[1:])
        assert before <= after
    assert small["rows_kept"] == 4


def test_bad_split_and_rules_are_refused(tmp_path):
    for text in ("0.8,0.1", "0.8,0.3,0.1", "a,b,c", "0,0.5,0.5"):
        with pytest.raises(ConfigError, match="--split"):
            parse_split(text)
    rules = tmp_path / "rules.yaml"
    for text, message in [
        ("classes:\n  cakes: [en:cakes]\n", "classes: expected a list of at least two class names"),
        ("classes:\n  cakes: [en:cakes]\n  pies: [en:pies]\n  cakes: [en:tarts]\n", r":4: cakes: named twice"),
        ("classes:\n  cakes: [en:cakes]\n  other: [en:pies]\n", "classes.other: reserved"),
        ("classes:\n  Cakes: [en:cakes]\n  pies: [en:pies]\n", "class name 'Cakes': expected a lowercase word"),
        ("classes:\n  cakes: [en:cakes]\n  pies: []\n", "classes.pies: expected a non-empty list"),
        ("classes:\n  cakes: [en:cakes]\n  pies: [en:pies]\nother: yes please\n", "other: expected true or false"),
        ("classes:\n  cakes: [en:cakes]\n  pies: [en:pies]\nnear: en:tarts\n", "near: expected a list of category tags"),
    ]:
        rules.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_rules(rules)
    rules.write_text("classes:\n  cakes: [en:cakes]\nother: true\n")
    assert load_rules(rules).names == ("cakes", "other")  # one class and the rest


def test_precedence_resolves_ambiguous_products(tmp_path):
    rules = tmp_path / "rules.yaml"
    text = (REPO / "foodcls" / "offdata" / "rules.yaml").read_text().replace("precedence: []", "precedence: [desserts, snacks]")
    rules.write_text(text)
    card = build_dataset([off.off_tsv(tmp_path / "a.tsv")], tmp_path / "out", rules_path=rules)
    assert card["dropped"]["ambiguous_class"] == 0
    assert card["per_class"]["desserts"] == 2


def test_a_short_first_data_line_is_counted_as_ragged_not_fatal(tmp_path):
    # Regression: polars refused a TSV whose first data line had fewer fields than the header.
    path = tmp_path / "short.tsv"
    path.write_text("\t".join(off.HEADER) + "\n" + "\t".join(off.RAGGED) + "\n" + "\t".join(off._rows()[0]) + "\n")
    stats = SourceStats(path)
    batches = list(read_export(path, stats))
    # The ragged line is counted and left out of the batches; the well-formed one is the one product read.
    assert stats.ragged == 1 and stats.rows == 2 and sum(len(b) for b in batches) == 1


def test_ragged_rows_are_counted_not_fatal(tmp_path):
    stats = SourceStats(Path("x"))
    path = off.off_tsv(tmp_path / "a.tsv")
    list(read_export(path, stats))
    assert stats.ragged == 1 and stats.rows == len(off.PRODUCTS) + 1


def test_a_kj_figure_copied_into_the_kcal_field_is_converted_where_the_macros_say_kj(tmp_path):
    # A spreadsheet-resaved sample gives a juice's 59 kJ as energy-kcal_100g too; 0/3.6/0 g make 14.4 kcal.
    header = ["code", "product_name", "categories_tags", "additives_n", "proteins_100g", "carbohydrates_100g", "fat_100g",
              "energy-kcal_100g", "energy_100g"]
    rows = [
        ["1000000000001", "Jus", "en:beverages", "0", "0", "3.64", "0", "59", "59"],  # kJ in both: 59 / 4.184 kcal
        ["1000000000002", "Biscuit", "en:snacks", "1", "6", "57", "31", "500", "500"],  # kcal in both: the macros say 531
        ["1000000000003", "Soda", "en:beverages", "2", "0", "10.6", "0", "43", "180"],  # two figures: kcal as given
        ["1000000000004", "Eau", "en:beverages", "0", "0", "0", "0", "0", "0"],  # nothing to decide
    ]
    path = tmp_path / "copied.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    card = build_dataset([path], tmp_path / "out")
    energy = {code: row["energy"] for code, row in _built_products(tmp_path / "out").items()}
    assert energy == {"1000000000001": "14.1013", "1000000000002": "500", "1000000000003": "43", "1000000000004": "0"}
    assert card["corrected"] == {"energy_kj_as_kcal": 1}
    assert "energy_kj_as_kcal | 1" in (tmp_path / "out" / "README.md").read_text()


from tests.conftest import SAMPLES, needs_samples  # noqa: E402


@needs_samples
def test_real_samples_build(tmp_path):
    sources = sorted(SAMPLES.glob("off-*"))
    assert len(sources) == 11
    card = build_dataset(sources, tmp_path / "off")
    formats = {Path(s["path"]).name: s["format"] for s in card["sources"]}
    assert formats["off-2026-products.parquet"] == "Parquet" and formats["off-2026-raw100.jsonl"] == "JSONL"
    assert all(source["rows"] >= 100 for source in card["sources"])
    assert 1300 <= card["rows_kept"] <= 1600
    assert card["per_class"]["desserts"] >= 30 and min(card["per_class"].values()) >= 30
    assert card["dropped"]["duplicate"] > 0 and card["dropped"]["no_class"] > 0 and card["dropped"]["ragged_row"] >= 1
    assert set(card["dropped"]) == set(off.EXPECTED_DROPPED)
    # One sample gives kJ figures as kcal too (on 124 products, 2026-12); protein, carbs and fat unmask them.
    assert 100 <= card["corrected"]["energy_kj_as_kcal"] <= 150
    # The richer nutrients are known for most kept products.
    assert card["known_values"]["sugars"] > 0.9 * card["rows_kept"] and card["known_values"]["energy"] > 0.9 * card["rows_kept"]


def _built_products(out: Path) -> dict[str, dict[str, str]]:
    products = {}
    for split in ("train", "val", "test"):
        with open(out / f"{split}.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                products[row["code"]] = {**row, "split": split}
    return products


@needs_samples
def test_parquet_export_keeps_every_product_the_tsv_export_keeps(tmp_path):
    # The same 1,000 products in both formats; the TSV lacks many nutrient values the Parquet file has.
    from_tsv = build_dataset([SAMPLES / "off-2026-products.tsv"], tmp_path / "tsv")
    from_parquet = build_dataset([SAMPLES / "off-2026-products.parquet"], tmp_path / "parquet")
    tsv, parquet = _built_products(tmp_path / "tsv"), _built_products(tmp_path / "parquet")
    assert 25 <= len(tsv) <= 50 and 200 <= len(parquet) <= 300
    assert from_tsv["rows_read"] == from_parquet["rows_read"] == 1000
    for code, row in tsv.items():
        assert code in parquet, f"{code} kept from the TSV but not from the Parquet file"
        for column, value in row.items():
            if column == "name":  # the Parquet file has the generic name too, after the product's name
                assert parquet[code][column].startswith(value), code
            elif column != "source" and value != "":  # the Parquet file knows at least what the TSV knows
                assert parquet[code][column] == value, (code, column)


@needs_samples
def test_jsonl_dump_sample_is_read(tmp_path):
    card = build_dataset([SAMPLES / "off-2026-raw100.jsonl"], tmp_path / "out")
    assert card["rows_read"] == 100 and card["sources"][0]["format"] == "JSONL"
    assert card["dropped"]["no_class"] > 50 and card["rows_kept"] >= 1


def test_build_refuses_to_replace_a_directory_that_is_not_a_build_output_and_touches_nothing(tmp_path):
    from typer.testing import CliRunner

    from foodcls.cli import app

    source = off.off_tsv(tmp_path / "a.tsv")
    mine = tmp_path / "data"
    (mine / "demo").mkdir(parents=True)
    (mine / "demo" / "train.csv").write_text("beverages,1,2,3,0\n")
    (mine / "notes.txt").write_text("keep me\n")
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    result = CliRunner().invoke(app, ["data", "build", str(source), "--out", str(mine)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"--out {mine}: not the output of a previous `foodcls data build`" in result.output and "--force" in result.output
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before
    assert (mine / "notes.txt").read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")] in ([], [".data.lock"])  # no staging left

    rebuilt = tmp_path / "off"
    build_dataset([source], rebuilt)
    build_dataset([source], rebuilt)  # a previous build's output is replaced as before
    empty = tmp_path / "empty"
    empty.mkdir()
    build_dataset([source], empty)  # an empty directory holds nothing to lose
    result = CliRunner().invoke(app, ["data", "build", str(source), "--out", str(mine), "--force"])
    assert result.exit_code == 0, result.output
    assert not (mine / "notes.txt").exists() and (mine / "datacard.json").exists()


@pytest.mark.parametrize("kind", ["tsv", "tsv.gz", "jsonl", "utf16"])
def test_an_export_without_newlines_is_refused_once_a_line_passes_16_mb(tmp_path, kind):
    import gzip

    from foodcls.offdata.sniff import MAX_LINE_BYTES

    header = "code\tcategories_tags\tproteins_100g\tcarbohydrates_100g\tfat_100g\tadditives_n\n"
    endless = "1\ten:snacks\t" + "9" * (MAX_LINE_BYTES + (1 << 20))  # one line past the bound, no newline
    path = tmp_path / f"export.{kind}"
    if kind == "tsv":
        path.write_bytes((header + endless).encode())
    elif kind == "tsv.gz":
        path.write_bytes(gzip.compress((header + endless).encode(), compresslevel=1))
    elif kind == "utf16":
        path.write_bytes((header + endless).encode("utf-16"))
    else:
        path.write_bytes(('{"code": "1", "categories_tags": ["en:snacks"], "x": "' + "9" * (MAX_LINE_BYTES + (1 << 20))).encode())
    with pytest.raises(DataError, match=rf"^{path}: a line longer than 16 MB \(no newline\)"):
        build_dataset([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_schema_1003_products_are_read_from_the_aggregated_set_with_units_and_fallbacks():
    from foodcls.offdata.jsonl import product_row

    def product(per="100g", preparation="as_sold", **nutrients):
        return {"code": "1", "categories_tags": ["en:snacks"], "additives_n": 1, "schema_version": 1003, "nutriments": {"fiber_100g": 2.5},
                "nutrition": {"aggregated_set": {"per": per, "preparation": preparation, "nutrients": nutrients}}}

    row = product_row(product(proteins={"value": 8, "unit": "g"}, salt={"value": 450, "unit": "mg"},
                              energy={"value": 2524, "unit": "kJ"}, **{"energy-kcal": {"value": 617, "unit": "kcal"}}))
    assert (row["protein"], row["salt"], row["energy_kj"], row["energy_kcal"], row["fiber"]) == ("8.0", "0.45", "2524.0", "617.0", "2.5")
    assert product_row(product(per="100ml", proteins={"value": 1, "unit": "g"}))["protein"] == "1.0"  # as the _100g fields hold liquids
    assert product_row(product(per="serving", proteins={"value": 1, "unit": "g"}))["protein"] is None
    assert product_row(product(preparation="prepared", proteins={"value": 1, "unit": "g"}))["protein"] is None
    assert product_row({"code": "2", "nutriments": {"proteins_100g": 3}})["protein"] == "3"  # the legacy schema as before


@needs_samples
def test_the_shared_jsonl_samples_schema_1003_products_keep_their_nutrients(tmp_path):
    import json as json_module

    from foodcls.offdata.jsonl import product_row

    products = [json_module.loads(line) for line in (SAMPLES / "off-2026-raw100.jsonl").read_text().splitlines() if line.strip()]
    new_schema = [p for p in products if p.get("schema_version") == 1003]
    assert len(new_schema) == 25
    for p in new_schema:
        proteins = p["nutrition"]["aggregated_set"]["nutrients"].get("proteins")
        assert float(product_row(p)["protein"]) == proteins["value"]
    card = build_dataset([SAMPLES / "off-2026-raw100.jsonl"], tmp_path / "out")
    # 11 products were dropped as missing_protein when only `nutriments` was read; now only those that
    # have no protein figure in either schema, and the 1003 products without an additive count say so.
    assert card["dropped"]["missing_protein"] == 5 and card["dropped"]["missing_additives"] == 5


def test_compensating_tab_errors_in_one_block_are_both_ragged_never_shifted(tmp_path):
    # Reliability row 2: one line with a tab too many and one with a tab too few gave the block the right
    # total, and both products were kept with shifted columns (protein read from the next field).
    rows = off._rows()
    extra = list(rows[3])  # the ham: protein 20
    extra.insert(2, "a stray field")
    short = list(rows[0])
    del short[7]  # the spread loses its -lactose_100g cell: everything after it moves left
    path = tmp_path / "shifted.tsv"
    lines = ["\t".join(off.HEADER), "\t".join(rows[1]), "\t".join(extra), "\t".join(short), "\t".join(rows[4])]
    path.write_text("\n".join(lines) + "\n")
    stats = SourceStats(path)
    frame = pl.concat(list(read_export(path, stats)))
    assert stats.ragged == 2 and stats.rows == 4
    assert frame["code"].to_list() == [rows[1][0], rows[4][0]]
    # With keep_invalid the two lines stay in their places, as rows that say which line and why.
    kept = pl.concat(list(read_export(path, SourceStats(path), keep_invalid=True)))
    assert kept["code"].to_list() == [rows[1][0], None, None, rows[4][0]]
    assert kept["invalid_line"].to_list() == [None, f"ragged line 3: {len(off.HEADER) + 1} fields, expected {len(off.HEADER)}",
                                              f"ragged line 4: {len(off.HEADER) - 1} fields, expected {len(off.HEADER)}", None]
    assert kept["row"].to_list() == [0, 1, 2, 3]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=40), st.integers(0, 300), st.booleans())
def test_tabs_are_counted_exactly_per_line_whatever_the_expected_count(tabs, expected, crlf):
    """tabs_per_line's 8-bit count (modulo 256, then checked against the block's total) gives every line's
    exact count: lines with the expected count, with 256 or 512 more (the same modulo 256), fewer, and blank
    ones; and the 16-bit count gives the same."""
    from foodcls.offdata.read import tabs_per_line

    lines = [expected + 256 * (t % 3) if t % 5 == 0 else t for t in tabs]  # many lines at expected + 256·j
    lines = [expected if t % 7 == 1 else n for t, n in zip(tabs, lines)]
    block = b"".join((b"x\t" * n + b"y" + (b"\r" if crlf else b"") + b"\n") if n or t % 2 else b"\n" for t, n in zip(tabs, lines))
    exact = [line.count(b"\t") for line in block.split(b"\n")[:-1]]
    assert tabs_per_line(block, expected).tolist() == exact
    assert tabs_per_line(block).tolist() == exact


def test_the_build_keeps_no_product_of_a_line_with_shifted_fields(tmp_path):
    rows = off._rows()
    extra, short = list(rows[3]), list(rows[0])
    extra.insert(2, "x")
    del short[7]
    path = tmp_path / "shifted.tsv"
    path.write_text("\n".join(["\t".join(off.HEADER), "\t".join(extra), "\t".join(short), "\t".join(rows[1])]) + "\n")
    card = build_dataset([path], tmp_path / "out")
    assert card["dropped"]["ragged_row"] == 2 and card["rows_kept"] == 1
    assert card["per_class"] == {"beverages": 1, "meats": 0, "snacks": 0, "desserts": 0}


def test_ragged_quoted_csv_and_json_lines_are_kept_as_invalid_rows_when_asked(tmp_path):
    csv_path = off.spreadsheet_csv(tmp_path / "a.csv")  # its last row is ragged (off.RAGGED)
    frame = pl.concat(list(read_export(csv_path, SourceStats(csv_path), keep_invalid=True)))
    assert frame["invalid_line"].to_list()[-1] == f"ragged line {len(off.PRODUCTS) + 3}: 3 fields, expected {len(off.HEADER)}"
    assert frame["invalid_line"].null_count() == len(off.PRODUCTS) and frame["code"][-1] is None
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"code": "1", "categories_tags": ["en:meats"]}\n\nnot json\n{"code": "2"}\n')
    stats = SourceStats(jsonl)
    frame = pl.concat(list(read_export(jsonl, stats, keep_invalid=True)))
    assert frame["code"].to_list() == ["1", None, "2"]
    assert frame["invalid_line"].to_list() == [None, "line 3: not a product's JSON object", None]
    assert stats.ragged == 1 and stats.rows == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=32), min_size=1, max_size=40), st.sampled_from(["nested", "flat"]))
def test_parquet_float32_values_are_read_as_their_text_would_be(values, layout):
    # A float32 is read as its shortest decimal (12.3, not 12.300000190734863): the value a text export of the same
    # product gives; NaN and infinities are unknown, as in text. (Taking the float32 as it is fails this.)
    import numpy as np

    from foodcls.offdata.clean import with_nutrients
    from foodcls.offdata.parquet import column_expressions

    n = len(values)
    text = {"code": [str(i) for i in range(n)], "categories_tags": [None] * n, "product_name": [None] * n,
            "generic_name": [None] * n, "brands": [None] * n}
    if layout == "nested":
        entry = pl.Struct({"name": pl.String, "100g": pl.Float32})
        nutriments = [[{"name": "proteins", "100g": v}, {"name": "energy-kcal", "100g": v}] for v in values]
        frame = pl.DataFrame({**text, "nutriments": nutriments, "additives_n": list(range(n))},
                             schema_overrides={"nutriments": pl.List(entry)})
    else:
        frame = pl.DataFrame({**text, "proteins_100g": values, "energy-kcal_100g": values, "additives_n": list(range(n))},
                             schema_overrides={"proteins_100g": pl.Float32, "energy-kcal_100g": pl.Float32})
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias(c) for c in ("carbohydrates_100g", "fat_100g"))
    read = frame.lazy().select(column_expressions(dict(frame.schema), Path("x.parquet"), ("code", "protein", "additives")))
    missing = [c for c in ("carbs", "fat", "sugars", "saturated_fat", "salt", "fiber", "energy_kj")
               if c not in read.collect_schema()]
    nutrients = with_nutrients(read.with_columns(pl.lit(None, pl.String).alias(c) for c in missing)).collect()
    expected = [float(str(np.float32(v))) if np.isfinite(v) else None for v in values]
    assert nutrients["protein"].to_list() == expected
    assert nutrients["energy"].to_list() == expected  # energy-kcal, the same road
    assert nutrients["additives"].to_list() == [float(i) for i in range(n)]


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_reading_keeps_large_blocks_on_the_heap_for_the_next_one():
    # Each 32 MB block had pages of its own (mmap), faulted in and zeroed anew: most of reading's system time.
    # After reuse_freed_blocks, such a block comes from the heap, and stays there once freed for the next.
    import ctypes

    from foodcls.offdata.streams import reuse_freed_blocks

    class MallocInfo(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallocInfo
    assert reuse_freed_blocks()
    mapped = libc.mallinfo2().hblkhd
    block = bytes(40 << 20)
    assert libc.mallinfo2().hblkhd == mapped  # not a mapping of its own
    del block
    assert libc.mallinfo2().fordblks >= 40 << 20  # freed, and kept


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1200), st.integers(1, 6000)), min_size=0, max_size=4))
def test_line_ends_are_every_line_end_whatever_the_lengths(runs):
    # Runs of lines of one length each: long ones (bytes.find's road), then perhaps thousands of short ones (the
    # switch to numpy's road, every 4,096 lines), in any order; blank lines too.
    import numpy as np

    from foodcls.offdata.read import line_ends

    block = b"".join((b"x\t" * (length // 2) + b"y" * (length % 2) + b"\n") * count for length, count in runs)
    raw = np.frombuffer(block, dtype=np.uint8)
    assert line_ends(block, raw).tolist() == np.flatnonzero(raw == ord("\n")).tolist()
