"""Checkpoints: one safetensors file (arrays) with JSON metadata. Saved atomically; never unpickled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.errors import CheckpointError, first_line
from foodcls.fileio import atomic_write

FORMAT = "foodcls-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "foodcls"
WEIGHT_PREFIX = "net."


@dataclass(frozen=True)
class Checkpoint:
    """Arrays by name (weights `net.<i>.weight`, `scale`, optimizer state…) and the JSON metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    from safetensors.numpy import save

    payload = save(
        {name: np.ascontiguousarray(a) for name, a in arrays.items()},
        metadata={METADATA_KEY: json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta})},
    )
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a checkpoint file, a run directory, or a run's checkpoints/ directory (→ best)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.safetensors", path / "best.safetensors"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no best checkpoint in this directory")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    path = resolve_checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="np") as handle:
            raw_meta = (handle.metadata() or {}).get(METADATA_KEY)
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, TypeError, AttributeError) as error:
        # TypeError / AttributeError: a tensor in a dtype numpy lacks (BF16, F8), which no checkpoint of ours holds.
        reason = first_line(error)
        raise CheckpointError(f"{path}: not a valid foodcls checkpoint (corrupt, truncated or not safetensors: {reason})") from None
    if raw_meta is None:
        raise CheckpointError(f"{path}: safetensors file without foodcls metadata")
    try:
        meta = json.loads(raw_meta)
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt foodcls metadata") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt foodcls metadata (not a JSON object)")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} v{meta.get('format_version')}")
    _check_meta(path, meta)
    if "scale" not in arrays or not any(n.startswith(WEIGHT_PREFIX) for n in arrays):
        raise CheckpointError(f"{path}: checkpoint lacks weights or feature scaling")
    return Checkpoint(arrays, meta, path)


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """The metadata a predictor and a resumed run rely on, with the right types (a hand-edited or damaged
    checkpoint is refused here, in one line, not deep inside numpy)."""
    for required in ("classes", "features", "model", "config"):
        if required not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {required!r}")
    if not _is_list_of(meta["classes"], str) or not _is_list_of(meta["features"], str):
        raise CheckpointError(f"{path}: checkpoint metadata: classes and features must be lists of names")
    model = meta["model"]
    if not isinstance(model, dict) or not isinstance(model.get("activation"), str) or not (
        _is_list_of(model.get("hidden"), int) or model.get("hidden") == []
    ):
        raise CheckpointError(f"{path}: checkpoint metadata: model must give hidden (list of widths) and activation")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{path}: checkpoint metadata: config must be a mapping")


def weight_arrays(checkpoint: Checkpoint) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each Linear layer, first to last: float matrices and vectors, all finite; for an
    ensemble (metadata `ensemble`: K), (K, out, in) and (K, out), a member per first index."""
    names = [n.split(".") for n in checkpoint.arrays if n.startswith(WEIGHT_PREFIX)]
    if any(len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or parts[2] not in ("weight", "bias") for parts in names):
        raise CheckpointError(f"{checkpoint.path}: checkpoint has weights under unexpected names")
    indices = sorted({int(parts[1]) for parts in names})
    try:
        layers = [
            (checkpoint.arrays[f"{WEIGHT_PREFIX}{i}.weight"], checkpoint.arrays[f"{WEIGHT_PREFIX}{i}.bias"])
            for i in indices
        ]
    except KeyError as missing:
        raise CheckpointError(f"{checkpoint.path}: checkpoint lacks {missing}") from None
    members = ensemble_size(checkpoint)
    extra = 0 if members is None else 1
    for weight, bias in layers:
        if weight.ndim != 2 + extra or bias.ndim != 1 + extra or weight.dtype.kind != "f" or bias.dtype.kind != "f":
            raise CheckpointError(f"{checkpoint.path}: checkpoint weights have the wrong shape or type")
        if members is not None and (weight.shape[0] != members or bias.shape[0] != members):
            raise CheckpointError(f"{checkpoint.path}: checkpoint weights do not hold its {members} ensemble members")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise CheckpointError(f"{checkpoint.path}: checkpoint holds weights that are not finite numbers (damaged file?)")
    return layers


def ensemble_size(checkpoint: Checkpoint) -> int | None:
    """K for an ensemble's checkpoint (its weights carry a first axis of K members), None for one network."""
    members = checkpoint.meta.get("ensemble")
    if members is None:
        return None
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise CheckpointError(f"{checkpoint.path}: checkpoint metadata: ensemble must be a count of members, got {members!r}")
    return members
