//! Getting a recipe package for `recipe add`: from a local folder, a `.tar.gz`, or a git
//! repository (cloned with the system `git`), into a private staging folder.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::package::{MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, folder_files};
use crate::error::Error;

pub struct Fetched {
    /// Holds the staging folder; removed when dropped.
    pub staging: tempfile::TempDir,
    /// The package root inside it (the folder with recipe.yaml).
    pub root: PathBuf,
    /// The source as recorded in the lock file.
    pub source: String,
    /// The commit a git ref resolved to.
    pub resolved: Option<String>,
}

enum Kind {
    Folder(PathBuf),
    Archive(PathBuf),
    Git {
        url: String,
        reference: Option<String>,
    },
}

fn absolute(cwd: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn is_git_repo(p: &Path) -> bool {
    p.join(".git").exists() || (p.join("HEAD").is_file() && p.join("objects").is_dir())
}

fn classify(source: &str, cwd: &Path) -> Result<Kind, Error> {
    let (base, reference) = match source.rsplit_once('#') {
        Some((b, r)) if !r.is_empty() && !b.is_empty() => (b, Some(r.to_string())),
        _ => (source, None),
    };
    // A ref is handed to `git rev-parse`: it may not look like an option.
    if let Some(r) = &reference
        && (r.starts_with('-') || r.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(
            Error::usage(format!("recipe add: '#{r}' is not a tag, branch or commit"))
                .with_hint("write SOURCE#TAG, SOURCE#BRANCH or SOURCE#COMMIT"),
        );
    }
    // git's remote helpers (`ext::COMMAND`, `fd::N`, ...) run programs or use descriptors: a
    // recipe source is a URL, a path or an archive, never one of those.
    let scheme_end = base.find("::");
    if scheme_end.is_some_and(|i| {
        i > 0
            && base[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    }) {
        return Err(Error::usage(format!(
            "recipe add: '{base}' uses a git transport helper, which recipe sources may not"
        ))
        .with_hint("give a file://, https:// or ssh URL, a path, or a .tar.gz"));
    }
    if let Some(url) = base.strip_prefix("git+") {
        let url = if url.contains("://") || url.contains('@') {
            url.to_string()
        } else {
            absolute(cwd, url).display().to_string()
        };
        return Ok(Kind::Git { url, reference });
    }
    if base.contains("://") || base.starts_with("git@") || base.ends_with(".git") {
        let url = if base.contains("://") || base.starts_with("git@") {
            base.to_string()
        } else {
            absolute(cwd, base).display().to_string()
        };
        return Ok(Kind::Git { url, reference });
    }
    let path = absolute(cwd, base);
    if reference.is_some() {
        return Ok(Kind::Git {
            url: path.display().to_string(),
            reference,
        });
    }
    if path.is_dir() {
        if !path.join("recipe.yaml").is_file() && is_git_repo(&path) {
            return Ok(Kind::Git {
                url: path.display().to_string(),
                reference: None,
            });
        }
        return Ok(Kind::Folder(path));
    }
    if path.is_file() && (base.ends_with(".tar.gz") || base.ends_with(".tgz")) {
        return Ok(Kind::Archive(path));
    }
    Err(Error::usage(format!(
        "recipe add: '{source}' is not a folder, a .tar.gz file or a git repository"
    ))
    .with_hint(
        "SOURCE is a folder with recipe.yaml, a .tar.gz of one, or a git URL (file://, https://, a path ending in .git, or git+PATH) with an optional #ref",
    ))
}

/// Fetch `source` (relative paths from `cwd`) into a staging folder.
pub fn fetch(source: &str, cwd: &Path) -> Result<Fetched, Error> {
    let staging = tempfile::Builder::new()
        .prefix("stagecraft-recipe-")
        .tempdir()
        .map_err(|e| Error::usage(format!("cannot create a staging folder: {e}")))?;
    let out = staging.path().join("pkg");
    std::fs::create_dir_all(&out)
        .map_err(|e| Error::usage(format!("cannot create a staging folder: {e}")))?;
    let (recorded, resolved) = match classify(source, cwd)? {
        Kind::Folder(p) => {
            copy_folder(&p, &out)?;
            (p.display().to_string(), None)
        }
        Kind::Archive(p) => {
            extract(&p, &out)?;
            (p.display().to_string(), None)
        }
        Kind::Git { url, reference } => {
            let commit = clone(&url, reference.as_deref(), &out)?;
            let shown = match &reference {
                Some(r) => format!("git+{url}#{r}"),
                None => format!("git+{url}"),
            };
            (shown, Some(commit))
        }
    };
    let root = package_root(&out, source)?;
    Ok(Fetched {
        staging,
        root,
        source: recorded,
        resolved,
    })
}

/// The folder holding recipe.yaml: the top, or its only sub-folder.
fn package_root(out: &Path, source: &str) -> Result<PathBuf, Error> {
    if out.join("recipe.yaml").is_file() {
        return Ok(out.to_path_buf());
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    if let [only] = entries.as_slice()
        && only.is_dir()
        && only.join("recipe.yaml").is_file()
    {
        return Ok(only.clone());
    }
    Err(
        Error::usage(format!("recipe add: {source}: no recipe.yaml at its top")).with_hint(
            "a recipe package is a folder with recipe.yaml, init.luau, templates/ and README.md",
        ),
    )
}

/// Copy a package folder's files (no links, within the size limits; `.git` left out).
pub fn copy_folder(from: &Path, to: &Path) -> Result<(), Error> {
    let mut files = Vec::new();
    folder_files(from, from, &mut files)?;
    for (rel, bytes) in files {
        let dest = to.join(&rel);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::usage(format!("cannot create {}: {e}", d.display())))?;
        }
        std::fs::write(&dest, bytes)
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", dest.display())))?;
    }
    Ok(())
}

/// Extract a `.tar.gz` safely: plain files and folders only, every path inside `to`, within
/// the size limits (counted on what is actually read, not on what headers claim).
fn extract(archive: &Path, to: &Path) -> Result<(), Error> {
    let shown = archive.display().to_string();
    let bad = |msg: String| {
        Error::usage(format!("recipe add: {shown}: {msg}"))
            .with_hint("recipe archives hold plain files and folders inside one package folder")
    };
    let f = std::fs::File::open(archive).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut count = 0usize;
    let mut total = 0u64;
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a .tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let kind = entry.header().entry_type();
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad entry name: {e}")))?
            .into_owned();
        let name = path.display().to_string();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(s) => rel.push(s),
                Component::CurDir => {}
                _ => return Err(bad(format!("entry '{name}' escapes the package folder"))),
            }
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(bad(format!(
                "entry '{name}' is a link (to '{target}'); links are not allowed in recipe packages"
            )));
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = to.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&dest)
                .map_err(|e| bad(format!("cannot create {}: {e}", dest.display())))?;
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("entry '{name}' is not a plain file or folder")));
        }
        count += 1;
        if count > MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| bad(format!("cannot create {}: {e}", d.display())))?;
        }
        let mut buf = Vec::new();
        (&mut entry)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("cannot read entry '{name}': {e}")))?;
        if buf.len() as u64 > MAX_FILE_BYTES {
            return Err(bad(format!(
                "entry '{name}' is larger than a recipe file may be ({MAX_FILE_BYTES} bytes)"
            )));
        }
        total += buf.len() as u64;
        if total > MAX_TOTAL_BYTES {
            return Err(bad(format!(
                "more than {MAX_TOTAL_BYTES} bytes unpacked; refusing"
            )));
        }
        std::fs::write(&dest, &buf)
            .map_err(|e| bad(format!("cannot write {}: {e}", dest.display())))?;
    }
    Ok(())
}

fn git(args: &[&str], cwd: Option<&Path>) -> Result<String, String> {
    let mut c = Command::new("git");
    c.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(std::process::Stdio::null());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let out = c
        .output()
        .map_err(|e| format!("cannot run git: {e} (is git installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .trim()
            .lines()
            .last()
            .unwrap_or("git failed")
            .to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Clone `url` at `reference` (a tag, branch or commit; default: the default branch) into
/// `to` without `.git`; returns the resolved commit.
fn clone(url: &str, reference: Option<&str>, to: &Path) -> Result<String, Error> {
    let work = to.with_file_name("clone");
    let work_s = work.display().to_string();
    let fail = |what: &str, e: String| {
        Error::usage(format!("recipe add: git {what} of {url} failed: {e}"))
            .with_hint("check the URL and the ref; Stagecraft runs the system git without prompts")
    };
    git(
        &["clone", "--quiet", "--no-checkout", "--", url, &work_s],
        None,
    )
    .map_err(|e| fail("clone", e))?;
    let target = match reference {
        None => "HEAD".to_string(),
        Some(r) => {
            let direct = format!("{r}^{{commit}}");
            let remote = format!("origin/{r}^{{commit}}");
            git(&["rev-parse", "--verify", "--quiet", &direct], Some(&work))
                .or_else(|_| git(&["rev-parse", "--verify", "--quiet", &remote], Some(&work)))
                .map_err(|_| fail("checkout", format!("no tag, branch or commit named '{r}'")))?
        }
    };
    git(
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
            &target,
        ],
        Some(&work),
    )
    .map_err(|e| fail("checkout", e))?;
    let commit = git(&["rev-parse", "HEAD"], Some(&work)).map_err(|e| fail("rev-parse", e))?;
    copy_folder(&work, to)?;
    Ok(commit)
}
