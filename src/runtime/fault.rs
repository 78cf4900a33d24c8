//! Operational errors raised by primitives: structured (`kind`, `message`, `hint`) so scripts can
//! branch on `kind` after `pcall`, and so the CLI can pick the exit code.

use mlua::{MetaMethod, UserData, UserDataFields, UserDataMethods};
use serde::{Deserialize, Serialize};

use crate::error::Kind;

pub mod kinds {
    pub const PERMISSION: &str = "permission_denied";
    /// A user's input refused by a script's own checks (a recipe input, a command argument):
    /// a usage error, exit code 2.
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const LIMIT: &str = "limit_exceeded";
    pub const DIVERGENCE: &str = "replay_divergence";
    pub const INVALID: &str = "invalid_argument";
    pub const NOT_FOUND: &str = "not_found";
    pub const IO: &str = "io";
    pub const TIMEOUT: &str = "timeout";
    pub const NETWORK: &str = "network";
    pub const INTERRUPTED: &str = "interrupted";
    pub const TASK: &str = "task_failed";
    pub const LEDGER: &str = "ledger_error";
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpError {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl OpError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        OpError {
            kind: kind.to_string(),
            message: message.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        OpError::new(kinds::INVALID, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        OpError::new(kinds::IO, message)
    }

    /// `permission denied: exec.run needs capability exec:curl (grant with ...)`.
    pub fn permission(op: &str, cap: &str) -> Self {
        OpError::new(
            kinds::PERMISSION,
            format!(
                "permission denied: {op} needs capability {cap} (grant with --allow {cap} or in stagecraft.yml)"
            ),
        )
        .hint(format!("add `- {cap}` under `permissions:` in stagecraft.yml, or pass --allow {cap}"))
    }

    /// The CLI error kind (and so the exit code) for this failure.
    pub fn cli_kind(&self) -> Kind {
        match self.kind.as_str() {
            kinds::PERMISSION => Kind::Permission,
            kinds::LIMIT => Kind::Limit,
            kinds::DIVERGENCE => Kind::Divergence,
            kinds::INTERRUPTED => Kind::Interrupted,
            kinds::LEDGER => Kind::Ledger,
            kinds::INVALID_INPUT => Kind::Usage,
            _ => Kind::Script,
        }
    }

    pub fn into_lua(self) -> mlua::Error {
        mlua::Error::external(self)
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}

/// What scripts see after `pcall`: `err.kind`, `err.message`, `err.hint`, `tostring(err)`.
#[derive(Debug, Clone)]
pub struct ErrorObject(pub OpError);

impl UserData for ErrorObject {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("kind", |_, this| Ok(this.0.kind.clone()));
        fields.add_field_method_get("message", |_, this| Ok(this.0.message.clone()));
        fields.add_field_method_get("hint", |_, this| Ok(this.0.hint.clone()));
    }
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.0.message.clone())
        });
    }
}

/// Find the structured error inside an mlua error, if there is one.
pub fn find_op_error(err: &mlua::Error) -> Option<OpError> {
    err.downcast_ref::<OpError>().cloned()
}

/// The message of an mlua error without mlua's wrapping noise.
pub fn message_of(err: &mlua::Error) -> String {
    if let Some(op) = find_op_error(err) {
        return op.message;
    }
    match err {
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => first_part(m),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { cause, .. } => message_of(cause),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", message_of(cause)),
        mlua::Error::BadArgument {
            to,
            pos,
            name,
            cause,
        } => {
            let func = to.as_deref().unwrap_or("function");
            let arg = name
                .as_deref()
                .map(|n| format!(" '{n}'"))
                .unwrap_or_default();
            format!("bad argument #{pos}{arg} to {func}: {}", message_of(cause))
        }
        other => other.to_string(),
    }
}

/// The message without the traceback mlua appends.
fn first_part(m: &str) -> String {
    match m.find("\nstack traceback:") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}
