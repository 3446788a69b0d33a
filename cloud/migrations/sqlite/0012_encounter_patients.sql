-- Wardwatch cloud schema v12 (SQLite). Keep in step with ../postgres/0012_encounter_patients.sql.
--
-- `Observation?encounter:identifier=` is served from the patient's indexes instead of an index of its own.
-- Migration 0011's `vital_signs_encounter_time` index covered every sample whose source names a visit (the ward
-- simulator and every PV1-carrying HL7 feed do for all of them), and each sample's entry went into its own leaf
-- (consecutive samples belong to different visits): one more random-order B-tree on the ingest path, which cut
-- COPY into `vital_signs` from about 39,000 to 31,000 rows/s on the development machine (docs/benchmarks.md).
--
-- Instead, the ingest records each (visit, assigning authority, patient) it sees once here, and the search first
-- reads the visit's patients from this small table, then reads their vital signs through
-- `vital_signs_patient_time`/`vital_signs_patient_loinc`, keeping only rows whose `encounter` column matches.
-- A visit belongs to one patient, so the extra rows the patient index yields are only that patient's other stays.
--
-- `assigning_authority` is '' when the source gave none (a primary key column cannot be NULL).
CREATE TABLE encounters (
    visit_number TEXT NOT NULL,
    assigning_authority TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    PRIMARY KEY (visit_number, assigning_authority, patient_id)
);

INSERT INTO encounters (visit_number, assigning_authority, patient_id)
SELECT DISTINCT encounter, COALESCE(encounter_authority, ''), patient_id
FROM vital_signs WHERE encounter IS NOT NULL;

DROP INDEX vital_signs_encounter_time;
