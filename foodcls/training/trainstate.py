"""What a checkpoint holds for one run: the model (weights named as in an nn.Sequential, feature scaling,
fill values, metadata to rebuild it) and, in the resumable last checkpoint, the optimizer, schedule and
loop state — packed from and unpacked into one slice of a training stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from foodcls import __version__
from foodcls.inference.checkpoint import WEIGHT_PREFIX, Checkpoint
from foodcls.inference.predict import NAME_TABLE
from foodcls.config import Config, config_to_dict
from foodcls.features import NUTRIENTS
from foodcls.preprocessing import Preprocessing
from foodcls.redact import redact_secrets
from foodcls.errors import RunError

TABLE_STATE = "name."  # an optimizer buffer of the name's bucket table: `name.exp_avg`…, one array (buckets, dim)
# Bumped when the resumable state changes shape: an older run cannot be resumed (its checkpoints still load).
TRAIN_STATE_VERSION = 2


@dataclass
class Progress:
    """What a resumed run must get back besides weights and optimizer state."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    train_seconds: float = 0.0


def weight_name(layer: int, kind: str) -> str:
    """`net.<i>.weight`: the name nn.Sequential gives layer `layer` (every other module is an activation)."""
    return f"{WEIGHT_PREFIX}{2 * layer}.{kind}"


def model_arrays(weights: list[np.ndarray], biases: list[np.ndarray], prep: Preprocessing,
                 name_table: np.ndarray | None = None) -> dict[str, np.ndarray]:
    arrays = {}
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        arrays[weight_name(i, "weight")] = weight
        arrays[weight_name(i, "bias")] = bias
    arrays.update(prep.arrays())
    if name_table is not None:
        arrays[NAME_TABLE] = name_table
    return arrays


def model_meta(config: Config, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    as_dict = config_to_dict(config)
    return {  # the config as a shared file may carry it: no credential of a URI (tracking.mlflow)
        "classes": list(config.data.classes),
        "features": list(config.nutrients),  # the numeric inputs; the name's hashing is `name`
        "model": as_dict["model"],
        "config": redact_secrets(as_dict),
        "epoch": epoch,
        "metrics": metrics,
        "foodcls_version": __version__,
        "torch_version": torch.__version__,
        **({"name": config.model.name.stored()} if config.uses_name else {}),
        # Columns that are not nutrients: a scikit-learn FoodClassifier's (foodcls/sklearn.py), any numbers.
        **({"generic_features": True} if any(f not in NUTRIENTS for f in config.nutrients) else {}),
    }


def resumable_state(
    model: dict[str, np.ndarray], optimizer: dict[str, list[np.ndarray]], meta: dict[str, Any], progress: Progress,
    schedule: dict[str, Any], optimizer_kind: str,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The last checkpoint's arrays and metadata: the model plus optimizer buffers (`optim.<param>.<name>`,
    params in the order W0, b0, W1, b1…; the name's bucket table's `optim.name.<name>`) and the loop state."""
    arrays = dict(model)
    for name, tensors in optimizer.items():
        for i, value in enumerate(tensors):
            arrays[f"optim.{name}" if name.startswith(TABLE_STATE) else f"optim.{i}.{name}"] = value
    meta = dict(meta)
    meta["train_state"] = {"version": TRAIN_STATE_VERSION, "progress": dict(vars(progress)), "schedule": schedule,
                           "optimizer": optimizer_kind}
    return arrays, meta


RestoredState = tuple[Progress, dict[str, Any], dict[str, list[np.ndarray]]]  # progress, schedule, optimizer buffers


def restore_state(checkpoint: Checkpoint) -> RestoredState:
    """(progress, schedule state, optimizer buffers by name) of a resumable checkpoint."""
    state = checkpoint.meta.get("train_state")
    if not isinstance(state, dict) or state.get("version") != TRAIN_STATE_VERSION:
        raise RunError(f"{checkpoint.path}: not a resumable checkpoint of this foodcls version")
    try:
        buffers: dict[str, dict[int, np.ndarray]] = {}
        for name, value in checkpoint.arrays.items():
            if name.startswith("optim." + TABLE_STATE):
                buffers.setdefault(name.removeprefix("optim."), {})[0] = value  # one buffer: the table's
            elif name.startswith("optim."):
                _, index, key = name.split(".", 2)
                buffers.setdefault(key, {})[int(index)] = value
        optimizer = {key: [values[i] for i in sorted(values)] for key, values in buffers.items()}
        progress = Progress(**state["progress"])
        if not _schedule_ok(state["schedule"]) or not _progress_ok(progress):
            raise TypeError
    except (TypeError, KeyError, ValueError, AttributeError):
        raise RunError(f"{checkpoint.path}: its training state is malformed (damaged file?)") from None
    return progress, state["schedule"], optimizer


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _schedule_ok(schedule: object) -> bool:
    """optim.Schedule's state: a positive learning rate, the best monitored value, the epochs without gain."""
    return (isinstance(schedule, dict) and _number(schedule.get("lr")) and schedule["lr"] > 0
            and (schedule.get("best") is None or _number(schedule.get("best")))
            and isinstance(schedule.get("bad_epochs"), int) and not isinstance(schedule.get("bad_epochs"), bool))


def _progress_ok(progress: Progress) -> bool:
    """The loop counters a resume relies on have the types it expects."""
    number = _number

    return (isinstance(progress.epoch, int) and not isinstance(progress.epoch, bool) and progress.epoch >= 0
            and isinstance(progress.bad_epochs, int) and number(progress.train_seconds)
            and (progress.best_value is None or number(progress.best_value))
            and (progress.best_epoch is None or isinstance(progress.best_epoch, int)))
