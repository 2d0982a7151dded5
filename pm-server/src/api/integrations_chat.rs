//! The Slack side of the inbound endpoint (`POST /api/v1/hooks/slack/{integration_id}`): once
//! a delivery is verified and persisted, slash commands and `block_actions` are answered here
//! within Slack's 3 seconds — an ephemeral message for `/pm create` and `/pm list`, an empty
//! 200 for a button (its effect arrives through `response_url`). The behaviour lives in
//! [`crate::chat`]; this module only picks the kind of payload and shapes the HTTP answer, and
//! documents it ([`HookReply`]).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pm_integrations::model::Integration;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::integrations::InboundAck;
use crate::AppState;
use crate::error::ApiError;
use crate::integrations::Integrations;

/// A message answering a Slack slash command (Slack's `response_type` message shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct SlackReply {
    /// `ephemeral` (only the caller sees it) or `in_channel`.
    pub response_type: String,
    /// Text (and fallback).
    pub text: String,
    /// Block Kit blocks.
    #[schema(value_type = Option<Vec<Object>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Value>,
}

/// What the inbound endpoint answers with 200: an acknowledgement of a replayed delivery, or
/// a Slack message answering a slash command.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum HookReply {
    /// A replayed delivery (nothing done).
    Ack(InboundAck),
    /// A slash command's synchronous answer.
    Slack(SlackReply),
}

/// Answers a verified, persisted Slack delivery that needs an answer now; `None` for the
/// others (Events API callbacks get the ordinary acknowledgement).
pub async fn slack_reply(
    s: &AppState,
    ints: &Integrations,
    i: &Integration,
    body: &[u8],
) -> Result<Option<Response>, ApiError> {
    let has = |key: &str| url::form_urlencoded::parse(body).any(|(k, _)| k == key);
    if has("payload") {
        if crate::chat::block_action(ints, &s.pm, i, body).await? {
            return Ok(Some(StatusCode::OK.into_response()));
        }
        return Ok(None);
    }
    if has("command") {
        let reply = crate::chat::slash_command(ints, &s.pm, i, body).await?;
        return Ok(Some(
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], reply.to_string())
                .into_response(),
        ));
    }
    Ok(None)
}
