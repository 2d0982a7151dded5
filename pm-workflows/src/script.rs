//! Sandboxed rhai scripts: every limit on, nothing reachable outside the script.
//!
//! The [`Sandbox`] engine caps operations, call depth, expression depth, string/array/map sizes,
//! variables and functions; `import` and `eval` are disabled symbols and there is no module
//! resolver; `print`/`debug` go nowhere. A wall-clock budget is enforced from `on_progress`
//! (checked every [`PROGRESS_CHECK_EVERY`] operations, so the clock read costs nothing
//! measurable): `loop {}` and runaway recursion stop within the budget, not at the operation
//! cap. rhai's `unchecked` feature would compile all of this out — `.ci/deps.sh` fails the
//! build if any crate enables it (and this module would not compile: `on_progress` and the
//! `set_max_*` methods do not exist under it).
//!
//! Scripts see `task`, `event`, `trigger`, `item` and `steps` as constants (JSON mapped to rhai
//! maps/arrays) and their final value is the step output (as JSON).

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, Scope};
use serde_json::Value;

use crate::{Error, Result};

/// How often (in operations) the wall-clock budget is checked.
pub const PROGRESS_CHECK_EVERY: u64 = 64;

/// A script's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Operations (rhai's unit of work) per run.
    pub max_operations: u64,
    /// Function call depth.
    pub max_call_levels: usize,
    /// Expression nesting depth (statements and function bodies).
    pub max_expr_depth: usize,
    /// Longest string, in bytes.
    pub max_string_size: usize,
    /// Longest array.
    pub max_array_size: usize,
    /// Largest map.
    pub max_map_size: usize,
    /// Variables in scope.
    pub max_variables: usize,
    /// Functions a script may define.
    pub max_functions: usize,
    /// Wall-clock budget per run.
    pub time_budget: Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 256,
            max_functions: 64,
            time_budget: Duration::from_millis(40),
        }
    }
}

thread_local! {
    // The deadline of the run on this thread: rhai evaluates synchronously on the calling
    // thread, and the shared engine's `on_progress` callback has no other way to know which run
    // it is serving.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The constants a script may read: `task`, `event`, `trigger`, `item`, `steps`, `now`.
pub const INPUTS: &[&str] = &["task", "event", "trigger", "item", "steps", "now"];

/// A compiled script.
#[derive(Debug, Clone)]
pub struct CompiledScript {
    ast: Arc<AST>,
}

/// The sandboxed engine. Cheap to share (`Arc` inside); compile once, run many times.
#[derive(Clone)]
pub struct Sandbox {
    engine: Arc<Engine>,
    limits: ScriptLimits,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// An engine with `limits`.
    pub fn new(limits: ScriptLimits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_variables(limits.max_variables)
            .set_max_functions(limits.max_functions)
            .set_max_modules(0)
            .set_strict_variables(true)
            .disable_symbol("eval")
            .disable_symbol("import")
            .disable_symbol("export")
            .on_print(|_| {})
            .on_debug(|_, _, _| {});
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.on_progress(|ops| {
            if ops % PROGRESS_CHECK_EVERY != 0 {
                return None;
            }
            match DEADLINE.get() {
                Some(deadline) if Instant::now() >= deadline => Some(Dynamic::from("time budget")),
                _ => None,
            }
        });
        Self { engine: Arc::new(engine), limits }
    }

    /// The process-wide engine with default limits (used to validate definitions).
    pub fn shared() -> &'static Sandbox {
        static SHARED: OnceLock<Sandbox> = OnceLock::new();
        SHARED.get_or_init(|| Sandbox::new(ScriptLimits::default()))
    }

    /// The limits in force.
    pub fn limits(&self) -> &ScriptLimits {
        &self.limits
    }

    /// Compiles a script (syntax errors, disabled symbols and depth limits surface here).
    pub fn compile(&self, source: &str) -> Result<CompiledScript> {
        // Strict variables: the inputs are the only free names a script may use, so a typo is
        // a compile error at validation, not a run-time failure.
        let mut scope = Scope::new();
        for name in INPUTS {
            scope.push_constant(*name, ());
        }
        let ast = self
            .engine
            .compile_with_scope(&scope, source)
            .map_err(|e| Error::Script(e.to_string()))?;
        Ok(CompiledScript { ast: Arc::new(ast) })
    }

    /// Runs a compiled script with `inputs` bound as constants; returns its value as JSON.
    /// Every limit is an [`Error::LimitExceeded`] naming it; other failures are
    /// [`Error::Script`].
    pub fn run(&self, script: &CompiledScript, inputs: &[(&str, &Value)]) -> Result<Value> {
        let mut scope = Scope::new();
        for (name, value) in inputs {
            let d = rhai::serde::to_dynamic(value).map_err(|e| Error::Script(e.to_string()))?;
            scope.push_constant_dynamic(name.to_string(), d);
        }
        let started = Instant::now();
        DEADLINE.set(Some(started + self.limits.time_budget));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &script.ast);
        DEADLINE.set(None);
        match result {
            Ok(v) => rhai::serde::from_dynamic::<Value>(&v)
                .map_err(|e| Error::Script(format!("the script's value has no JSON form: {e}"))),
            Err(e) => Err(self.classify(*e, started.elapsed())),
        }
    }

    /// Compiles and runs in one go (dry-runs, tests).
    pub fn eval(&self, source: &str, inputs: &[(&str, &Value)]) -> Result<Value> {
        self.run(&self.compile(source)?, inputs)
    }

    fn classify(&self, e: EvalAltResult, elapsed: Duration) -> Error {
        let l = &self.limits;
        match e {
            EvalAltResult::ErrorTerminated(..) => Error::limit(
                "script_time",
                format!("stopped after {elapsed:?} (budget {:?})", l.time_budget),
            ),
            EvalAltResult::ErrorTooManyOperations(..) => {
                Error::limit("script_operations", format!("more than {}", l.max_operations))
            }
            EvalAltResult::ErrorStackOverflow(..) => {
                Error::limit("script_call_depth", format!("deeper than {}", l.max_call_levels))
            }
            EvalAltResult::ErrorDataTooLarge(what, ..) => {
                Error::limit("script_data_size", format!("{what} too large"))
            }
            EvalAltResult::ErrorTooManyVariables(..) => {
                Error::limit("script_variables", format!("more than {}", l.max_variables))
            }
            other => Error::Script(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scripts_see_inputs_and_return_json() {
        let task = json!({"title": "Fix", "estimate": 3});
        let out = Sandbox::shared()
            .eval("#{ title: task.title + \"!\", double: task.estimate * 2 }", &[("task", &task)])
            .unwrap();
        assert_eq!(out, json!({"title": "Fix!", "double": 6}));
    }

    #[test]
    fn eval_import_and_unknown_variables_are_refused() {
        let s = Sandbox::shared();
        assert!(s.compile("eval(\"1\")").is_err());
        assert!(s.compile("import \"x\" as y; 1").is_err());
        assert!(s.eval("nope + 1", &[]).is_err());
    }
}
