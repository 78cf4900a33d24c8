//! Positioned YAML tree → validated [`Model`]: strict keys, shapes, references, order, hashes.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::interp::{self, Env, Var};
use super::model::{
    Build, Dependency, EnvValue, Healthcheck, Model, Mount, Network, Port, Service, ServiceNetwork,
    Volume,
};
use super::syntax::{self, Bad};
use super::yaml::{Entry, Node, Pos, Scalar, Value};
use super::{ComposeError, dotenv, sibling};
use crate::util::did_you_mean;

const SUBSET_HINT: &str =
    "Stagecraft reads a subset of the Compose format; see docs/compose-file.md";

const TOP_KEYS: &[&str] = &["version", "name", "services", "networks", "volumes"];
const TOP_UNSUPPORTED: &[&str] = &["configs", "secrets", "include", "models"];

const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "networks",
    "depends_on",
    "healthcheck",
    "labels",
    "restart",
    "deploy",
    "container_name",
    "hostname",
    "user",
    "working_dir",
    "stop_grace_period",
    "stop_signal",
];
const SERVICE_UNSUPPORTED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "configs",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "read_only",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];
const BUILD_KEYS: &[&str] = &["context", "dockerfile", "args", "target", "labels"];
const BUILD_UNSUPPORTED: &[&str] = &[
    "additional_contexts",
    "cache_from",
    "cache_to",
    "dockerfile_inline",
    "entitlements",
    "extra_hosts",
    "isolation",
    "network",
    "no_cache",
    "platforms",
    "privileged",
    "pull",
    "secrets",
    "shm_size",
    "ssh",
    "tags",
    "ulimits",
];
const HEALTH_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];
const DEPLOY_KEYS: &[&str] = &["replicas"];
const DEPLOY_UNSUPPORTED: &[&str] = &[
    "endpoint_mode",
    "labels",
    "mode",
    "placement",
    "resources",
    "restart_policy",
    "rollback_config",
    "update_config",
];
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const PORT_UNSUPPORTED: &[&str] = &["name", "app_protocol"];
const MOUNT_KEYS: &[&str] = &["type", "source", "target", "read_only"];
const MOUNT_UNSUPPORTED: &[&str] = &["bind", "volume", "tmpfs", "image", "consistency"];
const DEPENDS_KEYS: &[&str] = &["condition", "required", "restart"];
const SERVICE_NETWORK_KEYS: &[&str] = &["aliases"];
const SERVICE_NETWORK_UNSUPPORTED: &[&str] = &[
    "driver_opts",
    "gw_priority",
    "interface_name",
    "ipv4_address",
    "ipv6_address",
    "link_local_ips",
    "mac_address",
    "priority",
];
const ENV_FILE_KEYS: &[&str] = &["path", "required"];
const ENV_FILE_UNSUPPORTED: &[&str] = &["format"];
const NETWORK_KEYS: &[&str] = &[
    "name",
    "driver",
    "external",
    "labels",
    "internal",
    "attachable",
];
const NETWORK_UNSUPPORTED: &[&str] = &["driver_opts", "enable_ipv4", "enable_ipv6", "ipam"];
const VOLUME_KEYS: &[&str] = &["name", "driver", "external", "labels"];
const VOLUME_UNSUPPORTED: &[&str] = &["driver_opts"];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn is_extension(key: &str) -> bool {
    key.starts_with("x-")
}

/// Service, network and volume names: `[a-zA-Z0-9._-]+`.
fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn env_value(value: String, secrets: impl IntoIterator<Item = String>) -> EnvValue {
    let vars: Vec<String> = secrets
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if vars.is_empty() {
        EnvValue::Plain(value)
    } else {
        EnvValue::Secret {
            secret_value: value,
            vars,
        }
    }
}

/// Errors are boxed inside the loader: `ComposeError`'s public shape is large and errors are rare.
type Res<T> = Result<T, Box<ComposeError>>;

fn suggest(word: &str, candidates: &[&str]) -> Option<String> {
    did_you_mean(word, candidates).map(|s| format!("did you mean '{s}'?"))
}

/// Where a `depends_on` entry is written, to report a cycle through it.
struct Edge {
    pos: Pos,
    path: String,
}

pub(crate) struct Loader<'a> {
    file: &'a str,
    env: &'a Env,
    read_env_file: &'a dyn Fn(&str) -> Result<String, String>,
    warnings: Vec<String>,
    warned: BTreeSet<String>,
}

impl<'a> Loader<'a> {
    pub fn new(
        file: &'a str,
        env: &'a Env,
        read_env_file: &'a dyn Fn(&str) -> Result<String, String>,
    ) -> Loader<'a> {
        Loader {
            file,
            env,
            read_env_file,
            warnings: Vec::new(),
            warned: BTreeSet::new(),
        }
    }

    /// Record "variable X is not set" once per variable.
    pub fn warn_unset(&mut self, name: &str) {
        if self.warned.insert(name.to_string()) {
            self.warnings.push(format!(
                "variable {name} is not set, defaulting to a blank string"
            ));
        }
    }

    // ------------------------------------------------------------ errors

    fn err(&self, pos: Pos, path: &str, message: impl Into<String>) -> Box<ComposeError> {
        Box::new(ComposeError {
            file: self.file.to_string(),
            line: Some(pos.line),
            column: Some(pos.column),
            path: path.to_string(),
            message: message.into(),
            hint: None,
        })
    }

    fn err_hint(
        &self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Box<ComposeError> {
        let mut e = self.err(pos, path, message);
        e.hint = hint;
        e
    }

    fn bad(&self, pos: Pos, path: &str, bad: Bad) -> Box<ComposeError> {
        self.err_hint(pos, path, bad.message, bad.hint)
    }

    fn unknown_key(
        &self,
        e: &Entry,
        path: &str,
        known: &[&str],
        unsupported: &[&str],
    ) -> Box<ComposeError> {
        if unsupported.contains(&e.key.as_str()) {
            self.err_hint(
                e.key_pos,
                path,
                format!("unsupported key '{}'", e.key),
                Some(SUBSET_HINT.into()),
            )
        } else {
            self.err_hint(
                e.key_pos,
                path,
                format!("unknown key '{}'", e.key),
                suggest(&e.key, known),
            )
        }
    }

    // ------------------------------------------------------------ interpolation

    fn interpolate(&mut self, node: &mut Node, path: &str) -> Res<()> {
        let pos = node.pos;
        match &mut node.value {
            Value::Null => Ok(()),
            Value::Scalar(s) => {
                let mut unset = Vec::new();
                let env = self.env;
                let r = interp::interpolate(&s.text, &|n| env.get(n), &mut unset)
                    .map_err(|e| self.err_hint(pos, path, e.message(), e.hint()))?;
                for name in unset {
                    self.warn_unset(&name);
                }
                s.text = r.value;
                s.secrets = r.secrets.into_iter().collect();
                Ok(())
            }
            Value::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.interpolate(item, &index(path, i))?;
                }
                Ok(())
            }
            Value::Map(entries) => {
                for e in entries {
                    self.interpolate(&mut e.value, &join(path, &e.key))?;
                }
                Ok(())
            }
        }
    }

    // ------------------------------------------------------------ typed access

    fn no_secret(&self, s: &Scalar, pos: Pos, path: &str) -> Res<()> {
        match s.secrets.as_slice() {
            [] => Ok(()),
            [one] => Err(self.err(
                pos,
                path,
                format!("secret variable {one} may only be used in environment values"),
            )),
            many => Err(self.err(
                pos,
                path,
                format!(
                    "secret variables {} may only be used in environment values",
                    many.join(", ")
                ),
            )),
        }
    }

    fn str(&self, n: &Node, path: &str) -> Res<String> {
        match &n.value {
            Value::Scalar(s) => {
                self.no_secret(s, n.pos, path)?;
                Ok(s.text.clone())
            }
            _ => Err(self.err(
                n.pos,
                path,
                format!("expected a string, found {}", n.kind()),
            )),
        }
    }

    fn parse<T>(&self, n: &Node, path: &str, f: impl FnOnce(&str) -> Result<T, Bad>) -> Res<T> {
        let s = self.str(n, path)?;
        f(&s).map_err(|b| self.bad(n.pos, path, b))
    }

    fn bool(&self, n: &Node, path: &str) -> Res<bool> {
        if let Value::Map(_) | Value::Seq(_) | Value::Null = n.value {
            return Err(self.err(
                n.pos,
                path,
                format!("expected true or false, found {}", n.kind()),
            ));
        }
        self.parse(n, path, |s| {
            syntax::boolean(s)
                .ok_or_else(|| Bad::new(format!("expected true or false, found '{s}'")))
        })
    }

    fn u64(&self, n: &Node, path: &str) -> Res<u64> {
        self.parse(n, path, |s| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Bad::new(format!(
                    "expected a non-negative integer, found '{s}'"
                )));
            }
            s.parse::<u64>()
                .map_err(|_| Bad::new(format!("the number {s} is too large")))
        })
    }

    fn duration(&self, n: &Node, path: &str) -> Res<u64> {
        self.parse(n, path, syntax::duration_ns)
    }

    fn map<'n>(&self, n: &'n Node, path: &str) -> Res<&'n [Entry]> {
        match &n.value {
            Value::Map(entries) => Ok(entries),
            _ => Err(self.err(
                n.pos,
                path,
                format!("expected a mapping, found {}", n.kind()),
            )),
        }
    }

    /// A mapping, with null read as an empty one.
    fn map_or_null<'n>(&self, n: &'n Node, path: &str) -> Res<&'n [Entry]> {
        match &n.value {
            Value::Null => Ok(&[]),
            _ => self.map(n, path),
        }
    }

    fn seq<'n>(&self, n: &'n Node, path: &str) -> Res<&'n [Node]> {
        match &n.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.err(n.pos, path, format!("expected a list, found {}", n.kind()))),
        }
    }

    fn str_list(&self, n: &Node, path: &str) -> Res<Vec<String>> {
        self.seq(n, path)?
            .iter()
            .enumerate()
            .map(|(i, item)| self.str(item, &index(path, i)))
            .collect()
    }

    /// `labels` (and build `labels`): a mapping, or a list of `KEY=VALUE` / `KEY`.
    fn labels(&self, n: &Node, path: &str) -> Res<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        match &n.value {
            Value::Map(entries) => {
                for e in entries {
                    let value = match &e.value.value {
                        Value::Null => String::new(),
                        _ => self.str(&e.value, &join(path, &e.key))?,
                    };
                    out.insert(e.key.clone(), value);
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let s = self.str(item, &p)?;
                    let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                    if k.is_empty() {
                        return Err(self.err(item.pos, &p, format!("missing a name in '{s}'")));
                    }
                    out.insert(k.to_string(), v.to_string());
                }
            }
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!(
                        "expected a mapping or a list of KEY=VALUE strings, found {}",
                        n.kind()
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// A string (split like a shell would) or a list of strings.
    fn command(&self, n: &Node, path: &str) -> Res<Vec<String>> {
        match &n.value {
            Value::Scalar(_) => self.parse(n, path, syntax::split_words),
            Value::Seq(_) => self.str_list(n, path),
            _ => Err(self.err(
                n.pos,
                path,
                format!("expected a string or a list of strings, found {}", n.kind()),
            )),
        }
    }

    // ------------------------------------------------------------ top level

    pub fn load(
        mut self,
        mut root: Node,
        project: Option<&str>,
        default_project: &str,
    ) -> Res<Model> {
        self.interpolate(&mut root, "")?;
        let entries = match &root.value {
            Value::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    root.pos,
                    "",
                    format!("a compose file must be a mapping, found {}", root.kind()),
                ));
            }
        };
        let (mut name_node, mut services_node, mut networks_node, mut volumes_node) =
            (None, None, None, None);
        for e in entries {
            match e.key.as_str() {
                "version" => self.warnings.push(format!(
                    "{}: the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion",
                    self.file
                )),
                "name" => name_node = Some(&e.value),
                "services" => services_node = Some(e),
                "networks" => networks_node = Some(e),
                "volumes" => volumes_node = Some(e),
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(e, "", TOP_KEYS, TOP_UNSUPPORTED)),
            }
        }

        let project = self.project_name(project, name_node, default_project)?;

        let mut networks = BTreeMap::new();
        if let Some(e) = networks_node {
            for n in self.map_or_null(&e.value, "networks")? {
                let network = self.network(&project, n)?;
                networks.insert(n.key.clone(), network);
            }
        }
        let mut volumes = BTreeMap::new();
        if let Some(e) = volumes_node {
            for v in self.map_or_null(&e.value, "volumes")? {
                let volume = self.volume(&project, v)?;
                volumes.insert(v.key.clone(), volume);
            }
        }

        let service_entries = match services_node {
            Some(e) => self.map_or_null(&e.value, "services")?,
            None => &[],
        };
        let names: Vec<&str> = service_entries.iter().map(|e| e.key.as_str()).collect();
        let mut services = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
        for e in service_entries {
            let service = self.service(e, &names, &networks, &volumes, &mut edges)?;
            services.insert(e.key.clone(), service);
        }

        if services
            .values()
            .any(|s| s.networks.contains_key("default"))
            && !networks.contains_key("default")
        {
            networks.insert(
                "default".to_string(),
                Network {
                    name: format!("{project}_default"),
                    driver: None,
                    external: false,
                    internal: false,
                    attachable: false,
                    labels: BTreeMap::new(),
                },
            );
        }

        let order = match topological_order(&services) {
            Ok(order) => order,
            Err(cycle) => {
                let message = format!("dependency cycle: {}", cycle.join(" -> "));
                let edge = match cycle.as_slice() {
                    [from, to, ..] => edges.get(&(from.clone(), to.clone())),
                    _ => None,
                };
                return Err(match edge {
                    Some(edge) => self.err(edge.pos, &edge.path, message),
                    None => self.err(root.pos, "services", message),
                });
            }
        };

        for service in services.values_mut() {
            service.config_hash = config_hash(service);
        }

        Ok(Model {
            name: project,
            services,
            networks,
            volumes,
            order,
            warnings: self.warnings,
        })
    }

    fn project_name(
        &self,
        explicit: Option<&str>,
        name_node: Option<&Node>,
        default_project: &str,
    ) -> Res<String> {
        let rule = "must contain only lowercase letters, digits, '_' and '-', and start with a letter or digit";
        if let Some(p) = explicit {
            if !syntax::is_valid_project_name(p) {
                return Err(Box::new(ComposeError {
                    file: self.file.to_string(),
                    line: None,
                    column: None,
                    path: String::new(),
                    message: format!("invalid project name '{p}': {rule}"),
                    hint: None,
                }));
            }
            return Ok(p.to_string());
        }
        if let Some(n) = name_node {
            let name = self.str(n, "name")?;
            if !name.is_empty() {
                if !syntax::is_valid_project_name(&name) {
                    return Err(self.err_hint(
                        n.pos,
                        "name",
                        format!("invalid project name '{name}': {rule}"),
                        Some(format!(
                            "for example '{}'",
                            syntax::normalize_project_name(&name)
                        )),
                    ));
                }
                return Ok(name);
            }
        }
        let name = syntax::normalize_project_name(default_project);
        if name.is_empty() {
            return Err(Box::new(ComposeError {
                file: self.file.to_string(),
                line: None,
                column: None,
                path: String::new(),
                message: format!(
                    "cannot derive a project name from the folder name '{default_project}'"
                ),
                hint: Some("set a top-level 'name:' or pass a project name".into()),
            }));
        }
        Ok(name)
    }

    fn check_name(&self, e: &Entry, path: &str, what: &str) -> Res<()> {
        if is_valid_name(&e.key) {
            Ok(())
        } else {
            Err(self.err(
                e.key_pos,
                path,
                format!(
                    "invalid {what} name '{}': use only letters, digits, '.', '_' and '-'",
                    e.key
                ),
            ))
        }
    }

    fn network(&self, project: &str, e: &Entry) -> Res<Network> {
        let path = join("networks", &e.key);
        self.check_name(e, "networks", "network")?;
        let mut explicit_name = None;
        let mut network = Network {
            name: String::new(),
            driver: None,
            external: false,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
        };
        let mut conflicting: Option<&Entry> = None;
        for f in self.map_or_null(&e.value, &path)? {
            let p = join(&path, &f.key);
            match f.key.as_str() {
                "name" => explicit_name = Some(self.str(&f.value, &p)?),
                "driver" => {
                    network.driver = Some(self.str(&f.value, &p)?);
                    conflicting = conflicting.or(Some(f));
                }
                "external" => {
                    if let Value::Map(_) = f.value.value {
                        return Err(self.err_hint(
                            f.value.pos,
                            &p,
                            "expected true or false, found a mapping",
                            Some("'external: {name: x}' is obsolete; write 'external: true' and 'name: x'".into()),
                        ));
                    }
                    network.external = self.bool(&f.value, &p)?;
                }
                "labels" => {
                    network.labels = self.labels(&f.value, &p)?;
                    conflicting = conflicting.or(Some(f));
                }
                "internal" => {
                    network.internal = self.bool(&f.value, &p)?;
                    conflicting = conflicting.or(Some(f));
                }
                "attachable" => {
                    network.attachable = self.bool(&f.value, &p)?;
                    conflicting = conflicting.or(Some(f));
                }
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, &path, NETWORK_KEYS, NETWORK_UNSUPPORTED)),
            }
        }
        if network.external
            && let Some(f) = conflicting
        {
            return Err(self.err(
                f.key_pos,
                &path,
                format!("'{}' cannot be set on an external network", f.key),
            ));
        }
        network.name = match explicit_name {
            Some(n) => n,
            None if network.external => e.key.clone(),
            None => format!("{project}_{}", e.key),
        };
        Ok(network)
    }

    fn volume(&self, project: &str, e: &Entry) -> Res<Volume> {
        let path = join("volumes", &e.key);
        self.check_name(e, "volumes", "volume")?;
        let mut explicit_name = None;
        let mut volume = Volume {
            name: String::new(),
            driver: None,
            external: false,
            labels: BTreeMap::new(),
        };
        let mut conflicting: Option<&Entry> = None;
        for f in self.map_or_null(&e.value, &path)? {
            let p = join(&path, &f.key);
            match f.key.as_str() {
                "name" => explicit_name = Some(self.str(&f.value, &p)?),
                "driver" => {
                    volume.driver = Some(self.str(&f.value, &p)?);
                    conflicting = conflicting.or(Some(f));
                }
                "external" => {
                    if let Value::Map(_) = f.value.value {
                        return Err(self.err_hint(
                            f.value.pos,
                            &p,
                            "expected true or false, found a mapping",
                            Some("'external: {name: x}' is obsolete; write 'external: true' and 'name: x'".into()),
                        ));
                    }
                    volume.external = self.bool(&f.value, &p)?;
                }
                "labels" => {
                    volume.labels = self.labels(&f.value, &p)?;
                    conflicting = conflicting.or(Some(f));
                }
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, &path, VOLUME_KEYS, VOLUME_UNSUPPORTED)),
            }
        }
        if volume.external
            && let Some(f) = conflicting
        {
            return Err(self.err(
                f.key_pos,
                &path,
                format!("'{}' cannot be set on an external volume", f.key),
            ));
        }
        volume.name = match explicit_name {
            Some(n) => n,
            None if volume.external => e.key.clone(),
            None => format!("{project}_{}", e.key),
        };
        Ok(volume)
    }

    // ------------------------------------------------------------ services

    fn service(
        &mut self,
        e: &Entry,
        services: &[&str],
        networks: &BTreeMap<String, Network>,
        volumes: &BTreeMap<String, Volume>,
        edges: &mut BTreeMap<(String, String), Edge>,
    ) -> Res<Service> {
        let name = e.key.as_str();
        let path = join("services", name);
        self.check_name(e, "services", "service")?;
        let mut s = Service {
            name: name.to_string(),
            image: None,
            build: None,
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            networks: BTreeMap::new(),
            depends_on: BTreeMap::new(),
            healthcheck: None,
            labels: BTreeMap::new(),
            restart: None,
            replicas: 1,
            container_name: None,
            hostname: None,
            user: None,
            working_dir: None,
            stop_grace_period_ns: None,
            stop_signal: None,
            config_hash: String::new(),
        };
        let mut env_file = BTreeMap::new();
        let mut environment: Option<&Node> = None;
        let mut container_name_pos = None;
        for f in self.map(&e.value, &path)? {
            let p = join(&path, &f.key);
            let v = &f.value;
            match f.key.as_str() {
                "image" => s.image = Some(self.str(v, &p)?),
                "build" => s.build = Some(self.build(v, &p)?),
                "command" => s.command = Some(self.command(v, &p)?),
                "entrypoint" => s.entrypoint = Some(self.command(v, &p)?),
                "environment" => environment = Some(v),
                "env_file" => env_file = self.env_files(v, &p)?,
                "ports" => {
                    for (i, item) in self.seq(v, &p)?.iter().enumerate() {
                        s.ports.extend(self.port(item, &index(&p, i))?);
                    }
                }
                "volumes" => {
                    for (i, item) in self.seq(v, &p)?.iter().enumerate() {
                        s.volumes
                            .push(self.mount(item, &index(&p, i), name, volumes)?);
                    }
                }
                "networks" => s.networks = self.service_networks(v, &p, name, networks)?,
                "depends_on" => s.depends_on = self.depends_on(v, &p, name, services, edges)?,
                "healthcheck" => s.healthcheck = Some(self.healthcheck(v, &p)?),
                "labels" => s.labels = self.labels(v, &p)?,
                "restart" => s.restart = Some(self.parse(v, &p, syntax::restart_policy)?),
                "deploy" => s.replicas = self.deploy(v, &p)?,
                "container_name" => {
                    s.container_name = Some(self.str(v, &p)?);
                    container_name_pos = Some((v.pos, p));
                }
                "hostname" => s.hostname = Some(self.str(v, &p)?),
                "user" => s.user = Some(self.str(v, &p)?),
                "working_dir" => s.working_dir = Some(self.str(v, &p)?),
                "stop_grace_period" => s.stop_grace_period_ns = Some(self.duration(v, &p)?),
                "stop_signal" => s.stop_signal = Some(self.str(v, &p)?),
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, &path, SERVICE_KEYS, SERVICE_UNSUPPORTED)),
            }
        }
        // env_file values first; `environment` overrides them.
        s.environment = env_file;
        if let Some(v) = environment {
            self.environment(v, &join(&path, "environment"), &mut s.environment)?;
        }
        if s.image.is_none() && s.build.is_none() {
            return Err(self.err_hint(
                e.key_pos,
                &path,
                format!("service {name} has neither an image nor a build context"),
                Some("add 'image:' or 'build:'".into()),
            ));
        }
        if let Some((pos, p)) = container_name_pos
            && s.replicas > 1
        {
            return Err(self.err_hint(
                pos,
                &p,
                format!(
                    "container_name cannot be used with {} replicas: container names must be unique",
                    s.replicas
                ),
                Some("remove container_name or set deploy.replicas to 1".into()),
            ));
        }
        if s.networks.is_empty() {
            s.networks
                .insert("default".to_string(), ServiceNetwork::default());
        }
        Ok(s)
    }

    fn build(&self, n: &Node, path: &str) -> Res<Build> {
        let mut build = Build {
            context: ".".to_string(),
            dockerfile: None,
            args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
        };
        if let Value::Scalar(_) = n.value {
            build.context = syntax::build_context(&self.str(n, path)?);
            return Ok(build);
        }
        let entries = match &n.value {
            Value::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!(
                        "expected a build context string or a mapping, found {}",
                        n.kind()
                    ),
                ));
            }
        };
        for f in entries {
            let p = join(path, &f.key);
            match f.key.as_str() {
                "context" => build.context = syntax::build_context(&self.str(&f.value, &p)?),
                "dockerfile" => build.dockerfile = Some(self.str(&f.value, &p)?),
                "args" => build.args = self.build_args(&f.value, &p)?,
                "target" => build.target = Some(self.str(&f.value, &p)?),
                "labels" => build.labels = self.labels(&f.value, &p)?,
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, path, BUILD_KEYS, BUILD_UNSUPPORTED)),
            }
        }
        Ok(build)
    }

    /// A variable from the environment for a key written without a value.
    fn inherit(&self, key: &str) -> Option<Var> {
        self.env.get(key)
    }

    /// A build arg written without a value: from the environment, unless unset.
    fn inherit_arg(&self, key: &str, pos: Pos, path: &str) -> Res<Option<String>> {
        let Some(var) = self.inherit(key) else {
            return Ok(None);
        };
        let s = Scalar {
            text: String::new(),
            secrets: var.secrets.into_iter().collect(),
        };
        self.no_secret(&s, pos, path)?;
        Ok(Some(var.value))
    }

    fn build_args(&self, n: &Node, path: &str) -> Res<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        match &n.value {
            Value::Map(entries) => {
                for e in entries {
                    let p = join(path, &e.key);
                    let value = match &e.value.value {
                        Value::Null => self.inherit_arg(&e.key, e.key_pos, &p)?,
                        _ => Some(self.str(&e.value, &p)?),
                    };
                    if let Some(v) = value {
                        out.insert(e.key.clone(), v);
                    }
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let s = self.str(item, &p)?;
                    match s.split_once('=') {
                        Some(("", _)) => {
                            return Err(self.err(item.pos, &p, "missing a name before '='"));
                        }
                        Some((k, v)) => {
                            out.insert(k.to_string(), v.to_string());
                        }
                        None => {
                            if let Some(v) = self.inherit_arg(&s, item.pos, &p)? {
                                out.insert(s, v);
                            }
                        }
                    }
                }
            }
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!(
                        "expected a mapping or a list of KEY=VALUE strings, found {}",
                        n.kind()
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// `environment`, applied over `out` (which holds the env_file values).
    fn environment(&self, n: &Node, path: &str, out: &mut BTreeMap<String, EnvValue>) -> Res<()> {
        // A key without a value takes it from the environment; when unset it is dropped (and
        // does not override an env_file value).
        let inherit = |key: &str, out: &mut BTreeMap<String, EnvValue>| {
            if let Some(var) = self.inherit(key) {
                out.insert(key.to_string(), env_value(var.value, var.secrets));
            }
        };
        match &n.value {
            Value::Map(entries) => {
                for e in entries {
                    match &e.value.value {
                        Value::Null => inherit(&e.key, out),
                        Value::Scalar(s) => {
                            out.insert(
                                e.key.clone(),
                                env_value(s.text.clone(), s.secrets.iter().cloned()),
                            );
                        }
                        _ => {
                            return Err(self.err(
                                e.value.pos,
                                &join(path, &e.key),
                                format!("expected a string, found {}", e.value.kind()),
                            ));
                        }
                    }
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Value::Scalar(s) = &item.value else {
                        return Err(self.err(
                            item.pos,
                            &index(path, i),
                            format!("expected a KEY=VALUE string, found {}", item.kind()),
                        ));
                    };
                    match s.text.split_once('=') {
                        Some(("", _)) => {
                            return Err(self.err(
                                item.pos,
                                &index(path, i),
                                "missing a variable name before '='",
                            ));
                        }
                        Some((k, v)) => {
                            out.insert(
                                k.to_string(),
                                env_value(v.to_string(), s.secrets.iter().cloned()),
                            );
                        }
                        None => inherit(&s.text, out),
                    }
                }
            }
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!(
                        "expected a mapping or a list of KEY=VALUE strings, found {}",
                        n.kind()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn env_files(&mut self, n: &Node, path: &str) -> Res<BTreeMap<String, EnvValue>> {
        let mut files: Vec<(String, bool, Pos, String)> = Vec::new();
        match &n.value {
            Value::Scalar(_) => files.push((self.str(n, path)?, true, n.pos, path.to_string())),
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    match &item.value {
                        Value::Map(entries) => {
                            let mut file = None;
                            let mut required = true;
                            for f in entries {
                                let fp = join(&p, &f.key);
                                match f.key.as_str() {
                                    "path" => {
                                        file = Some((self.str(&f.value, &fp)?, f.value.pos, fp))
                                    }
                                    "required" => required = self.bool(&f.value, &fp)?,
                                    k if is_extension(k) => {}
                                    _ => {
                                        return Err(self.unknown_key(
                                            f,
                                            &p,
                                            ENV_FILE_KEYS,
                                            ENV_FILE_UNSUPPORTED,
                                        ));
                                    }
                                }
                            }
                            let Some((file, pos, fp)) = file else {
                                return Err(self.err(item.pos, &p, "missing 'path'"));
                            };
                            files.push((file, required, pos, fp));
                        }
                        _ => files.push((self.str(item, &p)?, true, item.pos, p)),
                    }
                }
            }
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!("expected a path or a list of paths, found {}", n.kind()),
                ));
            }
        }
        let mut acc: BTreeMap<String, Var> = BTreeMap::new();
        for (file, required, pos, p) in files {
            let text = match (self.read_env_file)(&file) {
                Ok(text) => text,
                Err(reason) if required => {
                    return Err(self.err_hint(
                        pos,
                        &p,
                        format!("cannot read env_file '{file}': {reason}"),
                        Some("use {path: ..., required: false} for an optional file".into()),
                    ));
                }
                Err(_) => continue,
            };
            let mut unset = Vec::new();
            let env = self.env;
            let seen = &acc;
            let parsed = dotenv::parse(
                &text,
                &|name| seen.get(name).cloned().or_else(|| env.get(name)),
                &mut unset,
            )
            .map_err(|e| ComposeError {
                file: sibling(self.file, &file),
                line: Some(e.line),
                column: Some(e.column),
                path: path.to_string(),
                message: e.message,
                hint: e.hint,
            })?;
            for name in unset {
                self.warn_unset(&name);
            }
            acc.extend(parsed);
        }
        Ok(acc
            .into_iter()
            .map(|(k, v)| (k, env_value(v.value, v.secrets)))
            .collect())
    }

    fn port(&self, n: &Node, path: &str) -> Res<Vec<Port>> {
        let entries = match &n.value {
            Value::Scalar(_) => {
                return self.parse(n, path, |spec| {
                    syntax::ports_short(spec).map_err(|b| Bad {
                        message: format!("invalid port '{spec}': {}", b.message),
                        hint: b.hint,
                    })
                });
            }
            Value::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!("expected a port string or a mapping, found {}", n.kind()),
                ));
            }
        };
        let mut port = Port {
            target: 0,
            published: None,
            host_ip: None,
            protocol: "tcp".to_string(),
        };
        let mut has_target = false;
        for f in entries {
            let p = join(path, &f.key);
            match f.key.as_str() {
                "target" => {
                    port.target = self.parse(&f.value, &p, syntax::port_number)?;
                    has_target = true;
                }
                "published" => {
                    port.published = Some(self.parse(&f.value, &p, syntax::published_port)?)
                }
                "host_ip" => port.host_ip = Some(self.parse(&f.value, &p, syntax::host_ip)?),
                "protocol" => port.protocol = self.parse(&f.value, &p, syntax::protocol)?,
                "mode" => {
                    self.parse(&f.value, &p, |m| match m {
                        "host" | "ingress" => Ok(()),
                        _ => Err(Bad::new(format!("unknown port mode '{m}'"))
                            .hint("use host or ingress")),
                    })?;
                }
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, path, PORT_KEYS, PORT_UNSUPPORTED)),
            }
        }
        if !has_target {
            return Err(self.err(n.pos, path, "missing 'target'"));
        }
        Ok(vec![port])
    }

    fn undefined_volume(
        &self,
        pos: Pos,
        path: &str,
        service: &str,
        volume: &str,
        volumes: &BTreeMap<String, Volume>,
    ) -> Box<ComposeError> {
        let declared: Vec<&str> = volumes.keys().map(String::as_str).collect();
        self.err_hint(
            pos,
            path,
            format!("service {service} refers to undefined volume {volume}"),
            suggest(volume, &declared)
                .or_else(|| Some("declare it under the top-level 'volumes:' key".into())),
        )
    }

    fn mount(
        &self,
        n: &Node,
        path: &str,
        service: &str,
        volumes: &BTreeMap<String, Volume>,
    ) -> Res<Mount> {
        let entries = match &n.value {
            Value::Scalar(_) => {
                let v = self.parse(n, path, |spec| {
                    syntax::volume_short(spec).map_err(|b| Bad {
                        message: format!("invalid volume '{spec}': {}", b.message),
                        hint: b.hint,
                    })
                })?;
                if v.kind == "volume"
                    && let Some(source) = &v.source
                    && !volumes.contains_key(source)
                {
                    return Err(self.undefined_volume(n.pos, path, service, source, volumes));
                }
                return Ok(Mount {
                    kind: v.kind.to_string(),
                    source: v.source,
                    target: v.target,
                    read_only: v.read_only,
                });
            }
            Value::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!("expected a volume string or a mapping, found {}", n.kind()),
                ));
            }
        };
        let mut kind = None;
        let mut source: Option<(String, Pos, String)> = None;
        let mut target = None;
        let mut read_only = false;
        for f in entries {
            let p = join(path, &f.key);
            match f.key.as_str() {
                "type" => {
                    kind = Some(self.parse(&f.value, &p, |t| {
                        match t {
                            "volume" | "bind" | "tmpfs" => Ok(t.to_string()),
                            "npipe" | "cluster" | "image" => {
                                Err(Bad::new(format!("unsupported mount type '{t}'"))
                                    .hint("Stagecraft supports volume, bind and tmpfs"))
                            }
                            _ => Err(Bad::new(format!("unknown mount type '{t}'"))
                                .hint("use volume, bind or tmpfs")),
                        }
                    })?);
                }
                "source" => source = Some((self.str(&f.value, &p)?, f.value.pos, p)),
                "target" => target = Some(self.parse(&f.value, &p, syntax::container_path)?),
                "read_only" => read_only = self.bool(&f.value, &p)?,
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, path, MOUNT_KEYS, MOUNT_UNSUPPORTED)),
            }
        }
        let Some(kind) = kind else {
            return Err(self.err(n.pos, path, "missing 'type' (volume, bind or tmpfs)"));
        };
        let Some(target) = target else {
            return Err(self.err(n.pos, path, "missing 'target'"));
        };
        let source = match (kind.as_str(), source) {
            ("bind", Some((s, _, _))) => Some(syntax::normalize_path(&s)),
            ("bind", None) => return Err(self.err(n.pos, path, "a bind mount needs a 'source'")),
            ("volume", Some((s, pos, p))) => {
                if !volumes.contains_key(&s) {
                    return Err(self.undefined_volume(pos, &p, service, &s, volumes));
                }
                Some(s)
            }
            ("tmpfs", Some((_, pos, p))) => {
                return Err(self.err(pos, &p, "a tmpfs mount has no 'source'"));
            }
            _ => None,
        };
        Ok(Mount {
            kind,
            source,
            target,
            read_only,
        })
    }

    fn service_networks(
        &self,
        n: &Node,
        path: &str,
        service: &str,
        networks: &BTreeMap<String, Network>,
    ) -> Res<BTreeMap<String, ServiceNetwork>> {
        let check = |name: &str, pos: Pos, p: &str| {
            if name == "default" || networks.contains_key(name) {
                return Ok(());
            }
            let declared: Vec<&str> = networks.keys().map(String::as_str).collect();
            Err(self.err_hint(
                pos,
                p,
                format!("service {service} refers to undefined network {name}"),
                suggest(name, &declared)
                    .or_else(|| Some("declare it under the top-level 'networks:' key".into())),
            ))
        };
        let mut out = BTreeMap::new();
        match &n.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let name = self.str(item, &p)?;
                    check(&name, item.pos, &p)?;
                    out.insert(name, ServiceNetwork::default());
                }
            }
            Value::Map(entries) => {
                for e in entries {
                    let p = join(path, &e.key);
                    check(&e.key, e.key_pos, &p)?;
                    let mut sn = ServiceNetwork::default();
                    for f in self.map_or_null(&e.value, &p)? {
                        let fp = join(&p, &f.key);
                        match f.key.as_str() {
                            "aliases" => sn.aliases = self.str_list(&f.value, &fp)?,
                            k if is_extension(k) => {}
                            _ => {
                                return Err(self.unknown_key(
                                    f,
                                    &p,
                                    SERVICE_NETWORK_KEYS,
                                    SERVICE_NETWORK_UNSUPPORTED,
                                ));
                            }
                        }
                    }
                    out.insert(e.key.clone(), sn);
                }
            }
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!(
                        "expected a list or a mapping of networks, found {}",
                        n.kind()
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn depends_on(
        &self,
        n: &Node,
        path: &str,
        service: &str,
        services: &[&str],
        edges: &mut BTreeMap<(String, String), Edge>,
    ) -> Res<BTreeMap<String, Dependency>> {
        let check = |name: &str, pos: Pos, p: &str| {
            if services.contains(&name) {
                return Ok(());
            }
            Err(self.err_hint(
                pos,
                p,
                format!("service {service} depends on undefined service {name}"),
                suggest(name, services),
            ))
        };
        let mut out = BTreeMap::new();
        match &n.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let name = self.str(item, &p)?;
                    check(&name, item.pos, &p)?;
                    edges.insert(
                        (service.to_string(), name.clone()),
                        Edge {
                            pos: item.pos,
                            path: p,
                        },
                    );
                    out.insert(
                        name,
                        Dependency {
                            condition: "service_started".to_string(),
                            required: true,
                            restart: false,
                        },
                    );
                }
            }
            Value::Map(entries) => {
                for e in entries {
                    let p = join(path, &e.key);
                    check(&e.key, e.key_pos, &p)?;
                    let mut condition = None;
                    let mut dep = Dependency {
                        condition: String::new(),
                        required: true,
                        restart: false,
                    };
                    for f in self.map(&e.value, &p)? {
                        let fp = join(&p, &f.key);
                        match f.key.as_str() {
                            "condition" => {
                                condition = Some(self.parse(&f.value, &fp, |c| match c {
                                    "service_started" | "service_healthy" | "service_completed_successfully" => Ok(c.to_string()),
                                    _ => Err(Bad::new(format!("unknown condition '{c}'")).hint(
                                        "use service_started, service_healthy or service_completed_successfully",
                                    )),
                                })?);
                            }
                            "required" => dep.required = self.bool(&f.value, &fp)?,
                            "restart" => dep.restart = self.bool(&f.value, &fp)?,
                            k if is_extension(k) => {}
                            _ => return Err(self.unknown_key(f, &p, DEPENDS_KEYS, &[])),
                        }
                    }
                    let Some(condition) = condition else {
                        return Err(self.err_hint(
                            e.value.pos,
                            &p,
                            "missing 'condition'",
                            Some("use service_started, service_healthy or service_completed_successfully".into()),
                        ));
                    };
                    dep.condition = condition;
                    edges.insert(
                        (service.to_string(), e.key.clone()),
                        Edge {
                            pos: e.key_pos,
                            path: p,
                        },
                    );
                    out.insert(e.key.clone(), dep);
                }
            }
            _ => {
                return Err(self.err(
                    n.pos,
                    path,
                    format!(
                        "expected a list or a mapping of services, found {}",
                        n.kind()
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn healthcheck(&self, n: &Node, path: &str) -> Res<Healthcheck> {
        let mut h = Healthcheck {
            test: Vec::new(),
            interval_ns: None,
            timeout_ns: None,
            retries: None,
            start_period_ns: None,
            start_interval_ns: None,
            disable: false,
        };
        let mut test_node = None;
        for f in self.map(n, path)? {
            let p = join(path, &f.key);
            let v = &f.value;
            match f.key.as_str() {
                "test" => {
                    h.test = match &v.value {
                        Value::Scalar(_) => {
                            let s = self.str(v, &p)?;
                            if s.is_empty() {
                                return Err(self.err(v.pos, &p, "the test command is empty"));
                            }
                            vec!["CMD-SHELL".to_string(), s]
                        }
                        Value::Seq(_) => {
                            let test = self.str_list(v, &p)?;
                            let ok = match test.first().map(String::as_str) {
                                Some("CMD") => test.len() >= 2,
                                Some("CMD-SHELL") => test.len() == 2,
                                Some("NONE") => test.len() == 1,
                                _ => false,
                            };
                            if !ok {
                                return Err(self.err_hint(
                                    v.pos,
                                    &p,
                                    "a test list must be [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                                    None,
                                ));
                            }
                            test
                        }
                        _ => {
                            return Err(self.err(
                                v.pos,
                                &p,
                                format!("expected a string or a list, found {}", v.kind()),
                            ));
                        }
                    };
                    test_node = Some(f);
                }
                "interval" => h.interval_ns = Some(self.duration(v, &p)?),
                "timeout" => h.timeout_ns = Some(self.duration(v, &p)?),
                "retries" => h.retries = Some(self.u64(v, &p)?),
                "start_period" => h.start_period_ns = Some(self.duration(v, &p)?),
                "start_interval" => h.start_interval_ns = Some(self.duration(v, &p)?),
                "disable" => h.disable = self.bool(v, &p)?,
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, path, HEALTH_KEYS, &[])),
            }
        }
        let none = h.test.first().is_some_and(|t| t == "NONE");
        if h.disable
            && let Some(f) = test_node
            && !none
        {
            return Err(self.err(
                f.key_pos,
                path,
                "'test' and 'disable: true' cannot be combined",
            ));
        }
        h.disable |= none;
        Ok(h)
    }

    fn deploy(&self, n: &Node, path: &str) -> Res<u32> {
        let mut replicas = 1;
        for f in self.map(n, path)? {
            let p = join(path, &f.key);
            match f.key.as_str() {
                "replicas" => {
                    let r = self.u64(&f.value, &p)?;
                    replicas = u32::try_from(r).map_err(|_| {
                        self.err(f.value.pos, &p, format!("{r} replicas is too many"))
                    })?;
                }
                k if is_extension(k) => {}
                _ => return Err(self.unknown_key(f, path, DEPLOY_KEYS, DEPLOY_UNSUPPORTED)),
            }
        }
        Ok(replicas)
    }
}

/// Service names with dependencies first, ties broken by name; `Err(cycle)` names a cycle as
/// `[a, b, ..., a]`.
fn topological_order(services: &BTreeMap<String, Service>) -> Result<Vec<String>, Vec<String>> {
    // Cycle detection by depth-first search, in name order for a deterministic report.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<'s>(
        name: &'s str,
        services: &'s BTreeMap<String, Service>,
        marks: &mut BTreeMap<&'s str, Mark>,
        stack: &mut Vec<&'s str>,
    ) -> Result<(), Vec<String>> {
        marks.insert(name, Mark::Active);
        stack.push(name);
        if let Some(s) = services.get(name) {
            for dep in s.depends_on.keys() {
                match marks.get(dep.as_str()).copied().unwrap_or(Mark::New) {
                    Mark::Active => {
                        let start = stack.iter().position(|n| *n == dep.as_str()).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[start..].iter().map(|s| s.to_string()).collect();
                        cycle.push(dep.clone());
                        return Err(cycle);
                    }
                    Mark::New => visit(dep, services, marks, stack)?,
                    Mark::Done => {}
                }
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        Ok(())
    }
    let mut marks = BTreeMap::new();
    for name in services.keys() {
        if marks.get(name.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            visit(name, services, &mut marks, &mut Vec::new())?;
        }
    }

    // Kahn's algorithm, always taking the smallest ready name.
    let mut waiting: BTreeMap<&str, usize> = services
        .iter()
        .map(|(n, s)| (n.as_str(), s.depends_on.len()))
        .collect();
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::with_capacity(services.len());
    while let Some(name) = ready.pop_first() {
        order.push(name.to_string());
        for (other, s) in services {
            if s.depends_on.contains_key(name)
                && let Some(d) = waiting.get_mut(other.as_str())
            {
                *d -= 1;
                if *d == 0 {
                    ready.insert(other.as_str());
                }
            }
        }
    }
    Ok(order)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Rebuild objects with sorted keys (a no-op unless serde_json's `preserve_order` is on).
fn canonical(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(canonical).collect())
        }
        other => other,
    }
}

/// SHA-256 of the service's canonical JSON, without `replicas` and `config_hash`, and with each
/// secret value replaced by its own SHA-256.
pub(crate) fn config_hash(service: &Service) -> String {
    let mut s = service.clone();
    s.config_hash = String::new();
    for v in s.environment.values_mut() {
        if let EnvValue::Secret { secret_value, .. } = v {
            *secret_value = format!("sha256:{}", sha256_hex(secret_value.as_bytes()));
        }
    }
    let mut value = serde_json::to_value(&s).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.remove("replicas");
    }
    sha256_hex(canonical(value).to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::{ComposeError, Vars, load};
    use super::*;

    struct Case<'a> {
        file: &'a str,
        text: &'a str,
        dotenv: Option<&'a str>,
        plain: &'a [(&'a str, &'a str)],
        secret: &'a [(&'a str, &'a str)],
        files: &'a [(&'a str, &'a str)],
        project: Option<&'a str>,
    }

    fn case(text: &str) -> Case<'_> {
        Case {
            file: "docker-compose.yml",
            text,
            dotenv: None,
            plain: &[],
            secret: &[],
            files: &[],
            project: None,
        }
    }

    impl Case<'_> {
        fn run(&self) -> Result<Model, Box<ComposeError>> {
            let vars = Vars {
                plain: self
                    .plain
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                secret: self
                    .secret
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            let files = self.files;
            let read = move |p: &str| {
                files
                    .iter()
                    .find(|(name, _)| *name == p)
                    .map(|(_, text)| text.to_string())
                    .ok_or_else(|| "no such file".to_string())
            };
            load(
                self.file,
                self.text,
                self.dotenv,
                &vars,
                self.project,
                "My Stack",
                &read,
            )
            .map_err(Box::new)
        }

        fn ok(&self) -> Model {
            match self.run() {
                Ok(m) => m,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }

        fn err(&self) -> String {
            match self.run() {
                Ok(m) => panic!("expected an error, got {m:?}"),
                Err(e) => e.to_string(),
            }
        }
    }

    fn ok(text: &str) -> Model {
        case(text).ok()
    }

    fn err(text: &str) -> String {
        case(text).err()
    }

    fn svc(m: &Model, name: &str) -> Service {
        m.services[name].clone()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn minimal_service_and_defaults() {
        let m = ok("services:\n  web:\n    image: nginx:1.27\n");
        assert_eq!(m.name, "mystack");
        assert_eq!(m.order, ["web"]);
        assert!(m.warnings.is_empty());
        let web = svc(&m, "web");
        assert_eq!(web.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(web.replicas, 1);
        assert_eq!(
            web.networks.keys().collect::<Vec<_>>(),
            ["default"],
            "services join the default network"
        );
        assert_eq!(m.networks["default"].name, "mystack_default");
        assert_eq!(web.config_hash.len(), 64);
    }

    #[test]
    fn project_name_sources() {
        let text = "name: from-file\nservices:\n  web:\n    image: x\n";
        assert_eq!(case(text).ok().name, "from-file");
        let mut c = case(text);
        c.project = Some("explicit");
        assert_eq!(c.ok().name, "explicit");
        assert_eq!(c.ok().networks["default"].name, "explicit_default");
        c.project = Some("Bad Name");
        assert_eq!(
            c.err(),
            "docker-compose.yml: invalid project name 'Bad Name': must contain only lowercase letters, digits, '_' and '-', and start with a letter or digit"
        );
        assert_eq!(
            err("name: My_App\nservices: {}\n"),
            "docker-compose.yml:1:7: name: invalid project name 'My_App': must contain only lowercase letters, digits, '_' and '-', and start with a letter or digit (for example 'my_app')"
        );
        let mut c = case("name: ${PROJECT:-dflt}\nservices: {}\n");
        assert_eq!(c.ok().name, "dflt");
        c.plain = &[("PROJECT", "fromvar")];
        assert_eq!(c.ok().name, "fromvar");
        // An empty name falls back to the folder name.
        assert_eq!(ok("name: ''\nservices: {}\n").name, "mystack");
    }

    #[test]
    fn version_is_obsolete() {
        let m = ok("version: '3.8'\nservices:\n  web:\n    image: x\n");
        assert_eq!(
            m.warnings,
            [
                "docker-compose.yml: the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion"
            ]
        );
    }

    #[test]
    fn unknown_top_level_key() {
        assert_eq!(
            err("services:\n  web:\n    image: x\nnetwork:\n  front:\n"),
            "docker-compose.yml:4:1: unknown key 'network' (did you mean 'networks'?)"
        );
        assert_eq!(
            err("secrets:\n  pw:\n    file: ./pw\n"),
            "docker-compose.yml:1:1: unsupported key 'secrets' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
    }

    #[test]
    fn unknown_service_key() {
        assert_eq!(
            err("services:\n  web:\n    imagee: nginx\n"),
            "docker-compose.yml:3:5: services.web: unknown key 'imagee' (did you mean 'image'?)"
        );
        assert_eq!(
            err("services:\n  web:\n    image: x\n    privileged: true\n"),
            "docker-compose.yml:4:5: services.web: unsupported key 'privileged' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
        assert_eq!(
            err("services:\n  web:\n    image: x\n    zzz: 1\n"),
            "docker-compose.yml:4:5: services.web: unknown key 'zzz'"
        );
    }

    #[test]
    fn extension_keys_are_ignored() {
        let m = ok(
            "x-common: &c\n  restart: always\nservices:\n  web:\n    <<: *c\n    image: x\n    x-note: anything\n",
        );
        assert_eq!(svc(&m, "web").restart.as_deref(), Some("always"));
    }

    #[test]
    fn missing_image_and_build() {
        assert_eq!(
            err("services:\n  web:\n    restart: always\n"),
            "docker-compose.yml:2:3: services.web: service web has neither an image nor a build context (add 'image:' or 'build:')"
        );
        assert_eq!(
            err("services:\n  web:\n"),
            "docker-compose.yml:2:3: services.web: expected a mapping, found null"
        );
        assert_eq!(
            err("services:\n  'bad name':\n    image: x\n"),
            "docker-compose.yml:2:3: services: invalid service name 'bad name': use only letters, digits, '.', '_' and '-'"
        );
    }

    #[test]
    fn empty_and_non_mapping_files() {
        assert_eq!(
            err(""),
            "docker-compose.yml: empty compose file (a compose file needs at least a 'services:' mapping)"
        );
        assert_eq!(
            err("- a\n"),
            "docker-compose.yml:1:1: a compose file must be a mapping, found a sequence"
        );
        assert_eq!(ok("services:\n").services.len(), 0);
    }

    #[test]
    fn build_short_and_long() {
        let m = ok(
            "services:\n  a:\n    build: ./app/\n  b:\n    build:\n      context: ../shared\n      dockerfile: Dockerfile.prod\n      target: runtime\n      args:\n        VERSION: 1.2\n        FROM_ENV:\n        UNSET:\n      labels: [team=x, bare]\n  c:\n    build:\n      args: [A=1, FROM_ENV, UNSET]\n",
        );
        let a = svc(&m, "a").build.unwrap();
        assert_eq!(a.context, "./app");
        assert!(a.args.is_empty());
        let b = svc(&m, "b").build.unwrap();
        assert_eq!(b.context, "../shared");
        assert_eq!(b.dockerfile.as_deref(), Some("Dockerfile.prod"));
        assert_eq!(b.target.as_deref(), Some("runtime"));
        assert_eq!(b.args.len(), 1, "unset args without a value are dropped");
        assert_eq!(b.labels["team"], "x");
        assert_eq!(b.labels["bare"], "");
        assert_eq!(svc(&m, "c").build.unwrap().context, ".");

        let mut c = case(
            "services:\n  b:\n    build:\n      args:\n        FROM_ENV:\n      context: .\n  c:\n    build:\n      args: [A=1, FROM_ENV]\n",
        );
        c.plain = &[("FROM_ENV", "e")];
        let m = c.ok();
        assert_eq!(svc(&m, "b").build.unwrap().args["FROM_ENV"], "e");
        let args = svc(&m, "c").build.unwrap().args;
        assert_eq!((args["A"].as_str(), args["FROM_ENV"].as_str()), ("1", "e"));

        assert_eq!(
            err("services:\n  a:\n    build:\n      context: .\n      dockerfil: x\n"),
            "docker-compose.yml:5:7: services.a.build: unknown key 'dockerfil' (did you mean 'dockerfile'?)"
        );
    }

    #[test]
    fn command_and_entrypoint() {
        let m = ok(
            "services:\n  a:\n    image: x\n    command: sh -c 'echo \"hi there\"; exit 3'\n    entrypoint: [\"/bin/tini\", \"--\"]\n  b:\n    image: x\n    command: [\"npm\", \"start\"]\n    entrypoint: \"\"\n",
        );
        let a = svc(&m, "a");
        assert_eq!(
            a.command.unwrap(),
            strings(&["sh", "-c", "echo \"hi there\"; exit 3"])
        );
        assert_eq!(a.entrypoint.unwrap(), strings(&["/bin/tini", "--"]));
        let b = svc(&m, "b");
        assert_eq!(b.command.unwrap(), strings(&["npm", "start"]));
        assert_eq!(b.entrypoint.unwrap(), Vec::<String>::new());
        assert_eq!(
            err("services:\n  a:\n    image: x\n    command: echo hi > /tmp/out\n"),
            "docker-compose.yml:4:14: services.a.command: unquoted shell operator '>' (a command string is split into words, not run by a shell; use a list like [\"sh\", \"-c\", \"...\"] or quote the character)"
        );
        assert_eq!(
            err("services:\n  a:\n    image: x\n    command: {a: 1}\n"),
            "docker-compose.yml:4:14: services.a.command: expected a string or a list of strings, found a mapping"
        );
    }

    #[test]
    fn environment_env_file_and_precedence() {
        let mut c = case(
            "services:\n  web:\n    image: x\n    env_file:\n      - common.env\n      - path: ./local.env\n        required: false\n      - path: missing.env\n        required: false\n    environment:\n      FROM_YAML: yaml\n      OVERRIDE: yaml\n      INHERIT:\n      GONE:\n      NUM: 5\n      BOOL: true\n      FROM_FILE:\n  list:\n    image: x\n    environment:\n      - A=1\n      - B=x=y\n      - INHERIT\n      - GONE\n      - EMPTY=\n",
        );
        c.plain = &[("INHERIT", "inherited"), ("SHELL", "sh")];
        c.files = &[
            (
                "common.env",
                "OVERRIDE=file\nFROM_FILE=common\nREF=${SHELL}-x\n",
            ),
            ("./local.env", "FROM_FILE=local\nLOCAL=${REF}\n"),
        ];
        let m = c.ok();
        let env: BTreeMap<String, String> = svc(&m, "web")
            .environment
            .into_iter()
            .map(|(k, v)| (k, v.value().to_string()))
            .collect();
        let expected: BTreeMap<String, String> = [
            ("BOOL", "true"),
            ("FROM_FILE", "local"),
            ("FROM_YAML", "yaml"),
            ("INHERIT", "inherited"),
            ("LOCAL", "sh-x"),
            ("NUM", "5"),
            ("OVERRIDE", "yaml"),
            ("REF", "sh-x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
        let list = svc(&m, "list").environment;
        assert_eq!(list["A"], EnvValue::Plain("1".into()));
        assert_eq!(list["B"], EnvValue::Plain("x=y".into()));
        assert_eq!(list["INHERIT"], EnvValue::Plain("inherited".into()));
        assert_eq!(list["EMPTY"], EnvValue::Plain(String::new()));
        assert!(!list.contains_key("GONE"));
    }

    #[test]
    fn env_file_errors() {
        let mut c = case("services:\n  web:\n    image: x\n    env_file: nope.env\n");
        assert_eq!(
            c.err(),
            "docker-compose.yml:4:15: services.web.env_file: cannot read env_file 'nope.env': no such file (use {path: ..., required: false} for an optional file)"
        );
        c.text = "services:\n  web:\n    image: x\n    env_file: [conf/app.env]\n";
        c.file = "stack/compose.yml";
        c.files = &[("conf/app.env", "A=1\nnot a line\n")];
        assert_eq!(
            c.err(),
            "stack/conf/app.env:2:5: services.web.env_file: unexpected character 'a' after variable name not (lines look like KEY=VALUE)"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    env_file:\n      - path: a.env\n        format: raw\n"
            ),
            "docker-compose.yml:6:9: services.web.env_file[0]: unsupported key 'format' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
    }

    #[test]
    fn ports_short_and_long() {
        let m = ok(
            "services:\n  web:\n    image: x\n    ports:\n      - 80\n      - \"8081:8080\"\n      - 127.0.0.1:5353:53/udp\n      - 9000-9001:9000-9001\n      - target: 443\n        published: \"8443\"\n        host_ip: 0.0.0.0\n        protocol: tcp\n        mode: host\n      - target: 7000\n",
        );
        let ports = svc(&m, "web").ports;
        let summary: Vec<(u16, Option<&str>, Option<&str>, &str)> = ports
            .iter()
            .map(|p| {
                (
                    p.target,
                    p.published.as_deref(),
                    p.host_ip.as_deref(),
                    p.protocol.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (80, None, None, "tcp"),
                (8080, Some("8081"), None, "tcp"),
                (53, Some("5353"), Some("127.0.0.1"), "udp"),
                (9000, Some("9000"), None, "tcp"),
                (9001, Some("9001"), None, "tcp"),
                (443, Some("8443"), Some("0.0.0.0"), "tcp"),
                (7000, None, None, "tcp"),
            ]
        );
    }

    #[test]
    fn bad_ports() {
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    ports:\n      - \"80:80\"\n      - \"80:http\"\n"
            ),
            "docker-compose.yml:6:9: services.web.ports[1]: invalid port '80:http': 'http' is not a port number"
        );
        assert_eq!(
            err("services:\n  web:\n    image: x\n    ports:\n      - published: 80\n"),
            "docker-compose.yml:5:9: services.web.ports[0]: missing 'target'"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    ports:\n      - target: 80\n        mode: swarm\n"
            ),
            "docker-compose.yml:6:15: services.web.ports[0].mode: unknown port mode 'swarm' (use host or ingress)"
        );
        assert_eq!(
            err("services:\n  web:\n    image: x\n    ports: \"80:80\"\n"),
            "docker-compose.yml:4:12: services.web.ports: expected a list, found a scalar"
        );
    }

    #[test]
    fn volumes_short_and_long() {
        let m = ok(
            "services:\n  web:\n    image: x\n    volumes:\n      - data:/var/lib/data\n      - ./conf:/etc/app:ro\n      - ./conf/x/../y/:/etc/y\n      - /abs:/abs:rw\n      - /anon\n      - type: volume\n        source: data\n        target: /d2\n        read_only: true\n      - type: bind\n        source: site\n        target: /site\n      - type: tmpfs\n        target: /tmp\n      - type: volume\n        target: /anon2\nvolumes:\n  data:\n",
        );
        let mounts: Vec<(String, Option<String>, String, bool)> = svc(&m, "web")
            .volumes
            .into_iter()
            .map(|v| (v.kind, v.source, v.target, v.read_only))
            .collect();
        let expect = |k: &str, s: Option<&str>, t: &str, ro: bool| {
            (k.to_string(), s.map(str::to_string), t.to_string(), ro)
        };
        assert_eq!(
            mounts,
            [
                expect("volume", Some("data"), "/var/lib/data", false),
                expect("bind", Some("./conf"), "/etc/app", true),
                expect("bind", Some("./conf/y"), "/etc/y", false),
                expect("bind", Some("/abs"), "/abs", false),
                expect("volume", None, "/anon", false),
                expect("volume", Some("data"), "/d2", true),
                expect("bind", Some("./site"), "/site", false),
                expect("tmpfs", None, "/tmp", false),
                expect("volume", None, "/anon2", false),
            ]
        );
        assert_eq!(m.volumes["data"].name, "mystack_data");
    }

    #[test]
    fn volume_errors() {
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    volumes:\n      - data:/data\nvolumes:\n  date:\n"
            ),
            "docker-compose.yml:5:9: services.web.volumes[0]: service web refers to undefined volume data (did you mean 'date'?)"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    volumes:\n      - type: volume\n        source: cache\n        target: /c\n"
            ),
            "docker-compose.yml:6:17: services.web.volumes[0].source: service web refers to undefined volume cache (declare it under the top-level 'volumes:' key)"
        );
        assert_eq!(
            err("services:\n  web:\n    image: x\n    volumes:\n      - ./a:/b:z\n"),
            "docker-compose.yml:5:9: services.web.volumes[0]: invalid volume './a:/b:z': unsupported volume option 'z' (Stagecraft supports ro and rw)"
        );
        assert_eq!(
            err("services:\n  web:\n    image: x\n    volumes:\n      - target: /x\n"),
            "docker-compose.yml:5:9: services.web.volumes[0]: missing 'type' (volume, bind or tmpfs)"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    volumes:\n      - type: tmpfs\n        source: x\n        target: /x\n"
            ),
            "docker-compose.yml:6:17: services.web.volumes[0].source: a tmpfs mount has no 'source'"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    volumes:\n      - type: bind\n        source: ./x\n        target: /x\n        bind:\n          propagation: shared\n"
            ),
            "docker-compose.yml:8:9: services.web.volumes[0]: unsupported key 'bind' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
    }

    #[test]
    fn networks_of_services_and_top_level() {
        let m = ok(
            "name: shop\nservices:\n  web:\n    image: x\n    networks: [front, back]\n  api:\n    image: x\n    networks:\n      back:\n        aliases: [api.internal, backend]\n      default:\n  db:\n    image: x\n    networks:\n      back: null\nnetworks:\n  front:\n    driver: bridge\n    labels: {tier: front}\n  back:\n    name: shared-back\n    internal: true\n    attachable: yes\n  outside:\n    external: true\n  named-outside:\n    external: true\n    name: real\n",
        );
        assert_eq!(
            svc(&m, "web").networks.keys().collect::<Vec<_>>(),
            ["back", "front"]
        );
        let api = svc(&m, "api");
        assert_eq!(
            api.networks["back"].aliases,
            strings(&["api.internal", "backend"])
        );
        assert!(api.networks.contains_key("default"));
        assert_eq!(svc(&m, "db").networks.keys().collect::<Vec<_>>(), ["back"]);
        let front = &m.networks["front"];
        assert_eq!(front.name, "shop_front");
        assert_eq!(front.driver.as_deref(), Some("bridge"));
        assert_eq!(front.labels["tier"], "front");
        let back = &m.networks["back"];
        assert_eq!(back.name, "shared-back");
        assert!(back.internal && back.attachable && !back.external);
        assert_eq!(m.networks["outside"].name, "outside");
        assert!(m.networks["outside"].external);
        assert_eq!(m.networks["named-outside"].name, "real");
        assert_eq!(m.networks["default"].name, "shop_default");

        // No service on the default network: no default network.
        let m = ok("services:\n  web:\n    image: x\n    networks: [front]\nnetworks:\n  front:\n");
        assert!(!m.networks.contains_key("default"));

        // A declared default network is used as declared.
        let m = ok("services:\n  web:\n    image: x\nnetworks:\n  default:\n    name: custom\n");
        assert_eq!(m.networks["default"].name, "custom");
    }

    #[test]
    fn network_errors() {
        assert_eq!(
            err("services:\n  web:\n    image: x\n    networks: [frontend]\nnetworks:\n  front:\n"),
            "docker-compose.yml:4:16: services.web.networks[0]: service web refers to undefined network frontend (did you mean 'front'?)"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    networks:\n      front:\n        ipv4_address: 10.0.0.2\nnetworks:\n  front:\n"
            ),
            "docker-compose.yml:6:9: services.web.networks.front: unsupported key 'ipv4_address' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
        assert_eq!(
            err("networks:\n  front:\n    external: true\n    driver: overlay\n"),
            "docker-compose.yml:4:5: networks.front: 'driver' cannot be set on an external network"
        );
        assert_eq!(
            err("networks:\n  front:\n    external:\n      name: x\n"),
            "docker-compose.yml:4:7: networks.front.external: expected true or false, found a mapping ('external: {name: x}' is obsolete; write 'external: true' and 'name: x')"
        );
        assert_eq!(
            err("networks:\n  front:\n    drivr: bridge\n"),
            "docker-compose.yml:3:5: networks.front: unknown key 'drivr' (did you mean 'driver'?)"
        );
        assert_eq!(
            err("networks:\n  front:\n    internal: maybe\n"),
            "docker-compose.yml:3:15: networks.front.internal: expected true or false, found 'maybe'"
        );
    }

    #[test]
    fn top_level_volumes() {
        let m = ok(
            "volumes:\n  data:\n  logs:\n    driver: local\n    labels: [keep=1]\n  shared:\n    external: true\n  named:\n    name: exact\nservices: {}\n",
        );
        assert_eq!(m.volumes["data"].name, "mystack_data");
        assert_eq!(m.volumes["logs"].driver.as_deref(), Some("local"));
        assert_eq!(m.volumes["logs"].labels["keep"], "1");
        assert_eq!(m.volumes["shared"].name, "shared");
        assert!(m.volumes["shared"].external);
        assert_eq!(m.volumes["named"].name, "exact");
        assert_eq!(
            err("volumes:\n  data:\n    driver_opts: {type: nfs}\n"),
            "docker-compose.yml:3:5: volumes.data: unsupported key 'driver_opts' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
    }

    #[test]
    fn depends_on_short_and_long() {
        let m = ok(
            "services:\n  web:\n    image: x\n    depends_on: [api]\n  api:\n    image: x\n    depends_on:\n      db:\n        condition: service_healthy\n        restart: true\n      migrate:\n        condition: service_completed_successfully\n        required: false\n  db:\n    image: x\n  migrate:\n    image: x\n",
        );
        let web = svc(&m, "web");
        assert_eq!(
            web.depends_on["api"],
            Dependency {
                condition: "service_started".into(),
                required: true,
                restart: false
            }
        );
        let api = svc(&m, "api");
        assert_eq!(
            api.depends_on["db"],
            Dependency {
                condition: "service_healthy".into(),
                required: true,
                restart: true
            }
        );
        assert_eq!(
            api.depends_on["migrate"],
            Dependency {
                condition: "service_completed_successfully".into(),
                required: false,
                restart: false
            }
        );
        assert_eq!(m.order, ["db", "migrate", "api", "web"]);
    }

    #[test]
    fn depends_on_errors() {
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    depends_on:\n      - dbb\n  db:\n    image: x\n"
            ),
            "docker-compose.yml:5:9: services.web.depends_on[0]: service web depends on undefined service dbb (did you mean 'db'?)"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    depends_on:\n      db:\n        condition: service_ready\n  db:\n    image: x\n"
            ),
            "docker-compose.yml:6:20: services.web.depends_on.db.condition: unknown condition 'service_ready' (use service_started, service_healthy or service_completed_successfully)"
        );
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    depends_on:\n      db:\n        required: true\n  db:\n    image: x\n"
            ),
            "docker-compose.yml:6:9: services.web.depends_on.db: missing 'condition' (use service_started, service_healthy or service_completed_successfully)"
        );
    }

    #[test]
    fn dependency_cycles() {
        assert_eq!(
            err(
                "services:\n  web:\n    image: x\n    depends_on: [api]\n  api:\n    image: x\n    depends_on:\n      web:\n        condition: service_started\n"
            ),
            "docker-compose.yml:8:7: services.api.depends_on.web: dependency cycle: api -> web -> api"
        );
        assert_eq!(
            err("services:\n  a:\n    image: x\n    depends_on: [a]\n"),
            "docker-compose.yml:4:18: services.a.depends_on[0]: dependency cycle: a -> a"
        );
        assert_eq!(
            err(
                "services:\n  c:\n    image: x\n    depends_on: [a]\n  b:\n    image: x\n    depends_on: [c]\n  a:\n    image: x\n    depends_on: [b]\n  z:\n    image: x\n"
            ),
            "docker-compose.yml:10:18: services.a.depends_on[0]: dependency cycle: a -> b -> c -> a"
        );
    }

    #[test]
    fn order_ties_are_broken_by_name() {
        let m = ok(
            "services:\n  zeta:\n    image: x\n  beta:\n    image: x\n    depends_on: [zeta]\n  alpha:\n    image: x\n  gamma:\n    image: x\n",
        );
        assert_eq!(m.order, ["alpha", "gamma", "zeta", "beta"]);
        let m = ok("services:\n  c:\n    image: x\n  b:\n    image: x\n  a:\n    image: x\n");
        assert_eq!(m.order, ["a", "b", "c"]);
    }

    #[test]
    fn healthcheck() {
        let m = ok(
            "services:\n  a:\n    image: x\n    healthcheck:\n      test: curl -f http://localhost/ || exit 1\n      interval: 1m30s\n      timeout: 500ms\n      retries: 3\n      start_period: 1h\n      start_interval: 2s\n  b:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"pg_isready\", \"-U\", \"app\"]\n  c:\n    image: x\n    healthcheck:\n      disable: true\n  d:\n    image: x\n    healthcheck:\n      test: [\"NONE\"]\n  e:\n    image: x\n    healthcheck:\n      interval: 5s\n",
        );
        let a = svc(&m, "a").healthcheck.unwrap();
        assert_eq!(
            a.test,
            strings(&["CMD-SHELL", "curl -f http://localhost/ || exit 1"])
        );
        assert_eq!(a.interval_ns, Some(90_000_000_000));
        assert_eq!(a.timeout_ns, Some(500_000_000));
        assert_eq!(a.retries, Some(3));
        assert_eq!(a.start_period_ns, Some(3_600_000_000_000));
        assert_eq!(a.start_interval_ns, Some(2_000_000_000));
        assert!(!a.disable);
        let b = svc(&m, "b").healthcheck.unwrap();
        assert_eq!(b.test, strings(&["CMD", "pg_isready", "-U", "app"]));
        assert!(svc(&m, "c").healthcheck.unwrap().disable);
        assert!(svc(&m, "d").healthcheck.unwrap().disable);
        let e = svc(&m, "e").healthcheck.unwrap();
        assert!(e.test.is_empty());
        assert_eq!(e.interval_ns, Some(5_000_000_000));

        assert_eq!(
            err("services:\n  a:\n    image: x\n    healthcheck:\n      test: [\"curl\", \"x\"]\n"),
            "docker-compose.yml:5:13: services.a.healthcheck.test: a test list must be [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]"
        );
        assert_eq!(
            err("services:\n  a:\n    image: x\n    healthcheck:\n      interval: 10\n"),
            "docker-compose.yml:5:17: services.a.healthcheck.interval: the duration '10' is missing a unit (use a unit: ns, us, ms, s, m or h, e.g. 10s)"
        );
        assert_eq!(
            err("services:\n  a:\n    image: x\n    healthcheck:\n      retries: -1\n"),
            "docker-compose.yml:5:16: services.a.healthcheck.retries: expected a non-negative integer, found '-1'"
        );
        assert_eq!(
            err(
                "services:\n  a:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      disable: true\n"
            ),
            "docker-compose.yml:5:7: services.a.healthcheck: 'test' and 'disable: true' cannot be combined"
        );
    }

    #[test]
    fn scalar_service_keys() {
        let m = ok(
            "services:\n  a:\n    image: x\n    restart: on-failure:5\n    container_name: the-a\n    hostname: a.local\n    user: \"1000:1000\"\n    working_dir: /srv\n    stop_grace_period: 1m\n    stop_signal: SIGINT\n    labels:\n      com.example.team: web\n      empty:\n  b:\n    image: x\n    restart: \"no\"\n    labels: [\"a=1\", \"b\"]\n    deploy:\n      replicas: 3\n",
        );
        let a = svc(&m, "a");
        assert_eq!(a.restart.as_deref(), Some("on-failure:5"));
        assert_eq!(a.container_name.as_deref(), Some("the-a"));
        assert_eq!(a.hostname.as_deref(), Some("a.local"));
        assert_eq!(a.user.as_deref(), Some("1000:1000"));
        assert_eq!(a.working_dir.as_deref(), Some("/srv"));
        assert_eq!(a.stop_grace_period_ns, Some(60_000_000_000));
        assert_eq!(a.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(a.labels["com.example.team"], "web");
        assert_eq!(a.labels["empty"], "");
        let b = svc(&m, "b");
        assert_eq!(b.restart.as_deref(), Some("no"));
        assert_eq!(b.labels["a"], "1");
        assert_eq!(b.labels["b"], "");
        assert_eq!(b.replicas, 3);

        assert_eq!(
            err("services:\n  a:\n    image: x\n    restart: sometimes\n"),
            "docker-compose.yml:4:14: services.a.restart: invalid restart policy 'sometimes' (use no, always, on-failure, on-failure:N or unless-stopped)"
        );
        assert_eq!(
            err(
                "services:\n  a:\n    image: x\n    deploy:\n      resources:\n        limits: {cpus: '1'}\n"
            ),
            "docker-compose.yml:5:7: services.a.deploy: unsupported key 'resources' (Stagecraft reads a subset of the Compose format; see docs/compose-file.md)"
        );
        assert_eq!(
            err("services:\n  a:\n    image: [x]\n"),
            "docker-compose.yml:3:12: services.a.image: expected a string, found a sequence"
        );
    }

    #[test]
    fn container_name_with_replicas() {
        assert_eq!(
            err(
                "services:\n  a:\n    image: x\n    container_name: the-a\n    deploy:\n      replicas: 2\n"
            ),
            "docker-compose.yml:4:21: services.a.container_name: container_name cannot be used with 2 replicas: container names must be unique (remove container_name or set deploy.replicas to 1)"
        );
        let m = ok(
            "services:\n  a:\n    image: x\n    container_name: the-a\n    deploy:\n      replicas: 1\n",
        );
        assert_eq!(svc(&m, "a").replicas, 1);
    }

    #[test]
    fn interpolation_in_values() {
        let mut c = case(
            "services:\n  web:\n    image: \"${REGISTRY:-docker.io}/app:${TAG}\"\n    command: echo $$HOME ${GREETING:-hi}\n    labels:\n      cost: 5$$\n      $NOT_A_KEY_VAR: x\n",
        );
        c.plain = &[("TAG", "1.0")];
        let m = c.ok();
        let web = svc(&m, "web");
        assert_eq!(web.image.as_deref(), Some("docker.io/app:1.0"));
        assert_eq!(web.command.unwrap(), strings(&["echo", "$HOME", "hi"]));
        assert_eq!(web.labels["cost"], "5$");
        assert!(
            web.labels.contains_key("$NOT_A_KEY_VAR"),
            "keys are not interpolated"
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);

        let m = ok("services:\n  web:\n    image: app:${TAG}\n    hostname: ${TAG}\n");
        assert_eq!(svc(&m, "web").image.as_deref(), Some("app:"));
        assert_eq!(
            m.warnings,
            ["variable TAG is not set, defaulting to a blank string"]
        );
    }

    #[test]
    fn required_variable_error_position() {
        assert_eq!(
            err("services:\n  web:\n    image: x\n    environment:\n      DB: ${X:?must set X}\n"),
            "docker-compose.yml:5:11: services.web.environment.DB: required variable X is missing a value: must set X"
        );
        assert_eq!(
            err("services:\n  web:\n    image: \"${X\"\n"),
            "docker-compose.yml:3:12: services.web.image: invalid interpolation format in \"${X\": unclosed '${' (write $$ for a literal $)"
        );
    }

    #[test]
    fn dotenv_precedence_and_errors() {
        let mut c = case(
            "services:\n  web:\n    image: app:${TAG}\n    environment:\n      - MODE\n      - FROM_DOTENV\n",
        );
        c.dotenv = Some("TAG=from-dotenv\nMODE=dev\nFROM_DOTENV=${TAG}-x\n");
        let m = c.ok();
        let web = svc(&m, "web");
        assert_eq!(web.image.as_deref(), Some("app:from-dotenv"));
        assert_eq!(web.environment["MODE"], EnvValue::Plain("dev".into()));
        c.plain = &[("TAG", "from-vars"), ("MODE", "prod")];
        let m = c.ok();
        let web = svc(&m, "web");
        assert_eq!(web.image.as_deref(), Some("app:from-vars"));
        assert_eq!(web.environment["MODE"], EnvValue::Plain("prod".into()));
        // The shell-like variables also win inside .env interpolation.
        assert_eq!(
            web.environment["FROM_DOTENV"],
            EnvValue::Plain("from-vars-x".into())
        );
        c.secret = &[("TAG", "secret-tag")];
        assert_eq!(
            c.err(),
            "docker-compose.yml:3:12: services.web.image: secret variable TAG may only be used in environment values"
        );

        c.dotenv = Some("A=1\nB C\n");
        c.file = "stack/compose.yml";
        assert_eq!(
            c.err(),
            "stack/.env:2:3: unexpected character 'C' after variable name B (lines look like KEY=VALUE)"
        );
    }

    #[test]
    fn secrets_in_environment() {
        let mut c = case(
            "services:\n  web:\n    image: x\n    env_file: app.env\n    environment:\n      DATABASE_URL: postgres://app:${DB_PASSWORD}@db/app\n      PLAIN: ${USER_NAME}\n      DB_PASSWORD:\n  list:\n    image: x\n    environment:\n      - TOKEN=${API_TOKEN}\n      - API_TOKEN\n      - ENABLED=${API_TOKEN:+yes}\n",
        );
        c.plain = &[("USER_NAME", "bob")];
        c.secret = &[("DB_PASSWORD", "hunter2"), ("API_TOKEN", "tok")];
        c.files = &[("app.env", "FROM_FILE=${DB_PASSWORD}\n")];
        let m = c.ok();
        let env = svc(&m, "web").environment;
        assert_eq!(
            env["DATABASE_URL"],
            EnvValue::Secret {
                secret_value: "postgres://app:hunter2@db/app".into(),
                vars: strings(&["DB_PASSWORD"])
            }
        );
        assert_eq!(env["PLAIN"], EnvValue::Plain("bob".into()));
        assert!(env["DB_PASSWORD"].is_secret());
        assert!(env["FROM_FILE"].is_secret());
        let list = svc(&m, "list").environment;
        assert!(list["TOKEN"].is_secret());
        assert!(list["API_TOKEN"].is_secret());
        assert_eq!(list["ENABLED"], EnvValue::Plain("yes".into()));
        // Serialised untagged.
        let json = serde_json::to_value(&list["TOKEN"]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"secret_value": "tok", "vars": ["API_TOKEN"]})
        );
        assert_eq!(
            serde_json::to_value(&list["ENABLED"]).unwrap(),
            serde_json::json!("yes")
        );
    }

    #[test]
    fn secrets_outside_environment_are_rejected_without_their_value() {
        let secret: &[(&str, &str)] = &[("PW", "hunter2"), ("PW2", "sw0rdfish")];
        for (text, expected) in [
            (
                "services:\n  web:\n    image: x\n    command: [\"run\", \"--password=${PW}\"]\n",
                "docker-compose.yml:4:22: services.web.command[1]: secret variable PW may only be used in environment values",
            ),
            (
                "services:\n  web:\n    image: x\n    labels:\n      pw: $PW$PW2\n",
                "docker-compose.yml:5:11: services.web.labels.pw: secret variables PW, PW2 may only be used in environment values",
            ),
            (
                "services:\n  web:\n    build:\n      args:\n        PW:\n",
                "docker-compose.yml:5:9: services.web.build.args.PW: secret variable PW may only be used in environment values",
            ),
            (
                "services:\n  web:\n    image: x\n    ports: [\"${PW}\"]\n",
                "docker-compose.yml:4:13: services.web.ports[0]: secret variable PW may only be used in environment values",
            ),
        ] {
            let mut c = case(text);
            c.secret = secret;
            let e = c.err();
            assert_eq!(e, expected);
            assert!(!e.contains("hunter2") && !e.contains("sw0rdfish"));
        }
        // A required-variable message never includes values either.
        let mut c = case(
            "services:\n  web:\n    image: x\n    environment:\n      A: ${PW:?} ${NOPE:?missing}\n",
        );
        c.secret = secret;
        let e = c.err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn anchors_and_merge_keys() {
        let m = ok(
            "x-env: &env\n  LOG: info\n  MODE: prod\nx-base: &base\n  image: app:1\n  restart: unless-stopped\n  environment: *env\nservices:\n  web:\n    <<: *base\n    command: [\"web\"]\n  worker:\n    <<: *base\n    environment:\n      <<: *env\n      MODE: worker\n",
        );
        let web = svc(&m, "web");
        let worker = svc(&m, "worker");
        assert_eq!(web.image.as_deref(), Some("app:1"));
        assert_eq!(worker.restart.as_deref(), Some("unless-stopped"));
        assert_eq!(web.environment["MODE"], EnvValue::Plain("prod".into()));
        assert_eq!(worker.environment["MODE"], EnvValue::Plain("worker".into()));
        assert_eq!(worker.environment["LOG"], EnvValue::Plain("info".into()));
        // Errors inside merged content point at the definition.
        assert_eq!(
            err("x-base: &base\n  imag: app\nservices:\n  web:\n    <<: *base\n"),
            "docker-compose.yml:2:3: services.web: unknown key 'imag' (did you mean 'image'?)"
        );
    }

    #[test]
    fn yaml_errors_have_positions() {
        assert_eq!(
            err("services:\n  web:\n    image: x\n    image: y\n"),
            "docker-compose.yml:4:5: duplicate key 'image' (first defined at line 3)"
        );
        let e = err("services:\n  web: [\n");
        assert!(e.starts_with("docker-compose.yml:"), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
    }

    #[test]
    fn config_hash_is_stable_and_ignores_replicas() {
        let base = ok("services:\n  web:\n    image: nginx\n    command: [\"a\"]\n    environment:\n      A: 1\n      B: 2\n    ports: [\"80:80\"]\n").services["web"].config_hash.clone();
        let reordered = ok("services:\n  web:\n    ports: [\"80:80\"]\n    environment:\n      B: 2\n      A: 1\n    command: [\"a\"]\n    image: nginx\n").services["web"].config_hash.clone();
        assert_eq!(base, reordered);
        let scaled = ok("services:\n  web:\n    image: nginx\n    command: [\"a\"]\n    environment: [A=1, B=2]\n    ports: [\"80:80\"]\n    deploy: {replicas: 5}\n").services["web"].config_hash.clone();
        assert_eq!(base, scaled);
        let changed = ok("services:\n  web:\n    image: nginx\n    command: [\"b\"]\n    environment:\n      A: 1\n      B: 2\n    ports: [\"80:80\"]\n").services["web"].config_hash.clone();
        assert_ne!(base, changed);
    }

    #[test]
    fn config_hash_covers_secrets_only_by_digest() {
        let text = "services:\n  web:\n    image: x\n    environment:\n      PW: ${PW}\n";
        let hash = |pw: &'static str| {
            let secret = [("PW", pw)];
            let mut c = case(text);
            c.secret = &secret;
            c.ok().services["web"].clone()
        };
        let one = hash("one");
        assert_ne!(one.config_hash, hash("two").config_hash);
        assert_eq!(one.config_hash, hash("one").config_hash);
        // The hash input is the service with the secret replaced by its digest.
        let mut redacted = one.clone();
        redacted.config_hash = String::new();
        redacted.environment.insert(
            "PW".into(),
            EnvValue::Secret {
                secret_value: format!("sha256:{}", sha256_hex(b"one")),
                vars: strings(&["PW"]),
            },
        );
        let mut value = serde_json::to_value(&redacted).unwrap();
        value.as_object_mut().unwrap().remove("replicas");
        let input = canonical(value).to_string();
        assert!(!input.contains("\"one\""));
        assert_eq!(one.config_hash, sha256_hex(input.as_bytes()));
    }
}
