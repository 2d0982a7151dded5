//! Store traits: the persistence contract, one trait per aggregate.
//!
//! Traits are object-safe (`#[async_trait]`) so hosts hold `Arc<dyn TaskStore>` and can plug
//! their own adapter; the `pm_core::testing` suite (feature `testing`) tells an adapter
//! author whether theirs behaves. Rules every adapter follows:
//!
//! - every mutating method is one transaction that also appends its [`Event`] to the log (built
//!   with the shared payload helpers of [`crate::event`], so payloads are identical across
//!   backends) and pings the [`Wakeup`] after commit;
//! - updates take the expected `version` and fail with [`Error::Conflict`](crate::Error) carrying
//!   the current entity; a missing entity is `NotFound`, a broken uniqueness rule `AlreadyExists`;
//! - a failed write leaves nothing behind: no row, no event, no bumped counter.
//!
//! Built-in adapters: [`sqlite`] (feature `sqlite`, the embedded default) and [`postgres`]
//! (feature `postgres`).

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::Result;
use crate::event::{ActivityScope, Event, Origin, Wakeup};
use crate::id::*;
use crate::model::*;
use crate::query::{Page, PageRequest, TaskFilter};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Organizations, users and memberships.
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// Inserts an organization and, when given, its first member as owner.
    async fn create_org(
        &self,
        origin: &Origin,
        org: &Organization,
        owner: Option<UserId>,
    ) -> Result<Organization>;
    /// Loads an organization.
    async fn get_org(&self, id: OrgId) -> Result<Organization>;
    /// Organizations the user is a member of, oldest first.
    async fn list_orgs_for_user(&self, user: UserId) -> Result<Vec<Organization>>;
    /// Inserts a user (unique by e-mail).
    async fn create_user(&self, origin: &Origin, user: &User) -> Result<User>;
    /// Loads a user.
    async fn get_user(&self, id: UserId) -> Result<User>;
    /// Finds a user by e-mail.
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>>;
    /// Adds a member, or changes the role of an existing one.
    async fn put_member(&self, origin: &Origin, membership: &Membership) -> Result<Membership>;
    /// Removes a member.
    async fn remove_member(&self, origin: &Origin, org: OrgId, user: UserId) -> Result<()>;
    /// The user's membership in the organization, if any.
    async fn get_membership(&self, org: OrgId, user: UserId) -> Result<Option<Membership>>;
    /// Members of an organization, by join time.
    async fn list_members(&self, org: OrgId) -> Result<Vec<Membership>>;
}

/// Projects with their workflow states, labels, milestones and custom field definitions.
#[async_trait]
pub trait ProjectStore: Send + Sync {
    /// Inserts a project together with its initial workflow states.
    async fn create_project(
        &self,
        origin: &Origin,
        project: &Project,
        states: &[WorkflowState],
    ) -> Result<Project>;
    /// Loads a project.
    async fn get_project(&self, id: ProjectId) -> Result<Project>;
    /// Projects of an organization by key.
    async fn list_projects(&self, org: OrgId, include_archived: bool) -> Result<Vec<Project>>;
    /// Updates a project if it is still at `expected_version`.
    async fn update_project(
        &self,
        origin: &Origin,
        id: ProjectId,
        expected_version: i64,
        patch: &ProjectPatch,
    ) -> Result<Project>;
    /// Adds a workflow state.
    async fn create_state(&self, origin: &Origin, state: &WorkflowState) -> Result<WorkflowState>;
    /// Loads a workflow state.
    async fn get_state(&self, id: StateId) -> Result<WorkflowState>;
    /// States of a project by position.
    async fn list_states(&self, project: ProjectId) -> Result<Vec<WorkflowState>>;
    /// A project and its states by position in one read: what creating a task needs. The default
    /// makes the two calls; adapters where a read is a round trip worth saving override it.
    async fn get_project_with_states(
        &self,
        id: ProjectId,
    ) -> Result<(Project, Vec<WorkflowState>)> {
        let project = self.get_project(id).await?;
        let states = self.list_states(id).await?;
        Ok((project, states))
    }
    /// Adds a label.
    async fn create_label(&self, origin: &Origin, label: &Label) -> Result<Label>;
    /// Labels of an organization by name.
    async fn list_labels(&self, org: OrgId) -> Result<Vec<Label>>;
    /// Deletes a label (and removes it from tasks).
    async fn delete_label(&self, origin: &Origin, id: LabelId) -> Result<()>;
    /// Adds a milestone.
    async fn create_milestone(&self, origin: &Origin, milestone: &Milestone) -> Result<Milestone>;
    /// Loads a milestone.
    async fn get_milestone(&self, id: MilestoneId) -> Result<Milestone>;
    /// Milestones of a project by due date.
    async fn list_milestones(&self, project: ProjectId) -> Result<Vec<Milestone>>;
    /// Replaces a milestone's editable fields if it is still at `expected_version`.
    async fn update_milestone(
        &self,
        origin: &Origin,
        milestone: &Milestone,
        expected_version: i64,
    ) -> Result<Milestone>;
    /// Defines a custom field.
    async fn create_field(&self, origin: &Origin, field: &CustomField) -> Result<CustomField>;
    /// Custom fields of a project by name.
    async fn list_fields(&self, project: ProjectId) -> Result<Vec<CustomField>>;
}

/// Tasks with their relations and watchers, and task queries.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Inserts a task, assigning id, the next per-project number, a rank after the project's last
    /// task, and timestamps (`at`).
    async fn create_task(
        &self,
        origin: &Origin,
        task: &NewTask,
        at: OffsetDateTime,
    ) -> Result<Task>;
    /// Loads a task.
    async fn get_task(&self, id: TaskId) -> Result<Task>;
    /// Loads a task by its per-project number.
    async fn get_task_by_number(&self, project: ProjectId, number: i64) -> Result<Task>;
    /// Applies `patch` if the task is still at `expected_version`. A patch that changes nothing
    /// returns the task unchanged and appends no event.
    async fn update_task(
        &self,
        origin: &Origin,
        id: TaskId,
        expected_version: i64,
        patch: &TaskPatch,
    ) -> Result<Task>;
    /// Deletes a task with its comments, relations, watchers and records; subtasks are detached.
    async fn delete_task(&self, origin: &Origin, id: TaskId, expected_version: i64) -> Result<()>;
    /// A page of an organization's tasks matching `filter`.
    async fn list_tasks(
        &self,
        org: OrgId,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>>;
    /// Adds a relation; a `blocks` relation that would close a cycle is rejected (`Invalid`).
    async fn add_relation(&self, origin: &Origin, relation: &TaskRelation) -> Result<TaskRelation>;
    /// Removes a relation.
    async fn remove_relation(
        &self,
        origin: &Origin,
        from: TaskId,
        to: TaskId,
        kind: RelationKind,
    ) -> Result<()>;
    /// Relations where the task is either end.
    async fn list_relations(&self, task: TaskId) -> Result<Vec<TaskRelation>>;
    /// Adds a watcher (idempotent).
    async fn add_watcher(&self, origin: &Origin, watcher: &Watcher) -> Result<Watcher>;
    /// Removes a watcher.
    async fn remove_watcher(&self, origin: &Origin, task: TaskId, user: UserId) -> Result<()>;
    /// Watchers of a task.
    async fn list_watchers(&self, task: TaskId) -> Result<Vec<Watcher>>;
}

/// Comments on tasks.
#[async_trait]
pub trait CommentStore: Send + Sync {
    /// Inserts a comment.
    async fn create_comment(&self, origin: &Origin, comment: &Comment) -> Result<Comment>;
    /// Loads a comment.
    async fn get_comment(&self, id: CommentId) -> Result<Comment>;
    /// Comments of a task, oldest first.
    async fn list_comments(&self, task: TaskId) -> Result<Vec<Comment>>;
    /// Replaces the body if the comment is still at `expected_version`.
    async fn update_comment(
        &self,
        origin: &Origin,
        id: CommentId,
        expected_version: i64,
        body: &Markdown,
    ) -> Result<Comment>;
    /// Deletes a comment.
    async fn delete_comment(&self, origin: &Origin, id: CommentId) -> Result<()>;
}

/// Time entries, attachment metadata and check-ins.
#[async_trait]
pub trait WorkLogStore: Send + Sync {
    /// Logs time.
    async fn create_time_entry(&self, origin: &Origin, entry: &TimeEntry) -> Result<TimeEntry>;
    /// Time entries of a task, by day.
    async fn list_time_entries(&self, task: TaskId) -> Result<Vec<TimeEntry>>;
    /// Deletes a time entry.
    async fn delete_time_entry(&self, origin: &Origin, id: TimeEntryId) -> Result<()>;
    /// Records an attachment's metadata (the bytes are already in the blob store).
    async fn create_attachment(
        &self,
        origin: &Origin,
        attachment: &Attachment,
    ) -> Result<Attachment>;
    /// Loads attachment metadata.
    async fn get_attachment(&self, id: AttachmentId) -> Result<Attachment>;
    /// Attachments of a task.
    async fn list_attachments(&self, task: TaskId) -> Result<Vec<Attachment>>;
    /// Deletes attachment metadata (the caller removes the blob after commit).
    async fn delete_attachment(&self, origin: &Origin, id: AttachmentId) -> Result<()>;
    /// Records a check-in.
    async fn create_check_in(&self, origin: &Origin, check_in: &CheckIn) -> Result<CheckIn>;
    /// Check-ins of a task, newest first.
    async fn list_check_ins(&self, task: TaskId) -> Result<Vec<CheckIn>>;
}

/// The event log and its durable consumer cursors.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Up to `limit` events with `seq > after`, in `seq` order.
    async fn read_after(&self, after: i64, limit: u32) -> Result<Vec<Event>>;
    /// A project's or task's events, newest first, with `seq < before` (from the newest when
    /// `None`): the activity feed.
    async fn activity(
        &self,
        scope: ActivityScope,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>>;
    /// The highest committed `seq` (0 when empty).
    async fn latest_seq(&self) -> Result<i64>;
    /// A consumer's durable cursor (0 when it never saved one).
    async fn load_cursor(&self, consumer: &str) -> Result<i64>;
    /// Advances a consumer's cursor; never moves it backwards (a slower duplicate consumer
    /// cannot rewind a faster one).
    async fn save_cursor(&self, consumer: &str, seq: i64) -> Result<()>;
    /// Signal pinged after each commit that appended events.
    fn wakeup(&self) -> &Wakeup;
}

/// Backend administration: migrations and health.
#[async_trait]
pub trait StoreAdmin: Send + Sync {
    /// Applies pending migrations of pm-core's tables.
    async fn migrate(&self) -> Result<()>;
    /// Checks the backend answers (for readiness probes).
    async fn ping(&self) -> Result<()>;
    /// `sqlite` or `postgres` (or a host adapter's name).
    fn backend(&self) -> &'static str;
}

/// Every pm-core store, as trait objects. Cheap to clone.
#[derive(Clone)]
pub struct Stores {
    /// Organizations, users, memberships.
    pub directory: Arc<dyn DirectoryStore>,
    /// Projects and their configuration.
    pub projects: Arc<dyn ProjectStore>,
    /// Tasks.
    pub tasks: Arc<dyn TaskStore>,
    /// Comments.
    pub comments: Arc<dyn CommentStore>,
    /// Time entries, attachments, check-ins.
    pub worklog: Arc<dyn WorkLogStore>,
    /// The event log.
    pub events: Arc<dyn EventLog>,
    /// Administration.
    pub admin: Arc<dyn StoreAdmin>,
}

impl Stores {
    /// Bundles one adapter that implements every trait.
    pub fn from_adapter<S>(s: Arc<S>) -> Self
    where
        S: DirectoryStore
            + ProjectStore
            + TaskStore
            + CommentStore
            + WorkLogStore
            + EventLog
            + StoreAdmin
            + 'static,
    {
        Self {
            directory: s.clone(),
            projects: s.clone(),
            tasks: s.clone(),
            comments: s.clone(),
            worklog: s.clone(),
            events: s.clone(),
            admin: s,
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("backend", &self.admin.backend()).finish_non_exhaustive()
    }
}

/// Opens the built-in adapter named by a URL: `sqlite://path.db` (created if missing) or
/// `postgres://…`. Does not migrate; call `stores.admin.migrate()`.
pub async fn open(url: &str) -> Result<Stores> {
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let s = sqlite::SqliteStore::connect(url).await?;
            return Ok(Stores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-core was built without the `sqlite` feature",
        ));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let s = postgres::PostgresStore::connect(url).await?;
            return Ok(Stores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-core was built without the `postgres` feature",
        ));
    }
    Err(crate::Error::invalid("database_url", "must start with sqlite: or postgres:"))
}

/// pm-core's PostgreSQL stores over an existing pool, for a host that shares one pool between all
/// the crates on one database (pm-server does: one pool per process, see its `db` module) rather
/// than letting each [`open`] its own. It also starts the event log's `LISTEN` task, on a dedicated connection
/// outside the pool (see [`postgres::PostgresStore::from_pool`]). Does not migrate; call `stores.admin.migrate()`.
#[cfg(feature = "postgres")]
pub fn postgres_stores(pool: sqlx::postgres::PgPool) -> Stores {
    Stores::from_adapter(Arc::new(postgres::PostgresStore::from_pool(pool)))
}
