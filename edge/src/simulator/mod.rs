//! Deterministic ward simulator. **Everything it produces is simulated data, never real patient data**: every
//! vital sign carries [`QualityFlag::Simulated`], patients have made-up MRNs (`SIM` + 6 digits) and devices report
//! the manufacturer "Wardwatch Simulator".
//!
//! # What it models
//!
//! A ward of `beds` beds (labels `"1"`..`"N"`), one stable adult patient per bed, each with:
//!
//! - a bedside monitor (`mon-<ward>-<bed>`) reporting every `vitals_period_ms` the continuous metrics heart rate
//!   (ECG), pulse rate (oximeter), respiratory rate and SpO2; body temperature every `temp_period_ms`; a
//!   non-invasive blood pressure (systolic, diastolic, mean) every `bp_period_ms`; and the level of consciousness
//!   (ACVPU, as charted by a nurse) every `consciousness_period_ms`;
//! - for a share `infusion_share` of the beds, a gravity IV infusion watched by a drip monitor
//!   (`drip-<ward>-<bed>`) reporting every `infusion_period_ms`: drops per minute, the rate measured from them,
//!   volume infused and remaining. When a bag runs empty the infusion reports `Completed`; some minutes later a new
//!   bag is hung under a new order (`ORD-<ward>-<bed>-<n>`);
//! - optionally (see [`WardSimConfig::supplemental_o2_period_ms`]) the air-or-oxygen observation
//!   (`WARDWATCH_SUPPLEMENTAL_O2`, "AIR" or "O2", charted like ACVPU under the monitor's device id) every 15 min.
//!   Patients on SpO2 scale 2 ([`WardSimConfig::spo2_scale2_beds`], hypercapnic respiratory failure) breathe
//!   oxygen with a target SpO2 of 88–92 % (baseline 89–91 %); everyone else is on air.
//!
//! # Clinical scenarios
//!
//! Labelled deteriorations (sepsis, respiratory failure on oxygen, hypovolaemia), infusion faults (drip sped up,
//! line occluded, bags running empty) and signal disturbances (motion artefact, probe off, cough or turn) can be
//! scheduled explicitly ([`WardSimConfig::scenarios`]) or by a seeded [`RandomScenarioMix`]
//! ([`WardSimConfig::random_scenarios`]); [`WardSimulator::labels`] gives their ground truth upfront. The shapes
//! and the alarms expected are documented in [`scenarios`]. Without scenarios (the default) the simulator
//! produces exactly what it produced before scenarios existed.
//!
//! Each patient has baselines drawn from the seed (HR 60-100 /min, RR 12-20 /min, SpO2 94-99 %, temperature
//! 36.2-37.5 °C, systolic 100-150 mmHg with diastolic 0.6-0.7 of it, mostly alert). Values wander around the
//! baselines as sums of AR(1) (Ornstein-Uhlenbeck) processes whose time constants are in milliseconds, so the
//! statistics do not depend on the sampling period, and values change smoothly (no white-noise jumps). Reported
//! values are rounded as a monitor shows them (HR, RR, SpO2 and blood pressure to integers, temperature to 0.1 °C)
//! and clamped to plausible ranges well inside the physiologically possible ranges of
//! [`wardwatch_proto::metrics`].
//!
//! # Determinism
//!
//! The simulator is driven by simulated time, not by calls: each bed and each of its channels (monitor,
//! temperature, blood pressure, consciousness, infusion) has its own pseudo-random stream (xoshiro256** seeded via
//! SplitMix64 from `(seed, bed, channel)`) and its own tick schedule, and events are emitted in the order
//! `(measured time, bed, channel)`. The same configuration therefore yields the same events on every run, and the
//! concatenated output of [`WardSimulator::advance_to`] is the same however a time range is split into calls.
//! Scenarios keep both properties: their parameters come from their own streams, their per-sample randomness is a
//! pure function of the sample time, and infusion faults advance with the drip monitor's ticks.
//!
//! # Extending
//!
//! Per-bed state lives in private per-bed structs (patient baselines, one state struct per channel) and each tick
//! goes through one per-bed step function. Clinical scenarios hook in at `Bed::targets` (physiological offsets
//! on the patient's baselines), at the monitor step (artefacts, probe off) and at the infusion step (faults).
//!
//! Identifiers are valid wire identifiers as long as the ward id is a valid ward id of at most 40 characters.

pub mod scenarios;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use sha2::{Digest, Sha256};
use wardwatch_proto::metrics::{
    MDC_ECG_HEART_RATE, MDC_PRESS_BLD_NONINV, MDC_PRESS_BLD_NONINV_DIA, MDC_PRESS_BLD_NONINV_MEAN,
    MDC_PRESS_BLD_NONINV_SYS, MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE,
    MDC_TEMP_BODY, WARDWATCH_ACVPU, WARDWATCH_SUPPLEMENTAL_O2,
};
use wardwatch_proto::v1::{
    BedLocation, DeviceInfo, DeviceKind, EncounterId, InfusionState, InfusionStatus,
    OperationalState, QualityFlag, VitalComponent, VitalSign, edge_event::Payload,
};

use scenarios::{Effect, InfusionPlan, PatientContext, Resolved};
pub use scenarios::{GroundTruthLabel, RandomScenarioMix, ScenarioKind, ScenarioSpec};

/// The most beds one simulator simulates (MRNs have 6 digits and must stay unique within the ward).
pub const MAX_BEDS: u32 = 100_000;

/// Period of the air-or-oxygen observation when the configuration uses clinical scenarios and does not set
/// [`WardSimConfig::supplemental_o2_period_ms`]: 15 min.
pub const SUPPLEMENTAL_O2_PERIOD_MS: i64 = 900_000;

/// Configuration of a simulated ward.
///
/// A period of zero or less switches that channel off.
#[derive(Debug, Clone, PartialEq)]
pub struct WardSimConfig {
    /// Ward identifier (e.g. "7A"); must be a valid ward id of at most 40 characters.
    pub ward: String,
    /// Number of beds, labelled "1".."N" (at most [`MAX_BEDS`] are simulated).
    pub beds: u32,
    /// Seed of every pseudo-random stream.
    pub seed: u64,
    /// Simulated time at which the simulation starts; the first events come strictly after it.
    pub start_unix_ms: i64,
    /// Period of the continuous monitor metrics (HR, pulse rate, RR, SpO2): one sample per metric per bed per period.
    pub vitals_period_ms: i64,
    /// Period of non-invasive blood pressure measurements.
    pub bp_period_ms: i64,
    /// Period of body temperature samples.
    pub temp_period_ms: i64,
    /// Period of level-of-consciousness (ACVPU) observations.
    pub consciousness_period_ms: i64,
    /// Period of drip monitor reports.
    pub infusion_period_ms: i64,
    /// Share of beds (0 to 1, rounded to whole beds) with an IV infusion. Beds with an explicit infusion
    /// scenario get an infusion in addition.
    pub infusion_share: f64,
    /// Period of the air-or-oxygen observation ("AIR"/"O2") of every bed. `None` (the default): every
    /// [`SUPPLEMENTAL_O2_PERIOD_MS`] (15 min) when the configuration uses scenarios, a random mix or scale-2 beds,
    /// otherwise off, so that a ward configured as before scenarios existed produces the same events.
    /// `Some(p)`: every `p` ms (p ≤ 0: off). See [`WardSimConfig::supplemental_o2_period`].
    pub supplemental_o2_period_ms: Option<i64>,
    /// Beds (labels 1..=beds) whose patients have hypercapnic respiratory failure: SpO2 scale 2, target 88–92 %,
    /// on oxygen. Beds with a respiratory-failure scenario are added. Labels outside the ward are ignored.
    pub spo2_scale2_beds: Vec<u32>,
    /// Explicitly scheduled clinical scenarios (default none). See [`scenarios`].
    pub scenarios: Vec<ScenarioSpec>,
    /// A seeded random mix of scenarios across the ward, in addition to `scenarios` (default none).
    pub random_scenarios: Option<RandomScenarioMix>,
}

impl WardSimConfig {
    /// The effective period of the air-or-oxygen observation (≤ 0: off); see
    /// [`WardSimConfig::supplemental_o2_period_ms`].
    pub fn supplemental_o2_period(&self) -> i64 {
        match self.supplemental_o2_period_ms {
            Some(p) => p,
            None if !self.scenarios.is_empty()
                || self.random_scenarios.is_some()
                || !self.spo2_scale2_beds.is_empty() =>
            {
                SUPPLEMENTAL_O2_PERIOD_MS
            }
            None => 0,
        }
    }
}

impl Default for WardSimConfig {
    /// Ward "7A", 40 beds, seed 1, start 0 (callers set it), vitals every 1 s, blood pressure every 5 min,
    /// temperature every minute, consciousness every 15 min, drip monitors every 10 s, 60 % of beds on an infusion;
    /// no scale-2 patients, no scenarios, air-or-oxygen observations off (see
    /// [`WardSimConfig::supplemental_o2_period_ms`]).
    fn default() -> Self {
        Self {
            ward: "7A".to_string(),
            beds: 40,
            seed: 1,
            start_unix_ms: 0,
            vitals_period_ms: 1_000,
            bp_period_ms: 300_000,
            temp_period_ms: 60_000,
            consciousness_period_ms: 900_000,
            infusion_period_ms: 10_000,
            infusion_share: 0.6,
            supplemental_o2_period_ms: None,
            spo2_scale2_beds: Vec::new(),
            scenarios: Vec::new(),
            random_scenarios: None,
        }
    }
}

/// One simulated event: an idempotency key derived from what the source would send (device id, metric, measured
/// time), and the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    /// Unique per simulated source message: `<device>:<metric code>:<measured ms>` for vitals,
    /// `<device>:infusion:<ms>` for infusion reports, `<device>:device:<ms>` for device descriptions (hashed if
    /// longer than 128 bytes).
    pub idempotency_key: String,
    /// The event itself.
    pub payload: Payload,
}

/// A deterministic simulated ward. See the module documentation for what it models.
#[derive(Debug, Clone)]
pub struct WardSimulator {
    /// The configuration it was built from.
    cfg: WardSimConfig,
    /// Per-bed state, index = bed label - 1.
    beds: Vec<Bed>,
    /// Next tick of every (bed, channel), earliest first; ties ordered by bed, then channel.
    schedule: BinaryHeap<Reverse<(i64, u32, Channel)>>,
    /// Simulated time reached.
    now_unix_ms: i64,
    /// Labels of the scenarios whose course is fixed at construction (all but infusion faults and bags).
    static_labels: Vec<GroundTruthLabel>,
    /// Bag completions are labelled at least up to this time (random mix horizon, explicit bag-runs-empty specs).
    label_horizon_unix_ms: i64,
}

/// The assigning authority of the simulated patients' visit numbers.
pub const SIM_VISIT_AUTHORITY: &str = "WARDWATCH-SIM";

/// The encounter (visit) of the simulated patient with MRN `mrn`: visit number `<mrn>-V1` (each simulated patient
/// is in the first stay of their simulated life), issued by [`SIM_VISIT_AUTHORITY`]. Derived from the MRN rather
/// than drawn from a random stream, so adding it changed none of the simulator's seeded values.
pub fn sim_encounter(mrn: &str) -> EncounterId {
    EncounterId {
        visit_number: format!("{mrn}-V1"),
        assigning_authority: SIM_VISIT_AUTHORITY.to_string(),
    }
}

/// A simulated patient, as far as scoring needs to know upfront.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPatient {
    /// Bed label (1..=beds).
    pub bed: u32,
    /// MRN ("SIM" + 6 digits), as on every event of the bed.
    pub patient_id: String,
    /// Hypercapnic respiratory failure: score SpO2 on NEWS2 scale 2 (target 88–92 %); such patients are on
    /// oxygen.
    pub spo2_scale_2: bool,
}

impl WardSimulator {
    /// Builds the ward: patients, baselines, devices, infusions, scenarios and tick schedules, all derived from
    /// `cfg.seed`.
    pub fn new(cfg: WardSimConfig) -> Self {
        let ward_tag = tag("ward");
        let mut ward_rng = Rng::stream(cfg.seed, u32::MAX, ward_tag);

        // Which beds have an infusion: an exact share, chosen by a seeded shuffle.
        let share = if cfg.infusion_share.is_finite() {
            cfg.infusion_share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let n_beds = cfg.beds.min(MAX_BEDS);
        let n_infusions = ((f64::from(n_beds) * share).round() as u32).min(n_beds);
        let mut order: Vec<u32> = (0..n_beds).collect();
        for i in (1..order.len()).rev() {
            let j = ward_rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut with_infusion = vec![false; n_beds as usize];
        for &b in order.iter().take(n_infusions as usize) {
            with_infusion[b as usize] = true;
        }

        // Scenarios: explicit ones on existing beds (infusion scenarios bring an infusion), then the random mix.
        let in_ward = |bed: u32| (1..=n_beds).contains(&bed);
        let mut specs: Vec<ScenarioSpec> = cfg
            .scenarios
            .iter()
            .filter(|s| in_ward(s.bed))
            .cloned()
            .collect();
        for s in &specs {
            if s.kind.is_infusion() {
                with_infusion[(s.bed - 1) as usize] = true;
            }
        }
        let mut scale2 = vec![false; n_beds as usize];
        for &b in cfg.spo2_scale2_beds.iter().filter(|b| in_ward(**b)) {
            scale2[(b - 1) as usize] = true;
        }
        let mut label_horizon_unix_ms = cfg.start_unix_ms;
        if let Some(mix) = &cfg.random_scenarios {
            let m = scenarios::schedule_mix(mix, cfg.seed, cfg.start_unix_ms, &with_infusion);
            label_horizon_unix_ms = label_horizon_unix_ms.max(m.end);
            for b in m.stable_scale2 {
                scale2[(b - 1) as usize] = true;
            }
            specs.extend(m.specs);
        }
        for s in &specs {
            if s.kind == ScenarioKind::RespiratoryFailureOnOxygen {
                scale2[(s.bed - 1) as usize] = true;
            }
        }

        let mut mrns = HashSet::new();
        let mut beds = Vec::with_capacity(n_beds as usize);
        for index in 0..n_beds {
            let i = index as usize;
            let bed = Bed::new(&cfg, index, with_infusion[i], scale2[i], &mut mrns);
            beds.push(bed);
        }

        let mut static_labels = Vec::new();
        let mut seen: HashMap<(u32, ScenarioKind, i64), u64> = HashMap::new();
        for spec in &specs {
            let Some(bed) = beds.get_mut((spec.bed - 1) as usize) else {
                continue;
            };
            let dup = seen
                .entry((spec.bed, spec.kind, spec.start_unix_ms))
                .or_default();
            let ctx = PatientContext {
                seed: cfg.seed,
                index: bed.index,
                patient_id: &bed.patient.mrn,
                baseline: &bed.patient.baseline,
                scale2: bed.patient.spo2_scale_2,
            };
            let resolved = scenarios::resolve(spec, *dup, &ctx);
            *dup += 1;
            match resolved {
                Resolved::Patient(effect, label) => {
                    bed.effects.push(*effect);
                    static_labels.push(label);
                }
                Resolved::Infusion(plan) => {
                    if let Some(inf) = bed.infusion.as_mut() {
                        inf.plans.push(plan);
                    }
                }
                Resolved::BagLabels(until) => {
                    label_horizon_unix_ms = label_horizon_unix_ms.max(until);
                }
            }
        }
        for bed in &mut beds {
            bed.infusion_initial = bed.infusion.clone();
            bed.first_infusion_tick = first_tick(&cfg, bed.index, Channel::Infusion);
        }

        let mut schedule = BinaryHeap::new();
        for bed in &beds {
            for channel in Channel::ALL {
                if channel == Channel::Infusion && bed.infusion.is_none() {
                    continue;
                }
                if let Some(first) = first_tick(&cfg, bed.index, channel) {
                    schedule.push(Reverse((first, bed.index, channel)));
                }
            }
        }

        Self {
            now_unix_ms: cfg.start_unix_ms,
            cfg,
            beds,
            schedule,
            static_labels,
            label_horizon_unix_ms,
        }
    }

    /// The ground truth of every scenario, ordered by start (then bed, kind): explicit and random scenarios are
    /// all known at construction. Bags run empty by themselves; their completions are labelled up to the later
    /// of the random mix's horizon end (or an explicit bag-runs-empty spec's end) and the current simulated time
    /// (a bag whose near-completion begins by then is labelled with its completion, even if that comes later).
    /// Infusion labels are computed by replaying the drip monitors from the start, so this costs a little time.
    pub fn labels(&self) -> Vec<GroundTruthLabel> {
        let horizon = self.label_horizon_unix_ms.max(self.now_unix_ms);
        let mut out = self.static_labels.clone();
        for bed in &self.beds {
            bed.infusion_labels(&self.cfg, horizon, &mut out);
        }
        out.sort_by_key(|l| (l.began_at_unix_ms, l.bed, l.kind));
        out
    }

    /// The patients of the ward, one per bed, in bed order.
    pub fn patients(&self) -> Vec<SimPatient> {
        self.beds
            .iter()
            .map(|b| SimPatient {
                bed: b.index + 1,
                patient_id: b.patient.mrn.clone(),
                spo2_scale_2: b.patient.spo2_scale_2,
            })
            .collect()
    }

    /// The devices of the ward: per bed a bedside monitor (`mon-<ward>-<bed>`) and, for beds with an infusion, a
    /// drip monitor (`drip-<ward>-<bed>`), reported as switched on at the start time.
    pub fn devices(&self) -> Vec<SimEvent> {
        let at = self.cfg.start_unix_ms;
        let mut out = Vec::new();
        for bed in &self.beds {
            let mut push = |device_id: &str, kind: DeviceKind, model: &str, serial: String| {
                out.push(SimEvent {
                    idempotency_key: key(format!("{device_id}:device:{at}")),
                    payload: Payload::Device(DeviceInfo {
                        device_id: device_id.to_string(),
                        kind: kind as i32,
                        manufacturer: "Wardwatch Simulator".to_string(),
                        model: model.to_string(),
                        serial_number: serial,
                        udi: String::new(),
                        location: Some(bed.location.clone()),
                        state: OperationalState::On as i32,
                        reported_at_unix_ms: at,
                    }),
                })
            };
            push(
                &bed.monitor_id,
                DeviceKind::BedsideMonitor,
                "SIM-BM 1 simulated bedside monitor",
                format!("SIMBM{:08X}", bed.serial),
            );
            if let Some(inf) = &bed.infusion {
                push(
                    &inf.device_id,
                    DeviceKind::DripMonitor,
                    "SIM-DM 1 simulated drip monitor",
                    format!("SIMDM{:08X}", bed.serial),
                );
            }
        }
        out
    }

    /// Advances simulated time to `until_unix_ms` (inclusive) and returns every event due since the previous
    /// call, in time order (ties by bed, then channel). A time not after the current one returns nothing. The
    /// output for a time range is identical however the range is split into calls.
    pub fn advance_to(&mut self, until_unix_ms: i64) -> Vec<SimEvent> {
        let mut out = Vec::new();
        while let Some(&Reverse((t, bed, channel))) = self.schedule.peek() {
            if t > until_unix_ms {
                break;
            }
            self.schedule.pop();
            if let Some(b) = self.beds.get_mut(bed as usize) {
                b.step(channel, t, &mut out);
            }
            if let Some(next) = t.checked_add(channel.period(&self.cfg)) {
                self.schedule.push(Reverse((next, bed, channel)));
            }
        }
        self.now_unix_ms = self.now_unix_ms.max(until_unix_ms);
        out
    }

    /// Current simulated time: the start, or the latest time passed to [`WardSimulator::advance_to`].
    pub fn now_unix_ms(&self) -> i64 {
        self.now_unix_ms
    }

    /// The configuration the simulator was built from.
    pub fn config(&self) -> &WardSimConfig {
        &self.cfg
    }
}

/// The kinds of periodic report a bed produces. The order is the tie-break order within one millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Channel {
    /// HR, pulse rate, RR, SpO2.
    Monitor = 0,
    /// Body temperature.
    Temperature = 1,
    /// Non-invasive blood pressure.
    BloodPressure = 2,
    /// ACVPU.
    Consciousness = 3,
    /// Drip monitor report.
    Infusion = 4,
    /// Air or oxygen.
    Oxygen = 5,
}

impl Channel {
    const ALL: [Channel; 6] = [
        Channel::Monitor,
        Channel::Temperature,
        Channel::BloodPressure,
        Channel::Consciousness,
        Channel::Infusion,
        Channel::Oxygen,
    ];

    fn period(self, cfg: &WardSimConfig) -> i64 {
        match self {
            Channel::Monitor => cfg.vitals_period_ms,
            Channel::Temperature => cfg.temp_period_ms,
            Channel::BloodPressure => cfg.bp_period_ms,
            Channel::Consciousness => cfg.consciousness_period_ms,
            Channel::Infusion => cfg.infusion_period_ms,
            Channel::Oxygen => cfg.supplemental_o2_period(),
        }
    }
}

/// The first tick of `channel` of bed `index`: a per-bed phase in 1..=period after the start, so devices do not
/// all report in the same millisecond and the first report comes strictly after the start. `None` when the
/// channel is off.
fn first_tick(cfg: &WardSimConfig, index: u32, channel: Channel) -> Option<i64> {
    let period = channel.period(cfg);
    if period <= 0 {
        return None;
    }
    let mut phase_rng = Rng::stream(cfg.seed, index, tag("phase") ^ channel as u64);
    let phase = 1 + phase_rng.below(period as u64) as i64;
    cfg.start_unix_ms.checked_add(phase)
}

const MINUTE_MS: f64 = 60_000.0;
const HOUR_MS: f64 = 3_600_000.0;

/// Plausible display ranges the simulator clamps to (all inside the possible ranges of `metrics.rs`).
const HR_RANGE: (f64, f64) = (35.0, 180.0);
const RR_RANGE: (f64, f64) = (6.0, 40.0);
const SPO2_RANGE: (f64, f64) = (80.0, 100.0);
const TEMP_RANGE: (f64, f64) = (34.0, 41.0);
const SBP_RANGE: (f64, f64) = (70.0, 220.0);
const DBP_RANGE: (f64, f64) = (35.0, 130.0);
/// Wider ranges for motion-artefact samples (implausible on purpose, still possible per `metrics.rs`).
const ARTIFACT_HR_RANGE: (f64, f64) = (30.0, 250.0);
const ARTIFACT_SPO2_RANGE: (f64, f64) = (50.0, 100.0);

/// A patient's resting values, around which the simulated values wander.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Baseline {
    /// Heart rate, /min.
    hr: f64,
    /// Respiratory rate, /min.
    rr: f64,
    /// SpO2, %.
    spo2: f64,
    /// Body temperature, °C.
    temp_c: f64,
    /// Systolic pressure, mmHg.
    sbp: f64,
    /// Diastolic as a share of systolic.
    dbp_ratio: f64,
    /// Scale of the heart rate's wander around its centre (1 = the patient's own variability; a sepsis lowers
    /// it, see `scenarios`). Scales the noise output only, so the noise streams are the same at any value.
    hr_variability: f64,
    /// Level of consciousness, one of the ACVPU letters.
    acvpu: &'static str,
}

/// The simulated patient in a bed.
#[derive(Debug, Clone)]
struct Patient {
    /// "SIM" + 6 digits.
    mrn: String,
    /// Resting values.
    baseline: Baseline,
    /// SpO2 scale 2 (hypercapnic respiratory failure): on oxygen, SpO2 baseline 89-91 %.
    spo2_scale_2: bool,
}

/// Noise of the continuous monitor metrics.
#[derive(Debug, Clone)]
struct MonitorState {
    rng: Rng,
    hr: Drift,
    /// Difference between oximeter pulse rate and ECG heart rate.
    pr_offset: Ar1,
    rr: Drift,
    spo2: Drift,
}

/// Noise of body temperature.
#[derive(Debug, Clone)]
struct TemperatureState {
    rng: Rng,
    temp: Drift,
}

/// Noise of non-invasive blood pressure.
#[derive(Debug, Clone)]
struct BloodPressureState {
    rng: Rng,
    sys: Drift,
    /// Extra diastolic variation on top of the ratio to systolic.
    dia: Ar1,
}

/// One simulated bed: the patient, the devices and the state of every channel.
#[derive(Debug, Clone)]
struct Bed {
    /// 0-based index (label = index + 1).
    index: u32,
    location: BedLocation,
    monitor_id: String,
    /// Seed-derived number printed in device serial numbers.
    serial: u32,
    patient: Patient,
    monitor: MonitorState,
    temperature: TemperatureState,
    blood_pressure: BloodPressureState,
    infusion: Option<InfusionSim>,
    /// Scenario effects on the monitor signals (physiology, artefacts, probe off); empty by default.
    effects: Vec<Effect>,
    /// The infusion as built (with its fault plans), replayed to label infusion scenarios.
    infusion_initial: Option<InfusionSim>,
    /// First drip monitor report, if the channel is on.
    first_infusion_tick: Option<i64>,
}

impl Bed {
    fn new(
        cfg: &WardSimConfig,
        index: u32,
        with_infusion: bool,
        spo2_scale_2: bool,
        mrns: &mut HashSet<String>,
    ) -> Self {
        let seed = cfg.seed;
        let label = (index + 1).to_string();
        let mut prng = Rng::stream(seed, index, tag("patient"));
        let mut mrn = format!("SIM{:06}", prng.below(1_000_000));
        while !mrns.insert(mrn.clone()) {
            mrn = format!("SIM{:06}", prng.below(1_000_000));
        }
        let sbp = prng.uniform(100.0, 150.0).round();
        let baseline = Baseline {
            hr: prng.uniform(60.0, 100.0),
            rr: prng.uniform(12.0, 20.0),
            spo2: prng.uniform(94.0, 99.0),
            temp_c: prng.uniform(36.2, 37.5),
            sbp,
            dbp_ratio: prng.uniform(0.6, 0.7),
            hr_variability: 1.0,
            acvpu: if prng.next_f64() < 0.05 { "C" } else { "A" },
        };
        let serial = (prng.next_u64() >> 32) as u32;
        let mut baseline = baseline;
        if spo2_scale_2 {
            // From a stream of its own, so the patient's other values are those of the same ward without scale 2.
            baseline.spo2 = Rng::stream(seed, index, tag("scale 2")).uniform(89.0, 91.0);
        }

        let vp = cfg.vitals_period_ms as f64;
        let mut mrng = Rng::stream(seed, index, tag("monitor"));
        let monitor = MonitorState {
            hr: Drift::new(&mut mrng, vp, (30_000.0, 2.0), (1_800_000.0, 4.0)),
            pr_offset: Ar1::new(&mut mrng, vp, 5_000.0, 0.6),
            rr: Drift::new(&mut mrng, vp, (60_000.0, 0.8), (1_800_000.0, 0.7)),
            spo2: Drift::new(&mut mrng, vp, (45_000.0, 0.6), (1_800_000.0, 0.6)),
            rng: mrng,
        };
        let mut trng = Rng::stream(seed, index, tag("temperature"));
        let temperature = TemperatureState {
            temp: Drift::new(
                &mut trng,
                cfg.temp_period_ms as f64,
                (600_000.0, 0.05),
                (3.0 * HOUR_MS, 0.15),
            ),
            rng: trng,
        };
        let mut brng = Rng::stream(seed, index, tag("blood pressure"));
        let bp = cfg.bp_period_ms as f64;
        let blood_pressure = BloodPressureState {
            sys: Drift::new(&mut brng, bp, (1_800_000.0, 4.0), (4.0 * HOUR_MS, 5.0)),
            dia: Ar1::new(&mut brng, bp, 1_800_000.0, 3.0),
            rng: brng,
        };
        let infusion = with_infusion.then(|| {
            InfusionSim::new(
                Rng::stream(seed, index, tag("infusion")),
                format!("drip-{}-{label}", cfg.ward),
                format!("ORD-{}-{label}-", cfg.ward),
                cfg.infusion_period_ms,
                0.03,
            )
        });
        Self {
            index,
            location: BedLocation {
                ward: cfg.ward.clone(),
                bed: label.clone(),
            },
            monitor_id: format!("mon-{}-{label}", cfg.ward),
            serial,
            patient: Patient {
                mrn,
                baseline,
                spo2_scale_2,
            },
            monitor,
            temperature,
            blood_pressure,
            infusion,
            effects: Vec::new(),
            infusion_initial: None,
            first_infusion_tick: None,
        }
    }

    /// The values the patient's physiology is centred on at time `t`: the baselines, shifted by any
    /// physiological scenario (deterioration, cough or turn) under way.
    fn targets(&self, t: i64) -> Baseline {
        let mut b = self.patient.baseline;
        scenarios::apply(&self.effects, t, &mut b);
        b
    }

    /// Produces the events of one tick of `channel` at time `t`.
    fn step(&mut self, channel: Channel, t: i64, out: &mut Vec<SimEvent>) {
        let target = self.targets(t);
        match channel {
            Channel::Monitor => {
                let m = &mut self.monitor;
                // At the default variability of 1 this is exactly the value without any scenario.
                let hr_raw =
                    target.hr + m.hr.step(&mut m.rng) * target.hr_variability.clamp(0.1, 1.0);
                let pr_raw = hr_raw + m.pr_offset.step(&mut m.rng);
                let rr = clamp_round(target.rr + m.rr.step(&mut m.rng), RR_RANGE, 0);
                let spo2_raw = target.spo2 + m.spo2.step(&mut m.rng);
                let mut hr = clamp_round(hr_raw, HR_RANGE, 0);
                let mut pr = clamp_round(pr_raw, HR_RANGE, 0);
                let mut spo2 = clamp_round(spo2_raw, SPO2_RANGE, 0);
                // Signal disturbances replace values and add flags; they do not touch the noise streams.
                let (mut ecg_flag, mut oximeter_flag) = (None, None);
                if !self.effects.is_empty() {
                    let d = scenarios::disturbance(&self.effects, t);
                    if let Some(flagged) = d.artifact {
                        hr = clamp_round(hr_raw + d.hr_add, ARTIFACT_HR_RANGE, 0);
                        pr = clamp_round(pr_raw + d.pr_add, ARTIFACT_HR_RANGE, 0);
                        spo2 = clamp_round(spo2_raw - d.spo2_sub, ARTIFACT_SPO2_RANGE, 0);
                        if flagged {
                            ecg_flag = Some(QualityFlag::Artifact);
                            oximeter_flag = Some(QualityFlag::Artifact);
                        }
                    }
                    if d.probe_off {
                        pr = 0.0;
                        spo2 = 0.0;
                        oximeter_flag = Some(QualityFlag::SensorOff);
                    }
                }
                out.push(self.flagged(MDC_ECG_HEART_RATE, hr, "/min", t, ecg_flag));
                out.push(self.flagged(MDC_PULS_OXIM_PULS_RATE, pr, "/min", t, oximeter_flag));
                out.push(self.numeric(MDC_RESP_RATE, rr, "/min", t));
                out.push(self.flagged(MDC_PULS_OXIM_SAT_O2, spo2, "%", t, oximeter_flag));
            }
            Channel::Temperature => {
                let s = &mut self.temperature;
                let temp = clamp_round(target.temp_c + s.temp.step(&mut s.rng), TEMP_RANGE, 1);
                out.push(self.numeric(MDC_TEMP_BODY, temp, "Cel", t));
            }
            Channel::BloodPressure => {
                let s = &mut self.blood_pressure;
                let sys = clamp_round(target.sbp + s.sys.step(&mut s.rng), SBP_RANGE, 0);
                let dia_hi = (sys - 20.0).clamp(DBP_RANGE.0, DBP_RANGE.1);
                let dia = clamp_round(
                    sys * target.dbp_ratio + s.dia.step(&mut s.rng),
                    (DBP_RANGE.0, dia_hi),
                    0,
                );
                let mean = (dia + (sys - dia) / 3.0).round();
                let mut v = self.vital(MDC_PRESS_BLD_NONINV, t);
                v.value = mean;
                v.unit_ucum = "mm[Hg]".to_string();
                v.components = vec![
                    VitalComponent {
                        metric_mdc: MDC_PRESS_BLD_NONINV_SYS,
                        value: sys,
                    },
                    VitalComponent {
                        metric_mdc: MDC_PRESS_BLD_NONINV_DIA,
                        value: dia,
                    },
                    VitalComponent {
                        metric_mdc: MDC_PRESS_BLD_NONINV_MEAN,
                        value: mean,
                    },
                ];
                out.push(self.wrap_vital(v));
            }
            Channel::Consciousness => {
                let mut v = self.vital(WARDWATCH_ACVPU, t);
                v.enumerated = target.acvpu.to_string();
                out.push(self.wrap_vital(v));
            }
            Channel::Oxygen => {
                let mut v = self.vital(WARDWATCH_SUPPLEMENTAL_O2, t);
                v.enumerated = if self.patient.spo2_scale_2 {
                    "O2"
                } else {
                    "AIR"
                }
                .to_string();
                out.push(self.wrap_vital(v));
            }
            Channel::Infusion => {
                let Some(inf) = self.infusion.as_mut() else {
                    return;
                };
                let r = inf.step(t);
                let device_id = inf.device_id.clone();
                out.push(SimEvent {
                    idempotency_key: key(format!("{device_id}:infusion:{t}")),
                    payload: Payload::Infusion(InfusionStatus {
                        order_id: r.order_id,
                        patient_id: self.patient.mrn.clone(),
                        location: Some(self.location.clone()),
                        device_id,
                        medication: r.medication.to_string(),
                        prescribed_rate_ml_h: r.prescribed_ml_h,
                        measured_rate_ml_h: r.measured_ml_h,
                        drop_factor_gtt_per_ml: r.drop_factor,
                        drops_per_min: r.drops_per_min,
                        volume_infused_ml: r.infused_ml,
                        volume_remaining_ml: r.remaining_ml,
                        state: r.state as i32,
                        measured_at_unix_ms: t,
                        encounter: Some(sim_encounter(&self.patient.mrn)),
                    }),
                });
            }
        }
    }

    /// A vital sign of this bed's monitor with everything but the value filled in.
    fn vital(&self, metric_mdc: u32, t: i64) -> VitalSign {
        VitalSign {
            patient_id: self.patient.mrn.clone(),
            location: Some(self.location.clone()),
            device_id: self.monitor_id.clone(),
            metric_mdc,
            value: 0.0,
            unit_ucum: String::new(),
            measured_at_unix_ms: t,
            quality: vec![QualityFlag::Simulated as i32],
            components: Vec::new(),
            enumerated: String::new(),
            encounter: Some(sim_encounter(&self.patient.mrn)),
        }
    }

    fn numeric(&self, metric_mdc: u32, value: f64, unit: &str, t: i64) -> SimEvent {
        self.flagged(metric_mdc, value, unit, t, None)
    }

    /// A numeric sample, with `flag` added to its quality flags if given.
    fn flagged(
        &self,
        metric_mdc: u32,
        value: f64,
        unit: &str,
        t: i64,
        flag: Option<QualityFlag>,
    ) -> SimEvent {
        let mut v = self.vital(metric_mdc, t);
        v.value = value;
        v.unit_ucum = unit.to_string();
        if let Some(f) = flag {
            v.quality.push(f as i32);
        }
        self.wrap_vital(v)
    }

    /// Labels this bed's infusion faults and the bag completions up to `horizon`, by replaying its drip monitor
    /// from the start (the replay takes exactly the steps the simulation takes).
    fn infusion_labels(&self, cfg: &WardSimConfig, horizon: i64, out: &mut Vec<GroundTruthLabel>) {
        let Some(initial) = &self.infusion_initial else {
            return;
        };
        let mut inf = initial.clone();
        let label = self.index + 1;
        let mrn = &self.patient.mrn;
        let period = cfg.infusion_period_ms;
        const SLACK_MS: i64 = 6 * 3_600_000;
        let plans_end = inf
            .plans
            .iter()
            .map(|p| p.start.saturating_add(p.duration))
            .max()
            .unwrap_or(i64::MIN);
        let bound = horizon.max(plans_end).saturating_add(SLACK_MS);
        // Near completion of the current order: (order, first report near completion).
        let mut near: Option<(String, i64)> = None;
        let mut last_completed: Option<String> = None;
        let mut next = self.first_infusion_tick.filter(|_| period > 0);
        while let Some(t) = next.filter(|t| *t <= bound) {
            let r = inf.step(t);
            if r.state == InfusionState::Running {
                let minutes_left = if r.measured_ml_h > 0.0 {
                    r.remaining_ml / r.measured_ml_h * 60.0
                } else {
                    f64::INFINITY
                };
                let is_near = r.remaining_ml <= scenarios::NEAR_COMPLETION_ML
                    || minutes_left <= scenarios::NEAR_COMPLETION_MIN;
                if is_near && near.as_ref().is_none_or(|(o, _)| *o != r.order_id) {
                    near = Some((r.order_id.clone(), t));
                }
            } else if r.state == InfusionState::Completed
                && last_completed.as_ref() != Some(&r.order_id)
            {
                let near_at = near
                    .as_ref()
                    .filter(|(o, _)| *o == r.order_id)
                    .map(|(_, at)| *at);
                if near_at.unwrap_or(t) <= horizon {
                    out.push(scenarios::bag_label(
                        &scenarios::BagCompletion {
                            order_id: &r.order_id,
                            medication: r.medication,
                            bag_ml: inf.bag_ml,
                            prescribed_ml_h: r.prescribed_ml_h,
                            near_at,
                            completed_at: t,
                        },
                        label,
                        mrn,
                    ));
                }
                last_completed = Some(r.order_id.clone());
                near = None;
            }
            // Done once past the horizon with no label left open.
            let open_bag = near.as_ref().is_some_and(|(_, at)| *at <= horizon);
            let open_plan = inf.plans.iter().any(|p| {
                p.ended.is_none()
                    && (p.began.is_some()
                        || t <= p.start.saturating_add(p.duration).saturating_add(SLACK_MS))
            });
            if t > horizon && !open_bag && !open_plan {
                break;
            }
            next = t.checked_add(period);
        }
        for p in &inf.plans {
            out.push(scenarios::infusion_plan_label(p, label, mrn));
        }
    }

    fn wrap_vital(&self, v: VitalSign) -> SimEvent {
        SimEvent {
            idempotency_key: key(format!(
                "{}:{}:{}",
                v.device_id, v.metric_mdc, v.measured_at_unix_ms
            )),
            payload: Payload::Vital(v),
        }
    }
}

/// Fluids the simulator hangs: (order text, bag volume in mL).
const FLUIDS: [(&str, f64); 8] = [
    ("Sodium chloride 0.9% 1000 mL", 1000.0),
    ("Sodium chloride 0.9% 500 mL", 500.0),
    ("Glucose 5% 1000 mL", 1000.0),
    ("Glucose 5% 500 mL", 500.0),
    ("Compound sodium lactate (Hartmann's) 1000 mL", 1000.0),
    ("Plasma-Lyte 148 1000 mL", 1000.0),
    (
        "Sodium chloride 0.9% with potassium chloride 20 mmol 1000 mL",
        1000.0,
    ),
    ("Glucose 4% with sodium chloride 0.18% 500 mL", 500.0),
];

/// Giving-set drop factors, gtt/mL.
const DROP_FACTORS: [u32; 4] = [10, 15, 20, 60];

/// "Run over" durations in hours a prescriber picks, per bag size, so the rate lands in 42-125 mL/h.
const HOURS_1000: [f64; 5] = [8.0, 10.0, 12.0, 16.0, 24.0];
const HOURS_500: [f64; 5] = [4.0, 6.0, 8.0, 10.0, 12.0];

/// Drops per minute for a flow in mL/h through a giving set: gtt/min = mL/h × gtt/mL ÷ 60.
fn drops_per_min(rate_ml_h: f64, drop_factor: u32) -> f64 {
    rate_ml_h * f64::from(drop_factor) / 60.0
}

/// Flow in mL/h from counted drops: mL/h = gtt/min × 60 ÷ gtt/mL.
fn rate_from_drops(drops_per_min: f64, drop_factor: u32) -> f64 {
    drops_per_min * 60.0 / f64::from(drop_factor)
}

/// One drip monitor report, before it is put on the wire.
#[derive(Debug, Clone, PartialEq)]
struct InfusionReading {
    order_id: String,
    medication: &'static str,
    prescribed_ml_h: f64,
    measured_ml_h: f64,
    drop_factor: u32,
    drops_per_min: f64,
    infused_ml: f64,
    remaining_ml: f64,
    state: InfusionState,
}

/// A gravity infusion watched by a drip monitor.
#[derive(Debug, Clone)]
struct InfusionSim {
    rng: Rng,
    device_id: String,
    /// "ORD-<ward>-<bed>-"; the order number is appended.
    order_prefix: String,
    /// Number of the current order (1, 2, ...).
    order_seq: u32,
    medication: &'static str,
    bag_ml: f64,
    prescribed_ml_h: f64,
    /// Of the giving set; kept across bags.
    drop_factor: u32,
    /// Volume infused, as integrated from the measured rate (unrounded).
    infused_ml: f64,
    /// Relative deviation of the actual flow from the prescribed rate (gravity drips drift).
    flow: Ar1,
    /// Whether noise is on; with it off the reported drops equal the prescribed rate exactly.
    noisy: bool,
    state: InfusionState,
    /// When the current bag completed, and how long until the next is hung.
    completed_at: i64,
    restart_after_ms: i64,
    period_ms: i64,
    /// Scenario faults (clamp opened, line occluded) on this infusion, with their course; empty by default.
    plans: Vec<InfusionPlan>,
}

impl InfusionSim {
    /// `flow_sd` is the standard deviation of the relative flow deviation (0 for a noiseless drip).
    fn new(
        mut rng: Rng,
        device_id: String,
        order_prefix: String,
        period_ms: i64,
        flow_sd: f64,
    ) -> Self {
        let drop_factor = DROP_FACTORS[rng.below(DROP_FACTORS.len() as u64) as usize];
        let flow = Ar1::new(&mut rng, period_ms as f64, 600_000.0, flow_sd);
        let mut s = Self {
            rng,
            device_id,
            order_prefix,
            order_seq: 0,
            medication: "",
            bag_ml: 0.0,
            prescribed_ml_h: 0.0,
            drop_factor,
            infused_ml: 0.0,
            flow,
            noisy: flow_sd > 0.0,
            state: InfusionState::Running,
            completed_at: 0,
            restart_after_ms: 0,
            period_ms,
            plans: Vec::new(),
        };
        s.new_order();
        // The simulation starts with bags part-way through, so completions spread over time.
        s.infused_ml = (s.rng.uniform(0.0, 0.9) * s.bag_ml).round();
        s
    }

    /// Hangs a new bag under a new order.
    fn new_order(&mut self) {
        self.order_seq += 1;
        let (medication, bag_ml) = FLUIDS[self.rng.below(FLUIDS.len() as u64) as usize];
        let hours = if bag_ml >= 1000.0 {
            &HOURS_1000
        } else {
            &HOURS_500
        };
        let h = hours[self.rng.below(hours.len() as u64) as usize];
        self.medication = medication;
        self.bag_ml = bag_ml;
        self.prescribed_ml_h = (bag_ml / h).round().clamp(42.0, 125.0);
        self.infused_ml = 0.0;
        self.state = InfusionState::Running;
    }

    /// Starts and ends the scenario faults at report time `t`: a fault begins at the first report at or after its
    /// start at which a bag is on (not completed) and ends at the first report `duration` after it began. Returns
    /// whether the line is occluded and the flow factor of an opened clamp.
    fn update_plans(&mut self, t: i64) -> (bool, Option<f64>) {
        if self.plans.is_empty() {
            return (false, None);
        }
        let bag_on = self.state != InfusionState::Completed;
        let order_id = format!("{}{}", self.order_prefix, self.order_seq);
        let (mut occluded, mut speed_up) = (false, None::<f64>);
        for p in &mut self.plans {
            if p.began.is_none() && p.ended.is_none() && bag_on && t >= p.start {
                p.began = Some(t);
                p.order_id.clone_from(&order_id);
                p.prescribed_ml_h = self.prescribed_ml_h;
            }
            let Some(began) = p.began else { continue };
            if p.ended.is_some() {
                continue;
            }
            if t >= began.saturating_add(p.duration) {
                p.ended = Some(t);
            } else if p.kind == ScenarioKind::LineOccluded {
                occluded = true;
            } else {
                speed_up = Some(speed_up.map_or(p.factor, |f| f.max(p.factor)));
            }
        }
        (occluded, speed_up)
    }

    /// One report at time `t`, integrating the flow over the period since the previous one.
    fn step(&mut self, t: i64) -> InfusionReading {
        let deviation = self.flow.step(&mut self.rng).clamp(-0.15, 0.15);
        if self.state == InfusionState::Completed && t - self.completed_at >= self.restart_after_ms
        {
            self.new_order();
        }
        // Scenario faults: an occluded line stops the flow (drip monitors report Stopped), an opened clamp speeds
        // it up with the order unchanged.
        let (occluded, speed_up) = self.update_plans(t);
        if self.state != InfusionState::Completed {
            self.state = if occluded {
                InfusionState::Stopped
            } else {
                InfusionState::Running
            };
        }
        let (mut dpm, mut measured) = (0.0, 0.0);
        if self.state == InfusionState::Running {
            let mut flow = self.prescribed_ml_h * (1.0 + deviation);
            if let Some(factor) = speed_up {
                flow *= factor;
            }
            let exact = drops_per_min(flow, self.drop_factor);
            // A drip monitor shows drops per minute to 0.1 and derives the rate from them.
            dpm = if self.noisy {
                round_to(exact, 1)
            } else {
                exact
            };
            measured = rate_from_drops(dpm, self.drop_factor);
            if self.noisy {
                measured = round_to(measured, 1);
            }
            self.infused_ml += measured * self.period_ms as f64 / HOUR_MS;
            if self.infused_ml >= self.bag_ml {
                self.infused_ml = self.bag_ml;
                self.state = InfusionState::Completed;
                self.completed_at = t;
                self.restart_after_ms = (self.rng.uniform(5.0, 30.0) * MINUTE_MS) as i64;
                dpm = 0.0;
                measured = 0.0;
                // The next bag is set up correctly: a fault under way ends with the bag.
                for p in &mut self.plans {
                    if p.began.is_some() && p.ended.is_none() {
                        p.ended = Some(t);
                    }
                }
            }
        }
        let infused = round_to(self.infused_ml, 1);
        InfusionReading {
            order_id: format!("{}{}", self.order_prefix, self.order_seq),
            medication: self.medication,
            prescribed_ml_h: self.prescribed_ml_h,
            measured_ml_h: measured,
            drop_factor: self.drop_factor,
            drops_per_min: dpm,
            infused_ml: infused,
            remaining_ml: round_to((self.bag_ml - infused).max(0.0), 1),
            state: self.state,
        }
    }
}

/// An AR(1) process (a sampled Ornstein-Uhlenbeck process) with mean 0, stationary standard deviation `sd` and
/// time constant `tau_ms`, sampled every `dt_ms`.
#[derive(Debug, Clone)]
struct Ar1 {
    x: f64,
    phi: f64,
    innovation_sd: f64,
}

impl Ar1 {
    fn new(rng: &mut Rng, dt_ms: f64, tau_ms: f64, sd: f64) -> Self {
        let phi = if dt_ms > 0.0 && tau_ms > 0.0 {
            (-dt_ms / tau_ms).exp()
        } else {
            0.0
        };
        Self {
            x: sd * rng.normal(),
            phi,
            innovation_sd: sd * (1.0 - phi * phi).sqrt(),
        }
    }

    fn step(&mut self, rng: &mut Rng) -> f64 {
        self.x = self.phi * self.x + self.innovation_sd * rng.normal();
        self.x
    }
}

/// A fast and a slow AR(1) process added: beat-to-beat wander plus drift over the hours.
#[derive(Debug, Clone)]
struct Drift {
    fast: Ar1,
    slow: Ar1,
}

impl Drift {
    /// `fast` and `slow` are (time constant in ms, standard deviation).
    fn new(rng: &mut Rng, dt_ms: f64, fast: (f64, f64), slow: (f64, f64)) -> Self {
        Self {
            fast: Ar1::new(rng, dt_ms, fast.0, fast.1),
            slow: Ar1::new(rng, dt_ms, slow.0, slow.1),
        }
    }

    fn step(&mut self, rng: &mut Rng) -> f64 {
        self.fast.step(rng) + self.slow.step(rng)
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast, and stable across crate versions.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit tag for a stream name (FNV-1a), so streams are named rather than numbered.
fn tag(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

impl Rng {
    /// The stream for (`seed`, `bed`, `tag`); distinct inputs give independent-looking streams.
    fn stream(seed: u64, bed: u32, tag: u64) -> Self {
        let mut sm = seed;
        let mut h = splitmix64(&mut sm);
        sm = h ^ u64::from(bed);
        h = splitmix64(&mut sm);
        sm = h ^ tag;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        if s == [0; 4] {
            Self { s: [1, 0, 0, 0] }
        } else {
            Self { s }
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in 0..n (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller, one of the pair).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn clamp_round(x: f64, (lo, hi): (f64, f64), decimals: i32) -> f64 {
    round_to(x.clamp(lo, hi), decimals)
}

/// The idempotency key as is, or a hash of it if it would be too long for the wire.
fn key(k: String) -> String {
    if k.len() <= wardwatch_proto::validate::MAX_IDEMPOTENCY_KEY {
        k
    } else {
        format!("sim-{}", hex::encode(Sha256::digest(k.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use wardwatch_proto::metrics;
    use wardwatch_proto::v1::EdgeEvent;

    /// 2026-01-01T00:00:00Z.
    const START: i64 = 1_767_225_600_000;
    const MIN: i64 = 60_000;

    fn cfg(seed: u64) -> WardSimConfig {
        WardSimConfig {
            seed,
            start_unix_ms: START,
            ..WardSimConfig::default()
        }
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

    fn measured_at(e: &SimEvent) -> i64 {
        match &e.payload {
            Payload::Vital(v) => v.measured_at_unix_ms,
            Payload::Infusion(i) => i.measured_at_unix_ms,
            Payload::Device(d) => d.reported_at_unix_ms,
            other => panic!("unexpected payload {other:?}"),
        }
    }

    /// Checks the plausibility ranges of one vital and that it is flagged simulated.
    fn check_vital_ranges(v: &VitalSign) {
        assert_eq!(v.quality, vec![QualityFlag::Simulated as i32]);
        let in_metric_range = |mdc: u32, x: f64| {
            let m = metrics::by_mdc(mdc).unwrap();
            assert!(
                x >= m.min && x <= m.max,
                "{} {x} outside {}..{}",
                m.mdc_ref,
                m.min,
                m.max
            );
        };
        let (lo, hi, decimals) = match v.metric_mdc {
            MDC_ECG_HEART_RATE | MDC_PULS_OXIM_PULS_RATE => (HR_RANGE.0, HR_RANGE.1, 0),
            MDC_RESP_RATE => (RR_RANGE.0, RR_RANGE.1, 0),
            MDC_PULS_OXIM_SAT_O2 => (SPO2_RANGE.0, SPO2_RANGE.1, 0),
            MDC_TEMP_BODY => (TEMP_RANGE.0, TEMP_RANGE.1, 1),
            MDC_PRESS_BLD_NONINV => {
                let c = |mdc| {
                    v.components
                        .iter()
                        .find(|c| c.metric_mdc == mdc)
                        .unwrap()
                        .value
                };
                let (s, d, m) = (
                    c(MDC_PRESS_BLD_NONINV_SYS),
                    c(MDC_PRESS_BLD_NONINV_DIA),
                    c(MDC_PRESS_BLD_NONINV_MEAN),
                );
                assert!((SBP_RANGE.0..=SBP_RANGE.1).contains(&s), "sys {s}");
                assert!(
                    (DBP_RANGE.0..=DBP_RANGE.1).contains(&d) && d < s,
                    "dia {d} sys {s}"
                );
                assert!(d < m && m < s && v.value == m, "mean {m}");
                for x in [s, d, m] {
                    assert_eq!(x, x.round());
                }
                for comp in &v.components {
                    in_metric_range(comp.metric_mdc, comp.value);
                }
                return;
            }
            WARDWATCH_ACVPU => {
                assert!(metrics::ACVPU.contains(&v.enumerated.as_str()));
                return;
            }
            other => panic!("unexpected metric {other}"),
        };
        assert!(
            v.value >= lo && v.value <= hi,
            "{} value {} outside {lo}..{hi}",
            v.metric_mdc,
            v.value
        );
        assert_eq!(v.value, round_to(v.value, decimals));
        in_metric_range(v.metric_mdc, v.value);
    }

    #[test]
    fn same_seed_same_events_and_other_seed_differs() {
        let mut a = WardSimulator::new(cfg(7));
        let mut b = WardSimulator::new(cfg(7));
        let mut c = WardSimulator::new(cfg(8));
        assert_eq!(a.devices(), b.devices());
        let (ea, eb, ec) = (
            a.advance_to(START + 10 * MIN),
            b.advance_to(START + 10 * MIN),
            c.advance_to(START + 10 * MIN),
        );
        assert!(!ea.is_empty());
        assert_eq!(ea, eb);
        assert_ne!(ea, ec);
        assert_ne!(a.devices(), c.devices());
    }

    #[test]
    fn splitting_the_time_range_does_not_change_the_events() {
        let until = START + 20 * MIN;
        let whole = WardSimulator::new(cfg(3)).advance_to(until);
        let mut sim = WardSimulator::new(cfg(3));
        let mut pieces = Vec::new();
        let mut t = START;
        let mut step = 1;
        while t < until {
            // Irregular steps, including zero-length and backwards ones.
            t = (t + step).min(until);
            pieces.extend(sim.advance_to(t));
            assert!(sim.advance_to(t - 5).is_empty());
            assert_eq!(sim.now_unix_ms(), t);
            step = (step * 7 + 333) % 47_000;
        }
        assert_eq!(whole.len(), pieces.len());
        assert!(whole == pieces);
        assert!(
            whole
                .windows(2)
                .all(|w| measured_at(&w[0]) <= measured_at(&w[1])),
            "events in time order"
        );
        assert!(
            whole
                .iter()
                .all(|e| measured_at(e) > START && measured_at(e) <= until)
        );
    }

    #[test]
    fn every_event_validates_and_keys_are_unique_over_an_hour() {
        let mut sim = WardSimulator::new(cfg(11));
        // Collected and sorted at the end: much cheaper than a hash set in a debug build.
        let mut keys = Vec::new();
        let devices = sim.devices();
        assert_eq!(devices.len(), 40 + 24);
        for e in &devices {
            valid(e);
            keys.push(e.idempotency_key.clone());
            let Payload::Device(d) = &e.payload else {
                panic!("not a device")
            };
            assert_eq!(d.manufacturer, "Wardwatch Simulator");
            assert_eq!(d.state, OperationalState::On as i32);
            assert_eq!(d.reported_at_unix_ms, START);
            let loc = d.location.as_ref().unwrap();
            assert_eq!(loc.ward, "7A");
            let prefix = if d.kind == DeviceKind::BedsideMonitor as i32 {
                "mon"
            } else {
                "drip"
            };
            assert_eq!(d.device_id, format!("{prefix}-7A-{}", loc.bed));
        }
        let mut mrn_by_bed: HashMap<String, String> = HashMap::new();
        let mut n = 0;
        for minute in 1..=60 {
            for e in sim.advance_to(START + minute * MIN) {
                let (mrn, loc, encounter) = match &e.payload {
                    Payload::Vital(v) => {
                        check_vital_ranges(v);
                        (&v.patient_id, v.location.as_ref().unwrap(), &v.encounter)
                    }
                    Payload::Infusion(i) => {
                        (&i.patient_id, i.location.as_ref().unwrap(), &i.encounter)
                    }
                    other => panic!("unexpected {other:?}"),
                };
                // Every simulated event names the patient's visit, so the demo's Observations have encounters.
                assert_eq!(encounter.as_ref(), Some(&sim_encounter(mrn)));
                assert!(
                    mrn.len() == 9
                        && mrn.starts_with("SIM")
                        && mrn[3..].bytes().all(|b| b.is_ascii_digit())
                );
                match mrn_by_bed.get(&loc.bed) {
                    Some(m) => assert_eq!(m, mrn, "one patient per bed"),
                    None => {
                        mrn_by_bed.insert(loc.bed.clone(), mrn.clone());
                    }
                }
                // Validation is the slow part in debug builds: every event of the first quarter hour (which has
                // every kind of report), after that all but the per-second monitor metrics.
                let continuous = matches!(&e.payload, Payload::Vital(v) if v.metric_mdc != MDC_TEMP_BODY
                    && v.metric_mdc != MDC_PRESS_BLD_NONINV && v.metric_mdc != WARDWATCH_ACVPU);
                if minute > 15 && continuous {
                    keys.push(e.idempotency_key);
                    n += 1;
                    continue;
                }
                let SimEvent {
                    idempotency_key,
                    payload,
                } = e;
                let env = EdgeEvent {
                    sequence: 1,
                    idempotency_key,
                    accepted_at_unix_ms: 1,
                    payload: Some(payload),
                };
                if let Err(r) = wardwatch_proto::validate::event(&env) {
                    panic!("invalid simulated event {env:?}: {r}");
                }
                keys.push(env.idempotency_key);
                n += 1;
            }
        }
        let total = keys.len();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            panic!("duplicate key {}", w[0]);
        }
        assert_eq!(total, n + devices.len());
        assert_eq!(n, 40 * 4 * 3600 + 40 * 60 + 40 * 12 + 40 * 4 + 24 * 360);
        let labels: HashSet<_> = mrn_by_bed.keys().cloned().collect();
        assert_eq!(labels, (1..=40).map(|b| b.to_string()).collect());
        let distinct: HashSet<_> = mrn_by_bed.values().collect();
        assert_eq!(distinct.len(), 40, "MRNs unique");
    }

    #[test]
    fn event_counts_match_the_periods() {
        let mut sim = WardSimulator::new(cfg(5));
        let infusion_beds = 24;
        // Per simulated minute: 40 beds × 4 continuous metrics × 60, 40 temperatures, 24 drips × 6.
        let mut totals: HashMap<u32, usize> = HashMap::new();
        for minute in 1..=15 {
            let events = sim.advance_to(START + minute * MIN);
            let mut per_metric: HashMap<u32, usize> = HashMap::new();
            for e in &events {
                let m = match &e.payload {
                    Payload::Vital(v) => v.metric_mdc,
                    Payload::Infusion(_) => 0,
                    other => panic!("unexpected {other:?}"),
                };
                *per_metric.entry(m).or_default() += 1;
                *totals.entry(m).or_default() += 1;
            }
            for mdc in [
                MDC_ECG_HEART_RATE,
                MDC_PULS_OXIM_PULS_RATE,
                MDC_RESP_RATE,
                MDC_PULS_OXIM_SAT_O2,
            ] {
                assert_eq!(
                    per_metric.get(&mdc),
                    Some(&(40 * 60)),
                    "metric {mdc} in minute {minute}"
                );
            }
            assert_eq!(per_metric.get(&MDC_TEMP_BODY), Some(&40));
            assert_eq!(per_metric.get(&0), Some(&(infusion_beds * 6)));
        }
        // Over 15 minutes: blood pressure every 5 min, consciousness every 15 min, per bed.
        assert_eq!(totals.get(&MDC_PRESS_BLD_NONINV), Some(&(40 * 3)));
        assert_eq!(totals.get(&WARDWATCH_ACVPU), Some(&40));
        assert_eq!(
            totals.values().sum::<usize>(),
            15 * (40 * 4 * 60 + 40 + infusion_beds * 6) + 40 * 3 + 40
        );

        // Configured periods are honoured, and a period ≤ 0 switches the channel off.
        let mut sim = WardSimulator::new(WardSimConfig {
            beds: 3,
            vitals_period_ms: 5_000,
            temp_period_ms: 0,
            bp_period_ms: -1,
            consciousness_period_ms: 60_000,
            infusion_share: 0.0,
            ..cfg(5)
        });
        assert_eq!(sim.devices().len(), 3);
        assert_eq!(sim.advance_to(START + 10 * MIN).len(), 3 * 4 * 120 + 3 * 10);
    }

    #[test]
    fn infusion_share_rounds_to_whole_beds() {
        for (beds, share, want) in [
            (40, 0.6, 24),
            (10, 0.0, 0),
            (10, 1.0, 10),
            (7, 0.5, 4),
            (5, f64::NAN, 0),
            (5, 3.0, 5),
        ] {
            let sim = WardSimulator::new(WardSimConfig {
                beds,
                infusion_share: share,
                ..cfg(1)
            });
            let drips = sim
                .devices()
                .iter()
                .filter(|e| e.idempotency_key.starts_with("drip-"))
                .count();
            assert_eq!(drips, want, "{beds} beds, share {share}");
        }
        assert!(
            WardSimulator::new(WardSimConfig { beds: 0, ..cfg(1) })
                .advance_to(START + MIN)
                .is_empty()
        );
    }

    #[test]
    fn drip_formulas_are_exact_without_noise() {
        for df in DROP_FACTORS {
            for rate in [42.0, 63.0, 83.0, 100.0, 125.0] {
                assert_eq!(drops_per_min(rate, df), rate * f64::from(df) / 60.0);
                assert!((rate_from_drops(drops_per_min(rate, df), df) - rate).abs() < 1e-9);
            }
        }
        assert_eq!(drops_per_min(60.0, 60), 60.0, "micro-drip: gtt/min = mL/h");
        assert_eq!(drops_per_min(120.0, 20), 40.0);

        let mut inf = InfusionSim::new(
            Rng::stream(9, 0, tag("infusion")),
            "drip-7A-1".into(),
            "ORD-7A-1-".into(),
            10_000,
            0.0,
        );
        let start_infused = inf.infused_ml;
        let mut prev = start_infused;
        for k in 1..=100 {
            let r = inf.step(START + k * 10_000);
            assert_eq!(r.state, InfusionState::Running);
            assert_eq!(
                r.drops_per_min,
                r.prescribed_ml_h * f64::from(r.drop_factor) / 60.0
            );
            assert!((r.measured_ml_h - r.prescribed_ml_h).abs() < 1e-9);
            assert!((r.infused_ml - prev - r.prescribed_ml_h * 10.0 / 3600.0).abs() <= 0.05 + 1e-9);
            assert!((r.infused_ml + r.remaining_ml - inf.bag_ml).abs() < 1e-6);
            prev = inf.infused_ml;
        }
        let expected = start_infused + inf.prescribed_ml_h * 1000.0 / 3600.0;
        assert!(
            (inf.infused_ml - expected).abs() < 1e-6,
            "{} vs {expected}",
            inf.infused_ml
        );
    }

    /// A day of a 40-bed ward (vitals sampled once a minute to keep the test fast): every value in range, infusion
    /// arithmetic consistent, bags complete and are replaced under new orders.
    #[test]
    fn a_day_stays_in_range_and_infusions_add_up() {
        let mut sim = WardSimulator::new(WardSimConfig {
            vitals_period_ms: 60_000,
            ..cfg(42)
        });
        struct Last {
            order: String,
            infused: f64,
            state: i32,
            completed_at: i64,
        }
        let mut last: HashMap<String, Last> = HashMap::new();
        let (mut completions, mut new_orders, mut vitals) = (0, 0, 0);
        for hour in 1..=24 {
            for e in sim.advance_to(START + hour * 60 * MIN) {
                match &e.payload {
                    Payload::Vital(v) => {
                        check_vital_ranges(v);
                        vitals += 1;
                    }
                    Payload::Infusion(i) => {
                        assert!(matches!(i.drop_factor_gtt_per_ml, 10 | 15 | 20 | 60));
                        assert!((42.0..=125.0).contains(&i.prescribed_rate_ml_h));
                        let bag = i.volume_infused_ml + i.volume_remaining_ml;
                        assert!(
                            (bag - 500.0).abs() < 1e-6 || (bag - 1000.0).abs() < 1e-6,
                            "bag {bag}"
                        );
                        assert!(
                            i.medication.contains(&format!("{} mL", bag.round())),
                            "{} vs {bag}",
                            i.medication
                        );
                        let expect_rate =
                            i.drops_per_min * 60.0 / f64::from(i.drop_factor_gtt_per_ml);
                        assert!((i.measured_rate_ml_h - expect_rate).abs() <= 0.05 + 1e-9);
                        let ratio = i.measured_rate_ml_h / i.prescribed_rate_ml_h;
                        if i.state == InfusionState::Running as i32 {
                            assert!(
                                (0.84..=1.16).contains(&ratio),
                                "measured {} prescribed {}",
                                i.measured_rate_ml_h,
                                i.prescribed_rate_ml_h
                            );
                        } else {
                            assert_eq!(i.state, InfusionState::Completed as i32);
                            assert_eq!(
                                (i.volume_remaining_ml, i.measured_rate_ml_h, i.drops_per_min),
                                (0.0, 0.0, 0.0)
                            );
                        }
                        let t = i.measured_at_unix_ms;
                        if let Some(l) = last.get(&i.device_id) {
                            if l.order == i.order_id {
                                // Volume grows by the measured rate over the 10 s period (within rounding).
                                let step = i.volume_infused_ml - l.infused;
                                assert!(step >= 0.0);
                                if i.state == InfusionState::Running as i32 {
                                    let want = i.measured_rate_ml_h * 10.0 / 3600.0;
                                    assert!(
                                        (step - want).abs() <= 0.1 + 1e-9,
                                        "step {step} vs {want}"
                                    );
                                }
                                if l.state == InfusionState::Running as i32
                                    && i.state == InfusionState::Completed as i32
                                {
                                    completions += 1;
                                }
                            } else {
                                assert_eq!(
                                    l.state,
                                    InfusionState::Completed as i32,
                                    "new order only after completion"
                                );
                                let (prefix, n) = l.order.rsplit_once('-').unwrap();
                                let (new_prefix, new_n) = i.order_id.rsplit_once('-').unwrap();
                                assert_eq!(prefix, new_prefix);
                                assert_eq!(
                                    new_n.parse::<u32>().unwrap(),
                                    n.parse::<u32>().unwrap() + 1
                                );
                                let gap = t - l.completed_at;
                                assert!((5 * MIN..=30 * MIN + 10_000).contains(&gap), "gap {gap}");
                                new_orders += 1;
                            }
                        } else {
                            assert!(i.order_id.ends_with("-1"));
                            assert_eq!(
                                i.order_id,
                                format!("ORD-7A-{}-1", i.location.as_ref().unwrap().bed)
                            );
                        }
                        let prev_completed =
                            last.get(&i.device_id).map(|l| l.completed_at).unwrap_or(0);
                        let completed_at = match last.get(&i.device_id) {
                            Some(l)
                                if l.state == InfusionState::Completed as i32
                                    && l.order == i.order_id =>
                            {
                                prev_completed
                            }
                            _ if i.state == InfusionState::Completed as i32 => t,
                            _ => 0,
                        };
                        last.insert(
                            i.device_id.clone(),
                            Last {
                                order: i.order_id.clone(),
                                infused: i.volume_infused_ml,
                                state: i.state,
                                completed_at,
                            },
                        );
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(vitals, 40 * 24 * (4 * 60 + 60 + 12 + 4));
        assert!(
            completions >= 20,
            "only {completions} bags completed in 24 h"
        );
        assert!(new_orders >= 15, "only {new_orders} new bags in 24 h");
    }

    #[test]
    fn baselines_are_plausible() {
        let sim = WardSimulator::new(cfg(99));
        let mut alert = 0;
        for bed in &sim.beds {
            let b = bed.patient.baseline;
            assert!((60.0..100.0).contains(&b.hr));
            assert!((12.0..20.0).contains(&b.rr));
            assert!((94.0..99.0).contains(&b.spo2));
            assert!((36.2..37.5).contains(&b.temp_c));
            assert!((100.0..=150.0).contains(&b.sbp));
            assert!((0.6..0.7).contains(&b.dbp_ratio));
            alert += usize::from(b.acvpu == "A");
        }
        assert!(alert >= 34, "mostly alert, got {alert}/40");
    }

    #[test]
    fn values_change_smoothly() {
        let mut sim = WardSimulator::new(WardSimConfig { beds: 4, ..cfg(2) });
        let mut last: HashMap<(u32, String), f64> = HashMap::new();
        let mut max_jump: HashMap<u32, f64> = HashMap::new();
        for e in sim.advance_to(START + 30 * MIN) {
            if let Payload::Vital(v) = &e.payload
                && v.components.is_empty()
                && v.enumerated.is_empty()
                && v.metric_mdc != MDC_TEMP_BODY
            {
                let k = (v.metric_mdc, v.location.as_ref().unwrap().bed.clone());
                if let Some(p) = last.insert(k, v.value) {
                    let m = max_jump.entry(v.metric_mdc).or_default();
                    *m = m.max((v.value - p).abs());
                }
            }
        }
        for (mdc, limit) in [
            (MDC_ECG_HEART_RATE, 5.0),
            (MDC_PULS_OXIM_PULS_RATE, 6.0),
            (MDC_RESP_RATE, 3.0),
            (MDC_PULS_OXIM_SAT_O2, 3.0),
        ] {
            let jump = max_jump[&mdc];
            assert!(jump <= limit, "metric {mdc} jumped {jump} in one second");
        }
    }
}
