//! `cargo bench --bench docker`: Compose workflows against the real Docker Engine, Stagecraft next
//! to Debian's `docker-compose` (1.29) measured in the same run on the same compose file.
//!
//! | metric            | what is timed                                          | baseline                    |
//! |-------------------|--------------------------------------------------------|-----------------------------|
//! | cold `up`         | `stagecraft run up.luau` (`compose.up{project=}`) with | `docker-compose -p P up -d` |
//! |                   | nothing of the project present                         |                             |
//! | no-op re-apply    | the same `up` again, nothing changed (target 100 ms)   | the same, docker-compose    |
//! | rollout under load| `compose.rollout` of `web` to v2, then v3, while 16    | the same load just before   |
//! |                   | keep-alive connections hit Caddy's published port      | each rollout                |
//!
//! The stack (`COMPOSE` below): Caddy publishing `127.0.0.1::80` and proxying to the `web` alias,
//! `web` (2 replicas), `api`, `db` (named volume) and `worker`, all on one user network; `web` waits
//! for `db` to be healthy, the rest use `service_started`. Images are `stagecraft-test/web:1` and
//! `stagecraft-test/caddy:1`, built first by `tests/fixtures/images/build.sh all` (no registry).
//!
//! Each iteration brings one project up from cold with each tool (order alternating), re-applies
//! it, and takes it down with volumes (not timed), checking in between that nothing is left. The
//! no-op is checked, untimed, for changed container ids and, for Stagecraft, for mutating Engine
//! calls in its ledger run. Projects are named `scbench-<pid>-sc` / `-dc`; a guard removes
//! everything labelled with them on exit, also on error or panic, and a run removes what an
//! interrupted earlier run (whose pid is gone) left behind.
//!
//! Iterations: `STAGECRAFT_BENCH_ITERS` (default 5). Exit codes: 0 report printed (a target may
//! read MISS); 1 an invariant failed (a request failed during a rollout, the no-op mutated
//! something) or a step failed; 2 Docker, docker-compose or the images are unavailable. Run
//! without `--bench` (as `cargo test --all-targets` does) it is a smoke test: one iteration,
//! short load windows.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stagecraft");
const BUILD_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/images/build.sh"
);
const IMAGES: [&str; 2] = ["stagecraft-test/web:1", "stagecraft-test/caddy:1"];
const PROJECT_LABEL: &str = "com.docker.compose.project";
const PREFIX: &str = "scbench-";
/// Containers the stack runs: proxy, web x2, api, db, worker.
const CONTAINERS: usize = 6;
/// No single command may run longer than this.
const CHILD_LIMIT: Duration = Duration::from_secs(120);
/// Load generator: connections (one thread each) and the per-request I/O timeout.
const CONNECTIONS: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Versions the `web` service serves, in rollout order.
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// One file for both tools: docker-compose 1.29 reads a file without `version:` as the Compose
/// specification, including `deploy.replicas` and `condition: service_healthy`.
const COMPOSE: &str = r#"services:
  proxy:
    image: stagecraft-test/caddy:1
    ports:
      - "127.0.0.1::80"
    networks: [appnet]
    depends_on:
      web:
        condition: service_started
      api:
        condition: service_started
  web:
    image: stagecraft-test/web:1
    environment:
      VERSION: ${WEB_VERSION:-v1}
    networks: [appnet]
    deploy:
      replicas: 2
    depends_on:
      db:
        condition: service_healthy
  api:
    image: stagecraft-test/web:1
    environment:
      VERSION: api
    networks: [appnet]
    depends_on:
      db:
        condition: service_started
  db:
    image: stagecraft-test/web:1
    environment:
      VERSION: db
    volumes:
      - dbdata:/data
    networks: [appnet]
  worker:
    image: stagecraft-test/web:1
    environment:
      VERSION: worker
    networks: [appnet]
    depends_on:
      db:
        condition: service_started
networks:
  appnet: {}
volumes:
  dbdata: {}
"#;

type Res<T> = Result<T, String>;

/// How much to measure.
struct Sizes {
    iters: usize,
    /// Load before the first rollout, and the least between the two.
    window: Duration,
    warmup: Duration,
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// A finished command.
struct Done {
    wall: Duration,
    stdout: String,
    stderr: String,
}

/// Run `cmd` with its output in files, timing spawn to exit; kill it after `CHILD_LIMIT`.
/// A non-zero exit is an error carrying the tail of its stderr.
fn run(what: &str, mut cmd: Command, scratch: &Path) -> Res<Done> {
    let out_path = scratch.join("child.stdout");
    let err_path = scratch.join("child.stderr");
    let out = File::create(&out_path).map_err(|e| format!("{what}: {e}"))?;
    let err = File::create(&err_path).map_err(|e| format!("{what}: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    let (status, ended) = match rx.recv_timeout(CHILD_LIMIT) {
        Ok(done) => done,
        Err(_) => {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child, which
            // the waiting thread has not reaped (it would have sent by now).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            return Err(format!(
                "{what}: still running after {}s, killed",
                CHILD_LIMIT.as_secs()
            ));
        }
    };
    let wall = ended - started;
    let status = status.map_err(|e| format!("{what}: wait failed: {e}"))?;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{what}: {status}\n{}",
            tail(&format!("{stdout}{stderr}"), 30)
        ));
    }
    Ok(Done {
        wall,
        stdout,
        stderr,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `docker ARGS`, its stdout.
fn docker(args: &[&str]) -> Res<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("docker {}: cannot start: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Projects: what exists, and removing it
// ---------------------------------------------------------------------------------------------

/// Everything Docker has labelled with the project: "container x", "network y", "volume z".
fn leftovers(project: &str) -> Res<Vec<String>> {
    let filter = format!("label={PROJECT_LABEL}={project}");
    let mut out = Vec::new();
    for (kind, args) in [
        (
            "container",
            vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        ),
        (
            "network",
            vec![
                "network",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Name}}",
            ],
        ),
        (
            "volume",
            vec!["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"],
        ),
    ] {
        for name in lines(&docker(&args)?) {
            out.push(format!("{kind} {name}"));
        }
    }
    Ok(out)
}

/// Remove every container, network and volume labelled with the project; how many there were.
fn sweep(project: &str) -> Res<usize> {
    let filter = format!("label={PROJECT_LABEL}={project}");
    let mut removed = 0;
    let containers = lines(&docker(&["ps", "-aq", "--filter", &filter])?);
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker(&args)?;
        removed += containers.len();
    }
    let networks = lines(&docker(&["network", "ls", "-q", "--filter", &filter])?);
    if !networks.is_empty() {
        let mut args = vec!["network", "rm"];
        args.extend(networks.iter().map(String::as_str));
        docker(&args)?;
        removed += networks.len();
    }
    let volumes = lines(&docker(&["volume", "ls", "-q", "--filter", &filter])?);
    if !volumes.is_empty() {
        let mut args = vec!["volume", "rm", "-f"];
        args.extend(volumes.iter().map(String::as_str));
        docker(&args)?;
        removed += volumes.len();
    }
    Ok(removed)
}

/// Projects of earlier runs of this bench whose process is gone (interrupted runs).
fn stale_projects() -> Res<BTreeSet<String>> {
    let format = format!("{{{{.Label \"{PROJECT_LABEL}\"}}}}");
    let label = format!("label={PROJECT_LABEL}");
    let mut out = BTreeSet::new();
    for args in [
        ["ps", "-a", "--filter", &label, "--format", &format],
        ["network", "ls", "--filter", &label, "--format", &format],
        ["volume", "ls", "--filter", &label, "--format", &format],
    ] {
        for project in lines(&docker(&args)?) {
            let pid = project
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                out.insert(project);
            }
        }
    }
    Ok(out)
}

/// Removes everything of the bench's projects when dropped: on success, error or panic
/// (`main` owns it, so the outcome is printed first).
struct Cleanup {
    projects: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.projects {
            match sweep(p) {
                Ok(0) => {}
                Ok(n) => eprintln!("cleanup: removed {n} leftover object(s) of project {p}"),
                Err(e) => eprintln!(
                    "cleanup: could not remove project {p}: {e}\n  remove it with: docker-compose -p {p} down -v"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bench project
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Stagecraft,
    DockerCompose,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Stagecraft => "stagecraft",
            Tool::DockerCompose => "docker-compose",
        }
    }
}

/// The throwaway project folder both tools run in, with one Docker project name per tool.
struct Bench {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    sc: String,
    dc: String,
}

impl Bench {
    fn new() -> Res<Bench> {
        let dir = tempfile::Builder::new()
            .prefix("sc-docker-bench-")
            .tempdir()
            .map_err(|e| format!("temp project dir: {e}"))?;
        let home = tempfile::Builder::new()
            .prefix("sc-docker-bench-home-")
            .tempdir()
            .map_err(|e| format!("temp home dir: {e}"))?;
        let pid = std::process::id();
        let b = Bench {
            dir,
            home,
            sc: format!("{PREFIX}{pid}-sc"),
            dc: format!("{PREFIX}{pid}-dc"),
        };
        b.write(
            "stagecraft.yml",
            "name: docker-bench\npermissions:\n  - docker\n",
        )?;
        b.write("docker-compose.yml", COMPOSE)?;
        let p = &b.sc;
        b.write(
            "up.luau",
            &format!(
                "local compose = require(\"stagecraft/compose\")\nreturn compose.up({{ project = \"{p}\" }})\n"
            ),
        )?;
        b.write(
            "down.luau",
            &format!(
                "local compose = require(\"stagecraft/compose\")\nreturn compose.down({{ project = \"{p}\", volumes = true }})\n"
            ),
        )?;
        for v in &VERSIONS[1..] {
            b.write(
                &format!("rollout-{v}.luau"),
                &format!(
                    "local compose = require(\"stagecraft/compose\")\n\
                     return compose.rollout({{ project = \"{p}\", service = \"web\", env = {{ WEB_VERSION = \"{v}\" }} }})\n"
                ),
            )?;
        }
        Ok(b)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> Res<()> {
        std::fs::write(self.path(rel), text).map_err(|e| format!("write {rel}: {e}"))
    }

    fn project(&self, tool: Tool) -> &str {
        match tool {
            Tool::Stagecraft => &self.sc,
            Tool::DockerCompose => &self.dc,
        }
    }

    /// A command in the project folder with a clean environment (no stray COMPOSE_* or
    /// WEB_VERSION), the Docker connection settings kept.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("STAGECRAFT_HOME", self.home.path());
        for (k, v) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DOCKER_") {
                c.env(k, v);
            }
        }
        c
    }

    fn stagecraft(&self, script: &str) -> Command {
        self.command(BIN, &["run", "--json", script])
    }

    fn compose(&self, args: &[&str]) -> Command {
        let file = self.path("docker-compose.yml");
        let file = file.to_string_lossy();
        let mut all = vec!["-p", &self.dc, "-f", &file];
        all.extend_from_slice(args);
        self.command("docker-compose", &all)
    }

    fn run(&self, what: &str, cmd: Command) -> Res<Done> {
        run(what, cmd, self.home.path())
    }

    fn up(&self, tool: Tool) -> Res<Done> {
        match tool {
            Tool::Stagecraft => self.run("stagecraft run up.luau", self.stagecraft("up.luau")),
            Tool::DockerCompose => self.run("docker-compose up -d", self.compose(&["up", "-d"])),
        }
    }

    fn down(&self, tool: Tool) -> Res<()> {
        match tool {
            Tool::Stagecraft => self.run("stagecraft run down.luau", self.stagecraft("down.luau")),
            Tool::DockerCompose => {
                self.run("docker-compose down -v", self.compose(&["down", "-v"]))
            }
        }?;
        let left = leftovers(self.project(tool))?;
        if !left.is_empty() {
            return Err(format!(
                "{} down left behind: {}",
                tool.label(),
                left.join(", ")
            ));
        }
        Ok(())
    }

    /// Ids of the project's containers (all states), sorted.
    fn container_ids(&self, tool: Tool) -> Res<Vec<String>> {
        let filter = format!("label={PROJECT_LABEL}={}", self.project(tool));
        let mut ids = lines(&docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])?);
        ids.sort();
        Ok(ids)
    }

    fn running(&self, tool: Tool) -> Res<usize> {
        let filter = format!("label={PROJECT_LABEL}={}", self.project(tool));
        let ids = docker(&[
            "ps",
            "-q",
            "--filter",
            &filter,
            "--filter",
            "status=running",
        ])?;
        Ok(lines(&ids).len())
    }
}

/// `stagecraft run --json` output: the run id and the script's `result.changed`.
fn outcome(done: &Done) -> Res<(String, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_str(&done.stdout).map_err(|e| {
        format!(
            "stagecraft --json printed no JSON ({e}):\n{}",
            tail(&done.stdout, 10)
        )
    })?;
    let id = v["run_id"]
        .as_str()
        .ok_or("stagecraft --json: no run_id")?
        .to_string();
    Ok((id, v["result"].clone()))
}

/// Ledger calls of one run: the ops grouped with counts, and how many of them mutate.
fn ledger_calls(db: &Path, run_id: &str) -> Res<(BTreeMap<String, usize>, usize)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("open {}: {e}", db.display()))?;
    let mut stmt = conn
        .prepare("SELECT op, COUNT(*) FROM entries WHERE run_id = ?1 AND kind = 'call' GROUP BY op")
        .map_err(|e| format!("ledger query: {e}"))?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(|e| format!("ledger query: {e}"))?;
    let mut ops = BTreeMap::new();
    for row in rows {
        let (op, n) = row.map_err(|e| format!("ledger row: {e}"))?;
        ops.insert(op, n as usize);
    }
    if ops.is_empty() {
        return Err(format!(
            "the ledger {} has no calls for run {run_id}",
            db.display()
        ));
    }
    let mutating = ops
        .iter()
        .filter(|(op, _)| {
            *op == "docker.run"
                || op.starts_with("docker.container.")
                || *op == "docker.networks.create"
                || *op == "docker.volumes.create"
        })
        .map(|(_, n)| n)
        .sum();
    Ok((ops, mutating))
}

// ---------------------------------------------------------------------------------------------
// Load generator: HTTP/1.1 keep-alive over std TcpStream, one connection per thread
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Outcome {
    /// 2xx; the index in VERSIONS of the version the body names, or VERSIONS.len() for another.
    Ok(u8),
    /// Any other status.
    Status(u16),
    /// No response: connect, write, read, timeout, closed, malformed.
    Failed(&'static str),
}

#[derive(Clone, Copy)]
struct Rec {
    /// When the request started, from the load's t0.
    start_us: u64,
    latency_us: u64,
    outcome: Outcome,
}

struct Fail {
    kind: &'static str,
    message: String,
}

fn io_fail(stage: &'static str, e: std::io::Error) -> Fail {
    let kind = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout",
        _ => stage,
    };
    Fail {
        kind,
        message: format!("{stage}: {e}"),
    }
}

fn malformed(what: String) -> Fail {
    Fail {
        kind: "malformed",
        message: what,
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: stagecraft-bench\r\n\r\n";

/// One request on the connection (opened first if there is none). Returns status and body; on
/// an error, or when the server closes, the connection is dropped.
fn request(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
) -> Result<(u16, String), Fail> {
    let r = exchange(conn, addr);
    match &r {
        Ok((_, _, keep)) if *keep => {}
        _ => *conn = None,
    }
    r.map(|(status, body, _)| (status, body))
}

fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
) -> Result<(u16, String, bool), Fail> {
    let reader = match conn {
        Some(c) => c,
        None => {
            let s =
                TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| io_fail("connect", e))?;
            s.set_nodelay(true).map_err(|e| io_fail("connect", e))?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| io_fail("connect", e))?;
            s.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| io_fail("connect", e))?;
            conn.insert(BufReader::new(s))
        }
    };
    reader
        .get_mut()
        .write_all(REQUEST)
        .map_err(|e| io_fail("write", e))?;
    let mut line = String::new();
    if reader
        .read_line(&mut line)
        .map_err(|e| io_fail("read", e))?
        == 0
    {
        return Err(Fail {
            kind: "closed",
            message: "the server closed the connection before responding".into(),
        });
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .map_err(|e| io_fail("read", e))?
            == 0
        {
            return Err(malformed("connection closed inside the headers".into()));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(malformed(format!("bad header {h:?}")));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| malformed(format!("bad content-length {value:?}")))?,
                )
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| io_fail("read", e))?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| malformed(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    let n = reader
                        .read_line(&mut line)
                        .map_err(|e| io_fail("read", e))?;
                    if n == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + size, 0);
            reader
                .read_exact(&mut body[at..])
                .map_err(|e| io_fail("read", e))?;
            let mut crlf = [0u8; 2];
            reader
                .read_exact(&mut crlf)
                .map_err(|e| io_fail("read", e))?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| io_fail("read", e))?;
    } else {
        reader
            .read_to_end(&mut body)
            .map_err(|e| io_fail("read", e))?;
        keep = false;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned(), keep))
}

/// "version=v2 host=..." -> index of "v2" in VERSIONS.
fn version_of(body: &str) -> u8 {
    let v = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("version="))
        .unwrap_or("");
    VERSIONS
        .iter()
        .position(|x| *x == v)
        .unwrap_or(VERSIONS.len()) as u8
}

/// Requests back to back on one keep-alive connection until `stop`; every attempt is recorded.
fn load_worker(addr: SocketAddr, t0: Instant, stop: &AtomicBool) -> (Vec<Rec>, Vec<String>) {
    let mut recs = Vec::with_capacity(1 << 14);
    let mut errors = Vec::new();
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = request(&mut conn, addr);
        let latency = started.elapsed();
        let outcome = match r {
            Ok((status, body)) if (200..300).contains(&status) => Outcome::Ok(version_of(&body)),
            Ok((status, body)) => {
                if errors.len() < 5 {
                    errors.push(format!("HTTP {status}: {}", body.trim()));
                }
                Outcome::Status(status)
            }
            Err(f) => {
                if errors.len() < 5 {
                    errors.push(f.message);
                }
                Outcome::Failed(f.kind)
            }
        };
        recs.push(Rec {
            start_us: (started - t0).as_micros() as u64,
            latency_us: latency.as_micros() as u64,
            outcome,
        });
        if matches!(outcome, Outcome::Failed(_)) {
            // Do not spin on a refused connection; the failure is already counted.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (recs, errors)
}

/// Figures for the requests started in [from, to).
struct WindowStats {
    name: String,
    from: Duration,
    to: Duration,
    served: usize,
    failed: usize,
    failures: BTreeMap<String, usize>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    versions: [usize; VERSIONS.len() + 1],
}

fn window(recs: &[Rec], name: String, from: Duration, to: Duration) -> WindowStats {
    let (a, b) = (from.as_micros() as u64, to.as_micros() as u64);
    let mut lat = Vec::new();
    let mut w = WindowStats {
        name,
        from,
        to,
        served: 0,
        failed: 0,
        failures: BTreeMap::new(),
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        versions: [0; VERSIONS.len() + 1],
    };
    for r in recs.iter().filter(|r| r.start_us >= a && r.start_us < b) {
        match r.outcome {
            Outcome::Ok(v) => {
                w.served += 1;
                w.versions[v as usize] += 1;
                lat.push(r.latency_us);
            }
            Outcome::Status(s) => {
                w.failed += 1;
                *w.failures.entry(format!("HTTP {s}")).or_default() += 1;
            }
            Outcome::Failed(kind) => {
                w.failed += 1;
                *w.failures.entry(kind.to_string()).or_default() += 1;
            }
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if lat.is_empty() {
            return None;
        }
        let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        Some(lat[i] as f64 / 1e3)
    };
    w.p50_ms = pct(0.50);
    w.p99_ms = pct(0.99);
    w.max_ms = lat.last().map(|&m| m as f64 / 1e3);
    w
}

/// One rollout, timed from the load's t0.
struct Rollout {
    version: &'static str,
    start: Duration,
    end: Duration,
    started: usize,
    removed: usize,
}

/// With the load running: wait `warmup`, then `window`, roll out v2, wait at least as long again,
/// roll out v3, and keep the load one more second to see what is served afterwards.
fn rollouts(b: &Bench, sizes: &Sizes, t0: Instant) -> Res<(Duration, Vec<Rollout>, Duration)> {
    std::thread::sleep(sizes.warmup);
    let ready = t0.elapsed();
    std::thread::sleep(sizes.window);
    let mut out: Vec<Rollout> = Vec::new();
    for v in &VERSIONS[1..] {
        if let Some(prev) = out.last() {
            let gap = sizes
                .window
                .max(prev.end - prev.start + Duration::from_secs(1));
            std::thread::sleep(gap);
        }
        let script = format!("rollout-{v}.luau");
        let start = t0.elapsed();
        let done = b.run(&format!("stagecraft run {script}"), b.stagecraft(&script))?;
        let end = t0.elapsed();
        let (_, result) = outcome(&done)?;
        let count = |k: &str| result[k].as_array().map_or(0, Vec::len);
        let r = Rollout {
            version: v,
            start,
            end,
            started: count("started"),
            removed: count("removed"),
        };
        eprintln!(
            "  rollout web -> {v}: {} ({} new, {} replaced)",
            fmt_ms((end - start).as_secs_f64() * 1e3),
            r.started,
            r.removed
        );
        out.push(r);
    }
    std::thread::sleep(Duration::from_secs(1));
    Ok((ready, out, t0.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(fmt_ms).unwrap_or_else(|| "-".into())
}

fn fmt_samples(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Left-aligned columns, a rule under the header.
fn print_table(table: &[Vec<String>]) {
    let cols = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
        if n == 0 {
            println!(
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1))
            );
        }
    }
}

fn versions_text(v: &[usize]) -> String {
    let mut parts: Vec<String> = VERSIONS
        .iter()
        .zip(v)
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if v[VERSIONS.len()] > 0 {
        parts.push(format!("other {}", v[VERSIONS.len()]));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// Docker, docker-compose and both images, or why not.
fn preflight() -> Res<(String, String)> {
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]).map_err(|e| {
        format!("the Docker Engine is not reachable: {e}\n  start dockerd, or set DOCKER_HOST to its socket")
    })?;
    let compose = Command::new("docker-compose")
        .args(["version", "--short"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("docker-compose cannot start ({e}): install Debian's docker-compose (apt-get install docker-compose)")
        })?;
    if !compose.status.success() {
        return Err(format!(
            "docker-compose version failed: {}",
            String::from_utf8_lossy(&compose.stderr).trim_end()
        ));
    }
    let built = Command::new("bash")
        .args([BUILD_SH, "all"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{BUILD_SH} all: cannot start: {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "{BUILD_SH} all failed ({}):\n{}{}",
            built.status,
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr).trim_end()
        ));
    }
    for image in IMAGES {
        docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .map_err(|e| format!("image {image} is missing after {BUILD_SH} all: {e}"))?;
    }
    if !Path::new(BIN).exists() {
        return Err(format!("the stagecraft binary {BIN} does not exist"));
    }
    Ok((
        engine.trim().to_string(),
        String::from_utf8_lossy(&compose.stdout).trim().to_string(),
    ))
}

/// Per tool, per iteration.
#[derive(Default)]
struct Samples {
    cold_ms: Vec<f64>,
    noop_ms: Vec<f64>,
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    let smoke = !std::env::args().any(|a| a == "--bench");
    // Dropped after the outcome is printed, and when a panic unwinds through main.
    let mut cleanup = Cleanup {
        projects: Vec::new(),
    };
    let code = match bench(smoke, &mut cleanup) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(Unavailable(e)) => {
            eprintln!("docker bench: cannot run: {e}");
            2
        }
        Err(Step(e)) => {
            eprintln!("docker bench: FAILED: {e}");
            1
        }
    };
    drop(cleanup);
    std::process::exit(code);
}

enum BenchError {
    /// Docker, docker-compose or the images are missing.
    Unavailable(String),
    /// A step failed.
    Step(String),
}
use BenchError::{Step, Unavailable};

/// The whole run; `Ok(false)` when an invariant failed (the report is printed first).
fn bench(smoke: bool, cleanup: &mut Cleanup) -> Result<bool, BenchError> {
    let iters = match std::env::var("STAGECRAFT_BENCH_ITERS") {
        Ok(s) => s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Step(format!(
                "STAGECRAFT_BENCH_ITERS={s:?} is not a positive number"
            ))
        })?,
        Err(_) if smoke => 1,
        Err(_) => 5,
    };
    let sizes = Sizes {
        iters,
        window: Duration::from_secs(if smoke { 3 } else { 6 }),
        warmup: Duration::from_secs(1),
    };
    let begun = Instant::now();
    let (engine, compose_version) = preflight().map_err(Unavailable)?;
    for p in stale_projects().map_err(Step)? {
        let n = sweep(&p).map_err(Step)?;
        eprintln!("removed {n} object(s) left by an interrupted run (project {p})");
    }
    let b = Bench::new().map_err(Step)?;
    cleanup.projects = vec![b.sc.clone(), b.dc.clone()];
    let mut ok = true;

    // 1 and 2: cold up, then a no-op up, then down (not timed); tool order alternates.
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    let mut noop_mutating: Vec<usize> = Vec::new();
    let mut noop_ops = BTreeMap::new();
    let mut noop_recreated: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..sizes.iters {
        let order = if i % 2 == 0 {
            [Tool::Stagecraft, Tool::DockerCompose]
        } else {
            [Tool::DockerCompose, Tool::Stagecraft]
        };
        for tool in order {
            let project = b.project(tool);
            let left = leftovers(project).map_err(Step)?;
            if !left.is_empty() {
                return Err(Step(format!(
                    "not cold: project {project} still has {}",
                    left.join(", ")
                )));
            }
            let cold = b.up(tool).map_err(Step)?;
            let running = b.running(tool).map_err(Step)?;
            if running != CONTAINERS {
                return Err(Step(format!(
                    "{} up left {running} container(s) running, expected {CONTAINERS}:\n{}",
                    tool.label(),
                    tail(&cold.stderr, 20)
                )));
            }
            let before = b.container_ids(tool).map_err(Step)?;
            let noop = b.up(tool).map_err(Step)?;
            let after = b.container_ids(tool).map_err(Step)?;
            let recreated = before.iter().filter(|id| !after.contains(id)).count();
            *noop_recreated.entry(tool.label()).or_default() += recreated;
            if tool == Tool::Stagecraft {
                let (run_id, result) = outcome(&noop).map_err(Step)?;
                if result["changed"].as_bool() != Some(false) {
                    eprintln!("  stagecraft no-op reported changed: {result}");
                    ok = false;
                }
                let (ops, mutating) =
                    ledger_calls(&b.path(".stagecraft/ledger.db"), &run_id).map_err(Step)?;
                noop_mutating.push(mutating);
                noop_ops = ops;
            }
            let s = samples.entry(tool.label()).or_default();
            s.cold_ms.push(cold.wall.as_secs_f64() * 1e3);
            s.noop_ms.push(noop.wall.as_secs_f64() * 1e3);
            eprintln!(
                "iteration {}/{}: {:<14} cold up {}, no-op {}",
                i + 1,
                sizes.iters,
                tool.label(),
                fmt_ms(cold.wall.as_secs_f64() * 1e3),
                fmt_ms(noop.wall.as_secs_f64() * 1e3)
            );
            b.down(tool).map_err(Step)?;
        }
    }

    // 3: rollouts under load, through Caddy's published port.
    eprintln!("rollout: bringing {} up", b.sc);
    b.up(Tool::Stagecraft).map_err(Step)?;
    let proxy = format!("{}-proxy-1", b.sc);
    let ports = docker(&["port", &proxy, "80/tcp"]).map_err(Step)?;
    let addr: SocketAddr = lines(&ports)
        .iter()
        .find_map(|l| l.parse::<SocketAddr>().ok().filter(SocketAddr::is_ipv4))
        .ok_or_else(|| {
            Step(format!(
                "docker port {proxy} 80/tcp printed no IPv4 address: {ports:?}"
            ))
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = None;
        match request(&mut conn, addr) {
            Ok((200, body)) if version_of(&body) == 0 => break,
            r if Instant::now() > deadline => {
                let why = match r {
                    Ok((s, body)) => format!("HTTP {s}: {}", body.trim()),
                    Err(f) => f.message,
                };
                return Err(Step(format!(
                    "http://{addr}/ did not serve v1 within 30s: {why}"
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!("rollout: load of {CONNECTIONS} keep-alive connections on http://{addr}/");
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (timeline, recs, errors) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| s.spawn(|| load_worker(addr, t0, &stop)))
            .collect();
        let timeline = rollouts(&b, &sizes, t0);
        stop.store(true, Ordering::SeqCst);
        let (mut recs, mut errors) = (Vec::new(), Vec::new());
        for w in workers {
            match w.join() {
                Ok((r, e)) => {
                    recs.extend(r);
                    errors.extend(e);
                }
                Err(_) => return Err("a load thread panicked".to_string()),
            }
        }
        Ok((timeline?, recs, errors))
    })
    .map_err(Step)?;
    let (ready, rolls, stopped) = timeline;
    b.down(Tool::Stagecraft).map_err(Step)?;

    // The report.
    println!();
    println!("Stagecraft Docker benchmark");
    println!("binary: {BIN}");
    println!(
        "Docker Engine {engine}; docker-compose {compose_version}; {} CPU(s)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "stack: caddy (127.0.0.1::80) + web x2 + api + db (named volume) + worker = {CONTAINERS} containers, 1 network, 1 volume"
    );
    if smoke {
        println!("(test mode: one iteration, short windows; the figures mean little)");
    }
    println!();
    let sc = samples.remove("stagecraft").unwrap_or_default();
    let dc = samples.remove("docker-compose").unwrap_or_default();
    let (sc_cold, dc_cold) = (median(sc.cold_ms.clone()), median(dc.cold_ms.clone()));
    let (sc_noop, dc_noop) = (median(sc.noop_ms.clone()), median(dc.noop_ms.clone()));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    let noop_target = 100.0;
    let noop_verdict = match sc_noop {
        Some(m) if m <= noop_target => "PASS",
        Some(_) => "MISS",
        None => "ERROR",
    };
    print_table(&[
        [
            "metric",
            "stagecraft",
            "docker-compose",
            "ratio sc/dc",
            "target",
            "result",
            "n",
        ]
        .map(str::to_string)
        .to_vec(),
        vec![
            "cold up (5 services, 6 containers)".into(),
            fmt_opt(sc_cold),
            fmt_opt(dc_cold),
            ratio(sc_cold, dc_cold),
            "-".into(),
            "-".into(),
            sc.cold_ms.len().to_string(),
        ],
        vec![
            "no-op re-apply".into(),
            fmt_opt(sc_noop),
            fmt_opt(dc_noop),
            ratio(sc_noop, dc_noop),
            format!("stagecraft <= {}", fmt_ms(noop_target)),
            noop_verdict.into(),
            sc.noop_ms.len().to_string(),
        ],
    ]);
    println!();
    println!("samples (ms, in run order):");
    println!("  cold up   stagecraft     {}", fmt_samples(&sc.cold_ms));
    println!("  cold up   docker-compose {}", fmt_samples(&dc.cold_ms));
    println!("  no-op     stagecraft     {}", fmt_samples(&sc.noop_ms));
    println!("  no-op     docker-compose {}", fmt_samples(&dc.noop_ms));
    let mutating: usize = noop_mutating.iter().sum();
    println!(
        "no-op check: stagecraft mutating Engine calls (docker.run, docker.container.*, docker.networks.create, docker.volumes.create) per run: {} -> {}",
        noop_mutating
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        if mutating == 0 {
            "ok (0)"
        } else {
            "FAIL (must be 0)"
        }
    );
    println!(
        "  calls of the last no-op run: {}",
        noop_ops
            .iter()
            .map(|(op, n)| format!("{op} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (tool, n) in &noop_recreated {
        println!(
            "  {tool}: containers replaced by the no-op: {n}{}",
            if *n == 0 { "" } else { "  FAIL (must be 0)" }
        );
    }
    if mutating != 0 || noop_recreated.values().any(|n| *n != 0) {
        ok = false;
    }

    println!();
    println!(
        "rollout of web (2 replicas) under load: {CONNECTIONS} HTTP/1.1 keep-alive connections through caddy, back to back"
    );
    println!(
        "  windows hold the requests started in them; \"before\" is as long as the rollout after it, up to the load available; latency of 2xx responses"
    );
    let mut table = vec![
        [
            "window",
            "length",
            "served",
            "failed",
            "req/s",
            "p50",
            "p99",
            "max",
            "versions served",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    let mut windows = Vec::new();
    let mut prev_end = ready;
    for r in &rolls {
        let dur = r.end - r.start;
        let from = r.start.saturating_sub(dur).max(prev_end);
        windows.push(window(
            &recs,
            format!("before {}", r.version),
            from,
            r.start,
        ));
        windows.push(window(
            &recs,
            format!("during {}", r.version),
            r.start,
            r.end,
        ));
        prev_end = r.end;
    }
    windows.push(window(&recs, "after last".into(), prev_end, stopped));
    for w in &windows {
        let len = (w.to - w.from).as_secs_f64();
        table.push(vec![
            w.name.clone(),
            format!("{len:.1} s"),
            w.served.to_string(),
            if w.failures.is_empty() {
                w.failed.to_string()
            } else {
                format!(
                    "{} ({})",
                    w.failed,
                    w.failures
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            format!("{:.0}", (w.served + w.failed) as f64 / len.max(1e-9)),
            fmt_opt(w.p50_ms),
            fmt_opt(w.p99_ms),
            fmt_opt(w.max_ms),
            versions_text(&w.versions),
        ]);
    }
    print_table(&table);
    println!();
    for r in &rolls {
        println!(
            "  rollout -> {}: {} ({} new, {} replaced)",
            r.version,
            fmt_ms((r.end - r.start).as_secs_f64() * 1e3),
            r.started,
            r.removed
        );
    }
    let total = window(
        &recs,
        "all".into(),
        Duration::ZERO,
        stopped + Duration::from_secs(60),
    );
    println!(
        "  whole load ({:.1} s): {} served, {} failed{}",
        stopped.as_secs_f64(),
        total.served,
        total.failed,
        if total.failed == 0 {
            " -> ok"
        } else {
            " -> FAIL (must be 0)"
        }
    );
    for e in errors.iter().take(10) {
        println!("    {e}");
    }
    let last = VERSIONS.len() - 1;
    let after = windows.last().map(|w| w.versions).unwrap_or_default();
    if after.iter().enumerate().any(|(i, n)| i != last && *n > 0) || after[last] == 0 {
        println!(
            "  FAIL: after the last rollout the proxy did not serve {} only",
            VERSIONS[last]
        );
        ok = false;
    }
    if total.failed != 0 || rolls.iter().any(|r| r.started != 2 || r.removed != 2) {
        ok = false;
    }
    println!();
    println!(
        "ratio = stagecraft median / docker-compose median; wall time of the whole process, cold = nothing of the project existed"
    );
    println!("total bench time {:.0} s", begun.elapsed().as_secs_f64());
    Ok(ok)
}
