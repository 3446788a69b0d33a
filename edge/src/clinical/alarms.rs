//! Alarm management that fights alarm fatigue.
//!
//! Detectors (vital thresholds, NEWS2, infusion safety, technical checks) report *conditions*: a key, a
//! priority and whether the condition holds now. The [`AlarmManager`] turns them into alarms nurses can trust:
//!
//! | rule | behaviour |
//! |---|---|
//! | priorities | IEC 60601-1-8 high / medium / low (+ technical alarms using the same levels) |
//! | high priority | raised immediately, **latched**: stays until acknowledged even if the condition ends |
//! | medium / low | raised only if the condition persists for the configured delay; a condition that ends within the delay is suppressed and counted (most transient alarms end within seconds) |
//! | de-duplication | one alarm per condition key while it is active; a worse priority upgrades the same alarm |
//! | acknowledge | records who; the alarm clears once the condition has ended |
//! | de-escalation | an acknowledged alarm whose condition has reported only lower priorities for [`AlarmPolicy::deescalate_acknowledged_after_ms`] takes the highest of them, silently, so that a renewed worsening announces it again; an unacknowledged alarm never lowers its priority |
//! | silence | pauses the announcement for a bounded time; re-announced if still active and unacknowledged |
//! | escalation | unacknowledged after the per-priority delay → escalated (once) |
//! | hold back | a pending medium/low condition may be held back for a bounded time (the artifact model judged its signal implausible, see [`AlarmManager::hold`]); it is announced when the hold ends if it still holds. A high-priority condition is never held: `hold` refuses it, and a held condition that becomes high is announced at once |
//!
//! Every state change is returned as a `wardwatch_proto::v1::Alarm` event, which the engine appends to the
//! outbox so it syncs to the cloud. Pure logic: time is passed in.
//!
//! This is decision support built on published alarm-management practice; it is not clinically validated.

use std::collections::HashMap;

use wardwatch_proto::v1::{Alarm, AlarmKind, AlarmPriority, AlarmState, BedLocation};

/// Delays and timeouts of the alarm policy.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmPolicy {
    /// A medium-priority condition must persist this long before it is announced.
    pub medium_delay_ms: i64,
    /// A low-priority condition must persist this long before it is announced.
    pub low_delay_ms: i64,
    /// Escalate a high-priority alarm not acknowledged within this time.
    pub escalate_high_after_ms: i64,
    /// Escalate a medium-priority alarm not acknowledged within this time.
    pub escalate_medium_after_ms: i64,
    /// Escalate a low-priority alarm not acknowledged within this time (0 = never).
    pub escalate_low_after_ms: i64,
    /// Longest silence a user may ask for.
    pub max_silence_ms: i64,
    /// An acknowledged alarm whose condition has reported only lower priorities for this long takes the highest
    /// of them (silently), so that a renewed worsening announces it again: a nurse who acknowledged a patient's
    /// NEWS2 7 hears it again when the score returns to 7 after hours at 5. Announced, unacknowledged alarms
    /// never lower their priority (a high-priority alarm latches until acknowledged).
    pub deescalate_acknowledged_after_ms: i64,
}

impl Default for AlarmPolicy {
    fn default() -> Self {
        Self {
            // 15 s: the delay shown to cut low-SpO2 alarms by about 60 % (see clinical-reference.md).
            medium_delay_ms: 15_000,
            low_delay_ms: 30_000,
            escalate_high_after_ms: 60_000,
            escalate_medium_after_ms: 180_000,
            escalate_low_after_ms: 0,
            max_silence_ms: 120_000,
            // As long as NEWS2's clear hold: a flicker to a lower level is not a settled improvement.
            deescalate_acknowledged_after_ms: 15 * 60_000,
        }
    }
}

impl AlarmPolicy {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("medium_delay_ms", self.medium_delay_ms),
            ("low_delay_ms", self.low_delay_ms),
            ("escalate_high_after_ms", self.escalate_high_after_ms),
            ("escalate_medium_after_ms", self.escalate_medium_after_ms),
            ("escalate_low_after_ms", self.escalate_low_after_ms),
            (
                "deescalate_acknowledged_after_ms",
                self.deescalate_acknowledged_after_ms,
            ),
        ] {
            if !(0..=3_600_000).contains(&v) {
                return Err(format!("alarms.{name} must be 0..=3600000 ms"));
            }
        }
        if !(1_000..=600_000).contains(&self.max_silence_ms) {
            return Err("alarms.max_silence_ms must be 1000..=600000".into());
        }
        Ok(())
    }

    fn delay(&self, p: AlarmPriority) -> i64 {
        match p {
            AlarmPriority::High => 0,
            AlarmPriority::Medium => self.medium_delay_ms,
            _ => self.low_delay_ms,
        }
    }

    fn escalate_after(&self, p: AlarmPriority) -> i64 {
        match p {
            AlarmPriority::High => self.escalate_high_after_ms,
            AlarmPriority::Medium => self.escalate_medium_after_ms,
            _ => self.escalate_low_after_ms,
        }
    }
}

/// What a condition is about: unique per alarm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConditionKey {
    /// Patient MRN, device id or edge id the condition concerns.
    pub scope: String,
    /// Alarm kind.
    pub kind: i32,
    /// Distinguishes conditions of the same kind (e.g. "spo2-low", an order id).
    pub detail: String,
}

/// A detector's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Which condition.
    pub key: ConditionKey,
    /// How urgent, if active.
    pub priority: AlarmPriority,
    /// Whether it holds now.
    pub active: bool,
    /// What the nurse reads.
    pub message: String,
    /// Patient MRN ("" for technical alarms not tied to a patient).
    pub patient_id: String,
    /// Ward and bed.
    pub location: BedLocation,
    /// Device concerned, if any.
    pub device_id: String,
    /// When observed.
    pub at_unix_ms: i64,
}

/// Where an alarm is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Condition seen, waiting out the delay (not announced).
    Pending {
        /// When the condition started.
        since: i64,
    },
    /// Announced.
    Raised,
    /// Announced, announcement paused until `until`.
    Silenced {
        /// End of the silence.
        until: i64,
    },
    /// Acknowledged by a user; clears when the condition ends.
    Acknowledged,
}

/// An alarm as the nurse station shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmView {
    /// Stable id across state changes.
    pub alarm_id: String,
    /// Condition key.
    pub key: ConditionKey,
    /// Current priority.
    pub priority: AlarmPriority,
    /// Phase.
    pub phase: Phase,
    /// Whether the condition still holds (false for a latched high alarm whose cause ended).
    pub condition_active: bool,
    /// Whether it was escalated.
    pub escalated: bool,
    /// Message.
    pub message: String,
    /// Patient MRN.
    pub patient_id: String,
    /// Location.
    pub location: BedLocation,
    /// When announced.
    pub raised_at_unix_ms: i64,
    /// Who acknowledged, if anyone.
    pub acknowledged_by: Option<String>,
}

#[derive(Debug, Clone)]
struct Record {
    view: AlarmView,
    device_id: String,
    since: i64,
    /// Held back (not announced) before this time, unless the priority is high.
    held_until: Option<i64>,
    /// Latest time any renewal of the hold may reach, fixed by the first hold: holds delay an alarm by a bounded
    /// time and never silence it.
    hold_cap: Option<i64>,
    /// For an acknowledged alarm: since when its condition has reported only priorities below the alarm's, and the
    /// highest of them (see [`AlarmPolicy::deescalate_acknowledged_after_ms`]).
    lower_since: Option<(i64, AlarmPriority)>,
}

impl Record {
    /// Whether a pending alarm may be announced at `now` as far as holds go: high priority always may.
    fn hold_allows(&self, now: i64) -> bool {
        self.view.priority == AlarmPriority::High || self.held_until.is_none_or(|u| now >= u)
    }
}

/// Counters for evaluation and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmStats {
    /// Alarms announced.
    pub raised: u64,
    /// Conditions that ended within their delay and were never announced.
    pub suppressed_transient: u64,
    /// Priority upgrades of an active alarm.
    pub upgraded: u64,
    /// Escalations.
    pub escalated: u64,
    /// Acknowledgements.
    pub acknowledged: u64,
    /// Alarms cleared.
    pub cleared: u64,
    /// Holds applied to pending medium/low conditions (artifact verdicts).
    pub held_back: u64,
    /// Held conditions that ended while held, never announced.
    pub held_back_suppressed: u64,
    /// Holds extended by a later artifact verdict (within the first hold's cap).
    pub hold_renewals: u64,
    /// Acknowledged alarms that took a lower priority after their condition settled below it.
    pub deescalated: u64,
}

/// Errors of user actions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmActionError {
    /// No such alarm (or already cleared).
    #[error("no active alarm {0}")]
    Unknown(String),
    /// The alarm is still pending (not announced).
    #[error("alarm {0} has not been announced")]
    NotAnnounced(String),
    /// Silence longer than allowed.
    #[error("silence of {asked} ms exceeds the maximum of {max} ms")]
    SilenceTooLong {
        /// Asked.
        asked: i64,
        /// Allowed.
        max: i64,
    },
}

/// The alarm manager of one edge node.
#[derive(Debug)]
pub struct AlarmManager {
    /// Policy in effect.
    policy: AlarmPolicy,
    /// Alarms by condition key (pending ones included).
    records: HashMap<ConditionKey, Record>,
    /// Counter for alarm ids.
    next_id: u64,
    /// Prefix of alarm ids (the edge id), so ids are unique across edges.
    id_prefix: String,
    /// Counters.
    stats: AlarmStats,
}

fn priority_rank(p: AlarmPriority) -> u8 {
    match p {
        AlarmPriority::High => 3,
        AlarmPriority::Medium => 2,
        AlarmPriority::Low => 1,
        _ => 0,
    }
}

impl AlarmManager {
    /// A manager with `policy`; alarm ids start with `id_prefix`.
    pub fn new(policy: AlarmPolicy, id_prefix: &str) -> Self {
        Self {
            policy,
            records: HashMap::new(),
            next_id: 1,
            id_prefix: id_prefix.to_string(),
            stats: AlarmStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> AlarmStats {
        self.stats
    }

    /// The policy.
    pub fn policy(&self) -> &AlarmPolicy {
        &self.policy
    }

    fn event(r: &Record, state: AlarmState, at: i64, by: &str) -> Alarm {
        Alarm {
            alarm_id: r.view.alarm_id.clone(),
            kind: r.view.key.kind,
            priority: r.view.priority as i32,
            state: state as i32,
            patient_id: r.view.patient_id.clone(),
            location: Some(r.view.location.clone()),
            device_id: r.device_id.clone(),
            message: r.view.message.clone(),
            changed_at_unix_ms: at,
            changed_by: by.to_string(),
        }
    }

    fn announce(&mut self, key: &ConditionKey, at: i64, out: &mut Vec<Alarm>) {
        if let Some(r) = self.records.get_mut(key) {
            r.view.phase = Phase::Raised;
            r.view.raised_at_unix_ms = at;
            self.stats.raised += 1;
            out.push(Self::event(r, AlarmState::Raised, at, "system"));
        }
    }

    /// Feeds one detector report; returns the alarm state changes it causes.
    pub fn update(&mut self, c: Condition) -> Vec<Alarm> {
        let mut out = Vec::new();
        let at = c.at_unix_ms;
        match (self.records.get_mut(&c.key), c.active) {
            (None, false) => {}
            (None, true) => {
                let id = format!("{}-alarm-{}", self.id_prefix, self.next_id);
                self.next_id += 1;
                let record = Record {
                    view: AlarmView {
                        alarm_id: id,
                        key: c.key.clone(),
                        priority: c.priority,
                        phase: Phase::Pending { since: at },
                        condition_active: true,
                        escalated: false,
                        message: c.message,
                        patient_id: c.patient_id,
                        location: c.location,
                        raised_at_unix_ms: 0,
                        acknowledged_by: None,
                    },
                    device_id: c.device_id,
                    since: at,
                    held_until: None,
                    hold_cap: None,
                    lower_since: None,
                };
                self.records.insert(c.key.clone(), record);
                if self.policy.delay(c.priority) == 0 {
                    self.announce(&c.key, at, &mut out);
                }
            }
            (Some(r), true) => {
                r.view.condition_active = true;
                r.view.message = c.message;
                let upgraded = priority_rank(c.priority) > priority_rank(r.view.priority);
                if upgraded {
                    r.view.priority = c.priority;
                }
                if r.view.phase == Phase::Acknowledged
                    && priority_rank(c.priority) < priority_rank(r.view.priority)
                {
                    let (since, highest) = match r.lower_since {
                        Some((since, p)) if priority_rank(p) >= priority_rank(c.priority) => {
                            (since, p)
                        }
                        Some((since, _)) => (since, c.priority),
                        None => (at, c.priority),
                    };
                    if at - since >= self.policy.deescalate_acknowledged_after_ms {
                        self.stats.deescalated += 1;
                        r.view.priority = highest;
                        r.lower_since = None;
                    } else {
                        r.lower_since = Some((since, highest));
                    }
                } else {
                    r.lower_since = None;
                }
                // Not collapsed into a match guard: a pending alarm that is not yet due must not fall through to
                // the upgrade arm.
                #[allow(clippy::collapsible_match)]
                match r.view.phase {
                    Phase::Pending { since } => {
                        if at - since >= self.policy.delay(r.view.priority) && r.hold_allows(at) {
                            self.announce(&c.key, at, &mut out);
                        }
                    }
                    _ if upgraded => {
                        // A worse condition re-announces the same alarm at the new priority, even if
                        // acknowledged or silenced at the old one.
                        self.stats.upgraded += 1;
                        r.view.phase = Phase::Raised;
                        r.view.acknowledged_by = None;
                        r.view.raised_at_unix_ms = at;
                        out.push(Self::event(r, AlarmState::Raised, at, "system"));
                    }
                    _ => {}
                }
            }
            (Some(r), false) => {
                r.view.condition_active = false;
                match r.view.phase {
                    Phase::Pending { .. } => {
                        self.stats.suppressed_transient += 1;
                        if r.held_until.is_some() {
                            self.stats.held_back_suppressed += 1;
                        }
                        self.records.remove(&c.key);
                    }
                    Phase::Raised | Phase::Silenced { .. }
                        if r.view.priority == AlarmPriority::High =>
                    {
                        // Latched: stays until acknowledged.
                    }
                    _ => {
                        self.stats.cleared += 1;
                        out.push(Self::event(r, AlarmState::Cleared, at, "system"));
                        self.records.remove(&c.key);
                    }
                }
            }
        }
        out
    }

    /// Advances time: announces conditions that outlasted their delay, ends silences, escalates.
    pub fn tick(&mut self, now: i64) -> Vec<Alarm> {
        let mut out = Vec::new();
        let mut keys: Vec<ConditionKey> = self.records.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let Some(r) = self.records.get_mut(&key) else {
                continue;
            };
            match r.view.phase {
                Phase::Pending { since }
                    if r.view.condition_active
                        && now - since >= self.policy.delay(r.view.priority)
                        && r.hold_allows(now) =>
                {
                    self.announce(&key, now, &mut out);
                }
                Phase::Silenced { until } if now >= until => {
                    r.view.phase = Phase::Raised;
                    out.push(Self::event(r, AlarmState::Raised, now, "system"));
                }
                _ => {}
            }
            let Some(r) = self.records.get_mut(&key) else {
                continue;
            };
            let after = self.policy.escalate_after(r.view.priority);
            if matches!(r.view.phase, Phase::Raised | Phase::Silenced { .. })
                && !r.view.escalated
                && after > 0
                && now - r.view.raised_at_unix_ms >= after
            {
                r.view.escalated = true;
                self.stats.escalated += 1;
                out.push(Self::event(r, AlarmState::Escalated, now, "system"));
            }
        }
        out
    }

    fn find(&mut self, alarm_id: &str) -> Option<ConditionKey> {
        self.records
            .iter()
            .find(|(_, r)| r.view.alarm_id == alarm_id)
            .map(|(k, _)| k.clone())
    }

    /// A user acknowledges an announced alarm.
    pub fn acknowledge(
        &mut self,
        alarm_id: &str,
        user: &str,
        now: i64,
    ) -> Result<Vec<Alarm>, AlarmActionError> {
        let key = self
            .find(alarm_id)
            .ok_or_else(|| AlarmActionError::Unknown(alarm_id.into()))?;
        let Some(r) = self.records.get_mut(&key) else {
            return Err(AlarmActionError::Unknown(alarm_id.into()));
        };
        if matches!(r.view.phase, Phase::Pending { .. }) {
            return Err(AlarmActionError::NotAnnounced(alarm_id.into()));
        }
        let mut out = Vec::new();
        if r.view.phase != Phase::Acknowledged {
            r.view.phase = Phase::Acknowledged;
            r.view.acknowledged_by = Some(user.to_string());
            self.stats.acknowledged += 1;
            out.push(Self::event(r, AlarmState::Acknowledged, now, user));
        }
        if !r.view.condition_active {
            self.stats.cleared += 1;
            out.push(Self::event(r, AlarmState::Cleared, now, user));
            self.records.remove(&key);
        }
        Ok(out)
    }

    /// A user silences an announced alarm for `duration_ms` (bounded by the policy).
    pub fn silence(
        &mut self,
        alarm_id: &str,
        user: &str,
        now: i64,
        duration_ms: i64,
    ) -> Result<Vec<Alarm>, AlarmActionError> {
        if duration_ms <= 0 || duration_ms > self.policy.max_silence_ms {
            return Err(AlarmActionError::SilenceTooLong {
                asked: duration_ms,
                max: self.policy.max_silence_ms,
            });
        }
        let key = self
            .find(alarm_id)
            .ok_or_else(|| AlarmActionError::Unknown(alarm_id.into()))?;
        let Some(r) = self.records.get_mut(&key) else {
            return Err(AlarmActionError::Unknown(alarm_id.into()));
        };
        match r.view.phase {
            Phase::Pending { .. } => Err(AlarmActionError::NotAnnounced(alarm_id.into())),
            Phase::Acknowledged => Ok(Vec::new()),
            Phase::Raised | Phase::Silenced { .. } => {
                r.view.phase = Phase::Silenced {
                    until: now + duration_ms,
                };
                Ok(vec![Self::event(r, AlarmState::Silenced, now, user)])
            }
        }
    }

    /// Holds back the pending condition `key` until `until` (announcing it no earlier, if it still holds then).
    /// Returns whether a hold was applied or extended: only a pending medium- or low-priority condition can be
    /// held, never a high-priority one, never an alarm already announced. The first hold fixes `cap`; a later
    /// verdict may extend the hold up to that cap, never past it, so a hold delays an alarm by a bounded time and
    /// never silences it.
    pub fn hold(&mut self, key: &ConditionKey, until: i64, cap: i64) -> bool {
        let Some(r) = self.records.get_mut(key) else {
            return false;
        };
        if r.view.priority == AlarmPriority::High
            || !matches!(r.view.phase, Phase::Pending { .. })
            || !r.view.condition_active
        {
            return false;
        }
        match (r.held_until, r.hold_cap) {
            (None, _) => {
                r.held_until = Some(until.min(cap));
                r.hold_cap = Some(cap);
                self.stats.held_back += 1;
                true
            }
            (Some(held), Some(cap)) if until.min(cap) > held => {
                r.held_until = Some(until.min(cap));
                self.stats.hold_renewals += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether `key` is a pending, active medium- or low-priority condition whose hold could still start or be
    /// renewed (its cap not yet reached): one an artifact verdict could hold back (at `now`, not before the
    /// condition started).
    pub fn holdable(&self, key: &ConditionKey, now: i64) -> bool {
        self.records.get(key).is_some_and(|r| {
            matches!(r.view.phase, Phase::Pending { .. })
                && r.view.condition_active
                && r.view.priority != AlarmPriority::High
                && match (r.held_until, r.hold_cap) {
                    (None, _) => true,
                    (Some(held), Some(cap)) => held < cap,
                    (Some(_), None) => false,
                }
                && now >= r.since
        })
    }

    /// Until when a pending condition is held back, if it is.
    pub fn held_until(&self, key: &ConditionKey) -> Option<i64> {
        self.records.get(key).and_then(|r| match r.view.phase {
            Phase::Pending { .. } if r.view.priority != AlarmPriority::High => r.held_until,
            _ => None,
        })
    }

    /// Whether the condition `key` is pending (seen, not yet announced).
    pub fn is_pending(&self, key: &ConditionKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| matches!(r.view.phase, Phase::Pending { .. }))
    }

    /// The priority of the alarm behind `key` if it is announced (raised, silenced or acknowledged) and its
    /// condition still holds; `None` when it is pending, latched after its cause ended, or not tracked.
    pub fn announced_priority(&self, key: &ConditionKey) -> Option<AlarmPriority> {
        self.records
            .get(key)
            .filter(|r| r.view.condition_active && !matches!(r.view.phase, Phase::Pending { .. }))
            .map(|r| r.view.priority)
    }

    /// Announced alarms (pending ones excluded), most urgent first, then oldest first.
    pub fn active(&self) -> Vec<AlarmView> {
        let mut v: Vec<AlarmView> = self
            .records
            .values()
            .filter(|r| !matches!(r.view.phase, Phase::Pending { .. }))
            .map(|r| r.view.clone())
            .collect();
        v.sort_by(|a, b| {
            priority_rank(b.priority)
                .cmp(&priority_rank(a.priority))
                .then(a.raised_at_unix_ms.cmp(&b.raised_at_unix_ms))
                .then(a.alarm_id.cmp(&b.alarm_id))
        });
        v
    }

    /// When the condition behind `key` started (pending or announced), if tracked.
    pub fn since(&self, key: &ConditionKey) -> Option<i64> {
        self.records.get(key).map(|r| r.since)
    }
}

/// Convenience: a condition key.
pub fn key(scope: &str, kind: AlarmKind, detail: &str) -> ConditionKey {
    ConditionKey {
        scope: scope.to_string(),
        kind: kind as i32,
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(detail: &str, p: AlarmPriority, active: bool, at: i64) -> Condition {
        Condition {
            key: key("MRN1", AlarmKind::VitalThreshold, detail),
            priority: p,
            active,
            message: format!("{detail} at {at}"),
            patient_id: "MRN1".into(),
            location: BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            },
            device_id: "mon-1".into(),
            at_unix_ms: at,
        }
    }

    fn states(v: &[Alarm]) -> Vec<AlarmState> {
        v.iter()
            .map(|a| AlarmState::try_from(a.state).unwrap_or(AlarmState::Unspecified))
            .collect()
    }

    #[test]
    fn a_held_medium_condition_waits_for_its_hold_and_a_high_one_is_never_held() {
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        assert!(
            m.update(cond("spo2-low", AlarmPriority::Medium, true, 0))
                .is_empty()
        );
        let k = key("MRN1", AlarmKind::VitalThreshold, "spo2-low");
        assert!(m.hold(&k, 30_000, 50_000));
        assert_eq!(m.held_until(&k), Some(30_000));
        assert!(m.holdable(&k, 10_000), "renewable up to its cap");
        // A later verdict extends the hold, never past the first hold's cap (a later cap does not move it).
        assert!(
            !m.hold(&k, 25_000, 90_000),
            "a shorter hold changes nothing"
        );
        assert!(m.hold(&k, 40_000, 90_000));
        assert_eq!(m.held_until(&k), Some(40_000));
        assert!(m.hold(&k, 70_000, 120_000));
        assert_eq!(m.held_until(&k), Some(50_000), "capped");
        assert!(!m.holdable(&k, 45_000), "at its cap");
        assert!(!m.hold(&k, 80_000, 200_000));
        // Past the 15 s delay but inside the hold: not announced.
        assert!(m.tick(20_000).is_empty());
        assert!(m.tick(49_999).is_empty());
        // The hold ends at its cap and the condition still holds: announced.
        assert_eq!(states(&m.tick(50_000)), vec![AlarmState::Raised]);
        // An announced alarm cannot be held.
        assert!(!m.hold(&k, 90_000, 90_000));
        assert!(!m.holdable(&k, 60_000));

        // High priority: refused, and raised at once anyway.
        let hr = cond("hr-high", AlarmPriority::High, true, 50_000);
        assert_eq!(states(&m.update(hr)), vec![AlarmState::Raised]);
        assert!(!m.hold(
            &key("MRN1", AlarmKind::VitalThreshold, "hr-high"),
            99_000,
            99_000
        ));

        // A held medium condition that turns high is announced at once, hold or not.
        assert!(
            m.update(cond("rr-high", AlarmPriority::Medium, true, 60_000))
                .is_empty()
        );
        let rr = key("MRN1", AlarmKind::VitalThreshold, "rr-high");
        assert!(m.hold(&rr, 200_000, 200_000));
        assert_eq!(
            states(&m.update(cond("rr-high", AlarmPriority::High, true, 61_000))),
            vec![AlarmState::Raised]
        );
        // A held condition that ends while held was never announced.
        assert!(
            m.update(cond("temp-high", AlarmPriority::Medium, true, 70_000))
                .is_empty()
        );
        assert!(m.hold(
            &key("MRN1", AlarmKind::VitalThreshold, "temp-high"),
            100_000,
            100_000
        ));
        assert!(m.tick(90_000).is_empty());
        assert!(
            m.update(cond("temp-high", AlarmPriority::Medium, false, 95_000))
                .is_empty()
        );
        assert_eq!(m.stats().held_back, 3);
        assert_eq!(m.stats().hold_renewals, 2);
        assert_eq!(m.stats().held_back_suppressed, 1);
    }

    /// A patient whose NEWS2 alarm was acknowledged at 7 and who then hovers at 5 for hours must be announced
    /// again when the score returns to 7; a short dip below 7 must not re-announce anything, nor may an
    /// unacknowledged high-priority alarm lose its priority.
    #[test]
    fn an_acknowledged_alarm_settled_at_a_lower_priority_is_announced_again_when_it_worsens() {
        const MIN: i64 = 60_000;
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        let n = |m: &mut AlarmManager, p, at| states(&m.update(cond("news2", p, true, at)));
        assert_eq!(n(&mut m, AlarmPriority::High, 0), vec![AlarmState::Raised]);
        // Unacknowledged: an hour at a lower level changes nothing (latched at high).
        for t in 1..=60 {
            assert!(n(&mut m, AlarmPriority::Medium, t * MIN).is_empty());
        }
        assert_eq!(m.active()[0].priority, AlarmPriority::High);
        let id = m.active()[0].alarm_id.clone();
        assert_eq!(
            states(&m.acknowledge(&id, "nurse.ann", 61 * MIN).unwrap()),
            vec![AlarmState::Acknowledged]
        );
        // A dip shorter than the de-escalation time, then high again: no new announcement.
        let t0 = 62 * MIN;
        for t in 0..14 {
            assert!(n(&mut m, AlarmPriority::Medium, t0 + t * MIN).is_empty());
        }
        assert!(n(&mut m, AlarmPriority::High, t0 + 14 * MIN).is_empty());
        assert_eq!(m.active()[0].priority, AlarmPriority::High);
        // Settled lower for 15 min (flickering between low and medium): the alarm takes medium, silently.
        let t1 = 80 * MIN;
        for t in 0..15 {
            let p = if t % 2 == 0 {
                AlarmPriority::Low
            } else {
                AlarmPriority::Medium
            };
            assert!(n(&mut m, p, t1 + t * MIN).is_empty());
        }
        assert!(n(&mut m, AlarmPriority::Low, t1 + 15 * MIN).is_empty());
        assert_eq!(m.active()[0].priority, AlarmPriority::Medium);
        assert_eq!(m.active()[0].alarm_id, id);
        assert_eq!(m.stats().deescalated, 1);
        // Hours later the score returns to high: the same alarm is announced again at high.
        let a = m.update(cond("news2", AlarmPriority::High, true, 300 * MIN));
        assert_eq!(states(&a), vec![AlarmState::Raised]);
        assert_eq!(a[0].priority, AlarmPriority::High as i32);
        assert_eq!(m.stats().upgraded, 1);
    }

    #[test]
    fn high_fires_immediately_and_latches_until_acknowledged() {
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        assert_eq!(
            states(&m.update(cond("spo2", AlarmPriority::High, true, 0))),
            vec![AlarmState::Raised]
        );
        // Condition ends: still latched.
        assert!(
            m.update(cond("spo2", AlarmPriority::High, false, 5_000))
                .is_empty()
        );
        assert_eq!(m.active().len(), 1);
        assert!(!m.active()[0].condition_active);
        let id = m.active()[0].alarm_id.clone();
        assert_eq!(
            states(&m.acknowledge(&id, "nurse.ann", 6_000).unwrap()),
            vec![AlarmState::Acknowledged, AlarmState::Cleared]
        );
        assert!(m.active().is_empty());
    }

    #[test]
    fn medium_waits_out_its_delay_and_transients_are_suppressed() {
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        assert!(
            m.update(cond("hr", AlarmPriority::Medium, true, 0))
                .is_empty()
        );
        assert!(m.tick(14_999).is_empty());
        assert!(
            m.update(cond("hr", AlarmPriority::Medium, false, 10_000))
                .is_empty()
        );
        assert_eq!(m.stats().suppressed_transient, 1);
        assert!(m.tick(20_000).is_empty());
        // Persisting condition: announced at exactly the delay.
        m.update(cond("hr", AlarmPriority::Medium, true, 30_000));
        assert!(m.tick(44_999).is_empty());
        assert_eq!(states(&m.tick(45_000)), vec![AlarmState::Raised]);
        // Non-latching: clears when the condition ends.
        assert_eq!(
            states(&m.update(cond("hr", AlarmPriority::Medium, false, 50_000))),
            vec![AlarmState::Cleared]
        );
        let s = m.stats();
        assert_eq!((s.raised, s.cleared), (1, 1));
    }

    #[test]
    fn duplicates_collapse_and_worse_priority_upgrades_the_same_alarm() {
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        m.update(cond("hr", AlarmPriority::Medium, true, 0));
        let raised = m.tick(15_000);
        assert_eq!(raised.len(), 1);
        for t in [16_000, 17_000, 18_000] {
            assert!(
                m.update(cond("hr", AlarmPriority::Medium, true, t))
                    .is_empty(),
                "duplicate announced"
            );
        }
        let up = m.update(cond("hr", AlarmPriority::High, true, 19_000));
        assert_eq!(states(&up), vec![AlarmState::Raised]);
        assert_eq!(up[0].alarm_id, raised[0].alarm_id);
        assert_eq!(up[0].priority, AlarmPriority::High as i32);
        assert_eq!(m.active().len(), 1);
    }

    #[test]
    fn silence_is_bounded_and_re_announces_then_escalation() {
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        m.update(cond("rr", AlarmPriority::High, true, 0));
        let id = m.active()[0].alarm_id.clone();
        assert!(matches!(
            m.silence(&id, "n", 1_000, 600_000),
            Err(AlarmActionError::SilenceTooLong { .. })
        ));
        assert_eq!(
            states(&m.silence(&id, "n", 1_000, 30_000).unwrap()),
            vec![AlarmState::Silenced]
        );
        assert!(m.tick(30_999).is_empty());
        assert_eq!(states(&m.tick(31_000)), vec![AlarmState::Raised]);
        // Not acknowledged within 60 s of being raised: escalated once.
        assert!(m.tick(59_999).is_empty());
        assert_eq!(states(&m.tick(60_000)), vec![AlarmState::Escalated]);
        assert!(m.tick(120_000).is_empty());
        assert_eq!(m.stats().escalated, 1);
    }

    #[test]
    fn acknowledged_alarm_clears_when_condition_ends_and_unknown_ids_are_errors() {
        let mut m = AlarmManager::new(AlarmPolicy::default(), "e");
        m.update(cond("bp", AlarmPriority::High, true, 0));
        let id = m.active()[0].alarm_id.clone();
        assert_eq!(
            states(&m.acknowledge(&id, "n", 1_000).unwrap()),
            vec![AlarmState::Acknowledged]
        );
        assert!(
            m.tick(100_000).is_empty(),
            "acknowledged alarms do not escalate"
        );
        assert_eq!(
            states(&m.update(cond("bp", AlarmPriority::High, false, 2_000))),
            vec![AlarmState::Cleared]
        );
        assert!(matches!(
            m.acknowledge("nope", "n", 0),
            Err(AlarmActionError::Unknown(_))
        ));
        m.update(cond("x", AlarmPriority::Low, true, 0));
        let pending_id = m
            .records
            .values()
            .next()
            .map(|r| r.view.alarm_id.clone())
            .unwrap();
        assert!(matches!(
            m.acknowledge(&pending_id, "n", 1),
            Err(AlarmActionError::NotAnnounced(_))
        ));
    }

    #[test]
    fn active_is_sorted_by_priority_then_age() {
        let mut m = AlarmManager::new(
            AlarmPolicy {
                low_delay_ms: 0,
                medium_delay_ms: 0,
                ..AlarmPolicy::default()
            },
            "e",
        );
        m.update(cond("a", AlarmPriority::Low, true, 0));
        m.update(cond("b", AlarmPriority::High, true, 5));
        m.update(cond("c", AlarmPriority::Medium, true, 1));
        let order: Vec<String> = m.active().into_iter().map(|a| a.key.detail).collect();
        assert_eq!(order, vec!["b", "c", "a"]);
    }
}
