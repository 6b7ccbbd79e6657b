"""One run inside a training stack: its data, progress, best and last state, and its files (config,
metrics.jsonl, checkpoints, summary.json, plots). The tensor maths of the stack live in stack.py."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from foodcls import __version__, runs
from foodcls.config import Config, config_to_dict
from foodcls.data import LabelledData, Splits
from foodcls.preprocessing import Preprocessing
from foodcls.errors import ConfigError, RunError, WriteError
from foodcls.fileio import atomic_write_json, atomic_write_text, write_error
from foodcls.features import NAME
from foodcls.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weight_arrays
from foodcls.inference.predict import NAME_TABLE
from foodcls.text import NameHashing, ngram_ids
from foodcls.training.names import initial_table
from foodcls.training.model import build_model, linear_layers
from foodcls.training.optim import Schedule
from foodcls.training.trainstate import Progress, RestoredState, model_arrays, model_meta, restore_state, resumable_state

SPLIT_NAMES = ("train", "val", "test")

EpochCallback = Callable[[dict[str, Any], int], None]  # (epoch record, total epochs)


class RunPruned(Exception):
    """Raised by an epoch callback (a search's pruner) to stop that run early: it ends `pruned`, with its
    files written as for any finished run."""



def monitored_metric(config: Config, has_val: bool) -> str:
    """The metric that picks the best checkpoint: never the test set, which stays untouched."""
    if config.train.early_stopping is not None:
        return config.train.early_stopping.monitor
    return "val_loss" if has_val else "train_loss"


def _improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if metric.endswith("accuracy") else value < best - min_delta


def class_weights(config: Config, labels: np.ndarray, train_only: np.ndarray | None = None) -> np.ndarray | None:
    """Per-class weights in the cross-entropy: none, balanced (n / (classes × count)), its square root, or
    by hand. class_weights_from: not_train_only counts only the rows of files that are not train-only
    (train_only marks the others); a class those rows lack weighs 1."""
    setting = config.train.class_weights
    if setting == "none":
        return None
    if isinstance(setting, dict):
        return np.array([setting.get(name, 1.0) for name in config.data.classes])
    counted = labels
    if config.train.class_weights_from == "not_train_only" and train_only is not None and not train_only.all():
        counted = labels[~train_only]
    n_classes = len(config.data.classes)
    counts = np.bincount(counted, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(counted) / (n_classes * np.maximum(counts, 1)), 1.0)
    return np.sqrt(weights) if setting == "sqrt_balanced" else weights


def row_weights(config: Config, data: LabelledData) -> np.ndarray | None:
    """Each training row's weight in the loss: its class's weight times its file's weight; None when all are 1."""
    per_class = class_weights(config, data.labels, data.train_only)
    weights = data.weights.astype(np.float64) * (per_class[data.labels] if per_class is not None else 1.0)
    return None if np.all(weights == 1.0) else weights.astype(np.float32)



@dataclass
class RunSpec:
    """A run to train: a new one (checkpoint None) or one to resume from its last checkpoint."""

    config: Config
    run_dir: Path
    name: str
    checkpoint: Checkpoint | None = None
    on_epoch: EpochCallback | None = None
    splits: Splits | None = None  # the data, when already read and checked (else read by fit_runs)
    init: Checkpoint | None = None  # train.init_from's checkpoint, when already loaded and checked
    restored: RestoredState | None = None  # the resumed checkpoint's training state, when already read
    lock: IO[str] | None = None  # the run directory's lock, when already taken (resume takes it first)
    part: bool = False  # a part of a composite run (composite.py): no plots, no card of its own


class Run:
    """One run inside a stack: what it trains on, how far it is, and its files."""

    def __init__(self, spec: RunSpec, splits: Splits, device: torch.device) -> None:
        self.spec, self.config, self.run_dir, self.splits = spec, spec.config, spec.run_dir, splits
        t = self.config.train
        init = (spec.init or init_checkpoint(self.config)) if spec.checkpoint is None else None
        fitted = Preprocessing.fit(splits.train.features, self.config.data.scaling)
        stored = init if init is not None else spec.checkpoint
        self.prep = Preprocessing.from_checkpoint(stored) if stored is not None else fitted
        if spec.checkpoint is not None and t.init_from is None and not fitted.matches(spec.checkpoint.arrays):
            raise RunError(f"{self.run_dir}: the training data changed since this run started (feature scaling differs)")
        self.n_layers = len(self.config.model.hidden) + 1
        self.weights, self.biases = self._initial_weights(init or spec.checkpoint)
        # The name feature: its hashing, each split's ids (computed once), and the run's bucket vectors.
        self.hashing = NameHashing(**self.config.model.name.model_dump()) if self.config.uses_name else None
        self.name_ids = ({s: ngram_ids(d.columns[NAME], self.hashing) for s, d in zip(SPLIT_NAMES, (splits.train, splits.val, splits.test))
                          if d is not None} if self.hashing is not None else {})
        self.name_table = self._initial_table(init or spec.checkpoint)
        self.schedule = Schedule(t.scheduler, t.lr, t.epochs, t.scheduler_step_size, t.scheduler_gamma)
        self.progress = Progress()
        self.optimizer_state: dict[str, list[np.ndarray]] = {}
        if spec.checkpoint is not None:
            self.progress, schedule_state, self.optimizer_state = spec.restored or restore_state(spec.checkpoint)
            self.schedule.load_state_dict(schedule_state)
        self.y = {s: d.labels for s, d in zip(SPLIT_NAMES, (splits.train, splits.val, splits.test)) if d is not None}
        self.row_weight = row_weights(self.config, splits.train)
        # What feature dropout puts in place of a value: its fill value as the network sees it.
        n_features = len(self.config.nutrients)
        self.fill_input = self.prep.apply(np.full((1, n_features), np.nan, dtype=np.float32))[0]
        self.metric = monitored_metric(self.config, splits.val is not None)
        self.min_delta = t.early_stopping.min_delta if t.early_stopping else 0.0
        self.status, self.stop_reason = "finished", "epochs"
        self.snapshot: dict[str, Any] | None = None  # the last completed epoch's state, until written
        self.best: dict[str, Any] | None = None  # the best epoch's weights and record, until written
        self.last_write = time.monotonic()
        self.summary: dict[str, Any] = {}
        self.done = False  # its final summary is written
        self.metrics_file = None

    def _initial_weights(self, source: Checkpoint | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """From the checkpoint being resumed or fine-tuned, else nn.Linear's init under the run's seed."""
        if source is not None:
            pairs = weight_arrays(source)
            return [w.copy() for w, _ in pairs], [b.copy() for _, b in pairs]
        torch.manual_seed(self.config.train.seed)
        inputs = len(self.config.nutrients) + (self.config.model.name.dim if self.config.uses_name else 0)
        model = build_model(self.config.model, inputs, len(self.config.data.classes))
        layers = linear_layers(model)
        return [layer.weight.detach().numpy().copy() for layer in layers], [layer.bias.detach().numpy().copy() for layer in layers]

    def _initial_table(self, source: Checkpoint | None) -> np.ndarray | None:
        """The bucket vectors of the name feature: from the checkpoint resumed or fine-tuned, else a fresh start."""
        if self.hashing is None:
            return None
        if source is not None and NAME_TABLE in source.arrays:
            return source.arrays[NAME_TABLE].astype(np.float32).copy()
        if self.config.train.name_dropout >= 1:  # never reads a name: zeros, so that predict reads none either
            return np.zeros((self.hashing.buckets, self.hashing.dim), np.float32)
        return initial_table(self.hashing, self.config.train.seed)

    def inputs(self, split: str, out: np.ndarray | None = None) -> np.ndarray:
        """A split's rows as the network sees them (filled, scaled), into `out` if given: made when the stack
        is built, not kept (a million rows are 16 MB a copy)."""
        return self.prep.apply(getattr(self.splits, split).features, out=out)

    @property
    def n_train(self) -> int:
        return len(self.y["train"])

    def steps(self, batch_size: int) -> int:
        return -(-self.n_train // batch_size)

    def start(self) -> None:
        """Mark the run as running and keep only the metrics its checkpoint has seen."""
        summary = runs.read_summary(self.run_dir) if self.spec.checkpoint is not None else {}
        splits = self.splits
        summary.update(
            name=self.spec.name, status="running", pid=os.getpid(),
            started_at=summary.get("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds")),
            monitor=self.metric,
            data={"train": len(splits.train), "val": len(splits.val) if splits.val else 0, "test": len(splits.test) if splits.test else 0},
            versions={"foodcls": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        )
        if "data_provenance" not in summary and not self.spec.part:  # as the data were when it started (a resume keeps it)
            summary["data_provenance"] = runs.data_provenance(config_to_dict(self.config))
        summary.pop("error", None)
        self.summary = summary
        write_summary(self.run_dir, summary)
        _truncate_metrics(self.run_dir, self.progress.epoch)
        self.metrics_file = open(self.run_dir / runs.METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError:
                pass  # its lines were flushed as written; a failing close changes nothing on disk
            self.metrics_file = None

    def fail(self, reason: str) -> None:
        """Mark the run failed, with the reason, as far as the disk still lets us."""
        self.close()
        self.summary.update(status="failed", error=reason, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        try:
            write_summary(self.run_dir, self.summary)
        except WriteError:
            pass  # the error being reported is what matters; the summary stays as last written

    def record_epoch(self, record: dict[str, Any], stack_state: dict[str, Any]) -> bool:
        """Book one finished epoch: best, early stopping, schedule, metrics line. True if the run stops."""
        t = self.config.train
        progress = self.progress
        epoch = progress.epoch = record["epoch"]
        if _improved(record[self.metric], progress.best_value, self.metric, self.min_delta):
            progress.best_value, progress.best_epoch, progress.bad_epochs = record[self.metric], epoch, 0
            self.best = {"weights": stack_state["weights"], "biases": stack_state["biases"], "name_table": stack_state["name_table"],
                         "record": record}
        else:
            progress.bad_epochs += 1
        monitored_loss = record["val_loss" if "val_loss" in record else "train_loss"]
        self.schedule.after_epoch(epoch, monitored_loss if t.scheduler == "plateau" else None)
        progress.train_seconds += record["seconds"]
        self.snapshot = {**stack_state, "record": record, "progress": Progress(**vars(progress)),
                         "schedule": self.schedule.state_dict()}
        try:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        except OSError as error:
            raise write_error(self.run_dir / runs.METRICS_FILE, error) from None
        if self.spec.on_epoch is not None:
            try:
                self.spec.on_epoch(record, t.epochs)
            except RunPruned:
                self.status, self.stop_reason = "pruned", "pruned"
                return True
        stop = t.early_stopping is not None and progress.bad_epochs >= t.early_stopping.patience
        if stop:
            self.stop_reason = "early_stopping"
        return stop or epoch >= t.epochs

    def checkpoint_due(self, now: float) -> bool:
        t = self.config.train
        every = t.checkpoint_every is not None and self.progress.epoch % t.checkpoint_every == 0
        return every or now - self.last_write >= t.checkpoint_seconds

    def write_checkpoints(self, optimizer_kind: str) -> None:
        """The snapshot (last completed epoch) as last.safetensors, and the best weights as best.safetensors."""
        snap = self.snapshot
        if snap is None:
            return
        if self.best is not None:
            best = self.best
            save_checkpoint(runs.best_checkpoint(self.run_dir), model_arrays(best["weights"], best["biases"], self.prep, best["name_table"]),
                            model_meta(self.config, best["record"]["epoch"], best["record"]))
            self.best = None
        model = model_arrays(snap["weights"], snap["biases"], self.prep, snap["name_table"])
        arrays, meta = resumable_state(model, snap["optimizer"], model_meta(self.config, snap["record"]["epoch"], snap["record"]),
                                       snap["progress"], snap["schedule"], optimizer_kind)
        save_checkpoint(runs.last_checkpoint(self.run_dir), arrays, meta)
        self.snapshot = None
        self.last_write = time.monotonic()


def init_checkpoint(config: Config) -> Checkpoint | None:
    """train.init_from: the checkpoint to fine-tune; it must have the config's features and model shape."""
    if config.train.init_from is None:
        return None
    init = load_checkpoint(config.train.init_from)
    if list(init.meta["features"]) != list(config.nutrients) or (init.meta.get("name") is not None) != config.uses_name:
        raise ConfigError(f"train.init_from: {init.path} uses features {', '.join(init.meta['features'])}"
                          f"{' and the name' if init.meta.get('name') is not None else ''}, the config {', '.join(config.data.features)}")
    if list(init.meta["classes"]) != list(config.data.classes):
        raise ConfigError(f"train.init_from: {init.path} has classes {', '.join(init.meta['classes'])}, the config "
                          f"{', '.join(config.data.classes)}: its output layer cannot start this model")
    if not same_network(init.meta["model"], config):
        raise ConfigError(f"train.init_from: {init.path} has model {init.meta['model']}, the config {config_to_dict(config)['model']}")
    if init.meta.get("ensemble") is not None:
        raise ConfigError(f"train.init_from: {init.path} is an ensemble; start from one network (a member's checkpoint)")
    return init


def same_network(model: dict[str, Any], config: Config) -> bool:
    """Whether a checkpoint's `model` metadata describes one network of the config's shape (checkpoints from
    before ensembles have no `ensemble` key; a composite's parts have 1)."""
    return isinstance(model, dict) and model.get("hidden") == list(config.model.hidden) and model.get("activation") == config.model.activation


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / runs.SUMMARY_FILE, summary)


def _truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep only the epochs the checkpoint has seen, so that each epoch appears once after a resume."""
    path = run_dir / runs.METRICS_FILE
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in runs.read_metrics(run_dir) if r["epoch"] <= epoch]
        atomic_write_text(path, "".join(kept))



def finish(member: Run) -> None:
    """Calibrate and score the best checkpoint on val and test, draw the plots, then write summary.json: a
    run reads `finished` only once every file of it is in place. A part of a composite run (an ensemble's
    member, a model per source) draws no plots and writes no card: the composite does."""
    from foodcls.inference.evaluate import split_report
    from foodcls.inference.predict import load_predictor
    from foodcls.training.calibrate import calibrate_on_validation

    member.close()
    run_dir, summary, progress, splits = member.run_dir, dict(member.summary), member.progress, member.splits
    scores: dict[str, Any] = {}
    if runs.best_checkpoint(run_dir).exists():
        if member.config.calibrates and splits.val is not None:
            summary["calibration"] = calibrate_on_validation(runs.best_checkpoint(run_dir), member.config, splits.train, splits.val)
        predictor = load_predictor(runs.best_checkpoint(run_dir))
        for split_name, data in (("val", splits.val), ("test", splits.test)):
            if data is not None:
                scores[split_name] = split_report(predictor, data)
    summary.update(
        status=member.status,
        stop_reason=member.stop_reason,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        epochs_run=progress.epoch,
        best_epoch=progress.best_epoch,
        best_value=progress.best_value,
        train_seconds=round(progress.train_seconds, 3),
        seconds_per_epoch=round(progress.train_seconds / max(progress.epoch, 1), 6),
        val_accuracy=scores["val"]["accuracy"] if "val" in scores else None,
        test_accuracy=scores["test"]["accuracy"] if "test" in scores else None,
        warnings=scores["test"]["warnings"] if "test" in scores else [],
        evaluation=scores,
    )
    write_results(run_dir, summary, drawn=progress.epoch > 0 and not member.spec.part, carded=not member.spec.part)
    member.summary, member.done = summary, True


def write_results(run_dir: Path, summary: dict[str, Any], *, drawn: bool = True, carded: bool = True) -> None:
    """A run's plots and model card (where asked), then summary.json, last: it reads `finished` only once
    every other file is in place."""
    if drawn:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # the `plots` extra is not installed
            summary["plots"] = "not drawn: pip install 'foodcls[plots]', then foodcls plot RUN"
        else:
            from foodcls.training.plots import write_run_plots

            write_run_plots(run_dir, summary)
    if carded and runs.best_checkpoint(run_dir).exists():
        from foodcls.inference.card import write_model_card

        write_model_card(run_dir, summary)
    write_summary(run_dir, summary)
