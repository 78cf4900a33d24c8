//! Tests: the ledger — what a run records, the CLI views of it, append-only enforcement, tamper
//! detection, crash safety (kill -9), concurrent writers, durability while a run is still going,
//! dead-run detection and ledger placement.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Out, Project};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The ledger path as the binary prints it (the project root is canonicalised).
fn printed_ledger(p: &Project) -> PathBuf {
    p.root()
        .canonicalize()
        .expect("canonical project root")
        .join(".stagecraft/ledger.db")
}

/// Start the binary in the background; output is discarded unless `capture`.
fn spawn(p: &Project, args: &[&str], capture: bool) -> Child {
    let mut c = p.cmd(args).cmd;
    if capture {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        c.stdout(Stdio::null()).stderr(Stdio::null());
    }
    c.spawn().expect("spawn stagecraft")
}

fn finish(child: Child) -> Out {
    let out = child.wait_with_output().expect("wait for stagecraft");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Poll `probe` every few milliseconds until it yields a value; panic naming `what` after
/// `deadline`. This waits for a condition, it is not a sleep standing in for synchronisation.
fn poll_until<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A second connection to a ledger that may not exist yet (never creates it).
fn try_open(db: &Path) -> Option<Connection> {
    if !db.exists() {
        return None;
    }
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).ok()
}

fn count(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> i64 {
    conn.query_row(sql, args, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// How many exec.run calls of run `id` have started (their call.start is committed): polling
/// for BLOCKING_SCRIPT's second one waits until the script is blocked on the fifo.
fn exec_starts(conn: &Connection, id: &str) -> Option<i64> {
    conn.query_row(
        "SELECT count(*) FROM entries WHERE run_id = ?1 AND kind = 'call.start' AND op = 'exec.run'",
        [id],
        |r| r.get(0),
    )
    .ok()
}

/// Whether the run started by process `pid` is in the ledger yet (for polling: the database
/// may exist before its schema does).
fn has_run_of_pid(conn: &Connection, pid: u32) -> bool {
    run_id_of_pid(conn, pid).is_some()
}

fn run_id_of_pid(conn: &Connection, pid: u32) -> Option<String> {
    conn.query_row(
        "SELECT run_id FROM entries WHERE kind = 'run.start' AND json_extract(args, '$.pid') = ?1",
        [pid],
        |r| r.get(0),
    )
    .ok()
}

/// `ledger ls --json` as a list of runs.
fn runs(p: &Project) -> Vec<Value> {
    let v = p
        .run(&["ledger", "ls", "--json", "--limit", "1000"])
        .ok()
        .json();
    v.as_array().expect("ledger ls --json is an array").clone()
}

fn show(p: &Project, run: &str) -> Value {
    p.run(&["ledger", "show", run, "--json"]).ok().json()
}

/// Drop every trigger, returning the SQL that recreates them.
fn drop_triggers(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        .expect("list triggers");
    let triggers: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query triggers")
        .collect::<rusqlite::Result<_>>()
        .expect("read triggers");
    assert_eq!(triggers.len(), 6, "the schema has six append-only triggers");
    for (name, _) in &triggers {
        conn.execute_batch(&format!("DROP TRIGGER {name}"))
            .expect("drop trigger");
    }
    triggers.into_iter().map(|(_, sql)| sql).collect()
}

/// Tamper with the triggers out of the way, then put them back, so that only the tampering
/// itself is left for `ledger verify` to find.
fn tamper(p: &Project, f: impl FnOnce(&Connection)) {
    let conn = p.db();
    let triggers = drop_triggers(&conn);
    f(&conn);
    for sql in triggers {
        conn.execute_batch(&sql).expect("recreate trigger");
    }
}

/// The entry hash as the ledger defines it: sha256(prev_hash || "\n" || canonical JSON array).
fn entry_hash(conn: &Connection, seq: i64, prev: &str) -> String {
    conn.query_row(
        "SELECT run_id, kind, task, idx, op, args, result, error, started_at, duration_us \
         FROM entries WHERE seq = ?1",
        [seq],
        |r| {
            let canonical = json!([
                seq,
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
            ]);
            let mut h = Sha256::new();
            h.update(prev.as_bytes());
            h.update(b"\n");
            h.update(canonical.to_string().as_bytes());
            Ok(hex::encode(h.finalize()))
        },
    )
    .expect("read entry")
}

/// What an attacker without the key can do: recompute every hash from `from` to the end.
/// `mac` chooses what goes in the signature column; `key_id` optionally relabels the signer.
fn rehash_from(conn: &Connection, from: i64, mac: Option<&str>, key_id: Option<&str>) {
    let last = count(conn, "SELECT max(seq) FROM entries", []);
    let mut prev: String = conn
        .query_row("SELECT hash FROM entries WHERE seq = ?1", [from - 1], |r| {
            r.get(0)
        })
        .expect("hash before the edit");
    for seq in from..=last {
        let hash = entry_hash(conn, seq, &prev);
        conn.execute(
            "UPDATE entries SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev, hash, seq],
        )
        .expect("rewrite hash");
        if let Some(m) = mac {
            conn.execute(
                "UPDATE entries SET mac = ?1 WHERE seq = ?2",
                params![m, seq],
            )
            .expect("forge mac");
        }
        if let Some(k) = key_id {
            conn.execute(
                "UPDATE entries SET key_id = ?1 WHERE seq = ?2",
                params![k, seq],
            )
            .expect("relabel key");
        }
        prev = hash;
    }
}

/// `ledger verify` exits 6, names `first_bad` (if any) and mentions `problem`; `--json` agrees.
fn verify_fails(p: &Project, first_bad: Option<i64>, problem: &str) {
    let path = printed_ledger(p);
    let out = p.run(&["ledger", "verify"]).code(6);
    match first_bad {
        Some(seq) => out.stderr_has(&format!(
            "error: ledger {} FAILED verification (first bad entry: {seq})\n",
            path.display()
        )),
        None => out.stderr_has(&format!(
            "error: ledger {} FAILED verification\n",
            path.display()
        )),
    }
    .stderr_has(problem)
    .stderr_has("hint: the ledger was modified outside Stagecraft");
    let report = p.run(&["ledger", "verify", "--json"]).code(6).json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_seq"], json!(first_bad), "{report:#}");
}

fn verify_ok(p: &Project) -> Out {
    p.run(&["ledger", "verify"])
        .ok()
        .stdout_has(&format!("ledger {} OK: ", printed_ledger(p).display()))
}

/// The seq of the `n`th (from 0) entry of this kind and op, in ledger order.
fn nth_seq(conn: &Connection, kind: &str, op: &str, n: i64) -> i64 {
    count(
        conn,
        "SELECT seq FROM entries WHERE kind = ?1 AND op = ?2 ORDER BY seq LIMIT 1 OFFSET ?3",
        params![kind, op, n],
    )
}

/// Every entry of the ledger as (kind, op), in sequence order.
fn kinds_and_ops(conn: &Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare("SELECT kind, op FROM entries ORDER BY seq")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// Three runs of five entries each: run.start, os.time, exec.run's call.start and call, run.end
/// (seqs 1..=15). The tamper tests pick their targets by query; this pins where those are.
fn three_runs() -> Project {
    let p = Project::new().file(
        "tick.luau",
        "local exec = require(\"stagecraft/exec\")\n\
         local t = os.time()\n\
         exec.run({ \"sh\", \"-c\", \"echo tick\" })\n\
         return t\n",
    );
    for _ in 0..3 {
        p.run(&["run", "tick.luau", "--allow", "exec:sh"]).ok();
    }
    let conn = p.db();
    assert_eq!(count(&conn, "SELECT count(*) FROM entries", []), 15);
    assert_eq!(count(&conn, "SELECT max(seq) FROM entries", []), 15);
    let one_run = [
        ("run.start", "run.start"),
        ("call", "os.time"),
        ("call.start", "exec.run"),
        ("call", "exec.run"),
        ("run.end", "run.end"),
    ];
    let want: Vec<(String, String)> = (0..3)
        .flat_map(|_| one_run)
        .map(|(k, o)| (k.to_string(), o.to_string()))
        .collect();
    assert_eq!(kinds_and_ops(&conn), want);
    drop(conn);
    p.run(&["ledger", "verify"]).ok().stdout_is(&format!(
        "ledger {} OK: 15 entries in 3 runs, chain intact, signed head at entry 15\n",
        printed_ledger(&p).display()
    ));
    p
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Ledger Test",
            "-c",
            "user.email=ledger@example.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("git {args:?} cannot start (is git installed?): {e}"));
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0, "gethostname");
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("fifo path");
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Open the write end of a fifo once a reader has it open (non-blocking attempts, polled).
fn open_fifo_writer(path: &Path) -> std::fs::File {
    poll_until(
        "the script to open the fifo",
        Duration::from_secs(10),
        || {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .ok()
        },
    )
}

/// Lets the `sh` left behind by a killed run read its line and exit (at the end of the test).
struct ReleaseOnDrop(PathBuf);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0)
        {
            let _ = f.write_all(b"bye\n");
        }
    }
}

/// A script that records `run.start` and two calls (os.time; exec.run's call.start and call),
/// then blocks until a line arrives on `fifo`, in an exec.run whose call.start is recorded.
const BLOCKING_SCRIPT: &str = "local exec = require(\"stagecraft/exec\")\n\
     local t = os.time()\n\
     exec.run({ \"sh\", \"-c\", \"echo before\" })\n\
     local r = exec.run({ \"sh\", \"-c\", \"read x < \\\"$1\\\"; echo \\\"got $x\\\"\", \"sh\", (...)[1] })\n\
     os.time()\n\
     return r.stdout\n";

// ---------------------------------------------------------------------------------------------
// 1. Recording and the CLI views
// ---------------------------------------------------------------------------------------------

const DEPLOY: &str = "local exec = require(\"stagecraft/exec\")\n\
     local util = require(\"./lib/util\")\n\
     local t = os.time()\n\
     local r = exec.run({ \"sh\", \"-c\", \"echo hi\" })\n\
     local ok, err = pcall(exec.run, { \"no-such-program-xyz\" })\n\
     assert(not ok and err.kind == \"not_found\")\n\
     return { n = util.n, out = r.stdout, later = t > 0 }\n";

const UTIL: &str = "return { n = 7 }\n";

#[test]
fn a_run_records_its_calls_modules_and_metadata() {
    let p = Project::new()
        .file("deploy.luau", DEPLOY)
        .file("lib/util.luau", UTIL)
        .file("README", "tracked\n");
    git(p.root(), &["init", "-q"]);
    git(p.root(), &["add", "-A"]);
    git(p.root(), &["commit", "-qm", "init"]);
    let commit = git(p.root(), &["rev-parse", "HEAD"]);

    let out = p
        .cmd(&[
            "run",
            "deploy.luau",
            "--allow",
            "exec:sh",
            "--json",
            "a1",
            "k=v",
        ])
        .env("USER", "ledger-tester")
        .output()
        .ok();
    let outcome = out.json();
    assert_eq!(outcome["status"], "ok");
    assert_eq!(
        outcome["result"],
        json!({ "n": 7, "out": "hi\n", "later": true })
    );
    let run_id = outcome["run_id"].as_str().expect("run id").to_string();

    // ledger show --json: the run row and its calls.
    let shown = show(&p, "last");
    let run = &shown["run"];
    assert_eq!(run["id"], run_id.as_str());
    assert_eq!(run["script"], "deploy.luau");
    assert_eq!(run["status"], "ok");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["calls"], 3);
    assert_eq!(run["replay_of"], Value::Null);
    let meta = &run["meta"];
    assert_eq!(
        meta["script_sha256"],
        sha256_hex(DEPLOY.as_bytes()).as_str()
    );
    assert_eq!(meta["args"], json!(["a1", "k=v"]));
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["git"]["commit"], commit.as_str());
    assert_eq!(meta["user"], "ledger-tester");
    assert_eq!(meta["host"], host_name().as_str());
    assert_eq!(meta["grants"], json!(["exec:sh"]));
    let end = &run["end"];
    assert_eq!(end["status"], "ok");
    assert_eq!(end["exit_code"], 0);
    assert_eq!(end["git_dirty"], false);
    assert!(run["ended_at"].as_i64().expect("ended_at") >= run["started_at"].as_i64().unwrap());

    let entries = shown["entries"].as_array().expect("entries");
    let ops: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("module", "lib/util.luau"),
            ("call", "os.time"),
            ("call", "exec.run"),
            ("call", "exec.run"),
        ]
    );
    let util_sha = sha256_hex(UTIL.as_bytes());
    assert_eq!(
        entries[0]["args"],
        json!({ "path": "lib/util.luau", "sha256": util_sha })
    );
    let (time, echo, missing) = (&entries[1], &entries[2], &entries[3]);
    for (i, e) in [time, echo, missing].into_iter().enumerate() {
        assert_eq!(e["task"], "main");
        assert_eq!(e["idx"], i as i64);
        assert!(e["started_at"].as_i64().unwrap() >= run["started_at"].as_i64().unwrap());
        assert!(e["duration_us"].as_i64().unwrap() >= 0);
    }
    assert_eq!(time["args"], json!({}));
    assert!(time["result"].as_f64().expect("os.time result") > 1.6e9);
    assert_eq!(time["error"], Value::Null);
    assert_eq!(
        echo["args"],
        json!({ "argv": ["sh", "-c", "echo hi"], "opts": {} })
    );
    assert_eq!(
        echo["result"],
        json!({ "code": 0, "stdout": "hi\n", "stderr": "" })
    );
    assert!(echo["duration_us"].as_i64().unwrap() > 0);
    assert_eq!(missing["args"]["argv"], json!(["no-such-program-xyz"]));
    assert_eq!(missing["result"], Value::Null);
    assert_eq!(missing["error"]["kind"], "not_found");
    assert_eq!(
        missing["error"]["message"],
        "exec.run: program 'no-such-program-xyz' not found"
    );

    // The canonical args are what the database holds, byte for byte, in the call entry and in
    // the call.start written before it.
    let conn = p.db();
    for kind in ["call", "call.start"] {
        let raw: String = conn
            .query_row(
                "SELECT args FROM entries WHERE run_id = ?1 AND kind = ?2 AND op = 'exec.run' \
                 ORDER BY seq LIMIT 1",
                [&run_id, kind],
                |r| r.get(0),
            )
            .expect("raw args");
        assert_eq!(raw, r#"{"argv":["sh","-c","echo hi"],"opts":{}}"#, "{kind}");
    }

    // Sources: the script and the module, by sha256.
    let source = |sha: &str| -> Vec<u8> {
        conn.query_row(
            "SELECT content FROM sources WHERE sha256 = ?1",
            [sha],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("source {sha}: {e}"))
    };
    assert_eq!(source(&sha256_hex(DEPLOY.as_bytes())), DEPLOY.as_bytes());
    assert_eq!(source(&util_sha), UTIL.as_bytes());

    // ledger ls, text and JSON.
    p.run(&["ledger", "ls"])
        .ok()
        .stdout_has("RUN                         STATUS       EXIT   CALLS  STARTED                   SCRIPT\n")
        .stdout_has(&format!("{run_id}  ok              0       3  "))
        .stdout_has("  deploy.luau\n");
    let listed = runs(&p);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], run_id.as_str());
    assert_eq!(listed[0]["status"], "ok");
    assert_eq!(listed[0]["calls"], 3);

    // ledger show by id prefix, text.
    p.run(&["ledger", "show", &run_id[..12]])
        .ok()
        .stdout_has(&format!("run       {run_id}\n"))
        .stdout_has(&format!(
            "script    deploy.luau (sha256 {})\n",
            sha256_hex(DEPLOY.as_bytes())
        ))
        .stdout_has("status    ok (exit 0)\n")
        .stdout_has("args      [\"a1\",\"k=v\"]\n")
        .stdout_has(&format!("git       {commit}\n"))
        .stdout_has(&format!(
            "by        ledger-tester@{} (stagecraft {})\n",
            host_name(),
            env!("CARGO_PKG_VERSION")
        ))
        .stdout_has("   SEQ  TASK            OP                     TIME  ARGS -> RESULT\n")
        .stdout_has("(module)        lib/util.luau")
        .stdout_has("main            os.time ")
        .stdout_has(
            r#"{"argv":["sh","-c","echo hi"],"opts":{}} -> {"code":0,"stderr":"","stdout":"hi\n"}"#,
        )
        .stdout_has("ERROR exec.run: program 'no-such-program-xyz' not found")
        .stdout_lacks("(no result");

    // ledger export: one JSON line per entry, in sequence order, hashes as stored.
    let export = p.run(&["ledger", "export"]).ok();
    let lines: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("export line {l}: {e}")))
        .collect();
    assert_eq!(
        lines.len() as i64,
        count(&conn, "SELECT count(*) FROM entries", [])
    );
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "run.start",
            "module",
            "call",
            "call.start",
            "call",
            "call.start",
            "call",
            "run.end"
        ]
    );
    for (i, l) in lines.iter().enumerate() {
        let seq = i as i64 + 1;
        assert_eq!(l["seq"], seq);
        assert_eq!(l["run_id"], run_id.as_str());
        let (hash, mac): (String, String) = conn
            .query_row("SELECT hash, mac FROM entries WHERE seq = ?1", [seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("stored hash");
        assert_eq!(l["hash"], hash.as_str());
        assert_eq!(l["mac"], mac.as_str());
    }
    assert_eq!(lines[0]["args"]["script"], "deploy.luau");
    assert_eq!(lines[7]["result"]["status"], "ok");
    assert_eq!(lines[6]["error"]["kind"], "not_found");
    // Each exec.run wrote its call.start (same task, idx, op and args; no outcome; no duration)
    // right before its call; os.time, synchronous, wrote only its call.
    assert_eq!(lines[2]["op"], "os.time");
    for (start, done) in [(&lines[3], &lines[4]), (&lines[5], &lines[6])] {
        assert_eq!(start["op"], "exec.run");
        for field in ["task", "idx", "op", "args"] {
            assert_eq!(start[field], done[field], "{field}");
        }
        assert_eq!(start["result"], Value::Null);
        assert_eq!(start["error"], Value::Null);
        assert_eq!(start["duration_us"], 0);
    }
    assert_eq!(lines[4]["idx"], 1);
    assert_eq!(lines[6]["idx"], 2);
    assert_eq!(
        p.run(&["ledger", "export", "--json"]).ok().stdout,
        export.stdout
    );

    let report = p.run(&["ledger", "verify", "--json"]).ok().json();
    assert_eq!(report["ok"], true);
    assert_eq!(report["entries"], 8);
    assert_eq!(report["runs"], 1);
    assert_eq!(report["checkpoint_seq"], 8);
    assert_eq!(report["first_bad_seq"], Value::Null);
    drop(conn);

    // A modified tracked file makes the next run dirty.
    p.write("README", "changed\n");
    p.run(&["run", "deploy.luau", "--allow", "exec:sh"]).ok();
    let dirty = show(&p, "last");
    assert_eq!(dirty["run"]["meta"]["git"]["commit"], commit.as_str());
    assert_eq!(dirty["run"]["end"]["git_dirty"], true);
    p.run(&["ledger", "show", "last"])
        .ok()
        .stdout_has(&format!("git       {commit} (dirty)\n"));

    // Replay uses the recorded sources: editing the files on disk changes nothing.
    p.write("deploy.luau", "error('edited after the run')\n");
    p.write("lib/util.luau", "error('edited too')\n");
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("3 of 3 recorded calls matched, no divergence (recorded status: ok)");
}

#[test]
fn an_empty_ledger_lists_no_runs_and_a_missing_one_is_an_error() {
    let p = Project::new();
    p.run(&["ledger", "ls"])
        .code(7)
        .stderr_has("error: no ledger at ")
        .stderr_has("hint: run a script first");
    p.run(&["ledger", "verify"]).code(7);
    p.script("return 1", &[]).ok();
    p.run(&["ledger", "show", "NOPE"])
        .code(2)
        .stderr_has("no run 'NOPE' in the ledger");
}

// ---------------------------------------------------------------------------------------------
// 2. Append-only
// ---------------------------------------------------------------------------------------------

#[test]
fn updates_and_deletes_are_refused_by_sqlite() {
    let p = Project::new();
    p.script("return os.time()", &[]).ok();
    let conn = p.db();
    for sql in [
        "UPDATE entries SET args = '{}' WHERE seq = 1",
        "DELETE FROM entries WHERE seq = 1",
        "DELETE FROM entries",
        "UPDATE sources SET content = x'00'",
        "DELETE FROM sources",
        "UPDATE meta SET value = 'x' WHERE key = 'ledger_id'",
        "DELETE FROM meta",
    ] {
        let err = conn
            .execute(sql, [])
            .expect_err(&format!("{sql} must be refused"));
        assert!(
            err.to_string().contains("the ledger is append-only"),
            "{sql}: {err}"
        );
    }
    assert_eq!(count(&conn, "SELECT count(*) FROM entries", []), 3);
    drop(conn);
    verify_ok(&p);
}

// ---------------------------------------------------------------------------------------------
// 3. Tampering
// ---------------------------------------------------------------------------------------------

#[test]
fn tamper_edited_args_are_named() {
    // The second run's os.time call, in the middle of the ledger.
    let p = three_runs();
    let target = nth_seq(&p.db(), "call", "os.time", 1);
    tamper(&p, |c| {
        c.execute(
            "UPDATE entries SET args = '{\"forged\":true}' WHERE seq = ?1",
            [target],
        )
        .expect("edit");
    });
    verify_fails(
        &p,
        Some(target),
        &format!("entry {target} was modified (hash mismatch)"),
    );

    // A call.start entry is chained and checked like any other.
    let p = three_runs();
    let target = nth_seq(&p.db(), "call.start", "exec.run", 1);
    tamper(&p, |c| {
        c.execute(
            "UPDATE entries SET args = '{\"forged\":true}' WHERE seq = ?1",
            [target],
        )
        .expect("edit");
    });
    verify_fails(
        &p,
        Some(target),
        &format!("entry {target} was modified (hash mismatch)"),
    );
}

#[test]
fn tamper_deleted_middle_entry_is_named() {
    // The second run's exec.run call (its result), in the middle of the ledger.
    let p = three_runs();
    let target = nth_seq(&p.db(), "call", "exec.run", 1);
    tamper(&p, |c| {
        c.execute("DELETE FROM entries WHERE seq = ?1", [target])
            .expect("delete");
    });
    verify_fails(
        &p,
        Some(target),
        &format!("entries {target}..{target} are missing (deleted)"),
    );
}

#[test]
fn tamper_truncated_tail_is_named() {
    // Everything after the third run's run.start, from its first call on.
    let p = three_runs();
    let conn = p.db();
    let head = count(&conn, "SELECT max(seq) FROM entries", []);
    let from = nth_seq(&conn, "call", "os.time", 2);
    assert_eq!(from, nth_seq(&conn, "run.start", "run.start", 2) + 1);
    drop(conn);
    tamper(&p, |c| {
        c.execute("DELETE FROM entries WHERE seq >= ?1", [from])
            .expect("truncate");
    });
    verify_fails(
        &p,
        Some(from),
        &format!(
            "ledger truncated: the signed head is entry {head} but the database ends at {}",
            from - 1
        ),
    );
}

#[test]
fn tamper_rehashed_chain_with_stale_or_forged_macs_is_named() {
    // The second run's os.time call is edited and the chain re-hashed from there.
    let p = three_runs();
    let target = nth_seq(&p.db(), "call", "os.time", 1);
    tamper(&p, |c| {
        c.execute(
            "UPDATE entries SET args = '{\"x\":1}' WHERE seq = ?1",
            [target],
        )
        .expect("edit");
        rehash_from(c, target, None, None);
    });
    verify_fails(
        &p,
        Some(target),
        &format!("entry {target} has an invalid signature (re-hashed?)"),
    );

    let p = three_runs();
    let target = nth_seq(&p.db(), "call", "os.time", 1);
    tamper(&p, |c| {
        c.execute(
            "UPDATE entries SET args = '{\"x\":1}' WHERE seq = ?1",
            [target],
        )
        .expect("edit");
        rehash_from(c, target, Some(&"ab".repeat(32)), None);
    });
    verify_fails(
        &p,
        Some(target),
        &format!("entry {target} has an invalid signature (re-hashed?)"),
    );
}

#[test]
fn tamper_rehashed_chain_relabelled_to_another_key_is_caught_by_the_checkpoint() {
    let p = three_runs();
    let conn = p.db();
    let target = nth_seq(&conn, "call", "os.time", 1);
    let head = count(&conn, "SELECT max(seq) FROM entries", []);
    drop(conn);
    tamper(&p, |c| {
        c.execute(
            "UPDATE entries SET args = '{\"x\":1}' WHERE seq = ?1",
            [target],
        )
        .expect("edit");
        rehash_from(c, target, Some(&"cd".repeat(32)), Some("0123456789abcdef"));
    });
    verify_fails(
        &p,
        Some(target),
        &format!("chain rewritten: entry {head} no longer matches the signed head"),
    );
}

#[test]
fn tamper_deleted_or_forged_checkpoint_is_caught() {
    let p = three_runs();
    let head = p.path(".stagecraft/ledger.db.head");
    let original = std::fs::read_to_string(&head).expect("head checkpoint");
    std::fs::remove_file(&head).expect("delete head");
    verify_fails(&p, Some(1), "head checkpoint");

    // Moved back to an earlier entry (hiding a truncation), keeping the old signature.
    let mut forged: Value = serde_json::from_str(&original).expect("head is JSON");
    // The second run's run.end.
    forged["seq"] = json!(nth_seq(&p.db(), "run.end", "run.end", 1));
    std::fs::write(&head, forged.to_string()).expect("write head");
    verify_fails(
        &p,
        None,
        "head checkpoint signature is invalid (forged checkpoint)",
    );

    // A head signed by another user's key cannot vouch for this ledger.
    let other = three_runs();
    std::fs::copy(other.path(".stagecraft/ledger.db.head"), &head).expect("copy head");
    verify_fails(&p, None, "head checkpoint is signed by another key");

    std::fs::write(&head, original).expect("restore head");
    verify_ok(&p);
}

#[test]
fn tamper_replaced_database_is_caught() {
    // From another project and another user (another key).
    let p = three_runs();
    let other = three_runs();
    std::fs::copy(other.ledger(), p.ledger()).expect("replace db");
    verify_fails(
        &p,
        Some(1),
        "head checkpoint belongs to another ledger (database replaced)",
    );

    // From another project of the same user: every entry signature is valid, the head is not.
    let p = three_runs();
    let mine = Project::new().file("x.luau", "return os.time()");
    mine.cmd(&["run", "x.luau"])
        .env("STAGECRAFT_HOME", &p.home().display().to_string())
        .output()
        .ok();
    std::fs::copy(mine.ledger(), p.ledger()).expect("replace db");
    verify_fails(
        &p,
        Some(1),
        "head checkpoint belongs to another ledger (database replaced)",
    );
}

#[test]
fn tamper_dropped_trigger_is_caught() {
    let p = three_runs();
    p.db()
        .execute_batch("DROP TRIGGER entries_no_delete")
        .expect("drop trigger");
    verify_fails(
        &p,
        None,
        "append-only trigger entries_no_delete was removed",
    );
}

#[test]
fn tamper_modified_or_removed_source_is_named() {
    let p = three_runs();
    let sha = sha256_hex(p.read("tick.luau").as_bytes());
    tamper(&p, |c| {
        c.execute(
            "UPDATE sources SET content = x'6572726f72282729' WHERE sha256 = ?1",
            [&sha],
        )
        .expect("edit source");
    });
    // Entry 1 (the first run.start) is the first entry that uses the script source.
    verify_fails(&p, Some(1), &format!("recorded source {sha} was modified"));

    let p = three_runs();
    tamper(&p, |c| {
        c.execute("DELETE FROM sources WHERE sha256 = ?1", [&sha])
            .expect("delete source");
    });
    verify_fails(
        &p,
        Some(1),
        &format!("recorded source {sha} (used by entry 1) is missing"),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Crash safety
// ---------------------------------------------------------------------------------------------

/// `n` rounds of five os.time calls and one exec call.
const BUSY: &str = "local exec = require(\"stagecraft/exec\")\n\
     local n = tonumber((...)[1])\n\
     for _ = 1, n do\n\
       for _ = 1, 5 do os.time() end\n\
       exec.run({ \"true\" })\n\
     end\n\
     return n\n";

#[test]
fn kill_9_at_any_point_leaves_a_verifiable_ledger() {
    const ITERATIONS: u64 = 24;
    let p = Project::new().file("busy.luau", BUSY);
    let db = p.ledger();
    let started = Instant::now();
    let mut killed: Vec<(u32, bool)> = Vec::new(); // (pid, run.start was seen before the kill)
    let mut completed: Vec<u32> = Vec::new();
    for i in 0..ITERATIONS {
        // Every fifth run is short enough to finish before its kill lands.
        let rounds = if i % 5 == 4 { "1" } else { "4000" };
        let mut child = spawn(
            &p,
            &["run", "busy.luau", "--allow", "exec:true", rounds],
            false,
        );
        let pid = child.id();
        // Odd iterations: the delay counts from the run being in the ledger (the kill lands
        // among the writer's commits); even ones: from the spawn (open, schema, first batch).
        let seen = i % 2 == 1;
        if seen {
            poll_until("the run to be recorded", Duration::from_secs(10), || {
                let done = child.try_wait().expect("try_wait").is_some();
                let recorded = try_open(&db).is_some_and(|c| has_run_of_pid(&c, pid));
                (done || recorded).then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(i * 7 % 120)); // the fault injection point
        let _ = child.kill();
        let status = child.wait().expect("wait for the killed run");
        match (status.code(), status.signal()) {
            (Some(0), _) => completed.push(pid),
            (_, Some(libc::SIGKILL)) => killed.push((pid, seen)),
            other => panic!("iteration {i}: unexpected exit {other:?}"),
        }
        if db.exists() {
            let conn = p.db();
            let integrity: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity_check");
            assert_eq!(integrity, "ok", "iteration {i}");
            drop(conn);
            let out = p.run(&["ledger", "verify"]);
            assert_eq!(out.code, 0, "iteration {i}: verify failed\n{}", out.stderr);
        }
    }
    let elapsed = started.elapsed();

    let conn = p.db();
    let listed = runs(&p);
    let by_pid: BTreeMap<i64, &Value> = listed
        .iter()
        .map(|r| (r["meta"]["pid"].as_i64().expect("pid in run.start"), r))
        .collect();
    assert_eq!(by_pid.len(), listed.len(), "one run per process");
    let (mut recorded_kills, mut interrupted) = (0, 0i64);
    for (pid, seen) in &killed {
        match by_pid.get(&i64::from(*pid)) {
            Some(run) => {
                recorded_kills += 1;
                // A kill landing after the run's end was committed leaves a finished run.
                let finished = run["status"] == "ok" && run["end"]["status"] == "ok";
                assert!(run["status"] == "interrupted" || finished, "{run:#}");
                interrupted += i64::from(!finished);
                // What was committed is a prefix of the run: call numbers have no gaps.
                let id = run["id"].as_str().unwrap();
                let calls = count(
                    &conn,
                    "SELECT count(*) FROM entries WHERE run_id = ?1 AND kind = 'call'",
                    [id],
                );
                let max_idx = count(
                    &conn,
                    "SELECT coalesce(max(idx) + 1, 0) FROM entries WHERE run_id = ?1 AND kind = 'call'",
                    [id],
                );
                assert_eq!(calls, max_idx, "run {id}: calls missing in the middle");
            }
            None => assert!(!seen, "run of pid {pid} was seen in the ledger, then lost"),
        }
    }
    for pid in &completed {
        let run = by_pid
            .get(&i64::from(*pid))
            .unwrap_or_else(|| panic!("completed run of pid {pid} is not in the ledger"));
        assert_eq!(run["status"], "ok");
        assert_eq!(run["exit_code"], 0);
    }
    // Every killed run but the newest was swept by the run after it.
    let swept = count(
        &conn,
        "SELECT count(*) FROM entries WHERE kind = 'run.end' \
         AND json_extract(result, '$.status') = 'interrupted'",
        [],
    );
    assert!(swept + 1 >= interrupted, "{swept} of {interrupted} swept");
    assert!(
        killed.iter().filter(|(_, seen)| *seen).count() >= (ITERATIONS as usize) / 3,
        "too few runs were killed mid-flight: {killed:?}"
    );
    assert!(!completed.is_empty(), "no run completed before its kill");
    eprintln!(
        "kill -9 loop: {ITERATIONS} iterations in {elapsed:?}: {} killed ({recorded_kills} of \
         them recorded, {interrupted} interrupted), {} completed, {} entries",
        killed.len(),
        completed.len(),
        count(&conn, "SELECT count(*) FROM entries", [])
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "the loop took {elapsed:?}"
    );
}

/// Processes whose parent is `parent` and whose command is `comm`, as (pid, process group), read
/// from /proc.
fn children_named(parent: u32, comm: &str) -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for d in dir.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(d.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ppid = fields.get(1).and_then(|f| f.parse::<u32>().ok());
        let pgrp = fields.get(2).and_then(|f| f.parse::<i32>().ok());
        if &stat[open + 1..close] == comm
            && ppid == Some(parent)
            && let Some(pgrp) = pgrp
        {
            found.push((pid, pgrp));
        }
    }
    found
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// The run and its `sleep` (in its own process group), killed with SIGKILL however the test
/// ends, so that no `sleep 30` outlives it.
struct KillOnDrop {
    run: Option<Child>,
    group: Option<i32>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(run) = self.run.as_mut() {
            let groups = children_named(run.id(), "sleep");
            let _ = run.kill();
            let _ = run.wait();
            for (_, pgrp) in groups {
                // SAFETY: plain kill(2) on a process group this test started.
                unsafe { libc::kill(-pgrp, libc::SIGKILL) };
            }
        }
        if let Some(pgrp) = self.group.take() {
            // SAFETY: as above.
            unsafe { libc::kill(-pgrp, libc::SIGKILL) };
        }
    }
}

#[test]
fn kill_9_during_a_long_call_leaves_its_start_in_the_ledger() {
    let p = Project::new().file(
        "long.luau",
        "local exec = require(\"stagecraft/exec\")\n\
         for _ = 1, 3 do os.time() end\n\
         exec.run({ \"sleep\", \"30\" })\n\
         return 1\n",
    );
    let child = spawn(&p, &["run", "long.luau", "--allow", "exec:sleep"], false);
    let pid = child.id();
    let mut guard = KillOnDrop {
        run: Some(child),
        group: None,
    };

    // The call.start of exec.run is committed before the sleep is even spawned.
    let (id, start_seq) = poll_until(
        "the call.start of exec.run to be committed",
        Duration::from_secs(10),
        || {
            let run = guard.run.as_mut().expect("the run");
            if let Some(status) = run.try_wait().expect("try_wait") {
                panic!("the run ended before it was killed: {status}");
            }
            let c = try_open(&p.ledger())?;
            let id = run_id_of_pid(&c, pid)?;
            let seq: i64 = c
                .query_row(
                    "SELECT seq FROM entries WHERE run_id = ?1 AND kind = 'call.start' \
                     AND op = 'exec.run'",
                    [&id],
                    |r| r.get(0),
                )
                .ok()?;
            Some((id, seq))
        },
    );
    // The sleep, once it runs, leads its own process group.
    let (sleep_pid, pgid) = poll_until("sleep to be running", Duration::from_secs(10), || {
        children_named(pid, "sleep").into_iter().next()
    });
    assert_eq!(
        pgid, sleep_pid,
        "exec.run puts the child in its own process group"
    );
    guard.group = Some(pgid);

    // kill -9 the run mid-call, then the orphaned sleep's group.
    let mut run = guard.run.take().expect("the run");
    run.kill().expect("kill -9");
    let status = run.wait().expect("wait for the killed run");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // SAFETY: plain kill(2) on the process group of the sleep this test started.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 -{pgid}");
    guard.group = None;
    poll_until("sleep to die", Duration::from_secs(10), || {
        is_dead(sleep_pid).then_some(())
    });

    // ledger show: the three os.time calls, then exec.run started but never finished.
    let line = format!(
        "{start_seq:>6}  {:<14}  {:<16}  {:>7}us  {} -> (no result: the run ended during this call)\n",
        "main", "exec.run", 0, r#"{"argv":["sleep","30"],"opts":{}}"#
    );
    let text = p
        .run(&["ledger", "show", "last"])
        .ok()
        .stdout_has(&format!("run       {id}\n"))
        .stdout_has("status    interrupted")
        .stdout_has(&line);
    assert_eq!(
        text.stdout.matches("(no result").count(),
        1,
        "{}",
        text.stdout
    );
    assert_eq!(text.stdout.matches("main            os.time ").count(), 3);

    // ledger show --json: the same, the unfinished call as kind call.start.
    let shown = show(&p, "last");
    assert_eq!(shown["run"]["id"], id.as_str());
    assert_eq!(shown["run"]["status"], "interrupted");
    assert_eq!(shown["run"]["exit_code"], Value::Null);
    assert_eq!(shown["run"]["end"], Value::Null);
    assert_eq!(shown["run"]["calls"], 3);
    let entries = shown["entries"].as_array().expect("entries");
    let ops: Vec<(&str, &str, i64)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["op"].as_str().unwrap(),
                e["idx"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("call", "os.time", 0),
            ("call", "os.time", 1),
            ("call", "os.time", 2),
            ("call.start", "exec.run", 3),
        ]
    );
    let started = &entries[3];
    assert_eq!(started["seq"], start_seq);
    assert_eq!(started["task"], "main");
    assert_eq!(
        started["args"],
        json!({ "argv": ["sleep", "30"], "opts": {} })
    );
    assert_eq!(started["result"], Value::Null);
    assert_eq!(started["error"], Value::Null);
    assert_eq!(started["duration_us"], 0);

    // The chain is intact, and the run lists as interrupted.
    verify_ok(&p).stdout_has(&format!(
        "OK: 5 entries in 1 runs, chain intact, signed head at entry {start_seq}\n"
    ));
    p.run(&["ledger", "ls"])
        .ok()
        .stdout_has(&format!("{id}  interrupted     -       3  "));
    let listed = runs(&p);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "interrupted");
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrency
// ---------------------------------------------------------------------------------------------

/// 2000 os.time calls with a short exec every 100, so the runs overlap for a while.
const MANY: &str = "local exec = require(\"stagecraft/exec\")\n\
     for i = 1, 2000 do\n\
       os.time()\n\
       if i % 100 == 0 then exec.run({ \"sleep\", \"0.02\" }) end\n\
     end\n\
     return 1\n";

#[test]
fn concurrent_runs_make_one_linear_chain() {
    let p = Project::new().file("many.luau", MANY);
    p.script("return 0", &[]).ok(); // the ledger exists; the four runs race on appends only
    let children: Vec<Child> = (0..4)
        .map(|_| spawn(&p, &["run", "many.luau", "--allow", "exec:sleep"], true))
        .collect();
    for c in children {
        finish(c).ok();
    }
    let conn = p.db();
    let n = count(&conn, "SELECT count(*) FROM entries", []);
    assert_eq!(
        count(&conn, "SELECT max(seq) FROM entries", []),
        n,
        "seqs are contiguous"
    );
    verify_ok(&p).stdout_has(&format!("OK: {n} entries in 5 runs, chain intact"));

    let listed = runs(&p);
    let many: Vec<&Value> = listed
        .iter()
        .filter(|r| r["script"] == "many.luau")
        .collect();
    assert_eq!(many.len(), 4);
    let mut spans = Vec::new();
    for run in many {
        assert_eq!(run["status"], "ok");
        assert_eq!(run["calls"], 2020);
        let id = run["id"].as_str().unwrap();
        let mut stmt = conn
            .prepare("SELECT seq, kind, idx FROM entries WHERE run_id = ?1 ORDER BY seq")
            .expect("prepare");
        let rows: Vec<(i64, String, i64)> = stmt
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows.first().map(|r| r.1.as_str()), Some("run.start"));
        assert_eq!(rows.last().map(|r| r.1.as_str()), Some("run.end"));
        let idx: Vec<i64> = rows.iter().filter(|r| r.1 == "call").map(|r| r.2).collect();
        assert_eq!(
            idx,
            (0..2020).collect::<Vec<_>>(),
            "run {id}: calls in order, none lost"
        );
        spans.push((rows[0].0, rows[rows.len() - 1].0));
    }
    spans.sort();
    assert!(
        spans.windows(2).any(|w| w[1].0 < w[0].1),
        "the runs did not overlap, so nothing was tested: {spans:?}"
    );
}

#[test]
fn runs_starting_together_on_a_fresh_project_share_one_ledger() {
    for round in 0..6 {
        let p = Project::new().file("s.luau", "for i = 1, 50 do os.time() end\nreturn 1\n");
        let children: Vec<Child> = (0..4)
            .map(|_| spawn(&p, &["run", "s.luau"], true))
            .collect();
        for c in children {
            let out = finish(c);
            assert_eq!(out.code, 0, "round {round}: {}", out.stderr);
        }
        p.run(&["ledger", "verify"])
            .ok()
            .stdout_has("OK: 208 entries in 4 runs");
        let conn = p.db();
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM meta WHERE key = 'ledger_id'",
                []
            ),
            1
        );
    }
}

#[test]
fn verify_while_a_run_commits_sees_a_consistent_ledger() {
    let p = Project::new().file("many.luau", MANY);
    let child = spawn(&p, &["run", "many.luau", "--allow", "exec:sleep"], true);
    let mut child = Some(child);
    let mut verified = 0;
    while let Some(c) = child.as_mut() {
        if c.try_wait().expect("try_wait").is_some() {
            finish(child.take().unwrap()).ok();
        }
        let started = try_open(&p.ledger()).is_some_and(|c| {
            c.query_row("SELECT count(*) FROM entries", [], |r| r.get::<_, i64>(0))
                .is_ok_and(|n| n > 0)
        });
        if started {
            let out = p.run(&["ledger", "verify"]);
            assert_eq!(out.code, 0, "verify during a run: {}", out.stderr);
            verified += 1;
        }
    }
    assert!(
        verified >= 3,
        "only {verified} verifications overlapped the run"
    );
}

#[test]
fn a_dead_run_swept_by_several_runs_at_once_ends_once() {
    let p = Project::new()
        .file("block.luau", BLOCKING_SCRIPT)
        .file("s.luau", "return 1");
    let fifo = p.path("gate");
    mkfifo(&fifo);
    let fifo_arg = fifo.display().to_string();
    let mut blocked = spawn(
        &p,
        &["run", "block.luau", "--allow", "exec:sh", &fifo_arg],
        false,
    );
    let pid = blocked.id();
    let _release = ReleaseOnDrop(fifo.clone());
    let dead = poll_until(
        "the blocked run to be recorded",
        Duration::from_secs(10),
        || try_open(&p.ledger()).and_then(|c| run_id_of_pid(&c, pid)),
    );
    blocked.kill().expect("kill");
    blocked.wait().expect("wait");
    let children: Vec<Child> = (0..4)
        .map(|_| spawn(&p, &["run", "s.luau"], true))
        .collect();
    for c in children {
        finish(c).ok();
    }
    let conn = p.db();
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM entries WHERE run_id = ?1 AND kind = 'run.end'",
            [&dead]
        ),
        1
    );
    let listed = runs(&p);
    assert_eq!(listed.len(), 5);
    assert_eq!(
        listed.iter().filter(|r| r["id"] == dead.as_str()).count(),
        1
    );
    verify_ok(&p);
}

// ---------------------------------------------------------------------------------------------
// 6. Durability while running
// ---------------------------------------------------------------------------------------------

#[test]
fn entries_are_committed_while_the_run_is_still_going() {
    let p = Project::new().file("block.luau", BLOCKING_SCRIPT);
    let fifo = p.path("gate");
    mkfifo(&fifo);
    let fifo_arg = fifo.display().to_string();
    let child = spawn(
        &p,
        &["run", "block.luau", "--allow", "exec:sh", &fifo_arg],
        true,
    );
    let pid = child.id();
    let spawned = Instant::now();
    let _release = ReleaseOnDrop(fifo.clone()); // should an assertion fail while it is blocked

    let ops = poll_until(
        "run.start, the first calls and the start of the blocking one",
        Duration::from_secs(5),
        || {
            let c = try_open(&p.ledger())?;
            let id = run_id_of_pid(&c, pid)?;
            let mut stmt = c
                .prepare("SELECT kind, op FROM entries WHERE run_id = ?1 ORDER BY seq")
                .ok()?;
            let ops: Vec<(String, String)> = stmt
                .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .ok()?
                .collect::<rusqlite::Result<_>>()
                .ok()?;
            (ops.len() >= 5).then_some(ops)
        },
    );
    eprintln!("entries visible {:?} after spawn", spawned.elapsed());
    assert_eq!(
        ops,
        [
            ("run.start".to_string(), "run.start".to_string()),
            ("call".to_string(), "os.time".to_string()),
            ("call.start".to_string(), "exec.run".to_string()),
            ("call".to_string(), "exec.run".to_string()),
            ("call.start".to_string(), "exec.run".to_string()),
        ]
    );
    let listed = runs(&p);
    assert_eq!(listed[0]["status"], "running");
    assert_eq!(listed[0]["calls"], 2);
    // The call in progress shows as started; the finished ones only as calls.
    let running = show(&p, "last");
    let kinds: Vec<(&str, i64)> = running["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["idx"].as_i64().unwrap()))
        .collect();
    assert_eq!(kinds, [("call", 0), ("call", 1), ("call.start", 2)]);

    use std::io::Write;
    let mut gate = open_fifo_writer(&fifo);
    gate.write_all(b"go\n").expect("release the script");
    drop(gate);
    let out = finish(child).ok();
    assert_eq!(out.stdout, "");
    let shown = show(&p, "last");
    assert_eq!(shown["run"]["status"], "ok");
    assert_eq!(shown["run"]["calls"], 4);
    let entries = shown["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|e| e["kind"] == "call"), "{shown:#}");
    assert_eq!(entries[2]["result"]["stdout"], "got go\n");
}

#[test]
fn a_script_calling_faster_than_the_writer_commits_is_held_back() {
    // 30000 calls as fast as the script can make them, then it blocks. The writer lets at most
    // MAX_QUEUED entries wait while it commits a batch of at most as many: once the script is
    // blocked, no more than two batches can still be missing from the database.
    const CALLS: i64 = 30_000;
    let p = Project::new().file(
        "burst.luau",
        &format!(
            "local exec = require(\"stagecraft/exec\")\n\
             for _ = 1, {CALLS} do os.time() end\n\
             exec.run({{ \"sh\", \"-c\", \"read x < \\\"$1\\\"\", \"sh\", (...)[1] }})\n"
        ),
    );
    let fifo = p.path("gate");
    mkfifo(&fifo);
    let fifo_arg = fifo.display().to_string();
    let child = spawn(
        &p,
        &["run", "burst.luau", "--allow", "exec:sh", &fifo_arg],
        true,
    );
    let mut gate = open_fifo_writer(&fifo); // succeeds once the script is blocked on the fifo
    let committed = count(
        &p.db(),
        "SELECT count(*) FROM entries WHERE kind = 'call'",
        [],
    );
    let bound = 2 * stagecraft::ledger::writer::MAX_QUEUED as i64;
    assert!(
        committed >= CALLS - bound,
        "only {committed} of {CALLS} calls were committed when the script blocked"
    );
    use std::io::Write;
    gate.write_all(b"go\n").expect("release the script");
    drop(gate);
    finish(child).ok();
    assert_eq!(runs(&p)[0]["calls"], CALLS + 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Dead runs
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dead_run_is_interrupted_before_and_after_the_sweep() {
    let p = Project::new().file("block.luau", BLOCKING_SCRIPT);
    let fifo = p.path("gate");
    mkfifo(&fifo);
    let fifo_arg = fifo.display().to_string();
    let mut child = spawn(
        &p,
        &["run", "block.luau", "--allow", "exec:sh", &fifo_arg],
        false,
    );
    let pid = child.id();
    let _release = ReleaseOnDrop(fifo.clone());
    let id = poll_until(
        "the run to be blocked on the fifo",
        Duration::from_secs(10),
        || {
            let c = try_open(&p.ledger())?;
            let id = run_id_of_pid(&c, pid)?;
            (exec_starts(&c, &id)? == 2).then_some(id)
        },
    );
    assert_eq!(show(&p, &id)["run"]["status"], "running");
    child.kill().expect("kill -9");
    child.wait().expect("wait");

    // Nobody has swept it yet: no run.end, yet it lists as interrupted.
    let conn = p.db();
    let ends = "SELECT count(*) FROM entries WHERE run_id = ?1 AND kind = 'run.end'";
    assert_eq!(count(&conn, ends, [&id]), 0);
    let before = show(&p, &id);
    assert_eq!(before["run"]["status"], "interrupted");
    assert_eq!(before["run"]["end"], Value::Null);
    p.run(&["ledger", "ls"])
        .ok()
        .stdout_has(&format!("{id}  interrupted     -  "));
    assert!(
        p.path(&format!(".stagecraft/ledger.db.runs/{id}.lock"))
            .exists()
    );

    // The next run records the end on its behalf.
    let next = p.script("return 1", &["--json"]).ok().json();
    assert_eq!(count(&conn, ends, [&id]), 1);
    let after = show(&p, &id);
    assert_eq!(after["run"]["status"], "interrupted");
    assert_eq!(after["run"]["exit_code"], Value::Null);
    assert_eq!(after["run"]["end"]["status"], "interrupted");
    assert_eq!(after["run"]["end"]["detected_by"], next["run_id"]);
    assert!(
        !p.path(&format!(".stagecraft/ledger.db.runs/{id}.lock"))
            .exists()
    );
    // Entries committed before the kill are kept, the call it died in as started only.
    let kept: Vec<(&str, &str)> = after["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kept,
        [
            ("call", "os.time"),
            ("call", "exec.run"),
            ("call.start", "exec.run")
        ]
    );
    verify_ok(&p);
}

// ---------------------------------------------------------------------------------------------
// 8. Where the ledger lives
// ---------------------------------------------------------------------------------------------

#[test]
fn ledger_flag_and_env_put_the_ledger_elsewhere() {
    let p = Project::new().file("s.luau", "return os.time()");
    let elsewhere = tempfile::Builder::new()
        .prefix("sc-ledger-")
        .tempdir()
        .expect("temp dir");
    let flag_db = elsewhere.path().join("flag/ledger.db");
    let flag = flag_db.display().to_string();

    p.run(&["run", "s.luau", "--ledger", &flag]).ok();
    assert!(flag_db.exists());
    assert!(PathBuf::from(format!("{flag}.head")).exists());
    assert!(
        !p.ledger().exists(),
        "the default ledger must not be created"
    );
    let listed = p
        .run(&["ledger", "ls", "--json", "--ledger", &flag])
        .ok()
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    p.run(&["ledger", "verify", "--ledger", &flag])
        .ok()
        .stdout_is(&format!(
            "ledger {flag} OK: 3 entries in 1 runs, chain intact, signed head at entry 3\n"
        ));
    p.run(&["ledger", "ls"]).code(7).stderr_has("no ledger at");

    // STAGECRAFT_LEDGER, relative to the working directory.
    p.cmd(&["run", "s.luau"])
        .env("STAGECRAFT_LEDGER", "env/ledger.db")
        .output()
        .ok();
    assert!(p.path("env/ledger.db").exists());
    assert!(!p.ledger().exists());
    let via_env = p
        .cmd(&["ledger", "ls", "--json"])
        .env("STAGECRAFT_LEDGER", "env/ledger.db")
        .output()
        .ok()
        .json();
    assert_eq!(via_env.as_array().map(Vec::len), Some(1));
    // The flag wins over the environment.
    let both = p
        .cmd(&["ledger", "ls", "--json", "--ledger", &flag])
        .env("STAGECRAFT_LEDGER", "env/ledger.db")
        .output()
        .ok()
        .json();
    assert_eq!(both[0]["id"], listed[0]["id"]);
    p.cmd(&["ledger", "verify"])
        .env("STAGECRAFT_LEDGER", "env/ledger.db")
        .output()
        .ok();
}

#[test]
fn a_ledger_that_cannot_be_written_fails_the_run_with_exit_7() {
    let p = Project::new().file("first.luau", "return 1");
    p.run(&["run", "first.luau"]).ok();
    // From now on the database refuses to record the end of any run.
    p.db()
        .execute_batch(
            "CREATE TRIGGER refuse_end BEFORE INSERT ON entries WHEN NEW.kind = 'run.end' \
             BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .expect("add trigger");
    p.script("print(os.time() > 0)", &[])
        .code(7)
        .stdout_is("true\n")
        .stderr_has("disk says no");
    // Nothing of the failed batch was half-written: the chain still verifies up to its head.
    p.db()
        .execute_batch("DROP TRIGGER refuse_end")
        .expect("drop trigger");
    p.run(&["ledger", "verify"]).ok();
}

#[test]
fn no_effect_happens_when_its_intent_cannot_be_recorded() {
    let p = Project::new().file("first.luau", "return 1");
    p.run(&["run", "first.luau"]).ok();
    p.db()
        .execute_batch(
            "CREATE TRIGGER refuse_exec BEFORE INSERT ON entries \
             WHEN NEW.kind = 'call.start' AND NEW.op = 'exec.run' \
             BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .expect("add trigger");
    let out = p.script(
        "require('stagecraft/exec').run({'sh', '-c', 'echo ran > marker'})\nprint('after')",
        &["--allow", "exec:sh"],
    );
    let out = out
        .code(7)
        .stderr_has("the ledger cannot be written")
        .stdout_lacks("after");
    assert!(
        !p.path("marker").exists(),
        "the effect ran without its intent recorded: {out:?}"
    );
}
