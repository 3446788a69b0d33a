//! What the clinical engine does with the edge models (issue 5), as pure logic: which rows to score, and what a
//! score means for alarms. The models themselves run elsewhere (`crate::ml::runtime`, on the inference crate's
//! scoring threads): the engine hands out [`MlWork`], the engine task has it scored off the async runtime, and
//! hands the results back ([`DeteriorationResult`], [`ArtifactResult`]).
//!
//! - **Deterioration.** Every `score_interval_ms` (default one minute) the engine builds one feature row per
//!   monitored patient from its [`BedBuffer`](crate::ml::BedBuffer), all beds in one request. Each probability
//!   becomes a `RiskScore` event carrying a `ModelPrediction` (model name, version, sha256, probability, outcome,
//!   window) and `derived_from` (the newest sample of each signal in the window). A probability at or above the
//!   model's operating point (the manifest's `decision_threshold`: the alert rate of NEWS2 ≥ 5 on the training
//!   cohorts, see `models/deterioration/MODEL_CARD.md`) is flagged on the bed. Probabilities at or above the
//!   stricter alarm threshold (the manifest's `alarm_threshold`: NEWS2 ≥ 7's alert rate on the training cohorts;
//!   the operating point when a manifest has none) in `deterioration_alarm_rounds` consecutive rounds make a
//!   **medium-priority** `DETERIORATION_RISK` condition whose message names the model, the probability and the
//!   features that pushed it up most. A round between 0.8 × the alarm threshold and it neither counts nor
//!   resets; the condition ends when the probability falls below 0.8 × the alarm threshold (hysteresis), so a
//!   probability hovering at the threshold makes one alarm, not one per crossing. One deterioration makes one
//!   alarm: while the patient's NEWS2 urgent or emergency response alarm (medium or high) is announced and its
//!   condition holds, the risk condition is not started (the nurse is already called for this patient's
//!   deterioration; the risk still shows on the bed and syncs as a RiskAssessment); a risk alarm already
//!   announced stays until its own condition ends.
//! - **Artifact.** While a medium- or low-priority threshold condition on heart rate, pulse rate, SpO2 or
//!   respiratory rate is pending (waiting out its delay) and not held, every new sample of a signal it is built on
//!   puts that signal to the artifact model. A verdict at or above its threshold holds that condition back for
//!   `artifact_hold_ms` from the sample, and the patient's pending medium/low NEWS2 response too (it is scored from
//!   the same samples). While the disturbance goes on, later verdicts extend the hold, but never past
//!   `artifact_max_hold_ms` from the first one: a condition that still holds then is announced. High-priority
//!   conditions are never held (the alarm manager refuses), so a high alarm always sounds at once.
//!
//! **Simulated data only.** The models were trained on simulated patients and are not clinically validated;
//! every message that shows a prediction says so.

use wardwatch_proto::v1::BedLocation;

use super::alarms::ConditionKey;
use crate::ml::{
    ArtifactFeatures, BedBuffer, ContinuousSignal, DETERIORATION_FEATURES, DeteriorationFeatures,
    MINUTE_MS, N_DETERIORATION_FEATURES, Quality, Sample, Signal,
};

/// Which model made a prediction (name, version, sha256 of the ONNX file).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ModelRef {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// sha256 of `model.onnx`, hex.
    pub sha256: String,
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// How the engine uses one loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUse {
    /// The model.
    pub model: ModelRef,
    /// Operating threshold: a probability at or above it acts (deterioration: flagged on the bed; artifact: hold).
    pub threshold: f64,
    /// Deterioration: the probability at or above which rounds count towards the medium-priority risk alarm (the
    /// manifest's `alarm_threshold`, NEWS2 ≥ 7's alert rate on the training cohorts; `threshold` when the manifest
    /// has none). Stricter than `threshold`, so the alarm adds few alarms to a ward while the bed still shows the
    /// risk at the broader operating point. Unused by the artifact model.
    pub alarm_threshold: f64,
    /// What it predicts, in words (carried on every prediction).
    pub outcome: String,
}

/// The models the engine may use, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct MlSettings {
    /// The deterioration model, if loaded.
    pub deterioration: Option<ModelUse>,
    /// The artifact model, if loaded.
    pub artifact: Option<ModelUse>,
    /// Scoring interval of the deterioration model, ms.
    pub score_interval_ms: i64,
    /// How long an artifact verdict holds a threshold condition back, ms.
    pub artifact_hold_ms: i64,
    /// The longest a condition may be held back in all, from its first hold, however many verdicts renew it, ms.
    pub artifact_max_hold_ms: i64,
    /// Consecutive deterioration rounds at or above the threshold before the risk alarm's condition is active.
    pub deterioration_alarm_rounds: u32,
}

/// One patient's deterioration row.
#[derive(Debug, Clone)]
pub struct DeteriorationRow {
    /// Patient MRN.
    pub patient_id: String,
    /// Where the patient is.
    pub location: BedLocation,
    /// The features and their window.
    pub features: DeteriorationFeatures,
    /// Idempotency keys of the newest sample of each signal in the window.
    pub derived_from: Vec<String>,
}

/// All beds, to be scored in one request.
#[derive(Debug, Clone)]
pub struct DeteriorationRequest {
    /// When the engine asked (the prediction time).
    pub at_unix_ms: i64,
    /// One row per patient.
    pub rows: Vec<DeteriorationRow>,
}

/// One artifact question: is the signal behind this pending threshold condition plausible?
#[derive(Debug, Clone)]
pub struct ArtifactRequest {
    /// The pending condition the verdict is for.
    pub key: ConditionKey,
    /// Patient MRN.
    pub patient_id: String,
    /// The features (their `query` names the signal).
    pub features: ArtifactFeatures,
}

/// What the engine wants scored.
#[derive(Debug, Clone, Default)]
pub struct MlWork {
    /// A deterioration round, if one is due.
    pub deterioration: Option<DeteriorationRequest>,
    /// Artifact questions.
    pub artifact: Vec<ArtifactRequest>,
}

impl MlWork {
    /// Whether there is nothing to score.
    pub fn is_empty(&self) -> bool {
        self.deterioration.is_none() && self.artifact.is_empty()
    }
}

/// A feature that pushed a probability up.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    /// Feature name (see `DETERIORATION_FEATURES`).
    pub feature: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Its value.
    pub value: f32,
    /// The value of a stable reference patient.
    pub reference: f32,
    /// How much the probability drops when this feature alone takes the reference value.
    pub contribution: f32,
}

/// A scored deterioration round.
#[derive(Debug, Clone)]
pub struct DeteriorationResult {
    /// The request it answers.
    pub request: DeteriorationRequest,
    /// The model that scored every row.
    pub model: ModelRef,
    /// One probability per row, in row order.
    pub probabilities: Vec<f32>,
    /// Per row, the strongest reasons (computed for rows at or above the threshold; empty otherwise).
    pub reasons: Vec<Vec<Reason>>,
}

/// A scored artifact question.
#[derive(Debug, Clone)]
pub struct ArtifactResult {
    /// The question.
    pub request: ArtifactRequest,
    /// The model that answered.
    pub model: ModelRef,
    /// Probability that the queried signal's newest samples are artefact.
    pub probability: f32,
}

/// Newest idempotency keys of one signal: of the newest minute with a valid sample, and of the minute before
/// that. Enough to name the newest valid sample inside a window that ends at a minute boundary.
#[derive(Debug, Default)]
pub(crate) struct SignalKeys {
    last: (i64, String),
    prev: (i64, String),
}

impl SignalKeys {
    fn note(&mut self, minute: i64, key: &str) {
        if self.last.1.is_empty() || minute > self.last.0 {
            std::mem::swap(&mut self.last, &mut self.prev);
            self.last.0 = minute;
            self.last.1.clear();
            self.last.1.push_str(key);
        } else if minute == self.last.0 {
            self.last.1.clear();
            self.last.1.push_str(key);
        }
    }

    fn before(&self, end_minute: i64, start_minute: i64) -> Option<&str> {
        [&self.last, &self.prev]
            .into_iter()
            .find(|(m, k)| !k.is_empty() && *m < end_minute && *m >= start_minute)
            .map(|(_, k)| k.as_str())
    }
}

/// Per-patient model state: the feature buffer and the keys the predictions name as their sources.
#[derive(Debug)]
pub(crate) struct PatientMl {
    pub(crate) buffer: BedBuffer,
    keys: [SignalKeys; 8],
}

impl PatientMl {
    pub(crate) fn new(scale_2: bool) -> Self {
        Self {
            buffer: BedBuffer::new(scale_2),
            keys: Default::default(),
        }
    }

    /// Takes one vital sign (metrics the models do not use are ignored).
    pub(crate) fn observe(&mut self, v: &wardwatch_proto::v1::VitalSign, key: &str) {
        let Ok(s) = Sample::from_vital(v) else {
            return;
        };
        if self.buffer.push(&s).is_ok() && s.quality.is_valid() {
            self.keys[s.signal.index()].note(crate::ml::MinuteBin::minute_of(s.at_unix_ms), key);
        }
    }

    /// The keys of the newest valid sample of each signal inside the window of `f`.
    pub(crate) fn derived_from(&self, f: &DeteriorationFeatures) -> Vec<String> {
        let (start, end) = (
            f.window_start_unix_ms.div_euclid(MINUTE_MS),
            f.window_end_unix_ms.div_euclid(MINUTE_MS),
        );
        Signal::ALL
            .iter()
            .filter_map(|s| self.keys[s.index()].before(end, start))
            .map(str::to_string)
            .collect()
    }
}

/// The continuous signal a sample of `metric_mdc` is, for the artifact model, and the slug of the threshold
/// conditions built on it (`<slug>-low`, `<slug>-high`; ECG heart rate and pulse rate share "hr").
pub(crate) fn artifact_signal(metric_mdc: u32) -> Option<(ContinuousSignal, &'static str)> {
    use wardwatch_proto::metrics::*;
    match metric_mdc {
        MDC_ECG_HEART_RATE => Some((ContinuousSignal::HeartRate, "hr")),
        MDC_PULS_OXIM_PULS_RATE => Some((ContinuousSignal::PulseRate, "hr")),
        MDC_PULS_OXIM_SAT_O2 => Some((ContinuousSignal::SpO2, "spo2")),
        MDC_RESP_RATE => Some((ContinuousSignal::RespRate, "rr")),
        _ => None,
    }
}

/// The deterioration features of a stable reference patient: four hours of normal adult values (HR and pulse
/// 80, RR 16, SpO2 96 %, 37.0 °C, systolic 120, alert, on air), one sample a minute. Explanations replace one
/// feature at a time by its reference value.
pub fn reference_features() -> &'static [f32; N_DETERIORATION_FEATURES] {
    static REF: std::sync::OnceLock<[f32; N_DETERIORATION_FEATURES]> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        let now: i64 = 1_800_000_000_000; // a minute boundary; the values do not depend on it
        let mut b = BedBuffer::new(false);
        for k in 0..240 {
            let at = now - (240 - k) * MINUTE_MS + 30_000;
            for (signal, value) in [
                (Signal::HeartRate, 80.0),
                (Signal::PulseRate, 80.0),
                (Signal::RespRate, 16.0),
                (Signal::SpO2, 96.0),
                (Signal::Temperature, 37.0),
                (Signal::Systolic, 120.0),
                (Signal::Consciousness, 0.0),
                (Signal::Oxygen, 0.0),
            ] {
                let _ = b.push(&Sample {
                    signal,
                    value,
                    at_unix_ms: at,
                    quality: Quality(0),
                });
            }
        }
        b.features_at(now).values
    })
}

/// Rows for an occlusion explanation of `x`: row `i` is `x` with feature `i` set to its reference value.
pub fn occlusion_rows(x: &[f32; N_DETERIORATION_FEATURES]) -> Vec<f32> {
    let reference = reference_features();
    let mut rows = Vec::with_capacity(N_DETERIORATION_FEATURES * N_DETERIORATION_FEATURES);
    for i in 0..N_DETERIORATION_FEATURES {
        let mut r = *x;
        r[i] = reference[i];
        rows.extend_from_slice(&r);
    }
    rows
}

/// The `k` features whose replacement by the reference value lowers the probability most (only those that
/// lower it), strongest first. `occluded[i]` is the probability of occlusion row `i`.
pub fn top_reasons(
    x: &[f32; N_DETERIORATION_FEATURES],
    p: f32,
    occluded: &[f32],
    k: usize,
) -> Vec<Reason> {
    let reference = reference_features();
    let mut r: Vec<Reason> = occluded
        .iter()
        .take(N_DETERIORATION_FEATURES)
        .enumerate()
        .filter(|(i, q)| p - **q > 1e-4 && x[*i] != reference[*i])
        .map(|(i, q)| Reason {
            feature: DETERIORATION_FEATURES[i].name,
            unit: DETERIORATION_FEATURES[i].unit,
            value: x[i],
            reference: reference[i],
            contribution: p - q,
        })
        .collect();
    r.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    r.truncate(k);
    r
}

fn fmt_value(v: f32) -> String {
    if (v - v.round()).abs() < 1e-3 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The nurse-facing message of a deterioration alarm: model, probability, threshold, reasons, and the
/// simulated-data warning.
pub fn deterioration_message(
    model: &ModelRef,
    p: f32,
    threshold: f64,
    reasons: &[Reason],
) -> String {
    let why = if reasons.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = reasons
            .iter()
            .map(|r| {
                let unit = if r.unit == "1" {
                    String::new()
                } else {
                    format!(" {}", r.unit)
                };
                format!(
                    "{} {}{unit} (stable patient {})",
                    r.feature,
                    fmt_value(r.value),
                    fmt_value(r.reference)
                )
            })
            .collect();
        format!("; strongest factors: {}", parts.join(", "))
    };
    format!(
        "Deterioration risk {p:.2} (alarm at {threshold:.2}) by model {model}{why}. Simulated training data, not clinically validated"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_patient_scores_no_news2_and_misses_nothing() {
        let r = reference_features();
        let idx = |n: &str| {
            DETERIORATION_FEATURES
                .iter()
                .position(|s| s.name == n)
                .unwrap_or(usize::MAX)
        };
        assert_eq!(r[idx("hr_last")], 80.0);
        assert_eq!(r[idx("news2_total")], 0.0);
        assert_eq!(r[idx("hr_missing")], 0.0);
        assert_eq!(r[idx("news2_missing")], 0.0);
    }

    #[test]
    fn reasons_are_the_features_whose_removal_lowers_the_risk_most() {
        let mut x = *reference_features();
        x[0] = 130.0; // hr_last
        x[45] = 7.0; // news2_total
        let mut occluded = vec![0.8f32; N_DETERIORATION_FEATURES];
        occluded[0] = 0.5;
        occluded[45] = 0.2;
        occluded[3] = 0.1; // equal to the reference: not a reason whatever the model says
        let r = top_reasons(&x, 0.8, &occluded, 3);
        let names: Vec<&str> = r.iter().map(|r| r.feature).collect();
        assert_eq!(names, vec!["news2_total", "hr_last"]);
        let m = deterioration_message(
            &ModelRef {
                name: "wardwatch-deterioration".into(),
                version: "1.0.0".into(),
                sha256: "ab".into(),
            },
            0.8,
            0.1475,
            &r,
        );
        assert!(m.contains("wardwatch-deterioration 1.0.0"), "{m}");
        assert!(m.contains("0.80") && m.contains("news2_total 7"), "{m}");
        assert!(m.contains("hr_last 130 /min (stable patient 80)"), "{m}");
        assert!(m.contains("not clinically validated"), "{m}");
    }

    #[test]
    fn derived_from_names_the_newest_valid_sample_in_the_window() {
        let mut k = SignalKeys::default();
        k.note(10, "a");
        k.note(10, "b");
        k.note(11, "c");
        // Window [5, 11): minute 11 is outside, minute 10's newest is "b".
        assert_eq!(k.before(11, 5), Some("b"));
        assert_eq!(k.before(12, 5), Some("c"));
        assert_eq!(k.before(11, 10), Some("b"));
        assert_eq!(k.before(10, 0), None);
    }
}
