-- Wardwatch cloud schema v1 (SQLite). Keep in step with ../postgres/0001_spine.sql.
CREATE TABLE edges (
    edge_id TEXT PRIMARY KEY,
    identity_uri TEXT NOT NULL,
    wards TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_at_ms INTEGER NOT NULL
);

-- One row per (edge, sequence) ever processed: the exactly-once guarantee.
CREATE TABLE sync_ledger (
    edge_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    reason TEXT,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (edge_id, sequence),
    UNIQUE (edge_id, idempotency_key)
);

CREATE TABLE vital_signs (
    id INTEGER PRIMARY KEY,
    edge_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    patient_id TEXT NOT NULL,
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    device_id TEXT NOT NULL,
    metric_mdc INTEGER NOT NULL,
    loinc TEXT NOT NULL,
    value REAL,
    enumerated TEXT,
    unit TEXT NOT NULL,
    components TEXT,
    quality INTEGER NOT NULL,
    measured_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE INDEX vital_signs_patient_loinc ON vital_signs (patient_id, loinc, id);
CREATE INDEX vital_signs_patient_mdc ON vital_signs (patient_id, metric_mdc, id);

CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    edge_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    manufacturer TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    udi TEXT NOT NULL,
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    state INTEGER NOT NULL,
    reported_at_ms INTEGER NOT NULL
);

-- Infusion, alarm and risk events, kept whole until their FHIR mappings land.
CREATE TABLE edge_events (
    edge_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    patient_id TEXT,
    ward TEXT,
    payload BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (edge_id, sequence)
);

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    query TEXT NOT NULL,
    patients TEXT NOT NULL,
    status INTEGER NOT NULL,
    remote TEXT NOT NULL
);
CREATE INDEX audit_events_client ON audit_events (client_id, at_ms);
