-- Wardwatch cloud schema v8 (PostgreSQL): the model registry (issue 5). Keep in step with
-- ../sqlite/0008_model_registry.sql.
--
-- One row per uploaded model version, stored only after its ed25519 signature (by a configured release key), its
-- manifest and the sha256 of its model were verified (cloud/src/model_registry). The three files are kept as
-- the exact bytes uploaded: the signature is over the manifest's bytes, and an edge verifies all three again
-- before it runs anything. The model bytes live here, not in files beside the database: models are small (the
-- upload limit is [model_registry] max_model_bytes), one transaction stores a version whole or not at all, every
-- cloud instance on a shared PostgreSQL sees it, and database backups include it.
-- A version is immutable: the same (name, version) cannot be uploaded twice with other bytes.
CREATE TABLE model_versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    manifest BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    model BYTEA NOT NULL,
    size_bytes BIGINT NOT NULL,
    signed_by TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    uploaded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

-- Which version of each model a ward's edges run: ward → model name → version. Edges pull what is assigned to
-- their wards over the sync link (ModelDistribution).
CREATE TABLE model_assignments (
    ward_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    assigned_by TEXT NOT NULL,
    assigned_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ward_id, name),
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
);
