//! The edge models inside a running edge (issue 5): a real `EdgeNode` with the committed models, signed here with
//! a throwaway release key it trusts, fed by the ward simulator.
//!
//! - A simulated patient early in sepsis gets model risk events (naming the model) and the medium-priority
//!   deterioration alarm; the scoring ran on the model's own thread, never on the async runtime. At the peak, the
//!   patient's NEWS2 response alarm covers the model's (one deterioration, one alarm).
//! - A corrupt model and an unsigned model are refused at start: the edge runs without them, says why, and keeps
//!   scoring NEWS2 and raising threshold alarms.
//!
//! Simulated data only; the models are not clinically validated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wardwatch_edge::EdgeNode;
use wardwatch_edge::config::{CloudLinkConfig, EdgeConfig, ModelsConfig, OutboxConfig, SyncConfig};
use wardwatch_edge::ml::inference::{SigningKey, sign_manifest};
use wardwatch_edge::node::Incoming;
use wardwatch_edge::simulator::scenarios::{ScenarioKind, ScenarioSpec};
use wardwatch_edge::simulator::{WardSimConfig, WardSimulator};
use wardwatch_proto::ids::{EdgeId, WardId};
use wardwatch_proto::v1::risk_score::Score;
use wardwatch_proto::v1::{
    AlarmKind, AlarmPriority, BedLocation, EdgeEvent, VitalSign, edge_event::Payload,
};

const HOUR: i64 = 3_600_000;

fn repo_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

/// Copies the committed models into `dir/models` and signs them with a fresh key; returns the config trusting it.
fn signed_models(dir: &Path) -> ModelsConfig {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let models = dir.join("models");
    for kind in ["deterioration", "artifact"] {
        let to = models.join(kind);
        std::fs::create_dir_all(&to).expect("models dir");
        for f in ["model.onnx", "manifest.json"] {
            std::fs::copy(repo_models().join(kind).join(f), to.join(f)).expect("copy model");
        }
        let manifest = std::fs::read(to.join("manifest.json")).expect("manifest");
        std::fs::write(to.join("model.onnx.sig"), sign_manifest(&key, &manifest)).expect("sig");
    }
    let keys = dir.join("release.pub");
    std::fs::write(&keys, hex::encode(key.verifying_key().as_bytes())).expect("key file");
    ModelsConfig {
        score_interval_secs: 10,
        ..ModelsConfig::new(models, keys)
    }
}

fn config(dir: &Path, models: ModelsConfig) -> EdgeConfig {
    let mut c = config_with_default_delays(dir, models);
    c.engine.alarms.medium_delay_ms = 1_000;
    c.engine.alarms.low_delay_ms = 1_000;
    c
}

fn config_with_default_delays(dir: &Path, models: ModelsConfig) -> EdgeConfig {
    let engine = wardwatch_edge::clinical::engine::EngineConfig {
        models: Some(models),
        ..Default::default()
    };
    EdgeConfig {
        edge_id: EdgeId::new("edge-ml").expect("edge id"),
        wards: vec![WardId::new("7A").expect("ward")],
        data_dir: dir.join("edge"),
        outbox: OutboxConfig::default(),
        // Nothing listens there: the cloud is unreachable and every event stays in the outbox for inspection.
        cloud: CloudLinkConfig {
            endpoint: "https://localhost:1".into(),
            server_name: None,
            ca_cert: dir.join("absent-ca.pem"),
            client_cert: dir.join("absent.pem"),
            client_key: dir.join("absent.key"),
        },
        sync: SyncConfig::default(),
        engine,
        station: None,
        hl7_mllp: None,
        mqtt: None,
    }
}

async fn all_events(node: &EdgeNode) -> Vec<EdgeEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = node.outbox().read_after(after, 5_000).await.expect("read");
        let Some(last) = batch.last() else { break };
        after = last.sequence;
        out.extend(batch);
    }
    out
}

fn run(node: &Arc<EdgeNode>) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(node.clone().run(async move {
        let _ = stopped.await;
    }));
    stop
}

/// Feeds six simulated hours ending now into `node`: bed 1 develops sepsis from `onset_ago` ms before now over a
/// `ramp`-ms ramp, bed 2 is stable. Vitals every 5 s keep the test quick; the deterioration model reads one-minute
/// bins. Returns the septic patient's id.
async fn feed_sepsis(node: &EdgeNode, onset_ago: i64, ramp: i64) -> String {
    let now = wardwatch_proto::now_unix_ms();
    let start = now - 6 * HOUR;
    let sepsis = ScenarioSpec {
        duration_ms: Some(ramp),
        severity: Some(1.0),
        ..ScenarioSpec::new(1, ScenarioKind::SepsisDeterioration, now - onset_ago)
    };
    let mut sim = WardSimulator::new(WardSimConfig {
        ward: "7A".into(),
        beds: 2,
        seed: 11,
        start_unix_ms: start,
        vitals_period_ms: 5_000,
        infusion_share: 0.0,
        scenarios: vec![sepsis],
        ..WardSimConfig::default()
    });
    let septic = sim
        .patients()
        .into_iter()
        .find(|p| p.bed == 1)
        .expect("bed 1")
        .patient_id;
    let mut t = start;
    while t < now {
        t = (t + 10 * 60_000).min(now);
        let incoming: Vec<Incoming> = sim
            .advance_to(t)
            .into_iter()
            .map(|e| Incoming {
                idempotency_key: e.idempotency_key,
                payload: e.payload,
            })
            .collect();
        let r = node.accept(incoming).await.expect("accepted");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    }

    septic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_early_in_sepsis_gets_model_risk_events_and_a_medium_alarm_naming_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The alarm path at the model's operating point: 70 minutes into a 5-hour sepsis ramp the risk is up while
    // NEWS2 does not yet call for an urgent response (which would cover the model's alarm, see the next test).
    // The manifest's stricter alarm threshold is exercised by the engine's unit tests and the ward evaluation.
    let mut models = signed_models(dir.path());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_models().join("deterioration/manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let threshold = manifest["decision_threshold"].as_f64().expect("threshold");
    models.deterioration_alarm_threshold = Some(threshold);
    let node = EdgeNode::start(config(dir.path(), models))
        .await
        .expect("edge starts");
    let status = node.models().status().to_vec();
    assert!(status.iter().all(|s| s.running), "{status:?}");
    let stop = run(&node);
    let septic = feed_sepsis(&node, 70 * 60_000, 5 * HOUR).await;

    // Within a few scoring rounds (every 10 s here): risk events for both beds and the medium alarm for bed 1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let alarm = loop {
        let found = node.engine().lock().ok().and_then(|e| {
            e.active_alarms()
                .into_iter()
                .find(|a| a.key.kind == AlarmKind::DeteriorationRisk as i32)
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deterioration alarm; engine stats {:?}",
            node.engine().lock().map(|e| e.stats()).ok()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alarm.patient_id, septic);
    assert_eq!(alarm.priority, AlarmPriority::Medium);
    // The alarm names the committed model and version (read from its manifest, so a retrained model is tested as is).
    let version = manifest["version"].as_str().expect("version");
    assert!(
        alarm
            .message
            .contains(&format!("wardwatch-deterioration {version}")),
        "{}",
        alarm.message
    );
    assert!(
        alarm.message.contains("strongest factors")
            && alarm.message.contains("not clinically validated"),
        "{}",
        alarm.message
    );

    // The predictions are durable events (they sync like the rest), each naming its model.
    let sha = manifest["sha256"].as_str().expect("sha256");
    let mut deadline = 50;
    let predictions = loop {
        let p: Vec<(String, f64, Vec<String>, String, String, i64)> = all_events(&node)
            .await
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::Risk(r)) => match r.score {
                    Some(Score::Model(m)) => Some((
                        r.patient_id,
                        m.probability,
                        r.derived_from,
                        m.model_name,
                        m.model_sha256,
                        m.window_end_unix_ms - m.window_start_unix_ms,
                    )),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if !p.is_empty() || deadline == 0 {
            break p;
        }
        deadline -= 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !predictions.is_empty(),
        "no model risk events in the outbox"
    );
    for (_, p, derived, name, model_sha, window) in &predictions {
        assert_eq!(name, "wardwatch-deterioration");
        assert_eq!(model_sha, sha);
        assert!((0.0..=1.0).contains(p));
        assert_eq!(*window, 4 * HOUR);
        assert!(!derived.is_empty(), "a prediction names its source samples");
    }
    let septic_p = predictions
        .iter()
        .filter(|p| p.0 == septic)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let stable_p = predictions
        .iter()
        .filter(|p| p.0 != septic)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    eprintln!(
        "septic patient p = {septic_p:.3}, stable patient p = {stable_p:.3}; alarm: {}",
        alarm.message
    );
    assert!(septic_p >= threshold, "septic {septic_p} < {threshold}");
    assert!(
        stable_p < septic_p,
        "stable {stable_p} vs septic {septic_p}"
    );

    // Scoring ran on the model's scoring thread, never on the async runtime's threads.
    let det = node.models().deterioration.as_ref().expect("model runs");
    let stats = det.scorer.stats();
    assert!(stats.runs.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.runs_on_async_runtime.load(Ordering::Relaxed), 0);
    let _ = stop.send(());
}

/// At the peak of sepsis the patient's NEWS2 calls for an urgent or emergency response: that alarm sounds, and the
/// model's risk, far above the manifest's alarm threshold, makes no second alarm (de-duplication); the risk is still
/// an event that syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_peak_of_sepsis_the_news2_alarm_covers_the_model_s_risk_alarm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = EdgeNode::start(config(dir.path(), signed_models(dir.path())))
        .await
        .expect("edge starts");
    let stop = run(&node);
    let septic = feed_sepsis(&node, 4 * HOUR, 4 * HOUR).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let covered = node
            .engine()
            .lock()
            .map(|e| e.stats().risk_alarms_covered)
            .unwrap_or(0);
        if covered >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the model's risk was never covered; engine stats {:?}",
            node.engine().lock().map(|e| e.stats()).ok()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let active = node
        .engine()
        .lock()
        .map(|e| e.active_alarms())
        .expect("engine");
    assert!(
        active.iter().any(|a| a.patient_id == septic
            && a.key.kind == AlarmKind::News2Response as i32
            && matches!(a.priority, AlarmPriority::Medium | AlarmPriority::High)),
        "{active:?}"
    );
    assert!(
        !active
            .iter()
            .any(|a| a.key.kind == AlarmKind::DeteriorationRisk as i32),
        "{active:?}"
    );
    assert!(
        all_events(&node).await.iter().any(|e| matches!(&e.payload,
            Some(Payload::Risk(r)) if r.patient_id == septic && matches!(r.score, Some(Score::Model(_))))),
        "the risk itself is still an event"
    );
    let _ = stop.send(());
}

fn vital(mdc: u32, value: f64, at: i64, key: &str) -> Incoming {
    Incoming {
        idempotency_key: key.into(),
        payload: Payload::Vital(VitalSign {
            patient_id: "SIM000001".into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            }),
            device_id: "mon-1".into(),
            metric_mdc: mdc,
            value,
            unit_ucum: wardwatch_proto::metrics::by_mdc(mdc)
                .map_or("", |m| m.unit)
                .into(),
            measured_at_unix_ms: at,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_unsigned_models_are_refused_and_the_edge_keeps_running_news2_and_thresholds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = signed_models(dir.path());
    // Deterioration: one byte of the model changed after signing. Artifact: no signature at all.
    let onnx = models.dir.join("deterioration/model.onnx");
    let mut bytes = std::fs::read(&onnx).expect("model");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&onnx, bytes).expect("corrupt");
    std::fs::remove_file(models.dir.join("artifact/model.onnx.sig")).expect("unsign");

    let node = EdgeNode::start(config(dir.path(), models))
        .await
        .expect("the edge starts without its models");
    assert!(node.models().deterioration.is_none() && node.models().artifact.is_none());
    let status = node.models().status().to_vec();
    assert_eq!(status.len(), 2);
    assert!(status.iter().all(|s| !s.running), "{status:?}");
    let det = &status[0];
    assert!(
        det.detail.contains("sha256") && det.detail.contains("NEWS2"),
        "{}",
        det.detail
    );
    assert!(
        status[1].detail.contains("model.onnx.sig"),
        "{}",
        status[1].detail
    );
    // The nurse station's snapshot carries the same status.
    let snap_models = node
        .engine()
        .lock()
        .map(|e| e.snapshot(0).models)
        .expect("engine");
    assert_eq!(snap_models, status);

    // A low-priority technical alarm says so, and syncs like every alarm.
    let technical: Vec<_> = all_events(&node)
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::Alarm(a)) if a.kind == AlarmKind::ModelUnavailable as i32 => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(technical.len(), 1, "{technical:?}");
    assert_eq!(technical[0].priority, AlarmPriority::Low as i32);
    assert!(
        technical[0].message.contains("deterioration") && technical[0].message.contains("artifact"),
        "{}",
        technical[0].message
    );

    let stop = run(&node);
    let now = wardwatch_proto::now_unix_ms();
    node.accept(vec![
        vital(
            wardwatch_proto::metrics::MDC_PULS_OXIM_SAT_O2,
            84.0,
            now,
            "s1",
        ),
        vital(wardwatch_proto::metrics::MDC_RESP_RATE, 26.0, now, "r1"),
    ])
    .await
    .expect("accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = all_events(&node).await;
        let news2 = events.iter().any(|e| {
            matches!(&e.payload, Some(Payload::Risk(r)) if matches!(r.score, Some(Score::News2(_))))
        });
        let high = events.iter().any(|e| {
            matches!(&e.payload, Some(Payload::Alarm(a))
                if a.kind == AlarmKind::VitalThreshold as i32 && a.priority == AlarmPriority::High as i32)
        });
        let model = events.iter().any(|e| {
            matches!(&e.payload, Some(Payload::Risk(r)) if matches!(r.score, Some(Score::Model(_))))
        });
        assert!(!model, "no model runs, so no model predictions");
        if news2 && high {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "NEWS2 {news2}, high SpO2 alarm {high}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
}

#[tokio::test]
async fn an_untrusted_key_file_is_reported_for_both_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut models = signed_models(dir.path());
    models.trusted_keys = dir.path().join("missing.pub");
    let node = EdgeNode::start(config(dir.path(), models))
        .await
        .expect("the edge starts without its models");
    let status = node.models().status();
    assert!(
        status
            .iter()
            .all(|s| !s.running && s.detail.contains("trusted release keys")),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_unflagged_artefact_still_raises_the_high_alarm_while_the_artifact_model_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = EdgeNode::start(config_with_default_delays(
        dir.path(),
        signed_models(dir.path()),
    ))
    .await
    .expect("edge starts");
    assert!(node.models().artifact.is_some());
    let stop = run(&node);
    // Ten quiet minutes, then an unflagged motion artefact over the last 12 s: at full severity SpO2 drops by up to
    // 20 % per sample, through the hard limit (85 %). Whatever the artifact model says about the signal, a
    // high-priority condition is never held back.
    let now = wardwatch_proto::now_unix_ms();
    let artefact = ScenarioSpec {
        duration_ms: Some(12_000),
        severity: Some(1.0),
        artifact_flagged: Some(false),
        ..ScenarioSpec::new(1, ScenarioKind::MotionArtifact, now - 12_000)
    };
    let mut sim = WardSimulator::new(WardSimConfig {
        ward: "7A".into(),
        beds: 1,
        seed: 5,
        start_unix_ms: now - 600_000,
        infusion_share: 0.0,
        scenarios: vec![artefact],
        ..WardSimConfig::default()
    });
    let incoming: Vec<Incoming> = sim
        .advance_to(now)
        .into_iter()
        .map(|e| Incoming {
            idempotency_key: e.idempotency_key,
            payload: e.payload,
        })
        .collect();
    node.accept(incoming).await.expect("accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (stats, alarms, counts) = {
            let e = node.engine().lock().expect("engine");
            (e.stats(), e.active_alarms(), e.alarm_stats())
        };
        if alarms
            .iter()
            .any(|a| a.key.detail == "spo2-low" && a.priority == AlarmPriority::High)
        {
            eprintln!("engine {stats:?}; alarm manager {counts:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no high SpO2 alarm; engine {stats:?}; alarm manager {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
}
