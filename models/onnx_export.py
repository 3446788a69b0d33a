"""Builds plain ONNX graphs (opset 17, no ai.onnx.ml ops) from trained weights, so tract can run them.

Graph: features [batch, F] float32 -> (Gemm -> Relu)* -> Gemm -> Sigmoid -> probability [batch, 1] float32. The
models are trained on standardised features; the standardisation ((x - mean) / scale) is folded into the first
Gemm's weights (see `fold`), so the graph takes raw features.
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
    """layers: [(W [in, out], b [out])]; ReLU between layers, sigmoid after the last (which has out = 1).

    The standardisation (x - mean) / scale is folded into the first layer (see `build_folded`)."""
    return build_folded(mean.astype(np.float32), (1.0 / scale).astype(np.float32),
                        [(w.astype(np.float32), b.astype(np.float32).reshape(-1)) for w, b in layers], name, doc)


def fold(mean32: np.ndarray, inv_scale32: np.ndarray, w32: np.ndarray, b32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Folds a leading standardisation into a dense layer, exactly in float64 from the float32 parameters:

        ((x - m) * s) @ W + b  ==  x @ (s[:, None] * W) + (b - (m * s) @ W)

    Why: tract 0.23 runs a broadcast Sub or Mul by a per-feature constant ([batch, F] op [F]) through a generic,
    unvectorised loop when F is not a multiple of its SIMD width (F = 52, 49); at batch 256 those two ops took
    about 90 % of the model's time (docs/benchmarks.md, "Model inference"). Folded, the graph has no such op.
    The result differs from the unfolded graph only by float32 rounding (|difference| of the probability
    below 1e-6 on the golden inputs)."""
    m = mean32.astype(np.float64).reshape(-1)
    s = inv_scale32.astype(np.float64).reshape(-1)
    w = w32.astype(np.float64)
    b = b32.astype(np.float64).reshape(-1)
    return (s[:, None] * w).astype(np.float32), (b - (m * s) @ w).astype(np.float32)


def build_folded(mean32: np.ndarray, inv_scale32: np.ndarray, layers32: list[tuple[np.ndarray, np.ndarray]],
                 name: str, doc: str) -> onnx.ModelProto:
    """The graph from float32 parameters (what an unfolded export stored), with the standardisation folded into
    the first layer. `models/fold_committed.py` calls this with the parameters read back from an unfolded
    model, so folding a committed model and re-exporting it from training give the same bytes."""
    n_features = mean32.shape[0]
    w0, b0 = fold(mean32, inv_scale32, *layers32[0])
    layers = [(w0, b0)] + list(layers32[1:])
    inits = []
    nodes = []
    cur = "features"
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
