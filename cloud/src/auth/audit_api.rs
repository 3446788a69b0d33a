//! The audit trail as FHIR: `GET [base]/AuditEvent` (search) and `GET [base]/AuditEvent/{id}` (read), for
//! clients holding `system/AuditEvent.rs` (a wildcard scope does not reach it, see [`super::scope::NAMED_ONLY`]).
//! Also [`audit_refusals`], which records FHIR requests refused with 401 or 403: the handlers audit what they
//! serve, but a request refused before its handler ran would otherwise leave no trace.
//!
//! Search parameters: `date` (repeatable; `eq`, `ge`, `gt`, `le`, `lt` prefixes; a FHIR date or a dateTime with
//! time zone), `agent` or `agent:identifier` (the client id, optionally as `system|id`), `patient` or
//! `patient:identifier` (an MRN, optionally as `system|mrn` or `Patient/mrn`), `_count` (1–1000, default 50).
//! Newest first, keyset-paged with an opaque `_cursor` in the `next` link.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use wardwatch_fhir::{AuditAction, AuditEventRecord, SearchPage};
use wardwatch_proto::ids::PatientId;

use crate::api::{ApiState, RemoteAddr, authorize, fhir_date_range, fhir_json};
use crate::error::CloudError;
use crate::storage::{AuditQuery, AuditRecord, AuditRow};

/// Largest page of an AuditEvent search.
pub const MAX_COUNT: u32 = 1000;
/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: u32 = 50;
/// `source.observer` of every AuditEvent.
pub const OBSERVER: &str = "Wardwatch cloud";

/// Parsed AuditEvent search.
#[derive(Debug, Default, PartialEq)]
struct AuditSearch {
    query: AuditQuery,
    /// Parameters to repeat in the `next` link.
    echo: Vec<(String, String)>,
}

fn parse_search(
    raw: Option<&str>,
    client_system: &str,
    mrn_system: &str,
) -> Result<AuditSearch, CloudError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    let mut s = AuditSearch {
        query: AuditQuery {
            limit: DEFAULT_COUNT,
            ..Default::default()
        },
        echo: Vec::new(),
    };
    let narrow_from =
        |q: &mut AuditQuery, f: i64| q.from_ms = Some(q.from_ms.map_or(f, |x| x.max(f)));
    let narrow_before =
        |q: &mut AuditQuery, b: i64| q.before_ms = Some(q.before_ms.map_or(b, |x| x.min(b)));
    for (k, v) in pairs {
        match k.as_str() {
            "date" => {
                let (prefix, value) = match v.get(..2) {
                    Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let (start, end) = fhir_date_range(value).ok_or_else(|| {
                    CloudError::InvalidArgument(format!(
                        "date {v:?} is not [eq|ge|gt|le|lt] followed by a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD) or a dateTime with time zone"
                    ))
                })?;
                let q = &mut s.query;
                match prefix {
                    "ge" => narrow_from(q, start),
                    "gt" => narrow_from(q, end),
                    "le" => narrow_before(q, end),
                    "lt" => narrow_before(q, start),
                    _ => {
                        narrow_from(q, start);
                        narrow_before(q, end);
                    }
                }
            }
            "agent" | "agent:identifier" => {
                let id = match v.split_once('|') {
                    Some((sys, id)) if sys.is_empty() || sys == client_system => id,
                    Some((sys, _)) => {
                        return Err(CloudError::NotSupported(format!(
                            "{k}: agents are identified in {client_system}, not {sys:?}"
                        )));
                    }
                    None => v.as_str(),
                };
                if id.is_empty() || id.len() > 128 {
                    return Err(CloudError::InvalidArgument(format!(
                        "{k}: {v:?} is not a client id"
                    )));
                }
                if s.query.client_id.replace(id.to_string()).is_some() {
                    return Err(CloudError::InvalidArgument(
                        "agent given more than once".into(),
                    ));
                }
            }
            "patient" | "patient:identifier" => {
                let id = match v.split_once('|') {
                    Some((sys, id)) if sys.is_empty() || sys == mrn_system => id,
                    Some((sys, _)) => {
                        return Err(CloudError::NotSupported(format!(
                            "{k}: patients are identified in {mrn_system}, not {sys:?}"
                        )));
                    }
                    None => v.strip_prefix("Patient/").unwrap_or(&v),
                };
                let id = PatientId::new(id)
                    .map_err(|e| CloudError::InvalidArgument(format!("{k}: {e}")))?;
                if s.query.patient.replace(id.to_string()).is_some() {
                    return Err(CloudError::InvalidArgument(
                        "patient given more than once".into(),
                    ));
                }
            }
            "_count" => {
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| {
                        CloudError::InvalidArgument(format!(
                            "_count must be 1..={MAX_COUNT}, got {v:?}"
                        ))
                    })?;
                s.query.limit = n;
            }
            "_cursor" => {
                let c: i64 = v.parse().ok().filter(|c| *c > 0).ok_or_else(|| {
                    CloudError::InvalidArgument(format!(
                        "_cursor {v:?} is not a page token of this server"
                    ))
                })?;
                s.query.before_id = Some(c);
                continue;
            }
            other => {
                return Err(CloudError::NotSupported(format!(
                    "search parameter {other:?} is not supported on AuditEvent (supported: date, agent, agent:identifier, patient, patient:identifier, _count)"
                )));
            }
        }
        s.echo.push((k, v));
    }
    Ok(s)
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Maps a stored audit record to a FHIR AuditEvent.
fn to_fhir(state: &ApiState, row: &AuditRow) -> Result<serde_json::Value, CloudError> {
    let action = match row.action.as_str() {
        "read" => AuditAction::Read,
        "search" => AuditAction::Search,
        "token" => AuditAction::Authenticate,
        other => {
            return Err(CloudError::Unavailable(format!(
                "audit record {} has an unknown action {other:?}",
                row.id
            )));
        }
    };
    let id = row.id.to_string();
    let address = row
        .remote
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .ok();
    let record = AuditEventRecord {
        id: &id,
        recorded_unix_ms: row.at_ms,
        action,
        http_status: u16::try_from(row.status).unwrap_or(500),
        outcome_detail: non_empty(&row.detail),
        client_system: state.auth.client_id_system(),
        client_id: non_empty(&row.client_id),
        client_address: address.as_deref(),
        observer: OBSERVER,
        resource_type: non_empty(&row.resource_type),
        read_id: (action == AuditAction::Read).then_some(row.query.as_str()),
        query: (action != AuditAction::Read).then_some(row.query.as_str()),
        patient_system: &state.config.mrn_system,
        patients: row.patients.split(',').filter(|p| !p.is_empty()).collect(),
    };
    wardwatch_fhir::audit_event(&record).map_err(|e| {
        CloudError::Unavailable(format!("audit record {} cannot be mapped: {e}", row.id))
    })
}

/// Writes the audit record of an AuditEvent request itself (the audit trail names patients too).
async fn audit_self(
    state: &ApiState,
    client_id: &str,
    remote: &str,
    action: &str,
    query: &str,
    patients: String,
    status: StatusCode,
) {
    let rec = AuditRecord {
        at_ms: wardwatch_proto::now_unix_ms(),
        client_id: client_id.to_string(),
        action: action.into(),
        resource_type: "AuditEvent".into(),
        query: query.chars().take(2000).collect(),
        patients,
        status: i32::from(status.as_u16()),
        remote: remote.to_string(),
    };
    if let Err(e) = state.store.audit_with_detail(&rec, "").await {
        tracing::error!(error = %e, client = %client_id, "audit record could not be written");
    }
}

/// `GET [base]/AuditEvent?…`.
pub async fn search_audit_events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "AuditEvent")?;
    let query_text = raw.clone().unwrap_or_default();
    let search = match parse_search(
        raw.as_deref(),
        state.auth.client_id_system(),
        &state.config.mrn_system,
    ) {
        Ok(s) => s,
        Err(e) => {
            audit_self(
                &state,
                &caller.client_id,
                &caller.remote,
                "search",
                &query_text,
                String::new(),
                e.http_status(),
            )
            .await;
            return Err(e);
        }
    };
    let limit = search.query.limit;
    let mut q = search.query.clone();
    q.limit = limit + 1;
    let mut rows = state.store.search_audit(&q).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let mut entries = Vec::with_capacity(rows.len());
    let mut patients = std::collections::BTreeSet::new();
    for r in &rows {
        patients.extend(
            r.patients
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string),
        );
        entries.push((
            format!("{}/AuditEvent/{}", state.base_url, r.id),
            to_fhir(&state, r)?,
        ));
    }
    let link = |cursor: Option<i64>| {
        let mut params = search.echo.clone();
        if let Some(c) = cursor {
            params.push(("_cursor".into(), c.to_string()));
        }
        let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
        format!("{}/AuditEvent?{qs}", state.base_url)
    };
    let page = SearchPage {
        self_url: link(search.query.before_id),
        next_url: if more {
            rows.last().map(|r| link(Some(r.id)))
        } else {
            None
        },
        total: None,
        entries,
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    };
    let bundle = wardwatch_fhir::searchset_bundle(page)
        .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    audit_self(
        &state,
        &caller.client_id,
        &caller.remote,
        "search",
        &query_text,
        patients.into_iter().collect::<Vec<_>>().join(","),
        StatusCode::OK,
    )
    .await;
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// `GET [base]/AuditEvent/{id}`.
pub async fn read_audit_event(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "AuditEvent")?;
    let row = match id.parse::<i64>() {
        Ok(n) if n > 0 => state.store.audit_by_id(n).await?,
        _ => None,
    };
    let shown: String = id.chars().take(64).collect();
    let (status, patients) = match &row {
        Some(r) => (StatusCode::OK, r.patients.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    };
    audit_self(
        &state,
        &caller.client_id,
        &caller.remote,
        "read",
        &shown,
        patients,
        status,
    )
    .await;
    let row =
        row.ok_or_else(|| CloudError::NotFound(format!("AuditEvent/{shown} is not known")))?;
    Ok(fhir_json(StatusCode::OK, &to_fhir(&state, &row)?))
}

/// Middleware on the FHIR routes: a request answered 401 or 403 is written to the audit trail (action `read` or
/// `search` by the shape of its path, the client if its token was valid, and why it was refused).
pub async fn audit_refusals(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let remote = req
        .extensions()
        .get::<RemoteAddr>()
        .map(|r| r.0.to_string());
    let bearer = super::bearer_token(req.headers()).map(str::to_string);
    let resp = next.run(req).await;
    let status = resp.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return resp;
    }
    let now = wardwatch_proto::now_unix_ms();
    let rel = path
        .strip_prefix(state.config.base_path.as_str())
        .unwrap_or(&path);
    let segments: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let (action, resource, what) = match segments.as_slice() {
        [t] => ("search", *t, query),
        [t, id, ..] => ("read", *t, (*id).to_string()),
        [] => ("search", "", query),
    };
    let resource: String = resource
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    let client_id = bearer
        .and_then(|t| state.auth.authenticate(&t, now).ok())
        .map(|p| p.client_id)
        .unwrap_or_default();
    let detail = if status == StatusCode::UNAUTHORIZED {
        "unauthenticated: missing, unknown or expired bearer token".to_string()
    } else {
        format!("forbidden: no granted scope allows read and search of {resource}")
    };
    let rec = AuditRecord {
        at_ms: now,
        client_id,
        action: action.into(),
        resource_type: resource,
        query: what.chars().take(2000).collect(),
        patients: String::new(),
        status: i32::from(status.as_u16()),
        remote: remote.unwrap_or_default(),
    };
    if let Err(e) = state.store.audit_with_detail(&rec, &detail).await {
        tracing::error!(error = %e, "audit record of a refused request could not be written");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_dates_cover_their_precision() {
        let day = fhir_date_range("2026-11-23").unwrap();
        assert_eq!(day.1 - day.0, 86_400_000);
        assert_eq!(day.0, 1_795_392_000_000);
        let month = fhir_date_range("2026-12").unwrap();
        assert_eq!(month.1, fhir_date_range("2027").unwrap().0);
        let year = fhir_date_range("2026").unwrap();
        assert_eq!(year.1, fhir_date_range("2027-01-01").unwrap().0);
        let t = fhir_date_range("2026-11-23T19:00:00.123Z").unwrap();
        assert_eq!(t, (1_795_460_400_123, 1_795_460_400_124));
        assert_eq!(fhir_date_range("2026-11-23T20:00:00.123+01:00"), Some(t));
        for bad in [
            "2024-13-45",
            "2024-02-30",
            "2026-11-23T19:00:00",
            "20261123",
            "abcd",
            "",
            "2026-1",
        ] {
            assert!(fhir_date_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn search_parameters_are_parsed_or_refused() {
        let s = parse_search(
            Some("date=ge2026-11-23&date=lt2026-11-24T00:00:00Z&agent=urn:c|ehr-1&patient=Patient/SIM000001&_count=5"),
            "urn:c",
            "urn:m",
        )
        .unwrap();
        assert_eq!(s.query.from_ms, Some(1_795_392_000_000));
        assert_eq!(s.query.before_ms, Some(1_795_392_000_000 + 86_400_000));
        assert_eq!(s.query.client_id.as_deref(), Some("ehr-1"));
        assert_eq!(s.query.patient.as_deref(), Some("SIM000001"));
        assert_eq!(s.query.limit, 5);
        let s = parse_search(Some("date=2026-11-23&_cursor=7"), "urn:c", "urn:m").unwrap();
        assert_eq!(
            s.query.before_ms.zip(s.query.from_ms).map(|(b, f)| b - f),
            Some(86_400_000)
        );
        assert_eq!(s.query.before_id, Some(7));
        assert!(s.echo.iter().all(|(k, _)| k != "_cursor"));
        for (bad, invalid) in [
            ("date=2024-13-45", true),
            ("date=ne2026", true),
            ("_count=0", true),
            ("_count=-1", true),
            ("_cursor=x", true),
            ("agent=a&agent=b", true),
            ("agent=other|ehr-1", false),
            ("patient=a%20b", true),
            ("action=E", false),
        ] {
            let e = parse_search(Some(bad), "urn:c", "urn:m").unwrap_err();
            assert_eq!(
                matches!(e, CloudError::InvalidArgument(_)),
                invalid,
                "{bad}: {e}"
            );
        }
    }
}
