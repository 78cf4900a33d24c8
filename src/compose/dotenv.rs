//! `.env` and `env_file` syntax, as Compose reads it.
//!
//! One `KEY=VALUE` per line, optionally preceded by `export `; blank lines and `#` comments are
//! skipped. Values are unquoted (trailing whitespace and an inline comment starting with
//! whitespace + `#` are removed), single-quoted (literal, may span lines) or double-quoted
//! (`\n` and `\r` escapes, `\X` gives `X`, may span lines). Unquoted and double-quoted values
//! are interpolated; a variable is looked up first with the caller's lookup (the shell-like
//! environment, which wins over the file), then among the values defined earlier in the file.
//! A line with a bare `KEY` takes that variable from the caller's lookup, or is skipped if unset.

use std::collections::BTreeMap;

use super::interp::{self, InterpError, Var};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DotenvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')
}

/// Line (1-based) and column (1-based, in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

fn error_at(text: &str, offset: usize, message: String, hint: Option<String>) -> DotenvError {
    let (line, column) = line_col(text, offset);
    DotenvError {
        line,
        column,
        message,
        hint,
    }
}

fn line_end(text: &str, from: usize) -> usize {
    text[from..].find('\n').map_or(text.len(), |i| from + i)
}

/// Parse a dotenv file. `unset` collects variables interpolated without being set.
pub(crate) fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<Var>,
    unset: &mut Vec<String>,
) -> Result<BTreeMap<String, Var>, DotenvError> {
    let normalized = text.replace("\r\n", "\n");
    let text = normalized.as_str();
    let mut out: BTreeMap<String, Var> = BTreeMap::new();
    let mut pos = 0;
    while pos < text.len() {
        let end = line_end(text, pos);
        let line = &text[pos..end];
        let body = line.trim_start_matches([' ', '\t']);
        if body.is_empty() || body.starts_with('#') {
            pos = end + 1;
            continue;
        }
        let mut at = pos + (line.len() - body.len());
        if let Some(r) = body.strip_prefix("export")
            && r.starts_with([' ', '\t'])
        {
            let r2 = r.trim_start_matches([' ', '\t']);
            at += body.len() - r2.len();
        }
        let rest = &text[at..end];
        let key_len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        let key = &rest[..key_len];
        if key.is_empty() {
            let c = rest.chars().next().unwrap_or(' ');
            return Err(error_at(
                text,
                at,
                format!("unexpected character {c:?} in variable name"),
                Some("lines look like KEY=VALUE".into()),
            ));
        }
        let after_key = rest[key_len..].trim_start_matches([' ', '\t']);
        let after_at = end - after_key.len();
        if after_key.is_empty() || after_key.starts_with('#') {
            // A bare KEY takes its value from the environment.
            if let Some(v) = lookup(key) {
                out.insert(key.to_string(), v);
            }
            pos = end + 1;
            continue;
        }
        if !after_key.starts_with('=') {
            let c = after_key.chars().next().unwrap_or(' ');
            return Err(error_at(
                text,
                after_at,
                format!("unexpected character {c:?} after variable name {key}"),
                Some("lines look like KEY=VALUE".into()),
            ));
        }
        let raw_value = after_key[1..].trim_start_matches([' ', '\t']);
        let value_at = end - raw_value.len();
        let interpolate = |raw: &str, unset: &mut Vec<String>| {
            let seen = &out;
            interp::interpolate(raw, &|n| lookup(n).or_else(|| seen.get(n).cloned()), unset)
                .map_err(|e: InterpError| error_at(text, value_at, e.message(), e.hint()))
        };
        let (var, value_end) = match raw_value.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                let start = value_at + 1;
                let close = find_close(text, start, quote).ok_or_else(|| {
                    error_at(
                        text,
                        value_at,
                        format!("unterminated quoted value for {key}"),
                        None,
                    )
                })?;
                let raw = &text[start..close];
                let var = if quote == '\'' {
                    Var::plain(raw)
                } else {
                    let v = interpolate(&unescape(raw), unset)?;
                    Var {
                        value: v.value,
                        secrets: v.secrets,
                    }
                };
                (var, close + 1)
            }
            _ => {
                let mut raw = raw_value;
                if let Some(i) = inline_comment(raw) {
                    raw = &raw[..i];
                }
                let v = interpolate(raw.trim_end_matches([' ', '\t']), unset)?;
                (
                    Var {
                        value: v.value,
                        secrets: v.secrets,
                    },
                    end,
                )
            }
        };
        let end = line_end(text, value_end);
        let trailing = text[value_end..end].trim_start_matches([' ', '\t']);
        if !trailing.is_empty() && !trailing.starts_with('#') {
            return Err(error_at(
                text,
                end - trailing.len(),
                format!("unexpected text after the quoted value of {key}"),
                None,
            ));
        }
        out.insert(key.to_string(), var);
        pos = end + 1;
    }
    Ok(out)
}

/// Byte offset of the closing quote, skipping backslash escapes inside double quotes.
fn find_close(text: &str, start: usize, quote: char) -> Option<usize> {
    let mut chars = text[start..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Some(start + i);
        }
        if c == '\\' && quote == '"' {
            chars.next();
        }
    }
    None
}

/// Byte offset of an inline comment: a `#` preceded by whitespace.
fn inline_comment(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (1..b.len()).find(|&i| b[i] == b'#' && (b[i - 1] == b' ' || b[i - 1] == b'\t'))
}

/// Double-quote escapes as Compose applies them: `\n` and `\r` become control characters,
/// `\$` stays a literal dollar, any other `\X` becomes `X`.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('$') => out.push_str("$$"),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(
        text: &str,
        env: &[(&str, &str)],
    ) -> Result<BTreeMap<String, String>, DotenvError> {
        let env: BTreeMap<String, Var> = env
            .iter()
            .map(|(k, v)| (k.to_string(), Var::plain(*v)))
            .collect();
        let mut unset = Vec::new();
        let vars = parse(text, &|n| env.get(n).cloned(), &mut unset)?;
        Ok(vars.into_iter().map(|(k, v)| (k, v.value)).collect())
    }

    fn ok(text: &str) -> BTreeMap<String, String> {
        parse_with(text, &[]).expect("parses")
    }

    fn pairs(m: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
        m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn basic_lines_comments_and_export() {
        let m = ok("# comment\n\nA=1\n  export B = two words  \nC=\nD.x-y=z\r\nexportE=3\n");
        assert_eq!(
            pairs(&m),
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", ""),
                ("D.x-y", "z"),
                ("exportE", "3")
            ]
        );
    }

    #[test]
    fn inline_comments_only_after_whitespace() {
        let m = ok("A=x # note\nB=x#y\nC=#z\nD='q # r' # s\n");
        assert_eq!(
            pairs(&m),
            [("A", "x"), ("B", "x#y"), ("C", "#z"), ("D", "q # r")]
        );
    }

    #[test]
    fn quotes_and_escapes() {
        let m = ok(
            "A='$B \\n literal'\nB=\"l1\\nl2 \\\"q\\\" \\$x \\t\"\nC=\"multi\nline\"\nD='x\ny'\n",
        );
        assert_eq!(m["A"], "$B \\n literal");
        assert_eq!(m["B"], "l1\nl2 \"q\" $x t");
        assert_eq!(m["C"], "multi\nline");
        assert_eq!(m["D"], "x\ny");
    }

    #[test]
    fn interpolation_uses_environment_first_then_earlier_lines() {
        let m = parse_with(
            "A=file\nB=${A}-$C\nC=${NOPE:-dflt}\nD=\"${C}!\"\nE='${C}'\n",
            &[("A", "shell")],
        )
        .unwrap();
        assert_eq!(m["B"], "shell-");
        assert_eq!(m["C"], "dflt");
        assert_eq!(m["D"], "dflt!");
        assert_eq!(m["E"], "${C}");
    }

    #[test]
    fn bare_keys_inherit() {
        let m = parse_with("A\nB # comment\nC=1\n", &[("A", "from-env")]).unwrap();
        assert_eq!(pairs(&m), [("A", "from-env"), ("C", "1")]);
    }

    #[test]
    fn later_lines_override() {
        assert_eq!(ok("A=1\nA=2\n")["A"], "2");
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse_with("A=1\n  B C=2\n", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 5));
        assert_eq!(e.message, "unexpected character 'C' after variable name B");

        let e = parse_with("A=1\n=2\n", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        assert_eq!(e.message, "unexpected character '=' in variable name");

        let e = parse_with("A=1\nB=\"open\n", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        assert_eq!(e.message, "unterminated quoted value for B");

        let e = parse_with("A='x' y\n", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (1, 7));

        let e = parse_with("\n\nA=${X:?set X}\n", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (3, 3));
        assert_eq!(e.message, "required variable X is missing a value: set X");

        let e = parse_with("A=${X\n", &[]).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn secrets_flow_through_interpolation() {
        let secret = Var {
            value: "pw".into(),
            secrets: ["PW".to_string()].into(),
        };
        let mut unset = Vec::new();
        let vars = parse(
            "URL=db://u:${PW}@h\nPLAIN=x\n",
            &|n| (n == "PW").then(|| secret.clone()),
            &mut unset,
        )
        .unwrap();
        assert_eq!(vars["URL"].value, "db://u:pw@h");
        assert_eq!(vars["URL"].secrets.iter().collect::<Vec<_>>(), ["PW"]);
        assert!(vars["PLAIN"].secrets.is_empty());
    }
}
