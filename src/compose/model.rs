//! The loaded Compose project: what [`super::load`] returns.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// A validated Compose project.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Model {
    /// Project name: explicit, top-level `name:`, or the normalised folder name.
    pub name: String,
    pub services: BTreeMap<String, Service>,
    /// Declared networks, plus `default` when a service uses it.
    pub networks: BTreeMap<String, Network>,
    pub volumes: BTreeMap<String, Volume>,
    /// Service names, dependencies first, ties broken by name.
    pub order: Vec<String>,
    /// Non-fatal findings (unset variables, obsolete `version`), in the order found.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub image: Option<String>,
    pub build: Option<Build>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, EnvValue>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    /// Networks the service joins; `{"default": {}}` when none are given.
    pub networks: BTreeMap<String, ServiceNetwork>,
    pub depends_on: BTreeMap<String, Dependency>,
    pub healthcheck: Option<Healthcheck>,
    pub labels: BTreeMap<String, String>,
    pub restart: Option<String>,
    /// `deploy.replicas`, default 1.
    pub replicas: u32,
    pub container_name: Option<String>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub stop_grace_period_ns: Option<u64>,
    pub stop_signal: Option<String>,
    /// Hex SHA-256 of the service's canonical JSON without `replicas`, secrets hashed.
    pub config_hash: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Build {
    /// Relative to the compose file's folder, normalised (`.`, `./x`, `../x`), or absolute, or
    /// a URL as written.
    pub context: String,
    pub dockerfile: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// An environment value; `Secret` when any secret variable's value went into it.
///
/// Serialises untagged: a string, or `{"secret_value": ..., "vars": [...]}`. `Debug` redacts
/// the secret value.
#[derive(Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret {
        secret_value: String,
        /// The secret variables that contributed, sorted.
        vars: Vec<String>,
    },
}

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvValue::Plain(v) => f.debug_tuple("Plain").field(v).finish(),
            EnvValue::Secret { vars, .. } => f
                .debug_struct("Secret")
                .field("secret_value", &"<redacted>")
                .field("vars", vars)
                .finish(),
        }
    }
}

impl EnvValue {
    /// The value, whether plain or secret.
    pub fn value(&self) -> &str {
        match self {
            EnvValue::Plain(v) => v,
            EnvValue::Secret { secret_value, .. } => secret_value,
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, EnvValue::Secret { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secret_values() {
        let v = EnvValue::Secret {
            secret_value: "hunter2".into(),
            vars: vec!["PW".into()],
        };
        assert_eq!(
            format!("{v:?}"),
            "Secret { secret_value: \"<redacted>\", vars: [\"PW\"] }"
        );
        assert_eq!(format!("{:?}", EnvValue::Plain("x".into())), "Plain(\"x\")");
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Port {
    pub target: u16,
    /// Host port or host port range (`"8000-8010"`); `None` for a random host port.
    pub published: Option<String>,
    pub host_ip: Option<String>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    /// `volume`, `bind` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume: the top-level volume key (`None` for an anonymous volume). Bind: the host path as
    /// written, relative ones normalised to start with `./` or `../`. Tmpfs: `None`.
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct ServiceNetwork {
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Dependency {
    /// `service_started`, `service_healthy` or `service_completed_successfully`.
    pub condition: String,
    pub required: bool,
    pub restart: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`; empty when only timings are given
    /// (the image's own check is kept).
    pub test: Vec<String>,
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub retries: Option<u64>,
    pub start_period_ns: Option<u64>,
    pub start_interval_ns: Option<u64>,
    pub disable: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Network {
    /// Explicit `name:`, else `<project>_<key>`; for an external network the key or `name:`.
    pub name: String,
    pub driver: Option<String>,
    pub external: bool,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Volume {
    /// Explicit `name:`, else `<project>_<key>`; for an external volume the key or `name:`.
    pub name: String,
    pub driver: Option<String>,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
}
