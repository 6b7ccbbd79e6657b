"""What a new user tripped over: each has its test (the default checkpoint, --help, --allow-missing, narrow
and piped tables, out-of-class files, kJ for kcal, a class no row teaches, and the smaller ones)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from foodcls.cli import app
from tests.conftest import REPO, write_config


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO,
                          env={**os.environ, **(env or {})})


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
        else:
            out.append(((*prefix, name), command))
    return out


def test_every_default_and_bracket_of_every_help_survives():
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        text = " ".join(run_cli(*path, "--help", env={"COLUMNS": "200"}).stdout.split())
        for param in command.params:
            help_text = " ".join((getattr(param, "help", None) or "").split())
            for bracketed in re.findall(r"\[[^\]]*\]", help_text):
                assert bracketed in text, (path, param.name, bracketed)
                checked += 1
            if getattr(param, "show_default", False) and param.default not in (None, False, ()) and not getattr(param, "is_flag", False):
                assert "[default: " in text, (path, param.name)
    assert checked >= 8  # --checkpoint, --data, --min-confidence, --output, --study, --space's [low, high]…


def test_the_default_checkpoint_is_the_newest_finished_run_and_says_so(config_file, tmp_path):
    runs = tmp_path / "runs"
    first = json.loads(run_cli("train", "--config", config_file, "--runs-root", runs, "--json").stdout)
    pruned = json.loads(run_cli("train", "--config", config_file, "--runs-root", runs, "--json").stdout)
    summary = Path(pruned["run_dir"]) / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "pruned"}))
    (tmp_path / "work").mkdir()
    shutil.move(str(runs), tmp_path / "work" / "runs")
    result = run_cli("predict", "--protein", 20, "--carbs", 1, "--fat", 12, "--additives", 2, cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    chosen = Path(first["run_dir"]).name
    assert f"using runs/{chosen}/checkpoints/best.safetensors (the newest finished run's best checkpoint)" in result.stderr
    assert Path(pruned["run_dir"]).name not in result.stderr


def test_allow_missing_means_one_thing_for_one_product_a_csv_and_serve(tmp_path):
    from fastapi.testclient import TestClient

    from foodcls.serve.app import create_app
    from foodcls.training.fit import train
    from foodcls.config import load_config
    from foodcls.synth import write_demo_set

    data = tmp_path / "rich"
    write_demo_set(data, n_train=300, n_test=100, seed=5, rich=True)
    config = load_config(write_config(tmp_path / "c.yaml", data), ["data.features=[protein,carbs,fat,additives,sugars,salt]"])
    run = train(config, runs_root=tmp_path / "runs", name="r")
    # An optional nutrient may be unknown everywhere: filled, and said in the same words.
    single = run_cli("predict", "--checkpoint", run.run_dir, "--protein", 20, "--carbs", 1, "--fat", 12, "--additives", 2,
                     "--salt", 2, "--json")
    assert single.returncode == 0, single.stderr
    assert "unknown sugars (filled with the training median" in single.stderr
    batch = tmp_path / "batch.csv"
    batch.write_text("protein,carbs,fat,additives,salt\n20,1,12,2,2\n3,14,3,,0.1\n")  # no sugars column; an additive count empty
    refused = run_cli("predict", "--checkpoint", run.run_dir, "--input", batch)
    assert refused.returncode == 1 and "additives is empty (it is required)" in refused.stderr
    filled = run_cli("predict", "--checkpoint", run.run_dir, "--input", batch, "--allow-missing")
    assert filled.returncode == 0, filled.stderr
    assert "unknown additives in 1 of 2 rows (filled with the training median" in filled.stderr
    assert "unknown sugars in 2 of 2 rows (filled with the training median" in filled.stderr
    client = TestClient(create_app(run.best_checkpoint), base_url="http://127.0.0.1")
    answer = client.post("/predict", json={"protein": 20, "carbs": 1, "fat": 12, "additives": 2, "salt": 2})
    assert answer.status_code == 200 and any(w.startswith("unknown sugars (filled with the training median") for w in answer.json()["warnings"])
    assert client.post("/predict", json={"protein": 20, "carbs": 1, "fat": 12}).status_code == 422  # a required one: unless allowed
    assert client.post("/predict", json={"protein": 20, "carbs": 1, "fat": 12, "allow_missing": True}).status_code == 200


def test_narrow_and_piped_tables_keep_what_matters(trained_run, tmp_path):
    listed = run_cli("runs", "list", "--runs-root", trained_run.run_dir.parent, env={"COLUMNS": "80"})
    header = next(line for line in listed.stdout.splitlines() if "run" in line and "status" in line)
    assert "val acc" in header and "test acc" in header
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())
    wide = run_cli("runs", "list", "--runs-root", trained_run.run_dir.parent, "--wide", env={"COLUMNS": "40"})
    assert "…" not in wide.stdout and "started (UTC)" in wide.stdout


def test_an_out_of_class_file_with_rows_of_the_classes_is_refused(trained_run, demo_dir):
    result = run_cli("eval", "--checkpoint", trained_run.run_dir, "--out-of-class", demo_dir / "test.csv")
    assert result.returncode == 1
    assert "classes of the model; an out-of-class file holds products in none of them" in result.stderr


def test_energy_given_in_kj_is_named_as_the_likely_mistake(tmp_path):
    from foodcls.features import consistency_problems

    warnings = consistency_problems({"protein": 20, "carbs": 1, "fat": 12, "energy": 800})
    assert len(warnings) == 1 and "was it given in kJ? 800 kJ is 191 kcal" in warnings[0]
    assert consistency_problems({"protein": 20, "carbs": 1, "fat": 12, "energy": 192}) == []
    assert consistency_problems({"protein": 0, "carbs": 0, "fat": 0, "energy": 1}) == []  # a diet soda


def test_a_class_no_training_row_teaches_is_refused_with_the_build_hint(config_file, tmp_path):
    result = run_cli("train", "--config", config_file, "--runs-root", tmp_path / "runs",
                     "--set", "data.classes=[beverages,meats,snacks,desserts,other]")
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: data.classes: no training row is labelled 'other' (a build made without --other keeps "
                                     "none: foodcls data build EXPORT... --other --out DIR)")


def test_the_smaller_ones(trained_run, tmp_path, demo_dir):
    # Training before the build says how to build.
    missing = run_cli("train", "--config", REPO / "configs" / "off.yaml", cwd=tmp_path)
    assert "data/off/train.csv: file not found (build it first: foodcls data build EXPORT... --other --out data/off)" in missing.stderr
    # A semicolon CSV is named as one.
    semicolon = tmp_path / "s.csv"
    semicolon.write_text("protein;carbs;fat;additives\n1;2;3;0\n")
    result = run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", semicolon)
    assert "the header looks ';'-separated: foodcls reads comma-separated CSVs" in result.stderr
    # --json on a CSV batch is refused, not silently CSV.
    batch = tmp_path / "b.csv"
    batch.write_text("protein,carbs,fat,additives\n1,2,3,0\n")
    assert "--json: a CSV batch's predictions are CSV" in run_cli("predict", "--checkpoint", trained_run.run_dir, "--input", batch,
                                                                  "--json").stderr
    # serve on a busy port: one line, before "serving".
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        served = run_cli("serve", "--checkpoint", trained_run.run_dir, "--port", port)
    assert served.returncode == 1 and "cannot listen on 127.0.0.1" in served.stderr and "serving" not in served.stderr
