//! The subscription topics Wardwatch offers, and which synced events trigger them.
//!
//! Topics are fixed in code. Each has an id (its canonical URL is `[base]/SubscriptionTopic/<id>`), the resource
//! type of its focus, and the filters a subscription may set. [`triggers`] reads one synced event and says which
//! topics it may trigger; it is pure, so the ingest transaction can call it for every event it stores. The NEWS2
//! topic also needs the patient's previous response level, which the storage keeps (see
//! `storage::subscriptions`).

use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::risk_score::Score;
use wardwatch_proto::v1::{AlarmKind, AlarmPriority, AlarmState, News2Response};

/// Resource type of the FHIR resource an alarm maps to (its focus in notifications).
pub const ALARM_FOCUS_TYPE: &str = "DetectedIssue";
/// Resource type of a NEWS2 score (an Observation).
pub const NEWS2_FOCUS_TYPE: &str = "Observation";

/// A topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A high-priority alarm is raised (or an alarm escalates to high priority).
    HighPriorityAlarm,
    /// A patient's NEWS2 response level rises to medium (aggregate 5-6 or a 3 in one parameter) or high (7+).
    News2Response,
    /// An infusion alarm: near completion, stopped or occluded, too fast, too slow, completed.
    InfusionEvent,
}

/// A filter parameter of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterSpec {
    /// Name, as in `backport-filter-criteria` (`<Type>?<name>=<value>`).
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Allowed values, when the set is closed.
    pub values: &'static [&'static str],
}

const PATIENT: FilterSpec = FilterSpec {
    name: "patient",
    description: "Only events of this patient (MRN, with or without Patient/).",
    values: &[],
};
const WARD: FilterSpec = FilterSpec {
    name: "ward",
    description: "Only events of this ward.",
    values: &[],
};
const NEWS2_LEVEL: FilterSpec = FilterSpec {
    name: "level",
    description: "medium (default): rises to medium or high; high: rises to high only.",
    values: &["medium", "high"],
};
/// The infusion event codes, also the `event` filter's values.
pub const INFUSION_EVENTS: &[&str] = &[
    "near-completion",
    "stopped",
    "too-fast",
    "too-slow",
    "completed",
];
const INFUSION_EVENT: FilterSpec = FilterSpec {
    name: "event",
    description: "Only this infusion event: near-completion, stopped, too-fast, too-slow or completed.",
    values: INFUSION_EVENTS,
};

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 3] = [
        Topic::HighPriorityAlarm,
        Topic::News2Response,
        Topic::InfusionEvent,
    ];

    /// Its id (stored, and the last segment of its canonical URL).
    pub fn id(self) -> &'static str {
        match self {
            Self::HighPriorityAlarm => "high-priority-alarm",
            Self::News2Response => "news2-response",
            Self::InfusionEvent => "infusion-event",
        }
    }

    /// The topic with this id.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Its canonical URL on a server whose FHIR base is `base`.
    pub fn canonical(self, base: &str) -> String {
        format!("{base}/SubscriptionTopic/{}", self.id())
    }

    /// Title.
    pub fn title(self) -> &'static str {
        match self {
            Self::HighPriorityAlarm => "New high-priority alarm",
            Self::News2Response => "NEWS2 reaches a clinical response threshold",
            Self::InfusionEvent => "Infusion event",
        }
    }

    /// Description.
    pub fn description(self) -> &'static str {
        match self {
            Self::HighPriorityAlarm => {
                "An alarm of high priority (IEC 60601-1-8) is raised at the bedside, or an alarm is escalated to high priority. Focus: the alarm."
            }
            Self::News2Response => {
                "A patient's NEWS2 clinical response level rises to medium (aggregate 5-6, or 3 in a single parameter) or to high (aggregate 7 or more), RCP 2017. Focus: the NEWS2 Observation."
            }
            Self::InfusionEvent => {
                "An infusion alarm is raised: near completion, stopped or occluded, running too fast or too slow, or completed. Focus: the alarm."
            }
        }
    }

    /// The resource type of its focus.
    pub fn focus_type(self) -> &'static str {
        match self {
            Self::HighPriorityAlarm | Self::InfusionEvent => ALARM_FOCUS_TYPE,
            Self::News2Response => NEWS2_FOCUS_TYPE,
        }
    }

    /// The filters it accepts.
    pub fn filters(self) -> &'static [FilterSpec] {
        match self {
            Self::HighPriorityAlarm => &[PATIENT, WARD],
            Self::News2Response => &[PATIENT, WARD, NEWS2_LEVEL],
            Self::InfusionEvent => &[PATIENT, WARD, INFUSION_EVENT],
        }
    }
}

/// What one synced event means for a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The topic.
    pub topic: Topic,
    /// The patient (MRN), if any.
    pub patient: Option<String>,
    /// The ward.
    pub ward: Option<String>,
    /// Infusion event code (infusion topic) or NEWS2 level (`medium`/`high`).
    pub event: Option<&'static str>,
    /// Focus resource type.
    pub focus_type: &'static str,
    /// Focus resource id.
    pub focus_id: String,
    /// When it happened, Unix ms.
    pub occurred_at_ms: i64,
    /// NEWS2 only: the response level of this score (0, 1 medium, 2 high); fires only when it rises.
    pub news2_level: Option<i64>,
}

/// The FHIR id of the resource an alarm maps to: stable across the alarm's state changes.
pub fn alarm_focus_id(alarm_id: &str) -> String {
    alarm_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// The FHIR id of the Observation a NEWS2 score synced as `(edge, sequence)` maps to.
pub fn news2_focus_id(edge_id: &str, sequence: u64) -> String {
    format!("{edge_id}.{sequence}")
}

/// The NEWS2 response level as the topic counts it: 0 below medium, 1 medium, 2 high.
pub fn news2_level(r: News2Response) -> i64 {
    match r {
        News2Response::High => 2,
        News2Response::Medium | News2Response::LowMedium => 1,
        _ => 0,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The topics `payload` (synced by `edge_id` under `sequence`) may trigger. A NEWS2 score is returned with its
/// level whatever that level is: whether it fires depends on the previous level, which only storage knows.
pub fn triggers(edge_id: &str, sequence: u64, payload: &Payload) -> Vec<Trigger> {
    let mut out = Vec::new();
    match payload {
        Payload::Alarm(a) => {
            let ward = a.location.as_ref().and_then(|l| non_empty(&l.ward));
            let state = AlarmState::try_from(a.state).unwrap_or(AlarmState::Unspecified);
            let priority =
                AlarmPriority::try_from(a.priority).unwrap_or(AlarmPriority::Unspecified);
            let base = Trigger {
                topic: Topic::HighPriorityAlarm,
                patient: non_empty(&a.patient_id),
                ward,
                event: None,
                focus_type: ALARM_FOCUS_TYPE,
                focus_id: alarm_focus_id(&a.alarm_id),
                occurred_at_ms: a.changed_at_unix_ms,
                news2_level: None,
            };
            if priority == AlarmPriority::High
                && matches!(state, AlarmState::Raised | AlarmState::Escalated)
            {
                out.push(base.clone());
            }
            let infusion = match AlarmKind::try_from(a.kind).unwrap_or(AlarmKind::Unspecified) {
                AlarmKind::InfusionNearCompletion => Some("near-completion"),
                AlarmKind::InfusionStopped => Some("stopped"),
                AlarmKind::InfusionTooFast => Some("too-fast"),
                AlarmKind::InfusionTooSlow => Some("too-slow"),
                AlarmKind::InfusionCompleted => Some("completed"),
                _ => None,
            };
            if let Some(ev) = infusion
                && state == AlarmState::Raised
            {
                out.push(Trigger {
                    topic: Topic::InfusionEvent,
                    event: Some(ev),
                    ..base
                });
            }
        }
        Payload::Risk(r) => {
            if let Some(Score::News2(n)) = &r.score {
                let level = news2_level(
                    News2Response::try_from(n.response).unwrap_or(News2Response::Unspecified),
                );
                out.push(Trigger {
                    topic: Topic::News2Response,
                    patient: non_empty(&r.patient_id),
                    ward: r.location.as_ref().and_then(|l| non_empty(&l.ward)),
                    event: match level {
                        2 => Some("high"),
                        1 => Some("medium"),
                        _ => None,
                    },
                    focus_type: NEWS2_FOCUS_TYPE,
                    focus_id: news2_focus_id(edge_id, sequence),
                    occurred_at_ms: r.computed_at_unix_ms,
                    news2_level: Some(level),
                });
            }
        }
        Payload::Vital(_) | Payload::Infusion(_) | Payload::Device(_) | Payload::Spo2Scale(_) => {}
    }
    out
}

/// Whether a subscription's filters (`None`: any) let `t` through. The NEWS2 `level` filter `high` passes only
/// a rise to high; `medium` (or none) passes any rise.
pub fn filters_pass(
    t: &Trigger,
    patient: Option<&str>,
    ward: Option<&str>,
    event: Option<&str>,
) -> bool {
    let eq =
        |want: Option<&str>, have: &Option<String>| want.is_none_or(|w| have.as_deref() == Some(w));
    let event_ok = match (t.topic, event) {
        (_, None) => true,
        (Topic::News2Response, Some("medium")) => true,
        (_, Some(e)) => t.event == Some(e),
    };
    eq(patient, &t.patient) && eq(ward, &t.ward) && event_ok
}

#[cfg(test)]
mod tests {
    use wardwatch_proto::v1::{Alarm, BedLocation, News2, RiskScore};

    use super::*;

    fn alarm(kind: AlarmKind, priority: AlarmPriority, state: AlarmState) -> Payload {
        Payload::Alarm(Alarm {
            alarm_id: "7A-alarm-3".into(),
            kind: kind as i32,
            priority: priority as i32,
            state: state as i32,
            patient_id: "SIM000001".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            }),
            changed_at_unix_ms: 5,
            ..Default::default()
        })
    }

    #[test]
    fn high_alarms_and_infusion_alarms_trigger_their_topics() {
        let t = triggers(
            "e",
            1,
            &alarm(
                AlarmKind::VitalThreshold,
                AlarmPriority::High,
                AlarmState::Raised,
            ),
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].topic, Topic::HighPriorityAlarm);
        assert_eq!(t[0].focus_id, "7A-alarm-3");
        assert!(
            triggers(
                "e",
                1,
                &alarm(
                    AlarmKind::VitalThreshold,
                    AlarmPriority::Medium,
                    AlarmState::Raised
                )
            )
            .is_empty()
        );
        assert!(
            triggers(
                "e",
                1,
                &alarm(
                    AlarmKind::VitalThreshold,
                    AlarmPriority::High,
                    AlarmState::Cleared
                )
            )
            .is_empty(),
            "clearing is not a new alarm"
        );
        let t = triggers(
            "e",
            1,
            &alarm(
                AlarmKind::InfusionNearCompletion,
                AlarmPriority::Low,
                AlarmState::Raised,
            ),
        );
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].topic, t[0].event),
            (Topic::InfusionEvent, Some("near-completion"))
        );
        assert!(filters_pass(
            &t[0],
            Some("SIM000001"),
            Some("7A"),
            Some("near-completion")
        ));
        assert!(!filters_pass(&t[0], Some("SIM000002"), None, None));
        assert!(!filters_pass(&t[0], None, None, Some("stopped")));
    }

    #[test]
    fn news2_scores_carry_their_level() {
        let p = Payload::Risk(RiskScore {
            patient_id: "SIM1".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "2".into(),
            }),
            computed_at_unix_ms: 9,
            score: Some(Score::News2(News2 {
                total: 7,
                response: News2Response::High as i32,
                ..Default::default()
            })),
            ..Default::default()
        });
        let t = triggers("edge-1", 42, &p);
        assert_eq!(t[0].news2_level, Some(2));
        assert_eq!(t[0].focus_id, "edge-1.42");
        assert!(filters_pass(&t[0], None, None, Some("high")));
        assert!(filters_pass(&t[0], None, None, Some("medium")));
        assert_eq!(news2_level(News2Response::LowMedium), 1);
        assert_eq!(news2_level(News2Response::Low), 0);
    }
}
