//! The measurements the models look at, and how a normalized `VitalSign` becomes one.

use wardwatch_proto::metrics;
use wardwatch_proto::v1::{QualityFlag, VitalSign};

/// A signal the feature builders use. The numeric code of each (see [`Signal::code`]) is the IEEE 11073 MDC
/// code of the metric it comes from (Wardwatch's private codes for ACVPU and air-or-oxygen), which is also how
/// the exported cohorts and golden files name signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// ECG heart rate, /min (MDC_ECG_HEART_RATE).
    HeartRate = 0,
    /// Pulse rate from the pulse oximeter, /min (MDC_PULS_OXIM_PULS_RATE).
    PulseRate = 1,
    /// Respiratory rate, /min (MDC_RESP_RATE).
    RespRate = 2,
    /// SpO2, % (MDC_PULS_OXIM_SAT_O2).
    SpO2 = 3,
    /// Body temperature, Cel (MDC_TEMP_BODY or MDC_TEMP).
    Temperature = 4,
    /// Systolic non-invasive blood pressure, mm[Hg] (the systolic component of MDC_PRESS_BLD_NONINV, or
    /// MDC_PRESS_BLD_NONINV_SYS on its own).
    Systolic = 5,
    /// Level of consciousness as an ACVPU rank: 0 A, 1 C, 2 V, 3 P, 4 U.
    Consciousness = 6,
    /// Supplemental oxygen: 1 on oxygen, 0 on air.
    Oxygen = 7,
}

impl Signal {
    /// Every signal, in index order.
    pub const ALL: [Signal; 8] = [
        Signal::HeartRate,
        Signal::PulseRate,
        Signal::RespRate,
        Signal::SpO2,
        Signal::Temperature,
        Signal::Systolic,
        Signal::Consciousness,
        Signal::Oxygen,
    ];

    /// Index into per-signal arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The code files use for this signal: the MDC code of its metric (systolic: MDC_PRESS_BLD_NONINV_SYS;
    /// temperature: MDC_TEMP_BODY).
    pub fn code(self) -> u32 {
        match self {
            Signal::HeartRate => metrics::MDC_ECG_HEART_RATE,
            Signal::PulseRate => metrics::MDC_PULS_OXIM_PULS_RATE,
            Signal::RespRate => metrics::MDC_RESP_RATE,
            Signal::SpO2 => metrics::MDC_PULS_OXIM_SAT_O2,
            Signal::Temperature => metrics::MDC_TEMP_BODY,
            Signal::Systolic => metrics::MDC_PRESS_BLD_NONINV_SYS,
            Signal::Consciousness => metrics::WARDWATCH_ACVPU,
            Signal::Oxygen => metrics::WARDWATCH_SUPPLEMENTAL_O2,
        }
    }

    /// The signal a file code names (inverse of [`Signal::code`], plus MDC_TEMP for temperature).
    pub fn from_code(code: u32) -> Option<Signal> {
        match code {
            metrics::MDC_TEMP => Some(Signal::Temperature),
            _ => Signal::ALL.into_iter().find(|s| s.code() == code),
        }
    }
}

/// The four continuously monitored signals the artifact model judges, in the order of their feature blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContinuousSignal {
    /// ECG heart rate.
    HeartRate = 0,
    /// Oximeter pulse rate.
    PulseRate = 1,
    /// SpO2.
    SpO2 = 2,
    /// Respiratory rate.
    RespRate = 3,
}

impl ContinuousSignal {
    /// All four, in feature-block order.
    pub const ALL: [ContinuousSignal; 4] = [
        ContinuousSignal::HeartRate,
        ContinuousSignal::PulseRate,
        ContinuousSignal::SpO2,
        ContinuousSignal::RespRate,
    ];

    /// Index into per-continuous-signal arrays (feature-block order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The continuous signal a [`Signal`] is, if it is one.
    pub fn of(s: Signal) -> Option<ContinuousSignal> {
        match s {
            Signal::HeartRate => Some(ContinuousSignal::HeartRate),
            Signal::PulseRate => Some(ContinuousSignal::PulseRate),
            Signal::SpO2 => Some(ContinuousSignal::SpO2),
            Signal::RespRate => Some(ContinuousSignal::RespRate),
            _ => None,
        }
    }

    /// The general signal.
    pub fn signal(self) -> Signal {
        match self {
            ContinuousSignal::HeartRate => Signal::HeartRate,
            ContinuousSignal::PulseRate => Signal::PulseRate,
            ContinuousSignal::SpO2 => Signal::SpO2,
            ContinuousSignal::RespRate => Signal::RespRate,
        }
    }
}

/// The quality flags the features use, as a bit set (the same bits the exported cohorts and golden files use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Quality(pub u8);

impl Quality {
    /// The device marked the value as disturbed (motion, interference).
    pub const ARTIFACT: u8 = 1;
    /// The sensor is off the patient.
    pub const SENSOR_OFF: u8 = 2;

    /// Whether the sample describes the patient: neither flag set. Other flags (low signal, manual entry,
    /// simulated) describe plausible values and do not matter here, as in NEWS2 and the threshold rules.
    pub fn is_valid(self) -> bool {
        self.0 & (Self::ARTIFACT | Self::SENSOR_OFF) == 0
    }

    /// Whether the artifact flag is set.
    pub fn artifact(self) -> bool {
        self.0 & Self::ARTIFACT != 0
    }

    /// Whether the sensor-off flag is set.
    pub fn sensor_off(self) -> bool {
        self.0 & Self::SENSOR_OFF != 0
    }
}

/// One measurement of one signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// What was measured.
    pub signal: Signal,
    /// The value in the signal's unit (see [`Signal`]).
    pub value: f64,
    /// When it was measured (ms since the Unix epoch, > 0).
    pub at_unix_ms: i64,
    /// Artifact and sensor-off flags.
    pub quality: Quality,
}

/// Why a vital sign gives no sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The metric is not one the models use (e.g. diastolic pressure on its own, an unknown code).
    #[error("metric {0} is not used by the models")]
    UnusedMetric(u32),
    /// The unit is not the metric's canonical UCUM unit: the sample was not normalized.
    #[error("metric {metric} has unit {unit:?}, not its canonical unit")]
    WrongUnit {
        /// MDC code.
        metric: u32,
        /// The unit it came with.
        unit: String,
    },
    /// The value is NaN or infinite, or the enumerated value is not one of the allowed ones.
    #[error("metric {0} has no usable value")]
    BadValue(u32),
    /// No measurement time.
    #[error("no measurement time")]
    NoTime,
}

impl Sample {
    /// The sample a normalized vital sign carries. For non-invasive blood pressure the systolic component is
    /// used; ACVPU becomes its rank (A 0 … U 4), air-or-oxygen 0 (air) or 1 (oxygen).
    pub fn from_vital(v: &VitalSign) -> Result<Sample, SampleError> {
        if v.measured_at_unix_ms <= 0 {
            return Err(SampleError::NoTime);
        }
        let mut quality = 0u8;
        for q in &v.quality {
            if *q == QualityFlag::Artifact as i32 {
                quality |= Quality::ARTIFACT;
            } else if *q == QualityFlag::SensorOff as i32 {
                quality |= Quality::SENSOR_OFF;
            }
        }
        let canonical = |mdc: u32| -> Result<(), SampleError> {
            match metrics::by_mdc(mdc) {
                Some(m) if m.unit == v.unit_ucum => Ok(()),
                _ => Err(SampleError::WrongUnit {
                    metric: v.metric_mdc,
                    unit: v.unit_ucum.clone(),
                }),
            }
        };
        let finite = |x: f64| -> Result<f64, SampleError> {
            if x.is_finite() {
                Ok(x)
            } else {
                Err(SampleError::BadValue(v.metric_mdc))
            }
        };
        let (signal, value) = match v.metric_mdc {
            metrics::MDC_ECG_HEART_RATE
            | metrics::MDC_PULS_OXIM_PULS_RATE
            | metrics::MDC_RESP_RATE
            | metrics::MDC_PULS_OXIM_SAT_O2
            | metrics::MDC_TEMP_BODY
            | metrics::MDC_TEMP
            | metrics::MDC_PRESS_BLD_NONINV_SYS => {
                canonical(v.metric_mdc)?;
                let signal = Signal::from_code(v.metric_mdc)
                    .ok_or(SampleError::UnusedMetric(v.metric_mdc))?;
                (signal, finite(v.value)?)
            }
            metrics::MDC_PRESS_BLD_NONINV => {
                canonical(v.metric_mdc)?;
                let sys = v
                    .components
                    .iter()
                    .find(|c| c.metric_mdc == metrics::MDC_PRESS_BLD_NONINV_SYS)
                    .ok_or(SampleError::BadValue(v.metric_mdc))?;
                (Signal::Systolic, finite(sys.value)?)
            }
            metrics::WARDWATCH_ACVPU => {
                let rank = metrics::ACVPU
                    .iter()
                    .position(|l| *l == v.enumerated.trim())
                    .ok_or(SampleError::BadValue(v.metric_mdc))?;
                (Signal::Consciousness, rank as f64)
            }
            metrics::WARDWATCH_SUPPLEMENTAL_O2 => match v.enumerated.trim() {
                "AIR" => (Signal::Oxygen, 0.0),
                "O2" => (Signal::Oxygen, 1.0),
                _ => return Err(SampleError::BadValue(v.metric_mdc)),
            },
            other => return Err(SampleError::UnusedMetric(other)),
        };
        Ok(Sample {
            signal,
            value,
            at_unix_ms: v.measured_at_unix_ms,
            quality: Quality(quality),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::v1::VitalComponent;

    fn vital(mdc: u32, value: f64, unit: &str) -> VitalSign {
        VitalSign {
            patient_id: "SIM000001".into(),
            metric_mdc: mdc,
            value,
            unit_ucum: unit.into(),
            measured_at_unix_ms: 1_000,
            quality: vec![QualityFlag::Simulated as i32],
            ..Default::default()
        }
    }

    #[test]
    fn vitals_become_samples() {
        let s = Sample::from_vital(&vital(metrics::MDC_ECG_HEART_RATE, 72.0, "/min")).unwrap();
        assert_eq!(
            (s.signal, s.value, s.at_unix_ms),
            (Signal::HeartRate, 72.0, 1_000)
        );
        assert!(s.quality.is_valid(), "simulated is not a disturbance");

        let mut bp = vital(metrics::MDC_PRESS_BLD_NONINV, 93.0, "mm[Hg]");
        bp.components = vec![
            VitalComponent {
                metric_mdc: metrics::MDC_PRESS_BLD_NONINV_SYS,
                value: 121.0,
            },
            VitalComponent {
                metric_mdc: metrics::MDC_PRESS_BLD_NONINV_DIA,
                value: 80.0,
            },
        ];
        let s = Sample::from_vital(&bp).unwrap();
        assert_eq!((s.signal, s.value), (Signal::Systolic, 121.0));

        let mut acvpu = vital(metrics::WARDWATCH_ACVPU, 0.0, "");
        acvpu.enumerated = "V".into();
        assert_eq!(Sample::from_vital(&acvpu).unwrap().value, 2.0);
        let mut o2 = vital(metrics::WARDWATCH_SUPPLEMENTAL_O2, 0.0, "");
        o2.enumerated = "O2".into();
        assert_eq!(Sample::from_vital(&o2).unwrap().value, 1.0);

        let mut off = vital(metrics::MDC_PULS_OXIM_SAT_O2, 0.0, "%");
        off.quality.push(QualityFlag::SensorOff as i32);
        let s = Sample::from_vital(&off).unwrap();
        assert!(s.quality.sensor_off() && !s.quality.is_valid());
    }

    #[test]
    fn unusable_vitals_say_why() {
        assert_eq!(
            Sample::from_vital(&vital(metrics::MDC_PRESS_BLD_NONINV_DIA, 80.0, "mm[Hg]")),
            Err(SampleError::UnusedMetric(metrics::MDC_PRESS_BLD_NONINV_DIA))
        );
        assert!(matches!(
            Sample::from_vital(&vital(metrics::MDC_TEMP_BODY, 98.6, "[degF]")),
            Err(SampleError::WrongUnit { .. })
        ));
        assert_eq!(
            Sample::from_vital(&vital(metrics::MDC_RESP_RATE, f64::NAN, "/min")),
            Err(SampleError::BadValue(metrics::MDC_RESP_RATE))
        );
        let mut acvpu = vital(metrics::WARDWATCH_ACVPU, 0.0, "");
        acvpu.enumerated = "X".into();
        assert!(Sample::from_vital(&acvpu).is_err());
        let mut untimed = vital(metrics::MDC_RESP_RATE, 14.0, "/min");
        untimed.measured_at_unix_ms = 0;
        assert_eq!(Sample::from_vital(&untimed), Err(SampleError::NoTime));
    }

    #[test]
    fn codes_round_trip() {
        for s in Signal::ALL {
            assert_eq!(Signal::from_code(s.code()), Some(s));
            assert_eq!(Signal::ALL[s.index()], s);
        }
        for c in ContinuousSignal::ALL {
            assert_eq!(ContinuousSignal::of(c.signal()), Some(c));
        }
        assert_eq!(
            Signal::from_code(metrics::MDC_TEMP),
            Some(Signal::Temperature)
        );
    }
}
