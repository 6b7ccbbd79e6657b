"""Where training jobs execute: in this process, or a local pool of worker processes. Sweeps and cv
hand over a list of jobs (a picklable function and its arguments) and get each result back as it ends.

A job function catches its own errors and returns them in its result dict, so one failed run never
stops the others; a worker process that dies is reported as a failed job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any


@dataclass(frozen=True)
class Job:
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


def default_workers(jobs: int, workers: int | None) -> int:
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def run_jobs(jobs: list[Job], workers: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, result) of each job as it completes: in-process for one worker, else a spawned pool."""
    n = default_workers(len(jobs), workers)
    if n == 1:
        for index, job in enumerate(jobs):
            yield index, job.fn(**job.kwargs)
        return
    with ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(job.fn, **job.kwargs): index for index, job in enumerate(jobs)}
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                result = {"status": "failed", "error": "the worker process died (killed or out of memory)"}
            yield futures[future], result
