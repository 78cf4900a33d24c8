//! The ledger: an append-only, hash-chained SQLite record of runs and primitive calls.
//!
//! Every row of `entries` hashes the previous one over a canonical encoding and is signed with the
//! per-user key; UPDATE and DELETE are blocked by triggers; a signed head checkpoint lives beside
//! the database (`ledger.db.head`) so a truncated or fully re-hashed chain is detected.

pub mod key;
pub mod query;
pub mod verify;
pub mod writer;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    task TEXT NOT NULL,
    idx INTEGER NOT NULL,
    op TEXT NOT NULL,
    args TEXT NOT NULL,
    result TEXT,
    error TEXT,
    started_at INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_run ON entries(run_id, kind, seq);
CREATE INDEX IF NOT EXISTS entries_kind ON entries(kind, seq);
CREATE TABLE IF NOT EXISTS sources (sha256 TEXT PRIMARY KEY, content BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS sources_no_update BEFORE UPDATE ON sources
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS sources_no_delete BEFORE DELETE ON sources
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"#;

pub const TRIGGERS: &[&str] = &[
    "entries_no_update",
    "entries_no_delete",
    "sources_no_update",
    "sources_no_delete",
    "meta_no_update",
    "meta_no_delete",
];

/// Paths of the ledger and the files beside it.
#[derive(Debug, Clone)]
pub struct LedgerPaths {
    pub db: PathBuf,
}

impl LedgerPaths {
    pub fn new(db: PathBuf) -> Self {
        LedgerPaths { db }
    }
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut s = self.db.clone().into_os_string();
        s.push(suffix);
        PathBuf::from(s)
    }
    /// The signed head checkpoint.
    pub fn head(&self) -> PathBuf {
        self.sibling(".head")
    }
    /// Serialises writers across processes (commit + checkpoint update).
    pub fn lock(&self) -> PathBuf {
        self.sibling(".lock")
    }
    /// One lock file per live run: a run whose file is not locked has died.
    pub fn runs_dir(&self) -> PathBuf {
        self.sibling(".runs")
    }
}

/// An exclusive advisory lock on a file, released on drop.
pub struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::ledger(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::ledger(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(FileLock(file))
    }

    /// Try to take the lock without waiting: `None` when someone holds it.
    pub fn try_acquire(path: &Path) -> Option<FileLock> {
        let file = std::fs::OpenOptions::new().write(true).open(path).ok()?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (rc == 0).then_some(FileLock(file))
    }
}

/// Open (creating if needed) the ledger database with the schema in place.
pub fn open(paths: &LedgerPaths, create: bool) -> Result<Connection> {
    if !create && !paths.db.exists() {
        return Err(
            Error::ledger(format!("no ledger at {}", paths.db.display()))
                .with_hint("run a script first (stagecraft run FILE), or pass --ledger PATH"),
        );
    }
    if let Some(dir) = paths.db.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::ledger(format!("cannot create {}: {e}", dir.display())))?;
    }
    let flags = if create {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let mut conn = Connection::open_with_flags(&paths.db, flags)
        .map_err(|e| Error::ledger(format!("cannot open ledger {}: {e}", paths.db.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // WAL is a property of the file: switch once, under the writers' lock, so processes
    // starting together on a fresh project never race on the journal mode.
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        let _lock = FileLock::acquire(&paths.lock())?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Keep the WAL between runs: no checkpoint, WAL deletion and directory sync on every close
    // (the WAL is checkpointed as it grows, by whichever commit crosses the threshold).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    let has_schema: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'entries'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_schema {
        let _lock = FileLock::acquire(&paths.lock())?;
        // One transaction: another process sees no schema or the whole of it with its ledger id,
        // never an `entries` table without `meta` (two runs starting on a fresh project at once).
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let id = crate::util::sortable_id();
        tx.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('ledger_id', ?1)",
            [&id],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', '1')",
            [],
        )?;
        tx.commit()?;
        // A checkpoint for the empty chain, so a deleted head file is always noticed.
        if !paths.head().exists() {
            let key = key::UserKey::load_or_create()?;
            let ledger_id = ledger_id(&conn)?;
            writer::write_checkpoint(paths, &key, &ledger_id, 0, GENESIS)?;
        }
    }
    Ok(conn)
}

pub fn ledger_id(conn: &Connection) -> Result<String> {
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })?,
    )
}

/// One entry's fields as hashed. The canonical encoding is a JSON array in this field order.
pub struct EntryFields<'a> {
    pub seq: i64,
    pub run_id: &'a str,
    pub kind: &'a str,
    pub task: &'a str,
    pub idx: i64,
    pub op: &'a str,
    pub args: &'a str,
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
    pub started_at: i64,
    pub duration_us: i64,
}

impl EntryFields<'_> {
    /// sha256(prev_hash || "\n" || canonical(fields)), hex. The canonical form is the compact
    /// JSON array of the fields in declaration order, streamed straight into the hasher.
    pub fn hash(&self, prev_hash: &str) -> String {
        let fields = (
            self.seq,
            self.run_id,
            self.kind,
            self.task,
            self.idx,
            self.op,
            self.args,
            self.result,
            self.error,
            self.started_at,
            self.duration_us,
        );
        let mut h = HashWriter(Sha256::new());
        h.0.update(prev_hash.as_bytes());
        h.0.update(b"\n");
        // Writing into a hasher cannot fail, and these field types always serialise.
        let _ = serde_json::to_writer(&mut h, &fields);
        to_hex(&h.0.finalize())
    }
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lowercase hex without per-character allocation.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}
