//! The Point-of-Care Device containment tree through the API, after a real sync (SQLite and PostgreSQL): from
//! an Observation's `device` to its DeviceMetric, the metric's channel, the channel's VMD and the VMD's MDS,
//! each read by following the references; `Observation?device=` by MDS, VMD and DeviceMetric; `Device?parent=`;
//! and a device whose 64-character id makes the tree ids shortened.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use wardwatch::{
    CloudHandle, EdgeHandle, TestDatabase, cloud_config, dev_setup, edge_config, fhir_search_all,
    https_client, simulated_devices, simulated_vitals,
};
use wardwatch_edge::node::Incoming;
use wardwatch_proto::v1::edge_event::Payload;

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}/{path}", self.base);
        let r = self.http.get(&url).bearer_auth(&self.token).send().await?;
        let status = r.status();
        let body: Value = r.json().await.with_context(|| format!("JSON from {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status} {body}");
        }
        Ok(body)
    }

    async fn all(&self, path: &str) -> Result<Vec<Value>> {
        fhir_search_all(&self.http, &self.token, &format!("{}/{path}", self.base)).await
    }

    /// Follows `resource[element].reference` and reads what it points at.
    async fn follow(&self, resource: &Value, element: &str) -> Result<(String, Value)> {
        let r = resource[element]["reference"]
            .as_str()
            .with_context(|| format!("{element} of {resource}"))?
            .to_string();
        let target = self.get(&r).await?;
        Ok((r, target))
    }
}

fn ids(resources: &[Value]) -> Vec<String> {
    resources
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect()
}

/// Walks from `obs` up the tree and checks each level; returns (DeviceMetric, channel, VMD, MDS) ids.
async fn walk(api: &Api, obs: &Value) -> Result<(String, String, String, String)> {
    let (metric_ref, metric) = api.follow(obs, "device").await?;
    assert!(
        metric_ref.starts_with("DeviceMetric/"),
        "Observation.device is the DeviceMetric: {obs}"
    );
    assert_eq!(metric["resourceType"], "DeviceMetric");
    let metric_code = &obs["code"]["coding"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|c| {
                c["system"] == wardwatch_fhir::MDC || c["system"] == "urn:wardwatch:metric"
            })
        })
        .context("the Observation's metric code")?["code"];
    assert_eq!(
        metric["type"]["coding"][0]["code"], *metric_code,
        "the DeviceMetric's type is the Observation's metric"
    );
    let (chan_ref, channel) = api.follow(&metric, "parent").await?;
    assert!(chan_ref.contains(".chan-"), "{metric}");
    assert_eq!(channel["resourceType"], "Device");
    assert!(channel.get("patient").is_none() && channel.get("location").is_none());
    let (vmd_ref, vmd) = api.follow(&channel, "parent").await?;
    assert!(vmd_ref.contains(".vmd-"), "{channel}");
    let (mds_ref, mds) = api.follow(&vmd, "parent").await?;
    assert!(mds.get("parent").is_none(), "the MDS is the root: {mds}");
    assert_eq!(
        metric["source"]["reference"], mds_ref,
        "the DeviceMetric's source is the MDS"
    );
    for (r, res) in [
        (&metric_ref, &metric),
        (&chan_ref, &channel),
        (&vmd_ref, &vmd),
        (&mds_ref, &mds),
    ] {
        let id = res["id"].as_str().context("id")?;
        assert!(id.len() <= 64, "{id}");
        assert!(r.ends_with(id), "{r} reads as {id}");
    }
    Ok((
        metric["id"].as_str().unwrap_or_default().to_string(),
        channel["id"].as_str().unwrap_or_default().to_string(),
        vmd["id"].as_str().unwrap_or_default().to_string(),
        mds["id"].as_str().unwrap_or_default().to_string(),
    ))
}

async fn scenario(database_url: Option<String>) -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let any = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        database_url,
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

    let devices = simulated_devices(WARD, 2, 5);
    let vitals = simulated_vitals(WARD, 2, 5, 300);
    // A device with the longest id allowed (64 characters): its tree ids must be shortened to stay FHIR ids.
    let long_id = format!("mon-{}", "x".repeat(60));
    let template = devices
        .iter()
        .find_map(|e| match &e.payload {
            Payload::Device(d) if d.device_id.starts_with("mon-") => Some(d.clone()),
            _ => None,
        })
        .context("a simulated monitor")?;
    let mut long_events = vec![Incoming {
        idempotency_key: "long-device-info".into(),
        payload: Payload::Device(wardwatch_proto::v1::DeviceInfo {
            device_id: long_id.clone(),
            ..template
        }),
    }];
    for (i, e) in vitals.iter().take(20).enumerate() {
        if let Payload::Vital(v) = &e.payload {
            let mut v = v.clone();
            v.device_id = long_id.clone();
            long_events.push(Incoming {
                idempotency_key: format!("long-device-vital-{i}"),
                payload: Payload::Vital(v),
            });
        }
    }
    edge.node.accept(devices).await?;
    edge.node.accept(vitals.clone()).await?;
    edge.node.accept(long_events).await?;
    edge.wait_drained(Duration::from_secs(60)).await?;

    let api = Api {
        http: https_client(&setup.pki.ca_cert)?,
        base: cloud.fhir_base.clone(),
        token: setup.token.clone(),
    };
    let patient = match &vitals[0].payload {
        Payload::Vital(v) => v.patient_id.clone(),
        _ => bail!("a vital sign"),
    };

    // ---- Walk up from an Observation of each metric the patient has.
    let observations = api
        .all(&format!("Observation?patient={patient}&_count=200"))
        .await?;
    assert!(!observations.is_empty(), "Observations of {patient}");
    let mut walked = std::collections::BTreeMap::new();
    for obs in &observations {
        let metric_ref = obs["device"]["reference"].as_str().unwrap_or_default();
        if walked.contains_key(metric_ref) || metric_ref.contains(&long_id[..36]) {
            continue;
        }
        let tree = walk(&api, obs).await?;
        walked.insert(metric_ref.to_string(), (tree, obs["id"].clone()));
    }
    assert!(walked.len() >= 3, "several metrics: {walked:?}");
    let ((metric, _, vmd, mds), obs_id) = walked
        .values()
        .find(|((_, _, _, mds), _)| mds.starts_with("mon-"))
        .context("a walk up to a bedside monitor")?
        .clone();
    let mds_dev = api.get(&format!("Device/{mds}")).await?;
    assert_eq!(
        mds_dev["type"]["coding"][0]["code"], "69965",
        "a bedside monitor's MDS is MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS: {mds_dev}"
    );

    // ---- Observation?device= by MDS (what EHRs used before: still every Observation of the device), by
    // bare id, by VMD and by DeviceMetric.
    let by_mds = ids(&api
        .all(&format!(
            "Observation?device=Device/{mds}&patient={patient}&_count=200"
        ))
        .await?);
    assert!(by_mds.iter().any(|i| Some(i.as_str()) == obs_id.as_str()));
    let of_device: Vec<String> = observations
        .iter()
        .filter(|o| {
            o["device"]["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("DeviceMetric/{mds}.")))
        })
        .filter_map(|o| o["id"].as_str().map(str::to_string))
        .collect();
    let mut sorted = by_mds.clone();
    sorted.sort();
    let mut expected = of_device.clone();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "Device/<mds> finds all of the device's Observations"
    );
    let bare = ids(&api
        .all(&format!(
            "Observation?device={mds}&patient={patient}&_count=200"
        ))
        .await?);
    assert_eq!(bare.len(), by_mds.len(), "a bare device id is the MDS");
    let by_metric = api
        .all(&format!(
            "Observation?device=DeviceMetric/{metric}&patient={patient}&_count=200"
        ))
        .await?;
    assert!(!by_metric.is_empty());
    assert!(
        by_metric
            .iter()
            .all(|o| o["device"]["reference"] == format!("DeviceMetric/{metric}")),
        "only that metric's Observations"
    );
    let by_vmd = api
        .all(&format!(
            "Observation?device=Device/{vmd}&patient={patient}&_count=200"
        ))
        .await?;
    assert!(by_vmd.len() >= by_metric.len() && by_vmd.len() <= by_mds.len());
    let none = api
        .get(&format!(
            "Observation?device=DeviceMetric/{mds}.999999&_summary=count"
        ))
        .await?;
    assert_eq!(none["total"], 0, "an unknown metric matches nothing");

    // ---- Device?parent=: the MDS's VMDs, a VMD's one channel; Device?type= by MDC VMD code.
    let vmds = api
        .all(&format!("Device?parent=Device/{mds}&_count=2"))
        .await?;
    assert!(ids(&vmds).contains(&vmd), "{vmds:?}");
    assert!(
        vmds.iter()
            .all(|v| v["parent"]["reference"] == format!("Device/{mds}")),
        "paged with _count=2, every VMD of the MDS"
    );
    let channels = api.all(&format!("Device?parent=Device/{vmd}")).await?;
    assert_eq!(channels.len(), 1, "{channels:?}");
    let spo2 = api
        .all(&format!(
            "Device?type={}|69642&_count=1",
            wardwatch_fhir::MDC
        ))
        .await?;
    assert!(
        spo2.iter()
            .all(|d| d["type"]["coding"][0]["code"] == "69642"),
        "{spo2:?}"
    );
    assert!(!spo2.is_empty());
    // The MDS search without parent or an MDC VMD type lists only MDSs, as before.
    let mdss = api.all("Device?_count=100").await?;
    assert!(mdss.iter().all(|d| d.get("parent").is_none()));

    // ---- A VMD has exactly its current version.
    let history = api.get(&format!("Device/{vmd}/_history")).await?;
    assert_eq!(history["total"], 1, "{history}");
    let current = api.get(&format!("Device/{vmd}")).await?;
    let vid = current["meta"]["versionId"].as_str().context("versionId")?;
    api.get(&format!("Device/{vmd}/_history/{vid}")).await?;

    // ---- The long device: every tree id shortened, still resolvable.
    let long_obs = api
        .all(&format!("Observation?device=Device/{long_id}&_count=50"))
        .await?;
    assert!(!long_obs.is_empty(), "the long device's Observations");
    let (l_metric, l_chan, l_vmd, l_mds) = walk(&api, &long_obs[0]).await?;
    assert_eq!(l_mds, long_id);
    for id in [&l_metric, &l_chan, &l_vmd] {
        assert!(
            id.starts_with(&long_id[..36]) && !id.starts_with(&long_id),
            "{id}"
        );
    }
    let by_long_metric = api
        .all(&format!(
            "Observation?device=DeviceMetric/{l_metric}&_count=50"
        ))
        .await?;
    assert!(!by_long_metric.is_empty());

    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containment_tree_walks_from_observation_to_mds_sqlite() -> Result<()> {
    scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containment_tree_walks_from_observation_to_mds_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("device_hierarchy").await? else {
        return Ok(());
    };
    let r = scenario(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}
