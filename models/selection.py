"""Deterioration model candidates and their selection, without the held-out cohorts.

Every candidate is fitted on the training cohorts (mix `train`) and scored on the validation cohorts (mix
`validation`, composed between the training and the held-out mix; see tests/src/bin/export_cohort.rs). Until 1.3.0
candidates were scored by leave-one-cohort-out within the training mix, where the logistic models always led at
NEWS2 >= 7's rate and the validation mix showed they do not (docs/models-experiments.md); the change was
pre-registered there before any held-out cohort saw its result. The held-out cohorts are never seen here. The rule
that picks the model (`choose`) was fixed before any held-out result of these candidates was computed, and is
written into the model card.

Simulated data only: every cohort comes from the Wardwatch ward simulator.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

import report

HOUR_MS = 3_600_000

# Architectures: None is logistic regression (C = 1); otherwise (hidden layer sizes, L2 penalty `alpha`) of a ReLU
# MLP. "mlp" is the (32, 16) network of every version before 1.4.0; the one-layer (16) networks were added for 1.4.0
# (pre-registered in docs/models-experiments.md). Names hold no ", " (a candidate's name is "<arch>, <scheme>").
ARCHITECTURES = {
    "logistic": None,
    "mlp": ((32, 16), 1e-3),
    "mlp (16) L2 0.001": ((16,), 1e-3),
    "mlp (16) L2 0.01": ((16,), 1e-2),
    "mlp (16) L2 0.1": ((16,), 1e-1),
}
# Training weights. "unweighted" is the 1.0.0 recipe.
SCHEMES = ["unweighted", "early", "early-steep", "per-event", "per-event+early", "per-event+early-steep"]
CANDIDATES = [(arch, scheme) for arch in ARCHITECTURES for scheme in SCHEMES]

WEIGHTS_DOC = {
    "unweighted": "every time point weight 1 (the 1.0.0 recipe)",
    "early": "a positive point's weight grows linearly from 1 at the peak to 2 at the 4-h horizon (rewards warning "
             "early rather than near the peak)",
    "early-steep": "as early, from 1 at the peak to 3 at the horizon",
    "per-event": "positive points weighted so that every deterioration carries the same total weight, however many "
                 "10-min points its ramp spans",
    "per-event+early": "per-event and early together",
    "per-event+early-steep": "per-event and early-steep together",
}
# (In every weighted scheme the total weight of the positive points is kept as unweighted.)


def _event_of(d, horizon_ms):
    """Per time point: the index (into d.events) of the deterioration whose peak follows within the horizon, or -1;
    and the time to that peak (ms, inf if none)."""
    ev = np.full(len(d.t), -1)
    ttp = np.full(len(d.t), np.inf)
    for i, (g, _began, peak, _kind) in enumerate(d.events):
        dt = peak - d.t
        m = (d.group == g) & (dt > 0) & (dt <= horizon_ms) & (dt < ttp)
        ev[m] = i
        ttp[m] = dt[m]
    return ev, ttp


def sample_weights(d, scheme: str, horizon_h: float) -> np.ndarray:
    """Training weights of every time point of a DetData (see WEIGHTS_DOC)."""
    w = np.ones(len(d.y))
    if scheme == "unweighted":
        return w
    horizon_ms = int(horizon_h * HOUR_MS)
    ev, ttp = _event_of(d, horizon_ms)
    pos = d.y & (ev >= 0)
    if "early" in scheme:
        gain = 2.0 if scheme.endswith("early-steep") else 1.0
        w[pos] = 1.0 + gain * np.clip(ttp[pos] / horizon_ms, 0.0, 1.0)
    if scheme.startswith("per-event"):
        per_event = np.bincount(ev[pos], weights=w[pos], minlength=len(d.events))
        n_events = int((per_event > 0).sum())
        w[pos] *= (w[pos].sum() / max(n_events, 1)) / per_event[ev[pos]]
    if d.y.any():
        w[d.y] *= d.y.sum() / w[d.y].sum()  # total positive weight as unweighted
    return w


def validation_metrics(d, p, news_idx):
    """On one validation cohort: AUROC/AUPRC (points whose outcome window is observed) and, at the alert rates of
    NEWS2 >= 5 and >= 7 on that cohort, the model's and NEWS2's median lead time over all events (missed = 0 h)."""
    main = d.in_main
    news = d.X[:, news_idx].astype(np.float64)
    pm, nm, ym = p[main], news[main], d.y[main]
    out = {"auroc": float(roc_auc_score(ym, pm)), "auprc": float(average_precision_score(ym, pm)),
           "auroc_news2": float(roc_auc_score(ym, nm)),
           # float32 (the ONNX output type) probabilities of exactly 1: ties at the top, and nothing left for the
           # edge's occlusion reasons to lower (edge/src/clinical/models.rs, top_reasons).
           "saturated": float(np.mean(p.astype(np.float32) >= 1.0))}
    for k in (5, 7):
        rate = float(np.mean(nm >= k))
        thr = float(np.quantile(pm, 1.0 - rate))
        lm = report._lead_times(d.events, d.group, d.t, p >= thr)
        ln = report._lead_times(d.events, d.group, d.t, news >= k)
        a = np.array([v if v is not None else 0.0 for _, v in lm])
        b = np.array([v if v is not None else 0.0 for _, v in ln])
        out[f"lead{k}_model"] = float(np.median(a))
        out[f"lead{k}_news2"] = float(np.median(b))
        out[f"lead{k}_delta"] = float(np.median(a) - np.median(b))
    return out


def summarise(folds):
    """Mean of each metric over the validation cohorts."""
    return {k: float(np.mean([f[k] for f in folds])) for k in folds[0]}


def choose(results):
    """Eligible: candidates whose float32 output never reaches exactly 1.0 on the validation cohorts (a saturated
    score cannot rank the riskiest time points and leaves the edge's alarm reasons, which are the drop in probability
    when one feature is reset, empty). Among the eligible whose mean validation AUROC is within 0.01 of the best
    eligible, the one with the largest worse-of-the-two lead-time margin over NEWS2 (the smaller of the mean
    median-lead differences, model minus NEWS2, at NEWS2 >= 5's and at NEWS2 >= 7's alert rate); ties go to the
    higher AUROC."""
    eligible = [(n, r) for n, r in results if r["saturated"] == 0.0]
    best_auc = max(r["auroc"] for _, r in eligible)
    ok = [(n, r) for n, r in eligible if r["auroc"] >= best_auc - 0.01]
    return max(ok, key=lambda nr: (round(min(nr[1]["lead5_delta"], nr[1]["lead7_delta"]), 6), nr[1]["auroc"]))[0]
