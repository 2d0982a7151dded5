//! Google Calendar v3: events of one calendar (`events.insert` / `patch` / `delete`), the
//! incremental `events.list` with `syncToken` (a `410 Gone` token starts a full sync), and
//! push channels (`events.watch`, `channels.stop`) whose pings carry the channel token in
//! `X-Goog-Channel-Token`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{CalendarEvent, Changes, EventDraft, Watch, format_date, is_gone, parse_date_prefix};
use crate::crypto::Secret;
use crate::http::ApiClient;
use crate::{Error, Result};

/// Google Calendar's API base URL.
pub const GOOGLE_CALENDAR_API: &str = "https://www.googleapis.com/calendar/v3";

/// Pages read by one full sync (250 events each) before giving up.
const MAX_PAGES: usize = 40;

/// A client of one Google calendar.
#[derive(Debug, Clone)]
pub struct GoogleCalendarClient {
    api: ApiClient,
    /// `/calendars/{id}` with the id percent-encoded.
    calendar_path: String,
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn failed(message: impl Into<String>) -> Error {
    Error::Provider {
        provider: "google_calendar".into(),
        message: message.into(),
        retry_after: None,
    }
}

impl GoogleCalendarClient {
    /// A client of calendar `calendar_id` (`primary` for the user's own) at `base_url`.
    pub fn new(base_url: &str, calendar_id: &str) -> Result<Self> {
        Ok(Self {
            api: ApiClient::new("google_calendar", base_url)?,
            calendar_path: format!("/calendars/{}", encode(calendar_id)),
        })
    }

    fn body(e: &EventDraft) -> Value {
        let next = e.date.next_day().unwrap_or(e.date);
        json!({
            "summary": e.title,
            "start": {"date": format_date(e.date)},
            "end": {"date": format_date(next)},
            "extendedProperties": {"private": {"pm_task_id": e.task_id}},
        })
    }

    /// An event resource as pm sees it.
    pub fn event(v: &Value) -> Option<CalendarEvent> {
        let start = &v["start"];
        let date =
            start["date"].as_str().or(start["dateTime"].as_str()).and_then(parse_date_prefix);
        Some(CalendarEvent {
            id: v["id"].as_str()?.to_owned(),
            title: v["summary"].as_str().unwrap_or_default().to_owned(),
            date,
            cancelled: v["status"] == "cancelled",
        })
    }

    fn parsed(v: &Value) -> Result<CalendarEvent> {
        Self::event(v).ok_or_else(|| failed("event response has no id"))
    }

    /// The event id pm asks for: `pm` + the task id's hex digits (Google accepts client-chosen
    /// ids of base32hex characters, `[a-v0-9]`), so creating the same task's event twice — a
    /// retry after a crash between the call and recording it — finds the first one.
    pub fn event_id_for(task_id: &str) -> Option<String> {
        let hex: String = task_id.chars().filter(|c| *c != '-').collect();
        (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| format!("pm{hex}"))
    }

    /// `events.insert` with the id of [`Self::event_id_for`]; when Google says that id exists
    /// (`409`, an earlier attempt got through), the event is updated instead.
    pub async fn create_event(&self, token: &Secret, e: &EventDraft) -> Result<CalendarEvent> {
        let path = format!("{}/events", self.calendar_path);
        let mut body = Self::body(e);
        let id = Self::event_id_for(&e.task_id);
        if let Some(id) = &id {
            body["id"] = json!(id);
        }
        match self.api.json(Method::POST, &path, Some(token), Some(&body)).await {
            Ok(v) => Self::parsed(&v),
            Err(Error::Rejected { status: 409, .. }) if id.is_some() => {
                self.update_event(token, id.as_deref().unwrap_or_default(), e).await
            }
            Err(err) => Err(err),
        }
    }

    /// `events.patch`.
    pub async fn update_event(
        &self,
        token: &Secret,
        id: &str,
        e: &EventDraft,
    ) -> Result<CalendarEvent> {
        super::check_event_id(id)?;
        let path = format!("{}/events/{id}", self.calendar_path);
        Self::parsed(&self.api.json(Method::PATCH, &path, Some(token), Some(&Self::body(e))).await?)
    }

    /// `events.delete`.
    pub async fn delete_event(&self, token: &Secret, id: &str) -> Result<()> {
        super::check_event_id(id)?;
        let path = format!("{}/events/{id}", self.calendar_path);
        self.api.json(Method::DELETE, &path, Some(token), None).await.map(drop)
    }

    /// The events changed since `sync_token` (cancelled ones included), all pages; without a
    /// token, or when Google says the token expired (`410`), a full listing that yields the
    /// first token.
    pub async fn changes(&self, token: &Secret, sync_token: Option<&str>) -> Result<Changes> {
        match sync_token {
            Some(t) => match self.list(token, Some(t)).await {
                Err(e) if is_gone(&e) => self.list(token, None).await,
                r => r,
            },
            None => self.list(token, None).await,
        }
    }

    async fn list(&self, token: &Secret, sync_token: Option<&str>) -> Result<Changes> {
        let mut changes = Changes::default();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut path = format!("{}/events?maxResults=250", self.calendar_path);
            match sync_token {
                Some(t) => path.push_str(&format!("&syncToken={}", encode(t))),
                // A full listing includes deleted events only when asked; incremental ones
                // always do.
                None => path.push_str("&showDeleted=true&singleEvents=false"),
            }
            if let Some(p) = &page_token {
                path.push_str(&format!("&pageToken={}", encode(p)));
            }
            let res = self.api.json(Method::GET, &path, Some(token), None).await?;
            changes.events.extend(
                res["items"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(Self::event),
            );
            match res["nextPageToken"].as_str() {
                Some(p) => page_token = Some(p.to_owned()),
                None => {
                    changes.next_sync_token = res["nextSyncToken"].as_str().map(str::to_owned);
                    return Ok(changes);
                }
            }
        }
        Err(failed(format!("more than {MAX_PAGES} pages of events")))
    }

    /// `events.watch`: a new channel (random id) to `address` with channel token `secret`.
    pub async fn watch(
        &self,
        token: &Secret,
        address: &str,
        secret: &str,
        ttl: Duration,
    ) -> Result<Watch> {
        let id = uuid::Uuid::now_v7().to_string();
        let body = json!({
            "id": id,
            "type": "web_hook",
            "address": address,
            "token": secret,
            "params": {"ttl": ttl.as_secs().to_string()},
        });
        let path = format!("{}/events/watch", self.calendar_path);
        let res = self.api.json(Method::POST, &path, Some(token), Some(&body)).await?;
        // `expiration` is milliseconds since the epoch, as a string.
        let expires_at = res["expiration"]
            .as_str()
            .and_then(|s| s.parse::<i128>().ok())
            .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok())
            .ok_or_else(|| failed("watch response has no expiration"))?;
        Ok(Watch {
            id: res["id"].as_str().unwrap_or(&id).to_owned(),
            resource_id: res["resourceId"].as_str().map(str::to_owned),
            expires_at,
            sync_token: None,
        })
    }

    /// `channels.stop`.
    pub async fn stop(&self, token: &Secret, w: &Watch) -> Result<()> {
        let body = json!({"id": w.id, "resourceId": w.resource_id});
        self.api.json(Method::POST, "/channels/stop", Some(token), Some(&body)).await.map(drop)
    }
}
