"""What every command shares: the consoles, the one-line error, the app and its sub-apps, the common
options, progress bars."""

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
    # Help strings are plain text: with Rich markup on, "[default: …]" and "[low, high]" in them were read as
    # markup tags and dropped from --help.
    rich_markup_mode=None,
    help="Train a small neural network that sorts packaged food into beverages, meats, snacks and desserts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make datasets: the synthetic demo set, Open Food Facts downloads and builds.", no_args_is_help=True,
                       rich_markup_mode=None)
runs_app = typer.Typer(help="List, show and compare run directories.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")


ClusterOption = Annotated[
    Optional[str], typer.Option("--cluster", help="Run on a Dask cluster: tcp://host:8786, or local[:N] to start one here.")
]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")]
RunsRootOption = Annotated[Path, typer.Option("--runs-root", help="Where run directories live.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
WorkersOption = Annotated[Optional[int], typer.Option("--workers", min=1, help="Parallel worker processes (default: one per core).")]
MlflowOption = Annotated[Optional[str], typer.Option("--mlflow", help="Log the runs to this MLflow tracking URI (sets tracking.mlflow), e.g. sqlite:///mlruns.db.")]


def with_mlflow(overrides: list[str] | None, uri: str | None) -> list[str]:
    """The --set overrides, plus tracking.mlflow when --mlflow was given: quoted (a JSON string is a YAML
    scalar taken verbatim), so a URI is never read as YAML (` #1` a comment, `null` no tracking)."""
    return [*(overrides or []), *([f"tracking.mlflow={json.dumps(uri)}"] if uri else [])]
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


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        stderr.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


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


def default_checkpoint(checkpoint: Path | None) -> Path:
    """--checkpoint, or the newest finished run's best, said on stderr (which model answers is never a guess)."""
    from foodcls.runs import newest_best_checkpoint

    if checkpoint is not None:
        return checkpoint
    chosen = newest_best_checkpoint("runs")
    stderr.print(f"using {chosen} (the newest finished run's best checkpoint)", highlight=False, soft_wrap=True)
    return chosen


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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.label, self.done, self.total = label, 0, 0
        self.piped = not stderr.is_terminal
        self.progress = Progress(TextColumn(label), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=stderr, disable=self.piped)
        self.task = self.progress.add_task(label, total=None)

    def start(self, total: int) -> None:
        self.total = total
        self.progress.update(self.task, total=total)
        self.progress.start()
        if self.piped:  # one line per stage where there is no bar (a pipe, a log file)
            stderr.print(f"{self.label}: {total} to train, side by side in lockstep stacks", highlight=False)

    def advance(self, failure: str | None = None, what: str | None = None) -> None:
        self.done += 1
        self.progress.advance(self.task)
        if failure is not None:
            self.progress.console.print(f"[red]failed:[/red] {escape(failure)}", highlight=False)
        elif self.piped:
            stderr.print(f"{self.label}: {self.done}/{self.total} done" + (f" ({what})" if what else ""), highlight=False)

    def __enter__(self) -> JobBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


class BuildProgress:
    """`data build`'s bar on stderr, when it is a terminal: the current file, rows read, MB of the
    exports read out of their total on disk, and the rate in rows per second. It appears with the
    first batch, so an input error stays a single line."""

    def __init__(self, sources: list[Path]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.sizes = {Path(s): Path(s).stat().st_size if Path(s).is_file() else 0 for s in sources}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rows]:,} rows"),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} MB"), TextColumn("{task.fields[rate]:,.0f} rows/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=True, disable=not stderr.is_terminal,
        )
        self.task = None
        self.done_bytes, self.done_rows = 0, 0
        self.last = (None, 0, 0)  # the previous batch's (source, rows, bytes)

    def update(self, path: Path, rows: int, bytes_read: int) -> None:
        if path != self.last[0] and self.last[0] is not None:  # a new file: count the last one whole
            self.done_bytes += self.sizes.get(self.last[0], self.last[2])
            self.done_rows += self.last[1]
        self.last = (path, rows, bytes_read)
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(path.name, total=sum(self.sizes.values()) / 1e6, rows=0, rate=0.0)
        elapsed = self.progress.tasks[0].elapsed or 0.0
        total_rows = self.done_rows + rows
        self.progress.update(self.task, description=path.name, completed=(self.done_bytes + bytes_read) / 1e6,
                             rows=total_rows, rate=total_rows / elapsed if elapsed > 0 else 0.0)

    def __enter__(self) -> BuildProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
