//! `cargo bench --bench ssh`: SSH fan-out against N real loopback sshd hosts, Stagecraft next to
//! Ansible, pyinfra and a hand-written `ssh` ControlMaster loop, measured in the same run on the
//! same hosts.
//!
//! | scenario | what every tool does                                                     |
//! |----------|--------------------------------------------------------------------------|
//! | (a)      | `echo ok` once on every host, hosts in parallel                          |
//! | (b)      | `echo ok` 10 times on every host, hosts in parallel, sequential per host |
//!
//! - Stagecraft: `stagecraft run` of a script doing `task.map(hosts, fn)` where `fn` does
//!   `ssh.connect{...}` and `host:run({"echo", "ok"})`; once with the ssh client's default key
//!   exchange (OpenSSH 9.2: the post-quantum `sntrup761x25519`, ~0.13 s of client CPU per
//!   connection) and once with `kex = "curve25519-sha256"`, the one pyinfra's paramiko uses.
//! - Ansible (`ansible-core` from PyPI, in a venv under /var/tmp): `ansible all -m command -a
//!   "echo ok"` for (a), `ansible-playbook` with 10 `command` tasks (`gather_facts: false`) for
//!   (b), `forks = N`, default SSH settings (ControlPersist, no pipelining).
//! - pyinfra (`pyinfra` from PyPI, same venv): `pyinfra -y inventory.py exec -- echo ok` for (a),
//!   a deploy file with 10 `server.shell` operations for (b).
//! - ControlMaster loop: a shell script starting one background subshell per host that runs
//!   `ssh -o ControlMaster=auto -o ControlPath=... -o ControlPersist=60 HOST echo ok` once per
//!   command; the first command opens the master.
//!
//! Every tool starts cold in every iteration: no master connection survives from one iteration
//! to the next (control sockets live in a per-iteration directory and are closed, untimed). The
//! order of the tools rotates between iterations. Each host is a private `sshd` started by the
//! test harness (`tests/integration/sshd.rs`, its default `UsePAM no`); all hosts accept the
//! same key and one known_hosts file lists them all, checked strictly by every tool.
//!
//! Environment: `STAGECRAFT_BENCH_HOSTS` (default 20), `STAGECRAFT_BENCH_ITERS` (default 3),
//! `STAGECRAFT_BENCH_SKIP` (comma-separated tools to leave out while working on one of them:
//! `ansible`, `pyinfra`, `loop`, `kex`; the targets that need a skipped tool are not judged).
//! Exit codes: 0 the report was printed (a target may read FAIL); 1 a tool failed to run or gave
//! wrong output; 2 sshd, the venv or a tool could not be set up. Run without `--bench` (as
//! `cargo test --all-targets` does) it is a smoke test: 2 hosts, 1 iteration.

#[path = "../tests/integration/sshd.rs"]
mod sshd;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stagecraft");
const VENV: &str = "/var/tmp/sc-bench-venv";
/// No single tool run may take longer than this.
const CHILD_LIMIT: Duration = Duration::from_secs(300);
/// Commands per host in scenario (b).
const SEQ: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Stagecraft,
    Ansible,
    Pyinfra,
    ControlMaster,
    /// Stagecraft with `kex = "curve25519-sha256"`, the key exchange pyinfra (paramiko) uses.
    StagecraftClassicKex,
}

const TOOLS: [Tool; 5] = [
    Tool::Stagecraft,
    Tool::Ansible,
    Tool::Pyinfra,
    Tool::ControlMaster,
    Tool::StagecraftClassicKex,
];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Stagecraft => "stagecraft",
            Tool::Ansible => "ansible",
            Tool::Pyinfra => "pyinfra",
            Tool::ControlMaster => "ssh ControlMaster loop",
            Tool::StagecraftClassicKex => "stagecraft kex=curve25519",
        }
    }
}

/// A failure: exit code and message.
struct Fail(i32, String);

fn setup_err(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}

fn run_err(msg: impl Into<String>) -> Fail {
    Fail(1, msg.into())
}

/// The hosts plus the files every tool shares.
struct Fleet {
    hosts: Vec<sshd::Sshd>,
    work: tempfile::TempDir,
    key: PathBuf,
    known: PathBuf,
    user: String,
}

impl Fleet {
    fn dir(&self) -> &Path {
        self.work.path()
    }
}

fn env_usize(name: &str, default: usize) -> Result<usize, Fail> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| setup_err(format!("{name}={v}: expected a positive integer"))),
        Err(_) => Ok(default),
    }
}

fn start_fleet(n: usize) -> Result<Fleet, Fail> {
    let work = tempfile::Builder::new()
        .prefix("sc-bench-ssh-")
        .tempdir_in("/var/tmp")
        .map_err(|e| setup_err(format!("temp dir under /var/tmp: {e}")))?;
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        // The harness panics (saying why) when sshd cannot start.
        let host = std::panic::catch_unwind(sshd::Sshd::start)
            .map_err(|_| setup_err(format!("sshd host {i} of {n} could not start (see above)")))?;
        hosts.push(host);
    }
    let key = hosts[0].key_path();
    let pubkey = fs::read_to_string(key.with_extension("pub"))
        .map_err(|e| setup_err(format!("read public key: {e}")))?;
    let mut known_lines = String::new();
    for h in &hosts {
        fs::write(h.dir().join("authorized_keys"), &pubkey)
            .map_err(|e| setup_err(format!("authorize key on {}: {e}", h.addr())))?;
        known_lines.push_str(
            &fs::read_to_string(h.known_hosts_path())
                .map_err(|e| setup_err(format!("read known_hosts: {e}")))?,
        );
    }
    let known = work.path().join("known_hosts");
    fs::write(&known, known_lines).map_err(|e| setup_err(format!("write known_hosts: {e}")))?;
    let user = hosts[0].user().to_string();
    Ok(Fleet {
        hosts,
        work,
        key,
        known,
        user,
    })
}

/// Creates the venv and installs ansible-core and pyinfra unless they are there already.
fn ensure_venv() -> Result<(), Fail> {
    let bin = Path::new(VENV).join("bin");
    if bin.join("ansible").is_file() && bin.join("pyinfra").is_file() {
        return Ok(());
    }
    eprintln!("setting up {VENV} (python3 -m venv, pip install ansible-core pyinfra)...");
    if !bin.join("pip").is_file() {
        let st = Command::new("python3")
            .args(["-m", "venv", VENV])
            .status()
            .map_err(|e| setup_err(format!("cannot run python3: {e}")))?;
        if !st.success() {
            return Err(setup_err(format!("python3 -m venv {VENV}: {st}")));
        }
    }
    let st = Command::new(bin.join("pip"))
        .args(["install", "-q", "ansible-core", "pyinfra"])
        .status()
        .map_err(|e| setup_err(format!("cannot run pip: {e}")))?;
    if !st.success() {
        return Err(setup_err(format!("pip install ansible-core pyinfra: {st}")));
    }
    Ok(())
}

fn venv_bin(name: &str) -> PathBuf {
    Path::new(VENV).join("bin").join(name)
}

/// One line of version output, or a setup error.
fn version(cmd: &Path, arg: &str) -> Result<String, Fail> {
    let out = Command::new(cmd)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| setup_err(format!("cannot run {}: {e}", cmd.display())))?;
    if !out.status.success() {
        return Err(setup_err(format!(
            "{} {arg}: {}: {}",
            cmd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// Writes every tool's inputs for both scenarios.
fn write_inputs(f: &Fleet) -> Result<(), Fail> {
    let d = f.dir();
    let w = |rel: &str, text: &str| {
        fs::write(d.join(rel), text).map_err(|e| setup_err(format!("write {rel}: {e}")))
    };
    let key = f.key.display();
    let known = f.known.display();
    let n = f.hosts.len();

    // Stagecraft: a project with the `ssh` capability and one script per scenario.
    fs::create_dir_all(d.join("sc")).map_err(|e| setup_err(format!("mkdir sc: {e}")))?;
    fs::create_dir_all(d.join("sc-home")).map_err(|e| setup_err(format!("mkdir: {e}")))?;
    w("sc/stagecraft.yml", "name: bench\npermissions:\n  - ssh\n")?;
    let ports: Vec<String> = f.hosts.iter().map(|h| h.port().to_string()).collect();
    for (file, cmds, kex) in [
        ("a.luau", 1, ""),
        ("b.luau", SEQ, ""),
        ("a-kex.luau", 1, "kex = \"curve25519-sha256\", "),
        ("b-kex.luau", SEQ, "kex = \"curve25519-sha256\", "),
    ] {
        let script = format!(
            r#"local ssh = require("stagecraft/ssh")
local task = require("stagecraft/task")
local ports = {{ {ports} }}
local done = task.map(ports, function(port)
  local h = ssh.connect({{{kex}host = "127.0.0.1", port = port, user = "{user}", key = "{key}", known_hosts_file = "{known}"}})
  for _ = 1, {cmds} do
    local r = h:run({{"echo", "ok"}})
    if r.code ~= 0 or r.stdout ~= "ok\n" then error("port " .. port .. ": code " .. r.code .. ", stdout " .. r.stdout) end
  end
  return {cmds}
end)
local total = 0
for _, c in done do total += c end
print("commands " .. total)
"#,
            ports = ports.join(", "),
            user = f.user,
        );
        w(&format!("sc/{file}"), &script)?;
    }

    // Ansible: ini inventory, a playbook for (b).
    let mut inv = String::from("[bench]\n");
    for (i, h) in f.hosts.iter().enumerate() {
        let _ = writeln!(
            inv,
            "h{i} ansible_host=127.0.0.1 ansible_port={} ansible_user={} ansible_ssh_private_key_file={key}",
            h.port(),
            f.user
        );
    }
    let _ = write!(
        inv,
        "\n[bench:vars]\nansible_ssh_common_args='-o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes'\nansible_python_interpreter=/usr/bin/python3\n"
    );
    w("ansible.ini", &inv)?;
    let mut play = String::from("- hosts: all\n  gather_facts: false\n  tasks:\n");
    for i in 0..SEQ {
        let _ = writeln!(play, "    - name: c{i}\n      command: echo ok");
    }
    w("play.yml", &play)?;
    let cfg = format!("[defaults]\nforks = {n}\nhost_key_checking = True\nnocolor = True\n");
    w("ansible.cfg", &cfg)?;

    // pyinfra: inventory.py and a deploy file for (b).
    let mut pinv = String::from("hosts = [\n");
    for (i, h) in f.hosts.iter().enumerate() {
        let _ = writeln!(
            pinv,
            "    (\"h{i}\", {{\"ssh_hostname\": \"127.0.0.1\", \"ssh_port\": {}, \"ssh_user\": \"{}\", \"ssh_key\": \"{key}\", \"ssh_known_hosts_file\": \"{known}\", \"ssh_strict_host_key_checking\": \"yes\"}}),",
            h.port(),
            f.user
        );
    }
    pinv.push_str("]\n");
    w("inventory.py", &pinv)?;
    let mut deploy = String::from("from pyinfra.operations import server\n\n");
    for i in 0..SEQ {
        let _ = writeln!(
            deploy,
            "server.shell(name=\"c{i}\", commands=[\"echo ok\"])"
        );
    }
    w("deploy.py", &deploy)?;

    // ControlMaster loop: $1 = commands per host, $2 = control/output dir.
    let mut sh = String::from("#!/bin/bash\nset -u\ncmds=$1\ndir=$2\npids=()\n");
    for (i, h) in f.hosts.iter().enumerate() {
        // Output goes to files: a ControlPersist master keeps its inherited stdio open.
        let _ = writeln!(
            sh,
            "( for ((k = 0; k < cmds; k++)); do ssh -F /dev/null -i {key} -p {port} -l {user} \
             -o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \
             -o ControlMaster=auto -o ControlPath=\"$dir/cm-{i}\" -o ControlPersist=60 \
             127.0.0.1 echo ok >>\"$dir/out-{i}\" 2>>\"$dir/err-{i}\" </dev/null || exit 1; done ) &\npids+=($!)",
            port = h.port(),
            user = f.user,
        );
    }
    sh.push_str("rc=0\nfor p in \"${pids[@]}\"; do wait \"$p\" || rc=1; done\nexit $rc\n");
    w("cm.sh", &sh)?;
    Ok(())
}

/// Runs `cmd` with stdout/stderr to files in `dir`, killing it after `CHILD_LIMIT`.
fn timed(mut cmd: Command, dir: &Path, what: &str) -> Result<(Duration, String), Fail> {
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let out = fs::File::create(&out_path).map_err(|e| run_err(format!("{what}: {e}")))?;
    let err = fs::File::create(&err_path).map_err(|e| run_err(format!("{what}: {e}")))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| setup_err(format!("{what}: cannot start: {e}")))?;
    let status: ExitStatus = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| run_err(format!("{what}: wait: {e}")))?
        {
            break st;
        }
        if start.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(run_err(format!(
                "{what}: still running after {CHILD_LIMIT:?}, killed"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = start.elapsed();
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        return Err(run_err(format!(
            "{what}: {status}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
            tail(&stdout),
            tail(&stderr)
        )));
    }
    Ok((wall, stdout))
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(3000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Closes every ControlMaster whose socket is in `dir` (untimed).
fn close_masters(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_socket = {
            use std::os::unix::fs::FileTypeExt;
            e.file_type().is_ok_and(|t| t.is_socket())
        };
        if is_socket {
            let _ = Command::new("ssh")
                .args(["-F", "/dev/null", "-o"])
                .arg(format!("ControlPath={}", p.display()))
                .args(["-O", "exit", "bench-master"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// One timed run of `tool` on scenario `b` (false: a), with its output checked.
fn run_once(f: &Fleet, tool: Tool, b: bool, iter: usize) -> Result<Duration, Fail> {
    let d = f.dir();
    let n = f.hosts.len();
    let cmds = if b { SEQ } else { 1 };
    let scen = if b { "b" } else { "a" };
    let what = format!("{} scenario ({scen}) iteration {}", tool.name(), iter + 1);
    // Per-run scratch dir: outputs and control sockets.
    let run_dir = d.join(format!(
        "run-{}-{scen}-{iter}",
        tool.name().replace(' ', "_")
    ));
    fs::create_dir_all(&run_dir).map_err(|e| run_err(format!("{what}: {e}")))?;
    let path = format!(
        "{}:{}",
        Path::new(VENV).join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let result = match tool {
        Tool::Stagecraft | Tool::StagecraftClassicKex => {
            let script = match (tool, b) {
                (Tool::Stagecraft, false) => "a.luau",
                (Tool::Stagecraft, true) => "b.luau",
                (_, false) => "a-kex.luau",
                (_, true) => "b-kex.luau",
            };
            let mut c = Command::new(BIN);
            c.args(["run", script])
                .current_dir(d.join("sc"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", d.join("sc-home"))
                .env("STAGECRAFT_HOME", d.join("sc-home"));
            timed(c, &run_dir, &what).and_then(|(wall, out)| {
                if out.trim() == format!("commands {}", n * cmds) {
                    Ok(wall)
                } else {
                    Err(run_err(format!(
                        "{what}: unexpected output: {}",
                        tail(&out)
                    )))
                }
            })
        }
        Tool::Ansible => {
            let mut c = if b {
                let mut c = Command::new(venv_bin("ansible-playbook"));
                c.args(["-i", "ansible.ini", "-f", &n.to_string(), "play.yml"]);
                c
            } else {
                let mut c = Command::new(venv_bin("ansible"));
                c.args([
                    "all",
                    "-i",
                    "ansible.ini",
                    "-f",
                    &n.to_string(),
                    "-m",
                    "command",
                    "-a",
                    "echo ok",
                ]);
                c
            };
            c.current_dir(d)
                .env("PATH", &path)
                .env("HOME", &run_dir)
                .env("ANSIBLE_CONFIG", d.join("ansible.cfg"))
                .env("ANSIBLE_SSH_CONTROL_PATH_DIR", run_dir.join("cp"))
                .env("ANSIBLE_LOCAL_TEMP", run_dir.join("tmp"));
            timed(c, &run_dir, &what).and_then(|(wall, out)| {
                let ok = if b {
                    let want = format!("ok={} ", SEQ);
                    out.lines()
                        .filter(|l| l.contains(&want) && l.contains("failed=0"))
                        .count()
                        == n
                } else {
                    out.matches("CHANGED | rc=0").count() == n
                };
                if ok {
                    Ok(wall)
                } else {
                    Err(run_err(format!(
                        "{what}: unexpected output:\n{}",
                        tail(&out)
                    )))
                }
            })
        }
        Tool::Pyinfra => {
            let mut c = Command::new(venv_bin("pyinfra"));
            c.args(["-y", "--parallel", &n.to_string(), "inventory.py"]);
            if b {
                c.arg("deploy.py");
            } else {
                c.args(["exec", "--", "echo", "ok"]);
            }
            c.current_dir(d)
                .env("PATH", &path)
                .env("HOME", &run_dir)
                .env("NO_COLOR", "1");
            timed(c, &run_dir, &what).and_then(|(wall, out)| {
                let err = fs::read_to_string(run_dir.join("stderr")).unwrap_or_default();
                let all = format!("{out}{err}");
                // The results table's last line: `Grand total  TOTAL  SUCCESS  ERROR  ...`
                // (per-host output lines are not printed for larger inventories).
                let want = (n * cmds).to_string();
                let ok = all.lines().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() >= 5
                        && w[..2] == ["Grand", "total"]
                        && w[2] == want
                        && w[3] == want
                        && w[4] == "-"
                });
                if ok {
                    Ok(wall)
                } else {
                    Err(run_err(format!(
                        "{what}: unexpected output:\n{}",
                        tail(&all)
                    )))
                }
            })
        }
        Tool::ControlMaster => {
            let mut c = Command::new("bash");
            c.arg(d.join("cm.sh")).arg(cmds.to_string()).arg(&run_dir);
            timed(c, &run_dir, &what).and_then(|(wall, _)| {
                for i in 0..n {
                    let out =
                        fs::read_to_string(run_dir.join(format!("out-{i}"))).unwrap_or_default();
                    if out != "ok\n".repeat(cmds) {
                        let err = fs::read_to_string(run_dir.join(format!("err-{i}")))
                            .unwrap_or_default();
                        return Err(run_err(format!(
                            "{what}: host {i}: stdout {out:?}, stderr {err}"
                        )));
                    }
                }
                Ok(wall)
            })
        }
    };
    close_masters(&run_dir);
    close_masters(&run_dir.join("cp"));
    result
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let m = s.len() / 2;
    if s.is_empty() {
        Duration::ZERO
    } else if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `STAGECRAFT_BENCH_SKIP=ansible,pyinfra,loop`: tools left out of this run.
fn skipped() -> Result<Vec<Tool>, Fail> {
    let Ok(v) = std::env::var("STAGECRAFT_BENCH_SKIP") else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "ansible" => Ok(Tool::Ansible),
            "pyinfra" => Ok(Tool::Pyinfra),
            "loop" => Ok(Tool::ControlMaster),
            "kex" => Ok(Tool::StagecraftClassicKex),
            other => Err(setup_err(format!(
                "STAGECRAFT_BENCH_SKIP: unknown tool '{other}' (ansible, pyinfra, loop, kex)"
            ))),
        })
        .collect()
}

fn bench(smoke: bool) -> Result<(), Fail> {
    let (n, iters) = if smoke {
        (2, 1)
    } else {
        (
            env_usize("STAGECRAFT_BENCH_HOSTS", 20)?,
            env_usize("STAGECRAFT_BENCH_ITERS", 3)?,
        )
    };
    let skip = skipped()?;
    ensure_venv()?;
    let versions = [
        ("stagecraft", version(Path::new(BIN), "--version")?),
        ("ansible", version(&venv_bin("ansible"), "--version")?),
        ("pyinfra", version(&venv_bin("pyinfra"), "--version")?),
        ("ssh", version(Path::new("ssh"), "-V")?),
    ];
    let start = Instant::now();
    let fleet = start_fleet(n)?;
    write_inputs(&fleet)?;
    eprintln!(
        "{n} sshd hosts up in {} (127.0.0.1 ports {}..{}), {iters} iteration(s)",
        ms(start.elapsed()),
        fleet.hosts.iter().map(|h| h.port()).min().unwrap_or(0),
        fleet.hosts.iter().map(|h| h.port()).max().unwrap_or(0)
    );

    // samples[scenario][tool]
    let mut samples = vec![vec![Vec::new(); TOOLS.len()]; 2];
    for iter in 0..iters {
        for (si, b) in [false, true].into_iter().enumerate() {
            for k in 0..TOOLS.len() {
                let ti = (k + iter) % TOOLS.len();
                if skip.contains(&TOOLS[ti]) {
                    continue;
                }
                let wall = run_once(&fleet, TOOLS[ti], b, iter)?;
                eprintln!(
                    "  iter {} ({}) {:<24} {}",
                    iter + 1,
                    if b { "b" } else { "a" },
                    TOOLS[ti].name(),
                    ms(wall)
                );
                samples[si][ti].push(wall);
            }
        }
    }

    println!();
    println!(
        "ssh fan-out: {n} loopback sshd hosts (UsePAM no), {iters} iteration(s), medians of wall time"
    );
    for (name, v) in versions {
        println!("  {name:<10} {v}");
    }
    println!();
    let head_a = format!("(a) 1 cmd x {n} hosts");
    let head_b = format!("(b) {SEQ} cmds x {n} hosts");
    let (wa, wb) = (head_a.len(), head_b.len());
    println!("| {:<25} | {head_a} | ratio | {head_b} | ratio |", "tool");
    println!(
        "|{}|{}:|------:|{}:|------:|",
        "-".repeat(27),
        "-".repeat(wa + 1),
        "-".repeat(wb + 1)
    );
    let med: Vec<Vec<Duration>> = samples
        .iter()
        .map(|s| s.iter().map(|v| median(v)).collect())
        .collect();
    let ratio =
        |si: usize, ti: usize| med[si][ti].as_secs_f64() / med[si][0].as_secs_f64().max(1e-9);
    for (ti, t) in TOOLS.iter().enumerate() {
        if skip.contains(t) {
            continue;
        }
        println!(
            "| {:<25} | {:>wa$} | {:>5} | {:>wb$} | {:>5} |",
            t.name(),
            ms(med[0][ti]),
            format!("{:.2}x", ratio(0, ti)),
            ms(med[1][ti]),
            format!("{:.2}x", ratio(1, ti))
        );
    }
    println!("(ratio: the tool's median / Stagecraft's; above 1 means Stagecraft is faster)");
    println!();
    let judged = |t: Tool| !skip.contains(&t);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let ansible_ok = ratio(0, 1) >= 5.0 && ratio(1, 1) >= 5.0;
    let pyinfra_ok = ratio(0, 2) >= 1.0 && ratio(1, 2) >= 1.0;
    // Within 1.2x: stagecraft <= 1.2 * loop, i.e. loop / stagecraft >= 1/1.2.
    let cm_ok = ratio(1, 3) >= 1.0 / 1.2;
    if judged(Tool::Ansible) {
        println!(
            "target: >= 5x faster than Ansible (a and b):   {:.2}x / {:.2}x  {}",
            ratio(0, 1),
            ratio(1, 1),
            verdict(ansible_ok)
        );
    }
    if judged(Tool::Pyinfra) {
        println!(
            "target: at least as fast as pyinfra (a and b): {:.2}x / {:.2}x  {}",
            ratio(0, 2),
            ratio(1, 2),
            verdict(pyinfra_ok)
        );
    }
    if judged(Tool::Pyinfra) && judged(Tool::StagecraftClassicKex) {
        // pyinfra's paramiko has no post-quantum key exchange: compare at the same one too.
        let r = |si: usize| med[si][2].as_secs_f64() / med[si][4].as_secs_f64().max(1e-9);
        println!(
            "         ... with pyinfra's key exchange (curve25519): {:.2}x / {:.2}x  {}",
            r(0),
            r(1),
            verdict(r(0) >= 1.0 && r(1) >= 1.0)
        );
    }
    if judged(Tool::ControlMaster) {
        println!(
            "target: within 1.2x of the ControlMaster loop on (b): stagecraft/loop = {:.2}  {}",
            1.0 / ratio(1, 3).max(1e-9),
            verdict(cm_ok)
        );
    }
    drop(fleet);
    Ok(())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    let smoke = !std::env::args().any(|a| a == "--bench");
    match bench(smoke) {
        Ok(()) => {}
        Err(Fail(code, msg)) => {
            let kind = if code == 2 { "setup failed" } else { "failed" };
            eprintln!("bench ssh: {kind}: {msg}");
            std::process::exit(code);
        }
    }
}
