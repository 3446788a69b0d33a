//! `searchset` `Bundle` resources.

use fhir_sdk::r4b::codes::{BundleType, SearchEntryMode};
use fhir_sdk::r4b::resources::{Bundle, BundleEntry, BundleEntrySearch, BundleLink};

use crate::FhirError;
use crate::util::{build_err, instant_from_unix_ms, invalid, require_uri, ser_err};

/// A resource this crate built, already serialized to JSON text (a JSON object with its `resourceType`). Made
/// only here, so a Bundle can embed it without parsing or checking it again.
#[derive(Debug, Clone)]
pub struct SerializedResource {
    resource_type: &'static str,
    json: Box<serde_json::value::RawValue>,
}

impl SerializedResource {
    /// Serializes `resource` (a typed `fhir-sdk` resource of type `resource_type`).
    pub(crate) fn of(
        resource_type: &'static str,
        resource: &impl serde::Serialize,
    ) -> Result<Self, FhirError> {
        let text = serde_json::to_string(resource).map_err(ser_err(resource_type))?;
        let json =
            serde_json::value::RawValue::from_string(text).map_err(ser_err(resource_type))?;
        Ok(Self {
            resource_type,
            json,
        })
    }

    /// The resource's type, e.g. `Observation`.
    pub fn resource_type(&self) -> &'static str {
        self.resource_type
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The resource as a JSON value (a parse: for tests and rare paths, not for Bundles).
    ///
    /// # Errors
    /// [`FhirError::Build`] if the text is not JSON (not expected: this crate serialized it).
    pub fn to_value(&self) -> Result<serde_json::Value, FhirError> {
        serde_json::from_str(self.json.get()).map_err(ser_err(self.resource_type))
    }
}

impl serde::Serialize for SerializedResource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

/// One page of search results to wrap in a `searchset` `Bundle`. `R` is how each resource is held: a JSON value
/// (what most searches build), or a [`SerializedResource`] for [`searchset_bundle_text`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage<R = serde_json::Value> {
    /// URL of this page; becomes the `self` link.
    pub self_url: String,
    /// URL of the next page, if any; becomes the `next` link.
    pub next_url: Option<String>,
    /// Total number of matches across all pages (`Bundle.total`), if known.
    pub total: Option<u64>,
    /// `(fullUrl, resource)` pairs; each resource is a JSON object with a
    /// `resourceType` (normally produced by this crate's other functions).
    pub entries: Vec<(String, R)>,
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
    searchset_bundle_with(page, Vec::new(), None)
}

/// [`searchset_bundle`] plus resources included by `_include` (`search.mode = include`, after the matches)
/// and, optionally, an `OperationOutcome` with warnings about the search (`search.mode = outcome`, last).
///
/// # Errors
/// As [`searchset_bundle`]; an `outcome` that is not an `OperationOutcome` is [`FhirError::InvalidInput`].
pub fn searchset_bundle_with(
    page: SearchPage,
    included: Vec<(String, serde_json::Value)>,
    outcome: Option<serde_json::Value>,
) -> Result<serde_json::Value, FhirError> {
    for (i, (_, resource)) in page.entries.iter().enumerate() {
        require_resource_type(i, resource)?;
    }
    let (mut json, resources) = skeleton(page, included, outcome)?;
    let resources = resources
        .into_iter()
        .map(|r| match r {
            EntryResource::Match(v) | EntryResource::Other(v) => v,
        })
        .collect();
    insert_resources(&mut json, resources)?;
    Ok(json)
}

/// [`searchset_bundle_with`] for matches that are already JSON text ([`SerializedResource`]), rendered straight
/// to the Bundle's JSON text: the matches are copied in verbatim, never turned into `serde_json::Value`s. For
/// large pages (a patient's whole day of vitals), where building and serializing value trees was most of the
/// request's time.
///
/// # Errors
/// As [`searchset_bundle_with`].
pub fn searchset_bundle_text(
    page: SearchPage<SerializedResource>,
    included: Vec<(String, serde_json::Value)>,
    outcome: Option<serde_json::Value>,
) -> Result<String, FhirError> {
    let (mut json, resources) = skeleton(page, included, outcome)?;
    let entries = match json.as_object_mut().and_then(|o| o.remove("entry")) {
        Some(serde_json::Value::Array(entries)) if entries.len() == resources.len() => entries,
        None if resources.is_empty() => Vec::new(),
        _ => {
            return Err(FhirError::Build(
                "serialized Bundle lacks the expected entries".to_owned(),
            ));
        }
    };
    let mut rendered = Vec::with_capacity(entries.len());
    for (entry, resource) in entries.iter().zip(&resources) {
        let fields = entry.as_object().ok_or_else(|| {
            FhirError::Build("serialized Bundle.entry is not an object".to_owned())
        })?;
        rendered.push(EntryText { fields, resource });
    }
    let head = json
        .as_object()
        .ok_or_else(|| FhirError::Build("serialized Bundle is not an object".to_owned()))?;
    serde_json::to_string(&BundleText {
        head,
        entry: rendered,
    })
    .map_err(ser_err("Bundle"))
}

/// A Bundle rendered from its serialized skeleton (`head`, without `entry`) and its entries.
#[derive(serde::Serialize)]
struct BundleText<'a, R> {
    #[serde(flatten)]
    head: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<EntryText<'a, R>>,
}

/// One `Bundle.entry`: its serialized skeleton (`fullUrl`, `search`) and its resource.
#[derive(serde::Serialize)]
struct EntryText<'a, R> {
    #[serde(flatten)]
    fields: &'a serde_json::Map<String, serde_json::Value>,
    resource: &'a R,
}

/// A resource of a Bundle entry: one of the page's matches, or an included resource or the outcome.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum EntryResource<R> {
    Match(R),
    Other(serde_json::Value),
}

fn require_resource_type(i: usize, resource: &serde_json::Value) -> Result<(), FhirError> {
    let has_type = resource
        .get("resourceType")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()));
    if has_type {
        Ok(())
    } else {
        Err(invalid(format!(
            "entries[{i}].resource must be a JSON object with a resourceType"
        )))
    }
}

/// The Bundle without its entries' resources, built with `fhir-sdk` and serialized, and the resources in entry
/// order: the matches, the included resources, the outcome. Checks the URLs, the total, the timestamp, the
/// included resources and the outcome (the caller checks the matches).
fn skeleton<R>(
    page: SearchPage<R>,
    included: Vec<(String, serde_json::Value)>,
    outcome: Option<serde_json::Value>,
) -> Result<(serde_json::Value, Vec<EntryResource<R>>), FhirError> {
    require_uri("self_url", &page.self_url)?;
    let mut links = vec![Some(link("self", page.self_url)?)];
    if let Some(next) = page.next_url {
        require_uri("next_url", &next)?;
        links.push(Some(link("next", next)?));
    }
    if let Some(o) = &outcome
        && o.get("resourceType").and_then(serde_json::Value::as_str) != Some("OperationOutcome")
    {
        return Err(invalid("the search outcome must be an OperationOutcome"));
    }
    let n_matches = page.entries.len();
    for (i, (_, resource)) in included.iter().enumerate() {
        require_resource_type(n_matches + i, resource)?;
    }
    let all = page
        .entries
        .into_iter()
        .map(|(u, r)| (SearchEntryMode::Match, Some(u), EntryResource::Match(r)))
        .chain(
            included
                .into_iter()
                .map(|(u, r)| (SearchEntryMode::Include, Some(u), EntryResource::Other(r))),
        )
        .chain(outcome.map(|r| (SearchEntryMode::Outcome, None, EntryResource::Other(r))));
    let mut entries = Vec::new();
    let mut resources = Vec::new();
    for (i, (mode, full_url, resource)) in all.enumerate() {
        if let Some(u) = &full_url {
            require_uri(&format!("entries[{i}].fullUrl"), u)?;
        }
        let search = BundleEntrySearch::builder()
            .mode(mode)
            .build()
            .map_err(build_err("Bundle.entry.search"))?;
        let mut entry = BundleEntry::builder().search(search);
        if let Some(u) = full_url {
            entry = entry.full_url(u);
        }
        entries.push(Some(entry.build().map_err(build_err("Bundle.entry"))?));
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
    let json = serde_json::to_value(&bundle).map_err(ser_err("Bundle"))?;
    Ok((json, resources))
}

/// Puts already-built FHIR JSON resources into a serialized Bundle's entries, in order (no lossy re-parse
/// through the typed model).
pub(crate) fn insert_resources(
    json: &mut serde_json::Value,
    resources: Vec<serde_json::Value>,
) -> Result<(), FhirError> {
    if resources.is_empty() {
        return Ok(());
    }
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
    Ok(())
}

/// A `Bundle.link`.
pub(crate) fn link(relation: &str, url: String) -> Result<BundleLink, FhirError> {
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
    fn included_resources_follow_the_matches_and_the_outcome_comes_last() {
        let p = SearchPage {
            total: None,
            next_url: None,
            ..page()
        };
        let dev = (
            "https://fhir.example.invalid/Device/mon-1".to_owned(),
            json!({"resourceType": "Device", "id": "mon-1"}),
        );
        let warn = json!({"resourceType": "OperationOutcome", "issue": []});
        let j =
            searchset_bundle_with(p.clone(), vec![dev.clone()], Some(warn.clone())).expect("valid");
        let modes: Vec<&str> = j["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["search"]["mode"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(modes, ["match", "match", "include", "outcome"]);
        assert_eq!(j["entry"][2]["resource"], dev.1);
        assert_eq!(j["entry"][3]["resource"], warn);
        assert!(j["entry"][3].get("fullUrl").is_none());
        // Only an OperationOutcome can be the outcome.
        assert!(searchset_bundle_with(p, Vec::new(), Some(dev.1)).is_err());
    }

    /// The text rendering is the value rendering, entry for entry: matches, included resources, the outcome.
    #[test]
    fn text_bundle_is_the_value_bundle() {
        let dev = (
            "https://fhir.example.invalid/Device/mon-1".to_owned(),
            json!({"resourceType": "Device", "id": "mon-1"}),
        );
        let warn = json!({"resourceType": "OperationOutcome", "issue": []});
        let as_text = |p: SearchPage| SearchPage {
            entries: p
                .entries
                .iter()
                .map(|(u, r)| {
                    let t = r["resourceType"].as_str().expect("type");
                    let t = if t == "Device" {
                        "Device"
                    } else {
                        "Observation"
                    };
                    (u.clone(), SerializedResource::of(t, r).expect("serializes"))
                })
                .collect(),
            self_url: p.self_url,
            next_url: p.next_url,
            total: p.total,
            timestamp_unix_ms: p.timestamp_unix_ms,
        };
        let empty = SearchPage {
            entries: Vec::new(),
            next_url: None,
            ..page()
        };
        for (p, inc, out) in [
            (page(), Vec::new(), None),
            (page(), vec![dev.clone()], Some(warn.clone())),
            (empty.clone(), Vec::new(), None),
            (empty, Vec::new(), Some(warn.clone())),
        ] {
            let value = searchset_bundle_with(p.clone(), inc.clone(), out.clone()).expect("valid");
            let text = searchset_bundle_text(as_text(p), inc, out).expect("valid");
            let parsed: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(parsed, value, "{text}");
        }
        // The same checks as the value rendering: a bad URL, an included resource without a type.
        let mut p = as_text(page());
        p.entries[0].0 = String::new();
        assert!(searchset_bundle_text(p, Vec::new(), None).is_err());
        let bad = ("https://x/Device/1".to_owned(), json!({"id": "1"}));
        assert!(matches!(
            searchset_bundle_text(as_text(page()), vec![bad], None),
            Err(FhirError::InvalidInput(m)) if m.contains("entries[2].resource")
        ));
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
