//! Slack beyond webhook verification: the Web API client (`chat.postMessage`, `users.info`),
//! the parsing of slash commands (`/pm create <title>`, `/pm list`) and interactive
//! `block_actions` payloads, and the Block Kit messages pm sends (task cards with the
//! "Assign to me" button and the state menu, task lists, notifications).
//!
//! Everything here is transport only: which task to create or update, and as whom, is decided
//! by the host (pm-server), which runs the pm-core services. Slack answers HTTP 200 with
//! `{"ok": false, "error": "…"}` for most failures; [`SlackClient`] turns those into
//! [`Error::Provider`] naming Slack's error code.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::crypto::Secret;
use crate::http::ApiClient;
use crate::{Error, Result};

/// Slack's Web API base URL.
pub const SLACK_API: &str = "https://slack.com/api";

/// `action_id` of the "Assign to me" button (its `value` is the task id).
pub const ACTION_ASSIGN_ME: &str = "pm.assign_me";
/// `action_id` of the state menu (each option's `value` is `<task id>:<state id>`).
pub const ACTION_SET_STATE: &str = "pm.set_state";

/// Longest title `/pm create` accepts (pm-core's own limit is checked again when creating).
const MAX_TITLE: usize = 200;

/// A thin client of Slack's Web API at a base URL (tests point it at a mock server).
#[derive(Debug, Clone)]
pub struct SlackClient {
    api: ApiClient,
}

/// A message as `chat.postMessage` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Channel id (`C…`) or name.
    pub channel: String,
    /// Plain-text fallback (notifications, screen readers).
    pub text: String,
    /// Block Kit blocks.
    pub blocks: Vec<Value>,
}

impl SlackClient {
    /// A client of the Web API at `base_url` (`https://slack.com/api` in production).
    pub fn new(base_url: &str) -> Result<Self> {
        Ok(Self { api: ApiClient::new("slack", base_url)? })
    }

    /// Calls `method` with a JSON body and checks Slack's `ok` flag.
    async fn call(&self, method: &str, token: &Secret, body: Option<&Value>) -> Result<Value> {
        let http_method = if body.is_some() { Method::POST } else { Method::GET };
        let res = self.api.json(http_method, &format!("/{method}"), Some(token), body).await?;
        if res["ok"].as_bool() != Some(true) {
            let error = res["error"].as_str().unwrap_or("no ok flag in the response");
            return Err(Error::Provider {
                provider: "slack".into(),
                message: format!("{method}: {error}"),
                retry_after: None,
            });
        }
        Ok(res)
    }

    /// Posts a message (`chat.postMessage`); returns Slack's `ts` of it.
    pub async fn post_message(&self, token: &Secret, m: &Message) -> Result<String> {
        let mut body = json!({ "channel": m.channel, "text": m.text });
        if !m.blocks.is_empty() {
            body["blocks"] = Value::Array(m.blocks.clone());
        }
        let res = self.call("chat.postMessage", token, Some(&body)).await?;
        Ok(res["ts"].as_str().unwrap_or_default().to_owned())
    }

    /// The e-mail address of a Slack user (`users.info`, needs `users:read.email`), if Slack
    /// shows one.
    pub async fn user_email(&self, token: &Secret, user_id: &str) -> Result<Option<String>> {
        check_slack_id("user_id", user_id)?;
        let res = self.call(&format!("users.info?user={user_id}"), token, None).await?;
        Ok(res["user"]["profile"]["email"].as_str().map(str::to_owned))
    }
}

/// Slack ids (`U…`, `C…`, `T…`) are short upper-case alphanumerics; anything else is refused
/// before it reaches a URL.
fn check_slack_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::invalid(field, "not a Slack id"));
    }
    Ok(())
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A slash command invocation as Slack POSTs it (form-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlashCommand {
    /// The command, e.g. `/pm`.
    pub command: String,
    /// Everything after the command.
    pub text: String,
    /// Workspace.
    pub team_id: String,
    /// Who typed it.
    pub user_id: String,
    /// Where.
    pub channel_id: String,
    /// Where follow-ups go (valid for 30 minutes, 5 posts).
    pub response_url: String,
}

impl SlashCommand {
    /// Parses the form body; errors name the missing field.
    pub fn parse(body: &[u8]) -> Result<Self> {
        let mut f = form(body);
        let mut take = |k: &'static str| {
            f.remove(k).filter(|v| !v.is_empty()).ok_or_else(|| Error::invalid(k, "missing"))
        };
        let command = take("command")?;
        let team_id = take("team_id")?;
        let user_id = take("user_id")?;
        let channel_id = take("channel_id")?;
        let response_url = take("response_url")?;
        let text = f.remove("text").unwrap_or_default();
        check_slack_id("user_id", &user_id)?;
        Ok(Self { command, text, team_id, user_id, channel_id, response_url })
    }
}

/// What `/pm …` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmCommand {
    /// `/pm create <title>`.
    Create {
        /// The task title.
        title: String,
    },
    /// `/pm list`: the project's open tasks.
    List,
    /// `/pm`, `/pm help` or anything unknown: the usage.
    Help,
}

impl PmCommand {
    /// Parses the command's text; a `create` without a title (or with one too long) is
    /// `Invalid` naming `text`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let (verb, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        match verb.to_ascii_lowercase().as_str() {
            "create" | "new" | "add" => {
                let title = rest.trim();
                if title.is_empty() {
                    return Err(Error::invalid("text", "usage: /pm create <title>"));
                }
                if title.chars().count() > MAX_TITLE {
                    return Err(Error::invalid(
                        "text",
                        format!("a title has at most {MAX_TITLE} characters"),
                    ));
                }
                Ok(PmCommand::Create { title: title.to_owned() })
            }
            "list" | "ls" => Ok(PmCommand::List),
            _ => Ok(PmCommand::Help),
        }
    }
}

/// One `block_actions` interaction (a button click or menu choice on a pm message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAction {
    /// Who clicked.
    pub user_id: String,
    /// Workspace.
    pub team_id: String,
    /// Where to send the updated message.
    pub response_url: Option<String>,
    /// Which control ([`ACTION_ASSIGN_ME`], [`ACTION_SET_STATE`], or another app's).
    pub action_id: String,
    /// The button's value, or the chosen option's value of a menu.
    pub value: String,
}

impl BlockAction {
    /// Parses an interaction body (`payload=<json>`); `Ok(None)` for interactions that are not
    /// `block_actions` (shortcuts, view submissions). Errors name the field.
    pub fn parse(body: &[u8]) -> Result<Option<Self>> {
        let payload =
            form(body).remove("payload").ok_or_else(|| Error::invalid("payload", "missing"))?;
        let p: Value =
            serde_json::from_str(&payload).map_err(|e| Error::invalid("payload", e.to_string()))?;
        if p["type"] != "block_actions" {
            return Ok(None);
        }
        let str_at = |v: &Value, field: &str| -> Result<String> {
            v.as_str().map(str::to_owned).ok_or_else(|| Error::invalid(field, "missing"))
        };
        let user_id = str_at(&p["user"]["id"], "payload.user.id")?;
        check_slack_id("payload.user.id", &user_id)?;
        let action = &p["actions"][0];
        let action_id = str_at(&action["action_id"], "payload.actions[0].action_id")?;
        let value = action["value"]
            .as_str()
            .or(action["selected_option"]["value"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::invalid("payload.actions[0].value", "missing"))?;
        Ok(Some(Self {
            user_id,
            team_id: p["team"]["id"].as_str().unwrap_or_default().to_owned(),
            response_url: p["response_url"].as_str().map(str::to_owned),
            action_id,
            value,
        }))
    }
}

/// What a task card shows.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCard {
    /// Task id (button values).
    pub id: String,
    /// `PM-12`.
    pub reference: String,
    /// Title.
    pub title: String,
    /// Current state's name.
    pub state: String,
    /// Assignees' display names.
    pub assignees: Vec<String>,
    /// Due date, `YYYY-MM-DD`.
    pub due: Option<String>,
}

/// Escapes `&`, `<` and `>` as Slack's mrkdwn requires (user text must not become a mention
/// or a link).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A section describing a task.
fn task_section(t: &TaskCard) -> Value {
    let mut fields =
        vec![json!({"type": "mrkdwn", "text": format!("*State*\n{}", escape(&t.state))})];
    let who = if t.assignees.is_empty() {
        "unassigned".to_owned()
    } else {
        t.assignees.iter().map(|a| escape(a)).collect::<Vec<_>>().join(", ")
    };
    fields.push(json!({"type": "mrkdwn", "text": format!("*Assignees*\n{who}")}));
    if let Some(d) = &t.due {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Due*\n{d}")}));
    }
    json!({
        "type": "section",
        "block_id": format!("task:{}", t.id),
        "text": {"type": "mrkdwn", "text": format!("*{}* {}", escape(&t.reference), escape(&t.title))},
        "fields": fields,
    })
}

/// The controls under a card: "Assign to me" and a state menu of `states` (id, name).
fn task_actions(t: &TaskCard, states: &[(String, String)]) -> Value {
    let mut elements = vec![json!({
        "type": "button",
        "action_id": ACTION_ASSIGN_ME,
        "text": {"type": "plain_text", "text": "Assign to me"},
        "value": t.id,
    })];
    if !states.is_empty() {
        let options: Vec<Value> = states
            .iter()
            .take(100)
            .map(|(id, name)| {
                json!({
                    "text": {"type": "plain_text", "text": name},
                    "value": format!("{}:{id}", t.id),
                })
            })
            .collect();
        elements.push(json!({
            "type": "static_select",
            "action_id": ACTION_SET_STATE,
            "placeholder": {"type": "plain_text", "text": "Change state"},
            "options": options,
        }));
    }
    json!({"type": "actions", "block_id": format!("actions:{}", t.id), "elements": elements})
}

/// A task card with its controls (the blocks of a message).
pub fn task_card(t: &TaskCard, states: &[(String, String)]) -> Vec<Value> {
    vec![task_section(t), task_actions(t, states)]
}

/// A list of tasks (`/pm list`): a header, one section per task (at most 20, Slack caps a
/// message at 50 blocks), and a note when there are more.
pub fn task_list(project: &str, tasks: &[TaskCard], more: bool) -> Vec<Value> {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": format!("Open tasks in {project}")},
    })];
    if tasks.is_empty() {
        blocks
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": "No open tasks."}}));
    }
    for t in tasks.iter().take(20) {
        blocks.push(task_section(t));
    }
    if more || tasks.len() > 20 {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": "More tasks are open; showing the first 20."}],
        }));
    }
    blocks
}

/// A notification: a one-line headline over the task's card.
pub fn notification(headline: &str, t: &TaskCard, states: &[(String, String)]) -> Vec<Value> {
    let mut blocks = vec![
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(headline)}]}),
    ];
    blocks.extend(task_card(t, states));
    blocks
}

/// An ephemeral reply to a slash command (only the caller sees it).
pub fn ephemeral(text: &str, blocks: Vec<Value>) -> Value {
    let mut v = json!({"response_type": "ephemeral", "text": text});
    if !blocks.is_empty() {
        v["blocks"] = Value::Array(blocks);
    }
    v
}

/// A follow-up visible to the channel (posted to a `response_url`).
pub fn in_channel(text: &str, blocks: Vec<Value>) -> Value {
    json!({"response_type": "in_channel", "text": text, "blocks": blocks})
}

/// A follow-up replacing the message a button was clicked on.
pub fn replace_original(text: &str, blocks: Vec<Value>) -> Value {
    json!({"replace_original": true, "text": text, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm_commands_parse() {
        assert_eq!(
            PmCommand::parse("create  Fix the login page ").unwrap(),
            PmCommand::Create { title: "Fix the login page".into() }
        );
        assert_eq!(PmCommand::parse("LIST").unwrap(), PmCommand::List);
        assert_eq!(PmCommand::parse("").unwrap(), PmCommand::Help);
        let e = PmCommand::parse("create   ").unwrap_err();
        assert!(matches!(e, Error::Invalid { field, .. } if field == "text"));
        assert!(PmCommand::parse(&format!("create {}", "x".repeat(201))).is_err());
    }

    #[test]
    fn slash_commands_parse_and_name_missing_fields() {
        let body = "command=%2Fpm&text=list&team_id=T1&user_id=U1&channel_id=C1&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1";
        let c = SlashCommand::parse(body.as_bytes()).unwrap();
        assert_eq!(
            (c.command.as_str(), c.text.as_str(), c.user_id.as_str()),
            ("/pm", "list", "U1")
        );
        let e =
            SlashCommand::parse(b"command=%2Fpm&team_id=T1&user_id=U1&channel_id=C1").unwrap_err();
        assert!(matches!(e, Error::Invalid { field, .. } if field == "response_url"));
        let e = SlashCommand::parse(
            b"command=%2Fpm&team_id=T1&user_id=U%2F..&channel_id=C1&response_url=x",
        )
        .unwrap_err();
        assert!(matches!(e, Error::Invalid { field, .. } if field == "user_id"));
    }

    #[test]
    fn block_actions_parse_buttons_and_menus() {
        let payload = json!({"type": "block_actions", "user": {"id": "U1"}, "team": {"id": "T1"},
            "response_url": "https://hooks.slack.com/actions/1",
            "actions": [{"action_id": ACTION_SET_STATE, "selected_option": {"value": "t:s"}}]});
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let a = BlockAction::parse(body.as_bytes()).unwrap().unwrap();
        assert_eq!((a.action_id.as_str(), a.value.as_str()), (ACTION_SET_STATE, "t:s"));
        let other = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", r#"{"type":"view_submission"}"#)
            .finish();
        assert!(BlockAction::parse(other.as_bytes()).unwrap().is_none());
        assert!(BlockAction::parse(b"payload=nope").is_err());
    }

    #[test]
    fn cards_escape_user_text() {
        let t = TaskCard {
            id: "t1".into(),
            reference: "PM-1".into(),
            title: "<!channel> & co".into(),
            state: "Todo".into(),
            assignees: vec![],
            due: Some("2025-01-02".into()),
        };
        let blocks = task_card(&t, &[("s1".into(), "Done".into())]);
        let s = Value::Array(blocks.clone()).to_string();
        assert!(s.contains("&lt;!channel&gt; &amp; co") && !s.contains("<!channel>"));
        assert_eq!(blocks[1]["elements"][0]["action_id"], ACTION_ASSIGN_ME);
        assert_eq!(blocks[1]["elements"][1]["options"][0]["value"], "t1:s1");
    }
}
