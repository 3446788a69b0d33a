#!/usr/bin/env python3
"""Checks that the committed golden vectors still match models/features.py and the committed ONNX models
(onnxruntime), without retraining: catches a Python feature change made without regenerating the golden files.
The Rust side is checked by edge/tests/ml_golden.rs.

    python models/check_golden.py        # exit 1 on any mismatch
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import features as F  # noqa: E402


def main() -> int:
    import onnxruntime as ort

    bad = 0
    for kind in ("deterioration", "artifact"):
        with open(os.path.join(HERE, "golden", f"{kind}.json")) as fh:
            doc = json.load(fh)
        sess = ort.InferenceSession(os.path.join(HERE, kind, "model.onnx"), providers=["CPUExecutionProvider"])
        for v in doc["vectors"]:
            if kind == "deterioration":
                f = F.deterioration_from_samples(v["samples"], v["now_unix_ms"], v["spo2_scale_2"])
            else:
                f = F.artifact_from_samples(v["samples"], v["now_unix_ms"], v["query"])
            want = np.array(v["features"], dtype=np.float64)
            if not np.all(np.abs(f - want) <= 1e-5 * np.maximum(1.0, np.abs(want))):
                print(f"{kind} {v['name']}: features differ from the golden file")
                bad += 1
            p = float(sess.run(["probability"], {"features": f[None, :].astype(np.float32)})[0][0, 0])
            if abs(p - v["probability"]) > 1e-5:
                print(f"{kind} {v['name']}: probability {p} vs golden {v['probability']}")
                bad += 1
        print(f"{kind}: {len(doc['vectors'])} golden vectors checked")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
