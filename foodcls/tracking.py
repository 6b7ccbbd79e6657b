"""MLflow tracking (`tracking.mlflow: URI` in a config, or `--mlflow URI`): each finished run directory is
logged as an MLflow run — the resolved config as params (flattened), every epoch's metrics, the final
figures, the artifacts (config.yaml, summary.json, MODEL_CARD.md, plots, the best checkpoint) and the model
as an MLflow model (`runs:/<id>/model`, pyfunc; registered under tracking.registered_model / `train --register NAME`). Sweeps,
cv and tune log a parent run with their runs nested under it. The run directory stays the source of truth:
runs are logged from it once they end, so a worker process never talks to the tracking server and a
failed log never loses a run. mlflow is imported only when tracking is asked for."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

from foodcls import runs
from foodcls.config import flatten
from foodcls.errors import ConfigError, first_line
from foodcls.redact import redact, redact_secrets

EXPERIMENT = "foodcls"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
ARTIFACTS = ("config.yaml", "summary.json", "MODEL_CARD.md", "learning_curves.png", "confusion_matrix.png", "grad_norms.png",
             "reliability.png")


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow needs the 'mlflow' extra: pip install 'foodcls[mlflow]'") from None
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(EXPERIMENT)
    except Exception as error:  # an unusable URI: SQLAlchemy, OSError, MlflowException…
        raise ConfigError(redact(f"--mlflow {uri}: cannot open the tracking store ({type(error).__name__}: {first_line(error)[:160]})")) from None
    return client, experiment_id


def _value(value: Any) -> str:
    return str(value)[:6000]  # MLflow's param value limit


def start_parent(uri: str, name: str, params: dict[str, Any]) -> str:
    """An MLflow run that a sweep's, cv's or tune's runs nest under; returns its id."""
    client, experiment_id = _client(uri)
    run = client.create_run(experiment_id, run_name=name, tags={"foodcls.kind": name.split("-")[0]})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, _value(redact_secrets(value)))
    return run.info.run_id


def end_parent(uri: str, run_id: str, metrics: dict[str, float | None]) -> None:
    client, _ = _client(uri)
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            client.log_metric(run_id, key, float(value))
    client.set_terminated(run_id, "FINISHED")


def log_run(uri: str, run_dir: str | Path, parent_id: str | None = None, register: str | None = None) -> str:
    """Log one run directory as an MLflow run (nested under parent_id when given), with its model as an MLflow
    model (inference/mlflow_model.py; in the registry under `register` when given); returns its id."""
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir)
    client, experiment_id = _client(uri)
    summary = runs.read_summary(run_dir)
    tags = {"foodcls.run_dir": str(run_dir), "foodcls.status": str(summary.get("status"))}
    if parent_id is not None:
        tags["mlflow.parentRunId"] = parent_id
    run = client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
    run_id = run.info.run_id
    import yaml

    config = yaml.safe_load((run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8"))
    params = [Param(key, _value(value)) for key, value in flatten(redact_secrets(config)).items()]
    for start in range(0, len(params), 100):  # MLflow's limit of params per batch
        client.log_batch(run_id, params=params[start : start + 100])
    metrics = []
    for record in runs.read_metrics(run_dir):
        for key, value in record.items():
            if key not in ("epoch", "grad_norms") and isinstance(value, (int, float)):
                metrics.append(Metric(key, float(value), 0, int(record["epoch"])))
    for key in ("test_accuracy", "val_accuracy", "train_seconds"):
        if isinstance(summary.get(key), (int, float)):
            metrics.append(Metric(f"final_{key}", float(summary[key]), 0, int(summary.get("epochs_run") or 0)))
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if runs.best_checkpoint(run_dir).is_file():
        client.log_artifact(run_id, str(runs.best_checkpoint(run_dir)), artifact_path="checkpoints")
        if summary.get("status") == "finished":
            import mlflow

            from foodcls.inference.mlflow_model import log_model

            mlflow.set_tracking_uri(uri)
            log_model(run_id, run_dir, runs.best_checkpoint(run_dir), register)
    client.set_terminated(run_id, "FINISHED" if summary.get("status") in ("finished", "pruned") else "FAILED")
    return run_id


def check_tracking(uri: str | None) -> None:
    """Before anything is trained: the mlflow extra is there and the store opens (a one-line error if not)."""
    if uri is not None:
        _client(uri)


def log_group(uri: str, name: str, params: dict[str, Any], run_dirs: list[str | Path], metrics: dict[str, float | None]) -> str:
    """A sweep's, cv's or tune's parent run with each of its run directories nested under it; its id."""
    parent = start_parent(uri, name, params)
    for run_dir in run_dirs:
        if run_dir and (Path(run_dir) / runs.SUMMARY_FILE).is_file():
            log_run(uri, run_dir, parent)
    end_parent(uri, parent, metrics)
    return parent


def best_effort(log: Callable[..., Any], *args: Any) -> str | None:
    """Call a logging function after a run's (or a search's) results are saved: a store that fails now (file
    removed, server restarted) costs one warning, returned, never a traceback that hides the results."""
    try:
        log(*args)
    except Exception as error:  # MLflow, SQLAlchemy, OSError…: the run directory stays the source of truth
        return redact(f"not logged to MLflow ({type(error).__name__}: {first_line(error)[:160]}); the results are saved in their directory")
    return None
