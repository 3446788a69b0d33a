//! Pulling model updates from the cloud's model registry (issue 5), over the same mutual-TLS link as sync
//! (`wardwatch.v1.ModelDistribution`; the cloud knows this edge by its certificate and shows it only the models
//! assigned to its wards).
//!
//! Every `[engine.models] pull_interval_secs` the task lists the versions assigned to the edge's wards. For each
//! model the edge runs (deterioration, artifact) it takes the assigned version with the highest SemVer precedence
//! and, if it is not the one running:
//!
//! 1. **Downgrades are refused.** The version must order strictly above the running one
//!    (`wardwatch_inference::version`: SemVer 2.0 precedence; a running version that is not SemVer can be
//!    replaced by any SemVer version). An equal or older version is refused and reported, never installed.
//! 2. **Fetch** into memory, bounded by the header's size and the edge's model limit, then written to a staging
//!    directory `dir/.staging/<kind>-<version>/`.
//! 3. **Verify and swap** with the same checks as at start (signature by a trusted release key, manifest, sha256,
//!    name, feature layout, graph interface, compile, warm-up) through `ModelSlot`: the old model keeps serving
//!    until the atomic swap, so no sample or scoring round is dropped. The engine's thresholds and the nurse
//!    station's status are refreshed at once.
//! 4. **Persist**: the staged bundle replaces `dir/pulled/<kind>/` (rename), so a restart runs it.
//!
//! A refused update leaves the old model serving and says so: a `warn` log line, [`super::runtime::PullStats`]
//! (`refused`, `downgrades_refused`, `last_error`), the model's line in `/api/health` and the ward snapshot
//! ("still running this model because …"), and a LOW-priority `ALARM_KIND_MODEL_UNAVAILABLE` technical alarm
//! that syncs to the cloud. A refused (name, version, sha256) is not fetched again until the edge restarts or the
//! model runs as assigned again (a newer version installed, or the assignment back to the running model), which
//! also clears that alarm.
//!
//! Refusals are remembered in memory on purpose: the edge's trust (`trusted_keys`) and limits change only with a
//! restart, so a restarted edge checks a still-assigned refused version once more — it may be acceptable now —
//! and, if it is refused again, raises the same technical alarm again. A version that stays refused costs one
//! fetch per restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use wardwatch_inference::{
    MANIFEST_FILE, MODEL_FILE, ModelFiles, ModelIdentity, ModelVersion, SIGNATURE_FILE,
};
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::model_chunk::Part;
use wardwatch_proto::v1::model_distribution_client::ModelDistributionClient;
use wardwatch_proto::v1::{
    AlarmKind, AlarmPriority, AlarmState, AssignedModel, FetchModelRequest, ListAssignedRequest,
};

use super::runtime::{EdgeModels, PULLED_DIR};
use crate::node::{EdgeNode, Incoming};

/// Staging directory under `[engine.models] dir`.
pub const STAGING_DIR: &str = ".staging";
/// Largest model fetched (the inference crate's default load limit).
pub const MAX_PULL_MODEL_BYTES: u64 = 64 << 20;

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// No connection to the cloud.
    #[error("cannot reach the model registry: {0}")]
    Connect(#[from] crate::sync::SyncError),
    /// The cloud refused or failed a call.
    #[error("model registry call {call} failed: {status}")]
    Call {
        /// Which call.
        call: &'static str,
        /// The status.
        status: tonic::Status,
    },
}

/// What happened to one assigned model in a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// Already running that version.
    Current,
    /// Refused earlier in this run; not fetched again.
    SkippedRefused,
    /// Installed.
    Installed(String),
    /// Refused (downgrade, fetch failure, failed verification).
    Refused(String),
}

/// Runs until `shutdown` resolves: one poll right away, then one every `interval`.
pub async fn run(node: Arc<EdgeNode>, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut refused: HashSet<(String, String, String)> = HashSet::new();
    loop {
        let models = node.models().clone();
        match poll_once(&node, &mut refused).await {
            Ok(outcomes) => {
                models
                    .pull_stats
                    .note(&models.pull_stats.polls, None::<String>);
                for (name, o) in outcomes {
                    tracing::debug!(model = %name, outcome = ?o, "model registry poll");
                }
            }
            Err(e) => {
                warn!(error = %e, "model registry poll failed; the models in service keep running");
                models
                    .pull_stats
                    .note(&models.pull_stats.poll_failures, Some(e.to_string()));
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The assigned version to run for `name`: the highest SemVer precedence among the edge's wards (wards that
/// disagree are logged). `Err` when an assigned version is not SemVer.
fn choose<'a>(
    name: &str,
    assigned: &'a [AssignedModel],
) -> Option<Result<&'a AssignedModel, String>> {
    let mine: Vec<&AssignedModel> = assigned.iter().filter(|a| a.name == name).collect();
    let mut best: Option<(&AssignedModel, ModelVersion)> = None;
    for a in &mine {
        let v = match ModelVersion::parse(&a.version) {
            Ok(v) => v,
            Err(e) => return Some(Err(e.to_string())),
        };
        if best.as_ref().is_none_or(|(_, b)| v.is_newer_than(b)) {
            best = Some((a, v));
        }
    }
    if mine.iter().any(|a| a.version != mine[0].version) {
        warn!(model = name, versions = ?mine.iter().map(|a| (&a.ward, &a.version)).collect::<Vec<_>>(),
            "the edge's wards are assigned different versions of a model; running the newest");
    }
    best.map(|(a, _)| Ok(a))
}

/// One poll: list, then bring each model the edge runs to its assigned version.
pub async fn poll_once(
    node: &Arc<EdgeNode>,
    refused: &mut HashSet<(String, String, String)>,
) -> Result<Vec<(String, PullOutcome)>, PullError> {
    let channel = crate::sync::connect(node.config()).await?;
    let mut client = ModelDistributionClient::new(channel).max_decoding_message_size(8 << 20);
    let assigned = client
        .list_assigned(ListAssignedRequest { wards: Vec::new() })
        .await
        .map_err(|status| PullError::Call {
            call: "ListAssigned",
            status,
        })?
        .into_inner()
        .models;
    let models = node.models().clone();
    let mut outcomes = Vec::new();
    for (kind, name) in models.slots() {
        let Some(choice) = choose(name, &assigned) else {
            continue;
        };
        let outcome = match choice {
            Err(reason) => {
                let reason = format!("the assigned version cannot be ordered: {reason}");
                refuse(node, &models, name, None, &reason, false).await;
                PullOutcome::Refused(reason)
            }
            Ok(a) => update_one(node, &models, &mut client, kind, a, refused).await,
        };
        outcomes.push((name.to_string(), outcome));
    }
    Ok(outcomes)
}

async fn update_one(
    node: &Arc<EdgeNode>,
    models: &Arc<EdgeModels>,
    client: &mut ModelDistributionClient<tonic::transport::Channel>,
    kind: &str,
    a: &AssignedModel,
    refused: &mut HashSet<(String, String, String)>,
) -> PullOutcome {
    let running = models.running(&a.name);
    if let Some(r) = running.as_ref().filter(|r| r.sha256 == a.sha256) {
        // The assignment is (again) the model running: an earlier refusal no longer applies.
        models.clear_refusal(&a.name);
        resolve_refusals(node, refused, &a.name, &r.to_string()).await;
        return PullOutcome::Current;
    }
    let key = (a.name.clone(), a.version.clone(), a.sha256.clone());
    if refused.contains(&key) {
        return PullOutcome::SkippedRefused;
    }
    let label = format!("cloud registry {} {}", a.name, a.version);
    if let Some(r) = &running
        && let (Ok(cur), Ok(new)) = (
            ModelVersion::parse(&r.version),
            ModelVersion::parse(&a.version),
        )
        && !new.is_newer_than(&cur)
    {
        let reason = format!(
            "the update {label} was refused: version {} is not newer than the running {} (downgrades and \
             same-version replacements are refused)",
            a.version, r.version
        );
        refused.insert(key);
        refuse(node, models, &a.name, running.as_ref(), &reason, true).await;
        return PullOutcome::Refused(reason);
    }
    let files = match fetch(client, a).await {
        Ok(f) => f,
        Err(e) => {
            // A failed download is retried at the next poll (not remembered as refused).
            let reason = format!("the update {label} could not be fetched: {e}");
            warn!(model = %a.name, version = %a.version, error = %e, "model fetch failed");
            models
                .pull_stats
                .note(&models.pull_stats.poll_failures, Some(reason.clone()));
            return PullOutcome::Refused(reason);
        }
    };
    let staged = match stage(models.dir(), kind, &a.version, &files).await {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("the update {label} could not be staged: {e}");
            models
                .pull_stats
                .note(&models.pull_stats.poll_failures, Some(reason.clone()));
            warn!(model = %a.name, error = %e, "model staging failed");
            return PullOutcome::Refused(reason);
        }
    };
    match models.install(&a.name, files, label.clone()).await {
        Ok(id) => {
            let persisted = persist(models.dir(), kind, &staged).await;
            if let Err(e) = &persisted {
                warn!(model = %a.name, error = %e, "pulled model runs, but could not be kept for restarts");
            }
            models
                .pull_stats
                .note(&models.pull_stats.installed, None::<String>);
            info!(model = %id, previous = ?running.as_ref().map(ToString::to_string), "pulled model installed");
            refresh_engine(node, models);
            resolve_refusals(node, refused, &a.name, &id.to_string()).await;
            PullOutcome::Installed(id.to_string())
        }
        Err(reason) => {
            let _ = tokio::fs::remove_dir_all(&staged).await;
            refused.insert(key);
            refuse(node, models, &a.name, running.as_ref(), &reason, false).await;
            PullOutcome::Refused(reason)
        }
    }
}

/// Reports a refused update everywhere: status, counter, log, engine snapshot and a technical alarm.
async fn refuse(
    node: &Arc<EdgeNode>,
    models: &Arc<EdgeModels>,
    name: &str,
    running: Option<&ModelIdentity>,
    reason: &str,
    downgrade: bool,
) {
    models.record_refusal(name, reason.to_string());
    let counter = if downgrade {
        &models.pull_stats.downgrades_refused
    } else {
        &models.pull_stats.refused
    };
    models.pull_stats.note(counter, Some(reason.to_string()));
    let still = running.map_or_else(
        || "no model of this kind is running".to_string(),
        |r| format!("still running {r}"),
    );
    warn!(model = name, %reason, %still, "model update refused; the old model keeps running");
    refresh_engine(node, models);
    update_alarm(
        node,
        name,
        AlarmState::Raised,
        format!("Model update refused: {reason}; {still}"),
    )
    .await;
}

/// Once `name` runs what it is assigned (a new version installed, or the assignment back to the model running),
/// its refused-update technical alarm is cleared and its earlier refusals forgotten: a version refused before is
/// checked again (and refused again, with a new alarm) only if it is assigned again.
async fn resolve_refusals(
    node: &Arc<EdgeNode>,
    refused: &mut HashSet<(String, String, String)>,
    name: &str,
    running: &str,
) {
    let before = refused.len();
    refused.retain(|(n, _, _)| n != name);
    if refused.len() != before {
        info!(model = name, %running, "refused model update resolved; technical alarm cleared");
        update_alarm(
            node,
            name,
            AlarmState::Cleared,
            format!("Model update resolved: {running} runs as assigned"),
        )
        .await;
    }
}

/// The engine reads thresholds and model identities from its settings: refresh them after a swap or refusal.
fn refresh_engine(node: &Arc<EdgeNode>, models: &Arc<EdgeModels>) {
    match node.engine().lock() {
        Ok(mut e) => e.set_models(models.settings(), models.status()),
        Err(_) => tracing::error!("clinical engine lock poisoned; model settings not refreshed"),
    }
}

/// Raises or clears the LOW technical alarm of a refused update of `name` (one alarm id per model), synced to
/// the cloud like every alarm state change.
async fn update_alarm(node: &Arc<EdgeNode>, name: &str, state: AlarmState, message: String) {
    let cfg = node.config();
    let now = wardwatch_proto::now_unix_ms();
    let alarm = crate::node::technical_alarm(
        cfg,
        &format!("model-update-{name}"),
        AlarmKind::ModelUnavailable,
        AlarmPriority::Low,
        state,
        message.chars().take(1000).collect(),
        now,
    );
    let event = Incoming {
        idempotency_key: format!("{}-model-update-{name}-{now}-{}", cfg.edge_id, state as i32),
        payload: Payload::Alarm(alarm),
    };
    match node.accept(vec![event]).await {
        Ok(r) if r.rejected.is_empty() => {}
        Ok(r) => warn!(rejections = ?r.rejected, "model-update technical alarm refused"),
        Err(e) => warn!(error = %e, "model-update technical alarm not recorded"),
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("FetchModel failed: {0}")]
    Call(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
}

async fn fetch(
    client: &mut ModelDistributionClient<tonic::transport::Channel>,
    a: &AssignedModel,
) -> Result<ModelFiles, FetchError> {
    let mut stream = client
        .fetch_model(FetchModelRequest {
            name: a.name.clone(),
            version: a.version.clone(),
        })
        .await?
        .into_inner();
    let header = match stream.message().await? {
        Some(wardwatch_proto::v1::ModelChunk {
            part: Some(Part::Header(h)),
        }) => h,
        _ => {
            return Err(FetchError::Protocol(
                "the stream did not start with a header".into(),
            ));
        }
    };
    if header.name != a.name || header.version != a.version || header.sha256 != a.sha256 {
        return Err(FetchError::Protocol(format!(
            "the cloud sent {} {} (sha256 {}) for {} {} (sha256 {})",
            header.name, header.version, header.sha256, a.name, a.version, a.sha256
        )));
    }
    if header.size_bytes > MAX_PULL_MODEL_BYTES {
        return Err(FetchError::Protocol(format!(
            "model is {} bytes, more than the edge's limit of {MAX_PULL_MODEL_BYTES}",
            header.size_bytes
        )));
    }
    let size = usize::try_from(header.size_bytes).unwrap_or(usize::MAX);
    let mut model = Vec::with_capacity(size);
    while let Some(chunk) = stream.message().await? {
        match chunk.part {
            Some(Part::Data(d)) => {
                if model.len() + d.len() > size {
                    return Err(FetchError::Protocol(format!(
                        "the cloud sent more than the announced {size} bytes"
                    )));
                }
                model.extend_from_slice(&d);
            }
            _ => {
                return Err(FetchError::Protocol(
                    "unexpected chunk after the header".into(),
                ));
            }
        }
    }
    if model.len() != size {
        return Err(FetchError::Protocol(format!(
            "stream ended after {} of {size} bytes",
            model.len()
        )));
    }
    Ok(ModelFiles {
        model,
        manifest: header.manifest,
        signature: header.signature,
    })
}

/// Writes the bundle to `dir/.staging/<kind>-<version>/` (each file synced).
async fn stage(
    dir: &Path,
    kind: &str,
    version: &str,
    files: &ModelFiles,
) -> std::io::Result<PathBuf> {
    let safe: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let staged = dir.join(STAGING_DIR).join(format!("{kind}-{safe}"));
    let files = files.clone();
    let path = staged.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        for (name, bytes) in [
            (MODEL_FILE, &files.model),
            (MANIFEST_FILE, &files.manifest),
            (SIGNATURE_FILE, &files.signature),
        ] {
            let f = std::fs::File::create(path.join(name))?;
            std::io::Write::write_all(&mut &f, bytes)?;
            f.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(staged)
}

/// Makes the staged bundle `dir/pulled/<kind>/`: the previous one is moved aside, the staged one renamed in,
/// the previous one removed. A crash in between leaves no pulled bundle (the original loads at start and the
/// next poll fetches the update again), never a half-written one.
async fn persist(dir: &Path, kind: &str, staged: &Path) -> std::io::Result<()> {
    let pulled_root = dir.join(PULLED_DIR);
    let target = pulled_root.join(kind);
    let old = dir.join(STAGING_DIR).join(format!(
        "{kind}-replaced-{}",
        wardwatch_proto::now_unix_ms()
    ));
    let staged = staged.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&pulled_root)?;
        if target.exists() {
            std::fs::rename(&target, &old)?;
        }
        std::fs::rename(&staged, &target)?;
        if let Ok(d) = std::fs::File::open(&pulled_root) {
            let _ = d.sync_all();
        }
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(ward: &str, version: &str) -> AssignedModel {
        AssignedModel {
            ward: ward.into(),
            name: "m".into(),
            version: version.into(),
            sha256: format!("{version}-sha"),
            size_bytes: 1,
        }
    }

    #[test]
    fn the_newest_assignment_of_the_edges_wards_wins_by_semver_precedence() {
        let list = vec![
            assigned("7A", "1.10.0"),
            assigned("7B", "1.9.0"),
            assigned("7C", "2.0.0-rc.1"),
            AssignedModel {
                name: "other".into(),
                ..assigned("7A", "9.0.0")
            },
        ];
        let chosen = choose("m", &list).expect("assigned").expect("orderable");
        assert_eq!(chosen.version, "2.0.0-rc.1");
        let list = vec![assigned("7A", "1.10.0"), assigned("7B", "1.9.0")];
        assert_eq!(
            choose("m", &list).expect("assigned").expect("ok").version,
            "1.10.0"
        );
        assert!(choose("absent", &list).is_none());
    }

    #[test]
    fn pull_interval_is_optional_and_range_checked() {
        let mut c = crate::config::ModelsConfig::new("m".into(), "k".into());
        assert!(c.validate().is_ok(), "absent: no pulling");
        c.pull_interval_secs = Some(5);
        assert!(c.validate().is_err());
        c.pull_interval_secs = Some(300);
        assert!(c.validate().is_ok());
        let parsed: Result<crate::config::ModelsConfig, _> =
            toml::from_str("dir = 'm'\ntrusted_keys = 'k'\npull_interval = 300\n");
        assert!(parsed.is_err(), "a misspelt key is refused");
        let parsed: crate::config::ModelsConfig =
            toml::from_str("dir = 'm'\ntrusted_keys = 'k'\npull_interval_secs = 300\n")
                .expect("parses");
        assert_eq!(parsed.pull_interval_secs, Some(300));
    }

    #[test]
    fn an_assignment_that_cannot_be_ordered_is_an_error() {
        let list = vec![assigned("7A", "1.0.0"), assigned("7B", "latest")];
        let err = choose("m", &list)
            .expect("assigned")
            .expect_err("not SemVer");
        assert!(err.contains("SemVer"), "{err}");
    }
}
