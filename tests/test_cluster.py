"""--cluster for real: a `dask scheduler` and two `dask worker` processes on 127.0.0.1, started and torn
down here. Runs come back to the client's runs root with the same metrics as local runs; a worker killed
mid-sweep costs nothing but a retry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from foodcls import runs
from tests.conftest import REPO

pytest.importorskip("distributed")
DASK = Path(sys.executable).with_name("dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """tcp address of a scheduler with two single-threaded workers; the scheduler retries a job once."""
    port = free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    processes = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)]
    address = f"tcp://127.0.0.1:{port}"
    for _ in range(2):
        processes.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path))
    from distributed import Client

    client = Client(address, timeout="30s")
    client.wait_for_workers(2, timeout=60)
    client.close()
    try:
        yield address, processes
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def metric_lines(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_metrics(Path(run_dir))]


def test_sweep_and_tune_on_a_cluster_match_local_runs_and_survive_a_dead_worker(cluster, config_file, tmp_path):
    address, processes = cluster
    grid = ["--grid", "train.lr=0.1,0.01", "--seeds", "2", "--set", "train.epochs=5"]
    remote = cli("sweep", "--config", config_file, *grid, "--cluster", address, "--runs-root", tmp_path / "remote", "--json")
    local = cli("sweep", "--config", config_file, *grid, "--workers", "1", "--runs-root", tmp_path / "local", "--json")
    remote_runs = [r for e in remote["results"] for r in e["runs"]]
    local_runs = [r for e in local["results"] for r in e["runs"]]
    assert len(remote_runs) == 4 and all(r["status"] == "finished" for r in remote_runs)
    for r, l in zip(remote_runs, local_runs):
        assert r["run_dir"].startswith(str(tmp_path / "remote"))  # written under the client's runs root
        assert sorted(p.name for p in Path(r["run_dir"]).iterdir()) == sorted(p.name for p in Path(l["run_dir"]).iterdir())
        assert metric_lines(r["run_dir"]) == metric_lines(l["run_dir"])
        assert r["test_accuracy"] == l["test_accuracy"]

    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {float: [0.001, 0.1], log: true}\n")
    tuned = cli("tune", "--config", config_file, "--space", space, "--trials", 4, "--workers", 2, "--cluster", address,
                "--set", "data.val_fraction=0.2", "--set", "train.epochs=5", "--runs-root", tmp_path / "tuned", "--json")
    assert [t["state"] for t in tuned["trials"]] == ["complete"] * 4
    assert all(Path(t["run_dir"]).is_dir() and str(tmp_path / "tuned") in t["run_dir"] for t in tuned["trials"])

    # Kill a worker while a longer sweep runs: its job is retried on the other one, and the sweep completes.
    sweep = subprocess.Popen([sys.executable, "-m", "foodcls", "sweep", "--config", str(config_file), "--grid", "train.lr=0.1,0.01",
                              "--set", "train.epochs=1500", "--cluster", address, "--runs-root", str(tmp_path / "killed"), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    nanny = psutil.Process(processes[1].pid)  # `dask worker` is a nanny; the worker process is its child
    deadline = time.time() + 60
    while time.time() < deadline:
        busy = [c for c in nanny.children(recursive=True) if c.cpu_percent(interval=0.2) > 50]
        if busy:  # training its job
            break
    assert time.time() < deadline, "the worker never got a job"
    for process in [*nanny.children(recursive=True), nanny]:
        process.kill()
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    report = json.loads(out)
    assert [r["status"] for e in report["results"] for r in e["runs"]] == ["finished", "finished"]


def test_local_cluster_runs_a_cv(config_file, tmp_path):
    report = cli("cv", "--config", config_file, "--folds", 2, "--cluster", "local:2", "--runs-root", tmp_path, "--json")
    assert len(report["folds"]) == 2 and report["pooled"]["n"] == 600
