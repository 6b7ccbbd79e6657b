"""Mutation testing with mutmut 3 (`pip install mutmut`), over a scratch copy of the repository (mutmut writes
its `mutants/` tree and a config beside the code; nothing of that lands here).

    python scripts/mutation.py [--modules foodcls/inference/calibration.py ...] [--tests tests/test_references.py ...]
                               [--workdir /tmp/foodcls-mutation] [--max-children 2]

The modules default to the seven issue 30 names; the tests to the fast, hand-checked references. mutmut copies
only the mutated files into mutants/, so every other file of the package is listed in `also_copy` (a whole
directory where it holds no mutated file). Prints mutmut's counts (killed, survived, timeout, no tests) and the
score killed / (killed + survived + timeout). Slow: a mutant of a function that a test reaches through a trained
fixture re-trains it; measured, the first 126 mutants of calibration.py took 30 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = ["foodcls/inference/calibration.py", "foodcls/inference/predict.py", "foodcls/offdata/clean.py", "foodcls/offdata/rules.py",
           "foodcls/offdata/dedup.py", "foodcls/training/run.py", "foodcls/runs.py"]
TESTS = ["tests/test_references.py"]


def also_copy(root: Path, directory: Path, mutated: set[Path]) -> list[str]:
    """Everything under directory but the mutated files: whole directories where they hold none."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", default=MODULES)
    parser.add_argument("--tests", nargs="+", default=TESTS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/foodcls-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        print("mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 1
    work = args.workdir / "repo"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(REPO, work, symlinks=True, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", "site", "mutants"))
    mutated = {Path(m) for m in args.modules}
    config = ("\n[tool.mutmut]\n"
              f"source_paths = {sorted(map(str, mutated))!r}\n"
              'pytest_add_cli_args = ["-n", "0", "-p", "no:randomly"]\n'
              f"pytest_add_cli_args_test_selection = {list(args.tests)!r}\n"
              f"also_copy = {also_copy(work, work / 'foodcls', mutated) + ['data/', 'configs', 'tests/']!r}\n").replace("'", '"')
    with open(work / "pyproject.toml", "a", encoding="utf-8") as handle:
        handle.write(config)
    subprocess.run(["mutmut", "run", "--max-children", str(args.max_children)], cwd=work)
    results = subprocess.run(["mutmut", "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    counts = Counter(line.rsplit(": ", 1)[-1].strip() for line in results.splitlines() if ": " in line)
    print(dict(counts))
    scored = counts["killed"] + counts["survived"] + counts["timeout"]
    if scored:
        print(f"score: {counts['killed'] / scored:.1%} of {scored} mutants that a test reaches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
