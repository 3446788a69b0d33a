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
    AlarmActionError, AlarmManager, AlarmPolicy, AlarmView, Condition, Phase, key,
};
use super::infusion::{
    ConditionChange, InfusionCondition, InfusionMonitor, InfusionSafetyConfig, InfusionView,
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

/// The whole ward for the nurse station.
#[derive(Debug, Clone, Serialize)]
pub struct WardSnapshot {
    /// When taken.
    pub at_unix_ms: i64,
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
        }
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
        }
    }

    /// The state of patient `id`, created on first sight. An associated function over the map alone, so callers
    /// can borrow the configuration beside it instead of cloning it per sample.
    fn patient<'a>(
        patients: &'a mut HashMap<String, PatientState>,
        id: &str,
        location: &BedLocation,
        scale: SpO2Scale,
    ) -> &'a mut PatientState {
        let p = patients
            .entry(id.to_string())
            .or_insert_with(|| PatientState {
                location: location.clone(),
                news2: PatientNews2::new(scale),
                thresholds: PatientThresholds::default(),
                latest: BTreeMap::new(),
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
            Payload::Alarm(_) | Payload::Risk(_) => Vec::new(),
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
        let p = Self::patient(&mut self.patients, &patient_id, &location, scale);
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
        let cond = Condition {
            key: key(patient, AlarmKind::News2Response, "news2"),
            priority,
            active,
            message: format!("NEWS2 {total}: {what}"),
            patient_id: patient.to_string(),
            location: location.clone(),
            device_id: device.to_string(),
            at_unix_ms: at,
        };
        out.extend(self.alarms.update(cond).into_iter().map(Payload::Alarm));
        let rising = matches!(trend, Trend::Rising { .. });
        let cond = Condition {
            key: key(patient, AlarmKind::News2Response, "news2-rising"),
            priority: AlarmPriority::Low,
            active: rising && total >= 3,
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
