//! The one recording path: capability check → ledger entry → effect → result entry (live), or
//! recorded result with divergence detection (replay).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::RunCtx;
use super::fault::{OpError, kinds};
use crate::ledger::writer::{Pending, Writer};

pub enum Recorder {
    Live(Arc<Writer>),
    Replay(Replay),
}

/// A recorded call waiting to be matched.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub seq: i64,
    pub op: String,
    pub args: String,
    pub result: Option<String>,
    pub error: Option<String>,
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
    pub total: usize,
    pub matched: AtomicUsize,
    pub divergence: Mutex<Option<Divergence>>,
}

fn call_json(op: &str, args: &str) -> Value {
    serde_json::json!({ "op": op, "args": serde_json::from_str::<Value>(args).unwrap_or(Value::Null) })
}

impl Replay {
    /// `calls`: (seq, task, op, args, result, error) in sequence order.
    pub fn new(
        calls: Vec<(i64, String, String, String, Option<String>, Option<String>)>,
    ) -> Replay {
        let total = calls.len();
        let mut queues: HashMap<String, VecDeque<Recorded>> = HashMap::new();
        for (seq, task, op, args, result, error) in calls {
            queues.entry(task).or_default().push_back(Recorded {
                seq,
                op,
                args,
                result,
                error,
            });
        }
        Replay {
            queues: Mutex::new(queues),
            total,
            matched: AtomicUsize::new(0),
            divergence: Mutex::new(None),
        }
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

    /// Recorded calls the script never made, in sequence order (after the run ended).
    pub fn missing(&self) -> Option<Divergence> {
        let queues = self.queues.lock().ok()?;
        let (task, rec) = queues
            .iter()
            .filter_map(|(t, q)| q.front().map(|r| (t, r)))
            .min_by_key(|(_, r)| r.seq)?;
        let remaining: usize = queues.values().map(VecDeque::len).sum();
        Some(Divergence {
            task: task.clone(),
            call: 0,
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
    Replayed(Result<Value, OpError>),
}

impl RunCtx {
    /// Start a call: stop check, task identity, canonical arguments; in replay, the match.
    pub fn begin(&self, op: &'static str, mut args: Value) -> Result<Begun, OpError> {
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
                let Some(rec) = next else {
                    let err = replay.diverge(Divergence {
                        task: path,
                        call: idx + 1,
                        seq: None,
                        reason: format!("an extra call {op} that was not recorded"),
                        expected: None,
                        actual: Some(call_json(op, &args)),
                    });
                    self.stop.stop(err.clone());
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
                        call: idx + 1,
                        seq: Some(rec.seq),
                        reason: format!("{what} than recorded"),
                        expected: Some(call_json(&rec.op, &rec.args)),
                        actual: Some(call_json(op, &args)),
                    });
                    self.stop.stop(err.clone());
                    return Err(err);
                }
                replay.matched.fetch_add(1, Ordering::Relaxed);
                let outcome = match (&rec.error, &rec.result) {
                    (Some(e), _) => Err(serde_json::from_str::<OpError>(e)
                        .unwrap_or_else(|_| OpError::new("recorded_error", e.clone()))),
                    (None, Some(r)) => Ok(serde_json::from_str(r).unwrap_or(Value::Null)),
                    (None, None) => Ok(Value::Null),
                };
                Ok(Begun::Replayed(outcome))
            }
        }
    }

    /// Record the outcome of a live call (scrubbed) and hand it back.
    pub fn finish(
        &self,
        call: LiveCall,
        outcome: Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        if let Recorder::Live(writer) = &self.recorder {
            let (result, error) = match &outcome {
                Ok(v) => {
                    let mut v = v.clone();
                    self.secrets.scrubber.scrub_json(&mut v);
                    (Some(super::value::canonical(&v)), None)
                }
                Err(e) => {
                    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
                    self.secrets.scrubber.scrub_json(&mut v);
                    (None, Some(super::value::canonical(&v)))
                }
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

    /// Record a synchronous call.
    pub fn record_sync(
        &self,
        op: &'static str,
        args: Value,
        effect: impl FnOnce() -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        match self.begin(op, args)? {
            Begun::Replayed(outcome) => outcome,
            Begun::Live(call) => {
                let outcome = effect();
                self.finish(call, outcome)
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
            Begun::Replayed(outcome) => outcome,
            Begun::Live(call) => {
                let outcome = effect().await;
                self.finish(call, outcome)
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
            writer.push(Pending {
                run_id: self.run_id.clone(),
                kind: "module",
                task: String::new(),
                idx: 0,
                op: name.to_string(),
                args: serde_json::json!({ "path": name, "sha256": sha256 }).to_string(),
                result: None,
                error: None,
                started_at: crate::util::now_micros(),
                duration_us: 0,
            });
        }
    }
}
