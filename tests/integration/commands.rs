//! Team commands (`.stagecraft/commands/NAME.luau`) and shared helpers (`.stagecraft/lib/`).

use std::path::Path;

use crate::harness::Project;

const GREET: &str = r#"local command = require("stagecraft/command")
return command{
  name = "greet",
  about = "Say hello to someone",
  args = {
    { name = "who", positional = true, required = true, help = "Who to greet" },
    { name = "times", type = "integer", default = 1, help = "How many times" },
    { name = "shout", flag = true, help = "Upper-case the greeting" },
  },
  run = function(args)
    for _ = 1, args.times do
      local s = `hello, {args.who}`
      print(if args.shout then string.upper(s) else s)
    end
  end,
}
"#;

const DEPLOY_DOCS: &str = r#"local command = require("stagecraft/command")
return command{
  name = "deploy-docs",
  about = "Build the docs and publish them",
  run = function() print("deployed") end,
}
"#;

/// Every kind of argument, printed back with its Luau type.
const SHOW_ARGS: &str = r#"local command = require("stagecraft/command")
local function show(v)
  if type(v) == "table" then
    return `[{table.concat(v, ",")}]`
  end
  return `{typeof(v)}:{tostring(v)}`
end
return command{
  name = "show-args",
  about = "Print the parsed arguments",
  args = {
    { name = "name", positional = true, required = true },
    { name = "rest", positional = true, list = true },
    { name = "count", type = "integer", default = 1 },
    { name = "ratio", type = "number" },
    { name = "enabled", type = "boolean" },
    { name = "tag", list = true },
    { name = "dry_run", flag = true },
    { name = "mode", default = "fast" },
  },
  run = function(args)
    for _, k in { "name", "rest", "count", "ratio", "enabled", "tag", "dry_run", "mode" } do
      print(k, show(args[k]))
    end
  end,
}
"#;

fn with_commands(files: &[(&str, &str)]) -> Project {
    let p = Project::new();
    for (name, src) in files {
        p.write(&format!(".stagecraft/commands/{name}.luau"), src);
    }
    p
}

#[test]
fn help_lists_team_commands_under_their_own_heading() {
    let p = with_commands(&[("greet", GREET), ("deploy-docs", DEPLOY_DOCS)]);
    let out = p.run(&["--help"]).ok();
    let out = out.stdout_has("  run      ").stdout_has(
        "Team commands (.stagecraft/commands):\n  \
             deploy-docs  Build the docs and publish them\n  \
             greet        Say hello to someone\n\nExit codes:\n",
    );
    // Not listed among the built-ins.
    let commands_block = out.stdout.split("Options:").next().unwrap_or_default();
    assert!(!commands_block.contains("greet"), "{}", out.stdout);
    // Without team commands the help has no such section.
    Project::new()
        .run(&["--help"])
        .ok()
        .stdout_lacks("Team commands");
}

#[test]
fn per_command_help_is_real_clap_help() {
    let p = with_commands(&[("greet", GREET)]);
    let help = p
        .run(&["greet", "--help"])
        .ok()
        .stdout_is(
            "\
Say hello to someone

Usage: stagecraft greet [OPTIONS] <who>

Arguments:
  <who>  Who to greet

Options:
      --times <TIMES>  How many times [default: 1]
      --shout          Upper-case the greeting
  -h, --help           Print help

Run options:
      --allow <CAP[:SCOPE]>  Grant a capability (repeatable): exec[:PROGRAM], fs-write, net[:HOST],
                             secrets[:NAME], ...
      --allow-all            Grant every capability
      --cpu-limit <SECONDS>  Script CPU time limit in seconds (0 = none) [default: 30]
      --memory-limit <MB>    Memory limit of the Luau state in MB [default: 512]
      --timeout <SECONDS>    Wall-clock limit in seconds (default: none)
      --ledger <PATH>        Ledger database (default: .stagecraft/ledger.db in the project root)
                             [env: STAGECRAFT_LEDGER=]
      --json                 Print the outcome as JSON on stdout (script output goes to stderr)

A team command, defined in .stagecraft/commands/greet.luau. Capabilities come from `permissions:` in
stagecraft.yml plus --allow. Every run is recorded: `stagecraft ledger ls`, `stagecraft replay
last`.
",
        )
        .stdout;
    // `stagecraft help greet` is the same help.
    p.run(&["help", "greet"]).ok().stdout_is(&help);
}

#[test]
fn typed_arguments_defaults_and_lists_reach_run() {
    let p = with_commands(&[("show-args", SHOW_ARGS)]);
    p.run(&[
        "show-args",
        "bob",
        "x",
        "y",
        "--count",
        "-3",
        "--ratio",
        "0.5",
        "--enabled",
        "false",
        "--tag",
        "a",
        "--tag",
        "b c",
        "--dry-run",
        "--mode=slow",
    ])
    .ok()
    .stdout_is(
        "name\tstring:bob\nrest\t[x,y]\ncount\tnumber:-3\nratio\tnumber:0.5\n\
         enabled\tboolean:false\ntag\t[a,b c]\ndry_run\tboolean:true\nmode\tstring:slow\n",
    );
    // Defaults: integer and string defaults, empty lists, false flags, absent options are nil.
    p.run(&["show-args", "bob"]).ok().stdout_is(
        "name\tstring:bob\nrest\t[]\ncount\tnumber:1\nratio\tnil:nil\n\
         enabled\tnil:nil\ntag\t[]\ndry_run\tboolean:false\nmode\tstring:fast\n",
    );
}

#[test]
fn argument_errors_look_like_the_built_in_ones_and_exit_2() {
    let p = with_commands(&[("greet", GREET), ("show-args", SHOW_ARGS)]);
    p.run(&["greet"]).code(2).stderr_has(
        "error: the following required arguments were not provided:\n  <who>\n\n\
         Usage: stagecraft greet <who>",
    );
    p.run(&["greet", "ann", "--times", "x"]).code(2).stderr_has(
        "error: invalid value 'x' for '--times <TIMES>': expected a whole number, e.g. 3",
    );
    p.run(&["show-args", "a", "--ratio", "nan"])
        .code(2)
        .stderr_has(
            "error: invalid value 'nan' for '--ratio <RATIO>': expected a number, e.g. 1.5",
        );
    p.run(&["show-args", "a", "--enabled", "maybe"])
        .code(2)
        .stderr_has("error: invalid value 'maybe' for '--enabled <ENABLED>'")
        .stderr_has("[possible values: true, false]");
    p.run(&["greet", "ann", "--bogus"])
        .code(2)
        .stderr_has("error: unexpected argument '--bogus' found");
    p.run(&["greet", "ann", "--cpu-limit=-1"])
        .code(2)
        .stderr_has("--cpu-limit must be a non-negative number of seconds");
    // Nothing ran, nothing was recorded.
    assert!(!p.ledger().exists());
    // And the command works with good arguments.
    p.run(&["greet", "ann", "--times", "2", "--shout"])
        .ok()
        .stdout_is("HELLO, ANN\nHELLO, ANN\n");
}

const STAMP: &str = r#"local command = require("stagecraft/command")
local exec = require("stagecraft/exec")
return command{
  name = "stamp",
  about = "Append a line to stamps.txt",
  args = { { name = "label", required = true } },
  run = function(args)
    local r = exec.run({ "sh", "-c", `echo {args.label} >> stamps.txt; echo done` })
    print(r.stdout)
    return { label = args.label }
  end,
}
"#;

#[test]
fn a_command_run_is_recorded_and_replays_without_live_calls() {
    let p = with_commands(&[("stamp", STAMP)]);
    p.write("stagecraft.yml", "name: test\npermissions:\n  - exec:sh\n");
    p.run(&["stamp", "--label", "first one"])
        .ok()
        .stdout_is("done\n\n");
    assert_eq!(p.read("stamps.txt"), "first one\n");
    p.run(&["ledger", "ls"])
        .ok()
        .stdout_has("stagecraft stamp --label 'first one'");
    p.run(&["ledger", "show", "last"])
        .ok()
        .stdout_has("script    .stagecraft/commands/stamp.luau (sha256 ")
        .stdout_has("command   stagecraft stamp --label 'first one'\n")
        .stdout_has("args      [\"--label\",\"first one\"]\n")
        .stdout_has("exec.run");
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("1 of 1 recorded calls matched, no divergence (recorded status: ok)");
    // The replay ran nothing: the file still has one line.
    assert_eq!(p.read("stamps.txt"), "first one\n");
    // A changed command file replays from the recording (the recorded source is used).
    p.write(
        ".stagecraft/commands/stamp.luau",
        &STAMP.replace("echo done", "echo changed"),
    );
    p.run(&["replay", "last"]).ok().stderr_has("no divergence");
    // The changed file itself, replayed against the recording, departs from it.
    p.run(&[
        "replay",
        "last",
        "--script",
        ".stagecraft/commands/stamp.luau",
    ])
    .code(5)
    .stderr_has("DIVERGED after 0 matching calls");
    // A live re-run records a new run of the same command with the same arguments.
    p.run(&["replay", "last", "--live"]).ok();
    assert_eq!(p.read("stamps.txt"), "first one\nfirst one\n");
    let runs = p.run(&["ledger", "ls", "--json"]).ok().json();
    assert_eq!(runs[0]["meta"]["command"]["name"], "stamp");
    assert_eq!(runs[0]["meta"]["command"]["args"]["label"], "first one");
}

#[test]
fn capabilities_come_from_the_project_and_allow() {
    let p = with_commands(&[("stamp", STAMP)]);
    p.run(&["stamp", "--label", "x"])
        .code(3)
        .stderr_has("permission denied: exec.run needs capability exec:sh")
        .stderr_has(".stagecraft/commands/stamp.luau:8:");
    assert!(!p.path("stamps.txt").exists());
    p.run(&["stamp", "--label", "x", "--allow", "exec:sh"]).ok();
    p.write("stagecraft.yml", "name: test\npermissions:\n  - exec:sh\n");
    p.run(&["stamp", "--label", "y"]).ok();
    assert_eq!(p.read("stamps.txt"), "x\ny\n");
    let out = p.run(&["stamp", "--label", "z", "--json"]).ok();
    assert_eq!(out.json()["result"]["label"], "z");
}

#[test]
fn broken_command_files_are_named_by_file_and_line_and_break_nothing_else() {
    let p = with_commands(&[
        ("greet", GREET),
        (
            "broken",
            "local command = require(\"stagecraft/command\")\n\nreturn command{ name = \n",
        ),
        (
            "run",
            "local command = require(\"stagecraft/command\")\nreturn command{ name = \"run\", about = \"mine\", run = function() end }\n",
        ),
        (
            "typo",
            "local command = require(\"stagecraft/command\")\n\n\nreturn command{ name = \"typo\", abuot = \"x\", run = function() end }\n",
        ),
        (
            "other-name",
            "local command = require(\"stagecraft/command\")\nreturn command{\n  name = \"another\", about = \"x\", run = function() end }\n",
        ),
        ("fails", "local x = nil\nreturn x.y\n"),
        ("plain", "return { name = \"plain\" }\n"),
        ("Bad_Name", "return 1\n"),
        (
            "help",
            "local command = require(\"stagecraft/command\")\nreturn command{ name = \"help\", about = \"x\", run = function() end }\n",
        ),
    ]);
    // A file whose name is an option is not a command either.
    p.write(".stagecraft/commands/--help.luau", "return 1\n");
    p.write(".stagecraft/commands/notes.txt", "not a command");
    let help = p.run(&["--help"]).ok();
    let help = help
        .stdout_has("  greet  Say hello to someone\n")
        .stdout_has(
            "  warning: .stagecraft/commands/Bad_Name.luau: 'Bad_Name' is not a valid command name",
        )
        .stdout_has("  warning: .stagecraft/commands/broken.luau:4: ")
        .stdout_has("  warning: .stagecraft/commands/fails.luau:2: attempt to index nil with 'y'\n")
        .stdout_has(
            "  warning: .stagecraft/commands/other-name.luau:2: command name 'another' does not \
             match the file name: name it 'other-name' or rename the file to another.luau\n",
        )
        .stdout_has(
            "  warning: .stagecraft/commands/plain.luau: must end with `return command{ ... }`",
        )
        .stdout_has(
            "  warning: .stagecraft/commands/run.luau:2: command 'run' clashes with the built-in \
             `stagecraft run`: rename the file and its name\n",
        )
        .stdout_has(
            "  warning: .stagecraft/commands/typo.luau:4: command: unknown field 'abuot' (did you \
             mean 'about'?)\n",
        );
    assert_eq!(
        help.stdout.matches("warning:").count(),
        9,
        "{}",
        help.stdout
    );
    let help = help.stdout_has(
        "  warning: .stagecraft/commands/help.luau:2: command 'help' clashes with the built-in \
         `stagecraft help`: rename the file and its name\n",
    );
    p.run(&["help"]).ok().stdout_is(&help.stdout);
    // The good command and the built-ins still work.
    p.run(&["greet", "ann"]).ok().stdout_is("hello, ann\n");
    p.write("hi.luau", "print('built-in run')");
    p.run(&["run", "hi.luau"])
        .ok()
        .stdout_is("built-in run\n")
        .stderr_has(
            "warning: .stagecraft/commands/run.luau:2: command 'run' clashes with the built-in \
             `stagecraft run`: rename the file and its name (running the built-in)\n",
        );
    p.run(&["ledger", "ls"]).ok().stderr_lacks("warning");
    // Invoking a broken one names the file and line, exit 2, nothing recorded.
    p.run(&["broken"])
        .code(2)
        .stderr_has("error: .stagecraft/commands/broken.luau:4: ")
        .stderr_has("hint: fix the file in .stagecraft/commands/");
    p.run(&["typo", "--help"])
        .code(2)
        .stderr_has("error: .stagecraft/commands/typo.luau:4: command: unknown field 'abuot' (did you mean 'about'?)");
    p.run(&["fails"])
        .code(2)
        .stderr_has("error: .stagecraft/commands/fails.luau:2: attempt to index nil with 'y'");
    // An unknown command is clap's error.
    p.run(&["nope"])
        .code(2)
        .stderr_has("error: unrecognized subcommand 'nope'");
}

#[test]
fn bad_declarations_are_refused_with_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "args = { { name = \"x\", typ = \"string\" } }",
            "command: args[1] (x): unknown field 'typ' (did you mean 'type'?)",
        ),
        (
            "args = { { name = \"x\", type = \"float\" } }",
            "command: args[1] (x): unknown variant `float`, expected one of `string`, `number`, `integer`, `boolean`",
        ),
        (
            "args = { { name = \"x\", flag = true, type = \"string\" } }",
            "command: args[1] (x): flag=true is a boolean switch, but type is 'string'",
        ),
        (
            "args = { { name = \"x\", required = true, default = \"a\" } }",
            "command: args[1] (x): required=true and a default exclude each other",
        ),
        (
            "args = { { name = \"x\", type = \"integer\", default = 1.5 } }",
            "command: args[1] (x): default: 1.5 is not a integer",
        ),
        (
            "args = { { name = \"timeout\" } }",
            "command: args[1] (timeout): the name 'timeout' is reserved (every command has --timeout); choose another",
        ),
        (
            "args = { { name = \"x\" }, { name = \"x\" } }",
            "command: args[2] (x): the name 'x' is used twice",
        ),
        (
            "args = { { name = \"Bad\" } }",
            "command: args[1] (Bad): name 'Bad' is not valid",
        ),
        (
            "args = { { name = \"a\", positional = true }, { name = \"b\", positional = true, required = true } }",
            "command: required positional 'b' comes after the optional 'a'",
        ),
        (
            "args = { { name = \"a\", positional = true, list = true }, { name = \"b\", positional = true } }",
            "command: positional 'a' is a list, so it must be the last positional argument",
        ),
    ];
    for (args, want) in cases {
        let p = with_commands(&[(
            "c",
            &format!(
                "local command = require(\"stagecraft/command\")\nreturn command{{ name = \"c\", about = \"x\",\n  {args},\n  run = function() end }}\n"
            ),
        )]);
        p.run(&["c"])
            .code(2)
            .stderr_has(&format!("error: .stagecraft/commands/c.luau:2: {want}"));
    }
    let p = with_commands(&[(
        "c",
        "local command = require(\"stagecraft/command\")\nreturn command{ name = \"c\", about = \"x\" }\n",
    )]);
    p.run(&["c"]).code(2).stderr_has(
        "error: .stagecraft/commands/c.luau:2: command: 'run' is missing: a function receiving the parsed arguments",
    );
}

#[test]
fn reading_the_command_list_has_no_effects_and_is_bounded() {
    let p = with_commands(&[
        ("greet", GREET),
        (
            "effect",
            "local exec = require(\"stagecraft/exec\")\nexec.run({ \"sh\", \"-c\", \"touch pwned\" })\nreturn nil\n",
        ),
        ("spin", "while true do pcall(function() end) end\n"),
        ("hog", "local s = 'x'\nwhile true do s = s .. s end\n"),
    ]);
    let start = std::time::Instant::now();
    p.run(&["--help"])
        .ok()
        .stdout_has(
            "warning: .stagecraft/commands/effect.luau:2: stagecraft/exec.run cannot run while \
             stagecraft reads the command list: call it inside run()\n",
        )
        .stdout_has("warning: .stagecraft/commands/spin.luau:1: took more than 500 ms of CPU time")
        .stdout_has(
            "warning: .stagecraft/commands/hog.luau: used more than 32 MB of memory to declare \
             the command\n",
        )
        .stdout_has("  greet  Say hello to someone\n");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert!(!p.path("pwned").exists());
    assert!(
        !p.ledger().exists(),
        "reading commands must not record anything"
    );
}

#[test]
fn lib_helpers_load_in_commands_and_scripts_and_are_recorded() {
    let p = with_commands(&[(
        "hello",
        r#"local command = require("stagecraft/command")
local text = require("@lib/text")
return command{
  name = "hello",
  about = text.about,
  run = function() print(text.shout("hi")); print(require("@lib/nested/deep").value) end,
}
"#,
    )]);
    p.write(
        ".stagecraft/lib/text.luau",
        "local util = require(\"./util\")\nreturn { about = \"Say \" .. util.word, shout = string.upper }\n",
    );
    p.write(".stagecraft/lib/util.luau", "return { word = \"hi\" }\n");
    p.write(
        ".stagecraft/lib/nested/deep.luau",
        "return { value = 42 }\n",
    );
    p.run(&["--help"]).ok().stdout_has("  hello  Say hi\n");
    p.run(&["hello"]).ok().stdout_is("HI\n42\n");
    p.run(&["ledger", "show", "last"])
        .ok()
        .stdout_has(".stagecraft/lib/text.luau")
        .stdout_has(".stagecraft/lib/util.luau")
        .stdout_has(".stagecraft/lib/nested/deep.luau");
    // A changed helper does not change the replay: the recorded module source is used.
    p.write(".stagecraft/lib/util.luau", "error('changed')\n");
    p.run(&["replay", "last"]).ok().stderr_has("no divergence");
    // Scripts can use the helpers too.
    p.write(".stagecraft/lib/util.luau", "return { word = \"hey\" }\n");
    p.script("print(require(\"@lib/text\").about)", &[])
        .ok()
        .stdout_is("Say hey\n");
    // So can installed recipe packages.
    p.write(
        ".stagecraft/recipes/pkg/init.luau",
        "return { about = require(\"@lib/text\").about .. \" (from a recipe)\" }\n",
    );
    p.script("print(require(\"pkg\").about)", &[])
        .ok()
        .stdout_is("Say hey (from a recipe)\n");
    p.script("require(\"@lib/missing\")", &[])
        .code(1)
        .stderr_has("require: no module '@lib/missing' (looked for .stagecraft/lib/missing.luau, .lua and /init.luau)");
}

#[test]
fn lib_escapes_are_refused() {
    let p = Project::new();
    p.write(".stagecraft/lib/ok.luau", "return 1\n");
    p.write(".env", "SECRET=s3cr3t-value\n");
    p.write("outside.luau", "return 'outside lib'\n");
    std::fs::create_dir_all(p.path(".stagecraft/commands")).expect("dir");
    p.write(".stagecraft/commands/x.luau", "return 'a command file'\n");
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, p.path(&format!(".stagecraft/lib/{name}")))
            .expect("symlink");
    };
    link(&p.path(".env"), "env.luau");
    link(Path::new("/etc/hostname"), "host.luau");
    link(&p.path("outside.luau"), "inside.luau");
    link(&p.path(".stagecraft/ledger.db"), "db.luau");
    let denied: &[(&str, &str)] = &[
        (
            "@lib/../ledger",
            "is not a plain module name inside .stagecraft/lib/",
        ),
        (
            "@lib/../../.env",
            "is not a plain module name inside .stagecraft/lib/",
        ),
        (
            "@lib/./ok",
            "is not a plain module name inside .stagecraft/lib/",
        ),
        (
            "@lib//ok",
            "is not a plain module name inside .stagecraft/lib/",
        ),
        (
            "@lib/ok.luau",
            "is not a plain module name inside .stagecraft/lib/",
        ),
        (
            "@lib/env",
            "resolves to .env (secrets and the ledger are not loadable)",
        ),
        (
            "@lib/host",
            "resolves to /etc/hostname, outside the project directory (a symlink?)",
        ),
        (
            "@lib/inside",
            "resolves to outside.luau, outside .stagecraft/lib (a symlink?)",
        ),
        ("./.stagecraft/commands/x", "is not a module file"),
        ("./.stagecraft/lib/../ledger.db", "is not a module file"),
    ];
    for (name, why) in denied {
        p.script(&format!("return require(\"{name}\")"), &[])
            .code(3)
            .stderr_has(&format!("permission denied: require: '{name}' {why}"))
            .lacks("s3cr3t-value");
    }
    // The ledger file exists by now: a symlink to it is refused too.
    p.script("return require(\"@lib/db\")", &[])
        .code(3)
        .stderr_has("(secrets and the ledger are not loadable)");
    p.script("return require(\"@other/ok\")", &[])
        .code(1)
        .stderr_has("require: unknown alias '@other' in '@other/ok'")
        .stderr_has("hint: the only alias is @lib, for the project's .stagecraft/lib/");
    p.script("return require(\"@lib\")", &[])
        .code(1)
        .stderr_has("write @lib/NAME for .stagecraft/lib/NAME.luau");
    p.script("print(require(\"@lib/ok\"))", &[])
        .ok()
        .stdout_is("1\n");
}

/// Copy a folder, `.stagecraft/` included but not its ledger.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "ledger.db" || name == "runs" || name.to_string_lossy().starts_with("ledger.") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

#[test]
fn the_example_command_runs_and_replays() {
    let p = Project::bare();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/commands"),
        p.root(),
    );
    p.run(&["--help"]).ok().stdout_has(
        "Team commands (.stagecraft/commands):\n  bump-version  Set the project version and add a changelog entry\n",
    );
    p.run(&["bump-version", "--help"])
        .ok()
        .stdout_has("Usage: stagecraft bump-version [OPTIONS] <version>");
    p.run(&["bump-version", "1.4.0", "--dry-run"])
        .ok()
        .stdout_is("VERSION: 1.3.2 -> 1.4.0\ndry run: nothing written\n");
    assert_eq!(p.read("VERSION"), "1.3.2\n");
    p.run(&[
        "bump-version",
        "1.4.0",
        "--note",
        "faster deploys",
        "--note",
        "fix login",
    ])
    .ok()
    .stdout_is("VERSION: 1.3.2 -> 1.4.0\n");
    assert_eq!(p.read("VERSION"), "1.4.0\n");
    assert_eq!(
        p.read("CHANGELOG.md"),
        "## 1.4.0\n- faster deploys\n- fix login\n\n"
    );
    p.run(&["replay", "last"]).ok().stderr_has("no divergence");
    p.run(&["bump-version", "1.2.0"])
        .code(1)
        .stderr_has("1.2.0 is not newer than 1.4.0");
    p.run(&["bump-version", "one"])
        .code(1)
        .stderr_has("'one' is not a version");
}
