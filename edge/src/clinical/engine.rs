//! The clinical engine: consumes accepted events (vital signs, infusion reports, device descriptions), keeps
//! per-patient NEWS2 and threshold state, the infusion monitor and the alarm manager, and produces new events
//! (NEWS2 risk scores, alarm state changes) plus the ward snapshot the nurse station shows.
//!
//! Pure and synchronous: every call takes the time it should act at, so the same engine runs in real time on
//! the edge and in simulated time in evaluations. Each call does microseconds of work (no I/O), so async
//! callers may hold it briefly.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use wardwatch_proto::metrics;
use wardwatch_proto::v1::{
    AlarmKind, AlarmPriority, BedLocation, DeviceInfo, InfusionStatus, VitalSign,
    edge_event::Payload,
};

use super::alarms::{
    AlarmActionError, AlarmManager, AlarmPolicy, AlarmView, Condition, ConditionKey, Phase, key,
};
use super::infusion::{
    ConditionChange, InfusionCondition, InfusionMonitor, InfusionSafetyConfig, InfusionView,
};
use super::models::{
    ArtifactRequest, ArtifactResult, DeteriorationRequest, DeteriorationResult, DeteriorationRow,
    MlSettings, MlWork, PatientMl, artifact_signal, deterioration_message,
};
use super::news2::{ClinicalResponse, News2Config, PatientNews2, SpO2Scale, Trend};
use super::thresholds::{PatientThresholds, ThresholdConfig};

/// Engine configuration.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Alarm delays and timeouts.
    pub alarms: AlarmPolicy,
    /// Vital-sign limits.
    pub thresholds: ThresholdConfig,
    /// Infusion safety rules.
    #[serde(skip)]
    pub infusion: InfusionSafetyConfig,
    /// NEWS2 freshness and trend rules.
    #[serde(skip)]
    pub news2: News2Config,
    /// MRNs of patients on NEWS2 SpO2 scale 2 (hypercapnic respiratory failure), as decided clinically.
    pub spo2_scale_2_patients: Vec<String>,
    /// The edge models (deterioration risk, artifact hold-back), `[engine.models]`; absent = none.
    pub models: Option<crate::config::ModelsConfig>,
}

/// The latest value of one metric at a bed.
#[derive(Debug, Clone, Serialize)]
pub struct LatestValue {
    /// Value (systolic/diastolic as "120/80" for blood pressure, the letter for ACVPU).
    pub display: String,
    /// Unit.
    pub unit: String,
    /// When measured.
    pub at_unix_ms: i64,
    /// Quality flags as names.
    pub quality: Vec<String>,
}

/// A NEWS2 summary for display.
#[derive(Debug, Clone, Serialize)]
pub struct News2View {
    /// Total.
    pub total: u8,
    /// Response level: routine, low, low-medium, medium, high.
    pub response: &'static str,
    /// Missing or stale parameters.
    pub missing: Vec<String>,
    /// "rising", "falling", "stable" or "unknown".
    pub trend: &'static str,
    /// SpO2 scale in use (1 or 2).
    pub spo2_scale: u8,
    /// When evaluated.
    pub at_unix_ms: i64,
}

/// One bed as the nurse station shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BedView {
    /// Ward.
    pub ward: String,
    /// Bed.
    pub bed: String,
    /// Patient MRN.
    pub patient_id: String,
    /// Latest value per metric reference id.
    pub vitals: BTreeMap<String, LatestValue>,
    /// NEWS2, once any parameter was seen.
    pub news2: Option<News2View>,
    /// Infusions at this bed.
    pub infusions: Vec<InfusionDisplay>,
    /// Announced alarms for this bed, most urgent first.
    pub alarms: Vec<AlarmDisplay>,
    /// The deterioration model's latest prediction, if the model runs.
    pub deterioration: Option<PredictionView>,
}

/// An infusion for display.
#[derive(Debug, Clone, Serialize)]
pub struct InfusionDisplay {
    /// Order id.
    pub order_id: String,
    /// Medication.
    pub medication: String,
    /// Prescribed mL/h.
    pub prescribed_rate_ml_h: f64,
    /// Measured mL/h.
    pub measured_rate_ml_h: f64,
    /// Remaining mL.
    pub volume_remaining_ml: f64,
    /// When the bag empties.
    pub eta_unix_ms: Option<i64>,
    /// State name.
    pub state: String,
}

/// An alarm for display.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmDisplay {
    /// Alarm id (for acknowledge / silence).
    pub alarm_id: String,
    /// Kind name.
    pub kind: String,
    /// high / medium / low.
    pub priority: &'static str,
    /// raised / silenced / acknowledged.
    pub phase: &'static str,
    /// Whether escalated.
    pub escalated: bool,
    /// Whether the cause still holds.
    pub condition_active: bool,
    /// Message.
    pub message: String,
    /// When announced.
    pub raised_at_unix_ms: i64,
    /// Who acknowledged.
    pub acknowledged_by: Option<String>,
}

/// A model's latest prediction for a bed, for display.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionView {
    /// Model name and version.
    pub model: String,
    /// Probability of the outcome.
    pub probability: f32,
    /// Whether it is at or above the alarm threshold.
    pub above_threshold: bool,
    /// When predicted.
    pub at_unix_ms: i64,
    /// Always shown with a prediction.
    pub note: &'static str,
}

/// Whether one edge model is running, for display (the nurse station and its API).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStatusView {
    /// "deterioration" or "artifact".
    pub model: String,
    /// Whether it is loaded, verified and in use.
    pub running: bool,
    /// Name, version and sha256 prefix of the model in use, or why none is.
    pub detail: String,
}

/// A raised deterioration-risk alarm's condition ends only when the probability falls below this fraction of the
/// model's threshold (hysteresis).
pub const DETERIORATION_CLEAR_FRACTION: f64 = 0.8;

/// Said wherever a prediction is shown.
pub const SIMULATED_MODEL_NOTE: &str =
    "model trained on simulated data only; not clinically validated";

/// The whole ward for the nurse station.
#[derive(Debug, Clone, Serialize)]
pub struct WardSnapshot {
    /// When taken.
    pub at_unix_ms: i64,
    /// The edge models and whether they run (NEWS2 and threshold alarms run either way).
    pub models: Vec<ModelStatusView>,
    /// Beds in ward/bed order.
    pub beds: Vec<BedView>,
    /// Alarms not tied to a bed (technical).
    pub other_alarms: Vec<AlarmDisplay>,
}

#[derive(Debug)]
struct PatientState {
    location: BedLocation,
    news2: PatientNews2,
    thresholds: PatientThresholds,
    latest: BTreeMap<String, LatestValue>,
    /// Feature buffer for the edge models (only while a model runs).
    ml: Option<Box<PatientMl>>,
    /// The deterioration model's latest prediction.
    prediction: Option<PredictionView>,
    /// Consecutive deterioration rounds at or above the model's threshold (held, not counted up, while the
    /// probability stays above the clear level); the risk alarm's condition is active from
    /// `deterioration_alarm_rounds` on. Keeps one minute's crossing, and a probability hovering at the threshold,
    /// from raising alarm after alarm.
    risk_rounds: u32,
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct EngineStats {
    /// Vital signs processed.
    pub vitals: u64,
    /// Infusion reports processed.
    pub infusion_reports: u64,
    /// NEWS2 updates produced.
    pub news2_updates: u64,
    /// Alarm events produced.
    pub alarm_events: u64,
    /// Deterioration predictions made into risk events.
    pub model_predictions: u64,
    /// Deterioration rounds that failed to score (the model was unavailable or refused the batch).
    pub model_failures: u64,
    /// Artifact questions asked.
    pub artifact_queries: u64,
    /// Artifact verdicts that held a pending threshold condition back.
    pub artifact_holds: u64,
    /// Pending NEWS2 response conditions held back with an artifact verdict on one of their inputs.
    pub artifact_news2_holds: u64,
    /// Deterioration rounds whose risk alarm was not raised because the patient's NEWS2 response alarm (medium or
    /// high) was already announced for the same deterioration (de-duplication).
    pub risk_alarms_covered: u64,
}

/// The clinical engine of one edge.
#[derive(Debug)]
pub struct ClinicalEngine {
    cfg: EngineConfig,
    patients: HashMap<String, PatientState>,
    infusion: InfusionMonitor,
    infusion_orders: HashMap<String, (String, BedLocation, String)>,
    alarms: AlarmManager,
    stats: EngineStats,
    /// The edge models in use, if any.
    ml: Option<MlSettings>,
    /// Status of the edge models for display.
    model_status: Vec<ModelStatusView>,
    /// When the next deterioration round is due.
    next_score_at: i64,
    /// Work waiting to be scored.
    ml_work: MlWork,
    /// Announced NEWS2 response conditions ("news2", "news2-rising" per patient) whose score is below their level,
    /// and since when: such an alarm ends only once it stayed below for `news2.response_clear_hold_ms` (checked on
    /// every update and every tick), so a score crossing a chart boundary back and forth is one alarm.
    news2_below_since: HashMap<ConditionKey, i64>,
}

fn priority_name(p: AlarmPriority) -> &'static str {
    match p {
        AlarmPriority::High => "high",
        AlarmPriority::Medium => "medium",
        AlarmPriority::Low => "low",
        _ => "info",
    }
}

fn response_name(r: ClinicalResponse) -> &'static str {
    match r {
        ClinicalResponse::Routine => "routine",
        ClinicalResponse::Low => "low",
        ClinicalResponse::LowMedium => "low-medium",
        ClinicalResponse::Medium => "medium",
        ClinicalResponse::High => "high",
    }
}

fn quality_names(q: &[i32]) -> Vec<String> {
    q.iter()
        .filter_map(|f| wardwatch_proto::v1::QualityFlag::try_from(*f).ok())
        .map(|f| {
            f.as_str_name()
                .trim_start_matches("QUALITY_FLAG_")
                .to_ascii_lowercase()
        })
        .collect()
}

fn display_alarm(a: &AlarmView) -> AlarmDisplay {
    AlarmDisplay {
        alarm_id: a.alarm_id.clone(),
        kind: AlarmKind::try_from(a.key.kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("ALARM_KIND_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default(),
        priority: priority_name(a.priority),
        phase: match a.phase {
            Phase::Pending { .. } => "pending",
            Phase::Raised => "raised",
            Phase::Silenced { .. } => "silenced",
            Phase::Acknowledged => "acknowledged",
        },
        escalated: a.escalated,
        condition_active: a.condition_active,
        message: a.message.clone(),
        raised_at_unix_ms: a.raised_at_unix_ms,
        acknowledged_by: a.acknowledged_by.clone(),
    }
}

impl ClinicalEngine {
    /// An engine; alarm ids start with `edge_id`.
    pub fn new(cfg: EngineConfig, edge_id: &str) -> Self {
        Self {
            infusion: InfusionMonitor::new(cfg.infusion.clone()),
            alarms: AlarmManager::new(cfg.alarms.clone(), edge_id),
            cfg,
            patients: HashMap::new(),
            infusion_orders: HashMap::new(),
            stats: EngineStats::default(),
            ml: None,
            model_status: Vec::new(),
            next_score_at: i64::MIN,
            ml_work: MlWork::default(),
            news2_below_since: HashMap::new(),
        }
    }

    /// Sets the edge models the engine may use (`None`: none; NEWS2 and the threshold alarms run either way) and
    /// the status the nurse station shows. Patients seen from now on get a feature buffer while a model runs.
    pub fn set_models(&mut self, ml: Option<MlSettings>, status: Vec<ModelStatusView>) {
        let on = ml
            .as_ref()
            .is_some_and(|m| m.deterioration.is_some() || m.artifact.is_some());
        let cfg = &self.cfg;
        for (id, p) in &mut self.patients {
            if on && p.ml.is_none() {
                let scale_2 = cfg.spo2_scale_2_patients.iter().any(|x| x == id);
                p.ml = Some(Box::new(PatientMl::new(scale_2)));
            } else if !on {
                p.ml = None;
                p.prediction = None;
            }
        }
        self.ml = if on { ml } else { None };
        self.model_status = status;
        self.next_score_at = i64::MIN;
    }

    /// The edge models in use.
    pub fn models(&self) -> Option<&MlSettings> {
        self.ml.as_ref()
    }

    /// The status of the edge models, as shown.
    pub fn model_status(&self) -> &[ModelStatusView] {
        &self.model_status
    }

    /// Takes what is waiting to be scored (see [`super::models`]).
    pub fn take_ml_work(&mut self) -> MlWork {
        std::mem::take(&mut self.ml_work)
    }

    /// Builds a deterioration round for every patient with a feature buffer, due every `score_interval_ms`.
    fn schedule_deterioration(&mut self, now: i64) {
        let Some(ml) = &self.ml else { return };
        if ml.deterioration.is_none() || now < self.next_score_at {
            return;
        }
        let every = ml.score_interval_ms.max(1_000);
        self.next_score_at = (now.div_euclid(every) + 1) * every;
        let mut rows: Vec<DeteriorationRow> = self
            .patients
            .iter()
            .filter_map(|(id, p)| {
                let m = p.ml.as_ref()?;
                let features = m.buffer.features_at(now);
                Some(DeteriorationRow {
                    patient_id: id.clone(),
                    location: p.location.clone(),
                    derived_from: m.derived_from(&features),
                    features,
                })
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        rows.sort_by(|a, b| a.patient_id.cmp(&b.patient_id));
        // A round not yet taken is replaced by the newer one: only the latest matters.
        self.ml_work.deterioration = Some(DeteriorationRequest {
            at_unix_ms: now,
            rows,
        });
    }

    /// Turns a scored deterioration round into risk events and alarm conditions.
    pub fn on_deterioration_result(&mut self, r: DeteriorationResult) -> Vec<Payload> {
        let Some(use_) = self.ml.as_ref().and_then(|m| m.deterioration.clone()) else {
            return Vec::new();
        };
        let ml_rounds = self.ml.as_ref().map_or(1, |m| m.deterioration_alarm_rounds);
        let mut out = Vec::new();
        let at = r.request.at_unix_ms;
        for (i, row) in r.request.rows.into_iter().enumerate() {
            let Some(&p) = r.probabilities.get(i) else {
                break;
            };
            if !p.is_finite() {
                continue;
            }
            let p = p.clamp(0.0, 1.0);
            self.stats.model_predictions += 1;
            out.push(Payload::Risk(wardwatch_proto::v1::RiskScore {
                patient_id: row.patient_id.clone(),
                location: Some(row.location.clone()),
                computed_at_unix_ms: at,
                score: Some(wardwatch_proto::v1::risk_score::Score::Model(
                    wardwatch_proto::v1::ModelPrediction {
                        model_name: r.model.name.clone(),
                        model_version: r.model.version.clone(),
                        model_sha256: r.model.sha256.clone(),
                        probability: f64::from(p),
                        outcome: use_.outcome.clone(),
                        window_start_unix_ms: row.features.window_start_unix_ms,
                        window_end_unix_ms: row.features.window_end_unix_ms,
                    },
                )),
                derived_from: row.derived_from,
            }));
            // Shown on the bed: at or above the model's operating point.
            let above = f64::from(p) >= use_.threshold;
            // Alarmed: at or above the (stricter) alarm threshold, with persistence and hysteresis: count rounds
            // at or above it; below the clear level the count starts again; in between it holds, so a raised alarm
            // stays until the risk has really fallen.
            let above_alarm = f64::from(p) >= use_.alarm_threshold;
            let clear_level = use_.alarm_threshold * DETERIORATION_CLEAR_FRACTION;
            let needed = ml_rounds.max(1);
            let rounds = match self.patients.get_mut(&row.patient_id) {
                Some(ps) => {
                    if above_alarm {
                        ps.risk_rounds = ps.risk_rounds.saturating_add(1);
                    } else if f64::from(p) < clear_level {
                        ps.risk_rounds = 0;
                    }
                    ps.risk_rounds
                }
                None => u32::from(above_alarm),
            };
            // De-duplication: a patient whose NEWS2 already calls for an urgent or emergency response (an announced
            // medium or high NEWS2 alarm whose condition holds) has the nurse's attention for deterioration; a
            // second alarm saying the same thing adds noise, not information. The risk still shows on the bed and
            // syncs as a RiskAssessment. A risk alarm already announced stays until its own condition ends.
            let risk_key = key(
                &row.patient_id,
                AlarmKind::DeteriorationRisk,
                "deterioration-model",
            );
            let covered_by = if self.alarms.announced_priority(&risk_key).is_some() {
                None
            } else {
                self.alarms
                    .announced_priority(&key(&row.patient_id, AlarmKind::News2Response, "news2"))
                    .filter(|p| matches!(p, AlarmPriority::Medium | AlarmPriority::High))
            };
            if rounds >= needed && covered_by.is_some() {
                self.stats.risk_alarms_covered += 1;
            }
            let alarm_active = rounds >= needed && covered_by.is_none();
            if let Some(ps) = self.patients.get_mut(&row.patient_id) {
                ps.prediction = Some(PredictionView {
                    model: r.model.to_string(),
                    probability: p,
                    above_threshold: above,
                    at_unix_ms: at,
                    note: SIMULATED_MODEL_NOTE,
                });
            }
            let reasons = r.reasons.get(i).map(Vec::as_slice).unwrap_or_default();
            let cond = Condition {
                key: risk_key,
                priority: AlarmPriority::Medium,
                active: alarm_active,
                message: if alarm_active {
                    deterioration_message(&r.model, p, use_.alarm_threshold, reasons)
                } else if covered_by.is_some() && rounds >= needed {
                    format!(
                        "Deterioration risk {p:.2} at or above {:.2} (model {}): already called for by the NEWS2 response alarm",
                        use_.alarm_threshold, r.model
                    )
                } else {
                    format!(
                        "Deterioration risk {p:.2} below {:.2} (model {})",
                        use_.alarm_threshold, r.model
                    )
                },
                patient_id: row.patient_id,
                location: row.location,
                device_id: String::new(),
                at_unix_ms: at,
            };
            let alarms = self.alarms.update(cond);
            self.stats.alarm_events += alarms.len() as u64;
            out.extend(alarms.into_iter().map(Payload::Alarm));
        }
        out
    }

    /// Records a deterioration round that could not be scored.
    pub fn on_deterioration_failure(&mut self) {
        self.stats.model_failures += 1;
    }

    /// Applies artifact verdicts: a verdict at or above the threshold holds its pending condition back.
    pub fn on_artifact_results(&mut self, results: Vec<ArtifactResult>) -> Vec<Payload> {
        let Some(ml) = &self.ml else {
            return Vec::new();
        };
        let Some(use_) = &ml.artifact else {
            return Vec::new();
        };
        for r in results {
            if f64::from(r.probability) < use_.threshold {
                continue;
            }
            let until = r.request.features.window_end_unix_ms + ml.artifact_hold_ms;
            // A first hold fixes the cap; later verdicts (the disturbance goes on) extend the hold up to it.
            let cap = r.request.features.window_end_unix_ms + ml.artifact_max_hold_ms;
            if self.alarms.hold(&r.request.key, until, cap) {
                self.stats.artifact_holds += 1;
                tracing::info!(
                    patient = %r.request.patient_id,
                    condition = %r.request.key.detail,
                    probability = r.probability,
                    model = %r.model,
                    "threshold alarm held back: the artifact model judged its signal implausible"
                );
            }
            // The patient's NEWS2 is scored from the same newest samples: a pending medium- or low-priority NEWS2
            // response built on them is held back for the same bounded time (`hold` never holds a high-priority
            // condition and holds each condition once; if the NEWS2 still calls for a response when the hold ends,
            // it is announced then).
            for detail in ["news2", "news2-rising"] {
                let k = key(&r.request.patient_id, AlarmKind::News2Response, detail);
                if self.alarms.hold(&k, until, cap) {
                    self.stats.artifact_news2_holds += 1;
                    tracing::info!(
                        patient = %r.request.patient_id,
                        condition = detail,
                        signal = %r.request.key.detail,
                        probability = r.probability,
                        model = %r.model,
                        "NEWS2 response held back: the artifact model judged one of its inputs implausible"
                    );
                }
            }
        }
        Vec::new()
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Alarm counters.
    pub fn alarm_stats(&self) -> super::alarms::AlarmStats {
        self.alarms.stats()
    }

    fn scale_of(&self, patient: &str) -> SpO2Scale {
        if self.cfg.spo2_scale_2_patients.iter().any(|p| p == patient) {
            SpO2Scale::Scale2
        } else {
            SpO2Scale::Scale1
        }
    }

    /// Where patient `patient` was last seen and whether they are on SpO2 scale 2; `None` for a patient this
    /// engine has not seen (the nurse station records an SpO2-scale decision only for a patient on its ward).
    pub fn patient_location_and_scale(&self, patient: &str) -> Option<(BedLocation, bool)> {
        self.patients.get(patient).map(|p| {
            (
                p.location.clone(),
                self.scale_of(patient) == SpO2Scale::Scale2,
            )
        })
    }

    /// Sets a patient's NEWS2 SpO2 scale (a clinical decision, e.g. from the nurse station).
    pub fn set_spo2_scale(&mut self, patient: &str, scale_2: bool) {
        self.cfg.spo2_scale_2_patients.retain(|p| p != patient);
        if scale_2 {
            self.cfg.spo2_scale_2_patients.push(patient.to_string());
        }
        if let Some(p) = self.patients.get_mut(patient) {
            p.news2.set_scale(if scale_2 {
                SpO2Scale::Scale2
            } else {
                SpO2Scale::Scale1
            });
            if let Some(m) = &mut p.ml {
                m.buffer.set_spo2_scale_2(scale_2);
            }
        }
    }

    /// The state of patient `id`, created on first sight. An associated function over the map alone, so callers
    /// can borrow the configuration beside it instead of cloning it per sample.
    fn patient<'a>(
        patients: &'a mut HashMap<String, PatientState>,
        id: &str,
        location: &BedLocation,
        scale: SpO2Scale,
        ml_on: bool,
    ) -> &'a mut PatientState {
        let p = patients
            .entry(id.to_string())
            .or_insert_with(|| PatientState {
                location: location.clone(),
                news2: PatientNews2::new(scale),
                thresholds: PatientThresholds::default(),
                latest: BTreeMap::new(),
                ml: ml_on.then(|| Box::new(PatientMl::new(scale == SpO2Scale::Scale2))),
                prediction: None,
                risk_rounds: 0,
            });
        p.location = location.clone();
        p
    }

    /// Processes one accepted event; returns the events it produces (risk scores, alarm changes).
    pub fn on_event(&mut self, idempotency_key: &str, payload: &Payload) -> Vec<Payload> {
        match payload {
            Payload::Vital(v) => self.on_vital(idempotency_key, v),
            Payload::Infusion(i) => self.on_infusion(i),
            Payload::Device(d) => self.on_device(d),
            // A nurse station SpO2-scale decision is applied by the station once it is durable.
            Payload::Alarm(_) | Payload::Risk(_) | Payload::Spo2Scale(_) => Vec::new(),
        }
    }

    fn on_device(&mut self, _d: &DeviceInfo) -> Vec<Payload> {
        Vec::new()
    }

    fn on_vital(&mut self, source_key: &str, v: &VitalSign) -> Vec<Payload> {
        self.stats.vitals += 1;
        let Some(location) = v.location.clone() else {
            return Vec::new();
        };
        let scale = self.scale_of(&v.patient_id);
        let scale_2 = scale == SpO2Scale::Scale2;
        let news2_cfg = &self.cfg.news2;
        let thr_cfg = &self.cfg.thresholds;
        let at = v.measured_at_unix_ms;
        let patient_id = v.patient_id.clone();
        let ml_on = self.ml.is_some();
        let p = Self::patient(&mut self.patients, &patient_id, &location, scale, ml_on);
        if let Some(m) = &mut p.ml {
            m.observe(v, source_key);
        }
        // Display value.
        if let Some(m) = metrics::by_mdc(v.metric_mdc) {
            let display = if !v.enumerated.is_empty() {
                v.enumerated.clone()
            } else if m.kind == metrics::ValueKind::Compound {
                let get = |c: u32| {
                    v.components
                        .iter()
                        .find(|x| x.metric_mdc == c)
                        .map(|x| x.value)
                };
                match (
                    get(metrics::MDC_PRESS_BLD_NONINV_SYS),
                    get(metrics::MDC_PRESS_BLD_NONINV_DIA),
                ) {
                    (Some(s), Some(d)) => format!("{s:.0}/{d:.0}"),
                    _ => format!("{}", v.value),
                }
            } else {
                format!("{}", v.value)
            };
            let slot = m.mdc_ref.to_string();
            if p.latest.get(&slot).is_none_or(|l| l.at_unix_ms <= at) {
                p.latest.insert(
                    slot,
                    LatestValue {
                        display,
                        unit: m.unit_display.to_string(),
                        at_unix_ms: at,
                        quality: quality_names(&v.quality),
                    },
                );
            }
        }
        let mut out = Vec::new();
        let news2 = if v.metric_mdc == metrics::WARDWATCH_SUPPLEMENTAL_O2 {
            p.news2
                .observe_oxygen(v.enumerated == "O2", at, source_key, news2_cfg)
        } else {
            p.news2.observe_vital(v, source_key, news2_cfg)
        };
        let thresholds = p.thresholds.observe(v, &patient_id, scale_2, thr_cfg);
        if let Some(u) = news2 {
            self.stats.news2_updates += 1;
            out.push(Payload::Risk(
                u.to_proto(&patient_id, Some(location.clone())),
            ));
            out.extend(self.news2_conditions(
                &patient_id,
                &location,
                &v.device_id,
                &u.score.response,
                u.score.total,
                u.trend,
                at,
            ));
        }
        for c in thresholds {
            let cond = Condition {
                key: c.key,
                priority: c.priority,
                active: c.active,
                message: c.message,
                patient_id: patient_id.clone(),
                location: location.clone(),
                device_id: v.device_id.clone(),
                at_unix_ms: at,
            };
            out.extend(self.alarms.update(cond).into_iter().map(Payload::Alarm));
        }
        // While a medium/low threshold condition on a continuous signal waits out its delay (pending, not held),
        // every new sample of that signal puts it to the artifact model again: the verdict firms up as the
        // disturbance goes on. High-priority conditions are never held, so never asked about.
        if let Some((signal, slug)) = artifact_signal(v.metric_mdc)
            && self.ml.as_ref().is_some_and(|m| m.artifact.is_some())
        {
            for side in ["low", "high"] {
                let k = key(
                    &patient_id,
                    AlarmKind::VitalThreshold,
                    &format!("{slug}-{side}"),
                );
                if !self.alarms.holdable(&k, at) {
                    continue;
                }
                let Some(m) = self.patients.get(&patient_id).and_then(|p| p.ml.as_ref()) else {
                    break;
                };
                self.stats.artifact_queries += 1;
                self.ml_work.artifact.push(ArtifactRequest {
                    key: k,
                    patient_id: patient_id.clone(),
                    features: m.buffer.artifact_features_at(at, signal),
                });
            }
        }
        self.stats.alarm_events += out
            .iter()
            .filter(|p| matches!(p, Payload::Alarm(_)))
            .count() as u64;
        out
    }

    #[allow(clippy::too_many_arguments)] // one call site; the arguments are the condition's fields
    fn news2_conditions(
        &mut self,
        patient: &str,
        location: &BedLocation,
        device: &str,
        response: &ClinicalResponse,
        total: u8,
        trend: Trend,
        at: i64,
    ) -> Vec<Payload> {
        let (active, priority, what) = match response {
            ClinicalResponse::High => (true, AlarmPriority::High, "emergency response threshold"),
            ClinicalResponse::Medium => (true, AlarmPriority::Medium, "urgent response threshold"),
            ClinicalResponse::LowMedium => {
                (true, AlarmPriority::Low, "a single parameter scores 3")
            }
            _ => (false, AlarmPriority::Low, "below response thresholds"),
        };
        let mut out = Vec::new();
        let k = key(patient, AlarmKind::News2Response, "news2");
        let still = self.news2_response_holds(&k, active, at);
        let hold_min = self.cfg.news2.response_clear_hold_ms / 60_000;
        let cond = Condition {
            key: k,
            priority,
            active: still,
            message: if active || !still {
                format!("NEWS2 {total}: {what}")
            } else {
                format!(
                    "NEWS2 {total}: below response thresholds for less than {hold_min} min; the response stays in effect"
                )
            },
            patient_id: patient.to_string(),
            location: location.clone(),
            device_id: device.to_string(),
            at_unix_ms: at,
        };
        out.extend(self.alarms.update(cond).into_iter().map(Payload::Alarm));
        let rising = matches!(trend, Trend::Rising { .. });
        let k = key(patient, AlarmKind::News2Response, "news2-rising");
        let still = self.news2_response_holds(&k, rising && total >= 3, at);
        let cond = Condition {
            key: k,
            priority: AlarmPriority::Low,
            active: still,
            message: match trend {
                Trend::Rising { by, over_ms } => format!(
                    "NEWS2 rising: +{by} in {} min (now {total})",
                    over_ms / 60_000
                ),
                _ => "NEWS2 no longer rising".into(),
            },
            patient_id: patient.to_string(),
            location: location.clone(),
            device_id: device.to_string(),
            at_unix_ms: at,
        };
        out.extend(self.alarms.update(cond).into_iter().map(Payload::Alarm));
        out
    }

    /// Whether the NEWS2 response condition `k` counts as holding at `at`: it does while `active`, and while its
    /// alarm is announced and it has been below for less than `response_clear_hold_ms` (a pending, unannounced
    /// condition ends at once, so transients are still suppressed).
    fn news2_response_holds(&mut self, k: &ConditionKey, active: bool, at: i64) -> bool {
        if active || self.alarms.announced_priority(k).is_none() {
            self.news2_below_since.remove(k);
            return active;
        }
        let since = *self.news2_below_since.entry(k.clone()).or_insert(at);
        if at - since < self.cfg.news2.response_clear_hold_ms {
            return true;
        }
        self.news2_below_since.remove(k);
        false
    }

    /// Ends the NEWS2 response alarms whose score has stayed below their level for the clear hold by `now`, also
    /// when no new score arrives (a stable score makes no update).
    fn end_settled_news2_responses(&mut self, now: i64) -> Vec<Payload> {
        let hold = self.cfg.news2.response_clear_hold_ms;
        let mut settled: Vec<ConditionKey> = self
            .news2_below_since
            .iter()
            .filter(|&(_, &since)| now - since >= hold)
            .map(|(k, _)| k.clone())
            .collect();
        settled.sort();
        let mut out = Vec::new();
        for k in settled {
            self.news2_below_since.remove(&k);
            let location = self
                .patients
                .get(&k.scope)
                .map(|p| p.location.clone())
                .unwrap_or_default();
            let message = if k.detail == "news2-rising" {
                "NEWS2 no longer rising".to_string()
            } else {
                format!("NEWS2 below response thresholds for {} min", hold / 60_000)
            };
            let cond = Condition {
                patient_id: k.scope.clone(),
                key: k,
                priority: AlarmPriority::Low,
                active: false,
                message,
                location,
                device_id: String::new(),
                at_unix_ms: now,
            };
            out.extend(self.alarms.update(cond).into_iter().map(Payload::Alarm));
        }
        out
    }

    fn infusion_changes(
        &mut self,
        changes: Vec<(String, ConditionChange)>,
        at: i64,
    ) -> Vec<Payload> {
        let mut out = Vec::new();
        for (order, change) in changes {
            let Some((patient, location, device)) = self.infusion_orders.get(&order).cloned()
            else {
                continue;
            };
            let (active, cond) = match &change {
                ConditionChange::Raised(c) | ConditionChange::Updated(c) => (true, Some(c.clone())),
                ConditionChange::Cleared(_) => (false, None),
            };
            let ckey = change.key();
            let message = match &cond {
                Some(InfusionCondition::TooFast {
                    pct_over,
                    possible_manual_change,
                }) => format!(
                    "Infusion {order} running {pct_over:.0}% over the prescribed rate{}",
                    if *possible_manual_change {
                        " (possible manual change of the roller clamp)"
                    } else {
                        ""
                    }
                ),
                Some(InfusionCondition::TooSlow { pct_under }) => {
                    format!("Infusion {order} running {pct_under:.0}% under the prescribed rate")
                }
                Some(InfusionCondition::Stopped) => {
                    format!("Infusion {order} stopped: check for occlusion or an empty bag")
                }
                Some(InfusionCondition::NearCompletion {
                    remaining_ml,
                    eta_unix_ms,
                }) => format!(
                    "Infusion {order} nearly complete: {remaining_ml:.0} mL left{}",
                    eta_unix_ms.map_or(String::new(), |e| format!(
                        ", empty in {} min",
                        ((e - at).max(0)) / 60_000
                    ))
                ),
                Some(InfusionCondition::Completed) => format!("Infusion {order} completed"),
                Some(InfusionCondition::DeviceLost) => {
                    format!("Drip monitor {device} not reporting")
                }
                None => format!("Infusion {order}: condition cleared"),
            };
            let priority = cond
                .as_ref()
                .map_or(AlarmPriority::Low, InfusionCondition::default_priority);
            let c = Condition {
                key: key(&order, ckey.kind(), &format!("{ckey:?}")),
                priority,
                active,
                message,
                patient_id: patient,
                location,
                device_id: device,
                at_unix_ms: at,
            };
            out.extend(self.alarms.update(c).into_iter().map(Payload::Alarm));
        }
        self.stats.alarm_events += out.len() as u64;
        out
    }

    fn on_infusion(&mut self, i: &InfusionStatus) -> Vec<Payload> {
        self.stats.infusion_reports += 1;
        let location = i.location.clone().unwrap_or_default();
        self.infusion_orders.insert(
            i.order_id.clone(),
            (i.patient_id.clone(), location, i.device_id.clone()),
        );
        let changes = self.infusion.observe(i);
        self.infusion_changes(changes, i.measured_at_unix_ms)
    }

    /// Advances time: NEWS2 staleness, infusion persistence and device loss, alarm delays and escalation.
    pub fn tick(&mut self, now: i64) -> Vec<Payload> {
        self.schedule_deterioration(now);
        let mut out = Vec::new();
        let cfg = self.cfg.news2.clone();
        let mut updates = Vec::new();
        for (id, p) in &mut self.patients {
            if let Some(u) = p.news2.tick(now, &cfg) {
                updates.push((id.clone(), p.location.clone(), u));
            }
        }
        for (id, loc, u) in updates {
            self.stats.news2_updates += 1;
            out.push(Payload::Risk(u.to_proto(&id, Some(loc.clone()))));
            out.extend(self.news2_conditions(
                &id,
                &loc,
                "",
                &u.score.response,
                u.score.total,
                u.trend,
                now,
            ));
        }
        out.extend(self.end_settled_news2_responses(now));
        let changes = self.infusion.tick(now);
        out.extend(self.infusion_changes(changes, now));
        let alarms: Vec<Payload> = self
            .alarms
            .tick(now)
            .into_iter()
            .map(Payload::Alarm)
            .collect();
        self.stats.alarm_events += alarms.len() as u64;
        out.extend(alarms);
        out
    }

    /// A user acknowledges an alarm.
    pub fn acknowledge(
        &mut self,
        alarm_id: &str,
        user: &str,
        now: i64,
    ) -> Result<Vec<Payload>, AlarmActionError> {
        Ok(self
            .alarms
            .acknowledge(alarm_id, user, now)?
            .into_iter()
            .map(Payload::Alarm)
            .collect())
    }

    /// A user silences an alarm.
    pub fn silence(
        &mut self,
        alarm_id: &str,
        user: &str,
        now: i64,
        duration_ms: i64,
    ) -> Result<Vec<Payload>, AlarmActionError> {
        Ok(self
            .alarms
            .silence(alarm_id, user, now, duration_ms)?
            .into_iter()
            .map(Payload::Alarm)
            .collect())
    }

    /// Announced alarms.
    pub fn active_alarms(&self) -> Vec<AlarmView> {
        self.alarms.active()
    }

    /// Infusion views.
    pub fn infusions(&self) -> Vec<InfusionView> {
        self.infusion.views()
    }

    /// The ward as the nurse station shows it.
    pub fn snapshot(&self, now: i64) -> WardSnapshot {
        let mut beds: BTreeMap<(String, String), BedView> = BTreeMap::new();
        for (id, p) in &self.patients {
            let news2 = p.news2.current().map(|u| News2View {
                total: u.score.total,
                response: response_name(u.score.response),
                missing: u.score.missing.iter().map(|m| format!("{m:?}")).collect(),
                trend: match u.trend {
                    Trend::Rising { .. } => "rising",
                    Trend::Falling { .. } => "falling",
                    Trend::Stable => "stable",
                    Trend::Unknown => "unknown",
                },
                spo2_scale: if u.score.scale == SpO2Scale::Scale2 {
                    2
                } else {
                    1
                },
                at_unix_ms: u.at_unix_ms,
            });
            beds.insert(
                (p.location.ward.clone(), p.location.bed.clone()),
                BedView {
                    ward: p.location.ward.clone(),
                    bed: p.location.bed.clone(),
                    patient_id: id.clone(),
                    vitals: p.latest.clone(),
                    news2,
                    infusions: Vec::new(),
                    alarms: Vec::new(),
                    deterioration: p.prediction.clone(),
                },
            );
        }
        for i in self.infusion.views() {
            if let Some(b) = beds.get_mut(&(i.ward.clone(), i.bed.clone())) {
                b.infusions.push(InfusionDisplay {
                    order_id: i.order_id,
                    medication: i.medication,
                    prescribed_rate_ml_h: i.prescribed_rate_ml_h,
                    measured_rate_ml_h: (i.measured_rate_ml_h * 10.0).round() / 10.0,
                    volume_remaining_ml: i.volume_remaining_ml.round(),
                    eta_unix_ms: i.eta_unix_ms,
                    state: format!("{:?}", i.state).to_ascii_lowercase(),
                });
            }
        }
        let mut other_alarms = Vec::new();
        for a in self.alarms.active() {
            match beds.get_mut(&(a.location.ward.clone(), a.location.bed.clone())) {
                Some(b) => b.alarms.push(display_alarm(&a)),
                None => other_alarms.push(display_alarm(&a)),
            }
        }
        let mut beds: Vec<BedView> = beds.into_values().collect();
        beds.sort_by(|a, b| {
            a.ward
                .cmp(&b.ward)
                .then_with(|| match (a.bed.parse::<u32>(), b.bed.parse::<u32>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => a.bed.cmp(&b.bed),
                })
        });
        WardSnapshot {
            at_unix_ms: now,
            models: self.model_status.clone(),
            beds,
            other_alarms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::metrics::*;
    use wardwatch_proto::v1::AlarmState;

    fn vital(mdc: u32, value: f64, at: i64) -> Payload {
        Payload::Vital(VitalSign {
            patient_id: "P1".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "3".into(),
            }),
            device_id: "mon".into(),
            metric_mdc: mdc,
            value,
            unit_ucum: metrics::by_mdc(mdc).map_or("", |m| m.unit).into(),
            measured_at_unix_ms: at,
            ..Default::default()
        })
    }

    fn alarms(v: &[Payload]) -> Vec<(i32, i32, String)> {
        v.iter()
            .filter_map(|p| match p {
                Payload::Alarm(a) => Some((a.priority, a.state, a.message.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hard_limit_raises_high_immediately_and_news2_is_scored() {
        let mut e = ClinicalEngine::new(EngineConfig::default(), "edge");
        let out = e.on_event("k1", &vital(MDC_PULS_OXIM_SAT_O2, 84.0, 1_000));
        let a = alarms(&out);
        assert!(
            a.iter().any(|(p, s, m)| *p == AlarmPriority::High as i32
                && *s == AlarmState::Raised as i32
                && m.contains("SpO2")),
            "{a:?}"
        );
        assert!(
            out.iter().any(|p| matches!(p, Payload::Risk(_))),
            "a NEWS2 score was produced"
        );
        let snap = e.snapshot(2_000);
        assert_eq!(snap.beds.len(), 1);
        assert_eq!(snap.beds[0].news2.as_ref().map(|n| n.total), Some(3));
        assert_eq!(snap.beds[0].alarms.len(), 1);
        assert_eq!(snap.beds[0].vitals["MDC_PULS_OXIM_SAT_O2"].display, "84");
    }

    #[test]
    fn news2_emergency_level_raises_high_alarm() {
        let mut e = ClinicalEngine::new(EngineConfig::default(), "edge");
        let mut all = Vec::new();
        for (i, (mdc, v)) in [
            (MDC_RESP_RATE, 26.0),
            (MDC_PULS_OXIM_SAT_O2, 91.0),
            (MDC_ECG_HEART_RATE, 118.0),
            (MDC_TEMP_BODY, 39.2),
        ]
        .into_iter()
        .enumerate()
        {
            all.extend(e.on_event(&format!("k{i}"), &vital(mdc, v, 1_000 + i as i64)));
        }
        // RR 26 → 3, SpO2 91 → 3 (NEWS2 6: medium, waits out its delay), HR 118 → 2 (NEWS2 8: high, at once),
        // temp 39.2 → 2 (NEWS2 10: the same alarm, not a second one).
        let a = alarms(&all);
        let high: Vec<_> = a
            .iter()
            .filter(|(p, _, m)| *p == AlarmPriority::High as i32 && m.starts_with("NEWS2"))
            .collect();
        assert_eq!(high.len(), 1, "{a:?}");
        assert!(high[0].2.starts_with("NEWS2 8: emergency"), "{a:?}");
        assert_eq!(
            e.snapshot(2_000).beds[0]
                .news2
                .as_ref()
                .map(|n| (n.total, n.response)),
            Some((10, "high"))
        );
    }

    /// A NEWS2 response alarm whose score dips below its level and comes back within
    /// `response_clear_hold_ms` is one alarm, not two; it ends once the score stayed below for that long; a response
    /// that ends before its delay is still suppressed as a transient.
    #[test]
    fn a_news2_response_alarm_outlives_short_dips_and_ends_after_the_clear_hold() {
        let mut e = ClinicalEngine::new(EngineConfig::default(), "edge");
        let news2_states = |out: &[Payload]| -> Vec<i32> {
            out.iter()
                .filter_map(|p| match p {
                    Payload::Alarm(a)
                        if a.kind == AlarmKind::News2Response as i32
                            && a.priority == AlarmPriority::Low as i32
                            && !a.message.contains("rising") =>
                    {
                        Some(a.state)
                    }
                    _ => None,
                })
                .collect()
        };
        let raised = AlarmState::Raised as i32;
        let cleared = AlarmState::Cleared as i32;
        // A transient: RR 8 (scores 3, low-medium response) back to 14 within the 30 s low delay: never announced.
        let mut all = e.on_event("t1", &vital(MDC_RESP_RATE, 8.0, 1_000));
        all.extend(e.on_event("t2", &vital(MDC_RESP_RATE, 14.0, 10_000)));
        all.extend(e.tick(60_000));
        assert!(news2_states(&all).is_empty(), "{all:?}");
        // A real one: announced after its delay.
        e.on_event("r1", &vital(MDC_RESP_RATE, 8.0, 100_000));
        assert_eq!(news2_states(&e.tick(131_000)), vec![raised]);
        // The RR hovers at the boundary: 9 (scores 1), 8, 9, ... within 15 min: the same alarm, no clear, no raise.
        let mut t = 140_000;
        let mut hover = Vec::new();
        for v in [9.0, 8.0, 9.0, 8.0, 9.0] {
            hover.extend(e.on_event(&format!("h{t}"), &vital(MDC_RESP_RATE, v, t)));
            hover.extend(e.tick(t + 60_000));
            t += 120_000;
        }
        assert!(news2_states(&hover).is_empty(), "{hover:?}");
        // Below for good since the last 9: still in effect just before 15 min (also when no new score arrives),
        // ended by the tick at 15 min.
        let below_since = t - 120_000;
        let mut below = e.on_event("b1", &vital(MDC_RESP_RATE, 14.0, t));
        below.extend(e.tick(below_since + 15 * 60_000 - 1));
        assert!(
            news2_states(&below).is_empty(),
            "still in effect: {below:?}"
        );
        let end = e.tick(below_since + 15 * 60_000);
        assert_eq!(news2_states(&end), vec![cleared]);
    }

    use crate::clinical::models::{
        ArtifactResult, DeteriorationResult, MlSettings, ModelRef, ModelUse,
    };

    fn model(name: &str) -> ModelRef {
        ModelRef {
            name: name.into(),
            version: "1.0.0".into(),
            sha256: "0be759765a3bb59cc28ba57dcd8c75a79f6be1af663b58f8f95d742454079122".into(),
        }
    }

    fn ml_engine(det: bool, art: bool) -> ClinicalEngine {
        ml_engine_with_rounds(det, art, 1)
    }

    fn ml_engine_with_rounds(det: bool, art: bool, rounds: u32) -> ClinicalEngine {
        let mut e = ClinicalEngine::new(EngineConfig::default(), "edge");
        let use_ = |name: &str, t: f64| ModelUse {
            model: model(name),
            threshold: t,
            alarm_threshold: t,
            outcome: "labelled deterioration within 4 h".into(),
        };
        e.set_models(
            Some(MlSettings {
                deterioration: det.then(|| use_("wardwatch-deterioration", 0.15)),
                artifact: art.then(|| use_("wardwatch-artifact", 0.9)),
                score_interval_ms: 60_000,
                artifact_hold_ms: 30_000,
                artifact_max_hold_ms: 120_000,
                deterioration_alarm_rounds: rounds,
            }),
            Vec::new(),
        );
        e
    }

    /// Ticks to `now`, takes the deterioration round that is then due and scores every bed in it with `p`: the
    /// engine's output for that result.
    fn score_round(e: &mut ClinicalEngine, now: i64, p: f32) -> Vec<Payload> {
        e.tick(now);
        let req = e.take_ml_work().deterioration.expect("a round is due");
        let beds = req.rows.len();
        e.on_deterioration_result(DeteriorationResult {
            model: model("wardwatch-deterioration"),
            probabilities: vec![p; beds],
            reasons: (0..beds).map(|_| Vec::new()).collect(),
            request: req,
        })
    }

    fn raised(out: &[Payload], kind: AlarmKind) -> Vec<(i32, String)> {
        out.iter()
            .filter_map(|p| match p {
                Payload::Alarm(a)
                    if a.kind == kind as i32 && a.state == AlarmState::Raised as i32 =>
                {
                    Some((a.priority, a.message.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_deterioration_round_becomes_risk_events_and_a_medium_alarm_naming_the_model() {
        let mut e = ml_engine(true, false);
        for (k, p) in ["P1", "P2"].iter().enumerate() {
            if let Payload::Vital(mut v) = vital(MDC_RESP_RATE, 18.0, 1_000) {
                v.patient_id = (*p).into();
                v.location = Some(BedLocation {
                    ward: "7A".into(),
                    bed: format!("{}", k + 1),
                });
                e.on_event(&format!("rr-{p}"), &Payload::Vital(v));
            }
        }
        assert!(
            e.take_ml_work().deterioration.is_none(),
            "not before a tick"
        );
        e.tick(60_000);
        let work = e.take_ml_work();
        let req = work.deterioration.expect("a round is due");
        assert_eq!(req.rows.len(), 2);
        assert_eq!(req.rows[0].derived_from, vec!["rr-P1".to_string()]);
        // The next round is due a minute later, not at the next tick.
        e.tick(61_000);
        assert!(e.take_ml_work().deterioration.is_none());
        let out = e.on_deterioration_result(DeteriorationResult {
            model: model("wardwatch-deterioration"),
            probabilities: vec![0.62, 0.03],
            reasons: vec![Vec::new(), Vec::new()],
            request: req,
        });
        let risks: Vec<_> = out
            .iter()
            .filter_map(|p| match p {
                Payload::Risk(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(risks.len(), 2);
        match &risks[0].score {
            Some(wardwatch_proto::v1::risk_score::Score::Model(m)) => {
                assert_eq!(m.model_name, "wardwatch-deterioration");
                assert_eq!(m.model_version, "1.0.0");
                assert!(m.model_sha256.starts_with("0be759765a3b"));
                assert!((m.probability - 0.62).abs() < 1e-6);
                assert_eq!(m.window_end_unix_ms - m.window_start_unix_ms, 240 * 60_000);
            }
            other => panic!("not a model prediction: {other:?}"),
        }
        // Medium priority: pending first, announced after the medium delay.
        assert!(raised(&out, AlarmKind::DeteriorationRisk).is_empty());
        let later = e.tick(60_000 + 16_000);
        let a = raised(&later, AlarmKind::DeteriorationRisk);
        assert_eq!(a.len(), 1, "only P1 is above the threshold: {a:?}");
        assert_eq!(a[0].0, AlarmPriority::Medium as i32);
        assert!(
            a[0].1.contains("wardwatch-deterioration 1.0.0") && a[0].1.contains("0.62"),
            "{}",
            a[0].1
        );
        assert!(a[0].1.contains("not clinically validated"), "{}", a[0].1);
        let snap = e.snapshot(80_000);
        let p1 = snap.beds.iter().find(|b| b.patient_id == "P1").expect("P1");
        assert!(p1.deterioration.as_ref().is_some_and(|d| d.above_threshold));
    }

    /// The risk alarm needs `deterioration_alarm_rounds` consecutive rounds at or above the threshold (0.15 here),
    /// holds between the clear level (0.12) and the threshold, and ends below the clear level: a probability
    /// hovering at the threshold raises one alarm, not one per crossing.
    #[test]
    fn the_risk_alarm_needs_consecutive_rounds_and_clears_with_hysteresis() {
        let mut e = ml_engine_with_rounds(true, false, 3);
        if let Payload::Vital(mut v) = vital(MDC_RESP_RATE, 18.0, 1_000) {
            v.patient_id = "P1".into();
            e.on_event("rr-P1", &Payload::Vital(v));
        }
        let mut raised_total = 0;
        let mut active_after = Vec::new();
        // Rounds a minute apart; a dip to 0.13 (between the clear level and the threshold) holds the count.
        for (i, p) in [0.20_f32, 0.20, 0.13, 0.20, 0.16, 0.14, 0.10, 0.20, 0.20]
            .iter()
            .enumerate()
        {
            let now = 60_000 * (i as i64 + 1);
            let out = score_round(&mut e, now, *p);
            raised_total += raised(&out, AlarmKind::DeteriorationRisk).len();
            // Past the medium delay, before the next round.
            raised_total += raised(&e.tick(now + 16_000), AlarmKind::DeteriorationRisk).len();
            active_after.push(
                e.active_alarms()
                    .iter()
                    .any(|a| a.key.kind == AlarmKind::DeteriorationRisk as i32),
            );
        }
        assert_eq!(
            active_after,
            vec![false, false, false, true, true, true, false, false, false],
            "rounds: 0.20 0.20 0.13(hold) 0.20(3rd) 0.16 0.14(held above 0.12) 0.10(clear) 0.20 0.20(only 2)"
        );
        assert_eq!(raised_total, 1, "one alarm for the whole episode");
    }

    /// The bed shows the risk at the model's operating point (`threshold`); only rounds at or above the stricter
    /// `alarm_threshold` count towards the alarm.
    #[test]
    fn the_risk_alarm_uses_the_alarm_threshold_and_the_bed_the_operating_point() {
        let mut e = ClinicalEngine::new(EngineConfig::default(), "edge");
        e.set_models(
            Some(MlSettings {
                deterioration: Some(ModelUse {
                    model: model("wardwatch-deterioration"),
                    threshold: 0.15,
                    alarm_threshold: 0.30,
                    outcome: "labelled deterioration within 4 h".into(),
                }),
                artifact: None,
                score_interval_ms: 60_000,
                artifact_hold_ms: 30_000,
                artifact_max_hold_ms: 120_000,
                deterioration_alarm_rounds: 2,
            }),
            Vec::new(),
        );
        e.on_event("rr1", &vital(MDC_RESP_RATE, 18.0, 1_000));
        let mut raised_at = Vec::new();
        for (i, p) in [0.20_f32, 0.25, 0.29, 0.31, 0.31].iter().enumerate() {
            let now = 60_000 * (i as i64 + 1);
            let out = score_round(&mut e, now, *p);
            let bed = e.snapshot(now);
            assert!(
                bed.beds[0]
                    .deterioration
                    .as_ref()
                    .is_some_and(|d| d.above_threshold),
                "{p} is at or above the operating point 0.15"
            );
            let n = raised(&out, AlarmKind::DeteriorationRisk).len()
                + raised(&e.tick(now + 16_000), AlarmKind::DeteriorationRisk).len();
            if n > 0 {
                raised_at.push(i);
            }
        }
        assert_eq!(
            raised_at,
            vec![4],
            "0.20/0.25/0.29 are below the alarm threshold 0.30; the second round at 0.31 raises it"
        );
        let a = e
            .active_alarms()
            .into_iter()
            .find(|a| a.key.kind == AlarmKind::DeteriorationRisk as i32)
            .expect("risk alarm");
        assert!(a.message.contains("alarm at 0.30"), "{}", a.message);
    }

    /// One deterioration, one alarm: while the patient's NEWS2 urgent/emergency response alarm is announced, a high
    /// risk makes no second alarm (counted as covered); once NEWS2 no longer calls for a response, a risk that
    /// stays high is alarmed; an already announced risk alarm is not cleared by a NEWS2 alarm that comes later.
    #[test]
    fn a_risk_alarm_is_not_raised_while_the_news2_response_alarm_covers_the_patient() {
        let mut e = ml_engine(true, false);
        let round = |e: &mut ClinicalEngine, now: i64, p: f32| -> usize {
            let out = score_round(e, now, p);
            raised(&out, AlarmKind::DeteriorationRisk).len()
                + raised(&e.tick(now + 16_000), AlarmKind::DeteriorationRisk).len()
        };
        let news2_raised = |out: &[Payload]| raised(out, AlarmKind::News2Response).len();
        // RR 26 (3) + SpO2 91 (3): NEWS2 6, urgent response, medium: announced after its delay.
        e.on_event("rr1", &vital(MDC_RESP_RATE, 26.0, 1_000));
        e.on_event("sp1", &vital(MDC_PULS_OXIM_SAT_O2, 91.0, 1_000));
        assert_eq!(news2_raised(&e.tick(20_000)), 1, "NEWS2 6 announced");
        // The model agrees: no second alarm, however long it agrees.
        assert_eq!(round(&mut e, 60_000, 0.5), 0);
        assert_eq!(round(&mut e, 120_000, 0.5), 0);
        assert_eq!(e.stats().risk_alarms_covered, 2);
        assert!(
            !e.active_alarms()
                .iter()
                .any(|a| a.key.kind == AlarmKind::DeteriorationRisk as i32)
        );
        // NEWS2 back to 0; its alarm ends once the score stayed below for the clear hold (15 min). The model still
        // sees a risk: now it is alarmed.
        e.on_event("rr2", &vital(MDC_RESP_RATE, 16.0, 130_000));
        e.on_event("sp2", &vital(MDC_PULS_OXIM_SAT_O2, 97.0, 130_000));
        let after_hold = 130_000 + 15 * 60_000;
        e.tick(after_hold);
        assert!(
            !e.active_alarms()
                .iter()
                .any(|a| a.key.kind == AlarmKind::News2Response as i32),
            "NEWS2 alarm cleared"
        );
        assert_eq!(
            round(&mut e, after_hold + 60_000, 0.5),
            1,
            "alarmed once uncovered"
        );
        // NEWS2 rises again and is announced: the risk alarm already sounding stays (no clear, no churn).
        e.on_event("rr3", &vital(MDC_RESP_RATE, 26.0, after_hold + 100_000));
        e.on_event(
            "sp3",
            &vital(MDC_PULS_OXIM_SAT_O2, 91.0, after_hold + 100_000),
        );
        assert_eq!(news2_raised(&e.tick(after_hold + 120_000)), 1);
        let out = score_round(&mut e, after_hold + 180_000, 0.5);
        assert!(
            !out.iter().any(|p| matches!(p, Payload::Alarm(a)
                if a.kind == AlarmKind::DeteriorationRisk as i32 && a.state == AlarmState::Cleared as i32)),
            "{out:?}"
        );
        assert!(
            e.active_alarms()
                .iter()
                .any(|a| a.key.kind == AlarmKind::DeteriorationRisk as i32)
        );
        assert_eq!(e.stats().risk_alarms_covered, 2);
    }

    #[test]
    fn an_artifact_verdict_holds_back_a_medium_threshold_alarm_but_never_a_high_one() {
        let mut e = ml_engine(false, true);
        // SpO2 87: below the soft limit (90), above the hard one (85): medium, pending.
        let out = e.on_event("s1", &vital(MDC_PULS_OXIM_SAT_O2, 87.0, 1_000));
        assert!(raised(&out, AlarmKind::VitalThreshold).is_empty());
        let work = e.take_ml_work();
        assert_eq!(
            work.artifact.len(),
            1,
            "the new medium condition is put to the model"
        );
        let q = work.artifact[0].clone();
        assert_eq!(q.key.detail, "spo2-low");
        // Each further sample of the signal while the condition is pending asks again.
        e.on_event("s2", &vital(MDC_PULS_OXIM_SAT_O2, 88.0, 2_000));
        assert_eq!(e.take_ml_work().artifact.len(), 1, "asked again");
        assert_eq!(q.features.query, crate::ml::ContinuousSignal::SpO2);
        e.on_artifact_results(vec![ArtifactResult {
            request: q,
            model: model("wardwatch-artifact"),
            probability: 0.99,
        }]);
        assert_eq!(e.stats().artifact_holds, 1);
        // Past the 15 s medium delay but within the 30 s hold: held back.
        assert!(raised(&e.tick(20_000), AlarmKind::VitalThreshold).is_empty());
        // Meanwhile heart rate crosses its hard limit: high priority, raised at once, never put to the model.
        let hr = e.on_event("h1", &vital(MDC_ECG_HEART_RATE, 150.0, 21_000));
        let a = raised(&hr, AlarmKind::VitalThreshold);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].0, AlarmPriority::High as i32);
        assert!(
            e.take_ml_work().artifact.is_empty(),
            "high conditions are not judged"
        );
        // Even a verdict naming the high condition cannot hold it.
        let hr_key = key("P1", AlarmKind::VitalThreshold, "hr-high");
        assert!(!e.alarms.hold(&hr_key, 99_000, 99_000));
        // The hold ends (1 s + 30 s) with SpO2 still low: now the medium alarm sounds.
        assert!(raised(&e.tick(30_000), AlarmKind::VitalThreshold).is_empty());
        let a = raised(&e.tick(31_000), AlarmKind::VitalThreshold);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].0, AlarmPriority::Medium as i32);
    }

    #[test]
    fn a_scale_decision_reaches_the_model_features() {
        let mut e = ml_engine(true, false);
        e.on_event("s1", &vital(MDC_PULS_OXIM_SAT_O2, 90.0, 1_000));
        e.set_spo2_scale("P1", true);
        e.tick(60_000);
        let req = e.take_ml_work().deterioration.expect("round");
        let idx = crate::ml::DETERIORATION_FEATURES
            .iter()
            .position(|f| f.name == "spo2_scale_2")
            .expect("feature");
        assert_eq!(req.rows[0].features.values[idx], 1.0);
    }

    #[test]
    fn a_plausible_verdict_does_not_hold_and_without_a_model_nothing_is_asked() {
        let mut e = ml_engine(false, true);
        e.on_event("s1", &vital(MDC_PULS_OXIM_SAT_O2, 87.0, 1_000));
        let q = e.take_ml_work().artifact.remove(0);
        e.on_artifact_results(vec![ArtifactResult {
            request: q,
            model: model("wardwatch-artifact"),
            probability: 0.2,
        }]);
        assert_eq!(raised(&e.tick(16_000), AlarmKind::VitalThreshold).len(), 1);

        let mut plain = ClinicalEngine::new(EngineConfig::default(), "edge");
        plain.on_event("s1", &vital(MDC_PULS_OXIM_SAT_O2, 87.0, 1_000));
        plain.tick(120_000);
        assert!(plain.take_ml_work().is_empty());
    }

    /// The recurrence the alarm evaluation found (docs/alarm-evaluation.md): an acknowledged NEWS2 emergency alarm
    /// whose score then flickers between 3 and 5 never ends, so without de-escalation the patient's return to an
    /// emergency score announces nothing. Through the whole engine (NEWS2 scoring, response alarms, the alarm
    /// manager): after the policy's 15 min of lower scores the acknowledged alarm settles at medium silently, and
    /// the renewed worsening is announced at high. The same run with de-escalation switched off stays silent.
    #[test]
    fn an_acknowledged_news2_alarm_settled_lower_is_announced_again_on_a_new_emergency() {
        let run = |deescalate_after_ms: i64| {
            let mut cfg = EngineConfig::default();
            cfg.alarms.deescalate_acknowledged_after_ms = deescalate_after_ms;
            let mut e = ClinicalEngine::new(cfg, "edge");
            let observe = |e: &mut ClinicalEngine, t: i64, rr: f64, spo2: f64, hr: f64| {
                let mut out = Vec::new();
                for (i, (mdc, v)) in [
                    (MDC_RESP_RATE, rr),
                    (MDC_PULS_OXIM_SAT_O2, spo2),
                    (MDC_ECG_HEART_RATE, hr),
                    (MDC_TEMP_BODY, 38.5),
                ]
                .into_iter()
                .enumerate()
                {
                    out.extend(e.on_event(&format!("k{t}-{i}"), &vital(mdc, v, t + i as i64)));
                }
                out.extend(e.tick(t + 60_000));
                out
            };
            let high = |out: &[Payload]| {
                raised(out, AlarmKind::News2Response)
                    .into_iter()
                    .filter(|(p, _)| *p == AlarmPriority::High as i32)
                    .count()
            };
            // RR 26 (3), SpO2 91 (3), HR 118 (2), temperature 38.5 (1): NEWS2 9, emergency, high at once.
            assert_eq!(high(&observe(&mut e, 60_000, 26.0, 91.0, 118.0)), 1);
            let id = e
                .active_alarms()
                .into_iter()
                .find(|a| {
                    a.key.kind == AlarmKind::News2Response as i32
                        && a.priority == AlarmPriority::High
                })
                .map(|a| a.alarm_id)
                .expect("the emergency alarm is active");
            assert!(e.acknowledge(&id, "nurse.a", 5 * 60_000).is_ok());
            // Recovering but not well: HR 95 (1), SpO2 94 (1), temperature (1), RR 21 (2) or 20 (0), every 2 min
            // for 30 min: NEWS2 5 (urgent, medium) and 3 (low) in turn, never long enough below to end the alarm.
            let mut t = 6 * 60_000;
            let mut between = Vec::new();
            for i in 0..15 {
                between.extend(observe(
                    &mut e,
                    t,
                    if i % 2 == 0 { 21.0 } else { 20.0 },
                    94.0,
                    95.0,
                ));
                t += 2 * 60_000;
            }
            let worse_again = observe(&mut e, t, 26.0, 91.0, 118.0);
            (
                high(&between),
                high(&worse_again),
                e.alarm_stats().deescalated,
            )
        };
        let (between, again, deescalated) =
            run(AlarmPolicy::default().deescalate_acknowledged_after_ms);
        assert_eq!(
            between, 0,
            "nothing announced at high while the score stays lower"
        );
        assert_eq!(deescalated, 1);
        assert_eq!(again, 1, "the renewed emergency is announced at high");
        let (_, again_without, deescalated_without) = run(i64::MAX);
        assert_eq!(deescalated_without, 0);
        assert_eq!(
            again_without, 0,
            "without de-escalation the latched alarm swallows the recurrence"
        );
    }

    #[test]
    fn acknowledge_through_the_engine() {
        let mut e = ClinicalEngine::new(EngineConfig::default(), "edge");
        e.on_event("k1", &vital(MDC_ECG_HEART_RATE, 30.0, 1_000));
        e.on_event("k1b", &vital(MDC_PULS_OXIM_PULS_RATE, 31.0, 1_100));
        let id = e
            .active_alarms()
            .first()
            .map(|a| a.alarm_id.clone())
            .unwrap_or_default();
        let out = e.acknowledge(&id, "nurse.b", 2_000).unwrap_or_default();
        assert_eq!(
            alarms(&out).first().map(|a| a.1),
            Some(AlarmState::Acknowledged as i32)
        );
        assert!(e.acknowledge("nope", "n", 2_000).is_err());
    }
}
