//! Real `sshd` instances for SSH tests, started by the tests themselves.
//!
//! `Sshd::start()` runs a private Debian `/usr/sbin/sshd` on a free loopback port with its own
//! host key, user key pair, `authorized_keys`, `known_hosts` and `sshd_config`, all in a temp dir.
//! `NetnsHost::start()` runs one inside its own network namespace at a distinct 10.X.Y.2 address,
//! reached from the root namespace over a veth pair, so multi-host tests see distinct hosts.
//!
//! ```ignore
//! let host = Sshd::start();
//! let out = host.ssh_cmd(&["echo", "hi"]).output().unwrap();
//! ```
//!
//! Needs root (the login user is the current user, root here) and the `sshd:openssh-server` and
//! `ip:iproute2` packages listed in `scripts/test`. When something cannot start, the constructor
//! panics saying why; nothing returns early as a pass. A test process killed with SIGKILL leaks
//! its sshd processes and namespaces (`ip netns list | grep ^sc-10-`); a normal exit or a failed
//! test cleans up through `Drop`.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// How to start an [`Sshd`]; `Default` is loopback, no PAM.
#[derive(Clone, Debug)]
pub struct SshdOptions {
    /// `ListenAddress`.
    pub listen: IpAddr,
    /// `UsePAM`. `yes` costs a PAM session per channel (see the self-test notes below).
    pub use_pam: bool,
}

impl Default for SshdOptions {
    fn default() -> SshdOptions {
        SshdOptions {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            use_pam: false,
        }
    }
}

/// A private sshd, killed (with everything it started) on drop.
pub struct Sshd {
    dir: tempfile::TempDir,
    opts: SshdOptions,
    port: u16,
    /// Runs sshd inside this network namespace (`ip netns exec`).
    netns: Option<String>,
    user: String,
    child: Option<Child>,
}

impl Sshd {
    /// On 127.0.0.1, a free port.
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Sshd {
        Sshd::spawn(opts, None, None)
    }

    /// `port` None: pick a free one (retrying when another process takes it first).
    fn spawn(opts: SshdOptions, port: Option<u16>, netns: Option<String>) -> Sshd {
        ensure_privsep_dir();
        let dir = tempfile::Builder::new()
            .prefix("sc-sshd-")
            .tempdir()
            .expect("temp dir for sshd");
        keygen(&dir.path().join("host_ed25519"));
        keygen(&dir.path().join("id_ed25519"));
        fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("write authorized_keys");
        let mut sshd = Sshd {
            dir,
            opts,
            port: 0,
            netns,
            user: current_user(),
            child: None,
        };
        match port {
            Some(p) => {
                sshd.port = p;
                sshd.write_files();
                if let Err(e) = sshd.launch() {
                    panic!("sshd on {}: {e}", sshd.addr());
                }
            }
            None => {
                let mut last = String::new();
                for _ in 0..10 {
                    sshd.port = free_port(sshd.opts.listen);
                    sshd.write_files();
                    match sshd.launch() {
                        Ok(()) => return sshd,
                        Err(Launch::PortTaken(e)) => last = e,
                        Err(e) => panic!("sshd on {}: {e}", sshd.addr()),
                    }
                }
                panic!("sshd: no free port after 10 tries; last error: {last}");
            }
        }
        sshd
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.opts.listen, self.port)
    }

    /// The login user (the current user: root on the test machines).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key that `authorized_keys` accepts.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A known_hosts file holding exactly this host's key, for `StrictHostKeyChecking=yes`.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `ssh-ed25519 AAAA…` (no comment).
    pub fn host_key_pub(&self) -> String {
        let line =
            fs::read_to_string(self.dir.path().join("host_ed25519.pub")).expect("read host key");
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `known_hosts` host pattern: `[127.0.0.1]:PORT`, or the bare address on port 22.
    pub fn host_pattern(&self) -> String {
        if self.port == 22 {
            self.opts.listen.to_string()
        } else {
            format!("[{}]:{}", self.opts.listen, self.port)
        }
    }

    /// The temp dir holding keys, config and logs (a good place for ControlPath sockets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's own stderr so far (`-e`, `LogLevel ERROR`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL sshd and every process it started (connection handlers, running commands): the
    /// host dies; open connections break, new ones are refused. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id());
            let _ = child.wait();
        }
    }

    /// Kill, then start again on the same address, port and keys.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(Launch::PortTaken(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("sshd restart on {}: {e}", self.addr()),
            }
        }
    }

    /// The system `ssh` client, strict host key checking against [`Sshd::known_hosts_path`].
    /// `remote` is joined with spaces and run by the remote shell, as `ssh` always does.
    pub fn ssh_cmd(&self, remote: &[&str]) -> Command {
        self.ssh_cmd_opts(&[], remote)
    }

    /// As [`Sshd::ssh_cmd`] with extra arguments before the destination (`-o X=Y`, `-O exit`);
    /// they come first, so an `-o` here overrides the defaults (ssh keeps the first value).
    pub fn ssh_cmd_opts(&self, opts: &[&str], remote: &[&str]) -> Command {
        self.ssh_cmd_as(&self.key_path(), &self.known_hosts_path(), opts, remote)
    }

    /// As [`Sshd::ssh_cmd_opts`] with another identity and known_hosts file.
    pub fn ssh_cmd_as(
        &self,
        key: &Path,
        known_hosts: &Path,
        opts: &[&str],
        remote: &[&str],
    ) -> Command {
        let mut c = Command::new("ssh");
        c.args(opts)
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "ConnectTimeout=10",
                "-l",
                &self.user,
                &self.opts.listen.to_string(),
                "--",
            ])
            .args(remote)
            .stdin(Stdio::null());
        c
    }

    /// Established TCP connections to sshd's listening address, counted on the server side in
    /// sshd's own network namespace (`/proc/<sshd pid>/net/tcp`). 0 when sshd is not running.
    pub fn established_connections(&self) -> usize {
        let Some(child) = &self.child else {
            return 0;
        };
        let Ok(table) = fs::read_to_string(format!("/proc/{}/net/tcp", child.id())) else {
            return 0;
        };
        let IpAddr::V4(want) = self.opts.listen else {
            panic!("established_connections: IPv4 listen addresses only");
        };
        table
            .lines()
            .skip(1)
            .filter_map(parse_tcp_line)
            .filter(|(local, state)| {
                *state == 1 && *local == SocketAddr::new(want.into(), self.port)
            })
            .count()
    }

    fn write_files(&self) {
        let d = self.dir.path();
        let known = format!("{} {}\n", self.host_pattern(), self.host_key_pub());
        fs::write(d.join("known_hosts"), known).expect("write known_hosts");
        let penalties = if openssh_at_least(9, 8) {
            // 9.8+ refuses sources that failed auth recently; tests fail auth on purpose.
            "PerSourcePenalties no\n"
        } else {
            ""
        };
        let config = format!(
            "ListenAddress {listen}\n\
             Port {port}\n\
             HostKey {dir}/host_ed25519\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             PidFile {dir}/sshd.pid\n\
             UsePAM {pam}\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             MaxSessions 50\n\
             MaxStartups 100:30:200\n\
             LogLevel ERROR\n\
             PrintMotd no\n\
             Subsystem sftp internal-sftp\n\
             {penalties}",
            listen = self.opts.listen,
            port = self.port,
            dir = d.display(),
            pam = if self.opts.use_pam { "yes" } else { "no" },
        );
        fs::write(d.join("sshd_config"), config).expect("write sshd_config");
    }

    /// Start sshd and wait until it has bound its port (it writes the PidFile only after
    /// listening) and accepts a connection that sends the SSH banner.
    fn launch(&mut self) -> Result<(), Launch> {
        let d = self.dir.path();
        let pidfile = d.join("sshd.pid");
        let _ = fs::remove_file(&pidfile);
        let log = fs::File::create(d.join("sshd.log")).expect("create sshd.log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(|e| {
            Launch::Failed(format!(
                "cannot run {SSHD}: {e} (is openssh-server installed?)"
            ))
        })?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        let mut bound = false;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log();
                let msg = format!("sshd exited with {status} before it was ready; stderr:\n{log}");
                return Err(if log.contains("Address already in use") {
                    Launch::PortTaken(msg)
                } else {
                    Launch::Failed(msg)
                });
            }
            if !bound {
                bound = fs::read_to_string(&pidfile)
                    .is_ok_and(|s| s.trim().parse::<u32>().is_ok_and(|p| p == pid));
            }
            // An sshd on a namespace's own loopback cannot be reached from here: its pid file
            // (written once it listens) is the sign.
            let unreachable_from_here = self.netns.is_some() && self.opts.listen.is_loopback();
            if bound && (unreachable_from_here || banner(self.addr())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Launch::Failed(format!(
                    "sshd not ready after {READY_DEADLINE:?} (pid file written: {bound}); stderr:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Launch {
    PortTaken(String),
    Failed(String),
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::PortTaken(m) | Launch::Failed(m) => f.write_str(m),
        }
    }
}

/// An sshd in its own network namespace `sc-10-X-Y`: `10.X.Y.2:22` inside, reached over a veth
/// pair from `10.X.Y.1` in the root namespace. Everything goes away on drop.
pub struct NetnsHost {
    netns: String,
    sshd: Sshd,
}

static NETNS_COUNTER: AtomicU32 = AtomicU32::new(0);

impl NetnsHost {
    pub fn start() -> NetnsHost {
        NetnsHost::start_with(false)
    }

    pub fn start_with(use_pam: bool) -> NetnsHost {
        // X in 200..=249, Y in 0..=255. Start each process in its own stretch so parallel test
        // processes rarely meet; `ip netns add` is exclusive, so a taken name means "next".
        const SLOTS: u32 = 50 * 256;
        let base = std::process::id().wrapping_mul(16);
        let mut last = String::new();
        for _ in 0..64 {
            let n = base.wrapping_add(NETNS_COUNTER.fetch_add(1, Ordering::Relaxed)) % SLOTS;
            let (x, y) = (200 + n / 256, n % 256);
            let name = format!("sc-10-{x}-{y}");
            let add = ip(&["netns", "add", &name]);
            if !add.status.success() {
                let err = String::from_utf8_lossy(&add.stderr).into_owned();
                if err.contains("File exists") {
                    last = err;
                    continue;
                }
                panic!(
                    "NetnsHost: `ip netns add {name}` failed: {} (network namespaces need root \
                     and CAP_SYS_ADMIN; iproute2 must be installed)",
                    err.trim()
                );
            }
            match setup_veth(&name, x, y) {
                Ok(()) => {}
                Err(e) => {
                    let _ = ip(&["netns", "del", &name]);
                    last = e;
                    continue;
                }
            }
            let opts = SshdOptions {
                listen: IpAddr::V4(Ipv4Addr::new(10, x as u8, y as u8, 2)),
                use_pam,
            };
            // If sshd panics, the namespace must still go.
            let guard = NetnsGuard(name.clone());
            let sshd = Sshd::spawn(opts, Some(22), Some(name.clone()));
            std::mem::forget(guard);
            return NetnsHost { netns: name, sshd };
        }
        panic!("NetnsHost: no free namespace/subnet after 64 tries; last error: {last}");
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host side of the veth pair (`10.X.Y.1`): where the host sees connections come from.
    pub fn gateway(&self) -> Ipv4Addr {
        let IpAddr::V4(a) = self.sshd.opts.listen else {
            unreachable!()
        };
        let [a, b, c, _] = a.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    pub fn sshd(&self) -> &Sshd {
        &self.sshd
    }

    /// A second sshd inside this namespace, on the namespace's own loopback (`127.0.0.1:2222`
    /// there) with its own keys: reachable only through this host, e.g. as a jump host, never
    /// from the root namespace (where 127.0.0.1:2222 is our own loopback).
    pub fn start_inner(&self) -> Sshd {
        Sshd::spawn(SshdOptions::default(), Some(2222), Some(self.netns.clone()))
    }

    pub fn sshd_mut(&mut self) -> &mut Sshd {
        &mut self.sshd
    }
}

impl std::ops::Deref for NetnsHost {
    type Target = Sshd;
    fn deref(&self) -> &Sshd {
        &self.sshd
    }
}

impl std::ops::DerefMut for NetnsHost {
    fn deref_mut(&mut self) -> &mut Sshd {
        &mut self.sshd
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        self.sshd.kill();
        delete_netns(&self.netns);
    }
}

struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        delete_netns(&self.0);
    }
}

/// Kill whatever still runs inside (sshd is already gone), then delete; the veth pair goes with
/// the namespace (the kernel removes the host side a moment later).
fn delete_netns(name: &str) {
    let pids = ip(&["netns", "pids", name]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) with a pid read from the namespace and a constant signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = ip(&["netns", "del", name]);
}

fn setup_veth(ns: &str, x: u32, y: u32) -> Result<(), String> {
    let host = format!("sch-{x}-{y}");
    let peer = format!("scn-{x}-{y}");
    let host_ip = format!("10.{x}.{y}.1/30");
    let peer_ip = format!("10.{x}.{y}.2/30");
    let steps: [&[&str]; 6] = [
        &[
            "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", ns,
        ],
        &["addr", "add", &host_ip, "dev", &host],
        &["link", "set", &host, "up"],
        &["-n", ns, "link", "set", "lo", "up"],
        &["-n", ns, "addr", "add", &peer_ip, "dev", &peer],
        &["-n", ns, "link", "set", &peer, "up"],
    ];
    for args in steps {
        let out = ip(args);
        if !out.status.success() {
            return Err(format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}); install iproute2"))
}

/// sshd refuses to start without its privilege separation directory (root-owned, not writable
/// by others); a fresh machine or container may not have it.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        fs::create_dir_all(dir).expect("create /run/sshd (sshd's privilege separation dir)");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod /run/sshd");
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-N",
            "",
            "-t",
            "ed25519",
            "-C",
            "stagecraft-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen ({e}); install openssh-client"));
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn current_user() -> String {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        let out = Command::new("id").arg("-un").output().expect("run id -un");
        String::from_utf8(out.stdout)
            .expect("utf-8 user name")
            .trim()
            .to_string()
    })
    .clone()
}

/// `ssh -V` prints e.g. `OpenSSH_9.2p1 Debian-2+deb12u10, ...` on stderr.
fn openssh_at_least(major: u32, minor: u32) -> bool {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    let v = *VERSION.get_or_init(|| {
        let out = Command::new("ssh").arg("-V").output().expect("run ssh -V");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let num = text
            .strip_prefix("OpenSSH_")
            .unwrap_or_else(|| panic!("unexpected `ssh -V` output: {text}"));
        let mut parts = num.split(|c: char| !c.is_ascii_digit());
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    });
    v >= (major, minor)
}

/// A port that was free a moment ago; `launch` retries when someone takes it first.
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Connects and reads an `SSH-2.0-` banner.
fn banner(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream.take(256))
        .read_line(&mut line)
        .is_ok_and(|_| line.starts_with("SSH-2.0-"))
}

/// `  0: 0100007F:1F90 00000000:0000 0A ...` → (local address, state).
fn parse_tcp_line(line: &str) -> Option<(SocketAddr, u8)> {
    let mut f = line.split_whitespace();
    let _slot = f.next()?;
    let (ip, port) = f.next()?.split_once(':')?;
    let _remote = f.next()?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    // The kernel prints the address as the in-memory u32 in native byte order.
    let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
    let port = u16::from_str_radix(port, 16).ok()?;
    Some((SocketAddr::new(ip.into(), port), state))
}

/// SIGKILL `pid` and all its descendants, found through /proc parent links. Each one is stopped
/// (SIGSTOP) as it is found and the scan repeats until it finds nothing new, so nothing can fork
/// away or be re-parented out of sight before the SIGKILLs.
fn kill_tree(pid: u32) {
    // SAFETY (all `libc::kill` calls here): kill(2) on pids of our child's tree, constant signals.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let mut tree = vec![pid];
    loop {
        let before = tree.len();
        for (child, parent) in process_parents() {
            if tree.contains(&parent) && !tree.contains(&child) {
                unsafe { libc::kill(child as i32, libc::SIGSTOP) };
                tree.push(child);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    for p in tree {
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

/// (pid, ppid) of every process.
fn process_parents() -> Vec<(u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may contain spaces and parens.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the harness against the system `ssh` client.

fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("run ssh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns true; panics with `what` after `deadline`.
fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn runs_a_command_and_passes_the_exit_code_through() {
    let host = Sshd::start();
    let (code, out, err) = run(host.ssh_cmd(&["echo", "hi"]));
    assert_eq!(
        (code, out.as_str()),
        (0, "hi\n"),
        "stderr: {err}\nsshd: {}",
        host.log()
    );
    let (code, out, _) = run(host.ssh_cmd(&["echo out; exit 7"]));
    assert_eq!((code, out.as_str()), (7, "out\n"));
    let (code, out, _) = run(host.ssh_cmd(&["id", "-un"]));
    assert_eq!((code, out.trim()), (0, host.user()));
}

#[test]
fn refuses_a_key_not_in_authorized_keys() {
    let host = Sshd::start();
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("id_other");
    keygen(&key);
    let (code, out, err) = run(host.ssh_cmd_as(&key, &host.known_hosts_path(), &[], &["true"]));
    assert_eq!(code, 255, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("Permission denied"), "stderr: {err}");
}

#[test]
fn refuses_a_changed_host_key_in_strict_mode() {
    let host = Sshd::start();
    let other = tempfile::tempdir().unwrap();
    let fake = other.path().join("fake_host");
    keygen(&fake);
    let fake_pub = fs::read_to_string(fake.with_extension("pub")).unwrap();
    let known = other.path().join("known_hosts");
    fs::write(&known, format!("{} {fake_pub}", host.host_pattern())).unwrap();
    let (code, _, err) = run(host.ssh_cmd_as(&host.key_path(), &known, &[], &["true"]));
    assert_eq!(code, 255, "stderr: {err}");
    assert!(
        err.contains("HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"),
        "stderr: {err}"
    );
}

#[test]
fn control_master_multiplexes_commands_over_one_connection() {
    let host = Sshd::start();
    let control = format!("ControlPath={}/cm-%C", host.dir().display());
    let opts = [
        "-o",
        "ControlMaster=auto",
        "-o",
        &control,
        "-o",
        "ControlPersist=30",
    ];
    for word in ["one", "two", "three"] {
        let (code, out, err) = run(host.ssh_cmd_opts(&opts, &["echo", word]));
        assert_eq!((code, out.trim()), (0, word), "stderr: {err}");
    }
    wait_until(Duration::from_secs(5), "one established connection", || {
        host.established_connections() == 1
    });
    let (code, _, err) = run(host.ssh_cmd_opts(&[&["-O", "check"][..], &opts].concat(), &[]));
    assert_eq!(code, 0, "ssh -O check: {err}");
    let (code, _, err) = run(host.ssh_cmd_opts(&[&["-O", "exit"][..], &opts].concat(), &[]));
    assert_eq!(code, 0, "ssh -O exit: {err}");
    wait_until(
        Duration::from_secs(5),
        "the master connection to close",
        || host.established_connections() == 0,
    );
}

#[test]
fn a_killed_host_refuses_connections_until_restarted() {
    let mut host = Sshd::start();
    let (code, _, err) = run(host.ssh_cmd(&["true"]));
    assert_eq!(code, 0, "stderr: {err}");
    host.kill();
    assert!(!host.is_running());
    let (code, _, err) = run(host.ssh_cmd(&["true"]));
    assert_eq!(code, 255, "stderr: {err}");
    assert!(err.contains("Connection refused"), "stderr: {err}");
    host.restart();
    let (code, out, err) = run(host.ssh_cmd(&["echo", "back"]));
    assert_eq!((code, out.as_str()), (0, "back\n"), "stderr: {err}");
}

#[test]
fn kill_breaks_open_connections_too() {
    let mut host = Sshd::start();
    let mut long = host.ssh_cmd(&["echo started; sleep 60"]);
    long.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = long.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let started = Instant::now();
    host.kill();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(255));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn netns_hosts_have_distinct_addresses() {
    let a = NetnsHost::start();
    let b = NetnsHost::start();
    assert_ne!(a.addr().ip(), b.addr().ip());
    for host in [&a, &b] {
        let (code, out, err) =
            run(host.ssh_cmd(&["ip -4 -o addr show scope global; echo \"$SSH_CONNECTION\""]));
        assert_eq!(code, 0, "stderr: {err}\nsshd: {}", host.log());
        let ip = host.addr().ip().to_string();
        // One global address (its own), then SSH_CONNECTION:
        // client-ip client-port server-ip server-port.
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{}: {out}", host.netns());
        assert!(
            lines[0].contains(&format!("inet {ip}/30")),
            "{}: {out}",
            host.netns()
        );
        let conn: Vec<&str> = lines[1].split(' ').collect();
        assert_eq!(conn[0], host.gateway().to_string(), "{out}");
        assert_eq!(&conn[2..], [ip.as_str(), "22"], "{out}");
        assert_eq!(host.port(), 22);
    }
}
