-- Retention and compaction (issue 16): a background pass removes events past retention
-- that every subscription wanting them has received, keeping the latest event of each
-- catalog entity. These indexes let it look at one range of the log at a time.
CREATE INDEX entities_by_seq ON entities (seq);
CREATE INDEX retries_by_seq ON retries (seq);
-- Attempt records and dead letters have a retention of their own.
CREATE INDEX attempts_by_at ON attempts (at);
CREATE INDEX retries_dead ON retries (dead_at) WHERE dead_at IS NOT NULL;

-- Per account, the highest position the retention pass removed an event at: the log of
-- the account is complete after it (below it, only what was kept is left), so a query
-- or a replay from before it is answered `410 before_retention`.
CREATE TABLE retention_marks (
    account      TEXT PRIMARY KEY,
    removed_upto BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
