//! The edge node: the one place sources hand events to, and the owner of the outbox and the sync task.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{error, info, warn};
use wardwatch_proto::v1::{
    Alarm, AlarmKind, AlarmPriority, AlarmState, BedLocation, EdgeEvent, RejectReason,
    edge_event::Payload,
};
use wardwatch_proto::validate::{self, Rejection};

use crate::clinical::engine::{ClinicalEngine, ModelStatusView};
use crate::clinical::task::SharedEngine;
use crate::config::EdgeConfig;
use crate::outbox::{BudgetState, NewEvent, Outbox, OutboxError};
use crate::sync::{self, SyncStats};

/// Why an accept call failed as a whole (nothing of it was accepted).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The outbox is at its disk budget: the source must be told and retry later.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Why an edge node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The nurse station's TLS material could not be loaded (or its config is invalid).
    #[error(transparent)]
    Station(#[from] crate::station::StationError),
    /// The nurse station could not bind its address.
    #[error("cannot bind the nurse station on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// An event offered by a source: its idempotency key (derived from the source message) and payload.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Unique per source message.
    pub idempotency_key: String,
    /// What the message says.
    pub payload: Payload,
}

/// The outcome of offering events: accepted ones are durable; rejected ones are listed with their reason.
#[derive(Debug, Default)]
pub struct AcceptReport {
    /// Newly durable events.
    pub accepted: u64,
    /// Events already accepted earlier (same idempotency key).
    pub duplicates: u64,
    /// (index in the offered slice, reason) for each refused event.
    pub rejected: Vec<(usize, Rejection)>,
}

/// Counters of the accept path.
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Events made durable.
    pub accepted: AtomicU64,
    /// Events refused at the door as invalid.
    pub rejected: AtomicU64,
    /// Events refused because the outbox was full.
    pub refused_full: AtomicU64,
    /// Outbox transactions committed (one per successful `accept` call with valid events), so callers can see how
    /// well events are batched: each is one commit, one fsync.
    pub transactions: AtomicU64,
}

/// A running edge node.
#[derive(Debug)]
pub struct EdgeNode {
    /// Validated configuration.
    config: EdgeConfig,
    /// Where accepted events wait for the cloud.
    outbox: Arc<Outbox>,
    /// Sync task counters.
    sync_stats: Arc<SyncStats>,
    /// Accept path counters.
    accept_stats: AcceptStats,
    /// Whether the outbox-near-full technical alarm is currently raised (so it is raised and cleared once).
    near_full_raised: AtomicBool,
    /// Every batch of newly durable events, for the clinical engine and other local consumers. Sent only after
    /// commit, so consumers never act on data that could still be lost.
    accepted_tx: tokio::sync::broadcast::Sender<Arc<Vec<NewEvent>>>,
    /// The clinical engine (NEWS2, thresholds, infusion safety, alarms), shared with the nurse station.
    engine: SharedEngine,
    /// The nurse station's listener, bound at start so its address is known; taken by `run`.
    station_listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
    /// The nurse station's address, if served.
    station_addr: Option<std::net::SocketAddr>,
    /// The nurse station's users, sessions, TLS and counters, prepared at start (before binding), if served.
    station: Option<Arc<crate::station::Station>>,
    /// The HL7 MLLP listener, bound at start; taken by `run`.
    hl7_listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
    /// The HL7 listener's address, if served.
    hl7_addr: Option<std::net::SocketAddr>,
    /// HL7 source counters.
    hl7_stats: Arc<crate::sources::hl7::Hl7Stats>,
    /// MQTT source counters (zero when no MQTT source is configured); the source itself lives in `run`'s task,
    /// so the node keeps the counters for the nurse station, tests and benchmarks.
    mqtt_stats: Arc<crate::sources::mqtt::MqttStats>,
    /// Alarm state changes as the clinical engine makes them, before they are committed (their durable record
    /// follows through `accept`): for live consumers that should not wait for the commit, such as a display or a
    /// latency measurement. Nothing is sent while nobody subscribes.
    alarm_changes: tokio::sync::broadcast::Sender<Alarm>,
    /// Makes `accept` calls write to the outbox one at a time, in arrival order (tokio's mutex is FIFO). SQLite
    /// has one writer; without this, a second writer (the clinical engine's output beside an MQTT batch) waits in
    /// SQLite's busy handler, which sleeps in growing steps (1, 2, 5, 10, 15, 20, 25, … ms) and can lose the race
    /// to the next batch again and again: that was the tail of the sample-to-alarm latency under load.
    append_lock: tokio::sync::Mutex<()>,
    /// The engine's subscription, made at start so no event accepted before `run` is missed; taken by `run`.
    engine_rx: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<Arc<Vec<NewEvent>>>>>,
    /// The edge models as loaded at start (none if not configured or refused; see `ml::runtime`).
    models: Arc<crate::ml::runtime::EdgeModels>,
}

impl EdgeNode {
    /// Opens the outbox. Nothing is bound and no connection is made until [`EdgeNode::run`].
    pub async fn start(config: EdgeConfig) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let outbox = Arc::new(
            Outbox::open(
                &config.data_dir,
                config.outbox.max_bytes,
                config.outbox.near_full_ratio,
            )
            .await?
            .with_key_retention(std::time::Duration::from_secs(
                config.outbox.key_retention_secs,
            )),
        );
        info!(edge = %config.edge_id, pending = outbox.pending().await?, "edge outbox open");
        let mut engine = ClinicalEngine::new(config.engine.clone(), config.edge_id.as_str());
        // The models load (read, verify, compile) on a blocking thread; a refused model leaves the edge running
        // without it (NEWS2 and threshold alarms do not depend on it), and says so.
        let models = match config.engine.models.clone() {
            Some(cfg) => tokio::task::spawn_blocking(move || {
                crate::ml::runtime::EdgeModels::load(&cfg)
            })
            .await
            .unwrap_or_else(|e| {
                error!(error = %e, "loading the edge models panicked; running without them");
                crate::ml::runtime::EdgeModels::default()
            }),
            None => crate::ml::runtime::EdgeModels::default(),
        };
        engine.set_models(models.settings(), models.status().to_vec());
        if config.engine.models.is_some() && models.degraded() {
            raise_models_unavailable(&outbox, &config, &models.status()).await;
        }
        let engine = Arc::new(std::sync::Mutex::new(engine));
        // Users and TLS material are checked and loaded before the station's port is bound.
        let station = config
            .station
            .as_ref()
            .map(crate::station::Station::prepare)
            .transpose()?
            .map(Arc::new);
        let (station_listener, station_addr) = match &config.station {
            Some(st) => {
                let l = tokio::net::TcpListener::bind(st.listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: st.listen,
                        source,
                    })?;
                let addr = l.local_addr().map_err(|source| StartError::Bind {
                    addr: st.listen,
                    source,
                })?;
                (Some(l), Some(addr))
            }
            None => (None, None),
        };
        let (hl7_listener, hl7_addr) = match &config.hl7_mllp {
            Some(h) => {
                let l = crate::sources::hl7::bind(h)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: h.listen,
                        source,
                    })?;
                let addr = l.local_addr().map_err(|source| StartError::Bind {
                    addr: h.listen,
                    source,
                })?;
                (Some(l), Some(addr))
            }
            None => (None, None),
        };
        let (accepted_tx, accepted_rx) = tokio::sync::broadcast::channel(4096);
        Ok(Arc::new(Self {
            engine,
            station_listener: std::sync::Mutex::new(station_listener),
            station_addr,
            station,
            config,
            outbox,
            sync_stats: Arc::new(SyncStats::default()),
            accept_stats: AcceptStats::default(),
            near_full_raised: AtomicBool::new(false),
            engine_rx: std::sync::Mutex::new(Some(accepted_rx)),
            hl7_listener: std::sync::Mutex::new(hl7_listener),
            hl7_addr,
            hl7_stats: Arc::new(crate::sources::hl7::Hl7Stats::default()),
            mqtt_stats: Arc::default(),
            append_lock: tokio::sync::Mutex::new(()),
            alarm_changes: tokio::sync::broadcast::channel(1024).0,
            accepted_tx,
            models: Arc::new(models),
        }))
    }

    /// Runs the sync task, the clinical engine and (if configured) the nurse station until `shutdown`
    /// resolves, then stops them and closes the outbox.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let engine_rx = self
            .engine_rx
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .unwrap_or_else(|| self.subscribe());
        let engine_task = tokio::spawn(crate::clinical::task::run(
            self.clone(),
            self.engine.clone(),
            engine_rx,
            stopped(stop_rx.clone()),
        ));
        let hl7_task = self
            .hl7_listener
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .zip(self.config.hl7_mllp.clone())
            .map(|(l, cfg)| {
                tokio::spawn(crate::sources::hl7::run(
                    cfg,
                    self.clone(),
                    l,
                    self.hl7_stats.clone(),
                    stopped(stop_rx.clone()),
                ))
            });
        let mqtt_task = self.config.mqtt.clone().map(|cfg| {
            let node = self.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                let dir = node.config.data_dir.clone();
                let stats = node.mqtt_stats.clone();
                match crate::sources::mqtt::MqttSource::open_with_stats(cfg, node, &dir, stats)
                    .await
                {
                    Ok(src) => src.run(stop).await,
                    Err(e) => error!(error = %e, "MQTT source not started"),
                }
            })
        });
        // Model updates from the cloud's registry (issue 5), if `[engine.models] pull_interval_secs` is set.
        let pull_task = self
            .config
            .engine
            .models
            .as_ref()
            .and_then(|m| m.pull_interval_secs)
            .map(|secs| {
                tokio::spawn(crate::ml::pull::run(
                    self.clone(),
                    std::time::Duration::from_secs(secs),
                    stopped(stop_rx.clone()),
                ))
            });
        let listener = self.station_listener.lock().ok().and_then(|mut l| l.take());
        let station_task = listener.zip(self.station.clone()).map(|(l, station)| {
            tokio::spawn(crate::station::run(
                l,
                station,
                self.clone(),
                self.engine.clone(),
                stopped(stop_rx.clone()),
            ))
        });
        sync::run(
            self.config.clone(),
            self.outbox.clone(),
            self.sync_stats.clone(),
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = engine_task.await;
        if let Some(t) = hl7_task {
            let _ = t.await;
        }
        if let Some(t) = mqtt_task {
            let _ = t.await;
        }
        if let Some(t) = station_task {
            let _ = t.await;
        }
        if let Some(t) = pull_task {
            let _ = t.await;
        }
        self.outbox.close().await;
    }

    /// The clinical engine.
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// The edge models (what runs, and why a model does not).
    pub fn models(&self) -> &Arc<crate::ml::runtime::EdgeModels> {
        &self.models
    }

    /// Where the HL7 MLLP listener listens, if served.
    pub fn hl7_addr(&self) -> Option<std::net::SocketAddr> {
        self.hl7_addr
    }

    /// HL7 source counters.
    pub fn hl7_stats(&self) -> &Arc<crate::sources::hl7::Hl7Stats> {
        &self.hl7_stats
    }

    /// MQTT source counters (all zero when no MQTT source is configured).
    pub fn mqtt_stats(&self) -> &Arc<crate::sources::mqtt::MqttStats> {
        &self.mqtt_stats
    }

    /// Where the nurse station listens, if served.
    pub fn station_addr(&self) -> Option<std::net::SocketAddr> {
        self.station_addr
    }

    /// The nurse station's sign-in and refusal counters, if served.
    pub fn station_stats(&self) -> Option<&Arc<crate::station::StationStats>> {
        self.station.as_ref().map(|s| s.stats())
    }

    /// The node's configuration.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// The outbox (for inspection and tests).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Sync counters.
    pub fn sync_stats(&self) -> &Arc<SyncStats> {
        &self.sync_stats
    }

    /// Accept-path counters.
    pub fn accept_stats(&self) -> &AcceptStats {
        &self.accept_stats
    }

    /// Validates `events` and makes the valid ones durable in one transaction. Returns after commit: the caller
    /// may acknowledge its source for every event not listed as rejected. Fails as a whole (nothing accepted)
    /// only when the outbox cannot take them.
    pub async fn accept(&self, events: Vec<Incoming>) -> Result<AcceptReport, AcceptError> {
        let now = wardwatch_proto::now_unix_ms();
        let mut report = AcceptReport::default();
        let mut good = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let probe = EdgeEvent {
                sequence: 0,
                idempotency_key: e.idempotency_key,
                accepted_at_unix_ms: now,
                payload: Some(e.payload),
            };
            let checked = validate::event(&probe).and_then(|ward| {
                if self.config.wards.contains(&ward) {
                    Ok(())
                } else {
                    Err(Rejection::new(
                        RejectReason::WardNotPermitted,
                        format!("ward {ward} is not served by this edge"),
                    ))
                }
            });
            match (checked, probe.payload) {
                (Ok(()), Some(payload)) => good.push(NewEvent {
                    idempotency_key: probe.idempotency_key,
                    accepted_at_unix_ms: now,
                    payload,
                }),
                (Err(r), _) => {
                    warn!(index = i, key = %probe.idempotency_key, reason = ?r.reason, detail = %r.detail, "event rejected at the edge");
                    report.rejected.push((i, r));
                }
                (Ok(()), None) => {}
            }
        }
        self.accept_stats
            .rejected
            .fetch_add(report.rejected.len() as u64, Ordering::Relaxed);
        // Held through the broadcast, so consumers see batches in commit order.
        let writing = self.append_lock.lock().await;
        let appended = self.outbox.append(&good, false).await;
        match appended {
            Ok(outcome) => {
                if !good.is_empty() {
                    self.accept_stats
                        .transactions
                        .fetch_add(1, Ordering::Relaxed);
                }
                report.accepted = outcome.accepted;
                report.duplicates = outcome.duplicates;
                self.accept_stats
                    .accepted
                    .fetch_add(outcome.accepted, Ordering::Relaxed);
                if !good.is_empty() && self.accepted_tx.receiver_count() > 0 {
                    // Consumers (the clinical engine) see events only once durable. A lagging consumer is
                    // told by the channel; storage is unaffected.
                    let _ = self.accepted_tx.send(Arc::new(good));
                }
                drop(writing);
            }
            Err(e) => {
                drop(writing);
                if matches!(e, OutboxError::Full { .. }) {
                    self.accept_stats
                        .refused_full
                        .fetch_add(good.len() as u64, Ordering::Relaxed);
                    error!(error = %e, refused = good.len(), "outbox full: events refused, sources told to retry");
                }
                self.check_budget().await;
                return Err(e.into());
            }
        }
        self.check_budget().await;
        Ok(report)
    }

    /// Raises (once) or clears the technical alarm for the outbox nearing its budget.
    async fn check_budget(&self) {
        let near = self.outbox.budget_state() == BudgetState::NearFull;
        if near == self.near_full_raised.load(Ordering::Relaxed) {
            return;
        }
        self.near_full_raised.store(near, Ordering::Relaxed);
        let now = wardwatch_proto::now_unix_ms();
        let (state, message) = if near {
            (
                AlarmState::Raised,
                format!(
                    "Edge outbox at {} of {} bytes: the cloud link may be down; data is kept but the budget is nearly used",
                    self.outbox.used_bytes(),
                    self.outbox.budget_bytes()
                ),
            )
        } else {
            (
                AlarmState::Cleared,
                "Edge outbox back below its near-full threshold".to_string(),
            )
        };
        if near {
            warn!(
                used = self.outbox.used_bytes(),
                budget = self.outbox.budget_bytes(),
                "technical alarm: outbox near full"
            );
        } else {
            info!("technical alarm cleared: outbox below near-full threshold");
        }
        let alarm = technical_alarm(
            &self.config,
            "outbox-near-full",
            AlarmKind::OutboxNearFull,
            AlarmPriority::Medium,
            state,
            message,
            now,
        );
        let event = NewEvent {
            idempotency_key: format!(
                "{}-outbox-near-full-{now}-{}",
                self.config.edge_id, state as i32
            ),
            accepted_at_unix_ms: now,
            payload: Payload::Alarm(alarm),
        };
        if let Err(e) = self.outbox.append(&[event], true).await {
            error!(error = %e, "could not record the outbox technical alarm");
        }
    }

    /// Subscribes to batches of newly durable events.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<NewEvent>>> {
        self.accepted_tx.subscribe()
    }

    /// Subscribes to alarm state changes as the engine makes them, before they are durable (see
    /// [`EdgeNode::subscribe`] for durable events). A receiver more than 1,024 changes behind is told it lagged.
    pub fn subscribe_alarm_changes(&self) -> tokio::sync::broadcast::Receiver<Alarm> {
        self.alarm_changes.subscribe()
    }

    /// Hands the alarm state changes among `produced` to live subscribers; the engine's output path calls this
    /// just before it makes them durable.
    pub(crate) fn announce_alarm_changes(&self, produced: &[Payload]) {
        if self.alarm_changes.receiver_count() == 0 {
            return;
        }
        for p in produced {
            if let Payload::Alarm(a) = p {
                let _ = self.alarm_changes.send(a.clone());
            }
        }
    }

    /// Whether the outbox-near-full technical alarm is raised.
    pub fn outbox_near_full(&self) -> bool {
        self.near_full_raised.load(Ordering::Relaxed)
    }
}

/// A technical alarm of this edge (no patient; the edge's first ward), `{edge_id}-{id_suffix}`: the outbox nearing
/// its budget, models that did not load, a refused model update.
pub(crate) fn technical_alarm(
    config: &EdgeConfig,
    id_suffix: &str,
    kind: AlarmKind,
    priority: AlarmPriority,
    state: AlarmState,
    message: String,
    now_ms: i64,
) -> Alarm {
    Alarm {
        alarm_id: format!("{}-{id_suffix}", config.edge_id),
        kind: kind as i32,
        priority: priority as i32,
        state: state as i32,
        patient_id: String::new(),
        location: Some(BedLocation {
            ward: config
                .wards
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            bed: String::new(),
        }),
        device_id: String::new(),
        message,
        changed_at_unix_ms: now_ms,
        changed_by: "system".into(),
    }
}

/// Records the technical alarm for configured edge models that did not load (LOW priority: NEWS2 and the
/// threshold alarms do not depend on them). Raised once per start; the status stays visible on the nurse station.
async fn raise_models_unavailable(
    outbox: &Outbox,
    config: &EdgeConfig,
    status: &[ModelStatusView],
) {
    let now = wardwatch_proto::now_unix_ms();
    let refused: Vec<String> = status
        .iter()
        .filter(|s| !s.running)
        .map(|s| format!("{}: {}", s.model, s.detail))
        .collect();
    let message = format!(
        "Edge models not running ({}); NEWS2 and threshold alarms continue",
        refused.join("; ")
    );
    warn!(%message, "technical alarm: edge models unavailable");
    let alarm = technical_alarm(
        config,
        "models-unavailable",
        AlarmKind::ModelUnavailable,
        AlarmPriority::Low,
        AlarmState::Raised,
        message,
        now,
    );
    let event = NewEvent {
        idempotency_key: format!("{}-models-unavailable-{now}", config.edge_id),
        accepted_at_unix_ms: now,
        payload: Payload::Alarm(alarm),
    };
    if let Err(e) = outbox.append(&[event], true).await {
        error!(error = %e, "could not record the models-unavailable technical alarm");
    }
}
