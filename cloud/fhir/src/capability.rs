//! The server's `CapabilityStatement` (`GET [base]/metadata`).

use fhir_sdk::DateTime;
use fhir_sdk::r4b::codes::{
    CapabilityStatementKind, FHIRVersion, PublicationStatus, ResourceType, ResourceVersionPolicy,
    RestfulCapabilityMode, SearchParamType,
};
use fhir_sdk::r4b::resources::{
    CapabilityStatement, CapabilityStatementImplementation, CapabilityStatementRest,
    CapabilityStatementRestResource, CapabilityStatementRestResourceInteraction,
    CapabilityStatementRestResourceOperation, CapabilityStatementRestResourceSearchParam,
    CapabilityStatementRestSecurity, CapabilityStatementSoftware,
};
use fhir_sdk::r4b::types::{Extension, ExtensionValue};

use crate::FhirError;
use crate::util::{
    build_err, instant_from_unix_ms, invalid, require_uri, ser_err, single_coding_concept,
};

/// One search parameter a resource type supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilitySearchParam<'a> {
    /// Name, e.g. `patient`.
    pub name: &'a str,
    /// FHIR search parameter type: `token`, `reference`, `date`, `string`, `number`, `uri`, `special`.
    pub kind: &'a str,
    /// What it does here.
    pub documentation: &'a str,
}

/// One resource type the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityResource<'a> {
    /// Resource type name.
    pub resource_type: &'a str,
    /// Interaction codes: `read`, `search-type`.
    pub interactions: Vec<&'a str>,
    /// Search parameters (empty when only read is served).
    pub search_params: Vec<CapabilitySearchParam<'a>>,
    /// Profiles the server produces for this type.
    pub supported_profiles: Vec<&'a str>,
    /// Operations on this type: (name without `$`, canonical URL of its OperationDefinition).
    pub operations: Vec<(&'a str, &'a str)>,
    /// Notes.
    pub documentation: &'a str,
    /// Whether `meta.versionId` is maintained and `vread` / `_history` are served (`versioning` `versioned`,
    /// `readHistory` true); `false` writes neither.
    pub versioned: bool,
    /// `_include` values served on searches of this type, e.g. `Observation:device`.
    pub search_include: Vec<&'a str>,
}

/// What the server can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityRecord<'a> {
    /// The FHIR base URL.
    pub base_url: &'a str,
    /// Software version.
    pub software_version: &'a str,
    /// `date`, Unix ms (when the server started).
    pub date_unix_ms: i64,
    /// The SMART token endpoint (absolute URL).
    pub token_endpoint: &'a str,
    /// Served resource types.
    pub resources: Vec<CapabilityResource<'a>>,
}

/// Build the server's `CapabilityStatement` (kind `instance`, FHIR 4.0.1, JSON only) with the SMART
/// `oauth-uris` security extension pointing at the token endpoint.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an unknown resource type or search parameter type, or an invalid URL.
pub fn capability_statement(r: &CapabilityRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_uri("base_url", r.base_url)?;
    require_uri("token_endpoint", r.token_endpoint)?;
    let mut resources = Vec::with_capacity(r.resources.len());
    for res in &r.resources {
        let rt: ResourceType = res
            .resource_type
            .parse()
            .ok()
            .filter(|t: &ResourceType| !matches!(t, ResourceType::_Custom(_)))
            .ok_or_else(|| invalid(format!("unknown resource type {:?}", res.resource_type)))?;
        let interactions = res
            .interactions
            .iter()
            .map(|i| {
                CapabilityStatementRestResourceInteraction::builder()
                    .code((*i).to_owned())
                    .build()
                    .map(Some)
                    .map_err(build_err("interaction"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = Vec::with_capacity(res.search_params.len());
        for p in &res.search_params {
            let kind: SearchParamType = p
                .kind
                .parse()
                .map_err(|_| invalid(format!("unknown search parameter type {:?}", p.kind)))?;
            params.push(Some(
                CapabilityStatementRestResourceSearchParam::builder()
                    .name(p.name.to_owned())
                    .r#type(kind)
                    .documentation(p.documentation.to_owned())
                    .build()
                    .map_err(build_err("searchParam"))?,
            ));
        }
        let mut b = CapabilityStatementRestResource::builder()
            .r#type(rt)
            .interaction(interactions)
            .search_param(params)
            .supported_profile(
                res.supported_profiles
                    .iter()
                    .map(|p| Some((*p).to_owned()))
                    .collect(),
            );
        if !res.documentation.is_empty() {
            b = b.documentation(res.documentation.to_owned());
        }
        if res.versioned {
            b = b
                .versioning(ResourceVersionPolicy::Versioned)
                .read_history(true);
        }
        if !res.search_include.is_empty() {
            b = b.search_include(
                res.search_include
                    .iter()
                    .map(|i| Some((*i).to_owned()))
                    .collect(),
            );
        }
        let mut ops = Vec::with_capacity(res.operations.len());
        for (name, definition) in &res.operations {
            require_uri("operation definition", definition)?;
            ops.push(Some(
                CapabilityStatementRestResourceOperation::builder()
                    .name((*name).to_owned())
                    .definition((*definition).to_owned())
                    .build()
                    .map_err(build_err("rest.resource.operation"))?,
            ));
        }
        b = b.operation(ops);
        resources.push(Some(b.build().map_err(build_err("rest.resource"))?));
    }
    let oauth = Extension::builder()
        .url("http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris".to_owned())
        .extension(vec![
            Extension::builder()
                .url("token".to_owned())
                .value(ExtensionValue::Uri(r.token_endpoint.to_owned()))
                .build()
                .map_err(build_err("Extension"))?,
        ])
        .build()
        .map_err(build_err("Extension"))?;
    let security = CapabilityStatementRestSecurity::builder()
        .extension(vec![oauth])
        .service(vec![Some(single_coding_concept(
            "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "SMART-on-FHIR",
            "SMART-on-FHIR",
        )?)])
        .description(
            "SMART Backend Services (client_credentials with private_key_jwt, RS384 or ES384); SMART v2 \
             system/ scopes per resource type; every read and search is audited."
                .to_owned(),
        )
        .build()
        .map_err(build_err("rest.security"))?;
    let rest = CapabilityStatementRest::builder()
        .mode(RestfulCapabilityMode::Server)
        .security(security)
        .resource(resources)
        .build()
        .map_err(build_err("rest"))?;
    let cs = CapabilityStatement::builder()
        .status(PublicationStatus::Active)
        .date(DateTime::DateTime(instant_from_unix_ms(
            "date_unix_ms",
            r.date_unix_ms,
        )?))
        .kind(CapabilityStatementKind::Instance)
        .name("WardwatchCloud".to_owned())
        .title("Wardwatch cloud FHIR server".to_owned())
        .experimental(true)
        .description(
            "Device data from Wardwatch edges (simulated wards): not a medical device, not clinically validated."
                .to_owned(),
        )
        .software(
            CapabilityStatementSoftware::builder()
                .name("Wardwatch".to_owned())
                .version(r.software_version.to_owned())
                .build()
                .map_err(build_err("software"))?,
        )
        .implementation(
            CapabilityStatementImplementation::builder()
                .description("Wardwatch cloud".to_owned())
                .url(r.base_url.to_owned())
                .build()
                .map_err(build_err("implementation"))?,
        )
        .fhir_version(FHIRVersion::N401)
        .format(vec![Some("json".to_owned()), Some("application/fhir+json".to_owned())])
        .rest(vec![Some(rest)])
        .build()
        .map_err(build_err("CapabilityStatement"))?;
    let mut json = serde_json::to_value(&cs).map_err(ser_err("CapabilityStatement"))?;
    // fhir-sdk's R4B models write 4.3.0-era enumerations; this server speaks R4 (4.0.1).
    if let Some(obj) = json.as_object_mut() {
        obj.insert("fhirVersion".to_owned(), serde_json::Value::from("4.0.1"));
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_what_is_given_and_points_at_the_token_endpoint() {
        let j = capability_statement(&CapabilityRecord {
            base_url: "https://localhost:8443/fhir",
            software_version: "0.1.0",
            date_unix_ms: 1_795_460_400_000,
            token_endpoint: "https://localhost:8443/fhir/auth/token",
            resources: vec![CapabilityResource {
                resource_type: "Observation",
                interactions: vec!["read", "search-type"],
                search_params: vec![CapabilitySearchParam {
                    name: "patient",
                    kind: "reference",
                    documentation: "MRN",
                }],
                supported_profiles: vec!["http://hl7.org/fhir/StructureDefinition/vitalsigns"],
                operations: vec![],
                documentation: "",
                versioned: true,
                search_include: vec!["Observation:device"],
            }],
        })
        .expect("valid");
        assert_eq!(j["rest"][0]["resource"][0]["versioning"], "versioned");
        assert_eq!(j["rest"][0]["resource"][0]["readHistory"], true);
        assert_eq!(
            j["rest"][0]["resource"][0]["searchInclude"],
            serde_json::json!(["Observation:device"])
        );
        assert_eq!(j["fhirVersion"], "4.0.1");
        let rest = &j["rest"][0];
        assert_eq!(rest["resource"].as_array().map(Vec::len), Some(1));
        assert_eq!(rest["resource"][0]["searchParam"][0]["type"], "reference");
        assert_eq!(
            rest["security"]["extension"][0]["extension"][0]["valueUri"],
            "https://localhost:8443/fhir/auth/token"
        );
        let bad = capability_statement(&CapabilityRecord {
            base_url: "https://x/fhir",
            software_version: "0",
            date_unix_ms: 0,
            token_endpoint: "https://x/fhir/auth/token",
            resources: vec![CapabilityResource {
                resource_type: "NotAType",
                interactions: vec![],
                search_params: vec![],
                supported_profiles: vec![],
                operations: vec![],
                documentation: "",
                versioned: false,
                search_include: vec![],
            }],
        });
        assert!(bad.is_err());
    }
}
