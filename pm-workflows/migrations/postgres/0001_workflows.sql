-- pm-workflows schema (PostgreSQL): workflows and their immutable versions, durable executions
-- with their steps, timers, approvals and decisions. Tables are prefixed `wf_` and tracked in
-- `_pm_workflows_migrations`, so they sit beside pm-core's tables in one database. No foreign
-- keys into pm-core's tables: a host may keep workflow state in another database.

CREATE TABLE wf_workflows (
    id                 UUID PRIMARY KEY,
    org_id             UUID NOT NULL,
    project_id         UUID,
    enabled            BOOLEAN NOT NULL,
    definition_version BIGINT NOT NULL,
    webhook_secret     TEXT NOT NULL,
    created_by_type    TEXT NOT NULL,
    created_by_id      UUID,
    version            BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX wf_workflows_org ON wf_workflows (org_id, id);
CREATE INDEX wf_workflows_enabled ON wf_workflows (id) WHERE enabled;

CREATE TABLE wf_workflow_versions (
    workflow_id UUID NOT NULL REFERENCES wf_workflows (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    definition  JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE wf_executions (
    id               UUID PRIMARY KEY,
    workflow_id      UUID NOT NULL,
    workflow_version BIGINT NOT NULL,
    org_id           UUID NOT NULL,
    task_id          UUID,
    status           TEXT NOT NULL,
    trigger_key      TEXT NOT NULL,
    actor_type       TEXT NOT NULL,
    actor_id         UUID,
    depth            INTEGER NOT NULL,
    context          JSONB NOT NULL,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (workflow_id, trigger_key)
);
CREATE INDEX wf_executions_org ON wf_executions (org_id, id);
CREATE INDEX wf_executions_workflow ON wf_executions (workflow_id, id);
CREATE INDEX wf_executions_running ON wf_executions (id) WHERE status = 'running';

CREATE TABLE wf_steps (
    execution_id UUID NOT NULL REFERENCES wf_executions (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    status       TEXT NOT NULL,
    input        JSONB NOT NULL,
    output       JSONB NOT NULL,
    attempts     INTEGER NOT NULL,
    error        TEXT,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (execution_id, key)
);

CREATE TABLE wf_timers (
    id           UUID PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,
    execution_id UUID,
    workflow_id  UUID NOT NULL,
    fire_at      TIMESTAMPTZ NOT NULL,
    payload      JSONB NOT NULL
);
CREATE INDEX wf_timers_due ON wf_timers (fire_at, id);

CREATE TABLE wf_approvals (
    id                  UUID PRIMARY KEY,
    execution_id        UUID NOT NULL REFERENCES wf_executions (id) ON DELETE CASCADE,
    workflow_id         UUID NOT NULL,
    org_id              UUID NOT NULL,
    task_id             UUID,
    step_key            TEXT NOT NULL,
    stage               INTEGER NOT NULL,
    status              TEXT NOT NULL,
    approvers           JSONB NOT NULL,
    eligible            JSONB NOT NULL,
    needed              INTEGER NOT NULL,
    requester           UUID,
    allow_self_approval BOOLEAN NOT NULL,
    deadline            TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (execution_id, step_key, stage)
);
CREATE INDEX wf_approvals_org ON wf_approvals (org_id, id);

CREATE TABLE wf_approval_decisions (
    approval_id UUID NOT NULL REFERENCES wf_approvals (id) ON DELETE CASCADE,
    user_id     UUID NOT NULL,
    approve     BOOLEAN NOT NULL,
    comment     TEXT,
    at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (approval_id, user_id)
);
