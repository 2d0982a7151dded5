-- Collaborative documents (SQLite): one Yjs document per task description, stored as an update
-- log with snapshot compaction. See src/store.rs (`DocStore`) for the rules.
--
-- `rt_docs` is a document's head row: `last_seq` numbers its updates (an append increments it in
-- the same transaction as it inserts the update, so appends to one document commit in `seq`
-- order), `snapshot` is the compacted state covering updates up to `snapshot_seq`, and
-- `external_version` is the last task version whose description change (made outside the
-- document, e.g. through REST) an instance claimed to apply.

CREATE TABLE rt_docs (
    task_id          TEXT PRIMARY KEY,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    snapshot         BLOB,
    snapshot_seq     INTEGER NOT NULL DEFAULT 0,
    external_version INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE rt_doc_updates (
    task_id      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    update_bytes BLOB NOT NULL,           -- a Yjs v1 update
    at           INTEGER NOT NULL,        -- microseconds since the epoch
    PRIMARY KEY (task_id, seq)
);

-- Digests (SHA-256, hex) of texts the documents wrote back into task descriptions, recorded
-- before the write so every instance recognises the resulting `task.updated` event as an echo.
CREATE TABLE rt_doc_write_backs (
    task_id TEXT NOT NULL,
    digest  TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (task_id, digest)
);
