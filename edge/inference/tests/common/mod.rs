//! Shared helpers for the integration tests: the committed test bundle and keys (tests/data, made by
//! make_test_models.py), and re-signing of edited manifests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use wardwatch_inference::signature::parse_signing_key;
use wardwatch_inference::{
    LoadOptions, ModelBundle, ModelFiles, ModelSlot, SigningKey, TrustedKeys, sign_manifest,
};

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(data_dir().join(name)).expect("committed test data")
}

/// The TEST release key (public in the repository; only tests trust it).
pub fn release_key() -> SigningKey {
    parse_signing_key(&read("test-release.key")).expect("test key")
}

/// A key the tests do not trust.
pub fn other_key() -> SigningKey {
    parse_signing_key(&read("other-release.key")).expect("other key")
}

pub fn trusted() -> TrustedKeys {
    TrustedKeys::load(&data_dir().join("test-release.pub")).expect("test public key")
}

/// The good bundle `mlp` (version 1.0.0) as committed.
pub fn good_files() -> ModelFiles {
    ModelFiles::read_dir(&data_dir().join("mlp"), 1 << 20).expect("committed bundle")
}

/// The good bundle `mlp-v2` (version 2.0.0) as committed.
pub fn v2_files() -> ModelFiles {
    ModelFiles::read_dir(&data_dir().join("mlp-v2"), 1 << 20).expect("committed bundle")
}

pub fn manifest_json(files: &ModelFiles) -> serde_json::Value {
    serde_json::from_slice(&files.manifest).expect("committed manifest is JSON")
}

/// Replaces the manifest with `manifest` and signs it with `key`: a bundle whose signature is valid, so only the
/// other checks can refuse it.
pub fn resigned(model: Vec<u8>, manifest: &serde_json::Value, key: &SigningKey) -> ModelFiles {
    let manifest = serde_json::to_vec_pretty(manifest).expect("serialises");
    let signature = sign_manifest(key, &manifest);
    ModelFiles {
        model,
        manifest,
        signature,
    }
}

/// `model` with a manifest naming its real sha256, properly signed by the release key.
pub fn signed_model(model: Vec<u8>, mut manifest: serde_json::Value) -> ModelFiles {
    use sha2::Digest;
    manifest["sha256"] = serde_json::Value::String(hex::encode(sha2::Sha256::digest(&model)));
    resigned(model, &manifest, &release_key())
}

pub fn load(files: &ModelFiles) -> Result<ModelBundle, wardwatch_inference::LoadError> {
    ModelBundle::from_files(files, &trusted(), &LoadOptions::default())
}

/// A slot holding the good v1 model.
pub fn slot_with_v1() -> Arc<ModelSlot> {
    let slot = Arc::new(ModelSlot::new("test", trusted(), LoadOptions::default()));
    slot.try_swap_dir(&data_dir().join("mlp"))
        .expect("good model loads");
    slot
}

/// Deterministic pseudo-random rows (no RNG dependency in tests).
pub fn rows(n: usize, width: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n * width)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 6.0 - 3.0
        })
        .collect()
}
