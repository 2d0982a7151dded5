//! Task templates in the engine: CRUD with validation, and instantiation — the template's task
//! tree created through pm-core's services, then its workflows — all or nothing.
//!
//! pm-core has no cross-store transaction to offer (its tasks and our workflows may even live in
//! different databases), so an instantiation is *compensated*: when a task or workflow fails to
//! be created, everything this call created is deleted again, children first, and the original
//! error (with the template path of the failing part) is returned. The log keeps the
//! `task.created`/`task.deleted` pairs as history.
//!
//! With an idempotency key (the `create_task` action passes its step key) task and workflow ids
//! are derived from the key, so a retry after a crash between "created" and "recorded" finds
//! what the first attempt created and completes it instead of creating duplicates.

use std::collections::BTreeMap;

use pm_core::event::{Actor, Origin};
use pm_core::id::{OrgId, ProjectId, TaskId, UserId, WorkflowId};
use pm_core::model::Task;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Engine, new_secret, task_json};
use crate::store::{TaskTemplate, TaskTemplateId, Workflow};
use crate::task_template::{AttachScope, PlanContext, TemplateSpec, plan, under};
use crate::{Error, Result};

/// Most caller-supplied placeholder values.
pub const MAX_VALUES: usize = 50;

/// What to instantiate, where.
#[derive(Debug, Clone)]
pub struct InstantiateRequest {
    /// The template.
    pub template: TaskTemplateId,
    /// Target project (in the template's organization; the template's project if it has one).
    pub project: ProjectId,
    /// Create the root task as a subtask of this task (same project).
    pub parent: Option<TaskId>,
    /// `{{values.x}}` placeholders.
    pub values: BTreeMap<String, String>,
    /// Reporter of the created tasks; defaults to the acting user (required for automations).
    pub reporter: Option<UserId>,
    /// A task visible to the texts as `{{task.…}}` (the triggering task of an action).
    pub source_task: Option<Task>,
    /// Makes a retry complete the first attempt instead of duplicating it.
    pub idempotency_key: Option<String>,
}

/// What an instantiation created.
#[derive(Debug, Clone)]
pub struct Instantiated {
    /// The tasks, root first, parents before their subtasks.
    pub tasks: Vec<Task>,
    /// The workflows created for them.
    pub workflows: Vec<Workflow>,
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(Error::invalid("name", "must be 1–200 characters"));
    }
    if n.chars().any(char::is_control) {
        return Err(Error::invalid("name", "must not contain control characters"));
    }
    Ok(n.to_string())
}

fn derived_id(key: &str, part: &str) -> uuid::Uuid {
    let digest = sha2::Sha256::digest(format!("{key}\u{0}{part}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl Engine {
    /// Validates and stores a new task template (`spec` is the JSON document; errors name its
    /// path).
    pub async fn create_template(
        &self,
        org: OrgId,
        project: Option<ProjectId>,
        name: &str,
        spec: &Value,
        created_by: Actor,
    ) -> Result<TaskTemplate> {
        let name = check_name(name)?;
        let spec = TemplateSpec::from_value(spec, &self.inner.config.limits)?;
        if let Some(p) = project {
            self.check_project(org, p).await?;
        }
        let now = pm_core::model::now();
        let t = TaskTemplate {
            id: TaskTemplateId::new(),
            org_id: org,
            project_id: project,
            name,
            spec,
            created_by,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.inner.stores.templates.create_template(&t).await?;
        Ok(t)
    }

    /// Replaces a template's name, project and document at `expected_version`.
    pub async fn update_template(
        &self,
        id: TaskTemplateId,
        expected_version: i64,
        project: Option<ProjectId>,
        name: &str,
        spec: &Value,
    ) -> Result<TaskTemplate> {
        let name = check_name(name)?;
        let spec = TemplateSpec::from_value(spec, &self.inner.config.limits)?;
        let current = self.inner.stores.templates.get_template(id).await?;
        if let Some(p) = project {
            self.check_project(current.org_id, p).await?;
        }
        let next = TaskTemplate {
            project_id: project,
            name,
            spec,
            updated_at: pm_core::model::now(),
            ..current
        };
        self.inner.stores.templates.update_template(&next, expected_version).await
    }

    async fn check_project(
        &self,
        org: OrgId,
        project: ProjectId,
    ) -> Result<pm_core::model::Project> {
        let p = match self.inner.pm.stores().projects.get_project(project).await {
            Ok(p) => p,
            Err(pm_core::Error::NotFound { .. }) => {
                return Err(Error::invalid("project_id", "no such project"));
            }
            Err(e) => return Err(e.into()),
        };
        if p.org_id != org {
            return Err(Error::invalid(
                "project_id",
                "is not a project of the template's organization",
            ));
        }
        Ok(p)
    }

    /// Instantiates a template: its tasks through pm-core's services as `origin` (so rights and
    /// field rules apply), then its workflows. All or nothing (see the module docs).
    pub async fn instantiate(
        &self,
        origin: &Origin,
        req: InstantiateRequest,
    ) -> Result<Instantiated> {
        if req.values.len() > MAX_VALUES {
            return Err(Error::invalid("values", format!("at most {MAX_VALUES} values")));
        }
        for (k, v) in &req.values {
            let ok_key = !k.is_empty()
                && k.len() <= 64
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok_key {
                return Err(Error::invalid(
                    format!("values.{k}"),
                    "names are 1–64 of [A-Za-z0-9_-]",
                ));
            }
            if v.chars().count() > 1000 {
                return Err(Error::invalid(
                    format!("values.{k}"),
                    "must be at most 1000 characters",
                ));
            }
        }
        let template = self.inner.stores.templates.get_template(req.template).await?;
        if template.project_id.is_some_and(|p| p != req.project) {
            return Err(Error::invalid("project_id", "the template is for another project"));
        }
        let project = self.check_project(template.org_id, req.project).await?;
        let parent = match req.parent {
            None => None,
            Some(id) => {
                let t = match self.inner.pm.stores().tasks.get_task(id).await {
                    Ok(t) => t,
                    Err(pm_core::Error::NotFound { .. }) => {
                        return Err(Error::invalid("parent_task_id", "no such task"));
                    }
                    Err(e) => return Err(e.into()),
                };
                if t.project_id != project.id {
                    return Err(Error::invalid("parent_task_id", "is not a task of the project"));
                }
                Some(t)
            }
        };
        let now = pm_core::model::now();
        let ctx = json!({
            "project": {"id": project.id, "key": project.key, "name": project.name},
            "parent": parent.as_ref().map(task_json).unwrap_or(Value::Null),
            "task": req.source_task.as_ref().map(task_json).unwrap_or(Value::Null),
            "values": req.values,
            "today": now.date().to_string(),
        });
        let pc = PlanContext {
            ctx,
            instantiator: origin.actor.user(),
            project_lead: project.lead,
            today: now.date(),
        };
        let planned = plan(&template.spec, &pc)?;

        let mut created: Vec<Task> = Vec::new();
        let mut fresh_tasks: Vec<TaskId> = Vec::new();
        for p in &planned {
            let mut input = pm_core::service::CreateTask::new(project.id, p.title.clone());
            input.description = p.description.clone();
            input.priority = p.priority;
            input.assignees = p.assignees.clone();
            input.labels = p.labels.clone();
            input.custom_fields = p.custom_fields.clone();
            input.estimate = p.estimate;
            input.due_date = p.due_date;
            input.reporter = req.reporter;
            input.parent_id = match p.parent {
                Some(i) => Some(created[i].id),
                None => parent.as_ref().map(|t| t.id),
            };
            let id = req.idempotency_key.as_deref().map(|k| TaskId(derived_id(k, &p.path)));
            input.id = id;
            let result = match self.inner.pm.create_task(origin, input).await {
                Ok(t) => {
                    fresh_tasks.push(t.id);
                    Ok(t)
                }
                // A retry of the same key: the first attempt created it.
                Err(pm_core::Error::AlreadyExists { entity: "task", field: "id" }) => match id {
                    Some(id) => {
                        self.inner.pm.stores().tasks.get_task(id).await.map_err(Error::from)
                    }
                    None => Err(Error::Conflict("task id taken".into())),
                },
                Err(e) => Err(under(&p.path, e.into())),
            };
            match result {
                Ok(t) => created.push(t),
                Err(e) => {
                    self.compensate(origin, &fresh_tasks, &[]).await;
                    return Err(e);
                }
            }
        }

        let root = created[0].id;
        let mut workflows = Vec::new();
        let mut fresh_workflows = Vec::new();
        for (i, a) in template.spec.workflows.iter().enumerate() {
            let mut definition = a.definition.clone();
            if a.scope == AttachScope::Task {
                definition.conditions.insert(0, format!("task.id == \"{root}\""));
            }
            let id = match req.idempotency_key.as_deref() {
                Some(k) => WorkflowId(derived_id(k, &format!("workflows[{i}]"))),
                None => WorkflowId::new(),
            };
            let w = Workflow {
                id,
                org_id: template.org_id,
                project_id: Some(project.id),
                enabled: a.enabled,
                definition_version: 1,
                definition,
                webhook_secret: new_secret(),
                created_by: origin.actor,
                version: 1,
                created_at: now,
                updated_at: now,
            };
            let stored = match w.definition.validate(&self.inner.config.limits) {
                Err(e) => Err(under(&format!("workflows[{i}].definition"), e)),
                Ok(()) => match self.inner.stores.workflows.create_workflow(&w).await {
                    Ok(()) => {
                        fresh_workflows.push(w.id);
                        Ok(w)
                    }
                    Err(Error::Conflict(_)) if req.idempotency_key.is_some() => {
                        self.inner.stores.workflows.get_workflow(id).await
                    }
                    Err(e) => Err(e),
                },
            };
            match stored {
                Ok(w) => workflows.push(w),
                Err(e) => {
                    self.compensate(origin, &fresh_tasks, &fresh_workflows).await;
                    return Err(e);
                }
            }
        }
        if !workflows.is_empty() {
            self.reload().await?;
        }
        Ok(Instantiated { tasks: created, workflows })
    }

    /// Deletes what a failed instantiation created: workflows, then tasks, children first. A
    /// failure here is logged (the original error is what the caller needs to see).
    async fn compensate(&self, origin: &Origin, tasks: &[TaskId], workflows: &[WorkflowId]) {
        for id in workflows.iter().rev() {
            if let Err(e) = self.inner.stores.workflows.delete_workflow(*id).await {
                tracing::warn!(workflow = %id, error = %e, "pm-workflows: undoing a template's workflow failed");
            }
        }
        let store = &self.inner.pm.stores().tasks;
        for id in tasks.iter().rev() {
            let undone = match store.get_task(*id).await {
                Ok(t) => store.delete_task(origin, t.id, t.version).await,
                Err(e) => Err(e),
            };
            if let Err(e) = undone {
                tracing::warn!(task = %id, error = %e, "pm-workflows: undoing a template's task failed");
            }
        }
    }
}
