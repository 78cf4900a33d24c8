//! Running a script end to end: project, grants, ledger, the sandboxed state, limits, the outcome.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{MultiValue, Value};
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Kind, Result};
use crate::ledger::key::UserKey;
use crate::ledger::writer::{Pending, Writer};
use crate::ledger::{self, FileLock, LedgerPaths, query};
use crate::project::Project;
use crate::runtime::caps::{Capability, Grants};
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::limits::{self, Stop};
use crate::runtime::record::{self, Divergence, Recorder, Replay};
use crate::runtime::secrets::SecretStore;
use crate::runtime::task::{Failure, InTask, TaskState, Tasks};
use crate::runtime::{RunCtx, sandbox};

/// Limits and grants given on the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub allow: Vec<String>,
    pub allow_all: bool,
    pub cpu_limit: f64,
    pub memory_limit_mb: u64,
    pub timeout: Option<f64>,
    pub ledger: Option<PathBuf>,
    pub json: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Killed,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Killed => "killed",
            Status::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub run_id: String,
    pub status: Status,
    pub exit_code: i32,
    pub duration_ms: u128,
    #[serde(skip)]
    pub error: Option<Error>,
    pub error_message: Option<String>,
    /// Script's return value (first), as JSON.
    pub result: Option<serde_json::Value>,
}

/// A script to execute: its chunk name, source and args.
pub struct Script {
    pub chunk: String,
    pub source: String,
    pub args: Vec<String>,
    /// Recorded module sources to use instead of files (replay and `--live` re-runs).
    pub overlay: HashMap<String, String>,
    pub replay_of: Option<String>,
    /// A team command: the chunk returns `command{...}` and its `run` gets these arguments.
    pub command: Option<CommandCall>,
}

/// How a team command was called: its name and the parsed, typed arguments (a JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct CommandCall {
    pub name: String,
    pub args: serde_json::Value,
}

pub fn ledger_paths(project: &Project, settings: &Settings) -> LedgerPaths {
    let db = settings
        .ledger
        .clone()
        .or_else(|| std::env::var_os("STAGECRAFT_LEDGER").map(PathBuf::from))
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            }
        })
        .unwrap_or_else(|| project.default_ledger_path());
    LedgerPaths::new(db)
}

pub fn grants(project: &Project, settings: &Settings) -> Result<Grants> {
    let mut caps = Vec::new();
    for p in &project.config.permissions {
        caps.push(Capability::parse(p).map_err(|e| {
            Error::usage(format!(
                "{}: permissions: {e}",
                project.root.join(crate::project::CONFIG_FILE).display()
            ))
        })?);
    }
    for a in &settings.allow {
        caps.push(Capability::parse(a).map_err(|e| Error::usage(format!("--allow {a}: {e}")))?);
    }
    Ok(Grants::new(settings.allow_all, caps))
}

/// Read a script file and name its chunk relative to the project.
pub fn load_script(project: &Project, path: &Path, args: Vec<String>) -> Result<Script> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "luau" && ext != "lua" {
        return Err(Error::usage(format!(
            "{}: scripts must end in .luau or .lua",
            path.display()
        )));
    }
    let source = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read script {}: {e}", path.display())))?;
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(Script {
        chunk: project.display_path(&abs),
        source,
        args,
        overlay: HashMap::new(),
        replay_of: None,
        command: None,
    })
}

/// `key=value` args become fields, everything else is positional.
fn args_table(lua: &mlua::Lua, args: &[String]) -> mlua::Result<mlua::Table> {
    let t = lua.create_table()?;
    let mut n = 0;
    for a in args {
        match a.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                t.set(k, v)?;
            }
            _ => {
                n += 1;
                t.raw_set(n, a.as_str())?;
            }
        }
    }
    Ok(t)
}

fn user_name() -> String {
    if let Ok(u) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"))
        && !u.is_empty()
    {
        return u;
    }
    // SAFETY: getuid has no preconditions; getpwuid_r writes only into the buffers we pass.
    unsafe {
        let uid = libc::getuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) == 0
            && !result.is_null()
            && !pwd.pw_name.is_null()
        {
            return std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
        }
        format!("uid{uid}")
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Run a script live, recording it.
pub fn run_live(project: Project, settings: &Settings, script: Script) -> Result<Outcome> {
    let paths = ledger_paths(&project, settings);
    let grants = grants(&project, settings)?;
    let dotenv = project.dotenv()?;
    let key = Arc::new(UserKey::load_or_create()?);
    let conn = ledger::open(&paths, true)?;
    let run_id: Arc<str> = Arc::from(crate::util::sortable_id());

    // Our run lock first, so nobody mistakes this run for a dead one.
    let runs_dir = paths.runs_dir();
    std::fs::create_dir_all(&runs_dir)
        .map_err(|e| Error::ledger(format!("cannot create {}: {e}", runs_dir.display())))?;
    let lock_path = runs_dir.join(format!("{run_id}.lock"));
    let run_lock = FileLock::acquire(&lock_path)?;

    let dead = query::dead_runs(&conn, &paths)?;
    let writer = Arc::new(Writer::start(paths.clone(), conn, key.clone())?);
    for id in dead {
        writer.push(Pending::marker(
            Arc::from(id.as_str()),
            "run.end",
            "run.end",
            "{}".into(),
            Some(
                json!({ "status": "interrupted", "exit_code": null, "detected_by": &*run_id })
                    .to_string(),
            ),
            0,
        ));
        let _ = std::fs::remove_file(paths.runs_dir().join(format!("{id}.lock")));
    }

    let git_dir = crate::git::git_dir(&project.root);
    let commit = git_dir.as_deref().and_then(crate::git::head_commit);
    let dirty_probe = git_dir.as_ref().map(|_| {
        let root = project.root.clone();
        std::thread::spawn(move || crate::git::is_dirty(&root))
    });

    let script_sha = ledger::sha256_hex(script.source.as_bytes());
    writer.push_source(script_sha.clone(), script.source.as_bytes().to_vec());
    let meta = json!({
        "id": &*run_id,
        "script": script.chunk,
        "script_sha256": script_sha,
        "args": script.args,
        "version": env!("CARGO_PKG_VERSION"),
        "git": { "commit": commit },
        "user": user_name(),
        "host": host_name(),
        "pid": std::process::id(),
        "project": project.root.display().to_string(),
        "grants": grants.list(),
        "limits": { "cpu_seconds": settings.cpu_limit, "memory_mb": settings.memory_limit_mb, "timeout_seconds": settings.timeout },
        "replay_of": script.replay_of,
        "command": script.command,
    });
    let started = Instant::now();
    writer.push(Pending::marker(
        run_id.clone(),
        "run.start",
        "run.start",
        meta.to_string(),
        None,
        0,
    ));

    let secrets = SecretStore::new(dotenv, Some(key.clone()));
    let (any_secret, secret_names) = grants.secret_scopes();
    secrets.preload(any_secret, &secret_names);
    let ctx = Arc::new(RunCtx {
        project: Arc::new(project),
        grants,
        secrets,
        run_id: run_id.clone(),
        recorder: Recorder::Live(writer.clone()),
        stop: Stop::new(
            cpu_limit(settings),
            settings.timeout.map(Duration::from_secs_f64),
            settings.memory_limit_mb,
        ),
        tasks: Tasks::default(),
        ledger: paths.clone(),
        overlay: script.overlay.clone(),
        modules: Mutex::new(Vec::new()),
        print_to_stderr: settings.json,
        rng: Mutex::new(rand::rngs::StdRng::from_os_rng()),
        finalizers: Mutex::new(Vec::new()),
    });
    tracing::info!(run = %run_id, script = %script.chunk, "run started");
    let result = execute(&ctx, &script, settings.memory_limit_mb);
    let outcome = outcome_of(&ctx, &run_id, result, started);
    tracing::info!(run = %run_id, status = outcome.status.as_str(), millis = outcome.duration_ms as u64, "run ended");

    let dirty = dirty_probe.and_then(|h| h.join().ok()).flatten();
    let error_json = outcome.error.as_ref().map(|e| {
        let mut v = json!({ "message": e.message, "hint": e.hint });
        ctx.secrets.scrubber.scrub_json(&mut v);
        v
    });
    let end = json!({
        "status": outcome.status.as_str(),
        "exit_code": outcome.exit_code,
        "git_dirty": dirty,
        "error": error_json,
    });
    writer.push(Pending::marker(
        run_id.clone(),
        "run.end",
        "run.end",
        "{}".into(),
        Some(end.to_string()),
        started.elapsed().as_micros() as i64,
    ));
    if let Err(mut e) = writer.close() {
        if let Some(run_error) = &outcome.error {
            e = e.with_detail(format!("the run itself ended with: {}", run_error.message));
        }
        return Err(e.with_hint(
            "the ledger could not record this run's last entries; check the disk and the \
             permissions of the ledger's directory",
        ));
    }
    drop(run_lock);
    let _ = std::fs::remove_file(&lock_path);
    Ok(outcome)
}

fn cpu_limit(settings: &Settings) -> Option<Duration> {
    (settings.cpu_limit > 0.0 && settings.cpu_limit.is_finite())
        .then(|| Duration::from_secs_f64(settings.cpu_limit))
}

/// What `execute` hands back: the script's first return value, or its failure.
type ExecResult = std::result::Result<serde_json::Value, Failure>;

/// Run the chunk as the `main` task on a current-thread runtime, under the limits.
fn execute(ctx: &Arc<RunCtx>, script: &Script, memory_limit_mb: u64) -> ExecResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            error: OpError::new("internal", format!("cannot start the async runtime: {e}")),
            structured: true,
            traceback: String::new(),
        })?;
    limits::install_signal_flag();
    rt.block_on(async {
        let signals = shutdown_signal();
        let fail = |e: OpError| Failure {
            error: e,
            structured: true,
            traceback: String::new(),
        };
        let built = sandbox::build(ctx.clone(), memory_limit_mb).map_err(|e| {
            fail(OpError::new(
                "internal",
                format!("cannot set up the sandbox: {e}"),
            ))
        })?;
        let lua = built.lua;
        lua.set_named_registry_value("stagecraft.runner", &built.runner)
            .and_then(|_| lua.set_named_registry_value("stagecraft.capture", &built.capture))
            .map_err(|e| fail(OpError::new("internal", e.to_string())))?;
        let main = lua
            .load(script.source.as_str())
            .set_name(format!("@{}", script.chunk))
            .into_function()
            .map_err(|e| Failure {
                error: OpError::new("syntax_error", crate::runtime::fault::message_of(&e))
                    .hint("fix the syntax error at the position shown"),
                structured: false,
                traceback: String::new(),
            })?;
        let (main, args) = match &script.command {
            None => (main, args_table(&lua, &script.args)),
            Some(call) => (
                command_main(&lua, main, &script.chunk, &call.name)
                    .map_err(|e| fail(OpError::new("internal", e.to_string())))?,
                crate::runtime::value::to_lua(&lua, &call.args).and_then(|v| match v {
                    Value::Table(t) => Ok(t),
                    _ => lua.create_table(),
                }),
            ),
        };
        let args = args.map_err(|e| fail(OpError::new("internal", e.to_string())))?;
        let main_task = TaskState::new("main".into());
        let thread = lua
            .create_thread(built.runner.clone())
            .map_err(|e| fail(OpError::new("internal", e.to_string())))?;
        let fut = thread
            .into_async::<MultiValue>((main, built.capture.clone(), args))
            .map_err(|e| fail(OpError::new("internal", e.to_string())))?;
        let fut = InTask::new(ctx.clone(), main_task.clone(), fut);
        let wall = ctx.stop.wall_limit();
        let res = tokio::select! {
            r = fut => Some(r),
            _ = sleep_or_forever(wall) => {
                if let Some(w) = wall { ctx.stop.stop(limits::wall_exceeded(w)); }
                None
            }
            _ = signals => {
                ctx.stop.stop(OpError::new(kinds::INTERRUPTED, "interrupted by a signal"));
                None
            }
        };
        // The failure captured where it was raised carries the traceback of that moment.
        let captured_tb = || {
            main_task
                .failure
                .lock()
                .ok()
                .and_then(|f| f.as_ref().map(|f| f.traceback.clone()))
                .unwrap_or_default()
        };
        let stopped = || {
            ctx.stop.reason().map(|r| Failure {
                error: r,
                structured: true,
                traceback: captured_tb(),
            })
        };
        let result =
            match res {
                None => Err(stopped()
                    .unwrap_or_else(|| fail(OpError::new(kinds::INTERRUPTED, "run stopped")))),
                Some(Err(e)) => Err(stopped().unwrap_or_else(|| Failure {
                    error: crate::runtime::fault::find_op_error(&e).unwrap_or_else(|| {
                        OpError::new("script_error", crate::runtime::fault::message_of(&e))
                    }),
                    structured: false,
                    traceback: String::new(),
                })),
                Some(Ok(mut values)) => match values.pop_front() {
                    Some(Value::Boolean(true)) => {
                        if let Some(reason) = ctx.stop.reason() {
                            return Err(fail(reason));
                        }
                        let first = values.pop_front().unwrap_or(Value::Nil);
                        Ok(crate::runtime::value::to_json(&first, Default::default())
                            .unwrap_or(serde_json::Value::Null))
                    }
                    _ => {
                        let captured = main_task.take_failure();
                        match (ctx.stop.reason(), captured) {
                            (Some(r), c) => Err(Failure {
                                error: r,
                                structured: true,
                                traceback: c.map(|c| c.traceback).unwrap_or_default(),
                            }),
                            (None, Some(c)) => Err(c),
                            (None, None) => {
                                Err(fail(OpError::new("script_error", "the script failed")))
                            }
                        }
                    }
                },
            };
        // Whatever the outcome: release what the run still holds (deploy locks).
        ctx.finalize(Duration::from_secs(30)).await;
        result
    })
}

/// Calls a team command's `run(args)`: the chunk must return the descriptor of `name`.
const COMMAND_MAIN: &str = r#"
local chunk, resolve = ...
return function(args)
  return resolve(chunk())(args)
end
"#;

/// The main function of a team command run: evaluate the file, check its descriptor, call `run`.
fn command_main(
    lua: &mlua::Lua,
    chunk: mlua::Function,
    file: &str,
    name: &str,
) -> mlua::Result<mlua::Function> {
    let (file, name) = (file.to_string(), name.to_string());
    let resolve = lua.create_function(move |_, v: Value| {
        let got = match &v {
            Value::UserData(ud) => match ud.borrow::<crate::api::command::Descriptor>() {
                Ok(d) if d.spec.name == name => return Ok(d.run.clone()),
                Ok(d) => format!("the command '{}'", d.spec.name),
                Err(_) => "a userdata".to_string(),
            },
            other => other.type_name().to_string(),
        };
        Err(OpError::invalid(format!(
            "{file}: must return the command{{ name = \"{name}\", ... }} it is run as, but returned {got}"
        ))
        .into_lua())
    })?;
    lua.load(COMMAND_MAIN)
        .set_name("=stagecraft/runner")
        .call((chunk, resolve))
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves on SIGINT or SIGTERM. The streams are created before the script starts, so a
/// signal that arrives early is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Frames worth showing: script lines, not the runtime's own; repeats folded, at most 20.
fn clean_traceback(tb: &str) -> Vec<String> {
    let frames: Vec<&str> = tb
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("[C]")
                && !l.contains("stagecraft/runner")
                && !l.contains("stagecraft/sandbox")
                && !l.contains("__mlua")
                && *l != "stack traceback:"
        })
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let mut j = i + 1;
        while j < frames.len() && frames[j] == frames[i] {
            j += 1;
        }
        out.push(frames[i].to_string());
        if j - i > 1 {
            out.push(format!(
                "... (the line above repeats {} more times)",
                j - i - 1
            ));
        }
        i = j;
    }
    if out.len() > 20 {
        let dropped = out.len() - 20;
        out.truncate(20);
        out.push(format!("... ({dropped} more frames)"));
    }
    out
}

fn outcome_of(ctx: &RunCtx, run_id: &str, result: ExecResult, started: Instant) -> Outcome {
    let duration_ms = started.elapsed().as_millis();
    match result {
        Ok(mut v) => {
            // The return value is printed by `--json`: scrubbed like every other output.
            ctx.secrets.scrubber.scrub_json(&mut v);
            Outcome {
                run_id: run_id.to_string(),
                status: Status::Ok,
                exit_code: 0,
                duration_ms,
                error: None,
                error_message: None,
                result: Some(v),
            }
        }
        Err(f) => {
            let kind = f.error.cli_kind();
            let status = match kind {
                Kind::Limit => Status::Killed,
                Kind::Interrupted => Status::Interrupted,
                _ => Status::Failed,
            };
            let frames = clean_traceback(&f.traceback);
            let scrub = |s: &str| ctx.secrets.scrubber.scrub(s).into_owned();
            // Structured errors have no position: take it from the innermost script frame.
            let location = frames
                .first()
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string);
            let mut message = scrub(&f.error.message);
            if let Some(loc) = &location
                && !has_location(&message)
            {
                message = format!("{loc}: {message}");
            }
            let mut err = Error::new(kind, message);
            if !frames.is_empty() {
                err = err.with_detail(format!(
                    "stack traceback:\n  {}",
                    scrub(&frames.join("\n  "))
                ));
            }
            let hint = f.error.hint.clone().or_else(|| default_hint(&f.error));
            if let Some(h) = hint {
                err = err.with_hint(scrub(&h));
            }
            Outcome {
                run_id: run_id.to_string(),
                status,
                exit_code: err.exit_code(),
                duration_ms,
                error_message: Some(err.message.clone()),
                error: Some(err),
                result: None,
            }
        }
    }
}

/// Whether a message already starts with `chunk.luau:LINE:`.
fn has_location(message: &str) -> bool {
    let Some((head, _)) = message.split_once(": ") else {
        return false;
    };
    let Some((chunk, line)) = head.rsplit_once(':') else {
        return false;
    };
    (chunk.ends_with(".luau") || chunk.ends_with(".lua"))
        && !line.is_empty()
        && line.chars().all(|c| c.is_ascii_digit())
}

fn default_hint(e: &OpError) -> Option<String> {
    match e.kind.as_str() {
        "syntax_error" => Some("fix the syntax error at the position shown".into()),
        "script_error" => Some("the script raised this error; see the line above".into()),
        _ => None,
    }
}

/// What `stagecraft replay` reports.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub run_id: String,
    pub recorded_calls: usize,
    pub matched_calls: usize,
    pub divergence: Option<Divergence>,
    pub status: Status,
    pub error_message: Option<String>,
    pub recorded_status: String,
    #[serde(skip)]
    pub error: Option<Error>,
}

/// Load a recorded run as a `Script` (recorded sources, args), optionally with a new main script.
pub fn recorded_script(
    conn: &rusqlite::Connection,
    run_id: &str,
    project: &Project,
    new_script: Option<&Path>,
) -> Result<Script> {
    let meta: String = conn
        .query_row(
            "SELECT args FROM entries WHERE run_id = ?1 AND kind = 'run.start'",
            [run_id],
            |r| r.get(0),
        )
        .map_err(|_| Error::usage(format!("no run '{run_id}' in the ledger")))?;
    let meta: serde_json::Value = serde_json::from_str(&meta)
        .map_err(|e| Error::ledger(format!("run {run_id}: bad record: {e}")))?;
    let args: Vec<String> = meta["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut overlay = HashMap::new();
    for e in query::entries(conn, run_id)?
        .into_iter()
        .filter(|e| e.kind == "module")
    {
        let sha = e.args["sha256"].as_str().unwrap_or_default().to_string();
        if let Some(bytes) = query::source(conn, &sha)? {
            overlay.insert(e.op.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let mut script = match new_script {
        Some(p) => load_script(project, p, args)?,
        None => {
            let sha = meta["script_sha256"].as_str().unwrap_or_default();
            let src = query::source(conn, sha)?.ok_or_else(|| {
                Error::ledger(format!(
                    "run {run_id}: the recorded script source {sha} is missing"
                ))
            })?;
            Script {
                chunk: meta["script"].as_str().unwrap_or("script.luau").to_string(),
                source: String::from_utf8_lossy(&src).into_owned(),
                args,
                overlay: HashMap::new(),
                replay_of: None,
                command: None,
            }
        }
    };
    script.command = match &meta["command"] {
        serde_json::Value::Null => None,
        c => Some(CommandCall {
            name: c["name"].as_str().unwrap_or_default().to_string(),
            args: c["args"].clone(),
        }),
    };
    script.overlay = overlay;
    script.replay_of = Some(run_id.to_string());
    Ok(script)
}

/// Re-execute a recorded run against its recorded results: no process, file write or socket.
pub fn replay(
    project: Project,
    settings: &Settings,
    run: &str,
    new_script: Option<&Path>,
) -> Result<ReplayReport> {
    let paths = ledger_paths(&project, settings);
    let conn = ledger::open(&paths, false)?;
    let run_id = query::resolve_run(&conn, run)?;
    let recorded = query::get_run(&conn, &paths, &run_id)?;
    let script = recorded_script(&conn, &run_id, &project, new_script)?;
    // A run that was killed or interrupted (or is still running) stopped at an arbitrary point:
    // its replay ends where the recording ends instead of diverging there.
    let ends_early = !matches!(recorded.status.as_str(), "ok" | "failed");
    let replay = Replay::new(query::raw_calls(&conn, &run_id)?, ends_early);
    drop(conn);
    let recorded_calls = replay.total;
    let ctx = Arc::new(RunCtx {
        project: Arc::new(project),
        grants: Grants::new(false, Vec::new()),
        secrets: SecretStore::new(Default::default(), None),
        run_id: Arc::from(format!("replay-of-{run_id}")),
        recorder: Recorder::Replay(Box::new(replay)),
        stop: Stop::new(
            cpu_limit(settings),
            settings.timeout.map(Duration::from_secs_f64),
            settings.memory_limit_mb,
        ),
        tasks: Tasks::default(),
        ledger: paths,
        overlay: script.overlay.clone(),
        modules: Mutex::new(Vec::new()),
        print_to_stderr: true,
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(0)),
        finalizers: Mutex::new(Vec::new()),
    });
    let Recorder::Replay(replay) = &ctx.recorder else {
        return Err(Error::new(
            Kind::Ledger,
            "internal: replay recorder missing",
        ));
    };
    if replay.ends_early() && replay.exhausted() {
        // Nothing was recorded before the run stopped: nothing to replay.
        ctx.stop.stop(record::recording_end());
    }
    let started = Instant::now();
    let result = execute(&ctx, &script, settings.memory_limit_mb);
    let outcome = outcome_of(&ctx, &run_id, result, started);
    let reached_end = ctx
        .stop
        .reason()
        .is_some_and(|r| r.kind == record::RECORDING_END);
    let stopped = matches!(outcome.status, Status::Killed | Status::Interrupted);
    let mut divergence = replay.divergence.lock().ok().and_then(|d| d.clone());
    if divergence.is_none() && !reached_end && !stopped {
        divergence = replay.missing();
    }
    let error = match &divergence {
        Some(d) => Some(
            Error::new(Kind::Divergence, format!("replay of {run_id} diverged at call {} of task {}: {}", d.call, d.task, d.reason))
                .with_hint("the script or its inputs changed since the recording; `stagecraft replay RUN --live` records a fresh run"),
        ),
        None if reached_end => None,
        None => outcome.error.clone().filter(|_| stopped),
    };
    // Reaching the end of a recording that ended early is how that replay ends: report the
    // recorded status, not the internal stop.
    let (status, error_message) = match recorded.status.as_str() {
        "killed" if reached_end => (Status::Killed, None),
        _ if reached_end => (Status::Interrupted, None),
        _ => (outcome.status, outcome.error_message.clone()),
    };
    Ok(ReplayReport {
        run_id,
        recorded_calls,
        matched_calls: replay.matched.load(std::sync::atomic::Ordering::Relaxed),
        divergence,
        status,
        error_message,
        recorded_status: recorded.status,
        error,
    })
}
