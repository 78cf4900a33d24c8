//! Build contexts: the files under a folder minus what `.dockerignore` excludes, hashed into a
//! content digest (recorded in the ledger) and streamed to the engine as a tar.
//!
//! `.dockerignore` follows Docker's rules: one pattern per line, `#` comments, a leading `/` and
//! `./` ignored, `*` `?` `[...]` within one path segment, `**` across any number of segments,
//! `!` re-includes, the last matching pattern wins, and a pattern that matches a folder excludes
//! everything under it. The Dockerfile and `.dockerignore` itself are always sent, as the engine
//! needs them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One regular file, symlink or folder of a build context, in sorted order.
pub struct Entry {
    /// Slash-separated path relative to the context root.
    pub rel: String,
    pub full: PathBuf,
    pub kind: EntryKind,
}

#[derive(PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink(PathBuf),
}

pub struct Context {
    pub entries: Vec<Entry>,
    /// `sha256:` digest over paths, kinds, modes and contents, independent of mtimes.
    pub digest: String,
    pub files: usize,
    pub bytes: u64,
}

struct Pattern {
    negate: bool,
    segments: Vec<String>,
}

/// Parsed `.dockerignore`.
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pat) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pat);
            if cleaned.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                negate,
                segments: cleaned.split('/').map(str::to_string).collect(),
            });
        }
        Ignore { patterns }
    }

    /// Whether `rel` (slash-separated, relative to the context) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let segs: Vec<&str> = rel.split('/').collect();
        let mut excluded = false;
        for p in &self.patterns {
            // A pattern matching the path or any of its parent folders matches the path.
            let hit = (1..=segs.len()).any(|n| match_segments(&p.segments, &segs[..n]));
            if hit {
                excluded = !p.negate;
            }
        }
        excluded
    }

    /// Whether some `!` pattern could re-include something under the folder `rel`: then the
    /// folder must be walked even though it is excluded.
    fn may_reinclude_under(&self, rel: &str) -> bool {
        self.patterns.iter().any(|p| {
            p.negate && {
                let prefix: Vec<&str> = rel.split('/').collect();
                p.segments
                    .iter()
                    .take(prefix.len())
                    .zip(&prefix)
                    .all(|(pat, s)| pat == "**" || match_segment(pat.as_bytes(), s.as_bytes()))
                    || p.segments.first().is_some_and(|s| s == "**")
            }
        })
    }
}

/// Docker cleans patterns with Go's filepath.Clean and drops a leading slash.
fn clean(pat: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in pat.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, prest)) => {
                match_segment(first.as_bytes(), seg.as_bytes()) && match_segments(rest, prest)
            }
            None => false,
        },
    }
}

/// Go's filepath.Match for one segment: `*`, `?`, `[...]` (with `^`/`!` negation and ranges),
/// `\` escapes.
fn match_segment(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_segment(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_segment(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some((&c, srest)) = s.split_first() else {
                return false;
            };
            let (negate, mut body) = match rest.first() {
                Some(b'^') | Some(b'!') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let mut matched = false;
            let mut first = true;
            loop {
                match body.split_first() {
                    None => return false, // unterminated class: no match
                    Some((b']', after)) if !first => {
                        body = after;
                        break;
                    }
                    Some((&lo, after)) => {
                        let (lo, after) = if lo == b'\\' && !after.is_empty() {
                            (after[0], &after[1..])
                        } else {
                            (lo, after)
                        };
                        if after.len() >= 2 && after[0] == b'-' && after[1] != b']' {
                            let hi = after[1];
                            matched |= lo <= c && c <= hi;
                            body = &after[2..];
                        } else {
                            matched |= lo == c;
                            body = after;
                        }
                    }
                }
                first = false;
            }
            matched != negate && match_segment(body, srest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            s.first() == Some(&rest[0]) && match_segment(&rest[1..], &s[1..])
        }
        Some((&c, rest)) => s.first() == Some(&c) && match_segment(rest, &s[1..]),
    }
}

/// Walk `root` (sorted, not following symlinks), honouring `.dockerignore`; `dockerfile` is the
/// Dockerfile's path relative to the root, always included. `project_root`: the context is the
/// project's root folder, so its `.stagecraft/` (the ledger) and `.env*` files (secrets) are
/// never sent, whatever `.dockerignore` says.
pub fn collect(root: &Path, dockerfile: &str, project_root: bool) -> std::io::Result<Context> {
    let ignore = match std::fs::read_to_string(root.join(".dockerignore")) {
        Ok(t) => Ignore::parse(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::parse(""),
        Err(e) => return Err(e),
    };
    let always = [clean(dockerfile), ".dockerignore".to_string()];
    let mut entries = Vec::new();
    walk(root, "", &ignore, &always, &mut entries)?;
    if project_root {
        entries.retain(|e| {
            let top = e.rel.split('/').next().unwrap_or_default();
            top != crate::project::STATE_DIR && top != ".env" && !top.starts_with(".env.")
        });
    }
    let mut h = Sha256::new();
    let mut files = 0;
    let mut bytes = 0u64;
    for e in &entries {
        h.update(e.rel.as_bytes());
        h.update([0]);
        match &e.kind {
            EntryKind::Dir => h.update(b"d"),
            EntryKind::Symlink(t) => {
                h.update(b"l");
                h.update(t.as_os_str().as_encoded_bytes());
            }
            EntryKind::File => {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(&e.full)?;
                h.update(b"f");
                h.update((meta.permissions().mode() & 0o7777).to_le_bytes());
                let mut f = std::fs::File::open(&e.full)?;
                bytes += std::io::copy(&mut f, &mut h)?;
                files += 1;
            }
        }
        h.update([0]);
    }
    Ok(Context {
        entries,
        digest: format!("sha256:{}", hex::encode(h.finalize())),
        files,
        bytes,
    })
}

fn walk(
    dir: &Path,
    rel: &str,
    ignore: &Ignore,
    always: &[String],
    out: &mut Vec<Entry>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let Some(name_str) = name.to_str() else {
            return Err(std::io::Error::other(format!(
                "{}: file names must be UTF-8",
                dir.join(&name).display()
            )));
        };
        let child_rel = if rel.is_empty() {
            name_str.to_string()
        } else {
            format!("{rel}/{name_str}")
        };
        let full = dir.join(&name);
        let meta = std::fs::symlink_metadata(&full)?;
        let excluded = ignore.excluded(&child_rel) && !always.contains(&child_rel);
        if meta.is_dir() {
            if excluded && !ignore.may_reinclude_under(&child_rel) {
                continue;
            }
            if !excluded {
                out.push(Entry {
                    rel: child_rel.clone(),
                    full: full.clone(),
                    kind: EntryKind::Dir,
                });
            }
            walk(&full, &child_rel, ignore, always, out)?;
        } else if !excluded {
            let kind = if meta.file_type().is_symlink() {
                EntryKind::Symlink(std::fs::read_link(&full)?)
            } else if meta.is_file() {
                EntryKind::File
            } else {
                continue; // sockets, fifos, devices are not sent
            };
            out.push(Entry {
                rel: child_rel,
                full,
                kind,
            });
        }
    }
    Ok(())
}

/// Write the context as a tar into `w` (a blocking writer). Modes are kept (as `docker build`
/// does); owners and mtimes are fixed, so the same content gives the same tar.
pub fn write_tar(ctx: &Context, w: impl std::io::Write) -> std::io::Result<()> {
    const MTIME: u64 = 1_153_704_088; // the tar crate's deterministic mtime
    let mut b = tar::Builder::new(w);
    for e in &ctx.entries {
        let meta = std::fs::symlink_metadata(&e.full)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        {
            use std::os::unix::fs::PermissionsExt;
            h.set_mode(meta.permissions().mode() & 0o7777);
        }
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        match &e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &e.rel, std::io::empty())?;
            }
            EntryKind::File => {
                let f = std::fs::File::open(&e.full)?;
                b.append_data(&mut h, &e.rel, f)?;
            }
            EntryKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &e.rel, target)?;
            }
        }
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(p: &str) -> Ignore {
        Ignore::parse(p)
    }

    #[test]
    fn dockerignore_rules() {
        let i = ig("# comment\n*.log\n!keep.log\ntarget\n/secret/**\ndocs/*.md\n**/tmp\n");
        assert!(i.excluded("a.log"));
        assert!(!i.excluded("keep.log"));
        assert!(!i.excluded("sub/a.log"), "* does not cross folders");
        assert!(i.excluded("target"));
        assert!(
            i.excluded("target/debug/x"),
            "a folder pattern excludes its contents"
        );
        assert!(i.excluded("secret/a/b"));
        assert!(i.excluded("docs/a.md"));
        assert!(!i.excluded("docs/sub/a.md"));
        assert!(i.excluded("x/y/tmp/z"));
        assert!(i.excluded("tmp"));
        assert!(!i.excluded("src/main.rs"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(match_segment(b"a[0-9]c", b"a5c"));
        assert!(!match_segment(b"a[^0-9]c", b"a5c"));
        assert!(match_segment(b"a[!x]c", b"abc"));
        assert!(match_segment(b"a\\*c", b"a*c"));
        assert!(!match_segment(b"a\\*c", b"abc"));
        assert!(match_segment(b"?b*", b"abxyz"));
        assert!(!match_segment(b"[abc", b"a"));
    }

    #[test]
    fn last_match_wins_and_reinclusion_walks_folders() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("vendor/keep")).unwrap();
        std::fs::write(root.join("vendor/drop.txt"), "x").unwrap();
        std::fs::write(root.join("vendor/keep/a.txt"), "a").unwrap();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(
            root.join(".dockerignore"),
            "vendor\n!vendor/keep\nDockerfile\n",
        )
        .unwrap();
        let c = collect(root, "Dockerfile", false).unwrap();
        let rels: Vec<&str> = c.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(
            rels,
            [
                ".dockerignore",
                "Dockerfile",
                "vendor/keep",
                "vendor/keep/a.txt"
            ]
        );
    }

    #[test]
    fn the_project_state_and_env_files_never_leave_the_project_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join(".stagecraft")).unwrap();
        std::fs::write(root.join(".stagecraft/ledger.db"), "x").unwrap();
        std::fs::write(root.join(".env"), "A=1").unwrap();
        std::fs::write(root.join(".env.local"), "A=1").unwrap();
        std::fs::write(root.join(".dockerignore"), "!.env\n").unwrap();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        let rels = |c: Context| c.entries.into_iter().map(|e| e.rel).collect::<Vec<_>>();
        assert_eq!(
            rels(collect(root, "Dockerfile", true).unwrap()),
            [".dockerignore", "Dockerfile"]
        );
        assert_eq!(rels(collect(root, "Dockerfile", false).unwrap()).len(), 6);
    }

    #[test]
    fn the_tar_keeps_modes_and_fixes_owners_and_times() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            d.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o4750),
        )
        .unwrap();
        let c = collect(d.path(), "Dockerfile", false).unwrap();
        let mut buf = Vec::new();
        write_tar(&c, &mut buf).unwrap();
        let mut again = Vec::new();
        write_tar(&c, &mut again).unwrap();
        assert_eq!(buf, again, "the same content gives the same tar");
        let mut ar = tar::Archive::new(&buf[..]);
        let modes: Vec<(String, u32, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert!(
            modes.contains(&("run.sh".to_string(), 0o4750, 0)),
            "{modes:?}"
        );
    }

    #[test]
    fn digest_tracks_content_not_mtime() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let a = collect(d.path(), "Dockerfile", false).unwrap().digest;
        let f = std::fs::File::options()
            .write(true)
            .open(d.path().join("Dockerfile"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(a, collect(d.path(), "Dockerfile", false).unwrap().digest);
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\nENV A=1\n").unwrap();
        assert_ne!(a, collect(d.path(), "Dockerfile", false).unwrap().digest);
    }
}
