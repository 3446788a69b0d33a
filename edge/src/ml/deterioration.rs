//! Deterioration features: the last four hours of a bed's one-minute bins turned into levels, trends,
//! variability, missingness and NEWS2 sub-scores.
//!
//! # Definitions (mirrored exactly by `models/features.py`)
//!
//! - The window is the [`DETERIORATION_WINDOW_MIN`] (240) complete minutes before the minute containing `now`:
//!   positions `k = 0..240`, `k = 239` being the minute just finished. The value of a bin is its newest valid
//!   sample ([`MinuteBin`](super::MinuteBin)); a bin without one is missing.
//! - For least-squares slopes the position of bin `k` is `x = (k − 239) / 60` hours, so slopes are per hour.
//! - "Last hour" is `k ∈ [180, 240)`, "last 30 min" `k ∈ [210, 240)`, "first hour" `k ∈ [0, 60)`.
//! - Means and standard deviations are over the valid bins of a range (standard deviations are population ones,
//!   divided by n). A slope needs at least 3 valid bins, a standard deviation 2; otherwise the feature is 0.
//! - A level with no valid bin is imputed: `*_last` with a normal adult value (HR 80, RR 16, SpO2 96, temperature
//!   37.0, systolic 120), `*_mean_1h`, `hr_max_1h`, `rr_max_1h` and `spo2_min_1h` with `*_last`; `*_missing` says
//!   how much was missing. The model never sees NaN.
//! - NEWS2 sub-scores use `crate::clinical::news2`'s chart functions on the newest valid bin of each parameter
//!   within its freshness (in whole minutes, as in `News2Config`'s defaults): respiration rate, SpO2 and pulse
//!   15 min, systolic pressure 60 min, temperature, consciousness and air-or-oxygen 240 min (the whole window).
//!   Pulse is the newer of ECG heart rate and oximeter pulse rate (pulse rate on equal times). A missing
//!   parameter scores 0 and is counted in `news2_missing`; SpO2 with unknown oxygen therapy is scored as on air.
//!   `news2_delta_1h` is the total now minus the total computed the same way over the bins up to `k = 179`.

use crate::clinical::news2::{
    Consciousness, SpO2Scale, air_or_oxygen_subscore, consciousness_subscore, pulse_subscore,
    respiration_subscore, spo2_subscore, systolic_subscore, temperature_subscore,
};

use super::buffer::{BedBuffer, DETERIORATION_WINDOW_MIN, MINUTE_MS, MinuteBin};
use super::sample::Signal;
use super::{DeteriorationFeatures, FeatureSpec};

const W: usize = DETERIORATION_WINDOW_MIN;

/// Number of deterioration features.
pub const N_DETERIORATION_FEATURES: usize = 52;

macro_rules! level_block {
    ($p:literal, $unit:literal, $what:literal) => {
        [
            FeatureSpec {
                name: concat!($p, "_last"),
                unit: $unit,
                description: concat!("newest valid ", $what, " in the window (imputed if none)"),
            },
            FeatureSpec {
                name: concat!($p, "_mean_1h"),
                unit: $unit,
                description: concat!("mean ", $what, " over the last hour"),
            },
            FeatureSpec {
                name: concat!($p, "_delta"),
                unit: $unit,
                description: concat!(
                    "mean ",
                    $what,
                    " of the last 30 min minus mean of the window's first hour"
                ),
            },
            FeatureSpec {
                name: concat!($p, "_slope_1h"),
                unit: concat!($unit, "/h"),
                description: concat!("least-squares slope of ", $what, " over the last hour"),
            },
            FeatureSpec {
                name: concat!($p, "_slope_4h"),
                unit: concat!($unit, "/h"),
                description: concat!("least-squares slope of ", $what, " over the 4 h window"),
            },
            FeatureSpec {
                name: concat!($p, "_std_1h"),
                unit: $unit,
                description: concat!("standard deviation of ", $what, " over the last hour"),
            },
            FeatureSpec {
                name: concat!($p, "_missing"),
                unit: "1",
                description: concat!("share of the window's minutes without a valid ", $what),
            },
        ]
    };
}

const fn spec(name: &'static str, unit: &'static str, description: &'static str) -> FeatureSpec {
    FeatureSpec {
        name,
        unit,
        description,
    }
}

const fn concat_specs(blocks: [[FeatureSpec; 7]; 5], rest: [FeatureSpec; 17]) -> [FeatureSpec; 52] {
    let mut out = [spec("", "", ""); 52];
    let mut i = 0;
    while i < 5 {
        let mut j = 0;
        while j < 7 {
            out[i * 7 + j] = blocks[i][j];
            j += 1;
        }
        i += 1;
    }
    let mut r = 0;
    while r < 17 {
        out[35 + r] = rest[r];
        r += 1;
    }
    out
}

/// The deterioration model's input features, in input order.
pub const DETERIORATION_FEATURES: [FeatureSpec; N_DETERIORATION_FEATURES] = concat_specs(
    [
        level_block!("hr", "/min", "ECG heart rate"),
        level_block!("rr", "/min", "respiratory rate"),
        level_block!("spo2", "%", "SpO2"),
        level_block!("temp", "Cel", "body temperature"),
        level_block!("sbp", "mm[Hg]", "systolic blood pressure"),
    ],
    [
        spec(
            "hr_max_1h",
            "/min",
            "highest ECG heart rate over the last hour",
        ),
        spec(
            "rr_max_1h",
            "/min",
            "highest respiratory rate over the last hour",
        ),
        spec("spo2_min_1h", "%", "lowest SpO2 over the last hour"),
        spec(
            "news2_rr",
            "1",
            "NEWS2 respiration-rate sub-score (0 if missing)",
        ),
        spec(
            "news2_spo2",
            "1",
            "NEWS2 SpO2 sub-score on the patient's scale (0 if missing)",
        ),
        spec(
            "news2_air_o2",
            "1",
            "NEWS2 air-or-oxygen sub-score (0 if missing)",
        ),
        spec("news2_sbp", "1", "NEWS2 systolic sub-score (0 if missing)"),
        spec("news2_pulse", "1", "NEWS2 pulse sub-score (0 if missing)"),
        spec(
            "news2_acvpu",
            "1",
            "NEWS2 consciousness sub-score (0 if missing)",
        ),
        spec(
            "news2_temp",
            "1",
            "NEWS2 temperature sub-score (0 if missing)",
        ),
        spec("news2_total", "1", "NEWS2 total of the parameters present"),
        spec(
            "news2_missing",
            "1",
            "NEWS2 parameters missing or stale (0-7)",
        ),
        spec(
            "news2_delta_1h",
            "1",
            "NEWS2 total now minus NEWS2 total one hour earlier",
        ),
        spec(
            "on_oxygen",
            "1",
            "1 if the newest air-or-oxygen observation says oxygen",
        ),
        spec(
            "spo2_scale_2",
            "1",
            "1 if the patient is scored on SpO2 scale 2",
        ),
        spec("acvpu_not_alert", "1", "1 if the newest ACVPU is not A"),
        spec(
            "flagged_share_1h",
            "1",
            "share of HR, pulse-rate and SpO2 samples of the last hour flagged artifact or sensor-off",
        ),
    ],
);

/// Imputed normal values for levels with no valid bin: HR, RR, SpO2, temperature, systolic.
const DEFAULTS: [f64; 5] = [80.0, 16.0, 96.0, 37.0, 120.0];

/// The five level signals, in block order.
const LEVELS: [Signal; 5] = [
    Signal::HeartRate,
    Signal::RespRate,
    Signal::SpO2,
    Signal::Temperature,
    Signal::Systolic,
];

/// Freshness in minutes (bins) of each NEWS2 parameter.
const FRESH_VITALS: usize = 15;
const FRESH_BP: usize = 60;
const FRESH_LONG: usize = 240;

/// Valid values of one signal over the window, NaN where missing.
type Series = [f64; W];

fn mean(y: &Series, lo: usize, hi: usize) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for v in &y[lo..hi] {
        if !v.is_nan() {
            s += v;
            n += 1;
        }
    }
    (n > 0).then(|| s / n as f64)
}

fn std(y: &Series, lo: usize, hi: usize) -> f64 {
    let Some(m) = mean(y, lo, hi) else {
        return 0.0;
    };
    let (mut s, mut n) = (0.0, 0usize);
    for v in &y[lo..hi] {
        if !v.is_nan() {
            s += (v - m) * (v - m);
            n += 1;
        }
    }
    if n < 2 { 0.0 } else { (s / n as f64).sqrt() }
}

fn x_of(k: usize) -> f64 {
    (k as f64 - (W - 1) as f64) / 60.0
}

fn slope(y: &Series, lo: usize, hi: usize) -> f64 {
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0usize);
    for (k, v) in y.iter().enumerate().take(hi).skip(lo) {
        if !v.is_nan() {
            sx += x_of(k);
            sy += v;
            n += 1;
        }
    }
    if n < 3 {
        return 0.0;
    }
    let (mx, my) = (sx / n as f64, sy / n as f64);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (k, v) in y.iter().enumerate().take(hi).skip(lo) {
        if !v.is_nan() {
            let dx = x_of(k) - mx;
            sxy += dx * (v - my);
            sxx += dx * dx;
        }
    }
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

fn extreme(y: &Series, lo: usize, hi: usize, max: bool) -> Option<f64> {
    y[lo..hi]
        .iter()
        .filter(|v| !v.is_nan())
        .copied()
        .reduce(|a, b| if max { a.max(b) } else { a.min(b) })
}

/// The newest valid position `k` in `[end + 1 − fresh, end]` (clamped to the window).
fn newest(y: &Series, end: usize, fresh: usize) -> Option<usize> {
    let lo = (end + 1).saturating_sub(fresh);
    (lo..=end).rev().find(|&k| !y[k].is_nan())
}

/// NEWS2 sub-scores (chart order: RR, SpO2, air/O2, SBP, pulse, ACVPU, temperature), present flags and the
/// oxygen flag, as of bin `end`.
struct News2AtBin {
    sub: [u8; 7],
    present: [bool; 7],
}

fn news2_at(
    series: &[Series; 8],
    pulse_at: &[[i64; W]; 2],
    end: usize,
    scale: SpO2Scale,
) -> News2AtBin {
    let val = |s: Signal, fresh: usize| newest(&series[s.index()], end, fresh);
    let get = |s: Signal, k: usize| series[s.index()][k];
    let on_oxygen = val(Signal::Oxygen, FRESH_LONG).map(|k| get(Signal::Oxygen, k) >= 0.5);
    let mut sub = [0u8; 7];
    let mut present = [false; 7];
    let mut set = |i: usize, s: Option<u8>| {
        if let Some(s) = s {
            sub[i] = s;
            present[i] = true;
        }
    };
    set(
        0,
        val(Signal::RespRate, FRESH_VITALS).map(|k| respiration_subscore(get(Signal::RespRate, k))),
    );
    set(
        1,
        val(Signal::SpO2, FRESH_VITALS)
            .map(|k| spo2_subscore(get(Signal::SpO2, k), scale, on_oxygen.unwrap_or(false))),
    );
    set(2, on_oxygen.map(air_or_oxygen_subscore));
    set(
        3,
        val(Signal::Systolic, FRESH_BP).map(|k| systolic_subscore(get(Signal::Systolic, k))),
    );
    let hr =
        val(Signal::HeartRate, FRESH_VITALS).map(|k| (pulse_at[0][k], get(Signal::HeartRate, k)));
    let pr =
        val(Signal::PulseRate, FRESH_VITALS).map(|k| (pulse_at[1][k], get(Signal::PulseRate, k)));
    let pulse = match (hr, pr) {
        (Some((th, h)), Some((tp, p))) => Some(if th > tp { h } else { p }),
        (Some((_, h)), None) => Some(h),
        (None, Some((_, p))) => Some(p),
        (None, None) => None,
    };
    set(4, pulse.map(pulse_subscore));
    set(
        5,
        val(Signal::Consciousness, FRESH_LONG).map(|k| {
            consciousness_subscore(match get(Signal::Consciousness, k).round() as i64 {
                0 => Consciousness::Alert,
                1 => Consciousness::NewConfusion,
                2 => Consciousness::Voice,
                3 => Consciousness::Pain,
                _ => Consciousness::Unresponsive,
            })
        }),
    );
    set(
        6,
        val(Signal::Temperature, FRESH_LONG)
            .map(|k| temperature_subscore(get(Signal::Temperature, k))),
    );
    News2AtBin { sub, present }
}

/// Builds the deterioration features of `buf` at `now` (see the module documentation).
pub(super) fn build(buf: &BedBuffer, now_unix_ms: i64) -> DeteriorationFeatures {
    let current = MinuteBin::minute_of(now_unix_ms);
    let first = current - W as i64;
    let mut series: [Series; 8] = [[f64::NAN; W]; 8];
    // Measurement times of HR and pulse-rate bins (for the pulse rule), counts of HR, PR and SpO2 bins.
    let mut pulse_at = [[0i64; W]; 2];
    let (mut n_all, mut n_valid) = (0u64, 0u64);
    for s in Signal::ALL {
        for k in 0..W {
            let Some(bin) = buf.bin(s, first + k as i64) else {
                continue;
            };
            if let Some(v) = bin.value {
                series[s.index()][k] = v;
                match s {
                    Signal::HeartRate => pulse_at[0][k] = bin.at_unix_ms,
                    Signal::PulseRate => pulse_at[1][k] = bin.at_unix_ms,
                    _ => {}
                }
            }
            if k >= W - 60 && matches!(s, Signal::HeartRate | Signal::PulseRate | Signal::SpO2) {
                n_all += u64::from(bin.n);
                n_valid += u64::from(bin.n_valid);
            }
        }
    }

    let mut f = [0f64; N_DETERIORATION_FEATURES];
    for (b, s) in LEVELS.into_iter().enumerate() {
        let y = &series[s.index()];
        let last = newest(y, W - 1, W).map_or(DEFAULTS[b], |k| y[k]);
        let o = b * 7;
        f[o] = last;
        f[o + 1] = mean(y, W - 60, W).unwrap_or(last);
        f[o + 2] = match (mean(y, W - 30, W), mean(y, 0, 60)) {
            (Some(late), Some(early)) => late - early,
            _ => 0.0,
        };
        f[o + 3] = slope(y, W - 60, W);
        f[o + 4] = slope(y, 0, W);
        f[o + 5] = std(y, W - 60, W);
        f[o + 6] = y.iter().filter(|v| v.is_nan()).count() as f64 / W as f64;
    }
    // `*_last` of HR, RR and SpO2 are at block offsets 0, 7 and 14.
    let (hr_last, rr_last, spo2_last) = (f[0], f[7], f[14]);
    let hr = &series[Signal::HeartRate.index()];
    let rr = &series[Signal::RespRate.index()];
    let spo2 = &series[Signal::SpO2.index()];
    f[35] = extreme(hr, W - 60, W, true).unwrap_or(hr_last);
    f[36] = extreme(rr, W - 60, W, true).unwrap_or(rr_last);
    f[37] = extreme(spo2, W - 60, W, false).unwrap_or(spo2_last);

    let scale = if buf.spo2_scale_2() {
        SpO2Scale::Scale2
    } else {
        SpO2Scale::Scale1
    };
    let now = news2_at(&series, &pulse_at, W - 1, scale);
    let before = news2_at(&series, &pulse_at, W - 61, scale);
    let total = |n: &News2AtBin| n.sub.iter().map(|s| f64::from(*s)).sum::<f64>();
    for i in 0..7 {
        f[38 + i] = f64::from(now.sub[i]);
    }
    f[45] = total(&now);
    f[46] = now.present.iter().filter(|p| !**p).count() as f64;
    f[47] = total(&now) - total(&before);
    f[48] = if now.present[2] && now.sub[2] > 0 {
        1.0
    } else {
        0.0
    };
    f[49] = if buf.spo2_scale_2() { 1.0 } else { 0.0 };
    let acvpu = &series[Signal::Consciousness.index()];
    f[50] = match newest(acvpu, W - 1, FRESH_LONG) {
        Some(k) if acvpu[k] > 0.0 => 1.0,
        _ => 0.0,
    };
    f[51] = if n_all > 0 {
        (n_all - n_valid) as f64 / n_all as f64
    } else {
        0.0
    };

    DeteriorationFeatures {
        values: f.map(|x| x as f32),
        window_start_unix_ms: first * MINUTE_MS,
        window_end_unix_ms: current * MINUTE_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::sample::{Quality, Sample};

    const T0: i64 = 1_800_000_000_000; // a minute boundary

    fn push(b: &mut BedBuffer, signal: Signal, at: i64, value: f64) {
        b.push(&Sample {
            signal,
            value,
            at_unix_ms: at,
            quality: Quality(0),
        })
        .unwrap();
    }

    fn idx(name: &str) -> usize {
        DETERIORATION_FEATURES
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no feature {name}"))
    }

    #[test]
    fn names_are_unique_and_complete() {
        let mut names: Vec<&str> = DETERIORATION_FEATURES.iter().map(|s| s.name).collect();
        assert!(names.iter().all(|n| !n.is_empty()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_DETERIORATION_FEATURES);
        assert_eq!(DETERIORATION_FEATURES[idx("hr_last")].unit, "/min");
        assert_eq!(DETERIORATION_FEATURES[idx("sbp_slope_4h")].unit, "mm[Hg]/h");
    }

    #[test]
    fn empty_buffer_gives_imputed_normal_values() {
        let f = BedBuffer::new(false).features_at(T0).values;
        assert_eq!(f[idx("hr_last")], 80.0);
        assert_eq!(f[idx("hr_mean_1h")], 80.0);
        assert_eq!(f[idx("spo2_min_1h")], 96.0);
        assert_eq!(f[idx("hr_missing")], 1.0);
        assert_eq!(f[idx("news2_total")], 0.0);
        assert_eq!(f[idx("news2_missing")], 7.0);
        assert!(f.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_linear_rise_has_its_slope_and_news2_scores_it() {
        let mut b = BedBuffer::new(false);
        let start = T0 - 240 * MINUTE_MS;
        // HR rising 10/h from 80, one sample per minute in the middle of each minute; RR 22 throughout.
        for k in 0..240 {
            let at = start + k * MINUTE_MS + 30_000;
            push(&mut b, Signal::HeartRate, at, 80.0 + k as f64 / 6.0);
            push(&mut b, Signal::RespRate, at, 22.0);
        }
        push(&mut b, Signal::Consciousness, T0 - 10 * MINUTE_MS, 1.0);
        let d = b.features_at(T0 + 5_000);
        assert_eq!(d.window_end_unix_ms, T0);
        assert_eq!(d.window_start_unix_ms, start);
        let f = d.values;
        assert!((f[idx("hr_slope_4h")] - 10.0).abs() < 1e-4);
        assert!((f[idx("hr_slope_1h")] - 10.0).abs() < 1e-4);
        assert!((f[idx("hr_last")] - (80.0 + 239.0 / 6.0)).abs() < 1e-4);
        assert_eq!(f[idx("hr_missing")], 0.0);
        assert_eq!(f[idx("rr_std_1h")], 0.0);
        assert_eq!(f[idx("rr_slope_1h")], 0.0);
        // Pulse 120 → 2, RR 22 → 2, new confusion → 3; SpO2, air/O2, SBP, temperature missing.
        assert_eq!(f[idx("news2_pulse")], 2.0);
        assert_eq!(f[idx("news2_rr")], 2.0);
        assert_eq!(f[idx("news2_acvpu")], 3.0);
        assert_eq!(f[idx("news2_total")], 7.0);
        assert_eq!(f[idx("news2_missing")], 4.0);
        // An hour earlier: HR 110 → 1, RR 2, no ACVPU yet → 3; delta 4.
        assert_eq!(f[idx("news2_delta_1h")], 4.0);
        assert_eq!(f[idx("acvpu_not_alert")], 1.0);
    }

    #[test]
    fn stale_parameters_drop_out_of_news2() {
        let mut b = BedBuffer::new(false);
        push(&mut b, Signal::RespRate, T0 - 16 * MINUTE_MS + 1, 30.0);
        push(&mut b, Signal::Systolic, T0 - 16 * MINUTE_MS + 1, 85.0);
        let f = b.features_at(T0).values;
        assert_eq!(f[idx("news2_rr")], 0.0, "RR older than 15 min");
        assert_eq!(f[idx("news2_sbp")], 3.0, "systolic counts for 60 min");
        assert_eq!(f[idx("rr_last")], 30.0, "levels use the whole window");
    }

    #[test]
    fn pulse_is_the_newer_source_and_flags_count() {
        let mut b = BedBuffer::new(false);
        let at = T0 - MINUTE_MS + 1_000;
        push(&mut b, Signal::HeartRate, at, 135.0);
        push(&mut b, Signal::PulseRate, at + 1, 95.0);
        b.push(&Sample {
            signal: Signal::SpO2,
            value: 0.0,
            at_unix_ms: at,
            quality: Quality(Quality::SENSOR_OFF),
        })
        .unwrap();
        let f = b.features_at(T0).values;
        assert_eq!(f[idx("news2_pulse")], 1.0, "pulse rate is newer");
        assert!((f[idx("flagged_share_1h")] - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(f[idx("spo2_missing")], 1.0);
    }

    #[test]
    fn scale_2_and_oxygen() {
        let mut b = BedBuffer::new(true);
        push(&mut b, Signal::SpO2, T0 - 30_000, 90.0);
        push(&mut b, Signal::Oxygen, T0 - 60 * MINUTE_MS, 1.0);
        let f = b.features_at(T0).values;
        assert_eq!(f[idx("news2_spo2")], 0.0, "90 % is on target on scale 2");
        assert_eq!(f[idx("news2_air_o2")], 2.0);
        assert_eq!(f[idx("on_oxygen")], 1.0);
        assert_eq!(f[idx("spo2_scale_2")], 1.0);
        b.set_spo2_scale_2(false);
        assert_eq!(b.features_at(T0).values[idx("news2_spo2")], 3.0);
    }
}
