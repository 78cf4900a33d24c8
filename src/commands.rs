//! Team commands: `.stagecraft/commands/NAME.luau` files returning `command{...}`.
//!
//! Discovery evaluates each file in its own fresh Luau state with no capabilities, no run and no
//! ledger, under a tight CPU and memory budget, only to read the descriptor: `stagecraft/command`
//! is real, every other `stagecraft/*` module is a stand-in whose functions refuse to run, and
//! project modules (`@lib/NAME`, relative paths) load through the same checks as in a run.
//! A file that fails becomes a [`Problem`] naming `file:line`; the other commands are unaffected.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use mlua::{Lua, LuaOptions, StdLib, Table, Value, VmState};

use crate::api::command::{CommandSpec, Descriptor, caller_location, valid_command_name};
use crate::runtime::fault::{OpError, message_of};
use crate::runtime::limits::thread_cpu_time;
use crate::runtime::loader;

/// Where team commands live, relative to the project root.
pub const COMMANDS_DIR: &str = ".stagecraft/commands";

/// CPU time one command file may take to declare itself.
pub const CPU_BUDGET: Duration = Duration::from_millis(500);
/// Memory one command file's state may use while declaring itself.
pub const MEMORY_BUDGET: usize = 32 * 1024 * 1024;

/// A command file that declared itself.
#[derive(Debug, Clone)]
pub struct TeamCommand {
    pub spec: CommandSpec,
    /// Project-relative path (the chunk name): `.stagecraft/commands/NAME.luau`.
    pub file: String,
    /// The source as read (the run uses exactly this text).
    pub source: String,
}

/// A command file that could not be used.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The command name the file stands for (its stem).
    pub name: String,
    /// `file:line: what is wrong` (no line when none applies).
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Default)]
pub struct Discovered {
    pub commands: Vec<TeamCommand>,
    pub problems: Vec<Problem>,
}

impl Discovered {
    pub fn find(&self, name: &str) -> Option<&TeamCommand> {
        self.commands.iter().find(|c| c.spec.name == name)
    }
    pub fn problem(&self, name: &str) -> Option<&Problem> {
        self.problems.iter().find(|p| p.name == name)
    }
}

/// Every `*.luau` file of `.stagecraft/commands/` under `root`, in name order. `builtins` are
/// the names a team command may not take.
pub fn discover(root: &Path, builtins: &[&str]) -> Discovered {
    let mut out = Discovered::default();
    let dir = root.join(COMMANDS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "luau"))
        .collect();
    files.sort();
    // Each file has its own state: read them on a few threads at once.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
        .min(files.len())
        .max(1);
    let per = files.len().div_ceil(workers);
    let results: Vec<Result<TeamCommand, Problem>> = if workers == 1 {
        files
            .iter()
            .map(|f| read_command(root, f, builtins))
            .collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(per.max(1))
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|f| read_command(root, f, builtins))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(Problem {
                            name: String::new(),
                            message: format!("{COMMANDS_DIR}: reading the command files failed"),
                        })]
                    })
                })
                .collect()
        })
    };
    for r in results {
        match r {
            Ok(c) => out.commands.push(c),
            Err(p) => out.problems.push(p),
        }
    }
    out
}

/// The file for command `name`, if there is one.
pub fn file_for(root: &Path, name: &str) -> Option<PathBuf> {
    let p = root.join(COMMANDS_DIR).join(format!("{name}.luau"));
    p.is_file().then_some(p)
}

/// Read one command file and evaluate its descriptor.
pub fn read_command(root: &Path, path: &Path, builtins: &[&str]) -> Result<TeamCommand, Problem> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = format!("{COMMANDS_DIR}/{stem}.luau");
    let problem = |message: String| Problem {
        name: stem.clone(),
        message,
    };
    if !valid_command_name(&stem) {
        return Err(problem(format!(
            "{file}: '{stem}' is not a valid command name (lowercase letters, digits and '-', \
             starting with a letter): rename the file"
        )));
    }
    let source =
        std::fs::read_to_string(path).map_err(|e| problem(format!("{file}: cannot read: {e}")))?;
    let spec = evaluate(root, &file, &source).map_err(problem)?;
    if spec.name != stem {
        return Err(problem(format!(
            "{file}:{}: command name '{}' does not match the file name: name it '{stem}' or \
             rename the file to {}.luau",
            spec.line, spec.name, spec.name
        )));
    }
    if builtins.contains(&stem.as_str()) {
        return Err(problem(format!(
            "{file}:{}: command '{stem}' clashes with the built-in `stagecraft {stem}`: rename \
             the file and its name",
            spec.line
        )));
    }
    Ok(TeamCommand { spec, file, source })
}

/// Run the chunk in a fresh, capability-less state and return its descriptor.
fn evaluate(root: &Path, file: &str, source: &str) -> Result<CommandSpec, String> {
    let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::new())
        .map_err(|e| format!("{file}: cannot start Luau: {e}"))?;
    setup(&lua, root).map_err(|e| format!("{file}: cannot set up the sandbox: {e}"))?;
    let start = thread_cpu_time();
    lua.set_interrupt(move |lua| {
        if thread_cpu_time().saturating_sub(start) > CPU_BUDGET {
            let at = caller_location(lua)
                .map(|(c, l)| format!("{c}:{l}: "))
                .unwrap_or_default();
            return Err(mlua::Error::runtime(format!(
                "{at}took more than {} ms of CPU time to declare the command (commands are read \
                 on every invocation: do the work inside run())",
                CPU_BUDGET.as_millis()
            )));
        }
        Ok(VmState::Continue)
    });
    lua.set_memory_limit(MEMORY_BUDGET)
        .map_err(|e| format!("{file}: {e}"))?;
    let value: Value = lua
        .load(source)
        .set_name(format!("@{file}"))
        .eval()
        .map_err(|e| match e {
            mlua::Error::MemoryError(_) => format!(
                "{file}: used more than {} MB of memory to declare the command",
                MEMORY_BUDGET / (1024 * 1024)
            ),
            e => located(file, &message_of(&e)),
        })?;
    match value {
        Value::UserData(ud) => match ud.borrow::<Descriptor>() {
            Ok(d) => Ok(d.spec.clone()),
            Err(_) => Err(not_a_descriptor(file, "a userdata")),
        },
        other => Err(not_a_descriptor(file, other.type_name())),
    }
}

fn not_a_descriptor(file: &str, got: &str) -> String {
    format!(
        "{file}: must end with `return command{{ ... }}` (with local command = \
         require(\"stagecraft/command\")), but returned {got}"
    )
}

/// Prefix `file:` unless the message already names a position.
fn located(file: &str, message: &str) -> String {
    if message.starts_with(file) || message.starts_with(".stagecraft/") {
        message.to_string()
    } else {
        format!("{file}: {message}")
    }
}

/// Globals of the descriptor state: a sandboxed standard library, a silent `print`, and a
/// `require` that cannot reach anything with effects.
fn setup(lua: &Lua, root: &Path) -> mlua::Result<()> {
    let g = lua.globals();
    for name in ["getfenv", "setfenv", "loadstring"] {
        g.set(name, Value::Nil)?;
    }
    g.set(
        "print",
        lua.create_function(|_, _: mlua::MultiValue| Ok(()))?,
    )?;
    lua.set_app_data(DescriptorLoader {
        root: root.to_path_buf(),
        loading: Default::default(),
    });
    lua.set_named_registry_value(LOADED, lua.create_table()?)?;
    g.set("require", lua.create_function(require)?)?;
    loader::install(lua, &g)?;
    lua.sandbox(true)?;
    Ok(())
}

/// Registry key of the descriptor state's loaded project modules (chunk name -> value).
const LOADED: &str = "stagecraft.commands.loaded";

/// The descriptor state's project root and the modules being loaded (cycle detection).
struct DescriptorLoader {
    root: PathBuf,
    loading: Mutex<HashSet<String>>,
}

fn require(lua: &Lua, name: String) -> mlua::Result<Value> {
    let here = caller_location(lua);
    let fail = |m: String| {
        let m = match &here {
            Some((chunk, line)) => format!("{chunk}:{line}: {m}"),
            None => m,
        };
        mlua::Error::runtime(m)
    };
    if let Some(module) = name.strip_prefix("stagecraft/") {
        if module == "command" {
            return crate::api::command::register(lua).map(Value::Table);
        }
        let known = crate::api::find(module).is_some()
            || loader::STDLIB
                .get_file(format!("stagecraft/{module}.luau"))
                .is_some();
        if !known {
            return Err(fail(format!("require: no module '{name}'")));
        }
        return stand_in(lua, &name).map(Value::Table);
    }
    let root = match lua.app_data_ref::<DescriptorLoader>() {
        Some(l) => l.root.clone(),
        None => return Err(fail("require: loader missing".into())),
    };
    let caller = loader::caller_chunk(lua);
    let (chunk, text) = loader::resolve_project_module(&root, &name, caller.as_deref())
        .map_err(|e: OpError| fail(e.message))?;
    {
        let Some(l) = lua.app_data_ref::<DescriptorLoader>() else {
            return Err(fail("require: loader missing".into()));
        };
        let loaded: Table = lua.named_registry_value(LOADED)?;
        match loaded.raw_get::<Value>(chunk.as_str())? {
            Value::Nil => {}
            v => return Ok(v),
        }
        let mut loading = l
            .loading
            .lock()
            .map_err(|_| fail("require: loader state poisoned".into()))?;
        if !loading.insert(chunk.clone()) {
            return Err(fail(format!("require: cyclic require of {chunk}")));
        }
    }
    let result = lua
        .load(text.as_str())
        .set_name(format!("@{chunk}"))
        .set_environment(loader::module_env(lua)?)
        .call::<Value>(());
    let Some(l) = lua.app_data_ref::<DescriptorLoader>() else {
        return Err(fail("require: loader missing".into()));
    };
    if let Ok(mut loading) = l.loading.lock() {
        loading.remove(&chunk);
    }
    let value = match result? {
        Value::Nil => Value::Boolean(true),
        v => v,
    };
    let loaded: Table = lua.named_registry_value(LOADED)?;
    loaded.raw_set(chunk.as_str(), value.clone())?;
    Ok(value)
}

/// A module whose every function raises: nothing with an effect can run while descriptors are
/// read, but `local exec = require("stagecraft/exec")` at the top of a command file works.
fn stand_in(lua: &Lua, name: &str) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let meta = lua.create_table()?;
    let module = name.to_string();
    meta.set(
        "__index",
        lua.create_function(move |lua, (_, key): (Value, String)| {
            let module = module.clone();
            lua.create_function(move |lua, _: mlua::MultiValue| -> mlua::Result<()> {
                let at = caller_location(lua)
                    .map(|(c, l)| format!("{c}:{l}: "))
                    .unwrap_or_default();
                Err(mlua::Error::runtime(format!(
                    "{at}{module}.{key} cannot run while stagecraft reads the command list: call \
                     it inside run()"
                )))
            })
        })?,
    )?;
    meta.set_readonly(true);
    t.set_metatable(Some(meta))?;
    t.set_readonly(true);
    Ok(t)
}
