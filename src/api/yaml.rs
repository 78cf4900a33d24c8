//! `stagecraft/yaml`: encode/decode with depth and size limits (serde-saphyr; errors carry line
//! and column). Pure: not recorded.

use mlua::{Lua, Table, Value};

use super::json::Limits;
use super::opts;
use crate::runtime::fault::OpError;
use crate::runtime::value::{ToJson, to_json, to_lua};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("encode", lua.create_function(encode)?)?;
    t.set("decode", lua.create_function(decode)?)?;
    Ok(t)
}

fn encode(_: &Lua, (value, o): (Value, Option<Value>)) -> mlua::Result<String> {
    let l: Limits = opts("yaml.encode", o)?;
    let v = to_json(
        &value,
        ToJson {
            max_depth: l.max_depth,
            secrets: false,
        },
    )
    .map_err(|e| OpError::invalid(format!("yaml.encode: {e}")).into_lua())?;
    let text = serde_saphyr::to_string(&v)
        .map_err(|e| OpError::invalid(format!("yaml.encode: {e}")).into_lua())?;
    if text.len() > l.max_size {
        return Err(OpError::invalid(format!(
            "yaml.encode: output is larger than max_size ({} bytes)",
            l.max_size
        ))
        .into_lua());
    }
    Ok(text)
}

fn decode(lua: &Lua, (text, o): (mlua::LuaString, Option<Value>)) -> mlua::Result<Value> {
    let l: Limits = opts("yaml.decode", o)?;
    let bytes = text.as_bytes();
    if bytes.len() > l.max_size {
        return Err(OpError::invalid(format!(
            "yaml.decode: input is {} bytes, more than max_size {}",
            bytes.len(),
            l.max_size
        ))
        .into_lua());
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| OpError::invalid(format!("yaml.decode: not UTF-8: {e}")).into_lua())?;
    let mut options = serde_saphyr::options::Options::default();
    let mut budget = serde_saphyr::budget::Budget::default();
    budget.max_depth = l.max_depth;
    options.budget = Some(budget);
    let v: serde_json::Value = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| OpError::invalid(format!("yaml.decode: {e}")).into_lua())?;
    to_lua(lua, &v)
}
