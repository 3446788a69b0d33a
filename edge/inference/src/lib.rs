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

pub mod bundle;
pub mod error;
pub mod manifest;
pub mod scorer;
pub mod signature;
pub mod slot;

pub use bundle::{
    LoadOptions, MANIFEST_FILE, MODEL_FILE, ModelBundle, ModelFiles, ModelIdentity, ModelRunner,
    SIGNATURE_FILE,
};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{KeyError, LoadError, ScoreError};
pub use manifest::Manifest;
pub use scorer::{Prediction, Scorer, ScorerOptions, ScorerStats, Scores};
pub use signature::{SIGNATURE_CONTEXT, SignatureEnvelope, TrustedKeys, sign_manifest};
pub use slot::{ModelSlot, SlotStatus, SwapFailure};
