//! The nurse station, served by the edge itself so it keeps working when the cloud is unreachable: an HTTP API
//! (sign-in, ward snapshot, acknowledge, silence, SpO2 scale) and a live page fed by Server-Sent Events.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /` | anyone | the page (a sign-in form until signed in; no patient data in it) |
//! | `GET /api/health` | anyone | liveness for IT: sync link state, outbox depth, model status; no patient data |
//! | `POST /api/sign-in` | anyone | `{"user": "...", "password": "..."}` → session cookie + CSRF token |
//! | `GET /api/session` | signed in | who is signed in, role, CSRF token (also counts as activity) |
//! | `POST /api/sign-out` | signed in + CSRF | ends the session |
//! | `GET /api/ward` | signed in | the ward snapshot (JSON) |
//! | `GET /api/stream` | signed in | the snapshot every second as Server-Sent Events (`event: ward`); ends with `event: signed-out` when the session ends |
//! | `POST /api/alarms/{id}/acknowledge` | nurse + CSRF | body `{}` or empty |
//! | `POST /api/alarms/{id}/silence` | nurse + CSRF | `{"seconds": 60}` |
//! | `POST /api/patients/{mrn}/spo2-scale` | nurse + CSRF | `{"scale": 2, "reason": "..."}`: recorded as a `Spo2ScaleChange` event that syncs |
//!
//! Sessions are server-side ([`auth::Sessions`]); the browser holds an opaque token in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when served over TLS). Every state-changing request must come from the
//! station's own origin (`Origin`, `Sec-Fetch-Site`) and carry the session's anti-CSRF token in `X-CSRF-Token`.
//! Every action records the signed-in user; a `user` field in a request body is refused.

pub mod auth;
pub mod config;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use wardwatch_proto::v1::Spo2ScaleChange;
use wardwatch_proto::v1::edge_event::Payload;

pub use auth::Role;
pub use config::{StationConfig, StationTlsConfig, StationUser};
pub use tls::PeerAddr;

use crate::clinical::alarms::AlarmActionError;
use crate::clinical::task::{SharedEngine, emit};
use crate::node::{EdgeNode, Incoming};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "wardwatch_session";
/// The header carrying the anti-CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Most password verifications running at once (argon2 takes ~19 MiB and tens of ms each).
const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// Verified when the user id is unknown, so that an unknown id costs the same time as a wrong password (the
/// answer does not reveal which user ids exist). Same parameters as `auth::hash_password`.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$3EjZ1G6QzFoXlN7bHbZ3fHq3bCzYx6j3o3yq0G1p0ZQ";

/// Counters of the station's sign-in and refusals (read by tests; each refusal is also logged).
#[derive(Debug, Default)]
pub struct StationStats {
    /// Successful sign-ins.
    pub sign_ins: AtomicU64,
    /// Sign-ins refused for a wrong user id or password.
    pub sign_in_failures: AtomicU64,
    /// User ids or addresses locked out after repeated failures.
    pub lockouts: AtomicU64,
    /// Sign-ins refused because the user id or address was locked out.
    pub locked_refusals: AtomicU64,
    /// Requests refused for lack of a session (no cookie, unknown or signed-out session).
    pub unauthenticated: AtomicU64,
    /// Requests refused because their session had expired (idle or lifetime).
    pub expired: AtomicU64,
    /// Actions refused because the user's role may not act.
    pub forbidden: AtomicU64,
    /// State-changing requests refused by the CSRF checks (origin or token).
    pub csrf_refused: AtomicU64,
    /// Requests refused as malformed (bad JSON, a `user` field, out-of-range values).
    pub bad_requests: AtomicU64,
    /// Sign-outs.
    pub sign_outs: AtomicU64,
    /// Actions done (acknowledge, silence, SpO2 scale).
    pub actions: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why the station could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    /// The configuration is invalid.
    #[error("invalid nurse station config: {0}")]
    Config(String),
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::StationTlsError),
}

/// Everything the station keeps besides the node: users, sessions, lockouts, TLS, counters. Prepared at start,
/// before the listener is bound.
pub struct Station {
    users: HashMap<String, StationUser>,
    sessions: Mutex<auth::Sessions>,
    throttle: Mutex<auth::Throttle>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stats: Arc<StationStats>,
    verifying: tokio::sync::Semaphore,
    idle: Duration,
    public_origin: Option<String>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station")
            .field("users", &self.users.len())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Station {
    /// Validates `cfg` and loads its TLS material.
    pub fn prepare(cfg: &StationConfig) -> Result<Self, StationError> {
        cfg.validate().map_err(StationError::Config)?;
        let tls = cfg.tls.as_ref().map(tls::server_config).transpose()?;
        let idle = Duration::from_secs(cfg.session_idle_secs);
        Ok(Self {
            users: cfg
                .users
                .iter()
                .map(|u| (u.id.clone(), u.clone()))
                .collect(),
            sessions: Mutex::new(auth::Sessions::new(
                idle,
                Duration::from_secs(cfg.session_max_secs),
            )),
            throttle: Mutex::new({
                let t = auth::Throttle::new(
                    cfg.max_failed_logins,
                    Duration::from_secs(cfg.lockout_secs),
                );
                // Behind a proxy every client has the proxy's address: limit user ids only.
                if cfg.public_origin.is_some() {
                    t.without_address_limit()
                } else {
                    t
                }
            }),
            tls,
            stats: Arc::default(),
            verifying: tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            idle,
            public_origin: cfg.public_origin.clone(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<StationStats> {
        &self.stats
    }

    /// Whether the station is served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether browsers reach the station over HTTPS (served over TLS, or behind a TLS proxy at `public_origin`):
    /// the session cookie is then `Secure`.
    pub fn secure_cookie(&self) -> bool {
        self.tls.is_some() || self.public_origin.is_some()
    }
}

#[derive(Clone)]
struct AppState {
    node: Arc<EdgeNode>,
    engine: SharedEngine,
    station: Arc<Station>,
}

/// The page.
const PAGE: &str = include_str!("station.html");

/// Builds the router.
pub fn router(node: Arc<EdgeNode>, engine: SharedEngine, station: Arc<Station>) -> Router {
    let tls = station.is_tls();
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/health", get(health))
        .route("/api/sign-in", post(sign_in))
        .route("/api/sign-out", post(sign_out))
        .route("/api/session", get(session))
        .route("/api/ward", get(ward))
        .route("/api/stream", get(stream))
        .route("/api/alarms/{id}/acknowledge", post(acknowledge))
        .route("/api/alarms/{id}/silence", post(silence))
        .route("/api/patients/{mrn}/spo2-scale", post(spo2_scale))
        .layer(axum::middleware::map_response(
            move |mut r: Response| async move {
                let h = r.headers_mut();
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                h.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                h.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                if tls {
                    h.insert(
                        header::STRICT_TRANSPORT_SECURITY,
                        HeaderValue::from_static("max-age=31536000"),
                    );
                }
                r
            },
        ))
        .with_state(AppState {
            node,
            engine,
            station,
        })
}

/// Serves the station on `listener` (over TLS when configured) until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    station: Arc<Station>,
    node: Arc<EdgeNode>,
    engine: SharedEngine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener.local_addr().ok();
    let app = router(node, engine, station.clone());
    let served = match &station.tls {
        Some(cfg) => {
            let l = match tls::TlsListener::new(listener, cfg.clone(), station.stats.clone()) {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "nurse station not served");
                    return;
                }
            };
            info!(addr = ?addr, "nurse station serving over TLS");
            axum::serve(l, app.into_make_service_with_connect_info::<PeerAddr>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            info!(addr = ?addr, "nurse station serving plain HTTP on loopback");
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    };
    if let Err(e) = served {
        warn!(error = %e, "nurse station stopped with an error");
    }
}

#[derive(Debug, Serialize)]
struct ApiError {
    error: String,
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions, CSRF, roles.

fn session_cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

fn set_cookie(token: &str, secure: bool, clear: bool) -> HeaderValue {
    let mut c = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    if clear {
        c.push_str("; Max-Age=0");
    }
    if secure {
        c.push_str("; Secure");
    }
    // The token is hex; the value cannot be invalid.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A signed-in request: the session token and who it is.
struct Authed {
    token: String,
    who: auth::SignedIn,
}

/// The session of a request, or the refusal (401) to answer. `activity` restarts the idle timer.
#[allow(clippy::result_large_err)] // a ready response, returned at once
fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    route: &str,
    activity: bool,
) -> Result<Authed, Response> {
    let st = &s.station;
    let Some(token) = session_cookie_of(headers) else {
        bump(&st.stats.unauthenticated);
        info!(route, "nurse station request refused: not signed in");
        return Err(err(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let checked = match st.sessions.lock() {
        Ok(mut m) => m.check(token, Instant::now(), activity),
        Err(_) => {
            return Err(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "sessions unavailable",
            ));
        }
    };
    match checked {
        Ok(who) => Ok(Authed {
            token: token.to_string(),
            who,
        }),
        Err(e) => {
            if e == auth::SessionError::Unknown {
                bump(&st.stats.unauthenticated);
            } else {
                bump(&st.stats.expired);
            }
            info!(route, reason = %e, "nurse station request refused: no valid session");
            Err(err(StatusCode::UNAUTHORIZED, e.to_string()))
        }
    }
}

/// The host the request was addressed to (HTTP/1 `Host`, HTTP/2 `:authority`).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// A state-changing request must come from the station's own page: `Sec-Fetch-Site` (when the browser sends it)
/// must be `same-origin` or `none`, and `Origin` (when sent) must be the station's `public_origin` if configured
/// (behind a TLS-terminating proxy), else this station's own scheme and host.
fn same_origin(
    headers: &HeaderMap,
    uri: &Uri,
    tls: bool,
    public_origin: Option<&str>,
) -> Result<(), String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return Err(format!("cross-origin request (Sec-Fetch-Site: {site})"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let ok = match public_origin {
            Some(p) => origin.eq_ignore_ascii_case(p),
            None => {
                let scheme = if tls { "https" } else { "http" };
                request_host(headers, uri)
                    .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
            }
        };
        if !ok {
            return Err(format!("request from another origin ({origin})"));
        }
    }
    Ok(())
}

/// CSRF checks of a signed-in state-changing request: same origin, and `X-CSRF-Token` equal to the session's.
#[allow(clippy::result_large_err)]
fn check_csrf(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    a: &Authed,
    route: &str,
) -> Result<(), Response> {
    let refuse = |why: String| {
        bump(&s.station.stats.csrf_refused);
        warn!(route, user = %a.who.user, why = %why, "nurse station request refused: CSRF check");
        err(StatusCode::FORBIDDEN, format!("refused: {why}"))
    };
    same_origin(
        headers,
        uri,
        s.station.is_tls(),
        s.station.public_origin.as_deref(),
    )
    .map_err(refuse)?;
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sent.is_empty() || !auth::constant_time_eq(sent, &a.who.csrf_token) {
        return Err(refuse(format!("missing or wrong {CSRF_HEADER} header")));
    }
    Ok(())
}

/// The checks of every action: signed in, same origin + CSRF token, a role that may act.
#[allow(clippy::result_large_err)]
fn authorize_action(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    route: &str,
) -> Result<Authed, Response> {
    let a = authenticate(s, headers, route, true)?;
    check_csrf(s, headers, uri, &a, route)?;
    if !a.who.role.may_act() {
        bump(&s.station.stats.forbidden);
        warn!(route, user = %a.who.user, role = a.who.role.as_str(), "nurse station action refused: role may not act");
        return Err(err(
            StatusCode::FORBIDDEN,
            format!(
                "{} is signed in as {}: only nurses may do this",
                a.who.user,
                a.who.role.as_str()
            ),
        ));
    }
    Ok(a)
}

/// Parses a JSON body (empty = `{}`). A `user` field is refused: the acting user is the signed-in user.
#[allow(clippy::result_large_err)]
fn parse_body<T: DeserializeOwned>(s: &AppState, body: &[u8], route: &str) -> Result<T, Response> {
    let refuse = |msg: String| {
        bump(&s.station.stats.bad_requests);
        info!(route, error = %msg, "nurse station request refused: bad body");
        err(StatusCode::BAD_REQUEST, msg)
    };
    let v: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| refuse(format!("body is not JSON: {e}")))?
    };
    if v.get("user").is_some() {
        return Err(refuse(
            "a `user` field is not accepted: the action is recorded for the signed-in user".into(),
        ));
    }
    serde_json::from_value(v).map_err(|e| refuse(format!("invalid body: {e}")))
}

// ---------------------------------------------------------------------------------------------------------------
// Sign-in, sign-out, session.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    user: String,
    password: String,
}

#[derive(Serialize)]
struct SessionView<'a> {
    user: &'a str,
    name: &'a str,
    role: Role,
    may_act: bool,
    csrf_token: &'a str,
    idle_timeout_secs: u64,
}

fn session_view(st: &Station, who: &auth::SignedIn) -> serde_json::Value {
    serde_json::to_value(SessionView {
        user: &who.user,
        name: &who.name,
        role: who.role,
        may_act: who.role.may_act(),
        csrf_token: &who.csrf_token,
        idle_timeout_secs: st.idle.as_secs(),
    })
    .unwrap_or(serde_json::Value::Null)
}

async fn sign_in(
    State(s): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let st = &s.station;
    if let Err(why) = same_origin(&headers, &uri, st.is_tls(), st.public_origin.as_deref()) {
        bump(&st.stats.csrf_refused);
        warn!(peer = %peer, why = %why, "nurse station sign-in refused: CSRF check");
        return err(StatusCode::FORBIDDEN, format!("refused: {why}"));
    }
    let b: SignInBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            bump(&st.stats.bad_requests);
            info!(peer = %peer, error = %e, "nurse station sign-in refused: bad body");
            return err(
                StatusCode::BAD_REQUEST,
                "body must be {\"user\": \"...\", \"password\": \"...\"}",
            );
        }
    };
    let ip: IpAddr = peer.ip();
    let user = st.users.get(&b.user).cloned();
    let uid = user.as_ref().map(|u| u.id.as_str());
    let locked = match st.throttle.lock() {
        Ok(t) => t.check(uid, ip, Instant::now()),
        Err(_) => return err(StatusCode::INTERNAL_SERVER_ERROR, "sign-in unavailable"),
    };
    if let Err(l) = locked {
        bump(&st.stats.locked_refusals);
        let secs = l.retry_after.as_secs().max(1);
        warn!(peer = %peer, user = %b.user.chars().take(64).collect::<String>(), address_locked = l.address, retry_after_secs = secs, "nurse station sign-in refused: locked out after repeated failures");
        let mut r = err(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed sign-ins: locked, try again in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let Ok(_permit) = st.verifying.acquire().await else {
        return err(StatusCode::SERVICE_UNAVAILABLE, "sign-in unavailable");
    };
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_string());
    let password = b.password;
    let matched = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let now = Instant::now();
    match user {
        Some(u) if matched => {
            if let Ok(mut t) = st.throttle.lock() {
                t.success(&u.id, ip);
            }
            // A new session on every sign-in (no fixation); one this browser already had is ended.
            let previous = session_cookie_of(&headers).map(str::to_string);
            let opened = st.sessions.lock().map(|mut m| {
                if let Some(old) = &previous {
                    m.close(old);
                }
                m.prune(now);
                m.open(&u.id, &u.name, u.role, now)
            });
            let Ok((token, who)) = opened else {
                return err(StatusCode::INTERNAL_SERVER_ERROR, "sessions unavailable");
            };
            bump(&st.stats.sign_ins);
            info!(peer = %peer, user = %u.id, role = u.role.as_str(), "nurse station sign-in");
            let mut r = Json(session_view(st, &who)).into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(&token, st.secure_cookie(), false),
            );
            r
        }
        _ => {
            let locked_now = st
                .throttle
                .lock()
                .map(|mut t| t.failure(uid, ip, now))
                .unwrap_or(false);
            bump(&st.stats.sign_in_failures);
            let shown = b.user.chars().take(64).collect::<String>();
            warn!(peer = %peer, user = %shown, known_user = uid.is_some(), "nurse station sign-in failed: wrong user id or password");
            if locked_now {
                bump(&st.stats.lockouts);
                warn!(peer = %peer, user = %shown, "nurse station sign-in: locked out after repeated failures");
            }
            err(StatusCode::UNAUTHORIZED, "wrong user id or password")
        }
    }
}

async fn sign_out(State(s): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let a = match authenticate(&s, &headers, "sign-out", false) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = check_csrf(&s, &headers, &uri, &a, "sign-out") {
        return r;
    }
    if let Ok(mut m) = s.station.sessions.lock() {
        m.close(&a.token);
    }
    bump(&s.station.stats.sign_outs);
    info!(user = %a.who.user, "nurse station sign-out");
    let mut r = Json(serde_json::json!({"signed_out": a.who.user})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie("", s.station.secure_cookie(), true),
    );
    r
}

async fn session(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match authenticate(&s, &headers, "session", true) {
        Ok(a) => Json(session_view(&s.station, &a.who)).into_response(),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading the ward.

// A ready HTTP response is the natural error of an axum handler helper; it is returned at once, never stored.
#[allow(clippy::result_large_err)]
fn snapshot_json(engine: &SharedEngine) -> Result<serde_json::Value, Response> {
    let e = engine
        .lock()
        .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable"))?;
    serde_json::to_value(e.snapshot(wardwatch_proto::now_unix_ms()))
        .map_err(|x| err(StatusCode::INTERNAL_SERVER_ERROR, x.to_string()))
}

async fn ward(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&s, &headers, "ward", true) {
        return r;
    }
    match snapshot_json(&s.engine) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// Liveness for IT, public: link and outbox state and model status. No patient data.
#[derive(Debug, Serialize)]
struct Health {
    cloud_connected: bool,
    outbox_pending: u64,
    outbox_used_bytes: u64,
    outbox_budget_bytes: u64,
    outbox_near_full: bool,
    last_sync_error: Option<String>,
    /// The edge models: running, or why not (NEWS2 and threshold alarms run either way).
    models: Vec<crate::clinical::engine::ModelStatusView>,
}

async fn health_value(node: &EdgeNode) -> Health {
    Health {
        cloud_connected: node.sync_stats().connected.load(Ordering::Relaxed),
        outbox_pending: node.outbox().pending().await.unwrap_or(0),
        outbox_used_bytes: node.outbox().used_bytes(),
        outbox_budget_bytes: node.outbox().budget_bytes(),
        outbox_near_full: node.outbox_near_full(),
        last_sync_error: node
            .sync_stats()
            .last_error
            .lock()
            .ok()
            .and_then(|l| l.clone()),
        models: node.models().status().to_vec(),
    }
}

async fn health(State(s): State<AppState>) -> Response {
    Json(health_value(&s.node).await).into_response()
}

async fn stream(State(s): State<AppState>, headers: HeaderMap) -> Response {
    // Checking the session here and on every tick is not activity: an open page alone does not keep it alive.
    let a = match authenticate(&s, &headers, "stream", false) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let stream = futures_util::stream::unfold(
        (s, a.token, true, false),
        |(s, token, first, done)| async move {
            if done {
                return None;
            }
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let valid = s
                .station
                .sessions
                .lock()
                .map_err(|_| auth::SessionError::Unknown)
                .and_then(|mut m| m.check(&token, Instant::now(), false));
            if let Err(why) = valid {
                if why != auth::SessionError::Unknown {
                    bump(&s.station.stats.expired);
                }
                info!(reason = %why, "nurse station stream ended: session over");
                let event = Event::default().event("signed-out").data(why.to_string());
                return Some((Ok::<_, Infallible>(event), (s, token, false, true)));
            }
            let ward = snapshot_json(&s.engine).unwrap_or(serde_json::Value::Null);
            let health = serde_json::to_value(health_value(&s.node).await)
                .unwrap_or(serde_json::Value::Null);
            let body = serde_json::json!({"ward": ward, "health": health});
            let event = Event::default().event("ward").data(body.to_string());
            Some((Ok(event), (s, token, false, false)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ---------------------------------------------------------------------------------------------------------------
// Actions.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    scale: u8,
    #[serde(default)]
    reason: String,
}

fn action_error(e: AlarmActionError) -> Response {
    match e {
        AlarmActionError::Unknown(_) => err(StatusCode::NOT_FOUND, e.to_string()),
        AlarmActionError::NotAnnounced(_) => err(StatusCode::CONFLICT, e.to_string()),
        AlarmActionError::SilenceTooLong { .. } => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The one path of every alarm action (after the checks): apply the action to the engine under its lock as the
/// signed-in user, make the resulting alarm events durable (they sync to the cloud), answer.
async fn alarm_action(
    s: &AppState,
    id: &str,
    who: &auth::SignedIn,
    action: impl FnOnce(
        &mut crate::clinical::engine::ClinicalEngine,
        &str,
        i64,
    ) -> Result<Vec<Payload>, AlarmActionError>,
) -> Response {
    let out = {
        let Ok(mut e) = s.engine.lock() else {
            return err(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable");
        };
        action(&mut e, &who.user, wardwatch_proto::now_unix_ms())
    };
    match out {
        Ok(events) => {
            let n = events.len();
            emit(&s.node, events).await;
            bump(&s.station.stats.actions);
            info!(alarm = %id, user = %who.user, "nurse station alarm action");
            Json(serde_json::json!({"alarm_id": id, "events": n, "by": who.user})).into_response()
        }
        Err(e) => action_error(e),
    }
}

async fn acknowledge(
    State(s): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = match authorize_action(&s, &headers, &uri, "acknowledge") {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = parse_body::<AckBody>(&s, &body, "acknowledge") {
        return r;
    }
    alarm_action(&s, &id, &a.who, |e, user, now| {
        e.acknowledge(&id, user, now)
    })
    .await
}

async fn silence(
    State(s): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = match authorize_action(&s, &headers, &uri, "silence") {
        Ok(a) => a,
        Err(r) => return r,
    };
    let b: SilenceBody = match parse_body(&s, &body, "silence") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ms = b.seconds.saturating_mul(1000);
    alarm_action(&s, &id, &a.who, |e, user, now| {
        e.silence(&id, user, now, ms)
    })
    .await
}

async fn spo2_scale(
    State(s): State<AppState>,
    Path(mrn): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = match authorize_action(&s, &headers, &uri, "spo2-scale") {
        Ok(a) => a,
        Err(r) => return r,
    };
    let b: ScaleBody = match parse_body(&s, &body, "spo2-scale") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |msg: &str| {
        bump(&s.station.stats.bad_requests);
        info!(patient = %mrn.chars().take(64).collect::<String>(), error = msg, "nurse station SpO2 scale refused");
        err(StatusCode::BAD_REQUEST, msg)
    };
    if wardwatch_proto::ids::PatientId::new(mrn.clone()).is_err() {
        return bad("invalid MRN");
    }
    if !matches!(b.scale, 1 | 2) {
        return bad("scale must be 1 or 2");
    }
    let reason = b.reason.trim().to_string();
    if reason.chars().count() > 500 || reason.chars().any(|c| c.is_control() && c != '\n') {
        return bad("reason must be at most 500 characters without control characters");
    }
    let found = match s.engine.lock() {
        Ok(e) => e.patient_location_and_scale(&mrn),
        Err(_) => return err(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable"),
    };
    let Some((location, was_2)) = found else {
        return err(
            StatusCode::NOT_FOUND,
            format!("patient {mrn} is not on this station's ward"),
        );
    };
    let now = wardwatch_proto::now_unix_ms();
    let change = Spo2ScaleChange {
        patient_id: mrn.clone(),
        location: Some(location),
        scale: u32::from(b.scale),
        previous_scale: if was_2 { 2 } else { 1 },
        changed_by: a.who.user.clone(),
        changed_by_name: a.who.name.clone(),
        changed_by_role: a.who.role.as_str().to_string(),
        changed_at_unix_ms: now,
        reason,
    };
    let key = crate::clinical::task::produced_key(&Payload::Spo2Scale(change.clone()));
    // Durable first (it syncs to the cloud), applied after: a decision the edge could not record is not made.
    match s
        .node
        .accept(vec![Incoming {
            idempotency_key: key,
            payload: Payload::Spo2Scale(change.clone()),
        }])
        .await
    {
        Ok(r) if r.rejected.is_empty() => {}
        Ok(r) => {
            let detail = r
                .rejected
                .first()
                .map(|(_, why)| why.detail.clone())
                .unwrap_or_default();
            warn!(patient = %mrn, detail = %detail, "nurse station SpO2-scale decision refused by validation");
            return err(StatusCode::BAD_REQUEST, format!("not recorded: {detail}"));
        }
        Err(e) => {
            warn!(patient = %mrn, error = %e, "nurse station SpO2-scale decision not recorded");
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not recorded, scale unchanged: {e}"),
            );
        }
    }
    if let Ok(mut e) = s.engine.lock() {
        e.set_spo2_scale(&mrn, b.scale == 2);
    }
    bump(&s.station.stats.actions);
    info!(patient = %mrn, scale = b.scale, previous = change.previous_scale, user = %a.who.user, "NEWS2 SpO2 scale set (recorded, syncs to the cloud)");
    Json(serde_json::json!({
        "patient_id": mrn,
        "scale": b.scale,
        "previous_scale": change.previous_scale,
        "by": a.who.user,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn cookie_is_found_among_others() {
        let m = h(&[("cookie", "a=1; wardwatch_session=abc; b=2")]);
        assert_eq!(session_cookie_of(&m), Some("abc"));
        let m = h(&[("cookie", "a=1"), ("cookie", "wardwatch_session=def")]);
        assert_eq!(session_cookie_of(&m), Some("def"));
        assert_eq!(
            session_cookie_of(&h(&[("cookie", "xwardwatch_session=1")])),
            None
        );
        assert_eq!(session_cookie_of(&HeaderMap::new()), None);
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie("tok", false, false);
        assert_eq!(
            c.to_str().unwrap(),
            "wardwatch_session=tok; Path=/; HttpOnly; SameSite=Strict"
        );
        let c = set_cookie("tok", true, false);
        assert!(c.to_str().unwrap().ends_with("; Secure"));
        let c = set_cookie("", true, true);
        assert!(c.to_str().unwrap().contains("Max-Age=0"));
    }

    fn direct(h: &HeaderMap, uri: &Uri, tls: bool) -> Result<(), String> {
        same_origin(h, uri, tls, None)
    }

    #[test]
    fn behind_a_tls_proxy_only_the_public_origin_is_accepted() {
        let uri: Uri = "/api/sign-in".parse().unwrap();
        let public = Some("https://ward7a.hospital.example");
        let with = |o: &str| h(&[("host", "127.0.0.1:8080"), ("origin", o)]);
        assert!(
            same_origin(
                &with("https://ward7a.hospital.example"),
                &uri,
                false,
                public
            )
            .is_ok()
        );
        assert!(same_origin(&with("http://127.0.0.1:8080"), &uri, false, public).is_err());
        assert!(same_origin(&with("https://evil.example"), &uri, false, public).is_err());
        assert!(same_origin(&h(&[("sec-fetch-site", "cross-site")]), &uri, false, public).is_err());
    }

    #[test]
    fn same_origin_rules() {
        let uri: Uri = "/api/sign-in".parse().unwrap();
        // No Origin, no Sec-Fetch-Site (a non-browser client): allowed; the CSRF token still applies.
        assert!(direct(&h(&[("host", "127.0.0.1:8080")]), &uri, false).is_ok());
        assert!(
            direct(
                &h(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://127.0.0.1:8080"),
                    ("sec-fetch-site", "same-origin")
                ]),
                &uri,
                false
            )
            .is_ok()
        );
        assert!(
            direct(
                &h(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://evil.example")
                ]),
                &uri,
                false
            )
            .is_err()
        );
        assert!(
            direct(
                &h(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
                &uri,
                false
            )
            .is_err()
        );
        // Scheme must match: an http page may not post to the https station.
        assert!(
            direct(
                &h(&[("host", "ward:8443"), ("origin", "http://ward:8443")]),
                &uri,
                true
            )
            .is_err()
        );
        assert!(
            direct(
                &h(&[("host", "ward:8443"), ("origin", "https://ward:8443")]),
                &uri,
                true
            )
            .is_ok()
        );
        assert!(
            direct(
                &h(&[("host", "ward:8443"), ("sec-fetch-site", "cross-site")]),
                &uri,
                true
            )
            .is_err()
        );
        assert!(
            direct(
                &h(&[("host", "ward:8443"), ("sec-fetch-site", "same-site")]),
                &uri,
                true
            )
            .is_err()
        );
        // HTTP/2: no Host header, the authority is in the URI.
        let abs: Uri = "https://ward:8443/api/sign-in".parse().unwrap();
        assert!(direct(&h(&[("origin", "https://ward:8443")]), &abs, true).is_ok());
    }
}
