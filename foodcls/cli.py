"""The `foodcls` command line: parse options, call the library, print. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from foodcls import __version__
from foodcls import report as report_tables
from foodcls.errors import FoodclsError

stdout = Console(soft_wrap=True)  # long paths stay whole, so they can be copied and parsed
stderr = Console(stderr=True)


def print_error(message: str) -> None:
    """The one-line form every error takes."""
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _is(error: BaseException, class_name: str) -> bool:
    # By name: typer ships its own copy of click's exceptions in some versions and uses click's in others.
    return any(cls.__name__ == class_name for cls in type(error).__mro__)


class OneLineErrors(typer.core.TyperGroup):
    """Usage mistakes (a bad option value, an unknown option) get the same one-line error as ours."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as error:
            if _is(error, "UsageError") and not _is(error, "NoArgsIsHelpError"):
                ctx = getattr(error, "ctx", None)
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                print_error(f"{error.format_message()}{hint}")
                sys.exit(2)
            if _is(error, "ClickException"):
                error.show()
                sys.exit(error.exit_code)
            if _is(error, "Abort"):
                stderr.print("aborted")
                sys.exit(130)
            raise
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="foodcls",
    cls=OneLineErrors,
    help="Train a small neural network that sorts packaged food into beverages, meats, snacks and desserts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make datasets: the synthetic demo set, Open Food Facts downloads and builds.", no_args_is_help=True)
runs_app = typer.Typer(help="List and compare run directories.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")


ClusterOption = Annotated[
    Optional[str], typer.Option("--cluster", help="Run on a Dask cluster: tcp://host:8786, or local[:N] to start one here.")
]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")]
RunsRootOption = Annotated[Path, typer.Option("--runs-root", help="Where run directories live.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
CheckpointOption = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="Checkpoint file or run directory [default: best of the newest run in ./runs].")
]


@contextmanager
def reported_errors() -> Iterator[None]:
    """Our own errors become one line on stderr and exit code 1; never a traceback."""
    try:
        yield
    except FoodclsError as error:
        print_error(str(error))
        raise typer.Exit(code=1) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"foodcls {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """foodcls: YAML-configured MLP training, evaluation and instant prediction."""


def _default_checkpoint(checkpoint: Path | None) -> Path:
    from foodcls.runs import newest_best_checkpoint

    return checkpoint if checkpoint is not None else newest_best_checkpoint("runs")


class EpochBar:
    """A rich progress bar on stderr that appears with the first finished epoch, not before
    (so an input error stays a single line)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, disable=not stderr.is_terminal,
        )
        self.task = None

    def __call__(self, record: dict[str, Any], total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, stats="")
        stats = f"loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
        if "val_accuracy" in record:
            stats += f" val {record['val_accuracy']:.4f}"
        self.progress.update(self.task, completed=record["epoch"], stats=stats)

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


class JobBar:
    """A progress bar over the runs of a sweep or the folds of a cv, on stderr when it is a terminal. It
    appears once the plan is validated (start), so that an input mistake stays a single line."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn(label), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(), console=stderr,
                                 disable=not stderr.is_terminal)
        self.task = self.progress.add_task(label, total=None)

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)
        self.progress.start()

    def advance(self, failure: str | None = None) -> None:
        self.progress.advance(self.task)
        if failure is not None:
            self.progress.console.print(f"[red]failed:[/red] {escape(failure)}", highlight=False)

    def __enter__(self) -> JobBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@app.command()
def train(
    config: ConfigOption = None,
    overrides: SetOption = None,
    runs_root: RunsRootOption = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory from its last checkpoint.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Train a model from a YAML config into a new run directory (or --resume one)."""
    from foodcls.signals import exit_code, sigterm_as_interrupt

    with reported_errors(), sigterm_as_interrupt() as received:
        from foodcls.training import fit as training
        from foodcls.config import load_config

        if (config is None) == (resume is None):
            raise FoodclsError("give either --config PATH (a new run) or --resume RUN_DIR (continue one)")
        try:
            with EpochBar() as on_epoch:
                if config is not None:
                    cfg = load_config(config, overrides or [])
                    result = training.train(cfg, runs_root=runs_root, name=config.stem, on_epoch=on_epoch)
                else:
                    result = training.resume(resume, overrides or [], on_epoch=on_epoch)
        except KeyboardInterrupt:  # before any run directory existed: nothing to save
            stderr.print("interrupted")
            raise typer.Exit(code=exit_code(received)) from None
    if as_json:
        print_json(result.to_json())
    else:
        stdout.print(f"run: {result.run_dir}  ({result.status}, {result.epochs_run} epochs, best epoch {result.best_epoch}, {result.train_seconds:.1f} s)")
        if result.val_accuracy is not None:
            stdout.print(f"val accuracy: {result.val_accuracy:.4f}")
        if result.test_accuracy is not None:
            stdout.print(f"test accuracy: {result.test_accuracy:.4f}")
        stdout.print(f"best checkpoint: {result.best_checkpoint}")
        print_warnings(result.warnings)
    if result.status == "interrupted":
        stderr.print(f"interrupted: resume with `foodcls train --resume {result.run_dir}`")
        raise typer.Exit(code=exit_code(received))


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        stderr.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


@app.command("eval")
def eval_(
    checkpoint: CheckpointOption = None,
    data: Annotated[
        Optional[list[Path]], typer.Option("--data", help="Labelled CSV; repeat to score several as one [default: the test file in the checkpoint's config].")
    ] = None,
    baselines: Annotated[bool, typer.Option("--baselines", help="Also train and score majority, logistic regression and gradient boosting.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Score a checkpoint: accuracy, per-class precision/recall/F1, confusion matrix."""
    with reported_errors():
        from foodcls.inference.evaluate import evaluate_checkpoint

        path = _default_checkpoint(checkpoint)
        report = evaluate_checkpoint(path, data)
        if baselines:
            from foodcls.experiments.baselines import baseline_scores

            report["baselines"], report["baseline_details"] = baseline_scores(path, report["data_files"])
    if as_json:
        print_json(report)
        return
    stdout.print(f"checkpoint: {path}\ndata: {report['data']}")
    for table in report_tables.metrics_tables(report):
        stdout.print(table)
    print_warnings(report["warnings"])
    if baselines:
        stdout.print(report_tables.baselines_table(report))


def _nutrient_option(option: str, help_text: str) -> Any:
    return typer.Option(option, help=help_text, show_default=False)


@app.command()
def predict(
    checkpoint: CheckpointOption = None,
    protein: Annotated[Optional[float], _nutrient_option("--protein", "Protein, g per 100 g (0-100).")] = None,
    carbs: Annotated[Optional[float], _nutrient_option("--carbs", "Carbohydrates, g per 100 g (0-100).")] = None,
    fat: Annotated[Optional[float], _nutrient_option("--fat", "Fat, g per 100 g (0-100).")] = None,
    additives: Annotated[Optional[float], _nutrient_option("--additives", "Number of food additives (whole number).")] = None,
    sugars: Annotated[Optional[float], _nutrient_option("--sugars", "Sugars, g per 100 g (if the model uses it).")] = None,
    saturated_fat: Annotated[Optional[float], _nutrient_option("--saturated-fat", "Saturated fat, g per 100 g (if the model uses it).")] = None,
    salt: Annotated[Optional[float], _nutrient_option("--salt", "Salt, g per 100 g (if the model uses it).")] = None,
    fiber: Annotated[Optional[float], _nutrient_option("--fiber", "Fiber, g per 100 g (if the model uses it).")] = None,
    energy: Annotated[Optional[float], _nutrient_option("--energy", "Energy, kcal per 100 g (if the model uses it).")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Fill a value the model uses but you did not give with its training median.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Show each feature's contribution to the predicted class (integrated gradients).")] = False,
    input_path: Annotated[Optional[str], typer.Option("--input", help="Batch: CSV whose header names the model's features, or - for stdin.")] = None,
    output_path: Annotated[Optional[str], typer.Option("--output", help="Batch output CSV, or - for stdout [default: -].")] = None,
    as_json: JsonOption = False,
) -> None:
    """Predict the class of one product, or of every row of a CSV (--input)."""
    values = {"protein": protein, "carbs": carbs, "fat": fat, "additives": additives, "sugars": sugars,
              "saturated_fat": saturated_fat, "salt": salt, "fiber": fiber, "energy": energy}
    with reported_errors():
        from foodcls.inference.predict import check_product, load_predictor

        if input_path is not None:
            if any(v is not None for v in values.values()):
                raise FoodclsError("give either --input or single-product values such as --protein, not both")
            _predict_batch(_default_checkpoint(checkpoint), input_path, output_path or "-", explain)
            return
        if all(v is None for v in values.values()):
            raise FoodclsError("give the product's values (--protein, --carbs, --fat, --additives, …) or --input CSV for a batch")
        predictor = load_predictor(_default_checkpoint(checkpoint))
        checked = check_product(values, predictor.features, predictor.fill_values, allow_missing)
        probabilities = predictor.probabilities([checked.values])[0]
        explanation = None
        if explain:
            import numpy as np

            from foodcls.inference.explain import integrated_gradients

            explanation = integrated_gradients(predictor, np.array(checked.values, dtype=np.float64))
    print_warnings(checked.warnings)
    best = predictor.classes[int(probabilities.argmax())]
    by_class = {name: float(p) for name, p in zip(predictor.classes, probabilities)}
    if as_json:
        out: dict[str, Any] = {"class": best, "probabilities": by_class, "warnings": checked.warnings}
        if explanation is not None:
            out["contributions"] = dict(zip(predictor.features, explanation.contributions.tolist()))
            out["baseline_probability"] = explanation.baseline_probability
        print_json(out)
        return
    stdout.print(f"[bold]{best}[/bold]")
    for name, p in by_class.items():
        stdout.print(f"  {name:<10} {p:.4f}", highlight=False)
    if explanation is not None:
        stdout.print(report_tables.explanation_table(predictor, checked.values, explanation, best))


def _predict_batch(checkpoint: Path, input_path: str, output_path: str, explain: bool = False) -> None:
    from foodcls.fileio import atomic_write_text
    from foodcls.inference.predict import predict_csv

    text = predict_csv(checkpoint, input_path, explain)  # everything is read and checked before anything is written
    if output_path == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(output_path, text)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Directory for train.csv and test.csv.")],
    n_train: Annotated[int, typer.Option("--n-train", min=4, help="Training rows.")] = 8000,
    n_test: Annotated[int, typer.Option("--n-test", min=4, help="Test rows.")] = 2000,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed [default: the demo set's].")] = None,
    rich: Annotated[bool, typer.Option("--rich", help="All nine nutrients (data/demo-rich), not just the seed's four.")] = False,
    archetypes: Annotated[str, typer.Option("--archetypes", help="demo (data/demo), or off: also the archetypes real exports have and the demo lacks (data/synth-off).")] = "demo",
) -> None:
    """Generate a synthetic set (balanced mixtures of real product archetypes)."""
    with reported_errors():
        from foodcls.synth import DEFAULT_SEED, write_demo_set

        paths = write_demo_set(out, n_train, n_test, DEFAULT_SEED if seed is None else seed, rich=rich, kind=archetypes)
    for split, path in paths.items():
        stdout.print(f"{split}: {path}")


@data_app.command("build")
def data_build(
    sources: Annotated[list[Path], typer.Argument(help="Open Food Facts exports: CSV/TSV (any separator, encoding, gzip) or JSONL.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for train.csv, val.csv, test.csv, datacard.json, README.md.")],
    rules: Annotated[Optional[Path], typer.Option("--rules", help="Labelling rules YAML [default: the shipped rules].")] = None,
    split: Annotated[str, typer.Option("--split", help="Train, val, test fractions.")] = "0.8,0.1,0.1",
    as_json: JsonOption = False,
) -> None:
    """Label, clean, de-duplicate and split real products into training files."""
    with reported_errors():
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from foodcls.offdata.build import build_dataset

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=stderr, transient=True) as progress:
            task = progress.add_task("reading", total=None)
            card = build_dataset(
                sources, out, rules, split,
                on_batch=lambda path, rows: progress.update(task, description=f"{path.name}: {rows:,} rows read"),
            )
    if as_json:
        print_json(card)
        return
    for table in report_tables.build_tables(card, out):
        stdout.print(table)


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option("--out", help="Where to save the file (streamed to OUT.part first).")],
    url: Annotated[Optional[str], typer.Option("--url", help="What to download [default: Open Food Facts' CSV export].")] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected SHA-256 of the whole file.")] = None,
) -> None:
    """Download an Open Food Facts export; an interrupted download resumes where it stopped."""
    with reported_errors():
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        from foodcls.offdata.download import OFF_CSV_EXPORT, download

        source = url or OFF_CSV_EXPORT
        with Progress(
            BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=stderr, transient=True
        ) as progress:
            task = progress.add_task("download", total=None)
            path = download(source, out, sha256, on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    stdout.print(f"saved {source} → {path} ({path.stat().st_size:,} bytes)")


@runs_app.command("list")
def runs_list(runs_root: RunsRootOption = Path("runs"), as_json: JsonOption = False) -> None:
    """All runs under the runs root, oldest first: status, epochs, best val and test accuracy."""
    from foodcls.runs import find_runs, run_overview

    overviews = [run_overview(d) for d in find_runs(runs_root)]
    if as_json:
        print_json(overviews)
        return
    stdout.print(report_tables.runs_table(overviews, runs_root))
    for o in overviews:
        if o["status"] == "failed" and o.get("error"):
            stderr.print(f"[red]failed:[/red] {escape(str(Path(o['run_dir']).relative_to(runs_root)))}: {escape(o['error'])}", highlight=False)


@runs_app.command("compare")
def runs_compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to put side by side.")],
    as_json: JsonOption = False,
) -> None:
    """The runs' metrics side by side, and only the config keys that differ."""
    with reported_errors():
        from foodcls.runs import compare_runs

        comparison = compare_runs(run_dirs)
    if as_json:
        print_json(comparison)
        return
    stdout.print(report_tables.compare_table(comparison))


@app.command()
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Base YAML config.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="KEY=V1,V2,... (repeatable): every combination is run.")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per combination: train.seed, +1, +2, ...")] = 1,
    overrides: SetOption = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Parallel worker processes (default: one per core).")] = None,
    cluster: ClusterOption = None,
    runs_root: RunsRootOption = Path("runs"),
    as_json: JsonOption = False,
) -> None:
    """Run a grid of configs × seeds in parallel; report mean ± std per combination."""
    with reported_errors(), JobBar("runs") as bar:
        from foodcls.experiments.sweep import run_sweep

        def on_run(run: dict[str, Any]) -> None:
            bar.advance(f"{run['params']} seed {run['seed']}: {run['error']}" if run["status"] == "failed" else None)

        report = run_sweep(config, grid or [], seeds, overrides or [], workers, runs_root, on_run=on_run, on_start=bar.start,
                           cluster=cluster)
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
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Parallel worker processes (default: one per core).")] = None,
    baselines: Annotated[bool, typer.Option("--baselines", help="Also cross-validate the baselines on the same folds.")] = False,
    cluster: ClusterOption = None,
    runs_root: RunsRootOption = Path("runs"),
    as_json: JsonOption = False,
) -> None:
    """Cross-validate a config: per-fold figures, mean ± std over folds, and pooled out-of-fold figures."""
    with reported_errors(), JobBar("folds") as bar:
        from foodcls.experiments.cv import run_cv

        def on_fold(fold: dict[str, Any]) -> None:
            bar.advance(f"fold {fold['fold']}: {fold['error']}" if fold["status"] == "failed" else None)

        report = run_cv(config, folds, group_by, overrides or [], workers, runs_root, baselines, on_fold=on_fold, on_start=bar.start,
                        cluster=cluster)
    if as_json:
        print_json(report)
        return
    stdout.print(report_tables.cv_table(report))
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
    runs_root: RunsRootOption = Path("runs"),
    as_json: JsonOption = False,
) -> None:
    """Search hyperparameters with Optuna; every trial an ordinary run; the best config as best.yaml."""
    with reported_errors():
        from foodcls.experiments.tune import run_tune, show_tune

        if show:
            if study is None:
                raise FoodclsError("--show needs --study NAME")
            report = show_tune(study, storage, runs_root)
        else:
            if config is None or space is None:
                raise FoodclsError("give --config PATH and --space SPACE.yaml (or --show --study NAME)")

            def on_trial(trial: dict[str, Any]) -> None:
                value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
                stderr.print(f"trial {trial['number']}: {trial['state']} {value} {json.dumps(trial['params'])}", highlight=False)

            report = run_tune(config, space, trials, sampler, pruner, metric, study, storage, workers, cluster, overrides or [],
                              runs_root, folds, group_by, on_trial if stderr.is_terminal else None)
    if as_json:
        print_json(report)
        return
    stdout.print(report_tables.tune_table(report))


@app.command()
def serve(
    checkpoint: CheckpointOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes.")] = 1,
) -> None:
    """Serve a checkpoint over HTTP: POST /predict, /predict/batch; GET /health, /model, and a page at /."""
    with reported_errors():
        import os

        import uvicorn

        from foodcls.inference.checkpoint import resolve_checkpoint_path
        from foodcls.inference.predict import load_predictor
        from foodcls.serve.app import CHECKPOINT_ENV

        path = resolve_checkpoint_path(_default_checkpoint(checkpoint))
        load_predictor(path)  # a bad checkpoint is one line here, not a traceback in every worker
        os.environ[CHECKPOINT_ENV] = str(path.resolve())
        stderr.print(f"serving {path} on http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run("foodcls.serve.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


@app.command("export")
def export_(
    out: Annotated[Path, typer.Option("--out", help="File to write, e.g. model.onnx.")],
    checkpoint: CheckpointOption = None,
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
) -> None:
    """Export a checkpoint (scaling, fill values and network in one graph) for other runtimes."""
    with reported_errors():
        from foodcls.inference.export import export

        path = export(_default_checkpoint(checkpoint), out, fmt)
    stdout.print(f"wrote {path}")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    out: Annotated[Path, typer.Option("--out", help="Where the overlay plots of several runs go.")] = Path("."),
) -> None:
    """Redraw each run's plots; with several runs, also overlay their learning curves and gradient norms."""
    with reported_errors():
        from foodcls.training.plots import plot_grad_norms, plot_learning_curves, write_run_plots
        from foodcls.runs import resolve_run_dir

        runs = [resolve_run_dir(d) for d in run_dirs]
        written = [path for run in runs for path in write_run_plots(run)]
        if len(runs) > 1:
            out.mkdir(parents=True, exist_ok=True)
            written += [out / "compare_learning_curves.png", out / "compare_grad_norms.png"]
            plot_learning_curves(runs, written[-2])
            plot_grad_norms(runs, written[-1])
    for path in written:
        stdout.print(str(path))
