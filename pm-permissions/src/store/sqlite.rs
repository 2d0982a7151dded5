//! SQLite adapter (feature `sqlite`): the embedded default.
//!
//! One writer connection plus a read pool over a WAL database — normally the same file as
//! pm-core's store. Write transactions start with `BEGIN IMMEDIATE`, so they take the database's
//! write lock up front (waiting out pm-core's writer through `busy_timeout`) and audit appends
//! are serialized: the hash chain stays linear. Every mutating method is one transaction that
//! also appends its audit record.
//!
//! Storage conventions (see `migrations/sqlite`): ids are hyphenated UUID text, timestamps are
//! integer microseconds, grants/denies/payloads are serde_json text. Row structs are private;
//! conversion into domain types happens in `TryFrom` impls so corrupt rows surface as errors.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::event::Actor;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::shared::*;
use crate::audit::{GENESIS, record_hash};
use crate::clock::{from_micros, micros};
use crate::engine::Snapshot;
use crate::store::*;
use crate::{Error, Result};

/// The SQLite permission store. Cheap to clone (pools are reference-counted).
#[derive(Debug, Clone)]
pub struct SqliteAuthzStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteAuthzStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`, `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(SqliteSynchronous::Normal);
        if url.contains(":memory:") || url.contains("mode=memory") {
            // An in-memory database lives as long as its one connection: pin it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await
                .map_err(Error::storage)?;
            return Ok(Self::from_pools(pool.clone(), pool));
        }
        let opts = opts.journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(Error::storage)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(Error::storage)?;
        Ok(Self::from_pools(writer, reader))
    }

    /// Wraps existing pools (a writer with one connection, and a reader pool; may be the same).
    pub fn from_pools(writer: SqlitePool, reader: SqlitePool) -> Self {
        Self { writer, reader }
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(Error::storage)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions and error mapping

fn id_text(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| corrupt("id", e))
}

fn parse_id<T: From<Uuid>>(s: &str) -> Result<T> {
    parse_uuid(s).map(T::from)
}

fn parse_opt<T: From<Uuid>>(s: Option<&str>) -> Result<Option<T>> {
    s.map(parse_id).transpose()
}

fn st(e: sqlx::Error) -> Error {
    Error::storage(e)
}

/// Maps a sqlx error: uniqueness and foreign-key violations become client errors.
fn db_err(e: sqlx::Error, entity: &'static str, unique: &'static str, fk: &'static str) -> Error {
    if let sqlx::Error::Database(d) = &e {
        match d.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return Error::AlreadyExists { entity, field: unique };
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return Error::invalid(fk, "refers to something that does not exist");
            }
            _ => {}
        }
    }
    Error::storage(e)
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    id: String,
    org_id: Option<String>,
    name: String,
    description: String,
    parent_id: Option<String>,
    grants: String,
    denies: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<RoleRow> for Role {
    type Error = Error;
    fn try_from(r: RoleRow) -> Result<Self> {
        Ok(Role {
            id: parse_id(&r.id)?,
            org_id: parse_opt(r.org_id.as_deref())?,
            name: r.name,
            description: r.description,
            parent_id: parse_opt(r.parent_id.as_deref())?,
            grants: from_json("grants", &r.grants)?,
            denies: from_json("denies", &r.denies)?,
            version: r.version,
            created_at: from_micros(r.created_at),
            updated_at: from_micros(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct AssignmentRow {
    id: String,
    user_id: String,
    role_id: String,
    scope_kind: String,
    org_id: Option<String>,
    project_id: Option<String>,
    valid_from: Option<i64>,
    valid_until: Option<i64>,
    granted_by: Option<String>,
    reason: String,
    created_at: i64,
}

impl TryFrom<AssignmentRow> for Assignment {
    type Error = Error;
    fn try_from(r: AssignmentRow) -> Result<Self> {
        let org = r.org_id.as_deref().map(parse_uuid).transpose()?;
        let project = r.project_id.as_deref().map(parse_uuid).transpose()?;
        Ok(Assignment {
            id: parse_id(&r.id)?,
            user_id: parse_id(&r.user_id)?,
            role_id: parse_id(&r.role_id)?,
            scope: scope_from(&r.scope_kind, org, project)?,
            valid_from: r.valid_from.map(from_micros),
            valid_until: r.valid_until.map(from_micros),
            granted_by: parse_opt(r.granted_by.as_deref())?,
            reason: r.reason,
            created_at: from_micros(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct TemplateRow {
    name: String,
    description: String,
    parent: Option<String>,
    grants: String,
    denies: String,
}

impl TryFrom<TemplateRow> for RoleTemplate {
    type Error = Error;
    fn try_from(r: TemplateRow) -> Result<Self> {
        Ok(RoleTemplate {
            name: r.name,
            description: r.description,
            parent: r.parent,
            grants: from_json("grants", &r.grants)?,
            denies: from_json("denies", &r.denies)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    payload: String,
    prev_hash: String,
    hash: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = Error;
    fn try_from(r: AuditRow) -> Result<Self> {
        Ok(AuditRecord {
            seq: r.seq,
            at: from_micros(r.at),
            actor: from_json("actor", &r.actor)?,
            action: r.action,
            subject: r.subject,
            payload: from_json("payload", &r.payload)?,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PermissionRow {
    resource: String,
    action: String,
    description: String,
}

impl TryFrom<PermissionRow> for PermissionDef {
    type Error = Error;
    fn try_from(r: PermissionRow) -> Result<Self> {
        Ok(PermissionDef {
            permission: Permission::new(parse_resource(&r.resource)?, parse_action(&r.action)?),
            description: r.description,
        })
    }
}

/// Appends an audit record in the caller's transaction; returns its `seq` (the new revision).
async fn append(
    tx: &mut SqliteConnection,
    actor: &Actor,
    action: &str,
    subject: &str,
    payload: &serde_json::Value,
) -> Result<i64> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM authz_audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(st)?;
    let (seq, prev) = last.map_or((1, GENESIS.to_owned()), |(s, h)| (s + 1, h));
    let at = pm_core::model::now();
    let hash = record_hash(&prev, seq, at, actor, action, subject, payload);
    sqlx::query(
        "INSERT INTO authz_audit (seq, at, actor, action, subject, payload, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(micros(at))
    .bind(actor_json(actor))
    .bind(action)
    .bind(subject)
    .bind(to_json(payload))
    .bind(prev)
    .bind(hash)
    .execute(&mut *tx)
    .await
    .map_err(st)?;
    Ok(seq)
}

const ROLE_COLS: &str = "SELECT id, org_id, name, description, parent_id, grants, denies, version, \
                         created_at, updated_at FROM authz_roles";

async fn load_role(conn: &mut SqliteConnection, id: RoleId) -> Result<Option<Role>> {
    let row: Option<RoleRow> = sqlx::query_as(
        "SELECT id, org_id, name, description, parent_id, grants, denies, version, created_at, \
         updated_at FROM authz_roles WHERE id = ?",
    )
    .bind(id_text(id))
    .fetch_optional(&mut *conn)
    .await
    .map_err(st)?;
    row.map(Role::try_from).transpose()
}

// ---------------------------------------------------------------------------------------------
// Traits

#[async_trait]
impl RoleStore for SqliteAuthzStore {
    async fn put_permission(
        &self,
        actor: &Actor,
        def: &PermissionDef,
    ) -> Result<Option<Written<PermissionDef>>> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO authz_permissions (resource, action, description) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(def.permission.resource.as_str())
        .bind(def.permission.action.as_str())
        .bind(&def.description)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let payload = serde_json::json!({ "permission": def });
        let subject = def.permission.to_string();
        let revision = append(&mut tx, actor, "permission.register", &subject, &payload).await?;
        tx.commit().await.map_err(st)?;
        Ok(Some(Written { value: def.clone(), revision }))
    }

    async fn list_permissions(&self) -> Result<Vec<PermissionDef>> {
        let rows: Vec<PermissionRow> = sqlx::query_as(
            "SELECT resource, action, description FROM authz_permissions ORDER BY resource, action",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        rows.into_iter().map(PermissionDef::try_from).collect()
    }

    async fn create_role(&self, actor: &Actor, role: &Role) -> Result<Written<Role>> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO authz_roles (id, org_id, name, description, parent_id, grants, denies, \
             version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(role.id))
        .bind(role.org_id.map(id_text))
        .bind(&role.name)
        .bind(&role.description)
        .bind(role.parent_id.map(id_text))
        .bind(to_json(&role.grants))
        .bind(to_json(&role.denies))
        .bind(role.version)
        .bind(micros(role.created_at))
        .bind(micros(role.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "role", "name", "parent_id"))?;
        let revision =
            append(&mut tx, actor, "role.create", &role.id.to_string(), &role_payload(role))
                .await?;
        tx.commit().await.map_err(st)?;
        Ok(Written { value: role.clone(), revision })
    }

    async fn get_role(&self, id: RoleId) -> Result<Role> {
        let mut conn = self.reader.acquire().await.map_err(st)?;
        load_role(&mut conn, id).await?.ok_or_else(|| Error::not_found("role"))
    }

    async fn list_roles(&self) -> Result<Vec<Role>> {
        let mut q = QueryBuilder::<Sqlite>::new(ROLE_COLS);
        q.push(" ORDER BY created_at, id");
        let rows: Vec<RoleRow> = q.build_query_as().fetch_all(&self.reader).await.map_err(st)?;
        rows.into_iter().map(Role::try_from).collect()
    }

    async fn update_role(
        &self,
        actor: &Actor,
        role: &Role,
        expected_version: i64,
    ) -> Result<Written<Role>> {
        let mut tx = self.begin().await?;
        let current = load_role(&mut tx, role.id).await?.ok_or_else(|| Error::not_found("role"))?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(current)));
        }
        let mut new = role.clone();
        new.version = current.version + 1;
        new.created_at = current.created_at;
        new.org_id = current.org_id;
        sqlx::query(
            "UPDATE authz_roles SET name = ?, description = ?, parent_id = ?, grants = ?, \
             denies = ?, version = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.parent_id.map(id_text))
        .bind(to_json(&new.grants))
        .bind(to_json(&new.denies))
        .bind(new.version)
        .bind(micros(new.updated_at))
        .bind(id_text(new.id))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "role", "name", "parent_id"))?;
        let revision =
            append(&mut tx, actor, "role.update", &new.id.to_string(), &role_payload(&new)).await?;
        tx.commit().await.map_err(st)?;
        Ok(Written { value: new, revision })
    }

    async fn delete_role(&self, actor: &Actor, id: RoleId) -> Result<Written<Role>> {
        let mut tx = self.begin().await?;
        let current = load_role(&mut tx, id).await?.ok_or_else(|| Error::not_found("role"))?;
        let (assigned, children): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM authz_assignments WHERE role_id = ?1), \
             (SELECT COUNT(*) FROM authz_roles WHERE parent_id = ?1)",
        )
        .bind(id_text(id))
        .fetch_one(&mut *tx)
        .await
        .map_err(st)?;
        if assigned > 0 || children > 0 {
            return Err(Error::InUse {
                entity: "role",
                message: format!("{assigned} assignment(s) and {children} child role(s)"),
            });
        }
        sqlx::query("DELETE FROM authz_roles WHERE id = ?")
            .bind(id_text(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        let revision =
            append(&mut tx, actor, "role.delete", &id.to_string(), &role_payload(&current)).await?;
        tx.commit().await.map_err(st)?;
        Ok(Written { value: current, revision })
    }

    async fn put_template(
        &self,
        actor: &Actor,
        t: &RoleTemplate,
    ) -> Result<Option<Written<RoleTemplate>>> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO authz_role_templates (name, description, parent, grants, denies) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&t.name)
        .bind(&t.description)
        .bind(&t.parent)
        .bind(to_json(&t.grants))
        .bind(to_json(&t.denies))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let payload = serde_json::json!({ "template": t });
        let revision = append(&mut tx, actor, "template.create", &t.name, &payload).await?;
        tx.commit().await.map_err(st)?;
        Ok(Some(Written { value: t.clone(), revision }))
    }

    async fn list_templates(&self) -> Result<Vec<RoleTemplate>> {
        let rows: Vec<TemplateRow> = sqlx::query_as(
            "SELECT name, description, parent, grants, denies FROM authz_role_templates \
             ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        rows.into_iter().map(RoleTemplate::try_from).collect()
    }
}

const ASSIGNMENT_COLS: &str = "SELECT id, user_id, role_id, scope_kind, org_id, project_id, \
                               valid_from, valid_until, granted_by, reason, created_at \
                               FROM authz_assignments";

async fn load_assignment(
    conn: &mut SqliteConnection,
    id: AssignmentId,
) -> Result<Option<Assignment>> {
    let mut q = QueryBuilder::<Sqlite>::new(ASSIGNMENT_COLS);
    q.push(" WHERE id = ").push_bind(id_text(id));
    let row: Option<AssignmentRow> =
        q.build_query_as().fetch_optional(&mut *conn).await.map_err(st)?;
    row.map(Assignment::try_from).transpose()
}

#[async_trait]
impl AssignmentStore for SqliteAuthzStore {
    async fn grant(&self, actor: &Actor, a: &Assignment) -> Result<Written<Assignment>> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO authz_assignments (id, user_id, role_id, scope_kind, org_id, project_id, \
             valid_from, valid_until, granted_by, reason, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(a.id))
        .bind(id_text(a.user_id))
        .bind(id_text(a.role_id))
        .bind(scope_kind(&a.scope))
        .bind(a.scope.org_id().map(id_text))
        .bind(a.scope.project_id().map(id_text))
        .bind(a.valid_from.map(micros))
        .bind(a.valid_until.map(micros))
        .bind(a.granted_by.map(id_text))
        .bind(&a.reason)
        .bind(micros(a.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "assignment", "id", "role_id"))?;
        let revision = append(
            &mut tx,
            actor,
            "assignment.grant",
            &a.id.to_string(),
            &assignment_payload(a, None),
        )
        .await?;
        tx.commit().await.map_err(st)?;
        Ok(Written { value: a.clone(), revision })
    }

    async fn revoke(
        &self,
        actor: &Actor,
        id: AssignmentId,
        reason: &str,
    ) -> Result<Written<Assignment>> {
        let mut tx = self.begin().await?;
        let a =
            load_assignment(&mut tx, id).await?.ok_or_else(|| Error::not_found("assignment"))?;
        sqlx::query("DELETE FROM authz_assignments WHERE id = ?")
            .bind(id_text(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        let revision = append(
            &mut tx,
            actor,
            "assignment.revoke",
            &id.to_string(),
            &assignment_payload(&a, Some(reason)),
        )
        .await?;
        tx.commit().await.map_err(st)?;
        Ok(Written { value: a, revision })
    }

    async fn get_assignment(&self, id: AssignmentId) -> Result<Assignment> {
        let mut conn = self.reader.acquire().await.map_err(st)?;
        load_assignment(&mut conn, id).await?.ok_or_else(|| Error::not_found("assignment"))
    }

    async fn list_assignments(&self, filter: &AssignmentFilter) -> Result<Vec<Assignment>> {
        let mut q = QueryBuilder::<Sqlite>::new(ASSIGNMENT_COLS);
        q.push(" WHERE 1 = 1");
        if let Some(u) = filter.user_id {
            q.push(" AND user_id = ").push_bind(id_text(u));
        }
        if let Some(r) = filter.role_id {
            q.push(" AND role_id = ").push_bind(id_text(r));
        }
        if let Some(s) = &filter.scope {
            q.push(" AND scope_kind = ").push_bind(scope_kind(s));
            match s.org_id() {
                Some(o) => q.push(" AND org_id = ").push_bind(id_text(o)),
                None => q.push(" AND org_id IS NULL"),
            };
            match s.project_id() {
                Some(p) => q.push(" AND project_id = ").push_bind(id_text(p)),
                None => q.push(" AND project_id IS NULL"),
            };
        }
        q.push(" ORDER BY created_at, id");
        let rows: Vec<AssignmentRow> =
            q.build_query_as().fetch_all(&self.reader).await.map_err(st)?;
        rows.into_iter().map(Assignment::try_from).collect()
    }
}

#[async_trait]
impl AuditLog for SqliteAuthzStore {
    async fn list_audit(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, subject, payload, prev_hash, hash FROM authz_audit \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        rows.into_iter().map(AuditRecord::try_from).collect()
    }

    async fn revision(&self) -> Result<i64> {
        let (rev,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM authz_audit")
            .fetch_one(&self.reader)
            .await
            .map_err(st)?;
        Ok(rev)
    }
}

#[async_trait]
impl AuthzAdmin for SqliteAuthzStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_permissions_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    async fn load_snapshot(&self) -> Result<Snapshot> {
        // One read transaction: WAL gives it a consistent view of all three reads.
        let mut tx = self.reader.begin().await.map_err(st)?;
        let (revision,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM authz_audit")
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?;
        let roles: Vec<RoleRow> = QueryBuilder::<Sqlite>::new(ROLE_COLS)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(st)?;
        let assignments: Vec<AssignmentRow> = QueryBuilder::<Sqlite>::new(ASSIGNMENT_COLS)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(Snapshot {
            roles: roles.into_iter().map(Role::try_from).collect::<Result<_>>()?,
            assignments: assignments
                .into_iter()
                .map(Assignment::try_from)
                .collect::<Result<_>>()?,
            revision,
        })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
