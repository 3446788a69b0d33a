//! Labelled clinical scenarios for the ward simulator: deteriorations, infusion faults and signal disturbances
//! played on top of the stable simulated patients, each with the ground truth an alarm system is judged against.
//!
//! **Simulated data only.** The shapes below are plausible textbook courses chosen so that a correct alarm
//! system has something definite to find (or to ignore); they are not validated physiological models.
//!
//! # How scenarios act
//!
//! - Scenarios come from [`WardSimConfig::scenarios`](super::WardSimConfig::scenarios) (explicit
//!   [`ScenarioSpec`]s) and/or [`WardSimConfig::random_scenarios`](super::WardSimConfig::random_scenarios) (a
//!   seeded [`RandomScenarioMix`]). Everything about a scenario (durations, magnitudes, variants) is drawn from
//!   its own pseudo-random stream keyed by `(seed, bed, kind, start)`, so a scenario plays the same whatever else
//!   is scheduled.
//! - **Physiological** scenarios add offsets to the values the patient's physiology is centred on
//!   (`Bed::targets`); the noise streams are unchanged (a sepsis scales the heart rate's noise output, not its
//!   stream). Outside a scenario's window a bed's vital signs are therefore *exactly* those of the same ward
//!   without the scenario.
//! - **Signal disturbances** (motion artefact, probe off) replace or flag emitted samples without touching the
//!   noise streams either.
//! - **Infusion faults** act in the drip monitor's step; they change the bag's course (a faster drip empties the
//!   bag sooner), so later infusion reports of that bed differ from the undisturbed ward.
//! - Every scenario yields one [`GroundTruthLabel`] from [`WardSimulator::labels`](super::WardSimulator::labels),
//!   known before the simulation runs. `[began_at, ended_at]` is the whole period in which the scenario makes
//!   the signals differ (for deteriorations: onset, ramp, plateau and recovery); `peak_at` is when the full
//!   effect is first reached.
//! - `should_alarm` says whether a correct system raises a patient or infusion alarm within the label's window.
//!   When it is true, `expected_priority` is the **least** priority that alarm should reach (IEC 60601-1-8
//!   high/medium/low); a higher one is not an error. When it is false, `expected_priority` is the highest
//!   priority of a *technical* alarm that is still acceptable (`None`: no alarm at all).
//!
//! # The scenarios
//!
//! Ranges are for severity 0..1 ([`ScenarioSpec::severity`], drawn uniformly when not given); durations are
//! drawn from [`ScenarioKind::default_duration_range_ms`] unless [`ScenarioSpec::duration_ms`] is set.
//!
//! | kind | shape | expected alarm |
//! |---|---|---|
//! | [`SepsisDeterioration`](ScenarioKind::SepsisDeterioration) | over 3–8 h (S-shaped ramp from the onset) HR +30–50 /min (to at least 105), RR +8–14 /min (to at least 23), temperature +1.5–2.5 °C (to at least 38.5), systolic −20–40 mmHg, SpO2 −3–5 % (on scale 1 to at most 94); new confusion (ACVPU "C") charted once the effect reaches 75 %. Peak held 1–2 h (until treatment works), recovery over 2–4 h | yes, **HIGH** by the peak (NEWS2 ≥ 7: C 3 + RR 2 + pulse ≥ 1 + temperature ≥ 1 + SpO2 ≥ 1) |
//! | [`RespiratoryFailureOnOxygen`](ScenarioKind::RespiratoryFailureOnOxygen) | a SpO2-scale-2 patient on oxygen (target 88–92 %, "O2" charted): over 1–3 h SpO2 falls to 80.5–82.5 % (< 84), RR +8–12 /min (to at least 26), HR +15–25 /min; new confusion (hypercapnia) late at severity ≥ 0.5. Peak held 1–2 h, recovery (NIV) over 1–2 h | yes, **HIGH** (scale 2: SpO2 ≤ 83 → 3, oxygen 2, RR ≥ 25 → 3) |
//! | [`Hypovolaemia`](ScenarioKind::Hypovolaemia) | over 30–90 min HR +30–50 /min (to at least 120), systolic −30–50 mmHg (to at most 90), RR +3–6 /min (to at least 22). Peak held 30–60 min, recovery (fluids) over 30–60 min | yes, at least **MEDIUM** (NEWS2 ≥ 5: pulse 2, systolic 2–3, RR 2) |
//! | [`DripSpedUp`](ScenarioKind::DripSpedUp) | the roller clamp is opened: the drip runs 30–100 % faster for 15–60 min with the order (prescribed rate) unchanged; it begins at the first drip report at or after the start at which a bag is running, and ends early if the bag empties (the next bag is set correctly) | yes, at least **MEDIUM** (too fast; the edge's infusion monitor makes it HIGH above +50 %) |
//! | [`LineOccluded`](ScenarioKind::LineOccluded) | for 5–45 min no drops: 0 gtt/min, 0 mL/h, state `Stopped` (gravity drips; a pump would say `Occluded`), volume unchanged; then the drip resumes | yes, **MEDIUM** (infusion stopped) |
//! | [`BagRunsEmpty`](ScenarioKind::BagRunsEmpty) | natural: every bag completion is labelled, from the first report with ≤ 50 mL or ≤ 15 min left (the infusion monitor's near-completion defaults) to the `Completed` report | yes, **LOW** (near completion before the completion, then completed) |
//! | [`MotionArtifact`](ScenarioKind::MotionArtifact) | 10–60 s of erratic, implausible samples: the episode jumps HR by +40–80 /min and SpO2 by −10–20 %, and each sample takes a random 25–100 % of that (oximeter pulse rate 15–100 % of the HR jump). In about 70 % of episodes the monitor flags these samples [`QualityFlag::Artifact`](wardwatch_proto::v1::QualityFlag::Artifact); in the rest it misses them (unflagged) | **no** (no alarm acceptable) |
//! | [`ProbeOff`](ScenarioKind::ProbeOff) | for 30–300 s SpO2 and oximeter pulse-rate samples carry 0 flagged [`QualityFlag::SensorOff`](wardwatch_proto::v1::QualityFlag::SensorOff); ECG HR, RR continue | **no** physiological alarm; a LOW technical alarm ("check probe") is acceptable, so `expected_priority` is LOW |
//! | [`TransientCoughOrTurn`](ScenarioKind::TransientCoughOrTurn) | 5–20 s smooth (sin²) bump that returns exactly to baseline: a cough (HR +15–30, RR +8–14) or a turn in bed (SpO2 −3–6, HR +5–10), half each; samples are not flagged | **no** (no alarm acceptable) |
//!
//! Physiology beyond what NEWS2 charts, in the same deteriorations: a sepsis lowers the heart rate's wander
//! around its centre to 40–70 % of the patient's own by the peak (loss of heart-rate variability accompanies
//! sepsis and its severity; Ahmad et al., PLoS One 2009;4:e6642, Bravi et al., PLoS One 2012;7:e45666), and a
//! hypovolaemia narrows the pulse pressure (diastolic +4–8 % of systolic: compensatory vasoconstriction, the
//! ATLS class II picture).
//!
//! # Prodromes
//!
//! Deteriorations on a ward are rarely sudden: most in-hospital cardiac arrests have an abnormal vital sign 1–4 h
//! before (59 % in Andersen et al., Resuscitation 2016;98:112–7), and composite heart-rate-variability measures
//! changed well before a clinical sepsis diagnosis in 12 of 14 patients (Bravi et al. 2012). A deterioration may
//! therefore have a **prodrome** ([`ScenarioSpec::prodrome_ms`]; a random mix gives one to
//! [`RandomScenarioMix::prodrome_share`] of its deteriorations): subtle changes that build up (S-shaped) over the
//! prodrome, are complete at the onset, and hand over to the main ramp. The magnitudes are deliberately small,
//! mostly inside NEWS2's zero bands; they were set from the sources above before any model was trained on them,
//! and are not a validated model of any disease:
//!
//! | kind | prodrome length (random mix) | changes by the onset |
//! |---|---|---|
//! | sepsis | 2–6 h | HR +3–8 /min, RR +1–3 /min, temperature +0.2–0.6 °C, heart-rate variability falling to its value at the peak (40–70 %) |
//! | respiratory failure on oxygen | 1–3 h | RR +2–4 /min, SpO2 −0.5–1.5 %, HR +2–6 /min |
//! | hypovolaemia | 30–90 min | HR +4–10 /min, pulse pressure narrowing to its value at the peak, systolic unchanged |
//!
//! With a prodrome, the label's `began_at` is the prodrome's start (the signals differ from then) and
//! `onset_at` the onset of the main phase; without one both are the onset.
//!
//! Values stay clamped to the simulator's plausible ranges (e.g. SpO2 ≥ 80 %, systolic ≥ 70 mmHg); artefact
//! samples use wider ranges (HR 30–250 /min, SpO2 50–100 %), still inside the possible ranges of
//! [`wardwatch_proto::metrics`], so every event passes `wardwatch_proto::validate::event`.
//!
//! # Explicit scenarios on beds
//!
//! A [`ScenarioSpec`] on a bed that does not exist is ignored (no label). An infusion scenario
//! ([`DripSpedUp`](ScenarioKind::DripSpedUp), [`LineOccluded`](ScenarioKind::LineOccluded),
//! [`BagRunsEmpty`](ScenarioKind::BagRunsEmpty)) gives its bed an infusion if the infusion share did not. A
//! [`RespiratoryFailureOnOxygen`](ScenarioKind::RespiratoryFailureOnOxygen) makes its patient a scale-2 patient
//! on oxygen from the start. Bags run empty by themselves, so an explicit `BagRunsEmpty` spec changes no signal:
//! it asks for bag completions to be labelled (on every infusion bed) up to its start + duration (default 24 h).
//! An infusion fault during which no bag ever runs gets a label with `should_alarm = false` saying it had no
//! effect.
//!
//! # Random mixes
//!
//! [`RandomScenarioMix`] schedules exact counts per kind (rates per 40 beds per 24 h, scaled to the ward and
//! horizon and rounded) from the ward seed: deteriorations on distinct beds (respiratory failure first, those
//! patients becoming scale 2), infusion faults on infusion beds, disturbances on any bed, without overlapping
//! another scenario of the same group on the same bed where possible, plus a few stable scale-2 patients so
//! that scale 2 alone does not predict a deterioration, a prodrome before an exact share of the
//! deteriorations, and a recurrence of an exact share of them on the same bed after the first has ended
//! (each drawn after everything before it, so the rest of the schedule does not depend on it). Different seeds give different schedules; a different
//! mix gives a differently composed cohort (e.g. a held-out test set).

use std::collections::HashMap;
use std::f64::consts::PI;

use wardwatch_proto::v1::AlarmPriority;

use super::{Baseline, HOUR_MS, MINUTE_MS, Rng, splitmix64, tag};

const SECOND_MS: f64 = 1_000.0;
const DAY_MS: f64 = 24.0 * HOUR_MS;

/// Near completion is labelled from the first report with at most this much left (mL) ...
pub(super) const NEAR_COMPLETION_ML: f64 = 50.0;
/// ... or at most this many minutes to empty at the measured rate (the infusion monitor's defaults).
pub(super) const NEAR_COMPLETION_MIN: f64 = 15.0;

/// The kinds of clinical scenario the simulator plays. See the module documentation for each shape and the
/// alarm expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScenarioKind {
    /// Sepsis developing over hours: tachycardia, tachypnoea, fever, falling blood pressure and SpO2, late new
    /// confusion. Should alarm, HIGH by the peak.
    SepsisDeterioration,
    /// A hypercapnic (SpO2 scale 2) patient on oxygen whose SpO2 drifts below 84 % while RR rises. Should alarm,
    /// HIGH.
    RespiratoryFailureOnOxygen,
    /// Bleeding or fluid loss: HR up, blood pressure down within an hour or so. Should alarm, at least MEDIUM.
    Hypovolaemia,
    /// The roller clamp of a gravity drip opened: 30–100 % faster, order unchanged. Should alarm, at least
    /// MEDIUM.
    DripSpedUp,
    /// No flow through the line for minutes (state Stopped). Should alarm, MEDIUM.
    LineOccluded,
    /// A bag running empty (natural). Should signal near completion before it, LOW.
    BagRunsEmpty,
    /// Seconds of implausible HR/SpO2 from movement, flagged by the monitor in about 70 % of cases. Should not
    /// alarm.
    MotionArtifact,
    /// The SpO2 probe off the finger for 30–300 s (samples flagged sensor-off). No physiological alarm; a LOW
    /// technical alarm is acceptable.
    ProbeOff,
    /// A cough or a turn in bed: seconds of HR/RR spike or a small SpO2 dip, back to baseline. Should not alarm.
    TransientCoughOrTurn,
}

impl ScenarioKind {
    /// Every kind, in declaration order.
    pub const ALL: [ScenarioKind; 9] = [
        ScenarioKind::SepsisDeterioration,
        ScenarioKind::RespiratoryFailureOnOxygen,
        ScenarioKind::Hypovolaemia,
        ScenarioKind::DripSpedUp,
        ScenarioKind::LineOccluded,
        ScenarioKind::BagRunsEmpty,
        ScenarioKind::MotionArtifact,
        ScenarioKind::ProbeOff,
        ScenarioKind::TransientCoughOrTurn,
    ];

    /// A stable snake-case name (for files, logs and ML label columns).
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::SepsisDeterioration => "sepsis_deterioration",
            ScenarioKind::RespiratoryFailureOnOxygen => "respiratory_failure_on_oxygen",
            ScenarioKind::Hypovolaemia => "hypovolaemia",
            ScenarioKind::DripSpedUp => "drip_sped_up",
            ScenarioKind::LineOccluded => "line_occluded",
            ScenarioKind::BagRunsEmpty => "bag_runs_empty",
            ScenarioKind::MotionArtifact => "motion_artifact",
            ScenarioKind::ProbeOff => "probe_off",
            ScenarioKind::TransientCoughOrTurn => "transient_cough_or_turn",
        }
    }

    /// Whether this is a patient deterioration (sepsis, respiratory failure, hypovolaemia).
    pub fn is_deterioration(self) -> bool {
        matches!(
            self,
            ScenarioKind::SepsisDeterioration
                | ScenarioKind::RespiratoryFailureOnOxygen
                | ScenarioKind::Hypovolaemia
        )
    }

    /// Whether this concerns the bed's infusion (drip sped up, line occluded, bag runs empty).
    pub fn is_infusion(self) -> bool {
        matches!(
            self,
            ScenarioKind::DripSpedUp | ScenarioKind::LineOccluded | ScenarioKind::BagRunsEmpty
        )
    }

    /// The ranges (inclusive, ms) a deterioration's peak hold and recovery are drawn from: `(hold, recovery)`;
    /// `((0, 0), (0, 0))` for other kinds. A deterioration's episode has surely ended by its onset + ramp +
    /// both upper bounds.
    pub fn hold_and_recovery_ranges_ms(self) -> ((i64, i64), (i64, i64)) {
        let (h, m) = (HOUR_MS as i64, MINUTE_MS as i64);
        match self {
            ScenarioKind::SepsisDeterioration => ((h, 2 * h), (2 * h, 4 * h)),
            ScenarioKind::RespiratoryFailureOnOxygen => ((h, 2 * h), (h, 2 * h)),
            ScenarioKind::Hypovolaemia => ((30 * m, 60 * m), (30 * m, 60 * m)),
            _ => ((0, 0), (0, 0)),
        }
    }

    /// The range (inclusive, ms) a random mix draws a deterioration's prodrome length from (see
    /// [`ScenarioSpec::prodrome_ms`]); `(0, 0)` for kinds without a prodrome.
    pub fn prodrome_range_ms(self) -> (i64, i64) {
        let h = HOUR_MS as i64;
        match self {
            ScenarioKind::SepsisDeterioration => (2 * h, 6 * h),
            ScenarioKind::RespiratoryFailureOnOxygen => (h, 3 * h),
            ScenarioKind::Hypovolaemia => (h / 2, 3 * h / 2),
            _ => (0, 0),
        }
    }

    /// The range (inclusive, ms) the main phase's duration is drawn from when [`ScenarioSpec::duration_ms`] is
    /// not set: the onset-to-peak ramp for deteriorations, the fault's length for infusion faults, the
    /// episode's length for disturbances, the labelling window for an explicit bag-runs-empty spec.
    pub fn default_duration_range_ms(self) -> (i64, i64) {
        let (lo, hi) = match self {
            ScenarioKind::SepsisDeterioration => (3.0 * HOUR_MS, 8.0 * HOUR_MS),
            ScenarioKind::RespiratoryFailureOnOxygen => (HOUR_MS, 3.0 * HOUR_MS),
            ScenarioKind::Hypovolaemia => (30.0 * MINUTE_MS, 90.0 * MINUTE_MS),
            ScenarioKind::DripSpedUp => (15.0 * MINUTE_MS, 60.0 * MINUTE_MS),
            ScenarioKind::LineOccluded => (5.0 * MINUTE_MS, 45.0 * MINUTE_MS),
            ScenarioKind::BagRunsEmpty => (DAY_MS, DAY_MS),
            ScenarioKind::MotionArtifact => (10.0 * SECOND_MS, 60.0 * SECOND_MS),
            ScenarioKind::ProbeOff => (30.0 * SECOND_MS, 300.0 * SECOND_MS),
            ScenarioKind::TransientCoughOrTurn => (5.0 * SECOND_MS, 20.0 * SECOND_MS),
        };
        (lo as i64, hi as i64)
    }
}

impl std::fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One scenario to play on one bed.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioSpec {
    /// Bed label (1..=beds); specs for other beds are ignored.
    pub bed: u32,
    /// What happens.
    pub kind: ScenarioKind,
    /// Onset (simulated time). Infusion faults begin at the first drip report at or after it at which a bag
    /// is running.
    pub start_unix_ms: i64,
    /// Length of the main phase (see [`ScenarioKind::default_duration_range_ms`]); `None` or ≤ 0: drawn.
    pub duration_ms: Option<i64>,
    /// Where in the kind's documented magnitude ranges the scenario sits, 0 (mildest) to 1 (most severe);
    /// `None` or not finite: drawn uniformly. Values outside 0..1 are clamped.
    pub severity: Option<f64>,
    /// Motion artefacts only: whether the monitor flags the disturbed samples as artefacts; `None`: drawn
    /// (flagged with probability 0.7). Ignored for other kinds.
    pub artifact_flagged: Option<bool>,
    /// Deteriorations only: length of a prodrome before the onset (`start_unix_ms`), in which subtle changes
    /// build up (see the module documentation); `None` or ≤ 0: no prodrome, the deterioration begins at its
    /// onset with nothing before it. A random mix gives [`RandomScenarioMix::prodrome_share`] of its
    /// deteriorations a prodrome. Ignored for other kinds.
    pub prodrome_ms: Option<i64>,
}

impl ScenarioSpec {
    /// A spec with drawn duration, severity and flagging.
    pub fn new(bed: u32, kind: ScenarioKind, start_unix_ms: i64) -> Self {
        Self {
            bed,
            kind,
            start_unix_ms,
            duration_ms: None,
            severity: None,
            artifact_flagged: None,
            prodrome_ms: None,
        }
    }
}

/// The ground truth of one scenario: what happened to whom and when, and what a correct alarm system does
/// about it. See the module documentation for the semantics of `should_alarm` and `expected_priority`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruthLabel {
    /// Bed label (1..=beds).
    pub bed: u32,
    /// The patient's MRN (as on every event of the bed).
    pub patient_id: String,
    /// What happened.
    pub kind: ScenarioKind,
    /// When the signals start to differ: the onset for deteriorations and disturbances, the first drip report
    /// showing the fault for infusion faults, the first report near completion for bags running empty.
    pub began_at_unix_ms: i64,
    /// When the signals are back to what they would be without the scenario (for a bag: the `Completed`
    /// report); `None` if that lies beyond what was simulated for the label.
    pub ended_at_unix_ms: Option<i64>,
    /// Deteriorations: when the full effect is first reached (the alarm should have reached
    /// `expected_priority` by then). `None` for other kinds.
    pub peak_at_unix_ms: Option<i64>,
    /// Deteriorations: the onset of the main phase (the spec's start). It equals `began_at` unless a prodrome
    /// precedes it, in which case `began_at` is the prodrome's start. `None` for other kinds.
    pub onset_at_unix_ms: Option<i64>,
    /// Whether a correct system raises a patient or infusion alarm within the label's window.
    pub should_alarm: bool,
    /// If `should_alarm`: the least priority that alarm should reach. Otherwise: the highest priority of a
    /// technical alarm that is acceptable (`None`: none).
    pub expected_priority: Option<AlarmPriority>,
    /// Motion artefacts and probe-offs: whether the device flagged the affected samples (artefacts: in about
    /// 70 % of cases; probe-off: always, sensor-off). `None` for other kinds.
    pub device_flagged: Option<bool>,
    /// Human-readable account with the drawn magnitudes.
    pub description: String,
}

/// A seeded generator of scenarios across the ward: exact counts per kind, spread over a horizon.
///
/// Rates are counts per 40 beds per 24 h; the number scheduled is `round(rate × beds / 40 × horizon / 24 h)`
/// ([`RandomScenarioMix::scheduled_count`]), except that first deteriorations are at most one per bed (so at
/// most `beds` in all; [`RandomScenarioMix::recurrence_share`] of them then recur on their bed) and infusion faults need a bed with an infusion (none are scheduled in a ward without any).
/// Bags running empty are not scheduled: they happen by themselves and are labelled over the horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomScenarioMix {
    /// Length of the period, from the ward's start, over which scenarios begin. Default 24 h.
    pub horizon_ms: i64,
    /// Sepsis deteriorations per 40 beds per 24 h. Default 2.
    pub sepsis: f64,
    /// Respiratory failures on oxygen per 40 beds per 24 h. Default 1.
    pub respiratory_failure: f64,
    /// Hypovolaemias per 40 beds per 24 h. Default 1.
    pub hypovolaemia: f64,
    /// Drips sped up per 40 beds per 24 h. Default 3.
    pub drip_sped_up: f64,
    /// Line occlusions per 40 beds per 24 h. Default 2.
    pub line_occluded: f64,
    /// Motion artefacts per 40 beds per 24 h. Default 20.
    pub motion_artifact: f64,
    /// Probe-offs per 40 beds per 24 h. Default 10.
    pub probe_off: f64,
    /// Transient coughs or turns per 40 beds per 24 h. Default 60.
    pub transient_cough_or_turn: f64,
    /// Share of the motion artefacts the monitor flags (exact, rounded to whole episodes). Default 0.7.
    pub artifact_flagged_share: f64,
    /// Further scale-2 patients on oxygen per 40 beds who stay stable, so that scale 2 alone does not give a
    /// respiratory failure away. Default 2.
    pub stable_scale2_patients: f64,
    /// Share of the deteriorations that a prodrome precedes (exact, rounded to whole deteriorations; lengths
    /// drawn from [`ScenarioKind::prodrome_range_ms`], cut so that the prodrome begins at or after the ward's
    /// start). Default 0.6, after the 59 % of in-hospital cardiac arrests with an abnormal vital sign 1–4 h before
    /// (Andersen et al., Resuscitation 2016;98:112–7).
    pub prodrome_share: f64,
    /// Share of the deteriorations above that recur once: a second episode of the same kind on the same bed
    /// (sepsis relapsing, respiratory failure returning, bleeding again), beginning 2–24 h after the first has
    /// surely ended (its onset + ramp + the longest hold and recovery of its kind), with a prodrome as often as
    /// `prodrome_share` says (drawn per recurrence). Exact, rounded to whole deteriorations; a recurrence that
    /// cannot peak within the horizon is not scheduled. Default 0.15, after the 14 % of patients with a
    /// rapid-response call who had a repeat call during the admission (351 of 2,430; Chalwin et al., Jt Comm
    /// J Qual Patient Saf 2019). Drawn after everything else, so the rest of a schedule does not depend on it.
    pub recurrence_share: f64,
}

/// [`RandomScenarioMix::prodrome_share`]'s default, also used when a mix's share is not a number.
const DEFAULT_PRODROME_SHARE: f64 = 0.6;
/// [`RandomScenarioMix::recurrence_share`]'s default, also used when a mix's share is not a number.
const DEFAULT_RECURRENCE_SHARE: f64 = 0.15;

impl Default for RandomScenarioMix {
    /// 24 h; per 40 beds: 2 sepsis, 1 respiratory failure, 1 hypovolaemia, 3 drips sped up, 2 occlusions, 20
    /// motion artefacts (70 % flagged), 10 probe-offs, 60 transient coughs or turns; 2 stable scale-2 patients;
    /// a prodrome before 60 % of the deteriorations; 15 % of the deteriorations recur.
    fn default() -> Self {
        Self {
            horizon_ms: DAY_MS as i64,
            sepsis: 2.0,
            respiratory_failure: 1.0,
            hypovolaemia: 1.0,
            drip_sped_up: 3.0,
            line_occluded: 2.0,
            motion_artifact: 20.0,
            probe_off: 10.0,
            transient_cough_or_turn: 60.0,
            artifact_flagged_share: 0.7,
            stable_scale2_patients: 2.0,
            prodrome_share: DEFAULT_PRODROME_SHARE,
            recurrence_share: DEFAULT_RECURRENCE_SHARE,
        }
    }
}

impl RandomScenarioMix {
    /// The configured rate of `kind` per 40 beds per 24 h (0 for [`ScenarioKind::BagRunsEmpty`], which is not
    /// scheduled).
    pub fn rate(&self, kind: ScenarioKind) -> f64 {
        match kind {
            ScenarioKind::SepsisDeterioration => self.sepsis,
            ScenarioKind::RespiratoryFailureOnOxygen => self.respiratory_failure,
            ScenarioKind::Hypovolaemia => self.hypovolaemia,
            ScenarioKind::DripSpedUp => self.drip_sped_up,
            ScenarioKind::LineOccluded => self.line_occluded,
            ScenarioKind::BagRunsEmpty => 0.0,
            ScenarioKind::MotionArtifact => self.motion_artifact,
            ScenarioKind::ProbeOff => self.probe_off,
            ScenarioKind::TransientCoughOrTurn => self.transient_cough_or_turn,
        }
    }

    /// How many scenarios of `kind` the mix asks for in a ward of `beds` beds: `round(rate × beds / 40 ×
    /// horizon / 24 h)` (0 for negative or non-finite rates). See the type's documentation for the caps.
    pub fn scheduled_count(&self, kind: ScenarioKind, beds: u32) -> u32 {
        let horizon_days = self.horizon_ms.max(0) as f64 / DAY_MS;
        scaled(self.rate(kind) * f64::from(beds) / 40.0 * horizon_days)
    }
}

/// `x` rounded to a count (0 for negative or non-finite values, at most a million).
fn scaled(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 {
        x.round().min(1e6) as u32
    } else {
        0
    }
}

/// Offsets added to a patient's baselines at full effect.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Offsets {
    hr: f64,
    rr: f64,
    spo2: f64,
    temp_c: f64,
    sbp: f64,
    /// Diastolic share of systolic (a narrowing pulse pressure raises it).
    dbp_ratio: f64,
    /// Scale of the heart rate's wander (1 = the patient's own).
    hr_variability: f64,
}

/// How much of a physiological scenario's effect applies at a time, 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Envelope {
    /// S-shaped ramp from `start` over `ramp`, plateau for `hold`, S-shaped return over `recovery` (all ms,
    /// each ≥ 1).
    Episode {
        start: i64,
        ramp: i64,
        hold: i64,
        recovery: i64,
    },
    /// sin² bump over `duration` ms from `start`, exactly 0 outside.
    Bump { start: i64, duration: i64 },
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

impl Envelope {
    fn value(self, t: i64) -> f64 {
        match self {
            Envelope::Episode {
                start,
                ramp,
                hold,
                recovery,
            } => {
                let dt = t as f64 - start as f64;
                let (ramp, hold, recovery) = (ramp as f64, hold as f64, recovery as f64);
                if dt <= 0.0 {
                    0.0
                } else if dt < ramp {
                    smoothstep(dt / ramp)
                } else if dt < ramp + hold {
                    1.0
                } else if dt < ramp + hold + recovery {
                    1.0 - smoothstep((dt - ramp - hold) / recovery)
                } else {
                    0.0
                }
            }
            Envelope::Bump { start, duration } => {
                let dt = t as f64 - start as f64;
                if dt <= 0.0 || dt >= duration as f64 {
                    0.0
                } else {
                    (PI * dt / duration as f64).sin().powi(2)
                }
            }
        }
    }

    fn end(self) -> i64 {
        match self {
            Envelope::Episode {
                start,
                ramp,
                hold,
                recovery,
            } => start
                .saturating_add(ramp)
                .saturating_add(hold)
                .saturating_add(recovery),
            Envelope::Bump { start, duration } => start.saturating_add(duration),
        }
    }
}

/// What a scenario does to a bed's monitor signals.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// Shifts the physiology: `delta × envelope(t)` added to the baselines; new confusion while the envelope
    /// is at least `confusion_from`. A prodrome, if any, adds `prodrome.1 × prodrome.0(t)` as well: its envelope
    /// ramps up to the onset and fades while the main ramp takes over (the main delta is at least as large in
    /// every parameter the prodrome moves, so the sum never overshoots the peak).
    Physiology {
        envelope: Envelope,
        delta: Offsets,
        confusion_from: Option<f64>,
        prodrome: Option<(Envelope, Offsets)>,
    },
    /// Implausible HR/PR/SpO2 samples in `[start, end)`, flagged or not.
    Artifact {
        start: i64,
        end: i64,
        hr_jump: f64,
        spo2_drop: f64,
        flagged: bool,
        /// Seed of the per-sample randomness (a pure function of it and the sample time).
        key: u64,
    },
    /// SpO2 and pulse-rate samples in `[start, end)` read 0, flagged sensor-off.
    ProbeOff { start: i64, end: i64 },
}

/// The ACVPU letters in order of severity.
const ACVPU_ORDER: [&str; 5] = ["A", "C", "V", "P", "U"];

fn acvpu_rank(l: &str) -> usize {
    ACVPU_ORDER.iter().position(|x| *x == l).unwrap_or(0)
}

/// Applies the physiological effects at `t` to the baselines.
pub(super) fn apply(effects: &[Effect], t: i64, b: &mut Baseline) {
    fn add(b: &mut Baseline, w: f64, delta: &Offsets) {
        b.hr += w * delta.hr;
        b.rr += w * delta.rr;
        b.spo2 += w * delta.spo2;
        b.temp_c += w * delta.temp_c;
        b.sbp += w * delta.sbp;
        b.dbp_ratio += w * delta.dbp_ratio;
        b.hr_variability += w * delta.hr_variability;
    }
    for e in effects {
        let Effect::Physiology {
            envelope,
            delta,
            confusion_from,
            prodrome,
        } = e
        else {
            continue;
        };
        if let Some((p_envelope, p_delta)) = prodrome {
            let w = p_envelope.value(t);
            if w > 0.0 {
                add(b, w, p_delta);
            }
        }
        let w = envelope.value(t);
        if w <= 0.0 {
            continue;
        }
        add(b, w, delta);
        if let Some(from) = confusion_from
            && w >= *from
            && acvpu_rank(b.acvpu) < acvpu_rank("C")
        {
            b.acvpu = "C";
        }
    }
}

/// How a monitor sample at some time is disturbed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Disturbance {
    /// Added to ECG heart rate during an artefact.
    pub(super) hr_add: f64,
    /// Added to oximeter pulse rate during an artefact.
    pub(super) pr_add: f64,
    /// Subtracted from SpO2 during an artefact.
    pub(super) spo2_sub: f64,
    /// `Some(flagged)` during an artefact.
    pub(super) artifact: Option<bool>,
    /// The SpO2 probe is off.
    pub(super) probe_off: bool,
}

/// A uniform number in [0, 1) that depends only on (`key`, `t`, `k`).
fn unit_hash(key: u64, t: i64, k: u64) -> f64 {
    let mut s = key ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.rotate_left(32);
    splitmix64(&mut s);
    (splitmix64(&mut s) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The disturbance of a monitor sample at `t`.
pub(super) fn disturbance(effects: &[Effect], t: i64) -> Disturbance {
    let mut d = Disturbance::default();
    for e in effects {
        match *e {
            Effect::Artifact {
                start,
                end,
                hr_jump,
                spo2_drop,
                flagged,
                key,
            } if (start..end).contains(&t) => {
                // Erratic: each sample takes a random share of the episode's jump.
                d.hr_add = d.hr_add.max(hr_jump * (0.25 + 0.75 * unit_hash(key, t, 1)));
                d.pr_add = d.pr_add.max(hr_jump * (0.15 + 0.85 * unit_hash(key, t, 2)));
                d.spo2_sub = d
                    .spo2_sub
                    .max(spo2_drop * (0.25 + 0.75 * unit_hash(key, t, 3)));
                d.artifact = Some(d.artifact.unwrap_or(false) || flagged);
            }
            Effect::ProbeOff { start, end } if (start..end).contains(&t) => d.probe_off = true,
            _ => {}
        }
    }
    d
}

/// An infusion fault as the drip monitor plays it, with what actually happened (filled in while stepping).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct InfusionPlan {
    /// [`ScenarioKind::DripSpedUp`] or [`ScenarioKind::LineOccluded`].
    pub(super) kind: ScenarioKind,
    pub(super) start: i64,
    pub(super) duration: i64,
    /// Flow multiplier while a sped-up drip is active.
    pub(super) factor: f64,
    /// The first report showing the fault.
    pub(super) began: Option<i64>,
    /// The first report no longer showing it.
    pub(super) ended: Option<i64>,
    /// Order and prescribed rate when it began.
    pub(super) order_id: String,
    pub(super) prescribed_ml_h: f64,
}

/// Who a scenario is resolved for.
pub(super) struct PatientContext<'a> {
    pub(super) seed: u64,
    /// 0-based bed index.
    pub(super) index: u32,
    pub(super) patient_id: &'a str,
    pub(super) baseline: &'a Baseline,
    pub(super) scale2: bool,
}

/// A spec resolved against its patient.
pub(super) enum Resolved {
    /// A monitor effect (boxed: the enum stays small) and its label.
    Patient(Box<Effect>, GroundTruthLabel),
    /// An infusion fault (labelled after the infusion's course is known).
    Infusion(InfusionPlan),
    /// Label bag completions up to this time.
    BagLabels(i64),
}

fn lerp(lo: f64, hi: f64, s: f64) -> f64 {
    lo + (hi - lo) * s
}

/// Human-readable duration.
fn dur(ms: i64) -> String {
    let ms = ms as f64;
    if ms >= 2.0 * HOUR_MS {
        format!("{:.1} h", ms / HOUR_MS)
    } else if ms >= 2.0 * MINUTE_MS {
        format!("{:.0} min", ms / MINUTE_MS)
    } else {
        format!("{:.0} s", ms / SECOND_MS)
    }
}

/// The stream of one scenario: `(seed, bed, kind, start, n-th identical spec)`.
fn scenario_rng(seed: u64, index: u32, kind: ScenarioKind, start: i64, dup: u64) -> Rng {
    let mut h = tag("scenario") ^ (kind as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    h = splitmix64(&mut h) ^ start as u64;
    h = splitmix64(&mut h) ^ dup;
    Rng::stream(seed, index, splitmix64(&mut h))
}

/// Draws everything about `spec` (the `dup`-th spec of the same kind and start on the bed).
pub(super) fn resolve(spec: &ScenarioSpec, dup: u64, ctx: &PatientContext<'_>) -> Resolved {
    let kind = spec.kind;
    let start = spec.start_unix_ms;
    let mut rng = scenario_rng(ctx.seed, ctx.index, kind, start, dup);
    // Always the same draws in the same order, whatever the spec overrides.
    let severity_u = rng.next_f64();
    let duration_u = rng.next_f64();
    let hold_u = rng.next_f64();
    let recovery_u = rng.next_f64();
    let variant_u = rng.next_f64();
    let flag_u = rng.next_f64();
    let key = rng.next_u64();
    // Drawn after everything above, so that adding them left every earlier draw as it was.
    let prodrome_u = [rng.next_f64(), rng.next_f64(), rng.next_f64()];
    let variability_u = rng.next_f64();
    let prodrome_len = spec
        .prodrome_ms
        .filter(|p| *p > 0 && kind.is_deterioration());

    let s = spec
        .severity
        .filter(|s| s.is_finite())
        .map_or(severity_u, |s| s.clamp(0.0, 1.0));
    let (lo, hi) = kind.default_duration_range_ms();
    let duration = spec
        .duration_ms
        .filter(|d| *d > 0)
        .unwrap_or_else(|| lerp(lo as f64, hi as f64, duration_u).round() as i64)
        .max(1);
    let b = ctx.baseline;
    let label = |began: i64,
                 ended: i64,
                 peak: Option<i64>,
                 onset: Option<i64>,
                 should_alarm: bool,
                 expected_priority: Option<AlarmPriority>,
                 device_flagged: Option<bool>,
                 description: String| GroundTruthLabel {
        bed: ctx.index + 1,
        patient_id: ctx.patient_id.to_string(),
        kind,
        began_at_unix_ms: began,
        ended_at_unix_ms: Some(ended),
        peak_at_unix_ms: peak,
        onset_at_unix_ms: onset,
        should_alarm,
        expected_priority,
        device_flagged,
        description,
    };
    let physiology = |peak: Offsets,
                      prodrome_delta: Offsets,
                      confusion_from: Option<f64>,
                      expected: AlarmPriority,
                      what: &str| {
        let (hold, recovery) = kind.hold_and_recovery_ranges_ms();
        let hold = lerp(hold.0 as f64, hold.1 as f64, hold_u).round().max(1.0) as i64;
        let recovery = lerp(recovery.0 as f64, recovery.1 as f64, recovery_u)
            .round()
            .max(1.0) as i64;
        let envelope = Envelope::Episode {
            start,
            ramp: duration,
            hold,
            recovery,
        };
        let delta = Offsets {
            hr: peak.hr - b.hr,
            rr: peak.rr - b.rr,
            spo2: peak.spo2 - b.spo2,
            temp_c: peak.temp_c - b.temp_c,
            sbp: peak.sbp - b.sbp,
            dbp_ratio: peak.dbp_ratio - b.dbp_ratio,
            hr_variability: peak.hr_variability - b.hr_variability,
        };
        // The prodrome ramps up to the onset and hands over to the main ramp (see `Effect::Physiology`).
        let prodrome = prodrome_len.map(|len| {
            let envelope = Envelope::Episode {
                start: start.saturating_sub(len),
                ramp: len,
                hold: 1,
                recovery: duration,
            };
            (envelope, prodrome_delta)
        });
        let began = prodrome_len.map_or(start, |len| start.saturating_sub(len));
        let mut extra = String::new();
        if delta.hr_variability < 0.0 {
            extra += &format!(
                ", heart-rate variability down to {:.0} % of the patient's own",
                100.0 * peak.hr_variability
            );
        }
        if delta.dbp_ratio > 0.0 {
            extra += &format!(
                ", pulse pressure narrowing (diastolic {:.0}→{:.0} % of systolic)",
                100.0 * b.dbp_ratio,
                100.0 * peak.dbp_ratio
            );
        }
        if let Some(len) = prodrome_len {
            let p = prodrome_delta;
            extra += &format!(
                "; preceded by a {} prodrome: HR {:+.0} /min, RR {:+.0} /min, SpO2 {:+.1} %, temperature {:+.1} °C{}{}",
                dur(len),
                p.hr,
                p.rr,
                p.spo2,
                p.temp_c,
                if p.hr_variability < 0.0 {
                    ", heart-rate variability falling"
                } else {
                    ""
                },
                if p.dbp_ratio > 0.0 {
                    ", pulse pressure narrowing"
                } else {
                    ""
                },
            );
        }
        let description = format!(
            "{what}: over {} HR {:.0}→{:.0} /min, RR {:.0}→{:.0} /min, SpO2 {:.0}→{:.0} %, temperature \
             {:.1}→{:.1} °C, systolic {:.0}→{:.0} mmHg{}; peak held {}, recovery over {}{extra}",
            dur(duration),
            b.hr,
            peak.hr,
            b.rr,
            peak.rr,
            b.spo2,
            peak.spo2,
            b.temp_c,
            peak.temp_c,
            b.sbp,
            peak.sbp,
            if confusion_from.is_some() {
                ", late new confusion (C)"
            } else {
                ""
            },
            dur(hold),
            dur(recovery),
        );
        Resolved::Patient(
            Box::new(Effect::Physiology {
                envelope,
                delta,
                confusion_from,
                prodrome,
            }),
            label(
                began,
                envelope.end(),
                Some(start.saturating_add(duration)),
                Some(start),
                true,
                Some(expected),
                None,
                description,
            ),
        )
    };
    let base = Offsets {
        hr: b.hr,
        rr: b.rr,
        spo2: b.spo2,
        temp_c: b.temp_c,
        sbp: b.sbp,
        dbp_ratio: b.dbp_ratio,
        hr_variability: b.hr_variability,
    };

    match kind {
        ScenarioKind::SepsisDeterioration => {
            let spo2 = b.spo2 - lerp(3.0, 5.0, s);
            let peak = Offsets {
                hr: (b.hr + lerp(30.0, 50.0, s)).max(105.0),
                rr: (b.rr + lerp(8.0, 14.0, s)).max(23.0),
                spo2: if ctx.scale2 { spo2 } else { spo2.min(94.0) },
                temp_c: (b.temp_c + lerp(1.5, 2.5, s)).max(38.5),
                sbp: b.sbp - lerp(20.0, 40.0, s),
                hr_variability: b.hr_variability * lerp(0.4, 0.7, variability_u),
                ..base
            };
            // Loss of heart-rate variability precedes the clinical signs and persists (see the module docs).
            let prodrome = Offsets {
                hr: lerp(3.0, 8.0, prodrome_u[0]),
                rr: lerp(1.0, 3.0, prodrome_u[1]),
                temp_c: lerp(0.2, 0.6, prodrome_u[2]),
                hr_variability: peak.hr_variability - b.hr_variability,
                ..Offsets::default()
            };
            physiology(
                peak,
                prodrome,
                Some(0.75),
                AlarmPriority::High,
                "Sepsis; NEWS2 ≥ 7 (HIGH) expected by the peak",
            )
        }
        ScenarioKind::RespiratoryFailureOnOxygen => {
            let peak = Offsets {
                hr: b.hr + lerp(15.0, 25.0, s),
                rr: (b.rr + lerp(8.0, 12.0, s)).max(26.0),
                spo2: (82.5 - 2.0 * s).min(b.spo2 - 5.0),
                ..base
            };
            let prodrome = Offsets {
                hr: lerp(2.0, 6.0, prodrome_u[0]),
                rr: lerp(2.0, 4.0, prodrome_u[1]),
                spo2: -lerp(0.5, 1.5, prodrome_u[2]),
                ..Offsets::default()
            };
            physiology(
                peak,
                prodrome,
                (s >= 0.5).then_some(0.8),
                AlarmPriority::High,
                "Hypercapnic respiratory failure on oxygen (SpO2 scale 2, target 88–92 %); NEWS2 ≥ 7 (HIGH) \
                 expected by the peak",
            )
        }
        ScenarioKind::Hypovolaemia => {
            let peak = Offsets {
                hr: (b.hr + lerp(30.0, 50.0, s)).max(120.0),
                rr: (b.rr + lerp(3.0, 6.0, s)).max(22.0),
                sbp: (b.sbp - lerp(30.0, 50.0, s)).min(90.0),
                dbp_ratio: b.dbp_ratio + lerp(0.04, 0.08, variability_u),
                ..base
            };
            // Compensation first: the heart speeds up and the pulse pressure narrows while systolic holds.
            let prodrome = Offsets {
                hr: lerp(4.0, 10.0, prodrome_u[0]),
                dbp_ratio: peak.dbp_ratio - b.dbp_ratio,
                ..Offsets::default()
            };
            physiology(
                peak,
                prodrome,
                None,
                AlarmPriority::Medium,
                "Hypovolaemia; NEWS2 ≥ 5 (at least MEDIUM) expected by the peak",
            )
        }
        ScenarioKind::TransientCoughOrTurn => {
            let cough = variant_u < 0.5;
            let delta = if cough {
                Offsets {
                    hr: lerp(15.0, 30.0, s),
                    rr: lerp(8.0, 14.0, s),
                    ..Offsets::default()
                }
            } else {
                Offsets {
                    hr: lerp(5.0, 10.0, s),
                    spo2: -lerp(3.0, 6.0, s),
                    ..Offsets::default()
                }
            };
            let envelope = Envelope::Bump { start, duration };
            let description = if cough {
                format!(
                    "Cough: {} spike of HR +{:.0} /min and RR +{:.0} /min, back to baseline; no alarm expected",
                    dur(duration),
                    delta.hr,
                    delta.rr
                )
            } else {
                format!(
                    "Turn in bed: {} SpO2 dip of {:.0} % with HR +{:.0} /min, back to baseline; no alarm \
                     expected",
                    dur(duration),
                    -delta.spo2,
                    delta.hr
                )
            };
            Resolved::Patient(
                Box::new(Effect::Physiology {
                    envelope,
                    delta,
                    confusion_from: None,
                    prodrome: None,
                }),
                label(
                    start,
                    envelope.end(),
                    None,
                    None,
                    false,
                    None,
                    None,
                    description,
                ),
            )
        }
        ScenarioKind::MotionArtifact => {
            let flagged = spec.artifact_flagged.unwrap_or(flag_u < 0.7);
            let hr_jump = lerp(40.0, 80.0, s);
            let spo2_drop = lerp(10.0, 20.0, s);
            let end = start.saturating_add(duration);
            let description = format!(
                "Motion artefact: {} of erratic samples, HR up to +{hr_jump:.0} /min, SpO2 down to −{spo2_drop:.0} \
                 %; {}; no alarm expected",
                dur(duration),
                if flagged {
                    "flagged as artefact by the monitor"
                } else {
                    "NOT flagged by the monitor"
                }
            );
            Resolved::Patient(
                Box::new(Effect::Artifact {
                    start,
                    end,
                    hr_jump,
                    spo2_drop,
                    flagged,
                    key,
                }),
                label(
                    start,
                    end,
                    None,
                    None,
                    false,
                    None,
                    Some(flagged),
                    description,
                ),
            )
        }
        ScenarioKind::ProbeOff => {
            let end = start.saturating_add(duration);
            Resolved::Patient(
                Box::new(Effect::ProbeOff { start, end }),
                label(
                    start,
                    end,
                    None,
                    None,
                    false,
                    Some(AlarmPriority::Low),
                    Some(true),
                    format!(
                        "SpO2 probe off for {}: SpO2 and pulse rate read 0, flagged sensor-off; no \
                         physiological alarm expected, a LOW technical alarm is acceptable",
                        dur(duration)
                    ),
                ),
            )
        }
        ScenarioKind::DripSpedUp | ScenarioKind::LineOccluded => Resolved::Infusion(InfusionPlan {
            kind,
            start,
            duration,
            factor: if kind == ScenarioKind::DripSpedUp {
                1.0 + lerp(0.3, 1.0, s)
            } else {
                1.0
            },
            began: None,
            ended: None,
            order_id: String::new(),
            prescribed_ml_h: 0.0,
        }),
        ScenarioKind::BagRunsEmpty => Resolved::BagLabels(start.saturating_add(duration)),
    }
}

/// The label of an infusion fault, once its course is known.
pub(super) fn infusion_plan_label(
    p: &InfusionPlan,
    bed: u32,
    patient_id: &str,
) -> GroundTruthLabel {
    let mut l = GroundTruthLabel {
        bed,
        patient_id: patient_id.to_string(),
        kind: p.kind,
        began_at_unix_ms: p.start,
        ended_at_unix_ms: Some(p.start),
        peak_at_unix_ms: None,
        onset_at_unix_ms: None,
        should_alarm: false,
        expected_priority: None,
        device_flagged: None,
        description: format!(
            "{}: no effect, no bag was running during the planned {} from the start",
            p.kind.name(),
            dur(p.duration)
        ),
    };
    let Some(began) = p.began else {
        return l;
    };
    l.began_at_unix_ms = began;
    l.ended_at_unix_ms = p.ended;
    l.should_alarm = true;
    l.expected_priority = Some(AlarmPriority::Medium);
    let length = p
        .ended
        .map_or_else(|| "until the end".to_string(), |e| dur(e - began));
    l.description = if p.kind == ScenarioKind::DripSpedUp {
        format!(
            "Roller clamp opened on order {}: flow ×{:.2} (+{:.0} %, about {:.0} mL/h against {:.0} mL/h \
             prescribed, order unchanged) for {length}; too-fast alarm expected (at least MEDIUM{})",
            p.order_id,
            p.factor,
            (p.factor - 1.0) * 100.0,
            p.prescribed_ml_h * p.factor,
            p.prescribed_ml_h,
            if p.factor > 1.5 {
                "; HIGH above +50 %"
            } else {
                ""
            }
        )
    } else {
        format!(
            "Line occluded on order {}: no drops, state Stopped, for {length}; infusion-stopped alarm \
             expected (MEDIUM)",
            p.order_id
        )
    };
    l
}

/// What is known about a bag when it completes.
pub(super) struct BagCompletion<'a> {
    pub(super) order_id: &'a str,
    pub(super) medication: &'a str,
    pub(super) bag_ml: f64,
    pub(super) prescribed_ml_h: f64,
    /// First report near completion (≤ 50 mL or ≤ 15 min left), if any came before the completion.
    pub(super) near_at: Option<i64>,
    pub(super) completed_at: i64,
}

/// The label of one natural bag completion.
pub(super) fn bag_label(c: &BagCompletion<'_>, bed: u32, patient_id: &str) -> GroundTruthLabel {
    let began = c.near_at.unwrap_or(c.completed_at);
    GroundTruthLabel {
        bed,
        patient_id: patient_id.to_string(),
        kind: ScenarioKind::BagRunsEmpty,
        began_at_unix_ms: began,
        ended_at_unix_ms: Some(c.completed_at),
        peak_at_unix_ms: None,
        onset_at_unix_ms: None,
        should_alarm: true,
        expected_priority: Some(AlarmPriority::Low),
        device_flagged: None,
        description: format!(
            "Bag runs empty: {} ({:.0} mL, order {}, {:.0} mL/h); near completion (≤ {NEAR_COMPLETION_ML:.0} mL or \
             ≤ {NEAR_COMPLETION_MIN:.0} min left) {} before it is empty; LOW near-completion signal expected \
             before completion, then LOW completed",
            c.medication,
            c.bag_ml,
            c.order_id,
            c.prescribed_ml_h,
            dur(c.completed_at - began),
        ),
    }
}

/// What a random mix adds to the ward.
pub(super) struct MixSchedule {
    pub(super) specs: Vec<ScenarioSpec>,
    /// Bed labels of stable scale-2 patients.
    pub(super) stable_scale2: Vec<u32>,
    /// End of the horizon.
    pub(super) end: i64,
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// A duration drawn from the kind's default range.
fn draw_duration(kind: ScenarioKind, rng: &mut Rng) -> i64 {
    let (lo, hi) = kind.default_duration_range_ms();
    lerp(lo as f64, hi as f64, rng.next_f64()).round().max(1.0) as i64
}

/// An offset in `0..span` (0 when the span is empty).
fn draw_offset(rng: &mut Rng, span: i64) -> i64 {
    if span <= 0 {
        0
    } else {
        rng.below(span as u64) as i64
    }
}

/// `share` clamped to 0..1, or `default` when it is not finite.
fn share_or(share: f64, default: f64) -> f64 {
    if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        default
    }
}

/// The indices of the specs that `chosen` selects, in a seeded random order, and how many of them make `share` of
/// them (rounded; the share clamped to 0..1, `default` when it is not finite): the first that many get the
/// property, so that a mix's shares are exact.
fn exact_share(
    specs: &[ScenarioSpec],
    chosen: impl Fn(&ScenarioSpec) -> bool,
    share: f64,
    default: f64,
    rng: &mut Rng,
) -> (Vec<usize>, usize) {
    let mut indices: Vec<usize> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| chosen(s))
        .map(|(i, _)| i)
        .collect();
    let n = (indices.len() as f64 * share_or(share, default)).round() as usize;
    shuffle(&mut indices, rng);
    (indices, n)
}

/// Schedules `mix` over a ward whose beds have an infusion where `with_infusion` is true.
pub(super) fn schedule_mix(
    mix: &RandomScenarioMix,
    seed: u64,
    start: i64,
    with_infusion: &[bool],
) -> MixSchedule {
    let n_beds = with_infusion.len() as u32;
    let mut rng = Rng::stream(seed, u32::MAX, tag("scenario mix"));
    let horizon = mix.horizon_ms.max(0);
    let end = start.saturating_add(horizon);
    let mut specs = Vec::new();
    let spec = |bed: u32, kind, start_unix_ms, duration: i64| ScenarioSpec {
        duration_ms: Some(duration),
        ..ScenarioSpec::new(bed, kind, start_unix_ms)
    };

    // Deteriorations: at most one per bed, on distinct beds, peaking within the horizon where possible.
    let mut order: Vec<u32> = (1..=n_beds).collect();
    shuffle(&mut order, &mut rng);
    let mut free = order.into_iter();
    for kind in [
        ScenarioKind::RespiratoryFailureOnOxygen,
        ScenarioKind::SepsisDeterioration,
        ScenarioKind::Hypovolaemia,
    ] {
        for _ in 0..mix.scheduled_count(kind, n_beds) {
            let Some(bed) = free.next() else { break };
            let duration = draw_duration(kind, &mut rng);
            let at = start.saturating_add(draw_offset(&mut rng, horizon - duration));
            specs.push(spec(bed, kind, at, duration));
        }
    }
    let n_stable = scaled(mix.stable_scale2_patients * f64::from(n_beds) / 40.0);
    let stable_scale2: Vec<u32> = free.take(n_stable as usize).collect();

    // Infusion faults on infusion beds, disturbances on any bed; a bed's scenarios of one group do not
    // overlap (with a margin) unless the ward is too crowded for that.
    let infusion_beds: Vec<u32> = (1..=n_beds)
        .filter(|b| with_infusion[(*b - 1) as usize])
        .collect();
    let all_beds: Vec<u32> = (1..=n_beds).collect();
    let groups: [(&[ScenarioKind], &[u32], i64); 2] = [
        (
            &[ScenarioKind::DripSpedUp, ScenarioKind::LineOccluded],
            &infusion_beds,
            (30.0 * MINUTE_MS) as i64,
        ),
        (
            &[
                ScenarioKind::MotionArtifact,
                ScenarioKind::ProbeOff,
                ScenarioKind::TransientCoughOrTurn,
            ],
            &all_beds,
            (2.0 * MINUTE_MS) as i64,
        ),
    ];
    for (kinds, beds, margin) in groups {
        if beds.is_empty() {
            continue;
        }
        let mut busy: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
        for &kind in kinds {
            for _ in 0..mix.scheduled_count(kind, n_beds) {
                const ATTEMPTS: usize = 64;
                for attempt in 0..ATTEMPTS {
                    let bed = beds[rng.below(beds.len() as u64) as usize];
                    let duration = draw_duration(kind, &mut rng);
                    let at = start.saturating_add(draw_offset(&mut rng, horizon - duration));
                    let window = (
                        at.saturating_sub(margin),
                        at.saturating_add(duration).saturating_add(margin),
                    );
                    let taken = busy.entry(bed).or_default();
                    let overlaps = taken.iter().any(|(a, b)| window.0 < *b && *a < window.1);
                    if !overlaps || attempt + 1 == ATTEMPTS {
                        taken.push(window);
                        specs.push(spec(bed, kind, at, duration));
                        break;
                    }
                }
            }
        }
    }

    // Exactly the configured share of motion artefacts is flagged.
    let (artifacts, n_flagged) = exact_share(
        &specs,
        |s| s.kind == ScenarioKind::MotionArtifact,
        mix.artifact_flagged_share,
        0.7,
        &mut rng,
    );
    for (i, idx) in artifacts.into_iter().enumerate() {
        if let Some(s) = specs.get_mut(idx) {
            s.artifact_flagged = Some(i < n_flagged);
        }
    }

    // Exactly the configured share of deteriorations has a prodrome (drawn last, so that the schedule above is
    // what it was before prodromes existed).
    let (deteriorations, n_prodromes) = exact_share(
        &specs,
        |s| s.kind.is_deterioration(),
        mix.prodrome_share,
        DEFAULT_PRODROME_SHARE,
        &mut rng,
    );
    for idx in deteriorations.into_iter().take(n_prodromes) {
        let u = rng.next_f64();
        if let Some(s) = specs.get_mut(idx) {
            let (lo, hi) = s.kind.prodrome_range_ms();
            let len = (lerp(lo as f64, hi as f64, u).round() as i64).min(s.start_unix_ms - start);
            s.prodrome_ms = (len > 0).then_some(len);
        }
    }

    // Exactly the configured share of those deteriorations recurs once (drawn last, so that the schedule above
    // is what it was before recurrences existed). Every recurrence makes the same draws, fitting or not.
    let (firsts, n_recurrences) = exact_share(
        &specs,
        |s| s.kind.is_deterioration(),
        mix.recurrence_share,
        DEFAULT_RECURRENCE_SHARE,
        &mut rng,
    );
    let prodrome_share = share_or(mix.prodrome_share, DEFAULT_PRODROME_SHARE);
    let mut recurrences = Vec::new();
    for idx in firsts.into_iter().take(n_recurrences) {
        let [gap_u, duration_u, has_prodrome_u, prodrome_u] = [(); 4].map(|_| rng.next_f64());
        let with_prodrome = has_prodrome_u < prodrome_share;
        if let Some(second) = specs.get(idx).and_then(|first| {
            recurrence(first, end, with_prodrome, [gap_u, duration_u, prodrome_u])
        }) {
            recurrences.push(second);
        }
    }
    specs.extend(recurrences);

    MixSchedule {
        specs,
        stable_scale2,
        end,
    }
}

/// Earliest gap between a deterioration's surely-ended time and its recurrence's beginning (prodrome or onset).
const RECURRENCE_GAP_MIN_MS: i64 = 2 * HOUR_MS as i64;
/// Latest such gap.
const RECURRENCE_GAP_MAX_MS: i64 = 24 * HOUR_MS as i64;

/// The second episode of deterioration `first` (with its drawn duration), or `None` when it cannot peak by `end`:
/// the same kind on the same bed, a ramp drawn from the kind's range, a prodrome drawn from the kind's range if
/// `with_prodrome`, beginning (prodrome or onset) uniformly 2–24 h after `first` has surely ended, the range cut
/// to what lets it peak by `end`. `u` = the gap, ramp and prodrome-length draws.
fn recurrence(
    first: &ScenarioSpec,
    end: i64,
    with_prodrome: bool,
    u: [f64; 3],
) -> Option<ScenarioSpec> {
    let kind = first.kind;
    let (lo, hi) = kind.default_duration_range_ms();
    let first_ramp = first.duration_ms.unwrap_or(hi);
    let ((_, hold), (_, recovery)) = kind.hold_and_recovery_ranges_ms();
    let surely_ended = first
        .start_unix_ms
        .saturating_add(first_ramp)
        .saturating_add(hold)
        .saturating_add(recovery);
    let ramp = lerp(lo as f64, hi as f64, u[1]).round().max(1.0) as i64;
    let (p_lo, p_hi) = kind.prodrome_range_ms();
    let prodrome = if with_prodrome {
        lerp(p_lo as f64, p_hi as f64, u[2]).round() as i64
    } else {
        0
    };
    let earliest = surely_ended.saturating_add(RECURRENCE_GAP_MIN_MS);
    let latest = surely_ended
        .saturating_add(RECURRENCE_GAP_MAX_MS)
        .min(end.saturating_sub(ramp).saturating_sub(prodrome));
    if latest < earliest {
        return None;
    }
    let began = earliest.saturating_add(lerp(0.0, (latest - earliest) as f64, u[0]).round() as i64);
    Some(ScenarioSpec {
        duration_ms: Some(ramp),
        prodrome_ms: (prodrome > 0).then_some(prodrome),
        ..ScenarioSpec::new(first.bed, kind, began.saturating_add(prodrome))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;
    use crate::simulator::{SUPPLEMENTAL_O2_PERIOD_MS, SimEvent, WardSimConfig, WardSimulator};
    use wardwatch_proto::metrics::{
        MDC_ECG_HEART_RATE, MDC_PRESS_BLD_NONINV, MDC_PRESS_BLD_NONINV_SYS,
        MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE, MDC_TEMP_BODY,
        WARDWATCH_ACVPU, WARDWATCH_SUPPLEMENTAL_O2,
    };
    use wardwatch_proto::v1::{
        EdgeEvent, InfusionState, InfusionStatus, QualityFlag, VitalSign, edge_event::Payload,
    };

    /// 2026-01-01T00:00:00Z.
    const START: i64 = 1_767_225_600_000;
    const S: i64 = 1_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const SIMULATED: i32 = QualityFlag::Simulated as i32;

    /// A small ward without infusions.
    fn ward(beds: u32, seed: u64) -> WardSimConfig {
        WardSimConfig {
            beds,
            seed,
            start_unix_ms: START,
            infusion_share: 0.0,
            ..WardSimConfig::default()
        }
    }

    /// Only the drip monitors report.
    fn drips_only(cfg: WardSimConfig) -> WardSimConfig {
        WardSimConfig {
            vitals_period_ms: 0,
            temp_period_ms: 0,
            bp_period_ms: 0,
            consciousness_period_ms: 0,
            supplemental_o2_period_ms: Some(0),
            ..cfg
        }
    }

    fn spec(bed: u32, kind: ScenarioKind, start: i64) -> ScenarioSpec {
        ScenarioSpec::new(bed, kind, start)
    }

    fn valid(e: &SimEvent) {
        let env = EdgeEvent {
            sequence: 1,
            idempotency_key: e.idempotency_key.clone(),
            accepted_at_unix_ms: 1,
            payload: Some(e.payload.clone()),
        };
        if let Err(r) = wardwatch_proto::validate::event(&env) {
            panic!("invalid simulated event {e:?}: {r}");
        }
    }

    fn vitals(events: &[SimEvent], bed: u32, mdc: u32) -> Vec<&VitalSign> {
        let bed = bed.to_string();
        events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Vital(v)
                    if v.metric_mdc == mdc && v.location.as_ref().is_some_and(|l| l.bed == bed) =>
                {
                    Some(v)
                }
                _ => None,
            })
            .collect()
    }

    fn infusions(events: &[SimEvent]) -> Vec<&InfusionStatus> {
        events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Infusion(i) => Some(i),
                _ => None,
            })
            .collect()
    }

    /// Value of a vital: the systolic component for blood pressure.
    fn value(v: &VitalSign) -> f64 {
        if v.metric_mdc == MDC_PRESS_BLD_NONINV {
            v.components
                .iter()
                .find(|c| c.metric_mdc == MDC_PRESS_BLD_NONINV_SYS)
                .map_or(f64::NAN, |c| c.value)
        } else {
            v.value
        }
    }

    fn mean_in(series: &[&VitalSign], from: i64, to: i64) -> f64 {
        let xs: Vec<f64> = series
            .iter()
            .filter(|v| (from..to).contains(&v.measured_at_unix_ms))
            .map(|v| value(v))
            .collect();
        assert!(!xs.is_empty(), "no samples in {from}..{to}");
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    /// The newest sample at or before `t`.
    fn latest<'a>(series: &[&'a VitalSign], t: i64) -> Option<&'a VitalSign> {
        let n = series.partition_point(|v| v.measured_at_unix_ms <= t);
        n.checked_sub(1).map(|i| series[i])
    }

    /// NEWS2 from RCP Chart 1 (an independent check, not the edge's implementation).
    #[allow(clippy::too_many_arguments)]
    fn news2(
        rr: f64,
        spo2: f64,
        scale2: bool,
        on_o2: bool,
        sbp: f64,
        hr: f64,
        acvpu: &str,
        temp: f64,
    ) -> u32 {
        let (rr, spo2, sbp, hr) = (
            rr.round() as i64,
            spo2.round() as i64,
            sbp.round() as i64,
            hr.round() as i64,
        );
        let temp = (temp * 10.0).round() as i64;
        let s_rr = match rr {
            ..=8 => 3,
            9..=11 => 1,
            12..=20 => 0,
            21..=24 => 2,
            _ => 3,
        };
        let s_spo2 = if scale2 {
            match spo2 {
                ..=83 => 3,
                84..=85 => 2,
                86..=87 => 1,
                88..=92 => 0,
                _ if !on_o2 => 0,
                93..=94 => 1,
                95..=96 => 2,
                _ => 3,
            }
        } else {
            match spo2 {
                ..=91 => 3,
                92..=93 => 2,
                94..=95 => 1,
                _ => 0,
            }
        };
        let s_o2 = if on_o2 { 2 } else { 0 };
        let s_sbp = match sbp {
            ..=90 => 3,
            91..=100 => 2,
            101..=110 => 1,
            111..=219 => 0,
            _ => 3,
        };
        let s_hr = match hr {
            ..=40 => 3,
            41..=50 => 1,
            51..=90 => 0,
            91..=110 => 1,
            111..=130 => 2,
            _ => 3,
        };
        let s_c = if acvpu == "A" { 0 } else { 3 };
        let s_t = match temp {
            ..=350 => 3,
            351..=360 => 1,
            361..=380 => 0,
            381..=390 => 1,
            _ => 2,
        };
        s_rr + s_spo2 + s_o2 + s_sbp + s_hr + s_c + s_t
    }

    /// NEWS2 of `bed` at each minute in `from..to` from the newest samples.
    fn news2_per_minute(
        events: &[SimEvent],
        bed: u32,
        scale2: bool,
        from: i64,
        to: i64,
    ) -> Vec<u32> {
        let series: HashMap<u32, Vec<&VitalSign>> = [
            MDC_RESP_RATE,
            MDC_PULS_OXIM_SAT_O2,
            MDC_PRESS_BLD_NONINV,
            MDC_ECG_HEART_RATE,
            WARDWATCH_ACVPU,
            MDC_TEMP_BODY,
            WARDWATCH_SUPPLEMENTAL_O2,
        ]
        .into_iter()
        .map(|m| (m, vitals(events, bed, m)))
        .collect();
        (from..to)
            .step_by(MIN as usize)
            .map(|t| {
                let l = |m: u32| latest(&series[&m], t).map_or(f64::NAN, value);
                let acvpu =
                    latest(&series[&WARDWATCH_ACVPU], t).map_or("A", |v| v.enumerated.as_str());
                let on_o2 = latest(&series[&WARDWATCH_SUPPLEMENTAL_O2], t)
                    .is_some_and(|v| v.enumerated == "O2");
                news2(
                    l(MDC_RESP_RATE),
                    l(MDC_PULS_OXIM_SAT_O2),
                    scale2,
                    on_o2,
                    l(MDC_PRESS_BLD_NONINV),
                    l(MDC_ECG_HEART_RATE),
                    acvpu,
                    l(MDC_TEMP_BODY),
                )
            })
            .collect()
    }

    /// The single label of `kind`.
    fn only(labels: &[GroundTruthLabel], kind: ScenarioKind) -> &GroundTruthLabel {
        let mut of_kind = labels.iter().filter(|l| l.kind == kind);
        let l = of_kind.next().unwrap_or_else(|| panic!("no {kind} label"));
        assert!(of_kind.next().is_none(), "more than one {kind} label");
        l
    }

    /// The same ward with and without `specs` (the O2 channel as with them in both), simulated to `until`.
    fn with_and_without(
        cfg: WardSimConfig,
        specs: Vec<ScenarioSpec>,
        until: i64,
    ) -> (WardSimulator, Vec<SimEvent>, Vec<SimEvent>) {
        let cfg = WardSimConfig {
            scenarios: specs,
            ..cfg
        };
        let without = WardSimConfig {
            scenarios: Vec::new(),
            supplemental_o2_period_ms: Some(cfg.supplemental_o2_period()),
            ..cfg.clone()
        };
        let mut with = WardSimulator::new(cfg);
        let events = with.advance_to(until);
        let without = WardSimulator::new(without).advance_to(until);
        (with, events, without)
    }

    #[test]
    fn labels_for_every_kind_are_deterministic_and_seeded() {
        let cfg = |seed| WardSimConfig {
            scenarios: ScenarioKind::ALL
                .iter()
                .enumerate()
                .map(|(i, &k)| spec(i as u32 + 1, k, START + 10 * MIN))
                .collect(),
            ..ward(10, seed)
        };
        let a = WardSimulator::new(cfg(5));
        let labels = a.labels();
        assert_eq!(labels, WardSimulator::new(cfg(5)).labels());
        assert_ne!(labels, WardSimulator::new(cfg(6)).labels());
        let patients = a.patients();
        for kind in ScenarioKind::ALL {
            let of_kind: Vec<_> = labels.iter().filter(|l| l.kind == kind).collect();
            assert!(!of_kind.is_empty(), "no {kind} label");
            for l in of_kind {
                assert_eq!(l.patient_id, patients[(l.bed - 1) as usize].patient_id);
                assert!(l.ended_at_unix_ms.is_some_and(|e| e > l.began_at_unix_ms));
                assert!(!l.description.is_empty());
                let (alarm, priority) = match kind {
                    ScenarioKind::SepsisDeterioration
                    | ScenarioKind::RespiratoryFailureOnOxygen => (true, Some(AlarmPriority::High)),
                    ScenarioKind::Hypovolaemia
                    | ScenarioKind::DripSpedUp
                    | ScenarioKind::LineOccluded => (true, Some(AlarmPriority::Medium)),
                    ScenarioKind::BagRunsEmpty => (true, Some(AlarmPriority::Low)),
                    ScenarioKind::MotionArtifact | ScenarioKind::TransientCoughOrTurn => {
                        (false, None)
                    }
                    ScenarioKind::ProbeOff => (false, Some(AlarmPriority::Low)),
                };
                assert_eq!(
                    (l.should_alarm, l.expected_priority),
                    (alarm, priority),
                    "{l:?}"
                );
                if kind.is_deterioration() {
                    assert_eq!(l.began_at_unix_ms, START + 10 * MIN);
                    let peak = l.peak_at_unix_ms.unwrap_or(i64::MAX);
                    let (lo, hi) = kind.default_duration_range_ms();
                    assert!((lo..=hi).contains(&(peak - l.began_at_unix_ms)));
                } else {
                    assert_eq!(l.peak_at_unix_ms, None);
                }
                if matches!(kind, ScenarioKind::DripSpedUp | ScenarioKind::LineOccluded) {
                    // Begins at the first drip report at or after the start (10 s period).
                    assert!(
                        (START + 10 * MIN..START + 10 * MIN + 10 * S).contains(&l.began_at_unix_ms)
                    );
                }
            }
        }
        // The labels are known upfront and do not change as the simulation runs (the bag horizon aside).
        let mut b = WardSimulator::new(cfg(5));
        b.advance_to(START + 2 * HOUR);
        let later: Vec<_> = b
            .labels()
            .into_iter()
            .filter(|l| l.kind != ScenarioKind::BagRunsEmpty)
            .collect();
        let upfront: Vec<_> = labels
            .into_iter()
            .filter(|l| l.kind != ScenarioKind::BagRunsEmpty)
            .collect();
        assert_eq!(later, upfront);
        // Infusion scenarios brought infusions to their beds (the share is 0).
        assert_eq!(
            a.devices()
                .iter()
                .filter(|e| e.idempotency_key.starts_with("drip-"))
                .count(),
            3
        );
        // Specs on beds that do not exist are ignored.
        let outside = WardSimulator::new(WardSimConfig {
            scenarios: vec![
                spec(0, ScenarioKind::ProbeOff, START),
                spec(11, ScenarioKind::SepsisDeterioration, START),
            ],
            ..ward(10, 5)
        });
        assert!(outside.labels().is_empty());
    }

    #[test]
    fn o2_channel_and_scale_2_patients() {
        // Default ward: no O2 observations, nobody on scale 2, no labels.
        let default = WardSimulator::new(WardSimConfig::default());
        assert_eq!(default.config().supplemental_o2_period(), 0);
        assert!(default.patients().iter().all(|p| !p.spo2_scale_2));
        assert!(default.labels().is_empty());

        let cfg = WardSimConfig {
            spo2_scale2_beds: vec![2, 4, 99],
            scenarios: vec![spec(
                3,
                ScenarioKind::RespiratoryFailureOnOxygen,
                START + 5 * HOUR,
            )],
            ..ward(5, 3)
        };
        assert_eq!(cfg.supplemental_o2_period(), SUPPLEMENTAL_O2_PERIOD_MS);
        let mut sim = WardSimulator::new(cfg.clone());
        let scale2: Vec<u32> = sim
            .patients()
            .iter()
            .filter(|p| p.spo2_scale_2)
            .map(|p| p.bed)
            .collect();
        assert_eq!(scale2, vec![2, 3, 4]);
        let events = sim.advance_to(START + HOUR);
        for bed in 1..=5 {
            let o2 = vitals(&events, bed, WARDWATCH_SUPPLEMENTAL_O2);
            assert_eq!(o2.len(), 4, "every 15 min");
            let want = if scale2.contains(&bed) { "O2" } else { "AIR" };
            assert!(
                o2.iter()
                    .all(|v| v.enumerated == want && v.quality == vec![SIMULATED])
            );
            // Scale-2 patients sit at their 88-92 % target.
            let spo2 = mean_in(
                &vitals(&events, bed, MDC_PULS_OXIM_SAT_O2),
                START,
                START + HOUR,
            );
            if scale2.contains(&bed) {
                assert!((88.0..=92.0).contains(&spo2), "bed {bed} SpO2 {spo2}");
            } else {
                assert!(spo2 >= 93.0, "bed {bed} SpO2 {spo2}");
            }
        }
        events.iter().for_each(valid);
        // Scale 2 changes only SpO2: the other values are those of the same ward without it.
        let plain = WardSimulator::new(WardSimConfig {
            supplemental_o2_period_ms: Some(SUPPLEMENTAL_O2_PERIOD_MS),
            ..ward(5, 3)
        })
        .advance_to(START + HOUR);
        assert_eq!(
            vitals(&events, 2, MDC_ECG_HEART_RATE),
            vitals(&plain, 2, MDC_ECG_HEART_RATE)
        );
        // Explicit periods win; 0 switches the channel off.
        for (period, n) in [(Some(0), 0), (Some(10 * MIN), 6)] {
            let mut sim = WardSimulator::new(WardSimConfig {
                supplemental_o2_period_ms: period,
                ..cfg.clone()
            });
            let events = sim.advance_to(START + HOUR);
            assert_eq!(vitals(&events, 1, WARDWATCH_SUPPLEMENTAL_O2).len(), n);
        }
    }

    #[test]
    fn sepsis_deteriorates_to_news2_high() {
        let onset = START + 30 * MIN;
        let s = ScenarioSpec {
            duration_ms: Some(3 * HOUR),
            severity: Some(0.0),
            ..spec(1, ScenarioKind::SepsisDeterioration, onset)
        };
        let until = onset + 5 * HOUR;
        let (sim, with, without) = with_and_without(
            WardSimConfig {
                vitals_period_ms: 5 * S,
                ..ward(2, 21)
            },
            vec![s],
            until,
        );
        let l = only(&sim.labels(), ScenarioKind::SepsisDeterioration).clone();
        let peak = l.peak_at_unix_ms.unwrap_or(i64::MAX);
        assert_eq!((l.began_at_unix_ms, peak), (onset, onset + 3 * HOUR));
        let base = sim.beds[0].patient.baseline;
        let hr = vitals(&with, 1, MDC_ECG_HEART_RATE);
        let hr0 = vitals(&without, 1, MDC_ECG_HEART_RATE);
        // The last hour of the deterioration: HR ≥ 25 above what it would have been, and above the baseline.
        let rise = mean_in(&hr, peak - HOUR, peak) - mean_in(&hr0, peak - HOUR, peak);
        assert!(rise >= 25.0, "HR rose {rise}");
        assert!(mean_in(&hr, peak, peak + HOUR) >= base.hr + 25.0);
        // At the peak: the documented offsets (against the same ward without sepsis).
        let diff = |mdc: u32| {
            mean_in(&vitals(&with, 1, mdc), peak, peak + HOUR)
                - mean_in(&vitals(&without, 1, mdc), peak, peak + HOUR)
        };
        assert!((30.0..=50.5).contains(&diff(MDC_ECG_HEART_RATE)));
        assert!((8.0..=14.5).contains(&diff(MDC_RESP_RATE)));
        assert!((1.4..=2.6).contains(&diff(MDC_TEMP_BODY)));
        assert!((-5.5..=-2.5).contains(&diff(MDC_PULS_OXIM_SAT_O2)));
        assert!((-41.0..=-19.0).contains(&diff(MDC_PRESS_BLD_NONINV)));
        // Before the onset nothing differs.
        let before = |e: &[SimEvent]| vitals_until(e, onset);
        assert_eq!(before(&with), before(&without));
        // New confusion only late; NEWS2 ≥ 7 throughout the first hour at the peak.
        let acvpu = vitals(&with, 1, WARDWATCH_ACVPU);
        assert!(acvpu.iter().all(|v| v.enumerated == base.acvpu
            || v.measured_at_unix_ms > onset + 3 * HOUR / 2));
        assert!(acvpu.iter().any(|v| v.enumerated == "C"));
        let scores = news2_per_minute(&with, 1, false, peak, peak + HOUR);
        assert!(
            scores.iter().all(|s| *s >= 7),
            "NEWS2 at the peak {scores:?}"
        );
        let before_onset = news2_per_minute(&with, 1, false, onset - 10 * MIN, onset);
        assert!(before_onset.iter().all(|s| *s < 5), "{before_onset:?}");
        // The untouched bed is the same as without the scenario.
        assert_eq!(
            vitals(&with, 2, MDC_ECG_HEART_RATE),
            vitals(&without, 2, MDC_ECG_HEART_RATE)
        );
        with.iter().for_each(valid);
    }

    /// The vital-sign events measured at or before `t`.
    fn vitals_until(events: &[SimEvent], t: i64) -> Vec<SimEvent> {
        events
            .iter()
            .filter(|e| matches!(&e.payload, Payload::Vital(v) if v.measured_at_unix_ms <= t))
            .cloned()
            .collect()
    }

    /// Standard deviation of `xs` around their least-squares line (the wander without the trend).
    fn detrended_sd(series: &[&VitalSign], from: i64, to: i64) -> f64 {
        let pts: Vec<(f64, f64)> = series
            .iter()
            .filter(|v| (from..to).contains(&v.measured_at_unix_ms))
            .map(|v| (v.measured_at_unix_ms as f64, value(v)))
            .collect();
        let n = pts.len() as f64;
        let (mx, my) = pts
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
        let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        let slope = sxy / sxx;
        let ss: f64 = pts
            .iter()
            .map(|(x, y)| (y - my - slope * (x - mx)).powi(2))
            .sum();
        (ss / n).sqrt()
    }

    #[test]
    fn a_sepsis_prodrome_builds_up_before_the_onset_with_less_heart_rate_variability() {
        let onset = START + 6 * HOUR;
        let s = ScenarioSpec {
            duration_ms: Some(3 * HOUR),
            severity: Some(0.0),
            prodrome_ms: Some(4 * HOUR),
            ..spec(1, ScenarioKind::SepsisDeterioration, onset)
        };
        let (sim, with, without) = with_and_without(
            WardSimConfig {
                vitals_period_ms: 5 * S,
                ..ward(2, 21)
            },
            vec![s.clone()],
            onset + 4 * HOUR,
        );
        let l = only(&sim.labels(), ScenarioKind::SepsisDeterioration).clone();
        let began = onset - 4 * HOUR;
        assert_eq!(
            (l.began_at_unix_ms, l.onset_at_unix_ms, l.peak_at_unix_ms),
            (began, Some(onset), Some(onset + 3 * HOUR))
        );
        assert!(l.description.contains("prodrome"), "{}", l.description);
        // Before the prodrome nothing differs.
        let before = |e: &[SimEvent]| vitals_until(e, began);
        assert_eq!(before(&with), before(&without));
        // The last hour before the onset: HR +3–8, RR +1–3 and temperature +0.2–0.6 at full effect (the
        // S-shaped ramp is above 84 % of it there), the heart rate's wander 40–70 % of the patient's own.
        let diff = |mdc: u32, from: i64, to: i64| {
            mean_in(&vitals(&with, 1, mdc), from, to) - mean_in(&vitals(&without, 1, mdc), from, to)
        };
        let last_hour = (onset - HOUR, onset);
        assert!((2.4..=8.5).contains(&diff(MDC_ECG_HEART_RATE, last_hour.0, last_hour.1)));
        assert!((0.6..=3.5).contains(&diff(MDC_RESP_RATE, last_hour.0, last_hour.1)));
        assert!((0.1..=0.7).contains(&diff(MDC_TEMP_BODY, last_hour.0, last_hour.1)));
        assert!(diff(MDC_PRESS_BLD_NONINV, last_hour.0, last_hour.1).abs() < 1e-9);
        let hr = vitals(&with, 1, MDC_ECG_HEART_RATE);
        let hr0 = vitals(&without, 1, MDC_ECG_HEART_RATE);
        let ratio = detrended_sd(&hr, last_hour.0, last_hour.1)
            / detrended_sd(&hr0, last_hour.0, last_hour.1);
        assert!((0.3..=0.8).contains(&ratio), "HR wander ratio {ratio}");
        // The first hour of the prodrome barely moves anything (the ramp is S-shaped).
        assert!(diff(MDC_ECG_HEART_RATE, began, began + HOUR).abs() < 1.5);
        // Subtle: NEWS2 stays where it would have been within 3 points over the whole prodrome.
        let a = news2_per_minute(&with, 1, false, began, onset);
        let b = news2_per_minute(&without, 1, false, began, onset);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 3),
            "{a:?} {b:?}"
        );
        // The reduced variability persists into the deterioration; the peak offsets are those documented.
        let peak = onset + 3 * HOUR;
        let ratio = detrended_sd(&hr, peak, peak + HOUR) / detrended_sd(&hr0, peak, peak + HOUR);
        assert!(
            (0.3..=0.8).contains(&ratio),
            "HR wander ratio at the peak {ratio}"
        );
        assert!((30.0..=50.5).contains(&diff(MDC_ECG_HEART_RATE, peak, peak + HOUR)));
        assert!((8.0..=14.5).contains(&diff(MDC_RESP_RATE, peak, peak + HOUR)));
        // Without a prodrome the same spec begins at its onset.
        let (sim, with_np, without_np) = with_and_without(
            WardSimConfig {
                vitals_period_ms: 5 * S,
                ..ward(2, 21)
            },
            vec![ScenarioSpec {
                prodrome_ms: None,
                ..s
            }],
            onset + HOUR,
        );
        let l = only(&sim.labels(), ScenarioKind::SepsisDeterioration).clone();
        assert_eq!(
            (l.began_at_unix_ms, l.onset_at_unix_ms),
            (onset, Some(onset))
        );
        let until_onset = |e: &[SimEvent]| vitals_until(e, onset);
        assert_eq!(until_onset(&with_np), until_onset(&without_np));
        with.iter().for_each(valid);
    }

    #[test]
    fn a_hypovolaemia_prodrome_speeds_the_heart_and_narrows_the_pulse_pressure_with_systolic_held()
    {
        let onset = START + 3 * HOUR;
        let (sim, with, without) = with_and_without(
            ward(2, 8),
            vec![ScenarioSpec {
                duration_ms: Some(HOUR),
                severity: Some(0.5),
                prodrome_ms: Some(90 * MIN),
                ..spec(2, ScenarioKind::Hypovolaemia, onset)
            }],
            onset,
        );
        let l = only(&sim.labels(), ScenarioKind::Hypovolaemia).clone();
        assert_eq!(l.began_at_unix_ms, onset - 90 * MIN);
        let bp = |e: &[SimEvent]| -> Vec<(i64, f64, f64)> {
            vitals(e, 2, MDC_PRESS_BLD_NONINV)
                .iter()
                .filter(|v| v.measured_at_unix_ms >= onset - 20 * MIN)
                .map(|v| {
                    let c = |m: u32| {
                        v.components
                            .iter()
                            .find(|c| c.metric_mdc == m)
                            .map_or(f64::NAN, |c| c.value)
                    };
                    (
                        v.measured_at_unix_ms,
                        c(MDC_PRESS_BLD_NONINV_SYS),
                        c(wardwatch_proto::metrics::MDC_PRESS_BLD_NONINV_DIA),
                    )
                })
                .collect()
        };
        let (a, b) = (bp(&with), bp(&without));
        assert!(!a.is_empty() && a.len() == b.len());
        for ((t, sys, dia), (_, sys0, dia0)) in a.iter().zip(&b) {
            assert_eq!(sys, sys0, "systolic held at {t}");
            // The diastolic share rises by 0.04–0.08 (most of it by now): 4–12 mmHg on 100–150 systolic.
            assert!(
                (2.0..=13.0).contains(&(dia - dia0)),
                "diastolic {dia} vs {dia0} at {t}"
            );
        }
        let hr_rise = mean_in(
            &vitals(&with, 2, MDC_ECG_HEART_RATE),
            onset - 20 * MIN,
            onset,
        ) - mean_in(
            &vitals(&without, 2, MDC_ECG_HEART_RATE),
            onset - 20 * MIN,
            onset,
        );
        assert!((3.0..=10.5).contains(&hr_rise), "HR rose {hr_rise}");
    }

    #[test]
    fn a_mix_gives_its_share_of_deteriorations_a_prodrome_and_leaves_the_schedule_as_it_was() {
        let mix = |share: f64| RandomScenarioMix {
            horizon_ms: 48 * HOUR,
            sepsis: 8.0,
            respiratory_failure: 4.0,
            hypovolaemia: 6.0,
            prodrome_share: share,
            recurrence_share: 0.0,
            ..RandomScenarioMix::default()
        };
        let labels = |share: f64| -> Vec<GroundTruthLabel> {
            WardSimulator::new(mix_cfg(7, mix(share)))
                .labels()
                .into_iter()
                .filter(|l| l.kind.is_deterioration())
                .collect()
        };
        let none = labels(0.0);
        let some = labels(0.6);
        assert_eq!(none.len(), 36);
        assert!(
            none.iter()
                .all(|l| Some(l.began_at_unix_ms) == l.onset_at_unix_ms)
        );
        // 60 % of 36, except where a prodrome would begin before the ward started (cut to what fits).
        let with: Vec<&GroundTruthLabel> = some
            .iter()
            .filter(|l| l.onset_at_unix_ms != Some(l.began_at_unix_ms))
            .collect();
        assert!((20..=22).contains(&with.len()), "{} prodromes", with.len());
        for l in &with {
            let onset = l.onset_at_unix_ms.unwrap_or(0);
            let (_, hi) = l.kind.prodrome_range_ms();
            assert!(
                l.began_at_unix_ms >= START && onset - l.began_at_unix_ms <= hi,
                "{l:?}"
            );
        }
        // Only the prodromes differ: same beds, kinds, onsets, peaks and ends.
        let key = |l: &GroundTruthLabel| {
            (
                l.bed,
                l.kind,
                l.onset_at_unix_ms,
                l.peak_at_unix_ms,
                l.ended_at_unix_ms,
            )
        };
        let mut a: Vec<_> = none.iter().map(key).collect();
        let mut b: Vec<_> = some.iter().map(key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn a_mix_makes_its_share_of_deteriorations_recur_on_the_same_bed_after_the_first_has_ended() {
        let end = START + 48 * HOUR;
        let mix = |share: f64| RandomScenarioMix {
            horizon_ms: 48 * HOUR,
            sepsis: 8.0,
            respiratory_failure: 4.0,
            hypovolaemia: 6.0,
            recurrence_share: share,
            ..RandomScenarioMix::default()
        };
        let none = WardSimulator::new(mix_cfg(7, mix(0.0))).labels();
        let some = WardSimulator::new(mix_cfg(7, mix(0.15))).labels();
        // Every label of the mix without recurrences is there unchanged; the rest are recurrences.
        let mut extra = some.clone();
        for l in &none {
            let i = extra.iter().position(|x| x == l);
            assert!(i.is_some(), "{l:?} changed");
            if let Some(i) = i {
                extra.remove(i);
            }
        }
        // round(15 % of 36) = 5 chosen; those that cannot peak within the 48 h are not scheduled.
        assert!(
            (2..=5).contains(&extra.len()),
            "{} recurrences",
            extra.len()
        );
        for r in &extra {
            assert!(r.kind.is_deterioration(), "{r:?}");
            let firsts: Vec<&GroundTruthLabel> = none
                .iter()
                .filter(|l| l.bed == r.bed && l.kind.is_deterioration())
                .collect();
            assert_eq!(firsts.len(), 1, "one first episode on bed {}", r.bed);
            let first = firsts[0];
            assert_eq!(first.kind, r.kind);
            // Begins (prodrome or onset) 2–24 h after the first has surely ended; its own label ended earlier.
            let ended = first.ended_at_unix_ms.unwrap_or(i64::MAX);
            let onset = first.onset_at_unix_ms.unwrap_or(0);
            let ((_, hold), (_, recovery)) = r.kind.hold_and_recovery_ranges_ms();
            let surely = first.peak_at_unix_ms.unwrap_or(0) + hold + recovery;
            assert!(ended <= surely && onset < ended);
            let gap = r.began_at_unix_ms - surely;
            assert!((2 * HOUR..=24 * HOUR).contains(&gap), "gap {gap} ms");
            let peak = r.peak_at_unix_ms.unwrap_or(i64::MAX);
            let r_onset = r.onset_at_unix_ms.unwrap_or(0);
            let (lo, hi) = r.kind.default_duration_range_ms();
            assert!(
                peak <= end && (lo..=hi).contains(&(peak - r_onset)),
                "{r:?}"
            );
            let (_, p_hi) = r.kind.prodrome_range_ms();
            assert!(r_onset - r.began_at_unix_ms <= p_hi);
            assert!(r.should_alarm && r.expected_priority.is_some());
        }
        // Deterministic.
        assert_eq!(some, WardSimulator::new(mix_cfg(7, mix(0.15))).labels());
    }

    #[test]
    fn a_recurrence_cannot_begin_before_the_first_episode_has_ended_nor_peak_after_the_horizon() {
        let first = ScenarioSpec {
            duration_ms: Some(4 * HOUR),
            ..spec(3, ScenarioKind::SepsisDeterioration, START)
        };
        // Sepsis: at most 2 h hold and 4 h recovery, so surely over 10 h after the onset.
        let surely = START + 10 * HOUR;
        let far = START + 100 * HOUR;
        for u in [0.0, 0.5, 1.0] {
            let r = recurrence(&first, far, true, [u, u, u]);
            let Some(r) = r else {
                panic!("fits easily");
            };
            assert_eq!((r.bed, r.kind), (3, ScenarioKind::SepsisDeterioration));
            let prodrome = r.prodrome_ms.unwrap_or(0);
            assert!((2 * HOUR..=6 * HOUR).contains(&prodrome));
            let began = r.start_unix_ms - prodrome;
            assert!((surely + 2 * HOUR..=surely + 24 * HOUR).contains(&began));
        }
        let r = recurrence(&first, far, false, [0.0, 0.0, 0.0]);
        assert_eq!(
            r.map(|r| (r.start_unix_ms, r.prodrome_ms)),
            Some((surely + 2 * HOUR, None))
        );
        // The range is cut so that the peak falls within the horizon ...
        let tight = surely + 2 * HOUR + 3 * HOUR + HOUR;
        let r = recurrence(&first, tight, false, [1.0, 0.0, 0.0]);
        let peak = r.map(|r| r.start_unix_ms + r.duration_ms.unwrap_or(0));
        assert_eq!(peak, Some(tight));
        // ... and no recurrence when even the earliest cannot peak in time.
        assert_eq!(recurrence(&first, tight - 2 * HOUR, false, [0.0; 3]), None);
    }

    #[test]
    fn a_recurrent_deterioration_deteriorates_again_after_the_patient_recovered() {
        let onset = START + 30 * MIN;
        let first = ScenarioSpec {
            duration_ms: Some(HOUR),
            severity: Some(1.0),
            ..spec(1, ScenarioKind::Hypovolaemia, onset)
        };
        let Some(second) = recurrence(&first, START + 24 * HOUR, false, [0.0; 3]) else {
            panic!("fits");
        };
        let second = ScenarioSpec {
            severity: Some(1.0),
            ..second
        };
        let until = second.start_unix_ms + 4 * HOUR;
        let (sim, with, without) = with_and_without(
            WardSimConfig {
                vitals_period_ms: 5 * S,
                ..ward(1, 12)
            },
            vec![first, second],
            until,
        );
        let labels = sim.labels();
        assert_eq!(labels.len(), 2);
        let (a, b) = (&labels[0], &labels[1]);
        let a_end = a.ended_at_unix_ms.unwrap_or(i64::MAX);
        assert!(a_end + 2 * HOUR <= b.began_at_unix_ms);
        // Between the episodes the patient is exactly as without any scenario ...
        let between = |events: &[SimEvent]| -> Vec<SimEvent> {
            events
                .iter()
                .filter(|e| {
                    matches!(&e.payload, Payload::Vital(v)
                        if v.measured_at_unix_ms > a_end && v.measured_at_unix_ms < b.began_at_unix_ms)
                })
                .cloned()
                .collect()
        };
        assert!(!between(&with).is_empty());
        assert!(between(&with) == between(&without));
        // ... and at both peaks NEWS2 reaches at least 5 for most minutes of the hold.
        for l in [a, b] {
            let peak = l.peak_at_unix_ms.unwrap_or(0);
            let scores = news2_per_minute(&with, 1, false, peak, peak + 30 * MIN);
            let high = scores.iter().filter(|s| **s >= 5).count();
            assert!(high * 10 >= scores.len() * 8, "NEWS2 at {peak}: {scores:?}");
        }
    }

    #[test]
    fn respiratory_failure_on_oxygen_drifts_below_84() {
        let onset = START + 30 * MIN;
        let (sim, with, without) = with_and_without(
            WardSimConfig {
                vitals_period_ms: 5 * S,
                ..ward(1, 8)
            },
            vec![spec(1, ScenarioKind::RespiratoryFailureOnOxygen, onset)],
            onset + 5 * HOUR,
        );
        assert!(sim.patients()[0].spo2_scale_2);
        let l = only(&sim.labels(), ScenarioKind::RespiratoryFailureOnOxygen).clone();
        let peak = l.peak_at_unix_ms.unwrap_or(i64::MAX);
        assert!((HOUR..=3 * HOUR).contains(&(peak - onset)));
        let spo2 = vitals(&with, 1, MDC_PULS_OXIM_SAT_O2);
        let before = mean_in(&spo2, START, onset);
        assert!((88.0..=92.0).contains(&before), "SpO2 before {before}");
        let at_peak = mean_in(&spo2, peak, peak + HOUR);
        assert!(at_peak < 84.0, "SpO2 at the peak {at_peak}");
        let rr_rise = mean_in(&vitals(&with, 1, MDC_RESP_RATE), peak, peak + HOUR)
            - mean_in(&vitals(&without, 1, MDC_RESP_RATE), peak, peak + HOUR);
        assert!(rr_rise >= 8.0, "RR rose {rr_rise}");
        assert!(
            vitals(&with, 1, WARDWATCH_SUPPLEMENTAL_O2)
                .iter()
                .all(|v| v.enumerated == "O2")
        );
        let scores = news2_per_minute(&with, 1, true, peak, peak + HOUR);
        let high = scores.iter().filter(|s| **s >= 7).count();
        assert!(
            high * 10 >= scores.len() * 9,
            "NEWS2 at the peak {scores:?}"
        );
        with.iter().for_each(valid);
    }

    #[test]
    fn hypovolaemia_raises_hr_and_drops_pressure_within_90_min() {
        let onset = START + 20 * MIN;
        let (sim, with, without) = with_and_without(
            WardSimConfig {
                vitals_period_ms: 5 * S,
                ..ward(1, 4)
            },
            vec![ScenarioSpec {
                severity: Some(0.5),
                ..spec(1, ScenarioKind::Hypovolaemia, onset)
            }],
            onset + 3 * HOUR,
        );
        let l = only(&sim.labels(), ScenarioKind::Hypovolaemia).clone();
        let peak = l.peak_at_unix_ms.unwrap_or(i64::MAX);
        assert!((30 * MIN..=90 * MIN).contains(&(peak - onset)));
        let base = sim.beds[0].patient.baseline;
        let hr_rise = mean_in(&vitals(&with, 1, MDC_ECG_HEART_RATE), peak, peak + 30 * MIN)
            - mean_in(
                &vitals(&without, 1, MDC_ECG_HEART_RATE),
                peak,
                peak + 30 * MIN,
            );
        assert!(hr_rise >= 30.0, "HR rose {hr_rise}");
        let sbp = mean_in(
            &vitals(&with, 1, MDC_PRESS_BLD_NONINV),
            peak,
            peak + 30 * MIN,
        );
        let sbp_fall = sbp
            - mean_in(
                &vitals(&without, 1, MDC_PRESS_BLD_NONINV),
                peak,
                peak + 30 * MIN,
            );
        assert!(sbp_fall <= -30.0, "systolic fell {sbp_fall}");
        assert!(sbp <= base.sbp - 25.0, "systolic {sbp} from {}", base.sbp);
        let scores = news2_per_minute(&with, 1, false, peak, peak + 30 * MIN);
        let medium = scores.iter().filter(|s| **s >= 5).count();
        assert!(
            medium * 10 >= scores.len() * 9,
            "NEWS2 at the peak {scores:?}"
        );
        // Back to the undisturbed course after the label's end.
        let end = l.ended_at_unix_ms.unwrap_or(i64::MAX);
        let after = |e: &[SimEvent]| -> Vec<SimEvent> {
            e.iter()
                .filter(|e| matches!(&e.payload, Payload::Vital(v) if v.measured_at_unix_ms >= end))
                .cloned()
                .collect()
        };
        assert!(!after(&with).is_empty());
        assert_eq!(after(&with), after(&without));
    }

    #[test]
    fn drip_sped_up_runs_fast_with_the_order_unchanged() {
        let at = START + 20 * MIN;
        let cfg = drips_only(ward(1, 12));
        let s = ScenarioSpec {
            duration_ms: Some(30 * MIN),
            severity: Some(0.5),
            ..spec(1, ScenarioKind::DripSpedUp, at)
        };
        let mut sim = WardSimulator::new(WardSimConfig {
            scenarios: vec![s],
            ..cfg
        });
        let l = only(&sim.labels(), ScenarioKind::DripSpedUp).clone();
        let events = sim.advance_to(START + 2 * HOUR);
        let reports = infusions(&events);
        let began = l.began_at_unix_ms;
        let ended = l.ended_at_unix_ms.unwrap_or(i64::MAX);
        assert!(began >= at && ended > began);
        let first = reports
            .iter()
            .find(|r| r.measured_at_unix_ms == began)
            .unwrap_or_else(|| panic!("no report at {began}"));
        let mut n = 0;
        for r in &reports {
            let t = r.measured_at_unix_ms;
            let ratio = r.measured_rate_ml_h / r.prescribed_rate_ml_h;
            if (began..ended).contains(&t) {
                assert_eq!(r.state, InfusionState::Running as i32);
                assert_eq!(
                    (r.order_id.as_str(), r.prescribed_rate_ml_h),
                    (first.order_id.as_str(), first.prescribed_rate_ml_h),
                    "order unchanged"
                );
                assert!(ratio >= 1.3, "ratio {ratio} at {t}");
                n += 1;
            } else if r.state == InfusionState::Running as i32 {
                assert!((0.84..=1.16).contains(&ratio), "ratio {ratio} at {t}");
            }
        }
        assert!(n >= 6, "{n} fast reports");
        assert!(l.description.contains(&first.order_id));
        reports.iter().for_each(|r| {
            valid(&SimEvent {
                idempotency_key: "k".into(),
                payload: Payload::Infusion((*r).clone()),
            })
        });
    }

    #[test]
    fn line_occluded_stops_the_drops() {
        let at = START + 20 * MIN;
        let mut sim = WardSimulator::new(WardSimConfig {
            scenarios: vec![ScenarioSpec {
                duration_ms: Some(10 * MIN),
                ..spec(1, ScenarioKind::LineOccluded, at)
            }],
            ..drips_only(ward(1, 13))
        });
        let l = only(&sim.labels(), ScenarioKind::LineOccluded).clone();
        let events = sim.advance_to(START + HOUR);
        let reports = infusions(&events);
        let (began, ended) = (l.began_at_unix_ms, l.ended_at_unix_ms.unwrap_or(i64::MAX));
        assert!(began >= at && ended >= began + 10 * MIN);
        let stopped: Vec<_> = reports
            .iter()
            .filter(|r| (began..ended).contains(&r.measured_at_unix_ms))
            .collect();
        assert_eq!(stopped.len() as i64, (ended - began) / (10 * S));
        let infused = stopped[0].volume_infused_ml;
        for r in &stopped {
            assert_eq!(r.state, InfusionState::Stopped as i32);
            assert_eq!((r.drops_per_min, r.measured_rate_ml_h), (0.0, 0.0));
            assert_eq!(r.volume_infused_ml, infused);
        }
        let after = reports
            .iter()
            .find(|r| r.measured_at_unix_ms == ended)
            .unwrap_or_else(|| panic!("no report at {ended}"));
        assert_eq!(after.state, InfusionState::Running as i32);
        assert!(after.drops_per_min > 0.0);
        assert!(
            reports
                .iter()
                .filter(|r| r.measured_at_unix_ms < began)
                .all(|r| r.state != InfusionState::Stopped as i32)
        );
    }

    /// Every natural bag completion within the horizon is labelled, near completion first.
    #[test]
    fn bags_running_empty_are_labelled() {
        let cfg = WardSimConfig {
            scenarios: vec![ScenarioSpec {
                duration_ms: Some(8 * HOUR),
                ..spec(1, ScenarioKind::BagRunsEmpty, START)
            }],
            ..drips_only(WardSimConfig {
                infusion_share: 0.6,
                ..ward(20, 30)
            })
        };
        let mut sim = WardSimulator::new(cfg);
        let labels: Vec<_> = sim
            .labels()
            .into_iter()
            .filter(|l| l.kind == ScenarioKind::BagRunsEmpty)
            .collect();
        let events = sim.advance_to(START + 10 * HOUR);
        let reports = infusions(&events);
        let mut completions = Vec::new();
        let mut prev: HashMap<&str, &InfusionStatus> = HashMap::new();
        for r in &reports {
            if r.state == InfusionState::Completed as i32
                && prev
                    .get(r.device_id.as_str())
                    .is_none_or(|p| p.state != r.state)
            {
                completions.push((
                    r.location
                        .as_ref()
                        .map_or(0, |l| l.bed.parse().unwrap_or(0)),
                    r.measured_at_unix_ms,
                ));
            }
            prev.insert(&r.device_id, r);
        }
        let labelled: Vec<(u32, i64)> = labels
            .iter()
            .map(|l| (l.bed, l.ended_at_unix_ms.unwrap_or(0)))
            .collect();
        for l in &labels {
            let began = l.began_at_unix_ms;
            assert!(began <= START + 8 * HOUR);
            let near = reports
                .iter()
                .find(|r| {
                    r.measured_at_unix_ms == began
                        && r.location
                            .as_ref()
                            .is_some_and(|x| x.bed == l.bed.to_string())
                })
                .unwrap_or_else(|| panic!("no report at {began}"));
            let minutes = near.volume_remaining_ml / near.measured_rate_ml_h.max(1e-9) * 60.0;
            assert!(
                near.volume_remaining_ml <= 50.0 || minutes <= 15.0,
                "{near:?}"
            );
            assert!(l.ended_at_unix_ms.is_some_and(|e| e > began), "{l:?}");
        }
        let within: Vec<_> = completions
            .iter()
            .filter(|(bed, t)| labelled.contains(&(*bed, *t)) || *t <= START + 8 * HOUR)
            .copied()
            .collect();
        assert!(labels.len() >= 5, "only {} completions", labels.len());
        for c in &within {
            assert!(labelled.contains(c), "completion {c:?} not labelled");
        }
        assert_eq!(labels.len(), within.len());
    }

    #[test]
    fn motion_artifacts_jump_and_are_flagged_about_70_percent() {
        // The share, from the labels of many drawn episodes.
        let many = WardSimulator::new(WardSimConfig {
            scenarios: (0..300)
                .map(|i| {
                    spec(
                        i % 10 + 1,
                        ScenarioKind::MotionArtifact,
                        START + i64::from(i) * 5 * MIN,
                    )
                })
                .collect(),
            ..ward(10, 77)
        });
        let labels = many.labels();
        assert_eq!(labels.len(), 300);
        let flagged = labels
            .iter()
            .filter(|l| l.device_flagged == Some(true))
            .count();
        assert!((180..=240).contains(&flagged), "{flagged} of 300 flagged");

        // The signals of one flagged and one missed episode.
        let specs = vec![
            ScenarioSpec {
                artifact_flagged: Some(true),
                ..spec(1, ScenarioKind::MotionArtifact, START + 2 * MIN)
            },
            ScenarioSpec {
                artifact_flagged: Some(false),
                ..spec(1, ScenarioKind::MotionArtifact, START + 6 * MIN)
            },
        ];
        let (sim, with, without) = with_and_without(ward(1, 9), specs, START + 10 * MIN);
        let labels = sim.labels();
        assert_eq!(labels.len(), 2);
        let pairs = |mdc| {
            vitals(&with, 1, mdc)
                .into_iter()
                .zip(vitals(&without, 1, mdc))
                .collect::<Vec<_>>()
        };
        for l in &labels {
            let (began, ended) = (l.began_at_unix_ms, l.ended_at_unix_ms.unwrap_or(0));
            assert!((10 * S..=60 * S).contains(&(ended - began)));
            let artifact = vec![SIMULATED, QualityFlag::Artifact as i32];
            let want_flags = if l.device_flagged == Some(true) {
                artifact
            } else {
                vec![SIMULATED]
            };
            let (mut max_hr_jump, mut max_spo2_drop) = (0.0f64, 0.0f64);
            for (mdc, sign) in [
                (MDC_ECG_HEART_RATE, 1.0),
                (MDC_PULS_OXIM_PULS_RATE, 1.0),
                (MDC_PULS_OXIM_SAT_O2, -1.0),
            ] {
                for (a, b) in pairs(mdc) {
                    if (began..ended).contains(&a.measured_at_unix_ms) {
                        assert_eq!(a.quality, want_flags);
                        let jump = sign * (a.value - b.value);
                        assert!(jump >= 0.0, "{mdc}: {} vs {}", a.value, b.value);
                        if mdc == MDC_ECG_HEART_RATE {
                            assert!(jump >= 9.0);
                            max_hr_jump = max_hr_jump.max(jump);
                        } else if mdc == MDC_PULS_OXIM_SAT_O2 {
                            max_spo2_drop = max_spo2_drop.max(jump);
                        }
                    }
                }
            }
            assert!(
                max_hr_jump >= 30.0 && max_spo2_drop >= 7.0,
                "{max_hr_jump} {max_spo2_drop}"
            );
        }
        // Outside the episodes, and for respiration throughout, nothing changes.
        let in_any = |t: i64| {
            labels
                .iter()
                .any(|l| (l.began_at_unix_ms..l.ended_at_unix_ms.unwrap_or(0)).contains(&t))
        };
        for (a, b) in pairs(MDC_ECG_HEART_RATE) {
            if !in_any(a.measured_at_unix_ms) {
                assert_eq!(a, b);
            }
        }
        assert_eq!(
            vitals(&with, 1, MDC_RESP_RATE),
            vitals(&without, 1, MDC_RESP_RATE)
        );
        with.iter().for_each(valid);
    }

    #[test]
    fn probe_off_reads_zero_flagged_sensor_off() {
        let at = START + 3 * MIN;
        let (sim, with, without) = with_and_without(
            ward(2, 10),
            vec![spec(2, ScenarioKind::ProbeOff, at)],
            START + 15 * MIN,
        );
        let l = only(&sim.labels(), ScenarioKind::ProbeOff).clone();
        let ended = l.ended_at_unix_ms.unwrap_or(0);
        assert!((30 * S..=300 * S).contains(&(ended - at)));
        assert_eq!(l.device_flagged, Some(true));
        let mut off = 0;
        for mdc in [MDC_PULS_OXIM_SAT_O2, MDC_PULS_OXIM_PULS_RATE] {
            for (a, b) in vitals(&with, 2, mdc)
                .into_iter()
                .zip(vitals(&without, 2, mdc))
            {
                if (at..ended).contains(&a.measured_at_unix_ms) {
                    assert_eq!(a.value, 0.0);
                    assert_eq!(a.quality, vec![SIMULATED, QualityFlag::SensorOff as i32]);
                    off += 1;
                } else {
                    assert_eq!(a, b);
                }
            }
        }
        let per_metric = (ended - at) / S;
        assert!(
            (2 * per_metric..=2 * per_metric + 2).contains(&off),
            "{off} samples off"
        );
        for mdc in [MDC_ECG_HEART_RATE, MDC_RESP_RATE] {
            assert_eq!(vitals(&with, 2, mdc), vitals(&without, 2, mdc));
        }
        with.iter().for_each(valid);
    }

    #[test]
    fn transients_return_to_baseline() {
        let specs: Vec<_> = (0..8)
            .map(|i| {
                spec(
                    1,
                    ScenarioKind::TransientCoughOrTurn,
                    START + (1 + 2 * i) * MIN,
                )
            })
            .collect();
        let (sim, with, without) = with_and_without(ward(2, 14), specs, START + 20 * MIN);
        let labels = sim.labels();
        assert_eq!(labels.len(), 8);
        let coughs = labels
            .iter()
            .filter(|l| l.description.starts_with("Cough"))
            .count();
        assert!((1..8).contains(&coughs), "both variants: {coughs} coughs");
        for l in &labels {
            let (began, ended) = (l.began_at_unix_ms, l.ended_at_unix_ms.unwrap_or(0));
            assert!((5 * S..=20 * S).contains(&(ended - began)));
            let mut changed = false;
            for mdc in [MDC_ECG_HEART_RATE, MDC_RESP_RATE, MDC_PULS_OXIM_SAT_O2] {
                for (a, b) in vitals(&with, 1, mdc)
                    .into_iter()
                    .zip(vitals(&without, 1, mdc))
                {
                    let t = a.measured_at_unix_ms;
                    if (began..ended).contains(&t) {
                        changed |= a.value != b.value;
                        assert_eq!(a.quality, vec![SIMULATED], "not flagged");
                    } else if (ended..ended + 30 * S).contains(&t) {
                        assert_eq!(a, b, "back to baseline within 30 s");
                    }
                }
            }
            assert!(changed, "{l:?} changed nothing");
        }
        assert_eq!(with.len(), without.len());
        assert_eq!(
            vitals(&with, 2, MDC_ECG_HEART_RATE),
            vitals(&without, 2, MDC_ECG_HEART_RATE)
        );
    }

    fn mix_cfg(seed: u64, mix: RandomScenarioMix) -> WardSimConfig {
        WardSimConfig {
            seed,
            start_unix_ms: START,
            random_scenarios: Some(mix),
            ..WardSimConfig::default()
        }
    }

    #[test]
    fn random_mix_schedules_exact_counts_and_depends_on_the_seed() {
        // First episodes only (recurrences have their own test).
        let mix = RandomScenarioMix {
            recurrence_share: 0.0,
            ..RandomScenarioMix::default()
        };
        let sim = WardSimulator::new(mix_cfg(1, mix.clone()));
        let labels = sim.labels();
        let mut counts: BTreeMap<ScenarioKind, u32> = BTreeMap::new();
        for l in &labels {
            *counts.entry(l.kind).or_default() += 1;
            assert!(l.began_at_unix_ms >= START);
        }
        for (kind, want) in [
            (ScenarioKind::SepsisDeterioration, 2),
            (ScenarioKind::RespiratoryFailureOnOxygen, 1),
            (ScenarioKind::Hypovolaemia, 1),
            (ScenarioKind::DripSpedUp, 3),
            (ScenarioKind::LineOccluded, 2),
            (ScenarioKind::MotionArtifact, 20),
            (ScenarioKind::ProbeOff, 10),
            (ScenarioKind::TransientCoughOrTurn, 60),
        ] {
            assert_eq!(mix.scheduled_count(kind, 40), want);
            assert_eq!(counts.get(&kind).copied().unwrap_or(0), want, "{kind}");
        }
        let bags = counts
            .get(&ScenarioKind::BagRunsEmpty)
            .copied()
            .unwrap_or(0);
        assert!(bags >= 20, "{bags} bags ran empty in 24 h");
        let flagged = labels
            .iter()
            .filter(|l| l.kind == ScenarioKind::MotionArtifact && l.device_flagged == Some(true))
            .count();
        assert_eq!(flagged, 14, "exactly 70 % of 20");
        // Deteriorations on distinct beds; the respiratory failure and 2 stable patients on scale 2.
        let det_beds: HashSet<u32> = labels
            .iter()
            .filter(|l| l.kind.is_deterioration())
            .map(|l| l.bed)
            .collect();
        assert_eq!(det_beds.len(), 4);
        let scale2: Vec<u32> = sim
            .patients()
            .iter()
            .filter(|p| p.spo2_scale_2)
            .map(|p| p.bed)
            .collect();
        assert_eq!(scale2.len(), 3);
        assert!(scale2.contains(&only(&labels, ScenarioKind::RespiratoryFailureOnOxygen).bed));
        // Infusion faults all hit a running drip.
        assert!(
            labels
                .iter()
                .filter(|l| matches!(
                    l.kind,
                    ScenarioKind::DripSpedUp | ScenarioKind::LineOccluded
                ))
                .all(|l| l.should_alarm)
        );

        // Deterministic; other seeds schedule differently.
        let key = |ls: &[GroundTruthLabel]| -> Vec<(u32, ScenarioKind, i64)> {
            ls.iter()
                .filter(|l| l.kind != ScenarioKind::BagRunsEmpty)
                .map(|l| (l.bed, l.kind, l.began_at_unix_ms))
                .collect()
        };
        assert_eq!(labels, WardSimulator::new(mix_cfg(1, mix.clone())).labels());
        let other = WardSimulator::new(mix_cfg(2, mix.clone())).labels();
        assert_ne!(key(&labels), key(&other));
        assert_eq!(
            other
                .iter()
                .filter(|l| l.kind == ScenarioKind::TransientCoughOrTurn)
                .count(),
            60
        );

        // A different mix composes a different cohort; rates scale with beds and horizon.
        let held_out = RandomScenarioMix {
            sepsis: 6.0,
            transient_cough_or_turn: 0.0,
            motion_artifact: 40.0,
            horizon_ms: 12 * HOUR,
            ..mix
        };
        let cfg = WardSimConfig {
            beds: 20,
            ..mix_cfg(1, held_out.clone())
        };
        let labels = WardSimulator::new(cfg).labels();
        let n = |k| labels.iter().filter(|l| l.kind == k).count() as u32;
        assert_eq!(n(ScenarioKind::SepsisDeterioration), 2); // 6 × 20/40 × 12/24 = 1.5 → 2
        assert_eq!(n(ScenarioKind::MotionArtifact), 10);
        assert_eq!(n(ScenarioKind::TransientCoughOrTurn), 0);
        for k in ScenarioKind::ALL {
            if k != ScenarioKind::BagRunsEmpty {
                assert_eq!(n(k), held_out.scheduled_count(k, 20), "{k}");
            }
        }
    }

    /// A busy ward with every kind of scenario: every event validates, the output does not depend on how time is
    /// split into calls, and disturbed samples carry the right flags.
    #[test]
    fn scenario_output_validates_and_is_split_invariant() {
        let mix = RandomScenarioMix {
            horizon_ms: 3 * HOUR,
            sepsis: 40.0,
            respiratory_failure: 20.0,
            hypovolaemia: 40.0,
            drip_sped_up: 80.0,
            line_occluded: 80.0,
            motion_artifact: 300.0,
            probe_off: 300.0,
            transient_cough_or_turn: 300.0,
            ..RandomScenarioMix::default()
        };
        let cfg = WardSimConfig {
            beds: 12,
            vitals_period_ms: 2 * S,
            ..mix_cfg(5, mix)
        };
        let until = START + 4 * HOUR;
        let whole = WardSimulator::new(cfg.clone()).advance_to(until);
        let mut sim = WardSimulator::new(cfg);
        let labels = sim.labels();
        for k in ScenarioKind::ALL {
            assert!(labels.iter().any(|l| l.kind == k), "no {k}");
        }
        let mut pieces = Vec::new();
        let (mut t, mut step) = (START, 1);
        while t < until {
            t = (t + step).min(until);
            pieces.extend(sim.advance_to(t));
            step = (step * 7 + 333) % 470_000;
        }
        assert!(whole == pieces, "split changes the output");
        let mut keys = HashSet::new();
        let (mut artifact, mut sensor_off, mut stopped, mut o2) = (0, 0, 0, 0);
        for e in &whole {
            valid(e);
            assert!(keys.insert(e.idempotency_key.as_str()), "duplicate key");
            match &e.payload {
                Payload::Vital(v) => {
                    assert_eq!(v.quality[0], SIMULATED);
                    artifact += usize::from(v.quality.contains(&(QualityFlag::Artifact as i32)));
                    sensor_off += usize::from(v.quality.contains(&(QualityFlag::SensorOff as i32)));
                    o2 += usize::from(
                        v.metric_mdc == WARDWATCH_SUPPLEMENTAL_O2 && v.enumerated == "O2",
                    );
                }
                Payload::Infusion(i) => {
                    stopped += usize::from(i.state == InfusionState::Stopped as i32)
                }
                _ => {}
            }
        }
        assert!(artifact > 0 && sensor_off > 0 && stopped > 0 && o2 > 0);
    }
}
