//! Cloud configuration, read from TOML and validated before any port is bound.

use std::net::SocketAddr;
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

/// The whole cloud configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Directory for the embedded database and other state.
    pub data_dir: PathBuf,
    /// `sqlite://FILE` or `postgres://...`. Defaults to `sqlite://<data_dir>/wardwatch.sqlite`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Server certificate and the hospital CA used for both listeners.
    pub tls: TlsConfig,
    /// The edge sync listener (mutual TLS, gRPC).
    pub sync: SyncListenerConfig,
    /// The FHIR API listener (TLS, bearer tokens).
    pub api: ApiConfig,
    /// Edges allowed to connect, and the wards each may write.
    #[serde(default)]
    pub edges: Vec<EdgeRegistration>,
    /// API clients (EHRs) with their tokens and scopes.
    #[serde(default)]
    pub api_clients: Vec<ApiClient>,
    /// Topic-based subscriptions (delivery retries, endpoint rules); see docs/subscriptions.md.
    #[serde(default)]
    pub subscriptions: crate::subscriptions::SubscriptionsConfig,
    /// The model registry (issue 5): release keys and size limit; absent = no registry. See
    /// `cloud/src/model_registry`.
    #[serde(default)]
    pub model_registry: Option<crate::model_registry::ModelRegistryConfig>,
}

/// TLS material (PEM files).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Hospital CA: edge client certificates must chain to it.
    pub ca_cert: PathBuf,
    /// The cloud's server certificate.
    pub cert: PathBuf,
    /// The cloud's private key.
    pub key: PathBuf,
}

/// Edge sync listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncListenerConfig {
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest batch accepted; edges are told at registration.
    #[serde(default = "default_max_batch")]
    pub max_batch_events: u32,
    /// Batches of one sync stream stored concurrently (each in its own transaction, acknowledged in order). More
    /// than one overlaps a batch's commit with the next batch's work; 1 stores strictly one after another.
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: u32,
}

fn default_max_batch() -> u32 {
    5_000
}

fn default_pipeline_depth() -> u32 {
    4
}

/// FHIR API listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Path prefix of the FHIR base (e.g. "/fhir").
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// The FHIR base URL as clients reach it (used in Bundle links). Defaults to https://<listen><base_path>.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Identifier system of patient MRNs.
    #[serde(default = "default_mrn_system")]
    pub mrn_system: String,
    /// Identifier system of encounter visit numbers (HL7 v2 PV1-19): `Observation.encounter.identifier.system`
    /// and the system `encounter:identifier` searches accept. Like the MRN system, one per hospital.
    #[serde(default = "default_visit_number_system")]
    pub visit_number_system: String,
    /// Identifier system of device ids.
    #[serde(default = "default_device_system")]
    pub device_id_system: String,
    /// Identifier system of API client ids (the agents of AuditEvents).
    #[serde(default = "default_client_system")]
    pub client_id_system: String,
    /// Lifetime of access tokens issued by the token endpoint, seconds (1..=3600; SMART suggests at most 300).
    #[serde(default = "default_token_ttl")]
    pub access_token_ttl_secs: u64,
    /// Development only: also accept each client's static `token_sha256` bearer token, which never expires.
    /// Off by default; with it off, a client with `token_sha256` is a configuration error.
    #[serde(default)]
    pub dev_static_tokens: bool,
}

fn default_base_path() -> String {
    "/fhir".into()
}
fn default_mrn_system() -> String {
    "urn:wardwatch:mrn".into()
}
fn default_visit_number_system() -> String {
    "urn:wardwatch:visit-number".into()
}
fn default_device_system() -> String {
    "urn:wardwatch:device".into()
}
fn default_client_system() -> String {
    "urn:wardwatch:api-client".into()
}
fn default_token_ttl() -> u64 {
    300
}

/// One registered edge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRegistration {
    /// Edge id; its certificate must carry the URI SAN `urn:wardwatch:edge:<edge_id>`.
    pub edge_id: EdgeId,
    /// Wards it may write.
    pub wards: Vec<WardId>,
}

/// One API client (a backend system such as an EHR interface engine).
///
/// It authenticates with SMART Backend Services: it signs a JWT with its private key and exchanges it at the
/// token endpoint for a short-lived access token. Its public keys are registered here as a JWKS, inline
/// (`jwks`) or as a file (`jwks_path`). A static `token_sha256` is a development option only (see
/// [`ApiConfig::dev_static_tokens`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClient {
    /// Who the client is: `iss` and `sub` of its assertions, and the agent in the audit trail.
    pub client_id: String,
    /// Scopes it may be granted: SMART `system/` scopes, e.g. `system/Observation.rs`, `system/*.rs`, or
    /// `system/AuditEvent.rs` for the audit trail (which `system/*` does not reach).
    pub scopes: Vec<String>,
    /// Its public keys as a JWKS JSON document (RSA of at least 2048 bits for RS384, or EC P-384 for ES384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// A file holding its JWKS (instead of `jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_path: Option<PathBuf>,
    /// Development only: hex sha256 of a static bearer token, accepted only with `[api] dev_static_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

impl CloudConfig {
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

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join("wardwatch.sqlite").display()
            )
        })
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return bad(format!(
                "database_url must be sqlite:... or postgres://..., got {url:?}"
            ));
        }
        if !self.api.base_path.starts_with('/') || self.api.base_path.ends_with('/') {
            return bad("api.base_path must start with '/' and not end with one".into());
        }
        let system = &self.api.visit_number_system;
        if system.is_empty() || system.chars().any(|c| c.is_whitespace() || c == '|') {
            // It is a FHIR uri, and the part before `|` of an `encounter:identifier` search value.
            return bad(format!(
                "api.visit_number_system must be a URI without whitespace or '|', got {system:?}"
            ));
        }
        if self.sync.max_batch_events == 0 || self.sync.max_batch_events > 50_000 {
            return bad("sync.max_batch_events must be 1..=50000".into());
        }
        if self.sync.pipeline_depth == 0 || self.sync.pipeline_depth > 64 {
            return bad("sync.pipeline_depth must be 1..=64".into());
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.edges {
            if !seen.insert(e.edge_id.clone()) {
                return bad(format!("edge {} is registered twice", e.edge_id));
            }
            if e.wards.is_empty() {
                return bad(format!("edge {} has no wards", e.edge_id));
            }
        }
        self.subscriptions
            .validate()
            .map_err(ConfigError::Invalid)?;
        if let Some(m) = &self.model_registry {
            m.validate().map_err(ConfigError::Invalid)?;
        }
        if self.api.access_token_ttl_secs == 0 || self.api.access_token_ttl_secs > 3600 {
            return bad("api.access_token_ttl_secs must be 1..=3600".into());
        }
        let mut ids = std::collections::HashSet::new();
        for c in &self.api_clients {
            let id = &c.client_id;
            if id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return bad(format!(
                    "api client id {id:?} must be 1..=128 of [A-Za-z0-9._-]"
                ));
            }
            if !ids.insert(id.clone()) {
                return bad(format!("api client {id} is registered twice"));
            }
            for s in &c.scopes {
                crate::auth::Scope::parse(s)
                    .map_err(|e| ConfigError::Invalid(format!("api client {id}: {e}")))?;
            }
            if c.jwks.is_some() && c.jwks_path.is_some() {
                return bad(format!("api client {id}: give jwks or jwks_path, not both"));
            }
            if let Some(h) = &c.token_sha256 {
                if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    return bad(format!(
                        "api client {id}: token_sha256 must be 64 hex digits"
                    ));
                }
                if !self.api.dev_static_tokens {
                    return bad(format!(
                        "api client {id}: token_sha256 is a static development token; set [api] dev_static_tokens = true to allow it, or register the client's public keys (jwks) for SMART Backend Services"
                    ));
                }
            }
            if c.jwks.is_none() && c.jwks_path.is_none() && c.token_sha256.is_none() {
                return bad(format!(
                    "api client {id} has no credential: register its public keys (jwks or jwks_path)"
                ));
            }
        }
        Ok(())
    }
}
