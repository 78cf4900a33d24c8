//! `stagecraft/ssh` (capability `ssh` or `ssh:HOST`): hosts reached over OpenSSH with native
//! multiplexing — one master connection per host for the whole run, reused by every command,
//! upload and forward, and closed when the run ends.
//!
//! Connections are made lazily, on the first live call that needs one, so a replay makes none.
//! Every command goes through one internal interface ([`Transport::execute`]), so a later
//! long-lived per-host executor can replace the session-per-command path without touching callers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::{from_json, opts};
use crate::runtime::caps::Request;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::secrets::SecretHandle;
use crate::runtime::value::{ToJson, to_json, to_lua};
use crate::runtime::{RunCtx, ctx};

/// Error kinds of SSH failures.
pub mod errkinds {
    pub const UNREACHABLE: &str = "unreachable";
    pub const DNS: &str = "dns";
    pub const AUTHENTICATION: &str = "authentication_failed";
    pub const HOST_KEY: &str = "host_key_mismatch";
    pub const COMMAND_FAILED: &str = "command_failed";
    pub const DISCONNECTED: &str = "disconnected";
}

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("connect", lua.create_async_function(connect)?)?;
    t.set("hosts", lua.create_async_function(hosts)?)?;
    Ok(t)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct HostsOpts {
    role: Option<String>,
    env: Option<String>,
    group: Option<String>,
    #[serde(deserialize_with = "super::seq")]
    names: Vec<String>,
}

/// `ssh.hosts{role=, env=, group=, names=}`: inventory hosts (stagecraft.yml) as host handles,
/// in inventory order. Hosts given by Tailscale name are resolved through the tailscale CLI
/// (capability `tailscale`). Recorded, so a replay sees the recorded inventory and addresses.
async fn hosts(lua: Lua, o: Option<Value>) -> mlua::Result<Vec<Host>> {
    const F: &str = "ssh.hosts";
    let ctx = ctx(&lua)?;
    let args = super::docker::opts_json(F, &o)?;
    let o: HostsOpts = opts(F, o)?;
    let v = ctx
        .record(F, args, || async {
            let inv = &ctx.project.inventory;
            let picked = inv
                .select(
                    o.role.as_deref(),
                    o.env.as_deref(),
                    o.group.as_deref(),
                    &o.names,
                )
                .map_err(|e| {
                    let mut err = OpError::invalid(format!("{F}: {e}"));
                    err.hint = e.hint();
                    err
                })?;
            let mut out = Vec::new();
            for h in picked {
                let mut t = target_of(inv, h)?;
                if h.address.is_none()
                    && let Some(ts) = &h.tailscale
                {
                    t.host = super::tailscale::resolve(&ctx, F, ts).await?;
                }
                out.push(serde_json::to_value(t).unwrap_or_default());
            }
            Ok(serde_json::Value::Array(out))
        })
        .await
        .map_err(OpError::into_lua)?;
    let targets: Vec<Target> = from_json(F, v)?;
    Ok(targets.into_iter().map(|target| Host { target }).collect())
}

/// How to reach an inventory host.
fn target_of(
    inv: &crate::inventory::Inventory,
    h: &crate::inventory::Host,
) -> Result<Target, OpError> {
    let host = match (&h.address, &h.tailscale) {
        (Some(a), _) => a.clone(),
        // Resolved through the tailscale CLI by `ssh.hosts`; a jump host keeps the name.
        (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(OpError::invalid(format!(
                "ssh.hosts: inventory host {} has no address",
                h.name
            )));
        }
    };
    // A jump through an inventory host uses that host's own user, key and known hosts.
    let jump = match &h.jump {
        None => None,
        Some(j) => match inv.get(j) {
            Some(jh) => Some(Jump::Host(Box::new(target_of(inv, jh)?))),
            None => Some(Jump::Literal(j.clone())),
        },
    };
    Ok(Target {
        host,
        port: Some(h.port),
        user: h.user.clone(),
        key: h.key.clone(),
        jump,
        known_hosts: Some(h.known_hosts.clone()),
        known_hosts_file: h.known_hosts_file.clone(),
        kex: h.kex.clone(),
        name: Some(h.name.clone()),
        ..Target::default()
    })
}

/// How to reach a host, as given by the script (recorded in the ledger).
#[derive(Deserialize, Clone, Debug, Default, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Private key file (absolute, or `~/...`).
    pub key: Option<String>,
    /// A jump host: `[user@]host[:port]` (with this target's key and known hosts), or a target
    /// table of its own (which may have a jump in turn).
    pub jump: Option<Jump>,
    /// `strict` (default) or `accept-new`.
    pub known_hosts: Option<String>,
    /// A known_hosts file to use instead of the user's.
    pub known_hosts_file: Option<String>,
    /// Seconds (default 10).
    pub connect_timeout: Option<f64>,
    /// ssh's `KexAlgorithms` (default: the ssh client's own list).
    pub kex: Option<String>,
    /// A display name (default: the host).
    pub name: Option<String>,
}

/// How a target's jump host is given.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Jump {
    Literal(String),
    Host(Box<Target>),
}

impl<'de> Deserialize<'de> for Jump {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Jump, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Jump::Literal(s)),
            v @ serde_json::Value::Object(_) => serde_json::from_value::<Target>(v)
                .map(|t| Jump::Host(Box::new(t)))
                .map_err(|e| D::Error::custom(format!("jump: {e}"))),
            _ => Err(D::Error::custom(
                "jump must be \"user@host:port\" or a table {host=, port=, user=, key=, ...}",
            )),
        }
    }
}

/// Jump chains longer than this are refused (a table could nest without end).
const MAX_HOPS: usize = 8;

impl Target {
    /// The jump hosts, the nearest first (the last one is dialled first), each a full target:
    /// a literal `[user@]host[:port]` takes the key, known hosts and timeout of the host it leads to.
    pub(crate) fn hops(&self) -> Result<Vec<Target>, String> {
        let mut chain: Vec<Target> = Vec::new();
        let mut cur = self.clone();
        while let Some(j) = cur.jump.take() {
            if chain.len() == MAX_HOPS {
                return Err(format!("more than {MAX_HOPS} jump hosts in a chain"));
            }
            let hop = match j {
                Jump::Literal(s) => {
                    let mut t = Target::parse(&s).map_err(|e| format!("jump '{s}': {e}"))?;
                    t.key = cur.key.clone();
                    t.known_hosts = cur.known_hosts.clone();
                    t.known_hosts_file = cur.known_hosts_file.clone();
                    t.connect_timeout = cur.connect_timeout;
                    t.kex = cur.kex.clone();
                    t
                }
                Jump::Host(t) => *t,
            };
            let mut plain = hop.clone();
            plain.jump = None;
            plain
                .validate()
                .map_err(|e| format!("jump host {}: {e}", hop.host))?;
            chain.push(plain);
            cur = hop;
        }
        Ok(chain)
    }

    /// `user@host:port`, `host:port`, `host`, `[v6]:port`.
    fn parse(s: &str) -> Result<Target, String> {
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err("empty user before '@'".into()),
            None => (None, s),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unterminated '[' in the host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?),
                None if after.is_empty() => None,
                None => return Err(format!("unexpected '{after}' after the host")),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    Some(p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?),
                ),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Target {
            host,
            port,
            user,
            ..Target::default()
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.host.is_empty()
            || self.host.starts_with('-')
            || self.host.contains(char::is_whitespace)
        {
            return Err(format!("'{}' is not a host name or address", self.host));
        }
        if let Some(u) = &self.user
            && (u.is_empty() || u.starts_with('-') || u.contains(char::is_whitespace))
        {
            return Err(format!("'{u}' is not a user name"));
        }
        if let Some(k) = &self.known_hosts
            && !matches!(k.as_str(), "strict" | "accept-new")
        {
            return Err(format!(
                "known_hosts must be \"strict\" or \"accept-new\" (got '{k}')"
            ));
        }
        if let Some(t) = self.connect_timeout
            && !(t > 0.0 && t.is_finite())
        {
            return Err("connect_timeout must be a positive number of seconds".into());
        }
        if let Some(k) = &self.kex {
            crate::util::check_kex(k)?;
        }
        if self.jump.is_some() {
            self.hops()?;
        }
        Ok(())
    }

    /// The capability to reach this host, and every jump host on the way (`ssh:HOST` each).
    pub(crate) fn require(&self, ctx: &RunCtx, op: &str) -> Result<(), OpError> {
        ctx.require(op, &Request::Ssh(&self.host), &format!("ssh:{}", self.host))?;
        for hop in self
            .hops()
            .map_err(|e| OpError::invalid(format!("{op}: {e}")))?
        {
            ctx.require(op, &Request::Ssh(&hop.host), &format!("ssh:{}", hop.host))?;
        }
        Ok(())
    }

    /// The key the pool uses: one master per distinct destination and route (the same address
    /// behind another jump host is another machine).
    pub(crate) fn id(&self) -> String {
        let one = |t: &Target| {
            format!(
                "{}@{}:{}",
                t.user.as_deref().unwrap_or(""),
                t.host,
                t.port.unwrap_or(22)
            )
        };
        let mut id = one(self);
        for hop in self.hops().unwrap_or_default() {
            id.push_str(" via ");
            id.push_str(&one(&hop));
        }
        // A connection asked to use other key exchange algorithms is another connection.
        if let Some(k) = &self.kex {
            id.push_str(" kex ");
            id.push_str(k);
        }
        id
    }

    pub(crate) fn display(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.host.clone())
    }
}

/// The run's connections, one master per host.
#[derive(Default)]
pub struct Pool {
    sessions: tokio::sync::Mutex<HashMap<String, Arc<openssh::Session>>>,
    /// One lock per host, so concurrent first calls make one master.
    connecting: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Temp folders (forwarded sockets, the ssh config of jump hosts and `kex`), removed when
    /// the run ends.
    forwards: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

pub(crate) fn pool(lua: &Lua) -> Arc<Pool> {
    if let Some(p) = lua.app_data_ref::<Arc<Pool>>() {
        return p.clone();
    }
    let p = Arc::new(Pool::default());
    lua.set_app_data(p.clone());
    p
}

fn home_path(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => PathBuf::from(p),
    }
}

impl Pool {
    /// The master session for a target, connecting on first use.
    pub(crate) async fn session(&self, t: &Target) -> Result<Arc<openssh::Session>, OpError> {
        let id = t.id();
        if let Some(s) = self.sessions.lock().await.get(&id) {
            return Ok(s.clone());
        }
        let gate = {
            let mut m = self
                .connecting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.entry(id.clone()).or_default().clone()
        };
        let _held = gate.lock().await;
        if let Some(s) = self.sessions.lock().await.get(&id) {
            return Ok(s.clone());
        }
        let mut b = openssh::SessionBuilder::default();
        if let Some(u) = &t.user {
            b.user(u.clone());
        }
        if let Some(p) = t.port {
            b.port(p);
        }
        if let Some(k) = &t.key {
            b.keyfile(home_path(k));
        }
        if let Some(f) = &t.known_hosts_file {
            b.user_known_hosts_file(home_path(f));
        }
        b.known_hosts_check(match t.known_hosts.as_deref() {
            Some("accept-new") => openssh::KnownHosts::Add,
            _ => openssh::KnownHosts::Strict,
        });
        b.connect_timeout(Duration::from_secs_f64(t.connect_timeout.unwrap_or(10.0)));
        b.server_alive_interval(Duration::from_secs(15));
        // The run closes its masters when it ends; one left behind by a killed process exits
        // after 15 idle minutes instead of living forever.
        if let Some(idle) = std::num::NonZeroUsize::new(900) {
            b.control_persist(openssh::ControlPersist::IdleFor(idle));
        }
        // The user's ssh config may not change where or how we connect: the only config read is
        // the one written here for the jump hosts and `kex` (ssh hands `-F` on to each hop's ssh).
        let hops = t
            .hops()
            .map_err(|e| OpError::invalid(format!("ssh {}: {e}", t.display())))?;
        if hops.is_empty() && t.kex.is_none() {
            b.config_file("/dev/null");
        } else {
            let dir = tempfile::Builder::new()
                .prefix("stagecraft-ssh-")
                .tempdir()
                .map_err(|e| {
                    OpError::new(kinds::IO, format!("ssh: cannot create a temp dir: {e}"))
                })?;
            let path = dir.path().join("config");
            let text = session_config(t, &hops)
                .map_err(|e| OpError::invalid(format!("ssh {}: {e}", t.display())))?;
            std::fs::write(&path, text).map_err(|e| {
                OpError::new(
                    kinds::IO,
                    format!("ssh: cannot write {}: {e}", path.display()),
                )
            })?;
            b.config_file(&path);
            if !hops.is_empty() {
                b.jump_hosts([hop_alias(0)]);
            }
            self.forwards
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(dir);
        }
        let session = b
            .connect_mux(&t.host)
            .await
            .map_err(|e| classify(&t.display(), &e, None))?;
        let session = Arc::new(session);
        self.sessions.lock().await.insert(id, session.clone());
        Ok(session)
    }
}

fn hop_alias(i: usize) -> String {
    format!("stagecraft-jump-{i}")
}

/// The run's ssh config for one destination: its jump hosts, then what applies to every
/// connection it makes (the target's `kex`; ssh_config takes the first value it reads, so a jump
/// host's own `kex` in its block wins over it).
fn session_config(t: &Target, hops: &[Target]) -> Result<String, String> {
    let mut out = jump_config(hops)?;
    if let Some(k) = &t.kex {
        crate::util::check_kex(k)?;
        out.push_str(&format!("Host *\n  KexAlgorithms {k}\n"));
    }
    Ok(out)
}

/// An ssh_config with one `Host` block per jump host (nearest first), each leading through the
/// next. Values are quoted, and `%` (ssh_config's token character) is doubled.
fn jump_config(hops: &[Target]) -> Result<String, String> {
    fn quoted(what: &str, v: &str) -> Result<String, String> {
        if v.contains(['"', '\n', '\r', '\0']) {
            return Err(format!(
                "the jump host's {what} contains a quote or a line break"
            ));
        }
        Ok(format!("\"{}\"", v.replace('%', "%%")))
    }
    let mut out = String::from("# written by stagecraft for one run's jump hosts\n");
    for (i, h) in hops.iter().enumerate() {
        out.push_str(&format!("Host {}\n", hop_alias(i)));
        out.push_str(&format!("  HostName {}\n", quoted("host", &h.host)?));
        out.push_str(&format!("  Port {}\n", h.port.unwrap_or(22)));
        if let Some(u) = &h.user {
            out.push_str(&format!("  User {}\n", quoted("user", u)?));
        }
        if let Some(k) = &h.key {
            let k = home_path(k);
            out.push_str(&format!(
                "  IdentityFile {}\n  IdentitiesOnly yes\n",
                quoted("key", &k.to_string_lossy())?
            ));
        }
        if let Some(f) = &h.known_hosts_file {
            let f = home_path(f);
            out.push_str(&format!(
                "  UserKnownHostsFile {}\n",
                quoted("known_hosts_file", &f.to_string_lossy())?
            ));
        }
        let check = match h.known_hosts.as_deref() {
            Some("accept-new") => "accept-new",
            _ => "yes",
        };
        out.push_str(&format!(
            "  StrictHostKeyChecking {check}\n  BatchMode yes\n"
        ));
        out.push_str(&format!(
            "  ConnectTimeout {}\n",
            h.connect_timeout.unwrap_or(10.0).ceil().max(1.0) as u64
        ));
        if let Some(k) = &h.kex {
            crate::util::check_kex(k)?;
            out.push_str(&format!("  KexAlgorithms {k}\n"));
        }
        if i + 1 < hops.len() {
            out.push_str(&format!("  ProxyJump {}\n", hop_alias(i + 1)));
        }
    }
    Ok(out)
}

/// Turn an openssh error (and the ssh client's stderr, when there is one) into a kind.
fn classify(host: &str, e: &openssh::Error, stderr: Option<&str>) -> OpError {
    let mut text = crate::util::error_chain(e);
    if let Some(s) = stderr {
        text.push_str(": ");
        text.push_str(s.trim());
    }
    let (kind, hint) = if text.contains("Could not resolve hostname")
        || text.contains("Name or service not known")
        || text.contains("Temporary failure in name resolution")
    {
        (errkinds::DNS, "check the host name (or use its address)")
    } else if text.contains("HOST IDENTIFICATION HAS CHANGED")
        || text.contains("Host key verification failed")
        || text.contains("host key for")
    {
        (
            errkinds::HOST_KEY,
            "the host's key is not the one in known_hosts: verify the host, then update known_hosts (or use known_hosts = \"accept-new\" for a new host)",
        )
    } else if text.contains("Permission denied")
        || text.contains("Too many authentication failures")
    {
        (
            errkinds::AUTHENTICATION,
            "check the user and the key (the key's public half must be in the host's authorized_keys)",
        )
    } else if text.contains("timed out") {
        (
            kinds::TIMEOUT,
            "is the host up, and the port right? raise connect_timeout for slow links",
        )
    } else if text.contains("Connection refused")
        || text.contains("No route to host")
        || text.contains("Network is unreachable")
        || text.contains("Connection reset")
    {
        (
            errkinds::UNREACHABLE,
            "is sshd running on that host and port, and reachable from here?",
        )
    } else if matches!(
        e,
        openssh::Error::Disconnected | openssh::Error::RemoteProcessTerminated
    ) {
        (
            errkinds::DISCONNECTED,
            "the connection to the host was lost",
        )
    } else {
        (
            errkinds::UNREACHABLE,
            "check that the host is reachable with ssh",
        )
    };
    let text = text
        .replace("failed to connect to the remote host: ", "")
        .trim()
        .to_string();
    OpError::new(kind, format!("ssh {host}: {text}")).hint(hint)
}

/// A host handle: the target, by value (the connection lives in the run's pool).
#[derive(Clone)]
pub struct Host {
    pub target: Target,
}

/// One command to run on a host: the one internal interface every caller goes through.
struct CommandSpec {
    /// argv (quoted for the remote shell), or a raw shell string.
    argv: Vec<String>,
    shell: Option<String>,
    /// Exported before the command; passed on stdin, never on the remote command line.
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Vec<u8>,
    timeout: Option<Duration>,
    stream: bool,
    max_output: usize,
}

struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

/// How commands reach a host.
trait Transport {
    async fn execute(&self, ctx: &RunCtx, spec: CommandSpec) -> Result<Output, OpError>;
}

struct MuxTransport {
    host: Host,
    session: Arc<openssh::Session>,
}

/// The wrapper run by the remote `sh`: read the environment from stdin, one `NAME=value` line
/// each, until an empty line; change directory; exec the command with the rest of stdin.
const PRELUDE: &str = r#"while IFS= read -r __sc_kv && [ -n "$__sc_kv" ]; do export "$__sc_kv"; done; unset __sc_kv; if [ -n "$1" ]; then cd -- "$1" || exit 127; fi; shift; "#;

impl Transport for MuxTransport {
    async fn execute(&self, ctx: &RunCtx, spec: CommandSpec) -> Result<Output, OpError> {
        let name = self.host.target.display();
        // Without environment or directory there is nothing for the prelude to do: the login
        // shell runs the quoted words itself, one process less on the host for every command.
        let direct = spec.env.is_empty() && spec.cwd.is_none() && spec.shell.is_none();
        let mut script = PRELUDE.to_string();
        let program = match spec.argv.first() {
            Some(p) if direct => p.as_str(),
            _ => "sh",
        };
        let mut cmd = self.session.command(program);
        match &spec.shell {
            _ if direct => {
                cmd.args(&spec.argv[1..]);
            }
            Some(s) => {
                script.push_str("exec sh -c \"$1\"");
                cmd.arg("-c").arg(&script).arg("sh");
                cmd.arg(spec.cwd.as_deref().unwrap_or(""));
                cmd.arg(s);
            }
            None => {
                script.push_str("exec \"$@\"");
                cmd.arg("-c").arg(&script).arg("sh");
                cmd.arg(spec.cwd.as_deref().unwrap_or(""));
                cmd.args(&spec.argv);
            }
        }
        let input = if direct {
            spec.stdin.clone()
        } else {
            let mut input = Vec::new();
            for (k, v) in &spec.env {
                input.extend_from_slice(format!("{k}={v}\n").as_bytes());
            }
            input.push(b'\n');
            input.extend_from_slice(&spec.stdin);
            input
        };
        cmd.stdin(if input.is_empty() {
            openssh::Stdio::null()
        } else {
            openssh::Stdio::piped()
        })
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::piped());
        let run = async {
            let mut child = cmd.spawn().await.map_err(|e| classify(&name, &e, None))?;
            let mut stdin = child.stdin().take();
            let feed = async move {
                if let Some(s) = stdin.as_mut() {
                    let _ = s.write_all(&input).await;
                    let _ = s.shutdown().await;
                }
                drop(stdin);
            };
            let out = child.stdout().take();
            let err = child.stderr().take();
            let prefix = format!("{name} | ");
            let keep = spec.max_output;
            let stream = spec.stream;
            let (_, (stdout, out_cut), (stderr, err_cut)) = tokio::join!(
                feed,
                read_all(ctx, out, stream.then_some(&prefix), keep),
                read_all(ctx, err, stream.then_some(&prefix), keep),
            );
            let status = child.wait().await;
            let code = match status {
                Ok(s) => s.code().unwrap_or(-1),
                Err(openssh::Error::RemoteProcessTerminated) => {
                    // Terminated by a signal, or the connection was cut: tell them apart.
                    if self.session.check().await.is_err() {
                        return Err(OpError::new(
                            errkinds::DISCONNECTED,
                            format!("ssh {name}: the connection was lost while the command ran"),
                        )
                        .hint("is the host (or its sshd) still up?"));
                    }
                    -1
                }
                Err(e) => return Err(classify(&name, &e, None)),
            };
            Ok(Output {
                code,
                stdout,
                stderr,
                truncated: out_cut || err_cut,
            })
        };
        match spec.timeout {
            Some(t) => tokio::time::timeout(t, run).await.map_err(|_| {
                OpError::new(
                    kinds::TIMEOUT,
                    format!(
                        "ssh {name}: the command timed out after {}s",
                        t.as_secs_f64()
                    ),
                )
                .hint("raise the timeout option")
            })?,
            None => run.await,
        }
    }
}

async fn read_all(
    ctx: &RunCtx,
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    prefix: Option<&String>,
    keep: usize,
) -> (Vec<u8>, bool) {
    // Streamed output goes out a line at a time, prefixed with the host name.
    let mut pending = String::new();
    let read = crate::util::read_capped(pipe, keep, |chunk| {
        if let Some(p) = prefix {
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                ctx.emit(&format!("{p}{line}"), true);
            }
        }
    })
    .await;
    if let Some(p) = prefix
        && !pending.is_empty()
    {
        ctx.emit(&format!("{p}{pending}\n"), true);
    }
    read
}

const DEFAULT_MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// Run an argv on a host over its master connection (for other modules, such as locks):
/// `(code, stdout, stderr)`.
pub(crate) async fn run_argv(
    ctx: &RunCtx,
    host: &Host,
    session: Arc<openssh::Session>,
    argv: Vec<String>,
) -> Result<(i32, String, String), OpError> {
    let tr = MuxTransport {
        host: host.clone(),
        session,
    };
    let out = tr
        .execute(
            ctx,
            CommandSpec {
                argv,
                shell: None,
                env: vec![],
                cwd: None,
                stdin: vec![],
                timeout: Some(Duration::from_secs(60)),
                stream: false,
                max_output: 1024 * 1024,
            },
        )
        .await?;
    Ok((
        out.code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn connect(lua: Lua, target: Value) -> mlua::Result<Host> {
    const F: &str = "ssh.connect";
    let ctx = ctx(&lua)?;
    let t = match &target {
        Value::String(s) => Target::parse(&s.to_str()?).map_err(|e| {
            OpError::invalid(format!("{F}: '{}': {e}", s.to_string_lossy()))
                .hint("give user@host:port, or a table {host=, port=, user=, key=, ...}")
                .into_lua()
        })?,
        Value::Table(_) => {
            let j = to_json(&target, ToJson::default())
                .map_err(|e| OpError::invalid(format!("{F}: {e}")).into_lua())?;
            from_json::<Target>(F, j)?
        }
        _ => {
            return Err(OpError::invalid(format!(
                "{F}: expected \"user@host:port\" or a table {{host=, ...}}"
            ))
            .into_lua());
        }
    };
    t.validate()
        .map_err(|e| OpError::invalid(format!("{F}: {e}")).into_lua())?;
    let args = serde_json::to_value(&t).unwrap_or_default();
    let p = pool(&lua);
    let t2 = t.clone();
    ctx.record(F, json!({ "target": args }), || async {
        t2.require(&ctx, F)?;
        p.session(&t2).await?;
        Ok(json!({ "host": t2.display() }))
    })
    .await
    .map_err(OpError::into_lua)?;
    Ok(Host { target: t })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RunOpts {
    env: BTreeMap<String, serde_json::Value>,
    stdin: Option<String>,
    /// Seconds.
    timeout: Option<f64>,
    cwd: Option<String>,
    /// Print output on the terminal as it comes, prefixed with the host name.
    stream: bool,
    /// Raise `command_failed` when the exit code is not 0.
    check: bool,
    max_output: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct UploadOpts {
    /// Octal string, e.g. "0644" (default "0644").
    mode: Option<String>,
}

impl Host {
    fn args(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut a = json!({ "host": self.target.id() });
        if let (Some(obj), serde_json::Value::Object(x)) = (a.as_object_mut(), extra) {
            obj.extend(x);
        }
        a
    }

    /// Run one recorded operation on this host: capability, connection, effect.
    async fn op<F, Fut>(
        &self,
        lua: &Lua,
        op: &'static str,
        args: serde_json::Value,
        effect: F,
    ) -> mlua::Result<serde_json::Value>
    where
        F: FnOnce(Arc<RunCtx>, MuxTransport) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, OpError>>,
    {
        let ctx = ctx(lua)?;
        let p = pool(lua);
        let c2 = ctx.clone();
        ctx.record(op, self.args(args), || async move {
            self.target.require(&c2, op)?;
            let session = p.session(&self.target).await?;
            effect(
                c2.clone(),
                MuxTransport {
                    host: self.clone(),
                    session,
                },
            )
            .await
        })
        .await
        .map_err(OpError::into_lua)
    }
}

fn env_pairs(
    ctx: &RunCtx,
    func: &str,
    env: &BTreeMap<String, serde_json::Value>,
) -> Result<Vec<(String, String)>, OpError> {
    let mut out = Vec::new();
    for (k, v) in env {
        if k.is_empty()
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || k.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(OpError::invalid(format!(
                "{func}: env name '{k}' is not valid (letters, digits, _)"
            )));
        }
        let value = super::docker::resolve_value(ctx, func, &format!("env.{k}"), v)?;
        if value.contains('\n') {
            return Err(OpError::invalid(format!(
                "{func}: env.{k} contains a newline, which cannot be passed"
            )));
        }
        out.push((k.clone(), value));
    }
    Ok(out)
}

fn check_env_shapes(func: &str, env: &BTreeMap<String, serde_json::Value>) -> mlua::Result<()> {
    for (k, v) in env {
        if !(v.is_string() || v.is_number() || v.is_boolean())
            && SecretHandle::from_reference(v).is_none()
        {
            return Err(OpError::invalid(format!(
                "{func}: env.{k} must be a string or a secret handle"
            ))
            .into_lua());
        }
    }
    Ok(())
}

/// `host:run` and `host:shell`: one command with the script's options, as a result table.
async fn run_with(
    ctx: &RunCtx,
    tr: &MuxTransport,
    func: &str,
    argv: Vec<String>,
    shell: Option<String>,
    o: &RunOpts,
    timeout: Option<Duration>,
) -> Result<serde_json::Value, OpError> {
    let spec = CommandSpec {
        argv,
        shell,
        env: env_pairs(ctx, func, &o.env)?,
        cwd: o.cwd.clone(),
        stdin: o.stdin.clone().unwrap_or_default().into_bytes(),
        timeout,
        stream: o.stream,
        max_output: o.max_output.unwrap_or(DEFAULT_MAX_OUTPUT),
    };
    let name = tr.host.target.display();
    let out = tr.execute(ctx, spec).await?;
    output_json(func, &name, out, o.check)
}

fn output_json(
    func: &str,
    host: &str,
    o: Output,
    check: bool,
) -> Result<serde_json::Value, OpError> {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    if check && o.code != 0 {
        let tail: String = stderr
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(OpError::new(
            errkinds::COMMAND_FAILED,
            format!("{func}: on {host} the command exited with code {}", o.code),
        )
        .hint(if tail.is_empty() {
            "it printed nothing on stderr".to_string()
        } else {
            format!("its stderr ends with:\n{tail}")
        }));
    }
    let mut r = json!({ "code": o.code, "stdout": stdout, "stderr": stderr });
    if o.truncated {
        r["truncated"] = json!(true);
    }
    Ok(r)
}

fn timeout_of(func: &str, t: Option<f64>) -> mlua::Result<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(t) if t > 0.0 && t.is_finite() => Ok(Some(Duration::from_secs_f64(t))),
        Some(_) => Err(OpError::invalid(format!(
            "{func}: timeout must be a positive number of seconds"
        ))
        .into_lua()),
    }
}

impl UserData for Host {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, h| Ok(h.target.display()));
        fields.add_field_method_get("address", |_, h| Ok(h.target.host.clone()));
        fields.add_field_method_get("port", |_, h| Ok(h.target.port.unwrap_or(22)));
        fields.add_field_method_get("user", |_, h| Ok(h.target.user.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, h, ()| {
            Ok(format!("host {}", h.target.display()))
        });

        methods.add_async_method("run", |lua, h, (argv, o): (Value, Option<Value>)| {
            let h = (*h).clone();
            async move {
                const F: &str = "host:run";
                let argv_json = to_json(&argv, ToJson::default())
                    .map_err(|e| OpError::invalid(format!("{F}: argv: {e}")).into_lua())?;
                let list = match &argv_json {
                    serde_json::Value::Object(m) if m.is_empty() => json!([]),
                    other => other.clone(),
                };
                let argv_list: Vec<String> = from_json(F, list).map_err(|_| {
                    OpError::invalid(format!(
                        "{F}: argv must be a list of strings, e.g. {{\"uname\", \"-a\"}}"
                    ))
                    .hint("for a shell command line, use host:shell(\"...\")")
                    .into_lua()
                })?;
                if argv_list.is_empty() || argv_list[0].is_empty() {
                    return Err(OpError::invalid(format!("{F}: argv is empty")).into_lua());
                }
                let opts_json = super::docker::opts_json(F, &o)?;
                let o: RunOpts = opts(F, o)?;
                check_env_shapes(F, &o.env)?;
                let timeout = timeout_of(F, o.timeout)?;
                let args = json!({ "argv": argv_json, "opts": opts_json });
                let v = h
                    .op(&lua, "ssh.run", args, |ctx, tr| async move {
                        run_with(&ctx, &tr, F, argv_list, None, &o, timeout).await
                    })
                    .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("shell", |lua, h, (script, o): (String, Option<Value>)| {
            let h = (*h).clone();
            async move {
                const F: &str = "host:shell";
                let opts_json = super::docker::opts_json(F, &o)?;
                let o: RunOpts = opts(F, o)?;
                check_env_shapes(F, &o.env)?;
                let timeout = timeout_of(F, o.timeout)?;
                let args = json!({ "script": script, "opts": opts_json });
                let v = h
                    .op(&lua, "ssh.shell", args, |ctx, tr| async move {
                        run_with(&ctx, &tr, F, vec![], Some(script), &o, timeout).await
                    })
                    .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("docker", |lua, h, socket: Option<String>| {
            let h = (*h).clone();
            async move {
                const F: &str = "host:docker";
                let remote = socket.unwrap_or_else(|| "/var/run/docker.sock".to_string());
                if !remote.starts_with('/') {
                    return Err(OpError::invalid(format!(
                        "{F}: the remote socket must be an absolute path (got '{remote}')"
                    ))
                    .into_lua());
                }
                let p = pool(&lua);
                let args = json!({ "socket": remote });
                let v = h
                    .op(&lua, "ssh.docker", args, |_, tr| async move {
                        // A local socket forwarded over the host's master connection.
                        let dir = tempfile::Builder::new()
                            .prefix("sc-ssh-")
                            .tempdir()
                            .map_err(|e| OpError::io(format!("{F}: {e}")))?;
                        let local = dir.path().join("docker.sock");
                        tr.session
                            .request_port_forward(
                                openssh::ForwardType::Local,
                                openssh::Socket::UnixSocket {
                                    path: local.clone().into(),
                                },
                                openssh::Socket::UnixSocket {
                                    path: std::path::PathBuf::from(&remote).into(),
                                },
                            )
                            .await
                            .map_err(|e| classify(&tr.host.target.display(), &e, None))?;
                        p.forwards
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(dir);
                        Ok(json!({ "engine": format!("unix://{}", local.display()) }))
                    })
                    .await?;
                let addr = v
                    .get("engine")
                    .and_then(|a| a.as_str())
                    .unwrap_or_default()
                    .to_string();
                super::docker::engine_table(&lua, Arc::new(super::docker::Engine::new(Some(addr))))
            }
        });

        methods.add_async_method(
            "upload",
            |lua, h, (local, remote, o): (String, String, Option<Value>)| {
                let h = (*h).clone();
                async move {
                    const F: &str = "host:upload";
                    let opts_json = super::docker::opts_json(F, &o)?;
                    let o: UploadOpts = opts(F, o)?;
                    let mode = o.mode.clone().unwrap_or_else(|| "0644".into());
                    if !(3..=4).contains(&mode.len()) || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
                        return Err(OpError::invalid(format!(
                            "{F}: mode must be an octal string like \"0644\" (got '{mode}')"
                        ))
                        .into_lua());
                    }
                    if remote.is_empty() {
                        return Err(OpError::invalid(format!("{F}: empty remote path")).into_lua());
                    }
                    let ctx0 = ctx(&lua)?;
                    let src = super::fs::confine(&ctx0, F, &local, super::fs::Access::Read)
                        .map_err(OpError::into_lua)?;
                    let data = std::fs::read(&src).map_err(|e| {
                        OpError::new(
                            if e.kind() == std::io::ErrorKind::NotFound {
                                kinds::NOT_FOUND
                            } else {
                                kinds::IO
                            },
                            format!("{F}: {local}: {e}"),
                        )
                        .into_lua()
                    })?;
                    let digest = hex::encode(sha2::Sha256::digest(&data));
                    let size = data.len();
                    let args = json!({
                        "local": local, "remote": remote, "opts": opts_json,
                        "sha256": digest, "bytes": data.len(),
                    });
                    let v = h
                        .op(&lua, "ssh.upload", args, |ctx, tr| async move {
                            // Written beside the target and renamed: never half a file.
                            let script = r#"umask 077; t="$1.stagecraft-$$"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1" || { rm -f "$t"; exit 1; }"#;
                            let spec = CommandSpec {
                                argv: vec![
                                    "sh".into(),
                                    "-c".into(),
                                    script.into(),
                                    "sh".into(),
                                    remote.clone(),
                                    mode.clone(),
                                ],
                                shell: None,
                                env: vec![],
                                cwd: None,
                                stdin: data,
                                timeout: None,
                                stream: false,
                                max_output: 64 * 1024,
                            };
                            let name = tr.host.target.display();
                            let out = tr.execute(&ctx, spec).await?;
                            if out.code != 0 {
                                return Err(OpError::new(
                                    errkinds::COMMAND_FAILED,
                                    format!(
                                        "{F}: writing {remote} on {name} failed: {}",
                                        String::from_utf8_lossy(&out.stderr).trim()
                                    ),
                                ));
                            }
                            Ok(json!({ "remote": remote, "bytes": size, "sha256": digest }))
                        })
                        .await?;
                    to_lua(&lua, &v)
                }
            },
        );

        methods.add_async_method("download", |lua, h, (remote, local): (String, String)| {
            let h = (*h).clone();
            async move {
                const F: &str = "host:download";
                let ctx0 = ctx(&lua)?;
                ctx0.require(F, &Request::Plain("fs-write"), "fs-write")
                    .map_err(OpError::into_lua)?;
                let dest = super::fs::confine(&ctx0, F, &local, super::fs::Access::Write)
                    .map_err(OpError::into_lua)?;
                let args = json!({ "remote": remote, "local": local });
                let v = h
                    .op(&lua, "ssh.download", args, |ctx, tr| async move {
                        let spec = CommandSpec {
                            argv: vec!["cat".into(), "--".into(), remote.clone()],
                            shell: None,
                            env: vec![],
                            cwd: None,
                            stdin: vec![],
                            timeout: None,
                            stream: false,
                            max_output: usize::MAX,
                        };
                        let name = tr.host.target.display();
                        let out = tr.execute(&ctx, spec).await?;
                        if out.code != 0 {
                            return Err(OpError::new(
                                if String::from_utf8_lossy(&out.stderr).contains("No such file") {
                                    kinds::NOT_FOUND
                                } else {
                                    errkinds::COMMAND_FAILED
                                },
                                format!(
                                    "{F}: reading {remote} on {name} failed: {}",
                                    String::from_utf8_lossy(&out.stderr).trim()
                                ),
                            ));
                        }
                        let tmp = dest.with_extension("stagecraft-tmp");
                        std::fs::write(&tmp, &out.stdout)
                            .and_then(|_| std::fs::rename(&tmp, &dest))
                            .map_err(|e| OpError::io(format!("{F}: {local}: {e}")))?;
                        Ok(json!({
                            "local": local,
                            "bytes": out.stdout.len(),
                            "sha256": hex::encode(sha2::Sha256::digest(&out.stdout)),
                        }))
                    })
                    .await?;
                to_lua(&lua, &v)
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets_parse() {
        let t = Target::parse("deploy@web-1.example.com:2222").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port),
            (Some("deploy"), "web-1.example.com", Some(2222))
        );
        let t = Target::parse("10.0.0.5").unwrap();
        assert_eq!((t.user, t.host.as_str(), t.port), (None, "10.0.0.5", None));
        let t = Target::parse("root@[::1]:22").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(22)));
        assert!(Target::parse("web:http").is_err());
        assert!(Target::parse("@web").is_err());
        assert!(Target::parse("user@").is_err());
        let mut t = Target::parse("-oProxyCommand=x").unwrap();
        assert!(t.validate().is_err(), "an option is not a host");
        t.host = "ok".into();
        t.known_hosts = Some("yolo".into());
        assert!(t.validate().is_err());
    }

    #[test]
    fn jump_chains_inherit_keys_and_become_one_config() {
        let t: Target = serde_json::from_value(serde_json::json!({
            "host": "10.0.0.5",
            "key": "/keys/100%/id",
            "known_hosts_file": "/kh",
            "jump": {
                "host": "bastion.example.com",
                "user": "ops",
                "key": "/keys/ops",
                "jump": "edge@gw.example.com:2200"
            }
        }))
        .unwrap();
        let hops = t.hops().unwrap();
        let seen: Vec<_> = hops
            .iter()
            .map(|h| (h.user.as_deref(), h.host.as_str(), h.port, h.key.as_deref()))
            .collect();
        // The literal hop takes the key of the host it leads to (bastion), not the target's.
        assert_eq!(
            seen,
            [
                (Some("ops"), "bastion.example.com", None, Some("/keys/ops")),
                (
                    Some("edge"),
                    "gw.example.com",
                    Some(2200),
                    Some("/keys/ops")
                ),
            ]
        );
        let mut t = t;
        t.kex = Some("curve25519-sha256".into());
        let cfg = super::session_config(&t, &hops).unwrap();
        assert!(
            cfg.ends_with("Host *\n  KexAlgorithms curve25519-sha256\n"),
            "{cfg}"
        );
        t.kex = Some("curve25519-sha256\n  ProxyCommand x".into());
        assert!(super::session_config(&t, &hops).is_err());
        assert!(cfg.contains("Host stagecraft-jump-0\n  HostName \"bastion.example.com\"\n  Port 22\n  User \"ops\"\n  IdentityFile \"/keys/ops\"\n"), "{cfg}");
        assert!(cfg.contains("  ProxyJump stagecraft-jump-1\n"), "{cfg}");
        assert!(
            cfg.contains("Host stagecraft-jump-1\n  HostName \"gw.example.com\"\n  Port 2200\n"),
            "{cfg}"
        );
        assert_eq!(cfg.matches("ProxyJump").count(), 1, "{cfg}");
        // `%` is ssh_config's token character; quotes and line breaks are refused.
        let mut odd = hops[0].clone();
        odd.key = Some("/keys/100%/id".into());
        assert!(
            super::jump_config(&[odd.clone()])
                .unwrap()
                .contains("\"/keys/100%%/id\"")
        );
        odd.key = Some("/k\"\n  ProxyCommand x".into());
        assert!(super::jump_config(&[odd]).is_err());
        // Unknown fields in a jump table are errors; chains have a limit.
        let bad = serde_json::from_value::<Target>(
            serde_json::json!({"host": "a", "jump": {"hots": "b"}}),
        );
        assert!(bad.unwrap_err().to_string().contains("hots"));
        let mut deep = serde_json::json!({"host": "h0"});
        for i in 1..=9 {
            deep = serde_json::json!({"host": format!("h{i}"), "jump": deep});
        }
        let deep: Target = serde_json::from_value(deep).unwrap();
        assert!(
            deep.validate()
                .unwrap_err()
                .contains("more than 8 jump hosts")
        );
    }
}
