"""Plant, one at a time, the nine small bugs an outside check once slipped past the suite (issue 30), and say
which tests catch each. Each is planted in a copy of the repository (never here), and the tests that should
catch it run there.

    python scripts/planted_bugs.py [--tests tests/test_references.py ...]

Prints one line per bug: caught (and by which test) or NOT caught; exits 1 if any is not caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (file, the text as it is, the bug, what the bug is)
BUGS = [
    ("foodcls/inference/calibration.py", "float(np.sort(scores)[rank - 1])", "float(np.sort(scores)[rank - 2])",
     "conformal_threshold: rank one lower"),
    ("foodcls/inference/calibration.py", "order = np.argsort(-row, kind=\"stable\")", "order = np.argsort(row, kind=\"stable\")",
     "prediction_sets: least probable class first"),
    ("foodcls/inference/calibration.py", "confident = probabilities.max(axis=1) >= (", "confident = probabilities.max(axis=1) > (",
     "decisions: > instead of >= at min_confidence"),
    ("foodcls/inference/judge.py",
     "threshold = predictor.min_confidence if options.min_confidence is None else options.min_confidence",
     "threshold = options.min_confidence", "verdicts ignore the checkpoint's train.min_confidence"),
    ("foodcls/offdata/clean.py", "pl.col(part) > pl.col(whole) + TOLERANCE_G", "pl.col(part) > pl.col(whole)",
     "classify: the sugars/carbs and saturated/fat tolerance dropped"),
    ("foodcls/offdata/rules.py", '.str.replace_all(r"\\ben:null\\b", "")', "", "label_expressions: en:null no longer stripped"),
    ("foodcls/training/stack.py", "(norms.per_step().sum(dim=-1) / counts)", "norms.per_step().sum(dim=-1)",
     "train_epoch: gradient norms summed instead of averaged"),
    ("foodcls/training/run.py", "value > best + min_delta if metric.endswith(\"accuracy\") else value < best - min_delta",
     "value >= best + min_delta if metric.endswith(\"accuracy\") else value <= best - min_delta", "_improved: a tie is an improvement"),
    ("foodcls/runs.py", "for run_dir in reversed(find_runs(runs_root)):", "for run_dir in find_runs(runs_root):",
     "newest_best_checkpoint: the oldest run"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", nargs="+", default=["tests/test_references.py"])
    args = parser.parse_args()
    missed = 0
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(REPO, copy, symlinks=True, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", "site"))
        # The copy has no ../shared beside it: its tests read the real samples from where this checkout's do.
        env = {"FOODCLS_OFF_SAMPLES": str(REPO.parent / "shared" / "data" / "off-exports"), **os.environ, "PYTHONPATH": str(copy)}
        for path, original, planted, what in BUGS:
            source = (copy / path).read_text(encoding="utf-8")
            if source.count(original) != 1:
                print(f"{what}: the text to change is not found once in {path} (the code moved: update BUGS)")
                missed += 1
                continue
            (copy / path).write_text(source.replace(original, planted), encoding="utf-8")
            try:
                result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                                         *args.tests], cwd=copy, env=env, capture_output=True, text=True)
            finally:
                (copy / path).write_text(source, encoding="utf-8")
            failed = sorted(set(re.findall(r"^FAILED (\S+)", result.stdout, re.M)))
            if result.returncode != 0 and failed:
                print(f"caught      {what}: {', '.join(f.split('::')[-1].split(' ')[0] for f in failed)}")
            else:
                missed += 1
                print(f"NOT caught  {what}" + (f" (pytest exit {result.returncode})" if result.returncode else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
