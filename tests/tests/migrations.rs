//! Schema migrations on databases that already hold data, on both backends: a database at the previous schema
//! with rows in it is migrated by `Store::connect`, and what the rows meant before still holds after.
//!
//! (Migration 0010's move to day partitions on PostgreSQL is tested in partitions.rs.)

use wardwatch::TestDatabase;
use wardwatch_cloud::storage::{CodeFilter, Store, VitalQuery, VitalSort};

/// Rows as they were stored before migration 0012: two stays of one patient and a row without a visit.
const ROWS_BEFORE_0012: &str = "INSERT INTO vital_signs (edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc,
        loinc, value, enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter,
        encounter_authority)
    VALUES ('edge-7a', 1, 'MRN-1', '7A', '1', 'mon-1', 147842, '8867-4', 70, NULL, '/min', NULL, 0, 1700000000000,
            1700000000500, 'V-OLD', 'HOSP'),
           ('edge-7a', 2, 'MRN-1', '7A', '1', 'mon-1', 147842, '8867-4', 71, NULL, '/min', NULL, 0, 1700000060000,
            1700000060500, 'V-NEW', NULL),
           ('edge-7a', 3, 'MRN-1', '7A', '1', 'mon-1', 147842, '8867-4', 72, NULL, '/min', NULL, 0, 1700000120000,
            1700000120500, 'V-NEW', NULL),
           ('edge-7a', 4, 'MRN-2', '7A', '2', 'mon-2', 147842, '8867-4', 73, NULL, '/min', NULL, 0, 1700000120000,
            1700000120500, NULL, NULL)";

/// After 0012: each visit is found through `encounters` (filled from the stored rows), one stay's rows only, and
/// the encounter index is gone.
async fn encounter_search_survives_0012(store: &Store) {
    let search = |visit: &str| VitalQuery {
        encounter: Some(visit.into()),
        sort: VitalSort::DateAsc,
        limit: 10,
        ..Default::default()
    };
    let seqs = |rows: Vec<wardwatch_cloud::storage::VitalRow>| {
        rows.iter().map(|r| r.sequence).collect::<Vec<_>>()
    };
    let new = store.search_vitals(&search("V-NEW")).await.expect("search");
    assert_eq!(seqs(new), vec![2, 3], "the later stay only");
    let old = store.search_vitals(&search("V-OLD")).await.expect("search");
    assert_eq!(seqs(old), vec![1]);
    assert_eq!(
        store
            .count_vitals_matching(&search("V-NONE"))
            .await
            .expect("count"),
        0
    );
    // Another patient with the visit number: nothing.
    let mut other = search("V-NEW");
    other.patient = Some("MRN-2".into());
    assert!(
        store
            .search_vitals(&other)
            .await
            .expect("search")
            .is_empty()
    );
    for row in store.search_vitals(&search("V-OLD")).await.expect("search") {
        assert_eq!(row.encounter_authority.as_deref(), Some("HOSP"));
    }
    assert_eq!(store.count_vitals().await.expect("count"), 4);
}

/// After 0013: each patient's codes are in `patient_codes` (filled from the stored rows), so a code search finds
/// the rows stored before it, latest measurement first, and a code the patient has no sample of finds nothing.
async fn code_search_survives_0013(store: &Store) {
    let search = |patient: &str, code: &str| VitalQuery {
        patient: Some(patient.into()),
        codes: vec![CodeFilter::Loinc(code.into())],
        sort: VitalSort::DateDesc,
        limit: 10,
        ..Default::default()
    };
    let seqs = |rows: Vec<wardwatch_cloud::storage::VitalRow>| {
        rows.iter().map(|r| r.sequence).collect::<Vec<_>>()
    };
    let hr = store
        .search_vitals(&search("MRN-1", "8867-4"))
        .await
        .expect("search");
    assert_eq!(seqs(hr), vec![3, 2, 1]);
    let by_mdc = VitalQuery {
        codes: vec![CodeFilter::Mdc(147842)],
        ..search("MRN-2", "")
    };
    assert_eq!(
        seqs(store.search_vitals(&by_mdc).await.expect("search")),
        vec![4]
    );
    for (patient, code) in [("MRN-1", "2708-6"), ("MRN-3", "8867-4")] {
        assert!(
            store
                .search_vitals(&search(patient, code))
                .await
                .expect("search")
                .is_empty(),
            "{patient} has no {code}"
        );
        assert_eq!(
            store
                .count_vitals_matching(&search(patient, code))
                .await
                .expect("count"),
            0
        );
    }
    assert_eq!(
        store
            .count_vitals_matching(&search("MRN-1", "8867-4"))
            .await
            .expect("count"),
        3
    );
}

#[tokio::test]
async fn sqlite_0012_keeps_encounter_search() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}/m.sqlite", dir.path().display());
    let before = wardwatch::migrations_before(sqlx::migrate!("../cloud/migrations/sqlite"), 12);
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true);
    let raw = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect");
    before.run(&raw).await.expect("migrations before 0012");
    sqlx::query(ROWS_BEFORE_0012)
        .execute(&raw)
        .await
        .expect("rows");
    raw.close().await;

    let store = Store::connect(&url)
        .await
        .expect("migration 0012 with data");
    encounter_search_survives_0012(&store).await;
    code_search_survives_0013(&store).await;
    store.close().await;
    let check = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'vital_signs_encounter_time'",
    )
    .fetch_one(&check)
    .await
    .expect("catalogue");
    assert_eq!(indexes, 0, "0012 drops the encounter index");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'vital_signs_patient_loinc'",
    )
    .fetch_one(&check)
    .await
    .expect("catalogue");
    assert_eq!(indexes, 0, "0013 drops the per-code index");
    check.close().await;
}

#[tokio::test]
async fn postgres_0012_keeps_encounter_search() {
    let Some(db) = TestDatabase::create("migrations_0012")
        .await
        .expect("test database")
    else {
        return; // TestDatabase printed a SKIPPED line (and fails instead on CI).
    };
    let before = wardwatch::migrations_before(sqlx::migrate!("../cloud/migrations/postgres"), 12);
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connect");
    before.run(&raw).await.expect("migrations before 0012");
    sqlx::query(ROWS_BEFORE_0012)
        .execute(&raw)
        .await
        .expect("rows (into the default partition)");
    raw.close().await;

    let store = Store::connect(&db.url)
        .await
        .expect("migration 0012 with data");
    encounter_search_survives_0012(&store).await;
    code_search_survives_0013(&store).await;
    let check = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connect");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_indexes WHERE indexname LIKE 'vital_signs%encounter%'",
    )
    .fetch_one(&check)
    .await
    .expect("catalogue");
    assert_eq!(
        indexes, 0,
        "0012 drops the encounter index on every partition"
    );
    let indexes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_indexes WHERE indexname LIKE 'vital_signs%loinc%'",
    )
    .fetch_one(&check)
    .await
    .expect("catalogue");
    assert_eq!(
        indexes, 0,
        "0013 drops the per-code index on every partition"
    );
    check.close().await;
    store.close().await;
    db.drop_now().await.expect("drop database");
}
