//! Administrator routes of the model registry, on the HTTPS API listener (not under the FHIR base: models are not
//! FHIR resources). SMART Backend Services bearer tokens; the pseudo resource type `WardwatchModel` is named-only
//! (`system/*.…` never reaches it, see `auth::scope::NAMED_ONLY`):
//!
//! | route | scope | body |
//! |-------|-------|------|
//! | `POST /admin/models` | `system/WardwatchModel.c` | `{"manifest": b64, "signature": b64, "model": b64}` (the three bundle files, standard base64) |
//! | `GET /admin/models` | `system/WardwatchModel.r` | — |
//! | `PUT /admin/models/assignments/{ward}/{name}` | `system/WardwatchModel.u` | `{"version": "2.0.0"}` |
//! | `DELETE /admin/models/assignments/{ward}/{name}` | `system/WardwatchModel.d` | — |
//!
//! Refusals are FHIR OperationOutcomes with the reason (`cloud/src/error.rs`): 400 `invalid` for a bundle that
//! fails verification (bad signature, unknown release key, sha256 mismatch, manifest, version), 409-like
//! conflicts as 400 too (a version is immutable), 413 `too-costly` above the size limit. Every call, accepted or
//! refused, is written to the audit trail (resource type `WardwatchModel`, action `upload`, `assign` or `list`,
//! with the reason).
//!
//! **Unassigning** stops a ward's edges from pulling anything new for that model; it does not roll them back:
//! they keep running the version they run (an edge never installs an older version). To move a ward off a bad
//! version, upload the previous model again under a higher version and assign that.
//!
//! **Versions are never deleted.** A version that ran on a ward made predictions whose Provenance names its
//! sha256; the registry keeps its exact bytes so that any RiskAssessment can be traced to the model that made it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use serde::Deserialize;
use tracing::{info, warn};
use wardwatch_inference::ModelFiles;
use wardwatch_proto::ids::WardId;

use super::store::{NewModelVersion, StoreOutcome};
use super::{ModelRegistry, ModelRegistryStats, UploadRefusal};
use crate::api::{ApiState, RemoteAddr};
use crate::auth::{Permissions, Scope};
use crate::error::CloudError;
use crate::storage::AuditRecord;

/// The pseudo resource type of the registry's scopes.
pub const RESOURCE: &str = "WardwatchModel";
/// Where the routes live.
pub const PATH: &str = "/admin/models";

/// State of the registry routes.
#[derive(Debug, Clone)]
pub struct RegistryApi {
    /// The API's state (store, token verification).
    pub api: Arc<ApiState>,
    /// The registry, if configured.
    pub registry: Option<Arc<ModelRegistry>>,
}

/// The routes (with their state), to merge into the API router.
pub fn routes(state: RegistryApi) -> Router {
    Router::new()
        .route(PATH, get(list).post(upload))
        .route(
            &format!("{PATH}/assignments/{{ward}}/{{name}}"),
            put(assign).delete(unassign),
        )
        .with_state(state)
}

#[derive(Debug)]
struct Caller {
    client_id: String,
    scopes: Vec<String>,
    remote: String,
}

fn authenticate(
    state: &RegistryApi,
    headers: &HeaderMap,
    remote: Option<&RemoteAddr>,
) -> Result<Caller, CloudError> {
    let remote = remote.map_or_else(String::new, |r| r.0.to_string());
    let token = crate::auth::bearer_token(headers)
        .ok_or_else(|| CloudError::Unauthenticated("a Bearer token is required".into()))?;
    let p = state
        .api
        .auth
        .authenticate(token, wardwatch_proto::now_unix_ms())?;
    Ok(Caller {
        client_id: p.client_id,
        scopes: p.scopes,
        remote,
    })
}

fn require(c: &Caller, needed: Permissions, what: &str) -> Result<(), CloudError> {
    if c.scopes
        .iter()
        .any(|s| Scope::parse(s).is_ok_and(|s| s.allows(RESOURCE, needed)))
    {
        Ok(())
    } else {
        Err(CloudError::PermissionDenied(format!(
            "client {} has no granted scope allowing {what} (needs {}; granted: {})",
            c.client_id,
            match what {
                "uploading a model" => "system/WardwatchModel.c",
                "assigning a model to a ward" => "system/WardwatchModel.u",
                "unassigning a model from a ward" => "system/WardwatchModel.d",
                _ => "system/WardwatchModel.r",
            },
            c.scopes.join(" ")
        )))
    }
}

fn registry(state: &RegistryApi) -> Result<&Arc<ModelRegistry>, CloudError> {
    state.registry.as_ref().ok_or_else(|| {
        CloudError::NotFound(
            "the model registry is not configured on this server ([model_registry])".into(),
        )
    })
}

/// Writes the audit record of a registry call; a failure is logged, never returned.
async fn audit(
    state: &RegistryApi,
    client_id: &str,
    remote: &str,
    action: &str,
    what: &str,
    status: StatusCode,
    detail: &str,
) {
    let rec = AuditRecord {
        at_ms: wardwatch_proto::now_unix_ms(),
        client_id: client_id.to_string(),
        action: action.into(),
        resource_type: RESOURCE.into(),
        query: what.chars().take(2000).collect(),
        patients: String::new(),
        status: i32::from(status.as_u16()),
        remote: remote.to_string(),
    };
    let detail: String = detail.chars().take(2000).collect();
    if let Err(e) = state.api.store.audit_with_detail(&rec, &detail).await {
        tracing::error!(error = %e, client = %client_id, "audit record could not be written");
    }
}

/// Audits the outcome of a call (the caller if authenticated) and turns it into the response.
async fn finish(
    state: &RegistryApi,
    caller: Option<&Caller>,
    remote: Option<&RemoteAddr>,
    action: &str,
    what: &str,
    result: Result<(StatusCode, serde_json::Value), CloudError>,
) -> Response {
    let remote_text = caller.map_or_else(
        || remote.map_or_else(String::new, |r| r.0.to_string()),
        |c| c.remote.clone(),
    );
    let client = caller.map_or("", |c| c.client_id.as_str());
    match result {
        Ok((status, body)) => {
            audit(state, client, &remote_text, action, what, status, "").await;
            (status, axum::Json(body)).into_response()
        }
        Err(e) => {
            let status = e.http_status();
            warn!(client, action, what, error = %e, "model registry request refused");
            audit(
                state,
                client,
                &remote_text,
                action,
                what,
                status,
                &e.to_string(),
            )
            .await;
            e.into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    manifest: String,
    signature: String,
    model: String,
}

fn refuse(stats: &ModelRegistryStats, e: CloudError) -> CloudError {
    ModelRegistryStats::bump(&stats.uploads_refused);
    e
}

async fn upload(
    State(state): State<RegistryApi>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    body: Body,
) -> Response {
    let caller = match authenticate(&state, &headers, remote.as_deref()) {
        Ok(c) => c,
        Err(e) => return finish(&state, None, remote.as_deref(), "upload", PATH, Err(e)).await,
    };
    if let Err(e) = require(&caller, Permissions::CREATE, "uploading a model") {
        return finish(&state, Some(&caller), None, "upload", PATH, Err(e)).await;
    }
    let result = upload_inner(&state, &caller, body).await;
    let what = match &result {
        Ok((_, v)) => format!(
            "{} {}",
            v["name"].as_str().unwrap_or(""),
            v["version"].as_str().unwrap_or("")
        ),
        Err(_) => PATH.to_string(),
    };
    finish(&state, Some(&caller), None, "upload", &what, result).await
}

async fn upload_inner(
    state: &RegistryApi,
    caller: &Caller,
    body: Body,
) -> Result<(StatusCode, serde_json::Value), CloudError> {
    let reg = registry(state)?;
    let stats = &reg.stats;
    // base64 is 4/3 of the bytes; the manifest and signature are at most 1 MiB each.
    let limit = usize::try_from(reg.max_model_bytes() / 3 * 4 + (3 << 20)).unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        refuse(
            stats,
            CloudError::ResourceExhausted(format!(
                "upload body larger than {limit} bytes (model limit {} bytes) or unreadable: {e}",
                reg.max_model_bytes()
            )),
        )
    })?;
    let parsed: UploadBody = serde_json::from_slice(&bytes).map_err(|e| {
        refuse(
            stats,
            CloudError::InvalidArgument(
                UploadRefusal::Malformed(format!(
                    "expected {{\"manifest\", \"signature\", \"model\"}} as base64 strings: {e}"
                ))
                .to_string(),
            ),
        )
    })?;
    let b64 = |field: &str, text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| {
                refuse(
                    stats,
                    CloudError::InvalidArgument(
                        UploadRefusal::Malformed(format!("{field} is not standard base64: {e}"))
                            .to_string(),
                    ),
                )
            })
    };
    let files = ModelFiles {
        manifest: b64("manifest", &parsed.manifest)?,
        signature: b64("signature", &parsed.signature)?,
        model: b64("model", &parsed.model)?,
    };
    drop(parsed);
    let verified = reg.verify_upload(files).map_err(|e| {
        let kind = e.kind();
        let err = match &e {
            UploadRefusal::Bundle(wardwatch_inference::LoadError::TooLarge { .. }) => {
                CloudError::ResourceExhausted(format!("model refused ({kind}): {e}"))
            }
            _ => CloudError::InvalidArgument(format!("model refused ({kind}): {e}")),
        };
        refuse(stats, err)
    })?;
    let now = wardwatch_proto::now_unix_ms();
    let outcome = state
        .api
        .store
        .insert_model_version(&NewModelVersion {
            name: &verified.name,
            version: &verified.version,
            sha256: &verified.sha256,
            manifest: &verified.files.manifest,
            signature: &verified.files.signature,
            model: &verified.files.model,
            signed_by: &verified.signed_by,
            uploaded_by: &caller.client_id,
            uploaded_at_ms: now,
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "model registry: storing an upload failed");
            CloudError::Unavailable(format!("storage: {e}"))
        })?;
    let status = match outcome {
        StoreOutcome::Stored => StatusCode::CREATED,
        StoreOutcome::AlreadyStored => StatusCode::OK,
        StoreOutcome::Conflict { existing_sha256 } => {
            return Err(refuse(
                stats,
                CloudError::InvalidArgument(format!(
                    "model {} {} is already stored with sha256 {existing_sha256}; a version is immutable, upload a \
                     new version",
                    verified.name, verified.version
                )),
            ));
        }
    };
    ModelRegistryStats::bump(&stats.uploads_accepted);
    info!(name = %verified.name, version = %verified.version, sha256 = %verified.sha256,
        signed_by = %verified.signed_by, client = %caller.client_id, "model uploaded to the registry");
    Ok((
        status,
        serde_json::json!({
            "name": verified.name,
            "version": verified.version,
            "sha256": verified.sha256,
            "size_bytes": verified.files.model.len(),
            "signed_by": verified.signed_by,
            "uploaded_by": caller.client_id,
            "already_stored": status == StatusCode::OK,
        }),
    ))
}

async fn list(
    State(state): State<RegistryApi>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
) -> Response {
    let caller = match authenticate(&state, &headers, remote.as_deref()) {
        Ok(c) => c,
        Err(e) => return finish(&state, None, remote.as_deref(), "list", PATH, Err(e)).await,
    };
    if let Err(e) = require(&caller, Permissions::READ, "reading the model registry") {
        return finish(&state, Some(&caller), None, "list", PATH, Err(e)).await;
    }
    let result = async {
        registry(&state)?;
        let store_err =
            |e: crate::storage::StorageError| CloudError::Unavailable(format!("storage: {e}"));
        let versions = state
            .api
            .store
            .list_model_versions()
            .await
            .map_err(store_err)?;
        let assignments = state
            .api
            .store
            .model_assignments(None)
            .await
            .map_err(store_err)?;
        Ok((
            StatusCode::OK,
            serde_json::json!({ "versions": versions, "assignments": assignments }),
        ))
    }
    .await;
    finish(&state, Some(&caller), None, "list", PATH, result).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    version: String,
}

async fn assign(
    State(state): State<RegistryApi>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path((ward, name)): Path<(String, String)>,
    body: Body,
) -> Response {
    let what: String = format!("{ward} {name}").chars().take(300).collect();
    let caller = match authenticate(&state, &headers, remote.as_deref()) {
        Ok(c) => c,
        Err(e) => return finish(&state, None, remote.as_deref(), "assign", &what, Err(e)).await,
    };
    if let Err(e) = require(&caller, Permissions::UPDATE, "assigning a model to a ward") {
        return finish(&state, Some(&caller), None, "assign", &what, Err(e)).await;
    }
    let result = assign_inner(&state, &caller, &ward, &name, body).await;
    let what = match &result {
        Ok((_, v)) => format!("{what} {}", v["version"].as_str().unwrap_or("")),
        Err(_) => what,
    };
    finish(&state, Some(&caller), None, "assign", &what, result).await
}

async fn assign_inner(
    state: &RegistryApi,
    caller: &Caller,
    ward: &str,
    name: &str,
    body: Body,
) -> Result<(StatusCode, serde_json::Value), CloudError> {
    let reg = registry(state)?;
    let ward = WardId::new(ward)
        .map_err(|e| CloudError::InvalidArgument(format!("ward {ward:?}: {e}")))?;
    let bytes = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|e| CloudError::ResourceExhausted(format!("assignment body: {e}")))?;
    let body: AssignBody = serde_json::from_slice(&bytes).map_err(|e| {
        CloudError::InvalidArgument(format!("expected {{\"version\": \"x.y.z\"}}: {e}"))
    })?;
    let now = wardwatch_proto::now_unix_ms();
    let assigned = state
        .api
        .store
        .assign_model(ward.as_str(), name, &body.version, &caller.client_id, now)
        .await
        .map_err(|e| CloudError::Unavailable(format!("storage: {e}")))?;
    if !assigned {
        return Err(CloudError::NotFound(format!(
            "model {name} {} is not in the registry; upload it first",
            body.version
        )));
    }
    ModelRegistryStats::bump(&reg.stats.assignments);
    info!(ward = %ward, name, version = %body.version, client = %caller.client_id, "model assigned to ward");
    Ok((
        StatusCode::OK,
        serde_json::json!({ "ward": ward.as_str(), "name": name, "version": body.version }),
    ))
}

async fn unassign(
    State(state): State<RegistryApi>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    Path((ward, name)): Path<(String, String)>,
) -> Response {
    let what: String = format!("{ward} {name}").chars().take(300).collect();
    let caller = match authenticate(&state, &headers, remote.as_deref()) {
        Ok(c) => c,
        Err(e) => return finish(&state, None, remote.as_deref(), "unassign", &what, Err(e)).await,
    };
    if let Err(e) = require(
        &caller,
        Permissions::DELETE,
        "unassigning a model from a ward",
    ) {
        return finish(&state, Some(&caller), None, "unassign", &what, Err(e)).await;
    }
    let result = unassign_inner(&state, &caller, &ward, &name).await;
    let what = match &result {
        Ok((_, v)) => format!("{what} {}", v["version"].as_str().unwrap_or("")),
        Err(_) => what,
    };
    finish(&state, Some(&caller), None, "unassign", &what, result).await
}

async fn unassign_inner(
    state: &RegistryApi,
    caller: &Caller,
    ward: &str,
    name: &str,
) -> Result<(StatusCode, serde_json::Value), CloudError> {
    let reg = registry(state)?;
    let ward = WardId::new(ward)
        .map_err(|e| CloudError::InvalidArgument(format!("ward {ward:?}: {e}")))?;
    let removed = state
        .api
        .store
        .unassign_model(ward.as_str(), name)
        .await
        .map_err(|e| CloudError::Unavailable(format!("storage: {e}")))?;
    let Some(version) = removed else {
        return Err(CloudError::NotFound(format!(
            "ward {} has no assignment for model {name}",
            ward.as_str()
        )));
    };
    ModelRegistryStats::bump(&reg.stats.unassignments);
    info!(ward = %ward, name, %version, client = %caller.client_id, "model assignment removed from ward");
    Ok((
        StatusCode::OK,
        serde_json::json!({
            "ward": ward.as_str(),
            "name": name,
            "version": version,
            "unassigned": true,
            "note": "edges of the ward keep running the version they run; they pull nothing new for this model",
        }),
    ))
}
