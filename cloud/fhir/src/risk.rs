//! Model predictions as `RiskAssessment` plus a `Provenance` naming the model.

use fhir_sdk::DateTime;
use fhir_sdk::r4b::codes::{ObservationStatus, ProvenanceEntityRole};
use fhir_sdk::r4b::resources::{
    Provenance, ProvenanceAgent, ProvenanceEntity, ProvenanceOccurred, RiskAssessment,
    RiskAssessmentOccurrence, RiskAssessmentPrediction, RiskAssessmentPredictionProbability,
};
use fhir_sdk::r4b::types::{Annotation, CodeableConcept, Identifier, Meta, Reference};

use crate::FhirError;
use crate::observation::patient_reference;
use crate::util::{
    build_err, instant_from_unix_ms, invalid, literal_reference, opt_string, require_id,
    require_string, require_uri, ser_err, single_coding_concept,
};

/// Identifier system of models (`<name>` with the version in `display`).
pub const MODEL_SYSTEM: &str = "urn:wardwatch:model";
/// Identifier system of a model file's SHA-256 (hex).
pub const MODEL_SHA256_SYSTEM: &str = "urn:wardwatch:model-sha256";
/// The label every model-derived resource carries.
pub const MODEL_LABEL: &str = "simulated-data model, not clinically validated";

/// A model prediction to map to a FHIR `RiskAssessment`.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskAssessmentRecord<'a> {
    /// FHIR id (`<edge>.<sequence>` of the synced score).
    pub id: &'a str,
    /// System URI of the patient's MRN identifier.
    pub patient_system: &'a str,
    /// The patient's MRN.
    pub patient_id: &'a str,
    /// When the prediction was made, Unix ms (`occurrenceDateTime`).
    pub occurrence_unix_ms: i64,
    /// When the cloud stored it, Unix ms (`meta.lastUpdated`).
    pub stored_unix_ms: i64,
    /// Probability of `outcome`, 0..=1.
    pub probability: f64,
    /// What is predicted, e.g. `deterioration within 12 h` (`prediction.outcome.text`).
    pub outcome: &'a str,
    /// Model name (`method`).
    pub model_name: &'a str,
    /// Model version.
    pub model_version: &'a str,
    /// The input window, Unix ms, if known (noted as the rationale).
    pub window: Option<(i64, i64)>,
    /// Ids of the Observations the prediction used (`basis`).
    pub basis: Vec<String>,
    /// Lineage URI for `meta.source`.
    pub source_lineage: Option<&'a str>,
}

/// Build a `RiskAssessment`: `status` final, `method` the model, one `prediction` with
/// `probabilityDecimal` and the outcome, `basis` the Observations used, and a note with [`MODEL_LABEL`].
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, a probability outside 0..=1, an empty outcome or model
/// name, an invalid basis id or an unrepresentable time.
pub fn risk_assessment(r: &RiskAssessmentRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("RiskAssessment.id", r.id)?;
    if !(0.0..=1.0).contains(&r.probability) {
        return Err(invalid(format!(
            "probability {} is not within 0..=1",
            r.probability
        )));
    }
    require_string("outcome", r.outcome)?;
    require_string("model_name", r.model_name)?;
    let outcome = CodeableConcept::builder()
        .text(r.outcome.to_owned())
        .build()
        .map_err(build_err("prediction.outcome"))?;
    let mut prediction = RiskAssessmentPrediction::builder()
        .outcome(outcome)
        .probability(RiskAssessmentPredictionProbability::Decimal(r.probability));
    if let Some((from, to)) = r.window {
        let f = instant_from_unix_ms("window start", from)?;
        let t = instant_from_unix_ms("window end", to)?;
        prediction = prediction.rationale(format!(
            "Input window {} to {} (UTC, Unix ms {from}..{to}).",
            f.0, t.0
        ));
    }
    let prediction = prediction
        .build()
        .map_err(build_err("RiskAssessment.prediction"))?;
    let method = CodeableConcept::builder()
        .coding(vec![Some(
            fhir_sdk::r4b::types::Coding::builder()
                .system(MODEL_SYSTEM.to_owned())
                .code(model_code(r.model_name)?)
                .display(format!("{} {}", r.model_name, r.model_version))
                .build()
                .map_err(build_err("RiskAssessment.method"))?,
        )])
        .text(format!(
            "Wardwatch edge model {} version {} ({MODEL_LABEL})",
            r.model_name, r.model_version
        ))
        .build()
        .map_err(build_err("RiskAssessment.method"))?;
    let mut basis = Vec::with_capacity(r.basis.len());
    for id in &r.basis {
        require_id("basis id", id)?;
        basis.push(Some(literal_reference("Observation", id)?));
    }
    let mut meta =
        Meta::builder().last_updated(instant_from_unix_ms("stored_unix_ms", r.stored_unix_ms)?);
    if let Some(source) = opt_string(r.source_lineage) {
        require_uri("source_lineage (meta.source)", &source)?;
        meta = meta.source(source);
    }
    let ra = RiskAssessment::builder()
        .id(r.id.to_owned())
        .meta(meta.build().map_err(build_err("Meta"))?)
        .status(ObservationStatus::Final)
        .method(method)
        .subject(patient_reference(r.patient_system, r.patient_id)?)
        .occurrence(RiskAssessmentOccurrence::DateTime(DateTime::DateTime(
            instant_from_unix_ms("occurrence_unix_ms", r.occurrence_unix_ms)?,
        )))
        .basis(basis)
        .prediction(vec![Some(prediction)])
        .note(vec![Some(
            Annotation::builder()
                .text(format!(
                    "Predicted by {} {} ({MODEL_LABEL}). Not for clinical decisions.",
                    r.model_name, r.model_version
                ))
                .build()
                .map_err(build_err("Annotation"))?,
        )])
        .build()
        .map_err(build_err("RiskAssessment"))?;
    serde_json::to_value(&ra).map_err(ser_err("RiskAssessment"))
}

/// A model name as a FHIR code: whitespace runs become `-`.
fn model_code(name: &str) -> Result<String, FhirError> {
    let code = name.split_whitespace().collect::<Vec<_>>().join("-");
    if code.is_empty() {
        return Err(invalid("model name is empty"));
    }
    Ok(code)
}

/// Where a derived resource came from: the model that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProvenanceRecord<'a> {
    /// FHIR id (the same `<edge>.<sequence>` as its target).
    pub id: &'a str,
    /// The target, e.g. `RiskAssessment/edge-7a.12`: (type, id).
    pub target: (&'a str, &'a str),
    /// When the prediction was made, Unix ms (`occurredDateTime`).
    pub occurred_unix_ms: i64,
    /// When the cloud stored it, Unix ms (`recorded`).
    pub recorded_unix_ms: i64,
    /// Model name.
    pub model_name: &'a str,
    /// Model version.
    pub model_version: &'a str,
    /// SHA-256 of the exact model file, hex.
    pub model_sha256: &'a str,
    /// The edge that ran the model.
    pub edge_id: &'a str,
    /// Observations the model read (entities with role `source`).
    pub inputs: Vec<String>,
}

/// Build a `Provenance` for a model-derived resource: the model as the `assembler` agent identified by name
/// and version with its file's SHA-256 as a second agent identifier-bearing entity, the edge as the `custodian`
/// agent, and each input Observation as a `source` entity.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, an empty model name or version, a hash that is not 64 hex
/// digits, or an unrepresentable time.
pub fn model_provenance(r: &ModelProvenanceRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("Provenance.id", r.id)?;
    require_id("Provenance.target id", r.target.1)?;
    require_string("model_name", r.model_name)?;
    require_string("model_version", r.model_version)?;
    if r.model_sha256.len() != 64 || !r.model_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "model_sha256 {:?} is not 64 hex digits",
            r.model_sha256
        )));
    }
    require_string("edge_id", r.edge_id)?;
    let participant = |code: &str, display: &str| {
        single_coding_concept(
            "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            code,
            display,
        )
    };
    let model_ref = Reference::builder()
        .identifier(
            Identifier::builder()
                .system(MODEL_SHA256_SYSTEM.to_owned())
                .value(r.model_sha256.to_ascii_lowercase())
                .build()
                .map_err(build_err("Identifier"))?,
        )
        .display(format!(
            "model {} version {} sha256 {} ({MODEL_LABEL})",
            r.model_name,
            r.model_version,
            r.model_sha256.to_ascii_lowercase()
        ))
        .build()
        .map_err(build_err("Reference"))?;
    let model_agent = ProvenanceAgent::builder()
        .r#type(participant("assembler", "Assembler")?)
        .who(model_ref)
        .build()
        .map_err(build_err("Provenance.agent"))?;
    let edge_agent = ProvenanceAgent::builder()
        .r#type(participant("custodian", "Custodian")?)
        .who(
            Reference::builder()
                .identifier(
                    Identifier::builder()
                        .system("urn:wardwatch:edge".to_owned())
                        .value(r.edge_id.to_owned())
                        .build()
                        .map_err(build_err("Identifier"))?,
                )
                .display(format!("Wardwatch edge {}", r.edge_id))
                .build()
                .map_err(build_err("Reference"))?,
        )
        .build()
        .map_err(build_err("Provenance.agent"))?;
    let mut entities = Vec::with_capacity(r.inputs.len());
    for id in &r.inputs {
        require_id("input id", id)?;
        entities.push(Some(
            ProvenanceEntity::builder()
                .role(ProvenanceEntityRole::Source)
                .what(literal_reference("Observation", id)?)
                .build()
                .map_err(build_err("Provenance.entity"))?,
        ));
    }
    let p = Provenance::builder()
        .id(r.id.to_owned())
        .target(vec![Some(literal_reference(r.target.0, r.target.1)?)])
        .occurred(ProvenanceOccurred::DateTime(DateTime::DateTime(
            instant_from_unix_ms("occurred_unix_ms", r.occurred_unix_ms)?,
        )))
        .recorded(instant_from_unix_ms(
            "recorded_unix_ms",
            r.recorded_unix_ms,
        )?)
        .activity(single_coding_concept(
            "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "CREATE",
            "create",
        )?)
        .agent(vec![Some(model_agent), Some(edge_agent)])
        .entity(entities)
        .build()
        .map_err(build_err("Provenance"))?;
    serde_json::to_value(&p).map_err(ser_err("Provenance"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn ra() -> RiskAssessmentRecord<'static> {
        RiskAssessmentRecord {
            id: "edge-7a.40",
            patient_system: "urn:wardwatch:mrn",
            patient_id: "SIM000002",
            occurrence_unix_ms: 1_795_460_400_000,
            stored_unix_ms: 1_795_460_401_000,
            probability: 0.42,
            outcome: "deterioration within 12 h",
            model_name: "deterioration",
            model_version: "1.0.0",
            window: Some((1_795_456_800_000, 1_795_460_400_000)),
            basis: vec!["edge-7a.3".into()],
            source_lineage: None,
        }
    }

    #[test]
    fn risk_assessment_carries_probability_outcome_basis_and_label() {
        let j = risk_assessment(&ra()).expect("valid");
        assert_eq!(j["prediction"][0]["probabilityDecimal"], 0.42);
        assert_eq!(
            j["prediction"][0]["outcome"]["text"],
            "deterioration within 12 h"
        );
        assert_eq!(j["basis"][0]["reference"], "Observation/edge-7a.3");
        assert!(
            j["note"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains(MODEL_LABEL))
        );
        let mut bad = ra();
        bad.probability = 1.5;
        assert!(risk_assessment(&bad).is_err());
        bad.probability = f64::NAN;
        assert!(risk_assessment(&bad).is_err());
    }

    #[test]
    fn provenance_names_model_version_and_hash() {
        let rec = ModelProvenanceRecord {
            id: "edge-7a.40",
            target: ("RiskAssessment", "edge-7a.40"),
            occurred_unix_ms: 1_795_460_400_000,
            recorded_unix_ms: 1_795_460_401_000,
            model_name: "deterioration",
            model_version: "1.0.0",
            model_sha256: SHA,
            edge_id: "edge-7a",
            inputs: vec!["edge-7a.3".into()],
        };
        let j = model_provenance(&rec).expect("valid");
        assert_eq!(j["target"][0]["reference"], "RiskAssessment/edge-7a.40");
        assert_eq!(j["agent"][0]["who"]["identifier"]["value"], SHA);
        let display = j["agent"][0]["who"]["display"].as_str().unwrap_or("");
        assert!(display.contains("deterioration") && display.contains("1.0.0"));
        assert!(display.contains(MODEL_LABEL));
        assert_eq!(j["entity"][0]["role"], "source");
        let mut bad = rec.clone();
        bad.model_sha256 = "abc";
        assert!(model_provenance(&bad).is_err());
    }
}
