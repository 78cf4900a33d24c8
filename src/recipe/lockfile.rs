//! `stagecraft.lock` at the project root: one entry per installed recipe, pinning where it came
//! from, its content digest and the capabilities the user approved.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::project::Project;

pub const LOCK_FILE: &str = "stagecraft.lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub recipes: Vec<LockEntry>,
}

fn one() -> u32 {
    1
}

impl Default for LockFile {
    fn default() -> Self {
        LockFile {
            version: 1,
            recipes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub name: String,
    pub version: String,
    /// As given to `recipe add` (a folder, a .tar.gz, or `git+URL#ref`), made absolute.
    pub source: String,
    /// The git commit the ref resolved to; `null` for folders and archives.
    #[serde(default)]
    pub resolved: Option<String>,
    /// Content digest of `.stagecraft/recipes/NAME/` (see docs/recipes.md).
    pub sha256: String,
    /// The capabilities the user approved when adding it.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

pub fn path(project: &Project) -> PathBuf {
    project.root.join(LOCK_FILE)
}

impl LockFile {
    pub fn load(project: &Project) -> Result<LockFile, Error> {
        let p = path(project);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockFile::default()),
            Err(e) => return Err(Error::usage(format!("cannot read {}: {e}", p.display()))),
        };
        if text.trim().is_empty() {
            return Ok(LockFile::default());
        }
        serde_saphyr::from_str::<LockFile>(&text).map_err(|e| {
            Error::usage(format!("{}: {}", p.display(), e.without_snippet()))
                .with_hint("stagecraft.lock is written by `stagecraft recipe add`; re-add the recipes or restore the file from version control")
        })
    }

    pub fn get(&self, name: &str) -> Option<&LockEntry> {
        self.recipes.iter().find(|e| e.name == name)
    }

    pub fn upsert(&mut self, entry: LockEntry) {
        self.recipes.retain(|e| e.name != entry.name);
        self.recipes.push(entry);
        self.recipes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.recipes.len();
        self.recipes.retain(|e| e.name != name);
        before != self.recipes.len()
    }

    /// The file's text: stable, one key per line, readable in a diff.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# stagecraft.lock: recipes installed in .stagecraft/recipes/, written by\n\
             # `stagecraft recipe add`. Commit it; do not edit it by hand.\n",
        );
        s.push_str(&format!("version: {}\n", self.version));
        if self.recipes.is_empty() {
            s.push_str("recipes: []\n");
            return s;
        }
        s.push_str("recipes:\n");
        for e in &self.recipes {
            s.push_str(&format!("  - name: {}\n", q(&e.name)));
            s.push_str(&format!("    version: {}\n", q(&e.version)));
            s.push_str(&format!("    source: {}\n", q(&e.source)));
            match &e.resolved {
                Some(r) => s.push_str(&format!("    resolved: {}\n", q(r))),
                None => s.push_str("    resolved: null\n"),
            }
            s.push_str(&format!("    sha256: {}\n", q(&e.sha256)));
            let caps: Vec<String> = e.capabilities.iter().map(|c| q(c)).collect();
            s.push_str(&format!("    capabilities: [{}]\n", caps.join(", ")));
        }
        s
    }

    pub fn save(&self, project: &Project) -> Result<(), Error> {
        super::write_atomic(&path(project), self.render().as_bytes(), None)
    }
}

/// A YAML double-quoted string (JSON's escaping is valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Whether the lock file exists (for messages).
pub fn exists(root: &Path) -> bool {
    root.join(LOCK_FILE).is_file()
}
