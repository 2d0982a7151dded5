-- OAuth 2 connections (authorization code + PKCE). Both tables hold sealed values only.

-- A pending authorization: one row per `connect`, taken (deleted) by the callback, so a state
-- is used at most once. The state itself is not stored, only its SHA-256 (hex); the PKCE
-- verifier is sealed under a context naming that hash.
CREATE TABLE int_oauth_states (
    state_hash     TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    user_id        TEXT NOT NULL,
    verifier       TEXT NOT NULL,        -- sealed PKCE code_verifier
    redirect_uri   TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX int_oauth_states_expiry ON int_oauth_states (expires_at);

-- An integration's tokens: one row per integration. `key_id` repeats the id of the key that
-- sealed them, so an operator rotating PM_ENCRYPTION_KEY can find rows still under an old key.
CREATE TABLE int_oauth_tokens (
    integration_id TEXT PRIMARY KEY REFERENCES int_integrations (id) ON DELETE CASCADE,
    access_token   TEXT NOT NULL,        -- sealed
    refresh_token  TEXT,                 -- sealed
    token_type     TEXT NOT NULL,
    scopes         TEXT NOT NULL,        -- JSON array
    expires_at     INTEGER,
    key_id         TEXT NOT NULL,
    status         TEXT NOT NULL,        -- active | needs_reconnect
    status_reason  TEXT,
    connected_by   TEXT NOT NULL,
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
