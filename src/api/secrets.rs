//! `stagecraft/secrets`: `get(NAME)` returns an opaque handle (capability `secrets:NAME`).

use mlua::{Lua, Table};
use serde_json::json;

use crate::runtime::caps::Request;
use crate::runtime::ctx;
use crate::runtime::fault::OpError;
use crate::runtime::secrets::SecretHandle;

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("get", lua.create_function(get)?)?;
    Ok(t)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn get(lua: &Lua, name: String) -> mlua::Result<SecretHandle> {
    let ctx = ctx(lua)?;
    if !valid_name(&name) {
        return Err(OpError::invalid(format!(
            "secrets.get: '{name}' is not a valid secret name (letters, digits, _)"
        ))
        .into_lua());
    }
    let v = ctx
        .record_sync("secrets.get", json!({ "name": name }), || {
            ctx.require(
                "secrets.get",
                &Request::Secret(&name),
                &format!("secrets:{name}"),
            )?;
            let handle = ctx.secrets.load(&name).map_err(|e| OpError {
                message: format!("secrets.get: {}", e.message),
                ..e
            })?;
            Ok(handle.reference())
        })
        .map_err(OpError::into_lua)?;
    SecretHandle::from_reference(&v).ok_or_else(|| {
        OpError::new("internal", "secrets.get: malformed recorded handle").into_lua()
    })
}
