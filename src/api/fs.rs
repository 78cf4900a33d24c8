//! `stagecraft/fs`: files confined to the project root. No `..` or symlink escape; writes need
//! `fs-write`; `.stagecraft/` (the ledger) is never writable and `.env` is read only through
//! `stagecraft/secrets`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use super::opts;
use crate::runtime::caps::Request;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("read", lua.create_async_function(read)?)?;
    t.set("write", lua.create_async_function(write)?)?;
    t.set("exists", lua.create_async_function(exists)?)?;
    t.set("list", lua.create_async_function(list)?)?;
    t.set("mkdir", lua.create_async_function(mkdir)?)?;
    t.set("remove", lua.create_async_function(remove)?)?;
    Ok(t)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Resolve a script-given path to an absolute path inside the project, or explain why not.
pub fn confine(ctx: &RunCtx, func: &str, path: &str, access: Access) -> Result<PathBuf, OpError> {
    let root = &ctx.project.root;
    if path.is_empty() {
        return Err(OpError::invalid(format!("{func}: empty path")));
    }
    if path.contains('\0') {
        return Err(OpError::invalid(format!(
            "{func}: path contains a NUL byte"
        )));
    }
    let escape = || {
        OpError::new(
            kinds::PERMISSION,
            format!("permission denied: {func}: '{path}' is outside the project directory"),
        )
        .hint("scripts can only touch files inside the project root")
    };
    let p = Path::new(path);
    let rel = if p.is_absolute() {
        p.strip_prefix(root).map_err(|_| escape())?.to_path_buf()
    } else {
        p.to_path_buf()
    };
    let rel = crate::runtime::loader::normalize(&rel).ok_or_else(escape)?;
    // Follow symlinks on the longest existing prefix; the rest cannot be links yet.
    let full = root.join(&rel);
    let mut existing = full.clone();
    let mut rest = Vec::new();
    let canon = loop {
        match existing.canonicalize() {
            Ok(c) => break c,
            Err(_) => {
                if existing.symlink_metadata().is_ok() {
                    // A dangling symlink: its target is unknown, never follow it.
                    return Err(OpError::new(
                        kinds::PERMISSION,
                        format!("permission denied: {func}: '{path}' is a dangling symlink"),
                    ));
                }
                match (
                    existing.file_name().map(|n| n.to_os_string()),
                    existing.parent(),
                ) {
                    (Some(name), Some(parent)) => {
                        rest.push(name);
                        existing = parent.to_path_buf();
                    }
                    _ => return Err(escape()),
                }
            }
        }
    };
    if !canon.starts_with(root) {
        return Err(escape());
    }
    let mut resolved = canon;
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    let inside = resolved.strip_prefix(root).map_err(|_| escape())?;
    let first = inside
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    if first.as_deref() == Some(crate::project::STATE_DIR) || is_ledger_file(ctx, &resolved) {
        return Err(OpError::new(
            kinds::PERMISSION,
            format!(
                "permission denied: {func}: '{path}' is inside .stagecraft/, which holds the ledger"
            ),
        )
        .hint("read past runs with stagecraft/ledger"));
    }
    if access == Access::Read && inside.components().count() == 1 {
        let name = inside.to_string_lossy();
        if name == ".env" || name.starts_with(".env.") {
            return Err(OpError::new(
                kinds::PERMISSION,
                format!("permission denied: {func}: '{path}' holds secrets"),
            )
            .hint("read a secret with require(\"stagecraft/secrets\").get(NAME)"));
        }
    }
    Ok(resolved)
}

fn is_ledger_file(ctx: &RunCtx, p: &Path) -> bool {
    let db = &ctx.ledger.db;
    p == db || p.to_string_lossy().starts_with(&*db.to_string_lossy())
}

fn io_err(func: &str, path: &str, e: std::io::Error) -> OpError {
    let kind = if e.kind() == std::io::ErrorKind::NotFound {
        kinds::NOT_FOUND
    } else {
        kinds::IO
    };
    OpError::new(kind, format!("{func}: {path}: {e}"))
}

fn need_write(ctx: &RunCtx, func: &str) -> Result<(), OpError> {
    ctx.require(func, &Request::Plain("fs-write"), "fs-write")
}

async fn read(lua: Lua, path: String) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let v = ctx
        .record("fs.read", json!({ "path": path }), || async {
            let full = confine(&ctx, "fs.read", &path, Access::Read)?;
            let bytes = tokio::fs::read(&full)
                .await
                .map_err(|e| io_err("fs.read", &path, e))?;
            Ok(json!(String::from_utf8_lossy(&bytes)))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct WriteOpts {
    append: bool,
    /// Unix permission bits, e.g. 0o600 (given as a number).
    mode: Option<u32>,
}

async fn write(
    lua: Lua,
    (path, content, o): (String, mlua::LuaString, Option<Value>),
) -> mlua::Result<()> {
    let ctx = ctx(&lua)?;
    let o: WriteOpts = opts("fs.write", o)?;
    let content = content.as_bytes().to_vec();
    // Recorded by the digest of the scrubbed content: no secret (not even its hash) reaches the
    // ledger, and replay (which sees scrubbed values) computes the same arguments.
    let scrubbed = ctx.secrets.scrubber.scrub_bytes(&content);
    let digest = crate::ledger::sha256_hex(&scrubbed);
    ctx.record(
        "fs.write",
        json!({ "path": path, "sha256": digest, "bytes": scrubbed.len(), "append": o.append, "mode": o.mode }),
        || async {
            need_write(&ctx, "fs.write")?;
            let full = confine(&ctx, "fs.write", &path, Access::Write)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).custom_flags(libc::O_NOFOLLOW);
            if o.append { opts.append(true) } else { opts.truncate(true) };
            if let Some(m) = o.mode {
                opts.mode(m);
            }
            let mut f = opts.open(&full).map_err(|e| io_err("fs.write", &path, e))?;
            f.write_all(&content).map_err(|e| io_err("fs.write", &path, e))?;
            Ok(serde_json::Value::Null)
        },
    )
    .await
    .map_err(OpError::into_lua)?;
    Ok(())
}

async fn exists(lua: Lua, path: String) -> mlua::Result<bool> {
    let ctx = ctx(&lua)?;
    let v = ctx
        .record("fs.exists", json!({ "path": path }), || async {
            let full = confine(&ctx, "fs.exists", &path, Access::Read)?;
            Ok(json!(full.exists()))
        })
        .await
        .map_err(OpError::into_lua)?;
    Ok(v.as_bool().unwrap_or(false))
}

async fn list(lua: Lua, path: Option<String>) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let path = path.unwrap_or_else(|| ".".into());
    let v = ctx
        .record("fs.list", json!({ "path": path }), || async {
            let full = confine(&ctx, "fs.list", &path, Access::Read)?;
            let mut out = Vec::new();
            let rd = std::fs::read_dir(&full).map_err(|e| io_err("fs.list", &path, e))?;
            for entry in rd {
                let entry = entry.map_err(|e| io_err("fs.list", &path, e))?;
                let meta = entry.path().symlink_metadata().map_err(|e| io_err("fs.list", &path, e))?;
                let kind = if meta.file_type().is_symlink() {
                    "symlink"
                } else if meta.is_dir() {
                    "dir"
                } else {
                    "file"
                };
                out.push(json!({ "name": entry.file_name().to_string_lossy(), "type": kind, "size": meta.len() }));
            }
            out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(serde_json::Value::Array(out))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RemoveOpts {
    recursive: bool,
}

async fn mkdir(lua: Lua, path: String) -> mlua::Result<()> {
    let ctx = ctx(&lua)?;
    ctx.record("fs.mkdir", json!({ "path": path }), || async {
        need_write(&ctx, "fs.mkdir")?;
        let full = confine(&ctx, "fs.mkdir", &path, Access::Write)?;
        std::fs::create_dir_all(&full).map_err(|e| io_err("fs.mkdir", &path, e))?;
        Ok(serde_json::Value::Null)
    })
    .await
    .map_err(OpError::into_lua)?;
    Ok(())
}

async fn remove(lua: Lua, (path, o): (String, Option<Value>)) -> mlua::Result<()> {
    let ctx = ctx(&lua)?;
    let o: RemoveOpts = opts("fs.remove", o)?;
    ctx.record(
        "fs.remove",
        json!({ "path": path, "recursive": o.recursive }),
        || async {
            need_write(&ctx, "fs.remove")?;
            let full = confine(&ctx, "fs.remove", &path, Access::Write)?;
            if full == ctx.project.root {
                return Err(OpError::new(
                    kinds::PERMISSION,
                    "permission denied: fs.remove: refusing to remove the project root",
                ));
            }
            let meta = full
                .symlink_metadata()
                .map_err(|e| io_err("fs.remove", &path, e))?;
            let res = if meta.is_dir() {
                if o.recursive {
                    std::fs::remove_dir_all(&full)
                } else {
                    std::fs::remove_dir(&full)
                }
            } else {
                std::fs::remove_file(&full)
            };
            res.map_err(|e| io_err("fs.remove", &path, e))?;
            Ok(serde_json::Value::Null)
        },
    )
    .await
    .map_err(OpError::into_lua)?;
    Ok(())
}
