-- Wardwatch cloud schema v2 (SQLite). Keep in step with ../postgres/0002_sequence_ledger.sql.
--
-- Exactly-once is per (edge, sequence). The per-edge UNIQUE idempotency-key constraint is dropped (see the
-- PostgreSQL migration for why); SQLite cannot drop a table constraint, so the ledger is rebuilt.
CREATE TABLE sync_ledger_v2 (
    edge_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    reason TEXT,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (edge_id, sequence)
);
INSERT INTO sync_ledger_v2 SELECT edge_id, sequence, idempotency_key, kind, outcome, reason, received_at_ms
    FROM sync_ledger;
DROP TABLE sync_ledger;
ALTER TABLE sync_ledger_v2 RENAME TO sync_ledger;

DROP INDEX vital_signs_patient_mdc;

-- Each edge's acknowledged watermark: every sequence up to it was processed and acknowledged in batch order.
-- Batches of one stream may commit out of order (cloud/src/sync.rs), so MAX(sequence) of the ledger is not it.
CREATE TABLE sync_watermarks (
    edge_id TEXT PRIMARY KEY,
    acked_through BIGINT NOT NULL
);
INSERT INTO sync_watermarks (edge_id, acked_through)
    SELECT edge_id, MAX(sequence) FROM sync_ledger GROUP BY edge_id;
