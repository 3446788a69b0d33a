//! `[station]`: where the nurse station listens, its TLS material, its users and its sign-in policy. Validated
//! with the rest of the edge configuration, before anything is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::auth::{Role, check_hash};

/// Nurse station configuration.
///
/// ```toml
/// [station]
/// listen = "0.0.0.0:8443"
/// session_idle_secs = 900
///
/// [station.tls]
/// cert = "/etc/wardwatch/station.crt"
/// key = "/etc/wardwatch/station.key"
///
/// [[station.users]]
/// id = "a.jones"
/// name = "Alex Jones, RN"
/// role = "nurse"
/// password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # wardwatch-edge hash-password
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Address to serve on (the ward network; port 0 picks a free port). Without `tls` it must be a loopback
    /// address: passwords and patient data never cross the ward network in plain HTTP.
    pub listen: SocketAddr,
    /// TLS certificate and key; absent = plain HTTP, loopback only.
    #[serde(default)]
    pub tls: Option<StationTlsConfig>,
    /// The `https://host[:port]` origin browsers use when a TLS-terminating reverse proxy on the same host forwards
    /// to a loopback `listen`: state-changing requests must come from it, and the session cookie is `Secure`.
    /// Absent: the station's own scheme and `Host`.
    #[serde(default)]
    pub public_origin: Option<String>,
    /// The station's users (at least one).
    #[serde(default)]
    pub users: Vec<StationUser>,
    /// Seconds without activity after which a session ends; 1..=43200, default 900 (15 minutes).
    #[serde(default = "default_idle")]
    pub session_idle_secs: u64,
    /// Seconds after sign-in at which a session ends whatever the activity; >= `session_idle_secs`,
    /// at most 86400; default 43200 (a 12-hour shift).
    #[serde(default = "default_lifetime")]
    pub session_max_secs: u64,
    /// Consecutive failed sign-ins after which a user id is locked out; 1..=20, default 5. A client address is
    /// locked after four times as many, whatever user ids it tried.
    #[serde(default = "default_max_failed")]
    pub max_failed_logins: u32,
    /// Seconds a lockout lasts; 1..=86400, default 300.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
}

/// `[station.tls]`: the station's server certificate chain and key (PEM). The certificate should be issued by
/// the hospital CA that ward workstations trust, for the name nurses type.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StationTlsConfig {
    /// Certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One `[[station.users]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StationUser {
    /// Sign-in id, recorded as who acted: 1-64 of `[A-Za-z0-9._-]`, unique.
    pub id: String,
    /// Display name shown on the page: 1-100 characters, no control characters.
    pub name: String,
    /// `nurse` or `viewer`.
    pub role: Role,
    /// argon2id PHC string, as printed by `wardwatch-edge hash-password`. Never the password itself.
    pub password_hash: String,
}

fn default_idle() -> u64 {
    900
}
fn default_lifetime() -> u64 {
    43_200
}
fn default_max_failed() -> u32 {
    5
}
fn default_lockout() -> u64 {
    300
}

/// Whether `id` is a valid station user id.
pub fn valid_user_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl StationConfig {
    /// A station on `listen` with `users` and the default policy.
    pub fn new(listen: SocketAddr, users: Vec<StationUser>) -> Self {
        Self {
            listen,
            tls: None,
            public_origin: None,
            users,
            session_idle_secs: default_idle(),
            session_max_secs: default_lifetime(),
            max_failed_logins: default_max_failed(),
            lockout_secs: default_lockout(),
        }
    }

    /// Checks the policy ranges, the users and that plain HTTP is served on loopback only.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "station.listen {} is not a loopback address and [station.tls] is not set: the nurse station \
                 refuses to take passwords and serve patient data over plain HTTP on the ward network (configure \
                 [station.tls] cert and key, or listen on 127.0.0.1 behind a TLS-terminating proxy)",
                self.listen
            ));
        }
        if let Some(t) = &self.tls
            && (t.cert.as_os_str().is_empty() || t.key.as_os_str().is_empty())
        {
            return Err("station.tls.cert and station.tls.key must both be set".into());
        }
        if let Some(o) = &self.public_origin {
            let host = o.strip_prefix("https://").unwrap_or("");
            if host.is_empty()
                || o.len() > 255
                || host.chars().any(|c| {
                    !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
                })
            {
                return Err(format!(
                    "station.public_origin {o:?} must be https://host[:port] (no path, no trailing slash)"
                ));
            }
        }
        if !(1..=43_200).contains(&self.session_idle_secs) {
            return Err("station.session_idle_secs must be 1..=43200".into());
        }
        if self.session_max_secs < self.session_idle_secs || self.session_max_secs > 86_400 {
            return Err(
                "station.session_max_secs must be at least session_idle_secs and at most 86400"
                    .into(),
            );
        }
        if !(1..=20).contains(&self.max_failed_logins) {
            return Err("station.max_failed_logins must be 1..=20".into());
        }
        if !(1..=86_400).contains(&self.lockout_secs) {
            return Err("station.lockout_secs must be 1..=86400".into());
        }
        if self.users.is_empty() {
            return Err(
                "station.users must name at least one user (nobody could sign in to the nurse station)".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for u in &self.users {
            if !valid_user_id(&u.id) {
                return Err(format!(
                    "station user id {:?} must be 1-64 of A-Z a-z 0-9 . _ -",
                    u.id
                ));
            }
            if !seen.insert(u.id.as_str()) {
                return Err(format!("station user id {:?} appears twice", u.id));
            }
            let n = u.name.chars().count();
            if !(1..=100).contains(&n)
                || u.name.chars().any(char::is_control)
                || u.name.trim().is_empty()
            {
                return Err(format!(
                    "station user {:?}: name must be 1-100 printable characters",
                    u.id
                ));
            }
            check_hash(&u.password_hash).map_err(|e| format!("station user {:?}: {e}", u.id))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$3EjZ1G6QzFoXlN7bHbZ3fHq3bCzYx6j3o3yq0G1p0ZQ";

    fn toml_cfg(extra: &str) -> Result<StationConfig, String> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{extra}\n[[users]]\nid = \"n.one\"\nname = \"Nurse One\"\nrole = \"nurse\"\npassword_hash = \"{HASH}\"\n"
        );
        let c: StationConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_a_valid_config() {
        let c = toml_cfg("").unwrap();
        assert_eq!(c.session_idle_secs, 900);
        assert_eq!(c.session_max_secs, 43_200);
        assert_eq!(c.max_failed_logins, 5);
        assert_eq!(c.lockout_secs, 300);
        assert_eq!(c.users[0].role, Role::Nurse);
    }

    #[test]
    fn unknown_keys_and_roles_are_refused() {
        assert!(toml_cfg("sesion_idle_secs = 5").is_err());
        let e = toml::from_str::<StationConfig>(&format!(
            "listen = \"127.0.0.1:0\"\n[[users]]\nid = \"a\"\nname = \"A\"\nrole = \"admin\"\npassword_hash = \"{HASH}\"\n"
        ));
        assert!(e.is_err());
        let e = toml::from_str::<StationConfig>(&format!(
            "listen = \"127.0.0.1:0\"\n[[users]]\nid = \"a\"\nname = \"A\"\nrole = \"nurse\"\npassword = \"secret\"\npassword_hash = \"{HASH}\"\n"
        ));
        assert!(e.is_err(), "a plain password key is not accepted");
    }

    #[test]
    fn plain_http_off_loopback_is_refused() {
        let mut c = toml_cfg("").unwrap();
        c.listen = "0.0.0.0:8080".parse().unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("plain HTTP"), "{e}");
        c.listen = "10.0.0.5:8080".parse().unwrap();
        assert!(c.validate().is_err());
        c.listen = "[::1]:8080".parse().unwrap();
        assert!(c.validate().is_ok());
        c.listen = "0.0.0.0:8443".parse().unwrap();
        c.tls = Some(StationTlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        });
        assert!(c.validate().is_ok());
        c.tls = Some(StationTlsConfig {
            cert: "".into(),
            key: "k.pem".into(),
        });
        assert!(c.validate().is_err());
    }

    #[test]
    fn public_origin_must_be_an_https_origin() {
        for ok in [
            "https://ward7a.hospital.example",
            "https://ward7a:8443",
            "https://[fd00::1]:443",
        ] {
            let mut c = toml_cfg("").unwrap();
            c.public_origin = Some(ok.into());
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "http://ward7a",
            "https://",
            "https://ward7a/",
            "https://ward7a/path",
            "ward7a",
            "https://a b",
        ] {
            let mut c = toml_cfg("").unwrap();
            c.public_origin = Some(bad.into());
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn users_are_checked() {
        let mut c = toml_cfg("").unwrap();
        c.users.clear();
        assert!(c.validate().unwrap_err().contains("at least one user"));
        let mut c = toml_cfg("").unwrap();
        c.users.push(c.users[0].clone());
        assert!(c.validate().unwrap_err().contains("twice"));
        for bad_id in ["", "has space", "ä", &"x".repeat(65)] {
            let mut c = toml_cfg("").unwrap();
            c.users[0].id = bad_id.into();
            assert!(c.validate().is_err(), "{bad_id:?}");
        }
        for bad_name in ["", "   ", "line\nbreak"] {
            let mut c = toml_cfg("").unwrap();
            c.users[0].name = bad_name.into();
            assert!(c.validate().is_err(), "{bad_name:?}");
        }
        for bad_hash in [
            "hunter2hunter2",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            "",
        ] {
            let mut c = toml_cfg("").unwrap();
            c.users[0].password_hash = bad_hash.into();
            assert!(
                c.validate().unwrap_err().contains("argon2id"),
                "{bad_hash:?}"
            );
        }
    }

    #[test]
    fn policy_ranges() {
        assert!(toml_cfg("session_idle_secs = 0").is_err());
        assert!(toml_cfg("session_idle_secs = 43201\nsession_max_secs = 86400").is_err());
        assert!(toml_cfg("session_idle_secs = 600\nsession_max_secs = 300").is_err());
        assert!(toml_cfg("session_max_secs = 86401").is_err());
        assert!(toml_cfg("max_failed_logins = 0").is_err());
        assert!(toml_cfg("max_failed_logins = 21").is_err());
        assert!(toml_cfg("lockout_secs = 0").is_err());
        assert!(toml_cfg("session_idle_secs = 2\nsession_max_secs = 10\nmax_failed_logins = 3\nlockout_secs = 60").is_ok());
    }
}
