//! Small helpers shared by the CLI and the runtime.

/// The closest candidate to `input`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(input, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Format microseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(micros: i64) -> String {
    let nanos = i128::from(micros) * 1000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&fmt).unwrap_or_else(|_| micros.to_string())
        }
        Err(_) => micros.to_string(),
    }
}

/// A sortable, unique id: 48 bits of milliseconds then 80 random bits, Crockford base32 (26 chars).
pub fn sortable_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = (now_micros() / 1000) as u128;
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let mut value = (ms << 80) | random;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error and its sources, joined with `: `; a source already contained in the text so far
/// is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

/// Check an ssh `KexAlgorithms` value: algorithm names (letters, digits, `-`, `.`, `@`)
/// separated by commas, with an optional leading `+`, `-` or `^` as ssh_config allows.
pub fn check_kex(v: &str) -> Result<(), String> {
    let list = v.strip_prefix(['+', '-', '^']).unwrap_or(v);
    let ok = !list.is_empty()
        && list.split(',').all(|a| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '@'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "kex must be a comma-separated list of key exchange algorithms, e.g. \
             \"curve25519-sha256\" (see `ssh -Q kex`), found {v:?}"
        ))
    }
}

/// Read a child's pipe to the end, keeping at most `keep` bytes (and whether more came) and
/// handing every chunk to `on_chunk` as it arrives (for streaming). A read error ends the read.
pub async fn read_capped(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    keep: usize,
    mut on_chunk: impl FnMut(&[u8]),
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut all = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = keep.saturating_sub(all.len());
                all.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
                on_chunk(&buf[..n]);
            }
        }
    }
    (all, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let a = sortable_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = sortable_id();
        assert_eq!(a.len(), 26);
        assert!(a < b);
    }

    #[test]
    fn suggestion() {
        assert_eq!(did_you_mean("imgae", &["image", "name"]), Some("image"));
        assert_eq!(did_you_mean("zzz", &["image", "name"]), None);
    }
}
