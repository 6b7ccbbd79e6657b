"""Run directories: create, find the newest, read their summaries and metrics."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from foodcls.errors import RunError
from foodcls.redact import redact_secrets

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.safetensors"
LAST_CHECKPOINT = "last.safetensors"
NO_RUN_HINT = "run `foodcls train --config configs/mlp.yaml` first"
CV_DIR_PREFIX = "cv-"  # runs/cv-<config stem>-<timestamp>/ holds one cv's folds
# A composite run (an ensemble, or calibration across sources) trains its networks as runs of their own:
# RUN/members/m<i>/ (the model's members), RUN/sources/<source>/m<i>/ (a model per source, without it).
MEMBERS_DIR = "members"
SOURCES_DIR = "sources"


def unique_dir(root: str | Path, stem: str) -> Path:
    """Make `root/<stem>-<UTC timestamp>`, suffixed -2, -3… when that name is taken (never reused)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 10_000):
        candidate = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()  # atomic: fails if another run took the name first
        except FileExistsError:
            continue
        return candidate
    raise RunError(f"{root}: cannot create a unique directory for {base}")


def create_run_dir(runs_root: str | Path, stem: str) -> Path:
    run_dir = unique_dir(runs_root, stem)
    (run_dir / CHECKPOINT_DIR).mkdir()
    return run_dir


def best_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary.json; {} when it is missing, unreadable or not a JSON object (one damaged file must not
    stop `runs list`, the card or the default checkpoint for every run under the root)."""
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return summary if isinstance(summary, dict) else {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    records = []
    try:
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            break
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            break  # not an epoch record: damaged from here on
        records.append(record)
    return records


def is_part(run_dir: Path) -> bool:
    """Whether a run directory is a part of a composite run (a member, a model per source): not a run of its own."""
    parent = run_dir.parent
    if parent.name == MEMBERS_DIR and (parent.parent / CONFIG_FILE).is_file():
        return True
    return parent.parent.name == SOURCES_DIR and (parent.parent.parent / CONFIG_FILE).is_file()


def member_dirs(run_dir: Path) -> list[Path]:
    """A composite run's members (its model's networks), in order; [] for a run of one network."""
    folder = run_dir / MEMBERS_DIR
    if not folder.is_dir():
        return []
    return sorted((d for d in folder.iterdir() if (d / CONFIG_FILE).is_file()), key=lambda d: (len(d.name), d.name))


def find_runs(runs_root: str | Path) -> list[Path]:
    """Run directories under runs_root (those with a config.yaml; a composite run's parts are not runs of
    their own), oldest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = [p for p in root.rglob(CONFIG_FILE) if (p.parent / CHECKPOINT_DIR).is_dir() and not is_part(p.parent)]
    return sorted((p.parent for p in runs), key=lambda d: (str(read_summary(d).get("started_at", "")), os.path.getmtime(d)))


def is_cv_fold(run_dir: Path) -> bool:
    """Whether a run is one fold of a `foodcls cv` (under runs/cv-<stem>-<timestamp>/, beside folds/)."""
    return run_dir.parent.name.startswith(CV_DIR_PREFIX) and (run_dir.parent / "folds").is_dir()


def newest_best_checkpoint(runs_root: str | Path = "runs") -> Path:
    """The best checkpoint of the newest finished run, passing over cv folds (each learnt from part of the data
    only, to be scored, not used) and runs that did not finish (a pruned search trial, an interrupted or
    failed run: a model stopped early is nobody's default)."""
    for run_dir in reversed(find_runs(runs_root)):
        if (best_checkpoint(run_dir).is_file() and not is_cv_fold(run_dir)
                and run_status(read_summary(run_dir)) == "finished"):
            return best_checkpoint(run_dir)
    raise RunError(f"no finished run found under {runs_root}/: {NO_RUN_HINT}")


def resolve_run_dir(path: str | Path) -> Path:
    run_dir = Path(path)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return run_dir


LOCK_FILE = ".lock"


def lock_run(run_dir: Path) -> IO[str]:
    """Hold the run's lock while it trains: a second writer (a --resume of a run still training) is refused,
    naming the process that holds it. An flock: the kernel drops it when the holder dies, even by SIGKILL,
    so a killed run never stays locked."""
    import fcntl

    try:
        handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held until the run ends
    except OSError as error:
        raise RunError(f"{run_dir}: cannot open its lock file ({error.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        pid = read_summary(run_dir).get("pid") if (run_dir / SUMMARY_FILE).exists() else None
        raise RunError(f"{run_dir}: still training in another process{f' (pid {pid})' if pid else ''}; "
                       "stop it (Ctrl-C or kill) or wait for it to finish, then --resume") from None
    return handle


def process_alive(pid: int | None) -> bool:
    """Whether a process of this machine with that id still runs (signal 0 tests without signalling)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def run_status(summary: dict[str, Any]) -> str:
    """finished / interrupted / failed / pruned / running; a run still marked running whose process is gone was
    killed; a status this release does not write reads as interrupted."""
    status = summary.get("status", "interrupted")
    pid = summary.get("pid")
    if status == "running" and not (isinstance(pid, int) and not isinstance(pid, bool) and process_alive(pid)):
        return "interrupted"
    return status if status in ("finished", "interrupted", "failed", "pruned", "running") else "interrupted"


def run_overview(run_dir: Path) -> dict[str, Any]:
    """One run's headline figures, from summary.json and metrics.jsonl."""
    summary = read_summary(run_dir)
    records = read_metrics(run_dir)
    val = [r["val_accuracy"] for r in records if _number(r.get("val_accuracy")) is not None]
    evaluation = summary.get("evaluation") if isinstance(summary.get("evaluation"), dict) else {}
    test = evaluation.get("test") if isinstance(evaluation.get("test"), dict) else {}
    return {  # every figure a number or None, whatever a damaged summary.json holds
        "run_dir": str(run_dir),
        "run": run_dir.name,
        "config": str(summary.get("name", "")),
        "status": run_status(summary),
        "epochs": records[-1]["epoch"] if records else _number(summary.get("epochs_run")) or 0,  # a composite: its members' most
        "best_epoch": _number(summary.get("best_epoch")),
        "best_val_accuracy": max(val) if val else _number(summary.get("val_accuracy")),
        "val_accuracy": _number(summary.get("val_accuracy")),
        "test_accuracy": _number(summary.get("test_accuracy")),
        "test_macro_f1": _number(test.get("macro_f1")),
        "final_train_loss": _number(records[-1].get("train_loss")) if records else None,
        "train_seconds": _number(summary.get("train_seconds")),
        "started_at": str(summary.get("started_at", "")),
        "error": str(summary["error"]) if summary.get("error") is not None else None,
    }


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def datacard_paths(config: dict[str, Any]) -> list[Path]:
    """The datacard.json beside each of a config's data files (train, val, test) that has one, each once, in
    the config's order: the `data build` outputs they come from."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    train = data.get("train")
    entries = train if isinstance(train, list) else [train]
    paths = [e.get("path") if isinstance(e, dict) else e for e in entries] + [data.get("val"), data.get("test")]
    cards: list[Path] = []
    for path in paths:
        card_path = Path(path).parent / "datacard.json" if isinstance(path, str) else None
        if card_path is not None and card_path not in cards and card_path.is_file():
            cards.append(card_path)
    return cards


def data_provenance(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What each `data build` output a config's data files come from was, when a run starts: its datacard's
    path, SHA-256 and counts, recorded in summary.json (the card reads them there, not from a build that
    may have been redone since, nor relative to wherever `foodcls card` is run)."""
    import hashlib

    out = []
    for card_path in datacard_paths(config):
        try:
            raw = card_path.read_bytes()
            card = json.loads(raw)
        except (OSError, ValueError):
            continue
        if isinstance(card, dict):
            out.append({**provenance_entry(str(card_path.resolve()), card), "sha256": hashlib.sha256(raw).hexdigest()})
    return out


def provenance_entry(path: str, card: dict[str, Any]) -> dict[str, Any]:
    sources = card.get("sources") if isinstance(card.get("sources"), list) else []
    return {"datacard": path, "rows_kept": card.get("rows_kept"), "rows_read": card.get("rows_read"), "per_class": card.get("per_class"),
            "sources": [Path(str(s.get("path", "?"))).name for s in sources if isinstance(s, dict)]}


def show_run(run_dir: Path) -> dict[str, Any]:
    """One run as `runs show` prints it: its headline figures and its config, credentials redacted."""
    import yaml

    run_dir = resolve_run_dir(run_dir)
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise RunError(f"{run_dir / CONFIG_FILE}: unreadable ({type(error).__name__})") from None
    return {**run_overview(run_dir), "config": redact_secrets(config)}


def compare_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """The runs' figures side by side and only the config keys whose values differ."""
    import yaml

    from foodcls.config import flatten

    overviews = [run_overview(resolve_run_dir(d)) for d in run_dirs]
    configs = [flatten(yaml.safe_load((Path(d) / CONFIG_FILE).read_text(encoding="utf-8")) or {}) for d in run_dirs]
    keys = sorted({k for c in configs for k in c})
    diff = {k: redact_secrets([c.get(k) for c in configs]) for k in keys if len({repr(c.get(k)) for c in configs}) > 1}
    metric_names = ("status", "epochs", "best_epoch", "best_val_accuracy", "val_accuracy", "test_accuracy",
                    "test_macro_f1", "final_train_loss", "train_seconds")
    return {
        "runs": overviews,
        "config_diff": diff,
        "metrics": {name: [o[name] for o in overviews] for name in metric_names},
    }
