//! The FHIR R4 REST API (served over TLS). Every route authenticates a bearer token, checks the client's scopes
//! for the resource type, and records who read which patient's data in the audit trail. Errors are
//! OperationOutcomes. FHIR JSON itself is produced only by the `wardwatch-fhir` crate.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use wardwatch_fhir::{Coding, DeviceRecord, ObservationComponent, SearchPage, VitalSignRecord};
use wardwatch_proto::ids::{DeviceId, EdgeId, PatientId};
use wardwatch_proto::metrics;
use wardwatch_proto::v1::{DeviceKind, OperationalState, QualityFlag};

use crate::config::{ApiClient, ApiConfig};
use crate::error::CloudError;
use crate::storage::{AuditRecord, CodeFilter, DeviceRow, Store, VitalQuery, VitalRow};

/// Largest page a search returns.
pub const MAX_COUNT: u32 = 1000;
/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: u32 = 50;

/// The remote address of the connection, inserted by the server for the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// Shared state of the API.
#[derive(Debug)]
pub struct ApiState {
    /// Storage.
    pub store: Store,
    /// API configuration.
    pub config: ApiConfig,
    /// The FHIR base URL clients use, for Bundle links.
    pub base_url: String,
    /// Registered clients.
    pub clients: Vec<ApiClient>,
}

/// An authenticated client.
#[derive(Debug, Clone)]
struct Caller {
    client_id: String,
    remote: String,
}

/// Builds the router, rooted at the configured base path.
pub fn router(state: Arc<ApiState>) -> Router {
    let base = state.config.base_path.clone();
    let fhir = Router::new()
        .route("/Observation", get(search_observations))
        .route("/Observation/{id}", get(read_observation))
        .route("/Device/{id}", get(read_device))
        .fallback(unknown_route);
    Router::new()
        .nest(&base, fhir)
        .fallback(unknown_route)
        .with_state(state)
}

async fn unknown_route() -> CloudError {
    CloudError::NotFound("no such resource type or interaction on this server".into())
}

fn scope_allows(scopes: &[String], resource: &str) -> bool {
    scopes.iter().any(|s| {
        let Some(rest) = s.strip_prefix("system/") else {
            return false;
        };
        let Some((res, perms)) = rest.split_once('.') else {
            return false;
        };
        let res_ok = res == "*" || res == resource;
        // SMART v2 ("rs", "cruds") or v1 ("read", "*").
        let perms_ok =
            perms == "read" || perms == "*" || (perms.contains('r') && perms.contains('s'));
        res_ok && perms_ok
    })
}

fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
    resource: &str,
) -> Result<Caller, CloudError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| CloudError::Unauthenticated("a Bearer token is required".into()))?;
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let client = state
        .clients
        .iter()
        .find(|c| c.token_sha256.eq_ignore_ascii_case(&digest))
        .ok_or_else(|| CloudError::Unauthenticated("the Bearer token is not valid".into()))?;
    if !scope_allows(&client.scopes, resource) {
        return Err(CloudError::PermissionDenied(format!(
            "client {} has no scope allowing read/search of {resource}",
            client.client_id
        )));
    }
    Ok(Caller {
        client_id: client.client_id.clone(),
        remote: remote.map_or_else(String::new, |r| r.0.to_string()),
    })
}

fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

/// Parsed `Observation` search parameters.
#[derive(Debug, Default, PartialEq)]
struct ObservationSearch {
    patient: Option<String>,
    codes: Vec<CodeFilter>,
    count: u32,
    cursor: Option<i64>,
    /// The parameters to repeat in the `next` link (everything but `_cursor`).
    echo: Vec<(String, String)>,
}

fn parse_observation_search(raw: Option<&str>) -> Result<ObservationSearch, CloudError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    let mut s = ObservationSearch {
        count: DEFAULT_COUNT,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "patient" | "subject" => {
                let id = v.strip_prefix("Patient/").unwrap_or(&v);
                let id = PatientId::new(id)
                    .map_err(|e| CloudError::InvalidArgument(format!("{k}: {e}")))?;
                if s.patient.replace(id.to_string()).is_some() {
                    return Err(CloudError::InvalidArgument(format!(
                        "{k} given more than once"
                    )));
                }
            }
            "code" => {
                for token in v.split(',') {
                    s.codes.push(parse_code(token)?);
                }
            }
            "_count" => {
                let n: u32 = v.parse().map_err(|_| {
                    CloudError::InvalidArgument(format!(
                        "_count must be a whole number 1..={MAX_COUNT}, got {v:?}"
                    ))
                })?;
                if n == 0 || n > MAX_COUNT {
                    return Err(CloudError::InvalidArgument(format!(
                        "_count must be 1..={MAX_COUNT}, got {n}"
                    )));
                }
                s.count = n;
            }
            "_cursor" => {
                let c: i64 = v.parse().ok().filter(|c| *c > 0).ok_or_else(|| {
                    CloudError::InvalidArgument(format!(
                        "_cursor {v:?} is not a page token of this server"
                    ))
                })?;
                s.cursor = Some(c);
                continue;
            }
            other => {
                return Err(CloudError::NotSupported(format!(
                    "search parameter {other:?} is not supported on Observation (supported: patient, subject, code, _count)"
                )));
            }
        }
        s.echo.push((k, v));
    }
    Ok(s)
}

fn parse_code(token: &str) -> Result<CodeFilter, CloudError> {
    let bad = || CloudError::InvalidArgument(format!("code {token:?} is not system|code or code"));
    let (system, code) = match token.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, token),
    };
    if code.is_empty() || code.len() > 32 {
        return Err(bad());
    }
    match system {
        Some(wardwatch_fhir::LOINC) => Ok(CodeFilter::Loinc(code.to_string())),
        Some(wardwatch_fhir::MDC) => code.parse().map(CodeFilter::Mdc).map_err(|_| bad()),
        Some("") | None => {
            if let Ok(n) = code.parse::<i64>() {
                Ok(CodeFilter::Mdc(n))
            } else if code.chars().all(|c| c.is_ascii_digit() || c == '-') {
                Ok(CodeFilter::Loinc(code.to_string()))
            } else {
                Err(bad())
            }
        }
        Some(other) => Err(CloudError::NotSupported(format!(
            "code system {other:?} is not supported (use {} or {})",
            wardwatch_fhir::LOINC,
            wardwatch_fhir::MDC
        ))),
    }
}

fn quality_names(mask: i64) -> Vec<&'static str> {
    [
        (QualityFlag::Artifact, "artifact"),
        (QualityFlag::SensorOff, "sensor-off"),
        (QualityFlag::LowSignal, "low-signal"),
        (QualityFlag::Calibrating, "calibrating"),
        (QualityFlag::ManualEntry, "manual-entry"),
        (QualityFlag::Simulated, "simulated"),
    ]
    .into_iter()
    .filter(|(f, _)| mask & (1i64 << (*f as i32)) != 0)
    .map(|(_, n)| n)
    .collect()
}

/// The FHIR id of the Observation made from a stored vital sign: `<edge>.<sequence>`, its lineage.
pub fn observation_id(row: &VitalRow) -> String {
    format!("{}.{}", row.edge_id, row.sequence)
}

/// Maps a stored vital sign to a FHIR Observation.
pub fn vital_to_observation(
    row: &VitalRow,
    mrn_system: &str,
) -> Result<serde_json::Value, CloudError> {
    let internal = |what: String| {
        CloudError::Unavailable(format!(
            "stored vital sign {} cannot be mapped: {what}",
            row.id
        ))
    };
    let mdc = u32::try_from(row.metric_mdc).map_err(|_| internal("negative MDC code".into()))?;
    let metric = metrics::by_mdc(mdc).ok_or_else(|| internal(format!("unknown MDC code {mdc}")))?;
    let mdc_code = mdc.to_string();
    let id = observation_id(row);
    let lineage = format!("wardwatch-edge:{}/sequence/{}", row.edge_id, row.sequence);
    let parsed_components: Vec<(u32, f64)> = match &row.components {
        Some(j) => serde_json::from_str(j).map_err(|e| internal(format!("components: {e}")))?,
        None => Vec::new(),
    };
    let comp_codes: Vec<(&metrics::Metric, String, f64)> = parsed_components
        .iter()
        .filter_map(|(c, v)| metrics::by_mdc(*c).map(|m| (m, c.to_string(), *v)))
        .collect();
    let components = comp_codes
        .iter()
        .map(|(m, code, v)| ObservationComponent {
            code: vec![
                Coding {
                    system: wardwatch_fhir::LOINC,
                    code: m.loinc,
                    display: m.display,
                },
                Coding {
                    system: wardwatch_fhir::MDC,
                    code: code.as_str(),
                    display: m.mdc_ref,
                },
            ],
            value: *v,
            unit: metric.unit,
            unit_display: metric.unit_display,
        })
        .collect();
    let enumerated = row.enumerated.as_deref().map(|e| Coding {
        system: "urn:wardwatch:enumeration",
        code: e,
        display: metrics::enumeration(mdc)
            .iter()
            .find(|(c, _)| *c == e)
            .map_or(e, |(_, d)| d),
    });
    let value = match metric.kind {
        metrics::ValueKind::Numeric => row.value,
        _ => None,
    };
    let record = VitalSignRecord {
        id: &id,
        patient_system: mrn_system,
        patient_id: &row.patient_id,
        device_id: Some(&row.device_id),
        code: [
            Coding {
                system: wardwatch_fhir::LOINC,
                code: metric.loinc,
                display: metric.display,
            },
            Coding {
                system: if metrics::is_private(mdc) {
                    "urn:wardwatch:metric"
                } else {
                    wardwatch_fhir::MDC
                },
                code: &mdc_code,
                display: metric.mdc_ref,
            },
        ]
        .into_iter()
        .filter(|c| !c.code.is_empty())
        .collect(),
        value,
        unit: metric.unit,
        unit_display: metric.unit_display,
        components,
        effective_unix_ms: row.measured_at_ms,
        issued_unix_ms: row.received_at_ms,
        quality_flags: quality_names(row.quality),
        value_enumerated: enumerated,
        category: metric.category,
        source_lineage: Some(&lineage),
    };
    wardwatch_fhir::vital_sign_observation(&record).map_err(|e| internal(e.to_string()))
}

/// Maps a stored device to a FHIR Device.
pub fn device_to_fhir(row: &DeviceRow, id_system: &str) -> Result<serde_json::Value, CloudError> {
    let kind = DeviceKind::try_from(i32::try_from(row.kind).unwrap_or(0))
        .unwrap_or(DeviceKind::Unspecified);
    let (kind_display, kind_mdc) = match kind {
        // MDC_DEV_ANALY_SAT_O2_MDS-style codes are not asserted here; only display text is given for kinds
        // without a verified code.
        DeviceKind::BedsideMonitor => ("Multi-parameter bedside monitor", None),
        DeviceKind::Wearable => ("Wearable vital-signs monitor", None),
        DeviceKind::DripMonitor => ("Drip rate monitor", None),
        DeviceKind::InfusionPump => ("Infusion pump", None),
        DeviceKind::Unspecified => ("Medical device", None),
    };
    let state = OperationalState::try_from(i32::try_from(row.state).unwrap_or(0))
        .unwrap_or(OperationalState::Unspecified);
    let (status, operational) = match state {
        OperationalState::On => ("active", "on"),
        OperationalState::Off => ("inactive", "off"),
        OperationalState::Standby => ("active", "standby"),
        OperationalState::NotReporting => ("unknown", "not-reporting"),
        OperationalState::Unspecified => ("unknown", "unknown"),
    };
    let location = format!("Ward {}, bed {}", row.ward, row.bed);
    fn opt(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    let opt_owned: [Option<&str>; 4] = [
        opt(&row.manufacturer),
        opt(&row.model),
        opt(&row.serial),
        opt(&row.udi),
    ];
    let record = DeviceRecord {
        id: &row.device_id,
        identifier_system: id_system,
        identifier_value: &row.device_id,
        kind_display,
        kind_mdc,
        manufacturer: opt_owned[0],
        model: opt_owned[1],
        serial: opt_owned[2],
        udi: opt_owned[3],
        location_display: Some(&location),
        status,
        operational_display: Some(operational),
        last_updated_unix_ms: row.reported_at_ms,
    };
    wardwatch_fhir::device(&record).map_err(|e| {
        CloudError::Unavailable(format!("device {} cannot be mapped: {e}", row.device_id))
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
    let rec = AuditRecord {
        at_ms: wardwatch_proto::now_unix_ms(),
        client_id: caller.client_id.clone(),
        action: action.into(),
        resource_type: resource.into(),
        query: query.chars().take(2000).collect(),
        patients,
        status: i32::from(status.as_u16()),
        remote: caller.remote.clone(),
    };
    if let Err(e) = state.store.audit(&rec).await {
        tracing::error!(error = %e, client = %caller.client_id, "audit record could not be written");
    }
}

async fn search_observations(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "Observation")?;
    let query_text = raw.clone().unwrap_or_default();
    let search = match parse_observation_search(raw.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            audit(
                &state,
                &caller,
                "search",
                "Observation",
                &query_text,
                String::new(),
                e.http_status(),
            )
            .await;
            return Err(e);
        }
    };
    let q = VitalQuery {
        patient: search.patient.clone(),
        codes: search.codes.clone(),
        before_id: search.cursor,
        limit: search.count + 1,
    };
    let mut rows = state.store.search_vitals(&q).await?;
    let more = rows.len() > search.count as usize;
    rows.truncate(search.count as usize);
    let mut entries = Vec::with_capacity(rows.len());
    let mut patients = BTreeSet::new();
    for r in &rows {
        patients.insert(r.patient_id.clone());
        let res = vital_to_observation(r, &state.config.mrn_system)?;
        entries.push((
            format!("{}/Observation/{}", state.base_url, observation_id(r)),
            res,
        ));
    }
    let link = |extra: Option<i64>| {
        let mut params = search.echo.clone();
        if let Some(c) = extra {
            params.push(("_cursor".into(), c.to_string()));
        }
        let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
        format!("{}/Observation?{qs}", state.base_url)
    };
    let page = SearchPage {
        self_url: link(search.cursor),
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
    audit(
        &state,
        &caller,
        "search",
        "Observation",
        &query_text,
        patients.into_iter().collect::<Vec<_>>().join(","),
        StatusCode::OK,
    )
    .await;
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// Splits an Observation id `<edge>.<sequence>` (see [`observation_id`]); `None` if it is not one of ours.
fn parse_observation_id(id: &str) -> Option<(EdgeId, u64)> {
    let (edge, seq) = id.rsplit_once('.')?;
    let seq: u64 = seq.parse().ok().filter(|s| *s > 0)?;
    Some((EdgeId::new(edge).ok()?, seq))
}

async fn read_observation(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "Observation")?;
    let row = match parse_observation_id(&id) {
        Some((edge, seq)) => state.store.vital_by_lineage(edge.as_str(), seq).await?,
        None => None,
    };
    let (status, patients) = match &row {
        Some(r) => (StatusCode::OK, r.patient_id.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    };
    let shown: String = id.chars().take(200).collect();
    audit(
        &state,
        &caller,
        "read",
        "Observation",
        &shown,
        patients,
        status,
    )
    .await;
    let row =
        row.ok_or_else(|| CloudError::NotFound(format!("Observation/{shown} is not known")))?;
    Ok(fhir_json(
        StatusCode::OK,
        &vital_to_observation(&row, &state.config.mrn_system)?,
    ))
}

async fn read_device(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "Device")?;
    let id = DeviceId::new(id).map_err(|e| CloudError::InvalidArgument(e.to_string()))?;
    let row = state.store.device(id.as_str()).await?;
    let status = if row.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    audit(
        &state,
        &caller,
        "read",
        "Device",
        id.as_str(),
        String::new(),
        status,
    )
    .await;
    let row = row.ok_or_else(|| CloudError::NotFound(format!("Device/{id} is not known")))?;
    Ok(fhir_json(
        StatusCode::OK,
        &device_to_fhir(&row, &state.config.device_id_system)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_ids_round_trip_and_junk_is_refused() {
        let (edge, seq) = parse_observation_id("edge-7a.42").expect("valid id");
        assert_eq!((edge.as_str(), seq), ("edge-7a", 42));
        for bad in [
            "edge-7a",
            "edge-7a.",
            "edge-7a.0",
            "edge-7a.-1",
            ".5",
            "edge 7a.5",
            "e.18446744073709551616",
        ] {
            assert!(parse_observation_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scopes_cover_only_what_they_name() {
        let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(scope_allows(&s(&["system/Observation.rs"]), "Observation"));
        assert!(scope_allows(&s(&["system/*.read"]), "Device"));
        assert!(!scope_allows(&s(&["system/Observation.rs"]), "Device"));
        assert!(!scope_allows(&s(&["system/Observation.c"]), "Observation"));
        assert!(!scope_allows(
            &s(&["patient/Observation.rs"]),
            "Observation"
        ));
    }

    #[test]
    fn search_parameters_are_parsed_or_refused() {
        let s = parse_observation_search(Some(
            "patient=Patient/MRN1&code=http://loinc.org|8867-4,150456&_count=10",
        ))
        .unwrap();
        assert_eq!(s.patient.as_deref(), Some("MRN1"));
        assert_eq!(
            s.codes,
            vec![CodeFilter::Loinc("8867-4".into()), CodeFilter::Mdc(150456)]
        );
        assert_eq!(s.count, 10);
        assert!(matches!(
            parse_observation_search(Some("_count=-1")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_observation_search(Some("_count=0")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_observation_search(Some("_count=1001")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_observation_search(Some("foo=bar")),
            Err(CloudError::NotSupported(_))
        ));
        assert!(matches!(
            parse_observation_search(Some("patient=a%20b")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_observation_search(Some("code=http://snomed.info/sct|123")),
            Err(CloudError::NotSupported(_))
        ));
        assert!(matches!(
            parse_observation_search(Some("_cursor=abc")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert_eq!(parse_observation_search(None).unwrap().count, DEFAULT_COUNT);
    }
}
