//! Checks applied to every event before it is trusted. The edge runs them when it accepts an event (so a bad
//! sample is refused at the door), and the cloud runs them again on every synced event (it never trusts an edge
//! blindly). A failure names the reason as a [`RejectReason`] plus a human-readable detail.

use crate::ids::{AssigningAuthority, DeviceId, Label, PatientId, VisitNumber, WardId};
use crate::metrics::{self, ValueKind};
use crate::v1::{
    BedLocation, EdgeEvent, EncounterId, RejectReason, Spo2ScaleChange, VitalSign,
    edge_event::Payload,
};

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason:?}: {detail}")]
pub struct Rejection {
    /// Machine-readable reason (also sent over the wire).
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

impl Rejection {
    /// A rejection with `reason` and `detail`.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::Invalid, detail)
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Validates the envelope and payload of an event. Returns the ward the event writes, which the caller checks
/// against what the edge may write.
pub fn event(e: &EdgeEvent) -> Result<WardId, Rejection> {
    if e.idempotency_key.is_empty() || e.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid("idempotency_key must be 1-128 bytes"));
    }
    match &e.payload {
        None => Err(invalid("event has no payload")),
        Some(Payload::Vital(v)) => vital(v),
        Some(Payload::Infusion(i)) => {
            PatientId::new(i.patient_id.clone()).map_err(|e| invalid(e.to_string()))?;
            DeviceId::new(i.device_id.clone()).map_err(|e| invalid(e.to_string()))?;
            if i.order_id.is_empty() || i.order_id.len() > 64 {
                return Err(invalid("order_id must be 1-64 bytes"));
            }
            encounter(i.encounter.as_ref())?;
            for (name, v) in [
                ("prescribed_rate_ml_h", i.prescribed_rate_ml_h),
                ("measured_rate_ml_h", i.measured_rate_ml_h),
                ("drops_per_min", i.drops_per_min),
                ("volume_infused_ml", i.volume_infused_ml),
                ("volume_remaining_ml", i.volume_remaining_ml),
            ] {
                if !v.is_finite() {
                    return Err(Rejection::new(
                        RejectReason::NotFinite,
                        format!("{name} is {v}"),
                    ));
                }
                if v < 0.0 {
                    return Err(invalid(format!("{name} is negative ({v})")));
                }
            }
            if !matches!(i.drop_factor_gtt_per_ml, 0 | 10 | 15 | 20 | 60) {
                return Err(invalid(format!(
                    "drop factor {} gtt/mL is not 10, 15, 20, 60 or 0 (pump)",
                    i.drop_factor_gtt_per_ml
                )));
            }
            location(i.location.as_ref(), true)
        }
        Some(Payload::Alarm(a)) => {
            if a.alarm_id.is_empty() || a.alarm_id.len() > 128 {
                return Err(invalid("alarm_id must be 1-128 bytes"));
            }
            if !a.patient_id.is_empty() {
                PatientId::new(a.patient_id.clone()).map_err(|e| invalid(e.to_string()))?;
            }
            location(a.location.as_ref(), false)
        }
        Some(Payload::Risk(r)) => {
            PatientId::new(r.patient_id.clone()).map_err(|e| invalid(e.to_string()))?;
            if let Some(crate::v1::risk_score::Score::Model(m)) = &r.score
                && (!m.probability.is_finite() || !(0.0..=1.0).contains(&m.probability))
            {
                return Err(invalid(format!(
                    "probability {} is not a number in 0..1",
                    m.probability
                )));
            }
            location(r.location.as_ref(), false)
        }
        Some(Payload::Device(d)) => {
            DeviceId::new(d.device_id.clone()).map_err(|e| invalid(e.to_string()))?;
            location(d.location.as_ref(), false)
        }
        Some(Payload::Spo2Scale(s)) => spo2_scale_change(s),
    }
}

/// Validates an SpO2-scale decision: patient, ward, scales 1 or 2, the deciding user, the time and the reason.
pub fn spo2_scale_change(s: &Spo2ScaleChange) -> Result<WardId, Rejection> {
    PatientId::new(s.patient_id.clone()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(s.scale, 1 | 2) || !matches!(s.previous_scale, 1 | 2) {
        return Err(invalid(format!(
            "SpO2 scale must be 1 or 2 (scale {}, previous {})",
            s.scale, s.previous_scale
        )));
    }
    let user_ok = (1..=64).contains(&s.changed_by.len())
        && s.changed_by
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !user_ok {
        return Err(invalid(
            "changed_by must be the signed-in user id (1-64 of A-Z a-z 0-9 . _ -)",
        ));
    }
    let printable = |t: &str| !t.chars().any(char::is_control);
    if s.changed_by_name.chars().count() > 100 || !printable(&s.changed_by_name) {
        return Err(invalid(
            "changed_by_name must be at most 100 printable characters",
        ));
    }
    if s.changed_by_role.len() > 32 || !printable(&s.changed_by_role) {
        return Err(invalid(
            "changed_by_role must be at most 32 printable characters",
        ));
    }
    if s.reason.chars().count() > 500 || s.reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(
            "reason must be at most 500 characters without control characters",
        ));
    }
    if s.changed_at_unix_ms <= 0 {
        return Err(invalid("changed_at_unix_ms is missing"));
    }
    location(s.location.as_ref(), false)
}

/// Validates an optional encounter: absent or an empty visit number means "not known"; otherwise the visit
/// number and (when given) its assigning authority must be identifiers Wardwatch can store and search by.
pub fn encounter(e: Option<&EncounterId>) -> Result<(), Rejection> {
    let Some(e) = e else {
        return Ok(());
    };
    if e.visit_number.is_empty() {
        if e.assigning_authority.is_empty() {
            return Ok(());
        }
        return Err(invalid(
            "encounter has an assigning authority but no visit number",
        ));
    }
    VisitNumber::new(e.visit_number.as_str())
        .map_err(|err| invalid(format!("encounter: {err}")))?;
    if !e.assigning_authority.is_empty() {
        AssigningAuthority::new(e.assigning_authority.as_str())
            .map_err(|err| invalid(format!("encounter: {err}")))?;
    }
    Ok(())
}

fn location(l: Option<&BedLocation>, bed_required: bool) -> Result<WardId, Rejection> {
    let l = l.ok_or_else(|| invalid("location is missing"))?;
    let ward = WardId::new(l.ward.clone()).map_err(|e| invalid(e.to_string()))?;
    if bed_required || !l.bed.is_empty() {
        Label::new(l.bed.clone()).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(ward)
}

/// Validates one vital sign: ids, known metric, canonical unit, finite and physiologically possible values,
/// required components.
pub fn vital(v: &VitalSign) -> Result<WardId, Rejection> {
    PatientId::new(v.patient_id.clone()).map_err(|e| invalid(e.to_string()))?;
    DeviceId::new(v.device_id.clone()).map_err(|e| invalid(e.to_string()))?;
    let ward = location(v.location.as_ref(), true)?;
    encounter(v.encounter.as_ref())?;
    if v.measured_at_unix_ms <= 0 {
        return Err(invalid("measured_at_unix_ms is missing"));
    }
    let m = metrics::by_mdc(v.metric_mdc).ok_or_else(|| {
        Rejection::new(
            RejectReason::UnknownMetric,
            format!("MDC code {} is not a known metric", v.metric_mdc),
        )
    })?;
    match m.kind {
        ValueKind::Enumerated => {
            if !metrics::enumeration(m.mdc)
                .iter()
                .any(|(code, _)| *code == v.enumerated)
            {
                return Err(invalid(format!(
                    "{:?} is not a value of {}",
                    v.enumerated, m.mdc_ref
                )));
            }
            return Ok(ward);
        }
        ValueKind::Numeric | ValueKind::Compound => {}
    }
    if v.unit_ucum.is_empty() {
        return Err(Rejection::new(
            RejectReason::BadUnit,
            format!("unit missing for {}", m.mdc_ref),
        ));
    }
    if v.unit_ucum != m.unit {
        return Err(Rejection::new(
            RejectReason::BadUnit,
            format!(
                "unit {:?} is not {:?} for {}",
                v.unit_ucum, m.unit, m.mdc_ref
            ),
        ));
    }
    if !v.value.is_finite() {
        return Err(Rejection::new(
            RejectReason::NotFinite,
            format!("{} value is {}", m.mdc_ref, v.value),
        ));
    }
    let in_range = |mm: &metrics::Metric, x: f64| -> Result<(), Rejection> {
        if !x.is_finite() {
            return Err(Rejection::new(
                RejectReason::NotFinite,
                format!("{} value is {x}", mm.mdc_ref),
            ));
        }
        if x < mm.min || x > mm.max {
            return Err(invalid(format!(
                "{} value {x} outside the possible range {}..{}",
                mm.mdc_ref, mm.min, mm.max
            )));
        }
        Ok(())
    };
    match m.kind {
        ValueKind::Numeric => {
            if !v.components.is_empty() {
                return Err(invalid(format!(
                    "{} is not a compound metric but has components",
                    m.mdc_ref
                )));
            }
            in_range(m, v.value)?;
        }
        ValueKind::Compound => {
            let allowed = metrics::components_of(m.mdc);
            for c in &v.components {
                let cm = metrics::by_mdc(c.metric_mdc)
                    .filter(|cm| allowed.iter().any(|(code, _)| *code == cm.mdc))
                    .ok_or_else(|| {
                        Rejection::new(
                            RejectReason::UnknownMetric,
                            format!(
                                "MDC code {} is not a component of {}",
                                c.metric_mdc, m.mdc_ref
                            ),
                        )
                    })?;
                in_range(cm, c.value)?;
            }
            for (code, required) in allowed {
                if *required && !v.components.iter().any(|c| c.metric_mdc == *code) {
                    return Err(invalid(format!(
                        "{} lacks required component {code}",
                        m.mdc_ref
                    )));
                }
            }
        }
        ValueKind::Enumerated => {}
    }
    Ok(ward)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::*;
    use crate::v1::VitalComponent;

    fn hr(value: f64) -> VitalSign {
        VitalSign {
            patient_id: "MRN1".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            }),
            device_id: "mon-1".into(),
            metric_mdc: MDC_ECG_HEART_RATE,
            value,
            unit_ucum: "/min".into(),
            measured_at_unix_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn rejects_each_kind_of_bad_vital_with_its_reason() {
        assert_eq!(
            vital(&hr(72.0)).map(|w| w.to_string()),
            Ok("7A".to_string())
        );
        assert_eq!(
            vital(&hr(f64::NAN)).unwrap_err().reason,
            RejectReason::NotFinite
        );
        assert_eq!(
            vital(&hr(f64::INFINITY)).unwrap_err().reason,
            RejectReason::NotFinite
        );
        assert_eq!(vital(&hr(351.0)).unwrap_err().reason, RejectReason::Invalid);
        assert!(vital(&hr(350.0)).is_ok());
        let mut v = hr(72.0);
        v.unit_ucum.clear();
        assert_eq!(vital(&v).unwrap_err().reason, RejectReason::BadUnit);
        v.unit_ucum = "bpm".into();
        assert_eq!(vital(&v).unwrap_err().reason, RejectReason::BadUnit);
        let mut v = hr(72.0);
        v.metric_mdc = 999;
        assert_eq!(vital(&v).unwrap_err().reason, RejectReason::UnknownMetric);
        let mut v = hr(72.0);
        v.location = None;
        assert_eq!(vital(&v).unwrap_err().reason, RejectReason::Invalid);
    }

    #[test]
    fn encounter_is_optional_but_checked_when_given() {
        let with = |number: &str, authority: &str| {
            let mut v = hr(72.0);
            v.encounter = Some(EncounterId {
                visit_number: number.into(),
                assigning_authority: authority.into(),
            });
            vital(&v)
        };
        assert!(vital(&hr(72.0)).is_ok(), "absent: not known");
        assert!(with("", "").is_ok(), "empty: not known");
        assert!(with("V2024-0001", "").is_ok());
        assert!(with("V2024-0001", "HOSP").is_ok());
        assert!(with("V2024-0001", "1.2.840.114350.1").is_ok());
        for (number, authority) in [
            ("", "HOSP"),
            ("V 1", ""),
            ("V|1", ""),
            (&"9".repeat(65) as &str, ""),
            ("V1", "HOSP ^X"),
            ("V1", &"a".repeat(65)),
        ] {
            let r = with(number, authority).unwrap_err();
            assert_eq!(r.reason, RejectReason::Invalid, "{number:?} {authority:?}");
            assert!(r.detail.contains("encounter"), "{}", r.detail);
        }
        // Infusion reports are checked the same way.
        let infusion = crate::v1::InfusionStatus {
            order_id: "ORD-1".into(),
            patient_id: "MRN1".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            }),
            device_id: "pump-1".into(),
            encounter: Some(EncounterId {
                visit_number: "V 1".into(),
                assigning_authority: String::new(),
            }),
            ..Default::default()
        };
        let e = EdgeEvent {
            idempotency_key: "k".into(),
            payload: Some(Payload::Infusion(infusion)),
            ..Default::default()
        };
        assert_eq!(event(&e).unwrap_err().reason, RejectReason::Invalid);
    }

    #[test]
    fn blood_pressure_needs_systolic_and_diastolic() {
        let mut bp = hr(0.0);
        bp.metric_mdc = MDC_PRESS_BLD_NONINV;
        bp.unit_ucum = "mm[Hg]".into();
        bp.components = vec![VitalComponent {
            metric_mdc: MDC_PRESS_BLD_NONINV_SYS,
            value: 120.0,
        }];
        assert_eq!(vital(&bp).unwrap_err().reason, RejectReason::Invalid);
        bp.components.push(VitalComponent {
            metric_mdc: MDC_PRESS_BLD_NONINV_DIA,
            value: 80.0,
        });
        assert!(vital(&bp).is_ok());
        bp.components.push(VitalComponent {
            metric_mdc: MDC_ECG_HEART_RATE,
            value: 80.0,
        });
        assert_eq!(vital(&bp).unwrap_err().reason, RejectReason::UnknownMetric);
        bp.components.pop();
        bp.components[1].value = f64::NAN;
        assert_eq!(vital(&bp).unwrap_err().reason, RejectReason::NotFinite);
    }

    fn scale_change() -> Spo2ScaleChange {
        Spo2ScaleChange {
            patient_id: "MRN1".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "3".into(),
            }),
            scale: 2,
            previous_scale: 1,
            changed_by: "a.jones".into(),
            changed_by_name: "Alex Jones, RN".into(),
            changed_by_role: "nurse".into(),
            changed_at_unix_ms: 1_700_000_000_000,
            reason: "COPD, target 88-92 % per respiratory team".into(),
        }
    }

    #[test]
    fn spo2_scale_change_is_checked() {
        let env = |s: Spo2ScaleChange| EdgeEvent {
            idempotency_key: "spo2-scale:MRN1:1".into(),
            payload: Some(Payload::Spo2Scale(s)),
            ..Default::default()
        };
        assert_eq!(
            event(&env(scale_change())).map(|w| w.to_string()),
            Ok("7A".to_string())
        );
        type Spoil = Box<dyn Fn(&mut Spo2ScaleChange)>;
        let bad: Vec<(&str, Spoil)> = vec![
            ("scale 3", Box::new(|s| s.scale = 3)),
            ("scale 0", Box::new(|s| s.scale = 0)),
            ("previous 0", Box::new(|s| s.previous_scale = 0)),
            ("no user", Box::new(|s| s.changed_by.clear())),
            (
                "user with space",
                Box::new(|s| s.changed_by = "a jones".into()),
            ),
            ("long user", Box::new(|s| s.changed_by = "x".repeat(65))),
            ("no patient", Box::new(|s| s.patient_id.clear())),
            ("no location", Box::new(|s| s.location = None)),
            ("no time", Box::new(|s| s.changed_at_unix_ms = 0)),
            ("long reason", Box::new(|s| s.reason = "r".repeat(501))),
            (
                "control in reason",
                Box::new(|s| s.reason = "a\u{7}b".into()),
            ),
            (
                "control in name",
                Box::new(|s| s.changed_by_name = "A\tB".into()),
            ),
        ];
        for (what, f) in bad {
            let mut s = scale_change();
            f(&mut s);
            assert_eq!(
                event(&env(s)).map_err(|r| r.reason),
                Err(RejectReason::Invalid),
                "{what}"
            );
        }
        let mut s = scale_change();
        s.reason = "line one\nline two".into();
        s.location = Some(BedLocation {
            ward: "7A".into(),
            bed: String::new(),
        });
        assert!(event(&env(s)).is_ok());
    }

    #[test]
    fn consciousness_is_enumerated() {
        let mut c = hr(0.0);
        c.metric_mdc = WARDWATCH_ACVPU;
        c.unit_ucum.clear();
        c.enumerated = "V".into();
        assert!(vital(&c).is_ok());
        c.enumerated = "X".into();
        assert_eq!(vital(&c).unwrap_err().reason, RejectReason::Invalid);
    }
}
