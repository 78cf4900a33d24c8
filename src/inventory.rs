//! The inventory of hosts under `inventory:` in `stagecraft.yml`, validated once when the project
//! loads, and the pure query behind `ssh.hosts{role=, env=, group=, names=}`.
//!
//! The YAML is read with serde into the `Raw*` structs (unknown keys are rejected by
//! `deny_unknown_fields` and reported with their position and a suggestion by
//! [`crate::project`]); the rules that serde cannot express (host names, exactly one of `address`
//! and `tailscale`, port range, `known_hosts` values, jump targets and cycles, group members) are
//! checked here with the position of the offending value. The format is documented in
//! `docs/inventory.md`.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::util::did_you_mean;

/// The values `known_hosts` accepts, the first being the default.
pub const KNOWN_HOSTS_POLICIES: [&str; 2] = ["strict", "accept-new"];

/// One host of the inventory, with defaults applied. Serialized as the table `ssh.hosts` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    /// IP address or DNS name. Exactly one of `address` and `tailscale` is set.
    pub address: Option<String>,
    /// Tailscale machine name, resolved to an address at run time through `stagecraft/tailscale`.
    pub tailscale: Option<String>,
    pub port: u16,
    /// Login user; `None` leaves it to ssh (the local user name).
    pub user: Option<String>,
    /// Private key path as written (a leading `~/` is expanded to `$HOME` when connecting).
    pub key: Option<String>,
    /// `strict` or `accept-new`.
    pub known_hosts: String,
    /// A known_hosts file instead of the user's (`~/` expanded when connecting).
    pub known_hosts_file: Option<String>,
    /// Another inventory host's name, or a literal `[user@]host[:port]`.
    pub jump: Option<String>,
    /// ssh's `KexAlgorithms` list for this host (None: the ssh client's default).
    pub kex: Option<String>,
    pub roles: Vec<String>,
    pub env: Option<String>,
}

/// The validated inventory: hosts in the order of the file, and named groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    hosts: Vec<Host>,
    /// Group name → indexes into `hosts`, ascending.
    groups: Vec<(String, Vec<usize>)>,
}

/// A broken rule of the format, or a query naming something the inventory does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryError {
    /// `path` is the key path (`inventory.hosts.web-2.port`); `at` the 1-based line and column
    /// in `stagecraft.yml` when known.
    Invalid {
        at: Option<(u64, u64)>,
        path: String,
        message: String,
    },
    /// `what` is `role`, `env`, `group` or `host`; `known` lists the names the inventory has.
    Unknown {
        what: &'static str,
        name: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
}

impl InventoryError {
    /// Line and column in `stagecraft.yml`, when known.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            InventoryError::Invalid { at, .. } => *at,
            InventoryError::Unknown { .. } => None,
        }
    }

    /// What to do about it, for the CLI's `hint:` line or a Lua error's `hint` field.
    pub fn hint(&self) -> Option<String> {
        match self {
            InventoryError::Invalid { .. } => None,
            InventoryError::Unknown { what, known, .. } if known.is_empty() => Some(format!(
                "the inventory in stagecraft.yml has no {}",
                plural(what)
            )),
            InventoryError::Unknown { what, known, .. } => {
                Some(format!("known {}: {}", plural(what), known.join(", ")))
            }
        }
    }
}

fn plural(what: &str) -> String {
    match what {
        "env" => "envs".into(),
        other => format!("{other}s"),
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InventoryError::Invalid { path, message, .. } => write!(f, "{path}: {message}"),
            InventoryError::Unknown {
                what,
                name,
                suggestion,
                ..
            } => {
                write!(f, "unknown {what} '{name}'")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean '{s}'?)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for InventoryError {}

impl Inventory {
    /// All hosts, in the order of `stagecraft.yml`.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The host named `name`.
    pub fn get(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Roles used by any host, sorted.
    pub fn roles(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self
            .hosts
            .iter()
            .flat_map(|h| h.roles.iter().map(String::as_str))
            .collect();
        set.into_iter().collect()
    }

    /// Environments used by any host, sorted.
    pub fn envs(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self.hosts.iter().filter_map(|h| h.env.as_deref()).collect();
        set.into_iter().collect()
    }

    /// Group names, in the order of `stagecraft.yml`.
    pub fn groups(&self) -> Vec<&str> {
        self.groups.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The hosts of group `name`, in inventory order.
    pub fn group(&self, name: &str) -> Option<Vec<&Host>> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, members)| members.iter().map(|&i| &self.hosts[i]).collect())
    }

    /// The hosts matching every given filter, in inventory order: having `role`, in `env`,
    /// member of `group`, and (when `names` is not empty) named in `names`. No filter selects
    /// every host. A role, env, group or name the inventory does not know is an error; a known
    /// role with no host in the given env gives an empty list.
    pub fn select(
        &self,
        role: Option<&str>,
        env: Option<&str>,
        group: Option<&str>,
        names: &[String],
    ) -> Result<Vec<&Host>, InventoryError> {
        if let Some(role) = role {
            check_known("role", role, &self.roles())?;
        }
        if let Some(env) = env {
            check_known("env", env, &self.envs())?;
        }
        let members = match group {
            Some(group) => {
                check_known("group", group, &self.groups())?;
                self.groups
                    .iter()
                    .find(|(n, _)| n == group)
                    .map(|(_, m)| m.as_slice())
            }
            None => None,
        };
        let host_names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        for name in names {
            check_known("host", name, &host_names)?;
        }
        Ok(self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| role.is_none_or(|r| h.roles.iter().any(|x| x == r)))
            .filter(|(_, h)| env.is_none_or(|e| h.env.as_deref() == Some(e)))
            .filter(|(i, _)| members.is_none_or(|m| m.contains(i)))
            .filter(|(_, h)| names.is_empty() || names.contains(&h.name))
            .map(|(_, h)| h)
            .collect())
    }
}

fn check_known(what: &'static str, name: &str, known: &[&str]) -> Result<(), InventoryError> {
    if known.contains(&name) {
        return Ok(());
    }
    Err(InventoryError::Unknown {
        what,
        name: name.to_string(),
        suggestion: did_you_mean(name, known).map(str::to_string),
        known: known.iter().map(|s| s.to_string()).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// The serde layer: shapes and unknown keys.

/// `inventory:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInventory {
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    hosts: Ordered<Spanned<RawHost>>,
    #[serde(default)]
    groups: Ordered<Spanned<Vec<Spanned<RawMember>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    known_hosts: Option<Spanned<String>>,
    #[serde(default)]
    known_hosts_file: Option<Spanned<String>>,
    #[serde(default)]
    jump: Option<Spanned<String>>,
    #[serde(default)]
    kex: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    tailscale: Option<Spanned<String>>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    known_hosts: Option<Spanned<String>>,
    #[serde(default)]
    known_hosts_file: Option<Spanned<String>>,
    #[serde(default)]
    jump: Option<Spanned<String>>,
    #[serde(default)]
    kex: Option<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    env: Option<Spanned<String>>,
}

/// A group member: a host name, or a selector `{ role: R, env: E }` (either or both).
#[derive(Debug)]
enum RawMember {
    Host(String),
    Selector {
        role: Option<String>,
        env: Option<String>,
    },
}

impl<'de> Deserialize<'de> for RawMember {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMember;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a host name or a selector { role: ROLE, env: ENV }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMember, E> {
                Ok(RawMember::Host(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMember, A::Error> {
                let (mut role, mut env) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "role" => role = Some(map.next_value::<String>()?),
                        "env" => env = Some(map.next_value::<String>()?),
                        other => return Err(de::Error::unknown_field(other, &["role", "env"])),
                    }
                }
                Ok(RawMember::Selector { role, env })
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping with string keys, kept in the order written (null reads as empty).
#[derive(Debug)]
struct Ordered<V>(Vec<(Spanned<String>, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered<V>, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Ordered<V>, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<V>, A::Error> {
                let mut out: Vec<(Spanned<String>, V)> = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    if out.iter().any(|(k, _)| k.value == key.value) {
                        return Err(de::Error::custom(format!("duplicate key '{}'", key.value)));
                    }
                    let value = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_any(Vis(std::marker::PhantomData))
    }
}

// ---------------------------------------------------------------------------------------------
// The rules.

fn at(loc: &Location) -> Option<(u64, u64)> {
    (loc.line() > 0).then(|| (loc.line(), loc.column()))
}

fn invalid<T>(
    path: impl Into<String>,
    loc: &Location,
    message: impl Into<String>,
) -> Result<T, InventoryError> {
    Err(InventoryError::Invalid {
        at: at(loc),
        path: path.into(),
        message: message.into(),
    })
}

/// Whether `name` is a valid host or group name: `[a-z0-9][a-z0-9-_.]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// A non-empty string without whitespace or control characters.
fn word(path: &str, what: &str, s: &Spanned<String>) -> Result<String, InventoryError> {
    if s.value.is_empty() {
        return invalid(path, &s.referenced, format!("{what} must not be empty"));
    }
    if s.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid(
            path,
            &s.referenced,
            format!("{what} must not contain spaces: {:?}", s.value),
        );
    }
    Ok(s.value.clone())
}

/// An ssh `KexAlgorithms` list: algorithm names separated by commas, optionally with a leading
/// `+`, `-` or `^` (append, remove, prefer), as ssh_config takes it.
fn kex(path: &str, k: &Spanned<String>) -> Result<String, InventoryError> {
    match crate::util::check_kex(&k.value) {
        Ok(()) => Ok(k.value.clone()),
        Err(why) => invalid(path, &k.referenced, why),
    }
}

fn port(path: &str, p: &Spanned<i64>) -> Result<u16, InventoryError> {
    match u16::try_from(p.value) {
        Ok(n) if n > 0 => Ok(n),
        _ => invalid(
            path,
            &p.referenced,
            format!("port must be between 1 and 65535, found {}", p.value),
        ),
    }
}

fn known_hosts(path: &str, k: &Spanned<String>) -> Result<String, InventoryError> {
    if KNOWN_HOSTS_POLICIES.contains(&k.value.as_str()) {
        return Ok(k.value.clone());
    }
    let mut message = format!(
        "known_hosts must be 'strict' or 'accept-new', found '{}'",
        k.value
    );
    if let Some(s) = did_you_mean(&k.value, &KNOWN_HOSTS_POLICIES) {
        message.push_str(&format!(" (did you mean '{s}'?)"));
    }
    invalid(path, &k.referenced, message)
}

fn user(path: &str, u: &Spanned<String>) -> Result<String, InventoryError> {
    let v = word(path, "user", u)?;
    if v.contains('@') || v.contains(':') {
        return invalid(
            path,
            &u.referenced,
            format!("user must not contain '@' or ':': {v:?}"),
        );
    }
    Ok(v)
}

/// Check a literal jump `[user@]host[:port]` (host may be a bracketed IPv6 address).
fn literal_jump(path: &str, j: &Spanned<String>) -> Result<(), InventoryError> {
    let bad = |why: &str| {
        invalid(
            path,
            &j.referenced,
            format!("jump '{}' is not [user@]host[:port]: {why}", j.value),
        )
    };
    let rest = match j.value.split_once('@') {
        Some(("", _)) => return bad("empty user"),
        Some((_, rest)) => rest,
        None => j.value.as_str(),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return bad("expected ':' after ']'"),
            },
            None => return bad("missing ']'"),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains('@') || (host.contains(':') && !rest.starts_with('[')) {
        return bad("bad host");
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return bad("port must be between 1 and 65535"),
        }
    }
    Ok(())
}

impl RawInventory {
    /// Apply the rules and defaults.
    pub(crate) fn validate(self) -> Result<Inventory, InventoryError> {
        let d = self.defaults.map(|d| d.value).unwrap_or_default();
        let dp = "inventory.defaults";
        let d_user = d
            .user
            .as_ref()
            .map(|u| user(&format!("{dp}.user"), u))
            .transpose()?;
        let d_port = match &d.port {
            Some(p) => port(&format!("{dp}.port"), p)?,
            None => 22,
        };
        let d_key = d
            .key
            .as_ref()
            .map(|k| word(&format!("{dp}.key"), "key", k))
            .transpose()?;
        let d_known = match &d.known_hosts {
            Some(k) => known_hosts(&format!("{dp}.known_hosts"), k)?,
            None => KNOWN_HOSTS_POLICIES[0].to_string(),
        };
        let d_known_file = d
            .known_hosts_file
            .as_ref()
            .map(|k| word(&format!("{dp}.known_hosts_file"), "known_hosts_file", k))
            .transpose()?;

        let d_kex = d
            .kex
            .as_ref()
            .map(|k| kex(&format!("{dp}.kex"), k))
            .transpose()?;

        let names: Vec<&str> = self.hosts.0.iter().map(|(k, _)| k.value.as_str()).collect();
        // A jump naming an inventory host (no '@' or ':'), else a literal.
        let jump = |path: &str, j: &Spanned<String>| -> Result<String, InventoryError> {
            let v = word(path, "jump", j)?;
            if v.contains('@') || v.contains(':') {
                literal_jump(path, j)?;
            } else if !names.contains(&v.as_str()) {
                let mut message = format!("jump names unknown host '{v}'");
                if let Some(s) = did_you_mean(&v, &names) {
                    message.push_str(&format!(" (did you mean '{s}'?)"));
                }
                message
                    .push_str("; a host outside the inventory is written user@host or host:port");
                return invalid(path, &j.referenced, message);
            }
            Ok(v)
        };
        let d_jump = d
            .jump
            .as_ref()
            .map(|j| jump(&format!("{dp}.jump"), j))
            .transpose()?;

        let mut hosts = Vec::new();
        let mut jump_at = Vec::new();
        for (name, raw) in &self.hosts.0 {
            let hp = format!("inventory.hosts.{}", name.value);
            if !valid_name(&name.value) {
                return invalid(
                    &hp,
                    &name.referenced,
                    "host names must be lowercase letters, digits, '-', '_' and '.', starting with a letter or digit",
                );
            }
            let h = &raw.value;
            let (address, tailscale) = match (&h.address, &h.tailscale) {
                (Some(a), None) => (Some(word(&format!("{hp}.address"), "address", a)?), None),
                (None, Some(t)) => (
                    None,
                    Some(word(&format!("{hp}.tailscale"), "tailscale", t)?),
                ),
                (Some(_), Some(t)) => {
                    return invalid(
                        &hp,
                        &t.referenced,
                        "give either address or tailscale, not both",
                    );
                }
                (None, None) => {
                    return invalid(
                        &hp,
                        &raw.referenced,
                        "needs an address (IP or DNS name) or a tailscale machine name",
                    );
                }
            };
            let own_jump = h
                .jump
                .as_ref()
                .map(|j| jump(&format!("{hp}.jump"), j))
                .transpose()?;
            if own_jump.as_deref() == Some(name.value.as_str()) {
                let j = h.jump.as_ref().map(|j| &j.referenced);
                return invalid(
                    format!("{hp}.jump"),
                    j.unwrap_or(&raw.referenced),
                    "a host cannot jump through itself",
                );
            }
            // The default jump does not apply to the host it names.
            let jump = own_jump.or_else(|| d_jump.clone().filter(|j| *j != name.value));
            let mut roles = Vec::new();
            for r in &h.roles {
                let r = word(&format!("{hp}.roles"), "a role", r)?;
                if !roles.contains(&r) {
                    roles.push(r);
                }
            }
            hosts.push(Host {
                name: name.value.clone(),
                address,
                tailscale,
                port: match &h.port {
                    Some(p) => port(&format!("{hp}.port"), p)?,
                    None => d_port,
                },
                user: match &h.user {
                    Some(u) => Some(user(&format!("{hp}.user"), u)?),
                    None => d_user.clone(),
                },
                key: match &h.key {
                    Some(k) => Some(word(&format!("{hp}.key"), "key", k)?),
                    None => d_key.clone(),
                },
                known_hosts: match &h.known_hosts {
                    Some(k) => known_hosts(&format!("{hp}.known_hosts"), k)?,
                    None => d_known.clone(),
                },
                known_hosts_file: match &h.known_hosts_file {
                    Some(k) => Some(word(
                        &format!("{hp}.known_hosts_file"),
                        "known_hosts_file",
                        k,
                    )?),
                    None => d_known_file.clone(),
                },
                jump,
                kex: match &h.kex {
                    Some(k) => Some(kex(&format!("{hp}.kex"), k)?),
                    None => d_kex.clone(),
                },
                roles,
                env: h
                    .env
                    .as_ref()
                    .map(|e| word(&format!("{hp}.env"), "env", e))
                    .transpose()?,
            });
            jump_at.push(
                h.jump
                    .as_ref()
                    .or(d.jump.as_ref())
                    .map_or(raw.referenced, |j| j.referenced),
            );
        }
        check_cycles(&hosts, &jump_at)?;

        let mut inv = Inventory {
            hosts,
            groups: Vec::new(),
        };
        for (name, members) in &self.groups.0 {
            let gp = format!("inventory.groups.{}", name.value);
            if !valid_name(&name.value) {
                return invalid(
                    &gp,
                    &name.referenced,
                    "group names must be lowercase letters, digits, '-', '_' and '.', starting with a letter or digit",
                );
            }
            let mut set = BTreeSet::new();
            for m in &members.value {
                let found = match &m.value {
                    RawMember::Host(h) => inv.select(None, None, None, std::slice::from_ref(h)),
                    RawMember::Selector {
                        role: None,
                        env: None,
                    } => {
                        return invalid(&gp, &m.referenced, "a selector needs role, env or both");
                    }
                    RawMember::Selector { role, env } => {
                        inv.select(role.as_deref(), env.as_deref(), None, &[])
                    }
                };
                let found = match found {
                    Ok(found) => found,
                    Err(e) => {
                        let mut message = e.to_string();
                        if let Some(hint) = e.hint() {
                            message.push_str(&format!("; {hint}"));
                        }
                        return invalid(&gp, &m.referenced, message);
                    }
                };
                for h in found {
                    if let Some(i) = inv.hosts.iter().position(|x| x.name == h.name) {
                        set.insert(i);
                    }
                }
            }
            inv.groups
                .push((name.value.clone(), set.into_iter().collect()));
        }
        Ok(inv)
    }
}

/// Jumps through inventory hosts must end at a host without one (or with a literal jump).
fn check_cycles(hosts: &[Host], jump_at: &[Location]) -> Result<(), InventoryError> {
    for (start, host) in hosts.iter().enumerate() {
        let mut chain = vec![host.name.as_str()];
        let mut cur = host;
        while let Some(next) = cur.jump.as_deref() {
            let Some(h) = hosts.iter().find(|h| h.name == next) else {
                break; // a literal jump
            };
            if chain.contains(&next) {
                chain.push(next);
                return invalid(
                    format!("inventory.hosts.{}.jump", host.name),
                    &jump_at[start],
                    format!("jump hosts form a cycle: {}", chain.join(" -> ")),
                );
            }
            chain.push(next);
            cur = h;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::parse_config;

    /// The inventory of a `stagecraft.yml` text, or the CLI's error message.
    fn inv(yaml: &str) -> Result<Inventory, String> {
        parse_config(yaml, "stagecraft.yml")
            .map(|(_, inv)| inv)
            .map_err(|e| e.message)
    }

    fn err(yaml: &str) -> String {
        match inv(yaml) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(e) => e,
        }
    }

    const GOOD: &str = "\
name: shop
inventory:
  defaults: { user: deploy, port: 22, key: ~/.ssh/id_ed25519, known_hosts: strict }
  hosts:
    web-1: { address: 10.0.0.11, roles: [web], env: production }
    web-2: { address: 10.0.0.12, roles: [web], env: production, port: 2222 }
    db-1:  { tailscale: db-1, roles: [db], env: production }
    stage: { address: stage.example.com, roles: [web, db], env: staging, user: root, jump: bastion }
    bastion: { address: 203.0.113.5, known_hosts: accept-new }
  groups:
    canary: [ web-1 ]
    prod-web: [ { role: web, env: production }, db-1 ]
";

    fn names(hosts: &[&Host]) -> Vec<String> {
        hosts.iter().map(|h| h.name.clone()).collect()
    }

    #[test]
    fn parses_hosts_with_defaults_in_order() {
        let inv = inv(GOOD).expect("valid");
        let all: Vec<&str> = inv.hosts().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(all, ["web-1", "web-2", "db-1", "stage", "bastion"]);
        let web2 = inv.get("web-2").expect("web-2");
        assert_eq!(
            *web2,
            Host {
                name: "web-2".into(),
                address: Some("10.0.0.12".into()),
                tailscale: None,
                port: 2222,
                user: Some("deploy".into()),
                key: Some("~/.ssh/id_ed25519".into()),
                known_hosts: "strict".into(),
                known_hosts_file: None,
                jump: None,
                kex: None,
                roles: vec!["web".into()],
                env: Some("production".into()),
            }
        );
        let db = inv.get("db-1").expect("db-1");
        assert_eq!(db.tailscale.as_deref(), Some("db-1"));
        assert_eq!(db.address, None);
        assert_eq!(db.port, 22);
        let stage = inv.get("stage").expect("stage");
        assert_eq!(stage.user.as_deref(), Some("root"));
        assert_eq!(stage.jump.as_deref(), Some("bastion"));
        assert_eq!(
            inv.get("bastion").map(|h| h.known_hosts.as_str()),
            Some("accept-new")
        );
        assert_eq!(inv.roles(), ["db", "web"]);
        assert_eq!(inv.envs(), ["production", "staging"]);
        assert_eq!(inv.groups(), ["canary", "prod-web"]);
    }

    #[test]
    fn absent_or_empty_inventory_is_empty() {
        assert!(inv("name: x\n").expect("ok").is_empty());
        assert!(inv("name: x\ninventory:\n").expect("ok").is_empty());
        assert!(inv("inventory:\n  hosts:\n").expect("ok").is_empty());
        let bare = inv("inventory:\n  hosts:\n    a: { address: a.example }\n").expect("ok");
        let a = bare.get("a").expect("a");
        assert_eq!(
            (a.port, a.known_hosts.as_str(), &a.user),
            (22, "strict", &None)
        );
    }

    #[test]
    fn select_filters_in_inventory_order() {
        let inv = inv(GOOD).expect("valid");
        let all = inv.select(None, None, None, &[]).expect("ok");
        assert_eq!(names(&all), ["web-1", "web-2", "db-1", "stage", "bastion"]);
        let web = inv.select(Some("web"), None, None, &[]).expect("ok");
        assert_eq!(names(&web), ["web-1", "web-2", "stage"]);
        let prod_web = inv
            .select(Some("web"), Some("production"), None, &[])
            .expect("ok");
        assert_eq!(names(&prod_web), ["web-1", "web-2"]);
        let staging_db = inv
            .select(Some("db"), Some("staging"), None, &[])
            .expect("ok");
        assert_eq!(names(&staging_db), ["stage"]);
        let canary = inv.select(None, None, Some("canary"), &[]).expect("ok");
        assert_eq!(names(&canary), ["web-1"]);
        let group = inv.select(None, None, Some("prod-web"), &[]).expect("ok");
        assert_eq!(names(&group), ["web-1", "web-2", "db-1"]);
        let by_name = inv
            .select(None, None, None, &["bastion".into(), "web-1".into()])
            .expect("ok");
        assert_eq!(names(&by_name), ["web-1", "bastion"]);
        // A known role with no host in a known env: empty, not an error.
        let none = inv
            .select(Some("db"), Some("staging"), Some("canary"), &[])
            .expect("ok");
        assert!(none.is_empty());
    }

    #[test]
    fn select_rejects_unknown_names_with_suggestions() {
        let inv = inv(GOOD).expect("valid");
        let e = inv.select(Some("webs"), None, None, &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown role 'webs' (did you mean 'web'?)");
        assert_eq!(e.hint().as_deref(), Some("known roles: db, web"));
        let e = inv.select(None, Some("dev"), None, &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown env 'dev'");
        assert_eq!(e.hint().as_deref(), Some("known envs: production, staging"));
        let e = inv.select(None, Some("productoin"), None, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown env 'productoin' (did you mean 'production'?)"
        );
        let e = inv.select(None, None, Some("canry"), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown group 'canry' (did you mean 'canary'?)"
        );
        assert_eq!(e.hint().as_deref(), Some("known groups: canary, prod-web"));
        let e = inv.select(None, None, None, &["web-3".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown host 'web-3' (did you mean 'web-2'?)"
        );
        let empty = Inventory::default();
        let e = empty.select(Some("web"), None, None, &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown role 'web'");
        assert_eq!(
            e.hint().as_deref(),
            Some("the inventory in stagecraft.yml has no roles")
        );
    }

    #[test]
    fn unknown_keys_name_position_and_suggestion() {
        let e = err("inventory:\n  hosts:\n    web-2: { address: x, prot: 2222 }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:26: unknown key 'prot' (did you mean 'port'?)"
        );
        let e = err("inventory:\n  defaults: { usr: deploy }\n");
        assert_eq!(
            e,
            "stagecraft.yml:2:15: unknown key 'usr' (did you mean 'user'?)"
        );
        let e = err("inventory:\n  host:\n    a: { address: x }\n");
        assert_eq!(
            e,
            "stagecraft.yml:2:3: unknown key 'host' (did you mean 'hosts'?)"
        );
        let e =
            err("inventory:\n  hosts: { a: { address: x } }\n  groups:\n    g: [ { rol: web } ]\n");
        assert_eq!(
            e,
            "stagecraft.yml:4:12: unknown key 'rol' (did you mean 'role'?)"
        );
        let e = err("inventroy: {}\n");
        assert_eq!(
            e,
            "stagecraft.yml:1:1: unknown key 'inventroy' (did you mean 'inventory'?)"
        );
        let e = err("inventory:\n  hosts:\n    a: { address: x, zzz: 1 }\n");
        assert_eq!(e, "stagecraft.yml:3:22: unknown key 'zzz'");
    }

    #[test]
    fn host_names_are_checked() {
        for bad in ["Web-1", "-web", "web 1", "_x", "wéb"] {
            let e = err(&format!(
                "inventory:\n  hosts:\n    '{bad}': {{ address: x }}\n"
            ));
            assert_eq!(
                e,
                format!(
                    "stagecraft.yml:3:5: inventory.hosts.{bad}: host names must be lowercase letters, digits, '-', '_' and '.', starting with a letter or digit"
                )
            );
        }
        for good in ["1", "web-1", "db_2.eu", "a.b-c_d"] {
            assert!(valid_name(good), "{good}");
        }
        let e = err("inventory:\n  hosts: { a: { address: x } }\n  groups:\n    Canary: [ a ]\n");
        assert!(
            e.starts_with("stagecraft.yml:4:5: inventory.groups.Canary: group names must"),
            "{e}"
        );
    }

    #[test]
    fn exactly_one_of_address_and_tailscale() {
        let e = err("inventory:\n  hosts:\n    a: { roles: [web] }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:8: inventory.hosts.a: needs an address (IP or DNS name) or a tailscale machine name"
        );
        let e = err("inventory:\n  hosts:\n    a: { address: x, tailscale: a }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:33: inventory.hosts.a: give either address or tailscale, not both"
        );
        let e = err("inventory:\n  hosts:\n    a: { address: '' }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:19: inventory.hosts.a.address: address must not be empty"
        );
        let e = err("inventory:\n  hosts:\n    a: { address: 'a b' }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:19: inventory.hosts.a.address: address must not contain spaces: \"a b\""
        );
    }

    #[test]
    fn ports_are_checked() {
        for bad in ["0", "65536", "-1"] {
            let e = err(&format!(
                "inventory:\n  hosts:\n    a: {{ address: x, port: {bad} }}\n"
            ));
            assert_eq!(
                e,
                format!(
                    "stagecraft.yml:3:28: inventory.hosts.a.port: port must be between 1 and 65535, found {bad}"
                )
            );
        }
        let e = err("inventory:\n  defaults: { port: 70000 }\n");
        assert_eq!(
            e,
            "stagecraft.yml:2:21: inventory.defaults.port: port must be between 1 and 65535, found 70000"
        );
        let ok = inv("inventory:\n  hosts:\n    a: { address: x, port: 65535 }\n").expect("ok");
        assert_eq!(ok.hosts()[0].port, 65535);
        // Not a number: serde's message, with the position.
        let e = err("inventory:\n  hosts:\n    a: { address: x, port: ssh }\n");
        assert!(e.starts_with("stagecraft.yml: "), "{e}");
        assert!(e.contains("line 3 column 28"), "{e}");
    }

    #[test]
    fn known_hosts_is_strict_or_accept_new() {
        let e = err("inventory:\n  hosts:\n    a: { address: x, known_hosts: accept_new }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:35: inventory.hosts.a.known_hosts: known_hosts must be 'strict' or 'accept-new', found 'accept_new' (did you mean 'accept-new'?)"
        );
        let e = err("inventory:\n  defaults: { known_hosts: off }\n");
        assert_eq!(
            e,
            "stagecraft.yml:2:28: inventory.defaults.known_hosts: known_hosts must be 'strict' or 'accept-new', found 'off'"
        );
    }

    #[test]
    fn user_and_key_are_recorded_as_written() {
        let ok = inv("inventory:\n  hosts:\n    a: { address: x, user: ops, key: ~/keys/a }\n")
            .expect("ok");
        assert_eq!(ok.hosts()[0].user.as_deref(), Some("ops"));
        assert_eq!(ok.hosts()[0].key.as_deref(), Some("~/keys/a"));
        let e = err("inventory:\n  hosts:\n    a: { address: x, user: 'ops@x' }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:28: inventory.hosts.a.user: user must not contain '@' or ':': \"ops@x\""
        );
        let e = err("inventory:\n  hosts:\n    a: { address: x, key: '' }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:27: inventory.hosts.a.key: key must not be empty"
        );
    }

    #[test]
    fn jumps_name_hosts_or_are_literal() {
        let ok = inv(
            "inventory:\n  hosts:\n    a: { address: x, jump: 'ops@bastion.example.com:2222' }\n    b: { address: y, jump: '[2001:db8::1]:22' }\n    c: { address: z, jump: 'root@gw' }\n",
        )
        .expect("ok");
        assert_eq!(
            ok.hosts()[0].jump.as_deref(),
            Some("ops@bastion.example.com:2222")
        );
        let e = err(
            "inventory:\n  hosts:\n    a: { address: x, jump: bastoin }\n    bastion: { address: y }\n",
        );
        assert_eq!(
            e,
            "stagecraft.yml:3:28: inventory.hosts.a.jump: jump names unknown host 'bastoin' (did you mean 'bastion'?); a host outside the inventory is written user@host or host:port"
        );
        for (bad, why) in [
            ("'@gw'", "empty user"),
            ("'gw:0'", "port must be between 1 and 65535"),
            ("'gw:ssh'", "port must be between 1 and 65535"),
            ("'u@:22'", "bad host"),
            ("'[::1'", "missing ']'"),
        ] {
            let e = err(&format!(
                "inventory:\n  hosts:\n    a: {{ address: x, jump: {bad} }}\n"
            ));
            let jump = bad.trim_matches('\'');
            assert_eq!(
                e,
                format!(
                    "stagecraft.yml:3:28: inventory.hosts.a.jump: jump '{jump}' is not [user@]host[:port]: {why}"
                )
            );
        }
        let e = err("inventory:\n  hosts:\n    a: { address: x, jump: a }\n");
        assert_eq!(
            e,
            "stagecraft.yml:3:28: inventory.hosts.a.jump: a host cannot jump through itself"
        );
    }

    #[test]
    fn jump_cycles_are_rejected() {
        let e = err(
            "inventory:\n  hosts:\n    a: { address: x, jump: b }\n    b: { address: y, jump: c }\n    c: { address: z, jump: a }\n",
        );
        assert_eq!(
            e,
            "stagecraft.yml:3:28: inventory.hosts.a.jump: jump hosts form a cycle: a -> b -> c -> a"
        );
    }

    #[test]
    fn default_jump_skips_the_jump_host() {
        let ok = inv(
            "inventory:\n  defaults: { jump: bastion }\n  hosts:\n    a: { address: x }\n    bastion: { address: y }\n    c: { address: z, jump: 'me@other' }\n",
        )
        .expect("ok");
        let jumps: Vec<Option<&str>> = ok.hosts().iter().map(|h| h.jump.as_deref()).collect();
        assert_eq!(jumps, [Some("bastion"), None, Some("me@other")]);
        let e = err("inventory:\n  defaults: { jump: nope }\n  hosts:\n    a: { address: x }\n");
        assert_eq!(
            e,
            "stagecraft.yml:2:21: inventory.defaults.jump: jump names unknown host 'nope'; a host outside the inventory is written user@host or host:port"
        );
    }

    #[test]
    fn groups_are_checked() {
        let base =
            "inventory:\n  hosts:\n    web-1: { address: x, roles: [web], env: prod }\n  groups:\n";
        let e = err(&format!("{base}    g: [ web-2 ]\n"));
        assert_eq!(
            e,
            "stagecraft.yml:5:10: inventory.groups.g: unknown host 'web-2' (did you mean 'web-1'?); known hosts: web-1"
        );
        let e = err(&format!("{base}    g: [ {{ role: db }} ]\n"));
        assert_eq!(
            e,
            "stagecraft.yml:5:10: inventory.groups.g: unknown role 'db'; known roles: web"
        );
        let e = err(&format!("{base}    g: [ {{ env: prd }} ]\n"));
        assert_eq!(
            e,
            "stagecraft.yml:5:10: inventory.groups.g: unknown env 'prd' (did you mean 'prod'?); known envs: prod"
        );
        let e = err(&format!("{base}    g: [ {{}} ]\n"));
        assert_eq!(
            e,
            "stagecraft.yml:5:10: inventory.groups.g: a selector needs role, env or both"
        );
        let ok = inv(&format!("{base}    g: [ web-1, {{ role: web }} ]\n")).expect("ok");
        assert_eq!(ok.group("g").map(|g| g.len()), Some(1));
    }

    #[test]
    fn shapes_and_duplicates() {
        let e = err("inventory:\n  hosts:\n    a: { address: x }\n    a: { address: y }\n");
        assert!(e.contains("duplicate"), "{e}");
        let e = err("inventory:\n  hosts:\n    a: { address: x, roles: web }\n");
        assert!(e.starts_with("stagecraft.yml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn hosts_serialize_for_lua() {
        let inv = inv(GOOD).expect("valid");
        let json = serde_json::to_value(inv.get("db-1").expect("db-1")).expect("json");
        assert_eq!(json["tailscale"], "db-1");
        assert_eq!(json["port"], 22);
        assert_eq!(json["roles"][0], "db");
        assert!(json["address"].is_null());
    }
}
