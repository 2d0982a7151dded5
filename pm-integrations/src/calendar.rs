//! Task due dates as calendar events: the clients of Google Calendar v3 ([`google`]) and
//! Microsoft Graph v1.0 calendars ([`outlook`]) behind one [`CalendarClient`], and the push
//! channel ([`Watch`]) each keeps open so moves made in the calendar come back.
//!
//! pm's due dates are dates, so events are all-day: `start` = the due date, `end` = the day
//! after (both providers treat the end as exclusive). An event moved to a timed slot still
//! maps back to its date. Google announces changes with bodiless pings on a watch channel and
//! is then asked for the changes since the last `syncToken`; Graph notifies with the event's id
//! and the event is fetched. Channels and subscriptions expire: [`CalendarClient::renew`] gives
//! a fresh [`Watch`] (Graph extends the subscription; Google has no renewal, so a new channel is
//! opened and the old one stopped).

pub mod google;
pub mod outlook;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::crypto::Secret;
use crate::{Error, Result};

/// An event as pm cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarEvent {
    /// The provider's id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its (start) date; `None` when the provider sent none we could read.
    pub date: Option<Date>,
    /// Deleted / cancelled in the calendar.
    pub cancelled: bool,
}

/// What pm writes into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    /// Title (the task's reference and title).
    pub title: String,
    /// The due date (an all-day event).
    pub date: Date,
    /// The task id, stored on the event where the provider allows private data.
    pub task_id: String,
}

/// An open push channel (Google) or subscription (Graph), persisted by the host so renewal
/// survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Google channel id / Graph subscription id.
    pub id: String,
    /// Google's `resourceId` (needed to stop a channel); `None` for Graph.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// When the provider stops sending.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Google's incremental-sync position.
    #[serde(default)]
    pub sync_token: Option<String>,
}

/// The changes a Google ping stands for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Events changed (or cancelled) since the last sync token.
    pub events: Vec<CalendarEvent>,
    /// The token for next time.
    pub next_sync_token: Option<String>,
}

/// Google Calendar or Outlook, chosen by provider key.
#[derive(Debug, Clone)]
pub enum CalendarClient {
    /// Google Calendar v3.
    Google(google::GoogleCalendarClient),
    /// Microsoft Graph v1.0.
    Outlook(outlook::GraphCalendarClient),
}

impl CalendarClient {
    /// The client for `provider` (`google_calendar` or `outlook`) at `base_url`, on the
    /// integration's `calendar_id` (config; `primary` / the default calendar when absent).
    pub fn for_provider(
        provider: &str,
        base_url: &str,
        config: &serde_json::Value,
    ) -> Result<Self> {
        let calendar = match config.get("calendar_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(parse_calendar_id(v.as_str().unwrap_or_default())?),
        };
        match provider {
            "google_calendar" => Ok(Self::Google(google::GoogleCalendarClient::new(
                base_url,
                calendar.as_deref().unwrap_or("primary"),
            )?)),
            "outlook" => {
                Ok(Self::Outlook(outlook::GraphCalendarClient::new(base_url, calendar.as_deref())?))
            }
            other => Err(Error::invalid("provider", format!("{other} is not a calendar"))),
        }
    }

    /// Creates the event of a task.
    pub async fn create_event(&self, token: &Secret, e: &EventDraft) -> Result<CalendarEvent> {
        match self {
            Self::Google(c) => c.create_event(token, e).await,
            Self::Outlook(c) => c.create_event(token, e).await,
        }
    }

    /// Moves/renames an event.
    pub async fn update_event(
        &self,
        token: &Secret,
        id: &str,
        e: &EventDraft,
    ) -> Result<CalendarEvent> {
        check_event_id(id)?;
        match self {
            Self::Google(c) => c.update_event(token, id, e).await,
            Self::Outlook(c) => c.update_event(token, id, e).await,
        }
    }

    /// Deletes an event; one already gone is fine.
    pub async fn delete_event(&self, token: &Secret, id: &str) -> Result<()> {
        check_event_id(id)?;
        let r = match self {
            Self::Google(c) => c.delete_event(token, id).await,
            Self::Outlook(c) => c.delete_event(token, id).await,
        };
        match r {
            Err(e) if is_gone(&e) => Ok(()),
            r => r,
        }
    }

    /// Opens a push channel/subscription delivering to `address`, authenticated by `secret`
    /// (Google's channel token, Graph's `clientState`), for about `ttl`.
    pub async fn watch(
        &self,
        token: &Secret,
        address: &str,
        secret: &str,
        ttl: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Watch> {
        match self {
            Self::Google(c) => c.watch(token, address, secret, ttl).await,
            Self::Outlook(c) => c.subscribe(token, address, secret, now + ttl).await,
        }
    }

    /// Renews `w` before it expires: Graph extends the subscription (a `404` means it is gone
    /// and a new one is made); Google opens a new channel and stops the old one.
    pub async fn renew(
        &self,
        token: &Secret,
        w: &Watch,
        address: &str,
        secret: &str,
        ttl: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Watch> {
        match self {
            Self::Google(c) => {
                let mut fresh = c.watch(token, address, secret, ttl).await?;
                fresh.sync_token = w.sync_token.clone();
                if let Err(e) = c.stop(token, w).await {
                    // The old channel expires by itself; a failed stop only costs duplicates,
                    // which the delivery dedupe absorbs.
                    tracing::warn!(error = %e, channel = %w.id, "cannot stop the old Google channel");
                }
                Ok(fresh)
            }
            Self::Outlook(c) => match c.renew(token, w, now + ttl).await {
                Err(e) if is_gone(&e) => c.subscribe(token, address, secret, now + ttl).await,
                r => r,
            },
        }
    }

    /// Stops a channel / deletes a subscription (disconnect).
    pub async fn stop(&self, token: &Secret, w: &Watch) -> Result<()> {
        let r = match self {
            Self::Google(c) => c.stop(token, w).await,
            Self::Outlook(c) => c.unsubscribe(token, w).await,
        };
        match r {
            Err(e) if is_gone(&e) => Ok(()),
            r => r,
        }
    }
}

/// Whether a provider error is a `404`/`410` (the thing is gone).
pub fn is_gone(e: &Error) -> bool {
    matches!(e, Error::Rejected { status: 404 | 410, .. })
}

/// Event ids go into URL paths as they are (Graph's ids end in `=`, which Graph wants
/// unescaped): only the URL-safe base64/base32hex alphabets both providers use are accepted.
fn check_event_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b));
    if !ok {
        return Err(Error::invalid("event_id", "not a calendar event id"));
    }
    Ok(())
}

/// A calendar id from config: Google ids look like e-mail addresses, Graph ids like base64.
fn parse_calendar_id(s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 512
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.@+".contains(&b));
    if !ok {
        return Err(Error::invalid("config.calendar_id", "not a calendar id"));
    }
    Ok(s.to_owned())
}

/// `YYYY-MM-DD` of a date.
pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The date at the start of a `YYYY-MM-DD…` string (a date, or a date-time in any zone —
/// the wall-clock date the user sees in the calendar).
pub fn parse_date_prefix(s: &str) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.get(..10)?, &fmt).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_timed_starts_keep_their_date() {
        let d = time::macros::date!(2025 - 03 - 09);
        assert_eq!(format_date(d), "2025-03-09");
        assert_eq!(parse_date_prefix("2025-03-09"), Some(d));
        assert_eq!(parse_date_prefix("2025-03-09T15:00:00.0000000"), Some(d));
        assert_eq!(parse_date_prefix("2025-03-09T23:30:00-08:00"), Some(d));
        assert_eq!(parse_date_prefix("nope"), None);
    }

    #[test]
    fn ids_are_checked_before_reaching_a_path() {
        assert!(check_event_id("AAMkAGI2TG93AAA=").is_ok());
        assert!(check_event_id("../subscriptions").is_err());
        assert!(parse_calendar_id("team@group.calendar.google.com").is_ok());
        assert!(parse_calendar_id("a/b").is_err());
    }
}
