//! The edge's durable outbox: every accepted event waits here until the cloud acknowledges it.
//!
//! # On-disk invariants
//! - The outbox is one SQLite database (`outbox.sqlite` in the edge's data directory) in WAL mode with
//!   `synchronous=FULL`: a transaction that returned from commit survives a process kill or power loss.
//! - An event counts as *accepted* only after the transaction that inserted it committed. [`Outbox::append`]
//!   returns after that commit, never before; callers acknowledge their source (MQTT PUBACK, HL7 ACK) only then.
//! - `seq` is SQLite's `AUTOINCREMENT` rowid: strictly increasing and never reused, even after rows are deleted
//!   or the process restarts (the schema migration carries `sqlite_sequence` over). It is the per-edge sync
//!   sequence the cloud deduplicates on.
//! - No two rows of `outbox` have the same `idempotency_key`: a source re-sending the same message is accepted
//!   again without a second row. This is the only place where re-sends are collapsed (the cloud deduplicates by
//!   sequence), so an acknowledged row is kept for the key-retention window (default [`DEFAULT_KEY_RETENTION`])
//!   after its acknowledgement: a device that re-sends because it missed our acknowledgement (MQTT redelivery, an
//!   HL7 sender retrying) is still recognised after the cloud already has the event.
//! - Uniqueness is enforced by [`Outbox::append`], not by a `UNIQUE` index on the text key (schema version 1,
//!   `PRAGMA user_version`; version 0 had that index, and [`Outbox::open`] migrates such a file in place, keeping
//!   every row). A `UNIQUE` index on keys that arrive in no particular order dirtied about one index page per
//!   event in every commit once the table was large (docs/benchmarks.md, 2026-11-24 outbox section). Instead the
//!   keys of rows with `seq <= sync_state.keys_settled_through` are in `outbox_keys(digest, seq)`, where `digest`
//!   is the first 8 bytes of the key's SHA-256; the later rows' keys (at most a few [`SETTLE_ROWS`]) are held in
//!   memory and rebuilt from `outbox` at open. They are moved into `outbox_keys` in one sorted insert per
//!   [`SETTLE_ROWS`] rows, which touches each index page once. A digest only finds candidates: a key counts as
//!   present only when the row at the candidate's `seq` exists and has exactly that key, so a digest collision
//!   never drops a different event (both rows are kept, `(digest, seq)` is the primary key). `outbox_keys` rows
//!   whose `seq` was deleted from `outbox` are stale and ignored by that check; they are removed at the next
//!   settle.
//! - A row is deleted only after the cloud acknowledged its sequence (stored, or rejected with a reason; rejected
//!   rows other than replays move to `dead_letter` first) and its retention window passed, or earlier when the
//!   disk budget needs the space (acknowledged rows are always given up before a new event is refused).
//!   Deletes are always of a prefix (`seq <= n`). `sync_state.acked_through` only grows; rows at or below it are
//!   never sent again.
//! - The bytes in use (`(page_count - freelist_count) * page_size`) stay under the configured budget: above the
//!   near-full ratio a technical alarm is raised; at the budget, appends fail with [`OutboxError::Full`] so the
//!   source is told (negative acknowledgement) rather than the data being dropped silently.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, SqliteConnection, SqlitePool};
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
    /// The file has a schema version this build does not know (written by a newer edge).
    #[error("outbox schema version {found} is newer than this edge's {known}; refusing to open it")]
    UnknownSchema {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The version this build writes.
        known: i64,
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

/// The idempotency keys of rows not yet settled into `outbox_keys` (see the module invariants). Guarded by one
/// async mutex, which also serializes every write that adds or deletes rows, so the check for a key and the
/// insert of its row cannot interleave with another append.
#[derive(Debug, Default)]
struct RecentKeys {
    /// Key → sequence of every committed row with `seq > settled_through` (exactly those rows: entries are added
    /// only after their commit and removed when their row is deleted or settled).
    by_key: HashMap<String, i64>,
    /// `sync_state.keys_settled_through`: rows up to here have their keys in `outbox_keys`.
    settled_through: i64,
    /// Highest sequence deleted from `outbox` so far (deletes are prefixes), so stale `outbox_keys` rows can be
    /// removed at the next settle.
    pruned_through: i64,
    /// `pruned_through` as of the last removal of stale `outbox_keys` rows; nothing to remove while equal.
    cleaned_through: i64,
}

impl RecentKeys {
    /// Forgets the keys of rows deleted through `through`.
    fn pruned(&mut self, through: i64) {
        if through > self.pruned_through {
            self.pruned_through = through;
            self.by_key.retain(|_, seq| *seq > through);
        }
    }
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
    /// Unsettled keys; its lock is held by every write that inserts or deletes `outbox` rows.
    recent: tokio::sync::Mutex<RecentKeys>,
    /// Unsettled rows at which they are settled into `outbox_keys` ([`SETTLE_ROWS`] unless a test changes it).
    settle_rows: usize,
}

/// How long acknowledged rows are kept by default so that re-sent source messages are still recognised.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(600);

/// Unsettled rows at which their keys move from memory into `outbox_keys` in one sorted insert. Larger settles
/// touch each index page for more keys (fewer page writes per key) but hold more keys in memory (about 100 bytes
/// each) and make the append that triggers them wait longer. Measured in docs/benchmarks.md.
pub const SETTLE_ROWS: usize = 65_536;

/// Rows per multi-row INSERT (3 bound parameters each; SQLite allows 32,766 per statement).
const INSERT_CHUNK: usize = 2_000;

/// Keys per `IN (…)` lookup and `(digest, seq)` pairs per insert into `outbox_keys`.
const KEY_CHUNK: usize = 8_000;

/// The schema this build writes (`PRAGMA user_version`). 0: `outbox.idempotency_key` had a `UNIQUE` index.
/// 1: no such index; keys in `outbox_keys` plus memory.
const SCHEMA_VERSION: i64 = 1;

/// The digest a key is indexed under in `outbox_keys`: the first 8 bytes of its SHA-256, big-endian, as a
/// signed integer. Stable across builds and platforms (it is stored on disk); only a hint, always confirmed
/// against the full key.
fn key_digest(key: &str) -> i64 {
    let d = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// Inserts `(digest, seq)` pairs into `outbox_keys` in index order, so each index page is written once.
async fn insert_key_digests(
    conn: &mut SqliteConnection,
    pairs: &mut [(i64, i64)],
) -> Result<(), OutboxError> {
    pairs.sort_unstable();
    for chunk in pairs.chunks(KEY_CHUNK) {
        let mut qb = QueryBuilder::new("INSERT OR IGNORE INTO outbox_keys (digest, seq) ");
        qb.push_values(chunk, |mut b, &(digest, seq)| {
            b.push_bind(digest).push_bind(seq);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Brings a file of schema version 0 to version 1 in one transaction: `outbox` is rebuilt without the `UNIQUE`
/// index (same rows, same sequences, and the `AUTOINCREMENT` high-water mark carried over so no sequence is ever
/// reused), and every row's key digest goes into `outbox_keys`.
async fn migrate_v0(conn: &mut SqliteConnection) -> Result<(), OutboxError> {
    for stmt in [
        "CREATE TABLE outbox_v1 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT NOT NULL,
            accepted_at_ms INTEGER NOT NULL,
            event BLOB NOT NULL)",
        "INSERT INTO outbox_v1 (seq, idempotency_key, accepted_at_ms, event)
            SELECT seq, idempotency_key, accepted_at_ms, event FROM outbox ORDER BY seq",
    ] {
        sqlx::query(stmt).execute(&mut *conn).await?;
    }
    let high: i64 = sqlx::query_scalar(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DROP TABLE outbox").execute(&mut *conn).await?;
    sqlx::query("ALTER TABLE outbox_v1 RENAME TO outbox")
        .execute(&mut *conn)
        .await?;
    // The copy set the new table's counter to its highest row; rows deleted above that must stay unused.
    sqlx::query("DELETE FROM sqlite_sequence WHERE name IN ('outbox', 'outbox_v1')")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO sqlite_sequence (name, seq)
         VALUES ('outbox', max(?, coalesce((SELECT max(seq) FROM outbox), 0)))",
    )
    .bind(high)
    .execute(&mut *conn)
    .await?;
    create_tables(conn).await?;
    let mut pairs = Vec::new();
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, idempotency_key FROM outbox WHERE seq > ? ORDER BY seq LIMIT 65536",
        )
        .bind(after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        for row in &rows {
            let key: String = row.try_get(1)?;
            pairs.push((key_digest(&key), row.try_get::<i64, _>(0)?));
        }
    }
    insert_key_digests(conn, &mut pairs).await?;
    set_keys_settled_through(conn, after).await
}

/// Records that the keys of every row up to `through` are in `outbox_keys` (`sync_state.keys_settled_through`).
async fn set_keys_settled_through(
    conn: &mut SqliteConnection,
    through: i64,
) -> Result<(), OutboxError> {
    sqlx::query(
        "INSERT INTO sync_state (k, v) VALUES ('keys_settled_through', ?)
         ON CONFLICT(k) DO UPDATE SET v = excluded.v",
    )
    .bind(through)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Creates the version-1 tables that do not exist yet.
async fn create_tables(conn: &mut SqliteConnection) -> Result<(), OutboxError> {
    for stmt in [
        "CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT NOT NULL,
            accepted_at_ms INTEGER NOT NULL,
            event BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS outbox_keys (
            digest INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (digest, seq)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS sync_state (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS dead_letter (
            seq INTEGER PRIMARY KEY,
            idempotency_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            event BLOB NOT NULL,
            rejected_at_ms INTEGER NOT NULL)",
    ] {
        sqlx::query(stmt).execute(&mut *conn).await?;
    }
    Ok(())
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir`, migrating a file written by an older edge in place.
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
        {
            let mut tx = pool.begin().await?;
            let version: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut *tx)
                .await?;
            if version > SCHEMA_VERSION {
                return Err(OutboxError::UnknownSchema {
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            let has_outbox: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
            )
            .fetch_one(&mut *tx)
            .await?;
            if version < SCHEMA_VERSION {
                if version == 0 && has_outbox > 0 {
                    migrate_v0(&mut tx).await?;
                } else {
                    create_tables(&mut tx).await?;
                }
                // Keep in step with SCHEMA_VERSION (the migration test checks it).
                sqlx::query("PRAGMA user_version = 1")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        let settled_through: i64 = sqlx::query_scalar(
            "SELECT coalesce((SELECT v FROM sync_state WHERE k = 'keys_settled_through'), 0)",
        )
        .fetch_one(&pool)
        .await?;
        let mut recent = RecentKeys {
            settled_through,
            ..RecentKeys::default()
        };
        for row in sqlx::query("SELECT seq, idempotency_key FROM outbox WHERE seq > ?")
            .bind(settled_through)
            .fetch_all(&pool)
            .await?
        {
            recent.by_key.insert(row.try_get(1)?, row.try_get(0)?);
        }
        let outbox = Self {
            pool,
            budget_bytes,
            near_full_ratio,
            used_bytes: AtomicU64::new(0),
            new_events: Notify::new(),
            key_retention_ms: duration_ms(DEFAULT_KEY_RETENTION),
            ack_marks: Mutex::new(VecDeque::new()),
            recent: tokio::sync::Mutex::new(recent),
            settle_rows: SETTLE_ROWS,
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

    /// Settles keys into `outbox_keys` every `rows` unsettled rows instead of [`SETTLE_ROWS`] (at least 1), for
    /// tests and measurements.
    pub fn with_settle_rows(mut self, rows: usize) -> Self {
        self.settle_rows = rows.max(1);
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

    /// Deletes every acknowledged row now, retention or not: the disk budget needs the space. Their stale
    /// `outbox_keys` rows go too.
    async fn prune_all_acknowledged(&self, recent: &mut RecentKeys) -> Result<u64, OutboxError> {
        let acked = i64::try_from(self.acked_through().await?).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq <= ?")
            .bind(acked)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM outbox_keys WHERE seq <= ?")
            .bind(acked)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        recent.pruned(acked);
        recent.cleaned_through = recent.cleaned_through.max(acked);
        if let Ok(mut marks) = self.ack_marks.lock() {
            marks.retain(|&(seq, _)| seq > acked);
        }
        self.refresh_usage().await?;
        Ok(deleted)
    }

    /// Moves the keys held in memory into `outbox_keys` (sorted, so each index page is written once) and removes
    /// the stale rows of deleted sequences, in one transaction.
    async fn settle(&self, recent: &mut RecentKeys) -> Result<(), OutboxError> {
        let Some(through) = recent.by_key.values().copied().max() else {
            return Ok(());
        };
        let mut pairs: Vec<(i64, i64)> = recent
            .by_key
            .iter()
            .map(|(key, &seq)| (key_digest(key), seq))
            .collect();
        let mut tx = self.pool.begin().await?;
        if recent.pruned_through > recent.cleaned_through {
            sqlx::query("DELETE FROM outbox_keys WHERE seq <= ?")
                .bind(recent.pruned_through)
                .execute(&mut *tx)
                .await?;
        }
        insert_key_digests(&mut tx, &mut pairs).await?;
        set_keys_settled_through(&mut tx, through).await?;
        tx.commit().await?;
        recent.by_key.clear();
        recent.settled_through = through;
        recent.cleaned_through = recent.pruned_through;
        Ok(())
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
    /// An event whose idempotency key is already in the outbox, or earlier in `events`, is counted as a duplicate
    /// and not stored again. Refuses everything with [`OutboxError::Full`] when the budget is exhausted, unless
    /// `bypass_budget` (used only for the technical alarm that reports the outbox filling up, a few hundred bytes).
    pub async fn append(
        &self,
        events: &[NewEvent],
        bypass_budget: bool,
    ) -> Result<AppendOutcome, OutboxError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let mut recent = self.recent.lock().await;
        let mut used = self.used_bytes();
        if !bypass_budget
            && used >= self.budget_bytes
            && self.prune_all_acknowledged(&mut recent).await? > 0
        {
            // Retained acknowledged rows are given up before a new event is refused.
            used = self.used_bytes();
        }
        if !bypass_budget && used >= self.budget_bytes {
            return Err(OutboxError::Full {
                used,
                budget: self.budget_bytes,
            });
        }
        // Keys new to this batch and not among the unsettled rows; the settled ones are checked below.
        let mut seen: HashSet<&str> = HashSet::with_capacity(events.len());
        let candidates: Vec<&NewEvent> = events
            .iter()
            .filter(|e| {
                seen.insert(e.idempotency_key.as_str())
                    && !recent.by_key.contains_key(&e.idempotency_key)
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let mut present: HashSet<String> = HashSet::new();
        if recent.settled_through > 0 {
            for chunk in candidates.chunks(KEY_CHUNK) {
                // A digest match is only a candidate: the row must still exist and carry exactly this key.
                let mut qb = QueryBuilder::new(
                    "SELECT o.idempotency_key FROM outbox_keys k JOIN outbox o ON o.seq = k.seq WHERE k.digest IN (",
                );
                let mut list = qb.separated(", ");
                for e in chunk {
                    list.push_bind(key_digest(&e.idempotency_key));
                }
                qb.push(")");
                for row in qb.build().fetch_all(&mut *tx).await? {
                    present.insert(row.try_get(0)?);
                }
            }
        }
        let fresh: Vec<&NewEvent> = candidates
            .into_iter()
            .filter(|e| !present.contains(&e.idempotency_key))
            .collect();
        let mut inserted: Vec<(String, i64)> = Vec::with_capacity(fresh.len());
        for chunk in fresh.chunks(INSERT_CHUNK) {
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
            qb.push(" RETURNING seq, idempotency_key");
            for row in qb.build().fetch_all(&mut *tx).await? {
                inserted.push((row.try_get(1)?, row.try_get(0)?));
            }
        }
        tx.commit().await?;
        let accepted = inserted.len() as u64;
        recent.by_key.extend(inserted);
        if recent.by_key.len() >= self.settle_rows {
            // The events are durable already; a failed settle leaves their keys in memory for the next try.
            if let Err(e) = self.settle(&mut recent).await {
                tracing::warn!(error = %e, "outbox: settling idempotency keys failed; retried on the next append");
            }
        }
        drop(recent);
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
        let mut recent = self.recent.lock().await;
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
        let expired = self.expired_through(now).map(|e| e.min(through_i));
        let deleted = match expired {
            Some(expired) => sqlx::query("DELETE FROM outbox WHERE seq <= ?")
                .bind(expired)
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
        if let Some(expired) = expired {
            recent.pruned(expired);
        }
        if self.budget_state() == BudgetState::NearFull {
            // Near the budget, retained rows are not worth a technical alarm: give them up first.
            return Ok(deleted + self.prune_all_acknowledged(&mut recent).await?);
        }
        drop(recent);
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

    /// The first outbox schema (version 0), as edges before the `outbox_keys` change wrote it.
    const V0_SCHEMA: [&str; 3] = [
        "CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT NOT NULL UNIQUE,
            accepted_at_ms INTEGER NOT NULL,
            event BLOB NOT NULL)",
        "CREATE TABLE sync_state (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
        "CREATE TABLE dead_letter (
            seq INTEGER PRIMARY KEY,
            idempotency_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            event BLOB NOT NULL,
            rejected_at_ms INTEGER NOT NULL)",
    ];

    async fn count(ob: &Outbox, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&ob.pool).await.unwrap()
    }

    /// An edge upgraded with a non-empty outbox written by the old schema loses nothing: every row keeps its
    /// sequence, key and event, sequences above the old high-water mark are never reused, old keys still collapse
    /// re-sends, and the `UNIQUE` text index is gone.
    #[tokio::test]
    async fn migrates_a_version_0_outbox_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opts = SqliteConnectOptions::from_str("sqlite://")
                .unwrap()
                .filename(dir.path().join("outbox.sqlite"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .unwrap();
            for stmt in V0_SCHEMA {
                sqlx::query(stmt).execute(&pool).await.unwrap();
            }
            for i in 0..12 {
                let e = vital(i);
                let blob = EdgeEvent {
                    sequence: 0,
                    idempotency_key: String::new(),
                    accepted_at_unix_ms: 0,
                    payload: Some(e.payload),
                }
                .encode_to_vec();
                sqlx::query(
                    "INSERT INTO outbox (idempotency_key, accepted_at_ms, event) VALUES (?, ?, ?)",
                )
                .bind(&e.idempotency_key)
                .bind(e.accepted_at_unix_ms)
                .bind(blob)
                .execute(&pool)
                .await
                .unwrap();
            }
            // Rows 1-2 were acknowledged and pruned, 11-12 deleted too: the high-water mark (12) is above the
            // highest remaining row.
            sqlx::query("DELETE FROM outbox WHERE seq <= 2 OR seq > 10")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO sync_state (k, v) VALUES ('acked_through', 4)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let ob = Outbox::open(dir.path(), 100 << 20, 0.9).await.unwrap();
        assert_eq!(count(&ob, "PRAGMA user_version").await, SCHEMA_VERSION);
        assert_eq!(
            count(
                &ob,
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'"
            )
            .await,
            0,
            "the UNIQUE text index is gone"
        );
        assert_eq!(ob.acked_through().await.unwrap(), 4);
        assert_eq!(ob.pending().await.unwrap(), 6);
        let rows = ob.read_after(0, 100).await.unwrap();
        assert_eq!(
            rows.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (3..=10).collect::<Vec<_>>()
        );
        for e in &rows {
            let i = i64::try_from(e.sequence).unwrap() - 1;
            let want = vital(i);
            assert_eq!(e.idempotency_key, want.idempotency_key);
            assert_eq!(e.accepted_at_unix_ms, want.accepted_at_unix_ms);
            assert_eq!(e.payload, Some(want.payload));
        }
        assert_eq!(count(&ob, "SELECT count(*) FROM outbox_keys").await, 8);
        // Old keys still collapse re-sends; a new event gets a sequence above the old high-water mark.
        let again = ob
            .append(&[vital(2), vital(9), vital(40)], false)
            .await
            .unwrap();
        assert_eq!(
            again,
            AppendOutcome {
                accepted: 1,
                duplicates: 2
            }
        );
        assert_eq!(ob.read_after(10, 10).await.unwrap()[0].sequence, 13);
        ob.close().await;
        drop(ob);
        // Opening again does not migrate twice.
        let ob = Outbox::open(dir.path(), 100 << 20, 0.9).await.unwrap();
        assert_eq!(ob.read_after(0, 100).await.unwrap().len(), 9);
        assert_eq!(ob.append(&[vital(40)], false).await.unwrap().duplicates, 1);
    }

    /// Re-sends collapse whether their key is still in memory, already settled into `outbox_keys`, repeated within
    /// one batch, or from before a restart; keys of deleted rows no longer count, and settling removes their stale
    /// `outbox_keys` rows.
    #[tokio::test]
    async fn duplicates_collapse_across_settles_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let open = || async {
            Outbox::open(dir.path(), 100 << 20, 0.9)
                .await
                .unwrap()
                .with_settle_rows(8)
                .with_key_retention(Duration::ZERO)
        };
        let ob = open().await;
        let first: Vec<_> = (0..10).map(vital).collect();
        assert_eq!(ob.append(&first, false).await.unwrap().accepted, 10);
        assert_eq!(
            count(&ob, "SELECT count(*) FROM outbox_keys").await,
            10,
            "settled"
        );
        // Settled keys, unsettled keys (10..14) and a key repeated inside the batch.
        assert_eq!(
            ob.append(&(10..14).map(vital).collect::<Vec<_>>(), false)
                .await
                .unwrap()
                .accepted,
            4
        );
        let mut mixed: Vec<_> = (0..16).map(vital).collect();
        mixed.push(vital(15));
        assert_eq!(
            ob.append(&mixed, false).await.unwrap(),
            AppendOutcome {
                accepted: 2,
                duplicates: 15
            }
        );
        ob.close().await;
        drop(ob);

        let ob = open().await;
        assert_eq!(
            ob.append(&(0..16).map(vital).collect::<Vec<_>>(), false)
                .await
                .unwrap()
                .duplicates,
            16
        );
        let rows = ob.read_after(0, 100).await.unwrap();
        assert_eq!(rows.len(), 16);
        assert!(rows.windows(2).all(|w| w[0].sequence < w[1].sequence));
        // Acknowledged with no retention: the rows go, and a later message with the same key is new again.
        let through = rows[11].sequence;
        assert_eq!(ob.acknowledge(through, &[]).await.unwrap(), 12);
        assert_eq!(ob.append(&[vital(3)], false).await.unwrap().accepted, 1);
        // The next settle removes the stale keys: one `outbox_keys` row per remaining row.
        ob.append(&(20..30).map(vital).collect::<Vec<_>>(), false)
            .await
            .unwrap();
        assert_eq!(
            count(&ob, "SELECT count(*) FROM outbox_keys").await,
            count(&ob, "SELECT count(*) FROM outbox").await
        );
        assert_eq!(ob.append(&[vital(3)], false).await.unwrap().duplicates, 1);
    }

    /// Two different keys with the same digest are both stored and both still recognised: the digest only finds
    /// candidates, the full key decides.
    #[tokio::test]
    async fn digest_collision_keeps_both_events() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 100 << 20, 0.9)
            .await
            .unwrap()
            .with_settle_rows(1);
        let a = vital(1);
        let mut b = vital(2);
        b.idempotency_key = "collides-with-k1".into();
        assert_eq!(
            ob.append(std::slice::from_ref(&a), false)
                .await
                .unwrap()
                .accepted,
            1
        );
        let seq_a = ob.read_after(0, 1).await.unwrap()[0].sequence;
        // Make `a` also findable under `b`'s digest, as if SHA-256's first 8 bytes of both keys were equal.
        sqlx::query("INSERT INTO outbox_keys (digest, seq) VALUES (?, ?)")
            .bind(key_digest(&b.idempotency_key))
            .bind(i64::try_from(seq_a).unwrap())
            .execute(&ob.pool)
            .await
            .unwrap();
        assert_eq!(
            ob.append(&[b.clone()], false).await.unwrap().accepted,
            1,
            "a different key under the same digest is a new event"
        );
        assert_eq!(
            count(&ob, "SELECT count(*) FROM outbox_keys WHERE digest = (SELECT digest FROM outbox_keys WHERE seq = 2)")
                .await,
            2,
            "both rows are indexed under the shared digest"
        );
        assert_eq!(
            ob.append(&[a, b], false).await.unwrap(),
            AppendOutcome {
                accepted: 0,
                duplicates: 2
            }
        );
        let keys: Vec<String> = ob
            .read_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.idempotency_key)
            .collect();
        assert_eq!(keys, ["k1", "collides-with-k1"]);
    }
}
