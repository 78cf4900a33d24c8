//! `stagecraft ledger ls | show RUN | verify | export`

use std::io::Write;

use clap::{Args, Subcommand};

use super::{LedgerArg, cwd, print_json};
use crate::engine::{self, Settings};
use crate::error::{Error, Kind, exit};
use crate::ledger::{self, LedgerPaths, key::UserKey, query, verify};
use crate::project::Project;
use crate::util::rfc3339;

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// List runs, newest first.
    Ls(LsArgs),
    /// Show one run and its calls.
    Show(ShowArgs),
    /// Check the hash chain, signatures and the signed head; names the first bad entry.
    Verify(CommonArgs),
    /// Write every entry as JSON lines on stdout.
    Export(CommonArgs),
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    #[command(flatten)]
    pub ledger: LedgerArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How many runs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Run id (or unique prefix), or `last`.
    pub run: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn paths(ledger: &LedgerArg) -> Result<LedgerPaths, Error> {
    let project = Project::discover(&cwd()?)?;
    let settings = Settings {
        allow: vec![],
        allow_all: false,
        cpu_limit: 0.0,
        memory_limit_mb: 0,
        timeout: None,
        ledger: ledger.ledger.clone(),
        json: false,
    };
    Ok(engine::ledger_paths(&project, &settings))
}

pub fn run(cmd: LedgerCommand) -> Result<i32, Error> {
    match cmd {
        LedgerCommand::Ls(a) => ls(a),
        LedgerCommand::Show(a) => show(a),
        LedgerCommand::Verify(a) => verify_cmd(a),
        LedgerCommand::Export(a) => export(a),
    }
}

fn ls(a: LsArgs) -> Result<i32, Error> {
    let p = paths(&a.common.ledger)?;
    let conn = ledger::open(&p, false)?;
    let runs = query::list_runs(&conn, &p, a.limit)?;
    if a.common.json {
        print_json(&runs);
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        println!("no runs yet");
        return Ok(exit::OK);
    }
    println!(
        "{:<26}  {:<11}  {:>4}  {:>6}  {:<24}  SCRIPT",
        "RUN", "STATUS", "EXIT", "CALLS", "STARTED"
    );
    for r in runs {
        println!(
            "{:<26}  {:<11}  {:>4}  {:>6}  {:<24}  {}{}",
            r.id,
            r.status,
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.calls,
            rfc3339(r.started_at),
            command_line(&r.meta).unwrap_or(r.script),
            r.replay_of
                .map(|o| format!(" (re-run of {o})"))
                .unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

/// A team command run as it was typed: `stagecraft NAME ARG...` (None for a script run).
fn command_line(meta: &serde_json::Value) -> Option<String> {
    let name = meta["command"]["name"].as_str()?;
    let mut line = format!("stagecraft {name}");
    for a in meta["args"].as_array().into_iter().flatten() {
        let a = a.as_str().unwrap_or_default();
        line.push(' ');
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/@+".contains(c))
        {
            line.push_str(a);
        } else {
            line.push_str(&format!("'{}'", a.replace('\'', r"'\''")));
        }
    }
    Some(line)
}

fn show(a: ShowArgs) -> Result<i32, Error> {
    let p = paths(&a.common.ledger)?;
    let conn = ledger::open(&p, false)?;
    let id = query::resolve_run(&conn, &a.run)?;
    let run = query::get_run(&conn, &p, &id)?;
    let entries = query::entries(&conn, &id)?;
    if a.common.json {
        print_json(&serde_json::json!({ "run": run, "entries": entries }));
        return Ok(exit::OK);
    }
    let m = &run.meta;
    println!("run       {}", run.id);
    println!(
        "script    {} (sha256 {})",
        run.script,
        m["script_sha256"].as_str().unwrap_or("?")
    );
    println!(
        "status    {}{}",
        run.status,
        run.exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default()
    );
    println!("started   {}", rfc3339(run.started_at));
    if let Some(end) = run.ended_at {
        println!(
            "ended     {} ({} ms)",
            rfc3339(end),
            (end - run.started_at) / 1000
        );
    }
    if let Some(c) = command_line(m) {
        println!("command   {c}");
    }
    println!("args      {}", m["args"]);
    let dirty = run
        .end
        .as_ref()
        .and_then(|e| e.get("git_dirty"))
        .and_then(|d| d.as_bool());
    println!(
        "git       {}{}",
        m["git"]["commit"]
            .as_str()
            .unwrap_or("(not a git checkout)"),
        match dirty {
            Some(true) => " (dirty)",
            _ => "",
        }
    );
    println!(
        "by        {}@{} (stagecraft {})",
        m["user"].as_str().unwrap_or("?"),
        m["host"].as_str().unwrap_or("?"),
        m["version"].as_str().unwrap_or("?")
    );
    println!("grants    {}", m["grants"]);
    if let Some(o) = &run.replay_of {
        println!("re-run of {o}");
    }
    if let Some(err) = run
        .end
        .as_ref()
        .and_then(|e| e.get("error"))
        .filter(|e| !e.is_null())
    {
        println!("error     {}", err["message"].as_str().unwrap_or(""));
    }
    println!();
    println!(
        "{:>6}  {:<14}  {:<16}  {:>9}  ARGS -> RESULT",
        "SEQ", "TASK", "OP", "TIME"
    );
    for e in entries {
        let outcome = match (&e.error, &e.result) {
            _ if e.kind == "call.start" => {
                "(no result: the run ended during this call)".to_string()
            }
            (Some(err), _) => format!(
                "ERROR {}",
                err.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ),
            (None, Some(r)) => short(&r.to_string()),
            (None, None) => String::new(),
        };
        let task = if e.kind == "module" {
            "(module)".to_string()
        } else {
            e.task
        };
        println!(
            "{:>6}  {:<14}  {:<16}  {:>7}us  {} -> {}",
            e.seq,
            task,
            e.op,
            e.duration_us,
            short(&e.args.to_string()),
            outcome
        );
    }
    Ok(exit::OK)
}

fn short(s: &str) -> String {
    if s.chars().count() <= 60 {
        return s.to_string();
    }
    let head: String = s.chars().take(57).collect();
    format!("{head}...")
}

fn verify_cmd(a: CommonArgs) -> Result<i32, Error> {
    let p = paths(&a.ledger)?;
    let conn = ledger::open(&p, false)?;
    let key = UserKey::load_or_create()?;
    let report = verify::verify(&conn, &p, &key)?;
    if a.json {
        print_json(&report);
    } else if report.ok {
        println!(
            "ledger {} OK: {} entries in {} runs, chain intact, signed head at entry {}",
            p.db.display(),
            report.entries,
            report.runs,
            report.checkpoint_seq.unwrap_or(0)
        );
        if report.foreign_signatures > 0 {
            println!(
                "note: {} entries are signed by other users' keys (chain-checked only)",
                report.foreign_signatures
            );
        }
    } else {
        let first = report
            .first_bad_seq
            .map(|s| format!(" (first bad entry: {s})"))
            .unwrap_or_default();
        let err = Error::new(
            Kind::Verify,
            format!("ledger {} FAILED verification{first}", p.db.display()),
        )
        .with_detail(
            report
                .problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .with_hint("the ledger was modified outside Stagecraft; keep a copy for investigation");
        eprintln!("{err}");
    }
    Ok(if report.ok { exit::OK } else { exit::VERIFY })
}

fn export(a: CommonArgs) -> Result<i32, Error> {
    let p = paths(&a.ledger)?;
    let conn = ledger::open(&p, false)?;
    let mut stmt = conn.prepare(
        "SELECT seq, run_id, kind, task, idx, op, args, result, error, started_at, duration_us, prev_hash, hash, key_id, mac \
         FROM entries ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let parse = |s: Option<String>| {
        s.map(|t| {
            serde_json::from_str::<serde_json::Value>(&t).unwrap_or(serde_json::Value::String(t))
        })
    };
    while let Some(r) = rows.next()? {
        let line = serde_json::json!({
            "seq": r.get::<_, i64>(0)?,
            "run_id": r.get::<_, String>(1)?,
            "kind": r.get::<_, String>(2)?,
            "task": r.get::<_, String>(3)?,
            "idx": r.get::<_, i64>(4)?,
            "op": r.get::<_, String>(5)?,
            "args": parse(Some(r.get::<_, String>(6)?)),
            "result": parse(r.get(7)?),
            "error": parse(r.get(8)?),
            "started_at": r.get::<_, i64>(9)?,
            "duration_us": r.get::<_, i64>(10)?,
            "prev_hash": r.get::<_, String>(11)?,
            "hash": r.get::<_, String>(12)?,
            "key_id": r.get::<_, String>(13)?,
            "mac": r.get::<_, String>(14)?,
        });
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    let _ = out.flush();
    Ok(exit::OK)
}
