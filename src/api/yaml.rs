//! `stagecraft/yaml`: encode/decode with depth and size limits (serde-saphyr; errors carry line
//! and column). Pure: not recorded.

use mlua::{Lua, Table, Value};

use crate::runtime::fault::OpError;
use crate::runtime::value::to_lua;

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("encode", lua.create_function(encode)?)?;
    t.set("decode", lua.create_function(decode)?)?;
    Ok(t)
}

fn encode(_: &Lua, (value, o): (Value, Option<Value>)) -> mlua::Result<String> {
    super::json::encode_with("yaml.encode", &value, o, |v, _| {
        serde_saphyr::to_string(v).map_err(|e| e.to_string())
    })
}

fn decode(lua: &Lua, (text, o): (mlua::LuaString, Option<Value>)) -> mlua::Result<Value> {
    let bytes = text.as_bytes();
    let (text, l) = super::json::decode_input("yaml.decode", &bytes, o)?;
    let v = parse(text, l.max_depth).map_err(|m| OpError::invalid(m).into_lua())?;
    to_lua(lua, &v)
}

/// serde-saphyr needs tens of KB of native stack per nesting level, so a document nested
/// `MAX_DEPTH_CAP` deep would overflow the runtime's thread (a crash): parse on a thread whose
/// stack fits it. Only the pages actually touched are committed.
const PARSE_STACK: usize = 256 * 1024 * 1024;

fn parse(text: &str, max_depth: usize) -> Result<serde_json::Value, String> {
    std::thread::scope(|s| {
        let parser = std::thread::Builder::new()
            .name("yaml.decode".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(s, move || {
                let mut options = serde_saphyr::options::Options::default();
                let mut budget = serde_saphyr::budget::Budget::default();
                budget.max_depth = max_depth;
                options.budget = Some(budget);
                serde_saphyr::from_str_with_options::<serde_json::Value>(text, options)
                    .map_err(|e| describe(&e))
            })
            .map_err(|e| format!("yaml.decode: cannot start the parser: {e}"))?;
        parser
            .join()
            .map_err(|_| "yaml.decode: the parser failed unexpectedly".to_string())?
    })
}

/// The error with its line and column; a resource-budget breach (an anchor/alias "billion
/// laughs" bomb, a huge or deeply nested document) says so in plain words.
fn describe(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    let mut inner = e;
    while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = inner {
        inner = error;
    }
    let E::Budget { breach, .. } = inner else {
        // serde-saphyr words some errors for Rust callers; say it for script authors.
        return format!("yaml.decode: {e}").replace(
            ", set DuplicateKeyPolicy in Options if acceptable",
            " (remove one of them)",
        );
    };
    let bomb = "is it an anchor/alias bomb?";
    let (what, hint) = match breach {
        B::Nodes { nodes } => (format!("it expands to more than {} nodes", nodes - 1), bomb),
        B::Aliases { aliases } => (format!("it uses more than {} aliases", aliases - 1), bomb),
        B::AliasAnchorRatio { aliases, anchors } => (
            format!("{aliases} aliases refer to only {anchors} anchors"),
            bomb,
        ),
        B::Depth { depth } => (
            format!("it is nested more than {} levels deep", depth - 1),
            "raise max_depth for deeper documents",
        ),
        B::Events { events } => (
            format!("it has more than {} parser events", events - 1),
            bomb,
        ),
        other => (format!("{other:?}"), bomb),
    };
    let at = e
        .location()
        .map(|l| format!("line {} column {}: ", l.line(), l.column()))
        .unwrap_or_default();
    format!("yaml.decode: {at}document too large to decode: {what} ({hint})")
}
