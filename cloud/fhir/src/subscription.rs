//! Topic-based subscriptions on FHIR R4, per the HL7 "Subscriptions R5 Backport" implementation guide:
//!
//! * [`parse_subscription`] reads a client's `Subscription` (R4 shape with the backport extensions) into a plain
//!   [`SubscriptionRequest`]; [`subscription`] renders a stored one back.
//! * [`subscription_status`] is the R4 `SubscriptionStatus`: a `Parameters` resource on the
//!   `backport-subscription-status-r4` profile (R4 has no SubscriptionStatus resource).
//! * [`notification_bundle`] is a notification: a `history` Bundle whose first entry is that `Parameters`, followed
//!   by one entry per focus resource (the resource itself for `full-resource`, only its `fullUrl` for `id-only`).
//! * [`subscription_topic`] describes a topic as an R4B `SubscriptionTopic` (served for discovery; R4 itself has no
//!   such resource, the backport IG identifies topics by canonical URL only).
//!
//! All of these are built with `fhir-sdk`'s typed R4B models (R4B's `Subscription`, `Parameters` and `Bundle` are
//! wire-compatible with R4's).

use std::num::NonZeroU32;

use fhir_sdk::r4b::codes::{
    BundleType, HTTPVerb, PublicationStatus, SubscriptionChannelType,
    SubscriptionStatus as FhirSubscriptionStatus,
};
use fhir_sdk::r4b::resources::{
    Bundle, BundleEntry, BundleEntryRequest, BundleEntryResponse, Parameters, ParametersParameter,
    ParametersParameterValue, Subscription, SubscriptionChannel, SubscriptionTopic,
    SubscriptionTopicCanFilterBy, SubscriptionTopicEventTrigger,
};
use fhir_sdk::r4b::types::{Extension, ExtensionValue, FieldExtension, Meta, Reference};

use crate::util::{
    build_err, codeable_concept, instant_from_unix_ms, invalid, require_id, require_string,
    require_uri, ser_err,
};
use crate::{Coding, FhirError};

/// Profile of a topic-based Subscription in R4.
pub const BACKPORT_SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
/// Profile of the R4 SubscriptionStatus `Parameters`.
pub const BACKPORT_STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
/// Profile of a notification Bundle.
pub const BACKPORT_NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
/// Extension on `Subscription.criteria`: one filter (`[type]?[param]=[value]`).
pub const EXT_FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
/// Extension on `Subscription.channel`: heartbeat period, seconds.
pub const EXT_HEARTBEAT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
/// Extension on `Subscription.channel`: timeout of one delivery attempt, seconds.
pub const EXT_TIMEOUT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
/// Extension on `Subscription.channel`: most events in one notification.
pub const EXT_MAX_COUNT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
/// Extension on `Subscription.channel.payload`: `empty`, `id-only` or `full-resource`.
pub const EXT_PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
/// Code system of `SubscriptionStatus` errors.
pub const SUBSCRIPTION_ERROR_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/subscription-error";

/// What a client asked for in a `Subscription` (not yet checked against the server's topics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// `Subscription.status` as sent (`requested` or `off`; the server decides the rest).
    pub status: String,
    /// `Subscription.criteria`: the topic's canonical URL.
    pub topic: String,
    /// `backport-filter-criteria` values, as sent.
    pub filters: Vec<String>,
    /// `Subscription.reason`.
    pub reason: String,
    /// `Subscription.end`, Unix ms.
    pub end_unix_ms: Option<i64>,
    /// `channel.type` (only `rest-hook` is served; checked by the caller).
    pub channel_type: String,
    /// `channel.endpoint`.
    pub endpoint: Option<String>,
    /// `channel.header` entries (`Name: value`).
    pub headers: Vec<String>,
    /// `channel.payload` MIME type.
    pub payload_mime: Option<String>,
    /// `backport-payload-content`.
    pub content: Option<String>,
    /// `backport-heartbeat-period`, seconds.
    pub heartbeat_secs: Option<u32>,
    /// `backport-timeout`, seconds.
    pub timeout_secs: Option<u32>,
    /// `backport-max-count`.
    pub max_count: Option<u32>,
}

/// A stored subscription, to render as a FHIR `Subscription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord<'a> {
    /// Logical id.
    pub id: &'a str,
    /// `requested`, `active`, `error` or `off`.
    pub status: &'a str,
    /// Topic canonical URL.
    pub topic: &'a str,
    /// Filter criteria.
    pub filters: &'a [String],
    /// Reason.
    pub reason: &'a str,
    /// End, Unix ms.
    pub end_unix_ms: Option<i64>,
    /// Last error, if any.
    pub error: Option<&'a str>,
    /// Endpoint URL.
    pub endpoint: &'a str,
    /// Headers as shown (the caller masks secrets).
    pub headers: &'a [String],
    /// `empty`, `id-only` or `full-resource`.
    pub content: &'a str,
    /// Heartbeat period, seconds (0: none).
    pub heartbeat_secs: u32,
    /// Delivery timeout, seconds.
    pub timeout_secs: u32,
    /// Most events per notification.
    pub max_count: u32,
}

/// One event in a `SubscriptionStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationEventRecord {
    /// Event number (1, 2, ... per subscription).
    pub number: u64,
    /// When the event happened, Unix ms.
    pub timestamp_unix_ms: i64,
    /// Absolute URL of the focus resource (omitted for `empty` content).
    pub focus: Option<String>,
}

/// A `SubscriptionStatus` to render as R4 backport `Parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStatusRecord<'a> {
    /// Absolute URL of the subscription.
    pub subscription_url: &'a str,
    /// Topic canonical URL.
    pub topic: &'a str,
    /// The subscription's status.
    pub status: &'a str,
    /// `handshake`, `heartbeat`, `event-notification`, `query-status` or `query-event`.
    pub kind: &'a str,
    /// Events generated since the subscription started (the highest event number).
    pub events_since_start: u64,
    /// The events this status reports.
    pub events: &'a [NotificationEventRecord],
    /// The last delivery error, if any (`subscription-error` code `no-response`, with this text).
    pub error: Option<&'a str>,
}

/// One focus entry of a notification Bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationEntry {
    /// Absolute URL of the focus resource.
    pub full_url: String,
    /// `Type/id`, the entry's request URL.
    pub request_url: String,
    /// The resource (`full-resource`), or `None` (`id-only`).
    pub resource: Option<serde_json::Value>,
}

/// A notification to render as a `history` Bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationBundle {
    /// Bundle id (unique per notification).
    pub id: String,
    /// Bundle timestamp, Unix ms.
    pub timestamp_unix_ms: i64,
    /// The status `Parameters` from [`subscription_status`].
    pub status: serde_json::Value,
    /// The `$status` URL of the subscription (request URL of the status entry).
    pub status_url: String,
    /// The focus entries, in event order.
    pub entries: Vec<NotificationEntry>,
}

/// One filter a topic allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicFilter<'a> {
    /// Filter parameter name (`patient`, `ward`, ...).
    pub name: &'a str,
    /// What it means.
    pub description: &'a str,
}

/// A topic, to render as an R4B `SubscriptionTopic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord<'a> {
    /// Logical id.
    pub id: &'a str,
    /// Canonical URL.
    pub url: &'a str,
    /// Title.
    pub title: &'a str,
    /// Description.
    pub description: &'a str,
    /// The event that triggers it.
    pub event: Coding<'a>,
    /// The focus resource type.
    pub resource: &'a str,
    /// Allowed filters.
    pub filters: &'a [TopicFilter<'a>],
}

fn ext(url: &str, value: ExtensionValue) -> Result<Extension, FhirError> {
    Extension::builder()
        .url(url.to_owned())
        .value(value)
        .build()
        .map_err(build_err("Extension"))
}

fn ext_values<'a>(exts: &'a [Extension], url: &str) -> impl Iterator<Item = &'a ExtensionValue> {
    exts.iter()
        .filter(move |e| e.url == url)
        .filter_map(|e| e.value.as_ref())
}

fn one_ext<'a>(
    exts: &'a [Extension],
    url: &str,
    field: &str,
) -> Result<Option<&'a ExtensionValue>, FhirError> {
    let mut it = ext_values(exts, url);
    let first = it.next();
    if it.next().is_some() {
        return Err(invalid(format!("{field} is given more than once")));
    }
    Ok(first)
}

fn uint_ext(exts: &[Extension], url: &str, field: &str) -> Result<Option<u32>, FhirError> {
    Ok(match one_ext(exts, url, field)? {
        None => None,
        Some(ExtensionValue::UnsignedInt(v)) => Some(*v),
        Some(ExtensionValue::PositiveInt(v)) => Some(v.get()),
        Some(ExtensionValue::Integer(v)) => {
            Some(u32::try_from(*v).map_err(|_| invalid(format!("{field} must not be negative")))?)
        }
        Some(_) => return Err(invalid(format!("{field} must be a whole number"))),
    })
}

fn code_text(v: serde_json::Result<serde_json::Value>) -> String {
    v.ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn field_exts(f: Option<&FieldExtension>) -> &[Extension] {
    f.map_or(&[], |f| f.extension.as_slice())
}

/// Reads a client's `Subscription` (R4 with the backport extensions). Checks the JSON against the R4(B) model and
/// the extensions' types; whether the topic, filters, endpoint and values are acceptable is the server's call.
///
/// # Errors
/// [`FhirError::InvalidInput`] with a reason for anything that is not a well-formed Subscription.
pub fn parse_subscription(json: &serde_json::Value) -> Result<SubscriptionRequest, FhirError> {
    if json.get("resourceType").and_then(serde_json::Value::as_str) != Some("Subscription") {
        return Err(invalid("the body is not a Subscription resource"));
    }
    let sub: Subscription = serde_json::from_value(json.clone())
        .map_err(|e| invalid(format!("not a valid FHIR R4 Subscription: {e}")))?;
    let filters = ext_values(field_exts(sub.criteria_ext.as_ref()), EXT_FILTER_CRITERIA)
        .map(|v| match v {
            ExtensionValue::String(s) => Ok(s.clone()),
            _ => Err(invalid("backport-filter-criteria must be a valueString")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ch = &sub.channel;
    let content = match one_ext(
        field_exts(ch.payload_ext.as_ref()),
        EXT_PAYLOAD_CONTENT,
        "backport-payload-content",
    )? {
        None => None,
        Some(ExtensionValue::Code(c)) => Some(c.clone()),
        Some(_) => return Err(invalid("backport-payload-content must be a valueCode")),
    };
    Ok(SubscriptionRequest {
        status: code_text(serde_json::to_value(sub.status)),
        topic: sub.criteria.clone(),
        filters,
        reason: sub.reason.clone(),
        end_unix_ms: sub
            .end
            .as_ref()
            .map(|i| i64::try_from(i.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)),
        channel_type: code_text(serde_json::to_value(ch.r#type)),
        endpoint: ch.endpoint.clone(),
        headers: ch.header.iter().flatten().cloned().collect(),
        payload_mime: ch.payload.clone(),
        content,
        heartbeat_secs: uint_ext(&ch.extension, EXT_HEARTBEAT, "backport-heartbeat-period")?,
        timeout_secs: uint_ext(&ch.extension, EXT_TIMEOUT, "backport-timeout")?,
        max_count: uint_ext(&ch.extension, EXT_MAX_COUNT, "backport-max-count")?,
    })
}

fn status_code(s: &str) -> Result<FhirSubscriptionStatus, FhirError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| invalid(format!("subscription status {s:?} is not a FHIR status")))
}

/// Renders a stored subscription as a backport `Subscription` (R4).
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, status, URL or instant.
pub fn subscription(r: &SubscriptionRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("id", r.id)?;
    require_uri("topic", r.topic)?;
    require_uri("endpoint", r.endpoint)?;
    require_string("reason", r.reason)?;
    let criteria_ext = if r.filters.is_empty() {
        None
    } else {
        let exts = r
            .filters
            .iter()
            .map(|f| ext(EXT_FILTER_CRITERIA, ExtensionValue::String(f.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Some(
            FieldExtension::builder()
                .extension(exts)
                .build()
                .map_err(build_err("criteria extension"))?,
        )
    };
    let mut channel_ext = vec![ext(
        EXT_TIMEOUT,
        ExtensionValue::UnsignedInt(r.timeout_secs),
    )?];
    if r.heartbeat_secs > 0 {
        channel_ext.push(ext(
            EXT_HEARTBEAT,
            ExtensionValue::UnsignedInt(r.heartbeat_secs),
        )?);
    }
    let max =
        NonZeroU32::new(r.max_count).ok_or_else(|| invalid("max_count must be at least 1"))?;
    channel_ext.push(ext(EXT_MAX_COUNT, ExtensionValue::PositiveInt(max))?);
    let payload_ext = FieldExtension::builder()
        .extension(vec![ext(
            EXT_PAYLOAD_CONTENT,
            ExtensionValue::Code(r.content.to_owned()),
        )?])
        .build()
        .map_err(build_err("payload extension"))?;
    let channel = SubscriptionChannel::builder()
        .r#type(SubscriptionChannelType::RestHook)
        .endpoint(r.endpoint.to_owned())
        .payload("application/fhir+json".to_owned())
        .payload_ext(payload_ext)
        .header(r.headers.iter().cloned().map(Some).collect())
        .extension(channel_ext)
        .build()
        .map_err(build_err("Subscription.channel"))?;
    let mut b = Subscription::builder()
        .id(r.id.to_owned())
        .meta(profile_meta(BACKPORT_SUBSCRIPTION_PROFILE)?)
        .status(status_code(r.status)?)
        .reason(r.reason.to_owned())
        .criteria(r.topic.to_owned())
        .channel(channel);
    if let Some(c) = criteria_ext {
        b = b.criteria_ext(c);
    }
    if let Some(end) = r.end_unix_ms {
        b = b.end(instant_from_unix_ms("end", end)?);
    }
    if let Some(e) = r.error.filter(|e| !e.trim().is_empty()) {
        b = b.error(e.to_owned());
    }
    let sub = b.build().map_err(build_err("Subscription"))?;
    serde_json::to_value(&sub).map_err(ser_err("Subscription"))
}

fn profile_meta(profile: &str) -> Result<Meta, FhirError> {
    Meta::builder()
        .profile(vec![Some(profile.to_owned())])
        .build()
        .map_err(build_err("Meta"))
}

fn param(name: &str, value: ParametersParameterValue) -> Result<ParametersParameter, FhirError> {
    ParametersParameter::builder()
        .name(name.to_owned())
        .value(value)
        .build()
        .map_err(build_err("Parameters.parameter"))
}

fn reference(url: &str) -> Result<Reference, FhirError> {
    Reference::builder()
        .reference(url.to_owned())
        .build()
        .map_err(build_err("Reference"))
}

const STATUS_KINDS: &[&str] = &[
    "handshake",
    "heartbeat",
    "event-notification",
    "query-status",
    "query-event",
];

/// Renders a `SubscriptionStatus` as R4 backport `Parameters` (`backport-subscription-status-r4`). Event numbers
/// and `events-since-subscription-start` are strings, as that profile requires (R4 has no 64-bit integer).
///
/// # Errors
/// [`FhirError::InvalidInput`] for an unknown kind or status, a bad URL or an unrepresentable timestamp.
pub fn subscription_status(
    r: &SubscriptionStatusRecord<'_>,
) -> Result<serde_json::Value, FhirError> {
    require_uri("subscription_url", r.subscription_url)?;
    require_uri("topic", r.topic)?;
    if !STATUS_KINDS.contains(&r.kind) {
        return Err(invalid(format!(
            "notification type {:?} is unknown",
            r.kind
        )));
    }
    status_code(r.status)?;
    let mut params = vec![
        Some(param(
            "subscription",
            ParametersParameterValue::Reference(reference(r.subscription_url)?),
        )?),
        Some(param(
            "topic",
            ParametersParameterValue::Canonical(r.topic.to_owned()),
        )?),
        Some(param(
            "status",
            ParametersParameterValue::Code(r.status.to_owned()),
        )?),
        Some(param(
            "type",
            ParametersParameterValue::Code(r.kind.to_owned()),
        )?),
        Some(param(
            "events-since-subscription-start",
            ParametersParameterValue::String(r.events_since_start.to_string()),
        )?),
    ];
    for (i, e) in r.events.iter().enumerate() {
        let mut parts = vec![
            Some(param(
                "event-number",
                ParametersParameterValue::String(e.number.to_string()),
            )?),
            Some(param(
                "timestamp",
                ParametersParameterValue::Instant(instant_from_unix_ms(
                    &format!("events[{i}].timestamp"),
                    e.timestamp_unix_ms,
                )?),
            )?),
        ];
        if let Some(f) = &e.focus {
            require_uri(&format!("events[{i}].focus"), f)?;
            parts.push(Some(param(
                "focus",
                ParametersParameterValue::Reference(reference(f)?),
            )?));
        }
        params.push(Some(
            ParametersParameter::builder()
                .name("notification-event".to_owned())
                .part(parts)
                .build()
                .map_err(build_err("notification-event"))?,
        ));
    }
    if let Some(err) = r.error.filter(|e| !e.trim().is_empty()) {
        let mut cc = codeable_concept(
            "error",
            &[Coding {
                system: SUBSCRIPTION_ERROR_SYSTEM,
                code: "no-response",
                display: "No Response",
            }],
        )?;
        cc.text = Some(err.to_owned());
        params.push(Some(param(
            "error",
            ParametersParameterValue::CodeableConcept(cc),
        )?));
    }
    let p = Parameters::builder()
        .meta(profile_meta(BACKPORT_STATUS_PROFILE)?)
        .parameter(params)
        .build()
        .map_err(build_err("Parameters"))?;
    serde_json::to_value(&p).map_err(ser_err("Parameters"))
}

/// Renders a notification as a `history` Bundle: the status `Parameters` first (request `GET …/$status`), then
/// each focus (request `POST Type/id`, response `201`), with the resource for `full-resource` content.
///
/// # Errors
/// [`FhirError::InvalidInput`] for a bad id, URL, timestamp, or a status or resource that is not a resource.
pub fn notification_bundle(n: NotificationBundle) -> Result<serde_json::Value, FhirError> {
    require_id("id", &n.id)?;
    require_uri("status_url", &n.status_url)?;
    let is_resource = |v: &serde_json::Value| {
        v.get("resourceType")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    if !is_resource(&n.status) {
        return Err(invalid("status must be a Parameters resource"));
    }
    let mut entries = Vec::with_capacity(n.entries.len() + 1);
    let mut resources: Vec<Option<serde_json::Value>> = Vec::with_capacity(n.entries.len() + 1);
    let status_entry = BundleEntry::builder()
        .full_url(format!("urn:uuid:{}", uuid_like(&n.id)))
        .request(
            BundleEntryRequest::builder()
                .method(HTTPVerb::Get)
                .url(n.status_url.clone())
                .build()
                .map_err(build_err("Bundle.entry.request"))?,
        )
        .response(
            BundleEntryResponse::builder()
                .status("200".to_owned())
                .build()
                .map_err(build_err("Bundle.entry.response"))?,
        )
        .build()
        .map_err(build_err("Bundle.entry"))?;
    entries.push(Some(status_entry));
    resources.push(Some(n.status));
    for (i, e) in n.entries.into_iter().enumerate() {
        require_uri(&format!("entries[{i}].full_url"), &e.full_url)?;
        require_uri(&format!("entries[{i}].request_url"), &e.request_url)?;
        if let Some(r) = &e.resource
            && !is_resource(r)
        {
            return Err(invalid(format!("entries[{i}].resource is not a resource")));
        }
        let entry = BundleEntry::builder()
            .full_url(e.full_url)
            .request(
                BundleEntryRequest::builder()
                    .method(HTTPVerb::Post)
                    .url(e.request_url)
                    .build()
                    .map_err(build_err("Bundle.entry.request"))?,
            )
            .response(
                BundleEntryResponse::builder()
                    .status("201".to_owned())
                    .build()
                    .map_err(build_err("Bundle.entry.response"))?,
            )
            .build()
            .map_err(build_err("Bundle.entry"))?;
        entries.push(Some(entry));
        resources.push(e.resource);
    }
    let bundle = Bundle::builder()
        .id(n.id.clone())
        .meta(profile_meta(BACKPORT_NOTIFICATION_PROFILE)?)
        .r#type(BundleType::History)
        .timestamp(instant_from_unix_ms("timestamp", n.timestamp_unix_ms)?)
        .entry(entries)
        .build()
        .map_err(build_err("Bundle"))?;
    let mut json = serde_json::to_value(&bundle).map_err(ser_err("Bundle"))?;
    let json_entries = json
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
        .filter(|e| e.len() == resources.len())
        .ok_or_else(|| FhirError::Build("serialized Bundle lacks its entries".to_owned()))?;
    for (entry, resource) in json_entries.iter_mut().zip(resources) {
        if let (Some(obj), Some(r)) = (entry.as_object_mut(), resource) {
            obj.insert("resource".to_owned(), r);
        }
    }
    Ok(json)
}

/// A UUID-shaped string derived from a bundle id (the status entry's `urn:uuid:` fullUrl must be unique within
/// the Bundle, and stable for a given notification).
fn uuid_like(id: &str) -> String {
    // FNV-1a, twice with different offsets, gives 128 bits; enough for a per-bundle identifier.
    let fnv = |seed: u64| {
        id.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Renders a topic as an R4B `SubscriptionTopic` (status `active`, one event trigger, its filters).
///
/// # Errors
/// [`FhirError::InvalidInput`] for a bad id, URL or code.
pub fn subscription_topic(t: &TopicRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("id", t.id)?;
    require_uri("url", t.url)?;
    require_string("title", t.title)?;
    let resource_url = format!("http://hl7.org/fhir/StructureDefinition/{}", t.resource);
    let trigger = SubscriptionTopicEventTrigger::builder()
        .description(t.description.to_owned())
        .event(codeable_concept("event", &[t.event])?)
        .resource(resource_url.clone())
        .build()
        .map_err(build_err("SubscriptionTopic.eventTrigger"))?;
    let filters = t
        .filters
        .iter()
        .map(|f| {
            SubscriptionTopicCanFilterBy::builder()
                .description(f.description.to_owned())
                .resource(resource_url.clone())
                .filter_parameter(f.name.to_owned())
                .build()
                .map(Some)
                .map_err(build_err("SubscriptionTopic.canFilterBy"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let topic = SubscriptionTopic::builder()
        .id(t.id.to_owned())
        .url(t.url.to_owned())
        .title(t.title.to_owned())
        .status(PublicationStatus::Active)
        .description(t.description.to_owned())
        .event_trigger(vec![Some(trigger)])
        .can_filter_by(filters)
        .build()
        .map_err(build_err("SubscriptionTopic"))?;
    serde_json::to_value(&topic).map_err(ser_err("SubscriptionTopic"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T: i64 = 1_795_460_405_000;

    fn request_json() -> serde_json::Value {
        json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "EHR alarm feed",
            "criteria": "https://wardwatch.example/SubscriptionTopic/high-priority-alarm",
            "_criteria": {"extension": [
                {"url": EXT_FILTER_CRITERIA, "valueString": "DetectedIssue?patient=SIM000001"}
            ]},
            "channel": {
                "extension": [
                    {"url": EXT_HEARTBEAT, "valueUnsignedInt": 60},
                    {"url": EXT_TIMEOUT, "valueUnsignedInt": 5},
                    {"url": EXT_MAX_COUNT, "valuePositiveInt": 20}
                ],
                "type": "rest-hook",
                "endpoint": "https://ehr.example/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
                "header": ["Authorization: Bearer xyz"]
            }
        })
    }

    #[test]
    fn a_backport_subscription_is_read_whole() {
        let r = parse_subscription(&request_json()).expect("valid");
        assert_eq!(r.status, "requested");
        assert_eq!(r.filters, vec!["DetectedIssue?patient=SIM000001"]);
        assert_eq!(r.channel_type, "rest-hook");
        assert_eq!(r.endpoint.as_deref(), Some("https://ehr.example/hook"));
        assert_eq!(r.content.as_deref(), Some("full-resource"));
        assert_eq!(
            (r.heartbeat_secs, r.timeout_secs, r.max_count),
            (Some(60), Some(5), Some(20))
        );
        assert_eq!(r.headers, vec!["Authorization: Bearer xyz"]);
    }

    #[test]
    fn malformed_subscriptions_are_refused() {
        let mut no_channel = request_json();
        if let Some(o) = no_channel.as_object_mut() {
            o.remove("channel");
        }
        assert!(parse_subscription(&no_channel).is_err());
        assert!(parse_subscription(&json!({"resourceType": "Patient"})).is_err());
        let mut twice = request_json();
        if let Some(a) = twice["channel"]["extension"].as_array_mut() {
            a.push(json!({"url": EXT_TIMEOUT, "valueUnsignedInt": 9}));
        }
        assert!(parse_subscription(&twice).is_err());
        let mut bad_type = request_json();
        bad_type["channel"]["extension"][0] = json!({"url": EXT_HEARTBEAT, "valueString": "x"});
        assert!(parse_subscription(&bad_type).is_err());
    }

    #[test]
    fn status_parameters_carry_event_numbers_as_strings() {
        let events = [NotificationEventRecord {
            number: 7,
            timestamp_unix_ms: T,
            focus: Some("https://w.example/fhir/Observation/e.1".into()),
        }];
        let p = subscription_status(&SubscriptionStatusRecord {
            subscription_url: "https://w.example/fhir/Subscription/s1",
            topic: "https://w.example/SubscriptionTopic/t",
            status: "active",
            kind: "event-notification",
            events_since_start: 7,
            events: &events,
            error: None,
        })
        .expect("valid");
        assert_eq!(p["resourceType"], "Parameters");
        let params = p["parameter"].as_array().expect("parameters");
        let find = |n: &str| params.iter().find(|x| x["name"] == n).cloned();
        assert_eq!(
            find("events-since-subscription-start").map(|x| x["valueString"].clone()),
            Some(json!("7"))
        );
        let ev = find("notification-event").expect("event");
        assert_eq!(ev["part"][0]["valueString"], "7");
        assert_eq!(
            ev["part"][2]["valueReference"]["reference"],
            "https://w.example/fhir/Observation/e.1"
        );
        assert!(
            subscription_status(&SubscriptionStatusRecord {
                kind: "party",
                ..SubscriptionStatusRecord {
                    subscription_url: "u",
                    topic: "t",
                    status: "active",
                    kind: "heartbeat",
                    events_since_start: 0,
                    events: &[],
                    error: None,
                }
            })
            .is_err()
        );
    }

    #[test]
    fn notification_bundles_put_the_status_first() {
        let status = json!({"resourceType": "Parameters", "parameter": []});
        let b = notification_bundle(NotificationBundle {
            id: "s1-7".into(),
            timestamp_unix_ms: T,
            status: status.clone(),
            status_url: "https://w.example/fhir/Subscription/s1/$status".into(),
            entries: vec![
                NotificationEntry {
                    full_url: "https://w.example/fhir/Observation/e.1".into(),
                    request_url: "Observation/e.1".into(),
                    resource: Some(json!({"resourceType": "Observation", "id": "e.1"})),
                },
                NotificationEntry {
                    full_url: "https://w.example/fhir/Observation/e.2".into(),
                    request_url: "Observation/e.2".into(),
                    resource: None,
                },
            ],
        })
        .expect("valid");
        assert_eq!(b["type"], "history");
        assert_eq!(b["entry"][0]["resource"], status);
        assert_eq!(b["entry"][0]["request"]["method"], "GET");
        assert_eq!(b["entry"][1]["resource"]["id"], "e.1");
        assert!(b["entry"][2].get("resource").is_none(), "id-only entry");
        assert_eq!(
            b["entry"][2]["fullUrl"],
            "https://w.example/fhir/Observation/e.2"
        );
        let u = b["entry"][0]["fullUrl"].as_str().expect("fullUrl");
        assert!(u.starts_with("urn:uuid:") && u.len() == 45, "{u}");
    }

    #[test]
    fn subscriptions_render_with_their_extensions() {
        let filters = vec!["DetectedIssue?patient=SIM1".to_string()];
        let headers = vec!["Authorization: ***".to_string()];
        let s = subscription(&SubscriptionRecord {
            id: "abc",
            status: "active",
            topic: "https://w.example/SubscriptionTopic/t",
            filters: &filters,
            reason: "r",
            end_unix_ms: Some(T),
            error: None,
            endpoint: "https://ehr.example/hook",
            headers: &headers,
            content: "id-only",
            heartbeat_secs: 30,
            timeout_secs: 5,
            max_count: 10,
        })
        .expect("valid");
        let back = parse_subscription(&s).expect("round trip");
        assert_eq!(back.filters, filters);
        assert_eq!(back.content.as_deref(), Some("id-only"));
        assert_eq!(back.heartbeat_secs, Some(30));
        assert_eq!(back.end_unix_ms, Some(T));
        assert_eq!(s["meta"]["profile"][0], BACKPORT_SUBSCRIPTION_PROFILE);
    }
}
