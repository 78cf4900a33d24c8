//! The per-user signing key: signs ledger entries and the head checkpoint.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct UserKey {
    key: [u8; 32],
    /// First 16 hex chars of sha256(key): names the key without revealing it.
    pub id: String,
}

/// `$STAGECRAFT_HOME`, else `$XDG_CONFIG_HOME/stagecraft`, else `~/.config/stagecraft`.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("STAGECRAFT_HOME") {
        return Some(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("stagecraft"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("stagecraft"))
}

impl UserKey {
    /// Load the key, creating it (mode 0600) on first use.
    pub fn load_or_create() -> Result<UserKey> {
        let dir = home_dir().ok_or_else(|| {
            Error::ledger("cannot find a home for the signing key")
                .with_hint("set STAGECRAFT_HOME or HOME")
        })?;
        let path = dir.join("ledger.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(text.trim()).ok_or_else(|| {
                Error::ledger(format!("signing key {} is malformed", path.display()))
                    .with_hint("restore it from a backup; a new key cannot verify old entries")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::ledger(format!("cannot create {}: {e}", dir.display())))?;
                let key: [u8; 32] = rand::random();
                let tmp = dir.join(format!("ledger.key.{}", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| Error::ledger(format!("cannot write {}: {e}", tmp.display())))?;
                f.write_all(hex::encode(key).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::ledger(format!("cannot write {}: {e}", tmp.display())))?;
                // Another process may have won the race: keep whichever key landed first.
                if std::fs::hard_link(&tmp, &path).is_err() && !path.exists() {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(Error::ledger(format!("cannot create {}", path.display())));
                }
                let _ = std::fs::remove_file(&tmp);
                Self::load_or_create()
            }
            Err(e) => Err(Error::ledger(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn parse(text: &str) -> Option<UserKey> {
        let bytes = hex::decode(text).ok()?;
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(Self::from_bytes(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> UserKey {
        let id = hex::encode(&Sha256::digest(key)[..8]);
        UserKey { key, id }
    }

    /// HMAC-SHA256 under a domain label, hex encoded.
    pub fn sign(&self, domain: &str, data: &[u8]) -> String {
        // new_from_slice only fails for invalid key lengths, which HMAC does not have.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("hmac accepts any key");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        super::to_hex(&mac.finalize().into_bytes())
    }
}
