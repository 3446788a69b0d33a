-- Wardwatch cloud schema v11 (PostgreSQL). Keep in step with ../sqlite/0011_observation_encounter.sql.
--
-- The patient's encounter (visit) of each vital sign, when the edge knows it (wire field VitalSign.encounter: HL7
-- PV1-19, the MQTT payload's `encounter`, the simulator), so the FHIR Observation can carry `encounter` and an EHR
-- can search `Observation?encounter:identifier=<system>|<visit number>`.
--
-- Both columns are NULL when the encounter is not known (every row stored before this migration). Adding a
-- nullable column without a default changes only the catalogue, on the partitioned parent and, through it, on
-- every day partition (cloud/src/storage/partitions.rs creates later days LIKE the parent, so they have them too).
ALTER TABLE vital_signs
    ADD COLUMN encounter TEXT,
    ADD COLUMN encounter_authority TEXT;

-- One stay's vitals by time (the encounter search, its date range and _sort=date/-date paging). Partial: rows
-- without an encounter (every older row, and sources that send none) cost ingest nothing here, and the index
-- holds only rows it can find. Created on the parent, so each day partition has its own, as for the other indexes.
CREATE INDEX vital_signs_encounter_time ON vital_signs (encounter, measured_at_ms, id) WHERE encounter IS NOT NULL;
