//! Decoding one MQTT message (topic + payload bytes) into the events it carries, without a broker: usable from
//! unit tests and a fuzz target. Never panics on any input.
//!
//! A message is refused *as a whole* ([`DecodeError`]) when its topic, size, JSON syntax or envelope is wrong, or
//! when the payload's ward/bed contradict the topic. Otherwise each sample (or the one infusion report) becomes
//! either an [`Incoming`] or a per-item [`Rejection`] (unknown metric, bad unit, non-finite or impossible value),
//! so the good samples of a partly bad message are still accepted.

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardwatch_proto::ids::{AssigningAuthority, DeviceId, Label, PatientId, VisitNumber, WardId};
use wardwatch_proto::metrics::{self, ValueKind};
use wardwatch_proto::v1::{
    BedLocation, EdgeEvent, EncounterId, InfusionState, InfusionStatus, QualityFlag, RejectReason,
    edge_event::Payload,
};
use wardwatch_proto::validate::{self, Rejection};

use super::config::MqttSourceConfig;
use crate::node::Incoming;
use crate::normalize::{RawVital, normalize_vital};

/// Most samples one vitals message may carry.
pub const MAX_SAMPLES: usize = 256;

/// Latest accepted `measured_at`: 9999-12-31T23:59:59.999Z in Unix ms.
pub const MAX_UNIX_MS: i64 = 253_402_300_799_999;

/// Why a whole message was refused. Each variant has a stable [`DecodeError::code`] stored in the dead-letter
/// table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is larger than `max_payload_bytes`.
    #[error("payload is {len} bytes, more than the {max}-byte limit")]
    Oversized {
        /// Payload size.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The topic is not `<prefix>/<ward>/<bed>/<device_id>/vitals|infusion` with valid identifiers.
    #[error("topic {topic:?} is not <prefix>/<ward>/<bed>/<device_id>/vitals|infusion: {why}")]
    Topic {
        /// The topic (truncated to 200 characters).
        topic: String,
        /// What is wrong with it.
        why: String,
    },
    /// The payload is not JSON (syntax error, truncated, not UTF-8, a number out of range such as `1e999`).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The payload is JSON but not of the documented shape (missing or unknown field, wrong type, bad value).
    #[error("payload does not match the schema: {0}")]
    Schema(String),
    /// The payload names a ward or bed other than its topic's.
    #[error("{field} {payload:?} in the payload differs from {topic:?} in the topic")]
    LocationMismatch {
        /// `ward` or `bed`.
        field: &'static str,
        /// What the payload says (truncated).
        payload: String,
        /// What the topic says.
        topic: String,
    },
}

impl DecodeError {
    /// Stable short code, stored as the dead-letter reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Topic { .. } => "bad_topic",
            Self::MalformedJson(_) => "malformed_json",
            Self::Schema(_) => "schema_violation",
            Self::LocationMismatch { .. } => "location_mismatch",
        }
    }
}

/// What a topic says: where the device is, which device, and which kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Ward (validated as a ward id).
    pub ward: String,
    /// Bed (validated as a label).
    pub bed: String,
    /// Device (validated as a device id).
    pub device_id: String,
    /// Message kind.
    pub kind: MessageKind,
}

/// The kind of message a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `.../vitals`: a [`VitalsMessage`].
    Vitals,
    /// `.../infusion`: an [`InfusionMessage`].
    Infusion,
}

fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Parses `<prefix>/<ward>/<bed>/<device_id>/<kind>`.
pub fn parse_topic(topic: &str, prefix: &str) -> Result<TopicInfo, DecodeError> {
    let err = |why: String| DecodeError::Topic {
        topic: clip(topic, 200),
        why,
    };
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| err(format!("not under the prefix {prefix:?}")))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [ward, bed, device, kind] = parts.as_slice() else {
        return Err(err(format!(
            "{} levels after the prefix, expected 4",
            parts.len()
        )));
    };
    let kind = match *kind {
        "vitals" => MessageKind::Vitals,
        "infusion" => MessageKind::Infusion,
        other => return Err(err(format!("unknown message kind {:?}", clip(other, 40)))),
    };
    let ward = WardId::new(*ward).map_err(|e| err(e.to_string()))?;
    let bed = Label::new(*bed).map_err(|e| err(e.to_string()))?;
    let device = DeviceId::new(*device).map_err(|e| err(e.to_string()))?;
    Ok(TopicInfo {
        ward: ward.into(),
        bed: bed.into(),
        device_id: device.into(),
        kind,
    })
}

/// The vitals payload (`docs/schemas/mqtt-vital.schema.json`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitalsMessage {
    /// Patient MRN.
    pub patient_id: String,
    /// Ward; optional, must equal the topic's when given.
    #[serde(default)]
    pub ward: Option<String>,
    /// Bed; optional, must equal the topic's when given.
    #[serde(default)]
    pub bed: Option<String>,
    /// RFC 3339 string or integer Unix ms.
    pub measured_at: Value,
    /// The patient's encounter (visit), optional: a visit number string, or `{"visit_number": …,
    /// "assigning_authority": …}`. It applies to every sample, so each Observation names its stay.
    #[serde(default)]
    pub encounter: Option<Value>,
    /// The samples, each decoded on its own so one bad sample does not sink the others.
    pub samples: Vec<Value>,
}

/// One sample of a vitals message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleJson {
    /// MDC metric code.
    pub mdc: u32,
    /// Value (a JSON number). Required for simple numerics; for compounds the mean (optional).
    #[serde(default)]
    pub value: Option<Value>,
    /// Unit as the device spells it (UCUM, common, MDC).
    #[serde(default)]
    pub unit: Option<String>,
    /// Signal-quality flags: `artifact`, `sensor_off`, `low_signal`, `calibrating`, `manual_entry`, `simulated`.
    #[serde(default)]
    pub quality: Vec<String>,
    /// Components of a compound numeric (blood pressure), in `unit`.
    #[serde(default)]
    pub components: Vec<ComponentJson>,
    /// Coded value of an enumerated metric (ACVPU letter, `AIR`/`O2`).
    #[serde(default)]
    pub enumerated: Option<String>,
    /// The device's own message id, for tracing only.
    #[serde(default)]
    pub id: Option<String>,
}

/// One component of a compound sample.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentJson {
    /// MDC code of the component.
    pub mdc: u32,
    /// Value in the sample's unit.
    pub value: Value,
}

/// Infusion state as the payload spells it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InfusionStateJson {
    /// Fluid is flowing.
    Running,
    /// Paused deliberately.
    Paused,
    /// No flow although the order says it should run.
    Stopped,
    /// The pump reports an occlusion.
    Occluded,
    /// The volume to be infused has been delivered.
    Completed,
    /// Keep-vein-open rate.
    Kvo,
}

impl From<InfusionStateJson> for InfusionState {
    fn from(s: InfusionStateJson) -> Self {
        match s {
            InfusionStateJson::Running => Self::Running,
            InfusionStateJson::Paused => Self::Paused,
            InfusionStateJson::Stopped => Self::Stopped,
            InfusionStateJson::Occluded => Self::Occluded,
            InfusionStateJson::Completed => Self::Completed,
            InfusionStateJson::Kvo => Self::Kvo,
        }
    }
}

/// The infusion payload (`docs/schemas/mqtt-infusion.schema.json`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfusionMessage {
    /// Patient MRN.
    pub patient_id: String,
    /// Medication order id.
    pub order_id: String,
    /// Medication as free text from the order.
    #[serde(default)]
    pub medication: String,
    /// Ward; optional, must equal the topic's when given.
    #[serde(default)]
    pub ward: Option<String>,
    /// Bed; optional, must equal the topic's when given.
    #[serde(default)]
    pub bed: Option<String>,
    /// Prescribed rate, mL/h.
    pub prescribed_rate_ml_h: Value,
    /// Drop factor of the giving set (10, 15, 20, 60); 0 or absent for pumps.
    #[serde(default)]
    pub drop_factor_gtt_per_ml: u32,
    /// Drops per minute counted by a drip monitor; absent for pumps.
    #[serde(default)]
    pub drops_per_min: Option<Value>,
    /// Measured rate, mL/h; when absent it is derived from `drops_per_min` and the drop factor.
    #[serde(default)]
    pub measured_rate_ml_h: Option<Value>,
    /// Volume infused so far, mL.
    pub volume_infused_ml: Value,
    /// Volume remaining in the bag, mL.
    pub volume_remaining_ml: Value,
    /// Current state.
    pub state: InfusionStateJson,
    /// RFC 3339 string or integer Unix ms.
    pub measured_at: Value,
    /// The patient's encounter (visit), optional, as in [`VitalsMessage::encounter`].
    #[serde(default)]
    pub encounter: Option<Value>,
}

fn json_error(e: &serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => DecodeError::Schema(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            DecodeError::MalformedJson(e.to_string())
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `NaN`, `Infinity`, `-inf`, … spelled as a string: JSON has no literal for them, so devices send strings.
fn is_non_finite_word(s: &str) -> bool {
    let t = s.trim().trim_start_matches(['+', '-']).to_ascii_lowercase();
    matches!(t.as_str(), "nan" | "inf" | "infinity")
}

/// A JSON number as a finite f64, or the reason it is not one.
fn number(field: &str, v: &Value) -> Result<f64, Rejection> {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(Rejection::new(
                RejectReason::NotFinite,
                format!("{field} {n} is not a finite number"),
            )),
        },
        Value::String(s) if is_non_finite_word(s) => Err(Rejection::new(
            RejectReason::NotFinite,
            format!(
                "{field} is {:?}: values must be finite JSON numbers",
                clip(s, 20)
            ),
        )),
        other => Err(Rejection::new(
            RejectReason::Invalid,
            format!("{field} must be a JSON number, not {}", type_name(other)),
        )),
    }
}

/// `measured_at` as Unix ms: an integer in 1..=[`MAX_UNIX_MS`] or an RFC 3339 date-time.
pub fn measured_at_ms(v: &Value) -> Result<i64, String> {
    let ms = match v {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(ms), _) => ms,
            // JSON Schema counts 1.7e12 as an integer; so does the edge, when it is one exactly.
            (None, Some(x)) if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 => x as i64,
            _ => {
                return Err(format!(
                    "measured_at {n} must be an integer number of Unix milliseconds"
                ));
            }
        },
        Value::String(s) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
                format!(
                    "measured_at {:?} is not an RFC 3339 date-time: {e}",
                    clip(s, 40)
                )
            })?;
            i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
                .map_err(|_| format!("measured_at {:?} is out of range", clip(s, 40)))?
        }
        other => {
            return Err(format!(
                "measured_at must be an RFC 3339 string or Unix ms, not {}",
                type_name(other)
            ));
        }
    };
    if !(1..=MAX_UNIX_MS).contains(&ms) {
        return Err(format!("measured_at {ms} ms is outside 1970..9999"));
    }
    Ok(ms)
}

fn check_location(
    field: &'static str,
    payload: Option<&String>,
    topic: &str,
) -> Result<(), DecodeError> {
    match payload {
        Some(p) if p != topic => Err(DecodeError::LocationMismatch {
            field,
            payload: clip(p, 64),
            topic: topic.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The payload's `encounter`: absent, `null` or `""` (not known), a visit number string, or an object with
/// `visit_number` and an optional `assigning_authority`. Anything else refuses the message as a whole (it would
/// apply to every sample), with the reason.
pub fn encounter(v: Option<&Value>) -> Result<Option<EncounterId>, DecodeError> {
    let schema = |why: String| DecodeError::Schema(format!("encounter: {why}"));
    let text = |field: &str, v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(schema(format!(
            "{field} must be a string, not {}",
            type_name(other)
        ))),
    };
    let (number, authority) = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => (s.clone(), String::new()),
        Some(Value::Object(o)) => {
            if let Some(k) = o
                .keys()
                .find(|k| !matches!(k.as_str(), "visit_number" | "assigning_authority"))
            {
                return Err(schema(format!(
                    "unknown field {:?} (expected visit_number, assigning_authority)",
                    clip(k, 40)
                )));
            }
            let number = match o.get("visit_number") {
                Some(v) => text("visit_number", v)?,
                None => return Err(schema("visit_number is missing".into())),
            };
            let authority = match o.get("assigning_authority") {
                None | Some(Value::Null) => String::new(),
                Some(v) => text("assigning_authority", v)?,
            };
            (number, authority)
        }
        Some(other) => {
            return Err(schema(format!(
                "must be a visit number string or an object, not {}",
                type_name(other)
            )));
        }
    };
    if number.is_empty() {
        if authority.is_empty() {
            return Ok(None);
        }
        return Err(schema(
            "assigning_authority given without a visit_number".into(),
        ));
    }
    VisitNumber::new(number.as_str()).map_err(|e| schema(e.to_string()))?;
    if !authority.is_empty() {
        AssigningAuthority::new(authority.as_str()).map_err(|e| schema(e.to_string()))?;
    }
    Ok(Some(EncounterId {
        visit_number: number,
        assigning_authority: authority,
    }))
}

fn quality_flag(s: &str) -> Option<QualityFlag> {
    Some(match s {
        "artifact" => QualityFlag::Artifact,
        "sensor_off" => QualityFlag::SensorOff,
        "low_signal" => QualityFlag::LowSignal,
        "calibrating" => QualityFlag::Calibrating,
        "manual_entry" => QualityFlag::ManualEntry,
        "simulated" => QualityFlag::Simulated,
        _ => return None,
    })
}

/// Decodes one MQTT message.
///
/// `Err` refuses the message as a whole (dead-letter it and acknowledge). `Ok` holds one entry per sample (or one
/// for an infusion report), in payload order: the event to offer to [`crate::EdgeNode::accept`], or why that item
/// was refused. Never panics, whatever the bytes.
pub fn decode(
    topic: &str,
    payload: &[u8],
    cfg: &MqttSourceConfig,
) -> Result<Vec<Result<Incoming, Rejection>>, DecodeError> {
    if payload.len() > cfg.max_payload_bytes {
        return Err(DecodeError::Oversized {
            len: payload.len(),
            max: cfg.max_payload_bytes,
        });
    }
    let t = parse_topic(topic, &cfg.topic_prefix)?;
    match t.kind {
        MessageKind::Vitals => decode_vitals(&t, payload),
        MessageKind::Infusion => decode_infusion(&t, payload).map(|r| vec![r]),
    }
}

fn envelope(
    t: &TopicInfo,
    patient_id: &str,
    ward: Option<&String>,
    bed: Option<&String>,
    measured_at: &Value,
) -> Result<i64, DecodeError> {
    PatientId::new(patient_id).map_err(|e| DecodeError::Schema(e.to_string()))?;
    check_location("ward", ward, &t.ward)?;
    check_location("bed", bed, &t.bed)?;
    measured_at_ms(measured_at).map_err(DecodeError::Schema)
}

fn decode_vitals(
    t: &TopicInfo,
    payload: &[u8],
) -> Result<Vec<Result<Incoming, Rejection>>, DecodeError> {
    let msg: VitalsMessage = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
    let measured = envelope(
        t,
        &msg.patient_id,
        msg.ward.as_ref(),
        msg.bed.as_ref(),
        &msg.measured_at,
    )?;
    let visit = encounter(msg.encounter.as_ref())?;
    if msg.samples.is_empty() || msg.samples.len() > MAX_SAMPLES {
        return Err(DecodeError::Schema(format!(
            "samples must hold 1 to {MAX_SAMPLES} entries, not {}",
            msg.samples.len()
        )));
    }
    Ok(msg
        .samples
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            decode_sample(t, &msg.patient_id, visit.as_ref(), measured, v)
                .map_err(|r| Rejection::new(r.reason, format!("sample {i}: {}", r.detail)))
        })
        .collect())
}

fn decode_sample(
    t: &TopicInfo,
    patient_id: &str,
    visit: Option<&EncounterId>,
    measured: i64,
    v: Value,
) -> Result<Incoming, Rejection> {
    let s: SampleJson = serde_json::from_value(v)
        .map_err(|e| Rejection::new(RejectReason::Invalid, e.to_string()))?;
    let tag = match &s.id {
        Some(id) => format!("MDC {} (id {:?})", s.mdc, clip(id, 64)),
        None => format!("MDC {}", s.mdc),
    };
    let ctx = |r: Rejection| Rejection::new(r.reason, format!("{tag}: {}", r.detail));
    let metric = metrics::by_mdc(s.mdc)
        .ok_or_else(|| Rejection::new(RejectReason::UnknownMetric, "not a known metric"))
        .map_err(ctx)?;
    let mut quality = Vec::with_capacity(s.quality.len());
    for q in &s.quality {
        let flag = quality_flag(q)
            .ok_or_else(|| {
                Rejection::new(
                    RejectReason::Invalid,
                    format!("unknown quality flag {:?}", clip(q, 40)),
                )
            })
            .map_err(ctx)?;
        if !quality.contains(&flag) {
            quality.push(flag);
        }
    }
    let mut components = Vec::with_capacity(s.components.len());
    for c in &s.components {
        let x = number(&format!("component {} value", c.mdc), &c.value).map_err(ctx)?;
        components.push((c.mdc, x));
    }
    let value = match (&s.value, metric.kind) {
        (Some(v), ValueKind::Numeric | ValueKind::Compound) => number("value", v).map_err(ctx)?,
        (None, ValueKind::Numeric) => {
            return Err(ctx(Rejection::new(
                RejectReason::Invalid,
                "value is missing",
            )));
        }
        (None, ValueKind::Compound) => components
            .iter()
            .find(|(c, _)| *c == metrics::MDC_PRESS_BLD_NONINV_MEAN)
            .map_or(0.0, |(_, x)| *x),
        (_, ValueKind::Enumerated) => 0.0,
    };
    if s.enumerated.is_some() && metric.kind != ValueKind::Enumerated {
        return Err(ctx(Rejection::new(
            RejectReason::Invalid,
            format!(
                "{} is numeric but the sample carries an enumerated value",
                metric.mdc_ref
            ),
        )));
    }
    let raw = RawVital {
        patient_id: patient_id.to_string(),
        ward: t.ward.clone(),
        bed: t.bed.clone(),
        device_id: t.device_id.clone(),
        metric_mdc: s.mdc,
        value,
        unit: s.unit.unwrap_or_default(),
        components,
        enumerated: s.enumerated,
        measured_at_unix_ms: measured,
        quality,
        encounter: visit.cloned(),
    };
    let vital = normalize_vital(raw).map_err(ctx)?;
    Ok(Incoming {
        idempotency_key: format!("mqtt:{}:{}:{measured}", t.device_id, s.mdc),
        payload: Payload::Vital(vital),
    })
}

fn decode_infusion(
    t: &TopicInfo,
    payload: &[u8],
) -> Result<Result<Incoming, Rejection>, DecodeError> {
    let msg: InfusionMessage = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
    let measured = envelope(
        t,
        &msg.patient_id,
        msg.ward.as_ref(),
        msg.bed.as_ref(),
        &msg.measured_at,
    )?;
    let visit = encounter(msg.encounter.as_ref())?;
    Ok(infusion_event(t, msg, visit, measured))
}

fn infusion_event(
    t: &TopicInfo,
    msg: InfusionMessage,
    visit: Option<EncounterId>,
    measured: i64,
) -> Result<Incoming, Rejection> {
    if msg.medication.len() > 256 {
        return Err(Rejection::new(
            RejectReason::Invalid,
            "medication is longer than 256 bytes",
        ));
    }
    let prescribed = number("prescribed_rate_ml_h", &msg.prescribed_rate_ml_h)?;
    let drops = msg
        .drops_per_min
        .as_ref()
        .map(|v| number("drops_per_min", v))
        .transpose()?;
    let factor = msg.drop_factor_gtt_per_ml;
    if drops.is_some_and(|d| d > 0.0) && factor == 0 {
        return Err(Rejection::new(
            RejectReason::Invalid,
            "drops_per_min given without drop_factor_gtt_per_ml",
        ));
    }
    let measured_rate = match (&msg.measured_rate_ml_h, drops) {
        (Some(v), _) => number("measured_rate_ml_h", v)?,
        // drops/min ÷ drops/mL = mL/min; × 60 = mL/h.
        (None, Some(d)) if factor > 0 => (d / f64::from(factor) * 60.0 * 100.0).round() / 100.0,
        (None, _) => {
            return Err(Rejection::new(
                RejectReason::Invalid,
                "measured_rate_ml_h is missing and cannot be derived (needs drops_per_min and a drop factor)",
            ));
        }
    };
    let status = InfusionStatus {
        order_id: msg.order_id,
        patient_id: msg.patient_id,
        location: Some(BedLocation {
            ward: t.ward.clone(),
            bed: t.bed.clone(),
        }),
        device_id: t.device_id.clone(),
        medication: msg.medication,
        prescribed_rate_ml_h: prescribed,
        measured_rate_ml_h: measured_rate,
        drop_factor_gtt_per_ml: factor,
        drops_per_min: drops.unwrap_or(0.0),
        volume_infused_ml: number("volume_infused_ml", &msg.volume_infused_ml)?,
        volume_remaining_ml: number("volume_remaining_ml", &msg.volume_remaining_ml)?,
        state: InfusionState::from(msg.state) as i32,
        measured_at_unix_ms: measured,
        encounter: visit,
    };
    let incoming = Incoming {
        idempotency_key: format!("mqtt:{}:infusion:{measured}", t.device_id),
        payload: Payload::Infusion(status),
    };
    // The same check `EdgeNode::accept` applies, so decode alone reports what accept would refuse.
    let probe = EdgeEvent {
        sequence: 0,
        idempotency_key: incoming.idempotency_key.clone(),
        accepted_at_unix_ms: measured,
        payload: Some(incoming.payload.clone()),
    };
    validate::event(&probe)?;
    Ok(incoming)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::metrics::*;
    use wardwatch_proto::v1::VitalSign;

    const T: &str = "wardwatch/v1/7A/12/mon-1/vitals";
    const TI: &str = "wardwatch/v1/7A/12/pump-3/infusion";

    fn cfg() -> MqttSourceConfig {
        MqttSourceConfig::default()
    }

    fn dec(topic: &str, payload: &str) -> Result<Vec<Result<Incoming, Rejection>>, DecodeError> {
        decode(topic, payload.as_bytes(), &cfg())
    }

    fn vital(r: &Result<Incoming, Rejection>) -> VitalSign {
        match r {
            Ok(Incoming {
                payload: Payload::Vital(v),
                ..
            }) => v.clone(),
            other => panic!("expected a vital, got {other:?}"),
        }
    }

    fn rejected(r: &Result<Incoming, Rejection>) -> RejectReason {
        match r {
            Err(rej) => rej.reason,
            Ok(i) => panic!("expected a rejection, got {i:?}"),
        }
    }

    fn one_sample(sample: &str) -> String {
        format!(r#"{{"patient_id":"MRN1","measured_at":1700000000000,"samples":[{sample}]}}"#)
    }

    #[test]
    fn mqtt_decodes_good_vitals_with_topic_location_and_keys() {
        let out = dec(
            T,
            r#"{"patient_id":"MRN1","measured_at":"2023-11-14T22:13:20.5Z","samples":[
                {"mdc":147842,"value":72,"unit":"/min","quality":["artifact","artifact"],"id":"m-1"},
                {"mdc":150456,"value":97,"unit":"%"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.len(), 2);
        let hr = vital(&out[0]);
        assert_eq!((hr.value, hr.unit_ucum.as_str()), (72.0, "/min"));
        assert_eq!(hr.measured_at_unix_ms, 1_700_000_000_500);
        assert_eq!(hr.quality, vec![QualityFlag::Artifact as i32]);
        assert_eq!(hr.device_id, "mon-1");
        let loc = hr.location.unwrap_or_default();
        assert_eq!((loc.ward.as_str(), loc.bed.as_str()), ("7A", "12"));
        match &out[0] {
            Ok(i) => assert_eq!(i.idempotency_key, "mqtt:mon-1:147842:1700000000500"),
            Err(r) => panic!("{r}"),
        }
        assert_eq!(vital(&out[1]).metric_mdc, MDC_PULS_OXIM_SAT_O2);
    }

    #[test]
    fn mqtt_converts_fahrenheit_and_kpa() {
        let out = dec(T, &one_sample(r#"{"mdc":150364,"value":98.6,"unit":"°F"}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        let t = vital(&out[0]);
        assert_eq!((t.value, t.unit_ucum.as_str()), (37.0, "Cel"));
        let out = dec(
            T,
            &one_sample(r#"{"mdc":150364,"value":101.3,"unit":"degF"}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vital(&out[0]).value, 38.5);
        let out = dec(
            T,
            &one_sample(r#"{"mdc":150020,"unit":"kPa","components":[{"mdc":150021,"value":16},{"mdc":150022,"value":10.6}]}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bp = vital(&out[0]);
        assert_eq!(bp.unit_ucum, "mm[Hg]");
        assert_eq!(
            bp.components.iter().map(|c| c.value).collect::<Vec<_>>(),
            vec![120.0, 79.5]
        );
    }

    #[test]
    fn mqtt_compound_components_and_mean() {
        let out = dec(
            T,
            &one_sample(
                r#"{"mdc":150020,"unit":"mmHg","components":[{"mdc":150021,"value":120},{"mdc":150022,"value":80},{"mdc":150023,"value":93}]}"#,
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bp = vital(&out[0]);
        assert_eq!(bp.value, 93.0, "the mean component is the compound's value");
        assert_eq!(bp.components.len(), 3);
        // Diastolic missing: refused per sample.
        let out = dec(
            T,
            &one_sample(
                r#"{"mdc":150020,"unit":"mmHg","components":[{"mdc":150021,"value":120}]}"#,
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected(&out[0]), RejectReason::Invalid);
        // A component that is not part of blood pressure.
        let out = dec(
            T,
            &one_sample(r#"{"mdc":150020,"unit":"mmHg","components":[{"mdc":150021,"value":120},{"mdc":150022,"value":80},{"mdc":147842,"value":1}]}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected(&out[0]), RejectReason::UnknownMetric);
        // A NaN component.
        let out = dec(
            T,
            &one_sample(r#"{"mdc":150020,"unit":"mmHg","components":[{"mdc":150021,"value":"NaN"},{"mdc":150022,"value":80}]}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected(&out[0]), RejectReason::NotFinite);
    }

    #[test]
    fn mqtt_enumerated_values() {
        let out = dec(
            T,
            &one_sample(&format!(r#"{{"mdc":{WARDWATCH_ACVPU},"enumerated":"v"}}"#)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vital(&out[0]).enumerated, "V");
        let out = dec(
            T,
            &one_sample(&format!(r#"{{"mdc":{WARDWATCH_ACVPU},"enumerated":"X"}}"#)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected(&out[0]), RejectReason::Invalid);
        let out = dec(T, &one_sample(&format!(r#"{{"mdc":{WARDWATCH_ACVPU}}}"#)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected(&out[0]), RejectReason::Invalid);
        let out = dec(
            T,
            &one_sample(r#"{"mdc":147842,"value":72,"unit":"/min","enumerated":"A"}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected(&out[0]), RejectReason::Invalid);
    }

    #[test]
    fn mqtt_mixed_message_keeps_good_samples_and_rejects_bad_ones_with_reasons() {
        let out = dec(
            T,
            r#"{"patient_id":"MRN1","measured_at":1700000000000,"samples":[
                {"mdc":147842,"value":72,"unit":"bpm"},
                {"mdc":4242,"value":1,"unit":"/min"},
                {"mdc":151562,"value":"NaN","unit":"/min"},
                {"mdc":151562,"value":"Infinity","unit":"/min"},
                {"mdc":151562,"value":"16","unit":"/min"},
                {"mdc":151562,"value":16,"unit":"furlongs"},
                {"mdc":150364,"value":500,"unit":"degF"},
                {"mdc":147842,"unit":"/min"},
                {"mdc":147842,"value":72,"unit":"/min","colour":"red"},
                {"mdc":"147842","value":72,"unit":"/min"},
                {"mdc":147842,"value":72,"unit":"/min","quality":["wobbly"]},
                {"mdc":-1,"value":72,"unit":"/min"},
                {"mdc":151562,"value":16,"unit":"/min","components":[{"mdc":1,"value":2}]},
                42
            ]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<Option<RejectReason>> = out
            .iter()
            .map(|r| r.as_ref().err().map(|r| r.reason))
            .collect();
        use RejectReason::*;
        assert_eq!(
            got,
            vec![
                None,
                Some(UnknownMetric),
                Some(NotFinite),
                Some(NotFinite),
                Some(Invalid),
                Some(BadUnit),
                Some(Invalid),
                Some(Invalid),
                Some(Invalid),
                Some(Invalid),
                Some(Invalid),
                Some(Invalid),
                Some(Invalid),
                Some(Invalid),
            ]
        );
        let details: Vec<String> = out
            .iter()
            .filter_map(|r| r.as_ref().err().map(|r| r.detail.clone()))
            .collect();
        assert!(
            details[0].starts_with("sample 1: MDC 4242"),
            "{}",
            details[0]
        );
        assert!(
            details.iter().any(|d| d.contains("unknown field `colour`")),
            "{details:?}"
        );
        assert!(
            details.iter().any(|d| d.contains("unknown quality flag")),
            "{details:?}"
        );
    }

    #[test]
    fn mqtt_refuses_malformed_messages_whole() {
        let code =
            |topic: &str, p: &[u8]| decode(topic, p, &cfg()).map(|_| ()).map_err(|e| e.code());
        assert_eq!(code(T, b"{not json"), Err("malformed_json"));
        assert_eq!(code(T, b""), Err("malformed_json"));
        assert_eq!(code(T, b"\xff\xfe\x00garbage"), Err("malformed_json"));
        assert_eq!(
            code(
                T,
                br#"{"patient_id":"MRN1","measured_at":1,"samples":[{"mdc":147842,"value":NaN}]}"#
            ),
            Err("malformed_json")
        );
        // 1e999 overflows f64: serde_json refuses the document rather than yielding infinity.
        assert_eq!(
            code(T, br#"{"patient_id":"MRN1","measured_at":1,"samples":[{"mdc":147842,"value":1e999,"unit":"/min"}]}"#),
            Err("malformed_json")
        );
        assert_eq!(code(T, b"[]"), Err("schema_violation"));
        assert_eq!(code(T, b"null"), Err("schema_violation"));
        assert_eq!(
            code(T, br#"{"measured_at":1,"samples":[]}"#),
            Err("schema_violation")
        );
        assert_eq!(
            code(
                T,
                br#"{"patient_id":"MRN1","measured_at":1,"samples":[],"extra":1}"#
            ),
            Err("schema_violation")
        );
        assert_eq!(
            code(T, br#"{"patient_id":"MRN1","measured_at":1,"samples":[]}"#),
            Err("schema_violation")
        );
        assert_eq!(
            code(
                T,
                br#"{"patient_id":"MRN 1","measured_at":1,"samples":[{}]}"#
            ),
            Err("schema_violation")
        );
        assert_eq!(
            code(
                T,
                br#"{"patient_id":"MRN1","patient_id":"MRN2","measured_at":1,"samples":[{}]}"#
            ),
            Err("schema_violation")
        );
        for bad_time in [
            "0",
            "-5",
            "1700000000000.5",
            "-1e3",
            "\"yesterday\"",
            "\"2023-11-14 22:13:20\"",
            "true",
            "99999999999999999999",
            "253402300800000",
        ] {
            let p = format!(
                r#"{{"patient_id":"MRN1","measured_at":{bad_time},"samples":[{{"mdc":147842,"value":72,"unit":"/min"}}]}}"#
            );
            assert_eq!(code(T, p.as_bytes()), Err("schema_violation"), "{bad_time}");
        }
        // An exact integer written with an exponent is an integer (as in JSON Schema).
        let p = br#"{"patient_id":"MRN1","measured_at":1.7e12,"samples":[{"mdc":147842,"value":72,"unit":"/min"}]}"#;
        assert_eq!(code(T, p), Ok(()));
        let too_many = format!(
            r#"{{"patient_id":"MRN1","measured_at":1,"samples":[{}]}}"#,
            vec![r#"{"mdc":147842,"value":72,"unit":"/min"}"#; MAX_SAMPLES + 1].join(",")
        );
        assert_eq!(code(T, too_many.as_bytes()), Err("schema_violation"));
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        let deep = format!(
            r#"{{"patient_id":"MRN1","measured_at":1,"samples":[{}{}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(code(T, deep.as_bytes()), Err("malformed_json"));
    }

    #[test]
    fn mqtt_refuses_oversized_payloads_before_parsing() {
        let c = MqttSourceConfig {
            max_payload_bytes: 1024,
            ..cfg()
        };
        let big = one_sample(&format!(
            r#"{{"mdc":147842,"value":72,"unit":"/min","id":"{}"}}"#,
            "x".repeat(2000)
        ));
        match decode(T, big.as_bytes(), &c) {
            Err(DecodeError::Oversized { len, max: 1024 }) => assert_eq!(len, big.len()),
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine (as far as size goes).
        let at = vec![b' '; 1024];
        assert_eq!(
            decode(T, &at, &c).map(|_| ()).map_err(|e| e.code()),
            Err("malformed_json")
        );
    }

    #[test]
    fn mqtt_topic_rules_and_location_mismatch() {
        let p = one_sample(r#"{"mdc":147842,"value":72,"unit":"/min"}"#);
        for bad in [
            "other/v1/7A/12/mon-1/vitals",
            "wardwatch/v1/7A/12/vitals",
            "wardwatch/v1/7A/12/mon-1/x/vitals",
            "wardwatch/v1/7A/12/mon-1/alarms",
            "wardwatch/v1//12/mon-1/vitals",
            "wardwatch/v1/7A;DROP/12/mon-1/vitals",
            "wardwatch/v1/7A/12/mon.1/vitals",
            "wardwatch/v1x/7A/12/mon-1/vitals",
            "wardwatch/v1",
            "",
        ] {
            assert_eq!(
                dec(bad, &p).map(|_| ()).map_err(|e| e.code()),
                Err("bad_topic"),
                "{bad}"
            );
        }
        let with = |ward: &str, bed: &str| {
            format!(
                r#"{{"patient_id":"MRN1","ward":"{ward}","bed":"{bed}","measured_at":1700000000000,"samples":[{{"mdc":147842,"value":72,"unit":"/min"}}]}}"#
            )
        };
        assert!(dec(T, &with("7A", "12")).is_ok());
        match dec(T, &with("7B", "12")) {
            Err(DecodeError::LocationMismatch { field: "ward", .. }) => {}
            other => panic!("{other:?}"),
        }
        match dec(T, &with("7A", "13")) {
            Err(e) => assert_eq!(e.code(), "location_mismatch"),
            other => panic!("{other:?}"),
        }
        // A custom multi-level prefix.
        let c = MqttSourceConfig {
            topic_prefix: "hospital/north/ww".into(),
            ..cfg()
        };
        assert!(decode("hospital/north/ww/7A/12/mon-1/vitals", p.as_bytes(), &c).is_ok());
        assert!(decode(T, p.as_bytes(), &c).is_err());
    }

    fn infusion(state: &str, extra: &str) -> String {
        format!(
            r#"{{"patient_id":"MRN1","order_id":"ORD-9","medication":"NaCl 0.9% 1000 mL","prescribed_rate_ml_h":125,
               "volume_infused_ml":250,"volume_remaining_ml":750,"state":"{state}","measured_at":1700000000000{extra}}}"#
        )
    }

    fn status(r: &Result<Incoming, Rejection>) -> InfusionStatus {
        match r {
            Ok(Incoming {
                payload: Payload::Infusion(s),
                ..
            }) => s.clone(),
            other => panic!("expected an infusion, got {other:?}"),
        }
    }

    #[test]
    fn mqtt_encounter_is_optional_and_checked() {
        let with = |encounter: &str| {
            dec(
                T,
                &format!(
                    r#"{{"patient_id":"MRN1","measured_at":1700000000000,{encounter}"samples":[
                        {{"mdc":147842,"value":72,"unit":"/min"}},{{"mdc":150456,"value":97,"unit":"%"}}]}}"#
                ),
            )
        };
        let visit = |n: &str, a: &str| {
            Some(EncounterId {
                visit_number: n.into(),
                assigning_authority: a.into(),
            })
        };
        // Without one (absent, null, empty): no encounter, and the same idempotency key as before encounters.
        for none in ["", r#""encounter":null,"#, r#""encounter":"","#] {
            let out = with(none).unwrap_or_else(|e| panic!("{none}: {e}"));
            assert_eq!(vital(&out[0]).encounter, None, "{none}");
            match &out[0] {
                Ok(i) => assert_eq!(i.idempotency_key, "mqtt:mon-1:147842:1700000000000"),
                Err(r) => panic!("{r}"),
            }
        }
        // A string, or an object with or without the authority: on every sample.
        for (json, want) in [
            (r#""encounter":"V2024-17","#, visit("V2024-17", "")),
            (
                r#""encounter":{"visit_number":"V2024-17"},"#,
                visit("V2024-17", ""),
            ),
            (
                r#""encounter":{"visit_number":"V2024-17","assigning_authority":"HOSP"},"#,
                visit("V2024-17", "HOSP"),
            ),
        ] {
            let out = with(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(out.len(), 2);
            for r in &out {
                assert_eq!(vital(r).encounter, want, "{json}");
            }
        }
        // Anything else refuses the whole message as a schema violation, saying what is wrong.
        for (json, needle) in [
            (r#""encounter":"V 17","#, "visit number"),
            (r#""encounter":"V|17","#, "visit number"),
            (r#""encounter":42,"#, "not a number"),
            (r#""encounter":{"number":"V1"},"#, "unknown field"),
            (
                r#""encounter":{"assigning_authority":"HOSP"},"#,
                "visit_number is missing",
            ),
            (
                r#""encounter":{"visit_number":"","assigning_authority":"HOSP"},"#,
                "without a visit_number",
            ),
            (r#""encounter":{"visit_number":17},"#, "must be a string"),
            (
                r#""encounter":{"visit_number":"V1","assigning_authority":"A B"},"#,
                "assigning authority",
            ),
        ] {
            let e = with(json)
                .err()
                .unwrap_or_else(|| panic!("{json} accepted"));
            assert_eq!(e.code(), "schema_violation", "{json}");
            let text = e.to_string();
            assert!(text.contains("encounter"), "{json}: {text}");
            assert!(text.contains(needle), "{json}: {text}");
        }
        let long = format!(r#""encounter":"{}","#, "9".repeat(65));
        assert!(with(&long).unwrap_err().to_string().contains("too long"));
        // Infusion reports carry it the same way.
        let out = dec(
            TI,
            &infusion(
                "running",
                r#","measured_rate_ml_h":125,"encounter":{"visit_number":"V2024-17","assigning_authority":"HOSP"}"#,
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status(&out[0]).encounter, visit("V2024-17", "HOSP"));
        assert_eq!(
            dec(TI, &infusion("running", r#","measured_rate_ml_h":125"#))
                .map(|o| status(&o[0]).encounter)
                .unwrap_or_else(|e| panic!("{e}")),
            None
        );
        assert!(
            dec(
                TI,
                &infusion("running", r#","measured_rate_ml_h":125,"encounter":"V 1""#)
            )
            .is_err()
        );
    }

    #[test]
    fn mqtt_decodes_every_infusion_state() {
        for (s, want) in [
            ("running", InfusionState::Running),
            ("paused", InfusionState::Paused),
            ("stopped", InfusionState::Stopped),
            ("occluded", InfusionState::Occluded),
            ("completed", InfusionState::Completed),
            ("kvo", InfusionState::Kvo),
        ] {
            let out = dec(TI, &infusion(s, r#","measured_rate_ml_h":124.5"#))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out.len(), 1);
            let st = status(&out[0]);
            assert_eq!(st.state, want as i32, "{s}");
            assert_eq!(st.measured_rate_ml_h, 124.5);
            assert_eq!(st.device_id, "pump-3");
            if let Ok(i) = &out[0] {
                assert_eq!(i.idempotency_key, "mqtt:pump-3:infusion:1700000000000");
            }
        }
        assert_eq!(
            dec(TI, &infusion("RUNNING", r#","measured_rate_ml_h":1"#))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err("schema_violation")
        );
        assert_eq!(
            dec(TI, &infusion("leaking", r#","measured_rate_ml_h":1"#))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err("schema_violation")
        );
    }

    #[test]
    fn mqtt_infusion_rate_derivation_and_value_checks() {
        // 40 drops/min at 20 drops/mL = 2 mL/min = 120 mL/h.
        let out = dec(
            TI,
            &infusion(
                "running",
                r#","drop_factor_gtt_per_ml":20,"drops_per_min":40"#,
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let st = status(&out[0]);
        assert_eq!(
            (
                st.measured_rate_ml_h,
                st.drop_factor_gtt_per_ml,
                st.drops_per_min
            ),
            (120.0, 20, 40.0)
        );
        let r = |extra: &str| dec(TI, &infusion("running", extra)).map(|v| rejected(&v[0]));
        assert_eq!(r(""), Ok(RejectReason::Invalid), "no rate at all");
        assert_eq!(
            r(r#","drops_per_min":40"#),
            Ok(RejectReason::Invalid),
            "drops without a factor"
        );
        assert_eq!(
            r(r#","drop_factor_gtt_per_ml":17,"drops_per_min":40"#),
            Ok(RejectReason::Invalid),
            "odd drop factor"
        );
        assert_eq!(
            r(r#","measured_rate_ml_h":"NaN""#),
            Ok(RejectReason::NotFinite)
        );
        assert_eq!(r(r#","measured_rate_ml_h":-3"#), Ok(RejectReason::Invalid));
        assert_eq!(
            r(r#","measured_rate_ml_h":"fast""#),
            Ok(RejectReason::Invalid)
        );
        assert_eq!(
            dec(
                TI,
                &infusion("running", r#","measured_rate_ml_h":1,"ward":"9Z""#)
            )
            .map(|_| ())
            .map_err(|e| e.code()),
            Err("location_mismatch")
        );
        assert_eq!(
            dec(
                TI,
                &infusion("running", r#","measured_rate_ml_h":1,"flow":"x""#)
            )
            .map(|_| ())
            .map_err(|e| e.code()),
            Err("schema_violation")
        );
        assert_eq!(
            dec(
                TI,
                r#"{"patient_id":"MRN1","state":"running","measured_at":1}"#
            )
            .map(|_| ())
            .map_err(|e| e.code()),
            Err("schema_violation")
        );
    }

    #[test]
    fn mqtt_decode_never_panics_on_arbitrary_bytes() {
        // A small deterministic fuzz: mutations of valid messages and random bytes must only ever return.
        let seeds = [
            one_sample(
                r#"{"mdc":150020,"unit":"mmHg","components":[{"mdc":150021,"value":120},{"mdc":150022,"value":80}]}"#,
            ),
            infusion(
                "running",
                r#","drop_factor_gtt_per_ml":20,"drops_per_min":40"#,
            ),
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % 2].clone().into_bytes();
            for _ in 0..(next() % 6) {
                let n = bytes.len().max(1);
                let at = (next() as usize) % n;
                match next() % 4 {
                    0 if at < bytes.len() => bytes[at] = next() as u8,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at.min(bytes.len()), b"{}[]\":,0e-9"[(next() % 11) as usize]),
                    _ => bytes.truncate(at),
                }
            }
            let topic = if round % 2 == 0 { T } else { TI };
            let _ = decode(topic, &bytes, &cfg());
            let random: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let _ = decode(topic, &random, &cfg());
            let _ = decode(&String::from_utf8_lossy(&random), &bytes, &cfg());
        }
    }
}
