#!/usr/bin/env python3
"""Diagnostics for long_history.py (training cohorts 101-103 only; held-out never loaded).

Every training bed has at most one labelled deterioration (36 of 40 beds per cohort). Points after a bed's event
has ended ("post-event") are always negative, so a long-history feature that recognises "this bed already had its
event" wins AUROC from a simulator artefact. This script:
  1. scores the long_history.py LOCO predictions (per-event, logistic) separately on pre-event points (no deterioration
     of that bed ended before t) and post-event points;
  2. refits LOCO with post-event points removed from training AND validation ("first-event task"): the
     generalisable question "does long history help to see the first deterioration coming";
  3. repeats both without the features that only encode time since the cohort start (history_frac_*, *_missing).
  4. event by event at NEWS2 >= 7's alert rate: first alert of each candidate vs (a).
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import long_history as E  # noqa: E402  (sets the thread environment and the path to models/)

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import cohort as C  # noqa: E402
import report  # noqa: E402
import selection as S  # noqa: E402

WORK = E.WORK


def post_event_mask(c, d):
    """True where a deterioration of the same bed ended before t."""
    m = np.zeros(len(d.t), dtype=bool)
    for l in c.labels:
        if l["is_deterioration"] and l["peak"] is not None:
            ended = l["ended"] if l["ended"] is not None else c.end
            m |= (d.bed == l["bed"]) & (d.t > ended)
    return m


def subset(d, keep):
    return dataclasses.replace(d, X=d.X[keep], y=d.y[keep], bed=d.bed[keep], t=d.t[keep], group=d.group[keep],
                               in_main=d.in_main[keep])


def first_alert_leads(d, p, news_idx):
    nm = d.X[d.in_main, news_idx]
    rate = float(np.mean(nm >= 7))
    thr = float(np.quantile(p[d.in_main], 1.0 - rate))
    return np.array([v if v is not None else 0.0 for _, v in report._lead_times(d.events, d.group, d.t, p >= thr)])


def main():
    seeds = [101, 102, 103]
    base, extra, post, names = {}, {}, {}, None
    for i, s in enumerate(seeds):
        c = C.load(f"train-{s}", os.path.join(WORK, f"train-{s}"))
        d = C.deterioration_dataset(c, i, E.HORIZON_H, E.STEP_MIN)
        names, ex = E.long_features(c, d, i)
        base[s], extra[s], post[s] = d, ex, post_event_mask(c, d)
        pm = post[s] & d.in_main
        E.log(f"cohort {s}: main points {int(d.in_main.sum())}, post-event {int(pm.sum())} "
              f"(positive {int(d.y[pm].sum())})")

    def cols(g, drop_time):
        keep = [j for j, n in enumerate(names[g]) if not (drop_time and (n.endswith("_missing") or n.startswith("history_frac")))]
        return keep

    def build(gs, drop_time=False):
        return {s: E.with_X(base[s], np.column_stack([base[s].X] + [extra[s][g][:, cols(g, drop_time)] for g in gs]))
                for s in seeds}

    configs = [("a", [])] + [(g, [g]) for g in E.GROUP_NAMES] + [("all", list(E.GROUP_NAMES))]
    out = {"rows": []}
    ref = {}
    for task in ("all points (as long_history.py)", "first-event task (post-event points removed)"):
        for drop_time in (False, True):
            if drop_time and task.startswith("all"):
                pass
            for label, gs in configs:
                if drop_time and not gs:
                    continue
                dets = build(gs, drop_time)
                if task.startswith("first"):
                    dets = {s: subset(dets[s], ~post[s]) for s in seeds}
                r, folds, preds = E.loco(dets, seeds, "per-event")
                sub = {}
                for nm_, sel in (("pre", lambda s: ~post[s] if task.startswith("all") else np.ones(len(dets[s].t), bool)),
                                 ("post", lambda s: post[s] if task.startswith("all") else np.zeros(len(dets[s].t), bool))):
                    aucs = []
                    for s in seeds:
                        m = sel(s) & dets[s].in_main
                        y = dets[s].y[m]
                        if y.any() and (~y).any():
                            aucs.append(roc_auc_score(y, preds[s][m]))
                    sub[nm_] = float(np.mean(aucs)) if aucs else None
                # post-event points: mean percentile rank of their scores among all main points (0.5 = no shift)
                ranks = []
                if task.startswith("all"):
                    for s in seeds:
                        p = preds[s][dets[s].in_main]
                        pr = (np.argsort(np.argsort(p)) + 0.5) / len(p)
                        ranks.append(float(pr[post[s][dets[s].in_main]].mean()))
                key = (task, drop_time)
                leads = {s: first_alert_leads(dets[s], preds[s], E.NEWS_IDX) for s in seeds}
                if not gs:
                    ref[task] = (preds, leads)
                    boot, cmp_ = None, None
                else:
                    boot = E.paired_auc_boot(dets, seeds, ref[task][0], preds, n=200)
                    a = np.concatenate([ref[task][1][s] for s in seeds])
                    b = np.concatenate([leads[s] for s in seeds])
                    cmp_ = (int(np.sum(b > a + 1e-6)), int(np.sum(np.abs(b - a) <= 1e-6)), int(np.sum(b < a - 1e-6)))
                row = {"task": task, "drop_time_encoders": drop_time, "config": label, "mean": r, "pre_auc": sub["pre"],
                       "post_auc": sub["post"], "post_rank": float(np.mean(ranks)) if ranks else None,
                       "auc_gain_vs_a": boot, "lead7_vs_a_earlier_same_later": cmp_}
                out["rows"].append(row)
                E.log(f"{task[:11]:11s} drop_time={int(drop_time)} {label:16s} AUROC {r['auroc']:.4f} NEWS2 "
                      f"{r['auroc_news2']:.4f} ({r['auroc'] - r['auroc_news2']:+.4f})"
                      + (f" dAUC vs a {boot[0]:+.4f} [{boot[1]:+.4f},{boot[2]:+.4f}]" if boot else "")
                      + (f" pre-event AUROC {sub['pre']:.4f} post-event mean rank {row['post_rank']:.3f}"
                         if task.startswith("all") else "")
                      + f" lead@5 {r['lead5_model']:.2f} v {r['lead5_news2']:.2f} lead@7 {r['lead7_model']:.2f} v "
                        f"{r['lead7_news2']:.2f}" + (f" events vs a at >=7 rate (earlier/same/later) {cmp_}" if cmp_ else ""))
                with open(os.path.join(WORK, "long_history_diag.json"), "w") as fh:
                    json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
