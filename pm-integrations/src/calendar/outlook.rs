//! Microsoft Graph v1.0 calendars: events (`POST /me/events`, `PATCH`/`GET`/`DELETE
//! /me/events/{id}`) and change-notification subscriptions on `me/events` (`POST
//! /subscriptions` with `clientState` and a lifecycle URL, `PATCH` to extend, `DELETE`).
//! Graph caps an event subscription at 4230 minutes, so the host renews well before.

use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{CalendarEvent, EventDraft, Watch, format_date, is_gone, parse_date_prefix};
use crate::crypto::Secret;
use crate::http::ApiClient;
use crate::{Error, Result};

/// Microsoft Graph's API base URL.
pub const GRAPH_API: &str = "https://graph.microsoft.com/v1.0";

/// Longest subscription Graph grants on events (minutes).
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 4230;

/// A client of the signed-in user's calendar (or one of their calendars).
#[derive(Debug, Clone)]
pub struct GraphCalendarClient {
    api: ApiClient,
    /// `/me/events` or `/me/calendars/{id}/events` (where new events go).
    events_path: String,
}

fn failed(message: impl Into<String>) -> Error {
    Error::Provider { provider: "outlook".into(), message: message.into(), retry_after: None }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl GraphCalendarClient {
    /// A client at `base_url`, on calendar `calendar_id` (the default calendar when `None`).
    pub fn new(base_url: &str, calendar_id: Option<&str>) -> Result<Self> {
        Ok(Self {
            api: ApiClient::new("outlook", base_url)?,
            events_path: match calendar_id {
                Some(c) => format!("/me/calendars/{}/events", encode(c)),
                None => "/me/events".into(),
            },
        })
    }

    fn body(e: &EventDraft) -> Value {
        let next = e.date.next_day().unwrap_or(e.date);
        json!({
            "subject": e.title,
            "isAllDay": true,
            "start": {"dateTime": format!("{}T00:00:00", format_date(e.date)), "timeZone": "UTC"},
            "end": {"dateTime": format!("{}T00:00:00", format_date(next)), "timeZone": "UTC"},
            "showAs": "free",
        })
    }

    /// An event resource as pm sees it.
    pub fn event(v: &Value) -> Option<CalendarEvent> {
        Some(CalendarEvent {
            id: v["id"].as_str()?.to_owned(),
            title: v["subject"].as_str().unwrap_or_default().to_owned(),
            date: v["start"]["dateTime"].as_str().and_then(parse_date_prefix),
            cancelled: v["isCancelled"].as_bool().unwrap_or(false),
        })
    }

    fn parsed(v: &Value) -> Result<CalendarEvent> {
        Self::event(v).ok_or_else(|| failed("event response has no id"))
    }

    /// Creates an all-day event. Its `transactionId` is the task id: Graph drops a create that
    /// repeats an earlier one's (a retry after a crash between the call and recording it).
    pub async fn create_event(&self, token: &Secret, e: &EventDraft) -> Result<CalendarEvent> {
        let mut body = Self::body(e);
        body["transactionId"] = json!(e.task_id);
        Self::parsed(
            &self.api.json(Method::POST, &self.events_path, Some(token), Some(&body)).await?,
        )
    }

    /// Moves/renames an event.
    pub async fn update_event(
        &self,
        token: &Secret,
        id: &str,
        e: &EventDraft,
    ) -> Result<CalendarEvent> {
        super::check_event_id(id)?;
        let path = format!("/me/events/{id}");
        Self::parsed(&self.api.json(Method::PATCH, &path, Some(token), Some(&Self::body(e))).await?)
    }

    /// Deletes an event.
    pub async fn delete_event(&self, token: &Secret, id: &str) -> Result<()> {
        super::check_event_id(id)?;
        let path = format!("/me/events/{id}");
        self.api.json(Method::DELETE, &path, Some(token), None).await.map(drop)
    }

    /// The event as Graph has it now; `None` when it was deleted (`404`).
    pub async fn get_event(&self, token: &Secret, id: &str) -> Result<Option<CalendarEvent>> {
        super::check_event_id(id)?;
        let path = format!("/me/events/{id}?$select=id,subject,start,end,isAllDay,isCancelled");
        match self.api.json(Method::GET, &path, Some(token), None).await {
            Ok(v) => Self::parsed(&v).map(Some),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn expiry(at: OffsetDateTime) -> String {
        at.replace_nanosecond(0).unwrap_or(at).format(&Rfc3339).unwrap_or_default()
    }

    fn watch_of(res: &Value) -> Result<Watch> {
        let expires_at = res["expirationDateTime"]
            .as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .ok_or_else(|| failed("subscription response has no expirationDateTime"))?;
        Ok(Watch {
            id: res["id"]
                .as_str()
                .ok_or_else(|| failed("subscription response has no id"))?
                .to_owned(),
            resource_id: None,
            expires_at,
            sync_token: None,
        })
    }

    /// Subscribes to changes of the user's events, delivered to `address` (also the lifecycle
    /// URL) with `clientState` = `secret`, until `until` (capped at Graph's maximum).
    pub async fn subscribe(
        &self,
        token: &Secret,
        address: &str,
        secret: &str,
        until: OffsetDateTime,
    ) -> Result<Watch> {
        let cap = OffsetDateTime::now_utc() + time::Duration::minutes(MAX_SUBSCRIPTION_MINUTES - 5);
        let body = json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": address,
            "lifecycleNotificationUrl": address,
            "resource": "me/events",
            "expirationDateTime": Self::expiry(until.min(cap)),
            "clientState": secret,
        });
        Self::watch_of(
            &self.api.json(Method::POST, "/subscriptions", Some(token), Some(&body)).await?,
        )
    }

    /// Extends a subscription to `until`.
    pub async fn renew(&self, token: &Secret, w: &Watch, until: OffsetDateTime) -> Result<Watch> {
        let cap = OffsetDateTime::now_utc() + time::Duration::minutes(MAX_SUBSCRIPTION_MINUTES - 5);
        let body = json!({"expirationDateTime": Self::expiry(until.min(cap))});
        let path = format!("/subscriptions/{}", encode(&w.id));
        Self::watch_of(&self.api.json(Method::PATCH, &path, Some(token), Some(&body)).await?)
    }

    /// Deletes a subscription.
    pub async fn unsubscribe(&self, token: &Secret, w: &Watch) -> Result<()> {
        let path = format!("/subscriptions/{}", encode(&w.id));
        self.api.json(Method::DELETE, &path, Some(token), None).await.map(drop)
    }
}
