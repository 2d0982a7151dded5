//! PostgreSQL adapter (feature `postgres`).
//!
//! Owns pm-integrations' tables (`migrations/postgres`, tracked in `_pm_integrations_migrations`
//! so the other crates' migrators coexist in the same database) over one [`PgPool`].
//! Multi-statement writes are one transaction each; queue claims lock their rows with
//! `FOR UPDATE SKIP LOCKED`, so several instances' workers never lease the same item; the
//! uniqueness constraints make ingest and enqueue idempotent across instances.
//!
//! Row structs are private; conversion into domain types happens in `TryFrom` impls so corrupt
//! rows surface as errors, not panics.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::{CommentId, IntegrationId, OrgId, TaskId};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::shared::*;
use crate::crypto::Sealed;
use crate::model::*;
use crate::provider::ProviderKey;
use crate::store::*;
use crate::{Error, Result};

/// The PostgreSQL integration store. Cheap to clone (the pool is reference-counted).
#[derive(Debug, Clone)]
pub struct PostgresIntegrationStore {
    pool: PgPool,
}

impl PostgresIntegrationStore {
    /// Connects to `url` with a pool of 5 connections. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(st)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (e.g. the one pm-core's store uses).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn u(id: impl Into<Uuid>) -> Uuid {
    id.into()
}

fn ou<T: Into<Uuid>>(id: Option<T>) -> Option<Uuid> {
    id.map(Into::into)
}

fn json<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| corrupt(what, e))
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
    capabilities: Value,
    enabled: bool,
    created_at: OffsetDateTime,
}

impl TryFrom<ProviderRow> for ProviderRecord {
    type Error = Error;
    fn try_from(r: ProviderRow) -> Result<Self> {
        Ok(ProviderRecord {
            key: key(&r.key)?,
            name: r.name,
            capabilities: json("capabilities", r.capabilities)?,
            enabled: r.enabled,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct IntegrationRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Uuid,
    provider: String,
    name: String,
    config: Value,
    mappings: Value,
    enabled: bool,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<IntegrationRow> for Integration {
    type Error = Error;
    fn try_from(r: IntegrationRow) -> Result<Self> {
        Ok(Integration {
            id: r.id.into(),
            org_id: r.org_id.into(),
            project_id: r.project_id.into(),
            provider: key(&r.provider)?,
            name: r.name,
            config: json("config", r.config)?,
            mappings: json("mappings", r.mappings)?,
            enabled: r.enabled,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    id: Uuid,
    integration_id: Uuid,
    kind: String,
    sealed: String,
    expires_at: Option<OffsetDateTime>,
    version: i64,
    updated_at: OffsetDateTime,
}

impl TryFrom<CredentialRow> for Credential {
    type Error = Error;
    fn try_from(r: CredentialRow) -> Result<Self> {
        Ok(Credential {
            id: r.id.into(),
            integration_id: r.integration_id.into(),
            kind: CredentialKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            sealed: Sealed::from_stored(r.sealed),
            expires_at: r.expires_at,
            version: r.version,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OAuthStateRow {
    state_hash: String,
    integration_id: Uuid,
    user_id: Uuid,
    verifier: String,
    redirect_uri: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl From<OAuthStateRow> for OAuthState {
    fn from(r: OAuthStateRow) -> Self {
        OAuthState {
            state_hash: r.state_hash,
            integration_id: r.integration_id.into(),
            user_id: r.user_id.into(),
            verifier: Sealed::from_stored(r.verifier),
            redirect_uri: r.redirect_uri,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct OAuthTokenRow {
    integration_id: Uuid,
    access_token: String,
    refresh_token: Option<String>,
    token_type: String,
    scopes: Value,
    expires_at: Option<OffsetDateTime>,
    status: String,
    status_reason: Option<String>,
    connected_by: Uuid,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<OAuthTokenRow> for OAuthToken {
    type Error = Error;
    fn try_from(r: OAuthTokenRow) -> Result<Self> {
        Ok(OAuthToken {
            integration_id: r.integration_id.into(),
            access: Sealed::from_stored(r.access_token),
            refresh: r.refresh_token.map(Sealed::from_stored),
            token_type: r.token_type,
            scopes: json("scopes", r.scopes)?,
            expires_at: r.expires_at,
            status: OAuthStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            status_reason: r.status_reason,
            connected_by: r.connected_by.into(),
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct InboundRow {
    id: Uuid,
    provider: String,
    integration_id: Uuid,
    delivery_id: String,
    headers: Value,
    body: Vec<u8>,
    status: String,
    attempts: i32,
    available_at: OffsetDateTime,
    last_error: Option<String>,
    received_at: OffsetDateTime,
}

impl TryFrom<InboundRow> for InboundDelivery {
    type Error = Error;
    fn try_from(r: InboundRow) -> Result<Self> {
        Ok(InboundDelivery {
            id: r.id.into(),
            provider: key(&r.provider)?,
            integration_id: r.integration_id.into(),
            delivery_id: r.delivery_id,
            headers: json("headers", r.headers)?,
            body: r.body,
            status: QueueStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            attempts: r.attempts,
            available_at: r.available_at,
            last_error: r.last_error,
            received_at: r.received_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MappingRow {
    id: Uuid,
    integration_id: Uuid,
    task_id: Uuid,
    external_id: String,
    external_url: Option<String>,
    base: Value,
    remote_updated_at: Option<OffsetDateTime>,
    pushed_fingerprint: Option<String>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<MappingRow> for ExternalMapping {
    type Error = Error;
    fn try_from(r: MappingRow) -> Result<Self> {
        Ok(ExternalMapping {
            id: r.id.into(),
            integration_id: r.integration_id.into(),
            task_id: r.task_id.into(),
            external_id: r.external_id,
            external_url: r.external_url,
            base: json("base", r.base)?,
            remote_updated_at: r.remote_updated_at,
            pushed_fingerprint: r.pushed_fingerprint,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ConflictRow {
    id: Uuid,
    integration_id: Uuid,
    mapping_id: Uuid,
    task_id: Uuid,
    field: String,
    base: Value,
    local: Value,
    remote: Value,
    resolved: Value,
    winner: String,
    policy: Value,
    detected_at: OffsetDateTime,
    resolved_at: Option<OffsetDateTime>,
}

impl TryFrom<ConflictRow> for SyncConflict {
    type Error = Error;
    fn try_from(r: ConflictRow) -> Result<Self> {
        Ok(SyncConflict {
            id: r.id.into(),
            integration_id: r.integration_id.into(),
            mapping_id: r.mapping_id.into(),
            task_id: r.task_id.into(),
            field: r.field,
            base: json("base", r.base)?,
            local: json("local", r.local)?,
            remote: json("remote", r.remote)?,
            resolved: json("resolved", r.resolved)?,
            winner: from_json("winner", &r.winner)?,
            policy: json("policy", r.policy)?,
            detected_at: r.detected_at,
            resolved_at: r.resolved_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LogRow {
    id: Uuid,
    integration_id: Option<Uuid>,
    provider: String,
    direction: String,
    operation: String,
    ok: bool,
    detail: Value,
    at: OffsetDateTime,
}

impl TryFrom<LogRow> for LogEntry {
    type Error = Error;
    fn try_from(r: LogRow) -> Result<Self> {
        Ok(LogEntry {
            id: r.id.into(),
            integration_id: r.integration_id.map(Into::into),
            provider: r.provider,
            direction: Direction::parse(&r.direction).map_err(|e| corrupt("direction", e))?,
            operation: r.operation,
            ok: r.ok,
            detail: Redacted::from_stored(r.detail),
            at: r.at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Option<Uuid>,
    url: String,
    events: Value,
    description: String,
    secrets: String,
    enabled: bool,
    disabled_reason: Option<String>,
    consecutive_failures: i32,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = Error;
    fn try_from(r: SubscriptionRow) -> Result<Self> {
        Ok(Subscription {
            id: r.id.into(),
            org_id: r.org_id.into(),
            project_id: r.project_id.map(Into::into),
            url: r.url,
            events: json("events", r.events)?,
            description: r.description,
            secrets: Sealed::from_stored(r.secrets),
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            consecutive_failures: r.consecutive_failures,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OutboundRow {
    id: Uuid,
    subscription_id: Uuid,
    event_id: Uuid,
    event_seq: i64,
    event_kind: String,
    payload: Value,
    status: String,
    attempts: i32,
    available_at: OffsetDateTime,
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<OutboundRow> for OutboundDelivery {
    type Error = Error;
    fn try_from(r: OutboundRow) -> Result<Self> {
        Ok(OutboundDelivery {
            id: r.id.into(),
            subscription_id: r.subscription_id.into(),
            event_id: r.event_id.into(),
            event_seq: r.event_seq,
            event_kind: r.event_kind,
            payload: json("payload", r.payload)?,
            status: QueueStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            attempts: r.attempts,
            available_at: r.available_at,
            last_status: r.last_status,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

// --- providers -------------------------------------------------------------------------------

#[async_trait]
impl ProviderStore for PostgresIntegrationStore {
    async fn ensure_provider(&self, p: &ProviderRecord) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO int_providers (key, name, capabilities, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
        )
        .bind(p.key.as_str())
        .bind(&p.name)
        .bind(Json(&p.capabilities))
        .bind(p.enabled)
        .bind(p.created_at)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_providers(&self) -> Result<Vec<ProviderRecord>> {
        let rows: Vec<ProviderRow> = sqlx::query_as("SELECT * FROM int_providers ORDER BY key")
            .fetch_all(&self.pool)
            .await
            .map_err(st)?;
        convert(rows)
    }
}

// --- integrations ----------------------------------------------------------------------------

const INTEGRATION: &str = "SELECT * FROM int_integrations WHERE id = $1";
const INTEGRATION_FOR_UPDATE: &str = "SELECT * FROM int_integrations WHERE id = $1 FOR UPDATE";

#[async_trait]
impl IntegrationStore for PostgresIntegrationStore {
    async fn create_integration(&self, i: &Integration) -> Result<()> {
        sqlx::query(
            "INSERT INTO int_integrations (id, org_id, project_id, provider, name, config, \
             mappings, enabled, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(u(i.id))
        .bind(u(i.org_id))
        .bind(u(i.project_id))
        .bind(i.provider.as_str())
        .bind(&i.name)
        .bind(Json(&i.config))
        .bind(Json(&i.mappings))
        .bind(i.enabled)
        .bind(i.version)
        .bind(i.created_at)
        .bind(i.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique(&e) { Error::AlreadyExists { entity: "integration" } } else { st(e) }
        })?;
        Ok(())
    }

    async fn get_integration(&self, id: IntegrationId) -> Result<Integration> {
        let row: Option<IntegrationRow> =
            sqlx::query_as(INTEGRATION).bind(u(id)).fetch_optional(&self.pool).await.map_err(st)?;
        row.ok_or_else(|| Error::not_found("integration"))?.try_into()
    }

    async fn list_integrations(&self, org: OrgId) -> Result<Vec<Integration>> {
        let rows: Vec<IntegrationRow> =
            sqlx::query_as("SELECT * FROM int_integrations WHERE org_id = $1 ORDER BY id")
                .bind(u(org))
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn enabled_integrations_of(&self, provider: &ProviderKey) -> Result<Vec<Integration>> {
        let rows: Vec<IntegrationRow> = sqlx::query_as(
            "SELECT * FROM int_integrations WHERE provider = $1 AND enabled ORDER BY id",
        )
        .bind(provider.as_str())
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(st)?;
        let row: Option<IntegrationRow> = sqlx::query_as(INTEGRATION_FOR_UPDATE)
            .bind(u(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(st)?;
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
            "UPDATE int_integrations SET name = $1, config = $2, mappings = $3, enabled = $4, \
             version = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(&cur.name)
        .bind(Json(&cur.config))
        .bind(Json(&cur.mappings))
        .bind(cur.enabled)
        .bind(cur.version)
        .bind(at)
        .bind(u(id))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(cur)
    }

    async fn delete_integration(&self, id: IntegrationId) -> Result<()> {
        let done = sqlx::query("DELETE FROM int_integrations WHERE id = $1")
            .bind(u(id))
            .execute(&self.pool)
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
impl CredentialStore for PostgresIntegrationStore {
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
             updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6) \
             ON CONFLICT (integration_id, kind) DO UPDATE SET sealed = excluded.sealed, \
             expires_at = excluded.expires_at, version = int_credentials.version + 1, \
             updated_at = excluded.updated_at RETURNING *",
        )
        .bind(u(CredentialId::new()))
        .bind(u(integration))
        .bind(kind.as_str())
        .bind(sealed.as_str())
        .bind(expires_at)
        .bind(at)
        .fetch_one(&self.pool)
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
            sqlx::query_as("SELECT * FROM int_credentials WHERE integration_id = $1 AND kind = $2")
                .bind(u(integration))
                .bind(kind.as_str())
                .fetch_optional(&self.pool)
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
            "UPDATE int_credentials SET sealed = $1, expires_at = $2, version = version + 1, \
             updated_at = $3 WHERE id = $4 AND version = $5 RETURNING *",
        )
        .bind(sealed.as_str())
        .bind(expires_at)
        .bind(at)
        .bind(u(id))
        .bind(expected_version)
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        if let Some(r) = row {
            return r.try_into();
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM int_credentials WHERE id = $1")
                .bind(u(id))
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        Err(match current {
            Some(v) => Error::Conflict { entity: "credential", current: v },
            None => Error::not_found("credential"),
        })
    }

    async fn delete_credentials(&self, integration: IntegrationId) -> Result<u64> {
        let done = sqlx::query("DELETE FROM int_credentials WHERE integration_id = $1")
            .bind(u(integration))
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected())
    }
}

// --- OAuth ------------------------------------------------------------------------------------

#[async_trait]
impl OAuthStore for PostgresIntegrationStore {
    async fn put_oauth_state(&self, state: &OAuthState) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query("DELETE FROM int_oauth_states WHERE expires_at < $1")
            .bind(state.created_at)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        sqlx::query(
            "INSERT INTO int_oauth_states (state_hash, integration_id, user_id, verifier, \
             redirect_uri, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&state.state_hash)
        .bind(u(state.integration_id))
        .bind(u(state.user_id))
        .bind(state.verifier.as_str())
        .bind(&state.redirect_uri)
        .bind(state.created_at)
        .bind(state.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(fk("integration"))?;
        tx.commit().await.map_err(st)
    }

    async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthState>> {
        let row: Option<OAuthStateRow> =
            sqlx::query_as("DELETE FROM int_oauth_states WHERE state_hash = $1 RETURNING *")
                .bind(state_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        Ok(row.map(OAuthState::from))
    }

    async fn put_oauth_token(&self, tok: &OAuthToken) -> Result<OAuthToken> {
        let row: OAuthTokenRow = sqlx::query_as(
            "INSERT INTO int_oauth_tokens (integration_id, access_token, refresh_token, \
             token_type, scopes, expires_at, key_id, status, status_reason, connected_by, \
             version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $12) \
             ON CONFLICT (integration_id) DO UPDATE SET access_token = excluded.access_token, \
             refresh_token = excluded.refresh_token, token_type = excluded.token_type, \
             scopes = excluded.scopes, expires_at = excluded.expires_at, key_id = excluded.key_id, \
             status = excluded.status, status_reason = excluded.status_reason, \
             connected_by = excluded.connected_by, version = int_oauth_tokens.version + 1, \
             updated_at = excluded.updated_at \
             RETURNING integration_id, access_token, refresh_token, token_type, scopes, \
             expires_at, status, status_reason, connected_by, version, created_at, updated_at",
        )
        .bind(u(tok.integration_id))
        .bind(tok.access.as_str())
        .bind(tok.refresh.as_ref().map(Sealed::as_str))
        .bind(&tok.token_type)
        .bind(Json(&tok.scopes))
        .bind(tok.expires_at)
        .bind(tok.key_id())
        .bind(tok.status.as_str())
        .bind(&tok.status_reason)
        .bind(u(tok.connected_by))
        .bind(tok.created_at)
        .bind(tok.updated_at)
        .fetch_one(&self.pool)
        .await
        .map_err(fk("integration"))?;
        row.try_into()
    }

    async fn get_oauth_token(&self, integration: IntegrationId) -> Result<Option<OAuthToken>> {
        let row: Option<OAuthTokenRow> = sqlx::query_as(
            "SELECT integration_id, access_token, refresh_token, token_type, scopes, expires_at, \
             status, status_reason, connected_by, version, created_at, updated_at \
             FROM int_oauth_tokens WHERE integration_id = $1",
        )
        .bind(u(integration))
        .fetch_optional(&self.pool)
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
            "UPDATE int_oauth_tokens SET access_token = $1, refresh_token = $2, token_type = $3, \
             scopes = $4, expires_at = $5, key_id = $6, status = $7, status_reason = $8, \
             version = version + 1, updated_at = $9 WHERE integration_id = $10 AND version = $11 \
             RETURNING integration_id, access_token, refresh_token, token_type, scopes, \
             expires_at, status, status_reason, connected_by, version, created_at, updated_at",
        )
        .bind(tok.access.as_str())
        .bind(tok.refresh.as_ref().map(Sealed::as_str))
        .bind(&tok.token_type)
        .bind(Json(&tok.scopes))
        .bind(tok.expires_at)
        .bind(tok.key_id())
        .bind(tok.status.as_str())
        .bind(&tok.status_reason)
        .bind(tok.updated_at)
        .bind(u(tok.integration_id))
        .bind(expected_version)
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        if let Some(r) = row {
            return r.try_into();
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM int_oauth_tokens WHERE integration_id = $1")
                .bind(u(tok.integration_id))
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        Err(match current {
            Some(v) => Error::Conflict { entity: "oauth connection", current: v },
            None => Error::not_found("oauth connection"),
        })
    }

    async fn delete_oauth_token(&self, integration: IntegrationId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_oauth_tokens WHERE integration_id = $1")
            .bind(u(integration))
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }
}

// --- inbound queue ---------------------------------------------------------------------------

#[async_trait]
impl InboundStore for PostgresIntegrationStore {
    async fn ingest(&self, d: &InboundDelivery) -> Result<Ingested> {
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO int_inbound (id, provider, integration_id, delivery_id, headers, body, \
             status, attempts, available_at, last_error, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (provider, delivery_id) DO NOTHING RETURNING id",
        )
        .bind(u(d.id))
        .bind(d.provider.as_str())
        .bind(u(d.integration_id))
        .bind(&d.delivery_id)
        .bind(Json(&d.headers))
        .bind(&d.body)
        .bind(d.status.as_str())
        .bind(d.attempts)
        .bind(d.available_at)
        .bind(&d.last_error)
        .bind(d.received_at)
        .fetch_optional(&self.pool)
        .await
        .map_err(fk("integration"))?;
        if inserted.is_some() {
            return Ok(Ingested::New(d.id));
        }
        let existing: Uuid = sqlx::query_scalar(
            "SELECT id FROM int_inbound WHERE provider = $1 AND delivery_id = $2",
        )
        .bind(d.provider.as_str())
        .bind(&d.delivery_id)
        .fetch_one(&self.pool)
        .await
        .map_err(st)?;
        Ok(Ingested::Duplicate(existing.into()))
    }

    async fn get_inbound(&self, id: DeliveryId) -> Result<InboundDelivery> {
        let row: Option<InboundRow> = sqlx::query_as("SELECT * FROM int_inbound WHERE id = $1")
            .bind(u(id))
            .fetch_optional(&self.pool)
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
            "UPDATE int_inbound SET available_at = $1, attempts = attempts + 1 WHERE id IN \
             (SELECT id FROM int_inbound WHERE status = 'pending' AND available_at <= $2 \
              ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *",
        )
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            "UPDATE int_inbound SET status = $1, last_error = $2, \
             available_at = COALESCE($3, available_at) WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(retry)
        .bind(u(id))
        .execute(&self.pool)
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
impl MappingStore for PostgresIntegrationStore {
    async fn create_mapping(&self, m: &ExternalMapping) -> Result<(ExternalMapping, bool)> {
        let inserted: Option<MappingRow> = sqlx::query_as(
            "INSERT INTO int_mappings (id, integration_id, task_id, external_id, external_url, \
             base, remote_updated_at, pushed_fingerprint, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (integration_id, external_id) DO NOTHING RETURNING *",
        )
        .bind(u(m.id))
        .bind(u(m.integration_id))
        .bind(u(m.task_id))
        .bind(&m.external_id)
        .bind(&m.external_url)
        .bind(Json(&m.base))
        .bind(m.remote_updated_at)
        .bind(&m.pushed_fingerprint)
        .bind(m.version)
        .bind(m.created_at)
        .bind(m.updated_at)
        .fetch_optional(&self.pool)
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
            "SELECT * FROM int_mappings WHERE integration_id = $1 AND external_id = $2",
        )
        .bind(u(integration))
        .bind(external_id)
        .fetch_optional(&self.pool)
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
            sqlx::query_as("SELECT * FROM int_mappings WHERE integration_id = $1 AND task_id = $2")
                .bind(u(integration))
                .bind(u(task))
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        row.map(ExternalMapping::try_from).transpose()
    }

    async fn delete_mapping(&self, id: MappingId) -> Result<()> {
        let done = sqlx::query("DELETE FROM int_mappings WHERE id = $1")
            .bind(u(id))
            .execute(&self.pool)
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
            "SELECT * FROM int_mappings WHERE integration_id = $1 AND ($2::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(u(integration))
        .bind(ou(before))
        .bind(ou(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(st)?;
        let row: Option<MappingRow> = sqlx::query_as(
            "UPDATE int_mappings SET base = $1, remote_updated_at = $2, pushed_fingerprint = $3, \
             version = version + 1, updated_at = $4 WHERE id = $5 AND version = $6 RETURNING *",
        )
        .bind(Json(&base.base))
        .bind(base.remote_updated_at)
        .bind(&base.pushed_fingerprint)
        .bind(base.at)
        .bind(u(id))
        .bind(expected_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let Some(row) = row else {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT version FROM int_mappings WHERE id = $1")
                    .bind(u(id))
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(u(c.id))
            .bind(u(c.integration_id))
            .bind(u(c.mapping_id))
            .bind(u(c.task_id))
            .bind(&c.field)
            .bind(Json(&c.base))
            .bind(Json(&c.local))
            .bind(Json(&c.remote))
            .bind(Json(&c.resolved))
            .bind(to_json(&c.winner))
            .bind(Json(&c.policy))
            .bind(c.detected_at)
            .bind(c.resolved_at)
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
            "SELECT * FROM int_conflicts WHERE integration_id = $1 AND ($2::uuid IS NULL OR id < $3) \
             AND (NOT $4 OR resolved_at IS NULL) ORDER BY id DESC LIMIT $5",
        )
        .bind(u(integration))
        .bind(ou(before))
        .bind(ou(before))
        .bind(unresolved_only)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |c: &SyncConflict| c.id.0))
    }

    async fn get_conflict(&self, id: ConflictId) -> Result<SyncConflict> {
        let row: Option<ConflictRow> = sqlx::query_as("SELECT * FROM int_conflicts WHERE id = $1")
            .bind(u(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("conflict"))?.try_into()
    }

    async fn resolve_conflict(&self, id: ConflictId, at: OffsetDateTime) -> Result<SyncConflict> {
        let row: Option<ConflictRow> = sqlx::query_as(
            "UPDATE int_conflicts SET resolved_at = COALESCE(resolved_at, $1) WHERE id = $2 \
             RETURNING *",
        )
        .bind(at)
        .bind(u(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("conflict"))?.try_into()
    }
}

// --- sync state: comment links, intents, push failures ----------------------------------------

#[derive(sqlx::FromRow)]
struct CommentLinkRow {
    id: Uuid,
    integration_id: Uuid,
    task_id: Uuid,
    comment_id: Uuid,
    external_id: String,
    external_comment_id: String,
    local_fingerprint: String,
    remote_fingerprint: String,
    origin: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<CommentLinkRow> for CommentLink {
    type Error = Error;
    fn try_from(r: CommentLinkRow) -> Result<Self> {
        Ok(CommentLink {
            id: r.id.into(),
            integration_id: r.integration_id.into(),
            task_id: r.task_id.into(),
            comment_id: r.comment_id.into(),
            external_id: r.external_id,
            external_comment_id: r.external_comment_id,
            local_fingerprint: r.local_fingerprint,
            remote_fingerprint: r.remote_fingerprint,
            origin: crate::sync::Side::parse(&r.origin).map_err(|e| corrupt("origin", e))?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SyncFailureRow {
    id: Uuid,
    integration_id: Uuid,
    task_id: Option<Uuid>,
    event_id: Uuid,
    event_seq: i64,
    event_kind: String,
    attempts: i32,
    error: String,
    failed_at: OffsetDateTime,
}

impl TryFrom<SyncFailureRow> for SyncFailure {
    type Error = Error;
    fn try_from(r: SyncFailureRow) -> Result<Self> {
        Ok(SyncFailure {
            id: r.id.into(),
            integration_id: r.integration_id.into(),
            task_id: r.task_id.map(Into::into),
            event_id: r.event_id.into(),
            event_seq: r.event_seq,
            event_kind: r.event_kind,
            attempts: r.attempts,
            error: r.error,
            failed_at: r.failed_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ParkedPushRow {
    id: Uuid,
    integration_id: Uuid,
    task_id: Uuid,
    // `event_id` and `event_seq` are copies of the event's own, for uniqueness and order.
    event: Value,
    attempts: i32,
    last_error: Option<String>,
    next_attempt_at: OffsetDateTime,
    parked_at: OffsetDateTime,
}

impl TryFrom<ParkedPushRow> for ParkedPush {
    type Error = Error;
    fn try_from(r: ParkedPushRow) -> Result<Self> {
        Ok(ParkedPush {
            id: r.id.into(),
            integration_id: r.integration_id.into(),
            task_id: r.task_id.into(),
            event: json("event", r.event)?,
            attempts: r.attempts,
            last_error: r.last_error,
            next_attempt_at: r.next_attempt_at,
            parked_at: r.parked_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ParkedPushStatsRow {
    provider: String,
    parked: i64,
    oldest: OffsetDateTime,
}

impl TryFrom<ParkedPushStatsRow> for ParkedPushStats {
    type Error = Error;
    fn try_from(r: ParkedPushStatsRow) -> Result<Self> {
        Ok(ParkedPushStats {
            provider: key(&r.provider)?,
            count: u64::try_from(r.parked).map_err(|e| corrupt("parked", e))?,
            oldest_parked_at: r.oldest,
        })
    }
}

/// The insert-or-update of a push failure (one row per integration and event).
async fn upsert_sync_failure<'c>(conn: impl sqlx::PgExecutor<'c>, f: &SyncFailure) -> Result<()> {
    sqlx::query(
        "INSERT INTO int_sync_failures (id, integration_id, task_id, event_id, event_seq, \
         event_kind, attempts, error, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (integration_id, event_id) DO UPDATE SET attempts = excluded.attempts, \
         error = excluded.error, failed_at = excluded.failed_at",
    )
    .bind(u(f.id))
    .bind(u(f.integration_id))
    .bind(ou(f.task_id))
    .bind(f.event_id.0)
    .bind(f.event_seq)
    .bind(&f.event_kind)
    .bind(f.attempts)
    .bind(&f.error)
    .bind(f.failed_at)
    .execute(conn)
    .await
    .map_err(fk("integration"))?;
    Ok(())
}

/// Inserts a parked push unless its (integration, event) is parked already; `true` if inserted.
async fn insert_parked_push<'c>(conn: impl sqlx::PgExecutor<'c>, p: &ParkedPush) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO int_parked_pushes (id, integration_id, task_id, event_id, event_seq, event, \
         attempts, last_error, next_attempt_at, parked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (integration_id, event_id) DO NOTHING",
    )
    .bind(u(p.id))
    .bind(u(p.integration_id))
    .bind(u(p.task_id))
    .bind(p.event.id.0)
    .bind(p.event.seq)
    .bind(Json(&p.event))
    .bind(p.attempts)
    .bind(&p.last_error)
    .bind(p.next_attempt_at)
    .bind(p.parked_at)
    .execute(conn)
    .await
    .map_err(fk("integration"))?;
    Ok(done.rows_affected() > 0)
}

#[async_trait]
impl SyncStateStore for PostgresIntegrationStore {
    async fn link_comment(&self, l: &CommentLink) -> Result<(CommentLink, bool)> {
        let inserted: Option<CommentLinkRow> = sqlx::query_as(
            "INSERT INTO int_comment_links (id, integration_id, task_id, comment_id, external_id, \
             external_comment_id, local_fingerprint, remote_fingerprint, origin, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (integration_id, comment_id) DO NOTHING RETURNING *",
        )
        .bind(u(l.id))
        .bind(u(l.integration_id))
        .bind(u(l.task_id))
        .bind(u(l.comment_id))
        .bind(&l.external_id)
        .bind(&l.external_comment_id)
        .bind(&l.local_fingerprint)
        .bind(&l.remote_fingerprint)
        .bind(l.origin.as_str())
        .bind(l.created_at)
        .bind(l.updated_at)
        .fetch_optional(&self.pool)
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
        let row: Option<CommentLinkRow> = sqlx::query_as(
            "SELECT * FROM int_comment_links WHERE integration_id = $1 AND comment_id = $2",
        )
        .bind(u(integration))
        .bind(u(comment))
        .fetch_optional(&self.pool)
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
            "SELECT * FROM int_comment_links WHERE integration_id = $1 \
             AND external_comment_id = $2",
        )
        .bind(u(integration))
        .bind(external_comment_id)
        .fetch_optional(&self.pool)
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
            "UPDATE int_comment_links SET local_fingerprint = $1, remote_fingerprint = $2, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(local_fingerprint)
        .bind(remote_fingerprint)
        .bind(at)
        .bind(u(id))
        .execute(&self.pool)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("comment link"));
        }
        Ok(())
    }

    async fn delete_comment_link(&self, id: CommentLinkId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_comment_links WHERE id = $1")
            .bind(u(id))
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn begin_intent(
        &self,
        intent: &Intent,
        stale_before: OffsetDateTime,
    ) -> Result<IntentClaim> {
        // The upsert takes the row lock: of concurrent callers exactly one inserts or takes a
        // stale row over; the others see the row as it is after that one commits.
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO int_intents (key, integration_id, kind, status, result, started_at, \
             finished_at) VALUES ($1, $2, $3, 'pending', NULL, $4, NULL) \
             ON CONFLICT (key) DO UPDATE SET started_at = excluded.started_at \
             WHERE int_intents.status = 'pending' AND int_intents.started_at < $5 \
             RETURNING key",
        )
        .bind(&intent.key)
        .bind(u(intent.integration_id))
        .bind(&intent.kind)
        .bind(intent.started_at)
        .bind(stale_before)
        .fetch_optional(&self.pool)
        .await
        .map_err(fk("integration"))?;
        if claimed.is_some() {
            return Ok(IntentClaim::Claimed);
        }
        let row: Option<(String, Option<Value>)> =
            sqlx::query_as("SELECT status, result FROM int_intents WHERE key = $1")
                .bind(&intent.key)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        Ok(match row {
            Some((status, result)) if status == "done" => {
                IntentClaim::Done(result.unwrap_or(Value::Null))
            }
            Some(_) => IntentClaim::InFlight,
            // Abandoned in between: the caller may try again.
            None => IntentClaim::InFlight,
        })
    }

    async fn finish_intent(&self, key: &str, result: &Value, at: OffsetDateTime) -> Result<()> {
        let done = sqlx::query(
            "UPDATE int_intents SET status = 'done', result = $1, finished_at = $2 WHERE key = $3",
        )
        .bind(Json(result))
        .bind(at)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("intent"));
        }
        Ok(())
    }

    async fn abandon_intent(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM int_intents WHERE key = $1 AND status = 'pending'")
            .bind(key)
            .execute(&self.pool)
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
            "SELECT count(*) FROM int_intents WHERE integration_id = $1 AND kind = $2 \
             AND status = 'pending' AND started_at > $3",
        )
        .bind(u(integration))
        .bind(kind)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(st)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_sync_failure(&self, f: &SyncFailure) -> Result<()> {
        upsert_sync_failure(&self.pool, f).await
    }

    async fn list_sync_failures(
        &self,
        integration: IntegrationId,
        limit: u32,
        before: Option<SyncFailureId>,
    ) -> Result<Page<SyncFailure>> {
        check_limit(limit)?;
        let rows: Vec<SyncFailureRow> = sqlx::query_as(
            "SELECT * FROM int_sync_failures WHERE integration_id = $1 \
             AND ($2::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(u(integration))
        .bind(ou(before))
        .bind(ou(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |f: &SyncFailure| f.id.0))
    }

    async fn get_sync_failure(&self, id: SyncFailureId) -> Result<SyncFailure> {
        let row: Option<SyncFailureRow> =
            sqlx::query_as("SELECT * FROM int_sync_failures WHERE id = $1")
                .bind(u(id))
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("sync failure"))?.try_into()
    }

    async fn delete_sync_failure(&self, id: SyncFailureId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_sync_failures WHERE id = $1")
            .bind(u(id))
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn requeue_sync_failure(&self, id: SyncFailureId, push: &ParkedPush) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        let gone = sqlx::query("DELETE FROM int_sync_failures WHERE id = $1")
            .bind(u(id))
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
        insert_parked_push(&self.pool, push).await
    }

    async fn has_parked_pushes(&self, integration: IntegrationId, task: TaskId) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM int_parked_pushes \
             WHERE integration_id = $1 AND task_id = $2)",
        )
        .bind(u(integration))
        .bind(u(task))
        .fetch_one(&self.pool)
        .await
        .map_err(st)
    }

    async fn claim_parked_pushes(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ParkedPush>> {
        // SKIP LOCKED: two instances claiming at once take different heads; a head being
        // claimed still blocks its task's later pushes (NOT EXISTS sees the row, locked or not).
        let rows: Vec<ParkedPushRow> = sqlx::query_as(
            "UPDATE int_parked_pushes SET next_attempt_at = $1 WHERE id IN \
             (SELECT q.id FROM int_parked_pushes q WHERE q.next_attempt_at <= $2 AND NOT EXISTS \
               (SELECT 1 FROM int_parked_pushes e WHERE e.integration_id = q.integration_id \
                AND e.task_id = q.task_id AND e.event_seq < q.event_seq) \
              ORDER BY q.next_attempt_at, q.event_seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            "UPDATE int_parked_pushes SET attempts = $1, last_error = $2, next_attempt_at = $3 \
             WHERE id = $4",
        )
        .bind(attempts)
        .bind(error)
        .bind(next_attempt_at)
        .bind(u(id))
        .execute(&self.pool)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("parked push"));
        }
        Ok(())
    }

    async fn drop_parked_push(&self, id: ParkedPushId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM int_parked_pushes WHERE id = $1")
            .bind(u(id))
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn fail_parked_push(&self, id: ParkedPushId, failure: &SyncFailure) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        let gone = sqlx::query("DELETE FROM int_parked_pushes WHERE id = $1")
            .bind(u(id))
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
            "SELECT * FROM int_parked_pushes WHERE integration_id = $1 \
             AND ($2::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
        )
        .bind(u(integration))
        .bind(ou(after))
        .bind(ou(after))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

// --- logs ------------------------------------------------------------------------------------

#[async_trait]
impl LogStore for PostgresIntegrationStore {
    async fn append_log(&self, e: &LogEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO int_logs (id, integration_id, provider, direction, operation, ok, detail, \
             at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(u(e.id))
        .bind(ou(e.integration_id))
        .bind(&e.provider)
        .bind(e.direction.as_str())
        .bind(&e.operation)
        .bind(e.ok)
        .bind(Json(e.detail.as_value()))
        .bind(e.at)
        .execute(&self.pool)
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
            "SELECT * FROM int_logs WHERE ($1::uuid IS NULL OR integration_id = $2) \
             AND ($3::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        )
        .bind(ou(integration))
        .bind(ou(integration))
        .bind(ou(before))
        .bind(ou(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |e: &LogEntry| e.id.0))
    }
}

// --- outbound webhooks -----------------------------------------------------------------------

const SUBSCRIPTION: &str = "SELECT * FROM int_subscriptions WHERE id = $1";
const SUBSCRIPTION_FOR_UPDATE: &str = "SELECT * FROM int_subscriptions WHERE id = $1 FOR UPDATE";

#[async_trait]
impl WebhookStore for PostgresIntegrationStore {
    async fn create_subscription(&self, s: &Subscription) -> Result<()> {
        sqlx::query(
            "INSERT INTO int_subscriptions (id, org_id, project_id, url, events, description, \
             secrets, enabled, disabled_reason, consecutive_failures, version, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(u(s.id))
        .bind(u(s.org_id))
        .bind(ou(s.project_id))
        .bind(&s.url)
        .bind(Json(&s.events))
        .bind(&s.description)
        .bind(s.secrets.as_str())
        .bind(s.enabled)
        .bind(&s.disabled_reason)
        .bind(s.consecutive_failures)
        .bind(s.version)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique(&e) { Error::AlreadyExists { entity: "subscription" } } else { st(e) }
        })?;
        Ok(())
    }

    async fn get_subscription(&self, id: SubscriptionId) -> Result<Subscription> {
        let row: Option<SubscriptionRow> = sqlx::query_as(SUBSCRIPTION)
            .bind(u(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("subscription"))?.try_into()
    }

    async fn list_subscriptions(&self, org: OrgId) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> =
            sqlx::query_as("SELECT * FROM int_subscriptions WHERE org_id = $1 ORDER BY id")
                .bind(u(org))
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn enabled_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> =
            sqlx::query_as("SELECT * FROM int_subscriptions WHERE enabled ORDER BY id")
                .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(st)?;
        let row: Option<SubscriptionRow> = sqlx::query_as(SUBSCRIPTION_FOR_UPDATE)
            .bind(u(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(st)?;
        let mut cur: Subscription =
            row.ok_or_else(|| Error::not_found("subscription"))?.try_into()?;
        if cur.version != expected_version {
            return Err(Error::Conflict { entity: "subscription", current: cur.version });
        }
        apply_subscription_patch(&mut cur, patch, at);
        sqlx::query(
            "UPDATE int_subscriptions SET url = $1, events = $2, description = $3, secrets = $4, \
             enabled = $5, disabled_reason = $6, consecutive_failures = $7, version = $8, \
             updated_at = $9 WHERE id = $10",
        )
        .bind(&cur.url)
        .bind(Json(&cur.events))
        .bind(&cur.description)
        .bind(cur.secrets.as_str())
        .bind(cur.enabled)
        .bind(&cur.disabled_reason)
        .bind(cur.consecutive_failures)
        .bind(cur.version)
        .bind(at)
        .bind(u(id))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(cur)
    }

    async fn delete_subscription(&self, id: SubscriptionId) -> Result<()> {
        let done = sqlx::query("DELETE FROM int_subscriptions WHERE id = $1")
            .bind(u(id))
            .execute(&self.pool)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("subscription"));
        }
        Ok(())
    }

    async fn cursor(&self, name: &str) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT position FROM int_cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(st)?;
        let mut inserted = 0;
        for d in deliveries {
            let done = sqlx::query(
                "INSERT INTO int_outbound (id, subscription_id, event_id, event_seq, event_kind, \
                 payload, status, attempts, available_at, last_status, last_error, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (subscription_id, event_id) DO NOTHING",
            )
            .bind(u(d.id))
            .bind(u(d.subscription_id))
            .bind(u(d.event_id))
            .bind(d.event_seq)
            .bind(&d.event_kind)
            .bind(Json(&d.payload))
            .bind(d.status.as_str())
            .bind(d.attempts)
            .bind(d.available_at)
            .bind(d.last_status)
            .bind(&d.last_error)
            .bind(d.created_at)
            .bind(d.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(fk("subscription"))?;
            inserted += done.rows_affected();
        }
        sqlx::query(
            "INSERT INTO int_cursors (name, position) VALUES ($1, $2) ON CONFLICT (name) \
             DO UPDATE SET position = GREATEST(int_cursors.position, excluded.position)",
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
            "UPDATE int_outbound SET available_at = $1, attempts = attempts + 1 WHERE id IN \
             (SELECT id FROM int_outbound WHERE status = 'pending' AND available_at <= $2 \
              ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *",
        )
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(st)?;
        let row: Option<OutboundRow> = sqlx::query_as(
            "UPDATE int_outbound SET status = $1, last_status = $2, last_error = $3, \
             available_at = COALESCE($4, available_at), updated_at = $5 WHERE id = $6 RETURNING *",
        )
        .bind(status.as_str())
        .bind(a.status)
        .bind(&a.error)
        .bind(a.retry_at)
        .bind(a.at)
        .bind(u(id))
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let delivery: OutboundDelivery =
            row.ok_or_else(|| Error::not_found("delivery"))?.try_into()?;
        let sub: SubscriptionRow = if a.succeeded() {
            sqlx::query_as(
                "UPDATE int_subscriptions SET consecutive_failures = 0 WHERE id = $1 RETURNING *",
            )
            .bind(u(delivery.subscription_id))
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?
        } else {
            sqlx::query_as(
                "UPDATE int_subscriptions SET consecutive_failures = consecutive_failures + 1, \
                 enabled = CASE WHEN consecutive_failures + 1 >= $1 THEN FALSE ELSE enabled END, \
                 disabled_reason = CASE WHEN enabled AND consecutive_failures + 1 >= $2 \
                   THEN $3 ELSE disabled_reason END, \
                 version = version + CASE WHEN enabled AND consecutive_failures + 1 >= $4 \
                   THEN 1 ELSE 0 END \
                 WHERE id = $5 RETURNING *",
            )
            .bind(a.disable_after)
            .bind(a.disable_after)
            .bind(auto_disabled_reason(a.disable_after))
            .bind(a.disable_after)
            .bind(u(delivery.subscription_id))
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?
        };
        tx.commit().await.map_err(st)?;
        Ok((delivery, sub.try_into()?))
    }

    async fn get_outbound(&self, id: OutboundId) -> Result<OutboundDelivery> {
        let row: Option<OutboundRow> = sqlx::query_as("SELECT * FROM int_outbound WHERE id = $1")
            .bind(u(id))
            .fetch_optional(&self.pool)
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
            "SELECT * FROM int_outbound WHERE subscription_id = $1 AND ($2::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(u(subscription))
        .bind(ou(before))
        .bind(ou(before))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, limit, |d: &OutboundDelivery| d.id.0))
    }

    async fn redeliver(&self, id: OutboundId, at: OffsetDateTime) -> Result<OutboundDelivery> {
        let row: Option<OutboundRow> = sqlx::query_as(
            "UPDATE int_outbound SET status = 'pending', attempts = 0, available_at = $1, \
             updated_at = $2 WHERE id = $3 RETURNING *",
        )
        .bind(at)
        .bind(at)
        .bind(u(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("delivery"))?.try_into()
    }
}

#[async_trait]
impl IntegrationAdmin for PostgresIntegrationStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.dangerous_set_table_name("_pm_integrations_migrations");
        m.run(&self.pool).await.map_err(Error::storage)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
