//! The sync ledger remembers what it decided: a resend of an event that was rejected the first time is found
//! again with its reason (`Store::earlier_rejections`), on both backends. The sync service turns that into the
//! original rejection instead of "replayed" (tests/tests/system.rs, `bad_items_are_rejected_one_by_one...`).

use wardwatch::TestDatabase;
use wardwatch_cloud::storage::{EarlierRejection, IngestItem, Store};
use wardwatch_proto::v1::RejectReason;
use wardwatch_proto::validate::Rejection;

const EDGE: &str = "edge-7a";

async fn earlier_rejections_are_found(store: &Store) {
    let good = wardwatch::simulated_vitals("7A", 2, 5, 2);
    let payload = |i: usize| good[i].payload.clone();
    let items = vec![
        IngestItem {
            sequence: 1,
            idempotency_key: "k1".into(),
            outcome: Ok(payload(0)),
        },
        IngestItem {
            sequence: 2,
            idempotency_key: "k2".into(),
            outcome: Err(Rejection::new(RejectReason::NotFinite, "value is NaN")),
        },
        IngestItem {
            sequence: 3,
            idempotency_key: "k3".into(),
            outcome: Ok(payload(1)),
        },
    ];
    store.ingest(EDGE, &items).await.expect("first ingest");
    let found = store
        .earlier_rejections(EDGE, &[1, 2, 3, 99])
        .await
        .expect("query");
    assert_eq!(
        found,
        vec![EarlierRejection {
            sequence: 2,
            reason: "NotFinite: value is NaN".into()
        }],
        "only the rejected sequence, with its recorded reason; stored and unknown sequences are not rejections"
    );
    // Another edge's ledger is not this edge's.
    assert!(
        store
            .earlier_rejections("edge-other", &[2])
            .await
            .expect("query")
            .is_empty()
    );
    assert!(
        store
            .earlier_rejections(EDGE, &[])
            .await
            .expect("empty")
            .is_empty()
    );
}

#[tokio::test]
async fn earlier_rejections_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}/t.sqlite", dir.path().display());
    let store = Store::connect(&url).await.expect("connect");
    earlier_rejections_are_found(&store).await;
    store.close().await;
}

#[tokio::test]
async fn earlier_rejections_postgres() {
    let Some(db) = TestDatabase::create("ledger_rejections")
        .await
        .expect("create test database")
    else {
        return; // TestDatabase printed a SKIPPED line (and fails instead on CI).
    };
    let store = Store::connect(&db.url).await.expect("connect");
    earlier_rejections_are_found(&store).await;
    store.close().await;
    db.drop_now().await.expect("drop test database");
}
