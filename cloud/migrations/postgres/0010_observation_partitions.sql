-- Wardwatch cloud schema v10 (PostgreSQL). Keep in step with ../sqlite/0010_observation_partitions.sql.
--
-- Observations (vital_signs) partitioned by measured time: one partition per UTC day of measured_at_ms, created by
-- the cloud (cloud/src/storage/partitions.rs states the invariants), plus vital_signs_default for rows of days that
-- have none. Why: a day's rows and their indexes stay together, so ingest touches only the hot day's index pages,
-- searches with a date range prune whole days, and retention is dropping a day's table instead of a DELETE.
--
-- PostgreSQL requires every unique index of a partitioned table to include the partition key, so `id` is no longer
-- a primary key: it comes from a sequence and stays unique because only that sequence assigns it. (edge_id,
-- sequence) stays unique because the sync ledger admits each pair once, in the same transaction as the row.
--
-- Rows stored before this migration are kept without copying: the old table becomes the partition for everything
-- before the day after its newest row (vital_signs_legacy); an empty old table is dropped.

ALTER TABLE vital_signs RENAME TO vital_signs_legacy;
-- Its primary key becomes the plain id index every partition has (built when it is attached).
ALTER TABLE vital_signs_legacy DROP CONSTRAINT vital_signs_pkey;
ALTER INDEX vital_signs_patient_loinc RENAME TO vital_signs_legacy_patient_loinc;
ALTER INDEX vital_signs_lineage RENAME TO vital_signs_legacy_lineage;
ALTER INDEX vital_signs_patient_time RENAME TO vital_signs_legacy_patient_time;
ALTER TABLE vital_signs_legacy ALTER COLUMN id DROP IDENTITY;

CREATE SEQUENCE vital_signs_id_seq AS BIGINT;
SELECT setval('vital_signs_id_seq', COALESCE((SELECT max(id) FROM vital_signs_legacy), 0) + 1, false);

CREATE TABLE vital_signs (
    id BIGINT NOT NULL DEFAULT nextval('vital_signs_id_seq'),
    edge_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    patient_id TEXT NOT NULL,
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    device_id TEXT NOT NULL,
    metric_mdc BIGINT NOT NULL,
    loinc TEXT NOT NULL,
    value DOUBLE PRECISION,
    enumerated TEXT,
    unit TEXT NOT NULL,
    components TEXT,
    quality BIGINT NOT NULL,
    measured_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL
) PARTITION BY RANGE (measured_at_ms);
ALTER SEQUENCE vital_signs_id_seq OWNED BY vital_signs.id;

-- The newest-stored order (Observation search without _sort), per patient and code, lineage reads, and a patient's
-- vitals by time: the same keys as before, now one index per partition.
CREATE INDEX vital_signs_id ON vital_signs (id);
CREATE INDEX vital_signs_patient_loinc ON vital_signs (patient_id, loinc, id);
CREATE INDEX vital_signs_lineage ON vital_signs (edge_id, sequence);
CREATE INDEX vital_signs_patient_time ON vital_signs (patient_id, measured_at_ms, id);

CREATE TABLE vital_signs_default PARTITION OF vital_signs DEFAULT;

DO $$
DECLARE
    cutoff BIGINT;
BEGIN
    IF EXISTS (SELECT 1 FROM vital_signs_legacy) THEN
        SELECT (max(measured_at_ms) / 86400000 + 1) * 86400000 INTO cutoff FROM vital_signs_legacy;
        EXECUTE format(
            'ALTER TABLE vital_signs ATTACH PARTITION vital_signs_legacy FOR VALUES FROM (MINVALUE) TO (%s)',
            cutoff);
    ELSE
        DROP TABLE vital_signs_legacy;
    END IF;
END
$$;
