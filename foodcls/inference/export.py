"""`foodcls export --format onnx`: one ONNX graph with everything a checkpoint needs to predict — unknown
values filled with the training medians, the feature scaling, the network, the softmax — so any ONNX
runtime gives foodcls's probabilities for raw label values.

Input `features` float32 [N, features] in the checkpoint's feature order (NaN: unknown); outputs
`probabilities` float32 [N, classes] and `label` int64 [N]. Classes and features are in metadata_props.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foodcls.errors import ConfigError
from foodcls.fileio import atomic_write
from foodcls.inference.network import ACTIVATIONS
from foodcls.inference.predict import load_predictor

FORMATS = ("onnx",)
OPSET = 17


def onnx_model(checkpoint_path: str | Path):
    """The checkpoint as an onnx.ModelProto (checked by onnx.checker)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    predictor = load_predictor(checkpoint_path)
    n_features, n_classes = len(predictor.features), len(predictor.classes)
    prep = predictor.prep
    constants = [
        numpy_helper.from_array(prep.fill.astype(np.float32), "fill"),
        numpy_helper.from_array(prep.shift.astype(np.float32), "shift"),
        numpy_helper.from_array(prep.scale.astype(np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("IsNaN", ["features"], ["unknown"]),
        helper.make_node("Where", ["unknown", "fill", "features"], ["filled"]),
        helper.make_node("Sub", ["filled", "shift"], ["shifted"]),
        helper.make_node("Div", ["shifted", "scale"], ["h0"]),
    ]
    current = "h0"
    for i, (weight, bias) in enumerate(predictor.layers):
        constants += [numpy_helper.from_array(weight.astype(np.float32), f"W{i}"), numpy_helper.from_array(bias.astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"z{i}"], transB=1))
        current = f"z{i}"
        if i < len(predictor.layers) - 1:
            nodes.append(helper.make_node(ACTIVATIONS[predictor.activation].onnx_op, [current], [f"h{i + 1}"]))
            current = f"h{i + 1}"
    # The calibration temperature is part of the graph: any runtime gives the calibrated probabilities.
    constants.append(numpy_helper.from_array(np.array([predictor.temperature], dtype=np.float32), "temperature"))
    nodes += [
        helper.make_node("Div", [current, "temperature"], ["calibrated"]),
        helper.make_node("Softmax", ["calibrated"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", [current], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "foodcls",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="foodcls")
    model.ir_version = 8  # readable by onnxruntime releases of the last years
    helper.set_model_props(model, {
        "classes": json.dumps(list(predictor.classes)),
        "features": json.dumps(list(predictor.features)),
        "activation": predictor.activation,
        "temperature": repr(predictor.temperature),
    })
    onnx.checker.check_model(model)
    return model


def export(checkpoint_path: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Write the checkpoint in `fmt` to `out` (atomically); returns the path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: unknown format; formats are {', '.join(FORMATS)}")
    model = onnx_model(checkpoint_path)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a directory, give a file name such as {out / 'model.onnx'}")
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(model.SerializeToString()))
    return out
