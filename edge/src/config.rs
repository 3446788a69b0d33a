//! Edge configuration, read from TOML and validated before anything is opened or bound.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wardwatch_proto::ids::{EdgeId, WardId};

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole edge configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This node's id; must match the identity in its client certificate.
    pub edge_id: EdgeId,
    /// Wards this node serves (and is registered to write in the cloud).
    pub wards: Vec<WardId>,
    /// Directory for the outbox and other state.
    pub data_dir: PathBuf,
    /// Durable outbox limits.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// How to reach the cloud.
    pub cloud: CloudLinkConfig,
    /// Sync tuning.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Clinical engine: alarm policy, thresholds, SpO2 scale 2 patients.
    #[serde(default)]
    pub engine: crate::clinical::engine::EngineConfig,
    /// The nurse station (HTTP + live page); absent = not served.
    #[serde(default)]
    pub station: Option<crate::station::StationConfig>,
    /// HL7 v2 / IHE PCD-01 over MLLP listener; absent = not served.
    #[serde(default)]
    pub hl7_mllp: Option<crate::sources::hl7::Hl7MllpConfig>,
    /// MQTT source (a broker to subscribe to); absent = not used.
    #[serde(default)]
    pub mqtt: Option<crate::sources::mqtt::config::MqttSourceConfig>,
}

/// The edge models (issue 5), `[engine.models]`; absent = NEWS2 and threshold alarms only. They are loaded at start from `dir` and run only if each bundle's signature
/// verifies against one of the keys in `trusted_keys` (and its sha256 and interface match its manifest). A model
/// that fails to load is reported (log, nurse station) and the edge runs without it: NEWS2 and the threshold
/// alarms never depend on the models. Trained on simulated data only; not clinically validated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Directory holding one bundle directory per model: `deterioration/` and `artifact/`, each with
    /// `model.onnx`, `manifest.json` and `model.onnx.sig`. A missing bundle means that model does not run.
    pub dir: PathBuf,
    /// File of trusted release public keys (hex ed25519, one per line, `#` comments).
    pub trusted_keys: PathBuf,
    /// Seconds between deterioration rounds (every monitored bed in one batch); 10..=3600, default 60.
    #[serde(default = "default_score_interval_secs")]
    pub score_interval_secs: u64,
    /// Alarm threshold of the deterioration model, a probability in (0, 1). Default: the signed manifest's
    /// `decision_threshold` (the operating point in `models/deterioration/MODEL_CARD.md`).
    #[serde(default)]
    pub deterioration_threshold: Option<f64>,
    /// Alarm threshold of the deterioration model, a probability in (0, 1): rounds at or above it count towards
    /// the medium-priority risk alarm. Default: the signed manifest's `alarm_threshold` (NEWS2 ≥ 7's alert rate on
    /// the training cohorts), else the decision threshold.
    #[serde(default)]
    pub deterioration_alarm_threshold: Option<f64>,
    /// Seconds an artifact verdict holds a medium/low threshold alarm back; 1..=300, default 30. A condition that
    /// still holds when the hold ends is announced.
    #[serde(default = "default_artifact_hold_secs")]
    pub artifact_hold_secs: u64,
    /// Seconds a condition may be held back in all, from its first artifact verdict, however often later verdicts
    /// renew the hold while the disturbance goes on; `artifact_hold_secs..=600`, default 120. Bounds how long an
    /// artifact judgement can delay a medium/low alarm (high-priority alarms are never held).
    #[serde(default = "default_artifact_max_hold_secs")]
    pub artifact_max_hold_secs: u64,
    /// Consecutive deterioration rounds (each `score_interval_secs`) at or above the threshold before the
    /// medium-priority deterioration-risk alarm's condition starts; 1..=60, default 3. Once raised it ends only
    /// when the probability falls below 0.8 × the threshold. One crossing of a probability hovering at the
    /// threshold does not raise an alarm each time.
    #[serde(default = "default_deterioration_alarm_rounds")]
    pub deterioration_alarm_rounds: u32,
    /// Seconds between polls of the cloud's model registry for the versions assigned to this edge's wards
    /// (`edge/src/ml/pull.rs`), 10..=86400; absent = the edge never pulls models. A pulled model is verified like
    /// one loaded at start, must be newer (SemVer precedence) than the one running, and is kept under
    /// `dir/pulled/` so a restart runs it.
    #[serde(default)]
    pub pull_interval_secs: Option<u64>,
}

fn default_score_interval_secs() -> u64 {
    60
}

fn default_artifact_hold_secs() -> u64 {
    30
}

fn default_artifact_max_hold_secs() -> u64 {
    120
}

fn default_deterioration_alarm_rounds() -> u32 {
    3
}

impl ModelsConfig {
    /// The development default: `dir` with the given key file, every other setting at its default.
    pub fn new(dir: PathBuf, trusted_keys: PathBuf) -> Self {
        Self {
            dir,
            trusted_keys,
            score_interval_secs: default_score_interval_secs(),
            deterioration_threshold: None,
            deterioration_alarm_threshold: None,
            artifact_hold_secs: default_artifact_hold_secs(),
            artifact_max_hold_secs: default_artifact_max_hold_secs(),
            deterioration_alarm_rounds: default_deterioration_alarm_rounds(),
            pull_interval_secs: None,
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError::Invalid(s.to_string()));
        if !(10..=3600).contains(&self.score_interval_secs) {
            return bad("models.score_interval_secs must be 10..=3600");
        }
        if !(1..=300).contains(&self.artifact_hold_secs) {
            return bad("models.artifact_hold_secs must be 1..=300");
        }
        if !(self.artifact_hold_secs..=600).contains(&self.artifact_max_hold_secs) {
            return bad("models.artifact_max_hold_secs must be artifact_hold_secs..=600");
        }
        if !(1..=60).contains(&self.deterioration_alarm_rounds) {
            return bad("models.deterioration_alarm_rounds must be 1..=60");
        }
        if let Some(t) = self.deterioration_threshold
            && !(t.is_finite() && t > 0.0 && t < 1.0)
        {
            return bad("models.deterioration_threshold must be a probability in (0, 1)");
        }
        if let Some(t) = self.deterioration_alarm_threshold
            && !(t.is_finite() && t > 0.0 && t < 1.0)
        {
            return bad("models.deterioration_alarm_threshold must be a probability in (0, 1)");
        }
        if let Some(s) = self.pull_interval_secs
            && !(10..=86_400).contains(&s)
        {
            return bad("models.pull_interval_secs must be 10..=86400");
        }
        if self.dir.as_os_str().is_empty() || self.trusted_keys.as_os_str().is_empty() {
            return bad("models.dir and models.trusted_keys must be set");
        }
        Ok(())
    }
}

/// Outbox limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Disk budget in bytes; at the budget new events are refused (the source is told), never dropped silently.
    pub max_bytes: u64,
    /// Share of the budget at which a technical alarm is raised (0 < r < 1).
    pub near_full_ratio: f64,
    /// Seconds an acknowledged event is kept after the cloud acknowledged it, so that a device re-sending the
    /// same message (it missed our acknowledgement) is recognised by its idempotency key and not synced twice.
    /// The cloud deduplicates by sequence only. Retained rows are given up first when the budget needs space.
    #[serde(default = "default_key_retention_secs")]
    pub key_retention_secs: u64,
}

fn default_key_retention_secs() -> u64 {
    crate::outbox::DEFAULT_KEY_RETENTION.as_secs()
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: 2 << 30,
            near_full_ratio: 0.8,
            key_retention_secs: default_key_retention_secs(),
        }
    }
}

/// The mutual-TLS link to the cloud. There is no plaintext option.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudLinkConfig {
    /// Cloud sync endpoint, `https://host:port`.
    pub endpoint: String,
    /// Name the cloud's certificate must carry (defaults to the endpoint's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The hospital CA that signed the cloud's certificate (PEM).
    pub ca_cert: PathBuf,
    /// This edge's client certificate (PEM).
    pub client_cert: PathBuf,
    /// This edge's private key (PEM).
    pub client_key: PathBuf,
}

/// Sync tuning.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Largest batch sent (the cloud may lower it at registration).
    pub batch_max_events: usize,
    /// Batches sent before waiting for acknowledgements.
    pub max_in_flight: usize,
    /// First reconnect delay, ms.
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay, ms.
    pub backoff_max_ms: u64,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 1000,
            max_in_flight: 4,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl EdgeConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError::Invalid(s.to_string()));
        if self.wards.is_empty() {
            return bad("wards must name at least one ward");
        }
        if !(self.outbox.near_full_ratio > 0.0 && self.outbox.near_full_ratio < 1.0) {
            return bad("outbox.near_full_ratio must be between 0 and 1");
        }
        if self.outbox.key_retention_secs > 7 * 24 * 3600 {
            return bad("outbox.key_retention_secs must be at most a week (604800)");
        }
        if self.outbox.max_bytes < 1 << 20 {
            return bad("outbox.max_bytes must be at least 1 MiB");
        }
        if !self.cloud.endpoint.starts_with("https://") {
            return bad("cloud.endpoint must be an https:// URL: sync always uses mutual TLS");
        }
        if self.sync.batch_max_events == 0 || self.sync.batch_max_events > 10_000 {
            return bad("sync.batch_max_events must be 1..=10000");
        }
        if self.sync.max_in_flight == 0 || self.sync.max_in_flight > 64 {
            return bad("sync.max_in_flight must be 1..=64");
        }
        self.engine
            .alarms
            .validate()
            .map_err(ConfigError::Invalid)?;
        if let Some(st) = &self.station {
            st.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(h) = &self.hl7_mllp {
            h.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if let Some(m) = &self.mqtt {
            m.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if let Some(m) = &self.engine.models {
            m.validate()?;
        }
        if self.sync.backoff_initial_ms == 0
            || self.sync.backoff_max_ms < self.sync.backoff_initial_ms
        {
            return bad("sync.backoff_initial_ms must be > 0 and <= backoff_max_ms");
        }
        Ok(())
    }
}
