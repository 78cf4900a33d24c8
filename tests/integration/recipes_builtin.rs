//! The built-in recipes caddy-https (and its traefik variant), observability and worker-cron,
//! applied to an empty project and to one with its own compose file. Every result is checked
//! with Stagecraft's compose loader and Debian's `docker-compose config`, and the generated
//! configuration with the real tool where this machine has one (`caddy validate`,
//! `promtool check config`, `sh`); the rest is parsed and its structure asserted. A missing
//! tool fails the test, naming the package to install.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{Out, Project};

/// A project holding a copy of `tests/fixtures/recipes_builtin/<name>/`.
fn fixture(name: &str) -> Project {
    let p = Project::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recipes_builtin")
        .join(name);
    for e in std::fs::read_dir(&dir).expect("fixture folder") {
        let e = e.expect("fixture entry");
        let name = e.file_name().to_string_lossy().into_owned();
        p.write(
            &name,
            &std::fs::read_to_string(e.path()).expect("fixture file"),
        );
    }
    p
}

/// Run a tool this test needs in the project; panics (never skips) when it is not installed.
fn tool(p: &Project, program: &str, args: &[&str], package: &str) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(p.root())
        .env_remove("COMPOSE_FILE")
        .env("HOME", p.home())
        .env("XDG_DATA_HOME", p.home().join("data"))
        .env("XDG_CONFIG_HOME", p.home().join("config"))
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed by this test (apt-get install {package}): {e}")
        })
}

/// The tool succeeded; otherwise show what it said and the file it checked.
fn assert_tool_ok(p: &Project, program: &str, args: &[&str], package: &str, file: &str) {
    let out = tool(p, program, args, package);
    assert!(
        out.status.success(),
        "{program} {args:?} rejected {file}:\n{}{}\n--- {file}:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        p.read(file)
    );
}

/// The compose file loads with Stagecraft's loader (services in `order`) and with
/// `docker-compose config`.
fn assert_compose_valid(p: &Project, services: &str) {
    p.script(
        "local m = require('stagecraft/compose_file').load('docker-compose.yml')\nprint(table.concat(m.order, ','))",
        &["--allow", "docker"],
    )
    .ok()
    .stdout_is(&format!("{services}\n"));
    let args = ["-f", "docker-compose.yml", "config", "-q"];
    assert_tool_ok(
        p,
        "docker-compose",
        &args,
        "docker-compose",
        "docker-compose.yml",
    );
}

/// `docker-compose config` as JSON-ish data (its YAML output parsed).
fn compose_config(p: &Project) -> Value {
    let out = tool(
        p,
        "docker-compose",
        &["-f", "docker-compose.yml", "config"],
        "docker-compose",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml(&String::from_utf8_lossy(&out.stdout))
}

/// `docker-compose config` writes ports and volumes in the short syntax: the strings.
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A service's published ports as `[HOST_IP:]PUBLISHED:TARGET/PROTOCOL` (`docker-compose
/// config` writes ports with a host IP as strings, the others as mappings).
fn ports(service: &Value) -> Vec<String> {
    let list = service["ports"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|p| match p.as_str() {
            Some(s) => s.to_string(),
            None => format!(
                "{}:{}/{}",
                p["published"],
                p["target"],
                p["protocol"].as_str().unwrap_or("tcp")
            ),
        })
        .collect()
}

/// The host folder or volume a service mounts at `target` (`SOURCE:TARGET[:MODE]`).
fn mount<'a>(service: &'a Value, target: &str) -> &'a str {
    strings(&service["volumes"])
        .into_iter()
        .find_map(|m| {
            let mut parts = m.split(':');
            let source = parts.next()?;
            (parts.next() == Some(target)).then_some(source)
        })
        .unwrap_or_else(|| panic!("nothing mounted at {target}: {service}"))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// Every file of the project but the ledger: path, bytes and modification time.
fn files(p: &Project) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![p.root().to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read dir") {
            let path = e.expect("entry").path();
            let rel = path.strip_prefix(p.root()).expect("inside");
            if rel == Path::new(".stagecraft") {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else {
                let modified = path.metadata().and_then(|m| m.modified()).expect("mtime");
                let bytes = std::fs::read(&path).expect("read");
                out.push((rel.to_string_lossy().into_owned(), bytes, modified));
            }
        }
    }
    out.sort();
    out
}

/// `stagecraft recipe apply RECIPE INPUTS...` in the project.
fn apply(p: &Project, recipe: &str, inputs: &[&str]) -> Out {
    let mut args = vec!["recipe", "apply", recipe];
    args.extend_from_slice(inputs);
    p.run(&args)
}

/// What `recipe apply` prints; `changes` are `ACTION  PATH` lines.
fn applied(recipe: &str, changes: &[&str]) -> String {
    let mut s = format!("applied recipe {recipe} 1.0.0:\n");
    for c in changes {
        s.push_str(&format!("  {c}\n"));
    }
    s
}

/// Applying again with the same inputs says so and touches no file; that run replays from the
/// ledger without divergence (the recipe's plan is deterministic).
fn assert_reapply_changes_nothing(p: &Project, recipe: &str, inputs: &[&str]) {
    let before = files(p);
    apply(p, recipe, inputs).ok().stdout_is(&format!(
        "recipe {recipe} 1.0.0 is applied already: nothing changed\n"
    ));
    assert_eq!(files(p), before, "re-applying {recipe} changed files");
    p.run(&["replay", "last"]).ok().stderr_has("no divergence");
}

/// Every line of `original` is still in `merged`, in order.
fn assert_keeps_lines(original: &str, merged: &str) {
    let mut rest = merged.lines();
    for line in original.lines() {
        assert!(
            rest.any(|l| l == line),
            "line {line:?} lost or moved:\n{merged}"
        );
    }
}

const CADDY: &[&str] = &[
    "domains=Example.com, www.example.com",
    "email=ops@example.com",
    "health_path=/healthz",
];

#[test]
fn caddy_https_applies_to_an_empty_project_and_caddy_validates_its_caddyfile() {
    let p = Project::new();
    apply(&p, "caddy-https", CADDY).ok().stdout_is(&applied(
        "caddy-https",
        &[
            "created  config/caddy/Caddyfile",
            "created  docker-compose.yml",
            "created  docs/recipes/caddy-https.md",
        ],
    ));
    let caddyfile = p.read("config/caddy/Caddyfile");
    for want in [
        "\temail ops@example.com\n}\n",
        "\nexample.com, www.example.com {\n",
        "\treverse_proxy web:8080 {\n",
        "\t\tlb_try_duration 5s\n",
        "\t\tmax_fails 3\n",
        "\t\thealth_uri /healthz\n",
        "\t\thealth_status 2xx\n",
    ] {
        assert!(caddyfile.contains(want), "{want:?} missing:\n{caddyfile}");
    }
    assert!(!caddyfile.contains("acme_ca"), "{caddyfile}");
    let args = [
        "validate",
        "--adapter",
        "caddyfile",
        "--config",
        "config/caddy/Caddyfile",
    ];
    assert_tool_ok(&p, "caddy", &args, "caddy", "config/caddy/Caddyfile");
    assert_compose_valid(&p, "caddy");
    let config = compose_config(&p);
    let caddy = &config["services"]["caddy"];
    assert_eq!(caddy["image"], "caddy:2.8");
    assert_eq!(ports(caddy), ["80:80/tcp", "443:443/tcp", "443:443/udp"]);
    assert!(mount(caddy, "/etc/caddy/Caddyfile").ends_with("/config/caddy/Caddyfile"));
    assert_eq!(mount(caddy, "/data"), "caddy_data");
    assert!(config["volumes"]["caddy_data"].is_object(), "{config}");
    let docs = p.read("docs/recipes/caddy-https.md");
    assert!(
        docs.contains("| `domains` | `Example.com, www.example.com` |"),
        "{docs}"
    );
    assert!(
        docs.contains(
            "point the DNS records (A/AAAA) of example.com, www.example.com at this host"
        ),
        "{docs}"
    );
    assert_reapply_changes_nothing(&p, "caddy-https", CADDY);

    // The staging CA goes into the global options; the Caddyfile still validates.
    let mut staging = CADDY.to_vec();
    staging.push("staging=true");
    apply(&p, "caddy-https", &staging).ok().stdout_is(&applied(
        "caddy-https",
        &[
            "updated  config/caddy/Caddyfile",
            "updated  docs/recipes/caddy-https.md",
        ],
    ));
    assert!(
        p.read("config/caddy/Caddyfile")
            .contains("\tacme_ca https://acme-staging-v02.api.letsencrypt.org/directory\n}\n")
    );
    assert_tool_ok(&p, "caddy", &args, "caddy", "config/caddy/Caddyfile");
}

#[test]
fn caddy_https_merges_beside_the_users_upstream_and_leaves_it_alone() {
    let p = fixture("existing");
    let original = p.read("docker-compose.yml");
    let args = [
        "domains=shop.example.com",
        "email=ops@example.com",
        "service=ingress",
        "http_port=8080",
        "https_port=8443",
    ];
    apply(&p, "caddy-https", &args).ok().stdout_is(&applied(
        "caddy-https",
        &[
            "created  config/ingress/Caddyfile",
            "updated  docker-compose.yml",
            "created  docs/recipes/caddy-https.md",
        ],
    ));
    let merged = p.read("docker-compose.yml");
    assert_keeps_lines(&original, &merged);
    assert!(merged.contains(
        "      - db_data:/var/lib/postgresql/data\n  # --- stagecraft recipe: caddy-https (managed) ---\n  ingress:\n    image: caddy:2.8\n"
    ), "{merged}");
    assert!(!p.read("config/ingress/Caddyfile").contains("health_uri"));
    assert!(p.read("docs/recipes/caddy-https.md").contains(
        "- http_port=8080: Let's Encrypt's HTTP challenge always connects to port 80, so forward port 80 of the public address to 8080\n"
    ));
    assert_compose_valid(&p, "db,ingress,web");
    let config = compose_config(&p);
    assert_eq!(
        ports(&config["services"]["ingress"]),
        ["8080:80/tcp", "8443:443/tcp", "8443:443/udp"]
    );
    // The user's service is exactly what it was: the ingress reaches it over the network.
    assert_eq!(config["services"]["web"]["image"], "shop/web:2.3");
    assert!(config["services"]["web"].get("labels").is_none());
    assert_reapply_changes_nothing(&p, "caddy-https", &args);
}

#[test]
fn caddy_https_traefik_variant_writes_flags_and_the_upstreams_labels_to_paste() {
    let p = fixture("existing");
    let original = p.read("docker-compose.yml");
    let args = [
        "proxy=traefik",
        "domains=shop.example.com,www.shop.example.com",
        "email=ops@example.com",
        "staging=true",
        "health_path=/healthz",
    ];
    apply(&p, "caddy-https", &args).ok().stdout_is(&applied(
        "caddy-https",
        &[
            "created  config/traefik/web-labels.yml",
            "updated  docker-compose.yml",
            "created  docs/recipes/caddy-https.md",
        ],
    ));
    let merged = p.read("docker-compose.yml");
    assert_keeps_lines(&original, &merged);
    assert_compose_valid(&p, "db,traefik,web");
    let config = compose_config(&p);
    let traefik = &config["services"]["traefik"];
    assert_eq!(traefik["image"], "traefik:v3.1");
    let command: Vec<&str> = traefik["command"]
        .as_array()
        .expect("command list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for flag in [
        "--providers.docker=true",
        "--providers.docker.exposedbydefault=false",
        "--entrypoints.web.address=:80",
        "--entrypoints.web.http.redirections.entrypoint.to=websecure",
        "--entrypoints.web.http.redirections.entrypoint.scheme=https",
        "--entrypoints.websecure.address=:443",
        "--certificatesresolvers.letsencrypt.acme.email=ops@example.com",
        "--certificatesresolvers.letsencrypt.acme.httpchallenge=true",
        "--certificatesresolvers.letsencrypt.acme.httpchallenge.entrypoint=web",
        "--certificatesresolvers.letsencrypt.acme.caserver=https://acme-staging-v02.api.letsencrypt.org/directory",
        "--ping=true",
    ] {
        assert!(command.contains(&flag), "{flag} missing: {command:?}");
    }
    assert_eq!(
        mount(traefik, "/var/run/docker.sock"),
        "/var/run/docker.sock"
    );
    assert_eq!(mount(traefik, "/letsencrypt"), "traefik_acme");
    // The recipe did not touch the user's service: the labels are in a snippet to paste.
    assert!(config["services"]["web"].get("labels").is_none());
    let snippet = yaml(&p.read("config/traefik/web-labels.yml"));
    let labels = &snippet["services"]["web"]["labels"];
    assert_eq!(labels["traefik.enable"], "true");
    assert_eq!(
        labels["traefik.http.routers.web.rule"],
        "Host(`shop.example.com`) || Host(`www.shop.example.com`)"
    );
    assert_eq!(labels["traefik.http.routers.web.entrypoints"], "websecure");
    assert_eq!(
        labels["traefik.http.routers.web.tls.certresolver"],
        "letsencrypt"
    );
    assert_eq!(
        labels["traefik.http.services.web.loadbalancer.server.port"],
        "8080"
    );
    assert_eq!(
        labels["traefik.http.services.web.loadbalancer.healthcheck.path"],
        "/healthz"
    );
    let docs = p.read("docs/recipes/caddy-https.md");
    assert!(docs.contains("add the labels in config/traefik/web-labels.yml to the service web in your compose file yourself"), "{docs}");
    assert_reapply_changes_nothing(&p, "caddy-https", &args);

    // Pasting the snippet's labels into the user's service gives a valid file, which a
    // later apply keeps as it is.
    let mut pasted = String::from("    labels:\n");
    for line in p.read("config/traefik/web-labels.yml").lines() {
        if line.starts_with("      traefik.") {
            pasted.push_str(line);
            pasted.push('\n');
        }
    }
    let with_labels = merged.replacen(
        "    depends_on:\n      - db\n",
        &format!("    depends_on:\n      - db\n{pasted}"),
        1,
    );
    assert_ne!(with_labels, merged);
    p.write("docker-compose.yml", &with_labels);
    assert_compose_valid(&p, "db,traefik,web");
    let config = compose_config(&p);
    assert_eq!(
        config["services"]["web"]["labels"]["traefik.http.routers.web.rule"],
        "Host(`shop.example.com`) || Host(`www.shop.example.com`)"
    );
    assert_reapply_changes_nothing(&p, "caddy-https", &args);

    // Switching back to Caddy replaces the block (the Traefik service and volume go).
    let caddy = [
        "domains=shop.example.com,www.shop.example.com",
        "email=ops@example.com",
    ];
    apply(&p, "caddy-https", &caddy).ok();
    let merged = p.read("docker-compose.yml");
    assert!(
        !merged.contains("traefik:v3.1") && !merged.contains("traefik_acme"),
        "{merged}"
    );
    assert!(
        merged.contains("traefik.http.routers.web.rule"),
        "the user's labels stay"
    );
    assert_compose_valid(&p, "caddy,db,web");
}

#[test]
fn caddy_https_traefik_variant_applies_to_an_empty_project() {
    let p = Project::new();
    apply(
        &p,
        "caddy-https",
        &[
            "proxy=traefik",
            "domains=example.com",
            "email=ops@example.com",
            "upstream=app",
            "upstream_port=3000",
        ],
    )
    .ok();
    assert_compose_valid(&p, "traefik");
    let snippet = yaml(&p.read("config/traefik/app-labels.yml"));
    let labels = snippet["services"]["app"]["labels"]
        .as_object()
        .expect("labels");
    assert_eq!(
        labels["traefik.http.services.app.loadbalancer.server.port"],
        "3000"
    );
    assert!(!labels.contains_key("traefik.http.services.app.loadbalancer.healthcheck.path"));
    assert!(!p.read("docker-compose.yml").contains("caserver"));
}

const OBSERVABILITY_FILES: &[&str] = &[
    "config/observability/otel-collector.yaml",
    "config/observability/prometheus.yml",
    "config/observability/loki.yaml",
    "config/observability/grafana/provisioning/datasources/datasources.yaml",
    "config/observability/grafana/provisioning/dashboards/dashboards.yaml",
    "config/observability/grafana/dashboards/service-overview.json",
];

#[test]
fn observability_applies_to_an_empty_project_and_its_configs_hold_together() {
    let p = Project::new();
    let mut changes: Vec<String> = OBSERVABILITY_FILES
        .iter()
        .map(|f| format!("created  {f}"))
        .collect();
    for f in [
        ".env",
        "docker-compose.yml",
        "docs/recipes/observability.md",
    ] {
        changes.push(format!("created  {f}"));
    }
    let changes: Vec<&str> = changes.iter().map(String::as_str).collect();
    let want = applied("observability", &changes)
        + "fill in the secrets added to .env (empty placeholders): GRAFANA_ADMIN_PASSWORD\n";
    apply(&p, "observability", &[]).ok().stdout_is(&want);
    assert_eq!(
        p.read(".env"),
        "# GRAFANA_ADMIN_PASSWORD: admin password of Grafana (grafana) (secret for recipe observability: fill in, never commit)\nGRAFANA_ADMIN_PASSWORD=\n"
    );
    assert_compose_valid(&p, "loki,otel-collector,prometheus,grafana");
    let config = compose_config(&p);
    let services = &config["services"];
    assert_eq!(
        services["otel-collector"]["image"],
        "otel/opentelemetry-collector-contrib:0.109.0"
    );
    assert_eq!(services["prometheus"]["image"], "prom/prometheus:v2.54.1");
    assert_eq!(services["loki"]["image"], "grafana/loki:3.1.1");
    assert_eq!(services["grafana"]["image"], "grafana/grafana:11.2.0");
    assert_eq!(
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"], "",
        "the password comes from .env (empty until filled in)"
    );
    assert!(
        p.read("docker-compose.yml")
            .contains("      GF_SECURITY_ADMIN_PASSWORD: \"${GRAFANA_ADMIN_PASSWORD}\"\n")
    );
    assert_eq!(ports(&services["grafana"]), ["127.0.0.1:3000:3000/tcp"]);
    assert_eq!(ports(&services["prometheus"]), ["127.0.0.1:9090:9090/tcp"]);
    assert_eq!(
        ports(&services["otel-collector"]),
        ["127.0.0.1:4317:4317/tcp", "127.0.0.1:4318:4318/tcp"]
    );

    // Prometheus: promtool accepts the file; it scrapes the collector's exporter and itself.
    let args = ["check", "config", "config/observability/prometheus.yml"];
    assert_tool_ok(
        &p,
        "promtool",
        &args,
        "prometheus",
        "config/observability/prometheus.yml",
    );
    let prom = yaml(&p.read("config/observability/prometheus.yml"));
    let targets: Vec<String> = prom["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["job_name"].as_str().unwrap_or(""),
                c["static_configs"][0]["targets"][0].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            "otel-collector=otel-collector:8889",
            "otel-collector-internal=otel-collector:8888",
            "loki=loki:3100",
            "prometheus=localhost:9090"
        ]
    );

    // The collector: every pipeline uses components that are defined, and the exporters
    // reach Prometheus' scrape target and Loki's OTLP endpoint.
    let col = yaml(&p.read("config/observability/otel-collector.yaml"));
    let pipelines = col["service"]["pipelines"].as_object().expect("pipelines");
    assert_eq!(
        pipelines.keys().collect::<Vec<_>>(),
        ["logs", "metrics", "traces"]
    );
    for (name, pipe) in pipelines {
        for (kind, section) in [
            ("receivers", "receivers"),
            ("processors", "processors"),
            ("exporters", "exporters"),
        ] {
            for c in pipe[kind].as_array().expect("component list") {
                let c = c.as_str().expect("name");
                assert!(
                    col[section].get(c).is_some(),
                    "pipeline {name} uses undefined {section}.{c}"
                );
            }
        }
    }
    assert_eq!(pipelines["metrics"]["exporters"][0], "prometheus");
    assert_eq!(col["exporters"]["prometheus"]["endpoint"], "0.0.0.0:8889");
    assert_eq!(pipelines["logs"]["exporters"][0], "otlphttp/loki");
    assert_eq!(
        col["exporters"]["otlphttp/loki"]["endpoint"],
        "http://loki:3100/otlp"
    );
    assert_eq!(
        col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    assert!(
        mount(
            &services["otel-collector"],
            "/etc/otelcol-contrib/config.yaml"
        )
        .ends_with("/config/observability/otel-collector.yaml")
    );

    // Loki: one process, TSDB schema v13 (needed for OTLP), retention on.
    let loki = yaml(&p.read("config/observability/loki.yaml"));
    assert_eq!(loki["schema_config"]["configs"][0]["schema"], "v13");
    assert_eq!(loki["schema_config"]["configs"][0]["store"], "tsdb");
    assert_eq!(loki["limits_config"]["allow_structured_metadata"], true);
    assert_eq!(loki["limits_config"]["retention_period"], "360h");
    assert_eq!(loki["compactor"]["retention_enabled"], true);

    // Grafana: the datasources point at the compose services; the dashboard provider's path is
    // where the dashboards folder is mounted, and the dashboard there is valid JSON using
    // only the provisioned datasources.
    let ds = yaml(&p.read(OBSERVABILITY_FILES[3]));
    let ds: Vec<(String, String, String)> = ds["datasources"]
        .as_array()
        .expect("datasources")
        .iter()
        .map(|d| {
            (
                d["uid"].as_str().unwrap_or("").into(),
                d["type"].as_str().unwrap_or("").into(),
                d["url"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        ds,
        [
            (
                "prometheus".into(),
                "prometheus".into(),
                "http://prometheus:9090".into()
            ),
            ("loki".into(), "loki".into(), "http://loki:3100".into())
        ]
    );
    let provider = yaml(&p.read(OBSERVABILITY_FILES[4]));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    let grafana = &services["grafana"];
    let source = mount(grafana, path);
    assert!(
        Path::new(source).join("service-overview.json").is_file(),
        "{source}/service-overview.json"
    );
    let provisioning = Path::new(mount(grafana, "/etc/grafana/provisioning"));
    assert!(provisioning.join("datasources/datasources.yaml").is_file());
    assert!(provisioning.join("dashboards/dashboards.yaml").is_file());
    let dashboard: Value =
        serde_json::from_str(&p.read(OBSERVABILITY_FILES[5])).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "stagecraft-service-overview");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(titles, ["Request rate", "Error rate", "Latency", "Logs"]);
    for panel in panels {
        let uid = panel["datasource"]["uid"].as_str().expect("datasource uid");
        assert!(
            ds.iter().any(|d| d.0 == uid),
            "panel {} uses datasource {uid}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty()))
        );
        assert!(
            panel["gridPos"]["w"]
                .as_u64()
                .is_some_and(|w| w > 0 && w <= 24)
        );
    }
    assert_eq!(panels[3]["type"], "logs");
    assert!(
        panels[0]["targets"][0]["expr"]
            .as_str()
            .unwrap_or("")
            .contains("http_server_request_duration_seconds_count")
    );
    assert_reapply_changes_nothing(&p, "observability", &[]);
}

#[test]
fn observability_merges_into_a_users_project_with_a_prefix_and_no_published_ports() {
    let p = fixture("existing");
    let original = p.read("docker-compose.yml");
    let args = [
        "prefix=obs-",
        "grafana_port=0",
        "prometheus_port=0",
        "otlp_grpc_port=0",
        "otlp_http_port=0",
        "retention_days=7",
        "grafana_password=OBS_GRAFANA_PASSWORD",
    ];
    let out = apply(&p, "observability", &args).ok();
    assert!(
        out.stdout
            .contains("  created  config/obs-observability/prometheus.yml\n"),
        "{}",
        out.stdout
    );
    out.lacks("s3cr3t");
    assert_keeps_lines(&original, &p.read("docker-compose.yml"));
    assert_eq!(
        p.read(".env"),
        "# the team secrets\nAPI_TOKEN=s3cr3t-do-not-print\nSHOP_MODE=production\n\
         # OBS_GRAFANA_PASSWORD: admin password of Grafana (obs-grafana) (secret for recipe observability: fill in, never commit)\nOBS_GRAFANA_PASSWORD=\n"
    );
    assert_compose_valid(
        &p,
        "db,obs-loki,obs-otel-collector,obs-prometheus,obs-grafana,web",
    );
    let config = compose_config(&p);
    for s in [
        "obs-otel-collector",
        "obs-prometheus",
        "obs-loki",
        "obs-grafana",
    ] {
        assert!(
            config["services"][s].get("ports").is_none(),
            "{s} publishes ports"
        );
    }
    assert!(config["volumes"]["obs-grafana_data"].is_object());
    let prom = p.read("config/obs-observability/prometheus.yml");
    assert!(
        prom.contains("- targets: [\"obs-otel-collector:8889\"]"),
        "{prom}"
    );
    assert!(
        p.read("config/obs-observability/loki.yaml")
            .contains("retention_period: 168h")
    );
    let args_check = ["check", "config", "config/obs-observability/prometheus.yml"];
    assert_tool_ok(
        &p,
        "promtool",
        &args_check,
        "prometheus",
        "config/obs-observability/prometheus.yml",
    );
    assert!(
        p.read("config/obs-observability/grafana/provisioning/datasources/datasources.yaml")
            .contains("url: http://obs-loki:3100")
    );
    assert_reapply_changes_nothing(&p, "observability", &args);
    assert!(!p.run(&["ledger", "export"]).ok().stdout.contains("s3cr3t"));
}

const WORKER: &[&str] = &[
    "image=shop/app:1.4",
    "job=python manage.py clearsessions && echo 'done'",
    "schedule=*/15 9-17 * * mon-fri",
    "command=celery -A shop worker --loglevel 'info'",
    "replicas=3",
];

#[test]
fn worker_cron_applies_to_an_empty_project() {
    let p = Project::new();
    apply(&p, "worker-cron", WORKER).ok().stdout_is(&applied(
        "worker-cron",
        &[
            "created  config/worker-cron/scheduler.sh",
            "created  docker-compose.yml",
            "created  docs/recipes/worker-cron.md",
        ],
    ));
    assert_compose_valid(&p, "worker,worker-cron");
    let config = compose_config(&p);
    let worker = &config["services"]["worker"];
    assert_eq!(worker["image"], "shop/app:1.4");
    assert_eq!(worker["deploy"]["replicas"], 3);
    assert_eq!(worker["command"], "celery -A shop worker --loglevel 'info'");
    let cron = &config["services"]["worker-cron"];
    assert_eq!(cron["image"], "shop/app:1.4");
    assert_eq!(
        cron["entrypoint"],
        serde_json::json!(["/bin/sh", "/stagecraft/scheduler.sh"])
    );
    assert_eq!(cron["environment"]["TZ"], "UTC");
    assert!(cron.get("deploy").is_none(), "the scheduler runs once");
    assert_eq!(
        strings(&cron["volumes"]),
        [format!(
            "{}/config/worker-cron/scheduler.sh:/stagecraft/scheduler.sh:ro",
            p.root().display()
        )]
    );
    let script = p.read("config/worker-cron/scheduler.sh");
    let mode = std::fs::metadata(p.path("config/worker-cron/scheduler.sh"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("scheduler.sh");
    assert_eq!(mode, 0o755, "the scheduler can be run by hand");
    assert!(
        script.contains("\nJOB='python manage.py clearsessions && echo '\\''done'\\'''\n"),
        "{script}"
    );
    assert!(
        script.contains("\nMINUTES=\",0,15,30,45,\"\nHOURS=\",9,10,11,12,13,14,15,16,17,\"\n"),
        "{script}"
    );
    assert!(script.contains("\nWEEKDAYS=\",1,2,3,4,5,\"\n"), "{script}");
    let docs = p.read("docs/recipes/worker-cron.md");
    assert!(
        docs.contains("on the schedule `*/15 9-17 * * mon-fri` (UTC)"),
        "{docs}"
    );
    assert_reapply_changes_nothing(&p, "worker-cron", WORKER);
}

/// `sh scheduler.sh --due "M H D MON WD"`: whether the schedule matches that time.
fn due(p: &Project, script: &str, time: &str) -> bool {
    let out = tool(p, "sh", &[script, "--due", time], "dash");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!(
            "{script} --due {time:?} exited with {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn worker_cron_scheduler_matches_times_as_cron_does() {
    let p = Project::new();
    let script = "config/worker-cron/scheduler.sh";
    let apply = |schedule: &str| {
        apply(
            &p,
            "worker-cron",
            &["image=app:1", "job=true", &format!("schedule={schedule}")],
        )
        .ok();
        assert_tool_ok(&p, "sh", &["-n", script], "dash", script);
    };
    apply("*/15 9-17 * * mon-fri");
    // Wednesday 3 June 2026, as `date` prints it (leading zeros) and without them.
    assert!(due(&p, script, "15 09 03 06 3"));
    assert!(due(&p, script, "0 9 3 6 3"));
    assert!(due(&p, script, "45 17 3 6 5"));
    assert!(!due(&p, script, "16 09 03 06 3"), "minute 16");
    assert!(!due(&p, script, "00 18 03 06 3"), "18h");
    assert!(!due(&p, script, "15 09 06 06 6"), "Saturday");
    // Both day fields restricted: either matches (the 1st of the month, or any Monday).
    apply("30 2 1 * 1");
    assert!(due(&p, script, "30 02 01 07 3"), "the 1st, a Wednesday");
    assert!(due(&p, script, "30 02 06 07 1"), "a Monday");
    assert!(!due(&p, script, "30 02 07 07 2"), "neither");
    // A starred day field means both must match; 7 is Sunday; ranges with steps; names.
    apply("0 0 */10 jan-mar/2 *");
    assert!(due(&p, script, "00 00 11 03 4"));
    assert!(
        !due(&p, script, "00 00 11 02 4"),
        "February is not in jan-mar/2"
    );
    assert!(!due(&p, script, "00 00 12 01 4"), "the 12th is not in */10");
    apply("5 4 * * 7");
    assert!(due(&p, script, "05 04 14 06 0"));
    assert!(!due(&p, script, "05 04 15 06 1"));
    apply("@daily");
    assert!(due(&p, script, "00 00 15 06 1") && !due(&p, script, "01 00 15 06 1"));
    apply("1,2,58-59 * * * *");
    assert!(due(&p, script, "02 13 15 06 1") && due(&p, script, "59 13 15 06 1"));
    assert!(!due(&p, script, "03 13 15 06 1"));
}

/// Run the scheduler's loop once with `date` fixed at `now` and a `sleep` that stops the
/// scheduler (as `docker stop` would): returns what it printed and whether the job ran.
fn run_scheduler_once(p: &Project, now: &str) -> (String, Option<String>) {
    let bin = p.path("fakebin");
    std::fs::create_dir_all(&bin).expect("fakebin");
    let write_exe = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let f = bin.join(name);
        std::fs::write(&f, body).expect("write shim");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    write_exe(
        "date",
        &format!("#!/bin/sh\ncase \"$1\" in\n'+%S') echo 30 ;;\n*) echo '{now}' ;;\nesac\n"),
    );
    // Records how long the scheduler wanted to sleep, then sends it the stop signal.
    write_exe(
        "sleep",
        "#!/bin/sh\necho \"$1\" > slept\nkill -TERM $PPID\n",
    );
    let _ = std::fs::remove_file(p.path("job-ran"));
    let out = Command::new("sh")
        .arg("config/worker-cron/scheduler.sh")
        .current_dir(p.root())
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("GREETING", "from the container's environment")
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "scheduler exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.read("slept"), "30\n", "sleeps to the next minute");
    let ran = std::fs::read_to_string(p.path("job-ran")).ok();
    (String::from_utf8_lossy(&out.stdout).into_owned(), ran)
}

#[test]
fn worker_cron_scheduler_runs_the_job_when_due_and_stops_on_a_signal() {
    let p = Project::new();
    apply(
        &p,
        "worker-cron",
        &[
            "image=app:1",
            "job=echo \"$GREETING\" > job-ran",
            "schedule=15 9 * * *",
        ],
    )
    .ok();
    let (stdout, ran) = run_scheduler_once(&p, "15 09 03 06 3 2026-06-03T09:15");
    assert_eq!(ran.as_deref(), Some("from the container's environment\n"));
    assert_eq!(
        stdout,
        "scheduler: running the job on the schedule 15 9 * * * (TZ=UTC)\n\
         scheduler: 2026-06-03T09:15: starting the job\n\
         scheduler: 2026-06-03T09:15: the job exited with status 0\n"
    );
    let (stdout, ran) = run_scheduler_once(&p, "16 09 03 06 3 2026-06-03T09:16");
    assert_eq!(ran, None, "not due at 09:16");
    assert_eq!(
        stdout,
        "scheduler: running the job on the schedule 15 9 * * * (TZ=UTC)\n"
    );
}

#[test]
fn worker_cron_merges_into_a_users_project_with_an_env_file() {
    let p = fixture("existing");
    let original = p.read("docker-compose.yml");
    let args = [
        "service=jobs",
        "image=shop/web:2.3",
        "job=bin/nightly-report",
        "schedule=@daily",
        "replicas=2",
        "env_file=.env",
        "timezone=Europe/Berlin",
    ];
    apply(&p, "worker-cron", &args)
        .ok()
        .lacks("s3cr3t")
        .stdout_is(&applied(
            "worker-cron",
            &[
                "created  config/jobs-cron/scheduler.sh",
                "updated  docker-compose.yml",
                "created  docs/recipes/worker-cron.md",
            ],
        ));
    // The recipe's run never sees the values in the env file (the loader run below does).
    assert!(!p.run(&["ledger", "export"]).ok().stdout.contains("s3cr3t"));
    assert_keeps_lines(&original, &p.read("docker-compose.yml"));
    assert_compose_valid(&p, "db,jobs,jobs-cron,web");
    let config = compose_config(&p);
    assert_eq!(
        config["services"]["jobs"]["environment"]["SHOP_MODE"],
        "production"
    );
    assert_eq!(
        config["services"]["jobs-cron"]["environment"]["SHOP_MODE"],
        "production"
    );
    assert_eq!(
        config["services"]["jobs-cron"]["environment"]["TZ"],
        "Europe/Berlin"
    );
    assert!(
        config["services"]["jobs"].get("command").is_none(),
        "the image's command"
    );
    assert!(
        p.read("docs/recipes/worker-cron.md")
            .contains("needs time zone data (tzdata)")
    );
    assert_reapply_changes_nothing(&p, "worker-cron", &args);
}

/// The exit code when a recipe's own checks refuse an input (a cron expression, a domain
/// name): the recipes raise `errors.new("invalid_input", ...)`, a usage error like the inputs
/// the framework checks itself (types, enums, required).
const RECIPE_CHECK_EXIT: i32 = 2;

#[test]
fn recipe_checked_inputs_exit_2() {
    let p = Project::new();
    apply(
        &p,
        "worker-cron",
        &["image=app:1", "job=true", "schedule=61 * * * *"],
    )
    .code(2)
    .stderr_has(
        "recipe worker-cron: input 'schedule': \"61 * * * *\": minute 61 is out of range (0-59)",
    )
    .stderr_lacks("stack traceback");
}

#[test]
fn bad_inputs_are_refused_naming_the_input_and_nothing_is_written() {
    let p = fixture("existing");
    let before = files(&p);
    let cases = [
        (
            ("61 * * * *"),
            "input 'schedule': \"61 * * * *\": minute 61 is out of range (0-59)",
        ),
        (
            ("* * * *"),
            "input 'schedule': \"* * * *\" has 4 fields, a cron expression has 5 (minute hour day-of-month month day-of-week)",
        ),
        (
            ("0 0 * * funday"),
            "input 'schedule': \"0 0 * * funday\": day-of-week \"funday\" is not a number",
        ),
        (
            ("*/0 * * * *"),
            "input 'schedule': \"*/0 * * * *\": minute step \"0\" is not a positive number",
        ),
        (
            ("0 20-8 * * *"),
            "input 'schedule': \"0 20-8 * * *\": hour range 20-8 runs backwards",
        ),
        (
            ("0 0 0 * *"),
            "input 'schedule': \"0 0 0 * *\": day-of-month 0 is out of range (1-31)",
        ),
        (
            ("0 0 1,,2 * *"),
            "input 'schedule': \"0 0 1,,2 * *\": the day-of-month field \"1,,2\" has an empty list item",
        ),
        (("@reboot"), "input 'schedule': \"@reboot\" has 1 field"),
    ];
    for (schedule, want) in cases {
        let schedule = format!("schedule={schedule}");
        apply(&p, "worker-cron", &["image=app:1", "job=true", &schedule])
            .code(RECIPE_CHECK_EXIT)
            .stderr_has(&format!("recipe worker-cron: {want}"))
            .stderr_has("hint: a cron expression has 5 fields");
    }
    let caddy = |extra: &[&str]| {
        let mut a = vec!["email=ops@example.com"];
        a.extend_from_slice(extra);
        apply(&p, "caddy-https", &a)
    };
    caddy(&["domains=example.com", "proxy=nginx"])
        .code(2)
        .stderr_has("error: recipe caddy-https: input 'proxy' (enum): expected one of caddy, traefik, got \"nginx\"");
    caddy(&["domains=https://example.com"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'domains': \"https://example.com\" is not a domain name")
        .stderr_has("hint: give the host name only");
    caddy(&["domains=exa_mple.com"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'domains': \"exa_mple.com\" is not a domain name");
    caddy(&["domains=*.example.com"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("wildcard certificates need the ACME DNS challenge");
    caddy(&["domains=a.example.com,,b.example.com"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'domains': empty name");
    caddy(&["domains=example.com", "upstream_port=70000"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'upstream_port': port 70000 is out of range (1-65535)");
    caddy(&["domains=example.com", "health_path=healthz"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'health_path': \"healthz\" is not a URL path");
    caddy(&[])
        .code(2)
        .stderr_has("missing required input 'domains'");
    apply(&p, "caddy-https", &["domains=example.com", "email=nobody"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'email': \"nobody\" is not an e-mail address");
    apply(
        &p,
        "worker-cron",
        &["image=app:1", "job=true", "command=a | b"],
    )
    .code(RECIPE_CHECK_EXIT)
    .stderr_has("input 'command': \"a | b\" uses '|', but no shell runs the worker's command");
    apply(
        &p,
        "worker-cron",
        &["image=app:1", "job=true", "replicas=-1"],
    )
    .code(RECIPE_CHECK_EXIT)
    .stderr_has("input 'replicas': -1 is out of range (0-100)");
    apply(
        &p,
        "worker-cron",
        &["image=app:1", "job=true", "env_file=../secrets.env"],
    )
    .code(RECIPE_CHECK_EXIT)
    .stderr_has("input 'env_file': \"../secrets.env\" must be a path inside the project");
    apply(&p, "observability", &["prefix=Obs"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'prefix': \"Obs\" is not a name prefix");
    apply(&p, "observability", &["grafana_version=11 latest"])
        .code(RECIPE_CHECK_EXIT)
        .stderr_has("input 'grafana_version': \"11 latest\" is not an image tag");
    // A clash with the user's service names the line, as for every recipe.
    apply(&p, "worker-cron", &["image=app:1", "job=true", "service=web"])
        .code(1)
        .stderr_has("docker-compose.yml:5: services.web is already defined (by you); recipe worker-cron adds a service named web");
    assert_eq!(files(&p), before, "a refused apply wrote something");
}

#[test]
fn dry_runs_print_the_changes_and_write_nothing() {
    let p = fixture("existing");
    let before = files(&p);
    for (recipe, inputs) in [
        ("caddy-https", CADDY),
        ("observability", &[]),
        ("worker-cron", WORKER),
    ] {
        let mut args = inputs.to_vec();
        args.push("--dry-run");
        let out = apply(&p, recipe, &args).ok().lacks("s3cr3t");
        assert!(
            out.stdout.contains("+++ b/docker-compose.yml\n"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.ends_with("; nothing was written\n"),
            "{}",
            out.stdout
        );
    }
    assert_eq!(files(&p), before);
}

#[test]
fn the_builtin_recipes_are_listed_and_shown() {
    let p = Project::new();
    let list = p.run(&["recipe", "list"]).ok();
    for name in ["caddy-https", "observability", "worker-cron"] {
        assert!(
            list.stdout.contains(&format!("\n{name} ")),
            "{}",
            list.stdout
        );
        let readme = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("recipes/{name}/README.md")),
        )
        .expect("README");
        p.run(&["recipe", "show", name])
            .ok()
            .stdout_has(&format!("{name} 1.0.0 (built-in)\n"))
            .stdout_has("capabilities: fs-write\n")
            .stdout_has(&readme);
    }
    p.run(&["recipe", "show", "worker-cron"])
        .ok()
        .stdout_has("  schedule  string   default \"0 * * * *\"");
}
