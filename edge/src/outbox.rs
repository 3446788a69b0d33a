//! The edge's durable outbox: every accepted event waits here until the cloud acknowledges it.
//!
//! # On-disk invariants
//! - The outbox is one SQLite database (`outbox.sqlite` in the edge's data directory) in WAL mode with
//!   `synchronous=FULL`: a transaction that returned from commit survives a process kill or power loss.
//! - An event counts as *accepted* only after the transaction that inserted it committed. [`Outbox::append`]
//!   returns after that commit, never before; callers acknowledge their source (MQTT PUBACK, HL7 ACK) only then.
//! - `seq` is SQLite's `AUTOINCREMENT` rowid: strictly increasing and never reused, even after rows are deleted
//!   or the process restarts. It is the per-edge sync sequence the cloud deduplicates on.
//! - `idempotency_key` is unique: a source re-sending the same message is accepted again without a second row.
//!   This is the only place where re-sends are collapsed (the cloud deduplicates by sequence), so an acknowledged
//!   row is kept for the key-retention window (default [`DEFAULT_KEY_RETENTION`]) after its acknowledgement: a
//!   device that re-sends because it missed our acknowledgement (MQTT redelivery, an HL7 sender retrying) is
//!   still recognised after the cloud already has the event.
//! - A row is deleted only after the cloud acknowledged its sequence (stored, or rejected with a reason; rejected
//!   rows other than replays move to `dead_letter` first) and its retention window passed, or earlier when the
//!   disk budget needs the space (acknowledged rows are always given up before a new event is refused).
//!   `sync_state.acked_through` only grows; rows at or below it are never sent again.
//! - The bytes in use (`(page_count - freelist_count) * page_size`) stay under the configured budget: above the
//!   near-full ratio a technical alarm is raised; at the budget, appends fail with [`OutboxError::Full`] so the
//!   source is told (negative acknowledgement) rather than the data being dropped silently.

use std::collections::VecDeque;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, SqlitePool};
use tokio::sync::Notify;
use wardwatch_proto::v1::{EdgeEvent, edge_event::Payload};

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The disk budget is exhausted; the event was NOT accepted and the source must be told.
    #[error("outbox full: {used} bytes in use of a {budget}-byte budget; event not accepted")]
    Full {
        /// Bytes in use.
        used: u64,
        /// Configured budget.
        budget: u64,
    },
    /// The database failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be decoded (disk corruption).
    #[error("outbox row {seq} is corrupt: {reason}")]
    Corrupt {
        /// The row.
        seq: i64,
        /// Decoder message.
        reason: String,
    },
}

/// An event about to be accepted: its idempotency key, when it was accepted, and what it says.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Unique per edge; derived from the source message so re-sends collapse.
    pub idempotency_key: String,
    /// When the edge accepted it (Unix ms).
    pub accepted_at_unix_ms: i64,
    /// The event itself.
    pub payload: Payload,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Newly accepted events.
    pub accepted: u64,
    /// Events whose idempotency key was already in the outbox (accepted earlier; not stored twice).
    pub duplicates: u64,
}

/// Budget state after an operation, for the technical alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetState {
    /// Below the near-full ratio.
    Normal,
    /// At or above the near-full ratio but still accepting.
    NearFull,
}

/// The durable outbox. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Outbox {
    /// Pool over the one database file (writers serialize in SQLite; the pool lets reads run beside them).
    pool: SqlitePool,
    /// Disk budget in bytes.
    budget_bytes: u64,
    /// Fraction of the budget at which the near-full technical alarm is raised.
    near_full_ratio: f64,
    /// Bytes in use after the last write, so appends can refuse early without a query.
    used_bytes: AtomicU64,
    /// Wakes the sync task when new events arrive.
    new_events: Notify,
    /// How long an acknowledged row (and so its idempotency key) is kept after its acknowledgement.
    key_retention_ms: i64,
    /// Acknowledgements not yet pruned, oldest first: (acknowledged through this sequence, at this Unix ms). Rows
    /// up to a mark older than the retention are deleted in one range delete on the next acknowledgement.
    ack_marks: Mutex<VecDeque<(i64, i64)>>,
}

/// How long acknowledged rows are kept by default so that re-sent source messages are still recognised.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(600);

/// Rows per multi-row INSERT (3 bound parameters each; SQLite allows 32,766 per statement).
const INSERT_CHUNK: usize = 2_000;

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir`.
    pub async fn open(
        dir: &Path,
        budget_bytes: u64,
        near_full_ratio: f64,
    ) -> Result<Self, OutboxError> {
        let path = dir.join("outbox.sqlite");
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?;
        for stmt in [
            "CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                idempotency_key TEXT NOT NULL UNIQUE,
                accepted_at_ms INTEGER NOT NULL,
                event BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS sync_state (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dead_letter (
                seq INTEGER PRIMARY KEY,
                idempotency_key TEXT NOT NULL,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL,
                event BLOB NOT NULL,
                rejected_at_ms INTEGER NOT NULL)",
        ] {
            sqlx::query(stmt).execute(&pool).await?;
        }
        let outbox = Self {
            pool,
            budget_bytes,
            near_full_ratio,
            used_bytes: AtomicU64::new(0),
            new_events: Notify::new(),
            key_retention_ms: duration_ms(DEFAULT_KEY_RETENTION),
            ack_marks: Mutex::new(VecDeque::new()),
        };
        // Rows acknowledged before a restart get a fresh retention window from now.
        let acked = outbox.acked_through().await?;
        if acked > 0 {
            outbox.push_mark(
                i64::try_from(acked).unwrap_or(i64::MAX),
                wardwatch_proto::now_unix_ms(),
            );
        }
        outbox.refresh_usage().await?;
        Ok(outbox)
    }

    /// Keeps acknowledged rows (and so their idempotency keys) for `retention` after acknowledgement instead of
    /// the default [`DEFAULT_KEY_RETENTION`]. Zero deletes them at acknowledgement.
    pub fn with_key_retention(mut self, retention: Duration) -> Self {
        self.key_retention_ms = duration_ms(retention);
        self
    }

    fn push_mark(&self, through: i64, at_ms: i64) {
        if let Ok(mut marks) = self.ack_marks.lock() {
            marks.push_back((through, at_ms));
        }
    }

    /// The highest sequence whose retention has passed at `now_ms` (its marks are consumed), if any.
    fn expired_through(&self, now_ms: i64) -> Option<i64> {
        let mut marks = self.ack_marks.lock().ok()?;
        let mut through = None;
        while let Some(&(seq, at)) = marks.front() {
            if at.saturating_add(self.key_retention_ms) > now_ms {
                break;
            }
            through = Some(seq);
            marks.pop_front();
        }
        through
    }

    /// Deletes every acknowledged row now, retention or not: the disk budget needs the space.
    async fn prune_all_acknowledged(&self) -> Result<u64, OutboxError> {
        let acked = i64::try_from(self.acked_through().await?).unwrap_or(i64::MAX);
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq <= ?")
            .bind(acked)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if let Ok(mut marks) = self.ack_marks.lock() {
            marks.retain(|&(seq, _)| seq > acked);
        }
        self.refresh_usage().await?;
        Ok(deleted)
    }

    async fn refresh_usage(&self) -> Result<u64, OutboxError> {
        let row = sqlx::query(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()),
                    (SELECT page_size FROM pragma_page_size())",
        )
        .fetch_one(&self.pool)
        .await?;
        let pages: i64 = row.try_get(0)?;
        let size: i64 = row.try_get(1)?;
        let used = u64::try_from(pages.max(0) * size.max(0)).unwrap_or(u64::MAX);
        self.used_bytes.store(used, Ordering::Relaxed);
        Ok(used)
    }

    /// Bytes in use by outbox data.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The configured budget.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Where the outbox stands against its budget.
    pub fn budget_state(&self) -> BudgetState {
        if self.used_bytes() as f64 >= self.budget_bytes as f64 * self.near_full_ratio {
            BudgetState::NearFull
        } else {
            BudgetState::Normal
        }
    }

    /// Makes `events` durable, in order, in one transaction. Returns only after commit.
    ///
    /// Refuses everything with [`OutboxError::Full`] when the budget is exhausted, unless `bypass_budget` (used
    /// only for the technical alarm that reports the outbox filling up, a few hundred bytes).
    pub async fn append(
        &self,
        events: &[NewEvent],
        bypass_budget: bool,
    ) -> Result<AppendOutcome, OutboxError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let mut used = self.used_bytes();
        if !bypass_budget && used >= self.budget_bytes && self.prune_all_acknowledged().await? > 0 {
            // Retained acknowledged rows are given up before a new event is refused.
            used = self.used_bytes();
        }
        if !bypass_budget && used >= self.budget_bytes {
            return Err(OutboxError::Full {
                used,
                budget: self.budget_bytes,
            });
        }
        let mut tx = self.pool.begin().await?;
        let mut accepted = 0u64;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut qb =
                QueryBuilder::new("INSERT INTO outbox (idempotency_key, accepted_at_ms, event) ");
            qb.push_values(chunk, |mut b, e| {
                let event = EdgeEvent {
                    sequence: 0,
                    idempotency_key: String::new(),
                    accepted_at_unix_ms: 0,
                    payload: Some(e.payload.clone()),
                };
                b.push_bind(e.idempotency_key.as_str())
                    .push_bind(e.accepted_at_unix_ms)
                    .push_bind(event.encode_to_vec());
            });
            qb.push(" ON CONFLICT(idempotency_key) DO NOTHING");
            accepted += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        self.refresh_usage().await?;
        self.new_events.notify_one();
        Ok(AppendOutcome {
            accepted,
            duplicates: events.len() as u64 - accepted,
        })
    }

    /// Waits until an append happened since the last call (or returns at once if one already did).
    pub async fn wait_for_events(&self) {
        self.new_events.notified().await;
    }

    /// Up to `limit` events with sequence greater than `after`, in sequence order, ready to sync.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EdgeEvent>, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, idempotency_key, accepted_at_ms, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let blob: Vec<u8> = row.try_get(3)?;
            let mut event =
                EdgeEvent::decode(blob.as_slice()).map_err(|e| OutboxError::Corrupt {
                    seq,
                    reason: e.to_string(),
                })?;
            event.sequence = u64::try_from(seq).map_err(|_| OutboxError::Corrupt {
                seq,
                reason: "negative sequence".into(),
            })?;
            event.idempotency_key = row.try_get(1)?;
            event.accepted_at_unix_ms = row.try_get(2)?;
            out.push(event);
        }
        Ok(out)
    }

    /// Records that the cloud processed every event up to and including `through`: rejected ones (other than
    /// replays, which were stored before) move to the dead-letter table. The acknowledged rows stay for the
    /// key-retention window; rows whose window has passed are deleted now. Returns the rows deleted.
    pub async fn acknowledge(
        &self,
        through: u64,
        rejected: &[(u64, String, String)],
    ) -> Result<u64, OutboxError> {
        let through_i = i64::try_from(through).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let now = wardwatch_proto::now_unix_ms();
        for (seq, reason, detail) in rejected {
            sqlx::query(
                "INSERT OR IGNORE INTO dead_letter (seq, idempotency_key, reason, detail, event, rejected_at_ms)
                 SELECT seq, idempotency_key, ?, ?, event, ? FROM outbox WHERE seq = ?",
            )
            .bind(reason)
            .bind(detail)
            .bind(now)
            .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        self.push_mark(through_i, now);
        let deleted = match self.expired_through(now) {
            Some(expired) => sqlx::query("DELETE FROM outbox WHERE seq <= ?")
                .bind(expired.min(through_i))
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            None => 0,
        };
        sqlx::query(
            "INSERT INTO sync_state (k, v) VALUES ('acked_through', ?)
             ON CONFLICT(k) DO UPDATE SET v = max(v, excluded.v)",
        )
        .bind(through_i)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if self.budget_state() == BudgetState::NearFull {
            // Near the budget, retained rows are not worth a technical alarm: give them up first.
            return Ok(deleted + self.prune_all_acknowledged().await?);
        }
        self.refresh_usage().await?;
        Ok(deleted)
    }

    /// Highest sequence the cloud acknowledged so far (0 if none).
    pub async fn acked_through(&self) -> Result<u64, OutboxError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT v FROM sync_state WHERE k = 'acked_through'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
    }

    /// Events waiting for the cloud (acknowledged rows kept for their idempotency keys do not count).
    pub async fn pending(&self) -> Result<u64, OutboxError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox
             WHERE seq > coalesce((SELECT v FROM sync_state WHERE k = 'acked_through'), 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Events the cloud rejected, kept for inspection.
    pub async fn dead_letters(&self) -> Result<u64, OutboxError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Closes the database cleanly.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardwatch_proto::v1::{BedLocation, VitalSign};

    fn vital(i: i64) -> NewEvent {
        NewEvent {
            idempotency_key: format!("k{i}"),
            accepted_at_unix_ms: 1_700_000_000_000 + i,
            payload: Payload::Vital(VitalSign {
                patient_id: "MRN1".into(),
                location: Some(BedLocation {
                    ward: "7A".into(),
                    bed: "1".into(),
                }),
                device_id: "mon".into(),
                metric_mdc: wardwatch_proto::metrics::MDC_ECG_HEART_RATE,
                value: 60.0 + i as f64,
                unit_ucum: "/min".into(),
                measured_at_unix_ms: 1_700_000_000_000 + i,
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn survives_reopen_dedups_and_deletes_only_after_ack() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 100 << 20, 0.9).await.unwrap();
        let events: Vec<_> = (0..10).map(vital).collect();
        assert_eq!(ob.append(&events, false).await.unwrap().accepted, 10);
        // Same keys again: accepted as duplicates, not stored twice.
        assert_eq!(
            ob.append(&events[..3], false).await.unwrap(),
            AppendOutcome {
                accepted: 0,
                duplicates: 3
            }
        );
        ob.close().await;
        drop(ob);

        let ob = Outbox::open(dir.path(), 100 << 20, 0.9).await.unwrap();
        let got = ob.read_after(0, 100).await.unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.windows(2).all(|w| w[0].sequence < w[1].sequence));
        assert_eq!(got[0].idempotency_key, "k0");
        let through = got[4].sequence;
        ob.acknowledge(
            through,
            &[(got[2].sequence, "Invalid".into(), "bad".into())],
        )
        .await
        .unwrap();
        assert_eq!(ob.pending().await.unwrap(), 5);
        assert_eq!(ob.dead_letters().await.unwrap(), 1);
        assert_eq!(ob.acked_through().await.unwrap(), through);
        // Sequences keep growing after deletes: never reused.
        ob.append(&[vital(100)], false).await.unwrap();
        let rest = ob.read_after(through, 100).await.unwrap();
        assert_eq!(rest.len(), 6);
        assert!(rest.last().unwrap().sequence > got.last().unwrap().sequence);
    }

    /// A source re-sending a message after the cloud acknowledged it is still recognised while the key is retained,
    /// and the rows go once the retention passed; with no retention they go at acknowledgement.
    #[tokio::test]
    async fn acknowledged_keys_are_retained_then_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 100 << 20, 0.9)
            .await
            .unwrap()
            .with_key_retention(Duration::from_millis(300));
        let events: Vec<_> = (0..5).map(vital).collect();
        ob.append(&events, false).await.unwrap();
        let through = ob.read_after(0, 10).await.unwrap()[4].sequence;
        assert_eq!(
            ob.acknowledge(through, &[]).await.unwrap(),
            0,
            "kept for retention"
        );
        assert_eq!(
            ob.pending().await.unwrap(),
            0,
            "acknowledged rows are not pending"
        );
        assert!(ob.read_after(through, 10).await.unwrap().is_empty());
        let again = ob.append(&events[1..3], false).await.unwrap();
        assert_eq!(
            again.duplicates, 2,
            "re-send after acknowledgement collapses"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        ob.append(&[vital(50)], false).await.unwrap();
        let next = ob.read_after(through, 10).await.unwrap()[0].sequence;
        assert_eq!(
            ob.acknowledge(next, &[]).await.unwrap(),
            5,
            "expired rows pruned"
        );
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&ob.pool)
            .await
            .unwrap();
        assert_eq!(count, 1, "only the fresh acknowledgement is retained");

        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 100 << 20, 0.9)
            .await
            .unwrap()
            .with_key_retention(Duration::ZERO);
        ob.append(&events, false).await.unwrap();
        let through = ob.read_after(0, 10).await.unwrap()[4].sequence;
        assert_eq!(ob.acknowledge(through, &[]).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn refuses_when_budget_is_exhausted_but_not_silently() {
        let dir = tempfile::tempdir().unwrap();
        // A budget smaller than the empty database: every normal append is refused.
        let ob = Outbox::open(dir.path(), 4096, 0.5).await.unwrap();
        assert_eq!(ob.budget_state(), BudgetState::NearFull);
        match ob.append(&[vital(1)], false).await {
            Err(OutboxError::Full { budget, .. }) => assert_eq!(budget, 4096),
            other => panic!("expected Full, got {other:?}"),
        }
        // The technical alarm may still be written.
        assert_eq!(ob.append(&[vital(2)], true).await.unwrap().accepted, 1);
    }
}
