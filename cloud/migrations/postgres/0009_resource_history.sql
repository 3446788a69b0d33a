-- Issue 6, resource history (PostgreSQL). Keep in step with ../sqlite/0009_resource_history.sql.
--
-- Every version of every Device, for vread and _history. `devices` keeps only the current description (the
-- newest DeviceInfo report; an older report never overwrites a newer one). Each change of that row is kept here
-- as the next version, numbered from 1 per device without gaps. The trigger runs inside the statement that
-- changed `devices`, so a version commits (or rolls back) with the ingest transaction that made it, and the
-- sync ledger's exactly-once claim makes it idempotent: a resent event is never written twice. An upsert that
-- changes nothing (the same report again, or an older one the WHERE clause refuses) makes no version.
-- Concurrent ingest transactions touching one device are serialised by the row lock on `devices`; the primary
-- key refuses (and rolls back, so the edge resends) anything that would number two versions alike.
--
-- Devices stored before this migration start with their current description as version 1: earlier reports
-- were overwritten and are not known.
CREATE TABLE device_versions (
    device_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    edge_id TEXT NOT NULL,
    kind BIGINT NOT NULL,
    manufacturer TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    udi TEXT NOT NULL,
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    state BIGINT NOT NULL,
    reported_at_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, version)
);

INSERT INTO device_versions (device_id, version, edge_id, kind, manufacturer, model, serial, udi, ward, bed, state,
                             reported_at_ms)
SELECT device_id, 1, edge_id, kind, manufacturer, model, serial, udi, ward, bed, state, reported_at_ms FROM devices;

CREATE FUNCTION wardwatch_record_device_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_versions (device_id, version, edge_id, kind, manufacturer, model, serial, udi, ward, bed,
                                 state, reported_at_ms)
    SELECT NEW.device_id, COALESCE(MAX(version), 0) + 1, NEW.edge_id, NEW.kind, NEW.manufacturer, NEW.model,
           NEW.serial, NEW.udi, NEW.ward, NEW.bed, NEW.state, NEW.reported_at_ms
    FROM device_versions WHERE device_id = NEW.device_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_version_insert AFTER INSERT ON devices
    FOR EACH ROW EXECUTE FUNCTION wardwatch_record_device_version();
CREATE TRIGGER devices_version_update AFTER UPDATE ON devices
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION wardwatch_record_device_version();

-- Alarm and order versions are the stored events themselves (edge_events), in the order the cloud stored them:
-- index that order per alarm and per order.
CREATE INDEX edge_events_alarm_stored ON edge_events (alarm_id, received_at_ms, sequence, edge_id)
    WHERE alarm_id IS NOT NULL;
CREATE INDEX edge_events_order_stored ON edge_events (order_id, received_at_ms, sequence, edge_id)
    WHERE order_id IS NOT NULL;
