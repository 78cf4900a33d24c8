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
//! 3. hex, lowercase and uppercase, compact (`deadbeef`) and with the bytes separated by a space
//!    or a colon (`de ad be ef`, `DE:AD:BE:EF`, as `od`, `openssl` and fingerprints print them);
//! 4. percent-encoding (RFC 3986 strict form) and `application/x-www-form-urlencoded`, each with
//!    uppercase and with lowercase hex digits (`%2F`, `%2f`);
//! 5. the JSON string-literal escape (as `serde_json` writes it), the same with `/` written as
//!    `\/`, and the ASCII-only escape (`\u00e9`) that Python's `json.dumps` writes by default.
//!
//! Derived patterns shorter than [`MIN_SECRET_LEN`] bytes are dropped. All patterns are matched at
//! once with an Aho-Corasick automaton (leftmost-longest), rebuilt whenever a secret is added: adds
//! are rare, scrubs are frequent. Overlapping occurrences are merged and replaced by one marker, so
//! no byte of any occurrence survives.
//!
//! # Line-wrapped forms
//!
//! Encoders wrap long output: `base64` at 76 columns, PEM at 64, `xxd -p` at 60, `od -An -tx1` at
//! 16 bytes a line, `openssl` after a colon. A pattern is therefore also searched in two *views*
//! of the text, in which some separators between the pattern's characters are invisible:
//!
//! - the **wrapped** view reads the base64 alphabets (both, with `=`) and skips line breaks: a run
//!   of spaces, tabs and carriage returns holding exactly one `\n` (so `\r\n` and the indentation
//!   of the next line are skipped too) between two such characters;
//! - the **hex dump** view reads hex digits and skips runs of spaces, tabs, colons and carriage
//!   returns holding at most one `\n` between two of them.
//!
//! Both skip a separator only when it is at most [`MAX_BREAK_LEN`] bytes long. A view match counts
//! only when it crosses a separator holding a line break (one on a single line is a plain match of
//! the compact or space- or colon-separated pattern), and only patterns made entirely of a view's
//! characters are searched in it: base64 and hex forms, and raw values such as alphanumeric tokens.
//! The whole span of a view match, the line breaks and indentation inside it included, is
//! replaced by one marker. Views are searched only around line breaks, found with a word-at-a-time
//! scan, so text without line breaks costs nothing more, and they need no allocation when nothing
//! matches.
//!
//! Known limits:
//! - the marker itself is not re-scanned. A pathological secret that overlaps the text
//!   `[REDACTED]` (for instance the value `ACTED]xyz`) could reappear where a marker meets the text
//!   next to it;
//! - a hex dump with an offset column or an ASCII column (`xxd`, `hexdump -C`, `od` without
//!   `-An`) is caught only where the whole secret fits on one line with single-space separators
//!   (`hexdump -C` puts two spaces in the middle of each line); its ASCII column shows up to 16
//!   bytes of the value per line in the clear, which no pattern of the whole value can catch;
//! - mixed-case hex or percent-encoding (`De:aD`, `%2f%2F`), base64 wrapped inside a JSON string
//!   (`\n` written as a backslash and `n`), and separators longer than [`MAX_BREAK_LEN`] are not
//!   caught.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aho_corasick::automaton::Automaton;
use aho_corasick::{AhoCorasick, Anchored, Input, MatchKind, dfa, nfa};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Shortest secret accepted by [`Scrubber::add`], in bytes after trimming whitespace; also the
/// shortest derived pattern kept. Shorter values would redact too much ordinary text.
pub const MIN_SECRET_LEN: usize = 6;

/// The text every occurrence of a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Longest separator, in bytes, that a view skips between two characters of a pattern: room for
/// `\r\n` and the indentation of the next line (or a colon, a line break and that indentation).
pub const MAX_BREAK_LEN: usize = 16;

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

/// Total length of the view patterns up to which their detection automaton is a DFA (fastest,
/// about 512 bytes a state); above it, a compact NFA.
const VIEW_DFA_MAX_BYTES: usize = 4096;

/// A way of reading text in which some separators between characters are invisible.
struct View {
    /// Bytes read as characters.
    text: [bool; 256],
    /// Bytes a separator is made of.
    sep: [bool; 256],
    /// Whether every separator must hold a line break (otherwise it may hold one).
    needs_newline: bool,
}

/// Every byte of `bytes` marked in a 256-entry table.
const fn byte_table(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
}

/// Both base64 alphabets and the padding character.
const BASE64_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=";

/// The views a pattern is also searched in; see the module documentation.
const VIEWS: [View; 2] = [
    // Wrapped: base64 (and anything made of its characters) broken into lines.
    View {
        text: byte_table(BASE64_CHARS),
        sep: byte_table(b" \t\r\n"),
        needs_newline: true,
    },
    // Hex dump: hex digits separated by spaces or colons, broken into lines.
    View {
        text: byte_table(b"0123456789abcdefABCDEF"),
        sep: byte_table(b" \t\r\n:"),
        needs_newline: false,
    },
];

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
    /// Leftmost-longest automaton over every pattern; also searches the views, whose text only
    /// the patterns made of the view's characters can match.
    automaton: AhoCorasick,
    /// Length in bytes of the longest pattern.
    max_len: usize,
    /// Number of patterns (for `Debug`, which must never show them).
    count: usize,
    /// Prefixes of every pattern, for deciding how much of a stream to hold back.
    prefixes: Prefixes,
    /// For each of [`VIEWS`], the prefixes of the patterns made of its characters.
    view_prefixes: [Prefixes; 2],
    /// Automaton over the patterns of every view, stepped by hand to detect a view match without
    /// allocating; `None` when no pattern can match in a view.
    view_detector: Option<Detector>,
}

/// Which texts are the beginning of some pattern of a set.
#[derive(Clone)]
struct Prefixes {
    /// Length of the longest pattern (0 when the set is empty).
    max_len: usize,
    /// For each byte value, the length of the longest pattern starting with it (0 for none): a
    /// cheap filter before looking a tail up in `keys`.
    longest_from: [usize; 256],
    /// Keys ([`prefix_key`]) of every proper prefix of every pattern. A false positive only makes
    /// a stream hold back a few more bytes; a prefix is never missing.
    keys: PrefixSet,
}

/// Automaton for [`Matcher::view_detector`]: a DFA when small, else a compact NFA.
enum Detector {
    Dfa(dfa::DFA),
    Nfa(nfa::contiguous::NFA),
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
        let Ok(automaton) = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&next)
        else {
            return false;
        };
        let view_patterns: Vec<&String> = next
            .iter()
            .filter(|p| in_view(&VIEWS[0], p.as_bytes()))
            .collect();
        let view_detector = if view_patterns.is_empty() {
            None
        } else {
            match Detector::build(&view_patterns) {
                Some(detector) => Some(detector),
                None => return false,
            }
        };
        let previous = self.snapshot();
        let mut prefixes = previous
            .as_ref()
            .map_or_else(Prefixes::default, |m| m.prefixes.clone());
        let mut view_prefixes = previous.as_ref().map_or_else(
            || [Prefixes::default(), Prefixes::default()],
            |m| m.view_prefixes.clone(),
        );
        for pattern in &new {
            let bytes = pattern.as_bytes();
            prefixes.insert(bytes);
            for (view, set) in VIEWS.iter().zip(view_prefixes.iter_mut()) {
                if in_view(view, bytes) {
                    set.insert(bytes);
                }
            }
        }
        let matcher = Matcher {
            automaton,
            max_len: prefixes.max_len,
            count: next.len(),
            prefixes,
            view_prefixes,
            view_detector,
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
            Some(matcher) if matcher.is_match(b) => {
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

    /// Most bytes a [`StreamScrubber`] holds back after a push: `(max_pattern_len - 1) *
    /// (MAX_BREAK_LEN + 1)`, reached only by a tail that is the start of a line-wrapped pattern
    /// with a line break after every character (0 when empty).
    pub fn max_held_back(&self) -> usize {
        self.max_pattern_len().saturating_sub(1) * (MAX_BREAK_LEN + 1)
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
    /// Whether `hay` holds any occurrence, plain or in a view. Never allocates.
    fn is_match(&self, hay: &[u8]) -> bool {
        self.automaton.is_match(hay)
            || self
                .view_detector
                .as_ref()
                .is_some_and(|detector| self.view_is_match(detector, hay))
    }

    /// Scrubs a string; borrowed when nothing matches.
    fn scrub_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let hay = s.as_bytes();
        if !self.is_match(hay) {
            return Cow::Borrowed(s);
        }
        let mut out = Vec::with_capacity(hay.len());
        self.redact_into(hay, 0, hay.len(), &mut out);
        // Patterns are valid UTF-8 and view matches start and end on a pattern's ASCII
        // characters, so every redacted span starts and ends on a character boundary and the
        // result is valid UTF-8; the lossy fallback is never taken.
        match String::from_utf8(out) {
            Ok(text) => Cow::Owned(text),
            Err(err) => Cow::Owned(String::from_utf8_lossy(err.as_bytes()).into_owned()),
        }
    }

    /// Copies `hay[done..cutoff]` to `out`, replacing every run of overlapping matches (plain or
    /// in a view) with one marker, and returns how far `hay` is handled (at least `cutoff`, more
    /// when the last run extends past it).
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
        let mut spans = Vec::new();
        let mut pos = 0;
        while pos < cutoff {
            let Some(m) = self.automaton.find(Input::new(hay).span(pos..hay.len())) else {
                break;
            };
            if m.start() >= cutoff {
                break;
            }
            spans.push((m.start(), m.end()));
            pos = m.start() + 1;
        }
        if self.view_detector.is_some() {
            for (view, prefixes) in VIEWS.iter().zip(&self.view_prefixes) {
                if prefixes.max_len > 0 {
                    self.view_spans(view, prefixes.max_len, hay, cutoff, &mut spans);
                }
            }
            spans.sort_unstable();
        }
        for (start, end) in spans {
            if start < done {
                done = done.max(end);
            } else {
                out.extend_from_slice(hay.get(done..start).unwrap_or_default());
                out.extend_from_slice(REDACTED.as_bytes());
                done = end;
            }
        }
        if done < cutoff {
            out.extend_from_slice(hay.get(done..cutoff).unwrap_or_default());
            done = cutoff;
        }
        done
    }

    /// Adds to `spans` every match in `view` that crosses a line break and starts before
    /// `cutoff`, as a byte range of `hay`; `max_len` is the longest pattern of the view.
    fn view_spans(
        &self,
        view: &View,
        max_len: usize,
        hay: &[u8],
        cutoff: usize,
        spans: &mut Vec<(usize, usize)>,
    ) {
        // The view's text of one segment, where each of its bytes is in `hay`, and the positions
        // in `text` of the line breaks (a break at i lies between text[i - 1] and text[i]).
        let mut text = Vec::new();
        let mut at = Vec::new();
        let mut breaks = Vec::new();
        let mut scanned = 0;
        let mut from = 0;
        while let Some(newline) = next_newline(hay, from) {
            from = newline + 1;
            if newline < scanned {
                continue;
            }
            let Some((sep_start, _)) = view.break_around(hay, newline) else {
                continue;
            };
            let start = view.window_start(hay, sep_start, max_len - 1);
            if start >= cutoff {
                break;
            }
            text.clear();
            at.clear();
            breaks.clear();
            let mut i = start;
            while let Some(&byte) = hay.get(i) {
                if view.text[usize::from(byte)] {
                    text.push(byte);
                    at.push(i);
                    i += 1;
                } else if let Some((end, newline)) = view.separator_at(hay, i) {
                    if newline {
                        breaks.push(text.len());
                    }
                    i = end;
                } else {
                    break;
                }
            }
            scanned = i;
            from = from.max(i);
            let mut pos = 0;
            while pos < text.len() {
                let Some(m) = self.automaton.find(Input::new(&text).span(pos..text.len())) else {
                    break;
                };
                let (Some(&first), Some(&last)) = (at.get(m.start()), at.get(m.end() - 1)) else {
                    break;
                };
                if first >= cutoff {
                    break;
                }
                let later = breaks.partition_point(|&b| b <= m.start());
                if breaks.get(later).is_some_and(|&b| b < m.end()) {
                    spans.push((first, last + 1));
                }
                pos = m.start() + 1;
            }
        }
    }

    /// Whether some view of `hay` holds a match crossing a line break, found by stepping
    /// `detector` over the segments around each line break. Never allocates.
    fn view_is_match(&self, detector: &Detector, hay: &[u8]) -> bool {
        let mut scanned = [0usize; 2];
        let mut from = 0;
        while let Some(newline) = next_newline(hay, from) {
            from = newline + 1;
            for ((view, prefixes), scanned) in VIEWS
                .iter()
                .zip(&self.view_prefixes)
                .zip(scanned.iter_mut())
            {
                if newline < *scanned || prefixes.max_len == 0 {
                    continue;
                }
                let Some((sep_start, _)) = view.break_around(hay, newline) else {
                    continue;
                };
                let start = view.window_start(hay, sep_start, prefixes.max_len - 1);
                let (found, end) = detector.scan(view, hay, start);
                if found {
                    return true;
                }
                *scanned = end;
            }
            from = from.max(scanned[0].min(scanned[1]));
        }
        false
    }

    /// The first position of `buf` from which the rest of `buf` could still become the start of
    /// a match, plain or in a view (`buf.len()` when there is none): bytes before it are decided.
    /// Never more than [`Scrubber::max_held_back`] bytes before the end.
    fn undecided_from(&self, buf: &[u8]) -> usize {
        let mut cut = self.prefixes.undecided_from(buf);
        if self.view_detector.is_some() {
            for (view, prefixes) in VIEWS.iter().zip(&self.view_prefixes) {
                cut = cut.min(prefixes.view_undecided_from(view, buf));
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
                if !map.keys().any(|k| self.is_match(k.as_bytes())) {
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
    /// chunks must still be redacted: hold back the trailing bytes that could be the start of a
    /// match, at most (max_pattern_len - 1) of them, or [`Scrubber::max_held_back`] when the
    /// tail is the start of a line-wrapped form. Bytes (not necessarily UTF-8).
    ///
    /// Only a trailing part that is the beginning of some pattern (read in a view: skipping line
    /// breaks, or the spaces and colons of a hex dump) is held back, so a prompt printed without
    /// a newline is normally forwarded at once.
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

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes {
            max_len: 0,
            longest_from: [0; 256],
            keys: PrefixSet::default(),
        }
    }
}

impl Prefixes {
    /// Adds a pattern.
    fn insert(&mut self, pattern: &[u8]) {
        let Some(&first) = pattern.first() else {
            return;
        };
        self.max_len = self.max_len.max(pattern.len());
        let longest = &mut self.longest_from[usize::from(first)];
        *longest = (*longest).max(pattern.len());
        let mut hash = 0u64;
        for (i, &byte) in pattern
            .iter()
            .enumerate()
            .take(pattern.len().saturating_sub(1))
        {
            hash = hash
                .wrapping_mul(PREFIX_HASH_BASE)
                .wrapping_add(u64::from(byte) + 1);
            self.keys.insert(prefix_key(hash, i + 1));
        }
    }

    /// Whether the `len` bytes starting with `first`, whose polynomial hash is `hash`, are a
    /// proper prefix of some pattern (or collide with one).
    fn is_proper_prefix(&self, first: u8, hash: u64, len: usize) -> bool {
        len < self.longest_from[usize::from(first)] && self.keys.contains(&prefix_key(hash, len))
    }

    /// The first position of `buf` from which the rest of `buf` is a proper prefix of some
    /// pattern (`buf.len()` when there is none). Never more than `max_len - 1` bytes before the
    /// end.
    fn undecided_from(&self, buf: &[u8]) -> usize {
        let lo = buf.len().saturating_sub(self.max_len.saturating_sub(1));
        let mut cut = buf.len();
        let mut hash = 0u64;
        let mut power = 1u64;
        let tail = buf.get(lo..).unwrap_or_default();
        for (i, &byte) in tail.iter().enumerate().rev() {
            hash = hash.wrapping_add((u64::from(byte) + 1).wrapping_mul(power));
            power = power.wrapping_mul(PREFIX_HASH_BASE);
            if self.is_proper_prefix(byte, hash, tail.len() - i) {
                cut = lo + i;
            }
        }
        cut
    }

    /// The first position of `buf` from which the rest of `buf`, read in `view` (a trailing
    /// separator, which more bytes could turn into a line break, skipped too), is a proper prefix
    /// of some pattern of the view (`buf.len()` when there is none). At most `max_len - 1`
    /// characters of the view are read back, each after a separator of at most
    /// [`MAX_BREAK_LEN`] bytes: never more than `(max_len - 1) * (MAX_BREAK_LEN + 1)` bytes
    /// before the end.
    fn view_undecided_from(&self, view: &View, buf: &[u8]) -> usize {
        let mut cut = buf.len();
        if self.max_len == 0 {
            return cut;
        }
        let mut i = buf.len();
        let trailing = view.run_before(buf, i);
        if trailing < i {
            let run = buf.get(trailing..i).unwrap_or_default();
            let newlines = run.iter().filter(|&&b| b == b'\n').count();
            if run.len() > MAX_BREAK_LEN || newlines > 1 {
                return cut;
            }
            i = trailing;
        }
        let mut hash = 0u64;
        let mut power = 1u64;
        let mut len = 0;
        while len + 1 < self.max_len {
            let Some(i_before) = i.checked_sub(1) else {
                break;
            };
            let Some(&byte) = buf.get(i_before) else {
                break;
            };
            if view.text[usize::from(byte)] {
                hash = hash.wrapping_add((u64::from(byte) + 1).wrapping_mul(power));
                power = power.wrapping_mul(PREFIX_HASH_BASE);
                len += 1;
                i = i_before;
                if self.is_proper_prefix(byte, hash, len) {
                    cut = i;
                }
            } else if view.sep[usize::from(byte)] {
                let start = view.run_before(buf, i);
                if view.check_separator(buf, start, i).is_none() {
                    break;
                }
                i = start;
            } else {
                break;
            }
        }
        cut
    }
}

impl View {
    /// The separator holding the line break at `newline`, as `(start, end)`, if it is one of
    /// this view (between two characters, short enough, the only line break in it).
    fn break_around(&self, hay: &[u8], newline: usize) -> Option<(usize, usize)> {
        let start = self.run_before(hay, newline);
        let end = self.run_after(hay, newline);
        self.check_separator(hay, start, end)?;
        Some((start, end))
    }

    /// Start of the run of separator bytes ending at `end`; looks back at most
    /// `MAX_BREAK_LEN + 1` bytes (a longer run is no separator anyway).
    fn run_before(&self, hay: &[u8], end: usize) -> usize {
        let mut start = end;
        while start + MAX_BREAK_LEN >= end
            && start > 0
            && hay
                .get(start - 1)
                .is_some_and(|&b| self.sep[usize::from(b)])
        {
            start -= 1;
        }
        start
    }

    /// End of the run of separator bytes starting at `start`; looks at most `MAX_BREAK_LEN + 1`
    /// bytes ahead.
    fn run_after(&self, hay: &[u8], start: usize) -> usize {
        let mut end = start;
        while end <= start + MAX_BREAK_LEN && hay.get(end).is_some_and(|&b| self.sep[usize::from(b)])
        {
            end += 1;
        }
        end
    }

    /// If `hay[start..end]` is a separator of this view (a whole run of separator bytes between
    /// two characters, at most [`MAX_BREAK_LEN`] long, with at most one line break, and exactly
    /// one if the view needs it): whether it holds a line break.
    fn check_separator(&self, hay: &[u8], start: usize, end: usize) -> Option<bool> {
        if start == end || end - start > MAX_BREAK_LEN {
            return None;
        }
        let before = hay.get(start.checked_sub(1)?)?;
        let after = hay.get(end)?;
        if !self.text[usize::from(*before)] || !self.text[usize::from(*after)] {
            return None;
        }
        let newlines = hay.get(start..end)?.iter().filter(|&&b| b == b'\n').count();
        match newlines {
            0 if !self.needs_newline => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// The separator starting at `start` (just after a character): its end and whether it holds
    /// a line break.
    fn separator_at(&self, hay: &[u8], start: usize) -> Option<(usize, bool)> {
        let end = self.run_after(hay, start);
        self.check_separator(hay, start, end)
            .map(|newline| (end, newline))
    }

    /// Where to start reading the view to find every match crossing the separator at
    /// `sep_start`: up to `budget` characters back, over earlier separators, stopping where the
    /// view's text ends.
    fn window_start(&self, hay: &[u8], sep_start: usize, budget: usize) -> usize {
        let mut i = sep_start;
        let mut start = sep_start;
        let mut read = 0;
        while read < budget && i > 0 {
            let Some(&byte) = hay.get(i - 1) else {
                break;
            };
            if self.text[usize::from(byte)] {
                i -= 1;
                read += 1;
                start = i;
            } else if self.sep[usize::from(byte)] {
                let run = self.run_before(hay, i);
                if self.check_separator(hay, run, i).is_none() {
                    break;
                }
                i = run;
            } else {
                break;
            }
        }
        start
    }
}

impl Detector {
    /// A detector for `patterns`: a DFA when they are small, else a compact NFA.
    fn build(patterns: &[&String]) -> Option<Self> {
        let total: usize = patterns.iter().map(|p| p.len()).sum();
        if total <= VIEW_DFA_MAX_BYTES
            && let Ok(dfa) = dfa::DFA::builder()
                .match_kind(MatchKind::Standard)
                .prefilter(false)
                .build(patterns)
        {
            return Some(Detector::Dfa(dfa));
        }
        nfa::contiguous::NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(patterns)
            .ok()
            .map(Detector::Nfa)
    }

    /// Reads `view` of `hay` from `start` (a character) to the end of its segment: whether a
    /// pattern crossing a line break occurs, and where the reading stopped.
    fn scan(&self, view: &View, hay: &[u8], start: usize) -> (bool, usize) {
        match self {
            Detector::Dfa(dfa) => scan_view(dfa, view, hay, start),
            Detector::Nfa(nfa) => scan_view(nfa, view, hay, start),
        }
    }
}

/// [`Detector::scan`] for one kind of automaton (built with [`MatchKind::Standard`], so a match
/// state lists every pattern ending there).
fn scan_view<A: Automaton>(aut: &A, view: &View, hay: &[u8], start: usize) -> (bool, usize) {
    let Ok(mut state) = aut.start_state(Anchored::No) else {
        // Cannot happen for an unanchored automaton; report a possible match so that the
        // caller takes the exact (allocating) path.
        return (true, start);
    };
    // Characters read so far, and how many had been read at the last line break.
    let mut read = 0;
    let mut last_break = 0;
    let mut i = start;
    while let Some(&byte) = hay.get(i) {
        if view.text[usize::from(byte)] {
            state = aut.next_state(Anchored::No, state, byte);
            read += 1;
            i += 1;
            if aut.is_special(state) && aut.is_match(state) {
                let longest = (0..aut.match_len(state))
                    .map(|k| aut.pattern_len(aut.match_pattern(state, k)))
                    .max()
                    .unwrap_or(0);
                if read - longest.min(read) < last_break {
                    return (true, i);
                }
            }
        } else if let Some((end, newline)) = view.separator_at(hay, i) {
            if newline {
                last_break = read;
            }
            i = end;
        } else {
            break;
        }
    }
    (false, i)
}

/// Whether every byte of `pattern` is a character of `view`.
fn in_view(view: &View, pattern: &[u8]) -> bool {
    pattern.iter().all(|&b| view.text[usize::from(b)])
}

/// Position of the first `\n` at or after `from`, eight bytes at a time.
fn next_newline(hay: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    let rest = hay.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut offset = from;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // A zero byte in `x` is a newline in the chunk; the lowest flagged byte is exact.
        let x = u64::from_le_bytes(word) ^ NEWLINES;
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| offset + p)
}

/// Key under which a prefix of `len` bytes with polynomial hash `hash` is stored; mixed so that
/// its high bits, which the set's table uses, depend on every input bit.
fn prefix_key(hash: u64, len: usize) -> u64 {
    let mut key = hash ^ (len as u64).wrapping_mul(PREFIX_LEN_MIX);
    key ^= key >> 31;
    key = key.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    key ^ (key >> 29)
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

    let lower = hex::encode(bytes);
    let upper = hex::encode_upper(bytes);
    for separator in [' ', ':'] {
        out.insert(separate_hex_pairs(&lower, separator));
        out.insert(separate_hex_pairs(&upper, separator));
    }
    out.insert(lower);
    out.insert(upper);

    let mut add_if_different = |form: String| {
        if form != base {
            out.insert(form);
        }
    };
    let strict = percent_encoding::percent_encode(bytes, STRICT_URL).to_string();
    let form = form_urlencode(bytes);
    add_if_different(lowercase_percent_hex(&strict));
    add_if_different(lowercase_percent_hex(&form));
    add_if_different(strict);
    add_if_different(form);
    if let Some(escaped) = json_escape(base) {
        add_if_different(escaped.replace('/', "\\/"));
        add_if_different(json_ascii(&escaped));
        add_if_different(escaped);
    }
}

/// Hex digits with `separator` between each pair (`de ad be ef`).
fn separate_hex_pairs(hex: &str, separator: char) -> String {
    let mut out = String::with_capacity(hex.len() / 2 * 3);
    for (i, digit) in hex.chars().enumerate() {
        if i > 0 && i % 2 == 0 {
            out.push(separator);
        }
        out.push(digit);
    }
    out
}

/// Percent-encoded text with the two hex digits after each `%` in lowercase (`%2f`).
fn lowercase_percent_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut digits_left = 0;
    for c in encoded.chars() {
        if digits_left > 0 {
            out.push(c.to_ascii_lowercase());
            digits_left -= 1;
        } else {
            out.push(c);
            if c == '%' {
                digits_left = 2;
            }
        }
    }
    out
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

