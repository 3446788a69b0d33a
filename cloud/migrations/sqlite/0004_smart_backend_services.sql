-- SMART on FHIR Backend Services and the AuditEvent API (SQLite). Keep in step with
-- ../postgres/0004_smart_backend_services.sql.

-- Access tokens issued by the token endpoint. Only the SHA-256 of a token is kept, never the token itself, so a
-- copy of the database does not hand out API access. Kept after expiry until pruned, so that an expired token is
-- answered "expired" rather than "unknown".
CREATE TABLE access_tokens (
    token_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX access_tokens_expiry ON access_tokens (expires_at_ms);

-- Replay cache of client-assertion ids (jti): a (client, jti) pair is refused while its assertion could still be
-- valid. It lives in the database, not in memory, so a restart of the cloud does not re-open the window.
CREATE TABLE assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX assertion_jtis_expiry ON assertion_jtis (expires_at_ms);

-- Why a request was refused (OAuth error, scope), shown as AuditEvent.outcomeDesc.
ALTER TABLE audit_events ADD COLUMN detail TEXT NOT NULL DEFAULT '';
-- GET [base]/AuditEvent?date=…: newest first, optionally bounded in time.
CREATE INDEX audit_events_at ON audit_events (at_ms, id);
