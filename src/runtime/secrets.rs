//! Secret values: held in Rust, handed to scripts as opaque handles, scrubbed from every output.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mlua::{MetaMethod, UserData, UserDataFields, UserDataMethods};
use serde_json::{Value, json};

use super::fault::{OpError, kinds};
use super::scrub::Scrubber;
use crate::ledger::key::UserKey;

/// The secrets loaded by one run, and the scrubber every output goes through.
pub struct SecretStore {
    values: Mutex<HashMap<String, String>>,
    /// `.env` of the project (read once).
    dotenv: BTreeMap<String, String>,
    pub scrubber: Arc<Scrubber>,
    key: Option<Arc<UserKey>>,
}

/// A script's reference to a secret: its name and fingerprint, never its value.
#[derive(Clone, Debug)]
pub struct SecretHandle {
    pub name: String,
    pub fingerprint: String,
}

impl SecretHandle {
    pub fn reference(&self) -> Value {
        json!({ "$secret": self.name, "fingerprint": self.fingerprint })
    }

    /// Parse a reference produced by `reference()`.
    pub fn from_reference(v: &Value) -> Option<SecretHandle> {
        let obj = v.as_object()?;
        if obj.len() != 2 {
            return None;
        }
        Some(SecretHandle {
            name: obj.get("$secret")?.as_str()?.to_string(),
            fingerprint: obj.get("fingerprint")?.as_str()?.to_string(),
        })
    }
}

impl UserData for SecretHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.name.clone()));
        fields.add_field_method_get("fingerprint", |_, this| Ok(this.fingerprint.clone()));
    }
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, _, ()| Ok(super::scrub::REDACTED));
        // `..` calls this with the handle on either side (`"x" .. h` as well as `h .. "x"`).
        methods.add_meta_function(
            MetaMethod::Concat,
            |_, (a, b): (mlua::Value, mlua::Value)| -> mlua::Result<()> {
                let name = [a, b]
                    .iter()
                    .find_map(|v| match v {
                        mlua::Value::UserData(ud) => {
                            ud.borrow::<SecretHandle>().ok().map(|h| h.name.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                Err(OpError::invalid(format!(
                    "cannot concatenate secret {name}: its value never enters the script; pass \
                     the handle itself to a primitive (e.g. exec env)"
                ))
                .into_lua())
            },
        );
        methods.add_meta_method(MetaMethod::Eq, |_, this, other: mlua::AnyUserData| {
            Ok(other
                .borrow::<SecretHandle>()
                .is_ok_and(|o| o.name == this.name && o.fingerprint == this.fingerprint))
        });
    }
}

impl SecretStore {
    pub fn new(dotenv: BTreeMap<String, String>, key: Option<Arc<UserKey>>) -> Self {
        SecretStore {
            values: Mutex::new(HashMap::new()),
            dotenv,
            scrubber: Arc::new(Scrubber::new()),
            key,
        }
    }

    /// Register, for scrubbing only, the values the run may load: the named secrets it was granted
    /// (`secrets:NAME`), or every `.env` value when it may load any. Output produced before the
    /// script calls `secrets.get` (say, a child printing its environment) is then scrubbed too.
    pub fn preload(&self, any: bool, names: &[String]) {
        for name in names {
            if let Some(v) = std::env::var(name)
                .ok()
                .or_else(|| self.dotenv.get(name).cloned())
            {
                self.scrubber.add(&v);
            }
        }
        if any {
            for v in self.dotenv.values() {
                self.scrubber.add(v);
            }
        }
    }

    /// Look a secret up (environment first, then `.env`), register it for scrubbing and return
    /// its handle. A missing secret is `not_found` (the message names where it looked), one too
    /// short to redact reliably is `invalid_argument`.
    pub fn load(&self, name: &str) -> Result<SecretHandle, OpError> {
        let value = std::env::var(name)
            .ok()
            .or_else(|| self.dotenv.get(name).cloned())
            .ok_or_else(|| {
                OpError::new(
                    kinds::NOT_FOUND,
                    format!("secret {name} is not set in the environment or in the project's .env"),
                )
                .hint(format!("export {name}=... or add it to the project's .env"))
            })?;
        if value.trim().len() < super::scrub::MIN_SECRET_LEN {
            return Err(OpError::invalid(format!(
                "secret {name} is shorter than {} characters and could not be redacted reliably",
                super::scrub::MIN_SECRET_LEN
            ))
            .hint("use a longer secret value"));
        }
        if !self.scrubber.add(&value) {
            return Err(OpError::new(
                "internal",
                format!("secret {name} could not be registered for redaction, so it is not loaded"),
            ));
        }
        let fingerprint = self.fingerprint(&value);
        if let Ok(mut m) = self.values.lock() {
            m.insert(name.to_string(), value);
        }
        Ok(SecretHandle {
            name: name.to_string(),
            fingerprint,
        })
    }

    /// Register a value derived from secrets (say, a URL with a password interpolated into it)
    /// under an internal name, and return its handle. The name is not a loadable secret.
    pub fn derive(&self, name: &str, value: &str) -> Result<SecretHandle, OpError> {
        if !self.scrubber.add(value) && value.trim().len() >= super::scrub::MIN_SECRET_LEN {
            return Err(OpError::new(
                "internal",
                "a secret-bearing value could not be registered for redaction",
            ));
        }
        let fingerprint = self.fingerprint(value);
        if let Ok(mut m) = self.values.lock() {
            m.insert(name.to_string(), value.to_string());
        }
        Ok(SecretHandle {
            name: name.to_string(),
            fingerprint,
        })
    }

    /// HMAC of the value under the per-user key (stable across runs of the same user).
    pub fn fingerprint(&self, value: &str) -> String {
        match &self.key {
            Some(k) => format!(
                "hmac-sha256:{}",
                &k.sign("stagecraft-secret-v1", value.as_bytes())[..32]
            ),
            None => "unkeyed".to_string(),
        }
    }

    /// The value behind a handle, resolved at the moment a primitive sends it.
    pub fn resolve(&self, handle: &SecretHandle) -> Option<String> {
        self.values.lock().ok()?.get(&handle.name).cloned()
    }
}
