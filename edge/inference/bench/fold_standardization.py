#!/usr/bin/env python3
"""Fold a leading standardisation (Sub mean, Mul 1/scale) into the first Gemm of a model bundle.

Why: tract 0.23 runs a broadcast Sub or Mul by a per-feature constant ([batch, F] op [F]) through its fast SIMD
path only when F is a multiple of the SIMD width; for F = 52 or 49 it falls back to a generic broadcasting loop that
costs 50-100 µs at batch 256, several times the whole rest of the model (see docs/benchmarks.md, "Model inference").
Folding the two ops into the first layer's weights gives the same function without them:

    ((x - m) * s) @ W + b  ==  x @ (s[:, None] * W) + (b - (m * s) @ W)

Usage (benchmark only; the folded bundle is unsigned and bench_inference re-signs it in memory):

    python3 edge/inference/bench/fold_standardization.py models/deterioration /tmp/deterioration-folded

Writes OUT/model.onnx and OUT/manifest.json (sha256 updated, name suffixed "-folded"), and checks with onnxruntime
that the folded model matches the original within 1e-5 on random inputs.
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = sys.argv[1], sys.argv[2]
    model = onnx.load(os.path.join(src, "model.onnx"))
    with open(os.path.join(src, "manifest.json")) as f:
        manifest = json.load(f)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    sub, mul, gemm = nodes[0], nodes[1], nodes[2]
    if (
        sub.op_type != "Sub"
        or mul.op_type != "Mul"
        or gemm.op_type != "Gemm"
        or mul.input[0] != sub.output[0]
        or gemm.input[0] != mul.output[0]
        or attr(gemm, "transA", 0) != 0
        or attr(gemm, "transB", 0) != 0
        or attr(gemm, "alpha", 1.0) != 1.0
        or attr(gemm, "beta", 1.0) != 1.0
    ):
        print("the graph does not start with Sub -> Mul -> Gemm (plain): nothing to fold", file=sys.stderr)
        return 1
    mean = numpy_helper.to_array(inits[sub.input[1]]).astype(np.float64).reshape(-1)
    inv = numpy_helper.to_array(inits[mul.input[1]]).astype(np.float64).reshape(-1)
    w = numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float64)
    b = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float64)
    w2 = (inv[:, None] * w).astype(np.float32)
    b2 = (b - (mean * inv) @ w).astype(np.float32)

    keep = [t for t in g.initializer if t.name not in {sub.input[1], mul.input[1], gemm.input[1], gemm.input[2]}]
    del g.initializer[:]
    g.initializer.extend(keep + [numpy_helper.from_array(w2, "W_folded"), numpy_helper.from_array(b2, "b_folded")])
    folded = onnx.helper.make_node(
        "Gemm", [sub.input[0], "W_folded", "b_folded"], list(gemm.output), name=gemm.name or "dense0"
    )
    del g.node[:]
    g.node.extend([folded] + nodes[3:])
    onnx.checker.check_model(model)

    data = model.SerializeToString()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(data)
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["name"] = manifest["name"] + "-folded"
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")

    n_features = w.shape[0]
    x = np.random.default_rng(1).standard_normal((512, n_features)).astype(np.float32) * 3
    a = ort.InferenceSession(os.path.join(src, "model.onnx"), providers=["CPUExecutionProvider"])
    c = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name_in = g.input[0].name
    diff = float(np.abs(a.run(None, {name_in: x})[0] - c.run(None, {name_in: x})[0]).max())
    print(f"{out}: folded; max |original - folded| on 512 random rows: {diff:.2e}")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
