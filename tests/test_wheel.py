"""A user without the repository: the wheel, installed non-editable into a fresh venv with no extras,
runs `foodcls init` and the README's quick start, and says in one line which extra a command needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def run(*args, cwd=None, env=None, check=True, timeout=900):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the built wheel and its core dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp / "dist", REPO)
    wheel = next((tmp / "dist").glob("foodcls-*.whl"))
    run(sys.executable, "-m", "venv", tmp / "venv")
    pip = tmp / "venv" / "bin" / "pip"
    # The CPU build first, as .ci/run does: the core requirement alone would pull a CUDA build.
    torch_version = run(sys.executable, "-c", "import torch; print(torch.__version__.split('+')[0])").stdout.strip()
    run(pip, "install", "--quiet", f"torch=={torch_version}")
    run(pip, "install", "--quiet", wheel)
    return tmp / "venv" / "bin"


def test_the_wheel_without_extras_inits_trains_and_predicts_outside_the_repository(wheel_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{wheel_venv}{os.pathsep}{env.get('PATH', '')}"
    foodcls = wheel_venv / "foodcls"
    installed = run(wheel_venv / "python", "-c", "import foodcls, sys; print(foodcls.__file__)", cwd=tmp_path, env=env).stdout
    assert "site-packages" in installed and str(REPO) not in installed  # non-editable, not the checkout
    for module in ("fastapi", "onnx", "optuna", "sklearn", "matplotlib", "distributed"):
        assert run(wheel_venv / "python", "-c", f"import {module}", check=False, env=env).returncode != 0, f"{module} came without an extra"

    run(foodcls, "init", "demo", cwd=tmp_path, env=env)
    project = tmp_path / "demo"
    for name in ("demo", "demo-rich", "synth-off"):
        for split in ("train", "test"):
            assert (project / "data" / name / f"{split}.csv").read_bytes() == (REPO / "data" / name / f"{split}.csv").read_bytes()
    assert sorted(p.name for p in (project / "configs").iterdir()) == sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    trained = run(foodcls, "train", "--config", "configs/mlp.yaml", "--set", "train.epochs=5", "--json", cwd=project, env=env).stdout
    assert '"status": "finished"' in trained
    predicted = run(foodcls, "predict", "--protein", 20, "--carbs", 1, "--fat", 12, "--additives", 2, "--json", cwd=project, env=env)
    assert '"decision"' in predicted.stdout
    # The library from the wheel: a run directory loaded and scored in numpy, torch never imported.
    library = run(wheel_venv / "python", "-c", "import foodcls, sys, glob; m = foodcls.load(sorted(glob.glob('runs/mlp-*'))[-1]); "
                  "p = m.predict_proba({'protein': [20.0], 'carbs': [1.0], 'fat': [12.0], 'additives': [2]}); "
                  "assert 'torch' not in sys.modules; print(m.classes[int(p.argmax())], round(float(p.sum()), 6))",
                  cwd=project, env=env).stdout.split()
    assert library[0] in ("beverages", "meats", "snacks", "desserts") and library[1] == "1.0"

    for args, extra in ((["serve"], "serve"), (["export", "--format", "onnx", "--out", "m.onnx"], "onnx"),
                        (["tune", "--config", "configs/mlp.yaml", "--space", "configs/space.yaml"], "tune"),
                        (["eval", "--baselines"], "baselines"), (["plot", "runs"], "plots")):
        result = run(foodcls, *args, cwd=project, env=env, check=False)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert f"needs the '{extra}' extra: pip install 'foodcls[{extra}]'" in result.stderr
    assert not (project / "m.onnx").exists()
    again = run(foodcls, "init", "demo", cwd=tmp_path, env=env, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
