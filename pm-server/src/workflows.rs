//! pm-workflows in the server: the engine over the same database, and the adapters for its
//! ports — approver rights from pm-permissions ([`ServerApprovers`]), e-mail over SMTP with
//! lettre ([`SmtpMailer`]), signed HTTP requests with reqwest ([`ReqwestHttp`]).
//!
//! The engine is started by `serve` (it consumes the event log from its durable cursor, resumes
//! interrupted executions and fires timers); the REST routes are in [`crate::api::workflows`].
//! Provider messages go through Slack ([`crate::chat::SlackMessages`]) when the server runs
//! with integrations; in-app notifications (the notify action, approval requests) go through
//! pm-realtime like the log-derived ones ([`InAppNotifier`]).

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::event::Actor;
use pm_core::id::{EventId, OrgId, ProjectId, TaskId, UserId};
use pm_permissions::PermissionService;
use pm_permissions::model::{AssignmentFilter, Scope};
use pm_realtime::notification::{Notification, NotificationId, NotificationKind};
use pm_workflows::definition::Approvers;
use pm_workflows::engine::{Engine, EngineConfig};
use pm_workflows::ports::{
    ApproverDirectory, HttpSender, Mail, Mailer, MessageSender, Notifier, OutboundRequest,
    OutboundResponse, Ports,
};
use pm_workflows::{Error, Result};
use sha2::{Digest, Sha256};

/// In-app notifications from automation: each addressed user gets a notification of kind
/// `automation`, stored, pushed live on `user:{id}` and handed to Web Push exactly as the ones
/// pm-realtime derives from the log.
///
/// The engine passes an idempotency key per step (`<execution>:<step key>`, the same on a
/// retry or after a crash); the notification's `event_id` is derived from it, and a
/// notification is unique per user and `event_id`, so a repeated step notifies nobody twice.
#[derive(Debug, Clone)]
pub struct InAppNotifier {
    realtime: crate::realtime::Realtime,
    pm: pm_core::Pm,
}

impl InAppNotifier {
    /// Over the server's realtime (its notification store, hub and sinks) and pm-core.
    pub fn new(realtime: crate::realtime::Realtime, pm: pm_core::Pm) -> Self {
        Self { realtime, pm }
    }

    /// A stable id per idempotency key (UUIDv8 from its SHA-256): not a log event's id, which
    /// are UUIDv7, so the two never collide.
    fn event_id(idempotency_key: &str) -> EventId {
        let digest = Sha256::digest(idempotency_key.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        EventId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

#[async_trait]
impl Notifier for InAppNotifier {
    async fn notify(
        &self,
        users: &[UserId],
        task: Option<TaskId>,
        message: &str,
        idempotency_key: &str,
    ) -> Result<()> {
        let stores = self.pm.stores();
        let (org_id, project_id) = match task {
            Some(id) => {
                let t = stores.tasks.get_task(id).await.map_err(|e| {
                    Error::Action(format!("reading task {id} for a notification: {e}"))
                })?;
                (Some(t.org_id), Some(t.project_id))
            }
            None => (None, None),
        };
        // Sorted with the log's events by `seq`: it happened after everything committed so far.
        let seq = stores
            .events
            .latest_seq()
            .await
            .map_err(|e| Error::Action(format!("reading the event log's head: {e}")))?;
        let event_id = Self::event_id(idempotency_key);
        let created_at = pm_core::model::now();
        for &user_id in users {
            let n = Notification {
                id: NotificationId::new(),
                user_id,
                kind: NotificationKind::Automation,
                event_id,
                seq,
                actor: Actor::System,
                org_id,
                project_id,
                task_id: task,
                summary: message.to_owned(),
                created_at,
                read_at: None,
            };
            self.realtime
                .deliver(&n)
                .await
                .map_err(|e| Error::Action(format!("storing a notification for {user_id}: {e}")))?;
        }
        Ok(())
    }
}

/// Approvers of a role are the users holding it (directly) in the organization or in the
/// task's project, with an assignment active now; rights are re-read at every decision.
#[derive(Debug, Clone)]
pub struct ServerApprovers {
    permissions: Arc<PermissionService>,
}

impl ServerApprovers {
    /// Over the permission service.
    pub fn new(permissions: Arc<PermissionService>) -> Self {
        Self { permissions }
    }
}

#[async_trait]
impl ApproverDirectory for ServerApprovers {
    async fn eligible(
        &self,
        org: OrgId,
        project: Option<ProjectId>,
        approvers: &Approvers,
    ) -> Result<Vec<UserId>> {
        let role_name = match approvers {
            Approvers::Users(u) => return Ok(u.clone()),
            Approvers::Role(r) => r,
        };
        let err = |e: pm_permissions::Error| Error::Action(format!("reading role holders: {e}"));
        let roles = self.permissions.list_roles(&Actor::System, Some(org)).await.map_err(err)?;
        let Some(role) = roles.iter().find(|r| &r.name == role_name) else { return Ok(vec![]) };
        let filter = AssignmentFilter { role_id: Some(role.id), ..AssignmentFilter::default() };
        let assignments = self
            .permissions
            .list_org_assignments(&Actor::System, org, None, &filter)
            .await
            .map_err(err)?;
        let now = pm_core::model::now();
        let mut users: Vec<UserId> = assignments
            .into_iter()
            .filter(|a| a.active_at(now))
            .filter(|a| match a.scope {
                Scope::Global | Scope::Org { .. } => true,
                Scope::Project { project_id, .. } => Some(project_id) == project,
            })
            .map(|a| a.user_id)
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    async fn may_decide(
        &self,
        user: UserId,
        org: OrgId,
        project: Option<ProjectId>,
        approvers: &Approvers,
    ) -> Result<bool> {
        Ok(self.eligible(org, project, approvers).await?.contains(&user))
    }
}

/// Sends e-mail over SMTP. `PM_SMTP_URL` takes lettre's connection URLs: `smtp://host[:port]`
/// (plain, e.g. a local relay), `smtp://user:pass@host:587?tls=required` (STARTTLS, or
/// `tls=opportunistic`) and `smtps://user:pass@host[:465]` (implicit TLS), certificates checked
/// against the OS's roots. The `Message-ID` is derived from the step's idempotency key, so a
/// receiver can drop a duplicate sent across a crash.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// A mailer for a connection URL (see the type's docs) sending as `from`.
    pub fn new(url: &str, from: &str) -> anyhow::Result<Self> {
        if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
            anyhow::bail!("PM_SMTP_URL must start with smtp:// or smtps://");
        }
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("PM_SMTP_URL: {e}"))?
            .build();
        Ok(Self { transport, from: from.parse()? })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<()> {
        use lettre::AsyncTransport as _;
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone())
            .message_id(Some(format!(
                "<{}@pm-workflows>",
                mail.idempotency_key.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', ".")
            )));
        for to in &mail.to {
            let mailbox: lettre::message::Mailbox =
                to.parse().map_err(|e| Error::invalid("to", format!("{to}: {e}")))?;
            builder = builder.to(mailbox);
        }
        let message =
            builder.body(mail.body.clone()).map_err(|e| Error::invalid("email", e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| Error::Action(format!("SMTP: {e}")))
    }
}

/// Sends the engine's signed HTTP requests. 5xx, 429 and transport errors are retried by the
/// engine; other statuses are recorded as the step's output.
#[derive(Debug, Clone, Default)]
pub struct ReqwestHttp {
    client: reqwest::Client,
}

#[async_trait]
impl HttpSender for ReqwestHttp {
    async fn send(&self, r: &OutboundRequest) -> Result<OutboundResponse> {
        use pm_workflows::definition::HttpMethod as M;
        let method = match r.method {
            M::Post => reqwest::Method::POST,
            M::Put => reqwest::Method::PUT,
            M::Patch => reqwest::Method::PATCH,
            M::Get => reqwest::Method::GET,
            M::Delete => reqwest::Method::DELETE,
        };
        let mut req =
            self.client.request(method, &r.url).timeout(std::time::Duration::from_secs(10));
        for (k, v) in &r.headers {
            req = req.header(k, v);
        }
        if !r.body.is_empty() {
            req = req.body(r.body.clone());
        }
        let res = req.send().await.map_err(|e| Error::Action(format!("HTTP: {e}")))?;
        let status = res.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(Error::Action(format!("HTTP {status} from {}", r.url)));
        }
        let bytes = res.bytes().await.map_err(|e| Error::Action(format!("HTTP: {e}")))?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(
                String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into(),
            )
        });
        Ok(OutboundResponse { status, body })
    }
}

/// SMTP settings (`PM_SMTP_URL`, `PM_SMTP_FROM`).
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `smtp://host:port`.
    pub url: String,
    /// Sender address.
    pub from: String,
}

/// Opens pm-workflows' tables in the database at `url`, migrates them, and builds the engine
/// with the server's adapters (`messages`: the provider message sender, e.g.
/// [`crate::chat::SlackMessages`]; `notifier`: in-app notifications, e.g. [`InAppNotifier`]).
/// Does not start it (see [`Engine::spawn`]).
pub async fn open_engine(
    url: &str,
    pm: pm_core::Pm,
    permissions: Arc<PermissionService>,
    smtp: Option<SmtpSettings>,
    messages: Option<Arc<dyn MessageSender>>,
    notifier: Option<Arc<dyn Notifier>>,
) -> anyhow::Result<Engine> {
    let stores = pm_workflows::store::open(url).await?;
    build_engine(stores, pm, permissions, smtp, messages, notifier).await
}

/// [`open_engine`] on stores the caller opened (pm-server's binary: on the process's shared
/// pool, see [`crate::db::Database::workflow_stores`]); migrates them.
pub async fn build_engine(
    stores: pm_workflows::store::WorkflowStores,
    pm: pm_core::Pm,
    permissions: Arc<PermissionService>,
    smtp: Option<SmtpSettings>,
    messages: Option<Arc<dyn MessageSender>>,
    notifier: Option<Arc<dyn Notifier>>,
) -> anyhow::Result<Engine> {
    stores.admin.migrate().await?;
    let mailer: Option<Arc<dyn Mailer>> = match smtp {
        Some(s) => Some(Arc::new(SmtpMailer::new(&s.url, &s.from)?)),
        None => None,
    };
    let ports = Ports {
        mailer,
        http: Some(Arc::new(ReqwestHttp::default())),
        messages,
        notifier,
        approvers: Some(Arc::new(ServerApprovers::new(permissions))),
    };
    let engine = Engine::new(pm, stores, ports, EngineConfig::default());
    engine.reload().await?;
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::SmtpMailer;

    #[test]
    fn smtp_urls_cover_plain_starttls_and_implicit_tls() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://user:secret@mail.example.com:587?tls=required",
            "smtp://mail.example.com?tls=opportunistic",
            "smtps://user:secret@mail.example.com",
        ] {
            SmtpMailer::new(url, "pm <pm@example.com>")
                .unwrap_or_else(|e| panic!("{url} should configure a mailer: {e}"));
        }
        for (url, why) in [
            ("http://mail.example.com", "smtp://"),
            ("smtp://mail.example.com?tls=sometimes", "tls"),
            ("smtp://", "host"),
        ] {
            let err = SmtpMailer::new(url, "pm <pm@example.com>").expect_err(url).to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
