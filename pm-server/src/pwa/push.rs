//! Web Push delivery: the server's VAPID identity ([`WebPush`], key from `PM_VAPID_PRIVATE_KEY`
//! or generated once and kept with the database), browsers' subscriptions (validated by
//! [`parse_subscription`], stored in [`PushStore`]) and [`PushSender`], the
//! [`NotificationSink`] that pushes each new notification to the user's subscriptions.
//!
//! Delivery rules: the payload `{title, body, url, notification_id}` stays under 3 KB; every
//! endpoint passes the SSRF policy (`PM_WEBHOOK_ALLOW`) and the connection goes only to the
//! checked addresses; `404`/`410` from the push service delete the subscription; `429` and `5xx`
//! (and network errors) are retried with exponential backoff (honouring `Retry-After`) a few
//! times, then logged. Sends run off the notification consumer's task, so a slow push service
//! never holds up notifications.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::UserId;
use pm_core::{Error, Result};
use pm_integrations::ssrf::TargetPolicy;
use pm_realtime::notification::{Notification, NotificationKind, NotificationSink};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::store::{PushStore, PushSubscription};
use super::webpush::{self, Vapid};
use crate::auth::store::{AuthStore, is_sqlite_memory};

/// How long a push service keeps an undelivered message (`TTL`, seconds).
pub const TTL_SECS: u64 = 24 * 3600;
/// Longest summary put in a payload, in bytes (keeps the payload well under the 4 KB limit).
const MAX_BODY_BYTES: usize = 2_000;
/// The name of the generated VAPID key in the `server_secrets` table.
pub const VAPID_SECRET_NAME: &str = "vapid";

/// Retries of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first included).
    pub attempts: u32,
    /// Wait before the first retry; doubled each time (a `Retry-After` up to a minute wins).
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 4, base_delay: Duration::from_secs(2) }
    }
}

/// The server's Web Push settings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WebPush {
    /// The VAPID identity.
    pub vapid: Vapid,
    /// Which push endpoints may be contacted (the integrations' SSRF policy).
    pub targets: TargetPolicy,
    /// Retries of failed pushes.
    pub retry: RetryPolicy,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl WebPush {
    /// Settings with a VAPID key made up for this process (tests, quick embedding): browsers'
    /// subscriptions stop working when it changes, so servers use [`vapid_key`].
    pub fn ephemeral() -> Self {
        let key = webpush::random_secret().expect("the OS random number generator works");
        Self::new(Vapid::new(key, DEFAULT_SUBJECT), TargetPolicy::public_only())
    }

    /// Settings for `vapid`, pushing to endpoints `targets` permits.
    pub fn new(vapid: Vapid, targets: TargetPolicy) -> Self {
        Self { vapid, targets, retry: RetryPolicy::default(), timeout: Duration::from_secs(10) }
    }
}

/// The VAPID `sub` claim when `PM_VAPID_SUBJECT` is unset.
pub const DEFAULT_SUBJECT: &str = "mailto:pm@localhost";

/// The VAPID private key: `configured` (`PM_VAPID_PRIVATE_KEY`, base64url of the 32-byte scalar)
/// when set; otherwise one generated once and kept with the database like the JWT secret
/// (`<sqlite file>.vapid-key`, mode 0600, or the `vapid` row of `server_secrets` on
/// PostgreSQL); random per process for an in-memory database.
pub async fn vapid_key(
    configured: Option<&str>,
    database_url: &str,
    store: &dyn AuthStore,
) -> Result<p256::SecretKey> {
    if let Some(k) = configured {
        return Vapid::parse_private(k);
    }
    let candidate = webpush::random_secret()?;
    let candidate_text = webpush::b64(&candidate.to_bytes());
    if is_sqlite_memory(database_url) {
        return Ok(candidate);
    }
    if let Some(path) = crate::auth::secret::sqlite_file_next_to(database_url, ".vapid-key") {
        let path_for_task = path.clone();
        let (stored, created) = tokio::task::spawn_blocking(move || {
            crate::auth::secret::load_or_create_file(&path_for_task, &candidate_text)
        })
        .await
        .map_err(Error::storage)??;
        if created {
            tracing::info!(path = %path.display(), "generated a VAPID key for Web Push and stored it next to the database (mode 0600); PM_VAPID_PRIVATE_KEY overrides it");
        }
        return Vapid::parse_private(&String::from_utf8_lossy(&stored));
    }
    let stored = store.load_or_store_secret(VAPID_SECRET_NAME, candidate_text.as_bytes()).await?;
    Vapid::parse_private(&String::from_utf8_lossy(&stored))
}

/// A browser's `PushSubscription.toJSON()`. Unknown members are ignored (browsers add some).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionBody {
    /// The push service URL (https; http only on loopback, for development).
    pub endpoint: String,
    /// When the subscription expires (ms since the epoch), if the browser knows.
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<f64>,
    /// The keys.
    pub keys: SubscriptionKeys,
}

/// A subscription's keys.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key, base64url (65-byte uncompressed point).
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

/// Longest accepted endpoint URL.
const MAX_ENDPOINT_LEN: usize = 2048;

/// Validates a subscription body for `user` (field names as sent: `endpoint`, `keys.p256dh`,
/// `keys.auth`, `expirationTime`).
pub fn parse_subscription(
    body: SubscriptionBody,
    user: UserId,
    targets: &TargetPolicy,
) -> Result<PushSubscription> {
    if body.endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(Error::invalid(
            "endpoint",
            format!("must be at most {MAX_ENDPOINT_LEN} characters"),
        ));
    }
    let url = targets.parse_url("endpoint", &body.endpoint).map_err(|e| match e {
        pm_integrations::Error::Invalid { field, message } => Error::Invalid { field, message },
        other => Error::invalid("endpoint", other.to_string()),
    })?;
    if url.scheme() != "https" && !is_loopback_host(&url) {
        return Err(Error::invalid("endpoint", "must be an https URL"));
    }
    let p256dh = webpush::unb64(&body.keys.p256dh)
        .ok_or_else(|| Error::invalid("keys.p256dh", "must be base64url"))?;
    webpush::parse_public(&p256dh)?;
    let auth = webpush::unb64(&body.keys.auth)
        .ok_or_else(|| Error::invalid("keys.auth", "must be base64url"))?;
    if auth.len() != 16 {
        return Err(Error::invalid("keys.auth", "must be 16 bytes"));
    }
    let expiration_time = match body.expiration_time {
        None => None,
        Some(t) if (0.0..1e15).contains(&t) => Some(t as i64),
        Some(_) => {
            return Err(Error::invalid("expirationTime", "must be milliseconds since the epoch"));
        }
    };
    let at = pm_core::model::now();
    Ok(PushSubscription {
        id: Uuid::now_v7(),
        user_id: user,
        // As sent (not re-serialized): the browser unsubscribes with the same string.
        endpoint: body.endpoint,
        p256dh: webpush::b64(&p256dh),
        auth: webpush::b64(&auth),
        expiration_time,
        created_at: at,
        updated_at: at,
    })
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The JSON a push carries (the service worker shows it): `{title, body, url, notification_id}`.
pub fn payload(n: &Notification) -> serde_json::Value {
    let title = match n.kind {
        NotificationKind::Assigned => "Assigned to you",
        NotificationKind::Mentioned => "You were mentioned",
        NotificationKind::Commented => "New comment",
        NotificationKind::StateChanged => "Status changed",
        NotificationKind::Automation => "Automation",
    };
    let mut body = n.summary.clone();
    if body.len() > MAX_BODY_BYTES {
        let mut cut = MAX_BODY_BYTES;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    let url = match n.task_id {
        Some(t) => format!("/tasks/{}", t.0),
        None => "/notifications".to_owned(),
    };
    json!({ "title": title, "body": body, "url": url, "notification_id": n.id.0 })
}

/// Pushes new notifications to the user's subscriptions (see the module docs).
#[derive(Clone)]
pub struct PushSender {
    settings: WebPush,
    store: Arc<dyn PushStore>,
}

impl std::fmt::Debug for PushSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSender").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    Gone,
    Retry(Option<Duration>),
    Failed(String),
}

impl PushSender {
    /// A sender with `settings` over `store`.
    pub fn new(settings: WebPush, store: Arc<dyn PushStore>) -> Self {
        Self { settings, store }
    }

    /// Sends `payload` to one subscription, with retries; removes the subscription when the
    /// push service says it is gone. Returns whether it was delivered.
    pub async fn push(&self, sub: &PushSubscription, payload: &[u8], urgency: &str) -> bool {
        let body = match (webpush::unb64(&sub.p256dh), webpush::unb64(&sub.auth)) {
            (Some(p), Some(a)) => match webpush::encrypt_fresh(payload, &p, &a) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(endpoint = %sub.endpoint, error = %e, "cannot encrypt a push");
                    return false;
                }
            },
            _ => return false,
        };
        let mut delay = self.settings.retry.base_delay;
        for attempt in 1..=self.settings.retry.attempts.max(1) {
            match self.attempt(sub, &body, urgency).await {
                Attempt::Delivered => return true,
                Attempt::Gone => {
                    tracing::info!(endpoint = %sub.endpoint, "push subscription gone; removing it");
                    if let Err(e) = self.store.remove_endpoint(&sub.endpoint).await {
                        tracing::warn!(error = %e, "could not remove a gone push subscription");
                    }
                    return false;
                }
                Attempt::Failed(why) => {
                    tracing::warn!(endpoint = %sub.endpoint, %why, "push refused");
                    return false;
                }
                Attempt::Retry(after) if attempt < self.settings.retry.attempts => {
                    let wait = after.unwrap_or(delay).min(Duration::from_secs(60));
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                }
                Attempt::Retry(_) => {}
            }
        }
        tracing::warn!(endpoint = %sub.endpoint, attempts = self.settings.retry.attempts, "push failed after retries");
        false
    }

    async fn attempt(&self, sub: &PushSubscription, body: &[u8], urgency: &str) -> Attempt {
        let targets = &self.settings.targets;
        let url = match targets.parse_url("endpoint", &sub.endpoint) {
            Ok(u) => u,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        // Resolve and check every address now, then connect only to those (no rebinding).
        let addrs = match targets.resolve(&url).await {
            Ok(a) => a,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.settings.timeout)
            .resolve_to_addrs(&host, &addrs)
            .build()
        {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let audience = url.origin().ascii_serialization();
        let expires = jsonwebtoken::get_current_timestamp() + 12 * 3600;
        let res = client
            .post(url.as_str())
            .header("content-type", "application/octet-stream")
            .header("content-encoding", "aes128gcm")
            .header("ttl", TTL_SECS.to_string())
            .header("urgency", urgency)
            .header("authorization", self.settings.vapid.authorization(&audience, expires))
            .body(body.to_vec())
            .send()
            .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "push request failed; will retry");
                return Attempt::Retry(None);
            }
        };
        let status = res.status().as_u16();
        match status {
            200..=299 => Attempt::Delivered,
            404 | 410 => Attempt::Gone,
            429 | 500..=599 => {
                let after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Attempt::Retry(after)
            }
            other => Attempt::Failed(format!("push service answered {other}")),
        }
    }
}

#[async_trait]
impl NotificationSink for PushSender {
    async fn deliver(&self, n: &Notification) -> pm_realtime::Result<()> {
        let subs = self
            .store
            .list_subscriptions(n.user_id)
            .await
            .map_err(|e| pm_realtime::Error::Storage(Box::new(e)))?;
        if subs.is_empty() {
            return Ok(());
        }
        let payload = payload(n).to_string().into_bytes();
        let urgency = match n.kind {
            NotificationKind::Assigned
            | NotificationKind::Mentioned
            | NotificationKind::Automation => "high",
            NotificationKind::Commented | NotificationKind::StateChanged => "normal",
        };
        for sub in subs {
            let sender = self.clone();
            let payload = payload.clone();
            // Off the consumer's task: retries with backoff must not delay other notifications.
            tokio::spawn(async move {
                sender.push(&sub, &payload, urgency).await;
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generated_vapid_key_is_kept_next_to_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pm.db").display());
        let store = crate::auth::store::memory::MemoryAuthStore::default();
        let a = vapid_key(None, &url, &store).await.unwrap();
        let b = vapid_key(None, &url, &store).await.unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes(), "the second start reads the first one's key");
        let path = dir.path().join("pm.db.vapid-key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // PM_VAPID_PRIVATE_KEY wins.
        let configured = webpush::random_secret().unwrap();
        let text = webpush::b64(&configured.to_bytes());
        let c = vapid_key(Some(&text), &url, &store).await.unwrap();
        assert_eq!(c.to_bytes(), configured.to_bytes());
        assert!(vapid_key(Some("short"), &url, &store).await.is_err());
        // Without a file (PostgreSQL), the `server_secrets` row is shared by every instance.
        let pg_like = "postgres://db.invalid/pm";
        let d = vapid_key(None, pg_like, &store).await.unwrap();
        let e = vapid_key(None, pg_like, &store).await.unwrap();
        assert_eq!(d.to_bytes(), e.to_bytes());
    }

    #[test]
    fn payloads_stay_small() {
        let n = Notification {
            id: pm_realtime::notification::NotificationId::new(),
            user_id: UserId::new(),
            kind: NotificationKind::Commented,
            event_id: pm_core::id::EventId::new(),
            seq: 1,
            actor: pm_core::event::Actor::System,
            org_id: None,
            project_id: None,
            task_id: Some(pm_core::id::TaskId::new()),
            summary: "é".repeat(10_000),
            created_at: pm_core::model::now(),
            read_at: None,
        };
        let p = payload(&n).to_string();
        assert!(p.len() < 3 * 1024, "{} bytes", p.len());
        assert!(webpush::encrypt_fresh(p.as_bytes(), &[0; 65], &[0; 16]).is_err(), "bad key");
    }
}
