//! `stagecraft/lock`: deploy locks on hosts (capability `ssh:HOST`, as they are taken over SSH).
//!
//! A lock is a directory created atomically with `mkdir` on the host
//! (`$HOME/.stagecraft/locks/NAME.lock` of the login user, or `dir`), holding `info.json`: who,
//! which run, when, why, its TTL and a random token. A second holder gets `lock_held` naming the
//! current one (or waits, with `wait`); a lock whose run is dead (this machine's ledger knows the
//! run and its process is gone) or older than its TTL is `lock_stale` and can be broken with
//! `lock.release(host, name, {force = true})`, which is recorded. Locks still held when the run
//! ends (normally, on an error, on a limit) are released then, and a note says so in the ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlua::{Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, UserDataRef, Value};
use serde::Deserialize;
use serde_json::json;

use super::opts;
use super::ssh::{Host, pool, run_argv};
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::value::to_lua;
use crate::runtime::{RunCtx, ctx};

pub mod errkinds {
    pub const HELD: &str = "lock_held";
    pub const STALE: &str = "lock_stale";
}

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("acquire", lua.create_async_function(acquire)?)?;
    t.set("release", lua.create_async_function(release)?)?;
    t.set("status", lua.create_async_function(status)?)?;
    Ok(t)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct AcquireOpts {
    /// Why: shown to whoever finds the lock held.
    message: Option<String>,
    /// Seconds to wait for a held lock (default 0: fail at once).
    wait: Option<f64>,
    /// Seconds after which the lock counts as stale (default 3600).
    ttl: Option<f64>,
    /// Lock folder on the host (default `$HOME/.stagecraft/locks`).
    dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ReleaseOpts {
    /// Break a lock this run does not hold (a stale one).
    force: bool,
    dir: Option<String>,
}

const DEFAULT_DIR: &str = "$HOME/.stagecraft/locks";

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !n.starts_with('.')
}

/// The remote script: `acquire DIR NAME INFO`, `release DIR NAME TOKEN|-`, `status DIR NAME`.
/// It prints `ACQUIRED`, `HELD`, `FREE` or `RELEASED`, then the info, then `NOW <epoch>`.
const SCRIPT: &str = r#"set -u
op="$1"; d="$2"; n="$3"
case "$d" in '$HOME'/*) d="$HOME/${d#'$HOME'/}";; esac
l="$d/$n.lock"
case "$op" in
acquire)
  mkdir -p "$d" || exit 3
  if mkdir "$l" 2>/dev/null; then printf '%s' "$4" > "$l/info.json"; echo ACQUIRED; else echo HELD; cat "$l/info.json" 2>/dev/null; echo; fi ;;
release)
  if [ ! -d "$l" ]; then echo FREE
  elif [ "$4" = - ] || grep -q "\"token\":\"$4\"" "$l/info.json" 2>/dev/null; then echo RELEASED; cat "$l/info.json" 2>/dev/null; echo; rm -rf "$l" || exit 3
  else echo HELD; cat "$l/info.json" 2>/dev/null; echo; fi ;;
status)
  if [ -d "$l" ]; then echo HELD; cat "$l/info.json" 2>/dev/null; echo; else echo FREE; fi ;;
esac
echo "NOW $(date +%s)"
"#;

struct Answer {
    state: String,
    info: serde_json::Value,
    now: i64,
}

async fn remote(
    ctx: &RunCtx,
    host: &Host,
    lua_pool: &Arc<super::ssh::Pool>,
    args: &[&str],
) -> Result<Answer, OpError> {
    let session = lua_pool.session(&host.target).await?;
    let mut argv = vec!["sh".to_string(), "-c".into(), SCRIPT.into(), "sh".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let (code, out, err) = run_argv(ctx, host, session, argv).await?;
    if code != 0 {
        return Err(OpError::new(
            super::ssh::errkinds::COMMAND_FAILED,
            format!(
                "lock: on {} the lock folder could not be used: {}",
                host.target.display(),
                err.trim()
            ),
        ));
    }
    let mut lines = out.lines();
    let state = lines.next().unwrap_or_default().to_string();
    let mut info = serde_json::Value::Null;
    let mut now = 0;
    for l in lines {
        if let Some(n) = l.strip_prefix("NOW ") {
            now = n.trim().parse().unwrap_or(0);
        } else if !l.trim().is_empty() {
            info = serde_json::from_str(l).unwrap_or(json!({ "raw": l }));
        }
    }
    Ok(Answer { state, info, now })
}

/// Whether a held lock is stale, and why.
fn staleness(ctx: &RunCtx, info: &serde_json::Value, now: i64) -> Option<String> {
    let since = info.get("since_unix").and_then(|v| v.as_i64()).unwrap_or(0);
    let ttl = info.get("ttl").and_then(|v| v.as_i64()).unwrap_or(3600);
    if now > 0 && since > 0 && now - since > ttl {
        return Some(format!("it is older than its TTL of {ttl}s"));
    }
    let run = info.get("run").and_then(|v| v.as_str())?;
    if run == &*ctx.run_id {
        return None;
    }
    let conn = crate::ledger::open(&ctx.ledger, false).ok()?;
    let summary = crate::ledger::query::get_run(&conn, &ctx.ledger, run).ok()?;
    if crate::ledger::query::run_is_alive(&ctx.ledger, run) {
        return None;
    }
    Some(format!(
        "its run {run} is {} (the process is gone)",
        summary.status
    ))
}

/// Locks are taken over SSH: the capability is the host's.
fn require_ssh(ctx: &RunCtx, op: &str, host: &Host) -> Result<(), OpError> {
    host.target.require(ctx, op)
}

/// A lock's info for the script and the ledger: the token stays on the host.
fn without_token(info: &serde_json::Value) -> serde_json::Value {
    let mut v = info.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("token");
    }
    v
}

fn holder_text(info: &serde_json::Value) -> String {
    let s = |k: &str| {
        info.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let mut t = format!("{} (run {}, since {})", s("holder"), s("run"), s("since"));
    if let Some(m) = info.get("message").and_then(|v| v.as_str()) {
        t.push_str(&format!(": {m}"));
    }
    t
}

/// A lock this run holds.
pub struct Lock {
    host: Host,
    name: String,
    dir: String,
    token: String,
    released: Arc<AtomicBool>,
}

async fn acquire(
    lua: Lua,
    (host, name, o): (UserDataRef<Host>, String, Option<Value>),
) -> mlua::Result<Lock> {
    const F: &str = "lock.acquire";
    let host = (*host).clone();
    let ctx = ctx(&lua)?;
    if !valid_name(&name) {
        return Err(OpError::invalid(format!(
            "{F}: '{name}' is not a lock name (letters, digits, - _ .)"
        ))
        .into_lua());
    }
    let opts_json = super::docker::opts_json(F, &o)?;
    let o: AcquireOpts = opts(F, o)?;
    let wait = o.wait.unwrap_or(0.0);
    let ttl = o.ttl.unwrap_or(3600.0);
    if !(wait.is_finite() && wait >= 0.0 && ttl.is_finite() && ttl > 0.0) {
        return Err(
            OpError::invalid(format!("{F}: wait must be >= 0 and ttl > 0 seconds")).into_lua(),
        );
    }
    let dir = o.dir.clone().unwrap_or_else(|| DEFAULT_DIR.to_string());
    let p = pool(&lua);
    let args = json!({ "host": host.target.id(), "name": name, "opts": opts_json });
    let c2 = ctx.clone();
    let (h2, n2, d2) = (host.clone(), name.clone(), dir.clone());
    let released = Arc::new(AtomicBool::new(false));
    let rel2 = released.clone();
    let v = ctx
        .record(F, args, || async move {
            require_ssh(&c2, F, &h2)?;
            let token = format!("{:032x}", rand::random::<u128>());
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let machine = std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            let now = time::OffsetDateTime::now_utc();
            let info = json!({
                "holder": format!("{user}@{machine}"),
                "run": &*c2.run_id,
                "since": crate::util::rfc3339((now.unix_timestamp_nanos() / 1000) as i64),
                "since_unix": now.unix_timestamp(),
                "ttl": ttl as i64,
                "message": o.message,
                "token": token,
            });
            let info_text = info.to_string();
            let deadline = Instant::now() + Duration::from_secs_f64(wait);
            loop {
                let a = remote(&c2, &h2, &p, &["acquire", &d2, &n2, &info_text]).await?;
                if a.state == "ACQUIRED" {
                    // Released when the run ends, whatever happens, unless released before.
                    let (c3, h3, n3, d3, t3, r3, p3) = (
                        c2.clone(),
                        h2.clone(),
                        n2.clone(),
                        d2.clone(),
                        token.clone(),
                        rel2.clone(),
                        p.clone(),
                    );
                    c2.at_end(Box::new(move || {
                        Box::pin(async move {
                            if r3.swap(true, Ordering::SeqCst) {
                                return;
                            }
                            let done = remote(&c3, &h3, &p3, &["release", &d3, &n3, &t3]).await;
                            c3.note(
                                "lock.release",
                                json!({
                                    "host": h3.target.id(), "name": n3, "at": "run end",
                                    "ok": done.as_ref().is_ok_and(|a| a.state == "RELEASED"),
                                }),
                            );
                        })
                    }));
                    return Ok(json!({ "name": n2, "dir": d2, "token": token, "info": info }));
                }
                if let Some(why) = staleness(&c2, &a.info, a.now) {
                    return Err(OpError::new(
                        errkinds::STALE,
                        format!(
                            "{F}: deploy lock {n2} on {} is stale: held by {}, but {why}",
                            h2.target.display(),
                            holder_text(&a.info)
                        ),
                    )
                    .hint(format!(
                        "make sure nothing is deploying, then break it with lock.release(host, \"{n2}\", {{force = true}})"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(OpError::new(
                        errkinds::HELD,
                        format!(
                            "{F}: deploy lock {n2} on {} is held by {}",
                            h2.target.display(),
                            holder_text(&a.info)
                        ),
                    )
                    .hint(if wait > 0.0 {
                        format!("it was still held after waiting {wait}s")
                    } else {
                        "wait for it with {wait = SECONDS}, or try again later".to_string()
                    }));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
        .map_err(OpError::into_lua)?;
    let token = v
        .get("token")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Lock {
        host,
        name,
        dir,
        token,
        released,
    })
}

async fn release(
    lua: Lua,
    (host, name, o): (UserDataRef<Host>, String, Option<Value>),
) -> mlua::Result<Value> {
    const F: &str = "lock.release";
    let host = (*host).clone();
    let ctx = ctx(&lua)?;
    let opts_json = super::docker::opts_json(F, &o)?;
    let o: ReleaseOpts = opts(F, o)?;
    if !valid_name(&name) {
        return Err(OpError::invalid(format!("{F}: '{name}' is not a lock name")).into_lua());
    }
    if !o.force {
        return Err(OpError::invalid(format!(
            "{F}: releasing a lock this run does not hold needs {{force = true}}"
        ))
        .hint("release a lock you hold with lock:release(); force breaks someone else's")
        .into_lua());
    }
    let dir = o.dir.unwrap_or_else(|| DEFAULT_DIR.to_string());
    let p = pool(&lua);
    let args = json!({ "host": host.target.id(), "name": name, "opts": opts_json });
    let v = ctx
        .record(F, args, || async {
            require_ssh(&ctx, F, &host)?;
            let a = remote(&ctx, &host, &p, &["release", &dir, &name, "-"]).await?;
            Ok(json!({ "released": a.state == "RELEASED", "previous": without_token(&a.info) }))
        })
        .await
        .map_err(OpError::into_lua)?;
    to_lua(&lua, &v)
}

async fn status(
    lua: Lua,
    (host, name, o): (UserDataRef<Host>, String, Option<Value>),
) -> mlua::Result<Value> {
    const F: &str = "lock.status";
    let host = (*host).clone();
    let ctx = ctx(&lua)?;
    if !valid_name(&name) {
        return Err(OpError::invalid(format!("{F}: '{name}' is not a lock name")).into_lua());
    }
    let opts_json = super::docker::opts_json(F, &o)?;
    let o: ReleaseOpts = opts(F, o)?;
    let dir = o.dir.unwrap_or_else(|| DEFAULT_DIR.to_string());
    let p = pool(&lua);
    let args = json!({ "host": host.target.id(), "name": name, "opts": opts_json });
    let v = ctx
        .record(F, args, || async {
            require_ssh(&ctx, F, &host)?;
            let a = remote(&ctx, &host, &p, &["status", &dir, &name]).await?;
            if a.state != "HELD" {
                return Ok(json!({ "held": false }));
            }
            let stale = staleness(&ctx, &a.info, a.now);
            Ok(json!({
                "held": true,
                "info": without_token(&a.info),
                "stale": stale.is_some(),
                "why_stale": stale,
            }))
        })
        .await
        .map_err(OpError::into_lua)?;
    to_lua(&lua, &v)
}

impl UserData for Lock {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, l| Ok(l.name.clone()));
        fields.add_field_method_get("held", |_, l| Ok(!l.released.load(Ordering::SeqCst)));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, l, ()| {
            Ok(format!("lock {} on {}", l.name, l.host.target.display()))
        });
        methods.add_async_method("release", |lua, l, ()| {
            let (host, name, dir, token, released) = (
                l.host.clone(),
                l.name.clone(),
                l.dir.clone(),
                l.token.clone(),
                l.released.clone(),
            );
            async move {
                const F: &str = "lock.release";
                let ctx = ctx(&lua)?;
                let p = pool(&lua);
                let args = json!({ "host": host.target.id(), "name": name, "held": true });
                let v = ctx
                    .record(F, args, || async {
                        if released.swap(true, Ordering::SeqCst) {
                            return Ok(json!({ "released": false }));
                        }
                        let a = remote(&ctx, &host, &p, &["release", &dir, &name, &token]).await?;
                        if a.state == "HELD" {
                            return Err(OpError::new(
                                kinds::NOT_FOUND,
                                format!(
                                    "{F}: the lock {name} on {} was broken and is now held by {}",
                                    host.target.display(),
                                    holder_text(&a.info)
                                ),
                            ));
                        }
                        Ok(json!({ "released": a.state == "RELEASED" }))
                    })
                    .await
                    .map_err(OpError::into_lua)?;
                to_lua(&lua, &v)
            }
        });
    }
}
