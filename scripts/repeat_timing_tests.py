"""Run the timing-sensitive tests many times in a row, some of them beside `stress -c 2` (issue 30).

    python scripts/repeat_timing_tests.py [--rounds 20] [--stressed 5]

The tests that kill, signal or race a live process: a signal mid-run, SIGKILL around checkpoint writes, resume of
a run still training, a killed sweep worker, a killed search, a killed composite run, a dead cluster worker, an
interrupted train. The last `--stressed` rounds run with `stress -c 2` (apt-get install stress) loading both
cores. Prints one line per round and the count of rounds that passed; exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_faults.py::test_a_signal_mid_run_saves_the_last_epoch_and_the_run_resumes_identically",
    "tests/test_faults.py::test_a_sweep_whose_worker_is_killed_reports_that_run_failed_and_finishes_the_other",
    "tests/test_resume.py::test_sigkill_between_two_checkpoint_writes_then_resume_ends_identical",
    "tests/test_resume.py::test_sigkill_before_the_first_checkpoint_then_resume_starts_over_identically",
    "tests/test_resume.py::test_resume_after_ctrl_c_with_more_epochs_equals_one_longer_run",
    "tests/test_resume.py::test_resume_of_a_run_still_training_is_refused_naming_its_pid_and_a_killed_run_is_not_left_locked",
    "tests/test_train.py::test_interrupt_leaves_a_valid_run_whose_last_checkpoint_is_the_last_completed_epoch",
    "tests/test_tune.py::test_a_search_killed_midway_continues_with_its_finished_trials_and_prunes",
    "tests/test_suggest.py::test_a_killed_composite_run_resumes_its_parts_and_assembles",
    "tests/test_cluster.py::test_sweep_and_tune_on_a_cluster_match_local_runs_and_survive_a_dead_worker",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--stressed", type=int, default=5, help="how many of the last rounds run beside stress -c 2")
    args = parser.parse_args()
    if args.stressed and shutil.which("stress") is None:
        print("stress is not installed: apt-get install -y stress", file=sys.stderr)
        return 1
    passed = 0
    for round_number in range(1, args.rounds + 1):
        stressed = round_number > args.rounds - args.stressed
        load = subprocess.Popen(["stress", "-c", "2"], stdout=subprocess.DEVNULL) if stressed else None
        started = time.monotonic()
        try:
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *TESTS],
                                    cwd=REPO, capture_output=True, text=True)
        finally:
            if load is not None:
                load.terminate()
                load.wait()
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr.strip()[-200:]
        passed += result.returncode == 0
        print(f"round {round_number:2d}{' (stress -c 2)' if stressed else ''}: {summary} [{time.monotonic() - started:.0f} s]",
              flush=True)
        if result.returncode != 0:
            print(result.stdout[-4000:], flush=True)
    print(f"{passed} of {args.rounds} rounds passed")
    return 0 if passed == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
