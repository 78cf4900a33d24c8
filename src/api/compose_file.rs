//! `stagecraft/compose_file`: `load(path, {project=, env=, images=})` parses and validates a
//! docker-compose.yml (see `crate::compose`) into the model `stagecraft/compose` applies.
//!
//! Interpolation variables: the `env` option (strings or secret handles) over the `.env` beside
//! the file. A `.env` variable the run was granted as a secret (`secrets:NAME`) is a secret: an
//! environment value it goes into becomes a secret handle (resolved only when a container is
//! created), and it may not go anywhere else. Secret values never reach the script or the ledger.

use std::collections::BTreeMap;
use std::path::Path;

use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use super::opts;
use crate::runtime::caps::Request;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::secrets::SecretHandle;
use crate::runtime::value::{ToJson, to_json};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("load", lua.create_function(load)?)?;
    Ok(t)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct LoadOpts {
    /// Project name (default: the file's `name:`, else its folder's name).
    project: Option<String>,
    /// Interpolation variables: strings or secret handles; they override `.env`.
    env: BTreeMap<String, serde_json::Value>,
    /// Image overrides per service (used by rollouts): `{ web = "app:2" }`.
    images: BTreeMap<String, String>,
}

const F: &str = "compose.load";

fn load(lua: &Lua, (path, o): (String, Option<Value>)) -> mlua::Result<Value> {
    let ctx = ctx(lua)?;
    let opts_json = match &o {
        Some(v) => to_json(v, ToJson::default())
            .map_err(|e| OpError::invalid(format!("{F}: {e}")).into_lua())?,
        None => json!({}),
    };
    let o: LoadOpts = opts(F, o)?;
    let v = ctx
        .record_sync(F, json!({ "path": path, "opts": opts_json }), || {
            load_model(&ctx, &path, &o)
        })
        .map_err(OpError::into_lua)?;
    to_lua_with_secrets(lua, &v)
}

fn load_model(ctx: &RunCtx, path: &str, o: &LoadOpts) -> Result<serde_json::Value, OpError> {
    use super::fs::{Access, confine};
    // Compose files reach `.env` (secrets), and only a run that may drive an engine needs them.
    ctx.require(F, &Request::Plain("docker"), "docker")?;
    let full = confine(ctx, F, path, Access::Read)?;
    let text = std::fs::read_to_string(&full).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            OpError::new(kinds::NOT_FOUND, format!("{F}: {path}: no such file"))
                .hint("give the path of the compose file relative to the project root")
        } else {
            OpError::io(format!("{F}: {path}: {e}"))
        }
    })?;
    let dir = full.parent().unwrap_or(&ctx.project.root).to_path_buf();
    let rel_dir = dir
        .strip_prefix(&ctx.project.root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rel_dir = if rel_dir.is_empty() {
        ".".to_string()
    } else {
        rel_dir
    };
    // The `.env` beside the file (inside the project: `dir` is).
    let dotenv_path = dir.join(".env");
    let dotenv = match std::fs::symlink_metadata(&dotenv_path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(OpError::new(
                kinds::PERMISSION,
                format!("{F}: {rel_dir}/.env is a symlink, which is not followed"),
            ));
        }
        Ok(_) => Some(
            std::fs::read_to_string(&dotenv_path)
                .map_err(|e| OpError::io(format!("{F}: {rel_dir}/.env: {e}")))?,
        ),
        Err(_) => None,
    };
    let mut vars = crate::compose::Vars::default();
    for (k, v) in &o.env {
        match v {
            serde_json::Value::String(s) => {
                vars.plain.insert(k.clone(), s.clone());
            }
            serde_json::Value::Number(n) => {
                vars.plain.insert(k.clone(), n.to_string());
            }
            other => {
                let h = SecretHandle::from_reference(other).ok_or_else(|| {
                    OpError::invalid(format!("{F}: env.{k} must be a string or a secret handle"))
                })?;
                let value = ctx.secrets.resolve(&h).ok_or_else(|| {
                    OpError::new(
                        kinds::NOT_FOUND,
                        format!("{F}: secret {} is not loaded in this run", h.name),
                    )
                })?;
                vars.secret.insert(k.clone(), value);
            }
        }
    }
    // `.env` variables granted as secrets by name (`secrets:NAME`; a blanket grant does not make
    // every setting a secret) are secrets. The project's own `.env` goes through the
    // secret store (the environment first, as for `secrets.get`); a compose file's `.env` in a
    // subfolder supplies its own values.
    if let Some(text) = &dotenv {
        let at_root = dir.canonicalize().ok() == ctx.project.root.canonicalize().ok();
        let values = crate::compose::dotenv_values(text);
        let (_, named) = ctx.grants.secret_scopes();
        for name in values.keys() {
            if vars.plain.contains_key(name)
                || vars.secret.contains_key(name)
                || !named.contains(name)
            {
                continue;
            }
            let value = if at_root {
                ctx.secrets
                    .load(name)
                    .ok()
                    .and_then(|h| ctx.secrets.resolve(&h))
            } else {
                values.get(name).cloned()
            };
            if let Some(value) = value {
                ctx.secrets.scrubber.add(&value);
                vars.secret.insert(name.clone(), value);
            }
        }
    }
    let default_project = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("project")
        .to_string();
    let read_env_file = |rel: &str| -> Result<String, String> {
        let joined = if rel_dir == "." {
            rel.to_string()
        } else {
            format!("{rel_dir}/{rel}")
        };
        // The project's own `.env` is a common env_file; `fs` keeps it from scripts, compose
        // (capability docker) may read it.
        let p = match confine(ctx, F, &joined, Access::Read) {
            Ok(p) => p,
            Err(_)
                if crate::runtime::loader::normalize(Path::new(&joined))
                    .is_some_and(|n| n == Path::new(".env")) =>
            {
                ctx.project.root.join(".env")
            }
            Err(e) => return Err(e.message),
        };
        std::fs::read_to_string(&p).map_err(|e| e.to_string())
    };
    let mut model = crate::compose::load(
        path,
        &text,
        dotenv.as_deref(),
        &vars,
        o.project.as_deref(),
        &default_project,
        &read_env_file,
    )
    .map_err(|e| {
        let mut err = OpError::invalid(format!("{F}: {e}"));
        err.hint = e.hint.clone();
        err
    })?;
    for (svc, image) in &o.images {
        let s = model.services.get_mut(svc).ok_or_else(|| {
            OpError::invalid(format!("{F}: images.{svc}: {path} has no service '{svc}'"))
        })?;
        s.image = Some(image.clone());
        crate::compose::rehash(s);
    }
    let mut v =
        serde_json::to_value(&model).map_err(|e| OpError::new("internal", format!("{F}: {e}")))?;
    // Secret environment values become handles; their values stay in the secret store.
    if let Some(services) = v.get_mut("services").and_then(|s| s.as_object_mut()) {
        for (svc, s) in services.iter_mut() {
            let Some(env) = s.get_mut("environment").and_then(|e| e.as_object_mut()) else {
                continue;
            };
            for (key, val) in env.iter_mut() {
                // A plain value holding a loaded secret (say, from an env_file) is a secret too:
                // recorded as is, it would be redacted, and the container would get the redaction.
                if let Some(plain) = val.as_str()
                    && matches!(
                        ctx.secrets.scrubber.scrub(plain),
                        std::borrow::Cow::Owned(_)
                    )
                {
                    *val = json!({ "secret_value": plain });
                }
                if let Some(secret) = val.get("secret_value").and_then(|s| s.as_str()) {
                    let handle = ctx
                        .secrets
                        .derive(&format!("compose:{svc}:{key}"), secret)
                        .map_err(|e| OpError {
                            message: format!(
                                "{F}: services.{svc}.environment.{key}: {}",
                                e.message
                            ),
                            ..e
                        })?;
                    *val = handle.reference();
                }
            }
        }
    }
    v["file"] = json!(path);
    v["dir"] = json!(rel_dir);
    Ok(v)
}

/// Like `to_lua`, but secret references become secret handles again.
fn to_lua_with_secrets(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    if let Some(h) = SecretHandle::from_reference(v) {
        return Ok(Value::UserData(lua.create_userdata(h)?));
    }
    Ok(match v {
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua_with_secrets(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua_with_secrets(lua, item)?)?;
            }
            Value::Table(t)
        }
        other => crate::runtime::value::to_lua(lua, other)?,
    })
}
