//! Every kind of resource the cloud serves, fetched through the real API after a real sync, validated by a
//! third-party validator (the Python package fhir.resources, R4B models) plus explicit vital-signs profile checks
//! (`cloud/fhir/tests/validate_resources.py`). Skipped loudly where Python or the package is missing, except on
//! CI (`CI` set), where that is a failure.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wardwatch::{EdgeHandle, edge_config, https_client, simulated_devices};
use wardwatch_edge::node::Incoming;
use wardwatch_edge::simulator::{WardSimConfig, WardSimulator};
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{BedLocation, ModelPrediction, RiskScore, risk_score};

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
    let (setup, cloud) = wardwatch::start_dev_cloud(dir.path(), EDGE, &[WARD]).await?;
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
    // The edge does not run models yet (issue 5): one model prediction enters the edge like any event, naming
    // the first three vital signs of its patient as its basis.
    let (patient, basis): (String, Vec<String>) = {
        let mut patient = String::new();
        let mut keys = Vec::new();
        for e in &events {
            if let Payload::Vital(v) = &e.payload
                && (patient.is_empty() || v.patient_id == patient)
                && keys.len() < 3
            {
                patient = v.patient_id.clone();
                keys.push(e.idempotency_key.clone());
            }
        }
        (patient, keys)
    };
    let prediction = Incoming {
        idempotency_key: "validation-model-1".into(),
        payload: Payload::Risk(RiskScore {
            patient_id: patient.clone(),
            location: Some(BedLocation {
                ward: WARD.into(),
                bed: "1".into(),
            }),
            computed_at_unix_ms: start + 20 * 60_000,
            score: Some(risk_score::Score::Model(ModelPrediction {
                model_name: "deterioration".into(),
                model_version: "1.0.0".into(),
                model_sha256: "0123456789abcdef".repeat(4),
                probability: 0.27,
                outcome: "deterioration within 12 h".into(),
                window_start_unix_ms: start,
                window_end_unix_ms: start + 20 * 60_000,
            })),
            derived_from: basis.clone(),
        }),
    };
    for chunk in events.chunks(1_000) {
        edge.node.accept(chunk.to_vec()).await?;
    }
    edge.node.accept(vec![prediction]).await?;
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

    // Issue 6: a sample of every device-mapping resource type, searched and read through the API. Each
    // Bundle is validated, and so is each of its entries on its own line.
    let push_bundle = |b: &serde_json::Value, lines: &mut Vec<String>| -> usize {
        let entries = b["entry"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            lines.push(e["resource"].to_string());
        }
        lines.push(b.to_string());
        entries.len()
    };
    let base = &cloud.fhir_base;
    let news2 = get(format!(
        "{base}/Observation?category=survey&patient={patient}&_count=3"
    ))
    .await?;
    assert!(
        push_bundle(&news2, &mut lines) > 0,
        "no NEWS2 Observation: {news2}"
    );
    let first_news2 = &news2["entry"][0]["resource"];
    assert_eq!(
        first_news2["code"]["coding"][0]["code"],
        wardwatch_fhir::NEWS2_SNOMED
    );
    assert!(
        first_news2["derivedFrom"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "NEWS2 derivedFrom resolves to the vital signs it used: {first_news2}"
    );
    // Each derivedFrom reference can be read, and is a vital sign.
    if let Some(r) = first_news2["derivedFrom"][0]["reference"].as_str() {
        let vital = get(format!("{base}/{r}")).await?;
        assert_eq!(
            vital["category"][0]["coding"][0]["code"], "vital-signs",
            "{vital}"
        );
    }
    let infusion = get(format!("{base}/Observation?category=therapy&_count=2")).await?;
    assert!(
        push_bundle(&infusion, &mut lines) >= 3,
        "no infusion Observations: {infusion}"
    );
    // Observations with an encounter (the simulator gives each patient a visit number): found by
    // encounter:identifier, each carrying it as a logical reference by identifier, and validated.
    let visit = wardwatch_edge::simulator::sim_encounter(&patient);
    let in_visit = get(format!(
        "{base}/Observation?encounter:identifier={}|{}&_count=5",
        wardwatch::VISIT_NUMBER_SYSTEM,
        visit.visit_number
    ))
    .await?;
    assert!(
        push_bundle(&in_visit, &mut lines) > 0,
        "no Observation in visit {}: {in_visit}",
        visit.visit_number
    );
    let with_encounter = in_visit["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .chain(
            infusion["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| &e["resource"]),
        );
    for o in with_encounter {
        assert_eq!(o["encounter"]["type"], "Encounter", "{o}");
        assert_eq!(
            o["encounter"]["identifier"]["system"],
            wardwatch::VISIT_NUMBER_SYSTEM,
            "{o}"
        );
        assert_eq!(
            o["encounter"]["identifier"]["assigner"]["display"],
            wardwatch_edge::simulator::SIM_VISIT_AUTHORITY,
            "{o}"
        );
        assert!(
            o["encounter"]["identifier"]["value"]
                .as_str()
                .is_some_and(|v| v.ends_with("-V1")),
            "{o}"
        );
    }
    let risk = get(format!("{base}/RiskAssessment?patient={patient}")).await?;
    assert_eq!(push_bundle(&risk, &mut lines), 1, "{risk}");
    let ra = &risk["entry"][0]["resource"];
    assert_eq!(
        ra["basis"].as_array().map(Vec::len),
        Some(basis.len()),
        "basis = the prediction's derived_from: {ra}"
    );
    let ra_id = ra["id"].as_str().context("RiskAssessment id")?;
    lines.push(
        get(format!("{base}/RiskAssessment/{ra_id}"))
            .await?
            .to_string(),
    );
    let prov = get(format!("{base}/Provenance/{ra_id}")).await?;
    assert_eq!(
        prov["target"][0]["reference"],
        format!("RiskAssessment/{ra_id}")
    );
    lines.push(prov.to_string());
    let alarms = get(format!("{base}/DetectedIssue?_count=5")).await?;
    assert!(push_bundle(&alarms, &mut lines) > 0, "no alarm: {alarms}");
    let admins = get(format!("{base}/MedicationAdministration?_count=4")).await?;
    assert!(
        push_bundle(&admins, &mut lines) > 0,
        "no MedicationAdministration: {admins}"
    );
    // The simulator names every patient's visit, so each administration carries it as `context`.
    for e in admins["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        assert_eq!(r["context"]["type"], "Encounter", "{r}");
        let mrn = r["subject"]["identifier"]["value"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            r["context"]["identifier"]["value"],
            wardwatch_edge::simulator::sim_encounter(mrn).visit_number,
            "{r}"
        );
    }
    let devices = get(format!("{base}/Device?location=Location/{WARD}.1")).await?;
    assert!(
        push_bundle(&devices, &mut lines) > 0,
        "no Device at bed 1: {devices}"
    );
    let by_patient = get(format!("{base}/Device?patient={patient}")).await?;
    assert!(
        push_bundle(&by_patient, &mut lines) > 0,
        "no Device for {patient}: {by_patient}"
    );
    let metrics = get(format!("{base}/DeviceMetric?source=Device/mon-7A-1")).await?;
    assert!(
        push_bundle(&metrics, &mut lines) >= 5,
        "monitor channels: {metrics}"
    );
    // The Point-of-Care Device containment tree: the MDS with its MDC type, its VMDs and channels
    // (Device.parent), each DeviceMetric's parent channel, and Observations whose device is the DeviceMetric.
    let mds = get(format!("{base}/Device/mon-7A-1")).await?;
    assert_eq!(
        mds["type"]["coding"][0]["code"], "69965",
        "monitor MDS type: {mds}"
    );
    let vmds = get(format!("{base}/Device?parent=Device/mon-7A-1")).await?;
    assert!(
        push_bundle(&vmds, &mut lines) >= 4,
        "monitor VMDs (ECG, SpO2, NIBP, temperature, respiration, other): {vmds}"
    );
    for e in vmds["entry"].as_array().context("VMD entries")? {
        let vmd_id = e["resource"]["id"].as_str().context("VMD id")?;
        assert_eq!(e["resource"]["parent"]["reference"], "Device/mon-7A-1");
        let channels = get(format!("{base}/Device?parent=Device/{vmd_id}")).await?;
        assert_eq!(
            push_bundle(&channels, &mut lines),
            1,
            "one channel per VMD: {channels}"
        );
    }
    for m in metrics["entry"].as_array().context("metric entries")? {
        let parent = m["resource"]["parent"]["reference"]
            .as_str()
            .context("DeviceMetric.parent")?;
        assert!(parent.starts_with("Device/mon-7A-1.chan-"), "{m}");
        lines.push(get(format!("{base}/{parent}")).await?.to_string());
    }
    let pump_vmd = get(format!("{base}/Device?type={}|69986", wardwatch_fhir::MDC)).await?;
    push_bundle(&pump_vmd, &mut lines);
    let spo2_vmds = get(format!("{base}/Device?type={}|69642", wardwatch_fhir::MDC)).await?;
    assert!(
        push_bundle(&spo2_vmds, &mut lines) >= 1,
        "SpO2 VMDs by MDC type: {spo2_vmds}"
    );
    // Versions: a history Bundle of an alarm and of a device, one version read, and an Observation search with
    // its Devices included (search.mode include).
    let alarm_id = alarms["entry"][0]["resource"]["id"]
        .as_str()
        .context("an alarm id")?;
    let alarm_history = get(format!("{base}/DetectedIssue/{alarm_id}/_history")).await?;
    assert_eq!(alarm_history["type"], "history", "{alarm_history}");
    assert!(push_bundle(&alarm_history, &mut lines) > 0);
    let device_history = get(format!("{base}/Device/mon-7A-1/_history")).await?;
    assert!(push_bundle(&device_history, &mut lines) > 0);
    lines.push(
        get(format!("{base}/DetectedIssue/{alarm_id}/_history/1"))
            .await?
            .to_string(),
    );
    let with_devices = get(format!(
        "{base}/Observation?patient={patient}&_include=Observation:device\
         &_include:iterate=DeviceMetric:source&_count=5"
    ))
    .await?;
    let included: Vec<&str> = with_devices["entry"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert!(
        included.contains(&"DeviceMetric") && included.contains(&"Device"),
        "included DeviceMetrics and their MDS Devices: {with_devices}"
    );
    let first = &with_devices["entry"][0]["resource"];
    assert!(
        first["device"]["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with("DeviceMetric/")),
        "Observation.device is the DeviceMetric: {first}"
    );
    push_bundle(&with_devices, &mut lines);
    let locations = get(format!("{base}/Location?partof=Location/{WARD}")).await?;
    assert_eq!(
        push_bundle(&locations, &mut lines),
        6,
        "six beds: {locations}"
    );
    lines.push(get(format!("{base}/Location/{WARD}")).await?.to_string());
    let cs = client.get(format!("{base}/metadata")).send().await?;
    assert_eq!(cs.status(), 200, "metadata is public");
    let cs: serde_json::Value = cs.json().await?;
    let served: BTreeSet<&str> = cs["rest"][0]["resource"]
        .as_array()
        .context("rest.resource")?
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(
        served,
        wardwatch_cloud::resources::READABLE_TYPES
            .iter()
            .copied()
            .chain(["AuditEvent", "Subscription", "SubscriptionTopic"])
            .collect(),
        "the CapabilityStatement lists exactly what is served"
    );
    lines.push(cs.to_string());
    // Unsupported parameters are refused (never ignored), with an OperationOutcome.
    let refused = client
        .get(format!("{base}/DetectedIssue?author=Device/mon-7A-1"))
        .bearer_auth(&setup.token)
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let oo: serde_json::Value = refused.json().await?;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("identified")),
        "{oo}"
    );
    lines.push(oo.to_string());
    // Bad input on the new routes: the right status and an OperationOutcome, never a crash.
    for (path, status) in [
        ("/DetectedIssue?_count=-1", 400),
        ("/RiskAssessment?date=2024-13-45", 400),
        ("/Observation?category=survey&code=8867-4", 400),
        ("/Observation?category=therapy&_cursor=junk", 400),
        ("/Location?partof=Location/bad_ward", 400),
        ("/Device?type=toaster", 400),
        ("/DeviceMetric?type=http://loinc.org|8867-4", 400),
        ("/MedicationAdministration?status=done", 400),
        ("/DetectedIssue?priority=urgent", 400),
        ("/Observation?_revinclude=Provenance:target", 400),
        ("/Observation?encounter=Encounter/1", 400),
        ("/Observation?_include=Observation:subject", 400),
        ("/Observation?_include=Observation:device:Device", 400),
        ("/Observation?_include:iterate=DeviceMetric:source", 400),
        ("/Device?type=urn:iso:std:iso:11073:10101|1", 400),
        ("/Device?parent=Device/a%20b", 400),
        ("/Device/mon-7A-1.vmd-nope", 404),
        ("/Device/mon-7A-1.vmd-spo2/_history/1", 404),
        ("/Observation/_history", 400),
        ("/Device/mon-7A-1/_history?_since=2024", 400),
        ("/Device/mon-7A-1/_history/999", 404),
        ("/Device/no-such-device/_history", 404),
        ("/DetectedIssue/no-such-alarm", 404),
        ("/RiskAssessment/edge-7a.1", 404),
        ("/Observation/edge-7a.1.bogus", 404),
        ("/NoSuchType/1", 404),
    ] {
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth(&setup.token)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body: serde_json::Value = r.json().await?;
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}: {body}");
        lines.push(body.to_string());
    }
    let no_token = client.get(format!("{base}/DetectedIssue")).send().await?;
    assert_eq!(no_token.status(), 401);

    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cloud/fhir/tests/validate_resources.py"
        ))
        .arg(
            "--expect=Observation,Device,Bundle,OperationOutcome,RiskAssessment,Provenance,DetectedIssue,\
             MedicationAdministration,DeviceMetric,Location,CapabilityStatement",
        )
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
