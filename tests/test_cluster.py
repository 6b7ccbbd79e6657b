"""--cluster for real: a `dask scheduler` and two `dask worker` processes on 127.0.0.1, started and torn
down here. Runs come back to the client's runs root with the same metrics as local runs; a worker killed
mid-sweep costs nothing but a retry."""

from __future__ import annotations

import json
import os
import shutil
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
    # The event: a run of the sweep has written its first metrics line, so a worker is training its job (a
    # CPU-usage threshold raced a loaded machine).
    while time.time() < deadline and not any(p.stat().st_size for p in (tmp_path / "killed").glob("sweep-*/*/metrics.jsonl")):
        time.sleep(0.05)
    assert time.time() < deadline, "no run of the sweep started on the cluster within 60 s"
    for process in [*nanny.children(recursive=True), nanny]:
        process.kill()
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    report = json.loads(out)
    assert [r["status"] for e in report["results"] for r in e["runs"]] == ["finished", "finished"]


def test_local_cluster_runs_a_cv(config_file, tmp_path):
    report = cli("cv", "--config", config_file, "--folds", 2, "--cluster", "local:2", "--runs-root", tmp_path, "--json")
    assert len(report["folds"]) == 2 and report["pooled"]["n"] == 600


def test_cv_and_a_cv_metric_search_run_on_workers_that_share_no_working_directory(cluster, config_file, tmp_path):
    """The client runs in client/ with a relative runs root, the workers in tmp_path: the fold files the
    client writes are not where the workers would look, so they must travel with the jobs."""
    address, _ = cluster
    client = tmp_path / "client"
    client.mkdir()

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=client,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    report = run("cv", "--config", config_file, "--folds", 2, "--cluster", address, "--runs-root", "runs", "--set", "train.epochs=3",
                 "--json")
    assert [f["status"] for f in report["folds"]] == ["finished", "finished"] and report["pooled"]["n"] == 600
    assert not (tmp_path / "runs").exists()  # nothing was looked for, or written, in the workers' directory
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {float: [0.001, 0.1], log: true}\n")
    for where in (["--cluster", address], []):  # on the cluster, and in two local worker processes
        tuned = run("tune", "--config", config_file, "--space", space, "--trials", 2, "--workers", 2, *where,
                    "--metric", "cv_balanced_accuracy", "--folds", 2, "--set", "train.epochs=3", "--study", f"s{len(where)}",
                    "--runs-root", "runs", "--json")
        assert [t["state"] for t in tuned["trials"]] == ["complete", "complete"], tuned["trials"]
        assert all(0 <= t["value"] <= 1 for t in tuned["trials"])


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a certificate signed by it for 127.0.0.1 (scheduler, workers and client alike), by openssl."""
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, cwd=directory)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=foodcls test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "node.pem", "-days", "2",
        "-extfile", "san.ext")
    return {"ca": directory / "ca.pem", "cert": directory / "node.pem", "key": directory / "node.key"}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test certificates")
def test_a_tls_cluster_with_certificates_runs_a_sweep_and_refuses_clients_without_them(config_file, tmp_path):
    tls = _certificates(tmp_path)
    port = free_port()
    flags = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    processes = [subprocess.Popen([str(DASK), "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                                   *map(str, flags)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)]
    address = f"tls://127.0.0.1:{port}"
    processes.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                       *map(str, flags)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path))
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tls["ca"]),
           "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(tls["cert"]), "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(tls["key"])}
    sweep = [sys.executable, "-m", "foodcls", "sweep", "--config", str(config_file), "--grid", "train.lr=0.1,0.01", "--set", "train.epochs=3",
             "--cluster", address, "--runs-root", str(tmp_path / "runs"), "--json"]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the worker has registered once a sweep runs on it
            result = subprocess.run(sweep, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
            if result.returncode == 0:
                break
            time.sleep(1)
        assert result.returncode == 0, result.stderr
        assert [r["status"] for e in json.loads(result.stdout)["results"] for r in e["runs"]] == ["finished", "finished"]
        bare = {k: v for k, v in env.items() if not k.startswith("DASK_DISTRIBUTED__COMM__TLS")}
        refused = subprocess.run(sweep, capture_output=True, text=True, cwd=REPO, env=bare, timeout=60)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert "TLS needs the CA and this client's certificate and key" in refused.stderr
        plain = subprocess.run([*sweep[:-5], "--cluster", f"tcp://127.0.0.1:{port}", *sweep[-3:]], capture_output=True, text=True,
                               cwd=REPO, env=bare, timeout=60)
        assert plain.returncode == 1 and "cannot reach the Dask scheduler" in plain.stderr  # no way in without TLS
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
