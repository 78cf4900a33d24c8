//! Tests: every `examples/*.luau` runs, with exactly the capabilities its header declares, and
//! replays without divergence.
//!
//! The header is a comment line at the top of the file (before the first line of code):
//!
//! ```text
//! -- allow: exec:sh fs-write
//! ```
//!
//! Each word becomes one `--allow`. An example without the line runs with no capabilities.
//! Each example runs in its own throwaway project holding a copy of `examples/`, so relative
//! `require`s work as they do from the repository.

use std::path::{Path, PathBuf};

use crate::harness::Project;

/// The capabilities an example's `-- allow:` header declares (empty when it has none).
fn declared_caps(source: &str) -> Vec<String> {
    source
        .lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .filter_map(|l| l.trim_start_matches('-').trim().strip_prefix("allow:"))
        .flat_map(|caps| caps.split_whitespace().map(str::to_string))
        .collect()
}

/// `-- inventory: ROLE N`: the example needs N hosts with that role. The test starts N real
/// sshd hosts on loopback and writes a `stagecraft.yml` whose inventory names them `ROLE-1`...
fn declared_inventory(source: &str) -> Option<(String, usize)> {
    source
        .lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .find_map(|l| {
            let rest = l
                .trim_start_matches('-')
                .trim()
                .strip_prefix("inventory:")?;
            let mut words = rest.split_whitespace();
            let role = words.next()?.to_string();
            let n = words.next()?.parse().ok()?;
            words.next().is_none().then_some((role, n))
        })
}

/// Start the hosts an `inventory:` header asks for and describe them in `stagecraft.yml`.
fn start_inventory(p: &Project, role: &str, n: usize) -> Vec<crate::sshd::Sshd> {
    let hosts: Vec<_> = (0..n).map(|_| crate::sshd::Sshd::start()).collect();
    let mut yml = String::from("name: examples\ninventory:\n  hosts:\n");
    for (i, h) in hosts.iter().enumerate() {
        yml.push_str(&format!(
            "    {role}-{}: {{ address: 127.0.0.1, port: {}, user: {}, key: {}, known_hosts_file: {}, roles: [{role}] }}\n",
            i + 1,
            h.port(),
            h.user(),
            h.key_path().display(),
            h.known_hosts_path().display()
        ));
    }
    p.write("stagecraft.yml", &yml);
    hosts
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Copy `from` into `to`, skipping state and build output left by running examples in place.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read examples dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == ".stagecraft" || name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy example file");
        }
    }
}

#[test]
fn every_example_runs_with_its_declared_capabilities_and_replays() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "luau"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty(), "no examples found");
    // The compose examples run the test images (there is no registry to pull from).
    crate::images::web();
    crate::images::caddy();
    for path in examples {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let source = std::fs::read_to_string(&path).expect("read example");
        let p = Project::new();
        copy_tree(&examples_dir(), p.root());
        let caps = declared_caps(&source);
        let hosts = declared_inventory(&source)
            .map(|(role, n)| start_inventory(&p, &role, n))
            .unwrap_or_default();
        let mut args = vec!["run".to_string()];
        for c in &caps {
            args.push("--allow".into());
            args.push(c.clone());
        }
        args.push(name.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = p.run(&args);
        assert_eq!(
            out.code, 0,
            "example {name} (capabilities {caps:?}) failed\n--- stdout:\n{}\n--- stderr:\n{}",
            out.stdout, out.stderr
        );
        // A replay connects to nothing: the hosts are gone by then.
        drop(hosts);
        let replay = p.run(&["replay", "last"]);
        assert_eq!(
            replay.code, 0,
            "replay of example {name} failed\n--- stdout:\n{}\n--- stderr:\n{}",
            replay.stdout, replay.stderr
        );
        assert!(
            replay.stderr.contains("no divergence"),
            "replay of example {name}: {}",
            replay.stderr
        );
    }
}

#[test]
fn allow_header_is_read_from_the_leading_comments_only() {
    assert_eq!(
        declared_caps("-- An example.\n--\n-- allow: exec:sh  fs-write\nlocal x = 1\n"),
        ["exec:sh", "fs-write"]
    );
    assert_eq!(
        declared_caps("--- allow: net:example.com\n-- allow: secrets:TOKEN\nprint(1)\n"),
        ["net:example.com", "secrets:TOKEN"]
    );
    assert!(declared_caps("-- no header here\nprint(1)\n").is_empty());
    assert!(
        declared_caps("print(1)\n-- allow: exec\n").is_empty(),
        "a comment after the first line of code is not a header"
    );
}

#[test]
fn inventory_header_names_a_role_and_a_count() {
    assert_eq!(
        declared_inventory("-- allow: ssh\n-- inventory: web 3\nlocal x = 1\n"),
        Some(("web".to_string(), 3))
    );
    assert_eq!(declared_inventory("-- allow: ssh\nprint(1)\n"), None);
    // A YAML sample in the comments is not the header.
    assert_eq!(
        declared_inventory("--   inventory:\n--     hosts:\n-- inventory: db 2\n"),
        Some(("db".to_string(), 2))
    );
    assert_eq!(declared_inventory("print(1)\n-- inventory: web 3\n"), None);
}

#[test]
fn an_example_without_a_header_runs_with_no_capabilities() {
    let p = Project::new();
    let source = "local ok, err = pcall(require(\"stagecraft/exec\").run, { \"true\" })\n\
                  assert(not ok and err.kind == \"permission_denied\", tostring(err))\n";
    assert!(declared_caps(source).is_empty());
    p.script(source, &[]).ok();
}
