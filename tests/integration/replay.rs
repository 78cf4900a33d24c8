//! Tests: `stagecraft replay` — recorded results instead of live calls, the same branches for
//! recorded errors, divergence reports (exit code 5), `--script`, `--live`, no false divergence
//! from timing, and replays of runs that were killed, interrupted or failed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::harness::{Out, Project};

/// The id of the newest run.
fn last_run(p: &Project) -> String {
    let v = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    v["run"]["id"].as_str().expect("run id").to_string()
}

/// How many calls the newest run recorded.
fn recorded_calls(p: &Project) -> usize {
    let v = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "call")
        .count()
}

/// The line `stagecraft replay` ends a clean replay with.
fn clean_summary(run: &str, calls: usize, status: &str) -> String {
    format!(
        "replay of {run}: {calls} of {calls} recorded calls matched, no divergence (recorded status: {status})\n"
    )
}

/// A clean replay prints what the live run printed (on stderr), then the summary.
fn assert_clean_replay(out: &Out, live_stdout: &str, run: &str, calls: usize) {
    let want = format!("{live_stdout}{}", clean_summary(run, calls, "ok"));
    if out.stderr == want {
        return;
    }
    let (line, replayed, live) = out
        .stderr
        .lines()
        .zip(want.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i + 1, a, b))
        .unwrap_or((0, "(a different number of lines)", ""));
    panic!(
        "replay output differs from the live run at line {line}\n  replay: {replayed:?}\n  live:   {live:?}\n\
         --- exit code: {}\n--- replay stderr (first 2000 bytes):\n{}",
        out.code,
        out.stderr.chars().take(2000).collect::<String>()
    );
}

const UTIL: &str = r#"
local M = {}
function M.double(n) return n * 2 end
function M.label(n) return "n=" .. n end
return M
"#;

/// Every kind of recorded call: exec with a side effect, fs.write, the clocks, randomness, a
/// relative require, task.parallel and task.map.
const EVERYTHING: &str = r#"
local exec = require("stagecraft/exec")
local fs = require("stagecraft/fs")
local task = require("stagecraft/task")
local util = require("./lib/util")

local r = exec.run({ "sh", "-c", "echo x >> marker; echo from-sh" })
fs.write("out.txt", "written " .. r.stdout)
print("exec", r.code, r.stdout)
print("time", os.time(), os.date("%Y-%m-%d %H:%M:%S"), os.clock())
print("random", math.random(), math.random(1, 1000), math.random(7))
local par = task.parallel({
  function() return exec.run({ "sh", "-c", "sleep 0.1; echo slow" }).stdout end,
  function() return util.label(math.random(1, 100)) end,
})
print("parallel", par[1], par[2])
local mapped = task.map({ 1, 2, 3, 4, 5 }, function(n)
  return util.double(n) + math.random(1, 10)
end, { limit = 2 })
print("map", table.concat(mapped, ","))
"#;

#[test]
fn replay_returns_recorded_results_without_live_calls() {
    let p = Project::new()
        .file("lib/util.luau", UTIL)
        .file("main.luau", EVERYTHING);
    let live = p
        .run(&[
            "run",
            "main.luau",
            "--allow",
            "exec:sh",
            "--allow",
            "fs-write",
        ])
        .ok();
    assert_eq!(p.read("marker"), "x\n");
    assert_eq!(p.read("out.txt"), "written from-sh\n");
    let run = last_run(&p);
    let calls = recorded_calls(&p);
    assert_eq!(calls, 15, "calls recorded by the live run");
    std::fs::remove_file(p.path("marker")).expect("remove marker");
    std::fs::remove_file(p.path("out.txt")).expect("remove out.txt");

    let out = p.run(&["replay", "last"]).ok();
    assert_clean_replay(&out, &live.stdout, &run, calls);
    assert!(!p.path("marker").exists(), "replay ran the exec for real");
    assert!(
        !p.path("out.txt").exists(),
        "replay wrote the file for real"
    );

    // No program can be found and no capability is granted: still the recorded results.
    let out = p.cmd(&["replay", &run]).env("PATH", "").output().ok();
    assert_clean_replay(&out, &live.stdout, &run, calls);
    let out = p
        .cmd(&["replay", &run[..12].to_ascii_lowercase()])
        .env("PATH", "")
        .output()
        .ok();
    assert_clean_replay(&out, &live.stdout, &run, calls);
    assert!(!p.path("marker").exists() && !p.path("out.txt").exists());

    let report = p.run(&["replay", "last", "--json"]).ok().json();
    assert_eq!(report["run_id"], run.as_str());
    assert_eq!(report["recorded_calls"], calls);
    assert_eq!(report["matched_calls"], calls);
    assert!(report["divergence"].is_null());
    assert_eq!(report["status"], "ok");
    assert_eq!(report["recorded_status"], "ok");

    // A replay is not a run: the ledger still holds only the live run.
    assert_eq!(last_run(&p), run);
}

#[test]
fn recorded_errors_replay_as_errors_and_take_the_same_branch() {
    let p = Project::new().file(
        "errors.luau",
        r#"
local exec = require("stagecraft/exec")
local fs = require("stagecraft/fs")
local ok, err = pcall(fs.write, "denied.txt", "x")
if not ok and err.kind == "permission_denied" then print("branch: write denied") end
ok, err = pcall(exec.run, { "true" })
if not ok then print("branch: exec denied", err.kind) end
ok, err = pcall(exec.run, { "no-such-program-xyz" })
if not ok then print("branch: missing program", err.kind) end
local r = exec.run({ "sh", "-c", "echo oops >&2; exit 3" })
if r.code ~= 0 then print("branch: exec failed", r.code, r.stderr) end
ok, err = pcall(exec.run, { "sleep", "5" }, { timeout = 0.1 })
if not ok then print("branch: timed out", err.kind) end
"#,
    );
    let live = p
        .run(&[
            "run",
            "errors.luau",
            "--allow",
            "exec:sh",
            "--allow",
            "exec:sleep",
        ])
        .ok()
        .stdout_is(
            "branch: write denied\n\
             branch: exec denied\tpermission_denied\n\
             branch: missing program\tnot_found\n\
             branch: exec failed\t3\toops\n\n\
             branch: timed out\ttimeout\n",
        );
    let run = last_run(&p);
    assert!(!p.path("denied.txt").exists());
    // With every capability granted the replay still sees the recorded denials.
    let out = p.run(&["replay", "last", "--allow-all"]).ok();
    assert_clean_replay(&out, &live.stdout, &run, 5);
    assert!(!p.path("denied.txt").exists());
}

/// Calls: main 1 exec, 2 fs.write, 3 os.time; main/1.1: 1 exec; main/1.2: 1 math.random, 2 exec.
const BASE: &str = r#"
local exec = require("stagecraft/exec")
local fs = require("stagecraft/fs")
local task = require("stagecraft/task")
local r = exec.run({ "echo", "hi" })
fs.write("out.txt", r.stdout)
local t = os.time()
local res = task.parallel({
  function() return exec.run({ "echo", "a" }).stdout end,
  function()
    local n = math.random(1, 6)
    return exec.run({ "echo", "b" }).stdout
  end,
})
print("done", t > 0, res[1], res[2])
"#;

/// A project with one live run of `BASE`; returns the run id.
fn recorded_base() -> (Project, String) {
    let p = Project::new().file("base.luau", BASE);
    p.run(&[
        "run",
        "base.luau",
        "--allow",
        "exec:echo",
        "--allow",
        "fs-write",
    ])
    .ok()
    .stdout_is("done\ttrue\ta\n\tb\n\n");
    let run = last_run(&p);
    (p, run)
}

/// Replay the newest run against `BASE` edited by `edit`.
fn replay_changed(p: &Project, edit: impl Fn(&str) -> String, extra: &[&str]) -> Out {
    let changed = edit(BASE);
    assert_ne!(changed, BASE, "the edit changed nothing");
    p.write("changed.luau", &changed);
    let mut args = vec!["replay", "last", "--script", "changed.luau"];
    args.extend_from_slice(extra);
    p.run(&args)
}

#[test]
fn divergence_reports_a_different_operation() {
    let (p, run) = recorded_base();
    let out = replay_changed(
        &p,
        |s| s.replace("fs.write(\"out.txt\", r.stdout)", "fs.read(\"out.txt\")"),
        &[],
    )
    .code(5)
    .stderr_has(&format!(
        "replay of {run}: DIVERGED after 1 matching calls\n  task:     main\n  call:     2 (in that task)\n"
    ))
    .stderr_has("  reason:   a different operation than recorded\n")
    .stderr_has("  expected: {\"args\":{\"append\":false,")
    .stderr_has("\"op\":\"fs.write\"}\n")
    .stderr_has("  actual:   {\"args\":{\"path\":\"out.txt\"},\"op\":\"fs.read\"}\n");
    assert!(!out.stderr.contains("done"), "{}", out.stderr);

    let report = replay_changed(
        &p,
        |s| s.replace("fs.write(\"out.txt\", r.stdout)", "fs.read(\"out.txt\")"),
        &["--json"],
    )
    .code(5)
    .json();
    assert_eq!(report["run_id"], run.as_str());
    assert_eq!(report["recorded_calls"], 6);
    assert_eq!(report["matched_calls"], 1);
    assert_eq!(report["recorded_status"], "ok");
    assert_eq!(report["status"], "failed");
    let d = &report["divergence"];
    assert_eq!(d["task"], "main");
    assert_eq!(d["call"], 2);
    assert!(d["seq"].is_i64(), "{d}");
    assert_eq!(d["reason"], "a different operation than recorded");
    assert_eq!(d["expected"]["op"], "fs.write");
    assert_eq!(d["expected"]["args"]["path"], "out.txt");
    assert_eq!(d["expected"]["args"]["bytes"], 3);
    assert_eq!(d["actual"]["op"], "fs.read");
    assert_eq!(d["actual"]["args"]["path"], "out.txt");
}

#[test]
fn divergence_reports_different_arguments() {
    let (p, run) = recorded_base();
    replay_changed(&p, |s| s.replace("\"echo\", \"hi\"", "\"echo\", \"HI\""), &[])
        .code(5)
        .stderr_has(&format!(
            "replay of {run}: DIVERGED after 0 matching calls\n  task:     main\n  call:     1 (in that task)\n"
        ))
        .stderr_has("  reason:   different arguments than recorded\n")
        .stderr_has("  expected: {\"args\":{\"argv\":[\"echo\",\"hi\"],\"opts\":{}},\"op\":\"exec.run\"}\n")
        .stderr_has("  actual:   {\"args\":{\"argv\":[\"echo\",\"HI\"],\"opts\":{}},\"op\":\"exec.run\"}\n");
}

#[test]
fn divergence_in_a_task_names_the_task_path() {
    let (p, _) = recorded_base();
    let report = replay_changed(
        &p,
        |s| s.replace("\"echo\", \"b\"", "\"echo\", \"c\""),
        &["--json"],
    )
    .code(5)
    .json();
    let d = &report["divergence"];
    assert_eq!(d["task"], "main/1.2");
    assert_eq!(d["call"], 2);
    assert_eq!(d["reason"], "different arguments than recorded");
    assert_eq!(d["expected"]["args"]["argv"][1], "b");
    assert_eq!(d["actual"]["args"]["argv"][1], "c");
    replay_changed(&p, |s| s.replace("\"echo\", \"b\"", "\"echo\", \"c\""), &[])
        .code(5)
        .stderr_has("  task:     main/1.2\n  call:     2 (in that task)\n");
}

#[test]
fn divergence_reports_an_extra_call_at_the_end() {
    let (p, run) = recorded_base();
    replay_changed(&p, |s| format!("{s}print(os.clock())\n"), &[])
        .code(5)
        .stderr_has("done\ttrue\ta\n\tb\n\n")
        .stderr_has(&format!(
            "replay of {run}: DIVERGED after 6 matching calls\n  task:     main\n  call:     4 (in that task)\n"
        ))
        .stderr_has("  reason:   an extra call os.clock that was not recorded\n")
        .stderr_has("  actual:   {\"args\":{},\"op\":\"os.clock\"}\n");
}

#[test]
fn divergence_reports_missing_calls_when_the_script_ends_early() {
    let (p, run) = recorded_base();
    let out = replay_changed(
        &p,
        |s| s[..s.find("local t = os.time()").expect("marker")].to_string(),
        &[],
    )
    .code(5)
    .stderr_has(&format!(
        "replay of {run}: DIVERGED after 2 matching calls\n  task:     main\n  call:     3 (in that task)\n"
    ))
    .stderr_has("  reason:   the script ended but 4 recorded call(s) were not made, first os.time\n")
    .stderr_has("  expected: {\"args\":{},\"op\":\"os.time\"}\n");
    assert!(!out.stderr.contains("actual:"), "{}", out.stderr);
}

#[test]
fn divergence_cannot_be_swallowed_by_pcall() {
    let (p, _) = recorded_base();
    let out = replay_changed(
        &p,
        |s| {
            s.replace(
                "fs.write(\"out.txt\", r.stdout)",
                "local ok = pcall(fs.read, \"out.txt\") print(\"swallowed\", ok)\n\
                 ok = pcall(function() return fs.read(\"x\") end) print(\"swallowed again\", ok)",
            )
        },
        &[],
    )
    .code(5)
    .stderr_has("  reason:   a different operation than recorded\n");
    assert!(!out.stderr.contains("swallowed"), "{}", out.stderr);
    assert!(!out.stderr.contains("done"), "{}", out.stderr);
}

#[test]
fn divergence_when_a_task_waits_for_a_call_the_script_no_longer_makes() {
    // Live, the second task's call finished first; replay hands results back in that order, so
    // the first task waits for a call that the changed script never makes.
    let p = Project::new().file(
        "order.luau",
        r#"
local exec = require("stagecraft/exec")
local task = require("stagecraft/task")
task.parallel({
  function() exec.run({ "sh", "-c", "sleep 0.3; echo slow" }) end,
  function() exec.run({ "sh", "-c", "echo fast" }) end,
})
"#,
    );
    p.run(&["run", "order.luau", "--allow", "exec:sh"]).ok();
    let run = last_run(&p);
    p.write(
        "changed.luau",
        &p.read("order.luau").replace(
            r#"function() exec.run({ "sh", "-c", "echo fast" }) end"#,
            "function() end",
        ),
    );
    p.run(&["replay", "last", "--script", "changed.luau"])
        .code(5)
        .stderr_has(&format!(
            "replay of {run}: DIVERGED after 1 matching calls\n  task:     main/1.2\n  call:     1 (in that task)\n"
        ))
        .stderr_has(
            "  reason:   the script never made the recorded call exec.run (task main/1.1 waits for it)\n",
        )
        .stderr_has(
            "  expected: {\"args\":{\"argv\":[\"sh\",\"-c\",\"echo fast\"],\"opts\":{}},\"op\":\"exec.run\"}\n",
        );
}

#[test]
fn divergence_when_a_recorded_cancellation_no_longer_happens() {
    let p = Project::new().file(
        "cancel.luau",
        r#"
local exec = require("stagecraft/exec")
local task = require("stagecraft/task")
task.parallel({
  function() exec.run({ "sh", "-c", "sleep 5" }) end,
  function() exec.run({ "true" }); error("boom") end,
})
"#,
    );
    p.run(&["run", "cancel.luau", "--allow", "exec"]).code(1);
    p.write(
        "changed.luau",
        &p.read("cancel.luau").replace("error(\"boom\")", "return 1"),
    );
    p.run(&["replay", "last", "--script", "changed.luau"])
        .code(5)
        .stderr_has("  task:     main/1.1\n  call:     1 (in that task)\n")
        .stderr_has(
            "  reason:   exec.run was cancelled in the recording (another task failed first), but \
             nothing cancelled it in the replay\n",
        );
}

#[test]
fn script_with_unchanged_behaviour_replays_clean() {
    let (p, run) = recorded_base();
    p.write(
        "changed.luau",
        r#"-- The same script, reformatted: comments, renamed locals, other layout.
local exec = require("stagecraft/exec")
local files = require("stagecraft/fs")
local tasks = require("stagecraft/task")

--[[ first the greeting ]]
local greeting = exec.run({ "echo", "hi" })
files.write("out.txt", greeting.stdout) -- same bytes
local now = os.time()

local function first() return exec.run({ "echo", "a" }).stdout end
local function second()
  local _dice = math.random(1, 6)
  return exec.run({ "echo", "b" }).stdout
end
local results = tasks.parallel({ first, second })
print("done", now > 0, results[1], results[2])
"#,
    );
    let out = p.run(&["replay", "last", "--script", "changed.luau"]).ok();
    assert_clean_replay(&out, "done\ttrue\ta\n\tb\n\n", &run, 6);
}

#[test]
fn live_rerun_uses_the_recorded_sources_and_links_the_new_run() {
    let p = Project::new().file("lib/util.luau", UTIL).file(
        "main.luau",
        r#"
local exec = require("stagecraft/exec")
local util = require("./lib/util")
local r = exec.run({ "sh", "-c", "echo x >> marker; echo original" })
print(r.stdout, util.double(21))
"#,
    );
    let live = p
        .run(&["run", "main.luau", "--allow", "exec:sh"])
        .ok()
        .stdout_is("original\n\t42\n");
    let original = last_run(&p);
    p.write("main.luau", "print('the file on disk changed')\n");
    p.write(
        "lib/util.luau",
        "return { double = function(n) return -1 end }\n",
    );

    let rerun = p
        .run(&["replay", "last", "--live", "--allow", "exec:sh"])
        .ok()
        .stdout_is(&live.stdout);
    assert_eq!(p.read("marker"), "x\nx\n", "--live runs for real");
    let new = last_run(&p);
    assert_ne!(new, original);
    assert!(
        rerun
            .stderr
            .contains(&format!("run {new} (re-run of {original}) ok")),
        "{}",
        rerun.stderr
    );
    let show = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    assert_eq!(show["run"]["replay_of"], original.as_str());
    assert_eq!(show["run"]["status"], "ok");
    p.run(&["ledger", "show", "last"])
        .ok()
        .stdout_has(&format!("re-run of {original}"));

    // The re-run is itself replayable, again from its recorded sources.
    let out = p.run(&["replay", "last"]).ok();
    assert_clean_replay(&out, &live.stdout, &new, 1);
    // And a `--live` re-run without the capability it needs fails as a live run would.
    p.run(&["replay", &original, "--live"]).code(3);
}

/// Parallel tasks finishing in a different order each time, `pairs` over a table the script
/// built, the clocks and randomness, task.map with a limit.
const TIMING: &str = r#"
local exec = require("stagecraft/exec")
local fs = require("stagecraft/fs")
local task = require("stagecraft/task")

local scores = {}
for i, name in ipairs({ "zeta", "alpha", "mike", "bravo", "yankee", "charlie", "x-ray", "delta" }) do
  scores[name] = i * 10
end
scores[3.5] = "float"
scores[100] = "int"
scores[true] = "bool"
local order = {}
for k in pairs(scores) do
  -- A recorded call whose argument depends on the iteration order.
  fs.exists("probe-" .. tostring(k))
  table.insert(order, tostring(k))
end
print("pairs", table.concat(order, " "))

local function worker(name, delay)
  return function()
    local a = math.random(1, 1000000)
    exec.run({ "sh", "-c", "sleep " .. delay })
    local b = os.time()
    local c = os.clock()
    local d = math.random()
    exec.run({ "sh", "-c", "sleep " .. delay })
    return string.format("%s %d %d %s %s", name, a, b, tostring(c), tostring(d))
  end
end
local results = task.parallel({
  worker("slow", "0.3"),
  worker("mid", "0.1"),
  worker("fast", "0"),
  function() return os.date("%Y-%m-%d %H:%M:%S") .. " " .. tostring(math.random()) end,
})
for _, r in ipairs(results) do print("parallel", r) end

local mapped = task.map({ "0.2", "0", "0.1", "0", "0.05", "0" }, function(delay, i)
  exec.run({ "sh", "-c", "sleep " .. delay })
  return i .. "=" .. math.random(1, 1000000)
end, { limit = 2 })
print("map", table.concat(mapped, " "))
print("values", os.time(), os.clock(), os.date(), os.date("!%H:%M:%S"), math.random(), math.random(5, 9))
"#;

#[test]
fn no_false_divergence_from_timing_iteration_order_clocks_or_randomness() {
    let p = Project::new().file("timing.luau", TIMING);
    let live = p.run(&["run", "timing.luau", "--allow", "exec:sh"]).ok();
    let run = last_run(&p);
    let calls = recorded_calls(&p);
    for _ in 0..4 {
        let out = p.run(&["replay", "last"]).ok();
        assert_clean_replay(&out, &live.stdout, &run, calls);
    }
}

#[test]
fn replayed_floats_are_bit_identical() {
    // Every recorded float comes back exactly, so printing it (or passing it on to another
    // call) gives the same text as live.
    let p = Project::new().file(
        "floats.luau",
        "for _ = 1, 300 do print(math.random(), os.clock()) end\n",
    );
    let live = p.run(&["run", "floats.luau"]).ok();
    let run = last_run(&p);
    let out = p.run(&["replay", "last"]).ok();
    assert_clean_replay(&out, &live.stdout, &run, 600);
}

#[test]
fn replay_of_a_failed_run_matches_up_to_the_failure() {
    let p = Project::new().file(
        "fail.luau",
        r#"
local fs = require("stagecraft/fs")
print("before", os.time() > 0)
local text = fs.read("missing.txt")
print("never", text)
"#,
    );
    p.run(&["run", "fail.luau"])
        .code(1)
        .stdout_is("before\ttrue\n")
        .stderr_has("missing.txt");
    let run = last_run(&p);
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("before\ttrue\n")
        .stderr_has(&clean_summary(&run, 2, "failed"));
}

#[test]
fn replay_of_a_failed_parallel_task_with_a_cancelled_sibling() {
    // The sibling's exec is still running when the other task fails: it is cancelled.
    let p = Project::new().file(
        "par.luau",
        r#"
local exec = require("stagecraft/exec")
local task = require("stagecraft/task")
task.parallel({
  function() exec.run({ "sh", "-c", "sleep 5" }); return 1 end,
  function() exec.run({ "true" }); error("boom") end,
})
"#,
    );
    p.run(&["run", "par.luau", "--allow", "exec"])
        .code(1)
        .stderr_has("task main/1.2 failed: par.luau:6: boom");
    let run = last_run(&p);
    let entries = p.run(&["ledger", "show", "last", "--json"]).ok().json();
    let cancelled: Vec<_> = entries["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["error"]["kind"] == "cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "{entries}");
    assert_eq!(cancelled[0]["task"], "main/1.1");
    for _ in 0..3 {
        p.run(&["replay", "last"])
            .ok()
            .stderr_has(&clean_summary(&run, 2, "failed"));
    }

    // Caught with pcall, the script goes on: the replay follows it to the end.
    p.write(
        "caught.luau",
        r#"
local exec = require("stagecraft/exec")
local task = require("stagecraft/task")
local ok, err = pcall(task.parallel, {
  function() exec.run({ "true" }); error("boom") end,
  function() exec.run({ "sh", "-c", "sleep 5" }); return 1 end,
})
print(ok, err)
print("after", exec.run({ "echo", "next" }).stdout)
"#,
    );
    let live = p
        .run(&["run", "caught.luau", "--allow", "exec"])
        .ok()
        .stdout_is("false\ttask main/1.1 failed: caught.luau:5: boom\nafter\tnext\n\n");
    let run = last_run(&p);
    // Replayed, the failing task fails before its sibling starts: the sibling's cancelled call
    // is never reached, which is no divergence.
    for _ in 0..3 {
        let out = p.run(&["replay", "last"]).ok();
        assert_eq!(
            out.stderr,
            format!(
                "{}replay of {run}: 2 of 3 recorded calls matched, no divergence (recorded status: ok)\n",
                live.stdout
            )
        );
    }
}

#[test]
fn replay_of_a_run_killed_by_the_wall_clock_limit() {
    let p = Project::new().file(
        "loop.luau",
        r#"
local n = 0
while true do
  n += 1
  local _ = os.time()
  if n % 1000 == 0 then print(n) end
end
"#,
    );
    p.run(&["run", "loop.luau", "--timeout", "0.3"])
        .code(4)
        .stderr_has("time limit exceeded");
    let run = last_run(&p);
    let calls = recorded_calls(&p);
    assert!(calls > 0);
    let report = p.run(&["replay", "last", "--json"]).ok().json();
    assert_eq!(report["recorded_calls"], calls);
    assert_eq!(report["matched_calls"], calls);
    assert!(report["divergence"].is_null(), "{report}");
    assert_eq!(report["status"], "killed");
    assert_eq!(report["recorded_status"], "killed");
    p.run(&["replay", "last"])
        .ok()
        .stderr_has(&clean_summary(&run, calls, "killed"));
}

#[test]
fn replay_of_a_run_killed_while_a_call_was_in_flight() {
    let p = Project::new().file(
        "slow.luau",
        r#"
local exec = require("stagecraft/exec")
print("start", os.time() > 0)
exec.run({ "sh", "-c", "sleep 10" })
print("never")
"#,
    );
    p.run(&["run", "slow.luau", "--allow", "exec:sh", "--timeout", "0.3"])
        .code(4)
        .stdout_is("start\ttrue\n");
    let run = last_run(&p);
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("start\ttrue\n")
        .stderr_has(&clean_summary(&run, 2, "killed"))
        .stderr_lacks("never");
}

#[test]
fn replay_of_a_run_killed_by_the_cpu_limit_in_a_parallel_task() {
    let p = Project::new().file(
        "spin.luau",
        r#"
local exec = require("stagecraft/exec")
local task = require("stagecraft/task")
task.parallel({
  function() exec.run({ "sh", "-c", "sleep 10" }) end,
  function() while true do math.random() end end,
})
"#,
    );
    p.run(&[
        "run",
        "spin.luau",
        "--allow",
        "exec:sh",
        "--cpu-limit",
        "0.2",
    ])
    .code(4)
    .stderr_has("CPU limit exceeded");
    let run = last_run(&p);
    let calls = recorded_calls(&p);
    p.run(&["replay", "last"])
        .ok()
        .stderr_has(&clean_summary(&run, calls, "killed"));
}

#[test]
fn replay_of_a_run_killed_before_any_call_ends_at_once() {
    let p = Project::new().file("cpu.luau", "local n = 0\nwhile true do n += 1 end\n");
    p.run(&["run", "cpu.luau", "--cpu-limit", "0.2"]).code(4);
    let run = last_run(&p);
    // Were the replay to spin until a limit of its own, this one would fail it.
    p.run(&["replay", "last", "--cpu-limit", "5"])
        .ok()
        .stderr_has(&clean_summary(&run, 0, "killed"));
}

#[test]
fn replay_of_an_interrupted_run() {
    let p = Project::new().file(
        "wait.luau",
        r#"
local exec = require("stagecraft/exec")
-- The first call that waits lets the runtime install its signal handler (see the report).
exec.run({ "true" })
print("started", os.time() > 0)
exec.run({ "sh", "-c", "echo waiting; sleep 30" }, { stream = true })
"#,
    );
    let mut cmd = p.cmd(&["run", "wait.luau", "--allow", "exec"]).cmd;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn stagecraft");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout pipe"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the first line");
    assert_eq!(line, "started\ttrue\n");
    // The interrupt lands while the second exec is in flight: it is recorded as cancelled.
    line.clear();
    stdout.read_line(&mut line).expect("read the second line");
    assert_eq!(line, "waiting\n");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = child.wait().expect("wait for stagecraft");
    assert_eq!(status.code(), Some(130));
    let run = last_run(&p);
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("started\ttrue\n")
        .stderr_has(&clean_summary(&run, 3, "interrupted"));
}
