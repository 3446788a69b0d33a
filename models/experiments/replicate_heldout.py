#!/usr/bin/env python3
"""Issue 5: the committed models scored on held-out cohorts, without training or selecting anything.

Pre-registered in docs/models-experiments.md ("Pre-registered replication"): deterioration and artifact models as
committed in models/<kind>/model.onnx, their manifest thresholds, and the pipeline's own evaluation
(report.evaluate_deterioration / evaluate_artifact) on fresh held-out cohorts, mix `heldout`, 40 beds x 48 h:

    python models/experiments/replicate_heldout.py                 # seeds 9005-9008 (the replication)
    python models/experiments/replicate_heldout.py --seeds 9001 9002 9003 9004   # the pipeline's held-out set

Cohorts are exported by the pipeline's exporter (cohort.export_all) to target/models-work/heldout-<seed> (reused
when already there with the same parameters). Output: a Markdown report on stdout and
target/models-experiments/replicate-<seeds>.json.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
from _pipeline import MODELS, REPO  # noqa: E402  (threads, import path: before numpy and the pipeline)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import cohort as C  # noqa: E402
import features as F  # noqa: E402
import report  # noqa: E402
import train as T  # noqa: E402


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def committed(kind):
    d = os.path.join(MODELS, kind)
    with open(os.path.join(d, "manifest.json")) as fh:
        manifest = json.load(fh)
    path = os.path.join(d, manifest["file"])
    with open(path, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    if sha != manifest["sha256"]:
        raise SystemExit(f"{path}: sha256 {sha} is not the manifest's {manifest['sha256']}")
    return manifest, path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[9005, 9006, 9007, 9008])
    ap.add_argument("--work", default=os.path.join(REPO, "target", "models-work"))
    ap.add_argument("--target-dir", default=os.path.join(REPO, "target", "bench"))
    args = ap.parse_args()

    det_m, det_path = committed("deterioration")
    art_m, art_path = committed("artifact")
    jobs = [(os.path.join(args.work, f"heldout-{s}"), T.BEDS, T.HOURS, s, "heldout") for s in args.seeds]
    C.export_all(REPO, args.target_dir, jobs, log, reuse=True)
    cohorts = [C.load(f"heldout-{s}", j[0]) for s, j in zip(args.seeds, jobs)]
    log("features")
    det = [C.deterioration_dataset(c, i, T.HORIZON_H, T.STEP_MIN) for i, c in enumerate(cohorts)]
    art = [C.artifact_dataset(c, i, include_probes=False) for i, c in enumerate(cohorts)]
    news_idx = [n for n, _ in F.DETERIORATION_FEATURES].index("news2_total")
    log("evaluation")
    det_eval = report.evaluate_deterioration(
        det, lambda X: T.onnx_probabilities(det_path, X), news_idx, det_m["decision_threshold"], T.HORIZON_H,
        T.RNG_SEED, alarm_threshold=det_m.get("alarm_threshold"))
    art_eval = report.evaluate_artifact(list(zip(cohorts, art)), lambda X: T.onnx_probabilities(art_path, X),
                                        art_m["decision_threshold"])
    name = "-".join(str(s) for s in args.seeds)
    out_dir = os.path.join(REPO, "target", "models-experiments")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"replicate-{name}.json"), "w") as fh:
        json.dump({"seeds": args.seeds, "deterioration": {k: v for k, v in det_eval.items() if k != "operating_points"},
                   "artifact": art_eval, "models": {"deterioration": det_m["version"], "artifact": art_m["version"]}},
                  fh, indent=1, default=str)
    print(f"# Held-out seeds {', '.join(map(str, args.seeds))}: deterioration {det_m['version']}, artifact "
          f"{art_m['version']}\n")
    print(f"{det_eval['patients']} patients, {det_eval['events']} deteriorations {det_eval['event_kinds']}.\n")
    print(report.det_tables(det_eval))
    print("Targets:\n\n" + report._targets_det(det_eval))
    print(report._onset_det(det_eval))
    print(report.art_tables(art_eval))
    print("Targets:\n\n" + report._targets_art(art_eval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
