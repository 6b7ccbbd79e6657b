"""Run directories: create, find the newest, read their summaries and metrics."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from foodcls.errors import RunError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.safetensors"
LAST_CHECKPOINT = "last.safetensors"
NO_RUN_HINT = "run `foodcls train --config configs/mlp.yaml` first"


def create_run_dir(runs_root: str | Path, stem: str) -> Path:
    """Make `runs_root/<stem>-<UTC timestamp>`, suffixed -2, -3… when that name is taken (never reused)."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 10_000):
        candidate = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()  # atomic: fails if another run took the name first
        except FileExistsError:
            continue
        (candidate / CHECKPOINT_DIR).mkdir()
        return candidate
    raise RunError(f"{root}: cannot create a unique run directory for {base}")


def best_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    records = []
    try:
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def find_runs(runs_root: str | Path) -> list[Path]:
    """Run directories under runs_root (those with a config.yaml), oldest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = [p for p in root.rglob(CONFIG_FILE) if (p.parent / CHECKPOINT_DIR).is_dir()]
    return sorted((p.parent for p in runs), key=lambda d: (read_summary(d).get("started_at", ""), os.path.getmtime(d)))


def newest_best_checkpoint(runs_root: str | Path = "runs") -> Path:
    """The best checkpoint of the newest run that has one."""
    for run_dir in reversed(find_runs(runs_root)):
        if best_checkpoint(run_dir).is_file():
            return best_checkpoint(run_dir)
    raise RunError(f"no trained run found under {runs_root}/: {NO_RUN_HINT}")


def resolve_run_dir(path: str | Path) -> Path:
    run_dir = Path(path)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return run_dir
