//! NEWS2 early-warning scores as `Observation`s (category `survey`).

use fhir_sdk::DateTime;
use fhir_sdk::r4b::codes::ObservationStatus;
use fhir_sdk::r4b::resources::{
    Observation, ObservationComponent as FhirComponent, ObservationComponentValue,
    ObservationEffective, ObservationValue,
};
use fhir_sdk::r4b::types::{Annotation, CodeableConcept, Meta};

use crate::observation::patient_reference;
use crate::util::{
    build_err, codeable_concept, coding, instant_from_unix_ms, invalid, literal_reference,
    opt_string, require_id, require_uri, ser_err, single_coding_concept,
};
use crate::{Coding, FhirError, OBSERVATION_CATEGORY, SNOMED};

/// SNOMED CT concept of the NEWS2 total score (RCP 2017).
pub const NEWS2_SNOMED: &str = "1104051000000101";
/// Code system of Wardwatch's NEWS2 parameter, response and SpO2-scale codes.
pub const NEWS2_CODES: &str = "urn:wardwatch:news2";
/// Code system of `Observation.dataAbsentReason`.
const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";

/// One NEWS2 parameter: its code in [`NEWS2_CODES`] (e.g. `respiration-rate`) and a display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct News2Parameter<'a> {
    /// Code, e.g. `spo2`.
    pub code: &'a str,
    /// Display, e.g. `SpO2`.
    pub display: &'a str,
}

/// A NEWS2 score to map to a FHIR `Observation`.
#[derive(Debug, Clone, PartialEq)]
pub struct News2Record<'a> {
    /// FHIR id (`<edge>.<sequence>` of the synced score).
    pub id: &'a str,
    /// System URI of the patient's MRN identifier.
    pub patient_system: &'a str,
    /// The patient's MRN.
    pub patient_id: &'a str,
    /// Aggregate score, 0..=20: `valueInteger`.
    pub total: u32,
    /// Each scored parameter with its sub-score (0..=3): one component each.
    pub sub_scores: Vec<(News2Parameter<'a>, u32)>,
    /// Parameters that were missing or stale: a component with `dataAbsentReason` each.
    pub missing: Vec<News2Parameter<'a>>,
    /// Clinical-response level (code, display), e.g. `("medium", "Urgent response threshold (aggregate 5-6)")`.
    pub response: Option<(&'a str, &'a str)>,
    /// Whether SpO2 scale 2 (hypercapnic respiratory failure) was used.
    pub spo2_scale_2: bool,
    /// When the score was computed, Unix ms (`effectiveDateTime`).
    pub effective_unix_ms: i64,
    /// When the cloud stored it, Unix ms (`issued`).
    pub issued_unix_ms: i64,
    /// Ids of the vital-sign Observations the score used (`derivedFrom`).
    pub derived_from: Vec<String>,
    /// Lineage URI for `meta.source`.
    pub source_lineage: Option<&'a str>,
}

/// Build a NEWS2 `Observation`: `code` SNOMED CT [`NEWS2_SNOMED`], category `survey`, `valueInteger` = the
/// total, one integer component per parameter sub-score, a component for the SpO2 scale used and one for the
/// clinical-response level, `derivedFrom` the vital-sign Observations.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, a total above 20 or a sub-score above 3, an invalid
/// derived-from id or an unrepresentable time.
pub fn news2_observation(r: &News2Record<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("Observation.id", r.id)?;
    if r.total > 20 {
        return Err(invalid(format!("NEWS2 total {} is above 20", r.total)));
    }
    let mut components = Vec::new();
    for (p, score) in &r.sub_scores {
        if *score > 3 {
            return Err(invalid(format!(
                "NEWS2 sub-score {score} for {} is above 3",
                p.code
            )));
        }
        let display = format!("NEWS2 sub-score: {}", p.display);
        let code = codeable_concept(
            "Observation.component.code",
            &[Coding {
                system: NEWS2_CODES,
                code: p.code,
                display: &display,
            }],
        )?;
        components.push(Some(
            FhirComponent::builder()
                .code(code)
                .value(ObservationComponentValue::Integer(
                    i32::try_from(*score).unwrap_or(3),
                ))
                .build()
                .map_err(build_err("Observation.component"))?,
        ));
    }
    for p in &r.missing {
        if r.sub_scores.iter().any(|(s, _)| s.code == p.code) {
            continue;
        }
        let display = format!("NEWS2 sub-score: {}", p.display);
        let code = codeable_concept(
            "Observation.component.code",
            &[Coding {
                system: NEWS2_CODES,
                code: p.code,
                display: &display,
            }],
        )?;
        components.push(Some(
            FhirComponent::builder()
                .code(code)
                .data_absent_reason(single_coding_concept(
                    DATA_ABSENT_REASON,
                    "not-performed",
                    "Not Performed",
                )?)
                .build()
                .map_err(build_err("Observation.component"))?,
        ));
    }
    let (scale_code, scale_display) = if r.spo2_scale_2 {
        (
            "spo2-scale-2",
            "SpO2 scale 2 (hypercapnic respiratory failure)",
        )
    } else {
        ("spo2-scale-1", "SpO2 scale 1")
    };
    components.push(Some(
        FhirComponent::builder()
            .code(single_coding_concept(
                NEWS2_CODES,
                "spo2-scale",
                "NEWS2 SpO2 scale used",
            )?)
            .value(ObservationComponentValue::CodeableConcept(
                single_coding_concept(NEWS2_CODES, scale_code, scale_display)?,
            ))
            .build()
            .map_err(build_err("Observation.component"))?,
    ));
    if let Some((code, display)) = r.response {
        components.push(Some(
            FhirComponent::builder()
                .code(single_coding_concept(
                    NEWS2_CODES,
                    "clinical-response",
                    "NEWS2 clinical response level",
                )?)
                .value(ObservationComponentValue::CodeableConcept(
                    single_coding_concept(NEWS2_CODES, code, display)?,
                ))
                .build()
                .map_err(build_err("Observation.component"))?,
        ));
    }
    let mut derived = Vec::with_capacity(r.derived_from.len());
    for id in &r.derived_from {
        require_id("derivedFrom id", id)?;
        derived.push(Some(literal_reference("Observation", id)?));
    }
    let code = CodeableConcept::builder()
        .coding(vec![Some(coding(
            "Observation.code",
            &Coding {
                system: SNOMED,
                code: NEWS2_SNOMED,
                display: "",
            },
        )?)])
        .text("NEWS2 total score".to_owned())
        .build()
        .map_err(build_err("Observation.code"))?;
    let mut b = Observation::builder()
        .id(r.id.to_owned())
        .status(ObservationStatus::Final)
        .category(vec![Some(single_coding_concept(
            OBSERVATION_CATEGORY,
            "survey",
            "Survey",
        )?)])
        .code(code)
        .subject(patient_reference(r.patient_system, r.patient_id)?)
        .effective(ObservationEffective::DateTime(DateTime::DateTime(
            instant_from_unix_ms("effective_unix_ms", r.effective_unix_ms)?,
        )))
        .issued(instant_from_unix_ms("issued_unix_ms", r.issued_unix_ms)?)
        .value(ObservationValue::Integer(
            i32::try_from(r.total).unwrap_or(20),
        ))
        .component(components)
        .derived_from(derived)
        .note(vec![Some(
            Annotation::builder()
                .text(
                    "Calculated by Wardwatch per the RCP NEWS2 chart; Wardwatch is not a medical device and is \
                     not clinically validated."
                        .to_owned(),
                )
                .build()
                .map_err(build_err("Annotation"))?,
        )]);
    if let Some(source) = opt_string(r.source_lineage) {
        require_uri("source_lineage (meta.source)", &source)?;
        b = b.meta(
            Meta::builder()
                .source(source)
                .build()
                .map_err(build_err("Meta"))?,
        );
    }
    let obs = b.build().map_err(build_err("Observation"))?;
    serde_json::to_value(&obs).map_err(ser_err("Observation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> News2Record<'static> {
        News2Record {
            id: "edge-7a.12",
            patient_system: "urn:wardwatch:mrn",
            patient_id: "SIM000001",
            total: 6,
            sub_scores: vec![
                (
                    News2Parameter {
                        code: "respiration-rate",
                        display: "Respiration rate",
                    },
                    3,
                ),
                (
                    News2Parameter {
                        code: "pulse",
                        display: "Pulse",
                    },
                    3,
                ),
            ],
            missing: vec![News2Parameter {
                code: "temperature",
                display: "Temperature",
            }],
            response: Some(("medium", "Urgent response threshold")),
            spo2_scale_2: true,
            effective_unix_ms: 1_795_460_400_000,
            issued_unix_ms: 1_795_460_401_000,
            derived_from: vec!["edge-7a.3".into(), "edge-7a.4".into()],
            source_lineage: Some("wardwatch-edge:edge-7a/sequence/12"),
        }
    }

    #[test]
    fn total_is_the_value_and_each_sub_score_a_component() {
        let j = news2_observation(&record()).expect("valid");
        assert_eq!(j["valueInteger"], 6);
        assert_eq!(j["code"]["coding"][0]["system"], SNOMED);
        assert_eq!(j["code"]["coding"][0]["code"], NEWS2_SNOMED);
        assert_eq!(j["category"][0]["coding"][0]["code"], "survey");
        let comps = j["component"].as_array().expect("components");
        assert_eq!(comps[0]["code"]["coding"][0]["code"], "respiration-rate");
        assert_eq!(comps[0]["valueInteger"], 3);
        assert_eq!(
            comps[2]["dataAbsentReason"]["coding"][0]["code"],
            "not-performed"
        );
        assert_eq!(
            comps[3]["valueCodeableConcept"]["coding"][0]["code"],
            "spo2-scale-2"
        );
        assert_eq!(
            comps[4]["valueCodeableConcept"]["coding"][0]["code"],
            "medium"
        );
        assert_eq!(j["derivedFrom"][1]["reference"], "Observation/edge-7a.4");
        assert_eq!(j["subject"]["identifier"]["value"], "SIM000001");
    }

    #[test]
    fn impossible_scores_are_refused() {
        let mut r = record();
        r.total = 21;
        assert!(news2_observation(&r).is_err());
        let mut r = record();
        r.sub_scores[0].1 = 4;
        assert!(news2_observation(&r).is_err());
        let mut r = record();
        r.derived_from = vec!["bad id".into()];
        assert!(news2_observation(&r).is_err());
    }
}
