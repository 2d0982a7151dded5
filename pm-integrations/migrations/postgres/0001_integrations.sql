-- pm-integrations schema (PostgreSQL). Tables are prefixed `int_` and tracked in
-- `_pm_integrations_migrations`, so they sit beside pm-core's, pm-permissions' and pm-realtime's
-- tables in one database.
--
-- Conventions (as pm-core's PostgreSQL schema): ids are UUID, timestamps timestamptz, JSON jsonb.
-- No foreign keys into pm-core's tables (a host may
-- keep integration state in another database); foreign keys between our own tables cascade.

CREATE TABLE int_providers (
    key          TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    capabilities JSONB NOT NULL,          -- JSON array
    enabled      BOOLEAN NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE int_integrations (
    id         UUID PRIMARY KEY,
    org_id     UUID NOT NULL,
    project_id UUID NOT NULL,
    provider   TEXT NOT NULL,
    name       TEXT NOT NULL,
    config     JSONB NOT NULL,            -- JSON
    mappings   JSONB NOT NULL,            -- JSON
    enabled    BOOLEAN NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX int_integrations_org ON int_integrations (org_id, id);

-- Sealed only: `sealed` is `v1.<key id>.<base64url(nonce|ciphertext|tag)>`.
CREATE TABLE int_credentials (
    id             UUID PRIMARY KEY,
    integration_id UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    sealed         TEXT NOT NULL,
    expires_at     TIMESTAMPTZ,
    version        BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (integration_id, kind)
);

CREATE TABLE int_inbound (
    id             UUID PRIMARY KEY,     -- UUIDv7: queue order
    provider       TEXT NOT NULL,
    integration_id UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    delivery_id    TEXT NOT NULL,
    headers        JSONB NOT NULL,        -- JSON [[name, value], ...]
    body           BYTEA NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    available_at   TIMESTAMPTZ NOT NULL,
    last_error     TEXT,
    received_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (provider, delivery_id)       -- replay protection
);
CREATE INDEX int_inbound_due ON int_inbound (available_at, id) WHERE status = 'pending';

CREATE TABLE int_mappings (
    id                 UUID PRIMARY KEY,
    integration_id     UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    task_id            UUID NOT NULL,
    external_id        TEXT NOT NULL,
    external_url       TEXT,
    base               JSONB NOT NULL,    -- JSON object: field -> value at the last sync
    remote_updated_at  TIMESTAMPTZ,
    pushed_fingerprint TEXT,
    version            BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    UNIQUE (integration_id, external_id),
    UNIQUE (integration_id, task_id)
);

CREATE TABLE int_conflicts (
    id             UUID PRIMARY KEY,
    integration_id UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    mapping_id     UUID NOT NULL REFERENCES int_mappings (id) ON DELETE CASCADE,
    task_id        UUID NOT NULL,
    field          TEXT NOT NULL,
    base           JSONB NOT NULL,        -- JSON
    local          JSONB NOT NULL,        -- JSON
    remote         JSONB NOT NULL,        -- JSON
    resolved       JSONB NOT NULL,        -- JSON
    winner         TEXT NOT NULL,
    policy         JSONB NOT NULL,        -- JSON
    detected_at    TIMESTAMPTZ NOT NULL,
    resolved_at    TIMESTAMPTZ
);
CREATE INDEX int_conflicts_integration ON int_conflicts (integration_id, id);

-- Redacted before insert (`Redacted`); kept when the integration is deleted (audit trail).
CREATE TABLE int_logs (
    id             UUID PRIMARY KEY,
    integration_id UUID,
    provider       TEXT NOT NULL,
    direction      TEXT NOT NULL,
    operation      TEXT NOT NULL,
    ok             BOOLEAN NOT NULL,
    detail         JSONB NOT NULL,        -- JSON
    at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX int_logs_integration ON int_logs (integration_id, id);

CREATE TABLE int_subscriptions (
    id                   UUID PRIMARY KEY,
    org_id               UUID NOT NULL,
    project_id           UUID,
    url                  TEXT NOT NULL,
    events               JSONB NOT NULL,  -- JSON array of patterns
    description          TEXT NOT NULL,
    secrets              TEXT NOT NULL,  -- sealed JSON array of whsec_ secrets
    enabled              BOOLEAN NOT NULL,
    disabled_reason      TEXT,
    consecutive_failures INTEGER NOT NULL,
    version              BIGINT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX int_subscriptions_org ON int_subscriptions (org_id, id);

CREATE TABLE int_outbound (
    id              UUID PRIMARY KEY,
    subscription_id UUID NOT NULL REFERENCES int_subscriptions (id) ON DELETE CASCADE,
    event_id        UUID NOT NULL,
    event_seq       BIGINT NOT NULL,
    event_kind      TEXT NOT NULL,
    payload         JSONB NOT NULL,       -- JSON
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    available_at    TIMESTAMPTZ NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (subscription_id, event_id)   -- enqueueing is idempotent
);
CREATE INDEX int_outbound_due ON int_outbound (available_at, id) WHERE status = 'pending';
CREATE INDEX int_outbound_subscription ON int_outbound (subscription_id, id);

-- Durable event-log cursors of this crate's consumers (the outbound webhook fan-out).
CREATE TABLE int_cursors (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
