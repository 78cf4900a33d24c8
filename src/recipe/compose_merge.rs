//! Merging a recipe's services, volumes and networks into the project's compose file, as text:
//! the user's lines (comments, order, formatting) stay as they are; the recipe's part is one
//! marked block per section, replaced as a whole on every apply.
//!
//! ```yaml
//! services:
//!   web:            # the user's
//!     image: web:1
//!   # --- stagecraft recipe: redis (managed) ---
//!   redis:
//!     image: redis:7.2
//!   # --- end stagecraft recipe: redis ---
//! ```

use serde_json::{Map, Value};

use crate::error::Error;

pub const SECTIONS: [&str; 3] = ["services", "volumes", "networks"];

pub fn begin_marker(recipe: &str) -> String {
    format!("# --- stagecraft recipe: {recipe} (managed) ---")
}

pub fn end_marker(recipe: &str) -> String {
    format!("# --- end stagecraft recipe: {recipe} ---")
}

/// The recipe that owns a marker line (`# --- stagecraft recipe: NAME (managed) ---`).
fn marker_owner(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("# --- stagecraft recipe: ")?
        .strip_suffix(" (managed) ---")
}

fn end_owner(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("# --- end stagecraft recipe: ")?
        .strip_suffix(" ---")
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// A top-level key line: `key:` or `key: value` at column 1.
fn top_key(line: &str) -> Option<(&str, &str)> {
    if line.starts_with([' ', '\t', '#', '-']) || line.trim().is_empty() {
        return None;
    }
    if line == "---" || line == "..." {
        return None;
    }
    let (k, rest) = line.split_once(':')?;
    let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
    Some((k, rest.trim()))
}

/// A mapping key at exactly `indent` spaces: its name.
fn key_at(line: &str, indent: usize) -> Option<&str> {
    if indent_of(line) != indent || !is_content(line) {
        return None;
    }
    let t = line.trim_start();
    if t.starts_with('-') {
        return None;
    }
    let (k, _) = t.split_once(':')?;
    Some(k.trim().trim_matches(|c| c == '"' || c == '\''))
}

/// Merge one recipe's fragment into `existing` (None: no compose file yet).
pub fn merge(
    file: &str,
    existing: Option<&str>,
    recipe: &str,
    sections: &[(&str, &Map<String, Value>)],
) -> Result<String, Error> {
    let mut text = match existing {
        Some(t) => t.to_string(),
        None => String::from(
            "# Compose file created by `stagecraft recipe apply`. Add your own services and\n\
             # edit freely outside the blocks marked \"managed\": a recipe replaces its block.\n",
        ),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for (section, entries) in sections {
        text = merge_section(file, &text, recipe, section, entries)?;
    }
    Ok(text)
}

fn merge_section(
    file: &str,
    text: &str,
    recipe: &str,
    section: &str,
    entries: &Map<String, Value>,
) -> Result<String, Error> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let key_line = lines
        .iter()
        .position(|l| top_key(l).is_some_and(|(k, _)| k == section));
    let Some(key_line) = key_line else {
        if entries.is_empty() {
            return Ok(text.to_string());
        }
        // No such section yet: add it at the end.
        if lines.last().is_some_and(|l| !l.trim().is_empty()) {
            lines.push(String::new());
        }
        lines.push(format!("{section}:"));
        lines.extend(block(recipe, entries, 2));
        return Ok(join(lines));
    };
    // `services: {}` (or null) becomes a block mapping; other inline values cannot be merged into.
    if let Some((_, inline)) = top_key(&lines[key_line]) {
        let value = inline.split(" #").next().unwrap_or("").trim();
        match value {
            "" => {}
            "{}" | "null" | "~" => {
                if !entries.is_empty() {
                    lines[key_line] = format!("{section}:");
                }
            }
            _ => {
                return Err(Error::usage(format!(
                    "{file}:{}: {section}: is written inline; recipe {recipe} cannot add to it",
                    key_line + 1
                ))
                .with_hint(format!(
                    "write {section}: as a block mapping (one key per line)"
                )));
            }
        }
    }
    let end = (key_line + 1..lines.len())
        .find(|&i| top_key(&lines[i]).is_some())
        .unwrap_or(lines.len());
    let indent = (key_line + 1..end)
        .map(|i| &lines[i])
        .find(|l| is_content(l))
        .map(|l| indent_of(l))
        .filter(|n| *n > 0)
        .unwrap_or(2);
    // Our block, if any, and who owns every key already in the section.
    let mut ours: Option<(usize, usize)> = None;
    let mut owner: Option<String> = None;
    let mut owner_start = 0;
    let mut existing: Vec<(String, usize, Option<String>)> = Vec::new();
    for (i, l) in lines.iter().enumerate().take(end).skip(key_line + 1) {
        if let Some(o) = marker_owner(l) {
            owner = Some(o.to_string());
            owner_start = i;
            continue;
        }
        if let Some(o) = end_owner(l) {
            if o == recipe && owner.as_deref() == Some(recipe) {
                ours = Some((owner_start, i));
            }
            owner = None;
            continue;
        }
        if let Some(k) = key_at(l, indent) {
            existing.push((k.to_string(), i + 1, owner.clone()));
        }
    }
    if owner.as_deref() == Some(recipe) {
        return Err(Error::usage(format!(
            "{file}:{}: the managed block of recipe {recipe} in {section}: has no end marker",
            owner_start + 1
        ))
        .with_hint(format!(
            "restore the line `{}` or remove the block",
            end_marker(recipe)
        )));
    }
    for name in entries.keys() {
        if let Some((_, line, by)) = existing
            .iter()
            .find(|(k, _, by)| k == name && by.as_deref() != Some(recipe))
        {
            let who = match by {
                Some(other) => format!("by recipe {other}"),
                None => "by you".to_string(),
            };
            let noun = section.trim_end_matches('s');
            return Err(Error::usage(format!(
                "{file}:{line}: {section}.{name} is already defined ({who}); recipe {recipe} adds a {noun} named {name}"
            ))
            .with_hint(format!(
                "rename or remove the existing {noun}, or give the recipe another name for it (see `stagecraft recipe show {recipe}`)"
            )));
        }
    }
    let new_block = if entries.is_empty() {
        Vec::new()
    } else {
        block(recipe, entries, indent)
    };
    match ours {
        Some((b, e)) => {
            let removed = new_block.is_empty();
            lines.splice(b..=e, new_block);
            // A section left without entries would read as null: make it an empty mapping.
            let end = (key_line + 1..lines.len())
                .find(|&i| top_key(&lines[i]).is_some())
                .unwrap_or(lines.len());
            if removed && !lines[key_line + 1..end].iter().any(|l| is_content(l)) {
                let comment = lines[key_line]
                    .split_once(" #")
                    .map(|(_, c)| format!("  #{c}"))
                    .unwrap_or_default();
                lines[key_line] = format!("{section}: {{}}{comment}");
            }
        }
        None if !new_block.is_empty() => {
            // After the section's last indented line (a comment at column 1 belongs to what
            // follows).
            let mut at = key_line + 1;
            for (i, l) in lines.iter().enumerate().take(end).skip(key_line + 1) {
                if l.starts_with(' ') && !l.trim().is_empty() {
                    at = i + 1;
                }
            }
            lines.splice(at..at, new_block);
        }
        None => {}
    }
    Ok(join(lines))
}

fn join(lines: Vec<String>) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn block(recipe: &str, entries: &Map<String, Value>, indent: usize) -> Vec<String> {
    let pad = " ".repeat(indent);
    let mut out = vec![format!("{pad}{}", begin_marker(recipe))];
    for (k, v) in ordered(entries) {
        emit(&mut out, k, v, indent, indent.max(2));
    }
    out.push(format!("{pad}{}", end_marker(recipe)));
    out
}

/// Keys in the order people expect in a compose service; others after, by name.
const PREFERRED: &[&str] = &[
    "image",
    "build",
    "container_name",
    "hostname",
    "command",
    "entrypoint",
    "user",
    "working_dir",
    "restart",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "networks",
    "depends_on",
    "healthcheck",
    "labels",
];

fn ordered(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<(&String, &Value)> = m.iter().collect();
    v.sort_by_key(|(k, _)| {
        (
            PREFERRED
                .iter()
                .position(|p| p == k)
                .unwrap_or(PREFERRED.len()),
            k.to_string(),
        )
    });
    v
}

/// Emit `key: value` at `indent`, nested mappings and lists `step` further in.
fn emit(out: &mut Vec<String>, key: &str, v: &Value, indent: usize, step: usize) {
    let pad = " ".repeat(indent);
    let k = scalar_str(key);
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push(format!("{pad}{k}:"));
            for (ck, cv) in ordered(m) {
                emit(out, ck, cv, indent + step, step);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            out.push(format!("{pad}{k}:"));
            for item in a {
                emit_item(out, item, indent + step, step);
            }
        }
        other => out.push(format!("{pad}{k}: {}", scalar(other))),
    }
}

fn emit_item(out: &mut Vec<String>, v: &Value, indent: usize, step: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut inner = Vec::new();
            for (ck, cv) in ordered(m) {
                emit(&mut inner, ck, cv, indent + 2, step);
            }
            // `- first: x` then the rest aligned under it.
            if let Some(first) = inner.first_mut() {
                *first = format!("{pad}- {}", first.trim_start());
            }
            out.extend(inner);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push(format!("{pad}-"));
            for item in a {
                emit_item(out, item, indent + step, step);
            }
        }
        other => out.push(format!("{pad}- {}", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_str(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string as YAML: plain when it cannot be read as anything else (in YAML 1.1 or 1.2), else
/// double-quoted.
pub fn scalar_str(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | ':'))
        && !s.ends_with(':')
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn merges_into_a_users_file_and_replaces_on_reapply() {
        let user = "# my stack\nservices:\n  web:   # the app\n    image: web:1\n\n# data\nvolumes:\n  data: {}\n";
        let s = obj(json!({ "redis": { "image": "redis:7.2", "ports": ["6379:6379"] } }));
        let v = obj(json!({ "redis_data": {} }));
        let out = merge(
            "docker-compose.yml",
            Some(user),
            "redis",
            &[("services", &s), ("volumes", &v)],
        )
        .expect("merges");
        assert_eq!(
            out,
            "# my stack\nservices:\n  web:   # the app\n    image: web:1\n  # --- stagecraft recipe: redis (managed) ---\n  redis:\n    image: redis:7.2\n    ports:\n      - \"6379:6379\"\n  # --- end stagecraft recipe: redis ---\n\n# data\nvolumes:\n  data: {}\n  # --- stagecraft recipe: redis (managed) ---\n  redis_data: {}\n  # --- end stagecraft recipe: redis ---\n"
        );
        let again = merge(
            "docker-compose.yml",
            Some(&out),
            "redis",
            &[("services", &s), ("volumes", &v)],
        )
        .expect("re-merges");
        assert_eq!(again, out);
    }

    #[test]
    fn a_clash_with_a_user_service_names_the_line() {
        let user = "services:\n  web:\n    image: a\n  redis:\n    image: mine\n";
        let s = obj(json!({ "redis": { "image": "redis" } }));
        let e = merge("compose.yaml", Some(user), "redis", &[("services", &s)]).expect_err("clash");
        assert!(
            e.message
                .starts_with("compose.yaml:4: services.redis is already defined (by you)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn removing_the_last_entry_leaves_an_empty_mapping() {
        let v = obj(json!({ "data": {} }));
        let with = merge(
            "c.yml",
            Some("services:\n  a:\n    image: a\n"),
            "r",
            &[("volumes", &v)],
        )
        .expect("merges");
        let empty = Map::new();
        let without = merge("c.yml", Some(&with), "r", &[("volumes", &empty)]).expect("merges");
        assert_eq!(without, "services:\n  a:\n    image: a\n\nvolumes: {}\n");
        let again = merge("c.yml", Some(&without), "r", &[("volumes", &v)]).expect("merges");
        assert_eq!(again, with);
    }

    #[test]
    fn scalars() {
        assert_eq!(scalar_str("redis"), "redis");
        assert_eq!(scalar_str("yes"), "\"yes\"");
        assert_eq!(scalar_str("6379:6379"), "\"6379:6379\"");
        assert_eq!(scalar_str("${PW}"), "\"${PW}\"");
        assert_eq!(scalar_str("7.2"), "\"7.2\"");
    }
}
