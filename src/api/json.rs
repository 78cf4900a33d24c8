//! `stagecraft/json`: encode/decode with depth and size limits. Pure: not recorded.

use mlua::{Lua, Table, Value};
use serde::Deserialize;

use super::opts;
use crate::runtime::fault::OpError;
use crate::runtime::value::{DEFAULT_MAX_DEPTH, ToJson, to_json, to_lua};

pub const DEFAULT_MAX_SIZE: usize = 64 * 1024 * 1024;

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("encode", lua.create_function(encode)?)?;
    t.set("decode", lua.create_function(decode)?)?;
    Ok(t)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_depth: usize,
    pub max_size: usize,
    /// Pretty-print with two-space indentation (encode only).
    pub indent: bool,
}

/// The most `max_depth` may be raised to: encoding and decoding recurse per level, and a deeper
/// document would overflow the native stack (a crash, not an error).
pub const MAX_DEPTH_CAP: usize = 1000;

impl Limits {
    /// Parse the options table of `func`, refusing a `max_depth` above [`MAX_DEPTH_CAP`].
    pub fn parse(func: &str, o: Option<Value>) -> mlua::Result<Limits> {
        let l: Limits = opts(func, o)?;
        if l.max_depth > MAX_DEPTH_CAP {
            return Err(OpError::invalid(format!(
                "{func}: max_depth must be at most {MAX_DEPTH_CAP} (got {})",
                l.max_depth
            ))
            .into_lua());
        }
        Ok(l)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_size: DEFAULT_MAX_SIZE,
            indent: false,
        }
    }
}

fn encode(_: &Lua, (value, o): (Value, Option<Value>)) -> mlua::Result<String> {
    encode_with("json.encode", &value, o, |v, l| {
        if l.indent {
            serde_json::to_string_pretty(v)
        } else {
            serde_json::to_string(v)
        }
        .map_err(|e| e.to_string())
    })
}

/// Shared by `json.encode` and `yaml.encode`: options, conversion (no secret handles), the
/// serializer, and the output size limit.
pub fn encode_with(
    func: &str,
    value: &Value,
    o: Option<Value>,
    serialize: impl FnOnce(&serde_json::Value, &Limits) -> Result<String, String>,
) -> mlua::Result<String> {
    let l = Limits::parse(func, o)?;
    let fail = |m: String| OpError::invalid(format!("{func}: {m}")).into_lua();
    let v = to_json(
        value,
        ToJson {
            max_depth: l.max_depth,
            secrets: false,
        },
    )
    .map_err(fail)?;
    let text = serialize(&v, &l).map_err(fail)?;
    if text.len() > l.max_size {
        return Err(fail(format!(
            "output is larger than max_size ({} bytes)",
            l.max_size
        )));
    }
    Ok(text)
}

/// Shared by `json.decode` and `yaml.decode`: options, the input size limit and UTF-8.
pub fn decode_input<'a>(
    func: &str,
    bytes: &'a [u8],
    o: Option<Value>,
) -> mlua::Result<(&'a str, Limits)> {
    let l = Limits::parse(func, o)?;
    if bytes.len() > l.max_size {
        return Err(OpError::invalid(format!(
            "{func}: input is {} bytes, more than max_size {}",
            bytes.len(),
            l.max_size
        ))
        .into_lua());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| OpError::invalid(format!("{func}: not UTF-8: {e}")).into_lua())?;
    Ok((text, l))
}

/// Nesting depth of JSON text, counted without parsing (so a deep bomb never recurses).
pub fn depth_of(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn decode(lua: &Lua, (text, o): (mlua::LuaString, Option<Value>)) -> mlua::Result<Value> {
    let bytes = text.as_bytes();
    let (text, l) = decode_input("json.decode", &bytes, o)?;
    let depth = depth_of(text);
    if depth > l.max_depth {
        return Err(OpError::invalid(format!(
            "json.decode: nesting depth {depth} exceeds max_depth {}",
            l.max_depth
        ))
        .into_lua());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let v: serde_json::Value = serde::Deserialize::deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| OpError::invalid(format!("json.decode: {e}")).into_lua())?;
    to_lua(lua, &v)
}
