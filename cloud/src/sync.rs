//! The `EdgeSync` gRPC service: edge registration and the bidirectional sync stream.
//!
//! Every call is authenticated by the client certificate (see [`crate::registry`]). Each batch is validated item
//! by item (a bad item is rejected with its reason; the rest is stored), stored exactly once in one transaction,
//! and acknowledged only after commit, in batch order.
//!
//! Up to `pipeline_depth` batches of one stream are stored concurrently, each in its own transaction, so that one
//! batch's commit overlaps the next batch's work. Acknowledgements still leave in batch order, and the edge's
//! acknowledged watermark ([`Store::advance_acked`]) moves only in that order: if batch k fails after batch k+1
//! committed, the stream ends before k+1 is acknowledged, the watermark stays below k, and the edge's resend of
//! k+1 is answered as a replay. Exactly-once never depends on the order of commits, only on the ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use wardwatch_proto::ids::WardId;
use wardwatch_proto::v1::edge_sync_server::EdgeSync;
use wardwatch_proto::v1::{
    ItemRejection, RegisterRequest, RegisterResponse, RejectReason, SyncAck, SyncBatch,
};
use wardwatch_proto::validate::{self, Rejection};

use crate::error::CloudError;
use crate::registry::{EdgeRegistry, RegisteredEdge};
use crate::storage::{IngestItem, Store, StoredKeys};

/// Counters of the sync service.
#[derive(Debug, Default)]
pub struct SyncServiceStats {
    /// Events stored.
    pub stored: AtomicU64,
    /// Events already stored, received again.
    pub replayed: AtomicU64,
    /// Events rejected, by `RejectReason` value (index).
    pub rejected: [AtomicU64; 8],
    /// Calls refused for authentication or authorization.
    pub refused_calls: AtomicU64,
}

impl SyncServiceStats {
    /// Rejections with `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The service implementation.
#[derive(Debug, Clone)]
pub struct SyncService {
    /// Where events go.
    store: Store,
    /// Who may connect.
    registry: Arc<EdgeRegistry>,
    /// Largest batch accepted.
    max_batch_events: u32,
    /// Batches of one stream stored concurrently (at least 1).
    pipeline_depth: usize,
    /// Counters.
    stats: Arc<SyncServiceStats>,
    /// Lookup-table keys already stored, so batches do not send them again (storage::StoredKeys).
    stored_keys: Arc<StoredKeys>,
}

impl SyncService {
    /// A service over `store` for the edges in `registry`.
    pub fn new(
        store: Store,
        registry: Arc<EdgeRegistry>,
        max_batch_events: u32,
        pipeline_depth: u32,
        stats: Arc<SyncServiceStats>,
    ) -> Self {
        Self {
            store,
            registry,
            max_batch_events,
            pipeline_depth: usize::try_from(pipeline_depth).unwrap_or(1).max(1),
            stats,
            stored_keys: Arc::default(),
        }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Arc<RegisteredEdge>, Status> {
        let certs = req.peer_certs();
        self.registry
            .authenticate(certs.as_deref().map(Vec::as_slice))
            .map_err(|e| {
                self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
                warn!(peer = ?req.remote_addr(), error = %e, "sync call refused");
                Status::from(e)
            })
    }
}

/// Validates a batch item by item: sequence order, envelope and payload, and the edge's right to the ward.
pub fn check_batch(edge: &RegisteredEdge, batch: SyncBatch) -> Vec<IngestItem> {
    let mut prev: Option<u64> = None;
    let mut out = Vec::with_capacity(batch.events.len());
    for e in batch.events {
        let outcome = if e.sequence == 0 {
            Err(Rejection::new(
                RejectReason::Invalid,
                "sequence 0 is not a valid sequence",
            ))
        } else if prev.is_some_and(|p| e.sequence <= p) {
            Err(Rejection::new(
                RejectReason::OutOfOrder,
                format!(
                    "sequence {} does not follow {} in the batch",
                    e.sequence,
                    prev.unwrap_or(0)
                ),
            ))
        } else {
            validate::event(&e).and_then(|ward: WardId| {
                if edge.wards.contains(&ward) {
                    Ok(())
                } else {
                    Err(Rejection::new(
                        RejectReason::WardNotPermitted,
                        format!("edge {} is not registered for ward {ward}", edge.edge_id),
                    ))
                }
            })
        };
        prev = Some(prev.map_or(e.sequence, |p| p.max(e.sequence)));
        let key = if e.idempotency_key.is_empty()
            || e.idempotency_key.len() > validate::MAX_IDEMPOTENCY_KEY
        {
            // Keep the ledger's key unique and bounded even for an invalid item.
            format!("invalid-key-seq-{}", e.sequence)
        } else {
            e.idempotency_key
        };
        let outcome = match (outcome, e.payload) {
            (Ok(()), Some(p)) => Ok(p),
            (Ok(()), None) => Err(Rejection::new(
                RejectReason::Invalid,
                "event has no payload",
            )),
            (Err(r), _) => Err(r),
        };
        out.push(IngestItem {
            sequence: e.sequence,
            idempotency_key: key,
            outcome,
        });
    }
    out
}

#[tonic::async_trait]
impl EdgeSync for SyncService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let edge = self.authenticate(&req)?;
        let body = req.into_inner();
        if body.edge_id != edge.edge_id.as_str() {
            self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
            warn!(edge = %edge.edge_id, claimed = %body.edge_id, "edge id in Register does not match the certificate");
            return Err(CloudError::PermissionDenied(format!(
                "edge id {:?} does not match the certificate identity {}",
                body.edge_id, edge.identity_uri
            ))
            .into());
        }
        let foreign: Vec<&String> = body
            .wards
            .iter()
            .filter(|w| {
                !edge
                    .wards
                    .iter()
                    .any(|allowed| allowed.as_str() == w.as_str())
            })
            .collect();
        if !foreign.is_empty() {
            self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
            warn!(edge = %edge.edge_id, ?foreign, "edge asked for wards it is not registered for");
            return Err(CloudError::PermissionDenied(format!(
                "edge {} is not registered for ward(s) {foreign:?}",
                edge.edge_id
            ))
            .into());
        }
        let mut wards: Vec<String> = edge.wards.iter().map(ToString::to_string).collect();
        wards.sort();
        self.store
            .upsert_edge(edge.edge_id.as_str(), &edge.identity_uri, &wards)
            .await
            .map_err(CloudError::from)?;
        let acked = self
            .store
            .acked_through(edge.edge_id.as_str())
            .await
            .map_err(CloudError::from)?;
        info!(edge = %edge.edge_id, version = %body.software_version, acked_through = acked, "edge registered");
        Ok(Response::new(RegisterResponse {
            edge_id: edge.edge_id.to_string(),
            wards,
            acked_through_sequence: acked,
            max_batch_events: self.max_batch_events,
        }))
    }

    type SyncStream = ReceiverStream<Result<SyncAck, Status>>;

    async fn sync(
        &self,
        req: Request<Streaming<SyncBatch>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let edge = self.authenticate(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // Batches being stored, in arrival order; the bound is the pipeline depth (backpressure on the stream).
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::channel::<
            tokio::task::JoinHandle<Result<SyncAck, Status>>,
        >(self.pipeline_depth);
        let reader_service = self.clone();
        let reader_edge = edge.clone();
        let reader = tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(s) => {
                        info!(edge = %reader_edge.edge_id, status = %s, "sync stream ended by edge");
                        break;
                    }
                };
                let service = reader_service.clone();
                let edge = reader_edge.clone();
                let job = tokio::spawn(async move { service.process(&edge, batch).await });
                if jobs_tx.send(job).await.is_err() {
                    break;
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(job) = jobs_rx.recv().await {
                let mut result = job.await.unwrap_or_else(|e| {
                    Err(Status::from(CloudError::Unavailable(format!(
                        "batch task failed: {e}"
                    ))))
                });
                if let Ok(ack) = &result {
                    // In batch order: every batch up to this one is stored.
                    if let Err(e) = this
                        .store
                        .advance_acked(edge.edge_id.as_str(), ack.acked_through_sequence)
                        .await
                    {
                        warn!(edge = %edge.edge_id, error = %e, "acknowledged watermark not advanced; edge will resend");
                        result = Err(Status::from(CloudError::from(e)));
                    }
                }
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
            // Stop reading: nothing more is acknowledged on this stream.
            reader.abort();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl SyncService {
    /// A resend of an event whose first claim rejected it (the edge lost that answer) gets the original
    /// rejection again, not "replayed": the edge must dead-letter it, not count it as stored. Rewrites those
    /// entries of `rejected` in place and returns how many it rewrote.
    async fn answer_earlier_rejections(
        &self,
        edge: &RegisteredEdge,
        rejected: &mut [ItemRejection],
    ) -> Result<u64, Status> {
        let replays: Vec<u64> = rejected
            .iter()
            .filter(|r| r.reason == RejectReason::Replayed as i32)
            .map(|r| r.sequence)
            .collect();
        let earlier = self
            .store
            .earlier_rejections(edge.edge_id.as_str(), &replays)
            .await
            .map_err(|e| Status::from(CloudError::from(e)))?;
        if earlier.is_empty() {
            return Ok(0);
        }
        let by_seq: std::collections::HashMap<u64, &str> = earlier
            .iter()
            .map(|e| (e.sequence, e.reason.as_str()))
            .collect();
        let mut n = 0;
        for r in rejected
            .iter_mut()
            .filter(|r| r.reason == RejectReason::Replayed as i32)
        {
            if let Some(text) = by_seq.get(&r.sequence) {
                let reason = reason_from_ledger(text);
                warn!(edge = %edge.edge_id, sequence = r.sequence, reason = ?reason, "resent event was rejected before; rejection repeated");
                r.reason = reason as i32;
                r.detail = format!("rejected when first received: {text}");
                n += 1;
            }
        }
        Ok(n)
    }

    async fn process(&self, edge: &RegisteredEdge, batch: SyncBatch) -> Result<SyncAck, Status> {
        let batch_id = batch.batch_id;
        if batch.events.len() > self.max_batch_events as usize {
            return Err(CloudError::ResourceExhausted(format!(
                "batch {batch_id} has {} events; at most {} are accepted",
                batch.events.len(),
                self.max_batch_events
            ))
            .into());
        }
        let through = batch.events.iter().map(|e| e.sequence).max().unwrap_or(0);
        let items = check_batch(edge, batch);
        let outcome = self
            .store
            .ingest_with(edge.edge_id.as_str(), &items, &self.stored_keys)
            .await
            .map_err(|e| {
            warn!(edge = %edge.edge_id, batch_id, error = %e, "batch not stored; edge will resend");
            Status::from(CloudError::from(e))
        })?;
        let mut rejected = Vec::new();
        let mut replayed = 0u64;
        for (i, it) in items.iter().enumerate() {
            let claimed = outcome.claimed.get(i).copied().unwrap_or(false);
            match &it.outcome {
                // An out-of-order item reports its own reason whether or not it collided in the ledger.
                Err(r) if claimed || r.reason == RejectReason::OutOfOrder => {
                    if let Some(c) = self.stats.rejected.get(r.reason as usize) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    warn!(edge = %edge.edge_id, sequence = it.sequence, reason = ?r.reason, detail = %r.detail, "event rejected");
                    rejected.push(ItemRejection {
                        sequence: it.sequence,
                        reason: r.reason as i32,
                        detail: r.detail.clone(),
                    });
                }
                Ok(_) if claimed => {}
                _ => {
                    replayed += 1;
                    rejected.push(ItemRejection {
                        sequence: it.sequence,
                        reason: RejectReason::Replayed as i32,
                        detail: "already processed; not stored again".into(),
                    });
                }
            }
        }
        if replayed > 0 {
            replayed -= self.answer_earlier_rejections(edge, &mut rejected).await?;
            info!(edge = %edge.edge_id, batch_id, replayed, "replayed events acknowledged without storing");
        }
        self.stats
            .stored
            .fetch_add(u64::from(outcome.stored), Ordering::Relaxed);
        self.stats.replayed.fetch_add(replayed, Ordering::Relaxed);
        Ok(SyncAck {
            batch_id,
            acked_through_sequence: through,
            stored: outcome.stored,
            rejected,
        })
    }
}

/// The reason of a ledger rejection text (`<RejectReason variant>: <detail>`, as the ingest records it).
/// Unknown text maps to `Invalid`: it is still a rejection, never a replay.
fn reason_from_ledger(text: &str) -> RejectReason {
    let name = text.split(':').next().unwrap_or("").trim();
    (0..=i32::from(u8::MAX))
        .filter_map(|i| RejectReason::try_from(i).ok())
        .find(|r| {
            format!("{r:?}") == name
                && *r != RejectReason::Replayed
                && *r != RejectReason::Unspecified
        })
        .unwrap_or(RejectReason::Invalid)
}

#[cfg(test)]
mod ledger_reason_tests {
    use super::*;

    #[test]
    fn ledger_reason_text_maps_back_to_its_reason() {
        assert_eq!(
            reason_from_ledger("UnknownMetric: mdc 1234"),
            RejectReason::UnknownMetric
        );
        assert_eq!(
            reason_from_ledger("NotFinite: value is NaN"),
            RejectReason::NotFinite
        );
        assert_eq!(
            reason_from_ledger("WardNotPermitted: 9Z"),
            RejectReason::WardNotPermitted
        );
        // A rejection never turns into a replay, whatever the text says.
        assert_eq!(reason_from_ledger("Replayed: x"), RejectReason::Invalid);
        assert_eq!(reason_from_ledger("garbage"), RejectReason::Invalid);
    }
}
