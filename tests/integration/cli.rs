//! Tests: the command line itself (help, usage errors, exit codes, JSON output).

use crate::harness::Project;

#[test]
fn help_lists_commands_and_exit_codes() {
    let p = Project::new();
    p.run(&["--help"])
        .ok()
        .stdout_has("run")
        .stdout_has("replay")
        .stdout_has("ledger")
        .stdout_has("Exit codes:");
    p.run(&["run", "--help"])
        .ok()
        .stdout_has("--allow")
        .stdout_has("--cpu-limit")
        .stdout_has("--memory-limit")
        .stdout_has("--timeout");
}

#[test]
fn usage_errors_exit_2() {
    let p = Project::new();
    p.run(&["run"]).code(2);
    p.run(&["run", "missing.luau"])
        .code(2)
        .stderr_has("cannot read script missing.luau");
    p.script("return 1", &["--allow", "exce:curl"])
        .code(2)
        .stderr_has("did you mean 'exec'");
}

#[test]
fn args_reach_the_script() {
    let p = Project::new();
    p.script(
        "local a = ... print(a[1], a[2], a.env, #a)",
        &["one", "two", "env=prod"],
    )
    .ok()
    .stdout_is("one\ttwo\tprod\t2\n");
}

#[test]
fn json_outcome() {
    let p = Project::new();
    let out = p
        .script("print('to stderr') return { n = 42 }", &["--json"])
        .ok();
    let v = out.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["result"]["n"], 42);
    assert!(out.stderr.contains("to stderr"));
}

#[test]
fn script_error_names_file_and_line_with_traceback_and_hint() {
    let p = Project::new();
    p.script(
        "local function boom()\n  error('kaput')\nend\nboom()\n",
        &[],
    )
    .code(1)
    .stderr_has("error: script.luau:2: kaput")
    .stderr_has("stack traceback:")
    .stderr_has("script.luau:4")
    .stderr_has("hint:");
}

#[test]
fn syntax_error_names_position() {
    let p = Project::new();
    p.script("local x = = 1\n", &[])
        .code(1)
        .stderr_has("script.luau:1");
}

#[test]
fn config_errors_name_file_and_line() {
    let p = Project::new();
    p.write("stagecraft.yml", "name: x\npermisions:\n  - exec\n");
    p.script("return 1", &[])
        .code(2)
        .stderr_has("stagecraft.yml")
        .stderr_has("permisions");
}

#[test]
fn limit_flags_are_checked() {
    let p = Project::new();
    p.script("return 1", &["--cpu-limit", "-1"])
        .code(2)
        .stderr_has("--cpu-limit must be a non-negative number");
    p.script("return 1", &["--memory-limit", "0"])
        .code(2)
        .stderr_has("--memory-limit must be at least 1 MB");
    p.script("return 1", &["--timeout", "0"])
        .code(2)
        .stderr_has("--timeout must be a positive number");
    p.script("return 1", &["--cpu-limit", "0"]).ok();
}

#[test]
fn exec_grant_by_absolute_path() {
    let p = Project::new();
    let sh = std::fs::canonicalize("/bin/sh").expect("sh");
    let grant = format!("exec:{}", sh.display());
    p.script(
        "print(require('stagecraft/exec').run({'/bin/sh', '-c', 'echo ok'}).stdout)",
        &["--allow", &grant],
    )
    .ok()
    .stdout_is("ok\n\n");
    p.script(
        "require('stagecraft/exec').run({'true'})",
        &["--allow", &grant],
    )
    .code(3)
    .stderr_has("needs capability exec:true");
}

#[test]
fn sigterm_ends_a_computing_script_as_interrupted() {
    use std::io::BufRead;
    let p = Project::new().file("spin.luau", "print('spinning')\nwhile true do end\n");
    let mut cmd = p.cmd(&["run", "spin.luau", "--cpu-limit", "0"]).cmd;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first line");
    assert_eq!(line, "spinning\n");
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    let runs = p.run(&["ledger", "ls", "--json"]).ok().json();
    assert_eq!(runs[0]["status"], "interrupted");
}

#[test]
fn stagecraft_trace_shows_engine_diagnostics() {
    let p = Project::new();
    p.write("script.luau", "print(os.time() > 0)");
    p.cmd(&["run", "script.luau"])
        .env("STAGECRAFT_TRACE", "debug")
        .output()
        .ok()
        .stdout_is("true\n")
        .stderr_has("run started")
        .stderr_has("ledger batch committed")
        .stderr_has("run ended");
    // Off by default.
    p.run(&["run", "script.luau"])
        .ok()
        .stderr_lacks("ledger batch committed");
}

#[test]
fn modules_lists_every_requirable_module() {
    let p = Project::new();
    let out = p.run(&["modules"]).ok();
    for m in [
        "exec", "fs", "secrets", "task", "json", "yaml", "log", "http", "ledger", "test",
    ] {
        assert!(
            out.stdout.contains(&format!("stagecraft/{m} ")),
            "{m} missing:\n{}",
            out.stdout
        );
    }
    let v = p.run(&["modules", "--json"]).ok().json();
    let http = v
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["module"] == "stagecraft/http")
        .expect("http");
    assert_eq!(http["stability"], "experimental");
    // Every listed module can actually be required.
    let names: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["module"].as_str().expect("name").to_string())
        .collect();
    let src: String = names
        .iter()
        .map(|n| format!("assert(require('{n}'))\n"))
        .collect();
    p.script(&src, &[]).ok();
}
