//! Runs every `tests/lua/*.spec.luau` through the real binary with all capabilities.

use crate::harness::Project;

#[test]
fn lua_specs_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lua");
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/lua exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".spec.luau"))
        .collect();
    specs.sort();
    assert!(!specs.is_empty(), "no specs found in {}", dir.display());
    for spec in specs {
        let p = Project::new();
        let name = spec
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        p.write(&name, &std::fs::read_to_string(&spec).expect("read spec"));
        let out = p.run(&["run", &name, "--allow-all"]);
        assert_eq!(
            out.code, 0,
            "spec {name} failed\n--- stdout:\n{}\n--- stderr:\n{}",
            out.stdout, out.stderr
        );
        assert!(
            !out.stdout.contains("FAIL"),
            "spec {name} reported failures:\n{}",
            out.stdout
        );
    }
}
