//! Typed identifiers: UUIDv7 newtypes, one per entity, so a `TaskId` can never be passed where a
//! `ProjectId` is expected. UUIDv7 is time-ordered, which keeps B-tree inserts local and makes
//! the id a usable keyset tiebreaker.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> crate::Result<Self> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| crate::Error::invalid("id", e.to_string()))
            }
        }
    )*};
}

typed_id! {
    /// Identifies an [`Organization`](crate::model::Organization).
    OrgId,
    /// Identifies a [`User`](crate::model::User).
    UserId,
    /// Identifies a [`Project`](crate::model::Project).
    ProjectId,
    /// Identifies a [`WorkflowState`](crate::model::WorkflowState).
    StateId,
    /// Identifies a [`Task`](crate::model::Task).
    TaskId,
    /// Identifies a [`Comment`](crate::model::Comment).
    CommentId,
    /// Identifies a [`Label`](crate::model::Label).
    LabelId,
    /// Identifies a [`Milestone`](crate::model::Milestone).
    MilestoneId,
    /// Identifies a [`CustomField`](crate::model::CustomField) definition.
    FieldId,
    /// Identifies a [`TimeEntry`](crate::model::TimeEntry).
    TimeEntryId,
    /// Identifies an [`Attachment`](crate::model::Attachment).
    AttachmentId,
    /// Identifies a [`CheckIn`](crate::model::CheckIn).
    CheckInId,
    /// Identifies an [`Event`](crate::event::Event) in the log.
    EventId,
    /// Identifies a workflow (owned by pm-workflows; referenced by event actors).
    WorkflowId,
    /// Identifies an integration (owned by pm-integrations; referenced by event actors).
    IntegrationId,
}
