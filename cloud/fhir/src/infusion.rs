//! Infusion telemetry: `Observation`s (measured rate, volume infused, volume remaining) and one
//! `MedicationAdministration` per medication order.

use fhir_sdk::DateTime;
use fhir_sdk::r4b::codes::ObservationStatus;
use fhir_sdk::r4b::resources::{
    MedicationAdministration, MedicationAdministrationDosage, MedicationAdministrationDosageRate,
    MedicationAdministrationEffective, MedicationAdministrationMedication, Observation,
    ObservationEffective, ObservationValue,
};
use fhir_sdk::r4b::types::{Annotation, CodeableConcept, Meta, Period, Reference};

use crate::observation::patient_reference;
use crate::util::{
    build_err, codeable_concept, identifier, instant_from_unix_ms, invalid, literal_reference,
    opt_string, require_id, require_string, require_uri, ser_err, single_coding_concept,
    ucum_quantity,
};
use crate::{Coding, DeviceReference, EncounterReference, FhirError, OBSERVATION_CATEGORY};

/// Identifier system of medication orders (the order ids edges report).
pub const ORDER_SYSTEM: &str = "urn:wardwatch:order";

/// One infusion metric of one status report, to map to an `Observation` (category `therapy`).
#[derive(Debug, Clone, PartialEq)]
pub struct InfusionObservationRecord<'a> {
    /// FHIR id, `<edge>.<sequence>.<rate|infused|remaining>`.
    pub id: &'a str,
    /// System URI of MRNs.
    pub patient_system: &'a str,
    /// Patient MRN.
    pub patient_id: &'a str,
    /// The encounter (visit) of the report, when the source knew it: `Observation.encounter`, a logical
    /// reference by visit number, as for vital signs.
    pub encounter: Option<EncounterReference<'a>>,
    /// What measured it (`device`): the pump's or drip monitor's `DeviceMetric` for this measurement.
    pub device: DeviceReference<'a>,
    /// `code` codings (the MDC coding).
    pub code: Vec<Coding<'a>>,
    /// The value.
    pub value: f64,
    /// UCUM unit (`mL/h`, `mL`).
    pub unit: &'a str,
    /// The medication order (`basedOn` by identifier).
    pub order_id: &'a str,
    /// The MedicationAdministration this belongs to (`partOf`), when its id is valid.
    pub administration_id: Option<&'a str>,
    /// When measured, Unix ms.
    pub effective_unix_ms: i64,
    /// When stored, Unix ms.
    pub issued_unix_ms: i64,
    /// Lineage URI for `meta.source`.
    pub source_lineage: Option<&'a str>,
}

/// Build an infusion `Observation`.
///
/// # Errors
/// [`FhirError::InvalidInput`] for invalid ids, codes or units, a non-finite value or an unrepresentable time.
pub fn infusion_observation(
    r: &InfusionObservationRecord<'_>,
) -> Result<serde_json::Value, FhirError> {
    require_id("Observation.id", r.id)?;
    let mut b = Observation::builder()
        .id(r.id.to_owned())
        .status(ObservationStatus::Final)
        .category(vec![Some(single_coding_concept(
            OBSERVATION_CATEGORY,
            "therapy",
            "Therapy",
        )?)])
        .code(codeable_concept("Observation.code", &r.code)?)
        .subject(patient_reference(r.patient_system, r.patient_id)?)
        .effective(ObservationEffective::DateTime(DateTime::DateTime(
            instant_from_unix_ms("effective_unix_ms", r.effective_unix_ms)?,
        )))
        .issued(instant_from_unix_ms("issued_unix_ms", r.issued_unix_ms)?)
        .device(r.device.to_reference()?)
        .value(ObservationValue::Quantity(ucum_quantity(
            "Observation.valueQuantity",
            r.value,
            r.unit,
            r.unit,
        )?));
    if let Some(encounter) = r.encounter {
        b = b.encounter(encounter.to_reference("Observation.encounter")?);
    }
    if let Some(order) = opt_string(Some(r.order_id)) {
        b = b.based_on(vec![Some(order_reference(&order)?)]);
    }
    if let Some(admin) = r.administration_id {
        require_id("administration id", admin)?;
        b = b.part_of(vec![Some(literal_reference(
            "MedicationAdministration",
            admin,
        )?)]);
    }
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

fn order_reference(order_id: &str) -> Result<Reference, FhirError> {
    Reference::builder()
        .r#type("MedicationRequest".to_owned())
        .identifier(identifier("order identifier", ORDER_SYSTEM, order_id)?)
        .build()
        .map_err(build_err("Reference"))
}

/// The administration of one medication order, as the latest infusion status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MedicationAdministrationRecord<'a> {
    /// FHIR id (from the order id).
    pub id: &'a str,
    /// The order id (`request` by identifier and `identifier`).
    pub order_id: &'a str,
    /// System URI of MRNs.
    pub patient_system: &'a str,
    /// Patient MRN.
    pub patient_id: &'a str,
    /// Medication as free text from the order (`medicationCodeableConcept.text`).
    pub medication: &'a str,
    /// `in-progress`, `on-hold`, `completed` or `stopped`.
    pub status: &'a str,
    /// The pump's or drip monitor's own state (e.g. `occluded`), noted.
    pub device_state: &'a str,
    /// First status report, Unix ms (`effectivePeriod.start`).
    pub started_unix_ms: i64,
    /// Completion time, Unix ms (`effectivePeriod.end`), when completed.
    pub ended_unix_ms: Option<i64>,
    /// Latest report, Unix ms (`meta.lastUpdated`).
    pub last_updated_unix_ms: i64,
    /// Number of status reports so far (`meta.versionId`).
    pub version: u64,
    /// The pump or drip monitor (`device`).
    pub device_id: Option<&'a str>,
    /// Prescribed rate in mL/h (`dosage.rateQuantity`), if known.
    pub prescribed_rate_ml_h: Option<f64>,
    /// The latest infusion Observations (`supportingInformation`).
    pub supporting: Vec<String>,
    /// The encounter (visit) of the latest report, when the source knew it (`context`, a logical reference by
    /// visit number, as on the infusion's Observations).
    pub context: Option<EncounterReference<'a>>,
}

/// Build a `MedicationAdministration`.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id or status, an empty medication or order id, or an
/// unrepresentable time.
pub fn medication_administration(
    r: &MedicationAdministrationRecord<'_>,
) -> Result<serde_json::Value, FhirError> {
    require_id("MedicationAdministration.id", r.id)?;
    require_string("order_id", r.order_id)?;
    if !["in-progress", "on-hold", "completed", "stopped"].contains(&r.status) {
        return Err(invalid(format!(
            "MedicationAdministration.status {:?} is not one Wardwatch uses",
            r.status
        )));
    }
    let medication = CodeableConcept::builder()
        .text(
            opt_string(Some(r.medication))
                .unwrap_or_else(|| "Medication named in the order".to_owned()),
        )
        .build()
        .map_err(build_err("medicationCodeableConcept"))?;
    let mut period = Period::builder().start(DateTime::DateTime(instant_from_unix_ms(
        "started_unix_ms",
        r.started_unix_ms,
    )?));
    if let Some(end) = r.ended_unix_ms {
        period = period.end(DateTime::DateTime(instant_from_unix_ms(
            "ended_unix_ms",
            end,
        )?));
    }
    let meta = Meta::builder()
        .version_id(r.version.max(1).to_string())
        .last_updated(instant_from_unix_ms(
            "last_updated_unix_ms",
            r.last_updated_unix_ms,
        )?)
        .build()
        .map_err(build_err("Meta"))?;
    let mut b = MedicationAdministration::builder()
        .id(r.id.to_owned())
        .meta(meta)
        .identifier(vec![Some(identifier(
            "MedicationAdministration.identifier",
            ORDER_SYSTEM,
            r.order_id,
        )?)])
        .status(r.status.to_owned())
        .medication(MedicationAdministrationMedication::CodeableConcept(
            medication,
        ))
        .subject(patient_reference(r.patient_system, r.patient_id)?)
        .effective(MedicationAdministrationEffective::Period(
            period.build().map_err(build_err("Period"))?,
        ))
        .request(order_reference(r.order_id)?);
    if let Some(encounter) = r.context {
        b = b.context(encounter.to_reference("MedicationAdministration.context")?);
    }
    if let Some(d) = r.device_id.filter(|d| !d.is_empty()) {
        require_id("device_id", d)?;
        b = b.device(vec![Some(literal_reference("Device", d)?)]);
    }
    let mut supporting = Vec::new();
    for id in &r.supporting {
        require_id("supporting id", id)?;
        supporting.push(Some(literal_reference("Observation", id)?));
    }
    b = b.supporting_information(supporting);
    if let Some(rate) = r.prescribed_rate_ml_h.filter(|r| *r > 0.0) {
        let dosage = MedicationAdministrationDosage::builder()
            .rate(MedicationAdministrationDosageRate::Quantity(ucum_quantity(
                "dosage.rateQuantity",
                rate,
                "mL/h",
                "mL/h",
            )?))
            .build()
            .map_err(build_err("MedicationAdministration.dosage"))?;
        b = b.dosage(dosage);
    }
    if let Some(state) = opt_string(Some(r.device_state)) {
        b = b.note(vec![Some(
            Annotation::builder()
                .text(format!("infusion device state: {state}"))
                .build()
                .map_err(build_err("Annotation"))?,
        )]);
    }
    let ma = b.build().map_err(build_err("MedicationAdministration"))?;
    serde_json::to_value(&ma).map_err(ser_err("MedicationAdministration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MDC;

    #[test]
    fn rate_observation_links_order_and_administration() {
        let r = InfusionObservationRecord {
            id: "edge-7a.9.rate",
            patient_system: "urn:wardwatch:mrn",
            patient_id: "SIM000004",
            encounter: None,
            device: DeviceReference::DeviceMetric("drip-7A-4.157784"),
            code: vec![Coding {
                system: MDC,
                code: "157784",
                display: "MDC_FLOW_FLUID_PUMP",
            }],
            value: 125.0,
            unit: "mL/h",
            order_id: "ORD-4",
            administration_id: Some("ORD-4"),
            effective_unix_ms: 1_795_460_400_000,
            issued_unix_ms: 1_795_460_401_000,
            source_lineage: None,
        };
        let j = infusion_observation(&r).expect("valid");
        assert_eq!(j["valueQuantity"]["code"], "mL/h");
        assert_eq!(j["basedOn"][0]["identifier"]["value"], "ORD-4");
        assert_eq!(
            j["partOf"][0]["reference"],
            "MedicationAdministration/ORD-4"
        );
        assert_eq!(j["category"][0]["coding"][0]["code"], "therapy");
        assert!(j.get("encounter").is_none(), "not known: no element");
        let mut visit = r.clone();
        visit.encounter = Some(EncounterReference {
            system: "urn:wardwatch:visit-number",
            value: "SIM000004-V1",
            assigner: None,
        });
        assert_eq!(
            infusion_observation(&visit).expect("valid")["encounter"],
            serde_json::json!({"type": "Encounter", "identifier": {"system": "urn:wardwatch:visit-number", "value": "SIM000004-V1"}})
        );
        let mut bad = r.clone();
        bad.value = f64::INFINITY;
        assert!(infusion_observation(&bad).is_err());
    }

    #[test]
    fn administration_status_and_period() {
        let r = MedicationAdministrationRecord {
            id: "ORD-4",
            order_id: "ORD-4",
            patient_system: "urn:wardwatch:mrn",
            patient_id: "SIM000004",
            medication: "Sodium chloride 0.9% 1000 mL",
            status: "completed",
            device_state: "completed",
            started_unix_ms: 1_795_460_400_000,
            ended_unix_ms: Some(1_795_464_000_000),
            last_updated_unix_ms: 1_795_464_000_000,
            version: 7,
            device_id: Some("drip-7A-4"),
            prescribed_rate_ml_h: Some(125.0),
            supporting: vec!["edge-7a.9.rate".into()],
            context: None,
        };
        let j = medication_administration(&r).expect("valid");
        assert!(j.get("context").is_none(), "no encounter known: no context");
        assert_eq!(j["status"], "completed");
        assert_eq!(j["effectivePeriod"]["end"], "2026-11-23T20:00:00Z");
        assert_eq!(j["request"]["identifier"]["value"], "ORD-4");
        assert_eq!(j["dosage"]["rateQuantity"]["value"], 125.0);
        assert_eq!(j["meta"]["versionId"], "7");
        let mut bad = r.clone();
        bad.status = "running";
        assert!(medication_administration(&bad).is_err());
    }

    #[test]
    fn administration_context_is_the_encounter_by_visit_number() {
        let r = MedicationAdministrationRecord {
            id: "ORD-5",
            order_id: "ORD-5",
            patient_system: "urn:wardwatch:mrn",
            patient_id: "SIM000005",
            medication: "",
            status: "in-progress",
            device_state: "running",
            started_unix_ms: 1_795_460_400_000,
            ended_unix_ms: None,
            last_updated_unix_ms: 1_795_460_460_000,
            version: 2,
            device_id: None,
            prescribed_rate_ml_h: None,
            supporting: Vec::new(),
            context: Some(EncounterReference {
                system: "urn:wardwatch:visit-number",
                value: "SIM000005-V1",
                assigner: Some("WARDWATCH-SIM"),
            }),
        };
        let j = medication_administration(&r).expect("valid");
        assert_eq!(
            j["context"],
            serde_json::json!({
                "type": "Encounter",
                "identifier": {
                    "system": "urn:wardwatch:visit-number",
                    "value": "SIM000005-V1",
                    "assigner": {"display": "WARDWATCH-SIM"}
                }
            })
        );
        // A bad visit system is refused, naming the element.
        let mut bad = r.clone();
        bad.context = Some(EncounterReference {
            system: "not a uri",
            value: "V1",
            assigner: None,
        });
        let err = medication_administration(&bad).expect_err("bad system");
        assert!(
            err.to_string().contains("MedicationAdministration.context"),
            "{err}"
        );
    }
}
