//! The client side of SMART Backend Services: a private key that signs client assertions, and its public JWKS
//! to register with the cloud. The demo's development client and the tests use it; it is the same code path a
//! Rust EHR integration would take.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;

use super::{AuthSetupError, MAX_ASSERTION_LIFETIME_SECS};

/// A client's signing key.
#[derive(Clone)]
pub struct ClientSigner {
    client_id: String,
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    public: Jwk,
}

impl std::fmt::Debug for ClientSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSigner")
            .field("client_id", &self.client_id)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientSigner {
    /// Loads a PEM private key: an EC P-384 key in PKCS#8 for `ES384`, or an RSA key (PKCS#1 or PKCS#8) for
    /// `RS384`. `kid` names the key in the JWKS and in assertion headers.
    pub fn from_pem(
        client_id: &str,
        alg: Algorithm,
        kid: &str,
        pem: &[u8],
    ) -> Result<Self, AuthSetupError> {
        let bad = |e: jsonwebtoken::errors::Error| AuthSetupError::SigningKey(e.to_string());
        let key = match alg {
            Algorithm::ES384 => EncodingKey::from_ec_pem(pem).map_err(bad)?,
            Algorithm::RS384 => EncodingKey::from_rsa_pem(pem).map_err(bad)?,
            other => {
                return Err(AuthSetupError::SigningKey(format!(
                    "{other:?} is not used for client assertions (RS384 or ES384)"
                )));
            }
        };
        let mut public = Jwk::from_encoding_key(&key, alg).map_err(bad)?;
        public.common.key_id = Some(kid.to_string());
        Ok(Self {
            client_id: client_id.to_string(),
            alg,
            kid: kid.to_string(),
            key,
            public,
        })
    }

    /// Loads a PEM private key from a file (see [`ClientSigner::from_pem`]).
    pub fn from_pem_file(
        client_id: &str,
        alg: Algorithm,
        kid: &str,
        path: &Path,
    ) -> Result<Self, AuthSetupError> {
        let pem = std::fs::read(path).map_err(|e| {
            AuthSetupError::SigningKey(format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_pem(client_id, alg, kid, &pem)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The public key set to register with the cloud (`[[api_clients]] jwks` or `jwks_path`).
    pub fn public_jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public.clone()],
        }
    }

    /// A fresh client assertion for the token endpoint `aud`: `iss` = `sub` = client id, `exp` in
    /// `lifetime_secs` (at most five minutes), a random `jti`.
    pub fn assertion(&self, aud: &str, lifetime_secs: i64) -> Result<String, AuthSetupError> {
        let now = wardwatch_proto::now_unix_ms() / 1000;
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        self.sign(&serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": aud,
            "iat": now,
            "exp": now + lifetime_secs.clamp(1, MAX_ASSERTION_LIFETIME_SECS),
            "jti": hex::encode(jti),
        }))
    }

    /// Signs arbitrary claims with this key (tests build wrong assertions with it).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, AuthSetupError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| AuthSetupError::SigningKey(e.to_string()))
    }

    /// The form body of a token request with this client's assertion.
    pub fn token_request(&self, aud: &str, scope: &str) -> Result<String, AuthSetupError> {
        Ok(token_request_form(&self.assertion(aud, 60)?, scope))
    }
}

/// The `application/x-www-form-urlencoded` body of a client-credentials token request.
pub fn token_request_form(assertion: &str, scope: &str) -> String {
    serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_assertion_type", super::ASSERTION_TYPE),
        ("client_assertion", assertion),
        ("scope", scope),
    ])
    .unwrap_or_default()
}

/// Creates a development client key (EC P-384, PKCS#8 PEM, mode 0600) at `path` unless a readable one is there,
/// and returns its signer. For development only: the key sits in plain text on disk.
pub fn dev_client_key(
    client_id: &str,
    kid: &str,
    path: &Path,
) -> Result<ClientSigner, AuthSetupError> {
    if path.exists()
        && let Ok(s) = ClientSigner::from_pem_file(client_id, Algorithm::ES384, kid, path)
    {
        return Ok(s);
    }
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .map_err(|e| AuthSetupError::SigningKey(format!("generating a P-384 key: {e}")))?;
    let pem = pair.serialize_pem();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| AuthSetupError::SigningKey(format!("creating {}: {e}", dir.display())))?;
    }
    write_private(path, pem.as_bytes())
        .map_err(|e| AuthSetupError::SigningKey(format!("writing {}: {e}", path.display())))?;
    ClientSigner::from_pem(client_id, Algorithm::ES384, kid, pem.as_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_key_is_created_once_and_signs_verifiable_assertions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki/dev-ehr.key");
        let a = dev_client_key("dev-ehr", "k1", &path).unwrap();
        let b = dev_client_key("dev-ehr", "k1", &path).unwrap();
        assert_eq!(a.public_jwks(), b.public_jwks(), "the key is reused");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let jwks = serde_json::to_value(a.public_jwks()).unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "EC");
        assert_eq!(jwks["keys"][0]["crv"], "P-384");
        assert_eq!(jwks["keys"][0]["kid"], "k1");
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
        let jwt = a.assertion("https://x/fhir/auth/token", 60).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::ES384);
    }
}
