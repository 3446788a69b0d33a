-- Issue 6, the full device mapping (sqlite). Keep in step with ../postgres/0005_device_mapping.sql.
-- Search-index columns of the non-vital events, extracted at ingest (same transaction) so that searches never
-- decode stored payloads. The payload itself stays the source of truth; (edge_id, sequence) stays the lineage.
--   event_ms       infusion measured_at, alarm changed_at, risk computed_at (Unix ms)
--   code           infusion: state (running, paused, ...); alarm: kind (vital-threshold, ...); risk: news2 | model
--   bed, device_id where the event happened and which device it concerns ('' when not known)
--   alarm_id, alarm_priority, alarm_state   alarms only (AlarmPriority / AlarmState values)
--   order_id       infusions only
--   news2_total, news2_response             NEWS2 scores only (News2Response value)
-- Rows stored before this migration have NULL index columns; Store::connect backfills them from the payload.
ALTER TABLE edge_events ADD COLUMN event_ms INTEGER;
ALTER TABLE edge_events ADD COLUMN code TEXT;
ALTER TABLE edge_events ADD COLUMN bed TEXT;
ALTER TABLE edge_events ADD COLUMN device_id TEXT;
ALTER TABLE edge_events ADD COLUMN alarm_id TEXT;
ALTER TABLE edge_events ADD COLUMN alarm_priority INTEGER;
ALTER TABLE edge_events ADD COLUMN alarm_state INTEGER;
ALTER TABLE edge_events ADD COLUMN order_id TEXT;
ALTER TABLE edge_events ADD COLUMN news2_total INTEGER;
ALTER TABLE edge_events ADD COLUMN news2_response INTEGER;

-- Searches: a patient's events of one kind and code in time order; one alarm's or one order's history.
CREATE INDEX edge_events_patient_kind ON edge_events (kind, patient_id, event_ms);
CREATE INDEX edge_events_kind_time ON edge_events (kind, event_ms);
CREATE INDEX edge_events_alarm ON edge_events (alarm_id, event_ms) WHERE alarm_id IS NOT NULL;
CREATE INDEX edge_events_order ON edge_events (order_id, event_ms) WHERE order_id IS NOT NULL;

-- The metrics (channels) each device reports, for DeviceMetric, Device search by patient and Location: one
-- row per (device, metric), upserted once per ingest batch; last_seen_ms moves in steps of at least a minute
-- (or when the patient, ward or bed changes) so that steady telemetry does not rewrite it every batch.
CREATE TABLE device_channels (
    device_id TEXT NOT NULL,
    metric_mdc INTEGER NOT NULL,
    unit TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric_mdc)
);
CREATE INDEX device_channels_patient ON device_channels (patient_id, device_id);
CREATE INDEX device_channels_location ON device_channels (ward, bed);
CREATE INDEX devices_location ON devices (ward, bed);
