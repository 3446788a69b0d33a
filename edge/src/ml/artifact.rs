//! Artifact features: the last two minutes of the raw continuous signals, asked about one signal whose value
//! is about to raise a threshold alarm. A motion artefact or a loose probe shows as a jump of seconds that is
//! large against the signal's own recent median and spread, often flagged by the device, often with the
//! second heart-rate source (ECG vs oximeter) disagreeing; physiology moves more slowly and moves the related
//! signals together.
//!
//! # Definitions (mirrored exactly by `models/features.py`)
//!
//! - The window is the raw samples with time in `(now − 120 s, now]` ([`ARTIFACT_WINDOW_MS`]), from the bed's
//!   raw rings (the newest [`RAW_CAPACITY`](super::RAW_CAPACITY) samples per signal). "Recent" is
//!   `(now − 10 s, now]` ([`RECENT_MS`]), "baseline" the rest of the window. Valid means neither artifact nor
//!   sensor-off flagged.
//! - Medians are of valid values (the mean of the two middle values for an even count); the baseline MAD is
//!   the median absolute deviation from the baseline median; standard deviations are population ones.
//! - Per signal (ECG heart rate `hr`, oximeter pulse rate `pr`, `spo2`, `rr`):
//!   `jump` = newest valid recent value − baseline median; `max_dev` = largest |recent valid value − baseline
//!   median|; `recent_std`; `max_step` = largest |difference| between consecutive valid samples of the window
//!   whose later one is recent; `baseline_mad`; `flagged_recent` / `flagged_baseline` = share of all samples
//!   of that part that are flagged; `zero_recent` = 1 if any recent sample (flagged or not) reads exactly 0;
//!   `missing_recent` = 1 if no valid recent sample; `flatline_60s` = 1 if at least 30 valid samples in the
//!   last 60 s all have the same value. A feature whose inputs are missing is 0.
//! - `hr_pr_gap_*` = |median HR − median PR| over the valid recent / baseline samples; `hr_pr_jump_gap` =
//!   `hr_jump − pr_jump`.
//! - The query signal: one-hot `query_*`, `query_jump_z` = its jump / max(its baseline MAD, 1), and
//!   `query_newest_flagged` = 1 if its newest sample in the window is flagged.

use super::buffer::{BedBuffer, RAW_CAPACITY, RawSample};
use super::sample::ContinuousSignal;
use super::{ArtifactFeatures, FeatureSpec};

/// Length of the artifact window: 2 min.
pub const ARTIFACT_WINDOW_MS: i64 = 120_000;

/// The recent part of the window: the last 10 s.
pub const RECENT_MS: i64 = 10_000;

/// The flatline test looks at the last 60 s ...
const FLATLINE_MS: i64 = 60_000;
/// ... and needs at least this many valid samples there.
const FLATLINE_MIN_SAMPLES: usize = 30;

/// Features per signal block.
const BLOCK: usize = 10;

/// Number of artifact features.
pub const N_ARTIFACT_FEATURES: usize = 49;

macro_rules! signal_block {
    ($p:literal, $unit:literal, $what:literal) => {
        [
            FeatureSpec {
                name: concat!($p, "_jump"),
                unit: $unit,
                description: concat!("newest valid recent ", $what, " minus the baseline median"),
            },
            FeatureSpec {
                name: concat!($p, "_max_dev"),
                unit: $unit,
                description: concat!("largest |recent ", $what, " - baseline median|"),
            },
            FeatureSpec {
                name: concat!($p, "_recent_std"),
                unit: $unit,
                description: concat!("standard deviation of the recent valid ", $what),
            },
            FeatureSpec {
                name: concat!($p, "_max_step"),
                unit: $unit,
                description: concat!(
                    "largest step between consecutive valid ",
                    $what,
                    " samples into the recent part"
                ),
            },
            FeatureSpec {
                name: concat!($p, "_baseline_mad"),
                unit: $unit,
                description: concat!("median absolute deviation of the baseline ", $what),
            },
            FeatureSpec {
                name: concat!($p, "_flagged_recent"),
                unit: "1",
                description: concat!(
                    "share of recent ",
                    $what,
                    " samples flagged artifact or sensor-off"
                ),
            },
            FeatureSpec {
                name: concat!($p, "_flagged_baseline"),
                unit: "1",
                description: concat!(
                    "share of baseline ",
                    $what,
                    " samples flagged artifact or sensor-off"
                ),
            },
            FeatureSpec {
                name: concat!($p, "_zero_recent"),
                unit: "1",
                description: concat!(
                    "1 if a recent ",
                    $what,
                    " sample reads exactly 0 (probe off)"
                ),
            },
            FeatureSpec {
                name: concat!($p, "_missing_recent"),
                unit: "1",
                description: concat!("1 if no valid recent ", $what, " sample"),
            },
            FeatureSpec {
                name: concat!($p, "_flatline_60s"),
                unit: "1",
                description: concat!(
                    "1 if >= 30 valid ",
                    $what,
                    " samples in the last 60 s are all equal"
                ),
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

const fn concat_specs(
    blocks: [[FeatureSpec; BLOCK]; 4],
    rest: [FeatureSpec; 9],
) -> [FeatureSpec; 49] {
    let mut out = [spec("", "", ""); 49];
    let mut i = 0;
    while i < 4 {
        let mut j = 0;
        while j < BLOCK {
            out[i * BLOCK + j] = blocks[i][j];
            j += 1;
        }
        i += 1;
    }
    let mut r = 0;
    while r < 9 {
        out[4 * BLOCK + r] = rest[r];
        r += 1;
    }
    out
}

/// The artifact model's input features, in input order.
pub const ARTIFACT_FEATURES: [FeatureSpec; N_ARTIFACT_FEATURES] = concat_specs(
    [
        signal_block!("hr", "/min", "ECG heart rate"),
        signal_block!("pr", "/min", "oximeter pulse rate"),
        signal_block!("spo2", "%", "SpO2"),
        signal_block!("rr", "/min", "respiratory rate"),
    ],
    [
        spec(
            "hr_pr_gap_recent",
            "/min",
            "|median recent HR - median recent pulse rate|",
        ),
        spec(
            "hr_pr_gap_baseline",
            "/min",
            "|median baseline HR - median baseline pulse rate|",
        ),
        spec("hr_pr_jump_gap", "/min", "HR jump minus pulse-rate jump"),
        spec(
            "query_hr",
            "1",
            "1 if the alarm being judged is on ECG heart rate",
        ),
        spec(
            "query_pr",
            "1",
            "1 if the alarm being judged is on oximeter pulse rate",
        ),
        spec("query_spo2", "1", "1 if the alarm being judged is on SpO2"),
        spec(
            "query_rr",
            "1",
            "1 if the alarm being judged is on respiratory rate",
        ),
        spec(
            "query_jump_z",
            "1",
            "the queried signal's jump / max(its baseline MAD, 1)",
        ),
        spec(
            "query_newest_flagged",
            "1",
            "1 if the queried signal's newest sample is flagged",
        ),
    ],
);

/// Valid values of one part of the window, on the stack.
struct Values {
    v: [f64; RAW_CAPACITY],
    n: usize,
}

impl Values {
    fn new() -> Self {
        Self {
            v: [0.0; RAW_CAPACITY],
            n: 0,
        }
    }

    fn push(&mut self, x: f64) {
        if self.n < RAW_CAPACITY {
            self.v[self.n] = x;
            self.n += 1;
        }
    }

    /// Median; sorts the values in place.
    fn median(&mut self) -> Option<f64> {
        let s = &mut self.v[..self.n];
        s.sort_by(f64::total_cmp);
        let n = s.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(s[n / 2]),
            _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
        }
    }

    fn std(&self) -> f64 {
        let s = &self.v[..self.n];
        if s.len() < 2 {
            return 0.0;
        }
        let m = s.iter().sum::<f64>() / s.len() as f64;
        (s.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / s.len() as f64).sqrt()
    }
}

/// What one signal's part of the window says.
struct Block {
    f: [f64; BLOCK],
    jump: Option<f64>,
    recent_median: Option<f64>,
    baseline_median: Option<f64>,
    newest_flagged: Option<bool>,
}

fn block(samples: impl Iterator<Item = RawSample>, now: i64) -> Block {
    let lo = now - ARTIFACT_WINDOW_MS;
    let recent_from = now - RECENT_MS;
    let in_window = move |s: &RawSample| s.at_unix_ms > lo && s.at_unix_ms <= now;
    let mut baseline = Values::new();
    let mut recent = Values::new();
    let (mut n_base, mut flagged_base, mut n_recent, mut flagged_recent) =
        (0usize, 0usize, 0usize, 0usize);
    let mut zero_recent = false;
    let mut newest_valid_recent = None;
    let mut newest_flagged = None;
    let mut max_step: f64 = 0.0;
    let mut prev_valid: Option<f64> = None;
    let mut flat = Values::new();
    for s in samples.filter(in_window) {
        let is_recent = s.at_unix_ms > recent_from;
        newest_flagged = Some(!s.valid);
        if is_recent {
            n_recent += 1;
            flagged_recent += usize::from(!s.valid);
            zero_recent |= s.value == 0.0;
        } else {
            n_base += 1;
            flagged_base += usize::from(!s.valid);
        }
        if !s.valid {
            continue;
        }
        if is_recent {
            recent.push(s.value);
            newest_valid_recent = Some(s.value);
            if let Some(p) = prev_valid {
                max_step = max_step.max((s.value - p).abs());
            }
        } else {
            baseline.push(s.value);
        }
        if s.at_unix_ms > now - FLATLINE_MS {
            flat.push(s.value);
        }
        prev_valid = Some(s.value);
    }
    let recent_std = recent.std();
    let base_median = baseline.median();
    let mut f = [0f64; BLOCK];
    let mut jump = None;
    if let (Some(m), Some(last)) = (base_median, newest_valid_recent) {
        jump = Some(last - m);
        f[0] = last - m;
        f[1] = recent.v[..recent.n]
            .iter()
            .map(|x| (x - m).abs())
            .fold(0.0, f64::max);
    }
    f[2] = recent_std;
    f[3] = max_step;
    if let Some(m) = base_median {
        let mut dev = Values::new();
        for x in &baseline.v[..baseline.n] {
            dev.push((x - m).abs());
        }
        f[4] = dev.median().unwrap_or(0.0);
    }
    f[5] = if n_recent > 0 {
        flagged_recent as f64 / n_recent as f64
    } else {
        0.0
    };
    f[6] = if n_base > 0 {
        flagged_base as f64 / n_base as f64
    } else {
        0.0
    };
    f[7] = if zero_recent { 1.0 } else { 0.0 };
    f[8] = if recent.n == 0 { 1.0 } else { 0.0 };
    let fl = &flat.v[..flat.n];
    f[9] = if fl.len() >= FLATLINE_MIN_SAMPLES && fl.iter().all(|x| *x == fl[0]) {
        1.0
    } else {
        0.0
    };
    let recent_median = recent.median();
    Block {
        f,
        jump,
        recent_median,
        baseline_median: base_median,
        newest_flagged,
    }
}

/// Builds the artifact features of `buf` at `now` for `query` (see the module documentation).
pub(super) fn build(
    buf: &BedBuffer,
    now_unix_ms: i64,
    query: ContinuousSignal,
) -> ArtifactFeatures {
    let blocks: [Block; 4] = ContinuousSignal::ALL.map(|c| block(buf.raw(c).iter(), now_unix_ms));
    let mut f = [0f64; N_ARTIFACT_FEATURES];
    for (i, b) in blocks.iter().enumerate() {
        f[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(&b.f);
    }
    let (hr, pr) = (
        &blocks[ContinuousSignal::HeartRate.index()],
        &blocks[ContinuousSignal::PulseRate.index()],
    );
    let gap = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs(),
        _ => 0.0,
    };
    let o = 4 * BLOCK;
    f[o] = gap(hr.recent_median, pr.recent_median);
    f[o + 1] = gap(hr.baseline_median, pr.baseline_median);
    f[o + 2] = hr.jump.unwrap_or(0.0) - pr.jump.unwrap_or(0.0);
    f[o + 3 + query.index()] = 1.0;
    let q = &blocks[query.index()];
    let mad = q.f[4].max(1.0);
    f[o + 7] = q.jump.unwrap_or(0.0) / mad;
    f[o + 8] = if q.newest_flagged == Some(true) {
        1.0
    } else {
        0.0
    };
    ArtifactFeatures {
        values: f.map(|x| x as f32),
        query,
        window_start_unix_ms: now_unix_ms - ARTIFACT_WINDOW_MS,
        window_end_unix_ms: now_unix_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::sample::{Quality, Sample, Signal};

    const T0: i64 = 1_800_000_000_000;

    fn idx(name: &str) -> usize {
        ARTIFACT_FEATURES
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no feature {name}"))
    }

    fn push(b: &mut BedBuffer, signal: Signal, at: i64, value: f64, q: u8) {
        let _ = b.push(&Sample {
            signal,
            value,
            at_unix_ms: at,
            quality: Quality(q),
        });
    }

    /// Two minutes of steady signals at 1 Hz ending at `T0 - 10 s`.
    fn steady() -> BedBuffer {
        let mut b = BedBuffer::new(false);
        for i in 0..110 {
            let at = T0 - 119_000 + i * 1_000;
            push(&mut b, Signal::HeartRate, at, 80.0 + (i % 3) as f64, 0);
            push(&mut b, Signal::PulseRate, at, 81.0 + (i % 3) as f64, 0);
            push(&mut b, Signal::SpO2, at, 97.0, 0);
            push(&mut b, Signal::RespRate, at, 16.0, 0);
        }
        b
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ARTIFACT_FEATURES.iter().map(|s| s.name).collect();
        assert!(names.iter().all(|n| !n.is_empty()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_ARTIFACT_FEATURES);
    }

    #[test]
    fn a_jump_one_source_does_not_follow() {
        let mut b = steady();
        // 10 s of an HR jump of +60 the oximeter's pulse rate does not follow; SpO2 dips 15.
        for i in 0..10 {
            let at = T0 - 9_000 + i * 1_000;
            push(&mut b, Signal::HeartRate, at, 140.0, 0);
            push(&mut b, Signal::PulseRate, at, 82.0, 0);
            push(&mut b, Signal::SpO2, at, 82.0, 0);
            push(&mut b, Signal::RespRate, at, 16.0, 0);
        }
        let a = b.artifact_features_at(T0, ContinuousSignal::HeartRate);
        let f = a.values;
        assert_eq!(a.window_start_unix_ms, T0 - ARTIFACT_WINDOW_MS);
        assert_eq!(f[idx("hr_jump")], 59.0);
        assert_eq!(
            f[idx("hr_max_step")],
            59.0,
            "from the last baseline sample 81"
        );
        assert_eq!(f[idx("hr_baseline_mad")], 1.0);
        assert_eq!(f[idx("pr_jump")], 0.0);
        assert_eq!(f[idx("spo2_jump")], -15.0);
        assert_eq!(f[idx("rr_jump")], 0.0);
        assert_eq!(f[idx("hr_pr_gap_recent")], 58.0);
        assert_eq!(f[idx("hr_pr_gap_baseline")], 1.0);
        assert_eq!(f[idx("hr_pr_jump_gap")], 59.0);
        assert_eq!(f[idx("query_hr")], 1.0);
        assert_eq!(f[idx("query_spo2")], 0.0);
        assert_eq!(f[idx("query_jump_z")], 59.0);
        assert_eq!(f[idx("hr_recent_std")], 0.0);
        assert_eq!(f[idx("rr_flatline_60s")], 1.0, "RR 16 throughout");
        assert_eq!(f[idx("hr_flatline_60s")], 0.0);
    }

    #[test]
    fn probe_off_reads_zero_flagged() {
        let mut b = steady();
        for i in 0..5 {
            let at = T0 - 4_000 + i * 1_000;
            push(&mut b, Signal::SpO2, at, 0.0, Quality::SENSOR_OFF);
            push(&mut b, Signal::PulseRate, at, 0.0, Quality::SENSOR_OFF);
        }
        let f = b.artifact_features_at(T0, ContinuousSignal::SpO2).values;
        assert_eq!(f[idx("spo2_zero_recent")], 1.0);
        assert_eq!(f[idx("spo2_flagged_recent")], 1.0);
        assert_eq!(f[idx("spo2_missing_recent")], 1.0);
        assert_eq!(f[idx("spo2_jump")], 0.0, "no valid recent value");
        assert_eq!(f[idx("query_newest_flagged")], 1.0);
        assert_eq!(f[idx("query_spo2")], 1.0);
        assert_eq!(
            f[idx("hr_missing_recent")],
            1.0,
            "steady() stops 10 s before T0"
        );
    }

    #[test]
    fn samples_after_now_and_before_the_window_are_ignored() {
        let b = steady();
        let early = b.artifact_features_at(T0 - 60_000, ContinuousSignal::RespRate);
        let f = early.values;
        assert_eq!(f[idx("rr_missing_recent")], 0.0);
        assert_eq!(f[idx("rr_jump")], 0.0);
        // Far in the future, the window is empty.
        let late = b.artifact_features_at(T0 + 600_000, ContinuousSignal::RespRate);
        assert_eq!(late.values[idx("rr_missing_recent")], 1.0);
        assert_eq!(late.values[idx("rr_baseline_mad")], 0.0);
        assert!(late.values.iter().all(|v| v.is_finite()));
    }
}
