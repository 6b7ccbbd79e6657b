"""Commands over many runs: sweep, cv, tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from foodcls import report as report_tables
from foodcls.cli.common import (
    print_warnings,
    ClusterOption, JobBar, JsonOption, MlflowOption, RunsRootOption, SetOption, app, print_json, reported_errors, stderr, stdout,
    WorkersOption, with_mlflow,
)
from foodcls.errors import FoodclsError, require_extra


@app.command()
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Base YAML config.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="KEY=V1,V2,... (repeatable): every combination is run.")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per combination: train.seed, +1, +2, ...")] = 1,
    overrides: SetOption = None,
    workers: WorkersOption = None,
    cluster: ClusterOption = None,
    mlflow: MlflowOption = None,
    runs_root: RunsRootOption = Path("runs"),
    as_json: JsonOption = False,
) -> None:
    """Run a grid of configs × seeds in parallel; report mean ± std per combination."""
    overrides = with_mlflow(overrides, mlflow)
    with reported_errors(), JobBar("runs") as bar:
        from foodcls.experiments.sweep import run_sweep

        def on_run(run: dict[str, Any]) -> None:
            bar.advance(f"{run['params']} seed {run['seed']}: {run['error']}" if run["status"] == "failed" else None,
                        f"{run['params']} seed {run['seed']}: test accuracy {run.get('test_accuracy')}")

        report = run_sweep(config, grid or [], seeds=seeds, overrides=overrides or [], workers=workers, runs_root=runs_root,
                           on_run=on_run, on_start=bar.start, cluster=cluster)
    print_warnings(report.get("warnings", []))
    if as_json:
        print_json(report)
        return
    stdout.print(report_tables.sweep_table(report))


@app.command()
def cv(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config whose training data are cross-validated.")],
    folds: Annotated[int, typer.Option("--folds", help="Stratified folds (ignored with --group-by).")] = 5,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="One fold per value of this column, e.g. source (leave one source out).")] = None,
    overrides: SetOption = None,
    workers: WorkersOption = None,
    baselines: Annotated[bool, typer.Option("--baselines", help="Also cross-validate the baselines on the same folds.")] = False,
    cluster: ClusterOption = None,
    mlflow: MlflowOption = None,
    runs_root: RunsRootOption = Path("runs"),
    as_json: JsonOption = False,
) -> None:
    """Cross-validate a config: per-fold figures, mean ± std over folds, and pooled out-of-fold figures."""
    overrides = with_mlflow(overrides, mlflow)
    with reported_errors(), JobBar("folds") as bar:
        from foodcls.experiments.cv import run_cv

        if group_by is None or baselines:  # stratified folds and the baselines are scikit-learn's
            require_extra("sklearn", "baselines", "foodcls cv" + (" --baselines" if baselines else " (stratified folds; --group-by needs nothing)"))

        def on_fold(fold: dict[str, Any]) -> None:
            bar.advance(f"fold {fold['fold']}: {fold['error']}" if fold["status"] == "failed" else None,
                        f"fold {fold['fold']} {fold.get('group') or ''}: accuracy {fold.get('accuracy', 0):.3f}")

        report = run_cv(config, folds=folds, group_by=group_by, overrides=overrides or [], workers=workers, runs_root=runs_root,
                        baselines=baselines, on_fold=on_fold, on_start=bar.start, cluster=cluster)
    print_warnings(report.get("warnings", []))
    if as_json:
        print_json(report)
        return
    stdout.print(report_tables.cv_table(report))
    if report["pooled"] is not None and report["pooled"].get("open_set"):
        stdout.print(report_tables.open_set_table({**report["pooled"]["open_set"], "data": "the held-out folds' other products"}))
    if report.get("baselines"):
        stdout.print(report_tables.cv_baselines_table(report))


@app.command()
def tune(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Base YAML config.")] = None,
    space: Annotated[Optional[Path], typer.Option("--space", help="Search space YAML: config key → {float|int: [low, high], log} or {choice: [...]}.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Finished trials the study should hold (earlier ones count).")] = 20,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, random or grid.")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median, hyperband or none.")] = "median",
    metric: Annotated[str, typer.Option("--metric", help="val_accuracy, val_loss or cv_balanced_accuracy.")] = "val_accuracy",
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the config's stem].")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna storage URL [default: sqlite:///runs/tune-<study>/study.db].")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Trials trained at once.")] = 1,
    cluster: ClusterOption = None,
    overrides: SetOption = None,
    folds: Annotated[int, typer.Option("--folds", help="With --metric cv_balanced_accuracy: stratified folds.")] = 5,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="With --metric cv_balanced_accuracy: leave one group out.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the study's trials and best config; run nothing.")] = False,
    mlflow: MlflowOption = None,
    runs_root: RunsRootOption = Path("runs"),
    as_json: JsonOption = False,
) -> None:
    """Search hyperparameters with Optuna; every trial an ordinary run; the best config as best.yaml."""
    overrides = with_mlflow(overrides, mlflow)
    with reported_errors():
        require_extra("optuna", "tune", "foodcls tune")
        from foodcls.experiments.tune import run_tune, show_tune

        if show:
            if study is None:
                raise FoodclsError("--show needs --study NAME")
            report = show_tune(study, storage=storage, runs_root=runs_root)
        else:
            if config is None or space is None:
                raise FoodclsError("give --config PATH and --space SPACE.yaml (or --show --study NAME)")

            def on_trial(trial: dict[str, Any]) -> None:
                value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
                stderr.print(f"trial {trial['number']}: {trial['state']} {value} {json.dumps(trial['params'])}", highlight=False)

            report = run_tune(config, space, trials=trials, sampler=sampler, pruner=pruner, metric=metric, study_name=study,
                              storage=storage, workers=workers, cluster=cluster, overrides=overrides or [], runs_root=runs_root,
                              folds=folds, group_by=group_by, on_trial=on_trial if stderr.is_terminal else None)
    print_warnings(report.get("warnings", []))
    if as_json:
        print_json(report)
        return
    stdout.print(report_tables.tune_table(report))
