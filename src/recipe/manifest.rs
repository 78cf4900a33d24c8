//! `recipe.yaml`: the package manifest. Strict: an unknown key, a wrong type or a bad value is an
//! error at `FILE:LINE:COLUMN`.

use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_saphyr::Spanned;

use crate::error::Error;
use crate::runtime::caps::Capability;

/// A parsed and validated `recipe.yaml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    pub description: String,
    /// Which Stagecraft versions the recipe works with.
    pub stagecraft: semver::VersionReq,
    pub capabilities: Vec<Capability>,
    /// In the order written.
    pub inputs: Vec<(String, InputSpec)>,
    pub requires: Vec<Requirement>,
}

#[derive(Debug, Clone)]
pub struct Requirement {
    pub name: String,
    pub version: semver::VersionReq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Integer,
    Boolean,
    Enum,
    /// The name of a `.env` variable holding a secret (never the secret itself).
    Secret,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Enum => "enum",
            InputType::Secret => "secret",
        }
    }
}

/// A typed input value (a default, or a value given on the command line).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl Scalar {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Scalar::Bool(b) => serde_json::Value::Bool(*b),
            Scalar::Int(i) => serde_json::Value::from(*i),
            Scalar::Str(s) => serde_json::Value::String(s.clone()),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InputSpec {
    pub kind: InputType,
    /// `None`: the input is required.
    pub default: Option<Scalar>,
    /// The allowed values of an `enum`.
    pub values: Vec<String>,
    pub help: String,
}

impl InputSpec {
    /// Parse a command-line value as this input's type.
    pub fn parse_value(&self, text: &str) -> Result<Scalar, String> {
        match self.kind {
            InputType::String => Ok(Scalar::Str(text.to_string())),
            InputType::Secret => {
                if valid_env_name(text) {
                    Ok(Scalar::Str(text.to_string()))
                } else {
                    Err(format!(
                        "expected a secret: the name of a .env variable ([A-Za-z_][A-Za-z0-9_]*), got {text:?}"
                    ))
                }
            }
            InputType::Integer => text
                .parse::<i64>()
                .map(Scalar::Int)
                .map_err(|_| format!("expected an integer, got {text:?}")),
            InputType::Boolean => match text {
                "true" | "yes" | "on" | "1" => Ok(Scalar::Bool(true)),
                "false" | "no" | "off" | "0" => Ok(Scalar::Bool(false)),
                _ => Err(format!("expected a boolean (true or false), got {text:?}")),
            },
            InputType::Enum => {
                if self.values.iter().any(|v| v == text) {
                    Ok(Scalar::Str(text.to_string()))
                } else {
                    let names: Vec<&str> = self.values.iter().map(String::as_str).collect();
                    let hint = crate::util::did_you_mean(text, &names)
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_default();
                    Err(format!(
                        "expected one of {}, got {text:?}{hint}",
                        self.values.join(", ")
                    ))
                }
            }
        }
    }

    /// Whether a value (a default written in recipe.yaml) has this input's type.
    fn accepts(&self, v: &Scalar) -> Result<(), String> {
        match (self.kind, v) {
            (InputType::String, Scalar::Str(_))
            | (InputType::Integer, Scalar::Int(_))
            | (InputType::Boolean, Scalar::Bool(_)) => Ok(()),
            (InputType::Enum | InputType::Secret, Scalar::Str(s)) => {
                self.parse_value(s).map(|_| ())
            }
            _ => Err(format!("expected {} value", article(self.kind.as_str()))),
        }
    }
}

/// `an integer`, `a string`.
fn article(word: &str) -> String {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {word}")
    } else {
        format!("a {word}")
    }
}

pub fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[a-z][a-z0-9-]*`
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.len() <= 64
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: String,
    stagecraft: Spanned<String>,
    #[serde(default)]
    capabilities: Vec<Spanned<String>>,
    #[serde(default)]
    inputs: RawInputs,
    #[serde(default)]
    requires: Vec<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[serde(rename = "type")]
    kind: InputType,
    #[serde(default)]
    default: Option<Spanned<Scalar>>,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    help: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    name: Spanned<String>,
    #[serde(default)]
    version: Option<Spanned<String>>,
}

/// A mapping kept in the order written.
#[derive(Default)]
struct RawInputs(Vec<(Spanned<String>, RawInput)>);

impl<'de> Deserialize<'de> for RawInputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawInputs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of input name to {type, default, help}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawInputs, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Spanned<String>, RawInput>()? {
                    out.push((k, v));
                }
                Ok(RawInputs(out))
            }
            fn visit_unit<E>(self) -> Result<RawInputs, E> {
                Ok(RawInputs::default())
            }
        }
        d.deserialize_map(V)
    }
}

/// Parse the text of a `recipe.yaml`; `file` names it in errors (`FILE:LINE:COLUMN: ...`).
pub fn parse(text: &str, file: &str) -> Result<Manifest, Error> {
    let hint = "see docs/recipes.md for the format of recipe.yaml";
    let raw: Raw = serde_saphyr::from_str(text)
        .map_err(|e| Error::usage(yaml_error(file, &e)).with_hint(hint))?;
    let at = |loc: &serde_saphyr::Location, msg: String| {
        Error::usage(format!("{file}:{}:{}: {msg}", loc.line(), loc.column())).with_hint(hint)
    };
    if !valid_name(&raw.name.value) {
        return Err(at(
            &raw.name.referenced,
            format!(
                "name: invalid recipe name '{}' (lowercase letters, digits and '-', starting with a letter)",
                raw.name.value
            ),
        ));
    }
    let version = semver::Version::parse(&raw.version.value).map_err(|e| {
        at(
            &raw.version.referenced,
            format!(
                "version: '{}' is not a semver version: {e}",
                raw.version.value
            ),
        )
    })?;
    let stagecraft = semver::VersionReq::parse(&raw.stagecraft.value).map_err(|e| {
        at(
            &raw.stagecraft.referenced,
            format!(
                "stagecraft: '{}' is not a semver requirement (like \">=0.1.0\"): {e}",
                raw.stagecraft.value
            ),
        )
    })?;
    let mut capabilities = Vec::new();
    for c in &raw.capabilities {
        let cap = Capability::parse(&c.value)
            .map_err(|e| at(&c.referenced, format!("capabilities: {e}")))?;
        if !capabilities.contains(&cap) {
            capabilities.push(cap);
        }
    }
    let mut inputs: Vec<(String, InputSpec)> = Vec::new();
    for (k, v) in raw.inputs.0 {
        if !valid_input_name(&k.value) {
            return Err(at(
                &k.referenced,
                format!(
                    "inputs: invalid input name '{}' (letters, digits and '_', starting with a letter)",
                    k.value
                ),
            ));
        }
        if inputs.iter().any(|(n, _)| *n == k.value) {
            return Err(at(
                &k.referenced,
                format!("inputs: duplicate input '{}'", k.value),
            ));
        }
        if v.kind == InputType::Enum && v.values.is_empty() {
            return Err(at(
                &k.referenced,
                format!("inputs.{}: an enum needs `values: [...]`", k.value),
            ));
        }
        if v.kind != InputType::Enum && !v.values.is_empty() {
            return Err(at(
                &k.referenced,
                format!("inputs.{}: `values` is only for type enum", k.value),
            ));
        }
        let spec = InputSpec {
            kind: v.kind,
            default: None,
            values: v.values,
            help: v.help,
        };
        let default = match v.default {
            Some(d) => {
                spec.accepts(&d.value)
                    .map_err(|e| at(&d.referenced, format!("inputs.{}.default: {e}", k.value)))?;
                Some(d.value)
            }
            None => None,
        };
        inputs.push((k.value, InputSpec { default, ..spec }));
    }
    let mut requires = Vec::new();
    for r in raw.requires {
        if !valid_name(&r.name.value) {
            return Err(at(
                &r.name.referenced,
                format!("requires: invalid recipe name '{}'", r.name.value),
            ));
        }
        let version = match r.version {
            Some(v) => semver::VersionReq::parse(&v.value).map_err(|e| {
                at(
                    &v.referenced,
                    format!("requires: '{}' is not a semver requirement: {e}", v.value),
                )
            })?,
            None => semver::VersionReq::STAR,
        };
        requires.push(Requirement {
            name: r.name.value,
            version,
        });
    }
    Ok(Manifest {
        name: raw.name.value,
        version,
        description: raw.description,
        stagecraft,
        capabilities,
        inputs,
        requires,
    })
}

fn valid_input_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A serde-saphyr error as `FILE:LINE:COLUMN: message (did you mean ...)`.
fn yaml_error(file: &str, e: &serde_saphyr::Error) -> String {
    let mut inner = e.without_snippet();
    while let serde_saphyr::Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let prefix = match e.location() {
        Some(l) if l.line() > 0 => format!("{file}:{}:{}", l.line(), l.column()),
        _ => file.to_string(),
    };
    if let serde_saphyr::Error::SerdeUnknownField {
        field, expected, ..
    } = inner
    {
        let mut m = format!("{prefix}: unknown key '{field}'");
        if let Some(s) = crate::util::did_you_mean(field, expected) {
            m.push_str(&format!(" (did you mean '{s}'?)"));
        }
        m.push_str(&format!("; known keys here: {}", expected.join(", ")));
        return m;
    }
    // Plain message: drop the "error: line N column M: " the library puts in front.
    let text = inner.to_string();
    let mut msg = text.trim_start_matches("error: ");
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        msg = after;
    }
    format!("{prefix}: {}", msg.lines().next().unwrap_or(msg))
}

/// The version of this Stagecraft binary.
pub fn stagecraft_version() -> semver::Version {
    semver::Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or(semver::Version::new(0, 0, 0))
}

/// Refuse a recipe that does not support this Stagecraft version.
pub fn check_stagecraft(m: &Manifest) -> Result<(), Error> {
    let mine = stagecraft_version();
    if m.stagecraft.matches(&mine) {
        return Ok(());
    }
    Err(Error::usage(format!(
        "recipe {} {} needs Stagecraft {}, this is {mine}",
        m.name, m.version, m.stagecraft
    ))
    .with_hint("upgrade Stagecraft, or use a version of the recipe made for this one"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: redis\nversion: 1.0.0\ndescription: d\nstagecraft: \">=0.1.0\"\ncapabilities: [fs-write]\ninputs:\n  version: { type: string, default: \"7.2\", help: tag }\n  port: { type: integer, default: 6379 }\n  mode: { type: enum, values: [a, b], default: a }\n  pw: { type: secret, default: PW }\n  need: { type: string }\nrequires:\n  - { name: postgres, version: \">=1.0\" }\n";

    #[test]
    fn parses_in_order() {
        let m = parse(GOOD, "recipe.yaml").expect("parses");
        let names: Vec<&str> = m.inputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["version", "port", "mode", "pw", "need"]);
        assert_eq!(m.inputs[1].1.default, Some(Scalar::Int(6379)));
        assert!(m.inputs[4].1.default.is_none());
        assert_eq!(m.requires[0].name, "postgres");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let bad = GOOD.replace("description:", "descripton:");
        let e = parse(&bad, "r/recipe.yaml").expect_err("unknown key");
        assert!(
            e.message.starts_with(
                "r/recipe.yaml:3:1: unknown key 'descripton' (did you mean 'description'?)"
            ),
            "{}",
            e.message
        );
        let bad = GOOD.replace("default: 6379", "default: \"x\"");
        let e = parse(&bad, "recipe.yaml").expect_err("bad default");
        assert!(
            e.message.starts_with("recipe.yaml:8:") && e.message.contains("inputs.port.default"),
            "{}",
            e.message
        );
        let bad = GOOD.replace("[fs-write]", "[fs-wrte]");
        let e = parse(&bad, "recipe.yaml").expect_err("bad cap");
        assert!(e.message.starts_with("recipe.yaml:5:"), "{}", e.message);
    }
}
