//! Task identity. Every primitive call belongs to a task path (`main`, `main/1.2`, ...). Paths
//! are deterministic (a parent names its children by group and position), so replay matches calls
//! per task and parallel interleaving never causes a false divergence.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::fault::OpError;

/// The error that ended a task, captured where it was raised (with the traceback of that moment).
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: OpError,
    /// Whether `error` came from a primitive (structured) or from `error()` / a Lua fault.
    pub structured: bool,
    pub traceback: String,
}

pub struct TaskState {
    pub path: String,
    calls: AtomicI64,
    groups: AtomicU64,
    pub failure: Mutex<Option<Failure>>,
}

impl TaskState {
    pub fn new(path: String) -> Arc<TaskState> {
        Arc::new(TaskState {
            path,
            calls: AtomicI64::new(0),
            groups: AtomicU64::new(0),
            failure: Mutex::new(None),
        })
    }
    /// The next call index in this task (0-based).
    pub fn next_call(&self) -> i64 {
        self.calls.fetch_add(1, Ordering::Relaxed)
    }
    /// The next child group number (1-based): `task.parallel`/`task.map` calls in this task.
    pub fn next_group(&self) -> u64 {
        self.groups.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn child_path(&self, group: u64, index: usize) -> String {
        format!("{}/{}.{}", self.path, group, index)
    }
    pub fn take_failure(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

/// The stack of tasks being polled right now; the top is the one running Lua code.
#[derive(Default)]
pub struct Tasks {
    stack: Mutex<Vec<Arc<TaskState>>>,
}

impl Tasks {
    pub fn current(&self) -> Option<Arc<TaskState>> {
        self.stack.lock().ok().and_then(|s| s.last().cloned())
    }
    fn push(&self, t: Arc<TaskState>) {
        if let Ok(mut s) = self.stack.lock() {
            s.push(t);
        }
    }
    fn pop(&self) {
        if let Ok(mut s) = self.stack.lock() {
            s.pop();
        }
    }
}

/// A future that marks its task as current while it is polled.
pub struct InTask<F> {
    tasks: Arc<super::RunCtx>,
    pub state: Arc<TaskState>,
    fut: Pin<Box<F>>,
}

impl<F: Future> InTask<F> {
    pub fn new(ctx: Arc<super::RunCtx>, state: Arc<TaskState>, fut: F) -> Self {
        InTask {
            tasks: ctx,
            state,
            fut: Box::pin(fut),
        }
    }
}

impl<F: Future> Future for InTask<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.tasks.tasks.push(this.state.clone());
        let out = this.fut.as_mut().poll(cx);
        this.tasks.tasks.pop();
        out
    }
}
