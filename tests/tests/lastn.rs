//! `GET [base]/Observation/$lastn` against the real cloud over HTTPS: for each code, the newest `max`
//! Observations of the patient by effective time, checked against the patient's full history read through the
//! ordinary search (issue 6).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use wardwatch::{fhir_search_all, https_client, simulated_vitals};
use wardwatch_cloud::storage::IngestItem;
use wardwatch_proto::v1::edge_event::Payload;

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lastn_returns_the_newest_per_code() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let (setup, cloud) = wardwatch::start_dev_cloud(dir.path(), EDGE, &[WARD]).await?;
    let events = simulated_vitals(WARD, 2, 9, 400);
    // Stored in reverse order, so arrival order (ids) is the opposite of effective time: $lastn must go by time.
    let items: Vec<IngestItem> = events
        .iter()
        .rev()
        .enumerate()
        .map(|(i, e)| IngestItem {
            sequence: i as u64 + 1,
            idempotency_key: e.idempotency_key.clone(),
            outcome: Ok(e.payload.clone()),
        })
        .collect();
    cloud.store.ingest(EDGE, &items).await?;
    let patient = match &events[0].payload {
        Payload::Vital(v) => v.patient_id.clone(),
        _ => anyhow::bail!("simulated_vitals yields vitals"),
    };
    let client = https_client(&setup.pki.ca_cert)?;
    let base = &cloud.fhir_base;

    // The expectation, from the patient's whole history: per LOINC code, effective times newest first.
    let all = fhir_search_all(
        &client,
        &setup.token,
        &format!("{base}/Observation?patient={patient}&_count=1000"),
    )
    .await?;
    let mut by_code: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for o in &all {
        let code = o["code"]["coding"][0]["code"].as_str().context("code")?;
        let at = o["effectiveDateTime"].as_str().context("effective")?;
        let id = o["id"].as_str().context("id")?;
        by_code
            .entry(code.to_string())
            .or_default()
            .push((at.to_string(), id.to_string()));
    }
    assert!(
        by_code.len() >= 4,
        "several vital signs: {:?}",
        by_code.keys()
    );
    for v in by_code.values_mut() {
        v.sort_by(|a, b| b.0.cmp(&a.0));
    }

    let get = |url: String| {
        let client = client.clone();
        let token = setup.token.clone();
        async move {
            let r = client.get(url).bearer_auth(token).send().await?;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await?;
            anyhow::Ok((status, body))
        }
    };

    let (status, bundle) =
        get(format!("{base}/Observation/$lastn?patient={patient}&max=2")).await?;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    let entries = bundle["entry"].as_array().context("entries")?;
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in entries {
        let r = &e["resource"];
        got.entry(
            r["code"]["coding"][0]["code"]
                .as_str()
                .context("code")?
                .to_string(),
        )
        .or_default()
        .push(
            r["effectiveDateTime"]
                .as_str()
                .context("effective")?
                .to_string(),
        );
    }
    let want: BTreeMap<String, Vec<String>> = by_code
        .iter()
        .map(|(c, v)| (c.clone(), v.iter().take(2).map(|x| x.0.clone()).collect()))
        .collect();
    assert_eq!(got, want, "the two newest per code, newest first");
    assert_eq!(bundle["total"].as_u64(), Some(entries.len() as u64));

    // One code only.
    let (status, bundle) = get(format!(
        "{base}/Observation/$lastn?patient=Patient/{patient}&code=http://loinc.org|8867-4"
    ))
    .await?;
    assert_eq!(status, 200);
    let entries = bundle["entry"].as_array().context("entries")?;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["resource"]["id"].as_str(),
        by_code
            .get("8867-4")
            .and_then(|v| v.first())
            .map(|x| x.1.as_str())
    );

    // Bad requests: right status and an OperationOutcome.
    for (query, want) in [
        ("max=2".to_string(), 400),
        (format!("patient={patient}&max=0"), 400),
        (format!("patient={patient}&max=500"), 400),
        (
            format!("patient={patient}&date=ge2026-01-01T00:00:00Z"),
            400,
        ),
        (format!("patient={patient}&category=laboratory"), 400),
    ] {
        let (status, body) = get(format!("{base}/Observation/$lastn?{query}")).await?;
        assert_eq!(status, want, "{query}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{query}");
    }
    let r = client
        .get(format!("{base}/Observation/$lastn?patient={patient}"))
        .send()
        .await?;
    assert_eq!(r.status(), 401, "a token is required");

    // /metadata says so.
    let meta: serde_json::Value = client
        .get(format!("{base}/metadata"))
        .send()
        .await?
        .json()
        .await?;
    let obs = meta["rest"][0]["resource"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["type"] == "Observation"))
        .context("Observation in /metadata")?;
    assert!(
        obs["operation"]
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o["name"] == "lastn")),
        "{obs}"
    );

    cloud.stop().await;
    Ok(())
}
