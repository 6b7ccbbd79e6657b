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


def train_job(config_dicts: list[dict[str, Any]], names: list[str], runs_root: str, eval_threads: int) -> list[RunOutcome]:
    """In a worker: train runs together (lockstep where they share a shape); one outcome per run."""
    try:
        results = train_many([(Config.model_validate(c), n) for c, n in zip(config_dicts, names)], runs_root,
                             eval_threads=eval_threads)
    except Exception as error:  # a crashed stack is reported run by run; the rest of the sweep goes on
        return [RunOutcome.of(error)] * len(names)
    return [RunOutcome.of(result) for result in results]


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
               cluster: str | None = None) -> Iterator[tuple[list[int], list[RunOutcome]]]:
    """Train every config as a new run under runs_root; yields (run indices, their outcomes) as jobs end."""
    n = default_workers(len(configs), workers) if cluster is None else max(1, min(workers or len(configs), len(configs)))
    chunks = pack_runs(configs, n)
    eval_threads = 1 if parallel(n, len(chunks), cluster) else EVAL_THREADS
    jobs = [Job(train_job, {"config_dicts": [config_to_dict(configs[i]) for i in chunk], "names": [names[i] for i in chunk],
                            "runs_root": str(runs_root), "eval_threads": eval_threads}) for chunk in chunks]
    for index, result in run_jobs(jobs, n, cluster):
        yield chunks[index], [RunOutcome.of(result)] * len(chunks[index]) if isinstance(result, JobFailed) else result
