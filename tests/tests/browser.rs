//! The nurse station in headless Chromium (Debian's chromium driven by playwright-core, tests/browser): the real
//! edge serves it with a simulated ward; the page must show beds, NEWS2, infusion volume and ETA and an alarm,
//! and acknowledging the alarm by clicking must work. The page is signed in to through its form (a wrong
//! password first, which must be refused), as the development nurse `wardwatch::dev_station` creates. Skipped loudly where node, playwright-core or chromium
//! are missing, except on CI (`CI` set), where that is a failure. Set `WARDWATCH_UPDATE_SCREENSHOT=1` to refresh
//! docs/nurse-station.png.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use wardwatch::{CloudHandle, EdgeHandle, cloud_config, dev_setup, edge_config};
use wardwatch_edge::node::Incoming;
use wardwatch_edge::simulator::{WardSimConfig, WardSimulator};
use wardwatch_proto::v1::{BedLocation, VitalSign, edge_event::Payload};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");

fn browser_available() -> Result<bool> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ok = Path::new(&chromium).exists()
        && Path::new(DIR).join("node_modules/playwright-core").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            bail!("chromium, node and playwright-core are required on CI (.ci/run installs them)");
        }
        eprintln!(
            "\n*** SKIPPED: nurse station browser test: needs {chromium}, node and `npm ci` in tests/browser ***\n"
        );
    }
    Ok(ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurse_station_in_headless_chromium() -> Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &["edge-7a"])?;
    let any = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        any,
        any,
        &[("edge-7a", &["7A"])],
    )?)
    .await?;
    let mut cfg = edge_config(
        &setup,
        &dir.path().join("edge"),
        "edge-7a",
        &["7A"],
        cloud.sync_addr,
    )?;
    let (station_cfg, login) = wardwatch::dev_station(any)?;
    cfg.station = Some(station_cfg);
    let edge = EdgeHandle::start(cfg).await?;
    let station = edge
        .node
        .station_addr()
        .map(|a| format!("http://{a}/"))
        .unwrap_or_default();

    // Ten minutes of a 12-bed ward up to now, then a desaturation at bed 1 (an immediate high-priority alarm).
    let now = wardwatch_proto::now_unix_ms();
    let mut sim = WardSimulator::new(WardSimConfig {
        ward: "7A".into(),
        beds: 12,
        seed: 3,
        start_unix_ms: now - 600_000,
        ..WardSimConfig::default()
    });
    let mut events: Vec<Incoming> = sim
        .devices()
        .into_iter()
        .map(|e| Incoming {
            idempotency_key: e.idempotency_key,
            payload: e.payload,
        })
        .collect();
    events.extend(sim.advance_to(now).into_iter().map(|e| Incoming {
        idempotency_key: e.idempotency_key,
        payload: e.payload,
    }));
    let patient = sim
        .patients()
        .first()
        .map(|p| p.patient_id.clone())
        .unwrap_or_default();
    for chunk in events.chunks(2_000) {
        edge.node.accept(chunk.to_vec()).await?;
    }
    edge.node
        .accept(vec![Incoming {
            idempotency_key: "test-desaturation".into(),
            payload: Payload::Vital(VitalSign {
                patient_id: patient,
                location: Some(BedLocation {
                    ward: "7A".into(),
                    bed: "1".into(),
                }),
                device_id: "mon-7A-1".into(),
                metric_mdc: wardwatch_proto::metrics::MDC_PULS_OXIM_SAT_O2,
                value: 82.0,
                unit_ucum: "%".into(),
                measured_at_unix_ms: now + 1,
                ..Default::default()
            }),
        }])
        .await?;
    edge.wait_drained(Duration::from_secs(60)).await?;

    let shot = if std::env::var_os("WARDWATCH_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/nurse-station.png")
    } else {
        dir.path().join("nurse-station.png")
    };
    let out = tokio::process::Command::new("node")
        .current_dir(DIR)
        .arg("station.mjs")
        .arg(&station)
        .arg(&shot)
        .env("STATION_USER", &login.user)
        .env("STATION_PASSWORD", &login.password)
        .output()
        .await?;
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser test failed");
    assert!(shot.exists(), "no screenshot");
    // The acknowledgement reached the outbox and the cloud as an alarm event, and the wrong password was counted.
    edge.wait_drained(Duration::from_secs(30)).await?;
    let stats = edge.node.station_stats().context("station stats")?;
    assert_eq!(stats.sign_in_failures.load(Ordering::Relaxed), 1);
    assert!(stats.sign_ins.load(Ordering::Relaxed) >= 1);
    assert!(stats.actions.load(Ordering::Relaxed) >= 2);
    // The SpO2-scale decision made in the page reached the cloud, naming the signed-in nurse.
    let rows = cloud
        .store
        .search_events(&wardwatch_cloud::storage::EventQuery {
            kind: "spo2_scale",
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    match &rows[0].payload {
        Payload::Spo2Scale(s) => {
            assert_eq!((s.scale, s.changed_by.as_str()), (2, login.user.as_str()));
            assert_eq!(s.reason, "COPD, target 88-92 % (browser test)");
        }
        other => panic!("not an SpO2-scale event: {other:?}"),
    }
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}
