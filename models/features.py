"""Feature extraction, exactly as the edge computes it (edge/src/ml/{buffer,deterioration,artifact}.rs).

Every definition here mirrors the Rust module; golden vectors written by train.py (models/golden/*.json) are
checked against Rust in edge/tests/ml_golden.rs, so a change on one side only fails CI.

Simulated data only: the cohorts these features are computed from come from the Wardwatch ward simulator.
"""

from __future__ import annotations

import math

import numpy as np

# Signal codes (MDC; Wardwatch private codes for ACVPU and air-or-oxygen), in the Rust `Signal` index order.
HR, PR, RR, SPO2, TEMP, SBP, ACVPU, O2 = 147842, 149530, 151562, 150456, 150364, 150021, (2 << 16) | 0xF000, (2 << 16) | 0xF001
MDC_TEMP = 150344
SIGNALS = [HR, PR, RR, SPO2, TEMP, SBP, ACVPU, O2]
SIGNAL_INDEX = {c: i for i, c in enumerate(SIGNALS)}
SIGNAL_INDEX[MDC_TEMP] = SIGNAL_INDEX[TEMP]
# The artifact model's continuous signals, in feature-block order (Rust `ContinuousSignal`).
CONTINUOUS = [HR, PR, SPO2, RR]
QUERY_NAMES = ["hr", "pr", "spo2", "rr"]

FLAG_ARTIFACT, FLAG_SENSOR_OFF = 1, 2
MINUTE_MS = 60_000
W = 240  # deterioration window, minutes
RAW_CAPACITY = 128
ARTIFACT_WINDOW_MS = 120_000
RECENT_MS = 10_000
FLATLINE_MS = 60_000
FLATLINE_MIN_SAMPLES = 30


def valid(flags: int) -> bool:
    return (flags & (FLAG_ARTIFACT | FLAG_SENSOR_OFF)) == 0


# ---------------------------------------------------------------------------------------------------------------
# Feature names and units (the same tables as DETERIORATION_FEATURES / ARTIFACT_FEATURES in Rust).

def _level_block(p: str, unit: str) -> list[tuple[str, str]]:
    return [
        (f"{p}_last", unit),
        (f"{p}_mean_1h", unit),
        (f"{p}_delta", unit),
        (f"{p}_slope_1h", f"{unit}/h"),
        (f"{p}_slope_4h", f"{unit}/h"),
        (f"{p}_std_1h", unit),
        (f"{p}_missing", "1"),
    ]


DETERIORATION_FEATURES: list[tuple[str, str]] = (
    _level_block("hr", "/min")
    + _level_block("rr", "/min")
    + _level_block("spo2", "%")
    + _level_block("temp", "Cel")
    + _level_block("sbp", "mm[Hg]")
    + [
        ("hr_max_1h", "/min"),
        ("rr_max_1h", "/min"),
        ("spo2_min_1h", "%"),
        ("news2_rr", "1"),
        ("news2_spo2", "1"),
        ("news2_air_o2", "1"),
        ("news2_sbp", "1"),
        ("news2_pulse", "1"),
        ("news2_acvpu", "1"),
        ("news2_temp", "1"),
        ("news2_total", "1"),
        ("news2_missing", "1"),
        ("news2_delta_1h", "1"),
        ("on_oxygen", "1"),
        ("spo2_scale_2", "1"),
        ("acvpu_not_alert", "1"),
        ("flagged_share_1h", "1"),
    ]
)
assert len(DETERIORATION_FEATURES) == 52


def _signal_block(p: str, unit: str) -> list[tuple[str, str]]:
    return [
        (f"{p}_jump", unit),
        (f"{p}_max_dev", unit),
        (f"{p}_recent_std", unit),
        (f"{p}_max_step", unit),
        (f"{p}_baseline_mad", unit),
        (f"{p}_flagged_recent", "1"),
        (f"{p}_flagged_baseline", "1"),
        (f"{p}_zero_recent", "1"),
        (f"{p}_missing_recent", "1"),
        (f"{p}_flatline_60s", "1"),
    ]


ARTIFACT_FEATURES: list[tuple[str, str]] = (
    _signal_block("hr", "/min")
    + _signal_block("pr", "/min")
    + _signal_block("spo2", "%")
    + _signal_block("rr", "/min")
    + [
        ("hr_pr_gap_recent", "/min"),
        ("hr_pr_gap_baseline", "/min"),
        ("hr_pr_jump_gap", "/min"),
        ("query_hr", "1"),
        ("query_pr", "1"),
        ("query_spo2", "1"),
        ("query_rr", "1"),
        ("query_jump_z", "1"),
        ("query_newest_flagged", "1"),
    ]
)
assert len(ARTIFACT_FEATURES) == 49

# ---------------------------------------------------------------------------------------------------------------
# NEWS2 chart (RCP 2017), as edge/src/clinical/news2.rs: round half away from zero (1e-9 tolerance) first.


def _round_half_away(x: np.ndarray) -> np.ndarray:
    y = x + np.sign(x) * 1e-9
    return np.sign(y) * np.floor(np.abs(y) + 0.5)


def sub_rr(x):
    r = _round_half_away(x)
    return np.select([r <= 8, r <= 11, r <= 20, r <= 24], [3, 1, 0, 2], 3)


def sub_spo2(x, scale2, on_o2):
    s = _round_half_away(x)
    s1 = np.select([s <= 91, s <= 93, s <= 95], [3, 2, 1], 0)
    s2 = np.select(
        [s <= 83, s <= 85, s <= 87, s <= 92, ~on_o2, s <= 94, s <= 96],
        [3, 2, 1, 0, 0, 1, 2],
        3,
    )
    return np.where(scale2, s2, s1)


def sub_sbp(x):
    r = _round_half_away(x)
    return np.select([r <= 90, r <= 100, r <= 110, r <= 219], [3, 2, 1, 0], 3)


def sub_pulse(x):
    r = _round_half_away(x)
    return np.select([r <= 40, r <= 50, r <= 90, r <= 110, r <= 130], [3, 1, 0, 1, 2], 3)


def sub_temp(x):
    r = _round_half_away(x * 10.0)
    return np.select([r <= 350, r <= 360, r <= 380, r <= 390], [3, 1, 0, 1], 2)


# ---------------------------------------------------------------------------------------------------------------
# Deterioration features over windows of minute bins.

DEFAULTS = [80.0, 16.0, 96.0, 37.0, 120.0]
LEVELS = [HR, RR, SPO2, TEMP, SBP]
FRESH_VITALS, FRESH_BP, FRESH_LONG = 15, 60, 240
_X = (np.arange(W, dtype=np.float64) - (W - 1)) / 60.0


def _masked_mean(y, lo, hi):
    seg = y[:, lo:hi]
    m = ~np.isnan(seg)
    cnt = m.sum(axis=1)
    s = np.where(m, seg, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / cnt
    return mean, cnt


def _masked_std(y, lo, hi):
    seg = y[:, lo:hi]
    m = ~np.isnan(seg)
    mean, cnt = _masked_mean(y, lo, hi)
    d = np.where(m, seg - mean[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt((d * d).sum(axis=1) / cnt)
    return np.where(cnt >= 2, sd, 0.0)


def _slope(y, lo, hi):
    return masked_slope(y[:, lo:hi], _X[lo:hi][None, :])


def masked_slope(seg, x):
    """Least-squares slope of each row of `seg` (NaN = missing) against positions `x` (broadcast to `seg`);
    0 where fewer than 3 values or no spread."""
    m = ~np.isnan(seg)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.where(m, x, 0.0).sum(axis=1) / cnt
        my = np.where(m, seg, 0.0).sum(axis=1) / cnt
        dx = np.where(m, x - mx[:, None], 0.0)
        dy = np.where(m, seg - my[:, None], 0.0)
        sxy = (dx * dy).sum(axis=1)
        sxx = (dx * dx).sum(axis=1)
        sl = sxy / sxx
    return np.where((cnt >= 3) & (sxx > 0), sl, 0.0)


def _extreme(y, lo, hi, is_max):
    seg = y[:, lo:hi]
    m = ~np.isnan(seg)
    fill = -np.inf if is_max else np.inf
    v = np.where(m, seg, fill)
    e = v.max(axis=1) if is_max else v.min(axis=1)
    return np.where(m.any(axis=1), e, np.nan)


def _newest(y, end, fresh):
    """(has, k) of the newest valid bin in [end + 1 - fresh, end]."""
    lo = max(end + 1 - fresh, 0)
    seg = ~np.isnan(y[:, lo : end + 1])
    rev = seg[:, ::-1]
    has = rev.any(axis=1)
    k = end - rev.argmax(axis=1)
    return has, k


def _take(y, k):
    return y[np.arange(y.shape[0]), k]


def _news2_at(vals, at_hr, at_pr, end, scale2):
    """Sub-scores (n, 7) and present flags (n, 7) as of bin `end`."""
    n = vals.shape[1]
    sub = np.zeros((n, 7))
    present = np.zeros((n, 7), dtype=bool)

    def v(code, fresh):
        y = vals[SIGNAL_INDEX[code]]
        has, k = _newest(y, end, fresh)
        return has, _take(y, k), k

    has_o2, o2, _ = v(O2, FRESH_LONG)
    on_o2 = has_o2 & (o2 >= 0.5)
    has, x, _ = v(RR, FRESH_VITALS)
    sub[:, 0] = np.where(has, sub_rr(np.nan_to_num(x)), 0)
    present[:, 0] = has
    has, x, _ = v(SPO2, FRESH_VITALS)
    sub[:, 1] = np.where(has, sub_spo2(np.nan_to_num(x), scale2, on_o2), 0)
    present[:, 1] = has
    sub[:, 2] = np.where(has_o2, np.where(o2 >= 0.5, 2, 0), 0)
    present[:, 2] = has_o2
    has, x, _ = v(SBP, FRESH_BP)
    sub[:, 3] = np.where(has, sub_sbp(np.nan_to_num(x)), 0)
    present[:, 3] = has
    has_h, h, kh = v(HR, FRESH_VITALS)
    has_p, p, kp = v(PR, FRESH_VITALS)
    th = _take(at_hr, kh)
    tp = _take(at_pr, kp)
    pulse = np.where(has_h & has_p, np.where(th > tp, h, p), np.where(has_h, h, p))
    has = has_h | has_p
    sub[:, 4] = np.where(has, sub_pulse(np.nan_to_num(pulse)), 0)
    present[:, 4] = has
    has, x, _ = v(ACVPU, FRESH_LONG)
    sub[:, 5] = np.where(has & (np.round(np.nan_to_num(x)) != 0), 3, 0)
    present[:, 5] = has
    has, x, _ = v(TEMP, FRESH_LONG)
    sub[:, 6] = np.where(has, sub_temp(np.nan_to_num(x)), 0)
    present[:, 6] = has
    return sub, present


def deterioration_features(vals, at_hr, at_pr, n_all, n_valid, scale2) -> np.ndarray:
    """Features for n windows.

    vals: (8, n, W) float64, the value of each signal's bin (NaN where missing), k = W-1 the newest minute.
    at_hr, at_pr: (n, W) int64 measurement times of the HR / pulse-rate bin values.
    n_all, n_valid: (n,) sample counts of HR, PR and SpO2 over the last hour (k >= W-60).
    scale2: (n,) bool.
    """
    n = vals.shape[1]
    f = np.zeros((n, 52))
    for b, code in enumerate(LEVELS):
        y = vals[SIGNAL_INDEX[code]]
        has, k = _newest(y, W - 1, W)
        last = np.where(has, _take(y, k), DEFAULTS[b])
        o = b * 7
        f[:, o] = last
        m1, c1 = _masked_mean(y, W - 60, W)
        f[:, o + 1] = np.where(c1 > 0, m1, last)
        late, cl = _masked_mean(y, W - 30, W)
        early, ce = _masked_mean(y, 0, 60)
        f[:, o + 2] = np.where((cl > 0) & (ce > 0), late - early, 0.0)
        f[:, o + 3] = _slope(y, W - 60, W)
        f[:, o + 4] = _slope(y, 0, W)
        f[:, o + 5] = _masked_std(y, W - 60, W)
        f[:, o + 6] = np.isnan(y).sum(axis=1) / W
    for i, (code, is_max, last_col) in enumerate([(HR, True, 0), (RR, True, 7), (SPO2, False, 14)]):
        e = _extreme(vals[SIGNAL_INDEX[code]], W - 60, W, is_max)
        f[:, 35 + i] = np.where(np.isnan(e), f[:, last_col], e)
    now_sub, now_present = _news2_at(vals, at_hr, at_pr, W - 1, scale2)
    before_sub, _ = _news2_at(vals, at_hr, at_pr, W - 61, scale2)
    f[:, 38:45] = now_sub
    f[:, 45] = now_sub.sum(axis=1)
    f[:, 46] = (~now_present).sum(axis=1)
    f[:, 47] = now_sub.sum(axis=1) - before_sub.sum(axis=1)
    f[:, 48] = np.where(now_present[:, 2] & (now_sub[:, 2] > 0), 1.0, 0.0)
    f[:, 49] = scale2.astype(np.float64)
    has_a, ka = _newest(vals[SIGNAL_INDEX[ACVPU]], W - 1, FRESH_LONG)
    a = _take(vals[SIGNAL_INDEX[ACVPU]], ka)
    f[:, 50] = np.where(has_a & (a > 0), 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f[:, 51] = np.where(n_all > 0, (n_all - n_valid) / n_all, 0.0)
    return f.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Binning raw samples (as BedBuffer::push does) — used for golden vectors.


def bin_samples(samples):
    """samples: iterable of (code, at_unix_ms, value, flags) in push order -> {(signal index, minute): bin dict}.

    Mirrors MinuteBin::add (newest valid value by time, the later pushed on equal times) and the ring's refusal
    of minutes that left the window (a slot holding a newer minute)."""
    bins: dict[tuple[int, int], dict] = {}
    slot_minute: dict[tuple[int, int], int] = {}
    ring = W + 1
    for code, at, value, flags in samples:
        s = SIGNAL_INDEX.get(int(code))
        if s is None:
            continue
        minute = int(at) // MINUTE_MS
        slot = (s, minute % ring)
        held = slot_minute.get(slot)
        if held is not None and held > minute:
            continue
        if held is None or held < minute:
            if held is not None:
                bins.pop((s, held), None)
            slot_minute[slot] = minute
            bins[(s, minute)] = {"value": None, "at": 0, "n": 0, "n_valid": 0}
        b = bins[(s, minute)]
        b["n"] += 1
        if valid(int(flags)):
            b["n_valid"] += 1
            if b["value"] is None or int(at) >= b["at"]:
                b["value"] = float(value)
                b["at"] = int(at)
    return bins


def window_from_bins(bins, now_unix_ms, scale2):
    """The deterioration inputs of one window (n = 1) from binned samples."""
    current = int(now_unix_ms) // MINUTE_MS
    first = current - W
    vals = np.full((8, 1, W), np.nan)
    at_hr = np.zeros((1, W), dtype=np.int64)
    at_pr = np.zeros((1, W), dtype=np.int64)
    n_all = 0
    n_valid = 0
    for (s, minute), b in bins.items():
        k = minute - first
        if not (0 <= k < W):
            continue
        if b["value"] is not None:
            vals[s, 0, k] = b["value"]
            if s == SIGNAL_INDEX[HR]:
                at_hr[0, k] = b["at"]
            if s == SIGNAL_INDEX[PR]:
                at_pr[0, k] = b["at"]
        if k >= W - 60 and s in (SIGNAL_INDEX[HR], SIGNAL_INDEX[PR], SIGNAL_INDEX[SPO2]):
            n_all += b["n"]
            n_valid += b["n_valid"]
    return vals, at_hr, at_pr, np.array([n_all]), np.array([n_valid]), np.array([bool(scale2)])


def deterioration_from_samples(samples, now_unix_ms, scale2) -> np.ndarray:
    return deterioration_features(*window_from_bins(bin_samples(samples), now_unix_ms, scale2))[0]


# ---------------------------------------------------------------------------------------------------------------
# Artifact features (pure Python over the few hundred samples of a window, in Rust's order of operations).


def _median(xs):
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return None
    if n % 2 == 1:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2.0


def _pstd(xs):
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) * (x - m) for x in xs) / len(xs))


def _block(samples, now):
    """samples: [(at, value, valid)] oldest first (one signal). Returns (f[10], jump, recent_median, baseline_median,
    newest_flagged)."""
    lo = now - ARTIFACT_WINDOW_MS
    recent_from = now - RECENT_MS
    baseline, recent, flat = [], [], []
    n_base = flagged_base = n_recent = flagged_recent = 0
    zero_recent = False
    newest_valid_recent = None
    newest_flagged = None
    max_step = 0.0
    prev_valid = None
    for at, value, ok in samples:
        if not (lo < at <= now):
            continue
        is_recent = at > recent_from
        newest_flagged = not ok
        if is_recent:
            n_recent += 1
            flagged_recent += 0 if ok else 1
            zero_recent = zero_recent or value == 0.0
        else:
            n_base += 1
            flagged_base += 0 if ok else 1
        if not ok:
            continue
        if is_recent:
            recent.append(value)
            newest_valid_recent = value
            if prev_valid is not None:
                max_step = max(max_step, abs(value - prev_valid))
        else:
            baseline.append(value)
        if at > now - FLATLINE_MS:
            flat.append(value)
        prev_valid = value
    f = [0.0] * 10
    base_median = _median(baseline)
    jump = None
    if base_median is not None and newest_valid_recent is not None:
        jump = newest_valid_recent - base_median
        f[0] = jump
        f[1] = max([abs(x - base_median) for x in recent] + [0.0])
    f[2] = _pstd(recent)
    f[3] = max_step
    if base_median is not None:
        f[4] = _median([abs(x - base_median) for x in baseline]) or 0.0
    f[5] = flagged_recent / n_recent if n_recent else 0.0
    f[6] = flagged_base / n_base if n_base else 0.0
    f[7] = 1.0 if zero_recent else 0.0
    f[8] = 1.0 if not recent else 0.0
    f[9] = 1.0 if len(flat) >= FLATLINE_MIN_SAMPLES and all(x == flat[0] for x in flat) else 0.0
    return f, jump, _median(recent), base_median, newest_flagged


def artifact_blocks(per_signal, now):
    """per_signal: {code: [(at, value, valid)] oldest first} -> the four blocks (independent of the query)."""
    return [_block(per_signal.get(c, []), now) for c in CONTINUOUS]


def artifact_features_from_blocks(blocks, query_index: int) -> list[float]:
    f = []
    for b in blocks:
        f.extend(b[0])
    hr, pr = blocks[0], blocks[1]

    def gap(a, b):
        return abs(a - b) if a is not None and b is not None else 0.0

    f.append(gap(hr[2], pr[2]))
    f.append(gap(hr[3], pr[3]))
    f.append((hr[1] or 0.0) - (pr[1] or 0.0))
    onehot = [0.0, 0.0, 0.0, 0.0]
    onehot[query_index] = 1.0
    f.extend(onehot)
    q = blocks[query_index]
    mad = max(q[0][4], 1.0)
    f.append((q[1] or 0.0) / mad)
    f.append(1.0 if q[4] is True else 0.0)
    return f


def raw_rings(samples):
    """Raw rings as BedBuffer keeps them: per continuous signal the newest RAW_CAPACITY samples pushed, oldest
    first, without samples older than the newest already kept (out of order)."""
    rings: dict[int, list] = {c: [] for c in CONTINUOUS}
    for code, at, value, flags in samples:
        code = int(code)
        if code not in rings:
            continue
        r = rings[code]
        if r and r[-1][0] > int(at):
            continue
        r.append((int(at), float(value), valid(int(flags))))
        if len(r) > RAW_CAPACITY:
            del r[0]
    return rings


def artifact_from_samples(samples, now_unix_ms, query: str) -> np.ndarray:
    blocks = artifact_blocks(raw_rings(samples), int(now_unix_ms))
    return np.array(artifact_features_from_blocks(blocks, QUERY_NAMES.index(query)), dtype=np.float32)
