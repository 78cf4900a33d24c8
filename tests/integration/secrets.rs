//! Tests: secret values never reach stdout, stderr, error text or the ledger, in any form the
//! scrubber promises to catch (raw, each line, base64 in both alphabets with and without padding
//! and embedded in a longer base64 string, hex, URL-encoded, JSON-escaped).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::harness::{Out, Project};

/// A secret whose forms all differ from it: a quote and a backslash (JSON), spaces, `&` and `/`
/// (URL), a non-ASCII letter, and bytes whose base64 holds `+`, `/` and padding.
const SECRET: &str = "sk-live \"Q7\\zx\" & w/é+~?>";

/// A multi-line secret as it sits in `.env` (double-quoted, spanning lines).
const PEM: &str = "-----BEGIN TEST KEY-----
MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu
KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm
-----END TEST KEY-----";

/// Shortest text the scrubber treats as a secret (and so the shortest form searched for).
const MIN_LEN: usize = 6;

/// RFC 3986 strict percent-encoding: everything but unreserved characters.
const STRICT_URL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The base64 characters determined by `bytes` alone when they follow `offset` other bytes in a
/// longer encoded string.
fn base64_inner(bytes: &[u8], offset: usize) -> String {
    let mut shifted = vec![b'x'; offset];
    shifted.extend_from_slice(bytes);
    let encoded = STANDARD_NO_PAD.encode(&shifted);
    let start = (8 * offset).div_ceil(6);
    let end = 8 * shifted.len() / 6;
    encoded[start..end].to_string()
}

/// `application/x-www-form-urlencoded`: space as `+`.
fn form_urlencode(text: &str) -> String {
    text.split(' ')
        .map(|part| utf8_percent_encode(part, STRICT_URL).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// Every form in which `secret` must never appear, with a name for the failure message.
fn forms(secret: &str) -> Vec<(String, String)> {
    let mut bases = vec![("the value".to_string(), secret.to_string())];
    if secret.contains('\n') {
        for (i, line) in secret.lines().enumerate() {
            if line.trim().len() >= MIN_LEN {
                bases.push((format!("line {}", i + 1), line.trim().to_string()));
            }
        }
    }
    let mut out = Vec::new();
    for (what, base) in bases {
        let bytes = base.as_bytes();
        out.push((what.clone(), base.clone()));
        for (name, engine) in [
            ("base64", &STANDARD),
            ("unpadded base64", &STANDARD_NO_PAD),
            ("url-safe base64", &URL_SAFE),
            ("unpadded url-safe base64", &URL_SAFE_NO_PAD),
        ] {
            out.push((format!("{what} as {name}"), engine.encode(bytes)));
        }
        for offset in 0..3 {
            let inner = base64_inner(bytes, offset);
            out.push((
                format!("{what} embedded in longer base64 (offset {offset})"),
                inner.clone(),
            ));
            out.push((
                format!("{what} embedded in longer url-safe base64 (offset {offset})"),
                inner.replace('+', "-").replace('/', "_"),
            ));
        }
        out.push((format!("{what} as hex"), hex::encode(bytes)));
        out.push((
            format!("{what} as upper-case hex"),
            hex::encode_upper(bytes),
        ));
        out.push((
            format!("{what} URL-encoded"),
            utf8_percent_encode(&base, STRICT_URL).to_string(),
        ));
        out.push((format!("{what} form-encoded"), form_urlencode(&base)));
        let quoted = serde_json::to_string(&base).expect("JSON-encode a string");
        let escaped = quoted[1..quoted.len() - 1].to_string();
        out.push((format!("{what} JSON-escaped"), escaped.clone()));
        out.push((
            format!("{what} JSON-escaped with \\/"),
            escaped.replace('/', "\\/"),
        ));
        let ascii: String = escaped
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    let mut units = [0u16; 2];
                    c.encode_utf16(&mut units)
                        .iter()
                        .map(|u| format!("\\u{u:04x}"))
                        .collect()
                }
            })
            .collect();
        out.push((format!("{what} JSON-escaped as ASCII"), ascii));
    }
    out.retain(|(_, form)| form.len() >= MIN_LEN);
    out
}

/// The first form of `secret` found in `haystack`: (what, form).
fn leaked_form(secret: &str, haystack: &[u8]) -> Option<(String, String)> {
    forms(secret)
        .into_iter()
        .find(|(_, form)| haystack.windows(form.len()).any(|w| w == form.as_bytes()))
}

/// Panics if any form of `secret` occurs in `haystack`.
fn assert_absent(secret: &str, place: &str, haystack: &[u8]) {
    if let Some((what, form)) = leaked_form(secret, haystack) {
        panic!(
            "{what} ({form:?}) leaked into {place}:\n{}",
            String::from_utf8_lossy(haystack)
        );
    }
}

#[test]
fn leak_check_finds_every_form() {
    // The check itself: each form, embedded in other text, is found.
    for secret in [SECRET, PEM] {
        let all = forms(secret);
        assert!(all.len() >= 15, "{all:?}");
        for (what, form) in all {
            let text = format!("before {form} after");
            assert!(
                leaked_form(secret, text.as_bytes()).is_some(),
                "{what} not detected"
            );
        }
        assert!(leaked_form(secret, b"before [REDACTED] after").is_none());
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The secret is nowhere: not in the given command outputs, not in what the ledger commands
/// print, not in any byte of the ledger files or of the user's Stagecraft home. Returns the
/// `ledger export` text for further checks.
fn assert_never_leaks(p: &Project, secret: &str, outs: &[&Out]) -> String {
    for (i, out) in outs.iter().enumerate() {
        assert_absent(
            secret,
            &format!("stdout of command {i}"),
            out.stdout.as_bytes(),
        );
        assert_absent(
            secret,
            &format!("stderr of command {i}"),
            out.stderr.as_bytes(),
        );
    }
    let export = p.run(&["ledger", "export"]).ok();
    assert_absent(secret, "`ledger export`", export.stdout.as_bytes());
    assert!(!export.stdout.is_empty());
    for line in export.stdout.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("export line is JSON");
        assert_absent(
            secret,
            "a `ledger export` entry",
            entry.to_string().as_bytes(),
        );
    }
    for args in [
        &["ledger", "show", "last"][..],
        &["ledger", "show", "last", "--json"],
        &["ledger", "ls", "--json"],
    ] {
        let out = p.run(args).ok();
        assert_absent(
            secret,
            &format!("`{}`", args.join(" ")),
            out.stdout.as_bytes(),
        );
    }
    let mut files = files_under(&p.path(".stagecraft"));
    assert!(
        files.iter().any(|f| f.ends_with("ledger.db")),
        "no ledger database in {files:?}"
    );
    files.extend(files_under(p.home()));
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert_absent(secret, &file.display().to_string(), &bytes);
    }
    export.stdout
}

/// The ledger names the secret and holds its HMAC fingerprint.
fn assert_ledger_names(export: &str, name: &str) {
    assert!(
        export.contains(&format!("\"$secret\":\"{name}\"")),
        "the ledger does not name secret {name}:\n{export}"
    );
    assert!(
        export.contains("\"fingerprint\":\"hmac-sha256:"),
        "the ledger holds no HMAC fingerprint:\n{export}"
    );
}

const CAPTURED: &str = r#"
local secrets = require("stagecraft/secrets")
local exec = require("stagecraft/exec")
local json = require("stagecraft/json")
local log = require("stagecraft/log")
local token = secrets.get("TOKEN")
print("handle", token, tostring(token), token.name)
local r = exec.run({ "sh", "-c", [[
printf '%s\n' "$S"
printf %s "$S" | base64 -w0; echo
printf %s "$S" | base64 -w0 | tr '+/' '-_' | tr -d '='; echo
printf 'x%s-tail' "$S" | base64 -w0; echo
printf 'xy%s-tail' "$S" | base64 -w0; echo
printf 'xyz%s-tail' "$S" | base64 -w0; echo
printf %s "$S" | od -An -tx1 -v | tr -d ' \n'; echo
printf %s "$S" | od -An -tx1 -v | tr -d ' \n' | tr a-f A-F; echo
printf 'on stderr: %s\n' "$S" >&2
]] }, { env = { S = token } })
print("stdout", r.stdout)
print("stderr", r.stderr)
local first = r.stdout:match("^[^\n]*")
print("url", (first:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end)))
print("json", json.encode({ captured = first }))
log.info("log", first, token)
log.warn(token)
-- The value, passed on as an argument of another call, is recorded scrubbed.
exec.run({ "printf", "%s", first })
return { out = first, handle = token }
"#;

#[test]
fn captured_exec_output_never_leaks() {
    let p = Project::new().file("captured.luau", CAPTURED);
    let run = |json: bool| {
        let mut args = vec![
            "run",
            "captured.luau",
            "--allow",
            "secrets:TOKEN",
            "--allow",
            "exec:sh",
            "--allow",
            "exec:printf",
        ];
        if json {
            args.push("--json");
        }
        p.cmd(&args).env("TOKEN", SECRET).output().ok()
    };
    let plain = run(false)
        .stdout_has("handle\t[REDACTED]\t[REDACTED]\tTOKEN\n")
        .stdout_has("stdout\t[REDACTED]\n[REDACTED]\n[REDACTED]\n")
        .stdout_has("stderr\ton stderr: [REDACTED]\n")
        // The captured output reaches the script already scrubbed, so it is the marker that
        // gets URL-encoded.
        .stdout_has("url\t%5BREDACTED%5D\n")
        .stdout_has("json\t{\"captured\":\"[REDACTED]\"}\n")
        .stderr_has(" INFO log [REDACTED] [REDACTED]\n")
        .stderr_has(" WARN [REDACTED]\n");
    // Each encoded line is redacted (the embedded base64 keeps only the characters that encode
    // the neighbouring bytes).
    for line in plain.stdout.lines().skip(2).take(7) {
        assert!(line.contains("[REDACTED]"), "{line}\n{}", plain.stdout);
    }
    let json = run(true);
    let result = json.json()["result"].clone();
    assert_eq!(result["out"], "[REDACTED]");
    assert_eq!(result["handle"]["$secret"], "TOKEN");
    assert!(
        result["handle"]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("hmac-sha256:")),
        "{result}"
    );
    let export = assert_never_leaks(&p, SECRET, &[&plain, &json]);
    assert_ledger_names(&export, "TOKEN");
    assert!(
        export.contains("\"argv\":[\"printf\",\"%s\",\"[REDACTED]\"]"),
        "{export}"
    );

    // The fingerprint is stable for the same user and value, and differs for another value.
    let fingerprints = |export: &str| -> Vec<String> {
        export
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["op"] == "secrets.get")
            .filter_map(|e| e["result"]["fingerprint"].as_str().map(str::to_string))
            .collect()
    };
    let all = fingerprints(&export);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], all[1]);
    p.cmd(&["run", "captured.luau", "--allow-all"])
        .env("TOKEN", "another-secret-value")
        .output()
        .ok();
    let export = p.run(&["ledger", "export"]).ok().stdout;
    let all = fingerprints(&export);
    assert_eq!(all.len(), 3);
    assert_ne!(all[2], all[0]);

    // A replay shows only what was recorded, and needs no secret.
    let replay = p.run(&["replay", "last"]).ok();
    assert_absent(
        "another-secret-value",
        "the replay",
        replay.stderr.as_bytes(),
    );
    let replay = p
        .run(&["replay", &json_run_id(&json)])
        .ok()
        .stderr_has("[REDACTED]");
    assert_never_leaks(&p, SECRET, &[&replay]);
}

fn json_run_id(out: &Out) -> String {
    out.json()["run_id"].as_str().expect("run_id").to_string()
}

#[test]
fn streamed_output_never_leaks_across_chunks() {
    // The child writes the secret in two pieces with a pause between them, so the pieces reach
    // Stagecraft as separate chunks.
    let p = Project::new().file(
        "stream.luau",
        r#"
local token = require("stagecraft/secrets").get("TOKEN")
local r = require("stagecraft/exec").run({ "sh", "-c", [[
printf 'before '; printf %s "${S%????}"; sleep 0.2; printf %s "${S#"${S%????}"}"; printf ' after\n'
printf 'err ' >&2; printf %s "${S%??????????}" >&2; sleep 0.2; printf '%s\n' "${S#"${S%??????????}"}" >&2
B=$(printf %s "$S" | base64 -w0)
printf 'b64 %s' "${B%????????????????}"; sleep 0.2; printf '%s\n' "${B#"${B%????????????????}"}"
H=$(printf %s "$S" | od -An -tx1 -v | tr -d ' \n')
printf 'hex %s' "${H%?????????????????????????}"; sleep 0.2; printf '%s\n' "${H#"${H%?????????????????????????}"}"
]] }, { env = { S = token }, stream = true })
print("captured", r.stdout)
"#,
    );
    let out = p
        .cmd(&[
            "run",
            "stream.luau",
            "--allow",
            "secrets:TOKEN",
            "--allow",
            "exec:sh",
        ])
        .env("TOKEN", SECRET)
        .output()
        .ok()
        .stdout_is(
            "before [REDACTED] after\n\
             b64 [REDACTED]\n\
             hex [REDACTED]\n\
             captured\tbefore [REDACTED] after\n\
             b64 [REDACTED]\n\
             hex [REDACTED]\n\n",
        )
        .stderr_has("err [REDACTED]\n");
    let export = assert_never_leaks(&p, SECRET, &[&out]);
    assert_ledger_names(&export, "TOKEN");
}

#[test]
fn error_text_never_leaks() {
    let p = Project::new().file(
        "fail.luau",
        r#"
local token = require("stagecraft/secrets").get("TOKEN")
local fs = require("stagecraft/fs")
local task = require("stagecraft/task")
local r = require("stagecraft/exec").run({ "sh", "-c", 'printf %s "$S"' }, { env = { S = token } })
local value = r.stdout
-- A primitive's error message holding the value (recorded as the call's error).
local ok, err = pcall(fs.read, value)
print("read", ok, err.kind, err.message)
-- A task failing with it.
ok, err = pcall(task.parallel, { function() error("inner " .. value) end })
print("task", ok, err)
error("deploy failed: " .. value)
"#,
    );
    let out = p
        .cmd(&[
            "run",
            "fail.luau",
            "--allow",
            "secrets:TOKEN",
            "--allow",
            "exec:sh",
        ])
        .env("TOKEN", SECRET)
        .output()
        .code(1)
        .stdout_has("read\tfalse\tnot_found\tfs.read: [REDACTED]: ")
        .stdout_has("task\tfalse\ttask main/1.1 failed: fail.luau:11: inner [REDACTED]\n")
        .stderr_has("error: fail.luau:13: deploy failed: [REDACTED]\n");
    let export = assert_never_leaks(&p, SECRET, &[&out]);
    assert!(
        export.contains("deploy failed: [REDACTED]"),
        "run.end error:\n{export}"
    );
    let show = p.run(&["ledger", "show", "last"]).ok();
    assert!(
        show.stdout
            .contains("error     fail.luau:13: deploy failed: [REDACTED]")
    );
}

#[test]
fn encoding_a_handle_is_refused() {
    let p = Project::new().file(
        "encode.luau",
        r#"
local token = require("stagecraft/secrets").get("TOKEN")
local json = require("stagecraft/json")
local yaml = require("stagecraft/yaml")
print(pcall(json.encode, { nested = { token = token } }))
print(pcall(yaml.encode, { token }))
print(json.encode({ token = token }))
"#,
    );
    let out = p
        .cmd(&["run", "encode.luau", "--allow", "secrets:TOKEN"])
        .env("TOKEN", SECRET)
        .output()
        .code(1)
        .stdout_is(
            "false\tjson.encode: .nested.token is a secret handle, which cannot be encoded\n\
             false\tyaml.encode: [1] is a secret handle, which cannot be encoded\n",
        )
        .stderr_has("error: encode.luau:7: json.encode: .token is a secret handle, which cannot be encoded\n");
    assert_never_leaks(&p, SECRET, &[&out]);
}

#[test]
fn handle_is_opaque() {
    let p = Project::new().file(
        "handle.luau",
        r#"
local token = require("stagecraft/secrets").get("TOKEN")
print(tostring(token), #tostring(token), type(token), token.name)
for _, f in ipairs({
  function() return "Bearer " .. token end,
  function() return token .. "!" end,
  function() return 1 .. token end,
}) do
  local ok, err = pcall(f)
  print(ok, err.kind, err.message)
end
local header = "Authorization: Bearer " .. token
"#,
    );
    let refusal = "cannot concatenate secret TOKEN: its value never enters the script; pass the \
                   handle itself to a primitive (e.g. exec env)";
    let out = p
        .cmd(&["run", "handle.luau", "--allow", "secrets:TOKEN"])
        .env("TOKEN", SECRET)
        .output()
        .code(1)
        .stdout_is(&format!(
            "[REDACTED]\t10\tuserdata\tTOKEN\n\
             false\tinvalid_argument\t{refusal}\n\
             false\tinvalid_argument\t{refusal}\n\
             false\tinvalid_argument\t{refusal}\n"
        ))
        .stderr_has(&format!("error: handle.luau:12: {refusal}\n"));
    assert_never_leaks(&p, SECRET, &[&out]);
}

#[test]
fn too_short_secret_is_refused() {
    let p = Project::new().file(
        "short.luau",
        r#"
local secrets = require("stagecraft/secrets")
local ok, err = pcall(secrets.get, "PADDED")
print(ok, err.kind, err.message)
secrets.get("SHORT")
"#,
    );
    p.cmd(&["run", "short.luau", "--allow", "secrets"])
        .env("SHORT", "abc12")
        .env("PADDED", "   abc   ")
        .output()
        .code(1)
        .stdout_is(
            "false\tinvalid_argument\tsecrets.get: secret PADDED is shorter than 6 characters and could \
             not be redacted reliably\n",
        )
        .stderr_has(
            "error: short.luau:5: secrets.get: secret SHORT is shorter than 6 characters and \
             could not be redacted reliably\n",
        )
        .lacks("abc12");
}

#[test]
fn missing_secret_names_the_environment_and_dotenv() {
    let p = Project::new()
        .file(".env", "OTHER=some-other-value\n")
        .file(
            "missing.luau",
            "require(\"stagecraft/secrets\").get(\"DEPLOY_TOKEN\")\n",
        );
    p.run(&["run", "missing.luau", "--allow", "secrets:DEPLOY_TOKEN"])
        .code(1)
        .stderr_has(
            "error: missing.luau:1: secrets.get: secret DEPLOY_TOKEN is not set in the \
             environment or in the project's .env\n",
        )
        .stderr_has("hint: export DEPLOY_TOKEN=... or add it to the project's .env\n");
    // Without the capability the value is never looked up.
    p.cmd(&["run", "missing.luau", "--allow", "secrets:OTHER"])
        .env("DEPLOY_TOKEN", SECRET)
        .output()
        .code(3)
        .stderr_has("permission denied: secrets.get needs capability secrets:DEPLOY_TOKEN");
}

#[test]
fn secret_from_dotenv_never_leaks() {
    let p = Project::new()
        .file(
            ".env",
            "# deployment settings\nexport API_TOKEN='sk-dotenv-Zq9/+w=='\nOTHER=x\n",
        )
        .file(
            "dotenv.luau",
            r#"
local token = require("stagecraft/secrets").get("API_TOKEN")
local r = require("stagecraft/exec").run({ "sh", "-c", 'printf "%s\n" "$T"; printf %s "$T" | base64 -w0' }, { env = { T = token } })
print(r.stdout)
"#,
        );
    let out = p
        .run(&[
            "run",
            "dotenv.luau",
            "--allow",
            "secrets:API_TOKEN",
            "--allow",
            "exec:sh",
        ])
        .ok()
        .stdout_is("[REDACTED]\n[REDACTED]\n");
    let export = assert_never_leaks(&p, "sk-dotenv-Zq9/+w==", &[&out]);
    assert_ledger_names(&export, "API_TOKEN");
}

#[test]
fn multi_line_secret_from_dotenv_is_scrubbed_line_by_line() {
    let p = Project::new()
        .file(".env", &format!("NAME=app\nDEPLOY_KEY=\"{PEM}\"\n"))
        .file(
            "pem.luau",
            r#"
local key = require("stagecraft/secrets").get("DEPLOY_KEY")
local json = require("stagecraft/json")
local r = require("stagecraft/exec").run({ "sh", "-c", [[
printf '%s\n' "$K"
printf '%s\n' "$K" | sed -n 2p
printf '%s\n' "$K" | sed -n 3p | tr -d '\n' | base64 -w0; echo
printf '%s\n' "$K" | sed -n 3p | tr -d '\n' | od -An -tx1 -v | tr -d ' \n'; echo
printf %s "$K" | tr -d '\n'; echo
]] }, { env = { K = key } })
print(r.stdout)
print(json.encode({ key = r.stdout }))
return r.stdout
"#,
        );
    let out = p
        .run(&[
            "run",
            "pem.luau",
            "--allow",
            "secrets:DEPLOY_KEY",
            "--allow",
            "exec:sh",
            "--json",
        ])
        .ok();
    assert!(out.stderr.contains("[REDACTED]"), "{}", out.stderr);
    // Lines joined without their newlines: each line is redacted on its own.
    assert_eq!(
        out.json()["result"],
        "[REDACTED]\n[REDACTED]\n[REDACTED]\n[REDACTED]\n[REDACTED][REDACTED][REDACTED][REDACTED]\n"
    );
    let export = assert_never_leaks(&p, PEM, &[&out]);
    assert_ledger_names(&export, "DEPLOY_KEY");
}

/// A secret longer than 57 bytes, so that `base64` wraps its encoding over two lines.
const LONG: &str = "long-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLM";

#[test]
fn line_wrapped_base64_of_a_long_secret_never_leaks() {
    let p = Project::new().file(
        "wrapped.luau",
        r#"
local token = require("stagecraft/secrets").get("TOKEN")
local r = require("stagecraft/exec").run({ "sh", "-c", 'printf %s "$S" | base64' }, { env = { S = token } })
print(r.stdout)
"#,
    );
    let out = p
        .cmd(&[
            "run",
            "wrapped.luau",
            "--allow",
            "secrets:TOKEN",
            "--allow",
            "exec:sh",
        ])
        .env("TOKEN", LONG)
        .output()
        .ok();
    let joined = out.stdout.replace('\n', "");
    assert!(
        !joined.contains(&STANDARD.encode(LONG)),
        "wrapped base64 leaked:\n{}",
        out.stdout
    );
}

#[test]
fn output_before_the_secret_is_loaded_never_leaks() {
    let p = Project::new()
        .file(".env", &format!("API_TOKEN='{LONG}'\n"))
        .file(
            "early.luau",
            r#"
local r = require("stagecraft/exec").run({ "sh", "-c", "cat .env" })
require("stagecraft/secrets").get("API_TOKEN")
print(r.stdout)
"#,
        );
    let out = p
        .run(&[
            "run",
            "early.luau",
            "--allow",
            "secrets:API_TOKEN",
            "--allow",
            "exec:sh",
        ])
        .ok();
    assert_never_leaks(&p, LONG, &[&out]);
}

#[test]
fn a_secret_never_enters_the_script_through_a_childs_output() {
    let p = Project::new().file(
        "pieces.luau",
        r#"local tok = require("stagecraft/secrets").get("TOKEN")
local r = require("stagecraft/exec").run({ "sh", "-c", 'printf %s "$T"' }, { env = { T = tok } })
print(#r.stdout, r.stdout:sub(1, 4), r.stdout:sub(5))
"#,
    );
    let live = p
        .cmd(&[
            "run",
            "pieces.luau",
            "--allow",
            "secrets:TOKEN",
            "--allow",
            "exec:sh",
        ])
        .env("TOKEN", SECRET)
        .output()
        .ok()
        .stdout_is("10\t[RED\tACTED]\n");
    assert_never_leaks(&p, SECRET, &[&live]);
    // Replay sees exactly what the live run saw.
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("10\t[RED\tACTED]\n");
}
