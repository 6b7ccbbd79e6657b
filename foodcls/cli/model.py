"""Commands about one model: train, eval, predict, serve, export, plot."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from foodcls import report as report_tables
from foodcls.cli.common import (
    CheckpointOption, ConfigOption, EpochBar, JsonOption, MlflowOption, RunsRootOption, SetOption, app, default_checkpoint, print_json,
    print_warnings,
    reported_errors, stderr, stdout, with_mlflow,
)
from foodcls.errors import FoodclsError, require_extra


@app.command()
def train(
    config: ConfigOption = None,
    overrides: SetOption = None,
    runs_root: RunsRootOption = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory from its last checkpoint.")] = None,
    mlflow: MlflowOption = None,
    register: Annotated[Optional[str], typer.Option("--register", help="Also add the logged MLflow model to the model registry under this name (with --mlflow).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Train a model from a YAML config into a new run directory (or --resume one)."""
    overrides = with_mlflow(overrides, mlflow)
    if register is not None:
        overrides.append(f"tracking.registered_model={json.dumps(register)}")
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


@app.command("eval")
def eval_(
    checkpoint: CheckpointOption = None,
    data: Annotated[
        Optional[list[Path]], typer.Option("--data", help="Labelled CSV; repeat to score several as one [default: the test file in the checkpoint's config].")
    ] = None,
    baselines: Annotated[bool, typer.Option("--baselines", help="Also train and score majority, logistic regression and gradient boosting.")] = False,
    out_of_class: Annotated[Optional[Path], typer.Option("--out-of-class", help="CSV of products in none of the classes (the model's feature columns): how well the model tells them apart.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Score a checkpoint: accuracy, per-class precision/recall/F1, confusion matrix, calibration, sets."""
    with reported_errors():
        from foodcls.inference.evaluate import evaluate_checkpoint

        if baselines:
            require_extra("sklearn", "baselines", "foodcls eval --baselines")
        path = default_checkpoint(checkpoint)
        report = evaluate_checkpoint(path, data, out_of_class)
        if baselines:
            from foodcls.experiments.baselines import baseline_scores, stored_training_config

            stored_training_config(path)  # a checkpoint that cannot serve is one line, before the stage line
            with stderr.status("training the baselines on the checkpoint's training rows…") if stderr.is_terminal else _stage(
                    "training the baselines on the checkpoint's training rows…"):
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


@contextmanager
def _stage(text: str):
    """One line on stderr for a long step where there is no terminal to show a spinner on."""
    stderr.print(text, highlight=False)
    yield


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
    name: Annotated[Optional[str], typer.Option("--name", help="The product's name (if the model uses it), e.g. \"Sirop de fraise\".", show_default=False)] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Fill a value the model uses but you did not give with its training median.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Show each feature's contribution to the predicted class (integrated gradients).")] = False,
    min_confidence: Annotated[Optional[float], typer.Option("--min-confidence", help="Decide `unsure` below this top probability [default: the checkpoint's train.min_confidence].", show_default=False)] = None,
    coverage: Annotated[Optional[float], typer.Option("--coverage", help="Add a conformal set of classes that holds the true class this often, e.g. 0.9.", show_default=False)] = None,
    precision: Annotated[Optional[float], typer.Option("--precision", help="Suggest at this precision (thresholds fitted on the checkpoint's calibration rows) [default: the checkpoint's train.suggest_precision].", show_default=False)] = None,
    input_path: Annotated[Optional[str], typer.Option("--input", help="Batch: an Open Food Facts export (any format `data build` reads), or a CSV whose header names the model's features, or - for stdin.")] = None,
    output_path: Annotated[Optional[str], typer.Option("--output", help="Batch output CSV, or - for stdout [default: -].")] = None,
    uncategorised: Annotated[bool, typer.Option("--uncategorised", help="Export input: write only the products that have no categories.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Predict the class of one product, or of every row of a CSV (--input)."""
    values = {"protein": protein, "carbs": carbs, "fat": fat, "additives": additives, "sugars": sugars,
              "saturated_fat": saturated_fat, "salt": salt, "fiber": fiber, "energy": energy}
    with reported_errors():
        from foodcls.inference.judge import TrustOptions, check_trust_options, judge
        from foodcls.inference.predict import check_product, load_predictor

        options = TrustOptions(min_confidence, coverage, precision)
        if input_path is not None:
            if any(v is not None for v in values.values()) or name is not None:
                raise FoodclsError("give either --input or single-product values such as --protein, not both")
            if _is_export(input_path):
                _predict_export(default_checkpoint(checkpoint), input_path, output_path or "-", options,
                                uncategorised=uncategorised, allow_missing=allow_missing, as_json=as_json)
                return
            if uncategorised:
                raise FoodclsError(f"--uncategorised: {input_path} is not an Open Food Facts export (it has no categories to go by)")
            if as_json:
                raise FoodclsError("--json: a CSV batch's predictions are CSV (--output FILE or stdout); --json summarises "
                                   "an export's (--input EXPORT --output FILE --json)")
            _predict_batch(default_checkpoint(checkpoint), input_path, output_path or "-", explain, options, allow_missing)
            return
        if all(v is None for v in values.values()):
            raise FoodclsError("give the product's values (--protein, --carbs, --fat, --additives, …) or --input CSV for a batch")
        predictor = load_predictor(default_checkpoint(checkpoint))
        check_trust_options(predictor, options)
        checked = check_product(values, predictor.features, predictor.fill_values, allow_missing)
        names = None
        if predictor.name is not None:
            names = [name]
            if not name:
                checked.warnings.append("no --name: this model reads the product's name too; without one it decides "
                                        "from the nutrients alone")
        elif name is not None:
            checked.warnings.append("ignored --name: this model reads the nutrients only")
        judged = judge(predictor, [checked.values], options, names)
        probabilities = judged.probabilities[0]
        explanation = None
        if explain:
            import numpy as np

            from foodcls.inference.explain import integrated_gradients

            explanation = integrated_gradients(predictor, np.array(checked.values, dtype=np.float64), name=name)
    print_warnings(checked.warnings)
    best = predictor.classes[int(probabilities.argmax())]
    by_class = {name: float(p) for name, p in zip(predictor.classes, probabilities)}
    fields = judged.fields(0)
    if as_json:
        out: dict[str, Any] = {"class": best, "probabilities": by_class, **fields, "warnings": checked.warnings}
        if explanation is not None:
            out["contributions"] = dict(zip(predictor.features, explanation.contributions.tolist()))
            if explanation.name is not None:
                out["contributions"]["name"] = explanation.name
                out["name_ngrams"] = dict(explanation.ngrams)
            out["baseline_probability"] = explanation.baseline_probability
        print_json(out)
        return
    decision = fields["decision"]
    stdout.print(f"[bold]{best}[/bold]" + (f" (decision: {decision})" if decision != best else "")
                 + (" — suggested" if fields["suggest"] else ""))
    for name, p in by_class.items():
        stdout.print(f"  {name:<10} {p:.4f}", highlight=False)
    if "set" in fields:
        stdout.print(f"  {coverage:.0%} set: {{{', '.join(fields['set'])}}}", highlight=False)
    if explanation is not None:
        stdout.print(report_tables.explanation_table(predictor, checked.values, explanation, best))


def _is_export(input_path: str) -> bool:
    if input_path == "-":
        return False
    from foodcls.inference.exports import refuse_bad_export
    from foodcls.offdata.read import looks_like_export

    refuse_bad_export(input_path)
    return looks_like_export(Path(input_path))


def _predict_export(checkpoint: Path, export: str, output_path: str, options, *, uncategorised: bool, allow_missing: bool,
                    as_json: bool) -> None:
    """predict over an export, streamed; a file output is written whole or not at all."""
    from foodcls.cli.common import BuildProgress
    from foodcls.fileio import atomic_write
    from foodcls.inference.exports import predict_export
    from foodcls.inference.judge import check_trust_options
    from foodcls.inference.predict import load_predictor

    if as_json and output_path == "-":
        raise FoodclsError("--json prints the summary on stdout: give --output FILE for the predictions")
    predictor = load_predictor(checkpoint)
    check_trust_options(predictor, options)
    with BuildProgress([Path(export)]) as progress:
        def run(handle) -> Any:
            return predict_export(predictor, export, handle, options, uncategorised=uncategorised, allow_missing=allow_missing,
                                  on_batch=progress.update)

        if output_path == "-":
            summary = run(sys.stdout)
        else:
            outcome = []
            atomic_write(output_path, lambda tmp: outcome.append(_write_with(tmp, run)))
            summary = outcome[0]
    print_warnings(summary.fill_warnings(predictor.fill_values))
    if as_json:
        print_json(summary.to_json())
        return
    facts = summary.to_json()
    suggested = ", ".join(f"{c} {n:,}" for c, n in summary.suggested.items())
    stderr.print(f"{facts['rows']:,} rows ({summary.format}): scored {summary.scored:,}, missing {summary.missing:,}, "
                 f"invalid {summary.invalid:,}; suggested {facts['suggested_total']:,} ({suggested}); "
                 f"wrote {summary.written:,} rows{'' if output_path == '-' else ' to ' + output_path} in {summary.seconds:.1f} s", highlight=False)
    if not predictor.operating_point and options.precision is None:
        stderr.print("note: this checkpoint has no operating point: nothing is suggested (train.suggest_precision, "
                     "or --precision P)", highlight=False)


def _write_with(path: str, run) -> Any:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        return run(handle)


def _predict_batch(checkpoint: Path, input_path: str, output_path: str, explain: bool, options, allow_missing: bool) -> None:
    from foodcls.fileio import atomic_write_text
    from foodcls.inference.predict import predict_csv

    # Everything is read and checked before anything is written.
    text, warnings = predict_csv(checkpoint, input_path, explain, options, allow_missing)
    print_warnings(warnings)
    if output_path == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(output_path, text)


@app.command()
def serve(
    checkpoint: CheckpointOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes.")] = 1,
    expose_paths: Annotated[bool, typer.Option("--expose-paths", help="Show the checkpoint's and the training data's paths in /model (file names only without it).")] = False,
    allowed_host: Annotated[Optional[list[str]], typer.Option("--allowed-host", help="Also answer requests for this Host name (repeatable); default: the --host and the loopback names.")] = None,
) -> None:
    """Serve a checkpoint over HTTP: POST /predict, /predict/batch; GET /health, /model, and a page at /."""
    with reported_errors():
        import os

        require_extra("fastapi", "serve", "foodcls serve")
        require_extra("uvicorn", "serve", "foodcls serve")
        import uvicorn

        from foodcls.inference.checkpoint import resolve_checkpoint_path
        from foodcls.inference.predict import load_predictor
        from foodcls.serve.app import CHECKPOINT_ENV, EXPOSE_PATHS_ENV, HOSTS_ENV, allowed_hosts

        path = resolve_checkpoint_path(default_checkpoint(checkpoint))
        load_predictor(path)  # a bad checkpoint is one line here, not a traceback in every worker
        _port_free(host, port)
        os.environ[CHECKPOINT_ENV] = str(path.resolve())
        os.environ[EXPOSE_PATHS_ENV] = "1" if expose_paths else "0"
        os.environ[HOSTS_ENV] = ",".join([*allowed_hosts(host), *(allowed_host or [])])
        stderr.print(f"serving {path} on http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run("foodcls.serve.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


def _port_free(host: str, port: int) -> None:
    """A port already taken is one line before "serving …" is said (uvicorn's own error came after it, exit 3)."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise FoodclsError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); choose another port, "
                               "or --port 0 for any free one") from None


@app.command()
def card(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
) -> None:
    """Write the run's MODEL_CARD.md again (model, data, evaluation, calibration, intended use, checksum)."""
    with reported_errors():
        from foodcls.inference.card import write_model_card

        path = write_model_card(run)
    stdout.print(f"wrote {path}")


@app.command("export")
def export_(
    out: Annotated[Path, typer.Option("--out", help="File to write, e.g. model.onnx.")],
    checkpoint: CheckpointOption = None,
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
) -> None:
    """Export a checkpoint (scaling, fill values and network in one graph) for other runtimes."""
    with reported_errors():
        require_extra("onnx", "onnx", "foodcls export")
        from foodcls.inference.export import export

        path = export(default_checkpoint(checkpoint), out, fmt)
    stdout.print(f"wrote {path}")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    out: Annotated[Path, typer.Option("--out", help="Where the overlay plots of several runs go.")] = Path("."),
) -> None:
    """Redraw each run's plots; with several runs, also overlay their learning curves and gradient norms."""
    with reported_errors():
        require_extra("matplotlib", "plots", "foodcls plot")
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
