//! Storage of topic-based subscriptions (migration 0006): the subscriptions with their delivery state, their
//! numbered events, and the per-patient NEWS2 levels the NEWS2 topic compares against.
//!
//! [`record_sqlite`] / [`record_postgres`] run inside the ingest transaction (one call per backend in
//! `sqlite.rs` / `postgres.rs`): a topic event is committed together with the synced data that caused it, or not
//! at all, so a crash or restart of the cloud cannot lose one. Each subscription's counter
//! (`events_since_start`) is incremented by an `UPDATE … RETURNING` in that transaction; the row lock it takes
//! serializes concurrent ingests touching the same subscription, so event numbers are gap-free and committed in
//! order. Subscriptions are always updated in id order, so two ingests cannot deadlock on them.

use sqlx::{Postgres, Sqlite, Transaction};
use wardwatch_proto::v1::edge_event::Payload;

use super::{IngestItem, StorageError, Store};
use crate::subscriptions::topics::{self, Topic, Trigger};

/// A stored subscription with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    /// Logical id.
    pub id: String,
    /// The API client that created it.
    pub client_id: String,
    /// Topic id (`Topic::id`).
    pub topic: String,
    /// `backport-filter-criteria` as given.
    pub filters: Vec<String>,
    /// Patient filter (MRN).
    pub filter_patient: Option<String>,
    /// Ward filter.
    pub filter_ward: Option<String>,
    /// Event filter (infusion event code, NEWS2 level).
    pub filter_event: Option<String>,
    /// Reason.
    pub reason: String,
    /// Endpoint URL.
    pub endpoint: String,
    /// Headers sent with every notification (`Name: value`).
    pub headers: Vec<String>,
    /// `empty`, `id-only` or `full-resource`.
    pub content: String,
    /// Heartbeat period, seconds (0: none).
    pub heartbeat_secs: i64,
    /// Timeout of one delivery attempt, seconds.
    pub timeout_secs: i64,
    /// Most events per notification.
    pub max_count: i64,
    /// When the subscription ends, Unix ms.
    pub end_ms: Option<i64>,
    /// `requested`, `active`, `error` or `off`.
    pub status: String,
    /// Last delivery error.
    pub error: Option<String>,
    /// Highest event number assigned.
    pub events_since_start: i64,
    /// Highest event number the endpoint acknowledged.
    pub delivered_through: i64,
    /// Whether the handshake succeeded.
    pub handshake_done: bool,
    /// Consecutive failed attempts.
    pub failures: i64,
    /// Earliest next attempt, Unix ms.
    pub next_attempt_ms: i64,
    /// Last successful delivery of anything, Unix ms (heartbeats count from it).
    pub last_sent_ms: i64,
    /// Created, Unix ms.
    pub created_at_ms: i64,
}

/// One recorded event of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEventRow {
    /// Its number (1, 2, ...).
    pub event_number: i64,
    /// Edge that synced the triggering event.
    pub edge_id: String,
    /// Its sequence.
    pub sequence: i64,
    /// Focus resource type.
    pub focus_type: String,
    /// Focus resource id.
    pub focus_id: String,
    /// Patient MRN, if any.
    pub patient_id: Option<String>,
    /// When it happened, Unix ms.
    pub occurred_at_ms: i64,
}

macro_rules! sub_select {
    () => {
        "SELECT id, client_id, topic, filters, filter_patient, filter_ward, filter_event, reason, \
    endpoint, headers, content, heartbeat_secs, timeout_secs, max_count, end_ms, status, error, events_since_start, \
    delivered_through, handshake_done, failures, next_attempt_ms, last_sent_ms, created_at_ms FROM subscriptions"
    };
}

macro_rules! sub_from_row {
    ($r:expr) => {{
        use sqlx::Row;
        let r = $r;
        let json_list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
        SubscriptionRow {
            id: r.try_get(0)?,
            client_id: r.try_get(1)?,
            topic: r.try_get(2)?,
            filters: json_list(r.try_get(3)?),
            filter_patient: r.try_get(4)?,
            filter_ward: r.try_get(5)?,
            filter_event: r.try_get(6)?,
            reason: r.try_get(7)?,
            endpoint: r.try_get(8)?,
            headers: json_list(r.try_get(9)?),
            content: r.try_get(10)?,
            heartbeat_secs: r.try_get(11)?,
            timeout_secs: r.try_get(12)?,
            max_count: r.try_get(13)?,
            end_ms: r.try_get(14)?,
            status: r.try_get(15)?,
            error: r.try_get(16)?,
            events_since_start: r.try_get(17)?,
            delivered_through: r.try_get(18)?,
            handshake_done: r.try_get::<i64, _>(19)? != 0,
            failures: r.try_get(20)?,
            next_attempt_ms: r.try_get(21)?,
            last_sent_ms: r.try_get(22)?,
            created_at_ms: r.try_get(23)?,
        }
    }};
}

macro_rules! event_from_row {
    ($r:expr) => {{
        use sqlx::Row;
        let r = $r;
        SubscriptionEventRow {
            event_number: r.try_get(0)?,
            edge_id: r.try_get(1)?,
            sequence: r.try_get(2)?,
            focus_type: r.try_get(3)?,
            focus_id: r.try_get(4)?,
            patient_id: r.try_get(5)?,
            occurred_at_ms: r.try_get(6)?,
        }
    }};
}

/// The body of [`record_sqlite`] and [`record_postgres`]: the same SQL on both.
macro_rules! record_impl {
    ($tx:ident, $edge_id:expr, $fresh:expr, $now:expr, $patient_lock:expr) => {{
        let mut triggers: Vec<(u64, Trigger)> = $fresh
            .iter()
            .flat_map(|(it, p)| {
                topics::triggers($edge_id, it.sequence, p)
                    .into_iter()
                    .map(move |t| (it.sequence, t))
            })
            .collect();
        if triggers.is_empty() {
            return Ok(());
        }
        // Lock order, the same in every ingest: patients (NEWS2 levels) by MRN, then subscriptions by id. Two
        // batches stored concurrently therefore cannot deadlock.
        triggers.sort_by(|a, b| {
            let key = |t: &(u64, Trigger)| {
                (t.1.topic == Topic::News2Response).then(|| t.1.patient.clone())
            };
            key(b).is_some().cmp(&key(a).is_some()).then(key(a).cmp(&key(b))).then(a.0.cmp(&b.0))
        });
        let subs: Vec<(String, String, Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT id, topic, filter_patient, filter_ward, filter_event FROM subscriptions
             WHERE status <> 'off' ORDER BY id",
        )
        .fetch_all(&mut **$tx)
        .await?;
        if subs.is_empty() {
            return Ok(());
        }
        let news2_subscribed = subs.iter().any(|s| s.1 == Topic::News2Response.id());
        let mut fired: Vec<(u64, Trigger)> = Vec::with_capacity(triggers.len());
        for (seq, t) in triggers {
            if t.topic != Topic::News2Response {
                fired.push((seq, t));
                continue;
            }
            let Some(patient) = t.patient.clone().filter(|_| news2_subscribed) else {
                continue;
            };
            let level = t.news2_level.unwrap_or(0);
            let lock: Option<&str> = $patient_lock;
            if let Some(sql) = lock {
                sqlx::query(sql).bind(&patient).execute(&mut **$tx).await?;
            }
            let prev: Option<(i64, i64)> = sqlx::query_as(
                "SELECT level, computed_at_ms FROM subscription_news2_levels WHERE patient_id = $1",
            )
            .bind(&patient)
            .fetch_optional(&mut **$tx)
            .await?;
            if prev.is_some_and(|(_, at)| at > t.occurred_at_ms) {
                continue; // an older score arriving late changes nothing
            }
            sqlx::query(
                "INSERT INTO subscription_news2_levels (patient_id, level, computed_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (patient_id) DO UPDATE SET level = excluded.level, computed_at_ms = excluded.computed_at_ms",
            )
            .bind(&patient)
            .bind(level)
            .bind(t.occurred_at_ms)
            .execute(&mut **$tx)
            .await?;
            if level >= 1 && level > prev.map_or(0, |p| p.0) {
                fired.push((seq, t));
            }
        }
        fired.sort_by_key(|(seq, _)| *seq);
        for (id, topic, fp, fw, fe) in &subs {
            let mine: Vec<&(u64, Trigger)> = fired
                .iter()
                .filter(|(_, t)| {
                    t.topic.id() == topic
                        && topics::filters_pass(t, fp.as_deref(), fw.as_deref(), fe.as_deref())
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            let n = i64::try_from(mine.len()).unwrap_or(i64::MAX);
            let last: Option<i64> = sqlx::query_scalar(
                "UPDATE subscriptions SET events_since_start = events_since_start + $1
                 WHERE id = $2 AND status <> 'off' RETURNING events_since_start",
            )
            .bind(n)
            .bind(id)
            .fetch_optional(&mut **$tx)
            .await?;
            let Some(last) = last else { continue };
            for ((seq, t), number) in mine.into_iter().zip(last - n + 1..) {
                sqlx::query(
                    "INSERT INTO subscription_events (subscription_id, event_number, edge_id, sequence, focus_type,
                         focus_id, patient_id, occurred_at_ms, recorded_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(id)
                .bind(number)
                .bind($edge_id)
                .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
                .bind(t.focus_type)
                .bind(&t.focus_id)
                .bind(t.patient.as_deref())
                .bind(t.occurred_at_ms)
                .bind($now)
                .execute(&mut **$tx)
                .await?;
            }
        }
        Ok(())
    }};
}

/// Records the topic events of freshly stored events, inside the SQLite ingest transaction.
pub(super) async fn record_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    edge_id: &str,
    fresh: &[(&IngestItem, &Payload)],
    now: i64,
) -> Result<(), StorageError> {
    // SQLite has one writer at a time: no lock needed.
    record_impl!(tx, edge_id, fresh, now, None)
}

/// Records the topic events of freshly stored events, inside the PostgreSQL ingest transaction.
pub(super) async fn record_postgres(
    tx: &mut Transaction<'_, Postgres>,
    edge_id: &str,
    fresh: &[(&IngestItem, &Payload)],
    now: i64,
) -> Result<(), StorageError> {
    // Concurrent ingests read and update one patient's NEWS2 level one after the other (a transaction-scoped
    // advisory lock per patient), so one rise fires once.
    record_impl!(
        tx,
        edge_id,
        fresh,
        now,
        Some("SELECT pg_advisory_xact_lock(hashtext('wardwatch-news2:' || $1))")
    )
}

/// Runs `$body` with `$p` bound to the pool of either backend.
macro_rules! on_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match $self {
            Store::Sqlite($p) => $body,
            Store::Postgres($p) => $body,
        }
    };
}

impl Store {
    /// Stores a new subscription.
    pub async fn create_subscription(&self, s: &SubscriptionRow) -> Result<(), StorageError> {
        let filters = serde_json::to_string(&s.filters).unwrap_or_else(|_| "[]".into());
        let headers = serde_json::to_string(&s.headers).unwrap_or_else(|_| "[]".into());
        let sql = "INSERT INTO subscriptions (id, client_id, topic, filters, filter_patient, filter_ward, filter_event,
                reason, endpoint, headers, content, heartbeat_secs, timeout_secs, max_count, end_ms, status, error,
                events_since_start, delivered_through, handshake_done, failures, next_attempt_ms, last_sent_ms,
                created_at_ms)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                $22, $23, $24)";
        on_pool!(self, p => {
            sqlx::query(sql)
                .bind(&s.id)
                .bind(&s.client_id)
                .bind(&s.topic)
                .bind(&filters)
                .bind(&s.filter_patient)
                .bind(&s.filter_ward)
                .bind(&s.filter_event)
                .bind(&s.reason)
                .bind(&s.endpoint)
                .bind(&headers)
                .bind(&s.content)
                .bind(s.heartbeat_secs)
                .bind(s.timeout_secs)
                .bind(s.max_count)
                .bind(s.end_ms)
                .bind(&s.status)
                .bind(&s.error)
                .bind(s.events_since_start)
                .bind(s.delivered_through)
                .bind(i64::from(s.handshake_done))
                .bind(s.failures)
                .bind(s.next_attempt_ms)
                .bind(s.last_sent_ms)
                .bind(s.created_at_ms)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Reads one subscription.
    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>, StorageError> {
        const SQL: &str = concat!(sub_select!(), " WHERE id = $1");
        Ok(on_pool!(self, p => {
            match sqlx::query(SQL).bind(id).fetch_optional(p).await? {
                Some(r) => Some(sub_from_row!(&r)),
                None => None,
            }
        }))
    }

    /// Deletes a subscription and its events; `false` if there was none. Once no NEWS2 subscription is left, the
    /// NEWS2 levels are forgotten (they are only kept up to date while one exists).
    pub async fn delete_subscription(&self, id: &str) -> Result<bool, StorageError> {
        Ok(on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // NEWS2 levels first, then the subscription: the lock order of the ingest transaction.
            sqlx::query(
                "DELETE FROM subscription_news2_levels WHERE NOT EXISTS (SELECT 1 FROM subscriptions
                     WHERE topic = $1 AND status <> 'off' AND id <> $2)",
            )
            .bind(Topic::News2Response.id())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM subscription_events WHERE subscription_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n > 0
        }))
    }

    /// Events `from..=until` of a subscription, in order, at most `limit`.
    pub async fn subscription_events(
        &self,
        id: &str,
        from: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<SubscriptionEventRow>, StorageError> {
        let sql = "SELECT event_number, edge_id, sequence, focus_type, focus_id, patient_id, occurred_at_ms
                   FROM subscription_events WHERE subscription_id = $1 AND event_number >= $2 AND event_number <= $3
                   ORDER BY event_number LIMIT $4";
        Ok(on_pool!(self, p => {
            let rows = sqlx::query(sql)
                .bind(id)
                .bind(from)
                .bind(until)
                .bind(limit)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(event_from_row!(r));
            }
            out
        }))
    }

    /// Ids of subscriptions that have something to do at `now`: a handshake, undelivered events, a heartbeat or
    /// their end. Subscriptions that are `off` are left alone.
    pub async fn due_subscriptions(&self, now: i64) -> Result<Vec<String>, StorageError> {
        let sql =
            "SELECT id FROM subscriptions WHERE status <> 'off' AND next_attempt_ms <= $1 AND (
                handshake_done = 0 OR events_since_start > delivered_through
                OR (heartbeat_secs > 0 AND last_sent_ms + heartbeat_secs * 1000 <= $1)
                OR (end_ms IS NOT NULL AND end_ms <= $1))
            ORDER BY next_attempt_ms";
        Ok(on_pool!(self, p => sqlx::query_scalar(sql).bind(now).fetch_all(p).await?))
    }

    /// Records a successful delivery (2xx): active, handshake done, failures reset, delivered through `through`
    /// (never lowered).
    pub async fn subscription_delivered(
        &self,
        id: &str,
        through: i64,
        now: i64,
    ) -> Result<(), StorageError> {
        let sql = "UPDATE subscriptions SET status = 'active', handshake_done = 1, failures = 0, error = NULL,
                last_sent_ms = $2, next_attempt_ms = $2,
                delivered_through = CASE WHEN $3 > delivered_through THEN $3 ELSE delivered_through END
            WHERE id = $1 AND status <> 'off'";
        on_pool!(self, p => {
            sqlx::query(sql).bind(id).bind(now).bind(through).execute(p).await?;
        });
        Ok(())
    }

    /// Records a failed delivery: status `error`, the reason, one more failure, the next attempt.
    pub async fn subscription_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StorageError> {
        let sql = "UPDATE subscriptions SET status = 'error', error = $2, failures = failures + 1,
                next_attempt_ms = $3 WHERE id = $1 AND status <> 'off'";
        let error: String = error.chars().take(1000).collect();
        on_pool!(self, p => {
            sqlx::query(sql).bind(id).bind(&error).bind(next_attempt_ms).execute(p).await?;
        });
        Ok(())
    }

    /// Turns a subscription off (its end passed), with the reason.
    pub async fn subscription_off(&self, id: &str, why: &str) -> Result<(), StorageError> {
        on_pool!(self, p => {
            sqlx::query("UPDATE subscriptions SET status = 'off', error = $2 WHERE id = $1")
                .bind(id)
                .bind(why)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Deletes delivered events recorded before `before_ms` (undelivered events are kept whatever their age).
    pub async fn prune_subscription_events(&self, before_ms: i64) -> Result<u64, StorageError> {
        let sql = "DELETE FROM subscription_events WHERE recorded_at_ms < $1 AND event_number <=
                (SELECT delivered_through FROM subscriptions s WHERE s.id = subscription_events.subscription_id)";
        Ok(on_pool!(self, p => sqlx::query(sql).bind(before_ms).execute(p).await?.rows_affected()))
    }
}

impl Store {
    /// How many subscriptions `client_id` holds.
    pub async fn count_client_subscriptions(&self, client_id: &str) -> Result<i64, StorageError> {
        let sql = "SELECT COUNT(*) FROM subscriptions WHERE client_id = $1";
        Ok(on_pool!(self, p => sqlx::query_scalar(sql).bind(client_id).fetch_one(p).await?))
    }
}
