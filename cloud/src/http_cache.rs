//! HTTP caching for FHIR reads: `ETag` and `If-None-Match` (FHIR R4 RESTful API, "read" and "conditional read").
//!
//! A successful read (`GET [base]/{type}/{id}` or a version read `.../_history/{vid}`) carries a weak `ETag`
//! built from the resource's `meta.versionId` (`W/"3"`), as the FHIR specification asks; a resource without a
//! version id gets a weak tag from a hash of its JSON. A client that sends the tag back in `If-None-Match` gets
//! `304 Not Modified` with no body, so an EHR polling a resource that did not change pays for neither the
//! rendering on its side nor the transfer.
//!
//! Searches and operations are not tagged: their Bundles change with every new sample and carry paging links.
//!
//! This module reads the response JSON only for `meta.versionId`; it never produces FHIR (that is
//! `wardwatch-fhir`'s job).

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Largest read response this middleware buffers to tag (a single resource is far smaller); larger bodies pass
/// through untagged.
const MAX_TAGGED_BODY: usize = 8 << 20;

/// True when `path` (after the FHIR base) is a read or version read: `/{Type}/{id}` or
/// `/{Type}/{id}/_history/{vid}`, with a capitalised resource type and no operation (`$`) segment.
pub fn is_read_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The FHIR base may be several segments long: look at the tail only.
    let tail: &[&str] = match segs.len() {
        n if n >= 4 && segs[n - 2] == "_history" => &segs[n - 4..n - 2],
        n if n >= 2 => &segs[n - 2..],
        _ => return false,
    };
    let (ty, id) = (tail[0], tail[1]);
    ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphabetic())
        && !id.is_empty()
        && !id.starts_with('$')
        && !id.starts_with('_')
        && !segs.iter().any(|s| s.starts_with('$'))
}

/// The weak entity tag of a resource's JSON: its `meta.versionId`, or a content hash when it has none.
pub fn etag_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "versionId")]
        version_id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        meta: Option<Meta>,
    }
    let version = serde_json::from_slice::<Head>(body)
        .ok()
        .and_then(|h| h.meta)
        .and_then(|m| m.version_id)
        .filter(|v| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        });
    match version {
        Some(v) => format!("W/\"{v}\""),
        None => {
            let d = Sha256::digest(body);
            format!("W/\"h-{}\"", hex::encode(&d[..12]))
        }
    }
}

/// True when an `If-None-Match` value matches `etag` (`*`, or any listed tag, compared weakly).
pub fn none_match_hits(if_none_match: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = bare(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == want)
}

/// The middleware: tags successful reads and answers a matching `If-None-Match` with 304.
pub async fn etag_reads(req: Request, next: Next) -> Response {
    if !(req.method() == Method::GET || req.method() == Method::HEAD)
        || !is_read_path(req.uri().path())
    {
        return next.run(req).await;
    }
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK || resp.headers().contains_key(header::ETAG) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match to_bytes(body, MAX_TAGGED_BODY).await {
        Ok(b) => b,
        // Too large or failed mid-way: the body is gone, so say so rather than send half of it.
        Err(e) => {
            tracing::warn!(error = %e, "read response not buffered for its ETag");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let etag = etag_of(&bytes);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, v);
    }
    if if_none_match.is_some_and(|inm| none_match_hits(&inm, &etag)) {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_version_reads_are_recognised() {
        assert!(is_read_path("/fhir/Observation/edge-7a.12"));
        assert!(is_read_path("/fhir/Device/mon-12"));
        assert!(is_read_path("/fhir/DetectedIssue/a1/_history/3"));
        assert!(is_read_path("/a/b/fhir/Location/7A"));
        assert!(!is_read_path("/fhir/Observation"));
        assert!(!is_read_path("/fhir/metadata"));
        assert!(!is_read_path("/fhir/Observation/$lastn"));
        assert!(!is_read_path("/fhir/Subscription/s1/$status"));
        assert!(!is_read_path("/fhir/Observation/_history"));
        assert!(!is_read_path("/fhir/auth/token"));
        assert!(!is_read_path("/fhir/.well-known/smart-configuration"));
    }

    #[test]
    fn tag_is_the_version_id_or_a_content_hash() {
        assert_eq!(
            etag_of(br#"{"resourceType":"DetectedIssue","meta":{"versionId":"3"}}"#),
            "W/\"3\""
        );
        let a = etag_of(br#"{"resourceType":"Observation","id":"a"}"#);
        let b = etag_of(br#"{"resourceType":"Observation","id":"b"}"#);
        assert!(a.starts_with("W/\"h-") && a != b, "{a} {b}");
        // A version id that could break the header is not used.
        assert!(etag_of(br#"{"meta":{"versionId":"1\" x"}}"#).starts_with("W/\"h-"));
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        assert!(none_match_hits("W/\"3\"", "W/\"3\""));
        assert!(none_match_hits("\"3\"", "W/\"3\""));
        assert!(none_match_hits("W/\"1\", W/\"3\"", "W/\"3\""));
        assert!(none_match_hits("*", "W/\"3\""));
        assert!(!none_match_hits("W/\"2\"", "W/\"3\""));
        assert!(!none_match_hits("", "W/\"3\""));
    }
}
