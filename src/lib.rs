//! Stagecraft: a scriptable, recorded, replayable automation engine.

pub mod api;
pub mod cli;
pub mod compose;
pub mod engine;
pub mod error;
pub mod git;
pub mod inventory;
pub mod ledger;
pub mod project;
pub mod recipe;
pub mod runtime;
pub mod util;

/// Run the CLI with these arguments; returns the process exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    cli::main(args)
}
