//! `stagecraft/tailscale`: the node's view of its tailnet through the `tailscale` CLI
//! (`status`, `ip`) and joining or leaving it (`up`, `down`). Capability `tailscale`.
//!
//! The CLI is `tailscale.cli` from `stagecraft.yml` (a path relative to the project root, or a
//! name on PATH), default `tailscale` on PATH. It runs with PATH, HOME and LANG plus the variables
//! named in `tailscale.env`, nothing else. An auth key never appears on its command line: it is
//! written to a 0600 temporary file passed as `--auth-key=file:PATH` and removed afterwards.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::opts;
use crate::runtime::caps::{Request, resolve_on_path};
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::secrets::SecretHandle;
use crate::runtime::value::{ToJson, to_json};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("status", lua.create_async_function(status)?)?;
    t.set("ip", lua.create_async_function(ip)?)?;
    t.set("up", lua.create_async_function(up)?)?;
    t.set("down", lua.create_async_function(down)?)?;
    Ok(t)
}

/// The error kind of a CLI that ran and failed.
const TAILSCALE_ERROR: &str = "tailscale_error";

/// Environment every CLI run gets (when set); `tailscale.env` in the config adds names.
const PASS_ENV: &[&str] = &["PATH", "HOME", "LANG"];

/// How long `status` and `down` may take before the CLI is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Extra time `up` waits beyond its own `--timeout` before the CLI is killed.
const UP_GRACE: Duration = Duration::from_secs(10);

const CONFIG_HINT: &str = "install Tailscale (https://tailscale.com/download), or set \
     `tailscale: { cli: /path/to/tailscale }` in stagecraft.yml";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct UpOpts {
    /// A secret handle (`secrets.get("TS_AUTHKEY")`); never a plain string.
    authkey: Option<Json>,
    hostname: Option<String>,
    #[serde(deserialize_with = "super::seq")]
    tags: Vec<String>,
    /// Seconds to wait for the node to be running (`--timeout`).
    timeout: Option<f64>,
    /// `--reset`: unspecified settings go back to their defaults.
    reset: bool,
}

async fn status(lua: Lua, (): ()) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let v = ctx
        .record("tailscale.status", json!({}), || async {
            ctx.require(
                "tailscale.status",
                &Request::Plain("tailscale"),
                "tailscale",
            )?;
            let raw = status_json(&ctx, "tailscale.status").await?;
            Ok(clean_status(&raw))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn ip(lua: Lua, name: Value) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let name = match name {
        Value::String(s) if !s.to_string_lossy().trim().is_empty() => {
            s.to_string_lossy().trim().to_string()
        }
        _ => {
            return Err(OpError::invalid(
                "tailscale.ip: give the name of a node, e.g. tailscale.ip(\"web-1\")",
            )
            .into_lua());
        }
    };
    let v = ctx
        .record("tailscale.ip", json!({ "name": name }), || async {
            ctx.require("tailscale.ip", &Request::Plain("tailscale"), "tailscale")?;
            let raw = status_json(&ctx, "tailscale.ip").await?;
            find_ip(&raw, &name)
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn up(lua: Lua, o: Option<Value>) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let opts_json = match &o {
        Some(v) => to_json(v, ToJson::default())
            .map_err(|e| OpError::invalid(format!("tailscale.up: {e}")).into_lua())?,
        None => json!({}),
    };
    let o: UpOpts = opts("tailscale.up", o)?;
    // Validate everything before the call is recorded: a plain-string key never reaches the ledger.
    let key = match &o.authkey {
        None => None,
        Some(v) => Some(SecretHandle::from_reference(v).ok_or_else(|| {
            OpError::invalid(
                "tailscale.up: authkey must be a secret handle, not a plain string",
            )
            .hint("load it with require(\"stagecraft/secrets\").get(\"TS_AUTHKEY\") (capability secrets:TS_AUTHKEY)")
            .into_lua()
        })?),
    };
    if let Some(h) = &o.hostname
        && (h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == ','))
    {
        return Err(OpError::invalid(format!(
            "tailscale.up: hostname '{h}' must be non-empty, without spaces or commas"
        ))
        .into_lua());
    }
    for tag in &o.tags {
        let ok = tag
            .strip_prefix("tag:")
            .is_some_and(|t| !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == ','));
        if !ok {
            return Err(OpError::invalid(format!(
                "tailscale.up: tag '{tag}' must look like \"tag:NAME\""
            ))
            .into_lua());
        }
    }
    if let Some(t) = o.timeout
        && !(t > 0.0 && t.is_finite())
    {
        return Err(
            OpError::invalid("tailscale.up: timeout must be a positive number of seconds")
                .into_lua(),
        );
    }
    let v = ctx
        .record("tailscale.up", opts_json, || run_up(&ctx, o, key))
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn down(lua: Lua, (): ()) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let v = ctx
        .record("tailscale.down", json!({}), || async {
            ctx.require("tailscale.down", &Request::Plain("tailscale"), "tailscale")?;
            run_cli(&ctx, "tailscale.down", &["down".to_string()], CLI_TIMEOUT).await?;
            Ok(json!({ "ok": true }))
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn run_up(ctx: &RunCtx, o: UpOpts, key: Option<SecretHandle>) -> Result<Json, OpError> {
    const OP: &str = "tailscale.up";
    ctx.require(OP, &Request::Plain("tailscale"), "tailscale")?;
    let mut args = vec!["up".to_string()];
    // Held until the CLI has exited: the file is removed when this is dropped.
    let key_file = match &key {
        Some(h) => {
            let value = ctx.secrets.resolve(h).ok_or_else(|| {
                OpError::new(
                    kinds::NOT_FOUND,
                    format!("{OP}: secret {} is not loaded in this run", h.name),
                )
            })?;
            Some(KeyFile::write(&value)?)
        }
        None => None,
    };
    if let Some(f) = &key_file {
        args.push(format!("--auth-key=file:{}", f.0.display()));
    }
    if let Some(h) = &o.hostname {
        args.push(format!("--hostname={h}"));
    }
    if !o.tags.is_empty() {
        args.push(format!("--advertise-tags={}", o.tags.join(",")));
    }
    if o.reset {
        args.push("--reset".to_string());
    }
    let limit = match o.timeout {
        Some(t) => {
            args.push(format!("--timeout={t}s"));
            Some(Duration::from_secs_f64(t) + UP_GRACE)
        }
        None => None,
    };
    match limit {
        Some(l) => run_cli(ctx, OP, &args, l).await?,
        None => run_cli_unbounded(ctx, OP, &args).await?,
    };
    drop(key_file);
    Ok(json!({ "ok": true }))
}

/// A 0600 file holding an auth key, removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn write(value: &str) -> Result<KeyFile, OpError> {
        let dir = std::env::temp_dir();
        for _ in 0..8 {
            let path = dir.join(format!("stagecraft-ts-{:016x}", rand::random::<u64>()));
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match opened {
                Ok(mut f) => {
                    let file = KeyFile(path);
                    f.write_all(value.as_bytes()).map_err(|e| {
                        OpError::io(format!("tailscale.up: writing the auth key file: {e}"))
                    })?;
                    return Ok(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(OpError::io(format!(
                        "tailscale.up: cannot create the auth key file in {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
        Err(OpError::io(
            "tailscale.up: cannot create a unique auth key file",
        ))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `tailscale status --json`, parsed.
/// The address of a tailnet node, for other modules (inventory hosts given by Tailscale name).
/// Needs the `tailscale` capability.
pub(crate) async fn resolve(ctx: &RunCtx, op: &str, name: &str) -> Result<String, OpError> {
    ctx.require(op, &Request::Plain("tailscale"), "tailscale")?;
    let raw = status_json(ctx, op).await?;
    let ip = find_ip(&raw, name).map_err(|e| OpError {
        message: e.message.replacen("tailscale.ip:", &format!("{op}:"), 1),
        ..e
    })?;
    ip.as_str().map(str::to_string).ok_or_else(|| {
        OpError::new(
            TAILSCALE_ERROR,
            format!("{op}: tailscale node {name} has no address"),
        )
    })
}

async fn status_json(ctx: &RunCtx, op: &str) -> Result<Json, OpError> {
    let args = ["status".to_string(), "--json".to_string()];
    let out = run_cli(ctx, op, &args, CLI_TIMEOUT).await?;
    serde_json::from_str(&out).map_err(|e| {
        OpError::new(
            TAILSCALE_ERROR,
            format!("{op}: `tailscale status --json` printed something that is not JSON: {e}"),
        )
        .hint("is tailscale.cli in stagecraft.yml the Tailscale CLI?")
    })
}

/// The CLI to run: `tailscale.cli` from the config, else `tailscale` on PATH.
fn resolve_cli(ctx: &RunCtx, op: &str) -> Result<PathBuf, OpError> {
    let configured = ctx.project.config.tailscale.cli.as_deref();
    let name = configured.unwrap_or("tailscale");
    let found = if name.contains('/') {
        let p = Path::new(name);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            ctx.project.root.join(p)
        };
        p.is_file().then_some(p)
    } else {
        resolve_on_path(name, ctx.grants.path_env())
    };
    found.ok_or_else(|| {
        let message = match configured {
            Some(c) => format!(
                "{op}: the Tailscale CLI '{c}' (tailscale.cli in stagecraft.yml) was not found"
            ),
            None => format!("{op}: the Tailscale CLI 'tailscale' was not found on PATH"),
        };
        OpError::new(kinds::NOT_FOUND, message).hint(CONFIG_HINT)
    })
}

fn command(ctx: &RunCtx, op: &str, args: &[String]) -> Result<tokio::process::Command, OpError> {
    let program = resolve_cli(ctx, op)?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args)
        .current_dir(&ctx.project.root)
        .env_clear()
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let extra = &ctx.project.config.tailscale.env;
    for k in PASS_ENV
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    Ok(cmd)
}

async fn run_cli(
    ctx: &RunCtx,
    op: &str,
    args: &[String],
    limit: Duration,
) -> Result<String, OpError> {
    match tokio::time::timeout(limit, run_cli_unbounded(ctx, op, args)).await {
        Ok(r) => r,
        Err(_) => Err(OpError::new(
            kinds::TIMEOUT,
            format!(
                "{op}: tailscale {} did not finish within {}s and was killed",
                args[0],
                limit.as_secs_f64()
            ),
        )
        .hint("is tailscaled running and reachable?")),
    }
}

/// Run the CLI to completion; its stdout on success, `tailscale_error` with its (scrubbed)
/// stderr otherwise.
async fn run_cli_unbounded(ctx: &RunCtx, op: &str, args: &[String]) -> Result<String, OpError> {
    let mut cmd = command(ctx, op, args)?;
    let out = cmd
        .output()
        .await
        .map_err(|e| OpError::io(format!("{op}: cannot run the Tailscale CLI: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = ctx.secrets.scrubber.scrub(stderr.trim()).into_owned();
    let code = out
        .status
        .code()
        .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
    let detail = if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    };
    Err(OpError::new(
        TAILSCALE_ERROR,
        format!("{op}: tailscale {} failed ({code}){detail}", args[0]),
    )
    .hint(hint_for(&stderr)))
}

fn hint_for(stderr: &str) -> &'static str {
    let s = stderr.to_ascii_lowercase();
    if s.contains("doesn't appear to be running") || s.contains("failed to connect") {
        "is tailscaled running? (e.g. `systemctl start tailscaled`)"
    } else if s.contains("invalid key") || (s.contains("auth") && s.contains("key")) {
        "check the auth key: it may be expired, used up or revoked"
    } else if s.contains("requires mentioning all") {
        "pass reset = true, or mention every non-default setting"
    } else if s.contains("access denied") || s.contains("permission denied") {
        "this needs operator rights: run `sudo tailscale set --operator=$USER` once"
    } else {
        "see the CLI's message above"
    }
}

/// One node of `status --json`, with the fields scripts use.
struct Node {
    name: String,
    dns_name: String,
    host_name: String,
    ips: Vec<String>,
    json: Json,
}

fn str_field<'a>(v: &'a Json, k: &str) -> &'a str {
    v.get(k).and_then(Json::as_str).unwrap_or("")
}

fn strings(v: &Json, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A `PeerStatus` of `tailscale status --json` as a script sees it.
fn node(v: &Json, peer: bool) -> Node {
    let dns_name = str_field(v, "DNSName").trim_end_matches('.').to_string();
    let host_name = str_field(v, "HostName").to_string();
    let name = match dns_name.split('.').next() {
        Some(first) if !first.is_empty() => first.to_string(),
        _ => host_name.clone(),
    };
    let ips = strings(v, "TailscaleIPs");
    let mut json = json!({
        "name": name,
        "dns_name": dns_name,
        "host_name": host_name,
        "ips": ips,
        "online": v.get("Online").and_then(Json::as_bool).unwrap_or(false),
        "tags": strings(v, "Tags"),
        "os": str_field(v, "OS"),
    });
    if peer {
        // Go's zero time means "never" (and is what an online peer usually reports).
        let seen = str_field(v, "LastSeen");
        if !seen.is_empty() && !seen.starts_with("0001-01-01") {
            json["last_seen"] = json!(seen);
        }
    }
    Node {
        name,
        dns_name,
        host_name,
        ips,
        json,
    }
}

/// `self` first, then the peers sorted by name.
fn nodes(raw: &Json) -> (Option<Node>, Vec<Node>) {
    let me = raw
        .get("Self")
        .filter(|s| s.is_object())
        .map(|s| node(s, false));
    let mut peers: Vec<Node> = raw
        .get("Peer")
        .and_then(Json::as_object)
        .map(|m| m.values().map(|p| node(p, true)).collect())
        .unwrap_or_default();
    peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.dns_name.cmp(&b.dns_name)));
    (me, peers)
}

fn clean_status(raw: &Json) -> Json {
    let (me, peers) = nodes(raw);
    let current = raw.get("CurrentTailnet");
    let suffix = current
        .and_then(|c| c.get("MagicDNSSuffix"))
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| raw.get("MagicDNSSuffix").and_then(Json::as_str))
        .filter(|s| !s.is_empty());
    let mut tailnet = json!({});
    if let Some(n) = current.and_then(|c| c.get("Name")).and_then(Json::as_str) {
        tailnet["name"] = json!(n);
    }
    if let Some(s) = suffix {
        tailnet["magic_dns_suffix"] = json!(s);
    }
    let mut out = json!({
        "peers": peers.into_iter().map(|p| p.json).collect::<Vec<_>>(),
        "tailnet": tailnet,
        "backend_state": str_field(raw, "BackendState"),
    });
    if let Some(me) = me {
        out["self"] = me.json;
    }
    out
}

fn find_ip(raw: &Json, wanted: &str) -> Result<Json, OpError> {
    let (me, peers) = nodes(raw);
    let all: Vec<Node> = me.into_iter().chain(peers).collect();
    let w = wanted.trim_end_matches('.').to_lowercase();
    let hit = all.iter().find(|n| {
        [&n.name, &n.dns_name, &n.host_name]
            .iter()
            .any(|c| !c.is_empty() && c.to_lowercase() == w)
    });
    let Some(n) = hit else {
        let known: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
        return Err(OpError::new(
            kinds::NOT_FOUND,
            format!("tailscale.ip: no node named '{wanted}' in the tailnet"),
        )
        .hint(if known.is_empty() {
            "this node sees no peers: is it logged in (tailscale.status().backend_state)?"
                .to_string()
        } else {
            format!("known: {}", known.join(", "))
        }));
    };
    let v4 = n
        .ips
        .iter()
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    match v4.or(n.ips.first()) {
        Some(ip) => Ok(json!(ip)),
        None => Err(OpError::new(
            kinds::NOT_FOUND,
            format!("tailscale.ip: node '{}' has no Tailscale IP", n.name),
        )
        .hint("is it logged in and not expired?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Json {
        json!({
            "BackendState": "Running",
            "MagicDNSSuffix": "tail1234.ts.net",
            "CurrentTailnet": { "Name": "me@example.com", "MagicDNSSuffix": "tail1234.ts.net", "MagicDNSEnabled": true },
            "Self": { "HostName": "Build-Box", "DNSName": "build.tail1234.ts.net.", "OS": "linux",
                      "TailscaleIPs": ["fd7a:115c:a1e0::1", "100.64.0.1"], "Online": true },
            "Peer": {
                "nodekey:bb": { "HostName": "db", "DNSName": "db.tail1234.ts.net.", "OS": "linux",
                                "TailscaleIPs": ["fd7a:115c:a1e0::3"], "Online": false,
                                "LastSeen": "2024-05-01T10:00:00Z" },
                "nodekey:aa": { "HostName": "web", "DNSName": "web-1.tail1234.ts.net.", "OS": "linux",
                                "TailscaleIPs": ["100.64.0.2"], "Tags": ["tag:web"], "Online": true,
                                "LastSeen": "0001-01-01T00:00:00Z" }
            }
        })
    }

    #[test]
    fn cleans_status() {
        let s = clean_status(&sample());
        assert_eq!(s["self"]["name"], "build");
        assert_eq!(s["self"]["dns_name"], "build.tail1234.ts.net");
        assert_eq!(s["peers"][0]["name"], "db");
        assert_eq!(s["peers"][0]["last_seen"], "2024-05-01T10:00:00Z");
        assert!(s["peers"][1].get("last_seen").is_none());
        assert_eq!(s["peers"][1]["tags"], json!(["tag:web"]));
        assert_eq!(s["tailnet"]["name"], "me@example.com");
        assert_eq!(s["backend_state"], "Running");
    }

    #[test]
    fn ip_prefers_ipv4_and_matches_any_name() {
        let raw = sample();
        assert_eq!(find_ip(&raw, "BUILD").ok(), Some(json!("100.64.0.1")));
        assert_eq!(find_ip(&raw, "build-box").ok(), Some(json!("100.64.0.1")));
        assert_eq!(
            find_ip(&raw, "web-1.tail1234.ts.net.").ok(),
            Some(json!("100.64.0.2"))
        );
        assert_eq!(find_ip(&raw, "db").ok(), Some(json!("fd7a:115c:a1e0::3")));
        let e = find_ip(&raw, "nope").unwrap_err();
        assert_eq!(e.kind, kinds::NOT_FOUND);
        assert_eq!(e.hint.as_deref(), Some("known: build, db, web-1"));
    }
}
