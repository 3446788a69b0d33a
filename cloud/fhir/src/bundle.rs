//! `searchset` `Bundle` resources.

use fhir_sdk::r4b::codes::{BundleType, SearchEntryMode};
use fhir_sdk::r4b::resources::{Bundle, BundleEntry, BundleEntrySearch, BundleLink};

use crate::FhirError;
use crate::util::{build_err, instant_from_unix_ms, invalid, require_uri, ser_err};

/// One page of search results to wrap in a `searchset` `Bundle`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// URL of this page; becomes the `self` link.
    pub self_url: String,
    /// URL of the next page, if any; becomes the `next` link.
    pub next_url: Option<String>,
    /// Total number of matches across all pages (`Bundle.total`), if known.
    pub total: Option<u64>,
    /// `(fullUrl, resource)` pairs; each resource is a JSON object with a
    /// `resourceType` (normally produced by this crate's other functions).
    pub entries: Vec<(String, serde_json::Value)>,
    /// `Bundle.timestamp`, Unix milliseconds.
    pub timestamp_unix_ms: i64,
}

/// Build a FHIR R4 `Bundle` of type `searchset` with a `self` link, a `next`
/// link when there is a next page, and one entry per match with
/// `search.mode = match`.
///
/// The bundle skeleton is built with `fhir-sdk`'s typed model; the entry
/// resources, which are already FHIR JSON, are inserted verbatim into
/// `entry[i].resource` (no lossy re-parse through the typed model).
///
/// # Errors
/// [`FhirError::InvalidInput`] for an empty or whitespace-containing URL, a
/// `total` above `u32::MAX`, an entry resource that is not a JSON object
/// with a non-empty `resourceType` string, or an unrepresentable timestamp;
/// [`FhirError::Build`] if `fhir-sdk` fails (not expected).
pub fn searchset_bundle(page: SearchPage) -> Result<serde_json::Value, FhirError> {
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
        let has_type = resource
            .get("resourceType")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !has_type {
            return Err(invalid(format!(
                "entries[{i}].resource must be a JSON object with a resourceType"
            )));
        }
        let search = BundleEntrySearch::builder()
            .mode(SearchEntryMode::Match)
            .build()
            .map_err(build_err("Bundle.entry.search"))?;
        let entry = BundleEntry::builder()
            .full_url(full_url)
            .search(search)
            .build()
            .map_err(build_err("Bundle.entry"))?;
        entries.push(Some(entry));
        resources.push(resource);
    }

    let mut b = Bundle::builder()
        .r#type(BundleType::Searchset)
        .timestamp(instant_from_unix_ms(
            "timestamp_unix_ms",
            page.timestamp_unix_ms,
        )?)
        .link(links)
        .entry(entries);
    if let Some(total) = page.total {
        let total =
            u32::try_from(total).map_err(|_| invalid(format!("total {total} exceeds u32::MAX")))?;
        b = b.total(total);
    }
    let bundle = b.build().map_err(build_err("Bundle"))?;
    let mut json = serde_json::to_value(&bundle).map_err(ser_err("Bundle"))?;

    if !resources.is_empty() {
        let json_entries = json
            .get_mut("entry")
            .and_then(serde_json::Value::as_array_mut)
            .filter(|e| e.len() == resources.len())
            .ok_or_else(|| {
                FhirError::Build("serialized Bundle lacks the expected entries".to_owned())
            })?;
        for (entry, resource) in json_entries.iter_mut().zip(resources) {
            let obj = entry.as_object_mut().ok_or_else(|| {
                FhirError::Build("serialized Bundle.entry is not an object".to_owned())
            })?;
            obj.insert("resource".to_owned(), resource);
        }
    }
    Ok(json)
}

/// A `Bundle.link`.
fn link(relation: &str, url: String) -> Result<BundleLink, FhirError> {
    BundleLink::builder()
        .relation(relation.to_owned())
        .url(url)
        .build()
        .map_err(build_err("Bundle.link"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2026-11-23T19:00:05Z
    const T: i64 = 1_795_460_405_000;

    fn page() -> SearchPage {
        SearchPage {
            self_url: "https://fhir.example.invalid/Observation?patient.identifier=MRN-1&_count=2".to_owned(),
            next_url: Some("https://fhir.example.invalid/Observation?patient.identifier=MRN-1&_count=2&_cursor=abc".to_owned()),
            total: Some(5),
            entries: vec![
                (
                    "https://fhir.example.invalid/Observation/obs-1".to_owned(),
                    json!({"resourceType": "Observation", "id": "obs-1", "status": "final"}),
                ),
                (
                    "https://fhir.example.invalid/Device/dev-1".to_owned(),
                    json!({"resourceType": "Device", "id": "dev-1"}),
                ),
            ],
            timestamp_unix_ms: T,
        }
    }

    #[test]
    fn bundle_with_next_link_exact_json() {
        let json = searchset_bundle(page()).expect("valid page");
        let expected = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "timestamp": "2026-11-23T19:00:05Z",
            "total": 5,
            "link": [
                {"relation": "self", "url": "https://fhir.example.invalid/Observation?patient.identifier=MRN-1&_count=2"},
                {"relation": "next", "url": "https://fhir.example.invalid/Observation?patient.identifier=MRN-1&_count=2&_cursor=abc"}
            ],
            "entry": [
                {
                    "fullUrl": "https://fhir.example.invalid/Observation/obs-1",
                    "resource": {"resourceType": "Observation", "id": "obs-1", "status": "final"},
                    "search": {"mode": "match"}
                },
                {
                    "fullUrl": "https://fhir.example.invalid/Device/dev-1",
                    "resource": {"resourceType": "Device", "id": "dev-1"},
                    "search": {"mode": "match"}
                }
            ]
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn last_empty_page_has_only_self_link() {
        let json = searchset_bundle(SearchPage {
            next_url: None,
            total: None,
            entries: Vec::new(),
            ..page()
        })
        .expect("valid page");
        assert_eq!(
            json["link"],
            json!([{"relation": "self", "url": page().self_url}])
        );
        assert!(json.get("entry").is_none());
        assert!(json.get("total").is_none());
    }

    #[test]
    fn invalid_pages() {
        let check = |p: SearchPage, needle: &str| match searchset_bundle(p) {
            Err(FhirError::InvalidInput(msg)) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidInput containing {needle:?}, got {other:?}"),
        };
        check(
            SearchPage {
                self_url: String::new(),
                ..page()
            },
            "self_url",
        );
        check(
            SearchPage {
                next_url: Some("a b".to_owned()),
                ..page()
            },
            "next_url",
        );
        check(
            SearchPage {
                total: Some(u64::MAX),
                ..page()
            },
            "total",
        );
        check(
            SearchPage {
                timestamp_unix_ms: i64::MAX,
                ..page()
            },
            "timestamp_unix_ms",
        );
        let mut p = page();
        p.entries[1].1 = json!({"id": "x"});
        check(p, "entries[1].resource");
        let mut p = page();
        p.entries[0].0 = String::new();
        check(p, "entries[0].fullUrl");
    }
}
