//! Issue 6: the non-vital events (infusion status, alarms, risk scores) and device channels, as the FHIR
//! mapping reads them (migration 0005).
//!
//! At ingest, each event's search-index columns are extracted from its payload ([`event_index`]) and written
//! with the event in the same transaction, and the (device, metric) channels seen in the batch are upserted
//! once per batch ([`channels_of`]). Searches filter and page on those columns only; the payload is decoded
//! only for the rows returned. Both backends run the same SQL.

use std::collections::BTreeMap;

use prost::Message;
use sqlx::QueryBuilder;
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{AlarmKind, AlarmState, InfusionState, risk_score};

use super::{DeviceRow, IngestItem, StorageError, Store, TimeRange};

/// MDC code of the infusion rate (MDC_FLOW_FLUID_PUMP; to be verified against RTMMS).
pub const INFUSION_RATE_MDC: u32 = 157_784;
/// MDC code of the volume delivered so far (MDC_VOL_FLUID_DELIV_TOTAL; to be verified).
pub const INFUSION_INFUSED_MDC: u32 = 157_993;
/// MDC code of the volume remaining to be infused (MDC_VOL_FLUID_TBI_REMAIN; to be verified).
pub const INFUSION_REMAINING_MDC: u32 = 157_872;

/// The code of an alarm kind (the `code` index column and the DetectedIssue code).
pub fn alarm_kind_code(k: AlarmKind) -> &'static str {
    match k {
        AlarmKind::Unspecified => "unspecified",
        AlarmKind::VitalThreshold => "vital-threshold",
        AlarmKind::News2Response => "news2-response",
        AlarmKind::DeteriorationRisk => "deterioration-risk",
        AlarmKind::InfusionTooFast => "infusion-too-fast",
        AlarmKind::InfusionTooSlow => "infusion-too-slow",
        AlarmKind::InfusionStopped => "infusion-stopped",
        AlarmKind::InfusionNearCompletion => "infusion-near-completion",
        AlarmKind::InfusionCompleted => "infusion-completed",
        AlarmKind::DeviceLost => "device-lost",
        AlarmKind::OutboxNearFull => "outbox-near-full",
        AlarmKind::SensorProblem => "sensor-problem",
        AlarmKind::ModelUnavailable => "model-unavailable",
    }
}

/// The code of an alarm state.
pub fn alarm_state_code(s: AlarmState) -> &'static str {
    match s {
        AlarmState::Unspecified => "unspecified",
        AlarmState::Raised => "raised",
        AlarmState::Escalated => "escalated",
        AlarmState::Acknowledged => "acknowledged",
        AlarmState::Silenced => "silenced",
        AlarmState::Cleared => "cleared",
    }
}

/// The code of an infusion state (the `code` index column of infusion events).
pub fn infusion_state_code(s: InfusionState) -> &'static str {
    match s {
        InfusionState::Unspecified => "unspecified",
        InfusionState::Running => "running",
        InfusionState::Paused => "paused",
        InfusionState::Stopped => "stopped",
        InfusionState::Occluded => "occluded",
        InfusionState::Completed => "completed",
        InfusionState::Kvo => "kvo",
    }
}

/// Search-index columns of one non-vital event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EventIndex {
    pub(crate) event_ms: i64,
    pub(crate) code: &'static str,
    pub(crate) bed: String,
    pub(crate) device_id: String,
    pub(crate) alarm_id: Option<String>,
    pub(crate) alarm_priority: Option<i64>,
    pub(crate) alarm_state: Option<i64>,
    pub(crate) order_id: Option<String>,
    pub(crate) news2_total: Option<i64>,
    pub(crate) news2_response: Option<i64>,
}

/// Extracts the index columns of an infusion, alarm or risk event (vitals and devices have their own tables).
pub(crate) fn event_index(p: &Payload) -> EventIndex {
    let bed = |l: &Option<wardwatch_proto::v1::BedLocation>| {
        l.as_ref().map(|l| l.bed.clone()).unwrap_or_default()
    };
    match p {
        Payload::Infusion(i) => EventIndex {
            event_ms: i.measured_at_unix_ms,
            code: infusion_state_code(i.state()),
            bed: bed(&i.location),
            device_id: i.device_id.clone(),
            order_id: Some(i.order_id.clone()),
            ..Default::default()
        },
        Payload::Alarm(a) => EventIndex {
            event_ms: a.changed_at_unix_ms,
            code: alarm_kind_code(a.kind()),
            bed: bed(&a.location),
            device_id: a.device_id.clone(),
            alarm_id: Some(a.alarm_id.clone()),
            alarm_priority: Some(i64::from(a.priority)),
            alarm_state: Some(i64::from(a.state)),
            ..Default::default()
        },
        Payload::Risk(r) => {
            let (code, total, response) = match &r.score {
                Some(risk_score::Score::News2(n)) => (
                    "news2",
                    Some(i64::from(n.total)),
                    Some(i64::from(n.response)),
                ),
                Some(risk_score::Score::Model(_)) => ("model", None, None),
                None => ("", None, None),
            };
            EventIndex {
                event_ms: r.computed_at_unix_ms,
                code,
                bed: bed(&r.location),
                news2_total: total,
                news2_response: response,
                ..Default::default()
            }
        }
        // A nurse station SpO2-scale decision: `code` is "spo2-scale-1" or "spo2-scale-2" (the scale chosen).
        Payload::Spo2Scale(s) => EventIndex {
            event_ms: s.changed_at_unix_ms,
            code: if s.scale == 2 {
                "spo2-scale-2"
            } else {
                "spo2-scale-1"
            },
            bed: bed(&s.location),
            ..Default::default()
        },
        Payload::Vital(_) | Payload::Device(_) => EventIndex::default(),
    }
}

/// One (device, metric) channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRow {
    /// Device id.
    pub device_id: String,
    /// MDC code of the metric.
    pub metric_mdc: i64,
    /// UCUM unit.
    pub unit: String,
    /// Patient last seen on it.
    pub patient_id: String,
    /// Ward.
    pub ward: String,
    /// Bed.
    pub bed: String,
    /// First seen, Unix ms.
    pub first_seen_ms: i64,
    /// Last seen, Unix ms (a minute's precision).
    pub last_seen_ms: i64,
}

/// The channels a batch shows, one per (device, metric) with its latest sighting, in key order (so that
/// concurrent batches upsert in the same order and cannot deadlock on PostgreSQL).
pub(crate) fn channels_of(fresh: &[(&IngestItem, &Payload)]) -> Vec<ChannelRow> {
    let mut m: BTreeMap<(String, i64), ChannelRow> = BTreeMap::new();
    let mut see = |device: &str,
                   mdc: u32,
                   unit: &str,
                   patient: &str,
                   loc: &Option<wardwatch_proto::v1::BedLocation>,
                   ms: i64| {
        if device.is_empty() {
            return;
        }
        let (ward, bed) = loc
            .as_ref()
            .map(|l| (l.ward.as_str(), l.bed.as_str()))
            .unwrap_or(("", ""));
        let key = (device.to_string(), i64::from(mdc));
        let e = m.entry(key).or_insert_with(|| ChannelRow {
            device_id: device.to_string(),
            metric_mdc: i64::from(mdc),
            unit: unit.to_string(),
            patient_id: patient.to_string(),
            ward: ward.to_string(),
            bed: bed.to_string(),
            first_seen_ms: ms,
            last_seen_ms: ms,
        });
        if ms >= e.last_seen_ms {
            e.last_seen_ms = ms;
            e.unit = unit.to_string();
            e.patient_id = patient.to_string();
            e.ward = ward.to_string();
            e.bed = bed.to_string();
        }
        e.first_seen_ms = e.first_seen_ms.min(ms);
    };
    for (_, p) in fresh {
        match p {
            Payload::Vital(v) => see(
                &v.device_id,
                v.metric_mdc,
                &v.unit_ucum,
                &v.patient_id,
                &v.location,
                v.measured_at_unix_ms,
            ),
            Payload::Infusion(i) => {
                for (mdc, unit) in [
                    (INFUSION_RATE_MDC, "mL/h"),
                    (INFUSION_INFUSED_MDC, "mL"),
                    (INFUSION_REMAINING_MDC, "mL"),
                ] {
                    see(
                        &i.device_id,
                        mdc,
                        unit,
                        &i.patient_id,
                        &i.location,
                        i.measured_at_unix_ms,
                    );
                }
            }
            _ => {}
        }
    }
    m.into_values().collect()
}

/// The upsert of a batch's channels (see migration 0005 for when `last_seen_ms` moves).
pub(crate) const CHANNEL_UPSERT_TAIL: &str = " ON CONFLICT (device_id, metric_mdc) DO UPDATE SET unit = excluded.unit, \
    patient_id = excluded.patient_id, ward = excluded.ward, bed = excluded.bed, \
    last_seen_ms = excluded.last_seen_ms \
    WHERE excluded.last_seen_ms > device_channels.last_seen_ms + 60000 \
       OR (excluded.last_seen_ms > device_channels.last_seen_ms AND (excluded.patient_id <> device_channels.patient_id \
       OR excluded.ward <> device_channels.ward OR excluded.bed <> device_channels.bed))";

/// A stored non-vital event, decoded.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Edge that sent it.
    pub edge_id: String,
    /// Its sequence on that edge.
    pub sequence: i64,
    /// `infusion`, `alarm` or `risk`.
    pub kind: String,
    /// The event itself.
    pub payload: Payload,
    /// When the cloud stored it.
    pub received_at_ms: i64,
    /// The event's own time (index column).
    pub event_ms: i64,
}

impl EventRow {
    /// The lineage id `<edge>.<sequence>`.
    pub fn lineage_id(&self) -> String {
        format!("{}.{}", self.edge_id, self.sequence)
    }
}

/// A search over one kind of non-vital event, newest first (event time, then sequence and edge).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// `infusion`, `alarm` or `risk`.
    pub kind: &'static str,
    /// Only this patient.
    pub patient: Option<String>,
    /// Only these codes (risk: `news2`, `model`; infusion: state; alarm: kind). Empty: all.
    pub codes: Vec<String>,
    /// Only events whose own time is in this range.
    pub time: TimeRange,
    /// Keyset cursor: only rows after `(event_ms, sequence, edge_id)` in the newest-first order.
    pub after: Option<(i64, i64, String)>,
    /// Page size.
    pub limit: u32,
}

/// A search over alarms or medication orders: one row per alarm id / order id, newest first by its first
/// event (which never changes once stored, so paging is stable).
#[derive(Debug, Clone, Default)]
pub struct GroupQuery {
    /// Only this patient.
    pub patient: Option<String>,
    /// Only groups with an event of one of these codes (alarm kind / infusion state). Empty: all.
    pub codes: Vec<String>,
    /// Only groups whose first event is in this range.
    pub first: TimeRange,
    /// Only groups in one of these current statuses (empty: all). Alarms: `preliminary` (the latest state
    /// change, in stored order, is not `cleared`) or `final` (it is). Orders: `in-progress`, `on-hold` (the
    /// latest report by event time is paused) or `completed` (it is completed, or KVO after a completed
    /// report), as the MedicationAdministration mapping decides its status.
    pub current_status: Vec<&'static str>,
    /// Alarms only: only those whose latest state change (stored order) has one of these `AlarmPriority`
    /// values (empty: all).
    pub current_priorities: Vec<i64>,
    /// Keyset cursor: only groups after `(first_ms, id)` in that order.
    pub after: Option<(i64, String)>,
    /// Page size.
    pub limit: u32,
}

/// What the MedicationAdministration of one order is built from.
#[derive(Debug, Clone)]
pub struct OrderSummary {
    /// First status report, Unix ms.
    pub first_ms: i64,
    /// Number of status reports.
    pub reports: i64,
    /// First report in state completed, Unix ms.
    pub completed_ms: Option<i64>,
    /// The latest report.
    pub latest: EventRow,
}

/// A Device search.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    /// Devices with a channel last seen on this patient.
    pub patient: Option<String>,
    /// Only this ward.
    pub ward: Option<String>,
    /// Only this bed (with the ward).
    pub bed: Option<String>,
    /// Only these `DeviceKind` values (empty: all).
    pub kinds: Vec<i64>,
    /// Keyset cursor: device ids after this one.
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
}

const EVENT_COLUMNS: &str = "SELECT edge_id, sequence, kind, payload, received_at_ms, COALESCE(event_ms, 0) FROM edge_events";

fn decode(
    edge_id: String,
    sequence: i64,
    kind: String,
    bytes: &[u8],
    received_at_ms: i64,
    event_ms: i64,
) -> Result<Option<EventRow>, StorageError> {
    let ev = wardwatch_proto::v1::EdgeEvent::decode(bytes).map_err(|e| {
        StorageError::Corrupt(format!(
            "edge_events {edge_id}.{sequence} does not decode: {e}"
        ))
    })?;
    Ok(ev.payload.map(|payload| EventRow {
        edge_id,
        sequence,
        kind,
        payload,
        received_at_ms,
        event_ms,
    }))
}

macro_rules! event_rows {
    ($rows:expr) => {{
        use sqlx::Row;
        let mut out = Vec::with_capacity($rows.len());
        for r in &$rows {
            let bytes: Vec<u8> = r.try_get(3)?;
            if let Some(e) = decode(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                &bytes,
                r.try_get(4)?,
                r.try_get(5)?,
            )? {
                out.push(e);
            }
        }
        out
    }};
}

macro_rules! channel_rows {
    ($rows:expr) => {{
        use sqlx::Row;
        let mut out = Vec::with_capacity($rows.len());
        for r in &$rows {
            out.push(ChannelRow {
                device_id: r.try_get(0)?,
                metric_mdc: r.try_get(1)?,
                unit: r.try_get(2)?,
                patient_id: r.try_get(3)?,
                ward: r.try_get(4)?,
                bed: r.try_get(5)?,
                first_seen_ms: r.try_get(6)?,
                last_seen_ms: r.try_get(7)?,
            });
        }
        out
    }};
}

const CHANNEL_COLUMNS: &str = "SELECT device_id, metric_mdc, unit, patient_id, ward, bed, first_seen_ms, last_seen_ms \
     FROM device_channels";

/// Appends `AND col >= from AND col < before` for a time range.
macro_rules! push_range {
    ($qb:expr, $col:expr, $r:expr) => {{
        let r: TimeRange = $r;
        if let Some(f) = r.from_ms {
            $qb.push(concat!(" AND ", $col, " >= ")).push_bind(f);
        }
        if let Some(b) = r.before_ms {
            $qb.push(concat!(" AND ", $col, " < ")).push_bind(b);
        }
    }};
}

/// Appends `AND col IN (codes)` when codes are given.
macro_rules! push_codes {
    ($qb:expr, $col:expr, $codes:expr) => {{
        let codes: &[String] = $codes;
        if !codes.is_empty() {
            $qb.push(concat!(" AND ", $col, " IN ("));
            let mut sep = $qb.separated(", ");
            for c in codes {
                sep.push_bind(c.clone());
            }
            $qb.push(")");
        }
    }};
}

/// An alarm's latest state change in stored order (the one its DetectedIssue's status and priority come from).
const ALARM_LATEST: &str = " AND alarm_id IN (SELECT e.alarm_id FROM edge_events e WHERE e.kind = 'alarm' \
    AND e.alarm_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM edge_events l WHERE l.kind = 'alarm' \
    AND l.alarm_id = e.alarm_id AND (l.received_at_ms > e.received_at_ms OR (l.received_at_ms = e.received_at_ms \
    AND (l.sequence > e.sequence OR (l.sequence = e.sequence AND l.edge_id > e.edge_id)))))";
/// An order's latest report by event time (the one its MedicationAdministration's status comes from).
const ORDER_LATEST: &str = " AND order_id IN (SELECT e.order_id FROM edge_events e WHERE e.kind = 'infusion' \
    AND e.order_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM edge_events l WHERE l.kind = 'infusion' \
    AND l.order_id = e.order_id AND (l.event_ms > e.event_ms OR (l.event_ms = e.event_ms AND l.sequence > e.sequence)))";
/// Whether the latest report `e` makes the order completed (see `resources::order_to_fhir`).
const ORDER_COMPLETED: &str = "(e.code = 'completed' OR (e.code = 'kvo' AND EXISTS (SELECT 1 FROM edge_events c \
    WHERE c.kind = 'infusion' AND c.order_id = e.order_id AND c.code = 'completed')))";

/// Appends the current-status and current-priority filters of a [`GroupQuery`] (a subquery on the latest
/// event of each alarm or order, which closes the parenthesis [`ALARM_LATEST`] / [`ORDER_LATEST`] opens).
macro_rules! push_current {
    ($qb:expr, $group:expr, $q:expr) => {{
        let q: &GroupQuery = $q;
        let statuses = |s: &str| q.current_status.iter().any(|c| *c == s);
        match $group {
            GroupKind::Alarm
                if !q.current_status.is_empty() || !q.current_priorities.is_empty() =>
            {
                $qb.push(ALARM_LATEST);
                let cleared = i64::from(AlarmState::Cleared as i32);
                match (statuses("preliminary"), statuses("final")) {
                    _ if q.current_status.is_empty() => {}
                    (true, true) => {}
                    (true, false) => {
                        $qb.push(" AND e.alarm_state <> ").push_bind(cleared);
                    }
                    (false, true) => {
                        $qb.push(" AND e.alarm_state = ").push_bind(cleared);
                    }
                    (false, false) => {
                        $qb.push(" AND 1=0");
                    }
                }
                if !q.current_priorities.is_empty() {
                    $qb.push(" AND e.alarm_priority IN (");
                    let mut sep = $qb.separated(", ");
                    for p in &q.current_priorities {
                        sep.push_bind(*p);
                    }
                    $qb.push(")");
                }
                $qb.push(")");
            }
            GroupKind::Order if !q.current_status.is_empty() => {
                $qb.push(ORDER_LATEST).push(" AND (1=0");
                if statuses("completed") {
                    $qb.push(" OR ").push(ORDER_COMPLETED);
                }
                if statuses("on-hold") {
                    $qb.push(" OR e.code = 'paused'");
                }
                if statuses("in-progress") {
                    $qb.push(" OR (e.code <> 'paused' AND NOT ")
                        .push(ORDER_COMPLETED)
                        .push(")");
                }
                $qb.push("))");
            }
            _ => {}
        }
    }};
}

/// Appends `<id column><extra> FROM edge_events WHERE …filters… GROUP BY <id column> HAVING …first time…`: the
/// alarms or orders a [`GroupQuery`] selects (without its cursor, order and limit).
macro_rules! push_groups {
    ($qb:expr, $group:expr, $q:expr, $extra:expr) => {{
        let group: GroupKind = $group;
        let q: &GroupQuery = $q;
        let col = group.column();
        $qb.push(col)
            .push($extra)
            .push(" FROM edge_events WHERE kind = ")
            .push_bind(group.event_kind())
            .push(" AND ")
            .push(col)
            .push(" IS NOT NULL");
        if let Some(p) = &q.patient {
            $qb.push(" AND patient_id = ").push_bind(p.clone());
        }
        push_codes!($qb, "code", &q.codes);
        push_current!($qb, group, q);
        $qb.push(" GROUP BY ").push(col).push(" HAVING 1=1");
        push_range!($qb, "MIN(event_ms)", q.first);
    }};
}

impl Store {
    /// Reads the non-vital event an edge synced under `sequence`.
    pub async fn event_by_lineage(
        &self,
        edge_id: &str,
        sequence: u64,
    ) -> Result<Option<EventRow>, StorageError> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(None);
        };
        const SQL: &str = "SELECT edge_id, sequence, kind, payload, received_at_ms, COALESCE(event_ms, 0) \
            FROM edge_events WHERE edge_id = $1 AND sequence = $2";
        let rows = match self {
            Self::Sqlite(p) => {
                let rows = sqlx::query(SQL)
                    .bind(edge_id)
                    .bind(sequence)
                    .fetch_all(p)
                    .await?;
                event_rows!(rows)
            }
            Self::Postgres(p) => {
                let rows = sqlx::query(SQL)
                    .bind(edge_id)
                    .bind(sequence)
                    .fetch_all(p)
                    .await?;
                event_rows!(rows)
            }
        };
        Ok(rows.into_iter().next())
    }

    /// Searches one kind of non-vital event, newest first.
    pub async fn search_events(&self, q: &EventQuery) -> Result<Vec<EventRow>, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(EVENT_COLUMNS);
                qb.push(" WHERE kind = ").push_bind(q.kind);
                if let Some(p) = &q.patient {
                    qb.push(" AND patient_id = ").push_bind(p.clone());
                }
                push_codes!(qb, "code", &q.codes);
                push_range!(qb, "event_ms", q.time);
                if let Some((ms, seq, edge)) = &q.after {
                    qb.push(" AND (event_ms < ")
                        .push_bind(*ms)
                        .push(" OR (event_ms = ")
                        .push_bind(*ms)
                        .push(" AND (sequence < ")
                        .push_bind(*seq)
                        .push(" OR (sequence = ")
                        .push_bind(*seq)
                        .push(" AND edge_id < ")
                        .push_bind(edge.clone())
                        .push("))))");
                }
                qb.push(" ORDER BY event_ms DESC, sequence DESC, edge_id DESC LIMIT ")
                    .push_bind(i64::from(q.limit));
                let rows = qb.build().fetch_all($p).await?;
                event_rows!(rows)
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// How many events match `q` (its cursor and limit are ignored).
    pub async fn count_events(&self, q: &EventQuery) -> Result<i64, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT COUNT(*) FROM edge_events WHERE kind = ");
                qb.push_bind(q.kind);
                if let Some(p) = &q.patient {
                    qb.push(" AND patient_id = ").push_bind(p.clone());
                }
                push_codes!(qb, "code", &q.codes);
                push_range!(qb, "event_ms", q.time);
                qb.build_query_scalar().fetch_one($p).await?
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// Every state change of one alarm, in order.
    pub async fn alarm_history(&self, alarm_id: &str) -> Result<Vec<EventRow>, StorageError> {
        const SQL: &str = "SELECT edge_id, sequence, kind, payload, received_at_ms, COALESCE(event_ms, 0) \
            FROM edge_events WHERE alarm_id = $1 AND kind = 'alarm' ORDER BY event_ms, sequence LIMIT 10000";
        Ok(match self {
            Self::Sqlite(p) => {
                let rows = sqlx::query(SQL).bind(alarm_id).fetch_all(p).await?;
                event_rows!(rows)
            }
            Self::Postgres(p) => {
                let rows = sqlx::query(SQL).bind(alarm_id).fetch_all(p).await?;
                event_rows!(rows)
            }
        })
    }

    /// How many alarms or orders match `q` (its cursor and limit are ignored).
    pub async fn count_groups(
        &self,
        group: GroupKind,
        q: &GroupQuery,
    ) -> Result<i64, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT COUNT(*) FROM (SELECT ");
                push_groups!(qb, group, q, "");
                qb.push(") AS g");
                qb.build_query_scalar().fetch_one($p).await?
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// Alarm ids (`group = "alarm"`) or order ids (`group = "infusion"`) matching `q`, with their first event
    /// time, newest first.
    pub async fn search_groups(
        &self,
        group: GroupKind,
        q: &GroupQuery,
    ) -> Result<Vec<(String, i64)>, StorageError> {
        let col = group.column();
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                push_groups!(qb, group, q, ", MIN(event_ms) AS first_ms");
                if let Some((ms, id)) = &q.after {
                    qb.push(" AND (MIN(event_ms) < ")
                        .push_bind(*ms)
                        .push(" OR (MIN(event_ms) = ")
                        .push_bind(*ms)
                        .push(" AND ")
                        .push(col)
                        .push(" < ")
                        .push_bind(id.clone())
                        .push("))");
                }
                qb.push(" ORDER BY first_ms DESC, ")
                    .push(col)
                    .push(" DESC LIMIT ")
                    .push_bind(i64::from(q.limit));
                let rows: Vec<(String, i64)> = qb.build_query_as().fetch_all($p).await?;
                rows
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// The reports of one medication order, summarised.
    pub async fn order_summary(
        &self,
        order_id: &str,
    ) -> Result<Option<OrderSummary>, StorageError> {
        const AGG: &str = "SELECT MIN(event_ms), COUNT(*), MIN(CASE WHEN code = 'completed' THEN event_ms END) \
            FROM edge_events WHERE order_id = $1 AND kind = 'infusion'";
        const LATEST: &str = "SELECT edge_id, sequence, kind, payload, received_at_ms, COALESCE(event_ms, 0) \
            FROM edge_events WHERE order_id = $1 AND kind = 'infusion' ORDER BY event_ms DESC, sequence DESC LIMIT 1";
        macro_rules! run {
            ($p:expr) => {{
                let (first, n, done): (Option<i64>, i64, Option<i64>) =
                    sqlx::query_as(AGG).bind(order_id).fetch_one($p).await?;
                let rows = sqlx::query(LATEST).bind(order_id).fetch_all($p).await?;
                let latest = event_rows!(rows).into_iter().next();
                match (first, latest) {
                    (Some(first_ms), Some(latest)) => Some(OrderSummary {
                        first_ms,
                        reports: n,
                        completed_ms: done,
                        latest,
                    }),
                    _ => None,
                }
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// Resolves idempotency keys an edge sent (a risk score's `derived_from`) to the sequences of the vital
    /// signs they name, in the order given; keys that are not stored vital signs are left out.
    pub async fn vital_sequences_by_keys(
        &self,
        edge_id: &str,
        keys: &[String],
    ) -> Result<Vec<i64>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT idempotency_key, sequence FROM sync_ledger WHERE kind = 'vital' AND outcome = 0 AND edge_id = ",
                );
                qb.push_bind(edge_id).push(" AND idempotency_key IN (");
                let mut sep = qb.separated(", ");
                for k in keys.iter().take(500) {
                    sep.push_bind(k.clone());
                }
                qb.push(")");
                let rows: Vec<(String, i64)> = qb.build_query_as().fetch_all($p).await?;
                rows
            }};
        }
        let found: std::collections::HashMap<String, i64> = match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        }
        .into_iter()
        .collect();
        Ok(keys.iter().filter_map(|k| found.get(k).copied()).collect())
    }

    /// The channels of one device, by metric code.
    pub async fn device_channels(&self, device_id: &str) -> Result<Vec<ChannelRow>, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(CHANNEL_COLUMNS);
                qb.push(" WHERE device_id = ")
                    .push_bind(device_id)
                    .push(" ORDER BY metric_mdc");
                let rows = qb.build().fetch_all($p).await?;
                channel_rows!(rows)
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// Channels in (device, metric) order after `after`, optionally of one device or one metric.
    pub async fn search_channels(
        &self,
        device: Option<&str>,
        metric: Option<i64>,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<ChannelRow>, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(CHANNEL_COLUMNS);
                qb.push(" WHERE 1=1");
                if let Some(d) = device {
                    qb.push(" AND device_id = ").push_bind(d.to_string());
                }
                if let Some(m) = metric {
                    qb.push(" AND metric_mdc = ").push_bind(m);
                }
                if let Some((d, m)) = after {
                    qb.push(" AND (device_id > ")
                        .push_bind(d.to_string())
                        .push(" OR (device_id = ")
                        .push_bind(d.to_string())
                        .push(" AND metric_mdc > ")
                        .push_bind(m)
                        .push("))");
                }
                qb.push(" ORDER BY device_id, metric_mdc LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = qb.build().fetch_all($p).await?;
                channel_rows!(rows)
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// Devices (ids, in order, after `after`) with at least one channel of these metrics: the devices whose
    /// containment tree has the VMD (and channel) these metrics belong to.
    pub async fn devices_with_metrics(
        &self,
        metrics: &[i64],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        if metrics.is_empty() {
            return Ok(Vec::new());
        }
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT DISTINCT device_id FROM device_channels WHERE metric_mdc IN (",
                );
                let mut sep = qb.separated(", ");
                for m in metrics {
                    sep.push_bind(*m);
                }
                qb.push(")");
                if let Some(a) = after {
                    qb.push(" AND device_id > ").push_bind(a.to_string());
                }
                qb.push(" ORDER BY device_id LIMIT ")
                    .push_bind(i64::from(limit));
                let rows: Vec<(String,)> = qb.build_query_as().fetch_all($p).await?;
                rows.into_iter().map(|(d,)| d).collect()
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }

    /// Devices with channels whose id starts with these 36 characters and is longer: the candidates for a
    /// shortened device part of a containment-tree id (`resources::tree_device_part`).
    pub async fn channel_devices_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<String>, StorageError> {
        const SQL: &str = "SELECT DISTINCT device_id FROM device_channels \
            WHERE substr(device_id, 1, 36) = $1 AND length(device_id) > 36 ORDER BY device_id LIMIT 1000";
        let rows: Vec<(String,)> = match self {
            Self::Sqlite(p) => sqlx::query_as(SQL).bind(prefix).fetch_all(p).await?,
            Self::Postgres(p) => sqlx::query_as(SQL).bind(prefix).fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }

    /// Searches devices in device-id order.
    pub async fn search_devices(&self, q: &DeviceQuery) -> Result<Vec<DeviceRow>, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty, $map:path) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT device_id, edge_id, kind, manufacturer, model, serial, udi, ward, bed, state, \
                     reported_at_ms FROM devices WHERE 1=1",
                );
                if let Some(p) = &q.patient {
                    qb.push(" AND device_id IN (SELECT device_id FROM device_channels WHERE patient_id = ")
                        .push_bind(p.clone())
                        .push(")");
                }
                if let Some(w) = &q.ward {
                    qb.push(" AND ward = ").push_bind(w.clone());
                }
                if let Some(b) = &q.bed {
                    qb.push(" AND bed = ").push_bind(b.clone());
                }
                if !q.kinds.is_empty() {
                    qb.push(" AND kind IN (");
                    let mut sep = qb.separated(", ");
                    for k in &q.kinds {
                        sep.push_bind(*k);
                    }
                    qb.push(")");
                }
                if let Some(a) = &q.after {
                    qb.push(" AND device_id > ").push_bind(a.clone());
                }
                qb.push(" ORDER BY device_id LIMIT ")
                    .push_bind(i64::from(q.limit));
                let rows = qb.build().fetch_all($p).await?;
                rows.iter().map($map).collect::<Result<Vec<_>, _>>()?
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite, super::device_from_sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres, super::device_from_pg),
        })
    }

    /// Every ward and bed the cloud knows (from devices and device channels), sorted; a ward alone has bed "".
    pub async fn locations(&self) -> Result<Vec<(String, String)>, StorageError> {
        const SQL: &str = "SELECT ward, bed FROM devices WHERE ward <> '' UNION SELECT ward, bed FROM device_channels \
            WHERE ward <> '' UNION SELECT ward, '' FROM devices WHERE ward <> '' UNION SELECT ward, '' FROM device_channels \
            WHERE ward <> '' ORDER BY 1, 2 LIMIT 100000";
        Ok(match self {
            Self::Sqlite(p) => sqlx::query_as(SQL).fetch_all(p).await?,
            Self::Postgres(p) => sqlx::query_as(SQL).fetch_all(p).await?,
        })
    }

    /// Fills the index columns of events stored before migration 0005 (decoding their payloads), in chunks.
    /// Returns how many rows it filled.
    pub async fn backfill_event_index(&self) -> Result<u64, StorageError> {
        const PICK: &str = "SELECT edge_id, sequence, kind, payload, received_at_ms, 0 FROM edge_events \
            WHERE event_ms IS NULL LIMIT 1000";
        const SET: &str = "UPDATE edge_events SET event_ms = $3, code = $4, bed = $5, device_id = $6, alarm_id = $7, \
            alarm_priority = $8, alarm_state = $9, order_id = $10, news2_total = $11, news2_response = $12 \
            WHERE edge_id = $1 AND sequence = $2";
        let mut filled = 0u64;
        loop {
            macro_rules! run {
                ($p:expr) => {{
                    let rows = sqlx::query(PICK).fetch_all($p).await?;
                    if rows.is_empty() {
                        return Ok(filled);
                    }
                    let mut tx = $p.begin().await?;
                    for r in &rows {
                        use sqlx::Row;
                        let edge: String = r.try_get(0)?;
                        let sequence: i64 = r.try_get(1)?;
                        let bytes: Vec<u8> = r.try_get(3)?;
                        // A payload that does not decode gets event time 0 (and no other index), so it is
                        // never picked again; it is reported when read.
                        let ix = wardwatch_proto::v1::EdgeEvent::decode(bytes.as_slice())
                            .ok()
                            .and_then(|e| e.payload)
                            .map(|p| event_index(&p))
                            .unwrap_or_default();
                        sqlx::query(SET)
                            .bind(&edge)
                            .bind(sequence)
                            .bind(ix.event_ms)
                            .bind(ix.code)
                            .bind(&ix.bed)
                            .bind(&ix.device_id)
                            .bind(&ix.alarm_id)
                            .bind(ix.alarm_priority)
                            .bind(ix.alarm_state)
                            .bind(&ix.order_id)
                            .bind(ix.news2_total)
                            .bind(ix.news2_response)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    filled += rows.len() as u64;
                }};
            }
            match self {
                Self::Sqlite(p) => run!(p),
                Self::Postgres(p) => run!(p),
            }
        }
    }
}

/// Which grouping [`Store::search_groups`] pages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Alarms, by alarm id.
    Alarm,
    /// Medication orders, by order id.
    Order,
}

impl GroupKind {
    /// The `edge_events` column that names the group.
    fn column(self) -> &'static str {
        match self {
            Self::Alarm => "alarm_id",
            Self::Order => "order_id",
        }
    }

    /// The `edge_events.kind` of the group's events.
    fn event_kind(self) -> &'static str {
        match self {
            Self::Alarm => "alarm",
            Self::Order => "infusion",
        }
    }
}

// ---- Issue 6: resource versions (migration 0009), for vread and `_history`. ----

const DEVICE_VERSION_COLUMNS: &str = "SELECT device_id, edge_id, kind, manufacturer, model, serial, udi, ward, bed, \
    state, reported_at_ms, version FROM device_versions";

macro_rules! device_version_rows {
    ($rows:expr, $map:path) => {{
        use sqlx::Row;
        let mut out = Vec::with_capacity($rows.len());
        for r in &$rows {
            let version: i64 = r.try_get(11)?;
            out.push((version, $map(r)?));
        }
        out
    }};
}

impl Store {
    /// Versions of one device (migration 0009), newest first: those numbered below `before` (all when
    /// `None`), at most `limit`. Each is `(version, description)`.
    pub async fn device_versions(
        &self,
        device_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, DeviceRow)>, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty, $map:path) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(DEVICE_VERSION_COLUMNS);
                qb.push(" WHERE device_id = ").push_bind(device_id);
                if let Some(b) = before {
                    qb.push(" AND version < ").push_bind(b);
                }
                qb.push(" ORDER BY version DESC LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = qb.build().fetch_all($p).await?;
                device_version_rows!(rows, $map)
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite, super::device_from_sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres, super::device_from_pg),
        })
    }

    /// The current version of each of these devices (one query; devices without versions are left out).
    pub async fn current_device_versions(
        &self,
        device_ids: &[String],
    ) -> Result<Vec<(i64, DeviceRow)>, StorageError> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        macro_rules! run {
            ($p:expr, $db:ty, $map:path) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(DEVICE_VERSION_COLUMNS);
                qb.push(
                    " v WHERE version = (SELECT MAX(version) FROM device_versions m WHERE m.device_id = v.device_id) \
                     AND device_id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in device_ids.iter().take(1000) {
                    sep.push_bind(id.clone());
                }
                qb.push(") ORDER BY device_id");
                let rows = qb.build().fetch_all($p).await?;
                device_version_rows!(rows, $map)
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite, super::device_from_sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres, super::device_from_pg),
        })
    }

    /// The events of one alarm (its state changes) or one medication order (its status reports) in the order
    /// the cloud stored them (time stored, then sequence and edge): version `n` of the DetectedIssue or the
    /// MedicationAdministration is made from the first `n`. `limit` keeps only the first so many.
    pub async fn group_versions(
        &self,
        group: GroupKind,
        id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<EventRow>, StorageError> {
        macro_rules! run {
            ($p:expr, $db:ty) => {{
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(EVENT_COLUMNS);
                qb.push(" WHERE ")
                    .push(group.column())
                    .push(" = ")
                    .push_bind(id)
                    .push(" AND kind = ")
                    .push_bind(group.event_kind())
                    .push(" ORDER BY received_at_ms, sequence, edge_id");
                if let Some(l) = limit {
                    qb.push(" LIMIT ").push_bind(i64::from(l));
                }
                let rows = qb.build().fetch_all($p).await?;
                event_rows!(rows)
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p, sqlx::Sqlite),
            Self::Postgres(p) => run!(p, sqlx::Postgres),
        })
    }
}

impl OrderSummary {
    /// The summary of some of an order's reports (a version's: the first `n` in stored order), computed as
    /// [`Store::order_summary`] computes it over all of them: first and completion times are minima, the latest
    /// report is the one with the greatest (event time, sequence). `None` for no reports.
    pub fn of_reports(reports: &[EventRow]) -> Option<OrderSummary> {
        let latest = reports
            .iter()
            .max_by_key(|e| (e.event_ms, e.sequence))?
            .clone();
        let completed_ms = reports
            .iter()
            .filter(|e| {
                matches!(&e.payload, Payload::Infusion(i) if i.state() == InfusionState::Completed)
            })
            .map(|e| e.event_ms)
            .min();
        Some(OrderSummary {
            first_ms: reports.iter().map(|e| e.event_ms).min()?,
            reports: i64::try_from(reports.len()).unwrap_or(i64::MAX),
            completed_ms,
            latest,
        })
    }
}
