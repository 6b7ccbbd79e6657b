"""`foodcls predict --input EXPORT`: a model over an Open Food Facts export, every format, a row out per
product row in, nothing dropped silently."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests import offexports as off
from tests.conftest import REPO, SAMPLES, needs_samples


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_an_export_gets_a_row_per_product_row_with_missing_invalid_and_ragged_rows_said(trained_run, tmp_path):
    export = off.off_tsv(tmp_path / "export.tsv")  # 18 products and a ragged line
    out = tmp_path / "out.csv"
    result = run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", export, "--output", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    rows = _read(out)
    assert len(rows) == len(off.PRODUCTS) + 1 == summary["rows"] == summary["written"]
    assert list(rows[0]) == ["code", "product_name", "categories_tags", "predicted", "p_beverages", "p_meats", "p_snacks",
                             "p_desserts", "decision", "suggest", "reason"]
    by_name = {r["product_name"]: r for r in rows}
    # In the export's order, duplicates kept (the two colas), whatever their categories.
    assert [r["code"] for r in rows[:-1]] == [p[0] for p in off.PRODUCTS]
    assert by_name["Brie"]["decision"] in ("beverages", "meats", "snacks", "desserts") and by_name["Brie"]["reason"] == ""
    assert by_name["Saucisse"]["decision"] == "missing" and by_name["Saucisse"]["reason"] == "missing: missing_protein"
    assert by_name["Thé"]["decision"] == "missing" and by_name["Thé"]["predicted"] == "" and by_name["Thé"]["p_meats"] == ""
    assert by_name["Chips"]["reason"] == "invalid: negative_value" and by_name["Sucre"]["reason"] == "invalid: nutrient_over_100"
    assert by_name["Glace"]["reason"] == "invalid: fractional_additives"
    assert by_name["Chimie"]["reason"] == "invalid: additives_over_100"
    # The four-nutrient model does not read sugars: an inconsistent sugar figure does not stop it.
    assert by_name["Bonbon"]["reason"] == "" and by_name["Bonbon"]["decision"] != "invalid"
    assert rows[-1]["decision"] == "invalid"
    assert rows[-1]["reason"] == f"invalid: ragged line {len(off.PRODUCTS) + 2}: 3 fields, expected {len(off.HEADER)}"
    scored = [r for r in rows if r["reason"] == ""]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in ("beverages", "meats", "snacks", "desserts")) - 1) < 1e-5 for r in scored)
    assert summary["scored"] == len(scored) and summary["missing"] == 3 and summary["invalid"] == len(rows) - len(scored) - 3
    assert summary["reasons"]["invalid: unreadable line"] == 1
    assert sum(summary["predicted"].values()) == summary["scored"]
    assert summary["suggested"] == {"beverages": 0, "meats": 0, "snacks": 0, "desserts": 0}  # no operating point


def test_export_predictions_equal_predict_on_the_same_values(trained_run, tmp_path):
    from foodcls.inference.predict import load_predictor

    export = off.off_tsv(tmp_path / "export.tsv")
    out = tmp_path / "out.csv"
    assert run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", export, "--output", out).returncode == 0
    predictor = load_predictor(trained_run.best_checkpoint)
    ham = next(r for r in _read(out) if r["product_name"] == "Jambon")
    expected = predictor.probabilities([[20, 1, 12, 2]])[0]
    assert [float(ham[f"p_{c}"]) for c in predictor.classes] == pytest.approx(expected.tolist(), abs=1e-6)


def test_allow_missing_fills_a_required_nutrient_and_counts_it(trained_run, tmp_path):
    export = off.off_tsv(tmp_path / "export.tsv")
    out = tmp_path / "out.csv"
    result = run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", export, "--output", out, "--json", "--allow-missing")
    summary = json.loads(result.stdout)
    saucisse = next(r for r in _read(out) if r["product_name"] == "Saucisse")
    assert saucisse["decision"] != "missing" and saucisse["predicted"] != ""
    assert summary["missing"] == 0 and summary["filled"]["protein"] == 1 and summary["filled"]["additives"] == 1


def test_uncategorised_writes_only_products_without_categories(trained_run, tmp_path):
    rows = off._rows()
    rows[3][4] = ""  # the ham has no categories
    rows[4][4] = "en:null"  # the yogurt only OFF's placeholder for none
    export = tmp_path / "export.tsv"
    export.write_text("\n".join(["\t".join(off.HEADER), *("\t".join(r) for r in rows), "\t".join(off.RAGGED)]) + "\n")
    out = tmp_path / "out.csv"
    result = run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", export, "--output", out, "--uncategorised", "--json")
    assert result.returncode == 0, result.stderr
    written = _read(out)
    assert [r["product_name"] for r in written] == ["Jambon", "Yaourt"]
    summary = json.loads(result.stdout)
    assert summary["rows"] == len(rows) + 1 and summary["written"] == 2 and summary["uncategorised"] == 3  # the ragged line too


def test_bad_exports_and_options_are_one_line_errors_with_nothing_written(trained_run, tmp_path):
    no_nutrients = tmp_path / "bare.tsv"
    no_nutrients.write_text("code\tproduct_name\tcategories_tags\n1\tx\ten:meats\n")
    cases = [
        (["--input", no_nutrients], "no proteins_100g, carbohydrates_100g, fat_100g, additives_n column"),
        (["--input", off.off_tsv(tmp_path / "e.tsv"), "--precision", "1.5"], "--precision 1.5: expected a precision within 0-1"),
        (["--input", off.off_tsv(tmp_path / "e.tsv"), "--precision", "0.9"], "--precision: this checkpoint holds no calibration rows"),
        (["--input", tmp_path / "nowhere.tsv"], "nowhere.tsv: file not found"),
        (["--input", off.off_tsv(tmp_path / "e.tsv"), "--json"], "--json prints the summary on stdout: give --output FILE"),
    ]
    for args, message in cases:
        out = tmp_path / "out.csv"
        result = run_cli("predict", "--checkpoint", trained_run.run_dir, *args, *([] if "--json" in args else ["--output", out]))
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not out.exists()


def test_a_gzipped_jsonl_export_with_a_broken_line_is_read_whole(trained_run, tmp_path):
    lines = [json.dumps({"code": "1", "product_name": "Jambon", "categories_tags": ["en:meats"],
                         "nutriments": {"proteins_100g": 20, "carbohydrates_100g": 1, "fat_100g": 12}, "additives_n": 2}),
             "{not json", json.dumps({"code": "2", "product_name": "Eau"})]
    export = tmp_path / "dump.jsonl.gz"
    export.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out = tmp_path / "out.csv"
    assert run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", export, "--output", out).returncode == 0
    rows = _read(out)
    assert [r["decision"] for r in rows][1:] == ["invalid", "missing"] and rows[0]["predicted"] != ""
    assert rows[1]["reason"] == "invalid: line 2: not a product's JSON object"


def _product_rows(path: Path) -> int:
    """An export's product rows, counted independently of foodcls's readers."""
    if path.suffix == ".parquet":
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    if path.suffix == ".jsonl":
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    raw = path.read_bytes()
    text = raw.decode("utf-16") if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else raw.decode("utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    separator = max(("\t", ",", ";"), key=first.count)
    return sum(1 for row in csv.reader(text.splitlines()[1:] if separator == "\t" else text.splitlines(True)[1:],
                                       delimiter=separator, **({"quoting": csv.QUOTE_NONE} if separator == "\t" else {}))
               if any(cell.strip() for cell in row))


@needs_samples
def test_every_shared_export_gets_a_row_per_product_row(trained_run, tmp_path):
    exports = sorted(SAMPLES.glob("off-*"))
    assert len(exports) == 11
    for export in exports:
        out = tmp_path / f"{export.name}.csv"
        result = run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", export, "--output", out, "--json")
        assert result.returncode == 0, (export.name, result.stderr)
        summary = json.loads(result.stdout)
        rows = _read(out)
        assert len(rows) == summary["rows"] == _product_rows(export), export.name
        assert summary["scored"] + summary["missing"] + summary["invalid"] == summary["rows"]
        assert {r["decision"] for r in rows} <= {"beverages", "meats", "snacks", "desserts", "missing", "invalid"}
        assert summary["scored"] > 0, export.name
