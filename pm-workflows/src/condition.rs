//! CEL conditions and expressions: compiled once, evaluated against one context per event.
//!
//! Variables an expression sees: `event` (the triggering event: `kind`, `actor`, `payload`,
//! `changes`, …), `task` (the task as it is now, when there is one), `trigger` (webhook or
//! manual input), `item` (inside a for-each), `steps` (outputs of earlier steps by id) and `now`
//! (microseconds since the Unix epoch). A condition holds only when it evaluates to `true`; an
//! evaluation error or a non-boolean result is "does not hold" and is recorded as such (fail
//! closed), never a panic.

use std::sync::Arc;

use serde_json::Value;

/// A compiled CEL program, shareable between threads and executions.
pub type Program = Arc<cel::Program>;

/// Compiles `expr`; the error is the parser's message.
pub fn compile(expr: &str) -> Result<Program, String> {
    if expr.trim().is_empty() {
        return Err("expression must not be empty".into());
    }
    cel::Program::compile(expr).map(Arc::new).map_err(|e| e.to_string())
}

/// The variables of one evaluation. Build it once per event and evaluate many programs against
/// it: converting JSON into CEL values dominates the cost of a single evaluation.
#[derive(Default)]
pub struct Scope {
    ctx: cel::Context<'static, 'static>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scope")
    }
}

impl Scope {
    /// An empty scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `name` to a JSON value (`null` when it cannot be represented).
    pub fn set(&mut self, name: &str, value: &Value) {
        if self.ctx.add_variable(name, value).is_err() {
            self.ctx.add_variable_from_value(name, cel::Value::Null);
        }
    }

    /// Builds a scope from `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Self {
        let mut s = Self::new();
        for (k, v) in pairs {
            s.set(k, v);
        }
        s
    }

    /// Evaluates a condition: `Ok(b)` for a boolean result, `Err(reason)` otherwise.
    pub fn holds(&self, program: &cel::Program) -> Result<bool, String> {
        match program.execute(&self.ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("expected a bool, got {:?}", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Evaluates an expression to a JSON value.
    pub fn value(&self, program: &cel::Program) -> Result<Value, String> {
        program.execute(&self.ctx).map_err(|e| e.to_string()).and_then(|v| to_json(&v))
    }
}

/// Converts a CEL value into JSON (functions and opaque values are not representable).
pub fn to_json(v: &cel::Value) -> Result<Value, String> {
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null)
        }
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::List(items) => {
            Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        cel::Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        other => return Err(format!("a {:?} value has no JSON form", other.type_of())),
    })
}

/// Whether a CEL result equals a JSON case value; numbers compare by value (`1 == 1.0`).
pub fn json_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_over_event_and_task() {
        let p = compile("task.priority == 'high' && event.kind == 'task.updated'").unwrap();
        let task = json!({"priority": "high"});
        let event = json!({"kind": "task.updated"});
        let scope = Scope::from_pairs([("task", &task), ("event", &event)]);
        assert_eq!(scope.holds(&p), Ok(true));
        let v = compile("size(task.priority) + 1").unwrap();
        assert_eq!(scope.value(&v), Ok(json!(5)));
        // A missing variable or a non-bool fails closed.
        assert!(scope.holds(&compile("nope.x == 1").unwrap()).is_err());
        assert!(scope.holds(&compile("1 + 1").unwrap()).is_err());
        assert!(compile("1 +").is_err());
        assert!(compile("  ").is_err());
    }
}
