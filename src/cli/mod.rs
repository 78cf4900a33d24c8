//! Command-line definitions. No business logic here: each subcommand calls into the engine.

mod commands;
mod ledger_cmd;
mod lock_cmd;
mod recipe_cmd;
mod replay_cmd;
mod run_cmd;
mod types_cmd;

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::engine::Settings;
use crate::error::{Error, exit};

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    the script failed (error raised, syntax error)
  2    usage or configuration error
  3    permission denied (a capability was missing)
  4    a limit was exceeded (CPU, memory, wall time)
  5    replay diverged from the recording
  6    ledger verification failed
  7    the ledger could not be read or written
  130  interrupted (SIGINT/SIGTERM)";

#[derive(Parser, Debug)]
#[command(
    name = "stagecraft",
    version,
    about = "Scriptable, recorded, replayable automation for multi-service apps on your own machines",
    after_help = EXIT_CODES,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a Luau script in the sandbox, recording every primitive call in the ledger.
    #[command(after_help = RUN_HELP)]
    Run(run_cmd::RunArgs),
    /// Re-execute a recorded run against its recorded results (no live calls), or re-run it live.
    #[command(after_help = REPLAY_HELP)]
    Replay(replay_cmd::ReplayArgs),
    /// Inspect and verify the ledger.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCommand),
    /// Deploy locks on hosts: who holds one, and breaking a stale one.
    #[command(subcommand)]
    Lock(lock_cmd::LockCommand),
    /// Write Luau type definitions and a .luaurc for editors (luau-lsp), or the API docs.
    #[command(after_help = types_cmd::TYPES_HELP)]
    Types(types_cmd::TypesArgs),
    /// Recipe packages: list, show, add, remove and apply them.
    #[command(subcommand)]
    Recipe(recipe_cmd::RecipeCommand),
    /// List the modules scripts can require, with their stability.
    Modules {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

const RUN_HELP: &str = "\
The script receives one table as `...`: positional args in its array part, key=value args as
fields. Capabilities come from `permissions:` in stagecraft.yml plus --allow, e.g.
  stagecraft run deploy.luau --allow exec:git --allow net:api.github.com env=prod
Capabilities: exec[:PROGRAM] fs-write net[:HOST] secrets[:NAME] docker ssh[:HOST]
              digitalocean github tailscale";

const REPLAY_HELP: &str = "\
RUN is a run id (a unique prefix is enough) or `last`. Without --live nothing real happens: every
primitive returns its recorded result and the first divergence is reported (exit code 5).";

/// Options shared by commands that run scripts.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Grant a capability (repeatable): exec[:PROGRAM], fs-write, net[:HOST], secrets[:NAME], ...
    #[arg(long = "allow", value_name = "CAP[:SCOPE]")]
    pub allow: Vec<String>,
    /// Grant every capability.
    #[arg(long)]
    pub allow_all: bool,
    /// Script CPU time limit in seconds (0 = none).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub cpu_limit: f64,
    /// Memory limit of the Luau state in MB.
    #[arg(long, value_name = "MB", default_value_t = 512)]
    pub memory_limit: u64,
    /// Wall-clock limit in seconds (default: none).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// What every command that runs a script takes: grants, limits, the ledger and `--json`.
#[derive(Args, Debug)]
pub struct RunOptions {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub ledger: LedgerArg,
    /// Print the outcome as JSON on stdout (script output goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Where the ledger lives.
#[derive(Args, Debug, Clone)]
pub struct LedgerArg {
    /// Ledger database (default: .stagecraft/ledger.db in the project root).
    #[arg(long, value_name = "PATH", env = "STAGECRAFT_LEDGER")]
    pub ledger: Option<PathBuf>,
}

impl LimitArgs {
    pub fn settings(&self, ledger: &LedgerArg, json: bool) -> Result<Settings, Error> {
        if self.cpu_limit < 0.0 || !self.cpu_limit.is_finite() {
            return Err(Error::usage(
                "--cpu-limit must be a non-negative number of seconds",
            ));
        }
        if self.memory_limit < 1 {
            return Err(Error::usage("--memory-limit must be at least 1 MB"));
        }
        if let Some(t) = self.timeout
            && !(t > 0.0 && t.is_finite())
        {
            return Err(Error::usage(
                "--timeout must be a positive number of seconds",
            ));
        }
        Ok(Settings {
            allow: self.allow.clone(),
            allow_all: self.allow_all,
            cpu_limit: self.cpu_limit,
            memory_limit_mb: self.memory_limit,
            timeout: self.timeout,
            ledger: ledger.ledger.clone(),
            json,
        })
    }
}

/// What the command line asks for: a built-in command, or a team command and its arguments.
enum Parsed {
    Builtin(Cli),
    Team(String, clap::ArgMatches),
}

pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    init_tracing();
    let argv: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let base = Cli::command();
    let builtins = commands::builtin_names(&base);
    let first = argv.get(1).and_then(|a| a.to_str()).unwrap_or("");
    // Team commands are read only when the command line may name one (or asks for help), so a
    // built-in command pays nothing for them.
    let team = if first != "help" && builtins.iter().any(|b| b == first) {
        commands::warn_if_shadowed(first, &builtins);
        None
    } else {
        let team = commands::discover(&builtins);
        // A broken file standing for the word typed names its problem (`help` and options are
        // never a team command's name).
        if first != "help"
            && !first.starts_with('-')
            && let Some(e) = team.problem(first)
        {
            eprintln!("{e}");
            return e.exit_code();
        }
        Some(team)
    };
    let cmd = match &team {
        Some(t) => t.augment(base, EXIT_CODES, &argv),
        None => base,
    };
    let parsed = cmd
        .try_get_matches_from(&argv)
        .and_then(|m| match (&team, m.subcommand()) {
            (Some(t), Some((name, sub))) if t.is_team_command(name) => {
                Ok(Parsed::Team(name.to_string(), sub.clone()))
            }
            _ => Cli::from_arg_matches(&m).map(Parsed::Builtin),
        });
    let cli = match parsed {
        Ok(Parsed::Builtin(c)) => c,
        Ok(Parsed::Team(name, sub)) => {
            let rest = argv
                .iter()
                .skip(2)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let team = team.unwrap_or_else(|| commands::discover(&builtins));
            return finish(team.run(&name, &sub, rest));
        }
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => exit::OK,
                _ => exit::USAGE,
            };
        }
    };
    // Listing commands end quietly when their reader goes away (`stagecraft ledger ls | head`).
    // Runs keep ignoring SIGPIPE: a closed stdout must not kill a run half-way.
    if matches!(cli.command, Command::Ledger(_)) {
        // SAFETY: restoring the default disposition of SIGPIPE before any output.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    finish(match cli.command {
        Command::Run(a) => run_cmd::run(a),
        Command::Replay(a) => replay_cmd::run(a),
        Command::Lock(c) => lock_cmd::run(c),
        Command::Ledger(c) => ledger_cmd::run(c),
        Command::Types(a) => types_cmd::run(a),
        Command::Recipe(c) => recipe_cmd::run(c),
        Command::Modules { json } => modules(json),
    })
}

/// A command's exit code, printing its error first.
fn finish(result: Result<i32, Error>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// Print JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

pub fn cwd() -> Result<PathBuf, Error> {
    std::env::current_dir()
        .map_err(|e| Error::usage(format!("cannot read the current directory: {e}")))
}

/// `STAGECRAFT_TRACE=debug` (any tracing filter) prints the engine's own diagnostics on stderr:
/// ledger batches, run start and end, replay matching. Only ids, counts and timings are traced,
/// never arguments or results, so nothing secret can reach it.
fn init_tracing() {
    let Ok(filter) = std::env::var("STAGECRAFT_TRACE") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// `stagecraft modules`: the Rust primitives (from the one registry) and the embedded stdlib.
fn modules(json: bool) -> Result<i32, Error> {
    let rows = crate::types::requirable_modules();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, s, a)| serde_json::json!({ "module": n, "stability": s, "about": a }))
            .collect();
        print_json(&v);
    } else {
        let width = rows.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
        for (n, s, a) in rows {
            println!("{n:<width$} {s:<13} {a}");
        }
    }
    Ok(exit::OK)
}
