//! Resource versions: `meta.versionId` / `meta.lastUpdated` on any resource this crate built, and the
//! `history` `Bundle` of `GET [base]/{Type}/{id}/_history`.
//!
//! The caller decides what a version is (docs/fhir-mapping.md, "Versions"); this module only writes it the one
//! way FHIR expects, so that a read, a version read, a history entry and the HTTP `ETag` (`W/"<versionId>"`)
//! agree.

use fhir_sdk::r4b::codes::{BundleType, HTTPVerb};
use fhir_sdk::r4b::resources::{Bundle, BundleEntry, BundleEntryRequest, BundleEntryResponse};

use crate::FhirError;
use crate::bundle::link;
use crate::util::{build_err, instant_from_unix_ms, invalid, require_id, require_uri, ser_err};

/// The version a resource is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionMeta<'a> {
    /// `meta.versionId` (a FHIR id: `[A-Za-z0-9-.]{1,64}`).
    pub version_id: &'a str,
    /// `meta.lastUpdated`, Unix ms; `None` leaves whatever the resource has (possibly nothing).
    pub last_updated_unix_ms: Option<i64>,
}

/// Sets `meta.versionId` (and `meta.lastUpdated` when given) on a resource built by this crate, keeping the
/// rest of its `meta` (profiles, source).
///
/// # Errors
/// [`FhirError::InvalidInput`] when the resource is not a JSON object with a `resourceType`, the version id is
/// not a valid FHIR id, or the time is unrepresentable.
pub fn with_version(
    mut resource: serde_json::Value,
    v: &VersionMeta<'_>,
) -> Result<serde_json::Value, FhirError> {
    require_id("meta.versionId", v.version_id)?;
    let updated = match v.last_updated_unix_ms {
        Some(ms) => Some(
            serde_json::to_value(instant_from_unix_ms("meta.lastUpdated", ms)?)
                .map_err(ser_err("meta.lastUpdated"))?,
        ),
        None => None,
    };
    let obj = resource
        .as_object_mut()
        .filter(|o| {
            o.get("resourceType")
                .is_some_and(serde_json::Value::is_string)
        })
        .ok_or_else(|| invalid("a versioned resource must be a JSON object with a resourceType"))?;
    let meta = obj
        .entry("meta")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| invalid("meta must be a JSON object"))?;
    meta.insert("versionId".to_owned(), v.version_id.into());
    if let Some(u) = updated {
        meta.insert("lastUpdated".to_owned(), u);
    }
    Ok(resource)
}

/// One page of an instance's history, newest version first.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// URL of this page; becomes the `self` link.
    pub self_url: String,
    /// URL of the next (older) page, if any.
    pub next_url: Option<String>,
    /// Number of versions the instance has (`Bundle.total`).
    pub total: u64,
    /// `(fullUrl, resource)` per version, newest first; each resource carries `meta.versionId` (see
    /// [`with_version`]).
    pub entries: Vec<(String, serde_json::Value)>,
    /// `Bundle.timestamp`, Unix ms.
    pub timestamp_unix_ms: i64,
}

/// Builds a `history` `Bundle`. Each entry has `request` (version `1`: `POST <Type>`, later versions:
/// `PUT <Type>/<id>`, which is how each version came to be as far as a client can tell) and `response`
/// (`201 Created` / `200 OK`, `etag` `W/"<versionId>"`, `lastModified` from `meta.lastUpdated`), as the
/// Bundle invariants bdl-3 and bdl-4 require of a history.
///
/// # Errors
/// [`FhirError::InvalidInput`] for an invalid URL, a total above `u32::MAX`, or an entry resource without a
/// `resourceType`, a valid `id` or a valid `meta.versionId`.
pub fn history_bundle(page: HistoryPage) -> Result<serde_json::Value, FhirError> {
    require_uri("self_url", &page.self_url)?;
    let mut links = vec![Some(link("self", page.self_url)?)];
    if let Some(next) = page.next_url {
        require_uri("next_url", &next)?;
        links.push(Some(link("next", next)?));
    }
    let mut entries = Vec::with_capacity(page.entries.len());
    let mut resources = Vec::with_capacity(page.entries.len());
    for (i, (full_url, resource)) in page.entries.into_iter().enumerate() {
        require_uri(&format!("entries[{i}].fullUrl"), &full_url)?;
        let text = |k: &str| resource.get(k).and_then(serde_json::Value::as_str);
        let rt = text("resourceType")
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or_else(|| invalid(format!("entries[{i}].resource has no resourceType")))?;
        let id = text("id").unwrap_or_default();
        require_id(&format!("entries[{i}].resource.id"), id)?;
        let meta = resource.get("meta");
        let vid = meta
            .and_then(|m| m.get("versionId"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        require_id(&format!("entries[{i}].resource.meta.versionId"), vid)?;
        let last_modified = meta
            .and_then(|m| m.get("lastUpdated"))
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| invalid(format!("entries[{i}].resource.meta.lastUpdated: {e}")))?;
        let created = vid == "1";
        let request = BundleEntryRequest::builder()
            .method(if created {
                HTTPVerb::Post
            } else {
                HTTPVerb::Put
            })
            .url(if created {
                rt.to_owned()
            } else {
                format!("{rt}/{id}")
            })
            .build()
            .map_err(build_err("Bundle.entry.request"))?;
        let mut response = BundleEntryResponse::builder()
            .status(if created { "201 Created" } else { "200 OK" }.to_owned())
            .etag(format!("W/\"{vid}\""));
        if let Some(lm) = last_modified {
            response = response.last_modified(lm);
        }
        let entry = BundleEntry::builder()
            .full_url(full_url)
            .request(request)
            .response(
                response
                    .build()
                    .map_err(build_err("Bundle.entry.response"))?,
            )
            .build()
            .map_err(build_err("Bundle.entry"))?;
        entries.push(Some(entry));
        resources.push(resource);
    }
    let total = u32::try_from(page.total)
        .map_err(|_| invalid(format!("total {} exceeds u32::MAX", page.total)))?;
    let bundle = Bundle::builder()
        .r#type(BundleType::History)
        .timestamp(instant_from_unix_ms(
            "timestamp_unix_ms",
            page.timestamp_unix_ms,
        )?)
        .total(total)
        .link(links)
        .entry(entries)
        .build()
        .map_err(build_err("Bundle"))?;
    let mut json = serde_json::to_value(&bundle).map_err(ser_err("Bundle"))?;
    crate::bundle::insert_resources(&mut json, resources)?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2026-11-23T19:00:05Z
    const T: i64 = 1_795_460_405_000;

    #[test]
    fn version_is_written_into_meta_and_keeps_the_rest() {
        let r = json!({"resourceType": "Observation", "id": "e.1", "meta": {"source": "wardwatch-edge:e/sequence/1"}});
        let v = with_version(
            r,
            &VersionMeta {
                version_id: "1",
                last_updated_unix_ms: Some(T),
            },
        )
        .expect("valid");
        assert_eq!(
            v["meta"],
            json!({"source": "wardwatch-edge:e/sequence/1", "versionId": "1", "lastUpdated": "2026-11-23T19:00:05Z"})
        );
        // No lastUpdated given: the resource's own stays.
        let v = with_version(
            json!({"resourceType": "Device", "id": "d", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}}),
            &VersionMeta {
                version_id: "4",
                last_updated_unix_ms: None,
            },
        )
        .expect("valid");
        assert_eq!(
            v["meta"],
            json!({"lastUpdated": "2026-01-01T00:00:00Z", "versionId": "4"})
        );
        for bad in ["", "1 2", "1\"", &"9".repeat(65)] {
            assert!(
                with_version(
                    json!({"resourceType": "Device"}),
                    &VersionMeta {
                        version_id: bad,
                        last_updated_unix_ms: None
                    }
                )
                .is_err(),
                "{bad:?}"
            );
        }
        assert!(
            with_version(
                json!({"id": "x"}),
                &VersionMeta {
                    version_id: "1",
                    last_updated_unix_ms: None
                }
            )
            .is_err()
        );
    }

    #[test]
    fn history_bundle_exact_json() {
        let v = |n: &str, ms: i64| {
            with_version(
                json!({"resourceType": "DetectedIssue", "id": "a-1", "status": "preliminary"}),
                &VersionMeta {
                    version_id: n,
                    last_updated_unix_ms: Some(ms),
                },
            )
            .expect("valid")
        };
        let j = history_bundle(HistoryPage {
            self_url: "https://x/fhir/DetectedIssue/a-1/_history?_count=2".into(),
            next_url: Some("https://x/fhir/DetectedIssue/a-1/_history?_count=2&_cursor=1".into()),
            total: 3,
            entries: vec![
                (
                    "https://x/fhir/DetectedIssue/a-1/_history/3".into(),
                    v("3", T),
                ),
                (
                    "https://x/fhir/DetectedIssue/a-1/_history/2".into(),
                    v("2", T - 5000),
                ),
            ],
            timestamp_unix_ms: T,
        })
        .expect("valid");
        assert_eq!(j["type"], "history");
        assert_eq!(j["total"], 3);
        assert_eq!(j["link"][1]["relation"], "next");
        assert_eq!(
            j["entry"][0],
            json!({
                "fullUrl": "https://x/fhir/DetectedIssue/a-1/_history/3",
                "resource": v("3", T),
                "request": {"method": "PUT", "url": "DetectedIssue/a-1"},
                "response": {"status": "200 OK", "etag": "W/\"3\"", "lastModified": "2026-11-23T19:00:05Z"}
            })
        );
        assert!(j["entry"][0].get("search").is_none());
        let first = history_bundle(HistoryPage {
            self_url: "https://x/fhir/DetectedIssue/a-1/_history".into(),
            next_url: None,
            total: 1,
            entries: vec![(
                "https://x/fhir/DetectedIssue/a-1/_history/1".into(),
                v("1", T),
            )],
            timestamp_unix_ms: T,
        })
        .expect("valid");
        assert_eq!(
            first["entry"][0]["request"],
            json!({"method": "POST", "url": "DetectedIssue"})
        );
        assert_eq!(first["entry"][0]["response"]["status"], "201 Created");
        // An entry without a version cannot be a history entry.
        let unversioned = history_bundle(HistoryPage {
            self_url: "https://x/h".into(),
            next_url: None,
            total: 1,
            entries: vec![(
                "https://x/DetectedIssue/a-1".into(),
                json!({"resourceType": "DetectedIssue", "id": "a-1"}),
            )],
            timestamp_unix_ms: T,
        });
        assert!(matches!(unversioned, Err(FhirError::InvalidInput(m)) if m.contains("versionId")));
    }
}
