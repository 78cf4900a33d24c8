//! Parsers for the small string syntaxes inside a Compose file: port specs, short volume specs,
//! Go durations, shell-like word splitting, restart policies, project names and paths.

use std::net::IpAddr;

use super::model::Port;

/// A syntax error in one value: the message and an optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bad {
    pub message: String,
    pub hint: Option<String>,
}

impl Bad {
    pub fn new(message: impl Into<String>) -> Bad {
        Bad {
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Bad {
        self.hint = Some(hint.into());
        self
    }
}

// ---------------------------------------------------------------- ports

/// A port number 1..=65535.
pub(crate) fn port_number(s: &str) -> Result<u16, Bad> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Bad::new(format!("'{s}' is not a port number")));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(Bad::new(format!("port {s} is out of range 1-65535"))),
    }
}

/// A port or a range `a-b` (a <= b).
fn port_range(s: &str) -> Result<(u16, u16), Bad> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a)?, port_number(b)?);
            if a > b {
                return Err(Bad::new(format!("port range {s} ends before it starts")));
            }
            Ok((a, b))
        }
        None => {
            let p = port_number(s)?;
            Ok((p, p))
        }
    }
}

/// A published port in long syntax: a port or a range, returned normalised.
pub(crate) fn published_port(s: &str) -> Result<String, Bad> {
    let (a, b) = port_range(s)?;
    Ok(if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    })
}

pub(crate) fn protocol(s: &str) -> Result<String, Bad> {
    match s {
        "tcp" | "udp" | "sctp" => Ok(s.to_string()),
        _ => Err(Bad::new(format!("unknown protocol '{s}'")).hint("use tcp, udp or sctp")),
    }
}

/// A host IP, with brackets removed from IPv6 addresses.
pub(crate) fn host_ip(s: &str) -> Result<String, Bad> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    match inner.parse::<IpAddr>() {
        Ok(_) => Ok(inner.to_string()),
        Err(_) => Err(Bad::new(format!("'{s}' is not an IP address"))),
    }
}

/// Short port syntax: `[[HOST_IP:]HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTOCOL]`, with
/// ranges expanded to one port each (as Docker does).
pub(crate) fn ports_short(spec: &str) -> Result<Vec<Port>, Bad> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, protocol(proto)?),
        None => (spec, "tcp".to_string()),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let n = parts.len();
    let container = parts[n - 1];
    let host = if n >= 2 { parts[n - 2] } else { "" };
    let ip = if n >= 3 {
        parts[..n - 2].join(":")
    } else {
        String::new()
    };
    let host_ip = if ip.is_empty() {
        None
    } else {
        if ip.contains(':') && !ip.starts_with('[') {
            return Err(Bad::new(format!("'{ip}' is not an IP address"))
                .hint("write IPv6 addresses in brackets, e.g. [::1]:8080:80"));
        }
        Some(host_ip(&ip)?)
    };
    if container.is_empty() {
        return Err(Bad::new("the container port is missing"));
    }
    let (c1, c2) = port_range(container)?;
    let host_range = if host.is_empty() {
        None
    } else {
        Some(port_range(host)?)
    };
    if let Some((h1, h2)) = host_range
        && h2 - h1 != c2 - c1
        && c1 != c2
    {
        return Err(Bad::new(format!(
            "the host range {host} and the container range {container} differ in size"
        )));
    }
    let mut out = Vec::new();
    for i in 0..=(c2 - c1) {
        let published = match host_range {
            None => None,
            Some((h1, h2)) if c1 == c2 && h1 != h2 => Some(format!("{h1}-{h2}")),
            Some((h1, _)) => Some((h1 + i).to_string()),
        };
        out.push(Port {
            target: c1 + i,
            published,
            host_ip: host_ip.clone(),
            protocol: proto.clone(),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- volumes

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShortVolume {
    /// `volume` or `bind`.
    pub kind: &'static str,
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
}

/// Whether a volume source is a host path (bind mount) rather than a volume name.
pub(crate) fn is_host_path(source: &str) -> bool {
    source.starts_with(['.', '/', '~'])
}

/// A container path must be absolute.
pub(crate) fn container_path(s: &str) -> Result<String, Bad> {
    if !s.starts_with('/') {
        return Err(Bad::new(format!(
            "the container path '{s}' must be absolute"
        )));
    }
    Ok(s.to_string())
}

/// Short volume syntax: `TARGET`, `SOURCE:TARGET` or `SOURCE:TARGET:ro|rw`.
pub(crate) fn volume_short(spec: &str) -> Result<ShortVolume, Bad> {
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Bad::new("empty section between colons"));
    }
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, mode] => (Some(*source), *target, Some(*mode)),
        _ => return Err(Bad::new("too many colons").hint("use SOURCE:TARGET[:ro|rw]")),
    };
    let mut read_only = false;
    for option in mode.into_iter().flat_map(|m| m.split(',')) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(Bad::new(format!("unsupported volume option '{other}'"))
                    .hint("Stagecraft supports ro and rw"));
            }
        }
    }
    let target = container_path(target)?;
    Ok(match source {
        None => ShortVolume {
            kind: "volume",
            source: None,
            target,
            read_only,
        },
        Some(s) if is_host_path(s) => ShortVolume {
            kind: "bind",
            source: Some(normalize_path(s)),
            target,
            read_only,
        },
        Some(s) => ShortVolume {
            kind: "volume",
            source: Some(s.to_string()),
            target,
            read_only,
        },
    })
}

/// Normalise a host path relative to the compose file's folder: `.` and `x/..` components
/// are removed and the result is `.` or starts with `./` or `../`. Absolute and `~` paths are
/// returned as written.
pub(crate) fn normalize_path(path: &str) -> String {
    if path.starts_with('/') || path.starts_with('~') {
        return path.to_string();
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(p) if *p != "..") {
                    parts.pop();
                } else {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        ".".to_string()
    } else if parts[0] == ".." {
        parts.join("/")
    } else {
        format!("./{}", parts.join("/"))
    }
}

/// A build context: URLs and git remotes as written, paths normalised.
pub(crate) fn build_context(s: &str) -> String {
    if s.contains("://") || s.starts_with("git@") || s.starts_with("github.com/") {
        s.to_string()
    } else {
        normalize_path(s)
    }
}

// ---------------------------------------------------------------- durations

/// A Go duration (`1m30s`, `500ms`, `1.5h`, `10us`, `0`), as Compose accepts, in nanoseconds.
pub(crate) fn duration_ns(s: &str) -> Result<u64, Bad> {
    let bad = || {
        Bad::new(format!("invalid duration '{s}'"))
            .hint("use a number with a unit: ns, us, ms, s, m or h, e.g. 1m30s")
    };
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err(Bad::new(format!("the duration '{s}' must not be negative")));
    }
    if body == "0" {
        return Ok(0);
    }
    if body.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac = &r[..n];
            rest = &r[n..];
        }
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(Bad::new(format!("the duration '{s}' is missing a unit"))
                    .hint("use a unit: ns, us, ms, s, m or h, e.g. 10s"));
            }
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(unit).ok_or_else(bad)?;
        if !frac.is_empty() {
            // Up to 18 fractional digits are significant (below a nanosecond for any unit).
            let digits = &frac[..frac.len().min(18)];
            let f: u128 = digits.parse().map_err(|_| bad())?;
            part += f * unit / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    u64::try_from(total).map_err(|_| bad())
}

// ---------------------------------------------------------------- words

/// Split a command string into words like a POSIX shell (without expansions): whitespace
/// separates words, single quotes are literal, double quotes allow `\"`, `\\`, `\$` and `` \` ``,
/// a backslash outside quotes escapes the next character. Unquoted shell operators are
/// rejected, since no shell runs the result.
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, Bad> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err(Bad::new("unterminated single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n @ ('$' | '`' | '"' | '\\')) => {
                                chars.next();
                                word.push(n);
                            }
                            Some('\n') => {
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some(x) => word.push(x),
                        None => return Err(Bad::new("unterminated double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(x) => {
                    in_word = true;
                    word.push(x);
                }
                None => {
                    in_word = true;
                    word.push('\\');
                }
            },
            '|' | '&' | ';' | '<' | '>' | '(' | ')' => {
                return Err(Bad::new(format!("unquoted shell operator '{c}'")).hint(
                    "a command string is split into words, not run by a shell; \
                     use a list like [\"sh\", \"-c\", \"...\"] or quote the character",
                ));
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

// ---------------------------------------------------------------- misc

/// `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`.
pub(crate) fn restart_policy(s: &str) -> Result<String, Bad> {
    let ok = match s {
        "no" | "always" | "unless-stopped" | "on-failure" => true,
        _ => s.strip_prefix("on-failure:").is_some_and(|n| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok()
        }),
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(Bad::new(format!("invalid restart policy '{s}'"))
            .hint("use no, always, on-failure, on-failure:N or unless-stopped"))
    }
}

/// Compose's normalisation of a folder name into a project name: lowercase, only
/// `[a-z0-9_-]` kept, leading `_` and `-` removed.
pub(crate) fn normalize_project_name(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lower.trim_start_matches(['_', '-']).to_string()
}

/// `^[a-z0-9][a-z0-9_-]*$`.
pub(crate) fn is_valid_project_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Compose's boolean spellings (`true`/`false`, `yes`/`no`, `on`/`off`, `y`/`n`), any case.
pub(crate) fn boolean(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" => Some(true),
        "false" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(target: u16, published: Option<&str>, ip: Option<&str>, proto: &str) -> Port {
        Port {
            target,
            published: published.map(str::to_string),
            host_ip: ip.map(str::to_string),
            protocol: proto.to_string(),
        }
    }

    #[test]
    fn short_ports() {
        assert_eq!(
            ports_short("8080").unwrap(),
            [port(8080, None, None, "tcp")]
        );
        assert_eq!(
            ports_short("8081:8080").unwrap(),
            [port(8080, Some("8081"), None, "tcp")]
        );
        assert_eq!(
            ports_short("127.0.0.1:8081:8080").unwrap(),
            [port(8080, Some("8081"), Some("127.0.0.1"), "tcp")]
        );
        assert_eq!(
            ports_short("8081:8080/udp").unwrap(),
            [port(8080, Some("8081"), None, "udp")]
        );
        assert_eq!(
            ports_short("127.0.0.1::53/udp").unwrap(),
            [port(53, None, Some("127.0.0.1"), "udp")]
        );
        assert_eq!(
            ports_short("[::1]:8081:8080").unwrap(),
            [port(8080, Some("8081"), Some("::1"), "tcp")]
        );
    }

    #[test]
    fn port_ranges_expand() {
        assert_eq!(
            ports_short("9000-9001:9000-9001").unwrap(),
            [
                port(9000, Some("9000"), None, "tcp"),
                port(9001, Some("9001"), None, "tcp")
            ]
        );
        assert_eq!(
            ports_short("3000-3001").unwrap(),
            [port(3000, None, None, "tcp"), port(3001, None, None, "tcp")]
        );
        // A host range for one container port lets Docker pick a free host port.
        assert_eq!(
            ports_short("8000-8010:80").unwrap(),
            [port(80, Some("8000-8010"), None, "tcp")]
        );
    }

    #[test]
    fn bad_ports() {
        let msg = |s: &str| ports_short(s).unwrap_err().message;
        assert_eq!(msg("80/tcpp"), "unknown protocol 'tcpp'");
        assert_eq!(msg("http"), "'http' is not a port number");
        assert_eq!(msg("70000"), "port 70000 is out of range 1-65535");
        assert_eq!(msg("0"), "port 0 is out of range 1-65535");
        assert_eq!(msg("1.2.3:80:80"), "'1.2.3' is not an IP address");
        assert_eq!(msg("::1:80:80"), "'::1' is not an IP address");
        assert_eq!(
            msg("9000-9002:9000-9001"),
            "the host range 9000-9002 and the container range 9000-9001 differ in size"
        );
        assert_eq!(msg("90-80"), "port range 90-80 ends before it starts");
        assert_eq!(msg("80:"), "the container port is missing");
    }

    #[test]
    fn short_volumes() {
        let v = volume_short("data:/var/lib/data").unwrap();
        assert_eq!(
            (v.kind, v.source.as_deref(), v.target.as_str(), v.read_only),
            ("volume", Some("data"), "/var/lib/data", false)
        );
        let v = volume_short("./conf/../etc:/etc/app:ro").unwrap();
        assert_eq!(
            (v.kind, v.source.as_deref(), v.read_only),
            ("bind", Some("./etc"), true)
        );
        let v = volume_short("./x").unwrap_err();
        assert_eq!(v.message, "the container path './x' must be absolute");
        let v = volume_short("/srv:/srv:rw").unwrap();
        assert_eq!((v.kind, v.source.as_deref()), ("bind", Some("/srv")));
        let v = volume_short("/cache").unwrap();
        assert_eq!(
            (v.kind, v.source, v.target.as_str()),
            ("volume", None, "/cache")
        );
        let v = volume_short("~/x:/x").unwrap();
        assert_eq!(v.source.as_deref(), Some("~/x"));
        assert_eq!(
            volume_short("a:/b:z").unwrap_err().message,
            "unsupported volume option 'z'"
        );
        assert_eq!(
            volume_short("a::/b").unwrap_err().message,
            "empty section between colons"
        );
        assert_eq!(
            volume_short("a:/b:ro:x").unwrap_err().message,
            "too many colons"
        );
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_path("."), ".");
        assert_eq!(normalize_path("./"), ".");
        assert_eq!(normalize_path("app"), "./app");
        assert_eq!(normalize_path("./app/"), "./app");
        assert_eq!(normalize_path("a/./b//c"), "./a/b/c");
        assert_eq!(normalize_path("a/../.."), "..");
        assert_eq!(normalize_path("../x/../y"), "../y");
        assert_eq!(normalize_path("/abs/./x"), "/abs/./x");
        assert_eq!(
            build_context("https://github.com/a/b.git#main"),
            "https://github.com/a/b.git#main"
        );
        assert_eq!(build_context("web/"), "./web");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(duration_ns("500ms").unwrap(), 500_000_000);
        assert_eq!(duration_ns("10s").unwrap(), 10_000_000_000);
        assert_eq!(duration_ns("1h").unwrap(), 3_600_000_000_000);
        assert_eq!(duration_ns("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(duration_ns(".5s").unwrap(), 500_000_000);
        assert_eq!(duration_ns("2us").unwrap(), 2_000);
        assert_eq!(duration_ns("2µs").unwrap(), 2_000);
        assert_eq!(duration_ns("3ns").unwrap(), 3);
        assert_eq!(duration_ns("1h2m3s4ms").unwrap(), 3_723_004_000_000);
        assert_eq!(duration_ns("0").unwrap(), 0);
        assert_eq!(
            duration_ns("10").unwrap_err().message,
            "the duration '10' is missing a unit"
        );
        assert_eq!(
            duration_ns("-1s").unwrap_err().message,
            "the duration '-1s' must not be negative"
        );
        for bad in ["", "s", "1x", "1.s.", "1d", "99999999999999999999h"] {
            assert!(duration_ns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn word_splitting() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(w("echo hello  world"), ["echo", "hello", "world"]);
        assert_eq!(w("  "), Vec::<String>::new());
        assert_eq!(w("sh -c 'echo $HOME; ls'"), ["sh", "-c", "echo $HOME; ls"]);
        assert_eq!(w(r#"a "b c" "d\"e" "f\n""#), ["a", "b c", "d\"e", "f\\n"]);
        assert_eq!(w(r"a\ b c\\d"), ["a b", "c\\d"]);
        assert_eq!(w("x '' \"\""), ["x", "", ""]);
        assert_eq!(w("pre'fix'\"ed\""), ["prefixed"]);
        assert_eq!(w("a \\\nb"), ["a", "b"]);
        assert_eq!(
            split_words("echo 'x").unwrap_err().message,
            "unterminated single quote"
        );
        assert_eq!(
            split_words("echo \"x").unwrap_err().message,
            "unterminated double quote"
        );
        assert_eq!(
            split_words("echo hi > /tmp/x").unwrap_err().message,
            "unquoted shell operator '>'"
        );
    }

    #[test]
    fn restart_policies() {
        for ok in [
            "no",
            "always",
            "on-failure",
            "on-failure:3",
            "unless-stopped",
        ] {
            assert_eq!(restart_policy(ok).unwrap(), ok);
        }
        for bad in ["never", "on-failure:", "on-failure:x", "Always"] {
            assert!(restart_policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_names() {
        assert_eq!(normalize_project_name("My App.v2"), "myappv2");
        assert_eq!(normalize_project_name("__x-Y"), "x-y");
        assert_eq!(normalize_project_name("..."), "");
        assert!(is_valid_project_name("a1_-"));
        assert!(is_valid_project_name("1a"));
        assert!(!is_valid_project_name("_a"));
        assert!(!is_valid_project_name("A"));
        assert!(!is_valid_project_name(""));
    }

    #[test]
    fn booleans() {
        assert_eq!(boolean("true"), Some(true));
        assert_eq!(boolean("YES"), Some(true));
        assert_eq!(boolean("off"), Some(false));
        assert_eq!(boolean("1"), None);
    }
}
