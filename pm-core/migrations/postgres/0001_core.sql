-- pm-core schema (PostgreSQL). Mirrors migrations/sqlite/0001_core.sql with native types: UUID ids
-- (v7, so byte order = time order), TIMESTAMPTZ timestamps (microsecond precision, like the
-- domain's), DATE dates, JSON(B) for structured values.
--
-- Documents that can hold domain f64s (custom field values, event payloads) are JSON, not JSONB:
-- JSON keeps the serializer's text verbatim, whereas JSONB re-renders numbers as `numeric`
-- (f64::MAX comes back as a 309-digit integer that serde_json refuses to read, which would make
-- the task and every event log read containing it fail). Constraint names are PostgreSQL's defaults
-- (`<table>_<column>_fkey`, `<table>_<columns>_key`, `<table>_pkey`); the adapter maps them to
-- domain errors, so renaming one is a code change too.

CREATE TABLE users (
    id           UUID PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE orgs (
    id         UUID PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE memberships (
    org_id    UUID NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    user_id   UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    joined_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE projects (
    id          UUID PRIMARY KEY,
    org_id      UUID NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    lead        UUID REFERENCES users(id) ON DELETE SET NULL,
    archived    BOOLEAN NOT NULL DEFAULT FALSE,
    next_number BIGINT NOT NULL DEFAULT 1,
    version     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, key)
);

CREATE TABLE workflow_states (
    id         UUID PRIMARY KEY,
    project_id UUID NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    category   TEXT NOT NULL,
    position   INTEGER NOT NULL,
    version    BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE labels (
    id     UUID PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    color  TEXT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE milestones (
    id          UUID PRIMARY KEY,
    project_id  UUID NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    due_on      DATE,
    closed      BOOLEAN NOT NULL DEFAULT FALSE,
    version     BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE custom_fields (
    id         UUID PRIMARY KEY,
    project_id UUID NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    field_type JSONB NOT NULL, -- pm_core::model::FieldType
    UNIQUE (project_id, name)
);

-- `rank` uses the "C" collation so that comparisons, MAX() and ORDER BY follow byte order, the
-- order pm_core::model::rank is defined in (and SQLite's default BINARY collation).
CREATE TABLE tasks (
    id           UUID PRIMARY KEY,
    org_id       UUID NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    project_id   UUID NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    number       BIGINT NOT NULL,
    title        TEXT NOT NULL,
    description  TEXT NOT NULL,
    state_id     UUID NOT NULL REFERENCES workflow_states(id),
    priority     SMALLINT NOT NULL,
    reporter     UUID NOT NULL REFERENCES users(id),
    start_date   DATE,
    due_date     DATE,
    estimate     BIGINT,
    parent_id    UUID REFERENCES tasks(id) ON DELETE SET NULL,
    milestone_id UUID REFERENCES milestones(id) ON DELETE SET NULL,
    rank         TEXT COLLATE "C" NOT NULL,
    archived     BOOLEAN NOT NULL DEFAULT FALSE,
    version      BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
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
    task_id UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, user_id)
);
CREATE INDEX task_assignees_user ON task_assignees(user_id);

CREATE TABLE task_labels (
    task_id  UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    label_id UUID NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, label_id)
);
CREATE INDEX task_labels_label ON task_labels(label_id);

CREATE TABLE task_field_values (
    task_id  UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    field_id UUID NOT NULL REFERENCES custom_fields(id) ON DELETE CASCADE,
    value    JSON NOT NULL, -- pm_core::model::FieldValue (JSON: see the header)
    PRIMARY KEY (task_id, field_id)
);

CREATE TABLE task_relations (
    from_task  UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    to_task    UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    created_by UUID REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (from_task, to_task, kind)
);
CREATE INDEX task_relations_to ON task_relations(to_task);

CREATE TABLE watchers (
    task_id UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    since   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, user_id)
);

CREATE TABLE comments (
    id         UUID PRIMARY KEY,
    task_id    UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    author     UUID NOT NULL REFERENCES users(id),
    body       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX comments_task ON comments(task_id, created_at);

CREATE TABLE time_entries (
    id         UUID PRIMARY KEY,
    task_id    UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users(id),
    minutes    BIGINT NOT NULL,
    spent_on   DATE NOT NULL,
    note       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX time_entries_task ON time_entries(task_id, spent_on);

CREATE TABLE attachments (
    id           UUID PRIMARY KEY,
    task_id      UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    uploaded_by  UUID NOT NULL REFERENCES users(id),
    file_name    TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    blob_key     TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX attachments_task ON attachments(task_id, created_at);

CREATE TABLE check_ins (
    id         UUID PRIMARY KEY,
    task_id    UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users(id),
    lat        DOUBLE PRECISION NOT NULL,
    lon        DOUBLE PRECISION NOT NULL,
    accuracy_m DOUBLE PRECISION NOT NULL,
    note       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX check_ins_task ON check_ins(task_id, created_at);

-- Full-text index over title, description and comments, one document per task. The adapter
-- rewrites a task's row whenever its title, description or comments change.
CREATE TABLE task_search (
    task_id UUID PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    doc     TSVECTOR NOT NULL
);
CREATE INDEX task_search_doc ON task_search USING GIN (doc);

-- The event log. An identity never reuses a value; writers serialize on an advisory lock, so
-- commit order equals seq order (gaps from rolled-back transactions are harmless).
CREATE TABLE events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             UUID NOT NULL UNIQUE,
    at             TIMESTAMPTZ NOT NULL,
    org_id         UUID,
    project_id     UUID,
    task_id        UUID,
    actor_type     TEXT NOT NULL,
    actor_id       UUID,
    kind           TEXT NOT NULL,
    subject        UUID NOT NULL,
    payload        JSON NOT NULL, -- JSON, not JSONB: see the header
    cause_event_id UUID,
    cause_depth    BIGINT
);
CREATE INDEX events_task ON events(task_id, seq) WHERE task_id IS NOT NULL;
CREATE INDEX events_project ON events(project_id, seq) WHERE project_id IS NOT NULL;

CREATE TABLE event_cursors (
    consumer   TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
