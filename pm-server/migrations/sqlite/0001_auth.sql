-- pm-server authentication schema (SQLite), tracked in `_pm_server_migrations`. Lives in the same
-- database as pm-core's tables (users are pm-core's). Ids are hyphenated lower-case UUID text;
-- timestamps are integer microseconds since the Unix epoch; secrets are never stored, only their
-- SHA-256 (refresh/API/invite tokens) or argon2id PHC string (passwords).

CREATE TABLE credentials (
    user_id       TEXT PRIMARY KEY REFERENCES users (id),
    password_hash TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- Rotating refresh tokens. A login starts a family; each refresh marks the presented token used
-- and adds its successor to the family. Presenting a used token revokes the whole family.
CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    token_hash BLOB NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- Personal API tokens.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at);

-- Single-use registration invites (PM_REGISTRATION=invite).
CREATE TABLE invites (
    id         TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    created_by TEXT NOT NULL REFERENCES users (id),
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    created_at INTEGER NOT NULL
);

-- Server-generated secrets (the JWT signing key when PM_JWT_SECRET is unset). SQLite deployments
-- keep the JWT secret in a file next to the database instead; the table exists so every backend
-- has the same schema.
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
