-- Full resyncs (catalog mirroring, seed 001): a run sends one subscription the latest event
-- of every live entity of some types, page by page in (type, id) order. The position is
-- saved with the run, in the same commit as the retries of the deliveries before it, so a
-- restart resumes after the last saved page.
CREATE TABLE resync_runs (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT    NOT NULL,
    account         TEXT    NOT NULL,
    types           TEXT    NOT NULL, -- JSON array of entity types, sorted: the order of the run
    snapshot_seq    INTEGER NOT NULL, -- the log head when the run started
    total           INTEGER NOT NULL, -- live entities the run was to send, counted at its start
    sent            INTEGER NOT NULL, -- entities sent so far (delivered or in the retry set)
    position_type   TEXT,             -- the type being sent; NULL once completed
    position_id     TEXT    NOT NULL, -- every entity of position_type up to this id was sent
    started_at      INTEGER NOT NULL,
    completed_at    INTEGER
);
CREATE INDEX resync_runs_by_subscription ON resync_runs (subscription_id, started_at);
-- At most one running resync per subscription: a second one is refused (409).
CREATE UNIQUE INDEX resync_runs_running ON resync_runs (subscription_id) WHERE completed_at IS NULL;

-- A resync delivery that failed waits in the retry set like any other, and its retries
-- still carry the resync marking: the run id is part of the key, since the same event can
-- wait both as an incremental delivery ('') and as a resync copy. Rebuilt (SQLite cannot
-- change a primary key in place).
CREATE TABLE retries_with_resync (
    subscription_id TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    resync_id       TEXT    NOT NULL DEFAULT '', -- '' for an incremental delivery
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    dead_at         INTEGER,
    PRIMARY KEY (subscription_id, seq, resync_id)
);
INSERT INTO retries_with_resync (subscription_id, seq, resync_id, attempts, next_attempt_at, last_error, dead_at)
    SELECT subscription_id, seq, '', attempts, next_attempt_at, last_error, dead_at FROM retries;
DROP TABLE retries;
ALTER TABLE retries_with_resync RENAME TO retries;
CREATE INDEX retries_due ON retries (next_attempt_at) WHERE dead_at IS NULL;

ALTER TABLE attempts ADD COLUMN resync_id TEXT; -- NULL for an incremental delivery
