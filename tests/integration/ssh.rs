//! `stagecraft/ssh` against real `sshd` instances (see `sshd.rs`): commands, environment, stdin,
//! exit codes, uploads and downloads, one multiplexed master per host, error kinds, replay.

use crate::harness::Project;
use crate::sshd::Sshd;

/// A project granted `ssh` (and `fs-write` for downloads), and the Luau target table for `h`.
fn setup(h: &Sshd) -> (Project, String) {
    let p = Project::new().file(
        "stagecraft.yml",
        "name: ssh-test\npermissions:\n  - ssh\n  - fs-write\n",
    );
    let target = format!(
        "{{host = '127.0.0.1', port = {}, user = '{}', key = '{}', known_hosts_file = '{}', name = 'web-1'}}",
        h.port(),
        h.user(),
        h.key_path().display(),
        h.known_hosts_path().display()
    );
    (p, target)
}

fn latest_run(p: &Project) -> String {
    p.db()
        .query_row(
            "SELECT run_id FROM entries WHERE kind = 'run.start' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("a recorded run")
}

/// Established connections to `port` in a `/proc/net/tcp` listing (server side).
fn established_to(tcp: &str, port: u16) -> usize {
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[test]
fn commands_env_stdin_codes_and_one_master_per_host() {
    let h = Sshd::start();
    let (p, target) = setup(&h);
    p.write(".env", "API_TOKEN=tok-8c1f0e9a77\n");
    let out = p
        .script(
            &format!(
                r#"
local ssh = require("stagecraft/ssh")
local secrets = require("stagecraft/secrets")
local host = ssh.connect({target})
print(tostring(host), host.name, host.port)
local r = host:run({{"sh", "-c", "echo out; echo err >&2; exit 3"}})
print(r.code, r.stdout, r.stderr)
r = host:run({{"printf", "%s|", "a b", "$HOME", "'q'", ";ls"}})
print(r.stdout)
r = host:run({{"sh", "-c", 'echo "$GREETING-$TOKEN_LEN"'}}, {{env = {{GREETING = "hi there"}}}})
print(r.stdout)
r = host:run({{"sh", "-c", 'printf %s "$API_TOKEN" | wc -c; echo "$API_TOKEN"'}}, {{env = {{API_TOKEN = secrets.get("API_TOKEN")}}}})
print(r.stdout)
r = host:run({{"cat"}}, {{stdin = "line 1\nline 2\n"}})
print(r.stdout)
r = host:run({{"pwd"}}, {{cwd = "/tmp"}})
print(r.stdout)
r = host:shell("echo $((6 * 7)) | tr 4 x")
print(r.stdout)
local ok, err = pcall(function() return host:run({{"false"}}, {{check = true}}) end)
print(err.kind, err.message)
local tcp = host:run({{"cat", "/proc/net/tcp"}}).stdout
for i = 1, 5 do host:run({{"true"}}) end
local again = ssh.connect({target})
again:run({{"true"}})
print("TCP-BEGIN")
print(host:run({{"cat", "/proc/net/tcp"}}).stdout)
print("TCP-END")
"#
            ),
            &["--allow", "secrets:API_TOKEN"],
        )
        .ok();
    let s = &out.stdout;
    assert!(s.starts_with("host web-1\tweb-1\t"), "{s}");
    assert!(s.contains("3\tout\n\terr\n"), "{s}");
    assert!(
        s.contains("a b|$HOME|'q'|;ls|"),
        "argv is passed literally: {s}"
    );
    assert!(s.contains("hi there-\n"), "{s}");
    assert!(
        s.contains("14\n[REDACTED]"),
        "the secret reached the command (14 bytes) and was scrubbed: {s}"
    );
    assert!(s.contains("line 1\nline 2\n"), "{s}");
    assert!(s.contains("/tmp\n"), "{s}");
    assert!(s.contains("x2\n"), "{s}");
    assert!(
        s.contains("command_failed\thost:run: on web-1 the command exited with code 1"),
        "{s}"
    );
    assert!(!s.contains("tok-8c1f0e9a77") && !out.stderr.contains("tok-8c1f0e9a77"));
    let tcp = s
        .split("TCP-BEGIN\n")
        .nth(1)
        .and_then(|t| t.split("TCP-END").next())
        .expect("tcp listing");
    assert_eq!(
        established_to(tcp, h.port()),
        1,
        "every command and the second connect share one master connection:\n{tcp}"
    );
    // The ledger holds the reference, never the value.
    let all: String = p
        .db()
        .query_row(
            "SELECT group_concat(coalesce(args,'') || coalesce(result,''), '\n') FROM entries",
            [],
            |r| r.get(0),
        )
        .expect("ledger");
    assert!(!all.contains("tok-8c1f0e9a77"));
    assert!(all.contains("\"$secret\":\"API_TOKEN\""));
}

#[test]
fn upload_and_download_round_trip_atomically() {
    let h = Sshd::start();
    let (p, target) = setup(&h);
    let remote_dir = tempfile::tempdir().expect("temp dir");
    let remote = remote_dir.path().join("app.conf");
    p.write("conf/app.conf", "port = 8080\n");
    let out = p
        .script(
            &format!(
                r#"
local host = require("stagecraft/ssh").connect({target})
local up = host:upload("conf/app.conf", "{remote}", {{mode = "0600"}})
print(up.bytes, up.sha256)
local mode = host:run({{"stat", "-c", "%a", "{remote}"}}).stdout
print(mode)
local down = host:download("{remote}", "copy.conf")
print(down.bytes, down.sha256 == up.sha256)
local ok, err = pcall(function() return host:download("{remote}.missing", "x") end)
print(err.kind)
"#,
                remote = remote.display()
            ),
            &[],
        )
        .ok();
    assert!(out.stdout.starts_with("12\t"), "{}", out.stdout);
    assert!(out.stdout.contains("\n600\n"), "{}", out.stdout);
    assert!(out.stdout.contains("12\ttrue\n"), "{}", out.stdout);
    assert!(out.stdout.contains("not_found\n"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(&remote).expect("remote file"),
        "port = 8080\n"
    );
    assert_eq!(p.read("copy.conf"), "port = 8080\n");
}

#[test]
fn connection_failures_have_distinct_kinds() {
    let mut h = Sshd::start();
    let other = Sshd::start();
    let (p, _) = setup(&h);
    let user = h.user().to_string();
    let (key, known) = (h.key_path(), h.known_hosts_path());
    let base = |key: &std::path::Path, known: &std::path::Path, port: u16, host: &str| {
        format!(
            "{{host = '{host}', port = {port}, user = '{user}', key = '{}', known_hosts_file = '{}', connect_timeout = 5}}",
            key.display(),
            known.display()
        )
    };
    let probe = |target: String| {
        let out = p.script(
            &format!(
                "local ok, err = pcall(require('stagecraft/ssh').connect, {target})\nprint(err.kind)\nprint(err.message)\nprint(err.hint)\n"
            ),
            &[],
        );
        out.ok().stdout
    };
    // A key the host does not know.
    let s = probe(base(&other.key_path(), &known, h.port(), "127.0.0.1"));
    assert!(s.starts_with("authentication_failed\n"), "{s}");
    // A host whose key is not the one in known_hosts.
    let s = probe(base(&key, &other.known_hosts_path(), h.port(), "127.0.0.1"));
    assert!(s.starts_with("host_key_mismatch\n"), "{s}");
    // A name that does not resolve.
    let s = probe(base(&key, &known, 22, "no-such-host.invalid"));
    assert!(s.starts_with("dns\n"), "{s}");
    // Nothing listening.
    let port = h.port();
    h.kill();
    let s = probe(base(&key, &known, port, "127.0.0.1"));
    assert!(s.starts_with("unreachable\n"), "{s}");
    assert!(s.contains("Connection refused"), "{s}");
}

#[test]
fn ssh_needs_its_capability_for_that_host() {
    let h = Sshd::start();
    let (p, target) = setup(&h);
    p.write(
        "stagecraft.yml",
        "name: t\npermissions:\n  - ssh:10.9.9.9\n",
    );
    p.script(&format!("require('stagecraft/ssh').connect({target})"), &[])
        .code(3)
        .stderr_has("ssh.connect needs capability ssh:127.0.0.1");
    p.script(
        &format!("require('stagecraft/ssh').connect({target}):run({{'true'}})"),
        &["--allow", "ssh:127.0.0.1"],
    )
    .ok();
}

#[test]
fn replay_makes_no_connection() {
    let mut h = Sshd::start();
    let (p, target) = setup(&h);
    p.script(
        &format!(
            "local host = require('stagecraft/ssh').connect({target})\n\
             print(host:run({{'hostname'}}).code)\nprint(host:shell('echo hi').stdout)\n"
        ),
        &[],
    )
    .ok();
    let run = latest_run(&p);
    h.kill();
    p.run(&["replay", &run])
        .ok()
        .stderr_has("recorded calls matched, no divergence");
}

#[test]
fn host_docker_drives_the_remote_engine_through_the_master_connection() {
    let web = crate::images::web();
    let guard = crate::images::Cleanup::new();
    let name = guard.container(&crate::images::unique("scsshd"));
    let h = Sshd::start();
    let (p, target) = setup(&h);
    p.write(
        "stagecraft.yml",
        "name: t\npermissions:\n  - ssh\n  - docker\n",
    );
    let out = p
        .script(
            &format!(
                r#"
local host = require("stagecraft/ssh").connect({target})
local engine = host:docker()
local c = engine.run({{image = "{web}", name = "{name}", env = {{VERSION = "remote"}}}})
print(c:wait_healthy({{timeout = 30}}).status)
print(c:exec({{"cat", "/www/index.html"}}).stdout)
print(string.sub(engine.address, 1, 7))
c:remove({{force = true}})
"#
            ),
            &[],
        )
        .ok();
    assert!(
        out.stdout.starts_with("healthy\nversion=remote "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("unix://"), "{}", out.stdout);
    let gone = crate::images::docker(&["inspect", &name]);
    assert!(
        !gone.status.success(),
        "the container was removed through the forward"
    );
    // Replayed, the engine calls need neither the host nor the socket.
    let run = latest_run(&p);
    drop(h);
    p.run(&["replay", &run])
        .ok()
        .stderr_has("recorded calls matched, no divergence");
}

#[test]
fn streamed_output_is_prefixed_and_a_host_dying_mid_command_is_disconnected() {
    let mut h = Sshd::start();
    let (p, target) = setup(&h);
    p.script(
        &format!(
            "require('stagecraft/ssh').connect({target}):run({{'sh', '-c', 'echo one; echo two >&2'}}, {{stream = true}})"
        ),
        &[],
    )
    .ok()
    .stderr_has("web-1 | one\n")
    .stderr_has("web-1 | two\n");

    let marker = tempfile::tempdir().expect("temp dir");
    let flag = marker.path().join("started");
    p.write(
        "long.luau",
        &format!(
            "local ok, err = pcall(function()\n\
               return require('stagecraft/ssh').connect({target}):run({{'sh', '-c', 'touch {flag}; sleep 60'}})\n\
             end)\n\
             print(err.kind)\nprint(err.message)\n",
            flag = flag.display()
        ),
    );
    let mut cmd = p.cmd(&["run", "long.luau"]).cmd;
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stagecraft");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !flag.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the remote command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    h.kill();
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("disconnected\nssh web-1: the connection was lost"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inventory_fan_out_reports_every_host_when_one_dies() {
    let hosts: Vec<Sshd> = (0..3).map(|_| Sshd::start()).collect();
    let mut dead = Sshd::start();
    // One key and known_hosts for all: each host trusts the first host's user key.
    let key = hosts[0].key_path();
    let known = tempfile::NamedTempFile::new().expect("known_hosts");
    let mut lines = String::new();
    for h in hosts.iter().chain(std::iter::once(&dead)) {
        lines.push_str(&std::fs::read_to_string(h.known_hosts_path()).expect("known_hosts"));
        let auth = h.dir().join("authorized_keys");
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
        std::fs::write(&auth, pubkey).expect("authorize the shared key");
    }
    std::fs::write(known.path(), lines).expect("write known_hosts");
    let mut inv = format!(
        "name: fleet\npermissions:\n  - ssh\ninventory:\n  defaults: {{ user: {}, key: {}, known_hosts: strict }}\n  hosts:\n",
        hosts[0].user(),
        key.display()
    );
    for (i, h) in hosts.iter().enumerate() {
        inv.push_str(&format!(
            "    web-{}: {{ address: 127.0.0.1, port: {}, roles: [web], env: production }}\n",
            i + 1,
            h.port()
        ));
    }
    inv.push_str(&format!(
        "    web-9: {{ address: 127.0.0.1, port: {}, roles: [web], env: production }}\n    db-1: {{ address: 127.0.0.1, port: {}, roles: [db], env: production }}\n",
        dead.port(),
        hosts[0].port()
    ));
    let p = Project::new().file("stagecraft.yml", &inv);
    dead.kill();
    let out = p
        .script(
            &format!(
                r#"
local ssh = require("stagecraft/ssh")
local task = require("stagecraft/task")
local web = ssh.hosts({{role = "web", env = "production"}})
print(#web)
local report = task.map(web, function(h)
  local r = ssh.connect({{host = h.address, port = h.port, user = h.user, key = "{key}", known_hosts_file = "{known}", name = h.name, connect_timeout = 5}})
  return r:run({{"echo", h.name}}).stdout
end, {{max_fail = 1, label = function(h) return h.name end}})
print(report.ok, report.done, report.failed, report.cancelled)
for _, r in report.results do print(r.name, r.status, r.value or r.error.kind) end
"#,
                key = key.display(),
                known = known.path().display()
            ),
            &[],
        )
        .ok();
    assert_eq!(
        out.stdout,
        "4\ntrue\t3\t1\t0\nweb-1\tok\tweb-1\n\nweb-2\tok\tweb-2\n\nweb-3\tok\tweb-3\n\nweb-9\tfailed\tunreachable\n",
        "{}",
        out.stderr
    );
}

#[test]
fn fan_out_over_hosts_with_their_own_addresses() {
    use crate::sshd::NetnsHost;
    let hosts = [NetnsHost::start(), NetnsHost::start()];
    let key = hosts[0].key_path();
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let known = tempfile::NamedTempFile::new().expect("known_hosts");
    let mut lines = String::new();
    let mut inv = String::from("name: fleet\npermissions:\n  - ssh\ninventory:\n  hosts:\n");
    for (i, h) in hosts.iter().enumerate() {
        std::fs::write(h.dir().join("authorized_keys"), &pubkey).expect("authorize the key");
        lines.push_str(&std::fs::read_to_string(h.known_hosts_path()).expect("known_hosts"));
        inv.push_str(&format!(
            "    app-{}: {{ address: {}, port: {}, user: {}, key: {}, known_hosts_file: {}, roles: [app] }}\n",
            i + 1,
            h.addr().ip(),
            h.port(),
            h.user(),
            key.display(),
            known.path().display()
        ));
    }
    std::fs::write(known.path(), lines).expect("write known_hosts");
    let p = Project::new().file("stagecraft.yml", &inv);
    let out = p
        .script(
            r#"
local ssh = require("stagecraft/ssh")
local task = require("stagecraft/task")
local report = task.map(ssh.hosts({role = "app"}), function(h)
  return h.name .. " " .. h.address .. " " .. h:run({"sh", "-c", "ip -4 -o addr show scope global | awk '{print $4}'"}).stdout
end, {max_fail = 0})
for _, r in report.results do print(r.status, r.value) end
"#,
            &[],
        )
        .ok();
    let mut want = String::new();
    for (i, h) in hosts.iter().enumerate() {
        let ip = h.addr().ip();
        want.push_str(&format!("ok\tapp-{} {ip} {ip}/30\n\n", i + 1));
    }
    assert_eq!(out.stdout, want, "{}", out.stderr);
}

#[test]
fn inventory_hosts_given_by_tailscale_name_are_resolved_through_the_cli() {
    let h = Sshd::start();
    let p = Project::new();
    std::fs::create_dir_all(p.path("tools")).expect("tools dir");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tailscale/fake-tailscale"),
        p.path("tools/tailscale"),
    )
    .expect("copy the fake CLI");
    // A tailnet in which the node `edge-1` has the address the test sshd listens on.
    p.write(
        "tailnet.json",
        r#"{"BackendState": "Running", "Self": {"HostName": "ci", "DNSName": "ci.tail1234.ts.net.", "TailscaleIPs": ["100.64.0.1"], "Online": true},
            "Peer": {"nodekey:1": {"HostName": "edge-1", "DNSName": "edge-1.tail1234.ts.net.", "TailscaleIPs": ["127.0.0.1"], "Online": true}},
            "CurrentTailnet": {"Name": "example.com", "MagicDNSSuffix": "tail1234.ts.net"}}"#,
    );
    p.write(
        "stagecraft.yml",
        &format!(
            "name: ts\npermissions:\n  - ssh\n  - tailscale\ntailscale:\n  cli: tools/tailscale\n  env: [FAKE_TAILSCALE_STATE]\n\
             inventory:\n  hosts:\n    edge: {{ tailscale: edge-1, port: {}, user: {}, key: {}, known_hosts_file: {} }}\n",
            h.port(),
            h.user(),
            h.key_path().display(),
            h.known_hosts_path().display()
        ),
    );
    p.write(
        "script.luau",
        "local host = require('stagecraft/ssh').hosts({names = {'edge'}})[1]\n\
         print(host.name, host.address, host:run({'echo', 'via tailnet'}).stdout)\n",
    );
    p.cmd(&["run", "script.luau"])
        .env(
            "FAKE_TAILSCALE_STATE",
            &p.path("tailnet.json").display().to_string(),
        )
        .output()
        .ok()
        .stdout_is("edge\t127.0.0.1\tvia tailnet\n\n");
    // Without the tailscale capability the name cannot be resolved.
    p.write(
        "stagecraft.yml",
        &p.read("stagecraft.yml").replace("  - tailscale\n", ""),
    );
    p.cmd(&["run", "script.luau"])
        .env(
            "FAKE_TAILSCALE_STATE",
            &p.path("tailnet.json").display().to_string(),
        )
        .output()
        .code(3)
        .stderr_has("ssh.hosts needs capability tailscale");
}

#[test]
fn accept_new_trusts_a_new_host_once_and_refuses_a_changed_key() {
    let h = Sshd::start();
    let other = Sshd::start();
    let (p, _) = setup(&h);
    let known = tempfile::NamedTempFile::new().expect("known_hosts");
    let target = |port: u16, key: &std::path::Path| {
        format!(
            "{{host = '127.0.0.1', port = {port}, user = '{}', key = '{}', known_hosts_file = '{}', known_hosts = 'accept-new'}}",
            h.user(),
            key.display(),
            known.path().display()
        )
    };
    // Strict (the default) refuses the unknown host; accept-new records its key.
    p.script(
        &format!(
            "local t = {}\nt.known_hosts = nil\nlocal ok, err = pcall(require('stagecraft/ssh').connect, t)\nprint(err.kind)",
            target(h.port(), &h.key_path())
        ),
        &[],
    )
    .ok()
    .stdout_is("host_key_mismatch\n");
    p.script(
        &format!(
            "print(require('stagecraft/ssh').connect({}):run({{'echo', 'first'}}).stdout)",
            target(h.port(), &h.key_path())
        ),
        &[],
    )
    .ok()
    .stdout_is("first\n\n");
    let recorded = std::fs::read_to_string(known.path()).expect("known_hosts");
    let key_b64 = h
        .host_key_pub()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        recorded.contains(&key_b64),
        "the host key was added: {recorded}"
    );
    // Another host answering on that address and port later: its key does not match.
    let mut lines = String::new();
    for l in recorded.lines() {
        lines.push_str(&l.replace(&format!("]:{}", h.port()), &format!("]:{}", other.port())));
        lines.push('\n');
    }
    std::fs::write(known.path(), lines).expect("pretend the first host lived on other's port");
    p.script(
        &format!(
            "local ok, err = pcall(require('stagecraft/ssh').connect, {})\nprint(err.kind)",
            target(other.port(), &other.key_path())
        ),
        &[],
    )
    .ok()
    .stdout_is("host_key_mismatch\n");
}

#[test]
fn jump_hosts_reach_a_host_only_the_bastion_can_see_with_the_bastions_own_key() {
    use crate::sshd::NetnsHost;
    // `inner` listens on the namespace's own loopback: only the bastion (in that namespace) can
    // reach it. The two have different keys and host keys.
    let bastion = NetnsHost::start();
    let inner = bastion.start_inner();
    let yml = format!(
        "name: jump\npermissions:\n  - ssh\ninventory:\n  hosts:\n    \
         bastion: {{ address: {b_ip}, port: 22, user: {user}, key: {b_key}, known_hosts_file: {b_known} }}\n    \
         inner: {{ address: 127.0.0.1, port: 2222, user: {user}, key: {i_key}, known_hosts_file: {i_known}, jump: bastion }}\n",
        b_ip = bastion.addr().ip(),
        user = inner.user(),
        b_key = bastion.key_path().display(),
        b_known = bastion.known_hosts_path().display(),
        i_key = inner.key_path().display(),
        i_known = inner.known_hosts_path().display(),
    );
    let p = Project::new().file("stagecraft.yml", &yml);
    let direct = format!(
        "{{host = '127.0.0.1', port = 2222, user = '{}', key = '{}', known_hosts_file = '{}', connect_timeout = 5}}",
        inner.user(),
        inner.key_path().display(),
        inner.known_hosts_path().display()
    );
    let jumped = format!(
        "{{host = '127.0.0.1', port = 2222, user = '{user}', key = '{}', known_hosts_file = '{}', name = 'inner', \
         jump = {{host = '{}', user = '{user}', key = '{}', known_hosts_file = '{}'}}}}",
        inner.key_path().display(),
        inner.known_hosts_path().display(),
        bastion.addr().ip(),
        bastion.key_path().display(),
        bastion.known_hosts_path().display(),
        user = inner.user(),
    );
    let out = p
        .script(
            &format!(
                r#"
local ssh = require("stagecraft/ssh")
-- Directly, 127.0.0.1:2222 is this machine's loopback, not the inner host.
local ok = pcall(ssh.connect, {direct})
print("direct", ok)
-- Through the bastion, given as a table with its own key.
local h = ssh.connect({jumped})
print("table", h:run({{"sh", "-c", "echo $SSH_CONNECTION | cut -d' ' -f1,3,4"}}).stdout)
-- From the inventory: `jump: bastion` uses the bastion's key and known hosts.
local i = ssh.hosts({{names = {{"inner"}}}})[1]
print("inventory", i:run({{"hostname"}}).code)
print(i:run({{"cat", "/proc/net/tcp"}}).stdout)
"#
            ),
            &[],
        )
        .ok();
    // The inner host saw the connection come from its own loopback: the bastion made it.
    assert!(
        out.stdout
            .starts_with("direct\tfalse\ntable\t127.0.0.1 127.0.0.1 2222\n\ninventory\t0\n"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // The table and the inventory name the same route: one master, one connection to `inner`.
    assert_eq!(established_to(&out.stdout, 2222), 1, "{}", out.stdout);
    // The bastion needs its own capability: granting only the inner host is not enough.
    let p2 = Project::new().file(
        "stagecraft.yml",
        &yml.replace("  - ssh\n", "  - ssh:127.0.0.1\n"),
    );
    p2.script(
        "require('stagecraft/ssh').hosts({names = {'inner'}})[1]:run({'true'})",
        &[],
    )
    .code(3)
    .stderr_has(&format!("ssh:{}", bastion.addr().ip()));
}

#[test]
fn no_remote_command_runs_when_its_intent_cannot_be_recorded() {
    let h = Sshd::start();
    let (p, target) = setup(&h);
    let marker = h.dir().join("ran");
    p.script("return 1", &[]).ok();
    p.db()
        .execute_batch(
            "CREATE TRIGGER refuse_ssh BEFORE INSERT ON entries \
             WHEN NEW.kind = 'call.start' AND NEW.op = 'ssh.run' \
             BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .expect("add trigger");
    let out = p
        .script(
            &format!(
                r#"
local ssh = require("stagecraft/ssh")
local task = require("stagecraft/task")
local h = ssh.connect({target})
local r = task.map({{h}}, function(host) return host:run({{"touch", "{marker}"}}).code end, {{max_fail = 0}})
print("after", r.results[1].name)
"#,
                marker = marker.display()
            ),
            &[],
        )
        .code(7)
        .stderr_has("the ledger cannot be written")
        .stdout_lacks("after");
    assert!(
        !marker.exists(),
        "the remote command ran without its intent recorded: {out:?}"
    );
    // Recorded calls of a fan-out name each result after its host.
    p.db()
        .execute_batch("DROP TRIGGER refuse_ssh")
        .expect("drop trigger");
    p.script(
        &format!(
            "local h = require('stagecraft/ssh').connect({target})\n\
             local r = require('stagecraft/task').map({{h}}, function(x) return x:run({{'true'}}).code end, {{max_fail = 0}})\n\
             print(r.results[1].name, r.results[1].value)"
        ),
        &[],
    )
    .ok()
    .stdout_is("web-1\t0\n");
}

#[test]
fn kex_chooses_the_key_exchange_and_a_bad_one_is_refused() {
    let h = Sshd::start();
    let (p, target) = setup(&h);
    let with = |kex: &str| target.replacen('{', &format!("{{kex = '{kex}', "), 1);
    let out = p
        .script(
            &format!(
                r#"
local ssh = require("stagecraft/ssh")
print(ssh.connect({classic}):run({{"echo", "ok"}}).stdout)
local ok, err = pcall(ssh.connect, {unknown})
print(ok, err.kind)
ok, err = pcall(ssh.connect, {bad})
print(ok, err.kind, err.message)
"#,
                classic = with("curve25519-sha256"),
                unknown = with("no-such-kex@example.com"),
                bad = with("curve25519 sha256"),
            ),
            &[],
        )
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "ok", "{}", out.stdout);
    // An algorithm ssh does not know reaches ssh (which refuses it); a malformed list does not.
    assert!(lines[2].starts_with("false\t"), "{}", out.stdout);
    assert!(
        lines[3].starts_with(
            "false\tinvalid_argument\tssh.connect: kex must be a comma-separated list"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(
        p.db()
            .query_row(
                "SELECT count(*) FROM entries WHERE op = 'ssh.connect' AND kind = 'call'",
                [],
                |r| r.get::<_, i64>(0)
            )
            .expect("count"),
        2,
        "the malformed kex is refused before anything is recorded"
    );
}
