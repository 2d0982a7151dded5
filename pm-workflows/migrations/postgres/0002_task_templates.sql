-- Task templates with their automation (issue 7): the document (task tree, attached workflow
-- definitions) is one JSONB value; the name is unique per organization.
CREATE TABLE wf_task_templates (
    id              UUID PRIMARY KEY,
    org_id          UUID NOT NULL,
    project_id      UUID,
    name            TEXT NOT NULL,
    spec            JSONB NOT NULL,
    created_by_type TEXT NOT NULL,
    created_by_id   UUID,
    version         BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX wf_task_templates_org_name ON wf_task_templates (org_id, name);
