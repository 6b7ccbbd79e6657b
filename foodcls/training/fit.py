"""Training's entry points: train a new run, several at once (those of one shape in lockstep), or resume
one. Checkpoints are written on a time budget (train.checkpoint_seconds), at the end, and on interrupt;
the best weights wait in memory until then. run.py keeps one run's files, stack.py does the maths."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from foodcls import runs
from foodcls.config import Config, config_to_dict, config_to_yaml, load_config
from foodcls.data import Splits, load_splits
from foodcls.errors import ConfigError, DataError, FoodclsError, ResourceError, WriteError
from foodcls.fileio import atomic_write_text
from foodcls.inference.checkpoint import Checkpoint, load_checkpoint
from foodcls.tracking import best_effort, check_tracking, log_run
from foodcls.training import composite
from foodcls.training.run import EpochCallback, Run, RunPruned, RunSpec, finish, init_checkpoint, same_network
from foodcls.training.stack import EVAL_THREADS, TORCH_THREADS, Interrupted, fit_stack, group_key
from foodcls.training.trainstate import restore_state

__all__ = ["RunPruned", "RunSpec", "TrainResult", "fit_runs", "group_key", "resume", "train", "train_many"]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    status: str  # finished | interrupted | pruned
    epochs_run: int
    best_epoch: int | None
    test_accuracy: float | None
    val_accuracy: float | None
    train_seconds: float
    warnings: list[str] = field(default_factory=list)  # about the final test evaluation (eval's warnings)

    @property
    def best_checkpoint(self) -> Path:
        return runs.best_checkpoint(self.run_dir)

    @property
    def last_checkpoint(self) -> Path:
        return runs.last_checkpoint(self.run_dir)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "best_checkpoint": str(self.best_checkpoint),
            "last_checkpoint": str(self.last_checkpoint),
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "warnings": self.warnings,
        }



def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available (use cpu or auto)")
    return torch.device(name)



def _result(member: Run) -> TrainResult:
    s = member.summary
    return TrainResult(run_dir=member.run_dir, status=s["status"], epochs_run=s["epochs_run"], best_epoch=s["best_epoch"],
                       test_accuracy=s["test_accuracy"], val_accuracy=s["val_accuracy"], train_seconds=s["train_seconds"],
                       warnings=s["warnings"])


def fit_runs(specs: list[RunSpec], *, eval_threads: int = EVAL_THREADS) -> list[TrainResult]:
    """Train (or resume) runs, those of one shape together in lockstep; results in the order given.
    Every run's data are read and checked before anything is written. eval_threads: the evaluation pass's
    threads (1 in a worker among several: see stack.py)."""
    torch.set_num_threads(TORCH_THREADS)
    with _subnormals_flushed():
        return _fit_runs(specs, eval_threads)


@contextlib.contextmanager
def _subnormals_flushed() -> Iterator[None]:
    """Adam's second moments and late gradients decay into subnormal floats, which the CPU handles in
    microcode: measured on configs/off.yaml, 150 epochs took 42.2 s with them and 17.5 s flushed to zero
    (same test accuracy). Numbers that small change no weight that matters; results stay deterministic.
    The flag is the thread's processor state, so it is put back afterwards: code that runs later in the
    same process (hypothesis, numpy) relies on IEEE subnormals."""
    was_flushing = bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def _fit_runs(specs: list[RunSpec], eval_threads: int) -> list[TrainResult]:
    locks = []
    try:
        for spec in specs:
            locks.append(spec.lock or runs.lock_run(spec.run_dir))
        return _fit_locked(specs, eval_threads)
    finally:
        for lock in locks:
            lock.close()  # releases the flock


def _fit_locked(specs: list[RunSpec], eval_threads: int) -> list[TrainResult]:
    members = []
    for spec in specs:
        device = _resolve_device(spec.config.train.device)
        members.append((Run(spec, spec.splits or load_splits(spec.config), device), device))
    for member, _ in members:
        member.start()
    groups: dict[tuple, list[Run]] = {}
    for member, device in members:
        groups.setdefault((group_key(member.config), str(device)), []).append(member)
    interrupted = False
    for (_, device_name), group in groups.items():
        if interrupted:
            break
        pending = [m for m in group if m.progress.epoch < m.config.train.epochs]
        try:
            if pending:
                fit_stack(pending, torch.device(device_name), eval_threads)
        except Interrupted:
            interrupted = True
        for member in group:
            if member.progress.epoch >= member.config.train.epochs and not member.done:
                finish(member)  # resumed with nothing left to do
    for member, _ in members:
        if not member.done:  # never started: an earlier stack was interrupted first
            member.status, member.stop_reason = "interrupted", "interrupted"
            finish(member)
    return [_result(member) for member, _ in members]


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(config: Config, splits: Splits, networks: int = 1) -> None:
    """Refuse, before anything is written, a model that cannot fit in this machine's memory (networks: how
    many a composite run trains at once)."""
    names = config.model.name if config.uses_name else None
    sizes = [len(config.nutrients) + (names.dim if names else 0), *config.model.hidden, len(config.data.classes)]
    params = sum(i * o + o for i, o in zip(sizes, sizes[1:])) + (names.buckets * names.dim if names else 0)
    rows = config.train.batch_size + sum(len(d) for d in (splits.train, splits.val, splits.test) if d is not None)
    # Weights, gradients, two optimizer buffers, the in-memory best and last snapshots, float32; and the
    # activations of a batch and of the evaluation pass.
    need = (params * 4 * 6 + rows * max(sizes) * 4 * 4) * networks
    available = available_memory()
    if available is not None and need > 0.8 * available:
        raise ResourceError(f"model.hidden={list(config.model.hidden)}: training needs about {need / 1e9:.1f} GB "
                            f"({params * networks:,} parameters), more than the {available / 1e9:.1f} GB of memory available")


def _check_inputs(config: Config) -> tuple[Splits, Checkpoint | None]:
    """Everything a new run reads, validated before anything is written: its data and its init checkpoint
    (and, for calibration across sources, that the data hold enough sources)."""
    splits = load_splits(config)
    check_memory(config, splits, composite.count_networks(config))
    init = init_checkpoint(config)
    _resolve_device(config.train.device)
    return splits, init


@dataclass
class _Planned:
    """A new run ready to train: its one spec, or a composite's parts."""

    run_dir: Path
    specs: list[RunSpec]
    composite: composite.Composite | None = None
    lock: Any = None  # a composite run's own lock, held while its parts train


def _new_run(config: Config, runs_root: str | Path, name: str, inputs: tuple[Splits, Checkpoint | None],
             on_epoch: EpochCallback | None = None) -> _Planned:
    run_dir = runs.create_run_dir(runs_root, name)
    try:
        atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
        splits, init = inputs
        if not config.composite:
            return _Planned(run_dir, [RunSpec(config, run_dir, name, None, on_epoch, splits, init)])
        lock = runs.lock_run(run_dir)
        _start_composite(run_dir, name, splits)
        planned = composite.plan(config, run_dir, name, splits, on_epoch)
        return _Planned(run_dir, planned.specs, planned, lock)
    except (WriteError, FoodclsError):
        shutil.rmtree(run_dir, ignore_errors=True)  # a run directory without its config would be no run at all
        raise


def _start_composite(run_dir: Path, name: str, splits: Splits) -> None:
    """A composite run's summary while its parts train (each part has its own)."""
    import os
    import platform
    from datetime import datetime, timezone

    import numpy as np

    from foodcls import __version__
    from foodcls.training.run import write_summary

    summary = runs.read_summary(run_dir)
    summary.update(name=name, status="running", pid=os.getpid(),
                   started_at=summary.get("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds")),
                   data={s: len(d) if d is not None else 0 for s, d in (("train", splits.train), ("val", splits.val), ("test", splits.test))},
                   versions={"foodcls": __version__, "torch": torch.__version__, "numpy": np.__version__,
                             "python": platform.python_version()})
    summary.pop("error", None)
    if "data_provenance" not in summary:
        summary["data_provenance"] = runs.data_provenance(config_to_dict(load_config(run_dir / runs.CONFIG_FILE)))
    write_summary(run_dir, summary)


def _finished(planned: _Planned, results: list[TrainResult]) -> TrainResult:
    """A planned run's result once its specs trained: a composite is assembled first."""
    if planned.composite is None:
        return results[0]
    try:
        summary = composite.assemble(planned.composite)
    finally:
        if planned.lock is not None:
            planned.lock.close()
    return TrainResult(run_dir=planned.run_dir, status=summary["status"], epochs_run=summary["epochs_run"],
                       best_epoch=summary.get("best_epoch"), test_accuracy=summary.get("test_accuracy"),
                       val_accuracy=summary.get("val_accuracy"), train_seconds=summary["train_seconds"],
                       warnings=summary.get("warnings", []))


def _fit_planned(plans: list[_Planned], eval_threads: int) -> list[TrainResult]:
    """Train every planned run's specs together (those of one shape in lockstep); one result per plan."""
    specs = [spec for planned in plans for spec in planned.specs]
    try:
        results = fit_runs(specs, eval_threads=eval_threads) if specs else []
    except BaseException:
        for planned in plans:
            if planned.lock is not None:
                planned.lock.close()
        raise
    out, start = [], 0
    for planned in plans:
        out.append(_finished(planned, results[start : start + len(planned.specs)]))
        start += len(planned.specs)
    return out


def train(config: Config, runs_root: str | Path = "runs", name: str = "run", on_epoch: EpochCallback | None = None, *,
          eval_threads: int = EVAL_THREADS, track: bool = True) -> TrainResult:
    """Train a new run under runs_root/<name>-<timestamp> and return its figures. With tracking.mlflow (and
    track: a search's trial is logged by the search instead), the finished run is logged there too."""
    inputs = _check_inputs(config)
    _every_class_taught(config, inputs[0])
    if track:
        check_tracking(config.tracking.mlflow)
    result = _fit_planned([_new_run(config, runs_root, name, inputs, on_epoch)], eval_threads)[0]
    if track and config.tracking.mlflow:
        log_run_safely(config, result)
    return result


def _every_class_taught(config: Config, splits: Splits) -> None:
    """Refuse a class no training row is labelled with: the model could never answer it (configs/off_open.yaml on
    a build made without --other had only `other: only 0 evaluation rows` to say so). A search's or cv's runs
    may lack a class (a fold without it); a training of one's own may not."""
    import numpy as np

    counts = np.bincount(splits.train.labels, minlength=len(config.data.classes))
    for name, count in zip(config.data.classes, counts.tolist()):
        if count == 0:
            hint = " (a build made without --other keeps none: foodcls data build EXPORT... --other --out DIR)" if name == "other" else ""
            raise DataError(f"data.classes: no training row is labelled {name!r}{hint}")


def log_run_safely(config: Config, result: TrainResult) -> None:
    """Log a finished run to MLflow, best effort (tracking.best_effort): a failure is one of its warnings."""
    warning = best_effort(log_run, config.tracking.mlflow, result.run_dir, None, config.tracking.registered_model)
    if warning is not None:
        result.warnings.append(warning)


def train_many(items: list[tuple[Config, str]], runs_root: str | Path = "runs", *,
               eval_threads: int = EVAL_THREADS) -> list[TrainResult | FoodclsError]:
    """Train several new runs (config, name), those of one shape together in lockstep (a composite run's
    parts too). A run whose input is bad comes back as its error, with no directory made; the others train."""
    outcomes: list[TrainResult | FoodclsError | None] = [None] * len(items)
    plans, positions = [], []
    for i, (config, name) in enumerate(items):
        try:
            plans.append(_new_run(config, runs_root, name, _check_inputs(config)))
        except FoodclsError as error:
            outcomes[i] = error
            continue
        positions.append(i)
    for i, result in zip(positions, _fit_planned(plans, eval_threads)):
        outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), on_epoch: EpochCallback | None = None) -> TrainResult:
    """Continue a run in place from its last checkpoint; ends bit-identical to an uninterrupted run. A
    composite run resumes each unfinished part and is assembled again."""
    run_dir = runs.resolve_run_dir(run_dir)
    lock = runs.lock_run(run_dir)  # before anything is read or written: the run may still be training
    try:
        return _resume_locked(run_dir, lock, overrides, on_epoch)
    except BaseException:
        lock.close()
        raise


def _resume_locked(run_dir: Path, lock, overrides: list[str] | tuple[str, ...], on_epoch: EpochCallback | None) -> TrainResult:
    # Everything is read and checked before anything is written: a refused --set leaves the run as it was.
    config = load_config(run_dir / runs.CONFIG_FILE, overrides)
    stored = load_config(run_dir / runs.CONFIG_FILE)
    if config.composite != stored.composite or config.model.ensemble != stored.model.ensemble:
        raise ConfigError("--set: model.ensemble and train.calibration: sources cannot change on resume")
    checkpoint = None if config.composite else (load_checkpoint(runs.last_checkpoint(run_dir)) if runs.last_checkpoint(run_dir).exists() else None)
    restored = None
    if checkpoint is not None:
        restored = restore_state(checkpoint)  # refuses a checkpoint that is not resumable
        if not same_network(checkpoint.meta["model"], config):
            raise ConfigError("--set: the model section cannot change on resume")
        if (list(checkpoint.meta["classes"]) != list(config.data.classes) or list(checkpoint.meta["features"]) != list(config.nutrients)
                or checkpoint.meta.get("name") != (config.model.name.stored() if config.uses_name else None)):
            raise ConfigError("--set: data.classes and data.features cannot change on resume (the network's inputs and outputs)")
    splits = load_splits(config)
    _resolve_device(config.train.device)
    check_tracking(config.tracking.mlflow)
    name = runs.read_summary(run_dir).get("name", run_dir.name)
    if config.composite:
        planned_composite = composite.plan(config, run_dir, name, splits, on_epoch, resuming=True)
        atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
        _start_composite(run_dir, name, splits)
        planned = _Planned(run_dir, planned_composite.specs, planned_composite, lock)
    else:
        atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
        planned = _Planned(run_dir, [RunSpec(config, run_dir, name, checkpoint, on_epoch, splits, restored=restored, lock=lock)])
    result = _fit_planned([planned], EVAL_THREADS)[0]
    if config.tracking.mlflow:
        log_run_safely(config, result)
    return result
