"""Builds plain ONNX graphs (opset 17, no ai.onnx.ml ops) from trained weights, so tract can run them.

Graph: features [batch, F] float32 -> Sub(mean) -> Mul(1/scale) -> (Gemm -> Relu)* -> Gemm -> Sigmoid ->
probability [batch, 1] float32.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def build(mean: np.ndarray, scale: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], name: str,
          doc: str) -> onnx.ModelProto:
    """layers: [(W [in, out], b [out])]; ReLU between layers, sigmoid after the last (which has out = 1)."""
    n_features = mean.shape[0]
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "feature_mean"),
        numpy_helper.from_array((1.0 / scale).astype(np.float32), "feature_inv_scale"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "feature_mean"], ["centred"], name="centre"),
        helper.make_node("Mul", ["centred", "feature_inv_scale"], ["h0"], name="standardise"),
    ]
    cur = "h0"
    for i, (w, b) in enumerate(layers):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(b.astype(np.float32).reshape(-1), f"b{i}"))
        out = f"z{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], name=f"dense{i}"))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"], name=f"relu{i}"))
            cur = f"h{i + 1}"
        else:
            nodes.append(helper.make_node("Sigmoid", [out], ["probability"], name="sigmoid"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wardwatch-models")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: str) -> str:
    data = model.SerializeToString(deterministic=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def used_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({n.op_type for n in model.graph.node})
