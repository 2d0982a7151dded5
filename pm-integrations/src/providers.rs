//! The built-in providers: GitHub, Jira Cloud, Slack, Google Calendar and Outlook (Microsoft
//! Graph) — their identity, OAuth endpoints, webhook authentication, dedupe keys, payload
//! parsing and default mappings. [`builtin`] lists them; [`Registry`] finds one by key.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::provider::*;
use crate::sync::{FieldPolicies, FieldPolicy, Side, Snapshot};
use crate::webhook::inbound::{self, *};
use crate::webhook::{InboundRequest, SignatureError};
use crate::{Error, Result};

/// Every built-in provider, in a stable order.
pub fn builtin() -> Vec<Arc<dyn Provider>> {
    vec![
        Arc::new(GitHub),
        Arc::new(Jira),
        Arc::new(Slack),
        Arc::new(GoogleCalendar),
        Arc::new(Outlook),
    ]
}

/// Providers by key: the built-ins plus any a host registers.
#[derive(Debug, Clone)]
pub struct Registry {
    providers: BTreeMap<ProviderKey, Arc<dyn Provider>>,
}

impl Default for Registry {
    /// The built-ins.
    fn default() -> Self {
        let mut r = Self { providers: BTreeMap::new() };
        for p in builtin() {
            r.register(p);
        }
        r
    }
}

impl Registry {
    /// Adds (or replaces) a provider.
    pub fn register(&mut self, p: Arc<dyn Provider>) {
        self.providers.insert(p.info().key, p);
    }

    /// The provider with this key.
    pub fn get(&self, key: &ProviderKey) -> Option<&Arc<dyn Provider>> {
        self.providers.get(key)
    }

    /// Every provider, by key.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }
}

fn key(s: &str) -> ProviderKey {
    ProviderKey::parse(s).expect("built-in keys are valid")
}

fn json_body(req: &InboundRequest) -> Result<Value> {
    serde_json::from_slice(&req.body).map_err(|e| Error::invalid("body", e.to_string()))
}

fn time_field(v: &Value) -> Option<OffsetDateTime> {
    v.as_str().and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// A dedupe key from a required header, bounded so a hostile value cannot bloat the index.
fn header_id(req: &InboundRequest, name: &'static str) -> Result<String, SignatureError> {
    let v = req.require(name)?.trim();
    if v.is_empty() || v.len() > 200 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SignatureError::Malformed { header: name, reason: "1-200 visible characters" });
    }
    Ok(v.to_owned())
}

/// A dedupe key for providers without a delivery id: the body's digest (a replay is
/// byte-identical; a new event differs).
fn body_digest(req: &InboundRequest) -> String {
    use sha2::Digest;
    format!("sha256:{}", crate::webhook::hex(&sha2::Sha256::digest(&req.body)))
}

/// GitHub issues and comments (`issues`, `issue_comment` webhooks).
#[derive(Debug, Clone, Copy, Default)]
pub struct GitHub;

impl GitHub {
    /// An issue object as mapped fields.
    pub fn issue_fields(issue: &Value) -> Snapshot {
        let mut f = Snapshot::new();
        f.insert("title".into(), issue["title"].clone());
        f.insert("description".into(), issue["body"].clone());
        f.insert("state".into(), issue["state"].clone());
        let labels: Vec<Value> = issue["labels"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l.get("name").cloned()).collect())
            .unwrap_or_default();
        f.insert("labels".into(), Value::Array(labels));
        f
    }
}

impl GitHub {
    /// `owner/repo` from the integration config (`repository`).
    fn repository(ctx: &ProviderContext) -> Result<&str> {
        let repo = ctx.config["repository"].as_str().unwrap_or_default();
        let ok = repo.split('/').count() == 2
            && repo.split('/').all(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !ok {
            return Err(Error::invalid("config.repository", "must be owner/repo"));
        }
        Ok(repo)
    }

    fn item(repo: &str, issue: &Value) -> Option<ExternalItem> {
        Some(ExternalItem {
            external_id: format!("{repo}#{}", issue["number"].as_i64()?),
            url: issue["html_url"].as_str().map(str::to_owned),
            fields: Self::issue_fields(issue),
            updated_at: time_field(&issue["updated_at"]),
        })
    }

    /// Adds a comment to an issue (`owner/repo#n`); returns the comment's id.
    pub async fn comment(
        &self,
        ctx: &ProviderContext,
        external_id: &str,
        body: &str,
    ) -> Result<i64> {
        let repo = Self::repository(ctx)?;
        let number = Self::number(repo, external_id)?;
        let client = crate::http::ApiClient::for_context("github", ctx)?;
        let res = client
            .json(
                reqwest::Method::POST,
                &format!("/repos/{repo}/issues/{number}/comments"),
                ctx.access_token.as_ref(),
                Some(&json!({ "body": body })),
            )
            .await?;
        res["id"].as_i64().ok_or_else(|| Error::Provider {
            provider: "github".into(),
            message: "comment response has no id".into(),
            retry_after: None,
        })
    }

    /// Replaces the body of issue comment `comment_id` of the configured repository.
    pub async fn edit_comment(
        &self,
        ctx: &ProviderContext,
        comment_id: &str,
        body: &str,
    ) -> Result<()> {
        let repo = Self::repository(ctx)?;
        let id = Self::comment_number(comment_id)?;
        let client = crate::http::ApiClient::for_context("github", ctx)?;
        client
            .json(
                reqwest::Method::PATCH,
                &format!("/repos/{repo}/issues/comments/{id}"),
                ctx.access_token.as_ref(),
                Some(&json!({ "body": body })),
            )
            .await?;
        Ok(())
    }

    /// Deletes issue comment `comment_id` of the configured repository; one already gone
    /// (404) counts as deleted.
    pub async fn delete_comment(&self, ctx: &ProviderContext, comment_id: &str) -> Result<()> {
        let repo = Self::repository(ctx)?;
        let id = Self::comment_number(comment_id)?;
        let client = crate::http::ApiClient::for_context("github", ctx)?;
        match client
            .json(
                reqwest::Method::DELETE,
                &format!("/repos/{repo}/issues/comments/{id}"),
                ctx.access_token.as_ref(),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Rejected { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn comment_number(comment_id: &str) -> Result<u64> {
        comment_id
            .parse()
            .map_err(|_| Error::invalid("external_comment_id", "not a GitHub comment id"))
    }

    fn number(repo: &str, external_id: &str) -> Result<u64> {
        external_id
            .strip_prefix(repo)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid("external_id", format!("not an issue of {repo}")))
    }
}

#[async_trait::async_trait]
impl Provider for GitHub {
    /// Issues (not pull requests) of the configured repository changed since `since`, all
    /// pages.
    async fn pull(
        &self,
        ctx: &ProviderContext,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<ExternalItem>> {
        let repo = Self::repository(ctx)?;
        let client = crate::http::ApiClient::for_context("github", ctx)?;
        let since = since
            .and_then(|t| t.format(&Rfc3339).ok())
            .map(|t| {
                format!(
                    "&since={}",
                    url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default();
        let mut items = Vec::new();
        for page in 1..=100 {
            let path = format!("/repos/{repo}/issues?state=all&per_page=100&page={page}{since}");
            let res =
                client.json(reqwest::Method::GET, &path, ctx.access_token.as_ref(), None).await?;
            let issues = res.as_array().cloned().unwrap_or_default();
            let n = issues.len();
            items.extend(
                issues
                    .iter()
                    .filter(|i| i.get("pull_request").is_none())
                    .filter_map(|i| Self::item(repo, i)),
            );
            if n < 100 {
                break;
            }
        }
        Ok(items)
    }

    /// One issue (`owner/repo#n`).
    async fn fetch(&self, ctx: &ProviderContext, external_id: &str) -> Result<ExternalItem> {
        let repo = Self::repository(ctx)?;
        let number = Self::number(repo, external_id)?;
        let client = crate::http::ApiClient::for_context("github", ctx)?;
        let res = client
            .json(
                reqwest::Method::GET,
                &format!("/repos/{repo}/issues/{number}"),
                ctx.access_token.as_ref(),
                None,
            )
            .await?;
        Self::item(repo, &res).ok_or_else(|| Error::Provider {
            provider: "github".into(),
            message: "issue response has no number".into(),
            retry_after: None,
        })
    }

    /// Creates an issue or updates `owner/repo#n` with `title`, `description` (→ `body`),
    /// `state` (`open`/`closed`) and `labels`.
    async fn push(
        &self,
        ctx: &ProviderContext,
        external_id: Option<&str>,
        fields: &Snapshot,
    ) -> Result<ExternalItem> {
        let repo = Self::repository(ctx)?;
        let client = crate::http::ApiClient::for_context("github", ctx)?;
        let mut body = serde_json::Map::new();
        for (ours, theirs) in
            [("title", "title"), ("description", "body"), ("state", "state"), ("labels", "labels")]
        {
            // A new issue is always open: GitHub's create takes no `state`.
            if ours == "state" && external_id.is_none() {
                continue;
            }
            if let Some(v) = fields.get(ours) {
                // `null` clears: GitHub wants an empty body, not a missing one.
                let v = if ours == "description" && v.is_null() { json!("") } else { v.clone() };
                body.insert(theirs.into(), v);
            }
        }
        let body = Value::Object(body);
        let (method, path) = match external_id {
            None => (reqwest::Method::POST, format!("/repos/{repo}/issues")),
            Some(id) => (
                reqwest::Method::PATCH,
                format!("/repos/{repo}/issues/{}", Self::number(repo, id)?),
            ),
        };
        let res = client.json(method, &path, ctx.access_token.as_ref(), Some(&body)).await?;
        Self::item(repo, &res).ok_or_else(|| Error::Provider {
            provider: "github".into(),
            message: "issue response has no number".into(),
            retry_after: None,
        })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            key: key("github"),
            name: "GitHub".into(),
            capabilities: vec![
                Capability::Webhooks,
                Capability::Pull,
                Capability::Push,
                Capability::OAuth,
            ],
        }
    }

    fn oauth(&self) -> Option<OAuthConfig> {
        Some(OAuthConfig {
            authorize_url: "https://github.com/login/oauth/authorize".into(),
            token_url: "https://github.com/login/oauth/access_token".into(),
            revoke_url: None,
            scopes: vec!["repo".into()],
        })
    }

    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        _now: OffsetDateTime,
    ) -> Result<(), SignatureError> {
        verify_github(secret, req)
    }

    fn delivery_id(&self, req: &InboundRequest) -> Result<String, SignatureError> {
        header_id(req, GITHUB_DELIVERY)
    }

    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>> {
        let event = req.get(GITHUB_EVENT).unwrap_or("unknown").to_owned();
        let body = json_body(req)?;
        let action = body["action"].as_str().map(|a| format!(".{a}")).unwrap_or_default();
        let issue = &body["issue"];
        let external_id = match (body["repository"]["full_name"].as_str(), issue["number"].as_i64())
        {
            (Some(repo), Some(n)) => Some(format!("{repo}#{n}")),
            _ => None,
        };
        let fields = if event == "issues" { Self::issue_fields(issue) } else { Snapshot::new() };
        Ok(vec![InboundEvent {
            kind: format!("{event}{action}"),
            external_id,
            fields,
            changed_at: time_field(&issue["updated_at"]),
            raw: body,
        }])
    }

    fn default_mappings(&self) -> Mappings {
        let mut m = Mappings::default();
        for (l, r) in
            [("title", "title"), ("description", "body"), ("state", "state"), ("labels", "labels")]
        {
            m.fields.insert(l.into(), r.into());
        }
        m.states.insert("open".into(), "unstarted".into());
        m.states.insert("closed".into(), "completed".into());
        m
    }
}

/// Jira Cloud issues (`jira:issue_*` webhooks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Jira;

#[async_trait::async_trait]
impl Provider for Jira {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            key: key("jira"),
            name: "Jira Cloud".into(),
            capabilities: vec![
                Capability::Webhooks,
                Capability::Pull,
                Capability::Push,
                Capability::OAuth,
            ],
        }
    }

    fn oauth(&self) -> Option<OAuthConfig> {
        Some(OAuthConfig {
            authorize_url: "https://auth.atlassian.com/authorize".into(),
            token_url: "https://auth.atlassian.com/oauth/token".into(),
            revoke_url: None,
            scopes: vec![
                "read:jira-work".into(),
                "write:jira-work".into(),
                "offline_access".into(),
            ],
        })
    }

    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        _now: OffsetDateTime,
    ) -> Result<(), SignatureError> {
        verify_jira(secret, req)
    }

    fn delivery_id(&self, req: &InboundRequest) -> Result<String, SignatureError> {
        header_id(req, JIRA_DELIVERY)
    }

    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>> {
        let body = json_body(req)?;
        let issue = &body["issue"];
        Ok(vec![InboundEvent {
            kind: body["webhookEvent"].as_str().unwrap_or("unknown").to_owned(),
            external_id: issue["key"].as_str().map(str::to_owned),
            fields: crate::jira::issue_fields(issue),
            changed_at: issue["fields"]["updated"].as_str().and_then(parse_jira_time),
            raw: body,
        }])
    }

    async fn fetch(&self, ctx: &ProviderContext, external_id: &str) -> Result<ExternalItem> {
        crate::jira::fetch(ctx, external_id).await
    }

    async fn pull(
        &self,
        ctx: &ProviderContext,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<ExternalItem>> {
        crate::jira::pull(ctx, since).await
    }

    /// Creates or updates an issue (`summary`, ADF `description`, `duedate`, `labels`) and
    /// moves it to the mapped status through the transitions API.
    async fn push(
        &self,
        ctx: &ProviderContext,
        external_id: Option<&str>,
        fields: &Snapshot,
    ) -> Result<ExternalItem> {
        crate::jira::push(ctx, external_id, fields).await
    }

    fn default_mappings(&self) -> Mappings {
        let mut m = Mappings::default();
        for (l, r) in [
            ("title", "summary"),
            ("description", "description"),
            ("state", "status"),
            ("due", "duedate"),
            ("labels", "labels"),
        ] {
            m.fields.insert(l.into(), r.into());
        }
        for (r, l) in [("To Do", "unstarted"), ("In Progress", "started"), ("Done", "completed")] {
            m.states.insert(r.into(), l.into());
        }
        // Jira workflows are usually the source of truth for status.
        m.policies = FieldPolicies::default();
        m.policies.fields.insert("state".into(), FieldPolicy::Authoritative(Side::Remote));
        m
    }
}

/// Jira writes `2024-01-02T03:04:05.678+0000` (no colon in the offset).
fn parse_jira_time(s: &str) -> Option<OffsetDateTime> {
    crate::jira::parse_time(s)
}

/// Slack: slash commands, interactive buttons and Events API callbacks (signing v0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Slack;

impl Slack {
    fn form(req: &InboundRequest) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(&req.body).into_owned().collect()
    }
}

#[async_trait::async_trait]
impl Provider for Slack {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            key: key("slack"),
            name: "Slack".into(),
            capabilities: vec![Capability::Webhooks, Capability::Messages, Capability::OAuth],
        }
    }

    fn oauth(&self) -> Option<OAuthConfig> {
        Some(OAuthConfig {
            authorize_url: "https://slack.com/oauth/v2/authorize".into(),
            token_url: "https://slack.com/api/oauth.v2.access".into(),
            revoke_url: Some("https://slack.com/api/auth.revoke".into()),
            scopes: vec![
                "chat:write".into(),
                "commands".into(),
                "users:read".into(),
                "users:read.email".into(),
            ],
        })
    }

    /// Slack's `oauth/v2/authorize` reads `scope` as a comma-separated list.
    fn scope_separator(&self) -> &'static str {
        ","
    }

    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        now: OffsetDateTime,
    ) -> Result<(), SignatureError> {
        verify_slack(secret, req, now, SLACK_WINDOW_SECS)
    }

    /// Slack has no delivery id header: Events API callbacks carry `event_id`, retries say
    /// `X-Slack-Retry-Num` but repeat the body, so the body digest is the dedupe key.
    fn delivery_id(&self, req: &InboundRequest) -> Result<String, SignatureError> {
        if let Ok(body) = serde_json::from_slice::<Value>(&req.body)
            && let Some(id) = body["event_id"].as_str()
        {
            return Ok(format!("event:{id}"));
        }
        Ok(body_digest(req))
    }

    fn immediate_reply(&self, req: &InboundRequest) -> Option<HandshakeReply> {
        let body: Value = serde_json::from_slice(&req.body).ok()?;
        (body["type"] == "url_verification").then(|| HandshakeReply {
            content_type: "text/plain",
            body: body["challenge"].as_str().unwrap_or_default().to_owned(),
        })
    }

    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>> {
        if let Ok(body) = serde_json::from_slice::<Value>(&req.body) {
            let kind =
                body["event"]["type"].as_str().or(body["type"].as_str()).unwrap_or("unknown");
            return Ok(vec![InboundEvent {
                kind: kind.to_owned(),
                external_id: None,
                fields: Snapshot::new(),
                changed_at: None,
                raw: body,
            }]);
        }
        let form = Self::form(req);
        if let Some(payload) = form.get("payload") {
            // Interactive components post `payload=<json>`.
            let raw: Value = serde_json::from_str(payload)
                .map_err(|e| Error::invalid("payload", e.to_string()))?;
            return Ok(vec![InboundEvent {
                kind: format!("interactive.{}", raw["type"].as_str().unwrap_or("unknown")),
                external_id: raw["actions"][0]["value"].as_str().map(str::to_owned),
                fields: Snapshot::new(),
                changed_at: None,
                raw,
            }]);
        }
        if form.contains_key("command") {
            let raw = json!(form);
            return Ok(vec![InboundEvent {
                kind: "slash_command".into(),
                external_id: None,
                fields: Snapshot::new(),
                changed_at: None,
                raw,
            }]);
        }
        Err(Error::invalid("body", "neither JSON, an interactive payload nor a slash command"))
    }
}

/// Google Calendar events (push notifications on a watch channel).
#[derive(Debug, Clone, Copy, Default)]
pub struct GoogleCalendar;

#[async_trait::async_trait]
impl Provider for GoogleCalendar {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            key: key("google_calendar"),
            name: "Google Calendar".into(),
            capabilities: vec![
                Capability::Webhooks,
                Capability::Pull,
                Capability::Push,
                Capability::OAuth,
            ],
        }
    }

    fn oauth(&self) -> Option<OAuthConfig> {
        Some(OAuthConfig {
            authorize_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            revoke_url: Some("https://oauth2.googleapis.com/revoke".into()),
            scopes: vec!["https://www.googleapis.com/auth/calendar.events".into()],
        })
    }

    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        _now: OffsetDateTime,
    ) -> Result<(), SignatureError> {
        verify_google(secret, req)
    }

    /// Google numbers messages per channel; (channel, number) is unique.
    fn delivery_id(&self, req: &InboundRequest) -> Result<String, SignatureError> {
        let channel = header_id(req, GOOGLE_CHANNEL_ID)?;
        let n = header_id(req, GOOGLE_MESSAGE_NUMBER)?;
        Ok(format!("{channel}:{n}"))
    }

    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>> {
        // Google's pings carry no body: they say "something changed in resource X"; the sync
        // pulls the changes.
        let state = req.get("X-Goog-Resource-State").unwrap_or("unknown");
        Ok(vec![InboundEvent {
            kind: format!("channel.{state}"),
            external_id: req.get("X-Goog-Resource-ID").map(str::to_owned),
            fields: Snapshot::new(),
            changed_at: None,
            raw: json!({ "channel_id": req.get(GOOGLE_CHANNEL_ID), "resource_state": state }),
        }])
    }

    fn default_mappings(&self) -> Mappings {
        let mut m = Mappings::default();
        m.fields.insert("title".into(), "summary".into());
        m.fields.insert("due".into(), "start".into());
        m
    }
}

/// Outlook calendars through Microsoft Graph subscriptions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outlook;

#[async_trait::async_trait]
impl Provider for Outlook {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            key: key("outlook"),
            name: "Outlook (Microsoft Graph)".into(),
            capabilities: vec![
                Capability::Webhooks,
                Capability::Pull,
                Capability::Push,
                Capability::OAuth,
            ],
        }
    }

    fn oauth(&self) -> Option<OAuthConfig> {
        Some(OAuthConfig {
            authorize_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize".into(),
            token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token".into(),
            revoke_url: None,
            scopes: vec!["offline_access".into(), "Calendars.ReadWrite".into()],
        })
    }

    fn handshake(&self, req: &InboundRequest) -> Result<Option<HandshakeReply>, SignatureError> {
        Ok(inbound::graph_validation_token(req)?
            .map(|body| HandshakeReply { content_type: "text/plain", body }))
    }

    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        _now: OffsetDateTime,
    ) -> Result<(), SignatureError> {
        verify_graph(secret, req)
    }

    fn delivery_id(&self, req: &InboundRequest) -> Result<String, SignatureError> {
        Ok(body_digest(req))
    }

    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>> {
        let body = json_body(req)?;
        let items = body["value"].as_array().cloned().unwrap_or_default();
        Ok(items
            .into_iter()
            .map(|item| {
                // Lifecycle notifications (`reauthorizationRequired`, `subscriptionRemoved`,
                // `missed`) carry `lifecycleEvent` instead of `changeType`.
                let kind = item["lifecycleEvent"]
                    .as_str()
                    .map(|l| format!("lifecycle.{l}"))
                    .or_else(|| item["changeType"].as_str().map(|c| format!("change.{c}")))
                    .unwrap_or_else(|| "unknown".into());
                InboundEvent {
                    kind,
                    external_id: item["resourceData"]["id"].as_str().map(str::to_owned),
                    fields: Snapshot::new(),
                    changed_at: None,
                    raw: item,
                }
            })
            .collect())
    }

    fn default_mappings(&self) -> Mappings {
        let mut m = Mappings::default();
        m.fields.insert("title".into(), "subject".into());
        m.fields.insert("due".into(), "start".into());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_the_five() {
        let r = Registry::default();
        let keys: Vec<String> = r.all().map(|p| p.info().key.to_string()).collect();
        assert_eq!(keys, ["github", "google_calendar", "jira", "outlook", "slack"]);
    }

    #[test]
    fn github_issue_parses() {
        let body = json!({
            "action": "edited",
            "issue": {"number": 7, "title": "T", "body": "B", "state": "open",
                      "labels": [{"name": "bug"}], "updated_at": "2025-01-02T03:04:05Z"},
            "repository": {"full_name": "octo/repo"}
        });
        let req =
            InboundRequest::new(serde_json::to_vec(&body).unwrap()).header(GITHUB_EVENT, "issues");
        let ev = GitHub.parse(&req).unwrap().remove(0);
        assert_eq!(ev.kind, "issues.edited");
        assert_eq!(ev.external_id.as_deref(), Some("octo/repo#7"));
        assert_eq!(ev.fields["labels"], json!(["bug"]));
        assert!(ev.changed_at.is_some());
    }

    #[test]
    fn jira_time_parses() {
        assert!(parse_jira_time("2024-01-02T03:04:05.678+0000").is_some());
    }

    #[test]
    fn slack_forms_parse() {
        let req = InboundRequest::new("command=%2Fpm&text=list&response_url=https%3A%2F%2Fx");
        assert_eq!(Slack.parse(&req).unwrap()[0].kind, "slash_command");
        let req = InboundRequest::new(r#"{"type":"url_verification","challenge":"abc"}"#);
        assert_eq!(Slack.immediate_reply(&req).unwrap().body, "abc");
    }
}
