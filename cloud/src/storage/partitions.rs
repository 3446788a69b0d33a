//! PostgreSQL's day partitions of `vital_signs` (the Observations), created by migration 0010.
//!
//! Layout: `vital_signs` is partitioned by range of `measured_at_ms`. Each UTC day `D` has the partition
//! `vital_signs_dYYYYMMDD` covering `[D 00:00, D+1 00:00)`; `vital_signs_default` takes rows of days that have
//! none; `vital_signs_legacy` (only on databases migrated with data) holds everything before the day after the
//! newest row stored before partitioning.
//!
//! Invariants this module keeps:
//! - **No row is ever refused for want of a partition.** The default partition takes it; a missing day partition
//!   costs speed (one bigger table), never data.
//! - **Day partitions exist before the data that needs them**, in the common case: [`ensure_days_around`] creates
//!   yesterday, today and tomorrow at connect, and ingest calls [`ensure_days`] for the days of its batch that are
//!   within [`CREATE_WINDOW_PAST_DAYS`] before and [`CREATE_WINDOW_FUTURE_DAYS`] after now. Rows further away
//!   (a backfill, a device clock years off) go to the default partition unless an operator prepares their days
//!   (`Store::prepare_observation_days`), so a bad clock cannot create thousands of tables.
//! - **Creating a day moves that day's rows out of the default partition** in the same transaction, under an
//!   exclusive lock on the default partition, so the attach never fails on rows that arrived there first.
//! - **Creation is idempotent and serialized** across cloud processes by a transaction-scoped advisory lock; a
//!   process remembers the days it has seen exist ([`KnownDays`]), so a batch of a known day costs no query.
//! - Retention is dropping (or detaching) a day: `DROP TABLE vital_signs_d20261124`. Nothing here drops data.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use sqlx::PgPool;

use super::StorageError;

/// One UTC day in ms.
pub(super) const DAY_MS: i64 = 86_400_000;
/// Ingest creates missing day partitions this many days back from now (late data, an edge that was offline).
pub(super) const CREATE_WINDOW_PAST_DAYS: i64 = 31;
/// … and this many days ahead (clock skew between an edge and the cloud).
pub(super) const CREATE_WINDOW_FUTURE_DAYS: i64 = 1;
/// At most this many days prepared in one `Store::prepare_observation_days` call (ten years).
pub(super) const MAX_PREPARED_DAYS: i64 = 3_660;
/// Advisory-lock key serializing partition creation across cloud processes ("WWPART" in ASCII).
const ADVISORY_LOCK_KEY: i64 = 0x5757_5041_5254;
/// SQLSTATE of "partition … would overlap partition …" (invalid_object_definition).
const OVERLAPS_PARTITION: &str = "42P17";

/// The day number (days since 1970-01-01 UTC) of a Unix-ms instant.
pub(super) fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The partition table of a day: `vital_signs_dYYYYMMDD`, or `None` for a day the calendar cannot name.
pub(super) fn partition_name(day: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(day.checked_mul(86_400)?).ok()?;
    let year = t.year();
    if !(1..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "vital_signs_d{year:04}{:02}{:02}",
        u8::from(t.month()),
        t.day()
    ))
}

/// Days whose partitions this process has seen exist, per database (a process may talk to several, as the tests
/// do). Only an optimisation: a day missing here is checked against the catalog, never created twice.
struct KnownDays(Mutex<HashMap<String, HashSet<i64>>>);

fn known() -> &'static KnownDays {
    static KNOWN: OnceLock<KnownDays> = OnceLock::new();
    KNOWN.get_or_init(|| KnownDays(Mutex::new(HashMap::new())))
}

/// Which database a pool talks to, as the key of [`KnownDays`].
fn database_key(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or_default()
    )
}

impl KnownDays {
    fn unknown(&self, db: &str, days: &[i64]) -> Vec<i64> {
        let Ok(map) = self.0.lock() else {
            return days.to_vec();
        };
        let seen = map.get(db);
        days.iter()
            .copied()
            .filter(|d| !seen.is_some_and(|s| s.contains(d)))
            .collect()
    }

    fn remember(&self, db: &str, day: i64) {
        if let Ok(mut map) = self.0.lock() {
            map.entry(db.to_string()).or_default().insert(day);
        }
    }
}

/// Makes sure the partitions of yesterday, today and tomorrow exist (at connect).
pub(super) async fn ensure_days_around(pool: &PgPool, now_ms: i64) -> Result<(), StorageError> {
    let today = day_of(now_ms);
    ensure_days(pool, &[today - 1, today, today + 1]).await
}

/// The days among `measured_ms` that ingest should make sure have partitions: those inside the creation window
/// around `now_ms`, each once, in order.
pub(super) fn days_to_create(measured_ms: impl Iterator<Item = i64>, now_ms: i64) -> Vec<i64> {
    let today = day_of(now_ms);
    let window = (today - CREATE_WINDOW_PAST_DAYS)..=(today + CREATE_WINDOW_FUTURE_DAYS);
    let mut days: Vec<i64> = measured_ms
        .map(day_of)
        .filter(|d| window.contains(d))
        .collect();
    days.sort_unstable();
    days.dedup();
    days
}

/// Makes sure each day in `days` has its partition, creating the missing ones (see the module's invariants).
pub(super) async fn ensure_days(pool: &PgPool, days: &[i64]) -> Result<(), StorageError> {
    let db = database_key(pool);
    let missing = known().unknown(&db, days);
    for day in missing {
        create_day(pool, day).await?;
        known().remember(&db, day);
    }
    Ok(())
}

/// Creates one day's partition if it does not exist, moving that day's rows out of the default partition.
async fn create_day(pool: &PgPool, day: i64) -> Result<(), StorageError> {
    let Some(name) = partition_name(day) else {
        return Ok(()); // Not a calendar day: its rows stay in the default partition.
    };
    let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        tx.commit().await?;
        return Ok(());
    }
    // Rows of this day may already sit in the default partition: lock it, move them, then attach. The lock
    // order (default partition, then the parent for the attach) is the same as an insert's, so no deadlock.
    sqlx::query("LOCK TABLE vital_signs_default IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let ddl = format!(
        "CREATE TABLE {name} (LIKE vital_signs INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK (measured_at_ms >= {from} AND measured_at_ms < {to});"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut *tx)
        .await?;
    let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM vital_signs_default WHERE measured_at_ms >= $1 AND measured_at_ms < $2
                        RETURNING *)
         INSERT INTO {name} SELECT * FROM moved"
    )))
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // The CHECK constraint lets the attach skip scanning the new table; it is redundant afterwards.
    let attach = format!(
        "ALTER TABLE vital_signs ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to});
         ALTER TABLE {name} DROP CONSTRAINT {name}_range;"
    );
    match sqlx::raw_sql(sqlx::AssertSqlSafe(attach))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {}
        // The day lies inside another partition's range (the legacy partition covers everything before its
        // cutoff): that partition holds the day; roll back and leave it there.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(OVERLAPS_PARTITION) => {
            tracing::debug!(partition = %name, error = %e, "day already covered by another partition");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    tracing::info!(partition = %name, moved_from_default = moved, "created Observation day partition");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        // 2026-11-24T00:00:00Z and the last millisecond before it.
        let midnight = 1_795_478_400_000;
        assert_eq!(day_of(midnight) - day_of(midnight - 1), 1);
        assert_eq!(
            partition_name(day_of(midnight)).as_deref(),
            Some("vital_signs_d20261124")
        );
        assert_eq!(
            partition_name(day_of(midnight - 1)).as_deref(),
            Some("vital_signs_d20261123")
        );
        assert_eq!(partition_name(0).as_deref(), Some("vital_signs_d19700101"));
        assert_eq!(partition_name(i64::MAX / DAY_MS), None);
    }

    #[test]
    fn ingest_creates_only_days_inside_the_window() {
        let now = 1_795_478_400_000 + 3_600_000; // 2026-11-24 01:00
        let today = day_of(now);
        let days = days_to_create(
            [
                now,
                now - 1_000,
                now - 2 * DAY_MS,
                now - (CREATE_WINDOW_PAST_DAYS + 1) * DAY_MS, // a backfill: default partition
                now + 5 * DAY_MS, // a clock days ahead: default partition
                now + DAY_MS,
            ]
            .into_iter(),
            now,
        );
        assert_eq!(days, vec![today - 2, today, today + 1]);
    }
}
