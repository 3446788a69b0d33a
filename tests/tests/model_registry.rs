//! The model lifecycle (issue 5, part 3) end to end: a real cloud with its model registry and a real edge, in
//! this process, over the real mutual-TLS link and the real HTTPS API, on SQLite and PostgreSQL.
//!
//! Upload a signed v2 → assign it to the edge's ward → the edge pulls it, verifies it and swaps it in; the next
//! predictions name v2, and a restart keeps it. The cloud refuses tampered uploads (wrong hash, bad signature, too
//! large, no scope) with an OperationOutcome and audits them. A model the cloud accepts but the edge does not
//! trust leaves v2 serving and is reported; a downgrade is refused; an edge cannot see or fetch a model assigned
//! only to another ward.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use wardwatch::{
    CloudHandle, EdgeHandle, TestDatabase, cloud_config, dev_models, dev_setup, edge_config,
    https_client, repo_models_dir,
};
use wardwatch_cloud::config::ApiClient;
use wardwatch_cloud::model_registry::ModelRegistryConfig;
use wardwatch_edge::clinical::alarms::ConditionKey;
use wardwatch_edge::clinical::models::{ArtifactRequest, DeteriorationRequest, DeteriorationRow};
use wardwatch_edge::ml::inference::{SigningKey, sign_manifest, signature};
use wardwatch_edge::ml::pull::{PullOutcome, poll_once};
use wardwatch_edge::ml::runtime::{
    ARTIFACT_DIR, ARTIFACT_MODEL, DETERIORATION_DIR, DETERIORATION_MODEL,
};
use wardwatch_edge::ml::{
    ARTIFACT_WINDOW_MS, ArtifactFeatures, ContinuousSignal, DeteriorationFeatures,
    N_ARTIFACT_FEATURES, N_DETERIORATION_FEATURES,
};
use wardwatch_edge::node::Incoming;
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::model_distribution_client::ModelDistributionClient;
use wardwatch_proto::v1::{BedLocation, FetchModelRequest, ListAssignedRequest, VitalSign};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The committed bundle in `models/<dir>` relabelled as `version`, with bytes that differ per version: an unknown
/// protobuf field (number 1000) appended to the ONNX ModelProto, which ONNX readers skip. So each version has its
/// own sha256 while the graph stays the committed one.
fn bundle_version(dir: &str, version: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let src = repo_models_dir().join(dir);
    let mut model = std::fs::read(src.join("model.onnx"))?;
    let tag = version.as_bytes();
    model.extend_from_slice(&[0xC2, 0x3E]); // field 1000, wire type 2 (length-delimited)
    model.push(u8::try_from(tag.len())?);
    model.extend_from_slice(tag);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json"))?)?;
    manifest["version"] = version.into();
    manifest["sha256"] = sha256_hex(&model).into();
    Ok((model, serde_json::to_vec_pretty(&manifest)?))
}

/// The committed deterioration model relabelled as `version` (see [`bundle_version`]).
fn deterioration_version(version: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    bundle_version(DETERIORATION_DIR, version)
}

/// The version of the committed bundle in `models/<dir>` (what the edge runs before any pull).
fn committed_version(dir: &str) -> Result<String> {
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        repo_models_dir().join(dir).join("manifest.json"),
    )?)?;
    Ok(manifest["version"]
        .as_str()
        .context("manifest version")?
        .to_string())
}

fn upload_body(manifest: &[u8], signature: &[u8], model: &[u8]) -> serde_json::Value {
    serde_json::json!({ "manifest": b64(manifest), "signature": b64(signature), "model": b64(model) })
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    async fn upload(
        &self,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value)> {
        answer(self.http.post(&self.base).json(body), token).await
    }

    async fn assign(
        &self,
        token: &str,
        ward: &str,
        version: &str,
    ) -> Result<(u16, serde_json::Value)> {
        self.assign_model(token, ward, DETERIORATION_MODEL, version)
            .await
    }

    async fn assign_model(
        &self,
        token: &str,
        ward: &str,
        name: &str,
        version: &str,
    ) -> Result<(u16, serde_json::Value)> {
        let put = self
            .http
            .put(format!("{}/assignments/{ward}/{name}", self.base))
            .json(&serde_json::json!({ "version": version }));
        answer(put, token).await
    }

    /// `GET /admin/models`: the versions and assignments (fails on any status but 200).
    async fn list(&self, token: &str) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(&self.base)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn unassign(
        &self,
        token: &str,
        ward: &str,
        name: &str,
    ) -> Result<(u16, serde_json::Value)> {
        let delete = self
            .http
            .delete(format!("{}/assignments/{ward}/{name}", self.base));
        answer(delete, token).await
    }
}

/// Sends an administrator request with `token`: its status and JSON body (a result or an OperationOutcome).
async fn answer(request: reqwest::RequestBuilder, token: &str) -> Result<(u16, serde_json::Value)> {
    let r = request.bearer_auth(token).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// One artifact verdict scored through the edge's models, the path the alarm manager uses: names the model.
async fn artifact_verdict_model(edge: &EdgeHandle) -> Result<String> {
    let now = wardwatch_proto::now_unix_ms();
    let request = ArtifactRequest {
        key: ConditionKey {
            scope: "P1".into(),
            kind: 0,
            detail: "hr-high".into(),
        },
        patient_id: "P1".into(),
        features: ArtifactFeatures {
            values: [0.0; N_ARTIFACT_FEATURES],
            query: ContinuousSignal::HeartRate,
            window_start_unix_ms: now - ARTIFACT_WINDOW_MS,
            window_end_unix_ms: now,
        },
    };
    let results = edge
        .node
        .models()
        .score_artifact(vec![request])
        .await
        .map_err(|e| anyhow::anyhow!("artifact scoring: {e}"))?;
    let [result] = results.as_slice() else {
        bail!("one verdict expected, got {}", results.len());
    };
    ensure!(result.model.name == ARTIFACT_MODEL, "{:?}", result.model);
    ensure!(result.probability.is_finite());
    Ok(result.model.version.clone())
}

fn outcome_text(v: &serde_json::Value) -> String {
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    v["issue"][0]["diagnostics"]
        .as_str()
        .or(v["issue"][0]["details"]["text"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// One deterioration round scored through the edge's models, the path the engine uses: names the model.
async fn predict_with(edge: &EdgeHandle) -> Result<String> {
    let request = DeteriorationRequest {
        at_unix_ms: wardwatch_proto::now_unix_ms(),
        rows: vec![DeteriorationRow {
            patient_id: "P1".into(),
            location: BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            },
            features: DeteriorationFeatures {
                values: [0.0; N_DETERIORATION_FEATURES],
                window_start_unix_ms: 0,
                window_end_unix_ms: 1,
            },
            derived_from: Vec::new(),
        }],
    };
    let r = edge
        .node
        .models()
        .score_deterioration(request)
        .await
        .context("scoring")?;
    ensure!(r.probabilities.len() == 1);
    Ok(r.model.version)
}

/// A heart rate for patient P1 in ward 7A, so the engine keeps a feature buffer for P1 and scores it every round
/// (and at once after a model swap).
async fn feed_heart_rate(edge: &EdgeHandle, key: &str) -> Result<()> {
    let mdc = 147_842; // MDC_ECG_HEART_RATE
    let report = edge
        .node
        .accept(vec![Incoming {
            idempotency_key: key.into(),
            payload: Payload::Vital(VitalSign {
                patient_id: "P1".into(),
                location: Some(BedLocation {
                    ward: "7A".into(),
                    bed: "1".into(),
                }),
                device_id: "mon-1".into(),
                metric_mdc: mdc,
                value: 82.0,
                unit_ucum: wardwatch_proto::metrics::by_mdc(mdc)
                    .map_or("", |m| m.unit)
                    .into(),
                measured_at_unix_ms: wardwatch_proto::now_unix_ms(),
                ..Default::default()
            }),
        }])
        .await?;
    ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
    Ok(())
}

/// Waits until the cloud serves a FHIR search result (as text) containing `needle`.
async fn wait_for_fhir(http: &reqwest::Client, token: &str, url: &str, needle: &str) -> Result<()> {
    wardwatch::wait_until(Duration::from_secs(120), needle, || async {
        let found = wardwatch::fhir_search_all(http, token, url).await?;
        Ok(found.iter().any(|r| r.to_string().contains(needle)))
    })
    .await
}

fn engine_version(edge: &EdgeHandle) -> Option<String> {
    edge.node.engine().lock().ok().and_then(|e| {
        e.models()
            .and_then(|m| m.deterioration.as_ref())
            .map(|u| u.model.version.clone())
    })
}

async fn scenario(database_url: Option<String>) -> Result<()> {
    wardwatch::install_crypto();
    wardwatch::init_logging("warn");
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let setup = dev_setup(dir, &["edge-a", "edge-b"])?;
    let pki = dir.join("pki");
    let models_cfg = dev_models(&pki, &repo_models_dir(), &dir.join("edge-a").join("models"))?;
    let release =
        signature::parse_signing_key(&std::fs::read_to_string(pki.join("model-release-dev.key"))?)
            .map_err(|e| anyhow::anyhow!(e))?;
    // A release key the cloud trusts but the edge does not (e.g. another site's key added to the cloud only).
    let cloud_only = SigningKey::from_bytes(&[9u8; 32]);
    let release_keys = dir.join("cloud-release-keys.pub");
    std::fs::write(
        &release_keys,
        format!(
            "# dev release key\n{}\n# cloud-only key\n{}\n",
            hex(release.verifying_key().as_bytes()),
            hex(cloud_only.verifying_key().as_bytes())
        ),
    )?;

    let any = "127.0.0.1:0".parse()?;
    let mut cfg = cloud_config(
        &setup,
        &dir.join("cloud"),
        database_url,
        any,
        any,
        &[("edge-a", &["7A"]), ("edge-b", &["8B"])],
    )?;
    cfg.model_registry = Some(ModelRegistryConfig {
        release_keys,
        max_model_bytes: 1 << 20,
    });
    cfg.api_clients[0]
        .scopes
        .push("system/WardwatchModel.crud".into());
    let ehr_token = "ehr-only-static-token-0123456789abcdef";
    cfg.api_clients.push(ApiClient {
        client_id: "ehr-only".into(),
        scopes: vec!["system/*.cruds".into()],
        jwks: None,
        jwks_path: Some(setup.smart_jwks_path.clone()),
        token_sha256: Some(sha256_hex(ehr_token.as_bytes())),
    });
    let cloud = CloudHandle::start(cfg).await?;
    let admin = Admin {
        http: https_client(&setup.pki.ca_cert)?,
        base: format!("https://localhost:{}/admin/models", cloud.api_addr.port()),
    };
    let token = setup.token.as_str();

    let mut ecfg = edge_config(
        &setup,
        &dir.join("edge-a"),
        "edge-a",
        &["7A"],
        cloud.sync_addr,
    )?;
    let mut pulling = models_cfg.clone();
    // The task polls once at start (nothing is assigned yet); the test then polls itself, step by step.
    pulling.pull_interval_secs = Some(3600);
    // Deterioration rounds every 10 s (the engine's shortest), so the first prediction does not wait a minute.
    pulling.score_interval_secs = 10;
    ecfg.engine.models = Some(pulling);
    let edge = EdgeHandle::start(ecfg.clone()).await?;
    wardwatch::wait_until(Duration::from_secs(30), "first registry poll", || async {
        Ok(edge.node.models().pull_stats.polls.load(Ordering::Relaxed) >= 1)
    })
    .await?;
    let v1 = committed_version(DETERIORATION_DIR)?;
    let artifact_v1 = committed_version(ARTIFACT_DIR)?;
    assert_eq!(predict_with(&edge).await?, v1);
    feed_heart_rate(&edge, "hr-1").await?;
    let risk_url = format!("{}/RiskAssessment?patient=P1", cloud.fhir_base);
    wait_for_fhir(
        &admin.http,
        token,
        &risk_url,
        &format!("wardwatch-deterioration {v1}"),
    )
    .await?;

    // --- The cloud refuses bad uploads, each with its reason. ---
    let (v2_model, v2_manifest) = deterioration_version("2.0.0")?;
    let v2_sig = sign_manifest(&release, &v2_manifest);
    let good = upload_body(&v2_manifest, &v2_sig, &v2_model);
    // No registry scope (even system/*.cruds does not reach it).
    let (status, body) = admin.upload(ehr_token, &good).await?;
    assert_eq!(status, 403, "{body}");
    assert!(outcome_text(&body).contains("WardwatchModel.c"), "{body}");
    // No token at all.
    let r = admin.http.post(&admin.base).json(&good).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    // Model bytes changed after signing.
    let mut tampered = v2_model.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let (status, body) = admin
        .upload(token, &upload_body(&v2_manifest, &v2_sig, &tampered))
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(outcome_text(&body).contains("hash mismatch"), "{body}");
    // Manifest changed after signing (relabelled as 5.0.0).
    let relabelled = String::from_utf8(v2_manifest.clone())?.replace("2.0.0", "5.0.0");
    let (status, body) = admin
        .upload(
            token,
            &upload_body(relabelled.as_bytes(), &v2_sig, &v2_model),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(outcome_text(&body).contains("bad signature"), "{body}");
    // Signed by a key the cloud does not trust.
    let stranger = SigningKey::from_bytes(&[5u8; 32]);
    let (status, body) = admin
        .upload(
            token,
            &upload_body(
                &v2_manifest,
                &sign_manifest(&stranger, &v2_manifest),
                &v2_model,
            ),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(outcome_text(&body).contains("unknown key"), "{body}");
    // Larger than [model_registry] max_model_bytes (1 MiB here).
    let big = vec![0u8; (1 << 20) + 1];
    let mut big_manifest: serde_json::Value = serde_json::from_slice(&v2_manifest)?;
    big_manifest["sha256"] = sha256_hex(&big).into();
    let big_manifest = serde_json::to_vec(&big_manifest)?;
    let (status, body) = admin
        .upload(
            token,
            &upload_body(&big_manifest, &sign_manifest(&release, &big_manifest), &big),
        )
        .await?;
    assert_eq!(status, 413, "{body}");
    // Not JSON.
    let r = admin
        .http
        .post(&admin.base)
        .bearer_auth(token)
        .body("model.onnx")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let stats = cloud
        .model_registry_stats()
        .context("registry configured")?;
    assert_eq!(stats.uploads_accepted.load(Ordering::Relaxed), 0);
    assert_eq!(stats.uploads_refused.load(Ordering::Relaxed), 5);

    // --- A signed v2 is stored, assigned and pulled; the next predictions name v2. ---
    let (status, body) = admin.upload(token, &good).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["sha256"], sha256_hex(&v2_model));
    let (status, body) = admin.upload(token, &good).await?;
    assert_eq!(
        (status, &body["already_stored"]),
        (200, &true.into()),
        "{body}"
    );
    // A version is immutable: 2.0.0 with other (validly signed) bytes is refused.
    let (other_model, mut other_manifest) = deterioration_version("2.0.0-other")?;
    other_manifest = String::from_utf8(other_manifest)?
        .replace("2.0.0-other", "2.0.0")
        .into_bytes();
    let (status, body) = admin
        .upload(
            token,
            &upload_body(
                &other_manifest,
                &sign_manifest(&release, &other_manifest),
                &other_model,
            ),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(outcome_text(&body).contains("immutable"), "{body}");
    // Assigning a version that is not stored.
    let (status, _) = admin.assign(token, "7A", "4.0.0").await?;
    assert_eq!(status, 404);
    let (status, _) = admin.assign(ehr_token, "7A", "2.0.0").await?;
    assert_eq!(status, 403);
    let (status, body) = admin.assign(token, "7A", "2.0.0").await?;
    assert_eq!(status, 200, "{body}");

    let mut refused = HashSet::new();
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    assert!(
        matches!(outcomes.as_slice(), [(n, PullOutcome::Installed(id))] if n == DETERIORATION_MODEL && id.contains("2.0.0")),
        "{outcomes:?}"
    );
    assert_eq!(predict_with(&edge).await?, "2.0.0");
    assert_eq!(engine_version(&edge).as_deref(), Some("2.0.0"));
    // The engine's next round (due at once after the swap) makes risk events naming 2.0.0, synced to the cloud.
    wait_for_fhir(
        &admin.http,
        token,
        &risk_url,
        "wardwatch-deterioration 2.0.0",
    )
    .await?;
    let models = edge.node.models().clone();
    assert_eq!(models.pull_stats.installed.load(Ordering::Relaxed), 1);
    let det_status = &models.status()[0];
    assert!(
        det_status.running && det_status.detail.contains("2.0.0"),
        "{det_status:?}"
    );
    let pulled = dir.join("edge-a/models/pulled/deterioration");
    assert_eq!(std::fs::read(pulled.join("model.onnx"))?, v2_model);
    // Polling again changes nothing.
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    assert!(
        matches!(outcomes.as_slice(), [(_, PullOutcome::Current)]),
        "{outcomes:?}"
    );

    // --- Accepted by the cloud, refused by the edge (signed by a key the edge does not trust): v2 keeps
    // serving, and the edge says so. ---
    let (v3_model, v3_manifest) = deterioration_version("3.0.0")?;
    let (status, body) = admin
        .upload(
            token,
            &upload_body(
                &v3_manifest,
                &sign_manifest(&cloud_only, &v3_manifest),
                &v3_model,
            ),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(admin.assign(token, "7A", "3.0.0").await?.0, 200);
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    match outcomes.as_slice() {
        [(_, PullOutcome::Refused(reason))] => {
            assert!(reason.contains("unknown key"), "{reason}")
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    assert_eq!(predict_with(&edge).await?, "2.0.0");
    assert_eq!(engine_version(&edge).as_deref(), Some("2.0.0"));
    assert_eq!(models.pull_stats.refused.load(Ordering::Relaxed), 1);
    let det_status = &models.status()[0];
    assert!(
        det_status.running
            && det_status.detail.contains("2.0.0")
            && det_status.detail.contains("still running this model")
            && det_status.detail.contains("3.0.0")
            && det_status.detail.contains("unknown key"),
        "{det_status:?}"
    );
    // The refusal is a technical alarm that reaches the cloud (DetectedIssue code model-unavailable).
    wait_for_fhir(
        &admin.http,
        token,
        &format!("{}/DetectedIssue?code=model-unavailable", cloud.fhir_base),
        "Model update refused",
    )
    .await?;
    // The same refused version is not fetched again.
    let fetches = stats.fetches.load(Ordering::Relaxed);
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    assert!(
        matches!(outcomes.as_slice(), [(_, PullOutcome::SkippedRefused)]),
        "{outcomes:?}"
    );
    assert_eq!(stats.fetches.load(Ordering::Relaxed), fetches);

    // Validly signed by a key the edge trusts, but built for another feature layout (a renamed input column):
    // refused at the edge's interface check, 2.0.0 keeps serving.
    let (v4_model, v4_manifest) = deterioration_version("4.0.0")?;
    let mut v4: serde_json::Value = serde_json::from_slice(&v4_manifest)?;
    v4["features"][0]["name"] = "renamed_feature".into();
    let v4_manifest = serde_json::to_vec_pretty(&v4)?;
    let (status, body) = admin
        .upload(
            token,
            &upload_body(
                &v4_manifest,
                &sign_manifest(&release, &v4_manifest),
                &v4_model,
            ),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(admin.assign(token, "7A", "4.0.0").await?.0, 200);
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    match outcomes.as_slice() {
        [(_, PullOutcome::Refused(reason))] => {
            assert!(reason.contains("feature layout"), "{reason}")
        }
        other => bail!("expected an interface refusal, got {other:?}"),
    }
    assert_eq!(models.pull_stats.refused.load(Ordering::Relaxed), 2);
    assert_eq!(predict_with(&edge).await?, "2.0.0");
    assert!(
        !dir.join("edge-a/models/.staging/deterioration-4.0.0")
            .exists()
    );

    // --- A downgrade is refused. ---
    let v1_dir = repo_models_dir().join("deterioration");
    let v1_manifest = std::fs::read(v1_dir.join("manifest.json"))?;
    let v1_model = std::fs::read(v1_dir.join("model.onnx"))?;
    let (status, body) = admin
        .upload(
            token,
            &upload_body(
                &v1_manifest,
                &sign_manifest(&release, &v1_manifest),
                &v1_model,
            ),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(admin.assign(token, "7A", &v1).await?.0, 200);
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    match outcomes.as_slice() {
        [(_, PullOutcome::Refused(reason))] => {
            assert!(reason.contains("not newer"), "{reason}")
        }
        other => bail!("expected a downgrade refusal, got {other:?}"),
    }
    assert_eq!(
        models.pull_stats.downgrades_refused.load(Ordering::Relaxed),
        1
    );
    assert_eq!(predict_with(&edge).await?, "2.0.0");

    // --- The ward's assignment back to the model running resolves the refusals: the technical alarm is
    // cleared (DetectedIssue status final) and nothing is fetched. ---
    assert_eq!(admin.assign(token, "7A", "2.0.0").await?.0, 200);
    let fetches = stats.fetches.load(Ordering::Relaxed);
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    assert!(
        matches!(outcomes.as_slice(), [(_, PullOutcome::Current)]),
        "{outcomes:?}"
    );
    assert_eq!(stats.fetches.load(Ordering::Relaxed), fetches);
    assert!(
        refused.is_empty(),
        "refusals of the model forgotten: {refused:?}"
    );
    wait_for_fhir(
        &admin.http,
        token,
        &format!(
            "{}/DetectedIssue?code=model-unavailable&status=final",
            cloud.fhir_base
        ),
        "Model update resolved",
    )
    .await?;

    // --- An edge cannot see or fetch a model assigned only to another ward. ---
    let (v9_model, v9_manifest) = deterioration_version("9.0.0")?;
    let (status, _) = admin
        .upload(
            token,
            &upload_body(
                &v9_manifest,
                &sign_manifest(&release, &v9_manifest),
                &v9_model,
            ),
        )
        .await?;
    assert_eq!(status, 201);
    assert_eq!(admin.assign(token, "8B", "9.0.0").await?.0, 200);
    let mut client_a = ModelDistributionClient::new(wardwatch_edge::sync::connect(&ecfg).await?);
    let listed = client_a
        .list_assigned(ListAssignedRequest { wards: Vec::new() })
        .await?
        .into_inner()
        .models;
    assert!(listed.iter().all(|m| m.ward == "7A"), "{listed:?}");
    let err = client_a
        .list_assigned(ListAssignedRequest {
            wards: vec!["8B".into()],
        })
        .await
        .expect_err("a foreign ward is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = client_a
        .fetch_model(FetchModelRequest {
            name: DETERIORATION_MODEL.into(),
            version: "9.0.0".into(),
        })
        .await
        .expect_err("another ward's model is not served");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The edge of ward 8B does get it.
    let ecfg_b = edge_config(
        &setup,
        &dir.join("edge-b"),
        "edge-b",
        &["8B"],
        cloud.sync_addr,
    )?;
    let mut client_b = ModelDistributionClient::new(wardwatch_edge::sync::connect(&ecfg_b).await?);
    let mut stream = client_b
        .fetch_model(FetchModelRequest {
            name: DETERIORATION_MODEL.into(),
            version: "9.0.0".into(),
        })
        .await?
        .into_inner();
    let mut chunks = 0;
    while stream.message().await?.is_some() {
        chunks += 1;
    }
    assert!(chunks >= 2, "a header and the model bytes");
    // The 8B assignment never reaches edge-a's models.
    poll_once(&edge.node, &mut refused).await?;
    assert_eq!(predict_with(&edge).await?, "2.0.0");

    // --- The registry lists what it holds and where it is assigned (read scope needed). ---
    let r = admin
        .http
        .get(&admin.base)
        .bearer_auth(ehr_token)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let listing = admin.list(token).await?;
    let versions: Vec<&str> = listing["versions"]
        .as_array()
        .context("versions")?
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    for v in [v1.as_str(), "2.0.0", "3.0.0", "4.0.0", "9.0.0"] {
        assert!(versions.contains(&v), "{listing}");
    }
    let assignments: Vec<(String, String)> = listing["assignments"]
        .as_array()
        .context("assignments")?
        .iter()
        .map(|a| {
            (
                a["ward"].as_str().unwrap_or_default().to_string(),
                a["version"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        assignments,
        vec![("7A".into(), "2.0.0".into()), ("8B".into(), "9.0.0".into())],
        "7A back on 2.0.0 after the refused downgrade to the committed version"
    );

    // --- Every upload and assignment is audited, refusals included. ---
    assert!(cloud.store.audit_count("ehr-only").await? >= 2);
    let audited = cloud.store.audit_count(wardwatch::DEV_CLIENT_ID).await?;
    assert!(audited >= 14, "{audited} audit records");

    // --- A restart runs the pulled version, not the original. ---
    edge.stop().await;
    let mut restart = ecfg.clone();
    restart.engine.models = Some(models_cfg.clone());
    let edge = EdgeHandle::start(restart).await?;
    assert_eq!(predict_with(&edge).await?, "2.0.0");

    // --- The artifact model takes updates the same way: a signed 2.0.0 pulled, verified and swapped in; its
    // verdicts name it, and it is kept for restarts. ---
    assert_eq!(artifact_verdict_model(&edge).await?, artifact_v1);
    let (a2_model, a2_manifest) = bundle_version(ARTIFACT_DIR, "2.0.0")?;
    let (status, body) = admin
        .upload(
            token,
            &upload_body(
                &a2_manifest,
                &sign_manifest(&release, &a2_manifest),
                &a2_model,
            ),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin
        .assign_model(token, "7A", ARTIFACT_MODEL, "2.0.0")
        .await?;
    assert_eq!(status, 200, "{body}");
    let mut refused = HashSet::new();
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    assert!(
        outcomes.iter().any(|(n, o)| n == ARTIFACT_MODEL
            && matches!(o, PullOutcome::Installed(id) if id.contains("2.0.0"))),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|(n, o)| n == DETERIORATION_MODEL && matches!(o, PullOutcome::Current)),
        "{outcomes:?}"
    );
    assert_eq!(artifact_verdict_model(&edge).await?, "2.0.0");
    assert_eq!(
        std::fs::read(dir.join("edge-a/models/pulled/artifact/model.onnx"))?,
        a2_model
    );

    // --- Unassigning: needs the delete scope, names what was assigned, is audited; the edge keeps running
    // the version it runs (no rollback) and pulls nothing for that model any more. ---
    let audited_before = cloud.store.audit_count(wardwatch::DEV_CLIENT_ID).await?;
    let (status, body) = admin.unassign(ehr_token, "7A", ARTIFACT_MODEL).await?;
    assert_eq!(status, 403, "{body}");
    assert!(outcome_text(&body).contains("WardwatchModel.d"), "{body}");
    let (status, body) = admin.unassign(token, "7A", ARTIFACT_MODEL).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "2.0.0", "{body}");
    let (status, body) = admin.unassign(token, "7A", ARTIFACT_MODEL).await?;
    assert_eq!(status, 404, "{body}");
    assert!(outcome_text(&body).contains("no assignment"), "{body}");
    let outcomes = poll_once(&edge.node, &mut refused).await?;
    assert!(
        outcomes.iter().all(|(n, _)| n != ARTIFACT_MODEL),
        "nothing assigned for the artifact model: {outcomes:?}"
    );
    assert_eq!(artifact_verdict_model(&edge).await?, "2.0.0");
    let listing = admin.list(token).await?;
    let artifact_assigned = listing["assignments"]
        .as_array()
        .context("assignments")?
        .iter()
        .any(|a| a["name"] == ARTIFACT_MODEL);
    assert!(!artifact_assigned, "{listing}");
    let versions_kept = listing["versions"]
        .as_array()
        .context("versions")?
        .iter()
        .any(|v| v["name"] == ARTIFACT_MODEL && v["version"] == "2.0.0");
    assert!(versions_kept, "versions are never deleted: {listing}");
    let audited = cloud.store.audit_count(wardwatch::DEV_CLIENT_ID).await?;
    // Unassigned, not found and listed by the administrator (the refused call is the EHR client's).
    assert!(
        audited >= audited_before + 3,
        "{audited_before} -> {audited}"
    );
    edge.stop().await;

    // A restart runs both pulled versions.
    let mut restart = ecfg.clone();
    restart.engine.models = Some(models_cfg);
    let edge = EdgeHandle::start(restart).await?;
    assert_eq!(predict_with(&edge).await?, "2.0.0");
    assert_eq!(artifact_verdict_model(&edge).await?, "2.0.0");
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lifecycle_sqlite() -> Result<()> {
    scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lifecycle_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("model_registry").await? else {
        return Ok(()); // TestDatabase printed a SKIPPED line (and fails instead on CI).
    };
    let result = scenario(Some(db.url.clone())).await;
    db.drop_now().await?;
    result
}

#[test]
fn the_test_bundles_differ_per_version() -> Result<()> {
    let (a, _) = deterioration_version("2.0.0")?;
    let (b, _) = deterioration_version("3.0.0")?;
    ensure!(sha256_hex(&a) != sha256_hex(&b));
    ensure!(
        Path::new(&repo_models_dir())
            .join("deterioration/model.onnx")
            .is_file()
    );
    Ok(())
}
