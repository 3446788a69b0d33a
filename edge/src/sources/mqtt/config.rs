//! Configuration of the MQTT source, read from TOML like the rest of the edge configuration and validated before
//! anything connects.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Largest `max_payload_bytes` accepted (16 MiB): a vital-signs or infusion message is a few hundred bytes.
pub const MAX_PAYLOAD_LIMIT: usize = 16 << 20;

/// Configuration of the MQTT source.
///
/// Every field has a default, so a TOML table may name only what differs; unknown keys are an error.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Broker host name or IP address.
    pub broker_host: String,
    /// Broker TCP port.
    pub broker_port: u16,
    /// MQTT client id. With `clean_session = false` the broker keeps the session (subscriptions and queued QoS 1
    /// messages) under this id, so it must be stable across restarts and unique per edge node.
    pub client_id: String,
    /// Topic prefix the device topics live under (`<prefix>/<ward>/<bed>/<device_id>/vitals|infusion`).
    pub topic_prefix: String,
    /// Broker user name, if the broker requires one.
    pub username: Option<String>,
    /// Broker password (requires `username`). Never printed by `Debug`.
    pub password: Option<String>,
    /// `false` (the default) resumes the broker session on reconnect, so QoS 1 messages published while the edge
    /// was away are delivered when it returns. `true` loses them; only for experiments.
    pub clean_session: bool,
    /// MQTT keep-alive in seconds (5..=3600).
    pub keep_alive_secs: u64,
    /// Largest payload decoded; a larger one is dead-lettered as `oversized` and acknowledged.
    pub max_payload_bytes: usize,
    /// Rows kept in the dead-letter table; the oldest are deleted beyond this.
    pub dead_letter_max_rows: u64,
    /// Longest delay between reconnect attempts, ms (the delay starts at 100 ms and doubles, with jitter).
    pub reconnect_backoff_max_ms: u64,
}

impl Default for MqttSourceConfig {
    fn default() -> Self {
        Self {
            broker_host: "127.0.0.1".into(),
            broker_port: 1883,
            client_id: "wardwatch-edge".into(),
            topic_prefix: "wardwatch/v1".into(),
            username: None,
            password: None,
            clean_session: false,
            keep_alive_secs: 30,
            max_payload_bytes: 256 << 10,
            dead_letter_max_rows: 1_000,
            reconnect_backoff_max_ms: 30_000,
        }
    }
}

impl fmt::Debug for MqttSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSourceConfig")
            .field("broker_host", &self.broker_host)
            .field("broker_port", &self.broker_port)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("clean_session", &self.clean_session)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("dead_letter_max_rows", &self.dead_letter_max_rows)
            .field("reconnect_backoff_max_ms", &self.reconnect_backoff_max_ms)
            .finish()
    }
}

impl MqttSourceConfig {
    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError::Invalid(format!("mqtt.{s}")));
        let host = self.broker_host.trim();
        if host.is_empty() || host != self.broker_host || host.len() > 253 {
            return bad("broker_host must be a host name or address without spaces");
        }
        if self.broker_port == 0 {
            return bad("broker_port must not be 0");
        }
        if self.client_id.is_empty()
            || self.client_id.len() > 64
            || !self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad("client_id must be 1-64 of [A-Za-z0-9._-]");
        }
        let p = &self.topic_prefix;
        if p.is_empty() || p.len() > 512 {
            return bad("topic_prefix must be 1-512 bytes");
        }
        if p.starts_with('/') || p.ends_with('/') || p.split('/').any(str::is_empty) {
            return bad("topic_prefix must not start or end with '/' or contain an empty level");
        }
        if p.contains(['+', '#', '\0']) || p.starts_with('$') {
            return bad("topic_prefix must not contain '+', '#' or NUL, nor start with '$'");
        }
        match (&self.username, &self.password) {
            (None, Some(_)) => return bad("password requires username"),
            (Some(u), _) if u.is_empty() => return bad("username must not be empty when given"),
            _ => {}
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            return bad("keep_alive_secs must be 5..=3600");
        }
        if !(1024..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload_bytes) {
            return bad("max_payload_bytes must be 1024..=16777216");
        }
        if !(1..=100_000).contains(&self.dead_letter_max_rows) {
            return bad("dead_letter_max_rows must be 1..=100000");
        }
        if !(100..=600_000).contains(&self.reconnect_backoff_max_ms) {
            return bad("reconnect_backoff_max_ms must be 100..=600000");
        }
        Ok(())
    }

    /// The two subscriptions: `<prefix>/+/+/+/vitals` and `<prefix>/+/+/+/infusion`.
    pub fn subscriptions(&self) -> [String; 2] {
        [
            format!("{}/+/+/+/vitals", self.topic_prefix),
            format!("{}/+/+/+/infusion", self.topic_prefix),
        ]
    }

    /// Largest MQTT packet the client reads off the wire. Larger than `max_payload_bytes`, so a payload over the
    /// limit still arrives and is dead-lettered as `oversized` (and acknowledged) instead of breaking the
    /// connection; a packet beyond even this limit makes the client drop the connection, so the broker should cap
    /// messages at this size (mosquitto `message_size_limit`).
    pub fn transport_max_packet_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_mul(4)
            .max(self.max_payload_bytes.saturating_add(1 << 20))
            .min(256 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_config_defaults_validate_and_unknown_keys_are_refused() {
        let c = MqttSourceConfig::default();
        assert!(c.validate().is_ok());
        assert!(!c.clean_session);
        let parsed: MqttSourceConfig =
            toml::from_str("broker_host = \"mqtt.ward\"\nclient_id = \"edge-7a\"\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.broker_host, "mqtt.ward");
        assert_eq!(parsed.topic_prefix, "wardwatch/v1");
        assert!(toml::from_str::<MqttSourceConfig>("brokr_host = \"x\"").is_err());
    }

    #[test]
    fn mqtt_config_rejects_bad_values() {
        let ok = MqttSourceConfig::default();
        let cases: &[fn(&mut MqttSourceConfig)] = &[
            |c| c.broker_host = String::new(),
            |c| c.broker_port = 0,
            |c| c.client_id = String::new(),
            |c| c.client_id = "has space".into(),
            |c| c.topic_prefix = "a/+/b".into(),
            |c| c.topic_prefix = "a/#".into(),
            |c| c.topic_prefix = "/a".into(),
            |c| c.topic_prefix = "a//b".into(),
            |c| c.topic_prefix = "$SYS".into(),
            |c| c.password = Some("pw".into()),
            |c| c.keep_alive_secs = 0,
            |c| c.max_payload_bytes = 10,
            |c| c.max_payload_bytes = MAX_PAYLOAD_LIMIT + 1,
            |c| c.dead_letter_max_rows = 0,
            |c| c.reconnect_backoff_max_ms = 1,
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut c = ok.clone();
            f(&mut c);
            assert!(c.validate().is_err(), "case {i} should be invalid: {c:?}");
        }
    }

    #[test]
    fn mqtt_config_debug_redacts_the_password() {
        let c = MqttSourceConfig {
            username: Some("edge".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret") && s.contains("<redacted>"), "{s}");
    }

    #[test]
    fn mqtt_transport_limit_exceeds_the_payload_limit() {
        let c = MqttSourceConfig::default();
        assert!(c.transport_max_packet_bytes() > c.max_payload_bytes + 65_536);
        assert_eq!(c.subscriptions()[0], "wardwatch/v1/+/+/+/vitals");
    }
}
