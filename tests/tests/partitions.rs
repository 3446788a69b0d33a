//! PostgreSQL keeps Observations (`vital_signs`) in one partition per UTC day of measured time
//! (cloud/src/storage/partitions.rs, migration 0010). These tests run against the real server: rows land in
//! their day's partition, rows of days without one are kept in the default partition and move into their day
//! when it is prepared, concurrent creators agree, and a database migrated with data keeps every row readable.
//! Without a reachable PostgreSQL they say loudly that they were skipped (and fail on CI).

use sqlx::PgPool;
use wardwatch::TestDatabase;
use wardwatch_cloud::storage::{IngestItem, StorageError, Store, VitalQuery};
use wardwatch_proto::v1::edge_event::Payload;

const EDGE: &str = "edge-7a";
const DAY_MS: i64 = 86_400_000;

/// `n` simulated vital signs, all measured at `measured_ms`, as ingest items from `first_seq` on.
fn vitals_at(measured_ms: i64, first_seq: u64, n: usize) -> Vec<IngestItem> {
    wardwatch::simulated_vitals("7A", 2, first_seq, n)
        .into_iter()
        .zip(first_seq..)
        .map(|(inc, sequence)| {
            let mut payload = inc.payload;
            if let Payload::Vital(v) = &mut payload {
                v.measured_at_unix_ms = measured_ms;
            }
            IngestItem {
                sequence,
                idempotency_key: format!("k{sequence}"),
                outcome: Ok(payload),
            }
        })
        .collect()
}

fn pool(store: &Store) -> &PgPool {
    match store {
        Store::Postgres(p) => p,
        Store::Sqlite(_) => panic!("these tests are about PostgreSQL"),
    }
}

fn day_table(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(DAY_MS) * 86_400)
        .expect("a calendar day");
    format!(
        "vital_signs_d{:04}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    )
}

/// How many Observations each partition holds, by table name.
async fn rows_per_partition(store: &Store) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT tableoid::regclass::text AS t, COUNT(*) FROM vital_signs GROUP BY t ORDER BY t",
    )
    .fetch_all(pool(store))
    .await
    .expect("per-partition counts")
}

async fn exists(store: &Store, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool(store))
        .await
        .expect("catalog")
}

async fn all_vitals(store: &Store) -> Vec<wardwatch_cloud::storage::VitalRow> {
    store
        .search_vitals(&VitalQuery {
            limit: 1_000,
            ..VitalQuery::default()
        })
        .await
        .expect("search")
}

#[tokio::test]
async fn each_days_observations_live_in_that_days_partition() {
    let Some(db) = TestDatabase::create("partitions_days")
        .await
        .expect("test database")
    else {
        return;
    };
    let store = Store::connect(&db.url).await.expect("connect");
    let now = wardwatch_proto::now_unix_ms();
    for d in [-1, 0, 1] {
        assert!(
            exists(&store, &day_table(now + d * DAY_MS)).await,
            "connect prepares yesterday, today and tomorrow (day {d})"
        );
    }
    assert!(
        !exists(&store, "vital_signs_legacy").await,
        "a database migrated empty has no legacy partition"
    );

    let ten_days_ago = now - 10 * DAY_MS;
    let sixty_days_ago = now - 60 * DAY_MS;
    store
        .ingest(EDGE, &vitals_at(now, 1, 5))
        .await
        .expect("today");
    store
        .ingest(EDGE, &vitals_at(ten_days_ago, 100, 4))
        .await
        .expect("late data, inside the creation window");
    store
        .ingest(EDGE, &vitals_at(sixty_days_ago, 200, 3))
        .await
        .expect("a backfill beyond the window is still stored");
    let mut expected = vec![
        (day_table(now), 5),
        (day_table(ten_days_ago), 4),
        ("vital_signs_default".to_string(), 3),
    ];
    expected.sort();
    assert_eq!(rows_per_partition(&store).await, expected);
    assert_eq!(
        all_vitals(&store).await.len(),
        12,
        "searches see every partition"
    );

    // Preparing the old day moves its rows out of the default partition; nothing is lost or doubled.
    store
        .prepare_observation_days(sixty_days_ago - DAY_MS, sixty_days_ago + 1)
        .await
        .expect("prepare a backfill's days");
    let mut expected = vec![
        (day_table(now), 5),
        (day_table(ten_days_ago), 4),
        (day_table(sixty_days_ago), 3),
    ];
    expected.sort();
    assert_eq!(rows_per_partition(&store).await, expected);
    assert!(exists(&store, &day_table(sixty_days_ago - DAY_MS)).await);
    assert_eq!(store.count_vitals().await.expect("count"), 12);
    assert_eq!(store.count_duplicate_vitals().await.expect("dups"), 0);
    let moved = store
        .vital_by_lineage(EDGE, 201)
        .await
        .expect("read")
        .expect("a moved row is still found by its lineage");
    assert_eq!(moved.measured_at_ms, sixty_days_ago);

    // A date-range search only needs that day; the plan shows the other partitions pruned.
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM vital_signs WHERE patient_id = 'x' AND measured_at_ms >= $1 AND measured_at_ms < $2",
    )
    .bind(ten_days_ago - 1)
    .bind(ten_days_ago + 1)
    .fetch_all(pool(&store))
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(plan.contains(&day_table(ten_days_ago)), "{plan}");
    assert!(!plan.contains(&day_table(now)), "today is pruned: {plan}");

    // Operators cannot ask for an unbounded number of tables at once.
    assert!(matches!(
        store
            .prepare_observation_days(0, now)
            .await
            .expect_err("decades of partitions"),
        StorageError::Invalid(_)
    ));

    // Two cloud processes creating the same new day at once agree (advisory lock, idempotent creation).
    let other = Store::connect(&db.url)
        .await
        .expect("second connection pool");
    let far = now - 200 * DAY_MS;
    store
        .ingest(EDGE, &vitals_at(far, 300, 2))
        .await
        .expect("into default");
    let (a, b) = tokio::join!(
        store.prepare_observation_days(far, far + 1),
        other.prepare_observation_days(far, far + 1)
    );
    a.expect("first creator");
    b.expect("second creator");
    assert!(
        rows_per_partition(&store)
            .await
            .contains(&(day_table(far), 2))
    );
    assert_eq!(store.count_vitals().await.expect("count"), 14);
    drop((store, other));
    db.drop_now().await.expect("drop database");
}

#[tokio::test]
async fn migrating_a_database_with_data_keeps_every_row() {
    let Some(db) = TestDatabase::create("partitions_migrate")
        .await
        .expect("test database")
    else {
        return;
    };
    // The schema as it was before partitioning (migrations 1..=9), with rows in it.
    let before = wardwatch::migrations_before(sqlx::migrate!("../cloud/migrations/postgres"), 10);
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connect");
    before.run(&raw).await.expect("migrations before 0010");
    let now = wardwatch_proto::now_unix_ms();
    for (seq, measured) in [(1i64, now - 3 * DAY_MS), (2, now - DAY_MS), (3, now)] {
        sqlx::query(
            "INSERT INTO vital_signs (edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, loinc, value,
                 enumerated, unit, components, quality, measured_at_ms, received_at_ms)
             VALUES ($1, $2, 'SIM000001', '7A', '1', 'mon-1', 147842, '8867-4', 72, NULL, '/min', NULL, 0, $3, $3)",
        )
        .bind(EDGE)
        .bind(seq)
        .bind(measured)
        .execute(&raw)
        .await
        .expect("a row stored before partitioning");
    }
    let old_max: i64 = sqlx::query_scalar("SELECT MAX(id) FROM vital_signs")
        .fetch_one(&raw)
        .await
        .expect("max id");
    raw.close().await;

    let store = Store::connect(&db.url)
        .await
        .expect("migration 0010 on a database with data");
    assert_eq!(
        rows_per_partition(&store).await,
        vec![("vital_signs_legacy".to_string(), 3)],
        "old rows stay where they are, attached as the legacy partition"
    );
    for seq in 1..=3 {
        assert!(
            store
                .vital_by_lineage(EDGE, seq)
                .await
                .expect("read")
                .is_some(),
            "old row {seq} readable after the migration"
        );
    }
    // The legacy partition covers up to the end of its newest row's day, so today's new rows go there too; the
    // next day has its own partition. Either way ids keep growing past the old ones.
    let tomorrow = now + DAY_MS;
    store
        .ingest(EDGE, &vitals_at(tomorrow, 10, 2))
        .await
        .expect("new rows");
    let rows = rows_per_partition(&store).await;
    assert!(rows.contains(&(day_table(tomorrow), 2)), "{rows:?}");
    let newest = all_vitals(&store).await;
    assert_eq!(newest.len(), 5);
    assert!(
        newest
            .iter()
            .filter(|r| r.sequence >= 10)
            .all(|r| r.id > old_max),
        "new ids continue after the old ones: {newest:?}"
    );
    drop(store);
    db.drop_now().await.expect("drop database");
}
