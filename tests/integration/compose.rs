//! `stagecraft/compose` against the real Docker Engine: validation errors with positions,
//! idempotent `up`, dependency conditions, `docker-compose ps`, rollouts under load, replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::Project;
use crate::images::{self, Cleanup, docker_ok, http_get, published_port, wait_http};

/// A project granted `docker`, with the compose file given.
fn project(compose: &str) -> Project {
    Project::new()
        .file(
            "stagecraft.yml",
            "name: compose-test\npermissions:\n  - docker\n",
        )
        .file("docker-compose.yml", compose)
}

fn stack(web: &str, caddy: &str) -> String {
    format!(
        r#"services:
  web:
    image: {web}
    environment:
      VERSION: ${{WEB_VERSION:-v1}}
      HEALTHY: ${{WEB_HEALTHY:-1}}
    deploy:
      replicas: 2
  proxy:
    image: {caddy}
    ports:
      - "127.0.0.1::80"
    depends_on:
      web:
        condition: service_healthy
  db:
    image: {web}
    volumes:
      - data:/data
volumes:
  data:
"#
    )
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

/// Ops of the finished calls of a run, in order.
fn ops(p: &Project, run: &str) -> Vec<String> {
    let db = p.db();
    let mut st = db
        .prepare("SELECT op FROM entries WHERE run_id = ?1 AND kind = 'call' ORDER BY seq")
        .expect("query");
    st.query_map([run], |r| r.get::<_, String>(0))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

fn project_containers(project: &str) -> Vec<String> {
    let out = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn up_is_idempotent_visible_to_docker_compose_and_down_removes_everything() {
    let (web, caddy) = (images::web(), images::caddy());
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scup"));
    let p = project(&stack(web, caddy));
    p.write(
        "up.luau",
        &format!(
            "local r = require('stagecraft/compose').up{{project = '{name}'}}\n\
             print(require('stagecraft/json').encode(r))\n"
        ),
    );
    let first = p.run(&["run", "up.luau"]).ok();
    for line in [
        format!("{name}: network {name}_default created"),
        format!("{name}: volume {name}_data created"),
        format!("{name}: service web created"),
        format!("{name}: service proxy created"),
        format!("{name}: service db created"),
    ] {
        assert!(
            first.stdout.contains(&line),
            "missing {line:?} in {}",
            first.stdout
        );
    }
    assert_eq!(
        project_containers(&name),
        [
            format!("{name}-db-1"),
            format!("{name}-proxy-1"),
            format!("{name}-web-1"),
            format!("{name}-web-2"),
        ]
    );
    // The proxy reaches both replicas by the service alias.
    let port = published_port(&format!("{name}-proxy-1"), "80/tcp");
    let (status, body) = wait_http(port, "/", Duration::from_secs(20));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("version=v1 "), "{body}");

    // Nothing changed: nothing touched, and it says so.
    let second = p.run(&["run", "up.luau"]).ok();
    assert!(
        second
            .stdout
            .contains(&format!("{name}: nothing to do, 3 service(s) up to date")),
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains("\"changed\":false"),
        "{}",
        second.stdout
    );
    let run = latest_run(&p);
    let calls = ops(&p, &run);
    assert_eq!(
        calls,
        [
            "compose.load",
            "docker.containers.list",
            "docker.networks.list",
            "docker.volumes.list",
            "docker.images.list"
        ],
        "a no-op re-apply only reads"
    );

    // Debian's docker-compose (v1) sees the stack through the standard labels.
    let dc = std::process::Command::new("docker-compose")
        .args(["-p", &name, "ps"])
        .current_dir(p.root())
        .output()
        .expect("docker-compose is installed (Debian's docker-compose)");
    let listing = String::from_utf8_lossy(&dc.stdout);
    assert!(
        dc.status.success(),
        "{listing}{}",
        String::from_utf8_lossy(&dc.stderr)
    );
    for c in ["db-1", "proxy-1", "web-1", "web-2"] {
        assert!(listing.contains(&format!("{name}-{c}")), "{listing}");
    }
    assert_eq!(listing.matches(" Up").count(), 4, "{listing}");

    // A changed service is recreated; the others are left alone.
    p.write(
        "up2.luau",
        &format!(
            "local r = require('stagecraft/compose').up{{project = '{name}', env = {{WEB_VERSION = 'v2'}}}}\n\
             print(r.services.web.action, r.services.db.action, r.services.proxy.action)\n"
        ),
    );
    p.run(&["run", "up2.luau"])
        .ok()
        .stdout_has("recreated\tunchanged\tunchanged");

    p.write(
        "down.luau",
        &format!(
            "local r = require('stagecraft/compose').down{{project = '{name}', volumes = true}}\n\
             print(#r.containers, #r.networks, #r.volumes)\n"
        ),
    );
    p.run(&["run", "down.luau"]).ok().stdout_is("4\t1\t1\n");
    assert!(project_containers(&name).is_empty());
    let nets = docker_ok(&["network", "ls", "--filter", &format!("name={name}_"), "-q"]);
    assert!(nets.is_empty(), "networks left: {nets}");
    let vols = docker_ok(&["volume", "ls", "--filter", &format!("name={name}_"), "-q"]);
    assert!(vols.is_empty(), "volumes left: {vols}");
}

#[test]
fn a_retagged_image_recreates_the_services_that_run_it() {
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("sctag"));
    let tag = guard.image(&format!("{name}-img:1"));
    docker_ok(&["tag", images::web(), &tag]);
    let p = project(&format!(
        "services:\n  a:\n    image: {tag}\n  b:\n    image: {web}\n",
        web = images::web()
    ));
    let up = format!(
        "local r = require('stagecraft/compose').up{{project = '{name}'}}\n\
         print(r.services.a.action, r.services.b.action)\n"
    );
    p.script(&up, &[]).ok().stdout_has("created\tcreated");
    p.script(&up, &[]).ok().stdout_has("unchanged\tunchanged");
    // A new image under the same tag.
    p.write(
        "img/Dockerfile",
        &format!("FROM {}\nLABEL rebuilt={name}\n", images::web()),
    );
    p.script(
        &format!(
            "require('stagecraft/docker').build{{context = 'img', tag = '{tag}', quiet = true}}"
        ),
        &[],
    )
    .ok();
    p.script(&up, &[]).ok().stdout_has("recreated\tunchanged");
    let image = docker_ok(&["inspect", "-f", "{{.Image}}", &format!("{name}-a-1")]);
    let want = docker_ok(&["image", "inspect", "-f", "{{.Id}}", &tag]);
    assert_eq!(image, want);
}

#[test]
fn scaling_adds_and_removes_replicas_by_number() {
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scscale"));
    let p = project(&format!(
        "services:\n  web:\n    image: {}\n    deploy:\n      replicas: ${{N:-2}}\n",
        images::web()
    ));
    p.script(
        &format!(
            "local compose = require('stagecraft/compose')\n\
             for _, n in {{'2', '3', '3', '1'}} do\n\
               local r = compose.up{{project = '{name}', env = {{N = n}}, quiet = true}}\n\
               print(n, r.services.web.action, table.concat(r.services.web.containers, ','))\n\
             end\n"
        ),
        &[],
    )
    .ok()
    .stdout_is(&format!(
        "2\tcreated\t{name}-web-1,{name}-web-2\n\
         3\tscaled\t{name}-web-1,{name}-web-2,{name}-web-3\n\
         3\tunchanged\t{name}-web-1,{name}-web-2,{name}-web-3\n\
         1\tscaled\t{name}-web-1\n"
    ));
    assert_eq!(project_containers(&name), [format!("{name}-web-1")]);
}

/// A Unix socket that forwards every connection to the local engine's socket, counting them: a
/// stand-in for an engine reached elsewhere (the SSH issue forwards a remote socket like this).
fn forwarded_engine(dir: &std::path::Path) -> (String, Arc<AtomicUsize>) {
    use std::os::unix::net::{UnixListener, UnixStream};
    let path = dir.join("engine.sock");
    let listener = UnixListener::bind(&path).expect("bind the forwarding socket");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            seen.fetch_add(1, Ordering::Relaxed);
            let Ok(upstream) = UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (mut c2, mut u2) = (
                client.try_clone().expect("clone"),
                upstream.try_clone().expect("clone"),
            );
            let (mut c1, mut u1) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("unix://{}", path.display()), count)
}

#[test]
fn compose_drives_a_connected_engine() {
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("sceng"));
    let sock_dir = tempfile::tempdir().expect("temp dir");
    let (host, connections) = forwarded_engine(sock_dir.path());
    let p = project(&format!(
        "services:\n  web:\n    image: {}\n",
        images::web()
    ));
    p.script(
        &format!(
            "local docker = require('stagecraft/docker')\n\
             local engine = docker.connect{{host = '{host}'}}\n\
             local r = require('stagecraft/compose').up{{project = '{name}', engine = engine, quiet = true}}\n\
             print(r.services.web.action, engine.address)\n\
             local listed = engine.containers{{filters = {{label = {{'com.docker.compose.project={name}'}}}}}}\n\
             print(#listed, listed[1].Names[1])\n"
        ),
        &[],
    )
    .ok()
    .stdout_is(&format!("created\t{host}\n1\t/{name}-web-1\n"));
    assert!(
        connections.load(Ordering::Relaxed) >= 1,
        "the engine was reached through the socket"
    );
    assert_eq!(project_containers(&name), [format!("{name}-web-1")]);
    // The ledger names the engine of every call made on it.
    let n: i64 = p
        .db()
        .query_row(
            "SELECT count(*) FROM entries WHERE kind = 'call' AND op = 'docker.run' AND args LIKE ?1",
            [format!("%\"engine\":\"{host}\"%")],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 1);
}

#[test]
fn built_services_selection_restarts_and_orphans() {
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scbld"));
    guard.image(&format!("{name}-app"));
    let web = images::web();
    let file = |with_other: bool| {
        format!(
            "services:\n  app:\n    build: ./app\n    depends_on:\n      - db\n  db:\n    image: {web}\n{}",
            if with_other {
                format!("  other:\n    image: {web}\n")
            } else {
                String::new()
            }
        )
    };
    let p = project(&file(true));
    p.write("app/Dockerfile", &format!("FROM {web}\nLABEL step=1\n"));
    let up = |opts: &str| {
        format!(
            "local r = require('stagecraft/compose').up{{project = '{name}', quiet = true{opts}}}\n\
             local names = {{}}\n\
             for svc, s in r.services do table.insert(names, svc .. '=' .. s.action) end\n\
             table.sort(names)\n\
             print(table.concat(names, ' '))\n"
        )
    };
    // Only `app` and what it depends on; its image is built because it is missing.
    let out = p.script(&up(", services = {'app'}"), &[]).ok();
    assert_eq!(out.stdout, "app=created db=created\n");
    assert!(
        out.stderr.contains(&format!("building app ({name}-app)")),
        "{}",
        out.stderr
    );
    let image = docker_ok(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &format!("{name}-app-1"),
    ]);
    assert_eq!(image, format!("{name}-app"));
    // Rebuilding through the cache changes nothing; a changed Dockerfile recreates app.
    p.script(&up(", build = true"), &[])
        .ok()
        .stdout_is("app=unchanged db=unchanged other=created\n");
    p.write("app/Dockerfile", &format!("FROM {web}\nLABEL step=2\n"));
    p.script(&up(", build = true"), &[])
        .ok()
        .stdout_is("app=recreated db=unchanged other=unchanged\n");
    // A stopped container is started again.
    docker_ok(&["stop", &format!("{name}-db-1")]);
    p.script(&up(""), &[])
        .ok()
        .stdout_is("app=unchanged db=started other=unchanged\n");
    // A service dropped from the file: warned about, then removed on request.
    p.write("docker-compose.yml", &file(false));
    p.script(&up(""), &[])
        .ok()
        .stderr_has("found containers of service other")
        .stdout_is("app=unchanged db=unchanged\n");
    assert!(project_containers(&name).contains(&format!("{name}-other-1")));
    p.script(&up(", remove_orphans = true"), &[]).ok();
    assert!(!project_containers(&name).contains(&format!("{name}-other-1")));
}

#[test]
fn rollout_refuses_what_cannot_run_twice_and_takes_an_image() {
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scrref"));
    let web = images::web();
    let tag = guard.image(&format!("{name}-next:1"));
    docker_ok(&["tag", web, &tag]);
    let p = project(&format!(
        "services:\n  named:\n    image: {web}\n    container_name: {name}-fixed\n  \
         published:\n    image: {web}\n    ports:\n      - \"127.0.0.1:18080:8080\"\n  \
         web:\n    image: {web}\n"
    ));
    let roll = |svc: &str, extra: &str| {
        format!(
            "require('stagecraft/compose').rollout{{project = '{name}', service = '{svc}'{extra}}}"
        )
    };
    p.script(&roll("named", ""), &[])
        .code(1)
        .stderr_has("named sets container_name, so old and new replicas cannot run side by side");
    p.script(&roll("published", ""), &[])
        .code(1)
        .stderr_has("publishes host port 18080, which old and new replicas cannot share");
    p.script(&roll("nope", ""), &[])
        .code(1)
        .stderr_has("no service 'nope'");
    // From nothing, a rollout starts the service; `image` overrides the file's.
    p.script(&roll("web", &format!(", image = '{tag}'")), &[])
        .ok()
        .stdout_has(&format!("web rolled out to {tag} (1 new, 0 replaced)"));
    let image = docker_ok(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &format!("{name}-web-1"),
    ]);
    assert_eq!(image, tag);
    // `up` with the same image override in the file would see the same configuration hash;
    // without it, the file's image is different, so `up` recreates.
    p.script(
        &format!(
            "local r = require('stagecraft/compose').up{{project = '{name}', services = {{'web'}}, quiet = true}}\n\
             print(r.services.web.action)"
        ),
        &[],
    )
    .ok()
    .stdout_is("recreated\n");
}

#[test]
fn invalid_files_are_refused_with_file_line_and_column_before_any_engine_call() {
    let cases: &[(&str, &str)] = &[
        (
            "services:\n  web:\n    imagee: x\n",
            "docker-compose.yml:3:5: services.web: unknown key 'imagee' (did you mean 'image'?)",
        ),
        (
            "services:\n  web:\n    image: app:${TAG:?set TAG to the release}\n",
            "docker-compose.yml:3:12",
        ),
        (
            "services:\n  web:\n    image: x\n    ports:\n      - \"80:http\"\n",
            "docker-compose.yml:5:9",
        ),
        (
            "services:\n  web:\n    image: x\n    depends_on:\n      - db\n",
            "depends on undefined service",
        ),
        (
            "services:\n  web:\n    image: x\n    volumes:\n      - data:/data\n",
            "undefined volume data",
        ),
        (
            "services:\n  web:\n    build: .\nsecrets: {}\n",
            "docker-compose.yml:4:1",
        ),
    ];
    for (i, (file, want)) in cases.iter().enumerate() {
        let p = project(file);
        let out = p
            .script("require('stagecraft/compose').up{project = 'never'}", &[])
            .code(1);
        assert!(
            out.stderr.contains(want),
            "case {i}: want {want:?} in:\n{}",
            out.stderr
        );
        let run = latest_run(&p);
        let calls = ops(&p, &run);
        assert_eq!(
            calls,
            ["compose.load"],
            "case {i}: no engine call after a bad file"
        );
    }
    // Compose files reach .env: loading one needs the docker capability.
    let p = Project::new().file("docker-compose.yml", "services:\n  web:\n    image: x\n");
    p.script("require('stagecraft/compose').load()", &[])
        .code(3)
        .stderr_has("compose.load needs capability docker");
    // The `${VAR:?message}` message is shown.
    let p = project("services:\n  web:\n    image: app:${TAG:?set TAG to the release}\n");
    p.script("require('stagecraft/compose').load()", &[])
        .code(1)
        .stderr_has("set TAG to the release");
}

#[test]
fn dependency_conditions_order_the_startup() {
    let web = images::web();
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scdep"));
    let p = project(&format!(
        r#"services:
  init:
    image: {web}
    entrypoint: ["sh", "-c", "echo seeded > /data/ready"]
    volumes:
      - data:/data
  db:
    image: {web}
  app:
    image: {web}
    entrypoint: ["sh", "-c", "cat /data/ready && exec /entrypoint.sh"]
    volumes:
      - data:/data
    depends_on:
      init:
        condition: service_completed_successfully
      db:
        condition: service_healthy
volumes:
  data:
"#
    ));
    p.script(
        &format!("require('stagecraft/compose').up{{project = '{name}'}}"),
        &[],
    )
    .ok();
    // The ledger shows the order: app is created only after init exited 0 and db was healthy.
    let calls = ops(&p, &latest_run(&p));
    let pos = |op: &str| {
        calls
            .iter()
            .position(|c| c == op)
            .unwrap_or_else(|| panic!("{op} not in {calls:?}"))
    };
    let runs: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| *c == "docker.run")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(runs.len(), 3, "{calls:?}");
    assert!(pos("docker.container.wait") < runs[2], "{calls:?}");
    assert!(pos("docker.container.wait_healthy") < runs[2], "{calls:?}");
    // And the engine agrees: app started after init finished, and it saw init's file.
    let init_done = docker_ok(&[
        "inspect",
        "-f",
        "{{.State.FinishedAt}}",
        &format!("{name}-init-1"),
    ]);
    let app_start = docker_ok(&[
        "inspect",
        "-f",
        "{{.State.StartedAt}}",
        &format!("{name}-app-1"),
    ]);
    assert!(
        instant(&init_done) <= instant(&app_start),
        "init finished {init_done}, app started {app_start}"
    );
    let logs = docker_ok(&["logs", &format!("{name}-app-1")]);
    assert!(logs.contains("seeded"), "{logs}");
    let db_health = docker_ok(&[
        "inspect",
        "-f",
        "{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}}|{{end}}{{end}}",
        &format!("{name}-db-1"),
    ]);
    let first_healthy = db_health.split('|').next().unwrap_or_default().to_string();
    // Docker keeps the last 5 checks; when the first success is still among them, it precedes
    // app's start.
    if !first_healthy.is_empty() && db_health.split('|').filter(|s| !s.is_empty()).count() < 5 {
        assert!(instant(&first_healthy) <= instant(&app_start));
    }
}

/// RFC 3339 (Docker's) to (date-time seconds text, nanoseconds) for ordering within one day.
fn instant(s: &str) -> (String, u32) {
    let s = s.trim();
    let (main, frac) = match s.split_once('.') {
        Some((m, rest)) => {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let padded = format!("{digits:0<9}");
            (m.to_string(), padded[..9].parse().unwrap_or(0))
        }
        None => (s.trim_end_matches('Z').to_string(), 0),
    };
    (main, frac)
}

/// Keeps GET-ting through the proxy until stopped; counts served and failed requests.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..workers)
            .map(|_| {
                let (stop, served, failed, errors) =
                    (stop.clone(), served.clone(), failed.clone(), errors.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(port, "/") {
                            Ok((200, _)) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut e) = errors.lock() {
                                    e.push(format!("{other:?}"));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            failed,
            errors,
            threads,
        }
    }

    /// Stop and return (served, failed, first errors).
    fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        (
            self.served.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors.into_iter().take(5).collect(),
        )
    }
}

#[test]
fn rollout_under_load_loses_no_request_and_a_broken_image_leaves_the_old_one_serving() {
    let (web, caddy) = (images::web(), images::caddy());
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scroll"));
    let p = project(&stack(web, caddy));
    p.script(
        &format!("require('stagecraft/compose').up{{project = '{name}', wait = true}}"),
        &[],
    )
    .ok();
    let port = published_port(&format!("{name}-proxy-1"), "80/tcp");
    wait_http(port, "/", Duration::from_secs(20));

    for version in ["v2", "v3"] {
        p.write(
            "roll.luau",
            &format!(
                "local r = require('stagecraft/compose').rollout{{project = '{name}', service = 'web', \
                 env = {{WEB_VERSION = '{version}'}}}}\n\
                 print(#r.started, #r.removed)\n"
            ),
        );
        let load = Load::start(port, 4);
        let out = p.run(&["run", "roll.luau"]);
        let (served, failed, errors) = load.finish();
        let out = out.ok();
        assert!(out.stdout.contains("2\t2"), "{}", out.stdout);
        assert_eq!(
            failed, 0,
            "rollout to {version}: {failed} failed requests: {errors:?}"
        );
        assert!(
            served > 20,
            "rollout to {version}: only {served} requests served"
        );
        let (_, body) = http_get(port, "/").expect("GET after rollout");
        assert!(body.starts_with(&format!("version={version} ")), "{body}");
    }
    let before = project_containers(&name);

    // A new version that never becomes healthy: removed, and the old one keeps serving.
    p.write(
        "broken.luau",
        &format!(
            "require('stagecraft/compose').rollout{{project = '{name}', service = 'web', timeout = 8, \
             env = {{WEB_VERSION = 'broken', WEB_HEALTHY = '0'}}}}\n"
        ),
    );
    let load = Load::start(port, 2);
    let out = p.run(&["run", "broken.luau"]);
    let (served, failed, errors) = load.finish();
    let out = out.code(1);
    assert!(
        out.stderr
            .contains("the new replicas were removed and the old ones keep serving"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("health checks"),
        "health log in: {}",
        out.stderr
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert!(served > 0);
    assert_eq!(
        project_containers(&name),
        before,
        "the broken replicas are gone"
    );
    let (_, body) = http_get(port, "/").expect("GET after the failed rollout");
    assert!(body.starts_with("version=v3 "), "{body}");
}

#[test]
fn secrets_in_compose_environment_reach_the_container_but_never_the_ledger() {
    let web = images::web();
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("scsec"));
    let password = "pw-4f9a7c1e2b";
    let p = Project::new()
        .file(
            "stagecraft.yml",
            "name: t\npermissions:\n  - docker\n  - secrets:DB_PASSWORD\n",
        )
        .file(".env", &format!("DB_PASSWORD={password}\nTAG=1\n"))
        .file(
            "docker-compose.yml",
            &format!(
                "services:\n  app:\n    image: {repo}:${{TAG}}\n    environment:\n      \
                 DATABASE_URL: postgres://app:${{DB_PASSWORD}}@db/app\n  \
                 worker:\n    image: {web}\n    env_file: .env\n",
                repo = web.rsplit_once(':').map(|(r, _)| r).unwrap_or(web)
            ),
        );
    let out = p
        .script(
            &format!(
                "local compose = require('stagecraft/compose')\n\
                 local m = compose.load(nil, {{project = '{name}'}})\n\
                 print(typeof(m.services.app.environment.DATABASE_URL), m.services.app.image)\n\
                 compose.up{{project = '{name}'}}\n"
            ),
            &[],
        )
        .ok();
    assert!(out.stdout.starts_with("SecretHandle\t"), "{}", out.stdout);
    assert!(!out.stdout.contains(password) && !out.stderr.contains(password));
    let env = docker_ok(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &format!("{name}-app-1"),
    ]);
    assert!(
        env.contains(&format!("DATABASE_URL=postgres://app:{password}@db/app")),
        "{env}"
    );
    // Through an env_file too: the container gets the value, the ledger a reference.
    let env = docker_ok(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &format!("{name}-worker-1"),
    ]);
    assert!(env.contains(&format!("DB_PASSWORD={password}")), "{env}");
    assert!(env.contains("TAG=1"), "{env}");
    let db = p.db();
    let all: String = db
        .query_row(
            "SELECT group_concat(coalesce(args, '') || coalesce(result, '') || coalesce(error, ''), '\n') FROM entries",
            [],
            |r| r.get(0),
        )
        .expect("ledger text");
    assert!(!all.contains(password), "the password reached the ledger");
    let refs: i64 = db
        .query_row(
            "SELECT count(*) FROM entries WHERE op = 'docker.run' AND kind = 'call' \
             AND args LIKE '%\"$secret\":\"compose:app:DATABASE_URL\"%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(refs, 1, "docker.run records the secret by reference");
}

#[test]
fn replay_of_a_compose_up_makes_no_engine_call() {
    let web = images::web();
    let guard = Cleanup::new();
    let name = guard.project(&images::unique("screp"));
    let p = project(&format!(
        "services:\n  a:\n    image: {web}\n  b:\n    image: {web}\n    depends_on:\n      a:\n        condition: service_healthy\n"
    ));
    p.script(
        &format!("require('stagecraft/compose').up{{project = '{name}'}}"),
        &[],
    )
    .ok();
    let run = latest_run(&p);
    assert!(ops(&p, &run).iter().any(|o| o == "docker.run"));
    // Any live Engine call would fail against this socket.
    p.cmd(&["replay", &run])
        .env("DOCKER_HOST", "unix:///nonexistent/stagecraft-replay.sock")
        .output()
        .ok()
        .stderr_has("recorded calls matched, no divergence");
}
