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
fn an_example_without_a_header_runs_with_no_capabilities() {
    let p = Project::new();
    let source = "local ok, err = pcall(require(\"stagecraft/exec\").run, { \"true\" })\n\
                  assert(not ok and err.kind == \"permission_denied\", tostring(err))\n";
    assert!(declared_caps(source).is_empty());
    p.script(source, &[]).ok();
}
