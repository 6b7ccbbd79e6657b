"""Where training jobs execute: in this process, in local worker processes, or on a Dask cluster — one
interface. Sweeps, cv and tune hand over a list of jobs (a picklable function and its arguments, one of
them `runs_root`) and get each result back as it ends; train_runs packs runs into jobs so that runs of
one shape train in lockstep, spread over the workers.

On a cluster no shared filesystem is assumed: a job writes its run directories under a temporary root on
its worker, they travel back with the result and are written under the client's runs root, exactly
where a local job would have put them. A worker that dies mid-job: the scheduler retries the job once
elsewhere (distributed.scheduler.allowed-failures = 1), then it is reported as failed.

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
    from foodcls.training.fit import train_many

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
    from foodcls.training.fit import group_key

    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    chunks = []
    for members in groups.values():
        parts = min(workers, len(members))
        chunks += [members[p::parts] for p in range(parts)]
    return chunks


def train_runs(configs: list[Any], names: list[str], runs_root: str | Path, workers: int | None = None,
               cluster: str | None = None) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """Train every config as a new run under runs_root; yields (run indices, their results) as jobs end."""
    from foodcls.config import config_to_dict

    n = default_workers(len(configs), workers) if cluster is None else max(1, min(workers or len(configs), len(configs)))
    chunks = pack_runs(configs, n)
    jobs = [Job(train_job, {"config_dicts": [config_to_dict(configs[i]) for i in chunk], "names": [names[i] for i in chunk],
                            "runs_root": str(runs_root)}) for chunk in chunks]
    for index, result in run_jobs(jobs, n, cluster):
        runs = result.get("runs") or [{"status": "failed", "error": result.get("error", "unknown failure")}] * len(chunks[index])
        yield chunks[index], runs


def default_workers(jobs: int, workers: int | None) -> int:
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def _child(conn, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> None:
    """In a worker process: run one job and send its result back."""
    from foodcls.training.fit import share_the_machine

    share_the_machine()
    try:
        result = fn(**kwargs)
    except BaseException as error:  # the job functions catch their own errors; this is the last resort
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    conn.send(result)
    conn.close()


def run_jobs(jobs: list[Job], workers: int | None = None, cluster: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, result) of each job as it completes: on the Dask cluster when one is given; else in-process
    for one worker, else each job in a fresh spawned process, at most `workers` at a time. A process that
    dies (killed, out of memory) fails its own job only; the others carry on."""
    from multiprocessing.connection import wait

    if cluster is not None:
        yield from _run_on_cluster(jobs, cluster)
        return
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


# --- Dask --------------------------------------------------------------------------------------------


def connect(address: str):
    """A dask.distributed Client for `tcp://host:port`, or for a LocalCluster started here (`local[:N]`)."""
    from foodcls.errors import ConfigError

    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--cluster needs dask.distributed: pip install 'foodcls[cluster]'") from None
    dask.config.set({"distributed.scheduler.allowed-failures": 1})
    if address == "local" or address.startswith("local:"):
        count = address.partition(":")[2]
        if count and not (count.isascii() and count.isdigit()):
            raise ConfigError(f"--cluster {address}: expected local or local:N (N workers)")
        cluster = LocalCluster(n_workers=int(count) if count else (os.cpu_count() or 1), threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        return _Closing(Client(cluster), cluster)
    try:
        return _Closing(Client(address, timeout="5s"), None)
    except Exception as error:  # OSError, TimeoutError, ValueError for a malformed address
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--cluster {address}: cannot reach the Dask scheduler ({reason[:160]})") from None


def check_cluster(address: str | None) -> None:
    """Fail in one line, before anything is written, when --cluster names a scheduler that cannot be reached."""
    if address is None:
        return
    if address == "local" or address.startswith("local:"):
        count = address.partition(":")[2]
        if count and not (count.isascii() and count.isdigit() and int(count) >= 1):
            from foodcls.errors import ConfigError

            raise ConfigError(f"--cluster {address}: expected local or local:N (N ≥ 1 workers)")
        return
    connect(address).close()


class _Closing:
    """A Client that also closes the LocalCluster it started."""

    def __init__(self, client, cluster) -> None:
        self.client, self.cluster = client, cluster

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _on_worker(fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> tuple[dict[str, Any], str, bytes]:
    """On a Dask worker: run the job under a temporary runs root; (result, that root, its files as a tar)."""
    import io
    import tarfile
    import tempfile

    from foodcls.training.fit import share_the_machine

    share_the_machine()
    with tempfile.TemporaryDirectory(prefix="foodcls-job-") as root:
        try:
            result = fn(**{**kwargs, "runs_root": root})
        except BaseException as error:  # the job functions catch their own errors; this is the last resort
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(root, arcname=".")
        return result, root, buffer.getvalue()


def _relocated(value: Any, old: str, new: str) -> Any:
    """Paths in a result that point under the worker's temporary root, pointed under the client's."""
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {k: _relocated(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, old, new) for v in value]
    return value


def _unpack(archive_bytes: bytes, runs_root: Path) -> None:
    import io
    import tarfile

    runs_root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode="r:gz") as archive:
        archive.extractall(runs_root, filter="data")


def _run_on_cluster(jobs: list[Job], address: str) -> Iterator[tuple[int, dict[str, Any]]]:
    from dask.distributed import as_completed

    connection = connect(address)
    try:
        futures = {connection.client.submit(_on_worker, job.fn, job.kwargs, pure=False): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                result, worker_root, archive = future.result()
            except Exception as error:  # KilledWorker after the one retry, or a job that could not be unpickled
                yield index, {"status": "failed", "error": f"on the cluster: {type(error).__name__}: {str(error)[:200]}"}
                continue
            client_root = str(jobs[index].kwargs["runs_root"])
            _unpack(archive, Path(client_root))
            yield index, _relocated(result, worker_root, client_root)
    finally:
        connection.close()
