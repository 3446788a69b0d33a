//! Alarms as `DetectedIssue`: one resource per alarm, its versions the alarm's state changes.
//!
//! Why DetectedIssue: an alarm is a detected condition about a patient (or a device) that calls for a
//! response. DetectedIssue has a severity (the IEC 60601-1-8 priority maps onto high/moderate/low), the
//! time it was identified, an author (the device or the Wardwatch edge that detected it), free-text detail,
//! and a `mitigation` list (action, date, author) that records the acknowledgement history: acknowledged,
//! silenced, escalated and cleared, each with who and when. The exact alarm priority and current state are
//! also carried as extensions (`urn:wardwatch:fhir:extension:alarm-priority` / `alarm-state`) because
//! DetectedIssue's own codes cannot say "informational" or "silenced". The Point-of-Care Device guidance
//! models alarms as Observations of the alert condition; that form keeps no acknowledgement history in one
//! resource, which is what an EHR asks us for, so it is not used.

use fhir_sdk::DateTime;
use fhir_sdk::r4b::codes::{DetectedIssueSeverity, ObservationStatus};
use fhir_sdk::r4b::resources::{DetectedIssue, DetectedIssueIdentified, DetectedIssueMitigation};
use fhir_sdk::r4b::types::{Extension, ExtensionValue, Meta, Reference};

use crate::FhirError;
use crate::observation::patient_reference;
use crate::util::{
    build_err, identifier, instant_from_unix_ms, invalid, literal_reference, opt_string,
    require_code, require_id, ser_err, single_coding_concept,
};

/// Code system of alarm kinds (`Alarm.kind`).
pub const ALARM_KIND_SYSTEM: &str = "urn:wardwatch:alarm-kind";
/// Code system of alarm states (mitigation actions).
pub const ALARM_STATE_SYSTEM: &str = "urn:wardwatch:alarm-state";
/// Extension URL of the exact alarm priority (`high`, `medium`, `low`, `info`).
pub const ALARM_PRIORITY_EXT: &str = "urn:wardwatch:fhir:extension:alarm-priority";
/// Extension URL of the alarm's current state.
pub const ALARM_STATE_EXT: &str = "urn:wardwatch:fhir:extension:alarm-state";

/// One state change of an alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmChange<'a> {
    /// State code: `raised`, `escalated`, `acknowledged`, `silenced`, `cleared`.
    pub state: &'a str,
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// Who (a user for acknowledge or silence; `system` otherwise).
    pub by: &'a str,
    /// The priority after this change: `high`, `medium`, `low` or `info`.
    pub priority: &'a str,
    /// The message shown to the nurse with this change.
    pub message: &'a str,
}

/// An alarm with its history, to map to a `DetectedIssue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmRecord<'a> {
    /// FHIR id (from the alarm id).
    pub id: &'a str,
    /// The edge's alarm id (`DetectedIssue.identifier`, system `urn:wardwatch:alarm`).
    pub alarm_id: &'a str,
    /// Kind code in [`ALARM_KIND_SYSTEM`] and display.
    pub kind: (&'a str, &'a str),
    /// System URI of MRNs.
    pub patient_system: &'a str,
    /// Patient MRN; `None` for technical alarms not tied to a patient.
    pub patient_id: Option<&'a str>,
    /// Device the alarm concerns (`author` and `implicated`).
    pub device_id: Option<&'a str>,
    /// Where: the Location id of the bed or ward, if valid, and a display.
    pub location: Option<(Option<&'a str>, String)>,
    /// The state changes in order; the first is normally `raised`. Must not be empty.
    pub history: Vec<AlarmChange<'a>>,
}

/// Build a `DetectedIssue` for an alarm: `status` `preliminary` while the alarm is active, `final` once
/// cleared; `severity` from the latest priority (high → high, medium → moderate, low and info → low);
/// `identifiedDateTime` the first change; `detail` the latest message; one `mitigation` per later change;
/// `meta.versionId` the number of changes and `meta.lastUpdated` the latest.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, an empty history, an unknown priority or state code or an
/// unrepresentable time.
pub fn alarm_detected_issue(r: &AlarmRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("DetectedIssue.id", r.id)?;
    let first = r
        .history
        .first()
        .ok_or_else(|| invalid("an alarm needs at least one state change"))?;
    let last = r.history.last().unwrap_or(first);
    let severity = match last.priority {
        "high" => DetectedIssueSeverity::High,
        "medium" => DetectedIssueSeverity::Moderate,
        "low" | "info" => DetectedIssueSeverity::Low,
        other => return Err(invalid(format!("unknown alarm priority {other:?}"))),
    };
    for c in &r.history {
        require_code("alarm state", c.state)?;
    }
    let status = if last.state == "cleared" {
        ObservationStatus::Final
    } else {
        ObservationStatus::Preliminary
    };
    let ext = |url: &str, code: &str| {
        Extension::builder()
            .url(url.to_owned())
            .value(ExtensionValue::Code(code.to_owned()))
            .build()
            .map_err(build_err("Extension"))
    };
    let mut mitigations = Vec::new();
    for c in r.history.iter().skip(1) {
        let author = Reference::builder()
            .display(if c.by.trim().is_empty() {
                "system".to_owned()
            } else {
                c.by.to_owned()
            })
            .build()
            .map_err(build_err("Reference"))?;
        mitigations.push(Some(
            DetectedIssueMitigation::builder()
                .action(single_coding_concept(
                    ALARM_STATE_SYSTEM,
                    c.state,
                    &state_display(c.state),
                )?)
                .date(DateTime::DateTime(instant_from_unix_ms(
                    "alarm change",
                    c.at_unix_ms,
                )?))
                .author(author)
                .build()
                .map_err(build_err("DetectedIssue.mitigation"))?,
        ));
    }
    let meta = Meta::builder()
        .version_id(r.history.len().to_string())
        .last_updated(instant_from_unix_ms("last change", last.at_unix_ms)?)
        .build()
        .map_err(build_err("Meta"))?;
    let mut b = DetectedIssue::builder()
        .id(r.id.to_owned())
        .meta(meta)
        .extension(vec![
            ext(ALARM_PRIORITY_EXT, last.priority)?,
            ext(ALARM_STATE_EXT, last.state)?,
        ])
        .identifier(vec![Some(identifier(
            "DetectedIssue.identifier",
            "urn:wardwatch:alarm",
            r.alarm_id,
        )?)])
        .status(status)
        .code(single_coding_concept(
            ALARM_KIND_SYSTEM,
            r.kind.0,
            r.kind.1,
        )?)
        .severity(severity)
        .identified(DetectedIssueIdentified::DateTime(DateTime::DateTime(
            instant_from_unix_ms("raised", first.at_unix_ms)?,
        )))
        .mitigation(mitigations);
    if let Some(p) = r.patient_id.filter(|p| !p.is_empty()) {
        b = b.patient(patient_reference(r.patient_system, p)?);
    }
    let mut implicated = Vec::new();
    if let Some(d) = r.device_id.filter(|d| !d.is_empty()) {
        require_id("device_id", d)?;
        b = b.author(literal_reference("Device", d)?);
        implicated.push(Some(literal_reference("Device", d)?));
    }
    if let Some((loc_id, display)) = &r.location {
        let mut lb = Reference::builder().display(display.clone());
        if let Some(id) = loc_id {
            require_id("location id", id)?;
            lb = lb.reference(format!("Location/{id}"));
        }
        implicated.push(Some(lb.build().map_err(build_err("Reference"))?));
    }
    b = b.implicated(implicated);
    let detail = opt_string(Some(last.message)).or_else(|| opt_string(Some(first.message)));
    if let Some(detail) = detail {
        b = b.detail(detail);
    }
    let di = b.build().map_err(build_err("DetectedIssue"))?;
    serde_json::to_value(&di).map_err(ser_err("DetectedIssue"))
}

fn state_display(state: &str) -> String {
    match state {
        "raised" => "Alarm raised",
        "escalated" => "Alarm escalated",
        "acknowledged" => "Alarm acknowledged",
        "silenced" => "Alarm silenced",
        "cleared" => "Alarm cleared",
        _ => "Alarm state change",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AlarmRecord<'static> {
        AlarmRecord {
            id: "edge-7a-alarm-3",
            alarm_id: "edge-7a-alarm-3",
            kind: ("vital-threshold", "Vital sign threshold"),
            patient_system: "urn:wardwatch:mrn",
            patient_id: Some("SIM000003"),
            device_id: Some("mon-7A-3"),
            location: Some((Some("7A.3"), "Ward 7A, bed 3".into())),
            history: vec![
                AlarmChange {
                    state: "raised",
                    at_unix_ms: 1_795_460_400_000,
                    by: "system",
                    priority: "high",
                    message: "SpO2 84 %",
                },
                AlarmChange {
                    state: "acknowledged",
                    at_unix_ms: 1_795_460_430_000,
                    by: "nurse-kim",
                    priority: "high",
                    message: "SpO2 84 %",
                },
            ],
        }
    }

    #[test]
    fn history_becomes_mitigations_and_versions() {
        let j = alarm_detected_issue(&rec()).expect("valid");
        assert_eq!(j["resourceType"], "DetectedIssue");
        assert_eq!(j["status"], "preliminary");
        assert_eq!(j["severity"], "high");
        assert_eq!(j["meta"]["versionId"], "2");
        assert_eq!(
            j["mitigation"][0]["action"]["coding"][0]["code"],
            "acknowledged"
        );
        assert_eq!(j["mitigation"][0]["author"]["display"], "nurse-kim");
        assert_eq!(j["identifiedDateTime"], "2026-11-23T19:00:00Z");
        assert_eq!(j["author"]["reference"], "Device/mon-7A-3");
        assert_eq!(j["implicated"][1]["reference"], "Location/7A.3");
        let mut cleared = rec();
        cleared.history.push(AlarmChange {
            state: "cleared",
            at_unix_ms: 1_795_460_490_000,
            by: "system",
            priority: "info",
            message: "",
        });
        let j = alarm_detected_issue(&cleared).expect("valid");
        assert_eq!(j["status"], "final");
        assert_eq!(j["severity"], "low");
        assert_eq!(
            j["detail"], "SpO2 84 %",
            "an empty last message keeps the first"
        );
        let mut empty = rec();
        empty.history.clear();
        assert!(alarm_detected_issue(&empty).is_err());
    }
}
