#!/usr/bin/env python3
"""Generate the test models, their signed bundles and the golden outputs for wardwatch-inference.

The real deterioration and artifact models come from models/ (issue 5, item 1). These small models exist so that
the loader, the tamper tests, the parity test and the benchmark have something deterministic to run on without the
training pipeline. Everything written here is committed; the Rust tests never run Python.

    pip install onnx onnxruntime numpy cryptography
    python3 edge/inference/tests/data/make_test_models.py

Writes, next to this script:

- test-release.key / test-release.pub: the TEST release key (ed25519 seed / public key, hex). It is public, in the
  repository, and must never be trusted by a real edge.
- other-release.key / other-release.pub: a second key that the tests do NOT trust ("signed by an unknown key").
- mlp/: model.onnx (8 features -> 16 -> 1, sigmoid), manifest.json, model.onnx.sig signed by the test release key.
- narrow/: model.onnx taking 6 features, for the feature-count mismatch test (manifest and signature are made by
  the test itself, so that they are valid and only the shape is wrong).
- panics/: model.onnx, a valid-looking graph with a Slice of step 0 on which tract 0.23 panics (divide by zero)
  while compiling instead of returning an error: the loader must catch it and refuse the model.
- mlp-wide/: a signed 52-feature MLP (52 -> 64 -> 32 -> 1), the size of a realistic edge model, for the benchmark.
- golden.json: inputs and onnxruntime's outputs for mlp/model.onnx.

Signature format (see src/signature.rs): model.onnx.sig is JSON {"algorithm": "ed25519", "public_key": hex,
"signature": hex}; the signed message is b"wardwatch-model-manifest-v1\n" followed by the exact bytes of
manifest.json, and manifest.json names the sha256 of model.onnx, so the signature covers the model too.
"""

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 14
# onnxruntime and tract both read IR version 8 (ONNX 1.13); newer onnx packages default to a newer IR.
IR_VERSION = 8
SIGNATURE_CONTEXT = b"wardwatch-model-manifest-v1\n"

FEATURE_NAMES = [
    "heart_rate",
    "respiratory_rate",
    "spo2",
    "temperature",
    "systolic_bp",
    "news2_total",
    "heart_rate_slope_1h",
    "respiratory_rate_missing",
]

# Fixed seeds: the bundle is byte-for-byte reproducible (the keys too; they are test keys, not secrets).
TEST_RELEASE_SEED = bytes(range(1, 33))
OTHER_RELEASE_SEED = bytes(range(101, 133))


def mlp(n_features: int, hidden, seed: int) -> onnx.ModelProto:
    """Gemm+Relu layers of the given widths, then Gemm to one logit and Sigmoid."""
    rng = np.random.default_rng(seed)
    widths = [n_features] + (list(hidden) if isinstance(hidden, (list, tuple)) else [hidden])
    nodes, initializers, x = [], [], "features"
    for i, (w_in, w_out) in enumerate(zip(widths, widths[1:])):
        w = (rng.standard_normal((w_in, w_out)) * (1.0 / np.sqrt(w_in))).astype(np.float32)
        b = (rng.standard_normal(w_out) * 0.1).astype(np.float32)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"a{i}"])]
        x = f"a{i}"
    w = (rng.standard_normal((widths[-1], 1)) * 0.5).astype(np.float32)
    initializers += [numpy_helper.from_array(w, "w_out"), numpy_helper.from_array(np.array([-0.2], np.float32), "b_out")]
    nodes += [helper.make_node("Gemm", [x, "w_out", "b_out"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["probability"])]
    graph = helper.make_graph(
        nodes,
        "wardwatch_test_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wardwatch-test"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_key(name: str, seed: bytes) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    with open(os.path.join(HERE, f"{name}.key"), "w") as f:
        f.write(seed.hex() + "\n")
    with open(os.path.join(HERE, f"{name}.pub"), "w") as f:
        f.write(public.hex() + "\n")
    return key


def write_bundle(
    directory: str, model: onnx.ModelProto, name: str, version: str, key: Ed25519PrivateKey, features=None
) -> None:
    os.makedirs(directory, exist_ok=True)
    model_bytes = model.SerializeToString()
    with open(os.path.join(directory, "model.onnx"), "wb") as f:
        f.write(model_bytes)
    n_features = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    manifest = {
        "name": name,
        "version": version,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "opset": OPSET,
        "input": {"name": "features", "shape": [None, n_features], "dtype": "float32"},
        "output": {"name": "probability", "shape": ["batch", 1]},
        "feature_names": features or FEATURE_NAMES[:n_features],
        "description": "Test model for wardwatch-inference; random weights, predicts nothing.",
    }
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    with open(os.path.join(directory, "manifest.json"), "wb") as f:
        f.write(manifest_bytes)
    signature = key.sign(SIGNATURE_CONTEXT + manifest_bytes)
    envelope = {
        "algorithm": "ed25519",
        "public_key": key.public_key().public_bytes_raw().hex(),
        "signature": signature.hex(),
    }
    with open(os.path.join(directory, "model.onnx.sig"), "w") as f:
        f.write(json.dumps(envelope, indent=2) + "\n")


def slice_step_zero() -> onnx.ModelProto:
    def ints(name, values):
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    graph = helper.make_graph(
        [helper.make_node("Slice", ["features", "starts", "ends", "axes", "steps"], ["probability"])],
        "wardwatch_test_panics",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(FEATURE_NAMES)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[ints("starts", [0]), ints("ends", [1]), ints("axes", [1]), ints("steps", [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wardwatch-test")
    model.ir_version = IR_VERSION
    return model


def golden(model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(20261123)
    n_features = len(FEATURE_NAMES)
    # Realistic-ish magnitudes, standardised-looking values, and a few extremes that saturate the sigmoid.
    x = rng.standard_normal((300, n_features)).astype(np.float32)
    x[0, :] = 0.0
    x[1, :] = 40.0
    x[2, :] = -40.0
    x[3, :] = 1e-7
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(["probability"], {"features": x})[0]
    out = {
        "model": "mlp/model.onnx",
        "producer": f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}",
        "feature_names": FEATURE_NAMES,
        # float32 values printed as the exact decimal of their double widening: parse as f64, cast to f32.
        "inputs": [[float(v) for v in row] for row in x],
        "outputs": [float(v) for v in y[:, 0]],
    }
    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump(out, f)
        f.write("\n")


def main() -> None:
    release = write_key("test-release", TEST_RELEASE_SEED)
    write_key("other-release", OTHER_RELEASE_SEED)
    model = mlp(len(FEATURE_NAMES), 16, seed=7)
    write_bundle(os.path.join(HERE, "mlp"), model, "wardwatch-test-mlp", "1.0.0", release)
    # A second, different but valid version of the same model, for hot-swap tests.
    write_bundle(os.path.join(HERE, "mlp-v2"), mlp(len(FEATURE_NAMES), 16, seed=8), "wardwatch-test-mlp", "2.0.0", release)
    # The size of a realistic edge model (52 features, as the deterioration features; two hidden layers), for the
    # benchmark when the trained models are not there.
    wide_features = [f"feature_{i:02}" for i in range(52)]
    write_bundle(
        os.path.join(HERE, "mlp-wide"), mlp(52, [64, 32], seed=10), "wardwatch-test-mlp-wide", "1.0.0", release, wide_features
    )
    narrow = mlp(6, 16, seed=9)
    os.makedirs(os.path.join(HERE, "narrow"), exist_ok=True)
    with open(os.path.join(HERE, "narrow", "model.onnx"), "wb") as f:
        f.write(narrow.SerializeToString())
    os.makedirs(os.path.join(HERE, "panics"), exist_ok=True)
    with open(os.path.join(HERE, "panics", "model.onnx"), "wb") as f:
        f.write(slice_step_zero().SerializeToString())
    golden(model)


if __name__ == "__main__":
    main()
