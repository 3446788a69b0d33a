"""Generating and reading simulated cohorts (tests/src/bin/export_cohort.rs) and turning them into datasets.

Simulated data only: every patient, sample and label comes from the Wardwatch ward simulator.
"""

from __future__ import annotations

import bisect
import csv
import json
import os
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np

import features as F


def _matches(out: str, beds: int, hours: int, seed: int, mix: str):
    meta_path = os.path.join(out, "meta.json")
    if not os.path.exists(meta_path):
        return None
    with open(meta_path) as fh:
        meta = json.load(fh)
    if (meta.get("beds"), meta.get("hours"), meta.get("seed"), meta.get("mix_name")) == (beds, hours, seed, mix):
        return meta
    return None


def export_all(repo: str, target_dir: str, jobs: list[tuple[str, int, int, int, str]], log, parallel: int = 2,
               reuse: bool = False) -> None:
    """Builds the Rust exporter (`cargo build --release --target-dir <target_dir> -p wardwatch --bin export_cohort`)
    and runs it for every (out, beds, hours, seed, mix) not already exported, `parallel` at a time."""
    todo = [j for j in jobs if not reuse or _matches(*j) is None]
    for j in jobs:
        if j not in todo:
            log(f"  {j[0]}: reusing existing export")
    running = []
    t = time.time()
    if todo:
        # Build once up front, then run the binary itself: parallel `cargo run`s would race to build it.
        subprocess.run(["cargo", "build", "--quiet", "--release", "--target-dir", target_dir, "-p", "wardwatch",
                        "--bin", "export_cohort"], cwd=repo, check=True)
        log(f"  export_cohort built ({time.time() - t:.0f} s)")
    while todo or running:
        while todo and len(running) < parallel:
            out, beds, hours, seed, mix = todo.pop(0)
            cmd = [
                os.path.join(target_dir, "release", "export_cohort"),
                "--beds", str(beds), "--hours", str(hours), "--seed", str(seed), "--mix", mix,
                "--out", os.path.abspath(out),
            ]
            running.append((out, subprocess.Popen(cmd, cwd=repo)))
        still = []
        for out, p in running:
            rc = p.poll()
            if rc is None:
                still.append((out, p))
            elif rc != 0:
                raise SystemExit(f"export_cohort failed for {out} (exit {rc})")
            else:
                log(f"  {out}: exported ({time.time() - t:.0f} s since start)")
        running = still
        time.sleep(0.5)


@dataclass
class Cohort:
    name: str
    meta: dict
    scale2: np.ndarray  # (beds,) bool, index bed-1
    patient_ids: list[str]
    labels: list[dict]
    minutes: np.ndarray  # columns bed, code, minute, value, at, n, n_valid, n_artifact, n_sensor_off
    raw: dict = field(default_factory=dict)  # (bed, code) -> (at[], value[], valid[])
    alarms: list[dict] = field(default_factory=list)
    probes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def beds(self) -> int:
        return int(self.meta["beds"])

    @property
    def start(self) -> int:
        return int(self.meta["start_unix_ms"])

    @property
    def end(self) -> int:
        return int(self.meta["end_unix_ms"])


def _opt_int(s: str):
    return int(s) if s != "" else None


def load(name: str, path: str) -> Cohort:
    with open(os.path.join(path, "meta.json")) as fh:
        meta = json.load(fh)
    beds = int(meta["beds"])
    scale2 = np.zeros(beds, dtype=bool)
    pids = [""] * beds
    with open(os.path.join(path, "patients.csv")) as fh:
        for r in csv.DictReader(fh):
            scale2[int(r["bed"]) - 1] = r["spo2_scale_2"] == "1"
            pids[int(r["bed"]) - 1] = r["patient_id"]
    labels = []
    with open(os.path.join(path, "labels.csv")) as fh:
        for r in csv.DictReader(fh):
            labels.append({
                "bed": int(r["bed"]),
                "kind": r["kind"],
                "is_deterioration": r["is_deterioration"] == "1",
                "began": int(r["began_at_unix_ms"]),
                "ended": _opt_int(r["ended_at_unix_ms"]),
                "peak": _opt_int(r["peak_at_unix_ms"]),
                "onset": _opt_int(r["onset_at_unix_ms"]),
                "should_alarm": r["should_alarm"] == "1",
                "expected_priority": r["expected_priority"],
                "device_flagged": r["device_flagged"],
                "description": r["description"],
            })
    minutes = np.loadtxt(os.path.join(path, "minutes.csv"), delimiter=",", skiprows=1, ndmin=2)
    raw_rows = np.loadtxt(os.path.join(path, "raw.csv"), delimiter=",", skiprows=1, ndmin=2)
    raw: dict = {}
    if raw_rows.size:
        order = np.lexsort((raw_rows[:, 2], raw_rows[:, 1], raw_rows[:, 0]))
        raw_rows = raw_rows[order]
        keys = raw_rows[:, 0].astype(np.int64) * 1_000_000 + raw_rows[:, 1].astype(np.int64)
        splits = np.flatnonzero(np.diff(keys)) + 1
        for chunk in np.split(raw_rows, splits):
            bed, code = int(chunk[0, 0]), int(chunk[0, 1])
            raw[(bed, code)] = (
                chunk[:, 2].astype(np.int64).tolist(),
                chunk[:, 3].tolist(),
                [F.valid(int(q)) for q in chunk[:, 4]],
            )
    alarms = []
    with open(os.path.join(path, "alarms.csv")) as fh:
        for r in csv.DictReader(fh):
            alarms.append({
                "bed": int(r["bed"]), "at": int(r["at_unix_ms"]), "param": r["param"], "code": int(r["code"]),
                "value": float(r["value"]), "flags": int(r["flags"]), "hard": r["hard"] == "1",
            })
    probes = []
    with open(os.path.join(path, "probes.csv")) as fh:
        for r in csv.DictReader(fh):
            probes.append((int(r["bed"]), int(r["at_unix_ms"])))
    return Cohort(name, meta, scale2, pids, labels, minutes, raw, alarms, probes)


# ---------------------------------------------------------------------------------------------------------------
# Deterioration dataset


@dataclass
class DetData:
    X: np.ndarray
    y: np.ndarray  # deterioration peak within the horizon
    bed: np.ndarray
    t: np.ndarray
    group: np.ndarray  # patient id across cohorts (cohort index * 10000 + bed)
    in_main: np.ndarray  # outcome window fully observed (t + horizon <= end)
    events: list  # (group, began, peak) of deteriorations


def deterioration_dataset(c: Cohort, cohort_index: int, horizon_h: float, step_min: int = 10,
                          warmup_h: float = 2.0) -> DetData:
    m0 = c.start // F.MINUTE_MS
    T = (c.end - c.start) // F.MINUTE_MS + 2
    pad = F.W
    beds = c.beds
    vals = np.full((8, beds, T + pad), np.nan)
    at_hr = np.zeros((beds, T + pad), dtype=np.int64)
    at_pr = np.zeros((beds, T + pad), dtype=np.int64)
    n_all = np.zeros((beds, T + pad), dtype=np.int64)
    n_valid = np.zeros((beds, T + pad), dtype=np.int64)
    M = c.minutes
    b = M[:, 0].astype(np.int64) - 1
    s = np.array([F.SIGNAL_INDEX[int(x)] for x in M[:, 1]])
    col = M[:, 2].astype(np.int64) - m0 + pad
    ok = (col >= 0) & (col < T + pad)
    b, s, col, Mk = b[ok], s[ok], col[ok], M[ok]
    vals[s, b, col] = Mk[:, 3]
    hr, pr = s == F.SIGNAL_INDEX[F.HR], s == F.SIGNAL_INDEX[F.PR]
    at_hr[b[hr], col[hr]] = Mk[hr, 4].astype(np.int64)
    at_pr[b[pr], col[pr]] = Mk[pr, 4].astype(np.int64)
    q = hr | pr | (s == F.SIGNAL_INDEX[F.SPO2])
    np.add.at(n_all, (b[q], col[q]), Mk[q, 5].astype(np.int64))
    np.add.at(n_valid, (b[q], col[q]), Mk[q, 6].astype(np.int64))
    # Last-hour sums ending at each column (exclusive of the current minute handled by the window indexing).
    cs_all = np.concatenate([np.zeros((beds, 1), dtype=np.int64), np.cumsum(n_all, axis=1)], axis=1)
    cs_val = np.concatenate([np.zeros((beds, 1), dtype=np.int64), np.cumsum(n_valid, axis=1)], axis=1)

    step = step_min * F.MINUTE_MS
    first = c.start + int(warmup_h * 3_600_000)
    times = np.arange(first, c.end + 1, step, dtype=np.int64)
    horizon_ms = int(horizon_h * 3_600_000)
    dets = [l for l in c.labels if l["is_deterioration"] and l["peak"] is not None]
    Xs, ys, bs, ts, mains = [], [], [], [], []
    k = np.arange(F.W)
    for bed in range(beds):
        bl = [l for l in dets if l["bed"] == bed + 1]
        keep = np.ones(len(times), dtype=bool)
        y = np.zeros(len(times), dtype=bool)
        for l in bl:
            ended = l["ended"] if l["ended"] is not None else c.end
            keep &= ~((times >= l["peak"]) & (times <= ended))  # in or recovering from the event: not scored
            y |= (l["peak"] > times) & (l["peak"] <= times + horizon_ms)
        tt = times[keep]
        if len(tt) == 0:
            continue
        cur = tt // F.MINUTE_MS - m0 + pad  # column of the minute containing now
        idx = cur[:, None] - F.W + k[None, :]
        win = vals[:, bed, :][:, idx]  # (8, n, W)
        na = cs_all[bed, cur] - cs_all[bed, cur - 60]
        nv = cs_val[bed, cur] - cs_val[bed, cur - 60]
        X = F.deterioration_features(win, at_hr[bed][idx], at_pr[bed][idx], na, nv,
                                     np.full(len(tt), bool(c.scale2[bed])))
        Xs.append(X)
        ys.append(y[keep])
        bs.append(np.full(len(tt), bed + 1))
        ts.append(tt)
        mains.append(tt + horizon_ms <= c.end)
    bed_arr = np.concatenate(bs)
    return DetData(
        X=np.concatenate(Xs), y=np.concatenate(ys), bed=bed_arr, t=np.concatenate(ts),
        group=cohort_index * 10000 + bed_arr, in_main=np.concatenate(mains),
        events=[(cohort_index * 10000 + l["bed"], l["began"], l["peak"], l["kind"]) for l in dets
                if l["peak"] <= c.end and l["peak"] >= first],
    )


# ---------------------------------------------------------------------------------------------------------------
# Artifact dataset

# Which continuous signals each disturbance makes implausible (the simulator's scenarios module).
AFFECTED = {"motion_artifact": {F.HR, F.PR, F.SPO2}, "probe_off": {F.PR, F.SPO2}}


@dataclass
class ArtData:
    X: np.ndarray
    y: np.ndarray  # the query signal's newest sample lies within a labelled artefact that affects it
    ambiguous: np.ndarray  # within 10 s after an artefact ended (excluded from training)
    bed: np.ndarray
    t: np.ndarray
    code: np.ndarray
    source: np.ndarray  # 0 alarm, 1 probe
    alarm_index: np.ndarray  # index into cohort.alarms for alarm queries, -1 otherwise
    group: np.ndarray


def _window(c: Cohort, bed: int, t: int) -> dict:
    out = {}
    for code in F.CONTINUOUS:
        r = c.raw.get((bed, code))
        if r is None:
            out[code] = []
            continue
        ats, vs, oks = r
        lo = bisect.bisect_right(ats, t - F.ARTIFACT_WINDOW_MS)
        hi = bisect.bisect_right(ats, t)
        # The edge's ring holds the newest RAW_CAPACITY samples; at 1 Hz the 2-min window never reaches it.
        lo = max(lo, hi - F.RAW_CAPACITY)
        out[code] = list(zip(ats[lo:hi], vs[lo:hi], oks[lo:hi]))
    return out


def artifact_label(c: Cohort, bed: int, t: int, code: int) -> tuple[bool, bool]:
    pos = amb = False
    for l in c.labels:
        if l["bed"] != bed or l["kind"] not in AFFECTED or code not in AFFECTED[l["kind"]]:
            continue
        ended = l["ended"] if l["ended"] is not None else c.end
        if l["began"] <= t < ended:
            pos = True
        elif ended <= t < ended + F.RECENT_MS:
            amb = True
    return pos, amb and not pos


def artifact_dataset(c: Cohort, cohort_index: int, include_probes: bool = True) -> ArtData:
    queries = []  # (bed, t, code, source, alarm_index)
    for i, a in enumerate(c.alarms):
        if a["code"] in F.CONTINUOUS:
            queries.append((a["bed"], a["at"], a["code"], 0, i))
    if include_probes:
        for bed, t in c.probes:
            for code in F.CONTINUOUS:
                queries.append((bed, t, code, 1, -1))
    block_cache: dict = {}
    rows, ys, ambs = [], [], []
    labels_by_bed: dict = {}
    for l in c.labels:
        labels_by_bed.setdefault(l["bed"], []).append(l)
    for bed, t, code, _, _ in queries:
        key = (bed, t)
        blocks = block_cache.get(key)
        if blocks is None:
            blocks = F.artifact_blocks(_window(c, bed, t), t)
            block_cache[key] = blocks
        rows.append(F.artifact_features_from_blocks(blocks, F.CONTINUOUS.index(code)))
        pos, amb = artifact_label(c, bed, t, code)
        ys.append(pos)
        ambs.append(amb)
    q = np.array(queries, dtype=np.int64).reshape(-1, 5)
    return ArtData(
        X=np.array(rows, dtype=np.float32).reshape(-1, len(F.ARTIFACT_FEATURES)),
        y=np.array(ys, dtype=bool), ambiguous=np.array(ambs, dtype=bool),
        bed=q[:, 0], t=q[:, 1], code=q[:, 2], source=q[:, 3], alarm_index=q[:, 4],
        group=cohort_index * 10000 + q[:, 0],
    )
