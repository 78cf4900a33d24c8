//! `stagecraft/lock` on a real sshd: contention between two concurrent runs, release at run end,
//! a stale lock after `kill -9`, breaking it with `force`.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Project;
use crate::sshd::Sshd;

fn setup(h: &Sshd, locks: &Path) -> (Project, String) {
    let p = Project::new().file("stagecraft.yml", "name: lock-test\npermissions:\n  - ssh\n");
    let prelude = format!(
        "local lock = require('stagecraft/lock')\n\
         local host = require('stagecraft/ssh').connect({{host = '127.0.0.1', port = {}, user = '{}', key = '{}', known_hosts_file = '{}', name = 'web-1'}})\n\
         local DIR = '{}'\n",
        h.port(),
        h.user(),
        h.key_path().display(),
        h.known_hosts_path().display(),
        locks.display()
    );
    (p, prelude)
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `script` in the background: it takes the lock, then blocks until `go` exists.
fn holder(p: &Project, prelude: &str, started: &Path, go: &Path) -> Child {
    p.write(
        "holder.luau",
        &format!(
            "{prelude}local l = lock.acquire(host, 'deploy', {{message = 'deploying v2', dir = DIR}})\n\
             host:run({{'sh', '-c', 'touch {s}; while [ ! -e {g} ]; do sleep 0.05; done'}})\n",
            s = started.display(),
            g = go.display()
        ),
    );
    let mut cmd = p.cmd(&["run", "holder.luau"]).cmd;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the holder")
}

#[test]
fn a_second_run_is_refused_or_waits_and_the_lock_goes_with_the_run() {
    let h = Sshd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let (started, go) = (tmp.path().join("started"), tmp.path().join("go"));
    let (p, prelude) = setup(&h, &tmp.path().join("locks"));
    let a = holder(&p, &prelude, &started, &go);
    wait_for(&started);

    let out = p
        .script(
            &format!("{prelude}lock.acquire(host, 'deploy', {{dir = DIR}})"),
            &[],
        )
        .code(1);
    assert!(
        out.stderr
            .contains("lock.acquire: deploy lock deploy on web-1 is held by "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(": deploying v2"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: wait for it with {wait = SECONDS}"),
        "{}",
        out.stderr
    );

    // Status names the holder without its token.
    p.script(
        &format!(
            "{prelude}local s = lock.status(host, 'deploy', {{dir = DIR}})\n\
             print(s.held, s.stale, s.info.message, s.info.token)"
        ),
        &[],
    )
    .ok()
    .stdout_is("true\tfalse\tdeploying v2\tnil\n");

    // A waiting run gets the lock once the holder's run ends (released at its end).
    p.write(
        "waiter.luau",
        &format!("{prelude}local l = lock.acquire(host, 'deploy', {{wait = 20, dir = DIR}})\nprint(l.held)\nl:release()\nprint(l.held)\n"),
    );
    let mut cmd = p.cmd(&["run", "waiter.luau"]).cmd;
    let b = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the waiter");
    std::fs::write(&go, "").expect("let the holder finish");
    let a = a.wait_with_output().expect("holder");
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = b.wait_with_output().expect("waiter");
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(String::from_utf8_lossy(&b.stdout), "true\nfalse\n");
    // The holder's release at its end is in the ledger.
    let notes: i64 = p
        .db()
        .query_row(
            "SELECT count(*) FROM entries WHERE kind = 'note' AND op = 'lock.release' AND args LIKE '%\"ok\":true%'",
            [],
            |r| r.get(0),
        )
        .expect("notes");
    assert_eq!(notes, 1);
    p.script(
        &format!("{prelude}print(lock.status(host, 'deploy', {{dir = DIR}}).held)"),
        &[],
    )
    .ok()
    .stdout_is("false\n");
}

#[test]
fn a_lock_left_by_a_killed_run_is_stale_and_can_be_broken() {
    let h = Sshd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let (started, go) = (tmp.path().join("started"), tmp.path().join("go"));
    let (p, prelude) = setup(&h, &tmp.path().join("locks"));
    let mut a = holder(&p, &prelude, &started, &go);
    wait_for(&started);
    a.kill().expect("kill -9 the holder");
    let _ = a.wait();

    let out = p
        .script(
            &format!("{prelude}lock.acquire(host, 'deploy', {{dir = DIR}})"),
            &[],
        )
        .code(1);
    assert!(out.stderr.contains("is stale: held by "), "{}", out.stderr);
    assert!(
        out.stderr.contains("(the process is gone)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("force = true"), "{}", out.stderr);

    p.script(
        &format!(
            "{prelude}local r = lock.release(host, 'deploy', {{force = true, dir = DIR}})\n\
             print(r.released, r.previous.message)\n\
             local l = lock.acquire(host, 'deploy', {{dir = DIR}})\nprint(l.held)\n"
        ),
        &[],
    )
    .ok()
    .stdout_is("true\tdeploying v2\ntrue\n");
    // Without force, releasing someone else's lock is refused.
    p.script(
        &format!("{prelude}lock.release(host, 'deploy', {{dir = DIR}})"),
        &[],
    )
    .code(1)
    .stderr_has("needs {force = true}");
}

#[test]
fn a_failing_run_releases_its_lock_and_a_replay_touches_nothing() {
    let mut h = Sshd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let (p, prelude) = setup(&h, &tmp.path().join("locks"));
    p.script(
        &format!(
            "{prelude}local l = lock.acquire(host, 'deploy', {{message = 'v3', dir = DIR}})\n\
             error('the deploy broke')\n"
        ),
        &[],
    )
    .code(1)
    .stderr_has("the deploy broke");
    let run: String = p
        .db()
        .query_row(
            "SELECT run_id FROM entries WHERE kind = 'run.start' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("run");
    p.script(
        &format!("{prelude}print(lock.status(host, 'deploy', {{dir = DIR}}).held)"),
        &[],
    )
    .ok()
    .stdout_is("false\n");
    // The replay reaches the same error without a connection (the host is gone).
    h.kill();
    p.run(&["replay", &run])
        .ok()
        .stderr_has("2 of 2 recorded calls matched, no divergence (recorded status: failed)");
}

#[test]
fn the_lock_command_shows_the_holder_and_breaks_a_stale_lock() {
    let h = Sshd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let locks = tmp.path().join("locks");
    let (started, go) = (tmp.path().join("started"), tmp.path().join("go"));
    let (p, prelude) = setup(&h, &locks);
    // The inventory names the host.
    p.write(
        "stagecraft.yml",
        &format!(
            "name: lock-test\npermissions:\n  - ssh\ninventory:\n  hosts:\n    web-1: {{ address: 127.0.0.1, port: {}, user: {}, key: {}, known_hosts_file: {} }}\n",
            h.port(),
            h.user(),
            h.key_path().display(),
            h.known_hosts_path().display()
        ),
    );
    let dir = format!("--dir={}", locks.display());
    p.run(&["lock", "status", "web-1", "deploy", &dir])
        .ok()
        .stdout_is("deploy lock deploy on web-1: free\n");

    let mut a = holder(&p, &prelude, &started, &go);
    wait_for(&started);
    let out = p.run(&["lock", "status", "web-1", "deploy", &dir]).ok();
    assert!(
        out.stdout
            .starts_with("deploy lock deploy on web-1: held by "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.trim_end().ends_with(": deploying v2"),
        "{}",
        out.stdout
    );
    a.kill().expect("kill -9 the holder");
    let _ = a.wait();
    let out = p.run(&["lock", "status", "web-1", "deploy", &dir]).ok();
    assert!(out.stdout.contains("\nstale: its run "), "{}", out.stdout);
    p.run(&["lock", "release", "web-1", "deploy", &dir])
        .code(2)
        .stderr_has("pass --force");
    let out = p
        .run(&["lock", "release", "web-1", "deploy", &dir, "--force"])
        .ok();
    assert!(
        out.stdout
            .starts_with("deploy lock deploy on web-1 released (was held by "),
        "{}",
        out.stdout
    );
    // The break is a recorded call.
    let n: i64 = p
        .db()
        .query_row(
            "SELECT count(*) FROM entries WHERE kind = 'call' AND op = 'lock.release'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 1);
    p.run(&["lock", "status", "web-1", "deploy", &dir])
        .ok()
        .stdout_is("deploy lock deploy on web-1: free\n");
}

#[test]
fn a_lock_older_than_its_ttl_is_stale() {
    let h = Sshd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let locks = tmp.path().join("locks");
    // A lock from another machine (its run is not in this ledger), taken long ago.
    std::fs::create_dir_all(locks.join("deploy.lock")).expect("lock dir");
    std::fs::write(
        locks.join("deploy.lock/info.json"),
        r#"{"holder":"ana@laptop","run":"01ELSEWHERE","since":"2001-09-09T01:46:40Z","since_unix":1000000000,"ttl":600,"message":"old deploy","token":"abc"}"#,
    )
    .expect("info");
    let (p, prelude) = setup(&h, &locks);
    let out = p
        .script(
            &format!("{prelude}lock.acquire(host, 'deploy', {{dir = DIR}})"),
            &[],
        )
        .code(1);
    assert!(
        out.stderr.contains(
            "deploy lock deploy on web-1 is stale: held by ana@laptop (run 01ELSEWHERE, since 2001-09-09T01:46:40Z): old deploy, but it is older than its TTL of 600s"
        ),
        "{}",
        out.stderr
    );
}
