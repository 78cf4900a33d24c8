//! The Luau runtime: one sandboxed state per run, the capability checks, the limits, and the one
//! recording path every primitive call goes through (live: ledger; replay: recorded results).

pub mod caps;
pub mod fault;
pub mod limits;
pub mod loader;
pub mod record;
pub mod sandbox;
pub mod scrub;
pub mod secrets;
pub mod task;
pub mod value;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

pub use fault::{ErrorObject, OpError, kinds};
use mlua::Lua;

use crate::ledger::LedgerPaths;
use crate::project::Project;

/// Everything one run shares between its primitives. Stored in the Lua state's app data.
pub struct RunCtx {
    pub project: Arc<Project>,
    pub grants: caps::Grants,
    pub secrets: secrets::SecretStore,
    pub run_id: Arc<str>,
    pub recorder: record::Recorder,
    pub stop: limits::Stop,
    pub tasks: task::Tasks,
    pub ledger: LedgerPaths,
    /// Module sources to use instead of the files on disk (replay, `--live` re-runs).
    pub overlay: HashMap<String, String>,
    /// Modules loaded by this run: (chunk name, sha256).
    pub modules: Mutex<Vec<(String, String)>>,
    /// `print` goes to stderr when stdout carries `--json` output.
    pub print_to_stderr: bool,
    pub rng: Mutex<rand::rngs::StdRng>,
    /// Work to do when the script has ended, whatever the outcome (release deploy locks).
    /// Registered by live effects only, so a replay has none.
    pub finalizers: Mutex<Vec<Finalizer>>,
}

/// A clean-up run after the script: it may talk to the world, and notes what it did with
/// [`RunCtx::note`].
pub type Finalizer =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

impl RunCtx {
    /// Register work for the end of the run.
    pub fn at_end(&self, f: Finalizer) {
        if let Ok(mut v) = self.finalizers.lock() {
            v.push(f);
        }
    }

    /// Run the registered clean-ups, newest first, within `limit`.
    pub async fn finalize(&self, limit: std::time::Duration) {
        let list: Vec<Finalizer> = self
            .finalizers
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let _ = tokio::time::timeout(limit, async {
            for f in list.into_iter().rev() {
                f().await;
            }
        })
        .await;
    }

    /// Append a note (not a call: replay ignores it) of something done outside the script,
    /// such as releasing a lock at the end of the run.
    pub fn note(&self, op: &str, args: serde_json::Value) {
        if let record::Recorder::Live(writer) = &self.recorder {
            let mut args = args;
            self.secrets.scrubber.scrub_json(&mut args);
            writer.push(crate::ledger::writer::Pending::marker(
                self.run_id.clone(),
                "note",
                op,
                value::canonical(&args),
                None,
                0,
            ));
        }
    }

    /// Write script output, scrubbed of every loaded secret.
    pub fn emit(&self, text: &str, to_stderr: bool) {
        let clean = self.secrets.scrubber.scrub(text);
        if to_stderr {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(clean.as_bytes());
            let _ = err.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(clean.as_bytes());
            let _ = out.flush();
        }
    }
}

/// The run context of the state a primitive was called from.
pub fn ctx(lua: &Lua) -> mlua::Result<Arc<RunCtx>> {
    lua.app_data_ref::<Arc<RunCtx>>()
        .map(|c| c.clone())
        .ok_or_else(|| mlua::Error::runtime("stagecraft runtime context missing"))
}
