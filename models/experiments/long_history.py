#!/usr/bin/env python3
"""Issue 5 exploration: do long-history (8 h / 12 h) features help the deterioration model?

TRAINING cohorts only (seeds 101-103, mix train); leave-one-cohort-out exactly as models/selection.py scored
candidates until 1.3.0 (fit on two cohorts with train.fit_final, validate on the third with selection.validation_metrics).
The held-out cohorts (9001-9004) are never loaded.

Reuses the repository's pipeline by import (never copied):
    cohort.load / cohort.deterioration_dataset   -> the 52 committed features, labels, time points, events
    selection.sample_weights / validation_metrics / summarise
    train.fit_final                              -> logistic regression on standardised features

Cohorts: the three training cohorts, exported by the pipeline's own exporter (never the held-out ones):

    cargo build --release --target-dir target/bench -p wardwatch --bin export_cohort
    for s in 101 102 103; do
      target/bench/release/export_cohort --beds 40 --hours 48 --seed $s --mix train \
        --out target/models-experiments/train-$s
    done
    python models/experiments/long_history.py          # -> target/models-experiments/long_history.json
    python models/experiments/long_history_diag.py     # pre/post-event split, first-event task, time-since-start

Findings (2026-11-25) are in docs/models-experiments.md.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
from _pipeline import REPO  # noqa: E402  (one thread, models/ on the import path: before numpy and the pipeline)

WORK = os.path.join(REPO, "target", "models-experiments")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import cohort as C  # noqa: E402
import features as F  # noqa: E402
import selection as S  # noqa: E402
import train as T  # noqa: E402

TRAIN = [(101, "train"), (102, "train"), (103, "train")]
HORIZON_H = T.HORIZON_H  # 4.0
STEP_MIN = T.STEP_MIN  # 10
NEWS_IDX = [n for n, _ in F.DETERIORATION_FEATURES].index("news2_total")
H = 60  # minutes per hour
MIN_BINS = 10  # fewer valid 1-min bins than this in a reference window: the reference is "missing"
VITALS = ["hr", "rr", "spo2", "temp", "sbp"]  # F.LEVELS order; base feature o+1 = <v>_mean_1h


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Whole-cohort minute bins (same bins as cohort.deterioration_dataset reads: value = newest valid sample of the
# minute, NaN if none), so history before the 4-h window is available.


def full_bins(c: C.Cohort):
    m0 = c.start // F.MINUTE_MS
    n_cols = (c.end - c.start) // F.MINUTE_MS + 2
    vals = np.full((8, c.beds, n_cols), np.nan)
    M = c.minutes
    b = M[:, 0].astype(np.int64) - 1
    s = np.array([F.SIGNAL_INDEX[int(x)] for x in M[:, 1]])
    col = M[:, 2].astype(np.int64) - m0
    ok = (col >= 0) & (col < n_cols)
    vals[s[ok], b[ok], col[ok]] = M[ok, 3]
    return vals, m0


def seg(y, cur, lo_min, hi_min):
    """Bins of one signal of one bed for each time point: columns [cur - hi_min, cur - lo_min), i.e. from hi_min to
    lo_min minutes before the minute containing now (cur itself excluded, as in the 4-h window). Columns before the
    cohort start are NaN. Returns (values (n, L), x in hours relative to now (L,))."""
    L = hi_min - lo_min
    k = np.arange(L)
    idx = cur[:, None] - hi_min + k[None, :]
    v = np.where(idx >= 0, y[np.clip(idx, 0, len(y) - 1)], np.nan)
    x = (k - hi_min) / 60.0
    return v, x


def masked_median(v):
    cnt = (~np.isnan(v)).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(v, axis=1)
    return med, cnt


def masked_extreme(v, is_max):
    m = ~np.isnan(v)
    e = np.where(m, v, -np.inf if is_max else np.inf)
    e = e.max(axis=1) if is_max else e.min(axis=1)
    return np.where(m.any(axis=1), e, np.nan)


# ---------------------------------------------------------------------------------------------------------------
# Candidate long-history feature groups. Each returns (names, (n, k) array) aligned with the DetData rows.

GROUP_NAMES = ["dev_8_12h", "dev_4_8h", "dev_first2h", "slope_8h_12h", "news2_change", "extremes_8h_12h"]


def long_features(c: C.Cohort, d: C.DetData, cohort_index: int):
    vals, m0 = full_bins(c)
    # NEWS2 total at every 10-min grid point from the cohort start (the repository's own feature code on a copy of
    # the cohort without labels, so no point is dropped; warmup 0).
    nolab = C.deterioration_dataset(dataclasses.replace(c, labels=[]), cohort_index, HORIZON_H, STEP_MIN, warmup_h=0.0)
    step_ms = STEP_MIN * F.MINUTE_MS
    n_grid = (c.end - c.start) // step_ms + 1
    news_grid = np.full((c.beds, n_grid), np.nan)
    kk = (nolab.t - c.start) // step_ms
    news_grid[nolab.bed - 1, kk] = nolab.X[:, NEWS_IDX]

    groups = {g: [] for g in GROUP_NAMES}
    names = {g: None for g in GROUP_NAMES}
    rows = np.zeros(len(d.t), dtype=np.int64)
    order = []
    for bed in np.unique(d.bed):
        sel = np.flatnonzero(d.bed == bed)
        order.append(sel)
        t = d.t[sel]
        cur = t // F.MINUTE_MS - m0
        age_min = (t - c.start) / F.MINUTE_MS
        out = {g: ([], []) for g in GROUP_NAMES}

        def add(g, name, col):
            out[g][0].append(name)
            out[g][1].append(np.asarray(col, dtype=np.float64))

        for vi, (vn, code) in enumerate(zip(VITALS, F.LEVELS)):
            y = vals[F.SIGNAL_INDEX[code], bed - 1]
            now = d.X[sel, vi * 7 + 1].astype(np.float64)  # <v>_mean_1h (falls back to last / default)
            # dev_8_12h / dev_4_8h: now minus the patient's own median 8-12 h / 4-8 h ago.
            for g, lo, hi in (("dev_8_12h", 8 * H, 12 * H), ("dev_4_8h", 4 * H, 8 * H)):
                med, cnt = masked_median(seg(y, cur, lo, hi)[0])
                miss = cnt < MIN_BINS
                add(g, f"{vn}_dev_{lo // H}_{hi // H}h", np.where(miss, 0.0, now - med))
                add(g, f"{vn}_dev_{lo // H}_{hi // H}h_missing", miss)
            # dev_first2h: now minus the median of the bed's first 2 h of the cohort.
            first = y[: 2 * H]
            fv = first[~np.isnan(first)]
            miss = len(fv) < MIN_BINS
            add("dev_first2h", f"{vn}_dev_first2h", np.full(len(t), 0.0) if miss else now - np.median(fv))
            add("dev_first2h", f"{vn}_dev_first2h_missing", np.full(len(t), float(miss)))
            # slopes over 8 h and 12 h (OLS per hour over the valid bins available; 0 if < 3 bins).
            for hrs in (8, 12):
                v, x = seg(y, cur, 0, hrs * H)
                add("slope_8h_12h", f"{vn}_slope_{hrs}h", F.masked_slope(v, x[None, :]))
            # extremes over 8 h and 12 h (fallback: now).
            is_max = vn in ("hr", "rr", "temp")
            for hrs in (8, 12):
                e = masked_extreme(seg(y, cur, 0, hrs * H)[0], is_max)
                add("extremes_8h_12h", f"{vn}_{'max' if is_max else 'min'}_{hrs}h", np.where(np.isnan(e), now, e))
        for hrs in (8, 12):
            add("slope_8h_12h", f"history_frac_{hrs}h", np.clip(age_min / (hrs * H), 0.0, 1.0))
        # news2_change: NEWS2 total now minus 4 h / 8 h ago (missing if that time is < 1 h after the cohort start);
        # max and mean of the 10-min NEWS2 totals over the last 8 h (available grid points, now included).
        k = (t - c.start) // step_ms
        news_now = d.X[sel, NEWS_IDX].astype(np.float64)
        for hrs in (4, 8):
            kb = k - hrs * 6
            ok = kb >= 6
            past = news_grid[bed - 1, np.clip(kb, 0, n_grid - 1)]
            ok &= ~np.isnan(past)
            add("news2_change", f"news2_change_{hrs}h", np.where(ok, news_now - np.nan_to_num(past), 0.0))
            add("news2_change", f"news2_change_{hrs}h_missing", ~ok)
        idx = k[:, None] - np.arange(48)[None, :]  # 48 grid points = now and the 7 h 50 min before
        w = np.where(idx >= 0, news_grid[bed - 1, np.clip(idx, 0, n_grid - 1)], np.nan)
        add("news2_change", "news2_max_8h", np.nanmax(w, axis=1))
        add("news2_change", "news2_mean_8h", np.nanmean(w, axis=1))
        for g in GROUP_NAMES:
            names[g] = out[g][0]
            groups[g].append(np.column_stack(out[g][1]))
    order = np.concatenate(order)
    res = {}
    for g in GROUP_NAMES:
        A = np.zeros((len(d.t), len(names[g])))
        A[order] = np.concatenate(groups[g])
        res[g] = A
    # Sanity: the news grid reproduces the scored points' news2_total.
    kd = (d.t - c.start) // step_ms
    assert np.allclose(news_grid[d.bed - 1, kd], d.X[:, NEWS_IDX]), "NEWS2 grid mismatch"
    del rows
    return names, res


# ---------------------------------------------------------------------------------------------------------------


def with_X(d: C.DetData, X: np.ndarray) -> C.DetData:
    return dataclasses.replace(d, X=X.astype(np.float32))


def loco(dets: dict, seeds: list, scheme: str, arch: str = "logistic"):
    folds, preds = [], {}
    for val in seeds:
        tr = [s for s in seeds if s != val]
        Xf = np.concatenate([dets[s].X[dets[s].in_main] for s in tr])
        yf = np.concatenate([dets[s].y[dets[s].in_main] for s in tr])
        wf = np.concatenate([S.sample_weights(dets[s], scheme, HORIZON_H)[dets[s].in_main] for s in tr])
        m, mean, scale, _ = T.fit_final(arch, Xf, yf, "deterioration", wf)
        p = m.predict_proba((dets[val].X - mean) / scale)[:, 1]
        folds.append(S.validation_metrics(dets[val], p, NEWS_IDX))
        preds[val] = p
    return S.summarise(folds), folds, preds


def paired_auc_boot(dets, seeds, pa, pb, n=300, seed=5):
    """Mean over folds of AUROC(b) - AUROC(a); 95 % CI from resampling patients within each fold."""
    rng = np.random.default_rng(seed)
    prep = []
    for s in seeds:
        d = dets[s]
        mm = d.in_main
        g, y, a, b = d.group[mm], d.y[mm], pa[s][mm], pb[s][mm]
        uniq = np.unique(g)
        by = {u: np.flatnonzero(g == u) for u in uniq}
        prep.append((uniq, by, y, a, b))
    point = np.mean([roc_auc_score(y, b) - roc_auc_score(y, a) for _, _, y, a, b in prep])
    diffs = []
    for _ in range(n):
        ds = []
        for uniq, by, y, a, b in prep:
            idx = np.concatenate([by[u] for u in rng.choice(uniq, size=len(uniq), replace=True)])
            ds.append(roc_auc_score(y[idx], b[idx]) - roc_auc_score(y[idx], a[idx]))
        diffs.append(np.mean(ds))
    return float(point), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=WORK)
    ap.add_argument("--out", default=os.path.join(WORK, "long_history.json"))
    ap.add_argument("--schemes", default="per-event,unweighted")
    ap.add_argument("--mlp", action="store_true", help="also the (32,16) MLP, per-event, on (a) and (c)")
    args = ap.parse_args()
    seeds = [s for s, _ in TRAIN]
    base, extra, names = {}, {}, None
    for i, (seed, mix) in enumerate(TRAIN):
        t0 = time.time()
        c = C.load(f"{mix}-{seed}", os.path.join(args.work, f"{mix}-{seed}"))
        d = C.deterioration_dataset(c, i, HORIZON_H, STEP_MIN)
        nm, ex = long_features(c, d, i)
        names = nm
        base[seed], extra[seed] = d, ex
        log(f"cohort {seed}: {len(d.y)} points ({int(d.y[d.in_main].sum())} positive in main), "
            f"{len(d.events)} events, {time.time() - t0:.0f} s")
        del c
    configs = [("a: 52 committed", [])] + [(f"b: 52 + {g} ({len(names[g])})", [g]) for g in GROUP_NAMES]
    configs.append((f"c: 52 + all ({sum(len(names[g]) for g in GROUP_NAMES)})", list(GROUP_NAMES)))
    results = {"feature_names": names, "min_bins": MIN_BINS, "runs": []}
    schemes = args.schemes.split(",")
    ref_preds = {}
    for scheme in schemes:
        for label, gs in configs:
            dets = {s: with_X(base[s], np.column_stack([base[s].X] + [extra[s][g] for g in gs])) for s in seeds}
            t0 = time.time()
            r, folds, preds = loco(dets, seeds, scheme)
            if not gs:
                ref_preds[scheme] = preds
                boot = None
            else:
                boot = paired_auc_boot(dets, seeds, ref_preds[scheme], preds)
            results["runs"].append({"config": label, "groups": gs, "scheme": scheme, "arch": "logistic",
                                    "mean": r, "folds": folds, "auc_gain_vs_a": boot})
            b = f" dAUROC vs a {boot[0]:+.4f} [{boot[1]:+.4f}, {boot[2]:+.4f}]" if boot else ""
            log(f"{scheme:10s} {label:32s} AUROC {r['auroc']:.4f} (NEWS2 {r['auroc_news2']:.4f}, "
                f"{r['auroc'] - r['auroc_news2']:+.4f}) lead@5 {r['lead5_model']:.2f} vs {r['lead5_news2']:.2f} "
                f"lead@7 {r['lead7_model']:.2f} vs {r['lead7_news2']:.2f} sat {r['saturated']:.4f}{b} "
                f"[folds dAUROC-NEWS2 " + " ".join(f"{f['auroc'] - f['auroc_news2']:+.3f}" for f in folds)
                + f"; lead7 d " + " ".join(f"{f['lead7_delta']:+.2f}" for f in folds) + f"] ({time.time() - t0:.0f} s)")
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=1)
    if args.mlp:
        for label, gs in (configs[0], configs[-1]):
            dets = {s: with_X(base[s], np.column_stack([base[s].X] + [extra[s][g] for g in gs])) for s in seeds}
            t0 = time.time()
            r, folds, _ = loco(dets, seeds, "per-event", "mlp")
            results["runs"].append({"config": label, "groups": gs, "scheme": "per-event", "arch": "mlp",
                                    "mean": r, "folds": folds})
            log(f"mlp per-event {label:32s} AUROC {r['auroc']:.4f} (NEWS2 {r['auroc_news2']:.4f}) lead@5 "
                f"{r['lead5_model']:.2f} vs {r['lead5_news2']:.2f} lead@7 {r['lead7_model']:.2f} vs "
                f"{r['lead7_news2']:.2f} sat {r['saturated']:.4f} ({time.time() - t0:.0f} s)")
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
