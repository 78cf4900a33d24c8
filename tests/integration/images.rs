//! Docker test images and the debris-free handling of what tests create with them.
//!
//! The machines have no registry, so `tests/fixtures/images/build.sh` builds the images FROM
//! scratch out of Debian packages (busybox-static, caddy); [`web`] and [`caddy`] run it once per
//! process and return the tag. It is idempotent and takes a lock, so concurrent test processes
//! share one build.
//!
//! ```ignore
//! let c = Cleanup::new();
//! let net = c.network(&unique("net"));
//! docker_ok(&["network", "create", "--label", &c.label(), &net]);
//! let w = c.container(&unique("web"));
//! docker_ok(&["run", "-d", "--name", &w, "--network", &net, "-e", "VERSION=v1", web()]);
//! wait_health(&w, "healthy", Duration::from_secs(30));
//! // dropping `c` removes the container and the network, also when the test panics
//! ```

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

const BUILD_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/images/build.sh"
);

/// Busybox httpd on :8080. Env `VERSION` goes into `/` ("version=$VERSION host=$HOSTNAME");
/// `HEALTHY=0` removes `/health`, so the image's HEALTHCHECK turns the container unhealthy.
/// `sh`, `wget`, `cat`, `echo`, `sleep`, ... work under `docker exec`.
pub const WEB: &str = "stagecraft-test/web:1";
/// Caddy on :80 reading `/etc/caddy/Caddyfile`; the default one reverse-proxies to `web:8080`.
pub const CADDY: &str = "stagecraft-test/caddy:1";
/// Label carried by everything a test creates; [`Cleanup`] removes what carries its value.
pub const OWNER_LABEL: &str = "org.stagecraft.test.owner";

/// The `web` image, built on first use in this process. Panics when it cannot be built.
pub fn web() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    ensure_image("web", WEB, &BUILT)
}

/// The `caddy` image, built on first use in this process. Panics when it cannot be built.
pub fn caddy() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    ensure_image("caddy", CADDY, &BUILT)
}

fn ensure_image(
    name: &str,
    tag: &'static str,
    built: &'static OnceLock<Result<(), String>>,
) -> &'static str {
    // A failed build is remembered: every test that needs the image fails with the same message.
    if let Err(e) = built.get_or_init(|| build_image(name)) {
        panic!("test image {tag} is not available:\n{e}");
    }
    tag
}

fn build_image(name: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(BUILD_SH)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {BUILD_SH}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{BUILD_SH} {name} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        ))
    }
}

/// A name no other test, thread or concurrently running test process uses: lowercase
/// `<prefix>-<pid>-<counter>-<random>`, valid for containers, networks, volumes and compose
/// projects.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = prefix
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let clean = clean.trim_start_matches(['-', '_']);
    let clean = if clean.is_empty() { "sct" } else { clean };
    let random = rand::random::<u32>() & 0xff_ffff;
    format!("{clean}-{}-{n}-{random:06x}", std::process::id())
}

/// Run the docker CLI to completion (stdin closed). Panics only when it cannot be started.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Run the docker CLI, panic with its output unless it succeeds, return its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    if !out.status.success() {
        panic!(
            "`docker {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes, when dropped (also during a panic), every container, network and volume labelled
/// `org.stagecraft.test.owner=<id>`, those registered by name, and whatever belongs to the
/// registered compose projects.
pub struct Cleanup {
    id: String,
    registered: Mutex<Registered>,
}

#[derive(Default)]
struct Registered {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    projects: Vec<String>,
    images: Vec<String>,
}

impl Default for Cleanup {
    fn default() -> Self {
        Cleanup::new()
    }
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup {
            id: unique("sct-owner"),
            registered: Mutex::new(Registered::default()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `(org.stagecraft.test.owner, <id>)`.
    pub fn owner_label(&self) -> (String, String) {
        (OWNER_LABEL.to_string(), self.id.clone())
    }

    /// `org.stagecraft.test.owner=<id>`, for `docker ... --label`.
    pub fn label(&self) -> String {
        format!("{OWNER_LABEL}={}", self.id)
    }

    fn register(&self, pick: fn(&mut Registered) -> &mut Vec<String>, name: &str) -> String {
        let mut r = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pick(&mut r).push(name.to_string());
        name.to_string()
    }

    /// Remove the container `name` on drop; returns `name`.
    pub fn container(&self, name: &str) -> String {
        self.register(|r| &mut r.containers, name)
    }

    /// Remove the network `name` on drop; returns `name`.
    pub fn network(&self, name: &str) -> String {
        self.register(|r| &mut r.networks, name)
    }

    /// Remove the volume `name` on drop; returns `name`.
    pub fn volume(&self, name: &str) -> String {
        self.register(|r| &mut r.volumes, name)
    }

    /// Remove the image tag `tag` on drop (after the containers); returns `tag`.
    pub fn image(&self, tag: &str) -> String {
        self.register(|r| &mut r.images, tag)
    }

    /// Remove everything labelled `com.docker.compose.project=<name>` on drop; returns `name`.
    pub fn project(&self, name: &str) -> String {
        self.register(|r| &mut r.projects, name)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let r = std::mem::take(
            self.registered
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut filters = vec![format!("label={}", self.label())];
        filters.extend(
            r.projects
                .iter()
                .map(|p| format!("label=com.docker.compose.project={p}")),
        );
        // Everything is resolved to full ids first, so that an object both registered by name and
        // labelled is removed once. Each filter is listed on its own: several `label=` filters in
        // one listing would all have to match.
        let ids = |kind: &str, named: &[String]| {
            let mut all = Vec::new();
            for f in &filters {
                let listed = if kind == "container" {
                    quiet_docker(&["ps", "-aq", "--no-trunc", "--filter", f])
                } else {
                    quiet_docker(&[kind, "ls", "-q", "--no-trunc", "--filter", f])
                };
                all.extend(words(listed));
            }
            if !named.is_empty() {
                let mut args = vec![kind, "inspect", "--format", "{{.Id}}"];
                args.extend(named.iter().map(String::as_str));
                all.extend(words(quiet_docker(&args)));
            }
            all.sort();
            all.dedup();
            all
        };
        let volume_ids = |named: &[String]| {
            let mut all = named.to_vec();
            for f in &filters {
                all.extend(words(quiet_docker(&["volume", "ls", "-q", "--filter", f])));
            }
            all.sort();
            all.dedup();
            all
        };
        remove(&["rm", "-f", "-v"], &ids("container", &r.containers));
        remove(&["network", "rm"], &ids("network", &r.networks));
        remove(&["volume", "rm", "-f"], &volume_ids(&r.volumes));
        remove(&["image", "rm", "-f"], &r.images);
    }
}

fn words(out: Option<Output>) -> Vec<String> {
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// `docker <cmd> <ids...>`; complaints are printed, never raised (this runs in `Drop`, possibly
/// while a test is already panicking).
fn remove(cmd: &[&str], ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut args = cmd.to_vec();
    args.extend(ids.iter().map(String::as_str));
    let Some(out) = quiet_docker(&args) else {
        return;
    };
    if !out.status.success() {
        eprintln!(
            "cleanup: `docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// [`docker`] for `Drop`: reports a CLI that cannot start instead of panicking.
fn quiet_docker(args: &[&str]) -> Option<Output> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output();
    out.map_err(|e| eprintln!("cleanup: cannot run `docker {}`: {e}", args.join(" ")))
        .ok()
}

/// Poll `docker inspect` until the container's health status is `want` ("healthy",
/// "unhealthy"); returns how long that took. Panics at the deadline, or at once when the
/// container is no longer running, with its health log and output.
pub fn wait_health(container: &str, want: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let state = docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            container,
        ]);
        let (running, status) = state.split_once(' ').unwrap_or((state.as_str(), ""));
        if status == want {
            return start.elapsed();
        }
        if running != "true" || start.elapsed() > timeout {
            let health = docker(&["inspect", "--format", "{{json .State}}", container]);
            let logs = docker(&["logs", "--tail", "50", container]);
            panic!(
                "{container}: health is {status:?} (running: {running}), waited {:?} for {want:?}\n\
                 --- state: {}\n--- logs:\n{}{}",
                start.elapsed(),
                String::from_utf8_lossy(&health.stdout).trim(),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The loopback host port Docker published for `port` ("80/tcp") of `container`.
pub fn published_port(container: &str, port: &str) -> u16 {
    let out = docker_ok(&["port", container, port]);
    out.lines()
        .find_map(|l| l.rsplit_once(':')?.1.trim().parse().ok())
        .unwrap_or_else(|| panic!("`docker port {container} {port}` gave no port: {out:?}"))
}

/// One HTTP/1.0 GET to 127.0.0.1:`port`: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("reply {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// [`http_get`] until it gets any HTTP reply (a published port accepts connections before the
/// container listens, then drops them); panics with the last error at the deadline.
pub fn wait_http(port: u16, path: &str, timeout: Duration) -> (u16, String) {
    let start = Instant::now();
    loop {
        match http_get(port, path) {
            Ok(reply) => return reply,
            Err(e) if start.elapsed() > timeout => {
                panic!("GET 127.0.0.1:{port}{path}: no reply within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `docker stop` (default 10 s grace) and how long it took; panics unless the exit code is 0.
pub fn stop_timed(container: &str) -> Duration {
    let start = Instant::now();
    docker_ok(&["stop", container]);
    let took = start.elapsed();
    let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", container]);
    assert_eq!(
        code, "0",
        "{container} stopped with exit code {code} after {took:?}"
    );
    took
}

#[test]
fn images_build_and_serve() {
    let start = Instant::now();
    let (web, caddy) = (web(), caddy());
    eprintln!("images ready in {:?}", start.elapsed());
    for tag in [web, caddy] {
        let label = docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"org.stagecraft.test.digest\"}}",
            tag,
        ]);
        assert_eq!(label.len(), 64, "{tag}: digest label {label:?}");
    }

    let c = Cleanup::new();
    let label = c.label();
    let net = c.network(&unique("sct-images-net"));
    docker_ok(&["network", "create", "--label", &label, &net]);
    let w = c.container(&unique("sct-images-web"));
    #[rustfmt::skip]
    docker_ok(&[
        "run", "-d", "--name", &w, "--label", &label, "--network", &net,
        "--network-alias", "web", "-e", "VERSION=v7", web,
    ]);
    // Not aliased `web`: the proxy must not reach it.
    let sick = c.container(&unique("sct-images-sick"));
    #[rustfmt::skip]
    docker_ok(&[
        "run", "-d", "--name", &sick, "--label", &label, "--network", &net,
        "-e", "HEALTHY=0", web,
    ]);
    let proxy = c.container(&unique("sct-images-caddy"));
    #[rustfmt::skip]
    docker_ok(&[
        "run", "-d", "--name", &proxy, "--label", &label, "--network", &net,
        "-p", "127.0.0.1::80", caddy,
    ]);

    let healthy_after = wait_health(&w, "healthy", Duration::from_secs(30));
    eprintln!("web healthy after {healthy_after:?}");

    let port = published_port(&proxy, "80/tcp");
    let (status, body) = wait_http(port, "/", Duration::from_secs(30));
    assert_eq!(status, 200, "GET / through caddy: {body}");
    assert!(
        body.starts_with("version=v7 host="),
        "GET / through caddy: {body:?}"
    );
    let (status, body) = http_get(port, "/health").expect("GET /health through caddy");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    #[rustfmt::skip]
    let out = docker_ok(&[
        "exec", &w, "sh", "-c",
        "echo hi; sleep 0; cat /www/index.html; wget -q -O - http://127.0.0.1:8080/health",
    ]);
    assert!(
        out.starts_with("hi\nversion=v7 host="),
        "docker exec: {out:?}"
    );
    assert!(out.ends_with("\nok"), "docker exec: {out:?}");

    let unhealthy_after = wait_health(&sick, "unhealthy", Duration::from_secs(30));
    eprintln!("HEALTHY=0 unhealthy after {unhealthy_after:?}");
    let probe = docker(&[
        "exec",
        &sick,
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:8080/health",
    ]);
    assert!(!probe.status.success(), "/health must fail with HEALTHY=0");

    // SIGTERM must be handled (busybox httpd as PID 1 would ignore it and take the 10 s grace).
    let web_stop = stop_timed(&w);
    let caddy_stop = stop_timed(&proxy);
    eprintln!("docker stop: web {web_stop:?}, caddy {caddy_stop:?}");
    assert!(
        web_stop < Duration::from_secs(3),
        "web stop took {web_stop:?}"
    );
    assert!(
        caddy_stop < Duration::from_secs(5),
        "caddy stop took {caddy_stop:?}"
    );
}

#[test]
fn cleanup_removes_labelled_and_registered_objects() {
    let web = web();
    let (container, network, volume, labelled_volume, both);
    {
        let c = Cleanup::new();
        let label = c.label();
        // Registered by name: a volume `run -v` creates carries no label, so it must be registered.
        volume = c.volume(&unique("sct-cleanup-vol"));
        network = c.network(&unique("sct-cleanup-net"));
        docker_ok(&["network", "create", &network]);
        // Labelled only: found through the label.
        container = unique("sct-cleanup-labelled");
        #[rustfmt::skip]
        docker_ok(&[
            "run", "-d", "--name", &container, "--label", &label,
            "-v", &format!("{volume}:/data"), web,
        ]);
        labelled_volume = unique("sct-cleanup-vol");
        docker_ok(&["volume", "create", "--label", &label, &labelled_volume]);
        // Both: removed once, without complaints.
        both = c.container(&unique("sct-cleanup-both"));
        #[rustfmt::skip]
        docker_ok(&[
            "run", "-d", "--name", &both, "--label", &label, "--network", &network, web,
        ]);
    }
    for (kind, name) in [
        ("container", container.as_str()),
        ("container", both.as_str()),
        ("network", network.as_str()),
        ("volume", volume.as_str()),
        ("volume", labelled_volume.as_str()),
    ] {
        let out = docker(&[kind, "inspect", name]);
        assert!(!out.status.success(), "{kind} {name} survived the cleanup");
    }
}
