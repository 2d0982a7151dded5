-- pm-realtime schema (PostgreSQL): presence last-seen times and per-user notifications. Mirrors
-- migrations/sqlite/0001_realtime.sql with native types (UUID ids, TIMESTAMPTZ timestamps).
-- Tables are prefixed `rt_` and tracked in `_pm_realtime_migrations`, so they sit beside
-- pm-core's and pm-permissions' tables in one database. Collaborative documents get their own
-- `rt_doc_*` tables in a later migration (0002). No foreign keys into pm-core's tables: a host
-- may keep realtime state in another database.

CREATE TABLE rt_last_seen (
    user_id   UUID PRIMARY KEY,
    last_seen TIMESTAMPTZ NOT NULL
);

CREATE TABLE rt_notifications (
    id         UUID PRIMARY KEY,         -- UUIDv7: newest first = id descending
    user_id    UUID NOT NULL,
    kind       TEXT NOT NULL,
    event_id   UUID NOT NULL,
    seq        BIGINT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id   UUID,
    org_id     UUID,
    project_id UUID,
    task_id    UUID,
    summary    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    read_at    TIMESTAMPTZ,
    UNIQUE (user_id, event_id)           -- one notification per user and event: idempotency
);
CREATE INDEX rt_notifications_user ON rt_notifications (user_id, id);
CREATE INDEX rt_notifications_unread ON rt_notifications (user_id, id) WHERE read_at IS NULL;
