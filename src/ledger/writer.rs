//! Buffered, durable appends: entries are queued by the run and committed by a background thread
//! every 100 ms (and on demand), each batch in one transaction that extends the global chain.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::key::UserKey;
use super::{EntryFields, FileLock, GENESIS, LedgerPaths};
use crate::error::{Error, Result};

/// An entry waiting for its sequence number.
#[derive(Debug, Clone)]
pub struct Pending {
    pub run_id: Arc<str>,
    pub kind: &'static str,
    pub task: String,
    pub idx: i64,
    pub op: String,
    pub args: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub started_at: i64,
    pub duration_us: i64,
}

impl Pending {
    /// A run-level entry (`run.start`, `run.end`, `module`): no task, no call index, op = kind
    /// unless given.
    pub fn marker(
        run_id: Arc<str>,
        kind: &'static str,
        op: &str,
        args: String,
        result: Option<String>,
        duration_us: i64,
    ) -> Pending {
        Pending {
            run_id,
            kind,
            task: String::new(),
            idx: 0,
            op: op.to_string(),
            args,
            result,
            error: None,
            started_at: crate::util::now_micros(),
            duration_us,
        }
    }
}

#[derive(Default)]
struct State {
    entries: Vec<Pending>,
    sources: Vec<(String, Vec<u8>)>,
    /// Bumped by `flush()`; the thread reports the last request it satisfied.
    requested: u64,
    done: u64,
    stop: bool,
    failure: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    flushed: Condvar,
    /// Signalled when the writer takes the queue (see `MAX_QUEUED`).
    drained: Condvar,
}

pub struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// At most this many entries wait for the writer: a script making calls faster than they can be
/// committed is held back, so the ledger never lags far behind the run (nor grows in memory).
pub const MAX_QUEUED: usize = 4096;

impl Writer {
    /// Start the writer thread on its own connection.
    pub fn start(paths: LedgerPaths, conn: Connection, key: Arc<UserKey>) -> Result<Writer> {
        let ledger_id = super::ledger_id(&conn)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            drained: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(thread_shared, paths, conn, key, ledger_id))
            .map_err(|e| Error::ledger(format!("cannot start the ledger writer: {e}")))?;
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn push(&self, entry: Pending) {
        let Ok(mut st) = self.shared.state.lock() else {
            return;
        };
        st.entries.push(entry);
        if st.entries.len() >= MAX_QUEUED {
            self.shared.wake.notify_one();
            while st.entries.len() >= MAX_QUEUED && !st.stop && st.failure.is_none() {
                st = match self.shared.drained.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
        }
    }

    /// Why the last commit failed, while the writer cannot commit.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|st| st.failure.clone())
    }

    /// Queue a source file (content-addressed by its sha256).
    pub fn push_source(&self, sha256: String, content: Vec<u8>) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.sources.push((sha256, content));
        }
    }

    /// Commit everything queued so far and wait until it is durable.
    pub fn flush(&self) -> Result<()> {
        let mut st = self
            .shared
            .state
            .lock()
            .map_err(|_| Error::ledger("ledger writer poisoned"))?;
        st.requested += 1;
        let want = st.requested;
        self.shared.wake.notify_one();
        while st.done < want && st.failure.is_none() {
            st = self
                .shared
                .flushed
                .wait(st)
                .map_err(|_| Error::ledger("ledger writer poisoned"))?;
        }
        match &st.failure {
            Some(f) => Err(Error::ledger(f.clone())),
            None => Ok(()),
        }
    }

    /// Flush, stop the thread and wait for it.
    pub fn close(&self) -> Result<()> {
        let res = self.flush();
        self.stop();
        res
    }

    fn stop(&self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
        }
        self.shared.wake.notify_one();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = handle {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer_loop(
    shared: Arc<Shared>,
    paths: LedgerPaths,
    mut conn: Connection,
    key: Arc<UserKey>,
    ledger_id: String,
) {
    loop {
        // Wait out the interval (entries accumulate into one batch) unless a flush is requested.
        let (entries, sources, request, stop) = {
            let Ok(mut st) = shared.state.lock() else {
                return;
            };
            if st.requested == st.done && !st.stop && st.entries.len() < MAX_QUEUED {
                st = match shared.wake.wait_timeout(st, FLUSH_INTERVAL) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            let taken = (
                std::mem::take(&mut st.entries),
                std::mem::take(&mut st.sources),
                st.requested,
                st.stop,
            );
            shared.drained.notify_all();
            taken
        };
        let outcome = if entries.is_empty() && sources.is_empty() {
            Ok(())
        } else {
            let t0 = std::time::Instant::now();
            let r = append(&mut conn, &paths, &key, &ledger_id, &entries, &sources);
            match &r {
                Ok(()) => tracing::debug!(
                    entries = entries.len(),
                    sources = sources.len(),
                    micros = t0.elapsed().as_micros() as u64,
                    "ledger batch committed"
                ),
                Err(e) => {
                    tracing::warn!(entries = entries.len(), error = %e.message, "ledger batch failed; will retry")
                }
            }
            r
        };
        let Ok(mut st) = shared.state.lock() else {
            return;
        };
        match outcome {
            Ok(()) => st.failure = None,
            Err(e) => {
                // Keep the batch, in order, ahead of what came since: the next tick retries it,
                // so a passing fault never leaves a gap in a run's calls.
                let mut retry = entries;
                retry.append(&mut st.entries);
                st.entries = retry;
                let mut retry_sources = sources;
                retry_sources.append(&mut st.sources);
                st.sources = retry_sources;
                st.failure = Some(e.message);
            }
        }
        st.done = request;
        shared.flushed.notify_all();
        if stop {
            return;
        }
    }
}

/// Append a batch as one transaction, extending the chain from the current head, then move the
/// signed checkpoint forward. The file lock keeps checkpoint updates in commit order.
pub fn append(
    conn: &mut Connection,
    paths: &LedgerPaths,
    key: &UserKey,
    ledger_id: &str,
    entries: &[Pending],
    sources: &[(String, Vec<u8>)],
) -> Result<()> {
    let _lock = FileLock::acquire(&paths.lock())?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut seq, mut prev): (i64, String) = tx
        .query_row(
            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_string())),
            other => Err(other),
        })?;
    {
        let mut src =
            tx.prepare_cached("INSERT OR IGNORE INTO sources(sha256, content) VALUES (?1, ?2)")?;
        for (sha, content) in sources {
            src.execute(rusqlite::params![sha, content])?;
        }
        let mut ins = tx.prepare_cached(
            "INSERT INTO entries(seq, run_id, kind, task, idx, op, args, result, error, started_at, \
             duration_us, prev_hash, hash, key_id, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        // A run ends once: runs starting together may each sweep the same dead run.
        let mut ended = std::collections::HashSet::new();
        let mut has_end = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM entries WHERE run_id = ?1 AND kind = 'run.end')",
        )?;
        for e in entries {
            if e.kind == "run.end"
                && (!ended.insert(e.run_id.clone())
                    || has_end.query_row([&*e.run_id], |r| r.get::<_, bool>(0))?)
            {
                continue;
            }
            seq += 1;
            let fields = EntryFields {
                seq,
                run_id: &e.run_id,
                kind: e.kind,
                task: &e.task,
                idx: e.idx,
                op: &e.op,
                args: &e.args,
                result: e.result.as_deref(),
                error: e.error.as_deref(),
                started_at: e.started_at,
                duration_us: e.duration_us,
            };
            let hash = fields.hash(&prev);
            let mac = key.sign("stagecraft-entry-v1", hash.as_bytes());
            ins.execute(rusqlite::params![
                seq,
                &*e.run_id,
                e.kind,
                e.task,
                e.idx,
                e.op,
                e.args,
                e.result,
                e.error,
                e.started_at,
                e.duration_us,
                prev,
                hash,
                key.id,
                mac
            ])?;
            prev = hash;
        }
    }
    tx.commit()?;
    write_checkpoint(paths, key, ledger_id, seq, &prev)
}

/// The signed head: `{ledger_id, seq, hash, key_id, mac}` written atomically.
pub fn write_checkpoint(
    paths: &LedgerPaths,
    key: &UserKey,
    ledger_id: &str,
    seq: i64,
    hash: &str,
) -> Result<()> {
    let mac = key.sign(
        "stagecraft-head-v1",
        checkpoint_message(ledger_id, seq, hash).as_bytes(),
    );
    let body = serde_json::json!({
        "format": 1,
        "ledger_id": ledger_id,
        "seq": seq,
        "hash": hash,
        "key_id": key.id,
        "mac": mac,
    });
    let path = paths.head();
    let tmp = path.with_extension(format!("head.tmp{}", std::process::id()));
    write_durably(&tmp, body.to_string().as_bytes())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::ledger(format!("cannot write checkpoint {}: {e}", path.display())))
}

pub fn checkpoint_message(ledger_id: &str, seq: i64, hash: &str) -> String {
    format!("{ledger_id}|{seq}|{hash}")
}

/// Written then renamed into place: readers see the old head or the new one, never a torn file.
/// Not fsynced: a head that lags behind the database after a power cut is still valid (verify
/// checks the entry it names), and skipping the sync halves the cost of a commit.
fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)
}
