"""Run directories read back (runs.py), on run directories written by hand: every figure `runs list`, `runs show`
and `runs compare` print, the statuses, the damaged files, the composite runs' parts and the default checkpoint —
each value written once here and expected exactly (issue 30: a reference that is not the code under test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from foodcls import runs
from foodcls.errors import RunError


def make_run(root: Path, name: str, summary: object = None, metrics: list | str | None = None, config: dict | None = None,
             best: bool = True) -> Path:
    run_dir = root / name
    (run_dir / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (run_dir / runs.CONFIG_FILE).write_text(yaml.safe_dump(config or {"name": name}), encoding="utf-8")
    if summary is not None:
        (run_dir / runs.SUMMARY_FILE).write_text(summary if isinstance(summary, str) else json.dumps(summary), encoding="utf-8")
    if metrics is not None:
        text = metrics if isinstance(metrics, str) else "".join(json.dumps(m) + "\n" for m in metrics)
        (run_dir / runs.METRICS_FILE).write_text(text, encoding="utf-8")
    if best:
        runs.best_checkpoint(run_dir).write_bytes(b"weights")
    return run_dir


FINISHED = {"status": "finished", "name": "small", "best_epoch": 2, "val_accuracy": 0.75, "test_accuracy": 0.5,
            "evaluation": {"test": {"macro_f1": 0.4}}, "train_seconds": 1.5, "started_at": "2026-12-01T10:00:00+00:00",
            "epochs_run": 3}
EPOCHS = [{"epoch": 1, "train_loss": 1.2, "val_accuracy": 0.5}, {"epoch": 2, "train_loss": 0.9, "val_accuracy": 0.8},
          {"epoch": 3, "train_loss": 0.7, "val_accuracy": 0.7}]


def test_the_overview_of_a_finished_run_holds_each_figure_of_its_files(tmp_path):
    run_dir = make_run(tmp_path, "small-1", FINISHED, EPOCHS)
    assert runs.run_overview(run_dir) == {
        "run_dir": str(run_dir), "run": "small-1", "config": "small", "status": "finished", "epochs": 3, "best_epoch": 2,
        "best_val_accuracy": 0.8, "val_accuracy": 0.75, "test_accuracy": 0.5, "test_macro_f1": 0.4,
        "final_train_loss": 0.7, "train_seconds": 1.5, "started_at": "2026-12-01T10:00:00+00:00", "error": None}


def test_a_damaged_summary_gives_none_for_every_figure_and_reads_as_interrupted(tmp_path):
    damaged = {"status": "finished?", "best_epoch": "2", "val_accuracy": True, "evaluation": {"test": []}, "epochs_run": None,
               "error": 7}
    run_dir = make_run(tmp_path, "odd", damaged)
    overview = runs.run_overview(run_dir)
    assert overview["status"] == "interrupted" and overview["error"] == "7" and overview["config"] == "" and overview["started_at"] == ""
    assert [overview[k] for k in ("epochs", "best_epoch", "best_val_accuracy", "val_accuracy", "test_macro_f1", "final_train_loss")] == [0, None, None, None, None, None]
    for text in ("[1, 2]", "{not json", "\udcff"):  # not an object, not JSON, not UTF-8
        (run_dir / runs.SUMMARY_FILE).write_text(text, encoding="utf-8", errors="surrogateescape")
        assert runs.read_summary(run_dir) == {}
    assert runs.run_overview(make_run(tmp_path, "composite", {"epochs_run": 40, "val_accuracy": 0.9}))["epochs"] == 40
    assert runs.run_overview(make_run(tmp_path, "composite2", {"val_accuracy": 0.9}))["best_val_accuracy"] == 0.9


def test_metrics_stop_at_the_first_damaged_line(tmp_path):
    lines = json.dumps(EPOCHS[0]) + "\n" + json.dumps(EPOCHS[1]) + "\n" + '{"epoch": 3, "train_lo'
    assert [r["epoch"] for r in runs.read_metrics(make_run(tmp_path, "torn", FINISHED, lines))] == [1, 2]
    not_epochs = json.dumps(EPOCHS[0]) + "\n" + json.dumps({"epoch": "2"}) + "\n" + json.dumps(EPOCHS[2]) + "\n"
    assert [r["epoch"] for r in runs.read_metrics(make_run(tmp_path, "odd", FINISHED, not_epochs))] == [1]
    listed = json.dumps(EPOCHS[0]) + "\n[3]\n" + json.dumps(EPOCHS[2]) + "\n"
    assert [r["epoch"] for r in runs.read_metrics(make_run(tmp_path, "list", FINISHED, listed))] == [1]
    assert runs.read_metrics(make_run(tmp_path, "none", FINISHED)) == []


@pytest.mark.parametrize(("summary", "status"), [
    ({"status": "finished"}, "finished"), ({"status": "failed"}, "failed"), ({"status": "pruned"}, "pruned"),
    ({"status": "interrupted"}, "interrupted"), ({}, "interrupted"), ({"status": "lost"}, "interrupted"),
    ({"status": "running", "pid": os.getpid()}, "running"),  # this process: alive
    ({"status": "running", "pid": True}, "interrupted"), ({"status": "running"}, "interrupted"),
    ({"status": "running", "pid": 2**22 + 1}, "interrupted"),  # above pid_max's default: no such process
])
def test_run_status(summary, status):
    assert runs.run_status(summary) == status


def test_process_alive_asks_without_signalling():
    import subprocess
    import sys

    # A child that exits 3 on SIGHUP (the signal 1 a slip of the pen would send), once it says it is ready.
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGHUP, lambda *a: sys.exit(3))\nprint('ready', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert runs.process_alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)  # still sleeping: it was asked about, not signalled
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert not runs.process_alive(child.pid) and not runs.process_alive(None) and not runs.process_alive(2**22 + 1)


def test_runs_are_found_oldest_first_without_the_parts_of_composite_runs(tmp_path):
    # Names, creation order and start times disagree: the start time orders; a run that never said when it
    # started (no summary) counts as the oldest.
    late = make_run(tmp_path, "a-late", {**FINISHED, "started_at": "2026-12-02T00:00:00+00:00"})
    early = make_run(tmp_path, "b-early", {**FINISHED, "started_at": "2026-12-01T00:00:00+00:00"})
    unknown = make_run(tmp_path, "c-unknown")
    members = [make_run(late / runs.MEMBERS_DIR, name, FINISHED) for name in ("m10", "m2", "m1")]
    make_run(late / runs.SOURCES_DIR / "off-2024.tsv", "m0", FINISHED)
    (tmp_path / "no-checkpoints").mkdir()
    (tmp_path / "no-checkpoints" / runs.CONFIG_FILE).write_text("name: x\n", encoding="utf-8")
    assert runs.find_runs(tmp_path) == [unknown, early, late]
    assert runs.member_dirs(late) == [members[2], members[1], members[0]]  # m1, m2, m10: by number
    assert runs.member_dirs(early) == [] and runs.find_runs(tmp_path / "absent") == []
    assert runs.is_part(members[0]) and not runs.is_part(late)


def test_a_config_yaml_above_the_runs_makes_no_run_a_part(tmp_path):
    # A project folder that keeps its own config.yaml beside its runs: only members/ and sources/<s>/ hold parts.
    (tmp_path / runs.CONFIG_FILE).write_text("name: project\n", encoding="utf-8")
    grouped = make_run(tmp_path / "group", "r1", FINISHED)
    deeper = make_run(tmp_path / "a" / "b", "r2", FINISHED)
    assert not runs.is_part(grouped) and not runs.is_part(deeper)
    assert set(runs.find_runs(tmp_path)) == {grouped, deeper}


def test_the_default_checkpoint_passes_over_cv_folds_unfinished_runs_and_runs_without_a_best(tmp_path):
    chosen = make_run(tmp_path, "a", {**FINISHED, "started_at": "2026-12-01T00:00:00+00:00"})
    make_run(tmp_path, "b", {**FINISHED, "started_at": "2026-12-02T00:00:00+00:00"}, best=False)
    make_run(tmp_path, "c", {**FINISHED, "status": "pruned", "started_at": "2026-12-03T00:00:00+00:00"})
    cv = tmp_path / "cv-small-20261204-000000"
    (cv / "folds").mkdir(parents=True)
    fold = make_run(cv, "fold-1", {**FINISHED, "started_at": "2026-12-04T00:00:00+00:00"})
    assert runs.is_cv_fold(fold) and not runs.is_cv_fold(chosen)
    assert runs.newest_best_checkpoint(tmp_path) == runs.best_checkpoint(chosen)
    with pytest.raises(RunError, match=r"no finished run found under .*/empty/: run `foodcls train"):
        runs.newest_best_checkpoint(tmp_path / "empty")


def test_the_default_runs_root_is_runs_in_the_working_directory(tmp_path, monkeypatch):
    chosen = make_run(tmp_path / "runs", "a", FINISHED)
    monkeypatch.chdir(tmp_path)
    assert runs.newest_best_checkpoint().resolve() == runs.best_checkpoint(chosen).resolve()


def test_run_directories_are_named_by_the_utc_second_and_suffixed_when_taken(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            assert tz is timezone.utc  # never the machine's local time
            return datetime(2026, 12, 7, 5, 4, 3, tzinfo=tz)

    monkeypatch.setattr(runs, "datetime", Frozen)
    made = [runs.create_run_dir(tmp_path / "deep" / "runs", "small") for _ in range(3)]  # its parents made too
    assert [d.name for d in made] == ["small-20261207-050403", "small-20261207-050403-2", "small-20261207-050403-3"]
    assert all((d / runs.CHECKPOINT_DIR).is_dir() for d in made)

    def always_taken(self, *args, exist_ok=False, **kwargs):
        if not exist_ok:
            raise FileExistsError(self)

    monkeypatch.setattr(Path, "mkdir", always_taken)
    with pytest.raises(RunError, match=r"runs: cannot create a unique directory for small-20261207-050403$"):
        runs.unique_dir(tmp_path / "deep" / "runs", "small")


def test_cv_folds_need_both_the_name_and_the_folds_beside_them(tmp_path):
    (tmp_path / "cv-x").mkdir()
    (tmp_path / "plain" / "folds").mkdir(parents=True)
    assert not runs.is_cv_fold(tmp_path / "cv-x" / "r") and not runs.is_cv_fold(tmp_path / "plain" / "r")


def test_show_and_compare_redact_credentials_and_list_only_the_keys_that_differ(tmp_path):
    a = make_run(tmp_path, "a", FINISHED, EPOCHS, {"name": "a", "train": {"lr": 0.1, "seed": 0},
                                                   "tracking": {"uri": "postgresql://u:secret@h/db"}})
    b = make_run(tmp_path, "b", {**FINISHED, "status": "failed", "val_accuracy": 0.5}, EPOCHS[:1],
                 {"name": "b", "train": {"lr": 0.1, "seed": 1}, "tracking": {"uri": "postgresql://u:other@h/db"}})
    shown = runs.show_run(a)
    assert shown["config"]["tracking"]["uri"] == "postgresql://u:***@h/db" and shown["best_val_accuracy"] == 0.8
    compared = runs.compare_runs([a, b])
    assert compared["config_diff"] == {"name": ["a", "b"], "train.seed": [0, 1],
                                       "tracking.uri": ["postgresql://u:***@h/db", "postgresql://u:***@h/db"]}
    assert compared["metrics"]["status"] == ["finished", "failed"] and compared["metrics"]["val_accuracy"] == [0.75, 0.5]
    assert compared["metrics"]["epochs"] == [3, 1] and compared["metrics"]["final_train_loss"] == [0.7, 1.2]
    assert list(compared["metrics"]) == ["status", "epochs", "best_epoch", "best_val_accuracy", "val_accuracy", "test_accuracy",
                                         "test_macro_f1", "final_train_loss", "train_seconds"]
    assert [r["run"] for r in compared["runs"]] == ["a", "b"]
    with pytest.raises(RunError, match=r"not a run directory \(no config.yaml\)"):
        runs.compare_runs([a, tmp_path])
    (a / runs.CONFIG_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(RunError, match=r"config.yaml: unreadable \(UnicodeDecodeError\)"):
        runs.show_run(a)


def test_provenance_names_each_datacard_once_with_its_counts_and_hash(tmp_path):
    import hashlib

    data = tmp_path / "data"
    data.mkdir()
    card = {"rows_kept": 10, "rows_read": 12, "per_class": {"meats": 10}, "sources": [{"path": "/x/off-2024.tsv"}, "odd"]}
    (data / "datacard.json").write_text(json.dumps(card), encoding="utf-8")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "datacard.json").write_text("[]", encoding="utf-8")  # not an object: left out
    config = {"data": {"train": [str(data / "train.csv"), {"path": str(tmp_path / "other" / "t.csv")}, str(tmp_path / "none.csv")],
                       "val": str(data / "val.csv"), "test": None}}
    assert runs.datacard_paths(config) == [data / "datacard.json", tmp_path / "other" / "datacard.json"]
    assert runs.data_provenance(config) == [{
        "datacard": str((data / "datacard.json").resolve()), "rows_kept": 10, "rows_read": 12, "per_class": {"meats": 10},
        "sources": ["off-2024.tsv"], "sha256": hashlib.sha256((data / "datacard.json").read_bytes()).hexdigest()}]
    assert runs.datacard_paths({"data": "x"}) == [] and runs.data_provenance({}) == []
    # The val and the test files' cards count too; a damaged card is passed over, not the end of the list.
    for name, text in (("v", json.dumps(card)), ("t", json.dumps(card)), ("bad", "{not json")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "datacard.json").write_text(text, encoding="utf-8")
    split_config = {"data": {"train": [str(tmp_path / "bad" / "train.csv")], "val": str(tmp_path / "v" / "val.csv"),
                             "test": str(tmp_path / "t" / "test.csv")}}
    assert runs.datacard_paths(split_config) == [tmp_path / d / "datacard.json" for d in ("bad", "v", "t")]
    assert [entry["datacard"] for entry in runs.data_provenance(split_config)] == [str((tmp_path / d / "datacard.json").resolve()) for d in ("v", "t")]
    assert runs.provenance_entry("p", {"sources": None})["sources"] == []  # damaged: no sources, not an error
    assert runs.provenance_entry("p", {"sources": [{"file": "x"}, {"path": "/a/b.tsv"}]})["sources"] == ["?", "b.tsv"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    def refused_while_held(run_dir, message):
        held = runs.lock_run(run_dir)
        try:
            with pytest.raises(RunError, match=message):
                runs.lock_run(run_dir)
        finally:
            held.close()

    live = make_run(tmp_path, "live", {"status": "running", "pid": 4321})
    refused_while_held(live, r"live: still training in another process \(pid 4321\); stop it")
    runs.lock_run(live).close()  # released: taken again
    refused_while_held(make_run(tmp_path, "quiet"),  # no summary: no pid to name
                       r"quiet: still training in another process; stop it \(Ctrl-C or kill\) or wait for it")
    with pytest.raises(RunError, match=r"missing: cannot open its lock file \(No such file or directory\)"):
        runs.lock_run(tmp_path / "missing")
    with pytest.raises(RunError, match=r"not a run directory"):
        runs.resolve_run_dir(tmp_path)
