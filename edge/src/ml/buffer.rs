//! The per-bed buffer the feature builders read: one-minute bins for the deterioration window and a short ring
//! of raw samples for the artifact window. Fed incrementally, one sample at a time, as the engine sees them.

use super::artifact;
use super::deterioration;
use wardwatch_proto::v1::VitalSign;

use super::sample::{ContinuousSignal, Sample, SampleError, Signal};
use super::{ArtifactFeatures, DeteriorationFeatures};

/// One minute, in ms.
pub const MINUTE_MS: i64 = 60_000;

/// Length of the deterioration window in whole minutes (4 h).
pub const DETERIORATION_WINDOW_MIN: usize = 240;

/// Bins kept per signal: the window plus the minute under way.
const MINUTE_RING: usize = DETERIORATION_WINDOW_MIN + 1;

/// Raw samples kept per continuous signal: 2 min at up to 2 samples per second. At a higher rate the artifact
/// window sees only the newest `RAW_CAPACITY` samples.
pub const RAW_CAPACITY: usize = 256;

/// What one signal did within one minute (`[minute × 60 s, (minute + 1) × 60 s)` since the epoch).
///
/// The value is the newest *valid* sample of the minute (neither artifact nor sensor-off flagged; on equal times,
/// the one pushed last), not a mean: it is what a chart would show at the end of the minute, it equals what
/// NEWS2 scores (the newest valid sample), and a cohort thinned to this value per minute is exactly what the
/// edge's buffer holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteBin {
    /// Minute index: `floor(t / 60 000)`.
    pub minute: i64,
    /// The newest valid value, if any valid sample came.
    pub value: Option<f64>,
    /// Its measurement time (meaningful when `value` is set).
    pub at_unix_ms: i64,
    /// Samples of the minute, valid or not.
    pub n: u32,
    /// Of which valid (neither flag).
    pub n_valid: u32,
    /// Of which flagged artifact.
    pub n_artifact: u32,
    /// Of which flagged sensor-off.
    pub n_sensor_off: u32,
}

impl MinuteBin {
    const EMPTY: MinuteBin = MinuteBin {
        minute: i64::MIN,
        value: None,
        at_unix_ms: 0,
        n: 0,
        n_valid: 0,
        n_artifact: 0,
        n_sensor_off: 0,
    };

    /// An empty bin for `minute`.
    pub fn new(minute: i64) -> MinuteBin {
        MinuteBin {
            minute,
            ..MinuteBin::EMPTY
        }
    }

    /// Adds a sample of this minute (the caller checked the minute).
    pub fn add(&mut self, s: &Sample) {
        self.n = self.n.saturating_add(1);
        if s.quality.artifact() {
            self.n_artifact = self.n_artifact.saturating_add(1);
        }
        if s.quality.sensor_off() {
            self.n_sensor_off = self.n_sensor_off.saturating_add(1);
        }
        if s.quality.is_valid() {
            self.n_valid = self.n_valid.saturating_add(1);
        }
        if s.quality.is_valid() && (self.value.is_none() || s.at_unix_ms >= self.at_unix_ms) {
            self.value = Some(s.value);
            self.at_unix_ms = s.at_unix_ms;
        }
    }

    /// The bin's minute for a sample time.
    pub fn minute_of(at_unix_ms: i64) -> i64 {
        at_unix_ms.div_euclid(MINUTE_MS)
    }
}

/// One raw sample of a continuous signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawSample {
    /// Measurement time.
    pub at_unix_ms: i64,
    /// Value.
    pub value: f64,
    /// Neither artifact nor sensor-off flagged.
    pub valid: bool,
}

/// A fixed ring of the newest raw samples of one signal, oldest first when iterated.
#[derive(Debug, Clone)]
pub(super) struct RawRing {
    buf: Box<[RawSample]>,
    /// Next write position.
    head: usize,
    len: usize,
}

impl RawRing {
    fn new() -> Self {
        Self {
            buf: vec![
                RawSample {
                    at_unix_ms: 0,
                    value: 0.0,
                    valid: false
                };
                RAW_CAPACITY
            ]
            .into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn newest(&self) -> Option<&RawSample> {
        (self.len > 0).then(|| &self.buf[(self.head + RAW_CAPACITY - 1) % RAW_CAPACITY])
    }

    fn push(&mut self, s: RawSample) {
        self.buf[self.head] = s;
        self.head = (self.head + 1) % RAW_CAPACITY;
        self.len = (self.len + 1).min(RAW_CAPACITY);
    }

    /// The samples, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &RawSample> {
        let start = (self.head + RAW_CAPACITY - self.len) % RAW_CAPACITY;
        (0..self.len).map(move |i| &self.buf[(start + i) % RAW_CAPACITY])
    }
}

/// Why a sample was not taken into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Older than everything the buffer still keeps for its signal (its minute left the deterioration window).
    #[error("sample at {at_unix_ms} is older than the buffer's window")]
    TooOld {
        /// The sample's time.
        at_unix_ms: i64,
    },
    /// A continuous signal's sample older than the newest one already in its raw ring. Its minute bin took it
    /// (so the deterioration features see it); the artifact window, which needs order, does not.
    #[error("sample at {at_unix_ms} arrived after a newer one; kept for trends only")]
    OutOfOrder {
        /// The sample's time.
        at_unix_ms: i64,
    },
}

/// Why a vital sign did not enter a [`BedBuffer`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VitalError {
    /// Not a sample the models use, or not a usable one.
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// Too old, or out of order for the artifact window.
    #[error(transparent)]
    Push(#[from] PushError),
}

/// Everything the feature builders need about one bed, fed one sample at a time.
///
/// See the module documentation of [`crate::ml`] for what it holds. It is a plain value: the edge keeps one
/// per monitored patient and drops it when the patient leaves.
#[derive(Debug, Clone)]
pub struct BedBuffer {
    /// Per signal, bins indexed by `minute mod MINUTE_RING`.
    minutes: [Box<[MinuteBin]>; 8],
    /// Per continuous signal, the newest raw samples.
    raw: [RawRing; 4],
    /// NEWS2 SpO2 scale 2 (a clinical decision, passed in).
    spo2_scale_2: bool,
}

impl BedBuffer {
    /// An empty buffer for a patient on SpO2 scale 1 (`spo2_scale_2` false) or 2.
    pub fn new(spo2_scale_2: bool) -> Self {
        Self {
            minutes: std::array::from_fn(|_| {
                vec![MinuteBin::EMPTY; MINUTE_RING].into_boxed_slice()
            }),
            raw: std::array::from_fn(|_| RawRing::new()),
            spo2_scale_2,
        }
    }

    /// Whether SpO2 is scored on NEWS2 scale 2.
    pub fn spo2_scale_2(&self) -> bool {
        self.spo2_scale_2
    }

    /// Changes the SpO2 scale (a clinical decision); the next features use it.
    pub fn set_spo2_scale_2(&mut self, scale_2: bool) {
        self.spo2_scale_2 = scale_2;
    }

    /// Takes one sample. Samples may come late: a sample whose minute is still in the window goes into its bin
    /// (see [`MinuteBin`] for which value a bin keeps). A continuous signal's sample also enters the raw ring
    /// unless it is older than the newest one there.
    pub fn push(&mut self, s: &Sample) -> Result<(), PushError> {
        let minute = MinuteBin::minute_of(s.at_unix_ms);
        let ring = &mut self.minutes[s.signal.index()];
        let slot = &mut ring[minute.rem_euclid(MINUTE_RING as i64) as usize];
        if slot.minute > minute {
            // The slot already holds a newer minute: this minute left the window.
            return Err(PushError::TooOld {
                at_unix_ms: s.at_unix_ms,
            });
        }
        if slot.minute < minute {
            *slot = MinuteBin::new(minute);
        }
        slot.add(s);
        if let Some(c) = ContinuousSignal::of(s.signal) {
            let raw = &mut self.raw[c.index()];
            if raw.newest().is_some_and(|n| n.at_unix_ms > s.at_unix_ms) {
                return Err(PushError::OutOfOrder {
                    at_unix_ms: s.at_unix_ms,
                });
            }
            raw.push(RawSample {
                at_unix_ms: s.at_unix_ms,
                value: s.value,
                valid: s.quality.is_valid(),
            });
        }
        Ok(())
    }

    /// Takes a normalized vital sign as the engine sees it: [`Sample::from_vital`], then [`BedBuffer::push`].
    /// Metrics the models do not use are refused with [`VitalError::Sample`]; callers usually ignore that.
    pub fn push_vital(&mut self, v: &VitalSign) -> Result<(), VitalError> {
        let s = Sample::from_vital(v)?;
        self.push(&s)?;
        Ok(())
    }

    /// The bin of `signal` for `minute`, if the buffer holds it.
    pub fn bin(&self, signal: Signal, minute: i64) -> Option<&MinuteBin> {
        let b = &self.minutes[signal.index()][minute.rem_euclid(MINUTE_RING as i64) as usize];
        (b.minute == minute).then_some(b)
    }

    /// The raw ring of a continuous signal.
    pub(super) fn raw(&self, c: ContinuousSignal) -> &RawRing {
        &self.raw[c.index()]
    }

    /// The deterioration features at `now`: over the [`DETERIORATION_WINDOW_MIN`] complete minutes before the
    /// minute containing `now`. Call it with `now` at or after the newest sample pushed (the edge scores at
    /// minute boundaries); a bin later than the window is never read.
    pub fn features_at(&self, now_unix_ms: i64) -> DeteriorationFeatures {
        deterioration::build(self, now_unix_ms)
    }

    /// The artifact features at `now` for `query` (the signal whose alarm is being judged): raw samples in
    /// `(now − ARTIFACT_WINDOW_MS, now]`.
    pub fn artifact_features_at(
        &self,
        now_unix_ms: i64,
        query: ContinuousSignal,
    ) -> ArtifactFeatures {
        artifact::build(self, now_unix_ms, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::sample::Quality;

    pub(crate) fn sample(signal: Signal, at: i64, value: f64, q: u8) -> Sample {
        Sample {
            signal,
            value,
            at_unix_ms: at,
            quality: Quality(q),
        }
    }

    const T0: i64 = 1_800_000_000_000; // a minute boundary

    #[test]
    fn a_bin_keeps_the_newest_valid_value_and_counts() {
        let mut b = BedBuffer::new(false);
        let m = MinuteBin::minute_of(T0);
        b.push(&sample(Signal::SpO2, T0 + 1_000, 97.0, 0)).unwrap();
        b.push(&sample(Signal::SpO2, T0 + 2_000, 0.0, Quality::SENSOR_OFF))
            .unwrap();
        b.push(&sample(Signal::SpO2, T0 + 3_000, 80.0, Quality::ARTIFACT))
            .unwrap();
        let bin = b.bin(Signal::SpO2, m).unwrap();
        assert_eq!(bin.value, Some(97.0), "flagged samples are not values");
        assert_eq!(
            (bin.n, bin.n_valid, bin.n_artifact, bin.n_sensor_off),
            (3, 1, 1, 1)
        );
        // A late valid sample older than the stored one does not replace it; a newer one does.
        b.push(&sample(Signal::SpO2, T0 + 500, 95.0, 0))
            .unwrap_err();
        assert_eq!(b.bin(Signal::SpO2, m).unwrap().value, Some(97.0));
        assert_eq!(b.bin(Signal::SpO2, m).unwrap().n, 4);
        b.push(&sample(Signal::SpO2, T0 + 59_999, 96.0, 0)).unwrap();
        assert_eq!(b.bin(Signal::SpO2, m).unwrap().value, Some(96.0));
        // The next minute starts a new bin.
        b.push(&sample(Signal::SpO2, T0 + 60_000, 95.0, 0)).unwrap();
        assert_eq!(b.bin(Signal::SpO2, m + 1).unwrap().n, 1);
        assert!(b.bin(Signal::SpO2, m + 2).is_none());
    }

    #[test]
    fn late_samples_within_the_window_count_older_ones_are_refused() {
        let mut b = BedBuffer::new(false);
        let m = MinuteBin::minute_of(T0);
        b.push(&sample(Signal::Temperature, T0 + 300 * MINUTE_MS, 37.0, 0))
            .unwrap();
        // Temperature is not continuous: a late sample within the window is simply binned.
        b.push(&sample(Signal::Temperature, T0 + 100 * MINUTE_MS, 37.5, 0))
            .unwrap();
        assert_eq!(
            b.bin(Signal::Temperature, m + 100).unwrap().value,
            Some(37.5)
        );
        // Minute 60's slot (shared with minute 301) holds nothing newer: accepted, though outside the window.
        b.push(&sample(Signal::Temperature, T0 + 60 * MINUTE_MS, 36.9, 0))
            .unwrap();
        // Minute 300 - 241 = 59 shares its slot with 300: refused.
        assert_eq!(
            b.push(&sample(Signal::Temperature, T0 + 59 * MINUTE_MS, 36.9, 0)),
            Err(PushError::TooOld {
                at_unix_ms: T0 + 59 * MINUTE_MS
            })
        );
    }

    #[test]
    fn vitals_go_in_unused_metrics_are_refused() {
        let mut b = BedBuffer::new(false);
        let v = VitalSign {
            metric_mdc: wardwatch_proto::metrics::MDC_RESP_RATE,
            value: 18.0,
            unit_ucum: "/min".into(),
            measured_at_unix_ms: T0 + 1,
            ..Default::default()
        };
        b.push_vital(&v).unwrap();
        assert_eq!(
            b.bin(Signal::RespRate, MinuteBin::minute_of(T0))
                .unwrap()
                .value,
            Some(18.0)
        );
        let dia = VitalSign {
            metric_mdc: wardwatch_proto::metrics::MDC_PRESS_BLD_NONINV_DIA,
            ..v
        };
        assert!(matches!(
            b.push_vital(&dia),
            Err(VitalError::Sample(SampleError::UnusedMetric(_)))
        ));
    }

    #[test]
    fn raw_ring_keeps_the_newest_in_order() {
        let mut b = BedBuffer::new(false);
        for i in 0..(RAW_CAPACITY as i64 + 10) {
            b.push(&sample(Signal::HeartRate, T0 + i * 1_000, i as f64, 0))
                .unwrap();
        }
        let r: Vec<f64> = b
            .raw(ContinuousSignal::HeartRate)
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(r.len(), RAW_CAPACITY);
        assert_eq!(r[0], 10.0);
        assert_eq!(*r.last().unwrap(), RAW_CAPACITY as f64 + 9.0);
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            b.push(&sample(Signal::HeartRate, T0, 1.0, 0)),
            Err(PushError::OutOfOrder { at_unix_ms: T0 })
        );
        assert_eq!(
            b.raw(ContinuousSignal::HeartRate)
                .iter()
                .last()
                .unwrap()
                .value,
            RAW_CAPACITY as f64 + 9.0
        );
    }
}
