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
//! Both skip a separator only when it is at most [`MAX_BREAK_LEN`] bytes long, and one holding a
//! line break only after a wrapped line: one holding nothing but the view's text after its
//! indentation, at least [`MIN_WRAP_WIDTH`] characters of it (the last line of a wrapped form may
//! be shorter), or a line ending with at least 80 of them. A view match counts
//! only when it crosses a separator holding a line break (one on a single line is a plain match of
//! the compact or space- or colon-separated pattern), and only patterns made entirely of a view's
//! characters are searched in it: base64 and hex forms, and raw values such as alphanumeric tokens.
//! The whole span of a view match, the line breaks and indentation inside it included, is
//! replaced by one marker.
//!
//! Views are searched only around line breaks, found sixteen bytes at a time. Each line break is
//! first tested against the short substrings of the patterns (the bytes on either side must be
//! the middle of some pattern); the few that pass are searched in a window of the longest
//! pattern's length on either side, with an automaton stepped by hand, so that nothing is
//! allocated unless something matches. A [`StreamScrubber`] holds back a tail that could be the
//! start of a wrapped form read in a view, at most [`Scrubber::max_held_back`] bytes.
//!
//! Known limits:
//! - the marker itself is not re-scanned. A pathological secret that overlaps the text
//!   `[REDACTED]` (for instance the value `ACTED]xyz`) could reappear where a marker meets the text
//!   next to it;
//! - a hex dump with an offset column or an ASCII column (`xxd`, `hexdump -C`, `od` without
//!   `-An`) is caught only where the whole value fits on one line with single-space separators
//!   (`hexdump -C` puts two spaces in the middle of each line, `xxd` groups two bytes); its ASCII
//!   column shows up to 16 bytes of the value a line in the clear, which no pattern of the whole
//!   value can catch;
//! - one line of a wrapped encoding printed on its own (say by `head -1`) is only part of the
//!   value's encoding and is not caught;
//! - mixed-case hex or percent-encoding (`De:aD`, `%2f%2F`), base64 wrapped inside a JSON string
//!   (`\n` written as a backslash and `n`), a blank line or more than [`MAX_BREAK_LEN`] bytes of
//!   separator between two pieces, lines narrower than [`MIN_WRAP_WIDTH`] characters (wrapped
//!   with `base64 -w 8`), a first line shorter than 80 characters that starts with other text
//!   (`token: ghp_…` cut by `fold`), and hex separated by anything but blanks and colons
//!   (`de-ad`) are not caught.

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

/// Fewest characters of a view that the line before a line break must hold for the break to be
/// skipped: encoders wrap at 60 to 76 columns (`od` at 16 bytes, `openssl` at 15), and ordinary
/// text rarely has such lines, so a stream need not hold their ends back.
pub const MIN_WRAP_WIDTH: usize = 16;

/// Characters of a view after which a line counts as wrapped whatever comes before them on it;
/// shorter lines must hold nothing but the view's text after their indentation.
const LONG_LINE: usize = 80;

/// Bytes a [`StreamScrubber`] keeps after emitting them: as many as deciding whether a later line
/// break is skipped may look back at (see [`View::wrapped_line_before`]).
const STREAM_CONTEXT: usize = (LONG_LINE + 2) * (MAX_BREAK_LEN + 1);

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

/// Number of bits (a power of two) of the [`Grams`] filter: 32 KiB.
const GRAM_BITS: usize = 1 << 18;

/// Number of bits (a power of two) for three-byte strings in the [`Grams`] filter: 16 KiB.
const TRIPLE_BITS: usize = 1 << 17;

/// Length of the strings in the [`Grams`] filter: that of the shortest pattern.
const GRAM_LEN: usize = MIN_SECRET_LEN;

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

/// Bytes some view's separators are made of.
const ANY_SEP: [bool; 256] = byte_table(b" \t\r\n:");

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
    view_prefixes: [Prefixes; VIEWS.len()],
    /// Automaton over the patterns of every view, stepped by hand to detect a view match without
    /// allocating; `None` when no pattern can match in a view.
    view_detector: Option<Detector>,
    /// Short substrings of the patterns of every view, to rule line breaks out quickly.
    grams: Grams,
}

/// A filter over the substrings of the patterns of every view: every pair of bytes, exactly, every
/// three bytes (one hashed bit a string) and every [`GRAM_LEN`] bytes (a Bloom filter with two
/// bits a string), with few others. It rules out most line breaks before a view is searched
/// around them.
#[derive(Clone)]
struct Grams {
    /// One bit for each pair of bytes.
    pairs: Vec<u64>,
    /// `TRIPLE_BITS` bits for strings of three bytes (one bit a string).
    triples: Vec<u64>,
    /// `GRAM_BITS` bits for the strings of [`GRAM_LEN`] bytes.
    bits: Vec<u64>,
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
    /// The last bytes emitted (at most [`STREAM_CONTEXT`]), then the bytes received but not yet
    /// decided: they could be the start of a secret.
    pending: Vec<u8>,
    /// How many leading bytes of `pending` were emitted already. They are kept because whether a
    /// line break is skipped depends on the line before it.
    context: usize,
    /// How many bytes of `pending` after `context` lie inside an occurrence whose marker was
    /// already emitted; they are kept only because a later, overlapping occurrence may start
    /// among them.
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
        let in_some_view = |p: &[u8]| VIEWS.iter().any(|view| in_view(view, p));
        let view_patterns: Vec<&String> =
            next.iter().filter(|p| in_some_view(p.as_bytes())).collect();
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
            || std::array::from_fn(|_| Prefixes::default()),
            |m| m.view_prefixes.clone(),
        );
        let mut grams = previous
            .as_ref()
            .map_or_else(Grams::new, |m| m.grams.clone());
        for pattern in &new {
            let bytes = pattern.as_bytes();
            prefixes.insert(bytes);
            for (view, set) in VIEWS.iter().zip(view_prefixes.iter_mut()) {
                if in_view(view, bytes) {
                    set.insert(bytes);
                }
            }
            if in_some_view(bytes) {
                grams.insert(bytes);
            }
        }
        let matcher = Matcher {
            automaton,
            max_len: prefixes.max_len,
            count: next.len(),
            prefixes,
            view_prefixes,
            view_detector,
            grams,
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
                matcher.redact_into(b, 0, 0, b.len(), &mut out);
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
            context: 0,
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
        self.redact_into(hay, 0, 0, hay.len(), &mut out);
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
    /// Only matches starting in `from..cutoff` are considered: the caller guarantees that every
    /// match starting there lies wholly inside `hay`, and the bytes before `from` are context
    /// it handled already. The bytes in `from..done` are already covered by a marker the caller
    /// emitted, so a match starting among them extends that run.
    ///
    /// After each match the search resumes one byte after its start, so every position where a
    /// pattern starts is visited (leftmost-longest reports the longest pattern at the leftmost
    /// start) and the union of all occurrences is redacted, overlapping ones included.
    fn redact_into(
        &self,
        hay: &[u8],
        from: usize,
        mut done: usize,
        cutoff: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        let cutoff = cutoff.min(hay.len());
        let mut spans = Vec::new();
        let mut pos = from;
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
            self.view_spans(hay, from, cutoff, &mut spans);
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

    /// Calls `visit(view, separator start, separator end)` for each line break of `hay` at or
    /// after `from` that a pattern of some view may cross, in order, until it returns false.
    /// Never allocates.
    fn candidate_breaks(
        &self,
        hay: &[u8],
        mut from: usize,
        mut visit: impl FnMut(usize, usize, usize) -> bool,
    ) {
        while let Some(newline) = next_newline(hay, from) {
            from = newline + 1;
            // Shared quick test on the bytes around the blanks holding the newline, `x2 x1` before
            // and `y1 y2` after (skipped when `x1` or `y1` is a colon, which the hex dump view
            // skips too): a match crossing the break holds `x1 y1`, and `x2 x1 y1` or `x1 y1 y2`
            // as it has at least six characters (either may be hidden by a separator in `x2` or
            // `y2`, which then passes).
            let (Some(&x1), Some(&y1)) = (hay.get(newline.wrapping_sub(1)), hay.get(newline + 1))
            else {
                continue;
            };
            let (blank_start, blank_end) = if ANY_SEP[usize::from(x1)] || ANY_SEP[usize::from(y1)] {
                blank_run(hay, newline)
            } else {
                (newline, newline + 1)
            };
            let (Some(&x1), Some(&y1)) = (hay.get(blank_start.wrapping_sub(1)), hay.get(blank_end))
            else {
                continue;
            };
            if x1 != b':' && y1 != b':' {
                if !self.grams.has_pair(x1, y1) {
                    continue;
                }
                let x2 = hay.get(blank_start.wrapping_sub(2));
                let y2 = hay.get(blank_end + 1);
                let before = x2.is_some_and(|&x2| {
                    ANY_SEP[usize::from(x2)] || self.grams.has_triple([x2, x1, y1])
                });
                let after = y2.is_some_and(|&y2| {
                    ANY_SEP[usize::from(y2)] || self.grams.has_triple([x1, y1, y2])
                });
                if !before && !after {
                    continue;
                }
            }
            for (index, (view, prefixes)) in VIEWS.iter().zip(&self.view_prefixes).enumerate() {
                if prefixes.max_len == 0 {
                    continue;
                }
                let Some((sep_start, sep_end)) = view.break_around(hay, newline) else {
                    continue;
                };
                if self.grams.may_cross(view, hay, sep_start, sep_end)
                    && view.wrapped_line_before(hay, sep_start)
                    && !visit(index, sep_start, sep_end)
                {
                    return;
                }
            }
        }
    }

    /// Adds to `spans` every match in a view that crosses a line break and starts in
    /// `from..cutoff`, as a byte range of `hay`.
    ///
    /// Each line break that [`Matcher::candidate_breaks`] lets through is searched in a window
    /// of `max_len - 1` characters of the view (`max_len` being its longest pattern) on either
    /// side, which holds every match crossing it. A match crossing several breaks may be found
    /// more than once; the caller merges.
    fn view_spans(&self, hay: &[u8], from: usize, cutoff: usize, spans: &mut Vec<(usize, usize)>) {
        // The view's text of one window, where each of its bytes is in `hay`, and the positions
        // in `text` of the line breaks (a break at i lies between text[i - 1] and text[i]).
        let mut text = Vec::new();
        let mut at = Vec::new();
        let mut breaks = Vec::new();
        // Views whose windows now start at or after `cutoff`, as later ones do.
        let mut past_cutoff = [false; VIEWS.len()];
        // A match starting at or after `from` crosses line breaks after it only.
        self.candidate_breaks(hay, from, |index, sep_start, sep_end| {
            let (Some(view), Some(prefixes)) = (VIEWS.get(index), self.view_prefixes.get(index))
            else {
                return true;
            };
            let max_len = prefixes.max_len;
            if past_cutoff.get(index).copied().unwrap_or(true) {
                return true;
            }
            let start = view.window_start(hay, sep_start, max_len - 1);
            if start >= cutoff {
                if let Some(past) = past_cutoff.get_mut(index) {
                    *past = true;
                }
                return !past_cutoff.iter().all(|&past| past);
            }
            text.clear();
            at.clear();
            breaks.clear();
            let mut i = start;
            let mut after = 0;
            while let Some(&byte) = hay.get(i) {
                if view.text[usize::from(byte)] {
                    if i >= sep_end {
                        if after + 1 == max_len {
                            break;
                        }
                        after += 1;
                    }
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
                if first >= from && breaks.get(later).is_some_and(|&b| b < m.end()) {
                    spans.push((first, last + 1));
                }
                pos = m.start() + 1;
            }
            true
        });
    }

    /// Whether some view of `hay` holds a match crossing a line break: the same search as
    /// [`Matcher::view_spans`], stepping `detector` over each window instead. Never allocates.
    fn view_is_match(&self, detector: &Detector, hay: &[u8]) -> bool {
        let mut found = false;
        self.candidate_breaks(hay, 0, |index, sep_start, sep_end| {
            let (Some(view), Some(prefixes)) = (VIEWS.get(index), self.view_prefixes.get(index))
            else {
                return true;
            };
            let start = view.window_start(hay, sep_start, prefixes.max_len - 1);
            found = detector.scan(view, hay, start, sep_end, prefixes.max_len - 1);
            !found
        });
        found
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
        let from = self.context;
        let (out, cutoff, done) = match self.scrubber.snapshot() {
            Some(matcher) => {
                let cutoff = if at_end {
                    self.pending.len()
                } else {
                    matcher.undecided_from(&self.pending).max(from)
                };
                let mut out = Vec::with_capacity(self.pending.len() - from);
                let done =
                    matcher.redact_into(&self.pending, from, from + self.covered, cutoff, &mut out);
                (out, cutoff, done)
            }
            None => {
                let len = self.pending.len();
                (
                    self.pending.get(from..).unwrap_or_default().to_vec(),
                    len,
                    len,
                )
            }
        };
        if at_end {
            self.pending.clear();
            self.context = 0;
            self.covered = 0;
            return out;
        }
        let keep_from = cutoff.saturating_sub(STREAM_CONTEXT);
        self.pending.drain(..keep_from);
        self.context = cutoff - keep_from;
        self.covered = done
            .saturating_sub(cutoff)
            .min(self.pending.len() - self.context);
        out
    }
}
impl fmt::Debug for StreamScrubber {
    /// Shows only how many bytes are held back, never the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScrubber")
            .field("pending", &(self.pending.len() - self.context))
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
            // More bytes can make the run a separator holding a line break only after a long
            // enough line; in a view whose separators need none, it may also stay without one.
            if !view.wrapped_line_before(buf, trailing) && (newlines == 1 || view.needs_newline) {
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

impl Grams {
    /// An empty filter.
    fn new() -> Self {
        Grams {
            pairs: vec![0; (1 << 16) / 64],
            triples: vec![0; TRIPLE_BITS / 64],
            bits: vec![0; GRAM_BITS / 64],
        }
    }

    /// The two bit indices of a string of [`GRAM_LEN`] bytes: two slices of a multiplicative
    /// hash.
    fn indices(gram: &[u8; GRAM_LEN]) -> [usize; 2] {
        let mut word = [0u8; 8];
        word[..GRAM_LEN].copy_from_slice(gram);
        let hash = u64::from_le_bytes(word).wrapping_mul(PREFIX_LEN_MIX);
        let bits = GRAM_BITS.trailing_zeros();
        [
            (hash >> (64 - bits)) as usize,
            (hash >> (64 - 2 * bits)) as usize % GRAM_BITS,
        ]
    }

    /// Adds every substring of `pattern` of two and of [`GRAM_LEN`] bytes.
    fn insert(&mut self, pattern: &[u8]) {
        for pair in pattern.windows(2) {
            let index = usize::from(pair[0]) << 8 | usize::from(pair[1]);
            if let Some(word) = self.pairs.get_mut(index / 64) {
                *word |= 1 << (index % 64);
            }
        }
        for triple in pattern.windows(3) {
            let index = Self::triple_index([triple[0], triple[1], triple[2]]);
            if let Some(word) = self.triples.get_mut(index / 64) {
                *word |= 1 << (index % 64);
            }
        }
        for window in pattern.windows(GRAM_LEN) {
            let mut gram = [0u8; GRAM_LEN];
            gram.copy_from_slice(window);
            for index in Self::indices(&gram) {
                if let Some(word) = self.bits.get_mut(index / 64) {
                    *word |= 1 << (index % 64);
                }
            }
        }
    }

    /// Whether `x y` is a substring of a pattern.
    fn has_pair(&self, x: u8, y: u8) -> bool {
        let pair = usize::from(x) << 8 | usize::from(y);
        self.pairs
            .get(pair / 64)
            .is_some_and(|word| word & (1 << (pair % 64)) != 0)
    }

    /// Bit index of a string of three bytes.
    fn triple_index(triple: [u8; 3]) -> usize {
        let [a, b, c] = triple;
        let hash = u64::from(u32::from_le_bytes([a, b, c, 0])).wrapping_mul(PREFIX_LEN_MIX);
        (hash >> (64 - TRIPLE_BITS.trailing_zeros())) as usize
    }

    /// Whether `triple` may be a substring of a pattern.
    fn has_triple(&self, triple: [u8; 3]) -> bool {
        let index = Self::triple_index(triple);
        self.triples
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Whether `gram` may be a substring of a pattern.
    fn contains(&self, gram: &[u8; GRAM_LEN]) -> bool {
        Self::indices(gram).iter().all(|&index| {
            self.bits
                .get(index / 64)
                .is_some_and(|word| word & (1 << (index % 64)) != 0)
        })
    }

    /// Whether a pattern may cross the line break `hay[sep_start..sep_end]` in `view`. Every
    /// pattern is at least [`GRAM_LEN`] long, so a match crossing the break with `j` of its
    /// characters before it holds the [`GRAM_LEN`] characters of the view starting
    /// `min(j, GRAM_LEN - 1)` before the break; false only when no such string is in the filter.
    fn may_cross(&self, view: &View, hay: &[u8], sep_start: usize, sep_end: usize) -> bool {
        const SIDE: usize = GRAM_LEN - 1;
        // The view's characters around the break: `SIDE` before it (nearest last), then `SIDE`
        // after it.
        let mut around = [0u8; 2 * SIDE];
        let (before, after) = around.split_at_mut(SIDE);
        // Usually they are plain bytes; else read the view over separators.
        let (nb, na) = match (
            hay.get(sep_start.saturating_sub(SIDE)..sep_start),
            hay.get(sep_end..sep_end + SIDE),
        ) {
            (Some(left), Some(right))
                if left.len() == SIDE
                    && left.iter().chain(right).all(|&b| view.text[usize::from(b)]) =>
            {
                before.copy_from_slice(left);
                after.copy_from_slice(right);
                (SIDE, SIDE)
            }
            _ => {
                let nb = view.chars_before(hay, sep_start, before);
                before.reverse();
                (nb, view.chars_after(hay, sep_end, after))
            }
        };
        (1..=SIDE).any(|j| {
            j <= nb
                && GRAM_LEN - j <= na
                && around
                    .get(SIDE - j..SIDE - j + GRAM_LEN)
                    .and_then(|gram| <&[u8; GRAM_LEN]>::try_from(gram).ok())
                    .is_some_and(|gram| self.contains(gram))
        })
    }
}

impl View {
    /// The run of separator bytes holding the line break at `newline`, as `(start, end)`, if it
    /// is between two characters of this view, short enough, and holds no other line break (the
    /// line before it is not checked).
    fn break_around(&self, hay: &[u8], newline: usize) -> Option<(usize, usize)> {
        // One pass each way, stopping at a second line break or past the longest separator.
        let mut start = newline;
        while newline - start + 1 < MAX_BREAK_LEN {
            let byte = *hay.get(start.checked_sub(1)?)?;
            if !self.sep[usize::from(byte)] {
                break;
            }
            if byte == b'\n' {
                return None;
            }
            start -= 1;
        }
        let mut end = newline + 1;
        loop {
            let byte = *hay.get(end)?;
            if !self.sep[usize::from(byte)] {
                break;
            }
            if byte == b'\n' || end - start >= MAX_BREAK_LEN {
                return None;
            }
            end += 1;
        }
        let before = *hay.get(start.checked_sub(1)?)?;
        let after = *hay.get(end)?;
        (self.text[usize::from(before)] && self.text[usize::from(after)]).then_some((start, end))
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
        while end <= start + MAX_BREAK_LEN
            && hay.get(end).is_some_and(|&b| self.sep[usize::from(b)])
        {
            end += 1;
        }
        end
    }

    /// If `hay[start..end]` is a separator of this view (a whole run of separator bytes between
    /// two characters, at most [`MAX_BREAK_LEN`] long, with at most one line break, and exactly
    /// one if the view needs it, and a line break only after a wrapped line, see
    /// [`View::wrapped_line_before`]): whether it holds a line break.
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
            1 if self.wrapped_line_before(hay, start) => Some(true),
            _ => None,
        }
    }

    /// Whether the line ending at `end` (where a separator holding a line break starts) is
    /// wrapped text of this view: at least [`MIN_WRAP_WIDTH`] of its characters (over its
    /// separators) back to the start of the line, after at most [`MAX_BREAK_LEN`] blanks of
    /// indentation, or at least [`LONG_LINE`] of them whatever comes before. Looks back at most
    /// [`STREAM_CONTEXT`] bytes.
    fn wrapped_line_before(&self, hay: &[u8], end: usize) -> bool {
        let mut i = end;
        let mut n = 0;
        while n < LONG_LINE {
            let Some(&byte) = i.checked_sub(1).and_then(|before| hay.get(before)) else {
                return n >= MIN_WRAP_WIDTH;
            };
            if self.text[usize::from(byte)] {
                n += 1;
                i -= 1;
                continue;
            }
            if starts_line(hay, i) {
                return n >= MIN_WRAP_WIDTH;
            }
            if !self.sep[usize::from(byte)] {
                return false;
            }
            // Only a separator without a line break continues the line.
            let run = self.run_before(hay, i);
            let has_newline = hay.get(run..i).is_some_and(|r| r.contains(&b'\n'));
            if has_newline || self.check_separator(hay, run, i).is_none() {
                return false;
            }
            i = run;
        }
        true
    }

    /// The separator starting at `start` (just after a character): its end and whether it holds
    /// a line break.
    fn separator_at(&self, hay: &[u8], start: usize) -> Option<(usize, bool)> {
        let end = self.run_after(hay, start);
        self.check_separator(hay, start, end)
            .map(|newline| (end, newline))
    }

    /// Fills `out` with the characters of the view before byte `end`, nearest first, over
    /// separators; returns how many there were (at most `out.len()`).
    ///
    /// For [`Grams::may_cross`] only: a single line break between two characters is read over
    /// without checking the line before it, and reading too far can only let more through.
    fn chars_before(&self, hay: &[u8], end: usize, out: &mut [u8]) -> usize {
        let mut i = end;
        let mut n = 0;
        while n < out.len() && i > 0 {
            let Some(&byte) = hay.get(i - 1) else {
                break;
            };
            if self.text[usize::from(byte)] {
                if let Some(slot) = out.get_mut(n) {
                    *slot = byte;
                }
                n += 1;
                i -= 1;
            } else if self.sep[usize::from(byte)] {
                // A single separator byte between two characters (as in `de ad`): read over it
                // if the view needs no line break or it is one.
                let single = i >= 2 && hay.get(i - 2).is_some_and(|&b| self.text[usize::from(b)]);
                if single {
                    if self.needs_newline && byte != b'\n' {
                        break;
                    }
                    i -= 1;
                    continue;
                }
                let run = self.run_before(hay, i);
                if self.check_separator(hay, run, i).is_none() {
                    break;
                }
                i = run;
            } else {
                break;
            }
        }
        n
    }

    /// Fills `out` with the characters of the view from byte `start` on, over separators;
    /// returns how many there were (at most `out.len()`). For [`Grams::may_cross`] only, like
    /// [`View::chars_before`].
    fn chars_after(&self, hay: &[u8], start: usize, out: &mut [u8]) -> usize {
        let mut i = start;
        let mut n = 0;
        while n < out.len() {
            let Some(&byte) = hay.get(i) else {
                break;
            };
            if self.text[usize::from(byte)] {
                if let Some(slot) = out.get_mut(n) {
                    *slot = byte;
                }
                n += 1;
                i += 1;
            } else if self.sep[usize::from(byte)]
                && hay.get(i + 1).is_some_and(|&b| self.text[usize::from(b)])
            {
                // A single separator byte between two characters, as in `chars_before`.
                if self.needs_newline && byte != b'\n' {
                    break;
                }
                i += 1;
            } else if let Some((end, _)) = self.separator_at(hay, i) {
                i = end;
            } else {
                break;
            }
        }
        n
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

    /// Reads `view` of `hay` from `start` (a character) until `after` characters past byte
    /// `past` (or the end of the view's text): whether a pattern crossing a line break occurs.
    fn scan(&self, view: &View, hay: &[u8], start: usize, past: usize, after: usize) -> bool {
        match self {
            Detector::Dfa(dfa) => scan_view(dfa, view, hay, start, past, after),
            Detector::Nfa(nfa) => scan_view(nfa, view, hay, start, past, after),
        }
    }
}

/// [`Detector::scan`] for one kind of automaton (built with [`MatchKind::Standard`], so a match
/// state lists every pattern ending there).
fn scan_view<A: Automaton>(
    aut: &A,
    view: &View,
    hay: &[u8],
    start: usize,
    past: usize,
    mut after: usize,
) -> bool {
    let Ok(mut state) = aut.start_state(Anchored::No) else {
        // Cannot happen for an unanchored automaton; report a possible match so that the
        // caller takes the exact (allocating) path.
        return true;
    };
    // Characters read so far, and how many had been read at the last line break.
    let mut read = 0;
    let mut last_break = 0;
    let mut i = start;
    while let Some(&byte) = hay.get(i) {
        if view.text[usize::from(byte)] {
            if i >= past {
                if after == 0 {
                    break;
                }
                after -= 1;
            }
            state = aut.next_state(Anchored::No, state, byte);
            read += 1;
            i += 1;
            if aut.is_special(state) && aut.is_match(state) {
                let longest = (0..aut.match_len(state))
                    .map(|k| aut.pattern_len(aut.match_pattern(state, k)))
                    .max()
                    .unwrap_or(0);
                if read - longest.min(read) < last_break {
                    return true;
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
    false
}

/// Whether `hay[at]` starts a line: at most [`MAX_BREAK_LEN`] spaces, tabs and carriage returns
/// (its indentation) come before it, after a line break or the start of the text.
fn starts_line(hay: &[u8], at: usize) -> bool {
    let mut i = at;
    while at - i <= MAX_BREAK_LEN {
        match i.checked_sub(1).and_then(|before| hay.get(before)) {
            None | Some(b'\n') => return true,
            Some(b' ' | b'\t' | b'\r') => i -= 1,
            Some(_) => return false,
        }
    }
    false
}

/// The run of blanks (spaces, tabs, carriage returns, line breaks) around `hay[newline]`, looking
/// at most [`MAX_BREAK_LEN`] bytes each way.
fn blank_run(hay: &[u8], newline: usize) -> (usize, usize) {
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut start = newline;
    while newline - start < MAX_BREAK_LEN && start > 0 && hay.get(start - 1).is_some_and(is_blank) {
        start -= 1;
    }
    let mut end = newline + 1;
    while end - newline <= MAX_BREAK_LEN && hay.get(end).is_some_and(is_blank) {
        end += 1;
    }
    (start, end)
}

/// Whether every byte of `pattern` is a character of `view`.
fn in_view(view: &View, pattern: &[u8]) -> bool {
    pattern.iter().all(|&b| view.text[usize::from(b)])
}

/// Position of the first `\n` at or after `from`, sixteen bytes at a time.
fn next_newline(hay: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    // The high bit of each byte of `word` that is a newline; the lowest one flagged is exact.
    let newlines = |word: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ NEWLINES;
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let rest = hay.get(from..)?;
    let mut chunks = rest.chunks_exact(16);
    let mut offset = from;
    for chunk in &mut chunks {
        let (low, high) = chunk.split_at(8);
        let (low, high) = (newlines(low), newlines(high));
        if low | high != 0 {
            let first = if low != 0 {
                low.trailing_zeros() / 8
            } else {
                8 + high.trailing_zeros() / 8
            };
            return Some(offset + first as usize);
        }
        offset += 16;
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

        /// Exactly `len` random bytes.
        fn bytes_exact(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
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
        redact_spans(hay, spans)
    }

    /// The reference answer: each run of overlapping spans becomes one marker.
    fn redact_spans(hay: &[u8], mut spans: Vec<(usize, usize)>) -> Vec<u8> {
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

    /// One way a secret may be written out, as the test builds it independently of the module:
    /// the text, the forms that must not survive in the output, and those that must not survive
    /// in the output with every blank and colon removed (the forms wrapped over lines).
    fn encode_form(rng: &mut XorShift, secret: &str) -> (String, Vec<String>, Vec<String>) {
        let lines: Vec<&str> = secret
            .split('\n')
            .filter(|l| l.trim().len() >= MIN_SECRET_LEN)
            .collect();
        let bytes = secret.as_bytes();
        let wrapped = match rng.below(8) {
            0 => Some((
                wrap(&STANDARD.encode(secret), 76, "\n"),
                STANDARD.encode(secret),
            )),
            1 => Some((
                wrap(
                    &URL_SAFE_NO_PAD.encode(secret),
                    MIN_WRAP_WIDTH + rng.below(64),
                    "\r\n",
                ),
                URL_SAFE_NO_PAD.encode(secret),
            )),
            2 => Some((od_hex(bytes), hex::encode(bytes))),
            3 => Some((openssl_hex(bytes, true), hex::encode_upper(bytes))),
            4 => Some((wrap(&hex::encode(bytes), 60, "\n"), hex::encode(bytes))),
            _ => None,
        };
        if let Some((text, joined)) = wrapped
            && rng.below(3) == 0
        {
            // As encoders print it: from the start of a line.
            return (format!("\n{text}"), Vec::new(), vec![joined]);
        }
        let text = match rng.below(17) {
            13 => separate_hex_pairs(&hex::encode(bytes), ' '),
            14 => separate_hex_pairs(&hex::encode_upper(bytes), ':'),
            15 => lowercase_percent_hex(
                &percent_encoding::percent_encode(bytes, STRICT_URL).to_string(),
            ),
            16 => lowercase_percent_hex(&form_urlencode(bytes)),
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
                return match rng.below(3) {
                    0 => (STANDARD.encode(&plain), vec![inner], Vec::new()),
                    1 => (URL_SAFE_NO_PAD.encode(&plain), vec![url_inner], Vec::new()),
                    _ => (
                        format!("\n{}", wrap(&STANDARD.encode(&plain), 64, "\n")),
                        Vec::new(),
                        vec![inner],
                    ),
                };
            }
        };
        (text.clone(), vec![text], Vec::new())
    }

    #[test]
    fn property_random_secrets_never_survive() {
        const SECRET_CHARS: &[char] = &[
            'a', 'b', 'c', 'x', 'y', 'z', 'A', 'Q', 'Z', '0', '7', '9', ' ', '&', '/', '"', '\\',
            '\n', '_', '.', '~', '-', '+', '=', '%', '\u{e9}',
        ];
        // Never part of a pattern, of a separator a view skips or of the marker, so filler can
        // only be kept, never redacted.
        const FILLER_CHARS: &[char] = &[
            '!', '#', '$', '(', ')', '*', ',', ';', '<', '>', '?', '@', '^', '{', '|', '}', '\'',
            '\u{fc}',
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
            let mut forbidden_joined = Vec::new();
            for _ in 0..1 + rng.below(6) {
                text.push_str(&rng.string(FILLER_CHARS, 1, 12));
                let secret = rng.pick(&secrets).clone();
                let (form, gone, gone_joined) = encode_form(&mut rng, &secret);
                text.push_str(&form);
                forbidden.extend(gone);
                forbidden_joined.extend(gone_joined);
            }
            text.push_str(&rng.string(FILLER_CHARS, 0, 12));

            let out = s.scrub(&text);
            for f in forbidden.iter().filter(|f| f.len() >= MIN_SECRET_LEN) {
                assert!(!out.contains(f.as_str()), "round {round}: {f:?} in {out:?}");
            }
            let joined: String = out
                .chars()
                .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n' | ':'))
                .collect();
            for f in forbidden_joined
                .iter()
                .filter(|f| f.len() >= MIN_SECRET_LEN)
            {
                assert!(
                    !joined.contains(f.as_str()),
                    "round {round}: {f:?} in {out:?}"
                );
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

    /// About a megabyte of output with no secret in it: prose, base64 lines (wrapped at 76 like
    /// `base64`'s), and `od -An -tx1` lines, interleaved.
    fn megabyte_without_secrets() -> String {
        const WORDS: &[&str] = &[
            "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "made", "deal",
            "cafe", "beef", "add", "value", "error:", "at", "line", "42",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut text = String::new();
        while text.len() < 1 << 20 {
            match rng.below(4) {
                0 | 1 => {
                    for _ in 0..12 {
                        text.push_str(rng.pick::<&str>(WORDS));
                        text.push(' ');
                    }
                    text.push('\n');
                }
                2 => {
                    text.push_str(&STANDARD.encode(rng.bytes_exact(57)));
                    text.push('\n');
                }
                _ => {
                    for byte in rng.bytes_exact(16) {
                        text.push_str(&format!(" {byte:02x}"));
                    }
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Run with `cargo test --release --lib scrub_cost -- --nocapture` to see the figures.
    #[test]
    fn scrub_cost_without_a_match() {
        let s = scrubber(&[
            "long-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLM",
            "sk-live \"Q7\\zx\" & w/\u{e9}+~?>",
            "hunter2-password",
        ]);
        let text = megabyte_without_secrets();
        let one_line = text.replace('\n', " ");
        for (name, text) in [("mixed lines", &text), ("one line", &one_line)] {
            assert!(matches!(s.scrub(text), Cow::Borrowed(_)), "{name}");
            let runs = if cfg!(debug_assertions) { 2 } else { 50 };
            let start = std::time::Instant::now();
            for _ in 0..runs {
                let out = s.scrub(std::hint::black_box(text));
                assert!(matches!(out, Cow::Borrowed(_)));
            }
            let per_run = start.elapsed() / runs;
            println!(
                "scrub of {} bytes ({name}), no match: {per_run:?}",
                text.len()
            );
        }
    }

    /// `text` with `eol` after every `width` characters but the last ones.
    fn wrap(text: &str, width: usize, eol: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        chars
            .chunks(width)
            .map(|line| line.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(eol)
    }

    /// What `od -An -tx1` prints: 16 bytes a line, each as a space and two lowercase digits.
    fn od_hex(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .map(|line| {
                let mut out: String = line.iter().map(|b| format!(" {b:02x}")).collect();
                out.push('\n');
                out
            })
            .collect()
    }

    /// What `openssl ... -text` prints for a big number: 15 bytes a line indented by four spaces,
    /// each byte followed by a colon but the last.
    fn openssl_hex(bytes: &[u8], upper: bool) -> String {
        let digits: Vec<String> = bytes
            .iter()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect();
        let lines: Vec<String> = digits
            .chunks(15)
            .map(|line| format!("    {}", line.join(":")))
            .collect();
        lines.join(":\n") + "\n"
    }

    /// Secret longer than 57 bytes, so that `base64` wraps its encoding.
    const LONG: &str = "long-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLM";

    #[test]
    fn line_wrapped_base64_is_redacted_at_every_width() {
        let s = scrubber(&[LONG]);
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(LONG);
            for width in MIN_WRAP_WIDTH..=encoded.len() + 1 {
                for eol in ["\n", "\r\n", "\n    ", " \r\n\t"] {
                    let text = format!("key:\n{}\nnext line\n", wrap(&encoded, width, eol));
                    assert_eq!(
                        s.scrub(&text),
                        "key:\n[REDACTED]\nnext line\n",
                        "width {width}, eol {eol:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn line_wrapped_base64_of_an_embedded_secret_is_redacted_at_every_alignment() {
        let s = scrubber(&[LONG]);
        for prefix_len in 0..6 {
            let mut plain = b"user:".repeat(4)[..prefix_len].to_vec();
            plain.extend_from_slice(LONG.as_bytes());
            plain.extend_from_slice(b"@host");
            for width in [64, 76] {
                let encoded = STANDARD.encode(&plain);
                let wrapped = wrap(&encoded, width, "\n");
                let out = s.scrub(&wrapped);
                assert!(out.contains(REDACTED), "prefix {prefix_len}: {out}");
                let joined = out.replace('\n', "");
                assert_clean(&s, &joined);
                let inner = base64_inner(LONG.as_bytes(), prefix_len % 3).unwrap_or_default();
                assert!(!joined.contains(&inner), "prefix {prefix_len}: {out}");
                // The characters encoding the prefix's first whole groups survive.
                let kept = STANDARD.encode(&plain[..prefix_len / 3 * 3]);
                assert!(out.starts_with(&kept), "prefix {prefix_len}: {out}");
            }
        }
    }

    #[test]
    fn line_wrapped_pem_body_and_raw_token_are_redacted() {
        // A private key's DER, wrapped at 64 like PEM, CRLF like MIME.
        let der = "0\u{1}\u{2}MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu";
        let s = scrubber(&[der]);
        let pem = format!(
            "-----BEGIN KEY-----\r\n{}\r\n-----END KEY-----\r\n",
            wrap(&STANDARD.encode(der), 64, "\r\n")
        );
        assert_eq!(
            s.scrub(&pem),
            "-----BEGIN KEY-----\r\n[REDACTED]\r\n-----END KEY-----\r\n"
        );
        // A token cut by `fold -w 20`, alone on its lines or after 80 characters of its own.
        let token = "ghp_0123456789abcdefghijABCDEFGHIJ0123";
        let s = scrubber(&[token]);
        assert_eq!(
            s.scrub(&format!("token:\n{}\nok", wrap(token, 20, "\n"))),
            "token:\n[REDACTED]\nok"
        );
        let long = "x".repeat(80);
        assert_eq!(
            s.scrub(&format!("token: {long}{}\n{}", &token[..4], &token[4..])),
            format!("token: {long}[REDACTED]")
        );
        // Not after other text on a shorter line, as ordinary text's line ends stay.
        let text = format!("token: {}\n{}", &token[..20], &token[20..]);
        assert!(matches!(s.scrub(&text), Cow::Borrowed(_)));
    }

    #[test]
    fn line_breaks_join_only_what_spells_a_secret() {
        let s = scrubber(&[LONG]);
        let encoded = STANDARD.encode(LONG);
        // Lines narrower than any encoder wraps at are not joined.
        let narrow = wrap(&encoded, MIN_WRAP_WIDTH - 1, "\n");
        assert!(matches!(s.scrub(&narrow), Cow::Borrowed(_)));
        let (first, rest) = encoded.split_at(MIN_WRAP_WIDTH - 1);
        let text = format!("{first}\n{}", wrap(rest, 76, "\n"));
        assert!(matches!(s.scrub(&text), Cow::Borrowed(_)));
        // Ordinary lines are left alone, borrowed.
        let prose = "the quick brown\nfox jumps\r\nover\n    the lazy dog\n";
        assert!(matches!(s.scrub(prose), Cow::Borrowed(_)));
        // A blank line, a second line break, a longer indentation or other text between the
        // pieces ends the wrapped form: no piece is a pattern on its own.
        let (head, tail) = encoded.split_at(40);
        for sep in [
            "\n\n",
            "\n \n",
            "\r\n\r\n",
            "\n                 ",
            "\n> ",
            "\n#",
        ] {
            let text = format!("{head}{sep}{tail}");
            assert!(matches!(s.scrub(&text), Cow::Borrowed(_)), "{sep:?}");
        }
        // The longest separator skipped.
        let text = format!("{head}\n{}{tail}", " ".repeat(MAX_BREAK_LEN - 1));
        assert_eq!(s.scrub(&text), REDACTED);
        // Characters next to the wrapped form stay when they do not belong to it.
        assert_eq!(
            s.scrub(&format!("é:\n  {}é", wrap(&encoded, 76, "\n  "))),
            "é:\n  [REDACTED]é"
        );
    }

    #[test]
    fn spaced_and_colon_separated_hex_is_redacted() {
        let secret = "\u{fe}key-\u{ab}cdef";
        let s = scrubber(&[secret]);
        let lower = hex::encode(secret);
        let upper = hex::encode_upper(secret);
        for hex in [&lower, &upper] {
            for separator in [' ', ':'] {
                let text = format!("x {} y", separate_hex_pairs(hex, separator));
                assert_eq!(s.scrub(&text), "x [REDACTED] y", "{text}");
            }
        }
        assert_eq!(
            s.scrub(&format!("bytes: {}.", separate_hex_pairs(&lower, ' '))),
            "bytes: [REDACTED]."
        );
    }

    #[test]
    fn hex_dumps_wrapped_over_lines_are_redacted_at_every_offset() {
        let s = scrubber(&[LONG]);
        let strip = |text: &str| -> String {
            text.chars()
                .filter(|c| !matches!(c, ' ' | '\r' | '\n' | ':'))
                .collect()
        };
        for prefix_len in 0..17 {
            let mut plain = b"#".repeat(prefix_len);
            plain.extend_from_slice(LONG.as_bytes());
            plain.extend_from_slice(b"##");
            let dumps = [
                od_hex(&plain),
                od_hex(&plain).replace('\n', "\r\n"),
                wrap(&hex::encode(&plain), 60, "\n"),
                wrap(&hex::encode_upper(&plain), 32, "\n"),
                openssl_hex(&plain, false),
                openssl_hex(&plain, true),
            ];
            for dump in dumps {
                let out = s.scrub(&dump);
                let joined = strip(&out);
                assert!(!joined.contains(&hex::encode(LONG)), "{prefix_len}: {out}");
                assert!(
                    !joined.contains(&hex::encode_upper(LONG)),
                    "{prefix_len}: {out}"
                );
                // Exactly the secret's bytes go: the `#`s around it stay.
                assert_eq!(
                    joined.to_lowercase(),
                    format!("{}[redacted]2323", "23".repeat(prefix_len)),
                    "{dump}"
                );
            }
        }
    }

    #[test]
    fn every_view_pattern_is_found_broken_anywhere() {
        // Each pattern broken after its first or before its last character, after a line of
        // the shortest width wrapped: the detection window must reach from the break to either
        // end of the longest pattern.
        let s = scrubber(&[LONG, "hunter2-password"]);
        let line = "0".repeat(MIN_WRAP_WIDTH);
        for pattern in s.patterns() {
            if !in_view(&VIEWS[0], pattern.as_bytes()) {
                continue;
            }
            let len = pattern.len();
            for (head, sep) in [(1, "\n"), (len - 1, "\r\n"), (len / 2, "\n\t")] {
                let text = format!("{line}{}{sep}{}>", &pattern[..head], &pattern[head..]);
                assert_eq!(s.scrub(&text), format!("{line}[REDACTED]>"), "{text}");
            }
            let text = format!("<\n{}>", wrap(&pattern, MIN_WRAP_WIDTH, "\n"));
            assert_eq!(s.scrub(&text), "<\n[REDACTED]>", "{text}");
            if pattern.bytes().all(|b| b.is_ascii_hexdigit()) {
                let spaced = separate_hex_pairs(&pattern, ' ');
                let last = spaced.len() - 1;
                let text = format!("  {line} {}\n{}>", &spaced[..last], &spaced[last..]);
                assert_eq!(s.scrub(&text), format!("  {line} [REDACTED]>"), "{text}");
                let text = format!("x\n{line}:{}:\n {}>", &spaced[..1], &spaced[1..]);
                assert_eq!(s.scrub(&text), format!("x\n{line}:[REDACTED]>"), "{text}");
            }
        }
    }

    #[test]
    fn next_newline_finds_every_line_break() {
        // Bytes next to `\n` in value or in bits, at every offset and length.
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let bytes = [b'\n', 0x0b, 0x09, 0x8a, 0x0a ^ 0x80, 0x01, 0xff, b'a'];
        for _ in 0..2000 {
            let len = rng.below(70);
            let hay: Vec<u8> = (0..len).map(|_| *rng.pick(&bytes)).collect();
            for from in 0..=len + 1 {
                let expected = hay
                    .get(from..)
                    .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
                    .map(|p| from + p);
                assert_eq!(next_newline(&hay, from), expected, "{hay:?} from {from}");
            }
        }
    }

    #[test]
    fn lowercase_percent_encoding_is_redacted() {
        let secret = "pass word&more/x";
        let s = scrubber(&[secret]);
        assert_eq!(
            s.scrub("https://h/?p=pass%20word%26more%2fx&q=1"),
            "https://h/?p=[REDACTED]&q=1"
        );
        assert_eq!(s.scrub("p=pass+word%26more%2fx&q=1"), "p=[REDACTED]&q=1");
        assert_eq!(
            lowercase_percent_hex("%2F%C3%A9AB%"),
            "%2f%c3%a9AB%",
            "only the two digits after each % change"
        );
    }

    /// Text with secrets wrapped over lines, in dumps and encodings, around prompts and
    /// ordinary lines.
    fn wrapped_fixture() -> (Arc<Scrubber>, Vec<u8>) {
        let secret = "wrapped-secret-0123456789-abcdefghijklmnopqrstuvwxyz";
        let s = scrubber(&[secret, "Tok3n/xyz"]);
        let mut text = b"Password: line one\nline two\n".to_vec();
        text.extend_from_slice(wrap(&STANDARD.encode(secret), 20, "\r\n").as_bytes());
        text.extend_from_slice(b"\n\xff\n");
        text.extend_from_slice(od_hex(secret.as_bytes()).as_bytes());
        text.extend_from_slice(b"de ad be ef Tok3n");
        text.extend_from_slice(openssl_hex(b"Tok3n/xyz", false).as_bytes());
        text.extend_from_slice(b"q=Tok3n%2fxyz\n ");
        text.extend_from_slice(wrap(&hex::encode("Tok3n/xyz"), 16, "\n  ").as_bytes());
        text.extend_from_slice(b"\n end");
        (s, text)
    }

    #[test]
    fn wrapped_stream_split_in_two_matches_whole_scrub() {
        let (s, text) = wrapped_fixture();
        let whole = s.scrub_bytes(&text);
        assert_eq!(
            whole.windows(10).filter(|w| w == b"[REDACTED]").count(),
            5,
            "{}",
            String::from_utf8_lossy(&whole)
        );
        for i in 0..=text.len() {
            assert_eq!(stream_with_cuts(&s, &text, &[i]), whole, "cut at {i}");
        }
        let cuts: Vec<usize> = (1..text.len()).collect();
        assert_eq!(stream_with_cuts(&s, &text, &cuts), whole);
    }

    #[test]
    fn wrapped_stream_split_in_three_matches_whole_scrub() {
        let (s, text) = wrapped_fixture();
        let whole = s.scrub_bytes(&text);
        // Every pair of cuts 3 bytes apart or less, and a spread of the others.
        for i in 0..=text.len() {
            for j in (i..=text.len()).filter(|j| j - i <= 3 || (j + i) % 7 == 0) {
                assert_eq!(stream_with_cuts(&s, &text, &[i, j]), whole, "cuts {i}, {j}");
            }
        }
    }

    #[test]
    fn stream_keeps_the_line_before_a_break() {
        // Wrapped forms whose secret starts far into a line: whether the break after that line
        // is skipped depends on bytes before the secret, which a stream cut anywhere must still
        // see.
        let s = scrubber(&[LONG]);
        let mut plain = b"prefix-bytes:".repeat(4);
        plain.extend_from_slice(LONG.as_bytes());
        let mut text = format!("b64:\n{}\n", wrap(&STANDARD.encode(&plain), 76, "\n"));
        text.push_str(&od_hex(&plain[40..]));
        let (head, tail) = LONG.split_at(5);
        text.push_str(&format!("x: {}{head}\n{tail}\n", "0".repeat(85)));
        // Not joined: other text starts this shorter line.
        text.push_str(&format!("y: {}{head}\n{tail}\n", "0".repeat(74)));
        let whole = s.scrub_bytes(text.as_bytes());
        assert_eq!(whole.windows(10).filter(|w| w == b"[REDACTED]").count(), 3);
        for i in 0..=text.len() {
            assert_eq!(
                stream_with_cuts(&s, text.as_bytes(), &[i]),
                whole,
                "cut at {i}"
            );
        }
    }

    #[test]
    fn stream_holds_back_at_most_max_held_back() {
        let secret = "abcdefghijklmnopqrstuvwxyz0123456789";
        let s = scrubber(&[secret]);
        let bound = s.max_held_back();
        assert_eq!(bound, (s.max_pattern_len() - 1) * (MAX_BREAK_LEN + 1));
        // The worst case: hex with the longest separator after every digit, one of them a line
        // break.
        let hex = hex::encode(secret);
        let blank = " ".repeat(MAX_BREAK_LEN);
        let line_break = format!("\n{}", " ".repeat(MAX_BREAK_LEN - 1));
        let mut text = String::new();
        for (i, digit) in hex.chars().enumerate() {
            if i > 0 {
                text.push_str(if i == MIN_WRAP_WIDTH {
                    &line_break
                } else {
                    &blank
                });
            }
            text.push(digit);
        }
        let whole = s.scrub(&text);
        assert_eq!(whole, REDACTED);
        let mut stream = s.stream();
        let mut out = Vec::new();
        let mut most = 0;
        for byte in text.as_bytes() {
            out.extend(stream.push(&[*byte]));
            let held = stream.pending.len() - stream.context;
            assert!(held <= bound, "held back too much");
            most = most.max(held);
        }
        assert!(most > 4 * s.max_pattern_len(), "the tail was held back");
        out.extend(stream.finish());
        assert_eq!(out, REDACTED.as_bytes());
    }

    #[test]
    fn stream_forwards_ordinary_lines_at_once() {
        let s = scrubber(&[LONG, "hunter2-password", "sk-live \"Q7\\zx\""]);
        let mut stream = s.stream();
        for line in [
            "Compiling stagecraft v0.1.0\n",
            "step 1 done\n",
            "Passphrase for abc: ",
            "Key (hex): 61 62\n",
            "Created /tmp/build-output/artifacts\n",
        ] {
            assert_eq!(stream.push(line.as_bytes()), line.as_bytes());
        }
        // A line that may be the first of a wrapped secret waits for the next one.
        let encoded = STANDARD.encode(LONG);
        let (first, rest) = encoded.split_at(76);
        assert_eq!(stream.push(format!("{first}\n").as_bytes()), b"");
        assert_eq!(stream.push(format!("{rest}\n").as_bytes()), b"[REDACTED]\n");
        assert!(stream.finish().is_empty());
    }

    /// Reference result with the views: every occurrence of every pattern, plus every occurrence
    /// in a view's reading of the text that crosses a line break, found by brute force on each
    /// whole run of the view's characters and separators, merged as in `brute_force`.
    fn brute_force_views(patterns: &[String], hay: &[u8]) -> Vec<u8> {
        let hex_digits: Vec<u8> = b"0123456789abcdefABCDEF".to_vec();
        let base64_chars: Vec<u8> =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=".to_vec();
        // (characters, separator bytes, whether a separator needs a line break)
        let views: [(&[u8], &[u8], bool); 2] = [
            (&base64_chars, b" \t\r\n", true),
            (&hex_digits, b" \t\r\n:", false),
        ];
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for p in patterns {
            let p = p.as_bytes();
            for start in 0..hay.len() {
                if hay[start..].starts_with(p) {
                    spans.push((start, start + p.len()));
                }
            }
        }
        for (chars, seps, needs_newline) in views {
            let mut i = 0;
            while i < hay.len() {
                if !chars.contains(&hay[i]) {
                    i += 1;
                    continue;
                }
                // One segment: characters, and separators between characters.
                let mut text = Vec::new();
                let mut at = Vec::new();
                let mut breaks = Vec::new();
                let mut line_start = 0;
                loop {
                    while i < hay.len() && chars.contains(&hay[i]) {
                        text.push(hay[i]);
                        at.push(i);
                        i += 1;
                    }
                    let mut end = i;
                    while end < hay.len() && seps.contains(&hay[end]) {
                        end += 1;
                    }
                    let newlines = hay[i..end].iter().filter(|&&b| b == b'\n').count();
                    let valid = end > i
                        && end - i <= MAX_BREAK_LEN
                        && newlines <= 1
                        && (newlines == 1 || !needs_newline)
                        && (newlines == 0 || {
                            // A wrapped line: long, or made of the view's text only.
                            let line = text.len() - line_start;
                            let blanks = hay[..at[line_start]]
                                .iter()
                                .rev()
                                .take_while(|b| matches!(b, b' ' | b'\t' | b'\r'))
                                .count();
                            let first = at[line_start] - blanks;
                            line >= LONG_LINE
                                || (line >= MIN_WRAP_WIDTH
                                    && blanks <= MAX_BREAK_LEN
                                    && (first == 0 || hay[first - 1] == b'\n'))
                        })
                        && end < hay.len()
                        && chars.contains(&hay[end]);
                    if !valid {
                        break;
                    }
                    if newlines == 1 {
                        breaks.push(text.len());
                        line_start = text.len();
                    }
                    i = end;
                }
                for p in patterns.iter().map(String::as_bytes) {
                    if !p.iter().all(|b| chars.contains(b)) {
                        continue;
                    }
                    for start in 0..text.len() {
                        let end = start + p.len();
                        if text[start..].starts_with(p)
                            && breaks.iter().any(|&b| start < b && b < end)
                        {
                            spans.push((at[start], at[end - 1] + 1));
                        }
                    }
                }
            }
        }
        redact_spans(hay, spans)
    }

    #[test]
    fn property_line_breaks_match_brute_force() {
        // Secrets over two letters, written raw, as hex and as base64, with separators dropped
        // in at random, and line breaks mostly after long enough lines: overlapping, adjacent
        // and wrapped occurrences are frequent.
        const BREAKS: &[&str] = &["\n", "\r\n", "\n ", ":\n    ", "\n\n", " \n", "\n\t"];
        const SEPARATORS: &[&str] = &[" ", ":", "  ", " ", ":", "x", "."];
        let mut rng = XorShift(0x5851_f42d_4c95_7f2d);
        for round in 0..400 {
            let s = Arc::new(Scrubber::new());
            let mut secrets = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let secret = rng.string(&['a', 'b'], 6, 24);
                assert!(s.add(&secret));
                secrets.push(secret);
            }
            let mut text = String::new();
            let mut line = 0;
            for _ in 0..1 + rng.below(5) {
                let secret = rng.pick(&secrets).clone();
                let form = match rng.below(5) {
                    0 => secret,
                    1 => hex::encode(&secret),
                    2 => separate_hex_pairs(&hex::encode_upper(&secret), ' '),
                    3 => STANDARD.encode(&secret),
                    _ => rng.string(&['a', 'b', '6', '1', '2'], 0, 24),
                };
                if rng.below(2) == 0 {
                    text.push_str(["\n", "\n  ", "\r\n"][rng.below(3)]);
                    line = 0;
                }
                for c in form.chars() {
                    let wrap_at = if rng.below(4) == 0 {
                        rng.below(MIN_WRAP_WIDTH + 2)
                    } else {
                        MIN_WRAP_WIDTH
                    };
                    if line >= wrap_at && rng.below(3) == 0 {
                        text.push_str(rng.pick::<&str>(BREAKS));
                        line = 0;
                    } else if rng.below(12) == 0 {
                        text.push_str(rng.pick::<&str>(SEPARATORS));
                    }
                    text.push(c);
                    line += 1;
                }
                if rng.below(2) == 0 {
                    text.push_str(rng.pick::<&str>(SEPARATORS));
                }
            }
            let expected = brute_force_views(&s.patterns(), text.as_bytes());
            let out = s.scrub(&text);
            assert_eq!(
                String::from_utf8_lossy(out.as_bytes()),
                String::from_utf8_lossy(&expected),
                "round {round}: {text:?}"
            );
            let mut cuts: Vec<usize> = (0..rng.below(6))
                .map(|_| rng.below(text.len() + 1))
                .collect();
            cuts.sort_unstable();
            let streamed = stream_with_cuts(&s, text.as_bytes(), &cuts);
            assert_eq!(streamed, expected, "round {round}: {text:?}, cuts {cuts:?}");
        }
    }
}
