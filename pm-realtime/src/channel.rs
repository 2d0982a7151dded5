//! Channels: what a session subscribes to. The wire form is `kind:uuid` (`org:…`, `project:…`,
//! `task:…`, `user:…`); [`Channel`] is its parsed, typed form, so a task id can never be routed
//! as a project id.

use std::fmt;
use std::str::FromStr;

use pm_core::event::Event;
use pm_core::id::{OrgId, ProjectId, TaskId, UserId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::Error;

/// A subscribable channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Every event of an organization (`org:{id}`); needs org read.
    Org(OrgId),
    /// Every event of a project (`project:{id}`); needs project read.
    Project(ProjectId),
    /// Every event of a task and its comments and records (`task:{id}`); needs task read.
    Task(TaskId),
    /// A user's own notifications (`user:{id}`); only that user may subscribe.
    User(UserId),
}

impl Channel {
    /// The channels a durable event is routed to: its organization, project and task.
    pub fn for_event(event: &Event) -> impl Iterator<Item = Channel> {
        [
            event.org_id.map(Channel::Org),
            event.project_id.map(Channel::Project),
            event.task_id.map(Channel::Task),
        ]
        .into_iter()
        .flatten()
    }

    /// The kind prefix (`org`, `project`, `task`, `user`).
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Org(_) => "org",
            Channel::Project(_) => "project",
            Channel::Task(_) => "task",
            Channel::User(_) => "user",
        }
    }

    /// The id part.
    pub fn id(&self) -> Uuid {
        match self {
            Channel::Org(id) => id.0,
            Channel::Project(id) => id.0,
            Channel::Task(id) => id.0,
            Channel::User(id) => id.0,
        }
    }

    /// Whether durable events from the log are routed here (`user:` channels carry only
    /// notifications).
    pub fn carries_events(&self) -> bool {
        !matches!(self, Channel::User(_))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id().hyphenated())
    }
}

impl FromStr for Channel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || {
            Error::invalid(
                "channel",
                "expected org:{uuid}, project:{uuid}, task:{uuid} or user:{uuid}",
            )
        };
        let (kind, id) = s.split_once(':').ok_or_else(invalid)?;
        let id = Uuid::parse_str(id).map_err(|_| invalid())?;
        Ok(match kind {
            "org" => Channel::Org(OrgId(id)),
            "project" => Channel::Project(ProjectId(id)),
            "task" => Channel::Task(TaskId(id)),
            "user" => Channel::User(UserId(id)),
            _ => return Err(invalid()),
        })
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(|e: Error| match e {
            Error::Invalid { message, .. } => serde::de::Error::custom(message),
            other => serde::de::Error::custom(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        for s in [format!("org:{id}"), format!("project:{id}"), format!("task:{id}")] {
            let c: Channel = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
        }
        for bad in ["", "org", "org:", "org:nope", "team:0190c1e2-0000-7000-8000-000000000000"] {
            assert!(bad.parse::<Channel>().is_err(), "{bad}");
        }
    }
}
