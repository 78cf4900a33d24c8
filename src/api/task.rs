//! `stagecraft/task`: structured concurrency. `parallel({fn, ...})` and `map(list, fn, {limit=})`
//! run Lua functions as concurrent tasks; `sleep(seconds)` waits (recorded; replays skip it); the first error cancels the siblings and is re-raised
//! with the failing task's identity.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use mlua::{Function, Lua, MultiValue, Table, Value};
use serde::Deserialize;

use super::opts;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::task::{InTask, TaskState};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("parallel", lua.create_async_function(parallel)?)?;
    t.set("map", lua.create_async_function(map)?)?;
    t.set("sleep", lua.create_async_function(sleep)?)?;
    Ok(t)
}

/// `sleep(seconds)`: wait (a recorded call, so a replay does not wait). For grace periods
/// such as draining a replaced container, not for synchronisation.
async fn sleep(lua: Lua, seconds: f64) -> mlua::Result<()> {
    if !(seconds.is_finite() && (0.0..=86_400.0).contains(&seconds)) {
        return Err(
            OpError::invalid("task.sleep: seconds must be a number between 0 and 86400").into_lua(),
        );
    }
    let ctx = ctx(&lua)?;
    ctx.record(
        "task.sleep",
        serde_json::json!({ "seconds": seconds }),
        || async {
            tokio::time::sleep(std::time::Duration::from_secs_f64(seconds)).await;
            Ok(serde_json::Value::Null)
        },
    )
    .await
    .map_err(OpError::into_lua)?;
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct MapOpts {
    /// Most tasks running at once (default: all).
    limit: Option<usize>,
}

/// The runner and capture functions, stored by the runtime in the registry.
fn runner(lua: &Lua) -> mlua::Result<(Function, Function)> {
    Ok((
        lua.named_registry_value("stagecraft.runner")?,
        lua.named_registry_value("stagecraft.capture")?,
    ))
}

/// Run one task to completion: its first return value, or its failure with identity.
async fn run_task(
    lua: Lua,
    ctx: Arc<RunCtx>,
    state: Arc<TaskState>,
    f: Function,
    args: MultiValue,
) -> Result<Value, mlua::Error> {
    let (run, capture) = runner(&lua)?;
    let mut call_args = MultiValue::new();
    call_args.push_back(Value::Function(f));
    call_args.push_back(Value::Function(capture));
    call_args.extend(args);
    let thread = lua.create_thread(run)?;
    let fut = thread.into_async::<MultiValue>(call_args)?;
    let res = InTask::new(ctx.clone(), state.clone(), fut).await;
    let failure = state.take_failure();
    let mut values = match res {
        Ok(v) => v,
        Err(e) => {
            let msg = crate::runtime::fault::message_of(&e);
            let op = crate::runtime::fault::find_op_error(&e)
                .unwrap_or_else(|| OpError::new(kinds::TASK, msg));
            return Err(task_error(&state.path, op).into_lua());
        }
    };
    match values.pop_front() {
        Some(Value::Boolean(true)) => Ok(values.pop_front().unwrap_or(Value::Nil)),
        _ => {
            let op = match failure {
                Some(f) => f.error,
                None => OpError::new(kinds::TASK, "failed"),
            };
            Err(task_error(&state.path, op).into_lua())
        }
    }
}

/// Keep the kind (so a permission error inside a task still exits as one), add the identity.
fn task_error(path: &str, op: OpError) -> OpError {
    if op.message.starts_with("task ") {
        return op;
    }
    OpError {
        message: format!("task {path} failed: {}", op.message),
        ..op
    }
}

async fn parallel(lua: Lua, fns: Table) -> mlua::Result<Table> {
    let ctx = ctx(&lua)?;
    let parent = ctx
        .tasks
        .current()
        .ok_or_else(|| OpError::new("internal", "task.parallel outside a task").into_lua())?;
    let mut list = Vec::new();
    for (i, v) in fns.sequence_values::<Value>().enumerate() {
        match v? {
            Value::Function(f) => list.push(f),
            other => {
                // Luau has one number type; mlua calls integral ones "integer".
                let type_name = match other {
                    Value::Integer(_) => "number",
                    ref v => v.type_name(),
                };
                return Err(OpError::invalid(format!(
                    "task.parallel: item {} is a {type_name}, expected a function",
                    i + 1,
                ))
                .into_lua());
            }
        }
    }
    let group = parent.next_group();
    let futs = list.into_iter().enumerate().map(|(i, f)| {
        let state = TaskState::new(parent.child_path(group, i + 1));
        run_task(lua.clone(), ctx.clone(), state, f, MultiValue::new())
    });
    let results = futures::future::try_join_all(futs).await?;
    let out = lua.create_table()?;
    for (i, v) in results.into_iter().enumerate() {
        out.raw_set(i + 1, v)?;
    }
    Ok(out)
}

async fn map(lua: Lua, (list, f, o): (Table, Function, Option<Value>)) -> mlua::Result<Table> {
    let ctx = ctx(&lua)?;
    let o: MapOpts = opts("task.map", o)?;
    if o.limit == Some(0) {
        return Err(OpError::invalid("task.map: limit must be at least 1").into_lua());
    }
    let parent = ctx
        .tasks
        .current()
        .ok_or_else(|| OpError::new("internal", "task.map outside a task").into_lua())?;
    let items: Vec<Value> = list
        .sequence_values::<Value>()
        .collect::<mlua::Result<_>>()?;
    let n = items.len();
    let limit = o.limit.unwrap_or(n.max(1));
    let group = parent.next_group();
    let results: Vec<Value> = futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let state = TaskState::new(parent.child_path(group, i + 1));
            let mut args = MultiValue::new();
            args.push_back(item);
            args.push_back(Value::Integer((i + 1) as i64));
            run_task(lua.clone(), ctx.clone(), state, f.clone(), args)
        })
        .buffered(limit)
        .try_collect()
        .await?;
    let out = lua.create_table()?;
    for (i, v) in results.into_iter().enumerate() {
        out.raw_set(i + 1, v)?;
    }
    Ok(out)
}
