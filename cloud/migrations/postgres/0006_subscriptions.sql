-- FHIR R4 topic-based subscriptions (Subscriptions R5 Backport IG), PostgreSQL. Keep in step with
-- ../sqlite/0006_subscriptions.sql. See docs/subscriptions.md.

-- One row per Subscription. The delivery state lives here too, so a restart of the cloud resumes where it was:
-- events_since_start is the highest event number assigned (incremented in the ingest transaction that records
-- the event), delivered_through the highest one the endpoint acknowledged with a 2xx.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    filters TEXT NOT NULL,              -- JSON array of backport-filter-criteria strings, as given
    filter_patient TEXT,                -- NULL: any patient
    filter_ward TEXT,                   -- NULL: any ward
    filter_event TEXT,                  -- NULL: any event of the topic
    reason TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    headers TEXT NOT NULL,              -- JSON array of "Name: value"
    content TEXT NOT NULL,              -- empty | id-only | full-resource
    heartbeat_secs BIGINT NOT NULL,     -- 0: no heartbeats
    timeout_secs BIGINT NOT NULL,
    max_count BIGINT NOT NULL,
    end_ms BIGINT,                      -- NULL: no end
    status TEXT NOT NULL,               -- requested | active | error | off
    error TEXT,
    events_since_start BIGINT NOT NULL DEFAULT 0,
    delivered_through BIGINT NOT NULL DEFAULT 0,
    handshake_done BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,  -- consecutive failed attempts (the backoff exponent)
    next_attempt_ms BIGINT NOT NULL,
    last_sent_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX subscriptions_topic ON subscriptions (topic, status);

-- The events of each subscription, numbered 1, 2, ... without gaps, recorded in the same transaction as the
-- synced data that triggered them. Kept after delivery for $events until pruned.
CREATE TABLE subscription_events (
    subscription_id TEXT NOT NULL,
    event_number BIGINT NOT NULL,
    edge_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    focus_type TEXT NOT NULL,
    focus_id TEXT NOT NULL,
    patient_id TEXT,
    occurred_at_ms BIGINT NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, event_number)
);

-- The last NEWS2 response level seen per patient (0 below the medium threshold, 1 medium, 2 high), kept only
-- while a NEWS2 subscription exists: the NEWS2 topic fires when a patient's level rises to 1 or 2.
CREATE TABLE subscription_news2_levels (
    patient_id TEXT PRIMARY KEY,
    level BIGINT NOT NULL,
    computed_at_ms BIGINT NOT NULL
);
