//! Runs the clinical engine on a live edge: consumes every newly durable event from the node, ticks once a
//! second on the wall clock, and makes what the engine produces (NEWS2 scores, model predictions, alarm state
//! changes) durable through the same accept path, so they sync to the cloud like any other event. Model work the
//! engine asks for (a deterioration round each minute, artifact questions) is scored on the inference crate's
//! scoring threads; a spawned task awaits the replies and hands them back to the engine.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{error, warn};
use wardwatch_proto::v1::edge_event::Payload;

use super::engine::ClinicalEngine;
use super::models::MlWork;
use crate::node::{EdgeNode, Incoming};

/// Most queued batches of durable events the engine scores before it commits what they produced. Their output is
/// made durable in one transaction instead of one per batch; the cap bounds the size of that transaction.
const MAX_COALESCED_BATCHES: usize = 64;

/// The engine shared between its task and the nurse station.
pub type SharedEngine = Arc<Mutex<ClinicalEngine>>;

/// The idempotency key of an event the engine produced.
pub fn produced_key(p: &Payload) -> String {
    match p {
        Payload::Alarm(a) => format!("alarm:{}:{}:{}", a.alarm_id, a.state, a.changed_at_unix_ms),
        Payload::Risk(r) => match &r.score {
            Some(wardwatch_proto::v1::risk_score::Score::Model(m)) => format!(
                "model:{}:{}:{}:{}",
                m.model_name, m.model_version, r.patient_id, r.computed_at_unix_ms
            ),
            _ => format!("news2:{}:{}", r.patient_id, r.computed_at_unix_ms),
        },
        Payload::Spo2Scale(s) => format!(
            "spo2-scale:{}:{}:{}",
            s.patient_id, s.changed_by, s.changed_at_unix_ms
        ),
        other => format!("engine:{other:?}").chars().take(120).collect(),
    }
}

/// Makes engine output durable (and thus synced), after handing its alarm state changes to live subscribers
/// ([`EdgeNode::subscribe_alarm_changes`]). Logged, never fatal: the engine keeps running.
pub async fn emit(node: &EdgeNode, out: Vec<Payload>) {
    if out.is_empty() {
        return;
    }
    node.announce_alarm_changes(&out);
    let incoming: Vec<Incoming> = out
        .into_iter()
        .map(|p| Incoming {
            idempotency_key: produced_key(&p),
            payload: p,
        })
        .collect();
    match node.accept(incoming).await {
        Ok(r) if !r.rejected.is_empty() => {
            for (i, why) in &r.rejected {
                error!(index = i, reason = ?why.reason, detail = %why.detail, "engine produced an invalid event");
            }
        }
        Ok(_) => {}
        Err(e) => error!(error = %e, "engine output not recorded"),
    }
}

/// Has the engine's model work scored and hands the results back, in a task of its own so the engine keeps
/// consuming events meanwhile. The scoring itself runs on the inference crate's scoring threads; this task only
/// awaits their replies (async tasks never run inference).
fn dispatch_ml(node: &Arc<EdgeNode>, engine: &SharedEngine, work: MlWork) {
    if work.is_empty() {
        return;
    }
    let (node, engine) = (node.clone(), engine.clone());
    tokio::spawn(async move {
        let models = node.models().clone();
        let mut out = Vec::new();
        if !work.artifact.is_empty() {
            match models.score_artifact(work.artifact).await {
                Ok(results) => match engine.lock() {
                    Ok(mut e) => out.extend(e.on_artifact_results(results)),
                    Err(_) => error!("clinical engine lock poisoned"),
                },
                Err(err) => {
                    warn!(error = %err, "artifact verdicts not scored; the alarms are not held back")
                }
            }
        }
        if let Some(request) = work.deterioration {
            let beds = request.rows.len();
            let result = models.score_deterioration(request).await;
            match engine.lock() {
                Ok(mut e) => match result {
                    Ok(r) => out.extend(e.on_deterioration_result(r)),
                    Err(err) => {
                        e.on_deterioration_failure();
                        warn!(error = %err, beds, "deterioration round not scored");
                    }
                },
                Err(_) => error!("clinical engine lock poisoned"),
            }
        }
        emit(&node, out).await;
    });
}

/// Runs until `shutdown` resolves.
pub async fn run(
    node: Arc<EdgeNode>,
    engine: SharedEngine,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Vec<crate::outbox::NewEvent>>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let out = tokio::select! {
            batch = rx.recv() => match batch {
                Ok(batch) => {
                    let Ok(mut e) = engine.lock() else { error!("clinical engine lock poisoned"); return };
                    let mut out = Vec::new();
                    for ev in batch.iter() {
                        out.extend(e.on_event(&ev.idempotency_key, &ev.payload));
                    }
                    // Batches that arrived meanwhile (e.g. while the last output was being committed) are scored
                    // now too, so their output shares one commit; never waits for more.
                    let mut lagged = 0;
                    for _ in 0..MAX_COALESCED_BATCHES {
                        match rx.try_recv() {
                            Ok(more) => {
                                for ev in more.iter() {
                                    out.extend(e.on_event(&ev.idempotency_key, &ev.payload));
                                }
                            }
                            Err(TryRecvError::Lagged(n)) => lagged += n,
                            Err(_) => break,
                        }
                    }
                    if lagged > 0 {
                        warn!(batches = lagged, "clinical engine fell behind; skipped batches are stored but were not scored");
                    }
                    dispatch_ml(&node, &engine, e.take_ml_work());
                    out
                }
                Err(RecvError::Lagged(n)) => {
                    warn!(batches = n, "clinical engine fell behind; skipped batches are stored but were not scored");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let Ok(mut e) = engine.lock() else { error!("clinical engine lock poisoned"); return };
                let out = e.tick(wardwatch_proto::now_unix_ms());
                dispatch_ml(&node, &engine, e.take_ml_work());
                out
            }
            () = &mut shutdown => return,
        };
        emit(&node, out).await;
    }
}
