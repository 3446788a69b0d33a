//! The nurse station, served by the edge itself so it keeps working when the cloud is unreachable: an HTTP API
//! (ward snapshot, acknowledge, silence, SpO2 scale) and a live page fed by Server-Sent Events.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the live ward page |
//! | `GET /api/ward` | the ward snapshot (JSON) |
//! | `GET /api/stream` | the snapshot every second as Server-Sent Events (`event: ward`) |
//! | `GET /api/health` | sync link state, outbox depth, and whether the edge models run (or why not) |
//! | `POST /api/alarms/{id}/acknowledge` | `{"user": "..."}` |
//! | `POST /api/alarms/{id}/silence` | `{"user": "...", "seconds": 60}` |
//! | `POST /api/patients/{mrn}/spo2-scale` | `{"user": "...", "scale": 2}` (a clinical decision, recorded) |
//!
//! Every action is recorded as an alarm event (who, when) that syncs to the cloud.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::clinical::alarms::AlarmActionError;
use crate::clinical::task::{SharedEngine, emit};
use crate::node::EdgeNode;

/// Nurse station configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Address to serve on (the ward network; port 0 picks a free port).
    pub listen: SocketAddr,
}

#[derive(Clone)]
struct AppState {
    node: Arc<EdgeNode>,
    engine: SharedEngine,
}

/// The page.
const PAGE: &str = include_str!("station.html");

/// Builds the router.
pub fn router(node: Arc<EdgeNode>, engine: SharedEngine) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/ward", get(ward))
        .route("/api/stream", get(stream))
        .route("/api/health", get(health))
        .route("/api/alarms/{id}/acknowledge", post(acknowledge))
        .route("/api/alarms/{id}/silence", post(silence))
        .route("/api/patients/{mrn}/spo2-scale", post(spo2_scale))
        .with_state(AppState { node, engine })
}

/// Serves the station on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    node: Arc<EdgeNode>,
    engine: SharedEngine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    info!(addr = ?listener.local_addr().ok(), "nurse station serving");
    if let Err(e) = axum::serve(listener, router(node, engine))
        .with_graceful_shutdown(shutdown)
        .await
    {
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

// A ready HTTP response is the natural error of an axum handler helper; it is returned at once, never stored.
#[allow(clippy::result_large_err)]
fn snapshot_json(engine: &SharedEngine) -> Result<serde_json::Value, Response> {
    let e = engine
        .lock()
        .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable"))?;
    serde_json::to_value(e.snapshot(wardwatch_proto::now_unix_ms()))
        .map_err(|x| err(StatusCode::INTERNAL_SERVER_ERROR, x.to_string()))
}

async fn ward(State(s): State<AppState>) -> Response {
    match snapshot_json(&s.engine) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

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
        cloud_connected: node
            .sync_stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed),
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

async fn stream(
    State(s): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((s, true), |(s, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let ward = snapshot_json(&s.engine).unwrap_or(serde_json::Value::Null);
        let health =
            serde_json::to_value(health_value(&s.node).await).unwrap_or(serde_json::Value::Null);
        let body = serde_json::json!({"ward": ward, "health": health});
        let event = Event::default().event("ward").data(body.to_string());
        Some((Ok(event), (s, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    user: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    user: String,
    seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    user: String,
    scale: u8,
}

#[allow(clippy::result_large_err)] // see snapshot_json
fn valid_user(u: &str) -> Result<(), Response> {
    if u.trim().is_empty() || u.len() > 64 || u.chars().any(char::is_control) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "user must be 1-64 printable characters",
        ));
    }
    Ok(())
}

fn action_error(e: AlarmActionError) -> Response {
    match e {
        AlarmActionError::Unknown(_) => err(StatusCode::NOT_FOUND, e.to_string()),
        AlarmActionError::NotAnnounced(_) => err(StatusCode::CONFLICT, e.to_string()),
        AlarmActionError::SilenceTooLong { .. } => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The one path of every alarm action: check the user, apply the action to the engine under its lock, make the
/// resulting alarm events durable (they sync to the cloud), answer.
async fn alarm_action(
    s: &AppState,
    id: &str,
    user: &str,
    action: impl FnOnce(
        &mut crate::clinical::engine::ClinicalEngine,
        &str,
        i64,
    ) -> Result<Vec<wardwatch_proto::v1::edge_event::Payload>, AlarmActionError>,
) -> Response {
    if let Err(r) = valid_user(user) {
        return r;
    }
    let out = {
        let Ok(mut e) = s.engine.lock() else {
            return err(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable");
        };
        action(&mut e, user.trim(), wardwatch_proto::now_unix_ms())
    };
    match out {
        Ok(events) => {
            let n = events.len();
            emit(&s.node, events).await;
            Json(serde_json::json!({"alarm_id": id, "events": n})).into_response()
        }
        Err(e) => action_error(e),
    }
}

async fn acknowledge(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<AckBody>,
) -> Response {
    alarm_action(&s, &id, &b.user, |e, user, now| {
        e.acknowledge(&id, user, now)
    })
    .await
}

async fn silence(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<SilenceBody>,
) -> Response {
    let ms = b.seconds.saturating_mul(1000);
    alarm_action(&s, &id, &b.user, |e, user, now| {
        e.silence(&id, user, now, ms)
    })
    .await
}

async fn spo2_scale(
    State(s): State<AppState>,
    Path(mrn): Path<String>,
    Json(b): Json<ScaleBody>,
) -> Response {
    if let Err(r) = valid_user(&b.user) {
        return r;
    }
    if wardwatch_proto::ids::PatientId::new(mrn.clone()).is_err() {
        return err(StatusCode::BAD_REQUEST, "invalid MRN");
    }
    if !matches!(b.scale, 1 | 2) {
        return err(StatusCode::BAD_REQUEST, "scale must be 1 or 2");
    }
    if let Ok(mut e) = s.engine.lock() {
        e.set_spo2_scale(&mrn, b.scale == 2);
    }
    info!(patient = %mrn, scale = b.scale, user = %b.user, "NEWS2 SpO2 scale set");
    Json(serde_json::json!({"patient_id": mrn, "scale": b.scale})).into_response()
}
