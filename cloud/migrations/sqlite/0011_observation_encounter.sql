-- Wardwatch cloud schema v11 (SQLite). Keep in step with ../postgres/0011_observation_encounter.sql.
--
-- The patient's encounter (visit) of each vital sign, when the edge knows it (wire field VitalSign.encounter: HL7
-- PV1-19, the MQTT payload's `encounter`, the simulator), so the FHIR Observation can carry `encounter` and an EHR
-- can search `Observation?encounter:identifier=<system>|<visit number>`. Both columns are NULL when the encounter
-- is not known (every row stored before this migration).
ALTER TABLE vital_signs ADD COLUMN encounter TEXT;
ALTER TABLE vital_signs ADD COLUMN encounter_authority TEXT;

-- One stay's vitals by time. Partial: rows without an encounter cost ingest nothing here.
CREATE INDEX vital_signs_encounter_time ON vital_signs (encounter, measured_at_ms, id) WHERE encounter IS NOT NULL;
