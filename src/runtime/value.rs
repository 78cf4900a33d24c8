//! Conversion between Lua values and JSON: the canonical form of primitive arguments and results.
//!
//! Objects are `BTreeMap`-backed, so keys are sorted and the encoding is canonical. Secret handles
//! become references (`{"$secret": NAME, "fingerprint": ...}`), never values.

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value};

use super::secrets::SecretHandle;

pub const DEFAULT_MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy)]
pub struct ToJson {
    pub max_depth: usize,
    /// Allow secret handles (as references). JSON/YAML encoding refuses them.
    pub secrets: bool,
}

impl Default for ToJson {
    fn default() -> Self {
        ToJson {
            max_depth: DEFAULT_MAX_DEPTH,
            secrets: true,
        }
    }
}

/// Convert a Lua value to JSON. Errors name what could not be converted and where.
pub fn to_json(value: &LuaValue, opts: ToJson) -> Result<Value, String> {
    convert(value, opts, 0, &mut String::new())
}

fn path_or_root(path: &str) -> &str {
    if path.is_empty() { "the value" } else { path }
}

fn convert(
    value: &LuaValue,
    opts: ToJson,
    depth: usize,
    path: &mut String,
) -> Result<Value, String> {
    if depth > opts.max_depth {
        return Err(format!(
            "{} is nested deeper than {} levels (a cycle?)",
            path_or_root(path),
            opts.max_depth
        ));
    }
    Ok(match value {
        LuaValue::Nil => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(*b),
        LuaValue::Integer(i) => Value::Number((*i).into()),
        LuaValue::Number(n) => number(*n)
            .ok_or_else(|| format!("{} is {n}, which has no JSON form", path_or_root(path)))?,
        LuaValue::String(s) => Value::String(s.to_string_lossy()),
        LuaValue::Table(t) => table(t, opts, depth, path)?,
        LuaValue::UserData(ud) => {
            if let Ok(h) = ud.borrow::<SecretHandle>() {
                if !opts.secrets {
                    return Err(format!(
                        "{} is a secret handle, which cannot be encoded",
                        path_or_root(path)
                    ));
                }
                h.reference()
            } else if let Ok(e) = ud.borrow::<super::ErrorObject>() {
                serde_json::to_value(&e.0).unwrap_or(Value::Null)
            } else {
                return Err(format!(
                    "{} is a {} handle, which cannot be encoded",
                    path_or_root(path),
                    type_name(value)
                ));
            }
        }
        LuaValue::LightUserData(p) if p.0.is_null() => Value::Null,
        other => {
            return Err(format!(
                "{} is a {}, which cannot be encoded",
                path_or_root(path),
                type_name(other)
            ));
        }
    })
}

fn type_name(v: &LuaValue) -> &'static str {
    v.type_name()
}

/// Integral values become JSON integers, others floats; NaN and infinities have no JSON form.
pub fn number(n: f64) -> Option<Value> {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Some(Value::Number(Number::from(n as i64)))
    } else {
        Number::from_f64(n).map(Value::Number)
    }
}

fn table(t: &Table, opts: ToJson, depth: usize, path: &mut String) -> Result<Value, String> {
    let len = t.raw_len();
    let mut count = 0usize;
    let mut is_array = true;
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        count += 1;
        match k {
            LuaValue::Integer(i) if i >= 1 && (i as usize) <= len => {}
            LuaValue::Number(n) if n.fract() == 0.0 && n >= 1.0 && (n as usize) <= len => {}
            _ => is_array = false,
        }
    }
    if is_array && count == len && len > 0 {
        let mut out = Vec::with_capacity(len);
        for i in 1..=len {
            let v: LuaValue = t.raw_get(i).map_err(|e| e.to_string())?;
            let mark = path.len();
            path.push_str(&format!("[{i}]"));
            out.push(convert(&v, opts, depth + 1, path)?);
            path.truncate(mark);
        }
        return Ok(Value::Array(out));
    }
    let mut map = Map::new();
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let key = match &k {
            LuaValue::String(s) => s.to_string_lossy(),
            LuaValue::Integer(i) => i.to_string(),
            LuaValue::Number(n) => match number(*n) {
                Some(num) => num.to_string(),
                None => {
                    return Err(format!(
                        "{} has the key {n}, which has no JSON form",
                        path_or_root(path)
                    ));
                }
            },
            LuaValue::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{} has a {} key, which cannot be encoded",
                    path_or_root(path),
                    other.type_name()
                ));
            }
        };
        let mark = path.len();
        path.push('.');
        path.push_str(&key);
        let converted = convert(&v, opts, depth + 1, path)?;
        path.truncate(mark);
        map.insert(key, converted);
    }
    Ok(Value::Object(map))
}

/// Convert JSON to a Lua value. Object keys are inserted in sorted order (deterministic `pairs`).
pub fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LuaValue::Integer(i),
            None => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), to_lua(lua, v)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Canonical text of a JSON value (sorted keys, no whitespace).
pub fn canonical(value: &Value) -> String {
    value.to_string()
}
