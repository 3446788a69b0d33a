//! Release signatures: a detached ed25519 signature over the manifest.
//!
//! ## Format (the contract with the training pipeline and the cloud model registry)
//!
//! `model.onnx.sig` is a small JSON envelope:
//!
//! ```json
//! {"algorithm": "ed25519", "public_key": "<64 hex>", "signature": "<128 hex>"}
//! ```
//!
//! The signed message is [`SIGNATURE_CONTEXT`] (`wardwatch-model-manifest-v1` and a newline) followed by the exact
//! bytes of `manifest.json`. Why this shape:
//!
//! - **The manifest, not the model, is signed.** It names the model's sha256, so one signature covers the model,
//!   its name and version and its feature layout: a validly signed model cannot be relabelled as another version or
//!   paired with another feature list.
//! - **Exact bytes, no canonical JSON.** The verifier never re-serialises anything, so any JSON writer can produce
//!   manifests (Python's `json.dumps`, a registry's upload form) without a canonicalisation scheme to get wrong.
//! - **A context prefix.** The release key may sign other things one day; the prefix makes a signature over some
//!   other artefact useless as a manifest signature.
//! - **The envelope names the key.** So "signed by a key we do not trust" ([`LoadError::UnknownKey`]) is told apart
//!   from "signature does not verify" ([`LoadError::BadSignature`]), and keys can be rotated by trusting the new
//!   one next to the old one. Naming the key grants nothing: it must be in [`TrustedKeys`].
//!
//! Verification uses `verify_strict` (rejects small-order keys and non-canonical signatures).

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{KeyError, LoadError};

/// Prefix of every signed message: domain separation for the release key.
pub const SIGNATURE_CONTEXT: &[u8] = b"wardwatch-model-manifest-v1\n";

/// The JSON envelope stored in `model.onnx.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEnvelope {
    /// Always `ed25519`.
    pub algorithm: String,
    /// Hex of the 32-byte ed25519 public key that made the signature.
    pub public_key: String,
    /// Hex of the 64-byte signature over `SIGNATURE_CONTEXT || manifest.json`.
    pub signature: String,
}

/// The release public keys this edge trusts. A model must be signed by one of them.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// Trusts exactly these keys.
    pub fn new(keys: Vec<VerifyingKey>) -> Result<TrustedKeys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(TrustedKeys { keys })
    }

    /// Parses a key file: one hex public key per line; blank lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let key = parse_public_key(line).map_err(|message| KeyError::Invalid {
                line: i + 1,
                message,
            })?;
            keys.push(key);
        }
        TrustedKeys::new(keys)
    }

    /// Reads a key file (see [`TrustedKeys::parse`]).
    pub fn load(path: &Path) -> Result<TrustedKeys, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        TrustedKeys::parse(&text)
    }

    /// The trusted keys, as hex.
    pub fn hex_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode(k.as_bytes()))
            .collect()
    }

    /// Verifies `signature_file` (the envelope) over `manifest` and returns the hex public key that signed it.
    pub fn verify_manifest(
        &self,
        manifest: &[u8],
        signature_file: &[u8],
    ) -> Result<String, LoadError> {
        let envelope: SignatureEnvelope = serde_json::from_slice(signature_file)
            .map_err(|e| LoadError::MalformedSignature(format!("not a signature envelope: {e}")))?;
        if envelope.algorithm != "ed25519" {
            return Err(LoadError::MalformedSignature(format!(
                "algorithm {:?} is not supported (only ed25519)",
                envelope.algorithm
            )));
        }
        let key = parse_public_key(&envelope.public_key).map_err(LoadError::MalformedSignature)?;
        let key_hex = hex::encode(key.as_bytes());
        if !self.keys.iter().any(|k| k.as_bytes() == key.as_bytes()) {
            return Err(LoadError::UnknownKey {
                public_key: key_hex,
            });
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(envelope.signature.trim(), &mut sig).map_err(|e| {
            LoadError::MalformedSignature(format!("signature is not 64 bytes of hex: {e}"))
        })?;
        let sig = Signature::from_bytes(&sig);
        key.verify_strict(&signed_message(manifest), &sig)
            .map_err(|_| LoadError::BadSignature {
                public_key: key_hex.clone(),
            })?;
        Ok(key_hex)
    }
}

/// Signs a manifest with a release key and returns the `model.onnx.sig` file contents (used by release tooling
/// and tests; the edge only verifies).
pub fn sign_manifest(key: &SigningKey, manifest: &[u8]) -> Vec<u8> {
    let envelope = SignatureEnvelope {
        algorithm: "ed25519".to_string(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(key.sign(&signed_message(manifest)).to_bytes()),
    };
    let mut out = serde_json::to_vec_pretty(&envelope).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Parses a hex ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|e| format!("public key is not 32 bytes of hex: {e}"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// Parses a hex ed25519 secret seed (32 bytes), as release tooling keeps it.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|e| format!("secret key is not 32 bytes of hex: {e}"))?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + manifest.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(manifest);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn round_trip_and_each_failure() {
        let release = key(1);
        let trusted = TrustedKeys::new(vec![release.verifying_key()]).expect("one key");
        let manifest = br#"{"name":"m"}"#;
        let sig = sign_manifest(&release, manifest);
        let signer = trusted.verify_manifest(manifest, &sig).expect("verifies");
        assert_eq!(signer, hex::encode(release.verifying_key().as_bytes()));

        // Altered manifest.
        let err = trusted
            .verify_manifest(br#"{"name":"n"}"#, &sig)
            .unwrap_err();
        assert!(matches!(err, LoadError::BadSignature { .. }), "{err}");
        // Unknown key.
        let err = trusted
            .verify_manifest(manifest, &sign_manifest(&key(2), manifest))
            .unwrap_err();
        assert!(matches!(err, LoadError::UnknownKey { .. }), "{err}");
        // Garbage.
        let err = trusted.verify_manifest(manifest, b"\x00\x01").unwrap_err();
        assert!(matches!(err, LoadError::MalformedSignature(_)), "{err}");
        // A signature without the context prefix (e.g. a plain `sign(manifest)`) is refused.
        let plain = SignatureEnvelope {
            algorithm: "ed25519".into(),
            public_key: hex::encode(release.verifying_key().as_bytes()),
            signature: hex::encode(release.sign(manifest).to_bytes()),
        };
        let plain = serde_json::to_vec(&plain).expect("serialises");
        assert!(matches!(
            trusted.verify_manifest(manifest, &plain),
            Err(LoadError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_file_parsing() {
        let a = hex::encode(key(1).verifying_key().as_bytes());
        let b = hex::encode(key(2).verifying_key().as_bytes());
        let keys = TrustedKeys::parse(&format!("# release keys\n{a}\n\n{b}  # rotated 2026\n"))
            .expect("parses");
        assert_eq!(keys.hex_keys(), vec![a, b]);
        assert!(matches!(
            TrustedKeys::parse("# nothing\n"),
            Err(KeyError::Empty)
        ));
        assert!(matches!(
            TrustedKeys::parse("zz\n"),
            Err(KeyError::Invalid { line: 1, .. })
        ));
    }
}
