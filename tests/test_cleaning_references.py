"""Cleaning references, on hand-made export rows with each figure worked out by hand: the kJ figure copied into the
kcal field (the 4 / 4 / 9 kcal per gram of the macros at their edge), each plausibility limit exactly at its
value and just over it, the duplicate keys (leading zeros, empty and all-zero barcodes, nameless products), and
which checks apply to a model's features (issue 30: references that are not the code under test)."""

from __future__ import annotations

import csv

import numpy as np

import polars as pl
import pytest

from foodcls.features import KJ_PER_KCAL

HEADER = ["code", "product_name", "brands", "categories_tags", "proteins_100g", "carbohydrates_100g", "fat_100g", "additives_n",
          "energy-kcal_100g", "energy_100g"]


def build(tmp_path, rows, rules=None):
    """data build --other of rows (code, name, brand, tags, protein, carbs, fat, additives, kcal, kJ): (the kept
    rows, the datacard)."""
    from foodcls.offdata.build import build_dataset

    export = tmp_path / "hand.tsv"
    export.write_text("\t".join(HEADER) + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    card = build_dataset([export], tmp_path / "out", rules_path=rules, other=True)
    kept = [row for split in ("train", "val", "test")
            for row in csv.DictReader((tmp_path / "out" / f"{split}.csv").read_text(encoding="utf-8").splitlines())]
    return kept, card


def test_a_kj_figure_copied_into_the_kcal_field_is_read_as_kj_only_above_the_root_of_4_184_times_the_macros(tmp_path):
    # The macros' energy, 4·protein + 4·carbs + 9·fat; the copied figure V is kJ when V > √4.184 · that (2.0455·).
    rows = [
        ("1", "p", "", "en:meats", 10, 0, 0, 0, 90, 90),        # 40 kcal of protein: 90 > 81.8 → kJ (5 /g: 102.3, kcal)
        ("2", "c", "", "en:beverages", 0, 10, 0, 0, 90, 90),    # 40 of carbs: the same
        ("3", "f", "", "en:snacks", 0, 0, 10, 0, 190, 190),     # 90 of fat: 190 > 184.1 → kJ (10 /g: 204.6, kcal)
        ("4", "k", "", "en:beverages", 0, 30, 0, 0, 200, 200),  # 120 of carbs: 200 < 245.5 → kcal
        ("5", "w", "", "en:beverages", 0, 0, 0, 0, 1, 1),       # water: 1 > 0 → kJ, 0.239 kcal
        ("6", "z", "", "en:beverages", 0, 0, 0, 0, 0, 0),       # nothing at all: 0 kcal
        ("7", "d", "", "en:beverages", 0, 10, 0, 0, 90, 376.56),  # two figures: the kcal one
        ("8", "j", "", "en:beverages", 0, 10, 0, 0, "", 376.56),  # the kJ one only: ÷ 4.184
    ]
    kept, card = build(tmp_path, rows)
    expected = {"1": 90 / KJ_PER_KCAL, "2": 90 / KJ_PER_KCAL, "3": 190 / KJ_PER_KCAL, "4": 200, "5": 1 / KJ_PER_KCAL, "6": 0,
                "7": 90, "8": 90}
    assert {row["code"]: float(row["energy"]) for row in kept} == pytest.approx(expected, abs=1e-4)
    assert card["corrected"] == {"energy_kj_as_kcal": 4}


def test_each_plausibility_limit_keeps_its_own_value_and_drops_what_lies_over_it(tmp_path):
    rows = [
        ("11", "a", "", "en:snacks", 0, 0, 100, 0, 900, ""),          # 100 g of fat and 900 kcal: both at the limit, kept
        ("12", "b", "", "en:snacks", 0, 0, 100.5, 0, 900, ""),        # 100.5 g
        ("13", "c", "", "en:snacks", 0, 0, 99, 0, 900.5, ""),         # 900.5 kcal
        ("14", "d", "", "en:snacks", 5, 50, 20, 100, 400, ""),        # 100 additives, kept
        ("15", "e", "", "en:snacks", 5, 50, 20, 101, 400, ""),        # 101
        ("16", "f", "", "en:snacks", -0.5, 50, 20, 1, 400, ""),
    ]
    kept, card = build(tmp_path, rows)
    assert sorted(row["code"] for row in kept) == ["11", "14"]
    assert {reason: n for reason, n in card["dropped"].items() if n} == {
        "nutrient_over_100": 1, "energy_over_900": 1, "additives_over_100": 1, "negative_value": 1}


def test_duplicates_by_barcode_without_its_leading_zeros_and_by_name_brand_and_nutrients(tmp_path):
    rows = [
        ("0012", "Jus", "B", "en:beverages", 0, 10, 0, 0, 40, ""),
        ("12", "Jus", "B", "en:beverages", 0, 11, 0, 0, 44, ""),       # 0012 again
        ("000", "Zero", "B", "en:beverages", 0, 12, 0, 0, 48, ""),
        ("0", "Zero bis", "B", "en:beverages", 0, 13, 0, 0, 52, ""),   # 000 again: every all-zero code is one
        ("", "Sans code", "B", "en:snacks", 5, 50, 20, 1, 400, ""),
        ("", "Autre", "B", "en:snacks", 5, 50, 20, 1, 400, ""),        # no barcode either, another name: kept
        ("", "Sans code", "B", "en:snacks", 5, 50, 20, 1, 400, ""),    # the same name, brand and nutrients: dropped
        ("8.01E+12", "Autre", "B", "en:snacks", 5, 50, 20, 1, 400, ""),  # a mangled barcode: its content decides
        ("21", "", "C", "en:meats", 20, 1, 10, 1, 170, ""),
        ("22", "", "C", "en:meats", 20, 1, 10, 1, 170, ""),            # nameless, its own barcode: kept
        ("23", "Autre", "B", "en:snacks", 5, 50, 20, 1, 400, ""),      # a good barcode, a named copy: dropped
    ]
    kept, card = build(tmp_path, rows)
    # Kept, in file order: 0012 (12 is it), 000 (0 is it), the two nameless-barcode products by name (the second
    # "Sans code" is the first again; the mangled "Autre" is the first "Autre"), 21 and 22 (no name, so no content
    # key: only their barcodes, which differ); 23 is a good barcode whose name, brand and nutrients were seen.
    assert sorted((row["code"], row["name"]) for row in kept) == [("", "Autre"), ("", "Sans code"), ("000", "Zero"), ("0012", "Jus"),
                                                                  ("21", ""), ("22", "")]
    assert card["dropped"]["duplicate"] == 5


def test_which_checks_a_models_features_bring():
    from foodcls.offdata.clean import value_checks

    def reasons(features, required=("protein", "carbs", "fat", "additives")):
        return [reason for reason, _ in value_checks(features, required)]

    assert reasons(("protein", "carbs", "fat")) == ["missing_protein", "missing_carbs", "missing_fat", "negative_value",
                                                    "nutrient_over_100", "nutrients_sum_over_105"]
    assert reasons(("carbs", "sugars"), required=()) == ["negative_value", "nutrient_over_100", "sugars_over_carbs"]
    assert reasons(("sugars", "fat", "energy"), required=()) == ["negative_value", "nutrient_over_100", "energy_over_900"]


def test_no_categories_is_null_empty_commas_or_en_null():
    from foodcls.offdata.rules import has_categories

    tags = pl.Series("t", [None, "", " , ", "en:null", "en:null, en:null", "en:nullable", "en:juices"])
    assert pl.select(has_categories(pl.lit(tags))).to_series().to_list() == [False, False, False, False, False, True, True]


def test_decimal_commas_and_non_numbers():
    from foodcls.offdata.clean import _number

    frame = pl.DataFrame({"x": [" 1,5 ", "2.25", "abc", "nan", "inf", "", None, "1,2,3", "1.5e1"]})
    values = frame.select(_number("x", pl.String)).to_series().to_list()
    assert values[:2] == [1.5, 2.25] and values[2:8] == [None] * 6 and values[8] == 15.0  # NaN, inf: unknown
    # A column of numbers (the Parquet export's) is taken as it is, NaN and infinities unknown as in text.
    numbers = pl.DataFrame({"x": [1.5, float("nan"), float("inf"), None, -2.0]}, schema={"x": pl.Float32})
    assert numbers.select(_number("x", pl.Float32)).to_series().to_list() == [1.5, None, None, None, -2.0]
    counts = pl.DataFrame({"x": [0, 3, None]}, schema={"x": pl.Int32})
    assert counts.select(_number("x", pl.Int32)).to_series().to_list() == [0.0, 3.0, None]


def test_the_name_joins_a_generic_name_that_says_more_and_cleans_control_characters():
    from foodcls.offdata.clean import product_name

    frame = pl.DataFrame({"product_name": ["Jus", "Jus", "Jus", None, " Sirop\tde\x00fraise ", "Thé"],
                          "generic_name": ["Jus d'orange", "", "JUS", "Boisson", None, "thé"]})
    assert frame.select(product_name()).to_series().to_list() == ["Jus Jus d'orange", "Jus", "Jus", "Boisson", "Sirop de fraise", "Thé"]


def test_the_classified_columns_keep_their_small_types():
    # A build holds a batch of a million rows at a time: a label in one byte, a drop reason in one byte.
    from foodcls.offdata.clean import classify
    from foodcls.offdata.rules import load_rules

    frame = pl.DataFrame({c: ["1"] for c in ("code", "proteins_100g", "carbohydrates_100g", "fat_100g", "additives_n")}
                         | {"categories_tags": ["en:meats"], "product_name": ["x"], "brands": [""]})
    frame = frame.rename({"proteins_100g": "protein", "carbohydrates_100g": "carbs", "fat_100g": "fat", "additives_n": "additives"})
    frame = frame.with_columns(*(pl.lit(None, pl.String).alias(c) for c in ("sugars", "saturated_fat", "salt", "fiber", "energy_kcal",
                                                                              "energy_kj", "generic_name")))
    out = classify(frame, load_rules(other=True))
    assert (out.schema["label"], out.schema["reason"]) == (pl.Int8, pl.UInt8)
    assert out["reason"].to_list() == [0] and out["label"].to_list() == [1]


def test_seen_keys_find_the_largest_key_of_a_level_and_never_round_a_hash():
    from foodcls.offdata.dedup import SeenKeys

    seen = SeenKeys()
    seen.add(np.array([1, 2, 3], np.uint64))
    assert seen.contains(np.array([3, 4, 0, 2], np.uint64)).tolist() == [True, False, False, True]
    big = SeenKeys()
    big.add(np.array([2**63], np.uint64))
    assert big.contains(np.array([2**63, 2**63 + 2], np.uint64)).tolist() == [True, False]  # as float64 they are one
    many = SeenKeys()
    for key in range(1000):
        many.add(np.array([key], np.uint64))
    assert len(many) == 1000 and many.contains(np.arange(1001, dtype=np.uint64)).sum() == 1000
    assert len(many.levels) <= 10  # each level at least twice the next: log2(1000) of them at most


def test_the_datacard_names_the_rules_it_labelled_with(tmp_path):
    from foodcls.offdata.rules import load_rules

    _, card = build(tmp_path, [("1", "Jus", "", "en:beverages", 0, 10, 0, 0, 40, "")])
    rules = load_rules(other=True)
    assert card["rules"] == {"file": rules.source, "classes": {k: list(v) for k, v in rules.classes.items()},
                             "precedence": list(rules.precedence), "other": True, "near": list(rules.near)}
    assert set(card["rules"]["classes"]) == {"beverages", "meats", "snacks", "desserts"} and card["rules"]["near"]


def test_precedence_settles_only_its_own_classes_and_no_near_tags_means_none_is_near(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("classes:\n  beverages: [en:beverages]\n  meats: [en:meats]\n  snacks: [en:snacks]\n  desserts: [en:desserts]\n"
                     "precedence: [desserts, snacks]\nother: true\nnear: []\n", encoding="utf-8")
    rows = [("1", "a", "", "en:snacks,en:desserts", 5, 50, 20, 1, 400, ""),     # desserts first
            ("2", "b", "", "en:beverages,en:meats", 5, 50, 20, 1, 400, ""),     # neither in the precedence: ambiguous
            ("3", "c", "", "en:snacks", 5, 50, 20, 1, 400, ""),
            ("4", "d", "", "en:cheeses", 5, 50, 20, 1, 400, ""),                # other: no near tags to hold it back
            ("5", "e", "", "en:cheeses, ,en:teas", 5, 50, 20, 1, 400, "")]      # an empty tag is no tag
    kept, card = build(tmp_path, rows, rules)
    assert sorted((row["code"], row["label"]) for row in kept) == [("1", "desserts"), ("3", "snacks"), ("4", "other"), ("5", "other")]
    assert {reason: n for reason, n in card["dropped"].items() if n} == {"ambiguous_class": 1}


TWO = "classes: {a: [en:a], b: [en:b]}\n"


@pytest.mark.parametrize(("text", "message"), [
    (None, "rules file not found"),
    ("- a\n- b\n", "a rules file needs a 'classes' mapping of class → list of category tags"),
    ("classes: [a]\n", "a rules file needs a 'classes' mapping of class → list of category tags"),
    (TWO + "colour: red\nzebra: 1\n", r"unknown key 'colour' \(expected classes, precedence, other, near\)"),
    (TWO + "other: yes please\n", "other: expected true or false, got 'yes please'"),
    ("classes: {a: [5], b: [en:b]}\n", "classes.a: expected a non-empty list of category tags"),
    ("classes: {a: [en:a], b: ['  ']}\n", "classes.b: expected a non-empty list of category tags"),
    (TWO + "precedence: [c]\n", r"precedence: expected a list of class names from 'classes', got \['c'\]"),
    (TWO + "near: en:b\n", "near: expected a list of category tags, got 'en:b'"),
])
def test_each_mistake_in_a_rules_file_is_one_line(tmp_path, text, message):
    from foodcls.errors import ConfigError
    from foodcls.offdata.rules import load_rules

    path = tmp_path / "rules.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^" + str(path) + ": " + message + "$"):
        load_rules(path)
    assert set(load_rules().classes) == {"beverages", "meats", "snacks", "desserts"}  # the shipped rules
