-- Wardwatch cloud schema v7 (PostgreSQL). Keep in step with ../sqlite/0007_patient_time_index.sql.
--
-- A patient's vitals by time: the EHR's commonest search ("this patient's last 24 hours", newest first, and
-- its next pages) is Observation?patient=…&date=ge…&_sort=-date. Without this index it read every row the
-- patient ever had (the (patient_id, loinc, id) index does not order by time) and sorted them; with 10 million
-- rows, 5,000 per patient, a 50-row page took p95 46 ms, with it 7.7 ms (docs/benchmarks.md, bench_fhir_search).
CREATE INDEX vital_signs_patient_time ON vital_signs (patient_id, measured_at_ms, id);
