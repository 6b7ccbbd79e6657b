"""Where training jobs execute: in this process, or a local pool of worker processes. Sweeps and cv
hand over a list of jobs (a picklable function and its arguments) and get each result back as it ends;
train_runs packs runs into jobs so that runs of one shape train in lockstep, spread over the workers.

A job function catches its own errors and returns them in its result dict, so one failed run never
stops the others; a worker process that dies is reported as a failed job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any


@dataclass(frozen=True)
class Job:
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


def train_job(config_dicts: list[dict[str, Any]], names: list[str], runs_root: str) -> dict[str, Any]:
    """In a worker: train runs together (lockstep where they share a shape); one result dict per run."""
    from foodcls.config import Config
    from foodcls.errors import FoodclsError
    from foodcls.train import train_many

    try:
        outcomes = train_many([(Config.model_validate(c), n) for c, n in zip(config_dicts, names)], runs_root)
    except FoodclsError as error:
        return {"runs": [{"status": "failed", "error": str(error)}] * len(names)}
    except Exception as error:  # a crashed stack is reported run by run; the rest of the sweep goes on
        return {"runs": [{"status": "failed", "error": f"{type(error).__name__}: {error}"}] * len(names)}
    results = []
    for outcome in outcomes:
        if isinstance(outcome, FoodclsError):
            results.append({"status": "failed", "error": str(outcome), "run_dir": None})
        else:
            results.append({"status": outcome.status, "run_dir": str(outcome.run_dir), "test_accuracy": outcome.test_accuracy,
                            "val_accuracy": outcome.val_accuracy, "best_checkpoint": str(outcome.best_checkpoint)})
    return {"runs": results}


def pack_runs(configs: list[Any], workers: int) -> list[list[int]]:
    """Indices of the runs each job trains: runs of one shape together, each shape split over the workers."""
    from foodcls.train import group_key

    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    chunks = []
    for members in groups.values():
        parts = min(workers, len(members))
        chunks += [members[p::parts] for p in range(parts)]
    return chunks


def train_runs(configs: list[Any], names: list[str], runs_root: str | Path, workers: int | None = None) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """Train every config as a new run under runs_root; yields (run indices, their results) as jobs end."""
    from foodcls.config import config_to_dict

    n = default_workers(len(configs), workers)
    chunks = pack_runs(configs, n)
    jobs = [Job(train_job, {"config_dicts": [config_to_dict(configs[i]) for i in chunk], "names": [names[i] for i in chunk],
                            "runs_root": str(runs_root)}) for chunk in chunks]
    for index, result in run_jobs(jobs, n):
        runs = result.get("runs") or [{"status": "failed", "error": result.get("error", "unknown failure")}] * len(chunks[index])
        yield chunks[index], runs


def default_workers(jobs: int, workers: int | None) -> int:
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def _child(conn, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> None:
    """In a worker process: run one job and send its result back."""
    try:
        result = fn(**kwargs)
    except BaseException as error:  # the job functions catch their own errors; this is the last resort
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    conn.send(result)
    conn.close()


def run_jobs(jobs: list[Job], workers: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, result) of each job as it completes: in-process for one worker, else each job in a fresh
    spawned process, at most `workers` at a time. A process that dies (killed, out of memory) fails its
    own job only; the others carry on."""
    from multiprocessing.connection import wait

    n = default_workers(len(jobs), workers)
    if n == 1:
        for index, job in enumerate(jobs):
            yield index, job.fn(**job.kwargs)
        return
    context = get_context("spawn")
    waiting = list(range(len(jobs)))
    running: dict[Any, tuple[int, Any]] = {}  # receiving end → (job index, process)
    try:
        while waiting or running:
            while waiting and len(running) < n:
                index = waiting.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(send, jobs[index].fn, jobs[index].kwargs), daemon=True)
                process.start()
                send.close()  # the child holds the only sending end: EOF here means it is gone
                running[receive] = (index, process)
            # Wait on the pipes, not the processes: a child blocked on sending a big result must be read.
            for receive in wait(list(running)):
                index, process = running.pop(receive)
                try:
                    result = receive.recv()
                except (EOFError, OSError):
                    result = None
                receive.close()
                process.join()
                if result is None:
                    result = {"status": "failed", "error": f"the worker process died (exit code {process.exitcode})"}
                yield index, result
    finally:
        for receive, (_, process) in running.items():
            process.kill()
            process.join()
            receive.close()
