//! The one recording path: capability check → ledger entry → effect → result entry (live), or
//! recorded result with divergence detection (replay).
//!
//! Live, a call whose task is cancelled before it finishes (a sibling task failed, the run was
//! stopped) is recorded with an error of kind [`CANCELLED`]. Replay matches calls per task path in
//! order, and hands recorded results back in the order the recording finished them, so tasks
//! interleave (and fail, and cancel each other) as they did live; a cancelled call never returns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::RunCtx;
use super::fault::{OpError, kinds};
use crate::ledger::writer::{Pending, Writer};

/// Error kind recorded for a call whose task was cancelled before the call finished.
pub const CANCELLED: &str = "cancelled";

/// Kind of the stop reason when a replay reaches the point where its recording ended early
/// (the recorded run was killed or interrupted there).
pub const RECORDING_END: &str = "replay_recording_end";

/// A replay makes no live calls, so its tasks only wait for each other. A task that waits this
/// long twice in a row while no recorded call is handed back counts the replay as stalled.
const STALL: Duration = Duration::from_millis(250);

/// The stop reason of a replay that reached the end of a recording that ended early.
pub fn recording_end() -> OpError {
    OpError::new(
        RECORDING_END,
        "the replay reached the point where the recorded run stopped",
    )
}

pub enum Recorder {
    Live(Arc<Writer>),
    Replay(Box<Replay>),
}

/// A recorded call as read from the ledger: (seq, task, op, args, result, error).
pub type RawCall = (i64, String, String, String, Option<String>, Option<String>);

/// A recorded call waiting to be matched.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub seq: i64,
    /// 1-based number of the call within its task.
    pub number: i64,
    pub op: String,
    pub args: String,
    pub result: Option<String>,
    pub error: Option<String>,
    /// The call never finished live: its task was cancelled.
    pub cancelled: bool,
}

/// The first place a replay differed from the recording.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub task: String,
    /// 1-based number of the call within its task.
    pub call: i64,
    /// Sequence number of the recorded entry, when there is one.
    pub seq: Option<i64>,
    pub reason: String,
    pub expected: Option<Value>,
    pub actual: Option<Value>,
}

pub struct Replay {
    queues: Mutex<HashMap<String, VecDeque<Recorded>>>,
    /// Sequence numbers of the finished recorded calls not yet handed back to the script.
    unresolved: Mutex<BTreeSet<i64>>,
    /// Woken whenever a recorded result is handed back or the replay stops.
    wake: tokio::sync::Notify,
    /// Bumped whenever a recorded result is handed back.
    progress: AtomicU64,
    /// The recording ended early (killed, interrupted): running past its end ends the replay.
    ends_early: bool,
    pub total: usize,
    pub matched: AtomicUsize,
    pub divergence: Mutex<Option<Divergence>>,
}

fn call_json(op: &str, args: &str) -> Value {
    serde_json::json!({ "op": op, "args": serde_json::from_str::<Value>(args).unwrap_or(Value::Null) })
}

impl Replay {
    /// `calls`: (seq, task, op, args, result, error) in sequence order. `ends_early`: the
    /// recorded run did not run to its end (killed, interrupted).
    pub fn new(calls: Vec<RawCall>, ends_early: bool) -> Replay {
        let total = calls.len();
        let mut queues: HashMap<String, VecDeque<Recorded>> = HashMap::new();
        let mut unresolved = BTreeSet::new();
        for (seq, task, op, args, result, error) in calls {
            let cancelled = error.as_deref().is_some_and(|e| {
                serde_json::from_str::<OpError>(e).is_ok_and(|e| e.kind == CANCELLED)
            });
            if !cancelled {
                unresolved.insert(seq);
            }
            let queue = queues.entry(task).or_default();
            queue.push_back(Recorded {
                seq,
                number: queue.len() as i64 + 1,
                op,
                args,
                result,
                error,
                cancelled,
            });
        }
        Replay {
            queues: Mutex::new(queues),
            unresolved: Mutex::new(unresolved),
            wake: tokio::sync::Notify::new(),
            progress: AtomicU64::new(0),
            ends_early,
            total,
            matched: AtomicUsize::new(0),
            divergence: Mutex::new(None),
        }
    }

    /// Whether the recording ended early (the recorded run was killed or interrupted).
    pub fn ends_early(&self) -> bool {
        self.ends_early
    }

    /// Every recorded call has been made, and every finished one handed back.
    pub fn exhausted(&self) -> bool {
        self.unresolved.lock().map(|u| u.is_empty()).unwrap_or(true)
            && self
                .queues
                .lock()
                .map(|q| q.values().all(VecDeque::is_empty))
                .unwrap_or(true)
    }

    /// Whether every recorded call finished before `seq` has been handed back.
    fn in_turn(&self, seq: i64) -> bool {
        self.unresolved
            .lock()
            .map(|u| u.range(..seq).next().is_none())
            .unwrap_or(true)
    }

    /// Mark a recorded call as handed back and wake the tasks waiting for their turn.
    fn resolve(&self, seq: i64) {
        if let Ok(mut u) = self.unresolved.lock() {
            u.remove(&seq);
        }
        self.progress.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// The first recorded call (in sequence order) that the script has not made.
    fn first_unmade(&self) -> Option<(String, Recorded, usize)> {
        let queues = self.queues.lock().ok()?;
        let remaining: usize = queues
            .values()
            .flat_map(|q| q.iter())
            .filter(|r| !r.cancelled)
            .count();
        let (task, rec) = queues
            .iter()
            .flat_map(|(t, q)| q.iter().filter(|r| !r.cancelled).map(move |r| (t, r)))
            .min_by_key(|(_, r)| r.seq)?;
        Some((task.clone(), rec.clone(), remaining))
    }

    fn diverge(&self, d: Divergence) -> OpError {
        let msg = format!(
            "replay diverged at call {} of task {}: {}",
            d.call, d.task, d.reason
        );
        if let Ok(mut slot) = self.divergence.lock()
            && slot.is_none()
        {
            *slot = Some(d);
        }
        OpError::new(kinds::DIVERGENCE, msg)
            .hint("the script no longer makes the recorded calls; run `stagecraft replay RUN --live` to record a new run")
    }

    /// Recorded calls the script never made, in sequence order (after the run ended). Calls
    /// that were cancelled live need not be made: their task may be cancelled sooner in replay.
    pub fn missing(&self) -> Option<Divergence> {
        let (task, rec, remaining) = self.first_unmade()?;
        Some(Divergence {
            task,
            call: rec.number,
            seq: Some(rec.seq),
            reason: format!(
                "the script ended but {remaining} recorded call(s) were not made, first {}",
                rec.op
            ),
            expected: Some(call_json(&rec.op, &rec.args)),
            actual: None,
        })
    }
}

/// The replayed call a task is waiting in, for the report when the replay stalls.
struct Waiter<'a> {
    task: &'a str,
    call: i64,
    op: &'a str,
    args: &'a str,
}

/// A call in flight (live).
pub struct LiveCall {
    task: String,
    idx: i64,
    op: &'static str,
    args: String,
    started_at: i64,
    t0: Instant,
}

pub enum Begun {
    Live(LiveCall),
    /// Replay: the recorded outcome of the entry `seq`.
    Replayed {
        seq: i64,
        outcome: Result<Value, OpError>,
        task: String,
        call: i64,
        op: &'static str,
        args: String,
    },
    /// Replay: a call that never finished in the recording (its task was cancelled, or the
    /// recording ends before it); it never returns.
    Unfinished {
        task: String,
        call: i64,
        op: &'static str,
        args: String,
    },
}

/// A live call in flight: if its future is dropped first (the task was cancelled), the call is
/// recorded as cancelled so that replay knows it never finished.
struct InFlight<'a> {
    ctx: &'a RunCtx,
    call: Option<LiveCall>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let err = OpError::new(
                CANCELLED,
                format!("{}: cancelled before it finished", call.op),
            );
            let _ = self.ctx.finish(call, Err(err));
        }
    }
}

impl RunCtx {
    /// Start a call: stop check, task identity, canonical arguments; in replay, the match.
    pub fn begin(&self, op: &'static str, mut args: Value) -> Result<Begun, OpError> {
        if super::limits::signalled() {
            self.stop
                .stop(OpError::new(kinds::INTERRUPTED, "interrupted by a signal"));
        }
        // No effect may happen that the ledger cannot record: a failing ledger stops the run.
        if let Recorder::Live(writer) = &self.recorder
            && let Some(why) = writer.failure()
        {
            self.stop.stop(
                OpError::new(
                    kinds::LEDGER,
                    format!("the ledger cannot be written: {why}"),
                )
                .hint("check the disk and the permissions of .stagecraft/; nothing more ran"),
            );
        }
        self.stop.check()?;
        let task = self.tasks.current();
        let (path, idx) = match &task {
            Some(t) => (t.path.clone(), t.next_call()),
            None => ("main".to_string(), 0),
        };
        self.secrets.scrubber.scrub_json(&mut args);
        let args = super::value::canonical(&args);
        match &self.recorder {
            Recorder::Live(_) => Ok(Begun::Live(LiveCall {
                task: path,
                idx,
                op,
                args,
                started_at: crate::util::now_micros(),
                t0: Instant::now(),
            })),
            Recorder::Replay(replay) => {
                let next = replay
                    .queues
                    .lock()
                    .ok()
                    .and_then(|mut q| q.get_mut(&path).and_then(VecDeque::pop_front));
                let call = idx + 1;
                let Some(rec) = next else {
                    if replay.ends_early {
                        // The recorded run stopped before this task got here.
                        return Ok(Begun::Unfinished {
                            task: path,
                            call,
                            op,
                            args,
                        });
                    }
                    let err = replay.diverge(Divergence {
                        task: path,
                        call,
                        seq: None,
                        reason: format!("an extra call {op} that was not recorded"),
                        expected: None,
                        actual: Some(call_json(op, &args)),
                    });
                    self.halt(replay, err.clone());
                    return Err(err);
                };
                if rec.op != op || rec.args != args {
                    let what = if rec.op != op {
                        "a different operation"
                    } else {
                        "different arguments"
                    };
                    let err = replay.diverge(Divergence {
                        task: path,
                        call,
                        seq: Some(rec.seq),
                        reason: format!("{what} than recorded"),
                        expected: Some(call_json(&rec.op, &rec.args)),
                        actual: Some(call_json(op, &args)),
                    });
                    self.halt(replay, err.clone());
                    return Err(err);
                }
                replay.matched.fetch_add(1, Ordering::Relaxed);
                if rec.cancelled {
                    return Ok(Begun::Unfinished {
                        task: path,
                        call,
                        op,
                        args,
                    });
                }
                let outcome = match (&rec.error, &rec.result) {
                    (Some(e), _) => Err(serde_json::from_str::<OpError>(e)
                        .unwrap_or_else(|_| OpError::new("recorded_error", e.clone()))),
                    (None, Some(r)) => Ok(serde_json::from_str(r).unwrap_or(Value::Null)),
                    (None, None) => Ok(Value::Null),
                };
                Ok(Begun::Replayed {
                    seq: rec.seq,
                    outcome,
                    task: path,
                    call,
                    op,
                    args,
                })
            }
        }
    }

    /// Stop the replay and wake every task waiting for its turn, so that they see the stop.
    fn halt(&self, replay: &Replay, err: OpError) {
        self.stop.stop(err);
        replay.wake.notify_waiters();
    }

    /// Hand a recorded result back; at the end of a recording that ended early, stop the replay.
    fn hand_back(&self, seq: i64) {
        if let Recorder::Replay(replay) = &self.recorder {
            replay.resolve(seq);
            self.end_if_exhausted(replay);
        }
    }

    /// A recording that ended early has nothing more to compare once it is used up.
    fn end_if_exhausted(&self, replay: &Replay) {
        if replay.ends_early && replay.exhausted() {
            self.halt(replay, recording_end());
        }
    }

    /// Wait until every recorded call finished before `seq` has been handed back (`None`: wait
    /// for good). `Err` when the replay stops, or stalls: every task waits and none can go on.
    async fn wait_turn(&self, seq: Option<i64>, me: Waiter<'_>) -> Result<(), OpError> {
        let Recorder::Replay(replay) = &self.recorder else {
            return Ok(());
        };
        let mut quiet = 0;
        loop {
            let woken = replay.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.stop.check()?;
            if seq.is_some_and(|s| replay.in_turn(s)) {
                return Ok(());
            }
            let before = replay.progress.load(Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = &mut woken => quiet = 0,
                _ = tokio::time::sleep(STALL) => {
                    // Twice, so that tasks woken meanwhile have certainly run in between.
                    if replay.progress.load(Ordering::Relaxed) != before {
                        quiet = 0;
                    } else if quiet == 0 {
                        quiet = 1;
                    } else {
                        self.stop.check()?;
                        let err = self.stalled(replay, &me);
                        self.halt(replay, err.clone());
                        return Err(err);
                    }
                }
            }
        }
    }

    /// Why a replay in which every task waits cannot go on.
    fn stalled(&self, replay: &Replay, me: &Waiter<'_>) -> OpError {
        if replay.ends_early {
            return recording_end();
        }
        match replay.first_unmade() {
            Some((task, rec, _)) => replay.diverge(Divergence {
                task,
                call: rec.number,
                seq: Some(rec.seq),
                reason: format!(
                    "the script never made the recorded call {} (task {} waits for it)",
                    rec.op, me.task
                ),
                expected: Some(call_json(&rec.op, &rec.args)),
                actual: None,
            }),
            None => replay.diverge(Divergence {
                task: me.task.to_string(),
                call: me.call,
                seq: None,
                reason: format!(
                    "{} was cancelled in the recording (another task failed first), but nothing \
                     cancelled it in the replay",
                    me.op
                ),
                expected: None,
                actual: Some(call_json(me.op, me.args)),
            }),
        }
    }

    /// Record the outcome of a live call (scrubbed) and hand it back.
    pub fn finish(
        &self,
        call: LiveCall,
        outcome: Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        // What the script gets back is what the ledger holds: scrubbed. A secret never enters
        // the script through a child's output or a file, and replay sees the very same values.
        let outcome = match outcome {
            Ok(mut v) => {
                self.secrets.scrubber.scrub_json(&mut v);
                Ok(v)
            }
            Err(e) => {
                let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
                self.secrets.scrubber.scrub_json(&mut v);
                Err(serde_json::from_value(v).unwrap_or(e))
            }
        };
        if let Recorder::Live(writer) = &self.recorder {
            let (result, error) = match &outcome {
                Ok(v) => (Some(super::value::canonical(v)), None),
                Err(e) => (
                    None,
                    Some(super::value::canonical(
                        &serde_json::to_value(e).unwrap_or(Value::Null),
                    )),
                ),
            };
            writer.push(Pending {
                run_id: self.run_id.clone(),
                kind: "call",
                task: call.task,
                idx: call.idx,
                op: call.op.to_string(),
                args: call.args,
                result,
                error,
                started_at: call.started_at,
                duration_us: call.t0.elapsed().as_micros() as i64,
            });
        }
        outcome
    }

    /// The call is about to take effect: its intent goes to the ledger first, so a process killed
    /// mid-call (`kill -9`) still leaves a trace of what it was doing.
    fn record_start(&self, call: &LiveCall) {
        if let Recorder::Live(writer) = &self.recorder {
            writer.push(Pending {
                run_id: self.run_id.clone(),
                kind: "call.start",
                task: call.task.clone(),
                idx: call.idx,
                op: call.op.to_string(),
                args: call.args.clone(),
                result: None,
                error: None,
                started_at: call.started_at,
                duration_us: 0,
            });
        }
    }

    /// Record a synchronous call.
    pub fn record_sync(
        &self,
        op: &'static str,
        args: Value,
        effect: impl FnOnce() -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        match self.begin(op, args)? {
            Begun::Live(call) => {
                let outcome = effect();
                self.finish(call, outcome)
            }
            Begun::Replayed { seq, outcome, .. } => {
                self.hand_back(seq);
                outcome
            }
            // A synchronous call cannot wait: the replay ends here.
            Begun::Unfinished { .. } => {
                let err = recording_end();
                if let Recorder::Replay(replay) = &self.recorder {
                    self.halt(replay, err.clone());
                }
                Err(err)
            }
        }
    }

    /// Record an asynchronous call.
    pub async fn record<Fut>(
        &self,
        op: &'static str,
        args: Value,
        effect: impl FnOnce() -> Fut,
    ) -> Result<Value, OpError>
    where
        Fut: Future<Output = Result<Value, OpError>>,
    {
        match self.begin(op, args)? {
            Begun::Live(call) => {
                self.record_start(&call);
                let mut in_flight = InFlight {
                    ctx: self,
                    call: Some(call),
                };
                // An effect on the world happens only once its intent is durable: commit the
                // `call.start` (and everything before it) first. A ledger that cannot be written
                // stops the run before the effect.
                if changes_the_world(op)
                    && let Recorder::Live(writer) = &self.recorder
                {
                    let writer = writer.clone();
                    let committed = tokio::task::spawn_blocking(move || writer.flush())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.message));
                    if let Err(why) = committed {
                        let err = OpError::new(
                            kinds::LEDGER,
                            format!("the ledger cannot be written: {why}"),
                        )
                        .hint(
                            "check the disk and the permissions of .stagecraft/; nothing more ran",
                        );
                        self.stop.stop(err.clone());
                        if let Some(call) = in_flight.call.take() {
                            let _ = self.finish(call, Err(err.clone()));
                        }
                        return Err(err);
                    }
                }
                let outcome = effect().await;
                match in_flight.call.take() {
                    Some(call) => self.finish(call, outcome),
                    None => outcome,
                }
            }
            Begun::Replayed {
                seq,
                outcome,
                task,
                call,
                op,
                args,
            } => {
                let me = Waiter {
                    task: &task,
                    call,
                    op,
                    args: &args,
                };
                self.wait_turn(Some(seq), me).await?;
                self.hand_back(seq);
                outcome
            }
            Begun::Unfinished {
                task,
                call,
                op,
                args,
            } => {
                if let Recorder::Replay(replay) = &self.recorder {
                    self.end_if_exhausted(replay);
                }
                let me = Waiter {
                    task: &task,
                    call,
                    op,
                    args: &args,
                };
                self.wait_turn(None, me).await?;
                Err(recording_end())
            }
        }
    }

    /// Check a capability; the denial is the call's (recorded) outcome.
    pub fn require(
        &self,
        op: &str,
        req: &super::caps::Request<'_>,
        cap: &str,
    ) -> Result<(), OpError> {
        if self.grants.allows(req) {
            Ok(())
        } else {
            Err(OpError::permission(op, cap))
        }
    }

    /// Append a non-call entry (module loads).
    pub fn record_module(&self, name: &str, sha256: &str, content: &str) {
        if let Recorder::Live(writer) = &self.recorder {
            writer.push_source(sha256.to_string(), content.as_bytes().to_vec());
            writer.push(Pending::marker(
                self.run_id.clone(),
                "module",
                name,
                serde_json::json!({ "path": name, "sha256": sha256 }).to_string(),
                None,
                0,
            ));
        }
    }
}

/// Operations with an effect outside the process: their intent is committed before they run.
/// Reads (fs.read, fs.exists, fs.list, ledger queries) are recorded when they finish.
fn changes_the_world(op: &str) -> bool {
    matches!(
        op,
        "exec.run" | "fs.write" | "fs.mkdir" | "fs.remove" | "http.get" | "http.post"
    ) || matches!(op, "tailscale.up" | "tailscale.down")
        || matches!(
            op,
            "ssh.run"
                | "ssh.shell"
                | "ssh.upload"
                | "ssh.download"
                | "lock.acquire"
                | "lock.release"
        )
        || crate::api::docker::changes_the_world(op)
}
