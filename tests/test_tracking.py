"""MLflow tracking against a real local store (SQLite), read back with MLflow's own client."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from foodcls.cli import app

mlflow = pytest.importorskip("mlflow")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_a_run_is_logged_with_its_params_every_epochs_metrics_and_its_artifacts(config_file, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the store's artifacts go beside it
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    invoke("train", "--config", config_file, "--set", "train.epochs=12", "--runs-root", tmp_path / "runs", "--mlflow", uri)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("foodcls").experiment_id])
    assert run.data.params["train.epochs"] == "12" and run.data.params["model.hidden"] == "[32, 32]"
    assert run.data.params["tracking.mlflow"] == uri
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 13))
    assert {"test_accuracy", "final_test_accuracy"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "MODEL_CARD.md", "learning_curves.png", "checkpoints"} <= artifacts
    assert run.info.status == "FINISHED"


def test_a_sweep_logs_a_parent_with_its_runs_nested(config_file, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    invoke("sweep", "--config", config_file, "--grid", "train.lr=0.1,0.01", "--seeds", 2, "--set", "train.epochs=3",
           "--workers", 1, "--runs-root", tmp_path / "runs", "--mlflow", uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("foodcls").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name.startswith("sweep-") and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


def test_an_unusable_store_is_one_line_before_training_and_nothing_imports_mlflow_unasked(config_file, tmp_path):
    result = CliRunner().invoke(app, ["train", "--config", str(config_file), "--runs-root", str(tmp_path / "runs"),
                                      "--mlflow", "sqlite:////proc/no-such-dir/x.db"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "--mlflow" in result.output
    assert not (tmp_path / "runs").exists()
    code = ("import sys; from foodcls.cli import app; sys.argv = ['foodcls', '--help']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\nassert 'mlflow' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_logged_run_is_an_mlflow_model_that_answers_as_predict_and_can_be_registered(config_file, tmp_path, monkeypatch):
    import json

    import pandas as pd
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    trained = json.loads(invoke("train", "--config", config_file, "--set", "train.epochs=3", "--runs-root", tmp_path / "runs",
                                "--mlflow", uri, "--register", "foodcls-test", "--json").stdout)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("foodcls").experiment_id])
    mlflow.set_tracking_uri(uri)
    products = pd.DataFrame({"protein": [20.0, 0.1], "carbs": [1.0, 10.0], "fat": [12.0, 0.0], "additives": [2, 1]})
    for model_uri in (f"runs:/{run.info.run_id}/model", "models:/foodcls-test/1"):
        answers = mlflow.pyfunc.load_model(model_uri).predict(products)
        cli = json.loads(subprocess.run([sys.executable, "-m", "foodcls", "predict", "--checkpoint", trained["run_dir"], "--protein", "20",
                                         "--carbs", "1", "--fat", "12", "--additives", "2", "--json"], capture_output=True, text=True).stdout)
        assert answers.iloc[0]["predicted"] == cli["class"] and answers.iloc[0]["decision"] == cli["decision"]
        assert [answers.iloc[0][f"p_{c}"] for c in cli["probabilities"]] == pytest.approx(list(cli["probabilities"].values()), abs=1e-7)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"onnx", "checkpoints", "summary.json"}
    assert client.get_registered_model("foodcls-test").name == "foodcls-test"
