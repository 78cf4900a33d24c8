//! Secret scrubbing for everything Stagecraft writes out.
//!
//! Scripts load secrets (API tokens, private keys) at run time, from any thread, and register them
//! with a shared [`Scrubber`]. Every byte written to stdout, stderr, error text and the ledger passes
//! through it, and each occurrence of a secret, in any of the forms it may take on the way out, is
//! replaced with [`REDACTED`].
//!
//! For every registered value the scrubber derives the patterns below, for the value itself, for
//! the value with surrounding whitespace trimmed and, for multi-line values, for each line of at
//! least [`MIN_SECRET_LEN`] bytes (so a single base64 line of a PEM key is caught when printed
//! alone):
//!
//! 1. the raw text;
//! 2. base64, standard and URL-safe alphabets, padded and unpadded, plus the *stable inner part*
//!    of the encoding at the three byte alignments a value can have when it is embedded in a longer
//!    string before encoding (only the characters fully determined by the value's own bytes);
//! 3. hex, lowercase and uppercase;
//! 4. percent-encoding (RFC 3986 strict form) and `application/x-www-form-urlencoded`;
//! 5. the JSON string-literal escape (as `serde_json` writes it), the same with `/` written as
//!    `\/`, and the ASCII-only escape (`\u00e9`) that Python's `json.dumps` writes by default.
//!
//! Derived patterns shorter than [`MIN_SECRET_LEN`] bytes are dropped. All patterns are matched at
//! once with an Aho-Corasick automaton (leftmost-longest), rebuilt whenever a secret is added: adds
//! are rare, scrubs are frequent. Overlapping occurrences are merged and replaced by one marker, so
//! no byte of any occurrence survives.
//!
//! Known limit: the marker itself is not re-scanned. A pathological secret that overlaps the text
//! `[REDACTED]` (for instance the value `ACTED]xyz`) could reappear where a marker meets the text
//! next to it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Shortest secret accepted by [`Scrubber::add`], in bytes after trimming whitespace; also the
/// shortest derived pattern kept. Shorter values would redact too much ordinary text.
pub const MIN_SECRET_LEN: usize = 6;

/// The text every occurrence of a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Percent-encoding set for the strict form: everything except RFC 3986 unreserved characters.
const STRICT_URL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Multiplier of the polynomial hash used to recognise pattern prefixes (an odd 64-bit constant).
const PREFIX_HASH_BASE: u64 = 0x0000_0100_0000_01b3;

/// Mixes a prefix's length into its hash so prefixes of different lengths rarely share a key.
const PREFIX_LEN_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// Thread-safe registry of secret values and the forms they may appear in.
///
/// Cheap to share behind an [`Arc`]: scrubbing takes a read lock only long enough to clone the
/// current matcher's `Arc`, so adds never block on a long scrub and scrubs never see a half-built
/// matcher.
#[derive(Default)]
pub struct Scrubber {
    /// The matcher in force; `None` until the first secret is registered.
    current: RwLock<Option<Arc<Matcher>>>,
    /// Every pattern registered so far. Held for the whole of [`Scrubber::add`], which serializes
    /// concurrent adds without blocking readers while the automaton is built.
    patterns: Mutex<BTreeSet<String>>,
}

/// An immutable snapshot of all patterns, ready to search with.
struct Matcher {
    /// Leftmost-longest automaton over every pattern.
    automaton: AhoCorasick,
    /// Length in bytes of the longest pattern.
    max_len: usize,
    /// Number of patterns (for `Debug`, which must never show them).
    count: usize,
    /// For each byte value, the length of the longest pattern starting with it (0 for none): a
    /// cheap filter before looking a tail up in `prefixes`.
    longest_from: [usize; 256],
    /// Keys ([`prefix_key`]) of every proper prefix of every pattern. A false positive only makes
    /// a stream hold back a few more bytes; a prefix is never missing.
    prefixes: PrefixSet,
}

/// Set of prefix keys; the keys are hashes already, so they are not hashed again.
type PrefixSet = HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// [`Hasher`] for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(PREFIX_LEN_MIX);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A streaming scrubber for one output stream (e.g. a child's stdout forwarded to the terminal).
///
/// Produces exactly the same bytes as [`Scrubber::scrub_bytes`] on the whole stream, however the
/// stream is cut into chunks.
pub struct StreamScrubber {
    /// The registry; secrets added to it mid-stream apply from the next chunk on.
    scrubber: Arc<Scrubber>,
    /// Bytes received but not yet decided: they could be the start of a secret.
    pending: Vec<u8>,
    /// How many leading bytes of `pending` lie inside an occurrence whose marker was already
    /// emitted; they are kept only because a later, overlapping occurrence may start among them.
    covered: usize,
}

impl Scrubber {
    /// Creates an empty scrubber.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a secret value. Returns false (and registers nothing) if the value is shorter than
    /// MIN_SECRET_LEN bytes after trimming whitespace.
    ///
    /// Also returns false, registering nothing, in the (theoretical) case that the automaton
    /// cannot be built because it would exceed the matcher's internal size limits. Registering a
    /// value twice is harmless and returns true.
    pub fn add(&self, value: &str) -> bool {
        if value.trim().len() < MIN_SECRET_LEN {
            return false;
        }
        let derived = derive_patterns(value);
        let mut patterns = self.patterns.lock().unwrap_or_else(PoisonError::into_inner);
        let new: Vec<String> = derived
            .into_iter()
            .filter(|p| !patterns.contains(p))
            .collect();
        if new.is_empty() {
            return true;
        }
        let mut next = patterns.clone();
        next.extend(new.iter().cloned());
        let automaton = match AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&next)
        {
            Ok(automaton) => automaton,
            Err(_) => return false,
        };
        let mut prefixes = self
            .snapshot()
            .map(|m| m.prefixes.clone())
            .unwrap_or_default();
        for pattern in &new {
            insert_prefixes(pattern.as_bytes(), &mut prefixes);
        }
        let mut longest_from = [0usize; 256];
        for pattern in &next {
            if let Some(&first) = pattern.as_bytes().first() {
                let longest = &mut longest_from[usize::from(first)];
                *longest = (*longest).max(pattern.len());
            }
        }
        let matcher = Matcher {
            automaton,
            max_len: next.iter().map(String::len).max().unwrap_or(0),
            count: next.len(),
            longest_from,
            prefixes,
        };
        *patterns = next;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(matcher));
        true
    }

    /// True when no secret is registered (fast path: scrub functions return input borrowed).
    pub fn is_empty(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Scrub a complete string.
    ///
    /// Returns the input borrowed, without allocating, when it contains no secret.
    pub fn scrub<'a>(&self, s: &'a str) -> Cow<'a, str> {
        match self.snapshot() {
            Some(matcher) => matcher.scrub_str(s),
            None => Cow::Borrowed(s),
        }
    }

    /// Scrub a complete byte string that need not be UTF-8; bytes outside secrets pass through
    /// unchanged.
    pub fn scrub_bytes(&self, b: &[u8]) -> Vec<u8> {
        match self.snapshot() {
            Some(matcher) if matcher.automaton.is_match(b) => {
                let mut out = Vec::with_capacity(b.len());
                matcher.redact_into(b, 0, b.len(), &mut out);
                out
            }
            _ => b.to_vec(),
        }
    }

    /// Scrub every string (values and object keys) inside a JSON value in place.
    ///
    /// When scrubbing turns two keys of one object into the same text, the later key gets a
    /// ` #2`, ` #3`, … suffix so that no value is lost.
    pub fn scrub_json(&self, v: &mut serde_json::Value) {
        if let Some(matcher) = self.snapshot() {
            matcher.scrub_json(v);
        }
    }

    /// Longest pattern length in bytes (0 when empty).
    pub fn max_pattern_len(&self) -> usize {
        self.snapshot().map_or(0, |m| m.max_len)
    }

    /// A streaming scrubber for one output stream (e.g. a child's stdout forwarded to the
    /// terminal).
    pub fn stream(self: &Arc<Self>) -> StreamScrubber {
        StreamScrubber {
            scrubber: Arc::clone(self),
            pending: Vec::new(),
            covered: 0,
        }
    }

    /// The matcher in force, if any; the lock is released before returning.
    fn snapshot(&self) -> Option<Arc<Matcher>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every registered pattern, for tests that check none survives.
    #[cfg(test)]
    fn patterns(&self) -> Vec<String> {
        self.patterns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

impl fmt::Debug for Scrubber {
    /// Shows only how many patterns are registered, never the patterns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("patterns", &self.snapshot().map_or(0, |m| m.count))
            .finish()
    }
}

impl Matcher {
    /// Scrubs a string; borrowed when nothing matches.
    fn scrub_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let hay = s.as_bytes();
        if !self.automaton.is_match(hay) {
            return Cow::Borrowed(s);
        }
        let mut out = Vec::with_capacity(hay.len());
        self.redact_into(hay, 0, hay.len(), &mut out);
        // Patterns are valid UTF-8, so matches start and end on character boundaries and the
        // result is valid UTF-8; the lossy fallback is never taken.
        match String::from_utf8(out) {
            Ok(text) => Cow::Owned(text),
            Err(err) => Cow::Owned(String::from_utf8_lossy(err.as_bytes()).into_owned()),
        }
    }

    /// Copies `hay[done..cutoff]` to `out`, replacing every run of overlapping matches with one
    /// marker, and returns how far `hay` is handled (at least `cutoff`, more when the last run
    /// extends past it).
    ///
    /// Only matches starting before `cutoff` are considered: the caller guarantees that every
    /// match starting there lies wholly inside `hay`. The first `done` bytes are already covered
    /// by a marker the caller emitted, so a match starting among them extends that run.
    ///
    /// After each match the search resumes one byte after its start, so every position where a
    /// pattern starts is visited (leftmost-longest reports the longest pattern at the leftmost
    /// start) and the union of all occurrences is redacted, overlapping ones included.
    fn redact_into(&self, hay: &[u8], mut done: usize, cutoff: usize, out: &mut Vec<u8>) -> usize {
        let cutoff = cutoff.min(hay.len());
        let mut pos = 0;
        while pos < cutoff {
            let Some(m) = self.automaton.find(Input::new(hay).span(pos..hay.len())) else {
                break;
            };
            if m.start() >= cutoff {
                break;
            }
            if m.start() < done {
                done = done.max(m.end());
            } else {
                out.extend_from_slice(hay.get(done..m.start()).unwrap_or_default());
                out.extend_from_slice(REDACTED.as_bytes());
                done = m.end();
            }
            pos = m.start() + 1;
        }
        if done < cutoff {
            out.extend_from_slice(hay.get(done..cutoff).unwrap_or_default());
            done = cutoff;
        }
        done
    }

    /// The first position of `buf` from which the rest of `buf` is a proper prefix of some
    /// pattern (`buf.len()` when there is none): bytes before it are decided, bytes from it on
    /// could still become a secret. Never more than `max_len - 1` bytes before the end.
    fn undecided_from(&self, buf: &[u8]) -> usize {
        let lo = buf.len().saturating_sub(self.max_len.saturating_sub(1));
        let mut cut = buf.len();
        let mut hash = 0u64;
        let mut power = 1u64;
        let tail = buf.get(lo..).unwrap_or_default();
        for (i, &byte) in tail.iter().enumerate().rev() {
            hash = hash.wrapping_add((u64::from(byte) + 1).wrapping_mul(power));
            power = power.wrapping_mul(PREFIX_HASH_BASE);
            let len = tail.len() - i;
            if len < self.longest_from[usize::from(byte)]
                && self.prefixes.contains(&prefix_key(hash, len))
            {
                cut = lo + i;
            }
        }
        cut
    }

    /// Scrubs all strings and keys of a JSON value in place.
    fn scrub_json(&self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) => {
                if let Cow::Owned(clean) = self.scrub_str(s) {
                    *s = clean;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.scrub_json(item)),
            Value::Object(map) => {
                map.values_mut().for_each(|item| self.scrub_json(item));
                if !map.keys().any(|k| self.automaton.is_match(k)) {
                    return;
                }
                let old = std::mem::take(map);
                for (key, value) in old {
                    let clean = self.scrub_str(&key).into_owned();
                    let mut unique = clean.clone();
                    let mut n = 2;
                    while map.contains_key(&unique) {
                        unique = format!("{clean} #{n}");
                        n += 1;
                    }
                    map.insert(unique, value);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

impl StreamScrubber {
    /// Feed a chunk; returns the bytes that are safe to emit now. A secret split across two
    /// chunks must still be redacted: hold back at most (max_pattern_len - 1) trailing bytes that
    /// could be the start of a match. Bytes (not necessarily UTF-8).
    ///
    /// Only a trailing part that is the beginning of some pattern is held back, so a prompt
    /// printed without a newline is normally forwarded at once.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        self.drain(false)
    }

    /// End of stream: returns the remaining scrubbed bytes.
    ///
    /// The scrubber is then empty and may be reused for a new stream.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    /// Emits every decided byte of `pending` (all of them at the end of the stream).
    fn drain(&mut self, at_end: bool) -> Vec<u8> {
        let Some(matcher) = self.scrubber.snapshot() else {
            self.covered = 0;
            return std::mem::take(&mut self.pending);
        };
        let cutoff = if at_end {
            self.pending.len()
        } else {
            matcher.undecided_from(&self.pending)
        };
        let mut out = Vec::with_capacity(self.pending.len());
        let done = matcher.redact_into(&self.pending, self.covered, cutoff, &mut out);
        self.pending.drain(..cutoff);
        self.covered = done.saturating_sub(cutoff).min(self.pending.len());
        out
    }
}

impl fmt::Debug for StreamScrubber {
    /// Shows only how many bytes are held back, never the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScrubber")
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// Key under which a prefix of `len` bytes with polynomial hash `hash` is stored; mixed so that
/// its high bits, which the set's table uses, depend on every input bit.
fn prefix_key(hash: u64, len: usize) -> u64 {
    let mut key = hash ^ (len as u64).wrapping_mul(PREFIX_LEN_MIX);
    key ^= key >> 31;
    key = key.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    key ^ (key >> 29)
}

/// Adds the key of every proper prefix of `pattern` to `set`.
fn insert_prefixes(pattern: &[u8], set: &mut PrefixSet) {
    let mut hash = 0u64;
    for (i, &byte) in pattern
        .iter()
        .enumerate()
        .take(pattern.len().saturating_sub(1))
    {
        hash = hash
            .wrapping_mul(PREFIX_HASH_BASE)
            .wrapping_add(u64::from(byte) + 1);
        set.insert(prefix_key(hash, i + 1));
    }
}

/// Every pattern derived from a secret value, each at least [`MIN_SECRET_LEN`] bytes long.
fn derive_patterns(value: &str) -> BTreeSet<String> {
    let mut bases = BTreeSet::from([value, value.trim()]);
    if value.contains('\n') {
        for line in value.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().len() >= MIN_SECRET_LEN {
                bases.insert(line);
                bases.insert(line.trim());
            }
        }
    }
    let mut out = BTreeSet::new();
    for base in bases {
        add_forms(base, &mut out);
    }
    out.retain(|p| p.len() >= MIN_SECRET_LEN);
    out
}

/// Adds `base` and every encoded form of it to `out`.
fn add_forms(base: &str, out: &mut BTreeSet<String>) {
    let bytes = base.as_bytes();
    out.insert(base.to_owned());

    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.insert(engine.encode(bytes));
    }
    for offset in 0..3 {
        if let Some(inner) = base64_inner(bytes, offset) {
            out.insert(inner.replace('+', "-").replace('/', "_"));
            out.insert(inner);
        }
    }

    out.insert(hex::encode(bytes));
    out.insert(hex::encode_upper(bytes));

    let mut add_if_different = |form: String| {
        if form != base {
            out.insert(form);
        }
    };
    add_if_different(percent_encoding::percent_encode(bytes, STRICT_URL).to_string());
    add_if_different(form_urlencode(bytes));
    if let Some(escaped) = json_escape(base) {
        add_if_different(escaped.replace('/', "\\/"));
        add_if_different(json_ascii(&escaped));
        add_if_different(escaped);
    }
}

/// The standard-alphabet base64 characters determined by `bytes` alone when they follow
/// `offset` (0, 1 or 2) other bytes inside a longer encoded string; `None` when there are none.
fn base64_inner(bytes: &[u8], offset: usize) -> Option<String> {
    let mut shifted = vec![0u8; offset];
    shifted.extend_from_slice(bytes);
    let encoded = STANDARD_NO_PAD.encode(&shifted);
    // Character i encodes bits [6i, 6i + 6); the value's bits are [8 * offset, 8 * (offset + len)).
    let start = (8 * offset).div_ceil(6);
    let end = 8 * shifted.len() / 6;
    encoded.get(start..end).map(str::to_owned)
}

/// `application/x-www-form-urlencoded` byte serialization: `*-._` and alphanumerics kept, space
/// as `+`, everything else percent-encoded with uppercase hex.
fn form_urlencode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        match byte {
            b'*' | b'-' | b'.' | b'_' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
    }
    out
}

/// The text as it appears between the quotes of a JSON string literal written by `serde_json`.
fn json_escape(text: &str) -> Option<String> {
    let quoted = serde_json::to_string(text).ok()?;
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.to_owned())
}

/// A JSON-escaped string with every non-ASCII character written as `\uXXXX` (lowercase hex,
/// surrogate pairs above U+FFFF), as Python's `json.dumps` does by default.
fn json_ascii(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A scrubber holding the given secrets, each of which must be accepted.
    fn scrubber(secrets: &[&str]) -> Arc<Scrubber> {
        let s = Arc::new(Scrubber::new());
        for secret in secrets {
            assert!(s.add(secret), "secret {secret:?} refused");
        }
        s
    }

    /// Asserts that no registered pattern occurs in `out`.
    fn assert_clean(s: &Scrubber, out: &str) {
        for p in s.patterns() {
            assert!(!out.contains(&p), "pattern {p:?} survives in {out:?}");
        }
    }

    /// Streams `input` cut at `cuts` and returns the concatenated output.
    fn stream_with_cuts(s: &Arc<Scrubber>, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut stream = s.stream();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            out.extend(stream.push(&input[from..cut]));
            from = cut;
        }
        out.extend(stream.push(&input[from..]));
        out.extend(stream.finish());
        out
    }

    /// Deterministic xorshift64* generator for property-style tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform-ish in `0..n` (`n > 0`).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        fn string(&mut self, alphabet: &[char], min: usize, max: usize) -> String {
            let len = min + self.below(max - min + 1);
            (0..len).map(|_| *self.pick(alphabet)).collect()
        }

        /// Between 0 and `max` random bytes.
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = self.below(max + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn raw_value_is_redacted() {
        let s = scrubber(&["hunter2-secret"]);
        assert_eq!(
            s.scrub("token=hunter2-secret; done"),
            "token=[REDACTED]; done"
        );
    }

    #[test]
    fn repeated_and_adjacent_occurrences_are_all_redacted() {
        let s = scrubber(&["s3cr3tvalue"]);
        assert_eq!(
            s.scrub("s3cr3tvalues3cr3tvalue and s3cr3tvalue"),
            "[REDACTED][REDACTED] and [REDACTED]"
        );
    }

    #[test]
    fn overlapping_occurrences_leave_nothing_behind() {
        let s = scrubber(&["abcabc"]);
        assert_eq!(s.scrub("x abcabcabc y"), "x [REDACTED] y");
        let s = scrubber(&["abcdefgh", "efghijkl"]);
        assert_eq!(s.scrub("<abcdefghijkl>"), "<[REDACTED]>");
    }

    #[test]
    fn no_match_borrows_the_input() {
        let s = scrubber(&["topsecretvalue"]);
        assert!(matches!(s.scrub("nothing to see"), Cow::Borrowed(_)));
        let empty = Scrubber::new();
        assert!(empty.is_empty());
        assert!(matches!(empty.scrub("anything"), Cow::Borrowed(_)));
        assert_eq!(empty.max_pattern_len(), 0);
    }

    #[test]
    fn short_values_are_refused() {
        let s = Scrubber::new();
        assert!(!s.add(""));
        assert!(!s.add("abc"));
        assert!(!s.add("abcde"));
        assert!(!s.add("   abcd   \n"));
        assert!(s.is_empty());
        assert_eq!(s.scrub("abcde abcd"), "abcde abcd");
        assert!(s.add("abcdef"));
        assert!(!s.is_empty());
        assert!(s.add("abcdef"), "adding twice is accepted");
        assert_eq!(s.scrub("x abcdef y"), "x [REDACTED] y");
    }

    #[test]
    fn trimmed_value_is_redacted() {
        let s = scrubber(&["  padded-token\n"]);
        assert_eq!(s.scrub("[padded-token]"), "[[REDACTED]]");
    }

    #[test]
    fn multi_line_value_is_redacted_line_by_line() {
        let key =
            "-----BEGIN KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\r\n-----END KEY-----\r\n";
        let s = scrubber(&[key]);
        assert_eq!(
            s.scrub("line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"),
            "line: [REDACTED]\n"
        );
        assert_eq!(s.scrub(key), "[REDACTED]");
        // A line's encodings are redacted too.
        let b64 = STANDARD.encode("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC");
        assert_eq!(s.scrub(&b64), "[REDACTED]");
        // Short lines are not patterns on their own.
        let s = scrubber(&["abc\nlonger-line\nxy"]);
        assert_eq!(s.scrub("abc xy longer-line"), "abc xy [REDACTED]");
    }

    #[test]
    fn base64_variants_are_redacted() {
        // Bytes chosen so that the standard and URL-safe encodings differ and padding is needed.
        let secret = "s3cr\u{ff}?>~\u{3fe}xy";
        let encodings = [
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
        ];
        assert_ne!(encodings[0], encodings[2], "alphabets must differ");
        assert!(encodings[0].ends_with('='), "padding must be present");
        let s = scrubber(&[secret]);
        for encoded in &encodings {
            let text = format!("Authorization: Basic {encoded}\n");
            assert_eq!(s.scrub(&text), "Authorization: Basic [REDACTED]\n");
        }
    }

    #[test]
    fn base64_of_embedded_secret_is_redacted_at_every_alignment() {
        let secret = "my-API-token\u{ff}?>~\u{3fe}";
        let s = scrubber(&[secret]);
        for prefix_len in 0..9 {
            let prefix: Vec<u8> = (0..prefix_len).map(|i| b'a' + i as u8).collect();
            let mut plain = prefix.clone();
            plain.extend_from_slice(format!("{secret}:suffix-data").as_bytes());
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&plain);
                let out = s.scrub(&encoded);
                assert!(out.contains(REDACTED), "offset {prefix_len}: {out}");
                assert_clean(&s, &out);
                // The characters encoding the prefix's first whole groups survive.
                let kept = engine.encode(&prefix[..prefix_len / 3 * 3]);
                assert!(out.starts_with(&kept), "offset {prefix_len}: {out}");
                // What remains does not decode to anything containing the secret.
                let inner = base64_inner(secret.as_bytes(), prefix_len % 3).unwrap_or_default();
                assert!(!out.contains(&inner));
                assert!(!out.contains(&inner.replace('+', "-").replace('/', "_")));
            }
        }
    }

    #[test]
    fn hex_is_redacted_in_both_cases() {
        let secret = "\u{fe}key-\u{ab}cdef";
        let s = scrubber(&[secret]);
        let lower = hex::encode(secret);
        let upper = hex::encode_upper(secret);
        assert_ne!(lower, upper);
        assert_eq!(s.scrub(&format!("0x{lower}.")), "0x[REDACTED].");
        assert_eq!(s.scrub(&format!("0x{upper}.")), "0x[REDACTED].");
    }

    #[test]
    fn url_encoded_forms_are_redacted() {
        let secret = "pass word&more/x";
        let s = scrubber(&[secret]);
        assert_eq!(
            s.scrub("https://h/?p=pass%20word%26more%2Fx&q=1"),
            "https://h/?p=[REDACTED]&q=1"
        );
        assert_eq!(s.scrub("p=pass+word%26more%2Fx&q=1"), "p=[REDACTED]&q=1");
        assert_eq!(s.scrub("raw: pass word&more/x"), "raw: [REDACTED]");
    }

    #[test]
    fn url_forms_equal_to_raw_are_not_duplicated() {
        let patterns = derive_patterns("plain_token-1.2x3");
        let mut expected = BTreeSet::new();
        add_forms("plain_token-1.2x3", &mut expected);
        assert_eq!(patterns, expected);
        assert!(!patterns.iter().any(|p| p.contains('%')));
    }

    #[test]
    fn json_escaped_forms_are_redacted() {
        let secret = "pa\"ss\nword/\u{e9}xyz";
        let s = scrubber(&[secret]);
        let doc = serde_json::to_string(&json!({ "password": secret })).unwrap_or_default();
        assert_eq!(doc, r#"{"password":"pa\"ss\nword/éxyz"}"#);
        assert_eq!(s.scrub(&doc), r#"{"password":"[REDACTED]"}"#);
        assert_eq!(
            s.scrub(r#"{"password":"pa\"ss\nword\/éxyz"}"#),
            r#"{"password":"[REDACTED]"}"#
        );
        assert_eq!(
            s.scrub(r#"{"password": "pa\"ss\nword/\u00e9xyz"}"#),
            r#"{"password": "[REDACTED]"}"#
        );
    }

    #[test]
    fn scrub_json_cleans_nested_keys_and_values() {
        let s = scrubber(&["sekrit-value", "other-secret"]);
        let mut v = json!({
            "plain": "keep me",
            "sekrit-value": 1,
            "nested": {
                "list": ["a sekrit-value b", 3, null, true, {"k": "other-secret"}],
                "key other-secret": {"inner": "sekrit-value"}
            },
            "other-secret": 2
        });
        s.scrub_json(&mut v);
        // Keys are sorted (no preserve_order), so which secret key gets "#2" depends on the order.
        let mut values: Vec<i64> = ["[REDACTED]", "[REDACTED] #2"]
            .iter()
            .filter_map(|k| v[*k].as_i64())
            .collect();
        values.sort();
        assert_eq!(values, vec![1, 2]);
        assert_eq!(v["plain"], "keep me");
        assert_eq!(
            v["nested"],
            json!({
                "list": ["a [REDACTED] b", 3, null, true, {"k": "[REDACTED]"}],
                "key [REDACTED]": {"inner": "[REDACTED]"}
            })
        );
        let text = v.to_string();
        assert_clean(&s, &text);
    }

    /// Text with secrets in several forms, overlapping and adjacent, around non-secret bytes.
    fn stream_fixture() -> (Arc<Scrubber>, Vec<u8>) {
        let s = scrubber(&["abcabc", "Tok3n-xyz", "line-one\nline-two"]);
        let mut text = b"start abcabcabc mid Tok3n-xyzTok3n-xyz ".to_vec();
        text.extend_from_slice(STANDARD.encode("Tok3n-xyz").as_bytes());
        text.extend_from_slice(b" \xff line-two|");
        text.extend_from_slice(hex::encode("abcabc").as_bytes());
        text.extend_from_slice(b" end abcab");
        (s, text)
    }

    #[test]
    fn stream_split_in_two_matches_whole_scrub() {
        let (s, text) = stream_fixture();
        let whole = s.scrub_bytes(&text);
        assert!(!whole.windows(6).any(|w| w == b"abcabc"));
        for i in 0..=text.len() {
            assert_eq!(stream_with_cuts(&s, &text, &[i]), whole, "cut at {i}");
        }
    }

    #[test]
    fn stream_split_in_three_matches_whole_scrub() {
        let (s, text) = stream_fixture();
        let whole = s.scrub_bytes(&text);
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(stream_with_cuts(&s, &text, &[i, j]), whole, "cuts {i}, {j}");
            }
        }
    }

    #[test]
    fn stream_byte_by_byte_matches_whole_scrub() {
        let (s, text) = stream_fixture();
        let cuts: Vec<usize> = (1..text.len()).collect();
        assert_eq!(stream_with_cuts(&s, &text, &cuts), s.scrub_bytes(&text));
    }

    #[test]
    fn stream_without_secrets_passes_through() {
        let empty = Arc::new(Scrubber::new());
        let mut stream = empty.stream();
        assert_eq!(stream.push(b"hello \xff"), b"hello \xff");
        assert!(stream.finish().is_empty());

        let s = scrubber(&["correct-horse-battery-staple"]);
        let max = s.max_pattern_len();
        assert!(max >= "correct-horse-battery-staple".len());
        let mut stream = s.stream();
        let mut out = Vec::new();
        let mut fed = 0;
        for chunk in [&b"Password: "[..], b"cor", b"rect-horse no", b"\n", b"x"] {
            out.extend(stream.push(chunk));
            fed += chunk.len();
            assert!(fed - out.len() < max, "held back too much");
        }
        out.extend(stream.finish());
        assert_eq!(out, b"Password: correct-horse no\nx");
    }

    #[test]
    fn stream_holds_back_only_possible_secret_starts() {
        let s = scrubber(&["correct-horse-battery-staple"]);
        let mut stream = s.stream();
        assert_eq!(stream.push(b"Password: "), b"Password: ");
        assert_eq!(stream.push(b"x correct-ho"), b"x ");
        assert_eq!(stream.push(b"rse-battery-staple!"), b"[REDACTED]!");
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn non_utf8_bytes_pass_through() {
        let s = scrubber(&["binary-secret"]);
        let input = b"\xff\xfe\x00binary-secret\x80\xc3";
        assert_eq!(s.scrub_bytes(input), b"\xff\xfe\x00[REDACTED]\x80\xc3");
        assert_eq!(s.scrub_bytes(b"\xff\xfe plain"), b"\xff\xfe plain");
        for i in 0..=input.len() {
            assert_eq!(
                stream_with_cuts(&s, input, &[i]),
                b"\xff\xfe\x00[REDACTED]\x80\xc3"
            );
        }
    }

    #[test]
    fn secrets_added_from_many_threads_are_all_redacted() {
        let s = Arc::new(Scrubber::new());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let secret = format!("thread-secret-{i}");
                    assert!(s.add(&secret));
                    assert_eq!(s.scrub(&secret), REDACTED);
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().is_ok());
        }
        for i in 0..8 {
            assert_eq!(s.scrub(&format!("<thread-secret-{i}>")), "<[REDACTED]>");
        }
    }

    #[test]
    fn debug_does_not_reveal_secrets() {
        let s = scrubber(&["never-print-me"]);
        let shown = format!("{s:?} {:?}", s.stream());
        assert!(!shown.contains("never-print-me"), "{shown}");
    }

    #[test]
    fn secret_added_mid_stream_applies_to_later_chunks() {
        let s = scrubber(&["first-secret"]);
        let mut stream = s.stream();
        let mut out = stream.push(b"a first-sec");
        assert!(s.add("second-secret"));
        out.extend(stream.push(b"ret b second-secret c first-"));
        out.extend(stream.push(b"secret"));
        out.extend(stream.finish());
        assert_eq!(out, b"a [REDACTED] b [REDACTED] c [REDACTED]");
    }

    /// Reference result: every occurrence of every pattern found by brute force, overlapping
    /// occurrences merged, each merged run replaced by one marker.
    fn brute_force(patterns: &[String], hay: &[u8]) -> Vec<u8> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for p in patterns {
            let p = p.as_bytes();
            for start in 0..hay.len() {
                if hay[start..].starts_with(p) {
                    spans.push((start, start + p.len()));
                }
            }
        }
        spans.sort_unstable();
        let mut out = Vec::new();
        let mut run_end = 0;
        for (start, end) in spans {
            if start < run_end {
                run_end = run_end.max(end);
                continue;
            }
            out.extend_from_slice(&hay[run_end..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            run_end = end;
        }
        out.extend_from_slice(&hay[run_end..]);
        out
    }

    #[test]
    fn property_overlapping_secrets_match_brute_force() {
        // A two-letter alphabet makes overlapping and adjacent occurrences frequent.
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for round in 0..500 {
            let s = Arc::new(Scrubber::new());
            for _ in 0..1 + rng.below(3) {
                assert!(s.add(&rng.string(&['a', 'b'], 6, 9)));
            }
            let text = rng.string(&['a', 'b'], 0, 80);
            let expected = brute_force(&s.patterns(), text.as_bytes());
            let out = s.scrub(&text);
            assert_eq!(out.as_bytes(), expected, "round {round}: {text}");
            assert_clean(&s, &out);
            let mut cuts: Vec<usize> = (0..rng.below(6))
                .map(|_| rng.below(text.len() + 1))
                .collect();
            cuts.sort_unstable();
            let streamed = stream_with_cuts(&s, text.as_bytes(), &cuts);
            assert_eq!(streamed, expected, "round {round}: {text}, cuts {cuts:?}");
        }
    }

    /// One way a secret may be written out, as the test builds it independently of the module.
    fn encode_form(rng: &mut XorShift, secret: &str) -> (String, Vec<String>) {
        let lines: Vec<&str> = secret
            .split('\n')
            .filter(|l| l.trim().len() >= MIN_SECRET_LEN)
            .collect();
        let text = match rng.below(13) {
            0 => secret.to_owned(),
            1 => STANDARD.encode(secret),
            2 => STANDARD_NO_PAD.encode(secret),
            3 => URL_SAFE.encode(secret),
            4 => URL_SAFE_NO_PAD.encode(secret),
            5 => hex::encode(secret),
            6 => hex::encode_upper(secret),
            7 => percent_encoding::percent_encode(secret.as_bytes(), STRICT_URL).to_string(),
            8 => form_urlencode(secret.as_bytes()),
            9 => {
                let quoted = serde_json::to_string(secret).unwrap_or_default();
                quoted[1..quoted.len() - 1].replace('/', "\\/")
            }
            10 if !lines.is_empty() => (*rng.pick(&lines)).to_owned(),
            _ => {
                // Embedded in a longer string, then base64-encoded as a whole.
                let mut plain = rng.bytes(5);
                let offset = plain.len() % 3;
                plain.extend_from_slice(secret.as_bytes());
                let tail = rng.bytes(5);
                plain.extend_from_slice(&tail);
                let inner = base64_inner(secret.as_bytes(), offset).unwrap_or_default();
                let url_inner = inner.replace('+', "-").replace('/', "_");
                return if rng.below(2) == 0 {
                    (STANDARD.encode(&plain), vec![inner])
                } else {
                    (URL_SAFE_NO_PAD.encode(&plain), vec![url_inner])
                };
            }
        };
        (text.clone(), vec![text])
    }

    #[test]
    fn property_random_secrets_never_survive() {
        const SECRET_CHARS: &[char] = &[
            'a', 'b', 'c', 'x', 'y', 'z', 'A', 'Q', 'Z', '0', '7', '9', ' ', '&', '/', '"', '\\',
            '\n', '_', '.', '~', '-', '+', '=', '%', '\u{e9}',
        ];
        // Never part of a pattern or of the marker, so filler can only be kept, never redacted.
        const FILLER_CHARS: &[char] = &[
            '!', '#', '$', '(', ')', '*', ',', ';', ':', '<', '>', '?', '@', '^', '{', '|', '}',
            '\'', '\u{fc}',
        ];
        let is_filler = |c: char| FILLER_CHARS.contains(&c);
        let filler_runs = |s: &str| -> Vec<String> {
            s.split(|c| !is_filler(c))
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect()
        };

        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let s = Arc::new(Scrubber::new());
            let mut secrets = Vec::new();
            while secrets.len() < 1 + rng.below(3) {
                let secret = rng.string(SECRET_CHARS, 6, 40);
                if s.add(&secret) {
                    secrets.push(secret);
                }
            }
            let mut text = String::new();
            let mut forbidden = Vec::new();
            for _ in 0..1 + rng.below(6) {
                text.push_str(&rng.string(FILLER_CHARS, 1, 12));
                let secret = rng.pick(&secrets).clone();
                let (form, gone) = encode_form(&mut rng, &secret);
                text.push_str(&form);
                forbidden.extend(gone);
            }
            text.push_str(&rng.string(FILLER_CHARS, 0, 12));

            let out = s.scrub(&text);
            for f in forbidden.iter().filter(|f| f.len() >= MIN_SECRET_LEN) {
                assert!(!out.contains(f.as_str()), "round {round}: {f:?} in {out:?}");
            }
            for secret in &secrets {
                assert!(!out.contains(secret.as_str()), "round {round}");
            }
            assert_clean(&s, &out);
            assert_eq!(filler_runs(&out), filler_runs(&text), "round {round}");

            let mut cuts: Vec<usize> = (0..rng.below(5))
                .map(|_| rng.below(text.len() + 1))
                .collect();
            cuts.sort_unstable();
            let streamed = stream_with_cuts(&s, text.as_bytes(), &cuts);
            assert_eq!(streamed, out.as_bytes(), "round {round}, cuts {cuts:?}");
        }
    }
}

#[cfg(test)]
mod timing_baseline {
    use super::*;
    use std::time::Instant;

    #[test]
    fn scrub_timing_baseline() {
        let s = Scrubber::new();
        assert!(s.add("long-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLM"));
        assert!(s.add("sk-live \"Q7\\zx\" & w/é+~?>"));
        assert!(s.add("hunter2-password"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "made", "deal", "cafe", "beef", "add", "value", "error:", "at", "line", "42"];
        let mut text = String::new();
        while text.len() < 1 << 20 {
            match next() % 4 {
                0 | 1 => {
                    for _ in 0..12 {
                        text.push_str(words[(next() % words.len() as u64) as usize]);
                        text.push(' ');
                    }
                    text.push('\n');
                }
                2 => {
                    let bytes: Vec<u8> = (0..57).map(|_| next() as u8).collect();
                    text.push_str(&STANDARD.encode(&bytes));
                    text.push('\n');
                }
                _ => {
                    for _ in 0..16 {
                        text.push_str(&format!(" {:02x}", next() as u8));
                    }
                    text.push('\n');
                }
            }
        }
        assert!(matches!(s.scrub(&text), Cow::Borrowed(_)));
        let runs = 50;
        let start = Instant::now();
        for _ in 0..runs {
            assert!(matches!(s.scrub(std::hint::black_box(&text)), Cow::Borrowed(_)));
        }
        let per = start.elapsed() / runs;
        println!("scrub of {} bytes with no match: {per:?}", text.len());
    }
}
