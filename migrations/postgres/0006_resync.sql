-- Full resyncs (catalog mirroring, seed 001); see migrations/sqlite/0006_resync.sql.
CREATE TABLE resync_runs (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT   NOT NULL,
    account         TEXT   NOT NULL,
    types           TEXT   NOT NULL, -- JSON array of entity types, sorted: the order of the run
    snapshot_seq    BIGINT NOT NULL, -- the log head when the run started
    total           BIGINT NOT NULL, -- live entities the run was to send, counted at its start
    sent            BIGINT NOT NULL, -- entities sent so far (delivered or in the retry set)
    position_type   TEXT,            -- the type being sent; NULL once completed
    position_id     TEXT   NOT NULL, -- every entity of position_type up to this id was sent
    started_at      BIGINT NOT NULL,
    completed_at    BIGINT
);
CREATE INDEX resync_runs_by_subscription ON resync_runs (subscription_id, started_at);
-- At most one running resync per subscription: a second one is refused (409).
CREATE UNIQUE INDEX resync_runs_running ON resync_runs (subscription_id) WHERE completed_at IS NULL;

-- A resync delivery that failed waits in the retry set with its run id ('' for an
-- incremental delivery), part of the key.
ALTER TABLE retries ADD COLUMN resync_id TEXT NOT NULL DEFAULT '';
ALTER TABLE retries DROP CONSTRAINT retries_pkey;
ALTER TABLE retries ADD PRIMARY KEY (subscription_id, seq, resync_id);

ALTER TABLE attempts ADD COLUMN resync_id TEXT; -- NULL for an incremental delivery
