//! `stagecraft/log`: levelled messages on stderr, scrubbed of secrets. `STAGECRAFT_LOG=debug`
//! shows debug messages; the default level is info.

use mlua::{Lua, MultiValue, Table};

use crate::runtime::ctx;
use crate::runtime::sandbox::tostring;

const LEVELS: &[&str] = &["debug", "info", "warn", "error"];

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (rank, level) in LEVELS.iter().enumerate() {
        t.set(
            *level,
            lua.create_function(move |lua, values: MultiValue| emit(lua, rank, values))?,
        )?;
    }
    Ok(t)
}

fn threshold() -> usize {
    let want = std::env::var("STAGECRAFT_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase();
    LEVELS.iter().position(|l| *l == want).unwrap_or(1)
}

fn emit(lua: &Lua, rank: usize, values: MultiValue) -> mlua::Result<()> {
    if rank < threshold() {
        return Ok(());
    }
    let ctx = ctx(lua)?;
    let mut line = format!("{:>5} ", LEVELS[rank].to_ascii_uppercase());
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&tostring(lua, v)?);
    }
    line.push('\n');
    ctx.emit(&line, true);
    Ok(())
}
