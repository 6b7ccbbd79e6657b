"""Fault injection: signals, full disks and file-size limits, huge models, corrupt checkpoints, concurrency.
Each leaves one line of error, the right status, and no half-written file."""

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from foodcls import runs
from foodcls.inference.checkpoint import load_checkpoint
from foodcls.config import load_config
from foodcls.errors import FoodclsError, WriteError
from foodcls.offdata.build import build_dataset
from foodcls.training.fit import train
from tests import offexports as off
from tests.conftest import REPO, PacedRun
from tests.test_resume import RESUMABLE, assert_same_model, metric_lines


def foodcls_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "foodcls", *map(str, args)], capture_output=True, text=True, cwd=REPO, **kwargs)


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


def no_temp_files(root):
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".new-" in p.name or ".old-" in p.name]


def test_a_model_too_big_for_memory_is_refused_before_anything_is_written(config_file, tmp_path):
    result = foodcls_cli("train", "--config", config_file, "--set", "model.hidden=[100000,100000]", "--runs-root", tmp_path / "runs")
    line = one_line(result)
    assert result.returncode == 1 and "model.hidden" in line and "GB" in line and "parameters" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_saves_the_last_epoch_and_the_run_resumes_identically(config_file, tmp_path, sig, code):
    overrides = [*RESUMABLE, "train.epochs=150"]
    reference = train(load_config(config_file, overrides), runs_root=tmp_path / "reference", name="r")
    args = ["train", "--config", config_file, "--runs-root", tmp_path / "killed"]
    for override in overrides:
        args += ["--set", override]
    run = PacedRun(*args)
    process = run.process
    epoch = 17 if sig == signal.SIGTERM else 23
    run.stop_at(epoch)  # the signal lands while the run waits after that epoch
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code and "Traceback" not in err
    run_dir = next((tmp_path / "killed").glob("small-*"))
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "interrupted"
    assert load_checkpoint(runs.last_checkpoint(run_dir)).meta["epoch"] == summary["epochs_run"] == len(runs.read_metrics(run_dir)) == epoch
    assert foodcls_cli("train", "--resume", run_dir).returncode == 0
    assert_same_model(runs.last_checkpoint(run_dir), reference.last_checkpoint)
    assert metric_lines(run_dir) == metric_lines(reference.run_dir)


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_fails_the_run_in_one_line_with_no_partial_file(config_file, tmp_path):
    # 20 KiB is enough for config and summary, not for a plot: the real EFBIG path (as a full disk takes).
    result = subprocess.run([sys.executable, "-m", "foodcls", "train", "--config", str(config_file), "--runs-root", str(tmp_path / "runs")],
                            capture_output=True, text=True, cwd=REPO, preexec_fn=_limit_file_size(20 * 1024))
    line = one_line(result)
    assert result.returncode == 1 and "cannot write" in line and "EFBIG" in line
    run_dir = next((tmp_path / "runs").glob("small-*"))
    assert runs.read_summary(run_dir)["status"] == "failed" and "EFBIG" in runs.read_summary(run_dir)["error"]
    assert runs.run_overview(run_dir)["status"] == "failed"
    assert no_temp_files(tmp_path) == []


def test_a_full_disk_at_every_write_of_a_run_is_reported_and_leaves_no_partial_file(config_file, tmp_path, monkeypatch):
    config = load_config(config_file, ["train.epochs=3", "train.checkpoint_every=1"])
    real_fsync = os.fsync
    for failing in range(1, 40):
        calls = {"n": 0}

        def fsync(fd):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                return real_fsync(fd)  # a directory sync after a rename writes no data: not a write that can fill the disk
            calls["n"] += 1
            if calls["n"] == failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        root = tmp_path / f"runs{failing}"
        try:
            train(config, runs_root=root, name="full")
        except WriteError as error:
            assert "ENOSPC" in str(error) and "\n" not in str(error)
        else:
            assert calls["n"] < failing  # every write of the run came before the failing one
            break
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)
        assert no_temp_files(root) == []
        for run_dir in root.glob("full-*"):
            status = runs.run_overview(run_dir)["status"]
            assert status == "failed" or not (run_dir / "summary.json").exists() or not (run_dir / "config.yaml").exists()
    assert failing > 8  # the loop went through config, summaries, checkpoints and plots


def test_a_corrupt_last_checkpoint_on_resume_is_one_line_and_leaves_best_untouched(config_file, tmp_path):
    run = train(load_config(config_file), runs_root=tmp_path, name="c")
    best = run.best_checkpoint.read_bytes()
    run.last_checkpoint.write_bytes(run.last_checkpoint.read_bytes()[:300])
    result = foodcls_cli("train", "--resume", run.run_dir)
    assert result.returncode == 1 and "last.safetensors" in one_line(result)
    assert run.best_checkpoint.read_bytes() == best


def test_two_trainings_started_together_never_share_a_directory(config_file, tmp_path):
    processes = [subprocess.Popen([sys.executable, "-m", "foodcls", "train", "--config", str(config_file), "--runs-root",
                                   str(tmp_path), "--json"], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    dirs = [json.loads(p.communicate(timeout=120)[0])["run_dir"] for p in processes]
    assert len(set(dirs)) == 3


def test_two_builds_into_one_directory_at_once_one_wins_the_other_says_so(tmp_path, monkeypatch):
    source = off.off_tsv(tmp_path / "a.tsv")
    import foodcls.offdata.build as build

    entered, release = threading.Event(), threading.Event()
    real = build._swap_in

    def slow_write(*args):
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(build, "_swap_in", slow_write)
    winner = threading.Thread(target=build_dataset, args=([source], tmp_path / "out"))
    winner.start()
    assert entered.wait(10)
    with pytest.raises(FoodclsError, match="another `foodcls data build` is writing"):
        build_dataset([source], tmp_path / "out")
    release.set()
    winner.join()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "datacard.json", "test.csv", "train.csv", "val.csv"]


def test_a_failed_build_leaves_the_previous_output_as_it_was(tmp_path, monkeypatch):
    source = off.off_tsv(tmp_path / "a.tsv")
    build_dataset([source], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError, match="ENOSPC"):
        build_dataset([source, off.off_jsonl(tmp_path / "b.jsonl")], tmp_path / "out")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert no_temp_files(tmp_path) == []


def test_a_sweep_whose_worker_is_killed_reports_that_run_failed_and_finishes_the_other(config_file, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "foodcls", "sweep", "--config", str(config_file), "--grid", "train.lr=0.1,0.01",
                                "--set", "train.epochs=400", "--workers", "2", "--runs-root", str(tmp_path), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 60
    victim = None
    while time.time() < deadline and victim is None:
        children = psutil.Process(process.pid).children(recursive=True)
        workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        if len(workers) == 2 and list(tmp_path.glob("sweep-*/*/metrics.jsonl")):
            victim = workers[0]
        time.sleep(0.05)
    assert victim is not None, "the sweep's workers never started"
    victim.kill()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    report = json.loads(out)
    statuses = sorted(r["status"] for entry in report["results"] for r in entry["runs"])
    assert statuses == ["failed", "finished"]
    failed = [r for entry in report["results"] for r in entry["runs"] if r["status"] == "failed"][0]
    assert "worker process died" in failed["error"]


def test_a_config_whose_alias_contains_itself_is_one_line(tmp_path):
    from foodcls.config import load_config
    from foodcls.errors import ConfigError

    for text in ("data:\n  train: t.csv\nmodel: &m\n  hidden: *m\n", "data:\n  train: t.csv\ntrain: &t\n  lr: 0.1\n  x: *t\n",
                 "data: &d\n  train: [*d]\n"):
        path = tmp_path / "recursive.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{path}"):
            load_config(path)


def test_eval_and_baselines_of_a_checkpoint_whose_stored_config_lacks_data_are_one_line(trained_run, tmp_path):
    from typer.testing import CliRunner

    from foodcls.cli import app
    from foodcls.inference.checkpoint import load_checkpoint, save_checkpoint

    old = load_checkpoint(trained_run.best_checkpoint)
    meta = {**old.meta, "config": {k: v for k, v in old.meta["config"].items() if k != "data"}}
    save_checkpoint(tmp_path / "no-data.safetensors", old.arrays, meta)
    for extra in ([], ["--data", str(tmp_path / "x.csv"), "--baselines"]):
        if extra:
            (tmp_path / "x.csv").write_text("meats,20,1,12,2\nbeverages,0,10,0,1\n")
        result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "no-data.safetensors"), *extra])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "no-data.safetensors" in result.output


def test_files_and_directories_follow_the_umask_not_mkstemps_0600(config_file, tmp_path):
    from tests import offexports as off

    script = ("import os, sys; os.umask(0o027); from foodcls.cli import app; sys.argv = ['foodcls'] + sys.argv[1:]; app()")
    for args in (["train", "--config", str(config_file), "--runs-root", str(tmp_path / "runs")],
                 ["data", "build", str(off.off_tsv(tmp_path / "a.tsv")), "--out", str(tmp_path / "off")]):
        result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs").glob("small-*"))
    for path in [run_dir / "config.yaml", run_dir / "summary.json", run_dir / "checkpoints" / "best.safetensors",
                 run_dir / "learning_curves.png", *(tmp_path / "off").iterdir()]:
        assert oct(path.stat().st_mode & 0o777) == oct(0o640), path
    assert oct((tmp_path / "off").stat().st_mode & 0o777) == oct(0o750)


def test_an_atomic_write_syncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    from foodcls.fileio import atomic_write_text

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_fsync(fd))[1])
    atomic_write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the data, then the rename
