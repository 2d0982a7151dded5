//! Ports: the side effects pm-workflows needs from outside pm-core, as traits the host
//! implements (pm-server wires SMTP, HTTP, Slack through pm-integrations, in-app notifications
//! through pm-realtime, approver rights through pm-permissions).
//!
//! Every side-effecting call carries an idempotency key (`<execution id>:<step key>`), stable
//! across retries and restarts: an adapter passes it on (the `webhook-id` of a signed request,
//! the `Message-ID` of an e-mail) so the receiving end can drop the duplicate that a crash
//! between "sent" and "recorded" would otherwise cause.

use async_trait::async_trait;
use pm_core::id::{OrgId, ProjectId, TaskId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{Approvers, HttpMethod};
use crate::{Error, Result};

/// An e-mail to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    /// Stable across retries; use it as (part of) the `Message-ID`.
    pub idempotency_key: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Sends e-mail (SMTP in pm-server).
#[async_trait]
pub trait Mailer: Send + Sync {
    /// Sends one message; an error is retried with backoff.
    async fn send(&self, mail: &Mail) -> Result<()>;
}

/// A signed outbound HTTP request (Standard Webhooks headers already computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundRequest {
    /// Method.
    pub method: HttpMethod,
    /// URL.
    pub url: String,
    /// Headers to send (`content-type`, `webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub headers: Vec<(String, String)>,
    /// Body bytes (JSON), empty for GET/DELETE.
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundResponse {
    /// Status code.
    pub status: u16,
    /// Body as JSON when it is JSON, else as a string (truncated by the adapter).
    pub body: Value,
}

/// Sends HTTP requests (reqwest in pm-server). A 5xx or 429 should be returned as
/// [`Error::Action`] so the engine retries; a 4xx as a response (the step records it).
#[async_trait]
pub trait HttpSender: Send + Sync {
    /// Sends one request.
    async fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse>;
}

/// Sends a message through a provider (Slack via pm-integrations, wired in pm-server).
#[async_trait]
pub trait MessageSender: Send + Sync {
    /// Posts `text` to `channel` of `provider` in the organization; returns provider data.
    async fn send(
        &self,
        org: OrgId,
        provider: &str,
        channel: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<Value>;
}

/// Delivers in-app notifications (pm-realtime in pm-server).
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Notifies `users` about `task` with `message`.
    async fn notify(
        &self,
        users: &[UserId],
        task: Option<TaskId>,
        message: &str,
        idempotency_key: &str,
    ) -> Result<()>;
}

/// Who may approve: resolved when an approval is requested, and checked again when someone
/// decides (rights may have changed in between). pm-server answers with pm-permissions.
#[async_trait]
pub trait ApproverDirectory: Send + Sync {
    /// The users who may decide (M), for quorum computation and notification.
    async fn eligible(
        &self,
        org: OrgId,
        project: Option<ProjectId>,
        approvers: &Approvers,
    ) -> Result<Vec<UserId>>;
    /// Whether `user` may decide now.
    async fn may_decide(
        &self,
        user: UserId,
        org: OrgId,
        project: Option<ProjectId>,
        approvers: &Approvers,
    ) -> Result<bool>;
}

/// An [`ApproverDirectory`] that knows only explicit user lists (`{"users": [...]}`); a role
/// has no members. For hosts without roles, and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExplicitApprovers;

#[async_trait]
impl ApproverDirectory for ExplicitApprovers {
    async fn eligible(
        &self,
        _: OrgId,
        _: Option<ProjectId>,
        approvers: &Approvers,
    ) -> Result<Vec<UserId>> {
        Ok(match approvers {
            Approvers::Users(u) => u.clone(),
            Approvers::Role(_) => Vec::new(),
        })
    }

    async fn may_decide(
        &self,
        user: UserId,
        _: OrgId,
        _: Option<ProjectId>,
        approvers: &Approvers,
    ) -> Result<bool> {
        Ok(matches!(approvers, Approvers::Users(u) if u.contains(&user)))
    }
}

/// The ports an engine uses; absent ones make their actions fail with a clear error (and a
/// dry-run says so).
#[derive(Clone, Default)]
pub struct Ports {
    /// E-mail.
    pub mailer: Option<std::sync::Arc<dyn Mailer>>,
    /// HTTP requests.
    pub http: Option<std::sync::Arc<dyn HttpSender>>,
    /// Provider messages.
    pub messages: Option<std::sync::Arc<dyn MessageSender>>,
    /// In-app notifications.
    pub notifier: Option<std::sync::Arc<dyn Notifier>>,
    /// Approver rights; [`ExplicitApprovers`] when absent.
    pub approvers: Option<std::sync::Arc<dyn ApproverDirectory>>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("mailer", &self.mailer.is_some())
            .field("http", &self.http.is_some())
            .field("messages", &self.messages.is_some())
            .field("notifier", &self.notifier.is_some())
            .field("approvers", &self.approvers.is_some())
            .finish()
    }
}

pub(crate) fn missing(port: &str) -> Error {
    Error::invalid("action", format!("the host has no {port} configured"))
}

/// Standard Webhooks signing (<https://www.standardwebhooks.com>): `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">`, keyed with the secret (its `whsec_` prefix stripped and
/// base64-decoded when it has one, else the raw bytes).
pub fn standard_webhooks_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| b64.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        // The reference vector of the Standard Webhooks libraries.
        let sig = standard_webhooks_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
