#!/usr/bin/env python3
"""Issue 5: does the training-to-held-out shift that costs the deterioration model its lead at NEWS2 >= 7's alert
rate show on cohorts that are not held out?

Validation cohorts: seeds 201-203, mix `validation` (tests/src/bin/export_cohort.rs: composed between the training
and the held-out mix), 40 beds x 48 h. They are for model development between held-out looks; no reported model
figure comes from them. The held-out cohorts (9001+) are never loaded here.

Scored with the pipeline's own evaluation (report.evaluate_deterioration: per-time-point and alert-onset
comparisons with patient-level bootstrap intervals):
- the committed model (models/deterioration/model.onnx), and
- candidates refitted on the three training cohorts (101-103) with train.fit_final, as the pipeline fits them.

    python models/experiments/validation_shift.py     # Markdown on stdout; target/models-experiments/validation_shift.json
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
from _pipeline import MODELS, REPO  # noqa: E402  (threads, import path: before numpy and the pipeline)

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import cohort as C  # noqa: E402
import features as F  # noqa: E402
import report  # noqa: E402
import selection as S  # noqa: E402
import train as T  # noqa: E402

VALIDATION = [201, 202, 203]
CANDIDATES = [("logistic", "per-event+early"), ("logistic", "unweighted"), ("mlp", "per-event+early"),
              ("mlp", "unweighted")]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    work = os.path.join(REPO, "target", "models-work")
    jobs = [(os.path.join(work, f"train-{s}"), T.BEDS, T.HOURS, s, "train") for s, _ in T.TRAIN]
    jobs += [(os.path.join(work, f"validation-{s}"), T.BEDS, T.HOURS, s, "validation") for s in VALIDATION]
    C.export_all(REPO, os.path.join(REPO, "target", "bench"), jobs, log, reuse=True)
    names = [f"train-{s}" for s, _ in T.TRAIN] + [f"validation-{s}" for s in VALIDATION]
    det = {n: C.deterioration_dataset(C.load(n, os.path.join(work, n)), i, T.HORIZON_H, T.STEP_MIN)
           for i, n in enumerate(names)}
    train = [det[n] for n in names[:3]]
    val = [det[n] for n in names[3:]]
    news_idx = [n for n, _ in F.DETERIORATION_FEATURES].index("news2_total")
    with open(os.path.join(MODELS, "deterioration", "manifest.json")) as fh:
        manifest = json.load(fh)
    path = os.path.join(MODELS, "deterioration", "model.onnx")

    scorers = {f"committed {manifest['version']}": lambda X: T.onnx_probabilities(path, X)}
    for arch, scheme in CANDIDATES:
        X = np.concatenate([d.X[d.in_main] for d in train])
        y = np.concatenate([d.y[d.in_main] for d in train])
        w = np.concatenate([S.sample_weights(d, scheme, T.HORIZON_H)[d.in_main] for d in train])
        m, mean, scale, _ = T.fit_final(arch, X, y, "deterioration", w)
        scorers[f"{arch}, {scheme}"] = (lambda m, mean, scale: lambda X: m.predict_proba((X - mean) / scale)[:, 1])(
            m, mean, scale)
        log(f"fitted {arch}, {scheme}")

    # Averages of a logistic and an MLP candidate's probabilities (same training weights).
    for scheme in ("per-event+early", "unweighted"):
        a, b = scorers[f"logistic, {scheme}"], scorers[f"mlp, {scheme}"]
        scorers[f"mean of logistic and mlp, {scheme}"] = (lambda a, b: lambda X: (a(X) + b(X)) / 2)(a, b)

    out = {}
    print(f"# Validation cohorts {VALIDATION} (mix validation): the training-to-held-out shift without held-out data\n")
    print("| scorer | AUROC vs NEWS2 (difference, 95 % CI) | lead at NEWS2 ≥ 5's rate per point | at NEWS2 ≥ 7's "
          "| lead at NEWS2 ≥ 7's onset count (time in alert) | ≥ 7 per point by kind (model vs NEWS2, h) |")
    print("|---|---|---|---|---|---|")
    for name, f in scorers.items():
        e = report.evaluate_deterioration(val, f, news_idx, manifest["decision_threshold"], T.HORIZON_H, T.RNG_SEED)
        out[name] = {k: v for k, v in e.items() if k != "operating_points"}
        d = e["auroc_model"] - e["auroc_news2"]
        lo, hi = e["auroc_delta_ci"]
        c5, c7 = e["lead_compare"]
        o7 = e["onset_compare"][1]
        kinds = "; ".join(f"{k[:4]} {x:.2f}/{y:.2f}" for k, (_, x, y) in c7["by_kind"].items())
        print(f"| {name} | {e['auroc_model']:.3f} vs {e['auroc_news2']:.3f} ({d:+.3f} [{lo:.3f}, {hi:.3f}]) | "
              f"{c5['model_median_h']:.2f} vs {c5['news2_median_h']:.2f} h ({c5['delta_h']:+.2f} "
              f"[{c5['delta_ci'][0]:+.2f}, {c5['delta_ci'][1]:+.2f}]) | {c7['model_median_h']:.2f} vs "
              f"{c7['news2_median_h']:.2f} h ({c7['delta_h']:+.2f} [{c7['delta_ci'][0]:+.2f}, "
              f"{c7['delta_ci'][1]:+.2f}]; earlier/same/later {c7['earlier']}/{c7['same']}/{c7['later']}) | "
              f"{o7['delta_h']:+.2f} h ({o7['in_alert_model']:.1%} vs {o7['in_alert_news2']:.1%}) | {kinds} |")
    e0 = out[next(iter(out))]
    print(f"\n{e0['patients']} patients, {e0['events']} deteriorations {e0['event_kinds']}.")
    os.makedirs(os.path.join(REPO, "target", "models-experiments"), exist_ok=True)
    with open(os.path.join(REPO, "target", "models-experiments", "validation_shift.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
