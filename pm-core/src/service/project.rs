//! Projects, workflow states, labels, milestones and custom field definitions.

use time::Date;

use crate::authz::{Action, Resource, ResourceKind};
use crate::event::Origin;
use crate::id::{FieldId, LabelId, MilestoneId, OrgId, ProjectId, StateId, UserId};
use crate::model::*;
use crate::{Error, Pm, Result};

/// Input for [`Pm::create_project`].
#[derive(Debug, Clone)]
pub struct NewProject {
    /// Key (unique in the organization).
    pub key: ProjectKey,
    /// Name.
    pub name: Name,
    /// Description.
    pub description: Markdown,
    /// Lead (must be a member).
    pub lead: Option<UserId>,
}

/// Input for [`Pm::update_milestone`]: the editable fields, `None` = unchanged.
#[derive(Debug, Clone, Default)]
pub struct MilestonePatch {
    /// New name.
    pub name: Option<Name>,
    /// New description.
    pub description: Option<Markdown>,
    /// New due date.
    pub due_on: Option<Option<Date>>,
    /// Close or reopen.
    pub closed: Option<bool>,
}

pub(crate) fn project_resource(p: &Project) -> Resource {
    Resource::new(ResourceKind::Project, Some(p.org_id), Some(p.id)).with_id(p.id)
}

impl Pm {
    /// Creates a project with the [`DEFAULT_STATES`].
    pub async fn create_project(
        &self,
        origin: &Origin,
        org: OrgId,
        input: NewProject,
    ) -> Result<Project> {
        self.authorize(
            origin,
            Action::Create,
            &Resource::new(ResourceKind::Project, Some(org), None),
        )
        .await?;
        self.stores.directory.get_org(org).await?;
        if let Some(lead) = input.lead {
            self.require_member(org, lead, "lead").await?;
        }
        let at = now();
        let project = Project {
            id: ProjectId::new(),
            org_id: org,
            key: input.key,
            name: input.name,
            description: input.description,
            lead: input.lead,
            archived: false,
            version: 1,
            created_at: at,
            updated_at: at,
        };
        let states: Vec<WorkflowState> = DEFAULT_STATES
            .iter()
            .enumerate()
            .map(|(i, (name, category))| WorkflowState {
                id: StateId::new(),
                project_id: project.id,
                name: Name::parse(name).expect("default state names are valid"),
                category: *category,
                position: i as i32,
                version: 1,
            })
            .collect();
        self.stores.projects.create_project(origin, &project, &states).await
    }

    /// Loads a project.
    pub async fn get_project(&self, origin: &Origin, id: ProjectId) -> Result<Project> {
        let p = self.stores.projects.get_project(id).await?;
        self.authorize_read(origin, &project_resource(&p), "project").await?;
        Ok(p)
    }

    /// Projects of an organization.
    pub async fn list_projects(
        &self,
        origin: &Origin,
        org: OrgId,
        include_archived: bool,
    ) -> Result<Vec<Project>> {
        self.authorize_read(
            origin,
            &Resource::new(ResourceKind::Project, Some(org), None),
            "organization",
        )
        .await?;
        self.stores.projects.list_projects(org, include_archived).await
    }

    /// Updates a project (optimistic concurrency on `expected_version`).
    pub async fn update_project(
        &self,
        origin: &Origin,
        id: ProjectId,
        expected_version: i64,
        patch: ProjectPatch,
    ) -> Result<Project> {
        let p = self.get_project(origin, id).await?;
        self.authorize(origin, Action::Update, &project_resource(&p)).await?;
        if let Some(Some(lead)) = patch.lead {
            self.require_member(p.org_id, lead, "lead").await?;
        }
        self.stores.projects.update_project(origin, id, expected_version, &patch).await
    }

    /// Adds a workflow state at the end of the board.
    pub async fn create_state(
        &self,
        origin: &Origin,
        project: ProjectId,
        name: Name,
        category: StateCategory,
    ) -> Result<WorkflowState> {
        let p = self.get_project(origin, project).await?;
        self.authorize(origin, Action::Manage, &project_resource(&p)).await?;
        let states = self.stores.projects.list_states(project).await?;
        if states.len() >= 50 {
            return Err(Error::invalid("name", "a project has at most 50 workflow states"));
        }
        let position = states.iter().map(|s| s.position).max().map_or(0, |m| m + 1);
        let state = WorkflowState {
            id: StateId::new(),
            project_id: project,
            name,
            category,
            position,
            version: 1,
        };
        self.stores.projects.create_state(origin, &state).await
    }

    /// Workflow states of a project, by position.
    pub async fn list_states(
        &self,
        origin: &Origin,
        project: ProjectId,
    ) -> Result<Vec<WorkflowState>> {
        self.get_project(origin, project).await?;
        self.stores.projects.list_states(project).await
    }

    /// Creates an organization label.
    pub async fn create_label(
        &self,
        origin: &Origin,
        org: OrgId,
        name: LabelName,
        color: Color,
    ) -> Result<Label> {
        self.authorize(
            origin,
            Action::Manage,
            &Resource::new(ResourceKind::Project, Some(org), None),
        )
        .await?;
        self.stores.directory.get_org(org).await?;
        self.stores
            .projects
            .create_label(origin, &Label { id: LabelId::new(), org_id: org, name, color })
            .await
    }

    /// Labels of an organization.
    pub async fn list_labels(&self, origin: &Origin, org: OrgId) -> Result<Vec<Label>> {
        self.authorize_read(
            origin,
            &Resource::new(ResourceKind::Project, Some(org), None),
            "organization",
        )
        .await?;
        self.stores.projects.list_labels(org).await
    }

    /// Deletes a label of `org` (removing it from every task).
    pub async fn delete_label(&self, origin: &Origin, org: OrgId, id: LabelId) -> Result<()> {
        self.authorize(
            origin,
            Action::Manage,
            &Resource::new(ResourceKind::Project, Some(org), None),
        )
        .await?;
        if !self.stores.projects.list_labels(org).await?.iter().any(|l| l.id == id) {
            return Err(Error::not_found("label"));
        }
        self.stores.projects.delete_label(origin, id).await
    }

    /// Creates a milestone.
    pub async fn create_milestone(
        &self,
        origin: &Origin,
        project: ProjectId,
        name: Name,
        description: Markdown,
        due_on: Option<Date>,
    ) -> Result<Milestone> {
        let p = self.get_project(origin, project).await?;
        self.authorize(origin, Action::Manage, &project_resource(&p)).await?;
        let m = Milestone {
            id: MilestoneId::new(),
            project_id: project,
            name,
            description,
            due_on,
            closed: false,
            version: 1,
        };
        self.stores.projects.create_milestone(origin, &m).await
    }

    /// Updates a milestone (optimistic concurrency on `expected_version`).
    pub async fn update_milestone(
        &self,
        origin: &Origin,
        id: MilestoneId,
        expected_version: i64,
        patch: MilestonePatch,
    ) -> Result<Milestone> {
        let current = self.stores.projects.get_milestone(id).await?;
        let p = self.get_project(origin, current.project_id).await?;
        self.authorize(origin, Action::Manage, &project_resource(&p)).await?;
        let mut next = current.clone();
        if let Some(v) = patch.name {
            next.name = v;
        }
        if let Some(v) = patch.description {
            next.description = v;
        }
        if let Some(v) = patch.due_on {
            next.due_on = v;
        }
        if let Some(v) = patch.closed {
            next.closed = v;
        }
        self.stores.projects.update_milestone(origin, &next, expected_version).await
    }

    /// Milestones of a project.
    pub async fn list_milestones(
        &self,
        origin: &Origin,
        project: ProjectId,
    ) -> Result<Vec<Milestone>> {
        self.get_project(origin, project).await?;
        self.stores.projects.list_milestones(project).await
    }

    /// Defines a custom field on a project.
    pub async fn create_field(
        &self,
        origin: &Origin,
        project: ProjectId,
        name: Name,
        field_type: FieldType,
    ) -> Result<CustomField> {
        let p = self.get_project(origin, project).await?;
        self.authorize(origin, Action::Manage, &project_resource(&p)).await?;
        field_type.validate()?;
        let f = CustomField { id: FieldId::new(), project_id: project, name, field_type };
        self.stores.projects.create_field(origin, &f).await
    }

    /// Custom fields of a project.
    pub async fn list_fields(
        &self,
        origin: &Origin,
        project: ProjectId,
    ) -> Result<Vec<CustomField>> {
        self.get_project(origin, project).await?;
        self.stores.projects.list_fields(project).await
    }
}
