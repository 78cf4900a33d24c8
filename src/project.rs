//! The project: its root directory, `stagecraft.yml` and `.env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::inventory::{Inventory, RawInventory};

pub const CONFIG_FILE: &str = "stagecraft.yml";
pub const STATE_DIR: &str = ".stagecraft";

/// `stagecraft.yml`. Unknown keys are errors that name the key and its position.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Project name (defaults to the directory name).
    #[serde(default)]
    pub name: Option<String>,
    /// Capabilities granted to every script of the project, e.g. `exec:git`, `fs-write`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// How `stagecraft/tailscale` runs the `tailscale` CLI.
    #[serde(default)]
    pub tailscale: TailscaleConfig,
    /// Hosts for `stagecraft/ssh`, as written; validated into [`Project::inventory`].
    #[serde(default)]
    pub(crate) inventory: Option<RawInventory>,
}

/// `tailscale:` in `stagecraft.yml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleConfig {
    /// The `tailscale` program: a path (relative to the project root) or a name looked up on
    /// PATH. Default `tailscale` on PATH.
    #[serde(default)]
    pub cli: Option<String>,
    /// Names of environment variables passed to the CLI besides PATH, HOME and LANG.
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug)]
pub struct Project {
    /// Canonical absolute root directory.
    pub root: PathBuf,
    /// Whether `stagecraft.yml` exists at the root.
    pub has_config: bool,
    pub config: Config,
    /// The hosts of `inventory:` in `stagecraft.yml` (empty when absent).
    pub inventory: Inventory,
}

impl Project {
    /// The nearest directory from `start` upwards holding `stagecraft.yml`, else `start` itself.
    pub fn discover(start: &Path) -> Result<Project> {
        let start = start.canonicalize().map_err(|e| {
            Error::usage(format!("cannot resolve directory {}: {e}", start.display()))
        })?;
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            let cfg = d.join(CONFIG_FILE);
            if cfg.is_file() {
                let (config, inventory) = load_config(&cfg)?;
                return Ok(Project {
                    root: d.to_path_buf(),
                    has_config: true,
                    config,
                    inventory,
                });
            }
            dir = d.parent();
        }
        Ok(Project {
            root: start,
            has_config: false,
            config: Config::default(),
            inventory: Inventory::default(),
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    pub fn default_ledger_path(&self) -> PathBuf {
        self.state_dir().join("ledger.db")
    }

    /// `path` relative to the root when it lies inside it (for chunk names and the ledger).
    pub fn display_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }

    /// Read `.env` (KEY=VALUE lines, `#` comments, optional quotes, `export ` prefix).
    pub fn dotenv(&self) -> Result<BTreeMap<String, String>> {
        let path = self.root.join(".env");
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_dotenv(&text).map_err(|(line, msg)| {
                Error::usage(format!("{}:{line}: {msg}", path.display()))
                    .with_hint("each line must be KEY=VALUE; quote values with spaces")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::usage(format!("cannot read {}: {e}", path.display()))),
        }
    }
}

fn load_config(path: &Path) -> Result<(Config, Inventory)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
    parse_config(&text, &path.display().to_string())
}

/// Parse and validate the text of `stagecraft.yml`; `file` names it in error messages, which
/// start with `FILE:LINE:COLUMN:` when the position is known.
pub(crate) fn parse_config(text: &str, file: &str) -> Result<(Config, Inventory)> {
    if text.trim().is_empty() {
        return Ok((Config::default(), Inventory::default()));
    }
    let mut config = serde_saphyr::from_str::<Config>(text).map_err(|e| config_error(file, &e))?;
    let inventory = match config.inventory.take() {
        Some(raw) => raw.validate().map_err(|e| {
            let message = match e.position() {
                Some((line, column)) => format!("{file}:{line}:{column}: {e}"),
                None => format!("{file}: {e}"),
            };
            Error::usage(message).with_hint(
                e.hint()
                    .unwrap_or_else(|| "see docs/inventory.md for the format of inventory:".into()),
            )
        })?,
        None => Inventory::default(),
    };
    Ok((config, inventory))
}

/// A serde error in `stagecraft.yml`. Unknown keys get their position and a suggestion.
fn config_error(file: &str, e: &serde_saphyr::Error) -> Error {
    let mut inner = e.without_snippet();
    while let serde_saphyr::Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    if let serde_saphyr::Error::SerdeUnknownField {
        field,
        expected,
        location,
    } = inner
    {
        let mut message = match location.line() {
            0 => format!("{file}: unknown key '{field}'"),
            line => format!("{file}:{line}:{}: unknown key '{field}'", location.column()),
        };
        if let Some(s) = crate::util::did_you_mean(field, expected) {
            message.push_str(&format!(" (did you mean '{s}'?)"));
        }
        return Error::usage(message)
            .with_hint(format!("known keys here: {}", expected.join(", ")));
    }
    Error::usage(format!("{file}: {e}"))
        .with_hint("see docs/capabilities.md for the format of stagecraft.yml")
}

/// Parse `.env` text. Errors carry the 1-based line number.
pub fn parse_dotenv(text: &str) -> std::result::Result<BTreeMap<String, String>, (usize, String)> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((
                i + 1,
                format!("expected KEY=VALUE, found {:?}", truncate(line)),
            ));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, format!("invalid variable name {:?}", truncate(key))));
        }
        let value = value.trim_start();
        let value = if let Some(rest) = value.strip_prefix('"') {
            // Double quotes: may span lines; \n and \" escapes.
            let mut buf = String::new();
            let mut cur = rest.to_string();
            loop {
                if let Some(end) = find_closing_quote(&cur) {
                    buf.push_str(&cur[..end]);
                    break;
                }
                buf.push_str(&cur);
                buf.push('\n');
                match lines.next() {
                    Some((_, next)) => cur = next.to_string(),
                    None => return Err((i + 1, format!("unterminated quote in {key}"))),
                }
            }
            unescape(&buf)
        } else if let Some(rest) = value.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_string(),
                None => return Err((i + 1, format!("unterminated quote in {key}"))),
            }
        } else {
            match value.find(" #") {
                Some(pos) => value[..pos].trim_end().to_string(),
                None => value.trim_end().to_string(),
            }
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

fn find_closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_forms() {
        let env = parse_dotenv(
            "# c\nA=1\nexport B = two words # note\nC=\"x\\ny\"\nD='lit $x'\nE=\"multi\nline\"\n",
        )
        .expect("parses");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "x\ny");
        assert_eq!(env["D"], "lit $x");
        assert_eq!(env["E"], "multi\nline");
    }

    #[test]
    fn dotenv_errors_name_the_line() {
        assert_eq!(parse_dotenv("A=1\nnope\n").map_err(|e| e.0), Err(2));
        assert_eq!(parse_dotenv("A=\"open\n").map_err(|e| e.0), Err(1));
    }
}
