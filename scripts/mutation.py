"""Mutation testing with mutmut 3 (`pip install mutmut`) over issue 30's seven modules, each group of modules in a
scratch copy of the repository of its own (mutmut writes its `mutants/` tree and a config beside the code; nothing
of that lands here), with the tests that check that group: a mutant runs only the selected tests that reach the
function it changes, and a module that every training test reaches (calibration, predict) would otherwise re-run
dozens of trainings per mutant.

    python scripts/mutation.py                       # every group, one after the other; a table at the end
    python scripts/mutation.py --group offdata runs  # some of them
    python scripts/mutation.py --modules foodcls/runs.py --tests tests/test_references.py   # anything else
    python scripts/mutation.py --group training --sample 150   # 150 of the group's mutants, drawn at random
    python scripts/mutation.py --group training --again        # after adding tests: only the last run's survivors

Prints, per group, mutmut's counts (killed, survived, timeout, no tests) and the score: caught (killed or timed
out) over every mutant, those no selected test reaches counted as survivors; then the survivors, each as its
diff, to read (docs/explanation/reliability.md lists the equivalent ones and why). Slow: measured on two cores,
offdata ~30 min, runs ~20, calibration ~20; predict and training take hours whole (`--sample`: ~20 min each).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCES = "tests/test_references.py"
# A mutant runs every selected test that reaches the function it changes, until one fails: the selections are
# the fast, exact tests (references worked out by hand, small trainings), not the whole suite — a score with them
# is a lower bound of the suite's. Training tests that take 5-20 s each (lockstep stacks against solo runs, SIGKILL
# and resume in subprocesses, whose code mutmut's stats do not see anyway) are left out of the training group.
TRAINING_TESTS = [f"tests/test_train.py::test_{name}" for name in (
    "model_fits_a_tiny_dataset", "the_summary_says_while_running_and_after_what_the_run_is_and_how_it_ended",
    "how_a_run_ends_pruned_early_stopped_and_with_the_rate_lowered_on_a_plateau", "each_rows_weight_is_its_files_times_its_classs",
    "a_checkpoint_to_fine_tune_must_fit_the_config", "run_directory_holds_config_metrics_checkpoints_summary_and_plots",
    "same_config_and_seed_give_identical_metrics_and_weights", "interrupt_leaves_a_valid_run_whose_last_checkpoint_is_the_last_completed_epoch",
    "the_model_card_says_what_the_run_is_how_it_scored_and_which_file_it_describes", "bad_data_writes_nothing",
    "feature_dropout_puts_fill_values_in_about_its_share_of_the_inputs_and_leaves_the_rest",
    "balanced_class_weights_can_follow_only_the_rows_that_are_not_train_only")] + [
    f"tests/test_resume.py::test_{name}" for name in (
        "ctrl_c_in_the_middle_of_an_epoch_saves_the_last_completed_epoch", "resume_after_ctrl_c_with_more_epochs_equals_one_longer_run",
        "resume_refuses_a_changed_model")]
GROUPS = {  # name: (modules, the tests that check them)
    "offdata": (["foodcls/offdata/clean.py", "foodcls/offdata/rules.py", "foodcls/offdata/dedup.py"],
                [REFERENCES, "tests/test_cleaning_references.py", "tests/test_offdata.py"]),
    "runs": (["foodcls/runs.py"], [REFERENCES, "tests/test_run_records.py"]),
    "calibration": (["foodcls/inference/calibration.py"], [REFERENCES, "tests/test_calibration_references.py"]),
    "predict": (["foodcls/inference/predict.py"], [REFERENCES, "tests/test_checkpoint_references.py", "tests/test_checkpoint.py"]),
    "training": (["foodcls/training/run.py"], [REFERENCES, *TRAINING_TESTS]),
}
# Imported once in the process every worker is forked from, which runs nothing: polars' and torch's thread pools,
# started by running tests, do not survive a fork (forked after the collection, mutmut's default, a worker hung
# until the timeout on nearly every mutant). Not foodcls: imported there, it would be the copy's unmutated package.
PRELOAD = ["numpy", "torch", "torch.optim", "polars", "scipy.stats", "sklearn.metrics", "yaml", "pydantic", "safetensors.numpy",
           "typer", "rich.console", "hypothesis", "schemathesis", "xdist", "pytest"]
PRELOAD_FILE = "mutmut-preload.txt"


def also_copy(root: Path, directory: Path, mutated: set[Path]) -> list[str]:
    """Everything under directory but the mutated files (mutmut copies only those): whole directories where they
    hold none."""
    out = []
    for path in sorted(directory.iterdir()):
        relative = path.relative_to(root)
        if path.name == "__pycache__":
            continue
        if path.is_dir():
            if any(m.is_relative_to(relative) for m in mutated):
                out += also_copy(root, path, mutated)
            else:
                out.append(f"{relative}/")
        elif relative not in mutated:
            out.append(str(relative))
    return out


def _statuses(work: Path) -> dict[str, str]:
    """Every mutant mutmut has checked in work, and its status."""
    results = subprocess.run(["mutmut", "results", "--all", "true"], check=True, cwd=work, capture_output=True, text=True).stdout
    return {name: status for name, status in (line.strip().rsplit(": ", 1) for line in results.splitlines() if ": " in line)
            if status != "not checked"}


def run_group(modules: list[str], tests: list[str], work: Path, max_children: int, timeout_multiplier: float,
              sample: int | None = None, seed: int = 0, again: bool = False) -> Counter:
    """mutmut over modules with tests, in a fresh copy at work; its results counted, its survivors printed. With
    sample, only that many of the mutants, drawn at random (seed): the rest stay "not checked", left out of the
    counts. With again, work's earlier run is kept: its tests are refreshed from this checkout and only the mutants
    that survived it (or that no test reached) run again — after tests were added for them."""
    survivors = [n for n, status in _statuses(work).items() if status in ("survived", "no tests")] if again else []
    if again:
        shutil.rmtree(work / "tests")
        shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        (work / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # which tests reach what: measured anew
    else:
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(REPO, work, symlinks=True, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", "site", "mutants"))
    mutated = {Path(m) for m in modules}
    config = ("\n[tool.mutmut]\n"
              f"source_paths = {sorted(map(str, mutated))!r}\n"
              'pytest_add_cli_args = ["-n", "0", "-p", "no:randomly"]\n'
              f'process_isolation = "forkserver"\nforkserver_warmup = "import"\npreload_modules_file = "{PRELOAD_FILE}"\n'
              # Two workers on two cores, each building the session's fixtures (a trained run) afresh: a mutant's
              # tests run slower than in the stats pass, whose test durations (without fixtures) set the budget.
              f"timeout_multiplier = {timeout_multiplier}\n"
              f"pytest_add_cli_args_test_selection = {tests!r}\n"
              f"also_copy = {also_copy(work, work / 'foodcls', mutated) + ['data/', 'configs', 'tests/']!r}\n").replace("'", '"')
    (work / PRELOAD_FILE).write_text("\n".join(PRELOAD) + "\n", encoding="utf-8")
    with open(work / "pyproject.toml", "a", encoding="utf-8") as handle:
        handle.write(config)
    # The copy has no ../shared beside it: its tests read the real samples from where this checkout's do.
    env = {"FOODCLS_OFF_SAMPLES": str(REPO.parent / "shared" / "data" / "off-exports"), **os.environ}
    names: list[str] = survivors
    if again:
        print(f"  again: the {len(survivors)} mutants that survived or that no test reached", flush=True)
        if not survivors:
            return Counter(_statuses(work).values())
    elif sample is not None:
        # Generate the mutants and measure the tests (a filter that matches nothing stops mutmut right after), then
        # draw the sample from the names it lists.
        subprocess.run(["mutmut", "run", "--max-children", str(max_children), "no-such-mutant-*"], check=False, cwd=work, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listed = subprocess.run(["mutmut", "results", "--all", "true"], check=True, cwd=work, capture_output=True, text=True).stdout
        every = sorted(line.strip().rsplit(": ", 1)[0] for line in listed.splitlines() if ": " in line)
        names = random.Random(seed).sample(every, min(sample, len(every)))
        print(f"  a sample of {len(names)} of its {len(every)} mutants (seed {seed})", flush=True)
    subprocess.run(["mutmut", "run", "--max-children", str(max_children), *names], check=False, cwd=work, env=env, stdout=subprocess.DEVNULL)
    statuses = _statuses(work)
    for name, status in statuses.items():
        if status in ("survived", "no tests"):
            diff = subprocess.run(["mutmut", "show", name], check=True, cwd=work, capture_output=True, text=True).stdout
            changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
            print(f"  {status}: {name}\n    " + "\n    ".join(changed))
    return Counter(statuses.values())


def score_line(name: str, counts: Counter) -> str:
    # A timeout is a mutant the tests did not let pass (mutmut's own score counts it as killed); a mutant no
    # selected test reaches counts against the score here, as a survivor would.
    caught = counts["killed"] + counts["timeout"]
    total = caught + counts["survived"] + counts["no tests"]
    return (f"{name:12} {total:5} mutants  killed {counts['killed']:4}  timeout {counts['timeout']:3}  survived {counts['survived']:4}"
            f"  no tests {counts['no tests']:4}  score {caught / max(total, 1):.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", nargs="+", choices=sorted(GROUPS), default=list(GROUPS))
    parser.add_argument("--modules", nargs="+", help="mutate these instead of the groups' modules")
    parser.add_argument("--tests", nargs="+", default=[REFERENCES], help="with --modules: the tests to run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/foodcls-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--timeout-multiplier", type=float, default=30.0)
    parser.add_argument("--sample", type=int, help="test only this many mutants of each group, drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="of --sample's draw")
    parser.add_argument("--again", action="store_true", help="rerun only the survivors of the last run in --workdir, with this checkout's tests")
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        print("mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 1
    groups = {"modules": (args.modules, args.tests)} if args.modules else {g: GROUPS[g] for g in args.group}
    lines, total = [], Counter()
    for name, (modules, tests) in groups.items():
        print(f"{name}: {' '.join(modules)} with {' '.join(tests)}", flush=True)
        counts = run_group(modules, tests, args.workdir / name, args.max_children, args.timeout_multiplier, args.sample, args.seed,
                           args.again)
        lines.append(score_line(name, counts))
        print(lines[-1], flush=True)
        total += counts
    print("\n".join([*lines, score_line("all", total)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
