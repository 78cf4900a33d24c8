//! `stagecraft/docker` (capability `docker`): the Docker Engine API through bollard.
//!
//! The module table is the default engine (`DOCKER_HOST`, else the local socket);
//! `docker.connect{host=}` returns another engine table with the same functions. Engines connect
//! lazily, on the first live call, so a replay never opens a socket. Every Engine API request goes
//! through the one recording path; requests that change the engine commit their intent first.
//!
//! Note: access to a Docker Engine is root-equivalent on the engine's host (a container can mount
//! `/`); the `docker` capability should be granted accordingly.

mod container;
mod context;
mod images;
mod objects;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use crate::runtime::caps::Request;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::secrets::SecretHandle;
use crate::runtime::value::{ToJson, to_json};
use crate::runtime::{RunCtx, ctx};

pub use container::Container;

/// Error kinds specific to engines and containers.
pub mod errkinds {
    /// The engine cannot be reached (socket missing, refused, permission).
    pub const UNAVAILABLE: &str = "unavailable";
    /// A name is already in use, a resource is in use.
    pub const CONFLICT: &str = "conflict";
    /// A container did not become healthy.
    pub const UNHEALTHY: &str = "unhealthy";
    /// A registry refused the credentials.
    pub const AUTHENTICATION: &str = "authentication_failed";
    /// Any other error the engine reported.
    pub const ENGINE: &str = "engine_error";
}

const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// One Docker Engine: where it is and, once a live call needed it, the connection.
pub struct Engine {
    /// Set by `docker.connect{host=}`; `None`: `DOCKER_HOST` or the local socket.
    host: Option<String>,
    client: tokio::sync::OnceCell<Docker>,
}

impl Engine {
    pub fn new(host: Option<String>) -> Engine {
        Engine {
            host,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// The address used, for messages.
    pub fn address(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_string())
    }

    /// The connection, made (and the API version negotiated) on first use.
    pub async fn client(&self, func: &str) -> Result<&Docker, OpError> {
        self.client
            .get_or_try_init(|| async {
                let addr = self.address();
                let d = Docker::connect_with_host(&addr)
                    .map_err(|e| self.unreachable(func, &e.to_string()))?
                    .with_timeout(Duration::from_secs(3600));
                d.negotiate_version()
                    .await
                    .map_err(|e| self.unreachable(func, &crate::util::error_chain(&e)))
            })
            .await
    }

    fn unreachable(&self, func: &str, why: &str) -> OpError {
        let addr = self.address();
        let hint = if why.contains("ermission denied") {
            "add your user to the docker group (then log in again), or run with access to the socket".to_string()
        } else if addr.starts_with("unix://") {
            format!(
                "is the Docker daemon running? start it (e.g. `systemctl start docker`), or point \
                 DOCKER_HOST / docker.connect{{host=...}} at a running engine (tried {addr})"
            )
        } else {
            format!("check that the engine at {addr} is up and reachable")
        };
        OpError::new(
            errkinds::UNAVAILABLE,
            format!("{func}: cannot reach the Docker Engine at {addr}: {why}"),
        )
        .hint(hint)
    }

    /// Turn a bollard error into a structured one. `what` names the object for a 404
    /// ("container 3f2a… (web-1)").
    pub fn fail(&self, func: &str, what: Option<&str>, e: bollard::errors::Error) -> OpError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code,
                message,
            } => {
                let message = message.trim().to_string();
                match status_code {
                    404 => match what {
                        Some(w) => OpError::new(
                            kinds::NOT_FOUND,
                            format!("{func}: {w} no longer exists ({message})"),
                        ),
                        None => OpError::new(kinds::NOT_FOUND, format!("{func}: {message}")),
                    },
                    // 403: refused because it is in use (a network with endpoints, say).
                    409 | 403 => OpError::new(errkinds::CONFLICT, format!("{func}: {message}")),
                    400 => OpError::new(kinds::INVALID, format!("{func}: {message}")),
                    _ => OpError::new(
                        errkinds::ENGINE,
                        format!("{func}: the engine answered {status_code}: {message}"),
                    ),
                }
            }
            E::RequestTimeoutError => OpError::new(
                kinds::TIMEOUT,
                format!("{func}: the engine did not answer in time"),
            ),
            other => {
                let why = crate::util::error_chain(&other);
                if why.contains("onnection refused")
                    || why.contains("No such file")
                    || why.contains("ermission denied")
                {
                    self.unreachable(func, &why)
                } else {
                    OpError::new(errkinds::ENGINE, format!("{func}: {why}"))
                }
            }
        }
    }
}

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = engine_table(lua, Arc::new(Engine::new(None)))?;
    t.set(
        "connect",
        lua.create_function(|lua, o: Option<Value>| {
            let o: ConnectOpts = super::opts("docker.connect", o)?;
            let Some(host) = o.host else {
                return Err(OpError::invalid(
                    "docker.connect: host is required, e.g. {host = \"unix:///var/run/docker.sock\"} or \"tcp://10.0.0.5:2375\"",
                )
                .into_lua());
            };
            if !["unix://", "tcp://", "http://"]
                .iter()
                .any(|p| host.starts_with(p))
            {
                return Err(OpError::invalid(format!(
                    "docker.connect: unsupported host '{host}' (use unix:///path/to/docker.sock or tcp://HOST:PORT)"
                ))
                .into_lua());
            }
            engine_table(lua, Arc::new(Engine::new(Some(host))))
        })?,
    )?;
    Ok(t)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConnectOpts {
    host: Option<String>,
}

/// The functions of one engine. The same table shape for the default and connected engines.
pub fn engine_table(lua: &Lua, eng: Arc<Engine>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("address", eng.host.clone())?;
    images::register(lua, &t, &eng)?;
    container::register(lua, &t, &eng)?;
    objects::register(lua, &t, &eng)?;
    Ok(t)
}

/// An async Lua function bound to an engine: `f(lua, engine, args)`.
pub fn engine_fn<A, R, F, Fut>(lua: &Lua, eng: &Arc<Engine>, f: F) -> mlua::Result<mlua::Function>
where
    A: mlua::FromLuaMulti + 'static,
    R: mlua::IntoLuaMulti + 'static,
    F: Fn(Lua, Arc<Engine>, A) -> Fut + Send + 'static,
    Fut: Future<Output = mlua::Result<R>> + Send + 'static,
{
    let eng = eng.clone();
    lua.create_async_function(move |lua, args: A| f(lua, eng.clone(), args))
}

/// Parse script options into JSON (secret handles as references) for the ledger.
pub fn opts_json(func: &str, v: &Option<Value>) -> mlua::Result<serde_json::Value> {
    match v {
        Some(v) => to_json(v, ToJson::default())
            .map_err(|e| OpError::invalid(format!("{func}: {e}")).into_lua()),
        None => Ok(json!({})),
    }
}

/// Run one Engine API operation through the recording path: capability check, ledger, effect.
pub async fn call<F, Fut>(
    lua: &Lua,
    eng: &Arc<Engine>,
    op: &'static str,
    mut args: serde_json::Value,
    effect: F,
) -> mlua::Result<serde_json::Value>
where
    F: FnOnce(Arc<RunCtx>, Docker, Arc<Engine>) -> Fut,
    Fut: Future<Output = Result<serde_json::Value, OpError>>,
{
    let ctx = ctx(lua)?;
    if let Some(h) = &eng.host
        && let Some(obj) = args.as_object_mut()
    {
        obj.insert("engine".into(), json!(h));
    }
    let c2 = ctx.clone();
    ctx.record(op, args, || async move {
        c2.require(op, &Request::Plain("docker"), "docker")?;
        let d = eng.client(op).await?.clone();
        effect(c2.clone(), d, eng.clone()).await
    })
    .await
    .map_err(OpError::into_lua)
}

/// `filters = { label = {"a=b"}, name = "web" }` -> the engine's filter map.
#[derive(Deserialize, Default, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

pub fn filter_map(f: BTreeMap<String, OneOrMany>) -> Option<HashMap<String, Vec<String>>> {
    if f.is_empty() {
        return None;
    }
    Some(
        f.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    OneOrMany::None => vec![],
                    OneOrMany::One(s) => vec![s],
                    OneOrMany::Many(v) => v,
                };
                (k, v)
            })
            .collect(),
    )
}

/// Resolve a string-or-secret-handle value at the moment a request is sent.
pub fn resolve_value(
    ctx: &RunCtx,
    func: &str,
    field: &str,
    v: &serde_json::Value,
) -> Result<String, OpError> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => {
            let h = SecretHandle::from_reference(other).ok_or_else(|| {
                OpError::invalid(format!(
                    "{func}: {field} must be a string or a secret handle"
                ))
            })?;
            ctx.secrets.resolve(&h).ok_or_else(|| {
                OpError::new(
                    kinds::NOT_FOUND,
                    format!("{func}: secret {} is not loaded in this run", h.name),
                )
            })
        }
    }
}

/// Serialize an engine response for the script and the ledger.
pub fn to_value<T: serde::Serialize>(func: &str, v: &T) -> Result<serde_json::Value, OpError> {
    serde_json::to_value(v).map_err(|e| OpError::new("internal", format!("{func}: {e}")))
}

/// Write engine progress (build steps, pull/push status) to stderr, scrubbed.
pub fn progress(ctx: &RunCtx, text: &str) {
    if !text.is_empty() {
        ctx.emit(text, true);
    }
}

/// Seconds (script side) to nanoseconds (engine side).
pub fn nanos(func: &str, field: &str, secs: Option<f64>) -> Result<Option<i64>, OpError> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some((s * 1e9) as i64)),
        Some(_) => Err(OpError::invalid(format!(
            "{func}: {field} must be a non-negative number of seconds"
        ))),
    }
}

/// Ops that change an engine: their intent is committed to the ledger before they run.
pub fn changes_the_world(op: &str) -> bool {
    op.starts_with("docker.")
        && !matches!(
            op,
            "docker.images.inspect"
                | "docker.images.list"
                | "docker.containers.list"
                | "docker.containers.get"
                | "docker.container.inspect"
                | "docker.container.logs"
                | "docker.container.wait_healthy"
                | "docker.container.wait"
                | "docker.networks.inspect"
                | "docker.networks.list"
                | "docker.volumes.inspect"
                | "docker.volumes.list"
        )
}
