//! `stagecraft recipe list|show|add|remove|apply`: recipe packages. The logic is in
//! `crate::recipe`; applying runs the embedded driver script as a recorded run.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};

use super::{LedgerArg, cwd};
use crate::engine::{self, Settings};
use crate::error::{Error, Kind, exit};
use crate::project::Project;
use crate::recipe::lockfile::{LockEntry, LockFile};
use crate::recipe::package::{self, Origin, Package};
use crate::recipe::{self, fetch, manifest};

#[derive(Subcommand, Debug)]
pub enum RecipeCommand {
    /// List the built-in and installed recipes with their versions and sources.
    List,
    /// Show a recipe: its inputs (type, default, help), capabilities, dependencies and README.
    Show {
        /// The recipe's name.
        name: String,
    },
    /// Install a recipe package into .stagecraft/recipes/NAME and pin it in stagecraft.lock.
    #[command(after_help = ADD_HELP)]
    Add(AddArgs),
    /// Remove an installed recipe (its folder and lock entry; not what applying it wrote).
    Remove {
        /// The installed recipe's name.
        name: String,
    },
    /// Apply a recipe to the project (a recorded run), or show what it would change.
    #[command(after_help = APPLY_HELP)]
    Apply(ApplyArgs),
}

const ADD_HELP: &str = "\
SOURCE is one of:
  a folder holding recipe.yaml       ./my-recipe
  a .tar.gz of such a folder         my-recipe-1.0.0.tar.gz
  a git repository, with #REF        file:///srv/recipes.git#v1.0.0, https://host/r.git#main,
                                     git+../recipes#v1 (any path), a path ending in .git
The recipe's capabilities are shown and need your approval: interactively (y/N), or --yes.
A recipe only ever runs with the capabilities it declares and you approved.";

const APPLY_HELP: &str = "\
Inputs are key=value arguments checked against the recipe's declared types
(`stagecraft recipe show NAME` lists them); defaults fill the rest. Applying writes the
files of the recipe's plan, merges its services into the compose file (a managed block per
recipe), adds empty .env placeholders for secrets it needs and writes docs/recipes/NAME.md.
Applying again with the same inputs changes nothing. Dependencies (`requires`) must be
available but are not applied for you.
  stagecraft recipe apply redis port=6380 --dry-run";

#[derive(Args, Debug)]
pub struct AddArgs {
    /// A folder, a .tar.gz, or a git URL with an optional #ref.
    pub source: String,
    /// Approve the recipe's capabilities without asking (for scripts).
    #[arg(long)]
    pub yes: bool,
    /// Install under this name instead of the one in recipe.yaml.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The recipe's name (built-in or installed).
    pub name: String,
    /// Inputs as key=value.
    #[arg(value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// Print the changes as a unified diff and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub ledger: LedgerArg,
}

pub fn run(cmd: RecipeCommand) -> Result<i32, Error> {
    let project = Project::discover(&cwd()?)?;
    match cmd {
        RecipeCommand::List => list(&project),
        RecipeCommand::Show { name } => show(&project, &name),
        RecipeCommand::Add(a) => add(&project, a),
        RecipeCommand::Remove { name } => remove(&project, &name),
        RecipeCommand::Apply(a) => apply(project, a),
    }
}

fn list(project: &Project) -> Result<i32, Error> {
    let mut rows: Vec<[String; 3]> = Vec::new();
    for p in package::builtins()? {
        rows.push([
            p.name.clone(),
            p.manifest.version.to_string(),
            "built-in".into(),
        ]);
    }
    for e in LockFile::load(project)?.recipes {
        let mut source = match &e.resolved {
            Some(c) => format!("{} ({})", e.source, &c[..c.len().min(12)]),
            None => e.source.clone(),
        };
        // Say so when it cannot be applied as it is.
        let state =
            recipe::resolve(project, &e.name).and_then(|p| recipe::verify_installed(project, &p));
        if state.is_err() {
            source.push_str(" [changed or missing since added: re-add it]");
        }
        rows.push([e.name.clone(), e.version.clone(), source]);
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(7);
    println!("{:<w0$}  {:<w1$}  SOURCE", "NAME", "VERSION");
    for r in rows {
        println!("{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
    }
    Ok(exit::OK)
}

fn show(project: &Project, name: &str) -> Result<i32, Error> {
    let pkg = recipe::resolve(project, name)?;
    let m = &pkg.manifest;
    let origin = match &pkg.origin {
        Origin::Builtin(_) => "built-in".to_string(),
        Origin::Folder(_) => match LockFile::load(project)?.get(name) {
            Some(e) => format!("installed from {}", e.source),
            None => "installed".into(),
        },
    };
    let mut s = format!("{} {} ({origin})\n", pkg.name, m.version);
    if !m.description.is_empty() {
        s.push_str(&format!("{}\n", m.description));
    }
    let caps: Vec<String> = m.capabilities.iter().map(|c| c.to_string()).collect();
    let requires: Vec<String> = m
        .requires
        .iter()
        .map(|r| format!("{} {}", r.name, r.version))
        .collect();
    s.push_str(&format!("\nstagecraft:   {}\n", m.stagecraft));
    s.push_str(&format!("capabilities: {}\n", none_or(&caps)));
    s.push_str(&format!("requires:     {}\n", none_or(&requires)));
    s.push_str("\ninputs:\n");
    if m.inputs.is_empty() {
        s.push_str("  (none)\n");
    }
    let rows: Vec<[String; 4]> = m
        .inputs
        .iter()
        .map(|(n, spec)| {
            let kind = if spec.values.is_empty() {
                spec.kind.as_str().to_string()
            } else {
                format!("{} ({})", spec.kind.as_str(), spec.values.join("|"))
            };
            let default = match &spec.default {
                Some(d) => format!("default {d}"),
                None => "required".into(),
            };
            [n.clone(), kind, default, spec.help.clone()]
        })
        .collect();
    let w: Vec<usize> = (0..3)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line = format!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    let readme = pkg.readme();
    if !readme.trim().is_empty() {
        s.push_str("\nREADME.md:\n\n");
        s.push_str(readme.trim_end());
        s.push('\n');
    }
    print!("{s}");
    Ok(exit::OK)
}

fn none_or(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn add(project: &Project, a: AddArgs) -> Result<i32, Error> {
    let fetched = fetch::fetch(&a.source, &cwd()?)?;
    let staged = package::load_folder(&fetched.root, &a.source)?;
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| staged.manifest.name.clone());
    if !manifest::valid_name(&name) {
        return Err(Error::usage(format!(
            "--name {name}: invalid recipe name (lowercase letters, digits and '-', starting with a letter)"
        )));
    }
    if package::builtin(&name)?.is_some() {
        return Err(Error::usage(format!(
            "recipe add: '{name}' is the name of a built-in recipe"
        ))
        .with_hint("install it under another name with --name NAME"));
    }
    let pkg = Package {
        name: name.clone(),
        ..staged
    };
    manifest::check_stagecraft(&pkg.manifest)?;
    recipe::check_requires(project, &pkg)?;
    let m = &pkg.manifest;
    let caps: Vec<String> = m.capabilities.iter().map(|c| c.to_string()).collect();
    let mut err = std::io::stderr();
    let _ = writeln!(err, "recipe {name} {} from {}", m.version, fetched.source);
    if let Some(c) = &fetched.resolved {
        let _ = writeln!(err, "  resolved to commit {c}");
    }
    if caps.is_empty() {
        let _ = writeln!(err, "  asks for no capabilities");
    } else {
        let _ = writeln!(err, "  asks for capabilities: {}", caps.join(", "));
    }
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::usage(format!(
                "recipe add: installing {name} needs your approval of its capabilities ({}), and there is no terminal to ask on",
                none_or(&caps)
            ))
            .with_hint("review them, then pass --yes to approve from a script"));
        }
        let _ = write!(err, "approve and install {name}? [y/N] ");
        let _ = err.flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("not installed");
            return Ok(exit::USAGE);
        }
    }
    // Stage the copy beside its final place, then swap it in and write the lock.
    let recipes_dir = project.state_dir().join("recipes");
    std::fs::create_dir_all(&recipes_dir)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", recipes_dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(&recipes_dir)
        .map_err(|e| Error::usage(format!("cannot write {}: {e}", recipes_dir.display())))?;
    fetch::copy_folder(&fetched.root, tmp.path())?;
    let installed = Package {
        origin: Origin::Folder(tmp.path().to_path_buf()),
        ..pkg.clone()
    };
    let sha = installed.sha256()?;
    let mut lock = LockFile::load(project)?;
    lock.upsert(LockEntry {
        name: name.clone(),
        version: m.version.to_string(),
        source: fetched.source.clone(),
        resolved: fetched.resolved.clone(),
        sha256: sha.clone(),
        capabilities: caps.clone(),
    });
    let dest = package::installed_dir(project, &name);
    let old = recipes_dir.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old)
            .map_err(|e| Error::usage(format!("cannot replace {}: {e}", dest.display())))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &dest)
        .map_err(|e| Error::usage(format!("cannot install into {}: {e}", dest.display())))?;
    let _ = std::fs::remove_dir_all(&old);
    lock.save(project)?;
    println!(
        "installed recipe {name} {} into {} (sha256 {})",
        m.version,
        package::installed_display(&name),
        &sha[..12]
    );
    Ok(exit::OK)
}

fn remove(project: &Project, name: &str) -> Result<i32, Error> {
    let mut lock = LockFile::load(project)?;
    let dir = package::installed_dir(project, name);
    let in_lock = lock.get(name).is_some();
    if !in_lock && !dir.exists() {
        if package::builtin(name)?.is_some() {
            return Err(Error::usage(format!(
                "recipe {name} is built in; only installed recipes can be removed"
            )));
        }
        return Err(Error::usage(format!("recipe {name} is not installed"))
            .with_hint("`stagecraft recipe list` shows the installed recipes"));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::usage(format!("cannot remove {}: {e}", dir.display())))?;
    }
    if lock.remove(name) {
        lock.save(project)?;
    }
    println!(
        "removed recipe {name} ({} and its stagecraft.lock entry)",
        package::installed_display(name)
    );
    println!(
        "what applying it wrote (compose block, files, docs/recipes/{name}.md, .env lines) is left as it is"
    );
    Ok(exit::OK)
}

fn apply(mut project: Project, a: ApplyArgs) -> Result<i32, Error> {
    let pkg = recipe::resolve(&project, &a.name)?;
    recipe::verify_installed(&project, &pkg)?;
    manifest::check_stagecraft(&pkg.manifest)?;
    recipe::check_requires(&project, &pkg)?;
    let inputs = recipe::parse_inputs(&pkg, &a.inputs)?;
    let caps = recipe::effective_capabilities(&project, &pkg)?;
    let project_name = project.config.name.clone().unwrap_or_else(|| {
        project
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    // The recipe runs with its own capabilities, never the project's.
    project.config.permissions = caps.iter().map(|c| c.to_string()).collect();
    let settings = Settings {
        allow: Vec::new(),
        allow_all: false,
        cpu_limit: 30.0,
        memory_limit_mb: 512,
        timeout: None,
        ledger: a.ledger.ledger.clone(),
        json: false,
    };
    let mut overlay = HashMap::new();
    let module = match &pkg.origin {
        Origin::Builtin(_) => {
            let src = pkg.read_text("init.luau").ok_or_else(|| {
                Error::new(
                    Kind::Script,
                    format!("built-in recipe {} has no init.luau", pkg.name),
                )
            })?;
            let module = format!("stagecraft/recipes/{}", pkg.name);
            overlay.insert(format!("{module}.luau"), src);
            module
        }
        Origin::Folder(_) => pkg.name.clone(),
    };
    let info = serde_json::json!({
        "recipe": { "name": pkg.name, "version": pkg.manifest.version.to_string() },
        "project": { "name": project_name },
    });
    let mode = if a.dry_run { "plan" } else { "apply" };
    let script = engine::Script {
        chunk: recipe::DRIVER_CHUNK.to_string(),
        source: recipe::DRIVER.to_string(),
        args: vec![
            mode.to_string(),
            pkg.name.clone(),
            module,
            format!("inputs={}", serde_json::Value::Object(inputs)),
            format!("info={info}"),
        ],
        overlay,
        replay_of: None,
        command: None,
    };
    let declared: Vec<String> = pkg
        .manifest
        .capabilities
        .iter()
        .map(|c| c.to_string())
        .collect();
    let outcome = engine::run_live(project, &settings, script)?;
    if let Some(mut e) = outcome.error {
        // An input the recipe's own checks refused: a usage error, said without a traceback.
        if e.kind == Kind::Usage {
            e.detail = None;
        }
        if e.kind == Kind::Permission {
            e = e.with_hint(format!(
                "recipe {} runs only with the capabilities its recipe.yaml declares{} ({}); stagecraft.yml and --allow do not apply to recipes",
                pkg.name,
                if pkg.is_builtin() { "" } else { " and you approved" },
                none_or(&declared)
            ));
        }
        eprintln!("{e}");
        eprintln!("run {} {}", outcome.run_id, outcome.status.as_str());
        return Ok(outcome.exit_code);
    }
    let result = outcome.result.unwrap_or_default();
    let files = result["files"].as_array().cloned().unwrap_or_default();
    let changed = result["changed"].as_u64().unwrap_or(0);
    let version = &pkg.manifest.version;
    let placeholders: Vec<String> = result["placeholders"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if a.dry_run {
        print!("{}", result["diff"].as_str().unwrap_or(""));
        if changed == 0 {
            println!(
                "dry run: recipe {} {version} is applied already; nothing would change",
                pkg.name
            );
        } else {
            println!(
                "dry run: {changed} file{} would change; nothing was written",
                if changed == 1 { "" } else { "s" }
            );
        }
        return Ok(exit::OK);
    }
    if changed == 0 {
        println!(
            "recipe {} {version} is applied already: nothing changed",
            pkg.name
        );
        return Ok(exit::OK);
    }
    println!("applied recipe {} {version}:", pkg.name);
    for f in &files {
        let action = f["action"].as_str().unwrap_or("");
        if action != "unchanged" {
            println!("  {action:<8} {}", f["path"].as_str().unwrap_or(""));
        }
    }
    if !placeholders.is_empty() {
        println!(
            "fill in the secrets added to .env (empty placeholders): {}",
            placeholders.join(", ")
        );
    }
    Ok(exit::OK)
}
