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
use wardwatch_fhir::{
    Coding, DeviceRecord, DeviceReference, EncounterReference, ObservationComponent, SearchPage,
    VitalSignRecord,
};
use wardwatch_proto::ids::{DeviceId, EdgeId, PatientId, VisitNumber};
use wardwatch_proto::metrics;
use wardwatch_proto::v1::{AlarmPriority, DeviceKind, OperationalState, QualityFlag};

use crate::config::ApiConfig;
use crate::error::CloudError;
use crate::storage::{
    AuditRecord, CodeFilter, DeviceRow, Store, TimeRange, VitalQuery, VitalRow, VitalSort,
};

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
    /// SMART Backend Services: registered clients and the access tokens issued to them.
    pub auth: crate::auth::SmartService,
    /// Topic-based subscriptions: settings and the delivery client.
    pub subscriptions: crate::subscriptions::Subscriptions,
}

/// An authenticated client.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Its client id.
    pub(crate) client_id: String,
    /// Its address and port, for the audit trail.
    pub(crate) remote: String,
}

/// Builds the router, rooted at the configured base path: the FHIR routes (each authorizes its caller, and a
/// refusal with 401/403 is audited by `auth::audit_api::audit_refusals`) plus the public SMART routes (token
/// endpoint and discovery).
pub fn router(state: Arc<ApiState>) -> Router {
    let base = state.config.base_path.clone();
    let smart = Router::new()
        .route(
            crate::auth::TOKEN_PATH,
            axum::routing::post(crate::auth::token::token_endpoint),
        )
        .route(
            "/.well-known/smart-configuration",
            get(crate::auth::token::smart_configuration),
        )
        .route("/metadata", get(metadata));
    let fhir = Router::new()
        .route(
            "/AuditEvent",
            get(crate::auth::audit_api::search_audit_events),
        )
        .route(
            "/AuditEvent/{id}",
            get(crate::auth::audit_api::read_audit_event),
        )
        .route("/Observation", get(search_observations))
        .route("/Observation/$lastn", get(crate::lastn::lastn_observations))
        .route("/Observation/{id}", read_route("Observation"))
        .route("/Device", search_route("Device"))
        .route("/Device/{id}", get(read_device))
        .route("/DeviceMetric", search_route("DeviceMetric"))
        .route("/DeviceMetric/{id}", read_route("DeviceMetric"))
        .route("/Location", search_route("Location"))
        .route("/Location/{id}", read_route("Location"))
        .route("/RiskAssessment", search_route("RiskAssessment"))
        .route("/RiskAssessment/{id}", read_route("RiskAssessment"))
        .route("/Provenance/{id}", read_route("Provenance"))
        .route("/DetectedIssue", search_route("DetectedIssue"))
        .route("/DetectedIssue/{id}", read_route("DetectedIssue"))
        .route(
            "/MedicationAdministration",
            search_route("MedicationAdministration"),
        )
        .route(
            "/MedicationAdministration/{id}",
            read_route("MedicationAdministration"),
        )
        .merge(history_routes())
        .merge(crate::subscriptions::api::routes())
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::audit_api::audit_refusals,
        ));
    Router::new()
        .nest(&base, smart.merge(fhir))
        .fallback(unknown_route)
        .with_state(state)
}

async fn unknown_route() -> CloudError {
    CloudError::NotFound("no such resource type or interaction on this server".into())
}

/// Whether the scopes allow reading and searching `resource` (SMART `system/` scopes; see `auth::scope`).
fn scope_allows(scopes: &[String], resource: &str) -> bool {
    crate::auth::scope::any_allows(scopes, resource)
}

/// Authenticates the bearer token (an access token from the token endpoint, refused once expired; or a static
/// development token where enabled) and checks that its scopes allow reading and searching `resource`.
pub(crate) fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
    resource: &str,
) -> Result<Caller, CloudError> {
    let token = crate::auth::bearer_token(headers)
        .ok_or_else(|| CloudError::Unauthenticated("a Bearer token is required".into()))?;
    let principal = state
        .auth
        .authenticate(token, wardwatch_proto::now_unix_ms())?;
    if !scope_allows(&principal.scopes, resource) {
        return Err(CloudError::PermissionDenied(format!(
            "client {} has no granted scope allowing read and search of {resource} (granted: {})",
            principal.client_id,
            principal.scopes.join(" ")
        )));
    }
    Ok(Caller {
        client_id: principal.client_id,
        remote: remote.map_or_else(String::new, |r| r.0.to_string()),
    })
}

pub(crate) fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response {
    fhir_json_text(status, body.to_string())
}

/// A response with an already serialized FHIR JSON body.
pub(crate) fn fhir_json_text(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
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
    /// `device`: the Device (MDS, VMD or channel) or DeviceMetric named, resolved when the search runs.
    device: Option<DeviceTarget>,
    /// `encounter:identifier`: the visit number of the encounter whose vital signs are wanted.
    encounter: Option<String>,
    /// `date` bounds on effectiveDateTime, all of them combined.
    measured: TimeRange,
    /// `_lastUpdated` bounds.
    received: TimeRange,
    sort: VitalSort,
    /// `category` named something other than vital-signs: nothing can match.
    no_match: bool,
    /// `_summary=count`: the total only.
    count_only: bool,
    /// `_include=Observation:device` and `_include:iterate=DeviceMetric:source`.
    include: IncludeSpec,
    count: u32,
    cursor: Option<Cursor>,
    /// The parameters to repeat in the `next` link (everything but `_cursor`).
    echo: Vec<(String, String)>,
}

/// A page token: the last row of the previous page, in the search's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Storage id (insertion order).
    Id(i64),
    /// Measurement time and storage id (date orders).
    Date(i64, i64),
}

impl Cursor {
    fn parse(v: &str) -> Option<Self> {
        match v.split_once('_') {
            None => v.parse().ok().filter(|c| *c > 0).map(Self::Id),
            Some((ms, id)) => Some(Self::Date(
                ms.parse().ok()?,
                id.parse().ok().filter(|c: &i64| *c > 0)?,
            )),
        }
    }

    fn encode(self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::Date(ms, id) => format!("{ms}_{id}"),
        }
    }
}

/// The instants a FHIR date or dateTime search value covers, as `[start, end)` in Unix ms: a whole year, month or
/// day for partial dates (read as UTC), a minute, second or millisecond for a dateTime, which must carry a time
/// zone. `None` for anything else, including impossible dates such as `2024-13-45`.
pub(crate) fn fhir_date_range(v: &str) -> Option<(i64, i64)> {
    use time::{Date, Month, OffsetDateTime, format_description::well_known::Rfc3339};
    let num = |r: std::ops::Range<usize>| -> Option<i32> {
        let t = v.get(r)?;
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let at = |d: Date| d.midnight().assume_utc().unix_timestamp() * 1000;
    match v.len() {
        4 => {
            let y = num(0..4)?;
            let start = Date::from_calendar_date(y, Month::January, 1).ok()?;
            let end = Date::from_calendar_date(y + 1, Month::January, 1).ok()?;
            Some((at(start), at(end)))
        }
        7 if v.as_bytes().get(4) == Some(&b'-') => {
            let (y, m) = (num(0..4)?, num(5..7)?);
            let month = Month::try_from(u8::try_from(m).ok()?).ok()?;
            let start = Date::from_calendar_date(y, month, 1).ok()?;
            let (ny, nm) = if month == Month::December {
                (y + 1, Month::January)
            } else {
                (y, month.next())
            };
            let end = Date::from_calendar_date(ny, nm, 1).ok()?;
            Some((at(start), at(end)))
        }
        10 if v.as_bytes().get(4) == Some(&b'-') && v.as_bytes().get(7) == Some(&b'-') => {
            let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
            let month = Month::try_from(u8::try_from(m).ok()?).ok()?;
            let start = Date::from_calendar_date(y, month, u8::try_from(d).ok()?).ok()?;
            let end = start.next_day()?;
            Some((at(start), at(end)))
        }
        _ => {
            // hh:mm without seconds is a minute's precision.
            let minute_precision = v
                .get(16..17)
                .is_some_and(|c| c == "Z" || c == "+" || c == "-");
            let full = if minute_precision {
                format!("{}:00{}", v.get(..16)?, v.get(16..)?)
            } else {
                v.to_string()
            };
            let t = OffsetDateTime::parse(&full, &Rfc3339).ok()?;
            let start = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()?;
            let width = if minute_precision {
                60_000
            } else if full.get(19..20) == Some(".") {
                1
            } else {
                1_000
            };
            Some((start, start.checked_add(width)?))
        }
    }
}

/// A FHIR date search parameter (`[prefix]value`) as a time range on a point in time.
fn parse_date_param(name: &str, v: &str) -> Result<TimeRange, CloudError> {
    let (prefix, value) = match v.get(..2) {
        Some(p) if p.bytes().all(|b| b.is_ascii_lowercase()) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let (start, end) = fhir_date_range(value).ok_or_else(|| {
        CloudError::InvalidArgument(format!(
            "{name}: {value:?} is not a valid FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.sss]] with a time zone)"
        ))
    })?;
    Ok(match prefix {
        "eq" => TimeRange {
            from_ms: Some(start),
            before_ms: Some(end),
        },
        "ge" => TimeRange {
            from_ms: Some(start),
            before_ms: None,
        },
        "gt" => TimeRange {
            from_ms: Some(end),
            before_ms: None,
        },
        "le" => TimeRange {
            from_ms: None,
            before_ms: Some(end),
        },
        "lt" => TimeRange {
            from_ms: None,
            before_ms: Some(start),
        },
        "ne" | "sa" | "eb" | "ap" => {
            return Err(CloudError::NotSupported(format!(
                "{name}: the prefix {prefix:?} is not supported (supported: eq, ge, gt, le, lt)"
            )));
        }
        other => {
            return Err(CloudError::InvalidArgument(format!(
                "{name}: {other:?} is not a FHIR search prefix"
            )));
        }
    })
}

/// `encounter:identifier=[system|]value`, the R4 `:identifier` modifier on the `encounter` reference parameter:
/// the visit number of `Observation.encounter.identifier`. A system, when given, must be `visit_system` (every
/// encounter identifier this server writes has it); `|value` (explicitly no system) therefore matches nothing
/// and is `Ok(None)`. One value only (no comma list).
pub(crate) fn parse_encounter_identifier(
    v: &str,
    visit_system: &str,
) -> Result<Option<String>, CloudError> {
    let shown = || v.chars().take(100).collect::<String>();
    let (system, value) = match v.split_once('|') {
        Some((sys, value)) => (Some(sys), value),
        None => (None, v),
    };
    if value.contains(',') {
        return Err(CloudError::NotSupported(format!(
            "encounter:identifier {:?}: one visit number per search (a comma-separated list is not supported)",
            shown()
        )));
    }
    let number = VisitNumber::new(value).map_err(|e| {
        CloudError::InvalidArgument(format!(
            "encounter:identifier {:?} is not [system|]visit number: {} (visit numbers are 1-64 of \
             [A-Za-z0-9._-/:])",
            shown(),
            e.why
        ))
    })?;
    match system {
        None => Ok(Some(number.to_string())),
        Some("") => Ok(None),
        Some(sys) if sys == visit_system => Ok(Some(number.to_string())),
        Some(sys) => Err(CloudError::NotSupported(format!(
            "encounter:identifier: encounters are identified by visit numbers in {visit_system}, not {:?}",
            sys.chars().take(100).collect::<String>()
        ))),
    }
}

fn parse_observation_search(
    raw: Option<&str>,
    visit_system: &str,
) -> Result<ObservationSearch, CloudError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    let mut s = ObservationSearch {
        count: DEFAULT_COUNT,
        ..Default::default()
    };
    let mut sort_given = false;
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
            "_count" => s.count = parse_count(&v)?,
            "_cursor" => {
                let c = Cursor::parse(&v).ok_or_else(|| {
                    CloudError::InvalidArgument(format!(
                        "_cursor {v:?} is not a page token of this server"
                    ))
                })?;
                s.cursor = Some(c);
                continue;
            }
            "date" => s.measured.intersect(parse_date_param("date", &v)?),
            "_lastUpdated" => s.received.intersect(parse_date_param("_lastUpdated", &v)?),
            "device" => {
                if s.device.replace(DeviceTarget::parse(&v)?).is_some() {
                    return Err(CloudError::InvalidArgument(
                        "device given more than once".into(),
                    ));
                }
            }
            "encounter:identifier" => {
                if s.echo.iter().any(|(k, _)| k == "encounter:identifier") {
                    return Err(CloudError::InvalidArgument(
                        "encounter:identifier given more than once".into(),
                    ));
                }
                match parse_encounter_identifier(&v, visit_system)? {
                    Some(number) => s.encounter = Some(number),
                    // `|value`: an identifier without a system, which no encounter here has.
                    None => s.no_match = true,
                }
            }
            "category" => {
                let any_vital = v.split(',').any(|t| {
                    let code = t.rsplit_once('|').map_or(t, |(sys, c)| {
                        if sys.is_empty() || sys == wardwatch_fhir::OBSERVATION_CATEGORY {
                            c
                        } else {
                            ""
                        }
                    });
                    code == "vital-signs"
                });
                // Every Observation served today is a vital sign.
                s.no_match |= !any_vital;
            }
            "_sort" => {
                sort_given = true;
                s.sort = match v.as_str() {
                    "-date" => VitalSort::DateDesc,
                    "date" => VitalSort::DateAsc,
                    other => {
                        return Err(CloudError::NotSupported(format!(
                            "_sort {other:?} is not supported on Observation (supported: date, -date)"
                        )));
                    }
                };
            }
            "_summary" => {
                if v != "count" {
                    return Err(CloudError::NotSupported(format!(
                        "_summary={v} is not supported (supported: count)"
                    )));
                }
                s.count_only = true;
            }
            "_include" | "_include:iterate" => s.include.parse(&k, &v)?,
            other => {
                if let Some(e) = explicitly_unsupported(other) {
                    return Err(e);
                }
                return Err(CloudError::NotSupported(format!(
                    "search parameter {other:?} is not supported on Observation (supported: patient, subject, code, \
                     date, device, encounter:identifier, category, _lastUpdated, _sort, _summary=count, \
                     _include=Observation:device, _include:iterate=DeviceMetric:source, _count)"
                )));
            }
        }
        s.echo.push((k, v));
    }
    s.include.check()?;
    if !sort_given && (s.patient.is_some() || s.encounter.is_some()) {
        // One patient's (or one stay's) vital signs come latest measurement first: the order a clinician reads
        // them in, and the one `vital_signs_patient_time` serves, with or without `code` (migration 0013).
        s.sort = VitalSort::DateDesc;
    }
    Ok(s)
}

/// What an Observation search's `device` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeviceTarget {
    /// `Device/<id>`: an MDS (all of the device's Observations), or a VMD or channel (those of its metrics).
    Device(String),
    /// `DeviceMetric/<id>`: that metric's Observations.
    Metric(String),
}

impl DeviceTarget {
    /// `Device/<id>`, `DeviceMetric/<id>`, or a bare id: a device id (no `.`) or a VMD or channel id
    /// (`<device>.vmd-<group>`, `<device>.chan-<group>`) is a Device, any other id with a `.` a DeviceMetric.
    fn parse(v: &str) -> Result<Self, CloudError> {
        let (explicit, id) = if let Some(id) = v.strip_prefix("DeviceMetric/") {
            (Some(true), id)
        } else if let Some(id) = v.strip_prefix("Device/") {
            (Some(false), id)
        } else {
            (None, v)
        };
        if !crate::resources::is_fhir_id(id) {
            return Err(CloudError::InvalidArgument(format!(
                "device {:?} is not Device/<id>, DeviceMetric/<id> or a FHIR id",
                v.chars().take(100).collect::<String>()
            )));
        }
        let metric = explicit.unwrap_or_else(|| {
            id.contains('.') && !matches!(crate::resources::parse_device_id(id), Some((_, Some(_))))
        });
        Ok(if metric {
            Self::Metric(id.to_string())
        } else {
            Self::Device(id.to_string())
        })
    }
}

/// Resolves an Observation search's `device` against the stored channels into the device id and codes to
/// search (the codes of the named metrics that the `code` filters, if any, also allow). `None`: nothing can
/// match.
async fn resolve_device_target(
    state: &ApiState,
    target: &DeviceTarget,
    codes: &[CodeFilter],
) -> Result<Option<(String, Vec<CodeFilter>)>, CloudError> {
    let restrict = |device: String, metrics: Vec<i64>| {
        let kept: Vec<CodeFilter> = metrics
            .into_iter()
            .filter(|m| {
                codes.is_empty()
                    || codes.iter().any(|c| match c {
                        CodeFilter::Mdc(x) => x == m,
                        CodeFilter::Loinc(l) => u32::try_from(*m)
                            .ok()
                            .and_then(metrics::by_mdc)
                            .is_some_and(|x| x.loinc == l),
                    })
            })
            .map(CodeFilter::Mdc)
            .collect();
        (!kept.is_empty()).then_some((device, kept))
    };
    match target {
        DeviceTarget::Device(id) => match crate::resources::parse_device_id(id) {
            None => Ok(None),
            Some((part, None)) => Ok(Some((part.to_string(), codes.to_vec()))),
            Some((part, Some(component))) => {
                let found =
                    crate::resources::resolve_device_part(&state.store, part, &id[part.len()..])
                        .await?;
                Ok(found.and_then(|(device, channels)| {
                    let metrics = channels
                        .iter()
                        .filter(|c| {
                            wardwatch_fhir::containment::group_of(
                                u32::try_from(c.metric_mdc).unwrap_or(0),
                            )
                            .key == component.group().key
                        })
                        .map(|c| c.metric_mdc)
                        .collect();
                    restrict(device, metrics)
                }))
            }
        },
        DeviceTarget::Metric(id) => {
            let Some((part, code)) = id.split_once('.') else {
                return Ok(None);
            };
            let Ok(code) = code.parse::<i64>() else {
                return Ok(None);
            };
            let suffix = &id[part.len()..];
            // A device with stored channels, or the long device a shortened part names; failing both, the
            // device's own id needs no stored channel (Observations stored before its channel row still name it).
            let device =
                match crate::resources::resolve_device_part(&state.store, part, suffix).await? {
                    Some((d, _)) => Some(d),
                    None => DeviceId::new(part)
                        .ok()
                        .map(|d| d.to_string())
                        .filter(|d| crate::resources::tree_device_part(d, suffix) == part),
                };
            Ok(device
                .filter(|d| crate::resources::metric_id(d, code) == *id)
                .and_then(|d| restrict(d, vec![code])))
        }
    }
}

/// `_include=Observation:device` (the DeviceMetrics the Observations reference) and
/// `_include:iterate=DeviceMetric:source` (their MDS Devices too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct IncludeSpec {
    metrics: bool,
    sources: bool,
}

impl IncludeSpec {
    fn parse(&mut self, key: &str, v: &str) -> Result<(), CloudError> {
        match (key, v) {
            ("_include", "Observation:device" | "Observation:device:DeviceMetric") => {
                self.metrics = true;
            }
            ("_include:iterate", "DeviceMetric:source" | "DeviceMetric:source:Device") => {
                self.sources = true;
            }
            ("_include", "Observation:device:Device") => {
                return Err(CloudError::NotSupported(
                    "_include=Observation:device:Device would include nothing: Observation.device references the \
                     DeviceMetric that measured it; use _include=Observation:device (DeviceMetrics) and \
                     _include:iterate=DeviceMetric:source (their Devices)"
                        .into(),
                ));
            }
            ("_include", "DeviceMetric:source" | "DeviceMetric:source:Device") => {
                return Err(CloudError::NotSupported(
                    "DeviceMetric:source applies to included DeviceMetrics: use _include:iterate=DeviceMetric:source \
                     together with _include=Observation:device"
                        .into(),
                ));
            }
            (k, other) => {
                return Err(CloudError::NotSupported(format!(
                    "{k}={other} is not supported (supported: _include=Observation:device, \
                     _include:iterate=DeviceMetric:source)"
                )));
            }
        }
        Ok(())
    }

    /// The iterate include needs the DeviceMetrics it iterates on.
    fn check(&self) -> Result<(), CloudError> {
        if self.sources && !self.metrics {
            return Err(CloudError::InvalidArgument(
                "_include:iterate=DeviceMetric:source needs _include=Observation:device (it includes the source \
                 Devices of the included DeviceMetrics)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The caller's scopes for what `_include` may add: DeviceMetric and Device (each `Err` when not granted).
struct IncludeScopes {
    metric: Result<Caller, CloudError>,
    device: Result<Caller, CloudError>,
}

/// Search parameters EHRs commonly send that Wardwatch refuses with a specific reason (never ignored).
fn explicitly_unsupported(name: &str) -> Option<CloudError> {
    match name {
        "_revinclude" => Some(CloudError::NotSupported(
            "_revinclude is not supported on any type: no resource this server serves is referenced by another \
             searchable resource in a way it indexes"
                .into(),
        )),
        "encounter" | "encounter:Encounter" => Some(CloudError::NotSupported(
            "encounter by reference (Encounter/<id>) is not supported: this server serves no Encounter resources; \
             an Observation names its encounter by visit number, so search with \
             encounter:identifier=[system|]<visit number> (vital-sign Observations)"
                .into(),
        )),
        n if n.starts_with("encounter:") && n != "encounter:identifier" => Some(CloudError::NotSupported(format!(
            "{n} is not supported: encounter is searched with the :identifier modifier only \
             (encounter:identifier=[system|]<visit number>, vital-sign Observations)"
        ))),
        _ => None,
    }
}

/// `_include=Observation:device`: the current version of each DeviceMetric the page's Observations reference,
/// once each; with `_include:iterate=DeviceMetric:source`, also the current version of each of their source
/// Devices (the MDS). A caller whose scopes do not cover DeviceMetric (or Device) gets none of those and one
/// warning OperationOutcome instead (the Observations are still returned).
/// The ids that `element` of `resources` references as `{"reference": "<prefix><id>"}`.
fn referenced_ids(
    resources: &[&serde_json::Value],
    element: &str,
    prefix: &str,
) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| {
            r.get(element)?
                .get("reference")?
                .as_str()?
                .strip_prefix(prefix)
                .map(str::to_string)
        })
        .collect()
}

/// The resources `_include` asks for: the DeviceMetrics the matched Observations reference (`metrics`, their
/// ids) and, with `_include:iterate=DeviceMetric:source`, those metrics' source Devices.
async fn included_resources(
    state: &ApiState,
    metrics: BTreeSet<String>,
    include: IncludeSpec,
    scopes: &IncludeScopes,
) -> Result<(Vec<(String, serde_json::Value)>, Option<serde_json::Value>), CloudError> {
    let mut out = Vec::new();
    let mut omitted = Vec::new();
    if !include.metrics {
        return Ok((out, None));
    }
    match &scopes.metric {
        Err(e) => {
            tracing::info!(error = %e, "_include=Observation:device omitted: no DeviceMetric scope");
            omitted.push(format!(
                "the referenced DeviceMetrics are omitted because the client may not read DeviceMetric ({e})"
            ));
        }
        Ok(_) => {
            for id in metrics {
                if let Some(m) = crate::resources::read_resource(
                    &state.store,
                    &state.config,
                    "DeviceMetric",
                    &id,
                )
                .await?
                {
                    out.push((format!("{}/DeviceMetric/{id}", state.base_url), m));
                }
            }
        }
    }
    if include.sources {
        match &scopes.device {
            Err(e) => {
                tracing::info!(error = %e, "_include:iterate=DeviceMetric:source omitted: no Device scope");
                omitted.push(format!(
                    "the DeviceMetrics' source Devices are omitted because the client may not read Device ({e})"
                ));
            }
            Ok(_) => {
                let metrics: Vec<&serde_json::Value> = out.iter().map(|(_, r)| r).collect();
                let ids: Vec<String> = referenced_ids(&metrics, "source", "Device/")
                    .into_iter()
                    .collect();
                for (v, row) in state.store.current_device_versions(&ids).await? {
                    out.push((
                        format!("{}/Device/{}", state.base_url, row.device_id),
                        device_to_fhir(&row, v, &state.config.device_id_system)?,
                    ));
                }
            }
        }
    }
    let warning = (!omitted.is_empty()).then(|| {
        wardwatch_fhir::operation_outcome(
            wardwatch_fhir::IssueSeverity::Warning,
            wardwatch_fhir::IssueCode::Forbidden,
            &format!(
                "_include: {}; the Observations are complete",
                omitted.join("; ")
            ),
        )
    });
    Ok((out, warning))
}

pub(crate) fn parse_code(token: &str) -> Result<CodeFilter, CloudError> {
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

/// Maps a stored vital sign to a FHIR Observation. `mrn_system` and `visit_system` are the identifier systems of
/// the patient reference and of the encounter reference (`api.mrn_system`, `api.visit_number_system`).
pub fn vital_to_observation(
    row: &VitalRow,
    mrn_system: &str,
    visit_system: &str,
) -> Result<serde_json::Value, CloudError> {
    let res = with_vital_record(row, mrn_system, visit_system, |r| {
        wardwatch_fhir::vital_sign_observation(r)
    })?;
    let v = sample_version(row);
    crate::resources::stamp_version(res, v.version_id, v.last_updated_unix_ms)
}

/// The version of a stored sample's Observation: a sample never changes once stored, so one version, last
/// updated when the cloud stored it.
fn sample_version(row: &VitalRow) -> wardwatch_fhir::VersionMeta<'static> {
    wardwatch_fhir::VersionMeta {
        version_id: crate::resources::ONLY_VERSION,
        last_updated_unix_ms: Some(row.received_at_ms),
    }
}

/// The DeviceMetric that measured a stored sample (Point-of-Care Device shape), `<device>.<MDC code>`: what its
/// Observation's `device` references. `None` when the source named no device.
fn measured_by(row: &VitalRow) -> Option<String> {
    (!row.device_id.is_empty()).then(|| crate::resources::metric_id(&row.device_id, row.metric_mdc))
}

/// [`vital_to_observation`] as JSON text, for search Bundles (see [`wardwatch_fhir::searchset_bundle_text`]).
pub fn vital_to_observation_json(
    row: &VitalRow,
    mrn_system: &str,
    visit_system: &str,
) -> Result<wardwatch_fhir::SerializedResource, CloudError> {
    let version = sample_version(row);
    with_vital_record(row, mrn_system, visit_system, |r| {
        wardwatch_fhir::vital_sign_observation_json(r, &version)
    })
}

/// Builds the FHIR mapping's record of a stored vital sign and hands it to `map`.
fn with_vital_record<T>(
    row: &VitalRow,
    mrn_system: &str,
    visit_system: &str,
    map: impl FnOnce(&VitalSignRecord<'_>) -> Result<T, wardwatch_fhir::FhirError>,
) -> Result<T, CloudError> {
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
    let measured_by = measured_by(row);
    let record = VitalSignRecord {
        id: &id,
        patient_system: mrn_system,
        patient_id: &row.patient_id,
        encounter: row.encounter.as_deref().map(|value| EncounterReference {
            system: visit_system,
            value,
            assigner: row.encounter_authority.as_deref(),
        }),
        device: measured_by.as_deref().map(DeviceReference::DeviceMetric),
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
    map(&record).map_err(|e| internal(e.to_string()))
}

/// The `urn:wardwatch:device-kind` code of a stored `DeviceKind` value (`None` when unspecified).
pub fn device_kind_code(kind: i64) -> Option<&'static str> {
    match DeviceKind::try_from(i32::try_from(kind).unwrap_or(0)).ok()? {
        DeviceKind::BedsideMonitor => Some("bedside-monitor"),
        DeviceKind::Wearable => Some("wearable"),
        DeviceKind::DripMonitor => Some("drip-monitor"),
        DeviceKind::InfusionPump => Some("infusion-pump"),
        DeviceKind::Unspecified => None,
    }
}

/// `Device.status` and the operational-status text of a stored `OperationalState` value.
pub fn device_status(state: i64) -> (&'static str, &'static str) {
    let state = OperationalState::try_from(i32::try_from(state).unwrap_or(0))
        .unwrap_or(OperationalState::Unspecified);
    match state {
        OperationalState::On => ("active", "on"),
        OperationalState::Off => ("inactive", "off"),
        OperationalState::Standby => ("active", "standby"),
        OperationalState::NotReporting => ("unknown", "not-reporting"),
        OperationalState::Unspecified => ("unknown", "unknown"),
    }
}

/// Maps one version of a stored device (migration 0009's `device_versions`) to a FHIR Device.
pub fn device_to_fhir(
    row: &DeviceRow,
    version: i64,
    id_system: &str,
) -> Result<serde_json::Value, CloudError> {
    let kind = DeviceKind::try_from(i32::try_from(row.kind).unwrap_or(0))
        .unwrap_or(DeviceKind::Unspecified);
    let kind_display = match kind {
        DeviceKind::BedsideMonitor => "Multi-parameter bedside monitor",
        DeviceKind::Wearable => "Wearable vital-signs monitor",
        DeviceKind::DripMonitor => "Drip rate monitor",
        DeviceKind::InfusionPump => "Infusion pump",
        DeviceKind::Unspecified => "Medical device",
    };
    // The MDS's MDC device type where the containment table has one for this kind.
    let kind_mdc = device_kind_code(row.kind)
        .and_then(wardwatch_fhir::containment::mds_type)
        .map(|t| (t.code, t.reference_id));
    let (status, operational) = device_status(row.state);
    let location = format!("Ward {}, bed {}", row.ward, row.bed);
    let loc_id = crate::resources::location_id(&row.ward, &row.bed);
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
        location_id: loc_id.as_deref(),
        status,
        operational_display: Some(operational),
        last_updated_unix_ms: row.reported_at_ms,
    };
    let res = wardwatch_fhir::device(&record).map_err(|e| {
        CloudError::Unavailable(format!("device {} cannot be mapped: {e}", row.device_id))
    })?;
    crate::resources::stamp_version(res, &version.to_string(), Some(row.reported_at_ms))
}

pub(crate) async fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    resource: &str,
    query: &str,
    patients: String,
    status: StatusCode,
) {
    audit_as(
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

/// Writes one audit record (who, from where, what, which patients, with what result); a failure is logged,
/// never returned, so an audit outage does not turn reads into errors.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn audit_as(
    state: &ApiState,
    client_id: &str,
    remote: &str,
    action: &str,
    resource: &str,
    query: &str,
    patients: String,
    status: StatusCode,
) {
    let rec = AuditRecord {
        at_ms: wardwatch_proto::now_unix_ms(),
        client_id: client_id.to_string(),
        action: action.into(),
        resource_type: resource.into(),
        query: query.chars().take(2000).collect(),
        patients,
        status: i32::from(status.as_u16()),
        remote: remote.to_string(),
    };
    if let Err(e) = state.store.audit(&rec).await {
        tracing::error!(error = %e, client = %client_id, "audit record could not be written");
    }
}

async fn search_observations(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "Observation")?;
    // Only consulted for `_include=Observation:device` and `_include:iterate=DeviceMetric:source`.
    let scopes = IncludeScopes {
        metric: authorize(&state, &headers, remote.as_deref(), "DeviceMetric"),
        device: authorize(&state, &headers, remote.as_deref(), "Device"),
    };
    let query_text = raw.clone().unwrap_or_default();
    // NEWS2 scores and infusion measurements are Observations too, stored as events (issue 6).
    let family = match observation_family(raw.as_deref()) {
        Ok(f) => f,
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
    if let Some(family) = family {
        return match search_event_observations(&state, family, raw.as_deref(), &scopes).await {
            Ok((bundle, patients)) => {
                audit(
                    &state,
                    &caller,
                    "search",
                    "Observation",
                    &query_text,
                    patients,
                    StatusCode::OK,
                )
                .await;
                Ok(fhir_json(StatusCode::OK, &bundle))
            }
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
                Err(e)
            }
        };
    }
    let search = match parse_observation_search(raw.as_deref(), &state.config.visit_number_system) {
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
    // `device` narrows to one device and, for a VMD, channel or DeviceMetric, to its metrics.
    let (device, codes, device_no_match) = match &search.device {
        None => (None, search.codes.clone(), false),
        Some(t) => match resolve_device_target(&state, t, &search.codes).await? {
            Some((d, codes)) => (Some(d), codes, false),
            None => (None, search.codes.clone(), true),
        },
    };
    let mut q = VitalQuery {
        patient: search.patient.clone(),
        codes,
        device,
        encounter: search.encounter.clone(),
        measured: search.measured,
        received: search.received,
        sort: search.sort,
        limit: search.count + 1,
        ..Default::default()
    };
    match (search.sort, search.cursor) {
        (_, None) => {}
        (VitalSort::Newest, Some(Cursor::Id(id))) => q.before_id = Some(id),
        (VitalSort::DateDesc | VitalSort::DateAsc, Some(Cursor::Date(ms, id))) => {
            q.after_date = Some((ms, id));
        }
        _ => {
            return Err(CloudError::InvalidArgument(
                "_cursor does not belong to this search's _sort".into(),
            ));
        }
    }
    let empty = search.no_match
        || device_no_match
        || matches!((q.measured.from_ms, q.measured.before_ms), (Some(f), Some(b)) if f >= b)
        || matches!((q.received.from_ms, q.received.before_ms), (Some(f), Some(b)) if f >= b);
    if search.count_only {
        let total = if empty {
            0
        } else {
            state.store.count_vitals_matching(&q).await?
        };
        let page = SearchPage {
            self_url: format!(
                "{}/Observation?{}",
                state.base_url,
                serde_urlencoded::to_string(&search.echo).unwrap_or_default()
            ),
            next_url: None,
            total: Some(u64::try_from(total).unwrap_or(0)),
            entries: Vec::new(),
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
            search.patient.clone().unwrap_or_default(),
            StatusCode::OK,
        )
        .await;
        return Ok(fhir_json(StatusCode::OK, &bundle));
    }
    let mut rows = if empty {
        Vec::new()
    } else {
        state.store.search_vitals(&q).await?
    };
    let more = rows.len() > search.count as usize;
    rows.truncate(search.count as usize);
    let patients: BTreeSet<String> = rows.iter().map(|r| r.patient_id.clone()).collect();
    let (rows, entries) = {
        let (base, mrn_system, visit_system) = (
            state.base_url.clone(),
            state.config.mrn_system.clone(),
            state.config.visit_number_system.clone(),
        );
        map_off_runtime(rows, move |r| {
            Ok((
                format!("{base}/Observation/{}", observation_id(r)),
                vital_to_observation_json(r, &mrn_system, &visit_system)?,
            ))
        })
        .await?
    };
    let link = |extra: Option<Cursor>| {
        let mut params = search.echo.clone();
        if let Some(c) = extra {
            params.push(("_cursor".into(), c.encode()));
        }
        let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
        format!("{}/Observation?{qs}", state.base_url)
    };
    let (included, warning) = {
        // What each Observation's `device` names.
        let metrics = rows.iter().filter_map(measured_by).collect();
        included_resources(&state, metrics, search.include, &scopes).await?
    };
    let page = SearchPage {
        self_url: link(search.cursor),
        next_url: if more {
            rows.last().map(|r| {
                link(Some(match search.sort {
                    VitalSort::Newest => Cursor::Id(r.id),
                    VitalSort::DateDesc | VitalSort::DateAsc => {
                        Cursor::Date(r.measured_at_ms, r.id)
                    }
                }))
            })
        } else {
            None
        },
        total: None,
        entries,
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    };
    let body = render_off_runtime(page.entries.len(), move || {
        wardwatch_fhir::searchset_bundle_text(page, included, warning)
            .map_err(|e| CloudError::Unavailable(e.to_string()))
    })
    .await?;
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
    Ok(fhir_json_text(StatusCode::OK, body))
}

/// Pages with at most this many resources are mapped and rendered on the async runtime: each resource costs
/// tens of µs, and async code should block for at most about 500 µs (ARCHITECTURE.md).
const INLINE_RESOURCES: usize = 16;

/// Maps `rows` with `f`, keeping their order, and gives the rows back. More than [`INLINE_RESOURCES`] rows are
/// mapped on the blocking pool, split across the machine's cores (a 24-hour page is about 700 Observations).
async fn map_off_runtime<T, U, F>(rows: Vec<T>, f: F) -> Result<(Vec<T>, Vec<U>), CloudError>
where
    T: Send + Sync + 'static,
    U: Send + 'static,
    F: Fn(&T) -> Result<U, CloudError> + Send + Sync + 'static,
{
    if rows.len() <= INLINE_RESOURCES {
        let out = rows.iter().map(&f).collect::<Result<Vec<U>, _>>()?;
        return Ok((rows, out));
    }
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, 4);
        let chunk = rows.len().div_ceil(threads).max(INLINE_RESOURCES);
        let map_chunk = |c: &[T]| c.iter().map(&f).collect::<Result<Vec<U>, CloudError>>();
        let mapped = std::thread::scope(|scope| {
            let mut chunks = rows.chunks(chunk);
            let first = chunks.next().unwrap_or(&[]);
            let others: Vec<_> = chunks.map(|c| scope.spawn(move || map_chunk(c))).collect();
            let mut out = map_chunk(first)?;
            for h in others {
                out.extend(h.join().map_err(|_| {
                    CloudError::Unavailable("a resource mapping thread panicked".into())
                })??);
            }
            Ok::<_, CloudError>(out)
        })?;
        Ok((rows, mapped))
    })
    .await
    .map_err(|e| CloudError::Unavailable(format!("resource mapping task failed: {e}")))?
}

/// Runs `render` (building and serializing a Bundle of `resources` entries) on the blocking pool when the Bundle
/// is large, inline otherwise.
async fn render_off_runtime<F>(resources: usize, render: F) -> Result<String, CloudError>
where
    F: FnOnce() -> Result<String, CloudError> + Send + 'static,
{
    if resources <= INLINE_RESOURCES {
        return render();
    }
    tokio::task::spawn_blocking(render)
        .await
        .map_err(|e| CloudError::Unavailable(format!("bundle rendering task failed: {e}")))?
}

async fn read_device(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path(id): Path<String>,
) -> Result<Response, CloudError> {
    authorize(&state, &headers, remote.as_deref(), "Device")?;
    // A device id (the MDS) or a VMD or channel id, `<device>.vmd-<group>` / `<device>.chan-<group>`.
    if !crate::resources::is_fhir_id(&id) {
        return Err(CloudError::InvalidArgument(format!(
            "Device id {:?} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})",
            id.chars().take(100).collect::<String>()
        )));
    }
    read_any(&state, &headers, remote.as_deref(), "Device", &id).await
}

// ---- Issue 6: reads and searches of the device-mapping resources, and /metadata. ----

/// A read route for `resource_type` (served by [`crate::resources::read_resource`]).
fn read_route(resource_type: &'static str) -> axum::routing::MethodRouter<Arc<ApiState>> {
    get(
        move |State(state): State<Arc<ApiState>>,
              headers: HeaderMap,
              remote: Option<axum::Extension<RemoteAddr>>,
              Path(id): Path<String>| async move {
            read_any(&state, &headers, remote.as_deref(), resource_type, &id).await
        },
    )
}

/// vread and `_history` of every served type: `/{Type}/{id}/_history/{vid}`, `/{Type}/{id}/_history`; the
/// type- and system-level histories are refused explicitly (400 `not-supported`).
fn history_routes() -> Router<Arc<ApiState>> {
    let mut r = Router::new().route("/_history", get(history_level_refused));
    for t in crate::resources::READABLE_TYPES {
        let t: &'static str = t;
        r = r
            .route(&format!("/{t}/_history"), get(history_level_refused))
            .route(
                &format!("/{t}/{{id}}/_history"),
                get(
                    move |State(state): State<Arc<ApiState>>,
                          headers: HeaderMap,
                          remote: Option<axum::Extension<RemoteAddr>>,
                          Path(id): Path<String>,
                          RawQuery(raw): RawQuery| async move {
                        history_any(&state, &headers, remote.as_deref(), t, &id, raw.as_deref())
                            .await
                    },
                ),
            )
            .route(
                &format!("/{t}/{{id}}/_history/{{vid}}"),
                get(
                    move |State(state): State<Arc<ApiState>>,
                          headers: HeaderMap,
                          remote: Option<axum::Extension<RemoteAddr>>,
                          Path((id, vid)): Path<(String, String)>| async move {
                        vread_any(&state, &headers, remote.as_deref(), t, &id, &vid).await
                    },
                ),
            );
    }
    r
}

async fn history_level_refused(uri: axum::http::Uri) -> CloudError {
    tracing::info!(path = %uri.path(), "type- or system-level history refused");
    CloudError::NotSupported(
        "history is served per resource only (GET [base]/{Type}/{id}/_history); the type-level and system-level \
         histories are not supported"
            .into(),
    )
}

/// `GET [base]/{type}/{id}/_history/{vid}`: authorized and audited like a read (action `read`, the id
/// recorded as `<id>/_history/<vid>`).
async fn vread_any(
    state: &ApiState,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
    resource_type: &'static str,
    id: &str,
    vid: &str,
) -> Result<Response, CloudError> {
    let caller = authorize(state, headers, remote, resource_type)?;
    let shown = format!(
        "{}/_history/{}",
        id.chars().take(200).collect::<String>(),
        vid.chars().take(64).collect::<String>()
    );
    let read =
        crate::resources::read_version(&state.store, &state.config, resource_type, id, vid).await;
    let result = match read {
        Ok(crate::resources::VersionRead::Found(r)) => {
            let patients = patients_of(&r).unwrap_or_default();
            Ok((r, patients))
        }
        Ok(crate::resources::VersionRead::NoResource) => Err(CloudError::NotFound(format!(
            "{resource_type}/{} is not known",
            id.chars().take(200).collect::<String>()
        ))),
        Ok(crate::resources::VersionRead::NoVersion(why)) => Err(CloudError::NotFound(why)),
        Err(e) => Err(e),
    };
    audited_read(
        state,
        &caller,
        resource_type,
        &shown,
        result,
        Some("version read"),
    )
    .await
}

/// Answers a read-like request (read, vread, instance history): audits it as a `read` of `shown` with the
/// patients the answer names (none on an error, with the error's status), then returns the resource or the
/// error, logging the refusal as `refused` when given.
async fn audited_read(
    state: &ApiState,
    caller: &Caller,
    resource_type: &'static str,
    shown: &str,
    result: Result<(serde_json::Value, String), CloudError>,
    refused: Option<&str>,
) -> Result<Response, CloudError> {
    let (status, patients) = match &result {
        Ok((_, p)) => (StatusCode::OK, p.clone()),
        Err(e) => (e.http_status(), String::new()),
    };
    audit(
        state,
        caller,
        "read",
        resource_type,
        shown,
        patients,
        status,
    )
    .await;
    match result {
        Ok((resource, _)) => Ok(fhir_json(StatusCode::OK, &resource)),
        Err(e) => {
            if let Some(what) = refused {
                tracing::info!(resource = resource_type, id = %shown, error = %e, "{what} refused");
            }
            Err(e)
        }
    }
}

/// The parameters of an instance history: `_count` (1..=1000, default 50) and `_cursor` (from `next` links).
/// `_since`, `_at` and anything else are refused, never ignored.
fn parse_history_params(raw: Option<&str>) -> Result<(u32, Option<u64>), CloudError> {
    let params = split_params(raw)?;
    for (k, _) in &params.pairs {
        if k != "_count" {
            return Err(CloudError::NotSupported(format!(
                "parameter {k:?} is not supported on _history (supported: _count, _cursor)"
            )));
        }
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| bad_cursor(c))
        })
        .transpose()?;
    Ok((params.count, before))
}

/// `GET [base]/{type}/{id}/_history`: a `history` Bundle of the instance's versions, newest first, paged.
/// Authorized and audited like a read (action `read`, the id recorded as `<id>/_history`).
async fn history_any(
    state: &ApiState,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
    resource_type: &'static str,
    id: &str,
    raw: Option<&str>,
) -> Result<Response, CloudError> {
    let caller = authorize(state, headers, remote, resource_type)?;
    let shown = format!("{}/_history", id.chars().take(200).collect::<String>());
    let result = history_bundle_of(state, resource_type, id, raw).await;
    audited_read(
        state,
        &caller,
        resource_type,
        &shown,
        result,
        Some("history"),
    )
    .await
}

async fn history_bundle_of(
    state: &ApiState,
    resource_type: &'static str,
    id: &str,
    raw: Option<&str>,
) -> Result<(serde_json::Value, String), CloudError> {
    let (count, before) = parse_history_params(raw)?;
    let page = crate::resources::read_history(
        &state.store,
        &state.config,
        resource_type,
        id,
        before,
        count,
    )
    .await?
    .ok_or_else(|| {
        CloudError::NotFound(format!(
            "{resource_type}/{} is not known",
            id.chars().take(200).collect::<String>()
        ))
    })?;
    let base = format!("{}/{resource_type}/{id}/_history", state.base_url);
    let link = |cursor: Option<u64>| {
        let mut q = vec![("_count".to_string(), count.to_string())];
        if let Some(c) = cursor {
            q.push(("_cursor".into(), c.to_string()));
        }
        format!(
            "{base}?{}",
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    };
    let mut patients = BTreeSet::new();
    let mut entries = Vec::with_capacity(page.versions.len());
    for v in page.versions {
        if let Some(p) = patients_of(&v) {
            patients.insert(p);
        }
        let vid = v
            .get("meta")
            .and_then(|m| m.get("versionId"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        entries.push((format!("{base}/{vid}"), v));
    }
    let bundle = wardwatch_fhir::history_bundle(wardwatch_fhir::HistoryPage {
        self_url: link(before),
        next_url: page.next_before.map(|b| link(Some(b))),
        total: page.total,
        entries,
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    })
    .map_err(|e| CloudError::Unavailable(format!("history of {resource_type}/{id}: {e}")))?;
    Ok((bundle, patients.into_iter().collect::<Vec<_>>().join(",")))
}

/// The patient MRNs a resource is about (`subject` or `patient` identifier), for the audit trail.
fn patients_of(resource: &serde_json::Value) -> Option<String> {
    ["subject", "patient"].iter().find_map(|k| {
        resource
            .get(*k)?
            .get("identifier")?
            .get("value")?
            .as_str()
            .map(str::to_string)
    })
}

async fn read_any(
    state: &ApiState,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
    resource_type: &'static str,
    id: &str,
) -> Result<Response, CloudError> {
    let caller = authorize(state, headers, remote, resource_type)?;
    let shown: String = id.chars().take(200).collect();
    let result =
        match crate::resources::read_resource(&state.store, &state.config, resource_type, id).await
        {
            Ok(Some(r)) => {
                let patients = patients_of(&r).unwrap_or_default();
                Ok((r, patients))
            }
            Ok(None) => Err(CloudError::NotFound(format!(
                "{resource_type}/{shown} is not known"
            ))),
            Err(e) => Err(e),
        };
    audited_read(state, &caller, resource_type, &shown, result, None).await
}

/// A search route for `resource_type`.
fn search_route(resource_type: &'static str) -> axum::routing::MethodRouter<Arc<ApiState>> {
    get(
        move |State(state): State<Arc<ApiState>>,
              headers: HeaderMap,
              remote: Option<axum::Extension<RemoteAddr>>,
              RawQuery(raw): RawQuery| async move {
            let caller = authorize(&state, &headers, remote.as_deref(), resource_type)?;
            let query_text = raw.clone().unwrap_or_default();
            match search_any(&state, resource_type, raw.as_deref()).await {
                Ok((bundle, patients)) => {
                    audit(
                        &state,
                        &caller,
                        "search",
                        resource_type,
                        &query_text,
                        patients,
                        StatusCode::OK,
                    )
                    .await;
                    Ok::<Response, CloudError>(fhir_json(StatusCode::OK, &bundle))
                }
                Err(e) => {
                    audit(
                        &state,
                        &caller,
                        "search",
                        resource_type,
                        &query_text,
                        String::new(),
                        e.http_status(),
                    )
                    .await;
                    Err(e)
                }
            }
        },
    )
}

/// Search parameters each resource type accepts (besides `_count` and `_cursor`), for the error text and the
/// CapabilityStatement: (name, FHIR type, what it does).
/// One documented search parameter: (name, FHIR type, what it does).
type ParamDoc = (&'static str, &'static str, &'static str);

const SEARCH_PARAMS: &[(&str, &[ParamDoc])] = &[
    (
        "Observation",
        &[
            (
                "patient",
                "reference",
                "The patient's MRN, with or without Patient/",
            ),
            ("subject", "reference", "Same as patient"),
            (
                "code",
                "token",
                "LOINC or MDC code (vital signs), SNOMED CT 1104051000000101 (NEWS2), or MDC 157784/157993/157872 (infusion rate, volume infused, volume remaining); one family per search",
            ),
            (
                "category",
                "token",
                "vital-signs (default family), survey (NEWS2) or therapy (infusion measurements)",
            ),
            ("date", "date", "effectiveDateTime with eq/ge/gt/le/lt"),
            (
                "device",
                "reference",
                "Vital signs only: Device/<device> (all its Observations), Device/<VMD or channel id> (those of its metrics), DeviceMetric/<id> (that metric's); a bare id is a Device when it has no '.' or is a VMD/channel id, else a DeviceMetric",
            ),
            (
                "encounter",
                "reference",
                "Vital signs only, with the :identifier modifier only: encounter:identifier=[system|]<visit number> (system api.visit_number_system). The encounter is referenced by identifier (this server serves no Encounter resources), so encounter=Encounter/<id> is refused",
            ),
            (
                "_lastUpdated",
                "date",
                "When the cloud stored it (vital signs only)",
            ),
            ("_sort", "special", "date or -date (vital signs only)"),
            ("_summary", "special", "count"),
        ],
    ),
    (
        "RiskAssessment",
        &[
            ("patient", "reference", "The patient's MRN"),
            ("subject", "reference", "Same as patient"),
            ("date", "date", "occurrenceDateTime with eq/ge/gt/le/lt"),
            ("_summary", "special", "count: the total only"),
        ],
    ),
    (
        "DetectedIssue",
        &[
            ("patient", "reference", "The patient's MRN"),
            (
                "code",
                "token",
                "Alarm kind in urn:wardwatch:alarm-kind (e.g. vital-threshold)",
            ),
            (
                "identified",
                "date",
                "When the alarm was first raised, eq/ge/gt/le/lt",
            ),
            (
                "status",
                "token",
                "Wardwatch-defined: preliminary (the alarm is active) or final (cleared), from its latest state change",
            ),
            (
                "priority",
                "token",
                "Wardwatch-defined: the current alarm priority (IEC 60601-1-8), high, medium, low or info: the code of the urn:wardwatch:fhir:extension:alarm-priority extension",
            ),
            ("_summary", "special", "count: the total only"),
        ],
    ),
    (
        "MedicationAdministration",
        &[
            ("patient", "reference", "The patient's MRN"),
            ("subject", "reference", "Same as patient"),
            (
                "effective-time",
                "date",
                "When the first status report of the order was measured, eq/ge/gt/le/lt",
            ),
            (
                "status",
                "token",
                "in-progress, on-hold or completed, from the order's latest report (other statuses match nothing)",
            ),
            ("_summary", "special", "count: the total only"),
        ],
    ),
    (
        "Device",
        &[
            (
                "patient",
                "reference",
                "Devices that reported data for this patient (MRN)",
            ),
            (
                "location",
                "reference",
                "Location/<ward> or Location/<ward>.<bed>",
            ),
            (
                "type",
                "token",
                "urn:wardwatch:device-kind|bedside-monitor, wearable, drip-monitor or infusion-pump (MDS), or an MDC device type urn:iso:std:iso:11073:10101|<code>: an MDS code (69965, 69985) or a VMD or channel code (e.g. 69642 MDC_DEV_ANALY_SAT_O2_VMD)",
            ),
            (
                "parent",
                "reference",
                "Device/<id>: the VMDs of an MDS, the channel of a VMD",
            ),
            ("_summary", "special", "count: the total only"),
        ],
    ),
    (
        "DeviceMetric",
        &[
            ("source", "reference", "Device/<id>"),
            (
                "type",
                "token",
                "MDC code of the metric (urn:iso:std:iso:11073:10101|<code> or the bare code)",
            ),
            ("_summary", "special", "count: the total only"),
        ],
    ),
    (
        "Location",
        &[
            ("partof", "reference", "Location/<ward>: the beds of a ward"),
            ("_summary", "special", "count: the total only"),
        ],
    ),
];

fn supported_names(resource_type: &str) -> String {
    let mut names: Vec<&str> = SEARCH_PARAMS
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, p)| p.iter().map(|(n, _, _)| *n).collect())
        .unwrap_or_default();
    names.extend(["_count", "_cursor"]);
    names.join(", ")
}

fn unsupported(resource_type: &str, name: &str) -> CloudError {
    if let Some(e) = explicitly_unsupported(name) {
        return e;
    }
    CloudError::NotSupported(format!(
        "search parameter {name:?} is not supported on {resource_type} (supported: {}); unsupported parameters are always refused, never ignored",
        supported_names(resource_type)
    ))
}

fn parse_count(v: &str) -> Result<u32, CloudError> {
    parse_bounded("_count", v, MAX_COUNT)
}

/// A whole-number parameter `name` in `1..=max` (`_count`, `$lastn`'s `max`), or a 400 saying what it must be.
pub(crate) fn parse_bounded(name: &str, v: &str, max: u32) -> Result<u32, CloudError> {
    let n: u32 = v.parse().map_err(|_| {
        CloudError::InvalidArgument(format!(
            "{name} must be a whole number 1..={max}, got {v:?}"
        ))
    })?;
    if n == 0 || n > max {
        return Err(CloudError::InvalidArgument(format!(
            "{name} must be 1..={max}, got {n}"
        )));
    }
    Ok(n)
}

fn parse_patient(k: &str, v: &str, slot: &mut Option<String>) -> Result<(), CloudError> {
    let id = v.strip_prefix("Patient/").unwrap_or(v);
    let id = PatientId::new(id).map_err(|e| CloudError::InvalidArgument(format!("{k}: {e}")))?;
    if slot.replace(id.to_string()).is_some() {
        return Err(CloudError::InvalidArgument(format!(
            "{k} given more than once"
        )));
    }
    Ok(())
}

fn bad_cursor(v: &str) -> CloudError {
    CloudError::InvalidArgument(format!("_cursor {v:?} is not a page token of this server"))
}

/// The shared search parameters, already split.
struct Params {
    pairs: Vec<(String, String)>,
    count: u32,
    cursor: Option<String>,
    /// `_summary=count`: the total only, no entries.
    count_only: bool,
}

fn split_params(raw: Option<&str>) -> Result<Params, CloudError> {
    let all: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    let mut p = Params {
        pairs: Vec::new(),
        count: DEFAULT_COUNT,
        cursor: None,
        count_only: false,
    };
    for (k, v) in all {
        match k.as_str() {
            "_count" => {
                p.count = parse_count(&v)?;
                p.pairs.push((k, v));
            }
            "_summary" => {
                if v != "count" {
                    return Err(CloudError::NotSupported(format!(
                        "_summary={v} is not supported (supported: count)"
                    )));
                }
                p.count_only = true;
                p.pairs.push((k, v));
            }
            "_cursor" => p.cursor = Some(v),
            _ => p.pairs.push((k, v)),
        }
    }
    Ok(p)
}

/// What a search found: a page, or only the number of matches (`_summary=count`).
enum Found {
    Page(Page),
    Count(u64),
}

impl From<Page> for Found {
    fn from(p: Page) -> Self {
        Self::Page(p)
    }
}

fn count_of(n: i64) -> Result<Found, CloudError> {
    Ok(Found::Count(u64::try_from(n).unwrap_or(0)))
}

/// One page: the resources with their ids, and the cursor of the next page if there is one.
struct Page {
    entries: Vec<(String, serde_json::Value)>,
    next: Option<String>,
}

fn page_bundle(
    state: &ApiState,
    resource_type: &str,
    params: &Params,
    page: Page,
    included: Vec<(String, serde_json::Value)>,
    warning: Option<serde_json::Value>,
) -> Result<(serde_json::Value, String), CloudError> {
    let link = |cursor: Option<&str>| {
        let mut q = params.pairs.clone();
        if let Some(c) = cursor {
            q.push(("_cursor".into(), c.to_string()));
        }
        format!(
            "{}/{resource_type}?{}",
            state.base_url,
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    };
    let mut patients = BTreeSet::new();
    // A search by patient reads that patient's data even when the resources do not name them (Device).
    for (k, v) in &params.pairs {
        if (k == "patient" || k == "subject") && !page.entries.is_empty() {
            patients.insert(v.strip_prefix("Patient/").unwrap_or(v).to_string());
        }
    }
    let mut entries = Vec::with_capacity(page.entries.len());
    for (id, res) in page.entries {
        if let Some(p) = patients_of(&res) {
            patients.insert(p);
        }
        let rt = res
            .get("resourceType")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(resource_type)
            .to_string();
        entries.push((format!("{}/{rt}/{id}", state.base_url), res));
    }
    let bundle = wardwatch_fhir::searchset_bundle_with(
        SearchPage {
            self_url: link(params.cursor.as_deref()),
            next_url: page.next.as_deref().map(|c| link(Some(c))),
            total: None,
            entries,
            timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
        },
        included,
        warning,
    )
    .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    Ok((bundle, patients.into_iter().collect::<Vec<_>>().join(",")))
}

async fn search_any(
    state: &ApiState,
    resource_type: &'static str,
    raw: Option<&str>,
) -> Result<(serde_json::Value, String), CloudError> {
    let params = split_params(raw)?;
    let found = match resource_type {
        "RiskAssessment" => search_risk(state, &params).await?,
        "DetectedIssue" => search_alarms(state, &params).await?,
        "MedicationAdministration" => search_orders(state, &params).await?,
        "Device" => search_devices(state, &params).await?,
        "DeviceMetric" => search_metrics(state, &params).await?,
        "Location" => search_locations(state, &params).await?,
        other => {
            return Err(CloudError::NotSupported(format!(
                "search is not supported on {other}"
            )));
        }
    };
    match found {
        Found::Page(page) => page_bundle(state, resource_type, &params, page, Vec::new(), None),
        Found::Count(total) => count_bundle(state, resource_type, &params, total),
    }
}

/// The Bundle of a `_summary=count` search: `total` and no entries. A search by patient is audited as reading
/// that patient's data.
fn count_bundle(
    state: &ApiState,
    resource_type: &str,
    params: &Params,
    total: u64,
) -> Result<(serde_json::Value, String), CloudError> {
    let bundle = wardwatch_fhir::searchset_bundle(SearchPage {
        self_url: format!(
            "{}/{resource_type}?{}",
            state.base_url,
            serde_urlencoded::to_string(&params.pairs).unwrap_or_default()
        ),
        next_url: None,
        total: Some(total),
        entries: Vec::new(),
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    })
    .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    let patient = params
        .pairs
        .iter()
        .find(|(k, _)| k == "patient" || k == "subject")
        .map(|(_, v)| v.strip_prefix("Patient/").unwrap_or(v).to_string())
        .filter(|_| total > 0)
        .unwrap_or_default();
    Ok((bundle, patient))
}

fn event_cursor(v: &str) -> Result<(i64, i64, String), CloudError> {
    let mut it = v.splitn(3, '~');
    let (Some(ms), Some(seq), Some(edge)) = (it.next(), it.next(), it.next()) else {
        return Err(bad_cursor(v));
    };
    let ms = ms.parse().map_err(|_| bad_cursor(v))?;
    let seq = seq.parse().map_err(|_| bad_cursor(v))?;
    let edge = EdgeId::new(edge).map_err(|_| bad_cursor(v))?;
    Ok((ms, seq, edge.to_string()))
}

fn group_cursor(v: &str) -> Result<(i64, String), CloudError> {
    let (ms, id) = v.split_once('~').ok_or_else(|| bad_cursor(v))?;
    let ms = ms.parse().map_err(|_| bad_cursor(v))?;
    if !crate::resources::is_fhir_id(id) {
        return Err(bad_cursor(v));
    }
    Ok((ms, id.to_string()))
}

fn empty_range(r: &TimeRange) -> bool {
    matches!((r.from_ms, r.before_ms), (Some(f), Some(b)) if f >= b)
}

/// Events of one kind, a page of them (one more than asked, to know whether there is a next page).
async fn event_page(
    state: &ApiState,
    params: &Params,
    mut q: crate::storage::EventQuery,
) -> Result<(Vec<crate::storage::EventRow>, Option<String>), CloudError> {
    if let Some(c) = &params.cursor {
        q.after = Some(event_cursor(c)?);
    }
    q.limit = params.count + 1;
    let mut rows = if empty_range(&q.time) {
        Vec::new()
    } else {
        state.store.search_events(&q).await?
    };
    let more = rows.len() > params.count as usize;
    rows.truncate(params.count as usize);
    let next = if more {
        rows.last()
            .map(|r| format!("{}~{}~{}", r.event_ms, r.sequence, r.edge_id))
    } else {
        None
    };
    Ok((rows, next))
}

async fn search_risk(state: &ApiState, params: &Params) -> Result<Found, CloudError> {
    let mut q = crate::storage::EventQuery {
        kind: "risk",
        codes: vec!["model".into()],
        ..Default::default()
    };
    for (k, v) in &params.pairs {
        match k.as_str() {
            "patient" | "subject" => parse_patient(k, v, &mut q.patient)?,
            "date" => q.time.intersect(parse_date_param("date", v)?),
            "_count" | "_summary" => {}
            other => return Err(unsupported("RiskAssessment", other)),
        }
    }
    if params.count_only {
        return count_of(if empty_range(&q.time) {
            0
        } else {
            state.store.count_events(&q).await?
        });
    }
    let (rows, next) = event_page(state, params, q).await?;
    let mut entries = Vec::with_capacity(rows.len());
    for r in &rows {
        entries.push((
            r.lineage_id(),
            crate::resources::risk_assessment_to_fhir(&state.store, &state.config, r).await?,
        ));
    }
    Ok(Page { entries, next }.into())
}

async fn group_page(
    state: &ApiState,
    params: &Params,
    kind: crate::storage::GroupKind,
    mut q: crate::storage::GroupQuery,
) -> Result<(Vec<String>, Option<String>), CloudError> {
    if let Some(c) = &params.cursor {
        q.after = Some(group_cursor(c)?);
    }
    q.limit = params.count + 1;
    let mut rows = if empty_range(&q.first) {
        Vec::new()
    } else {
        state.store.search_groups(kind, &q).await?
    };
    let more = rows.len() > params.count as usize;
    rows.truncate(params.count as usize);
    let next = if more {
        rows.last().map(|(id, ms)| format!("{ms}~{id}"))
    } else {
        None
    };
    Ok((rows.into_iter().map(|(id, _)| id).collect(), next))
}

/// The code of a token search value `[system|]code` whose system, when given, must be `system`.
fn token_code<'a>(param: &str, token: &'a str, system: &str) -> Result<&'a str, CloudError> {
    match token.split_once('|') {
        Some((sys, c)) if sys.is_empty() || sys == system => Ok(c),
        Some((sys, _)) => Err(CloudError::NotSupported(format!(
            "{param}: system {sys:?} is not supported on DetectedIssue (use {system})"
        ))),
        None => Ok(token),
    }
}

async fn search_alarms(state: &ApiState, params: &Params) -> Result<Found, CloudError> {
    let mut q = crate::storage::GroupQuery::default();
    for (k, v) in &params.pairs {
        match k.as_str() {
            "patient" | "subject" => parse_patient(k, v, &mut q.patient)?,
            "identified" => q.first.intersect(parse_date_param("identified", v)?),
            "code" => {
                for t in v.split(',') {
                    let code = token_code("code", t, wardwatch_fhir::ALARM_KIND_SYSTEM)?;
                    if code.is_empty() || code.len() > 64 {
                        return Err(CloudError::InvalidArgument(format!(
                            "code {t:?} is not a code"
                        )));
                    }
                    q.codes.push(code.to_string());
                }
            }
            "status" => {
                for t in v.split(',') {
                    q.current_status.push(match t {
                        "preliminary" => "preliminary",
                        "final" => "final",
                        other => {
                            return Err(CloudError::InvalidArgument(format!(
                                "status {other:?}: an alarm's DetectedIssue is preliminary (active) or final (cleared)"
                            )));
                        }
                    });
                }
            }
            "priority" => {
                for t in v.split(',') {
                    let p = match token_code("priority", t, wardwatch_fhir::ALARM_PRIORITY_EXT)? {
                        "high" => AlarmPriority::High,
                        "medium" => AlarmPriority::Medium,
                        "low" => AlarmPriority::Low,
                        "info" => AlarmPriority::Info,
                        other => {
                            return Err(CloudError::InvalidArgument(format!(
                                "priority {other:?} is not one of high, medium, low, info"
                            )));
                        }
                    };
                    q.current_priorities.push(i64::from(p as i32));
                }
            }
            "_count" | "_summary" => {}
            other => return Err(unsupported("DetectedIssue", other)),
        }
    }
    if params.count_only {
        return count_of(if empty_range(&q.first) {
            0
        } else {
            state
                .store
                .count_groups(crate::storage::GroupKind::Alarm, &q)
                .await?
        });
    }
    let (ids, next) = group_page(state, params, crate::storage::GroupKind::Alarm, q).await?;
    let mut entries = Vec::with_capacity(ids.len());
    for id in ids {
        let history = state
            .store
            .group_versions(crate::storage::GroupKind::Alarm, &id, None)
            .await?;
        if history.is_empty() {
            continue;
        }
        let res = crate::resources::alarm_to_fhir(&state.config, &history)?;
        entries.push((crate::resources::alarm_resource_id(&id), res));
    }
    Ok(Page { entries, next }.into())
}

async fn search_orders(state: &ApiState, params: &Params) -> Result<Found, CloudError> {
    let mut q = crate::storage::GroupQuery::default();
    for (k, v) in &params.pairs {
        match k.as_str() {
            "patient" | "subject" => parse_patient(k, v, &mut q.patient)?,
            "effective-time" => q.first.intersect(parse_date_param("effective-time", v)?),
            "status" => {
                for t in v.split(',') {
                    let t = t
                        .strip_prefix("http://hl7.org/fhir/CodeSystem/medication-admin-status|")
                        .unwrap_or(t);
                    q.current_status.push(match t {
                        "in-progress" => "in-progress",
                        "on-hold" => "on-hold",
                        "completed" => "completed",
                        // Valid statuses this mapping never produces: they match nothing.
                        "not-done" | "entered-in-error" | "stopped" | "unknown" => "none",
                        other => {
                            return Err(CloudError::InvalidArgument(format!(
                                "status {other:?} is not a MedicationAdministration status (in-progress, on-hold, \
                                 completed, not-done, entered-in-error, stopped, unknown)"
                            )));
                        }
                    });
                }
            }
            "_count" | "_summary" => {}
            other => return Err(unsupported("MedicationAdministration", other)),
        }
    }
    if params.count_only {
        return count_of(if empty_range(&q.first) {
            0
        } else {
            state
                .store
                .count_groups(crate::storage::GroupKind::Order, &q)
                .await?
        });
    }
    let (ids, next) = group_page(state, params, crate::storage::GroupKind::Order, q).await?;
    let mut entries = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = state.store.order_summary(&id).await? {
            entries.push((id, crate::resources::order_to_fhir(&state.config, &s)?));
        }
    }
    Ok(Page { entries, next }.into())
}

fn device_kind_value(code: &str) -> Option<i64> {
    Some(i64::from(match code {
        "bedside-monitor" => DeviceKind::BedsideMonitor as i32,
        "wearable" => DeviceKind::Wearable as i32,
        "drip-monitor" => DeviceKind::DripMonitor as i32,
        "infusion-pump" => DeviceKind::InfusionPump as i32,
        _ => return None,
    }))
}

async fn search_devices(state: &ApiState, params: &Params) -> Result<Found, CloudError> {
    use crate::resources::Component;
    use wardwatch_fhir::containment::DeviceTypeMatch;
    let mut q = crate::storage::DeviceQuery::default();
    // VMD/channel criteria: `parent`, or an MDC `type` naming a VMD or channel.
    let mut parent: Option<String> = None;
    let mut components: Vec<Component> = Vec::new();
    let mut mds_criteria = false;
    for (k, v) in &params.pairs {
        match k.as_str() {
            "parent" => {
                let id = v.strip_prefix("Device/").unwrap_or(v);
                if !crate::resources::is_fhir_id(id) || parent.replace(id.to_string()).is_some() {
                    return Err(CloudError::InvalidArgument(format!(
                        "parent {v:?} is not one Device/<id>"
                    )));
                }
            }
            "type" => {
                for t in v.split(',') {
                    let (sys, code) = t.split_once('|').unwrap_or(("", t));
                    if sys == wardwatch_fhir::MDC
                        || (sys.is_empty() && code.bytes().all(|b| b.is_ascii_digit()))
                    {
                        let n: u32 = code.parse().map_err(|_| {
                            CloudError::InvalidArgument(format!("type {t:?} is not an MDC code"))
                        })?;
                        let matches = wardwatch_fhir::containment::device_type_matches(n);
                        if matches.is_empty() {
                            return Err(CloudError::InvalidArgument(format!(
                                "type {t:?} is no MDC device type this server assigns (MDS 69965, 69985; \
                                 VMDs and channels: see docs/fhir-mapping.md)"
                            )));
                        }
                        for m in matches {
                            match m {
                                DeviceTypeMatch::Mds(kind) => {
                                    mds_criteria = true;
                                    q.kinds.push(device_kind_value(kind).ok_or_else(|| {
                                        CloudError::Unavailable(format!("device kind {kind}"))
                                    })?);
                                }
                                DeviceTypeMatch::Vmd(g) => components.push(Component::Vmd(g)),
                                DeviceTypeMatch::Channel(g) => {
                                    components.push(Component::Channel(g));
                                }
                            }
                        }
                        continue;
                    }
                    let code = match (sys, code) {
                        ("urn:wardwatch:device-kind" | "", c) => c,
                        (sys, _) => {
                            return Err(CloudError::NotSupported(format!(
                                "type system {sys:?} is not supported on Device (use urn:wardwatch:device-kind or {})",
                                wardwatch_fhir::MDC
                            )));
                        }
                    };
                    mds_criteria = true;
                    q.kinds.push(device_kind_value(code).ok_or_else(|| {
                        CloudError::InvalidArgument(format!(
                            "type {code:?} is not one of bedside-monitor, wearable, drip-monitor, infusion-pump"
                        ))
                    })?);
                }
            }
            "patient" => parse_patient(k, v, &mut q.patient)?,
            "location" => {
                let id = v.strip_prefix("Location/").unwrap_or(v);
                let (ward, bed) = id.split_once('.').unwrap_or((id, ""));
                if crate::resources::location_id(ward, bed).as_deref() != Some(id) {
                    return Err(CloudError::InvalidArgument(format!(
                        "location {v:?} is not Location/<ward> or Location/<ward>.<bed>"
                    )));
                }
                q.ward = Some(ward.to_string());
                q.bed = (!bed.is_empty()).then(|| bed.to_string());
            }
            "_count" | "_summary" => {}
            other => return Err(unsupported("Device", other)),
        }
    }
    if parent.is_some() || !components.is_empty() {
        // VMDs and channels have no patient, location or device kind of their own (the MDS has them).
        let mds_only = mds_criteria || q.patient.is_some() || q.ward.is_some();
        if mds_only {
            return Ok(empty_found(params));
        }
        return search_device_components(state, params, parent.as_deref(), &components).await;
    }
    if params.count_only {
        // Devices number in the thousands at most: count them by walking the keyset pages.
        let mut total = 0u64;
        q.limit = MAX_COUNT;
        loop {
            let rows = state.store.search_devices(&q).await?;
            total += rows.len() as u64;
            match rows.last() {
                Some(r) if rows.len() == MAX_COUNT as usize => q.after = Some(r.device_id.clone()),
                _ => return Ok(Found::Count(total)),
            }
        }
    }
    if let Some(c) = &params.cursor {
        q.after = Some(DeviceId::new(c).map_err(|_| bad_cursor(c))?.to_string());
    }
    q.limit = params.count + 1;
    let mut rows = state.store.search_devices(&q).await?;
    let more = rows.len() > params.count as usize;
    rows.truncate(params.count as usize);
    let next = if more {
        rows.last().map(|r| r.device_id.clone())
    } else {
        None
    };
    // Each device as its current version (the same the read and `_history` give).
    let ids: Vec<String> = rows.iter().map(|r| r.device_id.clone()).collect();
    let current = state.store.current_device_versions(&ids).await?;
    let mut entries = Vec::with_capacity(current.len());
    for (v, r) in &current {
        entries.push((
            r.device_id.clone(),
            device_to_fhir(r, *v, &state.config.device_id_system)?,
        ));
    }
    Ok(Page { entries, next }.into())
}

/// An empty result (a page, or a count of 0).
fn empty_found(params: &Params) -> Found {
    if params.count_only {
        Found::Count(0)
    } else {
        Page {
            entries: Vec::new(),
            next: None,
        }
        .into()
    }
}

/// `Device?parent=` and `Device?type=<MDC VMD or channel code>`: the VMD and channel Devices of the containment
/// trees, in (device, table order) order, paged by the cursor `<device>~<rank>`.
async fn search_device_components(
    state: &ApiState,
    params: &Params,
    parent: Option<&str>,
    wanted: &[crate::resources::Component],
) -> Result<Found, CloudError> {
    use crate::resources::Component;
    let after: Option<(String, usize)> = match &params.cursor {
        Some(c) => {
            let (d, r) = c.rsplit_once('~').ok_or_else(|| bad_cursor(c))?;
            let r: usize = r.parse().map_err(|_| bad_cursor(c))?;
            Some((DeviceId::new(d).map_err(|_| bad_cursor(c))?.to_string(), r))
        }
        None => None,
    };
    let limit = if params.count_only {
        usize::MAX
    } else {
        params.count as usize
    };
    // The devices to look at, in order, and which of their components qualify.
    let (devices, level_of_parent): (Vec<String>, Option<Option<Component>>) = match parent {
        Some(p) => {
            let Some((part, component)) = crate::resources::parse_device_id(p) else {
                return Ok(empty_found(params));
            };
            let found =
                crate::resources::resolve_device_part(&state.store, part, &p[part.len()..]).await?;
            match found {
                Some((d, _)) => (vec![d], Some(component)),
                None => return Ok(empty_found(params)),
            }
        }
        None => {
            let mut metrics: Vec<i64> = wanted
                .iter()
                .flat_map(|c| c.group().metrics.iter().map(|m| i64::from(*m)))
                .collect();
            metrics.sort_unstable();
            metrics.dedup();
            let mut devices = Vec::new();
            let mut from = after.as_ref().map(|(d, _)| {
                // Start at the cursor's device itself (it may have more components after the rank).
                let mut before = d.clone();
                before.pop();
                before
            });
            loop {
                let page = state
                    .store
                    .devices_with_metrics(&metrics, from.as_deref(), MAX_COUNT)
                    .await?;
                let full = page.len() == MAX_COUNT as usize;
                from = page.last().cloned();
                devices.extend(
                    page.into_iter()
                        .filter(|d| after.as_ref().is_none_or(|(ad, _)| d >= ad)),
                );
                if !full || devices.len() > limit.saturating_add(1) {
                    break;
                }
            }
            (devices, None)
        }
    };
    let mut out: Vec<(String, usize, serde_json::Value)> = Vec::new();
    let mut more = false;
    'devices: for d in &devices {
        let channels = state.store.device_channels(d).await?;
        let row = state.store.device(d).await?;
        for (component, cs) in crate::resources::components_of(&channels) {
            let qualifies = match level_of_parent {
                // Children of an MDS are its VMDs; of a VMD, its channel; a channel has none.
                Some(None) => matches!(component, Component::Vmd(_)),
                Some(Some(Component::Vmd(g))) => component == Component::Channel(g),
                Some(Some(Component::Channel(_))) => false,
                None => true,
            } && (wanted.is_empty() || wanted.contains(&component));
            if !qualifies {
                continue;
            }
            if let Some((ad, ar)) = &after
                && d == ad
                && component.rank() <= *ar
            {
                continue;
            }
            if out.len() == limit {
                more = true;
                break 'devices;
            }
            let res = if params.count_only {
                serde_json::Value::Null
            } else {
                crate::resources::component_to_fhir(d, component, &cs, row.as_ref())?
            };
            out.push((d.clone(), component.rank(), res));
        }
    }
    if params.count_only {
        return Ok(Found::Count(out.len() as u64));
    }
    let next = if more {
        out.last().map(|(d, r, _)| format!("{d}~{r}"))
    } else {
        None
    };
    let entries = out
        .into_iter()
        .map(|(_, _, res)| {
            let id = res
                .get("id")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string();
            (id, res)
        })
        .collect();
    Ok(Page { entries, next }.into())
}

async fn search_metrics(state: &ApiState, params: &Params) -> Result<Found, CloudError> {
    let mut device: Option<String> = None;
    let mut metric: Option<i64> = None;
    for (k, v) in &params.pairs {
        match k.as_str() {
            "source" => {
                let id = v.strip_prefix("Device/").unwrap_or(v);
                let id = DeviceId::new(id)
                    .map_err(|e| CloudError::InvalidArgument(format!("source: {e}")))?;
                device = Some(id.to_string());
            }
            "type" => {
                let code = match v.split_once('|') {
                    Some((wardwatch_fhir::MDC | "", c)) => c,
                    Some((sys, _)) => {
                        return Err(CloudError::NotSupported(format!(
                            "type system {sys:?} is not supported on DeviceMetric (use {})",
                            wardwatch_fhir::MDC
                        )));
                    }
                    None => v.as_str(),
                };
                metric = Some(code.parse().map_err(|_| {
                    CloudError::InvalidArgument(format!("type {v:?} is not an MDC code"))
                })?);
            }
            "_count" | "_summary" => {}
            other => return Err(unsupported("DeviceMetric", other)),
        }
    }
    if params.count_only {
        // Channels are a few per device: count them by walking the keyset pages.
        let mut total = 0u64;
        let mut after: Option<(String, i64)> = None;
        loop {
            let rows = state
                .store
                .search_channels(
                    device.as_deref(),
                    metric,
                    after.as_ref().map(|(d, m)| (d.as_str(), *m)),
                    MAX_COUNT,
                )
                .await?;
            total += rows.len() as u64;
            match rows.last() {
                Some(r) if rows.len() == MAX_COUNT as usize => {
                    after = Some((r.device_id.clone(), r.metric_mdc));
                }
                _ => return Ok(Found::Count(total)),
            }
        }
    }
    let after = match &params.cursor {
        Some(c) => {
            let (d, m) = c.rsplit_once('~').ok_or_else(|| bad_cursor(c))?;
            let m: i64 = m.parse().map_err(|_| bad_cursor(c))?;
            Some((DeviceId::new(d).map_err(|_| bad_cursor(c))?.to_string(), m))
        }
        None => None,
    };
    let mut rows = state
        .store
        .search_channels(
            device.as_deref(),
            metric,
            after.as_ref().map(|(d, m)| (d.as_str(), *m)),
            params.count + 1,
        )
        .await?;
    let more = rows.len() > params.count as usize;
    rows.truncate(params.count as usize);
    let next = if more {
        rows.last()
            .map(|r| format!("{}~{}", r.device_id, r.metric_mdc))
    } else {
        None
    };
    let mut entries = Vec::with_capacity(rows.len());
    for r in &rows {
        let state_value = state.store.device(&r.device_id).await?.map(|d| d.state);
        entries.push((
            format!("{}.{}", r.device_id, r.metric_mdc),
            crate::resources::channel_to_fhir(r, state_value)?,
        ));
    }
    Ok(Page { entries, next }.into())
}

async fn search_locations(state: &ApiState, params: &Params) -> Result<Found, CloudError> {
    let mut part_of: Option<String> = None;
    for (k, v) in &params.pairs {
        match k.as_str() {
            "partof" => {
                let id = v.strip_prefix("Location/").unwrap_or(v);
                if crate::resources::location_id(id, "").as_deref() != Some(id) {
                    return Err(CloudError::InvalidArgument(format!(
                        "partof {v:?} is not Location/<ward>"
                    )));
                }
                part_of = Some(id.to_string());
            }
            "_count" | "_summary" => {}
            other => return Err(unsupported("Location", other)),
        }
    }
    let mut all: Vec<(String, String, String)> = state
        .store
        .locations()
        .await?
        .into_iter()
        .filter(|(w, b)| match &part_of {
            Some(p) => w == p && !b.is_empty(),
            None => true,
        })
        .filter_map(|(w, b)| crate::resources::location_id(&w, &b).map(|id| (id, w, b)))
        .collect();
    all.sort();
    if params.count_only {
        return Ok(Found::Count(all.len() as u64));
    }
    if let Some(c) = &params.cursor {
        all.retain(|(id, _, _)| id.as_str() > c.as_str());
    }
    let more = all.len() > params.count as usize;
    all.truncate(params.count as usize);
    let next = if more {
        all.last().map(|(id, _, _)| id.clone())
    } else {
        None
    };
    let mut entries = Vec::with_capacity(all.len());
    for (id, w, b) in &all {
        entries.push((id.clone(), crate::resources::location_to_fhir(w, b)?));
    }
    Ok(Page { entries, next }.into())
}

/// Which family of Observations a search asks for, from its `category` and `code` values: vital signs
/// (`None`), NEWS2 (`Some("news2")`) or infusion measurements (`Some("infusion")`). A search naming two
/// families is refused.
fn observation_family(raw: Option<&str>) -> Result<Option<&'static str>, CloudError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("malformed query string: {e}")))?;
    let mut families = BTreeSet::new();
    for (k, v) in &pairs {
        for t in v.split(',') {
            let (sys, code) = t.rsplit_once('|').map_or(("", t), |(s, c)| (s, c));
            let fam = match k.as_str() {
                "category" if sys.is_empty() || sys == wardwatch_fhir::OBSERVATION_CATEGORY => {
                    match code {
                        "survey" => Some("news2"),
                        "therapy" => Some("infusion"),
                        _ => Some("vital"),
                    }
                }
                "code" if sys == wardwatch_fhir::SNOMED && code == wardwatch_fhir::NEWS2_SNOMED => {
                    Some("news2")
                }
                "code"
                    if (sys.is_empty() || sys == wardwatch_fhir::MDC)
                        && infusion_suffix(code).is_some() =>
                {
                    Some("infusion")
                }
                "code" => Some("vital"),
                _ => None,
            };
            if let Some(f) = fam {
                families.insert(f);
            }
        }
    }
    match (families.len(), families.iter().next().copied()) {
        (0, _) | (1, Some("vital")) => Ok(None),
        (1, Some(f)) => Ok(Some(f)),
        _ => Err(CloudError::NotSupported(
            "one Observation search covers one family: vital signs, NEWS2 (category=survey or code=http://snomed.info/sct|1104051000000101) or infusion measurements (category=therapy or MDC 157784/157993/157872)".into(),
        )),
    }
}

/// The Observation id suffix of an infusion MDC code.
fn infusion_suffix(code: &str) -> Option<&'static str> {
    match code.parse::<u32>().ok()? {
        crate::storage::INFUSION_RATE_MDC => Some("rate"),
        crate::storage::INFUSION_INFUSED_MDC => Some("infused"),
        crate::storage::INFUSION_REMAINING_MDC => Some("remaining"),
        _ => None,
    }
}

/// NEWS2 or infusion Observations (from the non-vital events).
async fn search_event_observations(
    state: &ApiState,
    family: &'static str,
    raw: Option<&str>,
    scopes: &IncludeScopes,
) -> Result<(serde_json::Value, String), CloudError> {
    let params = split_params(raw)?;
    let mut q = crate::storage::EventQuery {
        kind: if family == "news2" {
            "risk"
        } else {
            "infusion"
        },
        codes: if family == "news2" {
            vec!["news2".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let mut suffixes: Vec<&'static str> = Vec::new();
    let mut include = IncludeSpec::default();
    for (k, v) in &params.pairs {
        match k.as_str() {
            "patient" | "subject" => parse_patient(k, v, &mut q.patient)?,
            "date" => q.time.intersect(parse_date_param("date", v)?),
            "category" => {}
            "code" => {
                for t in v.split(',') {
                    let code = t.rsplit_once('|').map_or(t, |(_, c)| c);
                    if let Some(s) = infusion_suffix(code) {
                        suffixes.push(s);
                    }
                }
            }
            "_count" => {}
            "_summary" if v == "count" => {}
            "_include" | "_include:iterate" => include.parse(k, v)?,
            "encounter:identifier" => {
                return Err(CloudError::NotSupported(format!(
                    "encounter:identifier is served on vital-sign Observations only: {} Observations are not \
                     indexed by encounter (search them by patient and date)",
                    if family == "news2" {
                        "NEWS2"
                    } else {
                        "infusion"
                    }
                )));
            }
            other => {
                if let Some(e) = explicitly_unsupported(other) {
                    return Err(e);
                }
                return Err(CloudError::NotSupported(format!(
                    "search parameter {other:?} is not supported on {} Observations (supported: patient, subject, code, category, date, _summary=count, _include=Observation:device, _include:iterate=DeviceMetric:source, _count)",
                    if family == "news2" {
                        "NEWS2"
                    } else {
                        "infusion"
                    }
                )));
            }
        }
    }
    include.check()?;
    if params
        .pairs
        .iter()
        .any(|(k, v)| k == "_summary" && v == "count")
    {
        let total = if empty_range(&q.time) {
            0
        } else {
            state.store.count_events(&q).await?
        };
        let per = if family == "infusion" {
            if suffixes.is_empty() {
                3
            } else {
                suffixes.len() as i64
            }
        } else {
            1
        };
        let bundle = wardwatch_fhir::searchset_bundle(SearchPage {
            self_url: format!(
                "{}/Observation?{}",
                state.base_url,
                serde_urlencoded::to_string(&params.pairs).unwrap_or_default()
            ),
            next_url: None,
            total: Some(u64::try_from(total.saturating_mul(per)).unwrap_or(0)),
            entries: Vec::new(),
            timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
        })
        .map_err(|e| CloudError::Unavailable(e.to_string()))?;
        return Ok((bundle, q.patient.unwrap_or_default()));
    }
    let (rows, next) = event_page(state, &params, q).await?;
    let mut entries = Vec::new();
    for r in &rows {
        if family == "news2" {
            entries.push((
                r.lineage_id(),
                crate::resources::news2_to_fhir(&state.store, &state.config, r).await?,
            ));
        } else {
            for s in ["rate", "infused", "remaining"] {
                if suffixes.is_empty() || suffixes.contains(&s) {
                    entries.push((
                        format!("{}.{s}", r.lineage_id()),
                        crate::resources::infusion_observation_to_fhir(&state.config, r, s)?,
                    ));
                }
            }
        }
    }
    let (included, warning) = {
        let resources: Vec<&serde_json::Value> = entries.iter().map(|(_, r)| r).collect();
        let metrics = referenced_ids(&resources, "device", "DeviceMetric/");
        included_resources(state, metrics, include, scopes).await?
    };
    page_bundle(
        state,
        "Observation",
        &params,
        Page { entries, next },
        included,
        warning,
    )
}

/// `GET [base]/metadata`: the CapabilityStatement (public, like SMART discovery). It lists exactly the
/// interactions and search parameters this server serves.
async fn metadata(State(state): State<Arc<ApiState>>) -> Result<Response, CloudError> {
    use wardwatch_fhir::{CapabilityResource, CapabilitySearchParam};
    let token = state.auth.token_endpoint();
    let mut resources = Vec::new();
    for t in crate::resources::READABLE_TYPES {
        let params: Vec<CapabilitySearchParam> = SEARCH_PARAMS
            .iter()
            .find(|(n, _)| n == t)
            .map(|(_, p)| {
                p.iter()
                    .map(|(name, kind, doc)| CapabilitySearchParam {
                        name,
                        kind,
                        documentation: doc,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Every served type has vread and instance history (see resources::versioning for what a version is).
        let mut interactions = vec!["read", "vread", "history-instance"];
        if !params.is_empty() {
            interactions.push("search-type");
        }
        let (profiles, doc): (Vec<&str>, &str) = match *t {
            "Observation" => (
                vec![wardwatch_fhir::VITAL_SIGNS_PROFILE],
                "Vital signs (vital-signs profile), NEWS2 scores (survey) and infusion measurements (therapy); ids <edge>.<sequence>[.rate|.infused|.remaining]; one version each. device references the measuring DeviceMetric. _include=Observation:device adds the referenced DeviceMetrics and _include:iterate=DeviceMetric:source their MDS Devices (each omitted, with a warning OperationOutcome, when the client may not read that type); _revinclude is refused. encounter (the visit, when the edge knew it: HL7 PV1-19, MQTT encounter) is a logical reference by visit-number identifier, searchable on vital signs with encounter:identifier; this server serves no Encounter resources.",
            ),
            "DetectedIssue" => (
                Vec::new(),
                "Alarms, one per alarm id; one version per stored state change",
            ),
            "MedicationAdministration" => (
                Vec::new(),
                "The infusion of one medication order; one version per stored status report",
            ),
            "Device" => (
                Vec::new(),
                "Point-of-Care Device containment tree: Device/<device> is the MDS (MDC type 69965 or 69985 where the kind has one; one version per DeviceInfo report that changed it, history kept since migration 0009); Device/<device>.vmd-<group> and Device/<device>.chan-<group> are its VMDs and channels (Device.parent; derived from the metrics it reports: only the current version is known, a content digest). A search without parent or an MDC VMD/channel type returns MDS Devices only.",
            ),
            "DeviceMetric" => (
                Vec::new(),
                "One per metric a device reports, id <device>.<MDC code>: source the MDS Device, parent its channel Device. Derived from the channel's latest sighting and the device's state: only the current version is known (its versionId is a content digest)",
            ),
            "RiskAssessment" => (
                Vec::new(),
                "Edge model predictions (simulated-data models, not clinically validated)",
            ),
            "Provenance" => (
                Vec::new(),
                "The model (name, version, sha256) behind each RiskAssessment",
            ),
            _ => (Vec::new(), ""),
        };
        resources.push(CapabilityResource {
            resource_type: t,
            interactions,
            search_params: params,
            supported_profiles: profiles,
            operations: if *t == "Observation" {
                vec![(
                    "lastn",
                    "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
                )]
            } else {
                Vec::new()
            },
            documentation: doc,
            versioned: true,
            search_include: if *t == "Observation" {
                vec!["Observation:device", "DeviceMetric:source"]
            } else {
                Vec::new()
            },
        });
    }
    // Served by other modules: the audit trail (auth/audit_api.rs) and subscriptions (subscriptions/api.rs).
    let p = |name, kind, documentation| CapabilitySearchParam {
        name,
        kind,
        documentation,
    };
    resources.push(CapabilityResource {
        resource_type: "AuditEvent",
        interactions: vec!["read", "search-type"],
        search_params: vec![
            p("date", "date", "When, eq/ge/gt/le/lt"),
            p("agent", "reference", "Client id of the API client"),
            p(
                "patient",
                "reference",
                "MRN of a patient whose data was returned",
            ),
        ],
        supported_profiles: Vec::new(),
        operations: Vec::new(),
        documentation: "The audit trail; needs system/AuditEvent.rs",
        versioned: false,
        search_include: Vec::new(),
    });
    resources.push(CapabilityResource {
        resource_type: "Subscription",
        interactions: vec!["create", "read", "delete"],
        search_params: Vec::new(),
        supported_profiles: Vec::new(),
        operations: vec![
            (
                "status",
                "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
            ),
            (
                "events",
                "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
            ),
        ],
        documentation: "Topic-based subscriptions (R4 Subscriptions Backport), rest-hook; see docs/subscriptions.md",
        versioned: false,
        search_include: Vec::new(),
    });
    resources.push(CapabilityResource {
        resource_type: "SubscriptionTopic",
        interactions: vec!["read", "search-type"],
        search_params: Vec::new(),
        supported_profiles: Vec::new(),
        operations: Vec::new(),
        documentation: "The topics subscriptions can name",
        versioned: false,
        search_include: Vec::new(),
    });
    let cs = wardwatch_fhir::capability_statement(&wardwatch_fhir::CapabilityRecord {
        base_url: &state.base_url,
        software_version: env!("CARGO_PKG_VERSION"),
        date_unix_ms: wardwatch_proto::now_unix_ms(),
        token_endpoint: token,
        resources,
    })
    .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    Ok(fhir_json(StatusCode::OK, &cs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISITS: &str = "urn:wardwatch:visit-number";

    /// An Observation search parsed with the default visit-number system.
    fn parse_obs(raw: Option<&str>) -> Result<ObservationSearch, CloudError> {
        parse_observation_search(raw, VISITS)
    }

    #[test]
    fn a_patient_or_stay_search_defaults_to_latest_measurement_first() {
        let sort = |q: &str| parse_obs(Some(q)).map(|s| s.sort).unwrap();
        // One patient's or one stay's vital signs, with or without a code: latest measurement first.
        assert_eq!(sort("patient=MRN1"), VitalSort::DateDesc);
        assert_eq!(
            sort("subject=Patient/MRN1&code=8867-4"),
            VitalSort::DateDesc
        );
        assert_eq!(sort("encounter:identifier=V1"), VitalSort::DateDesc);
        // An explicit `_sort` wins, wherever it stands in the query.
        assert_eq!(sort("_sort=date&patient=MRN1"), VitalSort::DateAsc);
        assert_eq!(sort("patient=MRN1&_sort=-date"), VitalSort::DateDesc);
        // Searches across patients keep the newest-stored order (the `id` index serves it).
        assert_eq!(sort("code=8867-4"), VitalSort::Newest);
        assert_eq!(sort("_lastUpdated=ge2026-01-01"), VitalSort::Newest);
        assert_eq!(sort("device=Device/dev-1"), VitalSort::Newest);
        // The default is not echoed: the next link re-derives it, and its date cursor belongs to it.
        assert!(
            !parse_obs(Some("patient=MRN1"))
                .unwrap()
                .echo
                .iter()
                .any(|(k, _)| k == "_sort")
        );
    }

    #[test]
    fn encounter_identifier_search_parameter() {
        let enc = |q: &str| parse_obs(Some(q)).map(|s| (s.encounter, s.no_match));
        // Any system, the configured one (URL-encoded or not): that visit number.
        for q in [
            "encounter:identifier=V2026-17",
            "encounter:identifier=urn:wardwatch:visit-number|V2026-17",
            "encounter:identifier=urn%3Awardwatch%3Avisit-number%7CV2026-17",
        ] {
            assert_eq!(enc(q).unwrap(), (Some("V2026-17".into()), false), "{q}");
        }
        // `|value`: explicitly no system, which no encounter here has: nothing matches.
        assert_eq!(enc("encounter:identifier=|V2026-17").unwrap(), (None, true));
        // It is echoed into the next link and combines with the other parameters.
        let s = parse_obs(Some(
            "patient=MRN1&encounter:identifier=V1&date=ge2026-01-01",
        ))
        .unwrap();
        assert_eq!(s.encounter.as_deref(), Some("V1"));
        assert_eq!(s.patient.as_deref(), Some("MRN1"));
        assert!(
            s.echo
                .contains(&("encounter:identifier".into(), "V1".into()))
        );
        assert_eq!(parse_obs(None).unwrap().encounter, None);
        // Malformed values: 400 invalid, saying what a visit number is.
        for bad in [
            "encounter:identifier=",
            "encounter:identifier=urn:wardwatch:visit-number|",
            "encounter:identifier=V%201",
            "encounter:identifier=a|b|c",
            "encounter:identifier=V1&encounter:identifier=V2",
        ] {
            match parse_obs(Some(bad)) {
                Err(CloudError::InvalidArgument(m)) => {
                    assert!(m.contains("encounter"), "{bad}: {m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let long = format!("encounter:identifier={}", "9".repeat(65));
        assert!(matches!(
            parse_obs(Some(&long)),
            Err(CloudError::InvalidArgument(_))
        ));
        // Another system, a list, a reference, other modifiers: 400 not-supported with the way to do it.
        for (bad, needle) in [
            (
                "encounter:identifier=http://other.example|V1",
                "urn:wardwatch:visit-number",
            ),
            ("encounter:identifier=V1,V2", "one visit number"),
            ("encounter=Encounter/1", "no Encounter resources"),
            ("encounter=V1", "encounter:identifier"),
            ("encounter:Encounter=1", "encounter:identifier"),
            ("encounter:missing=true", ":identifier modifier"),
        ] {
            match parse_obs(Some(bad)) {
                Err(CloudError::NotSupported(m)) => assert!(m.contains(needle), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // The configured system is the one accepted.
        assert_eq!(
            parse_observation_search(
                Some("encounter:identifier=urn:oid:1.2.3|V1"),
                "urn:oid:1.2.3"
            )
            .unwrap()
            .encounter
            .as_deref(),
            Some("V1")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_pages_are_mapped_off_the_runtime_in_order_and_errors_surface() {
        // Small pages inline, large ones split across threads: either way the order of the rows is kept.
        for n in [0usize, 3, INLINE_RESOURCES, INLINE_RESOURCES + 1, 700] {
            let rows: Vec<usize> = (0..n).collect();
            let (back, mapped) = map_off_runtime(rows, |r| Ok(r * 2)).await.expect("mapped");
            assert_eq!(back, (0..n).collect::<Vec<_>>());
            assert_eq!(
                mapped,
                (0..n).map(|r| r * 2).collect::<Vec<_>>(),
                "{n} rows"
            );
        }
        // One unmappable row in any chunk fails the page with that row's error, not a panic.
        let err = map_off_runtime((0..700usize).collect(), |r| {
            if *r == 650 {
                Err(CloudError::Unavailable("row 650 cannot be mapped".into()))
            } else {
                Ok(*r)
            }
        })
        .await
        .expect_err("a bad row");
        assert!(err.to_string().contains("row 650"), "{err}");
        let body = render_off_runtime(500, || Ok("{}".to_string()))
            .await
            .expect("rendered");
        assert_eq!(body, "{}");
    }

    #[test]
    fn fhir_dates_cover_their_precision_and_impossible_dates_are_refused() {
        let day = 86_400_000;
        let d = fhir_date_range("2024-02-28").expect("day");
        assert_eq!(d, (1_709_078_400_000, 1_709_078_400_000 + day));
        assert_eq!(
            fhir_date_range("2024-02").map(|(a, b)| b - a),
            Some(29 * day),
            "leap February"
        );
        assert_eq!(fhir_date_range("2023").map(|(a, b)| b - a), Some(365 * day));
        assert_eq!(
            fhir_date_range("2024-12").map(|(a, b)| b - a),
            Some(31 * day),
            "December rolls the year"
        );
        let s = fhir_date_range("2024-02-28T10:15:30Z").expect("second");
        assert_eq!(s, (1_709_115_330_000, 1_709_115_331_000));
        assert_eq!(
            fhir_date_range("2024-02-28T12:15:30+02:00"),
            Some(s),
            "offsets are honoured"
        );
        assert_eq!(
            fhir_date_range("2024-02-28T10:15Z"),
            Some((1_709_115_300_000, 1_709_115_360_000))
        );
        assert_eq!(
            fhir_date_range("2024-02-28T10:15:30.250Z"),
            Some((1_709_115_330_250, 1_709_115_330_251))
        );
        for bad in [
            "2024-13-45",
            "2024-02-30",
            "2024-00",
            "24-01-01",
            "2024-1-1",
            "2024-02-28T10:15:30",
            "abcd",
            "2024-02-28T25:00:00Z",
            "",
            "2024-02-28T10:15:30Zjunk",
            "+2024",
        ] {
            assert!(fhir_date_range(bad).is_none(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn date_prefixes_bound_a_point_in_time() {
        let (start, end) = fhir_date_range("2024-02-28").expect("day");
        let r = |v: &str| parse_date_param("date", v).expect(v);
        assert_eq!(
            r("2024-02-28"),
            TimeRange {
                from_ms: Some(start),
                before_ms: Some(end)
            }
        );
        assert_eq!(r("eq2024-02-28"), r("2024-02-28"));
        assert_eq!(
            r("ge2024-02-28"),
            TimeRange {
                from_ms: Some(start),
                before_ms: None
            }
        );
        assert_eq!(
            r("gt2024-02-28"),
            TimeRange {
                from_ms: Some(end),
                before_ms: None
            }
        );
        assert_eq!(
            r("le2024-02-28"),
            TimeRange {
                from_ms: None,
                before_ms: Some(end)
            }
        );
        assert_eq!(
            r("lt2024-02-28"),
            TimeRange {
                from_ms: None,
                before_ms: Some(start)
            }
        );
        assert!(matches!(
            parse_date_param("date", "ne2024"),
            Err(CloudError::NotSupported(_))
        ));
        assert!(matches!(
            parse_date_param("date", "xx2024"),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_date_param("date", "ge2024-13-45"),
            Err(CloudError::InvalidArgument(_))
        ));
        let mut both = r("ge2024-02-28");
        both.intersect(r("lt2024-03-01"));
        assert_eq!(both.from_ms, Some(start));
        assert_eq!(
            both.before_ms,
            fhir_date_range("2024-03-01").map(|(a, _)| a)
        );
        assert_eq!(Cursor::parse("17_4"), Some(Cursor::Date(17, 4)));
        assert_eq!(
            Cursor::parse(&Cursor::Date(-5, 9).encode()),
            Some(Cursor::Date(-5, 9))
        );
        assert_eq!(Cursor::parse("12"), Some(Cursor::Id(12)));
        for bad in ["0", "x", "1_0", "_3", "1_", "-4"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn observation_searches_pick_one_family() {
        assert_eq!(
            observation_family(Some("patient=X&code=8867-4")).unwrap(),
            None
        );
        assert_eq!(observation_family(None).unwrap(), None);
        assert_eq!(
            observation_family(Some("code=http://snomed.info/sct|1104051000000101")).unwrap(),
            Some("news2")
        );
        assert_eq!(
            observation_family(Some("category=survey")).unwrap(),
            Some("news2")
        );
        assert_eq!(
            observation_family(Some("category=therapy&code=157784")).unwrap(),
            Some("infusion")
        );
        assert!(matches!(
            observation_family(Some("category=survey&code=8867-4")),
            Err(CloudError::NotSupported(_))
        ));
        assert!(matches!(
            split_params(Some("_count=0")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(event_cursor("5~7~edge-7a").is_ok());
        for bad in ["5~7", "x~7~e", "5~7~bad edge", ""] {
            assert!(event_cursor(bad).is_err(), "{bad}");
        }
        assert!(group_cursor("5~edge-7a-alarm-1").is_ok());
        assert!(group_cursor("5~bad id").is_err());
        assert!(
            unsupported("Device", "foo")
                .to_string()
                .contains("location")
        );
    }

    #[test]
    fn observation_device_names_a_device_or_a_metric() {
        let t = |v: &str| DeviceTarget::parse(v).unwrap();
        assert_eq!(
            t("Device/mon-7A-1"),
            DeviceTarget::Device("mon-7A-1".into())
        );
        assert_eq!(t("mon-7A-1"), DeviceTarget::Device("mon-7A-1".into()));
        assert_eq!(
            t("mon-7A-1.vmd-spo2"),
            DeviceTarget::Device("mon-7A-1.vmd-spo2".into())
        );
        assert_eq!(
            t("Device/mon-7A-1.chan-nibp"),
            DeviceTarget::Device("mon-7A-1.chan-nibp".into())
        );
        assert_eq!(
            t("DeviceMetric/mon-7A-1.150456"),
            DeviceTarget::Metric("mon-7A-1.150456".into())
        );
        assert_eq!(
            t("mon-7A-1.150456"),
            DeviceTarget::Metric("mon-7A-1.150456".into())
        );
        for bad in ["Device/a b", "", "Patient/x", &"x".repeat(65)] {
            assert!(
                matches!(
                    DeviceTarget::parse(bad),
                    Err(CloudError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn include_history_and_explicit_refusals_are_parsed() {
        let s = parse_obs(Some("patient=A&_include=Observation:device")).unwrap();
        assert_eq!(
            s.include,
            IncludeSpec {
                metrics: true,
                sources: false
            }
        );
        assert!(
            s.echo
                .iter()
                .any(|(k, v)| k == "_include" && v == "Observation:device"),
            "next links keep the _include"
        );
        let both = parse_obs(Some(
            "_include=Observation:device:DeviceMetric&_include:iterate=DeviceMetric:source",
        ))
        .unwrap();
        assert!(both.include.metrics && both.include.sources);
        assert!(
            both.echo
                .iter()
                .any(|(k, v)| k == "_include:iterate" && v == "DeviceMetric:source")
        );
        assert_eq!(parse_obs(None).unwrap().include, IncludeSpec::default());
        assert!(matches!(
            parse_obs(Some("_include:iterate=DeviceMetric:source")),
            Err(CloudError::InvalidArgument(_))
        ));
        for bad in [
            "_include=DeviceMetric:source",
            "_include=Observation:device:Device",
            "_include=Observation:subject",
            "_include=*",
            "_revinclude=Provenance:target",
            "encounter=Encounter/1",
        ] {
            assert!(
                matches!(parse_obs(Some(bad)), Err(CloudError::NotSupported(_))),
                "{bad}"
            );
        }
        let why = |e: CloudError| e.to_string();
        assert!(why(unsupported("Device", "_revinclude")).contains("_revinclude is not supported"));
        assert!(why(unsupported("Observation", "encounter")).contains("encounter:identifier"));
        assert!(why(unsupported("Device", "foo")).contains("_count"));

        assert_eq!(parse_history_params(None).unwrap(), (DEFAULT_COUNT, None));
        assert_eq!(
            parse_history_params(Some("_count=2&_cursor=7")).unwrap(),
            (2, Some(7))
        );
        for bad in ["_cursor=0", "_cursor=x", "_count=0"] {
            assert!(
                matches!(
                    parse_history_params(Some(bad)),
                    Err(CloudError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        for bad in ["_since=2024", "_at=2024", "_summary=count"] {
            assert!(
                matches!(
                    parse_history_params(Some(bad)),
                    Err(CloudError::NotSupported(_))
                ),
                "{bad}"
            );
        }
        assert!(split_params(Some("_summary=count")).unwrap().count_only);
        assert!(matches!(
            split_params(Some("_summary=true")),
            Err(CloudError::NotSupported(_))
        ));
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
        let s = parse_obs(Some(
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
            parse_obs(Some("_count=-1")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_obs(Some("_count=0")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_obs(Some("_count=1001")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_obs(Some("foo=bar")),
            Err(CloudError::NotSupported(_))
        ));
        assert!(matches!(
            parse_obs(Some("patient=a%20b")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_obs(Some("code=http://snomed.info/sct|123")),
            Err(CloudError::NotSupported(_))
        ));
        assert!(matches!(
            parse_obs(Some("_cursor=abc")),
            Err(CloudError::InvalidArgument(_))
        ));
        assert_eq!(parse_obs(None).unwrap().count, DEFAULT_COUNT);
    }
}
