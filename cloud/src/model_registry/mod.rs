//! The model registry (issue 5): signed edge model bundles, uploaded by an administrator, assigned to wards, and
//! pulled by the edges of those wards.
//!
//! - [`ModelRegistryConfig`], `[model_registry]` in the cloud config: the release keys an upload must be signed by
//!   and the size limit. Absent = no registry (the admin routes answer 404, edges are told nothing is assigned).
//! - [`ModelRegistry::verify_upload`]: the checks an upload must pass before anything is stored. They are the edge's
//!   own tract-free checks (`wardwatch_inference::verify_files`: sizes, ed25519 signature by a configured release
//!   key over the exact manifest bytes, manifest contract, sha256 of the model) plus a SemVer 2.0 version, so the
//!   edges can order versions.
//! - [`store`]: the `model_versions` and `model_assignments` tables (migration 0008) on both backends.
//! - [`api`]: the administrator routes on the HTTPS listener (`/admin/models…`, SMART scope
//!   `system/WardwatchModel.*`), every call audited.
//! - [`service`]: the `ModelDistribution` gRPC service on the mutual-TLS sync listener.
//!
//! The registry never runs a model and does not know ONNX: the edge checks the interface when it loads.

pub mod api;
pub mod service;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use wardwatch_inference::{LoadError, ModelFiles, ModelVersion, TrustedKeys};

/// Largest model.onnx accepted by default (64 MiB, the edge's default limit too).
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 64 << 20;
/// Upper bound of `max_model_bytes`.
pub const MAX_MODEL_BYTES_LIMIT: u64 = 256 << 20;

/// `[model_registry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRegistryConfig {
    /// File of the release public keys an upload must be signed by (hex ed25519, one per line, `#` comments; the
    /// same format as the edge's `trusted_keys`). Read at start; an unreadable or empty file stops the cloud.
    pub release_keys: PathBuf,
    /// Largest model.onnx accepted, bytes (1 KiB..=256 MiB, default 64 MiB). The upload body limit follows from
    /// it.
    #[serde(default = "default_max_model_bytes")]
    pub max_model_bytes: u64,
}

fn default_max_model_bytes() -> u64 {
    DEFAULT_MAX_MODEL_BYTES
}

impl ModelRegistryConfig {
    /// Checks ranges (the key file is read by [`ModelRegistry::load`], before any port is bound).
    pub fn validate(&self) -> Result<(), String> {
        if !(1024..=MAX_MODEL_BYTES_LIMIT).contains(&self.max_model_bytes) {
            return Err(format!(
                "model_registry.max_model_bytes must be 1024..={MAX_MODEL_BYTES_LIMIT}"
            ));
        }
        if self.release_keys.as_os_str().is_empty() {
            return Err("model_registry.release_keys must be set".into());
        }
        Ok(())
    }
}

/// Why the registry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    /// The release key file is unusable.
    #[error("model_registry.release_keys {path}: {source}")]
    Keys {
        /// The file.
        path: PathBuf,
        /// Why.
        source: wardwatch_inference::KeyError,
    },
}

/// Why an upload was refused. Each variant is one clear reason given back to the administrator.
#[derive(Debug, thiserror::Error)]
pub enum UploadRefusal {
    /// The bundle failed the edge's checks (signature, key, manifest, hash, size).
    #[error("{0}")]
    Bundle(#[from] LoadError),
    /// The version cannot be ordered.
    #[error(transparent)]
    Version(#[from] wardwatch_inference::version::VersionError),
    /// The request itself is malformed (not the expected JSON, not base64).
    #[error("malformed upload: {0}")]
    Malformed(String),
}

impl UploadRefusal {
    /// A short stable name of the reason (counters, logs, tests).
    pub fn kind(&self) -> &'static str {
        match self {
            UploadRefusal::Bundle(e) => e.kind(),
            UploadRefusal::Version(_) => "version",
            UploadRefusal::Malformed(_) => "malformed",
        }
    }
}

/// A verified upload, ready to store.
#[derive(Debug, Clone)]
pub struct VerifiedUpload {
    /// Manifest `name`.
    pub name: String,
    /// Manifest `version` (SemVer 2.0).
    pub version: String,
    /// sha256 of the model.
    pub sha256: String,
    /// Hex public key of the release key that signed it.
    pub signed_by: String,
    /// The three files, exactly as uploaded.
    pub files: ModelFiles,
}

/// Registry counters (read by tests; exported with the other counters when metrics export exists).
#[derive(Debug, Default)]
pub struct ModelRegistryStats {
    /// Uploads stored.
    pub uploads_accepted: AtomicU64,
    /// Uploads refused (bad signature, unknown key, hash, manifest, size, version, conflict).
    pub uploads_refused: AtomicU64,
    /// Ward assignments made.
    pub assignments: AtomicU64,
    /// Ward assignments removed.
    pub unassignments: AtomicU64,
    /// Models sent to edges.
    pub fetches: AtomicU64,
    /// ListAssigned/FetchModel calls refused (unknown edge, foreign ward, not assigned).
    pub edge_calls_refused: AtomicU64,
}

impl ModelRegistryStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The registry's settings and keys, shared by the admin API and the gRPC service.
#[derive(Debug)]
pub struct ModelRegistry {
    keys: TrustedKeys,
    max_model_bytes: u64,
    /// Counters.
    pub stats: ModelRegistryStats,
}

impl ModelRegistry {
    /// Reads the release keys (before any port is bound).
    pub fn load(cfg: &ModelRegistryConfig) -> Result<ModelRegistry, RegistrySetupError> {
        let keys =
            TrustedKeys::load(&cfg.release_keys).map_err(|source| RegistrySetupError::Keys {
                path: cfg.release_keys.clone(),
                source,
            })?;
        Ok(ModelRegistry::new(keys, cfg.max_model_bytes))
    }

    /// A registry trusting `keys`.
    pub fn new(keys: TrustedKeys, max_model_bytes: u64) -> ModelRegistry {
        ModelRegistry {
            keys,
            max_model_bytes,
            stats: ModelRegistryStats::default(),
        }
    }

    /// Largest model accepted, bytes.
    pub fn max_model_bytes(&self) -> u64 {
        self.max_model_bytes
    }

    /// The checks an upload must pass before it is stored: the edge's own (sizes, signature by a configured
    /// release key, manifest contract, sha256) and a SemVer 2.0 version. Pure; no I/O.
    pub fn verify_upload(&self, files: ModelFiles) -> Result<VerifiedUpload, UploadRefusal> {
        let verified = wardwatch_inference::verify_files(&files, &self.keys, self.max_model_bytes)?;
        ModelVersion::parse(&verified.manifest.version)?;
        Ok(VerifiedUpload {
            name: verified.manifest.name,
            version: verified.manifest.version,
            sha256: verified.manifest.sha256,
            signed_by: verified.signed_by,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_inference::{SigningKey, sha256_hex, sign_manifest};

    fn manifest(sha: &str, version: &str) -> Vec<u8> {
        format!(
            r#"{{"name":"wardwatch-deterioration","version":"{version}","sha256":"{sha}",
            "input":{{"name":"features","shape":[null,2],"dtype":"float32"}},
            "output":{{"name":"probability","shape":["batch",1]}},"feature_names":["a","b"]}}"#
        )
        .into_bytes()
    }

    fn registry(key: &SigningKey) -> ModelRegistry {
        ModelRegistry::new(
            TrustedKeys::new(vec![key.verifying_key()]).expect("one key"),
            4096,
        )
    }

    fn upload(key: &SigningKey, model: &[u8], version: &str) -> ModelFiles {
        let m = manifest(&sha256_hex(model), version);
        ModelFiles {
            signature: sign_manifest(key, &m),
            manifest: m,
            model: model.to_vec(),
        }
    }

    #[test]
    fn a_signed_bundle_with_a_semver_version_is_accepted() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let v = registry(&key)
            .verify_upload(upload(&key, b"onnx bytes", "2.0.0"))
            .expect("accepted");
        assert_eq!(
            (v.name.as_str(), v.version.as_str()),
            ("wardwatch-deterioration", "2.0.0")
        );
        assert_eq!(v.sha256, sha256_hex(b"onnx bytes"));
        assert_eq!(v.signed_by, hex::encode(key.verifying_key().as_bytes()));
    }

    #[test]
    fn each_bad_upload_is_refused_with_its_reason() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let reg = registry(&key);
        let kind = |files: ModelFiles| match reg.verify_upload(files) {
            Ok(_) => "accepted".to_string(),
            Err(e) => format!("{}: {e}", e.kind()),
        };
        // Model bytes swapped after signing: the signed manifest names another sha256.
        let mut tampered = upload(&key, b"onnx bytes", "2.0.0");
        tampered.model = b"other bytes".to_vec();
        assert!(kind(tampered).starts_with("hash_mismatch"));
        // Manifest edited after signing (a version relabelled).
        let mut relabelled = upload(&key, b"onnx bytes", "2.0.0");
        relabelled.manifest = manifest(&sha256_hex(b"onnx bytes"), "9.0.0");
        assert!(kind(relabelled).starts_with("bad_signature"));
        // Signed by a key the cloud does not trust.
        let stranger = SigningKey::from_bytes(&[4; 32]);
        assert!(kind(upload(&stranger, b"onnx bytes", "2.0.0")).starts_with("unknown_key"));
        // Garbage signature.
        let mut garbage = upload(&key, b"onnx bytes", "2.0.0");
        garbage.signature = b"not json".to_vec();
        assert!(kind(garbage).starts_with("malformed_signature"));
        // A version that cannot be ordered.
        let r = kind(upload(&key, b"onnx bytes", "latest"));
        assert!(r.starts_with("version") && r.contains("SemVer"), "{r}");
        // Over the size limit (4096 bytes here).
        assert!(kind(upload(&key, &[0u8; 5000], "2.0.0")).starts_with("too_large"));
    }

    #[test]
    fn config_ranges() {
        let ok = ModelRegistryConfig {
            release_keys: "keys.pub".into(),
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
        };
        assert!(ok.validate().is_ok());
        let small = ModelRegistryConfig {
            max_model_bytes: 10,
            ..ok.clone()
        };
        assert!(small.validate().is_err());
        let parsed: Result<ModelRegistryConfig, _> =
            toml::from_str("release_keys = \"k\"\nmax_model_byte = 5\n");
        assert!(parsed.is_err(), "unknown keys are refused");
    }
}
