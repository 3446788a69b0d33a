//! NEWS2, the National Early Warning Score 2, computed from bedside vital signs.
//!
//! The scoring follows the Royal College of Physicians' *National Early Warning Score (NEWS) 2* (RCP, London,
//! December 2017): **Chart 1** (the NEWS2 scoring system, including SpO2 scale 2 for hypercapnic respiratory
//! failure) and **Chart 4** (clinical response to NEWS2 trigger thresholds). The table is reproduced in
//! `shared/clinical-reference.md`; the unit tests below check every band edge of it.
//!
//! **This is clinical decision support, not clinically validated software and not a medical device.** The
//! score it produces is an aid for trained staff, who remain responsible for assessing the patient; it must not
//! replace the charted, clinician-confirmed NEWS2 or clinical judgement.
//!
//! # Two layers
//!
//! - Pure scoring: [`score`] over a [`News2Inputs`], and one function per parameter ([`respiration_subscore`],
//!   [`spo2_subscore`], [`air_or_oxygen_subscore`], [`systolic_subscore`], [`pulse_subscore`],
//!   [`consciousness_subscore`], [`temperature_subscore`]).
//! - A per-patient tracker, [`PatientNews2`], fed with normalized [`VitalSign`]s and oxygen-therapy
//!   observations. It keeps the newest observation of each parameter, lets parameters age out
//!   ([`News2Config`]), emits a [`News2Update`] whenever the score changes, and reports a [`Trend`].
//!
//! # Rules that the chart leaves implicit
//!
//! - **Values between chart integers.** Chart 1 bands are written in whole numbers (temperature in tenths of a
//!   degree), so a value such as RR 20.5 or 38.05 °C falls between two bands. The measurement is first rounded
//!   to the chart's resolution — respiration rate, SpO2, systolic pressure and pulse to the nearest integer,
//!   temperature to one decimal, halves away from zero — and the bands are then applied, so the bands are
//!   contiguous (20.4 → 20 → 0 points; 20.5 → 21 → 2 points; 38.05 → 38.1 → 1 point). Because decimal values
//!   such as 38.05 are not exactly representable in binary floating point, a value within 1e-9 of a half counts
//!   as the half.
//! - **Missing parameters.** A score over an incomplete set of parameters still gives the total of what is
//!   present, but says so: [`News2Score::complete`] is false and [`News2Score::missing`] lists every absent
//!   parameter. A missing parameter is never silently scored as 0.
//! - **SpO2 scale 2 with unknown oxygen therapy.** On scale 2 an SpO2 of 93 % or more scores 0 on air but 1–3 on
//!   oxygen. When it is not known whether the patient is on oxygen, SpO2 is scored as on air and
//!   [`Parameter::AirOrOxygen`] is listed as missing, so the reader knows the SpO2 points may be understated.
//! - **Non-finite numbers** (NaN, infinities) are not measurements: [`score`] and the tracker treat them as
//!   missing. The per-parameter functions, which must return a number, return the maximum of 3 for them so a
//!   corrupt value can never lower a score.

use std::collections::VecDeque;

use wardwatch_proto::metrics;
use wardwatch_proto::v1::{
    BedLocation, News2, News2Parameter, News2Response, News2SubScore, QualityFlag, RiskScore,
    VitalSign, risk_score,
};

/// A value within this distance of a rounding half counts as the half (see the module documentation).
const HALF_TOLERANCE: f64 = 1e-9;

/// Upper bound on the trend history kept per patient, whatever the window, so memory stays bounded.
const MAX_HISTORY: usize = 4096;

/// Level of consciousness on the ACVPU scale (Chart 1: alert scores 0; new confusion, voice, pain and
/// unresponsive each score 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consciousness {
    /// A: alert.
    Alert,
    /// C: new confusion (or new disorientation / agitation).
    NewConfusion,
    /// V: responds to voice.
    Voice,
    /// P: responds to pain.
    Pain,
    /// U: unresponsive.
    Unresponsive,
}

impl Consciousness {
    /// Parses an ACVPU letter ("A", "C", "V", "P" or "U"; surrounding whitespace and letter case are ignored).
    /// Anything else is `None`.
    pub fn from_acvpu(letter: &str) -> Option<Self> {
        match letter.trim() {
            "A" | "a" => Some(Self::Alert),
            "C" | "c" => Some(Self::NewConfusion),
            "V" | "v" => Some(Self::Voice),
            "P" | "p" => Some(Self::Pain),
            "U" | "u" => Some(Self::Unresponsive),
            _ => None,
        }
    }

    /// The ACVPU letter of this level.
    pub fn to_acvpu(self) -> &'static str {
        match self {
            Self::Alert => "A",
            Self::NewConfusion => "C",
            Self::Voice => "V",
            Self::Pain => "P",
            Self::Unresponsive => "U",
        }
    }
}

/// Which SpO2 scoring scale applies to a patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpO2Scale {
    /// Scale 1: the default for every patient.
    #[default]
    Scale1,
    /// Scale 2: only for patients with hypercapnic respiratory failure and a prescribed target range of
    /// 88–92 %, chosen clinically per patient (never inferred from the data).
    Scale2,
}

/// One of the seven NEWS2 parameters, in chart order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Parameter {
    /// Respiration rate, breaths per minute.
    RespirationRate,
    /// Oxygen saturation, %.
    SpO2,
    /// Air or supplemental oxygen.
    AirOrOxygen,
    /// Systolic blood pressure, mmHg.
    SystolicBp,
    /// Pulse, beats per minute.
    Pulse,
    /// Level of consciousness (ACVPU).
    Consciousness,
    /// Temperature, °C.
    Temperature,
}

impl Parameter {
    /// All seven parameters in chart order.
    pub const ALL: [Parameter; 7] = [
        Parameter::RespirationRate,
        Parameter::SpO2,
        Parameter::AirOrOxygen,
        Parameter::SystolicBp,
        Parameter::Pulse,
        Parameter::Consciousness,
        Parameter::Temperature,
    ];

    /// The wire enum for this parameter.
    pub fn to_proto(self) -> News2Parameter {
        match self {
            Parameter::RespirationRate => News2Parameter::RespirationRate,
            Parameter::SpO2 => News2Parameter::Spo2,
            Parameter::AirOrOxygen => News2Parameter::AirOrOxygen,
            Parameter::SystolicBp => News2Parameter::SystolicBp,
            Parameter::Pulse => News2Parameter::Pulse,
            Parameter::Consciousness => News2Parameter::Consciousness,
            Parameter::Temperature => News2Parameter::Temperature,
        }
    }

    /// A distinct bit per parameter, for sets of parameters.
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The measurements one NEWS2 score is computed from. `None` means not measured (or not fresh).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct News2Inputs {
    /// Respiration rate, breaths per minute.
    pub respiration_rate: Option<f64>,
    /// Oxygen saturation, %.
    pub spo2: Option<f64>,
    /// Whether the patient is on supplemental oxygen.
    pub on_oxygen: Option<bool>,
    /// Systolic blood pressure, mmHg.
    pub systolic_bp: Option<f64>,
    /// Pulse, beats per minute.
    pub pulse: Option<f64>,
    /// Level of consciousness.
    pub consciousness: Option<Consciousness>,
    /// Temperature, °C.
    pub temperature_c: Option<f64>,
    /// The SpO2 scale chosen for this patient.
    pub scale: SpO2Scale,
}

/// Clinical response level (RCP Chart 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClinicalResponse {
    /// Aggregate 0: routine monitoring, at least 12-hourly.
    Routine,
    /// Aggregate 1–4: a registered nurse assesses; monitoring 4–6-hourly.
    Low,
    /// A 3 in any single parameter (aggregate 1–4): at least hourly; the nurse informs the medical team.
    LowMedium,
    /// Aggregate 5–6: urgent response threshold; at least hourly.
    Medium,
    /// Aggregate 7 or more: emergency response; continuous monitoring.
    High,
}

impl ClinicalResponse {
    /// The response level for an aggregate score, given whether any single parameter scored 3.
    pub fn from_total(total: u8, any_single_parameter_3: bool) -> Self {
        match total {
            7.. => Self::High,
            5..=6 => Self::Medium,
            _ if any_single_parameter_3 => Self::LowMedium,
            1..=4 => Self::Low,
            0 => Self::Routine,
        }
    }

    /// The wire enum for this level.
    pub fn to_proto(self) -> News2Response {
        match self {
            Self::Routine => News2Response::Routine,
            Self::Low => News2Response::Low,
            Self::LowMedium => News2Response::LowMedium,
            Self::Medium => News2Response::Medium,
            Self::High => News2Response::High,
        }
    }
}

/// A NEWS2 score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct News2Score {
    /// Aggregate of the sub-scores of the parameters present (0 to 20).
    pub total: u8,
    /// Sub-score of each parameter present, in chart order.
    pub sub_scores: Vec<(Parameter, u8)>,
    /// Parameters that were not available, in chart order. Not scored, and not counted as 0 either.
    pub missing: Vec<Parameter>,
    /// Clinical response level for `total` (Chart 4).
    pub response: ClinicalResponse,
    /// True when any single parameter scored 3 (the "red score").
    pub any_single_parameter_3: bool,
    /// The SpO2 scale used.
    pub scale: SpO2Scale,
    /// True when all seven parameters were present, i.e. `missing` is empty.
    pub complete: bool,
}

impl News2Score {
    /// The sub-score of `parameter`, if it was present.
    pub fn sub_score(&self, parameter: Parameter) -> Option<u8> {
        self.sub_scores
            .iter()
            .find(|(p, _)| *p == parameter)
            .map(|(_, s)| *s)
    }

    /// The wire message for this score.
    pub fn to_proto(&self) -> News2 {
        News2 {
            total: u32::from(self.total),
            sub_scores: self
                .sub_scores
                .iter()
                .map(|(p, s)| News2SubScore {
                    parameter: p.to_proto() as i32,
                    score: u32::from(*s),
                })
                .collect(),
            response: self.response.to_proto() as i32,
            missing: self.missing.iter().map(|p| p.to_proto() as i32).collect(),
            spo2_scale_2: self.scale == SpO2Scale::Scale2,
        }
    }

    /// The set of present parameters as a bit mask, plus the scale, for comparing like with like.
    fn basis(&self) -> u8 {
        let present = self.sub_scores.iter().fold(0u8, |m, (p, _)| m | p.bit());
        let scale = if self.scale == SpO2Scale::Scale2 {
            0x80
        } else {
            0
        };
        present | scale
    }
}

/// Rounds to the nearest integer, halves away from zero (with [`HALF_TOLERANCE`]). `x` must be finite.
fn round_half_away(x: f64) -> i64 {
    // `as` saturates for out-of-range values, which the bands treat as the extreme band.
    (x + x.signum() * HALF_TOLERANCE).round() as i64
}

/// Respiration-rate sub-score (Chart 1): ≤8 → 3, 9–11 → 1, 12–20 → 0, 21–24 → 2, ≥25 → 3. The rate is
/// rounded to a whole number first. A non-finite value scores 3.
pub fn respiration_subscore(rr: f64) -> u8 {
    if !rr.is_finite() {
        return 3;
    }
    match round_half_away(rr) {
        ..=8 => 3,
        9..=11 => 1,
        12..=20 => 0,
        21..=24 => 2,
        25.. => 3,
    }
}

/// SpO2 sub-score (Chart 1). The saturation is rounded to a whole percent first. A non-finite value scores 3.
///
/// - Scale 1 (`on_oxygen` is not used; oxygen is scored by [`air_or_oxygen_subscore`]): ≤91 → 3, 92–93 → 2,
///   94–95 → 1, ≥96 → 0.
/// - Scale 2: ≤83 → 3, 84–85 → 2, 86–87 → 1, 88–92 → 0, ≥93 on air → 0, 93–94 on oxygen → 1, 95–96 on
///   oxygen → 2, ≥97 on oxygen → 3.
pub fn spo2_subscore(spo2: f64, scale: SpO2Scale, on_oxygen: bool) -> u8 {
    if !spo2.is_finite() {
        return 3;
    }
    let s = round_half_away(spo2);
    match scale {
        SpO2Scale::Scale1 => match s {
            ..=91 => 3,
            92..=93 => 2,
            94..=95 => 1,
            96.. => 0,
        },
        SpO2Scale::Scale2 => match s {
            ..=83 => 3,
            84..=85 => 2,
            86..=87 => 1,
            88..=92 => 0,
            93.. if !on_oxygen => 0,
            93..=94 => 1,
            95..=96 => 2,
            97.. => 3,
        },
    }
}

/// Air-or-oxygen sub-score (Chart 1): air → 0, supplemental oxygen → 2.
pub fn air_or_oxygen_subscore(on_oxygen: bool) -> u8 {
    if on_oxygen { 2 } else { 0 }
}

/// Systolic blood pressure sub-score (Chart 1): ≤90 → 3, 91–100 → 2, 101–110 → 1, 111–219 → 0, ≥220 → 3.
/// The pressure is rounded to a whole mmHg first. A non-finite value scores 3.
pub fn systolic_subscore(sbp: f64) -> u8 {
    if !sbp.is_finite() {
        return 3;
    }
    match round_half_away(sbp) {
        ..=90 => 3,
        91..=100 => 2,
        101..=110 => 1,
        111..=219 => 0,
        220.. => 3,
    }
}

/// Pulse sub-score (Chart 1): ≤40 → 3, 41–50 → 1, 51–90 → 0, 91–110 → 1, 111–130 → 2, ≥131 → 3. The rate is
/// rounded to a whole number first. A non-finite value scores 3.
pub fn pulse_subscore(hr: f64) -> u8 {
    if !hr.is_finite() {
        return 3;
    }
    match round_half_away(hr) {
        ..=40 => 3,
        41..=50 => 1,
        51..=90 => 0,
        91..=110 => 1,
        111..=130 => 2,
        131.. => 3,
    }
}

/// Consciousness sub-score (Chart 1): alert → 0; new confusion, voice, pain or unresponsive → 3.
pub fn consciousness_subscore(c: Consciousness) -> u8 {
    match c {
        Consciousness::Alert => 0,
        Consciousness::NewConfusion
        | Consciousness::Voice
        | Consciousness::Pain
        | Consciousness::Unresponsive => 3,
    }
}

/// Temperature sub-score (Chart 1): ≤35.0 → 3, 35.1–36.0 → 1, 36.1–38.0 → 0, 38.1–39.0 → 1, ≥39.1 → 2. The
/// temperature (°C) is rounded to one decimal first. A non-finite value scores 3.
pub fn temperature_subscore(t: f64) -> u8 {
    if !t.is_finite() {
        return 3;
    }
    // Work in tenths of a degree so the band edges are exact integers.
    match round_half_away(t * 10.0) {
        ..=350 => 3,
        351..=360 => 1,
        361..=380 => 0,
        381..=390 => 1,
        391.. => 2,
    }
}

/// A finite number, or `None`.
fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

/// Computes NEWS2 from whatever is present in `inputs`; see the module documentation for rounding, missing
/// parameters and scale 2 with unknown oxygen therapy.
pub fn score(inputs: &News2Inputs) -> News2Score {
    let on_oxygen = inputs.on_oxygen;
    let per_parameter = [
        (
            Parameter::RespirationRate,
            finite(inputs.respiration_rate).map(respiration_subscore),
        ),
        (
            Parameter::SpO2,
            // Unknown oxygen therapy: score as on air (AirOrOxygen is then listed as missing).
            finite(inputs.spo2).map(|s| spo2_subscore(s, inputs.scale, on_oxygen.unwrap_or(false))),
        ),
        (
            Parameter::AirOrOxygen,
            on_oxygen.map(air_or_oxygen_subscore),
        ),
        (
            Parameter::SystolicBp,
            finite(inputs.systolic_bp).map(systolic_subscore),
        ),
        (Parameter::Pulse, finite(inputs.pulse).map(pulse_subscore)),
        (
            Parameter::Consciousness,
            inputs.consciousness.map(consciousness_subscore),
        ),
        (
            Parameter::Temperature,
            finite(inputs.temperature_c).map(temperature_subscore),
        ),
    ];
    let mut sub_scores = Vec::with_capacity(per_parameter.len());
    let mut missing = Vec::new();
    for (p, s) in per_parameter {
        match s {
            Some(s) => sub_scores.push((p, s)),
            None => missing.push(p),
        }
    }
    // At most 3+3+2+3+3+3+3 = 20, so a u8 cannot overflow.
    let total: u8 = sub_scores.iter().map(|(_, s)| *s).sum();
    let any_single_parameter_3 = sub_scores.iter().any(|(_, s)| *s >= 3);
    News2Score {
        total,
        response: ClinicalResponse::from_total(total, any_single_parameter_3),
        complete: missing.is_empty(),
        sub_scores,
        missing,
        any_single_parameter_3,
        scale: inputs.scale,
    }
}

/// Freshness windows and trend rule for [`PatientNews2`]. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct News2Config {
    /// How long a respiration rate, SpO2 or pulse counts (continuously monitored). Default 15 min.
    pub vitals_stale_ms: i64,
    /// How long a systolic blood pressure counts. Default 60 min.
    pub bp_stale_ms: i64,
    /// How long a temperature counts. Default 4 h.
    pub temp_stale_ms: i64,
    /// How long a level-of-consciousness assessment counts. Default 4 h.
    pub consciousness_stale_ms: i64,
    /// How long an air-or-oxygen observation counts. Default 4 h.
    pub oxygen_stale_ms: i64,
    /// The window a trend is judged over. Default 60 min.
    pub trend_window_ms: i64,
    /// The change in total, within the window, that counts as rising or falling (values below 1 act as 1).
    /// Default 2.
    pub trend_rise: u8,
    /// How long the score must stay below an announced response alarm's level (or stop rising, for the rising
    /// alarm) before that alarm ends; a return within this time continues the same alarm instead of raising a new
    /// one. Default 15 min. A patient whose parameter sits at a chart boundary (SpO2 91/92, RR 8/9) otherwise gets
    /// a new alarm at every crossing: on the simulated ward most announced alarms were such re-raised low-priority
    /// NEWS2 responses (docs/alarm-evaluation.md).
    pub response_clear_hold_ms: i64,
}

impl Default for News2Config {
    fn default() -> Self {
        const MIN: i64 = 60_000;
        Self {
            vitals_stale_ms: 15 * MIN,
            bp_stale_ms: 60 * MIN,
            temp_stale_ms: 4 * 60 * MIN,
            consciousness_stale_ms: 4 * 60 * MIN,
            oxygen_stale_ms: 4 * 60 * MIN,
            trend_window_ms: 60 * MIN,
            trend_rise: 2,
            response_clear_hold_ms: 15 * MIN,
        }
    }
}

/// One observation of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<T> {
    /// The observed value.
    pub value: T,
    /// When it was measured (not received).
    pub at_unix_ms: i64,
    /// Idempotency key of the sample it came from.
    pub source_key: String,
}

/// How the total has moved within the trend window, compared with earlier scores over the same parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// No earlier comparable score within the window.
    Unknown,
    /// Neither risen nor fallen by the configured amount.
    Stable,
    /// The total is `by` points above the lowest comparable total of the last `over_ms`.
    Rising {
        /// Points above the minimum.
        by: u8,
        /// Time from the earliest moment within the window at which that minimum held, to the evaluation.
        over_ms: i64,
    },
    /// The total is `by` points below the highest comparable total of the last `over_ms`.
    Falling {
        /// Points below the maximum.
        by: u8,
        /// Time from the earliest moment within the window at which that maximum held, to the evaluation.
        over_ms: i64,
    },
}

/// A NEWS2 evaluation of one patient.
#[derive(Debug, Clone, PartialEq)]
pub struct News2Update {
    /// The score.
    pub score: News2Score,
    /// The evaluation time: the newest sample time seen, or the tick time.
    pub at_unix_ms: i64,
    /// Idempotency keys of the fresh samples the score used, in chart order, without duplicates.
    pub derived_from: Vec<String>,
    /// Movement of the total within the trend window.
    pub trend: Trend,
}

impl News2Update {
    /// The wire [`RiskScore`] for this update (`computed_at` is the evaluation time).
    pub fn to_proto(&self, patient_id: &str, location: Option<BedLocation>) -> RiskScore {
        RiskScore {
            patient_id: patient_id.to_string(),
            location,
            computed_at_unix_ms: self.at_unix_ms,
            score: Some(risk_score::Score::News2(self.score.to_proto())),
            derived_from: self.derived_from.clone(),
        }
    }
}

/// One change of the score, kept for the trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HistoryEntry {
    /// When this total took effect.
    at: i64,
    total: u8,
    /// [`News2Score::basis`]: which parameters were present, and the scale.
    basis: u8,
}

/// The NEWS2 state of one patient: the newest observation of each parameter and the score they give.
///
/// Rules:
/// - A parameter counts only while fresh: measured no longer ago than its staleness window
///   ([`News2Config`]) before the evaluation time. The evaluation time is the newest sample time seen by the
///   `observe_*` calls, or the [`tick`](Self::tick) time; it never moves backwards.
/// - An older sample never replaces a newer one of the same parameter (late or re-sent data is harmless).
///   A sample with the same time as the stored one replaces it (a correction).
/// - Samples flagged [`QualityFlag::Artifact`] or [`QualityFlag::SensorOff`] are not used: an artifact value
///   (motion, interference) or a value read from a probe that is off the patient does not describe the patient,
///   and scoring it could raise a false emergency (e.g. SpO2 reading 70 % from a loose probe) or mask a real
///   one. The previous valid value keeps counting until it goes stale. Other flags (low signal, manual entry,
///   …) describe plausible values and are scored.
/// - Samples without a measurement time (0 or negative), with a non-finite value, or whose unit is not the
///   metric's canonical UCUM unit (as produced by `normalize`) are ignored rather than guessed at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatientNews2 {
    scale: SpO2Scale,
    respiration_rate: Option<Observed<f64>>,
    spo2: Option<Observed<f64>>,
    on_oxygen: Option<Observed<bool>>,
    systolic_bp: Option<Observed<f64>>,
    pulse: Option<Observed<f64>>,
    consciousness: Option<Observed<Consciousness>>,
    temperature_c: Option<Observed<f64>>,
    /// The evaluation clock: newest sample or tick time seen.
    clock_ms: Option<i64>,
    /// Score changes within the trend window (plus the one in effect at its start), oldest first.
    history: VecDeque<HistoryEntry>,
    current: Option<News2Update>,
}

/// A parsed vital sign, routed to its parameter.
enum Reading {
    RespirationRate(f64),
    SpO2(f64),
    SystolicBp(f64),
    Pulse(f64),
    Temperature(f64),
    Consciousness(Consciousness),
}

impl Reading {
    /// Routes a normalized vital sign, or `None` for metrics NEWS2 does not use and for unusable values.
    fn from_vital(v: &VitalSign) -> Option<Self> {
        let canonical_unit = |mdc: u32| metrics::by_mdc(mdc).is_some_and(|m| m.unit == v.unit_ucum);
        let numeric = |wrap: fn(f64) -> Reading| {
            (canonical_unit(v.metric_mdc) && v.value.is_finite()).then(|| wrap(v.value))
        };
        match v.metric_mdc {
            metrics::MDC_RESP_RATE => numeric(Reading::RespirationRate),
            metrics::MDC_PULS_OXIM_SAT_O2 => numeric(Reading::SpO2),
            metrics::MDC_ECG_HEART_RATE
            | metrics::MDC_PULS_OXIM_PULS_RATE
            | metrics::MDC_PULS_RATE_NON_INV => numeric(Reading::Pulse),
            metrics::MDC_TEMP_BODY | metrics::MDC_TEMP => numeric(Reading::Temperature),
            metrics::MDC_PRESS_BLD_NONINV_SYS => numeric(Reading::SystolicBp),
            metrics::MDC_PRESS_BLD_NONINV => {
                if !canonical_unit(metrics::MDC_PRESS_BLD_NONINV) {
                    return None;
                }
                v.components
                    .iter()
                    .find(|c| c.metric_mdc == metrics::MDC_PRESS_BLD_NONINV_SYS)
                    .map(|c| c.value)
                    .filter(|s| s.is_finite())
                    .map(Reading::SystolicBp)
            }
            metrics::WARDWATCH_ACVPU => {
                Consciousness::from_acvpu(&v.enumerated).map(Reading::Consciousness)
            }
            _ => None,
        }
    }
}

/// Stores `obs` unless the slot already holds a newer observation. Returns whether it was stored.
fn store<T>(slot: &mut Option<Observed<T>>, obs: Observed<T>) -> bool {
    if let Some(old) = slot
        && old.at_unix_ms > obs.at_unix_ms
    {
        return false;
    }
    *slot = Some(obs);
    true
}

/// The value of `slot` if it is fresh at `now`, noting its source key.
fn fresh<'a, T: Copy>(
    slot: &'a Option<Observed<T>>,
    now: i64,
    stale_ms: i64,
    keys: &mut Vec<&'a str>,
) -> Option<T> {
    let o = slot.as_ref()?;
    if now.saturating_sub(o.at_unix_ms) > stale_ms {
        return None;
    }
    keys.push(&o.source_key);
    Some(o.value)
}

impl PatientNews2 {
    /// A patient with no observations yet, scored on `scale`.
    pub fn new(scale: SpO2Scale) -> Self {
        Self {
            scale,
            ..Self::default()
        }
    }

    /// Changes the SpO2 scale (a clinical decision). Takes effect at the next `observe_*` or `tick`, which
    /// reports the change of score.
    pub fn set_scale(&mut self, s: SpO2Scale) {
        self.scale = s;
    }

    /// The SpO2 scale in use.
    pub fn scale(&self) -> SpO2Scale {
        self.scale
    }

    /// Feeds a normalized vital sign: returns `Some(new score)` when the score (total, sub-scores, missing set,
    /// response or scale) changed, `None` otherwise. Unknown metrics are ignored, as are samples flagged
    /// artifact or sensor-off and unusable samples (see the type's documentation). For blood pressure the
    /// systolic component is used.
    pub fn observe_vital(
        &mut self,
        v: &VitalSign,
        source_key: &str,
        cfg: &News2Config,
    ) -> Option<News2Update> {
        let unusable = v
            .quality
            .iter()
            .any(|q| *q == QualityFlag::Artifact as i32 || *q == QualityFlag::SensorOff as i32);
        let at = v.measured_at_unix_ms;
        if unusable || at <= 0 {
            return None;
        }
        let reading = Reading::from_vital(v)?;
        let key = source_key.to_string();
        let stored = match reading {
            Reading::RespirationRate(x) => store(&mut self.respiration_rate, observed(x, at, key)),
            Reading::SpO2(x) => store(&mut self.spo2, observed(x, at, key)),
            Reading::SystolicBp(x) => store(&mut self.systolic_bp, observed(x, at, key)),
            Reading::Pulse(x) => store(&mut self.pulse, observed(x, at, key)),
            Reading::Temperature(x) => store(&mut self.temperature_c, observed(x, at, key)),
            Reading::Consciousness(c) => store(&mut self.consciousness, observed(c, at, key)),
        };
        if !stored {
            return None;
        }
        self.evaluate(at, cfg)
    }

    /// Feeds an air-or-oxygen observation (true: supplemental oxygen). Returns `Some(new score)` when the score
    /// changed. Observations without a time (`at_unix_ms` ≤ 0) or older than the stored one are ignored.
    pub fn observe_oxygen(
        &mut self,
        on_oxygen: bool,
        at_unix_ms: i64,
        source_key: &str,
        cfg: &News2Config,
    ) -> Option<News2Update> {
        if at_unix_ms <= 0 {
            return None;
        }
        let obs = observed(on_oxygen, at_unix_ms, source_key.to_string());
        if !store(&mut self.on_oxygen, obs) {
            return None;
        }
        self.evaluate(at_unix_ms, cfg)
    }

    /// Re-evaluates at `now_unix_ms` (parameters age out); returns `Some` when the score changed because
    /// something went stale (or the scale was changed since the last evaluation). A `now` earlier than the
    /// newest time already seen evaluates at that newest time. Before any observation there is no score.
    pub fn tick(&mut self, now_unix_ms: i64, cfg: &News2Config) -> Option<News2Update> {
        self.evaluate(now_unix_ms, cfg)
    }

    /// The most recent evaluation (refreshed by every `observe_*` and `tick`, also when nothing changed), or
    /// `None` before the first observation.
    pub fn current(&self) -> Option<&News2Update> {
        self.current.as_ref()
    }

    /// Scores at `max(clock, at)`, records the trend history, and returns the update if the score changed.
    fn evaluate(&mut self, at: i64, cfg: &News2Config) -> Option<News2Update> {
        let now = self.clock_ms.map_or(at, |c| c.max(at));
        self.clock_ms = Some(now);
        let nothing_observed = self.respiration_rate.is_none()
            && self.spo2.is_none()
            && self.on_oxygen.is_none()
            && self.systolic_bp.is_none()
            && self.pulse.is_none()
            && self.consciousness.is_none()
            && self.temperature_c.is_none();
        if nothing_observed {
            return None;
        }

        let mut keys: Vec<&str> = Vec::new();
        let respiration_rate = fresh(&self.respiration_rate, now, cfg.vitals_stale_ms, &mut keys);
        let spo2 = fresh(&self.spo2, now, cfg.vitals_stale_ms, &mut keys);
        let on_oxygen = fresh(&self.on_oxygen, now, cfg.oxygen_stale_ms, &mut keys);
        let systolic_bp = fresh(&self.systolic_bp, now, cfg.bp_stale_ms, &mut keys);
        let pulse = fresh(&self.pulse, now, cfg.vitals_stale_ms, &mut keys);
        let consciousness = fresh(
            &self.consciousness,
            now,
            cfg.consciousness_stale_ms,
            &mut keys,
        );
        let temperature_c = fresh(&self.temperature_c, now, cfg.temp_stale_ms, &mut keys);
        let score = score(&News2Inputs {
            respiration_rate,
            spo2,
            on_oxygen,
            systolic_bp,
            pulse,
            consciousness,
            temperature_c,
            scale: self.scale,
        });
        let mut derived_from: Vec<String> = Vec::with_capacity(keys.len());
        for k in keys {
            if !derived_from.iter().any(|d| d == k) {
                derived_from.push(k.to_string());
            }
        }

        self.record(now, &score, cfg);
        let trend = self.trend(now, &score, cfg);
        let changed = self.current.as_ref().is_none_or(|c| c.score != score);
        let update = News2Update {
            score,
            at_unix_ms: now,
            derived_from,
            trend,
        };
        self.current = Some(update.clone());
        changed.then_some(update)
    }

    /// Appends the score to the history when its total or basis changed, and drops what the window no longer
    /// needs (keeping the entry in effect at the window's start).
    fn record(&mut self, now: i64, score: &News2Score, cfg: &News2Config) {
        let entry = HistoryEntry {
            at: now,
            total: score.total,
            basis: score.basis(),
        };
        let same = self
            .history
            .back()
            .is_some_and(|b| b.total == entry.total && b.basis == entry.basis);
        if !same {
            self.history.push_back(entry);
        }
        let window_start = now.saturating_sub(cfg.trend_window_ms);
        while self.history.len() > MAX_HISTORY
            || self.history.get(1).is_some_and(|e| e.at <= window_start)
        {
            self.history.pop_front();
        }
    }

    /// The trend of `score` at `now`, over history entries with the same basis (same parameters present, same
    /// scale), so a total that grows only because a missing parameter arrived is not reported as rising.
    fn trend(&self, now: i64, score: &News2Score, cfg: &News2Config) -> Trend {
        let window_start = now.saturating_sub(cfg.trend_window_ms);
        let basis = score.basis();
        let threshold = cfg.trend_rise.max(1);
        // (total, since) of the lowest and highest comparable totals; the earliest such time on ties (entries
        // are oldest first and `since` never decreases along them).
        let mut low: Option<(u8, i64)> = None;
        let mut high: Option<(u8, i64)> = None;
        let mut earliest = now;
        for e in self.history.iter().filter(|e| e.basis == basis) {
            let since = e.at.max(window_start).min(now);
            earliest = earliest.min(since);
            if low.is_none_or(|(t, _)| e.total < t) {
                low = Some((e.total, since));
            }
            if high.is_none_or(|(t, _)| e.total > t) {
                high = Some((e.total, since));
            }
        }
        if earliest >= now {
            return Trend::Unknown;
        }
        if let Some((t, since)) = low
            && score.total >= t.saturating_add(threshold)
        {
            return Trend::Rising {
                by: score.total - t,
                over_ms: now - since,
            };
        }
        if let Some((t, since)) = high
            && t >= score.total.saturating_add(threshold)
        {
            return Trend::Falling {
                by: t - score.total,
                over_ms: now - since,
            };
        }
        Trend::Stable
    }
}

/// Shorthand constructor for [`Observed`].
fn observed<T>(value: T, at_unix_ms: i64, source_key: String) -> Observed<T> {
    Observed {
        value,
        at_unix_ms,
        source_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::v1::VitalComponent;

    // ---- Chart 1, parameter by parameter: both sides of every band edge. Expected values are read from the
    // ---- RCP 2017 table in shared/clinical-reference.md.

    #[test]
    fn respiration_rate_band_edges() {
        for (rr, expected) in [
            (0.0, 3),
            (8.0, 3),
            (9.0, 1),
            (11.0, 1),
            (12.0, 0),
            (20.0, 0),
            (21.0, 2),
            (24.0, 2),
            (25.0, 3),
            (60.0, 3),
        ] {
            assert_eq!(respiration_subscore(rr), expected, "RR {rr}");
        }
    }

    #[test]
    fn spo2_scale_1_band_edges() {
        for on_o2 in [false, true] {
            for (s, expected) in [
                (70.0, 3),
                (91.0, 3),
                (92.0, 2),
                (93.0, 2),
                (94.0, 1),
                (95.0, 1),
                (96.0, 0),
                (100.0, 0),
            ] {
                assert_eq!(
                    spo2_subscore(s, SpO2Scale::Scale1, on_o2),
                    expected,
                    "SpO2 {s} scale 1 on O2 {on_o2}"
                );
            }
        }
    }

    #[test]
    fn spo2_scale_2_band_edges_on_air() {
        for (s, expected) in [
            (70.0, 3),
            (83.0, 3),
            (84.0, 2),
            (85.0, 2),
            (86.0, 1),
            (87.0, 1),
            (88.0, 0),
            (92.0, 0),
            (93.0, 0),
            (96.0, 0),
            (97.0, 0),
            (100.0, 0),
        ] {
            assert_eq!(
                spo2_subscore(s, SpO2Scale::Scale2, false),
                expected,
                "SpO2 {s} scale 2 on air"
            );
        }
    }

    #[test]
    fn spo2_scale_2_band_edges_on_oxygen() {
        for (s, expected) in [
            (70.0, 3),
            (83.0, 3),
            (84.0, 2),
            (85.0, 2),
            (86.0, 1),
            (87.0, 1),
            (88.0, 0),
            (92.0, 0),
            (93.0, 1),
            (94.0, 1),
            (95.0, 2),
            (96.0, 2),
            (97.0, 3),
            (100.0, 3),
        ] {
            assert_eq!(
                spo2_subscore(s, SpO2Scale::Scale2, true),
                expected,
                "SpO2 {s} scale 2 on O2"
            );
        }
    }

    #[test]
    fn air_or_oxygen() {
        assert_eq!(air_or_oxygen_subscore(false), 0);
        assert_eq!(air_or_oxygen_subscore(true), 2);
    }

    #[test]
    fn systolic_band_edges() {
        for (sbp, expected) in [
            (50.0, 3),
            (90.0, 3),
            (91.0, 2),
            (100.0, 2),
            (101.0, 1),
            (110.0, 1),
            (111.0, 0),
            (219.0, 0),
            (220.0, 3),
            (260.0, 3),
        ] {
            assert_eq!(systolic_subscore(sbp), expected, "SBP {sbp}");
        }
    }

    #[test]
    fn pulse_band_edges() {
        for (hr, expected) in [
            (20.0, 3),
            (40.0, 3),
            (41.0, 1),
            (50.0, 1),
            (51.0, 0),
            (90.0, 0),
            (91.0, 1),
            (110.0, 1),
            (111.0, 2),
            (130.0, 2),
            (131.0, 3),
            (200.0, 3),
        ] {
            assert_eq!(pulse_subscore(hr), expected, "pulse {hr}");
        }
    }

    #[test]
    fn consciousness_acvpu() {
        for (letter, expected) in [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)] {
            let c = Consciousness::from_acvpu(letter);
            assert_eq!(c.map(consciousness_subscore), Some(expected), "{letter}");
            assert_eq!(c.map(Consciousness::to_acvpu), Some(letter));
        }
        assert_eq!(Consciousness::from_acvpu(" v "), Some(Consciousness::Voice));
        assert_eq!(Consciousness::from_acvpu(""), None);
        assert_eq!(Consciousness::from_acvpu("X"), None);
        assert_eq!(Consciousness::from_acvpu("AV"), None);
    }

    #[test]
    fn temperature_band_edges() {
        for (t, expected) in [
            (33.0, 3),
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
            (41.0, 2),
        ] {
            assert_eq!(temperature_subscore(t), expected, "temp {t}");
        }
    }

    #[test]
    fn values_between_chart_integers_are_rounded_half_away_from_zero() {
        // RR: 20.4 → 20 (0 points), 20.5 → 21 (2 points); 8.4 → 8 (3), 8.5 → 9 (1).
        assert_eq!(respiration_subscore(20.4), 0);
        assert_eq!(respiration_subscore(20.5), 2);
        assert_eq!(respiration_subscore(8.4), 3);
        assert_eq!(respiration_subscore(8.5), 1);
        // SpO2 95.5 → 96 (0), 95.4 → 95 (1); scale 2 on O2 92.5 → 93 (1).
        assert_eq!(spo2_subscore(95.5, SpO2Scale::Scale1, false), 0);
        assert_eq!(spo2_subscore(95.4, SpO2Scale::Scale1, false), 1);
        assert_eq!(spo2_subscore(92.5, SpO2Scale::Scale2, true), 1);
        assert_eq!(spo2_subscore(92.4, SpO2Scale::Scale2, true), 0);
        // SBP 90.5 → 91 (2), 219.5 → 220 (3), 219.4 → 219 (0).
        assert_eq!(systolic_subscore(90.5), 2);
        assert_eq!(systolic_subscore(90.4), 3);
        assert_eq!(systolic_subscore(219.5), 3);
        assert_eq!(systolic_subscore(219.4), 0);
        // Pulse 90.5 → 91 (1), 130.49 → 130 (2).
        assert_eq!(pulse_subscore(90.5), 1);
        assert_eq!(pulse_subscore(90.49), 0);
        assert_eq!(pulse_subscore(130.49), 2);
        // Temperature to one decimal: 38.05 → 38.1 (1), 38.04 → 38.0 (0), 35.05 → 35.1 (1), 36.04 → 36.0 (1).
        assert_eq!(temperature_subscore(38.05), 1);
        assert_eq!(temperature_subscore(38.04), 0);
        assert_eq!(temperature_subscore(35.05), 1);
        assert_eq!(temperature_subscore(35.04), 3);
        assert_eq!(temperature_subscore(36.04), 1);
        assert_eq!(temperature_subscore(36.05), 0);
    }

    #[test]
    fn non_finite_values_never_lower_a_score() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(respiration_subscore(x), 3);
            assert_eq!(spo2_subscore(x, SpO2Scale::Scale1, false), 3);
            assert_eq!(systolic_subscore(x), 3);
            assert_eq!(pulse_subscore(x), 3);
            assert_eq!(temperature_subscore(x), 3);
        }
        // In an aggregate they are missing, not scored.
        let s = score(&News2Inputs {
            pulse: Some(f64::NAN),
            ..normal()
        });
        assert_eq!(s.missing, vec![Parameter::Pulse]);
        assert!(!s.complete);
    }

    // ---- Aggregates and Chart 4 response levels.

    /// A complete set of inputs in which every parameter scores 0.
    fn normal() -> News2Inputs {
        News2Inputs {
            respiration_rate: Some(16.0),
            spo2: Some(97.0),
            on_oxygen: Some(false),
            systolic_bp: Some(125.0),
            pulse: Some(72.0),
            consciousness: Some(Consciousness::Alert),
            temperature_c: Some(37.0),
            scale: SpO2Scale::Scale1,
        }
    }

    #[test]
    fn all_normal_is_zero_and_routine() {
        let s = score(&normal());
        assert_eq!(s.total, 0);
        assert_eq!(s.response, ClinicalResponse::Routine);
        assert!(s.complete);
        assert!(s.missing.is_empty());
        assert!(!s.any_single_parameter_3);
        assert_eq!(
            s.sub_scores,
            Parameter::ALL.iter().map(|p| (*p, 0)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn aggregate_one_to_four_is_low() {
        // Pulse 95 → 1.
        let s = score(&News2Inputs {
            pulse: Some(95.0),
            ..normal()
        });
        assert_eq!((s.total, s.response), (1, ClinicalResponse::Low));
        // Pulse 95 → 1, temperature 38.5 → 1, oxygen → 2: 4.
        let s = score(&News2Inputs {
            pulse: Some(95.0),
            temperature_c: Some(38.5),
            on_oxygen: Some(true),
            ..normal()
        });
        assert_eq!((s.total, s.response), (4, ClinicalResponse::Low));
        assert!(!s.any_single_parameter_3);
    }

    #[test]
    fn single_three_with_low_total_is_low_medium() {
        // New confusion → 3, everything else 0: total 3.
        let s = score(&News2Inputs {
            consciousness: Some(Consciousness::NewConfusion),
            ..normal()
        });
        assert_eq!((s.total, s.response), (3, ClinicalResponse::LowMedium));
        assert!(s.any_single_parameter_3);
        assert_eq!(s.sub_score(Parameter::Consciousness), Some(3));
        // RR 26 → 3, pulse 95 → 1: total 4, still low-medium.
        let s = score(&News2Inputs {
            respiration_rate: Some(26.0),
            pulse: Some(95.0),
            ..normal()
        });
        assert_eq!((s.total, s.response), (4, ClinicalResponse::LowMedium));
    }

    #[test]
    fn five_and_six_are_medium() {
        // SBP 95 → 2, pulse 115 → 2, temperature 38.5 → 1: 5.
        let s = score(&News2Inputs {
            systolic_bp: Some(95.0),
            pulse: Some(115.0),
            temperature_c: Some(38.5),
            ..normal()
        });
        assert_eq!((s.total, s.response), (5, ClinicalResponse::Medium));
        // A 3 (SpO2 90 on scale 1) plus oxygen 2 plus pulse 95 (1): 6, medium outranks low-medium.
        let s = score(&News2Inputs {
            spo2: Some(90.0),
            on_oxygen: Some(true),
            pulse: Some(95.0),
            ..normal()
        });
        assert_eq!((s.total, s.response), (6, ClinicalResponse::Medium));
        assert!(s.any_single_parameter_3);
    }

    #[test]
    fn seven_or_more_is_high_and_maximum_is_twenty() {
        // RR 22 → 2, SpO2 93 → 2, oxygen → 2, temperature 38.5 → 1: 7.
        let s = score(&News2Inputs {
            respiration_rate: Some(22.0),
            spo2: Some(93.0),
            on_oxygen: Some(true),
            temperature_c: Some(38.5),
            ..normal()
        });
        assert_eq!((s.total, s.response), (7, ClinicalResponse::High));
        // The worst value of every parameter: 3+3+2+3+3+3+3 = 20 (temperature's worst is ≤35.0 → 3).
        let worst = News2Inputs {
            respiration_rate: Some(30.0),
            spo2: Some(85.0),
            on_oxygen: Some(true),
            systolic_bp: Some(80.0),
            pulse: Some(140.0),
            consciousness: Some(Consciousness::Unresponsive),
            temperature_c: Some(34.0),
            scale: SpO2Scale::Scale1,
        };
        let s = score(&worst);
        assert_eq!((s.total, s.response), (20, ClinicalResponse::High));
        assert!(s.complete);
        // Scale 2 on oxygen with SpO2 ≥97 also reaches 20.
        let s = score(&News2Inputs {
            spo2: Some(98.0),
            scale: SpO2Scale::Scale2,
            ..worst
        });
        assert_eq!(s.total, 20);
    }

    #[test]
    fn response_levels_from_totals() {
        use ClinicalResponse::*;
        for (total, three, expected) in [
            (0, false, Routine),
            (1, false, Low),
            (4, false, Low),
            (3, true, LowMedium),
            (4, true, LowMedium),
            (5, false, Medium),
            (6, true, Medium),
            (7, false, High),
            (20, true, High),
        ] {
            assert_eq!(
                ClinicalResponse::from_total(total, three),
                expected,
                "{total} {three}"
            );
        }
    }

    #[test]
    fn missing_parameters_are_listed_and_not_scored() {
        let s = score(&News2Inputs {
            systolic_bp: None,
            temperature_c: None,
            respiration_rate: Some(26.0),
            ..normal()
        });
        assert_eq!(s.total, 3);
        assert!(!s.complete);
        assert_eq!(
            s.missing,
            vec![Parameter::SystolicBp, Parameter::Temperature]
        );
        assert_eq!(s.sub_score(Parameter::SystolicBp), None);
        assert_eq!(
            s.sub_scores.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![
                Parameter::RespirationRate,
                Parameter::SpO2,
                Parameter::AirOrOxygen,
                Parameter::Pulse,
                Parameter::Consciousness
            ]
        );
        // Nothing at all: total 0, but incomplete with all seven missing.
        let s = score(&News2Inputs::default());
        assert_eq!(s.total, 0);
        assert!(!s.complete);
        assert_eq!(s.missing, Parameter::ALL.to_vec());
        assert!(s.sub_scores.is_empty());
    }

    #[test]
    fn scale_2_with_unknown_oxygen_scores_as_air_and_lists_oxygen_missing() {
        let s = score(&News2Inputs {
            spo2: Some(97.0),
            on_oxygen: None,
            scale: SpO2Scale::Scale2,
            ..normal()
        });
        assert_eq!(s.sub_score(Parameter::SpO2), Some(0));
        assert_eq!(s.missing, vec![Parameter::AirOrOxygen]);
        assert!(!s.complete);
        // The same saturation on oxygen: 3 for SpO2 plus 2 for oxygen.
        let s = score(&News2Inputs {
            spo2: Some(97.0),
            on_oxygen: Some(true),
            scale: SpO2Scale::Scale2,
            ..normal()
        });
        assert_eq!(s.sub_score(Parameter::SpO2), Some(3));
        assert_eq!(s.sub_score(Parameter::AirOrOxygen), Some(2));
        assert_eq!((s.total, s.response), (5, ClinicalResponse::Medium));
        assert_eq!(s.scale, SpO2Scale::Scale2);
    }

    // ---- Proto mapping.

    #[test]
    fn parameter_and_response_map_to_proto() {
        let params: Vec<i32> = Parameter::ALL.iter().map(|p| p.to_proto() as i32).collect();
        assert_eq!(params, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(Parameter::SpO2.to_proto(), News2Parameter::Spo2);
        assert_eq!(ClinicalResponse::Routine.to_proto(), News2Response::Routine);
        assert_eq!(ClinicalResponse::Low.to_proto(), News2Response::Low);
        assert_eq!(
            ClinicalResponse::LowMedium.to_proto(),
            News2Response::LowMedium
        );
        assert_eq!(ClinicalResponse::Medium.to_proto(), News2Response::Medium);
        assert_eq!(ClinicalResponse::High.to_proto(), News2Response::High);
    }

    #[test]
    fn update_maps_to_risk_score() {
        let mut inputs = News2Inputs {
            respiration_rate: Some(26.0),
            temperature_c: None,
            ..normal()
        };
        inputs.scale = SpO2Scale::Scale2;
        let update = News2Update {
            score: score(&inputs),
            at_unix_ms: 1_700_000_000_000,
            derived_from: vec!["k1".into(), "k2".into()],
            trend: Trend::Unknown,
        };
        let loc = BedLocation {
            ward: "7A".into(),
            bed: "12".into(),
        };
        let r = update.to_proto("MRN1", Some(loc.clone()));
        assert_eq!(r.patient_id, "MRN1");
        assert_eq!(r.location, Some(loc));
        assert_eq!(r.computed_at_unix_ms, 1_700_000_000_000);
        assert_eq!(r.derived_from, vec!["k1".to_string(), "k2".to_string()]);
        let Some(risk_score::Score::News2(n)) = r.score else {
            panic!("expected a News2 score, got {:?}", r.score);
        };
        assert_eq!(n.total, 3);
        assert_eq!(n.response, News2Response::LowMedium as i32);
        assert_eq!(n.missing, vec![News2Parameter::Temperature as i32]);
        assert!(n.spo2_scale_2);
        assert_eq!(n.sub_scores.len(), 6);
        assert_eq!(
            n.sub_scores[0],
            News2SubScore {
                parameter: News2Parameter::RespirationRate as i32,
                score: 3
            }
        );
        assert!(
            n.sub_scores[1..].iter().all(|s| s.score == 0),
            "{:?}",
            n.sub_scores
        );
    }

    // ---- The per-patient tracker.

    const T0: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    fn vital(mdc: u32, value: f64, unit: &str, at: i64) -> VitalSign {
        VitalSign {
            patient_id: "MRN1".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "12".into(),
            }),
            device_id: "mon-1".into(),
            metric_mdc: mdc,
            value,
            unit_ucum: unit.into(),
            measured_at_unix_ms: at,
            quality: vec![],
            components: vec![],
            enumerated: String::new(),
            encounter: None,
        }
    }

    fn rr(v: f64, at: i64) -> VitalSign {
        vital(metrics::MDC_RESP_RATE, v, "/min", at)
    }
    fn spo2(v: f64, at: i64) -> VitalSign {
        vital(metrics::MDC_PULS_OXIM_SAT_O2, v, "%", at)
    }
    fn hr(v: f64, at: i64) -> VitalSign {
        vital(metrics::MDC_ECG_HEART_RATE, v, "/min", at)
    }
    fn temp(v: f64, at: i64) -> VitalSign {
        vital(metrics::MDC_TEMP_BODY, v, "Cel", at)
    }
    fn bp(sys: f64, dia: f64, at: i64) -> VitalSign {
        let mut v = vital(metrics::MDC_PRESS_BLD_NONINV, 0.0, "mm[Hg]", at);
        v.components = vec![
            VitalComponent {
                metric_mdc: metrics::MDC_PRESS_BLD_NONINV_SYS,
                value: sys,
            },
            VitalComponent {
                metric_mdc: metrics::MDC_PRESS_BLD_NONINV_DIA,
                value: dia,
            },
        ];
        v
    }
    fn acvpu(letter: &str, at: i64) -> VitalSign {
        let mut v = vital(metrics::WARDWATCH_ACVPU, 0.0, "", at);
        v.enumerated = letter.into();
        v
    }

    /// A patient with all seven parameters observed at `at`, all scoring 0.
    fn full_normal(at: i64, cfg: &News2Config) -> PatientNews2 {
        let mut p = PatientNews2::new(SpO2Scale::Scale1);
        p.observe_vital(&rr(16.0, at), "rr", cfg);
        p.observe_vital(&spo2(97.0, at), "spo2", cfg);
        p.observe_oxygen(false, at, "o2", cfg);
        p.observe_vital(&bp(125.0, 80.0, at), "bp", cfg);
        p.observe_vital(&hr(72.0, at), "hr", cfg);
        p.observe_vital(&acvpu("A", at), "acvpu", cfg);
        p.observe_vital(&temp(37.0, at), "temp", cfg);
        p
    }

    #[test]
    fn tracker_scores_all_parameters_and_reports_changes_only() {
        let cfg = News2Config::default();
        let mut p = PatientNews2::new(SpO2Scale::Scale1);
        assert!(p.current().is_none());
        assert!(
            p.tick(T0, &cfg).is_none(),
            "no score before any observation"
        );

        let u = p.observe_vital(&rr(16.0, T0), "rr", &cfg);
        let u = u.expect("first observation gives a score");
        assert_eq!(u.score.total, 0);
        assert_eq!(u.score.missing.len(), 6);
        assert!(!u.score.complete);
        assert_eq!(u.derived_from, vec!["rr".to_string()]);

        let p2 = full_normal(T0, &cfg);
        let cur = p2.current().expect("score");
        assert!(cur.score.complete);
        assert_eq!(cur.score.total, 0);
        assert_eq!(
            cur.derived_from,
            ["rr", "spo2", "o2", "bp", "hr", "acvpu", "temp"].map(String::from)
        );

        // A new sample with the same sub-score changes nothing: no update, but current() is refreshed.
        let mut p = p2;
        assert!(p.observe_vital(&hr(75.0, T0 + 1000), "hr2", &cfg).is_none());
        let cur = p.current().expect("score");
        assert_eq!(cur.at_unix_ms, T0 + 1000);
        assert!(cur.derived_from.contains(&"hr2".to_string()));

        // Pulse 131 → 3: total 3, low-medium.
        let u = p
            .observe_vital(&hr(131.0, T0 + 2000), "hr3", &cfg)
            .expect("score changed");
        assert_eq!(u.score.sub_score(Parameter::Pulse), Some(3));
        assert_eq!(
            (u.score.total, u.score.response),
            (3, ClinicalResponse::LowMedium)
        );
    }

    #[test]
    fn tracker_uses_systolic_component_and_pulse_sources() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        let u = p
            .observe_vital(&bp(88.0, 60.0, T0 + 1), "bp2", &cfg)
            .expect("SBP 88 → 3");
        assert_eq!(u.score.sub_score(Parameter::SystolicBp), Some(3));
        // A bare systolic metric is understood too.
        let v = vital(metrics::MDC_PRESS_BLD_NONINV_SYS, 105.0, "mm[Hg]", T0 + 2);
        let u = p.observe_vital(&v, "bp3", &cfg).expect("SBP 105 → 1");
        assert_eq!(u.score.sub_score(Parameter::SystolicBp), Some(1));
        // Pulse from the oximeter and from the NIBP cuff feed the same parameter.
        let v = vital(metrics::MDC_PULS_OXIM_PULS_RATE, 115.0, "/min", T0 + 3);
        let u = p.observe_vital(&v, "pr", &cfg).expect("pulse 115 → 2");
        assert_eq!(u.score.sub_score(Parameter::Pulse), Some(2));
        let v = vital(metrics::MDC_PULS_RATE_NON_INV, 45.0, "/min", T0 + 4);
        let u = p.observe_vital(&v, "nibp-pr", &cfg).expect("pulse 45 → 1");
        assert_eq!(u.score.sub_score(Parameter::Pulse), Some(1));
        // MDC_TEMP as well as MDC_TEMP_BODY.
        let v = vital(metrics::MDC_TEMP, 39.5, "Cel", T0 + 5);
        let u = p.observe_vital(&v, "t2", &cfg).expect("temp 39.5 → 2");
        assert_eq!(u.score.sub_score(Parameter::Temperature), Some(2));
        // A BP without a systolic component is ignored.
        let mut v = bp(150.0, 90.0, T0 + 6);
        v.components
            .retain(|c| c.metric_mdc != metrics::MDC_PRESS_BLD_NONINV_SYS);
        assert!(p.observe_vital(&v, "bp4", &cfg).is_none());
        assert_eq!(
            p.current()
                .and_then(|c| c.score.sub_score(Parameter::SystolicBp)),
            Some(1)
        );
    }

    #[test]
    fn tracker_ignores_unknown_metrics_wrong_units_and_bad_values() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        let before = p.current().cloned();
        // Diastolic alone, an unknown code, °F not normalized, NaN, unknown ACVPU letter, no time.
        let ignored = [
            vital(metrics::MDC_PRESS_BLD_NONINV_DIA, 40.0, "mm[Hg]", T0 + 1),
            vital(999_999, 1.0, "/min", T0 + 1),
            vital(metrics::MDC_TEMP_BODY, 101.0, "[degF]", T0 + 1),
            vital(metrics::MDC_RESP_RATE, f64::NAN, "/min", T0 + 1),
            acvpu("X", T0 + 1),
            rr(30.0, 0),
        ];
        for v in &ignored {
            assert!(p.observe_vital(v, "bad", &cfg).is_none(), "{v:?}");
        }
        assert_eq!(p.current().cloned(), before);
    }

    #[test]
    fn artifact_and_sensor_off_samples_are_not_scored() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        for flag in [QualityFlag::Artifact, QualityFlag::SensorOff] {
            let mut v = spo2(70.0, T0 + MIN);
            v.quality = vec![flag as i32];
            assert!(p.observe_vital(&v, "probe-off", &cfg).is_none());
            let cur = p.current().expect("score");
            assert_eq!(cur.score.sub_score(Parameter::SpO2), Some(0));
            assert!(!cur.derived_from.contains(&"probe-off".to_string()));
        }
        // Low signal is a plausible value and is scored.
        let mut v = spo2(93.0, T0 + MIN);
        v.quality = vec![QualityFlag::LowSignal as i32];
        let u = p.observe_vital(&v, "low", &cfg).expect("scored");
        assert_eq!(u.score.sub_score(Parameter::SpO2), Some(2));
    }

    #[test]
    fn older_sample_never_replaces_newer() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        p.observe_vital(&rr(26.0, T0 + 10 * MIN), "rr-new", &cfg)
            .expect("RR 26 → 3");
        // A late sample from earlier, with a normal value, does not overwrite it.
        assert!(
            p.observe_vital(&rr(16.0, T0 + 5 * MIN), "rr-old", &cfg)
                .is_none()
        );
        let cur = p.current().expect("score");
        assert_eq!(cur.score.sub_score(Parameter::RespirationRate), Some(3));
        assert!(cur.derived_from.contains(&"rr-new".to_string()));
        assert!(!cur.derived_from.contains(&"rr-old".to_string()));
        // Same for oxygen.
        p.observe_oxygen(true, T0 + 10 * MIN, "o2-new", &cfg)
            .expect("oxygen → 2");
        assert!(p.observe_oxygen(false, T0 + MIN, "o2-old", &cfg).is_none());
        assert_eq!(
            p.current()
                .and_then(|c| c.score.sub_score(Parameter::AirOrOxygen)),
            Some(2)
        );
    }

    #[test]
    fn parameters_age_out_on_tick() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        // Exactly at the 15-minute edge the continuous vitals still count.
        assert!(p.tick(T0 + 15 * MIN, &cfg).is_none());
        // Just past it RR, SpO2 and pulse go.
        let u = p.tick(T0 + 15 * MIN + 1, &cfg).expect("vitals stale");
        assert_eq!(
            u.score.missing,
            vec![
                Parameter::RespirationRate,
                Parameter::SpO2,
                Parameter::Pulse
            ]
        );
        assert!(!u.score.complete);
        assert_eq!(
            u.derived_from,
            ["o2", "bp", "acvpu", "temp"].map(String::from)
        );
        // Nothing else changes until BP goes after 60 minutes.
        assert!(p.tick(T0 + 30 * MIN, &cfg).is_none());
        let u = p.tick(T0 + 60 * MIN + 1, &cfg).expect("BP stale");
        assert!(u.score.missing.contains(&Parameter::SystolicBp));
        // After 4 hours the rest goes: every parameter missing.
        let u = p.tick(T0 + 240 * MIN + 1, &cfg).expect("all stale");
        assert_eq!(u.score.missing, Parameter::ALL.to_vec());
        assert!(u.derived_from.is_empty());
        assert!(p.tick(T0 + 300 * MIN, &cfg).is_none());
        // A tick in the past does not bring them back.
        assert!(p.tick(T0, &cfg).is_none());
        assert_eq!(p.current().map(|c| c.at_unix_ms), Some(T0 + 300 * MIN));
    }

    #[test]
    fn observing_advances_the_clock_and_a_red_score_ages_out() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        let u = p
            .observe_vital(&rr(30.0, T0 + MIN), "rr", &cfg)
            .expect("RR 30 → 3");
        assert_eq!(u.score.response, ClinicalResponse::LowMedium);
        // A newer sample of another parameter advances the clock to T0 + 16 min: SpO2 from T0 is stale, the RR
        // from T0 + 1 min (15 min old) still counts.
        let u = p
            .observe_vital(&hr(72.0, T0 + 16 * MIN), "hr", &cfg)
            .expect("SpO2 stale");
        assert_eq!(u.score.missing, vec![Parameter::SpO2]);
        assert_eq!(u.score.sub_score(Parameter::RespirationRate), Some(3));
        assert!(
            p.tick(T0 + 10 * MIN, &cfg).is_none(),
            "clock does not move backwards"
        );
        // One millisecond later the red RR ages out and the response drops back to low.
        let u = p.tick(T0 + 16 * MIN + 1, &cfg).expect("RR stale");
        assert_eq!(
            u.score.missing,
            vec![Parameter::RespirationRate, Parameter::SpO2]
        );
        assert_eq!(
            (u.score.total, u.score.response),
            (0, ClinicalResponse::Routine)
        );
    }

    #[test]
    fn scale_change_is_reported_at_next_evaluation() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        p.observe_oxygen(true, T0 + 1, "o2", &cfg);
        // SpO2 97 on oxygen: scale 1 → 0, scale 2 → 3.
        p.set_scale(SpO2Scale::Scale2);
        assert_eq!(p.scale(), SpO2Scale::Scale2);
        let u = p.tick(T0 + 2, &cfg).expect("scale changed");
        assert_eq!(u.score.sub_score(Parameter::SpO2), Some(3));
        assert_eq!(u.score.scale, SpO2Scale::Scale2);
        // When the oxygen observation goes stale, SpO2 is scored as on air and oxygen is listed missing.
        let mut p = PatientNews2::new(SpO2Scale::Scale2);
        p.observe_oxygen(true, T0, "o2", &cfg);
        p.observe_vital(&spo2(97.0, T0 + 239 * MIN), "s", &cfg)
            .expect("score");
        assert_eq!(
            p.current().and_then(|c| c.score.sub_score(Parameter::SpO2)),
            Some(3)
        );
        let u = p.tick(T0 + 240 * MIN + 1, &cfg).expect("oxygen stale");
        assert_eq!(u.score.sub_score(Parameter::SpO2), Some(0));
        assert!(u.score.missing.contains(&Parameter::AirOrOxygen));
    }

    #[test]
    fn trend_detects_a_rise_within_the_window() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        assert_eq!(p.current().map(|c| c.trend), Some(Trend::Unknown));
        // Same score a minute later: stable.
        p.observe_vital(&rr(17.0, T0 + MIN), "rr1", &cfg);
        p.observe_vital(&spo2(97.0, T0 + MIN), "s1", &cfg);
        p.observe_vital(&hr(72.0, T0 + MIN), "hr1", &cfg);
        assert_eq!(p.current().map(|c| c.trend), Some(Trend::Stable));
        // +1 (pulse 95) at 10 min: below the rise threshold of 2.
        let u = p
            .observe_vital(&hr(95.0, T0 + 10 * MIN), "hr2", &cfg)
            .expect("1");
        assert_eq!(u.trend, Trend::Stable);
        // RR 22 (+2) at 14 min: total 3, rising by 3 against the 0 from T0.
        let u = p
            .observe_vital(&rr(22.0, T0 + 14 * MIN), "rr2", &cfg)
            .expect("3");
        assert_eq!(u.score.total, 3);
        assert_eq!(
            u.trend,
            Trend::Rising {
                by: 3,
                over_ms: 14 * MIN
            }
        );
    }

    #[test]
    fn trend_forgets_outside_the_window_and_reports_falls() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        // Keep every parameter fresh while the total goes 0 → 3 at 10 min.
        let refresh = |p: &mut PatientNews2, at: i64, r: f64| {
            p.observe_vital(&spo2(97.0, at), "s", &cfg);
            p.observe_vital(&hr(72.0, at), "hr", &cfg);
            p.observe_vital(&rr(r, at), "rr", &cfg)
        };
        let u = refresh(&mut p, T0 + 10 * MIN, 30.0).expect("RR 30 → 3");
        assert!(matches!(u.trend, Trend::Rising { by: 3, .. }));
        // At 80 min the 0 from T0 is out of the 60-minute window: stable at 3.
        p.observe_vital(&bp(125.0, 80.0, T0 + 80 * MIN), "bp", &cfg);
        let _ = refresh(&mut p, T0 + 80 * MIN, 30.0);
        assert_eq!(p.current().map(|c| c.trend), Some(Trend::Stable));
        // Back to RR 16 at 90 min: falling by 3 against the 3 held since the window start (30 min).
        let u = refresh(&mut p, T0 + 90 * MIN, 16.0).expect("back to 0");
        assert_eq!(
            u.trend,
            Trend::Falling {
                by: 3,
                over_ms: 60 * MIN
            }
        );
    }

    #[test]
    fn a_missing_parameter_arriving_is_not_a_rise() {
        let cfg = News2Config::default();
        let mut p = PatientNews2::new(SpO2Scale::Scale1);
        p.observe_vital(&rr(16.0, T0), "rr", &cfg);
        p.observe_vital(&hr(72.0, T0 + MIN), "hr", &cfg);
        // Confusion → 3 arrives: the total rises from 0 to 3, but over a different parameter set.
        let u = p
            .observe_vital(&acvpu("C", T0 + 2 * MIN), "c", &cfg)
            .expect("3");
        assert_eq!(u.score.total, 3);
        assert_eq!(u.trend, Trend::Unknown);
    }

    #[test]
    fn tracker_output_maps_to_proto() {
        let cfg = News2Config::default();
        let mut p = full_normal(T0, &cfg);
        let u = p
            .observe_vital(&temp(39.2, T0 + MIN), "t2", &cfg)
            .expect("temp 39.2 → 2");
        let r = u.to_proto("MRN1", None);
        assert_eq!(r.computed_at_unix_ms, T0 + MIN);
        assert_eq!(r.derived_from.len(), 7);
        assert!(r.derived_from.contains(&"t2".to_string()));
        let Some(risk_score::Score::News2(n)) = r.score else {
            panic!("expected a News2 score");
        };
        assert_eq!(n.total, 2);
        assert_eq!(n.response, News2Response::Low as i32);
        assert!(n.missing.is_empty());
        assert!(!n.spo2_scale_2);
        assert_eq!(n.sub_scores.len(), 7);
    }
}
