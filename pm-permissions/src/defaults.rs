//! The default permission catalogue (21 permissions), the four default roles and their templates.
//!
//! The split, by resource (a `manage` permission implies every action on its resource):
//!
//! | resource    | permissions                          |
//! |-------------|--------------------------------------|
//! | org         | create, read, manage                 |
//! | member      | read, manage                         |
//! | project     | create, read, update, manage         |
//! | task        | create, read, update, delete         |
//! | comment     | create, read, update, delete         |
//! | role        | read, manage                         |
//! | integration | manage                               |
//! | workflow    | manage                               |
//!
//! Roles form a 4-level chain, each inheriting the one before:
//!
//! - `viewer`: reads org, members, projects, tasks, comments, roles;
//! - `team_member` (inherits viewer): creates tasks and comments; updates tasks it created
//!   (`owner`) or is assigned to (`assignee`); updates and deletes its own comments;
//! - `project_manager` (inherits team_member): updates and manages projects, updates and deletes
//!   any task, moderates comments, manages workflows — within the scope it is assigned at, so a
//!   project-scoped project manager manages that project and no other;
//! - `admin` (inherits project_manager): everything, including creating organizations, managing
//!   members, roles and integrations.

use crate::model::{
    Action, Condition, Grant, Permission, PermissionDef, ResourceKind, RoleTemplate,
};

use Action::*;
use ResourceKind as R;

/// The 21 default permissions with their descriptions.
pub const PERMISSIONS: [(ResourceKind, Action, &str); 21] = [
    (R::Org, Create, "Create organizations"),
    (R::Org, Read, "See an organization"),
    (R::Org, Manage, "Change and administer an organization"),
    (R::Member, Read, "List an organization's members"),
    (R::Member, Manage, "Add, change and remove members (and create users)"),
    (R::Project, Create, "Create projects"),
    (R::Project, Read, "See projects"),
    (R::Project, Update, "Edit a project's details"),
    (R::Project, Manage, "Configure projects: states, labels, milestones, fields, archive"),
    (R::Task, Create, "Create tasks"),
    (R::Task, Read, "See tasks and their records"),
    (R::Task, Update, "Edit tasks and their records"),
    (R::Task, Delete, "Delete tasks"),
    (R::Comment, Create, "Comment"),
    (R::Comment, Read, "Read comments"),
    (R::Comment, Update, "Edit comments"),
    (R::Comment, Delete, "Delete comments"),
    (R::Role, Read, "See roles, assignments and effective permissions"),
    (R::Role, Manage, "Create roles, grant and revoke assignments, read the audit log"),
    (R::Integration, Manage, "Connect and configure integrations"),
    (R::Workflow, Manage, "Create and run automation workflows"),
];

/// The default permissions as definitions.
pub fn permissions() -> Vec<PermissionDef> {
    PERMISSIONS
        .iter()
        .map(|&(r, a, d)| PermissionDef {
            permission: Permission::new(r, a),
            description: d.to_owned(),
        })
        .collect()
}

fn p(r: ResourceKind, a: Action) -> Grant {
    Grant::always(Permission::new(r, a))
}

fn when(r: ResourceKind, a: Action, c: Condition) -> Grant {
    Grant::when(Permission::new(r, a), c)
}

/// The default roles as templates, parents before children. Seeding creates a system role from
/// each; applying one to an organization creates an org-owned copy to customize.
pub fn templates() -> Vec<RoleTemplate> {
    vec![
        RoleTemplate {
            name: "viewer".into(),
            description: "Reads everything in its scope".into(),
            parent: None,
            grants: vec![
                p(R::Org, Read),
                p(R::Member, Read),
                p(R::Project, Read),
                p(R::Task, Read),
                p(R::Comment, Read),
                p(R::Role, Read),
            ],
            denies: vec![],
        },
        RoleTemplate {
            name: "team_member".into(),
            description: "Works on tasks: creates them, edits those it created or is assigned"
                .into(),
            parent: Some("viewer".into()),
            grants: vec![
                p(R::Task, Create),
                p(R::Comment, Create),
                when(R::Task, Update, Condition::Owner),
                when(R::Task, Update, Condition::Assignee),
                when(R::Comment, Update, Condition::Owner),
                when(R::Comment, Delete, Condition::Owner),
            ],
            denies: vec![],
        },
        RoleTemplate {
            name: "project_manager".into(),
            description: "Runs projects: configuration, every task, comments, workflows".into(),
            parent: Some("team_member".into()),
            grants: vec![
                p(R::Project, Update),
                p(R::Project, Manage),
                p(R::Task, Update),
                p(R::Task, Delete),
                p(R::Comment, Update),
                p(R::Comment, Delete),
                p(R::Workflow, Manage),
            ],
            denies: vec![],
        },
        RoleTemplate {
            name: "admin".into(),
            description: "Everything".into(),
            parent: Some("project_manager".into()),
            grants: vec![
                p(R::Org, Create),
                p(R::Org, Manage),
                p(R::Member, Manage),
                p(R::Project, Create),
                p(R::Role, Manage),
                p(R::Integration, Manage),
            ],
            denies: vec![],
        },
    ]
}
