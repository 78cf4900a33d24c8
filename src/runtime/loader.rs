//! `require`: `stagecraft/<module>` (Rust modules and the embedded stdlib), paths relative to the
//! requiring script inside the project, and installed recipe packages. Nothing else is readable.

use std::path::{Component, Path, PathBuf};

use include_dir::{Dir, include_dir};
use mlua::{Lua, Table, Value};

use super::fault::{OpError, kinds};

pub static STDLIB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/stdlib");

const LOADED: &str = "stagecraft.loaded";

/// Where a module's source comes from.
enum Source {
    Rust(fn(&Lua) -> mlua::Result<Table>),
    Luau { chunk: String, text: String },
}

pub async fn require(lua: Lua, name: String) -> mlua::Result<Value> {
    let ctx = super::ctx(&lua)?;
    ctx.stop.check().map_err(OpError::into_lua)?;
    let caller = caller_chunk(&lua);
    let (key, source) = resolve(&ctx, &name, caller.as_deref()).map_err(OpError::into_lua)?;

    let loaded = loaded_table(&lua)?;
    match loaded.raw_get::<Value>(key.as_str())? {
        Value::Nil => {}
        Value::LightUserData(_) => {
            return Err(
                OpError::invalid(format!("require: cyclic require of '{name}'"))
                    .hint("move the shared part into a third module")
                    .into_lua(),
            );
        }
        v => return Ok(v),
    }
    // Marker while loading, to catch cycles.
    loaded.raw_set(
        key.as_str(),
        Value::LightUserData(mlua::LightUserData(std::ptr::null_mut())),
    )?;
    let result = match source {
        Source::Rust(register) => register(&lua).map(Value::Table),
        Source::Luau { chunk, text } => {
            let sha = crate::ledger::sha256_hex(text.as_bytes());
            ctx.record_module(&chunk, &sha, &text);
            if let Ok(mut m) = ctx.modules.lock() {
                m.push((chunk.clone(), sha));
            }
            match lua
                .load(text.as_str())
                .set_name(format!("@{chunk}"))
                .into_function()
            {
                Ok(f) => f.call_async::<Value>(()).await,
                Err(e) => Err(e),
            }
        }
    };
    let value = match result {
        Ok(Value::Nil) => Value::Boolean(true),
        Ok(v) => v,
        Err(e) => {
            loaded.raw_set(key.as_str(), Value::Nil)?;
            return Err(e);
        }
    };
    if let Value::Table(t) = &value {
        t.set_readonly(true);
    }
    loaded.raw_set(key.as_str(), value.clone())?;
    Ok(value)
}

fn loaded_table(lua: &Lua) -> mlua::Result<Table> {
    match lua.named_registry_value::<Option<Table>>(LOADED)? {
        Some(t) => Ok(t),
        None => {
            let t = lua.create_table()?;
            lua.set_named_registry_value(LOADED, &t)?;
            Ok(t)
        }
    }
}

/// The chunk name (project-relative path) of the Lua function calling `require`: the nearest
/// frame loaded from a file (`@name`), skipping C frames and mlua's async trampoline.
fn caller_chunk(lua: &Lua) -> Option<String> {
    for level in 1..16 {
        let source = lua.inspect_stack(level, |d| d.source().source.map(|s| s.into_owned()))?;
        if let Some(s) = source
            && let Some(name) = s.strip_prefix('@')
        {
            return Some(name.to_string());
        }
    }
    None
}

fn resolve(
    ctx: &super::RunCtx,
    name: &str,
    caller: Option<&str>,
) -> Result<(String, Source), OpError> {
    if name.is_empty() {
        return Err(OpError::invalid("require: empty module name"));
    }
    if let Some(module) = name.strip_prefix("stagecraft/") {
        if let Some(m) = crate::api::find(module) {
            return Ok((name.to_string(), Source::Rust(m.register)));
        }
        let chunk = format!("stagecraft/{module}.luau");
        if let Some(text) = ctx.overlay.get(&chunk).cloned().or_else(|| {
            STDLIB
                .get_file(&chunk)
                .and_then(|f| f.contents_utf8())
                .map(str::to_string)
        }) {
            return Ok((chunk.clone(), Source::Luau { chunk, text }));
        }
        let known: Vec<&str> = crate::api::MODULES.iter().map(|m| m.name).collect();
        let hint = crate::util::did_you_mean(module, &known)
            .map(|s| format!("did you mean stagecraft/{s}?"))
            .unwrap_or_else(|| format!("available: {}", known.join(", ")));
        return Err(
            OpError::new(kinds::NOT_FOUND, format!("require: no module '{name}'")).hint(hint),
        );
    }
    if name.starts_with('/') {
        return Err(OpError::invalid(format!(
            "require: absolute paths are not allowed ('{name}')"
        ))
        .hint("require modules by a path relative to the script, e.g. require(\"./lib/util\")"));
    }
    let rel = if name.starts_with("./") || name.starts_with("../") {
        let base = caller
            .filter(|c| !c.starts_with("stagecraft/") && !Path::new(c).is_absolute())
            .and_then(|c| Path::new(c).parent().map(Path::to_path_buf))
            .unwrap_or_default();
        normalize(&base.join(name)).ok_or_else(|| {
            OpError::new(
                kinds::PERMISSION,
                format!("require: '{name}' leaves the project directory"),
            )
            .hint("modules must live inside the project")
        })?
    } else {
        // An installed recipe package: NAME or NAME/sub.
        let (pkg, sub) = name.split_once('/').unwrap_or((name, "init"));
        if !valid_segment(pkg) {
            return Err(OpError::invalid(format!(
                "require: invalid module name '{name}'"
            )));
        }
        let rel = normalize(
            &Path::new(crate::project::STATE_DIR)
                .join("recipes")
                .join(pkg)
                .join(sub),
        )
        .ok_or_else(|| OpError::invalid(format!("require: invalid module name '{name}'")))?;
        return find_file(ctx, &rel).ok_or_else(|| {
            OpError::new(kinds::NOT_FOUND, format!("require: no module '{name}'")).hint(
                "relative modules start with ./ or ../; stagecraft modules with stagecraft/; \
                 recipes must be installed with `stagecraft recipe add`",
            )
        });
    };
    find_file(ctx, &rel).ok_or_else(|| {
        OpError::new(
            kinds::NOT_FOUND,
            format!(
                "require: no module '{name}' (looked for {}[.luau|.lua|/init.luau])",
                rel.display()
            ),
        )
    })
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Resolve `.`/`..` lexically; `None` if the path climbs out of the root.
pub fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn find_file(ctx: &super::RunCtx, rel: &Path) -> Option<(String, Source)> {
    let base = rel.to_string_lossy().to_string();
    let candidates = if base.ends_with(".luau") || base.ends_with(".lua") {
        vec![base.clone()]
    } else {
        vec![
            format!("{base}.luau"),
            format!("{base}.lua"),
            format!("{base}/init.luau"),
            base.clone(),
        ]
    };
    for cand in candidates {
        if let Some(text) = ctx.overlay.get(&cand) {
            return Some((
                cand.clone(),
                Source::Luau {
                    chunk: cand,
                    text: text.clone(),
                },
            ));
        }
        let full = ctx.project.root.join(&cand);
        let Ok(canon) = full.canonicalize() else {
            continue;
        };
        if !canon.starts_with(&ctx.project.root) || !canon.is_file() {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&canon) {
            return Some((cand.clone(), Source::Luau { chunk: cand, text }));
        }
    }
    None
}
