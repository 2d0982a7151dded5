//! Embedding pm-permissions in a host application, without the server: seed the default roles,
//! grant them, hand the permission service to pm-core as its `Authorizer`, and watch every
//! service call being held to the rules — including a context-aware one (a team member edits
//! only the tasks it created or is assigned) — then ask the engine to explain a denial and
//! verify the audit chain.
//!
//! Run: `cargo run --example permissions --features permissions` (writes
//! `target/permissions-example.db`, recreated on every run).

use std::sync::Arc;

use pm::core::authz::{Action, Authorizer};
use pm::core::blob::FsBlobStore;
use pm::core::event::{Actor, Origin};
use pm::core::model::{Email, Markdown, MemberRole, Name, ProjectKey, Slug, TaskPatch, TaskTitle};
use pm::core::service::{CreateTask, NewOrg, NewProject, NewUser, task_resource};
use pm::core::{Error, Pm, store};
use pm::permissions::model::{NewAssignment, Scope};
use pm::permissions::{PermissionService, ServiceConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let db = concat!(env!("CARGO_MANIFEST_DIR"), "/target/permissions-example.db");
    let _ = std::fs::remove_file(db);
    let url = format!("sqlite://{db}");

    // Both crates' tables live in one database; each has its own migrations table.
    let stores = store::open(&url).await?;
    stores.admin.migrate().await?;
    let authz_stores = pm::permissions::store::open(&url).await?;
    authz_stores.admin.migrate().await?;
    let authz = Arc::new(PermissionService::open(authz_stores, ServiceConfig::default()).await?);
    let seeded = authz.seed_defaults(&Actor::System).await?;
    println!("seeded {} permissions, roles {:?}", seeded.permissions.len(), seeded.roles);

    let pm = Pm::new(
        stores,
        authz.clone() as Arc<dyn Authorizer>,
        Arc::new(FsBlobStore::new(std::env::temp_dir().join("pm-permissions-example"))),
    );
    let system = Origin::system();
    let user = |email: &str, name: &str| NewUser {
        email: Email::parse(email).expect("valid e-mail"),
        display_name: Name::parse(name).expect("valid name"),
    };
    let ada = pm.create_user(&system, user("ada@example.com", "Ada")).await?;
    let bob = pm.create_user(&system, user("bob@example.com", "Bob")).await?;
    let cy = pm.create_user(&system, user("cy@example.com", "Cy")).await?;

    // Ada administers everything; the org does not exist yet, so a global grant.
    let grant = |user, role: &'static str, scope| {
        let authz = authz.clone();
        async move {
            let role_id = authz.system_role(role).await?.expect("seeded").id;
            authz
                .grant(
                    &Actor::System,
                    NewAssignment {
                        user_id: user,
                        role_id,
                        scope,
                        valid_from: None,
                        valid_until: None,
                        reason: "example".into(),
                    },
                )
                .await
        }
    };
    grant(ada.id, "admin", Scope::Global).await?;

    let as_ada = Origin::user(ada.id);
    let org = pm
        .create_org(&as_ada, NewOrg { slug: Slug::parse("acme")?, name: Name::parse("Acme")? })
        .await?;
    let project = pm
        .create_project(
            &as_ada,
            org.id,
            NewProject {
                key: ProjectKey::parse("PM")?,
                name: Name::parse("Platform")?,
                description: Markdown::default(),
                lead: Some(ada.id),
            },
        )
        .await?;
    // pm-core's membership (who may be assigned tasks) and pm-permissions' roles are separate:
    // Ada (holding member.manage) adds the members, then grants their roles.
    for (u, role) in [(bob.id, MemberRole::Member), (cy.id, MemberRole::Guest)] {
        pm.put_member(&as_ada, org.id, u, role).await?;
    }
    grant(bob.id, "team_member", Scope::Org { org_id: org.id }).await?;
    grant(cy.id, "viewer", Scope::Project { org_id: org.id, project_id: project.id }).await?;

    let mut input = CreateTask::new(project.id, TaskTitle::parse("Ship it")?);
    input.assignees = [bob.id].into();
    let assigned = pm.create_task(&as_ada, input).await?;
    let other = pm
        .create_task(&as_ada, CreateTask::new(project.id, TaskTitle::parse("Not Bob's")?))
        .await?;

    let rename = |t: &str| TaskPatch {
        title: Some(TaskTitle::parse(t).expect("valid")),
        ..Default::default()
    };
    let as_bob = Origin::user(bob.id);
    let t = pm.update_task(&as_bob, assigned.id, assigned.version, rename("Ship it today")).await?;
    println!("bob (team_member) renamed his assigned task: “{}”", t.title);
    match pm.update_task(&as_bob, other.id, other.version, rename("Mine now")).await {
        Err(Error::Forbidden(why)) => println!("bob may not edit someone else's task: {why}"),
        other => anyhow::bail!("expected a denial, got {other:?}"),
    }
    let as_cy = Origin::user(cy.id);
    let seen = pm.get_task(&as_cy, other.id).await?;
    println!("cy (viewer) reads “{}”", seen.title);
    if let Err(Error::Forbidden(why)) =
        pm.update_task(&as_cy, other.id, other.version, rename("Nope")).await
    {
        println!("cy may not edit: {why}");
    }

    // Why? The engine explains: the chain on allow, the nearest missing grant on deny.
    let ex = authz.engine().explain(&Actor::User(cy.id), Action::Update, &task_resource(&other));
    println!("explain: {}\n{}", ex.summary, serde_json::to_string_pretty(&ex.missing)?);
    let ex = authz.engine().explain(&Actor::User(bob.id), Action::Update, &task_resource(&t));
    println!("explain: {}\n{}", ex.summary, serde_json::to_string_pretty(&ex.chain)?);

    let report = authz.verify_audit_chain(&Actor::System).await?;
    println!("audit chain: {} records, valid = {}", report.records, report.valid);
    Ok(())
}
