//! `stagecraft/exec`: run a program from an argv list (never a shell string). Capability
//! `exec:<program>` is matched against the program the argv resolves to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{from_json, opts};
use crate::runtime::caps::{Request, resolve_on_path};
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::secrets::SecretHandle;
use crate::runtime::value::{ToJson, to_json};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("run", lua.create_async_function(run)?)?;
    Ok(t)
}

/// Environment passed through to children; everything else is dropped (no ambient secrets).
const PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RunOpts {
    env: BTreeMap<String, serde_json::Value>,
    cwd: Option<String>,
    stdin: Option<String>,
    /// Seconds.
    timeout: Option<f64>,
    /// Forward output to the terminal (scrubbed) while capturing it.
    stream: bool,
    /// Most bytes kept of each of stdout and stderr (default 16 MiB); the rest is read and
    /// dropped, and the result says `truncated = true`.
    max_output: Option<usize>,
}

const DEFAULT_MAX_OUTPUT: usize = 16 * 1024 * 1024;

async fn run(lua: Lua, (argv, o): (Value, Option<Value>)) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let argv_json = to_json(
        &argv,
        ToJson {
            secrets: false,
            ..ToJson::default()
        },
    )
    .map_err(|e| OpError::invalid(format!("exec.run: argv: {e}")).into_lua())?;
    let argv: Vec<String> = from_json("exec.run", argv_json.clone()).map_err(|_| {
        OpError::invalid("exec.run: argv must be a list of strings, e.g. {\"git\", \"status\"}")
            .hint("exec never takes a shell string; for a pipeline use {\"sh\", \"-c\", \"...\"} with capability exec:sh")
            .into_lua()
    })?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(
            OpError::invalid("exec.run: argv is empty; give at least the program name").into_lua(),
        );
    }
    let opts_value = match &o {
        Some(v) => to_json(v, ToJson::default())
            .map_err(|e| OpError::invalid(format!("exec.run: {e}")).into_lua())?,
        None => json!({}),
    };
    let o: RunOpts = opts("exec.run", o)?;
    for (k, v) in &o.env {
        if !v.is_string() && SecretHandle::from_reference(v).is_none() {
            return Err(OpError::invalid(format!(
                "exec.run: env.{k} must be a string or a secret handle"
            ))
            .into_lua());
        }
    }
    if let Some(t) = o.timeout
        && !(t > 0.0 && t.is_finite())
    {
        return Err(
            OpError::invalid("exec.run: timeout must be a positive number of seconds").into_lua(),
        );
    }
    let args = json!({ "argv": argv_json, "opts": opts_value });
    let v = ctx
        .record("exec.run", args, || spawn(&ctx, argv, o))
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

/// The program argv[0] names, canonicalised.
fn resolve_program(ctx: &RunCtx, program: &str, cwd: &Path) -> Result<PathBuf, OpError> {
    let found = if program.contains('/') {
        let p = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            cwd.join(program)
        };
        p.canonicalize().ok()
    } else {
        resolve_on_path(program, ctx.grants.path_env())
    };
    found.ok_or_else(|| {
        OpError::new(
            kinds::NOT_FOUND,
            format!("exec.run: program '{program}' not found"),
        )
        .hint(if program.contains('/') {
            "check the path".to_string()
        } else {
            "is it installed and on PATH?".to_string()
        })
    })
}

async fn spawn(ctx: &RunCtx, argv: Vec<String>, o: RunOpts) -> Result<serde_json::Value, OpError> {
    let cwd = match &o.cwd {
        Some(c) => super::fs::confine(ctx, "exec.run", c, super::fs::Access::Read)?,
        None => ctx.project.root.clone(),
    };
    let program = resolve_program(ctx, &argv[0], &cwd)?;
    let cap = if argv[0].contains('/') {
        format!("exec:{}", program.display())
    } else {
        format!("exec:{}", argv[0])
    };
    ctx.require("exec.run", &Request::Exec(&program), &cap)?;

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .kill_on_drop(true)
        .process_group(0);
    cmd.arg0(&argv[0]);
    for k in PASS_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in &o.env {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => {
                let handle = SecretHandle::from_reference(other).ok_or_else(|| {
                    OpError::invalid(format!("exec.run: env.{k} is not a string"))
                })?;
                ctx.secrets.resolve(&handle).ok_or_else(|| {
                    OpError::new(
                        kinds::NOT_FOUND,
                        format!("exec.run: secret {} is not loaded in this run", handle.name),
                    )
                })?
            }
        };
        cmd.env(k, value);
    }
    cmd.stdin(if o.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| OpError::io(format!("exec.run: cannot start {}: {e}", argv[0])))?;
    // Until the child is reaped normally, dropping this (timeout, cancelled task, killed run)
    // kills its whole process group, grandchildren included.
    let mut group = GroupKill(child.id().and_then(|p| i32::try_from(p).ok()));

    let stdin_task = match (child.stdin.take(), o.stdin) {
        (Some(mut pipe), Some(data)) => Some(tokio::spawn(async move {
            let _ = pipe.write_all(data.as_bytes()).await;
        })),
        _ => None,
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    let stream = o.stream;
    let keep = o.max_output.unwrap_or(DEFAULT_MAX_OUTPUT);
    let collect = async {
        let (stdout, stderr, status) = tokio::join!(
            capture(ctx, out, stream.then_some(ctx.print_to_stderr), keep),
            capture(ctx, err, stream.then_some(true), keep),
            child.wait()
        );
        (stdout, stderr, status)
    };
    let (stdout, stderr, status) = match o.timeout {
        Some(t) => match tokio::time::timeout(Duration::from_secs_f64(t), collect).await {
            Ok(r) => r,
            Err(_) => {
                return Err(OpError::new(
                    kinds::TIMEOUT,
                    format!("exec.run: {} timed out after {t}s and was killed", argv[0]),
                )
                .hint("raise the timeout option"));
            }
        },
        None => collect.await,
    };
    if let Some(t) = stdin_task {
        let _ = t.await;
    }
    group.0 = None;
    let status =
        status.map_err(|e| OpError::io(format!("exec.run: waiting for {}: {e}", argv[0])))?;
    use std::os::unix::process::ExitStatusExt;
    let ((stdout, out_cut), (stderr, err_cut)) = (stdout, stderr);
    let mut result = json!({
        "code": status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
    });
    if out_cut || err_cut {
        result["truncated"] = json!(true);
    }
    if let Some(sig) = status.signal() {
        result["signal"] = json!(sig);
    }
    Ok(result)
}

/// Read a pipe to the end, forwarding scrubbed chunks to our stdout/stderr when streaming.
async fn capture(
    ctx: &RunCtx,
    pipe: Option<impl AsyncRead + Unpin>,
    forward: Option<bool>,
    keep: usize,
) -> (Vec<u8>, bool) {
    let mut scrub = forward.map(|_| ctx.secrets.scrubber.stream());
    let read = crate::util::read_capped(pipe, keep, |chunk| {
        if let (Some(s), Some(to_err)) = (scrub.as_mut(), forward) {
            write_raw(&s.push(chunk), to_err);
        }
    })
    .await;
    if let (Some(s), Some(to_err)) = (scrub.as_mut(), forward) {
        write_raw(&s.finish(), to_err);
    }
    read
}

fn write_raw(bytes: &[u8], to_err: bool) {
    use std::io::Write;
    if bytes.is_empty() {
        return;
    }
    if to_err {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(bytes);
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
}

/// Kills a process group on drop unless disarmed.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 0) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}
