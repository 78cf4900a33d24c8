//! `stagecraft types`: write the Luau type definitions and a `.luaurc` into the project (for
//! luau-lsp), or with `--docs DIR` the generated API reference. The work is in `crate::types`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::cwd;
use crate::error::{Error, exit};
use crate::project::Project;
use crate::types::{self, Action, Planned};

#[derive(Args, Debug)]
pub struct TypesArgs {
    /// Folder for the type files, inside the project (default: .stagecraft/types).
    #[arg(long, value_name = "DIR", conflicts_with = "docs")]
    pub dir: Option<PathBuf>,
    /// Write the API reference (Markdown, one file per module) into DIR instead.
    #[arg(long, value_name = "DIR")]
    pub docs: Option<PathBuf>,
    /// Change nothing; exit 1 when a file is missing or differs from what would be written.
    #[arg(long)]
    pub check: bool,
}

pub const TYPES_HELP: &str = "\
Writes one Luau type file per module (.stagecraft/types/<module>.luau) and merges into the
project's .luaurc: languageMode \"strict\" and the aliases `stagecraft` (the type files) and `lib`
(.stagecraft/lib). Keys you already set are kept and named. Editors with luau-lsp then resolve
`@stagecraft/<module>`, which the runtime loads as `stagecraft/<module>`:
  local exec = require(\"@stagecraft/exec\")
(see docs/editor.md). Running it again changes nothing. Examples:
  stagecraft types                     write or refresh the type files and .luaurc
  stagecraft types --check             exit 1 if they are missing or out of date (for CI)
  stagecraft types --docs docs/api     regenerate the API reference from the same definitions";

pub fn run(a: TypesArgs) -> Result<i32, Error> {
    let here = cwd()?;
    let here = here.canonicalize().unwrap_or(here);
    let defs = types::definitions().map_err(|e| {
        Error::usage(format!("the embedded type definitions are broken: {e}"))
            .with_hint("this is a bug in this build of stagecraft")
    })?;
    let plan = match &a.docs {
        Some(dir) => types::plan_docs(&here.join(dir), &defs)?,
        None => {
            let project = Project::discover(&here)?;
            let dir = match &a.dir {
                Some(d) => inside(&project.root, &here.join(d))?,
                None => project.root.join(crate::project::STATE_DIR).join("types"),
            };
            let rel = dir.strip_prefix(&project.root).unwrap_or(&dir);
            let alias = format!("./{}", rel.to_string_lossy());
            let mut plan =
                types::plan_dir(&dir, &types::project_files(&defs), "luau", types::GENERATED)?;
            if let Some(p) = types::plan_luaurc(&project.root.join(".luaurc"), &alias)? {
                plan.push(p);
            }
            plan
        }
    };
    let changes = plan.iter().filter(|p| p.action != Action::Keep).count();
    for p in &plan {
        report(&here, p, a.check);
    }
    let what = match &a.docs {
        Some(_) => format!("{} API pages", defs.len() + 1),
        None => format!("{} type files and .luaurc", defs.len()),
    };
    if a.check {
        if changes == 0 {
            println!("up to date: {what}");
            return Ok(exit::OK);
        }
        let again = match &a.docs {
            Some(d) => format!("stagecraft types --docs {}", d.display()),
            None => "stagecraft types".to_string(),
        };
        println!("{changes} file(s) out of date; run `{again}` to update them");
        return Ok(1);
    }
    types::apply(&plan)?;
    if changes == 0 {
        println!("nothing changed: {what} are up to date");
    } else {
        println!("{changes} file(s) changed");
    }
    Ok(exit::OK)
}

/// `path` must lie inside the project (the `.luaurc` alias is relative to the root).
fn inside(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    let normal = crate::runtime::loader::normalize(path.strip_prefix("/").unwrap_or(path))
        .map(|p| Path::new("/").join(p))
        .filter(|p| p.starts_with(root));
    normal.ok_or_else(|| {
        Error::usage(format!(
            "--dir {}: the type folder must be inside the project {}",
            path.display(),
            root.display()
        ))
        .with_hint("the .luaurc alias points at it relative to the project root")
    })
}

fn report(here: &Path, p: &Planned, check: bool) {
    let shown = p
        .path
        .strip_prefix(here)
        .unwrap_or(&p.path)
        .display()
        .to_string();
    let verb = match (&p.action, check) {
        (Action::Create(_), false) => "created",
        (Action::Create(_), true) => "missing",
        (Action::Update(_), false) => "updated",
        (Action::Update(_), true) => "differs",
        (Action::Remove, false) => "removed",
        (Action::Remove, true) => "stale",
        (Action::Keep, _) => "kept",
    };
    println!("{verb} {shown}");
    for n in &p.notes {
        println!("  {n}");
    }
}
