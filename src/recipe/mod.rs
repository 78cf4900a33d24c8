//! Recipe packages: a folder with `recipe.yaml`, `init.luau`, `templates/` and a README, built
//! in (`recipes/`) or installed into `.stagecraft/recipes/NAME/` by `stagecraft recipe add`,
//! pinned in `stagecraft.lock`, and applied as a recorded run. See docs/recipes.md.

pub mod compose_merge;
pub mod diff;
pub mod fetch;
pub mod lockfile;
pub mod lua;
pub mod manifest;
pub mod package;
pub mod plan;
pub mod render;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Kind};
use crate::project::Project;
use crate::runtime::caps::Capability;
use lockfile::LockFile;
use package::Package;

/// The script `recipe apply` runs (embedded; recorded in the ledger like any script).
pub const DRIVER_CHUNK: &str = "stagecraft/cli/recipe.luau";
pub const DRIVER: &str = include_str!("driver.luau");

/// Write a file atomically (a temporary file beside it, then a rename), creating its folder.
/// A replaced file keeps its permissions; a new one gets `mode` (default 0644).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), Error> {
    let shown = path.display();
    let dir = path
        .parent()
        .ok_or_else(|| Error::usage(format!("{shown}: no parent folder")))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".stagecraft-tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::usage(format!("cannot write {shown}: {e}")))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::usage(format!("cannot write {shown}: {e}")))?;
    let perm = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => mode.unwrap_or(0o644),
    };
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(perm))
        .map_err(|e| Error::usage(format!("cannot write {shown}: {e}")))?;
    tmp.persist(path)
        .map_err(|e| Error::usage(format!("cannot write {shown}: {}", e.error)))?;
    Ok(())
}

/// The names of every recipe this project can apply (built-in, then installed).
fn known_names(project: &Project) -> Vec<String> {
    let mut v: Vec<String> = package::BUILTIN
        .dirs()
        .filter_map(|d| {
            d.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .collect();
    if let Ok(lock) = LockFile::load(project) {
        v.extend(lock.recipes.into_iter().map(|e| e.name));
    }
    v
}

/// Find a recipe by name: installed (listed in stagecraft.lock), else built-in.
pub fn resolve(project: &Project, name: &str) -> Result<Package, Error> {
    let lock = LockFile::load(project)?;
    if lock.get(name).is_some() {
        let dir = package::installed_dir(project, name);
        if !dir.is_dir() {
            return Err(Error::usage(format!(
                "recipe {name} is in stagecraft.lock but {} is missing",
                package::installed_display(name)
            ))
            .with_hint(format!(
                "re-add it with `stagecraft recipe add SOURCE`, or `stagecraft recipe remove {name}`"
            )));
        }
        let mut pkg = package::load_folder(&dir, &package::installed_display(name))?;
        pkg.name = name.to_string();
        return Ok(pkg);
    }
    if let Some(p) = package::builtin(name)? {
        return Ok(p);
    }
    let names = known_names(project);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let suggestion = crate::util::did_you_mean(name, &refs)
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default();
    Err(
        Error::usage(format!("no recipe named '{name}'{suggestion}"))
            .with_hint("`stagecraft recipe list` shows the built-in and installed recipes"),
    )
}

/// An installed recipe must still be what was approved: its content digest as locked.
pub fn verify_installed(project: &Project, pkg: &Package) -> Result<(), Error> {
    if pkg.is_builtin() {
        return Ok(());
    }
    let lock = LockFile::load(project)?;
    let Some(entry) = lock.get(&pkg.name) else {
        return Ok(());
    };
    let actual = pkg.sha256()?;
    if actual != entry.sha256 {
        return Err(Error::new(
            Kind::Permission,
            format!(
                "recipe {}: the files in {} no longer match stagecraft.lock (sha256 {} locked, {} found); refusing to run it",
                pkg.name,
                package::installed_display(&pkg.name),
                short(&entry.sha256),
                short(&actual)
            ),
        )
        .with_hint(format!(
            "someone changed the installed recipe; re-add it from its source to review and approve it again: `stagecraft recipe add {} --name {}`",
            entry.source, pkg.name
        )));
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The capabilities a recipe runs with: the ones it declares, and (installed recipes) that the
/// user approved in stagecraft.lock.
pub fn effective_capabilities(project: &Project, pkg: &Package) -> Result<Vec<Capability>, Error> {
    let declared = pkg.manifest.capabilities.clone();
    if pkg.is_builtin() {
        return Ok(declared);
    }
    let lock = LockFile::load(project)?;
    let approved: Vec<String> = lock
        .get(&pkg.name)
        .map(|e| e.capabilities.clone())
        .unwrap_or_default();
    Ok(declared
        .into_iter()
        .filter(|c| approved.contains(&c.to_string()))
        .collect())
}

/// Every `requires` entry is available (built-in or installed) in a matching version.
pub fn check_requires(project: &Project, pkg: &Package) -> Result<(), Error> {
    for r in &pkg.manifest.requires {
        let found = resolve(project, &r.name).map_err(|_| {
            Error::usage(format!(
                "recipe {} requires recipe {} ({}), which is neither built in nor installed",
                pkg.name, r.name, r.version
            ))
            .with_hint("install it with `stagecraft recipe add SOURCE`, then try again")
        })?;
        if !r.version.matches(&found.manifest.version) {
            return Err(Error::usage(format!(
                "recipe {} requires recipe {} {}, but {} is {} ({})",
                pkg.name,
                r.name,
                r.version,
                r.name,
                found.manifest.version,
                found.display_origin()
            ))
            .with_hint(format!("install a matching version of {}", r.name)));
        }
    }
    Ok(())
}

/// Validate `key=value` arguments against the recipe's inputs; defaults fill the rest.
pub fn parse_inputs(pkg: &Package, args: &[String]) -> Result<Map<String, Value>, Error> {
    let specs = &pkg.manifest.inputs;
    let names: Vec<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
    let see = format!("`stagecraft recipe show {}` lists its inputs", pkg.name);
    let mut given: Map<String, Value> = Map::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(Error::usage(format!(
                "recipe {}: expected an input as key=value, got '{a}'",
                pkg.name
            ))
            .with_hint(see));
        };
        let Some((_, spec)) = specs.iter().find(|(n, _)| n == k) else {
            let suggestion = crate::util::did_you_mean(k, &names)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            let known = if names.is_empty() {
                "it has none".to_string()
            } else {
                format!("its inputs: {}", names.join(", "))
            };
            return Err(Error::usage(format!(
                "recipe {}: unknown input '{k}'{suggestion}; {known}",
                pkg.name
            ))
            .with_hint(see));
        };
        if given.contains_key(k) {
            return Err(Error::usage(format!(
                "recipe {}: input '{k}' is given twice",
                pkg.name
            )));
        }
        let value = spec.parse_value(v).map_err(|e| {
            Error::usage(format!(
                "recipe {}: input '{k}' ({}): {e}",
                pkg.name,
                spec.kind.as_str()
            ))
            .with_hint(see.clone())
        })?;
        given.insert(k.to_string(), value.to_json());
    }
    let mut out = Map::new();
    for (name, spec) in specs {
        match (given.remove(name), &spec.default) {
            (Some(v), _) => {
                out.insert(name.clone(), v);
            }
            (None, Some(d)) => {
                out.insert(name.clone(), d.to_json());
            }
            (None, None) => {
                let help = if spec.help.is_empty() {
                    String::new()
                } else {
                    format!(": {}", spec.help)
                };
                return Err(Error::usage(format!(
                    "recipe {}: missing required input '{name}' ({}{help})",
                    pkg.name,
                    spec.kind.as_str()
                ))
                .with_hint(format!(
                    "pass it as {name}=VALUE: stagecraft recipe apply {} {name}=...",
                    pkg.name
                )));
            }
        }
    }
    Ok(out)
}
