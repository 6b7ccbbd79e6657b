"""Training runs as executor jobs, and what each run came to (RunOutcome), for sweeps, cv and tune.

Runs of one shape are packed into one job so that they train in lockstep, and each shape is spread over
the workers; a worker among several trains with one evaluation thread (training/stack.py says why)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from foodcls.config import Config, config_to_dict
from foodcls.errors import FoodclsError
from foodcls.experiments.executors import Job, JobFailed, default_workers, parallel, run_jobs
from foodcls.training.fit import TrainResult, group_key, train_many
from foodcls.training.stack import EVAL_THREADS

RunStatus = Literal["finished", "interrupted", "pruned", "failed"]


@dataclass(frozen=True)
class RunOutcome:
    """What one run of an experiment came to: its status and figures, or why it failed."""

    status: RunStatus
    run_dir: str | None = None
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    best_checkpoint: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, result: TrainResult | BaseException | JobFailed) -> RunOutcome:
        """The one place an outcome is built: from a trained run, an error, or a failed job."""
        if isinstance(result, TrainResult):
            return cls(result.status, str(result.run_dir), result.test_accuracy, result.val_accuracy, str(result.best_checkpoint))
        if isinstance(result, JobFailed):
            return cls("failed", error=result.error)
        reason = str(result) if isinstance(result, FoodclsError) else f"{type(result).__name__}: {result}"
        return cls("failed", error=reason)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _moved(value: Any, old: str, new: str) -> Any:
    """Paths in a config dict under the client's root, moved under the worker's."""
    if isinstance(value, str) and value.startswith(old.rstrip("/") + "/"):
        return new.rstrip("/") + value[len(old.rstrip("/")):]
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    return value


def train_job(config_dicts: list[dict[str, Any]], names: list[str], runs_root: str, eval_threads: int,
              files: dict[str, bytes] | None = None, client_root: str | None = None) -> list[RunOutcome]:
    """In a worker: train runs together (lockstep where they share a shape); one outcome per run. files:
    data written by the client under its runs root (cv's folds), shipped with the job because a cluster's
    workers share no filesystem with it: written under this job's runs root, the configs pointed at them."""
    if files and client_root is not None and client_root != runs_root:
        for relative, content in files.items():
            target = Path(runs_root) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        config_dicts = [_moved(c, client_root, runs_root) for c in config_dicts]
    try:
        results = train_many([(Config.model_validate(c), n) for c, n in zip(config_dicts, names)], runs_root,
                             eval_threads=eval_threads)
    except Exception as error:  # a crashed stack is reported run by run; the rest of the sweep goes on
        return [RunOutcome.of(error)] * len(names)
    return [RunOutcome.of(result) for result in results]


def _files_under(configs: list[Config], root: Path) -> dict[str, bytes]:
    """The data files these configs read that lie under root, by path relative to it, with their bytes."""
    files: dict[str, bytes] = {}
    for config in configs:
        paths = [f.path for f in config.data.train_files] + [p for p in (config.data.val, config.data.test) if p]
        for path in paths:
            try:
                relative = Path(path).relative_to(root)
            except ValueError:
                continue  # a file outside the runs root (data/…): every worker must have it, as the README says
            files.setdefault(str(relative), Path(path).read_bytes())
    return files


def pack_runs(configs: list[Config], workers: int) -> list[list[int]]:
    """Indices of the runs each job trains: runs of one shape together, each shape split over the workers."""
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    chunks = []
    for members in groups.values():
        parts = min(workers, len(members))
        chunks += [members[p::parts] for p in range(parts)]
    return chunks


def train_runs(configs: list[Config], names: list[str], runs_root: str | Path, *, workers: int | None = None,
               cluster: str | None = None, eval_threads: int | None = None,
               ship_from: Path | None = None) -> Iterator[tuple[list[int], list[RunOutcome]]]:
    """Train every config as a new run under runs_root; yields (run indices, their outcomes) as jobs end.
    eval_threads None: one when the jobs run beside each other, else the default. ship_from (on a
    cluster): the data files the configs name under runs_root travel with the jobs (cv's folds)."""
    n = default_workers(len(configs), workers) if cluster is None else max(1, min(workers or len(configs), len(configs)))
    chunks = pack_runs(configs, n)
    if eval_threads is None:
        eval_threads = 1 if parallel(n, len(chunks), cluster) else EVAL_THREADS
    jobs = [Job(train_job, {"config_dicts": [config_to_dict(configs[i]) for i in chunk], "names": [names[i] for i in chunk],
                            "runs_root": str(runs_root), "eval_threads": eval_threads}) for chunk in chunks]
    if cluster is not None and ship_from is not None:
        for job, chunk in zip(jobs, chunks):
            job.kwargs.update(files=_files_under([configs[i] for i in chunk], Path(runs_root)), client_root=str(runs_root))
    for index, result in run_jobs(jobs, n, cluster):
        yield chunks[index], [RunOutcome.of(result)] * len(chunks[index]) if isinstance(result, JobFailed) else result
