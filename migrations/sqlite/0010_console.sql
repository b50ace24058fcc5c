-- Portal links: a one-time token (stored as its hash) that opens the console signed in
-- to one account; exchanged once for a session key, refused after expires_at.
CREATE TABLE portal_links (
    hash       TEXT PRIMARY KEY,
    account    TEXT    NOT NULL,
    scopes     TEXT    NOT NULL, -- JSON array: the scopes of the session it opens
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX portal_links_by_expiry ON portal_links (expires_at);
-- One event's delivery status reads its attempt records across subscriptions.
CREATE INDEX attempts_by_seq ON attempts (seq);
