//! SQLite adapter (feature `sqlite`): the embedded default.
//!
//! One writer connection plus a read pool over a WAL database — normally the same file as
//! pm-core's store. Multi-statement writes (a sync's base + conflicts, an outbound attempt + the
//! subscription's failure streak, enqueue + cursor) are one transaction on the writer; queue
//! claims are a single `UPDATE … RETURNING`, which the single writer makes atomic.
//!
//! Storage conventions (see `migrations/sqlite`): ids are hyphenated UUID text, timestamps are
//! integer microseconds, JSON is text. Row structs are private; conversion into domain types
//! happens in `TryFrom` impls so corrupt rows surface as errors, not panics.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::{CommentId, IntegrationId, OrgId, TaskId};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::shared::*;
use crate::crypto::Sealed;
use crate::model::*;
use crate::provider::ProviderKey;
use crate::store::*;
use crate::{Error, Result};

/// The SQLite integration store. Cheap to clone (pools are reference-counted).
#[derive(Debug, Clone)]
pub struct SqliteIntegrationStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteIntegrationStore {
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
                .map_err(st)?;
            return Ok(Self::from_pools(pool.clone(), pool));
        }
        let opts = opts.journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(st)?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .map_err(st)?;
        Ok(Self::from_pools(writer, reader))
    }

    /// Wraps existing pools (a writer with one connection, and a reader pool; may be the same).
    pub fn from_pools(writer: SqlitePool, reader: SqlitePool) -> Self {
        Self { writer, reader }
    }
}

fn t(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn ot<T: Into<Uuid>>(id: Option<T>) -> Option<String> {
    id.map(t)
}

fn parse_id<T: From<Uuid>>(s: &str) -> Result<T> {
    Uuid::parse_str(s).map(T::from).map_err(|e| corrupt("id", e))
}

fn parse_opt<T: From<Uuid>>(s: Option<&str>) -> Result<Option<T>> {
    s.map(parse_id).transpose()
}

fn us(at: OffsetDateTime) -> i64 {
    pm_core::query::micros(at)
}

fn ous(at: Option<OffsetDateTime>) -> Option<i64> {
    at.map(us)
}

fn from_us(v: i64) -> Result<OffsetDateTime> {
    pm_core::query::from_micros(v).map_err(|e| corrupt("timestamp", e))
}

fn from_ous(v: Option<i64>) -> Result<Option<OffsetDateTime>> {
    v.map(from_us).transpose()
}

fn key(s: &str) -> Result<ProviderKey> {
    ProviderKey::parse(s).map_err(|e| corrupt("provider", e))
}

/// Maps a foreign-key failure to the missing parent.
fn fk(entity: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| match &e {
        sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {
            Error::not_found(entity)
        }
        _ => st(e),
    }
}

// --- rows ----------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct ProviderRow {
    key: String,
    name: String,
    capabilities: String,
    enabled: bool,
    created_at: i64,
}

impl TryFrom<ProviderRow> for ProviderRecord {
    type Error = Error;
    fn try_from(r: ProviderRow) -> Result<Self> {
        Ok(ProviderRecord {
            key: key(&r.key)?,
            name: r.name,
            capabilities: from_json("capabilities", &r.capabilities)?,
            enabled: r.enabled,
            created_at: from_us(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct IntegrationRow {
    id: String,
    org_id: String,
    project_id: String,
    provider: String,
    name: String,
    config: String,
    mappings: String,
    enabled: bool,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<IntegrationRow> for Integration {
    type Error = Error;
    fn try_from(r: IntegrationRow) -> Result<Self> {
        Ok(Integration {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            project_id: parse_id(&r.project_id)?,
            provider: key(&r.provider)?,
            name: r.name,
            config: from_json("config", &r.config)?,
            mappings: from_json("mappings", &r.mappings)?,
            enabled: r.enabled,
            version: r.version,
            created_at: from_us(r.created_at)?,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    id: String,
    integration_id: String,
    kind: String,
    sealed: String,
    expires_at: Option<i64>,
    version: i64,
    updated_at: i64,
}

impl TryFrom<CredentialRow> for Credential {
    type Error = Error;
    fn try_from(r: CredentialRow) -> Result<Self> {
        Ok(Credential {
            id: parse_id(&r.id)?,
            integration_id: parse_id(&r.integration_id)?,
            kind: CredentialKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            sealed: Sealed::from_stored(r.sealed),
            expires_at: from_ous(r.expires_at)?,
            version: r.version,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OAuthStateRow {
    state_hash: String,
    integration_id: String,
    user_id: String,
    verifier: String,
    redirect_uri: String,
    created_at: i64,
    expires_at: i64,
}

impl TryFrom<OAuthStateRow> for OAuthState {
    type Error = Error;
    fn try_from(r: OAuthStateRow) -> Result<Self> {
        Ok(OAuthState {
            state_hash: r.state_hash,
            integration_id: parse_id(&r.integration_id)?,
            user_id: parse_id(&r.user_id)?,
            verifier: Sealed::from_stored(r.verifier),
            redirect_uri: r.redirect_uri,
            created_at: from_us(r.created_at)?,
            expires_at: from_us(r.expires_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OAuthTokenRow {
    integration_id: String,
    access_token: String,
    refresh_token: Option<String>,
    token_type: String,
    scopes: String,
    expires_at: Option<i64>,
    status: String,
    status_reason: Option<String>,
    connected_by: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OAuthTokenRow> for OAuthToken {
    type Error = Error;
    fn try_from(r: OAuthTokenRow) -> Result<Self> {
        Ok(OAuthToken {
            integration_id: parse_id(&r.integration_id)?,
            access: Sealed::from_stored(r.access_token),
            refresh: r.refresh_token.map(Sealed::from_stored),
            token_type: r.token_type,
            scopes: from_json("scopes", &r.scopes)?,
            expires_at: from_ous(r.expires_at)?,
            status: OAuthStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            status_reason: r.status_reason,
            connected_by: parse_id(&r.connected_by)?,
            version: r.version,
            created_at: from_us(r.created_at)?,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct InboundRow {
    id: String,
    provider: String,
    integration_id: String,
    delivery_id: String,
    headers: String,
    body: Vec<u8>,
    status: String,
    attempts: i32,
    available_at: i64,
    last_error: Option<String>,
    received_at: i64,
}

impl TryFrom<InboundRow> for InboundDelivery {
    type Error = Error;
    fn try_from(r: InboundRow) -> Result<Self> {
        Ok(InboundDelivery {
            id: parse_id(&r.id)?,
            provider: key(&r.provider)?,
            integration_id: parse_id(&r.integration_id)?,
            delivery_id: r.delivery_id,
            headers: from_json("headers", &r.headers)?,
            body: r.body,
            status: QueueStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            attempts: r.attempts,
            available_at: from_us(r.available_at)?,
            last_error: r.last_error,
            received_at: from_us(r.received_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MappingRow {
    id: String,
    integration_id: String,
    task_id: String,
    external_id: String,
    external_url: Option<String>,
    base: String,
    remote_updated_at: Option<i64>,
    pushed_fingerprint: Option<String>,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<MappingRow> for ExternalMapping {
    type Error = Error;
    fn try_from(r: MappingRow) -> Result<Self> {
        Ok(ExternalMapping {
            id: parse_id(&r.id)?,
            integration_id: parse_id(&r.integration_id)?,
            task_id: parse_id(&r.task_id)?,
            external_id: r.external_id,
            external_url: r.external_url,
            base: from_json("base", &r.base)?,
            remote_updated_at: from_ous(r.remote_updated_at)?,
            pushed_fingerprint: r.pushed_fingerprint,
            version: r.version,
            created_at: from_us(r.created_at)?,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ConflictRow {
    id: String,
    integration_id: String,
    mapping_id: String,
    task_id: String,
    field: String,
    base: String,
    local: String,
    remote: String,
    resolved: String,
    winner: String,
    policy: String,
    detected_at: i64,
    resolved_at: Option<i64>,
}

impl TryFrom<ConflictRow> for SyncConflict {
    type Error = Error;
    fn try_from(r: ConflictRow) -> Result<Self> {
        Ok(SyncConflict {
            id: parse_id(&r.id)?,
            integration_id: parse_id(&r.integration_id)?,
            mapping_id: parse_id(&r.mapping_id)?,
            task_id: parse_id(&r.task_id)?,
            field: r.field,
            base: from_json("base", &r.base)?,
            local: from_json("local", &r.local)?,
            remote: from_json("remote", &r.remote)?,
            resolved: from_json("resolved", &r.resolved)?,
            winner: from_json("winner", &r.winner)?,
            policy: from_json("policy", &r.policy)?,
            detected_at: from_us(r.detected_at)?,
            resolved_at: from_ous(r.resolved_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LogRow {
    id: String,
    integration_id: Option<String>,
    provider: String,
    direction: String,
    operation: String,
    ok: bool,
    detail: String,
    at: i64,
}

impl TryFrom<LogRow> for LogEntry {
    type Error = Error;
    fn try_from(r: LogRow) -> Result<Self> {
        Ok(LogEntry {
            id: parse_id(&r.id)?,
            integration_id: parse_opt(r.integration_id.as_deref())?,
            provider: r.provider,
            direction: Direction::parse(&r.direction).map_err(|e| corrupt("direction", e))?,
            operation: r.operation,
            ok: r.ok,
            detail: Redacted::from_stored(from_json::<Value>("detail", &r.detail)?),
            at: from_us(r.at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: String,
    org_id: String,
    project_id: Option<String>,
    url: String,
    events: String,
    description: String,
    secrets: String,
    enabled: bool,
    disabled_reason: Option<String>,
    consecutive_failures: i32,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = Error;
    fn try_from(r: SubscriptionRow) -> Result<Self> {
        Ok(Subscription {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            project_id: parse_opt(r.project_id.as_deref())?,
            url: r.url,
            events: from_json("events", &r.events)?,
            description: r.description,
            secrets: Sealed::from_stored(r.secrets),
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            consecutive_failures: r.consecutive_failures,
            version: r.version,
            created_at: from_us(r.created_at)?,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OutboundRow {
    id: String,
    subscription_id: String,
    event_id: String,
    event_seq: i64,
    event_kind: String,
    payload: String,
    status: String,
    attempts: i32,
    available_at: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OutboundRow> for OutboundDelivery {
    type Error = Error;
    fn try_from(r: OutboundRow) -> Result<Self> {
        Ok(OutboundDelivery {
            id: parse_id(&r.id)?,
            subscription_id: parse_id(&r.subscription_id)?,
            event_id: parse_id(&r.event_id)?,
            event_seq: r.event_seq,
            event_kind: r.event_kind,
            payload: from_json("payload", &r.payload)?,
            status: QueueStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            attempts: r.attempts,
            available_at: from_us(r.available_at)?,
            last_status: r.last_status,
            last_error: r.last_error,
            created_at: from_us(r.created_at)?,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

// --- providers -------------------------------------------------------------------------------

#[async_trait]
impl ProviderStore for SqliteIntegrationStore {
    async fn ensure_provider(&self, p: &ProviderRecord) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO int_providers (key, name, capabilities, enabled, created_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(p.key.as_str())
        .bind(&p.name)
        .bind(to_json(&p.capabilities))
        .bind(p.enabled)
        .bind(us(p.created_at))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_providers(&self) -> Result<Vec<ProviderRecord>> {
        let rows: Vec<ProviderRow> = sqlx::query_as("SELECT * FROM int_providers ORDER BY key")
            .fetch_all(&self.reader)
            .await
            .map_err(st)?;
        convert(rows)
    }
}

// --- integrations ----------------------------------------------------------------------------

const INTEGRATION: &str = "SELECT * FROM int_integrations WHERE id = ?";

#[async_trait]
impl IntegrationStore for SqliteIntegrationStore {
    async fn create_integration(&self, i: &Integration) -> Result<()> {
        sqlx::query(
            "INSERT INTO int_integrations (id, org_id, project_id, provider, name, config, \
             mappings, enabled, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t(i.id))
        .bind(t(i.org_id))
        .bind(t(i.project_id))
        .bind(i.provider.as_str())
        .bind(&i.name)
        .bind(to_json(&i.config))
        .bind(to_json(&i.mappings))
        .bind(i.enabled)
        .bind(i.version)
        .bind(us(i.created_at))
        .bind(us(i.updated_at))
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if is_unique(&e) { Error::AlreadyExists { entity: "integration" } } else { st(e) }
        })?;
        Ok(())
    }

    async fn get_integration(&self, id: IntegrationId) -> Result<Integration> {
        let row: Option<IntegrationRow> = sqlx::query_as(INTEGRATION)
            .bind(t(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("integration"))?.try_into()
    }

    async fn list_integrations(&self, org: OrgId) -> Result<Vec<Integration>> {
        let rows: Vec<IntegrationRow> =
            sqlx::query_as("SELECT * FROM int_integrations WHERE org_id = ? ORDER BY id")
                .bind(t(org))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn enabled_integrations_of(&self, provider: &ProviderKey) -> Result<Vec<Integration>> {
        let rows: Vec<IntegrationRow> = sqlx::query_as(
            "SELECT * FROM int_integrations WHERE provider = ? AND enabled ORDER BY id",
        )
        .bind(provider.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn update_integration(
        &self,
        id: IntegrationId,
        expected_version: i64,
        patch: &IntegrationPatch,
        at: OffsetDateTime,
    ) -> Result<Integration> {
        // IMMEDIATE: take the write lock up front (waiting up to the busy timeout); a deferred
        // transaction that read first fails at once when another writer on the file (pm-core's,
        // another crate's, another process's) committed meanwhile.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let row: Option<IntegrationRow> =
            sqlx::query_as(INTEGRATION).bind(t(id)).fetch_optional(&mut *tx).await.map_err(st)?;
        let mut cur: Integration =
            row.ok_or_else(|| Error::not_found("integration"))?.try_into()?;
        if cur.version != expected_version {
            return Err(Error::Conflict { entity: "integration", current: cur.version });
        }
        if let Some(n) = &patch.name {
            cur.name = n.clone();
        }
        if let Some(c) = &patch.config {
            cur.config = c.clone();
        }
        if let Some(m) = &patch.mappings {
            cur.mappings = m.clone();
        }
        if let Some(e) = patch.enabled {
            cur.enabled = e;
        }
        cur.version += 1;
        cur.updated_at = at;
        sqlx::query(
            "UPDATE int_integrations SET name = ?, config = ?, mappings = ?, enabled = ?, \
             version = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&cur.name)
        .bind(to_json(&cur.config))
        .bind(to_json(&cur.mappings))
        .bind(cur.enabled)
        .bind(cur.version)
        .bind(us(at))
        .bind(t(id))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(cur)
    }

    async fn delete_integration(&self, id: IntegrationId) -> Result<()> {
        let done = sqlx::query("DELETE FROM int_integrations WHERE id = ?")
            .bind(t(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("integration"));
        }
        Ok(())
    }
}

// --- credentials -----------------------------------------------------------------------------

#[async_trait]
impl CredentialStore for SqliteIntegrationStore {
    async fn put_credential(
        &self,
        integration: IntegrationId,
        kind: CredentialKind,
        sealed: &Sealed,
        expires_at: Option<OffsetDateTime>,
        at: OffsetDateTime,
    ) -> Result<Credential> {
        let row: CredentialRow = sqlx::query_as(
            "INSERT INTO int_credentials (id, integration_id, kind, sealed, expires_at, version, \
             updated_at) VALUES (?, ?, ?, ?, ?, 1, ?) \
             ON CONFLICT (integration_id, kind) DO UPDATE SET sealed = excluded.sealed, \
             expires_at = excluded.expires_at, version = int_credentials.version + 1, \
             updated_at = excluded.updated_at RETURNING *",
        )
        .bind(t(CredentialId::new()))
        .bind(t(integration))
        .bind(kind.as_str())
        .bind(sealed.as_str())
        .bind(ous(expires_at))
        .bind(us(at))
        .fetch_one(&self.writer)
        .await
        .map_err(fk("integration"))?;
        row.try_into()
    }

    async fn get_credential(
        &self,
        integration: IntegrationId,
        kind: CredentialKind,
    ) -> Result<Option<Credential>> {
        let row: Option<CredentialRow> =
            sqlx::query_as("SELECT * FROM int_credentials WHERE integration_id = ? AND kind = ?")
                .bind(t(integration))
                .bind(kind.as_str())
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        row.map(Credential::try_from).transpose()
    }

    async fn replace_credential(
        &self,
        id: CredentialId,
        expected_version: i64,
        sealed: &Sealed,
        expires_at: Option<OffsetDateTime>,
        at: OffsetDateTime,
    ) -> Result<Credential> {
        let row: Option<CredentialRow> = sqlx::query_as(
            "UPDATE int_credentials SET sealed = ?, expires_at = ?, version = version + 1, \
             updated_at = ? WHERE id = ? AND version = ? RETURNING *",
        )
        .bind(sealed.as_str())
        .bind(ous(expires_at))
        .bind(us(at))
        .bind(t(id))
        .bind(expected_version)
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        if let Some(r) = row {
            return r.try_into();
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM int_credentials WHERE id = ?")
                .bind(t(id))
                .fetch_optional(&self.writer)
                .await
                .map_err(st)?;
        Err(match current {
            Some(v) => Error::Conflict { entity: "credential", current: v },
            None => Error::not_found("credential"),
        })
    }

    async fn delete_credentials(&self, integration: IntegrationId) -> Result<u64> {
        let done = sqlx::query("DELETE FROM int_credentials WHERE integration_id = ?")
            .bind(t(integration))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected())
    }
}

// --- OAuth ------------------------------------------------------------------------------------

#[async_trait]
impl OAuthStore for SqliteIntegrationStore {
    async fn put_oauth_state(&self, state: &OAuthState) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        sqlx::query("DELETE FROM int_oauth_states WHERE expires_at < ?")
            .bind(us(state.created_at))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        sqlx::query(
            "INSERT INTO int_oauth_states (state_hash, integration_id, user_id, verifier, \
             redirect_uri, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&state.state_hash)
        .bind(t(state.integration_id))
        .bind(t(state.user_id))
        .bind(state.verifier.as_str())
        .bind(&state.redirect_uri)
        .bind(us(state.created_at))
        .bind(us(state.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(fk("integration"))?;
        tx.commit().await.map_err(st)
    }

    async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthState>> {
        let row: Option<OAuthStateRow> =
            sqlx::query_as("DELETE FROM int_oauth_states WHERE state_hash = ? RETURNING *")
                .bind(state_hash)
                .fetch_optional(&self.writer)
                .await
                .map_err(st)?;
        row.map(OAuthState::try_from).transpose()
    }

    async fn put_oauth_token(&self, tok: &OAuthToken) -> Result<OAuthToken> {
        let row: OAuthTokenRow = sqlx::query_as(
            "INSERT INTO int_oauth_tokens (integration_id, access_token, refresh_token, \
             token_type, scopes, expires_at, key_id, status, status_reason, connected_by, \
             version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) \
             ON CONFLICT (integration_id) DO UPDATE SET access_token = excluded.access_token, \
             refresh_token = excluded.refresh_token, token_type = excluded.token_type, \
             scopes = excluded.scopes, expires_at = excluded.expires_at, key_id = excluded.key_id, \
             status = excluded.status, status_reason = excluded.status_reason, \
             connected_by = excluded.connected_by, version = int_oauth_tokens.version + 1, \
             updated_at = excluded.updated_at \
             RETURNING integration_id, access_token, refresh_token, token_type, scopes, \
             expires_at, status, status_reason, connected_by, version, created_at, updated_at",
        )
        .bind(t(tok.integration_id))
        .bind(tok.access.as_str())
        .bind(tok.refresh.as_ref().map(Sealed::as_str))
        .bind(&tok.token_type)
        .bind(to_json(&tok.scopes))
        .bind(ous(tok.expires_at))
        .bind(tok.key_id())
        .bind(tok.status.as_str())
        .bind(&tok.status_reason)
        .bind(t(tok.connected_by))
        .bind(us(tok.created_at))
        .bind(us(tok.updated_at))
        .fetch_one(&self.writer)
        .await
        .map_err(fk("integration"))?;
        row.try_into()
    }

    async fn get_oauth_token(&self, integration: IntegrationId) -> Result<Option<OAuthToken>> {
        let row: Option<OAuthTokenRow> = sqlx::query_as(
            "SELECT integration_id, access_token, refresh_token, token_type, scopes, expires_at, \
             status, status_reason, connected_by, version, created_at, updated_at \
             FROM int_oauth_tokens WHERE integration_id = ?",
        )
        .bind(t(integration))
        .fetch_optional(&self.reader)
        .await
        .map_err(st)?;
        row.map(OAuthToken::try_from).transpose()
    }

    async fn update_oauth_token(
        &self,
        tok: &OAuthToken,
        expected_version: i64,
    ) -> Result<OAuthToken> {
        let row: Option<OAuthTokenRow> = sqlx::query_as(
            "UPDATE int_oauth_tokens SET access_token = ?, refresh_token = ?, token_type = ?, \
             scopes = ?, expires_at = ?, key_id = ?, status = ?, status_reason = ?, \
             version = version + 1, updated_at = ? WHERE integration_id = ? AND version = ? \
             RETURNING integration_id, access_token, refresh_token, token_type, scopes, \
             expires_at, status, status_reason, connected_by, version, created_at, updated_at",
        )
        .bind(tok.access.as_str())
        .bind(tok.refresh.as_ref().map(Sealed::as_str))
        .bind(&tok.token_type)
        .bind(to_json(&tok.scopes))
        .bind(ous(tok.expires_at))
        .bind(tok.key_id())
        .bind(tok.status.as_str())
        .bind(&tok.status_reason)
        .bind(us(tok.updated_at))
        .bind(t(tok.integration_id))
        .bind(expected_version)
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        if let Some(r) = row {
            return r.try_into();
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM int_oauth_tokens WHERE integration_id = ?")
                .bind(t(tok.integration_id))
                .fetch_optional(&self.writer)
                .await
                .map_err(st)?;
        Err(match current {
            Some(v) => Error::Conflict { entity: "oauth connection", current: v },
            None => Error::not_found("oauth connection"),
        })
    }

    async fn delete_oauth_token(&self, integration: IntegrationId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_oauth_tokens WHERE integration_id = ?")
            .bind(t(integration))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }
}

// --- inbound queue ---------------------------------------------------------------------------

#[async_trait]
impl InboundStore for SqliteIntegrationStore {
    async fn ingest(&self, d: &InboundDelivery) -> Result<Ingested> {
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO int_inbound (id, provider, integration_id, delivery_id, headers, body, \
             status, attempts, available_at, last_error, received_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (provider, delivery_id) DO NOTHING RETURNING id",
        )
        .bind(t(d.id))
        .bind(d.provider.as_str())
        .bind(t(d.integration_id))
        .bind(&d.delivery_id)
        .bind(to_json(&d.headers))
        .bind(&d.body)
        .bind(d.status.as_str())
        .bind(d.attempts)
        .bind(us(d.available_at))
        .bind(&d.last_error)
        .bind(us(d.received_at))
        .fetch_optional(&self.writer)
        .await
        .map_err(fk("integration"))?;
        if inserted.is_some() {
            return Ok(Ingested::New(d.id));
        }
        let existing: String =
            sqlx::query_scalar("SELECT id FROM int_inbound WHERE provider = ? AND delivery_id = ?")
                .bind(d.provider.as_str())
                .bind(&d.delivery_id)
                .fetch_one(&self.writer)
                .await
                .map_err(st)?;
        Ok(Ingested::Duplicate(parse_id(&existing)?))
    }

    async fn get_inbound(&self, id: DeliveryId) -> Result<InboundDelivery> {
        let row: Option<InboundRow> = sqlx::query_as("SELECT * FROM int_inbound WHERE id = ?")
            .bind(t(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("delivery"))?.try_into()
    }

    async fn claim_inbound(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<InboundDelivery>> {
        let rows: Vec<InboundRow> = sqlx::query_as(
            "UPDATE int_inbound SET available_at = ?, attempts = attempts + 1 WHERE id IN \
             (SELECT id FROM int_inbound WHERE status = 'pending' AND available_at <= ? \
              ORDER BY id LIMIT ?) RETURNING *",
        )
        .bind(us(lease_until))
        .bind(us(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        let mut out: Vec<InboundDelivery> = convert(rows)?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn finish_inbound(&self, id: DeliveryId, outcome: &Attempt) -> Result<()> {
        let (status, error, retry) = match outcome {
            Attempt::Succeeded => (QueueStatus::Done, None, None),
            Attempt::Failed { error, retry_at: Some(at) } => {
                (QueueStatus::Pending, Some(error.as_str()), Some(*at))
            }
            Attempt::Failed { error, retry_at: None } => {
                (QueueStatus::Failed, Some(error.as_str()), None)
            }
        };
        let done = sqlx::query(
            "UPDATE int_inbound SET status = ?, last_error = ?, \
             available_at = COALESCE(?, available_at) WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(ous(retry))
        .bind(t(id))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("delivery"));
        }
        Ok(())
    }
}

// --- mappings & conflicts --------------------------------------------------------------------

#[async_trait]
impl MappingStore for SqliteIntegrationStore {
    async fn create_mapping(&self, m: &ExternalMapping) -> Result<(ExternalMapping, bool)> {
        let inserted: Option<MappingRow> = sqlx::query_as(
            "INSERT INTO int_mappings (id, integration_id, task_id, external_id, external_url, \
             base, remote_updated_at, pushed_fingerprint, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (integration_id, external_id) DO NOTHING RETURNING *",
        )
        .bind(t(m.id))
        .bind(t(m.integration_id))
        .bind(t(m.task_id))
        .bind(&m.external_id)
        .bind(&m.external_url)
        .bind(to_json(&m.base))
        .bind(ous(m.remote_updated_at))
        .bind(&m.pushed_fingerprint)
        .bind(m.version)
        .bind(us(m.created_at))
        .bind(us(m.updated_at))
        .fetch_optional(&self.writer)
        .await
        .map_err(|e| {
            if is_unique(&e) {
                Error::AlreadyExists { entity: "mapping" }
            } else {
                fk("integration")(e)
            }
        })?;
        if let Some(r) = inserted {
            return Ok((r.try_into()?, true));
        }
        let existing = self
            .mapping_by_external(m.integration_id, &m.external_id)
            .await?
            .ok_or_else(|| Error::not_found("mapping"))?;
        Ok((existing, false))
    }

    async fn mapping_by_external(
        &self,
        integration: IntegrationId,
        external_id: &str,
    ) -> Result<Option<ExternalMapping>> {
        let row: Option<MappingRow> = sqlx::query_as(
            "SELECT * FROM int_mappings WHERE integration_id = ? AND external_id = ?",
        )
        .bind(t(integration))
        .bind(external_id)
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        row.map(ExternalMapping::try_from).transpose()
    }

    async fn mapping_by_task(
        &self,
        integration: IntegrationId,
        task: TaskId,
    ) -> Result<Option<ExternalMapping>> {
        let row: Option<MappingRow> =
            sqlx::query_as("SELECT * FROM int_mappings WHERE integration_id = ? AND task_id = ?")
                .bind(t(integration))
                .bind(t(task))
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        row.map(ExternalMapping::try_from).transpose()
    }

    async fn delete_mapping(&self, id: MappingId) -> Result<()> {
        let done = sqlx::query("DELETE FROM int_mappings WHERE id = ?")
            .bind(t(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("mapping"));
        }
        Ok(())
    }

    async fn list_mappings(
        &self,
        integration: IntegrationId,
        limit: u32,
        before: Option<MappingId>,
    ) -> Result<Page<ExternalMapping>> {
        check_limit(limit)?;
        let rows: Vec<MappingRow> = sqlx::query_as(
            "SELECT * FROM int_mappings WHERE integration_id = ? AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(t(integration))
        .bind(ot(before))
        .bind(ot(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |m: &ExternalMapping| m.id.0))
    }

    async fn commit_sync(
        &self,
        id: MappingId,
        expected_version: i64,
        base: &SyncedBase,
        conflicts: &[SyncConflict],
    ) -> Result<ExternalMapping> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let row: Option<MappingRow> = sqlx::query_as(
            "UPDATE int_mappings SET base = ?, remote_updated_at = ?, pushed_fingerprint = ?, \
             version = version + 1, updated_at = ? WHERE id = ? AND version = ? RETURNING *",
        )
        .bind(to_json(&base.base))
        .bind(ous(base.remote_updated_at))
        .bind(&base.pushed_fingerprint)
        .bind(us(base.at))
        .bind(t(id))
        .bind(expected_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let Some(row) = row else {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT version FROM int_mappings WHERE id = ?")
                    .bind(t(id))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(st)?;
            return Err(match current {
                Some(v) => Error::Conflict { entity: "mapping", current: v },
                None => Error::not_found("mapping"),
            });
        };
        for c in conflicts {
            sqlx::query(
                "INSERT INTO int_conflicts (id, integration_id, mapping_id, task_id, field, base, \
                 local, remote, resolved, winner, policy, detected_at, resolved_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(t(c.id))
            .bind(t(c.integration_id))
            .bind(t(c.mapping_id))
            .bind(t(c.task_id))
            .bind(&c.field)
            .bind(to_json(&c.base))
            .bind(to_json(&c.local))
            .bind(to_json(&c.remote))
            .bind(to_json(&c.resolved))
            .bind(to_json(&c.winner))
            .bind(to_json(&c.policy))
            .bind(us(c.detected_at))
            .bind(ous(c.resolved_at))
            .execute(&mut *tx)
            .await
            .map_err(fk("mapping"))?;
        }
        tx.commit().await.map_err(st)?;
        row.try_into()
    }

    async fn list_conflicts(
        &self,
        integration: IntegrationId,
        unresolved_only: bool,
        limit: u32,
        before: Option<ConflictId>,
    ) -> Result<Page<SyncConflict>> {
        check_limit(limit)?;
        let rows: Vec<ConflictRow> = sqlx::query_as(
            "SELECT * FROM int_conflicts WHERE integration_id = ? AND (? IS NULL OR id < ?) \
             AND (? = 0 OR resolved_at IS NULL) ORDER BY id DESC LIMIT ?",
        )
        .bind(t(integration))
        .bind(ot(before))
        .bind(ot(before))
        .bind(unresolved_only)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |c: &SyncConflict| c.id.0))
    }

    async fn get_conflict(&self, id: ConflictId) -> Result<SyncConflict> {
        let row: Option<ConflictRow> = sqlx::query_as("SELECT * FROM int_conflicts WHERE id = ?")
            .bind(t(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("conflict"))?.try_into()
    }

    async fn resolve_conflict(&self, id: ConflictId, at: OffsetDateTime) -> Result<SyncConflict> {
        let row: Option<ConflictRow> = sqlx::query_as(
            "UPDATE int_conflicts SET resolved_at = COALESCE(resolved_at, ?) WHERE id = ? \
             RETURNING *",
        )
        .bind(us(at))
        .bind(t(id))
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("conflict"))?.try_into()
    }
}

// --- sync state: comment links, intents, push failures ----------------------------------------

#[derive(sqlx::FromRow)]
struct CommentLinkRow {
    id: String,
    integration_id: String,
    task_id: String,
    comment_id: String,
    external_id: String,
    external_comment_id: String,
    local_fingerprint: String,
    remote_fingerprint: String,
    origin: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<CommentLinkRow> for CommentLink {
    type Error = Error;
    fn try_from(r: CommentLinkRow) -> Result<Self> {
        Ok(CommentLink {
            id: parse_id(&r.id)?,
            integration_id: parse_id(&r.integration_id)?,
            task_id: parse_id(&r.task_id)?,
            comment_id: parse_id(&r.comment_id)?,
            external_id: r.external_id,
            external_comment_id: r.external_comment_id,
            local_fingerprint: r.local_fingerprint,
            remote_fingerprint: r.remote_fingerprint,
            origin: crate::sync::Side::parse(&r.origin).map_err(|e| corrupt("origin", e))?,
            created_at: from_us(r.created_at)?,
            updated_at: from_us(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SyncFailureRow {
    id: String,
    integration_id: String,
    task_id: Option<String>,
    event_id: String,
    event_seq: i64,
    event_kind: String,
    attempts: i32,
    error: String,
    failed_at: i64,
}

impl TryFrom<SyncFailureRow> for SyncFailure {
    type Error = Error;
    fn try_from(r: SyncFailureRow) -> Result<Self> {
        Ok(SyncFailure {
            id: parse_id(&r.id)?,
            integration_id: parse_id(&r.integration_id)?,
            task_id: parse_opt(r.task_id.as_deref())?,
            event_id: parse_id(&r.event_id)?,
            event_seq: r.event_seq,
            event_kind: r.event_kind,
            attempts: r.attempts,
            error: r.error,
            failed_at: from_us(r.failed_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ParkedPushRow {
    id: String,
    integration_id: String,
    task_id: String,
    // `event_id` and `event_seq` are copies of the event's own, for uniqueness and order.
    event: String,
    attempts: i32,
    last_error: Option<String>,
    next_attempt_at: i64,
    parked_at: i64,
}

impl TryFrom<ParkedPushRow> for ParkedPush {
    type Error = Error;
    fn try_from(r: ParkedPushRow) -> Result<Self> {
        Ok(ParkedPush {
            id: parse_id(&r.id)?,
            integration_id: parse_id(&r.integration_id)?,
            task_id: parse_id(&r.task_id)?,
            event: from_json("event", &r.event)?,
            attempts: r.attempts,
            last_error: r.last_error,
            next_attempt_at: from_us(r.next_attempt_at)?,
            parked_at: from_us(r.parked_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ParkedPushStatsRow {
    provider: String,
    parked: i64,
    oldest: i64,
}

impl TryFrom<ParkedPushStatsRow> for ParkedPushStats {
    type Error = Error;
    fn try_from(r: ParkedPushStatsRow) -> Result<Self> {
        Ok(ParkedPushStats {
            provider: key(&r.provider)?,
            count: u64::try_from(r.parked).map_err(|e| corrupt("parked", e))?,
            oldest_parked_at: from_us(r.oldest)?,
        })
    }
}

/// The insert-or-update of a push failure (one row per integration and event).
async fn upsert_sync_failure<'c>(
    conn: impl sqlx::SqliteExecutor<'c>,
    f: &SyncFailure,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO int_sync_failures (id, integration_id, task_id, event_id, event_seq, \
         event_kind, attempts, error, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (integration_id, event_id) DO UPDATE SET attempts = excluded.attempts, \
         error = excluded.error, failed_at = excluded.failed_at",
    )
    .bind(t(f.id))
    .bind(t(f.integration_id))
    .bind(ot(f.task_id))
    .bind(t(f.event_id.0))
    .bind(f.event_seq)
    .bind(&f.event_kind)
    .bind(f.attempts)
    .bind(&f.error)
    .bind(us(f.failed_at))
    .execute(conn)
    .await
    .map_err(fk("integration"))?;
    Ok(())
}

/// Inserts a parked push unless its (integration, event) is parked already; `true` if inserted.
async fn insert_parked_push<'c>(
    conn: impl sqlx::SqliteExecutor<'c>,
    p: &ParkedPush,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO int_parked_pushes (id, integration_id, task_id, event_id, event_seq, event, \
         attempts, last_error, next_attempt_at, parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (integration_id, event_id) DO NOTHING",
    )
    .bind(t(p.id))
    .bind(t(p.integration_id))
    .bind(t(p.task_id))
    .bind(t(p.event.id.0))
    .bind(p.event.seq)
    .bind(to_json(&p.event))
    .bind(p.attempts)
    .bind(&p.last_error)
    .bind(us(p.next_attempt_at))
    .bind(us(p.parked_at))
    .execute(conn)
    .await
    .map_err(fk("integration"))?;
    Ok(done.rows_affected() > 0)
}

#[async_trait]
impl SyncStateStore for SqliteIntegrationStore {
    async fn link_comment(&self, l: &CommentLink) -> Result<(CommentLink, bool)> {
        let inserted: Option<CommentLinkRow> = sqlx::query_as(
            "INSERT INTO int_comment_links (id, integration_id, task_id, comment_id, external_id, \
             external_comment_id, local_fingerprint, remote_fingerprint, origin, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (integration_id, comment_id) DO NOTHING RETURNING *",
        )
        .bind(t(l.id))
        .bind(t(l.integration_id))
        .bind(t(l.task_id))
        .bind(t(l.comment_id))
        .bind(&l.external_id)
        .bind(&l.external_comment_id)
        .bind(&l.local_fingerprint)
        .bind(&l.remote_fingerprint)
        .bind(l.origin.as_str())
        .bind(us(l.created_at))
        .bind(us(l.updated_at))
        .fetch_optional(&self.writer)
        .await
        .map_err(|e| {
            if is_unique(&e) {
                Error::AlreadyExists { entity: "comment link" }
            } else {
                fk("integration")(e)
            }
        })?;
        if let Some(r) = inserted {
            return Ok((r.try_into()?, true));
        }
        let existing = self
            .comment_link(l.integration_id, l.comment_id)
            .await?
            .ok_or_else(|| Error::not_found("comment link"))?;
        Ok((existing, false))
    }

    async fn comment_link(
        &self,
        integration: IntegrationId,
        comment: CommentId,
    ) -> Result<Option<CommentLink>> {
        // The writer: a link is read right after it is written (echo checks), and a read-pool
        // snapshot may predate it.
        let row: Option<CommentLinkRow> = sqlx::query_as(
            "SELECT * FROM int_comment_links WHERE integration_id = ? AND comment_id = ?",
        )
        .bind(t(integration))
        .bind(t(comment))
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        row.map(CommentLink::try_from).transpose()
    }

    async fn comment_link_by_external(
        &self,
        integration: IntegrationId,
        external_comment_id: &str,
    ) -> Result<Option<CommentLink>> {
        let row: Option<CommentLinkRow> = sqlx::query_as(
            "SELECT * FROM int_comment_links WHERE integration_id = ? AND external_comment_id = ?",
        )
        .bind(t(integration))
        .bind(external_comment_id)
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        row.map(CommentLink::try_from).transpose()
    }

    async fn update_comment_link(
        &self,
        id: CommentLinkId,
        local_fingerprint: &str,
        remote_fingerprint: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE int_comment_links SET local_fingerprint = ?, remote_fingerprint = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(local_fingerprint)
        .bind(remote_fingerprint)
        .bind(us(at))
        .bind(t(id))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("comment link"));
        }
        Ok(())
    }

    async fn delete_comment_link(&self, id: CommentLinkId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_comment_links WHERE id = ?")
            .bind(t(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn begin_intent(
        &self,
        intent: &Intent,
        stale_before: OffsetDateTime,
    ) -> Result<IntentClaim> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO int_intents (key, integration_id, kind, status, result, started_at, \
             finished_at) VALUES (?, ?, ?, 'pending', NULL, ?, NULL) \
             ON CONFLICT (key) DO UPDATE SET started_at = excluded.started_at \
             WHERE int_intents.status = 'pending' AND int_intents.started_at < ? \
             RETURNING key",
        )
        .bind(&intent.key)
        .bind(t(intent.integration_id))
        .bind(&intent.kind)
        .bind(us(intent.started_at))
        .bind(us(stale_before))
        .fetch_optional(&mut *tx)
        .await
        .map_err(fk("integration"))?;
        let claim = if claimed.is_some() {
            IntentClaim::Claimed
        } else {
            let (status, result): (String, Option<String>) =
                sqlx::query_as("SELECT status, result FROM int_intents WHERE key = ?")
                    .bind(&intent.key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(st)?;
            match (status.as_str(), result) {
                ("done", Some(r)) => IntentClaim::Done(from_json("intent result", &r)?),
                ("done", None) => IntentClaim::Done(Value::Null),
                _ => IntentClaim::InFlight,
            }
        };
        tx.commit().await.map_err(st)?;
        Ok(claim)
    }

    async fn finish_intent(&self, key: &str, result: &Value, at: OffsetDateTime) -> Result<()> {
        let done = sqlx::query(
            "UPDATE int_intents SET status = 'done', result = ?, finished_at = ? WHERE key = ?",
        )
        .bind(to_json(result))
        .bind(us(at))
        .bind(key)
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("intent"));
        }
        Ok(())
    }

    async fn abandon_intent(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM int_intents WHERE key = ? AND status = 'pending'")
            .bind(key)
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn intents_in_flight(
        &self,
        integration: IntegrationId,
        kind: &str,
        since: OffsetDateTime,
    ) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM int_intents WHERE integration_id = ? AND kind = ? \
             AND status = 'pending' AND started_at > ?",
        )
        .bind(t(integration))
        .bind(kind)
        .bind(us(since))
        .fetch_one(&self.writer)
        .await
        .map_err(st)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_sync_failure(&self, f: &SyncFailure) -> Result<()> {
        upsert_sync_failure(&self.writer, f).await
    }

    async fn list_sync_failures(
        &self,
        integration: IntegrationId,
        limit: u32,
        before: Option<SyncFailureId>,
    ) -> Result<Page<SyncFailure>> {
        check_limit(limit)?;
        let rows: Vec<SyncFailureRow> = sqlx::query_as(
            "SELECT * FROM int_sync_failures WHERE integration_id = ? AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(t(integration))
        .bind(ot(before))
        .bind(ot(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |f: &SyncFailure| f.id.0))
    }

    async fn get_sync_failure(&self, id: SyncFailureId) -> Result<SyncFailure> {
        let row: Option<SyncFailureRow> =
            sqlx::query_as("SELECT * FROM int_sync_failures WHERE id = ?")
                .bind(t(id))
                .fetch_optional(&self.writer)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("sync failure"))?.try_into()
    }

    async fn delete_sync_failure(&self, id: SyncFailureId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_sync_failures WHERE id = ?")
            .bind(t(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn requeue_sync_failure(&self, id: SyncFailureId, push: &ParkedPush) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let gone = sqlx::query("DELETE FROM int_sync_failures WHERE id = ?")
            .bind(t(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        if gone.rows_affected() == 0 {
            return Err(Error::not_found("sync failure"));
        }
        insert_parked_push(&mut *tx, push).await?;
        tx.commit().await.map_err(st)
    }

    async fn park_push(&self, push: &ParkedPush) -> Result<bool> {
        insert_parked_push(&self.writer, push).await
    }

    async fn has_parked_pushes(&self, integration: IntegrationId, task: TaskId) -> Result<bool> {
        // The writer: the pusher asks right after parking, and a read-pool snapshot may predate it.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM int_parked_pushes WHERE integration_id = ? AND task_id = ?",
        )
        .bind(t(integration))
        .bind(t(task))
        .fetch_one(&self.writer)
        .await
        .map_err(st)?;
        Ok(n > 0)
    }

    async fn claim_parked_pushes(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ParkedPush>> {
        let rows: Vec<ParkedPushRow> = sqlx::query_as(
            "UPDATE int_parked_pushes SET next_attempt_at = ? WHERE id IN \
             (SELECT q.id FROM int_parked_pushes q WHERE q.next_attempt_at <= ? AND NOT EXISTS \
               (SELECT 1 FROM int_parked_pushes e WHERE e.integration_id = q.integration_id \
                AND e.task_id = q.task_id AND e.event_seq < q.event_seq) \
              ORDER BY q.next_attempt_at, q.event_seq LIMIT ?) RETURNING *",
        )
        .bind(us(lease_until))
        .bind(us(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        let mut out: Vec<ParkedPush> = convert(rows)?;
        out.sort_by_key(|p| p.event.seq);
        Ok(out)
    }

    async fn reschedule_push(
        &self,
        id: ParkedPushId,
        attempts: i32,
        error: &str,
        next_attempt_at: OffsetDateTime,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE int_parked_pushes SET attempts = ?, last_error = ?, next_attempt_at = ? \
             WHERE id = ?",
        )
        .bind(attempts)
        .bind(error)
        .bind(us(next_attempt_at))
        .bind(t(id))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("parked push"));
        }
        Ok(())
    }

    async fn drop_parked_push(&self, id: ParkedPushId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_parked_pushes WHERE id = ?")
            .bind(t(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn fail_parked_push(&self, id: ParkedPushId, failure: &SyncFailure) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let gone = sqlx::query("DELETE FROM int_parked_pushes WHERE id = ?")
            .bind(t(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        if gone.rows_affected() == 0 {
            return Err(Error::not_found("parked push"));
        }
        upsert_sync_failure(&mut *tx, failure).await?;
        tx.commit().await.map_err(st)
    }

    async fn list_parked_pushes(
        &self,
        integration: IntegrationId,
        limit: u32,
        after: Option<ParkedPushId>,
    ) -> Result<Page<ParkedPush>> {
        check_limit(limit)?;
        let rows: Vec<ParkedPushRow> = sqlx::query_as(
            "SELECT * FROM int_parked_pushes WHERE integration_id = ? AND (? IS NULL OR id > ?) \
             ORDER BY id LIMIT ?",
        )
        .bind(t(integration))
        .bind(ot(after))
        .bind(ot(after))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |p: &ParkedPush| p.id.0))
    }

    async fn parked_push_stats(&self) -> Result<Vec<ParkedPushStats>> {
        let rows: Vec<ParkedPushStatsRow> = sqlx::query_as(
            "SELECT i.provider AS provider, count(*) AS parked, min(p.parked_at) AS oldest \
             FROM int_parked_pushes p JOIN int_integrations i ON i.id = p.integration_id \
             GROUP BY i.provider ORDER BY i.provider",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

// --- logs ------------------------------------------------------------------------------------

#[async_trait]
impl LogStore for SqliteIntegrationStore {
    async fn append_log(&self, e: &LogEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO int_logs (id, integration_id, provider, direction, operation, ok, detail, \
             at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t(e.id))
        .bind(ot(e.integration_id))
        .bind(&e.provider)
        .bind(e.direction.as_str())
        .bind(&e.operation)
        .bind(e.ok)
        .bind(to_json(e.detail.as_value()))
        .bind(us(e.at))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn list_logs(
        &self,
        integration: Option<IntegrationId>,
        limit: u32,
        before: Option<LogId>,
    ) -> Result<Page<LogEntry>> {
        check_limit(limit)?;
        let rows: Vec<LogRow> = sqlx::query_as(
            "SELECT * FROM int_logs WHERE (? IS NULL OR integration_id = ?) \
             AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(ot(integration))
        .bind(ot(integration))
        .bind(ot(before))
        .bind(ot(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |e: &LogEntry| e.id.0))
    }
}

// --- outbound webhooks -----------------------------------------------------------------------

const SUBSCRIPTION: &str = "SELECT * FROM int_subscriptions WHERE id = ?";

#[async_trait]
impl WebhookStore for SqliteIntegrationStore {
    async fn create_subscription(&self, s: &Subscription) -> Result<()> {
        sqlx::query(
            "INSERT INTO int_subscriptions (id, org_id, project_id, url, events, description, \
             secrets, enabled, disabled_reason, consecutive_failures, version, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t(s.id))
        .bind(t(s.org_id))
        .bind(ot(s.project_id))
        .bind(&s.url)
        .bind(to_json(&s.events))
        .bind(&s.description)
        .bind(s.secrets.as_str())
        .bind(s.enabled)
        .bind(&s.disabled_reason)
        .bind(s.consecutive_failures)
        .bind(s.version)
        .bind(us(s.created_at))
        .bind(us(s.updated_at))
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if is_unique(&e) { Error::AlreadyExists { entity: "subscription" } } else { st(e) }
        })?;
        Ok(())
    }

    async fn get_subscription(&self, id: SubscriptionId) -> Result<Subscription> {
        let row: Option<SubscriptionRow> = sqlx::query_as(SUBSCRIPTION)
            .bind(t(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("subscription"))?.try_into()
    }

    async fn list_subscriptions(&self, org: OrgId) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> =
            sqlx::query_as("SELECT * FROM int_subscriptions WHERE org_id = ? ORDER BY id")
                .bind(t(org))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn enabled_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> =
            sqlx::query_as("SELECT * FROM int_subscriptions WHERE enabled ORDER BY id")
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn update_subscription(
        &self,
        id: SubscriptionId,
        expected_version: i64,
        patch: &SubscriptionPatch,
        at: OffsetDateTime,
    ) -> Result<Subscription> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let row: Option<SubscriptionRow> =
            sqlx::query_as(SUBSCRIPTION).bind(t(id)).fetch_optional(&mut *tx).await.map_err(st)?;
        let mut cur: Subscription =
            row.ok_or_else(|| Error::not_found("subscription"))?.try_into()?;
        if cur.version != expected_version {
            return Err(Error::Conflict { entity: "subscription", current: cur.version });
        }
        apply_subscription_patch(&mut cur, patch, at);
        sqlx::query(
            "UPDATE int_subscriptions SET url = ?, events = ?, description = ?, secrets = ?, \
             enabled = ?, disabled_reason = ?, consecutive_failures = ?, version = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(&cur.url)
        .bind(to_json(&cur.events))
        .bind(&cur.description)
        .bind(cur.secrets.as_str())
        .bind(cur.enabled)
        .bind(&cur.disabled_reason)
        .bind(cur.consecutive_failures)
        .bind(cur.version)
        .bind(us(at))
        .bind(t(id))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(cur)
    }

    async fn delete_subscription(&self, id: SubscriptionId) -> Result<()> {
        let done = sqlx::query("DELETE FROM int_subscriptions WHERE id = ?")
            .bind(t(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("subscription"));
        }
        Ok(())
    }

    async fn cursor(&self, name: &str) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT position FROM int_cursors WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.writer)
            .await
            .map_err(st)?;
        Ok(v.unwrap_or(0))
    }

    async fn enqueue_outbound(
        &self,
        consumer: &str,
        upto: i64,
        deliveries: &[OutboundDelivery],
    ) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let mut inserted = 0;
        for d in deliveries {
            let done = sqlx::query(
                "INSERT INTO int_outbound (id, subscription_id, event_id, event_seq, event_kind, \
                 payload, status, attempts, available_at, last_status, last_error, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (subscription_id, event_id) DO NOTHING",
            )
            .bind(t(d.id))
            .bind(t(d.subscription_id))
            .bind(t(d.event_id))
            .bind(d.event_seq)
            .bind(&d.event_kind)
            .bind(to_json(&d.payload))
            .bind(d.status.as_str())
            .bind(d.attempts)
            .bind(us(d.available_at))
            .bind(d.last_status)
            .bind(&d.last_error)
            .bind(us(d.created_at))
            .bind(us(d.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(fk("subscription"))?;
            inserted += done.rows_affected();
        }
        sqlx::query(
            "INSERT INTO int_cursors (name, position) VALUES (?, ?) ON CONFLICT (name) \
             DO UPDATE SET position = MAX(position, excluded.position)",
        )
        .bind(consumer)
        .bind(upto)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(inserted)
    }

    async fn claim_outbound(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboundDelivery>> {
        let rows: Vec<OutboundRow> = sqlx::query_as(
            "UPDATE int_outbound SET available_at = ?, attempts = attempts + 1 WHERE id IN \
             (SELECT id FROM int_outbound WHERE status = 'pending' AND available_at <= ? \
              ORDER BY id LIMIT ?) RETURNING *",
        )
        .bind(us(lease_until))
        .bind(us(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        let mut out: Vec<OutboundDelivery> = convert(rows)?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn finish_outbound(
        &self,
        id: OutboundId,
        a: &OutboundAttempt,
    ) -> Result<(OutboundDelivery, Subscription)> {
        let status = outbound_status(a);
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let row: Option<OutboundRow> = sqlx::query_as(
            "UPDATE int_outbound SET status = ?, last_status = ?, last_error = ?, \
             available_at = COALESCE(?, available_at), updated_at = ? WHERE id = ? RETURNING *",
        )
        .bind(status.as_str())
        .bind(a.status)
        .bind(&a.error)
        .bind(ous(a.retry_at))
        .bind(us(a.at))
        .bind(t(id))
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let delivery: OutboundDelivery =
            row.ok_or_else(|| Error::not_found("delivery"))?.try_into()?;
        let sub: SubscriptionRow = if a.succeeded() {
            sqlx::query_as(
                "UPDATE int_subscriptions SET consecutive_failures = 0 WHERE id = ? RETURNING *",
            )
            .bind(t(delivery.subscription_id))
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?
        } else {
            sqlx::query_as(
                "UPDATE int_subscriptions SET consecutive_failures = consecutive_failures + 1, \
                 enabled = CASE WHEN consecutive_failures + 1 >= ? THEN 0 ELSE enabled END, \
                 disabled_reason = CASE WHEN enabled AND consecutive_failures + 1 >= ? \
                   THEN ? ELSE disabled_reason END, \
                 version = version + CASE WHEN enabled AND consecutive_failures + 1 >= ? \
                   THEN 1 ELSE 0 END \
                 WHERE id = ? RETURNING *",
            )
            .bind(a.disable_after)
            .bind(a.disable_after)
            .bind(auto_disabled_reason(a.disable_after))
            .bind(a.disable_after)
            .bind(t(delivery.subscription_id))
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?
        };
        tx.commit().await.map_err(st)?;
        Ok((delivery, sub.try_into()?))
    }

    async fn get_outbound(&self, id: OutboundId) -> Result<OutboundDelivery> {
        let row: Option<OutboundRow> = sqlx::query_as("SELECT * FROM int_outbound WHERE id = ?")
            .bind(t(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("delivery"))?.try_into()
    }

    async fn list_outbound(
        &self,
        subscription: SubscriptionId,
        limit: u32,
        before: Option<OutboundId>,
    ) -> Result<Page<OutboundDelivery>> {
        check_limit(limit)?;
        let rows: Vec<OutboundRow> = sqlx::query_as(
            "SELECT * FROM int_outbound WHERE subscription_id = ? AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(t(subscription))
        .bind(ot(before))
        .bind(ot(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |d: &OutboundDelivery| d.id.0))
    }

    async fn redeliver(&self, id: OutboundId, at: OffsetDateTime) -> Result<OutboundDelivery> {
        let row: Option<OutboundRow> = sqlx::query_as(
            "UPDATE int_outbound SET status = 'pending', attempts = 0, available_at = ?, \
             updated_at = ? WHERE id = ? RETURNING *",
        )
        .bind(us(at))
        .bind(us(at))
        .bind(t(id))
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("delivery"))?.try_into()
    }
}

#[async_trait]
impl IntegrationAdmin for SqliteIntegrationStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_integrations_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
