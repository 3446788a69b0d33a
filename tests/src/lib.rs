//! The whole Wardwatch system in one process: development PKI, cloud, edge and ward simulator wired together on
//! loopback. The demo binary and every whole-system test and benchmark use these helpers (one place, never
//! copied), so they all run the real edge and cloud code.

pub mod eval;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::RngCore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wardwatch_cloud::auth::client::{ClientSigner, dev_client_key, token_request_form};
use wardwatch_cloud::config::{
    ApiClient, ApiConfig, EdgeRegistration, SyncListenerConfig, TlsConfig,
};
use wardwatch_cloud::pki::{self, DevPkiPaths, DevPkiRequest};
use wardwatch_cloud::storage::Store;
use wardwatch_cloud::sync::SyncServiceStats;
use wardwatch_cloud::{CloudConfig, CloudServer};
use wardwatch_edge::config::{CloudLinkConfig, OutboxConfig, SyncConfig};
use wardwatch_edge::node::Incoming;
use wardwatch_edge::simulator::{WardSimConfig, WardSimulator};
use wardwatch_edge::{EdgeConfig, EdgeNode};
use wardwatch_proto::ids::{EdgeId, WardId};

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Logging for binaries and tests: `RUST_LOG` or `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Development credentials: PKI and the development API client `dev-ehr`, kept under a data directory and reused
/// across runs.
#[derive(Debug, Clone)]
pub struct DevSetup {
    /// Certificates and keys.
    pub pki: DevPkiPaths,
    /// A static bearer token of `dev-ehr`, made afresh for each setup and never written to disk. Accepted only
    /// where [`cloud_config`] turns on `[api] dev_static_tokens` (the whole-system tests, not the demo), so tests
    /// that are not about authentication need not run the token flow.
    pub token: String,
    /// Hex sha256 of [`DevSetup::token`] (what the cloud configuration holds).
    pub token_sha256: String,
    /// The signing key of `dev-ehr` for SMART Backend Services (ES384, private key under `pki/`).
    pub smart_client: ClientSigner,
    /// Where that private key is (PKCS#8 PEM, mode 0600).
    pub smart_key_path: PathBuf,
    /// Where its public JWKS is (registered with the cloud as `jwks_path`).
    pub smart_jwks_path: PathBuf,
}

/// The identifier system of encounter visit numbers in the test and demo clouds (`api.visit_number_system`).
pub const VISIT_NUMBER_SYSTEM: &str = "urn:wardwatch:visit-number";

/// Client id of the development API client.
pub const DEV_CLIENT_ID: &str = "dev-ehr";
/// Key id of the development client's key.
pub const DEV_CLIENT_KID: &str = "dev-ehr-1";
/// Scopes of the development client.
pub const DEV_CLIENT_SCOPES: &str = "system/Observation.rs system/Device.rs system/DeviceMetric.rs \
     system/Location.rs system/RiskAssessment.rs system/Provenance.rs system/DetectedIssue.rs \
     system/MedicationAdministration.rs";

/// Creates (or reuses) the development PKI for `edge_ids` and the development API client's key under `dir`.
pub fn dev_setup(dir: &Path, edge_ids: &[&str]) -> Result<DevSetup> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = pki::generate_dev_pki(
        &dir.join("pki"),
        &DevPkiRequest {
            cloud_hosts: vec!["localhost".into(), "127.0.0.1".into()],
            edge_ids: edge_ids.iter().map(ToString::to_string).collect(),
        },
    )?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex_encode(&bytes);
    let token_sha256 = sha256_hex(token.as_bytes());
    let smart_key_path = dir.join("pki").join(format!("smart-{DEV_CLIENT_ID}.key"));
    let smart_client = dev_client_key(DEV_CLIENT_ID, DEV_CLIENT_KID, &smart_key_path)?;
    let smart_jwks_path = dir
        .join("pki")
        .join(format!("smart-{DEV_CLIENT_ID}.jwks.json"));
    std::fs::write(
        &smart_jwks_path,
        serde_json::to_vec_pretty(&smart_client.public_jwks())?,
    )
    .with_context(|| format!("writing {}", smart_jwks_path.display()))?;
    Ok(DevSetup {
        pki,
        token,
        token_sha256,
        smart_client,
        smart_key_path,
        smart_jwks_path,
    })
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex_encode(&sha2::Sha256::digest(b))
}

/// The committed edge models (`models/` in the repository).
pub fn repo_models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

/// Bundle directories of the edge models, under `models/` and under the edge's model directory.
pub const MODEL_KINDS: [&str; 2] = ["deterioration", "artifact"];

/// The edge models for development: a development release key (created once under `pki_dir` as
/// `model-release-dev.key`, mode 0600, and `model-release-dev.pub`, like the development certificates), and
/// each committed model in `source` (`deterioration/`, `artifact/`: `model.onnx` + `manifest.json`) copied into
/// `models_dir` and signed with that key. Returns the `[engine.models]` configuration that trusts exactly that
/// key. The development key stands in for a hospital's release key; it is not a release signature.
pub fn dev_models(
    pki_dir: &Path,
    source: &Path,
    models_dir: &Path,
) -> Result<wardwatch_edge::config::ModelsConfig> {
    use wardwatch_edge::ml::inference::{SigningKey, sign_manifest, signature};
    std::fs::create_dir_all(pki_dir).with_context(|| format!("creating {}", pki_dir.display()))?;
    let key_path = pki_dir.join("model-release-dev.key");
    let pub_path = pki_dir.join("model-release-dev.pub");
    let key = if key_path.is_file() {
        let text = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        signature::parse_signing_key(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?
    } else {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        write_private(&key_path, format!("{}\n", hex_encode(&seed)).as_bytes())?;
        SigningKey::from_bytes(&seed)
    };
    std::fs::write(
        &pub_path,
        format!(
            "# Wardwatch development model release key (made by the demo; not a hospital release key)\n{}\n",
            hex_encode(key.verifying_key().as_bytes())
        ),
    )
    .with_context(|| format!("writing {}", pub_path.display()))?;
    for kind in MODEL_KINDS {
        let (from, to) = (source.join(kind), models_dir.join(kind));
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        let model = std::fs::read(from.join("model.onnx"))
            .with_context(|| format!("reading {}", from.join("model.onnx").display()))?;
        let manifest = std::fs::read(from.join("manifest.json"))
            .with_context(|| format!("reading {}", from.join("manifest.json").display()))?;
        std::fs::write(to.join("model.onnx"), &model)?;
        std::fs::write(to.join("manifest.json"), &manifest)?;
        std::fs::write(to.join("model.onnx.sig"), sign_manifest(&key, &manifest))?;
    }
    Ok(wardwatch_edge::config::ModelsConfig::new(
        models_dir.to_path_buf(),
        pub_path,
    ))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A cloud configuration for the development setup. `dev-ehr` is registered with its public JWKS (SMART Backend
/// Services) and, for the whole-system tests, also with the static development token ([`DevSetup::token`],
/// `dev_static_tokens` on). The demo turns that off with [`smart_only`].
pub fn cloud_config(
    setup: &DevSetup,
    data_dir: &Path,
    database_url: Option<String>,
    sync_listen: SocketAddr,
    api_listen: SocketAddr,
    edges: &[(&str, &[&str])],
) -> Result<CloudConfig> {
    let edges = edges
        .iter()
        .map(|(id, wards)| {
            Ok(EdgeRegistration {
                edge_id: EdgeId::new(*id)?,
                wards: wards
                    .iter()
                    .map(|w| WardId::new(*w))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CloudConfig {
        data_dir: data_dir.to_path_buf(),
        database_url,
        tls: TlsConfig {
            ca_cert: setup.pki.ca_cert.clone(),
            cert: setup.pki.cloud_cert.clone(),
            key: setup.pki.cloud_key.clone(),
        },
        sync: SyncListenerConfig {
            listen: sync_listen,
            max_batch_events: 5_000,
            pipeline_depth: 4,
        },
        api: ApiConfig {
            listen: api_listen,
            base_path: "/fhir".into(),
            public_base_url: None,
            mrn_system: "urn:wardwatch:mrn".into(),
            visit_number_system: VISIT_NUMBER_SYSTEM.into(),
            device_id_system: "urn:wardwatch:device".into(),
            client_id_system: "urn:wardwatch:api-client".into(),
            access_token_ttl_secs: 300,
            dev_static_tokens: true,
        },
        edges,
        api_clients: vec![ApiClient {
            client_id: DEV_CLIENT_ID.into(),
            scopes: DEV_CLIENT_SCOPES
                .split(' ')
                .map(ToString::to_string)
                .collect(),
            jwks: None,
            jwks_path: Some(setup.smart_jwks_path.clone()),
            token_sha256: Some(setup.token_sha256.clone()),
        }],
        subscriptions: Default::default(),
        model_registry: None,
    })
}

/// The development PKI and static token for `edge` ([`dev_setup`] in `dir`) and a cloud on SQLite under
/// `dir/cloud` that registers `edge` for `wards`, listening on free loopback ports.
pub async fn start_dev_cloud(
    dir: &Path,
    edge: &str,
    wards: &[&str],
) -> Result<(DevSetup, CloudHandle)> {
    let setup = dev_setup(dir, &[edge])?;
    let any = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.join("cloud"),
        None,
        any,
        any,
        &[(edge, wards)],
    )?)
    .await?;
    Ok((setup, cloud))
}

/// Turns static development tokens off: every client must then use SMART Backend Services (the demo).
pub fn smart_only(config: &mut CloudConfig) {
    config.api.dev_static_tokens = false;
    for c in &mut config.api_clients {
        c.token_sha256 = None;
    }
}

/// An access token from the token endpoint.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AccessToken {
    /// The bearer token.
    pub access_token: String,
    /// Its lifetime, seconds.
    pub expires_in: u64,
    /// Granted scopes.
    pub scope: String,
}

/// Gets an access token the way an EHR does: a fresh client assertion signed by `signer`, posted to
/// `token_endpoint` with the client-credentials grant. Fails with the server's OAuth error otherwise.
pub async fn smart_token(
    client: &reqwest::Client,
    token_endpoint: &str,
    signer: &ClientSigner,
    scope: &str,
) -> Result<AccessToken> {
    let assertion = signer.assertion(token_endpoint, 60)?;
    let resp = client
        .post(token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(token_request_form(&assertion, scope))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        bail!("token request to {token_endpoint} → {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("token response {body}"))
}

/// The certificate and key of `edge_id` in the development PKI.
pub fn edge_cert(setup: &DevSetup, edge_id: &str) -> Result<(PathBuf, PathBuf)> {
    setup
        .pki
        .edges
        .iter()
        .find(|(id, _, _)| id == edge_id)
        .map(|(_, c, k)| (c.clone(), k.clone()))
        .with_context(|| format!("no development certificate for edge {edge_id}"))
}

/// An edge configuration for the development setup, syncing to `sync_addr` (as "localhost").
pub fn edge_config(
    setup: &DevSetup,
    data_dir: &Path,
    edge_id: &str,
    wards: &[&str],
    sync_addr: SocketAddr,
) -> Result<EdgeConfig> {
    let (cert, key) = edge_cert(setup, edge_id)?;
    Ok(EdgeConfig {
        edge_id: EdgeId::new(edge_id)?,
        wards: wards
            .iter()
            .map(|w| WardId::new(*w))
            .collect::<Result<_, _>>()?,
        data_dir: data_dir.to_path_buf(),
        outbox: OutboxConfig::default(),
        cloud: CloudLinkConfig {
            endpoint: format!("https://localhost:{}", sync_addr.port()),
            server_name: Some("localhost".into()),
            ca_cert: setup.pki.ca_cert.clone(),
            client_cert: cert,
            client_key: key,
        },
        sync: SyncConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            ..SyncConfig::default()
        },
        engine: Default::default(),
        station: None,
        hl7_mllp: None,
        mqtt: None,
    })
}

/// The development nurse station user (the demo's and the tests').
pub const DEV_STATION_USER: &str = "dev-nurse";

/// A nurse station sign-in: user id and password.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StationLogin {
    /// User id.
    pub user: String,
    /// Password (only ever in development setups; configs hold its argon2id hash).
    pub password: String,
}

/// A `[[station.users]]` entry for `id` with `password` hashed (argon2id).
pub fn station_user(
    id: &str,
    name: &str,
    role: wardwatch_edge::station::Role,
    password: &str,
) -> Result<wardwatch_edge::station::StationUser> {
    Ok(wardwatch_edge::station::StationUser {
        id: id.into(),
        name: name.into(),
        role,
        password_hash: wardwatch_edge::station::auth::hash_password(password)?,
    })
}

/// A development nurse station on `listen` (plain HTTP, so loopback only) with one nurse, [`DEV_STATION_USER`],
/// whose password is random (returned, for the demo's `--info` file and the tests).
pub fn dev_station(
    listen: SocketAddr,
) -> Result<(wardwatch_edge::station::StationConfig, StationLogin)> {
    let password = wardwatch_edge::station::auth::random_token()[..20].to_string();
    let user = station_user(
        DEV_STATION_USER,
        "Development nurse",
        wardwatch_edge::station::Role::Nurse,
        &password,
    )?;
    Ok((
        wardwatch_edge::station::StationConfig::new(listen, vec![user]),
        StationLogin {
            user: DEV_STATION_USER.into(),
            password,
        },
    ))
}

/// A signed-in nurse station session over HTTP(S): the session cookie and the CSRF token, as the page keeps them.
#[derive(Debug, Clone)]
pub struct StationSession {
    /// The station's base URL (ending in `/`).
    pub base: String,
    /// `wardwatch_session=...`, for the `Cookie` header.
    pub cookie: String,
    /// The session's anti-CSRF token.
    pub csrf: String,
    /// What `POST /api/sign-in` answered (user, name, role, ...).
    pub view: serde_json::Value,
    client: reqwest::Client,
}

impl StationSession {
    /// Signs in with `user` and `password` at the station `base`; fails unless the answer is 200 with a session
    /// cookie.
    pub async fn sign_in(
        client: &reqwest::Client,
        base: &str,
        user: &str,
        password: &str,
    ) -> Result<Self> {
        let r = client
            .post(format!("{base}api/sign-in"))
            .json(&serde_json::json!({"user": user, "password": password}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == reqwest::StatusCode::OK,
            "sign-in as {user}: {}",
            r.status()
        );
        let cookie = r
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.split(';')
                    .next()
                    .filter(|c| c.starts_with("wardwatch_session="))
            })
            .context("no session cookie")?
            .to_string();
        let view: serde_json::Value = r.json().await?;
        let csrf = view["csrf_token"]
            .as_str()
            .context("no csrf_token")?
            .to_string();
        Ok(Self {
            base: base.to_string(),
            cookie,
            csrf,
            view,
            client: client.clone(),
        })
    }

    /// A GET of `path` (relative to the base, no leading `/`) with the session cookie.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
    }

    /// A POST of `path` with the session cookie and the CSRF token.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .header("x-csrf-token", &self.csrf)
    }
}

/// A running cloud inside this process.
#[derive(Debug)]
pub struct CloudHandle {
    /// FHIR base URL.
    pub fhir_base: String,
    /// SMART token endpoint URL.
    pub token_endpoint: String,
    /// Sync listener address.
    pub sync_addr: SocketAddr,
    /// API listener address.
    pub api_addr: SocketAddr,
    /// Storage, for assertions.
    pub store: Store,
    /// Sync counters.
    pub sync_stats: Arc<SyncServiceStats>,
    /// Refused TLS handshakes on the sync listener.
    pub sync_tls_failures: Arc<std::sync::atomic::AtomicU64>,
    /// The model registry, if configured (its counters).
    pub model_registry: Option<Arc<wardwatch_cloud::model_registry::ModelRegistry>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl CloudHandle {
    /// Starts a cloud from `config`.
    pub async fn start(config: CloudConfig) -> Result<Self> {
        let server = CloudServer::start(config).await?;
        let (stop, rx) = oneshot::channel::<()>();
        let handle = Self {
            fhir_base: server.fhir_base_url().to_string(),
            token_endpoint: server.token_endpoint().to_string(),
            sync_addr: server.sync_addr()?,
            api_addr: server.api_addr()?,
            store: server.store().clone(),
            sync_stats: server.sync_stats(),
            sync_tls_failures: server.sync_tls_failures(),
            model_registry: server.model_registry(),
            stop,
            task: tokio::spawn(async move {
                server
                    .run(async move {
                        let _ = rx.await;
                    })
                    .await;
            }),
        };
        Ok(handle)
    }

    /// Stops the cloud and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// The model registry's counters, if it is configured.
    pub fn model_registry_stats(
        &self,
    ) -> Option<&wardwatch_cloud::model_registry::ModelRegistryStats> {
        self.model_registry.as_deref().map(|r| &r.stats)
    }
}

/// A running edge inside this process.
#[derive(Debug)]
pub struct EdgeHandle {
    /// The node, to offer events and read counters.
    pub node: Arc<EdgeNode>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl EdgeHandle {
    /// Starts an edge (outbox open, sync task running).
    pub async fn start(config: EdgeConfig) -> Result<Self> {
        let node = EdgeNode::start(config).await?;
        let (stop, rx) = oneshot::channel::<()>();
        let n = node.clone();
        let task = tokio::spawn(async move {
            n.run(async move {
                let _ = rx.await;
            })
            .await;
        });
        Ok(Self { node, stop, task })
    }

    /// Stops the edge and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Waits until the outbox is empty (everything acknowledged), or fails after `timeout`.
    pub async fn wait_drained(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = self.node.outbox().pending().await?;
            if pending == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("edge outbox still holds {pending} events after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the ward simulator in real time into `node` until `stop` resolves: every `tick` the simulator is
/// advanced to the wall clock and its events are offered to the edge.
pub async fn run_simulator(
    node: Arc<EdgeNode>,
    cfg: WardSimConfig,
    tick: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut sim = WardSimulator::new(cfg);
    let devices = sim.devices();
    offer(&node, devices).await;
    tokio::pin!(stop);
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let events = sim.advance_to(wardwatch_proto::now_unix_ms());
                offer(&node, events).await;
            }
            () = &mut stop => return,
        }
    }
}

async fn offer(node: &EdgeNode, events: Vec<wardwatch_edge::simulator::SimEvent>) {
    if events.is_empty() {
        return;
    }
    let incoming = events
        .into_iter()
        .map(|e| Incoming {
            idempotency_key: e.idempotency_key,
            payload: e.payload,
        })
        .collect();
    match node.accept(incoming).await {
        Ok(r) if !r.rejected.is_empty() => {
            tracing::warn!(rejected = r.rejected.len(), "simulator events rejected")
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "simulator events not accepted"),
    }
}

/// An HTTPS client that trusts only the development CA.
pub fn https_client(ca_pem: &Path) -> Result<reqwest::Client> {
    install_crypto();
    let pem = std::fs::read(ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem)?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// A free TCP port on loopback (bound and released; fine for tests that need a fixed port across restarts).
pub fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// PostgreSQL for tests: creates a uniquely named database on the server at `WARDWATCH_TEST_PG`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`) and drops it when dropped.
/// Returns `None`, after saying so loudly on stderr, when no server is reachable.
pub struct TestDatabase {
    /// URL of the new database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates the database, or `None` when PostgreSQL is not reachable. On CI (`CI` set) an unreachable server
    /// is an error, not a skip.
    pub async fn create(tag: &str) -> Result<Option<Self>> {
        use sqlx::Connection;
        let admin_url = std::env::var("WARDWATCH_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = match tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::PgConnection::connect(&admin_url),
        )
        .await
        {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                if std::env::var_os("CI").is_some() {
                    bail!("PostgreSQL at {admin_url} is required on CI but unreachable: {why}");
                }
                eprintln!(
                    "\n*** SKIPPED: PostgreSQL variant of {tag}: no server at {admin_url} ({why}) ***\n"
                );
                return Ok(None);
            }
        };
        let mut suffix = [0u8; 6];
        rand::rng().fill_bytes(&mut suffix);
        // PostgreSQL truncates names at 63 bytes: keep the tag short so the random suffix always survives.
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(30)
            .collect();
        let name = format!("wardwatch_test_{tag}_{}", hex_encode(&suffix));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        Ok(Some(Self {
            url: format!("{base}/{name}"),
            admin_url: admin_url.clone(),
            name,
        }))
    }

    /// Drops the database now (also attempted on drop).
    pub async fn drop_now(&self) -> Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Best effort from a synchronous context: a fresh runtime on a helper thread.
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// One simulated event as a JSON object (the simulator command's output format).
pub fn sim_event_json(e: &wardwatch_edge::simulator::SimEvent) -> serde_json::Value {
    use wardwatch_proto::v1::edge_event::Payload;
    let loc = |l: &Option<wardwatch_proto::v1::BedLocation>| {
        l.as_ref()
            .map(|l| serde_json::json!({"ward": l.ward, "bed": l.bed}))
    };
    let body = match &e.payload {
        Payload::Vital(v) => serde_json::json!({
            "type": "vital", "patient_id": v.patient_id, "location": loc(&v.location), "device_id": v.device_id,
            "metric_mdc": v.metric_mdc, "value": v.value, "unit": v.unit_ucum, "measured_at_unix_ms": v.measured_at_unix_ms,
            "components": v.components.iter().map(|c| serde_json::json!({"metric_mdc": c.metric_mdc, "value": c.value})).collect::<Vec<_>>(),
            "enumerated": v.enumerated,
        }),
        Payload::Infusion(i) => serde_json::json!({
            "type": "infusion", "order_id": i.order_id, "patient_id": i.patient_id, "location": loc(&i.location),
            "device_id": i.device_id, "medication": i.medication, "prescribed_rate_ml_h": i.prescribed_rate_ml_h,
            "measured_rate_ml_h": i.measured_rate_ml_h, "drop_factor_gtt_per_ml": i.drop_factor_gtt_per_ml,
            "drops_per_min": i.drops_per_min, "volume_infused_ml": i.volume_infused_ml,
            "volume_remaining_ml": i.volume_remaining_ml, "state": i.state, "measured_at_unix_ms": i.measured_at_unix_ms,
        }),
        Payload::Device(d) => serde_json::json!({
            "type": "device", "device_id": d.device_id, "kind": d.kind, "manufacturer": d.manufacturer,
            "model": d.model, "serial_number": d.serial_number, "location": loc(&d.location), "state": d.state,
        }),
        Payload::Alarm(a) => {
            serde_json::json!({"type": "alarm", "alarm_id": a.alarm_id, "message": a.message})
        }
        Payload::Risk(r) => serde_json::json!({"type": "risk", "patient_id": r.patient_id}),
        Payload::Spo2Scale(s) => serde_json::json!({
            "type": "spo2_scale", "patient_id": s.patient_id, "scale": s.scale, "changed_by": s.changed_by,
        }),
    };
    serde_json::json!({"idempotency_key": e.idempotency_key, "event": body})
}

/// Exactly `n` simulated vital-sign events (plus nothing else) for `ward`, deterministic for `seed`, measured in
/// the hour before now. Used by tests and benchmarks that need a known number of samples.
pub fn simulated_vitals(ward: &str, beds: u32, seed: u64, n: usize) -> Vec<Incoming> {
    let mut sim = WardSimulator::new(WardSimConfig {
        ward: ward.into(),
        beds,
        seed,
        start_unix_ms: wardwatch_proto::now_unix_ms() - 3_600_000,
        ..WardSimConfig::default()
    });
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = sim.now_unix_ms() + 10_000;
        out.extend(
            sim.advance_to(t)
                .into_iter()
                .filter(|e| {
                    matches!(
                        e.payload,
                        wardwatch_proto::v1::edge_event::Payload::Vital(_)
                    )
                })
                .map(|e| Incoming {
                    idempotency_key: e.idempotency_key,
                    payload: e.payload,
                }),
        );
    }
    out.truncate(n);
    out
}

/// The simulated devices of a ward, as events to offer an edge.
pub fn simulated_devices(ward: &str, beds: u32, seed: u64) -> Vec<Incoming> {
    let sim = WardSimulator::new(WardSimConfig {
        ward: ward.into(),
        beds,
        seed,
        start_unix_ms: wardwatch_proto::now_unix_ms() - 3_600_000,
        ..WardSimConfig::default()
    });
    sim.devices()
        .into_iter()
        .map(|e| Incoming {
            idempotency_key: e.idempotency_key,
            payload: e.payload,
        })
        .collect()
}

/// The migrations of `migrator` older than `version`: a database at the schema before that migration, for tests
/// that store rows the old way and then let `Store::connect` migrate them.
pub fn migrations_before(
    mut migrator: sqlx::migrate::Migrator,
    version: i64,
) -> sqlx::migrate::Migrator {
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator
}

/// Follows a FHIR search from `url` through every `next` link; returns every entry's resource.
pub async fn fhir_search_all(
    client: &reqwest::Client,
    token: &str,
    url: &str,
) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut next = Some(url.to_string());
    while let Some(u) = next.take() {
        let resp = client.get(&u).bearer_auth(token).send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("GET {u} → {status}: {body}");
        }
        if let Some(entries) = body["entry"].as_array() {
            out.extend(entries.iter().map(|e| e["resource"].clone()));
        }
        next = body["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(ToString::to_string);
    }
    Ok(out)
}

/// Whether `python3` can import every module in `modules` (a test that drives a third-party Python package
/// asks first). Missing ones skip the test loudly on stderr, except on CI (`CI` set), where they are an error.
pub fn python_modules_available(modules: &[&str], what: &str) -> Result<bool> {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let hint = "pip install -r tests/python/requirements.txt";
        if std::env::var_os("CI").is_some() {
            bail!(
                "{what}: python3 with {} is required on CI ({hint})",
                modules.join(", ")
            );
        }
        eprintln!(
            "\n*** SKIPPED: {what}: python3 with {} not found ({hint}) ***\n",
            modules.join(", ")
        );
    }
    Ok(ok)
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
