//! MQTT source: bedside monitors, wearables and drip monitors publish JSON to a ward broker; this source
//! subscribes, decodes, normalizes, hands the events to [`EdgeNode::accept`] and acknowledges each message
//! (PUBACK) only once it is durable. Protocol, topics, payloads and the acknowledgement policy are documented in
//! `docs/mqtt.md`; the payload schemas are `docs/schemas/mqtt-vital.schema.json` and
//! `docs/schemas/mqtt-infusion.schema.json`.
//!
//! # Topics
//! `<prefix>/<ward>/<bed>/<device_id>/vitals` and `<prefix>/<ward>/<bed>/<device_id>/infusion`, subscribed as
//! `<prefix>/+/+/+/vitals` and `<prefix>/+/+/+/infusion` with QoS 1. The topic names the location and device; a
//! payload may repeat `ward`/`bed` but must then agree with the topic.
//!
//! # Acknowledgement policy (manual acks, QoS 1)
//! - PUBACK after `accept` returned `Ok` (every good event of the message is durable, duplicates included) and
//!   every refused part of it is durable in the dead-letter table.
//! - A malformed message (bad topic, oversized, not JSON, schema violation, location mismatch) is dead-lettered
//!   whole and then acknowledged: a poison message must not block the session.
//! - If `accept` fails (outbox full, database error) or the dead-letter write fails, the message is NOT
//!   acknowledged, nor is any other message of its batch (they share the transaction). The source waits (backoff), then drops and re-opens the connection: with `clean_session =
//!   false` the broker redelivers every unacknowledged message of the session, and the idempotency key
//!   (`mqtt:<device>:<metric|infusion>:<measured ms>`) collapses redeliveries in the outbox.
//! - A message delivered on a connection that has since been lost is processed but not acknowledged on the new
//!   connection (its packet id belongs to the old one); the broker has redelivered it on the new connection.
//!
//! # Tasks
//! [`MqttSource::run`] polls the rumqttc event loop itself (so PUBACKs, pings and reconnects keep flowing) and
//! forwards publishes, in order, to one worker task that decodes, accepts, dead-letters and acknowledges them in
//! batches: every message already waiting (never waiting for more) is made durable in one outbox transaction,
//! then the batch is acknowledged in delivery order (MQTT requires PUBACKs in delivery order). One commit (one
//! fsync) per batch instead of per message is what lets the edge keep up with a ward's message rate.

pub mod config;
pub mod dead_letter;
pub mod decode;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS, Request, Subscribe,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

pub use config::MqttSourceConfig;
pub use dead_letter::{DeadLetter, DeadLetterStore};
pub use decode::{DecodeError, decode};

use crate::config::ConfigError;
use crate::node::{AcceptError, EdgeNode};
use crate::outbox::OutboxError;

/// Capacity of rumqttc's request channel (acks and subscriptions waiting for the event loop).
const REQUEST_CHANNEL: usize = 256;

/// First reconnect / redelivery delay.
const BACKOFF_INITIAL_MS: u64 = 100;

/// Most messages made durable in one outbox transaction. A batch is whatever has already arrived (the worker never
/// waits to fill one), so under light load it is one message; under load the broker's in-flight window for the
/// edge (Mosquitto `max_inflight_messages`, default 20) usually bounds it first. This caps it when a large backlog
/// arrives at once, e.g. a resumed session.
const MAX_BATCH: usize = 512;

/// How long shutdown waits for the last PUBACKs and the DISCONNECT to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttSourceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dead-letter database could not be opened.
    #[error("cannot open the MQTT dead-letter store in {path}: {source}")]
    DeadLetter {
        /// Data directory.
        path: PathBuf,
        /// Cause.
        source: sqlx::Error,
    },
}

/// Counters of the MQTT source. Event counts (`accepted`, `duplicates`, `rejected`) are per sample / infusion
/// report; the others are per MQTT message unless noted.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// PUBLISH packets received from the broker (redeliveries included).
    pub received: AtomicU64,
    /// Events newly made durable in the outbox.
    pub accepted: AtomicU64,
    /// Events the outbox already held (same idempotency key: a redelivery or a re-publish).
    pub duplicates: AtomicU64,
    /// Samples or infusion reports refused (by decoding or at `accept`) and dead-lettered.
    pub rejected: AtomicU64,
    /// Messages refused whole (malformed, oversized, schema violation, bad topic, location mismatch).
    pub malformed: AtomicU64,
    /// Dead-letter rows written.
    pub dead_lettered: AtomicU64,
    /// PUBACKs handed to the client (QoS 0 deliveries need none and are not counted).
    pub acked: AtomicU64,
    /// Messages left unacknowledged because the outbox was full (the broker redelivers them).
    pub not_acked_outbox_full: AtomicU64,
    /// Messages left unacknowledged because of another storage error (outbox or dead-letter database).
    pub not_acked_errors: AtomicU64,
    /// Connection failures (lost connections and failed attempts) and connections dropped on purpose for a
    /// redelivery; each is followed by a reconnect attempt.
    pub reconnects: AtomicU64,
    /// Successful connections (CONNACK received).
    pub connects: AtomicU64,
    /// Subscription requests the broker granted (SUBACK without failure).
    pub subscriptions: AtomicU64,
    /// Batches handled (each one outbox transaction for all its messages); `received / batches` is the mean
    /// batch size, which shows whether the broker's in-flight window or the commit time bounds throughput.
    pub batches: AtomicU64,
}

/// A plain copy of [`MqttStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttStatsSnapshot {
    /// See [`MqttStats::received`].
    pub received: u64,
    /// See [`MqttStats::accepted`].
    pub accepted: u64,
    /// See [`MqttStats::duplicates`].
    pub duplicates: u64,
    /// See [`MqttStats::rejected`].
    pub rejected: u64,
    /// See [`MqttStats::malformed`].
    pub malformed: u64,
    /// See [`MqttStats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`MqttStats::acked`].
    pub acked: u64,
    /// See [`MqttStats::not_acked_outbox_full`].
    pub not_acked_outbox_full: u64,
    /// See [`MqttStats::not_acked_errors`].
    pub not_acked_errors: u64,
    /// See [`MqttStats::reconnects`].
    pub reconnects: u64,
    /// See [`MqttStats::connects`].
    pub connects: u64,
    /// See [`MqttStats::subscriptions`].
    pub subscriptions: u64,
    /// See [`MqttStats::batches`].
    pub batches: u64,
}

impl MqttStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> MqttStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttStatsSnapshot {
            received: g(&self.received),
            accepted: g(&self.accepted),
            duplicates: g(&self.duplicates),
            rejected: g(&self.rejected),
            malformed: g(&self.malformed),
            dead_lettered: g(&self.dead_lettered),
            acked: g(&self.acked),
            not_acked_outbox_full: g(&self.not_acked_outbox_full),
            not_acked_errors: g(&self.not_acked_errors),
            reconnects: g(&self.reconnects),
            connects: g(&self.connects),
            subscriptions: g(&self.subscriptions),
            batches: g(&self.batches),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Exponential backoff from [`BACKOFF_INITIAL_MS`] to a cap, with jitter (each delay is drawn from its upper
/// half).
#[derive(Debug)]
struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    fn new(max_ms: u64) -> Self {
        Self {
            next_ms: BACKOFF_INITIAL_MS.min(max_ms),
            max_ms,
        }
    }
    fn next(&mut self) -> Duration {
        let cap = self.next_ms;
        self.next_ms = self.next_ms.saturating_mul(2).min(self.max_ms);
        Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
    }
    fn reset(&mut self) {
        self.next_ms = BACKOFF_INITIAL_MS.min(self.max_ms);
    }
}

/// A publish handed from the event loop to the worker.
#[derive(Debug)]
struct Delivery {
    /// The packet (its id is needed for the PUBACK).
    publish: Publish,
    /// Connection generation it arrived on.
    generation: u64,
    /// When it arrived, Unix ms.
    received_at: i64,
}

/// What the worker does with a message after handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Everything durable (outbox or dead-letter table): acknowledge.
    Ack,
    /// Not durable: do not acknowledge; get the broker to redeliver.
    Hold,
}

/// State shared by the event-loop side and the worker.
#[derive(Debug)]
struct Shared {
    config: MqttSourceConfig,
    node: Arc<EdgeNode>,
    dead_letters: DeadLetterStore,
    stats: Arc<MqttStats>,
    /// Connection generation: incremented at every CONNACK and whenever a connection is lost or dropped, so a
    /// delivery is acknowledged only on the connection it arrived on.
    generation: AtomicU64,
}

/// The MQTT source, opened and ready to [`run`](MqttSource::run).
#[derive(Debug)]
pub struct MqttSource {
    config: MqttSourceConfig,
    node: Arc<EdgeNode>,
    dead_letters: DeadLetterStore,
    stats: Arc<MqttStats>,
}

impl MqttSource {
    /// Validates `config` and opens the dead-letter store in `data_dir` (the edge's data directory). Makes no
    /// network connection.
    pub async fn open(
        config: MqttSourceConfig,
        node: Arc<EdgeNode>,
        data_dir: &Path,
    ) -> Result<Self, MqttSourceError> {
        Self::open_with_stats(config, node, data_dir, Arc::default()).await
    }

    /// Like [`MqttSource::open`], but counts into `stats`, so a caller that hands the source to a task (as
    /// [`EdgeNode::run`] does) can still read its counters.
    pub async fn open_with_stats(
        config: MqttSourceConfig,
        node: Arc<EdgeNode>,
        data_dir: &Path,
        stats: Arc<MqttStats>,
    ) -> Result<Self, MqttSourceError> {
        config.validate()?;
        let dead_letters = DeadLetterStore::open(data_dir, config.dead_letter_max_rows)
            .await
            .map_err(|source| MqttSourceError::DeadLetter {
                path: data_dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            config,
            node,
            dead_letters,
            stats,
        })
    }

    /// The source's counters (live while it runs).
    pub fn stats(&self) -> &Arc<MqttStats> {
        &self.stats
    }

    /// The dead-letter store (for inspection).
    pub fn dead_letters(&self) -> &DeadLetterStore {
        &self.dead_letters
    }

    /// Connects, subscribes and processes messages until `shutdown` resolves, reconnecting with backoff whenever
    /// the connection fails. On shutdown the batch in hand is finished and acknowledged, then the client
    /// disconnects cleanly (the broker keeps the session when `clean_session = false`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let cfg = &self.config;
        if cfg.clean_session {
            warn!(
                "mqtt.clean_session = true: messages published while the edge is disconnected will be lost"
            );
        }
        let mut opts = MqttOptions::new(
            cfg.client_id.clone(),
            cfg.broker_host.clone(),
            cfg.broker_port,
        );
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs))
            .set_clean_session(cfg.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(cfg.transport_max_packet_bytes(), 64 << 10);
        if let Some(user) = &cfg.username {
            opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
        }
        let filters = cfg.subscriptions();
        let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            node: self.node,
            dead_letters: self.dead_letters,
            stats: self.stats,
            generation: AtomicU64::new(0),
        });
        let stats = shared.stats.clone();
        let (deliver_tx, deliver_rx) = mpsc::unbounded_channel();
        let (redeliver_tx, mut redeliver_rx) = mpsc::channel::<u64>(4);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut worker = tokio::spawn(worker(
            shared.clone(),
            client.clone(),
            deliver_rx,
            redeliver_tx,
            stop_rx,
        ));
        let mut shutdown = pin!(shutdown);
        let mut backoff = Backoff::new(cfg.reconnect_backoff_max_ms);
        let mut stopping = false;
        let mut connected = false;
        info!(broker = %cfg.broker_host, port = cfg.broker_port, client_id = %cfg.client_id, prefix = %cfg.topic_prefix, "MQTT source starting");
        loop {
            tokio::select! {
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
                res = &mut worker => {
                    if let Err(e) = res {
                        error!(error = %e, "MQTT worker task ended abnormally");
                    }
                    break;
                }
                Some(generation) = redeliver_rx.recv() => {
                    if connected && generation == shared.generation.load(Ordering::SeqCst) {
                        info!("dropping the MQTT connection so the broker redelivers unacknowledged messages");
                        // Drops the socket; queued PUBACKs are discarded (their messages come again).
                        eventloop.clean();
                        connected = false;
                        shared.generation.fetch_add(1, Ordering::SeqCst);
                        add(&stats.reconnects, 1);
                    }
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                        connected = true;
                        backoff.reset();
                        add(&stats.connects, 1);
                        info!(session_present = ack.session_present, generation, "connected to the MQTT broker");
                        if !ack.session_present && !cfg.clean_session && generation > 1 {
                            warn!("the broker did not resume the MQTT session: messages published while the edge was away may be lost");
                        }
                        // Subscribe on every connection: harmless when the session kept the subscriptions, and
                        // needed when it did not. Queued ahead of user requests.
                        eventloop.pending.push_back(Request::Subscribe(Subscribe::new_many(
                            filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                        )));
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        add(&stats.received, 1);
                        let d = Delivery {
                            publish,
                            generation: shared.generation.load(Ordering::SeqCst),
                            received_at: wardwatch_proto::now_unix_ms(),
                        };
                        // If the worker is gone (stopping) the message stays unacknowledged and comes again.
                        let _ = deliver_tx.send(d);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                            error!(filters = ?filters, codes = ?ack.return_codes, "the MQTT broker refused a subscription (check its ACL)");
                        } else {
                            add(&stats.subscriptions, 1);
                            debug!(filters = ?filters, "subscribed");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            // Deliveries of the lost connection must not be acknowledged on the next one.
                            shared.generation.fetch_add(1, Ordering::SeqCst);
                            connected = false;
                        }
                        add(&stats.reconnects, 1);
                        if stopping {
                            // Nothing more can be acknowledged; let the worker finish and leave.
                            match tokio::time::timeout(SHUTDOWN_FLUSH, &mut worker).await {
                                Ok(Err(e)) => error!(error = %e, "MQTT worker task ended abnormally"),
                                Ok(Ok(())) => {}
                                Err(_) => worker.abort(),
                            }
                            break;
                        }
                        let delay = backoff.next();
                        warn!(error = %e, delay_ms = delay.as_millis() as u64, "MQTT connection failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = &mut shutdown => {
                                stopping = true;
                                let _ = stop_tx.send(true);
                            }
                        }
                    }
                },
            }
        }
        if connected {
            // Flush the last PUBACKs, then DISCONNECT so the broker keeps the session without waiting for the
            // keep-alive to expire.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        shared.dead_letters.close().await;
        info!(stats = ?stats.snapshot(), "MQTT source stopped");
    }
}

/// Opens the source (see [`MqttSource::open`]) and runs it until `shutdown` resolves (see [`MqttSource::run`]).
/// Use [`MqttSource`] directly to read its [`MqttStats`] while it runs.
pub async fn run(
    config: MqttSourceConfig,
    node: Arc<EdgeNode>,
    data_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MqttSourceError> {
    MqttSource::open(config, node, data_dir)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

/// Processes deliveries in order, in batches, until told to stop: each batch is every delivery already waiting
/// (at most [`MAX_BATCH`]), made durable in one outbox transaction and then acknowledged in delivery order.
async fn worker(
    shared: Arc<Shared>,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    redeliver: mpsc::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hold_backoff = Backoff::new(shared.config.reconnect_backoff_max_ms);
    // Messages that arrived on this connection generation (or an older one) after one was held are left
    // unacknowledged: the reconnect we asked for makes the broker send them again.
    let mut held_generation: Option<u64> = None;
    let mut batch: Vec<Delivery> = Vec::new();
    loop {
        let d = tokio::select! {
            biased;
            _ = stop.changed() => break,
            d = rx.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        batch.clear();
        batch.push(d);
        // Take what is already waiting; never wait for more (batching must not add latency).
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        batch.retain(|d| held_generation.is_none_or(|g| d.generation > g));
        if batch.is_empty() {
            continue;
        }
        add(&shared.stats.batches, 1);
        match shared.handle(&batch).await {
            Outcome::Ack => {
                hold_backoff.reset();
                let current = shared.generation.load(Ordering::SeqCst);
                for d in &batch {
                    if d.generation != current {
                        debug!(topic = ?d.publish.topic, "connection changed since delivery; the broker redelivers, not acknowledging");
                    } else if let Err(e) = client.ack(&d.publish).await {
                        warn!(error = %e, "could not queue a PUBACK; the broker will redeliver");
                    } else if d.publish.qos != QoS::AtMostOnce {
                        add(&shared.stats.acked, 1);
                    }
                }
            }
            Outcome::Hold => {
                let generation = batch.iter().map(|d| d.generation).max().unwrap_or(0);
                held_generation = Some(generation);
                let delay = hold_backoff.next();
                warn!(
                    delay_ms = delay.as_millis() as u64,
                    messages = batch.len(),
                    "MQTT messages not acknowledged; reconnecting after a delay so the broker redelivers them"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
                let _ = redeliver.try_send(generation);
            }
        }
    }
}

/// A dead-letter row in the making: which delivery of the batch, which sample (`None`: the whole message), the
/// reason code and the detail.
type Refusal = (usize, Option<usize>, &'static str, String);

impl Shared {
    /// Decodes a batch of messages, accepts all their good samples in one outbox transaction and dead-letters the
    /// refused ones (one more transaction, only if there are any); says whether the whole batch may be
    /// acknowledged. The batch is acknowledged or held as a whole, so PUBACKs stay in delivery order.
    async fn handle(&self, batch: &[Delivery]) -> Outcome {
        let mut offered = Vec::with_capacity(batch.len());
        // (delivery, sample index) of each offered event.
        let mut origin: Vec<(usize, usize)> = Vec::with_capacity(batch.len());
        let mut refused: Vec<Refusal> = Vec::new();
        for (m, d) in batch.iter().enumerate() {
            let topic = d.publish.topic.as_str();
            let payload = &d.publish.payload[..];
            match decode(topic, payload, &self.config) {
                Ok(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        match item {
                            Ok(incoming) => {
                                origin.push((m, i));
                                offered.push(incoming);
                            }
                            Err(r) => refused.push((m, Some(i), r.reason.as_str_name(), r.detail)),
                        }
                    }
                }
                Err(e) => {
                    add(&self.stats.malformed, 1);
                    warn!(topic = ?clip(topic), bytes = payload.len(), reason = e.code(), error = %e, "MQTT message refused; dead-lettering it");
                    refused.push((m, None, e.code(), e.to_string()));
                }
            }
        }
        if !offered.is_empty() {
            match self.node.accept(offered).await {
                Ok(report) => {
                    add(&self.stats.accepted, report.accepted);
                    add(&self.stats.duplicates, report.duplicates);
                    if report.duplicates > 0 {
                        debug!(
                            messages = batch.len(),
                            duplicates = report.duplicates,
                            "already accepted (redelivery or re-publish)"
                        );
                    }
                    for (j, r) in report.rejected {
                        if let Some(&(m, i)) = origin.get(j) {
                            refused.push((m, Some(i), r.reason.as_str_name(), r.detail));
                        }
                    }
                }
                Err(e) => {
                    let n = batch.len() as u64;
                    if matches!(e, AcceptError::Outbox(OutboxError::Full { .. })) {
                        add(&self.stats.not_acked_outbox_full, n);
                    } else {
                        add(&self.stats.not_acked_errors, n);
                    }
                    error!(messages = n, error = %e, "MQTT messages not accepted; leaving them unacknowledged for redelivery");
                    return Outcome::Hold;
                }
            }
        }
        if refused.is_empty() {
            return Outcome::Ack;
        }
        refused.sort_by_key(|(m, i, _, _)| (*m, *i));
        let samples = refused.iter().filter(|(_, i, _, _)| i.is_some()).count();
        add(&self.stats.rejected, samples as u64);
        let mut rows = Vec::with_capacity(refused.len());
        for (m, i, reason, detail) in &refused {
            let Some(d) = batch.get(*m) else { continue };
            if let Some(i) = i {
                warn!(topic = ?clip(&d.publish.topic), sample = i, reason, detail = %detail, "MQTT sample refused; dead-lettering it");
            }
            rows.push(dead_letter::NewDeadLetter {
                topic: &d.publish.topic,
                payload: &d.publish.payload,
                sample_index: *i,
                reason,
                detail,
                received_at_unix_ms: d.received_at,
            });
        }
        match self.dead_letters.record(&rows).await {
            Ok(n) => {
                add(&self.stats.dead_lettered, n);
                Outcome::Ack
            }
            Err(e) => {
                add(&self.stats.not_acked_errors, batch.len() as u64);
                error!(error = %e, "cannot write the MQTT dead-letter table; leaving the messages unacknowledged");
                Outcome::Hold
            }
        }
    }
}

/// A topic shortened for logs (topics come from devices and may be long).
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
