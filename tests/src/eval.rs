//! Alarm-fatigue evaluation: a simulated ward with labelled scenarios runs through the real clinical engine in
//! simulated time; its announced alarms are compared with naive fixed thresholds and with the ground truth.
//! Used by `bench/eval_alarms` (the report in docs/alarm-evaluation.md) and by a smaller whole-system test.
//!
//! Everything here is simulated data: it shows the alarm logic behaves as designed on the scenarios the
//! simulator models, not clinical performance.

use std::collections::{BTreeMap, HashMap};

use wardwatch_edge::clinical::engine::{ClinicalEngine, EngineConfig};
use wardwatch_edge::clinical::thresholds::{ThresholdConfig, naive_out_of_range};
use wardwatch_edge::ml::runtime::{ARTIFACT_MODEL, DETERIORATION_MODEL, EdgeModels};
use wardwatch_edge::simulator::{
    GroundTruthLabel, RandomScenarioMix, ScenarioKind, WardSimConfig, WardSimulator,
};
use wardwatch_proto::v1::{AlarmKind, AlarmPriority, AlarmState, edge_event::Payload};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Beds.
    pub beds: u32,
    /// Simulated hours.
    pub hours: u32,
    /// Seed.
    pub seed: u64,
    /// Scenario mix (default: `RandomScenarioMix::default()` over the evaluated hours).
    pub mix: Option<RandomScenarioMix>,
    /// The edge models to run in the loop (deterioration and artifact bundles, verified and loaded as an edge
    /// loads them), or `None` for the engine without models.
    pub models: Option<wardwatch_edge::config::ModelsConfig>,
}

/// One announced alarm.
#[derive(Debug, Clone)]
pub struct Announced {
    /// Patient (or order id scope for infusion alarms: mapped to the patient).
    pub patient_id: String,
    /// Kind.
    pub kind: AlarmKind,
    /// Priority when first announced or upgraded.
    pub priority: AlarmPriority,
    /// When.
    pub at_unix_ms: i64,
    /// Alarm id.
    pub alarm_id: String,
    /// Kind, priority when first announced and the first word of the message (e.g. `VitalThreshold medium SpO2`),
    /// for the breakdown that shows where a ward's alarms come from.
    pub what: String,
}

/// Outcome for one labelled scenario.
#[derive(Debug, Clone)]
pub struct LabelOutcome {
    /// The label.
    pub label: GroundTruthLabel,
    /// First matching alarm time minus onset, if any.
    pub time_to_alarm_ms: Option<i64>,
    /// Highest priority of matching alarms within the window.
    pub max_priority: Option<AlarmPriority>,
}

/// The evaluation's result.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Configuration.
    pub config: EvalConfig,
    /// Alarms announced by the alarm manager (distinct alarm ids; an upgrade of the same alarm is not counted
    /// again).
    pub manager_alarms: u64,
    /// Of which physiological alarms (vital threshold, NEWS2 and, with models, deterioration risk).
    pub manager_physiological: u64,
    /// Alarm episodes naive fixed thresholds would have sounded (each entry of a parameter into out-of-range).
    pub naive_alarms: u64,
    /// Per labelled scenario.
    pub labels: Vec<LabelOutcome>,
    /// Events processed.
    pub events: u64,
    /// End of the simulated period.
    pub end_unix_ms: i64,
    /// Conditions that ended within their delay (never announced).
    pub suppressed_transient: u64,
    /// The models that ran in the loop (`name version`), empty without models.
    pub models_running: Vec<String>,
    /// Pending threshold conditions the artifact model held back.
    pub artifact_holds: u64,
    /// Artifact questions scored.
    pub artifact_questions: u64,
    /// Deterioration rounds scored.
    pub deterioration_rounds: u64,
    /// Announced alarms by [`Announced::what`], most frequent first.
    pub breakdown: Vec<(String, u64)>,
    /// Deterioration-risk alarms announced (a part of `manager_physiological`).
    pub risk_alarms: u64,
    /// Deterioration rounds at or above the alarm threshold that raised no alarm because the patient's NEWS2
    /// response alarm was already announced (de-duplication).
    pub risk_rounds_covered: u64,
}

fn rank(p: AlarmPriority) -> u8 {
    match p {
        AlarmPriority::High => 3,
        AlarmPriority::Medium => 2,
        AlarmPriority::Low => 1,
        _ => 0,
    }
}

fn matches_label(kind: ScenarioKind, alarm: AlarmKind) -> bool {
    match kind {
        ScenarioKind::SepsisDeterioration
        | ScenarioKind::RespiratoryFailureOnOxygen
        | ScenarioKind::Hypovolaemia => {
            matches!(
                alarm,
                AlarmKind::VitalThreshold | AlarmKind::News2Response | AlarmKind::DeteriorationRisk
            )
        }
        ScenarioKind::DripSpedUp => alarm == AlarmKind::InfusionTooFast,
        ScenarioKind::LineOccluded => matches!(
            alarm,
            AlarmKind::InfusionStopped | AlarmKind::InfusionTooSlow
        ),
        ScenarioKind::BagRunsEmpty => matches!(alarm, AlarmKind::InfusionNearCompletion),
        ScenarioKind::MotionArtifact
        | ScenarioKind::ProbeOff
        | ScenarioKind::TransientCoughOrTurn => {
            // Alarms about the disturbed signal; the deterioration model's risk looks at hours, not at the artefact.
            matches!(alarm, AlarmKind::VitalThreshold | AlarmKind::News2Response)
        }
    }
}

/// How long after an alarm is announced (or re-announced at a higher priority) the simulated nurse acknowledges
/// it. Without a nurse, a high-priority alarm latches until acknowledged and would stay up for the rest of the
/// simulated day, so a patient's second deterioration would never raise an alarm of its own. Five minutes is a
/// plausible ward response time (pediatric ward alarms: median about 10 min, Bonafide et al., J Hosp Med 2015). An
/// acknowledgement announces nothing: it lets an alarm end when its condition does, lets it settle at a lower
/// priority (so that a renewed worsening is announced again), and stops its escalation.
pub const NURSE_RESPONSE_MS: i64 = 5 * 60_000;

/// The edge models in the evaluation loop: scored synchronously at the simulated instant the engine asks (a live
/// edge answers within milliseconds on its scoring threads; here the answer is applied before the next event).
struct LoopModels {
    models: EdgeModels,
    runtime: tokio::runtime::Runtime,
    artifact_questions: u64,
    deterioration_rounds: u64,
}

impl LoopModels {
    /// Scores what the engine asked for and hands the answers back; returns what the engine produced.
    fn serve(&mut self, engine: &mut ClinicalEngine) -> Vec<Payload> {
        let work = engine.take_ml_work();
        let mut out = Vec::new();
        if work.is_empty() {
            return out;
        }
        if !work.artifact.is_empty() {
            self.artifact_questions += work.artifact.len() as u64;
            match self
                .runtime
                .block_on(self.models.score_artifact(work.artifact))
            {
                Ok(results) => out.extend(engine.on_artifact_results(results)),
                Err(e) => tracing::warn!(error = %e, "artifact verdicts not scored"),
            }
        }
        if let Some(request) = work.deterioration {
            self.deterioration_rounds += 1;
            match self
                .runtime
                .block_on(self.models.score_deterioration(request))
            {
                Ok(r) => out.extend(engine.on_deterioration_result(r)),
                Err(e) => {
                    engine.on_deterioration_failure();
                    tracing::warn!(error = %e, "deterioration round not scored");
                }
            }
        }
        out
    }
}

/// Runs the evaluation.
///
/// # Panics
/// If `cfg.models` is set and a model cannot be loaded (the evaluation would otherwise silently measure the
/// engine without it), or the scoring runtime cannot start.
pub fn run(cfg: &EvalConfig) -> EvalReport {
    let start = 1_800_000_000_000_i64;
    let horizon = i64::from(cfg.hours) * 3_600_000;
    let mix = RandomScenarioMix {
        horizon_ms: horizon,
        ..cfg.mix.clone().unwrap_or_default()
    };
    let mut sim = WardSimulator::new(WardSimConfig {
        ward: "7A".into(),
        beds: cfg.beds,
        seed: cfg.seed,
        start_unix_ms: start,
        random_scenarios: Some(mix),
        ..WardSimConfig::default()
    });
    let scale2: Vec<String> = sim
        .patients()
        .into_iter()
        .filter(|p| p.spo2_scale_2)
        .map(|p| p.patient_id)
        .collect();
    let thresholds = ThresholdConfig::default();
    let mut engine = ClinicalEngine::new(
        EngineConfig {
            spo2_scale_2_patients: scale2.clone(),
            ..EngineConfig::default()
        },
        "eval",
    );
    let mut models = cfg.models.as_ref().map(|m| {
        let models = EdgeModels::load(m);
        let status = models.status();
        assert!(
            !status.is_empty() && status.iter().all(|s| s.running),
            "the evaluation's models must run: {status:?}"
        );
        engine.set_models(models.settings(), status);
        LoopModels {
            models,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime for the scoring replies"),
            artifact_questions: 0,
            deterioration_rounds: 0,
        }
    });
    let models_running: Vec<String> = models.as_ref().map_or_else(Vec::new, |m| {
        [ARTIFACT_MODEL, DETERIORATION_MODEL]
            .iter()
            .filter_map(|n| m.models.running(n))
            .map(|id| id.to_string())
            .collect()
    });
    let mut order_patient: HashMap<String, String> = HashMap::new();
    let mut announced: Vec<Announced> = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let mut naive_state: HashMap<(String, String), bool> = HashMap::new();
    let mut naive_alarms = 0u64;
    let mut events = 0u64;
    // Announced alarms waiting for the simulated nurse: (due, alarm id).
    let mut acks: Vec<(i64, String)> = Vec::new();
    let record = |out: Vec<Payload>,
                  announced: &mut Vec<Announced>,
                  seen: &mut HashMap<String, usize>,
                  acks: &mut Vec<(i64, String)>| {
        for p in out {
            if let Payload::Alarm(a) = p {
                if a.state != AlarmState::Raised as i32 {
                    continue;
                }
                acks.push((a.changed_at_unix_ms + NURSE_RESPONSE_MS, a.alarm_id.clone()));
                let kind = AlarmKind::try_from(a.kind).unwrap_or(AlarmKind::Unspecified);
                let priority =
                    AlarmPriority::try_from(a.priority).unwrap_or(AlarmPriority::Unspecified);
                match seen.get(&a.alarm_id) {
                    Some(i) => {
                        if let Some(x) = announced.get_mut(*i)
                            && rank(priority) > rank(x.priority)
                        {
                            x.priority = priority;
                        }
                    }
                    None => {
                        seen.insert(a.alarm_id.clone(), announced.len());
                        let what = format!(
                            "{} {} {}",
                            kind.as_str_name(),
                            priority.as_str_name(),
                            a.message.split_whitespace().next().unwrap_or("")
                        );
                        announced.push(Announced {
                            what,
                            patient_id: a.patient_id.clone(),
                            kind,
                            priority,
                            at_unix_ms: a.changed_at_unix_ms,
                            alarm_id: a.alarm_id,
                        });
                    }
                }
            }
        }
    };
    let mut t = start;
    let end = start + horizon;
    let devices = sim.devices();
    for e in devices {
        let _ = engine.on_event(&e.idempotency_key, &e.payload);
    }
    while t < end {
        t += 1_000;
        for e in sim.advance_to(t) {
            events += 1;
            match &e.payload {
                Payload::Vital(v) => {
                    let scale_2 = scale2.contains(&v.patient_id);
                    if let Some((param, out)) = naive_out_of_range(v, scale_2, &thresholds) {
                        let k = (v.patient_id.clone(), format!("{param:?}"));
                        let was = naive_state.insert(k, out).unwrap_or(false);
                        if out && !was {
                            naive_alarms += 1;
                        }
                    }
                }
                Payload::Infusion(i) => {
                    order_patient.insert(i.order_id.clone(), i.patient_id.clone());
                }
                _ => {}
            }
            let out = engine.on_event(&e.idempotency_key, &e.payload);
            record(out, &mut announced, &mut seen_ids, &mut acks);
            if let Some(m) = models.as_mut() {
                let out = m.serve(&mut engine);
                record(out, &mut announced, &mut seen_ids, &mut acks);
            }
        }
        // The nurse acknowledges what was announced, once there (an alarm that ended meanwhile is unknown).
        let due: Vec<(i64, String)> = {
            let (due, later): (Vec<_>, Vec<_>) = acks.drain(..).partition(|(at, _)| *at <= t);
            acks = later;
            due
        };
        for (at, id) in due {
            if let Ok(out) = engine.acknowledge(&id, "eval-nurse", at) {
                record(out, &mut announced, &mut seen_ids, &mut acks);
            }
        }
        let out = engine.tick(t);
        record(out, &mut announced, &mut seen_ids, &mut acks);
        if let Some(m) = models.as_mut() {
            let out = m.serve(&mut engine);
            record(out, &mut announced, &mut seen_ids, &mut acks);
        }
    }
    let labels = sim
        .labels()
        .into_iter()
        .filter(|l| l.began_at_unix_ms < end)
        .map(|label| {
            let window_end = label.ended_at_unix_ms.unwrap_or(end).min(end) + 120_000;
            let matching: Vec<&Announced> = announced
                .iter()
                .filter(|a| a.patient_id == label.patient_id && matches_label(label.kind, a.kind))
                // An alarm already active at onset does not count for this label.
                .filter(|a| a.at_unix_ms >= label.began_at_unix_ms && a.at_unix_ms <= window_end)
                .collect();
            LabelOutcome {
                time_to_alarm_ms: matching
                    .iter()
                    .map(|a| a.at_unix_ms - label.began_at_unix_ms)
                    .min(),
                max_priority: matching.iter().map(|a| a.priority).max_by_key(|p| rank(*p)),
                label,
            }
        })
        .collect();
    let manager_physiological = announced
        .iter()
        .filter(|a| {
            matches!(
                a.kind,
                AlarmKind::VitalThreshold | AlarmKind::News2Response | AlarmKind::DeteriorationRisk
            )
        })
        .count() as u64;
    let risk_alarms = announced
        .iter()
        .filter(|a| a.kind == AlarmKind::DeteriorationRisk)
        .count() as u64;
    let mut by_what: BTreeMap<String, u64> = BTreeMap::new();
    for a in &announced {
        *by_what.entry(a.what.clone()).or_default() += 1;
    }
    let mut breakdown: Vec<(String, u64)> = by_what.into_iter().collect();
    breakdown.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    EvalReport {
        breakdown,
        config: cfg.clone(),
        manager_alarms: announced.len() as u64,
        manager_physiological,
        naive_alarms,
        labels,
        events,
        end_unix_ms: end,
        suppressed_transient: engine.alarm_stats().suppressed_transient,
        models_running,
        artifact_holds: engine.stats().artifact_holds + engine.stats().artifact_news2_holds,
        artifact_questions: models.as_ref().map_or(0, |m| m.artifact_questions),
        deterioration_rounds: models.as_ref().map_or(0, |m| m.deterioration_rounds),
        risk_alarms,
        risk_rounds_covered: engine.stats().risk_alarms_covered,
    }
}

fn median(mut v: Vec<i64>) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

impl EvalReport {
    /// Labels that should alarm at high priority but got no high-priority alarm.
    pub fn missed_high(&self) -> Vec<&LabelOutcome> {
        self.labels
            .iter()
            .filter(|l| {
                l.label.should_alarm && l.label.expected_priority == Some(AlarmPriority::High)
            })
            // The expected priority is due by the scenario's peak; a peak after the simulated period is not due.
            .filter(|l| {
                l.label
                    .peak_at_unix_ms
                    .is_none_or(|p| p <= self.end_unix_ms)
            })
            .filter(|l| l.max_priority != Some(AlarmPriority::High))
            .collect()
    }

    /// Reduction of physiological alarms against naive thresholds (0..1).
    pub fn reduction(&self) -> f64 {
        if self.naive_alarms == 0 {
            return 0.0;
        }
        1.0 - self.manager_physiological as f64 / self.naive_alarms as f64
    }

    /// Markdown report.
    pub fn markdown(&self) -> String {
        let days = f64::from(self.config.hours) / 24.0;
        let per_bed_day = |n: u64| n as f64 / f64::from(self.config.beds) / days;
        let mut s = String::new();
        s.push_str(&format!(
            "Simulated ward: {} beds × {} h, seed {}, {} events. Edge models in the loop: {}.\n\n",
            self.config.beds,
            self.config.hours,
            self.config.seed,
            self.events,
            if self.models_running.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} ({} artifact questions, {} held back; {} deterioration rounds, {} deterioration-risk \
                     alarms, {} rounds above the threshold covered by an announced NEWS2 response alarm)",
                    self.models_running.join(", "),
                    self.artifact_questions,
                    self.artifact_holds,
                    self.deterioration_rounds,
                    self.risk_alarms,
                    self.risk_rounds_covered
                )
            }
        ));
        s.push_str("| alarms | total | per bed per day |\n|---|---:|---:|\n");
        s.push_str(&format!(
            "| naive fixed thresholds (vital signs, every excursion) | {} | {:.1} |\n",
            self.naive_alarms,
            per_bed_day(self.naive_alarms)
        ));
        s.push_str(&format!(
            "| Wardwatch, physiological (vital thresholds + NEWS2{}) | {} | {:.1} |\n",
            if self.models_running.is_empty() {
                ""
            } else {
                " + deterioration model"
            },
            self.manager_physiological,
            per_bed_day(self.manager_physiological)
        ));
        s.push_str(&format!(
            "| Wardwatch, all (incl. infusion and technical) | {} | {:.1} |\n\n",
            self.manager_alarms,
            per_bed_day(self.manager_alarms)
        ));
        s.push_str(&format!(
            "Physiological alarms vs naive: **{:.0}% fewer**. Conditions suppressed as transient: {}.\n\n",
            self.reduction() * 100.0,
            self.suppressed_transient
        ));
        s.push_str(
            "| announced alarms by kind, first priority and message | count |\n|---|---:|\n",
        );
        for (what, n) in &self.breakdown {
            s.push_str(&format!("| {what} | {n} |\n"));
        }
        s.push('\n');
        s.push_str("| scenario | labelled | should alarm | alarmed | sensitivity | median time to alarm | reached expected priority |\n|---|---:|---:|---:|---:|---:|---:|\n");
        let mut by_kind: BTreeMap<&'static str, Vec<&LabelOutcome>> = BTreeMap::new();
        for l in &self.labels {
            by_kind.entry(l.label.kind.name()).or_default().push(l);
        }
        for (name, ls) in by_kind {
            let should = ls.iter().filter(|l| l.label.should_alarm).count();
            let alarmed = ls.iter().filter(|l| l.time_to_alarm_ms.is_some()).count();
            let tta = median(
                ls.iter()
                    .filter(|l| l.label.should_alarm)
                    .filter_map(|l| l.time_to_alarm_ms)
                    .collect(),
            );
            let reached = ls
                .iter()
                .filter(|l| l.label.should_alarm)
                .filter(|l| match (l.label.expected_priority, l.max_priority) {
                    (Some(e), Some(m)) => rank(m) >= rank(e),
                    (None, _) => true,
                    _ => false,
                })
                .count();
            let sens = if should > 0 {
                format!("{:.0}%", 100.0 * alarmed as f64 / should as f64)
            } else {
                "–".into()
            };
            s.push_str(&format!(
                "| {name} | {} | {should} | {alarmed} | {sens} | {} | {} |\n",
                ls.len(),
                tta.map_or("–".into(), |ms| format!("{:.0} s", ms as f64 / 1000.0)),
                if should > 0 {
                    format!("{reached}/{should}")
                } else {
                    "–".into()
                }
            ));
        }
        let missed = self.missed_high();
        s.push_str(&format!(
            "\nLabelled high-priority events missed: **{}**.\n",
            missed.len()
        ));
        for m in missed {
            s.push_str(&format!("- missed: {}\n", m.label.description));
        }
        s
    }
}
