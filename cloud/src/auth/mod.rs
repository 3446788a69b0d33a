//! Who may call the FHIR API: SMART on FHIR Backend Services (token endpoint, client registry with public keys,
//! access tokens), the AuditEvent API over the audit trail, and helpers for clients that sign assertions.
//!
//! - [`scope`]: SMART `system/` scopes.
//! - [`token`]: `POST [base]/auth/token` (client_credentials with a `private_key_jwt` assertion) and
//!   `GET [base]/.well-known/smart-configuration`.
//! - [`audit_api`]: `GET [base]/AuditEvent`, `GET [base]/AuditEvent/{id}`, and the record of refused requests.
//! - [`client`]: signing client assertions (the demo's development client, tests, Rust clients).
//!
//! [`SmartService`] holds the registered clients and the access tokens. Issued tokens are opaque random strings;
//! the database keeps only their SHA-256 (table `access_tokens`), and this process keeps the same in memory so
//! that checking a bearer token on each request needs no database round trip. At start-up the table is read
//! back, so tokens survive a restart of the cloud.

pub mod audit_api;
pub mod client;
pub mod scope;
pub mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

/// The JWT library, re-exported so that clients in this workspace (the demo, tests) sign with the same code the
/// cloud verifies with.
pub use jsonwebtoken;

pub use scope::{Permissions, Scope};

use crate::config::{ApiClient, CloudConfig};
use crate::error::CloudError;
use crate::storage::{AccessTokenRow, StorageError, Store};

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The only signature algorithms accepted for client assertions (SMART Backend Services requires servers to
/// support RS384 and ES384; nothing else is accepted, in particular not `none` or HMAC).
pub const ASSERTION_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS384, Algorithm::ES384];
/// Longest lifetime of a client assertion: `exp` at most this far ahead (SMART: five minutes).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Clock skew tolerated between client and cloud, on `exp`, `nbf` and the lifetime limit.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// Path of the token endpoint under the FHIR base.
pub const TOKEN_PATH: &str = "/auth/token";
/// How long an expired access token is remembered, so that it is answered "expired" rather than "unknown".
pub const EXPIRED_TOKEN_MEMORY_MS: i64 = 3_600_000;
/// Resource types the API serves, for `scopes_supported` in the SMART configuration.
pub const SERVED_RESOURCE_TYPES: &[&str] = &["Observation", "Device", "AuditEvent"];

/// Why the client registry could not be built (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A client's JWKS file could not be read.
    #[error("api client {client}: cannot read JWKS {path}: {source}")]
    ReadJwks {
        /// Client id.
        client: String,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A client's JWKS is not usable.
    #[error("api client {client}: {why}")]
    Jwks {
        /// Client id.
        client: String,
        /// What is wrong.
        why: String,
    },
    /// A signing key for a client (demo, tests) could not be read or used.
    #[error("client signing key: {0}")]
    SigningKey(String),
    /// The database could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One public key a client signs its assertions with.
#[derive(Clone)]
pub(crate) struct ClientKey {
    /// `kid`, if the JWK has one.
    pub(crate) kid: Option<String>,
    /// The algorithm this key verifies: RS384 for RSA keys, ES384 for P-384 keys.
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A registered API client.
#[derive(Debug, Clone)]
pub(crate) struct RegisteredClient {
    /// Scopes it may be granted (validated at configuration time).
    pub(crate) scopes: Vec<Scope>,
    /// Its scopes as configured, for a static development token.
    pub(crate) scope_strings: Vec<String>,
    /// Public keys for `private_key_jwt`; empty if it has none.
    pub(crate) keys: Vec<ClientKey>,
    /// Hex SHA-256 of a static development token, if configured and enabled.
    pub(crate) static_token_sha256: Option<String>,
}

/// The registered clients, built from the configuration before any port is bound.
#[derive(Debug, Clone)]
pub struct ClientRegistry {
    clients: HashMap<String, RegisteredClient>,
}

impl ClientRegistry {
    /// Reads every client's JWKS (inline or from its file) and checks its keys. The configuration must already
    /// be validated.
    pub fn load(config: &CloudConfig) -> Result<Self, AuthSetupError> {
        let mut clients = HashMap::new();
        for c in &config.api_clients {
            let keys = match (&c.jwks, &c.jwks_path) {
                (Some(inline), _) => parse_jwks(&c.client_id, inline)?,
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|source| {
                        AuthSetupError::ReadJwks {
                            client: c.client_id.clone(),
                            path: path.clone(),
                            source,
                        }
                    })?;
                    parse_jwks(&c.client_id, &text)?
                }
                (None, None) => Vec::new(),
            };
            clients.insert(c.client_id.clone(), registered(c, keys, config)?);
        }
        Ok(Self { clients })
    }
}

fn registered(
    c: &ApiClient,
    keys: Vec<ClientKey>,
    config: &CloudConfig,
) -> Result<RegisteredClient, AuthSetupError> {
    let scopes = c
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AuthSetupError::Jwks {
            client: c.client_id.clone(),
            why: e.to_string(),
        })?;
    Ok(RegisteredClient {
        scopes,
        scope_strings: c.scopes.clone(),
        keys,
        static_token_sha256: c
            .token_sha256
            .as_ref()
            .filter(|_| config.api.dev_static_tokens)
            .map(|h| h.to_ascii_lowercase()),
    })
}

/// Parses a JWKS and keeps its keys as verifiers. Only RSA keys of at least 2048 bits (RS384) and EC P-384
/// keys (ES384) are accepted; anything else, or a key marked for encryption or for another algorithm, is a
/// configuration error rather than silently ignored.
fn parse_jwks(client: &str, text: &str) -> Result<Vec<ClientKey>, AuthSetupError> {
    let err = |why: String| AuthSetupError::Jwks {
        client: client.to_string(),
        why,
    };
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| err(format!("JWKS is not valid: {e}")))?;
    if set.keys.is_empty() {
        return Err(err("JWKS has no keys".into()));
    }
    let mut out = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(err(format!("key {name} is for encryption (use=enc)")));
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                // A 2048-bit modulus is 256 bytes, 342 base64url characters.
                if rsa.n.trim_end_matches('=').len() < 342 {
                    return Err(err(format!("RSA key {name} is shorter than 2048 bits")));
                }
                Algorithm::RS384
            }
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            _ => {
                return Err(err(format!(
                    "key {name} is neither RSA (RS384) nor EC P-384 (ES384)"
                )));
            }
        };
        match jwk.common.key_algorithm {
            None => {}
            Some(KeyAlgorithm::RS384) if alg == Algorithm::RS384 => {}
            Some(KeyAlgorithm::ES384) if alg == Algorithm::ES384 => {}
            Some(other) => {
                return Err(err(format!(
                    "key {name} declares alg {other:?}; only RS384 (RSA) and ES384 (P-384) are accepted"
                )));
            }
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| err(format!("key {name} is not usable: {e}")))?;
        out.push(ClientKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What an access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Expiry, Unix ms.
    pub expires_at_ms: i64,
}

/// An authenticated caller of the FHIR API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Client id.
    pub client_id: String,
    /// Scopes of the token it presented.
    pub scopes: Vec<String>,
}

/// SMART Backend Services: the registered clients and the access tokens issued to them.
#[derive(Debug)]
pub struct SmartService {
    clients: HashMap<String, RegisteredClient>,
    token_endpoint: String,
    token_ttl_secs: u64,
    client_id_system: String,
    /// Access tokens by hex SHA-256, including recently expired ones.
    tokens: RwLock<HashMap<String, Grant>>,
    /// When the token table and the replay cache were last pruned, Unix ms.
    last_prune_ms: AtomicI64,
}

impl SmartService {
    /// Builds the service from the client registry and the tokens stored before a restart
    /// ([`SmartService::stored_grants`]; those of clients no longer registered are left out). `token_endpoint` is the absolute URL clients post to, and the only
    /// `aud` accepted in their assertions.
    pub fn new(
        registry: ClientRegistry,
        grants: Vec<AccessTokenRow>,
        token_endpoint: String,
        token_ttl_secs: u64,
        client_id_system: String,
    ) -> Self {
        // Tokens of clients no longer registered are dropped: removing a client and restarting revokes them.
        let tokens = grants
            .into_iter()
            .filter(|t| registry.clients.contains_key(&t.client_id))
            .map(|t| {
                (
                    t.token_sha256,
                    Grant {
                        client_id: t.client_id,
                        scopes: t.scopes.split_whitespace().map(str::to_string).collect(),
                        expires_at_ms: t.expires_at_ms,
                    },
                )
            })
            .collect();
        Self {
            clients: registry.clients,
            token_endpoint,
            token_ttl_secs,
            client_id_system,
            tokens: RwLock::new(tokens),
            last_prune_ms: AtomicI64::new(0),
        }
    }

    /// The tokens to load at start-up: those not expired, or expired recently enough to be reported as such.
    pub async fn stored_grants(store: &Store) -> Result<Vec<AccessTokenRow>, AuthSetupError> {
        let since = wardwatch_proto::now_unix_ms() - EXPIRED_TOKEN_MEMORY_MS;
        Ok(store.access_tokens_since(since).await?)
    }

    /// The token endpoint URL (also the `aud` client assertions must carry).
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// Identifier system of client ids (AuditEvent agents).
    pub fn client_id_system(&self) -> &str {
        &self.client_id_system
    }

    /// Lifetime of issued access tokens, seconds.
    pub fn token_ttl_secs(&self) -> u64 {
        self.token_ttl_secs
    }

    pub(crate) fn client(&self, client_id: &str) -> Option<&RegisteredClient> {
        self.clients.get(client_id)
    }

    /// Resolves a bearer token: an issued access token (refused once expired) or, only when
    /// `[api] dev_static_tokens` is on, a client's static development token.
    pub fn authenticate(&self, bearer: &str, now_ms: i64) -> Result<Principal, CloudError> {
        let digest = hex::encode(Sha256::digest(bearer.as_bytes()));
        let grant = self
            .tokens
            .read()
            .map_err(|_| CloudError::Unavailable("token table is unavailable".into()))?
            .get(&digest)
            .cloned();
        if let Some(g) = grant {
            if g.expires_at_ms <= now_ms {
                return Err(CloudError::Unauthenticated(
                    "the access token has expired; request a new one at the token endpoint".into(),
                ));
            }
            return Ok(Principal {
                client_id: g.client_id,
                scopes: g.scopes,
            });
        }
        self.clients
            .iter()
            .find(|(_, c)| c.static_token_sha256.as_deref() == Some(digest.as_str()))
            .map(|(id, c)| Principal {
                client_id: id.clone(),
                scopes: c.scope_strings.clone(),
            })
            .ok_or_else(|| CloudError::Unauthenticated("the Bearer token is not valid".into()))
    }

    /// Remembers an issued token (already stored in the database).
    pub(crate) fn remember(&self, token_sha256: String, grant: Grant) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token_sha256, grant);
        }
    }

    /// At most once a minute: forgets tokens expired for longer than [`EXPIRED_TOKEN_MEMORY_MS`], here and in
    /// the database, and deletes replay-cache entries whose assertions can no longer be valid.
    pub(crate) async fn prune(&self, store: &Store, now_ms: i64) {
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now_ms - last < 60_000
            || self
                .last_prune_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let forget_before = now_ms - EXPIRED_TOKEN_MEMORY_MS;
        if let Ok(mut t) = self.tokens.write() {
            t.retain(|_, g| g.expires_at_ms >= forget_before);
        }
        if let Err(e) = store.prune_auth(now_ms, forget_before).await {
            tracing::warn!(error = %e, "pruning expired access tokens and assertion ids failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_with_unsupported_keys_is_refused() {
        let ok = r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"k1",
            "x":"FyxWV4A2pn96JZUy112iVX35iVlYQISIIlqM0ZJOVnwhgH5aVh8_JYj6VyPX8TPK",
            "y":"8ao6YA78EZjvlcTttwj_BSQITBHbaPuvphtmwCJja1jeAbCZwp7f1cFoj0JJ2UfR"}]}"#;
        let keys = parse_jwks("c", ok).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, Algorithm::ES384);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        for bad in [
            r#"{"keys":[]}"#,
            "not json",
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
        ] {
            assert!(parse_jwks("c", bad).is_err(), "{bad}");
        }
    }
}
