//! Organizations, users and memberships.

use crate::authz::{Action, Resource, ResourceKind};
use crate::event::Origin;
use crate::id::{OrgId, UserId};
use crate::model::{Email, MemberRole, Membership, Name, Organization, Slug, User, now};
use crate::{Error, Pm, Result};

/// Input for [`Pm::create_user`].
#[derive(Debug, Clone)]
pub struct NewUser {
    /// E-mail (unique).
    pub email: Email,
    /// Display name.
    pub display_name: Name,
}

/// Input for [`Pm::create_org`].
#[derive(Debug, Clone)]
pub struct NewOrg {
    /// Slug (unique).
    pub slug: Slug,
    /// Name.
    pub name: Name,
}

impl Pm {
    /// Registers a user identity (credentials are the host's business).
    pub async fn create_user(&self, origin: &Origin, input: NewUser) -> Result<User> {
        self.authorize(origin, Action::Create, &Resource::new(ResourceKind::Member, None, None))
            .await?;
        let user = User {
            id: UserId::new(),
            email: input.email,
            display_name: input.display_name,
            created_at: now(),
        };
        self.stores.directory.create_user(origin, &user).await
    }

    /// Loads a user.
    pub async fn get_user(&self, id: UserId) -> Result<User> {
        self.stores.directory.get_user(id).await
    }

    /// Creates an organization; a user actor becomes its owner.
    pub async fn create_org(&self, origin: &Origin, input: NewOrg) -> Result<Organization> {
        self.authorize(origin, Action::Create, &Resource::new(ResourceKind::Org, None, None))
            .await?;
        let at = now();
        let org = Organization {
            id: OrgId::new(),
            slug: input.slug,
            name: input.name,
            version: 1,
            created_at: at,
            updated_at: at,
        };
        self.stores.directory.create_org(origin, &org, origin.actor.user()).await
    }

    /// Loads an organization.
    pub async fn get_org(&self, origin: &Origin, id: OrgId) -> Result<Organization> {
        let r = Resource::new(ResourceKind::Org, Some(id), None).with_id(id);
        self.authorize_read(origin, &r, "organization").await?;
        self.stores.directory.get_org(id).await
    }

    /// Organizations the user belongs to.
    pub async fn list_orgs_for_user(&self, user: UserId) -> Result<Vec<Organization>> {
        self.stores.directory.list_orgs_for_user(user).await
    }

    /// Adds a member or changes their role.
    pub async fn put_member(
        &self,
        origin: &Origin,
        org: OrgId,
        user: UserId,
        role: MemberRole,
    ) -> Result<Membership> {
        self.authorize(
            origin,
            Action::Manage,
            &Resource::new(ResourceKind::Member, Some(org), None).with_id(user),
        )
        .await?;
        self.stores.directory.get_org(org).await?;
        self.stores.directory.get_user(user).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::invalid("user_id", "no such user"),
            other => other,
        })?;
        let m = Membership { org_id: org, user_id: user, role, joined_at: now() };
        self.stores.directory.put_member(origin, &m).await
    }

    /// Removes a member.
    pub async fn remove_member(&self, origin: &Origin, org: OrgId, user: UserId) -> Result<()> {
        self.authorize(
            origin,
            Action::Manage,
            &Resource::new(ResourceKind::Member, Some(org), None).with_id(user),
        )
        .await?;
        self.stores.directory.remove_member(origin, org, user).await
    }

    /// Members of an organization.
    pub async fn list_members(&self, origin: &Origin, org: OrgId) -> Result<Vec<Membership>> {
        self.authorize_read(
            origin,
            &Resource::new(ResourceKind::Member, Some(org), None),
            "organization",
        )
        .await?;
        self.stores.directory.list_members(org).await
    }

    /// Errors with `Invalid { field }` unless `user` is a member of `org`.
    pub(crate) async fn require_member(&self, org: OrgId, user: UserId, field: &str) -> Result<()> {
        match self.stores.directory.get_membership(org, user).await? {
            Some(_) => Ok(()),
            None => Err(Error::invalid(
                field,
                format!("user {user} is not a member of the organization"),
            )),
        }
    }
}
