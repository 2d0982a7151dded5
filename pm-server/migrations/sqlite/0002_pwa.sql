-- pm-server PWA tables (SQLite): offline-sync op results and Web Push subscriptions. Tracked in
-- `_pm_server_migrations` with the auth tables. Ids are hyphenated lower-case UUID text;
-- timestamps are integer microseconds since the Unix epoch.

-- The first result of every offline-sync op, per user: a replayed op_id is answered from here
-- (exactly-once). `result` is the JSON result object as first sent. Pruned after 30 days.
CREATE TABLE sync_ops (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    op_id      TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, op_id)
);
CREATE INDEX sync_ops_created ON sync_ops (created_at);

-- Web Push subscriptions (the browser's PushSubscription): one row per endpoint, owned by the
-- user who registered it last. Keys are base64url without padding, as browsers send them.
CREATE TABLE push_subscriptions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint        TEXT NOT NULL UNIQUE,
    p256dh          TEXT NOT NULL,
    auth            TEXT NOT NULL,
    expiration_time INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id);
