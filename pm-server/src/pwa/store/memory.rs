//! In-memory adapter of the PWA stores: for tests, quick embedding and in-memory SQLite URLs.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pm_core::Result;
use pm_core::id::UserId;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PushStore, PushSubscription, SyncOpStore};

/// Both PWA stores in process memory.
#[derive(Debug, Default)]
pub struct MemoryPwaStore {
    ops: Mutex<HashMap<(UserId, Uuid), (Value, OffsetDateTime)>>,
    subs: Mutex<Vec<PushSubscription>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl SyncOpStore for MemoryPwaStore {
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }

    async fn find_op(&self, user: UserId, op_id: Uuid) -> Result<Option<Value>> {
        Ok(lock(&self.ops).get(&(user, op_id)).map(|(v, _)| v.clone()))
    }

    async fn record_op(
        &self,
        user: UserId,
        op_id: Uuid,
        result: &Value,
        at: OffsetDateTime,
    ) -> Result<Value> {
        Ok(lock(&self.ops).entry((user, op_id)).or_insert_with(|| (result.clone(), at)).0.clone())
    }

    async fn prune_ops(&self, before: OffsetDateTime) -> Result<u64> {
        let mut ops = lock(&self.ops);
        let n = ops.len();
        ops.retain(|_, (_, at)| *at >= before);
        Ok((n - ops.len()) as u64)
    }
}

#[async_trait]
impl PushStore for MemoryPwaStore {
    async fn upsert_subscription(&self, sub: &PushSubscription) -> Result<PushSubscription> {
        let mut subs = lock(&self.subs);
        if let Some(s) = subs.iter_mut().find(|s| s.endpoint == sub.endpoint) {
            *s = PushSubscription { id: s.id, created_at: s.created_at, ..sub.clone() };
            return Ok(s.clone());
        }
        subs.push(sub.clone());
        Ok(sub.clone())
    }

    async fn delete_subscription(&self, user: UserId, endpoint: &str) -> Result<bool> {
        let mut subs = lock(&self.subs);
        let n = subs.len();
        subs.retain(|s| !(s.user_id == user && s.endpoint == endpoint));
        Ok(subs.len() != n)
    }

    async fn remove_endpoint(&self, endpoint: &str) -> Result<()> {
        lock(&self.subs).retain(|s| s.endpoint != endpoint);
        Ok(())
    }

    async fn list_subscriptions(&self, user: UserId) -> Result<Vec<PushSubscription>> {
        Ok(lock(&self.subs).iter().filter(|s| s.user_id == user).cloned().collect())
    }
}
