//! Recipe packages: `stagecraft recipe list|show|add|remove|apply`, the lock file, and the
//! built-in recipes applied to fixture projects (validated with Stagecraft's compose loader and
//! Debian's `docker-compose config`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Out, Project};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recipes")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy fixture");
        }
    }
}

/// A project holding a copy of the fixture `tests/fixtures/recipes/<name>/`.
fn project_from(name: &str) -> Project {
    let p = Project::new();
    copy_dir(&fixtures().join(name), p.root());
    p
}

/// Stagecraft's own compose loader accepts the file (run through `stagecraft/compose_file`).
fn assert_loads(p: &Project, file: &str, services: &str) {
    p.script(
        &format!(
            "local m = require('stagecraft/compose_file').load('{file}')\nprint(table.concat(m.order, ','))"
        ),
        &["--allow", "docker"],
    )
    .ok()
    .stdout_is(&format!("{services}\n"));
}

/// Debian's docker-compose accepts the file. Fails (never skips) when it is missing.
fn assert_docker_compose_config(p: &Project, file: &str) {
    let out = Command::new("docker-compose")
        .args(["-f", file, "config", "-q"])
        .current_dir(p.root())
        .env_remove("COMPOSE_FILE")
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose is needed by this test (apt-get install docker-compose): {e}")
        });
    assert!(
        out.status.success(),
        "docker-compose config rejected {file}:\n{}\n--- file:\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.read(file)
    );
}

/// Both Stagecraft's loader and docker-compose accept the file.
fn assert_valid_compose(p: &Project, file: &str, services: &str) {
    assert_loads(p, file, services);
    assert_docker_compose_config(p, file);
}

/// Every file of the project except the ledger, with its bytes and modification time.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>, std::time::SystemTime)>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let e = e.expect("entry");
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            if rel == ".stagecraft" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let meta = std::fs::metadata(&path).expect("meta");
                out.push((
                    rel,
                    std::fs::read(&path).expect("read"),
                    meta.modified().expect("mtime"),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A small recipe package at `pkgs/NAME` (recipe.yaml from `yaml_rest` after name and version).
fn write_package(p: &Project, name: &str, yaml_rest: &str, init: &str) {
    p.write(
        &format!("pkgs/{name}/recipe.yaml"),
        &format!("name: {name}\nversion: 0.1.0\n{yaml_rest}"),
    );
    p.write(&format!("pkgs/{name}/init.luau"), init);
}

const NOOP_INIT: &str = "return { plan = function() return {} end, apply = function(i, ctx) return ctx.apply({}) end }\n";

fn add_hello(p: &Project) -> Out {
    let src = fixtures().join("hello");
    p.run(&["recipe", "add", src.to_str().expect("utf-8"), "--yes"])
}

#[test]
fn redis_applies_to_an_empty_project_and_applying_again_changes_nothing() {
    let p = Project::new();
    p.run(&["recipe", "apply", "redis"]).ok().stdout_is(
        "applied recipe redis 1.0.0:\n\
         \x20 created  config/redis/redis.conf\n\
         \x20 created  .env\n\
         \x20 created  docker-compose.yml\n\
         \x20 created  docs/recipes/redis.md\n\
         fill in the secrets added to .env (empty placeholders): REDIS_PASSWORD\n",
    );
    assert_eq!(
        p.read(".env"),
        "# REDIS_PASSWORD: password of the redis service (secret for recipe redis: fill in, never commit)\nREDIS_PASSWORD=\n"
    );
    let compose = p.read("docker-compose.yml");
    assert!(
        compose.contains(
            "  # --- stagecraft recipe: redis (managed) ---\n  redis:\n    image: redis:7.2\n"
        ),
        "{compose}"
    );
    assert!(
        p.read("config/redis/redis.conf")
            .contains("appendonly yes\n")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.path(".env"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a new .env is private");
    assert!(
        p.read("config/redis/redis.conf")
            .contains("maxmemory 256mb\n")
    );
    let docs = p.read("docs/recipes/redis.md");
    assert!(docs.starts_with("# Recipe redis 1.0.0\n"), "{docs}");
    assert!(docs.contains("| `port` | `6379` |"), "{docs}");
    assert!(
        docs.contains("- `REDIS_PASSWORD`: password of the redis service"),
        "{docs}"
    );
    assert!(docs.contains("## About this recipe"), "{docs}");
    assert_valid_compose(&p, "docker-compose.yml", "redis");

    let before = snapshot(p.root());
    p.run(&["recipe", "apply", "redis"])
        .ok()
        .stdout_is("recipe redis 1.0.0 is applied already: nothing changed\n");
    assert_eq!(snapshot(p.root()), before, "re-applying changed files");
    // Different inputs change only what they touch.
    p.run(&["recipe", "apply", "redis", "port=6380", "persist=false"])
        .ok()
        .stdout_is(
            "applied recipe redis 1.0.0:\n\
             \x20 updated  config/redis/redis.conf\n\
             \x20 updated  docker-compose.yml\n\
             \x20 updated  docs/recipes/redis.md\n",
        );
    let compose = p.read("docker-compose.yml");
    assert!(compose.contains("\"127.0.0.1:6380:6379\""), "{compose}");
    assert!(!compose.contains("redis_data"), "{compose}");
    assert_docker_compose_config(&p, "docker-compose.yml");
}

const PGVECTOR_SHOP: [&str; 5] = [
    "recipe",
    "apply",
    "postgres",
    "pgvector=true",
    "database=shop",
];

#[test]
fn postgres_with_pgvector_merges_into_a_users_compose_file_keeping_its_comments() {
    let p = project_from("existing");
    let original = p.read("docker-compose.yml");
    p.run(&PGVECTOR_SHOP).ok().stdout_is(
        "applied recipe postgres 1.0.0:\n\
             \x20 created  config/postgres/initdb/00-pgvector.sql\n\
             \x20 updated  .env\n\
             \x20 updated  docker-compose.yml\n\
             \x20 created  docs/recipes/postgres.md\n\
             fill in the secrets added to .env (empty placeholders): POSTGRES_PASSWORD\n",
    );
    let merged = p.read("docker-compose.yml");
    // Every line of the user's file is still there, in order.
    let mut rest = merged.lines();
    for line in original.lines() {
        assert!(
            rest.any(|l| l == line),
            "line {line:?} lost or moved:\n{merged}"
        );
    }
    assert!(merged.contains(
        "      LOG_LEVEL: info   # debug when chasing bugs\n  # --- stagecraft recipe: postgres (managed) ---\n  postgres:\n    image: pgvector/pgvector:pg16\n"
    ), "{merged}");
    assert!(merged.contains(
        "  uploads: {}\n  # --- stagecraft recipe: postgres (managed) ---\n  postgres_data: {}\n  # --- end stagecraft recipe: postgres ---\n"
    ), "{merged}");
    assert!(
        merged.contains("- \"./config/postgres/initdb:/docker-entrypoint-initdb.d:ro\""),
        "{merged}"
    );
    assert_eq!(
        p.read("config/postgres/initdb/00-pgvector.sql"),
        "-- Written by the Stagecraft recipe postgres 1.0.0 (pgvector=true).\n-- Runs once, when the data volume is first initialised.\n\\connect shop\nCREATE EXTENSION IF NOT EXISTS vector;\n"
    );
    // The existing secret is kept as it is; a placeholder is added after it.
    assert_eq!(
        p.read(".env"),
        "# the team secrets\nAPI_TOKEN=s3cr3t-do-not-print\n# POSTGRES_PASSWORD: password of the app user of postgres (secret for recipe postgres: fill in, never commit)\nPOSTGRES_PASSWORD=\n"
    );
    assert_valid_compose(&p, "docker-compose.yml", "api,postgres,web");

    // redis beside it, then both again: nothing changes.
    p.run(&["recipe", "apply", "redis", "port=0"]).ok();
    assert_valid_compose(&p, "docker-compose.yml", "api,postgres,redis,web");
    let before = snapshot(p.root());
    p.run(&PGVECTOR_SHOP)
        .ok()
        .stdout_is("recipe postgres 1.0.0 is applied already: nothing changed\n");
    p.run(&["recipe", "apply", "redis", "port=0"])
        .ok()
        .stdout_is("recipe redis 1.0.0 is applied already: nothing changed\n");
    assert_eq!(snapshot(p.root()), before);
}

#[test]
fn compose_yaml_is_used_when_the_project_has_it() {
    let p = Project::new();
    p.write("compose.yaml", "services:\n  app:\n    image: app:1\n");
    p.run(&["recipe", "apply", "redis"]).ok();
    assert!(!p.path("docker-compose.yml").exists());
    assert_valid_compose(&p, "compose.yaml", "app,redis");
}

#[test]
fn a_service_that_clashes_with_a_users_service_is_an_error_naming_the_line() {
    let p = Project::new();
    let compose =
        "services:\n  web:\n    image: web:1\n  # my own cache\n  redis:\n    image: redis:6\n";
    p.write("docker-compose.yml", compose);
    let before = snapshot(p.root());
    p.run(&["recipe", "apply", "redis"])
        .code(1)
        .stderr_has("docker-compose.yml:5: services.redis is already defined (by you); recipe redis adds a service named redis")
        .stderr_has("hint: rename or remove the existing service");
    assert_eq!(snapshot(p.root()), before, "nothing may be written");
    // The recipe's own input renames it.
    p.run(&["recipe", "apply", "redis", "service=cache"]).ok();
    assert_loads(&p, "docker-compose.yml", "cache,redis,web");
}

#[test]
fn dry_run_prints_the_diff_and_writes_nothing() {
    let p = project_from("existing");
    let before = snapshot(p.root());
    let out = p
        .run(&[
            "recipe",
            "apply",
            "redis",
            "--dry-run",
            "persist=false",
            "port=0",
        ])
        .ok();
    assert_eq!(snapshot(p.root()), before, "a dry run wrote something");
    assert_eq!(
        out.stdout,
        r#"--- /dev/null
+++ b/config/redis/redis.conf
@@ -0,0 +1,8 @@
+# Redis configuration written by the Stagecraft recipe redis 1.0.0.
+# Re-applying the recipe replaces this file; change the recipe's inputs instead.
+bind 0.0.0.0
+protected-mode yes
+maxmemory 256mb
+maxmemory-policy allkeys-lru
+appendonly no
+save ""
--- a/.env
+++ b/.env
@@ -2,0 +3,2 @@
+# REDIS_PASSWORD: password of the redis service (secret for recipe redis: fill in, never commit)
+REDIS_PASSWORD=
--- a/docker-compose.yml
+++ b/docker-compose.yml
@@ -13,6 +13,26 @@
     image: shop/api:1.4
     environment:
       LOG_LEVEL: info   # debug when chasing bugs
+  # --- stagecraft recipe: redis (managed) ---
+  redis:
+    image: redis:7.2
+    command:
+      - sh
+      - "-c"
+      - "exec redis-server /usr/local/etc/redis/redis.conf --requirepass \"$$REDIS_PASSWORD\""
+    restart: unless-stopped
+    environment:
+      REDIS_PASSWORD: "${REDIS_PASSWORD}"
+    volumes:
+      - "./config/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro"
+    healthcheck:
+      interval: "10s"
+      retries: 5
+      test:
+        - CMD-SHELL
+        - "redis-cli -a \"$$REDIS_PASSWORD\" --no-auth-warning ping | grep -q PONG"
+      timeout: "3s"
+  # --- end stagecraft recipe: redis ---
 
 # Data lives in named volumes.
 volumes:
--- /dev/null
+++ b/docs/recipes/redis.md
"#
        .to_string()
            + &docs_diff_tail(&out.stdout)
            + "dry run: 4 files would change; nothing was written\n"
    );
    // The existing secret never reaches the output, nor the ledger.
    assert!(!out.stdout.contains("s3cr3t"), "{}", out.stdout);
    let ledger = p.run(&["ledger", "export"]).ok();
    assert!(!ledger.stdout.contains("s3cr3t"));
    // After applying, a dry run has nothing to show.
    p.run(&["recipe", "apply", "redis", "persist=false", "port=0"])
        .ok();
    p.run(&[
        "recipe",
        "apply",
        "redis",
        "--dry-run",
        "persist=false",
        "port=0",
    ])
    .ok()
    .stdout_is("dry run: recipe redis 1.0.0 is applied already; nothing would change\n");
}

/// The docs page's diff: every line added, exactly the page that apply writes.
fn docs_diff_tail(stdout: &str) -> String {
    let start = stdout
        .find("+++ b/docs/recipes/redis.md\n")
        .expect("docs diff")
        + "+++ b/docs/recipes/redis.md\n".len();
    let end = stdout.rfind("dry run:").expect("summary");
    let tail = &stdout[start..end];
    let body: Vec<&str> = tail.lines().skip(1).collect();
    assert!(
        tail.starts_with(&format!("@@ -0,0 +1,{} @@\n", body.len())),
        "{tail}"
    );
    assert!(body.iter().all(|l| l.starts_with('+')), "{tail}");
    assert_eq!(body[0], "+# Recipe redis 1.0.0");
    tail.to_string()
}

#[test]
fn input_errors_exit_2_and_name_the_input() {
    let p = Project::new();
    p.run(&["recipe", "apply", "redis", "prot=1"])
        .code(2)
        .stderr_has("error: recipe redis: unknown input 'prot' (did you mean 'port'?); its inputs: service, version, port, persist, maxmemory, password");
    p.run(&["recipe", "apply", "redis", "port=lots"])
        .code(2)
        .stderr_has(
            "error: recipe redis: input 'port' (integer): expected an integer, got \"lots\"",
        );
    p.run(&["recipe", "apply", "redis", "persist=maybe"])
        .code(2)
        .stderr_has("input 'persist' (boolean): expected a boolean (true or false), got \"maybe\"");
    p.run(&["recipe", "apply", "redis", "password=not a name"])
        .code(2)
        .stderr_has("input 'password' (secret): expected a secret: the name of a .env variable");
    p.run(&["recipe", "apply", "redis", "port"])
        .code(2)
        .stderr_has("expected an input as key=value, got 'port'");
    add_hello(&p).ok();
    p.run(&["recipe", "apply", "hello"])
        .code(2)
        .stderr_has("error: recipe hello: missing required input 'who' (string: who to greet)");
    p.run(&["recipe", "apply", "hello", "who=x", "style=shout"])
        .code(2)
        .stderr_has("input 'style' (enum): expected one of plain, loud, got \"shout\"");
    p.run(&["recipe", "apply", "nope"])
        .code(2)
        .stderr_has("error: no recipe named 'nope'");
    p.run(&["recipe", "apply", "rediss"])
        .code(2)
        .stderr_has("no recipe named 'rediss' (did you mean 'redis'?)");
    // Nothing ran: no run in the ledger besides the add (which records none).
    assert!(!p.path("docker-compose.yml").exists());
}

#[test]
fn recipe_yaml_errors_name_file_line_and_column() {
    let p = Project::new();
    let pkg = p.path("pkgs/typo");
    copy_dir(&fixtures().join("hello"), &pkg);
    let yaml = std::fs::read_to_string(pkg.join("recipe.yaml")).expect("read");
    std::fs::write(
        pkg.join("recipe.yaml"),
        yaml.replace("description:", "descripton:"),
    )
    .expect("write");
    p.run(&["recipe", "add", "pkgs/typo", "--yes"])
        .code(2)
        .stderr_has("error: pkgs/typo/recipe.yaml:4:1: unknown key 'descripton' (did you mean 'description'?)");
    std::fs::write(
        pkg.join("recipe.yaml"),
        yaml.replace("default: 1,", "default: one,"),
    )
    .expect("write");
    p.run(&["recipe", "add", "pkgs/typo", "--yes"])
        .code(2)
        .stderr_has(
            "error: pkgs/typo/recipe.yaml:9:36: inputs.times.default: expected an integer value",
        );
    assert!(!p.path("stagecraft.lock").exists());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A git repository holding the hello recipe, tagged v1 (then changed on main).
fn hello_repo(at: &Path) -> String {
    copy_dir(&fixtures().join("hello"), at);
    git(at, &["init", "--quiet", "-b", "main"]);
    git(at, &["add", "."]);
    git(at, &["commit", "--quiet", "-m", "hello 1.2.0"]);
    git(at, &["tag", "v1"]);
    let tagged = git(at, &["rev-parse", "HEAD"]);
    std::fs::write(at.join("README.md"), "# hello\n\nchanged after v1\n").expect("write");
    git(at, &["commit", "--quiet", "-am", "later"]);
    tagged
}

fn tar_gz(from: &Path, prefix: &str, to: &Path) {
    let f = std::fs::File::create(to).expect("create archive");
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.append_dir_all(prefix, from).expect("append");
    b.into_inner().expect("tar").finish().expect("gz");
}

#[test]
fn add_from_a_folder_a_tarball_and_a_git_tag_pins_them_in_the_lock() {
    let p = Project::new();
    let out = add_hello(&p).ok();
    assert!(
        out.stdout
            .starts_with("installed recipe hello 1.2.0 into .stagecraft/recipes/hello (sha256 "),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("asks for capabilities: fs-write"),
        "{}",
        out.stderr
    );

    let archive = p.path("hello-1.2.0.tar.gz");
    tar_gz(&fixtures().join("hello"), "hello-1.2.0", &archive);
    p.run(&[
        "recipe",
        "add",
        "hello-1.2.0.tar.gz",
        "--yes",
        "--name",
        "hello-tar",
    ])
    .ok();

    let repo = tempfile::tempdir().expect("tempdir");
    let tagged = hello_repo(repo.path());
    // file:// with a tag, and a plain path with #REF (a git source too).
    for (source, name) in [
        (format!("file://{}#v1", repo.path().display()), "hello-git"),
        (format!("{}#v1", repo.path().display()), "hello-path"),
    ] {
        let out = p
            .run(&["recipe", "add", &source, "--yes", "--name", name])
            .ok();
        assert!(
            out.stderr.contains(&format!("resolved to commit {tagged}")),
            "{}",
            out.stderr
        );
    }
    // A plain path repository works too (the default branch).
    let plain = format!("git+{}", repo.path().display());
    p.run(&["recipe", "add", &plain, "--yes", "--name", "hello-main"])
        .ok();

    let lock = p.read("stagecraft.lock");
    let sha = |name: &str| {
        let at = lock.find(&format!("- name: \"{name}\"")).expect("entry");
        let s = &lock[at..];
        let i = s.find("sha256: \"").expect("sha") + 9;
        s[i..i + 64].to_string()
    };
    // The same content gives the same digest, whatever the source.
    assert_eq!(sha("hello"), sha("hello-tar"));
    assert_eq!(sha("hello"), sha("hello-git"));
    assert_ne!(sha("hello"), sha("hello-main"), "main has a changed README");
    assert!(lock.contains(&format!(
        "  - name: \"hello-git\"\n    version: \"1.2.0\"\n    source: \"git+file://{}#v1\"\n    resolved: \"{tagged}\"\n",
        repo.path().display()
    )), "{lock}");
    assert!(
        lock.contains(&format!(
            "  - name: \"hello\"\n    version: \"1.2.0\"\n    source: \"{}\"\n    resolved: null\n",
            fixtures().join("hello").display()
        )),
        "{lock}"
    );
    assert!(
        lock.contains("    capabilities: [\"fs-write\"]\n"),
        "{lock}"
    );
    assert!(!p.path(".stagecraft/recipes/hello-git/.git").exists());
    assert_eq!(
        std::fs::read_to_string(p.path(".stagecraft/recipes/hello-main/README.md"))
            .expect("readme"),
        "# hello\n\nchanged after v1\n"
    );

    // An installed recipe applies like a built-in one.
    p.run(&[
        "recipe",
        "apply",
        "hello-git",
        "who=team",
        "times=2",
        "style=loud",
    ])
    .ok()
    .stdout_is(
        "applied recipe hello-git 1.2.0:\n\
             \x20 created  hello/GREETING.txt\n\
             \x20 created  docker-compose.yml\n\
             \x20 created  docs/recipes/hello-git.md\n",
    );
    assert_eq!(
        p.read("hello/GREETING.txt"),
        "HELLO, TEAM!\nHELLO, TEAM!\n-- test\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.path("hello/GREETING.txt"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "a plan's mode applies to a new file");
    assert_valid_compose(&p, "docker-compose.yml", "hello");
}

#[test]
fn unsafe_archives_are_refused() {
    let p = Project::new();
    let build =
        |name: &str, f: &dyn Fn(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>)| {
            let path = p.path(name);
            let file = std::fs::File::create(&path).expect("create");
            let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            ));
            f(&mut b);
            b.into_inner().expect("tar").finish().expect("gz");
        };
    let yaml = std::fs::read(fixtures().join("hello/recipe.yaml")).expect("yaml");
    let file = |b: &mut tar::Builder<_>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name the way a hostile archive would.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    build("escape.tar.gz", &|b| {
        file(b, "pkg/recipe.yaml", &yaml);
        file(b, "pkg/../../evil.txt", b"x");
    });
    p.run(&["recipe", "add", "escape.tar.gz", "--yes"])
        .code(2)
        .stderr_has("entry 'pkg/../../evil.txt' escapes the package folder");
    build("link.tar.gz", &|b| {
        file(b, "pkg/recipe.yaml", &yaml);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "pkg/init.luau", "/etc/passwd")
            .expect("link");
    });
    p.run(&["recipe", "add", "link.tar.gz", "--yes"])
        .code(2)
        .stderr_has("entry 'pkg/init.luau' is a link (to '/etc/passwd')");
    let big = vec![b'x'; 9 * 1024 * 1024];
    build("big.tar.gz", &|b| {
        file(b, "pkg/recipe.yaml", &yaml);
        file(b, "pkg/huge.bin", &big);
    });
    p.run(&["recipe", "add", "big.tar.gz", "--yes"])
        .code(2)
        .stderr_has("entry 'pkg/huge.bin' is larger than a recipe file may be");
    assert!(
        !p.path("evil.txt").exists()
            && !p.root().parent().expect("parent").join("evil.txt").exists()
    );
    assert!(
        !p.path(".stagecraft/recipes").exists()
            || std::fs::read_dir(p.path(".stagecraft/recipes"))
                .expect("dir")
                .next()
                .is_none()
    );
}

#[test]
fn add_needs_approval_and_refuses_without_a_terminal_or_yes() {
    let p = Project::new();
    let src = fixtures().join("hello");
    p.run(&["recipe", "add", src.to_str().expect("utf-8")])
        .code(2)
        .stderr_has("recipe hello 1.2.0 from ")
        .stderr_has("  asks for capabilities: fs-write\n")
        .stderr_has("error: recipe add: installing hello needs your approval of its capabilities (fs-write), and there is no terminal to ask on")
        .stderr_has("hint: review them, then pass --yes");
    assert!(!p.path("stagecraft.lock").exists());
    assert!(!p.path(".stagecraft/recipes/hello").exists());
    p.run(&[
        "recipe",
        "add",
        src.to_str().expect("utf-8"),
        "--name",
        "redis",
        "--yes",
    ])
    .code(2)
    .stderr_has("'redis' is the name of a built-in recipe");
}

#[test]
fn a_recipe_runs_only_with_the_capabilities_it_declared() {
    let p = Project::new();
    // The project grants exec and fs-write; the recipe declares only fs-write.
    p.write(
        "stagecraft.yml",
        "name: test\npermissions: [exec, fs-write]\n",
    );
    write_package(
        &p,
        "sneaky",
        "stagecraft: \">=0.1.0\"\ncapabilities: [fs-write]\n",
        "local M = {}\nfunction M.plan() return {} end\nfunction M.apply(inputs, ctx)\n  require('stagecraft/exec').run({ 'true' })\n  return ctx.apply(M.plan())\nend\nreturn M\n",
    );
    p.run(&["recipe", "add", "pkgs/sneaky", "--yes"]).ok();
    p.run(&["recipe", "apply", "sneaky"])
        .code(3)
        .stderr_has("permission denied: exec.run needs capability exec:true")
        .stderr_has("hint: recipe sneaky runs only with the capabilities its recipe.yaml declares and you approved (fs-write); stagecraft.yml and --allow do not apply to recipes");
    // A recipe that declares nothing cannot write.
    write_package(
        &p,
        "readonly",
        "stagecraft: \">=0.1.0\"\n",
        "return { plan = function() return { notes = { 'x' } } end, apply = function(i, ctx) return ctx.apply({}) end }\n",
    );
    p.run(&["recipe", "add", "pkgs/readonly", "--yes"])
        .ok()
        .stderr_has("asks for no capabilities");
    p.run(&["recipe", "apply", "readonly"])
        .code(3)
        .stderr_has("recipe.apply needs capability fs-write");
    // Its dry run needs nothing.
    p.run(&["recipe", "apply", "readonly", "--dry-run"])
        .ok()
        .stdout_has("+++ b/docs/recipes/readonly.md\n");
}

#[test]
fn a_tampered_installed_recipe_is_refused_until_re_added() {
    let p = Project::new();
    add_hello(&p).ok();
    p.write(
        ".stagecraft/recipes/hello/init.luau",
        "return { plan = function() return {} end, apply = function() end }\n",
    );
    p.run(&["recipe", "list"])
        .ok()
        .stdout_has(" [changed or missing since added: re-add it]\n");
    p.run(&["recipe", "apply", "hello", "who=x"])
        .code(3)
        .stderr_has("error: recipe hello: the files in .stagecraft/recipes/hello no longer match stagecraft.lock")
        .stderr_has("re-add it from its source to review and approve it again");
    assert!(!p.path("hello/GREETING.txt").exists());
    // An added file counts too.
    add_hello(&p).ok();
    p.write(".stagecraft/recipes/hello/templates/extra.j2", "x");
    p.run(&["recipe", "apply", "hello", "who=x"]).code(3);
    add_hello(&p).ok();
    p.run(&["recipe", "apply", "hello", "who=x"]).ok();
}

#[test]
fn remove_deletes_the_package_and_its_lock_entry_but_not_what_it_wrote() {
    let p = Project::new();
    add_hello(&p).ok();
    p.run(&["recipe", "apply", "hello", "who=x"]).ok();
    p.run(&["recipe", "remove", "hello"]).ok().stdout_is(
        "removed recipe hello (.stagecraft/recipes/hello and its stagecraft.lock entry)\n\
         what applying it wrote (compose block, files, docs/recipes/hello.md, .env lines) is left as it is\n",
    );
    assert!(!p.path(".stagecraft/recipes/hello").exists());
    assert_eq!(
        p.read("stagecraft.lock"),
        "# stagecraft.lock: recipes installed in .stagecraft/recipes/, written by\n# `stagecraft recipe add`. Commit it; do not edit it by hand.\nversion: 1\nrecipes: []\n"
    );
    assert!(p.path("hello/GREETING.txt").exists());
    p.run(&["recipe", "remove", "hello"])
        .code(2)
        .stderr_has("error: recipe hello is not installed");
    p.run(&["recipe", "remove", "redis"])
        .code(2)
        .stderr_has("recipe redis is built in");
}

#[test]
fn list_and_show() {
    let p = Project::new();
    add_hello(&p).ok();
    p.run(&["recipe", "list"]).ok().stdout_is(&format!(
        "NAME           VERSION  SOURCE\ncaddy-https    1.0.0    built-in\nobservability  1.0.0    built-in\npostgres       1.0.0    built-in\nredis          1.0.0    built-in\nworker-cron    1.0.0    built-in\nhello          1.2.0    {}\n",
        fixtures().join("hello").display()
    ));
    p.run(&["recipe", "show", "redis"]).ok().stdout_is(&format!(
        "redis 1.0.0 (built-in)\n\
         Redis with append-only persistence, a password from .env and a healthcheck\n\
         \n\
         stagecraft:   >=0.1.0\n\
         capabilities: fs-write\n\
         requires:     none\n\
         \n\
         inputs:\n\
         \x20 service    string   default \"redis\"           name of the compose service\n\
         \x20 version    string   default \"7.2\"             Redis image tag (redis:TAG)\n\
         \x20 port       integer  default 6379              host port published on 127.0.0.1 (0: not published)\n\
         \x20 persist    boolean  default true              append-only persistence in a named volume\n\
         \x20 maxmemory  string   default \"256mb\"           memory limit of the cache (maxmemory)\n\
         \x20 password   secret   default \"REDIS_PASSWORD\"  name of the .env variable holding the password\n\
         \n\
         README.md:\n\n{}",
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/redis/README.md")).expect("readme")
    ));
    p.run(&["recipe", "show", "hello"])
        .ok()
        .stdout_has("hello 1.2.0 (installed from ")
        .stdout_has("  who    string             required         who to greet\n")
        .stdout_has("  style  enum (plain|loud)  default \"plain\"  how to greet\n");
    for sub in ["list", "show", "add", "remove", "apply"] {
        p.run(&["recipe", sub, "--help"])
            .ok()
            .stdout_has("Usage: stagecraft recipe");
    }
}

#[test]
fn requires_are_checked_at_add_and_apply() {
    let p = Project::new();
    write_package(
        &p,
        "app",
        "stagecraft: \">=0.1.0\"\ncapabilities: [fs-write]\nrequires:\n  - { name: postgres, version: \">=1.0\" }\n  - { name: hello, version: \"^1.2\" }\n",
        NOOP_INIT,
    );
    p.run(&["recipe", "add", "pkgs/app", "--yes"])
        .code(2)
        .stderr_has("error: recipe app requires recipe hello (^1.2), which is neither built in nor installed");
    add_hello(&p).ok();
    p.run(&["recipe", "add", "pkgs/app", "--yes"]).ok();
    p.run(&["recipe", "apply", "app"]).ok();
    p.run(&["recipe", "remove", "hello"]).ok();
    p.run(&["recipe", "apply", "app"])
        .code(2)
        .stderr_has("requires recipe hello (^1.2)");
    // A version outside the range.
    write_package(
        &p,
        "old",
        "stagecraft: \">=0.1.0\"\nrequires:\n  - { name: redis, version: \">=2\" }\n",
        "return {}\n",
    );
    p.run(&["recipe", "add", "pkgs/old", "--yes"])
        .code(2)
        .stderr_has("error: recipe old requires recipe redis >=2, but redis is 1.0.0 (built-in)");
    // And the Stagecraft version.
    write_package(&p, "future", "stagecraft: \">=99.0\"\n", "return {}\n");
    p.run(&["recipe", "add", "pkgs/future", "--yes"])
        .code(2)
        .stderr_has("error: recipe future 0.1.0 needs Stagecraft >=99.0, this is ");
}

#[test]
fn every_apply_and_dry_run_is_a_ledger_run() {
    let p = Project::new();
    p.run(&["recipe", "apply", "redis", "--dry-run"]).ok();
    p.run(&["recipe", "apply", "redis"]).ok();
    p.run(&["recipe", "apply", "redis"]).ok();
    let runs = p.run(&["ledger", "ls", "--json"]).ok().json();
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 3, "{runs:?}");
    for r in runs {
        assert_eq!(r["script"], "stagecraft/cli/recipe.luau");
        assert_eq!(r["status"], "ok");
    }
    let show = p.run(&["ledger", "show", "last"]).ok();
    assert!(show.stdout.contains("recipe.apply"), "{}", show.stdout);
    assert!(
        show.stdout.contains("stagecraft/recipes/redis.luau"),
        "{}",
        show.stdout
    );
    p.run(&["ledger", "verify"]).ok();
    // The recorded run replays without divergence.
    p.run(&["replay", "last"]).ok().stderr_has("no divergence");
}

#[test]
fn template_errors_name_the_template_and_line() {
    let p = Project::new();
    p.write(
        "pkgs/broken/recipe.yaml",
        "name: broken\nversion: 0.1.0\nstagecraft: \">=0.1.0\"\ncapabilities: [fs-write]\n",
    );
    p.write("pkgs/broken/templates/x.j2", "line one\n{{ missing }}\n");
    p.write(
        "pkgs/broken/init.luau",
        "local M = {}\nfunction M.plan(i, ctx) return { files = { { path = 'x.txt', template = 'x.j2', vars = {} } } } end\nfunction M.apply(i, ctx) return ctx.apply(M.plan(i, ctx)) end\nreturn M\n",
    );
    p.run(&["recipe", "add", "pkgs/broken", "--yes"]).ok();
    p.run(&["recipe", "apply", "broken"])
        .code(1)
        .stderr_has("recipe broken: templates/x.j2:2: undefined value");
    assert!(!p.path("x.txt").exists());
    assert!(
        !p.path("docs/recipes/broken.md").exists(),
        "nothing is half-applied"
    );
}

#[test]
fn the_recipes_example_installs_from_a_local_git_repository() {
    let p = Project::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/recipes");
    let bin_dir = Path::new(crate::harness::BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg(example.join("install.sh"))
        .arg(p.root())
        .env("PATH", path)
        .env("HOME", p.home())
        .env("STAGECRAFT_HOME", p.home())
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "examples/recipes/install.sh failed\n--- stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("applied recipe static-site 1.0.0:"),
        "{stdout}"
    );
    assert!(p.read("stagecraft.lock").contains("resolved: \""));
    assert_valid_compose(&p, "docker-compose.yml", "site");
}

/// `recipe add` on a terminal (a pty from util-linux `script`): the answer decides.
#[test]
fn add_asks_on_a_terminal_and_installs_only_on_yes() {
    let p = Project::new();
    let src = fixtures().join("hello");
    let on_a_terminal = |answer: &str| {
        let line = format!("{} recipe add '{}'", crate::harness::BIN, src.display());
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .current_dir(p.root())
            .env("HOME", p.home())
            .env("STAGECRAFT_HOME", p.home())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("`script` (util-linux) is needed by this test: {e}"));
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(answer.as_bytes())
            .expect("answer");
        let out = child.wait_with_output().expect("script runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, screen) = on_a_terminal("n\n");
    assert_eq!(code, Some(2), "{screen}");
    assert!(
        screen.contains(
            "  asks for capabilities: fs-write\r\napprove and install hello? [y/N] not installed"
        ),
        "{screen}"
    );
    assert!(!p.path(".stagecraft/recipes/hello").exists());
    let (code, screen) = on_a_terminal("y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("installed recipe hello 1.2.0"), "{screen}");
    assert!(p.read("stagecraft.lock").contains("- name: \"hello\""));
}

#[test]
fn a_plan_cannot_write_outside_the_project_or_into_its_secrets_and_state() {
    let p = Project::new();
    let init = "local M = {}\nfunction M.plan(i) return { files = { { path = i.path, content = 'x' } } } end\nfunction M.apply(i, ctx) return ctx.apply(M.plan(i)) end\nreturn M\n";
    write_package(
        &p,
        "writer",
        "stagecraft: \">=0.1.0\"\ncapabilities: [fs-write]\ninputs:\n  path: { type: string }\n",
        init,
    );
    p.run(&["recipe", "add", "pkgs/writer", "--yes"]).ok();
    p.run(&["recipe", "apply", "writer", "path=../escape.txt"])
        .code(1)
        .stderr_has("recipe.apply: files: '../escape.txt' must be a path inside the project");
    p.run(&["recipe", "apply", "writer", "path=.env"])
        .code(1)
        .stderr_has("'.env' is the secrets file; declare variables in `env` instead");
    p.run(&[
        "recipe",
        "apply",
        "writer",
        "path=.stagecraft/recipes/writer/init.luau",
    ])
    .code(3)
    .stderr_has("is inside .stagecraft/");
    std::os::unix::fs::symlink("/tmp", p.path("out")).expect("symlink");
    p.run(&["recipe", "apply", "writer", "path=out/x.txt"])
        .code(3)
        .stderr_has("is outside the project directory");
    assert!(
        !p.root()
            .parent()
            .expect("parent")
            .join("escape.txt")
            .exists()
    );
    assert!(!p.path("docs/recipes/writer.md").exists());
    // A package folder with a link in it is refused at add.
    write_package(&p, "linky", "stagecraft: \">=0.1.0\"\n", NOOP_INIT);
    std::os::unix::fs::symlink("/etc/passwd", p.path("pkgs/linky/passwd")).expect("symlink");
    p.run(&["recipe", "add", "pkgs/linky", "--yes"])
        .code(2)
        .stderr_has("recipe packages may not contain symbolic links");
}

#[test]
fn sources_that_would_run_programs_through_git_are_refused() {
    let p = Project::new();
    for src in ["ext::sh -c touch% pwned", "git+ext::sh -c touch% pwned"] {
        p.run(&["recipe", "add", src, "--yes"])
            .code(2)
            .stderr_has("uses a git transport helper");
    }
    p.run(&[
        "recipe",
        "add",
        "file:///tmp/repo.git#--upload-pack=touch",
        "--yes",
    ])
    .code(2)
    .stderr_has("is not a tag, branch or commit");
    assert!(!p.path("pwned").exists());
    assert!(!p.path("stagecraft.lock").exists(), "nothing was installed");
}
