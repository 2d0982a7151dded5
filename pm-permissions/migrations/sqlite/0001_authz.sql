-- pm-permissions tables (SQLite). Ids are hyphenated UUID text, timestamps integer microseconds,
-- grants/denies/payloads serde_json text. Tracked in `_pm_permissions_migrations`.

CREATE TABLE authz_permissions (
    resource    TEXT NOT NULL,
    action      TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (resource, action)
);

CREATE TABLE authz_roles (
    id          TEXT PRIMARY KEY,
    org_id      TEXT,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    parent_id   TEXT REFERENCES authz_roles (id),
    grants      TEXT NOT NULL,
    denies      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX authz_roles_org_name ON authz_roles (COALESCE(org_id, ''), name);
CREATE INDEX authz_roles_parent ON authz_roles (parent_id);

CREATE TABLE authz_role_templates (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    parent      TEXT,
    grants      TEXT NOT NULL,
    denies      TEXT NOT NULL
);

CREATE TABLE authz_assignments (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    role_id     TEXT NOT NULL REFERENCES authz_roles (id),
    scope_kind  TEXT NOT NULL CHECK (scope_kind IN ('global', 'org', 'project')),
    org_id      TEXT,
    project_id  TEXT,
    valid_from  INTEGER,
    valid_until INTEGER,
    granted_by  TEXT,
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    CHECK ((scope_kind = 'global') = (org_id IS NULL)),
    CHECK ((scope_kind = 'project') = (project_id IS NOT NULL))
);
CREATE INDEX authz_assignments_user ON authz_assignments (user_id, scope_kind, org_id, project_id);
CREATE INDEX authz_assignments_role ON authz_assignments (role_id);

CREATE TABLE authz_audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    payload   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- Append-only: the database refuses to change or remove audit records.
CREATE TRIGGER authz_audit_no_update BEFORE UPDATE ON authz_audit
BEGIN
    SELECT RAISE(ABORT, 'authz_audit is append-only');
END;
CREATE TRIGGER authz_audit_no_delete BEFORE DELETE ON authz_audit
BEGIN
    SELECT RAISE(ABORT, 'authz_audit is append-only');
END;
