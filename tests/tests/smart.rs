//! SMART on FHIR Backend Services and the AuditEvent API, end to end against a real cloud over TLS: a good client
//! assertion gets a token that searches; every kind of bad assertion is refused with the right OAuth error; the
//! replay cache survives a restart; access tokens expire; scopes are enforced per resource type; the audit trail
//! is queryable by administrators only, and validates as FHIR. Plus a third-party Python client (PyJWT + fhirpy)
//! doing the whole flow as an EHR would. Runs on SQLite, and on PostgreSQL where a server is reachable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wardwatch::{
    CloudHandle, DEV_CLIENT_ID, DEV_CLIENT_SCOPES, DevSetup, TestDatabase, cloud_config, dev_setup,
    fhir_search_all, https_client, smart_only, smart_token,
};
use wardwatch_cloud::CloudConfig;
use wardwatch_cloud::auth::client::{ClientSigner, dev_client_key, token_request_form};
use wardwatch_cloud::auth::jsonwebtoken::{self, Algorithm};
use wardwatch_cloud::config::ApiClient;
use wardwatch_cloud::storage::IngestItem;
use wardwatch_proto::v1::edge_event::Payload;

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";
const HEART_RATE: &str = "http://loinc.org|8867-4";

/// A 2048-bit RSA key made for this test suite only (PKCS#1 PEM) and registered nowhere else: the RS384 client.
const TEST_RSA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAv4M6pwSj7TTchIXsLS1wpc550ij97DMuYY21WY7Zzj3Ny/Ea
mhVhg3MHw8j6C5atVHfcHeO1GXy1pHZYb2YeSkC7kowNMf0B++H66nnxruxcXzvA
/wn2tFPkgXjmqGcFVVFs03rjubVbRp5S7GFfGlhbZV8X4mjm05XZwVM/ggAQ5Uhi
0nMh4ut8SjHKHGHTiFbmxfc7NOJ9mvNFUkkIEfTuUI7Gj8hjepdrhEtGXSfq6QMv
yFCjcyKsI/e+vZJ+OoQP0lrucBgCEMkE0iN7MsTf777Fz1u9NRlp/fSb/9mp117b
WgSRTag+BCBbFX96825Yt4qhVYOIYH/RwEG4LQIDAQABAoIBABsUUG8M1CwGiTbQ
4/IIZpD/VtDdXHgxTXncSnwBG7GSoh6X9zG527m1QnAP4zFPyy7yKsTsLW+O53U7
iaoox5gquosQdA4xLv5hd/P/LaoVAEO0BIhbbY+WfC1FfeHqfUHQ22E0023vI5qi
6OlFJGgqfbPiBBPOzvK0kd+I6KY2IsJldPtz9RtwxWaeF3RQt/9PFuF2/TI+ANUI
SDE48RErovX/ztuxT7ubTBLodLtsFy0jKfg7p9Qp91Yd8ylEsSxaq9uUg+ZhcK07
apaUzDWYEjeSuQG1jxeBvlsEGA+Rit0ZDWBBNJozP+rku5lK+usBAQH+jKB0p9MA
l2jBniECgYEA9DUYusVeSU8NoAgz03kZGHiPz/7yRShOvNvWSsk00BhuX5Ffsx0y
2bVBDWebuqj4TZNuIrk7abRoLIRvJrqi/CnORbsrAmfCoiwoCckxAzgqKZEzZJ5u
e83RnG8FSzngB/5VC3aYAu0hN6L8QSR63bYHDJmg2LlOSfhV90lBeI0CgYEAyMK3
jOXHWPTyUI0QoSVazZV4Oe+8fNlYxum4/QIBrkWEpdaN/qcBiu7ymz3wdIlEfW1i
2izhcIgcgeZmNoAuNodPsysL8K0xqPHBXqcyaf1RVkM5bs/8jwXV5jiLPU58A2rw
SWQtlJ28dOKQI3i716lhaambjunz3CUeTSgtZiECgYAsYTHbT17xJ6KsQJFajxlW
byKDhCt3EfotLC5nbOViI+57A6pGnLnPAreNvhR4+ZgWUQKk4NDBRv3fiTnB6g0Q
knBgD8GjMEQYwLmN/bggg6Z142NZl8kwSpkbOrnVj/D8wuWlram2bm2o9L+u/vgt
LpVdXtXyTMrDepP02qVBSQKBgDyPCAE3euepk8Kams6RTw++q7KGT4w1n+L4s7WW
Ol2QWNARpWmQhRWcuI/9oh/1HDTdnzkC2sowNLE2h9Se29HVBUSdko96HwXATz03
ICz6neNwic2UbbHS58/3dID8wMnjIzJwRpOS9Tso8KPSko8eZ+UQpXz5s3bPt5E8
sl0hAoGBAJsuq9shK4tByTP8XbOv1TCqDD1IjLIwJT1OFx5ul6qIA8MOEhcHGUwL
FdOR864m8KHBHEn4t76Mzl/aBZaimQYy7HLXHmQ+EIEIJAX66Ny18dYjWdSPsdeW
sf9mQGgGTZ+VhnECWl+TWbfbky4J2Fakbor3O1kLxs3UiSLw8iir
-----END RSA PRIVATE KEY-----
";

/// A cloud with four clients: `dev-ehr` (ES384, Observation and Device, JWKS from a file), `ehr-rsa` (RS384,
/// Observation only), `ehr-wild` (ES384, `system/*.rs`) and `auditor` (ES384, `system/AuditEvent.rs`).
struct Fixture {
    dir: tempfile::TempDir,
    setup: DevSetup,
    config: CloudConfig,
    cloud: CloudHandle,
    http: reqwest::Client,
    rsa: ClientSigner,
    wild: ClientSigner,
    auditor: ClientSigner,
}

impl Fixture {
    async fn start(database_url: Option<String>, ttl_secs: u64, api: SocketAddr) -> Result<Self> {
        wardwatch::install_crypto();
        let dir = tempfile::tempdir()?;
        let setup = dev_setup(dir.path(), &[EDGE])?;
        let rsa = ClientSigner::from_pem(
            "ehr-rsa",
            Algorithm::RS384,
            "rsa-1",
            TEST_RSA_KEY.as_bytes(),
        )?;
        let pki = dir.path().join("pki");
        let wild = dev_client_key("ehr-wild", "wild-1", &pki.join("ehr-wild.key"))?;
        let auditor = dev_client_key("auditor", "audit-1", &pki.join("auditor.key"))?;
        let mut config = cloud_config(
            &setup,
            &dir.path().join("cloud"),
            database_url,
            "127.0.0.1:0".parse()?,
            api,
            &[(EDGE, &[WARD])],
        )?;
        smart_only(&mut config);
        config.api.access_token_ttl_secs = ttl_secs;
        for (signer, scopes) in [
            (&rsa, "system/Observation.rs"),
            (&wild, "system/*.rs"),
            (&auditor, "system/AuditEvent.rs"),
        ] {
            config.api_clients.push(ApiClient {
                client_id: signer.client_id().to_string(),
                scopes: scopes.split(' ').map(ToString::to_string).collect(),
                jwks: Some(serde_json::to_string(&signer.public_jwks())?),
                jwks_path: None,
                token_sha256: None,
            });
        }
        let cloud = CloudHandle::start(config.clone()).await?;
        let http = https_client(&setup.pki.ca_cert)?;
        Ok(Self {
            dir,
            setup,
            config,
            cloud,
            http,
            rsa,
            wild,
            auditor,
        })
    }

    /// Stores `n` simulated vital signs (as if synced by the edge) and returns a patient with heart rates.
    async fn seed(&self, n: usize) -> Result<String> {
        let vitals = wardwatch::simulated_vitals(WARD, 3, 7, n);
        let patient = vitals
            .iter()
            .find_map(|v| match &v.payload {
                Payload::Vital(v) => Some(v.patient_id.clone()),
                _ => None,
            })
            .context("no vital sign simulated")?;
        let items: Vec<IngestItem> = vitals
            .into_iter()
            .zip(1u64..)
            .map(|(v, seq)| IngestItem {
                sequence: seq,
                idempotency_key: v.idempotency_key,
                outcome: Ok(v.payload),
            })
            .collect();
        self.cloud.store.ingest(EDGE, &items).await?;
        Ok(patient)
    }

    async fn token(&self, signer: &ClientSigner, scope: &str) -> Result<String> {
        Ok(
            smart_token(&self.http, &self.cloud.token_endpoint, signer, scope)
                .await?
                .access_token,
        )
    }

    /// Posts a token request form; returns status, JSON body and headers.
    async fn post_token(
        &self,
        form: String,
    ) -> Result<(StatusCode, Value, reqwest::header::HeaderMap)> {
        self.post_token_as(form, "application/x-www-form-urlencoded")
            .await
    }

    async fn post_token_as(
        &self,
        form: String,
        content_type: &str,
    ) -> Result<(StatusCode, Value, reqwest::header::HeaderMap)> {
        let r = self
            .http
            .post(&self.cloud.token_endpoint)
            .header("content-type", content_type)
            .body(form)
            .send()
            .await?;
        let (status, headers) = (r.status(), r.headers().clone());
        Ok((status, r.json().await?, headers))
    }

    /// GET `path` under the FHIR base; returns status, JSON body and headers.
    async fn get(
        &self,
        path: &str,
        token: &str,
    ) -> Result<(StatusCode, Value, reqwest::header::HeaderMap)> {
        let r = self
            .http
            .get(format!("{}{path}", self.cloud.fhir_base))
            .bearer_auth(token)
            .send()
            .await?;
        let (status, headers) = (r.status(), r.headers().clone());
        Ok((status, r.json().await?, headers))
    }

    /// Claims of a good assertion of `client_id`, to be spoiled by a test.
    fn claims(&self, client_id: &str) -> Value {
        let now = wardwatch_proto::now_unix_ms() / 1000;
        json!({
            "iss": client_id, "sub": client_id, "aud": self.cloud.token_endpoint,
            "exp": now + 120, "iat": now, "jti": format!("jti-{}", rand_hex()),
        })
    }
}

fn rand_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// The OperationOutcome issue code of an error body.
fn issue_code(body: &Value) -> &str {
    body["issue"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_assertion_gets_a_token_that_searches() -> Result<()> {
    let f = Fixture::start(None, 300, any()).await?;
    let patient = f.seed(300).await?;

    // Discovery is public.
    let d: Value = f
        .http
        .get(format!(
            "{}/.well-known/smart-configuration",
            f.cloud.fhir_base
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(d["token_endpoint"], f.cloud.token_endpoint);
    assert_eq!(d["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    for cap in ["client-confidential-asymmetric", "permission-v2"] {
        assert!(
            d["capabilities"]
                .as_array()
                .is_some_and(|c| c.contains(&json!(cap))),
            "{d}"
        );
    }
    assert!(
        d["scopes_supported"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("system/Observation.rs")))
    );

    // ES384 (dev-ehr, JWKS from a file) and RS384 (ehr-rsa, inline JWKS).
    let form = f
        .setup
        .smart_client
        .token_request(&f.cloud.token_endpoint, DEV_CLIENT_SCOPES)?;
    let (status, body, headers) = f.post_token(form).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], DEV_CLIENT_SCOPES);
    assert_eq!(headers["cache-control"], "no-store");
    let es = body["access_token"]
        .as_str()
        .context("access_token")?
        .to_string();
    let rs = f.token(&f.rsa, "system/Observation.read").await?;

    for token in [&es, &rs] {
        let (status, bundle, _) = f
            .get(
                &format!("/Observation?patient={patient}&code={HEART_RATE}&_count=5"),
                token,
            )
            .await?;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        let entries = bundle["entry"].as_array().context("entries")?;
        assert!(!entries.is_empty(), "{bundle}");
        for e in entries {
            assert_eq!(
                e["resource"]["subject"]["identifier"]["value"],
                json!(patient)
            );
        }
    }
    let (status, device, _) = f.get("/Device/mon-7A-1", &es).await?;
    assert!(
        status == StatusCode::OK || status == StatusCode::NOT_FOUND,
        "{device}"
    );
    assert_ne!(issue_code(&device), "forbidden");
    f.cloud.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_assertions_and_requests_get_the_right_oauth_error() -> Result<()> {
    let f = Fixture::start(None, 300, any()).await?;
    let me = &f.setup.smart_client;
    let ep = f.cloud.token_endpoint.clone();
    let scope = "system/Observation.rs";
    let now = wardwatch_proto::now_unix_ms() / 1000;
    let spoil = |edit: &dyn Fn(&mut Value)| -> Result<String> {
        let mut c = f.claims(DEV_CLIENT_ID);
        edit(&mut c);
        Ok(me.sign(&c)?)
    };
    let other_key = dev_client_key(
        DEV_CLIENT_ID,
        wardwatch::DEV_CLIENT_KID,
        &f.dir.path().join("impostor.key"),
    )?;
    let good = me.assertion(&ep, 60)?;
    let payload = good.split('.').nth(1).context("payload")?;
    // {"alg":"none","typ":"JWT"}
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    // HS256 keyed with the client's public JWKS: the classic algorithm-confusion forgery.
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &f.claims(DEV_CLIENT_ID),
        &jsonwebtoken::EncodingKey::from_secret(
            serde_json::to_string(&me.public_jwks())?.as_bytes(),
        ),
    )?;

    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "expired",
            token_request_form(
                &spoil(&|c| {
                    c["exp"] = json!(now - 120);
                    c["iat"] = json!(now - 300);
                })?,
                scope,
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "exp too far ahead",
            token_request_form(&spoil(&|c| c["exp"] = json!(now + 3600))?, scope),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "no exp",
            token_request_form(
                &spoil(&|c| {
                    c.as_object_mut().map(|o| o.remove("exp"));
                })?,
                scope,
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "no jti",
            token_request_form(
                &spoil(&|c| {
                    c.as_object_mut().map(|o| o.remove("jti"));
                })?,
                scope,
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "wrong aud",
            token_request_form(
                &spoil(&|c| c["aud"] = json!(format!("{}/other", f.cloud.fhir_base)))?,
                scope,
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "sub is not iss",
            token_request_form(&spoil(&|c| c["sub"] = json!("ehr-rsa"))?, scope),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "unknown client",
            token_request_form(
                &spoil(&|c| {
                    c["iss"] = json!("nobody");
                    c["sub"] = json!("nobody");
                })?,
                scope,
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "wrong signature",
            token_request_form(&other_key.assertion(&ep, 60)?, scope),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "alg none",
            token_request_form(&alg_none, scope),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "alg HS256",
            token_request_form(&hs256, scope),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "not a JWT",
            token_request_form("abc.def", scope),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "scope not allowed",
            token_request_form(
                &me.assertion(&ep, 60)?,
                "system/Observation.rs system/AuditEvent.rs",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "patient scope",
            token_request_form(&me.assertion(&ep, 60)?, "patient/Observation.rs"),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "no scope",
            token_request_form(&me.assertion(&ep, 60)?, ""),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "password grant",
            format!("grant_type=password&username=a&password=b&scope={scope}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "no grant_type",
            "scope=system%2FObservation.rs".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "no client authentication",
            "grant_type=client_credentials&scope=system%2FObservation.rs".to_string(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "wrong assertion type",
            token_request_form(&me.assertion(&ep, 60)?, scope)
                .replace("jwt-bearer", "saml2-bearer"),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "repeated parameter",
            format!(
                "{}&scope=system%2FDevice.rs",
                token_request_form(&me.assertion(&ep, 60)?, scope)
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (what, form, status, error) in cases {
        let (got, body, headers) = f.post_token(form).await?;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{what}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}: {body}"
        );
        assert_eq!(headers["cache-control"], "no-store", "{what}");
    }
    let (got, body, _) = f
        .post_token_as(me.token_request(&ep, scope)?, "application/json")
        .await?;
    assert_eq!(
        (got, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{body}"
    );

    // The same assertion twice: the second is a replay.
    let once = token_request_form(&me.assertion(&ep, 60)?, scope);
    let (first, body, _) = f.post_token(once.clone()).await?;
    assert_eq!(first, StatusCode::OK, "{body}");
    let (second, body, _) = f.post_token(once).await?;
    assert_eq!(
        (second, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("jti")),
        "{body}"
    );
    f.cloud.stop().await;
    Ok(())
}

/// A restart neither re-opens the replay window nor forgets issued tokens (both are in the database); a
/// restart without a client revokes that client's tokens.
async fn replay_cache_and_tokens_survive_a_restart(database_url: Option<String>) -> Result<()> {
    // The same port after the restart: the token endpoint URL, and so the assertion's aud, stays the same.
    let api = wardwatch::free_port()?;
    let f = Fixture::start(database_url, 300, api).await?;
    let patient = f.seed(60).await?;
    let form = f
        .setup
        .smart_client
        .token_request(&f.cloud.token_endpoint, DEV_CLIENT_SCOPES)?;
    let (status, body, _) = f.post_token(form.clone()).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().context("token")?.to_string();
    let rsa_token = f.token(&f.rsa, "system/Observation.rs").await?;

    let Fixture {
        config,
        cloud,
        http,
        dir: _dir,
        ..
    } = f;
    cloud.stop().await;
    let cloud = CloudHandle::start(config.clone()).await?;
    let r = http
        .get(format!(
            "{}/Observation?patient={patient}&_count=1",
            cloud.fhir_base
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the token issued before the restart"
    );
    let r = http
        .post(&cloud.token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("jti")),
        "replay after restart: {body}"
    );
    cloud.stop().await;

    // Removing a client and restarting revokes the tokens it already holds.
    let mut config = config;
    config.api_clients.retain(|c| c.client_id != "ehr-rsa");
    let cloud = CloudHandle::start(config).await?;
    let search = format!("{}/Observation?_count=1", cloud.fhir_base);
    let status = |t: String| {
        let (http, search) = (http.clone(), search.clone());
        async move { Ok::<_, anyhow::Error>(http.get(search).bearer_auth(t).send().await?.status()) }
    };
    assert_eq!(status(rsa_token).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(status(token).await?, StatusCode::OK);
    cloud.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_and_tokens_survive_a_restart_sqlite() -> Result<()> {
    replay_cache_and_tokens_survive_a_restart(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_and_tokens_survive_a_restart_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("smart_restart").await? else {
        return Ok(());
    };
    let r = replay_cache_and_tokens_survive_a_restart(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_expire() -> Result<()> {
    let f = Fixture::start(None, 1, any()).await?;
    let token = f.token(&f.setup.smart_client, DEV_CLIENT_SCOPES).await?;
    let (status, body, _) = f.get("/Observation?_count=1", &token).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (status, body, headers) = f.get("/Observation?_count=1", &token).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(issue_code(&body), "login");
    assert!(body.to_string().contains("expired"), "{body}");
    assert!(headers.contains_key("www-authenticate"));
    // A fresh token works again.
    let token = f.token(&f.setup.smart_client, DEV_CLIENT_SCOPES).await?;
    assert_eq!(
        f.get("/Observation?_count=1", &token).await?.0,
        StatusCode::OK
    );
    f.cloud.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced_per_resource_type() -> Result<()> {
    let f = Fixture::start(None, 300, any()).await?;
    let dev = f.token(&f.setup.smart_client, DEV_CLIENT_SCOPES).await?;
    let obs_only = f.token(&f.rsa, "system/Observation.rs").await?;
    let wild = f.token(&f.wild, "system/*.rs").await?;
    let narrowed = f.token(&f.setup.smart_client, "system/Device.rs").await?;
    let auditor = f.token(&f.auditor, "system/AuditEvent.rs").await?;
    let cases: Vec<(&str, &str, &str, StatusCode)> = vec![
        ("dev-ehr", &dev, "/Observation?_count=1", StatusCode::OK),
        ("dev-ehr", &dev, "/Device/mon-7A-1", StatusCode::NOT_FOUND),
        ("dev-ehr", &dev, "/AuditEvent", StatusCode::FORBIDDEN),
        (
            "ehr-rsa",
            &obs_only,
            "/Observation?_count=1",
            StatusCode::OK,
        ),
        (
            "ehr-rsa",
            &obs_only,
            "/Observation/edge-7a.1",
            StatusCode::NOT_FOUND,
        ),
        (
            "ehr-rsa",
            &obs_only,
            "/Device/mon-7A-1",
            StatusCode::FORBIDDEN,
        ),
        ("ehr-rsa", &obs_only, "/AuditEvent", StatusCode::FORBIDDEN),
        ("ehr-wild", &wild, "/Observation?_count=1", StatusCode::OK),
        ("ehr-wild", &wild, "/Device/mon-7A-1", StatusCode::NOT_FOUND),
        ("ehr-wild", &wild, "/AuditEvent", StatusCode::FORBIDDEN),
        (
            "dev-ehr narrowed to Device",
            &narrowed,
            "/Observation?_count=1",
            StatusCode::FORBIDDEN,
        ),
        (
            "dev-ehr narrowed to Device",
            &narrowed,
            "/Device/mon-7A-1",
            StatusCode::NOT_FOUND,
        ),
        (
            "auditor",
            &auditor,
            "/Observation?_count=1",
            StatusCode::FORBIDDEN,
        ),
        ("auditor", &auditor, "/AuditEvent?_count=1", StatusCode::OK),
        (
            "static development token (off)",
            &f.setup.token,
            "/Observation?_count=1",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "garbage token",
            "not-a-token",
            "/Observation?_count=1",
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (who, token, path, want) in cases {
        let (status, body, _) = f.get(path, token).await?;
        assert_eq!(status, want, "{who} GET {path}: {body}");
        match want {
            StatusCode::FORBIDDEN => assert_eq!(issue_code(&body), "forbidden", "{who} {path}"),
            StatusCode::UNAUTHORIZED => assert_eq!(issue_code(&body), "login", "{who} {path}"),
            _ => {}
        }
    }
    // A wildcard client cannot even ask for the audit trail.
    let (status, body, _) = f
        .post_token(
            f.wild
                .token_request(&f.cloud.token_endpoint, "system/AuditEvent.rs")?,
        )
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{body}"
    );
    f.cloud.stop().await;
    Ok(())
}

/// Token issuance, refusals, searches and reads all end up in the audit trail, which only `auditor` can read,
/// filtered by date and agent and paged; every AuditEvent validates.
async fn audit_trail_is_queryable_by_admins_only(database_url: Option<String>) -> Result<()> {
    let f = Fixture::start(database_url, 300, any()).await?;
    let start_ms = wardwatch_proto::now_unix_ms();
    let patient = f.seed(120).await?;
    let dev = f.token(&f.setup.smart_client, DEV_CLIENT_SCOPES).await?;
    let rsa = f.token(&f.rsa, "system/Observation.rs").await?;
    for _ in 0..3 {
        let (s, b, _) = f
            .get(&format!("/Observation?patient={patient}&_count=2"), &dev)
            .await?;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert_eq!(
        f.get("/Device/mon-7A-1", &rsa).await?.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        f.get("/Observation", "nope").await?.0,
        StatusCode::UNAUTHORIZED
    );
    let mut bad = f.claims("nobody");
    bad["sub"] = json!("nobody");
    let (s, _, _) = f
        .post_token(token_request_form(
            &f.setup.smart_client.sign(&bad)?,
            "system/Observation.rs",
        ))
        .await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = f
        .post_token(token_request_form(
            &f.setup
                .smart_client
                .assertion(&f.cloud.token_endpoint, 60)?,
            "system/AuditEvent.rs",
        ))
        .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(f.get("/AuditEvent", &dev).await?.0, StatusCode::FORBIDDEN);
    let end_ms = wardwatch_proto::now_unix_ms() + 1;

    let auditor = f.token(&f.auditor, "system/AuditEvent.rs").await?;
    let iso = |ms: i64| -> Result<String> {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)?;
        Ok(t.format(&time::format_description::well_known::Rfc3339)?)
    };
    let base = &f.cloud.fhir_base;
    let all = fhir_search_all(
        &f.http,
        &auditor,
        &format!(
            "{base}/AuditEvent?date=ge{}&date=le{}&_count=3",
            iso(start_ms)?,
            iso(end_ms)?
        ),
    )
    .await?;
    let by_agent = |who: &str| -> Vec<&Value> {
        all.iter()
            .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == json!(who))
            .collect()
    };
    let dev_events = by_agent(DEV_CLIENT_ID);
    let searches: Vec<_> = dev_events
        .iter()
        .filter(|e| e["subtype"][0]["code"] == "search-type" && e["outcome"] == "0")
        .collect();
    assert_eq!(searches.len(), 3, "{dev_events:#?}");
    assert!(
        searches
            .iter()
            .all(|e| e["entity"].as_array().is_some_and(|ents| ents
                .iter()
                .any(|x| x["what"]["identifier"]["value"] == json!(patient))))
    );
    let logins: Vec<_> = dev_events
        .iter()
        .filter(|e| e["type"]["code"] == "110114")
        .collect();
    assert!(
        logins.iter().any(|e| e["outcome"] == "0"),
        "token issued: {logins:#?}"
    );
    assert!(
        logins.iter().any(|e| e["outcome"] == "4"
            && e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.contains("invalid_scope"))),
        "scope refused: {logins:#?}"
    );
    assert!(
        dev_events.iter().any(|e| e["outcome"] == "4"
            && e["entity"][0]["description"] == "AuditEvent"
            || e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.contains("AuditEvent"))),
        "the refused AuditEvent query: {dev_events:#?}"
    );
    assert!(
        by_agent("ehr-rsa").iter().any(|e| e["outcome"] == "4"
            && e["entity"][0]["what"]["reference"] == "Device/mon-7A-1"
            && e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.contains("forbidden"))),
        "the 403: {all:#?}"
    );
    let unidentified: Vec<_> = all
        .iter()
        .filter(|e| e["agent"][0]["name"] == "unidentified client")
        .collect();
    assert!(unidentified.iter().any(|e| {
        e["type"]["code"] == "110114"
            && e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.contains("invalid_client"))
    }));
    assert!(unidentified.iter().any(|e| {
        e["type"]["code"] == "rest"
            && e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.starts_with("HTTP 401"))
    }));

    // Filters: agent, patient, an empty date range; paging; read of one event.
    let only_dev = fhir_search_all(
        &f.http,
        &auditor,
        &format!("{base}/AuditEvent?agent={DEV_CLIENT_ID}&_count=2"),
    )
    .await?;
    assert_eq!(only_dev.len(), dev_events.len());
    let with_patient = fhir_search_all(
        &f.http,
        &auditor,
        &format!("{base}/AuditEvent?patient={patient}"),
    )
    .await?;
    // The dev-ehr searches that returned the patient, and the auditor's own queries whose results named them
    // (reading the audit trail is itself audited).
    let names_patient = |e: &Value| {
        e["entity"].as_array().is_some_and(|ents| {
            ents.iter()
                .any(|x| x["what"]["identifier"]["value"] == json!(patient))
        })
    };
    assert!(with_patient.iter().all(names_patient));
    let agents = |who: &str| {
        with_patient
            .iter()
            .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == json!(who))
            .count()
    };
    assert_eq!(agents(DEV_CLIENT_ID), 3);
    assert_eq!(agents("auditor") + 3, with_patient.len());
    let (s, empty, _) = f.get("/AuditEvent?date=lt2000-01-01", &auditor).await?;
    assert_eq!(s, StatusCode::OK);
    assert!(
        empty["entry"].as_array().is_none_or(Vec::is_empty),
        "{empty}"
    );
    let (s, page, _) = f.get("/AuditEvent?_count=2", &auditor).await?;
    assert_eq!(
        (s, page["entry"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );
    assert!(
        page["link"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["relation"] == "next"))
    );
    let id = all[0]["id"].as_str().context("id")?;
    let (s, one, _) = f.get(&format!("/AuditEvent/{id}"), &auditor).await?;
    assert_eq!((s, &one["id"]), (StatusCode::OK, &all[0]["id"]));
    for (q, want) in [
        ("date=2024-13-45", 400),
        ("frobnicate=1", 400),
        ("_count=0", 400),
    ] {
        let (s, b, _) = f.get(&format!("/AuditEvent?{q}"), &auditor).await?;
        assert_eq!(s.as_u16(), want, "{q}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
    }

    // Every AuditEvent validates with the third-party FHIR validator.
    if wardwatch::python_modules_available(
        &["fhir.resources.R4B.auditevent"],
        "AuditEvent validation",
    )? {
        validate(&all)?;
    }
    f.cloud.stop().await;
    Ok(())
}

fn validate(resources: &[Value]) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cloud/fhir/tests/validate_resources.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running the validator")?;
    let lines: Vec<String> = resources.iter().map(ToString::to_string).collect();
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "AuditEvent validation failed:\n{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_is_queryable_by_admins_only_sqlite() -> Result<()> {
    audit_trail_is_queryable_by_admins_only(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_is_queryable_by_admins_only_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("smart_audit").await? else {
        return Ok(());
    };
    let r = audit_trail_is_queryable_by_admins_only(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}

/// An EHR built from third-party Python libraries (PyJWT signs RS384 and ES384 assertions, fhirpy searches and
/// follows next links, fhir.resources validates AuditEvents) against the real cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fhir_client_gets_a_token_and_searches() -> Result<()> {
    if !wardwatch::python_modules_available(
        &[
            "fhirpy",
            "jwt",
            "cryptography",
            "requests",
            "fhir.resources.R4B.auditevent",
        ],
        "SMART client test (fhirpy + PyJWT)",
    )? {
        return Ok(());
    }
    let f = Fixture::start(None, 300, any()).await?;
    let patient = f.seed(1500).await?;
    let now = wardwatch_proto::now_unix_ms();
    let iso = |ms: i64| -> Result<String> {
        let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)?;
        Ok(t.format(&time::format_description::well_known::Rfc3339)?)
    };
    let (ge, le) = (iso(now - 2 * 3_600_000)?, iso(now + 60_000)?);
    // What the search must return, by this crate's own client.
    let token = f
        .token(&f.setup.smart_client, "system/Observation.rs")
        .await?;
    let expected: Vec<Value> = fhir_search_all(
        &f.http,
        &token,
        &format!("{}/Observation?patient={patient}&code={HEART_RATE}&date=ge{ge}&date=le{le}&_count=1000", f.cloud.fhir_base),
    )
    .await?;
    assert!(
        expected.len() > 14,
        "the search should span several pages of 7, got {}",
        expected.len()
    );
    let rsa_key: PathBuf = f.dir.path().join("pki/ehr-rsa.key");
    std::fs::write(&rsa_key, TEST_RSA_KEY)?;
    let client = |id: &str, key: &std::path::Path, alg: &str, kid: &str| json!({"client_id": id, "private_key": key, "alg": alg, "kid": kid});
    let cfg = json!({
        "fhir_base": f.cloud.fhir_base,
        "ca_cert": f.setup.pki.ca_cert,
        "clients": [
            client(DEV_CLIENT_ID, &f.setup.smart_key_path, "ES384", wardwatch::DEV_CLIENT_KID),
            client("ehr-rsa", &rsa_key, "RS384", "rsa-1"),
        ],
        "admin": client("auditor", &f.dir.path().join("pki/auditor.key"), "ES384", "audit-1"),
        "patient": patient,
        "code": HEART_RATE,
        "date_ge": ge,
        "date_le": le,
        "expected_ids": expected.iter().map(|o| o["id"].clone()).collect::<Vec<_>>(),
    });
    let cfg_path = f.dir.path().join("smart-client.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/smart_backend_client.py"
        ))
        .arg(&cfg_path)
        .output()
        .await
        .context("running tests/python/smart_backend_client.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the Python SMART client failed:\n{stderr}"
    );
    assert!(stdout.starts_with("OK"), "{stdout}");
    f.cloud.stop().await;
    Ok(())
}
