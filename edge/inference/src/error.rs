//! Typed errors. Every way a model can be refused has its own variant, so the edge can report *why* it kept the
//! old model ("running old model because the new one failed its hash check") and tests can assert the exact reason.

use std::path::PathBuf;

use thiserror::Error;

/// Why a model bundle was refused. Nothing in this crate panics on a bad file: each check ends in one of these.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file of the bundle could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is larger than the configured limit (a guard against filling memory with a hostile file before any
    /// check has run).
    #[error("{what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },

    /// The signature file is not a well-formed signature envelope.
    #[error("malformed signature file: {0}")]
    MalformedSignature(String),

    /// The signature names a public key that is not one of the trusted release keys.
    #[error("signed by unknown key {public_key}: it is not one of the trusted release keys")]
    UnknownKey { public_key: String },

    /// The signature does not verify: the manifest was altered after signing, or the signature is not over it.
    #[error("bad signature: the manifest does not verify against release key {public_key}")]
    BadSignature { public_key: String },

    /// The (signed) manifest is not valid JSON or breaks the manifest contract.
    #[error("invalid manifest: {0}")]
    BadManifest(String),

    /// The model bytes are not the ones the signed manifest names.
    #[error(
        "hash mismatch: the manifest names model sha256 {expected}, the model file has {found}"
    )]
    HashMismatch { expected: String, found: String },

    /// The model file is not a readable ONNX model (truncated, corrupt, or uses something tract cannot run).
    #[error("corrupt model: {0}")]
    CorruptModel(String),

    /// A tensor name in the model differs from the manifest.
    #[error("{tensor} name mismatch: the manifest says {expected:?}, the model has {found:?}")]
    NameMismatch {
        tensor: &'static str,
        expected: String,
        found: String,
    },

    /// A tensor shape in the model differs from the manifest (e.g. the number of features).
    #[error("{tensor} shape mismatch: expected {expected}, found {found}")]
    ShapeMismatch {
        tensor: String,
        expected: String,
        found: String,
    },

    /// A tensor element type in the model differs from the manifest contract (float32).
    #[error("{tensor} type mismatch: expected {expected}, found {found}")]
    DtypeMismatch {
        tensor: String,
        expected: String,
        found: String,
    },

    /// The manifest and the model disagree on something other than names and shapes (e.g. the opset).
    #[error("manifest says {field} is {manifest}, the model says {model}")]
    ManifestMismatch {
        field: &'static str,
        manifest: String,
        model: String,
    },

    /// The model is valid but not the one this slot runs (another model name, or another feature layout than the
    /// one the edge's feature extraction produces).
    #[error("model does not fit this slot: {0}")]
    WrongModel(String),

    /// tract could not type-check, optimise or run the model for a fixed batch size.
    #[error("model cannot be compiled for batch {batch}: {message}")]
    Compile { batch: usize, message: String },

    /// The warm-up run produced something that is not a probability.
    #[error("model output is not a probability: {0}")]
    BadOutput(String),

    /// tract panicked on this model (it does on some malformed graphs instead of returning an error); the panic
    /// was caught and the model refused.
    #[error("tract panicked while {stage}: {message}")]
    Panicked {
        stage: &'static str,
        message: String,
    },
}

impl LoadError {
    /// A short stable name for the kind of failure, for status pages, metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::TooLarge { .. } => "too_large",
            LoadError::MalformedSignature(_) => "malformed_signature",
            LoadError::UnknownKey { .. } => "unknown_key",
            LoadError::BadSignature { .. } => "bad_signature",
            LoadError::BadManifest(_) => "bad_manifest",
            LoadError::HashMismatch { .. } => "hash_mismatch",
            LoadError::CorruptModel(_) => "corrupt_model",
            LoadError::NameMismatch { .. } => "name_mismatch",
            LoadError::ShapeMismatch { .. } => "shape_mismatch",
            LoadError::DtypeMismatch { .. } => "dtype_mismatch",
            LoadError::ManifestMismatch { .. } => "manifest_mismatch",
            LoadError::WrongModel(_) => "wrong_model",
            LoadError::Compile { .. } => "compile",
            LoadError::BadOutput(_) => "bad_output",
            LoadError::Panicked { .. } => "panicked",
        }
    }
}

/// Why a scoring request failed. Cloneable because one failed inference run answers every request it batched.
#[derive(Debug, Clone, Error, PartialEq)]
#[non_exhaustive]
pub enum ScoreError {
    /// The slot holds no model yet (none loaded at start-up, and none arrived since).
    #[error("no model loaded")]
    NoModel,

    /// The rows do not have the width the current model takes.
    #[error("rows have {found} features, the model takes {expected}")]
    FeatureCount { expected: usize, found: usize },

    /// A flat row buffer whose length is not a multiple of the row width.
    #[error("{len} values are not a whole number of rows of {width} features")]
    RaggedRows { len: usize, width: usize },

    /// tract returned an error while running the model.
    #[error("inference failed: {0}")]
    Inference(String),

    /// tract panicked while running the model; the panic was caught and the scorer keeps serving.
    #[error("inference panicked: {0}")]
    Panicked(String),

    /// The scoring thread has stopped (it only stops when every handle is dropped, or after a bug).
    #[error("the scoring thread has stopped")]
    Stopped,
}

/// A trusted-key configuration that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
    #[error("no trusted release key configured")]
    Empty,
}

/// Turns a caught panic payload into text.
#[cfg(feature = "tract")]
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
