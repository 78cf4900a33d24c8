//! `stagecraft replay RUN [--script FILE] [--live]`

use std::path::PathBuf;

use clap::Args;

use super::{LedgerArg, LimitArgs, cwd, print_json};
use crate::engine;
use crate::error::{Error, exit};
use crate::ledger::{self, query};
use crate::project::Project;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Run id (or unique prefix), or `last`.
    pub run: String,
    /// Replay the recorded history against this (changed) script instead of the recorded one.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Re-run for real, as a new run linked to the original.
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub ledger: LedgerArg,
    /// Machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ReplayArgs) -> Result<i32, Error> {
    let settings = a.limits.settings(&a.ledger, a.json)?;
    let project = Project::discover(&cwd()?)?;
    if a.live {
        let paths = engine::ledger_paths(&project, &settings);
        let conn = ledger::open(&paths, false)?;
        let id = query::resolve_run(&conn, &a.run)?;
        let script = engine::recorded_script(&conn, &id, &project, a.script.as_deref())?;
        drop(conn);
        let outcome = engine::run_live(project, &settings, script)?;
        if a.json {
            print_json(&outcome);
        } else {
            if let Some(e) = &outcome.error {
                eprintln!("{e}");
            }
            eprintln!(
                "run {} (re-run of {id}) {}",
                outcome.run_id,
                outcome.status.as_str()
            );
        }
        return Ok(outcome.exit_code);
    }
    let report = engine::replay(project, &settings, &a.run, a.script.as_deref())?;
    if a.json {
        print_json(&report);
    } else {
        match &report.divergence {
            None => eprintln!(
                "replay of {}: {} of {} recorded calls matched, no divergence (recorded status: {})",
                report.run_id, report.matched_calls, report.recorded_calls, report.recorded_status
            ),
            Some(d) => {
                eprintln!(
                    "replay of {}: DIVERGED after {} matching calls",
                    report.run_id, report.matched_calls
                );
                eprintln!("  task:     {}", d.task);
                if d.call > 0 {
                    eprintln!("  call:     {} (in that task)", d.call);
                }
                if let Some(seq) = d.seq {
                    eprintln!("  recorded: entry {seq}");
                }
                eprintln!("  reason:   {}", d.reason);
                if let Some(e) = &d.expected {
                    eprintln!("  expected: {e}");
                }
                if let Some(a) = &d.actual {
                    eprintln!("  actual:   {a}");
                }
            }
        }
    }
    Ok(match (&report.divergence, &report.error) {
        (Some(_), _) => exit::DIVERGENCE,
        (None, Some(e)) => {
            if !a.json {
                eprintln!("{e}");
            }
            e.exit_code()
        }
        _ => exit::OK,
    })
}
