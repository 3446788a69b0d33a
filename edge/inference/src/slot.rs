//! [`ModelSlot`]: the model currently in service for one purpose (e.g. deterioration), with hot swap.
//!
//! A swap loads and verifies the new bundle completely *before* it replaces the old one, and the replacement is a
//! single atomic pointer store ([`arc_swap`]). Scoring takes its own `Arc` of the current model at the start of a
//! run, so a run in flight finishes on the model it started with and never sees a half-swapped state; the old
//! model is freed when its last run ends. A bundle that fails any check leaves the old model serving, and the
//! reason is kept in the slot's [`SlotStatus`] so the edge can say "running the old model because …".

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use crate::bundle::{LoadOptions, ModelBundle, ModelFiles, ModelIdentity, check_expectations};
use crate::error::LoadError;
use crate::signature::TrustedKeys;

/// What the slot reports: the model serving, and the most recent refused update since it started serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// The slot's purpose, e.g. `deterioration`.
    pub slot: String,
    /// The model serving now, if any.
    pub current: Option<ModelIdentity>,
    /// When it started serving (Unix milliseconds).
    pub serving_since_unix_ms: Option<u64>,
    /// The last refused update after the current model started serving; cleared by a successful swap.
    pub last_failure: Option<SwapFailure>,
}

/// A refused update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapFailure {
    /// When it was refused (Unix milliseconds).
    pub at_unix_ms: u64,
    /// Where the candidate came from (a directory, or a label such as a registry URL).
    pub origin: String,
    /// [`LoadError::kind`], e.g. `hash_mismatch`.
    pub kind: String,
    /// The full reason.
    pub reason: String,
}

impl SlotStatus {
    /// One line for logs and the nurse-station/ops status, e.g. "deterioration: running old model deterioration
    /// 1.0.0 (sha256 …) because the update from models/new was refused: hash mismatch: …".
    pub fn summary(&self) -> String {
        match (&self.current, &self.last_failure) {
            (Some(model), None) => format!("{}: running {model}", self.slot),
            (Some(model), Some(failure)) => format!(
                "{}: running old model {model} because the update from {} was refused: {}",
                self.slot, failure.origin, failure.reason
            ),
            (None, None) => format!("{}: no model loaded", self.slot),
            (None, Some(failure)) => {
                format!(
                    "{}: no model running because {} was refused: {}",
                    self.slot, failure.origin, failure.reason
                )
            }
        }
    }
}

#[derive(Debug)]
struct StatusInner {
    serving_since_unix_ms: Option<u64>,
    last_failure: Option<SwapFailure>,
}

/// The model in service for one purpose. Share it as `Arc<ModelSlot>` between the [`crate::Scorer`] and whatever
/// delivers new models.
pub struct ModelSlot {
    name: String,
    keys: TrustedKeys,
    options: LoadOptions,
    current: ArcSwapOption<ModelBundle>,
    status: Mutex<StatusInner>,
    /// Serialises swaps, so two concurrent updates cannot interleave their "swap" and "record status" steps.
    swap_lock: Mutex<()>,
}

impl std::fmt::Debug for ModelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSlot")
            .field("status", &self.status())
            .finish()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a status record, or nothing) is
/// still consistent, so keep going rather than propagate the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ModelSlot {
    /// An empty slot named `name` that accepts models signed by `keys` and checked against `options`.
    pub fn new(name: impl Into<String>, keys: TrustedKeys, options: LoadOptions) -> ModelSlot {
        ModelSlot {
            name: name.into(),
            keys,
            options,
            current: ArcSwapOption::empty(),
            status: Mutex::new(StatusInner {
                serving_since_unix_ms: None,
                last_failure: None,
            }),
            swap_lock: Mutex::new(()),
        }
    }

    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The load options every candidate is checked against.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// The model serving now. Cheap (an atomic load); the returned `Arc` keeps that model alive for as long as the
    /// caller holds it, whatever swaps happen meanwhile.
    pub fn current(&self) -> Option<Arc<ModelBundle>> {
        self.current.load_full()
    }

    /// The model serving now and the last refused update.
    pub fn status(&self) -> SlotStatus {
        let current = self.current.load_full();
        let status = lock(&self.status);
        SlotStatus {
            slot: self.name.clone(),
            current: current.map(|m| (**m.identity()).clone()),
            serving_since_unix_ms: status.serving_since_unix_ms,
            last_failure: status.last_failure.clone(),
        }
    }

    /// Loads, verifies and compiles the bundle in `dir`, then swaps it in. On any failure the current model keeps
    /// serving, the reason is recorded in [`ModelSlot::status`] and returned. Blocking (file reads and a compile
    /// of typically tens of milliseconds): from async code use [`ModelSlot::try_swap_dir_async`].
    pub fn try_swap_dir(&self, dir: &Path) -> Result<Arc<ModelIdentity>, LoadError> {
        let origin = dir.display().to_string();
        self.try_swap_with(&origin, || {
            ModelBundle::load_dir(dir, &self.keys, &self.options)
        })
    }

    /// Like [`ModelSlot::try_swap_dir`] for a bundle held in memory (e.g. pulled from the cloud registry);
    /// `origin` says where it came from, for the status.
    pub fn try_swap_files(
        &self,
        files: &ModelFiles,
        origin: &str,
    ) -> Result<Arc<ModelIdentity>, LoadError> {
        self.try_swap_with(origin, || {
            ModelBundle::from_files(files, &self.keys, &self.options)
        })
    }

    /// [`ModelSlot::try_swap_dir`] on tokio's blocking pool, so the async runtime never runs the compile.
    pub async fn try_swap_dir_async(
        self: &Arc<Self>,
        dir: &Path,
    ) -> Result<Arc<ModelIdentity>, LoadError> {
        let slot = Arc::clone(self);
        let dir = dir.to_path_buf();
        let task = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || slot.try_swap_dir(&dir)
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(self.join_failed(&dir.display().to_string(), e)),
        }
    }

    /// [`ModelSlot::try_swap_files`] on tokio's blocking pool.
    pub async fn try_swap_files_async(
        self: &Arc<Self>,
        files: ModelFiles,
        origin: String,
    ) -> Result<Arc<ModelIdentity>, LoadError> {
        let slot = Arc::clone(self);
        let label = origin.clone();
        let task = tokio::task::spawn_blocking(move || slot.try_swap_files(&files, &origin));
        match task.await {
            Ok(result) => result,
            Err(e) => Err(self.join_failed(&label, e)),
        }
    }

    /// Swaps in a bundle loaded elsewhere (it was verified when it was built), after checking it against this
    /// slot's expectations (name, feature layout).
    pub fn install(&self, bundle: ModelBundle) -> Result<Arc<ModelIdentity>, LoadError> {
        self.try_swap_with("a preloaded bundle", || {
            check_expectations(bundle.manifest(), &self.options)?;
            Ok(bundle)
        })
    }

    fn try_swap_with(
        &self,
        origin: &str,
        load: impl FnOnce() -> Result<ModelBundle, LoadError>,
    ) -> Result<Arc<ModelIdentity>, LoadError> {
        let _serialised = lock(&self.swap_lock);
        match load() {
            Ok(bundle) => {
                let identity = Arc::clone(bundle.identity());
                let previous = self.current.swap(Some(Arc::new(bundle)));
                {
                    let mut status = lock(&self.status);
                    status.serving_since_unix_ms = Some(now_unix_ms());
                    status.last_failure = None;
                }
                match previous {
                    Some(old) => {
                        tracing::info!(slot = %self.name, old = %old.identity(), new = %identity, "model swapped")
                    }
                    None => tracing::info!(slot = %self.name, model = %identity, "model loaded"),
                }
                Ok(identity)
            }
            Err(error) => {
                self.record_failure(origin, &error);
                Err(error)
            }
        }
    }

    /// The blocking task running a load panicked outside the guarded compile, or was cancelled at shutdown.
    fn join_failed(&self, origin: &str, e: tokio::task::JoinError) -> LoadError {
        let error = LoadError::Panicked {
            stage: "loading on the blocking pool",
            message: e.to_string(),
        };
        self.record_failure(origin, &error);
        error
    }

    fn record_failure(&self, origin: &str, error: &LoadError) {
        let failure = SwapFailure {
            at_unix_ms: now_unix_ms(),
            origin: origin.to_string(),
            kind: error.kind().to_string(),
            reason: error.to_string(),
        };
        match self.current.load_full() {
            Some(current) => tracing::warn!(
                slot = %self.name, origin, kind = failure.kind, reason = %failure.reason, running = %current.identity(),
                "model update refused; the old model keeps running"
            ),
            None => tracing::warn!(
                slot = %self.name, origin, kind = failure.kind, reason = %failure.reason,
                "model refused; no model is running in this slot"
            ),
        }
        lock(&self.status).last_failure = Some(failure);
    }
}
