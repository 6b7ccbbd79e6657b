"""Commands about data and run directories: data synth / build / download, runs list / show / compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from foodcls import report as report_tables
from foodcls.cli.common import (
    BuildProgress, JsonOption, RunsRootOption, app, data_app, print_json, reported_errors, runs_app, stderr, stdout,
)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write configs/ and data/ [default: here].")] = Path("."),
) -> None:
    """Write the shipped recipes (configs/) and the demo sets (data/) into DIR, so the README's commands run there."""
    with reported_errors():
        from foodcls.project import init_project

        written = init_project(directory)
    stdout.print(f"wrote {len(written)} files under {directory}/: configs/ ({sum(p.parent.name == 'configs' for p in written)} recipes) "
                 "and data/demo, data/demo-rich, data/synth-off")
    stdout.print(f"next: cd {directory} && foodcls train --config configs/mlp.yaml")


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
    other: Annotated[bool, typer.Option("--other", help="Keep products whose categories name none of the classes, labelled other (a fifth class).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out even when it is not a previous build's output (its files are deleted).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Label, clean, de-duplicate and split real products into training files."""
    with reported_errors():
        from foodcls.offdata.build import build_dataset

        with BuildProgress(sources) as progress:
            card = build_dataset(sources, out, rules, split, on_batch=progress.update, force=force, other=True if other else None)
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
            path = download(source, out, sha256, on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                            on_notice=lambda message: progress.console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False))
    stdout.print(f"saved {source} → {path} ({path.stat().st_size:,} bytes)")


@runs_app.command("list")
def runs_list(runs_root: RunsRootOption = Path("runs"), as_json: JsonOption = False,
              wide: Annotated[bool, typer.Option("--wide", help="Every column, however narrow the terminal.")] = False) -> None:
    """All runs under the runs root, oldest first: status, epochs, best val and test accuracy."""
    from foodcls.runs import find_runs, run_overview

    overviews = [run_overview(d) for d in find_runs(runs_root)]
    if as_json:
        print_json(overviews)
        return
    table = report_tables.runs_table(overviews, runs_root, None if wide else stdout.width)
    if wide:  # every column at its natural width, however narrow the terminal (no column squeezed to "…")
        from rich.console import Console

        Console(width=100_000, soft_wrap=True).print(table)
    else:
        stdout.print(table)
    for o in overviews:
        if o["status"] == "failed" and o.get("error"):
            stderr.print(f"[red]failed:[/red] {escape(str(Path(o['run_dir']).relative_to(runs_root)))}: {escape(o['error'])}", highlight=False)


@runs_app.command("show")
def runs_show(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: JsonOption = False,
) -> None:
    """One run: status and figures, and its config (passwords and tokens in URIs shown as ***)."""
    with reported_errors():
        from foodcls.runs import show_run

        shown = show_run(run_dir)
    if as_json:
        print_json(shown)
        return
    import yaml

    for key in ("run", "status", "epochs", "best_epoch", "val_accuracy", "test_accuracy", "started_at", "error"):
        if shown.get(key) is not None:
            stdout.print(f"{key}: {shown[key]}", highlight=False)
    stdout.print(yaml.safe_dump(shown["config"], sort_keys=False).rstrip(), highlight=False, markup=False)


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
