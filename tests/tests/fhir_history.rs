//! vread and `_history` against the real cloud over HTTPS with real bearer tokens (issue 6), on SQLite and
//! PostgreSQL (the Device versions are written by migration 0009's trigger inside the ingest transaction, so
//! both backends are exercised).
//!
//! What a version is (docs/fhir-mapping.md, "Versions"): one for anything made from an immutable sample or
//! event; one per state change for an alarm (DetectedIssue), per status report for an infusion
//! (MedicationAdministration), per DeviceInfo report that changed the Device. Read, vread, history and the ETag
//! must agree.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};
use wardwatch::{
    CloudHandle, DevSetup, TestDatabase, cloud_config, dev_setup, https_client, simulated_devices,
    simulated_vitals,
};
use wardwatch_cloud::config::ApiClient;
use wardwatch_cloud::storage::IngestItem;
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{
    Alarm, AlarmKind, AlarmPriority, AlarmState, BedLocation, DeviceInfo, InfusionState,
    InfusionStatus, OperationalState,
};

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";
/// Static token of a client that may read Observations only.
const OBS_ONLY_TOKEN: &str = "fhir-history-observation-only-token";

/// The cloud, an HTTPS client and the two tokens.
struct Fixture {
    _setup: DevSetup,
    cloud: CloudHandle,
    http: reqwest::Client,
    token: String,
}

/// One response: status, ETag and body.
struct Got {
    status: u16,
    etag: Option<String>,
    body: Value,
}

impl Fixture {
    async fn start(dir: &std::path::Path, database_url: Option<String>) -> Result<Self> {
        let setup = dev_setup(dir, &[EDGE])?;
        let any = "127.0.0.1:0".parse()?;
        let mut config = cloud_config(
            &setup,
            &dir.join("cloud"),
            database_url,
            any,
            any,
            &[(EDGE, &[WARD])],
        )?;
        config.api_clients.push(ApiClient {
            client_id: "ehr-observations-only".into(),
            scopes: vec!["system/Observation.rs".into()],
            jwks: None,
            jwks_path: None,
            token_sha256: Some(hex(&Sha256::digest(OBS_ONLY_TOKEN.as_bytes()))),
        });
        let cloud = CloudHandle::start(config).await?;
        let http = https_client(&setup.pki.ca_cert)?;
        let token = setup.token.clone();
        Ok(Self {
            _setup: setup,
            cloud,
            http,
            token,
        })
    }

    async fn get_as(&self, token: &str, path: &str) -> Result<Got> {
        let url = if path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{path}", self.cloud.fhir_base)
        };
        let r = self.http.get(&url).bearer_auth(token).send().await?;
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r.json().await.with_context(|| format!("JSON from {url}"))?;
        Ok(Got { status, etag, body })
    }

    async fn get(&self, path: &str) -> Result<Got> {
        self.get_as(&self.token, path).await
    }

    /// GET that must answer 200; returns the body and checks the ETag is `W/"<meta.versionId>"`.
    async fn ok_versioned(&self, path: &str) -> Result<Value> {
        let g = self.get(path).await?;
        if g.status != 200 {
            bail!("GET {path}: {} {}", g.status, g.body);
        }
        let vid = g.body["meta"]["versionId"]
            .as_str()
            .with_context(|| format!("{path} has meta.versionId: {}", g.body))?;
        assert_eq!(
            g.etag.as_deref(),
            Some(format!("W/\"{vid}\"").as_str()),
            "ETag of {path} is its version"
        );
        Ok(g.body)
    }

    /// GET that must answer `status` with an OperationOutcome; returns its diagnostics.
    async fn refused(&self, token: &str, path: &str, status: u16) -> Result<String> {
        let g = self.get_as(token, path).await?;
        assert_eq!(g.status, status, "GET {path}: {}", g.body);
        assert_eq!(g.body["resourceType"], "OperationOutcome", "{path}");
        Ok(g.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn items(payloads: &[Payload], first_sequence: u64) -> Vec<IngestItem> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| IngestItem {
            sequence: first_sequence + i as u64,
            idempotency_key: format!("k-{}", first_sequence + i as u64),
            outcome: Ok(p.clone()),
        })
        .collect()
}

fn location() -> Option<BedLocation> {
    Some(BedLocation {
        ward: WARD.into(),
        bed: "1".into(),
    })
}

fn device_report(base: &DeviceInfo, model: &str, state: OperationalState, at: i64) -> Payload {
    let mut d = base.clone();
    d.model = model.into();
    d.set_state(state);
    d.reported_at_unix_ms = at;
    Payload::Device(d)
}

fn alarm(state: AlarmState, at: i64, by: &str, patient: &str) -> Payload {
    alarm_of(
        "edge-7a-alarm-1",
        AlarmPriority::High,
        state,
        at,
        by,
        patient,
    )
}

fn alarm_of(
    id: &str,
    priority: AlarmPriority,
    state: AlarmState,
    at: i64,
    by: &str,
    patient: &str,
) -> Payload {
    let mut a = Alarm {
        alarm_id: id.into(),
        patient_id: patient.into(),
        location: location(),
        device_id: "mon-7A-1".into(),
        message: format!("HR high ({})", state.as_str_name()),
        changed_at_unix_ms: at,
        changed_by: by.into(),
        ..Default::default()
    };
    a.set_kind(AlarmKind::VitalThreshold);
    a.set_priority(priority);
    a.set_state(state);
    Payload::Alarm(a)
}

fn infusion(state: InfusionState, at: i64, infused: f64, patient: &str) -> Payload {
    infusion_of("ORD-1", state, at, infused, patient)
}

fn infusion_of(order: &str, state: InfusionState, at: i64, infused: f64, patient: &str) -> Payload {
    let mut i = InfusionStatus {
        order_id: order.into(),
        patient_id: patient.into(),
        location: location(),
        device_id: "pump-7A-1".into(),
        medication: "Sodium chloride 0.9 % 1000 mL".into(),
        prescribed_rate_ml_h: 125.0,
        measured_rate_ml_h: 124.0,
        volume_infused_ml: infused,
        volume_remaining_ml: 1000.0 - infused,
        measured_at_unix_ms: at,
        ..Default::default()
    };
    i.set_state(state);
    Payload::Infusion(i)
}

/// The versionIds of a history Bundle's entries, in order, after checking each entry's request/response.
fn history_versions(bundle: &Value) -> Result<Vec<String>> {
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    let mut out = Vec::new();
    for e in bundle["entry"].as_array().context("history entries")? {
        let vid = e["resource"]["meta"]["versionId"]
            .as_str()
            .context("entry versionId")?
            .to_string();
        assert_eq!(
            e["response"]["etag"],
            format!("W/\"{vid}\""),
            "entry etag is its version"
        );
        assert_eq!(
            e["response"]["lastModified"], e["resource"]["meta"]["lastUpdated"],
            "lastModified is the version's lastUpdated"
        );
        assert!(
            e["fullUrl"]
                .as_str()
                .is_some_and(|u| u.ends_with(&format!("/_history/{vid}"))),
            "{}",
            e["fullUrl"]
        );
        let method = if vid == "1" { "POST" } else { "PUT" };
        assert_eq!(e["request"]["method"], method);
        out.push(vid);
    }
    Ok(out)
}

/// The ids of a searchset Bundle's entries with this search mode, in order.
fn ids_with_mode(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == mode)
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `_include=Observation:device`, the new search parameters and `_summary=count`, on the data
/// [`versions_scenario`] stored.
async fn search_scenario(f: &Fixture, patient: &str, dev: &str) -> Result<()> {
    // ---- _include: every referenced DeviceMetric once (Observation.device is the measuring DeviceMetric), as
    // its current version, after the matches; with _include:iterate=DeviceMetric:source their MDS Devices too.
    let g = f
        .get(&format!(
            "Observation?patient={patient}&_include=Observation:device\
             &_include:iterate=DeviceMetric:source&_count=1000"
        ))
        .await?;
    assert_eq!(g.status, 200, "{}", g.body);
    let entries = g.body["entry"].as_array().context("entries")?;
    let referenced: std::collections::BTreeSet<String> = entries
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["device"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("DeviceMetric/").map(str::to_string))
        .collect();
    assert!(
        referenced.iter().any(|m| m.starts_with(&format!("{dev}."))),
        "{referenced:?}"
    );
    let included_of = |t: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["search"]["mode"] == "include" && e["resource"]["resourceType"] == t)
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
            .collect()
    };
    let included = included_of("DeviceMetric");
    let unique: std::collections::BTreeSet<String> = included.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        included.len(),
        "each DeviceMetric once: {included:?}"
    );
    assert_eq!(unique, referenced, "exactly the referenced DeviceMetrics");
    let devices = included_of("Device");
    assert!(
        devices.contains(&dev.to_string()),
        "the DeviceMetrics' source MDS: {devices:?}"
    );
    assert_eq!(
        devices
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        devices.len(),
        "each Device once"
    );
    let first_include = entries
        .iter()
        .position(|e| e["search"]["mode"] == "include")
        .context("an include")?;
    assert!(
        entries[first_include..]
            .iter()
            .all(|e| e["search"]["mode"] == "include"),
        "included resources follow the matches"
    );
    let inc = entries
        .iter()
        .find(|e| e["search"]["mode"] == "include" && e["resource"]["id"] == dev)
        .context("the device included")?;
    assert_eq!(
        inc["resource"],
        f.ok_versioned(&format!("Device/{dev}")).await?,
        "an included Device is its current version"
    );
    assert!(
        inc["fullUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/Device/{dev}")))
    );
    let metric = included.first().context("a DeviceMetric included")?;
    let inc_metric = entries
        .iter()
        .find(|e| e["search"]["mode"] == "include" && e["resource"]["id"] == metric.as_str())
        .context("the metric included")?;
    assert_eq!(
        inc_metric["resource"],
        f.ok_versioned(&format!("DeviceMetric/{metric}")).await?,
        "an included DeviceMetric is its current version"
    );
    // Paging keeps the _include.
    let g = f
        .get(&format!(
            "Observation?patient={patient}&_include=Observation:device&_count=2"
        ))
        .await?;
    let next = g.body["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .context("a next link")?;
    assert!(next.contains("_include=Observation%3Adevice"), "{next}");
    assert!(!ids_with_mode(&g.body, "include").is_empty());
    // Without DeviceMetric scope: the Observations, no DeviceMetrics, and a warning saying why.
    let g = f
        .get_as(
            OBS_ONLY_TOKEN,
            &format!("Observation?patient={patient}&_include=Observation:device&_count=5"),
        )
        .await?;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(ids_with_mode(&g.body, "match").len(), 5);
    assert!(ids_with_mode(&g.body, "include").is_empty());
    let last = g.body["entry"]
        .as_array()
        .and_then(|e| e.last())
        .context("entries")?;
    assert_eq!(last["search"]["mode"], "outcome");
    assert_eq!(last["resource"]["resourceType"], "OperationOutcome");
    assert_eq!(last["resource"]["issue"][0]["severity"], "warning");
    assert!(
        last["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("DeviceMetric")),
        "{last}"
    );
    // Infusion Observations reference their pump's DeviceMetric.
    let g = f
        .get("Observation?category=therapy&_include=Observation:device")
        .await?;
    assert_eq!(g.status, 200, "{}", g.body);
    // Refused, never ignored.
    for (q, needle) in [
        ("Observation?_revinclude=Provenance:target", "_revinclude"),
        ("DetectedIssue?_revinclude=Provenance:target", "_revinclude"),
        ("Observation?encounter=Encounter/1", "encounter"),
        (
            "Observation?category=survey&encounter=Encounter/1",
            "encounter",
        ),
        (
            "Observation?_include=Observation:patient",
            "Observation:device",
        ),
        ("DetectedIssue?priority=urgent", "high, medium"),
        ("DetectedIssue?status=active", "preliminary"),
        ("MedicationAdministration?status=running", "in-progress"),
        ("Device?_summary=data", "count"),
    ] {
        let why = f.refused(&f.token, q, 400).await?;
        assert!(why.contains(needle), "{q}: {why}");
    }

    // ---- DetectedIssue by current status and priority.
    let search_ids = |q: String| async move {
        let g = f.get(&q).await?;
        assert_eq!(g.status, 200, "{q}: {}", g.body);
        anyhow::Ok(ids_with_mode(&g.body, "match"))
    };
    assert_eq!(
        search_ids(format!("DetectedIssue?patient={patient}&status=final")).await?,
        ["edge-7a-alarm-1"]
    );
    assert_eq!(
        search_ids(format!(
            "DetectedIssue?patient={patient}&status=preliminary"
        ))
        .await?,
        ["edge-7a-alarm-2"]
    );
    assert_eq!(
        search_ids("DetectedIssue?priority=high".into()).await?,
        ["edge-7a-alarm-1"]
    );
    assert_eq!(
        search_ids(
            "DetectedIssue?priority=urn:wardwatch:fhir:extension:alarm-priority|medium".into()
        )
        .await?,
        ["edge-7a-alarm-2"]
    );
    assert!(
        search_ids("DetectedIssue?priority=medium&status=final".into())
            .await?
            .is_empty()
    );
    assert_eq!(
        search_ids("DetectedIssue?status=preliminary,final&_count=10".into())
            .await?
            .len(),
        2
    );

    // ---- MedicationAdministration by current status.
    for (status, want) in [
        ("completed", vec!["ORD-1"]),
        ("in-progress", vec!["ORD-2"]),
        ("on-hold", vec!["ORD-3"]),
        ("stopped", vec![]),
    ] {
        assert_eq!(
            search_ids(format!(
                "MedicationAdministration?patient={patient}&status={status}"
            ))
            .await?,
            want,
            "{status}"
        );
    }

    // ---- _summary=count on every searchable type agrees with the search itself.
    for q in [
        format!("DetectedIssue?patient={patient}"),
        "DetectedIssue?status=preliminary".to_string(),
        "MedicationAdministration?status=completed,on-hold".to_string(),
        format!("Device?location=Location/{WARD}"),
        format!("DeviceMetric?source=Device/{dev}"),
        format!("Location?partof=Location/{WARD}"),
        format!("RiskAssessment?patient={patient}"),
        format!("Observation?patient={patient}"),
    ] {
        let all = search_ids(format!("{q}&_count=1000")).await?.len();
        let g = f.get(&format!("{q}&_summary=count")).await?;
        assert_eq!(g.status, 200, "{q}: {}", g.body);
        assert_eq!(g.body["total"].as_u64(), Some(all as u64), "{q}");
        assert!(g.body.get("entry").is_none(), "{q}: no entries");
    }

    // ---- A VMD (and a channel) Device is derived: only its current version is known, like a DeviceMetric.
    let vmds = f.get(&format!("Device?parent=Device/{dev}")).await?;
    assert_eq!(vmds.status, 200, "{}", vmds.body);
    let vmd = vmds.body["entry"][0]["resource"]["id"]
        .as_str()
        .context("a VMD of the device")?
        .to_string();
    let current = f.ok_versioned(&format!("Device/{vmd}")).await?;
    let vid = current["meta"]["versionId"].as_str().context("versionId")?;
    assert!(vid.starts_with('h'), "a content digest: {vid}");
    assert_eq!(
        f.ok_versioned(&format!("Device/{vmd}/_history/{vid}"))
            .await?,
        current
    );
    let why = f
        .refused(&f.token, &format!("Device/{vmd}/_history/1"), 404)
        .await?;
    assert!(why.contains("only the current version"), "{why}");

    // ---- The CapabilityStatement says so.
    let cs = f.get("metadata").await?.body;
    let res = |t: &str| {
        cs["rest"][0]["resource"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["type"] == t))
            .cloned()
            .unwrap_or_default()
    };
    let obs = res("Observation");
    assert_eq!(
        obs["searchInclude"],
        serde_json::json!(["Observation:device", "DeviceMetric:source"])
    );
    assert!(obs.get("searchRevInclude").is_none());
    let names = |r: &Value| -> Vec<String> {
        r["searchParam"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // encounter is listed (searched with :identifier on vital signs; its documentation says so).
    assert!(names(&obs).contains(&"encounter".to_string()));
    let di = res("DetectedIssue");
    for n in ["status", "priority", "_summary"] {
        assert!(names(&di).contains(&n.to_string()), "{n}: {di}");
    }
    assert!(names(&res("MedicationAdministration")).contains(&"status".to_string()));
    for t in wardwatch_cloud::resources::READABLE_TYPES {
        let r = res(t);
        let interactions: Vec<&str> = r["interaction"]
            .as_array()
            .map(|i| i.iter().filter_map(|i| i["code"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            interactions.contains(&"vread") && interactions.contains(&"history-instance"),
            "{t}: {interactions:?}"
        );
        assert_eq!(r["versioning"], "versioned", "{t}");
    }
    Ok(())
}

async fn versions_scenario(f: &Fixture) -> Result<(String, String)> {
    let now = wardwatch_proto::now_unix_ms();
    let devices = simulated_devices(WARD, 1, 5);
    let vitals = simulated_vitals(WARD, 1, 5, 12);
    let patient = vitals
        .iter()
        .find_map(|e| match &e.payload {
            Payload::Vital(v) => Some(v.patient_id.clone()),
            _ => None,
        })
        .context("a vital sign")?;
    let base_device = devices
        .iter()
        .find_map(|e| match &e.payload {
            Payload::Device(d) => Some(d.clone()),
            _ => None,
        })
        .context("a simulated device")?;
    let dev = base_device.device_id.clone();
    let t0 = base_device.reported_at_unix_ms;

    // Batch 1: the simulated devices and vitals. Batch 2: two newer reports of one device, an older one (never
    // overwrites, so no version) and the latest again (changes nothing, so no version); an alarm's three state
    // changes and an order's three reports.
    let mut first: Vec<Payload> = devices.iter().map(|e| e.payload.clone()).collect();
    first.extend(vitals.iter().map(|e| e.payload.clone()));
    let n_first = first.len() as u64;
    f.cloud.store.ingest(EDGE, &items(&first, 1)).await?;
    let second = vec![
        device_report(&base_device, "M-2", OperationalState::Standby, t0 + 60_000),
        device_report(&base_device, "M-3", OperationalState::On, t0 + 120_000),
        device_report(&base_device, "M-old", OperationalState::Off, t0 + 30_000),
        device_report(&base_device, "M-3", OperationalState::On, t0 + 120_000),
        alarm(AlarmState::Raised, now - 3_000, "system", &patient),
        alarm(
            AlarmState::Acknowledged,
            now - 2_000,
            "nurse.jones",
            &patient,
        ),
        alarm(AlarmState::Cleared, now - 1_000, "system", &patient),
        infusion(InfusionState::Running, now - 120_000, 10.0, &patient),
        infusion(InfusionState::Running, now - 60_000, 12.0, &patient),
        infusion(InfusionState::Completed, now - 1_000, 1000.0, &patient),
        // For the searches: an active medium alarm, a running and a paused order.
        alarm_of(
            "edge-7a-alarm-2",
            AlarmPriority::Medium,
            AlarmState::Raised,
            now - 500,
            "system",
            &patient,
        ),
        infusion_of("ORD-2", InfusionState::Running, now - 2_000, 5.0, &patient),
        infusion_of("ORD-3", InfusionState::Paused, now - 3_000, 7.0, &patient),
    ];
    let second_items = items(&second, n_first + 1);
    f.cloud.store.ingest(EDGE, &second_items).await?;
    // The same batch again (an edge that lost the acknowledgement): replayed, so no version is added.
    let again = f.cloud.store.ingest(EDGE, &second_items).await?;
    assert_eq!(again.stored, 0, "a resent batch is not stored twice");

    // ---- Device: one version per report that changed it.
    let read = f.ok_versioned(&format!("Device/{dev}")).await?;
    assert_eq!(read["meta"]["versionId"], "3", "{read}");
    assert_eq!(read["modelNumber"], "M-3");
    let v1 = f.ok_versioned(&format!("Device/{dev}/_history/1")).await?;
    assert_eq!(v1["modelNumber"], base_device.model.as_str());
    assert_eq!(v1["meta"]["versionId"], "1");
    let v2 = f.ok_versioned(&format!("Device/{dev}/_history/2")).await?;
    assert_eq!(v2["modelNumber"], "M-2");
    assert_eq!(v2["status"], "active");
    assert_eq!(v2["note"][0]["text"], "operational status: standby");
    let v3 = f.ok_versioned(&format!("Device/{dev}/_history/3")).await?;
    assert_eq!(v3, read, "the newest version is what a read returns");
    let why = f
        .refused(&f.token, &format!("Device/{dev}/_history/4"), 404)
        .await?;
    assert!(why.contains("1 to 3"), "{why}");
    f.refused(&f.token, &format!("Device/{dev}/_history/x"), 404)
        .await?;
    f.refused(&f.token, &format!("Device/{dev}/_history/0"), 404)
        .await?;
    let h = f.ok_history(&format!("Device/{dev}/_history")).await?;
    assert_eq!(h["total"], 3);
    assert_eq!(history_versions(&h)?, ["3", "2", "1"]);
    assert_eq!(h["entry"][0]["resource"], read);
    assert_eq!(h["entry"][2]["resource"], v1);
    // Paged: two, then the rest through the next link.
    let p1 = f
        .ok_history(&format!("Device/{dev}/_history?_count=2"))
        .await?;
    assert_eq!(history_versions(&p1)?, ["3", "2"]);
    let next = p1["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .context("a next link")?
        .to_string();
    let p2 = f.ok_history(&next).await?;
    assert_eq!(history_versions(&p2)?, ["1"]);
    assert!(
        p2["link"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| l["relation"] != "next")),
        "the last page has no next link"
    );
    // A search shows the same current version.
    let s = f
        .get(&format!("Device?location=Location/{WARD}&_count=100"))
        .await?;
    assert_eq!(s.status, 200, "{}", s.body);
    let found = s.body["entry"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["resource"]["id"] == dev.as_str()))
        .context("the device in its ward's search")?;
    assert_eq!(found["resource"], read);

    // ---- DetectedIssue: one version per state change.
    let alarm_read = f.ok_versioned("DetectedIssue/edge-7a-alarm-1").await?;
    assert_eq!(alarm_read["meta"]["versionId"], "3");
    assert_eq!(alarm_read["status"], "final");
    let a1 = f
        .ok_versioned("DetectedIssue/edge-7a-alarm-1/_history/1")
        .await?;
    assert_eq!(a1["status"], "preliminary");
    assert!(a1.get("mitigation").is_none(), "version 1 is the raise");
    let a2 = f
        .ok_versioned("DetectedIssue/edge-7a-alarm-1/_history/2")
        .await?;
    assert_eq!(a2["mitigation"][0]["author"]["display"], "nurse.jones");
    assert_eq!(a2["mitigation"].as_array().map(Vec::len), Some(1));
    assert!(
        a1["meta"]["lastUpdated"].as_str() < a2["meta"]["lastUpdated"].as_str(),
        "each version is last updated at its state change"
    );
    assert_eq!(
        f.ok_versioned("DetectedIssue/edge-7a-alarm-1/_history/3")
            .await?,
        alarm_read
    );
    f.refused(&f.token, "DetectedIssue/edge-7a-alarm-1/_history/9", 404)
        .await?;
    let h = f
        .ok_history("DetectedIssue/edge-7a-alarm-1/_history")
        .await?;
    assert_eq!(history_versions(&h)?, ["3", "2", "1"]);
    assert_eq!(h["entry"][1]["resource"], a2);

    // ---- MedicationAdministration: one version per status report.
    let order = f.ok_versioned("MedicationAdministration/ORD-1").await?;
    assert_eq!(order["meta"]["versionId"], "3");
    assert_eq!(order["status"], "completed");
    let o2 = f
        .ok_versioned("MedicationAdministration/ORD-1/_history/2")
        .await?;
    assert_eq!(o2["status"], "in-progress");
    assert!(o2["effectivePeriod"].get("end").is_none(), "{o2}");
    let h = f
        .ok_history("MedicationAdministration/ORD-1/_history?_count=1000")
        .await?;
    assert_eq!(history_versions(&h)?, ["3", "2", "1"]);
    assert_eq!(h["entry"][0]["resource"], order);
    assert_eq!(h["entry"][1]["resource"], o2);

    // ---- Observation: made from one immutable sample, exactly one version.
    let obs_id = format!("{EDGE}.{}", devices.len() + 1);
    let obs = f.ok_versioned(&format!("Observation/{obs_id}")).await?;
    assert_eq!(obs["meta"]["versionId"], "1");
    assert!(obs["meta"]["lastUpdated"].is_string(), "{obs}");
    assert_eq!(
        f.ok_versioned(&format!("Observation/{obs_id}/_history/1"))
            .await?,
        obs
    );
    let why = f
        .refused(&f.token, &format!("Observation/{obs_id}/_history/2"), 404)
        .await?;
    assert!(why.contains("exactly one version"), "{why}");
    let h = f
        .ok_history(&format!("Observation/{obs_id}/_history"))
        .await?;
    assert_eq!(history_versions(&h)?, ["1"]);
    assert_eq!(h["entry"][0]["resource"], obs);
    // The search returns the same resource, version and all.
    let s = f
        .get(&format!("Observation?patient={patient}&_count=1000"))
        .await?;
    let in_search = s.body["entry"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["resource"]["id"] == obs_id.as_str()))
        .context("the observation in its patient's search")?;
    assert_eq!(in_search["resource"], obs);

    // ---- DeviceMetric: only the current version is known.
    let metrics = f.get(&format!("DeviceMetric?source=Device/{dev}")).await?;
    let metric_id = metrics.body["entry"][0]["resource"]["id"]
        .as_str()
        .context("a DeviceMetric of the device")?
        .to_string();
    let m = f.ok_versioned(&format!("DeviceMetric/{metric_id}")).await?;
    let mvid = m["meta"]["versionId"].as_str().context("vid")?.to_string();
    assert_eq!(
        f.ok_versioned(&format!("DeviceMetric/{metric_id}/_history/{mvid}"))
            .await?,
        m
    );
    let why = f
        .refused(
            &f.token,
            &format!("DeviceMetric/{metric_id}/_history/1"),
            404,
        )
        .await?;
    assert!(why.contains("not kept"), "{why}");

    // ---- Location: one version.
    let h = f.ok_history(&format!("Location/{WARD}/_history")).await?;
    assert_eq!(history_versions(&h)?, ["1"]);

    // ---- Refusals: unknown resources, unsupported parameters and levels, scopes.
    f.refused(&f.token, "Device/no-such-device/_history", 404)
        .await?;
    f.refused(&f.token, "Device/no-such-device/_history/1", 404)
        .await?;
    f.refused(&f.token, "Observation/edge-7a.999999/_history/1", 404)
        .await?;
    let why = f
        .refused(&f.token, &format!("Device/{dev}/_history?_since=2024"), 400)
        .await?;
    assert!(why.contains("_since"), "{why}");
    f.refused(&f.token, &format!("Device/{dev}/_history?_cursor=x"), 400)
        .await?;
    f.refused(&f.token, "Observation/_history", 400).await?;
    f.refused(&f.token, "_history", 400).await?;
    // Vread and history need the type's read scope, like a read.
    f.refused(OBS_ONLY_TOKEN, &format!("Device/{dev}/_history/1"), 403)
        .await?;
    f.refused(OBS_ONLY_TOKEN, &format!("Device/{dev}/_history"), 403)
        .await?;
    f.refused("not-a-token", &format!("Device/{dev}/_history"), 401)
        .await?;
    let g = f
        .get_as(OBS_ONLY_TOKEN, &format!("Observation/{obs_id}/_history/1"))
        .await?;
    assert_eq!(g.status, 200);

    // ---- Audited like reads: who, which version or history, and the patient whose data it returned.
    let audit = f
        .cloud
        .store
        .search_audit(&wardwatch_cloud::storage::AuditQuery {
            patient: Some(patient.clone()),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    for want in [
        "edge-7a-alarm-1/_history/2",
        "edge-7a-alarm-1/_history",
        "ORD-1/_history/2",
    ] {
        assert!(
            audit
                .iter()
                .any(|r| r.action == "read" && r.query == want && r.status == 200),
            "audited: {want}"
        );
    }
    let refused = f
        .cloud
        .store
        .search_audit(&wardwatch_cloud::storage::AuditQuery {
            client_id: Some("ehr-observations-only".into()),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    assert!(
        refused
            .iter()
            .any(|r| r.resource_type == "Device" && r.status == 403),
        "a refused version read is audited too"
    );

    // ---- If-None-Match on a version read.
    let r = f
        .http
        .get(format!(
            "{}/DetectedIssue/edge-7a-alarm-1/_history/2",
            f.cloud.fhir_base
        ))
        .bearer_auth(&f.token)
        .header("if-none-match", "W/\"2\"")
        .send()
        .await?;
    assert_eq!(r.status(), 304);
    Ok((patient, dev))
}

impl Fixture {
    async fn ok_history(&self, path: &str) -> Result<Value> {
        let g = self.get(path).await?;
        if g.status != 200 {
            bail!("GET {path}: {} {}", g.status, g.body);
        }
        assert!(g.etag.is_none(), "a history Bundle is not tagged");
        Ok(g.body)
    }
}

/// Device versions stay numbered 1, 2, … without gaps or duplicates when ingest transactions touching the same
/// device run concurrently (on PostgreSQL they really overlap; the trigger numbers under the row lock), and
/// each version is newer than the one before: a report that lost the race to a newer one makes no version.
async fn concurrent_device_reports(f: &Fixture) -> Result<()> {
    let base = simulated_devices(WARD, 1, 9)
        .into_iter()
        .find_map(|e| match e.payload {
            Payload::Device(d) => Some(d),
            _ => None,
        })
        .context("a simulated device")?;
    let dev = base.device_id.clone();
    let t0 = base.reported_at_unix_ms;
    const N: u64 = 12;
    let mut tasks = Vec::new();
    for i in 1..=N {
        let store = f.cloud.store.clone();
        let report = device_report(
            &base,
            &format!("M-{i}"),
            OperationalState::On,
            t0 + i as i64 * 1_000,
        );
        tasks.push(tokio::spawn(async move {
            store.ingest(EDGE, &items(&[report], 1_000 + i)).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let h = f
        .ok_history(&format!("Device/{dev}/_history?_count=1000"))
        .await?;
    let versions = history_versions(&h)?;
    let n = versions.len();
    assert!((1..=N as usize).contains(&n), "{versions:?}");
    assert_eq!(h["total"].as_u64(), Some(n as u64));
    let want: Vec<String> = (1..=n).rev().map(|v| v.to_string()).collect();
    assert_eq!(versions, want, "numbered without gaps or duplicates");
    let updated: Vec<&str> = h["entry"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["resource"]["meta"]["lastUpdated"].as_str())
        .collect();
    assert!(
        updated.windows(2).all(|w| w[0] > w[1]),
        "each version is newer than the one before: {updated:?}"
    );
    let read = f.ok_versioned(&format!("Device/{dev}")).await?;
    assert_eq!(
        read["modelNumber"],
        format!("M-{N}"),
        "the newest report wins"
    );
    assert_eq!(read, h["entry"][0]["resource"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_device_reports_on_sqlite() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let f = Fixture::start(dir.path(), None).await?;
    concurrent_device_reports(&f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_device_reports_on_postgres() -> Result<()> {
    wardwatch::install_crypto();
    let Some(db) = TestDatabase::create("fhir_history_conc").await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let f = Fixture::start(dir.path(), Some(db.url.clone())).await?;
    let result = concurrent_device_reports(&f).await;
    f.cloud.stop().await;
    db.drop_now().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_searches_on_sqlite() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let f = Fixture::start(dir.path(), None).await?;
    let (patient, dev) = versions_scenario(&f).await?;
    search_scenario(&f, &patient, &dev).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_searches_on_postgres() -> Result<()> {
    wardwatch::install_crypto();
    let Some(db) = TestDatabase::create("fhir_history").await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let f = Fixture::start(dir.path(), Some(db.url.clone())).await?;
    let result = match versions_scenario(&f).await {
        Ok((patient, dev)) => search_scenario(&f, &patient, &dev).await,
        Err(e) => Err(e),
    };
    f.cloud.stop().await;
    db.drop_now().await?;
    result
}
