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

/// Raw samples kept per continuous signal: the artifact window (120 s) at one sample a second, the rate of ward
/// monitors' numerics and of the simulator, with room for a few duplicates. At a higher rate the artifact
/// window sees only the newest `RAW_CAPACITY` samples (the last 64 s at 2 Hz); `models/features.py` keeps the
/// same number, so training and the edge agree either way.
pub const RAW_CAPACITY: usize = 128;

/// What one signal did within one minute (`[minute × 60 s, (minute + 1) × 60 s)` since the epoch): the
/// accumulator the cohort exporter (`tests/src/bin/export_cohort.rs`) bins samples with, exactly as the edge's
/// buffer bins them (the buffer stores the same values column-wise and reports them as a [`BinView`]).
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
    /// An empty bin for `minute`.
    pub fn new(minute: i64) -> MinuteBin {
        MinuteBin {
            minute,
            value: None,
            at_unix_ms: 0,
            n: 0,
            n_valid: 0,
            n_artifact: 0,
            n_sensor_off: 0,
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

/// A minute bin as [`BedBuffer::bin`] reports it: the same value, time and counts a [`MinuteBin`] of the same
/// samples has (the buffer does not keep the per-flag counts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinView {
    /// Minute index: `floor(t / 60 000)`.
    pub minute: i64,
    /// The newest valid value, if any valid sample came.
    pub value: Option<f64>,
    /// Its measurement time (meaningful when `value` is set).
    pub at_unix_ms: i64,
    /// Samples of the minute, valid or not (saturating at 65 535 a minute).
    pub n: u32,
    /// Of which valid (neither flag).
    pub n_valid: u32,
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

/// The minute bins of one signal, stored column-wise: 14 bytes a minute instead of a 48-byte struct. The ring
/// holds the minutes `head − 240 ..= head`; a slot is cleared when the ring advances past it, so no minute tag is
/// stored per slot.
#[derive(Debug, Clone)]
struct SignalBins {
    /// Newest minute held (`i64::MIN`: none yet).
    head: i64,
    /// Newest valid value of the minute; NaN if none (pushed values are finite, so NaN is free to mean "none").
    value: [f64; MINUTE_RING],
    /// Milliseconds into the minute of `value`.
    at_ms: [u16; MINUTE_RING],
    /// Samples of the minute (saturating).
    n: [u16; MINUTE_RING],
    /// Valid samples of the minute (saturating).
    n_valid: [u16; MINUTE_RING],
}

fn slot_of(minute: i64) -> usize {
    minute.rem_euclid(MINUTE_RING as i64) as usize
}

impl SignalBins {
    const EMPTY: SignalBins = SignalBins {
        head: i64::MIN,
        value: [f64::NAN; MINUTE_RING],
        at_ms: [0; MINUTE_RING],
        n: [0; MINUTE_RING],
        n_valid: [0; MINUTE_RING],
    };

    fn clear(&mut self, slot: usize) {
        self.value[slot] = f64::NAN;
        self.at_ms[slot] = 0;
        self.n[slot] = 0;
        self.n_valid[slot] = 0;
    }

    /// Whether `minute` is one the ring holds.
    fn holds(&self, minute: i64) -> bool {
        self.head != i64::MIN && minute <= self.head && minute > self.head - MINUTE_RING as i64
    }

    fn add(&mut self, s: &Sample) -> Result<(), PushError> {
        let minute = MinuteBin::minute_of(s.at_unix_ms);
        if self.head == i64::MIN || minute > self.head {
            // Advance: the minutes between the old head and this one start empty.
            let from = if self.head == i64::MIN || minute - self.head >= MINUTE_RING as i64 {
                minute - (MINUTE_RING as i64 - 1)
            } else {
                self.head + 1
            };
            for m in from..=minute {
                self.clear(slot_of(m));
            }
            self.head = minute;
        } else if !self.holds(minute) {
            // This minute left the ring.
            return Err(PushError::TooOld {
                at_unix_ms: s.at_unix_ms,
            });
        }
        let k = slot_of(minute);
        self.n[k] = self.n[k].saturating_add(1);
        if s.quality.is_valid() {
            self.n_valid[k] = self.n_valid[k].saturating_add(1);
            // 0..=59 999: fits.
            let at_ms = (s.at_unix_ms - minute * MINUTE_MS) as u16;
            if self.value[k].is_nan() || at_ms >= self.at_ms[k] {
                self.value[k] = s.value;
                self.at_ms[k] = at_ms;
            }
        }
        Ok(())
    }

    fn bin(&self, minute: i64) -> Option<BinView> {
        if !self.holds(minute) {
            return None;
        }
        let k = slot_of(minute);
        if self.n[k] == 0 {
            return None;
        }
        let value = (!self.value[k].is_nan()).then_some(self.value[k]);
        Some(BinView {
            minute,
            value,
            at_unix_ms: if value.is_some() {
                minute * MINUTE_MS + i64::from(self.at_ms[k])
            } else {
                0
            },
            n: u32::from(self.n[k]),
            n_valid: u32::from(self.n_valid[k]),
        })
    }
}

/// A fixed ring of the newest raw samples of one signal, oldest first when iterated; stored column-wise with
/// the valid flags as a bit set (16 bytes a sample).
#[derive(Debug, Clone)]
pub(super) struct RawRing {
    at: [i64; RAW_CAPACITY],
    value: [f64; RAW_CAPACITY],
    /// Bit `i`: sample in position `i` is valid.
    valid: u128,
    /// Next write position.
    head: u8,
    len: u8,
}

const _: () = assert!(RAW_CAPACITY == 128, "the valid flags are one u128");

impl RawRing {
    const EMPTY: RawRing = RawRing {
        at: [0; RAW_CAPACITY],
        value: [0.0; RAW_CAPACITY],
        valid: 0,
        head: 0,
        len: 0,
    };

    fn newest_at(&self) -> Option<i64> {
        (self.len > 0).then(|| self.at[(usize::from(self.head) + RAW_CAPACITY - 1) % RAW_CAPACITY])
    }

    fn push(&mut self, s: RawSample) {
        let h = usize::from(self.head);
        self.at[h] = s.at_unix_ms;
        self.value[h] = s.value;
        if s.valid {
            self.valid |= 1 << h;
        } else {
            self.valid &= !(1 << h);
        }
        self.head = ((h + 1) % RAW_CAPACITY) as u8;
        self.len = (usize::from(self.len) + 1).min(RAW_CAPACITY) as u8;
    }

    /// The samples, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = RawSample> + '_ {
        let len = usize::from(self.len);
        let start = (usize::from(self.head) + RAW_CAPACITY - len) % RAW_CAPACITY;
        (0..len).map(move |i| {
            let k = (start + i) % RAW_CAPACITY;
            RawSample {
                at_unix_ms: self.at[k],
                value: self.value[k],
                valid: self.valid & (1 << k) != 0,
            }
        })
    }
}

/// Why a sample was not taken into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Older than everything the buffer still keeps for its signal (its minute left the ring of
    /// [`DETERIORATION_WINDOW_MIN`] + 1 minutes ending at the newest minute seen).
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
    /// The value is NaN or infinite.
    #[error("sample at {at_unix_ms} has no finite value")]
    NotFinite {
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
/// See the module documentation of [`crate::ml`] for what it holds. It is a plain value of fixed size
/// ([`BedBuffer::BYTES`], about 35 KB; keep it boxed): the edge keeps one per monitored patient and drops it when
/// the patient leaves.
#[derive(Debug, Clone)]
pub struct BedBuffer {
    /// Per signal, the minute bins.
    minutes: [SignalBins; 8],
    /// Per continuous signal, the newest raw samples.
    raw: [RawRing; 4],
    /// NEWS2 SpO2 scale 2 (a clinical decision, passed in).
    spo2_scale_2: bool,
}

// A bed's buffer stays compact (issue 4's memory budget: 2,000 beds in 150 MB for the whole edge).
const _: () = assert!(BedBuffer::BYTES <= 36 * 1024);
const _: () = assert!(BedBuffer::BYTES >= 8 * MINUTE_RING * 14 + 4 * RAW_CAPACITY * 16);

impl BedBuffer {
    /// The size of one buffer in bytes (it owns no heap memory).
    pub const BYTES: usize = std::mem::size_of::<BedBuffer>();

    /// An empty buffer for a patient on SpO2 scale 1 (`spo2_scale_2` false) or 2.
    pub fn new(spo2_scale_2: bool) -> Self {
        Self {
            minutes: [const { SignalBins::EMPTY }; 8],
            raw: [const { RawRing::EMPTY }; 4],
            spo2_scale_2,
        }
    }

    /// An empty buffer on the heap (what the engine keeps per patient).
    pub fn boxed(spo2_scale_2: bool) -> Box<Self> {
        Box::new(Self::new(spo2_scale_2))
    }

    /// Whether SpO2 is scored on NEWS2 scale 2.
    pub fn spo2_scale_2(&self) -> bool {
        self.spo2_scale_2
    }

    /// Changes the SpO2 scale (a clinical decision); the next features use it.
    pub fn set_spo2_scale_2(&mut self, scale_2: bool) {
        self.spo2_scale_2 = scale_2;
    }

    /// Takes one sample. Samples may come late: a sample whose minute is still in the ring (the 241 minutes up
    /// to the newest one seen for its signal) goes into its bin (see [`MinuteBin`] for which value a bin keeps).
    /// A continuous signal's sample also enters the raw ring unless it is older than the newest one there.
    pub fn push(&mut self, s: &Sample) -> Result<(), PushError> {
        if !s.value.is_finite() {
            return Err(PushError::NotFinite {
                at_unix_ms: s.at_unix_ms,
            });
        }
        self.minutes[s.signal.index()].add(s)?;
        if let Some(c) = ContinuousSignal::of(s.signal) {
            let raw = &mut self.raw[c.index()];
            if raw.newest_at().is_some_and(|n| n > s.at_unix_ms) {
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

    /// The bin of `signal` for `minute`, if the buffer holds a sample of that minute.
    pub fn bin(&self, signal: Signal, minute: i64) -> Option<BinView> {
        self.minutes[signal.index()].bin(minute)
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
        assert_eq!((bin.n, bin.n_valid), (3, 1));
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
        // The ring holds minutes 60..=300 (241 minutes up to the newest): minute 60 is accepted, though outside the
        // deterioration window of a `now` in minute 301.
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
    fn advancing_clears_the_minutes_it_passes_and_values_must_be_finite() {
        let mut b = BedBuffer::new(false);
        let m = MinuteBin::minute_of(T0);
        b.push(&sample(Signal::HeartRate, T0, 70.0, 0)).unwrap();
        b.push(&sample(Signal::HeartRate, T0 + 241 * MINUTE_MS, 71.0, 0))
            .unwrap();
        // Minute m shares its slot with m + 241 and left the ring; nothing of it remains.
        assert!(b.bin(Signal::HeartRate, m).is_none());
        assert_eq!(b.bin(Signal::HeartRate, m + 241).unwrap().value, Some(71.0));
        // A jump of more than a ring's length clears everything.
        b.push(&sample(Signal::HeartRate, T0 + 1_000 * MINUTE_MS, 72.0, 0))
            .unwrap();
        assert!(b.bin(Signal::HeartRate, m + 241).is_none());
        assert_eq!(
            b.push(&sample(
                Signal::HeartRate,
                T0 + 1_000 * MINUTE_MS + 1,
                f64::NAN,
                0
            )),
            Err(PushError::NotFinite {
                at_unix_ms: T0 + 1_000 * MINUTE_MS + 1
            })
        );
        // The bin keeps its value and measurement time.
        let bin = b.bin(Signal::HeartRate, m + 1_000).unwrap();
        assert_eq!(
            (bin.value, bin.at_unix_ms, bin.n),
            (Some(72.0), T0 + 1_000 * MINUTE_MS, 1)
        );
    }

    #[test]
    fn the_buffer_bins_exactly_as_the_exporters_minute_bin() {
        let mut b = BedBuffer::new(false);
        let m = MinuteBin::minute_of(T0);
        let mut reference = MinuteBin::new(m);
        for (dt, v, q) in [
            (5_000, 90.0, 0),
            (1_000, 91.0, 0),
            (7_000, 0.0, Quality::SENSOR_OFF),
            (7_000, 92.0, 0),
            (7_000, 93.0, 0),
            (9_000, 50.0, Quality::ARTIFACT),
        ] {
            let s = sample(Signal::SpO2, T0 + dt, v, q);
            let _ = b.push(&s);
            reference.add(&s);
        }
        let got = b.bin(Signal::SpO2, m).unwrap();
        assert_eq!(
            (got.value, got.at_unix_ms, got.n, got.n_valid),
            (
                reference.value,
                reference.at_unix_ms,
                reference.n,
                reference.n_valid
            )
        );
        assert_eq!(got.value, Some(93.0), "on equal times the one pushed last");
    }

    #[test]
    fn a_bed_buffer_is_compact() {
        // 8 signals × 241 minutes × 14 bytes + 4 signals × 128 raw samples × 16 bytes, plus a few words; the
        // bounds are also checked at compile time below.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            BedBuffer::BYTES,
            35_408,
            "the size the module documentation states"
        );
        let b = BedBuffer::boxed(false);
        assert_eq!(std::mem::size_of_val(&*b), BedBuffer::BYTES);
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
