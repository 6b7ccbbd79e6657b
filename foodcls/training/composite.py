"""Composite runs: a model made of several networks, each trained as an ordinary run (its own seed, data
order, early stopping, checkpoints, exact resume) in the same lockstep stack as the others, then put
together into the run's one checkpoint.

- `model.ensemble: K`: K members (seeds train.seed … + K − 1) under RUN/members/m<i>/; the checkpoint holds
  them all and predicts the mean of their probabilities.
- `train.calibration: sources`: besides the model, for each source of the data (its `source` column) a model
  of the same recipe trained on the other sources, under RUN/sources/<source>/m<i>/; each predicts the
  source it never saw, and the temperature, conformal scores, open-set scores and suggestion thresholds are
  fitted on those out-of-source predictions (calibrate.py). What the model is then sure of is measured on
  new sources, the way a user's export is new to it.

The parts draw no plots and write no card; the composite run writes its summary, plots and card once it is
assembled, so it reads `finished` only then.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foodcls import runs
from foodcls.config import Config, config_to_yaml
from foodcls.data import LabelledData, Splits, concat, read_eval_file, read_training_files, stratified_split
from foodcls.errors import ConfigError, DataError
from foodcls.fileio import atomic_write_json, atomic_write_text
from foodcls.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weight_arrays
from foodcls.inference.predict import NAME_TABLE, predictor_from_checkpoint
from foodcls.training.calibrate import fit_calibration, held_out, knn_reference, score_kind, store
from foodcls.training.run import EpochCallback, RunPruned, RunSpec
from foodcls.training.trainstate import model_meta, restore_state

SOURCE_COLUMN = "source"
MIN_SOURCES = 3
FOLDS_FILE = "folds.json"  # RUN/sources/folds.json: each fold directory's source


def part_config(config: Config, index: int) -> Config:
    """A part's config: one network, seed + index, no calibration of its own, logged nowhere; one of the
    ensemble's nameless members drops every name (train.name_dropout 1). (Copied with these
    keys set, not validated again: they keep a valid config valid, and a scikit-learn FoodClassifier's columns
    are not the nutrients' vocabulary.)"""
    nameless = index >= config.model.ensemble - config.model.nameless_members  # (model.nameless_members)
    train = config.train.model_copy(update={"seed": config.train.seed + index, "calibration": "none", "suggest_precision": None,
                                            "open_set_score": None, **({"name_dropout": 1.0} if nameless else {})})
    return config.model_copy(update={"model": config.model.model_copy(update={"ensemble": 1, "nameless_members": 0}), "train": train,
                                     "tracking": config.tracking.model_copy(update={"mlflow": None})})


@dataclass(frozen=True)
class SourceFold:
    """One source held out: the model trained without it and the rows it then predicts."""

    source: str
    directory: str  # its folder under RUN/sources/
    splits: Splits  # train: the other sources (and every train-only row); val: a share of those; test: the source


def _scorable(config: Config) -> LabelledData:
    """The rows the sources are taken from: data.train's files and data.val (never data.test)."""
    sets = [read_training_files(config)]
    if config.data.val is not None:
        sets.append(read_eval_file(config, config.data.val))
    return concat(sets)


def source_folds(config: Config) -> list[SourceFold]:
    """One fold per source of the scorable rows (train-only rows, e.g. a synthetic mix, join every fold's
    training rows); each fold's validation rows are a stratified share of its own training rows, the share
    data.val has of the scorable rows (or data.val_fraction), as cv does."""
    data = _scorable(config)
    real = ~data.train_only
    if SOURCE_COLUMN not in data.columns:
        raise DataError(f"train.calibration: sources: the training data have no {SOURCE_COLUMN!r} column "
                        "(`foodcls data build` writes it: the export each product came from)")
    source = data.columns[SOURCE_COLUMN].astype(str)
    names = sorted(set(source[real].tolist()))
    if len(names) < MIN_SOURCES:
        raise ConfigError(f"train.calibration: sources needs rows from at least {MIN_SOURCES} sources (the data's "
                          f"{SOURCE_COLUMN!r} column); the data hold {len(names)}: {', '.join(names) or 'none'}")
    fraction = config.data.val_fraction
    if fraction is None and config.data.val is not None:
        fraction = round(len(read_eval_file(config, config.data.val)) / int(real.sum()), 4)
    folds, used = [], set()
    for name in names:
        held = np.flatnonzero(real & (source == name))
        rest = np.flatnonzero(real & (source != name))
        val = None
        if fraction:
            kept, share = stratified_split(data.labels[rest], fraction, config.train.seed)
            val, rest = data.subset(rest[share]), rest[kept]
        train = data.subset(np.sort(np.concatenate([rest, np.flatnonzero(data.train_only)])))
        folds.append(SourceFold(name, _folder_name(name, used), Splits(train, val, data.subset(held))))
    return folds


def _folder_name(source: str, used: set[str]) -> str:
    """A directory name for a source (an export's file name, as a rule): safe characters, never twice."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._") or "source"
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}-{n}"
    used.add(name)
    return name


class SharedPruning:
    """A search's pruner sees the first member's epochs; when it stops that one, every part of the composite stops."""

    def __init__(self, callback: EpochCallback | None) -> None:
        self.callback, self.pruned = callback, False

    def lead(self, record: dict[str, Any], total: int) -> None:
        if self.callback is not None:
            try:
                self.callback(record, total)
            except RunPruned:
                self.pruned = True
                raise

    def follow(self, record: dict[str, Any], total: int) -> None:
        if self.pruned:
            raise RunPruned()


@dataclass
class Composite:
    """A composite run being trained: its parts (to train now, or already finished) and how to assemble them."""

    config: Config
    run_dir: Path
    name: str
    splits: Splits
    members: list[Path]
    folds: list[tuple[SourceFold, list[Path]]]
    specs: list[RunSpec] = field(default_factory=list)  # the parts left to train

    @property
    def parts(self) -> list[Path]:
        return [*self.members, *(d for _, dirs in self.folds for d in dirs)]


def plan(config: Config, run_dir: Path, name: str, splits: Splits, on_epoch: EpochCallback | None = None,
         resuming: bool = False) -> Composite:
    """The parts of a composite run, their directories made (or found, when resuming: a finished part is not
    trained again, an interrupted one resumes from its last checkpoint)."""
    folds = source_folds(config) if config.train.calibration == "sources" else []
    pruning = SharedPruning(on_epoch)
    composite = Composite(config, run_dir, name, splits, [], [])
    k = config.model.ensemble
    for i in range(k):
        directory = run_dir / runs.MEMBERS_DIR / f"m{i + 1}"
        composite.members.append(directory)
        _add_part(composite, part_config(config, i), directory, f"{name} member {i + 1}", splits,
                  pruning.lead if i == 0 else pruning.follow, resuming)
    if folds:
        sources_dir = run_dir / runs.SOURCES_DIR
        sources_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(sources_dir / FOLDS_FILE, {fold.directory: fold.source for fold in folds})
    for fold in folds:
        dirs = [run_dir / runs.SOURCES_DIR / fold.directory / f"m{i + 1}" for i in range(k)]
        composite.folds.append((fold, dirs))
        for i, directory in enumerate(dirs):
            _add_part(composite, part_config(config, i), directory, f"{name} without {fold.source} member {i + 1}",
                      fold.splits, pruning.follow, resuming)
    return composite


def _add_part(composite: Composite, config: Config, directory: Path, name: str, splits: Splits,
              on_epoch: EpochCallback, resuming: bool) -> None:
    if resuming and (directory / runs.CONFIG_FILE).is_file():
        if runs.read_summary(directory).get("status") == "finished" and runs.best_checkpoint(directory).is_file():
            return  # done: its best checkpoint is what the composite is assembled from
        last = runs.last_checkpoint(directory)
        if last.is_file():
            checkpoint = load_checkpoint(last)
            composite.specs.append(RunSpec(config, directory, name, checkpoint, on_epoch, splits,
                                           restored=restore_state(checkpoint), part=True))
            return
    (directory / runs.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / runs.CONFIG_FILE, config_to_yaml(config))
    composite.specs.append(RunSpec(config, directory, name, None, on_epoch, splits, part=True))


def combine(config: Config, member_dirs: list[Path], path: Path) -> Checkpoint:
    """The members' best checkpoints as one: a network's weights as they are, an ensemble's stacked on a first
    axis of K (metadata `ensemble`: K). Saved at path when given."""
    checkpoints = [load_checkpoint(runs.best_checkpoint(d)) for d in member_dirs]
    first = checkpoints[0]
    per_member = [name for name in first.arrays if name.startswith("net.") or name == NAME_TABLE]  # stacked
    arrays = {name: value for name, value in first.arrays.items() if name not in per_member}
    for checkpoint in checkpoints[1:]:
        if any(not np.array_equal(checkpoint.arrays[n], first.arrays[n]) for n in ("scale", "fill", "shift") if n in first.arrays):
            raise DataError(f"{checkpoint.path}: the members were scaled differently (their training data differ)")
    weight_arrays(first)  # the names and shapes are checked
    if len(checkpoints) == 1:
        arrays.update({n: first.arrays[n] for n in per_member})
    else:
        arrays.update({n: np.stack([c.arrays[n] for c in checkpoints]) for n in per_member})
    meta = model_meta(config, max(int(c.meta.get("epoch", 0)) for c in checkpoints), {})
    meta["members"] = [{"epoch": c.meta.get("epoch"), "metrics": c.meta.get("metrics", {})} for c in checkpoints]
    if len(checkpoints) > 1:
        meta["ensemble"] = len(checkpoints)
    if path is not None:
        save_checkpoint(path, arrays, meta)
    return Checkpoint(arrays, {"format": "foodcls-checkpoint", "format_version": 1, **meta}, path)


def outcome(composite: Composite) -> tuple[str, str | None]:
    """The composite's status from its parts' (finished only when every part finished), and a failed part's error."""
    statuses = [runs.read_summary(d) for d in composite.parts]
    for status in ("failed", "interrupted", "pruned"):
        hit = next((s for s in statuses if s.get("status") == status), None)
        if hit is not None:
            return status, hit.get("error")
    if any(s.get("status") != "finished" for s in statuses):
        return "interrupted", None
    return "finished", None


def calibrate_composite(composite: Composite, path: Path) -> dict[str, Any] | None:
    """Fit the calibration of the assembled checkpoint at path: out of source, or on the validation rows."""
    config, splits = composite.config, composite.splits
    kind = score_kind(config)
    final = predictor_from_checkpoint(load_checkpoint(path))
    reference = knn_reference(final, splits.train, config.train.seed) if kind == "knn" else None
    if composite.folds:
        parts = []
        for fold, dirs in composite.folds:
            predictor = predictor_from_checkpoint(combine(config, dirs, None))
            fold_reference = knn_reference(predictor, fold.splits.train, config.train.seed) if kind == "knn" else None
            parts.append(held_out(predictor, fold.splits.test, fold_reference))
        fitted = fit_calibration(parts, config, "sources", tuple(fold.source for fold, _ in composite.folds))
    elif config.calibrates and splits.val is not None:
        fitted = fit_calibration([held_out(final, splits.val, reference)], config, "temperature")
    else:
        return None
    store(path, fitted, reference)
    return fitted.summary()


def assemble(composite: Composite, drawn: bool = True) -> dict[str, Any]:
    """Put the finished parts together: the checkpoint, its calibration, its evaluation; then the plots, the
    card and summary.json (the composite is `finished` only once all of it is written). Returns the summary."""
    from datetime import datetime, timezone

    from foodcls.inference.evaluate import split_report
    from foodcls.inference.predict import load_predictor
    from foodcls.training.run import write_results

    run_dir, splits = composite.run_dir, composite.splits
    summary = runs.read_summary(run_dir)
    status, error = outcome(composite)
    members = [runs.read_summary(d) for d in composite.members]
    summary.update(
        status=status, stop_reason=status if status != "finished" else "members",
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        members=[{"run_dir": str(d), "status": m.get("status"), "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
                  "val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy")} for d, m in zip(composite.members, members)],
        epochs_run=max((m.get("epochs_run") or 0 for m in members), default=0),
        best_epoch=members[0].get("best_epoch") if len(members) == 1 else None,
        # The parts step together in one stack, each counting the stack's epochs while it lives: the stack's time
        # is the longest-lived part's (their sum counted it once per part: 8,819 s for a 400 s run of 33 networks).
        train_seconds=round(max((runs.read_summary(d).get("train_seconds") or 0.0 for d in composite.parts), default=0.0), 3),
        val_accuracy=None, test_accuracy=None, warnings=[], evaluation={},
    )
    if error:
        summary["error"] = error
    if status == "finished":
        path = runs.best_checkpoint(run_dir)
        combine(composite.config, composite.members, path)
        calibration = calibrate_composite(composite, path)
        if calibration is not None:
            summary["calibration"] = calibration
        predictor = load_predictor(path)
        scores = {name: split_report(predictor, data) for name, data in (("val", splits.val), ("test", splits.test)) if data is not None}
        summary.update(val_accuracy=scores["val"]["accuracy"] if "val" in scores else None,
                       test_accuracy=scores["test"]["accuracy"] if "test" in scores else None,
                       warnings=scores["test"]["warnings"] if "test" in scores else [], evaluation=scores)
        write_results(run_dir, summary, drawn=drawn, carded=drawn)
    else:
        write_results(run_dir, summary, drawn=False, carded=False)
    return summary


def folds_of(run_dir: Path) -> dict[str, str]:
    """A composite run's source folds: folder → source (empty for a run without calibration across sources)."""
    try:
        return json.loads((run_dir / runs.SOURCES_DIR / FOLDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def count_networks(config: Config) -> int:
    """How many networks a run of this config trains (the composite's parts, or 1)."""
    if not config.composite:
        return 1
    sources = len(source_folds(config)) if config.train.calibration == "sources" else 0
    return config.model.ensemble * (1 + sources)


Callback = Callable[[dict[str, Any], int], None]
