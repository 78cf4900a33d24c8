//! `stagecraft/task`: structured concurrency. `parallel({fn, ...})` and `map(list, fn, {limit=})`
//! run Lua functions as concurrent tasks; `sleep(seconds)` waits (recorded; replays skip it); the first error cancels the siblings and is re-raised
//! with the failing task's identity.
//!
//! `map` with a failure budget (`max_fail`) is a fan-out: failing items do not cancel the others
//! until more than the budget have failed, and the call returns a report instead of raising.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use mlua::{Function, Lua, MultiValue, Table, Value};
use serde::Deserialize;

use super::opts;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::record::CANCELLED;
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
    /// Failure budget: a count (`2`) or a percentage of the items (`"25%"`, rounded down).
    max_fail: Option<serde_json::Value>,
    /// Progress line (on a terminal) and summary table on stderr.
    progress: Option<bool>,
    /// Stands for the `label` function, which is taken out of the table before parsing.
    label: Option<bool>,
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

async fn map(lua: Lua, (list, f, o): (Table, Function, Option<Value>)) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let (o, label) = split_label(&lua, o)?;
    let o: MapOpts = opts("task.map", o)?;
    if o.limit == Some(0) {
        return Err(OpError::invalid("task.map: limit must be at least 1").into_lua());
    }
    let budget = o.max_fail.as_ref().map(Budget::parse).transpose()?;
    let parent = ctx
        .tasks
        .current()
        .ok_or_else(|| OpError::new("internal", "task.map outside a task").into_lua())?;
    let items: Vec<Value> = list
        .sequence_values::<Value>()
        .collect::<mlua::Result<_>>()?;
    let n = items.len();
    let limit = o.limit.unwrap_or(n.max(1));
    let show = o.progress.unwrap_or(budget.is_some());
    if budget.is_none() && !show {
        // Fail fast: the first error cancels the rest and is raised.
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
        return Ok(Value::Table(out));
    }
    let labels = match &label {
        Some(label) => Some(labels(label, &items).await?),
        None => None,
    };
    let names: Vec<String> = match &labels {
        Some(l) => l.clone(),
        None => items.iter().enumerate().map(default_name).collect(),
    };
    // Results carry a name when there is a real one: a label, or the host an item stands for.
    let named: Vec<bool> = items
        .iter()
        .map(|it| labels.is_some() || host_name(it).is_some())
        .collect();
    let max_fail = budget.map(|b| b.allowed(n));
    let progress = Progress {
        ctx: ctx.clone(),
        total: n,
        redraw: show && stderr_is_tty(),
        table: show && (stderr_is_tty() || o.progress == Some(true)),
    };
    let group = parent.next_group();
    let start = |i: usize, item: Value| {
        let state = TaskState::new(parent.child_path(group, i + 1));
        let mut args = MultiValue::new();
        args.push_back(item);
        args.push_back(Value::Integer((i + 1) as i64));
        let fut = run_task(lua.clone(), ctx.clone(), state.clone(), f.clone(), args);
        async move { (i, state.path.clone(), fut.await) }
    };
    let mut outcomes: Vec<Outcome> = (0..n).map(|_| Outcome::Cancelled).collect();
    let mut pending = items.into_iter().enumerate();
    let mut running = futures::stream::FuturesUnordered::new();
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut first_error = None;
    for (i, item) in pending.by_ref().take(limit) {
        running.push(start(i, item));
    }
    progress.line(ok, failed, running.len());
    while let Some((i, path, res)) = running.next().await {
        match res {
            Ok(v) => {
                ok += 1;
                outcomes[i] = Outcome::Ok(v);
            }
            Err(e) => {
                if ctx.stop.is_stopped() {
                    // The run is stopping (signal, limit, divergence): not an item's failure.
                    progress.clear();
                    return Err(e);
                }
                failed += 1;
                outcomes[i] = Outcome::Failed(item_error(&path, &e));
                first_error.get_or_insert(e);
            }
        }
        if failed > max_fail.unwrap_or(0) {
            // Over budget: dropping the rest cancels them (and records their calls cancelled).
            break;
        }
        if let Some((i, item)) = pending.next() {
            running.push(start(i, item));
        }
        progress.line(ok, failed, running.len());
    }
    drop(running);
    progress.clear();
    let cancelled = n - ok - failed;
    if progress.table {
        let summary = Summary {
            names: &names,
            outcomes: &outcomes,
            ok,
            failed,
            cancelled,
            max_fail,
        };
        ctx.emit(&summary.render(), true);
    }
    let Some(max_fail) = max_fail else {
        // `progress = true` without a budget: today's behaviour, with the table shown first.
        if let Some(e) = first_error {
            return Err(e);
        }
        let out = lua.create_table()?;
        for (i, o) in outcomes.into_iter().enumerate() {
            if let Outcome::Ok(v) = o {
                out.raw_set(i + 1, v)?;
            }
        }
        return Ok(Value::Table(out));
    };
    let results = lua.create_table()?;
    for (i, o) in outcomes.into_iter().enumerate() {
        let r = lua.create_table()?;
        r.set("item_index", i + 1)?;
        if named[i] {
            r.set("name", names[i].as_str())?;
        }
        match o {
            Outcome::Ok(v) => {
                r.set("status", "ok")?;
                r.set("value", v)?;
            }
            Outcome::Failed(e) => {
                r.set("status", "failed")?;
                r.set("error", error_table(&lua, &e)?)?;
            }
            Outcome::Cancelled => {
                r.set("status", "cancelled")?;
                let e = OpError::new(
                    CANCELLED,
                    format!("cancelled: more than {max_fail} item(s) failed"),
                );
                r.set("error", error_table(&lua, &e)?)?;
            }
        }
        results.raw_set(i + 1, r)?;
    }
    let report = lua.create_table()?;
    report.set("ok", failed <= max_fail)?;
    report.set("done", ok)?;
    report.set("failed", failed)?;
    report.set("cancelled", cancelled)?;
    report.set("results", results)?;
    Ok(Value::Table(report))
}

/// How one item of a fan-out ended.
enum Outcome {
    Ok(Value),
    Failed(OpError),
    Cancelled,
}

/// `max_fail`: a count, or a percentage of the items.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Budget {
    Count(usize),
    Percent(u32),
}

impl Budget {
    fn parse(v: &serde_json::Value) -> mlua::Result<Budget> {
        let bad = || {
            OpError::invalid(format!(
                "task.map: max_fail must be a non-negative integer or a percentage such as \"25%\" \
                 (got {v})"
            ))
            .into_lua()
        };
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Budget::Count)
                .ok_or_else(bad),
            serde_json::Value::String(s) => {
                let p = s.trim().strip_suffix('%').ok_or_else(bad)?.trim();
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                match p.parse::<u32>() {
                    Ok(p) if p <= 100 => Ok(Budget::Percent(p)),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }

    /// The number of failures allowed among `n` items.
    fn allowed(self, n: usize) -> usize {
        match self {
            Budget::Count(c) => c,
            Budget::Percent(p) => n * p as usize / 100,
        }
    }
}

/// Take the `label` function out of the options (the rest is plain data), leaving `true` in its
/// place so that a misspelt field still suggests it; so do other functions under unknown keys.
fn split_label(lua: &Lua, o: Option<Value>) -> mlua::Result<(Option<Value>, Option<Function>)> {
    let Some(Value::Table(t)) = o else {
        return Ok((o, None));
    };
    let label = match t.raw_get::<Value>("label")? {
        Value::Nil => None,
        Value::Function(f) => Some(f),
        other => {
            return Err(OpError::invalid(format!(
                "task.map: label must be a function(item) -> string, not a {}",
                other.type_name()
            ))
            .into_lua());
        }
    };
    let copy = lua.create_table()?;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let known = matches!(&k, Value::String(s) if ["limit", "max_fail", "progress"].contains(&&*s.to_string_lossy()));
        match v {
            Value::Function(_) if !known => copy.raw_set(k, true)?,
            v => copy.raw_set(k, v)?,
        }
    }
    Ok((Some(Value::Table(copy)), label))
}

/// Each item's name, from `label(item)`, before anything runs.
async fn labels(label: &Function, items: &[Value]) -> mlua::Result<Vec<String>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = match label.call_async::<Value>(item.clone()).await? {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(n) => n.to_string(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(OpError::invalid(format!(
                    "task.map: label must return a string, but gave a {} for item {}",
                    other.type_name(),
                    i + 1
                ))
                .into_lua());
            }
        };
        out.push(name);
    }
    Ok(out)
}

/// The name of an unlabelled item in the summary: the item itself when it is a string or a number.
fn default_name((i, item): (usize, &Value)) -> String {
    match item {
        Value::String(s) => s.to_string_lossy(),
        Value::Integer(n) => n.to_string(),
        Value::Number(n) => n.to_string(),
        _ => host_name(item).unwrap_or_else(|| format!("item {}", i + 1)),
    }
}

/// Fan-outs over hosts name each result after its host.
fn host_name(item: &Value) -> Option<String> {
    match item {
        Value::UserData(ud) => ud
            .borrow::<crate::api::ssh::Host>()
            .ok()
            .map(|h| h.target.display()),
        _ => None,
    }
}

/// An item's failure for the report: its own error, without the `task PATH failed: ` prefix.
fn item_error(path: &str, e: &mlua::Error) -> OpError {
    let op = crate::runtime::fault::find_op_error(e)
        .unwrap_or_else(|| OpError::new(kinds::TASK, crate::runtime::fault::message_of(e)));
    let prefix = format!("task {path} failed: ");
    match op.message.strip_prefix(&prefix) {
        Some(rest) => OpError {
            message: rest.to_string(),
            ..op.clone()
        },
        None => op,
    }
}

/// `{ kind, message, hint }` as plain data (so that `--json` and `json.encode` take it as is).
fn error_table(lua: &Lua, e: &OpError) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("kind", e.kind.as_str())?;
    t.set("message", e.message.as_str())?;
    t.set("hint", e.hint.as_deref())?;
    Ok(t)
}

fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

/// What a fan-out shows on stderr, through the run's scrubbing.
struct Progress {
    ctx: Arc<RunCtx>,
    total: usize,
    /// Redraw a one-line status as items finish (stderr is a terminal).
    redraw: bool,
    /// Print the summary table at the end.
    table: bool,
}

impl Progress {
    fn line(&self, ok: usize, failed: usize, running: usize) {
        if self.redraw {
            let line = format!(
                "\r[{}/{}] ok {ok} failed {failed} running {running}\x1b[K",
                ok + failed,
                self.total
            );
            self.ctx.emit(&line, true);
        }
    }

    fn clear(&self) {
        if self.redraw {
            self.ctx.emit("\r\x1b[K", true);
        }
    }
}

/// Longest error message shown in the summary table, in characters.
const ERROR_WIDTH: usize = 60;
/// Longest name shown in the summary table, in characters.
const NAME_WIDTH: usize = 30;

/// The table printed at the end of a fan-out.
struct Summary<'a> {
    names: &'a [String],
    outcomes: &'a [Outcome],
    ok: usize,
    failed: usize,
    cancelled: usize,
    max_fail: Option<usize>,
}

impl Summary<'_> {
    fn render(&self) -> String {
        let budget = match self.max_fail {
            Some(m) if self.failed > m => format!("max_fail {m} exceeded"),
            Some(m) => format!("max_fail {m}"),
            None if self.failed > 0 => "stopped at the first failure".to_string(),
            None => "stops at the first failure".to_string(),
        };
        let mut out = format!(
            "task.map: {} ok, {} failed, {} cancelled of {} ({budget})\n",
            self.ok,
            self.failed,
            self.cancelled,
            self.outcomes.len()
        );
        let names: Vec<String> = self
            .names
            .iter()
            .map(|n| truncate(&one_line(n), NAME_WIDTH))
            .collect();
        let name_w = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max("NAME".len());
        let index_w = self.outcomes.len().to_string().len().max(1);
        out.push_str(&row(index_w, "#", name_w, "NAME", "STATUS", "ERROR"));
        for (i, (name, o)) in names.iter().zip(self.outcomes).enumerate() {
            let (status, error) = match o {
                Outcome::Ok(_) => ("ok", String::new()),
                Outcome::Failed(e) => ("failed", truncate(&one_line(&e.message), ERROR_WIDTH)),
                Outcome::Cancelled => ("cancelled", String::new()),
            };
            out.push_str(&row(
                index_w,
                &(i + 1).to_string(),
                name_w,
                name,
                status,
                &error,
            ));
        }
        out
    }
}

fn row(
    index_w: usize,
    index: &str,
    name_w: usize,
    name: &str,
    status: &str,
    error: &str,
) -> String {
    let line = format!("{index:>index_w$}  {name:<name_w$}  {status:<9}  {error}");
    format!("{}\n", line.trim_end())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        let p = |v: serde_json::Value| Budget::parse(&v).map_err(|e| e.to_string());
        assert_eq!(p(serde_json::json!(2)), Ok(Budget::Count(2)));
        assert_eq!(p(serde_json::json!("25%")), Ok(Budget::Percent(25)));
        assert_eq!(p(serde_json::json!("100%")), Ok(Budget::Percent(100)));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("101%"),
            serde_json::json!("%"),
            serde_json::json!("-5%"),
            serde_json::json!("5"),
            serde_json::json!(true),
        ] {
            assert!(p(bad.clone()).is_err(), "{bad} accepted");
        }
        assert_eq!(Budget::Percent(25).allowed(7), 1);
        assert_eq!(Budget::Percent(25).allowed(8), 2);
        assert_eq!(Budget::Percent(0).allowed(8), 0);
        assert_eq!(Budget::Count(3).allowed(1), 3);
    }

    #[test]
    fn summary_table() {
        let outcomes = vec![
            Outcome::Ok(Value::Nil),
            Outcome::Failed(OpError::new("io", "connection\nrefused")),
            Outcome::Cancelled,
        ];
        let names = vec!["web-1".to_string(), "web-2".into(), "db".into()];
        let s = Summary {
            names: &names,
            outcomes: &outcomes,
            ok: 1,
            failed: 1,
            cancelled: 1,
            max_fail: Some(0),
        };
        assert_eq!(
            s.render(),
            "task.map: 1 ok, 1 failed, 1 cancelled of 3 (max_fail 0 exceeded)\n\
             #  NAME   STATUS     ERROR\n\
             1  web-1  ok\n\
             2  web-2  failed     connection refused\n\
             3  db     cancelled\n"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
