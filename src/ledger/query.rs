//! Read-side queries: runs, their entries, recorded sources.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::{FileLock, LedgerPaths};
use crate::error::{Error, Result};

/// One run as listed by `ledger ls` / `show` and `stagecraft/ledger`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub script: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub calls: i64,
    pub replay_of: Option<String>,
    /// The full `run.start` record (script hash, args, version, git, user, host, ...).
    pub meta: Value,
    /// The `run.end` record, when the run ended.
    pub end: Option<Value>,
}

/// One primitive call (or module load) as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct EntryRow {
    pub seq: i64,
    pub kind: String,
    pub task: String,
    pub idx: i64,
    pub op: String,
    pub args: Value,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub started_at: i64,
    pub duration_us: i64,
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_string()))
}

/// Resolve `last` or an id (a unique prefix is accepted) to a run id.
pub fn resolve_run(conn: &Connection, run: &str) -> Result<String> {
    if run == "last" {
        return conn
            .query_row(
                "SELECT run_id FROM entries WHERE kind = 'run.start' ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| Error::usage("the ledger has no runs yet"));
    }
    let mut stmt = conn.prepare(
        "SELECT run_id FROM entries WHERE kind = 'run.start' AND run_id LIKE ?1 || '%' LIMIT 2",
    )?;
    let ids: Vec<String> = stmt
        .query_map([run.to_ascii_uppercase()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::usage(format!("no run '{run}' in the ledger"))
            .with_hint("list runs with: stagecraft ledger ls")),
        _ => Err(Error::usage(format!("run id prefix '{run}' is ambiguous"))
            .with_hint("give more characters of the id")),
    }
}

const SUMMARY_SQL: &str = "SELECT s.run_id, s.args, s.started_at, e.result, e.started_at, \
     (SELECT count(*) FROM entries c WHERE c.run_id = s.run_id AND c.kind = 'call') \
     FROM entries s LEFT JOIN entries e ON e.seq = (SELECT min(x.seq) FROM entries x \
     WHERE x.run_id = s.run_id AND x.kind = 'run.end') \
     WHERE s.kind = 'run.start'";

fn summary_from_row(paths: &LedgerPaths, r: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    let id: String = r.get(0)?;
    let meta = parse_json(&r.get::<_, String>(1)?);
    let end: Option<Value> = r.get::<_, Option<String>>(3)?.map(|t| parse_json(&t));
    let (status, exit_code) = match &end {
        Some(e) => (
            e.get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            e.get("exit_code").and_then(Value::as_i64),
        ),
        None if run_is_alive(paths, &id) => ("running".to_string(), None),
        None => ("interrupted".to_string(), None),
    };
    Ok(RunSummary {
        script: meta
            .get("script")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        replay_of: meta
            .get("replay_of")
            .and_then(Value::as_str)
            .map(str::to_string),
        id,
        status,
        exit_code,
        started_at: r.get(2)?,
        ended_at: r.get(4)?,
        calls: r.get(5)?,
        meta,
        end,
    })
}

/// Runs, newest first.
pub fn list_runs(conn: &Connection, paths: &LedgerPaths, limit: usize) -> Result<Vec<RunSummary>> {
    let sql = format!("{SUMMARY_SQL} ORDER BY s.seq DESC LIMIT ?1");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map([limit as i64], |r| summary_from_row(paths, r))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn get_run(conn: &Connection, paths: &LedgerPaths, id: &str) -> Result<RunSummary> {
    let sql = format!("{SUMMARY_SQL} AND s.run_id = ?1");
    conn.query_row(&sql, [id], |r| summary_from_row(paths, r))
        .optional()?
        .ok_or_else(|| Error::usage(format!("no run '{id}' in the ledger")))
}

/// Entries of one run in sequence order: calls, module loads, and (kind `call.start`) calls
/// that started but never finished because the process died during them.
pub fn entries(conn: &Connection, run_id: &str) -> Result<Vec<EntryRow>> {
    let mut stmt = conn.prepare(
        "SELECT seq, kind, task, idx, op, args, result, error, started_at, duration_us \
         FROM entries WHERE run_id = ?1 AND kind IN ('call', 'module', 'call.start') ORDER BY seq",
    )?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok(EntryRow {
                seq: r.get(0)?,
                kind: r.get(1)?,
                task: r.get(2)?,
                idx: r.get(3)?,
                op: r.get(4)?,
                args: parse_json(&r.get::<_, String>(5)?),
                result: r.get::<_, Option<String>>(6)?.map(|t| parse_json(&t)),
                error: r.get::<_, Option<String>>(7)?.map(|t| parse_json(&t)),
                started_at: r.get(8)?,
                duration_us: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<EntryRow>>>()?;
    let finished: std::collections::HashSet<(String, i64)> = rows
        .iter()
        .filter(|e| e.kind == "call")
        .map(|e| (e.task.clone(), e.idx))
        .collect();
    Ok(rows
        .into_iter()
        .filter(|e| e.kind != "call.start" || !finished.contains(&(e.task.clone(), e.idx)))
        .collect())
}

/// One recorded call for replay: (seq, task, op, args text, result text, error text).
pub type RawCall = (i64, String, String, String, Option<String>, Option<String>);

/// Raw call entries of a run for replay, in sequence order.
pub fn raw_calls(conn: &Connection, run_id: &str) -> Result<Vec<RawCall>> {
    let mut stmt = conn.prepare(
        "SELECT seq, task, op, args, result, error FROM entries \
         WHERE run_id = ?1 AND kind = 'call' ORDER BY seq",
    )?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn source(conn: &Connection, sha256: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row(
            "SELECT content FROM sources WHERE sha256 = ?1",
            params![sha256],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether the process that owns this run still holds its run lock.
pub fn run_is_alive(paths: &LedgerPaths, run_id: &str) -> bool {
    let lock = paths.runs_dir().join(format!("{run_id}.lock"));
    if !lock.exists() {
        return false;
    }
    FileLock::try_acquire(&lock).is_none()
}

/// Runs that started, never ended and whose process is gone.
pub fn dead_runs(conn: &Connection, paths: &LedgerPaths) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT s.run_id FROM entries s WHERE s.kind = 'run.start' AND NOT EXISTS \
         (SELECT 1 FROM entries e WHERE e.run_id = s.run_id AND e.kind = 'run.end')",
    )?;
    let ids: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids
        .into_iter()
        .filter(|id| !run_is_alive(paths, id))
        .collect())
}
