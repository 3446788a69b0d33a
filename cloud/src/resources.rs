//! One read dispatcher for every FHIR resource type the cloud serves: `read_resource(store, cfg, type, id)`,
//! plus the glue that turns stored rows into the `wardwatch-fhir` crate's plain records.
//!
//! The REST reads (`GET [base]/<Type>/<id>`), the searches and the subscription notifications' `full-resource`
//! payloads all go through these functions, so a resource reads the same on every surface. FHIR JSON itself is
//! built only by the `wardwatch-fhir` crate.
//!
//! Resource ids (docs/fhir-mapping.md has the full table):
//! - `Observation/<edge>.<sequence>`: a vital sign, or a NEWS2 score (the synced event's lineage).
//! - `Observation/<edge>.<sequence>.rate|infused|remaining`: one infusion status report's measurements.
//! - `RiskAssessment/<edge>.<sequence>` and `Provenance/<edge>.<sequence>`: a model prediction.
//! - `DetectedIssue/<alarm id>`: an alarm, versioned by its state changes ([`alarm_resource_id`]).
//! - `MedicationAdministration/<order id>`: the infusion of one medication order.
//! - `Device/<device id>`, `DeviceMetric/<device id>.<MDC code>`.
//! - `Location/<ward>` and `Location/<ward>.<bed>`.

use wardwatch_fhir::{
    AlarmChange, AlarmRecord, Coding, DeviceMetricRecord, InfusionObservationRecord,
    LocationRecord, MedicationAdministrationRecord, ModelProvenanceRecord, News2Parameter,
    News2Record, RiskAssessmentRecord,
};
use wardwatch_proto::ids::{DeviceId, EdgeId};
use wardwatch_proto::metrics;
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{
    AlarmPriority, InfusionState, News2Parameter as P, News2Response, OperationalState, risk_score,
};

use crate::config::ApiConfig;
use crate::error::CloudError;
use crate::storage::{
    ChannelRow, EventRow, INFUSION_INFUSED_MDC, INFUSION_RATE_MDC, INFUSION_REMAINING_MDC,
    OrderSummary, Store, alarm_kind_code, alarm_state_code, infusion_state_code,
};

/// Resource types [`read_resource`] can return, in CapabilityStatement order.
pub const READABLE_TYPES: &[&str] = &[
    "Observation",
    "Device",
    "DeviceMetric",
    "Location",
    "RiskAssessment",
    "Provenance",
    "DetectedIssue",
    "MedicationAdministration",
];

/// Identifier system of Location ids (`<ward>` or `<ward>/<bed>`).
pub const LOCATION_SYSTEM: &str = "urn:wardwatch:location";

/// Splits a lineage id `<edge>.<sequence>` (optionally followed by `.<suffix>`); `None` if it is not one of
/// ours. Returns the edge, the sequence and the suffix (`""` when absent).
pub fn parse_lineage_id(id: &str) -> Option<(EdgeId, u64, &str)> {
    // Edge ids never contain '.', so the first '.' ends the edge id.
    let (edge, rest) = id.split_once('.')?;
    let (seq, suffix) = match rest.split_once('.') {
        Some((s, suffix)) if !suffix.is_empty() => (s, suffix),
        Some(_) => return None,
        None => (rest, ""),
    };
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = seq.parse().ok().filter(|s| *s > 0)?;
    Some((EdgeId::new(edge).ok()?, seq, suffix))
}

/// The FHIR id of the DetectedIssue an alarm maps to: the alarm id with characters outside the FHIR id
/// alphabet replaced by `-`, at most 64 characters (the same rule the subscription notifications use).
pub fn alarm_resource_id(alarm_id: &str) -> String {
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

/// Whether `s` is a valid FHIR id.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The Location id of a ward (bed `""`) or bed, if both are valid in a FHIR id.
pub fn location_id(ward: &str, bed: &str) -> Option<String> {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok(ward) {
        return None;
    }
    let id = if bed.is_empty() {
        ward.to_string()
    } else if ok(bed) {
        format!("{ward}.{bed}")
    } else {
        return None;
    };
    is_fhir_id(&id).then_some(id)
}

fn unmappable(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError::Unavailable(format!("{what} cannot be mapped: {e}"))
}

fn lineage_uri(edge: &str, seq: i64) -> String {
    format!("wardwatch-edge:{edge}/sequence/{seq}")
}

/// Reads one resource by type and id, as the FHIR read interaction returns it. `Ok(None)` when the type is
/// served but no such resource exists (or the id cannot be one of ours); `NotSupported` for a type this
/// server does not serve; `Unavailable` for a storage failure or a stored row that cannot be mapped.
pub async fn read_resource(
    store: &Store,
    cfg: &ApiConfig,
    resource_type: &str,
    id: &str,
) -> Result<Option<serde_json::Value>, CloudError> {
    match resource_type {
        "Observation" => {
            let Some((edge, seq, suffix)) = parse_lineage_id(id) else {
                return Ok(None);
            };
            if suffix.is_empty()
                && let Some(row) = store.vital_by_lineage(edge.as_str(), seq).await?
            {
                return Ok(Some(crate::api::vital_to_observation(
                    &row,
                    &cfg.mrn_system,
                )?));
            }
            let Some(ev) = store.event_by_lineage(edge.as_str(), seq).await? else {
                return Ok(None);
            };
            match (&ev.payload, suffix) {
                (Payload::Risk(r), "") if matches!(r.score, Some(risk_score::Score::News2(_))) => {
                    Ok(Some(news2_to_fhir(store, cfg, &ev).await?))
                }
                (Payload::Infusion(_), s @ ("rate" | "infused" | "remaining")) => {
                    Ok(Some(infusion_observation_to_fhir(cfg, &ev, s)?))
                }
                _ => Ok(None),
            }
        }
        "RiskAssessment" | "Provenance" => {
            let Some((edge, seq, "")) = parse_lineage_id(id) else {
                return Ok(None);
            };
            let Some(ev) = store.event_by_lineage(edge.as_str(), seq).await? else {
                return Ok(None);
            };
            if !is_model_prediction(&ev) {
                return Ok(None);
            }
            if resource_type == "RiskAssessment" {
                Ok(Some(risk_assessment_to_fhir(store, cfg, &ev).await?))
            } else {
                Ok(Some(provenance_to_fhir(store, &ev).await?))
            }
        }
        "DetectedIssue" => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            let history = store.alarm_history(id).await?;
            if history.is_empty() {
                return Ok(None);
            }
            Ok(Some(alarm_to_fhir(cfg, &history)?))
        }
        "MedicationAdministration" => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            match store.order_summary(id).await? {
                Some(s) => Ok(Some(order_to_fhir(cfg, &s)?)),
                None => Ok(None),
            }
        }
        "Device" => {
            let Ok(id) = DeviceId::new(id) else {
                return Ok(None);
            };
            match store.device(id.as_str()).await? {
                Some(row) => Ok(Some(crate::api::device_to_fhir(
                    &row,
                    &cfg.device_id_system,
                )?)),
                None => Ok(None),
            }
        }
        "DeviceMetric" => {
            let Some((device, mdc)) = id.rsplit_once('.') else {
                return Ok(None);
            };
            let (Ok(device), Ok(mdc)) = (DeviceId::new(device), mdc.parse::<i64>()) else {
                return Ok(None);
            };
            let channel = store
                .device_channels(device.as_str())
                .await?
                .into_iter()
                .find(|c| c.metric_mdc == mdc);
            let Some(channel) = channel else {
                return Ok(None);
            };
            let state = store.device(device.as_str()).await?.map(|d| d.state);
            Ok(Some(channel_to_fhir(&channel, state)?))
        }
        "Location" => {
            let (ward, bed) = id.split_once('.').unwrap_or((id, ""));
            let known = store
                .locations()
                .await?
                .into_iter()
                .any(|(w, b)| w == ward && b == bed);
            if !known || location_id(ward, bed).as_deref() != Some(id) {
                return Ok(None);
            }
            Ok(Some(location_to_fhir(ward, bed)?))
        }
        other => Err(CloudError::NotSupported(format!(
            "resource type {other:?} is not served (served: {})",
            READABLE_TYPES.join(", ")
        ))),
    }
}

/// Whether a stored event is a model prediction (a RiskAssessment).
pub fn is_model_prediction(ev: &EventRow) -> bool {
    matches!(&ev.payload, Payload::Risk(r) if matches!(r.score, Some(risk_score::Score::Model(_))))
}

fn news2_parameter(p: P) -> News2Parameter<'static> {
    let (code, display) = match p {
        P::Unspecified => ("unspecified", "Unspecified"),
        P::RespirationRate => ("respiration-rate", "Respiration rate"),
        P::Spo2 => ("spo2", "SpO2"),
        P::AirOrOxygen => ("air-or-oxygen", "Air or oxygen"),
        P::SystolicBp => ("systolic-bp", "Systolic blood pressure"),
        P::Pulse => ("pulse", "Pulse"),
        P::Consciousness => ("consciousness", "Consciousness"),
        P::Temperature => ("temperature", "Temperature"),
    };
    News2Parameter { code, display }
}

fn news2_response(r: News2Response) -> Option<(&'static str, &'static str)> {
    match r {
        News2Response::Unspecified => None,
        News2Response::Routine => Some(("routine", "Routine monitoring (aggregate 0)")),
        News2Response::Low => Some(("low", "Low (aggregate 1-4): ward-based response")),
        News2Response::LowMedium => Some((
            "low-medium",
            "Low-medium (3 in a single parameter): urgent ward-based response",
        )),
        News2Response::Medium => Some((
            "medium",
            "Medium (aggregate 5-6): key threshold for urgent response",
        )),
        News2Response::High => Some((
            "high",
            "High (aggregate 7 or more): urgent or emergency response",
        )),
    }
}

/// The Observation ids of the vital signs a risk score names in `derived_from` (idempotency keys on the
/// same edge); keys that are not stored vital signs are left out.
async fn derived_observation_ids(
    store: &Store,
    edge: &str,
    keys: &[String],
) -> Result<Vec<String>, CloudError> {
    let seqs = store.vital_sequences_by_keys(edge, keys).await?;
    Ok(seqs
        .into_iter()
        .map(|s| format!("{edge}.{s}"))
        .filter(|id| is_fhir_id(id))
        .collect())
}

/// A stored NEWS2 score as an Observation.
pub async fn news2_to_fhir(
    store: &Store,
    cfg: &ApiConfig,
    ev: &EventRow,
) -> Result<serde_json::Value, CloudError> {
    let id = ev.lineage_id();
    let Payload::Risk(r) = &ev.payload else {
        return Err(unmappable(&id, "not a risk score"));
    };
    let Some(risk_score::Score::News2(n)) = &r.score else {
        return Err(unmappable(&id, "not a NEWS2 score"));
    };
    let derived = derived_observation_ids(store, &ev.edge_id, &r.derived_from).await?;
    let lineage = lineage_uri(&ev.edge_id, ev.sequence);
    let rec = News2Record {
        id: &id,
        patient_system: &cfg.mrn_system,
        patient_id: &r.patient_id,
        total: n.total,
        sub_scores: n
            .sub_scores
            .iter()
            .map(|s| (news2_parameter(s.parameter()), s.score))
            .collect(),
        missing: n.missing().map(news2_parameter).collect(),
        response: news2_response(n.response()),
        spo2_scale_2: n.spo2_scale_2,
        effective_unix_ms: r.computed_at_unix_ms,
        issued_unix_ms: ev.received_at_ms,
        derived_from: derived,
        source_lineage: Some(&lineage),
    };
    wardwatch_fhir::news2_observation(&rec).map_err(|e| unmappable(&format!("NEWS2 {id}"), e))
}

/// A stored model prediction as a RiskAssessment.
pub async fn risk_assessment_to_fhir(
    store: &Store,
    cfg: &ApiConfig,
    ev: &EventRow,
) -> Result<serde_json::Value, CloudError> {
    let id = ev.lineage_id();
    let Payload::Risk(r) = &ev.payload else {
        return Err(unmappable(&id, "not a risk score"));
    };
    let Some(risk_score::Score::Model(m)) = &r.score else {
        return Err(unmappable(&id, "not a model prediction"));
    };
    let basis = derived_observation_ids(store, &ev.edge_id, &r.derived_from).await?;
    let lineage = lineage_uri(&ev.edge_id, ev.sequence);
    let window = (m.window_start_unix_ms > 0 && m.window_end_unix_ms >= m.window_start_unix_ms)
        .then_some((m.window_start_unix_ms, m.window_end_unix_ms));
    let rec = RiskAssessmentRecord {
        id: &id,
        patient_system: &cfg.mrn_system,
        patient_id: &r.patient_id,
        occurrence_unix_ms: r.computed_at_unix_ms,
        stored_unix_ms: ev.received_at_ms,
        probability: m.probability,
        outcome: if m.outcome.trim().is_empty() {
            "deterioration"
        } else {
            &m.outcome
        },
        model_name: &m.model_name,
        model_version: &m.model_version,
        window,
        basis,
        source_lineage: Some(&lineage),
    };
    wardwatch_fhir::risk_assessment(&rec)
        .map_err(|e| unmappable(&format!("RiskAssessment {id}"), e))
}

/// The Provenance of a stored model prediction: model name, version and hash.
pub async fn provenance_to_fhir(
    store: &Store,
    ev: &EventRow,
) -> Result<serde_json::Value, CloudError> {
    let id = ev.lineage_id();
    let Payload::Risk(r) = &ev.payload else {
        return Err(unmappable(&id, "not a risk score"));
    };
    let Some(risk_score::Score::Model(m)) = &r.score else {
        return Err(unmappable(&id, "not a model prediction"));
    };
    let inputs = derived_observation_ids(store, &ev.edge_id, &r.derived_from).await?;
    let rec = ModelProvenanceRecord {
        id: &id,
        target: ("RiskAssessment", &id),
        occurred_unix_ms: r.computed_at_unix_ms,
        recorded_unix_ms: ev.received_at_ms,
        model_name: &m.model_name,
        model_version: &m.model_version,
        model_sha256: &m.model_sha256,
        edge_id: &ev.edge_id,
        inputs,
    };
    wardwatch_fhir::model_provenance(&rec).map_err(|e| unmappable(&format!("Provenance {id}"), e))
}

/// The measurements of one infusion status report: (suffix, MDC code, MDC reference, value, unit).
pub fn infusion_measurements(
    i: &wardwatch_proto::v1::InfusionStatus,
) -> [(&'static str, u32, &'static str, f64, &'static str); 3] {
    [
        (
            "rate",
            INFUSION_RATE_MDC,
            "MDC_FLOW_FLUID_PUMP",
            i.measured_rate_ml_h,
            "mL/h",
        ),
        (
            "infused",
            INFUSION_INFUSED_MDC,
            "MDC_VOL_FLUID_DELIV_TOTAL",
            i.volume_infused_ml,
            "mL",
        ),
        (
            "remaining",
            INFUSION_REMAINING_MDC,
            "MDC_VOL_FLUID_TBI_REMAIN",
            i.volume_remaining_ml,
            "mL",
        ),
    ]
}

/// One measurement (`rate`, `infused` or `remaining`) of a stored infusion report as an Observation.
pub fn infusion_observation_to_fhir(
    cfg: &ApiConfig,
    ev: &EventRow,
    suffix: &str,
) -> Result<serde_json::Value, CloudError> {
    let id = format!("{}.{suffix}", ev.lineage_id());
    let Payload::Infusion(i) = &ev.payload else {
        return Err(unmappable(&id, "not an infusion report"));
    };
    let Some((_, mdc, mdc_ref, value, unit)) = infusion_measurements(i)
        .into_iter()
        .find(|(s, ..)| *s == suffix)
    else {
        return Err(unmappable(&id, "unknown infusion measurement"));
    };
    let code = mdc.to_string();
    let lineage = lineage_uri(&ev.edge_id, ev.sequence);
    let rec = InfusionObservationRecord {
        id: &id,
        patient_system: &cfg.mrn_system,
        patient_id: &i.patient_id,
        device_id: &i.device_id,
        code: vec![Coding {
            system: wardwatch_fhir::MDC,
            code: &code,
            display: mdc_ref,
        }],
        value,
        unit,
        order_id: &i.order_id,
        administration_id: is_fhir_id(&i.order_id).then_some(i.order_id.as_str()),
        effective_unix_ms: i.measured_at_unix_ms,
        issued_unix_ms: ev.received_at_ms,
        source_lineage: Some(&lineage),
    };
    wardwatch_fhir::infusion_observation(&rec)
        .map_err(|e| unmappable(&format!("Observation {id}"), e))
}

fn priority_code(p: AlarmPriority) -> &'static str {
    match p {
        AlarmPriority::High => "high",
        AlarmPriority::Medium => "medium",
        AlarmPriority::Low => "low",
        AlarmPriority::Info | AlarmPriority::Unspecified => "info",
    }
}

fn kind_display(code: &str) -> String {
    let mut s = code.replace('-', " ");
    if let Some(f) = s.get(..1) {
        let up = f.to_uppercase();
        s.replace_range(..1, &up);
    }
    s
}

/// An alarm's stored state changes (in order) as one DetectedIssue.
pub fn alarm_to_fhir(
    cfg: &ApiConfig,
    history: &[EventRow],
) -> Result<serde_json::Value, CloudError> {
    let alarms: Vec<&wardwatch_proto::v1::Alarm> = history
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Alarm(a) => Some(a),
            _ => None,
        })
        .collect();
    let (Some(first), Some(last)) = (alarms.first(), alarms.last()) else {
        return Err(unmappable("alarm", "no state changes"));
    };
    let id = alarm_resource_id(&first.alarm_id);
    let kind_code = alarm_kind_code(last.kind());
    let kind_disp = kind_display(kind_code);
    let (ward, bed) = last
        .location
        .as_ref()
        .map(|l| (l.ward.as_str(), l.bed.as_str()))
        .unwrap_or(("", ""));
    let location = (!ward.is_empty()).then(|| {
        let display = if bed.is_empty() {
            format!("Ward {ward}")
        } else {
            format!("Ward {ward}, bed {bed}")
        };
        (location_id(ward, bed), display)
    });
    let rec = AlarmRecord {
        id: &id,
        alarm_id: &first.alarm_id,
        kind: (kind_code, &kind_disp),
        patient_system: &cfg.mrn_system,
        patient_id: Some(last.patient_id.as_str()).filter(|p| !p.is_empty()),
        device_id: Some(last.device_id.as_str()).filter(|d| is_fhir_id(d)),
        location: location.as_ref().map(|(i, d)| (i.as_deref(), d.clone())),
        history: alarms
            .iter()
            .map(|a| AlarmChange {
                state: alarm_state_code(a.state()),
                at_unix_ms: a.changed_at_unix_ms,
                by: &a.changed_by,
                priority: priority_code(a.priority()),
                message: &a.message,
            })
            .collect(),
    };
    wardwatch_fhir::alarm_detected_issue(&rec)
        .map_err(|e| unmappable(&format!("DetectedIssue {id}"), e))
}

/// The MedicationAdministration of one medication order, from its reports.
pub fn order_to_fhir(cfg: &ApiConfig, s: &OrderSummary) -> Result<serde_json::Value, CloudError> {
    let Payload::Infusion(i) = &s.latest.payload else {
        return Err(unmappable(
            "MedicationAdministration",
            "not an infusion report",
        ));
    };
    let state = i.state();
    let status = match state {
        InfusionState::Paused => "on-hold",
        InfusionState::Completed => "completed",
        _ if s.completed_ms.is_some() && state == InfusionState::Kvo => "completed",
        _ => "in-progress",
    };
    let latest = s.latest.lineage_id();
    let supporting: Vec<String> = ["rate", "infused", "remaining"]
        .iter()
        .map(|suffix| format!("{latest}.{suffix}"))
        .filter(|id| is_fhir_id(id))
        .collect();
    let rec = MedicationAdministrationRecord {
        id: &i.order_id,
        order_id: &i.order_id,
        patient_system: &cfg.mrn_system,
        patient_id: &i.patient_id,
        medication: &i.medication,
        status,
        device_state: infusion_state_code(state),
        started_unix_ms: s.first_ms,
        ended_unix_ms: if status == "completed" {
            s.completed_ms.or(Some(i.measured_at_unix_ms))
        } else {
            None
        },
        last_updated_unix_ms: i.measured_at_unix_ms,
        version: u64::try_from(s.reports).unwrap_or(1),
        device_id: Some(i.device_id.as_str()).filter(|d| is_fhir_id(d)),
        prescribed_rate_ml_h: (i.prescribed_rate_ml_h > 0.0).then_some(i.prescribed_rate_ml_h),
        supporting,
    };
    wardwatch_fhir::medication_administration(&rec)
        .map_err(|e| unmappable(&format!("MedicationAdministration {}", i.order_id), e))
}

/// A device channel as a DeviceMetric; `device_state` is the device's `OperationalState` value, if known.
pub fn channel_to_fhir(
    c: &ChannelRow,
    device_state: Option<i64>,
) -> Result<serde_json::Value, CloudError> {
    let id = format!("{}.{}", c.device_id, c.metric_mdc);
    let mdc = u32::try_from(c.metric_mdc).unwrap_or(0);
    let code = mdc.to_string();
    let metric = metrics::by_mdc(mdc);
    let (mdc_ref, loinc, loinc_display) = match metric {
        Some(m) => (m.mdc_ref, m.loinc, m.display),
        None => match mdc {
            INFUSION_RATE_MDC => ("MDC_FLOW_FLUID_PUMP", "", ""),
            INFUSION_INFUSED_MDC => ("MDC_VOL_FLUID_DELIV_TOTAL", "", ""),
            INFUSION_REMAINING_MDC => ("MDC_VOL_FLUID_TBI_REMAIN", "", ""),
            _ => ("", "", ""),
        },
    };
    let mut codes = vec![Coding {
        system: if metrics::is_private(mdc) {
            "urn:wardwatch:metric"
        } else {
            wardwatch_fhir::MDC
        },
        code: &code,
        display: mdc_ref,
    }];
    if !loinc.is_empty() {
        codes.push(Coding {
            system: wardwatch_fhir::LOINC,
            code: loinc,
            display: loinc_display,
        });
    }
    let status = device_state
        .and_then(|s| i32::try_from(s).ok())
        .and_then(|s| OperationalState::try_from(s).ok())
        .and_then(|s| match s {
            OperationalState::On => Some("on"),
            OperationalState::Off => Some("off"),
            OperationalState::Standby => Some("standby"),
            _ => None,
        });
    let rec = DeviceMetricRecord {
        id: &id,
        type_codes: codes,
        unit: Some(c.unit.as_str()).filter(|u| !u.is_empty()),
        device_id: &c.device_id,
        operational_status: status,
        last_seen_unix_ms: c.last_seen_ms,
    };
    wardwatch_fhir::device_metric(&rec).map_err(|e| unmappable(&format!("DeviceMetric {id}"), e))
}

/// A ward (bed `""`) or bed as a Location.
pub fn location_to_fhir(ward: &str, bed: &str) -> Result<serde_json::Value, CloudError> {
    let id = location_id(ward, bed)
        .ok_or_else(|| unmappable("Location", format!("{ward:?}/{bed:?} is not a FHIR id")))?;
    let rec = LocationRecord {
        id: &id,
        ward,
        bed: (!bed.is_empty()).then_some(bed),
        identifier_system: LOCATION_SYSTEM,
    };
    wardwatch_fhir::location(&rec).map_err(|e| unmappable(&format!("Location {id}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_ids_round_trip_and_junk_is_refused() {
        let (edge, seq, suffix) = parse_lineage_id("edge-7a.42").expect("valid id");
        assert_eq!((edge.as_str(), seq, suffix), ("edge-7a", 42, ""));
        let (edge, seq, suffix) = parse_lineage_id("edge-7a.42.rate").expect("suffixed id");
        assert_eq!((edge.as_str(), seq, suffix), ("edge-7a", 42, "rate"));
        for bad in [
            "edge-7a",
            "edge-7a.",
            "edge-7a.0",
            "edge-7a.-1",
            "edge-7a.+1",
            ".5",
            "edge 7a.5",
            "edge-7a.5.",
            "e.18446744073709551616",
        ] {
            assert!(parse_lineage_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn alarm_and_location_ids_stay_in_the_fhir_alphabet() {
        assert_eq!(alarm_resource_id("edge-7a-alarm-3"), "edge-7a-alarm-3");
        assert_eq!(alarm_resource_id("e_7:a"), "e-7-a");
        assert_eq!(alarm_resource_id(&"x".repeat(80)).len(), 64);
        assert_eq!(location_id("7A", ""), Some("7A".into()));
        assert_eq!(location_id("7A", "12"), Some("7A.12".into()));
        assert_eq!(location_id("7_A", "12"), None);
        assert_eq!(location_id("", "12"), None);
        assert_eq!(location_id("7A", "1 2"), None);
    }
}
