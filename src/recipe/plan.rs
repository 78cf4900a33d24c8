//! A recipe's plan (plain data from `plan(inputs, ctx)`) and what applying it changes: the new
//! content of every file it touches, computed and validated before anything is written.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::package::Package;
use super::{compose_merge, diff, render};
use crate::api::fs::{Access, confine};
use crate::runtime::RunCtx;
use crate::runtime::fault::OpError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default, deserialize_with = "crate::api::seq")]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub compose: ComposeSpec,
    #[serde(default, deserialize_with = "crate::api::seq")]
    pub env: Vec<EnvSpec>,
    #[serde(default, deserialize_with = "crate::api::seq")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    /// A template under the package's `templates/`, rendered with `vars`.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub vars: Option<Value>,
    /// Literal content (instead of a template).
    #[serde(default)]
    pub content: Option<String>,
    /// Permission bits of a new file (`493` is octal 755); an existing file keeps its own.
    #[serde(default)]
    pub mode: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    #[serde(default)]
    pub services: Map<String, Value>,
    #[serde(default)]
    pub volumes: Map<String, Value>,
    #[serde(default)]
    pub networks: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    pub name: String,
    /// A secret gets an empty placeholder: Stagecraft never writes a secret's value.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub help: String,
    /// The value of a non-secret variable, written when the variable is not in `.env` yet.
    #[serde(default)]
    pub default: Option<String>,
}

/// One file the plan writes.
#[derive(Debug)]
pub struct Change {
    /// Relative to the project root.
    pub path: String,
    pub full: PathBuf,
    pub old: Option<String>,
    pub new: String,
    /// New files get this mode (`.env`: 0600).
    pub mode: Option<u32>,
}

impl Change {
    pub fn action(&self) -> &'static str {
        match &self.old {
            None => "created",
            Some(o) if *o == self.new => "unchanged",
            Some(_) => "updated",
        }
    }

    /// The diff `--dry-run` prints. `.env` is shown without context lines, so no existing
    /// value is ever printed.
    pub fn diff(&self) -> String {
        let context = if self.path == ".env" { 0 } else { 3 };
        diff::unified(&self.path, self.old.as_deref(), &self.new, context)
    }
}

/// What applying the plan would do.
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Secret placeholders added to `.env`.
    pub placeholders: Vec<String>,
    /// Secrets the recipe needs (placeholders added now or earlier).
    pub secrets: Vec<(String, String)>,
}

fn invalid(msg: String) -> OpError {
    OpError::invalid(msg)
}

/// The compose file of the project: the one it has, else `docker-compose.yml`.
pub fn compose_file(root: &Path) -> &'static str {
    for f in [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yml",
        "docker-compose.yaml",
    ] {
        if root.join(f).is_file() {
            return f;
        }
    }
    "docker-compose.yml"
}

fn read_existing(full: &Path, shown: &str) -> Result<Option<String>, OpError> {
    match std::fs::read(full) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| OpError::io(format!("recipe: {shown} is not UTF-8 text"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OpError::io(format!("recipe: cannot read {shown}: {e}"))),
    }
}

/// The compose project name Compose would derive from the folder.
fn default_project(root: &Path) -> String {
    let raw = root
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let s: String = raw
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let s = s.trim_start_matches(['_', '-']).to_string();
    if s.is_empty() { "project".into() } else { s }
}

/// Compute every change of the plan; nothing is written. `inputs` are the validated inputs
/// (for the generated docs page).
pub fn compute(
    ctx: &RunCtx,
    pkg: &Package,
    inputs: &Map<String, Value>,
    plan: &Plan,
) -> Result<Outcome, OpError> {
    let func = "recipe.apply";
    let root = &ctx.project.root;
    let compose_name = compose_file(root);
    let docs_path = format!("docs/recipes/{}.md", pkg.name);
    let mut changes: Vec<Change> = Vec::new();

    // Files.
    for f in &plan.files {
        let p = f.path.trim_start_matches("./");
        let rel = crate::runtime::loader::normalize(Path::new(p))
            .filter(|r| !r.as_os_str().is_empty() && !Path::new(p).is_absolute())
            .ok_or_else(|| {
                invalid(format!(
                    "{func}: files: '{}' must be a path inside the project, relative to its root",
                    f.path
                ))
            })?;
        let rel_s = rel.to_string_lossy().into_owned();
        let first = rel_s.split('/').next().unwrap_or("");
        if first == ".env" || first.starts_with(".env.") {
            return Err(invalid(format!(
                "{func}: files: '{}' is the secrets file; declare variables in `env` instead",
                f.path
            )));
        }
        if rel_s == compose_name || rel_s == docs_path || rel_s == "stagecraft.lock" {
            return Err(invalid(format!(
                "{func}: files: '{}' is written by Stagecraft itself; use `compose` for services",
                f.path
            )));
        }
        if changes.iter().any(|c| c.path == rel_s) {
            return Err(invalid(format!("{func}: files: '{rel_s}' appears twice")));
        }
        let new = match (&f.template, &f.content) {
            (Some(t), None) => {
                let vars = f.vars.clone().unwrap_or(Value::Object(Map::new()));
                render::render(pkg, t, &vars).map_err(|e| {
                    OpError::new("template_error", format!("recipe {}: {e}", pkg.name))
                        .hint("every variable a template uses must be passed in `vars`")
                })?
            }
            (None, Some(c)) => c.clone(),
            _ => {
                return Err(invalid(format!(
                    "{func}: files: '{}' needs exactly one of `template` and `content`",
                    f.path
                )));
            }
        };
        if f.mode.is_some_and(|m| m > 0o777) {
            return Err(invalid(format!(
                "{func}: files: '{}': mode must be permission bits (at most 511, octal 777)",
                f.path
            )));
        }
        let full = confine(ctx, func, &rel_s, Access::Write)?;
        let old = read_existing(&full, &rel_s)?;
        changes.push(Change {
            path: rel_s,
            full,
            old,
            new,
            mode: f.mode,
        });
    }

    // .env placeholders: appended, never changing a line that is there.
    let env_full = confine(ctx, func, ".env", Access::Write)?;
    let env_old = read_existing(&env_full, ".env")?;
    let mut env_new = env_old.clone().unwrap_or_default();
    let mut placeholders = Vec::new();
    let mut secrets = Vec::new();
    for e in &plan.env {
        if !super::manifest::valid_env_name(&e.name) {
            return Err(invalid(format!(
                "{func}: env: '{}' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                e.name
            )));
        }
        if e.secret && e.default.is_some() {
            return Err(invalid(format!(
                "{func}: env: {} is a secret and cannot have a default (Stagecraft never writes a secret's value)",
                e.name
            )));
        }
        if e.secret {
            secrets.push((e.name.clone(), e.help.clone()));
        }
        if defines(&env_new, &e.name) {
            continue;
        }
        if !env_new.is_empty() && !env_new.ends_with('\n') {
            env_new.push('\n');
        }
        let help = if e.help.is_empty() {
            String::new()
        } else {
            format!(" {}", e.help.replace('\n', " "))
        };
        if e.secret {
            env_new.push_str(&format!(
                "# {}:{help} (secret for recipe {}: fill in, never commit)\n{}=\n",
                e.name, pkg.name, e.name
            ));
            placeholders.push(e.name.clone());
        } else {
            let v = e.default.clone().unwrap_or_default();
            if v.contains('\n') {
                return Err(invalid(format!(
                    "{func}: env: the default of {} spans lines",
                    e.name
                )));
            }
            env_new.push_str(&format!(
                "# {}:{help} (recipe {})\n{}={v}\n",
                e.name, pkg.name, e.name
            ));
        }
    }
    if env_old.as_deref() != Some(env_new.as_str()) && !(env_old.is_none() && env_new.is_empty()) {
        changes.push(Change {
            path: ".env".into(),
            full: env_full,
            old: env_old.clone(),
            new: env_new.clone(),
            mode: Some(0o600),
        });
    }

    // The compose file: merged as text, then loaded with the project's compose loader.
    let c = &plan.compose;
    let touches_compose = !c.services.is_empty() || !c.volumes.is_empty() || !c.networks.is_empty();
    let compose_full = confine(ctx, func, compose_name, Access::Write)?;
    let compose_old = read_existing(&compose_full, compose_name)?;
    let has_block = compose_old
        .as_deref()
        .is_some_and(|t| t.contains(&compose_merge::begin_marker(&pkg.name)));
    if touches_compose || has_block {
        let merged = compose_merge::merge(
            compose_name,
            compose_old.as_deref(),
            &pkg.name,
            &[
                ("services", &c.services),
                ("volumes", &c.volumes),
                ("networks", &c.networks),
            ],
        )
        .map_err(|e| {
            let mut o = OpError::invalid(format!("recipe {}: {}", pkg.name, e.message));
            o.hint = e.hint;
            o
        })?;
        let read_env_file = |rel: &str| -> Result<String, String> {
            let full = confine(ctx, func, rel, Access::Write).map_err(|e| e.message)?;
            std::fs::read_to_string(full).map_err(|e| e.to_string())
        };
        crate::compose::load(
            compose_name,
            &merged,
            Some(env_new.as_str()),
            &crate::compose::Vars::default(),
            None,
            &default_project(root),
            &read_env_file,
        )
        .map_err(|e| {
            OpError::invalid(format!(
                "recipe {}: the merged compose file would not load: {e}",
                pkg.name
            ))
            .hint("nothing was written; fix the compose file, or the recipe's compose section")
        })?;
        changes.push(Change {
            path: compose_name.to_string(),
            full: compose_full,
            old: compose_old,
            new: merged,
            mode: None,
        });
    }

    // The recipe's page in the project's docs.
    let docs_full = confine(ctx, func, &docs_path, Access::Write)?;
    let docs_old = read_existing(&docs_full, &docs_path)?;
    changes.push(Change {
        path: docs_path,
        full: docs_full,
        old: docs_old,
        new: docs_page(pkg, inputs, plan, compose_name, &secrets),
        mode: None,
    });
    Ok(Outcome {
        changes,
        placeholders,
        secrets,
    })
}

/// Whether `.env` text defines `name` (with or without a value).
fn defines(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix("export ").unwrap_or(l);
        l.split_once('=').is_some_and(|(k, _)| k.trim() == name)
    })
}

fn docs_page(
    pkg: &Package,
    inputs: &Map<String, Value>,
    plan: &Plan,
    compose_name: &str,
    secrets: &[(String, String)],
) -> String {
    let m = &pkg.manifest;
    let mut s = format!(
        "# Recipe {} {}\n\n<!-- Generated by `stagecraft recipe apply {}`; re-applying replaces this file. -->\n\n",
        pkg.name, m.version, pkg.name
    );
    if !m.description.is_empty() {
        s.push_str(&format!("{}\n\n", m.description));
    }
    s.push_str("## Inputs used\n\n| input | value |\n|---|---|\n");
    for (name, _) in &m.inputs {
        let v = match inputs.get(name) {
            Some(Value::String(x)) => format!("`{x}`"),
            Some(other) => format!("`{other}`"),
            None => "-".into(),
        };
        s.push_str(&format!("| `{name}` | {v} |\n"));
    }
    let list = |title: &str, map: &Map<String, Value>, s: &mut String| {
        if map.is_empty() {
            return;
        }
        s.push_str(&format!("\n## {title} (in {compose_name})\n\n"));
        for (k, v) in map {
            match v.get("image").and_then(Value::as_str) {
                Some(img) => s.push_str(&format!("- `{k}` (image `{img}`)\n")),
                None => s.push_str(&format!("- `{k}`\n")),
            }
        }
    };
    list("Services", &plan.compose.services, &mut s);
    list("Volumes", &plan.compose.volumes, &mut s);
    list("Networks", &plan.compose.networks, &mut s);
    if !plan.files.is_empty() {
        s.push_str("\n## Files\n\n");
        for f in &plan.files {
            s.push_str(&format!("- `{}`\n", f.path.trim_start_matches("./")));
        }
    }
    if !secrets.is_empty() {
        s.push_str(
            "\n## Secrets to fill in\n\nSet these in `.env` (Stagecraft added empty placeholders and never writes a value):\n\n",
        );
        for (name, help) in secrets {
            if help.is_empty() {
                s.push_str(&format!("- `{name}`\n"));
            } else {
                s.push_str(&format!("- `{name}`: {help}\n"));
            }
        }
    }
    if !plan.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &plan.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    let readme = pkg.readme();
    if !readme.trim().is_empty() {
        s.push_str("\n## About this recipe\n\n");
        // The README's own headings go two levels down, below this section.
        for line in readme.trim_end().lines() {
            if line.starts_with('#') {
                s.push_str("##");
            }
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}
