//! `stagecraft/ledger`: read-only queries of past runs (recorded, so replay sees the same answers).

use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use super::opts;
use crate::ledger::{self, query};
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("runs", lua.create_async_function(runs)?)?;
    t.set("last", lua.create_async_function(last)?)?;
    t.set("run", lua.create_async_function(run)?)?;
    t.set("entries", lua.create_async_function(entries)?)?;
    Ok(t)
}

#[derive(Deserialize, Default, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
struct RunFilter {
    script: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

fn open(ctx: &RunCtx) -> Result<rusqlite::Connection, OpError> {
    ledger::open(&ctx.ledger, false)
        .map_err(|e| OpError::new(kinds::IO, format!("ledger: {}", e.message)))
}

fn summary_json(r: &query::RunSummary) -> serde_json::Value {
    json!({
        "id": r.id, "script": r.script, "status": r.status, "exit_code": r.exit_code,
        "started_at": r.started_at, "ended_at": r.ended_at, "calls": r.calls,
        "replay_of": r.replay_of,
        "git": r.meta.get("git"), "args": r.meta.get("args"),
    })
}

fn find_runs(
    ctx: &RunCtx,
    f: &RunFilter,
    default_limit: usize,
) -> Result<serde_json::Value, OpError> {
    let conn = open(ctx)?;
    let all = query::list_runs(&conn, &ctx.ledger, 10_000).map_err(|e| OpError::io(e.message))?;
    let out: Vec<serde_json::Value> = all
        .iter()
        .filter(|r| r.id != *ctx.run_id)
        .filter(|r| f.script.as_ref().is_none_or(|s| &r.script == s))
        .filter(|r| f.status.as_ref().is_none_or(|s| &r.status == s))
        .take(f.limit.unwrap_or(default_limit))
        .map(summary_json)
        .collect();
    Ok(json!(out))
}

async fn runs(lua: Lua, o: Option<Value>) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let f: RunFilter = opts("ledger.runs", o)?;
    let args = serde_json::to_value(&f).unwrap_or_default();
    let v = ctx
        .record("ledger.runs", args, || async { find_runs(&ctx, &f, 20) })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

/// The newest run matching the filter (other than this one), or nil.
async fn last(lua: Lua, o: Option<Value>) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let f: RunFilter = opts("ledger.last", o)?;
    let args = serde_json::to_value(&f).unwrap_or_default();
    let v = ctx
        .record("ledger.last", args, || async {
            let list = find_runs(
                &ctx,
                &RunFilter {
                    limit: Some(1),
                    ..f
                },
                1,
            )?;
            Ok(list.get(0).cloned().unwrap_or(serde_json::Value::Null))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn run(lua: Lua, id: String) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let v = ctx
        .record("ledger.run", json!({ "id": id }), || async {
            // `last` is the newest run before this one, never the run asking.
            if id == "last" {
                let f = RunFilter {
                    limit: Some(1),
                    ..Default::default()
                };
                let list = find_runs(&ctx, &f, 1)?;
                return list.get(0).cloned().ok_or_else(|| {
                    OpError::new(kinds::NOT_FOUND, "ledger.run: there is no earlier run")
                });
            }
            let conn = open(&ctx)?;
            let id = query::resolve_run(&conn, &id)
                .map_err(|e| OpError::new(kinds::NOT_FOUND, e.message))?;
            let r = query::get_run(&conn, &ctx.ledger, &id)
                .map_err(|e| OpError::new(kinds::NOT_FOUND, e.message))?;
            Ok(summary_json(&r))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn entries(lua: Lua, id: String) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let v = ctx
        .record("ledger.entries", json!({ "id": id }), || async {
            let conn = open(&ctx)?;
            let id = query::resolve_run(&conn, &id)
                .map_err(|e| OpError::new(kinds::NOT_FOUND, e.message))?;
            let rows = query::entries(&conn, &id).map_err(|e| OpError::io(e.message))?;
            serde_json::to_value(rows).map_err(|e| OpError::io(e.to_string()))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}
