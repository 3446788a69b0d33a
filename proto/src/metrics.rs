//! The one table of metrics Wardwatch understands: IEEE 11073-10101 MDC code ↔ LOINC, canonical UCUM unit, and
//! the range outside which a value is physiologically impossible (rejected, not charted).
//!
//! MDC codes are 32-bit context-free codes (partition << 16 | term). `WARDWATCH_ACVPU` sits in the private
//! term range (0xF000..) of partition 2 (SCADA) because IEEE 11073-10101 has no level-of-consciousness metric;
//! it is Wardwatch-defined and never sent to a third party as an MDC code.

/// How a metric's value is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A single number in `unit`.
    Numeric,
    /// A compound numeric whose parts are listed in `components` (all in `unit`).
    Compound,
    /// A coded value (ACVPU letters).
    Enumerated,
}

/// One metric Wardwatch knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// IEEE 11073-10101 context-free code.
    pub mdc: u32,
    /// The MDC reference id, for humans and logs.
    pub mdc_ref: &'static str,
    /// LOINC code used for the FHIR Observation (vital-signs profile code where one exists).
    pub loinc: &'static str,
    /// Display text.
    pub display: &'static str,
    /// Canonical UCUM unit on the wire and in storage ("" for enumerated metrics).
    pub unit: &'static str,
    /// Human display of the unit.
    pub unit_display: &'static str,
    /// Smallest physiologically possible value (inclusive).
    pub min: f64,
    /// Largest physiologically possible value (inclusive).
    pub max: f64,
    /// Value shape.
    pub kind: ValueKind,
    /// FHIR Observation category: "vital-signs" or "exam".
    pub category: &'static str,
}

/// MDC_ECG_HEART_RATE.
pub const MDC_ECG_HEART_RATE: u32 = 147842;
/// MDC_PULS_OXIM_PULS_RATE.
pub const MDC_PULS_OXIM_PULS_RATE: u32 = 149530;
/// MDC_PULS_RATE_NON_INV.
pub const MDC_PULS_RATE_NON_INV: u32 = 149546;
/// MDC_RESP_RATE.
pub const MDC_RESP_RATE: u32 = 151562;
/// MDC_PULS_OXIM_SAT_O2.
pub const MDC_PULS_OXIM_SAT_O2: u32 = 150456;
/// MDC_TEMP_BODY.
pub const MDC_TEMP_BODY: u32 = 150364;
/// MDC_TEMP.
pub const MDC_TEMP: u32 = 150344;
/// MDC_PRESS_BLD_NONINV (compound: systolic, diastolic, mean).
pub const MDC_PRESS_BLD_NONINV: u32 = 150020;
/// MDC_PRESS_BLD_NONINV_SYS.
pub const MDC_PRESS_BLD_NONINV_SYS: u32 = 150021;
/// MDC_PRESS_BLD_NONINV_DIA.
pub const MDC_PRESS_BLD_NONINV_DIA: u32 = 150022;
/// MDC_PRESS_BLD_NONINV_MEAN.
pub const MDC_PRESS_BLD_NONINV_MEAN: u32 = 150023;
/// Wardwatch-defined (private MDC range): level of consciousness on the ACVPU scale.
pub const WARDWATCH_ACVPU: u32 = (2 << 16) | 0xF000;
/// Wardwatch-defined (private MDC range): whether the patient breathes room air or receives supplemental
/// oxygen (NEWS2 "air or oxygen"). Enumerated "AIR" / "O2".
pub const WARDWATCH_SUPPLEMENTAL_O2: u32 = (2 << 16) | 0xF001;

#[allow(clippy::too_many_arguments)] // one row of a table: positional reads best
const fn numeric(
    mdc: u32,
    mdc_ref: &'static str,
    loinc: &'static str,
    display: &'static str,
    unit: &'static str,
    unit_display: &'static str,
    min: f64,
    max: f64,
) -> Metric {
    Metric {
        mdc,
        mdc_ref,
        loinc,
        display,
        unit,
        unit_display,
        min,
        max,
        kind: ValueKind::Numeric,
        category: "vital-signs",
    }
}

/// Every metric, one row each. Components of compound metrics are rows too.
pub static METRICS: &[Metric] = &[
    numeric(
        MDC_ECG_HEART_RATE,
        "MDC_ECG_HEART_RATE",
        "8867-4",
        "Heart rate",
        "/min",
        "beats/minute",
        0.0,
        350.0,
    ),
    numeric(
        MDC_PULS_OXIM_PULS_RATE,
        "MDC_PULS_OXIM_PULS_RATE",
        "8867-4",
        "Heart rate",
        "/min",
        "beats/minute",
        0.0,
        350.0,
    ),
    numeric(
        MDC_PULS_RATE_NON_INV,
        "MDC_PULS_RATE_NON_INV",
        "8867-4",
        "Heart rate",
        "/min",
        "beats/minute",
        0.0,
        350.0,
    ),
    numeric(
        MDC_RESP_RATE,
        "MDC_RESP_RATE",
        "9279-1",
        "Respiratory rate",
        "/min",
        "breaths/minute",
        0.0,
        120.0,
    ),
    numeric(
        MDC_PULS_OXIM_SAT_O2,
        "MDC_PULS_OXIM_SAT_O2",
        "2708-6",
        "Oxygen saturation in Arterial blood",
        "%",
        "%",
        0.0,
        100.0,
    ),
    numeric(
        MDC_TEMP_BODY,
        "MDC_TEMP_BODY",
        "8310-5",
        "Body temperature",
        "Cel",
        "C",
        20.0,
        45.0,
    ),
    numeric(
        MDC_TEMP,
        "MDC_TEMP",
        "8310-5",
        "Body temperature",
        "Cel",
        "C",
        20.0,
        45.0,
    ),
    Metric {
        mdc: MDC_PRESS_BLD_NONINV,
        mdc_ref: "MDC_PRESS_BLD_NONINV",
        loinc: "85354-9",
        display: "Blood pressure panel with all children optional",
        unit: "mm[Hg]",
        unit_display: "mmHg",
        min: 0.0,
        max: 350.0,
        kind: ValueKind::Compound,
        category: "vital-signs",
    },
    numeric(
        MDC_PRESS_BLD_NONINV_SYS,
        "MDC_PRESS_BLD_NONINV_SYS",
        "8480-6",
        "Systolic blood pressure",
        "mm[Hg]",
        "mmHg",
        0.0,
        350.0,
    ),
    numeric(
        MDC_PRESS_BLD_NONINV_DIA,
        "MDC_PRESS_BLD_NONINV_DIA",
        "8462-4",
        "Diastolic blood pressure",
        "mm[Hg]",
        "mmHg",
        0.0,
        300.0,
    ),
    numeric(
        MDC_PRESS_BLD_NONINV_MEAN,
        "MDC_PRESS_BLD_NONINV_MEAN",
        "8478-0",
        "Mean blood pressure",
        "mm[Hg]",
        "mmHg",
        0.0,
        300.0,
    ),
    Metric {
        mdc: WARDWATCH_ACVPU,
        mdc_ref: "WARDWATCH_ACVPU (private)",
        // LOINC "Level of responsiveness" (AVPU answer list); to be verified against the LOINC release.
        loinc: "67775-7",
        display: "Level of consciousness (ACVPU)",
        unit: "",
        unit_display: "",
        min: 0.0,
        max: 0.0,
        kind: ValueKind::Enumerated,
        category: "exam",
    },
    Metric {
        mdc: WARDWATCH_SUPPLEMENTAL_O2,
        mdc_ref: "WARDWATCH_SUPPLEMENTAL_O2 (private)",
        // No LOINC code asserted: the FHIR Observation carries the Wardwatch code only.
        loinc: "",
        display: "Breathing room air or supplemental oxygen",
        unit: "",
        unit_display: "",
        min: 0.0,
        max: 0.0,
        kind: ValueKind::Enumerated,
        category: "exam",
    },
];

/// Whether `mdc` is in the private term range (0xF000..) Wardwatch uses for its own metrics; such codes are
/// never presented to third parties as MDC codes (FHIR uses the system `urn:wardwatch:metric` for them).
pub fn is_private(mdc: u32) -> bool {
    (mdc & 0xFFFF) >= 0xF000
}

/// Looks a metric up by MDC code.
pub fn by_mdc(mdc: u32) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.mdc == mdc)
}

/// Components a compound metric must or may carry: (component code, required).
pub fn components_of(mdc: u32) -> &'static [(u32, bool)] {
    match mdc {
        MDC_PRESS_BLD_NONINV => &[
            (MDC_PRESS_BLD_NONINV_SYS, true),
            (MDC_PRESS_BLD_NONINV_DIA, true),
            (MDC_PRESS_BLD_NONINV_MEAN, false),
        ],
        _ => &[],
    }
}

/// The ACVPU levels, in order of severity.
pub const ACVPU: [&str; 5] = ["A", "C", "V", "P", "U"];

/// The values of [`WARDWATCH_SUPPLEMENTAL_O2`].
pub const AIR_OR_OXYGEN: [&str; 2] = ["AIR", "O2"];

/// The allowed values of an enumerated metric, with their display text (empty for other metrics).
pub fn enumeration(mdc: u32) -> &'static [(&'static str, &'static str)] {
    match mdc {
        WARDWATCH_ACVPU => &[
            ("A", "Alert"),
            ("C", "New confusion"),
            ("V", "Responds to voice"),
            ("P", "Responds to pain"),
            ("U", "Unresponsive"),
        ],
        WARDWATCH_SUPPLEMENTAL_O2 => {
            &[("AIR", "Breathing room air"), ("O2", "Supplemental oxygen")]
        }
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_consistent() {
        for (i, m) in METRICS.iter().enumerate() {
            assert!(
                METRICS[i + 1..].iter().all(|o| o.mdc != m.mdc),
                "duplicate {}",
                m.mdc_ref
            );
            assert!(m.min <= m.max);
        }
        assert_eq!(by_mdc(MDC_ECG_HEART_RATE).map(|m| m.loinc), Some("8867-4"));
        assert_eq!(
            by_mdc(MDC_PRESS_BLD_NONINV).map(|m| m.kind),
            Some(ValueKind::Compound)
        );
        assert_eq!(WARDWATCH_ACVPU, 192_512);
        for (c, _) in components_of(MDC_PRESS_BLD_NONINV) {
            assert!(by_mdc(*c).is_some());
        }
    }
}
