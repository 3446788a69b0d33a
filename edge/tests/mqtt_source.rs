//! The MQTT source against the real Mosquitto broker at 127.0.0.1:1883: devices publish with QoS 1, the edge
//! acknowledges only what is durable, dead-letters poison messages and keeps going, collapses redeliveries, and
//! resumes its broker session after a restart.
//!
//! Without a reachable broker each test prints a loud SKIPPED line and passes, except when `CI` is set: then it
//! fails. Every test uses its own client id and topic prefix (random suffix), so tests can run in parallel and
//! leave nothing behind (the persistent sessions are purged at the end).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wardwatch_edge::EdgeNode;
use wardwatch_edge::config::EdgeConfig;
use wardwatch_edge::node::{AcceptError, Incoming};
use wardwatch_edge::outbox::OutboxError;
use wardwatch_edge::sources::mqtt::{
    DeadLetter, DeadLetterStore, MqttSource, MqttSourceConfig, MqttStats, MqttStatsSnapshot,
};
use wardwatch_proto::metrics::{
    MDC_ECG_HEART_RATE, MDC_PRESS_BLD_NONINV, MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE, MDC_TEMP_BODY,
    WARDWATCH_ACVPU,
};
use wardwatch_proto::v1::{
    BedLocation, EdgeEvent, InfusionState, InfusionStatus, QualityFlag, VitalSign,
    edge_event::Payload,
};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 1883;
const WAIT: Duration = Duration::from_secs(20);

/// Whether the broker is reachable; if not, prints SKIPPED (or fails when `CI` is set).
fn broker_or_skip(test: &str) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], PORT));
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: no MQTT broker at {HOST}:{PORT} ({e}) and CI is set: mosquitto must be running"
            );
            eprintln!(
                "\n********************************************************************************\n\
                 SKIPPED {test}: no MQTT broker at {HOST}:{PORT} ({e}).\n\
                 Install and start mosquitto to run the MQTT integration tests.\n\
                 ********************************************************************************\n"
            );
            false
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{}-{nanos:x}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    )
}

/// An edge configuration with no reachable cloud (the outbox just buffers). Built from TOML so fields other
/// modules add with defaults need no change here.
fn edge_config(dir: &std::path::Path, max_bytes: u64) -> EdgeConfig {
    let s = |p: PathBuf| toml::Value::String(p.to_string_lossy().into_owned());
    let mut outbox = toml::Table::new();
    outbox.insert("max_bytes".into(), toml::Value::Integer(max_bytes as i64));
    outbox.insert("near_full_ratio".into(), toml::Value::Float(0.5));
    let mut cloud = toml::Table::new();
    cloud.insert("endpoint".into(), "https://localhost:1".into());
    cloud.insert("ca_cert".into(), s(dir.join("absent-ca.pem")));
    cloud.insert("client_cert".into(), s(dir.join("absent.pem")));
    cloud.insert("client_key".into(), s(dir.join("absent.key")));
    let mut t = toml::Table::new();
    t.insert("edge_id".into(), "edge-mqtt".into());
    t.insert("wards".into(), toml::Value::Array(vec!["7A".into()]));
    t.insert("data_dir".into(), s(dir.to_path_buf()));
    t.insert("outbox".into(), toml::Value::Table(outbox));
    t.insert("cloud".into(), toml::Value::Table(cloud));
    let cfg: EdgeConfig = t.try_into().unwrap_or_else(|e| panic!("{e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{e}"));
    cfg
}

/// A running source.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// An edge node with an MQTT source on a unique prefix and client id.
struct Harness {
    dir: tempfile::TempDir,
    node: Arc<EdgeNode>,
    cfg: MqttSourceConfig,
    running: Option<Running>,
}

impl Harness {
    async fn new(tag: &str, outbox_bytes: u64) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let node = EdgeNode::start(edge_config(dir.path(), outbox_bytes))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let id = unique(tag);
        let cfg = MqttSourceConfig {
            broker_host: HOST.into(),
            broker_port: PORT,
            client_id: format!("ww-edge-{id}"),
            topic_prefix: format!("wardwatch-test/{id}/v1"),
            reconnect_backoff_max_ms: 500,
            ..Default::default()
        };
        Self {
            dir,
            node,
            cfg,
            running: None,
        }
    }

    /// Starts the source and waits until its subscription is granted.
    async fn start(&mut self) -> Arc<MqttStats> {
        let source = MqttSource::open(self.cfg.clone(), self.node.clone(), self.dir.path())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let stats = source.stats().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(source.run(async move {
            let _ = stopped.await;
        }));
        let s = stats.clone();
        wait_for("the subscription", &stats, move || {
            s.snapshot().subscriptions >= 1
        })
        .await;
        self.running = Some(Running { stop, task });
        stats
    }

    /// Stops the source and waits for it to finish.
    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            tokio::time::timeout(WAIT, r.task)
                .await
                .unwrap_or_else(|_| panic!("the MQTT source did not stop"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn topic(&self, ward: &str, bed: &str, device: &str, kind: &str) -> String {
        format!("{}/{ward}/{bed}/{device}/{kind}", self.cfg.topic_prefix)
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let store = DeadLetterStore::open(self.dir.path(), 1_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let rows = store.recent(1_000).await.unwrap_or_else(|e| panic!("{e}"));
        store.close().await;
        rows.into_iter().rev().collect()
    }

    async fn events(&self) -> Vec<EdgeEvent> {
        self.node
            .outbox()
            .read_after(0, 100_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn vitals(&self) -> Vec<(String, VitalSign)> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::Vital(v)) => Some((e.idempotency_key, v)),
                _ => None,
            })
            .collect()
    }

    /// Stops the source and removes its persistent session from the broker.
    async fn finish(mut self) {
        self.stop().await;
        purge_session(&self.cfg.client_id).await;
    }
}

async fn wait_for(what: &str, stats: &MqttStats, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; stats {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_acked(stats: &Arc<MqttStats>, n: u64) -> MqttStatsSnapshot {
    let s = stats.clone();
    wait_for(&format!("{n} PUBACKs"), stats, move || {
        s.snapshot().acked >= n
    })
    .await;
    stats.snapshot()
}

/// A device: a rumqttc client publishing with QoS 1. Returns once the broker acknowledged every message.
async fn publish(messages: &[(String, Vec<u8>)]) {
    let mut opts = MqttOptions::new(format!("ww-dev-{}", unique("pub")), HOST, PORT);
    opts.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let acks = Arc::new(AtomicU64::new(0));
    let counted = acks.clone();
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let start = Instant::now();
    while acks.load(Ordering::SeqCst) < messages.len() as u64 {
        assert!(
            start.elapsed() < WAIT,
            "the broker did not acknowledge the publishes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
}

/// Connects once with a clean session under `client_id`, which discards the broker's stored session.
async fn purge_session(client_id: &str) {
    let mut opts = MqttOptions::new(client_id, HOST, PORT);
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 8);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

fn msg(topic: String, payload: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (topic, payload.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_good_vitals_and_infusion_reach_the_outbox_with_units_converted() {
    if !broker_or_skip("mqtt_good_vitals_and_infusion_reach_the_outbox_with_units_converted") {
        return;
    }
    let mut h = Harness::new("good", 64 << 20).await;
    let stats = h.start().await;
    let vitals = r#"{"patient_id":"MRN1","measured_at":"2026-03-01T08:15:00Z","samples":[
        {"mdc":147842,"value":72,"unit":"/min","id":"m-1"},
        {"mdc":150456,"value":93,"unit":"%","quality":["artifact"]},
        {"mdc":150364,"value":98.6,"unit":"°F"},
        {"mdc":150020,"unit":"mmHg","components":[{"mdc":150021,"value":120},{"mdc":150022,"value":80}]},
        {"mdc":192512,"enumerated":"c"}]}"#;
    let infusion = r#"{"patient_id":"MRN1","order_id":"ORD-1","medication":"NaCl 0.9%","prescribed_rate_ml_h":125,
        "drop_factor_gtt_per_ml":20,"drops_per_min":42,"volume_infused_ml":250,"volume_remaining_ml":750,
        "state":"occluded","measured_at":1772352900000}"#;
    publish(&[
        msg(h.topic("7A", "12", "mon-1", "vitals"), vitals),
        msg(h.topic("7A", "12", "pump-1", "infusion"), infusion),
    ])
    .await;
    let snap = wait_for_acked(&stats, 2).await;
    assert_eq!(
        (
            snap.received,
            snap.accepted,
            snap.rejected,
            snap.dead_lettered
        ),
        (2, 6, 0, 0),
        "{snap:?}"
    );

    let ms = 1_772_352_900_000;
    let vitals = h.vitals().await;
    let by_metric = |mdc: u32| {
        vitals
            .iter()
            .find(|(_, v)| v.metric_mdc == mdc)
            .cloned()
            .unwrap_or_else(|| panic!("no vital {mdc} in {vitals:?}"))
    };
    let (key, hr) = by_metric(MDC_ECG_HEART_RATE);
    assert_eq!(key, format!("mqtt:mon-1:{MDC_ECG_HEART_RATE}:{ms}"));
    assert_eq!((hr.value, hr.unit_ucum.as_str()), (72.0, "/min"));
    assert_eq!(hr.measured_at_unix_ms, ms);
    assert_eq!(
        hr.location,
        Some(BedLocation {
            ward: "7A".into(),
            bed: "12".into()
        })
    );
    assert_eq!(
        (hr.patient_id.as_str(), hr.device_id.as_str()),
        ("MRN1", "mon-1")
    );
    assert_eq!(
        by_metric(MDC_PULS_OXIM_SAT_O2).1.quality,
        vec![QualityFlag::Artifact as i32]
    );
    let (_, temp) = by_metric(MDC_TEMP_BODY);
    assert_eq!(
        (temp.value, temp.unit_ucum.as_str()),
        (37.0, "Cel"),
        "°F converted"
    );
    let (_, bp) = by_metric(MDC_PRESS_BLD_NONINV);
    assert_eq!(bp.unit_ucum, "mm[Hg]");
    assert_eq!(
        bp.components.iter().map(|c| c.value).collect::<Vec<_>>(),
        vec![120.0, 80.0]
    );
    assert_eq!(by_metric(WARDWATCH_ACVPU).1.enumerated, "C");

    let inf: Vec<(String, InfusionStatus)> = h
        .events()
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::Infusion(i)) => Some((e.idempotency_key, i)),
            _ => None,
        })
        .collect();
    assert_eq!(inf.len(), 1);
    let (key, st) = &inf[0];
    assert_eq!(key, &format!("mqtt:pump-1:infusion:{ms}"));
    assert_eq!(st.state, InfusionState::Occluded as i32);
    assert_eq!(st.measured_rate_ml_h, 126.0, "42 gtt/min at 20 gtt/mL");
    assert_eq!(
        (st.order_id.as_str(), st.device_id.as_str()),
        ("ORD-1", "pump-1")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_poison_messages_are_dead_lettered_acked_and_the_source_keeps_working() {
    if !broker_or_skip("mqtt_poison_messages_are_dead_lettered_acked_and_the_source_keeps_working")
    {
        return;
    }
    let mut h = Harness::new("poison", 64 << 20).await;
    h.cfg.max_payload_bytes = 2048;
    let stats = h.start().await;
    let t = |bed: &str, dev: &str| h.topic("7A", bed, dev, "vitals");
    let good = |v: u32| {
        format!(
            r#"{{"patient_id":"MRN2","measured_at":{},"samples":[{{"mdc":147842,"value":{v},"unit":"bpm"}}]}}"#,
            1_772_352_900_000u64 + u64::from(v)
        )
    };
    let messages = vec![
        msg(
            t("1", "mon-a"),
            "{\"patient_id\": \"MRN2\", \"samples\": [ oops",
        ),
        msg(
            t("1", "mon-a"),
            r#"{"patient_id":"MRN2","measured_at":1772352900000,"samples":[{"mdc":4242,"value":1,"unit":"/min"}]}"#,
        ),
        msg(
            t("1", "mon-b"),
            r#"{"patient_id":"MRN2","measured_at":1772352900000,"samples":[
                {"mdc":147842,"value":61,"unit":"/min"},
                {"mdc":999999,"value":1,"unit":"/min"},
                {"mdc":151562,"value":"NaN","unit":"/min"}]}"#,
        ),
        msg(
            t("1", "mon-c"),
            format!("{:width$}", good(70), width = 4096),
        ),
        msg(
            t("1", "mon-d"),
            r#"{"patient_id":"MRN2","ward":"8B","measured_at":1,"samples":[{"mdc":147842,"value":1,"unit":"/min"}]}"#,
        ),
        msg(t("1", "mon.e"), good(71)),
        msg(h.topic("9Z", "1", "mon-f", "vitals"), good(72)),
        msg(t("1", "mon-g"), good(73)),
    ];
    publish(&messages).await;
    let snap = wait_for_acked(&stats, messages.len() as u64).await;
    assert_eq!(snap.received, 8, "{snap:?}");
    assert_eq!(
        (
            snap.malformed,
            snap.rejected,
            snap.dead_lettered,
            snap.accepted
        ),
        (4, 4, 8, 2),
        "{snap:?}"
    );
    assert_eq!((snap.not_acked_outbox_full, snap.not_acked_errors), (0, 0));

    let rows = h.dead_letters().await;
    let reasons: Vec<(&str, Option<u64>)> = rows
        .iter()
        .map(|r| (r.reason.as_str(), r.sample_index))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("malformed_json", None),
            ("REJECT_REASON_UNKNOWN_METRIC", Some(0)),
            ("REJECT_REASON_UNKNOWN_METRIC", Some(1)),
            ("REJECT_REASON_NOT_FINITE", Some(2)),
            ("oversized", None),
            ("location_mismatch", None),
            ("bad_topic", None),
            ("REJECT_REASON_WARD_NOT_PERMITTED", Some(0)),
        ]
    );
    assert!(rows[1].detail.contains("MDC 4242"), "{}", rows[1].detail);
    assert!(rows[4].detail.contains("4096 bytes"), "{}", rows[4].detail);
    assert_eq!(rows[4].payload_bytes, 4096);
    assert_eq!(rows[0].topic, t("1", "mon-a"));
    assert_eq!(
        rows[0].payload,
        b"{\"patient_id\": \"MRN2\", \"samples\": [ oops".to_vec()
    );

    // The good sample of the mixed message and the last message went through.
    let devices: Vec<(String, f64)> = h
        .vitals()
        .await
        .into_iter()
        .map(|(_, v)| (v.device_id, v.value))
        .collect();
    assert_eq!(
        devices,
        vec![("mon-b".to_string(), 61.0), ("mon-g".to_string(), 73.0)]
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_duplicate_publish_is_stored_once() {
    if !broker_or_skip("mqtt_duplicate_publish_is_stored_once") {
        return;
    }
    let mut h = Harness::new("dup", 64 << 20).await;
    let stats = h.start().await;
    let body = r#"{"patient_id":"MRN3","measured_at":1772352900000,"samples":[{"mdc":151562,"value":14,"unit":"/min"}]}"#;
    let m = msg(h.topic("7A", "2", "mon-1", "vitals"), body);
    publish(&[m.clone(), m]).await;
    let snap = wait_for_acked(&stats, 2).await;
    assert_eq!((snap.accepted, snap.duplicates), (1, 1), "{snap:?}");
    let vitals = h.vitals().await;
    assert_eq!(vitals.len(), 1);
    assert_eq!(
        vitals[0].0,
        format!("mqtt:mon-1:{MDC_RESP_RATE}:1772352900000")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_session_resumes_and_delivers_what_was_published_while_the_edge_was_down() {
    if !broker_or_skip(
        "mqtt_session_resumes_and_delivers_what_was_published_while_the_edge_was_down",
    ) {
        return;
    }
    let mut h = Harness::new("resume", 64 << 20).await;
    assert!(!h.cfg.clean_session, "the default resumes the session");
    h.start().await;
    h.stop().await;
    // The edge is down: a device publishes (the broker queues it for the edge's persistent session).
    let body = r#"{"patient_id":"MRN4","measured_at":1772352960000,"samples":[{"mdc":147842,"value":99,"unit":"/min"}]}"#;
    publish(&[msg(h.topic("7A", "4", "mon-9", "vitals"), body)]).await;
    assert!(h.vitals().await.is_empty());

    let stats = h.start().await;
    let snap = wait_for_acked(&stats, 1).await;
    assert_eq!((snap.received, snap.accepted), (1, 1), "{snap:?}");
    let vitals = h.vitals().await;
    assert_eq!(vitals.len(), 1);
    assert_eq!(
        (vitals[0].1.device_id.as_str(), vitals[0].1.value),
        ("mon-9", 99.0)
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_outbox_full_is_not_acknowledged_and_is_redelivered_once_there_is_room() {
    if !broker_or_skip("mqtt_outbox_full_is_not_acknowledged_and_is_redelivered_once_there_is_room")
    {
        return;
    }
    // The smallest budget the edge allows; fill it directly.
    let mut h = Harness::new("full", 1 << 20).await;
    let mut i = 0u64;
    loop {
        let batch: Vec<Incoming> = (i..i + 500)
            .map(|k| Incoming {
                idempotency_key: format!("fill:{k}"),
                payload: Payload::Vital(VitalSign {
                    patient_id: "MRN0".into(),
                    location: Some(BedLocation {
                        ward: "7A".into(),
                        bed: "1".into(),
                    }),
                    device_id: "filler".into(),
                    metric_mdc: MDC_ECG_HEART_RATE,
                    value: 70.0,
                    unit_ucum: "/min".into(),
                    measured_at_unix_ms: 1_700_000_000_000 + k as i64,
                    ..Default::default()
                }),
            })
            .collect();
        match h.node.accept(batch).await {
            Ok(_) => i += 500,
            Err(AcceptError::Outbox(OutboxError::Full { .. })) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(i < 1_000_000, "the outbox budget never took effect");
    }
    let stats = h.start().await;
    let body = r#"{"patient_id":"MRN5","measured_at":1772352900000,"samples":[{"mdc":147842,"value":77,"unit":"/min"}]}"#;
    publish(&[msg(h.topic("7A", "5", "mon-5", "vitals"), body)]).await;
    let s = stats.clone();
    wait_for("a refusal because the outbox is full", &stats, move || {
        s.snapshot().not_acked_outbox_full >= 2
    })
    .await;
    let snap = stats.snapshot();
    assert_eq!(snap.acked, 0, "nothing acknowledged while full: {snap:?}");
    assert!(
        snap.reconnects >= 1,
        "the source reconnected to get a redelivery: {snap:?}"
    );

    // The cloud acknowledges everything: the outbox has room again, and the redelivered message is accepted.
    let last = h
        .events()
        .await
        .last()
        .map(|e| e.sequence)
        .unwrap_or_else(|| panic!("empty outbox"));
    h.node
        .outbox()
        .acknowledge(last, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let snap = wait_for_acked(&stats, 1).await;
    assert_eq!(snap.accepted, 1, "{snap:?}");
    let mqtt: Vec<_> = h
        .vitals()
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with("mqtt:"))
        .collect();
    assert_eq!(mqtt.len(), 1);
    assert_eq!(mqtt[0].1.value, 77.0);
    h.finish().await;
}

fn interop_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/mqtt_interop.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_interop_with_python_paho_publisher_and_json_schemas() {
    if !broker_or_skip("mqtt_interop_with_python_paho_publisher_and_json_schemas") {
        return;
    }
    let mut h = Harness::new("paho", 64 << 20).await;
    let stats = h.start().await;
    let suffix = unique("s").replace('-', "");
    let out = tokio::process::Command::new("python3")
        .arg(interop_script())
        .args([HOST, &PORT.to_string(), &h.cfg.topic_prefix])
        .args(["--ward", "7A", "--bed", "3", "--device-suffix", &suffix])
        .output()
        .await;
    let skip = |why: String| {
        assert!(
            std::env::var_os("CI").is_none(),
            "Python MQTT interop cannot run and CI is set: {why}"
        );
        eprintln!(
            "\n********************************************************************************\n\
             SKIPPED mqtt_interop_with_python_paho_publisher_and_json_schemas: {why}\n\
             pip install paho-mqtt==2.2.0 jsonschema==4.26.0 rfc3339-validator==0.1.4\n\
             ********************************************************************************\n"
        );
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            skip(format!("python3 not runnable: {e}"));
            h.finish().await;
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(77) {
        skip(stderr.trim().to_string());
        h.finish().await;
        return;
    }
    assert!(
        out.status.success(),
        "mqtt_interop.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let last: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("unexpected script output:\n{stdout}"));
    assert_eq!(last["published"], 3, "{stdout}");

    let snap = wait_for_acked(&stats, 3).await;
    assert_eq!(
        (snap.accepted, snap.rejected, snap.dead_lettered),
        (7, 0, 0),
        "{snap:?}"
    );
    let monitor = format!("py-mon-{suffix}");
    let vitals: Vec<VitalSign> = h
        .vitals()
        .await
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.device_id == monitor)
        .collect();
    assert_eq!(vitals.len(), 6, "{vitals:?}");
    let temp = vitals
        .iter()
        .find(|v| v.metric_mdc == MDC_TEMP_BODY)
        .unwrap_or_else(|| panic!("no temperature"));
    assert_eq!((temp.value, temp.unit_ucum.as_str()), (38.0, "Cel"));
    let rr = vitals
        .iter()
        .find(|v| v.metric_mdc == MDC_RESP_RATE)
        .unwrap_or_else(|| panic!("no respiratory rate"));
    assert_eq!(rr.measured_at_unix_ms, 1_772_352_960_000);
    let infusions: Vec<InfusionStatus> = h
        .events()
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::Infusion(i)) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(infusions.len(), 1);
    assert_eq!(infusions[0].device_id, format!("py-pump-{suffix}"));
    assert_eq!(infusions[0].measured_rate_ml_h, 126.0);
    assert_eq!(infusions[0].state, InfusionState::Running as i32);
    h.finish().await;
}

/// A TCP proxy in front of the broker that can cut every connection (and refuse new ones) until restored.
struct Proxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind((HOST, 0))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (up, up_rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    continue; // dropped: the client sees the connection closed
                }
                let mut up_rx = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect((HOST, PORT)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up, task }
    }

    fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_reconnects_after_the_link_drops_and_resumes_the_session() {
    if !broker_or_skip("mqtt_reconnects_after_the_link_drops_and_resumes_the_session") {
        return;
    }
    let proxy = Proxy::start().await;
    let mut h = Harness::new("link", 64 << 20).await;
    h.cfg.broker_port = proxy.port;
    h.cfg.keep_alive_secs = 5;
    let stats = h.start().await;

    // The link to the broker drops; the source retries with backoff.
    proxy.set_up(false);
    let s = stats.clone();
    wait_for("reconnect attempts", &stats, move || {
        s.snapshot().reconnects >= 3
    })
    .await;
    // Meanwhile a device publishes; the broker queues it for the edge's session.
    let body = r#"{"patient_id":"MRN6","measured_at":1772352900000,"samples":[{"mdc":150456,"value":96,"unit":"%"}]}"#;
    publish(&[msg(h.topic("7A", "6", "ox-1", "vitals"), body)]).await;

    proxy.set_up(true);
    let snap = wait_for_acked(&stats, 1).await;
    assert!(snap.connects >= 2, "{snap:?}");
    assert_eq!(snap.accepted, 1, "{snap:?}");
    let vitals = h.vitals().await;
    assert_eq!(vitals.len(), 1);
    assert_eq!(vitals[0].1.device_id, "ox-1");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_unreachable_broker_is_retried_and_shutdown_stays_prompt() {
    // Needs no broker: nothing listens on the port.
    init_tracing();
    let free = std::net::TcpListener::bind((HOST, 0)).unwrap_or_else(|e| panic!("{e}"));
    let port = free.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    drop(free);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node = EdgeNode::start(edge_config(dir.path(), 64 << 20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = MqttSourceConfig {
        broker_port: port,
        client_id: format!("ww-edge-{}", unique("down")),
        reconnect_backoff_max_ms: 200,
        ..Default::default()
    };
    let source = MqttSource::open(cfg, node, dir.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stats = source.stats().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(source.run(async move {
        let _ = stopped.await;
    }));
    let s = stats.clone();
    wait_for("reconnect attempts", &stats, move || {
        s.snapshot().reconnects >= 5
    })
    .await;
    assert_eq!(stats.snapshot().connects, 0);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap_or_else(|_| panic!("shutdown during backoff was not prompt"))
        .unwrap_or_else(|e| panic!("{e}"));
}
