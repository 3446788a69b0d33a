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
//! Not built yet (issue 5, later): the cloud model registry and edges pulling the models assigned to their ward.
//! The pieces here are ready for it: each model sits in a `ModelSlot` whose `try_swap_files_async` verifies and
//! compiles a pulled bundle before an atomic swap (scoring in flight is not interrupted; a refused bundle leaves
//! the old model serving and the slot's status says why). What is missing is the pull itself, refreshing
//! [`EdgeModels::status`] and the engine's `MlSettings` (threshold, identity) after a swap, and the cloud's FHIR
//! mapping of the model `RiskScore` events (RiskAssessment + Provenance).

use std::path::Path;
use std::sync::Arc;

use wardwatch_inference::{
    LoadOptions, ModelIdentity, ModelSlot, ScoreError, Scorer, ScorerOptions, TrustedKeys,
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

/// Reasons given with a deterioration alarm.
const REASONS: usize = 3;

/// One loaded, verified model and its scoring thread.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The scoring thread's handle.
    pub scorer: Scorer,
    /// How the engine uses it (identity, threshold, outcome).
    pub usage: ModelUse,
}

/// The edge's models, as loaded at start.
#[derive(Debug, Clone, Default)]
pub struct EdgeModels {
    /// The deterioration model, if it loaded.
    pub deterioration: Option<LoadedModel>,
    /// The artifact model, if it loaded.
    pub artifact: Option<LoadedModel>,
    status: Vec<ModelStatusView>,
    score_interval_ms: i64,
    artifact_hold_ms: i64,
}

fn model_ref(id: &ModelIdentity) -> ModelRef {
    ModelRef {
        name: id.name.clone(),
        version: id.version.clone(),
        sha256: id.sha256.clone(),
    }
}

fn load_one(
    keys: &TrustedKeys,
    dir: &Path,
    name: &str,
    features: &[FeatureSpec],
    threshold_override: Option<f64>,
) -> Result<LoadedModel, String> {
    let options = LoadOptions {
        expect_name: Some(name.to_string()),
        expect_features: Some(features.iter().map(|f| f.name.to_string()).collect()),
        ..LoadOptions::default()
    };
    let slot = Arc::new(ModelSlot::new(name, keys.clone(), options));
    slot.try_swap_dir(dir)
        .map_err(|e| format!("{} refused: {e}", dir.display()))?;
    let bundle = slot
        .current()
        .ok_or_else(|| format!("{}: no model after loading", dir.display()))?;
    let manifest = bundle.manifest();
    let threshold = threshold_override
        .or(manifest.decision_threshold)
        .ok_or_else(|| {
            format!(
                "{}: the manifest has no decision_threshold and none is configured",
                dir.display()
            )
        })?;
    let usage = ModelUse {
        model: model_ref(bundle.identity()),
        threshold,
        outcome: manifest.outcome.clone().unwrap_or_else(|| name.to_string()),
    };
    let scorer = Scorer::spawn(Arc::clone(&slot), ScorerOptions::default())
        .map_err(|e| format!("cannot start the scoring thread: {e}"))?;
    Ok(LoadedModel { scorer, usage })
}

fn status_of(kind: &str, r: &Result<LoadedModel, String>) -> ModelStatusView {
    match r {
        Ok(m) => ModelStatusView {
            model: kind.to_string(),
            running: true,
            detail: format!(
                "{} (sha256 {}), threshold {:.4}; {}",
                m.usage.model,
                m.usage
                    .model
                    .sha256
                    .get(..12)
                    .unwrap_or(&m.usage.model.sha256),
                m.usage.threshold,
                crate::clinical::engine::SIMULATED_MODEL_NOTE
            ),
        },
        Err(e) => ModelStatusView {
            model: kind.to_string(),
            running: false,
            detail: format!("not running: {e}; NEWS2 and threshold alarms continue"),
        },
    }
}

impl EdgeModels {
    /// Loads and verifies both models (blocking: reads files and compiles plans; call it off the async
    /// runtime, e.g. in `spawn_blocking`). Never fails: a model that cannot run is absent, with its reason in
    /// [`EdgeModels::status`].
    pub fn load(cfg: &ModelsConfig) -> EdgeModels {
        let keys = TrustedKeys::load(&cfg.trusted_keys).map_err(|e| {
            format!(
                "trusted release keys {} unusable: {e}",
                cfg.trusted_keys.display()
            )
        });
        let (det, art) = match &keys {
            Ok(keys) => (
                load_one(
                    keys,
                    &cfg.dir.join(DETERIORATION_DIR),
                    DETERIORATION_MODEL,
                    &DETERIORATION_FEATURES,
                    cfg.deterioration_threshold,
                ),
                load_one(
                    keys,
                    &cfg.dir.join(ARTIFACT_DIR),
                    ARTIFACT_MODEL,
                    &ARTIFACT_FEATURES,
                    None,
                ),
            ),
            Err(e) => (Err(e.clone()), Err(e.clone())),
        };
        let status = vec![
            status_of(DETERIORATION_DIR, &det),
            status_of(ARTIFACT_DIR, &art),
        ];
        for s in &status {
            if s.running {
                tracing::info!(model = %s.model, detail = %s.detail, "edge model running");
            } else {
                tracing::error!(model = %s.model, detail = %s.detail, "edge model NOT running");
            }
        }
        EdgeModels {
            deterioration: det.ok(),
            artifact: art.ok(),
            status,
            score_interval_ms: i64::try_from(cfg.score_interval_secs.saturating_mul(1000))
                .unwrap_or(60_000),
            artifact_hold_ms: i64::try_from(cfg.artifact_hold_secs.saturating_mul(1000))
                .unwrap_or(30_000),
        }
    }

    /// What each model is doing, or why it is not running.
    pub fn status(&self) -> &[ModelStatusView] {
        &self.status
    }

    /// Whether any configured model failed to load.
    pub fn degraded(&self) -> bool {
        self.status.iter().any(|s| !s.running)
    }

    /// The engine's view: which models run, their thresholds, the intervals. `None` if no model runs.
    pub fn settings(&self) -> Option<MlSettings> {
        if self.deterioration.is_none() && self.artifact.is_none() {
            return None;
        }
        Some(MlSettings {
            deterioration: self.deterioration.as_ref().map(|m| m.usage.clone()),
            artifact: self.artifact.as_ref().map(|m| m.usage.clone()),
            score_interval_ms: self.score_interval_ms,
            artifact_hold_ms: self.artifact_hold_ms,
        })
    }

    /// Scores a deterioration round: all beds in one request, then, for beds at or above the threshold, an
    /// occlusion explanation (one row per feature) for the alarm's reasons. Runs on the scoring thread; this
    /// only awaits it.
    pub async fn score_deterioration(
        &self,
        request: DeteriorationRequest,
    ) -> Result<DeteriorationResult, ScoreError> {
        let Some(m) = &self.deterioration else {
            return Err(ScoreError::NoModel);
        };
        let rows: Vec<_> = request.rows.iter().map(|r| r.features.values).collect();
        let scores = m.scorer.score_rows(rows).await?;
        let model = model_ref(&scores.model);
        let mut reasons = vec![Vec::new(); request.rows.len()];
        for (i, row) in request.rows.iter().enumerate() {
            let Some(&p) = scores.probabilities.get(i) else {
                break;
            };
            if f64::from(p) < m.usage.threshold {
                continue;
            }
            let occluded = m
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
        let Some(m) = &self.artifact else {
            return Err(ScoreError::NoModel);
        };
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<_> = requests.iter().map(|r| r.features.values).collect();
        let scores = m.scorer.score_rows(rows).await?;
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
