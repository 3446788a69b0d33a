//! The sync task: streams the outbox to the cloud over mutual-TLS gRPC and deletes events once acknowledged.
//!
//! Each session: connect (TLS with this edge's client certificate), `Register` (the cloud says which sequence it
//! has processed through; everything up to it is dropped from the outbox), then one bidirectional `Sync` stream:
//! batches go out in sequence order with up to `max_in_flight` unacknowledged, acknowledgements come back in
//! order. Any failure ends the session; the task reconnects with exponential backoff and full jitter and resumes
//! after the last acknowledged sequence. Events are only ever deleted after an acknowledgement, so a crash on
//! either side costs at most a resend, which the cloud deduplicates.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};
use wardwatch_proto::v1::edge_sync_client::EdgeSyncClient;
use wardwatch_proto::v1::{RegisterRequest, RejectReason, SyncBatch};

use crate::config::EdgeConfig;
use crate::outbox::{Outbox, OutboxError};

/// Why a sync session ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Certificates or keys could not be read.
    #[error("TLS material: {0}")]
    Tls(String),
    /// Could not connect or the TLS handshake failed (includes refused certificates).
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect {
        /// Cloud endpoint.
        endpoint: String,
        /// Full cause chain.
        detail: String,
    },
    /// The cloud answered with an error status.
    #[error("cloud refused: {code:?}: {message}")]
    Refused {
        /// gRPC code.
        code: tonic::Code,
        /// Cloud's message.
        message: String,
    },
    /// The stream broke.
    #[error("sync stream ended: {0}")]
    Stream(String),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Counters the sync task keeps, for tests, benchmarks and operators.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Events the cloud acknowledged (stored, replayed or rejected).
    pub acked: AtomicU64,
    /// Events the cloud stored newly.
    pub stored: AtomicU64,
    /// Events the cloud rejected as bad (moved to the dead-letter table).
    pub rejected: AtomicU64,
    /// Events the cloud had already stored (resends after a lost acknowledgement).
    pub replayed: AtomicU64,
    /// Sessions started (connect attempts).
    pub sessions: AtomicU64,
    /// Whether a session is registered and streaming now.
    pub connected: AtomicBool,
    /// The last error that ended a session, for the operator.
    pub last_error: Mutex<Option<String>>,
    /// Milliseconds from "accepted at the edge" to "acknowledged by the cloud" (stored, replayed or rejected),
    /// one per acknowledged event (bounded; the oldest are dropped). Used by benchmarks for p99.
    pub latency_ms: Mutex<VecDeque<u32>>,
}

const LATENCY_KEEP: usize = 1 << 20;

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Builds the TLS channel to the cloud. Fails early and clearly when certificate files are missing.
pub async fn connect(cfg: &EdgeConfig) -> Result<Channel, SyncError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| SyncError::Tls(format!("{}: {e}", p.display())))
    };
    let ca = read(&cfg.cloud.ca_cert)?;
    let cert = read(&cfg.cloud.client_cert)?;
    let key = read(&cfg.cloud.client_key)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    if let Some(name) = &cfg.cloud.server_name {
        tls = tls.domain_name(name.clone());
    }
    let endpoint = Endpoint::from_shared(cfg.cloud.endpoint.clone())
        .map_err(|e| SyncError::Connect {
            endpoint: cfg.cloud.endpoint.clone(),
            detail: chain(&e),
        })?
        .tls_config(tls)
        .map_err(|e| SyncError::Tls(chain(&e)))?
        .connect_timeout(Duration::from_millis(cfg.sync.connect_timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint.connect().await.map_err(|e| SyncError::Connect {
        endpoint: cfg.cloud.endpoint.clone(),
        detail: chain(&e),
    })
}

fn status_err(s: tonic::Status) -> SyncError {
    // A refused client certificate shows up as a transport error inside the status: keep the whole chain.
    let mut message = s.message().to_string();
    if let Some(src) = std::error::Error::source(&s) {
        message.push_str(": ");
        message.push_str(&chain(src));
    }
    SyncError::Refused {
        code: s.code(),
        message,
    }
}

/// Runs sync sessions until `shutdown` resolves, reconnecting with backoff.
pub async fn run(
    cfg: EdgeConfig,
    outbox: Arc<Outbox>,
    stats: Arc<SyncStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    loop {
        stats.sessions.fetch_add(1, Ordering::Relaxed);
        let session = session(&cfg, &outbox, &stats, &mut attempt);
        let result = tokio::select! {
            r = session => r,
            () = &mut shutdown => {
                stats.connected.store(false, Ordering::Relaxed);
                info!("sync stopped");
                return;
            }
        };
        stats.connected.store(false, Ordering::Relaxed);
        let result = match result {
            Err(SyncError::Connect { endpoint, detail }) => Err(SyncError::Connect {
                endpoint,
                detail: match diagnose_tls(&cfg).await {
                    Some(d) => format!("{d} ({detail})"),
                    None => detail,
                },
            }),
            Err(SyncError::Refused { code, message })
                if code == tonic::Code::Unknown || code == tonic::Code::Unavailable =>
            {
                Err(SyncError::Refused {
                    code,
                    message: match diagnose_tls(&cfg).await {
                        Some(d) => format!("{d} ({message})"),
                        None => message,
                    },
                })
            }
            other => other,
        };
        if let Err(e) = result {
            warn!(error = %e, "sync session ended; will reconnect");
            if let Ok(mut last) = stats.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
        // Exponential backoff with full jitter (uniform in [0, cap]), reset by a successful acknowledgement.
        let cap = cfg
            .sync
            .backoff_initial_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(cfg.sync.backoff_max_ms);
        let delay = rand::rng().random_range(0..=cap);
        attempt = attempt.saturating_add(1);
        debug!(delay_ms = delay, attempt, "sync backoff");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay)) => {}
            () = &mut shutdown => { info!("sync stopped"); return; }
        }
    }
}

struct InFlight {
    batch_id: u64,
    last_seq: u64,
    accepted_at: Vec<i64>,
}

async fn session(
    cfg: &EdgeConfig,
    outbox: &Outbox,
    stats: &SyncStats,
    attempt: &mut u32,
) -> Result<(), SyncError> {
    let channel = connect(cfg).await?;
    let mut client = EdgeSyncClient::new(channel).max_decoding_message_size(16 << 20);
    let reg = client
        .register(RegisterRequest {
            edge_id: cfg.edge_id.to_string(),
            wards: cfg.wards.iter().map(ToString::to_string).collect(),
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let cloud_through = reg.acked_through_sequence;
    let local_through = outbox.acked_through().await?;
    if cloud_through > local_through {
        // The cloud processed events whose acknowledgement we never saw: drop them now.
        outbox.acknowledge(cloud_through, &[]).await?;
    }
    let batch_max = match reg.max_batch_events {
        0 => cfg.sync.batch_max_events,
        n => cfg.sync.batch_max_events.min(n as usize),
    };
    info!(edge = %reg.edge_id, wards = ?reg.wards, resume_after = cloud_through, "registered with cloud");

    let (tx, rx) = tokio::sync::mpsc::channel::<SyncBatch>(cfg.sync.max_in_flight);
    let mut acks = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(status_err)?
        .into_inner();
    stats.connected.store(true, Ordering::Relaxed);

    let mut cursor = cloud_through.max(local_through);
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut next_batch_id: u64 = 1;
    let mut maybe_more = true;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let can_send = in_flight.len() < cfg.sync.max_in_flight;
        tokio::select! {
            biased;
            msg = acks.message() => {
                let ack = match msg {
                    Ok(Some(ack)) => ack,
                    Ok(None) => return Err(SyncError::Stream("cloud closed the stream".into())),
                    Err(s) => return Err(status_err(s)),
                };
                let Some(front) = in_flight.pop_front() else {
                    return Err(SyncError::Stream(format!("acknowledgement for batch {} that was not sent", ack.batch_id)));
                };
                if ack.batch_id != front.batch_id || ack.acked_through_sequence != front.last_seq {
                    return Err(SyncError::Stream(format!(
                        "acknowledgement for batch {} through {} does not match batch {} through {}",
                        ack.batch_id, ack.acked_through_sequence, front.batch_id, front.last_seq)));
                }
                let mut dead = Vec::new();
                let mut replayed = 0u64;
                for r in &ack.rejected {
                    let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
                    if reason == RejectReason::Replayed {
                        replayed += 1;
                    } else {
                        warn!(sequence = r.sequence, ?reason, detail = %r.detail, "cloud rejected event; kept in dead-letter table");
                        dead.push((r.sequence, reason.as_str_name().to_string(), r.detail.clone()));
                    }
                }
                outbox.acknowledge(front.last_seq, &dead).await?;
                let n = front.accepted_at.len() as u64;
                stats.acked.fetch_add(n, Ordering::Relaxed);
                stats.stored.fetch_add(u64::from(ack.stored), Ordering::Relaxed);
                stats.rejected.fetch_add(dead.len() as u64, Ordering::Relaxed);
                stats.replayed.fetch_add(replayed, Ordering::Relaxed);
                let now = wardwatch_proto::now_unix_ms();
                if let Ok(mut lat) = stats.latency_ms.lock() {
                    for a in &front.accepted_at {
                        if lat.len() >= LATENCY_KEEP { lat.pop_front(); }
                        lat.push_back(u32::try_from((now - a).max(0)).unwrap_or(u32::MAX));
                    }
                }
                *attempt = 0;
            }
            () = outbox.wait_for_events(), if can_send && !maybe_more => { maybe_more = true; }
            _ = tick.tick(), if can_send && !maybe_more => { maybe_more = true; }
            () = std::future::ready(()), if can_send && maybe_more => {
                let events = outbox.read_after(cursor, batch_max).await?;
                maybe_more = events.len() == batch_max;
                let Some(last) = events.last() else { continue };
                let last_seq = last.sequence;
                let accepted_at = events.iter().map(|e| e.accepted_at_unix_ms).collect();
                let batch_id = next_batch_id;
                next_batch_id += 1;
                tx.send(SyncBatch { batch_id, events }).await
                    .map_err(|_| SyncError::Stream("request stream closed".into()))?;
                cursor = last_seq;
                in_flight.push_back(InFlight { batch_id, last_seq, accepted_at });
            }
        }
    }
}

/// Explains a failed connection in plain words by running one TLS handshake by hand: with TLS 1.3 the cloud
/// judges the client certificate after the client considers the handshake done, so the HTTP/2 layer often
/// sees only "broken pipe". Reading once after the handshake surfaces the cloud's alert (unknown CA, expired
/// certificate, ...), which is what an operator needs to see.
pub async fn diagnose_tls(cfg: &EdgeConfig) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;

    let ca = CertificateDer::pem_file_iter(&cfg.cloud.ca_cert)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).ok()?;
    }
    let chain = CertificateDer::pem_file_iter(&cfg.cloud.client_cert)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(&cfg.cloud.client_key).ok()?;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let url = cfg.cloud.endpoint.strip_prefix("https://")?;
    let authority = url.split('/').next()?;
    let host = cfg.cloud.server_name.clone().unwrap_or_else(|| {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    });
    let name = ServerName::try_from(host).ok()?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .ok()?
    .ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let mut stream =
        match tokio::time::timeout(Duration::from_secs(3), connector.connect(name, tcp))
            .await
            .ok()?
        {
            Ok(s) => s,
            Err(e) => return Some(format!("TLS handshake failed: {e}")),
        };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Err(e)) => Some(format!(
            "the cloud refused this edge's TLS certificate: {e}"
        )),
        _ => None,
    }
}
