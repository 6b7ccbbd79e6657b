"""Where jobs execute: in this process, in local worker processes, or on a Dask cluster — one interface
that knows nothing of what a job does (it never imports training). Sweeps, cv and tune hand over a list
of jobs (a picklable function and its keyword arguments, one of them `runs_root`) and get each result
back as it ends; experiments/jobs.py packs training runs into such jobs.

On a cluster no shared filesystem is assumed: a job writes its run directories under a temporary root on
its worker, they travel back with the result and are written under the client's runs root, exactly
where a local job would have put them. A worker that dies mid-job: the scheduler retries the job once
elsewhere (distributed.scheduler.allowed-failures = 1), then it is reported as failed.

A job function catches its own errors and returns them in its result, so one failed run never stops the
others; a job that raises anyway, or whose worker process dies, comes back as a JobFailed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from foodcls.errors import ConfigError, first_line


@dataclass(frozen=True)
class Job:
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobFailed:
    """A job that raised past its own error handling, or whose worker died: the reason, in one line."""

    error: str


def parallel(workers: int | None, jobs: int, cluster: str | None) -> bool:
    """Whether jobs will run beside each other (several processes or a cluster): each then keeps to one thread."""
    return cluster is not None or default_workers(jobs, workers) > 1


def local_workers(address: str) -> int | None:
    """N of `--cluster local:N` (None for plain `local`); a one-line error for anything else after `local:`."""
    count = address.partition(":")[2]
    if count and not (count.isascii() and count.isdigit() and int(count) >= 1):
        raise ConfigError(f"--cluster {address}: expected local or local:N (N ≥ 1 workers)")
    return int(count) if count else None


def _is_local(address: str) -> bool:
    return address == "local" or address.startswith("local:")


def default_workers(jobs: int, workers: int | None) -> int:
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def _child(conn, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """In a worker process: run one job and send its result back."""
    try:
        result = fn(**kwargs)
    except BaseException as error:  # the job functions catch their own errors; this is the last resort
        result = JobFailed(f"{type(error).__name__}: {error}")
    conn.send(result)
    conn.close()


def run_jobs(jobs: list[Job], workers: int | None = None, cluster: str | None = None) -> Iterator[tuple[int, Any]]:
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
                    result = JobFailed(f"the worker process died (exit code {process.exitcode})")
                yield index, result
    finally:
        for receive, (_, process) in running.items():
            process.kill()
            process.join()
            receive.close()


# --- Dask --------------------------------------------------------------------------------------------


def connect(address: str):
    """A dask.distributed Client for `tcp://host:port`, `tls://host:port` (certificates from Dask's
    configuration), or a LocalCluster started here (`local[:N]`)."""
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--cluster needs the 'cluster' extra: pip install 'foodcls[cluster]'") from None
    dask.config.set({"distributed.scheduler.allowed-failures": 1})
    if _is_local(address):
        cluster = LocalCluster(n_workers=local_workers(address) or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        return _Closing(Client(cluster), cluster)
    scheme = address.partition("://")[0] if "://" in address else "tcp"
    if scheme not in ("tcp", "tls"):
        raise ConfigError(f"--cluster {address}: expected tcp://host:port, tls://host:port or local[:N]")
    security = None
    if scheme == "tls":
        security = _tls_security(address)
    try:
        return _Closing(Client(address, timeout="5s", security=security), None)
    except Exception as error:  # OSError, TimeoutError, ValueError for a malformed address
        reason = first_line(error)
        raise ConfigError(f"--cluster {address}: cannot reach the Dask scheduler ({reason[:160]})") from None


TLS_SETTINGS = {  # what a tls:// cluster needs, as Dask's own configuration names it (env or ~/.config/dask)
    "distributed.comm.tls.ca-file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "distributed.comm.tls.client.cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "distributed.comm.tls.client.key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}


def _tls_security(address: str):
    """The client's side of a TLS cluster, from Dask's configuration: the CA that signed the scheduler's and
    workers' certificates, and this client's certificate and key; encryption required. Dask's protocol
    unpickles what it receives, so a cluster reachable by others must authenticate both ends."""
    import dask
    from distributed.security import Security

    paths = {key: dask.config.get(key, None) for key in TLS_SETTINGS}
    missing = [TLS_SETTINGS[key] for key, value in paths.items() if not value]
    if missing:
        raise ConfigError(f"--cluster {address}: TLS needs the CA and this client's certificate and key: set {', '.join(missing)}")
    unreadable = next((value for value in paths.values() if not os.path.isfile(value)), None)
    if unreadable is not None:
        raise ConfigError(f"--cluster {address}: TLS file not found: {unreadable}")
    return Security(tls_ca_file=paths["distributed.comm.tls.ca-file"], tls_client_cert=paths["distributed.comm.tls.client.cert"],
                    tls_client_key=paths["distributed.comm.tls.client.key"], require_encryption=True)


def check_cluster(address: str | None) -> None:
    """Fail in one line, before anything is written, when --cluster names a scheduler that cannot be reached."""
    if address is None:
        return
    import importlib.util

    if importlib.util.find_spec("dask") is None or importlib.util.find_spec("distributed") is None:
        raise ConfigError("--cluster needs the 'cluster' extra: pip install 'foodcls[cluster]'")  # local:N too
    if _is_local(address):
        local_workers(address)
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


def _on_worker(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, str, bytes]:
    """On a Dask worker: run the job under a temporary runs root; (result, that root, its files as a tar)."""
    import io
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="foodcls-job-") as root:
        try:
            result = fn(**{**kwargs, "runs_root": root})
        except BaseException as error:  # the job functions catch their own errors; this is the last resort
            result = JobFailed(f"{type(error).__name__}: {error}")
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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a typed result, e.g. RunOutcome
        return dataclasses.replace(value, **{f.name: _relocated(getattr(value, f.name), old, new)
                                             for f in dataclasses.fields(value) if f.init})
    return value


def _unpack(archive_bytes: bytes, runs_root: Path) -> None:
    import io
    import tarfile

    runs_root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode="r:gz") as archive:
        archive.extractall(runs_root, filter="data")


def _run_on_cluster(jobs: list[Job], address: str) -> Iterator[tuple[int, dict[str, Any]]]:
    connection = connect(address)  # first: without the extra, its one-line error
    from dask.distributed import as_completed

    try:
        futures = {connection.client.submit(_on_worker, job.fn, job.kwargs, pure=False): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                result, worker_root, archive = future.result()
            except Exception as error:  # KilledWorker after the one retry, or a job that could not be unpickled
                yield index, JobFailed(f"on the cluster: {type(error).__name__}: {str(error)[:200]}")
                continue
            client_root = str(jobs[index].kwargs["runs_root"])
            _unpack(archive, Path(client_root))
            yield index, _relocated(result, worker_root, client_root)
    finally:
        connection.close()
