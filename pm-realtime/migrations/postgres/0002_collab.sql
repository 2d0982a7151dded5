-- Collaborative documents (PostgreSQL): mirrors migrations/sqlite/0002_collab.sql with native
-- types. A document's head row (`rt_docs`) is locked by every append until commit, so appends to
-- one document commit in `seq` order and compaction (snapshot up to the highest `seq` read, delete
-- the covered updates) never drops an update committed late with a lower `seq`.

CREATE TABLE rt_docs (
    task_id          UUID PRIMARY KEY,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    snapshot         BYTEA,
    snapshot_seq     BIGINT NOT NULL DEFAULT 0,
    external_version BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE rt_doc_updates (
    task_id      UUID NOT NULL,
    seq          BIGINT NOT NULL,
    update_bytes BYTEA NOT NULL,          -- a Yjs v1 update
    at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- Digests (SHA-256, hex) of texts the documents wrote back into task descriptions, recorded
-- before the write so every instance recognises the resulting `task.updated` event as an echo.
CREATE TABLE rt_doc_write_backs (
    task_id UUID NOT NULL,
    digest  TEXT NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, digest)
);
