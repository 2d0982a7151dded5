-- pm-permissions tables (PostgreSQL). UUID ids, TIMESTAMPTZ timestamps (microseconds),
-- grants/denies/payloads as serde_json TEXT (read back byte-exact, which the audit hash chain
-- relies on). Tracked in `_pm_permissions_migrations`.

CREATE TABLE authz_permissions (
    resource    TEXT NOT NULL,
    action      TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (resource, action)
);

CREATE TABLE authz_roles (
    id          UUID PRIMARY KEY,
    org_id      UUID,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    parent_id   UUID REFERENCES authz_roles (id),
    grants      TEXT NOT NULL,
    denies      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX authz_roles_org_name
    ON authz_roles (COALESCE(org_id, '00000000-0000-0000-0000-000000000000'::uuid), name);
CREATE INDEX authz_roles_parent ON authz_roles (parent_id);

CREATE TABLE authz_role_templates (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    parent      TEXT,
    grants      TEXT NOT NULL,
    denies      TEXT NOT NULL
);

CREATE TABLE authz_assignments (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL,
    role_id     UUID NOT NULL REFERENCES authz_roles (id),
    scope_kind  TEXT NOT NULL CHECK (scope_kind IN ('global', 'org', 'project')),
    org_id      UUID,
    project_id  UUID,
    valid_from  TIMESTAMPTZ,
    valid_until TIMESTAMPTZ,
    granted_by  UUID,
    reason      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    CHECK ((scope_kind = 'global') = (org_id IS NULL)),
    CHECK ((scope_kind = 'project') = (project_id IS NOT NULL))
);
CREATE INDEX authz_assignments_user ON authz_assignments (user_id, scope_kind, org_id, project_id);
CREATE INDEX authz_assignments_role ON authz_assignments (role_id);

CREATE TABLE authz_audit (
    seq       BIGINT PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    payload   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- Append-only: the database refuses to change or remove audit records.
CREATE FUNCTION authz_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'authz_audit is append-only';
END;
$$;
CREATE TRIGGER authz_audit_append_only BEFORE UPDATE OR DELETE ON authz_audit
    FOR EACH ROW EXECUTE FUNCTION authz_audit_append_only();
