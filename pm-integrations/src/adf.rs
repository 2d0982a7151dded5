//! Atlassian Document Format (ADF) ↔ markdown, for Jira Cloud descriptions and comments (REST
//! v3 speaks ADF only; pm stores markdown).
//!
//! Covered: paragraphs (lines kept as hard breaks), headings, bullet and ordered lists,
//! fenced code blocks, block quotes, rules; inline strong, emphasis, code, strike-through and
//! links. Other nodes (mentions, emoji, media, tables) degrade to their text so nothing
//! readable is lost. `to_markdown(from_markdown(md)) == md` for markdown written in that subset
//! (the round trip the sync relies on to see "unchanged" as unchanged).

use serde_json::{Value, json};

/// Markdown of an ADF document (`null` or a non-document gives `""`).
pub fn to_markdown(doc: &Value) -> String {
    blocks(doc["content"].as_array().map(Vec::as_slice).unwrap_or_default(), "")
}

fn blocks(nodes: &[Value], indent: &str) -> String {
    nodes
        .iter()
        .map(|n| block(n, indent))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn children(n: &Value) -> &[Value] {
    n["content"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn block(n: &Value, indent: &str) -> String {
    match n["type"].as_str().unwrap_or_default() {
        "paragraph" => inlines(children(n)),
        "heading" => {
            let level = n["attrs"]["level"].as_u64().unwrap_or(1).clamp(1, 6) as usize;
            format!("{} {}", "#".repeat(level), inlines(children(n)))
        }
        "bulletList" | "orderedList" => {
            let ordered = n["type"] == "orderedList";
            children(n)
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let marker = if ordered { format!("{}. ", i + 1) } else { "- ".to_owned() };
                    let inner = blocks(children(item), indent);
                    format!("{indent}{marker}{}", inner.replace('\n', &format!("\n{indent}  ")))
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        "codeBlock" => {
            let lang = n["attrs"]["language"].as_str().unwrap_or_default();
            let code: String = children(n).iter().filter_map(|t| t["text"].as_str()).collect();
            format!("```{lang}\n{code}\n```")
        }
        "blockquote" => blocks(children(n), indent)
            .lines()
            .map(|l| format!("> {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        "rule" => "---".to_owned(),
        // Panels, tables, media groups…: keep their text.
        _ if !children(n).is_empty() => {
            if children(n).iter().any(|c| c["type"] == "text") {
                inlines(children(n))
            } else {
                blocks(children(n), indent)
            }
        }
        _ => n["text"].as_str().unwrap_or_default().to_owned(),
    }
}

fn inlines(nodes: &[Value]) -> String {
    let mut out = String::new();
    for n in nodes {
        match n["type"].as_str().unwrap_or_default() {
            "text" => {
                let mut t = n["text"].as_str().unwrap_or_default().to_owned();
                let marks = n["marks"].as_array().cloned().unwrap_or_default();
                let has = |m: &str| marks.iter().any(|x| x["type"] == m);
                if has("code") {
                    t = format!("`{t}`");
                }
                if has("em") {
                    t = format!("*{t}*");
                }
                if has("strong") {
                    t = format!("**{t}**");
                }
                if has("strike") {
                    t = format!("~~{t}~~");
                }
                if let Some(link) = marks.iter().find(|x| x["type"] == "link") {
                    t = format!("[{t}]({})", link["attrs"]["href"].as_str().unwrap_or_default());
                }
                out.push_str(&t);
            }
            "hardBreak" => out.push('\n'),
            "mention" => out.push_str(n["attrs"]["text"].as_str().unwrap_or_default()),
            "emoji" => out.push_str(
                n["attrs"]["text"]
                    .as_str()
                    .or(n["attrs"]["shortName"].as_str())
                    .unwrap_or_default(),
            ),
            "inlineCard" => out.push_str(n["attrs"]["url"].as_str().unwrap_or_default()),
            _ => out.push_str(n["text"].as_str().unwrap_or_default()),
        }
    }
    out
}

/// An ADF document for markdown (`""` gives an empty document).
pub fn from_markdown(md: &str) -> Value {
    let lines: Vec<&str> = md.lines().collect();
    let mut content = Vec::new();
    let mut i = 0;
    let mut para: Vec<&str> = Vec::new();
    let flush = |para: &mut Vec<&str>, content: &mut Vec<Value>| {
        if !para.is_empty() {
            content.push(paragraph(&para.join("\n")));
            para.clear();
        }
    };
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_end();
        if let Some(lang) = trimmed.strip_prefix("```") {
            flush(&mut para, &mut content);
            let mut code = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_end().starts_with("```") {
                code.push(lines[i]);
                i += 1;
            }
            let mut node = json!({"type": "codeBlock", "content": [{"type": "text", "text": code.join("\n")}]});
            if !lang.is_empty() {
                node["attrs"] = json!({"language": lang});
            }
            content.push(node);
            i += 1;
            continue;
        }
        if trimmed.is_empty() {
            flush(&mut para, &mut content);
        } else if let Some((level, text)) = heading(trimmed) {
            flush(&mut para, &mut content);
            content.push(
                json!({"type": "heading", "attrs": {"level": level}, "content": inline(text)}),
            );
        } else if trimmed == "---" {
            flush(&mut para, &mut content);
            content.push(json!({"type": "rule"}));
        } else if list_item(trimmed).is_some() {
            flush(&mut para, &mut content);
            let ordered = list_item(trimmed).is_some_and(|(o, _)| o);
            let mut items = Vec::new();
            while i < lines.len() {
                match list_item(lines[i].trim_end()) {
                    Some((o, text)) if o == ordered => {
                        items.push(json!({"type": "listItem", "content": [paragraph(text)]}));
                        i += 1;
                    }
                    _ => break,
                }
            }
            let kind = if ordered { "orderedList" } else { "bulletList" };
            content.push(json!({"type": kind, "content": items}));
            continue;
        } else if trimmed.starts_with("> ") || trimmed == ">" {
            flush(&mut para, &mut content);
            let mut quoted = Vec::new();
            while i < lines.len() {
                let l = lines[i].trim_end();
                match l.strip_prefix("> ").or(if l == ">" { Some("") } else { None }) {
                    Some(q) => {
                        quoted.push(q);
                        i += 1;
                    }
                    None => break,
                }
            }
            let inner = from_markdown(&quoted.join("\n"));
            content.push(json!({"type": "blockquote", "content": inner["content"]}));
            continue;
        } else {
            para.push(line);
        }
        i += 1;
    }
    flush(&mut para, &mut content);
    json!({"type": "doc", "version": 1, "content": content})
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    let rest = line[level..].strip_prefix(' ')?;
    (1..=6).contains(&level).then_some((level, rest))
}

/// `(ordered, text)` of a list item line.
fn list_item(line: &str) -> Option<(bool, &str)> {
    if let Some(t) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
        return Some((false, t));
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 {
        return line[digits..].strip_prefix(". ").map(|t| (true, t));
    }
    None
}

fn paragraph(text: &str) -> Value {
    let mut content = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            content.push(json!({"type": "hardBreak"}));
        }
        content.extend(inline(line));
    }
    json!({"type": "paragraph", "content": content})
}

/// Inline markdown: `**strong**`, `*em*`/`_em_`, `` `code` ``, `~~strike~~`, `[text](url)`.
fn inline(s: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut plain = String::new();
    let mut rest = s;
    let push_plain = |plain: &mut String, out: &mut Vec<Value>| {
        if !plain.is_empty() {
            out.push(json!({"type": "text", "text": std::mem::take(plain)}));
        }
    };
    while !rest.is_empty() {
        let spans: [(&str, &str, &str); 5] = [
            ("**", "**", "strong"),
            ("~~", "~~", "strike"),
            ("`", "`", "code"),
            ("*", "*", "em"),
            ("_", "_", "em"),
        ];
        let mut matched = false;
        for (open, close, mark) in spans {
            if let Some(after) = rest.strip_prefix(open)
                && let Some(end) = after.find(close)
                && end > 0
            {
                push_plain(&mut plain, &mut out);
                out.push(json!({"type": "text", "text": &after[..end], "marks": [{"type": mark}]}));
                rest = &after[end + close.len()..];
                matched = true;
                break;
            }
        }
        if matched {
            continue;
        }
        if let Some(after) = rest.strip_prefix('[')
            && let Some(mid) = after.find("](")
            && let Some(end) = after[mid + 2..].find(')')
        {
            push_plain(&mut plain, &mut out);
            let text = &after[..mid];
            let href = &after[mid + 2..mid + 2 + end];
            out.push(json!({"type": "text", "text": text, "marks": [{"type": "link", "attrs": {"href": href}}]}));
            rest = &after[mid + 2 + end + 1..];
            continue;
        }
        let c = rest.chars().next().expect("rest is not empty");
        plain.push(c);
        rest = &rest[c.len_utf8()..];
    }
    push_plain(&mut plain, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_round_trips_through_adf() {
        let md = "# Login fails\n\nSteps with **bold**, *em*, `code`, ~~old~~ and [docs](https://x.test/a).\nSecond line.\n\n- one\n- two\n\n1. first\n2. second\n\n```rust\nfn main() {}\n```\n\n> quoted\n\n---";
        let adf = from_markdown(md);
        assert_eq!(adf["type"], "doc");
        assert_eq!(to_markdown(&adf), md);
    }

    #[test]
    fn jira_documents_become_markdown() {
        let adf = json!({"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [
                {"type": "text", "text": "Hello "},
                {"type": "text", "text": "world", "marks": [{"type": "strong"}]},
                {"type": "mention", "attrs": {"id": "1", "text": "@ann"}}
            ]},
            {"type": "panel", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "note"}]}]}
        ]});
        assert_eq!(to_markdown(&adf), "Hello **world**@ann\n\nnote");
        assert_eq!(to_markdown(&Value::Null), "");
        assert_eq!(from_markdown("")["content"], json!([]));
    }
}
