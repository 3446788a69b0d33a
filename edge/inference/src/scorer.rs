//! [`Scorer`]: async scoring that never blocks the async runtime.
//!
//! Inference is CPU-bound (microseconds to milliseconds per batch), so it runs on one dedicated OS thread per slot,
//! fed through a bounded channel; async callers `.await` a oneshot reply. A dedicated thread rather than
//! `spawn_blocking` because it keeps tract's per-plan run state warm between calls and because it naturally
//! *batches across beds*: when it wakes up it drains every request already queued (up to
//! [`ScorerOptions::max_rows_per_run`] rows) and runs them as one batch, so 2,000 per-bed requests sent in the same
//! minute cost a handful of batch-256 runs, not 2,000 batch-1 runs.
//!
//! Each run takes the slot's current model once, so every result in a reply was made by the one model named in it,
//! and a swap during a run only affects the next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::bundle::{ModelIdentity, ModelRunner};
use crate::error::ScoreError;
use crate::slot::ModelSlot;

/// Tuning of a [`Scorer`].
#[derive(Debug, Clone)]
pub struct ScorerOptions {
    /// Requests that may wait in the channel; beyond it `score` waits (asynchronously) for room: back-pressure.
    pub queue_capacity: usize,
    /// Most rows coalesced into one run. Bounds the latency one run adds to the requests behind it.
    pub max_rows_per_run: usize,
}

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions {
            queue_capacity: 4096,
            max_rows_per_run: 4096,
        }
    }
}

/// Probabilities for the rows of one request, and the model that made all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The model that scored every row of this request.
    pub model: Arc<ModelIdentity>,
    /// One probability per row, in row order.
    pub probabilities: Vec<f32>,
}

/// One row's result: its probability and the model that made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction<'a> {
    pub model: &'a ModelIdentity,
    pub probability: f32,
}

impl Scores {
    /// The results row by row, each naming its model.
    pub fn predictions(&self) -> impl Iterator<Item = Prediction<'_>> + '_ {
        self.probabilities.iter().map(|&probability| Prediction {
            model: &self.model,
            probability,
        })
    }
}

/// Counters of a scoring thread.
#[derive(Debug, Default)]
pub struct ScorerStats {
    /// Inference runs (each one batch across the requests that were waiting).
    pub runs: AtomicU64,
    /// Rows scored.
    pub rows: AtomicU64,
    /// Runs that found themselves inside an async runtime's context. Always 0: scoring runs on the scorer's own
    /// thread (the invariant that async tasks never block on inference); a check, not a tuning knob.
    pub runs_on_async_runtime: AtomicU64,
}

struct Request {
    rows: Vec<f32>,
    width: usize,
    reply: oneshot::Sender<Result<Scores, ScoreError>>,
}

/// Async handle to the scoring thread of one [`ModelSlot`]. Cheap to clone; the thread stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Scorer {
    tx: mpsc::Sender<Request>,
    slot: Arc<ModelSlot>,
    stats: Arc<ScorerStats>,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("slot", &self.slot.name())
            .finish()
    }
}

impl Scorer {
    /// Starts the scoring thread for `slot`.
    pub fn spawn(slot: Arc<ModelSlot>, options: ScorerOptions) -> std::io::Result<Scorer> {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let worker_slot = Arc::clone(&slot);
        let max_rows = options.max_rows_per_run.max(1);
        let stats = Arc::new(ScorerStats::default());
        let worker_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name(format!("inference-{}", slot.name()))
            .spawn(move || worker(worker_slot, rx, max_rows, worker_stats))?;
        Ok(Scorer { tx, slot, stats })
    }

    /// The scoring thread's counters.
    pub fn stats(&self) -> &ScorerStats {
        &self.stats
    }

    /// The slot this scorer serves.
    pub fn slot(&self) -> &Arc<ModelSlot> {
        &self.slot
    }

    /// Scores `rows`, a row-major buffer of `width` features per row. The width must be the current model's
    /// feature count ([`ScoreError::FeatureCount`] otherwise).
    pub async fn score(&self, rows: Vec<f32>, width: usize) -> Result<Scores, ScoreError> {
        if width == 0 || !rows.len().is_multiple_of(width) {
            return Err(ScoreError::RaggedRows {
                len: rows.len(),
                width,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { rows, width, reply })
            .await
            .map_err(|_| ScoreError::Stopped)?;
        answer.await.map_err(|_| ScoreError::Stopped)?
    }

    /// Scores fixed-width rows (one per bed).
    pub async fn score_rows<const F: usize>(
        &self,
        rows: Vec<[f32; F]>,
    ) -> Result<Scores, ScoreError> {
        self.score(rows.as_flattened().to_vec(), F).await
    }
}

fn worker(
    slot: Arc<ModelSlot>,
    mut rx: mpsc::Receiver<Request>,
    max_rows: usize,
    stats: Arc<ScorerStats>,
) {
    let mut runner: Option<ModelRunner> = None;
    let mut batch: Vec<Request> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut rows = first.rows.len() / first.width;
        batch.push(first);
        while rows < max_rows {
            match rx.try_recv() {
                Ok(request) => {
                    rows += request.rows.len() / request.width;
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        stats.runs.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if tokio::runtime::Handle::try_current().is_ok() {
            stats.runs_on_async_runtime.fetch_add(1, Ordering::Relaxed);
        }
        serve(&slot, &mut runner, &mut batch);
    }
    tracing::debug!(slot = %slot.name(), "scoring thread stopped: no handle left");
}

/// Scores every request in `batch` (draining it) with the slot's current model, in one run.
fn serve(slot: &ModelSlot, runner: &mut Option<ModelRunner>, batch: &mut Vec<Request>) {
    let Some(model) = slot.current() else {
        for request in batch.drain(..) {
            let _ = request.reply.send(Err(ScoreError::NoModel));
        }
        return;
    };
    // Keep the warm runner unless the model was swapped since the last run.
    let runner = match runner {
        Some(r) if Arc::ptr_eq(r.bundle(), &model) => r,
        _ => runner.insert(ModelRunner::new(Arc::clone(&model))),
    };
    let width = model.n_features();
    let identity = model.identity();
    let mut fitting = Vec::with_capacity(batch.len());
    for request in batch.drain(..) {
        if request.width == width {
            fitting.push(request);
        } else {
            let found = request.width;
            let _ = request.reply.send(Err(ScoreError::FeatureCount {
                expected: width,
                found,
            }));
        }
    }
    let result = match fitting.as_slice() {
        [] => return,
        [only] => runner.score(&only.rows),
        many => {
            let mut flat = Vec::with_capacity(many.iter().map(|r| r.rows.len()).sum());
            for request in many {
                flat.extend_from_slice(&request.rows);
            }
            runner.score(&flat)
        }
    };
    match result {
        Ok(probabilities) => {
            let mut offset = 0;
            for request in fitting {
                let n = request.rows.len() / width;
                let scores = Scores {
                    model: Arc::clone(identity),
                    probabilities: probabilities
                        .get(offset..offset + n)
                        .map(<[f32]>::to_vec)
                        .unwrap_or_default(),
                };
                offset += n;
                let _ = request.reply.send(Ok(scores));
            }
        }
        Err(error) => {
            tracing::warn!(slot = %slot.name(), model = %identity, %error, "inference failed");
            for request in fitting {
                let _ = request.reply.send(Err(error.clone()));
            }
        }
    }
}
