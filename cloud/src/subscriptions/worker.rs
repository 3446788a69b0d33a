//! The delivery task: one loop that finds subscriptions with work (a handshake, undelivered events, a heartbeat,
//! an end that passed) and runs one delivery step per subscription, never two at once for the same subscription,
//! so each subscription's notifications go out strictly in event order.
//!
//! A step is one HTTP POST of a notification Bundle to the endpoint. On a 2xx the subscription is `active` and
//! `delivered_through` moves to the last event number sent. Anything else (connection refused, timeout, non-2xx)
//! sets it to `error` with the reason, and the next attempt waits `retry_initial_ms * 2^failures`, capped at
//! `retry_max_ms`, with ±10 % jitter. There is no attempt limit: retries go on for as long as the subscription
//! exists (until it is deleted or its `end` passes). All of this state is in the database, so a restarted cloud
//! carries on where it stopped; a notification in flight when the cloud stopped is sent again (delivery is at
//! least once; the event number lets the receiver drop a duplicate).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wardwatch_fhir::{NotificationBundle, NotificationEntry, NotificationEventRecord};

use super::topics::Topic;
use crate::api::ApiState;
use crate::error::CloudError;
use crate::storage::{SubscriptionEventRow, SubscriptionRow};

/// How often delivered events past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Runs until `stop` turns true. In-flight deliveries are then abandoned (they are retried after a restart).
pub async fn run(state: Arc<ApiState>, mut stop: watch::Receiver<bool>) {
    let cfg = state.subscriptions.config.clone();
    let mut in_flight: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.poll_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        in_flight.retain(|_, h| !h.is_finished());
        let now = wardwatch_proto::now_unix_ms();
        match state.store.due_subscriptions(now).await {
            Ok(ids) => {
                for id in ids {
                    if in_flight.contains_key(&id) {
                        continue;
                    }
                    let st = state.clone();
                    let sid = id.clone();
                    in_flight.insert(id, tokio::spawn(async move { step(&st, &sid).await }));
                }
            }
            Err(e) => tracing::warn!(error = %e, "subscriptions: cannot read due subscriptions"),
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            let retention = i64::try_from(cfg.event_retention_hours).unwrap_or(8760) * 3_600_000;
            match state.store.prune_subscription_events(now - retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    pruned = n,
                    "subscriptions: delivered events past retention pruned"
                ),
                Err(e) => tracing::warn!(error = %e, "subscriptions: pruning events failed"),
            }
        }
    }
    for (_, h) in in_flight.drain() {
        h.abort();
        let _ = h.await;
    }
}

/// The next retry delay after `failures` consecutive failures (before this one), ms, without jitter.
pub fn backoff_ms(initial: u64, max: u64, failures: i64) -> u64 {
    let exp = u32::try_from(failures.clamp(0, 40)).unwrap_or(40);
    initial.saturating_mul(1u64 << exp.min(40)).min(max)
}

async fn step(state: &ApiState, id: &str) {
    if let Err(e) = try_step(state, id).await {
        tracing::warn!(subscription = %id, error = %e, "subscriptions: delivery step failed");
    }
}

async fn try_step(state: &ApiState, id: &str) -> Result<(), CloudError> {
    let Some(s) = state.store.subscription(id).await? else {
        return Ok(());
    };
    if s.status == "off" {
        return Ok(());
    }
    let now = wardwatch_proto::now_unix_ms();
    if let Some(end) = s.end_ms
        && end <= now
    {
        state
            .store
            .subscription_off(id, "the subscription's end time has passed")
            .await?;
        tracing::info!(subscription = %id, "subscription ended");
        return Ok(());
    }
    let (kind, events) = if !s.handshake_done {
        ("handshake", Vec::new())
    } else if s.events_since_start > s.delivered_through {
        let evs = state
            .store
            .subscription_events(
                id,
                s.delivered_through + 1,
                s.events_since_start,
                s.max_count.max(1),
            )
            .await?;
        if evs.is_empty() {
            // Cannot happen (undelivered events are never pruned); do not loop on it forever.
            tracing::error!(subscription = %id, from = s.delivered_through + 1, "subscriptions: undelivered events are missing");
            state
                .store
                .subscription_delivered(id, s.events_since_start, now)
                .await?;
            return Ok(());
        }
        ("event-notification", evs)
    } else if s.heartbeat_secs > 0 && s.last_sent_ms + s.heartbeat_secs * 1000 <= now {
        ("heartbeat", Vec::new())
    } else {
        return Ok(());
    };
    let through = events
        .last()
        .map_or(s.delivered_through, |e| e.event_number);
    let result = match notification(state, &s, kind, &events, &s.content).await {
        Ok(bundle) => post(state, &s, &bundle).await,
        Err(e) => Err(format!("building the notification failed: {e}")),
    };
    match result {
        Ok(()) => {
            state
                .store
                .subscription_delivered(id, through, wardwatch_proto::now_unix_ms())
                .await?;
            tracing::debug!(subscription = %id, kind, through, "subscription notification delivered");
        }
        Err(why) => {
            let cfg = &state.subscriptions.config;
            let delay = backoff_ms(cfg.retry_initial_ms, cfg.retry_max_ms, s.failures);
            let jitter = rand::rng().random_range(0.9..1.1);
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let delay = (delay as f64 * jitter) as i64;
            let next = wardwatch_proto::now_unix_ms() + delay.max(1);
            state.store.subscription_failed(id, &why, next).await?;
            tracing::warn!(subscription = %id, kind, failures = s.failures + 1, retry_in_ms = delay, error = %why, "subscription notification not delivered");
        }
    }
    Ok(())
}

/// POSTs `bundle` to the subscription's endpoint; `Err` with the reason unless the answer is 2xx.
async fn post(
    state: &ApiState,
    s: &SubscriptionRow,
    bundle: &serde_json::Value,
) -> Result<(), String> {
    // Checked again: the configuration may have narrowed since the subscription was created.
    let url = super::endpoint::validate_endpoint(&s.endpoint, &state.subscriptions.config)?;
    let mut req = state
        .subscriptions
        .http
        .post(url)
        .timeout(Duration::from_secs(
            u64::try_from(s.timeout_secs.max(1)).unwrap_or(10),
        ))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string());
    for h in &s.headers {
        if let Some((n, v)) = h.split_once(':') {
            req = req.header(n.trim(), v.trim());
        }
    }
    let resp = req.send().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        format!("no response from the endpoint: {msg}")
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered HTTP {}", status.as_u16()))
    }
}

/// The SubscriptionStatus (`Parameters`) of `s` reporting `events`.
pub(crate) fn status_parameters(
    state: &ApiState,
    s: &SubscriptionRow,
    kind: &str,
    events: &[SubscriptionEventRow],
    content: Option<&str>,
) -> Result<serde_json::Value, CloudError> {
    let with_focus = content.is_some_and(|c| c != "empty");
    let evs: Vec<NotificationEventRecord> = events
        .iter()
        .map(|e| NotificationEventRecord {
            number: u64::try_from(e.event_number).unwrap_or(0),
            timestamp_unix_ms: e.occurred_at_ms,
            focus: with_focus
                .then(|| format!("{}/{}/{}", state.base_url, e.focus_type, e.focus_id)),
        })
        .collect();
    let topic = Topic::from_id(&s.topic)
        .map(|t| t.canonical(&state.base_url))
        .unwrap_or_else(|| s.topic.clone());
    let url = format!("{}/Subscription/{}", state.base_url, s.id);
    wardwatch_fhir::subscription_status(&wardwatch_fhir::SubscriptionStatusRecord {
        subscription_url: &url,
        topic: &topic,
        status: &s.status,
        kind,
        events_since_start: u64::try_from(s.events_since_start).unwrap_or(0),
        events: &evs,
        error: s.error.as_deref().filter(|_| s.status == "error"),
    })
    .map_err(|e| CloudError::Unavailable(format!("subscription status cannot be built: {e}")))
}

/// A notification (or `$events` answer): a history Bundle with the status first, then the focus of each event
/// (the resource itself for `full-resource`, its URL only for `id-only`, nothing for `empty`).
pub(crate) async fn notification(
    state: &ApiState,
    s: &SubscriptionRow,
    kind: &str,
    events: &[SubscriptionEventRow],
    content: &str,
) -> Result<serde_json::Value, CloudError> {
    let status = status_parameters(state, s, kind, events, Some(content))?;
    let mut entries = Vec::new();
    if content != "empty" {
        for e in events {
            let resource = if content == "full-resource" {
                match crate::resources::read_resource(
                    &state.store,
                    &state.config,
                    &e.focus_type,
                    &e.focus_id,
                )
                .await
                {
                    Ok(r) => r,
                    Err(CloudError::NotSupported(_)) => None,
                    Err(err) => return Err(err),
                }
            } else {
                None
            };
            entries.push(NotificationEntry {
                full_url: format!("{}/{}/{}", state.base_url, e.focus_type, e.focus_id),
                request_url: format!("{}/{}", e.focus_type, e.focus_id),
                resource,
            });
        }
    }
    let mut suffix = [0u8; 8];
    rand::rng().fill(&mut suffix);
    wardwatch_fhir::notification_bundle(NotificationBundle {
        id: format!("{}-{}", s.id, hex::encode(suffix)),
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
        status,
        status_url: format!("{}/Subscription/{}/$status", state.base_url, s.id),
        entries,
    })
    .map_err(|e| CloudError::Unavailable(format!("notification cannot be built: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_but_never_stops() {
        assert_eq!(backoff_ms(1_000, 300_000, 0), 1_000);
        assert_eq!(backoff_ms(1_000, 300_000, 1), 2_000);
        assert_eq!(backoff_ms(1_000, 300_000, 5), 32_000);
        assert_eq!(backoff_ms(1_000, 300_000, 9), 300_000);
        assert_eq!(
            backoff_ms(1_000, 300_000, 10_000),
            300_000,
            "an hour of failures is still retried"
        );
    }
}
