"""The training loop: in-memory batches, cross-entropy, SGD/Adam, metrics per epoch, checkpoints, resume."""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foodcls import __version__, runs
from foodcls.backprop import loss_gradients
from foodcls.checkpoint import WEIGHT_PREFIX, Checkpoint, load_checkpoint, save_checkpoint
from foodcls.config import Config, config_to_dict, config_to_yaml, load_config
from foodcls.data import LabelledData, Preprocessing, Splits, load_splits
from foodcls.errors import ConfigError, RunError
from foodcls.evaluate import classification_report
from foodcls.fileio import atomic_write_json, atomic_write_text
from foodcls.labels import CLASSES
from foodcls.model import build_model, linear_layers

# Measured in benchmarks/train_speed.py: for a 4-32-32-4 MLP at batch 256 one thread beats two,
# because the per-op work is far too small to amortise thread hand-offs.
TORCH_THREADS = 1

EpochCallback = Callable[[dict[str, Any], int], None]  # (epoch record, total epochs)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    status: str  # finished | interrupted
    epochs_run: int
    best_epoch: int | None
    test_accuracy: float | None
    val_accuracy: float | None
    train_seconds: float
    warnings: list[str]  # about the final test evaluation (eval's warnings)

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


@dataclass
class _Progress:
    """What a resumed run must get back besides weights and optimizer state."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    train_seconds: float = 0.0


def monitored_metric(config: Config, has_val: bool) -> str:
    """The metric that picks the best checkpoint: never the test set, which stays untouched."""
    if config.train.early_stopping is not None:
        return config.train.early_stopping.monitor
    return "val_loss" if has_val else "train_loss"


def _improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if metric.endswith("accuracy") else value < best - min_delta


def class_weights(config: Config, labels: np.ndarray) -> np.ndarray | None:
    """Per-class weights in the cross-entropy: none, balanced (n / (classes × count)) or by hand."""
    setting = config.train.class_weights
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
        return np.where(counts > 0, len(labels) / (len(CLASSES) * np.maximum(counts, 1)), 0.0)
    return np.array([setting.get(name, 1.0) for name in CLASSES])


def row_weights(config: Config, data: LabelledData) -> np.ndarray | None:
    """Each training row's weight in the loss: its class's weight times its file's weight; None when all are 1."""
    per_class = class_weights(config, data.labels)
    weights = data.weights.astype(np.float64) * (per_class[data.labels] if per_class is not None else 1.0)
    return None if np.all(weights == 1.0) else weights.astype(np.float32)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def _make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _make_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> Any:
    t = config.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    if t.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.scheduler_step_size, gamma=t.scheduler_gamma)
    if t.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=t.scheduler_gamma, patience=t.scheduler_step_size)
    return None


def _step_scheduler(scheduler: Any, metric: float | None) -> None:
    # The plain-SGD fast path updates weights without optimizer.step(), which torch takes for a
    # scheduler stepped before its optimizer; the order is in fact right, so that warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`"))
        scheduler.step() if metric is None else scheduler.step(metric)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled row order of an epoch depends only on (seed, epoch): the key to exact resume."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


def _train_epoch(model, activation, optimizer, x, y, order, batch_size, weight: torch.Tensor | None) -> list[float]:
    """One pass over the data in the epoch's order; returns the mean gradient norm per layer.

    Rows are permuted once per epoch, so batches are contiguous slices; nothing syncs with the host
    until the epoch ends.
    """
    layers = linear_layers(model)
    params = [p for layer in layers for p in (layer.weight, layer.bias)]
    group = optimizer.param_groups[0]
    # Plain SGD is one fused in-place update; momentum, weight decay and Adam go through torch.optim.
    plain_sgd = isinstance(optimizer, torch.optim.SGD) and group["momentum"] == 0 and group["weight_decay"] == 0
    xs, ys = x[order], y[order]
    targets = F.one_hot(ys, layers[-1].out_features).to(xs.dtype)
    weights = weight[order] if weight is not None else None
    norms = []
    for start in range(0, len(order), batch_size):
        batch = slice(start, start + batch_size)
        grads = loss_gradients(layers, activation, xs[batch], targets[batch], weights[batch] if weights is not None else None)
        norms.append(torch.stack(torch._foreach_norm(grads[0::2])))
        if plain_sgd:
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-group["lr"])
        else:
            for param, grad in zip(params, grads):
                param.grad = grad
            optimizer.step()
    return torch.stack(norms).mean(dim=0).tolist()


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def _tensors(data: LabelledData, prep: Preprocessing, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(prep.apply(data.features)).to(device), torch.from_numpy(data.labels).to(device)


def _model_arrays(model: nn.Module, prep: Preprocessing) -> dict[str, np.ndarray]:
    arrays = {f"{WEIGHT_PREFIX}{k}": v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    arrays["scale"] = prep.scale
    arrays["fill"] = prep.fill
    return arrays


def _model_meta(config: Config, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "classes": list(CLASSES),
        "features": list(config.data.features),
        "model": config_to_dict(config)["model"],
        "config": config_to_dict(config),
        "epoch": epoch,
        "metrics": metrics,
        "foodcls_version": __version__,
        "torch_version": torch.__version__,
    }


def _resumable_state(model, optimizer, scheduler, prep: Preprocessing, config, progress: _Progress, metrics) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of the resumable last checkpoint: weights plus optimizer, scheduler, RNG
    and loop state, copied off the live objects."""
    arrays = _model_arrays(model, prep)
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            arrays[f"optim.{pid}.{key}"] = value.detach().cpu().numpy().copy() if torch.is_tensor(value) else np.asarray(value)
    arrays["rng.torch"] = torch.get_rng_state().numpy()
    meta = _model_meta(config, progress.epoch, metrics)
    meta["train_state"] = {
        "progress": dict(vars(progress)),
        "param_groups": copy.deepcopy(opt_state["param_groups"]),
        "scheduler": copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
    }
    return arrays, meta


def _load_weights(model: nn.Module, checkpoint: Checkpoint) -> None:
    arrays = checkpoint.arrays
    model.load_state_dict({k[len(WEIGHT_PREFIX) :]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(WEIGHT_PREFIX)})


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


def _restore(checkpoint: Checkpoint, model, optimizer, scheduler) -> _Progress:
    arrays = checkpoint.arrays
    _load_weights(model, checkpoint)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in arrays.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = torch.from_numpy(value.copy())
    train_state = checkpoint.meta["train_state"]
    optimizer.load_state_dict({"state": state, "param_groups": train_state["param_groups"]})
    if scheduler is not None and train_state["scheduler"] is not None:
        scheduler.load_state_dict(train_state["scheduler"])
    torch.set_rng_state(torch.from_numpy(arrays["rng.torch"].copy()))
    return _Progress(**train_state["progress"])


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / runs.SUMMARY_FILE, summary)


def train(config: Config, runs_root: str | Path = "runs", name: str = "run", on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train a new run under runs_root/<name>-<timestamp> and return its figures."""
    splits = load_splits(config)  # all input is validated before anything is written
    device = _resolve_device(config.train.device)
    run_dir = runs.create_run_dir(runs_root, name)
    atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
    return _fit(config, splits, device, run_dir, checkpoint=None, on_epoch=on_epoch, name=name)


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), on_epoch: EpochCallback | None = None) -> TrainResult:
    """Continue a run in place from its last checkpoint; ends bit-identical to an uninterrupted run."""
    run_dir = runs.resolve_run_dir(run_dir)
    config = load_config(run_dir / runs.CONFIG_FILE, overrides)
    checkpoint = load_checkpoint(runs.last_checkpoint(run_dir)) if runs.last_checkpoint(run_dir).exists() else None
    if checkpoint is not None and "train_state" not in checkpoint.meta:
        raise RunError(f"{checkpoint.path}: not a resumable checkpoint")
    if checkpoint is not None and checkpoint.meta["model"] != config_to_dict(config)["model"]:
        raise ConfigError("--set: the model section cannot change on resume")
    splits = load_splits(config)
    device = _resolve_device(config.train.device)
    atomic_write_text(run_dir / runs.CONFIG_FILE, config_to_yaml(config))
    name = runs.read_summary(run_dir).get("name", run_dir.name)
    return _fit(config, splits, device, run_dir, checkpoint=checkpoint, on_epoch=on_epoch, name=name)


def _fit(config, splits: Splits, device, run_dir: Path, checkpoint: Checkpoint | None, on_epoch, name: str) -> TrainResult:
    torch.set_num_threads(TORCH_THREADS)
    t = config.train
    init = _init_checkpoint(config) if checkpoint is None else None
    fitted = Preprocessing.fit(splits.train.features)
    stored = init if init is not None else checkpoint
    prep = Preprocessing.from_checkpoint(stored) if stored is not None else fitted
    if checkpoint is not None and config.train.init_from is None and not fitted.matches(checkpoint.arrays):
        raise RunError(f"{run_dir}: the training data changed since this run started (feature scaling differs)")
    x_train, y_train = _tensors(splits.train, prep, device)
    val = _tensors(splits.val, prep, device) if splits.val is not None else None
    test = _tensors(splits.test, prep, device) if splits.test is not None else None
    weights = row_weights(config, splits.train)
    weight = torch.from_numpy(weights).to(device) if weights is not None else None

    torch.manual_seed(t.seed)
    model = build_model(config.model, len(config.data.features), len(CLASSES)).to(device)
    if init is not None:
        _load_weights(model, init)
    optimizer = _make_optimizer(config, model)
    scheduler = _make_scheduler(config, optimizer)
    progress = _restore(checkpoint, model, optimizer, scheduler) if checkpoint is not None else _Progress()
    metric = monitored_metric(config, val is not None)
    min_delta = t.early_stopping.min_delta if t.early_stopping else 0.0
    summary = runs.read_summary(run_dir) if checkpoint is not None else {}
    summary.update(
        name=name,
        status="running",
        pid=os.getpid(),
        started_at=summary.get("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        monitor=metric,
        data={"train": len(splits.train), "val": len(splits.val) if splits.val else 0, "test": len(splits.test) if splits.test else 0},
        versions={"foodcls": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
    )
    _write_summary(run_dir, summary)
    _truncate_metrics(run_dir, progress.epoch)

    status, stop_reason = "finished", "epochs"
    unsaved = None  # the last completed epoch's resumable state, when not yet on disk
    try:
        with open(run_dir / runs.METRICS_FILE, "a", encoding="utf-8") as metrics_file:
            while progress.epoch < t.epochs:
                started = time.perf_counter()
                epoch = progress.epoch + 1
                order = epoch_order(t.seed, epoch, len(y_train)).to(device)
                grad_norms = _train_epoch(model, config.model.activation, optimizer, x_train, y_train, order, t.batch_size, weight)
                record = {"epoch": epoch}
                # Loss and accuracy of the model as it stands at the epoch's end, on every split alike.
                record["train_loss"], record["train_accuracy"] = _evaluate(model, x_train, y_train)
                if val is not None:
                    record["val_loss"], record["val_accuracy"] = _evaluate(model, *val)
                if test is not None:
                    record["test_loss"], record["test_accuracy"] = _evaluate(model, *test)
                record["lr"] = optimizer.param_groups[0]["lr"]
                record["grad_norms"] = grad_norms
                if scheduler is not None:
                    _step_scheduler(scheduler, record["val_loss" if val is not None else "train_loss"] if t.scheduler == "plateau" else None)
                progress.epoch = epoch
                if _improved(record[metric], progress.best_value, metric, min_delta):
                    progress.best_value, progress.best_epoch, progress.bad_epochs = record[metric], epoch, 0
                    save_checkpoint(runs.best_checkpoint(run_dir), _model_arrays(model, prep), _model_meta(config, epoch, record))
                else:
                    progress.bad_epochs += 1
                progress.train_seconds += time.perf_counter() - started
                record["seconds"] = round(time.perf_counter() - started, 6)
                stop = t.early_stopping is not None and progress.bad_epochs >= t.early_stopping.patience
                unsaved = _resumable_state(model, optimizer, scheduler, prep, config, progress, record)
                if epoch % t.checkpoint_every == 0 or epoch == t.epochs or stop:
                    save_checkpoint(runs.last_checkpoint(run_dir), *unsaved)
                    unsaved = None
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if on_epoch is not None:
                    on_epoch(record, t.epochs)
                if stop:
                    stop_reason = "early_stopping"
                    break
    except KeyboardInterrupt:
        # The live weights may be halfway through an epoch: save the state kept at the last epoch's end.
        status, stop_reason = "interrupted", "interrupted"
        if unsaved is not None:
            save_checkpoint(runs.last_checkpoint(run_dir), *unsaved)
    except BaseException:
        summary["status"] = "failed"
        _write_summary(run_dir, summary)
        raise
    return _finish(splits, run_dir, summary, progress, status, stop_reason)


def _truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep only the epochs the checkpoint has seen, so that each epoch appears once after a resume."""
    path = run_dir / runs.METRICS_FILE
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in runs.read_metrics(run_dir) if r["epoch"] <= epoch]
        atomic_write_text(path, "".join(kept))


def _finish(splits: Splits, run_dir: Path, summary: dict[str, Any], progress: _Progress, status: str, stop_reason: str) -> TrainResult:
    """Score the best checkpoint on val and test, write summary.json and the plots."""
    from foodcls.predict import load_predictor

    scores: dict[str, Any] = {}
    if runs.best_checkpoint(run_dir).exists():
        predictor = load_predictor(runs.best_checkpoint(run_dir))
        for split_name, data in (("val", splits.val), ("test", splits.test)):
            if data is not None:
                scores[split_name] = classification_report(data.labels, predictor.predict(data.features), CLASSES)
    summary.update(
        status=status,
        stop_reason=stop_reason,
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
    _write_summary(run_dir, summary)
    if progress.epoch > 0:
        from foodcls.plots import write_run_plots

        write_run_plots(run_dir)
    return TrainResult(
        run_dir=run_dir,
        status=status,
        epochs_run=progress.epoch,
        best_epoch=progress.best_epoch,
        test_accuracy=summary["test_accuracy"],
        val_accuracy=summary["val_accuracy"],
        train_seconds=summary["train_seconds"],
        warnings=summary["warnings"],
    )
