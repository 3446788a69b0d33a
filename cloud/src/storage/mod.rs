//! Cloud storage on sqlx: SQLite (embedded default, one file) or PostgreSQL (production), same schema and the
//! same behaviour, each with its own migrations (`cloud/migrations/{sqlite,postgres}`).
//!
//! Exactly-once: every synced event first claims its `(edge_id, sequence)` in `sync_ledger` (INSERT .. ON CONFLICT
//! DO NOTHING RETURNING sequence; on PostgreSQL first a plain INSERT, retried in that form only when it hits a
//! stored sequence, see `postgres::ingest`). Only events whose claim succeeded are written to the data tables, in the same
//! transaction; a resend claims nothing and is reported as replayed. Rejected events are claimed too (with their
//! reason), so a resend of a bad event is not stored either. The idempotency key is recorded on the ledger row but
//! is not a uniqueness constraint here: a source re-sending one message is collapsed to one sequence by the edge
//! outbox, and the ledger's sequence keys arrive in ascending order, which keeps the claim cheap (migration 0002,
//! docs/benchmarks.md).

mod events;
mod ledger;
mod nodelay;
mod partitions;
mod postgres;
mod sqlite;
mod stored_keys;
mod subscriptions;

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{DeviceInfo, VitalSign};
use wardwatch_proto::validate::Rejection;

pub use subscriptions::{SubscriptionEventRow, SubscriptionRow};

pub use events::{
    ChannelRow, DeviceQuery, EventQuery, EventRow, GroupKind, GroupQuery, INFUSION_INFUSED_MDC,
    INFUSION_RATE_MDC, INFUSION_REMAINING_MDC, OrderSummary, alarm_kind_code, alarm_state_code,
    infusion_state_code,
};
pub use ledger::EarlierRejection;
pub use stored_keys::StoredKeys;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL is not one we support.
    #[error("unsupported database URL {0:?}")]
    Url(String),
    /// A stored row cannot be read back (e.g. a payload that does not decode).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A maintenance request outside what the store allows (e.g. too many partitions at once).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// One synced event after validation: either a payload to store or the reason it was refused.
#[derive(Debug)]
pub struct IngestItem {
    /// The edge's sequence.
    pub sequence: u64,
    /// The event's idempotency key.
    pub idempotency_key: String,
    /// What to store, or why not.
    pub outcome: Result<Payload, Rejection>,
}

/// What an ingest did.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// Events stored now.
    pub stored: u32,
    /// Sequences that were already in the ledger (replays): not stored again.
    pub replayed: Vec<u64>,
    /// Per item (same order as the input): whether this item claimed its ledger entry now. An item that did
    /// not is a replay, or (for an out-of-order duplicate sequence) a conflict with another item.
    pub claimed: Vec<bool>,
}

/// A stored vital sign, as the search reads it.
#[derive(Debug, Clone)]
pub struct VitalRow {
    /// Storage order; the pagination key.
    pub id: i64,
    /// Edge that sent it.
    pub edge_id: String,
    /// Its sequence on that edge (with the edge, its lineage).
    pub sequence: i64,
    /// Patient MRN.
    pub patient_id: String,
    /// Ward.
    pub ward: String,
    /// Bed.
    pub bed: String,
    /// Device id.
    pub device_id: String,
    /// MDC code.
    pub metric_mdc: i64,
    /// LOINC code.
    pub loinc: String,
    /// Numeric value, if numeric.
    pub value: Option<f64>,
    /// Enumerated value, if enumerated.
    pub enumerated: Option<String>,
    /// UCUM unit.
    pub unit: String,
    /// Compound components as JSON `[[mdc, value], ...]`.
    pub components: Option<String>,
    /// Quality flags as a bitmask (bit n = `QualityFlag` value n).
    pub quality: i64,
    /// When measured.
    pub measured_at_ms: i64,
    /// When stored.
    pub received_at_ms: i64,
    /// The encounter's visit number (wire `VitalSign.encounter`, migration 0011), `None` when not known: becomes
    /// `Observation.encounter` and is what `encounter:identifier` searches.
    pub encounter: Option<String>,
    /// Who issued that visit number (its assigning authority), `None` when not given.
    pub encounter_authority: Option<String>,
}

/// A stored device (latest description).
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Device id.
    pub device_id: String,
    /// Edge that reported it.
    pub edge_id: String,
    /// `DeviceKind` value.
    pub kind: i64,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// UDI carrier.
    pub udi: String,
    /// Ward.
    pub ward: String,
    /// Bed.
    pub bed: String,
    /// `OperationalState` value.
    pub state: i64,
    /// When reported.
    pub reported_at_ms: i64,
}

/// How a search filters on code.
#[derive(Debug, Clone, PartialEq)]
pub enum CodeFilter {
    /// A LOINC code.
    Loinc(String),
    /// An MDC code.
    Mdc(i64),
}

/// A vital-sign search. Results are `limit` at most, in `sort` order, after the cursor if set.
#[derive(Debug, Clone, Default)]
pub struct VitalQuery {
    /// Only this patient.
    pub patient: Option<String>,
    /// Any of these codes (empty: all).
    pub codes: Vec<CodeFilter>,
    /// Only samples from this device.
    pub device: Option<String>,
    /// Only samples of this encounter (visit number; FHIR `encounter:identifier`).
    pub encounter: Option<String>,
    /// Only samples measured in this range (FHIR `date` on `effectiveDateTime`).
    pub measured: TimeRange,
    /// Only samples stored in this range (FHIR `_lastUpdated`).
    pub received: TimeRange,
    /// Result order.
    pub sort: VitalSort,
    /// Keyset cursor for [`VitalSort::Newest`]: only ids below it.
    pub before_id: Option<i64>,
    /// Keyset cursor for the date orders: only rows after `(measured_at_ms, id)` in that order.
    pub after_date: Option<(i64, i64)>,
    /// Page size.
    pub limit: u32,
}

/// A half-open time range in Unix ms; `None` bounds are open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive lower bound.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound.
    pub before_ms: Option<i64>,
}

impl TimeRange {
    /// Narrows the range to also satisfy `other`.
    pub fn intersect(&mut self, other: TimeRange) {
        if let Some(f) = other.from_ms {
            self.from_ms = Some(self.from_ms.map_or(f, |x| x.max(f)));
        }
        if let Some(b) = other.before_ms {
            self.before_ms = Some(self.before_ms.map_or(b, |x| x.min(b)));
        }
    }
}

/// The order of a vital-sign search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VitalSort {
    /// Most recently stored first (storage id descending); stable while new data arrives. The default of a search
    /// across patients (served by the `id` index); one patient's search defaults to [`VitalSort::DateDesc`], which
    /// the patient time index serves (cloud/src/api.rs, migration 0013).
    #[default]
    Newest,
    /// Latest measurement first (`_sort=-date`), ties by id.
    DateDesc,
    /// Earliest measurement first (`_sort=date`), ties by id.
    DateAsc,
}

/// Appends the WHERE clause of a vital-sign search (without cursor, order or limit) to a query builder of
/// either backend. A macro because sqlx's bind bounds differ per database.
/// `patients` is the [`PatientScope::OneOf`] list of an encounter search (empty: no such narrowing).
macro_rules! push_vital_filters {
    ($qb:expr, $q:expr, $patients:expr) => {{
        let qb = $qb;
        let q: &$crate::storage::VitalQuery = $q;
        let patients: &[String] = $patients;
        qb.push(" FROM vital_signs WHERE 1=1");
        if let Some(p) = &q.patient {
            qb.push(" AND patient_id = ").push_bind(p.clone());
        }
        if !patients.is_empty() {
            // One patient (the usual case) becomes `patient_id = $n`, which the patient indexes serve in order.
            qb.push(" AND patient_id IN (");
            let mut list = qb.separated(", ");
            for p in patients {
                list.push_bind(p.clone());
            }
            qb.push(")");
        }
        if let Some(d) = &q.device {
            qb.push(" AND device_id = ").push_bind(d.clone());
        }
        if let Some(e) = &q.encounter {
            qb.push(" AND encounter = ").push_bind(e.clone());
        }
        if !q.codes.is_empty() {
            qb.push(" AND (");
            for (i, c) in q.codes.iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                match c {
                    $crate::storage::CodeFilter::Loinc(l) => {
                        qb.push("loinc = ").push_bind(l.clone())
                    }
                    $crate::storage::CodeFilter::Mdc(m) => qb
                        .push("(loinc = ")
                        .push_bind($crate::storage::loinc_of_mdc(*m))
                        .push(" AND metric_mdc = ")
                        .push_bind(*m)
                        .push(")"),
                };
            }
            qb.push(")");
        }
        for (col, r) in [
            ("measured_at_ms", q.measured),
            ("received_at_ms", q.received),
        ] {
            if let Some(f) = r.from_ms {
                qb.push(format_args!(" AND {col} >= ")).push_bind(f);
            }
            if let Some(b) = r.before_ms {
                qb.push(format_args!(" AND {col} < ")).push_bind(b);
            }
        }
    }};
}
pub(crate) use push_vital_filters;

/// Appends cursor, order and limit of a vital-sign search.
macro_rules! push_vital_page {
    ($qb:expr, $q:expr) => {{
        let qb = $qb;
        let q: &$crate::storage::VitalQuery = $q;
        match q.sort {
            $crate::storage::VitalSort::Newest => {
                if let Some(b) = q.before_id {
                    qb.push(" AND id < ").push_bind(b);
                }
                qb.push(" ORDER BY id DESC");
            }
            $crate::storage::VitalSort::DateDesc => {
                if let Some((ms, id)) = q.after_date {
                    qb.push(" AND (measured_at_ms < ")
                        .push_bind(ms)
                        .push(" OR (measured_at_ms = ")
                        .push_bind(ms)
                        .push(" AND id < ")
                        .push_bind(id)
                        .push("))");
                }
                qb.push(" ORDER BY measured_at_ms DESC, id DESC");
            }
            $crate::storage::VitalSort::DateAsc => {
                if let Some((ms, id)) = q.after_date {
                    qb.push(" AND (measured_at_ms > ")
                        .push_bind(ms)
                        .push(" OR (measured_at_ms = ")
                        .push_bind(ms)
                        .push(" AND id > ")
                        .push_bind(id)
                        .push("))");
                }
                qb.push(" ORDER BY measured_at_ms ASC, id ASC");
            }
        }
        qb.push(" LIMIT ").push_bind(i64::from(q.limit));
    }};
}
pub(crate) use push_vital_page;

/// An audit record: who read which patient's data.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// When.
    pub at_ms: i64,
    /// Client id from the token.
    pub client_id: String,
    /// e.g. "search", "read".
    pub action: String,
    /// Resource type.
    pub resource_type: String,
    /// The query or id asked for.
    pub query: String,
    /// Patients whose data was returned (comma-separated MRNs; empty if none).
    pub patients: String,
    /// HTTP status returned.
    pub status: i32,
    /// Remote address.
    pub remote: String,
}

/// The database behind the cloud.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite file.
    Sqlite(SqlitePool),
    /// PostgreSQL server.
    Postgres(PgPool),
}

pub(crate) fn components_json(v: &VitalSign) -> Option<String> {
    if v.components.is_empty() {
        return None;
    }
    let parts: Vec<String> = v
        .components
        .iter()
        .map(|c| {
            format!(
                "[{},{}]",
                c.metric_mdc,
                serde_json::Number::from_f64(c.value).map_or("null".into(), |n| n.to_string())
            )
        })
        .collect();
    Some(format!("[{}]", parts.join(",")))
}

/// Which patients a vital-sign search may return, as far as its encounter decides.
enum PatientScope {
    /// The search names no encounter.
    Any,
    /// The encounter's patients (one, unless a visit number was reused for another patient).
    OneOf(Vec<String>),
    /// No stored vital sign has the encounter (or none of its patients is the searched patient).
    Nobody,
}

/// The distinct (visit number, assigning authority or "", patient) of vital signs that name their visit, sorted,
/// for the `encounters` table (migration 0012). Sorted so that concurrent batches of a stream insert new keys in
/// one order and cannot deadlock each other.
pub(crate) fn encounter_patients<'a>(
    vitals: impl Iterator<Item = &'a VitalSign>,
) -> Vec<(&'a str, &'a str, &'a str)> {
    let mut keys: Vec<_> = vitals
        .filter_map(|v| match encounter_columns(v) {
            (Some(visit), authority) => {
                Some((visit, authority.unwrap_or(""), v.patient_id.as_str()))
            }
            (None, _) => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The distinct (patient, LOINC code) pairs of vital signs, sorted, for the `patient_codes` table (migration 0013),
/// sorted for the same reason as [`encounter_patients`]. A metric without a LOINC code gives `""`.
pub(crate) fn patient_codes<'a>(
    vitals: impl Iterator<Item = &'a VitalSign>,
) -> Vec<(&'a str, &'static str)> {
    let mut keys: Vec<_> = vitals
        .map(|v| (v.patient_id.as_str(), loinc_of(v.metric_mdc)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The stored encounter columns of a vital sign: visit number and assigning authority, each `None` when empty
/// (not known, not given).
pub(crate) fn encounter_columns(v: &VitalSign) -> (Option<&str>, Option<&str>) {
    match &v.encounter {
        Some(e) if !e.visit_number.is_empty() => (
            Some(e.visit_number.as_str()),
            (!e.assigning_authority.is_empty()).then_some(e.assigning_authority.as_str()),
        ),
        _ => (None, None),
    }
}

pub(crate) fn quality_mask(v: &VitalSign) -> i64 {
    v.quality
        .iter()
        .filter(|q| (0..63).contains(*q))
        .fold(0i64, |m, q| m | (1i64 << q))
}

pub(crate) fn loinc_of(mdc: u32) -> &'static str {
    wardwatch_proto::metrics::by_mdc(mdc).map_or("", |m| m.loinc)
}

/// The LOINC code of an MDC code given as a search value ("" if none): searches by MDC code go through the
/// `patient_codes` catalog by LOINC (migration 0013) and filter on both `loinc` and `metric_mdc`.
pub(crate) fn loinc_of_mdc(mdc: i64) -> &'static str {
    u32::try_from(mdc).map_or("", loinc_of)
}

pub(crate) fn ward_bed(d: &DeviceInfo) -> (String, String) {
    d.location
        .as_ref()
        .map(|l| (l.ward.clone(), l.bed.clone()))
        .unwrap_or_default()
}

/// Ledger outcome codes.
pub(crate) const OUTCOME_STORED: i16 = 0;
pub(crate) const OUTCOME_REJECTED: i16 = 1;

pub(crate) fn event_kind(p: &Payload) -> &'static str {
    match p {
        Payload::Vital(_) => "vital",
        Payload::Infusion(_) => "infusion",
        Payload::Alarm(_) => "alarm",
        Payload::Risk(_) => "risk",
        Payload::Device(_) => "device",
        Payload::Spo2Scale(_) => "spo2_scale",
    }
}

impl Store {
    /// Connects to `url` and runs migrations. `sqlite://PATH` creates the file if missing.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            let store = Self::Sqlite(pool);
            store.backfill_event_index().await?;
            Ok(store)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let port = opts.get_port();
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(move |_conn, _meta| {
                    Box::pin(async move {
                        nodelay::set_on_connections_to(port);
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            partitions::ensure_days_around(&pool, wardwatch_proto::now_unix_ms()).await?;
            let store = Self::Postgres(pool);
            store.backfill_event_index().await?;
            Ok(store)
        } else {
            Err(StorageError::Url(url.to_string()))
        }
    }

    /// Creates the PostgreSQL day partitions of the Observations measured in `[from_ms, before_ms)`, before a
    /// backfill of old data (ingest creates only days near now; cloud/src/storage/partitions.rs). Days that
    /// already exist are left alone; rows of those days already in the default partition move into their day.
    /// SQLite is not partitioned: nothing to do.
    pub async fn prepare_observation_days(
        &self,
        from_ms: i64,
        before_ms: i64,
    ) -> Result<(), StorageError> {
        let Self::Postgres(pool) = self else {
            return Ok(());
        };
        if before_ms <= from_ms {
            return Ok(());
        }
        let (first, last) = (
            partitions::day_of(from_ms),
            partitions::day_of(before_ms - 1),
        );
        if last - first >= partitions::MAX_PREPARED_DAYS {
            return Err(StorageError::Invalid(format!(
                "{} days of Observation partitions asked for; at most {} at once",
                last - first + 1,
                partitions::MAX_PREPARED_DAYS
            )));
        }
        let days: Vec<i64> = (first..=last).collect();
        partitions::ensure_days(pool, &days).await
    }

    /// Which backend, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Records an edge registration (or refreshes its last-seen time).
    pub async fn upsert_edge(
        &self,
        edge_id: &str,
        identity: &str,
        wards: &[String],
    ) -> Result<(), StorageError> {
        let wards = serde_json::to_string(wards).unwrap_or_else(|_| "[]".into());
        let now = wardwatch_proto::now_unix_ms();
        let sql =
            "INSERT INTO edges (edge_id, identity_uri, wards, registered_at_ms, last_seen_at_ms)
                   VALUES ($1, $2, $3, $4, $4)
                   ON CONFLICT (edge_id) DO UPDATE SET identity_uri = excluded.identity_uri,
                       wards = excluded.wards, last_seen_at_ms = excluded.last_seen_at_ms";
        match self {
            Self::Sqlite(p) => {
                sqlx::query(sql)
                    .bind(edge_id)
                    .bind(identity)
                    .bind(&wards)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
            Self::Postgres(p) => {
                sqlx::query(sql)
                    .bind(edge_id)
                    .bind(identity)
                    .bind(&wards)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// The edge's acknowledged watermark (0 if none): every sequence up to it was processed (stored or rejected)
    /// and acknowledged in order. Sequences above it may be in the ledger too (a later batch committed before an
    /// earlier one failed); their resend is answered as a replay.
    pub async fn acked_through(&self, edge_id: &str) -> Result<u64, StorageError> {
        let sql = "SELECT acked_through FROM sync_watermarks WHERE edge_id = $1";
        let v: Option<i64> = match self {
            Self::Sqlite(p) => {
                sqlx::query_scalar(sql)
                    .bind(edge_id)
                    .fetch_optional(p)
                    .await?
            }
            Self::Postgres(p) => {
                sqlx::query_scalar(sql)
                    .bind(edge_id)
                    .fetch_optional(p)
                    .await?
            }
        };
        Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
    }

    /// Moves the edge's acknowledged watermark up to `through` (never down). Called in batch order, after each
    /// batch committed. Not durable at once on PostgreSQL (`synchronous_commit = off` for this one statement): a
    /// watermark lost in a crash only makes the edge resend batches the ledger answers as replays.
    pub async fn advance_acked(&self, edge_id: &str, through: u64) -> Result<(), StorageError> {
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        match self {
            Self::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO sync_watermarks (edge_id, acked_through) VALUES ($1, $2)
                     ON CONFLICT (edge_id) DO UPDATE SET acked_through = max(acked_through, excluded.acked_through)",
                )
                .bind(edge_id)
                .bind(through)
                .execute(p)
                .await?;
            }
            Self::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO sync_watermarks (edge_id, acked_through) VALUES ($1, $2)
                     ON CONFLICT (edge_id) DO UPDATE
                     SET acked_through = GREATEST(sync_watermarks.acked_through, excluded.acked_through)",
                )
                .bind(edge_id)
                .bind(through)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Stores a batch exactly once, in one transaction.
    pub async fn ingest(
        &self,
        edge_id: &str,
        items: &[IngestItem],
    ) -> Result<IngestOutcome, StorageError> {
        self.ingest_with(edge_id, items, &StoredKeys::default())
            .await
    }

    /// [`Store::ingest`], skipping the lookup-table keys `keys` knows to be stored and remembering the ones this
    /// batch committed ([`StoredKeys`]); the sync service keeps one `keys` for all its batches.
    pub async fn ingest_with(
        &self,
        edge_id: &str,
        items: &[IngestItem],
        keys: &StoredKeys,
    ) -> Result<IngestOutcome, StorageError> {
        match self {
            Self::Sqlite(p) => sqlite::ingest(p, edge_id, items, keys).await,
            Self::Postgres(p) => postgres::ingest(p, edge_id, items, keys).await,
        }
    }

    /// Searches vital signs.
    pub async fn search_vitals(&self, q: &VitalQuery) -> Result<Vec<VitalRow>, StorageError> {
        let patients = match self.encounter_scope(q).await? {
            PatientScope::Any => Vec::new(),
            PatientScope::OneOf(p) => p,
            PatientScope::Nobody => return Ok(Vec::new()),
        };
        let Some(q) = self.with_present_codes(q, &patients).await? else {
            return Ok(Vec::new());
        };
        let q: &VitalQuery = &q;
        match self {
            Self::Sqlite(p) => sqlite::search_vitals(p, q, &patients).await,
            Self::Postgres(p) => postgres::search_vitals(p, q, &patients).await,
        }
    }

    /// A search by patient (or stay) and code keeps only the codes that one of its patients has a sample of, from
    /// `patient_codes` (migration 0013), so that it does not read a patient's whole history through the time index
    /// looking for a code that is not there; `None` when no searched code is left (nothing can match). Other
    /// searches are returned as they are.
    async fn with_present_codes<'q>(
        &self,
        q: &'q VitalQuery,
        patients: &[String],
    ) -> Result<Option<Cow<'q, VitalQuery>>, StorageError> {
        if q.codes.is_empty() {
            return Ok(Some(Cow::Borrowed(q)));
        }
        let patients: Vec<&str> = match (&q.patient, patients.is_empty()) {
            (_, false) => patients.iter().map(String::as_str).collect(),
            (Some(p), true) => vec![p.as_str()],
            (None, true) => return Ok(Some(Cow::Borrowed(q))),
        };
        let sql = "SELECT loinc FROM patient_codes WHERE patient_id = $1";
        let mut present = HashSet::new();
        for p in patients {
            let codes: Vec<String> = match self {
                Self::Sqlite(pool) => sqlx::query_scalar(sql).bind(p).fetch_all(pool).await?,
                Self::Postgres(pool) => sqlx::query_scalar(sql).bind(p).fetch_all(pool).await?,
            };
            present.extend(codes);
        }
        let codes: Vec<CodeFilter> = q
            .codes
            .iter()
            .filter(|c| {
                present.contains(match c {
                    CodeFilter::Loinc(l) => l.as_str(),
                    CodeFilter::Mdc(m) => loinc_of_mdc(*m),
                })
            })
            .cloned()
            .collect();
        Ok(match codes.len() {
            0 => None,
            n if n == q.codes.len() => Some(Cow::Borrowed(q)),
            _ => Some(Cow::Owned(VitalQuery { codes, ..q.clone() })),
        })
    }

    /// The patients a vital-sign search is narrowed to by its encounter: the visit's patients from `encounters`
    /// (migration 0012), which lets the patient indexes serve an encounter search (there is no index on
    /// `vital_signs.encounter`).
    async fn encounter_scope(&self, q: &VitalQuery) -> Result<PatientScope, StorageError> {
        let Some(visit) = &q.encounter else {
            return Ok(PatientScope::Any);
        };
        let sql = "SELECT DISTINCT patient_id FROM encounters WHERE visit_number = $1 ORDER BY patient_id";
        let mut patients: Vec<String> = match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).bind(visit).fetch_all(p).await?,
            Self::Postgres(p) => sqlx::query_scalar(sql).bind(visit).fetch_all(p).await?,
        };
        if let Some(patient) = &q.patient {
            patients.retain(|p| p == patient);
        }
        Ok(if patients.is_empty() {
            PatientScope::Nobody
        } else {
            PatientScope::OneOf(patients)
        })
    }

    /// Reads the vital sign an edge synced under `sequence` (the FHIR Observation `<edge>.<sequence>`).
    pub async fn vital_by_lineage(
        &self,
        edge_id: &str,
        sequence: u64,
    ) -> Result<Option<VitalRow>, StorageError> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(None);
        };
        const SQL: &str = "SELECT id, edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, loinc, value, \
            enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter, encounter_authority \
            FROM vital_signs WHERE edge_id = $1 AND sequence = $2";
        Ok(match self {
            Self::Sqlite(p) => {
                let row = sqlx::query(SQL)
                    .bind(edge_id)
                    .bind(sequence)
                    .fetch_optional(p)
                    .await?;
                row.as_ref().map(vital_from_sqlite).transpose()?
            }
            Self::Postgres(p) => {
                let row = sqlx::query(SQL)
                    .bind(edge_id)
                    .bind(sequence)
                    .fetch_optional(p)
                    .await?;
                row.as_ref().map(vital_from_pg).transpose()?
            }
        })
    }

    /// How many vital signs match `q` (its cursor, order and limit are ignored): `_summary=count`.
    pub async fn count_vitals_matching(&self, q: &VitalQuery) -> Result<i64, StorageError> {
        let patients = match self.encounter_scope(q).await? {
            PatientScope::Any => Vec::new(),
            PatientScope::OneOf(p) => p,
            PatientScope::Nobody => return Ok(0),
        };
        let Some(q) = self.with_present_codes(q, &patients).await? else {
            return Ok(0);
        };
        let q: &VitalQuery = &q;
        match self {
            Self::Sqlite(p) => {
                let mut qb: sqlx::QueryBuilder<sqlx::Sqlite> =
                    sqlx::QueryBuilder::new("SELECT COUNT(*)");
                push_vital_filters!(&mut qb, q, &patients);
                Ok(qb.build_query_scalar().fetch_one(p).await?)
            }
            Self::Postgres(p) => {
                let mut qb: sqlx::QueryBuilder<sqlx::Postgres> =
                    sqlx::QueryBuilder::new("SELECT COUNT(*)");
                push_vital_filters!(&mut qb, q, &patients);
                Ok(qb.build_query_scalar().fetch_one(p).await?)
            }
        }
    }

    /// Reads one device.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRow>, StorageError> {
        match self {
            Self::Sqlite(p) => sqlite::device(p, device_id).await,
            Self::Postgres(p) => postgres::device(p, device_id).await,
        }
    }

    /// Number of stored vital signs (for tests and operators).
    pub async fn count_vitals(&self) -> Result<i64, StorageError> {
        let sql = "SELECT COUNT(*) FROM vital_signs";
        Ok(match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Self::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        })
    }

    /// Number of (edge, sequence) pairs that appear more than once among stored vital signs: must be 0.
    pub async fn count_duplicate_vitals(&self) -> Result<i64, StorageError> {
        let sql = "SELECT COUNT(*) FROM (SELECT edge_id, sequence FROM vital_signs GROUP BY edge_id, sequence HAVING COUNT(*) > 1) d";
        Ok(match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Self::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        })
    }

    /// Appends an audit record.
    pub async fn audit(&self, r: &AuditRecord) -> Result<(), StorageError> {
        let sql = "INSERT INTO audit_events (at_ms, client_id, action, resource_type, query, patients, status, remote)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(sql)
                    .bind(r.at_ms)
                    .bind(&r.client_id)
                    .bind(&r.action)
                    .bind(&r.resource_type)
                    .bind(&r.query)
                    .bind(&r.patients)
                    .bind(r.status)
                    .bind(&r.remote)
                    .execute($p)
                    .await
                    .map(|_| ())?
            };
        }
        match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        }
        Ok(())
    }

    /// Number of audit records for `client_id` (for tests and administrators).
    pub async fn audit_count(&self, client_id: &str) -> Result<i64, StorageError> {
        let sql = "SELECT COUNT(*) FROM audit_events WHERE client_id = $1";
        Ok(match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).bind(client_id).fetch_one(p).await?,
            Self::Postgres(p) => sqlx::query_scalar(sql).bind(client_id).fetch_one(p).await?,
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(p) => p.close().await,
            Self::Postgres(p) => p.close().await,
        }
    }
}

pub(crate) fn patient_ward(p: &Payload) -> (Option<String>, Option<String>) {
    let ward = |l: &Option<wardwatch_proto::v1::BedLocation>| l.as_ref().map(|l| l.ward.clone());
    let patient = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match p {
        Payload::Vital(v) => (patient(&v.patient_id), ward(&v.location)),
        Payload::Infusion(i) => (patient(&i.patient_id), ward(&i.location)),
        Payload::Alarm(a) => (patient(&a.patient_id), ward(&a.location)),
        Payload::Risk(r) => (patient(&r.patient_id), ward(&r.location)),
        Payload::Device(d) => (None, ward(&d.location)),
        Payload::Spo2Scale(s) => (patient(&s.patient_id), ward(&s.location)),
    }
}

/// Keep in step with the column list of `Store::vital_by_lineage`.
pub(crate) const VITAL_COLUMNS: &str = "SELECT id, edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, \
    loinc, value, enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter, \
    encounter_authority";

pub(crate) const DEVICE_SELECT: &str = "SELECT device_id, edge_id, kind, manufacturer, model, serial, udi, ward, bed, \
    state, reported_at_ms FROM devices WHERE device_id = $1";

macro_rules! row_mappers {
    ($vital:ident, $device:ident, $row:ty) => {
        pub(crate) fn $vital(r: &$row) -> Result<VitalRow, StorageError> {
            use sqlx::Row;
            Ok(VitalRow {
                id: r.try_get(0)?,
                edge_id: r.try_get(1)?,
                sequence: r.try_get(2)?,
                patient_id: r.try_get(3)?,
                ward: r.try_get(4)?,
                bed: r.try_get(5)?,
                device_id: r.try_get(6)?,
                metric_mdc: r.try_get(7)?,
                loinc: r.try_get(8)?,
                value: r.try_get(9)?,
                enumerated: r.try_get(10)?,
                unit: r.try_get(11)?,
                components: r.try_get(12)?,
                quality: r.try_get(13)?,
                measured_at_ms: r.try_get(14)?,
                received_at_ms: r.try_get(15)?,
                encounter: r.try_get(16)?,
                encounter_authority: r.try_get(17)?,
            })
        }
        pub(crate) fn $device(r: &$row) -> Result<DeviceRow, StorageError> {
            use sqlx::Row;
            Ok(DeviceRow {
                device_id: r.try_get(0)?,
                edge_id: r.try_get(1)?,
                kind: r.try_get(2)?,
                manufacturer: r.try_get(3)?,
                model: r.try_get(4)?,
                serial: r.try_get(5)?,
                udi: r.try_get(6)?,
                ward: r.try_get(7)?,
                bed: r.try_get(8)?,
                state: r.try_get(9)?,
                reported_at_ms: r.try_get(10)?,
            })
        }
    };
}
row_mappers!(
    vital_from_sqlite,
    device_from_sqlite,
    sqlx::sqlite::SqliteRow
);
row_mappers!(vital_from_pg, device_from_pg, sqlx::postgres::PgRow);

// ---- SMART Backend Services and the AuditEvent API (cloud/src/auth): access tokens, the assertion replay
// cache and audit queries. Both backends run the same SQL (migration 0004).

/// An access token issued by the token endpoint, as stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRow {
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// When issued, Unix ms.
    pub issued_at_ms: i64,
    /// When it expires, Unix ms.
    pub expires_at_ms: i64,
}

/// A stored audit record, as the AuditEvent API reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Storage id (the AuditEvent id, and the paging key).
    pub id: i64,
    /// The record itself.
    pub at_ms: i64,
    /// Client id ("" when the client was not identified).
    pub client_id: String,
    /// "search", "read" or "token".
    pub action: String,
    /// Resource type ("" for token requests).
    pub resource_type: String,
    /// Query, id, or requested scopes.
    pub query: String,
    /// Comma-separated MRNs.
    pub patients: String,
    /// HTTP status.
    pub status: i32,
    /// Remote address and port.
    pub remote: String,
    /// Why it was refused ("" if not).
    pub detail: String,
}

/// An audit-trail query: newest first, `limit` at most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records at or after this time (Unix ms).
    pub from_ms: Option<i64>,
    /// Only records before this time (Unix ms).
    pub before_ms: Option<i64>,
    /// Only records of this client.
    pub client_id: Option<String>,
    /// Only records that returned this patient's data (MRN).
    pub patient: Option<String>,
    /// Keyset cursor: only ids below it.
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: u32,
}

macro_rules! audit_row {
    ($r:expr) => {{
        use sqlx::Row;
        let r = $r;
        AuditRow {
            id: r.try_get(0)?,
            at_ms: r.try_get(1)?,
            client_id: r.try_get(2)?,
            action: r.try_get(3)?,
            resource_type: r.try_get(4)?,
            query: r.try_get(5)?,
            patients: r.try_get(6)?,
            status: r.try_get(7)?,
            remote: r.try_get(8)?,
            detail: r.try_get(9)?,
        }
    }};
}

impl Store {
    /// Records an issued access token (its hash).
    pub async fn insert_access_token(&self, t: &AccessTokenRow) -> Result<(), StorageError> {
        let sql = "INSERT INTO access_tokens (token_sha256, client_id, scopes, issued_at_ms, expires_at_ms)
                   VALUES ($1, $2, $3, $4, $5)";
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(sql)
                    .bind(&t.token_sha256)
                    .bind(&t.client_id)
                    .bind(&t.scopes)
                    .bind(t.issued_at_ms)
                    .bind(t.expires_at_ms)
                    .execute($p)
                    .await
                    .map(|_| ())?
            };
        }
        match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        }
        Ok(())
    }

    /// Access tokens that expired at or after `since_ms` (so still-valid ones and recently expired ones), for
    /// the in-memory token table at start-up.
    pub async fn access_tokens_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<AccessTokenRow>, StorageError> {
        let sql =
            "SELECT token_sha256, client_id, scopes, issued_at_ms, expires_at_ms FROM access_tokens
                   WHERE expires_at_ms >= $1";
        macro_rules! run {
            ($p:expr) => {{
                let rows = sqlx::query(sql).bind(since_ms).fetch_all($p).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    use sqlx::Row;
                    out.push(AccessTokenRow {
                        token_sha256: r.try_get(0)?,
                        client_id: r.try_get(1)?,
                        scopes: r.try_get(2)?,
                        issued_at_ms: r.try_get(3)?,
                        expires_at_ms: r.try_get(4)?,
                    });
                }
                out
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// Claims a client assertion's `jti` until `expires_at_ms`. Returns `false` if the same client already used
    /// it and that claim has not expired yet (a replay); an expired claim is taken over.
    pub async fn claim_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let sql = "INSERT INTO assertion_jtis (client_id, jti, expires_at_ms) VALUES ($1, $2, $3)
                   ON CONFLICT (client_id, jti) DO UPDATE SET expires_at_ms = excluded.expires_at_ms
                   WHERE assertion_jtis.expires_at_ms < $4";
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(sql)
                    .bind(client_id)
                    .bind(jti)
                    .bind(expires_at_ms)
                    .bind(now_ms)
                    .execute($p)
                    .await?
                    .rows_affected()
            };
        }
        let n = match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        };
        Ok(n == 1)
    }

    /// Deletes assertion claims that expired before `jti_before_ms` and access tokens that expired before
    /// `token_before_ms`.
    pub async fn prune_auth(
        &self,
        jti_before_ms: i64,
        token_before_ms: i64,
    ) -> Result<(), StorageError> {
        let jtis = "DELETE FROM assertion_jtis WHERE expires_at_ms < $1";
        let tokens = "DELETE FROM access_tokens WHERE expires_at_ms < $1";
        match self {
            Self::Sqlite(p) => {
                sqlx::query(jtis).bind(jti_before_ms).execute(p).await?;
                sqlx::query(tokens).bind(token_before_ms).execute(p).await?;
            }
            Self::Postgres(p) => {
                sqlx::query(jtis).bind(jti_before_ms).execute(p).await?;
                sqlx::query(tokens).bind(token_before_ms).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Appends an audit record with the reason it was refused (`detail`, may be empty).
    pub async fn audit_with_detail(
        &self,
        r: &AuditRecord,
        detail: &str,
    ) -> Result<(), StorageError> {
        let sql = "INSERT INTO audit_events (at_ms, client_id, action, resource_type, query, patients, status, remote, detail)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(sql)
                    .bind(r.at_ms)
                    .bind(&r.client_id)
                    .bind(&r.action)
                    .bind(&r.resource_type)
                    .bind(&r.query)
                    .bind(&r.patients)
                    .bind(r.status)
                    .bind(&r.remote)
                    .bind(detail)
                    .execute($p)
                    .await
                    .map(|_| ())?
            };
        }
        match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        }
        Ok(())
    }

    /// Searches the audit trail, newest first.
    pub async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StorageError> {
        // Each filter is `(bound IS NULL OR condition)`, so one statement serves every combination and binds
        // stay positional on both backends. The patient filter matches one MRN of the comma-separated list.
        let sql = "SELECT id, at_ms, client_id, action, resource_type, query, patients, status, remote, detail
             FROM audit_events WHERE ($1 IS NULL OR at_ms >= $1) AND ($2 IS NULL OR at_ms < $2)
             AND ($3 IS NULL OR client_id = $3)
             AND ($4 IS NULL OR (',' || patients || ',') LIKE ('%,' || $4 || ',%') ESCAPE '\\')
             AND ($5 IS NULL OR id < $5)
             ORDER BY id DESC LIMIT $6";
        let limit = i64::from(q.limit);
        let patient = q.patient.as_deref().map(|p| {
            p.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        });
        macro_rules! run {
            ($p:expr) => {{
                let rows = sqlx::query(sql)
                    .bind(q.from_ms)
                    .bind(q.before_ms)
                    .bind(q.client_id.as_deref())
                    .bind(patient.as_deref())
                    .bind(q.before_id)
                    .bind(limit)
                    .fetch_all($p)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(audit_row!(r));
                }
                out
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// Reads one audit record.
    pub async fn audit_by_id(&self, id: i64) -> Result<Option<AuditRow>, StorageError> {
        let sql = "SELECT id, at_ms, client_id, action, resource_type, query, patients, status, remote, detail
             FROM audit_events WHERE id = $1";
        macro_rules! run {
            ($p:expr) => {{
                let row = sqlx::query(sql).bind(id).fetch_optional($p).await?;
                match row {
                    Some(r) => Some(audit_row!(&r)),
                    None => None,
                }
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }
}
