//! The Jira Cloud REST v3 client behind [`providers::Jira`](crate::providers::Jira): fetch,
//! search (pull), create, update, and status changes through the transitions API (Jira has no
//! writable status field), with descriptions converted between markdown and ADF ([`crate::adf`]).
//!
//! Authentication: an OAuth 2 (3LO) access token as a bearer, or — when the integration config
//! has `email` — an API token with HTTP Basic (`email:token`), the way Jira Cloud takes them.
//! Configuration: `project_key` (required to create and pull), `issue_type` (default `Task`).

use reqwest::Method;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::http::{ApiClient, Auth};
use crate::provider::{ExternalItem, ProviderContext};
use crate::sync::Snapshot;
use crate::{Error, Result};

const FIELDS: &str = "summary,description,status,duedate,labels,updated";

fn fail(message: impl Into<String>) -> Error {
    Error::Provider { provider: "jira".into(), message: message.into(), retry_after: None }
}

/// How requests authenticate for this integration.
fn auth(ctx: &ProviderContext) -> Auth<'_> {
    match (ctx.config["email"].as_str(), ctx.access_token.as_ref()) {
        (Some(user), Some(token)) => Auth::Basic { user, token },
        (None, Some(token)) => Auth::Bearer(token),
        (_, None) => Auth::None,
    }
}

/// The configured project key (`config.project_key`, e.g. `PROJ`).
fn project_key(ctx: &ProviderContext) -> Result<&str> {
    let k = ctx.config["project_key"].as_str().unwrap_or_default();
    let ok = (1..=20).contains(&k.len())
        && k.as_bytes()[0].is_ascii_uppercase()
        && k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(Error::invalid("config.project_key", "must be a Jira project key like PROJ"));
    }
    Ok(k)
}

/// Checks an issue key (`PROJ-12`) before it goes into a URL path.
fn issue_key(key: &str) -> Result<&str> {
    let ok = key.split_once('-').is_some_and(|(p, n)| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
    });
    if !ok {
        return Err(Error::invalid("external_id", "not a Jira issue key like PROJ-12"));
    }
    Ok(key)
}

/// Jira writes `2024-01-02T03:04:05.678+0000` (no colon in the offset).
pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory][offset_minute]"
        );
        OffsetDateTime::parse(s, &fmt).ok()
    })
}

/// An issue's mapped fields (pm names). Only fields present in the payload are listed, so a
/// webhook that leaves one out does not read as "cleared". The description may be ADF (REST v3)
/// or a plain string (webhooks of older formats).
pub fn issue_fields(issue: &Value) -> Snapshot {
    let f = &issue["fields"];
    let mut out = Snapshot::new();
    let Some(obj) = f.as_object() else { return out };
    if obj.contains_key("summary") {
        out.insert("title".into(), f["summary"].clone());
    }
    if let Some(d) = obj.get("description") {
        let md = match d {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            adf => crate::adf::to_markdown(adf),
        };
        out.insert("description".into(), Value::String(md));
    }
    if obj.contains_key("status") {
        out.insert("state".into(), f["status"]["name"].clone());
    }
    if obj.contains_key("duedate") {
        out.insert("due".into(), f["duedate"].clone());
    }
    if obj.contains_key("labels") {
        out.insert("labels".into(), f["labels"].clone());
    }
    out
}

fn item(ctx: &ProviderContext, issue: &Value) -> Result<ExternalItem> {
    let key = issue["key"].as_str().ok_or_else(|| fail("issue response has no key"))?;
    let base = ctx.base_url.trim_end_matches('/');
    Ok(ExternalItem {
        external_id: key.to_owned(),
        url: Some(format!("{base}/browse/{key}")),
        fields: issue_fields(issue),
        updated_at: issue["fields"]["updated"].as_str().and_then(parse_time),
    })
}

fn client(ctx: &ProviderContext) -> Result<ApiClient> {
    ApiClient::for_context("jira", ctx)
}

/// One issue as Jira has it now.
pub async fn fetch(ctx: &ProviderContext, key: &str) -> Result<ExternalItem> {
    let key = issue_key(key)?;
    let res = client(ctx)?
        .send(Method::GET, &format!("/rest/api/3/issue/{key}?fields={FIELDS}"), auth(ctx), None)
        .await?;
    item(ctx, &res)
}

/// Issues of the configured project updated since `since` (all when `None`), every page of
/// the enhanced JQL search (`nextPageToken`).
pub async fn pull(
    ctx: &ProviderContext,
    since: Option<OffsetDateTime>,
) -> Result<Vec<ExternalItem>> {
    let project = project_key(ctx)?;
    let mut jql = format!("project = \"{project}\"");
    if let Some(t) = since {
        let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
        jql.push_str(&format!(" AND updated >= \"{}\"", t.format(&fmt).unwrap_or_default()));
    }
    jql.push_str(" ORDER BY updated ASC");
    let q: String = url::form_urlencoded::byte_serialize(jql.as_bytes()).collect();
    let client = client(ctx)?;
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/rest/api/3/search/jql?jql={q}&fields={FIELDS}&maxResults=100");
        if let Some(t) = &token {
            let t: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
            path.push_str(&format!("&nextPageToken={t}"));
        }
        let res = client.send(Method::GET, &path, auth(ctx), None).await?;
        for issue in res["issues"].as_array().map(Vec::as_slice).unwrap_or_default() {
            items.push(item(ctx, issue)?);
        }
        match res["nextPageToken"].as_str() {
            Some(t) if res["isLast"] != Value::Bool(true) => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok(items)
}

/// Jira `fields` for pm fields (state excluded: it moves through transitions).
fn jira_fields(fields: &Snapshot) -> Map<String, Value> {
    let mut out = Map::new();
    for (ours, v) in fields {
        match ours.as_str() {
            "title" => {
                out.insert("summary".into(), v.clone());
            }
            "description" => {
                let md = v.as_str().unwrap_or_default();
                out.insert(
                    "description".into(),
                    if md.is_empty() { Value::Null } else { crate::adf::from_markdown(md) },
                );
            }
            "due" => {
                out.insert("duedate".into(), v.clone());
            }
            "labels" => {
                // Jira labels cannot contain spaces.
                let labels: Vec<Value> = v
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|l| l.as_str().map(|s| Value::String(s.replace(' ', "_"))))
                    .collect();
                out.insert("labels".into(), Value::Array(labels));
            }
            _ => {}
        }
    }
    out
}

/// Moves an issue to the status named `target` through one of its available transitions.
pub async fn transition(ctx: &ProviderContext, key: &str, target: &str) -> Result<()> {
    let key = issue_key(key)?;
    let client = client(ctx)?;
    let path = format!("/rest/api/3/issue/{key}/transitions");
    let res = client.send(Method::GET, &path, auth(ctx), None).await?;
    let transitions = res["transitions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let eq = |v: &Value| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(target));
    let t = transitions
        .iter()
        .find(|t| eq(&t["to"]["name"]))
        .or_else(|| transitions.iter().find(|t| eq(&t["name"])))
        .ok_or_else(|| fail(format!("{key} has no transition to status {target:?}")))?;
    let id = t["id"].as_str().ok_or_else(|| fail("transition without an id"))?;
    client.send(Method::POST, &path, auth(ctx), Some(&json!({"transition": {"id": id}}))).await?;
    Ok(())
}

/// Creates (`key` = `None`) or updates an issue with `fields`, transitions it when `state`
/// changes, and returns it as Jira then has it.
pub async fn push(
    ctx: &ProviderContext,
    key: Option<&str>,
    fields: &Snapshot,
) -> Result<ExternalItem> {
    let client = client(ctx)?;
    let mut body = jira_fields(fields);
    let key = match key {
        None => {
            let project = project_key(ctx)?;
            let issue_type = ctx.config["issue_type"].as_str().unwrap_or("Task");
            body.insert("project".into(), json!({"key": project}));
            body.insert("issuetype".into(), json!({"name": issue_type}));
            let res = client
                .send(Method::POST, "/rest/api/3/issue", auth(ctx), Some(&json!({"fields": body})))
                .await?;
            res["key"].as_str().ok_or_else(|| fail("create response has no key"))?.to_owned()
        }
        Some(k) => {
            let k = issue_key(k)?;
            if !body.is_empty() {
                client
                    .send(
                        Method::PUT,
                        &format!("/rest/api/3/issue/{k}"),
                        auth(ctx),
                        Some(&json!({"fields": body})),
                    )
                    .await?;
            }
            k.to_owned()
        }
    };
    if let Some(target) = fields.get("state").and_then(Value::as_str) {
        let current = fetch(ctx, &key).await?;
        if current.fields.get("state").and_then(Value::as_str) != Some(target) {
            transition(ctx, &key, target).await?;
        }
    }
    fetch(ctx, &key).await
}

/// Adds a comment (markdown, sent as ADF); returns its id.
pub async fn comment(ctx: &ProviderContext, key: &str, body: &str) -> Result<String> {
    let key = issue_key(key)?;
    let res = client(ctx)?
        .send(
            Method::POST,
            &format!("/rest/api/3/issue/{key}/comment"),
            auth(ctx),
            Some(&json!({"body": crate::adf::from_markdown(body)})),
        )
        .await?;
    res["id"].as_str().map(str::to_owned).ok_or_else(|| fail("comment response has no id"))
}

/// A comment id, checked before it goes into a path (Jira's are decimal).
fn comment_id(id: &str) -> Result<&str> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid("external_comment_id", "not a Jira comment id"));
    }
    Ok(id)
}

/// Replaces the body (markdown, sent as ADF) of comment `id` of issue `key`.
pub async fn edit_comment(ctx: &ProviderContext, key: &str, id: &str, body: &str) -> Result<()> {
    let (key, id) = (issue_key(key)?, comment_id(id)?);
    client(ctx)?
        .send(
            Method::PUT,
            &format!("/rest/api/3/issue/{key}/comment/{id}"),
            auth(ctx),
            Some(&json!({"body": crate::adf::from_markdown(body)})),
        )
        .await?;
    Ok(())
}

/// Deletes comment `id` of issue `key`; one already gone counts as deleted.
pub async fn delete_comment(ctx: &ProviderContext, key: &str, id: &str) -> Result<()> {
    let (key, id) = (issue_key(key)?, comment_id(id)?);
    match client(ctx)?
        .send(Method::DELETE, &format!("/rest/api/3/issue/{key}/comment/{id}"), auth(ctx), None)
        .await
    {
        Ok(_) | Err(Error::Rejected { status: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_before_they_reach_a_path() {
        assert!(issue_key("PROJ-12").is_ok());
        for bad in ["PROJ", "PROJ-", "-1", "PROJ-1/../x", "PR J-1"] {
            assert!(issue_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_fields_list_only_what_the_payload_has() {
        let f = issue_fields(
            &json!({"key": "P-1", "fields": {"summary": "S", "status": {"name": "Done"}}}),
        );
        assert_eq!(f.len(), 2);
        assert_eq!(f["state"], "Done");
        let f = issue_fields(&json!({"fields": {"description": {"type": "doc", "version": 1,
            "content": [{"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}]}}}));
        assert_eq!(f["description"], "hi");
    }
}
