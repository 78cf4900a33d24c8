//! `stagecraft types`: the type definitions cover exactly what the runtime registers, the
//! checked-in docs/api is what they generate, and the files written into a project.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mlua::{UserData, UserDataFields, UserDataMethods};
use stagecraft::types::{self, MemberKind, ModuleDef};

use crate::harness::Project;

fn defs() -> Vec<ModuleDef> {
    types::definitions().unwrap_or_else(|e| panic!("stdlib/types does not parse: {e}"))
}

/// Member names a `UserData` type registers, collected by running its own `add_fields` and
/// `add_methods` against this recorder (the same calls mlua makes to build the metatable).
#[derive(Default)]
struct Members {
    fields: BTreeSet<String>,
    methods: BTreeSet<String>,
}

impl Members {
    fn of<T: UserData>() -> Members {
        let mut m = Members::default();
        T::add_fields(&mut m);
        T::add_methods(&mut m);
        m
    }
}

impl<T> UserDataFields<T> for Members {
    fn add_field<V>(&mut self, name: impl Into<String>, _: V) {
        self.fields.insert(name.into());
    }
    fn add_field_method_get<M, R>(&mut self, name: impl Into<String>, _: M) {
        self.fields.insert(name.into());
    }
    fn add_field_method_set<M, A>(&mut self, name: impl Into<String>, _: M) {
        self.fields.insert(name.into());
    }
    fn add_field_function_get<F, R>(&mut self, name: impl Into<String>, _: F) {
        self.fields.insert(name.into());
    }
    fn add_field_function_set<F, A>(&mut self, name: impl Into<String>, _: F) {
        self.fields.insert(name.into());
    }
    fn add_meta_field<V>(&mut self, _: impl Into<String>, _: V) {}
    fn add_meta_field_with<F, R>(&mut self, _: impl Into<String>, _: F) {}
}

impl<T> UserDataMethods<T> for Members {
    fn add_method<M, A, R>(&mut self, name: impl Into<String>, _: M) {
        self.methods.insert(name.into());
    }
    fn add_method_mut<M, A, R>(&mut self, name: impl Into<String>, _: M) {
        self.methods.insert(name.into());
    }
    fn add_async_method<M, A, MR, R>(&mut self, name: impl Into<String>, _: M) {
        self.methods.insert(name.into());
    }
    fn add_async_method_mut<M, A, MR, R>(&mut self, name: impl Into<String>, _: M) {
        self.methods.insert(name.into());
    }
    fn add_function<F, A, R>(&mut self, name: impl Into<String>, _: F) {
        self.methods.insert(name.into());
    }
    fn add_function_mut<F, A, R>(&mut self, name: impl Into<String>, _: F) {
        self.methods.insert(name.into());
    }
    fn add_async_function<F, A, FR, R>(&mut self, name: impl Into<String>, _: F) {
        self.methods.insert(name.into());
    }
    fn add_meta_method<M, A, R>(&mut self, _: impl Into<String>, _: M) {}
    fn add_meta_method_mut<M, A, R>(&mut self, _: impl Into<String>, _: M) {}
    fn add_meta_function<F, A, R>(&mut self, _: impl Into<String>, _: F) {}
    fn add_meta_function_mut<F, A, R>(&mut self, _: impl Into<String>, _: F) {}
}

/// Every `UserData` type scripts can get hold of: (Rust type, module, Luau type, members).
fn handles() -> Vec<(&'static str, &'static str, &'static str, Members)> {
    use stagecraft::api::{command::Descriptor, docker::Container, lock::Lock, ssh::Host};
    use stagecraft::runtime::{ErrorObject, secrets::SecretHandle};
    vec![
        (
            "Container",
            "docker",
            "Container",
            Members::of::<Container>(),
        ),
        ("Host", "ssh", "Host", Members::of::<Host>()),
        ("Lock", "lock", "Lock", Members::of::<Lock>()),
        (
            "Descriptor",
            "command",
            "Descriptor",
            Members::of::<Descriptor>(),
        ),
        (
            "SecretHandle",
            "secrets",
            "Secret",
            Members::of::<SecretHandle>(),
        ),
        (
            "ErrorObject",
            "errors",
            "Error",
            Members::of::<ErrorObject>(),
        ),
    ]
}

/// `impl UserData for X` / `impl mlua::UserData for X` anywhere under src/.
fn userdata_types_in_source(dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            userdata_types_in_source(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).expect("read source");
            for line in text.lines() {
                let l = line.trim();
                if let Some(rest) = l
                    .strip_prefix("impl UserData for ")
                    .or_else(|| l.strip_prefix("impl mlua::UserData for "))
                {
                    out.insert(rest.trim_end_matches('{').trim().to_string());
                }
            }
        }
    }
}

/// What the real runtime registers: every module required by a script, its tables walked.
fn runtime_members(names: &[String]) -> BTreeMap<String, BTreeMap<String, String>> {
    let p = Project::new();
    let src = r#"
local json = require("stagecraft/json")
local function walk(t, prefix, acc, depth)
	for k, v in pairs(t) do
		local path = prefix .. tostring(k)
		if type(v) == "table" and depth < 8 then
			walk(v, path .. ".", acc, depth + 1)
		else
			acc[path] = type(v)
		end
	end
	return acc
end
local args = ...
local out = {}
for _, name in ipairs(args) do
	out[name] = walk(require("stagecraft/" .. name), "", {}, 0)
end
-- A connected engine (connects lazily: nothing is opened here).
out["docker.Engine"] = walk(require("stagecraft/docker").connect({ host = "unix:///nowhere.sock" }), "", {}, 0)
print(json.encode(out))
"#;
    let mut args: Vec<&str> = Vec::new();
    for n in names {
        args.push(n);
    }
    let out = p.script(src, &args).ok();
    serde_json::from_str(&out.stdout).expect("walk output is JSON")
}

fn declared(m: &ModuleDef, ty: &str) -> BTreeMap<String, (MemberKind, bool)> {
    let mut out = BTreeMap::new();
    for f in m
        .table(ty)
        .unwrap_or_else(|| panic!("{}: no table type {ty}", m.file))
    {
        let kind = if f.ty.starts_with('(') || f.ty.starts_with('<') {
            MemberKind::Function
        } else {
            MemberKind::Value
        };
        if kind == MemberKind::Value && m.table(&f.ty).is_some() {
            for (k, v) in declared(m, &f.ty) {
                out.insert(format!("{}.{k}", f.name), v);
            }
        } else {
            out.insert(f.name.clone(), (kind, f.ty.ends_with('?')));
        }
    }
    out
}

fn compare(
    what: &str,
    file: &str,
    live: &BTreeMap<String, String>,
    decl: &BTreeMap<String, (MemberKind, bool)>,
    problems: &mut Vec<String>,
) {
    for (path, ty) in live {
        match decl.get(path) {
            None => problems.push(format!(
                "{what}.{path} ({ty}) is registered but has no type definition in {file}"
            )),
            Some((MemberKind::Function, _)) if ty != "function" => problems.push(format!(
                "{what}.{path} is declared a function in {file} but is a {ty}"
            )),
            Some((MemberKind::Value, _)) if ty == "function" => problems.push(format!(
                "{what}.{path} is a function but {file} declares a value"
            )),
            _ => {}
        }
    }
    for (path, (kind, optional)) in decl {
        let may_be_absent = *kind == MemberKind::Value && *optional;
        if !live.contains_key(path) && !may_be_absent {
            problems.push(format!(
                "{file} declares {what}.{path}, which the runtime does not register"
            ));
        }
    }
}

#[test]
fn every_registered_function_and_handle_member_has_a_type_and_every_type_exists() {
    let defs = defs();
    let mut problems = Vec::new();

    // One definition file per requirable module, and no other.
    let requirable: BTreeSet<String> = types::requirable_modules()
        .into_iter()
        .map(|(n, _, _)| n.trim_start_matches("stagecraft/").to_string())
        .collect();
    let defined: BTreeSet<String> = defs.iter().map(|m| m.name.clone()).collect();
    // Line 1 of each file is the module's one-line description, as `stagecraft modules` says it.
    for (name, _, about) in types::requirable_modules() {
        let short = name.trim_start_matches("stagecraft/");
        if let Some(m) = defs.iter().find(|m| m.name == short)
            && m.doc != about
        {
            problems.push(format!(
                "{}:1 describes the module as '{}', the registry as '{about}': make them the same",
                m.file, m.doc
            ));
        }
    }
    for m in requirable.difference(&defined) {
        problems.push(format!(
            "module stagecraft/{m} has no stdlib/types/{m}.d.luau"
        ));
    }
    for m in defined.difference(&requirable) {
        problems.push(format!(
            "stdlib/types/{m}.d.luau defines a module that does not exist"
        ));
    }

    // Module tables, as the runtime builds them.
    let names: Vec<String> = requirable.intersection(&defined).cloned().collect();
    let live = runtime_members(&names);
    for m in defs.iter().filter(|m| names.contains(&m.name)) {
        let decl = declared(m, &m.module_type);
        compare(&m.name, &m.file, &live[&m.name], &decl, &mut problems);
    }
    let docker = defs
        .iter()
        .find(|m| m.name == "docker")
        .expect("docker types");
    compare(
        "docker.Engine",
        &docker.file,
        &live["docker.Engine"],
        &declared(docker, "Engine"),
        &mut problems,
    );

    // Handles: the fields and methods each UserData type registers.
    let handles = handles();
    for (rust, module, luau, members) in &handles {
        let m = defs.iter().find(|m| &m.name == module).expect("module");
        let Some(fields) = m.table(luau) else {
            problems.push(format!("{}: no type {luau} for the handle {rust}", m.file));
            continue;
        };
        let (methods, values): (Vec<_>, Vec<_>) =
            fields.iter().partition(|f| types::is_method(luau, &f.ty));
        let dm: BTreeSet<String> = methods.iter().map(|f| f.name.clone()).collect();
        let dv: BTreeSet<String> = values.iter().map(|f| f.name.clone()).collect();
        for x in members.methods.difference(&dm) {
            problems.push(format!(
                "method {rust}:{x} has no definition in type {luau} of {}",
                m.file
            ));
        }
        for x in dm.difference(&members.methods) {
            problems.push(format!(
                "{} declares {luau}:{x}, which {rust} does not register",
                m.file
            ));
        }
        for x in members.fields.difference(&dv) {
            problems.push(format!(
                "field {rust}.{x} has no definition in type {luau} of {}",
                m.file
            ));
        }
        for x in dv.difference(&members.fields) {
            problems.push(format!(
                "{} declares {luau}.{x}, which {rust} does not register",
                m.file
            ));
        }
    }
    // A new UserData type, or a declared handle type, must be in the list above.
    let mut in_source = BTreeSet::new();
    userdata_types_in_source(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut in_source,
    );
    let listed: BTreeSet<String> = handles.iter().map(|h| h.0.to_string()).collect();
    for t in in_source.difference(&listed) {
        problems.push(format!(
            "UserData type {t} is not checked: add it to handles() in tests/integration/types.rs"
        ));
    }
    for m in &defs {
        for t in m.handles() {
            if !handles.iter().any(|h| h.1 == m.name && h.2 == t.name) {
                problems.push(format!(
                    "{} declares the handle type {} (it has methods), but no Rust type is checked against it",
                    m.file, t.name
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "type definitions out of step:\n{}",
        problems.join("\n")
    );
}

#[test]
fn type_files_are_valid_luau() {
    let lua = mlua::Lua::new();
    for m in defs() {
        if let Err(e) = lua
            .load(m.source.as_str())
            .set_name(&m.file)
            .into_function()
        {
            panic!("{} does not compile as Luau: {e}", m.file);
        }
    }
}

#[test]
fn checked_in_docs_api_is_what_types_generates() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api");
    let docs = docs.to_str().expect("utf-8 path");
    let out = Project::new().run(&["types", "--docs", docs, "--check"]);
    assert_eq!(
        out.code, 0,
        "docs/api differs from what the type definitions generate; regenerate it with\n  \
         cargo run -- types --docs docs/api\n{}",
        out.stdout
    );
    assert_eq!(
        out.stdout,
        format!("up to date: {} API pages\n", defs().len() + 1)
    );
}

#[test]
fn types_writes_definitions_and_luaurc_merges_is_idempotent_and_check_finds_drift() {
    let p = Project::new();
    let n = defs().len();
    let out = p.run(&["types"]).ok();
    out.stdout_has("created .stagecraft/types/exec.luau\n")
        .stdout_has(
            "created .luaurc\n  added languageMode = \"strict\"\n  \
             added aliases.stagecraft = \"./.stagecraft/types\"\n  \
             added aliases.lib = \"./.stagecraft/lib\"\n",
        )
        .stdout_has(&format!("{} file(s) changed\n", n + 1));
    assert_eq!(
        p.read(".luaurc"),
        "{\n  \"aliases\": {\n    \"lib\": \"./.stagecraft/lib\",\n    \
         \"stagecraft\": \"./.stagecraft/types\"\n  },\n  \"languageMode\": \"strict\"\n}\n"
    );
    let exec = p.read(".stagecraft/types/exec.luau");
    assert!(exec.starts_with(types::GENERATED), "{exec}");
    assert!(exec.contains("run: (argv: { string }, opts: RunOpts?) -> RunResult,"));

    // Idempotent; --check agrees.
    p.run(&["types"]).ok().stdout_is(&format!(
        "nothing changed: {n} type files and .luaurc are up to date\n"
    ));
    p.run(&["types", "--check"])
        .ok()
        .stdout_is(&format!("up to date: {n} type files and .luaurc\n"));

    // Drift: an edited file, a stale one from an older version, a missing one.
    p.write(
        ".stagecraft/types/fs.luau",
        &format!("{}\n-- edited\n", types::GENERATED),
    );
    p.write(
        ".stagecraft/types/gone.luau",
        &format!("{}\n", types::GENERATED),
    );
    p.write(
        ".stagecraft/types/mine.luau",
        "-- the user's own file, never touched\n",
    );
    std::fs::remove_file(p.path(".stagecraft/types/json.luau")).expect("remove");
    p.run(&["types", "--check"]).code(1).stdout_is(
        "differs .stagecraft/types/fs.luau\nmissing .stagecraft/types/json.luau\n\
         stale .stagecraft/types/gone.luau\n3 file(s) out of date; run `stagecraft types` to update them\n",
    );
    p.run(&["types"]).ok().stdout_is(
        "updated .stagecraft/types/fs.luau\ncreated .stagecraft/types/json.luau\n\
         removed .stagecraft/types/gone.luau\n3 file(s) changed\n",
    );
    assert!(!p.path(".stagecraft/types/gone.luau").exists());
    assert_eq!(
        p.read(".stagecraft/types/mine.luau"),
        "-- the user's own file, never touched\n"
    );
    p.run(&["types", "--check"]).ok();
}

#[test]
fn types_merges_an_existing_luaurc_and_refuses_a_broken_one() {
    let p = Project::new().file(
        ".luaurc",
        r#"{"languageMode": "nonstrict", "lint": {"*": true}, "aliases": {"Lib": "./shared", "pkg": "./Packages"}}"#,
    );
    p.run(&["types"]).ok().stdout_has(
        "updated .luaurc\n  added aliases.stagecraft = \"./.stagecraft/types\"\n  \
         kept your languageMode \"nonstrict\" (stagecraft suggests \"strict\")\n  \
         kept your aliases.Lib = \"./shared\" (stagecraft types would set \"./.stagecraft/lib\")\n",
    );
    let v: serde_json::Value = serde_json::from_str(&p.read(".luaurc")).expect("json");
    assert_eq!(
        v,
        serde_json::json!({
            "languageMode": "nonstrict",
            "lint": { "*": true },
            "aliases": { "Lib": "./shared", "pkg": "./Packages", "stagecraft": "./.stagecraft/types" }
        })
    );
    // Nothing more to add: the notes are repeated, nothing is written.
    p.run(&["types"])
        .ok()
        .stdout_has("kept .luaurc\n")
        .stdout_has("nothing changed:");

    // A broken .luaurc: the error names file, line and column; nothing at all is written.
    let q = Project::new().file(".luaurc", "{\n  \"languageMode\": \"strict\",\n}\n");
    q.run(&["types"])
        .code(2)
        .stderr_has(".luaurc:3:1: not valid JSON")
        .stderr_has("fix the file");
    assert!(!q.path(".stagecraft/types").exists());

    // --dir outside the project is refused.
    Project::new()
        .run(&["types", "--dir", "../elsewhere"])
        .code(2)
        .stderr_has("must be inside the project");
}

#[test]
fn the_editor_cast_form_runs_and_types_has_help() {
    // The type annotation that gives editors the module's type is erased at compile time: the
    // runtime only evaluates `require("stagecraft/exec")`.
    Project::new()
        .script(
            "local exec = require(\"stagecraft/exec\") :: typeof(require(\"@stagecraft/exec\"))\n\
             print(type(exec.run))\n",
            &[],
        )
        .ok()
        .stdout_is("function\n");
    Project::new()
        .run(&["types", "--help"])
        .ok()
        .stdout_has("--check")
        .stdout_has("--docs <DIR>")
        .stdout_has("require(\"@stagecraft/exec\")");
    // The editor's spelling is the same module at run time, loaded once.
    Project::new()
        .script(
            "local a = require(\"@stagecraft/json\")\n\
             print(a == require(\"stagecraft/json\"), a.encode({1}))\n\
             print(pcall(require, \"@stagecraft/nope\"))\n",
            &[],
        )
        .ok()
        .stdout_has("true\t[1]\n")
        .stdout_has("false\t");
    Project::new().run(&["--help"]).ok().stdout_has("types ");
}
