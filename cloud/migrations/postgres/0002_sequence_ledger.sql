-- Wardwatch cloud schema v2 (PostgreSQL). Keep in step with ../sqlite/0002_sequence_ledger.sql.
--
-- Exactly-once is per (edge, sequence): the ledger's primary key, whose keys arrive in ascending order per edge
-- and so append to the right edge of the B-tree. The per-edge UNIQUE idempotency-key index is dropped: its keys
-- arrive in random order, and maintaining it cost more than every other index together (docs/benchmarks.md).
-- Idempotency keys are still recorded on every ledger row (lineage); collapsing a source's re-sends by key is
-- the edge outbox's job (edge/src/outbox.rs), before a sequence is assigned.
ALTER TABLE sync_ledger DROP CONSTRAINT sync_ledger_edge_id_idempotency_key_key;

-- Searches by MDC code are answered through the LOINC index (each MDC code has one LOINC code in the metric
-- table) with metric_mdc as a filter, so this second random-order index is not needed.
DROP INDEX vital_signs_patient_mdc;

-- Each edge's acknowledged watermark: every sequence up to it was processed and acknowledged in batch order.
-- Batches of one stream may commit out of order (cloud/src/sync.rs), so MAX(sequence) of the ledger is not it.
CREATE TABLE sync_watermarks (
    edge_id TEXT PRIMARY KEY,
    acked_through BIGINT NOT NULL
);
INSERT INTO sync_watermarks (edge_id, acked_through)
    SELECT edge_id, MAX(sequence) FROM sync_ledger GROUP BY edge_id;
