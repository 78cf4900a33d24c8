//! The sandboxed global environment: read-only standard libraries, no ambient authority,
//! recorded time and randomness, `pcall` that cannot swallow a stopped run, our `require`.

use std::sync::Arc;

use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::RunCtx;
use super::fault::{ErrorObject, OpError, find_op_error};
use super::limits::memory_exceeded;
use super::task::Failure;

const PRELUDE: &str = r#"
local raw_pcall, raw_xpcall, raw_resume, raw_close, check, convert = ...
local function pcall_(f, ...)
  return check(raw_pcall(f, ...))
end
local function xpcall_(f, handler, ...)
  return check(raw_xpcall(f, function(e) return handler(convert(e)) end, ...))
end
local function resume_(co, ...)
  return check(raw_resume(co, ...))
end
local function close_(co)
  return check(raw_close(co))
end
return pcall_, xpcall_, resume_, close_
"#;

/// `debug.info` without the runtime's raw C functions: a stack level would otherwise hand out the
/// unwrapped `pcall`/`xpcall` the wrappers call, which do not re-raise a memory-limit error.
const DEBUG_INFO: &str = r##"
local raw_info, running, type_, sub, select_, unpack = ...
local function strip(opts, ...)
  local n = select_("#", ...)
  local out = { ... }
  local pos = 1
  for i = 1, #opts do
    local c = sub(opts, i, i)
    if c == "f" then
      if out[pos] ~= nil and raw_info(out[pos], "s") == "[C]" then
        out[pos] = nil
      end
      pos += 1
    elseif c == "a" then
      pos += 2
    else
      pos += 1
    end
  end
  return unpack(out, 1, n)
end
return function(a, b, c)
  if type_(a) == "function" then
    return raw_info(a, b)
  elseif type_(a) == "thread" then
    if a == running() and type_(b) == "number" then
      return strip(c, raw_info(a, b + 1, c))
    end
    return strip(c, raw_info(a, b, c))
  elseif type_(a) == "number" then
    return strip(b, raw_info(a + 1, b))
  end
  return raw_info(a, b, c)
end
"##;

/// Runs a function under xpcall with the capturing message handler: `runner(fn, handler, ...)`.
const RUNNER: &str = r#"
local raw_xpcall = ...
return function(f, handler, ...)
  return raw_xpcall(f, handler, ...)
end
"#;

pub struct Built {
    pub lua: Lua,
    /// `runner(fn, capture, ...)`: calls fn, capturing the failure into the current task.
    pub runner: Function,
    pub capture: Function,
}

/// A fresh, sandboxed Luau state for one run.
pub fn build(ctx: Arc<RunCtx>, memory_limit_mb: u64) -> mlua::Result<Built> {
    let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::new())?;
    lua.set_app_data(ctx.clone());
    let g = lua.globals();

    let raw_pcall: Function = g.get("pcall")?;
    let raw_xpcall: Function = g.get("xpcall")?;
    let coroutine: Table = g.get("coroutine")?;
    let raw_resume: Function = coroutine.get("resume")?;
    let raw_close: Function = coroutine.get("close")?;
    let debug: Table = g.get("debug")?;
    let traceback: Function = debug.get("traceback")?;
    let orig_os: Table = g.get("os")?;
    let orig_math: Table = g.get("math")?;

    // pcall/xpcall/coroutine.resume/close: re-raise a stopped run; structured errors for scripts.
    let check = {
        let ctx = ctx.clone();
        lua.create_function(move |lua, mut values: MultiValue| {
            ctx.stop.check().map_err(OpError::into_lua)?;
            if matches!(values.front(), Some(Value::Boolean(false)))
                && let Some(err) = values.get(1)
            {
                if is_memory_error(err) {
                    let e = memory_exceeded(ctx.stop.memory_mb());
                    ctx.stop.stop(e.clone());
                    return Err(e.into_lua());
                }
                let converted = convert_error(lua, err.clone())?;
                values[1] = converted;
            }
            Ok(values)
        })?
    };
    let convert = lua.create_function(|lua, err: Value| convert_error(lua, err))?;
    let (pcall_, xpcall_, resume_, close_): (Function, Function, Function, Function) =
        lua.load(PRELUDE).set_name("=stagecraft/sandbox").call((
            raw_pcall,
            raw_xpcall.clone(),
            raw_resume,
            raw_close,
            check,
            convert,
        ))?;
    g.set("pcall", pcall_)?;
    g.set("xpcall", xpcall_)?;
    let co = lua.create_table()?;
    for pair in coroutine.pairs::<Value, Value>() {
        let (k, v) = pair?;
        co.set(k, v)?;
    }
    co.set("resume", resume_)?;
    co.set("close", close_)?;
    g.set("coroutine", co)?;

    // debug: only traceback and info.
    let dbg = lua.create_table()?;
    dbg.set("traceback", traceback.clone())?;
    let raw_info: Function = debug.get("info")?;
    let string: Table = g.get("string")?;
    let table: Table = g.get("table")?;
    let info: Function = lua.load(DEBUG_INFO).set_name("=stagecraft/sandbox").call((
        raw_info,
        coroutine.get::<Function>("running")?,
        g.get::<Function>("type")?,
        string.get::<Function>("sub")?,
        g.get::<Function>("select")?,
        table.get::<Function>("unpack")?,
    ))?;
    dbg.set("info", info)?;
    g.set("debug", dbg)?;

    // os: recorded clock reads; no getenv, execute, exit, remove.
    g.set("os", build_os(&lua, &orig_os)?)?;
    g.set("math", build_math(&lua, &orig_math)?)?;

    for name in ["getfenv", "setfenv", "loadstring"] {
        g.set(name, Value::Nil)?;
    }
    g.set("print", lua.create_function(print)?)?;
    g.set(
        "require",
        lua.create_async_function(super::loader::require)?,
    )?;

    let capture = {
        let ctx = ctx.clone();
        let traceback = traceback.clone();
        lua.create_function(move |_, err: Value| {
            // The traceback is taken with the interrupt held off: a stopped run would otherwise
            // fail this very call and lose the location.
            ctx.stop.hold(true);
            let tb = traceback.call::<String>(()).unwrap_or_default();
            ctx.stop.hold(false);
            let failure = failure_of(&ctx, &err, tb);
            if let Some(task) = ctx.tasks.current()
                && let Ok(mut slot) = task.failure.lock()
            {
                *slot = Some(failure);
            }
            Ok(err)
        })?
    };
    let runner: Function = lua
        .load(RUNNER)
        .set_name("=stagecraft/runner")
        .call(raw_xpcall)?;

    lua.set_named_registry_value(TOSTRING, g.get::<Function>("tostring")?)?;
    super::loader::install(&lua, &g)?;
    lua.sandbox(true)?;
    let stop_ctx = ctx.clone();
    lua.set_interrupt(move |_| match stop_ctx.stop.tick() {
        Ok(()) => Ok(VmState::Continue),
        Err(e) => Err(e.into_lua()),
    });
    lua.set_memory_limit(
        usize::try_from(memory_limit_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
    )?;
    Ok(Built {
        lua,
        runner,
        capture,
    })
}

fn is_memory_error(v: &Value) -> bool {
    match v {
        Value::Error(e) => matches!(**e, mlua::Error::MemoryError(_)),
        Value::String(s) => s.to_str().is_ok_and(|s| s == "not enough memory"),
        _ => false,
    }
}

/// A primitive's error (wrapped by mlua) becomes an indexable error object.
fn convert_error(lua: &Lua, err: Value) -> mlua::Result<Value> {
    if let Value::Error(e) = &err
        && let Some(op) = find_op_error(e)
    {
        return lua.create_userdata(ErrorObject(op)).map(Value::UserData);
    }
    Ok(err)
}

/// What ended a task, from the raised value.
fn failure_of(ctx: &RunCtx, err: &Value, traceback: String) -> Failure {
    if let Some(reason) = ctx.stop.reason() {
        return Failure {
            error: reason,
            structured: true,
            traceback,
        };
    }
    let (error, structured) = match err {
        Value::Error(e) => match find_op_error(e) {
            Some(op) => (op, true),
            None if matches!(**e, mlua::Error::MemoryError(_)) => {
                (memory_exceeded(ctx.stop.memory_mb()), true)
            }
            None => (
                OpError::new("script_error", super::fault::message_of(e)),
                false,
            ),
        },
        Value::UserData(ud) => match ud.borrow::<ErrorObject>() {
            Ok(obj) => (obj.0.clone(), true),
            Err(_) => (
                OpError::new(
                    "script_error",
                    err.to_string().unwrap_or_else(|_| "error object".into()),
                ),
                false,
            ),
        },
        Value::String(s) if s.to_str().is_ok_and(|s| s == "not enough memory") => {
            (memory_exceeded(ctx.stop.memory_mb()), true)
        }
        other => (
            OpError::new(
                "script_error",
                other
                    .to_string()
                    .unwrap_or_else(|_| format!("(error object: {})", other.type_name())),
            ),
            false,
        ),
    };
    Failure {
        error,
        structured,
        traceback,
    }
}

fn print(lua: &Lua, values: MultiValue) -> mlua::Result<()> {
    let ctx = super::ctx(lua)?;
    let mut line = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            line.push('\t');
        }
        line.push_str(&tostring(lua, v)?);
    }
    line.push('\n');
    ctx.emit(&line, ctx.print_to_stderr);
    Ok(())
}

/// Registry key of the built-in `tostring`.
const TOSTRING: &str = "stagecraft.tostring";

/// Lua's built-in `tostring` (honours `__tostring`). Not the global of that name: a script may
/// replace it in its own environment, which must not change what other modules print.
pub fn tostring(lua: &Lua, v: &Value) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => {
            let f: Function = lua.named_registry_value(TOSTRING)?;
            f.call::<String>(other.clone())
        }
    }
}

fn recorded_number(
    ctx: &RunCtx,
    op: &'static str,
    live: impl FnOnce() -> f64,
) -> mlua::Result<f64> {
    let v = ctx
        .record_sync(op, json!({}), || {
            Ok(super::value::number(live()).unwrap_or(json!(0)))
        })
        .map_err(OpError::into_lua)?;
    Ok(v.as_f64().unwrap_or(0.0))
}

fn build_os(lua: &Lua, orig: &Table) -> mlua::Result<Table> {
    let os = lua.create_table()?;
    let orig_time: Function = orig.get("time")?;
    let orig_date: Function = orig.get("date")?;
    os.set("difftime", orig.get::<Function>("difftime")?)?;
    let t2 = orig_time.clone();
    os.set(
        "time",
        lua.create_function(move |lua, arg: Option<Table>| {
            if let Some(t) = arg {
                return t2.call::<Value>(t);
            }
            let ctx = super::ctx(lua)?;
            let secs = recorded_number(&ctx, "os.time", || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as f64)
                    .unwrap_or(0.0)
            })?;
            Ok(Value::Number(secs))
        })?,
    )?;
    os.set(
        "clock",
        lua.create_function(|lua, ()| {
            let ctx = super::ctx(lua)?;
            recorded_number(&ctx, "os.clock", || {
                super::limits::thread_cpu_time().as_secs_f64()
            })
        })?,
    )?;
    os.set(
        "date",
        lua.create_function(move |lua, (fmt, t): (Option<String>, Option<f64>)| {
            let t = match t {
                Some(t) => t,
                None => {
                    let ctx = super::ctx(lua)?;
                    recorded_number(&ctx, "os.time", || {
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs() as f64)
                            .unwrap_or(0.0)
                    })?
                }
            };
            orig_date.call::<Value>((fmt.unwrap_or_else(|| "%c".into()), t))
        })?,
    )?;
    Ok(os)
}

fn build_math(lua: &Lua, orig: &Table) -> mlua::Result<Table> {
    let math = lua.create_table()?;
    for pair in orig.pairs::<Value, Value>() {
        let (k, v) = pair?;
        math.set(k, v)?;
    }
    math.set(
        "random",
        lua.create_function(|lua, (m, n): (Option<f64>, Option<f64>)| {
            let ctx = super::ctx(lua)?;
            let (lo, hi) = match (m, n) {
                (None, _) => (None, None),
                (Some(m), None) => (Some(1i64), Some(m as i64)),
                (Some(m), Some(n)) => (Some(m as i64), Some(n as i64)),
            };
            if let (Some(lo), Some(hi)) = (lo, hi)
                && lo > hi
            {
                return Err(mlua::Error::runtime(format!(
                    "math.random: interval is empty ({lo} > {hi})"
                )));
            }
            let v = ctx
                .record_sync("math.random", json!({ "m": m, "n": n }), || {
                    let mut rng = ctx
                        .rng
                        .lock()
                        .map_err(|_| OpError::new("internal", "rng poisoned"))?;
                    Ok(match (lo, hi) {
                        (Some(lo), Some(hi)) => json!(rng.random_range(lo..=hi)),
                        _ => json!(rng.random::<f64>()),
                    })
                })
                .map_err(OpError::into_lua)?;
            Ok(v.as_f64().unwrap_or(0.0))
        })?,
    )?;
    math.set(
        "randomseed",
        lua.create_function(|lua, seed: f64| {
            let ctx = super::ctx(lua)?;
            if let Ok(mut rng) = ctx.rng.lock() {
                *rng = rand::rngs::StdRng::seed_from_u64(seed.to_bits());
            }
            Ok(())
        })?,
    )?;
    Ok(math)
}
