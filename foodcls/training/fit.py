"""The training loop: runs that share a model shape train together, in lockstep, as one stack of k
networks (one run is a stack of one: the same code path). Each run keeps its own data, order, learning
rate, class weights, early stopping, checkpoints and run directory, exactly as if trained alone.

Per epoch: every run's rows in their own order (a function of seed and epoch only: the key to exact
resume), batches as slices, the explicit backprop of backprop.py, the optimizers of optim.py; then one
forward pass scores train, val and test of every run. Checkpoints are written on a time budget
(train.checkpoint_seconds), at the end, and on interrupt; the best weights wait in memory until then.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foodcls import __version__, runs
from foodcls.training.backprop import logits, loss_gradients, smooth_targets
from foodcls.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weight_arrays
from foodcls.config import Config, config_to_dict, config_to_yaml, load_config
from foodcls.data import LabelledData, Preprocessing, Splits, load_splits
from foodcls.errors import ConfigError, FoodclsError, ResourceError, RunError, WriteError
from foodcls.inference.evaluate import classification_report
from foodcls.fileio import atomic_write_json, atomic_write_text, write_error
from foodcls.labels import CLASSES
from foodcls.training.model import build_model, linear_layers
from foodcls.training.optim import Schedule, make_optimizer
from foodcls.training.trainstate import Progress, model_arrays, model_meta, restore_state, resumable_state

# Measured (2-core machine, 4-32-32-4 MLP, batch 256): a training step's ops are too small to gain from a
# second thread (5.8 vs 5.6 ms per epoch, within noise, and slower beside other work); the evaluation pass
# over every split at once is big enough: 2.0 → 1.45 ms per epoch with two.
TORCH_THREADS = 1
EVAL_THREADS = min(2, os.cpu_count() or 1)


def share_the_machine() -> None:
    """In one of several worker processes: one thread for everything (a second evaluation thread per
    process oversubscribes the cores, and OpenMP's spinning threads then slow every process down)."""
    global EVAL_THREADS
    EVAL_THREADS = 1
SPLIT_NAMES = ("train", "val", "test")

EpochCallback = Callable[[dict[str, Any], int], None]  # (epoch record, total epochs)


class RunPruned(Exception):
    """Raised by an epoch callback (a search's pruner) to stop that run early: it ends `pruned`, with its
    files written as for any finished run."""


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
        return np.array([setting.get(name, 1.0) for name in CLASSES])
    counted = labels
    if config.train.class_weights_from == "not_train_only" and train_only is not None and not train_only.all():
        counted = labels[~train_only]
    counts = np.bincount(counted, minlength=len(CLASSES)).astype(np.float64)
    weights = np.where(counts > 0, len(counted) / (len(CLASSES) * np.maximum(counts, 1)), 1.0)
    return np.sqrt(weights) if setting == "sqrt_balanced" else weights


def row_weights(config: Config, data: LabelledData) -> np.ndarray | None:
    """Each training row's weight in the loss: its class's weight times its file's weight; None when all are 1."""
    per_class = class_weights(config, data.labels, data.train_only)
    weights = data.weights.astype(np.float64) * (per_class[data.labels] if per_class is not None else 1.0)
    return None if np.all(weights == 1.0) else weights.astype(np.float32)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled row order of an epoch depends only on (seed, epoch): the key to exact resume."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def dropout_mask(seed: int, epoch: int, shape: tuple[int, int], rate: float) -> np.ndarray:
    """Which input values of an epoch's rows (in that epoch's order) feature dropout replaces: like the
    order, a function of (seed, epoch) alone, from a stream of its own."""
    return np.random.default_rng([seed, epoch, 1]).random(shape) < rate


# --- one run: its data, state and files -------------------------------------------------------------


@dataclass
class RunSpec:
    """A run to train: a new one (checkpoint None) or one to resume from its last checkpoint."""

    config: Config
    run_dir: Path
    name: str
    checkpoint: Checkpoint | None = None
    on_epoch: EpochCallback | None = None
    splits: Splits | None = None  # the data, when already read and checked (else read by fit_runs)


class _Run:
    """One run inside a stack: what it trains on, how far it is, and its files."""

    def __init__(self, spec: RunSpec, splits: Splits, device: torch.device) -> None:
        self.spec, self.config, self.run_dir, self.splits = spec, spec.config, spec.run_dir, splits
        t = self.config.train
        init = _init_checkpoint(self.config) if spec.checkpoint is None else None
        fitted = Preprocessing.fit(splits.train.features, self.config.data.scaling)
        stored = init if init is not None else spec.checkpoint
        self.prep = Preprocessing.from_checkpoint(stored) if stored is not None else fitted
        if spec.checkpoint is not None and t.init_from is None and not fitted.matches(spec.checkpoint.arrays):
            raise RunError(f"{self.run_dir}: the training data changed since this run started (feature scaling differs)")
        self.n_layers = len(self.config.model.hidden) + 1
        self.weights, self.biases = self._initial_weights(init or spec.checkpoint)
        self.schedule = Schedule(t.scheduler, t.lr, t.epochs, t.scheduler_step_size, t.scheduler_gamma)
        self.progress = Progress()
        self.optimizer_state: dict[str, list[np.ndarray]] = {}
        if spec.checkpoint is not None:
            self.progress, schedule_state, self.optimizer_state = restore_state(spec.checkpoint)
            self.schedule.load_state_dict(schedule_state)
        self.x = {s: self.prep.apply(d.features) for s, d in zip(SPLIT_NAMES, (splits.train, splits.val, splits.test)) if d is not None}
        self.y = {s: d.labels for s, d in zip(SPLIT_NAMES, (splits.train, splits.val, splits.test)) if d is not None}
        self.row_weight = row_weights(self.config, splits.train)
        # What feature dropout puts in place of a value: its fill value as the network sees it.
        n_features = len(self.config.data.features)
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
        model = build_model(self.config.model, len(self.config.data.features), len(CLASSES))
        layers = linear_layers(model)
        return [layer.weight.detach().numpy().copy() for layer in layers], [layer.bias.detach().numpy().copy() for layer in layers]

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
        summary.pop("error", None)
        self.summary = summary
        _write_summary(self.run_dir, summary)
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
            _write_summary(self.run_dir, self.summary)
        except WriteError:
            pass  # the error being reported is what matters; the summary stays as last written

    def record_epoch(self, record: dict[str, Any], stack_state: dict[str, Any]) -> bool:
        """Book one finished epoch: best, early stopping, schedule, metrics line. True if the run stops."""
        t = self.config.train
        progress = self.progress
        epoch = progress.epoch = record["epoch"]
        if _improved(record[self.metric], progress.best_value, self.metric, self.min_delta):
            progress.best_value, progress.best_epoch, progress.bad_epochs = record[self.metric], epoch, 0
            self.best = {"weights": stack_state["weights"], "biases": stack_state["biases"], "record": record}
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
            save_checkpoint(runs.best_checkpoint(self.run_dir), model_arrays(best["weights"], best["biases"], self.prep),
                            model_meta(self.config, best["record"]["epoch"], best["record"]))
            self.best = None
        model = model_arrays(snap["weights"], snap["biases"], self.prep)
        arrays, meta = resumable_state(model, snap["optimizer"], model_meta(self.config, snap["record"]["epoch"], snap["record"]),
                                       snap["progress"], snap["schedule"], optimizer_kind)
        save_checkpoint(runs.last_checkpoint(self.run_dir), arrays, meta)
        self.snapshot = None
        self.last_write = time.monotonic()


def _init_checkpoint(config: Config) -> Checkpoint | None:
    """train.init_from: the checkpoint to fine-tune; it must have the config's features and model shape."""
    if config.train.init_from is None:
        return None
    init = load_checkpoint(config.train.init_from)
    if list(init.meta["features"]) != list(config.data.features):
        raise ConfigError(f"train.init_from: {init.path} uses features {', '.join(init.meta['features'])}, the config {', '.join(config.data.features)}")
    if init.meta["model"] != config_to_dict(config)["model"]:
        raise ConfigError(f"train.init_from: {init.path} has model {init.meta['model']}, the config {config_to_dict(config)['model']}")
    return init


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / runs.SUMMARY_FILE, summary)


def _truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep only the epochs the checkpoint has seen, so that each epoch appears once after a resume."""
    path = run_dir / runs.METRICS_FILE
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in runs.read_metrics(run_dir) if r["epoch"] <= epoch]
        atomic_write_text(path, "".join(kept))


# --- a stack of runs trained together ---------------------------------------------------------------


def _pad_rows(arrays: list[np.ndarray], fill: float = 0.0) -> np.ndarray:
    """Stack arrays of different lengths along a new first axis, padded at the end with `fill`."""
    longest = max(len(a) for a in arrays)
    out = np.full((len(arrays), longest, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


class _Stack:
    """k runs of one model shape as stacked tensors: parameters, optimizer, training and evaluation data."""

    def __init__(self, members: list[_Run], device: torch.device) -> None:
        self.members, self.device = members, device
        first = members[0].config
        self.batch_size = first.train.batch_size
        self.activation = first.model.activation
        self.n_classes = len(CLASSES)
        self.weights = [torch.from_numpy(np.stack([m.weights[i] for m in members])).to(device) for i in range(members[0].n_layers)]
        self.biases = [torch.from_numpy(np.stack([m.biases[i] for m in members])[:, None, :]).to(device) for i in range(members[0].n_layers)]
        t = [m.config.train for m in members]
        self.optimizer = make_optimizer(first.train.optimizer, self.params, [m.schedule.lr for m in members],
                                        [x.weight_decay for x in t], [x.momentum for x in t])
        if any(m.optimizer_state for m in members):
            for name, tensors in self.optimizer.state.items():
                for i, tensor in enumerate(tensors):
                    # A run without this buffer (plain SGD beside a momentum run) starts it at zero, as alone.
                    tensor.copy_(torch.from_numpy(np.stack([
                        m.optimizer_state[name][i] if name in m.optimizer_state else np.zeros(tensor.shape[1:], np.float32)
                        for m in members]).astype(tensor.numpy().dtype)))
        self._build_data()

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def _build_data(self) -> None:
        members = self.members
        n = [m.n_train for m in members]
        # Runs with the same number of rows step in step: no padding, each batch exactly as a solo run sees it.
        self.ragged = len(set(n)) > 1
        pad = 1 if self.ragged else 0  # one all-zero row that padding indices point at
        self.x_train = torch.from_numpy(_pad_rows([np.vstack([m.x["train"], np.zeros((pad, m.x["train"].shape[1]), np.float32)]) for m in members])).to(self.device)
        self.y_train = torch.from_numpy(_pad_rows([np.concatenate([m.y["train"], np.zeros(pad, np.int64)]) for m in members])).to(self.device)
        weights = [m.row_weight for m in members]
        self.w_train = None
        if any(w is not None for w in weights):
            full = [np.concatenate([w if w is not None else np.ones(m.n_train, np.float32), np.zeros(pad, np.float32)]) for w, m in zip(weights, members)]
            self.w_train = torch.from_numpy(_pad_rows(full)).to(self.device)
        self.n_rows = torch.tensor(n, device=self.device)
        # Evaluation: every split of every run in one forward pass; seg[k, row, s] = 1 if the row is in split s.
        eval_x, eval_y, seg = [], [], []
        for m in members:
            parts = [s for s in SPLIT_NAMES if s in m.x]
            eval_x.append(np.vstack([m.x[s] for s in parts]))
            eval_y.append(np.concatenate([m.y[s] for s in parts]))
            marks = np.zeros((len(eval_y[-1]), len(SPLIT_NAMES)), np.float32)
            start = 0
            for s in parts:
                marks[start : start + len(m.y[s]), SPLIT_NAMES.index(s)] = 1
                start += len(m.y[s])
            seg.append(marks)
        self.eval_x = torch.from_numpy(_pad_rows(eval_x)).to(self.device)
        self.eval_y = torch.from_numpy(_pad_rows(eval_y)).to(self.device)
        self.eval_seg = torch.from_numpy(_pad_rows(seg)).to(self.device)
        self.eval_counts = self.eval_seg.sum(dim=1).clamp(min=1)
        self.eval_splits = [[s for s in SPLIT_NAMES if s in m.x] for m in members]

    def keep(self, indices: list[int]) -> None:
        """Continue with the listed runs only (the others finished or stopped early)."""
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in indices]
        if not self.members:
            return
        self.weights = [w.index_select(0, index) for w in self.weights]
        self.biases = [b.index_select(0, index) for b in self.biases]
        self.optimizer.keep(index, self.params)
        self._build_data()

    def epoch_batches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Every run's rows for its next epoch in its own order: inputs, one-hot targets, row weights, steps."""
        orders = [epoch_order(m.config.train.seed, m.progress.epoch + 1, m.n_train) for m in self.members]
        steps = max(m.steps(self.batch_size) for m in self.members)
        if self.ragged:
            width = steps * self.batch_size
            pad_index = self.x_train.shape[1] - 1
            orders = [np.concatenate([o, np.full(width - len(o), pad_index)]) for o in orders]
        index = torch.from_numpy(np.stack(orders)).to(self.device)
        runs_index = torch.arange(len(self.members), device=self.device).unsqueeze(1)
        xs = self.x_train[runs_index, index]
        ys = self.y_train[runs_index, index]
        one_hot = torch.nn.functional.one_hot(ys, self.n_classes).to(xs.dtype)
        if self.ragged:
            one_hot.mul_((index < self.n_rows.unsqueeze(1)).unsqueeze(2))  # padding rows have no target
        for i, member in enumerate(self.members):
            t = member.config.train
            if t.feature_dropout > 0:
                mask = dropout_mask(t.seed, member.progress.epoch + 1, (member.n_train, xs.shape[2]), t.feature_dropout)
                rows = xs[i, : member.n_train]
                rows.copy_(torch.where(torch.from_numpy(mask).to(self.device), torch.from_numpy(member.fill_input).to(self.device), rows))
            if t.label_smoothing > 0:
                smooth_targets(one_hot[i], t.label_smoothing)
        weights = self.w_train[runs_index, index] if self.w_train is not None else None
        return xs, one_hot, weights, steps

    @torch.no_grad()
    def train_epoch(self) -> list[list[float]]:
        """One pass over every run's data; each run's mean gradient norm per layer."""
        xs, one_hot, weights, steps = self.epoch_batches()
        b = self.batch_size
        per_run_steps = [m.steps(b) for m in self.members]
        all_active = min(per_run_steps)
        weights_t = [w.transpose(1, 2) for w in self.weights]  # views: they follow the in-place updates
        norms = []  # per step: (layers, k) gradient norms; runs idle at a step get 0 and are not counted
        for step in range(steps):
            batch = slice(step * b, (step + 1) * b)
            rows = (self.n_rows - step * b).clamp(0, b).view(-1, 1, 1).to(xs.dtype) if self.ragged else None
            if step < all_active:
                grads = loss_gradients(self.weights, self.biases, self.activation, xs[:, batch], one_hot[:, batch],
                                       weights[:, batch] if weights is not None else None, rows, weights_t)
                norms.append(torch.stack([torch.linalg.vector_norm(g, dim=(1, 2)) for g in grads[0::2]]))
                self.optimizer.step(grads)
            else:
                # Runs with fewer rows are done with this epoch: step only the others.
                active = torch.tensor([i for i, n in enumerate(per_run_steps) if n > step], dtype=torch.long, device=self.device)
                pick = lambda t: t.index_select(0, active)  # noqa: E731
                grads = loss_gradients([pick(w) for w in self.weights], [pick(x) for x in self.biases], self.activation,
                                       pick(xs[:, batch]), pick(one_hot[:, batch]),
                                       pick(weights[:, batch]) if weights is not None else None, pick(rows))
                step_norms = torch.zeros(len(self.weights), len(self.members), device=self.device)
                step_norms.index_copy_(1, active, torch.stack([torch.linalg.vector_norm(g, dim=(1, 2)) for g in grads[0::2]]))
                norms.append(step_norms)
                self.optimizer.step(grads, active)
        counts = torch.tensor(per_run_steps, dtype=torch.float32, device=self.device)
        # Summed over a contiguous last axis of steps: each run's sum then takes the same order however many
        # runs share the stack (summing over the first axis vectorises across runs, and a solo run's last bit
        # came out different).
        return (torch.stack(norms, dim=-1).sum(dim=-1) / counts).t().tolist()

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Loss and accuracy of every run on each of its splits, from one forward pass and one host sync."""
        torch.set_num_threads(EVAL_THREADS)
        try:
            z = logits(self.weights, self.biases, self.activation, self.eval_x)
            nll = torch.logsumexp(z, dim=2).sub_(z.gather(2, self.eval_y.unsqueeze(2)).squeeze(2))
            correct = (z.argmax(dim=2) == self.eval_y).to(z.dtype)
            sums = torch.bmm(torch.stack([nll, correct], dim=1), self.eval_seg)  # (k, 2, splits)
        finally:
            torch.set_num_threads(TORCH_THREADS)
        means = (sums / self.eval_counts.unsqueeze(1)).tolist()
        out = []
        for splits, (losses, accuracies) in zip(self.eval_splits, means):
            record = {}
            for s in splits:
                i = SPLIT_NAMES.index(s)
                record[f"{s}_loss"], record[f"{s}_accuracy"] = losses[i], accuracies[i]
            out.append(record)
        return out

    def state_of(self, i: int) -> dict[str, Any]:
        """Run i's weights and optimizer buffers as numpy copies (for its checkpoints): only the buffers its
        own optimizer has, so its files are those it would have written trained alone."""
        plain_sgd = self.optimizer.kind == "sgd" and self.members[i].config.train.momentum == 0
        return {
            "weights": [w[i].cpu().numpy().copy() for w in self.weights],
            "biases": [b[i, 0].cpu().numpy().copy() for b in self.biases],
            "optimizer": {name: [t[i].cpu().numpy().copy() for t in tensors] for name, tensors in self.optimizer.state.items()
                          if not (plain_sgd and name == "momentum_buffer")},
        }

    def set_lrs(self) -> None:
        self.optimizer.set_lrs([m.schedule.lr for m in self.members])


def group_key(config: Config) -> tuple:
    """Runs with equal keys can share a stack: same network shape, optimizer kind, batch size and device."""
    return (tuple(config.model.hidden), config.model.activation, tuple(config.data.features), config.train.optimizer,
            config.train.batch_size, config.train.device)


def _fit_stack(members: list[_Run], device: torch.device) -> None:
    """Train a stack of runs to their ends; each run writes its own files as it goes and when it stops."""
    stack = _Stack(members, device)
    optimizer_kind = stack.optimizer.kind
    try:
        while stack.members:
            started = time.perf_counter()
            epochs = [m.progress.epoch + 1 for m in stack.members]
            grad_norms = stack.train_epoch()
            scores = stack.evaluate()
            seconds = round(time.perf_counter() - started, 6)
            now = time.monotonic()
            stopping = []
            for i, member in enumerate(stack.members):
                record = {"epoch": epochs[i], **scores[i], "lr": member.schedule.lr, "grad_norms": grad_norms[i], "seconds": seconds}
                state = stack.state_of(i)
                if member.record_epoch(record, state):
                    stopping.append(i)
                elif member.checkpoint_due(now):
                    member.write_checkpoints(optimizer_kind)
            stack.set_lrs()
            if stopping:
                for i in stopping:
                    member = stack.members[i]
                    member.write_checkpoints(optimizer_kind)
                    _finish(member)
                stack.keep([i for i in range(len(stack.members)) if i not in stopping])
    except KeyboardInterrupt:
        # The live weights may be halfway through an epoch: each run saves the state kept at its last epoch's end.
        failure = None
        for member in stack.members:
            if member.done:
                continue  # it had just finished when the interrupt came
            member.status, member.stop_reason = "interrupted", "interrupted"
            try:
                member.write_checkpoints(optimizer_kind)
                _finish(member)
            except FoodclsError as error:  # e.g. the disk filled up while saving
                member.fail(str(error))
                failure = error
        if failure is not None:
            raise failure from None
        raise _Interrupted() from None
    except BaseException as error:
        if isinstance(error, RuntimeError) and "alloc" in str(error).lower():
            error = ResourceError(f"out of memory while training ({error.__class__.__name__}: {str(error).splitlines()[0][:120]}); "
                                  "use a smaller model.hidden or fewer runs at once")
        reason = str(error) if isinstance(error, FoodclsError) else f"{type(error).__name__}: {error}"
        for member in stack.members:
            if not member.done:
                member.fail(reason)
        if isinstance(error, ResourceError):
            raise error from None
        raise


class _Interrupted(Exception):
    """Every run of the stack was saved after Ctrl-C; the caller reports them as interrupted."""


def _finish(member: _Run) -> None:
    """Score the best checkpoint on val and test, draw the plots, then write summary.json: a run reads
    `finished` only once every file of it is in place."""
    from foodcls.inference.predict import load_predictor

    member.close()
    run_dir, summary, progress, splits = member.run_dir, dict(member.summary), member.progress, member.splits
    scores: dict[str, Any] = {}
    if runs.best_checkpoint(run_dir).exists():
        predictor = load_predictor(runs.best_checkpoint(run_dir))
        for split_name, data in (("val", splits.val), ("test", splits.test)):
            if data is not None:
                scores[split_name] = classification_report(data.labels, predictor.predict(data.features), CLASSES)
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
    if progress.epoch > 0:
        from foodcls.training.plots import write_run_plots

        write_run_plots(run_dir, summary)
    _write_summary(run_dir, summary)
    member.summary, member.done = summary, True


def _result(member: _Run) -> TrainResult:
    s = member.summary
    return TrainResult(run_dir=member.run_dir, status=s["status"], epochs_run=s["epochs_run"], best_epoch=s["best_epoch"],
                       test_accuracy=s["test_accuracy"], val_accuracy=s["val_accuracy"], train_seconds=s["train_seconds"],
                       warnings=s["warnings"])


def fit_runs(specs: list[RunSpec]) -> list[TrainResult]:
    """Train (or resume) runs, those of one shape together in lockstep; results in the order given.
    Every run's data are read and checked before anything is written."""
    torch.set_num_threads(TORCH_THREADS)
    with _subnormals_flushed():
        return _fit_runs(specs)


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


def _fit_runs(specs: list[RunSpec]) -> list[TrainResult]:
    members = []
    for spec in specs:
        device = _resolve_device(spec.config.train.device)
        members.append((_Run(spec, spec.splits or load_splits(spec.config), device), device))
    for member, _ in members:
        member.start()
    groups: dict[tuple, list[_Run]] = {}
    for member, device in members:
        groups.setdefault((group_key(member.config), str(device)), []).append(member)
    interrupted = False
    for (_, device_name), group in groups.items():
        if interrupted:
            break
        pending = [m for m in group if m.progress.epoch < m.config.train.epochs]
        try:
            if pending:
                _fit_stack(pending, torch.device(device_name))
        except _Interrupted:
            interrupted = True
        for member in group:
            if member.progress.epoch >= member.config.train.epochs and not member.done:
                _finish(member)  # resumed with nothing left to do
    for member, _ in members:
        if not member.done:  # never started: an earlier stack was interrupted first
            member.status, member.stop_reason = "interrupted", "interrupted"
            _finish(member)
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


def check_memory(config: Config, splits: Splits) -> None:
    """Refuse, before anything is written, a model that cannot fit in this machine's memory."""
    sizes = [len(config.data.features), *config.model.hidden, len(CLASSES)]
    params = sum(i * o + o for i, o in zip(sizes, sizes[1:]))
    rows = config.train.batch_size + sum(len(d) for d in (splits.train, splits.val, splits.test) if d is not None)
    # Weights, gradients, two optimizer buffers, the in-memory best and last snapshots, float32; and the
    # activations of a batch and of the evaluation pass.
    need = params * 4 * 6 + rows * max(sizes) * 4 * 4
    available = available_memory()
    if available is not None and need > 0.8 * available:
        raise ResourceError(f"model.hidden={list(config.model.hidden)}: training needs about {need / 1e9:.1f} GB "
                            f"({params:,} parameters), more than the {available / 1e9:.1f} GB of memory available")


def _check_inputs(config: Config) -> Splits:
    """Everything a new run reads, validated before anything is written; returns its data."""
    splits = load_splits(config)
    check_memory(config, splits)
    if config.train.init_from is not None:
        _init_checkpoint(config)
    _resolve_device(config.train.device)
    return splits


def _new_run(config: Config, runs_root: str | Path, name: str, on_epoch: EpochCallback | None = None,
             splits: Splits | None = None) -> RunSpec:
    run_dir = runs.create_run_dir(runs_root, name)
    try:
        atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
    except WriteError:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run directory without its config would be no run at all
        raise
    return RunSpec(config, run_dir, name, None, on_epoch, splits)


def train(config: Config, runs_root: str | Path = "runs", name: str = "run", on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train a new run under runs_root/<name>-<timestamp> and return its figures."""
    splits = _check_inputs(config)
    return fit_runs([_new_run(config, runs_root, name, on_epoch, splits)])[0]


def train_many(items: list[tuple[Config, str]], runs_root: str | Path = "runs") -> list[TrainResult | FoodclsError]:
    """Train several new runs (config, name), those of one shape together in lockstep. A run whose input
    is bad comes back as its error, with no directory made; the others train."""
    outcomes: list[TrainResult | FoodclsError | None] = [None] * len(items)
    specs, positions = [], []
    for i, (config, name) in enumerate(items):
        try:
            splits = _check_inputs(config)
        except FoodclsError as error:
            outcomes[i] = error
            continue
        specs.append(_new_run(config, runs_root, name, splits=splits))
        positions.append(i)
    for i, result in zip(positions, fit_runs(specs) if specs else []):
        outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), on_epoch: EpochCallback | None = None) -> TrainResult:
    """Continue a run in place from its last checkpoint; ends bit-identical to an uninterrupted run."""
    run_dir = runs.resolve_run_dir(run_dir)
    config = load_config(run_dir / runs.CONFIG_FILE, overrides)
    checkpoint = load_checkpoint(runs.last_checkpoint(run_dir)) if runs.last_checkpoint(run_dir).exists() else None
    if checkpoint is not None:
        restore_state(checkpoint)  # refuses a checkpoint that is not resumable
        if checkpoint.meta["model"] != config_to_dict(config)["model"]:
            raise ConfigError("--set: the model section cannot change on resume")
    splits = load_splits(config)
    _resolve_device(config.train.device)
    atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
    name = runs.read_summary(run_dir).get("name", run_dir.name)
    return fit_runs([RunSpec(config, run_dir, name, checkpoint, on_epoch, splits)])[0]
