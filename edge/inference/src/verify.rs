//! The tract-free half of loading a bundle: file limits, the release signature, the manifest contract and the
//! model's sha256 ([`verify_files`]). [`crate::ModelBundle::from_files`] runs it first and only then hands the
//! model to tract; the cloud's model registry runs exactly the same checks on an upload, without tract (build the
//! crate with `default-features = false`).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::LoadError;
use crate::manifest::Manifest;
use crate::signature::TrustedKeys;

/// File name of the ONNX model in a bundle directory.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the manifest in a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the detached signature in a bundle directory.
pub const SIGNATURE_FILE: &str = "model.onnx.sig";

/// Manifests and signatures are small; anything bigger is refused before it is read.
pub const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;

/// The three files of a bundle, in memory (as read from a directory, or as pulled from the cloud registry).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub model: Vec<u8>,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
}

impl ModelFiles {
    /// Reads `model.onnx`, `manifest.json` and `model.onnx.sig` from `dir`, refusing files above the limits.
    pub fn read_dir(dir: &Path, max_model_bytes: u64) -> Result<ModelFiles, LoadError> {
        Ok(ModelFiles {
            model: read_limited(&dir.join(MODEL_FILE), max_model_bytes, "model.onnx")?,
            manifest: read_limited(
                &dir.join(MANIFEST_FILE),
                MAX_SMALL_FILE_BYTES,
                "manifest.json",
            )?,
            signature: read_limited(
                &dir.join(SIGNATURE_FILE),
                MAX_SMALL_FILE_BYTES,
                "model.onnx.sig",
            )?,
        })
    }
}

fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit instead of trusting the metadata (the file may grow while it is read).
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(LoadError::TooLarge {
            what,
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// A bundle whose signature, manifest and model hash were verified (steps 1 to 4 of [`crate::bundle`]); the
/// model itself has not been parsed.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    /// The parsed, validated manifest.
    pub manifest: Manifest,
    /// Hex public key of the release key that signed it.
    pub signed_by: String,
}

/// Checks the sizes, the signature over the manifest (by one of `keys`), the manifest contract and the sha256 of
/// the model against the manifest, in that order (cheapest and most security-relevant first). Tract-free.
pub fn verify_files(
    files: &ModelFiles,
    keys: &TrustedKeys,
    max_model_bytes: u64,
) -> Result<VerifiedManifest, LoadError> {
    let size = files.model.len() as u64;
    if size > max_model_bytes {
        return Err(LoadError::TooLarge {
            what: "model.onnx",
            size,
            limit: max_model_bytes,
        });
    }
    for (what, len) in [
        ("manifest.json", files.manifest.len()),
        ("model.onnx.sig", files.signature.len()),
    ] {
        if len as u64 > MAX_SMALL_FILE_BYTES {
            return Err(LoadError::TooLarge {
                what,
                size: len as u64,
                limit: MAX_SMALL_FILE_BYTES,
            });
        }
    }
    let signed_by = keys.verify_manifest(&files.manifest, &files.signature)?;
    let manifest = Manifest::parse(&files.manifest)?;
    let found = sha256_hex(&files.model);
    if found != manifest.sha256 {
        return Err(LoadError::HashMismatch {
            expected: manifest.sha256.clone(),
            found,
        });
    }
    Ok(VerifiedManifest {
        manifest,
        signed_by,
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
