//! A recipe package: built into the binary (`recipes/NAME/`) or installed in the project
//! (`.stagecraft/recipes/NAME/`), and the content digest the lock file pins.

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};

use super::manifest::{self, Manifest};
use crate::error::{Error, Kind};
use crate::project::{Project, STATE_DIR};

/// The built-in recipes.
pub static BUILTIN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/recipes");

/// Most files, bytes per file and bytes in all a package may hold.
pub const MAX_FILES: usize = 2_000;
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub enum Origin {
    Builtin(&'static Dir<'static>),
    /// A folder on disk: installed (`.stagecraft/recipes/NAME`) or being added (staging).
    Folder(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Package {
    /// The name it is known by (installed name; for built-ins the folder name).
    pub name: String,
    pub manifest: Manifest,
    pub origin: Origin,
}

impl Package {
    pub fn is_builtin(&self) -> bool {
        matches!(self.origin, Origin::Builtin(_))
    }

    /// A file of the package by its path relative to the package root (`templates/x.j2`).
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        match &self.origin {
            Origin::Builtin(dir) => dir
                .get_file(dir.path().join(rel))
                .map(|f| f.contents().to_vec()),
            Origin::Folder(root) => {
                let p = crate::runtime::loader::normalize(Path::new(rel))?;
                let full = root.join(p);
                // Never follow a link: packages hold plain files only.
                let meta = full.symlink_metadata().ok()?;
                if !meta.is_file() {
                    return None;
                }
                std::fs::read(full).ok()
            }
        }
    }

    pub fn read_text(&self, rel: &str) -> Option<String> {
        self.read(rel)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn readme(&self) -> String {
        self.read_text("README.md").unwrap_or_default()
    }

    /// Every file of the package, as (path relative to the root with `/`, content), sorted.
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        match &self.origin {
            Origin::Builtin(dir) => builtin_files(dir, dir.path(), &mut out),
            Origin::Folder(root) => folder_files(root, root, &mut out)?,
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The content digest pinned in `stagecraft.lock`.
    pub fn sha256(&self) -> Result<String, Error> {
        Ok(digest(&self.files()?))
    }

    /// Where it comes from, for listings: `built-in` or the folder.
    pub fn display_origin(&self) -> String {
        match &self.origin {
            Origin::Builtin(_) => "built-in".into(),
            Origin::Folder(p) => p.display().to_string(),
        }
    }
}

/// sha256 over the files in path order: for each, its path, a NUL, its length in decimal, a
/// NUL, then its bytes. Independent of file times, permissions and the order on disk.
pub fn digest(files: &[(String, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(bytes.len().to_string().as_bytes());
        h.update([0]);
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

fn builtin_files(dir: &Dir<'static>, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for f in dir.files() {
        let rel = f.path().strip_prefix(base).unwrap_or(f.path());
        out.push((rel.to_string_lossy().into_owned(), f.contents().to_vec()));
    }
    for d in dir.dirs() {
        builtin_files(d, base, out);
    }
}

/// Read a package folder: plain files and folders only (a link is an error), within the limits.
pub fn folder_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), Error> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", dir.display())))?;
    for entry in rd {
        let entry =
            entry.map_err(|e| Error::usage(format!("cannot read {}: {e}", dir.display())))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if rel == ".git" {
            continue;
        }
        let meta = path
            .symlink_metadata()
            .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
        if meta.file_type().is_symlink() {
            return Err(Error::usage(format!(
                "{}: recipe packages may not contain symbolic links",
                path.display()
            ))
            .with_hint("replace the link with the file it points to"));
        }
        if meta.is_dir() {
            folder_files(root, &path, out)?;
        } else if meta.is_file() {
            if meta.len() > MAX_FILE_BYTES {
                return Err(Error::usage(format!(
                    "{}: {} bytes is more than a recipe file may hold ({MAX_FILE_BYTES})",
                    path.display(),
                    meta.len()
                )));
            }
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
            out.push((rel, bytes));
            if out.len() > MAX_FILES {
                return Err(Error::usage(format!(
                    "{}: more than {MAX_FILES} files in a recipe package",
                    root.display()
                )));
            }
            let total: u64 = out.iter().map(|(_, b)| b.len() as u64).sum();
            if total > MAX_TOTAL_BYTES {
                return Err(Error::usage(format!(
                    "{}: more than {MAX_TOTAL_BYTES} bytes in a recipe package",
                    root.display()
                )));
            }
        } else {
            return Err(Error::usage(format!(
                "{}: recipe packages hold plain files and folders only",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Load a package from a folder and check its shape: `recipe.yaml` and `init.luau`.
pub fn load_folder(root: &Path, display: &str) -> Result<Package, Error> {
    let file = format!("{display}/recipe.yaml");
    let text = std::fs::read_to_string(root.join("recipe.yaml")).map_err(|e| {
        Error::usage(format!("{file}: cannot read: {e}")).with_hint(
            "a recipe package is a folder with recipe.yaml, init.luau, templates/ and README.md",
        )
    })?;
    let manifest = manifest::parse(&text, &file)?;
    if !root.join("init.luau").is_file() {
        return Err(Error::usage(format!("{display}: init.luau is missing"))
            .with_hint("init.luau returns a table with plan(inputs, ctx) and apply(inputs, ctx)"));
    }
    Ok(Package {
        name: manifest.name.clone(),
        manifest,
        origin: Origin::Folder(root.to_path_buf()),
    })
}

/// Every built-in recipe, by name.
pub fn builtins() -> Result<Vec<Package>, Error> {
    let mut out = Vec::new();
    for dir in BUILTIN.dirs() {
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(builtin(&name)?.ok_or_else(|| {
            Error::new(
                Kind::Script,
                format!("built-in recipe {name} is incomplete"),
            )
        })?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn builtin(name: &str) -> Result<Option<Package>, Error> {
    let Some(dir) = BUILTIN.get_dir(name) else {
        return Ok(None);
    };
    let file = format!("recipes/{name}/recipe.yaml");
    let Some(text) = dir
        .get_file(dir.path().join("recipe.yaml"))
        .and_then(|f| f.contents_utf8())
    else {
        return Ok(None);
    };
    let manifest = manifest::parse(text, &file)?;
    Ok(Some(Package {
        name: name.to_string(),
        manifest,
        origin: Origin::Builtin(dir),
    }))
}

/// Where an installed recipe lives.
pub fn installed_dir(project: &Project, name: &str) -> PathBuf {
    project.root.join(STATE_DIR).join("recipes").join(name)
}

pub fn installed_display(name: &str) -> String {
    format!("{STATE_DIR}/recipes/{name}")
}
