//! Tests: stagecraft/ledger, stagecraft/log, recorded os/math functions, require rules.

use crate::harness::Project;

#[test]
fn ledger_module_queries_past_runs() {
    let p = Project::new();
    p.write("ok.luau", "return 1");
    p.write("bad.luau", "error('x')");
    p.run(&["run", "ok.luau"]).ok();
    p.run(&["run", "bad.luau"]).code(1);
    let src = r#"local ledger = require("stagecraft/ledger")
local last_ok = ledger.last({ script = "ok.luau", status = "ok" })
print(last_ok.script, last_ok.status, last_ok.exit_code)
local failed = ledger.last({ status = "failed" })
print(failed.script)
print(#ledger.runs({ limit = 10 }))
print(ledger.last({ script = "nope.luau" }))
local one = ledger.run(last_ok.id)
print(one.id == last_ok.id)
"#;
    p.script(src, &[])
        .ok()
        .stdout_is("ok.luau\tok\t0\nbad.luau\n2\nnil\ntrue\n");
    // The answers are recorded: replay gives them back even after more runs.
    p.run(&["run", "ok.luau"]).ok();
    p.run(&["replay", "last"]).ok();
}

#[test]
fn log_levels_go_to_stderr() {
    let p = Project::new();
    let out = p.script("local log = require('stagecraft/log') log.debug('d') log.info('i', 1) log.warn('w') log.error('e')", &[]).ok();
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(" INFO i 1\n")
            && out.stderr.contains(" WARN w\n")
            && out.stderr.contains("ERROR e\n")
    );
    assert!(!out.stderr.contains("DEBUG"));
    p.cmd(&["run", "script.luau"])
        .env("STAGECRAFT_LOG", "debug")
        .output()
        .ok()
        .stderr_has("DEBUG d");
}

#[test]
fn time_and_random_are_recorded_and_replayed() {
    let p = Project::new();
    let src = "print(os.time(), os.date('!%Y'), math.random(1, 1000000), math.random() < 1, os.clock() >= 0)";
    let live = p.script(src, &[]).ok();
    let replay = p.run(&["replay", "last"]).ok();
    // Replay prints script output on stderr (stdout is kept for reports).
    assert_eq!(replay.stderr.lines().next(), live.stdout.lines().next());
    p.script("math.random(5, 1)", &[])
        .code(1)
        .stderr_has("interval is empty");
}

#[test]
fn require_rules() {
    let p = Project::new();
    p.write(
        "lib/util.luau",
        "local M = {} function M.twice(x) return x * 2 end return M",
    );
    p.write("lib/uses.luau", "return require('./util').twice(21)");
    p.script(
        "print(require('./lib/uses'), require('./lib/util').twice(2))",
        &[],
    )
    .ok()
    .stdout_is("42\t4\n");
    p.script("require('stagecraft/exce')", &[])
        .code(1)
        .stderr_has("did you mean stagecraft/exec?");
    p.script("require('./missing')", &[])
        .code(1)
        .stderr_has("no module './missing'");
    p.write("a.luau", "return require('./b')");
    p.write("b.luau", "return require('./a')");
    p.script("require('./a')", &[])
        .code(1)
        .stderr_has("cyclic require");
}

#[test]
fn structured_errors_after_pcall() {
    let p = Project::new();
    let src = r#"local ok, err = pcall(require("stagecraft/fs").write, "x.txt", "data")
print(ok, err.kind, err.message, err.hint ~= nil, tostring(err) == err.message)
"#;
    p.script(src, &[])
        .ok()
        .stdout_is("false\tpermission_denied\tpermission denied: fs.write needs capability fs-write (grant with --allow fs-write or in stagecraft.yml)\ttrue\ttrue\n");
}

#[test]
fn project_permissions_come_from_stagecraft_yml() {
    let p = Project::new();
    p.write(
        "stagecraft.yml",
        "name: t\npermissions:\n  - fs-write\n  - exec:sh\n",
    );
    p.script("require('stagecraft/fs').write('out.txt', 'hi') print(require('stagecraft/exec').run({'sh','-c','cat out.txt'}).stdout)", &[])
        .ok()
        .stdout_is("hi\n");
    p.write("stagecraft.yml", "permissions:\n  - exec:sh\n  - bogus\n");
    p.script("return 1", &[])
        .code(2)
        .stderr_has("unknown capability 'bogus'");
}

/// Whether a process is gone (or a zombie waiting for init), polling up to a deadline.
fn process_ends(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => std::thread::yield_now(),
        }
    }
    false
}

#[test]
fn exec_timeout_kills_grandchildren_too() {
    let p = Project::new();
    let src = r#"local exec = require("stagecraft/exec")
local ok, err = pcall(exec.run, { "sh", "-c", "sleep 43 & echo $!; wait" }, { timeout = 0.5, stream = true })
print(ok, err.kind)
"#;
    let out = p.script(src, &["--allow", "exec:sh"]).ok();
    let pid: u32 = out
        .stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    assert!(out.stdout.contains("false\ttimeout"), "{out:?}");
    assert!(process_ends(pid), "grandchild {pid} survived the timeout");
}

#[test]
fn module_tables_are_frozen_deeply() {
    let p = Project::new();
    p.write("lib/shared.luau", "local count = 0\nreturn { nested = { n = 1 }, bump = function() count += 1 return count end }");
    p.script(
        "local s = require('./lib/shared') print(s.bump(), s.bump()) s.nested.n = 99",
        &[],
    )
    .code(1)
    .stdout_is("1\t2\n")
    .stderr_has("attempt to modify a readonly table");
}

#[test]
fn ledger_run_last_is_never_the_asking_run() {
    let p = Project::new();
    p.write("first.luau", "return 1");
    p.run(&["run", "first.luau"]).ok();
    // The asking run's own start is committed (every 100 ms) before it asks.
    let src = r#"require("stagecraft/exec").run({ "sleep", "0.3" })
print(require("stagecraft/ledger").run("last").script)
"#;
    p.script(src, &["--allow", "exec:sleep"])
        .ok()
        .stdout_is("first.luau\n");
}

#[test]
fn ledger_listing_into_a_closed_pipe_ends_quietly() {
    let p = Project::new();
    for _ in 0..3 {
        p.script("return 1", &[]).ok();
    }
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = p
        .cmd(&["ledger", "ls"])
        .cmd
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run ledger ls");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}

#[test]
fn ledger_entries_lists_a_runs_calls() {
    let p = Project::new();
    p.write("first.luau", "local t = os.time() return t");
    p.run(&["run", "first.luau"]).ok();
    let src = r#"local ledger = require("stagecraft/ledger")
local run = ledger.last({ script = "first.luau" })
local entries = ledger.entries(run.id)
print(#entries, entries[1].op, entries[1].kind, entries[1].task)
"#;
    p.script(src, &[])
        .ok()
        .stdout_is("1\tos.time\tcall\tmain\n");
}

#[test]
fn installed_recipe_packages_can_be_required() {
    let p = Project::new();
    p.write(
        ".stagecraft/recipes/greeter/init.luau",
        "return { hello = function(n) return 'hi ' .. n end }",
    );
    p.write(".stagecraft/recipes/greeter/extra.luau", "return 42");
    p.script(
        "print(require('greeter').hello('x'), require('greeter/extra'))",
        &[],
    )
    .ok()
    .stdout_is("hi x\t42\n");
    p.script("require('nothere')", &[])
        .code(1)
        .stderr_has("no module 'nothere'");
}

#[test]
fn exec_reports_the_signal_that_killed_the_child() {
    let p = Project::new();
    p.script("local r = require('stagecraft/exec').run({'sh', '-c', 'kill -TERM $$'}) print(r.code, r.signal)", &["--allow", "exec:sh"])
        .ok()
        .stdout_is("143\t15\n");
}
