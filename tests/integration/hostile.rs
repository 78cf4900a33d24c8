//! Tests: hostile scripts. Each one tries to escape the sandbox, bypass a capability, leave the
//! project directory, exhaust a limit or tamper with modules, and must end with the documented
//! exit code and a clear message (never a hang, a crash or a silent success).

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use crate::harness::{Out, Project};

/// Small limits keep the bombs fast.
const LIMITS: &[&str] = &["--cpu-limit", "1", "--memory-limit", "64"];

/// A run that has to stop on a limit must be over within this much wall time (generous: a 1 s
/// CPU budget takes several seconds of wall time on a loaded machine; a hang takes forever).
const PROMPT: Duration = Duration::from_secs(20);

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = LIMITS.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Run a script and assert it finished within `PROMPT`.
fn timed(p: &Project, src: &str, flags: &[&str]) -> Out {
    let t0 = Instant::now();
    let out = p.script(src, flags);
    let took = t0.elapsed();
    assert!(
        took < PROMPT,
        "the run took {took:?}\n--- exit code: {}\n--- stderr:\n{}",
        out.code,
        out.stderr
    );
    out
}

/// A directory outside the project (removed when dropped).
fn outside() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sc-outside-")
        .tempdir()
        .expect("outside dir")
}

fn canonical_root(p: &Project) -> std::path::PathBuf {
    p.root().canonicalize().expect("canonical project root")
}

// ---------------------------------------------------------------------------------------------
// Escapes: no ambient authority reachable from Luau.

#[test]
fn escape_io_and_os_have_no_authority() {
    let p = Project::new();
    let src = r#"local names = {}
for _, n in ipairs({ "execute", "getenv", "exit", "remove", "rename", "tmpname" }) do
  table.insert(names, n .. "=" .. type(os[n]))
end
print(table.concat(names, " "))
print(type(io), type(os.time), type(os.clock))
os.execute("touch pwned")
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("execute=nil getenv=nil exit=nil remove=nil rename=nil tmpname=nil\nnil\tfunction\tfunction\n")
        .stderr_has("script.luau:7: attempt to call a nil value");
    assert!(!p.path("pwned").exists());
}

#[test]
fn escape_debug_library_is_reduced_to_traceback_and_info() {
    let p = Project::new();
    let src = r#"local names = {}
for k in pairs(debug) do table.insert(names, k) end
table.sort(names)
print(table.concat(names, ","))
print(debug.getregistry, debug.getlocal, debug.sethook, debug.getupvalue, debug.setupvalue)
debug.sethook(function() end, "", 1)
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("info,traceback\nnil\tnil\tnil\tnil\tnil\n")
        .stderr_has("script.luau:6: attempt to call a nil value");
}

#[test]
fn escape_no_code_loading_from_strings_or_files() {
    let p = Project::new();
    p.write("payload.luau", "print('payload ran')");
    let src = r#"print(string.dump, getfenv, setfenv, loadstring, load, dofile, loadfile)
loadstring("print('payload ran')")()
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("nil\tnil\tnil\tnil\tnil\tnil\tnil\n")
        .stderr_has("script.luau:2: attempt to call a nil value")
        .lacks("payload ran");
}

#[test]
fn escape_require_absolute_path() {
    let p = Project::new();
    p.script("return require('/etc/passwd')", &[])
        .code(1)
        .stderr_has("require: absolute paths are not allowed ('/etc/passwd')")
        .lacks("root:");
}

#[test]
fn escape_require_parent_traversal() {
    let p = Project::new();
    p.script("return require('../../etc/passwd')", &[])
        .code(3)
        .stderr_has("require: '../../etc/passwd' leaves the project directory")
        .lacks("root:");
    p.write("lib/m.luau", "return require('../../../etc/passwd')");
    p.script("return require('./lib/m')", &[])
        .code(3)
        .stderr_has("leaves the project directory");
}

#[test]
fn escape_require_symlink_pointing_outside() {
    let p = Project::new();
    let out = outside();
    std::fs::write(
        out.path().join("evil.luau"),
        "print('outside code ran') return 1",
    )
    .expect("write outside module");
    symlink(out.path().join("evil.luau"), p.path("evil.luau")).expect("symlink");
    symlink(out.path(), p.path("vendor")).expect("symlink dir");
    p.script("return require('./evil')", &[])
        .code(3)
        .stderr_has("permission denied: require: './evil' resolves to ")
        .stderr_has("outside the project directory")
        .lacks("outside code ran");
    p.script("return require('./vendor/evil')", &[])
        .code(3)
        .stderr_has("outside the project directory")
        .lacks("outside code ran");
}

#[test]
fn escape_require_cannot_read_dotenv_or_the_ledger() {
    let p = Project::new();
    p.write(".env", "API_TOKEN=\"tok-5up3r-s3cr3t\"\n");
    symlink(".env", p.path("config.luau")).expect("symlink to .env");
    p.script("require('./.env') print(API_TOKEN)", &[])
        .code(3)
        .stderr_has("permission denied: require: './.env' is not a module file")
        .lacks("tok-5up3r-s3cr3t");
    // Through a recipe-style name that climbs back to the root, and through a symlink.
    p.script("require('x/../../../.env') print(API_TOKEN)", &[])
        .code(3)
        .lacks("tok-5up3r-s3cr3t");
    p.script("require('./config') print(API_TOKEN)", &[])
        .code(3)
        .stderr_has("resolves to .env")
        .lacks("tok-5up3r-s3cr3t");
    p.script("require('./.stagecraft/ledger.db')", &[])
        .code(3)
        .stderr_has("is not a module file");
    // Nothing of it reached the ledger either (module sources are recorded there).
    p.run(&["ledger", "export"]).ok().lacks("5up3r");
}

#[test]
fn escape_string_metatable_and_newproxy_cannot_reach_or_change_globals() {
    let p = Project::new();
    let src = r#"local mt = getmetatable("")
print(mt.__index == string)
print(pcall(function() mt.__index = { rep = function() return "hijacked" end } end))
print(pcall(rawset, mt, "__index", {}))
print(pcall(setmetatable, string, { __index = function() return "hijacked" end }))
local p = newproxy(true)
getmetatable(p).__index = function(_, k) return "proxy:" .. k end
print(p.io, rawequal(getmetatable(p).__index, string))
print(("ab"):rep(2), ("x"):upper())
mt.__index.rep = nil
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is(
            "true\n\
             false\tscript.luau:3: attempt to modify a readonly table\n\
             false\tattempt to modify a readonly table\n\
             false\tattempt to modify a readonly table\n\
             proxy:io\tfalse\n\
             abab\tX\n",
        )
        .stderr_has("script.luau:10: attempt to modify a readonly table");
}

#[test]
fn escape_globals_do_not_leak_between_script_and_modules() {
    let p = Project::new();
    p.write(
        "lib/m.luau",
        r#"module_global = "from module"
return {
  probe = function()
    return type(leaked), tostring(42), type(pcall), type(require)
  end,
}"#,
    );
    let src = r#"leaked = "secret"
tostring = function() return "hijacked" end
pcall = nil
require = require
local m = require("./lib/m")
print(m.probe())
print(module_global)
print(type(pcall))
_G.leaked = "via _G"
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("nil\t42\tfunction\tfunction\nnil\nfunction\n")
        .stderr_has("script.luau:9: attempt to modify a readonly table");
}

#[test]
fn escape_rawset_on_frozen_library_tables() {
    let p = Project::new();
    let src = r#"for _, t in ipairs({ string, table, math, os, coroutine, debug, _G }) do
  print(pcall(rawset, t, "format", print))
end
print(string.format("%d", 7))
rawset(math, "pi", 3)
"#;
    let line = "false\tattempt to modify a readonly table\n";
    p.script(src, &[])
        .code(1)
        .stdout_is(&format!("{}7\n", line.repeat(7)))
        .stderr_has("attempt to modify a readonly table");
}

#[test]
fn escape_setmetatable_on_a_frozen_module_table() {
    let p = Project::new();
    let src = r#"local fs = require("stagecraft/fs")
print(pcall(setmetatable, fs, { __index = function() return print end }))
print(getmetatable(fs))
setmetatable(require("stagecraft/exec"), {})
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("false\tattempt to modify a readonly table\nnil\n")
        .stderr_has("error: script.luau:4: attempt to modify a readonly table\nstack traceback:\n  script.luau:4");
}

#[test]
fn escape_debug_info_does_not_hand_out_the_raw_pcall() {
    // The unwrapped pcall sits on the stack under every pcall; with it a memory-limit error
    // could be caught without stopping the run.
    let p = Project::new();
    let src = r#"local raw
pcall(function() raw = debug.info(2, "f") end)
print(raw)
local catch = raw or pcall
local ok = catch(string.rep, "x", 1e9)
print("survived", ok)
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stdout_is("nil\n")
        .stderr_has("memory limit exceeded: the script needed more than 64 MB")
        .lacks("survived");
    // Lua frames are still inspectable.
    p.script(
        "local function f() return debug.info(1, 'sln') end print(f())",
        &[],
    )
    .ok()
    .stdout_is("script.luau\t1\tf\n");
}

// ---------------------------------------------------------------------------------------------
// Capability bypasses.

#[test]
fn cap_exec_copy_of_granted_program_elsewhere_is_denied() {
    let p = Project::new();
    let dir = outside();
    let fake = dir.path().join("sh");
    std::fs::copy("/bin/sh", &fake).expect("copy sh");
    let fake = fake.canonicalize().expect("canonical fake sh");
    let src = format!(
        r#"print(require("stagecraft/exec").run({{ "{}", "-c", "echo pwned" }}).stdout)"#,
        fake.display()
    );
    p.script(&src, &["--allow", "exec:sh"])
        .code(3)
        .stderr_has(&format!(
            "permission denied: exec.run needs capability exec:{}",
            fake.display()
        ))
        .lacks("pwned");
}

#[test]
fn cap_exec_project_local_lookalike_is_denied() {
    let p = Project::new();
    std::fs::copy("/bin/sh", p.path("sh")).expect("copy sh");
    let src = r#"print(require("stagecraft/exec").run({ "./sh", "-c", "echo pwned" }).stdout)"#;
    p.script(src, &["--allow", "exec:sh"])
        .code(3)
        .stderr_has(&format!(
            "exec.run needs capability exec:{}",
            canonical_root(&p).join("sh").display()
        ))
        .lacks("pwned");
}

#[test]
fn cap_exec_env_path_does_not_redirect_program_resolution() {
    let p = Project::new();
    let dir = outside();
    for name in ["sh", "only-here"] {
        let f = dir.path().join(name);
        std::fs::write(&f, "#!/bin/sh\necho FAKE\n").expect("write fake");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let src = format!(
        r#"local exec = require("stagecraft/exec")
local r = exec.run({{ "sh", "-c", "echo real" }}, {{ env = {{ PATH = "{dir}" }} }})
print(r.stdout == "real\n", r.stdout)
exec.run({{ "only-here" }}, {{ env = {{ PATH = "{dir}" }} }})
"#,
        dir = dir.path().display()
    );
    p.script(&src, &["--allow", "exec:sh"])
        .code(1)
        .stdout_is("true\treal\n\n")
        .stderr_has("exec.run: program 'only-here' not found")
        .lacks("FAKE");
}

#[test]
fn cap_http_to_a_host_not_granted() {
    let p = Project::new();
    p.script(
        r#"require("stagecraft/http").get("http://127.0.0.1:9/steal")"#,
        &["--allow", "net:example.com"],
    )
    .code(3)
    .stderr_has("permission denied: http.get needs capability net:127.0.0.1");
    p.script(
        r#"require("stagecraft/http").post("http://example.com.evil.test/", { body = "x" })"#,
        &["--allow", "net:*.example.com"],
    )
    .code(3)
    .stderr_has("http.post needs capability net:example.com.evil.test");
}

#[test]
fn cap_secrets_need_their_own_grant() {
    let p = Project::new();
    p.write(
        ".env",
        "ALPHA_TOKEN=alpha-0123456789\nBETA_TOKEN=beta-0123456789\n",
    );
    p.script(
        r#"print(require("stagecraft/secrets").get("ALPHA_TOKEN"))"#,
        &[],
    )
    .code(3)
    .stderr_has("permission denied: secrets.get needs capability secrets:ALPHA_TOKEN")
    .lacks("alpha-0123456789");
    let src = r#"local secrets = require("stagecraft/secrets")
print(secrets.get("ALPHA_TOKEN"))
local ok, err = pcall(secrets.get, "ALPHA")
print(ok, err.kind)
secrets.get("BETA_TOKEN")
"#;
    p.script(src, &["--allow", "secrets:ALPHA_TOKEN"])
        .code(3)
        .stdout_is("[REDACTED]\nfalse\tpermission_denied\n")
        .stderr_has("secrets.get needs capability secrets:BETA_TOKEN")
        .lacks("alpha-0123456789")
        .lacks("beta-0123456789");
}

#[test]
fn cap_fs_write_mkdir_remove_need_fs_write() {
    let p = Project::new();
    p.write("keep.txt", "keep");
    let src = r#"local fs = require("stagecraft/fs")
for _, call in ipairs({
  function() fs.mkdir("newdir") end,
  function() fs.remove("keep.txt") end,
  function() fs.write("keep.txt", "x", { append = true }) end,
}) do
  local ok, err = pcall(call)
  print(ok, err.kind)
end
fs.write("new.txt", "data")
"#;
    p.script(src, &[])
        .code(3)
        .stdout_is("false\tpermission_denied\nfalse\tpermission_denied\nfalse\tpermission_denied\n")
        .stderr_has("permission denied: fs.write needs capability fs-write");
    assert!(!p.path("new.txt").exists() && !p.path("newdir").exists());
    assert_eq!(p.read("keep.txt"), "keep");
}

#[test]
fn cap_denial_is_recorded_in_the_ledger() {
    let p = Project::new();
    p.script(r#"require("stagecraft/fs").write("x.txt", "data")"#, &[])
        .code(3);
    let v = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    assert_eq!(v["run"]["exit_code"], 3, "{v:#}");
    let entries = v["entries"].as_array().expect("entries");
    let denied: Vec<_> = entries.iter().filter(|e| e["op"] == "fs.write").collect();
    assert_eq!(denied.len(), 1, "{v:#}");
    assert_eq!(denied[0]["error"]["kind"], "permission_denied");
    assert_eq!(denied[0]["args"]["path"], "x.txt");
    assert!(denied[0]["result"].is_null());

    // Caught with pcall, the run succeeds but the denial is still on record.
    p.script(
        r#"local ok, err = pcall(require("stagecraft/exec").run, { "sh", "-c", "id" }) print(ok, err.kind)"#,
        &[],
    )
    .ok()
    .stdout_is("false\tpermission_denied\n");
    let v = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    assert_eq!(v["run"]["exit_code"], 0, "{v:#}");
    let e = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["op"] == "exec.run")
        .unwrap_or_else(|| panic!("no exec.run entry: {v:#}"));
    assert_eq!(e["error"]["kind"], "permission_denied");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exec:sh")),
        "{e:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Path escapes.

#[test]
fn path_dotdot_traversal() {
    let p = Project::new();
    for path in [
        "../outside.txt",
        "sub/../../outside.txt",
        "./../../etc/passwd",
    ] {
        p.script(
            &format!(r#"print(require("stagecraft/fs").read("{path}"))"#),
            &["--allow", "fs-write"],
        )
        .code(3)
        .stderr_has(&format!(
            "permission denied: fs.read: '{path}' is outside the project directory"
        ))
        .lacks("root:");
    }
    p.script(
        r#"require("stagecraft/fs").write("../escaped.txt", "x")"#,
        &["--allow", "fs-write"],
    )
    .code(3)
    .stderr_has("'../escaped.txt' is outside the project directory");
    assert!(!p.root().join("../escaped.txt").exists());
}

#[test]
fn path_absolute_outside() {
    let p = Project::new();
    p.script(
        r#"local fs = require("stagecraft/fs") print(pcall(fs.exists, "/etc/passwd")) print(fs.read("/etc/passwd"))"#,
        &[],
    )
    .code(3)
    .stdout_is("false\tpermission denied: fs.exists: '/etc/passwd' is outside the project directory\n")
    .stderr_has("fs.read: '/etc/passwd' is outside the project directory")
    .lacks("root:");
}

#[test]
fn path_symlink_inside_pointing_outside_read() {
    let p = Project::new();
    let out = outside();
    std::fs::write(out.path().join("secret.txt"), "OUTSIDE-SECRET").expect("write");
    symlink(out.path().join("secret.txt"), p.path("link.txt")).expect("symlink");
    symlink(out.path(), p.path("linkdir")).expect("symlink dir");
    for path in ["link.txt", "linkdir/secret.txt", "linkdir"] {
        p.script(
            &format!(r#"print(require("stagecraft/fs").read("{path}"))"#),
            &[],
        )
        .code(3)
        .stderr_has(&format!(
            "fs.read: '{path}' is outside the project directory"
        ))
        .lacks("OUTSIDE-SECRET");
    }
    p.script(r#"print(require("stagecraft/fs").list("linkdir"))"#, &[])
        .code(3)
        .stderr_has("fs.list: 'linkdir' is outside the project directory")
        .lacks("secret.txt");
}

#[test]
fn path_symlink_inside_pointing_outside_write() {
    let p = Project::new();
    let out = outside();
    std::fs::write(out.path().join("target.txt"), "original").expect("write");
    symlink(out.path().join("target.txt"), p.path("link.txt")).expect("symlink");
    symlink(out.path(), p.path("linkdir")).expect("symlink dir");
    let flags = ["--allow", "fs-write"];
    p.script(
        r#"require("stagecraft/fs").write("link.txt", "pwned")"#,
        &flags,
    )
    .code(3)
    .stderr_has("fs.write: 'link.txt' is outside the project directory");
    p.script(
        r#"require("stagecraft/fs").write("linkdir/new.txt", "pwned")"#,
        &flags,
    )
    .code(3)
    .stderr_has("fs.write: 'linkdir/new.txt' is outside the project directory");
    p.script(
        r#"require("stagecraft/fs").remove("linkdir/target.txt")"#,
        &flags,
    )
    .code(3)
    .stderr_has("fs.remove: 'linkdir/target.txt' is outside the project directory");
    p.script(r#"require("stagecraft/fs").mkdir("linkdir/sub")"#, &flags)
        .code(3)
        .stderr_has("fs.mkdir: 'linkdir/sub' is outside the project directory");
    assert_eq!(
        std::fs::read_to_string(out.path().join("target.txt")).expect("read"),
        "original"
    );
    assert!(!out.path().join("new.txt").exists() && !out.path().join("sub").exists());
}

#[test]
fn path_dangling_symlink_write() {
    let p = Project::new();
    let out = outside();
    let target = out.path().join("created-through-link.txt");
    symlink(&target, p.path("dangling.txt")).expect("symlink");
    p.script(
        r#"require("stagecraft/fs").write("dangling.txt", "pwned")"#,
        &["--allow", "fs-write"],
    )
    .code(3)
    .stderr_has("permission denied: fs.write: 'dangling.txt' is a dangling symlink");
    assert!(!target.exists());
}

#[test]
fn path_ledger_and_state_dir_are_never_writable() {
    let p = Project::new();
    p.script("return 1", &[]).ok();
    let flags = ["--allow", "fs-write"];
    for (call, shown) in [
        (
            r#"fs.write(".stagecraft/ledger.db", "x")"#,
            "fs.write: '.stagecraft/ledger.db'",
        ),
        (
            r#"fs.write(".stagecraft/x", "x")"#,
            "fs.write: '.stagecraft/x'",
        ),
        (
            r#"fs.write("./sub/../.stagecraft/ledger.db-wal", "x")"#,
            "fs.write: './sub/../.stagecraft/ledger.db-wal'",
        ),
        (
            r#"fs.mkdir(".stagecraft/recipes/evil")"#,
            "fs.mkdir: '.stagecraft/recipes/evil'",
        ),
        (
            r#"fs.remove(".stagecraft", { recursive = true })"#,
            "fs.remove: '.stagecraft'",
        ),
        (
            r#"print(fs.read(".stagecraft/ledger.db"))"#,
            "fs.read: '.stagecraft/ledger.db'",
        ),
    ] {
        p.script(
            &format!(r#"local fs = require("stagecraft/fs") {call}"#),
            &flags,
        )
        .code(3)
        .stderr_has(&format!(
            "permission denied: {shown} is inside .stagecraft/, which holds the ledger"
        ));
    }
    assert!(!p.path(".stagecraft/x").exists());
    p.run(&["ledger", "verify"]).ok();
}

#[test]
fn path_dotenv_is_unreadable_through_fs() {
    let p = Project::new();
    p.write(".env", "DB_PASSWORD=hunter2-hunter2\n");
    symlink(".env", p.path("innocent.txt")).expect("symlink");
    let abs = format!("{}/.env", canonical_root(&p).display());
    for path in [
        ".env",
        "./.env",
        "sub/../.env",
        abs.as_str(),
        "innocent.txt",
    ] {
        p.script(
            &format!(r#"print(require("stagecraft/fs").read("{path}"))"#),
            &[],
        )
        .code(3)
        .stderr_has(&format!(
            "permission denied: fs.read: '{path}' holds secrets"
        ))
        .lacks("hunter2");
    }
}

#[test]
fn path_remove_of_the_project_root_is_refused() {
    let p = Project::new();
    let abs = canonical_root(&p).display().to_string();
    for path in [".", "./", "sub/..", abs.as_str()] {
        p.script(
            &format!(r#"require("stagecraft/fs").remove("{path}", {{ recursive = true }})"#),
            &["--allow", "fs-write"],
        )
        .code(3)
        .stderr_has("permission denied: fs.remove: refusing to remove the project root");
    }
    assert!(p.path("stagecraft.yml").exists() && p.path("script.luau").exists());
}

#[test]
fn path_exec_cwd_outside_the_project() {
    let p = Project::new();
    for cwd in ["/tmp", "..", ".stagecraft"] {
        let out = p.script(
            &format!(
                r#"print(require("stagecraft/exec").run({{ "sh", "-c", "pwd" }}, {{ cwd = "{cwd}" }}).stdout)"#
            ),
            &["--allow", "exec:sh"],
        );
        out.code(3)
            .stderr_has(&format!("permission denied: exec.run: '{cwd}'"));
    }
}

// ---------------------------------------------------------------------------------------------
// Limit bombs: each stops with exit 4 (or a clear script error) within seconds.

const CPU_MSG: &str = "CPU limit exceeded: the script used more than 1s of CPU time";
const MEM_MSG: &str = "memory limit exceeded: the script needed more than 64 MB";

#[test]
fn limit_infinite_loop() {
    let p = Project::new();
    timed(&p, "while true do end", LIMITS)
        .code(4)
        .stderr_has(CPU_MSG)
        .stderr_has("hint: raise it with --cpu-limit SECONDS")
        .stderr_has("killed");
}

#[test]
fn limit_pcall_and_xpcall_cannot_swallow_the_stop() {
    let p = Project::new();
    timed(
        &p,
        "print(pcall(function() while true do end end)) print('swallowed')",
        LIMITS,
    )
    .code(4)
    .stderr_has(CPU_MSG)
    .lacks("swallowed");
    timed(
        &p,
        "print(xpcall(function() while true do end end, function(e) return 'handled' end)) print('swallowed')",
        LIMITS,
    )
    .code(4)
    .stderr_has(CPU_MSG)
    .lacks("swallowed")
    .lacks("handled");
}

#[test]
fn limit_coroutines_cannot_swallow_the_stop() {
    let p = Project::new();
    let src = r#"local co = coroutine.create(function() while true do end end)
print(coroutine.resume(co))
print("swallowed", coroutine.status(co))
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stderr_has(CPU_MSG)
        .lacks("swallowed");
    let src = r#"local f = coroutine.wrap(function() while true do end end)
print(pcall(f))
print("swallowed")
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stderr_has(CPU_MSG)
        .lacks("swallowed");
}

#[test]
fn limit_catch_and_retry_loop() {
    let p = Project::new();
    let src = r#"local tries = 0
while true do
  local ok, err = pcall(function() while true do end end)
  tries += 1
  print("retry", tries, err)
end
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stderr_has(CPU_MSG)
        .lacks("retry");
}

#[test]
fn limit_pattern_matching_bomb() {
    let p = Project::new();
    timed(
        &p,
        r#"print(pcall(string.find, string.rep("a", 30000), string.rep(".-", 12) .. "b")) print("swallowed")"#,
        LIMITS,
    )
    .code(4)
    .stderr_has(CPU_MSG)
    .lacks("swallowed");
}

#[test]
fn limit_string_rep_huge() {
    let p = Project::new();
    timed(&p, "local s = string.rep('x', 1e9) print(#s)", LIMITS)
        .code(4)
        .stderr_has(&format!("script.luau:1: {MEM_MSG}"))
        .stderr_has("hint: raise it with --memory-limit MB");
    timed(
        &p,
        "print(pcall(string.rep, 'x', 1e9)) print('swallowed')",
        LIMITS,
    )
    .code(4)
    .stderr_has(MEM_MSG)
    .lacks("swallowed");
}

#[test]
fn limit_string_doubling() {
    let p = Project::new();
    timed(&p, "local s = 'x' while true do s = s .. s end", LIMITS)
        .code(4)
        .stderr_has(MEM_MSG);
}

#[test]
fn limit_table_allocation_bomb_inside_pcall_in_a_loop() {
    let p = Project::new();
    let src = r#"while true do
  local ok, err = pcall(function()
    local t = {}
    for i = 1, 1e9 do t[i] = { i, i, i } end
  end)
  print("caught", ok, err)
end
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stderr_has(MEM_MSG)
        .lacks("caught");
}

#[test]
fn limit_deep_recursion_is_a_short_clear_error() {
    let p = Project::new();
    let out = timed(
        &p,
        "local function f(n) return 1 + f(n + 1) end\nf(1)\n",
        LIMITS,
    )
    .code(1)
    .stderr_has("error: script.luau:1: stack overflow")
    .stderr_has("script.luau:1 function f")
    .stderr_has("(the line above repeats")
    .stderr_has("script.luau:2");
    assert!(
        out.stderr.len() < 4096,
        "traceback not folded ({} bytes):\n{}",
        out.stderr.len(),
        out.stderr
    );
}

#[test]
fn limit_task_parallel_with_an_infinite_task() {
    let p = Project::new();
    let src = r#"local task = require("stagecraft/task")
local r = task.parallel({
  function() return 1 end,
  function() while true do end end,
})
print("finished", r[1])
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stderr_has(CPU_MSG)
        .lacks("finished");
    let src = r#"local task = require("stagecraft/task")
print(pcall(task.map, { 1, 2, 3 }, function(i) if i == 2 then while true do end end return i end))
print("swallowed")
"#;
    timed(&p, src, LIMITS)
        .code(4)
        .stderr_has(CPU_MSG)
        .lacks("swallowed");
}

#[test]
fn limit_wall_timeout_during_exec() {
    let p = Project::new();
    let t0 = Instant::now();
    p.script(
        r#"print(pcall(require("stagecraft/exec").run, { "sleep", "30" })) print("swallowed")"#,
        &with(&["--allow", "exec:sleep", "--timeout", "1"]),
    )
    .code(4)
    .stderr_has("time limit exceeded: the run took longer than 1s")
    .stderr_has("hint: raise it with --timeout SECONDS")
    .lacks("swallowed");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the run waited for the child: {took:?}"
    );
}

#[test]
fn limit_json_depth_bomb() {
    let p = Project::new();
    let src = r#"local json = require("stagecraft/json")
local bomb = string.rep("[", 100000) .. string.rep("]", 100000)
print(pcall(json.decode, bomb))
print(pcall(json.decode, bomb, { max_depth = 1e6 }))
print(pcall(json.decode, string.rep("[", 100000)))
json.decode(string.rep('{"a":', 100000))
"#;
    timed(&p, src, LIMITS)
        .code(1)
        .stdout_is(
            "false\tjson.decode: nesting depth 100000 exceeds max_depth 128\n\
             false\tjson.decode: max_depth must be at most 1000 (got 1000000)\n\
             false\tjson.decode: nesting depth 100000 exceeds max_depth 128\n",
        )
        .stderr_has("script.luau:6: json.decode: nesting depth 100000 exceeds max_depth 128");
}

#[test]
fn limit_json_and_yaml_encode_of_a_deep_table_do_not_crash() {
    // A raised max_depth used to recurse until the native stack overflowed (abort, exit 134).
    let p = Project::new();
    let src = r#"local json = require("stagecraft/json")
local yaml = require("stagecraft/yaml")
local root = {}
local cur = root
for i = 1, 200000 do cur.k = {} cur = cur.k end
print(pcall(json.encode, root, { max_depth = 1e7 }))
print(pcall(yaml.encode, root, { max_depth = 1e7 }))
local ok, err = pcall(json.encode, root, { max_depth = 1000 })
print(ok, string.find(tostring(err), "is nested deeper than 1000 levels", 1, true) ~= nil)
local t = {}
t.self = t
json.encode(t)
"#;
    timed(&p, src, LIMITS)
        .code(1)
        .stdout_is(
            "false\tjson.encode: max_depth must be at most 1000 (got 10000000)\n\
             false\tyaml.encode: max_depth must be at most 1000 (got 10000000)\n\
             false\ttrue\n",
        )
        .stderr_has("script.luau:12: json.encode: .self.self.self")
        .stderr_has("is nested deeper than 128 levels (a cycle?)");
}

#[test]
fn limit_yaml_billion_laughs() {
    let p = Project::new();
    let src = r#"local yaml = require("stagecraft/yaml")
local lines = { 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
local prev = "a"
for _, n in ipairs({ "b", "c", "d", "e", "f", "g", "h", "i" }) do
  local refs = string.rep("*" .. prev .. ",", 8) .. "*" .. prev
  table.insert(lines, n .. ": &" .. n .. " [" .. refs .. "]")
  prev = n
end
local doc = yaml.decode(table.concat(lines, "\n"))
print("expanded", #doc.i)
"#;
    timed(&p, src, LIMITS)
        .code(1)
        .stderr_has("script.luau:9: yaml.decode: line ")
        .stderr_has("document too large to decode: it expands to more than 250000 nodes (is it an anchor/alias bomb?)")
        .lacks("expanded");
}

#[test]
fn limit_yaml_deep_nesting_does_not_crash() {
    // serde-saphyr needs tens of KB of stack per level: 300 levels used to abort the process.
    let p = Project::new();
    let src = r#"local yaml = require("stagecraft/yaml")
local v = yaml.decode(string.rep("- ", 999) .. "x", { max_depth = 1000 })
for _ = 1, 999 do v = v[1] end
print(v)
print(pcall(yaml.decode, string.rep("[", 100000)))
yaml.decode(string.rep("- ", 100000) .. "x", { max_depth = 1000 })
"#;
    let out = timed(&p, src, LIMITS)
        .code(1)
        .stderr_has("script.luau:6: yaml.decode: line 1 column 2001: document too large to decode: it is nested more than 1000 levels deep");
    assert!(
        out.stdout.starts_with("x\nfalse\tyaml.decode: "),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Module tampering.

#[test]
fn tamper_assigning_into_a_stagecraft_module() {
    let p = Project::new();
    let src = r#"local exec = require("stagecraft/exec")
local original = exec.run
print(pcall(function() exec.run = function() return { code = 0, stdout = "faked" } end end))
print(require("stagecraft/exec").run == original, rawequal(require("stagecraft/exec"), exec))
exec.extra = true
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("false\tscript.luau:3: attempt to modify a readonly table\ntrue\ttrue\n")
        .stderr_has("script.luau:5: attempt to modify a readonly table");
}

#[test]
fn tamper_replacing_string_format() {
    let p = Project::new();
    p.write(
        "lib/fmt.luau",
        r#"return function() return string.format("%d-%s", 7, "ok") end"#,
    );
    let src = r#"print(pcall(function() string.format = function() return "hijacked" end end))
local fmt = require("./lib/fmt")
print(fmt())
string.format = nil
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("false\tscript.luau:1: attempt to modify a readonly table\n7-ok\n")
        .stderr_has("script.luau:4: attempt to modify a readonly table");
}

#[test]
fn tamper_module_returned_by_a_relative_require() {
    let p = Project::new();
    p.write(
        "lib/shared.luau",
        "return { value = 1, get = function() return 'real' end }",
    );
    p.write(
        "lib/tamper.luau",
        r#"local shared = require("./shared")
local ok1 = pcall(function() shared.value = 2 end)
local ok2 = pcall(function() shared.get = function() return "fake" end end)
local ok3 = pcall(rawset, shared, "injected", true)
local ok4 = pcall(setmetatable, shared, { __index = function() return "fake" end })
return { ok1, ok2, ok3, ok4 }"#,
    );
    let src = r#"local results = require("./lib/tamper")
local shared = require("./lib/shared")
print(results[1], results[2], results[3], results[4])
print(shared.value, shared.get(), shared.injected)
results[1] = true
"#;
    p.script(src, &[])
        .code(1)
        .stdout_is("false\tfalse\tfalse\tfalse\n1\treal\tnil\n")
        .stderr_has("script.luau:5: attempt to modify a readonly table");
}

#[test]
fn tamper_require_cycle_is_a_clear_error() {
    let p = Project::new();
    p.write("lib/a.luau", "return { b = require('./b') }");
    p.write("lib/b.luau", "return { a = require('./a') }");
    p.script("require('./lib/a')", &[])
        .code(1)
        .stderr_has("require: cyclic require: lib/a.luau -> lib/b.luau -> lib/a.luau")
        .stderr_has("hint: move the shared part into a third module");
    // A script requiring itself.
    p.script("return require('./script')", &[])
        .code(1)
        .stderr_has("require: cyclic require: script.luau -> script.luau");
}

#[test]
fn tamper_concurrent_require_is_not_a_false_cycle() {
    // Two tasks require a module whose body yields (a primitive call): the second waits for the
    // first instead of failing with "cyclic require", and the body runs once.
    let p = Project::new();
    p.write(
        "lib/slow.luau",
        r#"print("loading")
require("stagecraft/exec").run({ "true" })
return { v = 1 }"#,
    );
    let src = r#"local task = require("stagecraft/task")
local r = task.parallel({
  function() return require("./lib/slow").v end,
  function() return require("./lib/slow").v end,
  function() return require("./lib/slow").v end,
})
print(r[1], r[2], r[3])
"#;
    p.script(src, &["--allow", "exec:true"])
        .ok()
        .stdout_is("loading\n1\t1\t1\n");
}

#[test]
fn tamper_require_cycle_across_tasks_is_an_error_not_a_hang() {
    let p = Project::new();
    p.write(
        "lib/d1.luau",
        r#"require("stagecraft/exec").run({ "true" }) return { other = require("./d2") }"#,
    );
    p.write(
        "lib/d2.luau",
        r#"require("stagecraft/exec").run({ "true" }) return { other = require("./d1") }"#,
    );
    let src = r#"local task = require("stagecraft/task")
task.parallel({
  function() return require("./lib/d1") end,
  function() return require("./lib/d2") end,
})
"#;
    // Which of the two tasks detects it depends on which child process exits first.
    let out = timed(&p, src, &with(&["--allow", "exec:true", "--timeout", "20"]))
        .code(1)
        .stderr_has("require: cyclic require across tasks: lib/d");
    assert!(
        out.stderr.contains("task main/1.2 failed: require: cyclic require across tasks: lib/d1.luau is being loaded by task main/1.1, which waits for task main/1.2")
            || out.stderr.contains("task main/1.1 failed: require: cyclic require across tasks: lib/d2.luau is being loaded by task main/1.2, which waits for task main/1.1"),
        "{}",
        out.stderr
    );
    // A module whose body starts tasks that require the module itself.
    p.write(
        "lib/self.luau",
        r#"local task = require("stagecraft/task")
return task.parallel({ function() return require("./self") end })"#,
    );
    timed(&p, "require('./lib/self')", &with(&["--timeout", "20"]))
        .code(1)
        .stderr_has("cyclic require across tasks: lib/self.luau is being loaded by task main, which waits for task main/1.1");
}
