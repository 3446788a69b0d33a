-- Observation read (GET [base]/Observation/<edge>.<sequence>): the FHIR id is the sample's lineage, so the row is
-- found by (edge_id, sequence). Keys arrive in ascending order per edge, so this index appends cheaply.
CREATE INDEX vital_signs_lineage ON vital_signs (edge_id, sequence);
