//! The edge models at run time: loaded once at start from `[engine.models] dir`, verified against the
//! configured trusted release keys, and scored on the inference crate's scoring threads, never on the async
//! runtime's threads (the `Scorer` runs each model on its own OS thread; async callers only await a reply).
//!
//! A model that is missing, unsigned, signed by an untrusted key, altered, or built for another feature layout is
//! refused with its reason; the edge keeps running NEWS2 and the threshold alarms without it and says so
//! ([`EdgeModels::status`], the nurse station's `/api/health` and ward snapshot, and an `error` log line).
//!
//! Trained on simulated data only; not clinically validated.
//!
//! Models are also pulled from the cloud's model registry (`super::pull`, when `pull_interval_secs` is set): each
//! model sits in a `ModelSlot` whose swap verifies and compiles a pulled bundle before an atomic swap (scoring in
//! flight is not interrupted; a refused bundle leaves the old model serving, and [`EdgeModels::status`] says
//! why). Thresholds and identities are read from the slot's current model on every round, so a swap takes
//! effect at the next one. At start a pulled bundle (`dir/pulled/<kind>`) is preferred over the original
//! (`dir/<kind>`) when its version is at least as new; if it is refused the original is tried.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wardwatch_inference::{
    LoadOptions, Manifest, ModelFiles, ModelIdentity, ModelSlot, ModelVersion, ScoreError, Scorer,
    ScorerOptions, TrustedKeys,
};

use super::{ARTIFACT_FEATURES, DETERIORATION_FEATURES, FeatureSpec};
use crate::clinical::engine::ModelStatusView;
use crate::clinical::models::{
    ArtifactRequest, ArtifactResult, DeteriorationRequest, DeteriorationResult, MlSettings,
    ModelRef, ModelUse, occlusion_rows, top_reasons,
};
use crate::config::ModelsConfig;

/// Manifest name of the deterioration model (a slot never runs another model).
pub const DETERIORATION_MODEL: &str = "wardwatch-deterioration";
/// Manifest name of the artifact model.
pub const ARTIFACT_MODEL: &str = "wardwatch-artifact";
/// Bundle directory of the deterioration model under `[engine.models] dir`.
pub const DETERIORATION_DIR: &str = "deterioration";
/// Bundle directory of the artifact model under `[engine.models] dir`.
pub const ARTIFACT_DIR: &str = "artifact";
/// Directory under `[engine.models] dir` where accepted pulled bundles are kept (`pulled/<kind>/`).
pub const PULLED_DIR: &str = "pulled";

/// Reasons given with a deterioration alarm.
const REASONS: usize = 3;

/// One loaded, verified model and its scoring thread.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The scoring thread's handle.
    pub scorer: Scorer,
    /// How the engine uses it (identity, threshold, outcome), as loaded at start.
    pub usage: ModelUse,
}

/// One model purpose (deterioration, artifact): its slot, scoring thread and what went wrong last.
#[derive(Debug)]
struct Handle {
    /// Bundle directory name and status label, e.g. `deterioration`.
    kind: &'static str,
    /// The manifest name the slot accepts.
    name: &'static str,
    slot: Arc<ModelSlot>,
    scorer: Scorer,
    threshold_override: Option<f64>,
    /// The configured alarm threshold, if any (deterioration only): overrides the manifest's `alarm_threshold`.
    alarm_threshold_override: Option<f64>,
    /// Why no model runs, or why the last update was refused (cleared by a successful update).
    problem: Mutex<Option<String>>,
}

impl Handle {
    fn usage(&self) -> Result<ModelUse, String> {
        let bundle = self
            .slot
            .current()
            .ok_or_else(|| "no model loaded".to_string())?;
        let manifest = bundle.manifest();
        let threshold = self
            .threshold_override
            .or(manifest.decision_threshold)
            .ok_or_else(|| {
                format!(
                    "{}: the manifest has no decision_threshold and none is configured",
                    bundle.identity()
                )
            })?;
        let alarm_threshold = self
            .alarm_threshold_override
            .or(manifest.alarm_threshold)
            .unwrap_or(threshold);
        Ok(ModelUse {
            model: model_ref(bundle.identity()),
            threshold,
            alarm_threshold,
            outcome: manifest
                .outcome
                .clone()
                .unwrap_or_else(|| self.name.to_string()),
        })
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_problem(&self, p: Option<String>) {
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = p;
    }

    fn status(&self) -> ModelStatusView {
        let problem = self.problem();
        match self.usage() {
            Ok(u) => ModelStatusView {
                model: self.kind.to_string(),
                running: true,
                detail: format!(
                    "{} (sha256 {}), threshold {:.4}; {}{}",
                    u.model,
                    u.model.sha256.get(..12).unwrap_or(&u.model.sha256),
                    u.threshold,
                    crate::clinical::engine::SIMULATED_MODEL_NOTE,
                    problem
                        .map(|p| format!("; still running this model because {p}"))
                        .unwrap_or_default()
                ),
            },
            Err(e) => ModelStatusView {
                model: self.kind.to_string(),
                running: false,
                detail: format!(
                    "not running: {}; NEWS2 and threshold alarms continue",
                    problem.unwrap_or(e)
                ),
            },
        }
    }
}

/// Counters of the registry pull (`super::pull`).
#[derive(Debug, Default)]
pub struct PullStats {
    /// Polls of the registry that completed.
    pub polls: AtomicU64,
    /// Polls that failed (connection, refused call).
    pub poll_failures: AtomicU64,
    /// Pulled models verified and swapped in.
    pub installed: AtomicU64,
    /// Pulled models refused by the edge's checks (hash, signature, key, interface, …).
    pub refused: AtomicU64,
    /// Assigned versions refused because they are not newer than the one running.
    pub downgrades_refused: AtomicU64,
    /// The last poll failure or refusal, for the operator.
    pub last_error: Mutex<Option<String>>,
}

impl PullStats {
    pub(crate) fn note(&self, counter: &AtomicU64, error: Option<String>) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = error {
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e);
        }
    }
}

/// The edge's models: loaded at start, replaced by pulled versions while running.
#[derive(Debug, Default)]
pub struct EdgeModels {
    /// The deterioration model, if it loaded at start (see [`EdgeModels::status`] for what runs now).
    pub deterioration: Option<LoadedModel>,
    /// The artifact model, if it loaded at start.
    pub artifact: Option<LoadedModel>,
    /// Counters of the registry pull.
    pub pull_stats: PullStats,
    handles: Vec<Handle>,
    /// Why no handle exists (the trusted keys are unusable).
    setup_error: Option<String>,
    dir: PathBuf,
    score_interval_ms: i64,
    artifact_hold_ms: i64,
    artifact_max_hold_ms: i64,
    deterioration_alarm_rounds: u32,
}

fn model_ref(id: &ModelIdentity) -> ModelRef {
    ModelRef {
        name: id.name.clone(),
        version: id.version.clone(),
        sha256: id.sha256.clone(),
    }
}

/// The version a bundle directory's (unverified) manifest claims: only used to order candidates; the load
/// verifies everything.
fn claimed_version(dir: &Path) -> Option<ModelVersion> {
    let bytes = std::fs::read(dir.join(wardwatch_inference::MANIFEST_FILE)).ok()?;
    let m = Manifest::parse(&bytes).ok()?;
    ModelVersion::parse(&m.version).ok()
}

fn make_handle(
    keys: &TrustedKeys,
    models_dir: &Path,
    kind: &'static str,
    name: &'static str,
    features: &[FeatureSpec],
    (threshold_override, alarm_threshold_override): (Option<f64>, Option<f64>),
) -> Result<Handle, String> {
    let options = LoadOptions {
        expect_name: Some(name.to_string()),
        expect_features: Some(features.iter().map(|f| f.name.to_string()).collect()),
        ..LoadOptions::default()
    };
    let slot = Arc::new(ModelSlot::new(name, keys.clone(), options));
    let scorer = Scorer::spawn(Arc::clone(&slot), ScorerOptions::default())
        .map_err(|e| format!("cannot start the scoring thread: {e}"))?;
    let handle = Handle {
        kind,
        name,
        slot,
        scorer,
        threshold_override,
        alarm_threshold_override,
        problem: Mutex::new(None),
    };
    let original = models_dir.join(kind);
    let pulled = models_dir.join(PULLED_DIR).join(kind);
    // A pulled bundle runs unless the original is strictly newer (an operator replaced it).
    let mut candidates = vec![original.clone()];
    if pulled.is_dir() {
        let pulled_first = match (claimed_version(&pulled), claimed_version(&original)) {
            (Some(p), Some(o)) => !o.is_newer_than(&p),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if pulled_first {
            candidates.insert(0, pulled);
        } else {
            candidates.push(pulled);
        }
    }
    let mut refusals = Vec::new();
    for dir in &candidates {
        match handle.slot.try_swap_dir(dir) {
            Ok(_) => {
                if !refusals.is_empty() {
                    handle.set_problem(Some(refusals.join("; ")));
                }
                return Ok(handle);
            }
            Err(e) => refusals.push(format!("{} refused: {e}", dir.display())),
        }
    }
    handle.set_problem(Some(refusals.join("; ")));
    Ok(handle)
}

impl EdgeModels {
    /// Loads and verifies both models (blocking: reads files and compiles plans; call it off the async
    /// runtime, e.g. in `spawn_blocking`). Never fails: a model that cannot run is absent, with its reason in
    /// [`EdgeModels::status`].
    pub fn load(cfg: &ModelsConfig) -> EdgeModels {
        let mut models = EdgeModels {
            dir: cfg.dir.clone(),
            score_interval_ms: i64::try_from(cfg.score_interval_secs.saturating_mul(1000))
                .unwrap_or(60_000),
            artifact_hold_ms: i64::try_from(cfg.artifact_hold_secs.saturating_mul(1000))
                .unwrap_or(30_000),
            artifact_max_hold_ms: i64::try_from(cfg.artifact_max_hold_secs.saturating_mul(1000))
                .unwrap_or(120_000),
            deterioration_alarm_rounds: cfg.deterioration_alarm_rounds,
            ..EdgeModels::default()
        };
        let keys = match TrustedKeys::load(&cfg.trusted_keys) {
            Ok(k) => k,
            Err(e) => {
                models.setup_error = Some(format!(
                    "trusted release keys {} unusable: {e}",
                    cfg.trusted_keys.display()
                ));
                models.log_status();
                return models;
            }
        };
        for (kind, name, features, threshold) in [
            (
                DETERIORATION_DIR,
                DETERIORATION_MODEL,
                &DETERIORATION_FEATURES[..],
                (
                    cfg.deterioration_threshold,
                    cfg.deterioration_alarm_threshold,
                ),
            ),
            (
                ARTIFACT_DIR,
                ARTIFACT_MODEL,
                &ARTIFACT_FEATURES[..],
                (None, None),
            ),
        ] {
            match make_handle(&keys, &cfg.dir, kind, name, features, threshold) {
                Ok(h) => models.handles.push(h),
                Err(e) => models.setup_error = Some(e),
            }
        }
        for h in &models.handles {
            let loaded = h.usage().ok().map(|usage| LoadedModel {
                scorer: h.scorer.clone(),
                usage,
            });
            match h.kind {
                DETERIORATION_DIR => models.deterioration = loaded,
                _ => models.artifact = loaded,
            }
        }
        models.log_status();
        models
    }

    fn log_status(&self) {
        for s in self.status() {
            if s.running {
                tracing::info!(model = %s.model, detail = %s.detail, "edge model running");
            } else {
                tracing::error!(model = %s.model, detail = %s.detail, "edge model NOT running");
            }
        }
    }

    /// What each model is doing, or why it is not running (and why the last update was refused).
    pub fn status(&self) -> Vec<ModelStatusView> {
        if self.handles.is_empty() {
            return match &self.setup_error {
                Some(e) => [DETERIORATION_DIR, ARTIFACT_DIR]
                    .iter()
                    .map(|k| ModelStatusView {
                        model: (*k).to_string(),
                        running: false,
                        detail: format!("not running: {e}; NEWS2 and threshold alarms continue"),
                    })
                    .collect(),
                None => Vec::new(),
            };
        }
        self.handles.iter().map(Handle::status).collect()
    }

    /// Whether any configured model is not running.
    pub fn degraded(&self) -> bool {
        self.status().iter().any(|s| !s.running)
    }

    /// The engine's view: which models run, their thresholds, the intervals. `None` if no model runs.
    pub fn settings(&self) -> Option<MlSettings> {
        let usage = |kind: &str| {
            self.handles
                .iter()
                .find(|h| h.kind == kind)
                .and_then(|h| h.usage().ok())
        };
        let (deterioration, artifact) = (usage(DETERIORATION_DIR), usage(ARTIFACT_DIR));
        if deterioration.is_none() && artifact.is_none() {
            return None;
        }
        Some(MlSettings {
            deterioration,
            artifact,
            score_interval_ms: self.score_interval_ms,
            artifact_hold_ms: self.artifact_hold_ms,
            artifact_max_hold_ms: self.artifact_max_hold_ms,
            deterioration_alarm_rounds: self.deterioration_alarm_rounds,
        })
    }

    /// `[engine.models] dir`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model purposes that can take updates: (bundle directory name, manifest name).
    pub fn slots(&self) -> Vec<(&'static str, &'static str)> {
        self.handles.iter().map(|h| (h.kind, h.name)).collect()
    }

    fn handle(&self, name: &str) -> Option<&Handle> {
        self.handles.iter().find(|h| h.name == name)
    }

    /// The model serving under manifest name `name`, if any.
    pub fn running(&self, name: &str) -> Option<ModelIdentity> {
        self.handle(name)
            .and_then(|h| h.slot.current())
            .map(|b| (**b.identity()).clone())
    }

    /// Records why an update for `name` was not installed (shown in [`EdgeModels::status`] until a later
    /// update succeeds).
    pub fn record_refusal(&self, name: &str, reason: String) {
        if let Some(h) = self.handle(name) {
            h.set_problem(Some(reason));
        }
    }

    /// Clears a recorded refusal for `name` (its assignment is back to the model running).
    pub fn clear_refusal(&self, name: &str) {
        if let Some(h) = self.handle(name)
            && h.slot.current().is_some()
        {
            h.set_problem(None);
        }
    }

    /// Verifies, compiles and swaps in a pulled bundle for `name` (on the blocking pool). The model in service
    /// keeps serving until the swap, and keeps serving if the bundle is refused; the reason is then recorded.
    pub async fn install(
        &self,
        name: &str,
        files: ModelFiles,
        origin: String,
    ) -> Result<Arc<ModelIdentity>, String> {
        let h = self
            .handle(name)
            .ok_or_else(|| format!("no slot for model {name}"))?;
        // A model the engine could not use (no operating threshold) is refused before it replaces a usable one.
        if h.threshold_override.is_none() {
            let has_threshold = Manifest::parse(&files.manifest)
                .map(|m| m.decision_threshold.is_some())
                .unwrap_or(true); // a bad manifest is refused with its own reason by the swap
            if !has_threshold {
                let reason = format!(
                    "the update {origin} was refused: its manifest has no decision_threshold and none is configured"
                );
                h.set_problem(Some(reason.clone()));
                return Err(reason);
            }
        }
        match h.slot.try_swap_files_async(files, origin.clone()).await {
            Ok(id) => {
                h.set_problem(None);
                Ok(id)
            }
            Err(e) => {
                let reason = format!("the update {origin} was refused: {e}");
                h.set_problem(Some(reason.clone()));
                Err(reason)
            }
        }
    }

    /// Scores a deterioration round: all beds in one request, then, for beds at or above the threshold, an
    /// occlusion explanation (one row per feature) for the alarm's reasons. Runs on the scoring thread; this
    /// only awaits it.
    pub async fn score_deterioration(
        &self,
        request: DeteriorationRequest,
    ) -> Result<DeteriorationResult, ScoreError> {
        let Some(h) = self.handle(DETERIORATION_MODEL) else {
            return Err(ScoreError::NoModel);
        };
        let Ok(usage) = h.usage() else {
            return Err(ScoreError::NoModel);
        };
        let rows: Vec<_> = request.rows.iter().map(|r| r.features.values).collect();
        let scores = h.scorer.score_rows(rows).await?;
        let model = model_ref(&scores.model);
        let mut reasons = vec![Vec::new(); request.rows.len()];
        for (i, row) in request.rows.iter().enumerate() {
            let Some(&p) = scores.probabilities.get(i) else {
                break;
            };
            if f64::from(p) < usage.threshold {
                continue;
            }
            let occluded = h
                .scorer
                .score(
                    occlusion_rows(&row.features.values),
                    row.features.values.len(),
                )
                .await;
            match occluded {
                // Only an explanation by the same model is used.
                Ok(o) if o.model == scores.model => {
                    reasons[i] = top_reasons(&row.features.values, p, &o.probabilities, REASONS);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "no reasons for a deterioration alarm"),
            }
        }
        Ok(DeteriorationResult {
            request,
            model,
            probabilities: scores.probabilities,
            reasons,
        })
    }

    /// Scores artifact questions (one request for all of them).
    pub async fn score_artifact(
        &self,
        requests: Vec<ArtifactRequest>,
    ) -> Result<Vec<ArtifactResult>, ScoreError> {
        let Some(h) = self.handle(ARTIFACT_MODEL) else {
            return Err(ScoreError::NoModel);
        };
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<_> = requests.iter().map(|r| r.features.values).collect();
        let scores = h.scorer.score_rows(rows).await?;
        let model = model_ref(&scores.model);
        Ok(requests
            .into_iter()
            .zip(scores.probabilities)
            .map(|(request, probability)| ArtifactResult {
                request,
                model: model.clone(),
                probability,
            })
            .collect())
    }
}
