-- How an account verifies the user tokens its apps send in CloudEvents
-- (data.userIdentifier). At most one row per account; no row: tokens are not verified,
-- only replaced by a keyed hash.
CREATE TABLE token_verification (
    account        TEXT PRIMARY KEY,
    hs256_secret   TEXT,            -- needed in clear to verify HS256; never returned by the API
    public_keys    TEXT   NOT NULL, -- JSON array of PEM public keys (RSA: RS256, EC: ES256)
    issuer         TEXT,
    audience       TEXT,
    leeway_seconds BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

-- Secrets the server generates once and keeps: e.g. the HMAC key that turns user tokens
-- into stable pseudonyms.
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
