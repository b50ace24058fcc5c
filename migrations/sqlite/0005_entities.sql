-- Catalog mirroring (seed 001): per account, the latest event of every catalog entity
-- (asset, category, content panel, …) the log has seen, and whether it said the entity is
-- gone. Kept by the log writer in the same transaction as the event.
CREATE TABLE entities (
    account TEXT    NOT NULL,
    type    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    seq     INTEGER NOT NULL, -- the event that set this state (events.seq)
    deleted INTEGER NOT NULL, -- 1: its last event deleted it
    PRIMARY KEY (account, type, id)
) WITHOUT ROWID;
