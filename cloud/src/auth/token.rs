//! The token endpoint of SMART Backend Services (`POST [base]/auth/token`) and its discovery document
//! (`GET [base]/.well-known/smart-configuration`).
//!
//! A client proves who it is with a JWT it signed with its private key (`private_key_jwt`, RFC 7523): `iss` and
//! `sub` are its client id, `aud` is this endpoint's URL, `exp` at most five minutes ahead, `jti` never used
//! before while the assertion could be valid. Every problem with that assertion is `invalid_client` (401), as
//! RFC 7523 section 3.2 and the SMART specification require; other problems use the other RFC 6749 codes
//! (`invalid_request`, `unsupported_grant_type`, `invalid_scope`). Every request, granted or refused, is
//! written to the audit trail (action `token`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{
    ASSERTION_ALGORITHMS, ASSERTION_TYPE, CLOCK_SKEW_SECS, Grant, MAX_ASSERTION_LIFETIME_SECS,
    SERVED_RESOURCE_TYPES, Scope, SmartService,
};
use crate::api::{ApiState, RemoteAddr};
use crate::storage::{AccessTokenRow, AuditRecord};

/// Largest token request body accepted (an assertion is well under 4 KiB).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// An OAuth 2.0 error answer (RFC 6749 section 5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The error code, e.g. `invalid_client`.
    pub code: &'static str,
    /// Human-readable explanation (`error_description`).
    pub description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
    fn invalid_client(d: impl Into<String>) -> Self {
        Self::new("invalid_client", d)
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new("invalid_scope", d)
    }

    /// 401 for `invalid_client`, 503 when the server could not complete the request, 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self.code {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "error_description": self.description});
        oauth_json(self.status(), &body)
    }
}

/// A JSON answer that no cache may keep (RFC 6749 section 5.1).
fn oauth_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET [base]/.well-known/smart-configuration`: what the token endpoint accepts. Public, like the
/// specification requires.
pub async fn smart_configuration(State(state): State<Arc<ApiState>>) -> Response {
    let mut scopes: Vec<String> = vec!["system/*.rs".into(), "system/*.read".into()];
    scopes.extend(
        SERVED_RESOURCE_TYPES
            .iter()
            .map(|t| format!("system/{t}.rs")),
    );
    let doc = serde_json::json!({
        "token_endpoint": state.auth.token_endpoint(),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>(),
        "scopes_supported": scopes,
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
    });
    let mut resp = (StatusCode::OK, doc.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A client assertion that passed every check but the replay cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The client (`iss` = `sub`).
    pub client_id: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`, Unix seconds.
    pub exp: i64,
}

/// The claims read before the signature is checked: only to find the client's keys.
#[derive(serde::Deserialize)]
struct UnverifiedClaims {
    iss: Option<serde_json::Value>,
}

/// The claims of a verified assertion.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    exp: serde_json::Value,
    jti: Option<serde_json::Value>,
}

/// Checks a client assertion at time `now_s` (Unix seconds): algorithm, client, signature against the client's
/// registered keys, `iss` = `sub` = client id, `aud` = the token endpoint, `exp` present, not past and at most
/// five minutes ahead (each with [`CLOCK_SKEW_SECS`] of tolerance), `nbf` if present, and a `jti`. Returns the
/// claimed client id alongside a refusal when that client is registered (for the audit trail).
pub fn verify_assertion(
    svc: &SmartService,
    assertion: &str,
    now_s: i64,
) -> Result<VerifiedAssertion, (OAuthError, Option<String>)> {
    let refuse = |d: String| (OAuthError::invalid_client(d), None);
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
        refuse(format!(
            "client_assertion is not a signed JWT with alg RS384 or ES384 ({e})"
        ))
    })?;
    if !ASSERTION_ALGORITHMS.contains(&header.alg) {
        return Err(refuse(format!(
            "client_assertion alg {:?} is not accepted; sign with RS384 or ES384",
            header.alg
        )));
    }
    let unverified: UnverifiedClaims =
        jsonwebtoken::dangerous::insecure_decode_claims(assertion)
            .map_err(|e| refuse(format!("client_assertion claims are not readable ({e})")))?;
    let client_id = match unverified.iss {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return Err(refuse("client_assertion has no iss (the client_id)".into())),
    };
    let Some(client) = svc.client(&client_id) else {
        let shown: String = client_id.chars().take(64).collect();
        return Err(refuse(format!("client {shown:?} is not registered")));
    };
    let refuse = |d: String| (OAuthError::invalid_client(d), Some(client_id.clone()));
    if client.keys.is_empty() {
        return Err(refuse(format!(
            "client {client_id} has no registered public keys (private_key_jwt is not set up for it)"
        )));
    }
    let candidates: Vec<_> = client
        .keys
        .iter()
        .filter(|k| k.alg == header.alg)
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .collect();
    if candidates.is_empty() {
        return Err(refuse(match &header.kid {
            Some(kid) => format!(
                "client {client_id} has no registered {:?} key with kid {:?}",
                header.alg,
                kid.chars().take(64).collect::<String>()
            ),
            None => format!("client {client_id} has no registered {:?} key", header.alg),
        }));
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = CLOCK_SKEW_SECS.unsigned_abs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_audience(&[svc.token_endpoint()]);
    validation.set_issuer(&[client_id.as_str()]);
    validation.sub = Some(client_id.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);

    let mut last = None;
    let mut claims = None;
    for key in candidates {
        match jsonwebtoken::decode::<AssertionClaims>(assertion, &key.key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            // Another key of the client may have signed it.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
            Err(e) => return Err(refuse(describe(&e, svc.token_endpoint()))),
        }
    }
    let Some(claims) = claims else {
        let why = last.map_or_else(
            || "no key verified the signature".to_string(),
            |e| describe(&e, svc.token_endpoint()),
        );
        return Err(refuse(why));
    };
    // Validation::validate_exp has already refused an assertion that is past its `exp`.
    let exp = claims
        .exp
        .as_f64()
        .filter(|e| e.is_finite())
        .map(|e| e as i64)
        .ok_or_else(|| refuse("exp must be a number (Unix seconds)".into()))?;
    if exp - now_s > MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS {
        return Err(refuse(format!(
            "exp is {} s ahead; a client assertion may live at most {MAX_ASSERTION_LIFETIME_SECS} s",
            exp - now_s
        )));
    }
    let jti = match claims.jti {
        Some(serde_json::Value::String(j)) if !j.is_empty() && j.len() <= 256 => j,
        _ => {
            return Err(refuse(
                "jti is required (a unique string of at most 256 characters)".into(),
            ));
        }
    };
    Ok(VerifiedAssertion {
        client_id: client_id.clone(),
        jti,
        exp,
    })
}

/// Explains a JWT validation failure to the client.
fn describe(e: &jsonwebtoken::errors::Error, endpoint: &str) -> String {
    match e.kind() {
        ErrorKind::InvalidSignature => {
            "client_assertion signature does not verify against the client's registered keys".into()
        }
        ErrorKind::ExpiredSignature => "client_assertion has expired (exp is in the past)".into(),
        ErrorKind::ImmatureSignature => "client_assertion is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => format!("aud must be the token endpoint URL {endpoint}"),
        ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
            "iss and sub must both be the client_id".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("client_assertion lacks the {c} claim"),
        ErrorKind::InvalidAlgorithm => "client_assertion alg does not match the key".into(),
        _ => format!("client_assertion is not valid ({e})"),
    }
}

/// The form parameters of a token request; RFC 6749 forbids repeating any of them.
fn form(body: &[u8]) -> Result<std::collections::HashMap<String, String>, OAuthError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| OAuthError::invalid_request(format!("malformed form body: {e}")))?;
    let mut out = std::collections::HashMap::new();
    for (k, v) in pairs {
        if out.contains_key(&k) {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k:?} given more than once"
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// What a token request led to, for the audit trail.
struct Outcome {
    client_id: Option<String>,
    scope: String,
    result: Result<serde_json::Value, OAuthError>,
}

/// `POST [base]/auth/token`.
pub async fn token_endpoint(
    State(state): State<Arc<ApiState>>,
    remote: Option<axum::Extension<RemoteAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now_ms = wardwatch_proto::now_unix_ms();
    state.auth.prune(&state.store, now_ms).await;
    let outcome = issue(&state, &headers, &body, now_ms).await;
    let remote: Option<SocketAddr> = remote.map(|r| r.0.0);
    let (status, detail) = match &outcome.result {
        Ok(_) => (StatusCode::OK, String::new()),
        Err(e) => (e.status(), format!("{}: {}", e.code, e.description)),
    };
    let rec = AuditRecord {
        at_ms: now_ms,
        client_id: outcome.client_id.clone().unwrap_or_default(),
        action: "token".into(),
        resource_type: String::new(),
        query: outcome.scope.chars().take(2000).collect(),
        patients: String::new(),
        status: i32::from(status.as_u16()),
        remote: remote.map_or_else(String::new, |r| r.to_string()),
    };
    let detail: String = detail.chars().take(500).collect();
    if let Err(e) = state.store.audit_with_detail(&rec, &detail).await {
        tracing::error!(error = %e, "audit record of a token request could not be written");
    }
    match outcome.result {
        Ok(body) => oauth_json(StatusCode::OK, &body),
        Err(e) => {
            tracing::info!(client = %rec.client_id, error = e.code, why = %e.description, "token request refused");
            e.into_response()
        }
    }
}

async fn issue(state: &ApiState, headers: &HeaderMap, body: &[u8], now_ms: i64) -> Outcome {
    let mut out = Outcome {
        client_id: None,
        scope: String::new(),
        result: Err(OAuthError::invalid_request("unreachable")),
    };
    out.result = issue_inner(state, headers, body, now_ms, &mut out).await;
    out
}

async fn issue_inner(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
    out: &mut Outcome,
) -> Result<serde_json::Value, OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if form_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(OAuthError::invalid_request(
            "the token request must be application/x-www-form-urlencoded",
        ));
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(OAuthError::invalid_request(format!(
            "the token request is larger than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    let p = form(body)?;
    out.scope = p.get("scope").cloned().unwrap_or_default();
    match p.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!(
                    "grant_type {:?} is not supported; use client_credentials",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
        None => return Err(OAuthError::invalid_request("grant_type is required")),
    }
    match p.get("client_assertion_type").map(String::as_str) {
        Some(ASSERTION_TYPE) => {}
        Some(_) => {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion_type must be {ASSERTION_TYPE}"
            )));
        }
        None => {
            return Err(OAuthError::invalid_client(format!(
                "client authentication is required: client_assertion_type={ASSERTION_TYPE} and a client_assertion"
            )));
        }
    }
    let assertion = p
        .get("client_assertion")
        .ok_or_else(|| OAuthError::invalid_client("client_assertion is required"))?;
    let verified = verify_assertion(&state.auth, assertion, now_ms.div_euclid(1000)).map_err(
        |(e, claimed)| {
            out.client_id = claimed;
            e
        },
    )?;
    out.client_id = Some(verified.client_id.clone());
    if let Some(id) = p.get("client_id")
        && *id != verified.client_id
    {
        return Err(OAuthError::invalid_client(
            "client_id does not match the assertion's iss",
        ));
    }
    // The replay cache: a jti is held until its assertion could no longer be accepted (exp plus the skew).
    let hold_until_ms = (verified.exp + CLOCK_SKEW_SECS).saturating_mul(1000);
    match state
        .store
        .claim_assertion_jti(&verified.client_id, &verified.jti, hold_until_ms, now_ms)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(OAuthError::invalid_client(
                "client_assertion jti was already used (replayed assertion)",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "assertion replay cache unavailable");
            return Err(OAuthError::new(
                "temporarily_unavailable",
                "storage is unavailable; retry later",
            ));
        }
    }
    let granted = granted_scopes(&state.auth, &verified.client_id, &out.scope)?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let token_sha256 = hex::encode(Sha256::digest(token.as_bytes()));
    let ttl = state.auth.token_ttl_secs();
    let expires_at_ms = now_ms + i64::try_from(ttl).unwrap_or(300) * 1000;
    let row = AccessTokenRow {
        token_sha256: token_sha256.clone(),
        client_id: verified.client_id.clone(),
        scopes: granted.join(" "),
        issued_at_ms: now_ms,
        expires_at_ms,
    };
    if let Err(e) = state.store.insert_access_token(&row).await {
        tracing::error!(error = %e, "access token could not be stored");
        return Err(OAuthError::new(
            "temporarily_unavailable",
            "storage is unavailable; retry later",
        ));
    }
    state.auth.remember(
        token_sha256,
        Grant {
            client_id: verified.client_id.clone(),
            scopes: granted.clone(),
            expires_at_ms,
        },
    );
    tracing::info!(client = %verified.client_id, scope = %row.scopes, expires_in = ttl, "access token issued");
    Ok(serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": ttl,
        "scope": row.scopes,
    }))
}

/// The requested scopes, each of which must be a SMART `system/` scope covered by one the client is allowed.
/// A request that asks for anything more is refused whole, not silently narrowed.
fn granted_scopes(
    svc: &SmartService,
    client_id: &str,
    requested: &str,
) -> Result<Vec<String>, OAuthError> {
    let client = svc
        .client(client_id)
        .ok_or_else(|| OAuthError::invalid_client("client is not registered"))?;
    let mut granted = Vec::new();
    for s in requested.split_whitespace() {
        let scope = Scope::parse(s).map_err(|e| OAuthError::invalid_scope(e.to_string()))?;
        if !client.scopes.iter().any(|a| a.covers(&scope)) {
            return Err(OAuthError::invalid_scope(format!(
                "client {client_id} may not be granted {s}"
            )));
        }
        if !granted.iter().any(|g| g == s) {
            granted.push(s.to_string());
        }
    }
    if granted.is_empty() {
        return Err(OAuthError::invalid_scope(
            "scope is required, e.g. system/Observation.rs",
        ));
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_have_the_rfc_statuses() {
        assert_eq!(
            OAuthError::invalid_client("x").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            OAuthError::invalid_scope("x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            OAuthError::new("unsupported_grant_type", "x").status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn repeated_form_parameters_are_refused() {
        assert!(form(b"grant_type=a&grant_type=b").is_err());
        let p = form(b"grant_type=client_credentials&scope=system%2F*.rs").unwrap();
        assert_eq!(p["scope"], "system/*.rs");
    }
}
