//! The sync pusher's durable retry queue: a push that fails with an error that may pass is
//! parked instead of retried in place, so one failing provider or task never holds the pushes
//! of every other integration and task.
//!
//! - [`SyncEngine::push_or_park`] is the pusher's step for one (event, integration): it pushes
//!   at once unless pushes of the same task are parked for the integration — then the event
//!   queues behind them. A transient failure ([`Error::is_transient`]: 5xx, timeout, rate limit
//!   with or without `Retry-After`, a concurrent write, a create in flight) parks the push with
//!   its `next_attempt_at` (the provider's `Retry-After` when it gave one, else
//!   [`PushRetry::base`] doubled per attempt up to [`PushRetry::cap`]); any other failure is
//!   recorded as a [`SyncFailure`] at once.
//! - [`SyncEngine::retry_parked`] is the background step: it claims due pushes — only the
//!   oldest parked event of each (integration, task), leased so a worker that dies leaves it to
//!   the next — and attempts each once. Success drops it, which makes the task's next parked
//!   event due; a transient failure reschedules it; after [`PushRetry::retries`] retries (or a
//!   failure retrying cannot fix) it becomes a recorded [`SyncFailure`] in the same transaction
//!   that drops it, and the task's next event goes ahead.
//! - [`SyncEngine::requeue_failure`] takes a recorded failure back into the queue (the retry
//!   endpoint), due now.
//!
//! **Order rather than coalescing.** Pushes of a task stay one queue item per event, attempted
//! in event order, instead of being merged into one "push the task" item. Merging would be
//! correct for task edits (a push is a three-way merge of the task's *current* state, so the
//! latest push covers the earlier ones) but not in general: comment events of one task concern
//! different comments, and a comment's deletion must not be merged away. Keeping every event
//! costs little after an outage: once the first parked push of a task went through, the later
//! ones of the same state find the task in sync ("unchanged") without calling the provider.
//!
//! Everything is in the database, so parked pushes survive a restart.
//! The queue is visible: an integration's parked pushes are listed
//! ([`SyncStateStore::list_parked_pushes`](crate::store::SyncStateStore::list_parked_pushes)) and
//! summed per provider ([`SyncStateStore::parked_push_stats`](crate::store::SyncStateStore::parked_push_stats)).

use std::time::Duration;

use pm_core::event::{Actor, Event};
use serde_json::json;
use time::OffsetDateTime;

use super::{Applied, SyncEngine, core};
use crate::model::{Direction, Integration, ParkedPush, SyncFailure, SyncFailureId};
use crate::{Error, Result};

/// How parked pushes are retried.
#[derive(Debug, Clone)]
pub struct PushRetry {
    /// Retries after the first attempt before a push is recorded as failed.
    pub retries: u32,
    /// The first retry's wait is twice this; each further one doubles.
    pub base: Duration,
    /// Longest wait between two retries, unless the provider asked for longer
    /// (`Retry-After`, which is always honoured: the push waits in the database, not in a
    /// worker).
    pub cap: Duration,
    /// How long a claimed push stays leased to the worker attempting it.
    pub lease: Duration,
    /// Pushes claimed per round.
    pub batch: u32,
}

impl Default for PushRetry {
    /// 6 retries after 2, 4, 8, 16, 30, 30 s (about 90 s in all); leases of 60 s; 50 a round.
    fn default() -> Self {
        Self {
            retries: 6,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            batch: 50,
        }
    }
}

impl PushRetry {
    /// The wait before retry `attempt` (1-based) after `e`: the provider's `Retry-After` when
    /// it gave one, else `base` doubled per attempt, at most `cap`.
    pub fn delay(&self, e: &Error, attempt: u32) -> Duration {
        if let Error::Provider { retry_after: Some(s), .. } = e {
            return Duration::from_secs(*s);
        }
        self.base.saturating_mul(1u32 << attempt.min(16)).min(self.cap)
    }
}

/// What [`SyncEngine::push_or_park`] did with one (event, integration).
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// Pushed (or nothing to push).
    Pushed(Applied),
    /// Queued behind earlier parked pushes of the same task, unattempted.
    Queued,
    /// Failed transiently: parked until `next_attempt_at`.
    Parked {
        /// When it is tried again.
        next_attempt_at: OffsetDateTime,
    },
    /// Failed for good: recorded as this sync failure.
    Failed(SyncFailure),
}

impl SyncEngine {
    /// Pushes event `e` to integration `i` — or queues it behind the task's parked pushes, or
    /// parks it after a transient failure, or records its failure (see the module docs). Errs
    /// only when the queue or the failure record cannot be written (the caller retries the
    /// event: parking the same event twice keeps one).
    pub async fn push_or_park(
        &self,
        i: &Integration,
        e: &Event,
        policy: &PushRetry,
    ) -> Result<PushOutcome> {
        let Some(task) = e.task_id else {
            return Ok(PushOutcome::Pushed(Applied::Skipped("no task")));
        };
        // Our own applies are never pushed back; they need no place in the queue either.
        if e.actor == Actor::Integration(i.id) {
            return Ok(PushOutcome::Pushed(Applied::Skipped("echo")));
        }
        if self.stores.sync_state.has_parked_pushes(i.id, task).await? {
            let now = self.clock.now();
            let p = ParkedPush::new(i.id, e, 0, None, now, now)?;
            self.stores.sync_state.park_push(&p).await?;
            return Ok(PushOutcome::Queued);
        }
        match self.push_event(i, e).await {
            Ok(applied) => Ok(PushOutcome::Pushed(applied)),
            Err(err) => self.after_failure(i, e, None, 1, err, policy).await,
        }
    }

    /// Attempts the due parked pushes once each (one claimed batch); returns how many were
    /// attempted.
    pub async fn retry_parked(&self, policy: &PushRetry) -> Result<usize> {
        let now = self.clock.now();
        let claimed = self
            .stores
            .sync_state
            .claim_parked_pushes(now, now + policy.lease, policy.batch)
            .await?;
        for p in &claimed {
            let i = match self.stores.integrations.get_integration(p.integration_id).await {
                Ok(i) => i,
                // Deleted meanwhile (its parked pushes go with it).
                Err(Error::NotFound { .. }) => {
                    self.stores.sync_state.drop_parked_push(p.id).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !i.enabled {
                // A disabled integration receives no pushes, as its new events are not pushed.
                self.stores.sync_state.drop_parked_push(p.id).await?;
                self.log(
                    &i,
                    Direction::Outbound,
                    "sync.push_dropped",
                    true,
                    json!({"task_id": p.task_id, "event_id": p.event.id, "reason": "disabled"}),
                )
                .await;
                continue;
            }
            let attempt = u32::try_from(p.attempts).unwrap_or(0).saturating_add(1);
            match self.push_event(&i, &p.event).await {
                Ok(_) => {
                    self.stores.sync_state.drop_parked_push(p.id).await?;
                }
                Err(err) => {
                    self.after_failure(&i, &p.event, Some(p), attempt, err, policy).await?;
                }
            }
        }
        Ok(claimed.len())
    }

    /// Attempt `attempt` (1-based) of pushing `e` to `i` failed with `err`: park or reschedule
    /// it when it may pass and retries remain, else record the failure (dropping the parked
    /// push in the same transaction).
    async fn after_failure(
        &self,
        i: &Integration,
        e: &Event,
        parked: Option<&ParkedPush>,
        attempt: u32,
        err: Error,
        policy: &PushRetry,
    ) -> Result<PushOutcome> {
        let now = self.clock.now();
        let attempts = i32::try_from(attempt).unwrap_or(i32::MAX);
        if err.is_transient() && attempt <= policy.retries {
            let next = now + policy.delay(&err, attempt);
            match parked {
                Some(p) => {
                    match self
                        .stores
                        .sync_state
                        .reschedule_push(p.id, attempts, &err.to_string(), next)
                        .await
                    {
                        // Dropped meanwhile (its integration deleted): nothing left to retry.
                        Ok(()) | Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let p = ParkedPush::new(i.id, e, attempts, Some(err.to_string()), next, now)?;
                    self.stores.sync_state.park_push(&p).await?;
                }
            }
            self.log(
                i,
                Direction::Outbound,
                "sync.push_parked",
                false,
                json!({"task_id": e.task_id, "event_id": e.id, "event_seq": e.seq,
                       "attempts": attempts, "error": err.to_string(),
                       "next_attempt_at": next.unix_timestamp()}),
            )
            .await;
            return Ok(PushOutcome::Parked { next_attempt_at: next });
        }
        let failure = SyncFailure {
            id: SyncFailureId::new(),
            integration_id: i.id,
            task_id: e.task_id,
            event_id: e.id,
            event_seq: e.seq,
            event_kind: e.kind.as_str().to_owned(),
            attempts,
            error: err.to_string(),
            failed_at: now,
        };
        match parked {
            Some(p) => match self.stores.sync_state.fail_parked_push(p.id, &failure).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            },
            None => self.stores.sync_state.record_sync_failure(&failure).await?,
        }
        tracing::warn!(error = %err, seq = e.seq, integration = %i.id, "sync push gave up on an event");
        self.log(
            i,
            Direction::Outbound,
            "sync.push_gave_up",
            false,
            json!({"task_id": e.task_id, "event_id": e.id, "event_seq": e.seq,
                   "event_kind": e.kind.as_str(), "attempts": attempts, "error": err.to_string()}),
        )
        .await;
        Ok(PushOutcome::Failed(failure))
    }

    /// Takes recorded failure `id` of `i` back into the retry queue, due now (its event is
    /// read again from pm's event log). `NotFound` (`sync failure`) when it is unknown, of
    /// another integration, or re-queued concurrently; `NotFound` (`event`) when the log no
    /// longer holds its event.
    pub async fn requeue_failure(&self, i: &Integration, id: SyncFailureId) -> Result<ParkedPush> {
        let f = self.stores.sync_state.get_sync_failure(id).await?;
        if f.integration_id != i.id {
            return Err(Error::not_found("sync failure"));
        }
        let events = self.pm.stores().events.read_after(f.event_seq - 1, 1).await.map_err(core)?;
        let e = events
            .into_iter()
            .next()
            .filter(|e| e.id == f.event_id)
            .ok_or_else(|| Error::not_found("event"))?;
        let now = self.clock.now();
        let p = ParkedPush::new(i.id, &e, 0, Some(f.error.clone()), now, now)?;
        self.stores.sync_state.requeue_sync_failure(f.id, &p).await?;
        self.log(
            i,
            Direction::Outbound,
            "sync.push_requeued",
            true,
            json!({"failure_id": f.id, "task_id": f.task_id, "event_id": f.event_id}),
        )
        .await;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_retry_after_is_honoured_whole() {
        let policy = PushRetry {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(700),
            ..PushRetry::default()
        };
        let outage = Error::Provider {
            provider: "github".into(),
            message: "HTTP 502".into(),
            retry_after: None,
        };
        let waits: Vec<_> = (1..=5).map(|n| policy.delay(&outage, n).as_millis()).collect();
        assert_eq!(waits, [200, 400, 700, 700, 700]);
        let limited = Error::Provider {
            provider: "github".into(),
            message: "rate limited".into(),
            retry_after: Some(3600),
        };
        assert_eq!(policy.delay(&limited, 1), Duration::from_secs(3600));
        assert_eq!(PushRetry::default().delay(&outage, 6), Duration::from_secs(30));
        assert_eq!(PushRetry::default().delay(&outage, 1), Duration::from_secs(2));
    }
}
