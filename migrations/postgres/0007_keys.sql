-- Keys with a lifecycle: an id to list and revoke them by, a name, scopes (JSON array of
-- publish, read, manage), limits on what they may publish (JSON arrays of event names
-- and topics; both NULL: anything), an expiry and when they were last used. Keys made
-- before this have every scope and no limit, as they had.
ALTER TABLE api_keys ADD COLUMN id TEXT;
ALTER TABLE api_keys ADD COLUMN name TEXT;
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '["publish","read","manage"]';
ALTER TABLE api_keys ADD COLUMN events TEXT;
ALTER TABLE api_keys ADD COLUMN topics TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
-- The hash is of a long random key: its start names the key without revealing it.
UPDATE api_keys SET id = 'key_' || substr(hash, 1, 16);
CREATE UNIQUE INDEX api_keys_by_id ON api_keys (id);
CREATE INDEX api_keys_by_account ON api_keys (account, created_at);

-- Signing secrets with a lifecycle: a subscription signed with ed25519 keeps its public
-- key (whpk_…) beside its secret key (in `secret`); during a rotation's overlap the
-- previous secret signs too, until previous_until.
ALTER TABLE subscriptions ADD COLUMN public_key TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_secret TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_until BIGINT;
