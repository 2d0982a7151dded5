-- pm-server authentication schema (PostgreSQL), tracked in `_pm_server_migrations`. Mirrors
-- migrations/sqlite/0001_auth.sql with native types. Lives in the same database as pm-core's
-- tables (users are pm-core's). Secrets are never stored, only their SHA-256 (refresh/API/invite
-- tokens) or argon2id PHC string (passwords).

CREATE TABLE credentials (
    user_id       UUID PRIMARY KEY REFERENCES users (id),
    password_hash TEXT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- Rotating refresh tokens. A login starts a family; each refresh marks the presented token used
-- and adds its successor to the family. Presenting a used token revokes the whole family.
CREATE TABLE refresh_tokens (
    id         UUID PRIMARY KEY,
    family_id  UUID NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    token_hash BYTEA NOT NULL UNIQUE,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- Personal API tokens.
CREATE TABLE api_tokens (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    token_hash   BYTEA NOT NULL UNIQUE,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at);

-- Single-use registration invites (PM_REGISTRATION=invite).
CREATE TABLE invites (
    id         UUID PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    created_by UUID NOT NULL REFERENCES users (id),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);

-- Server-generated secrets: the JWT signing key when PM_JWT_SECRET is unset, shared by every
-- instance using this database.
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
