//! `stagecraft lock status|release HOST NAME`: the deploy-lock commands. They run the embedded
//! script `stagecraft/cli/lock.luau` as a recorded run with the project's capabilities (so a
//! forced release is in the ledger like any other call).

use std::collections::HashMap;

use clap::{Args, Subcommand};

use super::{LedgerArg, LimitArgs, cwd, print_json};
use crate::engine;
use crate::error::Error;
use crate::project::Project;

#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// Show who holds a deploy lock on a host, and whether it is stale.
    Status(LockArgs),
    /// Break a deploy lock (a stale one): needs --force; recorded in the ledger.
    Release {
        #[command(flatten)]
        lock: LockArgs,
        /// Yes, break it even though this run does not hold it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// An inventory host name (stagecraft.yml), or user@host:port.
    pub host: String,
    /// The lock name (e.g. deploy).
    pub name: String,
    /// The lock folder on the host (default $HOME/.stagecraft/locks).
    #[arg(long)]
    pub dir: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub ledger: LedgerArg,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

const SCRIPT: &str = "stagecraft/cli/lock.luau";

pub fn run(cmd: LockCommand) -> Result<i32, Error> {
    let (op, a) = match cmd {
        LockCommand::Status(a) => ("status", a),
        LockCommand::Release { lock, force } => {
            if !force {
                return Err(Error::usage(
                    "stagecraft lock release breaks a lock someone else holds: pass --force once you are sure nothing is deploying",
                ));
            }
            ("release", lock)
        }
    };
    let settings = a.limits.settings(&a.ledger, a.json)?;
    let project = Project::discover(&cwd()?)?;
    let source = crate::runtime::loader::STDLIB
        .get_file(SCRIPT)
        .and_then(|f| f.contents_utf8())
        .ok_or_else(|| Error::usage("the lock command script is missing from this build"))?
        .to_string();
    let mut args = vec![op.to_string(), a.host, a.name];
    if let Some(d) = a.dir {
        args.push(format!("dir={d}"));
    }
    let script = engine::Script {
        chunk: SCRIPT.to_string(),
        source,
        args,
        overlay: HashMap::new(),
        replay_of: None,
        command: None,
    };
    let outcome = engine::run_live(project, &settings, script)?;
    if a.json {
        print_json(&outcome);
    } else if let Some(e) = &outcome.error {
        eprintln!("{e}");
        eprintln!("run {} {}", outcome.run_id, outcome.status.as_str());
    }
    Ok(outcome.exit_code)
}
