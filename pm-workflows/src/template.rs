//! Text templates: `{{ task.reference }}` is replaced by the value at that dotted path in the
//! execution context (strings verbatim, other JSON compactly, missing values as nothing).
//! Deliberately not a language — logic belongs in CEL conditions or scripts.

use serde_json::Value;

/// Checks a template's syntax: balanced `{{ }}` around dotted paths of identifiers.
pub fn check(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "unclosed {{ in template".to_string())?;
        let path = after[..end].trim();
        let ok = !path.is_empty()
            && path.split('.').all(|seg| {
                !seg.is_empty()
                    && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !ok {
            return Err(format!("invalid template path {path:?}"));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// The dotted paths a (checked) template refers to, in order.
pub fn paths(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    out
}

/// Looks up a dotted path (`task.assignees.0`) in a JSON value.
pub fn lookup<'a>(ctx: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(ctx, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Renders a template against `ctx`. Syntax errors were rejected at validation; anything
/// malformed that slips through is copied literally.
pub fn render(text: &str, ctx: &Value) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        match lookup(ctx, after[..end].trim()) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(v) => out.push_str(&v.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Renders every string inside a JSON value as a template.
pub fn render_json(value: &Value, ctx: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(render(s, ctx)),
        Value::Array(a) => Value::Array(a.iter().map(|v| render_json(v, ctx)).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), render_json(v, ctx))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_paths_and_rejects_bad_syntax() {
        let ctx = json!({"task": {"reference": "PM-1", "estimate": 3, "tags": ["a"]}});
        assert_eq!(
            render("{{task.reference}} ({{ task.estimate }}) {{task.tags.0}}{{missing}}!", &ctx),
            "PM-1 (3) a!"
        );
        assert!(check("hi {{ task.title }}").is_ok());
        assert!(check("hi {{ task.title").is_err());
        assert!(check("hi {{ }}").is_err());
        assert!(check("hi {{ a b }}").is_err());
        assert_eq!(paths("{{ values.name }} and {{project.key}}"), ["values.name", "project.key"]);
    }
}
