#!/usr/bin/env python3
"""Folds the input standardisation of committed, unfolded models into their first layer, without retraining.

The maths is exact: ((x - m) * s) @ W + b == x @ (s[:, None] * W) + (b - (m * s) @ W). It is computed in float64
from the float32 parameters the unfolded graph stored, by the same function the exporter uses
(`onnx_export.build_folded`), so the result is byte-for-byte what `python models/train.py` now exports for the same
training run. Only float32 rounding differs from the unfolded graph; this script refuses to write anything if
onnxruntime's outputs of the two graphs differ by more than 1e-5 (the parity tolerance of issue 5) on the golden inputs and on random rows.

For each model directory (default: models/deterioration and models/artifact) it rewrites model.onnx, the sha256 and
onnx_ops in manifest.json, the sha256/ops sentence in MODEL_CARD.md, and in models/golden/<kind>.json the
model_sha256 and every vector's probability (recomputed with onnxruntime on the folded model; the features do not
change). A model that is already folded is left alone.

    python models/fold_committed.py
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import onnx_export  # noqa: E402

TOLERANCE = 1e-5


def unfolded_parameters(model: onnx.ModelProto):
    """(mean32, inv_scale32, [(W32, b32)]) of a graph Sub -> Mul -> (Gemm -> Relu)* -> Gemm -> Sigmoid, or None."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = list(g.node)
    if len(nodes) < 4 or nodes[0].op_type != "Sub" or nodes[1].op_type != "Mul":
        return None
    ops = [n.op_type for n in nodes[2:]]
    expect = []
    n_dense = sum(1 for o in ops if o == "Gemm")
    for i in range(n_dense):
        expect.append("Gemm")
        expect.append("Relu" if i < n_dense - 1 else "Sigmoid")
    if ops != expect:
        raise SystemExit(f"unexpected graph {[n.op_type for n in nodes]}")
    for n in nodes[2:]:
        if n.op_type == "Gemm" and any(a.name in ("transA", "transB", "alpha", "beta") for a in n.attribute):
            raise SystemExit("a Gemm with attributes: not the exporter's graph")
    mean = inits[nodes[0].input[1]]
    inv = inits[nodes[1].input[1]]
    layers = [(inits[n.input[1]], inits[n.input[2]]) for n in nodes[2:] if n.op_type == "Gemm"]
    return mean, inv, layers


def probabilities(data: bytes, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return s.run(["probability"], {"features": x.astype(np.float32)})[0][:, 0].astype(np.float64)


def write_golden(path: str, doc: dict) -> None:
    # The same layout as report._write_golden_file: one vector per line.
    with open(path, "w") as fh:
        head = {k: v for k, v in doc.items() if k != "vectors"}
        fh.write(json.dumps(head)[:-1] + ', "vectors": [\n')
        fh.write(",\n".join(json.dumps(v, separators=(",", ":")) for v in doc["vectors"]))
        fh.write("\n]}\n")


def fold_one(kind: str) -> int:
    d = os.path.join(HERE, kind)
    path = os.path.join(d, "model.onnx")
    with open(path, "rb") as fh:
        old_bytes = fh.read()
    old = onnx.load_from_string(old_bytes)
    params = unfolded_parameters(old)
    if params is None:
        print(f"{kind}: already folded, nothing to do")
        return 0
    mean, inv, layers = params
    new = onnx_export.build_folded(mean, inv, layers, old.graph.name, old.doc_string)
    new_bytes = new.SerializeToString(deterministic=True)
    sha = hashlib.sha256(new_bytes).hexdigest()

    gpath = os.path.join(HERE, "golden", f"{kind}.json")
    with open(gpath) as fh:
        golden = json.load(fh)
    if golden["model_sha256"] != hashlib.sha256(old_bytes).hexdigest():
        raise SystemExit(f"{kind}: golden file names another model than {path}")
    x_golden = np.array([v["features"] for v in golden["vectors"]], dtype=np.float64)
    x_random = np.random.default_rng(5).standard_normal((4096, mean.shape[0])) * 3 + mean.astype(np.float64)
    worst = 0.0
    for x in (x_golden, x_random):
        worst = max(worst, float(np.max(np.abs(probabilities(old_bytes, x) - probabilities(new_bytes, x)))))
    if worst > TOLERANCE:
        raise SystemExit(f"{kind}: folded graph differs from the original by {worst:.2e} > {TOLERANCE}")
    p_new = probabilities(new_bytes, x_golden)

    with open(path, "wb") as fh:
        fh.write(new_bytes)
    mpath = os.path.join(d, "manifest.json")
    with open(mpath) as fh:
        manifest = json.load(fh)
    old_sha = manifest["sha256"]
    manifest["sha256"] = sha
    manifest["onnx_ops"] = onnx_export.used_ops(new)
    with open(mpath, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    cpath = os.path.join(d, "MODEL_CARD.md")
    with open(cpath) as fh:
        card = fh.read()
    pattern = re.compile(
        r"on standardised features \(the standardisation is inside the ONNX graph\), opset 17, ops [A-Za-z, ]+; "
        r"sha256 `" + old_sha + "`")
    if not pattern.search(card):
        raise SystemExit(f"{cpath}: no sha256/ops sentence to update")
    card = pattern.sub(
        "on standardised features (the standardisation is folded into the first layer's weights, so the ONNX graph "
        f"takes raw features), opset 17, ops {', '.join(manifest['onnx_ops'])}; sha256 `{sha}`", card)
    with open(cpath, "w") as fh:
        fh.write(card)
    golden["model_sha256"] = sha
    for v, p in zip(golden["vectors"], p_new):
        v["probability"] = float(p)
    write_golden(gpath, golden)
    print(f"{kind}: folded; sha256 {old_sha[:12]}… -> {sha[:12]}…; ops {manifest['onnx_ops']}; "
          f"max |unfolded - folded| (onnxruntime) {worst:.2e} on {len(x_golden)} golden and 4096 random rows")
    return 0


def main() -> int:
    kinds = sys.argv[1:] or ["deterioration", "artifact"]
    return max(fold_one(k) for k in kinds)


if __name__ == "__main__":
    sys.exit(main())
