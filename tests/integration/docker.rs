//! Tests: `stagecraft/docker` against the real Docker Engine of the machine. Every test runs Luau
//! through the real `stagecraft run`, then checks the effect with the `docker` CLI and the ledger.
//!
//! Scripts report what they saw as `@label <json>` lines (`emit`), and caught errors as
//! `{kind, message, hint}` (`expect_error`), so assertions can be exact. Everything a test creates
//! carries the [`Cleanup`] owner label or is registered with it (containers, networks, volumes);
//! image tags are registered with [`Tags`]. Names are unique, host ports are picked by Docker (or
//! by the kernel, for the registry), and waiting is polling with a deadline.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{Out, Project};
use crate::images::{
    Cleanup, OWNER_LABEL, WEB, docker, docker_ok, published_port, unique, wait_http, web,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What every script starts with. `emit(label, value)` prints `@label <json>`;
/// `expect_error(label, f, ...)` calls `f`, requires it to raise, and emits the error's parts;
/// `poll(what, f, done)` calls `f` every 0.1 s until `done(result)`, for at most 20 s.
const PRELUDE: &str = r#"
local docker = require("stagecraft/docker")
local json = require("stagecraft/json")
local task = require("stagecraft/task")
local function emit(label, value)
  print("@" .. label .. " " .. json.encode(value))
end
local function expect_error(label, f, ...)
  local ok, err = pcall(f, ...)
  if ok then
    error(label .. ": expected an error, but the call succeeded")
  end
  emit(label, { kind = err.kind, message = err.message or tostring(err), hint = err.hint })
end
local function poll(what, f, done)
  local last
  for _ = 1, 200 do
    last = f()
    if done(last) then
      return last
    end
    task.sleep(0.1)
  end
  error(what .. ": not done after 20 s; last: " .. json.encode(last))
end
"#;

/// The full script: the prelude, `OWNER` (the owner label as a table), `OWNER_FILTER`
/// (`key=value` for label filters), `WEB`, then `vars` as string locals, then `body`.
fn script(c: &Cleanup, vars: &[(&str, &str)], body: &str) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(&format!(
        "local OWNER = {{ [{OWNER_LABEL:?}] = {:?} }}\n",
        c.id()
    ));
    s.push_str(&format!("local OWNER_FILTER = {:?}\n", c.label()));
    s.push_str(&format!("local WEB = {WEB:?}\n"));
    for (k, v) in vars {
        // Rust's debug form of a string is a valid Luau string literal.
        s.push_str(&format!("local {k} = {v:?}\n"));
    }
    s.push_str(body);
    s
}

/// A project whose `stagecraft.yml` grants `docker` and `extra`.
fn project(extra: &[&str]) -> Project {
    let mut yml = String::from("name: docker-tests\npermissions:\n  - docker\n");
    for cap in extra {
        yml.push_str(&format!("  - {cap}\n"));
    }
    Project::new().file("stagecraft.yml", &yml)
}

/// Write `source` to `script.luau` and run it (no extra arguments, no extra environment).
fn run(p: &Project, source: &str) -> Out {
    p.script(source, &[])
}

/// An error a script caught with `expect_error`.
#[derive(Debug)]
struct Caught {
    kind: String,
    message: String,
    hint: Option<String>,
}

/// What a script emitted, with its output for failure messages.
struct Emitted {
    out: Out,
    values: BTreeMap<String, Value>,
}

impl Emitted {
    fn of(out: Out) -> Emitted {
        let mut values = BTreeMap::new();
        for line in out.stdout.lines() {
            let Some(rest) = line.strip_prefix('@') else {
                continue;
            };
            let (label, json) = rest.split_once(' ').unwrap_or((rest, "null"));
            let v = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("@{label}: not JSON ({e}): {json}"));
            values.insert(label.to_string(), v);
        }
        Emitted { out, values }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- exit code: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.out.code, self.out.stdout, self.out.stderr
        )
    }

    fn get(&self, label: &str) -> &Value {
        self.values
            .get(label)
            .unwrap_or_else(|| self.fail(&format!("the script emitted no @{label}")))
    }

    fn str(&self, label: &str, field: &str) -> String {
        let v = &self.get(label)[field];
        v.as_str()
            .unwrap_or_else(|| self.fail(&format!("@{label}.{field} is not a string: {v}")))
            .to_string()
    }

    fn caught(&self, label: &str) -> Caught {
        let v = self.get(label);
        Caught {
            kind: v["kind"].as_str().unwrap_or("(none)").to_string(),
            message: v["message"].as_str().unwrap_or("(none)").to_string(),
            hint: v["hint"].as_str().map(str::to_string),
        }
    }

    /// The caught error `label` has this kind and exactly this message.
    fn error_is(&self, label: &str, kind: &str, message: &str) -> Caught {
        let c = self.caught(label);
        if c.kind != kind || c.message != message {
            self.fail(&format!(
                "@{label}: expected {kind}: {message:?}\n                  got {}: {:?} (hint {:?})",
                c.kind, c.message, c.hint
            ));
        }
        c
    }

    /// The caught error `label` has this kind, and its message starts with `prefix` and contains
    /// `part` (for messages where the engine's wording varies between versions).
    fn error_like(&self, label: &str, kind: &str, prefix: &str, part: &str) -> Caught {
        let c = self.caught(label);
        if c.kind != kind || !c.message.starts_with(prefix) || !c.message.contains(part) {
            self.fail(&format!(
                "@{label}: expected {kind}: {prefix:?}...{part:?}...\n                  got {}: {:?} (hint {:?})",
                c.kind, c.message, c.hint
            ));
        }
        c
    }

    /// The caught error `label` has this kind and its hint contains every one of `parts`.
    fn hint_has(&self, label: &str, parts: &[&str]) -> String {
        let c = self.caught(label);
        let hint = c.hint.clone().unwrap_or_default();
        for part in parts {
            if !hint.contains(part) {
                self.fail(&format!(
                    "@{label}: the hint lacks {part:?}\n--- hint:\n{hint}"
                ));
            }
        }
        hint
    }
}

/// Run a script that must succeed, and collect what it emitted.
fn run_ok(p: &Project, source: &str) -> Emitted {
    Emitted::of(run(p, source).ok())
}

/// One ledger entry.
#[derive(Debug)]
struct Entry {
    kind: String,
    op: String,
    args: Value,
    result: Option<Value>,
    duration_us: i64,
}

/// The ledger's `call` and `call.start` entries whose op starts with `prefix`, in order.
fn ledger(p: &Project, prefix: &str) -> Vec<Entry> {
    let db = p.db();
    let mut q = db
        .prepare(
            "SELECT kind, op, args, result, duration_us FROM entries \
             WHERE kind IN ('call', 'call.start') AND op LIKE ?1 || '%' ORDER BY seq",
        )
        .expect("prepare ledger query");
    let json = |s: Option<String>| s.map(|s| serde_json::from_str(&s).expect("ledger JSON"));
    q.query_map([prefix], |r| {
        Ok(Entry {
            kind: r.get(0)?,
            op: r.get(1)?,
            args: serde_json::from_str(&r.get::<_, String>(2)?).expect("ledger args JSON"),
            result: json(r.get(3)?),
            duration_us: r.get(4)?,
        })
    })
    .expect("query ledger")
    .map(|e| e.expect("ledger row"))
    .collect()
}

/// The finished (`call`) ledger entries of `op` whose args name `name`.
fn calls_named<'a>(entries: &'a [Entry], op: &str, name: &str) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.kind == "call" && e.op == op && e.args["name"] == name)
        .collect()
}

/// The id of the newest run.
fn last_run(p: &Project) -> String {
    let v = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    v["run"]["id"].as_str().expect("run id").to_string()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `secret` (raw, base64, hex) is in none of `outs`, in no file of the ledger or the Stagecraft
/// home, and not in `stagecraft ledger export`.
fn assert_secret_absent(p: &Project, secret: &str, outs: &[&Out]) {
    use base64::Engine as _;
    let forms = [
        secret.to_string(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        hex::encode(secret),
    ];
    let check = |place: &str, hay: &[u8]| {
        for form in &forms {
            if hay.windows(form.len()).any(|w| w == form.as_bytes()) {
                panic!(
                    "the secret ({form:?}) leaked into {place}:\n{}",
                    String::from_utf8_lossy(hay)
                );
            }
        }
    };
    for (i, out) in outs.iter().enumerate() {
        check(&format!("stdout of run {i}"), out.stdout.as_bytes());
        check(&format!("stderr of run {i}"), out.stderr.as_bytes());
    }
    let export = p.run(&["ledger", "export"]).ok();
    assert!(!export.stdout.is_empty(), "empty ledger export");
    check("`ledger export`", export.stdout.as_bytes());
    let mut files = files_under(&p.path(".stagecraft"));
    assert!(
        files.iter().any(|f| f.ends_with("ledger.db")),
        "no ledger in {files:?}"
    );
    files.extend(files_under(p.home()));
    for f in files {
        check(
            &f.display().to_string(),
            &std::fs::read(&f).unwrap_or_default(),
        );
    }
}

/// `docker inspect --format FORMAT NAME`, trimmed.
fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", "--format", format, name])
}

/// `docker inspect --format '{{json FIELD}}' NAME`, parsed.
fn inspect_json(name: &str, field: &str) -> Value {
    let text = inspect(name, &format!("{{{{json {field}}}}}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} {field}: {e}: {text}"))
}

/// The object is gone from the engine (`docker <kind> inspect` fails).
fn assert_gone(kind: &str, name: &str) {
    let out = docker(&[kind, "inspect", name]);
    assert!(
        !out.status.success(),
        "{kind} {name} still exists:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Image tags to remove when dropped ([`Cleanup`] handles containers, networks and volumes).
/// Declare it before the `Cleanup`, so that the containers using the images go first.
#[derive(Default)]
struct Tags(Mutex<Vec<String>>);

impl Tags {
    fn add(&self, tag: &str) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tag.to_string());
        tag.to_string()
    }
}

impl Drop for Tags {
    fn drop(&mut self) {
        let tags = std::mem::take(self.0.get_mut().unwrap_or_else(PoisonError::into_inner));
        for tag in tags {
            // Quietly: this runs in `Drop`, possibly during a panic; a tag that was never made
            // (or was already removed) is fine.
            let _ = Command::new("docker")
                .args(["image", "rm", &tag])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// A tag name no other test uses: `sct-<prefix>-<unique>:<tag>`.
fn unique_tag(prefix: &str, tag: &str) -> String {
    format!("{}:{tag}", unique(&format!("sct-{prefix}")))
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle
// ---------------------------------------------------------------------------------------------

const LIFECYCLE_RUN: &str = r#"
local c = docker.run({
  image = WEB,
  name = NAME,
  env = { VERSION = "v-life-1", GREETING = "hello world" },
  labels = { [OWNER_KEY] = OWNER_ID, ["org.example.role"] = "frontend" },
  network = NET,
  aliases = { "web-alias", "frontend" },
  ports = { "127.0.0.1::8080" },
  hostname = "life-host",
  restart = "on-failure:2",
  stop_timeout = 7,
})
emit("handle", { id = c.id, name = c.name, str = tostring(c) })
emit("health", c:wait_healthy({ timeout = 30 }))
local info = c:inspect()
emit("inspect", {
  labels = info.Config.Labels,
  env = info.Config.Env,
  aliases = info.NetworkSettings.Networks[NET].Aliases,
  bindings = info.HostConfig.PortBindings,
})
"#;

const LIFECYCLE_STOP: &str = r#"
local c = docker.containers.get(NAME)
emit("got", { id = c.id, name = c.name })
emit("stop", c:stop({ timeout = 5 }))
emit("stop_again", c:stop({ timeout = 5 }))
local state = c:inspect().State
emit("stopped", { running = state.Running, code = state.ExitCode })
emit("remove", c:remove())

-- sleep as PID 1 ignores SIGTERM: the engine kills it when the stop timeout runs out.
local stubborn = docker.run({
  image = WEB, name = STUBBORN, labels = OWNER, healthcheck = false, entrypoint = { "sleep", "300" },
})
emit("stubborn_stop", stubborn:stop({ timeout = 1 }))
emit("stubborn_code", stubborn:wait({ timeout = 10 }))

local stale = {
  { "inspect", function() return c:inspect() end },
  { "wait_healthy", function() return c:wait_healthy({ timeout = 1 }) end },
  { "wait", function() return c:wait({ timeout = 1 }) end },
  { "logs", function() return c:logs({ tail = 1 }) end },
  { "exec", function() return c:exec({ "true" }) end },
  { "start", function() return c:start() end },
  { "stop", function() return c:stop() end },
  { "remove", function() return c:remove({ force = true }) end },
  { "connect", function() return c:connect(NET) end },
  { "disconnect", function() return c:disconnect(NET) end },
}
for _, m in ipairs(stale) do
  expect_error("stale." .. m[1], m[2])
end
"#;

#[test]
fn run_publishes_serves_and_stale_handles_say_no_longer_exists() {
    let c = Cleanup::new();
    let _ = web();
    let net = c.network(&unique("sct-dk-life-net"));
    docker_ok(&["network", "create", "--label", &c.label(), &net]);
    let name = c.container(&unique("sct-dk-life"));
    let stubborn = c.container(&unique("sct-dk-stubborn"));
    let (owner_key, owner_id) = c.owner_label();
    let vars = [
        ("NAME", name.as_str()),
        ("NET", net.as_str()),
        ("STUBBORN", stubborn.as_str()),
        ("OWNER_KEY", owner_key.as_str()),
        ("OWNER_ID", owner_id.as_str()),
    ];
    let p = project(&[]);

    let started = run_ok(&p, &script(&c, &vars, LIFECYCLE_RUN));
    let id = started.str("handle", "id");
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(started.str("handle", "name"), name);
    assert_eq!(
        started.str("handle", "str"),
        format!("container {} ({name})", &id[..12])
    );
    assert_eq!(started.get("health")["status"], "healthy");
    let seen = started.get("inspect");
    assert_eq!(seen["labels"]["org.example.role"], "frontend");
    assert_eq!(seen["labels"][OWNER_LABEL], c.id());
    assert!(strings(&seen["env"]).contains(&"VERSION=v-life-1".to_string()));
    for alias in ["web-alias", "frontend"] {
        assert!(
            strings(&seen["aliases"]).contains(&alias.to_string()),
            "{seen}"
        );
    }

    // The engine's view, through the CLI.
    assert_eq!(inspect(&name, "{{.Id}}"), id);
    let labels = inspect_json(&name, ".Config.Labels");
    assert_eq!(labels["org.example.role"], "frontend");
    assert_eq!(labels[OWNER_LABEL], c.id());
    let env = strings(&inspect_json(&name, ".Config.Env"));
    for want in ["VERSION=v-life-1", "GREETING=hello world"] {
        assert!(env.contains(&want.to_string()), "{want} not in {env:?}");
    }
    assert_eq!(inspect(&name, "{{.Config.Hostname}}"), "life-host");
    assert_eq!(inspect(&name, "{{.Config.StopTimeout}}"), "7");
    assert_eq!(
        inspect(
            &name,
            "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}"
        ),
        "on-failure:2"
    );
    let aliases = strings(&inspect_json(
        &name,
        &format!("(index .NetworkSettings.Networks {net:?}).Aliases"),
    ));
    assert!(
        aliases.contains(&"web-alias".to_string()) && aliases.contains(&"frontend".to_string()),
        "{aliases:?}"
    );
    // Published on loopback only, on a port Docker picked.
    let mapping = docker_ok(&["port", &name, "8080/tcp"]);
    assert!(mapping.starts_with("127.0.0.1:"), "{mapping}");
    let port = published_port(&name, "8080/tcp");
    let (status, body) = wait_http(port, "/", Duration::from_secs(20));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "version=v-life-1 host=life-host\n");
    // The alias resolves for another container on the network.
    #[rustfmt::skip]
    let via_alias = docker_ok(&[
        "run", "--rm", "--label", &c.label(), "--network", &net, "--entrypoint", "wget",
        web(), "-q", "-O", "-", "http://web-alias:8080/",
    ]);
    assert_eq!(via_alias, "version=v-life-1 host=life-host");

    let stopped = run_ok(&p, &script(&c, &vars, LIFECYCLE_STOP));
    assert_eq!(stopped.str("got", "id"), id);
    assert_eq!(stopped.str("got", "name"), name);
    assert_eq!(stopped.get("stop")["stopped"], true);
    // Stopping a stopped container is not an error. (Its `stopped` is true as well: bollard
    // returns Ok for the engine's 304, so the module cannot tell.)
    assert!(stopped.get("stop_again").is_object());
    // The web image's PID 1 handles SIGTERM: a clean exit.
    assert_eq!(stopped.get("stopped")["running"], false);
    assert_eq!(stopped.get("stopped")["code"], 0);
    assert_eq!(stopped.get("remove")["removed"], id.as_str());
    assert_gone("container", &name);
    // stop{timeout = 1} reached the engine: the container that ignores SIGTERM was killed
    // after about a second, not after the default 10 s.
    assert_eq!(stopped.get("stubborn_code")["code"], 137);
    let entries = ledger(&p, "docker.container.stop");
    let stubborn_stop = calls_named(&entries, "docker.container.stop", &stubborn);
    assert_eq!(stubborn_stop.len(), 1, "{entries:?}");
    assert_eq!(stubborn_stop[0].args["opts"]["timeout"], 1);
    let took = Duration::from_micros(stubborn_stop[0].duration_us as u64);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "stop{{timeout = 1}} of a container ignoring SIGTERM took {took:?}"
    );
    let web_stop = calls_named(&entries, "docker.container.stop", &name);
    assert!(
        Duration::from_micros(web_stop[0].duration_us as u64) < Duration::from_secs(4),
        "{web_stop:?}"
    );

    // Every method of the handle of a removed container says so, naming it.
    for m in [
        "inspect",
        "wait_healthy",
        "wait",
        "logs",
        "exec",
        "start",
        "stop",
        "remove",
        "connect",
        "disconnect",
    ] {
        stopped.error_is(
            &format!("stale.{m}"),
            "not_found",
            &format!(
                "docker.container.{m}: container {} ({name}) no longer exists (No such container: {id})",
                &id[..12]
            ),
        );
    }

    // Uncaught, the CLI prints the error with the script location and exits 1.
    let out = run(
        &p,
        &script(
            &c,
            &vars,
            "docker.containers.get(NAME)\nprint('unreachable')\n",
        ),
    )
    .code(1)
    .stdout_lacks("unreachable")
    .stderr_has(&format!(
        ": docker.containers.get: No such container: {name}\n"
    ));
    assert!(
        out.stderr.starts_with("error: script.luau:"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Health
// ---------------------------------------------------------------------------------------------

const HEALTH: &str = r#"
local function start(name, extra)
  local o = { image = WEB, name = name, labels = OWNER }
  for k, v in pairs(extra or {}) do o[k] = v end
  return docker.run(o)
end
-- Its first probe runs after 60 s: "starting" for the whole test.
local slow = start(SLOW, { healthcheck = { test = { "CMD", "true" }, interval = 60, start_period = 60 } })
expect_error("timeout", function() return slow:wait_healthy({ timeout = 0.2 }) end)
local ok = start(OK)
local sick = start(SICK, { env = { HEALTHY = "0" } })
local plain = start(PLAIN, { healthcheck = false })
local custom = start(CUSTOM, { healthcheck = { test = { "CMD", "true" }, interval = 0.2, retries = 1 } })
local shell = start(SHELL, { healthcheck = { test = "test -s /www/index.html", interval = 0.3, timeout = 2 } })
local exits = start(EXITS, { entrypoint = { "sh", "-c", "echo bye-from-exit; exit 3" } })
emit("ids", { ok = ok.id, sick = sick.id, slow = slow.id, exits = exits.id })

emit("ok", ok:wait_healthy({ timeout = 30 }))
emit("plain", plain:wait_healthy({ timeout = 30 }))
emit("custom", custom:wait_healthy({ timeout = 30 }))
emit("shell", shell:wait_healthy({ timeout = 30 }))
expect_error("sick", function() return sick:wait_healthy({ timeout = 30 }) end)
expect_error("exits", function() return exits:wait_healthy({ timeout = 30 }) end)
emit("exit_code", exits:wait({ timeout = 10 }))
expect_error("zero", function() return ok:wait_healthy({ timeout = 0 }) end)
"#;

#[test]
fn wait_healthy_reports_healthy_running_unhealthy_timeouts_and_exits() {
    let c = Cleanup::new();
    let _ = web();
    let names: Vec<(&str, String)> = ["OK", "SICK", "SLOW", "PLAIN", "CUSTOM", "SHELL", "EXITS"]
        .into_iter()
        .map(|k| (k, c.container(&unique(&format!("sct-dk-health-{k}")))))
        .collect();
    let vars: Vec<(&str, &str)> = names.iter().map(|(k, n)| (*k, n.as_str())).collect();
    let name = |k: &str| names.iter().find(|(x, _)| *x == k).unwrap().1.clone();
    let p = project(&[]);

    let t0 = Instant::now();
    let e = run_ok(&p, &script(&c, &vars, HEALTH));
    eprintln!("health script took {:?}", t0.elapsed());
    let short = |k: &str| e.str("ids", k)[..12].to_string();

    assert_eq!(e.get("ok")["status"], "healthy");
    // No health check: running is all there is to wait for.
    assert_eq!(e.get("plain")["status"], "running");
    assert_eq!(
        strings(&inspect_json(&name("PLAIN"), ".Config.Healthcheck.Test")),
        ["NONE"]
    );
    assert_eq!(e.get("custom")["status"], "healthy");
    let hc = inspect_json(&name("CUSTOM"), ".Config.Healthcheck");
    assert_eq!(hc["Test"], serde_json::json!(["CMD", "true"]));
    assert_eq!(hc["Interval"], 200_000_000);
    assert_eq!(hc["Retries"], 1);
    assert_eq!(e.get("shell")["status"], "healthy");
    let hc = inspect_json(&name("SHELL"), ".Config.Healthcheck");
    assert_eq!(
        hc["Test"],
        serde_json::json!(["CMD-SHELL", "test -s /www/index.html"])
    );
    assert_eq!(hc["Timeout"], 2_000_000_000u64);

    let timeout = e.caught("timeout");
    assert_eq!(timeout.kind, "unhealthy");
    assert_eq!(
        timeout.message,
        format!(
            "docker.container.wait_healthy: container {} ({}) did not become healthy within 0.2s (status: starting)",
            short("slow"),
            name("SLOW")
        )
    );

    e.error_is(
        "sick",
        "unhealthy",
        &format!(
            "docker.container.wait_healthy: container {} ({}) is unhealthy",
            short("sick"),
            name("SICK")
        ),
    );
    // The hint carries the health log: the probe's exit code and what wget said.
    let hint = e.hint_has("sick", &["health checks (latest last):\n  exit 1: ", "404"]);
    assert_eq!(
        inspect(&name("SICK"), "{{.State.Health.Status}}"),
        "unhealthy"
    );
    eprintln!("unhealthy hint:\n{hint}");

    e.error_is(
        "exits",
        "unhealthy",
        &format!(
            "docker.container.wait_healthy: container {} ({}) is not running (exit code 3) and never became healthy",
            short("exits"),
            name("EXITS")
        ),
    );
    e.hint_has("exits", &["last log lines:\n  bye-from-exit"]);
    assert_eq!(e.get("exit_code")["code"], 3);
    assert_eq!(inspect(&name("EXITS"), "{{.State.ExitCode}}"), "3");

    e.error_is(
        "zero",
        "invalid_argument",
        "docker.container.wait_healthy: timeout must be a positive number of seconds",
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Logs, and a secret passed in env
// ---------------------------------------------------------------------------------------------

const LOG_SECRET: &str = "dk-Logs-Secret-7f3a9c41";

const LOGS: &str = r#"
local token = require("stagecraft/secrets").get("DOCKER_LOG_TOKEN")
local c = docker.run({
  image = WEB, name = NAME, labels = OWNER, healthcheck = false,
  env = { TOKEN = token },
  entrypoint = { "sh", "-c", "echo one; echo two >&2; echo token=$TOKEN; sleep 0.5; echo three; exec sleep 300" },
})
local all = poll("logs", function() return c:logs().output end, function(o) return o:find("three") end)
emit("all", all)
emit("tail1", c:logs({ tail = 1 }))
emit("stream", c:logs({ stream = true }))
emit("follow", c:logs({ follow = true, timeout = 1 }))
emit("cut", c:logs({ max_output = 4 }))
emit("env", c:inspect().Config.Env)
local quick = docker.run({
  image = WEB, name = QUICK, labels = OWNER, healthcheck = false,
  entrypoint = { "sh", "-c", "echo first; echo last" },
})
emit("follow_exit", quick:logs({ follow = true }))
"#;

#[test]
fn logs_tail_stream_follow_and_secrets_stay_scrubbed() {
    let c = Cleanup::new();
    let _ = web();
    let name = c.container(&unique("sct-dk-logs"));
    let quick = c.container(&unique("sct-dk-logs-quick"));
    let p = project(&["secrets:DOCKER_LOG_TOKEN"])
        .file(".env", &format!("DOCKER_LOG_TOKEN={LOG_SECRET}\n"));
    let out = run(
        &p,
        &script(
            &c,
            &[("NAME", name.as_str()), ("QUICK", quick.as_str())],
            LOGS,
        ),
    )
    .ok();
    let e = Emitted::of(out.clone());

    let all = e.get("all").as_str().unwrap_or_default().to_string();
    for line in ["one\n", "two\n", "token=[REDACTED]\n", "three\n"] {
        assert!(all.contains(line), "{line:?} not in the logs {all:?}");
    }
    assert!(all.ends_with("three\n"), "{all:?}");
    assert_eq!(e.get("tail1")["output"], "three\n");
    // stream = true shows each line on stderr, prefixed with the container name, scrubbed.
    for line in ["one", "two", "token=[REDACTED]", "three"] {
        let want = format!("{name} | {line}\n");
        assert!(
            out.stderr.matches(&want).count() >= 2,
            "{want:?} not shown by both stream and follow:\n{}",
            out.stderr
        );
    }
    assert_eq!(e.get("stream")["output"].as_str(), Some(all.as_str()));
    // follow on a running container returns at its timeout, with everything so far.
    assert_eq!(e.get("follow")["output"].as_str(), Some(all.as_str()));
    let follow = ledger(&p, "docker.container.logs")
        .into_iter()
        .filter(|x| x.kind == "call" && x.args["opts"]["follow"] == true && x.args["name"] == name)
        .map(|x| Duration::from_micros(x.duration_us as u64))
        .collect::<Vec<_>>();
    assert_eq!(follow.len(), 1);
    assert!(
        follow[0] >= Duration::from_millis(900) && follow[0] < Duration::from_secs(8),
        "follow with timeout = 1 took {:?}",
        follow[0]
    );
    // follow on a container that exits returns by itself.
    assert_eq!(e.get("follow_exit")["output"], "first\nlast\n");
    // max_output cuts and says so.
    assert_eq!(e.get("cut")["truncated"], true);
    assert_eq!(e.get("cut")["output"].as_str().map(str::len), Some(4));

    // The container really got the value; the script, the terminal and the ledger never see it.
    assert!(strings(e.get("env")).contains(&"TOKEN=[REDACTED]".to_string()));
    let env = strings(&inspect_json(&name, ".Config.Env"));
    assert!(
        env.contains(&format!("TOKEN={LOG_SECRET}")),
        "the container did not get the secret: {env:?}"
    );
    let logs = docker(&["logs", &name]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains(&format!("token={LOG_SECRET}\n")));
    let run_entry =
        calls_named(&ledger(&p, "docker.run"), "docker.run", &name)[0].args["env"]["TOKEN"].clone();
    assert_eq!(run_entry["$secret"], "DOCKER_LOG_TOKEN", "{run_entry}");
    assert!(
        run_entry["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("hmac-sha256:")),
        "{run_entry}"
    );
    assert_secret_absent(&p, LOG_SECRET, &[&out]);
}

// ---------------------------------------------------------------------------------------------
// 4. Exec
// ---------------------------------------------------------------------------------------------

const EXEC_SECRET: &str = "dk-Exec-Secret-0b1e55";

const EXEC: &str = r#"
local token = require("stagecraft/secrets").get("DOCKER_EXEC_TOKEN")
local c = docker.run({ image = WEB, name = NAME, labels = OWNER, healthcheck = false })
emit("basic", c:exec({ "sh", "-c", "echo out; echo err >&2; exit 3" }))
emit("env", c:exec(
  { "sh", "-c", 'echo "$PLAIN"; printf %s "$TOKEN" | sha256sum; echo "token=$TOKEN"' },
  { env = { PLAIN = "plain value", TOKEN = token } }
))
emit("workdir", c:exec({ "pwd" }, { workdir = "/www" }))
emit("user", c:exec({ "sh", "-c", "id -u; id -g" }, { user = "1234:4321" }))
emit("root", c:exec({ "id", "-u" }))
expect_error("timeout", function() return c:exec({ "sleep", "30" }, { timeout = 0.5 }) end)
emit("after_timeout", c:exec({ "echo", "still usable" }))
emit("cut", c:exec(
  { "sh", "-c", "i=0; while [ $i -lt 500 ]; do echo 0123456789; i=$((i+1)); done" },
  { max_output = 10 }
))
emit("missing", c:exec({ "no-such-program" }))
-- An empty table is an empty object to the module, not an empty list.
expect_error("empty", function() return c:exec({}) end)
expect_error("not_list", function() return c:exec("echo hi") end)
expect_error("bad_timeout", function() return c:exec({ "true" }, { timeout = -1 }) end)
expect_error("unknown", function() return c:exec({ "true" }, { workdri = "/" }) end)
"#;

#[test]
fn exec_returns_code_and_output_with_env_secret_workdir_user_and_timeout() {
    let c = Cleanup::new();
    let _ = web();
    let name = c.container(&unique("sct-dk-exec"));
    let p = project(&["secrets:DOCKER_EXEC_TOKEN"])
        .file(".env", &format!("DOCKER_EXEC_TOKEN={EXEC_SECRET}\n"));
    let t0 = Instant::now();
    let out = run(&p, &script(&c, &[("NAME", name.as_str())], EXEC)).ok();
    let took = t0.elapsed();
    let e = Emitted::of(out.clone());

    assert_eq!(
        e.get("basic"),
        &serde_json::json!({ "code": 3, "stdout": "out\n", "stderr": "err\n" })
    );
    // The secret handle was resolved in the container (its hash matches), and the output the
    // script got back is scrubbed.
    assert_eq!(
        e.get("env")["stdout"],
        format!(
            "plain value\n{}  -\ntoken=[REDACTED]\n",
            sha256_hex(EXEC_SECRET.as_bytes())
        )
    );
    assert_eq!(e.get("env")["code"], 0);
    assert_eq!(e.get("workdir")["stdout"], "/www\n");
    assert_eq!(e.get("user")["stdout"], "1234\n4321\n");
    assert_eq!(e.get("root")["stdout"], "0\n");
    e.error_is(
        "timeout",
        "timeout",
        "docker.container.exec: timed out after 500ms",
    );
    assert!(took < Duration::from_secs(25), "the run took {took:?}");
    assert_eq!(e.get("after_timeout")["stdout"], "still usable\n");
    assert_eq!(e.get("cut")["truncated"], true);
    assert_eq!(e.get("cut")["stdout"], "0123456789");
    assert_eq!(e.get("cut")["code"], 0);
    let missing = e.get("missing");
    assert_ne!(missing["code"], 0, "{missing}");
    assert!(missing.to_string().contains("no-such-program"), "{missing}");
    e.error_is(
        "empty",
        "invalid_argument",
        "docker.container.exec: argv is empty",
    );
    e.error_is(
        "not_list",
        "invalid_argument",
        "docker.container.exec: argv must be a list of strings, e.g. {\"cat\", \"/etc/hostname\"}",
    );
    e.error_is(
        "bad_timeout",
        "invalid_argument",
        "docker.container.exec: timeout must be a positive number of seconds",
    );
    e.error_is(
        "unknown",
        "invalid_argument",
        "docker.container.exec: unknown field 'workdri' (did you mean 'workdir'?)",
    );

    let execs = ledger(&p, "docker.container.exec");
    let with_env: Vec<_> = execs
        .iter()
        .filter(|x| x.kind == "call" && !x.args["opts"]["env"].is_null())
        .collect();
    assert_eq!(with_env.len(), 1, "{execs:?}");
    assert_eq!(with_env[0].args["opts"]["env"]["PLAIN"], "plain value");
    assert_eq!(
        with_env[0].args["opts"]["env"]["TOKEN"]["$secret"],
        "DOCKER_EXEC_TOKEN"
    );
    assert_secret_absent(&p, EXEC_SECRET, &[&out]);
}

// ---------------------------------------------------------------------------------------------
// 5. Networks and volumes
// ---------------------------------------------------------------------------------------------

const NETVOL_CREATE: &str = r#"
emit("net", docker.networks.create({ name = NET, labels = OWNER, internal = true, attachable = true }))
emit("net2", docker.networks.create({ name = NET2, labels = OWNER }))
local ni = docker.networks.inspect(NET)
emit("net_inspect", { name = ni.Name, driver = ni.Driver, internal = ni.Internal, attachable = ni.Attachable, labels = ni.Labels })
local names = {}
for _, n in ipairs(docker.networks.list({ filters = { label = { OWNER_FILTER } } })) do
  table.insert(names, n.Name)
end
table.sort(names)
emit("net_list", names)

emit("vol", docker.volumes.create({ name = VOL, labels = OWNER }))
local vi = docker.volumes.inspect(VOL)
emit("vol_inspect", { name = vi.Name, driver = vi.Driver, labels = vi.Labels })
local vols = {}
for _, v in ipairs(docker.volumes.list({ filters = { label = OWNER_FILTER } })) do
  table.insert(vols, v.Name)
end
emit("vol_list", vols)

local a = docker.run({
  image = WEB, name = A, labels = OWNER, healthcheck = false, network = NET,
  volumes = { VOL .. ":/data", "./hostdir:/host:ro", { type = "tmpfs", target = "/scratch" } },
})
local b = docker.run({
  image = WEB, name = B, labels = OWNER, healthcheck = false,
  networks = { [NET] = { aliases = { "bee" } } },
  volumes = { { type = "volume", source = VOL, target = "/shared", read_only = true } },
})
emit("write", a:exec({ "sh", "-c", "echo shared-data > /data/f" }))
emit("read", b:exec({ "cat", "/shared/f" }))
emit("ro_write", b:exec({ "sh", "-c", "echo x > /shared/g" }))
emit("bind", a:exec({ "cat", "/host/hello.txt" }))
emit("tmpfs", a:exec({ "sh", "-c", "grep -c ' /scratch tmpfs ' /proc/mounts" }))
emit("dns", poll("wget bee", function()
  return a:exec({ "wget", "-q", "-O", "-", "http://bee:8080/" })
end, function(r) return r.code == 0 end))
emit("connect", b:connect(NET2, { aliases = { "bee2" } }))
"#;

const NETVOL_REMOVE: &str = r#"
local b = docker.containers.get(B)
emit("disconnect", b:disconnect(NET2))
local nets = {}
for n in pairs(b:inspect().NetworkSettings.Networks) do table.insert(nets, n) end
emit("b_nets", nets)
expect_error("net_in_use", docker.networks.remove, NET)
expect_error("vol_in_use", docker.volumes.remove, VOL)
docker.containers.get(A):remove({ force = true })
b:remove({ force = true })
emit("net_rm", docker.networks.remove(NET))
emit("net2_rm", docker.networks.remove(NET2))
emit("vol_rm", docker.volumes.remove(VOL))
emit("left", {
  networks = #docker.networks.list({ filters = { label = { OWNER_FILTER } } }),
  volumes = #docker.volumes.list({ filters = { label = { OWNER_FILTER } } }),
})
expect_error("net_gone", docker.networks.inspect, NET)
expect_error("vol_gone", docker.volumes.inspect, VOL)
expect_error("no_name", docker.networks.create, { labels = OWNER })
expect_error("typo", docker.volumes.create, { name = VOL, lables = OWNER })
"#;

#[test]
fn networks_and_volumes_create_list_share_and_refuse_removal_in_use() {
    let c = Cleanup::new();
    let _ = web();
    let net = c.network(&unique("sct-dk-net"));
    let net2 = c.network(&unique("sct-dk-net2"));
    let vol = c.volume(&unique("sct-dk-vol"));
    let a = c.container(&unique("sct-dk-vol-a"));
    let b = c.container(&unique("sct-dk-vol-b"));
    let vars = [
        ("NET", net.as_str()),
        ("NET2", net2.as_str()),
        ("VOL", vol.as_str()),
        ("A", a.as_str()),
        ("B", b.as_str()),
    ];
    let p = project(&[]).file("hostdir/hello.txt", "hello from the project\n");

    let e = run_ok(&p, &script(&c, &vars, NETVOL_CREATE));
    let net_id = e.str("net", "id");
    assert_eq!(e.str("net", "name"), net);
    assert_eq!(
        e.get("net_inspect"),
        &serde_json::json!({
            "name": net, "driver": "bridge", "internal": true, "attachable": true,
            "labels": { OWNER_LABEL: c.id() },
        })
    );
    let mut both = vec![net.clone(), net2.clone()];
    both.sort();
    assert_eq!(strings(e.get("net_list")), both);
    assert_eq!(e.str("vol", "Name"), vol);
    assert_eq!(
        e.get("vol_inspect"),
        &serde_json::json!({ "name": vol, "driver": "local", "labels": { OWNER_LABEL: c.id() } })
    );
    assert_eq!(strings(e.get("vol_list")), [vol.as_str()]);
    assert_eq!(e.get("write")["code"], 0);
    assert_eq!(e.get("read")["stdout"], "shared-data\n");
    let ro = e.get("ro_write");
    assert_ne!(ro["code"], 0, "{ro}");
    assert!(
        ro["stderr"]
            .as_str()
            .is_some_and(|s| s.contains("Read-only file system")),
        "{ro}"
    );
    assert_eq!(e.get("bind")["stdout"], "hello from the project\n");
    assert_eq!(e.get("tmpfs")["stdout"], "1\n");
    assert!(
        e.get("dns")["stdout"]
            .as_str()
            .is_some_and(|s| s.starts_with("version=dev host=")),
        "{}",
        e.get("dns")
    );

    // The engine's view.
    assert_eq!(inspect(&net, "{{.Id}}"), net_id);
    assert_eq!(inspect(&net, "{{.Internal}} {{.Attachable}}"), "true true");
    assert_eq!(
        docker_ok(&["network", "inspect", "--format", "{{json .Labels}}", &net]),
        format!("{{\"{OWNER_LABEL}\":\"{}\"}}", c.id())
    );
    assert_eq!(
        docker_ok(&["volume", "inspect", "--format", "{{json .Labels}}", &vol]),
        format!("{{\"{OWNER_LABEL}\":\"{}\"}}", c.id())
    );
    let mounts = inspect_json(&b, ".Mounts");
    assert_eq!(mounts[0]["Name"], vol.as_str(), "{mounts}");
    assert_eq!(mounts[0]["RW"], false, "{mounts}");
    let a_mounts = inspect_json(&a, ".HostConfig.Mounts");
    assert_eq!(
        a_mounts[1]["Source"],
        p.path("hostdir").to_string_lossy().as_ref(),
        "a relative bind source is resolved against the project: {a_mounts}"
    );
    #[rustfmt::skip]
    let data = docker_ok(&[
        "run", "--rm", "--label", &c.label(), "-v", &format!("{vol}:/v:ro"), "--entrypoint", "cat",
        web(), "/v/f",
    ]);
    assert_eq!(data, "shared-data");
    let b_aliases = strings(&inspect_json(
        &b,
        &format!("(index .NetworkSettings.Networks {net2:?}).Aliases"),
    ));
    assert!(b_aliases.contains(&"bee2".to_string()), "{b_aliases:?}");

    let e = run_ok(&p, &script(&c, &vars, NETVOL_REMOVE));
    assert_eq!(strings(e.get("b_nets")), [net.as_str()]);
    // Docker 20.10 answers 403 for a network with endpoints: a conflict, in the engine's words.
    e.error_is(
        "net_in_use",
        "conflict",
        &format!(
            "docker.networks.remove: error while removing network: network {net} id {net_id} has active endpoints"
        ),
    );
    let vol_in_use = e.caught("vol_in_use");
    assert_eq!(vol_in_use.kind, "conflict", "{vol_in_use:?}");
    assert!(
        vol_in_use.message.starts_with(&format!(
            "docker.volumes.remove: remove {vol}: volume is in use - ["
        )),
        "{vol_in_use:?}"
    );
    assert_eq!(e.get("net_rm")["removed"], net.as_str());
    assert_eq!(e.get("vol_rm")["removed"], vol.as_str());
    assert_eq!(
        e.get("left"),
        &serde_json::json!({ "networks": 0, "volumes": 0 })
    );
    e.error_is(
        "net_gone",
        "not_found",
        &format!("docker.networks.inspect: network {net} not found"),
    );
    e.error_is(
        "vol_gone",
        "not_found",
        &format!("docker.volumes.inspect: get {vol}: no such volume"),
    );
    e.error_is(
        "no_name",
        "invalid_argument",
        "docker.networks.create: name is required",
    );
    e.error_is(
        "typo",
        "invalid_argument",
        "docker.volumes.create: unknown field 'lables' (did you mean 'labels'?)",
    );
    for (kind, name) in [
        ("network", &net),
        ("network", &net2),
        ("volume", &vol),
        ("container", &a),
        ("container", &b),
    ] {
        assert_gone(kind, name);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Build
// ---------------------------------------------------------------------------------------------

const DOCKERFILE: &str = "FROM stagecraft-test/web:1
ARG GREETING=unset
RUN echo \"$GREETING\" > /greeting
COPY . /app/
";

const DOCKERIGNORE: &str = "# what the image must not get
secret.txt
*.tmp
logs
vendor
!vendor/keep
";

const BUILD: &str = r#"
emit("build", docker.build({
  context = "app", tag = { T1, T2 }, build_args = { GREETING = "hi-from-build-arg" }, labels = OWNER,
}))
"#;

const REBUILD: &str = r#"
emit("build", docker.images.build({
  context = "app", tag = T1, quiet = true, build_args = { GREETING = "hi-from-build-arg" }, labels = OWNER,
}))
"#;

const BUILD_ERRORS: &str = r#"
expect_error("parse", docker.build, { context = "bad", tag = T3 })
expect_error("step", docker.build, { context = "failing", tag = T3 })
expect_error("no_dockerfile", docker.build, { context = "empty", tag = T3 })
expect_error("other_dockerfile", docker.build, { context = "app", dockerfile = "Missing.Dockerfile", tag = T3 })
expect_error("outside", docker.build, { context = "../elsewhere", tag = T3 })
expect_error("typo", docker.build, { context = "app", tags = T3 })
"#;

/// The `docker.images.build` call of the newest run.
fn last_build(p: &Project) -> Entry {
    let run = last_run(p);
    let db = p.db();
    let (args, result): (String, Option<String>) = db
        .query_row(
            "SELECT args, result FROM entries WHERE run_id = ?1 AND kind = 'call' \
             AND op = 'docker.images.build'",
            [&run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the run recorded one docker.images.build call");
    Entry {
        kind: "call".into(),
        op: "docker.images.build".into(),
        args: serde_json::from_str(&args).expect("args JSON"),
        result: result.map(|r| serde_json::from_str(&r).expect("result JSON")),
        duration_us: 0,
    }
}

#[test]
fn build_honours_dockerignore_tags_and_records_a_content_digest() {
    let tags = Tags::default();
    let c = Cleanup::new();
    let _ = web();
    let t1 = tags.add(&unique_tag("build", "1"));
    let t2 = tags.add(&unique_tag("build", "latest"));
    let t3 = tags.add(&unique_tag("build-bad", "1"));
    let vars = [
        ("T1", t1.as_str()),
        ("T2", t2.as_str()),
        ("T3", t3.as_str()),
    ];
    let p = project(&[])
        .file("app/Dockerfile", DOCKERFILE)
        .file("app/.dockerignore", DOCKERIGNORE)
        .file("app/keep.txt", "keep me\n")
        .file("app/secret.txt", "do not ship\n")
        .file("app/a.tmp", "temporary\n")
        .file("app/logs/x.log", "log line\n")
        .file("app/vendor/drop.txt", "dropped\n")
        .file("app/vendor/keep/a.txt", "re-included\n")
        .file("app/sub/b.txt", "nested\n")
        .file("app/sub/c.tmp", "*.tmp is not recursive\n")
        .file(
            "bad/Dockerfile",
            "FROM stagecraft-test/web:1\nNOTACOMMAND foo\n",
        )
        .file(
            "failing/Dockerfile",
            "FROM stagecraft-test/web:1\nRUN echo step-output-marker; exit 7\n",
        )
        .file("empty/README", "no Dockerfile here\n");

    let out = run(&p, &script(&c, &vars, BUILD)).ok();
    let e = Emitted::of(out.clone());
    let id = e.str("build", "id");
    assert!(is_digest(&id), "{id}");
    assert_eq!(strings(&e.get("build")["tags"]), [t1.clone(), t2.clone()]);
    // The build output is shown on stderr.
    assert!(
        out.stderr
            .contains("Step 1/5 : FROM stagecraft-test/web:1\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Step 4/5 : COPY . /app/\n"),
        "{}",
        out.stderr
    );
    // Both tags name the image that was built.
    for t in [&t1, &t2] {
        assert_eq!(
            docker_ok(&["image", "inspect", "--format", "{{.Id}}", t]),
            id
        );
    }
    assert_eq!(
        docker_ok(&[
            "image",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels {OWNER_LABEL:?}}}}}"),
            &t1
        ]),
        c.id()
    );
    // What the image holds: .dockerignore excluded a file, a pattern, a folder, and `!`
    // re-included a folder inside an excluded one.
    #[rustfmt::skip]
    let listed = docker_ok(&[
        "run", "--rm", "--label", &c.label(), "--entrypoint", "sh", &t1, "-c",
        "cd /app && find . -type f | sort && cat /greeting",
    ]);
    assert_eq!(
        listed,
        "./.dockerignore\n./Dockerfile\n./keep.txt\n./sub/b.txt\n./sub/c.tmp\n\
         ./vendor/keep/a.txt\nhi-from-build-arg"
    );

    // The ledger records the context by digest.
    let first = last_build(&p);
    let digest = first.args["context_digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(is_digest(&digest), "{:?}", first.args);
    assert_eq!(e.str("build", "context_digest"), digest);
    assert_eq!(first.args["context_files"], 6, "{:?}", first.args);
    let sent_bytes: usize = [
        DOCKERIGNORE,
        DOCKERFILE,
        "keep me\n",
        "nested\n",
        "*.tmp is not recursive\n",
        "re-included\n",
    ]
    .iter()
    .map(|s| s.len())
    .sum();
    assert_eq!(first.args["context_bytes"], sent_bytes, "{:?}", first.args);
    assert_eq!(
        first.args["opts"]["build_args"]["GREETING"],
        "hi-from-build-arg"
    );
    assert_eq!(first.result.as_ref().unwrap()["id"], id.as_str());

    // Only mtimes change, and an ignored file's content: the same digest, no output shown.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for f in ["app/keep.txt", "app/sub/b.txt", "app/Dockerfile"] {
        std::fs::File::options()
            .write(true)
            .open(p.path(f))
            .and_then(|h| h.set_modified(old))
            .expect("set mtime");
    }
    p.write("app/secret.txt", "still not shipped, changed\n");
    let quiet = run(&p, &script(&c, &vars, REBUILD))
        .ok()
        .stderr_lacks("Step 1/");
    let second = last_build(&p);
    assert_eq!(second.args["context_digest"], digest.as_str());
    assert_eq!(Emitted::of(quiet).str("build", "id"), id);

    // A sent file's content changes: another digest, another image.
    p.write("app/sub/b.txt", "nested, changed\n");
    let third_out = run_ok(&p, &script(&c, &vars, REBUILD));
    let third = last_build(&p);
    let new_digest = third.args["context_digest"].as_str().unwrap_or_default();
    assert!(is_digest(new_digest), "{:?}", third.args);
    assert_ne!(new_digest, digest);
    assert_ne!(third_out.str("build", "id"), id);
    assert_eq!(
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", &t1]),
        third_out.str("build", "id")
    );

    let e = run_ok(&p, &script(&c, &vars, BUILD_ERRORS));
    e.error_is(
        "parse",
        "invalid_argument",
        "docker.images.build: dockerfile parse error line 2: unknown instruction: NOTACOMMAND",
    );
    e.error_is(
        "step",
        "engine_error",
        "docker.images.build: the build failed: The command '/bin/sh -c echo step-output-marker; exit 7' returned a non-zero code: 7",
    );
    let hint = e.hint_has(
        "step",
        &[
            "last build output:\nStep 1/2 : FROM stagecraft-test/web:1\n",
            "Step 2/2 : RUN echo step-output-marker; exit 7\n",
            "\nstep-output-marker\n",
        ],
    );
    eprintln!("failed build hint:\n{hint}");
    e.error_is(
        "no_dockerfile",
        "not_found",
        "docker.images.build: no Dockerfile in the build context empty",
    );
    e.hint_has("no_dockerfile", &["set dockerfile = "]);
    e.error_is(
        "other_dockerfile",
        "not_found",
        "docker.images.build: no Missing.Dockerfile in the build context app",
    );
    e.error_is(
        "outside",
        "permission_denied",
        "permission denied: docker.images.build: '../elsewhere' is outside the project directory",
    );
    e.error_is(
        "typo",
        "invalid_argument",
        "docker.images.build: unknown field 'tags' (did you mean 'tag'?)",
    );
    assert_gone("image", &t3);
}

// ---------------------------------------------------------------------------------------------
// 7. save / load
// ---------------------------------------------------------------------------------------------

const SAVE_LOAD: &str = r#"
emit("tag", docker.images.tag(WEB, TAG))
emit("save", docker.images.save(TAG, "out/image.tar"))
emit("remove", docker.images.remove(TAG))
expect_error("gone", docker.images.inspect, TAG)
emit("load", docker.images.load("out/image.tar"))
local i = docker.images.inspect(TAG)
emit("inspect", { id = i.Id, tags = i.RepoTags })
expect_error("load_missing", docker.images.load, "out/missing.tar")
expect_error("save_outside", docker.images.save, { TAG }, "../escaped.tar")
"#;

#[test]
fn save_and_load_round_trip_an_image_through_a_project_file() {
    let tags = Tags::default();
    let c = Cleanup::new();
    let web_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", web()]);
    let tag = tags.add(&unique_tag("save", "v1"));
    let p = project(&["fs-write"]).file("out/.keep", "");

    let e = run_ok(&p, &script(&c, &[("TAG", tag.as_str())], SAVE_LOAD));
    let tar = std::fs::read(p.path("out/image.tar")).expect("the saved tar");
    assert_eq!(
        e.get("save"),
        &serde_json::json!({
            "path": "out/image.tar", "images": [tag], "bytes": tar.len(), "sha256": sha256_hex(&tar),
        })
    );
    let leftovers: Vec<_> = files_under(&p.path("out"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("stagecraft-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        e.get("remove").to_string().contains(&tag),
        "{}",
        e.get("remove")
    );
    e.error_like(
        "gone",
        "not_found",
        "docker.images.inspect: ",
        &format!("No such image: {tag}"),
    );
    assert_eq!(strings(&e.get("load")["images"]), [tag.as_str()]);
    assert_eq!(e.get("inspect")["id"], web_id.as_str());
    assert_eq!(
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", &tag]),
        web_id
    );
    let missing = e.caught("load_missing");
    assert_eq!(missing.kind, "not_found", "{missing:?}");
    assert!(
        missing
            .message
            .starts_with("docker.images.load: out/missing.tar: "),
        "{missing:?}"
    );
    e.error_is(
        "save_outside",
        "permission_denied",
        "permission denied: docker.images.save: '../escaped.tar' is outside the project directory",
    );
    assert!(!p.root().join("../escaped.tar").exists());

    // Writing the file needs fs-write too.
    let p2 = project(&[]);
    let out = run(
        &p2,
        &script(
            &c,
            &[("TAG", tag.as_str())],
            "docker.images.save(TAG, 'image.tar')\n",
        ),
    )
    .code(3)
    .stderr_has("permission denied: docker.images.save needs capability fs-write");
    assert!(!p2.path("image.tar").exists(), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// 8. Errors and safety
// ---------------------------------------------------------------------------------------------

const MISSING_SOCKET: &str = "unix:///nonexistent/docker.sock";

#[test]
fn an_unreachable_engine_is_unavailable_with_a_hint() {
    let c = Cleanup::new();
    let p = project(&[]);
    let body = r#"
local other = docker.connect({ host = HOST })
emit("address", other.address)
expect_error("connected", other.containers.list)
expect_error("default", docker.images.list)
expect_error("bad_host", docker.connect, { host = "ftp://example" })
expect_error("no_host", docker.connect, {})
"#;
    let src = script(&c, &[("HOST", MISSING_SOCKET)], body);
    p.write("script.luau", &src);
    let e = Emitted::of(
        p.cmd(&["run", "script.luau"])
            .env("DOCKER_HOST", MISSING_SOCKET)
            .output()
            .ok(),
    );
    assert_eq!(e.get("address"), MISSING_SOCKET);
    for (label, func) in [
        ("connected", "docker.containers.list"),
        ("default", "docker.images.list"),
    ] {
        e.error_is(
            label,
            "unavailable",
            &format!(
                "{func}: cannot reach the Docker Engine at {MISSING_SOCKET}: Socket not found: /nonexistent/docker.sock"
            ),
        );
        e.hint_has(
            label,
            &[
                "is the Docker daemon running?",
                "systemctl start docker",
                "DOCKER_HOST",
                &format!("(tried {MISSING_SOCKET})"),
            ],
        );
    }
    e.error_is(
        "bad_host",
        "invalid_argument",
        "docker.connect: unsupported host 'ftp://example' (use unix:///path/to/docker.sock or tcp://HOST:PORT)",
    );
    let no_host = e.caught("no_host");
    assert_eq!(no_host.kind, "invalid_argument");
    assert!(
        no_host
            .message
            .starts_with("docker.connect: host is required")
    );

    // Uncaught: exit code 1, the message with the script location, and the hint.
    p.write(
        "uncaught.luau",
        "require('stagecraft/docker').containers.list()\n",
    );
    p.cmd(&["run", "uncaught.luau"])
        .env("DOCKER_HOST", MISSING_SOCKET)
        .output()
        .code(1)
        .stderr_has(&format!(
            "error: uncaught.luau:1: docker.containers.list: cannot reach the Docker Engine at {MISSING_SOCKET}"
        ))
        .stderr_has("\nhint: is the Docker daemon running?");
}

#[test]
fn docker_needs_its_capability() {
    let c = Cleanup::new();
    let name = c.container(&unique("sct-dk-nocap"));
    let p = Project::new();
    let src = script(
        &c,
        &[("NAME", name.as_str())],
        "docker.run({ image = WEB, name = NAME, labels = OWNER })\n",
    );
    p.script(&src, &[])
        .code(3)
        .stderr_has("permission denied: docker.run needs capability docker (grant with --allow docker or in stagecraft.yml)")
        .stderr_has("hint: add `- docker` under `permissions:` in stagecraft.yml, or pass --allow docker");
    assert_gone("container", &name);
    p.script("require('stagecraft/docker').containers.list()\n", &[])
        .code(3)
        .stderr_has("permission denied: docker.containers.list needs capability docker");
    // The same script passes with --allow docker.
    let _ = web();
    p.script(&src, &["--allow", "docker"]).ok();
    assert_eq!(inspect(&name, "{{.Name}}"), format!("/{name}"));
}

const INVALID_RUNS: &str = r#"
expect_error("typo", docker.run, { imgae = WEB, name = N1 })
expect_error("port_range", docker.run, { image = WEB, name = N2, labels = OWNER, ports = { "127.0.0.1:99999:8080" } })
expect_error("port_word", docker.run, { image = WEB, name = N3, labels = OWNER, ports = { "8080", "80:http" } })
expect_error("port_proto", docker.run, { image = WEB, name = N4, labels = OWNER, ports = { "8080/xyz" } })
expect_error("restart", docker.run, { image = WEB, name = N5, labels = OWNER, restart = "sometimes" })
expect_error("restart_count", docker.run, { image = WEB, name = N6, labels = OWNER, restart = "on-failure:x" })
expect_error("relative_target", docker.run, { image = WEB, name = N7, labels = OWNER, volumes = { "data:relative/path" } })
expect_error("mount_mode", docker.run, { image = WEB, name = N8, labels = OWNER, volumes = { "data:/data:rx" } })
expect_error("health_true", docker.run, { image = WEB, name = N9, labels = OWNER, healthcheck = true })
expect_error("pull_policy", docker.run, { image = WEB, name = N10, labels = OWNER, pull = "sometimes" })
expect_error("env_name", docker.run, { image = WEB, name = N11, labels = OWNER, env = { ["A=B"] = "x" } })
expect_error("no_image", docker.run, { name = N12, labels = OWNER })
"#;

#[test]
fn invalid_run_options_fail_before_any_engine_call() {
    let c = Cleanup::new();
    let _ = web();
    let names: Vec<String> = (1..=12)
        .map(|i| c.container(&unique(&format!("sct-dk-invalid-{i}"))))
        .collect();
    let keys: Vec<String> = (1..=12).map(|i| format!("N{i}")).collect();
    let vars: Vec<(&str, &str)> = keys
        .iter()
        .zip(&names)
        .map(|(k, n)| (k.as_str(), n.as_str()))
        .collect();
    let p = project(&[]);
    let e = run_ok(&p, &script(&c, &vars, INVALID_RUNS));
    for (label, message) in [
        (
            "typo",
            "docker.run: unknown field 'imgae' (did you mean 'image'?)",
        ),
        (
            "port_range",
            "docker.run: ports[1] '127.0.0.1:99999:8080': '99999' is not a port number",
        ),
        (
            "port_word",
            "docker.run: ports[2] '80:http': 'http' is not a port number",
        ),
        (
            "port_proto",
            "docker.run: ports[1] '8080/xyz': unknown protocol 'xyz'",
        ),
        (
            "restart",
            "docker.run: restart must be no, always, unless-stopped or on-failure[:N] (got 'sometimes')",
        ),
        (
            "restart_count",
            "docker.run: restart 'on-failure:x': the retry count is not a number",
        ),
        (
            "relative_target",
            "docker.run: volumes[1]: the target 'relative/path' must be an absolute path in the container",
        ),
        (
            "mount_mode",
            "docker.run: volumes[1]: unknown mode 'rx' (ro or rw)",
        ),
        (
            "health_true",
            "docker.run: healthcheck = true means nothing; give {test = ...} or false to disable the image's",
        ),
        (
            "pull_policy",
            "docker.run: pull must be \"missing\", \"always\" or \"never\" (got 'sometimes')",
        ),
        ("env_name", "docker.run: env name 'A=B' is not valid"),
        ("no_image", "docker.run: image is required"),
    ] {
        e.error_is(label, "invalid_argument", message);
    }
    // Nothing reached the engine or the ledger as a call.
    let runs = ledger(&p, "docker.");
    assert!(runs.is_empty(), "engine calls were recorded: {runs:?}");
    for n in &names {
        assert_gone("container", n);
    }
}

const ENGINE_ERRORS: &str = r#"
local first = docker.run({ image = WEB, name = NAME, labels = OWNER, healthcheck = false })
expect_error("conflict", docker.run, { image = WEB, name = NAME, labels = OWNER })
expect_error("running", function() return first:remove() end)
expect_error("never", docker.run, { image = MISSING, name = NEVER, labels = OWNER, pull = "never" })
expect_error("get_missing", docker.containers.get, NEVER)
expect_error("image_missing", docker.images.inspect, MISSING)
expect_error("plain_password", docker.images.push, MISSING, { auth = { username = "u", password = "plain" } })
emit("listed", docker.containers.list({ all = true, filters = { label = { OWNER_FILTER } } }))
"#;

#[test]
fn engine_errors_are_structured_with_hints() {
    let c = Cleanup::new();
    let _ = web();
    let name = c.container(&unique("sct-dk-conflict"));
    let never = c.container(&unique("sct-dk-never"));
    let missing = format!("{}:1", unique("sct-missing/none"));
    let vars = [
        ("NAME", name.as_str()),
        ("NEVER", never.as_str()),
        ("MISSING", missing.as_str()),
    ];
    let p = project(&[]);
    let e = run_ok(&p, &script(&c, &vars, ENGINE_ERRORS));

    let id = inspect(&name, "{{.Id}}");
    e.error_is(
        "conflict",
        "conflict",
        &format!(
            "docker.run: Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name."
        ),
    );
    assert_eq!(
        e.caught("conflict").hint.as_deref(),
        Some("a container with that name exists; remove it first or pick another name")
    );
    e.error_is(
        "running",
        "conflict",
        &format!(
            "docker.container.remove: You cannot remove a running container {id}. Stop the container before attempting removal or force remove"
        ),
    );
    assert_eq!(
        e.caught("running").hint.as_deref(),
        Some("stop it first, or pass {force = true}")
    );
    e.error_is(
        "never",
        "not_found",
        &format!("docker.run: image {missing} is not on the engine"),
    );
    e.hint_has("never", &["docker.build", "docker.images.load"]);
    e.error_is(
        "get_missing",
        "not_found",
        &format!("docker.containers.get: No such container: {never}"),
    );
    e.error_like(
        "image_missing",
        "not_found",
        "docker.images.inspect: ",
        &format!("No such image: {missing}"),
    );
    e.error_is(
        "plain_password",
        "invalid_argument",
        "docker.images.push: auth.password must be a secret handle, not a string",
    );
    // Only the first container exists; the conflicting run left the original alone.
    let listed = e.get("listed").as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["Id"], id.as_str());
    assert_gone("container", &never);
    assert_eq!(inspect(&name, "{{.State.Running}}"), "true");
}

// ---------------------------------------------------------------------------------------------
// 9. Replay
// ---------------------------------------------------------------------------------------------

const REPLAYED: &str = r#"
local c = docker.run({ image = WEB, name = NAME, labels = OWNER, env = { VERSION = "v-replay" } })
print("health", c:wait_healthy({ timeout = 30 }).status)
local r = c:exec({ "cat", "/www/index.html" })
print("exec", r.code, r.stdout)
local info = c:inspect()
print("inspect", info.Id == c.id, info.Name, info.Config.Image, info.State.Running)
print("logs", type(c:logs({ tail = 5 }).output))
print("stop", c:stop({ timeout = 5 }).stopped)
print("remove", c:remove().removed == c.id)
print("left", #docker.containers.list({ all = true, filters = { label = { OWNER_FILTER } } }))
"#;

#[test]
fn replay_makes_no_engine_calls() {
    let c = Cleanup::new();
    let _ = web();
    let name = c.container(&unique("sct-dk-replay"));
    let p = project(&[]);
    let live = run(&p, &script(&c, &[("NAME", name.as_str())], REPLAYED)).ok();
    assert!(
        live.stdout
            .starts_with("health\thealthy\nexec\t0\tversion=v-replay host="),
        "{}",
        live.stdout
    );
    assert!(
        live.stdout.ends_with(&format!(
            "inspect\ttrue\t/{name}\tstagecraft-test/web:1\ttrue\nlogs\tstring\nstop\ttrue\nremove\ttrue\nleft\t0\n"
        )),
        "{}",
        live.stdout
    );
    assert_gone("container", &name);
    let run_id = last_run(&p);
    let calls = ledger(&p, "docker.")
        .into_iter()
        .filter(|e| e.kind == "call")
        .count();
    assert_eq!(calls, 8, "docker calls recorded");
    let all_calls: usize = p
        .db()
        .query_row(
            "SELECT count(*) FROM entries WHERE run_id = ?1 AND kind = 'call'",
            [&run_id],
            |r| r.get(0),
        )
        .expect("count calls");

    // The same script, live, with DOCKER_HOST pointing nowhere: it fails at the first call.
    p.cmd(&["run", "script.luau"])
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .output()
        .code(1)
        .stderr_has("docker.run: cannot reach the Docker Engine at unix:///nonexistent.sock");

    // The replay, with the same DOCKER_HOST, matches every call: nothing went to an engine.
    let replay = p
        .cmd(&["replay", &run_id])
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .output()
        .ok();
    assert_eq!(
        replay.stderr,
        format!(
            "{}replay of {run_id}: {all_calls} of {all_calls} recorded calls matched, no divergence (recorded status: ok)\n",
            live.stdout
        )
    );
    assert_gone("container", &name);
}

// ---------------------------------------------------------------------------------------------
// 10. Push to a registry with credentials
// ---------------------------------------------------------------------------------------------

/// The kind of the error for a push the registry refuses for its credentials
/// (`errkinds::AUTHENTICATION` in src/api/docker/mod.rs).
const REFUSED_CREDENTIALS: &str = "authentication_failed";
const REGISTRY_USER: &str = "stagecraft";
const REGISTRY_PASSWORD: &str = "dk-Registry-Pass-5e8d27";

/// Debian's `docker-registry` (distribution 2.x) on a free loopback port with htpasswd (bcrypt)
/// auth, storing into a temp dir. Killed (by its pid) when dropped.
struct Registry {
    child: Child,
    port: u16,
    /// The config, htpasswd and storage; removed with the registry.
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        for tool in ["/usr/bin/docker-registry", "/usr/bin/htpasswd"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's docker-registry and apache2-utils \
                 (scripts/test does)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("sc-registry-")
            .tempdir()
            .expect("registry temp dir");
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .expect("run htpasswd");
        assert!(htpasswd.status.success(), "htpasswd failed: {htpasswd:?}");
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("write htpasswd");
        // The kernel picks a free port; should another process take it before the registry
        // binds it, the registry exits and another port is tried.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let config = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: stagecraft-test\n    path: {}\n",
                dir.path().join("data").display(),
                dir.path().join("htpasswd").display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write registry config");
            let log_path = dir.path().join(format!("registry-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("registry log");
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok((status, _, _)) = raw_http(port, "/v2/", &[]) {
                    let reg = Registry {
                        child,
                        port,
                        _dir: dir,
                    };
                    // Up, and refusing anonymous access.
                    assert_eq!(status, 401, "the registry does not ask for credentials");
                    return reg;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer on port {port} within 20 s:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("docker-registry would not start:\n{last_log}");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET to 127.0.0.1:`port` with extra headers: (status, headers, body).
fn raw_http(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone());
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, head.to_string(), body.to_string()))
}

const PUSH: &str = r#"
local secrets = require("stagecraft/secrets")
local function auth(name)
  return { auth = { username = USER, password = secrets.get(name), server = SERVER } }
end
docker.images.tag(WEB, REF)
expect_error("wrong", docker.images.push, REF, auth("REGISTRY_WRONG"))
expect_error("anonymous", docker.images.push, REF)
emit("push", docker.images.push(REF, auth("REGISTRY_PASSWORD")))
docker.images.remove(REF)
emit("pull", docker.images.pull(REF, auth("REGISTRY_PASSWORD")))
local i = docker.images.inspect(REF)
emit("pulled", { id = i.Id, digests = i.RepoDigests })
"#;

#[test]
fn push_and_pull_with_credentials_against_a_local_registry() {
    let tags = Tags::default();
    let c = Cleanup::new();
    let web_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", web()]);
    let reg = Registry::start();
    let repo = format!("{}/{}", reg.host(), unique("sct-push"));
    let tag = unique("t");
    let image = tags.add(&format!("{repo}:{tag}"));
    let wrong = "dk-Wrong-Pass-11aa22";
    let p = project(&["secrets:REGISTRY_PASSWORD", "secrets:REGISTRY_WRONG"]).file(
        ".env",
        &format!("REGISTRY_PASSWORD={REGISTRY_PASSWORD}\nREGISTRY_WRONG={wrong}\n"),
    );
    let host = reg.host();
    let vars = [
        ("REF", image.as_str()),
        ("USER", REGISTRY_USER),
        ("SERVER", host.as_str()),
    ];
    let out = run(&p, &script(&c, &vars, PUSH)).ok();
    let e = Emitted::of(out.clone());

    e.error_is(
        "wrong",
        REFUSED_CREDENTIALS,
        &format!("docker.images.push: pushing {image}: unauthorized: authentication required"),
    );
    e.hint_has("wrong", &["credentials given in auth"]);
    let anonymous = e.caught("anonymous");
    assert!(
        anonymous.message.contains("no basic auth credentials"),
        "{anonymous:?}"
    );
    let digest = e.str("push", "digest");
    assert!(is_digest(&digest), "{}", e.get("push"));
    assert_eq!(e.get("push")["image"], image.as_str());

    // The registry has the manifest under that digest, and only for those who log in.
    let path = format!("/v2/{}/manifests/{tag}", repo.split_once('/').unwrap().1);
    let accept = (
        "Accept",
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"))
    );
    let (status, head, body) =
        raw_http(reg.port, &path, &[accept, ("Authorization", &basic)]).expect("GET manifest");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );
    let (status, _, _) = raw_http(reg.port, &path, &[accept]).expect("GET manifest anonymously");
    assert_eq!(status, 401);

    // Pulled back with the same credentials: the same image, known by its registry digest.
    assert_eq!(e.get("pulled")["id"], web_id.as_str());
    assert!(
        strings(&e.get("pulled")["digests"]).contains(&format!("{repo}@{digest}")),
        "{}",
        e.get("pulled")
    );
    assert_eq!(
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", &image]),
        web_id
    );

    let pushes = ledger(&p, "docker.images.push");
    assert!(
        pushes
            .iter()
            .any(|x| x.args["opts"]["auth"]["password"]["$secret"] == "REGISTRY_PASSWORD"),
        "{pushes:?}"
    );
    assert_secret_absent(&p, REGISTRY_PASSWORD, &[&out]);
    assert_secret_absent(&p, wrong, &[&out]);
}
