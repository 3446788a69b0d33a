//! The MQTT dead-letter table: messages (or single samples) the edge refused, kept for inspection so a poison
//! message can be acknowledged without being lost silently.
//!
//! One SQLite file, [`FILE_NAME`] in the edge data directory, beside the outbox and separate from it (the outbox's
//! disk budget is for patient data waiting for the cloud, not for garbage). WAL mode with `synchronous=FULL`: a
//! row is durable once [`DeadLetterStore::record`] returned, which is when the source acknowledges the message.
//! The table holds at most `max_rows` rows; each insert deletes the oldest beyond that in the same transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// File name of the dead-letter database in the edge data directory.
pub const FILE_NAME: &str = "mqtt-dead-letter.sqlite";

/// Payload bytes kept per row; longer payloads are truncated (their full length is recorded).
pub const MAX_STORED_PAYLOAD: usize = 64 << 10;

/// A row about to be written.
#[derive(Debug, Clone, Copy)]
pub struct NewDeadLetter<'a> {
    /// MQTT topic.
    pub topic: &'a str,
    /// The payload as received (truncated to [`MAX_STORED_PAYLOAD`] when stored).
    pub payload: &'a [u8],
    /// Index of the refused sample, or `None` when the whole message was refused.
    pub sample_index: Option<usize>,
    /// Stable reason code (`malformed_json`, `schema_violation`, …, or a `REJECT_REASON_*` name).
    pub reason: &'a str,
    /// Human-readable detail.
    pub detail: &'a str,
    /// When the message was received, Unix ms.
    pub received_at_unix_ms: i64,
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id, increasing.
    pub id: i64,
    /// When the message was received, Unix ms.
    pub received_at_unix_ms: i64,
    /// MQTT topic.
    pub topic: String,
    /// Payload, truncated to [`MAX_STORED_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
    /// The payload's full length in bytes.
    pub payload_bytes: u64,
    /// Index of the refused sample, or `None` for the whole message.
    pub sample_index: Option<u64>,
    /// Reason code.
    pub reason: String,
    /// Detail.
    pub detail: String,
}

/// The dead-letter database.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    /// Pool over the one file.
    pool: SqlitePool,
    /// Rows kept.
    max_rows: u64,
}

impl DeadLetterStore {
    /// Opens (creating if needed) `dir/`[`FILE_NAME`], keeping at most `max_rows` rows.
    pub async fn open(dir: &Path, max_rows: u64) -> Result<Self, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(dir.join(FILE_NAME))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS mqtt_dead_letter (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                received_at_ms INTEGER NOT NULL,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                payload_bytes INTEGER NOT NULL,
                sample_index INTEGER,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool, max_rows })
    }

    /// Writes `rows` in one transaction and deletes the oldest rows beyond the bound. Returns after commit.
    pub async fn record(&self, rows: &[NewDeadLetter<'_>]) -> Result<u64, sqlx::Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        for r in rows {
            let kept = &r.payload[..r.payload.len().min(MAX_STORED_PAYLOAD)];
            sqlx::query(
                "INSERT INTO mqtt_dead_letter
                    (received_at_ms, topic, payload, payload_bytes, sample_index, reason, detail)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.received_at_unix_ms)
            .bind(r.topic)
            .bind(kept)
            .bind(i64::try_from(r.payload.len()).unwrap_or(i64::MAX))
            .bind(r.sample_index.map(|i| i64::try_from(i).unwrap_or(i64::MAX)))
            .bind(r.reason)
            .bind(r.detail)
            .execute(&mut *tx)
            .await?;
        }
        // Ids are AUTOINCREMENT (never reused) and only the oldest are ever deleted, so the newest `max_rows` ids
        // are the `max_rows` highest.
        sqlx::query(
            "DELETE FROM mqtt_dead_letter WHERE id <= (SELECT max(id) FROM mqtt_dead_letter) - ?",
        )
        .bind(i64::try_from(self.max_rows).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Up to `limit` rows, newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<DeadLetter>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, received_at_ms, topic, payload, payload_bytes, sample_index, reason, detail
             FROM mqtt_dead_letter ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let bytes: i64 = row.try_get(4)?;
                let index: Option<i64> = row.try_get(5)?;
                Ok(DeadLetter {
                    id: row.try_get(0)?,
                    received_at_unix_ms: row.try_get(1)?,
                    topic: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    payload_bytes: u64::try_from(bytes).unwrap_or(0),
                    sample_index: index.and_then(|i| u64::try_from(i).ok()),
                    reason: row.try_get(6)?,
                    detail: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Rows stored.
    pub async fn count(&self) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mqtt_dead_letter")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Closes the database cleanly.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mqtt_dead_letter_is_bounded_truncated_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = DeadLetterStore::open(dir.path(), 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let big = vec![b'x'; MAX_STORED_PAYLOAD + 10];
        for i in 0..5 {
            let detail = format!("d{i}");
            let row = NewDeadLetter {
                topic: "wardwatch/v1/7A/1/mon/vitals",
                payload: if i == 4 { &big } else { b"{}" },
                sample_index: (i % 2 == 0).then_some(i),
                reason: "malformed_json",
                detail: &detail,
                received_at_unix_ms: 1_700_000_000_000 + i as i64,
            };
            store.record(&[row]).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(store.count().await.unwrap_or_else(|e| panic!("{e}")), 3);
        store.close().await;
        let store = DeadLetterStore::open(dir.path(), 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let rows = store.recent(10).await.unwrap_or_else(|e| panic!("{e}"));
        let details: Vec<&str> = rows.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(
            details,
            vec!["d4", "d3", "d2"],
            "newest kept, oldest deleted"
        );
        assert_eq!(rows[0].payload.len(), MAX_STORED_PAYLOAD);
        assert_eq!(rows[0].payload_bytes, (MAX_STORED_PAYLOAD + 10) as u64);
        assert_eq!(rows[0].sample_index, Some(4));
        assert_eq!(rows[1].sample_index, None);
    }
}
