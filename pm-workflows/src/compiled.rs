//! A definition with every CEL program and script compiled once, keyed by JSON path.
//!
//! Executions look programs up by the path of the step that uses them (`steps[1].condition`),
//! so an execution never parses anything; the engine caches one [`CompiledWorkflow`] per
//! (workflow, version).

use std::collections::HashMap;

use crate::condition::{self, Program, Scope};
use crate::definition::{Action, Definition, Step};
use crate::script::{CompiledScript, Sandbox};
use crate::{Error, Result};

/// A validated definition, ready to execute.
#[derive(Debug, Clone)]
pub struct CompiledWorkflow {
    /// The source definition.
    pub definition: Definition,
    conditions: Vec<Program>,
    programs: HashMap<String, Program>,
    scripts: HashMap<String, CompiledScript>,
}

impl CompiledWorkflow {
    /// Compiles every expression and script of `definition` (already validated) with `sandbox`.
    pub fn new(definition: Definition, sandbox: &Sandbox) -> Result<Self> {
        let conditions = definition
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                condition::compile(c).map_err(|e| Error::invalid(format!("conditions[{i}]"), e))
            })
            .collect::<Result<_>>()?;
        let mut c =
            Self { definition, conditions, programs: HashMap::new(), scripts: HashMap::new() };
        let steps = c.definition.steps.clone();
        c.walk(&steps, "steps", sandbox)?;
        Ok(c)
    }

    fn cel(&mut self, path: String, expr: &str) -> Result<()> {
        let p = condition::compile(expr).map_err(|e| Error::invalid(&path, e))?;
        self.programs.insert(path, p);
        Ok(())
    }

    fn walk(&mut self, steps: &[Step], path: &str, sandbox: &Sandbox) -> Result<()> {
        for (i, step) in steps.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match step {
                Step::Action(a) => {
                    if let Action::Script(s) = &a.action {
                        let sp = format!("{p}.action.source");
                        let compiled = sandbox
                            .compile(&s.source)
                            .map_err(|e| Error::invalid(&sp, e.to_string()))?;
                        self.scripts.insert(sp, compiled);
                    }
                }
                Step::If(s) => {
                    self.cel(format!("{p}.condition"), &s.condition)?;
                    self.walk(&s.then, &format!("{p}.then"), sandbox)?;
                    self.walk(&s.otherwise, &format!("{p}.else"), sandbox)?;
                }
                Step::Switch(s) => {
                    self.cel(format!("{p}.value"), &s.value)?;
                    for (j, case) in s.cases.iter().enumerate() {
                        self.walk(&case.steps, &format!("{p}.cases[{j}].steps"), sandbox)?;
                    }
                    self.walk(&s.default, &format!("{p}.default"), sandbox)?;
                }
                Step::ForEach(s) => self.walk(&s.steps, &format!("{p}.steps"), sandbox)?,
                Step::Approval(s) => {
                    self.walk(&s.on_approved, &format!("{p}.on_approved"), sandbox)?;
                    self.walk(&s.on_rejected, &format!("{p}.on_rejected"), sandbox)?;
                    self.walk(&s.on_timeout, &format!("{p}.on_timeout"), sandbox)?;
                }
            }
        }
        Ok(())
    }

    /// Whether every top-level condition holds in `scope`; the error names the first
    /// condition that failed to evaluate (fail closed: treat as "does not hold").
    pub fn conditions_hold(&self, scope: &Scope) -> Result<bool, (usize, String)> {
        for (i, p) in self.conditions.iter().enumerate() {
            match scope.holds(p) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err((i, e)),
            }
        }
        Ok(true)
    }

    /// The program compiled for the expression at `path` (`steps[1].condition`).
    pub fn program(&self, path: &str) -> Option<&Program> {
        self.programs.get(path)
    }

    /// The script compiled for the action at `path` (`steps[0].action.source`).
    pub fn script(&self, path: &str) -> Option<&CompiledScript> {
        self.scripts.get(path)
    }
}
