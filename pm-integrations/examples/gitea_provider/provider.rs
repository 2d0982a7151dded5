//! A Gitea issues provider — the starting point for an integration author.
//!
//! Everything a provider needs is here, in about 200 lines: identity ([`Provider::info`]), how
//! users connect it ([`Provider::oauth`], Gitea being an OAuth 2 server with PKCE), how its
//! webhooks are authenticated (`X-Gitea-Signature`: bare hex HMAC-SHA256 of the raw body) and
//! deduplicated (`X-Gitea-Delivery`), what they mean ([`Provider::parse`]), pulling and pushing
//! issues over its REST API (`/api/v1/repos/{owner}/{repo}/issues`), and the default field and
//! state mappings. It keeps no state: credentials, mappings and deliveries live in the stores
//! and reach it through [`ProviderContext`] (the API base URL of the instance, the access token
//! from [`pm_integrations::oauth::OAuth::access_token`], the integration's config).
//!
//! Copy this file, rename, adapt the paths and field names, register it with
//! [`pm_integrations::providers::Registry::register`], and run the same kind of wiremock test
//! (`tests/it/gitea.rs`) against it.

use pm_integrations::http::ApiClient;
use pm_integrations::provider::{
    Capability, ExternalItem, InboundEvent, Mappings, OAuthConfig, Provider, ProviderContext,
    ProviderInfo, ProviderKey,
};
use pm_integrations::sync::{FieldPolicy, Side, Snapshot};
use pm_integrations::webhook::inbound::verify_hmac_sha256_hex;
use pm_integrations::webhook::{InboundRequest, SignatureError};
use pm_integrations::{Error, Result};
use reqwest::Method;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Gitea's signature header: lower-case hex HMAC-SHA256 of the body, no prefix.
pub const GITEA_SIGNATURE: &str = "X-Gitea-Signature";
/// Gitea's delivery id (a UUID per delivery; redeliveries keep it).
pub const GITEA_DELIVERY: &str = "X-Gitea-Delivery";
/// Gitea's event name (`issues`, `issue_comment`, ...).
pub const GITEA_EVENT: &str = "X-Gitea-Event";

/// pm field ↔ Gitea issue field, both directions.
const FIELDS: [(&str, &str); 4] =
    [("title", "title"), ("description", "body"), ("state", "state"), ("due_date", "due_date")];

/// Gitea issues of one repository (`config.repository` = `owner/repo`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gitea;

impl Gitea {
    /// An issue object as pm fields (Gitea names → pm names; labels as a list of names).
    pub fn issue_fields(issue: &Value) -> Snapshot {
        let mut f = Snapshot::new();
        for (ours, theirs) in FIELDS {
            f.insert(ours.into(), issue[theirs].clone());
        }
        let labels: Vec<Value> = issue["labels"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l.get("name").cloned()).collect())
            .unwrap_or_default();
        f.insert("labels".into(), Value::Array(labels));
        f
    }

    fn repository(ctx: &ProviderContext) -> Result<&str> {
        let repo = ctx.config["repository"].as_str().unwrap_or_default();
        let mut parts = repo.split('/');
        let ok = repo.split('/').count() == 2
            && parts.all(|p| {
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
            updated_at: issue["updated_at"]
                .as_str()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
        })
    }

    fn number(repo: &str, external_id: &str) -> Result<u64> {
        external_id
            .strip_prefix(repo)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid("external_id", format!("not an issue of {repo}")))
    }

    fn client(ctx: &ProviderContext) -> Result<ApiClient> {
        // Rate limits (429/503 + Retry-After) are honoured by the shared client.
        ApiClient::for_context("gitea", ctx)
    }
}

#[async_trait::async_trait]
impl Provider for Gitea {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            key: ProviderKey::parse("gitea").expect("a valid key"),
            name: "Gitea".into(),
            capabilities: vec![
                Capability::Webhooks,
                Capability::Pull,
                Capability::Push,
                Capability::OAuth,
            ],
        }
    }

    /// gitea.com's endpoints; a self-hosted instance rebases them with
    /// `OAuthClient::with_base_url` (pm-server: `PM_OAUTH_GITEA_BASE_URL`). Gitea has no
    /// revocation endpoint, so disconnecting deletes the tokens here only.
    fn oauth(&self) -> Option<OAuthConfig> {
        Some(OAuthConfig {
            authorize_url: "https://gitea.com/login/oauth/authorize".into(),
            token_url: "https://gitea.com/login/oauth/access_token".into(),
            revoke_url: None,
            scopes: vec!["write:issue".into(), "read:repository".into()],
        })
    }

    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        _now: OffsetDateTime,
    ) -> std::result::Result<(), SignatureError> {
        verify_hmac_sha256_hex(GITEA_SIGNATURE, secret, req)
    }

    fn delivery_id(&self, req: &InboundRequest) -> std::result::Result<String, SignatureError> {
        let id = req.require(GITEA_DELIVERY)?.trim();
        if id.is_empty() || id.len() > 200 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SignatureError::Malformed {
                header: GITEA_DELIVERY,
                reason: "1-200 visible characters",
            });
        }
        Ok(id.to_owned())
    }

    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>> {
        let event = req.get(GITEA_EVENT).unwrap_or("unknown").to_owned();
        let body: Value =
            serde_json::from_slice(&req.body).map_err(|e| Error::invalid("body", e.to_string()))?;
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
            changed_at: issue["updated_at"]
                .as_str()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
            raw: body,
        }])
    }

    fn default_mappings(&self) -> Mappings {
        let mut m = Mappings::default();
        for (ours, theirs) in FIELDS {
            m.fields.insert(ours.into(), theirs.into());
        }
        m.states.insert("open".into(), "unstarted".into());
        m.states.insert("closed".into(), "completed".into());
        // The due date is planned in pm; labels are merged from both sides.
        m.policies.fields.insert("due_date".into(), FieldPolicy::Authoritative(Side::Local));
        m.policies.fields.insert("labels".into(), FieldPolicy::Union);
        m
    }

    /// Issues (not pull requests) changed since `since`, every page.
    async fn pull(
        &self,
        ctx: &ProviderContext,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<ExternalItem>> {
        let repo = Self::repository(ctx)?;
        let client = Self::client(ctx)?;
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
            let path = format!(
                "/api/v1/repos/{repo}/issues?state=all&type=issues&limit=50&page={page}{since}"
            );
            let res = client.json(Method::GET, &path, ctx.access_token.as_ref(), None).await?;
            let issues = res.as_array().cloned().unwrap_or_default();
            items.extend(issues.iter().filter_map(|i| Self::item(repo, i)));
            if issues.len() < 50 {
                break;
            }
        }
        Ok(items)
    }

    /// Creates an issue, or edits `owner/repo#n`, with the mapped fields present in `fields`.
    /// Gitea ignores `state` on create, so a new issue that should be closed is closed with a
    /// second call.
    async fn push(
        &self,
        ctx: &ProviderContext,
        external_id: Option<&str>,
        fields: &Snapshot,
    ) -> Result<ExternalItem> {
        let repo = Self::repository(ctx)?;
        let client = Self::client(ctx)?;
        let mut body = Map::new();
        for (ours, theirs) in FIELDS {
            if let Some(v) = fields.get(ours) {
                body.insert(theirs.into(), v.clone());
            }
        }
        let token = ctx.access_token.as_ref();
        let res = match external_id {
            Some(id) => {
                let n = Self::number(repo, id)?;
                let path = format!("/api/v1/repos/{repo}/issues/{n}");
                client.json(Method::PATCH, &path, token, Some(&Value::Object(body))).await?
            }
            None => {
                let state = body.remove("state");
                let path = format!("/api/v1/repos/{repo}/issues");
                let created =
                    client.json(Method::POST, &path, token, Some(&Value::Object(body))).await?;
                match (state, created["number"].as_i64()) {
                    (Some(s), Some(n)) if s == "closed" => {
                        let path = format!("/api/v1/repos/{repo}/issues/{n}");
                        client.json(Method::PATCH, &path, token, Some(&json!({"state": s}))).await?
                    }
                    _ => created,
                }
            }
        };
        Self::item(repo, &res).ok_or_else(|| Error::Provider {
            provider: "gitea".into(),
            message: "the issue response has no number".into(),
            retry_after: None,
        })
    }
}
