//! Every kind of resource the cloud serves, fetched through the real API after a real sync, validated by a
//! third-party validator (the Python package fhir.resources, R4B models) plus explicit vital-signs profile checks
//! (`cloud/fhir/tests/validate_resources.py`). Skipped loudly where Python or the package is missing, except on
//! CI (`CI` set), where that is a failure.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wardwatch::{
    CloudHandle, EdgeHandle, cloud_config, dev_setup, edge_config, https_client, simulated_devices,
};
use wardwatch_edge::node::Incoming;
use wardwatch_edge::simulator::{WardSimConfig, WardSimulator};

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";

fn validator_available() -> Result<bool> {
    let ok = Command::new("python3")
        .args(["-c", "import fhir.resources.R4B.observation"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            bail!(
                "python3 with fhir.resources is required on CI (pip install -r tests/python/requirements.txt)"
            );
        }
        eprintln!(
            "\n*** SKIPPED: FHIR validation: python3 with fhir.resources not found (pip install -r tests/python/requirements.txt) ***\n"
        );
    }
    Ok(ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_resource_validates() -> Result<()> {
    if !validator_available()? {
        return Ok(());
    }
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let any = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        any,
        any,
        &[(EDGE, &[WARD])],
    )?)
    .await?;
    let edge = EdgeHandle::start(edge_config(
        &setup,
        &dir.path().join("edge"),
        EDGE,
        &[WARD],
        cloud.sync_addr,
    )?)
    .await?;

    // 20 simulated minutes of a 6-bed ward: every metric kind (numeric, blood pressure panel, ACVPU) appears.
    edge.node.accept(simulated_devices(WARD, 6, 2)).await?;
    let start = wardwatch_proto::now_unix_ms() - 3_600_000;
    let mut sim = WardSimulator::new(WardSimConfig {
        ward: WARD.into(),
        beds: 6,
        seed: 2,
        start_unix_ms: start,
        ..WardSimConfig::default()
    });
    let events: Vec<Incoming> = sim
        .advance_to(start + 20 * 60_000)
        .into_iter()
        .map(|e| Incoming {
            idempotency_key: e.idempotency_key,
            payload: e.payload,
        })
        .collect();
    for chunk in events.chunks(1_000) {
        edge.node.accept(chunk.to_vec()).await?;
    }
    edge.wait_drained(Duration::from_secs(60)).await?;

    let client = https_client(&setup.pki.ca_cert)?;
    let get = |path: String| {
        let client = client.clone();
        let token = setup.token.clone();
        async move {
            let r = client.get(path).bearer_auth(token).send().await?;
            Ok::<serde_json::Value, anyhow::Error>(r.json().await?)
        }
    };
    let mut lines = Vec::new();
    let mut seen_codes = BTreeSet::new();
    for metric in wardwatch_proto::metrics::METRICS {
        let b = get(format!(
            "{}/Observation?code={}|{}&_count=3",
            cloud.fhir_base,
            wardwatch_fhir::MDC,
            metric.mdc
        ))
        .await?;
        if let Some(entries) = b["entry"].as_array() {
            for e in entries {
                seen_codes.insert(metric.mdc_ref);
                lines.push(e["resource"].to_string());
            }
        }
        lines.push(b.to_string()); // the Bundle itself
    }
    for required in [
        "MDC_PRESS_BLD_NONINV",
        "WARDWATCH_ACVPU (private)",
        "MDC_ECG_HEART_RATE",
        "MDC_RESP_RATE",
        "MDC_PULS_OXIM_SAT_O2",
        "MDC_TEMP_BODY",
    ] {
        assert!(
            seen_codes.contains(required),
            "no {required} Observation was produced: {seen_codes:?}"
        );
    }
    for dev in [
        "mon-7A-1",
        "drip-7A-1",
        "drip-7A-2",
        "drip-7A-3",
        "drip-7A-4",
    ] {
        let d = get(format!("{}/Device/{dev}", cloud.fhir_base)).await?;
        lines.push(d.to_string());
    }
    lines.push(
        get(format!("{}/Observation?_count=0", cloud.fhir_base))
            .await?
            .to_string(),
    ); // an OperationOutcome

    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cloud/fhir/tests/validate_resources.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the validator")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "FHIR validation failed:\n{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}
