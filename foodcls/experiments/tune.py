"""`foodcls tune`: an Optuna study over a search space of config keys; each trial an ordinary run.

The study lives in RDB storage (default: runs/tune-<study>/study.db, SQLite), so running the command
again continues it. Trials are asked in the client and trained where the executor puts them (this
process, local worker processes, a Dask cluster); workers never touch the storage: the pruner runs in
the worker against an in-memory copy of the study's finished trials, and the client tells the study each
trial's reports, value and state when it comes back. Same study seed and trials, same parameters.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foodcls.redact import redact
from foodcls.config import Config, config_to_dict, config_to_yaml, derive, key_lines_of, load_config, read_yaml, valid_keys
from foodcls.errors import ConfigError, FoodclsError, first_line
from foodcls.fileio import atomic_write_json, atomic_write_text
from foodcls.experiments.executors import Job, JobFailed, check_cluster, parallel, run_jobs
from foodcls.experiments.jobs import RunOutcome
from foodcls.runs import process_alive
from foodcls.training.stack import EVAL_THREADS

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", "cv_balanced_accuracy": "maximize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
STUDY_DB = "study.db"


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        # Optuna stores choices as JSON-able scalars: a list (hidden sizes) goes in as its JSON text.
        encoded = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in self.choices]
        value = trial.suggest_categorical(self.key, encoded)
        return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def load_space(path: str | Path) -> list[Param]:
    """Read and strictly validate SPACE.yaml: config key → {float: [lo, hi], log}, {int: [lo, hi], log} or {choice: [...]}."""
    path = Path(path)
    raw, text = read_yaml(path, "search space")
    lines = key_lines_of(text)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a search space maps config keys to {{float: [low, high]}}, {{int: [low, high]}} or {{choice: [...]}}")
    valid = valid_keys(Config)
    params = []
    for key, spec in raw.items():
        where = f"{path}:{lines.get(str(key), 1)}: {key}"
        if not isinstance(key, str) or key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            raise ConfigError(f"{where}: unknown key{f' (did you mean {close[0]!r}?)' if close else ''}")
        params.append(_param(key, spec, where))
    return params


def _param(key: str, spec: Any, where: str) -> Param:
    kinds = [k for k in ("float", "int", "choice") if isinstance(spec, dict) and k in spec]
    if not isinstance(spec, dict) or len(kinds) != 1:
        raise ConfigError(f"{where}: expected exactly one of float: [low, high], int: [low, high], choice: [...]")
    kind = kinds[0]
    unknown = sorted(set(spec) - {kind, "log"})
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r} (expected {kind}, log)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choice must be a non-empty list")
        if log:
            raise ConfigError(f"{where}: log applies to float and int ranges, not to a choice")
        return Param(key, kind, choices=tuple(choices))
    bounds = spec[kind]
    number = (int,) if kind == "int" else (int, float)
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)):
        raise ConfigError(f"{where}: {kind} must be [low, high] ({kind}s), got {bounds!r}")
    low, high = bounds
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {low}")
    return Param(key, kind, float(low), float(high), log)


def _sampler(name: str, space: list[Param], seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {}
        for p in space:
            if p.kind == "float":
                raise ConfigError(f"--sampler grid: {p.key} is a float range; give it as a choice or an int range")
            values = p.choices if p.kind == "choice" else tuple(range(int(p.low), int(p.high) + 1))
            grid[p.key] = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in values]
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 10))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 20), max_resource=epochs)
    return optuna.pruners.NopPruner()


def storage_url(storage: str | None, study_dir: Path) -> str:
    return storage or f"sqlite:///{(study_dir / STUDY_DB).resolve()}"


def redacted(url: str) -> str:
    """A storage URL as it may be shown or stored: the password replaced by ***
    (postgresql://user:secret@host/db → postgresql://user:***@host/db)."""
    return redact(url)


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


def open_study(name: str, storage: str, metric: str, sampler=None, pruner=None, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if create:
            return optuna.create_study(study_name=name, storage=storage, direction=METRICS[metric], sampler=sampler,
                                       pruner=pruner, load_if_exists=True)
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise ConfigError(f"--study {name}: no such study in {redacted(storage)}") from None
    except FoodclsError:
        raise
    except Exception as error:  # SQLAlchemy and Optuna raise many types for an unusable storage URL
        first = first_line(error)
        reason = first.replace(storage, redacted(storage))
        password = _password(storage)
        if password:
            reason = reason.replace(password, "***")
        raise ConfigError(f"--storage {redacted(storage)}: cannot open the study ({type(error).__name__}: {reason[:160]})") from None


def _fail_stale_trials(study) -> None:
    """Trials left RUNNING by a tune process of this machine that died (SIGKILL) are marked failed."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, owner = trial.user_attrs.get("foodcls_pid"), trial.user_attrs.get("foodcls_host")
        if owner == host and pid is not None and not process_alive(pid):
            study.tell(trial.number, state=TrialState.FAIL)


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial's job came to: its run's outcome, the metric's value, and the per-epoch reports."""

    run: RunOutcome
    value: float | None = None
    reports: dict[int, float] = field(default_factory=dict)


def trial_job(config_dict: dict[str, Any], name: str, runs_root: str, metric: str, pruner: str, history: list[dict],
              cv: dict[str, Any] | None = None, eval_threads: int = EVAL_THREADS) -> TrialOutcome:
    """In a worker: train one trial, reporting its monitored metric each epoch to a pruner that sees an
    in-memory copy of the study's finished trials. Returns the value, the reports and the state."""
    import optuna

    from foodcls.training.fit import RunPruned, train

    # The search logs its trials to MLflow once they end (run_tune); a worker never talks to the store.
    config = Config.model_validate({**config_dict, "tracking": {"mlflow": None}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=METRICS[metric], pruner=make_pruner(pruner, config.train.epochs))
    for frozen in history:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[frozen["state"]], value=frozen.get("value"), params={},
            distributions={}, intermediate_values={int(k): v for k, v in frozen["intermediate"].items()}))
    trial = study.ask()
    reports: dict[int, float] = {}
    monitored = "val_loss" if metric == "val_loss" else "val_accuracy"

    def report(record: dict[str, Any], total: int) -> None:
        value = record.get(monitored)
        if value is None:
            return
        reports[record["epoch"]] = value
        trial.report(value, record["epoch"])
        if trial.should_prune():
            raise RunPruned()

    try:
        if cv is not None:
            from foodcls.experiments.cv import run_cv_config

            # In this process, in lockstep (workers=1): the trial may itself be a worker among several, and a
            # daemonic worker process cannot start processes of its own.
            report_ = run_cv_config(config, folds=cv["folds"], group_by=cv["group_by"], runs_root=runs_root, stem=name,
                                    workers=1, eval_threads=eval_threads)
            return TrialOutcome(RunOutcome("finished", run_dir=report_["cv_dir"]), report_["pooled"]["balanced_accuracy"])
        result = train(config, runs_root=runs_root, name=name, on_epoch=report, eval_threads=eval_threads, track=False)
    except Exception as error:  # a failed or crashed trial is reported; the search goes on
        return TrialOutcome(RunOutcome.of(error), reports=reports)
    # val_accuracy: the best checkpoint's; val_loss: the lowest reported (summary's best_value is whatever
    # the run monitored, an accuracy under early stopping on val_accuracy).
    value = result.val_accuracy if metric == "val_accuracy" else (min(reports.values()) if reports else None)
    return TrialOutcome(RunOutcome.of(result), value, reports)


def _history(study) -> list[dict[str, Any]]:
    """What the worker-side pruner needs of the finished trials: state, value and per-epoch reports."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [{"state": t.state.name, "value": t.value, "intermediate": {str(k): v for k, v in t.intermediate_values.items()}}
            for t in done]


def _trial_dict(trial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name.lower(), "params": _decoded(trial.params), "value": trial.value,
            "run_dir": trial.user_attrs.get("run_dir"), **({"error": trial.user_attrs["error"]} if "error" in trial.user_attrs else {})}


def _decoded(params: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in params.items()}


def study_report(study, storage: str, study_dir: Path) -> dict[str, Any]:
    """{"study", "storage", "trials": [...], "best": {"number", "params", "value", "config"} or None}."""
    from optuna.trial import TrialState

    trials = [_trial_dict(t) for t in study.get_trials(deepcopy=False)]
    best = None
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        b = study.best_trial
        best = {"number": b.number, "params": _decoded(b.params), "value": b.value,
                "config": str(study_dir / "best.yaml")}
    return {"study": study.study_name, "storage": redacted(storage), "direction": study.direction.name.lower(), "trials": trials, "best": best}


def run_tune(
    config_path: str | Path, space_path: str | Path, *, trials: int, sampler: str = "tpe", pruner: str = "median",
    metric: str = "val_accuracy", study_name: str | None = None, storage: str | None = None, workers: int | None = None,
    cluster: str | None = None, overrides: list[str] = (), runs_root: str | Path = "runs", folds: int = 5,
    group_by: str | None = None, on_trial=None,
) -> dict[str, Any]:
    """Run (or continue) a study until it holds `trials` finished trials; write best.yaml; return the report."""
    from optuna.trial import TrialState

    from foodcls.data import load_splits

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: expected one of {', '.join(PRUNERS)}")
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    base = load_config(config_path, list(overrides))
    space = load_space(space_path)
    derive(base, {p.key: p.choices[0] if p.kind == "choice" else (int(p.low) if p.kind == "int" else p.low) for p in space},
                 f"{space_path}")  # a space whose values the config schema refuses fails here, before a study exists
    if metric != "cv_balanced_accuracy" and base.data.val is None and base.data.val_fraction is None:
        raise ConfigError(f"--metric {metric}: the config has no validation data (give data.val or data.val_fraction)")
    load_splits(base)
    check_cluster(cluster)  # an unreachable cluster is one line now, not after a study was made
    from foodcls.tracking import check_tracking

    check_tracking(base.tracking.mlflow)
    name = study_name or Path(config_path).stem
    study_dir = Path(runs_root) / f"tune-{name}"
    url = storage_url(storage, study_dir)
    if storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(name, url, metric, _sampler(sampler, space, base.train.seed), make_pruner(pruner, base.train.epochs))
    _fail_stale_trials(study)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    cv = {"folds": folds, "group_by": group_by} if metric == "cv_balanced_accuracy" else None
    while True:
        done = len(study.get_trials(deepcopy=False, states=counted))
        if done >= trials:
            break
        batch = min(workers or 1, trials - done) if cluster is None else min(max(workers or 1, 1), trials - done)
        asked = []
        for _ in range(batch):
            trial = study.ask()
            trial.set_user_attr("foodcls_pid", os.getpid())
            trial.set_user_attr("foodcls_host", socket.gethostname())
            params = {p.key: p.suggest(trial) for p in space}
            try:
                config = derive(base, params, f"trial {trial.number}")
            except ConfigError as error:
                trial.set_user_attr("error", str(error))
                study.tell(trial, state=TrialState.FAIL)
                continue
            asked.append((trial, config))
        history = _history(study)
        eval_threads = 1 if parallel(len(asked), len(asked), cluster) else EVAL_THREADS
        jobs = [Job(trial_job, {"config_dict": config_to_dict(config), "name": f"trial-{trial.number}", "runs_root": str(study_dir),
                                "metric": metric, "pruner": pruner, "history": history, "cv": cv, "eval_threads": eval_threads})
                for trial, config in asked]
        for index, result in run_jobs(jobs, len(jobs), cluster):
            trial, _ = asked[index]
            outcome = TrialOutcome(RunOutcome.of(result)) if isinstance(result, JobFailed) else result
            for step, value in sorted(outcome.reports.items()):
                trial.report(value, step)
            if outcome.run.run_dir:
                trial.set_user_attr("run_dir", outcome.run.run_dir)
            if outcome.run.status == "pruned":
                study.tell(trial, state=TrialState.PRUNED)
            elif outcome.run.status == "finished" and outcome.value is not None:
                study.tell(trial, outcome.value)
            else:
                trial.set_user_attr("error", outcome.run.error or f"ended {outcome.run.status}")
                study.tell(trial, state=TrialState.FAIL)
            if on_trial is not None:
                on_trial(_trial_dict(study.get_trials(deepcopy=False)[trial.number]))
    report = study_report(study, url, study_dir)
    if report["best"] is not None:
        best = derive(base, report["best"]["params"], "best trial")
        atomic_write_text(study_dir / "best.yaml", f"# Best trial {report['best']['number']} of study {name} "
                          f"({metric} {report['best']['value']:.4f}); `foodcls train --config` reproduces it.\n" + config_to_yaml(best))
    atomic_write_json(study_dir / "tune.json", report)
    if base.tracking.mlflow:
        from foodcls.tracking import best_effort, log_group

        warning = best_effort(log_group, base.tracking.mlflow, f"tune-{name}", {"space": str(space_path), "metric": metric, "trials": trials},
                              [t["run_dir"] for t in report["trials"] if t.get("run_dir") and metric != "cv_balanced_accuracy"],
                              {"best_value": report["best"]["value"] if report["best"] else None})
        report["warnings"] = [warning] if warning else []
    return report


def show_tune(study_name: str, *, storage: str | None = None, runs_root: str | Path = "runs") -> dict[str, Any]:
    """The report of an existing study, without running anything."""
    study_dir = Path(runs_root) / f"tune-{study_name}"
    url = storage_url(storage, study_dir)
    if storage is None and not (study_dir / STUDY_DB).exists():
        raise ConfigError(f"--study {study_name}: no study at {study_dir / STUDY_DB}")
    return study_report(open_study(study_name, url, "val_accuracy", create=False), url, study_dir)
