//! The one error type of the CLI: every failure maps to a documented exit code and a hint.

use std::fmt;

/// Exit codes, documented in README.md ("Exit codes").
pub mod exit {
    pub const OK: i32 = 0;
    pub const SCRIPT: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PERMISSION: i32 = 3;
    pub const LIMIT: i32 = 4;
    pub const DIVERGENCE: i32 = 5;
    pub const VERIFY: i32 = 6;
    pub const LEDGER: i32 = 7;
    pub const INTERRUPTED: i32 = 130;
}

/// What kind of failure ended a command. Decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The script raised an error (syntax, runtime, a failed primitive).
    Script,
    /// Bad command line, bad `stagecraft.yml`, missing file.
    Usage,
    /// A primitive was called without the capability it needs.
    Permission,
    /// CPU, memory or wall-clock limit hit.
    Limit,
    /// Replay saw a different call than the one recorded.
    Divergence,
    /// `ledger verify` found tampering or corruption.
    Verify,
    /// The ledger could not be opened or written.
    Ledger,
    /// SIGINT / SIGTERM.
    Interrupted,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Script => exit::SCRIPT,
            Kind::Usage => exit::USAGE,
            Kind::Permission => exit::PERMISSION,
            Kind::Limit => exit::LIMIT,
            Kind::Divergence => exit::DIVERGENCE,
            Kind::Verify => exit::VERIFY,
            Kind::Ledger => exit::LEDGER,
            Kind::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// A failure reported by the CLI: one message, optional detail (traceback), optional hint.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Error::new(Kind::Usage, message)
    }
    pub fn ledger(message: impl Into<String>) -> Self {
        Error::new(Kind::Ledger, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\n{}", detail.trim_end())?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::ledger(format!("ledger database: {e}"))
    }
}
