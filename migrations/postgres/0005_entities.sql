-- Catalog mirroring (seed 001): per account, the latest event of every catalog entity and
-- whether it said the entity is gone (see migrations/sqlite/0005_entities.sql).
CREATE TABLE entities (
    account TEXT   NOT NULL,
    type    TEXT   NOT NULL,
    id      TEXT   NOT NULL,
    seq     BIGINT NOT NULL, -- the event that set this state (events.seq)
    deleted BIGINT NOT NULL, -- 1: its last event deleted it
    PRIMARY KEY (account, type, id)
);
