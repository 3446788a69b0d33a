//! Feature extraction for the edge's machine-learning models (issue 5): the deterioration model and the
//! artifact model whose training pipeline lives in `models/`.
//!
//! **Simulated data only.** The models these features feed were trained on the ward simulator's cohorts; they
//! are not clinically validated. The features themselves are plain arithmetic over the samples the clinical
//! engine already sees.
//!
//! # Why this module exists
//!
//! A model is only as good as the agreement between the features it was trained on and the features it is given
//! in production. The Python pipeline (`models/features.py`) computes the same features from the same samples;
//! golden vectors exported by it (`models/golden/*.json`) are checked against this module in
//! `edge/tests/ml_golden.rs`. Any change to a feature here must be made in Python too, the models retrained and
//! the golden files regenerated (`python models/train.py --out models/`).
//!
//! # Shape
//!
//! - [`Sample`]: one normalized measurement of a [`Signal`], built from a `VitalSign` with
//!   [`Sample::from_vital`]; carries the two quality flags that matter here (artifact, sensor off).
//! - [`BedBuffer`]: the per-bed state the edge keeps, fed incrementally with every sample
//!   ([`BedBuffer::push_vital`] takes the engine's `VitalSign`s as they are). It holds
//!   - per signal, a ring of one-minute bins over the last [`DETERIORATION_WINDOW_MIN`] minutes (the newest
//!     valid value of each minute plus counts of all and of flagged samples), and
//!   - for the four continuous signals (ECG heart rate, oximeter pulse rate, SpO2, respiratory rate), a ring of
//!     the last [`RAW_CAPACITY`] (128) raw samples for the 2-minute artifact window: all of it at 1 Hz, the
//!     newest 128 samples at higher rates (`models/features.py` keeps the same number).
//!
//!   Memory is fixed at construction and owns nothing on the heap: [`BedBuffer::BYTES`] = 35,408 bytes
//!   (34.6 KiB) per bed on x86-64, 69 MiB for 2,000 beds (it was about 120 KB, 240 MB, before the bins were
//!   stored column-wise with 2-byte times and counts and the raw ring was sized to the 2-minute window at
//!   1 Hz; no feature value changed: the golden vectors still match). Pushing a sample and computing features
//!   allocate nothing.
//! - [`BedBuffer::features_at`] (deterioration, [`DETERIORATION_FEATURES`]) and
//!   [`BedBuffer::artifact_features_at`] (artifact, [`ARTIFACT_FEATURES`]) produce fixed-length `f32` vectors in
//!   the order the models' `features` input expects. Every name and unit is in those tables and in each model's
//!   `manifest.json`.

mod artifact;
mod buffer;
mod deterioration;
pub mod pull;
pub mod runtime;
mod sample;

/// The inference crate (signed bundles, scoring threads), for callers that sign or load bundles themselves
/// (the demo signs the committed models with a development key).
pub use wardwatch_inference as inference;

pub use artifact::{ARTIFACT_FEATURES, ARTIFACT_WINDOW_MS, N_ARTIFACT_FEATURES, RECENT_MS};
pub use buffer::{
    BedBuffer, BinView, DETERIORATION_WINDOW_MIN, MINUTE_MS, MinuteBin, PushError, RAW_CAPACITY,
    RawSample, VitalError,
};
pub use deterioration::{DETERIORATION_FEATURES, N_DETERIORATION_FEATURES};
pub use sample::{ContinuousSignal, Quality, Sample, SampleError, Signal};

/// The name, unit and meaning of one model input feature. The tables of these are the documentation of the
/// models' input vectors and are copied into each model's `manifest.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    /// Stable snake-case name (also the Python name).
    pub name: &'static str,
    /// Unit (UCUM where one applies; "1" for counts, shares and flags).
    pub unit: &'static str,
    /// What it is.
    pub description: &'static str,
}

/// A deterioration feature vector for one bed at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct DeteriorationFeatures {
    /// Values in the order of [`DETERIORATION_FEATURES`].
    pub values: [f32; N_DETERIORATION_FEATURES],
    /// Start of the window the features describe (inclusive): `window_end - DETERIORATION_WINDOW_MIN` minutes.
    pub window_start_unix_ms: i64,
    /// End of the window (exclusive): the start of the minute containing `now`; only complete minutes count.
    pub window_end_unix_ms: i64,
}

/// An artifact feature vector for one signal of one bed at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactFeatures {
    /// Values in the order of [`ARTIFACT_FEATURES`].
    pub values: [f32; N_ARTIFACT_FEATURES],
    /// The signal the verdict is asked about.
    pub query: ContinuousSignal,
    /// Start of the window (exclusive): `now - ARTIFACT_WINDOW_MS`.
    pub window_start_unix_ms: i64,
    /// End of the window (inclusive): `now`.
    pub window_end_unix_ms: i64,
}
