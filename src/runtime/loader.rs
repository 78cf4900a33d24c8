//! `require`: `stagecraft/<module>` (Rust modules and the embedded stdlib), paths relative to the
//! requiring script inside the project, the project's shared helpers `@lib/NAME`
//! (`.stagecraft/lib/NAME.luau`) and installed recipe packages. Nothing else is readable:
//! not `.env` (secrets), not `.stagecraft/` outside `lib/` and installed recipes, not a file a
//! symlink takes out of the project (or, for `@lib`, out of `.stagecraft/lib/`), and only
//! `.luau`/`.lua` files.
//!
//! Each module runs in its own global environment that reads through to the sandbox's globals, so
//! globals one script sets never leak into another module. A module being loaded by one task is
//! waited for by the others; a require cycle (within a task, or across tasks) is an error.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use include_dir::{Dir, include_dir};
use mlua::{Lua, Table, Value};
use tokio::sync::Notify;

use super::fault::{OpError, kinds};

pub static STDLIB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/stdlib");

const LOADED: &str = "stagecraft.loaded";
/// The sandbox's global table (read-only once sealed): what module environments read through to.
const GLOBALS: &str = "stagecraft.globals";

/// Where a module's source comes from.
enum Source {
    Rust(fn(&Lua) -> mlua::Result<Table>),
    Luau { chunk: String, text: String },
}

/// Modules being loaded right now, so concurrent tasks wait instead of seeing a false cycle.
#[derive(Default)]
struct Loading(Mutex<LoadState>);

#[derive(Default)]
struct LoadState {
    /// Module key → the task loading it, and how to wake the tasks waiting for it.
    holders: HashMap<String, (String, Arc<Notify>)>,
    /// Task path → the module keys it is loading, outermost first.
    stacks: HashMap<String, Vec<String>>,
    /// Task path → the module key it waits for (being loaded by another task).
    waits: HashMap<String, String>,
}

/// Called once by the sandbox before it is sealed, with the global table scripts see.
pub fn install(lua: &Lua, globals: &Table) -> mlua::Result<()> {
    lua.set_named_registry_value(GLOBALS, globals)?;
    lua.set_app_data(Arc::new(Loading::default()));
    Ok(())
}

fn loading(lua: &Lua) -> mlua::Result<Arc<Loading>> {
    lua.app_data_ref::<Arc<Loading>>()
        .map(|l| l.clone())
        .ok_or_else(|| mlua::Error::runtime("stagecraft module loader not installed"))
}

/// `b` is a subtask (at any depth) of `a`.
fn is_ancestor(a: &str, b: &str) -> bool {
    b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'/'
}

/// This task holds `key` while loading it; dropping (success, error or cancellation) releases it.
struct Held {
    loading: Arc<Loading>,
    key: String,
    task: String,
    notify: Arc<Notify>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut s) = self.loading.0.lock() {
            s.holders.remove(&self.key);
            if let Some(stack) = s.stacks.get_mut(&self.task) {
                stack.retain(|k| k != &self.key);
                if stack.is_empty() {
                    s.stacks.remove(&self.task);
                }
            }
        }
        self.notify.notify_waiters();
    }
}

/// This task waits for another task to finish loading a module.
struct Waiting {
    loading: Arc<Loading>,
    task: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut s) = self.loading.0.lock() {
            s.waits.remove(&self.task);
        }
    }
}

enum Claim {
    /// Nobody is loading it: this task loads it now.
    Load(Held),
    /// Another task is loading it: wait, then look again.
    Wait(Arc<Notify>, Waiting),
}

impl Loading {
    fn claim(self: &Arc<Self>, key: &str, task: &str) -> Result<Claim, OpError> {
        let mut s = self
            .0
            .lock()
            .map_err(|_| OpError::new("internal", "require: loader state poisoned"))?;
        let Some((holder, notify)) = s.holders.get(key).cloned() else {
            let notify = Arc::new(Notify::new());
            s.holders
                .insert(key.to_string(), (task.to_string(), notify.clone()));
            s.stacks
                .entry(task.to_string())
                .or_default()
                .push(key.to_string());
            return Ok(Claim::Load(Held {
                loading: self.clone(),
                key: key.to_string(),
                task: task.to_string(),
                notify,
            }));
        };
        if holder == task {
            let stack = s.stacks.get(task).cloned().unwrap_or_default();
            let start = stack.iter().position(|k| k == key).unwrap_or(0);
            let mut chain: Vec<&str> = stack[start..].iter().map(String::as_str).collect();
            chain.push(key);
            return Err(cycle(format!(
                "require: cyclic require: {}",
                chain.join(" -> ")
            )));
        }
        if s.blocked_on(&holder, task) {
            return Err(cycle(format!(
                "require: cyclic require across tasks: {key} is being loaded by task {holder}, \
                 which waits for task {task}"
            )));
        }
        s.waits.insert(task.to_string(), key.to_string());
        Ok(Claim::Wait(
            notify,
            Waiting {
                loading: self.clone(),
                task: task.to_string(),
            },
        ))
    }
}

impl LoadState {
    /// Whether `from` cannot finish before `task` does: it waits (through module waits, or by
    /// awaiting its own subtasks) for `task` or for a task that awaits `task`.
    fn blocked_on(&self, from: &str, task: &str) -> bool {
        let mut seen = HashSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(t) = todo.pop() {
            if t == task || is_ancestor(&t, task) {
                return true;
            }
            if !seen.insert(t.clone()) {
                continue;
            }
            if let Some(key) = self.waits.get(&t)
                && let Some((h, _)) = self.holders.get(key)
            {
                todo.push(h.clone());
            }
            // A task with live subtasks is awaiting them.
            for d in self.waits.keys().chain(self.stacks.keys()) {
                if is_ancestor(&t, d) {
                    todo.push(d.clone());
                }
            }
        }
        false
    }
}

fn cycle(message: String) -> OpError {
    OpError::invalid(message).hint("move the shared part into a third module")
}

pub async fn require(lua: Lua, name: String) -> mlua::Result<Value> {
    let ctx = super::ctx(&lua)?;
    ctx.stop.check().map_err(OpError::into_lua)?;
    let caller = caller_chunk(&lua);
    let (key, source) = resolve(&ctx.project.root, &ctx.overlay, &name, caller.as_deref())
        .map_err(OpError::into_lua)?;

    let loaded = loaded_table(&lua)?;
    let loading = loading(&lua)?;
    let task = ctx
        .tasks
        .current()
        .map(|t| t.path.clone())
        .unwrap_or_else(|| "main".to_string());
    let _held = loop {
        ctx.stop.check().map_err(OpError::into_lua)?;
        match loaded.raw_get::<Value>(key.as_str())? {
            Value::Nil => {}
            v => return Ok(v),
        }
        match loading.claim(&key, &task).map_err(OpError::into_lua)? {
            Claim::Load(held) => break held,
            Claim::Wait(notify, waiting) => {
                notify.notified().await;
                drop(waiting);
            }
        }
    };
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
                .set_environment(module_env(&lua)?)
                .into_function()
            {
                Ok(f) => f.call_async::<Value>(()).await,
                Err(e) => Err(e),
            }
        }
    };
    let value = match result? {
        Value::Nil => Value::Boolean(true),
        v => v,
    };
    if let Value::Table(t) = &value {
        freeze(t, 0);
    }
    loaded.raw_set(key.as_str(), value.clone())?;
    Ok(value)
}

/// A fresh global environment for one module: its own writes stay in it, reads fall through to
/// the sandbox's (read-only) globals.
pub(crate) fn module_env(lua: &Lua) -> mlua::Result<Table> {
    let globals: Table = lua.named_registry_value(GLOBALS)?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", globals)?;
    meta.set_readonly(true);
    let env = lua.create_table()?;
    env.set_metatable(Some(meta))?;
    Ok(env)
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
pub(crate) fn caller_chunk(lua: &Lua) -> Option<String> {
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

/// Where the shared helpers of `@lib/NAME` live, relative to the project root.
pub const LIB_DIR: &str = ".stagecraft/lib";

/// Resolve a module that lives in the project (relative, `@lib/NAME` or a recipe package) to its
/// chunk name and source, with the same checks as `require`. `stagecraft/*` names are not
/// handled here. Used where no run exists (reading team command descriptors).
pub fn resolve_project_module(
    root: &Path,
    name: &str,
    caller: Option<&str>,
) -> Result<(String, String), OpError> {
    if name.starts_with("stagecraft/") {
        return Err(OpError::invalid(format!(
            "require: '{name}' is not a project module"
        )));
    }
    match resolve(root, &HashMap::new(), name, caller)? {
        (_, Source::Luau { chunk, text }) => Ok((chunk, text)),
        (_, Source::Rust(_)) => Err(OpError::invalid(format!(
            "require: '{name}' is not a project module"
        ))),
    }
}

/// `@lib/NAME` (or `@lib/dir/NAME`): the project-relative path it names, without extension.
fn lib_path(name: &str, rest: &str) -> Result<PathBuf, OpError> {
    let Some((alias, sub)) = rest.split_once('/') else {
        return Err(OpError::invalid(format!(
            "require: '{name}' names no module: write @lib/NAME for {LIB_DIR}/NAME.luau"
        )));
    };
    if alias != "lib" {
        return Err(OpError::new(
            kinds::NOT_FOUND,
            format!("require: unknown alias '@{alias}' in '{name}'"),
        )
        .hint(format!(
            "the only alias is @lib, for the project's {LIB_DIR}/"
        )));
    }
    if !sub.split('/').all(valid_segment) {
        return Err(OpError::new(
            kinds::PERMISSION,
            format!("permission denied: require: '{name}' is not a plain module name inside {LIB_DIR}/"),
        )
        .hint("write @lib/NAME or @lib/DIR/NAME (letters, digits, '-' and '_'; no '..', no extension)"));
    }
    Ok(Path::new(LIB_DIR).join(sub))
}

fn resolve(
    root: &Path,
    overlay: &HashMap<String, String>,
    name: &str,
    caller: Option<&str>,
) -> Result<(String, Source), OpError> {
    if name.is_empty() {
        return Err(OpError::invalid("require: empty module name"));
    }
    // `@stagecraft/NAME` is how editors reach the definitions `stagecraft types` writes (the
    // `.luaurc` alias `stagecraft`): the same module as `stagecraft/NAME`, loaded once.
    let name = name
        .strip_prefix('@')
        .filter(|rest| rest.starts_with("stagecraft/"))
        .unwrap_or(name);
    if let Some(rest) = name.strip_prefix('@') {
        let rel = lib_path(name, rest)?;
        return find_file(root, overlay, name, &rel, Some(Path::new(LIB_DIR)))?.ok_or_else(|| {
            OpError::new(
                kinds::NOT_FOUND,
                format!(
                    "require: no module '{name}' (looked for {}.luau, .lua and /init.luau)",
                    rel.display()
                ),
            )
            .hint(format!(
                "shared helpers live in the project's {LIB_DIR}/ folder"
            ))
        });
    }
    if let Some(module) = name.strip_prefix("stagecraft/") {
        if let Some(m) = crate::api::find(module) {
            return Ok((name.to_string(), Source::Rust(m.register)));
        }
        let chunk = format!("stagecraft/{module}.luau");
        if let Some(text) = overlay.get(&chunk).cloned().or_else(|| {
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
        return find_file(root, overlay, name, &rel, None)?.ok_or_else(|| {
            OpError::new(kinds::NOT_FOUND, format!("require: no module '{name}'")).hint(
                "relative modules start with ./ or ../; stagecraft modules with stagecraft/; \
                 recipe packages are looked up in .stagecraft/recipes/NAME/",
            )
        });
    };
    find_file(root, overlay, name, &rel, None)?.ok_or_else(|| {
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

/// Whether a project-relative path may hold a module: never `.env`/`.env.*` at the root (secrets,
/// read only through `stagecraft/secrets`) and nothing in `.stagecraft/` but the shared helpers
/// (`lib/`) and installed recipes.
fn loadable(rel: &Path) -> bool {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [one] => one != ".env" && !one.starts_with(".env."),
        [first, second, ..] if first == crate::project::STATE_DIR => {
            second == "recipes" || second == "lib"
        }
        _ => true,
    }
}

/// The module file for `rel` (tried with `.luau`, `.lua` and `/init.luau`): recorded sources
/// first, then the file, which must resolve (symlinks followed) inside the project, and inside
/// `within` when given.
fn find_file(
    root: &Path,
    overlay: &HashMap<String, String>,
    name: &str,
    rel: &Path,
    within: Option<&Path>,
) -> Result<Option<(String, Source)>, OpError> {
    let denied = |why: &str| {
        OpError::new(
            kinds::PERMISSION,
            format!("permission denied: require: '{name}' {why}"),
        )
        .hint("modules are .luau/.lua files inside the project")
    };
    if !loadable(rel) {
        return Err(denied(
            "is not a module file (secrets and the ledger are not loadable)",
        ));
    }
    let base = rel.to_string_lossy().to_string();
    let candidates = if base.ends_with(".luau") || base.ends_with(".lua") {
        vec![base.clone()]
    } else {
        vec![
            format!("{base}.luau"),
            format!("{base}.lua"),
            format!("{base}/init.luau"),
        ]
    };
    for cand in candidates {
        if let Some(text) = overlay.get(&cand) {
            return Ok(Some((
                cand.clone(),
                Source::Luau {
                    chunk: cand,
                    text: text.clone(),
                },
            )));
        }
        let full = root.join(&cand);
        let Ok(canon) = full.canonicalize() else {
            continue;
        };
        let Ok(inside) = canon.strip_prefix(root) else {
            return Err(denied(&format!(
                "resolves to {}, outside the project directory (a symlink?)",
                canon.display()
            )));
        };
        if !loadable(inside) {
            return Err(denied(&format!(
                "resolves to {} (secrets and the ledger are not loadable)",
                inside.display()
            )));
        }
        if let Some(dir) = within
            && !inside.starts_with(dir)
        {
            return Err(denied(&format!(
                "resolves to {}, outside {} (a symlink?)",
                inside.display(),
                dir.display()
            )));
        }
        if !canon.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&canon)
            .map_err(|e| OpError::io(format!("require: cannot read {cand}: {e}")))?;
        return Ok(Some((cand.clone(), Source::Luau { chunk: cand, text })));
    }
    Ok(None)
}

/// Freeze a module's table and every table reachable from it (and their metatables), so no
/// script can change what another sees. Modules keep mutable state in locals, not in exports.
fn freeze(t: &Table, depth: usize) {
    if depth > 64 || t.is_readonly() {
        return;
    }
    t.set_readonly(true);
    if let Some(meta) = t.metatable() {
        freeze(&meta, depth + 1);
    }
    for (_, v) in t.pairs::<Value, Value>().flatten() {
        if let Value::Table(inner) = v {
            freeze(&inner, depth + 1);
        }
    }
}
