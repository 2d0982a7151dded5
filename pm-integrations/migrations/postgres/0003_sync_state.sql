-- Sync state beyond mappings: comment links, intents recorded before outbound side effects,
-- and the pushes the sync pusher gave up on.

-- A pm comment and the provider comment it is synced with (GitHub issue comments), so edits
-- and deletions apply on the other side and each side's echo is recognised: the fingerprints
-- are of the body as each side held it at the last sync (the provider's with our marker
-- stripped).
CREATE TABLE int_comment_links (
    id                  UUID PRIMARY KEY,
    integration_id      UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    task_id             UUID NOT NULL,
    comment_id          UUID NOT NULL,
    external_id         TEXT NOT NULL,   -- the item, e.g. octo/repo#7
    external_comment_id TEXT NOT NULL,
    local_fingerprint   TEXT NOT NULL,
    remote_fingerprint  TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (integration_id, comment_id),
    UNIQUE (integration_id, external_comment_id)
);

-- An outbound side effect recorded before it is attempted (an item create, a Slack message):
-- `pending` while in flight, `done` with its result after. A replay finds `done` and skips; a
-- `pending` row older than the caller's lease is a sender that died and may be taken over.
CREATE TABLE int_intents (
    key            TEXT PRIMARY KEY,
    integration_id UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,        -- pending | done
    result         JSONB,                -- once done
    started_at     TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ
);
CREATE INDEX int_intents_pending ON int_intents (integration_id, kind, started_at)
    WHERE status = 'pending';

-- Pushes the sync pusher gave up on after its retries: listed through the API until the next
-- successful sync of the task makes them moot.
CREATE TABLE int_sync_failures (
    id             UUID PRIMARY KEY,
    integration_id UUID NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    task_id        UUID,
    event_id       UUID NOT NULL,
    event_seq      BIGINT NOT NULL,
    event_kind     TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    error          TEXT NOT NULL,
    failed_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (integration_id, event_id)
);
CREATE INDEX int_sync_failures_integration ON int_sync_failures (integration_id, id);
