//! Command-line definitions. No business logic here: each subcommand calls into the engine.

mod ledger_cmd;
mod lock_cmd;
mod recipe_cmd;
mod replay_cmd;
mod run_cmd;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    init_tracing();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
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
    let result = match cli.command {
        Command::Run(a) => run_cmd::run(a),
        Command::Replay(a) => replay_cmd::run(a),
        Command::Lock(c) => lock_cmd::run(c),
        Command::Ledger(c) => ledger_cmd::run(c),
        Command::Recipe(c) => recipe_cmd::run(c),
        Command::Modules { json } => modules(json),
    };
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
    let mut rows: Vec<(String, &'static str, String)> = crate::api::MODULES
        .iter()
        .map(|m| {
            (
                format!("stagecraft/{}", m.name),
                m.stability.as_str(),
                m.about.to_string(),
            )
        })
        .collect();
    for f in crate::runtime::loader::STDLIB
        .get_dir("stagecraft")
        .map(|d| d.files().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let Some(stem) = f.path().file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        // The first comment line of a Luau module is its one-line description.
        let about = f
            .contents_utf8()
            .and_then(|t| t.lines().find(|l| l.starts_with("-- ")))
            .map(|l| {
                let l = l.trim_start_matches("-- ");
                let prefix = format!("stagecraft/{stem}: ");
                l.strip_prefix(prefix.as_str()).unwrap_or(l).to_string()
            })
            .unwrap_or_default();
        // A `-- stability: experimental` line marks a Luau module that is not stable yet.
        let experimental = f
            .contents_utf8()
            .is_some_and(|t| t.lines().any(|l| l.trim() == "-- stability: experimental"));
        let stability = if experimental {
            "experimental"
        } else {
            "stable"
        };
        rows.push((format!("stagecraft/{stem}"), stability, about));
    }
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
