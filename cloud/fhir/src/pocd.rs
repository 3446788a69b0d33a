//! Point-of-Care Device shape: `DeviceMetric` (one per metric a device reports) and `Location` (wards and
//! beds).

use fhir_sdk::r4b::codes::{
    DeviceMetricCategory, DeviceMetricOperationalStatus, LocationMode, LocationStatus,
};
use fhir_sdk::r4b::resources::{DeviceMetric, Location};
use fhir_sdk::r4b::types::Meta;

use crate::util::{
    build_err, codeable_concept, identifier, instant_from_unix_ms, literal_reference, require_id,
    require_string, ser_err, single_coding_concept,
};
use crate::{Coding, FhirError, UCUM};

/// One metric (channel) of a device, to map to a `DeviceMetric`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMetricRecord<'a> {
    /// FHIR id, `<device_id>.<mdc code>`.
    pub id: &'a str,
    /// `type` codings: the MDC (or Wardwatch-private) coding, then LOINC when there is one.
    pub type_codes: Vec<Coding<'a>>,
    /// UCUM unit code, if the metric has a unit.
    pub unit: Option<&'a str>,
    /// The device (`source`): the MDS of the containment tree.
    pub device_id: &'a str,
    /// The channel `Device` the metric belongs to (`parent`), see [`crate::containment`].
    pub parent_id: Option<&'a str>,
    /// `on`, `off`, `standby` or `None` (unknown).
    pub operational_status: Option<&'a str>,
    /// Last time the metric was seen, Unix ms (`meta.lastUpdated`).
    pub last_seen_unix_ms: i64,
}

/// Build a `DeviceMetric` with category `measurement`.
///
/// # Errors
/// [`FhirError::InvalidInput`] for invalid ids or codes or an unrepresentable time.
pub fn device_metric(r: &DeviceMetricRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("DeviceMetric.id", r.id)?;
    require_id("device_id", r.device_id)?;
    let mut b = DeviceMetric::builder()
        .id(r.id.to_owned())
        .meta(
            Meta::builder()
                .last_updated(instant_from_unix_ms(
                    "last_seen_unix_ms",
                    r.last_seen_unix_ms,
                )?)
                .build()
                .map_err(build_err("Meta"))?,
        )
        .r#type(codeable_concept("DeviceMetric.type", &r.type_codes)?)
        .source(literal_reference("Device", r.device_id)?)
        .category(DeviceMetricCategory::Measurement);
    if let Some(parent) = r.parent_id {
        require_id("DeviceMetric.parent id", parent)?;
        b = b.parent(literal_reference("Device", parent)?);
    }
    if let Some(unit) = r.unit.filter(|u| !u.is_empty()) {
        b = b.unit(single_coding_concept(UCUM, unit, unit)?);
    }
    let status = match r.operational_status {
        Some("on") => Some(DeviceMetricOperationalStatus::On),
        Some("off") => Some(DeviceMetricOperationalStatus::Off),
        Some("standby") => Some(DeviceMetricOperationalStatus::Standby),
        _ => None,
    };
    if let Some(s) = status {
        b = b.operational_status(s);
    }
    let m = b.build().map_err(build_err("DeviceMetric"))?;
    serde_json::to_value(&m).map_err(ser_err("DeviceMetric"))
}

/// A ward or a bed, to map to a `Location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationRecord<'a> {
    /// FHIR id: `<ward>` for a ward, `<ward>.<bed>` for a bed.
    pub id: &'a str,
    /// Ward name.
    pub ward: &'a str,
    /// Bed name; `None` for the ward itself.
    pub bed: Option<&'a str>,
    /// Identifier system of locations.
    pub identifier_system: &'a str,
}

/// Build a `Location`: `mode` instance, `physicalType` ward (`wa`) or bed (`bd`), a bed `partOf` its ward.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id or an empty ward.
pub fn location(r: &LocationRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("Location.id", r.id)?;
    require_string("ward", r.ward)?;
    let physical = |code: &str, display: &str| {
        single_coding_concept(
            "http://terminology.hl7.org/CodeSystem/location-physical-type",
            code,
            display,
        )
    };
    let mut b = Location::builder()
        .id(r.id.to_owned())
        .status(LocationStatus::Active)
        .mode(LocationMode::Instance);
    match r.bed.filter(|b| !b.is_empty()) {
        Some(bed) => {
            require_id("ward id", r.ward)?;
            b = b
                .identifier(vec![Some(identifier(
                    "Location.identifier",
                    r.identifier_system,
                    &format!("{}/{bed}", r.ward),
                )?)])
                .name(format!("Ward {}, bed {bed}", r.ward))
                .physical_type(physical("bd", "Bed")?)
                .part_of(literal_reference("Location", r.ward)?);
        }
        None => {
            b = b
                .identifier(vec![Some(identifier(
                    "Location.identifier",
                    r.identifier_system,
                    r.ward,
                )?)])
                .name(format!("Ward {}", r.ward))
                .physical_type(physical("wa", "Ward")?);
        }
    }
    let l = b.build().map_err(build_err("Location"))?;
    serde_json::to_value(&l).map_err(ser_err("Location"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MDC;

    #[test]
    fn device_metric_has_type_unit_source_and_status() {
        let j = device_metric(&DeviceMetricRecord {
            id: "mon-7A-1.150456",
            type_codes: vec![Coding {
                system: MDC,
                code: "150456",
                display: "MDC_PULS_OXIM_SAT_O2",
            }],
            unit: Some("%"),
            device_id: "mon-7A-1",
            parent_id: Some("mon-7A-1.chan-spo2"),
            operational_status: Some("on"),
            last_seen_unix_ms: 1_795_460_400_000,
        })
        .expect("valid");
        assert_eq!(j["source"]["reference"], "Device/mon-7A-1");
        assert_eq!(j["parent"]["reference"], "Device/mon-7A-1.chan-spo2");
        assert_eq!(j["unit"]["coding"][0]["code"], "%");
        assert_eq!(j["operationalStatus"], "on");
        assert_eq!(j["category"], "measurement");
    }

    #[test]
    fn beds_are_part_of_their_ward() {
        let j = location(&LocationRecord {
            id: "7A.12",
            ward: "7A",
            bed: Some("12"),
            identifier_system: "urn:wardwatch:location",
        })
        .expect("valid");
        assert_eq!(j["partOf"]["reference"], "Location/7A");
        assert_eq!(j["physicalType"]["coding"][0]["code"], "bd");
        let w = location(&LocationRecord {
            id: "7A",
            ward: "7A",
            bed: None,
            identifier_system: "urn:wardwatch:location",
        })
        .expect("valid");
        assert_eq!(w["physicalType"]["coding"][0]["code"], "wa");
        assert!(w.get("partOf").is_none());
    }
}
