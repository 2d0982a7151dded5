//! Tasks, relations, watchers and comments.

use std::collections::{BTreeMap, BTreeSet};

use time::Date;

use crate::authz::{Action, Resource, ResourceKind};
use crate::event::{ActivityScope, Event, Origin};
use crate::id::{
    CommentId, FieldId, LabelId, MilestoneId, OrgId, ProjectId, StateId, TaskId, UserId,
};
use crate::model::*;
use crate::query::{Page, PageRequest, TaskFilter};
use crate::service::project::project_resource;
use crate::{Error, Pm, Result};

/// Largest accepted estimate.
pub const MAX_ESTIMATE: Estimate = 1000;
/// Most assignees per task.
pub const MAX_ASSIGNEES: usize = 20;
/// Most labels per task.
pub const MAX_LABELS: usize = 50;
/// Deepest subtask nesting.
pub const MAX_SUBTASK_DEPTH: usize = 10;

/// Input for [`Pm::create_task`].
#[derive(Debug, Clone)]
pub struct CreateTask {
    /// A caller-chosen id (an offline client's, so a replayed create is recognisable); `None`
    /// for a fresh one. A taken id fails with `AlreadyExists { entity: "task", field: "id" }`.
    pub id: Option<TaskId>,
    /// Project.
    pub project_id: ProjectId,
    /// Title.
    pub title: TaskTitle,
    /// Description.
    pub description: Markdown,
    /// Initial state; defaults to the project's first `unstarted` (else `backlog`, else first) state.
    pub state_id: Option<StateId>,
    /// Priority.
    pub priority: Priority,
    /// Assignees (members of the organization).
    pub assignees: BTreeSet<UserId>,
    /// Reporter; defaults to the acting user.
    pub reporter: Option<UserId>,
    /// Labels (of the organization).
    pub labels: BTreeSet<LabelId>,
    /// Planned start.
    pub start_date: Option<Date>,
    /// Due date.
    pub due_date: Option<Date>,
    /// Estimate.
    pub estimate: Option<Estimate>,
    /// Parent task (same project).
    pub parent_id: Option<TaskId>,
    /// Milestone (same project).
    pub milestone_id: Option<MilestoneId>,
    /// Custom field values (fields of the project).
    pub custom_fields: BTreeMap<FieldId, FieldValue>,
}

impl CreateTask {
    /// A task with only a title; everything else defaulted.
    pub fn new(project_id: ProjectId, title: TaskTitle) -> Self {
        Self {
            id: None,
            project_id,
            title,
            description: Markdown::default(),
            state_id: None,
            priority: Priority::None,
            assignees: BTreeSet::new(),
            reporter: None,
            labels: BTreeSet::new(),
            start_date: None,
            due_date: None,
            estimate: None,
            parent_id: None,
            milestone_id: None,
            custom_fields: BTreeMap::new(),
        }
    }
}

/// The authorization resource for a task (owner = reporter; assignees for conditions).
pub fn task_resource(t: &Task) -> Resource {
    Resource {
        kind: ResourceKind::Task,
        org_id: Some(t.org_id),
        project_id: Some(t.project_id),
        id: Some(t.id.0),
        owner: Some(t.reporter),
        assignees: t.assignees.iter().copied().collect(),
        watchers: Vec::new(),
        attributes: serde_json::Map::new(),
    }
}

impl Pm {
    /// Creates a task.
    pub async fn create_task(&self, origin: &Origin, input: CreateTask) -> Result<Task> {
        let (project, states) =
            self.stores.projects.get_project_with_states(input.project_id).await?;
        self.authorize_read(origin, &project_resource(&project), "project").await?;
        let mut resource =
            Resource::new(ResourceKind::Task, Some(project.org_id), Some(project.id));
        resource.assignees = input.assignees.iter().copied().collect();
        resource.owner = input.reporter.or(origin.actor.user());
        self.authorize(origin, Action::Create, &resource).await?;
        let reporter = match (input.reporter, origin.actor.user()) {
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => {
                return Err(Error::invalid("reporter", "is required when the actor is not a user"));
            }
        };
        // The state is checked against the project's own list here, so `check_task_fields` needs
        // no second look-up.
        let state_id = match input.state_id {
            Some(s) if states.iter().any(|st| st.id == s) => s,
            Some(_) => {
                return Err(Error::invalid(
                    "state_id",
                    "is not a workflow state of the task's project",
                ));
            }
            None => default_state(&states)?,
        };
        if let Some(id) = input.id {
            if id.0.is_nil() {
                return Err(Error::invalid("id", "must not be the nil UUID"));
            }
            // Checked here so the error names the id; a concurrent create with the same id still
            // fails in the store on the primary key.
            match self.stores.tasks.get_task(id).await {
                Ok(_) => return Err(Error::AlreadyExists { entity: "task", field: "id" }),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let new = NewTask {
            id: input.id,
            project_id: project.id,
            title: input.title,
            description: input.description,
            state_id,
            priority: input.priority,
            assignees: input.assignees,
            reporter,
            labels: input.labels,
            start_date: input.start_date,
            due_date: input.due_date,
            estimate: input.estimate,
            parent_id: input.parent_id,
            milestone_id: input.milestone_id,
            custom_fields: input.custom_fields,
        };
        self.check_task_fields(&project, None, true, &TaskFieldsView::from_new(&new)).await?;
        self.require_member(project.org_id, reporter, "reporter").await?;
        self.stores.tasks.create_task(origin, &new, now()).await
    }

    /// Loads a task.
    pub async fn get_task(&self, origin: &Origin, id: TaskId) -> Result<Task> {
        let t = self.stores.tasks.get_task(id).await?;
        self.authorize_read(origin, &task_resource(&t), "task").await?;
        Ok(t)
    }

    /// Loads a task by project and number (`PM-42`).
    pub async fn get_task_by_number(
        &self,
        origin: &Origin,
        project: ProjectId,
        number: i64,
    ) -> Result<Task> {
        let t = self.stores.tasks.get_task_by_number(project, number).await?;
        self.authorize_read(origin, &task_resource(&t), "task").await?;
        Ok(t)
    }

    /// Updates a task (optimistic concurrency on `expected_version`). A state change is a
    /// transition; it is authorized like any other update.
    pub async fn update_task(
        &self,
        origin: &Origin,
        id: TaskId,
        expected_version: i64,
        patch: TaskPatch,
    ) -> Result<Task> {
        let current = self.get_task(origin, id).await?;
        self.authorize(origin, Action::Update, &task_resource(&current)).await?;
        let project = self.stores.projects.get_project(current.project_id).await?;
        let mut next = current.clone();
        patch.apply(&mut next);
        self.check_task_fields(&project, Some(&current), false, &TaskFieldsView::from_task(&next))
            .await?;
        if let Some(Some(parent)) = patch.parent_id {
            self.check_no_parent_cycle(id, parent).await?;
        }
        self.stores.tasks.update_task(origin, id, expected_version, &patch).await
    }

    /// Deletes a task.
    pub async fn delete_task(
        &self,
        origin: &Origin,
        id: TaskId,
        expected_version: i64,
    ) -> Result<()> {
        let current = self.get_task(origin, id).await?;
        self.authorize(origin, Action::Delete, &task_resource(&current)).await?;
        self.stores.tasks.delete_task(origin, id, expected_version).await
    }

    /// A page of an organization's tasks.
    pub async fn list_tasks(
        &self,
        origin: &Origin,
        org: OrgId,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>> {
        filter.validate()?;
        self.authorize_read(
            origin,
            &Resource::new(ResourceKind::Task, Some(org), None),
            "organization",
        )
        .await?;
        for p in &filter.project_ids {
            let r = Resource::new(ResourceKind::Task, Some(org), Some(*p));
            self.authorize_read(origin, &r, "project").await?;
        }
        self.stores.tasks.list_tasks(org, filter, page).await
    }

    /// A page of one project's tasks (`filter.project_ids` is replaced by `project`). NotFound
    /// when the project does not exist or the caller may not read it.
    pub async fn list_project_tasks(
        &self,
        origin: &Origin,
        project: ProjectId,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>> {
        filter.validate()?;
        let org = self.project_org(project).await?;
        let r = Resource::new(ResourceKind::Task, Some(org), Some(project));
        self.authorize_read(origin, &r, "project").await?;
        let filter = TaskFilter { project_ids: vec![project], ..filter.clone() };
        self.stores.tasks.list_tasks(org, &filter, page).await
    }

    /// Relates two tasks of the same organization.
    pub async fn add_relation(
        &self,
        origin: &Origin,
        from: TaskId,
        to: TaskId,
        kind: RelationKind,
    ) -> Result<TaskRelation> {
        let a = self.get_task(origin, from).await?;
        let b = self.get_task(origin, to).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::invalid("to_task", "no such task"),
            other => other,
        })?;
        if a.org_id != b.org_id {
            return Err(Error::invalid("to_task", "no such task"));
        }
        self.authorize(origin, Action::Update, &task_resource(&a)).await?;
        let r = TaskRelation {
            from_task: from,
            to_task: to,
            kind,
            created_by: origin.actor.user(),
            created_at: now(),
        };
        self.stores.tasks.add_relation(origin, &r).await
    }

    /// Removes a relation.
    pub async fn remove_relation(
        &self,
        origin: &Origin,
        from: TaskId,
        to: TaskId,
        kind: RelationKind,
    ) -> Result<()> {
        let a = self.get_task(origin, from).await?;
        self.authorize(origin, Action::Update, &task_resource(&a)).await?;
        self.stores.tasks.remove_relation(origin, from, to, kind).await
    }

    /// Relations of a task (either end).
    pub async fn list_relations(&self, origin: &Origin, task: TaskId) -> Result<Vec<TaskRelation>> {
        self.get_task(origin, task).await?;
        self.stores.tasks.list_relations(task).await
    }

    /// Starts watching a task (a user may watch for themselves; others need update rights).
    pub async fn add_watcher(
        &self,
        origin: &Origin,
        task: TaskId,
        user: UserId,
    ) -> Result<Watcher> {
        let t = self.get_task(origin, task).await?;
        if origin.actor.user() != Some(user) {
            self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        }
        self.require_member(t.org_id, user, "user_id").await?;
        self.stores
            .tasks
            .add_watcher(origin, &Watcher { task_id: task, user_id: user, since: now() })
            .await
    }

    /// Stops watching a task.
    pub async fn remove_watcher(&self, origin: &Origin, task: TaskId, user: UserId) -> Result<()> {
        let t = self.get_task(origin, task).await?;
        if origin.actor.user() != Some(user) {
            self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        }
        self.stores.tasks.remove_watcher(origin, task, user).await
    }

    /// Watchers of a task.
    pub async fn list_watchers(&self, origin: &Origin, task: TaskId) -> Result<Vec<Watcher>> {
        self.get_task(origin, task).await?;
        self.stores.tasks.list_watchers(task).await
    }

    /// Comments on a task; the author is the acting user.
    pub async fn add_comment(
        &self,
        origin: &Origin,
        task: TaskId,
        body: Markdown,
    ) -> Result<Comment> {
        self.add_comment_with_id(origin, task, CommentId::new(), body).await
    }

    /// [`Pm::add_comment`] with a caller-chosen id (an offline client's, so a replayed create is
    /// recognisable). A taken id fails with `AlreadyExists { entity: "comment", field: "id" }`.
    pub async fn add_comment_with_id(
        &self,
        origin: &Origin,
        task: TaskId,
        id: CommentId,
        body: Markdown,
    ) -> Result<Comment> {
        if id.0.is_nil() {
            return Err(Error::invalid("id", "must not be the nil UUID"));
        }
        let t = self.get_task(origin, task).await?;
        let author = origin
            .actor
            .user()
            .ok_or_else(|| Error::invalid("author", "comments need a user actor"))?;
        let r = Resource::new(ResourceKind::Comment, Some(t.org_id), Some(t.project_id))
            .with_owner(author);
        self.authorize(origin, Action::Create, &r).await?;
        if body.as_str().trim().is_empty() {
            return Err(Error::invalid("body", "must not be empty"));
        }
        let at = now();
        let c =
            Comment { id, task_id: task, author, body, version: 1, created_at: at, updated_at: at };
        self.stores.comments.create_comment(origin, &c).await
    }

    /// Comments of a task, oldest first.
    pub async fn list_comments(&self, origin: &Origin, task: TaskId) -> Result<Vec<Comment>> {
        self.get_task(origin, task).await?;
        self.stores.comments.list_comments(task).await
    }

    async fn comment_resource(
        &self,
        origin: &Origin,
        id: CommentId,
    ) -> Result<(Comment, Resource)> {
        let c = self.stores.comments.get_comment(id).await?;
        let t = self.get_task(origin, c.task_id).await.map_err(|_| Error::not_found("comment"))?;
        let r = Resource::new(ResourceKind::Comment, Some(t.org_id), Some(t.project_id))
            .with_id(id)
            .with_owner(c.author);
        Ok((c, r))
    }

    /// Edits a comment (optimistic concurrency on `expected_version`).
    pub async fn edit_comment(
        &self,
        origin: &Origin,
        id: CommentId,
        expected_version: i64,
        body: Markdown,
    ) -> Result<Comment> {
        let (_, r) = self.comment_resource(origin, id).await?;
        self.authorize(origin, Action::Update, &r).await?;
        if body.as_str().trim().is_empty() {
            return Err(Error::invalid("body", "must not be empty"));
        }
        self.stores.comments.update_comment(origin, id, expected_version, &body).await
    }

    /// Deletes a comment.
    pub async fn delete_comment(&self, origin: &Origin, id: CommentId) -> Result<()> {
        let (_, r) = self.comment_resource(origin, id).await?;
        self.authorize(origin, Action::Delete, &r).await?;
        self.stores.comments.delete_comment(origin, id).await
    }

    /// The activity feed of a project or task: its events, newest first, before `before`.
    pub async fn activity(
        &self,
        origin: &Origin,
        scope: ActivityScope,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        match scope {
            ActivityScope::Project(p) => {
                self.get_project(origin, p).await?;
            }
            ActivityScope::Task(t) => {
                self.get_task(origin, t).await?;
            }
        }
        self.stores.events.activity(scope, before, limit).await
    }

    /// Validates a task's references against its project: state, parent, milestone, labels,
    /// assignees, custom fields, dates and estimate. `before` is the stored task on update, so
    /// unchanged references are not re-checked; `state_known` says the state was picked from the
    /// project's own list already.
    async fn check_task_fields(
        &self,
        project: &Project,
        before: Option<&Task>,
        state_known: bool,
        t: &TaskFieldsView<'_>,
    ) -> Result<()> {
        if let (Some(s), Some(d)) = (t.start_date, t.due_date)
            && s > d
        {
            return Err(Error::invalid("start_date", "must not be after due_date"));
        }
        if t.estimate.is_some_and(|e| e > MAX_ESTIMATE) {
            return Err(Error::invalid("estimate", format!("must be at most {MAX_ESTIMATE}")));
        }
        if t.assignees.len() > MAX_ASSIGNEES {
            return Err(Error::invalid("assignees", format!("at most {MAX_ASSIGNEES} assignees")));
        }
        if t.labels.len() > MAX_LABELS {
            return Err(Error::invalid("labels", format!("at most {MAX_LABELS} labels")));
        }
        if !state_known && before.is_none_or(|b| b.state_id != *t.state_id) {
            let s = self.stores.projects.get_state(*t.state_id).await;
            if !matches!(&s, Ok(s) if s.project_id == project.id) {
                return Err(Error::invalid(
                    "state_id",
                    "is not a workflow state of the task's project",
                ));
            }
        }
        if let Some(parent) = t.parent_id
            && before.is_none_or(|b| b.parent_id != Some(parent))
        {
            let p = self.stores.tasks.get_task(parent).await;
            if !matches!(&p, Ok(p) if p.project_id == project.id) {
                return Err(Error::invalid("parent_id", "is not a task of the same project"));
            }
        }
        if let Some(m) = t.milestone_id
            && before.is_none_or(|b| b.milestone_id != Some(m))
        {
            let ms = self.stores.projects.get_milestone(m).await;
            if !matches!(&ms, Ok(ms) if ms.project_id == project.id) {
                return Err(Error::invalid(
                    "milestone_id",
                    "is not a milestone of the task's project",
                ));
            }
        }
        let new_labels: Vec<&LabelId> =
            t.labels.iter().filter(|l| before.is_none_or(|b| !b.labels.contains(l))).collect();
        if !new_labels.is_empty() {
            let known: BTreeSet<LabelId> = self
                .stores
                .projects
                .list_labels(project.org_id)
                .await?
                .into_iter()
                .map(|l| l.id)
                .collect();
            if let Some(l) = new_labels.iter().find(|l| !known.contains(l)) {
                return Err(Error::invalid(
                    "labels",
                    format!("label {l} does not exist in the organization"),
                ));
            }
        }
        for a in t.assignees.iter().filter(|a| before.is_none_or(|b| !b.assignees.contains(a))) {
            self.require_member(project.org_id, *a, "assignees").await?;
        }
        if before.is_none_or(|b| b.custom_fields != *t.custom_fields) && !t.custom_fields.is_empty()
        {
            let fields = self.stores.projects.list_fields(project.id).await?;
            for (id, value) in t.custom_fields {
                let f = fields.iter().find(|f| f.id == *id).ok_or_else(|| {
                    Error::invalid(
                        format!("custom_fields.{id}"),
                        "is not a field of the task's project",
                    )
                })?;
                f.check(value)?;
            }
        }
        Ok(())
    }

    async fn check_no_parent_cycle(&self, task: TaskId, parent: TaskId) -> Result<()> {
        let mut cur = Some(parent);
        for _ in 0..=MAX_SUBTASK_DEPTH {
            match cur {
                None => return Ok(()),
                Some(id) if id == task => {
                    return Err(Error::invalid(
                        "parent_id",
                        "would make the task its own ancestor",
                    ));
                }
                Some(id) => cur = self.stores.tasks.get_task(id).await?.parent_id,
            }
        }
        Err(Error::invalid("parent_id", format!("subtasks nest at most {MAX_SUBTASK_DEPTH} deep")))
    }
}

/// The validated parts of a task, borrowed from either a new or an updated task.
struct TaskFieldsView<'a> {
    state_id: &'a StateId,
    assignees: &'a BTreeSet<UserId>,
    labels: &'a BTreeSet<LabelId>,
    start_date: Option<Date>,
    due_date: Option<Date>,
    estimate: Option<Estimate>,
    parent_id: Option<TaskId>,
    milestone_id: Option<MilestoneId>,
    custom_fields: &'a BTreeMap<FieldId, FieldValue>,
}

impl<'a> TaskFieldsView<'a> {
    fn from_new(t: &'a NewTask) -> Self {
        Self {
            state_id: &t.state_id,
            assignees: &t.assignees,
            labels: &t.labels,
            start_date: t.start_date,
            due_date: t.due_date,
            estimate: t.estimate,
            parent_id: t.parent_id,
            milestone_id: t.milestone_id,
            custom_fields: &t.custom_fields,
        }
    }

    fn from_task(t: &'a Task) -> Self {
        Self {
            state_id: &t.state_id,
            assignees: &t.assignees,
            labels: &t.labels,
            start_date: t.start_date,
            due_date: t.due_date,
            estimate: t.estimate,
            parent_id: t.parent_id,
            milestone_id: t.milestone_id,
            custom_fields: &t.custom_fields,
        }
    }
}

/// The state a new task starts in when none is given: the first unstarted one, else the first
/// backlog one, else the first.
fn default_state(states: &[WorkflowState]) -> Result<StateId> {
    let pick = states
        .iter()
        .find(|s| s.category == StateCategory::Unstarted)
        .or_else(|| states.iter().find(|s| s.category == StateCategory::Backlog))
        .or(states.first());
    pick.map(|s| s.id)
        .ok_or_else(|| Error::invalid("state_id", "the project has no workflow states"))
}
