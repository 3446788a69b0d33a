//! Vital-sign threshold detection with per-patient adaptive limits inside fixed hard limits.
//!
//! Each parameter has **hard limits** (crossing one is a high-priority condition, raised at once) and **soft
//! limits** (crossing one is a medium-priority condition, which the alarm manager announces only if it
//! persists). Soft limits adapt to the patient's own baseline — the median of their valid samples over a long
//! window — so a patient whose normal sits near a default limit does not alarm all day; adaptation can only
//! *widen* a soft limit, by at most a per-parameter cap, and never past the hard limit. Hard limits never adapt.
//!
//! Signal quality: samples flagged artifact or sensor-off never cross a threshold; a sensor-off state that
//! lasts is reported as a low-priority technical condition instead. A heart rate that jumps while the second
//! heart-rate source (ECG vs pulse oximeter) does not follow is held back as implausible.
//!
//! Decision support, not clinically validated: the default limits are common adult ward defaults and must be
//! reviewed by each hospital.

use std::collections::{HashMap, VecDeque};

use wardwatch_proto::metrics::*;
use wardwatch_proto::v1::{AlarmKind, AlarmPriority, QualityFlag, VitalSign};

use super::alarms::{ConditionKey, key};

/// A monitored parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum VitalParam {
    /// Heart or pulse rate, /min.
    HeartRate,
    /// Respiratory rate, /min.
    RespiratoryRate,
    /// SpO2, %.
    SpO2,
    /// Systolic blood pressure, mmHg.
    SystolicBp,
    /// Body temperature, °C.
    Temperature,
}

impl VitalParam {
    /// Short name used in condition keys and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::HeartRate => "heart rate",
            Self::RespiratoryRate => "respiratory rate",
            Self::SpO2 => "SpO2",
            Self::SystolicBp => "systolic BP",
            Self::Temperature => "temperature",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::HeartRate => "hr",
            Self::RespiratoryRate => "rr",
            Self::SpO2 => "spo2",
            Self::SystolicBp => "sbp",
            Self::Temperature => "temp",
        }
    }

    const ALL: [VitalParam; 5] = [
        Self::HeartRate,
        Self::RespiratoryRate,
        Self::SpO2,
        Self::SystolicBp,
        Self::Temperature,
    ];
}

/// Limits of one parameter. `None` means no limit on that side.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Medium-priority low limit.
    pub soft_low: Option<f64>,
    /// Medium-priority high limit.
    pub soft_high: Option<f64>,
    /// High-priority low limit (never adapted).
    pub hard_low: Option<f64>,
    /// High-priority high limit (never adapted).
    pub hard_high: Option<f64>,
    /// Largest amount adaptation may widen a soft limit by.
    pub max_adapt: f64,
}

/// Threshold configuration.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdConfig {
    /// Heart rate.
    pub heart_rate: Limits,
    /// Respiratory rate.
    pub respiratory_rate: Limits,
    /// SpO2 for patients on NEWS2 scale 1.
    pub spo2: Limits,
    /// SpO2 for patients on NEWS2 scale 2 (hypercapnic respiratory failure, target 88–92 %).
    pub spo2_scale_2: Limits,
    /// Systolic blood pressure.
    pub systolic_bp: Limits,
    /// Temperature.
    pub temperature: Limits,
    /// Window over which the baseline median is taken.
    pub baseline_window_ms: i64,
    /// Baseline data needed before soft limits adapt.
    pub adapt_after_ms: i64,
    /// Heart-rate sources (ECG vs oximeter pulse) disagreeing by more than this hold a crossing back.
    pub hr_cross_check_delta: f64,
    /// Sensor-off lasting this long raises a technical condition.
    pub sensor_off_after_ms: i64,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        let l = |sl, sh, hl, hh, max_adapt| Limits {
            soft_low: sl,
            soft_high: sh,
            hard_low: hl,
            hard_high: hh,
            max_adapt,
        };
        Self {
            heart_rate: l(Some(50.0), Some(120.0), Some(40.0), Some(140.0), 10.0),
            respiratory_rate: l(Some(10.0), Some(24.0), Some(8.0), Some(30.0), 3.0),
            spo2: l(Some(90.0), None, Some(85.0), None, 2.0),
            spo2_scale_2: l(Some(86.0), None, Some(80.0), None, 1.0),
            systolic_bp: l(Some(100.0), Some(180.0), Some(90.0), Some(220.0), 10.0),
            temperature: l(Some(35.5), Some(38.5), Some(35.0), Some(39.5), 0.3),
            baseline_window_ms: 4 * 3_600_000,
            adapt_after_ms: 30 * 60_000,
            hr_cross_check_delta: 30.0,
            sensor_off_after_ms: 60_000,
        }
    }
}

impl ThresholdConfig {
    fn limits(&self, p: VitalParam, scale_2: bool) -> &Limits {
        match p {
            VitalParam::HeartRate => &self.heart_rate,
            VitalParam::RespiratoryRate => &self.respiratory_rate,
            VitalParam::SpO2 if scale_2 => &self.spo2_scale_2,
            VitalParam::SpO2 => &self.spo2,
            VitalParam::SystolicBp => &self.systolic_bp,
            VitalParam::Temperature => &self.temperature,
        }
    }
}

/// The parameter and value a vital sign carries for threshold purposes.
pub fn param_of(v: &VitalSign) -> Option<(VitalParam, f64)> {
    match v.metric_mdc {
        MDC_ECG_HEART_RATE | MDC_PULS_OXIM_PULS_RATE | MDC_PULS_RATE_NON_INV => {
            Some((VitalParam::HeartRate, v.value))
        }
        MDC_RESP_RATE => Some((VitalParam::RespiratoryRate, v.value)),
        MDC_PULS_OXIM_SAT_O2 => Some((VitalParam::SpO2, v.value)),
        MDC_TEMP_BODY | MDC_TEMP => Some((VitalParam::Temperature, v.value)),
        MDC_PRESS_BLD_NONINV => v
            .components
            .iter()
            .find(|c| c.metric_mdc == MDC_PRESS_BLD_NONINV_SYS)
            .map(|c| (VitalParam::SystolicBp, c.value)),
        MDC_PRESS_BLD_NONINV_SYS => Some((VitalParam::SystolicBp, v.value)),
        _ => None,
    }
}

/// Which side of which limit a value is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Within the soft limits.
    Normal,
    /// Beyond a soft limit (medium).
    Soft,
    /// Beyond a hard limit (high).
    Hard,
}

/// A threshold condition for the alarm manager (see [`super::alarms::Condition`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdCondition {
    /// Condition key (patient, kind, "<param>-low"/"<param>-high" or "sensor-off").
    pub key: ConditionKey,
    /// Whether it holds.
    pub active: bool,
    /// Priority if active.
    pub priority: AlarmPriority,
    /// Message for the nurse.
    pub message: String,
}

#[derive(Debug, Default)]
struct ParamState {
    /// (time, value) of valid samples, at most one per 30 s, within the baseline window.
    history: VecDeque<(i64, f64)>,
    /// Side currently crossed: (low crossing, high crossing).
    low: Option<Crossing>,
    high: Option<Crossing>,
}

/// Per-patient threshold state.
#[derive(Debug, Default)]
pub struct PatientThresholds {
    params: HashMap<VitalParam, ParamState>,
    /// Latest heart rate per source MDC code: (time, value).
    hr_sources: HashMap<u32, (i64, f64)>,
    /// Since when each device's sensor has been reporting sensor-off, if it is.
    sensor_off_since: HashMap<String, i64>,
    /// Devices with an active sensor-off condition.
    sensor_off_active: HashMap<String, bool>,
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

impl PatientThresholds {
    /// The soft limits in effect for `p` now (adapted to the baseline when enough data exists).
    pub fn effective(
        &self,
        cfg: &ThresholdConfig,
        p: VitalParam,
        scale_2: bool,
        now: i64,
    ) -> Limits {
        let base = *cfg.limits(p, scale_2);
        let Some(st) = self.params.get(&p) else {
            return base;
        };
        let Some(first) = st.history.front() else {
            return base;
        };
        if now - first.0 < cfg.adapt_after_ms {
            return base;
        }
        let mut values: Vec<f64> = st.history.iter().map(|(_, v)| *v).collect();
        let Some(m) = median(&mut values) else {
            return base;
        };
        let mut out = base;
        // Widen only, by at most max_adapt, never past the hard limit: a baseline near the soft limit moves the
        // limit away by the distance the baseline sits inside the default band's margin.
        if let Some(sh) = base.soft_high {
            let margin = sh - m;
            let widened = if margin < base.max_adapt {
                sh + (base.max_adapt - margin.max(0.0))
            } else {
                sh
            };
            let capped = widened.min(sh + base.max_adapt);
            out.soft_high = Some(base.hard_high.map_or(capped, |h| capped.min(h)));
        }
        if let Some(sl) = base.soft_low {
            let margin = m - sl;
            let widened = if margin < base.max_adapt {
                sl - (base.max_adapt - margin.max(0.0))
            } else {
                sl
            };
            let capped = widened.max(sl - base.max_adapt);
            out.soft_low = Some(base.hard_low.map_or(capped, |h| capped.max(h)));
        }
        out
    }

    /// Feeds one normalized vital sign; returns the threshold conditions it changes.
    pub fn observe(
        &mut self,
        v: &VitalSign,
        patient: &str,
        scale_2: bool,
        cfg: &ThresholdConfig,
    ) -> Vec<ThresholdCondition> {
        let mut out = Vec::new();
        let at = v.measured_at_unix_ms;
        let flagged = |f: QualityFlag| v.quality.contains(&(f as i32));
        // Sensor-off tracking per device (technical, low priority).
        if flagged(QualityFlag::SensorOff) {
            let since = *self
                .sensor_off_since
                .entry(v.device_id.clone())
                .or_insert(at);
            let active = self
                .sensor_off_active
                .get(&v.device_id)
                .copied()
                .unwrap_or(false);
            if !active && at - since >= cfg.sensor_off_after_ms {
                self.sensor_off_active.insert(v.device_id.clone(), true);
                out.push(ThresholdCondition {
                    key: key(
                        patient,
                        AlarmKind::SensorProblem,
                        &format!("sensor-off:{}", v.device_id),
                    ),
                    active: true,
                    priority: AlarmPriority::Low,
                    message: format!(
                        "Sensor off the patient on {} for over {} s",
                        v.device_id,
                        (at - since) / 1000
                    ),
                });
            }
            return out;
        }
        if self.sensor_off_since.remove(&v.device_id).is_some()
            && self.sensor_off_active.remove(&v.device_id).unwrap_or(false)
        {
            out.push(ThresholdCondition {
                key: key(
                    patient,
                    AlarmKind::SensorProblem,
                    &format!("sensor-off:{}", v.device_id),
                ),
                active: false,
                priority: AlarmPriority::Low,
                message: format!("Sensor on {} reporting again", v.device_id),
            });
        }
        if flagged(QualityFlag::Artifact) {
            return out;
        }
        let Some((p, value)) = param_of(v) else {
            return out;
        };
        if !value.is_finite() {
            return out;
        }
        // Cross-check heart rate against the other source.
        if p == VitalParam::HeartRate {
            self.hr_sources.insert(v.metric_mdc, (at, value));
            let other = self
                .hr_sources
                .iter()
                .filter(|(code, _)| **code != v.metric_mdc)
                .map(|(_, s)| *s)
                .filter(|(t, _)| (at - t).abs() <= 5_000)
                .max_by_key(|(t, _)| *t);
            if let Some((_, o)) = other
                && (o - value).abs() > cfg.hr_cross_check_delta
            {
                // One source jumped, the other did not follow: implausible, hold back.
                return out;
            }
        }
        let limits = self.effective(cfg, p, scale_2, at);
        let st = self.params.entry(p).or_default();
        if st.history.back().is_none_or(|(t, _)| at - t >= 30_000) {
            st.history.push_back((at, value));
        }
        while st
            .history
            .front()
            .is_some_and(|(t, _)| at - t > cfg.baseline_window_ms)
        {
            st.history.pop_front();
        }
        let low = match (limits.hard_low, limits.soft_low) {
            (Some(h), _) if value <= h => Crossing::Hard,
            (_, Some(s)) if value < s => Crossing::Soft,
            _ => Crossing::Normal,
        };
        let high = match (limits.hard_high, limits.soft_high) {
            (Some(h), _) if value >= h => Crossing::Hard,
            (_, Some(s)) if value > s => Crossing::Soft,
            _ => Crossing::Normal,
        };
        for (side, crossing, prev) in [("low", low, &mut st.low), ("high", high, &mut st.high)] {
            if Some(crossing) == *prev {
                continue;
            }
            let was_set = prev.is_some();
            *prev = Some(crossing);
            if crossing == Crossing::Normal && !was_set {
                continue;
            }
            let (active, priority) = match crossing {
                Crossing::Hard => (true, AlarmPriority::High),
                Crossing::Soft => (true, AlarmPriority::Medium),
                Crossing::Normal => (false, AlarmPriority::Medium),
            };
            let limit = match (side, crossing) {
                ("low", Crossing::Hard) => limits.hard_low,
                ("low", _) => limits.soft_low,
                (_, Crossing::Hard) => limits.hard_high,
                _ => limits.soft_high,
            };
            out.push(ThresholdCondition {
                key: key(
                    patient,
                    AlarmKind::VitalThreshold,
                    &format!("{}-{side}", p.slug()),
                ),
                active,
                priority,
                message: if active {
                    format!(
                        "{} {} {value} (limit {})",
                        p.name(),
                        side,
                        limit.map_or("-".into(), |l| l.to_string())
                    )
                } else {
                    format!("{} back within limits ({value})", p.name())
                },
            });
        }
        out
    }

    /// Every parameter this tracker has seen.
    pub fn params(&self) -> impl Iterator<Item = VitalParam> + '_ {
        VitalParam::ALL
            .into_iter()
            .filter(|p| self.params.contains_key(p))
    }
}

/// The naive comparator used in evaluations: fixed default soft and hard limits, every sample judged alone,
/// no quality flags, no delay. Returns whether `v` is outside the limits.
pub fn naive_out_of_range(
    v: &VitalSign,
    scale_2: bool,
    cfg: &ThresholdConfig,
) -> Option<(VitalParam, bool)> {
    let (p, value) = param_of(v)?;
    let l = cfg.limits(p, scale_2);
    let out = l.soft_low.is_some_and(|s| value < s) || l.soft_high.is_some_and(|s| value > s);
    Some((p, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::v1::BedLocation;

    fn v(mdc: u32, value: f64, at: i64) -> VitalSign {
        VitalSign {
            patient_id: "P".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            }),
            device_id: "mon".into(),
            metric_mdc: mdc,
            value,
            unit_ucum: "/min".into(),
            measured_at_unix_ms: at,
            ..Default::default()
        }
    }

    fn details(c: &[ThresholdCondition]) -> Vec<(String, bool, AlarmPriority)> {
        c.iter()
            .map(|c| (c.key.detail.clone(), c.active, c.priority))
            .collect()
    }

    #[test]
    fn soft_and_hard_limits_at_their_boundaries() {
        let cfg = ThresholdConfig::default();
        let mut t = PatientThresholds::default();
        assert!(
            t.observe(&v(MDC_ECG_HEART_RATE, 120.0, 1), "P", false, &cfg)
                .is_empty(),
            "120 is within"
        );
        assert_eq!(
            details(&t.observe(&v(MDC_ECG_HEART_RATE, 121.0, 2), "P", false, &cfg)),
            vec![("hr-high".into(), true, AlarmPriority::Medium)]
        );
        assert_eq!(
            details(&t.observe(&v(MDC_ECG_HEART_RATE, 140.0, 3), "P", false, &cfg)),
            vec![("hr-high".into(), true, AlarmPriority::High)]
        );
        assert_eq!(
            details(&t.observe(&v(MDC_ECG_HEART_RATE, 100.0, 4), "P", false, &cfg)),
            vec![("hr-high".into(), false, AlarmPriority::Medium)]
        );
        assert_eq!(
            details(&t.observe(&v(MDC_PULS_OXIM_SAT_O2, 89.0, 5), "P", false, &cfg)),
            vec![("spo2-low".into(), true, AlarmPriority::Medium)]
        );
        assert_eq!(
            details(&t.observe(&v(MDC_PULS_OXIM_SAT_O2, 85.0, 6), "P", false, &cfg)),
            vec![("spo2-low".into(), true, AlarmPriority::High)]
        );
        // Scale 2: 87 % is within that patient's target range.
        let mut s2 = PatientThresholds::default();
        assert!(
            s2.observe(&v(MDC_PULS_OXIM_SAT_O2, 87.0, 1), "P", true, &cfg)
                .is_empty()
        );
        assert_eq!(
            details(&s2.observe(&v(MDC_PULS_OXIM_SAT_O2, 85.0, 2), "P", true, &cfg)),
            vec![("spo2-low".into(), true, AlarmPriority::Medium)]
        );
    }

    #[test]
    fn artifacts_never_cross_and_sensor_off_becomes_technical() {
        let cfg = ThresholdConfig::default();
        let mut t = PatientThresholds::default();
        let mut a = v(MDC_PULS_OXIM_SAT_O2, 60.0, 1);
        a.quality = vec![QualityFlag::Artifact as i32];
        assert!(t.observe(&a, "P", false, &cfg).is_empty());
        let mut off = v(MDC_PULS_OXIM_SAT_O2, 0.0, 1_000);
        off.quality = vec![QualityFlag::SensorOff as i32];
        assert!(t.observe(&off, "P", false, &cfg).is_empty());
        off.measured_at_unix_ms = 60_999;
        assert!(t.observe(&off, "P", false, &cfg).is_empty());
        off.measured_at_unix_ms = 61_000;
        let c = t.observe(&off, "P", false, &cfg);
        assert_eq!(
            details(&c),
            vec![("sensor-off:mon".into(), true, AlarmPriority::Low)]
        );
        assert_eq!(c[0].key.kind, AlarmKind::SensorProblem as i32);
        let back = t.observe(&v(MDC_PULS_OXIM_SAT_O2, 97.0, 62_000), "P", false, &cfg);
        assert_eq!(
            details(&back),
            vec![("sensor-off:mon".into(), false, AlarmPriority::Low)]
        );
    }

    #[test]
    fn heart_rate_jump_not_followed_by_the_other_source_is_held_back() {
        let cfg = ThresholdConfig::default();
        let mut t = PatientThresholds::default();
        t.observe(&v(MDC_PULS_OXIM_PULS_RATE, 80.0, 1_000), "P", false, &cfg);
        assert!(
            t.observe(&v(MDC_ECG_HEART_RATE, 150.0, 2_000), "P", false, &cfg)
                .is_empty(),
            "ECG jump alone"
        );
        // Both sources agree: real tachycardia.
        assert_eq!(
            details(&t.observe(&v(MDC_PULS_OXIM_PULS_RATE, 148.0, 3_000), "P", false, &cfg)),
            vec![("hr-high".into(), true, AlarmPriority::High)]
        );
        // The ECG sample confirming it changes nothing (same condition, already active).
        assert!(
            t.observe(&v(MDC_ECG_HEART_RATE, 150.0, 3_500), "P", false, &cfg)
                .is_empty()
        );
    }

    #[test]
    fn adaptation_widens_soft_limits_only_within_caps_never_hard_limits() {
        let cfg = ThresholdConfig::default();
        let mut t = PatientThresholds::default();
        // A patient whose own heart rate sits at 116 for an hour.
        for i in 0..120 {
            t.observe(&v(MDC_ECG_HEART_RATE, 116.0, i * 30_000), "P", false, &cfg);
        }
        let now = 120 * 30_000;
        let l = t.effective(&cfg, VitalParam::HeartRate, false, now);
        assert!(
            l.soft_high.is_some_and(|s| s > 120.0 && s <= 130.0),
            "{l:?}"
        );
        assert_eq!(l.hard_high, Some(140.0));
        assert_eq!(l.soft_low, Some(50.0), "the far side does not move");
        // Before enough data: defaults.
        let mut fresh = PatientThresholds::default();
        fresh.observe(&v(MDC_ECG_HEART_RATE, 116.0, 0), "P", false, &cfg);
        assert_eq!(
            fresh
                .effective(&cfg, VitalParam::HeartRate, false, 60_000)
                .soft_high,
            Some(120.0)
        );
        // Even an extreme baseline cannot move the soft limit past its cap or the hard limit.
        let mut ext = PatientThresholds::default();
        for i in 0..120 {
            ext.observe(&v(MDC_ECG_HEART_RATE, 139.0, i * 30_000), "P", false, &cfg);
        }
        let l = ext.effective(&cfg, VitalParam::HeartRate, false, now);
        assert!(l.soft_high.is_some_and(|s| s <= 130.0), "{l:?}");
    }
}
