import os
import pickle

import numpy as np
import pytest
import torch

from foodcls.inference.checkpoint import load_checkpoint, save_checkpoint, weight_arrays
from foodcls.config import ModelConfig
from foodcls.errors import CheckpointError
from foodcls.training.model import build_model
from foodcls.inference.predict import load_predictor


def test_numpy_predict_matches_the_torch_model(trained_run, demo_dir):
    checkpoint = load_checkpoint(trained_run.best_checkpoint)
    model = build_model(ModelConfig(**checkpoint.meta["model"]), 4, 4)
    state = {k.removeprefix("net."): torch.from_numpy(v) for k, v in checkpoint.arrays.items() if k.startswith("net.")}
    model.load_state_dict(state)
    from foodcls.data import read_labelled_csv

    features = read_labelled_csv(demo_dir / "test.csv").features
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(features / checkpoint.arrays["scale"])), dim=1).numpy()
    actual = load_predictor(trained_run.best_checkpoint).probabilities(features)
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_checkpoint_carries_everything_needed_to_use_it(trained_run, demo_dir):
    checkpoint = load_checkpoint(trained_run.best_checkpoint)
    assert checkpoint.meta["classes"] == ["beverages", "meats", "snacks", "desserts"]
    assert checkpoint.meta["features"] == ["protein", "carbs", "fat", "additives"]
    assert checkpoint.meta["config"]["train"]["optimizer"] == "adam"
    assert "train_accuracy" in checkpoint.meta["metrics"]
    from foodcls.data import read_labelled_csv

    train_max = read_labelled_csv(demo_dir / "train.csv").features.max(axis=0)
    assert checkpoint.arrays["scale"].tolist() == train_max.tolist()
    assert [w.shape for w, _ in weight_arrays(checkpoint)] == [(32, 4), (32, 32), (4, 32)]


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = marker
    for name, write in (("pickle.safetensors", lambda p: p.write_bytes(pickle.dumps(payload))),
                        ("torch.pt", lambda p: torch.save({"x": payload}, p))):
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError, match="not a valid foodcls checkpoint"):
            load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_are_refused(trained_run, tmp_path):
    data = trained_run.best_checkpoint.read_bytes()
    for cut in (len(data) // 2, 20, 3):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="without foodcls metadata"):
        load_checkpoint(path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"scale": np.ones(4, dtype=np.float32)}, {"x": 1})
    save_checkpoint(path, {"scale": np.full(4, 2, dtype=np.float32)}, {"x": 2})
    assert os.listdir(tmp_path) == ["c.safetensors"]
