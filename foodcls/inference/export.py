"""`foodcls export --format onnx`: one ONNX graph with everything a checkpoint needs to predict — unknown
values filled with the training medians, the feature scaling, the network, the softmax — so any ONNX
runtime gives foodcls's probabilities for raw label values.

Input `features` float32 [N, features] in the checkpoint's feature order (NaN: unknown) and, for a model that
reads the product's name, `name_ids` int64 [N, max_ngrams]: the name's hashed n-grams as foodcls.text.ngram_ids
computes them (hashing is done outside the graph; its parameters are in metadata_props["name"]); outputs
`probabilities` float32 [N, classes] and `label` int64 [N]. Classes and features are in metadata_props. An
ensemble's members run side by side in the graph (batched MatMul) and their probabilities are averaged in it.
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
    members = predictor.members
    name = predictor.name
    for i, (weight, bias) in enumerate(predictor.layers):
        if i == 0 and name is not None:
            # The first layer reads the nutrients and the name's vector: W [nutrients | name] split in two products.
            nodes += _name_vector(name, members, constants, helper, numpy_helper)
            transposed = weight.transpose(0, 2, 1).astype(np.float32)  # (K, in, out)
            parts = {"W0n": transposed[:, :n_features], "W0v": transposed[:, n_features:], "b0": bias[:, None, :].astype(np.float32)}
            if members == 1:  # one network: 2-D products, as its other layers' Gemm
                parts = {key: value[0] if key != "b0" else value[0, 0] for key, value in parts.items()}
            constants += [numpy_helper.from_array(np.ascontiguousarray(value), key) for key, value in parts.items()]
            nodes += [helper.make_node("MatMul", ["h0", "W0n"], ["m0n"]), helper.make_node("MatMul", ["name_vector", "W0v"], ["m0v"]),
                      helper.make_node("Add", ["m0n", "m0v"], ["m0"]), helper.make_node("Add", ["m0", "b0"], ["z0"])]
        elif members == 1:
            constants += [numpy_helper.from_array(weight[0].astype(np.float32), f"W{i}"),
                          numpy_helper.from_array(bias[0].astype(np.float32), f"b{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"z{i}"], transB=1))
        else:
            # An ensemble: every member at once, (N, in) or (K, N, in) × (K, in, out) → (K, N, out).
            constants += [numpy_helper.from_array(weight.transpose(0, 2, 1).astype(np.float32), f"W{i}"),
                          numpy_helper.from_array(bias[:, None, :].astype(np.float32), f"b{i}")]
            nodes += [helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"])]
        current = f"z{i}"
        if i < len(predictor.layers) - 1:
            nodes.append(helper.make_node(ACTIVATIONS[predictor.activation].onnx_op, [current], [f"h{i + 1}"]))
            current = f"h{i + 1}"
    # The calibration temperature is part of the graph: any runtime gives the calibrated probabilities.
    constants.append(numpy_helper.from_array(np.array([predictor.temperature], dtype=np.float32), "temperature"))
    nodes.append(helper.make_node("Div", [current, "temperature"], ["calibrated"]))
    if members == 1:
        nodes += [helper.make_node("Softmax", ["calibrated"], ["probabilities"], axis=1),
                  helper.make_node("ArgMax", [current], ["label"], axis=1, keepdims=0)]
    else:  # the members' probabilities averaged, inside the graph
        nodes += [helper.make_node("Softmax", ["calibrated"], ["member_probabilities"], axis=2),
                  helper.make_node("ReduceMean", ["member_probabilities"], ["probabilities"], axes=[0], keepdims=0),  # opset 17: axes an attribute
                  helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])]
    if name is not None:
        inputs.append(helper.make_tensor_value_info("name_ids", TensorProto.INT64, ["N", name.hashing.max_ngrams]))
    graph = helper.make_graph(
        nodes, "foodcls",
        inputs,
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
        "members": str(predictor.members),
        **({"name": json.dumps(name.hashing.to_json())} if name is not None else {}),
    })
    onnx.checker.check_model(model)
    return model


def _name_vector(name, members: int, constants: list, helper, numpy_helper) -> list:
    """Nodes that make `name_vector`, (N, dim) or (K, N, dim): the mean of each name's bucket vectors, from
    `name_ids` (N, max_ngrams) int64, padded with the id `buckets` (whose row is zeros). The ids are what
    foodcls.text.ngram_ids computes (the n-grams are hashed outside the graph)."""
    pad = name.hashing.pad
    tables = np.concatenate([name.tables, np.zeros((members, 1, name.hashing.dim), np.float32)], axis=1)
    constants += [numpy_helper.from_array(tables[0] if members == 1 else tables, "name_tables"),
                  numpy_helper.from_array(np.array(pad, dtype=np.int64), "name_pad"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), "slot_axis"),
                  numpy_helper.from_array(np.array([1 if members == 1 else 2], dtype=np.int64), "gathered_slot_axis"),
                  numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")]
    return [
        helper.make_node("Gather", ["name_tables", "name_ids"], ["gathered"], axis=0 if members == 1 else 1),
        helper.make_node("ReduceSum", ["gathered", "gathered_slot_axis"], ["vector_sum"], keepdims=0),
        helper.make_node("Equal", ["name_ids", "name_pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["is_real"]),
        helper.make_node("Cast", ["is_real"], ["real"], to=1),
        helper.make_node("ReduceSum", ["real", "slot_axis"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["divisor"]),
        helper.make_node("Div", ["vector_sum", "divisor"], ["name_vector"]),
    ]


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
