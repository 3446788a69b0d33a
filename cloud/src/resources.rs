//! One read dispatcher for every FHIR resource type the cloud serves: `read_resource(store, cfg, type, id)`.
//!
//! The REST reads (`GET [base]/<Type>/<id>`) and the subscription notifications' `full-resource` payloads both
//! go through it, so a resource reads the same on every surface. FHIR JSON itself is built only by the
//! `wardwatch-fhir` crate; this module finds the stored rows and hands plain records to it.
//!
//! Resource ids (see docs/fhir-mapping.md):
//! - `Observation/<edge>.<sequence>`: a vital sign (the sample's lineage).
//! - `Device/<device_id>`.

use wardwatch_proto::ids::{DeviceId, EdgeId};

use crate::config::ApiConfig;
use crate::error::CloudError;
use crate::storage::Store;

/// Resource types [`read_resource`] can return, in CapabilityStatement order.
pub const READABLE_TYPES: &[&str] = &["Observation", "Device"];

/// Splits a lineage id `<edge>.<sequence>` (optionally followed by `.<suffix>`); `None` if it is not one of
/// ours. Returns the edge, the sequence and the suffix (`""` when absent).
pub fn parse_lineage_id(id: &str) -> Option<(EdgeId, u64, &str)> {
    // Edge ids never contain '.', so the first '.' ends the edge id.
    let (edge, rest) = id.split_once('.')?;
    let (seq, suffix) = match rest.split_once('.') {
        Some((s, suffix)) if !suffix.is_empty() => (s, suffix),
        Some(_) => return None,
        None => (rest, ""),
    };
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = seq.parse().ok().filter(|s| *s > 0)?;
    Some((EdgeId::new(edge).ok()?, seq, suffix))
}

/// Reads one resource by type and id, as the FHIR read interaction returns it. `Ok(None)` when the type is
/// served but no such resource exists (or the id cannot be one of ours); an error for a type this server does
/// not serve (`NotSupported`), a storage failure (`Unavailable`), or a stored row that cannot be mapped
/// (`Unavailable`).
pub async fn read_resource(
    store: &Store,
    cfg: &ApiConfig,
    resource_type: &str,
    id: &str,
) -> Result<Option<serde_json::Value>, CloudError> {
    match resource_type {
        "Observation" => {
            let Some((edge, seq, suffix)) = parse_lineage_id(id) else {
                return Ok(None);
            };
            if !suffix.is_empty() {
                return Ok(None);
            }
            match store.vital_by_lineage(edge.as_str(), seq).await? {
                Some(row) => Ok(Some(crate::api::vital_to_observation(
                    &row,
                    &cfg.mrn_system,
                )?)),
                None => Ok(None),
            }
        }
        "Device" => {
            let Ok(id) = DeviceId::new(id) else {
                return Ok(None);
            };
            match store.device(id.as_str()).await? {
                Some(row) => Ok(Some(crate::api::device_to_fhir(
                    &row,
                    &cfg.device_id_system,
                )?)),
                None => Ok(None),
            }
        }
        other => Err(CloudError::NotSupported(format!(
            "resource type {other:?} is not served (served: {})",
            READABLE_TYPES.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_ids_round_trip_and_junk_is_refused() {
        let (edge, seq, suffix) = parse_lineage_id("edge-7a.42").expect("valid id");
        assert_eq!((edge.as_str(), seq, suffix), ("edge-7a", 42, ""));
        let (edge, seq, suffix) = parse_lineage_id("edge-7a.42.rate").expect("suffixed id");
        assert_eq!((edge.as_str(), seq, suffix), ("edge-7a", 42, "rate"));
        for bad in [
            "edge-7a",
            "edge-7a.",
            "edge-7a.0",
            "edge-7a.-1",
            "edge-7a.+1",
            ".5",
            "edge 7a.5",
            "edge-7a.5.",
            "e.18446744073709551616",
        ] {
            assert!(parse_lineage_id(bad).is_none(), "{bad}");
        }
    }
}
