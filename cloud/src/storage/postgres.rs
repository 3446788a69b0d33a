//! PostgreSQL side of [`super::Store`]: each table written with one `INSERT .. SELECT FROM UNNEST(arrays)`
//! per batch, so a batch of thousands of events costs a handful of round trips.

use std::collections::HashSet;

use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use wardwatch_proto::v1::edge_event::Payload;

use super::{
    DeviceRow, IngestItem, IngestOutcome, OUTCOME_REJECTED, OUTCOME_STORED, StorageError,
    StoredKeys, VitalQuery, VitalRow, components_json, encounter_columns, event_kind, loinc_of,
    quality_mask, ward_bed,
};

fn seq(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

pub(super) async fn ingest(
    pool: &PgPool,
    edge_id: &str,
    items: &[IngestItem],
    stored: &StoredKeys,
) -> Result<IngestOutcome, StorageError> {
    // Almost every batch is new: claim its sequences with a plain insert first. A batch that holds a sequence
    // already in the ledger (a resend after a reconnect or a cloud restart) makes that insert fail on the ledger's
    // primary key before anything else is written; it is then stored again with the per-row claim, which skips
    // the stored sequences. The plain insert costs about half of `ON CONFLICT DO NOTHING RETURNING` per row
    // (docs/benchmarks.md).
    match ingest_claiming(pool, edge_id, items, Claim::AllNew, stored).await {
        Err(StorageError::Database(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("23505")
                && e.constraint() == Some("sync_ledger_pkey") =>
        {
            tracing::debug!(
                edge_id,
                "batch holds stored sequences; storing it row by row"
            );
            ingest_claiming(pool, edge_id, items, Claim::SkipStored, stored).await
        }
        other => other,
    }
}

/// How a batch claims its sequences in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Every sequence is new; a stored one fails the whole transaction (unique violation on the ledger).
    AllNew,
    /// Sequences already stored are skipped and reported as replayed.
    SkipStored,
}

async fn ingest_claiming(
    pool: &PgPool,
    edge_id: &str,
    items: &[IngestItem],
    claim: Claim,
    stored: &StoredKeys,
) -> Result<IngestOutcome, StorageError> {
    let now = wardwatch_proto::now_unix_ms();
    // Day partitions for this batch's Observations, before the transaction that writes them (creating one takes
    // locks that an open ingest transaction should not hold). A day known to exist costs nothing here.
    let days = super::partitions::days_to_create(
        items.iter().filter_map(|it| match &it.outcome {
            Ok(Payload::Vital(v)) => Some(v.measured_at_unix_ms),
            _ => None,
        }),
        now,
    );
    super::partitions::ensure_days(pool, &days).await?;
    let mut tx = pool.begin().await?;

    let n = items.len();
    let (mut seqs, mut keys, mut kinds, mut outcomes, mut reasons) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for it in items {
        seqs.push(seq(it.sequence));
        keys.push(it.idempotency_key.as_str());
        match &it.outcome {
            Ok(p) => {
                kinds.push(event_kind(p));
                outcomes.push(OUTCOME_STORED);
                reasons.push(None);
            }
            Err(r) => {
                kinds.push("rejected");
                outcomes.push(OUTCOME_REJECTED);
                reasons.push(Some(format!("{:?}: {}", r.reason, r.detail)));
            }
        }
    }
    let ledger_sql = match claim {
        Claim::AllNew => {
            "INSERT INTO sync_ledger (edge_id, sequence, idempotency_key, kind, outcome, reason, received_at_ms)
             SELECT $1, s, k, kd, o, r, $7 FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::int2[], $6::text[]) AS t(s, k, kd, o, r)"
        }
        Claim::SkipStored => {
            "INSERT INTO sync_ledger (edge_id, sequence, idempotency_key, kind, outcome, reason, received_at_ms)
             SELECT $1, s, k, kd, o, r, $7 FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::int2[], $6::text[]) AS t(s, k, kd, o, r)
             ON CONFLICT DO NOTHING RETURNING sequence"
        }
    };
    let claimed_rows = sqlx::query(ledger_sql)
        .bind(edge_id)
        .bind(&seqs)
        .bind(&keys)
        .bind(&kinds)
        .bind(&outcomes)
        .bind(&reasons)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    // Which items claimed their ledger entry now, computed once and used for both the data rows and the answer.
    let claimed_items: Vec<bool> = match claim {
        Claim::AllNew => vec![true; items.len()],
        Claim::SkipStored => {
            let mut claimed: HashSet<u64> = HashSet::with_capacity(claimed_rows.len());
            for row in &claimed_rows {
                let s: i64 = row.try_get(0)?;
                claimed.insert(u64::try_from(s).unwrap_or(0));
            }
            items
                .iter()
                .map(|it| claimed.contains(&it.sequence))
                .collect()
        }
    };
    let fresh: Vec<(&IngestItem, &Payload)> = items
        .iter()
        .zip(&claimed_items)
        .filter(|(_, c)| **c)
        .filter_map(|(it, _)| it.outcome.as_ref().ok().map(|p| (it, p)))
        .collect();

    // Vital signs: one UNNEST insert.
    let mut v_seq = Vec::new();
    let mut v_patient = Vec::new();
    let mut v_ward = Vec::new();
    let mut v_bed = Vec::new();
    let mut v_device = Vec::new();
    let mut v_mdc = Vec::new();
    let mut v_loinc = Vec::new();
    let mut v_value: Vec<Option<f64>> = Vec::new();
    let mut v_enum: Vec<Option<&str>> = Vec::new();
    let mut v_unit = Vec::new();
    let mut v_comp: Vec<Option<String>> = Vec::new();
    let mut v_quality = Vec::new();
    let mut v_measured = Vec::new();
    let mut v_encounter: Vec<(Option<&str>, Option<&str>)> = Vec::new();
    for (it, p) in &fresh {
        if let Payload::Vital(v) = p {
            let (ward, bed) = v
                .location
                .as_ref()
                .map(|l| (l.ward.as_str(), l.bed.as_str()))
                .unwrap_or(("", ""));
            let enumerated = (!v.enumerated.is_empty()).then_some(v.enumerated.as_str());
            v_seq.push(seq(it.sequence));
            v_patient.push(v.patient_id.as_str());
            v_ward.push(ward);
            v_bed.push(bed);
            v_device.push(v.device_id.as_str());
            v_mdc.push(i64::from(v.metric_mdc));
            v_loinc.push(loinc_of(v.metric_mdc));
            v_value.push(if enumerated.is_some() {
                None
            } else {
                Some(v.value)
            });
            v_enum.push(enumerated);
            v_unit.push(v.unit_ucum.as_str());
            v_comp.push(components_json(v));
            v_quality.push(quality_mask(v));
            v_measured.push(v.measured_at_unix_ms);
            v_encounter.push(encounter_columns(v));
        }
    }
    if !v_seq.is_empty() {
        // COPY, not INSERT: these rows never conflict (only sequences claimed above are written), and COPY is
        // PostgreSQL's fastest load path (docs/benchmarks.md compares the two).
        let mut data = Vec::with_capacity(v_seq.len() * 160);
        for i in 0..v_seq.len() {
            copy_text(&mut data, Some(edge_id));
            copy_field(&mut data, v_seq[i]);
            copy_text(&mut data, Some(v_patient[i]));
            copy_text(&mut data, Some(v_ward[i]));
            copy_text(&mut data, Some(v_bed[i]));
            copy_text(&mut data, Some(v_device[i]));
            copy_field(&mut data, v_mdc[i]);
            copy_text(&mut data, Some(v_loinc[i]));
            match v_value[i] {
                Some(v) if v.is_finite() => copy_field(&mut data, v),
                _ => data.extend_from_slice(b"\\N\t"),
            }
            copy_text(&mut data, v_enum[i]);
            copy_text(&mut data, Some(v_unit[i]));
            copy_text(&mut data, v_comp[i].as_deref());
            copy_field(&mut data, v_quality[i]);
            copy_field(&mut data, v_measured[i]);
            copy_field(&mut data, now);
            copy_text(&mut data, v_encounter[i].0);
            copy_text(&mut data, v_encounter[i].1);
            // Replace the last field's tab with the row's newline.
            if let Some(last) = data.last_mut() {
                *last = b'\n';
            }
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY vital_signs (edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, loinc, value, \
                 enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter, \
                 encounter_authority) FROM STDIN",
            )
            .await?;
        copy.send(data).await?;
        copy.finish().await?;
    }
    // The visits named, for the encounter search (migration 0012). Keys this process saw committed are not sent
    // (`StoredKeys`); any other known visit costs a primary-key probe and writes nothing (ON CONFLICT checks
    // before inserting); the keys are sorted, so concurrent batches insert new ones in one order.
    let encounters = stored.unseen_encounters(super::encounter_patients(fresh.iter().filter_map(
        |(_, p)| match p {
            Payload::Vital(v) => Some(v),
            _ => None,
        },
    )));
    if !encounters.is_empty() {
        let mut visits = Vec::with_capacity(encounters.len());
        let mut authorities = Vec::with_capacity(encounters.len());
        let mut patients = Vec::with_capacity(encounters.len());
        for (visit, authority, patient) in &encounters {
            visits.push(*visit);
            authorities.push(*authority);
            patients.push(*patient);
        }
        sqlx::query(
            "INSERT INTO encounters (visit_number, assigning_authority, patient_id)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&visits)
        .bind(&authorities)
        .bind(&patients)
        .execute(&mut *tx)
        .await?;
    }

    // Each patient's codes, for searches of a code the patient has no sample of (migration 0013); as above, a
    // known pair costs a primary-key probe and writes nothing.
    let codes = stored.unseen_codes(super::patient_codes(fresh.iter().filter_map(
        |(_, p)| match p {
            Payload::Vital(v) => Some(v),
            _ => None,
        },
    )));
    if !codes.is_empty() {
        let (patients, loincs): (Vec<&str>, Vec<&str>) = codes.iter().copied().unzip();
        sqlx::query(
            "INSERT INTO patient_codes (patient_id, loinc)
             SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&patients)
        .bind(&loincs)
        .execute(&mut *tx)
        .await?;
    }

    // Devices in device-id order: batches of one stream are stored concurrently (cloud/src/sync.rs), and two
    // transactions upserting the same devices in different orders could deadlock.
    let mut others: Vec<&(&IngestItem, &Payload)> = fresh
        .iter()
        .filter(|(_, p)| !matches!(p, Payload::Vital(_)))
        .collect();
    others.sort_by(|a, b| match (a.1, b.1) {
        (Payload::Device(x), Payload::Device(y)) => x.device_id.cmp(&y.device_id),
        (Payload::Device(_), _) => std::cmp::Ordering::Less,
        (_, Payload::Device(_)) => std::cmp::Ordering::Greater,
        _ => a.0.sequence.cmp(&b.0.sequence),
    });
    for (_, p) in others {
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
    // Infusion, alarm and risk events with their search-index columns (migration 0005): one UNNEST insert.
    let mut e_seq = Vec::new();
    let mut e_kind = Vec::new();
    let mut e_patient: Vec<Option<String>> = Vec::new();
    let mut e_ward: Vec<Option<String>> = Vec::new();
    let mut e_payload: Vec<Vec<u8>> = Vec::new();
    let mut e_ms = Vec::new();
    let mut e_code = Vec::new();
    let mut e_bed = Vec::new();
    let mut e_device = Vec::new();
    let mut e_alarm: Vec<Option<String>> = Vec::new();
    let mut e_prio: Vec<Option<i64>> = Vec::new();
    let mut e_state: Vec<Option<i64>> = Vec::new();
    let mut e_order: Vec<Option<String>> = Vec::new();
    let mut e_total: Vec<Option<i64>> = Vec::new();
    let mut e_resp: Vec<Option<i64>> = Vec::new();
    for (it, p) in &fresh {
        if matches!(p, Payload::Vital(_) | Payload::Device(_)) {
            continue;
        }
        let (patient, ward) = super::patient_ward(p);
        let ix = super::events::event_index(p);
        e_seq.push(seq(it.sequence));
        e_kind.push(event_kind(p));
        e_patient.push(patient);
        e_ward.push(ward);
        e_payload.push(super::sqlite::other_payload_bytes(p));
        e_ms.push(ix.event_ms);
        e_code.push(ix.code);
        e_bed.push(ix.bed);
        e_device.push(ix.device_id);
        e_alarm.push(ix.alarm_id);
        e_prio.push(ix.alarm_priority);
        e_state.push(ix.alarm_state);
        e_order.push(ix.order_id);
        e_total.push(ix.news2_total);
        e_resp.push(ix.news2_response);
    }
    if !e_seq.is_empty() {
        sqlx::query(
            "INSERT INTO edge_events (edge_id, sequence, kind, patient_id, ward, payload, received_at_ms, event_ms, code,
                 bed, device_id, alarm_id, alarm_priority, alarm_state, order_id, news2_total, news2_response)
             SELECT $1, s, k, pa, wa, pl, $17, ms, co, be, de, al, pr, st, od, tt, rs
             FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::int8[], $8::text[],
                         $9::text[], $10::text[], $11::text[], $12::int8[], $13::int8[], $14::text[], $15::int8[],
                         $16::int8[])
                  AS t(s, k, pa, wa, pl, ms, co, be, de, al, pr, st, od, tt, rs)",
        )
        .bind(edge_id)
        .bind(&e_seq)
        .bind(&e_kind)
        .bind(&e_patient)
        .bind(&e_ward)
        .bind(&e_payload)
        .bind(&e_ms)
        .bind(&e_code)
        .bind(&e_bed)
        .bind(&e_device)
        .bind(&e_alarm)
        .bind(&e_prio)
        .bind(&e_state)
        .bind(&e_order)
        .bind(&e_total)
        .bind(&e_resp)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // The (device, metric) channels this batch shows (migration 0005). New channels: INSERT .. DO NOTHING (no
    // row locks on existing ones). Known channels are updated only when due (a minute later, or moved to another
    // patient, ward or bed), and only rows no concurrent batch holds (SKIP LOCKED: that batch is writing the
    // same recent sighting), so concurrent batches of a stream neither wait on each other nor deadlock here.
    let channels = super::events::channels_of(&fresh);
    if !channels.is_empty() {
        let mut c_dev = Vec::with_capacity(channels.len());
        let mut c_mdc = Vec::with_capacity(channels.len());
        let mut c_unit = Vec::with_capacity(channels.len());
        let mut c_pat = Vec::with_capacity(channels.len());
        let mut c_ward = Vec::with_capacity(channels.len());
        let mut c_bed = Vec::with_capacity(channels.len());
        let mut c_first = Vec::with_capacity(channels.len());
        let mut c_last = Vec::with_capacity(channels.len());
        for c in &channels {
            c_dev.push(c.device_id.as_str());
            c_mdc.push(c.metric_mdc);
            c_unit.push(c.unit.as_str());
            c_pat.push(c.patient_id.as_str());
            c_ward.push(c.ward.as_str());
            c_bed.push(c.bed.as_str());
            c_first.push(c.first_seen_ms);
            c_last.push(c.last_seen_ms);
        }
        sqlx::query(
            "INSERT INTO device_channels (device_id, metric_mdc, unit, patient_id, ward, bed, first_seen_ms, last_seen_ms)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                                  $8::int8[])
             ON CONFLICT (device_id, metric_mdc) DO NOTHING",
        )
        .bind(&c_dev)
        .bind(&c_mdc)
        .bind(&c_unit)
        .bind(&c_pat)
        .bind(&c_ward)
        .bind(&c_bed)
        .bind(&c_first)
        .bind(&c_last)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "WITH t AS (SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                                             $7::int8[]) AS t(de, md, un, pa, wa, be, ls)),
                  due AS (SELECT c.device_id, c.metric_mdc, t.un, t.pa, t.wa, t.be, t.ls
                          FROM device_channels c JOIN t ON c.device_id = t.de AND c.metric_mdc = t.md
                          WHERE t.ls > c.last_seen_ms + 60000
                             OR (t.ls > c.last_seen_ms AND (t.pa <> c.patient_id OR t.wa <> c.ward OR t.be <> c.bed))
                          FOR UPDATE OF c SKIP LOCKED)
             UPDATE device_channels c SET unit = due.un, patient_id = due.pa, ward = due.wa, bed = due.be,
                    last_seen_ms = due.ls
             FROM due WHERE c.device_id = due.device_id AND c.metric_mdc = due.metric_mdc",
        )
        .bind(&c_dev)
        .bind(&c_mdc)
        .bind(&c_unit)
        .bind(&c_pat)
        .bind(&c_ward)
        .bind(&c_bed)
        .bind(&c_last)
        .execute(&mut *tx)
        .await?;
    }
    // Topic-based subscriptions: their events commit with the data that triggered them.
    super::subscriptions::record_postgres(&mut tx, edge_id, &fresh, now).await?;
    tx.commit().await?;
    stored.remember(&encounters, &codes);
    let replayed = items
        .iter()
        .zip(&claimed_items)
        .filter(|(_, c)| !**c)
        .map(|(it, _)| it.sequence)
        .collect();
    Ok(IngestOutcome {
        stored: u32::try_from(fresh.len()).unwrap_or(u32::MAX),
        replayed,
        claimed: claimed_items,
    })
}

pub(super) async fn search_vitals(
    pool: &PgPool,
    q: &VitalQuery,
    patients: &[String],
) -> Result<Vec<VitalRow>, StorageError> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(super::VITAL_COLUMNS);
    super::push_vital_filters!(&mut qb, q, patients);
    super::push_vital_page!(&mut qb, q);
    let rows = qb.build().fetch_all(pool).await?;
    rows.iter().map(super::vital_from_pg).collect()
}

pub(super) async fn device(pool: &PgPool, id: &str) -> Result<Option<DeviceRow>, StorageError> {
    let row = sqlx::query(super::DEVICE_SELECT)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(super::device_from_pg).transpose()
}

/// One COPY text-format field followed by a tab: `\N` for NULL, else the text with backslash, tab, newline and
/// carriage return escaped (PostgreSQL `COPY ... FROM STDIN`, text format).
fn copy_text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(b"\\N"),
        Some(t) => {
            for b in t.bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
    out.push(b'\t');
}

/// A number as a COPY field followed by a tab (Rust's `Display` of integers and finite floats is what
/// PostgreSQL's text input accepts, and a float's shortest round-trip form).
fn copy_field(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "{v}\t");
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_the_format_reserves() {
        let mut out = Vec::new();
        copy_text(&mut out, Some("a\tb\nc\\d\re"));
        copy_text(&mut out, None);
        copy_field(&mut out, 97.25f64);
        copy_field(&mut out, -12i64);
        assert_eq!(out, b"a\\tb\\nc\\\\d\\re\t\\N\t97.25\t-12\t".to_vec());
    }
}
