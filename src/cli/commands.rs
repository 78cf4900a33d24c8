//! Team commands on the command line: each `.stagecraft/commands/NAME.luau` becomes
//! `stagecraft NAME`, a clap subcommand built from its descriptor (so `--help` and argument
//! errors are clap's), listed in `stagecraft --help` under its own heading, and run as a
//! recorded run with the project's capabilities.

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use super::{RunOptions, cwd};
use crate::api::command::{ArgSpec, ArgType, CommandSpec, value_text};
use crate::commands::{self, COMMANDS_DIR, Discovered, TeamCommand};
use crate::engine::{self, CommandCall};
use crate::error::Error;
use crate::project::Project;

/// The project and the team commands found in it.
pub struct Team {
    project: Result<Project, Error>,
    found: Discovered,
}

/// Names team commands may not take: the built-in subcommands, their aliases and `help`.
pub fn builtin_names(cli: &Command) -> Vec<String> {
    let mut names: Vec<String> = vec!["help".into()];
    for sub in cli.get_subcommands() {
        names.push(sub.get_name().to_string());
        names.extend(sub.get_all_aliases().map(str::to_string));
    }
    names
}

/// Find the project from the current directory and read its team commands.
pub fn discover(builtins: &[String]) -> Team {
    let names: Vec<&str> = builtins.iter().map(String::as_str).collect();
    let project = cwd().and_then(|d| Project::discover(&d));
    let started = std::time::Instant::now();
    let found = match &project {
        Ok(p) => commands::discover(&p.root, &names),
        Err(_) => Discovered::default(),
    };
    tracing::debug!(
        commands = found.commands.len(),
        problems = found.problems.len(),
        micros = started.elapsed().as_micros() as u64,
        "team commands read"
    );
    Team { project, found }
}

/// `stagecraft BUILTIN` while `.stagecraft/commands/BUILTIN.luau` exists: one warning line.
pub fn warn_if_shadowed(name: &str, builtins: &[String]) {
    let Ok(root) = cwd().and_then(|d| Project::discover(&d)).map(|p| p.root) else {
        return;
    };
    if let Some(path) = commands::file_for(&root, name) {
        let names: Vec<&str> = builtins.iter().map(String::as_str).collect();
        if let Err(p) = commands::read_command(&root, &path, &names) {
            eprintln!("warning: {p} (running the built-in)");
        }
    }
}

impl Team {
    /// A broken command file standing for `name`, as the error to report when it is invoked.
    pub fn problem(&self, name: &str) -> Option<Error> {
        if self.found.find(name).is_some() {
            return None;
        }
        self.found.problem(name).map(|p| {
            Error::usage(p.message.clone()).with_hint(format!(
                "fix the file in {COMMANDS_DIR}/; `stagecraft --help` lists the team commands \
                 and the problems of the others"
            ))
        })
    }

    pub fn is_team_command(&self, name: &str) -> bool {
        self.found.find(name).is_some()
    }

    /// The CLI with one (hidden) subcommand per team command, and the help section listing them.
    /// `argv` decides whether the top-level help is what may be shown: then it is not wrapped,
    /// so each warning stays on one line (clap's wrapping width is global to all commands).
    pub fn augment(
        &self,
        mut cli: Command,
        exit_codes: &'static str,
        argv: &[std::ffi::OsString],
    ) -> Command {
        for c in &self.found.commands {
            cli = cli.subcommand(subcommand(c).hide(true));
        }
        let word = |i: usize| argv.get(i).and_then(|a| a.to_str()).unwrap_or("");
        let names_team_command =
            self.is_team_command(word(1)) || (word(1) == "help" && self.is_team_command(word(2)));
        match self.help_section() {
            Some(section) if !names_team_command => cli
                .after_help(leak(format!("{section}\n{exit_codes}")))
                .term_width(0),
            Some(section) => cli.after_help(leak(format!("{section}\n{exit_codes}"))),
            None => cli,
        }
    }

    /// "Team commands (.stagecraft/commands):", one line per command, one warning per problem.
    fn help_section(&self) -> Option<String> {
        let mut lines: Vec<String> = Vec::new();
        let width = self
            .found
            .commands
            .iter()
            .map(|c| c.spec.name.len())
            .max()
            .unwrap_or(0);
        for c in &self.found.commands {
            lines.push(format!("  {:<width$}  {}", c.spec.name, c.spec.about));
        }
        for p in &self.found.problems {
            lines.push(format!("  warning: {p}"));
        }
        if let Err(e) = &self.project {
            lines.push(format!("  warning: team commands not read: {}", e.message));
        }
        if lines.is_empty() {
            return None;
        }
        Some(format!(
            "Team commands ({COMMANDS_DIR}):\n{}\n",
            lines.join("\n")
        ))
    }

    /// Run team command `name` with its parsed arguments; `argv` is what followed the name.
    pub fn run(self, name: &str, m: &ArgMatches, argv: Vec<String>) -> Result<i32, Error> {
        let project = self.project?;
        let Some(c) = self
            .found
            .commands
            .into_iter()
            .find(|c| c.spec.name == name)
        else {
            return Err(Error::usage(format!("no team command '{name}'")));
        };
        let opts = RunOptions::from_arg_matches(m).map_err(|e| Error::usage(e.to_string()))?;
        let settings = opts.limits.settings(&opts.ledger, opts.json)?;
        let args = typed_args(&c.spec, m);
        let script = engine::Script {
            chunk: c.file,
            source: c.source,
            args: argv,
            overlay: Default::default(),
            replay_of: None,
            command: Some(CommandCall {
                name: c.spec.name,
                args,
            }),
        };
        let outcome = engine::run_live(project, &settings, script)?;
        Ok(super::run_cmd::report(&outcome, opts.json))
    }
}

/// clap keeps `&'static str`s: the few strings of the team commands live as long as the process.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn subcommand(c: &TeamCommand) -> Command {
    let spec = &c.spec;
    let mut cmd = Command::new(leak(spec.name.clone()));
    for a in &spec.args {
        cmd = cmd.arg(arg(a));
    }
    // After the flattened run options, whose doc comments would otherwise set `about`.
    RunOptions::augment_args(cmd.next_help_heading("Run options"))
        .about(leak(spec.about.clone()))
        .after_help(leak(format!(
            "A team command, defined in {}. Capabilities come from `permissions:` in \
             stagecraft.yml plus --allow. Every run is recorded: `stagecraft ledger ls`, \
             `stagecraft replay last`.",
            c.file
        )))
}

fn arg(a: &ArgSpec) -> Arg {
    let mut arg = Arg::new(leak(a.name.clone()));
    if let Some(h) = &a.help {
        arg = arg.help(leak(h.clone()));
    }
    if a.flag {
        return arg.long(leak(a.long())).action(ArgAction::SetTrue);
    }
    if !a.positional {
        arg = arg
            .long(leak(a.long()))
            .value_name(leak(a.name.to_uppercase()));
    }
    arg = match a.ty {
        ArgType::String => arg.value_parser(clap::value_parser!(String)),
        ArgType::Integer => arg.value_parser(parse_integer).allow_negative_numbers(true),
        ArgType::Number => arg.value_parser(parse_number).allow_negative_numbers(true),
        ArgType::Boolean => arg.value_parser(clap::builder::BoolValueParser::new()),
    };
    arg = if a.list {
        let arg = arg.action(ArgAction::Append);
        if a.positional { arg.num_args(1..) } else { arg }
    } else {
        arg.action(ArgAction::Set)
    };
    if a.required {
        arg = arg.required(true);
    }
    match &a.default {
        Some(serde_json::Value::Array(items)) => {
            let values: Vec<&'static str> = items.iter().map(|v| leak(value_text(v))).collect();
            arg.default_values(values)
        }
        Some(v) => arg.default_value(leak(value_text(v))),
        None => arg,
    }
}

fn parse_integer(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .map_err(|_| "expected a whole number, e.g. 3".to_string())
}

fn parse_number(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err("expected a number, e.g. 1.5".to_string()),
    }
}

/// The parsed values as one JSON object, typed per the declaration: absent optional arguments
/// without a default are left out (nil in Luau), lists are arrays, flags are booleans.
fn typed_args(spec: &CommandSpec, m: &ArgMatches) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for a in &spec.args {
        let id = a.name.as_str();
        if a.flag {
            out.insert(a.name.clone(), m.get_flag(id).into());
            continue;
        }
        let values: Vec<serde_json::Value> = match a.ty {
            ArgType::String => many::<String>(m, id),
            ArgType::Integer => many::<i64>(m, id),
            ArgType::Number => many::<f64>(m, id),
            ArgType::Boolean => many::<bool>(m, id),
        };
        if a.list {
            out.insert(a.name.clone(), serde_json::Value::Array(values));
        } else if let Some(v) = values.into_iter().next() {
            out.insert(a.name.clone(), v);
        }
    }
    serde_json::Value::Object(out)
}

fn many<T>(m: &ArgMatches, id: &str) -> Vec<serde_json::Value>
where
    T: Clone + Send + Sync + 'static + Into<serde_json::Value>,
{
    m.get_many::<T>(id)
        .map(|vs| vs.cloned().map(Into::into).collect())
        .unwrap_or_default()
}
