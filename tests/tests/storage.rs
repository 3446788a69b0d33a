//! Cloud storage behaviour, the same scenarios against both backends.
//!
//! Every scenario is an `async fn(Store)`; `both_backends!` generates one `#[tokio::test]` per backend for it:
//! `sqlite::<name>` on a fresh file in a temporary directory and `postgres::<name>` on a fresh database created by
//! [`TestDatabase`] (skipped loudly when no server is reachable, an error on CI).

use std::collections::HashSet;

use wardwatch::TestDatabase;
use wardwatch_cloud::storage::{
    AuditRecord, CodeFilter, DeviceQuery, EventQuery, GroupKind, GroupQuery, IngestItem, Store,
    StoredKeys, TimeRange, VitalQuery, VitalRow,
};
use wardwatch_proto::metrics::{
    MDC_ECG_HEART_RATE, MDC_PRESS_BLD_NONINV, MDC_PRESS_BLD_NONINV_DIA, MDC_PRESS_BLD_NONINV_MEAN,
    MDC_PRESS_BLD_NONINV_SYS, MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE,
    WARDWATCH_ACVPU,
};
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{
    Alarm, AlarmKind, AlarmPriority, AlarmState, BedLocation, DeviceInfo, DeviceKind,
    InfusionState, InfusionStatus, ModelPrediction, News2, News2Response, OperationalState,
    QualityFlag, RejectReason, RiskScore, VitalComponent, VitalSign, risk_score,
};
use wardwatch_proto::validate::Rejection;

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";
/// A fixed measurement epoch, so rows are easy to recognise.
const T0: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------------------------
// Payload builders
// ---------------------------------------------------------------------------------------------------------------

fn loc(bed: &str) -> Option<BedLocation> {
    Some(BedLocation {
        ward: WARD.into(),
        bed: bed.into(),
    })
}

/// A numeric vital of `mdc` for `patient`, in the metric's canonical unit.
fn vital(patient: &str, mdc: u32, value: f64, at_ms: i64) -> VitalSign {
    let unit = wardwatch_proto::metrics::by_mdc(mdc).map_or("", |m| m.unit);
    VitalSign {
        patient_id: patient.into(),
        location: loc("12"),
        device_id: "mon-12".into(),
        metric_mdc: mdc,
        value,
        unit_ucum: unit.into(),
        measured_at_unix_ms: at_ms,
        ..Default::default()
    }
}

/// Heart rate whose value and time derive from `seq`, so every row is distinguishable.
fn hr(seq: u64) -> VitalSign {
    let s = i64::try_from(seq).expect("small sequence");
    vital(
        "MRN-1",
        MDC_ECG_HEART_RATE,
        60.0 + (seq % 50) as f64,
        T0 + s * 1_000,
    )
}

fn key(seq: u64) -> String {
    format!("k-{seq}")
}

fn item(seq: u64, key: impl Into<String>, payload: Payload) -> IngestItem {
    IngestItem {
        sequence: seq,
        idempotency_key: key.into(),
        outcome: Ok(payload),
    }
}

fn rejected(seq: u64, key: impl Into<String>) -> IngestItem {
    IngestItem {
        sequence: seq,
        idempotency_key: key.into(),
        outcome: Err(Rejection::new(
            RejectReason::UnknownMetric,
            format!("MDC code 999 (sequence {seq})"),
        )),
    }
}

/// Stores a batch and then advances the edge's acknowledged watermark through its highest sequence, as the sync
/// service does once the batch's acknowledgement is next in order.
async fn ingest(
    store: &Store,
    edge_id: &str,
    items: &[IngestItem],
) -> Result<wardwatch_cloud::storage::IngestOutcome, wardwatch_cloud::storage::StorageError> {
    let out = store.ingest(edge_id, items).await?;
    if let Some(through) = items.iter().map(|it| it.sequence).max() {
        store.advance_acked(edge_id, through).await?;
    }
    Ok(out)
}

/// Heart-rate items for `seqs`, keyed `k-<seq>`.
fn hr_batch(seqs: impl IntoIterator<Item = u64>) -> Vec<IngestItem> {
    seqs.into_iter()
        .map(|s| item(s, key(s), Payload::Vital(hr(s))))
        .collect()
}

fn device(
    id: &str,
    model: &str,
    bed: &str,
    state: OperationalState,
    reported_at_ms: i64,
) -> DeviceInfo {
    DeviceInfo {
        device_id: id.into(),
        kind: DeviceKind::BedsideMonitor as i32,
        manufacturer: "Acme Medical".into(),
        model: model.into(),
        serial_number: format!("SN-{id}"),
        udi: format!("(01)0000000000{id}"),
        location: loc(bed),
        state: state as i32,
        reported_at_unix_ms: reported_at_ms,
    }
}

fn infusion() -> InfusionStatus {
    InfusionStatus {
        order_id: "ORD-1".into(),
        patient_id: "MRN-1".into(),
        location: loc("12"),
        device_id: "drip-12".into(),
        medication: "Sodium chloride 0.9% 1000 mL".into(),
        prescribed_rate_ml_h: 125.0,
        measured_rate_ml_h: 124.0,
        drop_factor_gtt_per_ml: 20,
        drops_per_min: 41.3,
        volume_infused_ml: 250.0,
        volume_remaining_ml: 750.0,
        state: InfusionState::Running as i32,
        measured_at_unix_ms: T0,
        encounter: None,
    }
}

fn alarm() -> Alarm {
    Alarm {
        alarm_id: "alarm-1".into(),
        kind: AlarmKind::InfusionTooFast as i32,
        priority: AlarmPriority::Medium as i32,
        state: AlarmState::Raised as i32,
        patient_id: "MRN-1".into(),
        location: loc("12"),
        device_id: "drip-12".into(),
        message: "Infusion 18% over prescribed rate for 75 s".into(),
        changed_at_unix_ms: T0,
        changed_by: "system".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Raw reads the `Store` API does not offer (the backends' pools are public)
// ---------------------------------------------------------------------------------------------------------------

/// Runs a `SELECT COUNT(*) ...` (or any single BIGINT) on either backend.
async fn scalar(store: &Store, sql: &'static str) -> i64 {
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every stored vital, newest first.
async fn all_vitals(store: &Store) -> Vec<VitalRow> {
    store
        .search_vitals(&VitalQuery {
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .expect("search all")
}

fn seqs_of(rows: &[VitalRow]) -> Vec<i64> {
    rows.iter().map(|r| r.sequence).collect()
}

fn assert_newest_first(rows: &[VitalRow]) {
    for w in rows.windows(2) {
        assert!(
            w[0].id > w[1].id,
            "ids not strictly descending: {} then {}",
            w[0].id,
            w[1].id
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------------------------

/// Scenario 1: A batch is stored once; the same batch again stores nothing and reports every sequence as replayed.
/// N crosses the SQLite backend's 1,000-row statement chunk, so chunking is covered too.
async fn exactly_once(store: Store) {
    const N: u64 = 2_500;
    assert_eq!(
        store.acked_through(EDGE).await.unwrap(),
        0,
        "empty ledger acks nothing"
    );

    let first = ingest(&store, EDGE, &hr_batch(1..=N))
        .await
        .expect("first ingest");
    assert_eq!(u64::from(first.stored), N);
    assert!(
        first.replayed.is_empty(),
        "nothing replayed on first send: {:?}",
        &first.replayed[..first.replayed.len().min(10)]
    );

    let again = ingest(&store, EDGE, &hr_batch(1..=N))
        .await
        .expect("second ingest");
    assert_eq!(again.stored, 0, "a resend stores nothing");
    assert_eq!(
        again.replayed,
        (1..=N).collect::<Vec<_>>(),
        "every resent sequence is a replay, in batch order"
    );

    assert_eq!(
        store.count_vitals().await.unwrap(),
        i64::try_from(N).unwrap()
    );
    assert_eq!(store.count_duplicate_vitals().await.unwrap(), 0);
    assert_eq!(store.acked_through(EDGE).await.unwrap(), N);
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM sync_ledger").await,
        i64::try_from(N).unwrap()
    );

    // The stored rows are exactly sequences 1..=N with the values that were sent.
    let rows = all_vitals(&store).await;
    let mut seqs = seqs_of(&rows);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=i64::try_from(N).unwrap()).collect::<Vec<_>>());
    for r in rows
        .iter()
        .filter(|r| [1, 1_000, 1_001, 2_500].contains(&r.sequence))
    {
        let sent = hr(u64::try_from(r.sequence).unwrap());
        assert_eq!(
            r.value,
            Some(sent.value),
            "value of sequence {}",
            r.sequence
        );
        assert_eq!(
            r.measured_at_ms, sent.measured_at_unix_ms,
            "time of sequence {}",
            r.sequence
        );
        assert_eq!(r.edge_id, EDGE);
    }
}

/// Scenario 2: The sequence is the event's identity in the cloud: a processed sequence is a replay even under a new
/// key (across and within batches). Keys are not a uniqueness constraint in the cloud (migration 0002): collapsing
/// a source's re-sends by key happens in the edge outbox before a sequence is assigned (edge/src/outbox.rs tests).
async fn key_reuse_is_replay(store: Store) {
    let first = ingest(&store, EDGE, &hr_batch(1..=3)).await.unwrap();
    assert_eq!(first.stored, 3);

    // An already-processed sequence under a fresh key is a replay.
    let seq_reused = ingest(&store, EDGE, &[item(1, "fresh-key", Payload::Vital(hr(1)))])
        .await
        .unwrap();
    assert_eq!(seq_reused.stored, 0);
    assert_eq!(seq_reused.replayed, vec![1]);

    // Within one batch, a processed sequence next to a new one: only the new one is stored.
    let mixed = ingest(
        &store,
        EDGE,
        &[
            item(3, "other-key", Payload::Vital(hr(3))),
            item(4, key(4), Payload::Vital(hr(4))),
        ],
    )
    .await
    .unwrap();
    assert_eq!(mixed.stored, 1);
    assert_eq!(mixed.replayed, vec![3]);
    assert_eq!(mixed.claimed, vec![false, true]);

    assert_eq!(store.count_vitals().await.unwrap(), 4);
    assert_eq!(store.count_duplicate_vitals().await.unwrap(), 0);
    assert_eq!(seqs_of(&all_vitals(&store).await), vec![4, 3, 2, 1]);
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 4);
}

/// Scenario 3: Rejected items are claimed in the ledger (with their reason) but never stored as vitals; a resend of them,
/// even as a now-valid payload, is a replay; acked_through covers them.
async fn rejected_items_claimed(store: Store) {
    let batch = || {
        vec![
            item(1, key(1), Payload::Vital(hr(1))),
            rejected(2, key(2)),
            item(3, key(3), Payload::Vital(hr(3))),
            rejected(4, key(4)),
            rejected(5, key(5)),
        ]
    };
    let first = ingest(&store, EDGE, &batch()).await.unwrap();
    assert_eq!(first.stored, 2, "only the valid items are stored");
    assert!(
        first.replayed.is_empty(),
        "rejections are not replays on first sight: {:?}",
        first.replayed
    );
    assert_eq!(store.count_vitals().await.unwrap(), 2);
    assert_eq!(seqs_of(&all_vitals(&store).await), vec![3, 1]);
    assert_eq!(
        store.acked_through(EDGE).await.unwrap(),
        5,
        "the trailing rejected sequence is acknowledged"
    );
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM sync_ledger").await, 5);
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM sync_ledger WHERE outcome = 1 AND kind = 'rejected' AND reason IS NOT NULL").await,
        3,
        "each rejection is recorded with its reason"
    );

    let again = ingest(&store, EDGE, &batch()).await.unwrap();
    assert_eq!(again.stored, 0);
    assert_eq!(again.replayed, vec![1, 2, 3, 4, 5]);

    // The edge re-sends the refused events with valid payloads under the same sequences and keys: same answer.
    let fixed = ingest(&store, EDGE, &hr_batch([2, 4, 5])).await.unwrap();
    assert_eq!(
        fixed.stored, 0,
        "a claimed (rejected) event is never stored later"
    );
    assert_eq!(fixed.replayed, vec![2, 4, 5]);
    assert_eq!(store.count_vitals().await.unwrap(), 2);
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 5);
}

/// Scenario 4: An overlapping resend stores only the new tail and reports exactly the overlap as replayed.
async fn overlapping_resend(store: Store) {
    let a = ingest(&store, EDGE, &hr_batch(1..=100)).await.unwrap();
    assert_eq!(a.stored, 100);
    assert!(a.replayed.is_empty());
    let b = ingest(&store, EDGE, &hr_batch(50..=150)).await.unwrap();
    assert_eq!(b.stored, 50);
    assert_eq!(b.replayed, (50..=100).collect::<Vec<_>>());
    assert_eq!(store.count_vitals().await.unwrap(), 150);
    assert_eq!(store.count_duplicate_vitals().await.unwrap(), 0);
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 150);
    let mut seqs = seqs_of(&all_vitals(&store).await);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=150).collect::<Vec<i64>>());
}

/// The search fixture: sequence `s` has patient `MRN-2` if `s % 3 == 0` else `MRN-1`, and metric
/// `SEARCH_METRICS[s % 4]`. ECG heart rate and pulse-oximeter pulse rate share LOINC 8867-4.
const SEARCH_METRICS: [u32; 4] = [
    MDC_ECG_HEART_RATE,
    MDC_PULS_OXIM_PULS_RATE,
    MDC_PULS_OXIM_SAT_O2,
    MDC_RESP_RATE,
];
const SEARCH_N: u64 = 60;

fn search_fixture(s: u64) -> (&'static str, u32) {
    (
        if s.is_multiple_of(3) {
            "MRN-2"
        } else {
            "MRN-1"
        },
        SEARCH_METRICS[(s % 4) as usize],
    )
}

fn search_value(mdc: u32) -> f64 {
    match mdc {
        MDC_PULS_OXIM_SAT_O2 => 97.0,
        MDC_RESP_RATE => 16.0,
        _ => 72.0,
    }
}

/// Expected sequences (newest first) for a predicate on (patient, mdc).
fn expect(pred: impl Fn(&str, u32) -> bool) -> Vec<i64> {
    (1..=SEARCH_N)
        .rev()
        .filter(|s| {
            let (p, m) = search_fixture(*s);
            pred(p, m)
        })
        .map(|s| i64::try_from(s).unwrap())
        .collect()
}

/// Scenario 5: Search: filters by patient, by LOINC and by MDC (OR-ed within codes), newest first, limit, and keyset
/// pagination that visits every row exactly once.
async fn search_filters_and_pages(store: Store) {
    // Ingest in six batches of ten, so storage order spans several transactions.
    for start in (1..=SEARCH_N).step_by(10) {
        let items: Vec<IngestItem> = (start..start + 10)
            .map(|s| {
                let (patient, mdc) = search_fixture(s);
                let t = T0 + i64::try_from(s).unwrap() * 1_000;
                item(
                    s,
                    key(s),
                    Payload::Vital(vital(patient, mdc, search_value(mdc), t)),
                )
            })
            .collect();
        assert_eq!(ingest(&store, EDGE, &items).await.unwrap().stored, 10);
    }

    let search = |q: VitalQuery| {
        let store = store.clone();
        async move {
            let rows = store
                .search_vitals(&q)
                .await
                .unwrap_or_else(|e| panic!("{q:?}: {e}"));
            assert_newest_first(&rows);
            rows
        }
    };
    let q = |patient: Option<&str>, codes: Vec<CodeFilter>, limit: u32| VitalQuery {
        patient: patient.map(str::to_string),
        codes,
        before_id: None,
        limit,
        ..Default::default()
    };

    // No filter: everything, newest first.
    let all = search(q(None, vec![], 1_000)).await;
    assert_eq!(seqs_of(&all), expect(|_, _| true));

    // Row contents round-trip.
    let r7 = all.iter().find(|r| r.sequence == 7).expect("sequence 7");
    let (p7, m7) = search_fixture(7);
    assert_eq!((r7.patient_id.as_str(), r7.metric_mdc), (p7, i64::from(m7)));
    assert_eq!(
        r7.loinc,
        wardwatch_proto::metrics::by_mdc(m7).unwrap().loinc
    );
    assert_eq!(r7.unit, wardwatch_proto::metrics::by_mdc(m7).unwrap().unit);
    assert_eq!(
        (r7.ward.as_str(), r7.bed.as_str(), r7.device_id.as_str()),
        (WARD, "12", "mon-12")
    );
    assert_eq!(r7.value, Some(search_value(m7)));
    assert_eq!(r7.enumerated, None);
    assert_eq!(r7.components, None);
    assert_eq!(r7.measured_at_ms, T0 + 7_000);
    assert!(r7.received_at_ms > 0);

    // Patient filter.
    let mrn1 = search(q(Some("MRN-1"), vec![], 1_000)).await;
    assert_eq!(seqs_of(&mrn1), expect(|p, _| p == "MRN-1"));
    assert!(mrn1.iter().all(|r| r.patient_id == "MRN-1"));
    assert!(
        search(q(Some("MRN-404"), vec![], 1_000)).await.is_empty(),
        "unknown patient finds nothing"
    );

    // LOINC 8867-4 matches both heart-rate MDC codes; an MDC code matches only itself.
    let by_loinc = search(q(None, vec![CodeFilter::Loinc("8867-4".into())], 1_000)).await;
    assert_eq!(
        seqs_of(&by_loinc),
        expect(|_, m| m == MDC_ECG_HEART_RATE || m == MDC_PULS_OXIM_PULS_RATE)
    );
    let by_mdc = search(q(
        None,
        vec![CodeFilter::Mdc(i64::from(MDC_ECG_HEART_RATE))],
        1_000,
    ))
    .await;
    assert_eq!(seqs_of(&by_mdc), expect(|_, m| m == MDC_ECG_HEART_RATE));
    assert!(!by_mdc.is_empty() && by_mdc.len() < by_loinc.len());
    assert!(
        search(q(None, vec![CodeFilter::Loinc("0000-0".into())], 1_000))
            .await
            .is_empty()
    );

    // Codes are OR-ed with each other and AND-ed with the patient.
    let mixed = search(q(
        Some("MRN-2"),
        vec![
            CodeFilter::Mdc(i64::from(MDC_PULS_OXIM_SAT_O2)),
            CodeFilter::Loinc("9279-1".into()),
        ],
        1_000,
    ))
    .await;
    assert_eq!(
        seqs_of(&mixed),
        expect(|p, m| p == "MRN-2" && (m == MDC_PULS_OXIM_SAT_O2 || m == MDC_RESP_RATE))
    );
    assert!(!mixed.is_empty());

    // Limit keeps the newest.
    let top5 = search(q(None, vec![], 5)).await;
    assert_eq!(seqs_of(&top5), vec![60, 59, 58, 57, 56]);

    // Keyset pagination: with and without filters, every row exactly once, in order across pages.
    for (patient, codes, page_size) in [
        (None, vec![], 7u32),
        (Some("MRN-1"), vec![], 6),
        (None, vec![CodeFilter::Loinc("8867-4".into())], 4),
        (None, vec![], 60),
        (None, vec![], 1),
    ] {
        let base = q(patient, codes, page_size);
        let expected = seqs_of(
            &search(VitalQuery {
                limit: 1_000,
                ..base.clone()
            })
            .await,
        );
        let mut seen: Vec<VitalRow> = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = search(VitalQuery {
                before_id: cursor,
                ..base.clone()
            })
            .await;
            pages += 1;
            assert!(
                page.len() <= page_size as usize,
                "page of {} over limit {page_size}",
                page.len()
            );
            if let (Some(last), Some(first)) = (seen.last(), page.first()) {
                assert!(
                    first.id < last.id,
                    "page starts at {} after cursor {}",
                    first.id,
                    last.id
                );
            }
            let Some(last) = page.last() else { break };
            cursor = Some(last.id);
            seen.extend(page);
            assert!(pages <= 100, "pagination does not terminate");
        }
        let ids: HashSet<i64> = seen.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), seen.len(), "a row was visited twice ({base:?})");
        assert_eq!(
            seqs_of(&seen),
            expected,
            "pagination visits every row once, newest first ({base:?})"
        );
        // Full pages, the last partial one, then one empty page that ends the walk.
        assert_eq!(pages, expected.len().div_ceil(page_size as usize) + 1);
    }

    // A cursor at the oldest id finds nothing older.
    let oldest = all.last().unwrap().id;
    assert!(
        search(VitalQuery {
            before_id: Some(oldest),
            limit: 10,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let below_newest = search(VitalQuery {
        before_id: Some(all[0].id),
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(seqs_of(&below_newest), vec![59, 58]);
}

/// Scenario 6: Devices: a newer report replaces the row, an older one does not; unknown devices are None.
async fn device_upsert_newest_wins(store: Store) {
    assert!(
        store.device("mon-12").await.unwrap().is_none(),
        "unknown device"
    );

    let d1 = device("mon-12", "X1", "12", OperationalState::On, T0 + 1_000);
    assert_eq!(
        ingest(&store, EDGE, &[item(1, "dev-1", Payload::Device(d1))])
            .await
            .unwrap()
            .stored,
        1
    );
    let row = store
        .device("mon-12")
        .await
        .unwrap()
        .expect("stored device");
    assert_eq!(row.device_id, "mon-12");
    assert_eq!(row.edge_id, EDGE);
    assert_eq!(row.kind, i64::from(DeviceKind::BedsideMonitor as i32));
    assert_eq!(
        (row.manufacturer.as_str(), row.model.as_str()),
        ("Acme Medical", "X1")
    );
    assert_eq!(
        (row.serial.as_str(), row.udi.as_str()),
        ("SN-mon-12", "(01)0000000000mon-12")
    );
    assert_eq!((row.ward.as_str(), row.bed.as_str()), (WARD, "12"));
    assert_eq!(row.state, i64::from(OperationalState::On as i32));
    assert_eq!(row.reported_at_ms, T0 + 1_000);

    // Newer: moved to bed 14, on standby, new model.
    let d2 = device("mon-12", "X2", "14", OperationalState::Standby, T0 + 2_000);
    assert_eq!(
        ingest(&store, EDGE, &[item(2, "dev-2", Payload::Device(d2))])
            .await
            .unwrap()
            .stored,
        1
    );
    let row = store.device("mon-12").await.unwrap().unwrap();
    assert_eq!((row.model.as_str(), row.bed.as_str()), ("X2", "14"));
    assert_eq!(row.state, i64::from(OperationalState::Standby as i32));
    assert_eq!(row.reported_at_ms, T0 + 2_000);

    // Older (delayed) report: accepted into the ledger but must not overwrite the newer row.
    let d0 = device("mon-12", "X0", "10", OperationalState::Off, T0 + 1_500);
    let late = ingest(&store, EDGE, &[item(3, "dev-3", Payload::Device(d0))])
        .await
        .unwrap();
    assert!(late.replayed.is_empty());
    let row = store.device("mon-12").await.unwrap().unwrap();
    assert_eq!(
        (row.model.as_str(), row.bed.as_str()),
        ("X2", "14"),
        "an older report must not win"
    );
    assert_eq!(row.state, i64::from(OperationalState::Standby as i32));
    assert_eq!(row.reported_at_ms, T0 + 2_000);

    // Another device is independent; still-unknown ids stay None.
    let other = device("wear-3", "W", "3", OperationalState::On, T0);
    ingest(&store, EDGE, &[item(4, "dev-4", Payload::Device(other))])
        .await
        .unwrap();
    assert_eq!(store.device("wear-3").await.unwrap().unwrap().model, "W");
    assert_eq!(store.device("mon-12").await.unwrap().unwrap().model, "X2");
    assert!(store.device("nope").await.unwrap().is_none());
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM devices").await, 2);
    assert_eq!(
        store.count_vitals().await.unwrap(),
        0,
        "devices are not vitals"
    );
}

/// Scenario 7: A blood-pressure compound keeps its components (JSON); an ACVPU level is enumerated with no value; quality
/// flags survive as a bitmask.
async fn compound_and_enumerated(store: Store) {
    let mut bp = vital("MRN-1", MDC_PRESS_BLD_NONINV, 93.0, T0);
    bp.components = vec![
        VitalComponent {
            metric_mdc: MDC_PRESS_BLD_NONINV_SYS,
            value: 121.0,
        },
        VitalComponent {
            metric_mdc: MDC_PRESS_BLD_NONINV_DIA,
            value: 79.5,
        },
        VitalComponent {
            metric_mdc: MDC_PRESS_BLD_NONINV_MEAN,
            value: 93.0,
        },
    ];
    bp.quality = vec![QualityFlag::Artifact as i32, QualityFlag::Simulated as i32];
    let mut acvpu = vital("MRN-1", WARDWATCH_ACVPU, 0.0, T0 + 1);
    acvpu.enumerated = "V".into();
    acvpu.value = 3.0; // ignored for enumerated metrics
    let out = ingest(
        &store,
        EDGE,
        &[
            item(1, "bp", Payload::Vital(bp)),
            item(2, "acvpu", Payload::Vital(acvpu)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.stored, 2);

    let rows = all_vitals(&store).await;
    assert_eq!(seqs_of(&rows), vec![2, 1]);
    let (acvpu_row, bp_row) = (&rows[0], &rows[1]);

    assert_eq!(bp_row.metric_mdc, i64::from(MDC_PRESS_BLD_NONINV));
    assert_eq!(bp_row.loinc, "85354-9");
    assert_eq!(bp_row.unit, "mm[Hg]");
    assert_eq!(bp_row.value, Some(93.0));
    assert_eq!(bp_row.enumerated, None);
    assert_eq!(
        bp_row.quality,
        (1 << 1) | (1 << 6),
        "artifact and simulated flags"
    );
    let json = bp_row.components.as_deref().expect("components stored");
    let parsed: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("components {json:?}: {e}"));
    let pairs: Vec<(u64, f64)> = parsed
        .as_array()
        .expect("array")
        .iter()
        .map(|p| (p[0].as_u64().expect("mdc"), p[1].as_f64().expect("value")))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (u64::from(MDC_PRESS_BLD_NONINV_SYS), 121.0),
            (u64::from(MDC_PRESS_BLD_NONINV_DIA), 79.5),
            (u64::from(MDC_PRESS_BLD_NONINV_MEAN), 93.0)
        ]
    );

    assert_eq!(acvpu_row.metric_mdc, i64::from(WARDWATCH_ACVPU));
    assert_eq!(acvpu_row.loinc, "67775-7");
    assert_eq!(acvpu_row.enumerated.as_deref(), Some("V"));
    assert_eq!(
        acvpu_row.value, None,
        "enumerated observations have no numeric value"
    );
    assert_eq!(acvpu_row.components, None);
    assert_eq!(acvpu_row.quality, 0);

    // Both are findable by their codes.
    let found = store
        .search_vitals(&VitalQuery {
            patient: Some("MRN-1".into()),
            codes: vec![CodeFilter::Loinc("67775-7".into())],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seqs_of(&found), vec![2]);
    let found = store
        .search_vitals(&VitalQuery {
            codes: vec![CodeFilter::Mdc(i64::from(MDC_PRESS_BLD_NONINV))],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seqs_of(&found), vec![1]);
}

/// Scenario 8: Audit records are counted per client.
async fn audit_per_client(store: Store) {
    let rec = |client: &str, i: i64| AuditRecord {
        at_ms: T0 + i,
        client_id: client.into(),
        action: "search".into(),
        resource_type: "Observation".into(),
        query: format!("patient=MRN-1&_count={i}"),
        patients: "MRN-1,MRN-2".into(),
        status: 200,
        remote: "127.0.0.1:50000".into(),
    };
    assert_eq!(store.audit_count("ehr-a").await.unwrap(), 0);
    for i in 0..3 {
        store.audit(&rec("ehr-a", i)).await.unwrap();
    }
    store.audit(&rec("ehr-b", 9)).await.unwrap();
    // Same instant and content twice: an audit trail appends, it does not de-duplicate.
    store
        .audit(&AuditRecord {
            patients: String::new(),
            status: 404,
            ..rec("ehr-b", 9)
        })
        .await
        .unwrap();
    assert_eq!(store.audit_count("ehr-a").await.unwrap(), 3);
    assert_eq!(store.audit_count("ehr-b").await.unwrap(), 2);
    assert_eq!(store.audit_count("ehr-c").await.unwrap(), 0);
    assert_eq!(store.audit_count("").await.unwrap(), 0);
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM audit_events").await, 5);
}

/// Scenario 9: A batch mixing vitals, a device, an infusion, an alarm and a rejection: vitals and the device land in their
/// tables, the infusion and alarm are kept whole, the stored count is the non-rejected new items, and a resend
/// changes nothing.
async fn mixed_batch(store: Store) {
    let batch = || {
        vec![
            item(
                1,
                key(1),
                Payload::Device(device("mon-12", "X1", "12", OperationalState::On, T0)),
            ),
            item(2, key(2), Payload::Vital(hr(2))),
            item(3, key(3), Payload::Infusion(infusion())),
            rejected(4, key(4)),
            item(
                5,
                key(5),
                Payload::Vital(vital("MRN-1", MDC_PULS_OXIM_SAT_O2, 95.0, T0 + 5)),
            ),
            item(6, key(6), Payload::Alarm(alarm())),
            item(
                7,
                key(7),
                Payload::Vital(vital("MRN-1", MDC_RESP_RATE, 18.0, T0 + 7)),
            ),
        ]
    };
    let out = ingest(&store, EDGE, &batch()).await.expect("mixed batch");
    assert_eq!(
        out.stored, 6,
        "every non-rejected new item counts as stored"
    );
    assert!(out.replayed.is_empty());
    assert_eq!(store.count_vitals().await.unwrap(), 3);
    assert_eq!(seqs_of(&all_vitals(&store).await), vec![7, 5, 2]);
    let dev = store
        .device("mon-12")
        .await
        .unwrap()
        .expect("device stored");
    assert_eq!(dev.model, "X1");
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM edge_events").await, 2);
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM edge_events WHERE kind = 'infusion' AND sequence = 3"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM edge_events WHERE kind = 'alarm' AND sequence = 6"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM edge_events WHERE patient_id = 'MRN-1' AND ward = '7A'"
        )
        .await,
        2
    );
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM sync_ledger").await, 7);
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 7);

    let again = ingest(&store, EDGE, &batch()).await.expect("mixed resend");
    assert_eq!(again.stored, 0);
    assert_eq!(again.replayed, (1..=7).collect::<Vec<_>>());
    assert_eq!(store.count_vitals().await.unwrap(), 3);
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM edge_events").await, 2);
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM devices").await, 1);
}

/// Scenario 10: Edges are isolated: the same sequences and keys from two edges are both stored, each edge acks its own;
/// edge registration is an upsert.
async fn edges_isolated(store: Store) {
    store
        .upsert_edge("edge-a", "spiffe://wardwatch/edge/edge-a", &["7A".into()])
        .await
        .unwrap();
    store
        .upsert_edge("edge-b", "spiffe://wardwatch/edge/edge-b", &["7B".into()])
        .await
        .unwrap();
    store
        .upsert_edge(
            "edge-a",
            "spiffe://wardwatch/edge/edge-a",
            &["7A".into(), "7C".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM edges").await,
        2,
        "re-registration updates, not inserts"
    );

    let a = ingest(&store, "edge-a", &hr_batch(1..=20)).await.unwrap();
    let b = ingest(&store, "edge-b", &hr_batch(1..=12)).await.unwrap();
    assert_eq!(
        (a.stored, b.stored),
        (20, 12),
        "edge-b's sequences are not edge-a's replays"
    );
    assert!(a.replayed.is_empty() && b.replayed.is_empty());
    assert_eq!(store.count_vitals().await.unwrap(), 32);
    assert_eq!(store.count_duplicate_vitals().await.unwrap(), 0);
    assert_eq!(store.acked_through("edge-a").await.unwrap(), 20);
    assert_eq!(store.acked_through("edge-b").await.unwrap(), 12);
    assert_eq!(store.acked_through("edge-unknown").await.unwrap(), 0);

    let rows = all_vitals(&store).await;
    assert_eq!(rows.iter().filter(|r| r.edge_id == "edge-a").count(), 20);
    assert_eq!(rows.iter().filter(|r| r.edge_id == "edge-b").count(), 12);

    // A replay on one edge is judged against that edge's ledger only.
    let ra = ingest(&store, "edge-a", &hr_batch(11..=25)).await.unwrap();
    assert_eq!(ra.stored, 5);
    assert_eq!(ra.replayed, (11..=20).collect::<Vec<_>>());
    let rb = ingest(&store, "edge-b", &hr_batch(11..=25)).await.unwrap();
    assert_eq!(rb.stored, 13);
    assert_eq!(rb.replayed, vec![11, 12]);
    assert_eq!(store.count_vitals().await.unwrap(), 50);
    assert_eq!(store.acked_through("edge-a").await.unwrap(), 25);
    assert_eq!(store.acked_through("edge-b").await.unwrap(), 25);
}

/// Scenario 11 (beyond the list): a batch that carries one sequence twice. `sync::check_batch` passes the second
/// occurrence on as an `OutOfOrder` rejection. The first occurrence is stored once; the duplicate is not stored and
/// does not displace it; a resend of both is a replay.
async fn dup_sequence_key_replay(store: Store) {
    assert_eq!(
        ingest(&store, EDGE, &hr_batch(1..=3)).await.unwrap().stored,
        3
    );
    let batch = [
        item(4, key(4), Payload::Vital(hr(4))),
        // The batch repeats sequence 4 (check_batch: "sequence 4 does not follow 4").
        IngestItem {
            sequence: 4,
            idempotency_key: key(5),
            outcome: Err(Rejection::new(
                RejectReason::OutOfOrder,
                "sequence 4 does not follow 4 in the batch",
            )),
        },
    ];
    let out = ingest(&store, EDGE, &batch).await.unwrap();
    assert_eq!(out.stored, 1);
    assert_eq!(store.count_vitals().await.unwrap(), 4);
    assert_eq!(seqs_of(&all_vitals(&store).await), vec![4, 3, 2, 1]);
    let again = ingest(&store, EDGE, &batch).await.unwrap();
    assert_eq!(again.stored, 0);
    assert_eq!(again.claimed, vec![false, false]);
    assert_eq!(store.count_duplicate_vitals().await.unwrap(), 0);
}

/// Scenario 12: the acknowledged watermark (what Register returns) only moves up, is per edge, and is not the
/// ledger's highest sequence: batches stored concurrently may commit out of order, so only the in-order
/// acknowledgement advances it.
async fn watermark_in_order(store: Store) {
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 0);
    // Batch 2 (sequences 11..=20) committed before batch 1 (1..=10) and batch 1 then failed: nothing was
    // acknowledged, so the watermark stays where it was although sequences 11..=20 are in the ledger.
    assert_eq!(
        store.ingest(EDGE, &hr_batch(11..=20)).await.unwrap().stored,
        10
    );
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 0);
    // The edge resends both: batch 1 is stored, batch 2 is a replay, and the watermark follows the acks.
    assert_eq!(
        ingest(&store, EDGE, &hr_batch(1..=10))
            .await
            .unwrap()
            .stored,
        10
    );
    let again = ingest(&store, EDGE, &hr_batch(11..=20)).await.unwrap();
    assert_eq!((again.stored, again.replayed.len()), (0, 10));
    assert_eq!(store.acked_through(EDGE).await.unwrap(), 20);
    store.advance_acked(EDGE, 5).await.unwrap();
    assert_eq!(
        store.acked_through(EDGE).await.unwrap(),
        20,
        "never moves down"
    );
    assert_eq!(store.acked_through("edge-other").await.unwrap(), 0);
    assert_eq!(store.count_vitals().await.unwrap(), 20);
}

// ---------------------------------------------------------------------------------------------------------------
// Issue 6: search-index columns of non-vital events, device channels, locations (migration 0005)
// ---------------------------------------------------------------------------------------------------------------

fn news2_score(patient: &str, total: u32, at_ms: i64, derived: &[&str]) -> RiskScore {
    RiskScore {
        patient_id: patient.into(),
        location: loc("12"),
        computed_at_unix_ms: at_ms,
        score: Some(risk_score::Score::News2(News2 {
            total,
            response: News2Response::Medium as i32,
            ..Default::default()
        })),
        derived_from: derived.iter().map(ToString::to_string).collect(),
    }
}

fn model_score(patient: &str, at_ms: i64) -> RiskScore {
    RiskScore {
        patient_id: patient.into(),
        location: loc("12"),
        computed_at_unix_ms: at_ms,
        score: Some(risk_score::Score::Model(ModelPrediction {
            model_name: "deterioration".into(),
            model_version: "1.0.0".into(),
            model_sha256: "ab".repeat(32),
            probability: 0.3,
            outcome: "deterioration within 12 h".into(),
            ..Default::default()
        })),
        derived_from: vec![key(1)],
    }
}

fn alarm_change(id: &str, patient: &str, state: AlarmState, at_ms: i64, by: &str) -> Alarm {
    Alarm {
        alarm_id: id.into(),
        patient_id: patient.into(),
        state: state as i32,
        changed_at_unix_ms: at_ms,
        changed_by: by.into(),
        ..alarm()
    }
}

fn infusion_report(order: &str, patient: &str, state: InfusionState, at_ms: i64) -> InfusionStatus {
    InfusionStatus {
        order_id: order.into(),
        patient_id: patient.into(),
        state: state as i32,
        measured_at_unix_ms: at_ms,
        ..infusion()
    }
}

/// The mixed batch of the event scenarios: 3 vitals (keys k-1..k-3), two devices, NEWS2 and model scores,
/// an alarm raised, acknowledged and cleared plus another patient's alarm, and three reports of one infusion
/// order (the last completed) plus another patient's order.
fn event_batch() -> Vec<IngestItem> {
    let mut pump = device("drip-12", "Drip", "12", OperationalState::On, T0);
    pump.kind = DeviceKind::DripMonitor as i32;
    let payloads = vec![
        Payload::Vital(hr(1)),
        Payload::Vital(hr(2)),
        Payload::Vital(vital("MRN-2", MDC_RESP_RATE, 18.0, T0 + 3_000)),
        Payload::Device(device("mon-12", "Monitor", "12", OperationalState::On, T0)),
        Payload::Device(pump),
        Payload::Risk(news2_score(
            "MRN-1",
            6,
            T0 + 10_000,
            &["k-1", "k-2", "no-such-key", "k-6"],
        )),
        Payload::Risk(news2_score("MRN-1", 2, T0 + 20_000, &[])),
        Payload::Risk(model_score("MRN-1", T0 + 30_000)),
        Payload::Alarm(alarm_change(
            "alarm-1",
            "MRN-1",
            AlarmState::Raised,
            T0 + 1_000,
            "system",
        )),
        Payload::Alarm(alarm_change(
            "alarm-1",
            "MRN-1",
            AlarmState::Acknowledged,
            T0 + 5_000,
            "nurse-kim",
        )),
        Payload::Alarm(alarm_change(
            "alarm-1",
            "MRN-1",
            AlarmState::Cleared,
            T0 + 9_000,
            "system",
        )),
        Payload::Alarm(alarm_change(
            "alarm-2",
            "MRN-2",
            AlarmState::Raised,
            T0 + 2_000,
            "system",
        )),
        Payload::Infusion(infusion_report(
            "ORD-1",
            "MRN-1",
            InfusionState::Running,
            T0,
        )),
        Payload::Infusion(infusion_report(
            "ORD-1",
            "MRN-1",
            InfusionState::Running,
            T0 + 60_000,
        )),
        Payload::Infusion(infusion_report(
            "ORD-1",
            "MRN-1",
            InfusionState::Completed,
            T0 + 120_000,
        )),
        Payload::Infusion(infusion_report(
            "ORD-2",
            "MRN-2",
            InfusionState::Paused,
            T0 + 4_000,
        )),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let seq = i as u64 + 1;
            item(seq, key(seq), p)
        })
        .collect()
}

async fn event_searches(store: Store) {
    let batch = event_batch();
    let out = ingest(&store, EDGE, &batch).await.unwrap();
    assert_eq!(out.stored, 16);
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM edge_events WHERE event_ms IS NULL OR code IS NULL"
        )
        .await,
        0,
        "every event has its index columns"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM edge_events WHERE alarm_id = 'alarm-1' AND alarm_state = 5"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM edge_events WHERE news2_total = 6 AND news2_response = 4"
        )
        .await,
        1
    );
    // A replayed batch stores nothing twice, channels included.
    let channels_before = scalar(&store, "SELECT COUNT(*) FROM device_channels").await;
    assert_eq!(
        channels_before, 5,
        "mon-12 HR, mon-12 RR, drip-12 rate/infused/remaining"
    );
    let again = ingest(&store, EDGE, &batch).await.unwrap();
    assert_eq!(again.stored, 0);
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM edge_events").await, 11);
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM device_channels").await,
        channels_before
    );

    // NEWS2 scores of one patient, newest first, paged with the keyset cursor, bounded by time.
    let q = EventQuery {
        kind: "risk",
        patient: Some("MRN-1".into()),
        codes: vec!["news2".into()],
        limit: 1,
        ..Default::default()
    };
    let p1 = store.search_events(&q).await.unwrap();
    assert_eq!(p1.len(), 1);
    assert_eq!((p1[0].sequence, p1[0].event_ms), (7, T0 + 20_000));
    let p2 = store
        .search_events(&EventQuery {
            after: Some((p1[0].event_ms, p1[0].sequence, p1[0].edge_id.clone())),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(p2.iter().map(|r| r.sequence).collect::<Vec<_>>(), vec![6]);
    let p3 = store
        .search_events(&EventQuery {
            after: Some((p2[0].event_ms, p2[0].sequence, p2[0].edge_id.clone())),
            ..q.clone()
        })
        .await
        .unwrap();
    assert!(p3.is_empty(), "two NEWS2 scores only");
    let early = store
        .search_events(&EventQuery {
            time: TimeRange {
                from_ms: None,
                before_ms: Some(T0 + 15_000),
            },
            limit: 10,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        early.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![6]
    );
    assert_eq!(
        store
            .count_events(&EventQuery {
                limit: 0,
                ..q.clone()
            })
            .await
            .unwrap(),
        2
    );
    let models = store
        .search_events(&EventQuery {
            kind: "risk",
            codes: vec!["model".into()],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        models.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![8]
    );
    let none = store
        .search_events(&EventQuery {
            patient: Some("MRN-2".into()),
            limit: 10,
            ..q.clone()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "another patient's scores are not returned");

    // derivedFrom: keys resolve to the vital signs' sequences, in order; unknown and non-vital keys drop out.
    let seqs = store
        .vital_sequences_by_keys(
            EDGE,
            &[
                "k-2".into(),
                "k-1".into(),
                "no-such-key".into(),
                "k-6".into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(seqs, vec![2, 1]);
    assert!(
        store
            .vital_sequences_by_keys("edge-other", &["k-1".into()])
            .await
            .unwrap()
            .is_empty()
    );

    // One alarm's history in order; alarm search by patient and by kind, paged by first raise.
    let hist = store.alarm_history("alarm-1").await.unwrap();
    assert_eq!(
        hist.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![9, 10, 11]
    );
    let mine = store
        .search_groups(
            GroupKind::Alarm,
            &GroupQuery {
                patient: Some("MRN-1".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(mine, vec![("alarm-1".to_string(), T0 + 1_000)]);
    let all = store
        .search_groups(
            GroupKind::Alarm,
            &GroupQuery {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        all,
        vec![("alarm-2".to_string(), T0 + 2_000)],
        "newest first raise first"
    );
    let rest = store
        .search_groups(
            GroupKind::Alarm,
            &GroupQuery {
                after: Some((T0 + 2_000, "alarm-2".into())),
                limit: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest, vec![("alarm-1".to_string(), T0 + 1_000)]);
    let by_kind = store
        .search_groups(
            GroupKind::Alarm,
            &GroupQuery {
                codes: vec!["vital-threshold".into()],
                limit: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(by_kind.is_empty(), "both alarms are infusion-too-fast");

    // Medication orders: summary of reports, search by patient.
    let s = store
        .order_summary("ORD-1")
        .await
        .unwrap()
        .expect("order ORD-1");
    assert_eq!(
        (s.first_ms, s.reports, s.completed_ms),
        (T0, 3, Some(T0 + 120_000))
    );
    assert_eq!(s.latest.sequence, 15);
    assert!(store.order_summary("ORD-9").await.unwrap().is_none());
    let orders = store
        .search_groups(
            GroupKind::Order,
            &GroupQuery {
                patient: Some("MRN-2".into()),
                limit: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(orders, vec![("ORD-2".to_string(), T0 + 4_000)]);

    // Devices by patient and by kind, channels, locations.
    let ch = store.device_channels("drip-12").await.unwrap();
    assert_eq!(
        ch.iter()
            .map(|c| (c.metric_mdc, c.unit.as_str()))
            .collect::<Vec<_>>(),
        vec![(157_784, "mL/h"), (157_872, "mL"), (157_993, "mL")]
    );
    assert_eq!(
        ch[0].last_seen_ms,
        T0 + 120_000,
        "latest report of the batch"
    );
    let devs = |patient: &'static str| {
        let store = store.clone();
        async move {
            store
                .search_devices(&DeviceQuery {
                    patient: Some(patient.into()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.device_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        devs("MRN-1").await,
        vec!["drip-12", "mon-12"],
        "the pump and the monitor's HR channel"
    );
    assert_eq!(
        devs("MRN-2").await,
        vec!["mon-12"],
        "only the monitor's RR channel"
    );
    assert!(devs("MRN-9").await.is_empty());
    let drips = store
        .search_devices(&DeviceQuery {
            kinds: vec![i64::from(DeviceKind::DripMonitor as i32)],
            ward: Some(WARD.into()),
            bed: Some("12".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(drips.len(), 1);
    let page = store
        .search_channels(None, None, Some(("drip-12", 157_993)), 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter()
            .map(|c| (c.device_id.as_str(), c.metric_mdc))
            .collect::<Vec<_>>(),
        vec![
            ("mon-12", i64::from(MDC_ECG_HEART_RATE)),
            ("mon-12", i64::from(MDC_RESP_RATE))
        ]
    );
    assert_eq!(
        store.locations().await.unwrap(),
        vec![
            (WARD.to_string(), String::new()),
            (WARD.to_string(), "12".to_string())
        ]
    );
}

async fn event_index_backfill(store: Store) {
    ingest(&store, EDGE, &event_batch()).await.unwrap();
    // What rows stored before migration 0005 look like: no index columns.
    let clear = "UPDATE edge_events SET event_ms = NULL, code = NULL, alarm_id = NULL, alarm_state = NULL, \
                 order_id = NULL, news2_total = NULL";
    match &store {
        Store::Sqlite(p) => sqlx::query(clear).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::query(clear).execute(p).await.map(|_| ()),
    }
    .expect("clear index columns");
    assert!(store.alarm_history("alarm-1").await.unwrap().is_empty());
    assert_eq!(store.backfill_event_index().await.unwrap(), 11);
    assert_eq!(
        store.backfill_event_index().await.unwrap(),
        0,
        "nothing left"
    );
    assert_eq!(store.alarm_history("alarm-1").await.unwrap().len(), 3);
    assert_eq!(
        store
            .order_summary("ORD-1")
            .await
            .unwrap()
            .map(|s| s.reports),
        Some(3)
    );
}

async fn channels_move(store: Store) {
    let hr_at = |seq: u64, patient: &str, at: i64| {
        item(
            seq,
            key(seq),
            Payload::Vital(vital(patient, MDC_ECG_HEART_RATE, 70.0, at)),
        )
    };
    let last_seen = |store: Store| async move {
        let c = store.device_channels("mon-12").await.unwrap();
        assert_eq!(c.len(), 1);
        (
            c[0].patient_id.clone(),
            c[0].first_seen_ms,
            c[0].last_seen_ms,
        )
    };
    ingest(&store, EDGE, &[hr_at(1, "MRN-1", T0)])
        .await
        .unwrap();
    assert_eq!(last_seen(store.clone()).await, ("MRN-1".into(), T0, T0));
    // 30 s later: not due (a minute's precision), nothing rewritten.
    ingest(&store, EDGE, &[hr_at(2, "MRN-1", T0 + 30_000)])
        .await
        .unwrap();
    assert_eq!(last_seen(store.clone()).await, ("MRN-1".into(), T0, T0));
    // Two minutes later: due.
    ingest(&store, EDGE, &[hr_at(3, "MRN-1", T0 + 120_000)])
        .await
        .unwrap();
    assert_eq!(
        last_seen(store.clone()).await,
        ("MRN-1".into(), T0, T0 + 120_000)
    );
    // The monitor moves to another patient a second later: updated at once.
    ingest(&store, EDGE, &[hr_at(4, "MRN-2", T0 + 121_000)])
        .await
        .unwrap();
    assert_eq!(
        last_seen(store.clone()).await,
        ("MRN-2".into(), T0, T0 + 121_000)
    );
    // An older sighting arriving late never moves it back.
    ingest(&store, EDGE, &[hr_at(5, "MRN-1", T0 + 500)])
        .await
        .unwrap();
    assert_eq!(
        last_seen(store.clone()).await,
        ("MRN-2".into(), T0, T0 + 121_000)
    );
}

/// A shared [`StoredKeys`] keeps committed `encounters`/`patient_codes` keys from being sent again; a fresh one
/// (what `Store::ingest` uses) sends them every time.
async fn stored_keys_skip(store: Store) {
    let visit = |mut v: VitalSign| {
        v.encounter = Some(wardwatch_proto::v1::EncounterId {
            visit_number: "V-1".into(),
            assigning_authority: "HOSP".into(),
        });
        v
    };
    let batch = |first: u64| -> Vec<IngestItem> {
        [MDC_ECG_HEART_RATE, MDC_RESP_RATE]
            .into_iter()
            .enumerate()
            .map(|(i, mdc)| {
                let seq = first + i as u64;
                let at = T0 + i64::try_from(seq).expect("small") * 1_000;
                item(
                    seq,
                    key(seq),
                    Payload::Vital(visit(vital("MRN-1", mdc, 70.0, at))),
                )
            })
            .collect()
    };
    let keys = StoredKeys::default();
    store.ingest_with(EDGE, &batch(1), &keys).await.unwrap();
    assert_eq!(
        keys.len(),
        3,
        "one visit and two codes, remembered after commit"
    );
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM patient_codes").await,
        2
    );
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM encounters").await, 1);

    // Remove the rows behind the process's back (they are never removed otherwise): a batch with the shared keys
    // does not send them again, one with fresh keys does.
    for sql in ["DELETE FROM patient_codes", "DELETE FROM encounters"] {
        match &store {
            Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
        .expect("delete");
    }
    store.ingest_with(EDGE, &batch(3), &keys).await.unwrap();
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM patient_codes").await,
        0
    );
    store.ingest(EDGE, &batch(5)).await.unwrap();
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM patient_codes").await,
        2
    );
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM encounters").await, 1);

    // A resend of stored sequences (PostgreSQL retries it row by row after the first attempt rolls back) stores
    // nothing new and leaves the remembered keys as they were.
    let out = store.ingest_with(EDGE, &batch(1), &keys).await.unwrap();
    assert!(out.claimed.iter().all(|c| !c), "every item is a replay");
    assert_eq!(keys.len(), 3);
    let hr = store
        .search_vitals(&VitalQuery {
            patient: Some("MRN-1".into()),
            codes: vec![CodeFilter::Loinc("8867-4".into())],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seqs_of(&hr), vec![5, 3, 1]);
}

// ---------------------------------------------------------------------------------------------------------------
// Two tests per scenario
// ---------------------------------------------------------------------------------------------------------------

/// For each scenario `name` (optionally preceded by attributes such as `#[ignore = "..."]`, applied to both tests),
/// generates `sqlite::name` and `postgres::name`. Keep names at most 27 characters: the PostgreSQL database is
/// named `wardwatch_test_storage_<name>_<12 hex>`, and PostgreSQL cuts identifiers at 63 bytes, which would cut
/// the random suffix that keeps concurrent runs apart.
macro_rules! both_backends {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                $(#[$meta])*
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let url = format!("sqlite://{}/t.sqlite", dir.path().display());
                    let store = Store::connect(&url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
                    assert_eq!(store.backend(), "sqlite");
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }

        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                $(#[$meta])*
                async fn $name() {
                    let tag = concat!("storage_", stringify!($name));
                    let Some(db) = TestDatabase::create(tag).await.expect("create test database") else {
                        return; // TestDatabase printed a SKIPPED line (and fails instead on CI).
                    };
                    let store = Store::connect(&db.url).await.unwrap_or_else(|e| panic!("connect {}: {e}", db.url));
                    assert_eq!(store.backend(), "postgres");
                    super::$name(store.clone()).await;
                    store.close().await;
                    db.drop_now().await.expect("drop test database");
                }
            )*
        }
    };
}

both_backends!(
    exactly_once,
    key_reuse_is_replay,
    rejected_items_claimed,
    overlapping_resend,
    search_filters_and_pages,
    device_upsert_newest_wins,
    compound_and_enumerated,
    audit_per_client,
    mixed_batch,
    edges_isolated,
    dup_sequence_key_replay,
    watermark_in_order,
    event_searches,
    event_index_backfill,
    channels_move,
    stored_keys_skip,
);
