//! `stagecraft/command`: `command{ name=, about=, args={...}, run=fn }` declares a team command
//! (`.stagecraft/commands/NAME.luau`). The table is validated strictly when it is declared and
//! becomes a descriptor: the CLI builds the command's arguments and help from it, and a run calls
//! its `run(args)`. Pure: not recorded.

use mlua::{Function, Lua, MetaMethod, Table, UserData, UserDataFields, Value};
use serde::{Deserialize, Serialize};

use super::from_json;
use crate::runtime::fault::OpError;
use crate::runtime::value::{ToJson, to_json};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let f = lua.create_function(command)?;
    t.set("command", f)?;
    // `require("stagecraft/command")` is itself callable: `command{...}`.
    let meta = lua.create_table()?;
    meta.set(
        MetaMethod::Call.name(),
        lua.create_function(|lua, (_, spec): (Value, Value)| command(lua, spec))?,
    )?;
    t.set_metatable(Some(meta))?;
    Ok(t)
}

/// Names a command argument may not take: the options every team command has.
pub const RESERVED: &[&str] = &[
    "help",
    "allow",
    "allow_all",
    "cpu_limit",
    "memory_limit",
    "timeout",
    "ledger",
    "json",
];

/// The type of an argument's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgType {
    String,
    Number,
    Integer,
    Boolean,
}

impl ArgType {
    pub fn as_str(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Number => "number",
            ArgType::Integer => "integer",
            ArgType::Boolean => "boolean",
        }
    }
}

/// One argument as written in the command file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArg {
    name: String,
    #[serde(default)]
    help: Option<String>,
    #[serde(default, rename = "type")]
    ty: Option<ArgType>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<serde_json::Value>,
    #[serde(default)]
    flag: bool,
    #[serde(default)]
    positional: bool,
    #[serde(default)]
    list: bool,
}

/// The command table as written, without `run`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    name: String,
    about: String,
    #[serde(default, deserialize_with = "super::seq")]
    args: Vec<serde_json::Value>,
}

/// A validated argument.
#[derive(Debug, Clone, Serialize)]
pub struct ArgSpec {
    pub name: String,
    pub help: Option<String>,
    #[serde(rename = "type")]
    pub ty: ArgType,
    pub required: bool,
    pub default: Option<serde_json::Value>,
    /// A `--name` switch without a value (boolean).
    pub flag: bool,
    /// Given by position instead of `--name VALUE`.
    pub positional: bool,
    /// Repeatable (`--name a --name b`, or the last positional taking the rest): an array.
    pub list: bool,
}

impl ArgSpec {
    /// The `--long` form of the option (`dry_run` -> `dry-run`).
    pub fn long(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// A validated command declaration.
#[derive(Debug, Clone, Serialize)]
pub struct CommandSpec {
    pub name: String,
    pub about: String,
    pub args: Vec<ArgSpec>,
    /// Line of the `command{...}` call in the command file (0 when unknown).
    pub line: u32,
}

/// What `command{...}` returns: the spec and the `run` function.
pub struct Descriptor {
    pub spec: CommandSpec,
    pub run: Function,
}

impl UserData for Descriptor {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, d| Ok(d.spec.name.clone()));
        fields.add_field_method_get("about", |_, d| Ok(d.spec.about.clone()));
        fields.add_field_method_get("run", |_, d| Ok(d.run.clone()));
    }
}

/// The chunk and line of the innermost Lua frame loaded from a file (`file.luau`, 12): the
/// caller of a Rust function, or the running code in an interrupt.
pub fn caller_location(lua: &Lua) -> Option<(String, u32)> {
    for level in 0..8 {
        let found = lua.inspect_stack(level, |d| {
            let source = d.source().source.map(|s| s.into_owned());
            (source, d.current_line())
        })?;
        if let (Some(s), Some(line)) = found
            && let Some(name) = s.strip_prefix('@')
        {
            return Some((name.to_string(), u32::try_from(line).unwrap_or(0)));
        }
    }
    None
}

/// Whether `s` is a valid command word: lowercase letters and digits in `-`-separated parts,
/// starting with a letter, at most 40 characters.
pub fn valid_command_name(s: &str) -> bool {
    s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.split('-').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

fn valid_arg_name(s: &str) -> bool {
    s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.ends_with('_')
        && !s.contains("__")
}

fn command(lua: &Lua, spec: Value) -> mlua::Result<Descriptor> {
    let (chunk, line) = caller_location(lua).unwrap_or_default();
    let at = |m: String| -> mlua::Error {
        let m = if chunk.is_empty() {
            m
        } else {
            format!("{chunk}:{line}: {m}")
        };
        OpError::invalid(m)
            .hint("see docs/commands.md for the fields of command{...}")
            .into_lua()
    };
    let Value::Table(t) = spec else {
        return Err(at(format!(
            "command: expected a table {{ name=, about=, args=, run= }}, got {}",
            spec.type_name()
        )));
    };
    let run = match t.raw_get::<Value>("run")? {
        Value::Function(f) => f,
        Value::Nil => {
            return Err(at(
                "command: 'run' is missing: a function receiving the parsed arguments".into(),
            ));
        }
        other => {
            return Err(at(format!(
                "command: 'run' must be a function, got {}",
                other.type_name()
            )));
        }
    };
    // Everything but `run` is data: check it as JSON against the strict shape.
    let copy = lua.create_table()?;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        if !matches!(&k, Value::String(s) if s.as_bytes().as_ref() == b"run") {
            copy.raw_set(k, v)?;
        }
    }
    let json =
        to_json(&Value::Table(copy), ToJson::default()).map_err(|e| at(format!("command: {e}")))?;
    let raw: RawCommand =
        from_json("command", json).map_err(|e| at(crate::runtime::fault::message_of(&e)))?;
    let spec = validate(raw, line).map_err(at)?;
    Ok(Descriptor { spec, run })
}

fn validate(raw: RawCommand, line: u32) -> Result<CommandSpec, String> {
    if !valid_command_name(&raw.name) {
        return Err(format!(
            "command: name '{}' is not a valid command name (lowercase letters, digits and '-', \
             starting with a letter, e.g. deploy-docs)",
            raw.name
        ));
    }
    let about = raw.about.trim().to_string();
    if about.is_empty() || about.contains('\n') {
        return Err("command: about must be one non-empty line".into());
    }
    let mut args: Vec<ArgSpec> = Vec::new();
    for (i, v) in raw.args.into_iter().enumerate() {
        let label = match v.get("name").and_then(|n| n.as_str()) {
            Some(n) => format!("command: args[{}] ({n})", i + 1),
            None => format!("command: args[{}]", i + 1),
        };
        let a: RawArg = from_json(&label, v).map_err(|e| crate::runtime::fault::message_of(&e))?;
        let spec = validate_arg(a, &label)?;
        if args.iter().any(|b| b.name == spec.name) {
            return Err(format!("{label}: the name '{}' is used twice", spec.name));
        }
        args.push(spec);
    }
    let positionals: Vec<&ArgSpec> = args.iter().filter(|a| a.positional).collect();
    for (i, a) in positionals.iter().enumerate() {
        let last = i + 1 == positionals.len();
        if a.list && !last {
            return Err(format!(
                "command: positional '{}' is a list, so it must be the last positional argument",
                a.name
            ));
        }
        if a.required && i > 0 && !positionals[i - 1].required {
            return Err(format!(
                "command: required positional '{}' comes after the optional '{}': put required \
                 positionals first",
                a.name,
                positionals[i - 1].name
            ));
        }
    }
    Ok(CommandSpec {
        name: raw.name,
        about,
        args,
        line,
    })
}

fn validate_arg(a: RawArg, label: &str) -> Result<ArgSpec, String> {
    if !valid_arg_name(&a.name) {
        return Err(format!(
            "{label}: name '{}' is not valid (lowercase letters, digits and '_', starting with a \
             letter; `dry_run` becomes --dry-run)",
            a.name
        ));
    }
    if RESERVED.contains(&a.name.as_str()) {
        return Err(format!(
            "{label}: the name '{}' is reserved (every command has --{}); choose another",
            a.name,
            a.name.replace('_', "-")
        ));
    }
    let ty = match (a.ty, a.flag) {
        (None, true) | (Some(ArgType::Boolean), true) => ArgType::Boolean,
        (Some(t), true) => {
            return Err(format!(
                "{label}: flag=true is a boolean switch, but type is '{}'",
                t.as_str()
            ));
        }
        (Some(t), false) => t,
        (None, false) => ArgType::String,
    };
    if a.flag && (a.positional || a.list || a.required) {
        return Err(format!(
            "{label}: a flag is an optional --switch: it cannot also be positional, list or required"
        ));
    }
    if a.flag
        && a.default
            .as_ref()
            .is_some_and(|d| d != &serde_json::json!(false))
    {
        return Err(format!(
            "{label}: a flag is false unless given; its default cannot be changed"
        ));
    }
    if a.required && a.default.is_some() {
        return Err(format!(
            "{label}: required=true and a default exclude each other"
        ));
    }
    if let Some(h) = &a.help
        && h.contains('\n')
    {
        return Err(format!("{label}: help must be one line"));
    }
    let default = match a.default {
        None => None,
        Some(_) if a.flag => None,
        Some(serde_json::Value::Array(items)) if a.list => {
            for item in &items {
                check_value(ty, item).map_err(|e| format!("{label}: default: {e}"))?;
            }
            Some(serde_json::Value::Array(items))
        }
        // An empty table converts to an empty object: an empty list default.
        Some(serde_json::Value::Object(m)) if a.list && m.is_empty() => {
            Some(serde_json::Value::Array(Vec::new()))
        }
        Some(v) if a.list => {
            return Err(format!(
                "{label}: default of a list must be a list, e.g. {{ {v} }}"
            ));
        }
        Some(v) => {
            check_value(ty, &v).map_err(|e| format!("{label}: default: {e}"))?;
            Some(v)
        }
    };
    Ok(ArgSpec {
        name: a.name,
        help: a.help,
        ty,
        required: a.required,
        default,
        flag: a.flag,
        positional: a.positional,
        list: a.list,
    })
}

fn check_value(ty: ArgType, v: &serde_json::Value) -> Result<(), String> {
    let ok = match ty {
        ArgType::String => v.is_string(),
        ArgType::Number => v.is_number(),
        ArgType::Integer => v.is_i64(),
        ArgType::Boolean => v.is_boolean(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{v} is not a {}", ty.as_str()))
    }
}

/// The command-line form of a value (defaults shown in help and parsed by the CLI).
pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names() {
        for ok in ["deploy", "deploy-docs", "a1", "x-2-y"] {
            assert!(valid_command_name(ok), "{ok}");
        }
        for bad in ["", "Deploy", "-x", "x-", "a--b", "1x", "a_b", "a b"] {
            assert!(!valid_command_name(bad), "{bad}");
        }
    }

    #[test]
    fn arg_names() {
        assert!(valid_arg_name("dry_run"));
        for bad in ["Dry", "_x", "x_", "a__b", "a-b", ""] {
            assert!(!valid_arg_name(bad), "{bad}");
        }
    }
}
