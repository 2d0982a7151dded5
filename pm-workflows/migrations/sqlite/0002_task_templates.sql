-- Task templates with their automation (issue 7): the document (task tree, attached workflow
-- definitions) is one JSON text; the name is unique per organization.
CREATE TABLE wf_task_templates (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL,
    project_id      TEXT,
    name            TEXT NOT NULL,
    spec            TEXT NOT NULL,
    created_by_type TEXT NOT NULL,
    created_by_id   TEXT,
    version         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX wf_task_templates_org_name ON wf_task_templates (org_id, name);
