-- Wardwatch cloud schema v13 (PostgreSQL). Keep in step with ../sqlite/0013_patient_codes.sql.
--
-- One patient index on `vital_signs` instead of two. Every Observation row maintained `(patient_id, loinc, id)` and
-- `(patient_id, measured_at_ms, id)`; the per-code index was the largest single cost of ingest (psql `\copy` into
-- vital_signs' indexes: about 90,000 rows/s with both, 135,000 with only the time index; docs/benchmarks.md).
-- It served one thing the time index does not: a patient's search in "newest stored" (id) order. A search that
-- names a patient or a stay now defaults to latest measurement first (cloud/src/api.rs), which the time index
-- serves with or without a code (a code is a filter on its rows, about one row in five for a monitored patient).
--
-- What a filter cannot do cheaply is find a code the patient has no sample of: it would read the patient's whole
-- history. `patient_codes` records each (patient, LOINC) pair the ingest has stored, once, so that a search for an
-- absent code (and `$lastn` over every vital-sign code) answers without reading `vital_signs`. Metrics without a
-- LOINC code are recorded under ''. Rows are never removed: a pair whose samples are gone costs one empty search.
CREATE TABLE patient_codes (
    patient_id TEXT NOT NULL,
    loinc TEXT NOT NULL,
    PRIMARY KEY (patient_id, loinc)
);

INSERT INTO patient_codes (patient_id, loinc)
SELECT DISTINCT patient_id, loinc FROM vital_signs;

-- Dropping the partitioned parent's index drops every day partition's copy of it.
DROP INDEX vital_signs_patient_loinc;
