-- pm-server PWA tables (PostgreSQL): offline-sync op results and Web Push subscriptions. Tracked
-- in `_pm_server_migrations` with the auth tables.

-- The first result of every offline-sync op, per user: a replayed op_id is answered from here
-- (exactly-once). `result` is the JSON result object as first sent (text: kept byte for byte).
-- Pruned after 30 days.
CREATE TABLE sync_ops (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    op_id      UUID NOT NULL,
    result     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, op_id)
);
CREATE INDEX sync_ops_created ON sync_ops (created_at);

-- Web Push subscriptions (the browser's PushSubscription): one row per endpoint, owned by the
-- user who registered it last. Keys are base64url without padding, as browsers send them.
CREATE TABLE push_subscriptions (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint        TEXT NOT NULL UNIQUE,
    p256dh          TEXT NOT NULL,
    auth            TEXT NOT NULL,
    expiration_time BIGINT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id);
