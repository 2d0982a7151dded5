-- The sync pusher's durable retry queue, and where each linked comment was written.

-- A push that failed with an error that may pass (provider outage, timeout, rate limit) waits
-- here for its next attempt instead of holding the pusher. Pushes of one (integration, task)
-- run oldest event first: only the head (lowest event_seq) is ever due, so a later event of
-- the task waits behind an earlier parked one. `next_attempt_at` doubles as the lease of a
-- claimed head. `event` is the pm event as JSON, so a retry after a restart needs nothing else.
CREATE TABLE int_parked_pushes (
    id              TEXT PRIMARY KEY,
    integration_id  TEXT NOT NULL REFERENCES int_integrations (id) ON DELETE CASCADE,
    task_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_seq       INTEGER NOT NULL,
    event           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    parked_at       INTEGER NOT NULL,
    UNIQUE (integration_id, event_id)
);
CREATE INDEX int_parked_pushes_order ON int_parked_pushes (integration_id, task_id, event_seq);
CREATE INDEX int_parked_pushes_due ON int_parked_pushes (next_attempt_at);

-- Which side a linked comment was written on: `local` (in pm, pushed to the provider) or
-- `remote` (on the provider, copied into pm). Only `local` comments are pushed back when edited
-- or deleted in pm: the provider's comment belongs to someone else there. Existing links: a
-- comment copied from the provider holds a byline in pm, so its two fingerprints differ; one
-- written in pm is the same text on both sides.
ALTER TABLE int_comment_links ADD COLUMN origin TEXT NOT NULL DEFAULT 'local';
UPDATE int_comment_links SET origin = 'remote' WHERE local_fingerprint <> remote_fingerprint;
