-- The durable log: one row per event, written once whatever the number of subscribers.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    account     TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    entity_key  TEXT,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    -- Publishing the same guid twice stores it once.
    UNIQUE (account, event_id)
);
CREATE INDEX events_by_account ON events (account, seq);
CREATE INDEX events_by_received ON events (received_at);

CREATE TABLE subscriptions (
    id               TEXT PRIMARY KEY,
    account          TEXT    NOT NULL,
    destination      TEXT    NOT NULL, -- JSON of model::Destination
    events           TEXT    NOT NULL, -- JSON array of event names
    topics           TEXT    NOT NULL, -- JSON array of topics
    format           TEXT    NOT NULL,
    secret           TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    -- Every event with seq <= cursor was delivered or moved to the retry set.
    cursor           INTEGER NOT NULL,
    disabled_code    TEXT,
    disabled_message TEXT,
    disabled_at      INTEGER,
    failing_since    INTEGER,
    last_success_at  INTEGER,
    -- Deliveries that succeeded at once; they get no attempt record of their own.
    delivered        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX subscriptions_by_account ON subscriptions (account, created_at);

-- The retry set: deliveries that failed and wait for their next attempt, and (dead_at set)
-- the dead letters that used up their retries. A successful delivery never gets a row.
CREATE TABLE retries (
    subscription_id TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    attempts        INTEGER NOT NULL, -- attempts made so far
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    dead_at         INTEGER,
    PRIMARY KEY (subscription_id, seq)
);
CREATE INDEX retries_due ON retries (next_attempt_at) WHERE dead_at IS NULL;

-- What happened at each failed attempt and each retry, for the deliveries API.
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    subscription_id TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    at              INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,
    status          INTEGER,
    error           TEXT,
    latency_ms      INTEGER NOT NULL,
    response        TEXT,
    next_attempt_at INTEGER
);
CREATE INDEX attempts_by_subscription ON attempts (subscription_id, id);

-- API keys, stored as SHA-256 hashes. account NULL is the admin token.
CREATE TABLE api_keys (
    hash       TEXT PRIMARY KEY,
    account    TEXT,
    prefix     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
