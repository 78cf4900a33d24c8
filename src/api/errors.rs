//! `stagecraft/errors`: `new(kind, message, hint?)` makes a structured error, the same kind of
//! object primitives raise, so Luau libraries fail the way primitives do:
//! `error(errors.new("unhealthy", "web did not start", "see its logs"), 0)`.

use mlua::{Lua, Table};

use crate::runtime::fault::{ErrorObject, OpError};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "new",
        lua.create_function(
            |_, (kind, message, hint): (String, String, Option<String>)| {
                let valid = !kind.is_empty()
                    && kind
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(OpError::invalid(format!(
                        "errors.new: kind '{kind}' must be snake_case, e.g. \"unhealthy\""
                    ))
                    .into_lua());
                }
                let mut e = OpError::new(&kind, message);
                e.hint = hint;
                Ok(ErrorObject(e))
            },
        )?,
    )?;
    Ok(t)
}
