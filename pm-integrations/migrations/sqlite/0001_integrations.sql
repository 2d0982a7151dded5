-- pm-integrations schema (SQLite). Tables are prefixed `int_` and tracked in
-- `_pm_integrations_migrations`, so they sit beside pm-core's, pm-permissions' and pm-realtime's
-- tables in one database.
--
-- Conventions (as pm-core's SQLite schema): ids are hyphenated UUID text, timestamps integer
-- microseconds since the epoch, JSON as text. No foreign keys into pm-core's tables (a host may
-- keep integration state in another database); foreign keys between our own tables cascade.

CREATE TABLE int_providers (
    key          TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    capabilities TEXT NOT NULL,          -- JSON array
    enabled      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE int_integrations (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL,
    project_id TEXT NOT NULL,
    provider   TEXT NOT NULL,
    name       TEXT NOT NULL,
    config     TEXT NOT NULL,            -- JSON
    mappings   TEXT NOT NULL,            -- JSON
    enabled    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX int_integrations_org ON int_integrations (org_id, id);

-- Sealed only: `sealed` is `v1.<key id>.<base64url(nonce|ciphertext|tag)>`.
CREATE TABLE int_credentials (
    id             TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    sealed         TEXT NOT NULL,
    expires_at     INTEGER,
    version        INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (integration_id, kind)
);

CREATE TABLE int_inbound (
    id             TEXT PRIMARY KEY,     -- UUIDv7: queue order
    provider       TEXT NOT NULL,
    integration_id TEXT NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    delivery_id    TEXT NOT NULL,
    headers        TEXT NOT NULL,        -- JSON [[name, value], ...]
    body           BLOB NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    available_at   INTEGER NOT NULL,
    last_error     TEXT,
    received_at    INTEGER NOT NULL,
    UNIQUE (provider, delivery_id)       -- replay protection
);
CREATE INDEX int_inbound_due ON int_inbound (available_at, id) WHERE status = 'pending';

CREATE TABLE int_mappings (
    id                 TEXT PRIMARY KEY,
    integration_id     TEXT NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    task_id            TEXT NOT NULL,
    external_id        TEXT NOT NULL,
    external_url       TEXT,
    base               TEXT NOT NULL,    -- JSON object: field -> value at the last sync
    remote_updated_at  INTEGER,
    pushed_fingerprint TEXT,
    version            INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (integration_id, external_id),
    UNIQUE (integration_id, task_id)
);

CREATE TABLE int_conflicts (
    id             TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    mapping_id     TEXT NOT NULL REFERENCES int_mappings (id) ON DELETE CASCADE,
    task_id        TEXT NOT NULL,
    field          TEXT NOT NULL,
    base           TEXT NOT NULL,        -- JSON
    local          TEXT NOT NULL,        -- JSON
    remote         TEXT NOT NULL,        -- JSON
    resolved       TEXT NOT NULL,        -- JSON
    winner         TEXT NOT NULL,
    policy         TEXT NOT NULL,        -- JSON
    detected_at    INTEGER NOT NULL,
    resolved_at    INTEGER
);
CREATE INDEX int_conflicts_integration ON int_conflicts (integration_id, id);

-- Redacted before insert (`Redacted`); kept when the integration is deleted (audit trail).
CREATE TABLE int_logs (
    id             TEXT PRIMARY KEY,
    integration_id TEXT,
    provider       TEXT NOT NULL,
    direction      TEXT NOT NULL,
    operation      TEXT NOT NULL,
    ok             INTEGER NOT NULL,
    detail         TEXT NOT NULL,        -- JSON
    at             INTEGER NOT NULL
);
CREATE INDEX int_logs_integration ON int_logs (integration_id, id);

CREATE TABLE int_subscriptions (
    id                   TEXT PRIMARY KEY,
    org_id               TEXT NOT NULL,
    project_id           TEXT,
    url                  TEXT NOT NULL,
    events               TEXT NOT NULL,  -- JSON array of patterns
    description          TEXT NOT NULL,
    secrets              TEXT NOT NULL,  -- sealed JSON array of whsec_ secrets
    enabled              INTEGER NOT NULL,
    disabled_reason      TEXT,
    consecutive_failures INTEGER NOT NULL,
    version              INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX int_subscriptions_org ON int_subscriptions (org_id, id);

CREATE TABLE int_outbound (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES int_subscriptions (id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL,
    event_seq       INTEGER NOT NULL,
    event_kind      TEXT NOT NULL,
    payload         TEXT NOT NULL,       -- JSON
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    available_at    INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (subscription_id, event_id)   -- enqueueing is idempotent
);
CREATE INDEX int_outbound_due ON int_outbound (available_at, id) WHERE status = 'pending';
CREATE INDEX int_outbound_subscription ON int_outbound (subscription_id, id);

-- Durable event-log cursors of this crate's consumers (the outbound webhook fan-out).
CREATE TABLE int_cursors (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
