//! `AuditEvent` resources: who read or searched which patients' data, and who asked for an access token.
//!
//! The shape follows the FHIR R4 AuditEvent guidance for RESTful access (type `rest` with the
//! `restful-interaction` subtype) and the DICOM "User Authentication" event for token requests, so that a
//! generic audit viewer can read it without knowing Wardwatch.

use fhir_sdk::Base64Binary;
use fhir_sdk::r4b::codes::{AuditEventAction, AuditEventAgentNetworkType, AuditEventOutcome};
use fhir_sdk::r4b::resources::{
    AuditEvent, AuditEventAgent, AuditEventAgentNetwork, AuditEventEntity, AuditEventSource,
};
use fhir_sdk::r4b::types::{Coding as FhirCoding, Reference};

use crate::util::{
    build_err, coding, identifier, instant_from_unix_ms, invalid, is_valid_id, opt_string,
    require_id, require_string, ser_err, single_coding_concept,
};
use crate::{Coding, FhirError};

/// Code system of `AuditEvent.type` for RESTful operations.
pub const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// Code system of RESTful interactions (`AuditEvent.subtype`).
pub const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
/// DICOM code system (authentication events, agent types).
pub const DICOM_DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Code system of `AuditEvent.entity.type`.
pub const AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// Code system of `AuditEvent.entity.role`.
pub const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// Code system of `AuditEvent.source.type`.
pub const SECURITY_SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

/// What the audited request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A read of one resource (`GET [base]/Type/id`): action `R`, subtype `read`.
    Read,
    /// A search (`GET [base]/Type?…`): action `E`, subtype `search-type`.
    Search,
    /// A request for an access token at the token endpoint: DICOM `110114` "User Authentication", subtype
    /// `110122` "Login", action `E`.
    Authenticate,
}

/// One audited request, to map to a FHIR `AuditEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEventRecord<'a> {
    /// FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
    pub id: &'a str,
    /// When it happened (`AuditEvent.recorded`), Unix milliseconds.
    pub recorded_unix_ms: i64,
    /// What the request did.
    pub action: AuditAction,
    /// The HTTP status answered; `AuditEvent.outcome` is `0` for 2xx/3xx, `4` for 4xx, `8` for 5xx.
    pub http_status: u16,
    /// Extra words for `AuditEvent.outcomeDesc` (after `HTTP <status>`), e.g. an OAuth error code.
    pub outcome_detail: Option<&'a str>,
    /// System URI of API client identifiers (the agent's `who.identifier.system`).
    pub client_system: &'a str,
    /// The API client, if it was identified; `None` becomes an agent named "unidentified client".
    pub client_id: Option<&'a str>,
    /// The client's network address (IP), if known: `agent.network` with type `2` (IP address).
    pub client_address: Option<&'a str>,
    /// Name of the system that recorded the event (`source.observer.display`).
    pub observer: &'a str,
    /// The resource type read or searched (`entity.description` of the query or read entity).
    pub resource_type: Option<&'a str>,
    /// For a read: the id asked for; becomes `entity.what.reference` `<resource_type>/<id>` when it is a
    /// valid FHIR id, else the entity's `name`.
    pub read_id: Option<&'a str>,
    /// For a search or a token request: the query text (search parameters, or requested scopes); becomes
    /// `entity.query` (base64 of the UTF-8 text).
    pub query: Option<&'a str>,
    /// System URI of patient identifiers (MRNs).
    pub patient_system: &'a str,
    /// Patients whose data was returned, by identifier; one `entity` each (type Person, role Patient).
    pub patients: Vec<&'a str>,
}

/// Build a FHIR R4 `AuditEvent`. See [`AuditEventRecord`] for where each field goes.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, an unrepresentable time, an HTTP status outside
/// 100..=599, an empty observer, client system or patient identifier; [`FhirError::Build`] if `fhir-sdk`
/// fails (not expected).
pub fn audit_event(r: &AuditEventRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("AuditEvent.id", r.id)?;
    require_string("observer", r.observer)?;
    if !(100..=599).contains(&r.http_status) {
        return Err(invalid(format!(
            "http_status {} is not an HTTP status",
            r.http_status
        )));
    }
    let (event_type, subtype, action) = match r.action {
        AuditAction::Read => (
            (AUDIT_EVENT_TYPE, "rest", "RESTful Operation"),
            (RESTFUL_INTERACTION, "read", "read"),
            AuditEventAction::R,
        ),
        AuditAction::Search => (
            (AUDIT_EVENT_TYPE, "rest", "RESTful Operation"),
            (RESTFUL_INTERACTION, "search-type", "search type"),
            AuditEventAction::E,
        ),
        AuditAction::Authenticate => (
            (DICOM_DCM, "110114", "User Authentication"),
            (DICOM_DCM, "110122", "Login"),
            AuditEventAction::E,
        ),
    };
    let outcome = match r.http_status {
        100..=399 => AuditEventOutcome::N0,
        400..=499 => AuditEventOutcome::N4,
        _ => AuditEventOutcome::N8,
    };
    let outcome_desc = match opt_string(r.outcome_detail) {
        Some(d) => format!("HTTP {}: {d}", r.http_status),
        None => format!("HTTP {}", r.http_status),
    };

    let mut agent = AuditEventAgent::builder()
        .r#type(single_coding_concept(DICOM_DCM, "110150", "Application")?)
        .requestor(true);
    agent = match opt_string(r.client_id) {
        Some(client) => {
            let who = Reference::builder()
                .identifier(identifier(
                    "agent.who.identifier",
                    r.client_system,
                    &client,
                )?)
                .display(client)
                .build()
                .map_err(build_err("AuditEvent.agent.who"))?;
            agent.who(who)
        }
        None => agent.name("unidentified client".to_owned()),
    };
    if let Some(address) = opt_string(r.client_address) {
        let network = AuditEventAgentNetwork::builder()
            .address(address)
            .r#type(AuditEventAgentNetworkType::N2)
            .build()
            .map_err(build_err("AuditEvent.agent.network"))?;
        agent = agent.network(network);
    }
    let agent = agent.build().map_err(build_err("AuditEvent.agent"))?;

    let observer = Reference::builder()
        .display(r.observer.to_owned())
        .build()
        .map_err(build_err("AuditEvent.source.observer"))?;
    let source = AuditEventSource::builder()
        .observer(observer)
        .r#type(vec![Some(coding(
            "AuditEvent.source.type",
            &Coding {
                system: SECURITY_SOURCE_TYPE,
                code: "4",
                display: "Application Server",
            },
        )?)])
        .build()
        .map_err(build_err("AuditEvent.source"))?;

    let mut entities = Vec::new();
    if let Some(query) = r.query.filter(|q| !q.is_empty()) {
        let mut e = AuditEventEntity::builder()
            .r#type(entity_coding("2", "System Object", AUDIT_ENTITY_TYPE)?)
            .role(entity_coding("24", "Query", OBJECT_ROLE)?)
            .query(Base64Binary(query.as_bytes().to_vec()));
        if let Some(t) = opt_string(r.resource_type) {
            e = e.description(t);
        }
        entities.push(Some(e.build().map_err(build_err("AuditEvent.entity"))?));
    }
    if let Some(id) = opt_string(r.read_id) {
        let mut e = AuditEventEntity::builder()
            .r#type(entity_coding("2", "System Object", AUDIT_ENTITY_TYPE)?)
            .role(entity_coding("4", "Domain Resource", OBJECT_ROLE)?);
        match opt_string(r.resource_type) {
            Some(t) if is_valid_id(&id) && t.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                let what = Reference::builder()
                    .reference(format!("{t}/{id}"))
                    .build()
                    .map_err(build_err("AuditEvent.entity.what"))?;
                e = e.what(what);
            }
            _ => e = e.name(id),
        }
        entities.push(Some(e.build().map_err(build_err("AuditEvent.entity"))?));
    }
    for (i, patient) in r.patients.iter().enumerate() {
        let what = Reference::builder()
            .identifier(identifier(
                &format!("patients[{i}]"),
                r.patient_system,
                patient,
            )?)
            .build()
            .map_err(build_err("AuditEvent.entity.what"))?;
        let e = AuditEventEntity::builder()
            .what(what)
            .r#type(entity_coding("1", "Person", AUDIT_ENTITY_TYPE)?)
            .role(entity_coding("1", "Patient", OBJECT_ROLE)?)
            .build()
            .map_err(build_err("AuditEvent.entity"))?;
        entities.push(Some(e));
    }

    let mut b = AuditEvent::builder()
        .id(r.id.to_owned())
        .r#type(entity_coding(event_type.1, event_type.2, event_type.0)?)
        .subtype(vec![Some(entity_coding(subtype.1, subtype.2, subtype.0)?)])
        .action(action)
        .recorded(instant_from_unix_ms(
            "recorded_unix_ms",
            r.recorded_unix_ms,
        )?)
        .outcome(outcome)
        .outcome_desc(outcome_desc)
        .agent(vec![Some(agent)])
        .source(source);
    if !entities.is_empty() {
        b = b.entity(entities);
    }
    let event = b.build().map_err(build_err("AuditEvent"))?;
    serde_json::to_value(&event).map_err(ser_err("AuditEvent"))
}

/// A typed `Coding` from constant parts.
fn entity_coding(code: &str, display: &str, system: &str) -> Result<FhirCoding, FhirError> {
    coding(
        "AuditEvent coding",
        &Coding {
            system,
            code,
            display,
        },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2026-11-23T19:00:00.123Z
    const T0: i64 = 1_795_460_400_123;

    fn search() -> AuditEventRecord<'static> {
        AuditEventRecord {
            id: "17",
            recorded_unix_ms: T0,
            action: AuditAction::Search,
            http_status: 200,
            outcome_detail: None,
            client_system: "urn:wardwatch:api-client",
            client_id: Some("ehr-1"),
            client_address: Some("127.0.0.1"),
            observer: "Wardwatch cloud",
            resource_type: Some("Observation"),
            read_id: None,
            query: Some("patient=SIM000001"),
            patient_system: "urn:wardwatch:mrn",
            patients: vec!["SIM000001"],
        }
    }

    #[test]
    fn a_search_names_the_client_the_query_and_each_patient() {
        let v = audit_event(&search()).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["id"], "17");
        assert_eq!(v["type"]["code"], "rest");
        assert_eq!(v["subtype"][0]["code"], "search-type");
        assert_eq!(v["action"], "E");
        assert_eq!(v["outcome"], "0");
        assert_eq!(v["recorded"], "2026-11-23T19:00:00.123Z");
        assert_eq!(
            v["agent"][0]["who"]["identifier"],
            json!({"system": "urn:wardwatch:api-client", "value": "ehr-1"})
        );
        assert_eq!(v["agent"][0]["requestor"], true);
        assert_eq!(
            v["agent"][0]["network"],
            json!({"address": "127.0.0.1", "type": "2"})
        );
        assert_eq!(v["source"]["observer"]["display"], "Wardwatch cloud");
        // base64("patient=SIM000001")
        assert_eq!(v["entity"][0]["query"], "cGF0aWVudD1TSU0wMDAwMDE=");
        assert_eq!(v["entity"][0]["role"]["code"], "24");
        assert_eq!(
            v["entity"][1]["what"]["identifier"],
            json!({"system": "urn:wardwatch:mrn", "value": "SIM000001"})
        );
        assert_eq!(v["entity"][1]["role"]["code"], "1");
    }

    #[test]
    fn reads_refusals_and_token_requests_map_to_their_codes() {
        let mut r = search();
        r.action = AuditAction::Read;
        r.query = None;
        r.read_id = Some("edge-7a.42");
        r.http_status = 404;
        let v = audit_event(&r).unwrap();
        assert_eq!(
            (v["action"].as_str(), v["outcome"].as_str()),
            (Some("R"), Some("4"))
        );
        assert_eq!(
            v["entity"][0]["what"]["reference"],
            "Observation/edge-7a.42"
        );

        r.read_id = Some("not an id");
        let v = audit_event(&r).unwrap();
        assert_eq!(v["entity"][0]["name"], "not an id");

        let mut t = search();
        t.action = AuditAction::Authenticate;
        t.client_id = None;
        t.http_status = 401;
        t.outcome_detail = Some("invalid_client");
        t.patients.clear();
        let v = audit_event(&t).unwrap();
        assert_eq!(v["type"]["code"], "110114");
        assert_eq!(v["subtype"][0]["code"], "110122");
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["outcomeDesc"], "HTTP 401: invalid_client");
        assert_eq!(v["agent"][0]["name"], "unidentified client");
        assert!(v["agent"][0].get("who").is_none());

        t.http_status = 503;
        assert_eq!(audit_event(&t).unwrap()["outcome"], "8");
    }

    #[test]
    fn bad_input_is_refused() {
        let mut r = search();
        r.id = "a/b";
        assert!(matches!(audit_event(&r), Err(FhirError::InvalidInput(_))));
        let mut r = search();
        r.http_status = 42;
        assert!(matches!(audit_event(&r), Err(FhirError::InvalidInput(_))));
        let mut r = search();
        r.patients = vec![" "];
        assert!(matches!(audit_event(&r), Err(FhirError::InvalidInput(_))));
    }
}
