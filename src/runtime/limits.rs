//! CPU, memory and wall-clock limits. Once a limit is hit the run is stopped for good: the
//! interrupt keeps raising, and `pcall`/`xpcall`/`coroutine.resume` re-raise, so nothing in the
//! script can swallow it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::fault::{OpError, kinds};

/// Set by the SIGINT/SIGTERM handler; the interrupt turns it into a stop, so even a CPU-bound
/// script ends promptly on Ctrl-C.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Install the SIGINT/SIGTERM flag handler (alongside tokio's own, through the same registry).
pub fn install_signal_flag() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe {
            signal_hook_registry::register(sig, || SIGNALLED.store(true, Ordering::SeqCst))
        };
    }
}

pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::Relaxed)
}

pub struct Stop {
    stopped: AtomicBool,
    reason: Mutex<Option<OpError>>,
    cpu_limit: Option<Duration>,
    cpu_start: Duration,
    wall_deadline: Option<Instant>,
    wall_limit: Option<Duration>,
    ticks: AtomicU32,
    memory_mb: u64,
    held: AtomicBool,
}

/// CPU time consumed by the calling thread (the one running Lua).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Stop {
    pub fn new(cpu_limit: Option<Duration>, wall_limit: Option<Duration>, memory_mb: u64) -> Self {
        Stop {
            stopped: AtomicBool::new(false),
            reason: Mutex::new(None),
            cpu_limit,
            cpu_start: thread_cpu_time(),
            wall_deadline: wall_limit.map(|w| Instant::now() + w),
            wall_limit,
            ticks: AtomicU32::new(0),
            memory_mb,
            held: AtomicBool::new(false),
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stop the run with this reason (the first reason wins).
    pub fn stop(&self, reason: OpError) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(reason);
        }
        self.stopped.store(true, Ordering::Release);
    }

    pub fn reason(&self) -> Option<OpError> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// `Err` once stopped. Cheap; called by the interrupt and by every primitive.
    pub fn check(&self) -> Result<(), OpError> {
        if self.is_stopped() {
            return Err(self
                .reason()
                .unwrap_or_else(|| OpError::new(kinds::LIMIT, "run stopped")));
        }
        Ok(())
    }

    /// Called from the Luau interrupt: measures the clocks every 256 ticks.
    pub fn tick(&self) -> Result<(), OpError> {
        if self.held.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check()?;
        if signalled() {
            self.stop(OpError::new(kinds::INTERRUPTED, "interrupted by a signal"));
            return self.check();
        }
        if !self
            .ticks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
        {
            return Ok(());
        }
        if let Some(limit) = self.cpu_limit {
            let used = thread_cpu_time().saturating_sub(self.cpu_start);
            if used > limit {
                self.stop(cpu_exceeded(limit));
            }
        }
        if let (Some(deadline), Some(limit)) = (self.wall_deadline, self.wall_limit)
            && Instant::now() >= deadline
        {
            self.stop(wall_exceeded(limit));
        }
        self.check()
    }

    /// Hold the interrupt off (for the runtime's own bookkeeping calls into Lua).
    pub fn hold(&self, on: bool) {
        self.held.store(on, Ordering::Relaxed);
    }

    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }

    pub fn wall_limit(&self) -> Option<Duration> {
        self.wall_limit
    }
}

pub fn cpu_exceeded(limit: Duration) -> OpError {
    OpError::new(
        kinds::LIMIT,
        format!(
            "CPU limit exceeded: the script used more than {}s of CPU time",
            secs(limit)
        ),
    )
    .hint("raise it with --cpu-limit SECONDS, or look for a runaway loop")
}

pub fn wall_exceeded(limit: Duration) -> OpError {
    OpError::new(
        kinds::LIMIT,
        format!(
            "time limit exceeded: the run took longer than {}s",
            secs(limit)
        ),
    )
    .hint("raise it with --timeout SECONDS")
}

pub fn memory_exceeded(limit_mb: u64) -> OpError {
    OpError::new(
        kinds::LIMIT,
        format!("memory limit exceeded: the script needed more than {limit_mb} MB"),
    )
    .hint("raise it with --memory-limit MB, or build smaller tables/strings")
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    // Up to millisecond precision, without trailing zeros: 30, 1.5, 0.05.
    let text = format!("{s:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
