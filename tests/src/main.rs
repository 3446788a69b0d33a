//! `wardwatch`: the demo (cloud + edge + simulated ward in one process), the development `certs` command, the
//! ward simulator as a command, and `cloud`/`edge` to run either side from a config file. Thin: parses arguments,
//! installs signal handling, calls the libraries.

mod broker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wardwatch::{CloudHandle, EdgeHandle};
use wardwatch_edge::simulator::{WardSimConfig, WardSimulator};

#[derive(Parser)]
#[command(
    name = "wardwatch",
    version,
    about = "Wardwatch: edge-to-cloud ward monitoring and FHIR interoperability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant (the demo's options) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start the cloud, one edge and a simulated ward on embedded defaults (SQLite, development certificates).
    Demo(DemoArgs),
    /// Create a development CA plus cloud and edge certificates (no openssl needed).
    Certs {
        /// Output directory.
        #[arg(long, default_value = "data/pki")]
        out: PathBuf,
        /// Edge ids to issue client certificates for.
        #[arg(long = "edge", default_value = "edge-7a")]
        edges: Vec<String>,
        /// Host names / IPs for the cloud certificate.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
    /// Print simulated ward events as JSON lines (deterministic for a seed).
    Simulate {
        /// Beds.
        #[arg(long, default_value_t = 40)]
        beds: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Ward id.
        #[arg(long, default_value = "7A")]
        ward: String,
        /// Simulated minutes.
        #[arg(long, default_value_t = 1)]
        minutes: i64,
    },
    /// Run the cloud from a TOML config file.
    Cloud {
        /// Config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an edge from a TOML config file, optionally with a simulated ward feeding it.
    Edge {
        /// Config file.
        #[arg(long)]
        config: PathBuf,
        /// Simulate this many beds of the edge's first ward in real time.
        #[arg(long)]
        simulate_beds: Option<u32>,
        /// Accept this many simulated vital-sign events at once, print "accepted N" when durable, then keep
        /// running (used by crash tests).
        #[arg(long)]
        accept_burst: Option<usize>,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where state lives (created if missing).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Stop cleanly after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Write a JSON file describing where everything is, once serving.
    #[arg(long)]
    info: Option<PathBuf>,
    /// Beds in the simulated ward.
    #[arg(long, default_value_t = 40)]
    beds: u32,
    /// Simulator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Database URL (default: SQLite under the data directory).
    #[arg(long)]
    database_url: Option<String>,
    /// FHIR API listen address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    api_listen: SocketAddr,
    /// Edge sync listen address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    sync_listen: SocketAddr,
    /// Nurse station listen address (served by the edge).
    #[arg(long, default_value = "127.0.0.1:8080")]
    station_listen: SocketAddr,
    /// HL7 v2 / IHE PCD-01 over MLLP listen address (2575 is MLLP's registered port).
    #[arg(long, default_value = "127.0.0.1:2575")]
    hl7_listen: SocketAddr,
    /// MQTT broker the edge subscribes to for device telemetry: `embedded` starts an MQTT 3.1.1 broker inside
    /// the demo (rumqttd, on `--mqtt-listen`), `off` runs without MQTT, `host:port` uses an external broker such
    /// as Mosquitto. The simulated ward itself is injected directly into the edge, not through MQTT.
    #[arg(long, default_value = "embedded")]
    mqtt_broker: String,
    /// Where the embedded MQTT broker listens (loopback only). If that port is taken (e.g. by Mosquitto), an
    /// ephemeral loopback port is used instead; the real one is printed and written to `--info` as `mqtt`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// The edge models to run (`deterioration/`, `artifact/` bundles): signed at start with the development
    /// release key under `<data-dir>/pki/` and copied to `<data-dir>/edge/models/`. Default: the repository's
    /// `models/`.
    #[arg(long)]
    models: Option<PathBuf>,
}

const DEMO_EDGE: &str = "edge-7a";
const DEMO_WARD: &str = "7A";

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn demo(args: DemoArgs) -> Result<()> {
    let data = args.data_dir;
    let setup = wardwatch::dev_setup(&data, &[DEMO_EDGE])?;
    let mut cloud_cfg = wardwatch::cloud_config(
        &setup,
        &data.join("cloud"),
        args.database_url,
        args.sync_listen,
        args.api_listen,
        &[(DEMO_EDGE, &[DEMO_WARD])],
    )?;
    // The edge models: the committed ones, signed now with the development release key the edge trusts. If that
    // fails the edge still starts (NEWS2 and threshold alarms) and says why the models do not run.
    let models_src = args
        .models
        .clone()
        .unwrap_or_else(wardwatch::repo_models_dir);
    let models_dir = data.join("edge").join("models");
    let signed_models = match wardwatch::dev_models(&data.join("pki"), &models_src, &models_dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "edge models not signed; the edge runs without them");
            None
        }
    };
    // The model registry trusts the same development release key; the development client may also ask for the
    // registry's scopes (its printed token does not carry them). The demo publishes its models there at start.
    cloud_cfg.model_registry = Some(wardwatch_cloud::model_registry::ModelRegistryConfig {
        release_keys: data.join("pki").join("model-release-dev.pub"),
        max_model_bytes: wardwatch_cloud::model_registry::DEFAULT_MAX_MODEL_BYTES,
    });
    if let Some(client) = cloud_cfg.api_clients.first_mut() {
        client.scopes.push("system/WardwatchModel.crud".into());
    }
    // The demo serves the API the way a hospital would: SMART Backend Services only, no static tokens. Its
    // tokens live an hour (the longest allowed) so that the printed curl line keeps working for a while.
    wardwatch::smart_only(&mut cloud_cfg);
    cloud_cfg.api.access_token_ttl_secs = 3600;
    let cloud = CloudHandle::start(cloud_cfg)
        .await
        .context("starting the cloud")?;
    let mut edge_cfg = wardwatch::edge_config(
        &setup,
        &data.join("edge"),
        DEMO_EDGE,
        &[DEMO_WARD],
        cloud.sync_addr,
    )?;
    edge_cfg.engine.models = Some(match signed_models.clone() {
        Some(mut m) => {
            // The edge polls the registry for its ward's assignments every minute.
            m.pull_interval_secs = Some(60);
            m
        }
        None => wardwatch_edge::config::ModelsConfig::new(
            models_dir.clone(),
            data.join("pki").join("model-release-dev.pub"),
        ),
    });
    // The nurse station requires sign-in: one development nurse with a random password, written to --info.
    let (station_cfg, station_login) = wardwatch::dev_station(args.station_listen)?;
    edge_cfg.station = Some(station_cfg);
    edge_cfg.hl7_mllp = Some(wardwatch_edge::sources::hl7::Hl7MllpConfig {
        listen: args.hl7_listen,
        ..Default::default()
    });
    // MQTT: the embedded broker starts before the edge so that the edge's first connection finds it. A broker
    // that cannot start is reported and the demo runs on without MQTT ingest.
    let mut embedded_broker = None;
    let mqtt_broker = match args.mqtt_broker.as_str() {
        "off" => None,
        "embedded" => {
            let mut settings = broker::BrokerSettings::new(args.mqtt_listen);
            settings.max_packet_bytes =
                wardwatch_edge::sources::mqtt::config::MqttSourceConfig::default()
                    .transport_max_packet_bytes();
            match broker::EmbeddedBroker::start(&settings).await {
                Ok(b) => {
                    let addr = b.addr();
                    embedded_broker = Some(b);
                    Some((addr.ip().to_string(), addr.port()))
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the embedded MQTT broker did not start; the demo runs without MQTT ingest");
                    None
                }
            }
        }
        other => {
            let (h, p) = other
                .rsplit_once(':')
                .filter(|(h, _)| !h.is_empty())
                .context("--mqtt-broker must be embedded, off or host:port")?;
            Some((h.to_string(), p.parse().context("--mqtt-broker port")?))
        }
    };
    if let Some((host, port)) = &mqtt_broker {
        edge_cfg.mqtt = Some(wardwatch_edge::sources::mqtt::config::MqttSourceConfig {
            broker_host: host.clone(),
            broker_port: *port,
            client_id: format!("wardwatch-{DEMO_EDGE}"),
            ..Default::default()
        });
    }
    let edge = EdgeHandle::start(edge_cfg)
        .await
        .context("starting the edge")?;
    let (sim_stop, sim_rx) = tokio::sync::oneshot::channel::<()>();
    let sim_cfg = WardSimConfig {
        ward: DEMO_WARD.into(),
        beds: args.beds,
        seed: args.seed,
        start_unix_ms: wardwatch_proto::now_unix_ms(),
        ..WardSimConfig::default()
    };
    let sim = tokio::spawn(wardwatch::run_simulator(
        edge.node.clone(),
        sim_cfg,
        Duration::from_millis(500),
        async move {
            let _ = sim_rx.await;
        },
    ));

    let ca = setup
        .pki
        .ca_cert
        .canonicalize()
        .unwrap_or(setup.pki.ca_cert.clone());
    let fhir_base = cloud.fhir_base.clone();
    let station = edge.node.station_addr().map(|a| format!("http://{a}/"));
    // The development client gets its first access token through the real token flow.
    let http = wardwatch::https_client(&setup.pki.ca_cert)?;
    let token = wardwatch::smart_token(
        &http,
        &cloud.token_endpoint,
        &setup.smart_client,
        wardwatch::DEV_CLIENT_SCOPES,
    )
    .await
    .context("getting the development client's access token")?;
    // The models the edge runs are published in the cloud's registry and assigned to the ward, so the registry
    // shows what runs where and a newer signed version can be assigned with one call (models/README.md).
    let model_registry = format!("https://localhost:{}/admin/models", cloud.api_addr.port());
    if signed_models.is_some() {
        match publish_demo_models(&http, &cloud, &setup, &models_dir, &model_registry).await {
            Ok(published) => {
                tracing::info!(models = %published.join(", "), ward = DEMO_WARD, "edge models published in the registry and assigned")
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "edge models not published in the registry; the edge keeps running them")
            }
        }
    }
    let key_path = setup
        .smart_key_path
        .canonicalize()
        .unwrap_or(setup.smart_key_path.clone());
    let mut refresher = None;
    if let Some(info) = &args.info {
        let doc = serde_json::json!({
            "fhir_base": fhir_base,
            "token": token.access_token,
            "token_endpoint": cloud.token_endpoint,
            "smart_client_id": wardwatch::DEV_CLIENT_ID,
            "smart_private_key": key_path,
            "smart_alg": "ES384",
            "smart_kid": wardwatch::DEV_CLIENT_KID,
            "ca_cert": ca,
            "sync": format!("localhost:{}", cloud.sync_addr.port()),
            "nurse_station": station,
            "nurse_station_login": station_login,
            "hl7_mllp": edge.node.hl7_addr().map(|a| a.to_string()),
            "mqtt": mqtt_broker.as_ref().map(|(h, p)| format!("{h}:{p}")),
            "model_registry": model_registry,
            "edge_id": DEMO_EDGE,
            "ward": DEMO_WARD,
        });
        write_info(info, &doc)?;
        // Keep the info file's token valid: a new one through the token flow at half its lifetime.
        let (info, endpoint, signer) = (
            info.clone(),
            cloud.token_endpoint.clone(),
            setup.smart_client.clone(),
        );
        let every = Duration::from_secs(token.expires_in.max(2) / 2);
        refresher = Some(tokio::spawn(async move {
            let mut doc = doc;
            loop {
                tokio::time::sleep(every).await;
                match wardwatch::smart_token(
                    &http,
                    &endpoint,
                    &signer,
                    wardwatch::DEV_CLIENT_SCOPES,
                )
                .await
                {
                    Ok(t) => {
                        doc["token"] = serde_json::Value::String(t.access_token);
                        if let Err(e) = write_info(&info, &doc) {
                            tracing::warn!(error = %e, "could not refresh the token in the info file");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not refresh the development access token")
                    }
                }
            }
        }));
    }
    println!(
        "Wardwatch demo running: cloud, edge {DEMO_EDGE} and a simulated {}-bed ward {DEMO_WARD}.",
        args.beds
    );
    println!("FHIR base: {fhir_base}");
    if let Some(s) = &station {
        println!("Nurse station: {s}");
        match &args.info {
            Some(info) => println!(
                "  sign in as {} (password: nurse_station_login in {})",
                station_login.user,
                info.display()
            ),
            None => println!(
                "  sign in as {} with password {} (development user; pass --info FILE to get it in a file)",
                station_login.user, station_login.password
            ),
        }
    }
    for m in edge.node.models().status() {
        println!(
            "Edge model {}: {} (simulated training data, not clinically validated)",
            m.model,
            if m.running { "running" } else { "NOT running" }
        );
        println!("  {}", m.detail);
    }
    if let Some(a) = edge.node.hl7_addr() {
        println!("HL7 v2 (IHE PCD-01) over MLLP: {a}");
    }
    match (&mqtt_broker, &embedded_broker) {
        (Some((h, p)), Some(_)) => println!(
            "MQTT: embedded broker at {h}:{p}; the edge subscribes to wardwatch/v1/<ward>/<bed>/<device>/vitals|infusion"
        ),
        (Some((h, p)), None) => println!(
            "MQTT: external broker {h}:{p}; the edge subscribes to wardwatch/v1/<ward>/<bed>/<device>/vitals|infusion"
        ),
        (None, _) => println!(
            "MQTT: none (--mqtt-broker embedded or host:port); the simulated ward is injected directly"
        ),
    }
    println!(
        "SMART token endpoint: {} (client {}, ES384 key {})",
        cloud.token_endpoint,
        wardwatch::DEV_CLIENT_ID,
        key_path.display()
    );
    println!(
        "Try (this access token is valid for {} s):",
        token.expires_in
    );
    println!(
        "  curl --cacert {} -H 'Authorization: Bearer {}' '{fhir_base}/Observation?code=http://loinc.org|8867-4&_count=5'",
        ca.display(),
        token.access_token
    );
    println!("Stop with Ctrl-C.");

    match args.duration {
        Some(s) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(s)) => {}
                () = shutdown_signal() => {}
            }
        }
        None => shutdown_signal().await,
    }
    if let Some(r) = refresher {
        r.abort();
    }
    let _ = sim_stop.send(());
    let _ = sim.await;
    // Give the edge a moment to hand over what the simulator produced last.
    let _ = edge.wait_drained(Duration::from_secs(3)).await;
    edge.stop().await;
    // After the edge, whose MQTT client has sent its DISCONNECT by now.
    if let Some(b) = embedded_broker {
        b.stop().await;
    }
    cloud.stop().await;
    println!("Wardwatch demo stopped.");
    Ok(())
}

/// Writes the `--info` file atomically (write a temporary file, then rename), so a reader never sees half of it.
fn write_info(info: &std::path::Path, doc: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = info.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(doc)?;
    // Owner-only: the file holds an access token and the development nurse station password.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, info).with_context(|| format!("writing {}", info.display()))?;
    Ok(())
}

async fn run_edge(
    config: PathBuf,
    simulate_beds: Option<u32>,
    accept_burst: Option<usize>,
) -> Result<()> {
    let cfg = wardwatch_edge::EdgeConfig::from_file(&config)?;
    let ward = cfg
        .wards
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let edge = EdgeHandle::start(cfg).await?;
    if let Some(n) = accept_burst {
        let mut sim = WardSimulator::new(WardSimConfig {
            ward: ward.clone(),
            beds: 40,
            seed: 99,
            start_unix_ms: wardwatch_proto::now_unix_ms() - 3_600_000,
            ..WardSimConfig::default()
        });
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let t = sim.now_unix_ms() + 1_000;
            events.extend(sim.advance_to(t).into_iter().filter(|e| {
                matches!(
                    e.payload,
                    wardwatch_proto::v1::edge_event::Payload::Vital(_)
                )
            }));
        }
        events.truncate(n);
        let incoming = events
            .into_iter()
            .map(|e| wardwatch_edge::node::Incoming {
                idempotency_key: e.idempotency_key,
                payload: e.payload,
            })
            .collect();
        let report = edge.node.accept(incoming).await?;
        println!("accepted {}", report.accepted);
    }
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let sim = simulate_beds.map(|beds| {
        let cfg = WardSimConfig {
            ward,
            beds,
            start_unix_ms: wardwatch_proto::now_unix_ms(),
            ..WardSimConfig::default()
        };
        tokio::spawn(wardwatch::run_simulator(
            edge.node.clone(),
            cfg,
            Duration::from_millis(500),
            async move {
                let _ = rx.await;
            },
        ))
    });
    shutdown_signal().await;
    let _ = stop.send(());
    if let Some(s) = sim {
        let _ = s.await;
    }
    edge.stop().await;
    Ok(())
}

/// mimalloc instead of glibc's malloc: a large FHIR Bundle spent most of its time in glibc's free lists (see
/// docs/benchmarks.md, FHIR search).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    wardwatch::install_crypto();
    // rumqttd logs every connection at info and ordinary ones (a client's DISCONNECT, the end of a connection at
    // shutdown) at error level: off unless RUST_LOG asks for it. The embedded broker's own start, address and
    // failures are logged by tests/src/broker.rs.
    wardwatch::init_logging("info,sqlx=warn,h2=warn,hyper=warn,tower=warn,rumqttd=off");
    match Cli::parse().command {
        Command::Demo(args) => demo(args).await,
        Command::Certs { out, edges, hosts } => {
            let paths = wardwatch_cloud::pki::generate_dev_pki(
                &out,
                &wardwatch_cloud::pki::DevPkiRequest {
                    cloud_hosts: hosts,
                    edge_ids: edges,
                },
            )?;
            println!("CA:    {}", paths.ca_cert.display());
            println!(
                "cloud: {} / {}",
                paths.cloud_cert.display(),
                paths.cloud_key.display()
            );
            for (id, c, k) in &paths.edges {
                println!("edge {id}: {} / {}", c.display(), k.display());
            }
            Ok(())
        }
        Command::Simulate {
            beds,
            seed,
            ward,
            minutes,
        } => {
            let start = 1_800_000_000_000;
            let mut sim = WardSimulator::new(WardSimConfig {
                ward,
                beds,
                seed,
                start_unix_ms: start,
                ..WardSimConfig::default()
            });
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            for e in sim
                .devices()
                .into_iter()
                .chain(sim.advance_to(start + minutes * 60_000))
            {
                writeln!(out, "{}", wardwatch::sim_event_json(&e))?;
            }
            Ok(())
        }
        Command::Cloud { config } => {
            let cfg = wardwatch_cloud::CloudConfig::from_file(&config)?;
            let server = wardwatch_cloud::CloudServer::start(cfg).await?;
            println!(
                "cloud sync on {} api on {}",
                server.sync_addr()?,
                server.api_addr()?
            );
            server.run(shutdown_signal()).await;
            Ok(())
        }
        Command::Edge {
            config,
            simulate_beds,
            accept_burst,
        } => run_edge(config, simulate_beds, accept_burst).await,
    }
}

/// Uploads the signed bundles under `models_dir` to the cloud's model registry and assigns each to the demo ward,
/// through the administrator API with a token for the registry's scopes. Returns `name version` of each.
async fn publish_demo_models(
    http: &reqwest::Client,
    cloud: &CloudHandle,
    setup: &wardwatch::DevSetup,
    models_dir: &std::path::Path,
    registry: &str,
) -> Result<Vec<String>> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let token = wardwatch::smart_token(
        http,
        &cloud.token_endpoint,
        &setup.smart_client,
        "system/WardwatchModel.cu",
    )
    .await
    .context("a token for the model registry")?;
    let mut published = Vec::new();
    for kind in ["deterioration", "artifact"] {
        let dir = models_dir.join(kind);
        let read = |f: &str| {
            std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))
        };
        let manifest = read("manifest.json")?;
        let body = serde_json::json!({
            "manifest": b64(&manifest),
            "signature": b64(&read("model.onnx.sig")?),
            "model": b64(&read("model.onnx")?),
        });
        let meta: serde_json::Value =
            serde_json::from_slice(&manifest).context("the bundle's manifest")?;
        let (name, version) = (
            meta["name"].as_str().context("manifest name")?,
            meta["version"].as_str().context("manifest version")?,
        );
        let upload = http.post(registry).json(&body);
        succeed(
            upload,
            &token.access_token,
            &format!("uploading {name} {version}"),
        )
        .await?;
        let assign = http
            .put(format!("{registry}/assignments/{DEMO_WARD}/{name}"))
            .json(&serde_json::json!({ "version": version }));
        succeed(
            assign,
            &token.access_token,
            &format!("assigning {name} {version} to {DEMO_WARD}"),
        )
        .await?;
        published.push(format!("{name} {version}"));
    }
    Ok(published)
}

/// Sends an administrator request with `token`; an error names `what` and the server's answer.
async fn succeed(request: reqwest::RequestBuilder, token: &str, what: &str) -> Result<()> {
    let r = request.bearer_auth(token).send().await?;
    let status = r.status();
    anyhow::ensure!(
        status.is_success(),
        "{what}: {status} {}",
        r.text().await.unwrap_or_default()
    );
    Ok(())
}
