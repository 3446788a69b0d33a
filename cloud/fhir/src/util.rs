//! Input validation and small typed-model helpers shared by the builders.

use fhir_sdk::r4b::types::{
    CodeableConcept, Coding as FhirCoding, Identifier, Quantity, Reference,
};
use fhir_sdk::{BuilderError, Instant};
use time::OffsetDateTime;

use crate::{Coding, FhirError, UCUM};

/// Shorthand for an [`FhirError::InvalidInput`].
pub(crate) fn invalid(msg: impl Into<String>) -> FhirError {
    FhirError::InvalidInput(msg.into())
}

/// Map a `fhir-sdk` builder error into [`FhirError::Build`].
pub(crate) fn build_err(what: &str) -> impl FnOnce(BuilderError) -> FhirError + '_ {
    move |e| FhirError::Build(format!("{what}: {e}"))
}

/// Map a serialization error into [`FhirError::Build`].
pub(crate) fn ser_err(what: &str) -> impl FnOnce(serde_json::Error) -> FhirError + '_ {
    move |e| FhirError::Build(format!("serializing {what}: {e}"))
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Require a valid FHIR `id`.
pub(crate) fn require_id(field: &str, s: &str) -> Result<(), FhirError> {
    if is_valid_id(s) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {s:?} is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})"
        )))
    }
}

/// FHIR `code`: `[^\s]+(\s[^\s]+)*` (non-empty, no leading, trailing or
/// repeated whitespace).
pub(crate) fn is_valid_code(s: &str) -> bool {
    let mut prev_ws = true; // rejects leading whitespace
    for c in s.chars() {
        let ws = c.is_whitespace();
        if ws && prev_ws {
            return false;
        }
        prev_ws = ws;
    }
    !s.is_empty() && !prev_ws
}

/// Require a valid FHIR `code`.
pub(crate) fn require_code(field: &str, s: &str) -> Result<(), FhirError> {
    if is_valid_code(s) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {s:?} is not a valid FHIR code (non-empty, no leading/trailing/repeated whitespace)"
        )))
    }
}

/// Require a non-empty FHIR `uri` without whitespace.
pub(crate) fn require_uri(field: &str, s: &str) -> Result<(), FhirError> {
    if !s.is_empty() && !s.chars().any(char::is_whitespace) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {s:?} is not a valid URI (non-empty, no whitespace)"
        )))
    }
}

/// Require a non-blank FHIR `string`.
pub(crate) fn require_string(field: &str, s: &str) -> Result<(), FhirError> {
    if s.trim().is_empty() {
        Err(invalid(format!("{field} must not be empty")))
    } else {
        Ok(())
    }
}

/// An optional FHIR `string`: `None` when absent or blank (FHIR forbids
/// empty strings).
pub(crate) fn opt_string(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty()).map(str::to_owned)
}

/// Convert Unix milliseconds into a FHIR `instant` (UTC). Rejects instants
/// outside the years 0001..=9999, which FHIR (and RFC 3339) cannot express.
pub(crate) fn instant_from_unix_ms(field: &str, ms: i64) -> Result<Instant, FhirError> {
    let nanos = i128::from(ms) * 1_000_000;
    let odt = OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|e| invalid(format!("{field} {ms} ms is out of range: {e}")))?;
    if !(1..=9999).contains(&odt.year()) {
        return Err(invalid(format!(
            "{field} {ms} ms is outside the years 0001..=9999"
        )));
    }
    Ok(Instant(odt))
}

/// Build a typed `Coding` from a Wardwatch [`Coding`], validating it.
pub(crate) fn coding(field: &str, c: &Coding<'_>) -> Result<FhirCoding, FhirError> {
    require_uri(&format!("{field}.system"), c.system)?;
    require_code(&format!("{field}.code"), c.code)?;
    let mut b = FhirCoding::builder()
        .system(c.system.to_owned())
        .code(c.code.to_owned());
    if let Some(display) = opt_string(Some(c.display)) {
        b = b.display(display);
    }
    b.build().map_err(build_err("Coding"))
}

/// Build a `CodeableConcept` from codings (kept in order). `text` is the
/// display of the first coding, when present.
pub(crate) fn codeable_concept(
    field: &str,
    codings: &[Coding<'_>],
) -> Result<CodeableConcept, FhirError> {
    if codings.is_empty() {
        return Err(invalid(format!("{field} needs at least one coding")));
    }
    let coded = codings
        .iter()
        .enumerate()
        .map(|(i, c)| coding(&format!("{field}[{i}]"), c).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    let mut b = CodeableConcept::builder().coding(coded);
    if let Some(text) = opt_string(codings.first().map(|c| c.display)) {
        b = b.text(text);
    }
    b.build().map_err(build_err("CodeableConcept"))
}

/// A `CodeableConcept` with a single coding built from parts that are known
/// to be valid.
pub(crate) fn single_coding_concept(
    system: &str,
    code: &str,
    display: &str,
) -> Result<CodeableConcept, FhirError> {
    codeable_concept(
        "coding",
        &[Coding {
            system,
            code,
            display,
        }],
    )
}

/// A UCUM `Quantity` with all four elements the vital-signs profile requires
/// (`value`, `unit`, `system`, `code`). `unit` falls back to the UCUM code
/// when `unit_display` is blank.
pub(crate) fn ucum_quantity(
    field: &str,
    value: f64,
    unit: &str,
    unit_display: &str,
) -> Result<Quantity, FhirError> {
    if !value.is_finite() {
        return Err(invalid(format!(
            "{field}.value {value} is not a finite number"
        )));
    }
    require_code(&format!("{field}.code (UCUM unit)"), unit)?;
    let display = opt_string(Some(unit_display)).unwrap_or_else(|| unit.to_owned());
    Quantity::builder()
        .value(value)
        .unit(display)
        .system(UCUM.to_owned())
        .code(unit.to_owned())
        .build()
        .map_err(build_err("Quantity"))
}

/// An `Identifier` with `system` and `value`.
pub(crate) fn identifier(field: &str, system: &str, value: &str) -> Result<Identifier, FhirError> {
    require_uri(&format!("{field}.system"), system)?;
    require_string(&format!("{field}.value"), value)?;
    Identifier::builder()
        .system(system.to_owned())
        .value(value.to_owned())
        .build()
        .map_err(build_err("Identifier"))
}

/// A literal reference `"<Type>/<id>"` (the id must already be valid).
pub(crate) fn literal_reference(resource_type: &str, id: &str) -> Result<Reference, FhirError> {
    Reference::builder()
        .reference(format!("{resource_type}/{id}"))
        .build()
        .map_err(build_err("Reference"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("obs-1.2"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn codes() {
        assert!(is_valid_code("mm[Hg]"));
        assert!(is_valid_code("a b"));
        assert!(!is_valid_code(""));
        assert!(!is_valid_code(" a"));
        assert!(!is_valid_code("a "));
        assert!(!is_valid_code("a  b"));
    }

    #[test]
    fn instants() {
        assert!(instant_from_unix_ms("t", 0).is_ok());
        assert!(instant_from_unix_ms("t", -62_135_596_800_000).is_ok()); // 0001-01-01
        assert!(instant_from_unix_ms("t", -62_135_596_800_001).is_err()); // year 0
        assert!(instant_from_unix_ms("t", 253_402_300_799_999).is_ok()); // 9999-12-31T23:59:59.999
        assert!(instant_from_unix_ms("t", 253_402_300_800_000).is_err()); // year 10000
        assert!(instant_from_unix_ms("t", i64::MAX).is_err());
        assert!(instant_from_unix_ms("t", i64::MIN).is_err());
    }
}
