-- Wardwatch cloud schema v13 (SQLite). Keep in step with ../postgres/0013_patient_codes.sql, which says why:
-- one patient index on vital_signs (the time index), and a catalog of each patient's codes so that a search for a
-- code the patient has no sample of does not read the patient's whole history.
CREATE TABLE patient_codes (
    patient_id TEXT NOT NULL,
    loinc TEXT NOT NULL,
    PRIMARY KEY (patient_id, loinc)
) WITHOUT ROWID;

INSERT INTO patient_codes (patient_id, loinc)
SELECT DISTINCT patient_id, loinc FROM vital_signs;

DROP INDEX vital_signs_patient_loinc;
