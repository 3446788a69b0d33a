"""Held-out evaluation, golden vectors, manifests, model cards and docs/models-evaluation.md.

Simulated data only: every number written here comes from simulated cohorts and says nothing about clinical
performance.
"""

from __future__ import annotations

import json
import os

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

import features as F

N_BOOT = 1000


# ---------------------------------------------------------------------------------------------------------------
# Deterioration


def _cluster_bootstrap(groups, fn, seed, n=N_BOOT):
    """Percentile 95 % CI of fn(idx) over patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    by = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(n):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        idx = np.concatenate([by[g] for g in pick])
        try:
            vals.append(fn(idx))
        except ValueError:
            continue
    vals = np.array(vals)
    return float(np.percentile(vals, 2.5, axis=0)), float(np.percentile(vals, 97.5, axis=0))


def _lead_times(events, groups, times, alerts):
    """Per event: hours from the first alert in [began, peak) to the peak, or None if no alert before the peak.

    `began` is the prodrome's start when the deterioration has one, else its onset."""
    out = []
    for g, began, peak, kind in events:
        m = (groups == g) & (times >= began) & (times < peak) & alerts
        out.append((kind, (peak - times[m].min()) / 3_600_000 if m.any() else None))
    return out


def _lead_summary(leads):
    got = [v for _, v in leads if v is not None]
    return {
        "events": len(leads),
        "detected": len(got),
        "median_lead_h_detected": float(np.median(got)) if got else None,
        # Missed events count as 0 h of lead time.
        "median_lead_h_all": float(np.median([v if v is not None else 0.0 for _, v in leads])) if leads else None,
    }


def _lead_compare(k, rate, thr, events, leads_model, leads_news, seed, n=N_BOOT):
    """Model vs NEWS2 >= k at the same alert rate, event by event (missed = 0 h): the difference of the median lead
    times with a 95 % percentile CI from resampling patients (with their events) with replacement, the alert
    thresholds held fixed; and how many events the model alerted earlier, at the same grid step, or later."""
    g = np.array([e[0] for e in events])
    a = np.array([v if v is not None else 0.0 for _, v in leads_model])
    b = np.array([v if v is not None else 0.0 for _, v in leads_news])
    rng = np.random.default_rng(seed)
    uniq = np.unique(g)
    by = {u: np.flatnonzero(g == u) for u in uniq}
    diffs = []
    for _ in range(n):
        idx = np.concatenate([by[u] for u in rng.choice(uniq, size=len(uniq), replace=True)])
        diffs.append(float(np.median(a[idx]) - np.median(b[idx])))
    step = 1e-6
    return {
        "news2_threshold": k, "alert_rate": rate, "model_threshold": thr,
        "model_median_h": float(np.median(a)), "news2_median_h": float(np.median(b)),
        "delta_h": float(np.median(a) - np.median(b)),
        "delta_ci": (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))),
        "earlier": int(np.sum(a > b + step)), "same": int(np.sum(np.abs(a - b) <= step)),
        "later": int(np.sum(a < b - step)), "events": int(len(a)), "patients": int(len(uniq)),
        "by_kind": {kd: (int(np.sum(m)), float(np.median(a[m])), float(np.median(b[m])))
                    for kd in sorted({e[3] for e in events}) for m in [np.array([e[3] == kd for e in events])]},
    }


def _in_patient_order(groups, times):
    """Indices that sort points by patient, then time; and, in that order, whether each is its patient's first."""
    order = np.lexsort((times, groups))
    g = groups[order]
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return order, first


def alert_onsets(groups, times, alerts):
    """Number of alert onsets: points in alert whose patient's previous scored point was not in alert, or that are
    the patient's first scored point (docs/models-experiments.md, "Pre-registered next metric")."""
    order, first = _in_patient_order(groups, times)
    a = np.asarray(alerts, dtype=bool)[order]
    prev = np.zeros(len(a), dtype=bool)
    prev[1:] = a[:-1]
    prev[first] = False
    return int(np.sum(a & ~prev))


def onset_matched_threshold(groups, times, scores, budget):
    """The model's threshold for the alert-onset comparison: scanning thresholds downwards from the highest score,
    the lowest one reached before the first whose onset count (alert = score >= threshold) exceeds `budget`.

    An onset count is not monotonic in the threshold (below every score each patient alerts once and stays in
    alert), hence the scan rather than "the lowest threshold within the budget" (the amendment in
    docs/models-experiments.md). A point is an onset at threshold t exactly when lo < t <= hi, hi being its score
    and lo its patient's previous scored point's score (-inf for the first point), so over the points with lo < hi
    the count at t is #(hi >= t) - #(lo >= t). Returns (threshold, onsets at it); (inf, 0) when even the highest score exceeds the
    budget."""
    order, first = _in_patient_order(groups, times)
    hi = np.asarray(scores, dtype=np.float64)[order]
    lo = np.empty(len(hi))
    lo[1:] = hi[:-1]
    lo[first] = -np.inf
    rising = lo < hi  # a point not above its predecessor is never an onset, at any threshold
    his, los = np.sort(hi[rising]), np.sort(lo[rising])
    cand = np.unique(hi)[::-1]  # every distinct score, highest first
    count = (len(his) - np.searchsorted(his, cand, side="left")) - (len(los) - np.searchsorted(los, cand, side="left"))
    over = np.flatnonzero(count > budget)
    j = (over[0] if len(over) else len(cand)) - 1
    if j < 0:
        return float("inf"), 0
    return float(cand[j]), int(count[j])


def evaluate_deterioration(datasets, predict, news_idx, threshold, horizon_h, seed, alarm_threshold=None):
    X = np.concatenate([d.X for d in datasets])
    y = np.concatenate([d.y for d in datasets])
    main = np.concatenate([d.in_main for d in datasets])
    groups = np.concatenate([d.group for d in datasets])
    times = np.concatenate([d.t for d in datasets])
    events = [e for d in datasets for e in d.events]
    p = predict(X)
    news = X[:, news_idx].astype(np.float64)
    pm, nm, ym, gm = p[main], news[main], y[main], groups[main]

    res = {"points": int(main.sum()), "positives": int(ym.sum()), "patients": int(len(np.unique(gm))),
           "events": len(events), "event_kinds": {}}
    for _, _, _, k in events:
        res["event_kinds"][k] = res["event_kinds"].get(k, 0) + 1
    res["auroc_model"] = float(roc_auc_score(ym, pm))
    res["auroc_news2"] = float(roc_auc_score(ym, nm))
    res["auprc_model"] = float(average_precision_score(ym, pm))
    res["auprc_news2"] = float(average_precision_score(ym, nm))
    res["auroc_model_ci"] = _cluster_bootstrap(gm, lambda i: roc_auc_score(ym[i], pm[i]), seed)
    res["auroc_news2_ci"] = _cluster_bootstrap(gm, lambda i: roc_auc_score(ym[i], nm[i]), seed)
    res["auprc_model_ci"] = _cluster_bootstrap(gm, lambda i: average_precision_score(ym[i], pm[i]), seed)
    res["auprc_news2_ci"] = _cluster_bootstrap(gm, lambda i: average_precision_score(ym[i], nm[i]), seed)
    res["auroc_delta_ci"] = _cluster_bootstrap(
        gm, lambda i: roc_auc_score(ym[i], pm[i]) - roc_auc_score(ym[i], nm[i]), seed)

    rows = []

    def op(name, alert_main, alert_all):
        a = alert_main
        leads = _lead_times(events, groups, times, alert_all)
        rows.append({
            "rule": name,
            "alert_rate": float(a.mean()),
            "sensitivity": float(a[ym].mean()) if ym.any() else None,
            "ppv": float(ym[a].mean()) if a.any() else None,
            **_lead_summary(leads),
            "leads": leads,
        })

    res["lead_compare"] = []
    news_leads = {}
    for k in (5, 7):
        op(f"NEWS2 >= {k}", nm >= k, news >= k)
        news_leads[k] = rows[-1]["leads"]
        rate = float(np.mean(nm >= k))
        thr = float(np.quantile(pm, 1.0 - rate)) if rate > 0 else 1.0
        op(f"model at the NEWS2 >= {k} alert rate (p >= {thr:.3f})", pm >= thr, p >= thr)
        res["lead_compare"].append(
            _lead_compare(k, rate, thr, events, rows[-1]["leads"], rows[-2]["leads"], seed))
    # Pre-registered alert-onset comparison (docs/models-experiments.md): NEWS2 >= k's number of alert onsets over
    # every scored point (the points the lead times use) is the budget; the model's threshold spends at most as many.
    # Reported next to the per-time-point comparison above, which stays the target's measure.
    res["onset_compare"] = []
    for k in (5, 7):
        budget = alert_onsets(groups, times, news >= k)
        thr, onsets = onset_matched_threshold(groups, times, p, budget)
        if onsets != alert_onsets(groups, times, p >= thr):
            raise AssertionError("onset count of the scan disagrees with the direct count")
        c = _lead_compare(k, float(np.mean(news >= k)), thr, events, _lead_times(events, groups, times, p >= thr),
                          news_leads[k], seed)
        c.update({"onsets_news2": budget, "onsets_model": onsets, "in_alert_news2": float(np.mean(news >= k)),
                  "in_alert_model": float(np.mean(p >= thr)), "scored_points": int(len(p))})
        res["onset_compare"].append(c)
    op(f"model at its manifest threshold (p >= {threshold:.3f})", pm >= threshold, p >= threshold)
    if alarm_threshold is not None:
        op(f"model at its manifest alarm threshold (p >= {alarm_threshold:.3f})", pm >= alarm_threshold,
           p >= alarm_threshold)
    for rate in (0.10,):
        tn = float(np.quantile(nm, 1.0 - rate))
        tm = float(np.quantile(pm, 1.0 - rate))
        op(f"NEWS2 >= {tn:g} (nearest to a {rate:.0%} alert rate)", nm >= tn, news >= tn)
        op(f"model at a {rate:.0%} alert rate (p >= {tm:.3f})", pm >= tm, p >= tm)
    res["operating_points"] = rows
    res["horizon_h"] = horizon_h
    return res


# ---------------------------------------------------------------------------------------------------------------
# Artifact


def alarm_categories(c, d):
    """Per query of an ArtData: 'artefact', 'cough_turn', 'true_event', 'other' (probes: 'probe')."""
    cats = []
    for bed, t, code, src, y in zip(d.bed, d.t, d.code, d.source, d.y):
        if src != 0:
            cats.append("probe")
            continue
        if y:
            cats.append("artefact")
            continue
        cat = "other"
        for l in c.labels:
            if l["bed"] != bed:
                continue
            ended = l["ended"] if l["ended"] is not None else c.end
            if l["is_deterioration"] and l["began"] <= t <= ended:
                cat = "true_event"
                break
            if l["kind"] == "transient_cough_or_turn" and l["began"] <= t < ended + F.RECENT_MS:
                cat = "cough_turn"
            if l["kind"] in ("motion_artifact", "probe_off") and l["began"] <= t < ended + F.RECENT_MS \
                    and cat == "other":
                cat = "artefact_other_signal"
        cats.append(cat)
    return np.array(cats)


def evaluate_artifact(pairs, predict, threshold):
    cats_all, held_all, flags_all, hard_all = [], [], [], []
    events = []
    episodes = []
    for c, d in pairs:
        m = d.source == 0
        p = predict(d.X[m])
        held = p >= threshold
        cats = alarm_categories(c, d)[m]
        idx = d.alarm_index[m]
        flags = np.array([c.alarms[i]["flags"] for i in idx])
        hard = np.array([c.alarms[i]["hard"] for i in idx])
        cats_all.append(cats)
        held_all.append(held)
        flags_all.append(flags)
        hard_all.append(hard)
        held_by_alarm = {int(i): bool(h) for i, h in zip(idx, held)}
        for l in c.labels:
            if not l["is_deterioration"]:
                continue
            ended = l["ended"] if l["ended"] is not None else c.end
            alarms = [i for i, a in enumerate(c.alarms) if a["bed"] == l["bed"] and l["began"] <= a["at"] <= ended]
            if not alarms:
                continue
            # Alarms on non-continuous parameters (blood pressure, temperature) are never judged, never held back.
            held_n = sum(held_by_alarm.get(i, False) for i in alarms)
            hard_alarms = [i for i in alarms if c.alarms[i]["hard"]]
            events.append({
                "cohort": c.name, "bed": l["bed"], "kind": l["kind"], "priority": l["expected_priority"],
                "alarms": len(alarms), "held": int(held_n),
                "hard_alarms": len(hard_alarms), "hard_held": int(sum(held_by_alarm.get(i, False) for i in hard_alarms)),
                "hidden": held_n == len(alarms),
            })
        # Episodes: a labelled disturbance "sounded" if any naive alarm on a continuous signal fell within it (or
        # within the 10 s after it); it is silenced if the model holds back every one of those alarms.
        for l in c.labels:
            if l["kind"] not in ("motion_artifact", "probe_off", "transient_cough_or_turn"):
                continue
            ended = l["ended"] if l["ended"] is not None else c.end
            hs = [held_by_alarm[int(i)] for i in idx
                  if c.alarms[int(i)]["bed"] == l["bed"] and l["began"] <= c.alarms[int(i)]["at"] < ended + F.RECENT_MS]
            if hs:
                episodes.append({"kind": l["kind"], "alarms": len(hs), "held": int(sum(hs)), "silenced": all(hs),
                                 "device_flagged": l["device_flagged"]})
    cats = np.concatenate(cats_all)
    held = np.concatenate(held_all)
    flags = np.concatenate(flags_all)
    hard = np.concatenate(hard_all)
    out = {"threshold": threshold, "categories": {}}
    for cat in ["artefact", "artefact_other_signal", "cough_turn", "true_event", "other"]:
        m = cats == cat
        out["categories"][cat] = {"alarms": int(m.sum()), "held": int((held & m).sum())}
    art = cats == "artefact"
    unflagged = art & (flags == 0)
    out["artefact_unflagged"] = {"alarms": int(unflagged.sum()), "held": int((held & unflagged).sum())}
    out["hard_held_true_event"] = int((held & hard & (cats == "true_event")).sum())
    out["hard_true_event"] = int((hard & (cats == "true_event")).sum())
    out["events"] = events
    out["episodes"] = {}
    for kind in ("motion_artifact", "probe_off", "transient_cough_or_turn"):
        eps = [e for e in episodes if e["kind"] == kind]
        out["episodes"][kind] = {"sounded": len(eps), "silenced": int(sum(e["silenced"] for e in eps)),
                                 "unflagged_sounded": int(sum(e["device_flagged"] == "0" for e in eps)),
                                 "unflagged_silenced": int(sum(e["silenced"] and e["device_flagged"] == "0" for e in eps))}
    out["events_hidden"] = int(sum(e["hidden"] for e in events))
    out["high_events_hidden"] = int(sum(e["hidden"] and e["priority"] == "ALARM_PRIORITY_HIGH" for e in events))
    n = out["categories"]["artefact"]["alarms"]
    out["artefact_removed_share"] = out["categories"]["artefact"]["held"] / n if n else None
    return out


# ---------------------------------------------------------------------------------------------------------------
# Golden vectors


def _det_samples_from_minutes(c, bed, now):
    """Raw samples that bin exactly to the cohort's minute rows of one bed over the window: the valid value at its
    time, plus one flagged sample per flagged one counted (value 0 for sensor-off, else the valid value + 40)."""
    m0 = now // F.MINUTE_MS
    rows = c.minutes[(c.minutes[:, 0] == bed) & (c.minutes[:, 2] >= m0 - F.W - 2) & (c.minutes[:, 2] < m0)]
    samples = []
    for r in rows:
        code, minute, value, at = int(r[1]), int(r[2]), r[3], int(r[4])
        n_flag = int(r[5] - r[6])
        n_off = int(r[8])
        for j in range(min(n_flag, 5)):
            t = minute * F.MINUTE_MS + 1_000 * j + 500
            if j < n_off:
                samples.append([code, t, 0.0, F.FLAG_SENSOR_OFF])
            else:
                samples.append([code, t, (0.0 if np.isnan(value) else float(value)) + 40.0, F.FLAG_ARTIFACT])
        if not np.isnan(value):
            samples.append([code, at, float(value), 0])
    samples.sort(key=lambda s: (s[1], F.SIGNAL_INDEX[s[0]]))
    return samples


def _synthetic_det_samples(rng, now, scale2):
    """Half an hour of 1 Hz monitor data with noise, flags, a gap, out-of-order and duplicate-time samples, over sparse
    older data: exercises every binning rule."""
    s = []
    t0 = now - 4 * 3_600_000
    for i in range(0, 4 * 60, 5):  # sparse older data, every 5 min
        t = t0 + i * 60_000 + 7_000
        s += [[F.HR, t, 88.0 + i / 10, 0], [F.RR, t, 18.0, 0], [F.SPO2, t, 95.0, 0], [F.SBP, t, 118.0 - i / 8, 0],
              [F.TEMP, t, 37.4 + i / 400, 0]]
    for i in range(1800):
        t = now - 1_800_000 + i * 1_000 - 250
        if 600 <= i < 900:
            continue  # a 5-minute gap
        hr = 110.0 + 10 * np.sin(i / 300) + float(rng.normal(0, 2))
        flag = F.FLAG_ARTIFACT if i % 97 == 0 else 0
        s.append([F.HR, t, round(hr), flag])
        s.append([F.PR, t, round(hr + float(rng.normal(0, 1))), 0])
        s.append([F.RR, t, round(22 + float(rng.normal(0, 1.5))), 0])
        off = 1000 <= i < 1060
        s.append([F.SPO2, t, 0.0 if off else round(91 + float(rng.normal(0, 1))), F.FLAG_SENSOR_OFF if off else 0])
    s.append([F.HR, now - 90_000, 150.0, 0])  # late (out of order) sample
    s.append([F.RR, now - 30_250, 30.0, 0])  # same time as an existing sample, pushed later
    s += [[F.ACVPU, now - 20 * 60_000, 1.0, 0], [F.O2, now - 100 * 60_000, 1.0 if scale2 else 0.0, 0]]
    return s


def write_golden(out, c, det, art, paths, predict_path, seed):
    rng = np.random.default_rng(seed)
    gdir = os.path.join(out, "golden")
    os.makedirs(gdir, exist_ok=True)
    summary = {}

    # Deterioration: windows from the first held-out cohort, plus synthetic ones.
    picks = []
    p_all = predict_path(paths["deterioration"][0], det.X)
    pos = np.flatnonzero(det.y)
    if len(pos):
        picks.append(("held-out patient before a labelled deterioration (highest risk)", int(pos[np.argmax(p_all[pos])])))
    neg = np.flatnonzero(~det.y)
    picks.append(("held-out stable patient", int(neg[len(neg) // 2])))
    s2 = np.flatnonzero(c.scale2[det.bed - 1])
    if len(s2):
        picks.append(("held-out patient on SpO2 scale 2", int(s2[len(s2) // 3])))
    vectors = []
    for desc, i in picks:
        bed, now = int(det.bed[i]), int(det.t[i])
        samples = _det_samples_from_minutes(c, bed, now)
        vectors.append({"name": f"{c.name}-bed{bed}-{now}", "description": desc, "spo2_scale_2": bool(c.scale2[bed - 1]),
                        "now_unix_ms": now, "samples": samples})
    for k, scale2 in enumerate([False, True]):
        now = 1_800_000_000_000 + 7 * 3_600_000 + 60_000 * (k + 1) + 123
        vectors.append({"name": f"synthetic-{k}", "description": "synthetic: 1 Hz half hour with flags, a gap, late samples",
                        "spo2_scale_2": scale2, "now_unix_ms": now, "samples": _synthetic_det_samples(rng, now, scale2)})
    vectors.append({"name": "empty", "description": "no samples at all", "spo2_scale_2": False,
                    "now_unix_ms": 1_800_000_000_000, "samples": []})
    feats = np.array([F.deterioration_from_samples(v["samples"], v["now_unix_ms"], v["spo2_scale_2"]) for v in vectors])
    probs = predict_path(paths["deterioration"][0], feats)
    for v, f, p in zip(vectors, feats, probs):
        v["features"] = [float(x) for x in f]
        v["probability"] = float(p)
    _write_golden_file(gdir, "deterioration", paths["deterioration"], vectors)
    summary["deterioration"] = len(vectors)

    # Artifact: alarm windows of the held-out cohort by category, each asked about its own signal and one other.
    cats = alarm_categories(c, art)
    vectors = []
    for cat in ["artefact", "artefact", "true_event", "cough_turn", "other"]:
        idx = np.flatnonzero((cats == cat) & (art.source == 0))
        used = {v["alarm"] for v in vectors}
        idx = [i for i in idx if int(i) not in used]
        if not idx:
            continue
        i = int(idx[len(vectors) % len(idx)] if cat != "artefact" else idx[0 if not used else len(idx) // 2])
        bed, t, code = int(art.bed[i]), int(art.t[i]), int(art.code[i])
        samples = []
        for sc in F.CONTINUOUS:
            r = c.raw.get((bed, sc))
            if r is None:
                continue
            for at, v, ok in zip(*r):
                if t - F.ARTIFACT_WINDOW_MS - 5_000 < at <= t + 2_000:
                    samples.append([sc, at, v, 0 if ok else _flag_of(c, bed, sc, at)])
        samples.sort(key=lambda s: (s[1], F.CONTINUOUS.index(s[0])))
        for q in [F.QUERY_NAMES[F.CONTINUOUS.index(code)], "rr"]:
            vectors.append({"name": f"{c.name}-bed{bed}-{t}-{q}", "description": f"held-out naive alarm ({cat})",
                            "now_unix_ms": t, "query": q, "samples": samples, "alarm": i})
    now = 1_800_000_000_000
    syn = []
    for i in range(150):
        at = now - 149_000 + i * 1_000
        jump = 60.0 if i >= 145 else 0.0
        syn += [[F.HR, at, 80.0 + (i % 3) + jump, F.FLAG_ARTIFACT if i == 147 else 0], [F.PR, at, 81.0, 0],
                [F.SPO2, at, 0.0 if i >= 146 else 97.0, F.FLAG_SENSOR_OFF if i >= 146 else 0], [F.RR, at, 16.0, 0]]
    vectors.append({"name": "synthetic-jump", "description": "synthetic: HR jump, probe off, flatline RR",
                    "now_unix_ms": now, "query": "hr", "samples": syn, "alarm": -1})
    vectors.append({"name": "empty", "description": "no samples", "now_unix_ms": now, "query": "spo2",
                    "samples": [], "alarm": -1})
    feats = np.array([F.artifact_from_samples(v["samples"], v["now_unix_ms"], v["query"]) for v in vectors])
    probs = predict_path(paths["artifact"][0], feats)
    for v, f, p in zip(vectors, feats, probs):
        v.pop("alarm")
        v["features"] = [float(x) for x in f]
        v["probability"] = float(p)
    _write_golden_file(gdir, "artifact", paths["artifact"], vectors)
    summary["artifact"] = len(vectors)
    return summary


def _flag_of(c, bed, code, at):
    # raw.csv keeps only valid/invalid per sample after loading; recover which flag from the labels' kinds.
    for l in c.labels:
        if l["bed"] == bed and l["kind"] == "probe_off" and l["began"] <= at < (l["ended"] or c.end):
            return F.FLAG_SENSOR_OFF
    return F.FLAG_ARTIFACT


def _write_golden_file(gdir, kind, path_info, vectors):
    names = F.DETERIORATION_FEATURES if kind == "deterioration" else F.ARTIFACT_FEATURES
    doc = {
        "model": kind,
        "model_file": f"{kind}/model.onnx",
        "model_sha256": path_info[1],
        "tolerance": "features: |rust - python| <= 1e-5 * max(1, |python|); probability: |tract - onnxruntime| <= 1e-5",
        "sample_format": "[signal code (MDC), measured_at_unix_ms, value, flags (1 artifact, 2 sensor-off)], in push order",
        "feature_names": [n for n, _ in names],
        "simulated": True,
        "vectors": vectors,
    }
    with open(os.path.join(gdir, f"{kind}.json"), "w") as fh:
        # One vector per line: readable diffs without the size of a fully indented file.
        head = {k: v for k, v in doc.items() if k != "vectors"}
        fh.write(json.dumps(head)[:-1] + ', "vectors": [\n')
        fh.write(",\n".join(json.dumps(v, separators=(",", ":")) for v in vectors))
        fh.write("\n]}\n")


# ---------------------------------------------------------------------------------------------------------------
# Manifests, model cards, docs


def _fmt(x, d=3):
    return "–" if x is None else f"{x:.{d}f}"


def _ci(ci, d=3):
    return f"[{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def det_tables(e):
    s = []
    s.append("| score | AUROC (95 % CI) | AUPRC (95 % CI) |\n|---|---|---|\n")
    s.append(f"| deterioration model | {_fmt(e['auroc_model'])} {_ci(e['auroc_model_ci'])} | "
             f"{_fmt(e['auprc_model'])} {_ci(e['auprc_model_ci'])} |\n")
    s.append(f"| NEWS2 (continuous total) | {_fmt(e['auroc_news2'])} {_ci(e['auroc_news2_ci'])} | "
             f"{_fmt(e['auprc_news2'])} {_ci(e['auprc_news2_ci'])} |\n")
    s.append(f"\nAUROC difference, model − NEWS2: {e['auroc_model'] - e['auroc_news2']:+.3f}, 95 % CI "
             f"{_ci(e['auroc_delta_ci'])} (patient-level bootstrap, {N_BOOT} resamples).\n\n")
    s.append("| alert rule | alert rate | sensitivity | PPV | events alerted before the peak | median lead time, alerted events | median lead time, all events (missed = 0) |\n")
    s.append("|---|---:|---:|---:|---:|---:|---:|\n")
    for r in e["operating_points"]:
        s.append(f"| {r['rule']} | {r['alert_rate']:.1%} | {_fmt(r['sensitivity'], 3)} | {_fmt(r['ppv'], 3)} | "
                 f"{r['detected']}/{r['events']} | {_fmt(r['median_lead_h_detected'], 2)} h | "
                 f"{_fmt(r['median_lead_h_all'], 2)} h |\n")
    return "".join(s)


def art_tables(e):
    c = e["categories"]
    s = ["| naive threshold alarms (held-out) | alarms | held back by the model | share |\n|---|---:|---:|---:|\n"]
    names = {
        "artefact": "during a labelled motion artefact or probe-off, on a signal it disturbs (false alarms)",
        "artefact_other_signal": "during an artefact, on a signal it does not disturb",
        "cough_turn": "during a labelled cough or turn (real, transient physiology)",
        "true_event": "during a labelled deterioration (true events)",
        "other": "everything else (stable patients' own excursions)",
    }
    for k, label in names.items():
        v = c[k]
        share = v["held"] / v["alarms"] if v["alarms"] else None
        s.append(f"| {label} | {v['alarms']} | {v['held']} | {_fmt(share and share * 100, 1)} % |\n")
    u = e["artefact_unflagged"]
    s.append(f"| of the false alarms: samples the monitor did **not** flag (the engine's flag rule cannot drop them) | "
             f"{u['alarms']} | {u['held']} | {_fmt(u['held'] / u['alarms'] * 100 if u['alarms'] else None, 1)} % |\n")
    s.append("\n| labelled episodes with at least one naive alarm (held-out) | episodes | all their alarms held back | of which unflagged by the monitor: episodes / held back |\n|---|---:|---:|---:|\n")
    for kind, v in e["episodes"].items():
        s.append(f"| {kind} | {v['sounded']} | {v['silenced']} | {v['unflagged_sounded']} / {v['unflagged_silenced']} |\n")
    ev = e["events"]
    s.append(f"\nLabelled deteriorations with naive alarms: {len(ev)}; hidden (every alarm held back): "
             f"**{e['events_hidden']}**, of which high-priority: **{e['high_events_hidden']}**. "
             f"Alarms at or beyond a hard (high-priority) limit during deteriorations: {e['hard_true_event']}, "
             f"held back: **{e['hard_held_true_event']}**.\n")
    return "".join(s)


def write_outputs(out, docs, common, models, golden):
    for kind, m in models.items():
        path, sha, ops = m["path"]
        names = F.DETERIORATION_FEATURES if kind == "deterioration" else F.ARTIFACT_FEATURES
        manifest = {
            "name": f"wardwatch-{kind}",
            "version": common["versions"][kind],
            "file": "model.onnx",
            "sha256": sha,
            "opset": 17,
            "onnx_ops": ops,
            "input": {"name": "features", "shape": ["batch", len(names)], "dtype": "float32"},
            "output": {"name": "probability", "shape": ["batch", 1], "dtype": "float32"},
            "features": [{"name": n, "unit": u} for n, u in names],
            "feature_extraction": "edge/src/ml/" + ("deterioration.rs" if kind == "deterioration" else "artifact.rs"),
            "decision_threshold": m["threshold"],
            "architecture": m["choice"] + " " + " -> ".join(f"{a}x{b}" for a, b in m["layers"]),
            "training_seeds": [s for s, _ in common["train"]],
            "training_mix": common["train"][0][1],
            "heldout_seeds": [s for s, _ in common["heldout"]],
            "heldout_mix": common["heldout"][0][1],
            "cohort": {"beds": common["beds"], "hours": common["hours"]},
            "simulated_data_only": True,
            "clinically_validated": False,
            "created": common["created"],
        }
        if kind == "deterioration":
            manifest.update({
                "outcome": f"labelled deterioration (sepsis, respiratory failure on oxygen, hypovolaemia) reaching its peak within {m['horizon_h']:g} h",
                "window": {"length_min": F.W, "resolution": "1 min bins (newest valid sample per minute)"},
                "prediction_horizon_h": m["horizon_h"],
                "decision_threshold_rule": "model alert rate on the training cohorts equal to that of NEWS2 >= 5",
                "alarm_threshold": m["alarm_threshold"],
                "alarm_threshold_rule": "model alert rate on the training cohorts equal to that of NEWS2 >= 7; the "
                                        "edge's medium-priority deterioration-risk alarm uses it, the risk shown and "
                                        "synced uses decision_threshold",
                "training_weights": f"{m['weights']}: {m['weights_doc'][m['weights']]}",
                "selection": _selection_method(common) + "; " + " ".join(m["selection_rule"].split()),
                "validation_seeds": [s for s, _ in common["validation"]],
                "validation_mix": common["validation"][0][1],
            })
        else:
            manifest.update({
                "outcome": "the queried signal's newest sample is implausible as physiology (motion artefact, probe off)",
                "window": {"length_ms": F.ARTIFACT_WINDOW_MS, "recent_ms": F.RECENT_MS, "resolution": "raw samples"},
                "query": "one-hot features query_hr/query_pr/query_spo2/query_rr name the signal whose alarm is judged",
                "decision_threshold_rule": "max(0.5, highest training-cohort probability of an alarm during a labelled deterioration + 0.01)",
            })
        with open(os.path.join(out, kind, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
        with open(os.path.join(out, kind, "MODEL_CARD.md"), "w") as fh:
            fh.write(model_card(kind, m, manifest, common))
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(docs, "models-evaluation.md"), "w") as fh:
        fh.write(evaluation_doc(models, common, golden))
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        slim = {k: {kk: vv for kk, vv in m.items() if kk not in ("path",)} for k, m in models.items()}
        json.dump({"common": {k: v for k, v in common.items() if not k.endswith("_meta")}, "models": slim},
                  fh, indent=1, default=lambda o: o if not isinstance(o, tuple) else list(o))
        fh.write("\n")


SIM_WARNING = ("**Trained on simulated data. Not clinically validated.** Every patient, vital sign and outcome this "
               "model has seen comes from the Wardwatch ward simulator. It must not be used for patient care or to "
               "make clinical decisions; it is there to build and test the edge's model plumbing.\n")


def _targets_det(e):
    d = e["auroc_model"] - e["auroc_news2"]
    lo, hi = e["auroc_delta_ci"]
    if d < 0.05:
        auroc_note = ""
    elif lo >= 0.05:
        auroc_note = f" — and established: the whole 95 % CI of the difference, [{lo:.3f}, {hi:.3f}], is above 0.05"
    else:
        auroc_note = (f" — by the point estimate only: the 95 % CI of the difference, [{lo:.3f}, {hi:.3f}], reaches "
                      "below 0.05, so on these cohorts the margin is not established")
    s = [f"- AUROC at least NEWS2 + 0.05: model {e['auroc_model']:.3f} vs NEWS2 {e['auroc_news2']:.3f} "
         f"(difference {d:+.3f}): **{'met' if d >= 0.05 else 'missed'}**{auroc_note}.\n"]
    for c in e["lead_compare"]:
        dl = c["delta_h"]
        clo, chi = c["delta_ci"]
        if dl <= 0:
            note = ""
        elif clo > 0:
            note = f"; the 95 % CI of the difference, [{clo:+.2f}, {chi:+.2f}] h, is above 0"
        else:
            note = (f" — by the point estimate only: the 95 % CI of the difference, [{clo:+.2f}, {chi:+.2f}] h, "
                    "includes 0, so a longer lead time is not established")
        s.append(
            f"- Longer median lead time at NEWS2 ≥ {c['news2_threshold']}'s alert rate ({c['alert_rate']:.1%}; model "
            f"p ≥ {c['model_threshold']:.3f}): model {c['model_median_h']:.2f} h vs NEWS2 {c['news2_median_h']:.2f} h "
            f"over all {c['events']} events (missed = 0 h), difference {dl:+.2f} h; the model's first alert came "
            f"earlier for {c['earlier']} events, at the same 10-min step for {c['same']}, later for {c['later']}: "
            f"**{'met' if dl > 0 else 'not met'}**{note}. By kind (events: model vs NEWS2 median lead): "
            + "; ".join(f"{kd} ({n}): {x:.2f} vs {y:.2f} h" for kd, (n, x, y) in c["by_kind"].items()) + ".\n")
    return "".join(s)


def _onset_det(e):
    """The pre-registered alert-onset comparison, next to (never instead of) the per-time-point targets."""
    rows = e.get("onset_compare") or []
    if not rows:
        return ""
    s = ["Alert-onset comparison (pre-registered in docs/models-experiments.md; not the target's measure): NEWS2 "
         "≥ k's number of alert onsets (a patient's score reaching the threshold from below) over all "
         f"{rows[0]['scored_points']:,} scored points is the budget; the model's threshold is the lowest reached, "
         "scanning downwards, before its onset count exceeds that budget. Lead time as above (missed = 0 h), with "
         "the same patient-level bootstrap. Onsets of raw scores overstate what a ward hears from NEWS2: the edge's "
         "alarm manager keeps a NEWS2 response alarm through dips shorter than 15 min, so a smoother score is "
         "favoured here; docs/alarm-evaluation.md counts the alarms actually announced.\n\n"
         "| rule | alert onsets | time points in alert | median lead, all events | difference (95 % CI) | "
         "first alert earlier / same / later |\n|---|---|---|---|---|---|\n"]
    for c in rows:
        lo, hi = c["delta_ci"]
        s.append(f"| NEWS2 ≥ {c['news2_threshold']} | {c['onsets_news2']:,} | {c['in_alert_news2']:.1%} | "
                 f"{c['news2_median_h']:.2f} h | | |\n")
        s.append(f"| model, p ≥ {c['model_threshold']:.3f} | {c['onsets_model']:,} | {c['in_alert_model']:.1%} | "
                 f"{c['model_median_h']:.2f} h | {c['delta_h']:+.2f} h [{lo:+.2f}, {hi:+.2f}] | "
                 f"{c['earlier']} / {c['same']} / {c['later']} |\n")
    s.append("\nBy kind (events: model vs NEWS2 median lead): "
             + " ".join(f"NEWS2 ≥ {c['news2_threshold']}'s onset budget: "
                        + "; ".join(f"{kd} ({n}): {x:.2f} vs {y:.2f} h" for kd, (n, x, y) in c["by_kind"].items())
                        + "." for c in rows) + "\n")
    return "".join(s)


def _targets_art(e):
    share = e["artefact_removed_share"] or 0
    eps = [e["episodes"][k] for k in ("motion_artifact", "probe_off")]
    sounded, silenced = sum(x["sounded"] for x in eps), sum(x["silenced"] for x in eps)
    ep_share = silenced / sounded if sounded else 0.0
    return (f"- At least half of artefact alarms removed: {share:.1%} of the naive alarms raised on disturbed signals "
            f"during labelled artefacts; by episode, {silenced} of {sounded} artefact episodes that sounded would be "
            f"silent ({ep_share:.1%}): **{'met' if share >= 0.5 and ep_share >= 0.5 else 'missed'}**.\n"
            f"- Zero true high-priority events hidden: {e['high_events_hidden']} hidden (all deteriorations: "
            f"{e['events_hidden']}; hard-limit alarms held back during deteriorations: {e['hard_held_true_event']}): "
            f"**{'met' if e['high_events_hidden'] == 0 and e['hard_held_true_event'] == 0 else 'missed'}**.\n")


def _data_section(common):
    tr = ", ".join(str(s) for s, _ in common["train"])
    va = ", ".join(str(s) for s, _ in common["validation"])
    ho = ", ".join(str(s) for s, _ in common["heldout"])
    mt = common["train_meta"][0]["mix"]
    mv = common["validation_meta"][0]["mix"]
    mh = common["heldout_meta"][0]["mix"]
    keys = ["sepsis", "respiratory_failure", "hypovolaemia", "prodrome_share", "recurrence_share", "motion_artifact",
            "artifact_flagged_share", "probe_off", "transient_cough_or_turn", "stable_scale2_patients", "drip_sped_up",
            "line_occluded"]
    rows = "".join(f"| {k} | {mt.get(k, 0):g} | {mv.get(k, 0):g} | {mh.get(k, 0):g} |\n" for k in keys)
    return (f"Cohorts come from the ward simulator (`edge/src/simulator/`) through `export_cohort` "
            f"(`tests/src/bin/export_cohort.rs`): {common['beds']} beds × {common['hours']} simulated hours each, "
            f"vital signs at the simulator's native periods (monitor 1 s, temperature 1 min, NIBP 5 min, ACVPU and "
            f"air/oxygen 15 min). Training seeds {tr} (mix `train`); validation seeds {va} (mix `validation`, composed "
            f"between the two, used only to choose among the deterioration candidates); held-out seeds {ho} (mix "
            f"`heldout`): held-out cohorts differ in seed **and** scenario mix. Rates per 40 beds per 24 h (shares as "
            f"fractions):\n\n"
            f"| scenario | train | validation | held-out |\n|---|---:|---:|---:|\n{rows}\n"
            "`prodrome_share` is the share of deteriorations that a prodrome precedes: subtle changes over 30 min to "
            "6 h before the onset (HR, RR, temperature, SpO2 a few units, mostly inside NEWS2's zero bands; in "
            "sepsis a falling heart-rate variability; in hypovolaemia a narrowing pulse pressure), set from published "
            "observations before any model was trained on them (`edge/src/simulator/scenarios.rs`, \"Prodromes\"). "
            "A label's `began` is the prodrome's start when there is one, so lead times count from it. "
            "`recurrence_share` is the share of first deteriorations that recur once on the same bed, as a second "
            "episode of the same kind beginning 2–24 h after the first has ended (after the 14 % of rapid-response "
            "patients with a repeat call, Chalwin et al. 2019); each is a labelled event of its own, so a bed that has "
            "had its deterioration is not safe from the next.\n\n")


# Held-out results of earlier deterioration models and runs (numbers copied from those runs' generated docs), so that
# every held-out look is on record, not only the last one.
HISTORY = [
    ("1.0.0 (committed before 1.1.0)", "logistic, unweighted; chosen by validation AUROC on seed 103",
     "9001–9002 (80 patients, 80 events)", "0.768 vs 0.717: +0.051 [0.028, 0.073]",
     "0.90 vs 0.80 h", "0.54 vs 0.65 h", "no CI was computed"),
    ("1.1.0, first run", "mlp, early-steep; the selection rule without the saturation condition",
     "9001–9004 (160 patients, 156 events)", "0.743 vs 0.713: +0.030 [0.007, 0.052]",
     "0.92 vs 0.78 h: +0.14 [+0.05, +0.33]", "0.68 vs 0.61 h: +0.07 [+0.01, +0.22]",
     "its float32 output was exactly 1.0 for 1.3 % of training points (threshold at NEWS2 ≥ 7's rate: p ≥ 1.000), "
     "so the edge's alarm reasons were empty there; the saturation condition was added for that reason and the "
     "pipeline rerun — a second look at the held-out cohorts, recorded here"),
    ("1.1.1 (committed before 1.2.0)", "logistic, per-event; 1.1.0's rule with the saturation condition",
     "9001–9004 (160 patients, 156 events), simulator **without prodromes**",
     "0.760 vs 0.713: +0.047 [0.031, 0.063]", "0.94 vs 0.78 h: +0.16 [+0.05, +0.28]",
     "0.53 vs 0.61 h: −0.08 [−0.15, +0.09]",
     "every deterioration began at its onset with nothing before it; the simulator then gained prodromes and "
     "sepsis's loss of heart-rate variability (see the data section), so these cohorts are not the ones above"),
    ("1.2.0 (committed before 1.3.0)", "logistic, unweighted; the same rule",
     "9001–9004 (160 patients, 156 events), simulator with prodromes, **without recurrences**",
     "0.794 vs 0.721: +0.073 [0.055, 0.092]", "1.11 vs 0.85 h: +0.26 [+0.11, +0.61]",
     "0.59 vs 0.66 h: −0.06 [−0.19, +0.11]",
     "every bed had at most one deterioration; the simulator then gained recurrences (see the data section) and "
     "indicator features stopped being standardised (see the model section), so these cohorts and this recipe are "
     "not the ones above"),
    ("1.3.0 (committed before 1.4.0)", "logistic, per-event+early; the same rule, candidates scored by "
     "leave-one-cohort-out within the training mix", "9001–9004 (160 patients, 181 events), the same held-out cohorts as 1.4.0",
     "0.777 vs 0.713: +0.065 [0.044, 0.086]", "1.00 vs 0.84 h: +0.16 [+0.06, +0.49]",
     "0.59 vs 0.63 h: −0.05 [−0.16, +0.10]",
     "within the training mix the logistic models always led at NEWS2 ≥ 7's rate; on the validation mix they did "
     "not (docs/models-experiments.md), so 1.4.0's candidates are scored there; its replication on 9005–9008 is in "
     "the replications table"),
]

# The same for the artifact model (targets: at least half of artefact alarms removed, no true high-priority event
# hidden), so that every held-out look is on record.
ART_HISTORY = [
    ("1.0.1 (committed before 1.1.0)", "simulator without prodromes", "0.968", "99.1 %", "477 of 600 (79.5 %)",
     "0", ""),
    ("1.1.0 (committed before 1.2.0)", "simulator with prodromes, without recurrences", "0.990 (the cap)", "96.5 %",
     "322 of 600 (53.7 %)", "0",
     "its threshold rule met three ambiguous alarms just after an artefact and one real alarm scored 1.000 because "
     "`hr_flatline_60s`, a rare indicator, was standardised to 222 standard deviations; both fixed in the recipe "
     "since (see the model section)"),
]


# Replications: a committed model, its manifest thresholds and this evaluation on fresh held-out cohorts, nothing
# trained or selected on them (models/experiments/replicate_heldout.py; pre-registered in docs/models-experiments.md).
REPLICATIONS = [
    ("1.3.0", "9005–9008, mix heldout (160 patients, 184 events), 2026-11-25",
     "0.793 vs 0.735: +0.058 [0.038, 0.077]", "1.62 vs 1.15 h: +0.47 [+0.23, +0.78]", "0.69 vs 0.79 h: −0.10",
     "1.79 vs 1.15 h: +0.64 [+0.35, +0.98]", "1.30 vs 0.79 h: +0.51 [+0.23, +0.73] (in alert 5.2 vs 3.3 %)"),
    ("1.4.0", "9009–9012, mix heldout (160 patients, 184 events), 2026-11-25",
     "0.773 vs 0.716: +0.057 [0.034, 0.079]", "1.59 vs 1.01 h: +0.58 [+0.30, +0.81]",
     "0.74 vs 0.59 h: +0.15 [+0.00, +0.27]", "1.56 vs 1.01 h: +0.56 [+0.27, +0.77]",
     "1.20 vs 0.59 h: +0.60 [+0.30, +0.84] (in alert 5.5 vs 3.9 %)"),
]
ART_REPLICATIONS = [
    ("1.2.0", "9005–9008, mix heldout, 2026-11-25", "0.500", "100.0 % of 30,623", "587 of 600 (97.8 %)", "0",
     "0 deteriorations hidden; 3 alarms during deteriorations held, all ambiguous; the model alone would hold 2 of "
     "18,281 hard-limit alarms during deteriorations (both ambiguous, under 7 s after a motion artefact ended), "
     "which the alarm manager never holds"),
    ("1.2.0", "9009–9012, mix heldout, 2026-11-25", "0.500", "100.0 % of 31,178", "581 of 600 (96.8 %)", "0",
     "0 deteriorations hidden; 7 of 71,140 alarms during deteriorations held; the model alone would hold 1 of "
     "21,418 hard-limit alarms during deteriorations (ambiguous: SpO2 80 %, 2 s after a motion artefact ended), "
     "which the alarm manager never holds"),
]


def _replications(rows, header, empty=""):
    if not rows:
        return empty
    return header + "".join("| " + " | ".join(r) + " |\n" for r in rows) + "\n"


def _det_replications():
    return _replications(REPLICATIONS, "Replications on fresh held-out cohorts (a model and its manifest thresholds "
                         "as committed, nothing trained or selected on them):\n\n| model | held-out seeds | AUROC vs NEWS2 | lead at "
                         "NEWS2 ≥ 5's rate of points in alert | at NEWS2 ≥ 7's | lead at NEWS2 ≥ 5's number of "
                         "alert onsets | at NEWS2 ≥ 7's |\n|---|---|---|---|---|---|---|\n")


def _art_replications():
    return _replications(ART_REPLICATIONS, "Replications on fresh held-out cohorts (a model and its threshold as "
                         "committed):\n\n| model | cohorts | threshold | artefact alarms held back | artefact "
                         "episodes silenced | true high-priority events hidden | note |\n"
                         "|---|---|---|---:|---:|---:|---|\n")


def _art_history():
    rows = "".join(f"| {a} | {b} | {c} | {d} | {e} | {f} | {g} |\n" for a, b, c, d, e, f, g in ART_HISTORY)
    return ("Held-out results of the earlier versions:\n\n| model | cohorts | threshold | artefact alarms held back | "
            "artefact episodes silenced (motion, probe-off) | true high-priority events hidden | note |\n"
            "|---|---|---|---:|---:|---:|---|\n" + rows + "\n")


def _history():
    rows = "".join(f"| {a} | {b} | {c} | {d} | {e} | {f} | {g} |\n" for a, b, c, d, e, f, g in HISTORY)
    return ("Held-out results of the earlier attempts (median lead over all events, model vs NEWS2 at the same alert "
            "rate; differences with 95 % CIs):\n\n| model | recipe | held-out seeds | AUROC vs NEWS2 | lead at NEWS2 ≥ 5's "
            "rate | lead at NEWS2 ≥ 7's rate | note |\n|---|---|---|---|---|---|---|\n" + rows + "\n")


def _selection_method(common):
    va = common["validation"]
    return (f"candidates fitted on the training cohorts (seeds {', '.join(str(s) for s, _ in common['train'])}), "
            f"scored on each validation cohort (seeds {va[0][0]}–{va[-1][0]}, mix `{va[0][1]}`) and averaged")


def candidates_table(m, common):
    """The deterioration candidates and what each measured on the validation cohorts (never the held-out ones)."""
    rows = []
    for name, r in m["selection"]:
        arch, scheme = name.split(", ")
        mark = " **(chosen)**" if (arch, scheme) == (m["choice"], m["weights"]) else ""
        rows.append(f"| {arch} | {scheme}{mark} | {r['auroc']:.3f} | {r['auroc_news2']:.3f} | {r['auprc']:.3f} | "
                    f"{r['lead5_model']:.2f} vs {r['lead5_news2']:.2f} h | {r['lead7_model']:.2f} vs {r['lead7_news2']:.2f} h | "
                    f"{r['saturated']:.2%} |\n")
    weights = "".join(f"- `{k}`: {v}.\n" for k, v in m["weights_doc"].items())
    return ("| model | training weights | AUROC | NEWS2 AUROC | AUPRC | median lead at NEWS2 ≥ 5's alert rate, model vs "
            "NEWS2 | the same at NEWS2 ≥ 7's | points at p = 1.0 (float32) |\n|---|---|---:|---:|---:|---:|---:|---:|\n" + "".join(rows) +
            "\nMeans over the " + str(len(common["validation"])) + " validation cohorts: "
            + _selection_method(common) + " (lead times over all events, missed = 0 h, at that cohort's NEWS2 alert "
            "rates). Architectures: `logistic` is logistic regression (C = 1); `mlp` is a ReLU MLP with hidden layers "
            "(32, 16) and L2 penalty 0.001 (as in every version before 1.4.0); `mlp (16) L2 a` has one hidden layer "
            "of 16 and L2 penalty a. Weights:\n\n" + weights +
            "\nSelection rule (its AUROC and lead-time parts fixed before any held-out look; the saturation condition added "
            "after 1.1.0's first run; scoring on the validation mix instead of leave-one-cohort-out within the "
            "training mix, and the (16) MLPs, since 1.4.0, pre-registered in docs/models-experiments.md; see the "
            "history below): " + " ".join(m["selection_rule"].split()) + "\n\n")


def model_card(kind, m, manifest, common):
    e = m["eval"]
    names = manifest["features"]
    feat_rows = "".join(f"| {i} | `{f['name']}` | {f['unit']} |\n" for i, f in enumerate(names))
    sel = "" if kind == "deterioration" else "".join(f"| {n} | {a:.3f} | {p:.3f} |\n" for n, a, p in m["selection"])
    s = [f"# Model card: {manifest['name']} {manifest['version']}\n\n", SIM_WARNING, "\n"]
    if kind == "deterioration":
        s.append(
            "## Intended use\n\nOn the edge, once a minute per monitored bed: the probability that the patient's "
            f"labelled deterioration (sepsis, respiratory failure on oxygen, hypovolaemia) reaches its peak within "
            f"the next **{m['horizon_h']:g} h**, from the last 4 h of vital signs. Above the decision threshold "
            f"({m['threshold']:.4f}, NEWS2 ≥ 5's alert rate on the training cohorts) the nurse station flags the risk; "
            f"above the alarm threshold ({m['alarm_threshold']:.4f}, NEWS2 ≥ 7's alert rate) for a few rounds in a row "
            f"the edge raises a medium-priority alarm with reasons, unless the patient's NEWS2 response alarm already "
            f"sounds. It complements NEWS2; "
            "it never replaces NEWS2 or clinical judgement.\n\n")
        s.append("## Outcome and time points\n\nEvent time = the label's `peak_at` (full effect first reached). Every "
                 f"{m['step_min']} min per bed from 2 h after the cohort start, a time point is positive when a peak "
                 f"follows within {m['horizon_h']:g} h. Time points from a peak to the end of the episode's recovery "
                 f"are not scored (the event is under way); points whose {m['horizon_h']:g}-h outcome window runs past "
                 "the end of the cohort are not used for AUROC/AUPRC (they count for lead times only).\n\n")
    else:
        s.append(
            "## Intended use\n\nOn the edge, when a threshold condition on ECG heart rate, oximeter pulse rate, SpO2 "
            "or respiratory rate is about to be announced: the probability that the queried signal's newest samples "
            f"are implausible as physiology (motion artefact, probe off). Above the decision threshold "
            f"({m['threshold']:.3f}) the alarm manager may hold the threshold alarm back — never a high-priority alarm "
            "from an independent parameter (that rule belongs to the alarm manager). Blood pressure and temperature "
            "alarms are not judged.\n\n")
        s.append("## Labels\n\nA query (bed, time, signal) is positive when the time lies within a labelled motion "
                 "artefact (signals HR, pulse rate, SpO2) or probe-off (pulse rate, SpO2). Queries in the 10 s after "
                 "an artefact ends are left out of training (the recent window still holds disturbed samples). "
                 "Training queries: every naive threshold alarm, a probe every 30 min per bed and every 5 s within "
                 "labelled disturbances, each asked about all four signals.\n\n")
    s.append("## Data\n\n" + _data_section(common))
    s.append(f"Training rows: {m['n_train']} ({m['pos_train']} positive).\n\n")
    s.append("## Inputs\n\n`features`: float32 [batch, " + str(len(names)) + "] in this order (definitions in `"
             + manifest["feature_extraction"] + "`, mirrored by `models/features.py`); output `probability`: float32 "
             "[batch, 1].\n\n| # | name | unit |\n|---:|---|---|\n" + feat_rows + "\n")
    s.append(f"## Model\n\n{manifest['architecture']} on standardised features (the standardisation is folded into "
             f"the first layer's weights, so the ONNX graph takes raw features), opset 17, ops {', '.join(manifest['onnx_ops'])}; sha256 `{manifest['sha256']}`. "
             "Indicator features (every training value 0 or 1) are not standardised: a rare indicator's standard "
             "deviation is tiny, and dividing by it turned a single 1 into hundreds of standard deviations, far "
             "outside what training constrains. ")
    if kind == "deterioration":
        s.append(f"Training weights: {m['weights']} ({m['weights_doc'][m['weights']]}). The output is a risk score "
                 "for ranking and thresholding, not a calibrated probability (weighted training shifts it). Fitted on the "
                 "training cohorts and chosen on the validation cohorts:\n\n" + candidates_table(m, common)
                 + _history())
    else:
        s.append("Chosen on the validation cohort (seed 103; then refitted on all training cohorts):\n\n"
                 "| candidate | validation AUROC | validation AUPRC |\n|---|---:|---:|\n" + sel + "\n"
                 "Threshold rule: at least 0.5, and 0.01 above every training alarm raised during a labelled "
                 "deterioration (capped at 0.99), leaving out, as training does, the ambiguous alarms in the 10 s "
                 "after an artefact ended.\n\n" + _art_history())
    s.append("## Held-out evaluation\n\n")
    if kind == "deterioration":
        s.append(f"{e['patients']} patients, {e['points']} time points ({e['positives']} positive), {e['events']} "
                 f"deteriorations ({', '.join(f'{k} {v}' for k, v in sorted(e['event_kinds'].items()))}). NEWS2 is "
                 "computed from the same minute bins at the same time points (feature `news2_total`).\n\n")
        s.append(det_tables(e) + "\nTargets (issue 5):\n\n" + _targets_det(e) + "\n" + _onset_det(e) + "\n"
                 + _det_replications())
    else:
        s.append(art_tables(e) + "\nTargets (issue 5):\n\n" + _targets_art(e) + "\n" + _art_replications())
    s.append("## Limits\n\n"
             "- Simulated patients follow a handful of textbook scenario shapes; real deteriorations, artefacts and "
             "wards are far more varied. Numbers here say the pipeline works, not that the model helps patients.\n"
             "- The cohorts are small (tens of labelled events); confidence intervals are wide.\n"
             "- The prodromes and the loss of heart-rate variability in sepsis are the simulator's assumptions, drawn "
             "from published observations but with magnitudes and shares chosen by the Wardwatch team. Whatever the "
             "model gains over NEWS2 from them holds only as far as real patients show the same; on the simulator "
             "without them the committed 1.1.1 gained +0.047 AUROC (history table).\n"
             "- At most one recurrence per bed, of the same kind, 2–24 h after the first episode; real patients "
             "relapse in more ways.\n"
             "- The simulator has no flatline artefacts, drifting sensors, arrhythmias, medication effects or missing "
             "devices beyond probe-off: the model has not learnt them. A flat heart rate is not an artefact by itself "
             "(a paced rhythm, or a sepsis's low heart-rate variability holding the monitor's integer heart rate for "
             "a minute); the simulator almost never produces one, so the artifact model has seen very few "
             "(docs/models-experiments.md).\n")
    if kind == "deterioration":
        s.append("- NEWS2 here is computed from minute bins with the engine's freshness rules; it can differ from the "
                 "engine's per-sample NEWS2 by a minute's worth of data.\n")
        s.append("- The validation mix that chose this model was composed after two held-out looks had shown where "
                 "the earlier model fell short (respiratory failures at NEWS2 ≥ 7's rate), and lies between the "
                 "training and the held-out mix. So the choice used knowledge of the held-out mix, though none of "
                 "its cohorts; fresh held-out seeds (the replication table) are the guard against that, and they "
                 "share the held-out mix. A ward whose case mix differs from all three is untested.\n")
    else:
        s.append("- Naive alarms (every threshold entry, flags ignored) are the denominator; the engine already drops "
                 "flagged samples, so the unflagged row is the part the model adds.\n")
    return "".join(s)


def evaluation_doc(models, common, golden):
    d, a = models["deterioration"], models["artifact"]
    s = ["# Model evaluation on held-out simulated cohorts (issue 5)\n\n", SIM_WARNING.replace("this model has", "these models have"), "\n",
         "Command (CPU only; the first run also builds `export_cohort` in release, which can take ~10 min on 2 cores):\n\n"
         "```sh\npip install -r models/requirements.txt\npython models/train.py --out models/\n```\n\n",
         (f"Run {common['created']}: {common['elapsed_s']:.0f} s in all on the shared 2-core machine, of which "
          f"{common['export_s']:.0f} s building and running the exporter and loading the cohorts. "
          if not common.get("reused_cohorts") else
          f"Run {common['created']} with `--reuse-cohorts` (cohorts from an earlier export, so no timing is claimed). "),
         "The pipeline is deterministic given the seeds (simulator, training and bootstrap seeds are fixed).\n\n",
         "## Data\n\n", _data_section(common),
         "## Deterioration model\n\n",
         f"`wardwatch-deterioration` {common['versions']['deterioration']} predicts a labelled deterioration peak "
         f"within **{d['horizon_h']:g} h** from the last 4 h of vital signs ({d['choice']}, {d['weights']} training "
         f"weights; see `models/deterioration/MODEL_CARD.md`). Held-out: {d['eval']['patients']} patients, "
         f"{d['eval']['points']} time points every {d['step_min']} min, {d['eval']['events']} deteriorations. NEWS2 "
         "is computed on the same patients and time points.\n\n",
         det_tables(d["eval"]), "\nTargets:\n\n", _targets_det(d["eval"]), "\n", _onset_det(d["eval"]), "\n",
         _det_replications(),
         "How to read it: sensitivity is the share of positive time points (a peak within the horizon) that alert; "
         "lead time is from the first alert after the deterioration began (its prodrome's start, if any) to its peak, "
         "on the 10-min grid. The model "
         "threshold in the \"same alert rate\" rows is set on the held-out points to match the NEWS2 rule's alert rate "
         "(a matched comparison); the manifest's threshold was fixed on the training cohorts. The confidence "
         "interval of a lead-time difference resamples patients (with their deteriorations) and keeps both "
         "thresholds fixed; lead times move in 10-min steps, so a difference of one step is within noise unless its "
         "interval says otherwise.\n\n",
         f"### What was tried for version {common['versions']['deterioration']}\n\n"
         "Candidates differ in architecture and in training weights meant to reward early warning; each was fitted "
         "on the training cohorts and scored on the validation cohorts only (the held-out cohorts report the chosen "
         "model, nothing else):\n\n",
         candidates_table(d, common), _history(),
         "## Artifact model\n\n",
         f"Judges the two minutes before every naive threshold alarm on HR, pulse rate, SpO2 and RR ({a['choice']}; "
         f"threshold {a['threshold']:.3f}; see `models/artifact/MODEL_CARD.md`).\n\n",
         art_tables(a["eval"]), "\nTargets:\n\n", _targets_art(a["eval"]), "\n", _art_replications(), _art_history(),
         "## Parity\n\n",
         f"`models/golden/deterioration.json` ({golden['deterioration']} vectors) and `models/golden/artifact.json` "
         f"({golden['artifact']} vectors) hold raw sample windows, the features Python computed from them and the "
         "onnxruntime probability. `edge/tests/ml_golden.rs` feeds the same samples through `BedBuffer` and checks "
         "every feature within 1e-5 (relative above 1). The probabilities are there for the tract inference crate's "
         "model-output parity test.\n"]
    return "".join(s)
