#!/usr/bin/env python3
"""onnxruntime side of the tract-vs-onnxruntime benchmark (issue 5).

Run by `bench_inference` (edge/inference/src/bin/bench_inference.rs) in the same run, on the same model file and
the same input rows, so both sides are measured on the same machine under the same load:

    python3 edge/inference/bench/ort_bench.py --model M.onnx --inputs rows.f32 --features F \
        --input-name features --output-name probability --batch 1 --batch 256 --outputs out.f32

- inputs: raw little-endian float32, row-major, `features` values per row;
- onnxruntime runs with one intra-op and one inter-op thread, sequential execution: tract runs on one thread, and
  the edge gives inference one thread;
- for each batch size: the rows are split into consecutive batches; after a warm-up, `rounds` timed rounds each
  run batches until `min_time` seconds have passed, giving microseconds per inference (one `session.run` call on
  one batch) for that round; the median and every round are printed (the caller alternates calls to this script
  with tract's rounds and compares the fastest rounds, which is what a shared, busy machine measures best);
- `overhead_us`: the same measurement on an Identity model of the same input shape: what the Python binding and
  session bookkeeping cost per call, which tract called from Rust does not pay;
- outputs: onnxruntime's probabilities for every row (batch 256 path), raw float32, for the parity check.

Prints one JSON object on stdout.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def identity_model(features: int, input_name: str) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["out"])],
        "identity",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", features])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model.SerializeToString()


def time_per_call(sess, input_name, output_name, chunks, rounds, min_time):
    for chunk in chunks[: max(10, len(chunks))]:
        sess.run([output_name], {input_name: chunk})
    per_call = []
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        while True:
            for chunk in chunks:
                sess.run([output_name], {input_name: chunk})
            calls += len(chunks)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        per_call.append(elapsed / calls * 1e6)
    return statistics.median(per_call), per_call


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--features", type=int, required=True)
    ap.add_argument("--input-name", default="features")
    ap.add_argument("--output-name", default="probability")
    ap.add_argument("--batch", type=int, action="append", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--outputs", help="write onnxruntime's outputs for all rows here (raw float32)")
    args = ap.parse_args()

    x = np.fromfile(args.inputs, dtype="<f4").reshape(-1, args.features)
    with open(args.model, "rb") as f:
        model_bytes = f.read()
    sess = session(model_bytes)
    ident = session(identity_model(args.features, args.input_name))

    result = {
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "python": sys.version.split()[0],
        "rows": int(x.shape[0]),
        "batches": {},
    }
    for batch in args.batch:
        n = (x.shape[0] // batch) * batch
        chunks = [np.ascontiguousarray(x[i : i + batch]) for i in range(0, n, batch)]
        median, rounds = time_per_call(sess, args.input_name, args.output_name, chunks, args.rounds, args.min_time)
        _, overhead = time_per_call(ident, args.input_name, "out", chunks, args.rounds, args.min_time / 2)
        result["batches"][str(batch)] = {
            "us_per_inference": median,
            "rounds_us": rounds,
            "overhead_us": statistics.median(overhead),
            "overhead_rounds_us": overhead,
        }

    if args.outputs:
        out = []
        for i in range(0, x.shape[0], 256):
            out.append(sess.run([args.output_name], {args.input_name: x[i : i + 256]})[0].reshape(-1))
        np.concatenate(out).astype("<f4").tofile(args.outputs)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
