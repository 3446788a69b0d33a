//! Wardwatch edge inference: signed ONNX models run with tract, off the async runtime, with hot swap.
//!
//! This is the only crate in the workspace that depends on `tract-onnx`; the edge uses it through this API:
//!
//! - **Start-up.** Build [`TrustedKeys`] from the configured release key file, make one [`ModelSlot`] per model
//!   (deterioration, artifact) with [`LoadOptions`] naming the expected model and feature layout, call
//!   [`ModelSlot::try_swap_dir`] on the bundle directory, and start a [`Scorer`] on the slot. A refused model leaves
//!   the slot empty and scoring answers [`ScoreError::NoModel`]: the edge falls back to NEWS2 alone.
//! - **Every minute.** Build one feature row per bed and `scorer.score(rows, F).await` (or
//!   [`Scorer::score_rows`]); requests from many tasks are batched across beds on the scoring thread. Each
//!   [`Scores`] names the model (name, version, sha256) that made its probabilities.
//! - **New model arrives.** [`ModelSlot::try_swap_dir_async`] / [`ModelSlot::try_swap_files_async`]: verified and
//!   compiled before an atomic swap; scoring in flight is not interrupted; a refused model leaves the old one
//!   serving.
//! - **Status.** [`ModelSlot::status`] gives the model serving and the last refused update
//!   ([`SlotStatus::summary`]: "running old model … because …").
//!
//! Bundle layout and checks: [`bundle`]; signature format: [`signature`]; manifest: [`manifest`].
//!
//! ## Features
//!
//! `tract` (default) builds everything. Without it (`default-features = false`) only the tract-free checks are
//! built: [`signature`], [`manifest`], [`verify::verify_files`] (sizes, signature, manifest, sha256) and the
//! version order [`version`]. The cloud's model registry uses that, so the cloud never compiles tract.

#[cfg(feature = "tract")]
pub mod bundle;
pub mod error;
pub mod manifest;
#[cfg(feature = "tract")]
pub mod scorer;
pub mod signature;
#[cfg(feature = "tract")]
pub mod slot;
pub mod verify;
pub mod version;

#[cfg(feature = "tract")]
pub use bundle::{LoadOptions, ModelBundle, ModelIdentity, ModelRunner};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{KeyError, LoadError, ScoreError};
pub use manifest::Manifest;
#[cfg(feature = "tract")]
pub use scorer::{Prediction, Scorer, ScorerOptions, ScorerStats, Scores};
pub use signature::{SIGNATURE_CONTEXT, SignatureEnvelope, TrustedKeys, sign_manifest};
#[cfg(feature = "tract")]
pub use slot::{ModelSlot, SlotStatus, SwapFailure};
pub use verify::{
    MANIFEST_FILE, MODEL_FILE, ModelFiles, SIGNATURE_FILE, VerifiedManifest, sha256_hex,
    verify_files,
};
pub use version::ModelVersion;
