//! HTTP behaviour of the FHIR API that EHR clients rely on: weak `ETag`s on reads with `If-None-Match` → 304,
//! and gzip when the client accepts it (issue 6, item 2).

use std::io::Read;

use anyhow::{Context, Result};
use wardwatch::{https_client, simulated_vitals};
use wardwatch_cloud::storage::IngestItem;
use wardwatch_edge::node::Incoming;
use wardwatch_proto::v1::edge_event::Payload;

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";

fn items(events: &[Incoming]) -> Vec<IngestItem> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| IngestItem {
            sequence: i as u64 + 1,
            idempotency_key: e.idempotency_key.clone(),
            outcome: Ok(e.payload.clone()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_carry_etags_and_searches_are_gzipped_on_request() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let (setup, cloud) = wardwatch::start_dev_cloud(dir.path(), EDGE, &[WARD]).await?;
    let events = simulated_vitals(WARD, 2, 3, 40);
    cloud.store.ingest(EDGE, &items(&events)).await?;
    let patient = match &events[0].payload {
        Payload::Vital(v) => v.patient_id.clone(),
        _ => anyhow::bail!("simulated_vitals yields vitals"),
    };
    let client = https_client(&setup.pki.ca_cert)?;
    let read = format!("{}/Observation/{EDGE}.1", cloud.fhir_base);

    // A read is tagged.
    let r = client.get(&read).bearer_auth(&setup.token).send().await?;
    assert_eq!(r.status(), 200);
    let etag = r
        .headers()
        .get("etag")
        .context("a read carries an ETag")?
        .to_str()?
        .to_string();
    assert!(etag.starts_with("W/\""), "weak tag: {etag}");
    let first: serde_json::Value = r.json().await?;
    assert_eq!(first["id"], format!("{EDGE}.1"));

    // The same tag back: 304 with no body. Another tag: the resource again, with the same tag.
    let r = client
        .get(&read)
        .bearer_auth(&setup.token)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(r.status(), 304);
    assert_eq!(
        r.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some(etag.as_str())
    );
    assert!(r.bytes().await?.is_empty(), "304 has no body");
    let r = client
        .get(&read)
        .bearer_auth(&setup.token)
        .header("if-none-match", "W/\"something-else\"")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some(etag.as_str())
    );
    // The tag is the resource's version (an Observation from one immutable sample has exactly one, `1`), so
    // another Observation has the same tag: an ETag is compared per URL only.
    assert_eq!(etag, "W/\"1\"");
    assert_eq!(first["meta"]["versionId"], "1");
    let r = client
        .get(format!("{}/Observation/{EDGE}.2", cloud.fhir_base))
        .bearer_auth(&setup.token)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(r.status(), 304);
    // Without a token If-None-Match reveals nothing: still 401.
    let r = client
        .get(&read)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // A search asked for gzip comes back gzipped, and is the same Bundle as without.
    let search = format!(
        "{}/Observation?patient={patient}&_count=50",
        cloud.fhir_base
    );
    let plain = client.get(&search).bearer_auth(&setup.token).send().await?;
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(
        plain.headers().get("etag").is_none(),
        "searches are not tagged"
    );
    let plain: serde_json::Value = plain.json().await?;
    let gz = client
        .get(&search)
        .bearer_auth(&setup.token)
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    assert_eq!(gz.status(), 200);
    assert_eq!(
        gz.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let compressed = gz.bytes().await?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_ref()).read_to_end(&mut json)?;
    assert!(compressed.len() < json.len(), "gzip makes it smaller");
    let unzipped: serde_json::Value = serde_json::from_slice(&json)?;
    assert_eq!(unzipped["resourceType"], "Bundle");
    assert_eq!(unzipped["entry"], plain["entry"]);
    assert!(
        unzipped["entry"].as_array().is_some_and(|e| !e.is_empty()),
        "the patient has Observations"
    );

    cloud.stop().await;
    Ok(())
}
