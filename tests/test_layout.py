"""The architecture as checks: import-linter's layer contracts, one activation table, modules that stay small."""

import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from foodcls.config import ModelConfig
from foodcls.inference.network import ACTIVATIONS

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts, over the foodcls package found under package_parent."""
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(package_parent), "HOME": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=package_parent,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("inference/network.py", "import torch", "Inference and serve never import torch"),
    ("data.py", "from foodcls.inference import predict", "Core imports nothing above it"),
    ("experiments/executors.py", "from foodcls.training import fit", "The executors are an interface"),
    ("inference/explain.py", "from foodcls.inference import predict", "No import circles"),
])
def test_an_import_that_breaks_a_contract_fails_the_check(tmp_path, module, line, contract):
    shutil.copytree(REPO / "foodcls", tmp_path / "foodcls", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "foodcls" / module
    target.write_text(target.read_text() + f"\n{line}  # broken on purpose\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


def test_every_path_uses_one_activation_table_whose_keys_are_the_configs_choices():
    from foodcls.training.backprop import TORCH_ACTIVATIONS

    allowed = set(typing.get_args(ModelConfig.model_fields["activation"].annotation))
    assert set(ACTIVATIONS) == allowed == set(TORCH_ACTIVATIONS)


def test_no_module_is_over_400_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "foodcls").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}
