//! A pure-Rust loader for `docker-compose.yml` files: YAML → interpolation → a validated
//! [`Model`] of services, networks and volumes, with an exact `file:line:column` for every error.
//!
//! YAML positions: we read the event stream of `granit-parser`, the YAML parser that
//! `serde-saphyr` is built on and re-exports as `serde_saphyr::granit_parser` (so no new
//! dependency). Every event carries a span; [`yaml`] builds a small tree of nodes that keep the
//! line and column of each key and value, expands aliases and applies `<<` merge keys. We chose
//! this over `serde_saphyr::Spanned<T>` because a compose file needs shape-dependent decoding
//! (string *or* list *or* mapping for the same key), strict unknown-key errors at the key's own
//! position, and interpolation before typing, none of which fit a derived `Deserialize`.
//!
//! Stages: [`dotenv`] reads the `.env` text; variables are `.env` values overridden by plain then
//! secret [`Vars`]; [`interp`] interpolates every scalar value (not keys) of the tree, recording
//! which secret variables went into each; `convert` validates keys and shapes and builds the
//! [`Model`]. The supported subset is documented in `docs/compose-file.md`.

mod convert;
mod dotenv;
mod interp;
mod model;
mod syntax;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use model::{
    Build, Dependency, EnvValue, Healthcheck, Model, Mount, Network, Port, Service, ServiceNetwork,
    Volume,
};

use interp::{Env, Var};

/// Interpolation variables (name → value). A name in `secret` wins over the same name in
/// `plain`; both win over the `.env` file.
#[derive(Clone, Default)]
pub struct Vars {
    pub plain: BTreeMap<String, String>,
    pub secret: BTreeMap<String, String>,
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret: BTreeMap<&str, &str> = self
            .secret
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("Vars")
            .field("plain", &self.plain)
            .field("secret", &secret)
            .finish()
    }
}

impl Vars {
    fn lookup(&self, name: &str) -> Option<Var> {
        if let Some(v) = self.secret.get(name) {
            return Some(Var {
                value: v.clone(),
                secrets: BTreeSet::from([name.to_string()]),
            });
        }
        self.plain.get(name).map(|v| Var::plain(v.clone()))
    }
}

/// A compose file error: where it is, the key path, the message and an optional hint.
///
/// Displays as `docker-compose.yml:12:5: services.web: unknown key 'imagee' (did you mean
/// 'image'?)`. Never contains a secret variable's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    /// Display name of the file the error is in (the compose file, its `.env` or an env_file).
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Key path such as `services.web.ports[1]` (indices from 0); empty for file-level errors.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ComposeError {}

/// The display name of `rel` (a path relative to the compose file's folder), e.g.
/// `sibling("stack/compose.yml", ".env")` is `stack/.env`.
fn sibling(file: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        return rel.to_string();
    }
    let rel = rel.strip_prefix("./").unwrap_or(rel);
    match file.rfind('/') {
        Some(i) => format!("{}/{rel}", &file[..i]),
        None => rel.to_string(),
    }
}

/// Load a compose file.
///
/// - `file`: display name used in errors (`docker-compose.yml`, `stack/compose.yml`).
/// - `text`: the file's content.
/// - `dotenv`: content of the `.env` beside the file, if any.
/// - `vars`: interpolation variables; they override `.env` (as the shell environment does).
/// - `project`: an explicit project name; else top-level `name:`; else `default_project` (the
///   folder name, normalised the way Compose does).
/// - `read_env_file`: reads an `env_file` path relative to the compose file's folder.
// `ComposeError` is returned unboxed: its fields are the public contract, and errors are rare.
#[allow(clippy::result_large_err)]
pub fn load(
    file: &str,
    text: &str,
    dotenv: Option<&str>,
    vars: &Vars,
    project: Option<&str>,
    default_project: &str,
    read_env_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Model, ComposeError> {
    let mut unset = Vec::new();
    let mut env = Env::default();
    if let Some(dotenv_text) = dotenv {
        let parsed = dotenv::parse(dotenv_text, &|n| vars.lookup(n), &mut unset).map_err(|e| {
            ComposeError {
                file: sibling(file, ".env"),
                line: Some(e.line),
                column: Some(e.column),
                path: String::new(),
                message: e.message,
                hint: e.hint,
            }
        })?;
        env.vars.extend(parsed);
    }
    for name in vars.plain.keys().chain(vars.secret.keys()) {
        if let Some(v) = vars.lookup(name) {
            env.vars.insert(name.clone(), v);
        }
    }
    let root = yaml::parse(text).map_err(|e| ComposeError {
        file: file.to_string(),
        line: Some(e.pos.line),
        column: Some(e.pos.column),
        path: String::new(),
        message: e.message,
        hint: None,
    })?;
    let Some(root) = root else {
        return Err(ComposeError {
            file: file.to_string(),
            line: None,
            column: None,
            path: String::new(),
            message: "empty compose file".into(),
            hint: Some("a compose file needs at least a 'services:' mapping".into()),
        });
    };
    let mut loader = convert::Loader::new(file, &env, read_env_file);
    for name in unset {
        loader.warn_unset(&name);
    }
    loader.load(root, project, default_project).map_err(|e| *e)
}

/// The values a `.env` text defines (interpolated among themselves, nothing else); empty when
/// it does not parse (`load` reports that error with its position).
pub fn dotenv_values(text: &str) -> BTreeMap<String, String> {
    let mut unset = Vec::new();
    dotenv::parse(text, &|_| None, &mut unset)
        .map(|m| m.into_iter().map(|(k, v)| (k, v.value)).collect())
        .unwrap_or_default()
}

/// Recompute a service's `config_hash` after changing it (a rollout overrides the image).
pub fn rehash(service: &mut Service) {
    service.config_hash = convert::config_hash(service);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: Option<usize>, column: Option<usize>, path: &str, hint: Option<&str>) -> String {
        ComposeError {
            file: "stack/compose.yml".into(),
            line,
            column,
            path: path.into(),
            message: "unknown key 'imagee'".into(),
            hint: hint.map(str::to_string),
        }
        .to_string()
    }

    #[test]
    fn error_display() {
        assert_eq!(
            error(
                Some(12),
                Some(5),
                "services.web",
                Some("did you mean 'image'?")
            ),
            "stack/compose.yml:12:5: services.web: unknown key 'imagee' (did you mean 'image'?)"
        );
        assert_eq!(
            error(Some(3), None, "", None),
            "stack/compose.yml:3: unknown key 'imagee'"
        );
        assert_eq!(
            error(None, None, "name", None),
            "stack/compose.yml: name: unknown key 'imagee'"
        );
    }

    #[test]
    fn sibling_paths() {
        assert_eq!(sibling("docker-compose.yml", ".env"), ".env");
        assert_eq!(sibling("stack/compose.yml", ".env"), "stack/.env");
        assert_eq!(
            sibling("stack/compose.yml", "./conf/app.env"),
            "stack/conf/app.env"
        );
        assert_eq!(sibling("stack/compose.yml", "/etc/app.env"), "/etc/app.env");
    }

    #[test]
    fn vars_debug_redacts_secrets() {
        let mut v = Vars::default();
        v.plain.insert("A".into(), "1".into());
        v.secret.insert("PW".into(), "hunter2".into());
        let s = format!("{v:?}");
        assert!(
            s.contains("PW") && s.contains("<redacted>") && !s.contains("hunter2"),
            "{s}"
        );
    }
}
