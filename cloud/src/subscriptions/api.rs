//! Subscription REST routes (mounted under the FHIR base by `api::router`):
//!
//! | route | scope |
//! |-------|-------|
//! | `GET SubscriptionTopic`, `GET SubscriptionTopic/{id}` | `r` on `Subscription` or `SubscriptionTopic` |
//! | `POST Subscription` | `c` on `Subscription`, plus `r` on the topic's focus type unless content is `empty` |
//! | `GET Subscription/{id}` | `r` on `Subscription` |
//! | `DELETE Subscription/{id}` | `d` on `Subscription` |
//! | `GET Subscription/{id}/$status` | `r` on `Subscription` |
//! | `GET Subscription/{id}/$events` | `r` on `Subscription` and on the focus type |
//!
//! A client sees only its own subscriptions (another client's id answers 404). Every call is audited.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::RngCore;
use wardwatch_fhir::{SearchPage, SubscriptionRecord, TopicFilter, TopicRecord};
use wardwatch_proto::ids::{PatientId, WardId};

use super::topics::Topic;
use crate::api::{ApiState, RemoteAddr, fhir_json};
use crate::auth::{Permissions, Scope};
use crate::error::CloudError;
use crate::storage::SubscriptionRow;

/// Largest Subscription body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Most headers a subscription may carry.
pub const MAX_HEADERS: usize = 10;

/// The routes, to merge into the FHIR router.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/SubscriptionTopic", get(list_topics))
        .route("/SubscriptionTopic/{id}", get(read_topic))
        .route("/Subscription", axum::routing::post(create))
        .route("/Subscription/{id}", get(read).delete(delete))
        .route("/Subscription/{id}/$status", get(status))
        .route("/Subscription/{id}/$events", get(events))
}

/// The authenticated caller of a subscription route.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    remote: String,
}

impl Caller {
    fn may(&self, resource: &str, needed: Permissions) -> bool {
        self.scopes
            .iter()
            .any(|s| Scope::parse(s).is_ok_and(|s| s.allows(resource, needed)))
    }

    fn require(&self, resource: &str, needed: Permissions, what: &str) -> Result<(), CloudError> {
        if self.may(resource, needed) {
            Ok(())
        } else {
            Err(CloudError::PermissionDenied(format!(
                "client {} has no granted scope allowing {what} (granted: {})",
                self.client_id,
                self.scopes.join(" ")
            )))
        }
    }
}

fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
) -> Result<Caller, CloudError> {
    let token = crate::auth::bearer_token(headers)
        .ok_or_else(|| CloudError::Unauthenticated("a Bearer token is required".into()))?;
    let p = state
        .auth
        .authenticate(token, wardwatch_proto::now_unix_ms())?;
    Ok(Caller {
        client_id: p.client_id,
        scopes: p.scopes,
        remote: remote.map_or_else(String::new, |r| r.0.to_string()),
    })
}

async fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    resource: &str,
    query: &str,
    patients: String,
    status: StatusCode,
) {
    crate::api::audit_as(
        state,
        &caller.client_id,
        &caller.remote,
        action,
        resource,
        query,
        patients,
        status,
    )
    .await;
}

fn topic_json(state: &ApiState, t: Topic) -> Result<serde_json::Value, CloudError> {
    let filters: Vec<TopicFilter<'_>> = t
        .filters()
        .iter()
        .map(|f| TopicFilter {
            name: f.name,
            description: f.description,
        })
        .collect();
    let url = t.canonical(&state.base_url);
    wardwatch_fhir::subscription_topic(&TopicRecord {
        id: t.id(),
        url: &url,
        title: t.title(),
        description: t.description(),
        event: wardwatch_fhir::Coding {
            system: "urn:wardwatch:subscription-event",
            code: t.id(),
            display: t.title(),
        },
        resource: t.focus_type(),
        filters: &filters,
    })
    .map_err(|e| CloudError::Unavailable(e.to_string()))
}

fn require_topic_reader(c: &Caller) -> Result<(), CloudError> {
    if c.may("Subscription", Permissions::READ) || c.may("SubscriptionTopic", Permissions::READ) {
        Ok(())
    } else {
        c.require(
            "SubscriptionTopic",
            Permissions::READ,
            "reading SubscriptionTopic",
        )
    }
}

async fn list_topics(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    require_topic_reader(&caller)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k != "_count") {
        return Err(CloudError::NotSupported(format!(
            "search parameter {k:?} is not supported on SubscriptionTopic (supported: _count; there are three topics, all returned)"
        )));
    }
    let mut entries = Vec::new();
    for t in Topic::ALL {
        entries.push((
            format!("{}/SubscriptionTopic/{}", state.base_url, t.id()),
            topic_json(&state, t)?,
        ));
    }
    let bundle = wardwatch_fhir::searchset_bundle(SearchPage {
        self_url: format!("{}/SubscriptionTopic", state.base_url),
        next_url: None,
        total: Some(entries.len() as u64),
        entries,
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    })
    .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    audit(
        &state,
        &caller,
        "search",
        "SubscriptionTopic",
        "",
        String::new(),
        StatusCode::OK,
    )
    .await;
    Ok(fhir_json(StatusCode::OK, &bundle))
}

async fn read_topic(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    require_topic_reader(&caller)?;
    let t = Topic::from_id(&id).ok_or_else(|| {
        CloudError::NotFound(format!(
            "SubscriptionTopic/{} is not known",
            id.chars().take(100).collect::<String>()
        ))
    })?;
    Ok(fhir_json(StatusCode::OK, &topic_json(&state, t)?))
}

/// A validated subscription request: the row to store.
pub(crate) fn validate_request(
    state: &ApiState,
    req: &wardwatch_fhir::SubscriptionRequest,
    client_id: &str,
    now: i64,
) -> Result<SubscriptionRow, CloudError> {
    let cfg = &state.subscriptions.config;
    let bad = |m: String| CloudError::InvalidArgument(m);
    if req.status != "requested" {
        return Err(bad(format!(
            "Subscription.status must be \"requested\" when created, got {:?}",
            req.status
        )));
    }
    let prefix = format!("{}/SubscriptionTopic/", state.base_url);
    let topic = req
        .topic
        .strip_prefix(&prefix)
        .and_then(Topic::from_id)
        .ok_or_else(|| {
            bad(format!(
                "Subscription.criteria {:?} is not a topic of this server (one of: {})",
                req.topic,
                Topic::ALL
                    .iter()
                    .map(|t| t.canonical(&state.base_url))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let (mut patient, mut ward, mut event) = (None, None, None);
    for f in &req.filters {
        let (ty, query) = f.split_once('?').unwrap_or(("", f.as_str()));
        if !ty.is_empty() && ty != topic.focus_type() {
            return Err(bad(format!(
                "filter {f:?}: the topic {} filters {} resources, not {ty}",
                topic.id(),
                topic.focus_type()
            )));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| bad(format!("filter {f:?} is not name=value: {e}")))?;
        if pairs.is_empty() {
            return Err(bad(format!("filter {f:?} names no parameter")));
        }
        for (name, value) in pairs {
            let spec = topic
                .filters()
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| {
                    bad(format!(
                        "filter parameter {name:?} is not defined for topic {} (allowed: {})",
                        topic.id(),
                        topic
                            .filters()
                            .iter()
                            .map(|s| s.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let slot = match name.as_str() {
                "patient" => {
                    let id = value.strip_prefix("Patient/").unwrap_or(&value);
                    let id = PatientId::new(id).map_err(|e| bad(format!("filter patient: {e}")))?;
                    patient.replace(id.to_string())
                }
                "ward" => {
                    let w = WardId::new(&value).map_err(|e| bad(format!("filter ward: {e}")))?;
                    ward.replace(w.to_string())
                }
                _ => {
                    if !spec.values.contains(&value.as_str()) {
                        return Err(bad(format!(
                            "filter {name}={value:?}: allowed values are {}",
                            spec.values.join(", ")
                        )));
                    }
                    event.replace(value.clone())
                }
            };
            if slot.is_some() {
                return Err(bad(format!(
                    "filter parameter {name} is given more than once"
                )));
            }
        }
    }
    if req.channel_type != "rest-hook" {
        return Err(CloudError::NotSupported(format!(
            "channel.type {:?} is not supported (supported: rest-hook)",
            req.channel_type
        )));
    }
    let endpoint = req
        .endpoint
        .as_deref()
        .ok_or_else(|| bad("channel.endpoint is required for rest-hook".into()))?;
    let endpoint = super::endpoint::validate_endpoint(endpoint, cfg).map_err(bad)?;
    let content = match (&req.payload_mime, &req.content) {
        (None, None) => "empty".to_string(),
        (None, Some(c)) if c == "empty" => "empty".to_string(),
        (None, Some(_)) => {
            return Err(bad(
                "channel.payload (application/fhir+json) is required with id-only or full-resource content".into(),
            ));
        }
        (Some(m), c) => {
            if m != "application/fhir+json" && m != "application/json" {
                return Err(CloudError::NotSupported(format!(
                    "channel.payload {m:?} is not supported (supported: application/fhir+json)"
                )));
            }
            let c = c.clone().unwrap_or_else(|| "id-only".into());
            if !["empty", "id-only", "full-resource"].contains(&c.as_str()) {
                return Err(bad(format!(
                    "backport-payload-content {c:?} is not empty, id-only or full-resource"
                )));
            }
            c
        }
    };
    if req.headers.len() > MAX_HEADERS {
        return Err(bad(format!("at most {MAX_HEADERS} channel.header entries")));
    }
    for h in &req.headers {
        check_header(h).map_err(bad)?;
    }
    let heartbeat = match req.heartbeat_secs {
        None | Some(0) => 0,
        Some(s) if s < cfg.min_heartbeat_secs || s > 86_400 => {
            return Err(bad(format!(
                "backport-heartbeat-period must be {}..=86400 seconds, got {s}",
                cfg.min_heartbeat_secs
            )));
        }
        Some(s) => s,
    };
    let timeout = match req.timeout_secs {
        None => cfg.default_timeout_secs,
        Some(t) if t == 0 || t > cfg.max_timeout_secs => {
            return Err(bad(format!(
                "backport-timeout must be 1..={} seconds, got {t}",
                cfg.max_timeout_secs
            )));
        }
        Some(t) => t,
    };
    let max_count = match req.max_count {
        None => cfg.max_count,
        Some(m) if m == 0 || m > cfg.max_count => {
            return Err(bad(format!(
                "backport-max-count must be 1..={}, got {m}",
                cfg.max_count
            )));
        }
        Some(m) => m,
    };
    if let Some(end) = req.end_unix_ms
        && end <= now
    {
        return Err(bad("Subscription.end is in the past".into()));
    }
    if req.reason.trim().is_empty() || req.reason.len() > 1000 {
        return Err(bad("Subscription.reason must be 1..=1000 characters".into()));
    }
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    Ok(SubscriptionRow {
        id: hex::encode(id),
        client_id: client_id.to_string(),
        topic: topic.id().to_string(),
        filters: req.filters.clone(),
        filter_patient: patient,
        filter_ward: ward,
        filter_event: event,
        reason: req.reason.clone(),
        endpoint: endpoint.to_string(),
        headers: req.headers.clone(),
        content,
        heartbeat_secs: i64::from(heartbeat),
        timeout_secs: i64::from(timeout),
        max_count: i64::from(max_count),
        end_ms: req.end_unix_ms,
        status: "requested".into(),
        error: None,
        events_since_start: 0,
        delivered_through: 0,
        handshake_done: false,
        failures: 0,
        next_attempt_ms: now,
        last_sent_ms: now,
        created_at_ms: now,
    })
}

/// `Name: value`, a header the cloud may send on the client's behalf.
fn check_header(h: &str) -> Result<(), String> {
    let (name, value) = h.split_once(':').ok_or_else(|| {
        format!(
            "channel.header {:?} is not \"Name: value\"",
            h.chars().take(60).collect::<String>()
        )
    })?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!(
            "channel.header name {name:?} is not an HTTP header name"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if [
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "expect",
    ]
    .contains(&lower.as_str())
    {
        return Err(format!(
            "channel.header {name} is set by the server and cannot be given"
        ));
    }
    if h.len() > 4096 || HeaderValue::from_str(value.trim()).is_err() {
        return Err(format!(
            "channel.header {name} has an invalid or too long value"
        ));
    }
    Ok(())
}

/// Headers as shown back to clients: names only, values masked (they often hold credentials).
fn masked_headers(h: &[String]) -> Vec<String> {
    h.iter()
        .map(|h| match h.split_once(':') {
            Some((n, _)) => format!("{}: ***", n.trim()),
            None => "***".into(),
        })
        .collect()
}

pub(crate) fn subscription_json(
    state: &ApiState,
    s: &SubscriptionRow,
) -> Result<serde_json::Value, CloudError> {
    let topic = Topic::from_id(&s.topic)
        .map(|t| t.canonical(&state.base_url))
        .unwrap_or_else(|| s.topic.clone());
    let headers = masked_headers(&s.headers);
    wardwatch_fhir::subscription(&SubscriptionRecord {
        id: &s.id,
        status: &s.status,
        topic: &topic,
        filters: &s.filters,
        reason: &s.reason,
        end_unix_ms: s.end_ms,
        error: s.error.as_deref(),
        endpoint: &s.endpoint,
        headers: &headers,
        content: &s.content,
        heartbeat_secs: u32::try_from(s.heartbeat_secs).unwrap_or(0),
        timeout_secs: u32::try_from(s.timeout_secs).unwrap_or(1),
        max_count: u32::try_from(s.max_count).unwrap_or(1),
    })
    .map_err(|e| CloudError::Unavailable(format!("subscription {} cannot be mapped: {e}", s.id)))
}

async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    body: Bytes,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    caller.require("Subscription", Permissions::CREATE, "creating Subscription")?;
    let now = wardwatch_proto::now_unix_ms();
    let result = async {
        if body.len() > MAX_BODY {
            return Err(CloudError::ResourceExhausted(format!(
                "a Subscription is at most {MAX_BODY} bytes"
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| CloudError::InvalidArgument(format!("the body is not JSON: {e}")))?;
        let req = wardwatch_fhir::parse_subscription(&json)
            .map_err(|e| CloudError::InvalidArgument(e.to_string()))?;
        let row = validate_request(&state, &req, &caller.client_id, now)?;
        if row.content != "empty" {
            let focus = Topic::from_id(&row.topic).map_or("", |t| t.focus_type());
            caller.require(
                focus,
                Permissions::READ,
                &format!("reading {focus}, the focus of this topic's notifications"),
            )?;
        }
        if state
            .store
            .count_client_subscriptions(&caller.client_id)
            .await?
            >= i64::from(state.subscriptions.config.max_per_client)
        {
            return Err(CloudError::ResourceExhausted(format!(
                "client {} already holds the most subscriptions allowed ({})",
                caller.client_id, state.subscriptions.config.max_per_client
            )));
        }
        state.store.create_subscription(&row).await?;
        Ok(row)
    }
    .await;
    match result {
        Ok(row) => {
            audit(
                &state,
                &caller,
                "create",
                "Subscription",
                &row.id,
                String::new(),
                StatusCode::CREATED,
            )
            .await;
            tracing::info!(subscription = %row.id, client = %caller.client_id, topic = %row.topic, "subscription created");
            let body = subscription_json(&state, &row)?;
            let mut resp = fhir_json(StatusCode::CREATED, &body);
            if let Ok(loc) =
                HeaderValue::from_str(&format!("{}/Subscription/{}", state.base_url, row.id))
            {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            Ok(resp)
        }
        Err(e) => {
            audit(
                &state,
                &caller,
                "create",
                "Subscription",
                "",
                String::new(),
                e.http_status(),
            )
            .await;
            Err(e)
        }
    }
}

/// The caller's own subscription `id`, or 404.
async fn own(state: &ApiState, caller: &Caller, id: &str) -> Result<SubscriptionRow, CloudError> {
    let shown: String = id.chars().take(100).collect();
    let not_found = || CloudError::NotFound(format!("Subscription/{shown} is not known"));
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(not_found());
    }
    match state.store.subscription(id).await? {
        Some(s) if s.client_id == caller.client_id => Ok(s),
        _ => Err(not_found()),
    }
}

async fn read(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    caller.require("Subscription", Permissions::READ, "reading Subscription")?;
    let r = own(&state, &caller, &id).await;
    let status = r
        .as_ref()
        .map_or_else(CloudError::http_status, |_| StatusCode::OK);
    audit(
        &state,
        &caller,
        "read",
        "Subscription",
        &id,
        String::new(),
        status,
    )
    .await;
    Ok(fhir_json(StatusCode::OK, &subscription_json(&state, &r?)?))
}

async fn delete(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    caller.require("Subscription", Permissions::DELETE, "deleting Subscription")?;
    let r = match own(&state, &caller, &id).await {
        Ok(s) => state
            .store
            .delete_subscription(&s.id)
            .await
            .map_err(CloudError::from),
        Err(e) => Err(e),
    };
    let status = r
        .as_ref()
        .map_or_else(CloudError::http_status, |_| StatusCode::NO_CONTENT);
    audit(
        &state,
        &caller,
        "delete",
        "Subscription",
        &id,
        String::new(),
        status,
    )
    .await;
    r?;
    tracing::info!(subscription = %id, client = %caller.client_id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    caller.require("Subscription", Permissions::READ, "reading Subscription")?;
    let r = own(&state, &caller, &id).await;
    let code = r
        .as_ref()
        .map_or_else(CloudError::http_status, |_| StatusCode::OK);
    audit(
        &state,
        &caller,
        "operation",
        "Subscription",
        &format!("{id}/$status"),
        String::new(),
        code,
    )
    .await;
    let s = r?;
    let status = super::worker::status_parameters(&state, &s, "query-status", &[], None)?;
    let bundle = wardwatch_fhir::searchset_bundle(SearchPage {
        self_url: format!("{}/Subscription/{}/$status", state.base_url, s.id),
        next_url: None,
        total: Some(1),
        entries: vec![(format!("urn:uuid:{}-status", s.id), status)],
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    })
    .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// `$events` parameters: `eventsSinceNumber`, `eventsUntilNumber` (inclusive), `content`.
fn parse_events_query(
    raw: Option<&str>,
    s: &SubscriptionRow,
) -> Result<(i64, i64, String), CloudError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    let (mut since, mut until, mut content) = (None, None, None);
    let number = |k: &str, v: &str| -> Result<i64, CloudError> {
        v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            CloudError::InvalidArgument(format!(
                "{k} must be an event number (1 or more), got {v:?}"
            ))
        })
    };
    for (k, v) in pairs {
        let dup = match k.as_str() {
            "eventsSinceNumber" => since.replace(number(&k, &v)?).is_some(),
            "eventsUntilNumber" => until.replace(number(&k, &v)?).is_some(),
            "content" => {
                if !["empty", "id-only", "full-resource"].contains(&v.as_str()) {
                    return Err(CloudError::InvalidArgument(format!(
                        "content must be empty, id-only or full-resource, got {v:?}"
                    )));
                }
                content.replace(v).is_some()
            }
            other => {
                return Err(CloudError::NotSupported(format!(
                    "parameter {other:?} is not supported by $events (supported: eventsSinceNumber, eventsUntilNumber, content)"
                )));
            }
        };
        if dup {
            return Err(CloudError::InvalidArgument(format!(
                "{k} given more than once"
            )));
        }
    }
    let since = since.unwrap_or(1);
    let until = until.unwrap_or(s.events_since_start);
    if until < since {
        return Err(CloudError::InvalidArgument(format!(
            "eventsUntilNumber {until} is below eventsSinceNumber {since}"
        )));
    }
    Ok((since, until, content.unwrap_or_else(|| s.content.clone())))
}

async fn events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, CloudError> {
    let caller = authenticate(&state, &headers, remote.as_deref())?;
    caller.require("Subscription", Permissions::READ, "reading Subscription")?;
    let what = format!("{id}/$events?{}", raw.as_deref().unwrap_or(""));
    let prepared = async {
        let s = own(&state, &caller, &id).await?;
        let (since, until, content) = parse_events_query(raw.as_deref(), &s)?;
        if content != "empty" {
            let focus = Topic::from_id(&s.topic).map_or("", |t| t.focus_type());
            caller.require(focus, Permissions::READ, &format!("reading {focus}"))?;
        }
        let limit = i64::from(state.subscriptions.config.max_count);
        let evs = state
            .store
            .subscription_events(&s.id, since, until, limit)
            .await?;
        Ok::<_, CloudError>((s, content, evs))
    }
    .await;
    let (s, content, evs) = match prepared {
        Ok(p) => p,
        Err(e) => {
            audit(
                &state,
                &caller,
                "operation",
                "Subscription",
                &what,
                String::new(),
                e.http_status(),
            )
            .await;
            return Err(e);
        }
    };
    let bundle = super::worker::notification(&state, &s, "query-event", &evs, &content).await?;
    let mut patients: Vec<String> = evs.iter().filter_map(|e| e.patient_id.clone()).collect();
    patients.sort();
    patients.dedup();
    audit(
        &state,
        &caller,
        "operation",
        "Subscription",
        &what,
        patients.join(","),
        StatusCode::OK,
    )
    .await;
    Ok(fhir_json(StatusCode::OK, &bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_and_masked() {
        assert!(check_header("Authorization: Bearer abc").is_ok());
        assert!(check_header("X-Api-Key:k").is_ok());
        for bad in [
            "NoColon",
            ": v",
            "Bad Name: v",
            "Host: evil",
            "Content-Length: 1",
            "X: a\nb",
        ] {
            assert!(check_header(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            masked_headers(&["Authorization: Bearer abc".into()]),
            vec!["Authorization: ***".to_string()]
        );
    }
}
