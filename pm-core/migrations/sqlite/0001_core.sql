-- pm-core schema (SQLite). Ids are hyphenated lower-case UUID text (v7, so text order = time
-- order); timestamps are integer microseconds since the Unix epoch; dates are YYYY-MM-DD text.

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE orgs (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE memberships (
    org_id    TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    lead        TEXT REFERENCES users(id) ON DELETE SET NULL,
    archived    INTEGER NOT NULL DEFAULT 0,
    next_number INTEGER NOT NULL DEFAULT 1,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (org_id, key)
);

CREATE TABLE workflow_states (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    category   TEXT NOT NULL,
    position   INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE labels (
    id     TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    color  TEXT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE milestones (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    due_on      TEXT,
    closed      INTEGER NOT NULL DEFAULT 0,
    version     INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE custom_fields (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    field_type TEXT NOT NULL, -- JSON of pm_core::model::FieldType
    UNIQUE (project_id, name)
);

-- `rid` is a stable integer key for the FTS index; `id` is the public id.
CREATE TABLE tasks (
    rid          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    org_id       TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    project_id   TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    title        TEXT NOT NULL,
    description  TEXT NOT NULL,
    state_id     TEXT NOT NULL REFERENCES workflow_states(id),
    priority     INTEGER NOT NULL,
    reporter     TEXT NOT NULL REFERENCES users(id),
    start_date   TEXT,
    due_date     TEXT,
    estimate     INTEGER,
    parent_id    TEXT REFERENCES tasks(id) ON DELETE SET NULL,
    milestone_id TEXT REFERENCES milestones(id) ON DELETE SET NULL,
    rank         TEXT NOT NULL,
    archived     INTEGER NOT NULL DEFAULT 0,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (project_id, number)
);
CREATE INDEX tasks_org_created ON tasks(org_id, created_at, id);
CREATE INDEX tasks_org_updated ON tasks(org_id, updated_at, id);
CREATE INDEX tasks_project_created ON tasks(project_id, created_at, id);
CREATE INDEX tasks_project_rank ON tasks(project_id, rank);
CREATE INDEX tasks_state ON tasks(state_id);
CREATE INDEX tasks_parent ON tasks(parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_due ON tasks(org_id, due_date) WHERE due_date IS NOT NULL;
CREATE INDEX tasks_milestone ON tasks(milestone_id) WHERE milestone_id IS NOT NULL;

CREATE TABLE task_assignees (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, user_id)
);
CREATE INDEX task_assignees_user ON task_assignees(user_id);

CREATE TABLE task_labels (
    task_id  TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    label_id TEXT NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, label_id)
);
CREATE INDEX task_labels_label ON task_labels(label_id);

CREATE TABLE task_field_values (
    task_id  TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    field_id TEXT NOT NULL REFERENCES custom_fields(id) ON DELETE CASCADE,
    value    TEXT NOT NULL, -- JSON of pm_core::model::FieldValue
    PRIMARY KEY (task_id, field_id)
);

CREATE TABLE task_relations (
    from_task  TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    to_task    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    created_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (from_task, to_task, kind)
);
CREATE INDEX task_relations_to ON task_relations(to_task);

CREATE TABLE watchers (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    since   INTEGER NOT NULL,
    PRIMARY KEY (task_id, user_id)
);

CREATE TABLE comments (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    author     TEXT NOT NULL REFERENCES users(id),
    body       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX comments_task ON comments(task_id, created_at);

CREATE TABLE time_entries (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id),
    minutes    INTEGER NOT NULL,
    spent_on   TEXT NOT NULL,
    note       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX time_entries_task ON time_entries(task_id, spent_on);

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    uploaded_by  TEXT NOT NULL REFERENCES users(id),
    file_name    TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    blob_key     TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX attachments_task ON attachments(task_id, created_at);

CREATE TABLE check_ins (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id),
    lat        REAL NOT NULL,
    lon        REAL NOT NULL,
    accuracy_m REAL NOT NULL,
    note       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX check_ins_task ON check_ins(task_id, created_at);

-- Full-text index over title, description and comments; rowid = tasks.rid.
CREATE VIRTUAL TABLE task_search USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');

-- The event log. AUTOINCREMENT: a seq is never reused, even after the newest row is deleted.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    at             INTEGER NOT NULL,
    org_id         TEXT,
    project_id     TEXT,
    task_id        TEXT,
    actor_type     TEXT NOT NULL,
    actor_id       TEXT,
    kind           TEXT NOT NULL,
    subject        TEXT NOT NULL,
    payload        TEXT NOT NULL,
    cause_event_id TEXT,
    cause_depth    INTEGER
);
CREATE INDEX events_task ON events(task_id, seq) WHERE task_id IS NOT NULL;
CREATE INDEX events_project ON events(project_id, seq) WHERE project_id IS NOT NULL;

CREATE TABLE event_cursors (
    consumer   TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
