//! `cargo bench --bench core`: the engine's cost as a user sees it, measured on the real binary.
//!
//! Every figure is the median of several runs of the release-built `stagecraft` in a throwaway
//! project with a throwaway `STAGECRAFT_HOME`, next to a baseline measured the same way in the
//! same run:
//!
//! | metric                 | what is timed                                   | baseline                   |
//! |------------------------|-------------------------------------------------|----------------------------|
//! | empty run              | `stagecraft run empty.luau`, a new process each | spawning `/bin/true`       |
//! | recorded call overhead | 100k `os.time()` calls vs 100k no-op calls      | the no-op run              |
//! | replay throughput      | `stagecraft replay` of the 100k-call run        | replay of the no-op run    |
//! | peak RSS               | `ru_maxrss` of each empty run (`wait4`)         | `/bin/true`                |
//!
//! The report always exits 0. Run without `--bench` (as `cargo test --all-targets` does) it is a
//! smoke test instead: tiny sizes, one sample each, and a non-zero exit if anything failed.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stagecraft");

/// No single child may run longer than this; the whole report stops measuring after `BUDGET`.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
const BUDGET: Duration = Duration::from_secs(100);

/// How much to measure.
struct Sizes {
    empty_runs: usize,
    calls: usize,
    call_runs: usize,
    replay_runs: usize,
    warmup: usize,
}

const BENCH: Sizes = Sizes {
    empty_runs: 30,
    calls: 100_000,
    call_runs: 5,
    replay_runs: 5,
    warmup: 3,
};

const SMOKE: Sizes = Sizes {
    empty_runs: 2,
    calls: 1_000,
    call_runs: 1,
    replay_runs: 1,
    warmup: 1,
};

/// One finished child.
struct Sample {
    wall: Duration,
    /// Peak resident set size in KiB, from `wait4`'s rusage of exactly this child.
    max_rss_kb: i64,
}

/// Kills the child being measured when it overruns `CHILD_LIMIT` or the whole report overruns
/// `BUDGET`, so the report is bounded even if the binary hangs.
struct Watchdog {
    child: Arc<AtomicI32>,
    since: Arc<Mutex<Instant>>,
    over_budget: Arc<AtomicBool>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let child = Arc::new(AtomicI32::new(0));
        let since = Arc::new(Mutex::new(Instant::now()));
        let over_budget = Arc::new(AtomicBool::new(false));
        let (c, s, o) = (child.clone(), since.clone(), over_budget.clone());
        let begun = Instant::now();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if begun.elapsed() > BUDGET {
                    o.store(true, Ordering::SeqCst);
                }
                let pid = c.load(Ordering::SeqCst);
                let running_for = s.lock().map(|t| t.elapsed()).unwrap_or_default();
                if pid > 0 && (o.load(Ordering::SeqCst) || running_for > CHILD_LIMIT) {
                    // SAFETY: kill(2) has no memory-safety preconditions. The pid is our child,
                    // cleared as soon as wait4 returns; only a run that overran its limit is hit.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
        Watchdog {
            child,
            since,
            over_budget,
        }
    }

    fn over_budget(&self) -> bool {
        self.over_budget.load(Ordering::SeqCst)
    }
}

/// The throwaway project every command runs in.
struct Bench {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    dog: Watchdog,
    failures: Vec<String>,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::Builder::new()
            .prefix("sc-bench-")
            .tempdir()
            .expect("temp project dir");
        let home = tempfile::Builder::new()
            .prefix("sc-bench-home-")
            .tempdir()
            .expect("temp home dir");
        std::fs::write(dir.path().join("stagecraft.yml"), "name: bench\n").expect("write config");
        Bench {
            dir,
            home,
            dog: Watchdog::start(),
            failures: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).expect("write bench script");
    }

    /// A command with a clean environment, run in the project.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("STAGECRAFT_HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    fn stagecraft(&self, args: &[&str]) -> Command {
        self.command(BIN, args)
    }

    /// Spawn, wait with `wait4` (for this child's own rusage) and time it. Failures are
    /// remembered (with the child's stderr) and give `None`.
    fn measure(&mut self, what: &str, mut cmd: Command) -> Option<Sample> {
        if self.dog.over_budget() {
            return None;
        }
        let err_path = self.path("stderr.txt");
        let err_file = File::create(&err_path).expect("stderr file");
        cmd.stderr(err_file);
        let started = Instant::now();
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.failures.push(format!("{what}: cannot start: {e}"));
                return None;
            }
        };
        let pid = child.id() as libc::pid_t;
        if let Ok(mut t) = self.dog.since.lock() {
            *t = Instant::now();
        }
        self.dog.child.store(pid, Ordering::SeqCst);
        let mut status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid value; wait4 fills it in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child; status and usage point to owned locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let wall = started.elapsed();
        self.dog.child.store(0, Ordering::SeqCst);
        // The child is reaped; dropping the handle closes nothing that matters and never waits.
        drop(child);
        if rc != pid {
            self.failures.push(format!(
                "{what}: wait4 failed: {}",
                std::io::Error::last_os_error()
            ));
            return None;
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let why = if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("exit code {}", libc::WEXITSTATUS(status))
            };
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            self.failures
                .push(format!("{what}: {why}\n{}", stderr.trim_end()));
            return None;
        }
        Some(Sample {
            wall,
            max_rss_kb: usage.ru_maxrss,
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn ms(s: &Sample) -> f64 {
    s.wall.as_secs_f64() * 1e3
}

/// One row of the report.
struct Row {
    metric: &'static str,
    median: Option<f64>,
    unit: &'static str,
    baseline: Option<f64>,
    baseline_label: &'static str,
    baseline_unit: &'static str,
    /// The ratio printed: the measured process against the baseline process.
    ratio: Option<f64>,
    target: f64,
    higher_is_better: bool,
    samples: usize,
}

impl Row {
    fn verdict(&self) -> &'static str {
        match self.median {
            None => "ERROR",
            Some(m) if self.higher_is_better && m >= self.target => "PASS",
            Some(m) if !self.higher_is_better && m <= self.target => "PASS",
            Some(_) => "MISS",
        }
    }
}

fn fmt_num(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v >= 10_000.0 => format!("{:.0}k {unit}", v / 1e3),
        Some(v) if v >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

fn fmt_target(row: &Row) -> String {
    let op = if row.higher_is_better { ">=" } else { "<=" };
    format!("{op} {}", fmt_num(Some(row.target), row.unit))
}

fn print_report(rows: &[Row], smoke: bool) {
    println!();
    println!("Stagecraft core benchmark");
    println!("binary: {BIN}");
    println!(
        "temp project under {} (the ledger's fsyncs cost what this filesystem charges; set TMPDIR to compare)",
        std::env::temp_dir().display()
    );
    if smoke {
        println!("(test mode: tiny sizes, one sample each; the figures mean nothing)");
    }
    println!();
    let header = [
        "metric", "median", "baseline", "ratio", "target", "result", "n",
    ];
    let mut table: Vec<[String; 7]> = vec![header.map(str::to_string)];
    for r in rows {
        table.push([
            r.metric.to_string(),
            fmt_num(r.median, r.unit),
            match r.baseline {
                Some(_) => format!(
                    "{} {}",
                    r.baseline_label,
                    fmt_num(r.baseline, r.baseline_unit)
                ),
                None => format!("{} -", r.baseline_label),
            },
            r.ratio
                .map(|x| format!("{x:.1}x"))
                .unwrap_or_else(|| "-".into()),
            fmt_target(r),
            r.verdict().to_string(),
            r.samples.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
        if n == 0 {
            println!(
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
            );
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let sizes = if smoke { SMOKE } else { BENCH };
    let mut b = Bench::new();

    b.write("empty.luau", "");
    b.write(
        "calls.luau",
        &format!("local t = os.time\nfor _ = 1, {} do t() end\n", sizes.calls),
    );
    b.write(
        "noop.luau",
        &format!(
            "local function t() end\nfor _ = 1, {} do t() end\n",
            sizes.calls
        ),
    );

    // 1 and 4: empty runs (wall and peak RSS) against /bin/true, interleaved.
    for _ in 0..sizes.warmup {
        b.measure("warm-up /bin/true", b.command("/bin/true", &[]));
        b.measure("warm-up empty run", b.stagecraft(&["run", "empty.luau"]));
    }
    let (mut empty, mut truth) = (Vec::new(), Vec::new());
    for _ in 0..sizes.empty_runs {
        if let Some(s) = b.measure("/bin/true", b.command("/bin/true", &[])) {
            truth.push(s);
        }
        if let Some(s) = b.measure(
            "stagecraft run empty.luau",
            b.stagecraft(&["run", "empty.luau"]),
        ) {
            empty.push(s);
        }
    }

    // 2: the same loop with recorded calls and with a local no-op, each run on a fresh ledger so
    // every run does the same work. The last 100k-call and no-op ledgers are kept for replay.
    let ledger_of = |kind: &str, i: usize| format!("ledgers/{kind}-{i}/ledger.db");
    let (mut calls, mut noop) = (Vec::new(), Vec::new());
    for i in 0..sizes.call_runs {
        for (kind, script, out) in [
            ("noop", "noop.luau", &mut noop),
            ("calls", "calls.luau", &mut calls),
        ] {
            let ledger = ledger_of(kind, i);
            let cmd = b.stagecraft(&["run", "--ledger", &ledger, script]);
            if let Some(s) = b.measure(&format!("stagecraft run {script}"), cmd) {
                out.push(s);
            }
            // Keep only the last ledgers (for replay): each 100k-call one is tens of MB.
            if i + 1 < sizes.call_runs
                && let Some(dir) = b.path(&ledger).parent()
            {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    // 3: replay of the last 100k-call run, against replay of the last no-op run.
    let last = sizes.call_runs.saturating_sub(1);
    let (calls_ledger, noop_ledger) = (ledger_of("calls", last), ledger_of("noop", last));
    let (mut replay, mut replay_noop) = (Vec::new(), Vec::new());
    for _ in 0..sizes.replay_runs {
        let cmd = b.stagecraft(&["replay", "--ledger", &noop_ledger, "last"]);
        if let Some(s) = b.measure("stagecraft replay (no-op run)", cmd) {
            replay_noop.push(s);
        }
        let cmd = b.stagecraft(&["replay", "--ledger", &calls_ledger, "last"]);
        if let Some(s) = b.measure("stagecraft replay (100k-call run)", cmd) {
            replay.push(s);
        }
    }

    let n = sizes.calls as f64;
    let empty_ms = median(empty.iter().map(ms).collect());
    let true_ms = median(truth.iter().map(ms).collect());
    let calls_ms = median(calls.iter().map(ms).collect());
    let noop_ms = median(noop.iter().map(ms).collect());
    let replay_ms = median(replay.iter().map(ms).collect());
    let replay_noop_ms = median(replay_noop.iter().map(ms).collect());
    let rss = |v: &[Sample]| median(v.iter().map(|s| s.max_rss_kb as f64 / 1024.0).collect());
    let (empty_rss, true_rss) = (rss(&empty), rss(&truth));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };

    let rows = [
        Row {
            metric: "empty run, cold process (wall)",
            median: empty_ms,
            unit: "ms",
            baseline: true_ms,
            baseline_label: "/bin/true",
            baseline_unit: "ms",
            ratio: ratio(empty_ms, true_ms),
            target: 10.0,
            higher_is_better: false,
            samples: empty.len(),
        },
        Row {
            metric: "recorded call overhead",
            median: calls_ms.zip(noop_ms).map(|(c, o)| (c - o) * 1e3 / n),
            unit: "us/call",
            baseline: noop_ms,
            baseline_label: "no-op loop run",
            baseline_unit: "ms",
            ratio: ratio(calls_ms, noop_ms),
            target: 20.0,
            higher_is_better: false,
            samples: calls.len().min(noop.len()),
        },
        Row {
            metric: "replay throughput",
            median: replay_ms.map(|r| n / (r / 1e3)),
            unit: "calls/s",
            baseline: replay_noop_ms,
            baseline_label: "replay of no-op run",
            baseline_unit: "ms",
            ratio: ratio(replay_ms, replay_noop_ms),
            target: 100_000.0,
            higher_is_better: true,
            samples: replay.len(),
        },
        Row {
            metric: "peak RSS, empty run",
            median: empty_rss,
            unit: "MB",
            baseline: true_rss,
            baseline_label: "/bin/true",
            baseline_unit: "MB",
            ratio: ratio(empty_rss, true_rss),
            target: 20.0,
            higher_is_better: false,
            samples: empty.len(),
        },
    ];
    print_report(&rows, smoke);

    println!();
    println!("details:");
    println!(
        "  {}-call run {} vs no-op run {} (the difference is the recording and ledger cost)",
        sizes.calls,
        fmt_num(calls_ms, "ms"),
        fmt_num(noop_ms, "ms")
    );
    if let (Some(r), Some(o)) = (replay_ms, replay_noop_ms) {
        let net = (r > o).then(|| n / ((r - o) / 1e3));
        println!(
            "  replay of the {}-call run {} (no-op run {}): {} net of the fixed cost",
            sizes.calls,
            fmt_num(Some(r), "ms"),
            fmt_num(Some(o), "ms"),
            fmt_num(net, "calls/s")
        );
    }
    println!("  ratio = measured process / baseline process, both medians");
    if b.dog.over_budget() {
        println!(
            "  stopped early: the report ran past its {}s budget",
            BUDGET.as_secs()
        );
    }
    for f in &b.failures {
        println!("FAILED {f}");
    }
    if smoke && !b.failures.is_empty() {
        std::process::exit(1);
    }
}
