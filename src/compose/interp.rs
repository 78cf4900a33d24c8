//! Compose variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`, `${VAR+replacement}` and `$$`.
//!
//! Defaults and replacements are interpolated themselves (only when used), so
//! `${A:-${B:-x}}` works. A `$` not followed by `$`, `{` or a name start is kept as is.
//! Every variable carries the set of secret variables its value came from, and the result of
//! interpolating a string carries the union of those whose values were substituted into it.

use std::collections::{BTreeMap, BTreeSet};

/// A variable's value and the secret variables that contributed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Var {
    pub value: String,
    pub secrets: BTreeSet<String>,
}

impl Var {
    pub fn plain(value: impl Into<String>) -> Var {
        Var {
            value: value.into(),
            secrets: BTreeSet::new(),
        }
    }
}

/// The variables available to interpolation: `.env`, overridden by plain then secret variables.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    pub vars: BTreeMap<String, Var>,
}

impl Env {
    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars.get(name).cloned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interpolated {
    pub value: String,
    pub secrets: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InterpError {
    /// `${VAR:?message}` / `${VAR?message}` with the variable missing.
    Required { var: String, message: String },
    /// A malformed `${...}`.
    Invalid { template: String, reason: String },
}

impl InterpError {
    pub fn message(&self) -> String {
        match self {
            InterpError::Required { var, message } if message.is_empty() => {
                format!("required variable {var} is missing a value")
            }
            InterpError::Required { var, message } => {
                format!("required variable {var} is missing a value: {message}")
            }
            InterpError::Invalid { template, reason } => {
                format!("invalid interpolation format in {template:?}: {reason}")
            }
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            InterpError::Required { .. } => None,
            InterpError::Invalid { .. } => Some("write $$ for a literal $".into()),
        }
    }
}

/// Interpolate `template`. `lookup` gives a variable's value; the names of variables that were
/// used without being set and without a default are appended to `unset`.
pub(crate) fn interpolate(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<Var>,
    unset: &mut Vec<String>,
) -> Result<Interpolated, InterpError> {
    let mut cx = Cx {
        template,
        lookup,
        unset,
        secrets: BTreeSet::new(),
    };
    let value = cx.subst(template)?;
    Ok(Interpolated {
        value,
        secrets: cx.secrets,
    })
}

struct Cx<'a> {
    template: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<Var>,
    unset: &'a mut Vec<String>,
    secrets: BTreeSet<String>,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Index of the `}` closing a `${` whose content starts at `from`, counting nested `${`.
fn closing_brace(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 1usize;
    let mut i = from;
    while i < b.len() {
        if b[i] == b'}' {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        } else if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            depth += 1;
            i += 1;
        }
        i += 1;
    }
    None
}

impl Cx<'_> {
    fn invalid(&self, reason: &str) -> InterpError {
        InterpError::Invalid {
            template: self.template.to_string(),
            reason: reason.to_string(),
        }
    }

    fn get(&self, name: &str) -> Option<Var> {
        (self.lookup)(name)
    }

    /// Use a variable's value, recording the secrets it came from.
    fn take(&mut self, var: Var) -> String {
        self.secrets.extend(var.secrets);
        var.value
    }

    fn subst(&mut self, s: &str) -> Result<String, InterpError> {
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let mut literal = 0;
        while i < b.len() {
            if b[i] != b'$' {
                i += 1;
                continue;
            }
            out.push_str(&s[literal..i]);
            match b.get(i + 1) {
                Some(b'$') => {
                    out.push('$');
                    i += 2;
                }
                Some(b'{') => {
                    let end =
                        closing_brace(s, i + 2).ok_or_else(|| self.invalid("unclosed '${'"))?;
                    let value = self.braced(&s[i + 2..end])?;
                    out.push_str(&value);
                    i = end + 1;
                }
                Some(&c) if is_name_start(c) => {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len() && is_name_char(b[j]) {
                        j += 1;
                    }
                    let value = self.plain(&s[start..j]);
                    out.push_str(&value);
                    i = j;
                }
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            literal = i;
        }
        out.push_str(&s[literal..]);
        Ok(out)
    }

    /// `$NAME` or `${NAME}`: the value, or empty with a warning when unset.
    fn plain(&mut self, name: &str) -> String {
        match self.get(name) {
            Some(v) => self.take(v),
            None => {
                self.unset.push(name.to_string());
                String::new()
            }
        }
    }

    /// The content of `${...}`.
    fn braced(&mut self, inner: &str) -> Result<String, InterpError> {
        let b = inner.as_bytes();
        if b.is_empty() {
            return Err(self.invalid("empty variable name"));
        }
        if !is_name_start(b[0]) {
            return Err(self.invalid("a variable name must start with a letter or '_'"));
        }
        let mut n = 1;
        while n < b.len() && is_name_char(b[n]) {
            n += 1;
        }
        let name = &inner[..n];
        let rest = &inner[n..];
        if rest.is_empty() {
            return Ok(self.plain(name));
        }
        let (colon, op, arg) = if let Some(r) = rest.strip_prefix(':') {
            match r.as_bytes().first() {
                Some(&op @ (b'-' | b'?' | b'+')) => (true, op, &r[1..]),
                _ => {
                    return Err(self.invalid(&format!(
                        "expected ':-', ':?' or ':+' after the variable name {name}"
                    )));
                }
            }
        } else {
            match rest.as_bytes()[0] {
                op @ (b'-' | b'?' | b'+') => (false, op, &rest[1..]),
                _ => {
                    return Err(self.invalid(&format!(
                        "unexpected character after the variable name {name}"
                    )));
                }
            }
        };
        let var = self.get(name);
        // `:` forms treat an empty value like an unset one.
        let present = match &var {
            Some(v) => !colon || !v.value.is_empty(),
            None => false,
        };
        match op {
            b'-' => match var {
                Some(v) if present => Ok(self.take(v)),
                _ => self.subst(arg),
            },
            b'?' => match var {
                Some(v) if present => Ok(self.take(v)),
                _ => Err(InterpError::Required {
                    var: name.to_string(),
                    message: arg.to_string(),
                }),
            },
            _ => {
                if present {
                    self.subst(arg)
                } else {
                    Ok(String::new())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let mut e = Env::default();
        e.vars.insert("A".into(), Var::plain("a"));
        e.vars.insert("EMPTY".into(), Var::plain(""));
        e.vars.insert("_U1".into(), Var::plain("u"));
        e.vars.insert(
            "S".into(),
            Var {
                value: "s3cret".into(),
                secrets: ["S".to_string()].into(),
            },
        );
        e
    }

    fn run(t: &str) -> Result<(String, Vec<String>, Vec<String>), InterpError> {
        let e = env();
        let mut unset = Vec::new();
        let r = interpolate(t, &|n| e.get(n), &mut unset)?;
        Ok((r.value, r.secrets.into_iter().collect(), unset))
    }

    fn val(t: &str) -> String {
        run(t).expect("interpolates").0
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(val("x$A-y"), "xa-y");
        assert_eq!(val("${A}b"), "ab");
        assert_eq!(val("$_U1"), "u");
        assert_eq!(val("$A$A"), "aa");
        assert_eq!(val("no vars"), "no vars");
        assert_eq!(val(""), "");
    }

    #[test]
    fn dollar_dollar_and_lone_dollars() {
        assert_eq!(val("$$A"), "$A");
        assert_eq!(val("$${A}"), "${A}");
        assert_eq!(val("a$"), "a$");
        assert_eq!(val("5$ and $1 and $ x"), "5$ and $1 and $ x");
        assert_eq!(val("$$$A"), "$a");
    }

    #[test]
    fn unset_variables_are_blank_and_reported() {
        let (v, _, unset) = run("[$NOPE][${NOPE2}]").unwrap();
        assert_eq!(v, "[][]");
        assert_eq!(unset, ["NOPE", "NOPE2"]);
    }

    #[test]
    fn defaults() {
        assert_eq!(val("${NOPE:-d}"), "d");
        assert_eq!(val("${EMPTY:-d}"), "d");
        assert_eq!(val("${A:-d}"), "a");
        assert_eq!(val("${NOPE-d}"), "d");
        assert_eq!(val("${EMPTY-d}"), "");
        assert_eq!(val("${A-d}"), "a");
        assert_eq!(val("${NOPE:-}"), "");
        assert_eq!(val("${NOPE:-a b:c}"), "a b:c");
        let (_, _, unset) = run("${NOPE:-d}${NOPE-d}").unwrap();
        assert!(unset.is_empty());
    }

    #[test]
    fn replacements() {
        assert_eq!(val("${A:+r}"), "r");
        assert_eq!(val("${EMPTY:+r}"), "");
        assert_eq!(val("${NOPE:+r}"), "");
        assert_eq!(val("${A+r}"), "r");
        assert_eq!(val("${EMPTY+r}"), "r");
        assert_eq!(val("${NOPE+r}"), "");
        assert_eq!(val("${A:+<$A>}"), "<a>");
    }

    #[test]
    fn required() {
        assert_eq!(val("${A:?x}"), "a");
        assert_eq!(val("${EMPTY?x}"), "");
        let e = run("${NOPE:?must set NOPE}").unwrap_err();
        assert_eq!(
            e.message(),
            "required variable NOPE is missing a value: must set NOPE"
        );
        let e = run("${EMPTY:?}").unwrap_err();
        assert_eq!(e.message(), "required variable EMPTY is missing a value");
        let e = run("${NOPE?gone}").unwrap_err();
        assert_eq!(
            e,
            InterpError::Required {
                var: "NOPE".into(),
                message: "gone".into()
            }
        );
    }

    #[test]
    fn nesting() {
        assert_eq!(val("${NOPE:-${A:-x}}"), "a");
        assert_eq!(val("${NOPE:-${NOPE2:-x}}"), "x");
        assert_eq!(val("${NOPE:-${NOPE2:-${A}}}-z"), "a-z");
        assert_eq!(val("${A:+${NOPE:-in}}"), "in");
        assert_eq!(val("${NOPE:-$${A}}"), "${A}");
        // Defaults are only evaluated when used.
        assert_eq!(val("${A:-${NOPE:?never}}"), "a");
        let (_, _, unset) = run("${A:-$NOPE}").unwrap();
        assert!(unset.is_empty());
    }

    #[test]
    fn malformed() {
        for t in [
            "${A",
            "${",
            "${}",
            "${1A}",
            "${A:x}",
            "${A B}",
            "${A:-${B}",
            "x ${ y",
        ] {
            let e = run(t).unwrap_err();
            assert!(
                matches!(e, InterpError::Invalid { .. }),
                "{t}: expected invalid, got {e:?}"
            );
        }
        let e = run("pre ${A").unwrap_err();
        assert_eq!(
            e.message(),
            "invalid interpolation format in \"pre ${A\": unclosed '${'"
        );
    }

    #[test]
    fn secrets_are_tracked_when_their_value_is_used() {
        let (v, secrets, _) = run("u:${S}@h").unwrap();
        assert_eq!(v, "u:s3cret@h");
        assert_eq!(secrets, ["S"]);
        assert_eq!(run("${NOPE:-$S}").unwrap().1, ["S"]);
        assert_eq!(run("${S:-x}").unwrap().1, ["S"]);
        // Only the fact that S is set is used, not its value.
        assert!(run("${S:+on}").unwrap().1.is_empty());
        assert!(run("$A").unwrap().1.is_empty());
    }
}
