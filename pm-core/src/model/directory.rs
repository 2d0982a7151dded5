//! Organizations, users and memberships.
//!
//! A [`User`] is an identity reference only: credentials belong to the host (pm-server keeps
//! password hashes and tokens in its own tables).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Email, Name, Slug};
use crate::id::{OrgId, UserId};

/// A tenant: projects, labels and members belong to exactly one organization.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    /// Identity.
    pub id: OrgId,
    /// URL-safe unique handle.
    pub slug: Slug,
    /// Display name.
    pub name: Name,
    /// Optimistic-concurrency version, bumped on every change.
    pub version: i64,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A person known to pm. Unique by e-mail.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Identity.
    pub id: UserId,
    /// Unique, lower-cased e-mail address.
    pub email: Email,
    /// Display name.
    pub display_name: Name,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A user's role inside an organization. Fine-grained rights come from pm-permissions; this is
/// the coarse membership fact that "project member"/"org member" conditions rely on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Runs the organization.
    Owner,
    /// Administers the organization.
    Admin,
    /// A regular member.
    Member,
    /// Read-only guest.
    Guest,
}

impl MemberRole {
    /// The stored/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Admin => "admin",
            MemberRole::Member => "member",
            MemberRole::Guest => "guest",
        }
    }

    /// Parses the stored/wire name (`role` field).
    pub fn parse(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "owner" => MemberRole::Owner,
            "admin" => MemberRole::Admin,
            "member" => MemberRole::Member,
            "guest" => MemberRole::Guest,
            _ => {
                return Err(crate::Error::invalid(
                    "role",
                    "must be one of owner, admin, member, guest",
                ));
            }
        })
    }
}

/// A user's membership in an organization.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The organization.
    pub org_id: OrgId,
    /// The member.
    pub user_id: UserId,
    /// Coarse role.
    pub role: MemberRole,
    /// When the user joined.
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}
