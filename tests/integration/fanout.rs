//! Tests: `task.map` with a failure budget (a fan-out): the summary table on stderr, the report
//! as `--json` data, and replay of a fan-out in which items failed and others were cancelled.

use crate::harness::Project;

/// Items 2 and 4 fail; with `limit = 1` the order is fixed.
const TABLE: &str = r#"
local task = require("stagecraft/task")
local r = task.map({ "web-1", "web-2", "web-3", "web-4", "web-5" }, function(host)
  if host == "web-2" then error("connection refused", 0) end
  if host == "web-4" then error(string.rep("x", 100), 0) end
  return host
end, { max_fail = 1, limit = 1, progress = true })
print(r.ok, r.done, r.failed, r.cancelled)
"#;

#[test]
fn progress_prints_the_summary_table_on_stderr() {
    let p = Project::new();
    let out = p.script(TABLE, &[]).ok();
    assert_eq!(out.stdout, "false\t2\t2\t1\n");
    let long = format!("{}…", "x".repeat(59));
    assert_eq!(
        out.stderr,
        format!(
            "task.map: 2 ok, 2 failed, 1 cancelled of 5 (max_fail 1 exceeded)\n\
             #  NAME   STATUS     ERROR\n\
             1  web-1  ok\n\
             2  web-2  failed     connection refused\n\
             3  web-3  ok\n\
             4  web-4  failed     {long}\n\
             5  web-5  cancelled\n"
        )
    );
}

#[test]
fn without_a_terminal_max_fail_alone_prints_nothing() {
    let p = Project::new();
    let out = p.script(&TABLE.replace(", progress = true", ""), &[]).ok();
    assert_eq!(out.stdout, "false\t2\t2\t1\n");
    assert_eq!(out.stderr, "");
}

#[test]
fn the_summary_is_scrubbed() {
    let p = Project::new();
    p.write(
        "script.luau",
        r#"
local secrets = require("stagecraft/secrets")
local task = require("stagecraft/task")
secrets.get("FANOUT_TOKEN")
task.map({ "a" }, function() error("bad token s3cr3t-t0ken-value", 0) end,
  { max_fail = 1, progress = true, label = function() return "host-s3cr3t-t0ken-value" end })
"#,
    );
    let out = p
        .cmd(&["run", "script.luau", "--allow-all"])
        .env("FANOUT_TOKEN", "s3cr3t-t0ken-value")
        .output()
        .ok();
    assert!(
        out.stderr.contains("1 failed") && !out.stderr.contains("s3cr3t-t0ken-value"),
        "the summary is missing or leaks the secret:\n{}",
        out.stderr
    );
}

#[test]
fn json_gives_the_report_as_data() {
    let p = Project::new();
    let out = p
        .script(
            r#"
local task = require("stagecraft/task")
local json = require("stagecraft/json")
local r = task.map({ "a", "b", "c", "d" }, function(x)
  if x == "b" or x == "c" then error(x .. " broke", 0) end
  return { host = x, n = 1 }
end, { max_fail = 1, limit = 1, label = function(x) return "host-" .. x end })
print(json.encode(r))
return r
"#,
            &["--json"],
        )
        .ok();
    let outcome = out.json();
    let want = serde_json::json!({
        "ok": false,
        "done": 1,
        "failed": 2,
        "cancelled": 1,
        "results": [
            { "item_index": 1, "name": "host-a", "status": "ok", "value": { "host": "a", "n": 1 } },
            { "item_index": 2, "name": "host-b", "status": "failed",
              "error": { "kind": "script_error", "message": "b broke" } },
            { "item_index": 3, "name": "host-c", "status": "failed",
              "error": { "kind": "script_error", "message": "c broke" } },
            { "item_index": 4, "name": "host-d", "status": "cancelled",
              "error": { "kind": "cancelled", "message": "cancelled: more than 1 item(s) failed" } },
        ],
    });
    assert_eq!(outcome["status"], "ok", "{}", out.stdout);
    assert_eq!(outcome["result"], want);
    // `print` goes to stderr under --json: the script's own encoding is the same data.
    let printed: serde_json::Value =
        serde_json::from_str(out.stderr.trim()).expect("the printed report is JSON");
    assert_eq!(printed, want);
}

/// Item 1 waits (a recorded sleep) in one slot while items 2..6 run one by one in the other:
/// 3 and 5 fail, so the second failure cancels item 1 while it runs and item 6 before it starts.
const FANOUT: &str = r#"
local task = require("stagecraft/task")
local exec = require("stagecraft/exec")
local r = task.map({ "web-1", "web-2", "web-3", "web-4", "web-5", "web-6" }, function(host, i)
  if i == 1 then task.sleep(60) end
  local out = exec.run({ "sh", "-c", "echo " .. host }).stdout
  if i == 3 or i == 5 then error(host .. " is down", 0) end
  return out
end, { max_fail = 1, limit = 2, progress = true })
for _, x in r.results do print(x.item_index, x.status, x.value or x.error.message) end
"#;

#[test]
fn a_fanout_with_failures_and_cancellations_replays_without_divergence() {
    let p = Project::new();
    let live = p.script(FANOUT, &["--allow-all", "--json"]).ok();
    let run = live.json()["run_id"]
        .as_str()
        .expect("run_id in --json output")
        .to_string();
    let statuses = "1\tcancelled\tcancelled: more than 1 item(s) failed\n\
                    2\tok\tweb-2\n\n\
                    3\tfailed\tweb-3 is down\n\
                    4\tok\tweb-4\n\n\
                    5\tfailed\tweb-5 is down\n\
                    6\tcancelled\tcancelled: more than 1 item(s) failed\n";
    assert!(
        live.stderr.ends_with(statuses),
        "live run:\n{}",
        live.stderr
    );
    let cancelled: i64 = p
        .db()
        .query_row(
            "SELECT count(*) FROM entries WHERE run_id = ?1 AND kind = 'call' \
             AND error LIKE '%\"cancelled\"%'",
            [&run],
            |r| r.get(0),
        )
        .expect("count cancelled calls");
    assert_eq!(cancelled, 1, "the running sleep was recorded as cancelled");
    let replay = p.run(&["replay", &run]).ok();
    let summary = "recorded calls matched, no divergence (recorded status: ok)\n";
    assert!(
        replay.stderr.starts_with(&live.stderr) && replay.stderr.ends_with(summary),
        "replay differs from the live run\n--- live stderr:\n{}\n--- replay stderr:\n{}",
        live.stderr,
        replay.stderr
    );
}

#[test]
fn a_terminal_gets_a_redrawn_status_line_and_the_table() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::Stdio;

    let p = Project::new();
    p.write(
        "script.luau",
        r#"
local task = require("stagecraft/task")
local r = task.map({ "a", "b", "c" }, function(x)
  if x == "b" then error("b broke", 0) end
end, { max_fail = 1, limit = 1 })
print(r.ok)
"#,
    );
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors, which are owned below and nowhere else.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "cannot open a pseudo-terminal: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh descriptors from openpty.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut c = p.cmd(&["run", "script.luau"]);
    c.cmd.stdout(Stdio::piped()).stderr(Stdio::from(slave));
    let child = c.cmd.spawn().expect("spawn stagecraft");
    drop(c); // our copy of the terminal's other end: reading ends when the child's closes
    let out = child.wait_with_output().expect("wait for stagecraft");
    let mut tty = Vec::new();
    // Linux ends a pseudo-terminal whose other end is closed with EIO, after the data.
    let _ = std::fs::File::from(master).read_to_end(&mut tty);
    let tty = String::from_utf8_lossy(&tty);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "true\n");
    for want in [
        "\r[0/3] ok 0 failed 0 running 1\x1b[K",
        "\r[1/3] ok 1 failed 0 running 1\x1b[K",
        "\r[2/3] ok 1 failed 1 running 1\x1b[K",
        "\r[3/3] ok 2 failed 1 running 0\x1b[K\r\x1b[K",
        "task.map: 2 ok, 1 failed, 0 cancelled of 3 (max_fail 1)",
        "2  b     failed     b broke",
    ] {
        assert!(tty.contains(want), "the terminal lacks {want:?}:\n{tty:?}");
    }
}
