//! Containers: `docker.run{...}` and `docker.containers.get(id)` return a container handle (an
//! id-holding handle: every method asks the engine again, and a removed container gives a clear
//! "no longer exists" error); `docker.containers.list{...}` returns plain data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters as q;
use futures::StreamExt;
use mlua::{Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};
use serde::Deserialize;
use serde_json::json;

use super::{Engine, OneOrMany, call, engine_fn, errkinds, filter_map, nanos, opts_json, to_value};
use crate::api::{from_json, opts, seq};
use crate::runtime::RunCtx;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::value::{ToJson, to_json, to_lua};

/// A container on one engine, by id.
#[derive(Clone)]
pub struct Container {
    pub engine: Arc<Engine>,
    pub id: String,
    pub name: String,
}

impl Container {
    fn what(&self) -> String {
        format!("container {} ({})", short(&self.id), self.name)
    }
    /// `what()` when a network call failed because the container is gone, `None` otherwise (a
    /// 404 for a missing network must not claim that the container no longer exists).
    fn gone(&self, err: &bollard::errors::Error) -> Option<String> {
        match err {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            } if message.contains("No such container") => Some(self.what()),
            _ => None,
        }
    }
    fn args(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut a = json!({ "container": self.id, "name": self.name });
        if let (Some(obj), serde_json::Value::Object(x)) = (a.as_object_mut(), extra) {
            obj.extend(x);
        }
        a
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A handle from a recorded `{id, name}` result.
fn handle(eng: &Arc<Engine>, v: &serde_json::Value) -> mlua::Result<Container> {
    let id = v.get("id").and_then(|s| s.as_str()).unwrap_or_default();
    if id.is_empty() {
        return Err(OpError::new("internal", "docker: malformed container result").into_lua());
    }
    Ok(Container {
        engine: eng.clone(),
        id: id.to_string(),
        name: v
            .get("name")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
    })
}

pub fn register(lua: &Lua, t: &Table, eng: &Arc<Engine>) -> mlua::Result<()> {
    t.set("run", engine_fn(lua, eng, run)?)?;
    let containers = lua.create_table()?;
    containers.set(
        "get",
        engine_fn(lua, eng, |lua, e, name: String| async move {
            const F: &str = "docker.containers.get";
            let args = json!({ "container": name });
            let v = call(&lua, &e, F, args, |_, d, e| async move {
                let r = d
                    .inspect_container(&name, None::<q::InspectContainerOptions>)
                    .await
                    .map_err(|err| e.fail(F, None, err))?;
                Ok(json!({
                    "id": r.id,
                    "name": r.name.unwrap_or_default().trim_start_matches('/'),
                }))
            })
            .await?;
            handle(&e, &v)
        })?,
    )?;
    containers.set(
        "list",
        engine_fn(lua, eng, |lua, e, o: Option<Value>| async move {
            const F: &str = "docker.containers.list";
            let args = opts_json(F, &o)?;
            let o: ListOpts = opts(F, o)?;
            let v = call(&lua, &e, F, args, |_, d, e| async move {
                let r = d
                    .list_containers(Some(q::ListContainersOptions {
                        all: o.all,
                        filters: filter_map(o.filters),
                        ..Default::default()
                    }))
                    .await
                    .map_err(|err| e.fail(F, None, err))?;
                to_value(F, &r)
            })
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;
    // `docker.containers{filters = ...}` is `docker.containers.list{...}`.
    let list: mlua::Function = containers.get("list")?;
    let meta = lua.create_table()?;
    meta.set(
        "__call",
        lua.create_async_function(move |_, (_, o): (Value, Option<Value>)| {
            let list = list.clone();
            async move { list.call_async::<Value>(o).await }
        })?,
    )?;
    containers.set_metatable(Some(meta))?;
    t.set("containers", containers)?;
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ListOpts {
    /// Include stopped containers.
    all: bool,
    filters: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunOpts {
    image: Option<String>,
    name: Option<String>,
    /// Values: strings or secret handles (resolved when the request is sent).
    env: BTreeMap<String, serde_json::Value>,
    #[serde(deserialize_with = "seq")]
    ports: Vec<PortSpec>,
    #[serde(deserialize_with = "seq")]
    volumes: Vec<MountSpec>,
    network: Option<String>,
    #[serde(deserialize_with = "seq")]
    aliases: Vec<String>,
    networks: Option<NetworksSpec>,
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "seq")]
    command: Vec<String>,
    #[serde(deserialize_with = "seq")]
    entrypoint: Vec<String>,
    healthcheck: Option<HealthSpec>,
    restart: Option<String>,
    user: Option<String>,
    workdir: Option<String>,
    hostname: Option<String>,
    stop_signal: Option<String>,
    /// Seconds the engine waits after the stop signal before killing.
    stop_timeout: Option<f64>,
    /// Start the container (default true); false only creates it.
    start: Option<bool>,
    /// `missing` (default), `always` or `never`.
    pull: Option<String>,
}

enum PortSpec {
    Short(String),
    Number(u16),
    Long(PortLong),
}

/// A string-or-table option whose table form is strict: a typo in the table gets the
/// "did you mean" error of that table, not serde's "did not match any variant".
fn strict_table<'de, D, T>(v: serde_json::Value) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(PortSpec::Short(s)),
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(PortSpec::Number)
                .ok_or_else(|| serde::de::Error::custom(format!("port {n} is not a port number"))),
            v @ serde_json::Value::Object(_) => strict_table::<D, _>(v).map(PortSpec::Long),
            other => Err(serde::de::Error::custom(format!(
                "a port is a string like \"8081:8080\" or a table {{target=, published=}}, not {other}"
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortLong {
    target: u16,
    published: Option<serde_json::Value>,
    host_ip: Option<String>,
    protocol: Option<String>,
}

enum MountSpec {
    Short(String),
    Long(MountLong),
}

impl<'de> Deserialize<'de> for MountSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(MountSpec::Short(s)),
            v @ serde_json::Value::Object(_) => strict_table::<D, _>(v).map(MountSpec::Long),
            other => Err(serde::de::Error::custom(format!(
                "a volume is a string like \"data:/data\" or a table {{type=, source=, target=}}, not {other}"
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MountLong {
    #[serde(rename = "type")]
    kind: Option<String>,
    source: Option<String>,
    target: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NetworksSpec {
    List(Vec<String>),
    Map(BTreeMap<String, NetOpts>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct NetOpts {
    #[serde(deserialize_with = "seq")]
    aliases: Vec<String>,
}

enum HealthSpec {
    Off(bool),
    On(Health),
}

impl<'de> Deserialize<'de> for HealthSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(b) => Ok(HealthSpec::Off(b)),
            v @ serde_json::Value::Object(_) => strict_table::<D, _>(v).map(HealthSpec::On),
            other => Err(serde::de::Error::custom(format!(
                "healthcheck is a table {{test=, interval=, ...}} or false, not {other}"
            ))),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Health {
    /// `{"CMD", ...}`, `{"CMD-SHELL", "..."}` or a string (run by the image's shell).
    test: Option<OneOrMany>,
    interval: Option<f64>,
    timeout: Option<f64>,
    retries: Option<i64>,
    start_period: Option<f64>,
}

async fn run(lua: Lua, eng: Arc<Engine>, o: Value) -> mlua::Result<Container> {
    const F: &str = "docker.run";
    let ctx = crate::runtime::ctx(&lua)?;
    let args = to_json(&o, ToJson::default())
        .map_err(|e| OpError::invalid(format!("{F}: {e}")).into_lua())?;
    let ro: RunOpts = from_json(F, args.clone())?;
    let Some(image) = ro.image.clone().filter(|i| !i.is_empty()) else {
        return Err(OpError::invalid(format!("{F}: image is required")).into_lua());
    };
    // Validate everything before the call is recorded: a caller mistake is not an engine call.
    let body = create_body(&ctx, &image, &ro, false).map_err(OpError::into_lua)?;
    drop(body);
    let pull_policy = ro.pull.clone().unwrap_or_else(|| "missing".into());
    if !matches!(pull_policy.as_str(), "missing" | "always" | "never") {
        return Err(OpError::invalid(format!(
            "{F}: pull must be \"missing\", \"always\" or \"never\" (got '{pull_policy}')"
        ))
        .into_lua());
    }
    let e2 = eng.clone();
    let v = call(&lua, &eng, F, args, |ctx, d, _| async move {
        create_and_start(&ctx, &e2, &d, &image, ro, &pull_policy).await
    })
    .await?;
    handle(&eng, &v)
}

/// Parse `"8080"`, `"8081:8080"`, `"127.0.0.1:8081:8080"`, `"127.0.0.1::8080/udp"`.
fn parse_port(s: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, p)) if matches!(p, "tcp" | "udp" | "sctp") => (a, p),
        Some((_, p)) => return Err(format!("unknown protocol '{p}'")),
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = if spec.starts_with('[') {
        // [::1]:8081:8080
        let end = spec.find(']').ok_or("unterminated [")?;
        let ip = &spec[1..end];
        let rest: Vec<&str> = spec[end + 1..].trim_start_matches(':').split(':').collect();
        let mut v = vec![ip];
        v.extend(rest);
        v
    } else {
        spec.split(':').collect()
    };
    let (ip, published, target) = match parts.as_slice() {
        [t] => (None, None, *t),
        [p, t] => (None, Some(*p), *t),
        [ip, p, t] => (Some(*ip), Some(*p), *t),
        _ => return Err("expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]".into()),
    };
    target
        .parse::<u16>()
        .map_err(|_| format!("'{target}' is not a port number"))?;
    if let Some(p) = published.filter(|p| !p.is_empty()) {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' is not a port number"))?;
    }
    Ok((
        format!("{target}/{proto}"),
        published.filter(|p| !p.is_empty()).map(str::to_string),
        ip.filter(|i| !i.is_empty()).map(str::to_string),
    ))
}

/// The Engine API create body. `resolve`: put secret values in (only when sending).
fn create_body(
    ctx: &RunCtx,
    image: &str,
    o: &RunOpts,
    resolve: bool,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.run";
    let mut env = Vec::new();
    for (k, v) in &o.env {
        if k.is_empty() || k.contains('=') {
            return Err(OpError::invalid(format!(
                "{F}: env name '{k}' is not valid"
            )));
        }
        let value = if resolve {
            super::resolve_value(ctx, F, &format!("env.{k}"), v)?
        } else {
            if !(v.is_string() || v.is_number() || v.is_boolean())
                && crate::runtime::secrets::SecretHandle::from_reference(v).is_none()
            {
                return Err(OpError::invalid(format!(
                    "{F}: env.{k} must be a string or a secret handle"
                )));
            }
            String::new()
        };
        env.push(format!("{k}={value}"));
    }
    let mut exposed = serde_json::Map::new();
    let mut bindings: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (i, p) in o.ports.iter().enumerate() {
        let (key, published, ip) = match p {
            PortSpec::Number(n) => (format!("{n}/tcp"), None, None),
            PortSpec::Short(s) => parse_port(s)
                .map_err(|e| OpError::invalid(format!("{F}: ports[{}] '{s}': {e}", i + 1)))?,
            PortSpec::Long(l) => {
                let proto = l.protocol.clone().unwrap_or_else(|| "tcp".into());
                let published = match &l.published {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    Some(_) => {
                        return Err(OpError::invalid(format!(
                            "{F}: ports[{}].published must be a port number",
                            i + 1
                        )));
                    }
                };
                (
                    format!("{}/{proto}", l.target),
                    published,
                    l.host_ip.clone(),
                )
            }
        };
        exposed.insert(key.clone(), json!({}));
        bindings.entry(key).or_default().push(json!({
            "HostIp": ip.unwrap_or_default(),
            "HostPort": published.unwrap_or_default(),
        }));
    }
    let mut mounts = Vec::new();
    for (i, m) in o.volumes.iter().enumerate() {
        let (kind, source, target, ro) = match m {
            MountSpec::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (src, tgt, mode) = match parts.as_slice() {
                    [t] => (None, *t, None),
                    [s, t] => (Some(*s), *t, None),
                    [s, t, m] => (Some(*s), *t, Some(*m)),
                    _ => {
                        return Err(OpError::invalid(format!(
                            "{F}: volumes[{}] '{s}': expected SOURCE:TARGET[:ro]",
                            i + 1
                        )));
                    }
                };
                let ro = match mode {
                    None | Some("rw") => false,
                    Some("ro") => true,
                    Some(other) => {
                        return Err(OpError::invalid(format!(
                            "{F}: volumes[{}]: unknown mode '{other}' (ro or rw)",
                            i + 1
                        )));
                    }
                };
                let kind = match src {
                    Some(s) if s.starts_with('/') || s.starts_with('.') => "bind",
                    _ => "volume",
                };
                (
                    kind.to_string(),
                    src.map(str::to_string),
                    tgt.to_string(),
                    ro,
                )
            }
            MountSpec::Long(l) => (
                l.kind.clone().unwrap_or_else(|| "volume".into()),
                l.source.clone(),
                l.target.clone(),
                l.read_only,
            ),
        };
        if !target.starts_with('/') {
            return Err(OpError::invalid(format!(
                "{F}: volumes[{}]: the target '{target}' must be an absolute path in the container",
                i + 1
            )));
        }
        let source = match (kind.as_str(), source) {
            ("bind", Some(s)) if s.starts_with('~') => {
                return Err(OpError::invalid(format!(
                    "{F}: volumes[{}]: '{s}': a home-relative source is not expanded",
                    i + 1
                ))
                .hint("give an absolute path, or one relative to the project"));
            }
            ("bind", Some(s)) if !s.starts_with('/') => Some(
                ctx.project
                    .root
                    .join(s.trim_start_matches("./"))
                    .to_string_lossy()
                    .into_owned(),
            ),
            ("bind", None) => {
                return Err(OpError::invalid(format!(
                    "{F}: volumes[{}]: a bind mount needs a source",
                    i + 1
                )));
            }
            ("bind" | "volume" | "tmpfs", s) => s,
            (other, _) => {
                return Err(OpError::invalid(format!(
                    "{F}: volumes[{}]: unknown type '{other}' (volume, bind or tmpfs)",
                    i + 1
                )));
            }
        };
        let mut m = json!({ "Type": kind, "Target": target, "ReadOnly": ro });
        if let Some(s) = source {
            m["Source"] = json!(s);
        }
        mounts.push(m);
    }
    let nets = networks(o);
    let mut host = json!({
        "PortBindings": bindings,
        "Mounts": mounts,
    });
    if let Some((first, aliases)) = nets.first() {
        host["NetworkMode"] = json!(first);
        let _ = aliases;
    }
    if let Some(r) = &o.restart {
        let (name, count) = match r.split_once(':') {
            Some(("on-failure", n)) => (
                "on-failure",
                n.parse::<i64>().map_err(|_| {
                    OpError::invalid(format!(
                        "{F}: restart '{r}': the retry count is not a number"
                    ))
                })?,
            ),
            None if matches!(
                r.as_str(),
                "no" | "always" | "unless-stopped" | "on-failure"
            ) =>
            {
                (r.as_str(), 0)
            }
            _ => {
                return Err(OpError::invalid(format!(
                    "{F}: restart must be no, always, unless-stopped or on-failure[:N] (got '{r}')"
                )));
            }
        };
        host["RestartPolicy"] = json!({ "Name": name, "MaximumRetryCount": count });
    }
    let mut body = json!({
        "Image": image,
        "Env": env,
        "Labels": o.labels,
        "ExposedPorts": exposed,
        "HostConfig": host,
    });
    if !o.command.is_empty() {
        body["Cmd"] = json!(o.command);
    }
    if !o.entrypoint.is_empty() {
        body["Entrypoint"] = json!(o.entrypoint);
    }
    for (field, v) in [
        ("User", &o.user),
        ("WorkingDir", &o.workdir),
        ("Hostname", &o.hostname),
        ("StopSignal", &o.stop_signal),
    ] {
        if let Some(v) = v {
            body[field] = json!(v);
        }
    }
    if let Some(t) = o.stop_timeout {
        if !(t.is_finite() && t >= 0.0) {
            return Err(OpError::invalid(format!(
                "{F}: stop_timeout must be a non-negative number of seconds"
            )));
        }
        body["StopTimeout"] = json!(t.ceil() as i64);
    }
    match &o.healthcheck {
        None => {}
        Some(HealthSpec::Off(false)) => body["Healthcheck"] = json!({ "Test": ["NONE"] }),
        Some(HealthSpec::Off(true)) => {
            return Err(OpError::invalid(format!(
                "{F}: healthcheck = true means nothing; give {{test = ...}} or false to disable the image's"
            )));
        }
        Some(HealthSpec::On(h)) => {
            let test = match &h.test {
                None | Some(OneOrMany::None) => None,
                Some(OneOrMany::One(s)) => Some(vec!["CMD-SHELL".to_string(), s.clone()]),
                Some(OneOrMany::Many(v)) => {
                    if !matches!(
                        v.first().map(String::as_str),
                        Some("CMD" | "CMD-SHELL" | "NONE")
                    ) {
                        return Err(OpError::invalid(format!(
                            "{F}: healthcheck.test must start with \"CMD\", \"CMD-SHELL\" or \"NONE\""
                        )));
                    }
                    Some(v.clone())
                }
            };
            let mut hc = serde_json::Map::new();
            if let Some(t) = test {
                hc.insert("Test".into(), json!(t));
            }
            for (field, v) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
            ] {
                if let Some(n) = nanos(F, &format!("healthcheck.{}", field.to_lowercase()), v)? {
                    // The engine refuses intervals under 1 ms.
                    hc.insert(field.into(), json!(n.max(1_000_000)));
                }
            }
            if let Some(r) = h.retries {
                hc.insert("Retries".into(), json!(r));
            }
            body["Healthcheck"] = serde_json::Value::Object(hc);
        }
    }
    if let Some((first, aliases)) = nets.first()
        && !aliases.is_empty()
    {
        body["NetworkingConfig"] = json!({ "EndpointsConfig": { first: { "Aliases": aliases } } });
    }
    Ok(body)
}

/// (network, aliases) in order: `network` + `aliases` first, then `networks`.
fn networks(o: &RunOpts) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    if let Some(n) = &o.network {
        out.push((n.clone(), o.aliases.clone()));
    }
    match &o.networks {
        None => {}
        Some(NetworksSpec::List(l)) => {
            for n in l {
                if !out.iter().any(|(x, _)| x == n) {
                    out.push((n.clone(), vec![]));
                }
            }
        }
        Some(NetworksSpec::Map(m)) => {
            for (n, opts) in m {
                if !out.iter().any(|(x, _)| x == n) {
                    out.push((n.clone(), opts.aliases.clone()));
                }
            }
        }
    }
    out
}

async fn create_and_start(
    ctx: &RunCtx,
    e: &Engine,
    d: &Docker,
    image: &str,
    o: RunOpts,
    pull_policy: &str,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.run";
    let body = create_body(ctx, image, &o, true)?;
    let body: bollard::models::ContainerCreateBody = serde_json::from_value(body)
        .map_err(|err| OpError::new("internal", format!("{F}: {err}")))?;
    let options = q::CreateContainerOptions {
        name: o.name.clone(),
        ..Default::default()
    };
    if pull_policy == "always" {
        super::images::pull(ctx, e, d, image, None).await?;
    }
    let created = match d
        .create_container(Some(options.clone()), body.clone())
        .await
    {
        Ok(r) => r,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        }) if message.contains("image") => {
            if pull_policy == "never" {
                return Err(OpError::new(
                    kinds::NOT_FOUND,
                    format!("{F}: image {image} is not on the engine"),
                )
                .hint("build it with docker.build, bring it with docker.images.load, or allow pulling (pull = \"missing\")"));
            }
            super::images::pull(ctx, e, d, image, None).await?;
            d.create_container(Some(options), body)
                .await
                .map_err(|err| e.fail(F, None, err))?
        }
        Err(err) => {
            let mut fail = e.fail(F, None, err);
            if fail.kind == errkinds::CONFLICT {
                fail.hint = Some(
                    "a container with that name exists; remove it first or pick another name"
                        .into(),
                );
            }
            return Err(fail);
        }
    };
    let id = created.id;
    // Nothing half-applied: a container that cannot be wired up and started is removed.
    let finish = async {
        for (net, aliases) in networks(&o).into_iter().skip(1) {
            let req: bollard::models::NetworkConnectRequest = serde_json::from_value(json!({
                "Container": id,
                "EndpointConfig": { "Aliases": aliases },
            }))
            .map_err(|err| OpError::new("internal", format!("{F}: {err}")))?;
            d.connect_network(&net, req)
                .await
                .map_err(|err| e.fail(F, None, err))?;
        }
        if o.start.unwrap_or(true) {
            d.start_container(&id, None::<q::StartContainerOptions>)
                .await
                .map_err(|err| e.fail(F, None, err))?;
        }
        let r = d
            .inspect_container(&id, None::<q::InspectContainerOptions>)
            .await
            .map_err(|err| e.fail(F, None, err))?;
        Ok::<_, OpError>(
            r.name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
        )
    };
    match finish.await {
        Ok(name) => Ok(json!({ "id": id, "name": name, "warnings": created.warnings })),
        Err(err) => {
            let _ = d
                .remove_container(
                    &id,
                    Some(q::RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
            Err(err)
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct WaitOpts {
    /// Seconds (default 60).
    timeout: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct LogsOpts {
    /// Last N lines (default all).
    tail: Option<u64>,
    /// Unix time in seconds.
    since: Option<i64>,
    /// Keep reading until the container stops (or `timeout`).
    follow: bool,
    /// Show the lines on the terminal (stderr), prefixed with the container name, as they come.
    stream: bool,
    timestamps: bool,
    /// Seconds; with `follow`, stop reading after this long.
    timeout: Option<f64>,
    /// Most bytes kept (default 16 MiB).
    max_output: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ExecOpts {
    env: BTreeMap<String, serde_json::Value>,
    user: Option<String>,
    workdir: Option<String>,
    timeout: Option<f64>,
    max_output: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct StopOpts {
    /// Seconds to wait after the stop signal before the engine kills (default: the container's).
    timeout: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RemoveOpts {
    force: bool,
    /// Also remove anonymous volumes.
    volumes: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConnectOpts {
    #[serde(deserialize_with = "seq")]
    aliases: Vec<String>,
}

const DEFAULT_MAX_OUTPUT: usize = 16 * 1024 * 1024;

impl UserData for Container {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, c| Ok(c.id.clone()));
        fields.add_field_method_get("name", |_, c| Ok(c.name.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, c, ()| Ok(c.what()));

        methods.add_async_method("inspect", |lua, c, ()| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.inspect";
                let e = c.engine.clone();
                let v = call(&lua, &e, F, c.args(json!({})), |_, d, _| async move {
                    let r = d
                        .inspect_container(&c.id, None::<q::InspectContainerOptions>)
                        .await
                        .map_err(|err| c.engine.fail(F, Some(&c.what()), err))?;
                    to_value(F, &r)
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("wait_healthy", |lua, c, o: Option<Value>| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.wait_healthy";
                let args = c.args(json!({ "opts": opts_json(F, &o)? }));
                let o: WaitOpts = opts(F, o)?;
                let timeout = positive(F, "timeout", o.timeout.unwrap_or(60.0))?;
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |_, d, _| async move {
                    wait_healthy(&c, &d, timeout).await
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("wait", |lua, c, o: Option<Value>| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.wait";
                let args = c.args(json!({ "opts": opts_json(F, &o)? }));
                let o: WaitOpts = opts(F, o)?;
                let timeout = o.timeout.map(|t| positive(F, "timeout", t)).transpose()?;
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |_, d, _| async move {
                    let wait = async {
                        let mut s = d.wait_container(&c.id, None::<q::WaitContainerOptions>);
                        match s.next().await {
                            Some(Ok(r)) => Ok(json!({ "code": r.status_code })),
                            Some(Err(bollard::errors::Error::DockerContainerWaitError {
                                code,
                                ..
                            })) => Ok(json!({ "code": code })),
                            Some(Err(err)) => Err(c.engine.fail(F, Some(&c.what()), err)),
                            None => Err(OpError::new(
                                errkinds::ENGINE,
                                format!("{F}: the engine ended the wait without a status"),
                            )),
                        }
                    };
                    match timeout {
                        Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| {
                            OpError::new(
                                kinds::TIMEOUT,
                                format!("{F}: {} still running after {:?}", c.what(), t),
                            )
                        })?,
                        None => wait.await,
                    }
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("logs", |lua, c, o: Option<Value>| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.logs";
                let args = c.args(json!({ "opts": opts_json(F, &o)? }));
                let o: LogsOpts = opts(F, o)?;
                let timeout = o.timeout.map(|t| positive(F, "timeout", t)).transpose()?;
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |ctx, d, _| async move {
                    logs(&ctx, &c, &d, &o, timeout).await
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("exec", |lua, c, (argv, o): (Value, Option<Value>)| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.exec";
                let argv_json = to_json(&argv, ToJson::default())
                    .map_err(|e| OpError::invalid(format!("{F}: argv: {e}")).into_lua())?;
                // An empty table arrives as an empty object.
                let as_list = match &argv_json {
                    serde_json::Value::Object(m) if m.is_empty() => json!([]),
                    other => other.clone(),
                };
                let argv_list: Vec<String> = from_json(F, as_list).map_err(|_| {
                    OpError::invalid(format!(
                        "{F}: argv must be a list of strings, e.g. {{\"cat\", \"/etc/hostname\"}}"
                    ))
                    .into_lua()
                })?;
                if argv_list.is_empty() {
                    return Err(OpError::invalid(format!("{F}: argv is empty")).into_lua());
                }
                let args = c.args(json!({ "argv": argv_json, "opts": opts_json(F, &o)? }));
                let o: ExecOpts = opts(F, o)?;
                let timeout = o.timeout.map(|t| positive(F, "timeout", t)).transpose()?;
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |ctx, d, _| async move {
                    let run = exec(&ctx, &c, &d, argv_list, &o);
                    match timeout {
                        Some(t) => tokio::time::timeout(t, run).await.map_err(|_| {
                            OpError::new(kinds::TIMEOUT, format!("{F}: timed out after {t:?}"))
                        })?,
                        None => run.await,
                    }
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("start", |lua, c, ()| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.start";
                let e = c.engine.clone();
                let v = call(&lua, &e, F, c.args(json!({})), |_, d, _| async move {
                    match d
                        .start_container(&c.id, None::<q::StartContainerOptions>)
                        .await
                    {
                        Ok(()) => Ok(json!({ "started": true })),
                        Err(bollard::errors::Error::DockerResponseServerError {
                            status_code: 304,
                            ..
                        }) => Ok(json!({ "started": false })),
                        Err(err) => Err(c.engine.fail(F, Some(&c.what()), err)),
                    }
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("stop", |lua, c, o: Option<Value>| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.stop";
                let args = c.args(json!({ "opts": opts_json(F, &o)? }));
                let o: StopOpts = opts(F, o)?;
                if let Some(t) = o.timeout
                    && !(t.is_finite() && t >= 0.0)
                {
                    return Err(OpError::invalid(format!(
                        "{F}: timeout must be a non-negative number of seconds"
                    ))
                    .into_lua());
                }
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |_, d, _| async move {
                    let opts = q::StopContainerOptions {
                        t: o.timeout.map(|t| t.ceil() as i32),
                        signal: None,
                    };
                    match d.stop_container(&c.id, Some(opts)).await {
                        Ok(()) => Ok(json!({ "stopped": true })),
                        Err(bollard::errors::Error::DockerResponseServerError {
                            status_code: 304,
                            ..
                        }) => Ok(json!({ "stopped": false })),
                        Err(err) => Err(c.engine.fail(F, Some(&c.what()), err)),
                    }
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method("remove", |lua, c, o: Option<Value>| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.remove";
                let args = c.args(json!({ "opts": opts_json(F, &o)? }));
                let o: RemoveOpts = opts(F, o)?;
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |_, d, _| async move {
                    d.remove_container(
                        &c.id,
                        Some(q::RemoveContainerOptions {
                            force: o.force,
                            v: o.volumes,
                            ..Default::default()
                        }),
                    )
                    .await
                    .map_err(|err| {
                        let mut f = c.engine.fail(F, Some(&c.what()), err);
                        if f.kind == errkinds::CONFLICT {
                            f.hint = Some("stop it first, or pass {force = true}".into());
                        }
                        f
                    })?;
                    Ok(json!({ "removed": c.id }))
                })
                .await?;
                to_lua(&lua, &v)
            }
        });

        methods.add_async_method(
            "connect",
            |lua, c, (network, o): (String, Option<Value>)| {
                let c = (*c).clone();
                async move {
                    const F: &str = "docker.container.connect";
                    let args = c.args(json!({ "network": network, "opts": opts_json(F, &o)? }));
                    let o: ConnectOpts = opts(F, o)?;
                    let e = c.engine.clone();
                    let v = call(&lua, &e, F, args, |_, d, _| async move {
                        let req: bollard::models::NetworkConnectRequest =
                            serde_json::from_value(json!({
                                "Container": c.id,
                                "EndpointConfig": { "Aliases": o.aliases },
                            }))
                            .map_err(|err| OpError::new("internal", format!("{F}: {err}")))?;
                        d.connect_network(&network, req)
                            .await
                            .map_err(|err| c.engine.fail(F, c.gone(&err).as_deref(), err))?;
                        Ok(json!({ "network": network }))
                    })
                    .await?;
                    to_lua(&lua, &v)
                }
            },
        );

        methods.add_async_method("disconnect", |lua, c, network: String| {
            let c = (*c).clone();
            async move {
                const F: &str = "docker.container.disconnect";
                let args = c.args(json!({ "network": network }));
                let e = c.engine.clone();
                let v = call(&lua, &e, F, args, |_, d, _| async move {
                    let req: bollard::models::NetworkDisconnectRequest =
                        serde_json::from_value(json!({ "Container": c.id, "Force": false }))
                            .map_err(|err| OpError::new("internal", format!("{F}: {err}")))?;
                    d.disconnect_network(&network, req)
                        .await
                        .map_err(|err| c.engine.fail(F, c.gone(&err).as_deref(), err))?;
                    Ok(json!({ "network": network }))
                })
                .await?;
                to_lua(&lua, &v)
            }
        });
    }
}

fn positive(func: &str, field: &str, t: f64) -> mlua::Result<Duration> {
    if t > 0.0 && t.is_finite() {
        Ok(Duration::from_secs_f64(t))
    } else {
        Err(OpError::invalid(format!(
            "{func}: {field} must be a positive number of seconds"
        ))
        .into_lua())
    }
}

/// Poll the container's state until it is healthy (or running, without a health check).
async fn wait_healthy(
    c: &Container,
    d: &Docker,
    timeout: Duration,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.container.wait_healthy";
    let t0 = Instant::now();
    let mut last_status = String::from("unknown");
    loop {
        let r = d
            .inspect_container(&c.id, None::<q::InspectContainerOptions>)
            .await
            .map_err(|err| c.engine.fail(F, Some(&c.what()), err))?;
        let state = r.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let health = state.health.clone();
        let status = health
            .as_ref()
            .and_then(|h| h.status.map(|s| s.to_string()))
            .filter(|s| !s.is_empty() && s != "none");
        if !running && !state.restarting.unwrap_or(false) {
            let code = state.exit_code.unwrap_or(0);
            return Err(OpError::new(
                errkinds::UNHEALTHY,
                format!(
                    "{F}: {} is not running (exit code {code}) and never became healthy",
                    c.what()
                ),
            )
            .hint(diagnosis(c, d, health.as_ref()).await));
        }
        match status.as_deref() {
            None if running => return Ok(json!({ "status": "running" })),
            Some("healthy") => return Ok(json!({ "status": "healthy" })),
            Some("unhealthy") => {
                return Err(OpError::new(
                    errkinds::UNHEALTHY,
                    format!("{F}: {} is unhealthy", c.what()),
                )
                .hint(diagnosis(c, d, health.as_ref()).await));
            }
            Some(s) => last_status = s.to_string(),
            None => {}
        }
        if t0.elapsed() >= timeout {
            return Err(OpError::new(
                errkinds::UNHEALTHY,
                format!(
                    "{F}: {} did not become healthy within {:.1}s (status: {last_status})",
                    c.what(),
                    timeout.as_secs_f64()
                ),
            )
            .hint(diagnosis(c, d, health.as_ref()).await));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The health log and the tail of the logs, for an error's hint.
pub async fn diagnosis(
    c: &Container,
    d: &Docker,
    health: Option<&bollard::models::Health>,
) -> String {
    let mut out = String::new();
    if let Some(log) = health.and_then(|h| h.log.as_ref()) {
        out.push_str("health checks (latest last):\n");
        for entry in log.iter().rev().take(3).rev() {
            out.push_str(&format!(
                "  exit {}: {}\n",
                entry.exit_code.unwrap_or(-1),
                entry.output.as_deref().unwrap_or("").trim()
            ));
        }
    }
    let mut s = d.logs(
        &c.id,
        Some(q::LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".into(),
            ..Default::default()
        }),
    );
    let mut logs = String::new();
    while let Some(Ok(chunk)) = s.next().await {
        logs.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        if logs.len() > 8192 {
            break;
        }
    }
    if logs.trim().is_empty() {
        out.push_str("logs: (empty)");
    } else {
        out.push_str("last log lines:\n");
        for l in logs.trim_end().lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out.trim_end().to_string()
}

async fn logs(
    ctx: &RunCtx,
    c: &Container,
    d: &Docker,
    o: &LogsOpts,
    timeout: Option<Duration>,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.container.logs";
    let keep = o.max_output.unwrap_or(DEFAULT_MAX_OUTPUT);
    let mut s = d.logs(
        &c.id,
        Some(q::LogsOptions {
            follow: o.follow,
            stdout: true,
            stderr: true,
            since: o.since.unwrap_or(0) as i32,
            timestamps: o.timestamps,
            tail: o
                .tail
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into()),
            ..Default::default()
        }),
    );
    let mut all: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut pending = String::new();
    let show = o.stream || o.follow;
    let prefix = format!("{} | ", c.name);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = match deadline {
            Some(dl) => match tokio::time::timeout_at(dl, s.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => s.next().await,
        };
        let Some(item) = next else { break };
        let bytes = item
            .map_err(|err| c.engine.fail(F, Some(&c.what()), err))?
            .into_bytes();
        let room = keep.saturating_sub(all.len());
        all.extend_from_slice(&bytes[..bytes.len().min(room)]);
        cut |= bytes.len() > room;
        if show {
            pending.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                ctx.emit(&format!("{prefix}{line}"), true);
            }
        }
    }
    if show && !pending.is_empty() {
        ctx.emit(&format!("{prefix}{pending}\n"), true);
    }
    let mut r = json!({ "output": String::from_utf8_lossy(&all) });
    if cut {
        r["truncated"] = json!(true);
    }
    Ok(r)
}

async fn exec(
    ctx: &RunCtx,
    c: &Container,
    d: &Docker,
    argv: Vec<String>,
    o: &ExecOpts,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.container.exec";
    let mut env = Vec::new();
    for (k, v) in &o.env {
        env.push(format!(
            "{k}={}",
            super::resolve_value(ctx, F, &format!("env.{k}"), v)?
        ));
    }
    let cfg = bollard::models::ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(argv),
        env: (!env.is_empty()).then_some(env),
        user: o.user.clone(),
        working_dir: o.workdir.clone(),
        ..Default::default()
    };
    let created = d
        .create_exec(&c.id, cfg)
        .await
        .map_err(|err| c.engine.fail(F, Some(&c.what()), err))?;
    let keep = o.max_output.unwrap_or(DEFAULT_MAX_OUTPUT);
    let (mut out, mut err_out, mut cut) = (Vec::new(), Vec::new(), false);
    match d
        .start_exec(&created.id, None::<bollard::exec::StartExecOptions>)
        .await
        .map_err(|err| c.engine.fail(F, Some(&c.what()), err))?
    {
        bollard::exec::StartExecResults::Attached { mut output, .. } => {
            while let Some(item) = output.next().await {
                let item = item.map_err(|err| c.engine.fail(F, Some(&c.what()), err))?;
                let (buf, bytes) = match item {
                    bollard::container::LogOutput::StdErr { message } => (&mut err_out, message),
                    other => (&mut out, other.into_bytes()),
                };
                let room = keep.saturating_sub(buf.len());
                buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                cut |= bytes.len() > room;
            }
        }
        bollard::exec::StartExecResults::Detached => {}
    }
    let info = d
        .inspect_exec(&created.id)
        .await
        .map_err(|err| c.engine.fail(F, Some(&c.what()), err))?;
    let mut r = json!({
        "code": info.exit_code.unwrap_or(-1),
        "stdout": String::from_utf8_lossy(&out),
        "stderr": String::from_utf8_lossy(&err_out),
    });
    if cut {
        r["truncated"] = json!(true);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").unwrap(), ("8080/tcp".into(), None, None));
        assert_eq!(
            parse_port("8081:8080").unwrap(),
            ("8080/tcp".into(), Some("8081".into()), None)
        );
        assert_eq!(
            parse_port("127.0.0.1::53/udp").unwrap(),
            ("53/udp".into(), None, Some("127.0.0.1".into()))
        );
        assert_eq!(
            parse_port("[::1]:8081:8080").unwrap(),
            ("8080/tcp".into(), Some("8081".into()), Some("::1".into()))
        );
        assert!(parse_port("80:http").is_err());
        assert!(parse_port("8080/xyz").is_err());
        assert!(parse_port("1:2:3:4").is_err());
    }
}
