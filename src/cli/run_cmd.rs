//! `stagecraft run FILE [ARG ...]`

use std::path::PathBuf;

use clap::Args;

use super::{RunOptions, cwd, print_json};
use crate::engine;
use crate::error::Error;
use crate::project::Project;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The script (.luau or .lua).
    pub file: PathBuf,
    /// Arguments for the script: positional, or key=value.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

pub fn run(a: RunArgs) -> Result<i32, Error> {
    let settings = a
        .options
        .limits
        .settings(&a.options.ledger, a.options.json)?;
    let project = Project::discover(&cwd()?)?;
    let script = engine::load_script(&project, &a.file, a.args)?;
    let outcome = engine::run_live(project, &settings, script)?;
    Ok(report(&outcome, a.options.json))
}

/// Print a finished run's outcome (JSON, or its error and status); returns its exit code.
pub(super) fn report(outcome: &engine::Outcome, json: bool) -> i32 {
    if json {
        print_json(outcome);
    } else if let Some(e) = &outcome.error {
        eprintln!("{e}");
        eprintln!("run {} {}", outcome.run_id, outcome.status.as_str());
    }
    outcome.exit_code
}
