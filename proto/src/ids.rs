//! Identifier newtypes. Each validates its text once, at the boundary, so the rest of the code can rely on it.

use std::fmt;

/// An identifier failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct InvalidId {
    /// Which kind of identifier (e.g. "edge id").
    pub kind: &'static str,
    /// The offending text (truncated to 80 characters).
    pub value: String,
    /// What rule it broke.
    pub why: &'static str,
}

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    allowed: fn(char) -> bool,
) -> Result<(), InvalidId> {
    let err = |why| InvalidId {
        kind,
        value: s.chars().take(80).collect(),
        why,
    };
    if s.is_empty() {
        return Err(err("must not be empty"));
    }
    if s.len() > max {
        return Err(err("too long"));
    }
    if !s.chars().all(allowed) {
        return Err(err("contains a character outside the allowed set"));
    }
    Ok(())
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Characters allowed in FHIR logical ids (`[A-Za-z0-9\-\.]`), minus the dot, which Wardwatch uses as a
/// separator in composite ids.
fn fhir_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '/' | ':')
}

/// Characters of visit numbers and their assigning authorities: letters, digits and `._-/:` (hospital visit
/// numbers and OIDs in this alphabet; no whitespace and none of the FHIR search (`|`, `,`, `\`) or HL7 v2
/// (`^`, `&`, `~`) delimiters, so the value reads the same in every place it appears).
fn visit_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':')
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check($kind, &s, $max, $allowed)?;
                Ok(Self(s))
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_newtype!(
    /// An edge node's identifier: 1-40 of `[A-Za-z0-9-]`. It appears in certificate URI SANs
    /// (`urn:wardwatch:edge:<id>`) and in FHIR ids (`<edge>.<sequence>` must fit FHIR's 64 characters), hence
    /// the narrow alphabet and length.
    EdgeId, "edge id", 40, fhir_id_char
);
id_newtype!(
    /// A ward as the hospital names it (e.g. "7A"): 1-64 of `[A-Za-z0-9_-]`.
    WardId, "ward id", 64, id_char
);
id_newtype!(
    /// A patient's MRN: 1-64 of `[A-Za-z0-9_-]` (hospital MRNs in this alphabet; others are rejected, not mangled).
    PatientId, "patient id", 64, id_char
);
id_newtype!(
    /// A device identifier (asset tag, EUI-64): 1-64 of `[A-Za-z0-9-]` (it is the FHIR Device id).
    DeviceId, "device id", 64, fhir_id_char
);
id_newtype!(
    /// A bed label within a ward, or other short free-form label: 1-64 of `[A-Za-z0-9_-. /:]`.
    Label, "label", 64, label_char
);

id_newtype!(
    /// An encounter's visit number (HL7 v2 PV1-19 CX.1), the key by which an EHR finds one stay's data:
    /// 1-64 of `[A-Za-z0-9._-/:]`.
    VisitNumber, "visit number", 64, visit_char
);
id_newtype!(
    /// Who issued a visit number (HL7 v2 CX.4 assigning authority: a namespace id such as `HOSP` or an OID):
    /// 1-64 of `[A-Za-z0-9._-/:]`.
    AssigningAuthority, "assigning authority", 64, visit_char
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_narrow_alphabet_and_rejects_the_rest() {
        assert!(EdgeId::new("ward-7a-edge1").is_ok());
        assert!(
            EdgeId::new("ward_7a").is_err(),
            "not a valid FHIR id character"
        );
        assert!(EdgeId::new("a".repeat(41)).is_err());
        assert!(EdgeId::new("").is_err());
        assert!(EdgeId::new("a".repeat(65)).is_err());
        assert!(EdgeId::new("edge.1").is_err());
        assert!(PatientId::new("MRN 1").is_err());
        assert!(Label::new("bed 12/A").is_ok());
        let e = WardId::new("7A;DROP").unwrap_err();
        assert_eq!(e.kind, "ward id");
        assert!(VisitNumber::new("V2024/000123:1").is_ok());
        assert!(AssigningAuthority::new("1.2.840.114350").is_ok());
        for bad in ["V 1", "V|1", "V,1", "V^1", "V&1", "V~1", "V\\1", "Vé"] {
            assert!(VisitNumber::new(bad).is_err(), "{bad:?}");
        }
        assert!(VisitNumber::new("9".repeat(65)).is_err());
        assert!(VisitNumber::new("").is_err());
    }
}
