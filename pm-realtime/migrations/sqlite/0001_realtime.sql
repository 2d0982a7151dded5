-- pm-realtime schema (SQLite): presence last-seen times and per-user notifications. Tables are
-- prefixed `rt_` and tracked in `_pm_realtime_migrations`, so they sit beside pm-core's and
-- pm-permissions' tables in one database. Collaborative documents get their own `rt_doc_*`
-- tables in a later migration (0002).
--
-- Conventions (as pm-core's SQLite schema): ids are hyphenated UUID text, timestamps integer
-- microseconds since the epoch. No foreign keys into pm-core's tables: a host may keep realtime
-- state in another database.

CREATE TABLE rt_last_seen (
    user_id   TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL
);

CREATE TABLE rt_notifications (
    id         TEXT PRIMARY KEY,         -- UUIDv7: newest first = id descending
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id   TEXT,
    org_id     TEXT,
    project_id TEXT,
    task_id    TEXT,
    summary    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    read_at    INTEGER,
    UNIQUE (user_id, event_id)           -- one notification per user and event: idempotency
);
CREATE INDEX rt_notifications_user ON rt_notifications (user_id, id);
CREATE INDEX rt_notifications_unread ON rt_notifications (user_id, id) WHERE read_at IS NULL;
