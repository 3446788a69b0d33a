//! SQLite side of [`super::Store`]: multi-row INSERTs in one transaction.

use std::collections::HashSet;

use prost::Message;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use wardwatch_proto::v1::edge_event::Payload;

use super::{
    DeviceRow, IngestItem, IngestOutcome, OUTCOME_REJECTED, OUTCOME_STORED, StorageError,
    StoredKeys, VitalQuery, VitalRow, components_json, encounter_columns, event_kind, loinc_of,
    quality_mask, ward_bed,
};

/// Rows per statement: SQLite allows 32,766 bound parameters; the widest insert binds 17 per row.
const CHUNK: usize = 1_000;

pub(super) async fn ingest(
    pool: &SqlitePool,
    edge_id: &str,
    items: &[IngestItem],
    keys: &StoredKeys,
) -> Result<IngestOutcome, StorageError> {
    let now = wardwatch_proto::now_unix_ms();
    let mut tx = pool.begin().await?;
    let mut claimed: HashSet<u64> = HashSet::with_capacity(items.len());
    for chunk in items.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO sync_ledger (edge_id, sequence, idempotency_key, kind, outcome, reason, received_at_ms) ",
        );
        qb.push_values(chunk, |mut b, it| {
            let (kind, outcome, reason) = match &it.outcome {
                Ok(p) => (event_kind(p), OUTCOME_STORED, None),
                Err(r) => (
                    "rejected",
                    OUTCOME_REJECTED,
                    Some(format!("{:?}: {}", r.reason, r.detail)),
                ),
            };
            b.push_bind(edge_id)
                .push_bind(i64::try_from(it.sequence).unwrap_or(i64::MAX))
                .push_bind(it.idempotency_key.as_str())
                .push_bind(kind)
                .push_bind(outcome)
                .push_bind(reason)
                .push_bind(now);
        });
        qb.push(" ON CONFLICT DO NOTHING RETURNING sequence");
        for row in qb.build().fetch_all(&mut *tx).await? {
            let s: i64 = row.try_get(0)?;
            claimed.insert(u64::try_from(s).unwrap_or(0));
        }
    }
    // Which items claimed their ledger entry now, computed once and used for both the data rows and the answer.
    let claimed_items: Vec<bool> = items
        .iter()
        .map(|it| claimed.contains(&it.sequence))
        .collect();
    let fresh: Vec<(&IngestItem, &Payload)> = items
        .iter()
        .zip(&claimed_items)
        .filter(|(_, c)| **c)
        .filter_map(|(it, _)| it.outcome.as_ref().ok().map(|p| (it, p)))
        .collect();
    let vitals: Vec<_> = fresh
        .iter()
        .filter_map(|(it, p)| {
            if let Payload::Vital(v) = p {
                Some((it.sequence, v))
            } else {
                None
            }
        })
        .collect();
    for chunk in vitals.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO vital_signs (edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, loinc, value, \
             enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter, encounter_authority) ",
        );
        qb.push_values(chunk, |mut b, (seq, v)| {
            let (encounter, authority) = encounter_columns(v);
            let (ward, bed) = v
                .location
                .as_ref()
                .map(|l| (l.ward.as_str(), l.bed.as_str()))
                .unwrap_or(("", ""));
            let enumerated = (!v.enumerated.is_empty()).then_some(v.enumerated.as_str());
            let value = if enumerated.is_some() {
                None
            } else {
                Some(v.value)
            };
            b.push_bind(edge_id)
                .push_bind(i64::try_from(*seq).unwrap_or(i64::MAX))
                .push_bind(v.patient_id.as_str())
                .push_bind(ward)
                .push_bind(bed)
                .push_bind(v.device_id.as_str())
                .push_bind(i64::from(v.metric_mdc))
                .push_bind(loinc_of(v.metric_mdc))
                .push_bind(value)
                .push_bind(enumerated)
                .push_bind(v.unit_ucum.as_str())
                .push_bind(components_json(v))
                .push_bind(quality_mask(v))
                .push_bind(v.measured_at_unix_ms)
                .push_bind(now)
                .push_bind(encounter)
                .push_bind(authority);
        });
        qb.build().execute(&mut *tx).await?;
    }
    // The visits named, for the encounter search (migration 0012); those this process saw committed are not sent
    // (`StoredKeys`), any other known one costs one primary-key probe.
    let encounters =
        keys.unseen_encounters(super::encounter_patients(vitals.iter().map(|(_, v)| *v)));
    for chunk in encounters.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO encounters (visit_number, assigning_authority, patient_id) ",
        );
        qb.push_values(chunk, |mut b, (visit, authority, patient)| {
            b.push_bind(*visit)
                .push_bind(*authority)
                .push_bind(*patient);
        });
        qb.build().execute(&mut *tx).await?;
    }
    // Each patient's codes (migration 0013), likewise.
    let codes = keys.unseen_codes(super::patient_codes(vitals.iter().map(|(_, v)| *v)));
    for chunk in codes.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT OR IGNORE INTO patient_codes (patient_id, loinc) ");
        qb.push_values(chunk, |mut b, (patient, loinc)| {
            b.push_bind(*patient).push_bind(*loinc);
        });
        qb.build().execute(&mut *tx).await?;
    }
    for (_, p) in &fresh {
        match p {
            Payload::Vital(_) => {}
            Payload::Device(d) => {
                let (ward, bed) = ward_bed(d);
                sqlx::query(
                    "INSERT INTO devices (device_id, edge_id, kind, manufacturer, model, serial, udi, ward, bed, state, reported_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (device_id) DO UPDATE SET edge_id = excluded.edge_id, kind = excluded.kind,
                        manufacturer = excluded.manufacturer, model = excluded.model, serial = excluded.serial,
                        udi = excluded.udi, ward = excluded.ward, bed = excluded.bed, state = excluded.state,
                        reported_at_ms = excluded.reported_at_ms
                     WHERE excluded.reported_at_ms >= devices.reported_at_ms",
                )
                .bind(&d.device_id)
                .bind(edge_id)
                .bind(i64::from(d.kind))
                .bind(&d.manufacturer)
                .bind(&d.model)
                .bind(&d.serial_number)
                .bind(&d.udi)
                .bind(ward)
                .bind(bed)
                .bind(i64::from(d.state))
                .bind(d.reported_at_unix_ms)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
    }
    // Infusion, alarm and risk events with their search-index columns (migration 0005), multi-row inserts.
    let others: Vec<(&IngestItem, &Payload)> = fresh
        .iter()
        .filter(|(_, p)| !matches!(p, Payload::Vital(_) | Payload::Device(_)))
        .map(|(it, p)| (*it, *p))
        .collect();
    for chunk in others.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO edge_events (edge_id, sequence, kind, patient_id, ward, payload, received_at_ms, event_ms, \
             code, bed, device_id, alarm_id, alarm_priority, alarm_state, order_id, news2_total, news2_response) ",
        );
        qb.push_values(chunk, |mut b, (it, p)| {
            let (patient, ward) = super::patient_ward(p);
            let ix = super::events::event_index(p);
            b.push_bind(edge_id)
                .push_bind(i64::try_from(it.sequence).unwrap_or(i64::MAX))
                .push_bind(event_kind(p))
                .push_bind(patient)
                .push_bind(ward)
                .push_bind(other_payload_bytes(p))
                .push_bind(now)
                .push_bind(ix.event_ms)
                .push_bind(ix.code)
                .push_bind(ix.bed)
                .push_bind(ix.device_id)
                .push_bind(ix.alarm_id)
                .push_bind(ix.alarm_priority)
                .push_bind(ix.alarm_state)
                .push_bind(ix.order_id)
                .push_bind(ix.news2_total)
                .push_bind(ix.news2_response);
        });
        qb.build().execute(&mut *tx).await?;
    }
    // The (device, metric) channels this batch shows, one upsert (migration 0005).
    let channels = super::events::channels_of(&fresh);
    for chunk in channels.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO device_channels (device_id, metric_mdc, unit, patient_id, ward, bed, first_seen_ms, last_seen_ms) ",
        );
        qb.push_values(chunk, |mut b, c| {
            b.push_bind(c.device_id.as_str())
                .push_bind(c.metric_mdc)
                .push_bind(c.unit.as_str())
                .push_bind(c.patient_id.as_str())
                .push_bind(c.ward.as_str())
                .push_bind(c.bed.as_str())
                .push_bind(c.first_seen_ms)
                .push_bind(c.last_seen_ms);
        });
        qb.push(super::events::CHANNEL_UPSERT_TAIL);
        qb.build().execute(&mut *tx).await?;
    }
    // Topic-based subscriptions: their events commit with the data that triggered them.
    super::subscriptions::record_sqlite(&mut tx, edge_id, &fresh, now).await?;
    tx.commit().await?;
    keys.remember(&encounters, &codes);
    let replayed = items
        .iter()
        .zip(&claimed_items)
        .filter(|(_, c)| !**c)
        .map(|(it, _)| it.sequence)
        .collect();
    let stored = u32::try_from(fresh.len()).unwrap_or(u32::MAX);
    Ok(IngestOutcome {
        stored,
        replayed,
        claimed: claimed_items,
    })
}

pub(super) fn other_payload_bytes(p: &Payload) -> Vec<u8> {
    wardwatch_proto::v1::EdgeEvent {
        payload: Some(p.clone()),
        ..Default::default()
    }
    .encode_to_vec()
}

pub(super) async fn search_vitals(
    pool: &SqlitePool,
    q: &VitalQuery,
    patients: &[String],
) -> Result<Vec<VitalRow>, StorageError> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(super::VITAL_COLUMNS);
    super::push_vital_filters!(&mut qb, q, patients);
    super::push_vital_page!(&mut qb, q);
    let rows = qb.build().fetch_all(pool).await?;
    rows.iter().map(super::vital_from_sqlite).collect()
}

pub(super) async fn device(pool: &SqlitePool, id: &str) -> Result<Option<DeviceRow>, StorageError> {
    let row = sqlx::query(super::DEVICE_SELECT)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(super::device_from_sqlite).transpose()
}
