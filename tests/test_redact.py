"""Credentials in URIs never leave through what foodcls prints, serves or logs (reliability round 3, row 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from foodcls.config import load_config
from foodcls.redact import redact, redact_secrets
from tests.conftest import write_config

SECRETS = ("secret", "tok")
URIS = ("postgresql://u:secret@h/db", "https://u:tok@h/")


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
    ("https://u:tok@h/", "https://u:***@h/"),
    ("https://ghp_tok@github.com/x.git", "https://***@github.com/x.git"),
    ("http://h:5000/?token=tok&x=1", "http://h:5000/?token=***&x=1"),
    ("mysql+pymysql://user:p%40ss:word@db.example:3306/m", "mysql+pymysql://user:***@db.example:3306/m"),
    ("sqlite:////tmp/mlruns.db", "sqlite:////tmp/mlruns.db"),
    ("mysql://u@h/db", "mysql://u@h/db"),  # a user name alone is no secret (but for http(s), above)
    ("data/off/train.csv", "data/off/train.csv"),
    ("runs at alice@example.org", "runs at alice@example.org"),
])
def test_redact_hides_passwords_and_tokens_of_uris_only(text, shown):
    assert redact(text) == shown
    assert redact(shown) == shown  # redacting twice changes nothing


def test_redact_secrets_walks_nested_configs_without_changing_them():
    config = {"tracking": {"mlflow": URIS[0]}, "data": {"train": [{"path": "a.csv", "weight": 1.0}]}, "n": [1, URIS[1]]}
    redacted = redact_secrets(config)
    assert redacted == {"tracking": {"mlflow": "postgresql://u:***@h/db"}, "data": config["data"], "n": [1, "https://u:***@h/"]}
    assert config["tracking"]["mlflow"] == URIS[0]  # a copy


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert f":{secret}@" not in text, text


@pytest.fixture(scope="module", params=URIS)
def secret_run(request, tmp_path_factory, demo_dir):
    """A trained run whose config logs to a tracking URI with a password (not contacted: track=False)."""
    from foodcls.training.fit import train

    tmp = tmp_path_factory.mktemp("secret")
    config = load_config(write_config(tmp / "small.yaml", demo_dir), [f"tracking.mlflow={json.dumps(request.param)}"])
    result = train(config, runs_root=tmp / "runs", name="small", track=False)
    return result


def test_model_endpoint_never_serves_a_tracking_password(secret_run):
    from fastapi.testclient import TestClient

    from foodcls.serve.app import create_app

    for expose in (False, True):
        client = TestClient(create_app(secret_run.best_checkpoint, expose_paths=expose), base_url="http://127.0.0.1")
        text = client.get("/model").text
        _no_secret(text)
        assert "***@h" in text


def test_checkpoint_card_runs_show_and_compare_never_hold_a_tracking_password(secret_run):
    from foodcls.inference.checkpoint import load_checkpoint

    assert "***@h" in json.dumps(load_checkpoint(secret_run.best_checkpoint).meta)
    _no_secret(json.dumps(load_checkpoint(secret_run.last_checkpoint).meta))
    _no_secret((secret_run.run_dir / "MODEL_CARD.md").read_text())
    # config.yaml keeps the URI: --resume logs the run there.
    assert yaml.safe_load((secret_run.run_dir / "config.yaml").read_text())["tracking"]["mlflow"] in URIS
    for args in (["runs", "show", str(secret_run.run_dir)], ["runs", "show", str(secret_run.run_dir), "--json"],
                 ["runs", "compare", str(secret_run.run_dir), str(secret_run.run_dir), "--json"],
                 ["card", str(secret_run.run_dir)]):
        result = subprocess.run([sys.executable, "-m", "foodcls", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        _no_secret(result.stdout + result.stderr)
    shown = subprocess.run([sys.executable, "-m", "foodcls", "runs", "show", str(secret_run.run_dir), "--json"],
                           capture_output=True, text=True)
    assert "***@h" in json.loads(shown.stdout)["config"]["tracking"]["mlflow"]
    _no_secret((secret_run.run_dir / "MODEL_CARD.md").read_text())


def test_mlflow_params_never_hold_a_tracking_password(secret_run, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from foodcls.tracking import log_run

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id = log_run(store, secret_run.run_dir)
    params = MlflowClient(tracking_uri=store).get_run(run_id).data.params
    assert params["tracking.mlflow"].endswith("***@h/db") or params["tracking.mlflow"] == "https://u:***@h/"
    _no_secret(json.dumps(params))


def test_mlflow_option_is_taken_verbatim_not_parsed_as_yaml(config_file, tmp_path):
    # Row 7: `--mlflow` went through the --set parser: ' #1' became a YAML comment, 'null' turned tracking off.
    from foodcls.cli.common import with_mlflow

    for uri in (f"sqlite:///{tmp_path}/ml #1/m.db", "null", "[1, 2]"):
        config = load_config(config_file, with_mlflow([], uri))
        assert config.tracking.mlflow == uri
