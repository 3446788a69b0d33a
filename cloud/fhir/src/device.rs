//! `Device` resources.

use fhir_sdk::r4b::codes::FHIRDeviceStatus;
use fhir_sdk::r4b::resources::{Device, DeviceUdiCarrier};
use fhir_sdk::r4b::types::{Annotation, CodeableConcept, Meta, Reference};

use crate::util::{
    build_err, coding, identifier, instant_from_unix_ms, invalid, literal_reference, opt_string,
    require_id, require_string, ser_err, single_coding_concept,
};
use crate::{Coding, DEVICE_STATUS_REASON, FhirError, MDC};

/// A medical device (bedside monitor, drip-rate monitor, infusion pump, …)
/// to map to a FHIR `Device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord<'a> {
    /// FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
    pub id: &'a str,
    /// System URI of the device's business identifier.
    pub identifier_system: &'a str,
    /// The device's business identifier.
    pub identifier_value: &'a str,
    /// Kind of device, e.g. `Multi-parameter bedside monitor`; becomes
    /// `Device.type.text`.
    pub kind_display: &'a str,
    /// MDC device-type code and its reference id (the coding's display) when known, e.g.
    /// `(69965, "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS")`; becomes a `Device.type` coding in the [`MDC`] system.
    pub kind_mdc: Option<(u32, &'a str)>,
    /// `Device.manufacturer`.
    pub manufacturer: Option<&'a str>,
    /// `Device.modelNumber`.
    pub model: Option<&'a str>,
    /// `Device.serialNumber`.
    pub serial: Option<&'a str>,
    /// UDI in human-readable form; becomes `Device.udiCarrier[0].carrierHRF`.
    pub udi: Option<&'a str>,
    /// Where the device is, e.g. `Ward 7A, bed 12`; becomes
    /// `Device.location.display`.
    pub location_display: Option<&'a str>,
    /// FHIR id of the bed's (or ward's) `Location`; adds `Device.location.reference`.
    pub location_id: Option<&'a str>,
    /// `Device.status`: `active`, `inactive`, `entered-in-error` or `unknown`.
    pub status: &'a str,
    /// Free-text operational state such as `on`, `off`, `not-ready`. Always
    /// recorded as a `Device.note` with the text `operational status: <text>`;
    /// when the text is exactly a code of
    /// `http://terminology.hl7.org/CodeSystem/device-status-reason`
    /// (`online`, `paused`, `standby`, `offline`, `not-ready`,
    /// `transduc-discon`, `hw-discon`, `off`) it is also coded in
    /// `Device.statusReason`.
    pub operational_display: Option<&'a str>,
    /// `Device.meta.lastUpdated`, Unix milliseconds.
    pub last_updated_unix_ms: i64,
}

/// Codes and displays of the device-status-reason code system.
const STATUS_REASONS: &[(&str, &str)] = &[
    ("online", "Online"),
    ("paused", "Paused"),
    ("standby", "Standby"),
    ("offline", "Offline"),
    ("not-ready", "Not Ready"),
    ("transduc-discon", "Transducer Disconnected"),
    ("hw-discon", "Hardware Disconnected"),
    ("off", "Off"),
];

/// `Device.status` from its code.
fn device_status(code: &str) -> Result<FHIRDeviceStatus, FhirError> {
    code.parse().map_err(|_| {
        invalid(format!(
            "Device.status {code:?} is not one of active, inactive, entered-in-error, unknown"
        ))
    })
}

/// `meta` with only `lastUpdated` (every Device shape: MDS, VMD, channel).
fn last_updated_meta(unix_ms: i64) -> Result<Meta, FhirError> {
    Meta::builder()
        .last_updated(instant_from_unix_ms("last_updated_unix_ms", unix_ms)?)
        .build()
        .map_err(build_err("Meta"))
}

/// Build a FHIR R4 `Device`. See [`DeviceRecord`] for where each field goes.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id, an unknown status, an empty
/// identifier or kind, or an unrepresentable `last_updated_unix_ms`;
/// [`FhirError::Build`] if `fhir-sdk` fails (not expected).
pub fn device(r: &DeviceRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("Device.id", r.id)?;
    let status = device_status(r.status)?;
    require_string("kind_display", r.kind_display)?;

    let mut kind = CodeableConcept::builder().text(r.kind_display.to_owned());
    if let Some((mdc, reference_id)) = r.kind_mdc {
        let code = mdc.to_string();
        kind = kind.coding(vec![Some(coding(
            "Device.type",
            &Coding {
                system: MDC,
                code: &code,
                display: reference_id,
            },
        )?)]);
    }
    let kind = kind.build().map_err(build_err("Device.type"))?;
    let meta = last_updated_meta(r.last_updated_unix_ms)?;

    let mut b = Device::builder()
        .id(r.id.to_owned())
        .meta(meta)
        .identifier(vec![Some(identifier(
            "Device.identifier",
            r.identifier_system,
            r.identifier_value,
        )?)])
        .status(status)
        .r#type(kind);

    if let Some(manufacturer) = opt_string(r.manufacturer) {
        b = b.manufacturer(manufacturer);
    }
    if let Some(model) = opt_string(r.model) {
        b = b.model_number(model);
    }
    if let Some(serial) = opt_string(r.serial) {
        b = b.serial_number(serial);
    }
    if let Some(udi) = opt_string(r.udi) {
        let carrier = DeviceUdiCarrier::builder()
            .carrier_hrf(udi)
            .build()
            .map_err(build_err("Device.udiCarrier"))?;
        b = b.udi_carrier(vec![Some(carrier)]);
    }
    if let Some(location) = opt_string(r.location_display) {
        let mut reference = Reference::builder().display(location);
        if let Some(id) = r.location_id {
            require_id("Device.location id", id)?;
            reference = reference.reference(format!("Location/{id}"));
        }
        let reference = reference.build().map_err(build_err("Device.location"))?;
        b = b.location(reference);
    }
    if let Some(operational) = opt_string(r.operational_display) {
        let operational = operational.trim();
        if let Some((code, display)) = STATUS_REASONS.iter().find(|(code, _)| *code == operational)
        {
            b = b.status_reason(vec![Some(single_coding_concept(
                DEVICE_STATUS_REASON,
                code,
                display,
            )?)]);
        }
        let note = Annotation::builder()
            .text(format!("operational status: {operational}"))
            .build()
            .map_err(build_err("Device.note"))?;
        b = b.note(vec![Some(note)]);
    }

    let device = b.build().map_err(build_err("Device"))?;
    serde_json::to_value(&device).map_err(ser_err("Device"))
}

/// A VMD or channel of a device's containment tree ([`crate::containment`]), to map to a FHIR `Device` with
/// `parent`. It has no patient, location, manufacturer or identifiers of its own (the PoCD IG's channel profile
/// prohibits patient and location; they are the MDS's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceComponentRecord<'a> {
    /// FHIR logical id.
    pub id: &'a str,
    /// MDC device-type coding, when one is known (`Device.type.coding`).
    pub type_code: Option<Coding<'a>>,
    /// `Device.type.text`, e.g. `Pulse oximetry`.
    pub type_text: &'a str,
    /// FHIR id of the parent `Device` (the MDS for a VMD, the VMD for a channel).
    pub parent_id: &'a str,
    /// `Device.status`: `active`, `inactive`, `entered-in-error` or `unknown`.
    pub status: &'a str,
    /// `Device.meta.lastUpdated`, Unix milliseconds.
    pub last_updated_unix_ms: i64,
}

/// Build the `Device` of a VMD or channel. See [`DeviceComponentRecord`].
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid id or parent id, an unknown status, an empty type text or an
/// unrepresentable time; [`FhirError::Build`] if `fhir-sdk` fails (not expected).
pub fn device_component(r: &DeviceComponentRecord<'_>) -> Result<serde_json::Value, FhirError> {
    require_id("Device.id", r.id)?;
    require_id("Device.parent id", r.parent_id)?;
    require_string("type_text", r.type_text)?;
    let status = device_status(r.status)?;
    let mut kind = CodeableConcept::builder().text(r.type_text.to_owned());
    if let Some(c) = &r.type_code {
        kind = kind.coding(vec![Some(coding("Device.type", c)?)]);
    }
    let kind = kind.build().map_err(build_err("Device.type"))?;
    let meta = last_updated_meta(r.last_updated_unix_ms)?;
    let device = Device::builder()
        .id(r.id.to_owned())
        .meta(meta)
        .status(status)
        .r#type(kind)
        .parent(literal_reference("Device", r.parent_id)?)
        .build()
        .map_err(build_err("Device"))?;
    serde_json::to_value(&device).map_err(ser_err("Device"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2026-11-23T19:00:00.123Z
    const T0: i64 = 1_795_460_400_123;

    fn monitor() -> DeviceRecord<'static> {
        DeviceRecord {
            id: "dev-7a-12",
            identifier_system: "urn:wardwatch:device",
            identifier_value: "edge-7a/monitor-12",
            kind_display: "Multi-parameter bedside monitor",
            kind_mdc: Some((69_965, "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS")),
            manufacturer: Some("Acme Medical"),
            model: Some("VitalView 3"),
            serial: Some("SN-0042"),
            udi: Some("(01)00844588003288(21)SN-0042"),
            location_display: Some("Ward 7A, bed 12"),
            location_id: None,
            status: "active",
            operational_display: Some("on"),
            last_updated_unix_ms: T0,
        }
    }

    #[test]
    fn device_exact_json() {
        let json = device(&monitor()).expect("valid record");
        let expected = json!({
            "resourceType": "Device",
            "id": "dev-7a-12",
            "meta": {"lastUpdated": "2026-11-23T19:00:00.123Z"},
            "identifier": [{"system": "urn:wardwatch:device", "value": "edge-7a/monitor-12"}],
            "udiCarrier": [{"carrierHRF": "(01)00844588003288(21)SN-0042"}],
            "status": "active",
            "manufacturer": "Acme Medical",
            "serialNumber": "SN-0042",
            "modelNumber": "VitalView 3",
            "type": {
                "coding": [{
                    "system": "urn:iso:std:iso:11073:10101",
                    "code": "69965",
                    "display": "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS"
                }],
                "text": "Multi-parameter bedside monitor"
            },
            "location": {"display": "Ward 7A, bed 12"},
            "note": [{"text": "operational status: on"}]
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn minimal_device_with_coded_status_reason() {
        let r = DeviceRecord {
            kind_display: "Infusion pump",
            kind_mdc: None,
            manufacturer: None,
            model: Some(""),
            serial: None,
            udi: None,
            location_display: None,
            location_id: None,
            status: "inactive",
            operational_display: Some("not-ready"),
            ..monitor()
        };
        let json = device(&r).expect("valid record");
        assert_eq!(json["type"], json!({"text": "Infusion pump"}));
        assert_eq!(json["status"], "inactive");
        assert_eq!(
            json["statusReason"],
            json!([{
                "coding": [{"system": DEVICE_STATUS_REASON, "code": "not-ready", "display": "Not Ready"}],
                "text": "Not Ready"
            }])
        );
        assert_eq!(
            json["note"],
            json!([{"text": "operational status: not-ready"}])
        );
        for absent in [
            "manufacturer",
            "modelNumber",
            "serialNumber",
            "udiCarrier",
            "location",
        ] {
            assert!(
                json.get(absent).is_none(),
                "{absent} should be absent: {json}"
            );
        }
    }

    #[test]
    fn vmd_and_channel_devices_have_type_and_parent_only() {
        let vmd = device_component(&DeviceComponentRecord {
            id: "mon-7A-1.vmd-spo2",
            type_code: Some(Coding {
                system: MDC,
                code: "69642",
                display: "MDC_DEV_ANALY_SAT_O2_VMD",
            }),
            type_text: "Pulse oximetry",
            parent_id: "mon-7A-1",
            status: "active",
            last_updated_unix_ms: T0,
        })
        .expect("valid VMD");
        assert_eq!(
            vmd,
            json!({
                "resourceType": "Device",
                "id": "mon-7A-1.vmd-spo2",
                "meta": {"lastUpdated": "2026-11-23T19:00:00.123Z"},
                "status": "active",
                "type": {
                    "coding": [{
                        "system": "urn:iso:std:iso:11073:10101",
                        "code": "69642",
                        "display": "MDC_DEV_ANALY_SAT_O2_VMD"
                    }],
                    "text": "Pulse oximetry"
                },
                "parent": {"reference": "Device/mon-7A-1"}
            })
        );
        let chan = device_component(&DeviceComponentRecord {
            id: "mon-7A-1.chan-other",
            type_code: None,
            type_text: "Other measurements channel",
            parent_id: "mon-7A-1.vmd-other",
            status: "unknown",
            last_updated_unix_ms: T0,
        })
        .expect("valid channel");
        assert_eq!(chan["type"], json!({"text": "Other measurements channel"}));
        assert_eq!(chan["parent"]["reference"], "Device/mon-7A-1.vmd-other");
        let bad = DeviceComponentRecord {
            id: "x.vmd-spo2",
            type_code: None,
            type_text: "x",
            parent_id: "not an id",
            status: "active",
            last_updated_unix_ms: T0,
        };
        assert!(matches!(
            device_component(&bad),
            Err(FhirError::InvalidInput(_))
        ));
    }

    #[test]
    fn invalid_devices() {
        let check = |r: DeviceRecord<'_>, needle: &str| match device(&r) {
            Err(FhirError::InvalidInput(msg)) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidInput containing {needle:?}, got {other:?}"),
        };
        check(
            DeviceRecord {
                id: "",
                ..monitor()
            },
            "valid FHIR id",
        );
        check(
            DeviceRecord {
                id: "dev#1",
                ..monitor()
            },
            "valid FHIR id",
        );
        check(
            DeviceRecord {
                status: "on",
                ..monitor()
            },
            "Device.status",
        );
        check(
            DeviceRecord {
                kind_display: " ",
                ..monitor()
            },
            "kind_display",
        );
        check(
            DeviceRecord {
                identifier_value: "",
                ..monitor()
            },
            "Device.identifier.value",
        );
        check(
            DeviceRecord {
                identifier_system: "not a uri",
                ..monitor()
            },
            "Device.identifier.system",
        );
        check(
            DeviceRecord {
                last_updated_unix_ms: i64::MIN,
                ..monitor()
            },
            "last_updated_unix_ms",
        );
    }
}
