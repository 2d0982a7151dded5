//! In-memory [`AuthStore`]: for tests, quick embedding ([`AppState::new`](crate::AppState::new))
//! and in-memory SQLite databases. Nothing survives the process. One mutex over all tables makes
//! every method trivially atomic. Foreign keys to pm-core's users are not checked.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use pm_core::id::UserId;
use pm_core::{Error, Result};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ApiToken, AuthStore, Invite, NewRefreshToken, Rotation, Successor, TokenHash};

/// The in-memory auth store.
#[derive(Debug, Default)]
pub struct MemoryAuthStore {
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    credentials: HashMap<UserId, String>,
    refresh: HashMap<TokenHash, Refresh>,
    api_tokens: Vec<ApiToken>,
    invites: HashMap<TokenHash, (Invite, Option<OffsetDateTime>)>,
    secrets: HashMap<String, Vec<u8>>,
}

#[derive(Debug)]
struct Refresh {
    family_id: Uuid,
    user_id: UserId,
    expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
}

impl MemoryAuthStore {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied write (each method checks
        // before it mutates), so a poisoned lock is still consistent.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Tables {
    fn revoke_families(&mut self, at: OffsetDateTime, which: impl Fn(&Refresh) -> bool) {
        for r in self.refresh.values_mut() {
            if r.revoked_at.is_none() && which(r) {
                r.revoked_at = Some(at);
            }
        }
    }
}

#[async_trait]
impl AuthStore for MemoryAuthStore {
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }

    async fn password_hash(&self, user: UserId) -> Result<Option<String>> {
        Ok(self.lock().credentials.get(&user).cloned())
    }

    async fn create_credential(&self, user: UserId, hash: &str, _at: OffsetDateTime) -> Result<()> {
        let mut t = self.lock();
        if t.credentials.contains_key(&user) {
            return Err(Error::AlreadyExists { entity: "credential", field: "user_id" });
        }
        t.credentials.insert(user, hash.to_owned());
        Ok(())
    }

    async fn change_password(
        &self,
        user: UserId,
        hash: &str,
        keep_family: Option<Uuid>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let mut t = self.lock();
        let Some(stored) = t.credentials.get_mut(&user) else {
            return Err(Error::not_found("credential"));
        };
        *stored = hash.to_owned();
        t.revoke_families(at, |r| r.user_id == user && Some(r.family_id) != keep_family);
        Ok(())
    }

    async fn insert_refresh(&self, token: &NewRefreshToken) -> Result<()> {
        let mut t = self.lock();
        if t.refresh.contains_key(&token.token_hash) {
            return Err(Error::AlreadyExists { entity: "refresh token", field: "token_hash" });
        }
        t.refresh.insert(
            token.token_hash,
            Refresh {
                family_id: token.family_id,
                user_id: token.user_id,
                expires_at: token.expires_at,
                used_at: None,
                revoked_at: None,
            },
        );
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        presented: &TokenHash,
        next: &Successor,
        now: OffsetDateTime,
    ) -> Result<Rotation> {
        let mut t = self.lock();
        if t.refresh.contains_key(&next.token_hash) {
            return Err(Error::AlreadyExists { entity: "refresh token", field: "token_hash" });
        }
        let Some(r) = t.refresh.get_mut(presented) else { return Ok(Rotation::Invalid) };
        let (user_id, family_id) = (r.user_id, r.family_id);
        if r.used_at.is_some() {
            t.revoke_families(now, |r| r.family_id == family_id);
            return Ok(Rotation::Reused { user_id, family_id });
        }
        if r.revoked_at.is_some() || r.expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        r.used_at = Some(now);
        t.refresh.insert(
            next.token_hash,
            Refresh {
                family_id,
                user_id,
                expires_at: next.expires_at,
                used_at: None,
                revoked_at: None,
            },
        );
        Ok(Rotation::Rotated { user_id, family_id })
    }

    async fn revoke_refresh_family(
        &self,
        presented: &TokenHash,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let mut t = self.lock();
        let Some(family_id) = t.refresh.get(presented).map(|r| r.family_id) else {
            return Ok(false);
        };
        t.revoke_families(at, |r| r.family_id == family_id);
        Ok(true)
    }

    async fn create_api_token(&self, token: &ApiToken) -> Result<()> {
        let mut t = self.lock();
        if t.api_tokens.iter().any(|x| x.token_hash == token.token_hash || x.id == token.id) {
            return Err(Error::AlreadyExists { entity: "api token", field: "token_hash" });
        }
        t.api_tokens.push(token.clone());
        Ok(())
    }

    async fn find_api_token(&self, hash: &TokenHash) -> Result<Option<ApiToken>> {
        Ok(self.lock().api_tokens.iter().find(|t| &t.token_hash == hash).cloned())
    }

    async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>> {
        let mut v: Vec<ApiToken> = self
            .lock()
            .api_tokens
            .iter()
            .filter(|t| t.user_id == user && t.revoked_at.is_none())
            .cloned()
            .collect();
        v.sort_by_key(|t| (t.created_at, t.id));
        Ok(v)
    }

    async fn revoke_api_token(&self, user: UserId, id: Uuid, at: OffsetDateTime) -> Result<()> {
        let mut t = self.lock();
        let token = t
            .api_tokens
            .iter_mut()
            .find(|t| t.id == id && t.user_id == user && t.revoked_at.is_none())
            .ok_or_else(|| Error::not_found("api token"))?;
        token.revoked_at = Some(at);
        Ok(())
    }

    async fn touch_api_token(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
        if let Some(t) = self.lock().api_tokens.iter_mut().find(|t| t.id == id) {
            t.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn create_invite(&self, invite: &Invite) -> Result<()> {
        let mut t = self.lock();
        if t.invites.contains_key(&invite.token_hash) {
            return Err(Error::AlreadyExists { entity: "invite", field: "token_hash" });
        }
        t.invites.insert(invite.token_hash, (invite.clone(), None));
        Ok(())
    }

    async fn consume_invite(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<Option<Uuid>> {
        let mut t = self.lock();
        match t.invites.get_mut(hash) {
            Some((invite, used @ None)) if invite.expires_at > now => {
                *used = Some(now);
                Ok(Some(invite.id))
            }
            _ => Ok(None),
        }
    }

    async fn release_invite(&self, id: Uuid) -> Result<()> {
        if let Some((_, used)) = self.lock().invites.values_mut().find(|(i, _)| i.id == id) {
            *used = None;
        }
        Ok(())
    }

    async fn load_or_store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        Ok(self.lock().secrets.entry(name.to_owned()).or_insert_with(|| candidate.to_vec()).clone())
    }
}
