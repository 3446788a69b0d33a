//! FHIR R4 topic-based subscriptions (HL7 Subscriptions R5 Backport IG) with a rest-hook channel.
//!
//! - [`topics`]: the topics and which synced events trigger them (pure).
//! - `storage::subscriptions`: subscriptions, their numbered events and delivery state, and the recording of
//!   events inside the ingest transaction (nothing is lost across a restart).
//! - [`api`]: `POST/GET/DELETE [base]/Subscription[/id]`, `$status`, `$events`, `GET [base]/SubscriptionTopic`.
//! - [`worker`]: the delivery task: handshake, heartbeats, notifications in event order, retries with capped
//!   exponential backoff for as long as the subscription lives.
//! - [`endpoint`]: which endpoint URLs are acceptable (SSRF) and the HTTP client that delivers.
//!
//! See docs/subscriptions.md.

pub mod api;
pub mod endpoint;
pub mod topics;
pub mod worker;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[subscriptions]` configuration table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// How often the delivery task looks for work, ms (50..=60000).
    pub poll_interval_ms: u64,
    /// First retry delay after a failed delivery, ms; it doubles per consecutive failure (10..=60000).
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms (at least `retry_initial_ms`, at most one hour). Retries never stop while the
    /// subscription exists.
    pub retry_max_ms: u64,
    /// Delivery timeout when a subscription gives none, seconds (1..=`max_timeout_secs`).
    pub default_timeout_secs: u32,
    /// Largest `backport-timeout` accepted, seconds (1..=300).
    pub max_timeout_secs: u32,
    /// Largest `backport-max-count` accepted (and the default), 1..=1000.
    pub max_count: u32,
    /// Shortest `backport-heartbeat-period` accepted, seconds (1..=86400).
    pub min_heartbeat_secs: u32,
    /// How long delivered events stay available to `$events`, hours (1..=8760). Undelivered events are kept
    /// whatever their age.
    pub event_retention_hours: u64,
    /// Subscriptions one client may hold (1..=10000).
    pub max_per_client: u32,
    /// If not empty, endpoint hosts must be one of these: an exact host name, or `*.example.org` for its
    /// subdomains.
    pub allowed_hosts: Vec<String>,
    /// Extra CA certificates (PEM files) trusted for `https` endpoints. The hospital CA (`[tls] ca_cert`) is
    /// always trusted; public CAs are not, unless listed here.
    pub endpoint_ca_certs: Vec<PathBuf>,
    /// Development only: allow `http://` endpoints on loopback addresses (127.0.0.0/8, ::1, `localhost`).
    /// Off by default: endpoints must be `https://` and loopback is refused.
    pub allow_loopback_http: bool,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            default_timeout_secs: 10,
            max_timeout_secs: 60,
            max_count: 100,
            min_heartbeat_secs: 10,
            event_retention_hours: 168,
            max_per_client: 100,
            allowed_hosts: Vec::new(),
            endpoint_ca_certs: Vec::new(),
            allow_loopback_http: false,
        }
    }
}

impl SubscriptionsConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("subscriptions.{name} must be {lo}..={hi}, got {v}"))
            }
        };
        range("poll_interval_ms", self.poll_interval_ms, 50, 60_000)?;
        range("retry_initial_ms", self.retry_initial_ms, 10, 60_000)?;
        range(
            "retry_max_ms",
            self.retry_max_ms,
            self.retry_initial_ms,
            3_600_000,
        )?;
        range("max_timeout_secs", self.max_timeout_secs.into(), 1, 300)?;
        range(
            "default_timeout_secs",
            self.default_timeout_secs.into(),
            1,
            self.max_timeout_secs.into(),
        )?;
        range("max_count", self.max_count.into(), 1, 1000)?;
        range(
            "min_heartbeat_secs",
            self.min_heartbeat_secs.into(),
            1,
            86_400,
        )?;
        range("event_retention_hours", self.event_retention_hours, 1, 8760)?;
        range("max_per_client", self.max_per_client.into(), 1, 10_000)?;
        for h in &self.allowed_hosts {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'))
            {
                return Err(format!(
                    "subscriptions.allowed_hosts: {h:?} is not a host name or *.domain"
                ));
            }
        }
        Ok(())
    }
}

/// Why the subscription machinery could not be set up (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionSetupError {
    /// A CA certificate file could not be read.
    #[error("subscriptions: cannot load CA certificates {path}: {why}")]
    Ca {
        /// File.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The HTTP client could not be built.
    #[error("subscriptions: HTTP client: {0}")]
    Client(String),
}

/// The subscription settings and the HTTP client, shared by the API routes and the delivery task.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    /// Configuration.
    pub config: SubscriptionsConfig,
    /// Delivers notifications (no redirects, SSRF-checking resolver, trusted CAs only).
    pub http: reqwest::Client,
}

impl Subscriptions {
    /// Loads the trusted CAs (the hospital CA plus `endpoint_ca_certs`) and builds the HTTP client.
    pub fn new(
        config: SubscriptionsConfig,
        hospital_ca: &std::path::Path,
    ) -> Result<Self, SubscriptionSetupError> {
        let mut paths = vec![hospital_ca.to_path_buf()];
        paths.extend(config.endpoint_ca_certs.iter().cloned());
        let mut roots = rustls::RootCertStore::empty();
        for p in &paths {
            let certs = crate::pki::load_certs(p).map_err(|e| SubscriptionSetupError::Ca {
                path: p.clone(),
                why: e.to_string(),
            })?;
            for c in certs {
                roots.add(c).map_err(|e| SubscriptionSetupError::Ca {
                    path: p.clone(),
                    why: e.to_string(),
                })?;
            }
        }
        let http = endpoint::client(roots, config.allow_loopback_http)
            .map_err(|e| SubscriptionSetupError::Client(e.to_string()))?;
        Ok(Self { config, http })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_table_is_strict_and_range_checked() {
        let c: SubscriptionsConfig = toml::from_str("retry_max_ms = 60000").expect("partial table");
        assert_eq!(c.retry_max_ms, 60_000);
        assert_eq!(
            c.retry_initial_ms,
            SubscriptionsConfig::default().retry_initial_ms
        );
        assert!(c.validate().is_ok());
        assert!(
            toml::from_str::<SubscriptionsConfig>("retry_max = 5").is_err(),
            "a misspelt key is an error"
        );
        for bad in [
            SubscriptionsConfig {
                retry_max_ms: 10,
                ..Default::default()
            },
            SubscriptionsConfig {
                poll_interval_ms: 0,
                ..Default::default()
            },
            SubscriptionsConfig {
                default_timeout_secs: 120,
                ..Default::default()
            },
            SubscriptionsConfig {
                max_count: 0,
                ..Default::default()
            },
            SubscriptionsConfig {
                allowed_hosts: vec!["ehr example".into()],
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(SubscriptionsConfig::default().validate().is_ok());
        assert!(!SubscriptionsConfig::default().allow_loopback_http);
    }
}
