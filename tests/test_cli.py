"""CLI tests: end to end through the real commands; subprocesses where stderr and imports matter."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from foodcls.cli import app
from tests.conftest import REPO

runner = CliRunner()


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_eval_predict_end_to_end(config_file, tmp_path):
    result = invoke("train", "--config", config_file, "--runs-root", tmp_path / "runs", "--json", "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert {"run_dir", "best_checkpoint", "last_checkpoint", "test_accuracy", "epochs_run", "train_seconds"} <= set(trained)
    assert trained["epochs_run"] == 3 and trained["run_dir"].startswith(str(tmp_path / "runs" / "small-"))

    evaluated = json.loads(invoke("eval", "--checkpoint", trained["best_checkpoint"], "--json").stdout)
    assert evaluated["accuracy"] == pytest.approx(trained["test_accuracy"])
    assert evaluated["classes"] == ["beverages", "meats", "snacks", "desserts"]
    assert set(evaluated["per_class"]["meats"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, evaluated["confusion_matrix"])) == evaluated["n"] == 200

    single = invoke("predict", "--checkpoint", trained["best_checkpoint"], "--protein", 20, "--carbs", 1, "--fat", 12, "--additives", 2, "--json")
    predicted = json.loads(single.stdout)
    assert predicted["class"] in predicted["probabilities"]
    assert sum(predicted["probabilities"].values()) == pytest.approx(1.0)

    batch_in = tmp_path / "products.csv"
    batch_in.write_text("name,protein,carbs,fat,additives\nham,20,1,12,2\nyogurt,3.5,14,3,1\n")
    out = tmp_path / "out.csv"
    assert invoke("predict", "--checkpoint", trained["run_dir"], "--input", batch_in, "--output", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "name,protein,carbs,fat,additives,predicted,p_beverages,p_meats,p_snacks,p_desserts,decision,suggest"
    assert lines[1].startswith("ham,20,1,12,2," + predicted["class"])


def test_eval_and_predict_default_to_the_newest_run(config_file, tmp_path):
    assert run_cli("train", "--config", config_file, "--set", "train.epochs=1", cwd=tmp_path).returncode == 0
    result = run_cli("predict", "--protein", 20, "--carbs", 1, "--fat", 12, "--additives", 2, "--json", cwd=tmp_path)
    assert result.returncode == 0 and "class" in json.loads(result.stdout)
    assert json.loads(run_cli("eval", "--json", cwd=tmp_path).stdout)["n"] == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protein", 120, "--carbs", 1, "--fat", 1, "--additives", 0], "--protein must lie within 0-100"),
        (["--protein", 1, "--carbs", -1, "--fat", 1, "--additives", 0], "--carbs must lie within 0-100"),
        (["--protein", 1, "--carbs", 1, "--fat", 1, "--additives", 1.5], "--additives must be a whole number"),
        (["--protein", 1, "--carbs", 1, "--fat", 1, "--additives", -2], "--additives must be a whole number"),
    ],
)
def test_predict_refuses_impossible_values(trained_run, args, message):
    result = invoke("predict", "--checkpoint", trained_run.best_checkpoint, *args)
    assert result.exit_code == 1 and message in result.output


def test_predict_warns_when_nutrients_exceed_100g(trained_run):
    result = run_cli("predict", "--checkpoint", trained_run.best_checkpoint, "--protein", 50, "--carbs", 40, "--fat", 30, "--additives", 0)
    assert result.returncode == 0 and "warning:" in result.stderr and "exceeds 100 g" in result.stderr


def test_predict_without_a_trained_run_says_how_to_make_one(tmp_path):
    result = run_cli("predict", "--protein", 1, "--carbs", 1, "--fat", 1, "--additives", 0, cwd=tmp_path)
    assert result.returncode == 1
    assert "run `foodcls train --config configs/mlp.yaml` first" in result.stderr


def one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_inputs_get_one_line_errors_and_write_nothing(config_file, tmp_path):
    runs_root = tmp_path / "runs"
    cases = [
        (["--config", tmp_path / "missing.yaml"], ["missing.yaml", "not found"]),
        (["--config", config_file, "--set", "train.epoch=3"], ["train.epoch", "train.epochs"]),
        (["--config", config_file, "--set", "train.lr=0"], ["train.lr"]),
        (["--config", config_file, "--set", "nonsense"], ["--set", "nonsense"]),
        (["--config", config_file, "--set", "data.train=" + str(tmp_path / "none.csv")], ["none.csv", "not found"]),
    ]
    for args, fragments in cases:
        one_line_error(run_cli("train", *args, "--runs-root", runs_root), *fragments)
    assert not runs_root.exists()


def test_corrupt_checkpoint_gets_one_line_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x80\x04garbage")
    one_line_error(run_cli("eval", "--checkpoint", path), "bad.safetensors", "not a valid foodcls checkpoint")
    one_line_error(run_cli("predict", "--checkpoint", path, "--protein", 1, "--carbs", 1, "--fat", 1, "--additives", 0), "not a valid")


def test_bad_batch_input_names_file_and_line(trained_run, tmp_path):
    batch_in = tmp_path / "in.csv"
    batch_in.write_text("protein,carbs,fat,additives\n1,2,3,0\n1,x,3,0\n")
    out = tmp_path / "out.csv"
    one_line_error(run_cli("predict", "--checkpoint", trained_run.best_checkpoint, "--input", batch_in, "--output", out), "in.csv:3", "carbs")
    assert not out.exists()


CHECK_NO_TORCH = """
import sys
from foodcls.cli import app
try:
    app({args!r}, prog_name="foodcls")
except SystemExit as done:
    assert not done.code, done.code
assert "torch" not in sys.modules, "torch was imported"
"""


def test_predict_and_help_do_not_import_torch(trained_run):
    for args in (["--help"], ["predict", "--checkpoint", str(trained_run.best_checkpoint), "--protein", "20",
                              "--carbs", "1", "--fat", "12", "--additives", "2"]):
        result = subprocess.run([sys.executable, "-c", CHECK_NO_TORCH.format(args=args)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_version_and_help():
    assert run_cli("--version").stdout.strip().startswith("foodcls ")
    help_text = run_cli("--help").stdout
    for command in ("train", "eval", "predict", "data"):
        assert command in help_text


def test_data_synth_writes_the_demo_set(tmp_path):
    result = invoke("data", "synth", "--out", tmp_path, "--n-train", 40, "--n-test", 20, "--seed", 3)
    assert result.exit_code == 0
    assert len((tmp_path / "train.csv").read_text().splitlines()) == 41


def test_usage_mistakes_get_one_line_errors(tmp_path):
    result = run_cli("predict", "--protein", "abc", "--carbs", 1, "--fat", 1, "--additives", 0)
    one_line_error(result, "--protein", "foodcls predict --help")
    assert result.returncode == 2
    one_line_error(run_cli("eval", "--bogus"), "No such option: --bogus")
    one_line_error(run_cli("train", cwd=tmp_path), "--config")


def test_error_text_is_printed_literally_not_as_markup(tmp_path):
    one_line_error(run_cli("eval", "--checkpoint", tmp_path / "x[red]y.safetensors"), "x[red]y.safetensors: checkpoint not found")


def test_sweep_with_a_bad_grid_key_is_one_line_and_writes_nothing(config_file, tmp_path):
    one_line_error(run_cli("sweep", "--config", config_file, "--grid", "train.lrr=0.1", "--runs-root", tmp_path / "runs"),
                   "train.lrr", "train.lr")
    assert not (tmp_path / "runs").exists()


def test_a_bad_set_value_names_the_set_as_its_origin(config_file, tmp_path):
    one_line_error(run_cli("train", "--config", config_file, "--set", "train.epoch=5", "--runs-root", tmp_path),
                   "--set train.epoch=5: train.epoch: unknown key", "train.epochs")
    one_line_error(run_cli("train", "--config", config_file, "--set", "model.hidden=[0]", "--runs-root", tmp_path),
                   "--set model.hidden=[0]")


def test_export_does_not_import_torch(trained_run, tmp_path):
    code = (f"import sys; from foodcls.inference.export import export; export({str(trained_run.best_checkpoint)!r}, {str(tmp_path / 'm.onnx')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def rich_checkpoint(tmp_path_factory):
    from foodcls.config import load_config
    from foodcls.features import ALL_FEATURES
    from foodcls.synth import write_demo_set
    from foodcls.training.fit import train
    from tests.conftest import write_config

    tmp = tmp_path_factory.mktemp("rich")
    write_demo_set(tmp, n_train=400, n_test=100, seed=4, rich=True)
    config = load_config(write_config(tmp / "c.yaml", tmp, epochs=20, optimizer="adam"),
                         [f"data.features={list(ALL_FEATURES)}", "data.scaling=standard"])
    return train(config, runs_root=tmp / "runs", name="rich").best_checkpoint


NINE = ["--protein", 20, "--carbs", 1, "--fat", 12, "--additives", 2, "--sugars", 0.5, "--saturated-fat", 4, "--salt", 2,
        "--fiber", 0, "--energy", 190]


def test_a_nine_feature_model_answers_predict_with_all_nine_options(rich_checkpoint):
    result = run_cli("predict", "--checkpoint", rich_checkpoint, *NINE, "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["class"] in answer["probabilities"] and answer["warnings"] == []


def test_a_missing_nutrient_of_a_nine_feature_model_is_filled_or_one_line(rich_checkpoint):
    # An optional nutrient may always be unknown (filled with its median, and said); a required one needs --allow-missing.
    without_energy = NINE[:-2]
    filled = run_cli("predict", "--checkpoint", rich_checkpoint, *without_energy, "--json")
    assert filled.returncode == 0 and json.loads(filled.stdout)["warnings"][-1].startswith("unknown energy (filled with the training median")
    without_protein = NINE[2:]
    one_line_error(run_cli("predict", "--checkpoint", rich_checkpoint, *without_protein), "missing --protein")
    filled = run_cli("predict", "--checkpoint", rich_checkpoint, *without_protein, "--allow-missing", "--json")
    assert filled.returncode == 0 and "unknown protein (filled with the training median" in json.loads(filled.stdout)["warnings"][-1]
    one_line_error(run_cli("predict", "--checkpoint", rich_checkpoint, *NINE[:-2], "--energy", 1000), "--energy", "0-900 kcal")


def test_a_four_feature_model_ignores_extra_nutrients_with_a_warning(trained_run):
    result = run_cli("predict", "--checkpoint", trained_run.best_checkpoint, *NINE, "--json")
    assert result.returncode == 0 and "ignored --sugars" in " ".join(json.loads(result.stdout)["warnings"])
