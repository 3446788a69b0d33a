//! # wardwatch-fhir
//!
//! The only crate in Wardwatch that knows FHIR JSON. It maps plain Wardwatch
//! records to HL7 FHIR R4 resources (built with `fhir-sdk`'s typed R4B models
//! and builders, which are wire-compatible with R4 for the resources used
//! here) and returns them as [`serde_json::Value`].
//!
//! The public API is deliberately non-generic: plain functions taking plain
//! borrowed structs, so that the (large) serde code of `fhir-sdk` is
//! monomorphised once, in this crate.
//!
//! Resources produced:
//! * [`vital_sign_observation`]: an `Observation` conforming to the FHIR R4
//!   vital-signs profile (or a plain `Observation` for other categories such
//!   as `exam`).
//! * [`device`]: a `Device` (the MDS of a device's containment tree) and [`device_component`] (its VMDs and
//!   channels, linked by `Device.parent`); [`containment`] is the table of which metric belongs to which VMD
//!   and channel, with the MDC device-type codes.
//! * [`searchset_bundle`]: a `Bundle` of type `searchset` ([`searchset_bundle_with`]: plus `_include`d
//!   resources and a warning `OperationOutcome`).
//! * [`with_version`] (`meta.versionId`/`lastUpdated`) and [`history_bundle`]: versions and `_history`.
//! * [`operation_outcome`]: an `OperationOutcome` (infallible).
//! * [`audit_event`]: an `AuditEvent` (who read or searched which patients' data, or asked for a token).
//! * Issue 6 device mapping: [`news2_observation`] (NEWS2 as a `survey` Observation), [`risk_assessment`] and
//!   [`model_provenance`] (model predictions), [`alarm_detected_issue`] (alarms as DetectedIssue),
//!   [`infusion_observation`] and [`medication_administration`] (infusions), [`device_metric`] and
//!   [`location`] (Point-of-Care Device shape), [`capability_statement`] (`/metadata`).
//! * Topic-based subscriptions (R4 Subscriptions Backport): [`parse_subscription`], [`subscription`],
//!   [`subscription_status`] (`Parameters`), [`notification_bundle`], [`subscription_topic`].
//!
//! Date-times are rendered by `fhir-sdk` as RFC 3339 in UTC with a `Z` suffix
//! and the fractional seconds trimmed of trailing zeros, e.g.
//! `2026-11-23T19:00:00.123Z`, `2026-11-23T19:00:00.12Z` (120 ms) or
//! `2026-11-23T19:00:00Z` (0 ms). All of these are valid FHIR `dateTime` and
//! `instant` values.

#![warn(missing_docs)]

mod alarm;
mod audit;
mod bundle;
mod capability;
pub mod containment;
mod device;
mod history;
mod infusion;
mod news2;
mod observation;
mod outcome;
mod pocd;
mod risk;
mod subscription;
mod util;

pub use alarm::{
    ALARM_KIND_SYSTEM, ALARM_PRIORITY_EXT, ALARM_STATE_EXT, ALARM_STATE_SYSTEM, AlarmChange,
    AlarmRecord, alarm_detected_issue,
};
pub use audit::{AuditAction, AuditEventRecord, audit_event};
pub use bundle::{
    SearchPage, SerializedResource, searchset_bundle, searchset_bundle_text, searchset_bundle_with,
};
pub use capability::{
    CapabilityRecord, CapabilityResource, CapabilitySearchParam, capability_statement,
};
pub use device::{DeviceComponentRecord, DeviceRecord, device, device_component};
pub use history::{HistoryPage, VersionMeta, history_bundle, with_version};
pub use infusion::{
    InfusionObservationRecord, MedicationAdministrationRecord, ORDER_SYSTEM, infusion_observation,
    medication_administration,
};
pub use news2::{NEWS2_CODES, NEWS2_SNOMED, News2Parameter, News2Record, news2_observation};
pub use observation::{
    ObservationComponent, VitalSignRecord, vital_sign_observation, vital_sign_observation_json,
};
pub use outcome::{IssueCode, IssueSeverity, operation_outcome};
pub use pocd::{DeviceMetricRecord, LocationRecord, device_metric, location};
pub use risk::{
    MODEL_LABEL, MODEL_SHA256_SYSTEM, MODEL_SYSTEM, ModelProvenanceRecord, RiskAssessmentRecord,
    model_provenance, risk_assessment,
};
pub use subscription::{
    NotificationBundle, NotificationEntry, NotificationEventRecord, SubscriptionRecord,
    SubscriptionRequest, SubscriptionStatusRecord, TopicFilter, TopicRecord, notification_bundle,
    parse_subscription, subscription, subscription_status, subscription_topic,
};

/// LOINC code system URI.
pub const LOINC: &str = "http://loinc.org";
/// ISO/IEEE 11073-10101 nomenclature (MDC) code system URI.
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// UCUM (units of measure) code system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// SNOMED CT code system URI.
pub const SNOMED: &str = "http://snomed.info/sct";
/// Code system of `Observation.category`.
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// Code system of `Device.statusReason`.
pub const DEVICE_STATUS_REASON: &str = "http://terminology.hl7.org/CodeSystem/device-status-reason";

/// Canonical URL of the base FHIR R4 vital-signs profile.
pub const VITAL_SIGNS_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// Errors produced while building FHIR resources.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// `fhir-sdk` failed to build or serialize a resource (a bug in this
    /// crate rather than bad input).
    #[error("failed to build FHIR resource: {0}")]
    Build(String),
    /// The input record cannot be represented as a valid FHIR resource.
    #[error("invalid input for FHIR resource: {0}")]
    InvalidInput(String),
}

/// What an `Observation.device` points at: the measuring `DeviceMetric` (the Point-of-Care Device shape) or a
/// `Device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceReference<'a> {
    /// `{"reference": "Device/<id>"}`.
    Device(&'a str),
    /// `{"reference": "DeviceMetric/<id>"}`.
    DeviceMetric(&'a str),
}

impl DeviceReference<'_> {
    /// The literal reference, after checking the id.
    pub(crate) fn to_reference(self) -> Result<fhir_sdk::r4b::types::Reference, FhirError> {
        let (t, id) = match self {
            Self::Device(id) => ("Device", id),
            Self::DeviceMetric(id) => ("DeviceMetric", id),
        };
        util::require_id("device id", id)?;
        util::literal_reference(t, id)
    }
}

/// The encounter (visit) an Observation or MedicationAdministration belongs to, as a logical reference by its visit-number identifier:
/// `{"type": "Encounter", "identifier": {"system", "value", "assigner": {"display"}}}`. Wardwatch serves no
/// Encounter resources (edges know a visit only by the number the hospital's admission system gave it), so there
/// is no literal `Encounter/<id>` to point at; an EHR resolves the identifier against its own Encounters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncounterReference<'a> {
    /// Identifier system of visit numbers (configured per hospital, like the MRN system).
    pub system: &'a str,
    /// The visit number (HL7 v2 PV1-19 CX.1).
    pub value: &'a str,
    /// Who issued the visit number (HL7 v2 CX.4 assigning authority), when the source named one: rendered as
    /// `identifier.assigner.display`, so a reader can tell numbering schemes apart.
    pub assigner: Option<&'a str>,
}

impl EncounterReference<'_> {
    /// The logical reference, after checking the system URI and the value.
    /// `element` names the referencing element in errors (`Observation.encounter`, `MedicationAdministration.context`).
    pub(crate) fn to_reference(
        self,
        element: &str,
    ) -> Result<fhir_sdk::r4b::types::Reference, FhirError> {
        util::require_uri(&format!("{element}.identifier.system"), self.system)?;
        util::require_string(&format!("{element}.identifier.value"), self.value)?;
        let mut b = fhir_sdk::r4b::types::Identifier::builder()
            .system(self.system.to_owned())
            .value(self.value.to_owned());
        if let Some(assigner) = self.assigner {
            util::require_string(&format!("{element}.identifier.assigner.display"), assigner)?;
            b = b.assigner(
                fhir_sdk::r4b::types::Reference::builder()
                    .display(assigner.to_owned())
                    .build()
                    .map_err(util::build_err("Reference"))?,
            );
        }
        let identifier = b.build().map_err(util::build_err("Identifier"))?;
        fhir_sdk::r4b::types::Reference::builder()
            .r#type("Encounter".to_owned())
            .identifier(identifier)
            .build()
            .map_err(util::build_err("Reference"))
    }
}

/// One coding (`system` + `code` + human `display`) of a FHIR
/// `CodeableConcept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coding<'a> {
    /// Code system URI, e.g. [`LOINC`] or [`MDC`].
    pub system: &'a str,
    /// Code within the system, e.g. `8867-4`.
    pub code: &'a str,
    /// Human-readable display; omitted from the JSON when empty.
    pub display: &'a str,
}
