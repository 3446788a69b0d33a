//! Vital-sign (and exam) `Observation` resources.

use fhir_sdk::DateTime;
use fhir_sdk::r4b::codes::ObservationStatus;
use fhir_sdk::r4b::resources::{
    Observation, ObservationComponent as FhirComponent, ObservationComponentValue,
    ObservationEffective, ObservationValue,
};
use fhir_sdk::r4b::types::{Annotation, CodeableConcept, Meta, Reference};

use crate::util::{
    build_err, codeable_concept, identifier, instant_from_unix_ms, invalid, is_valid_id,
    opt_string, require_id, require_uri, ser_err, single_coding_concept, ucum_quantity,
};
use crate::{
    Coding, DeviceReference, EncounterReference, FhirError, LOINC, OBSERVATION_CATEGORY,
    SerializedResource, VITAL_SIGNS_PROFILE, VersionMeta,
};

/// One component of a panel observation, e.g. the systolic pressure
/// (LOINC `8480-6`) of a blood-pressure panel.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationComponent<'a> {
    /// Codings of `component.code`, in order (LOINC first, then MDC).
    pub code: Vec<Coding<'a>>,
    /// Numeric value; must be finite.
    pub value: f64,
    /// UCUM unit code, e.g. `mm[Hg]`.
    pub unit: &'a str,
    /// Human-readable unit; the UCUM code is used when empty.
    pub unit_display: &'a str,
}

/// A vital-sign (or exam) measurement to map to a FHIR `Observation`.
#[derive(Debug, Clone, PartialEq)]
pub struct VitalSignRecord<'a> {
    /// FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
    pub id: &'a str,
    /// System URI of the patient's MRN identifier.
    pub patient_system: &'a str,
    /// The patient's MRN.
    pub patient_id: &'a str,
    /// The encounter (visit) the sample was taken in, when the source knew it: `Observation.encounter`, a
    /// logical reference by visit number (see [`EncounterReference`]). `None`: no `encounter` element.
    pub encounter: Option<EncounterReference<'a>>,
    /// What measured it: normally the `DeviceMetric` (Point-of-Care Device shape); becomes
    /// `Observation.device = {"reference": "DeviceMetric/<id>"}` (or `Device/<id>`).
    pub device: Option<DeviceReference<'a>>,
    /// Codings of `Observation.code`, in order: the LOINC coding first (the
    /// vital-signs profile requires it), then e.g. the MDC coding.
    pub code: Vec<Coding<'a>>,
    /// `valueQuantity.value` when `Some`; `None` for a panel such as blood
    /// pressure (`85354-9`) or for an enumerated value.
    pub value: Option<f64>,
    /// UCUM code of `value`, e.g. `/min`, `%`, `Cel`, `mm[Hg]`.
    pub unit: &'a str,
    /// Human-readable unit, e.g. `beats/minute`; the UCUM code is used when
    /// empty.
    pub unit_display: &'a str,
    /// Panel components (blood pressure: systolic `8480-6` and diastolic
    /// `8462-4`).
    pub components: Vec<ObservationComponent<'a>>,
    /// `effectiveDateTime`, Unix milliseconds.
    pub effective_unix_ms: i64,
    /// `Observation.issued` (when the cloud stored it), Unix milliseconds.
    pub issued_unix_ms: i64,
    /// Signal-quality flags such as `artifact`, `probe-off`. The status stays
    /// `final`; when any flag is present an `Observation.note` with the text
    /// `signal quality: artifact, probe-off` is added.
    pub quality_flags: Vec<&'a str>,
    /// For non-numeric observations (level of consciousness, ACVPU):
    /// rendered as `valueCodeableConcept` instead of `valueQuantity`. Not
    /// allowed together with `value`, nor for the `vital-signs` category
    /// (the vital-signs profile only allows `valueQuantity`).
    pub value_enumerated: Option<Coding<'a>>,
    /// `Observation.category` code in
    /// `http://terminology.hl7.org/CodeSystem/observation-category`:
    /// `vital-signs` normally, `exam` for consciousness.
    pub category: &'a str,
    /// Lineage of the measurement, e.g. `edge-7a/seq/12345`; goes into
    /// `meta.source` (a URI: no whitespace allowed).
    pub source_lineage: Option<&'a str>,
}

/// Codes and displays of the observation-category code system.
const CATEGORIES: &[(&str, &str)] = &[
    ("social-history", "Social History"),
    ("vital-signs", "Vital Signs"),
    ("imaging", "Imaging"),
    ("laboratory", "Laboratory"),
    ("procedure", "Procedure"),
    ("survey", "Survey"),
    ("exam", "Exam"),
    ("therapy", "Therapy"),
    ("activity", "Activity"),
];

/// The vital-signs category code.
const VITAL_SIGNS: &str = "vital-signs";

/// LOINC code of the blood-pressure panel.
const BP_PANEL: &str = "85354-9";
/// LOINC code of systolic blood pressure.
const BP_SYSTOLIC: &str = "8480-6";
/// LOINC code of diastolic blood pressure.
const BP_DIASTOLIC: &str = "8462-4";
/// UCUM unit required for blood-pressure components.
const MM_HG: &str = "mm[Hg]";

/// FHIR R4 vital-signs sub-profiles keyed by LOINC code, with the UCUM units
/// each allows for `valueQuantity` (empty for the component-only BP panel).
const SPECIFIC_PROFILES: &[(&str, &str, &[&str])] = &[
    (
        "8867-4",
        "http://hl7.org/fhir/StructureDefinition/heartrate",
        &["/min"],
    ),
    (
        "9279-1",
        "http://hl7.org/fhir/StructureDefinition/resprate",
        &["/min"],
    ),
    (
        "2708-6",
        "http://hl7.org/fhir/StructureDefinition/oxygensat",
        &["%"],
    ),
    (
        "8310-5",
        "http://hl7.org/fhir/StructureDefinition/bodytemp",
        &["Cel", "[degF]"],
    ),
    (
        "8302-2",
        "http://hl7.org/fhir/StructureDefinition/bodyheight",
        &["cm", "[in_i]"],
    ),
    (
        "9843-4",
        "http://hl7.org/fhir/StructureDefinition/headcircum",
        &["cm", "[in_i]"],
    ),
    (
        "29463-7",
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        &["kg", "[lb_av]", "g"],
    ),
    (
        "39156-5",
        "http://hl7.org/fhir/StructureDefinition/bmi",
        &["kg/m2"],
    ),
    (BP_PANEL, "http://hl7.org/fhir/StructureDefinition/bp", &[]),
];

/// Build a FHIR R4 `Observation` for a vital sign (or an exam finding such as
/// level of consciousness).
///
/// For category `vital-signs` the resource conforms to the FHIR R4
/// vital-signs profile: `meta.profile` lists [`VITAL_SIGNS_PROFILE`] plus the
/// specific profile for known LOINC codes (heart rate `8867-4` → `heartrate`,
/// `9279-1` → `resprate`, `2708-6` → `oxygensat`, `8310-5` → `bodytemp`,
/// `85354-9` → `bp`, also `bodyheight`, `headcircum`, `bodyweight`, `bmi`);
/// the unit (or, for BP, the systolic/diastolic components in `mm[Hg]`) must
/// then match that profile. Other categories get no vital-signs profile.
///
/// `status` is always `final`; `subject` is a `Patient` reference carrying
/// the MRN identifier, plus a literal `Patient/<mrn>` reference when the MRN
/// is a valid FHIR id; `encounter`, when known, a logical `Encounter`
/// reference by visit number.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, empty or malformed codes,
/// a non-LOINC first coding for vital signs, a non-finite value, an
/// unrepresentable timestamp, a missing value, an unknown category, or a
/// unit/component mismatch with the specific profile;
/// [`FhirError::Build`] if `fhir-sdk` fails (not expected).
pub fn vital_sign_observation(r: &VitalSignRecord<'_>) -> Result<serde_json::Value, FhirError> {
    let observation = observation_of(r, None)?;
    serde_json::to_value(&observation).map_err(ser_err("Observation"))
}

/// [`vital_sign_observation`] with `meta.versionId` and `meta.lastUpdated` set as [`crate::with_version`] sets
/// them, serialized straight from the typed resource to JSON text (no `serde_json::Value` in between). A search
/// Bundle of a patient's whole day holds about 700 of these; building each as a `Value` first and serializing the
/// tree afterwards cost the cloud about twice the time (`cargo run --release -p wardwatch-fhir --example
/// bundle_cost`).
///
/// # Errors
/// As [`vital_sign_observation`]; an invalid version id or an unrepresentable time is
/// [`FhirError::InvalidInput`].
pub fn vital_sign_observation_json(
    r: &VitalSignRecord<'_>,
    version: &VersionMeta<'_>,
) -> Result<SerializedResource, FhirError> {
    let observation = observation_of(r, Some(version))?;
    SerializedResource::of("Observation", &observation)
}

/// The typed `Observation` of `r`; with `version`, its `meta` also carries `versionId` (and `lastUpdated`).
fn observation_of(
    r: &VitalSignRecord<'_>,
    version: Option<&VersionMeta<'_>>,
) -> Result<Observation, FhirError> {
    require_id("Observation.id", r.id)?;

    let (category_code, category_display) = CATEGORIES
        .iter()
        .copied()
        .find(|(code, _)| *code == r.category)
        .ok_or_else(|| invalid(format!("unknown observation category {:?}", r.category)))?;
    let is_vital = category_code == VITAL_SIGNS;

    let code = codeable_concept("Observation.code", &r.code)?;
    let loinc_code = r.code.first().filter(|c| c.system == LOINC).map(|c| c.code);
    if is_vital && loinc_code.is_none() {
        return Err(invalid(
            "vital-signs Observation.code must have the LOINC coding first",
        ));
    }

    if r.value.is_some() && r.value_enumerated.is_some() {
        return Err(invalid("value and value_enumerated are mutually exclusive"));
    }
    if is_vital && r.value_enumerated.is_some() {
        return Err(invalid(
            "the vital-signs profile only allows valueQuantity, not an enumerated value",
        ));
    }
    if r.value.is_none() && r.value_enumerated.is_none() && r.components.is_empty() {
        return Err(invalid(
            "an Observation needs a value, an enumerated value or components",
        ));
    }

    let mut profiles = Vec::new();
    if is_vital {
        profiles.push(Some(VITAL_SIGNS_PROFILE.to_owned()));
        if let Some(specific) = loinc_code.and_then(|c| check_specific_profile(c, r).transpose()) {
            profiles.push(Some(specific?.to_owned()));
        }
    }

    let category = single_coding_concept(OBSERVATION_CATEGORY, category_code, category_display)?;
    let subject = patient_reference(r.patient_system, r.patient_id)?;
    let effective = instant_from_unix_ms("effective_unix_ms", r.effective_unix_ms)?;
    let issued = instant_from_unix_ms("issued_unix_ms", r.issued_unix_ms)?;

    let mut b = Observation::builder()
        .id(r.id.to_owned())
        .status(ObservationStatus::Final)
        .category(vec![Some(category)])
        .code(code)
        .subject(subject)
        .effective(ObservationEffective::DateTime(DateTime::DateTime(
            effective,
        )))
        .issued(issued);

    let mut meta = meta(profiles, r.source_lineage)?;
    if let Some(v) = version {
        require_id("meta.versionId", v.version_id)?;
        let m = match &mut meta {
            Some(m) => m,
            None => meta.insert(Meta::builder().build().map_err(build_err("Meta"))?),
        };
        m.version_id = Some(v.version_id.to_owned());
        if let Some(ms) = v.last_updated_unix_ms {
            m.last_updated = Some(instant_from_unix_ms("meta.lastUpdated", ms)?);
        }
    }
    if let Some(meta) = meta {
        b = b.meta(meta);
    }
    if let Some(encounter) = r.encounter {
        b = b.encounter(encounter.to_reference("Observation.encounter")?);
    }
    if let Some(device) = r.device {
        b = b.device(device.to_reference()?);
    }
    if let Some(value) = r.value {
        b = b.value(ObservationValue::Quantity(ucum_quantity(
            "Observation.valueQuantity",
            value,
            r.unit,
            r.unit_display,
        )?));
    }
    if let Some(enumerated) = &r.value_enumerated {
        let concept = codeable_concept(
            "Observation.valueCodeableConcept",
            std::slice::from_ref(enumerated),
        )?;
        b = b.value(ObservationValue::CodeableConcept(concept));
    }
    if !r.components.is_empty() {
        let components = r
            .components
            .iter()
            .enumerate()
            .map(|(i, c)| component(i, c).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        b = b.component(components);
    }
    if let Some(note) = quality_note(&r.quality_flags)? {
        b = b.note(vec![Some(note)]);
    }

    b.build().map_err(build_err("Observation"))
}

/// The specific vital-signs profile for `loinc`, if any, after checking that
/// the record satisfies it.
fn check_specific_profile(
    loinc: &str,
    r: &VitalSignRecord<'_>,
) -> Result<Option<&'static str>, FhirError> {
    let Some((_, profile, units)) = SPECIFIC_PROFILES.iter().find(|(code, _, _)| *code == loinc)
    else {
        return Ok(None);
    };
    if loinc == BP_PANEL {
        for required in [BP_SYSTOLIC, BP_DIASTOLIC] {
            let found = r.components.iter().find(|c| {
                c.code
                    .first()
                    .is_some_and(|k| k.system == LOINC && k.code == required)
            });
            match found {
                Some(c) if c.unit == MM_HG => {}
                Some(c) => {
                    return Err(invalid(format!(
                        "blood-pressure component {required} must be in {MM_HG}, got {:?}",
                        c.unit
                    )));
                }
                None => {
                    return Err(invalid(format!(
                        "blood-pressure panel needs a component with LOINC {required} first"
                    )));
                }
            }
        }
        if r.value.is_some() {
            return Err(invalid(
                "blood-pressure panel carries its values in components, not valueQuantity",
            ));
        }
    } else {
        if r.value.is_none() {
            return Err(invalid(format!(
                "LOINC {loinc} ({profile}) needs a numeric value"
            )));
        }
        if !units.contains(&r.unit) {
            return Err(invalid(format!(
                "LOINC {loinc} ({profile}) needs a UCUM unit in {units:?}, got {:?}",
                r.unit
            )));
        }
    }
    Ok(Some(profile))
}

/// `Observation.subject`: a `Patient` reference with the MRN identifier,
/// plus `Patient/<mrn>` when the MRN is a valid FHIR id.
pub(crate) fn patient_reference(system: &str, mrn: &str) -> Result<Reference, FhirError> {
    let mut b = Reference::builder()
        .r#type("Patient".to_owned())
        .identifier(identifier("Observation.subject.identifier", system, mrn)?);
    if is_valid_id(mrn) {
        b = b.reference(format!("Patient/{mrn}"));
    }
    b.build().map_err(build_err("Reference"))
}

/// `meta` with the profiles and `source`; `None` when both are absent.
pub(crate) fn meta(
    profiles: Vec<Option<String>>,
    source: Option<&str>,
) -> Result<Option<Meta>, FhirError> {
    let source = opt_string(source);
    if let Some(source) = &source {
        require_uri("source_lineage (meta.source)", source)?;
    }
    if profiles.is_empty() && source.is_none() {
        return Ok(None);
    }
    let mut b = Meta::builder().profile(profiles);
    if let Some(source) = source {
        b = b.source(source);
    }
    b.build().map(Some).map_err(build_err("Meta"))
}

/// One `Observation.component` with a UCUM `valueQuantity`.
fn component(i: usize, c: &ObservationComponent<'_>) -> Result<FhirComponent, FhirError> {
    let field = format!("Observation.component[{i}]");
    let code: CodeableConcept = codeable_concept(&format!("{field}.code"), &c.code)?;
    let quantity = ucum_quantity(
        &format!("{field}.valueQuantity"),
        c.value,
        c.unit,
        c.unit_display,
    )?;
    FhirComponent::builder()
        .code(code)
        .value(ObservationComponentValue::Quantity(quantity))
        .build()
        .map_err(build_err("Observation.component"))
}

/// The signal-quality note, when any non-blank flag is present.
fn quality_note(flags: &[&str]) -> Result<Option<Annotation>, FhirError> {
    let flags: Vec<&str> = flags
        .iter()
        .map(|f| f.trim())
        .filter(|f| !f.is_empty())
        .collect();
    if flags.is_empty() {
        return Ok(None);
    }
    Annotation::builder()
        .text(format!("signal quality: {}", flags.join(", ")))
        .build()
        .map(Some)
        .map_err(build_err("Annotation"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{MDC, SNOMED, UCUM};

    /// 2026-11-23T19:00:00.123Z
    const T0: i64 = 1_795_460_400_123;
    const MRN_SYSTEM: &str = "urn:oid:1.2.36.146.595.217.0.1";

    fn heart_rate() -> VitalSignRecord<'static> {
        VitalSignRecord {
            id: "obs-hr-1",
            patient_system: MRN_SYSTEM,
            patient_id: "MRN-000123",
            encounter: None,
            device: Some(DeviceReference::DeviceMetric("dev-7a-12.150456")),
            code: vec![
                Coding {
                    system: LOINC,
                    code: "8867-4",
                    display: "Heart rate",
                },
                Coding {
                    system: MDC,
                    code: "147842",
                    display: "MDC_ECG_HEART_RATE",
                },
            ],
            value: Some(72.0),
            unit: "/min",
            unit_display: "beats/minute",
            components: Vec::new(),
            effective_unix_ms: T0,
            issued_unix_ms: T0 + 2_000,
            quality_flags: Vec::new(),
            value_enumerated: None,
            category: "vital-signs",
            source_lineage: Some("edge-7a/seq/12345"),
        }
    }

    fn bp_component(
        loinc: &'static str,
        mdc: &'static str,
        value: f64,
    ) -> ObservationComponent<'static> {
        ObservationComponent {
            code: vec![
                Coding {
                    system: LOINC,
                    code: loinc,
                    display: "",
                },
                Coding {
                    system: MDC,
                    code: mdc,
                    display: "",
                },
            ],
            value,
            unit: MM_HG,
            unit_display: "mmHg",
        }
    }

    fn blood_pressure() -> VitalSignRecord<'static> {
        VitalSignRecord {
            id: "obs-bp-1",
            code: vec![
                Coding {
                    system: LOINC,
                    code: BP_PANEL,
                    display: "Blood pressure panel with all children optional",
                },
                Coding {
                    system: MDC,
                    code: "150020",
                    display: "MDC_PRESS_BLD_NONINV",
                },
            ],
            value: None,
            unit: "",
            unit_display: "",
            components: vec![
                bp_component(BP_SYSTOLIC, "150021", 118.0),
                bp_component(BP_DIASTOLIC, "150022", 76.0),
            ],
            ..heart_rate()
        }
    }

    fn consciousness() -> VitalSignRecord<'static> {
        VitalSignRecord {
            id: "obs-acvpu-1",
            device: None,
            code: vec![Coding {
                system: LOINC,
                code: "67775-7",
                display: "Level of responsiveness",
            }],
            value: None,
            unit: "",
            unit_display: "",
            value_enumerated: Some(Coding {
                system: SNOMED,
                code: "248234008",
                display: "Mentally alert",
            }),
            category: "exam",
            source_lineage: None,
            ..heart_rate()
        }
    }

    fn assert_invalid(r: &VitalSignRecord<'_>, needle: &str) {
        match vital_sign_observation(r) {
            Err(FhirError::InvalidInput(msg)) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidInput containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn encounter_is_a_logical_reference_by_visit_number() {
        const VISIT_SYSTEM: &str = "urn:oid:1.2.36.146.595.217.0.2";
        let mut r = heart_rate();
        r.encounter = Some(EncounterReference {
            system: VISIT_SYSTEM,
            value: "V2026-0042",
            assigner: Some("HOSP"),
        });
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(
            json["encounter"],
            json!({
                "type": "Encounter",
                "identifier": {
                    "system": VISIT_SYSTEM,
                    "value": "V2026-0042",
                    "assigner": {"display": "HOSP"}
                }
            })
        );
        // Nothing else changes: the rest is exactly the Observation without an encounter.
        let mut without = json.clone();
        without
            .as_object_mut()
            .map(|o| o.remove("encounter"))
            .expect("an object");
        assert_eq!(
            without,
            vital_sign_observation(&heart_rate()).expect("valid")
        );
        // No assigning authority: no assigner.
        r.encounter = Some(EncounterReference {
            system: VISIT_SYSTEM,
            value: "V2026-0042",
            assigner: None,
        });
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(
            json["encounter"],
            json!({"type": "Encounter", "identifier": {"system": VISIT_SYSTEM, "value": "V2026-0042"}})
        );
        // Not known: no element at all.
        assert!(
            vital_sign_observation(&heart_rate())
                .expect("valid")
                .get("encounter")
                .is_none()
        );
        // A system that is not a URI, an empty value, an empty assigner: refused, not emitted.
        for (system, value, assigner, needle) in [
            ("not a uri", "V1", None, "encounter.identifier.system"),
            (VISIT_SYSTEM, "", None, "encounter.identifier.value"),
            (VISIT_SYSTEM, "V1", Some(""), "assigner"),
        ] {
            r.encounter = Some(EncounterReference {
                system,
                value,
                assigner,
            });
            assert_invalid(&r, needle);
        }
    }

    /// The JSON-text path (search Bundles) gives exactly the resource of the value path plus its version.
    #[test]
    fn json_text_is_the_versioned_value() {
        let v = VersionMeta {
            version_id: "1",
            last_updated_unix_ms: Some(1_795_460_402_123),
        };
        let without_time = VersionMeta {
            last_updated_unix_ms: None,
            ..v
        };
        let mut no_lineage = heart_rate();
        no_lineage.source_lineage = None;
        for r in [heart_rate(), blood_pressure(), consciousness(), no_lineage] {
            for v in [&v, &without_time] {
                let text = vital_sign_observation_json(&r, v).expect("valid record");
                assert_eq!(text.resource_type(), "Observation");
                let expected = crate::with_version(vital_sign_observation(&r).expect("valid"), v)
                    .expect("versioned");
                assert_eq!(text.to_value().expect("JSON"), expected);
                assert!(text.json().starts_with(r#"{"resourceType":"Observation""#));
            }
        }
        let bad = VersionMeta {
            version_id: "not a version",
            last_updated_unix_ms: None,
        };
        assert!(matches!(
            vital_sign_observation_json(&heart_rate(), &bad),
            Err(FhirError::InvalidInput(_))
        ));
    }

    #[test]
    fn heart_rate_observation_exact_json() {
        let json = vital_sign_observation(&heart_rate()).expect("valid record");
        let expected = json!({
            "resourceType": "Observation",
            "id": "obs-hr-1",
            "meta": {
                "profile": [VITAL_SIGNS_PROFILE, "http://hl7.org/fhir/StructureDefinition/heartrate"],
                "source": "edge-7a/seq/12345"
            },
            "status": "final",
            "category": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs"
                }],
                "text": "Vital Signs"
            }],
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
                    {"system": "urn:iso:std:iso:11073:10101", "code": "147842", "display": "MDC_ECG_HEART_RATE"}
                ],
                "text": "Heart rate"
            },
            "subject": {
                "reference": "Patient/MRN-000123",
                "type": "Patient",
                "identifier": {"system": MRN_SYSTEM, "value": "MRN-000123"}
            },
            "effectiveDateTime": "2026-11-23T19:00:00.123Z",
            "issued": "2026-11-23T19:00:02.123Z",
            "device": {"reference": "DeviceMetric/dev-7a-12.150456"},
            "valueQuantity": {
                "value": 72.0,
                "unit": "beats/minute",
                "system": "http://unitsofmeasure.org",
                "code": "/min"
            }
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn date_time_rendering() {
        let mut r = heart_rate();
        r.effective_unix_ms = T0 - 123; // whole second
        r.issued_unix_ms = T0 - 3; // 120 ms
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(json["effectiveDateTime"], "2026-11-23T19:00:00Z");
        assert_eq!(json["issued"], "2026-11-23T19:00:00.12Z");
        r.effective_unix_ms = -1; // before the epoch
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(json["effectiveDateTime"], "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn blood_pressure_panel() {
        let json = vital_sign_observation(&blood_pressure()).expect("valid record");
        assert_eq!(json["resourceType"], "Observation");
        assert_eq!(
            json["meta"]["profile"],
            json!([
                VITAL_SIGNS_PROFILE,
                "http://hl7.org/fhir/StructureDefinition/bp"
            ])
        );
        assert_eq!(
            json["code"]["coding"][0],
            json!({"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"})
        );
        assert_eq!(json["code"]["coding"][1]["system"], MDC);
        assert!(json.get("valueQuantity").is_none());
        assert_eq!(
            json["component"],
            json!([
                {
                    "code": {"coding": [{"system": LOINC, "code": "8480-6"}, {"system": MDC, "code": "150021"}]},
                    "valueQuantity": {"value": 118.0, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}
                },
                {
                    "code": {"coding": [{"system": LOINC, "code": "8462-4"}, {"system": MDC, "code": "150022"}]},
                    "valueQuantity": {"value": 76.0, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}
                }
            ])
        );
    }

    #[test]
    fn consciousness_exam_observation() {
        let json = vital_sign_observation(&consciousness()).expect("valid record");
        assert_eq!(json["category"][0]["coding"][0]["code"], "exam");
        assert_eq!(
            json["category"][0]["coding"][0]["system"],
            OBSERVATION_CATEGORY
        );
        assert!(
            json.get("meta").is_none(),
            "no vital-signs profile (nor any meta) for an exam: {json}"
        );
        assert!(json.get("valueQuantity").is_none());
        assert!(json.get("device").is_none());
        assert_eq!(
            json["valueCodeableConcept"],
            json!({"coding": [{"system": SNOMED, "code": "248234008", "display": "Mentally alert"}], "text": "Mentally alert"})
        );
        assert_eq!(json["status"], "final");
    }

    #[test]
    fn exam_with_lineage_has_meta_source_but_no_profile() {
        let mut r = consciousness();
        r.source_lineage = Some("edge-7a/seq/9");
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(json["meta"], json!({"source": "edge-7a/seq/9"}));
    }

    #[test]
    fn quality_flags_become_a_note_and_status_stays_final() {
        let mut r = heart_rate();
        r.quality_flags = vec!["artifact", " ", "probe-off"];
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(json["status"], "final");
        assert_eq!(
            json["note"],
            json!([{"text": "signal quality: artifact, probe-off"}])
        );
    }

    #[test]
    fn mrn_that_is_not_a_fhir_id_gives_identifier_only_subject() {
        let mut r = heart_rate();
        r.patient_id = "MRN 000/123";
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(
            json["subject"],
            json!({"type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": "MRN 000/123"}})
        );
    }

    #[test]
    fn unknown_loinc_gets_only_the_base_profile() {
        let mut r = heart_rate();
        r.code = vec![Coding {
            system: LOINC,
            code: "8478-0",
            display: "Mean blood pressure",
        }];
        r.unit = MM_HG;
        let json = vital_sign_observation(&r).expect("valid record");
        assert_eq!(json["meta"]["profile"], json!([VITAL_SIGNS_PROFILE]));
    }

    #[test]
    fn invalid_inputs() {
        let mut r = heart_rate();
        r.value = Some(f64::NAN);
        assert_invalid(&r, "finite");
        r.value = Some(f64::INFINITY);
        assert_invalid(&r, "finite");

        let mut r = heart_rate();
        r.id = "";
        assert_invalid(&r, "valid FHIR id");
        r.id = "obs/1";
        assert_invalid(&r, "valid FHIR id");
        r.id = "obs_1";
        assert_invalid(&r, "valid FHIR id");

        let mut r = heart_rate();
        r.device = Some(DeviceReference::DeviceMetric("dev 1"));
        assert_invalid(&r, "device id");

        let mut r = heart_rate();
        r.code.reverse();
        assert_invalid(&r, "LOINC coding first");
        r.code.clear();
        assert_invalid(&r, "at least one coding");

        let mut r = heart_rate();
        r.code[1].code = "";
        assert_invalid(&r, "valid FHIR code");

        let mut r = heart_rate();
        r.unit = "";
        assert_invalid(&r, "UCUM unit");
        r.unit = "bpm";
        assert_invalid(&r, "heartrate");

        let mut r = heart_rate();
        r.category = "vitals";
        assert_invalid(&r, "unknown observation category");

        let mut r = heart_rate();
        r.effective_unix_ms = i64::MAX;
        assert_invalid(&r, "effective_unix_ms");

        let mut r = heart_rate();
        r.patient_id = "";
        assert_invalid(&r, "subject.identifier.value");

        let mut r = heart_rate();
        r.source_lineage = Some("edge 7a");
        assert_invalid(&r, "meta.source");

        let mut r = heart_rate();
        r.value = None;
        assert_invalid(&r, "needs a value");

        let mut r = heart_rate();
        r.value_enumerated = Some(Coding {
            system: SNOMED,
            code: "1",
            display: "",
        });
        assert_invalid(&r, "mutually exclusive");
        r.value = None;
        assert_invalid(&r, "only allows valueQuantity");

        let mut r = blood_pressure();
        r.components.pop();
        assert_invalid(&r, "8462-4");
        let mut r = blood_pressure();
        r.components[0].value = f64::NAN;
        assert_invalid(&r, "component[0].valueQuantity.value");
        let mut r = blood_pressure();
        r.components[1].unit = "kPa";
        assert_invalid(&r, "mm[Hg]");
        let mut r = blood_pressure();
        r.value = Some(1.0);
        r.unit = MM_HG;
        assert_invalid(&r, "components");
    }
}
