//! The one list of Rust primitives exposed to scripts as `stagecraft/<name>`.

pub mod compose_file;
pub mod docker;
pub mod errors;
pub mod exec;
pub mod fs;
pub mod http;
pub mod json;
pub mod ledger;
pub mod lock;
pub mod log;
pub mod secrets;
pub mod ssh;
pub mod tailscale;
pub mod task;
pub mod yaml;

use mlua::{Lua, Table, Value};
use serde::de::DeserializeOwned;

use crate::runtime::fault::OpError;
use crate::runtime::value::{ToJson, to_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stability {
    Stable,
    Experimental,
}

impl Stability {
    pub fn as_str(self) -> &'static str {
        match self {
            Stability::Stable => "stable",
            Stability::Experimental => "experimental",
        }
    }
}

pub struct Module {
    pub name: &'static str,
    pub register: fn(&Lua) -> mlua::Result<Table>,
    pub stability: Stability,
    /// One line, shown by docs and `stagecraft modules`.
    pub about: &'static str,
}

pub static MODULES: &[Module] = &[
    Module {
        name: "exec",
        register: exec::register,
        stability: Stability::Stable,
        about: "run programs (argv, never a shell string)",
    },
    Module {
        name: "fs",
        register: fs::register,
        stability: Stability::Stable,
        about: "files inside the project root",
    },
    Module {
        name: "secrets",
        register: secrets::register,
        stability: Stability::Stable,
        about: "opaque secret handles from the environment or .env",
    },
    Module {
        name: "task",
        register: task::register,
        stability: Stability::Stable,
        about: "structured concurrency: parallel and map",
    },
    Module {
        name: "json",
        register: json::register,
        stability: Stability::Stable,
        about: "JSON encode/decode with limits",
    },
    Module {
        name: "yaml",
        register: yaml::register,
        stability: Stability::Stable,
        about: "YAML encode/decode with limits",
    },
    Module {
        name: "log",
        register: log::register,
        stability: Stability::Stable,
        about: "levelled, scrubbed logging",
    },
    Module {
        name: "http",
        register: http::register,
        stability: Stability::Experimental,
        about: "HTTP GET/POST (capability net:HOST)",
    },
    Module {
        name: "docker",
        register: docker::register,
        stability: Stability::Experimental,
        about: "Docker Engine API: images, containers, networks, volumes (capability docker)",
    },
    Module {
        name: "tailscale",
        register: tailscale::register,
        stability: Stability::Experimental,
        about: "tailnet status, node IPs, up/down through the tailscale CLI (capability tailscale)",
    },
    Module {
        name: "compose_file",
        register: compose_file::register,
        stability: Stability::Experimental,
        about: "parse and validate docker-compose.yml (used by stagecraft/compose)",
    },
    Module {
        name: "errors",
        register: errors::register,
        stability: Stability::Stable,
        about: "structured errors (kind, message, hint) for Luau libraries",
    },
    Module {
        name: "ssh",
        register: ssh::register,
        stability: Stability::Experimental,
        about: "hosts over OpenSSH, one multiplexed master per host (capability ssh[:HOST])",
    },
    Module {
        name: "lock",
        register: lock::register,
        stability: Stability::Experimental,
        about: "deploy locks on hosts: acquire, release, status (capability ssh[:HOST])",
    },
    Module {
        name: "recipe",
        register: crate::recipe::lua::register,
        stability: Stability::Experimental,
        about: "render templates, diff and apply recipe plans (used by `stagecraft recipe apply`)",
    },
    Module {
        name: "ledger",
        register: ledger::register,
        stability: Stability::Stable,
        about: "read-only queries of past runs",
    },
];

pub fn find(name: &str) -> Option<&'static Module> {
    MODULES.iter().find(|m| m.name == name)
}

/// Parse an options table into a strict struct: unknown fields name the function and the closest
/// known field. `None`/nil gives the defaults.
pub fn opts<T: DeserializeOwned + Default>(func: &str, value: Option<Value>) -> mlua::Result<T> {
    let v = match value {
        None | Some(Value::Nil) => return Ok(T::default()),
        Some(v) => v,
    };
    let json = to_json(&v, ToJson::default())
        .map_err(|e| OpError::invalid(format!("{func}: {e}")).into_lua())?;
    from_json(func, json)
}

/// A list field that also accepts an empty table (which converts to an empty JSON object).
pub fn seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) if m.is_empty() => Ok(Vec::new()),
        serde_json::Value::Null => Ok(Vec::new()),
        v => serde_json::from_value(v).map_err(serde::de::Error::custom),
    }
}

/// Deserialize JSON into a strict struct with friendly errors.
pub fn from_json<T: DeserializeOwned>(func: &str, json: serde_json::Value) -> mlua::Result<T> {
    serde_json::from_value(json)
        .map_err(|e| OpError::invalid(friendly_serde(func, &e.to_string())).into_lua())
}

/// `unknown field `imgae`, expected one of `image`, `name`` -> `f: unknown field 'imgae' (did you mean 'image'?)`.
fn friendly_serde(func: &str, msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let hint = match crate::util::did_you_mean(field, &expected) {
            Some(s) => format!(" (did you mean '{s}'?)"),
            None if !expected.is_empty() => format!(" (known: {})", expected.join(", ")),
            None => String::new(),
        };
        return format!("{func}: unknown field '{field}'{hint}");
    }
    format!("{func}: {msg}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn friendly_unknown_field() {
        let m = super::friendly_serde(
            "docker.run",
            "unknown field `imgae`, expected one of `image`, `name`",
        );
        assert_eq!(
            m,
            "docker.run: unknown field 'imgae' (did you mean 'image'?)"
        );
    }
}
