//! Conditions: built-in relations (owner, assignee, watcher, project/org member) and CEL
//! expressions, compiled once when the engine indexes a role.
//!
//! CEL variables:
//!
//! - `resource`: `{kind, org_id, project_id, id, owner, assignees, watchers, attributes}` (ids as
//!   strings, absent ones `null`);
//! - `actor`: `{id}` (the user id as a string);
//! - `request`: `resource.attributes.request` when present, else `{}` — request facts a host
//!   puts there (IP, client, …);
//! - `now`: the engine clock, in microseconds since the Unix epoch (an int).
//!
//! An expression grants only when it evaluates to `true`; an error or a non-boolean result is
//! "does not hold" (fail closed), and is logged once per evaluation at `debug`.

use std::sync::Arc;

use pm_core::id::UserId;

use crate::model::{Condition, Resource};
use crate::{Error, Result};

/// A condition ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledCondition {
    /// The source condition.
    pub condition: Condition,
    program: Option<Arc<cel::Program>>,
}

impl CompiledCondition {
    /// Compiles `condition` (parses CEL); fails with `Invalid` on a syntax error.
    pub fn compile(condition: &Condition) -> Result<Self> {
        let program = match condition {
            Condition::Expr { expr } => Some(Arc::new(
                cel::Program::compile(expr)
                    .map_err(|e| Error::invalid("condition.expr", e.to_string()))?,
            )),
            _ => None,
        };
        Ok(Self { condition: condition.clone(), program })
    }

    /// A condition that never holds (used when a stored expression no longer compiles).
    pub fn never(condition: &Condition) -> Self {
        Self { condition: condition.clone(), program: None }
    }

    /// Evaluates the condition. Membership relations are answered by `membership`
    /// (`(user, resource) -> (project member, org member)` lazily, via the closures).
    pub fn holds(
        &self,
        user: UserId,
        resource: &Resource,
        now_micros: i64,
        project_member: impl FnOnce() -> bool,
        org_member: impl FnOnce() -> bool,
    ) -> bool {
        match &self.condition {
            Condition::Owner => resource.owner == Some(user),
            Condition::Assignee => resource.assignees.contains(&user),
            Condition::Watcher => resource.watchers.contains(&user),
            Condition::ProjectMember => resource.project_id.is_some() && project_member(),
            Condition::OrgMember => resource.org_id.is_some() && org_member(),
            Condition::Expr { expr } => match &self.program {
                Some(p) => eval_cel(p, user, resource, now_micros).unwrap_or_else(|e| {
                    tracing::debug!(%expr, error = %e, "pm-permissions: CEL condition failed");
                    false
                }),
                None => false,
            },
        }
    }
}

fn eval_cel(
    program: &cel::Program,
    user: UserId,
    resource: &Resource,
    now_micros: i64,
) -> std::result::Result<bool, String> {
    let mut ctx = cel::Context::default();
    ctx.add_variable("resource", resource).map_err(|e| e.to_string())?;
    ctx.add_variable("actor", serde_json::json!({ "id": user })).map_err(|e| e.to_string())?;
    let request = resource
        .attributes
        .get("request")
        .cloned()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    ctx.add_variable("request", request).map_err(|e| e.to_string())?;
    ctx.add_variable("now", now_micros).map_err(|e| e.to_string())?;
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expected a bool, got {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pm_core::authz::ResourceKind;
    use pm_core::id::OrgId;

    #[test]
    fn cel_over_resource_actor_and_request() {
        let user = UserId::new();
        let c = CompiledCondition::compile(&Condition::Expr {
            expr: "resource.attributes.state != 'done' && actor.id == resource.owner \
                   && request.ip == '10.0.0.1' && now > 5"
                .into(),
        })
        .unwrap();
        let r = Resource::new(ResourceKind::Task, Some(OrgId::new()), None)
            .with_owner(user)
            .with_attribute("state", "open".into())
            .with_attribute("request", serde_json::json!({"ip": "10.0.0.1"}));
        assert!(c.holds(user, &r, 10, || false, || false));
        assert!(!c.holds(UserId::new(), &r, 10, || false, || false));
        let done = r.clone().with_attribute("state", "done".into());
        assert!(!c.holds(user, &done, 10, || false, || false));
        // Errors (missing attribute) fail closed.
        let c = CompiledCondition::compile(&Condition::Expr {
            expr: "resource.attributes.missing == 1".into(),
        })
        .unwrap();
        assert!(!c.holds(user, &r, 10, || false, || false));
        assert!(CompiledCondition::compile(&Condition::Expr { expr: "1 +".into() }).is_err());
    }
}
