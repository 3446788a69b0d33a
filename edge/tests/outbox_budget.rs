//! The edge near its disk budget: a technical alarm is raised (and itself made durable for the cloud), and at
//! the budget new events are refused with a clear error rather than dropped.

use wardwatch_edge::EdgeNode;
use wardwatch_edge::config::{CloudLinkConfig, EdgeConfig, OutboxConfig, SyncConfig};
use wardwatch_edge::node::{AcceptError, Incoming};
use wardwatch_edge::outbox::OutboxError;
use wardwatch_proto::ids::{EdgeId, WardId};
use wardwatch_proto::v1::{AlarmKind, AlarmState, BedLocation, VitalSign, edge_event::Payload};

fn config(dir: &std::path::Path) -> EdgeConfig {
    EdgeConfig {
        edge_id: EdgeId::new("edge-t").unwrap_or_else(|e| panic!("{e}")),
        wards: vec![WardId::new("7A").unwrap_or_else(|e| panic!("{e}"))],
        data_dir: dir.to_path_buf(),
        outbox: OutboxConfig {
            max_bytes: 1 << 20,
            near_full_ratio: 0.5,
            ..OutboxConfig::default()
        },
        cloud: CloudLinkConfig {
            endpoint: "https://localhost:1".into(),
            server_name: None,
            ca_cert: dir.join("absent-ca.pem"),
            client_cert: dir.join("absent.pem"),
            client_key: dir.join("absent.key"),
        },
        sync: SyncConfig::default(),
        engine: Default::default(),
        station: None,
        hl7_mllp: None,
        mqtt: None,
    }
}

fn vitals(from: usize, n: usize) -> Vec<Incoming> {
    (from..from + n)
        .map(|i| Incoming {
            idempotency_key: format!("mon-1:147842:{i}"),
            payload: Payload::Vital(VitalSign {
                patient_id: "MRN1".into(),
                location: Some(BedLocation {
                    ward: "7A".into(),
                    bed: "1".into(),
                }),
                device_id: "mon-1".into(),
                metric_mdc: wardwatch_proto::metrics::MDC_ECG_HEART_RATE,
                value: 70.0,
                unit_ucum: "/min".into(),
                measured_at_unix_ms: 1_700_000_000_000 + i as i64,
                ..Default::default()
            }),
        })
        .collect()
}

#[tokio::test]
async fn near_budget_raises_a_technical_alarm_then_refuses_without_dropping() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // No sync task runs: the cloud is "unreachable", everything stays in the outbox.
    let node = EdgeNode::start(config(dir.path()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut accepted = 0u64;
    let mut alarm_seen_at = None;
    let refused = loop {
        match node.accept(vitals(accepted as usize, 500)).await {
            Ok(r) => {
                accepted += r.accepted;
                if node.outbox_near_full() && alarm_seen_at.is_none() {
                    alarm_seen_at = Some(accepted);
                }
            }
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "the budget never took effect");
    };
    assert!(
        matches!(refused, AcceptError::Outbox(OutboxError::Full { .. })),
        "{refused}"
    );
    assert!(refused.to_string().contains("not accepted"));
    let raised_at =
        alarm_seen_at.unwrap_or_else(|| panic!("no near-full alarm before the budget was reached"));
    assert!(raised_at < accepted, "the alarm came before the refusal");
    // Everything accepted is still there, and the alarm is in the outbox waiting for the cloud.
    let events = node
        .outbox()
        .read_after(0, 1_000_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vitals_kept = events
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::Vital(_))))
        .count() as u64;
    assert_eq!(vitals_kept, accepted);
    let alarm = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::Alarm(a)) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no technical alarm event in the outbox"));
    assert_eq!(alarm.kind, AlarmKind::OutboxNearFull as i32);
    assert_eq!(alarm.state, AlarmState::Raised as i32);
    assert_eq!(
        node.accept_stats()
            .refused_full
            .load(std::sync::atomic::Ordering::Relaxed),
        500
    );
}

#[tokio::test]
async fn rejects_invalid_and_foreign_ward_events_at_the_door() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node = EdgeNode::start(config(dir.path()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut batch = vitals(0, 3);
    if let Payload::Vital(v) = &mut batch[1].payload {
        v.value = f64::NAN;
    }
    if let Payload::Vital(v) = &mut batch[2].payload {
        v.location = Some(BedLocation {
            ward: "9Z".into(),
            bed: "1".into(),
        });
    }
    let r = node
        .accept(batch.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.accepted, 1);
    let idx: Vec<usize> = r.rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, vec![1, 2]);
    // The same good event again is a duplicate, not a second row.
    let r = node
        .accept(batch[..1].to_vec())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.accepted, r.duplicates), (0, 1));
    assert_eq!(
        node.outbox()
            .pending()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        1
    );
}
