//! Normalization: every source (MQTT, HL7 v2 / IHE PCD-01, the simulator) hands over a [`RawVital`] in whatever
//! unit the device spoke; this stage converts it to the metric's canonical UCUM unit (°F→°C, kPa→mmHg, MDC unit
//! codes → UCUM, common spellings such as `bpm`), carries the signal-quality flags through, and rejects
//! physiologically impossible values with a reason (the shared validation in `wardwatch_proto::validate`).
//! Unit conversions live in one table here; metric codes and canonical units live in `proto/src/metrics.rs`.

use wardwatch_proto::metrics::{self, ValueKind};
use wardwatch_proto::v1::{
    BedLocation, EncounterId, QualityFlag, RejectReason, VitalComponent, VitalSign,
};
use wardwatch_proto::validate::{self, Rejection};

/// A vital sign as a source decoded it, before normalization.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawVital {
    /// Patient MRN.
    pub patient_id: String,
    /// Ward.
    pub ward: String,
    /// Bed.
    pub bed: String,
    /// Source device id.
    pub device_id: String,
    /// MDC metric code.
    pub metric_mdc: u32,
    /// Value in `unit` (for compounds: the mean if any, else 0).
    pub value: f64,
    /// Unit as the device sent it: UCUM (`/min`, `Cel`), a common spelling (`bpm`, `degF`, `mmHg`), an MDC unit
    /// reference id (`MDC_DIM_DEGC`) or an MDC unit code (`268192`).
    pub unit: String,
    /// Components of a compound numeric, in `unit`.
    pub components: Vec<(u32, f64)>,
    /// Enumerated value (ACVPU letter), if any.
    pub enumerated: Option<String>,
    /// When measured.
    pub measured_at_unix_ms: i64,
    /// Signal-quality flags.
    pub quality: Vec<QualityFlag>,
    /// The encounter (visit) the patient was in, when the source knows it (HL7 PV1-19, MQTT `encounter`), so the
    /// sample's FHIR Observation can name its encounter. Passed through unchanged; validation checks it.
    pub encounter: Option<EncounterId>,
}

/// A unit the normalizer understands: which canonical UCUM unit it converts to, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conversion {
    /// Already the canonical unit (maybe spelled differently).
    Same(&'static str),
    /// Degrees Fahrenheit to Celsius.
    FahrenheitToCelsius,
    /// Kilopascal to millimetres of mercury.
    KilopascalToMmHg,
}

/// kPa → mmHg factor (1 mmHg = 133.322387415 Pa).
pub const MMHG_PER_KPA: f64 = 1000.0 / 133.322_387_415;

/// The one unit table: spelling (UCUM, common, MDC reference id, MDC code) → conversion.
/// MDC dimension codes are the IEEE 11073-10101 partition 4 codes; each was checked against the reference id
/// listed beside it in `../shared/clinical-reference.md` where given there.
static UNITS: &[(&str, Conversion)] = &[
    ("/min", Conversion::Same("/min")),
    ("1/min", Conversion::Same("/min")),
    ("{beats}/min", Conversion::Same("/min")),
    ("{beat}/min", Conversion::Same("/min")),
    ("{breaths}/min", Conversion::Same("/min")),
    ("{breath}/min", Conversion::Same("/min")),
    ("bpm", Conversion::Same("/min")),
    ("brpm", Conversion::Same("/min")),
    ("MDC_DIM_BEAT_PER_MIN", Conversion::Same("/min")),
    ("264864", Conversion::Same("/min")),
    ("MDC_DIM_RESP_PER_MIN", Conversion::Same("/min")),
    ("%", Conversion::Same("%")),
    ("percent", Conversion::Same("%")),
    ("MDC_DIM_PERCENT", Conversion::Same("%")),
    ("262688", Conversion::Same("%")),
    ("Cel", Conversion::Same("Cel")),
    ("degC", Conversion::Same("Cel")),
    ("C", Conversion::Same("Cel")),
    ("°C", Conversion::Same("Cel")),
    ("MDC_DIM_DEGC", Conversion::Same("Cel")),
    ("[degF]", Conversion::FahrenheitToCelsius),
    ("degF", Conversion::FahrenheitToCelsius),
    ("F", Conversion::FahrenheitToCelsius),
    ("°F", Conversion::FahrenheitToCelsius),
    ("MDC_DIM_FAHR", Conversion::FahrenheitToCelsius),
    ("mm[Hg]", Conversion::Same("mm[Hg]")),
    ("mmHg", Conversion::Same("mm[Hg]")),
    ("MDC_DIM_MMHG", Conversion::Same("mm[Hg]")),
    ("266016", Conversion::Same("mm[Hg]")),
    ("kPa", Conversion::KilopascalToMmHg),
    ("MDC_DIM_KILO_PASCAL", Conversion::KilopascalToMmHg),
];

fn lookup(unit: &str) -> Option<Conversion> {
    let u = unit.trim();
    UNITS.iter().find(|(s, _)| *s == u).map(|(_, c)| *c)
}

impl Conversion {
    fn target(self) -> &'static str {
        match self {
            Self::Same(t) => t,
            Self::FahrenheitToCelsius => "Cel",
            Self::KilopascalToMmHg => "mm[Hg]",
        }
    }
    fn apply(self, v: f64) -> f64 {
        match self {
            Self::Same(_) => v,
            // Rounded to 0.01 °C so a device's 98.6 °F reads 37.0 °C, not 36.99999.
            Self::FahrenheitToCelsius => ((v - 32.0) * 5.0 / 9.0 * 100.0).round() / 100.0,
            Self::KilopascalToMmHg => (v * MMHG_PER_KPA * 10.0).round() / 10.0,
        }
    }
}

/// Normalizes one vital sign: canonical unit, then the shared validation (known metric, finite, physiologically
/// possible, required components). Returns the wire message or the reason it was rejected.
pub fn normalize_vital(raw: RawVital) -> Result<VitalSign, Rejection> {
    let metric = metrics::by_mdc(raw.metric_mdc).ok_or_else(|| {
        Rejection::new(
            RejectReason::UnknownMetric,
            format!("MDC code {} is not a known metric", raw.metric_mdc),
        )
    })?;
    let (unit, value, components) = if metric.kind == ValueKind::Enumerated {
        (String::new(), 0.0, Vec::new())
    } else {
        if raw.unit.trim().is_empty() {
            return Err(Rejection::new(
                RejectReason::BadUnit,
                format!("unit missing for {}", metric.mdc_ref),
            ));
        }
        let conv = lookup(&raw.unit).ok_or_else(|| {
            Rejection::new(
                RejectReason::BadUnit,
                format!(
                    "unit {:?} is not understood for {}",
                    raw.unit, metric.mdc_ref
                ),
            )
        })?;
        if conv.target() != metric.unit {
            return Err(Rejection::new(
                RejectReason::BadUnit,
                format!(
                    "unit {:?} cannot express {} (needs {})",
                    raw.unit, metric.mdc_ref, metric.unit
                ),
            ));
        }
        let components = raw
            .components
            .iter()
            .map(|(c, v)| VitalComponent {
                metric_mdc: *c,
                value: conv.apply(*v),
            })
            .collect();
        (metric.unit.to_string(), conv.apply(raw.value), components)
    };
    let v = VitalSign {
        patient_id: raw.patient_id,
        location: Some(BedLocation {
            ward: raw.ward,
            bed: raw.bed,
        }),
        device_id: raw.device_id,
        metric_mdc: raw.metric_mdc,
        value,
        unit_ucum: unit,
        measured_at_unix_ms: raw.measured_at_unix_ms,
        quality: raw.quality.into_iter().map(|q| q as i32).collect(),
        components,
        enumerated: raw
            .enumerated
            .map(|e| e.trim().to_ascii_uppercase())
            .unwrap_or_default(),
        // An empty encounter means "not known": sent as no encounter at all (an authority without a visit number
        // is kept, and refused by validation).
        encounter: raw
            .encounter
            .filter(|e| !(e.visit_number.is_empty() && e.assigning_authority.is_empty())),
    };
    validate::vital(&v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::metrics::*;

    fn raw(mdc: u32, value: f64, unit: &str) -> RawVital {
        RawVital {
            patient_id: "MRN1".into(),
            ward: "7A".into(),
            bed: "1".into(),
            device_id: "mon-1".into(),
            metric_mdc: mdc,
            value,
            unit: unit.into(),
            measured_at_unix_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn converts_units_to_canonical_ucum() {
        let t = normalize_vital(raw(MDC_TEMP_BODY, 98.6, "[degF]")).unwrap();
        assert_eq!((t.value, t.unit_ucum.as_str()), (37.0, "Cel"));
        let t = normalize_vital(raw(MDC_TEMP_BODY, 101.3, "MDC_DIM_FAHR")).unwrap();
        assert_eq!(t.value, 38.5);
        let hr = normalize_vital(raw(MDC_ECG_HEART_RATE, 72.0, "bpm")).unwrap();
        assert_eq!(hr.unit_ucum, "/min");
        let spo2 = normalize_vital(raw(MDC_PULS_OXIM_SAT_O2, 97.0, "262688")).unwrap();
        assert_eq!(spo2.unit_ucum, "%");
        let mut bp = raw(MDC_PRESS_BLD_NONINV, 12.0, "kPa");
        bp.components = vec![
            (MDC_PRESS_BLD_NONINV_SYS, 16.0),
            (MDC_PRESS_BLD_NONINV_DIA, 10.6),
        ];
        let bp = normalize_vital(bp).unwrap();
        assert_eq!(bp.unit_ucum, "mm[Hg]");
        assert_eq!(bp.components[0].value, 120.0);
        assert_eq!(bp.components[1].value, 79.5);
        assert_eq!(bp.value, 90.0);
    }

    #[test]
    fn rejects_with_reasons() {
        assert_eq!(
            normalize_vital(raw(MDC_ECG_HEART_RATE, 72.0, ""))
                .unwrap_err()
                .reason,
            RejectReason::BadUnit
        );
        assert_eq!(
            normalize_vital(raw(MDC_ECG_HEART_RATE, 72.0, "furlongs"))
                .unwrap_err()
                .reason,
            RejectReason::BadUnit
        );
        // A temperature unit for a heart rate is refused, not converted.
        assert_eq!(
            normalize_vital(raw(MDC_ECG_HEART_RATE, 72.0, "degF"))
                .unwrap_err()
                .reason,
            RejectReason::BadUnit
        );
        assert_eq!(
            normalize_vital(raw(4242, 72.0, "/min")).unwrap_err().reason,
            RejectReason::UnknownMetric
        );
        assert_eq!(
            normalize_vital(raw(MDC_ECG_HEART_RATE, f64::NAN, "/min"))
                .unwrap_err()
                .reason,
            RejectReason::NotFinite
        );
        // 500 °F is 260 °C: impossible, rejected after conversion.
        assert_eq!(
            normalize_vital(raw(MDC_TEMP_BODY, 500.0, "degF"))
                .unwrap_err()
                .reason,
            RejectReason::Invalid
        );
        assert_eq!(
            normalize_vital(raw(MDC_ECG_HEART_RATE, -1.0, "/min"))
                .unwrap_err()
                .reason,
            RejectReason::Invalid
        );
    }

    #[test]
    fn carries_quality_flags_and_enumerations() {
        let mut r = raw(MDC_PULS_OXIM_SAT_O2, 88.0, "%");
        r.quality = vec![QualityFlag::Artifact];
        assert_eq!(
            normalize_vital(r).unwrap().quality,
            vec![QualityFlag::Artifact as i32]
        );
        let mut c = raw(WARDWATCH_ACVPU, 0.0, "");
        c.enumerated = Some(" v ".into());
        assert_eq!(normalize_vital(c).unwrap().enumerated, "V");
    }

    #[test]
    fn carries_the_encounter_and_checks_it() {
        assert_eq!(
            normalize_vital(raw(MDC_ECG_HEART_RATE, 72.0, "/min"))
                .unwrap()
                .encounter,
            None
        );
        let visit = EncounterId {
            visit_number: "V2024-17".into(),
            assigning_authority: "HOSP".into(),
        };
        let mut r = raw(MDC_ECG_HEART_RATE, 72.0, "/min");
        r.encounter = Some(visit.clone());
        assert_eq!(normalize_vital(r).unwrap().encounter, Some(visit));
        let mut r = raw(MDC_ECG_HEART_RATE, 72.0, "/min");
        r.encounter = Some(EncounterId::default());
        assert_eq!(
            normalize_vital(r).unwrap().encounter,
            None,
            "empty: not known"
        );
        let mut r = raw(MDC_ECG_HEART_RATE, 72.0, "/min");
        r.encounter = Some(EncounterId {
            visit_number: "V 17".into(),
            assigning_authority: String::new(),
        });
        let e = normalize_vital(r).unwrap_err();
        assert_eq!(e.reason, RejectReason::Invalid);
        assert!(e.detail.contains("visit number"), "{}", e.detail);
    }
}
