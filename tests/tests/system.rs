//! Whole-system tests: the real cloud and the real edge over mutual TLS on loopback.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use wardwatch::{
    CloudHandle, EdgeHandle, TestDatabase, cloud_config, dev_setup, edge_config, fhir_search_all,
    https_client, simulated_devices, simulated_vitals, wait_until,
};
use wardwatch_cloud::pki;
use wardwatch_proto::v1::edge_sync_client::EdgeSyncClient;
use wardwatch_proto::v1::{
    EdgeEvent, RegisterRequest, RejectReason, SyncBatch, edge_event::Payload,
};

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";
const ANY: &str = "127.0.0.1:0";

fn any() -> SocketAddr {
    ANY.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn init() {
    wardwatch::install_crypto();
    wardwatch::init_logging("warn");
}

/// 10,000 samples in at the edge, all 10,000 readable as Observations through the FHIR API, none duplicated.
async fn ten_thousand_samples(database_url: Option<String>) -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        database_url,
        any(),
        any(),
        &[(EDGE, &[WARD])],
    )?)
    .await?;
    let mut edge_cfg = edge_config(
        &setup,
        &dir.path().join("edge"),
        EDGE,
        &[WARD],
        cloud.sync_addr,
    )?;
    // An HL7 v2 MLLP listener too, for the encounter (PV1-19) part at the end.
    edge_cfg.hl7_mllp = Some(toml::from_str(&format!("listen = \"{ANY}\""))?);
    let edge = EdgeHandle::start(edge_cfg).await?;

    let devices = simulated_devices(WARD, 40, 7);
    edge.node.accept(devices).await?;
    let vitals = simulated_vitals(WARD, 40, 7, 10_000);
    for chunk in vitals.chunks(500) {
        let r = edge.node.accept(chunk.to_vec()).await?;
        assert!(
            r.rejected.is_empty(),
            "simulator produced rejected events: {:?}",
            r.rejected
        );
    }
    edge.wait_drained(Duration::from_secs(120)).await?;
    assert_eq!(cloud.store.count_vitals().await?, 10_000);
    assert_eq!(cloud.store.count_duplicate_vitals().await?, 0);

    let client = https_client(&setup.pki.ca_cert)?;
    let all = fhir_search_all(
        &client,
        &setup.token,
        &format!("{}/Observation?_count=1000", cloud.fhir_base),
    )
    .await?;
    assert_eq!(all.len(), 10_000, "every sample readable as an Observation");
    let ids: HashSet<&str> = all.iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids.len(), 10_000, "no Observation duplicated");
    assert!(
        all.iter()
            .all(|o| o["resourceType"] == "Observation" && o["status"] == "final")
    );

    // A patient + code search with a small page follows next links to the end.
    let one = &all[0];
    let mrn = one["subject"]["identifier"]["value"]
        .as_str()
        .context("subject MRN")?;
    let expected = all
        .iter()
        .filter(|o| {
            o["subject"]["identifier"]["value"] == mrn && o["code"]["coding"][0]["code"] == "8867-4"
        })
        .count();
    let page = fhir_search_all(
        &client,
        &setup.token,
        &format!(
            "{}/Observation?patient={mrn}&code=http://loinc.org|8867-4&_count=7",
            cloud.fhir_base
        ),
    )
    .await?;
    assert_eq!(page.len(), expected);
    assert!(expected > 7, "the search spans several pages");
    // Without `_sort`, one patient's search pages in the latest-measurement-first order (migration 0013): its
    // next links carry that order's cursor and visit the same Observations, in the same order, as `_sort=-date`.
    // (Here samples arrive in measurement order, so this guards the paging; which order is the default is
    // `api::tests::a_patient_or_stay_search_defaults_to_latest_measurement_first`.)
    let explicit = fhir_search_all(
        &client,
        &setup.token,
        &format!(
            "{}/Observation?patient={mrn}&code=http://loinc.org|8867-4&_sort=-date&_count=7",
            cloud.fhir_base
        ),
    )
    .await?;
    let ids = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .filter_map(|o| o["id"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        ids(&page),
        ids(&explicit),
        "default order is latest measurement first"
    );

    // Date-ordered paging, counts and date ranges agree with what the full search returned.
    let of_patient: Vec<&serde_json::Value> = all
        .iter()
        .filter(|o| o["subject"]["identifier"]["value"] == mrn)
        .collect();
    let by_date = fhir_search_all(
        &client,
        &setup.token,
        &format!(
            "{}/Observation?patient={mrn}&_sort=-date&_count=9",
            cloud.fhir_base
        ),
    )
    .await?;
    assert_eq!(
        by_date.len(),
        of_patient.len(),
        "date-sorted paging visits every row once"
    );
    let times: Vec<&str> = by_date
        .iter()
        .filter_map(|o| o["effectiveDateTime"].as_str())
        .collect();
    assert_eq!(times.len(), by_date.len());
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
    };
    assert!(
        times.windows(2).all(|w| parse(w[0]) >= parse(w[1])),
        "_sort=-date is newest measurement first"
    );
    let count_of = |q: String| {
        let client = client.clone();
        let token = setup.token.clone();
        let base = cloud.fhir_base.clone();
        async move {
            let resp = client
                .get(format!("{base}/Observation?{q}&_summary=count"))
                .bearer_auth(&token)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 200, "count {q}: {}", resp.status());
            let b: serde_json::Value = resp.json().await?;
            anyhow::ensure!(
                b["entry"].as_array().is_none_or(Vec::is_empty),
                "count has no entries"
            );
            b["total"].as_u64().context("Bundle.total")
        }
    };
    assert_eq!(
        count_of(format!("patient={mrn}")).await?,
        of_patient.len() as u64
    );
    // Split the patient's samples at the median measurement time: ge + lt partition them exactly.
    let mid = times[times.len() / 2];
    let mid_enc = format!("date=ge{}", mid.replace('+', "%2B"));
    let before_enc = format!("date=lt{}", mid.replace('+', "%2B"));
    let ge = count_of(format!("patient={mrn}&{mid_enc}")).await?;
    let lt = count_of(format!("patient={mrn}&{before_enc}")).await?;
    assert_eq!(
        ge + lt,
        of_patient.len() as u64,
        "ge and lt split the samples"
    );
    assert!(ge > 0 && lt > 0, "the split is not trivial");
    assert_eq!(
        count_of(format!("patient={mrn}&category=laboratory")).await?,
        0
    );
    assert_eq!(
        count_of(format!("patient={mrn}&category=vital-signs")).await?,
        of_patient.len() as u64
    );

    // Each Observation is readable at its id (what a searchset entry's fullUrl points to), unchanged.
    for o in [&all[0], &all[4_999], &all[9_999]] {
        let id = o["id"].as_str().context("Observation id")?;
        let resp = client
            .get(format!("{}/Observation/{id}", cloud.fhir_base))
            .bearer_auth(&setup.token)
            .send()
            .await?;
        assert_eq!(resp.status(), 200, "Observation/{id}");
        let read: serde_json::Value = resp.json().await?;
        assert_eq!(&read, o, "Observation/{id} reads as it was found");
    }

    // The device that measured it (its DeviceMetric, Point-of-Care Device shape) is readable.
    let device = one["device"]["reference"]
        .as_str()
        .context("device reference")?;
    let resp = client
        .get(format!("{}/{device}", cloud.fhir_base))
        .bearer_auth(&setup.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let d: serde_json::Value = resp.json().await?;
    assert_eq!(d["resourceType"], "DeviceMetric");
    assert!(
        cloud.store.audit_count(wardwatch::DEV_CLIENT_ID).await? >= 3,
        "reads are audited"
    );

    encounters(&edge, &cloud, &setup.token, &client, mrn, of_patient.len()).await?;

    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// An HL7 v2 PCD-01 message with PV1-19 sent to the edge over MLLP: its Observations name the encounter by visit
/// number and are found with `encounter:identifier`, as are a simulated patient's (the simulator gives each patient
/// visit `<MRN>-V1`); a malformed PV1-19 is refused with AE and stores nothing; `encounter=Encounter/…` is a 400.
async fn encounters(
    edge: &EdgeHandle,
    cloud: &CloudHandle,
    token: &str,
    client: &reqwest::Client,
    sim_mrn: &str,
    sim_samples: usize,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const VISIT: &str = "V2026-0042";
    const EARLIER_VISIT: &str = "V2026-0041";
    let addr = edge.node.hl7_addr().context("the edge's HL7 listener")?;
    let exchange = |msg: String| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(&wardwatch_edge::sources::hl7::mllp::encode(msg.as_bytes()))
            .await?;
        let mut ack = Vec::new();
        let mut buf = [0u8; 4096];
        while !ack.ends_with(b"\x1c\r") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "connection closed before the ACK");
            ack.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(String::from_utf8_lossy(&ack).into_owned())
    };
    // `observed`: OBR-7, the observation time (samples of one device and time are one event to the edge).
    let message = |control: &str, pv1_19: &str, observed: &str| {
        format!(
            "MSH|^~\\&|WardMon^0123456789ABCDEF^EUI-64|Ward7A|WARDWATCH|HOSP|20260301101500+0000||ORU^R01^ORU_R01|{control}|P|2.6\r\
             PID|||MRN-ENC1^^^Hosp^MR||Doe^Jane\r\
             PV1||I|{WARD}^701^3||||||||||||||||{pv1_19}\r\
             OBR|1|||182777000^monitoring of patient^SCT|||{observed}+0000\r\
             OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||||||MON-ENC-3^EUI-64\r\
             OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|96|262688^MDC_DIM_PERCENT^MDC|||||F|||||||MON-ENC-3^EUI-64\r\
             OBX|3|NM|151562^MDC_RESP_RATE^MDC|1.3.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F|||||||MON-ENC-3^EUI-64\r"
        )
    };
    let before = cloud.store.count_vitals().await?;
    // A visit number the edge cannot store: the whole message is refused (AE) with the reason, nothing stored.
    let ack = exchange(message("ENC-BAD", "V 2026^^^HOSP^VN", "20260301101400")).await?;
    assert!(ack.contains("MSA|AE|ENC-BAD"), "{ack}");
    assert!(ack.contains("PV1-19 (visit number)"), "{ack}");
    // PV1-19 as CX: visit number, check digit, scheme, assigning authority, type.
    let ack = exchange(message(
        "ENC-1",
        &format!("{VISIT}^^^HOSP^VN"),
        "20260301101400",
    ))
    .await?;
    assert!(ack.contains("MSA|AA|ENC-1"), "{ack}");
    // The same patient's earlier stay: its samples must not show up in a search for the later one (the search
    // narrows by the visit's patient first, then by the visit).
    let ack = exchange(message(
        "ENC-0",
        &format!("{EARLIER_VISIT}^^^HOSP^VN"),
        "20260201091400",
    ))
    .await?;
    assert!(ack.contains("MSA|AA|ENC-0"), "{ack}");
    edge.wait_drained(Duration::from_secs(60)).await?;
    assert_eq!(
        cloud.store.count_vitals().await?,
        before + 6,
        "only the good messages were stored"
    );

    let get = |q: String| {
        let client = client.clone();
        let token = token.to_string();
        let base = cloud.fhir_base.clone();
        async move {
            let r = client
                .get(format!("{base}/Observation?{q}"))
                .bearer_auth(&token)
                .send()
                .await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<serde_json::Value>().await?))
        }
    };
    let visits = wardwatch::VISIT_NUMBER_SYSTEM;
    let found = fhir_search_all(
        client,
        token,
        &format!(
            "{}/Observation?encounter:identifier={visits}|{VISIT}&_count=2",
            cloud.fhir_base
        ),
    )
    .await?;
    assert_eq!(
        found.len(),
        3,
        "the message's three Observations, over two pages"
    );
    for o in &found {
        assert_eq!(
            o["encounter"],
            serde_json::json!({
                "type": "Encounter",
                "identifier": {"system": visits, "value": VISIT, "assigner": {"display": "HOSP"}}
            }),
            "{o}"
        );
        assert_eq!(o["subject"]["identifier"]["value"], "MRN-ENC1");
        // The read shows it too.
        let id = o["id"].as_str().context("id")?;
        let read: serde_json::Value = client
            .get(format!("{}/Observation/{id}", cloud.fhir_base))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(&read, o);
    }
    // Without a system, with other parameters, counted; another visit number, `|value`: nothing.
    let count = |q: &str| {
        let q = format!("{q}&_summary=count");
        let get = &get;
        async move {
            let (status, b) = get(q.clone()).await?;
            anyhow::ensure!(status == 200, "{q}: {status} {b}");
            b["total"].as_u64().context("total")
        }
    };
    assert_eq!(count(&format!("encounter:identifier={VISIT}")).await?, 3);
    assert_eq!(
        count(&format!(
            "encounter:identifier={VISIT}&patient=MRN-ENC1&code=http://loinc.org|8867-4"
        ))
        .await?,
        1
    );
    assert_eq!(
        count(&format!("encounter:identifier={EARLIER_VISIT}")).await?,
        3
    );
    // The visit with another patient: nothing.
    assert_eq!(
        count(&format!("encounter:identifier={VISIT}&patient={}", sim_mrn)).await?,
        0
    );
    assert_eq!(count("encounter:identifier=V2026-0043").await?, 0);
    assert_eq!(count(&format!("encounter:identifier=|{VISIT}")).await?, 0);
    // A simulated patient's samples all carry the patient's simulated visit.
    let sim_visit = wardwatch_edge::simulator::sim_encounter(sim_mrn).visit_number;
    assert_eq!(
        count(&format!("encounter:identifier={visits}|{sim_visit}")).await?,
        sim_samples as u64
    );
    // Refused with an OperationOutcome that says why and what to use instead.
    for (q, status, needle) in [
        ("encounter=Encounter/1", 400, "encounter:identifier"),
        ("encounter:identifier=http://other.example|V1", 400, visits),
        ("encounter:identifier=V%201", 400, "visit number"),
        (
            &format!("category=survey&encounter:identifier={VISIT}") as &str,
            400,
            "vital-sign",
        ),
    ] {
        let (got, body) = get(q.to_string()).await?;
        assert_eq!(got, status, "{q}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{q}");
        let why = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(why.contains(needle), "{q}: {why}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_samples_end_to_end_sqlite() -> Result<()> {
    ten_thousand_samples(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_samples_end_to_end_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("system_10k").await? else {
        return Ok(());
    };
    let r = ten_thousand_samples(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}

/// The API refuses missing or wrong tokens and bad parameters with OperationOutcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_requests_with_operation_outcomes() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        any(),
        any(),
        &[(EDGE, &[WARD])],
    )?)
    .await?;
    let client = https_client(&setup.pki.ca_cert)?;
    let base = &cloud.fhir_base;
    let cases: [(&str, Option<&str>, u16); 16] = [
        ("/Observation", None, 401),
        ("/Observation", Some("not-the-token"), 401),
        ("/Observation?_count=-1", Some(&setup.token), 400),
        ("/Observation?_count=abc", Some(&setup.token), 400),
        ("/Observation?frobnicate=1", Some(&setup.token), 400),
        ("/Observation?patient=a%20b", Some(&setup.token), 400),
        ("/Device/unknown-device", Some(&setup.token), 404),
        ("/Observation/edge-x.999999", Some(&setup.token), 404),
        ("/Observation/not-an-id", Some(&setup.token), 404),
        ("/Observation/edge-x.1", None, 401),
        ("/Observation?date=2024-13-45", Some(&setup.token), 400),
        ("/Observation?date=ne2024", Some(&setup.token), 400),
        ("/Observation?_sort=value", Some(&setup.token), 400),
        (
            "/Observation?_sort=-date&_cursor=12",
            Some(&setup.token),
            400,
        ),
        ("/Observation?_summary=true", Some(&setup.token), 400),
        ("/Patientx/1", Some(&setup.token), 404),
    ];
    for (path, token, status) in cases {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(ct, "application/fhir+json", "{path}");
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
        assert!(
            body["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{path}"
        );
    }
    cloud.stop().await;
    Ok(())
}

/// A raw sync client presenting `cert`/`key` (bypassing the edge's own checks, as a misbehaving edge would).
async fn raw_client(
    setup: &wardwatch::DevSetup,
    dir: &std::path::Path,
    edge_id: &str,
    wards: &[&str],
    sync: SocketAddr,
) -> Result<EdgeSyncClient<tonic::transport::Channel>> {
    let cfg = edge_config(setup, dir, edge_id, wards, sync)?;
    Ok(EdgeSyncClient::new(
        wardwatch_edge::sync::connect(&cfg).await?,
    ))
}

fn event(seq: u64, key: &str, payload: Payload) -> EdgeEvent {
    EdgeEvent {
        sequence: seq,
        idempotency_key: key.into(),
        accepted_at_unix_ms: wardwatch_proto::now_unix_ms(),
        payload: Some(payload),
    }
}

/// Bad items get per-item rejections with reasons; the rest of the batch is stored; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_are_rejected_one_by_one_and_the_rest_is_stored() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        any(),
        any(),
        &[(EDGE, &[WARD])],
    )?)
    .await?;
    let mut client = raw_client(
        &setup,
        &dir.path().join("e"),
        EDGE,
        &[WARD],
        cloud.sync_addr,
    )
    .await?;
    client
        .register(RegisterRequest {
            edge_id: EDGE.into(),
            wards: vec![WARD.into()],
            software_version: "test".into(),
        })
        .await?;

    let good = simulated_vitals(WARD, 4, 3, 6);
    let vital = |i: usize| match &good[i].payload {
        Payload::Vital(v) => v.clone(),
        _ => unreachable!("simulated_vitals yields vitals only"),
    };
    let mut nan = vital(1);
    nan.value = f64::NAN;
    let mut unknown = vital(2);
    unknown.metric_mdc = 999_999;
    let mut no_unit = vital(3);
    no_unit.unit_ucum.clear();
    let mut foreign = vital(4);
    if let Some(l) = foreign.location.as_mut() {
        l.ward = "9Z".into();
    }
    let batch1 = SyncBatch {
        batch_id: 1,
        events: vec![
            event(1, "k1", Payload::Vital(vital(0))),
            event(2, "k2", Payload::Vital(nan)),
            event(3, "k3", Payload::Vital(unknown)),
            event(4, "k4", Payload::Vital(no_unit)),
            event(3, "k3b", Payload::Vital(vital(5))), // out of order
            event(5, "k5", Payload::Vital(foreign)),
            event(6, "k6", Payload::Vital(vital(5))),
        ],
    };
    // Batch 2 replays sequence 1 (stored before), resends sequence 2 (rejected before: as if the edge lost
    // that answer) and brings one new good sample.
    let mut nan_again = vital(1);
    nan_again.value = f64::NAN;
    let batch2 = SyncBatch {
        batch_id: 2,
        events: vec![
            event(1, "k1", Payload::Vital(vital(0))),
            event(2, "k2", Payload::Vital(nan_again)),
            event(7, "k7", Payload::Vital(vital(1))),
        ],
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tx.send(batch1).await?;
    let a1 = acks.message().await?.context("ack 1")?;
    tx.send(batch2).await?;
    let a2 = acks.message().await?.context("ack 2")?;

    assert_eq!(
        (a1.batch_id, a1.acked_through_sequence, a1.stored),
        (1, 6, 2)
    );
    let reasons: Vec<(u64, RejectReason)> = a1
        .rejected
        .iter()
        .map(|r| {
            (
                r.sequence,
                RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (2, RejectReason::NotFinite),
            (3, RejectReason::UnknownMetric),
            (4, RejectReason::BadUnit),
            (3, RejectReason::OutOfOrder),
            (5, RejectReason::WardNotPermitted),
        ]
    );
    assert!(
        a1.rejected.iter().all(|r| !r.detail.is_empty()),
        "every rejection says why"
    );
    assert_eq!((a2.acked_through_sequence, a2.stored), (7, 1));
    // The stored event is a replay; the rejected one is rejected again with its first reason, so the edge
    // dead-letters it instead of counting it as stored.
    let reasons2: Vec<(u64, i32)> = a2.rejected.iter().map(|r| (r.sequence, r.reason)).collect();
    assert_eq!(
        reasons2,
        vec![
            (1, RejectReason::Replayed as i32),
            (2, RejectReason::NotFinite as i32)
        ]
    );
    assert!(
        a2.rejected[1]
            .detail
            .contains("rejected when first received"),
        "{:?}",
        a2.rejected[1]
    );
    assert_eq!(cloud.store.count_vitals().await?, 3);
    assert_eq!(cloud.sync_stats.rejected(RejectReason::NotFinite), 1);
    assert_eq!(cloud.sync_stats.rejected(RejectReason::WardNotPermitted), 1);
    assert_eq!(
        cloud
            .sync_stats
            .replayed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(tx);
    cloud.stop().await;
    Ok(())
}

async fn register_error(
    client: &mut EdgeSyncClient<tonic::transport::Channel>,
    edge: &str,
    wards: &[&str],
) -> tonic::Status {
    match client
        .register(RegisterRequest {
            edge_id: edge.into(),
            wards: wards.iter().map(ToString::to_string).collect(),
            software_version: "t".into(),
        })
        .await
    {
        Ok(_) => tonic::Status::ok("unexpectedly accepted"),
        Err(s) => s,
    }
}

/// Foreign CA, expired and unregistered certificates are refused, and an edge cannot claim another's wards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_wards_are_enforced() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE, "edge-unregistered"])?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        any(),
        any(),
        &[(EDGE, &[WARD])],
    )?)
    .await?;

    // Registered edge asking for a ward it is not registered for.
    let mut ok = raw_client(
        &setup,
        &dir.path().join("a"),
        EDGE,
        &[WARD],
        cloud.sync_addr,
    )
    .await?;
    let s = register_error(&mut ok, EDGE, &[WARD, "9Z"]).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("9Z"), "{s:?}");
    // ... or claiming another edge's id.
    let s = register_error(&mut ok, "edge-other", &[WARD]).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // Valid CA, but not a registered edge.
    let mut unreg = raw_client(
        &setup,
        &dir.path().join("b"),
        "edge-unregistered",
        &[WARD],
        cloud.sync_addr,
    )
    .await?;
    let s = register_error(&mut unreg, "edge-unregistered", &[WARD]).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("not a registered edge"), "{s:?}");

    // Foreign CA and expired certificates: refused during the TLS handshake, counted by the cloud, and the
    // edge sees a clear error naming the problem.
    let failures_before = cloud
        .sync_tls_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    let (fc, fk) = pki::generate_foreign_ca_edge(&dir.path().join("foreign"), EDGE)?;
    let now = time::OffsetDateTime::now_utc();
    let (xc, xk) = pki::issue_edge_cert_with_validity(
        &setup.pki.dir,
        &dir.path().join("expired"),
        EDGE,
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )?;
    for (name, cert, key, expect) in [
        ("foreign CA", fc, fk, "UnknownCA"),
        ("expired", xc, xk, "CertificateExpired"),
    ] {
        let mut cfg = edge_config(
            &setup,
            &dir.path().join(name),
            EDGE,
            &[WARD],
            cloud.sync_addr,
        )?;
        cfg.cloud.client_cert = cert;
        cfg.cloud.client_key = key;
        // What the edge reports when its connection is refused (see `sync::diagnose_tls`).
        let err = wardwatch_edge::sync::diagnose_tls(&cfg)
            .await
            .unwrap_or_default();
        assert!(
            err.contains(expect) || err.to_lowercase().contains(&expect.to_lowercase()),
            "{name}: {err}"
        );
        // The full edge node keeps retrying and reports the refusal.
        let edge = EdgeHandle::start(cfg).await?;
        wait_until(
            Duration::from_secs(10),
            "edge to report the refusal",
            || {
                let last = edge
                    .node
                    .sync_stats()
                    .last_error
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_default();
                let expect = expect.to_lowercase();
                async move { Ok(last.is_some_and(|l| l.to_lowercase().contains(&expect))) }
            },
        )
        .await?;
        assert!(
            !edge
                .node
                .sync_stats()
                .connected
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        edge.stop().await;
    }
    assert!(
        cloud
            .sync_tls_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= failures_before + 2
    );
    assert_eq!(cloud.store.count_vitals().await?, 0);
    cloud.stop().await;
    Ok(())
}

/// While the cloud is unreachable the edge keeps accepting and buffering; when it comes back everything syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_buffers_while_cloud_is_down_and_resumes() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let sync_addr = wardwatch::free_port()?;
    let edge = EdgeHandle::start(edge_config(
        &setup,
        &dir.path().join("edge"),
        EDGE,
        &[WARD],
        sync_addr,
    )?)
    .await?;
    let vitals = simulated_vitals(WARD, 10, 5, 3_000);
    for chunk in vitals.chunks(300) {
        edge.node.accept(chunk.to_vec()).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The outbox holds every sample (plus what the clinical engine derived from them: NEWS2 scores, alarms).
    let held = edge.node.outbox().read_after(0, 100_000).await?;
    let vitals = held
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::Vital(_))))
        .count();
    assert_eq!(
        vitals, 3_000,
        "nothing lost or sent while the cloud is down"
    );
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        sync_addr,
        any(),
        &[(EDGE, &[WARD])],
    )?)
    .await?;
    edge.wait_drained(Duration::from_secs(60)).await?;
    assert_eq!(cloud.store.count_vitals().await?, 3_000);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}
