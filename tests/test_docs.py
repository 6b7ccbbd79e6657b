"""The documentation stays true: the generated reference is fresh, the README short, its links and the pages'
resolve, and every command of the README and the docs' shell blocks runs as written (epochs shrunk), so a stale
sentence fails CI rather than a newcomer."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES

DOCS = REPO / "docs"
# A shell block preceded by this comment is not run, and says why (it needs what a test here cannot have).
NOT_RUN = re.compile(r"<!-- not run by the tests: (?P<why>[^>]+) -->\s*$")
PAGES_WITH_COMMANDS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in DOCS.rglob("*.md")
                                            if "```bash" in p.read_text(encoding="utf-8"))]

# The shell the blocks run in: `foodcls` is the installed command, with training shrunk to two epochs and
# `serve` started, asked for /health and stopped (a page's commands must run in a test's time).
PRELUDE = r"""set -euo pipefail
foodcls() {
    case "$1" in
        train|cv|sweep|tune)
            if [[ " $* " == *" --show "* ]]; then command foodcls "$@"; else command foodcls "$@" --set train.epochs=2; fi ;;
        serve)
            command foodcls "$@" --port "$FOODCLS_DOC_PORT" & local pid=$!
            python - <<'EOF'
import os, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{os.environ['FOODCLS_DOC_PORT']}/health", timeout=1)
        break
    except OSError:
        time.sleep(0.25)
else:
    raise SystemExit("serve did not answer /health")
EOF
            kill "$pid"; wait "$pid" || true ;;
        *) command foodcls "$@" ;;
    esac
}
"""


def shell_blocks(page: Path) -> list[tuple[str, str | None]]:
    """Each ```bash block of a page: its text, and why it is not run (None: it is run)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            why = NOT_RUN.search(lines[i - 1]) if i else None
            end = lines.index("```", i + 1)
            blocks.append(("\n".join(lines[i + 1:end]), why["why"] if why else None))
            i = end
        i += 1
    return blocks


def runnable(block: str) -> str:
    """The block without the set-up lines (a venv and pip installs: .ci/run and test_wheel.py do those) and
    the test command (this is it)."""
    kept = [line for line in block.splitlines() if not re.match(r"\s*(python3? -m venv|pip install|\. \.venv|python -m pytest)", line)]
    return "\n".join(kept)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_generated_reference_is_fresh():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_reference.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_is_short_and_every_link_resolves():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in [REPO / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: link to {target} goes nowhere"


def test_every_page_with_commands_is_listed_in_the_site():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS)
def test_the_commands_of_a_page_run_as_written(page, tmp_path):
    """A page's shell blocks, in order, in one shell: from a directory with the repository's configs and demo
    sets, and ../shared beside it as in a checkout."""
    blocks = shell_blocks(REPO / page)
    script = "\n".join(runnable(text) for text, why in blocks if why is None)
    if "../shared" in script and not SAMPLES.is_dir():
        if os.environ.get("FOODCLS_REQUIRE_SAMPLES") == "1":
            pytest.fail(f"{page} needs the real samples at {SAMPLES}")
        pytest.skip(f"{page} needs the real samples at {SAMPLES}")
    if not script.strip():
        reasons = "; ".join(why for _, why in blocks if why) or "its blocks only set up and test (a venv, pip, pytest: .ci/run runs those)"
        pytest.skip(f"{page}: no command to run here ({reasons})")
    work = tmp_path / "checkout"
    (work / "data").mkdir(parents=True)
    (work / "configs").symlink_to(REPO / "configs")
    for name in ("demo", "demo-rich", "synth-off"):
        (work / "data" / name).symlink_to(REPO / "data" / name)
    (tmp_path / "shared").symlink_to(SAMPLES.parent.parent)  # ../shared/data/off-exports from the checkout
    env = {**os.environ, "FOODCLS_DOC_PORT": str(free_port()), "COLUMNS": "120",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", PRELUDE + script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{page}: a command failed\n--- script\n{script}\n--- stderr\n{result.stderr[-4000:]}"
