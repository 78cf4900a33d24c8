//! Capabilities: what a script may touch. Granted by `permissions:` in `stagecraft.yml` and `--allow`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Capability names. A scope narrows some of them (`exec:curl`, `net:api.example.com`).
pub const NAMES: &[(&str, bool)] = &[
    // (name, takes a scope)
    ("exec", true),
    ("fs-write", false),
    ("net", true),
    ("secrets", true),
    ("docker", false),
    ("ssh", true),
    ("digitalocean", false),
    ("github", false),
    ("tailscale", false),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub name: String,
    pub scope: Option<String>,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Some(s) => write!(f, "{}:{}", self.name, s),
            None => f.write_str(&self.name),
        }
    }
}

impl Capability {
    pub fn new(name: &str, scope: Option<&str>) -> Self {
        Capability {
            name: name.to_string(),
            scope: scope.map(str::to_string),
        }
    }

    /// Parse `NAME[:SCOPE]`, naming the mistake and the closest valid name.
    pub fn parse(text: &str) -> Result<Capability, String> {
        let text = text.trim();
        let (name, scope) = match text.split_once(':') {
            Some((n, s)) => (n, Some(s)),
            None => (text, None),
        };
        let Some((_, scoped)) = NAMES.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
            let suggestion = crate::util::did_you_mean(name, &names)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown capability '{name}'{suggestion}; known: {}",
                names.join(", ")
            ));
        };
        match scope {
            Some("") => Err(format!("capability '{text}' has an empty scope")),
            Some(_) if !scoped => Err(format!(
                "capability '{name}' takes no scope (found '{text}')"
            )),
            Some(s) => Ok(Capability::new(name, Some(s))),
            None => Ok(Capability::new(name, None)),
        }
    }
}

/// The set of granted capabilities for one run.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    all: bool,
    caps: Vec<Capability>,
    /// The PATH used to resolve `exec:NAME` grants (the process PATH, never one a script sets).
    path_env: Option<String>,
}

/// What a primitive asks for.
pub enum Request<'a> {
    /// Run the program at this canonical path.
    Exec(&'a Path),
    Net(&'a str),
    Secret(&'a str),
    Ssh(&'a str),
    Plain(&'static str),
}

impl Grants {
    pub fn new(all: bool, caps: Vec<Capability>) -> Self {
        Grants {
            all,
            caps,
            path_env: std::env::var("PATH").ok(),
        }
    }

    pub fn all(&self) -> bool {
        self.all
    }

    pub fn list(&self) -> Vec<String> {
        if self.all {
            return vec!["all".to_string()];
        }
        self.caps.iter().map(|c| c.to_string()).collect()
    }

    pub fn path_env(&self) -> Option<&str> {
        self.path_env.as_deref()
    }

    /// Secrets the run may load: (any secret at all, the names granted one by one).
    pub fn secret_scopes(&self) -> (bool, Vec<String>) {
        let mut any = self.all;
        let mut names = Vec::new();
        for c in self.caps.iter().filter(|c| c.name == "secrets") {
            match &c.scope {
                Some(s) => names.push(s.clone()),
                None => any = true,
            }
        }
        (any, names)
    }

    /// Whether the request is granted.
    pub fn allows(&self, req: &Request<'_>) -> bool {
        if self.all {
            return true;
        }
        self.caps.iter().any(|c| self.matches(c, req))
    }

    fn matches(&self, cap: &Capability, req: &Request<'_>) -> bool {
        let scope = cap.scope.as_deref();
        match req {
            Request::Exec(program) => {
                cap.name == "exec"
                    && match scope {
                        None => true,
                        Some(s) => self.exec_scope_matches(s, program),
                    }
            }
            Request::Net(host) => cap.name == "net" && scope.is_none_or(|s| host_matches(s, host)),
            Request::Secret(name) => cap.name == "secrets" && scope.is_none_or(|s| s == *name),
            Request::Ssh(host) => cap.name == "ssh" && scope.is_none_or(|s| host_matches(s, host)),
            Request::Plain(name) => cap.name == *name,
        }
    }

    /// `exec:NAME` grants the program that NAME resolves to on PATH; `exec:/abs/path` grants that
    /// file. Both sides are canonicalised, so `./curl` or a look-alike elsewhere never matches.
    fn exec_scope_matches(&self, scope: &str, program: &Path) -> bool {
        let granted = if scope.contains('/') {
            Path::new(scope).canonicalize().ok()
        } else {
            resolve_on_path(scope, self.path_env.as_deref())
        };
        granted.is_some_and(|g| g == program)
    }
}

/// `*.example.com` matches any subdomain; otherwise exact (case-insensitive).
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

/// Find `name` on PATH and canonicalise it.
pub fn resolve_on_path(name: &str, path_env: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path_env = path_env?;
    for dir in path_env.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = candidate.metadata()
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return candidate.canonicalize().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_suggest() {
        assert_eq!(
            Capability::parse("exec:curl").map(|c| c.to_string()),
            Ok("exec:curl".into())
        );
        let err = Capability::parse("exce:curl").unwrap_err();
        assert!(err.contains("did you mean 'exec'"), "{err}");
        assert!(Capability::parse("docker:x").is_err());
        assert!(Capability::parse("exec:").is_err());
    }

    #[test]
    fn exec_scope_is_by_resolved_program() {
        let g = Grants::new(false, vec![Capability::new("exec", Some("sh"))]);
        let sh = resolve_on_path("sh", g.path_env()).expect("sh on PATH");
        assert!(g.allows(&Request::Exec(&sh)));
        let other = resolve_on_path("true", g.path_env()).expect("true on PATH");
        assert!(!g.allows(&Request::Exec(&other)));
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com.evil"));
        assert!(host_matches("Example.com", "example.COM"));
    }
}
