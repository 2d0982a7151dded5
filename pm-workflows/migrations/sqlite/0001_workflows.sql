-- pm-workflows schema (SQLite): workflows and their immutable versions, durable executions with
-- their steps, timers, approvals and decisions. Tables are prefixed `wf_` and tracked in
-- `_pm_workflows_migrations`, so they sit beside pm-core's tables in one database.
--
-- Conventions (as pm-core's SQLite schema): ids are hyphenated UUID text, timestamps integer
-- microseconds since the epoch, JSON as text. No foreign keys into pm-core's tables: a host may
-- keep workflow state in another database.

CREATE TABLE wf_workflows (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL,
    project_id         TEXT,
    enabled            INTEGER NOT NULL,
    definition_version INTEGER NOT NULL,
    webhook_secret     TEXT NOT NULL,
    created_by_type    TEXT NOT NULL,
    created_by_id      TEXT,
    version            INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX wf_workflows_org ON wf_workflows (org_id, id);
CREATE INDEX wf_workflows_enabled ON wf_workflows (id) WHERE enabled = 1;

CREATE TABLE wf_workflow_versions (
    workflow_id TEXT NOT NULL REFERENCES wf_workflows (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    definition  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE wf_executions (
    id               TEXT PRIMARY KEY,       -- UUIDv7: newest first = id descending
    workflow_id      TEXT NOT NULL,          -- no FK: executions outlive deleted workflows
    workflow_version INTEGER NOT NULL,
    org_id           TEXT NOT NULL,
    task_id          TEXT,
    status           TEXT NOT NULL,
    trigger_key      TEXT NOT NULL,
    actor_type       TEXT NOT NULL,
    actor_id         TEXT,
    depth            INTEGER NOT NULL,
    context          TEXT NOT NULL,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (workflow_id, trigger_key)        -- one execution per trigger: idempotent dispatch
);
CREATE INDEX wf_executions_org ON wf_executions (org_id, id);
CREATE INDEX wf_executions_workflow ON wf_executions (workflow_id, id);
CREATE INDEX wf_executions_running ON wf_executions (id) WHERE status = 'running';

CREATE TABLE wf_steps (
    execution_id TEXT NOT NULL REFERENCES wf_executions (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    status       TEXT NOT NULL,
    input        TEXT NOT NULL,
    output       TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    error        TEXT,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (execution_id, key)
);

CREATE TABLE wf_timers (
    id           TEXT PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,
    execution_id TEXT,
    workflow_id  TEXT NOT NULL,
    fire_at      INTEGER NOT NULL,
    payload      TEXT NOT NULL
);
CREATE INDEX wf_timers_due ON wf_timers (fire_at, id);

CREATE TABLE wf_approvals (
    id                  TEXT PRIMARY KEY,
    execution_id        TEXT NOT NULL REFERENCES wf_executions (id) ON DELETE CASCADE,
    workflow_id         TEXT NOT NULL,
    org_id              TEXT NOT NULL,
    task_id             TEXT,
    step_key            TEXT NOT NULL,
    stage               INTEGER NOT NULL,
    status              TEXT NOT NULL,
    approvers           TEXT NOT NULL,      -- the stage's approvers spec (JSON)
    eligible            TEXT NOT NULL,      -- JSON array of user ids
    needed              INTEGER NOT NULL,
    requester           TEXT,
    allow_self_approval INTEGER NOT NULL,
    deadline            INTEGER,
    created_at          INTEGER NOT NULL,
    UNIQUE (execution_id, step_key, stage)
);
CREATE INDEX wf_approvals_org ON wf_approvals (org_id, id);

CREATE TABLE wf_approval_decisions (
    approval_id TEXT NOT NULL REFERENCES wf_approvals (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    approve     INTEGER NOT NULL,
    comment     TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (approval_id, user_id)      -- one decision per person
);
