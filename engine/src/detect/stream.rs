//! Scanning text that arrives in pieces, such as a streamed model response.
//!
//! A stream cannot be scanned piece by piece: an entity may be split between
//! two pieces, and the detectors judge a candidate by the bytes around it.
//! So [`StreamScan`] holds back the end of what it has received and hands on
//! only the text whose findings are settled. The scan loop is the very loop
//! [`Detectors::scan`] runs, stopped where the bytes so far cannot decide and
//! resumed when more come, so a stream finds exactly what a scan of the whole
//! text finds, whatever the pieces (a property test checks this).
//!
//! # How much is held back
//!
//! Text is held from the first place where a match may still begin:
//!
//! - a byte a detector can start with, from which the patterns' automaton,
//!   run anchored over the bytes received, has not yet failed (`J` of a JWT
//!   whose base64 is still arriving; `@` of an address whose domain is);
//! - a candidate whose validator reads bytes not yet received (the digit that
//!   would glue a number to it, the rest of a key, a PEM block's END line);
//!
//! minus [`LOOKBEHIND`] bytes, since a finding may begin before its anchor
//! (an e-mail address's local part, up to 64 bytes). Prose releases almost
//! at once: after the last word there is nothing that could still match.
//!
//! # Bounds
//!
//! The hold-back is bounded by [`MAX_HOLD`]: a match that is still open that
//! far behind the newest byte is given up for (a 17 KiB JWT-shaped run that
//! never closes, an address with a 17 KiB domain). No built-in entity can be
//! that long and still be a finding, except such an address; a custom
//! pattern that can match more than that may be found late, and only the
//! part not yet handed on is then reported. The text kept is the held part
//! plus [`CONTEXT`] bytes before it, which the validators look back over.

use regex_automata::{Anchored, Input};

use super::{Compiled, Cursor, Detectors, Finding, MAX_EMAIL_LOCAL_PART, MAX_PEM_BLOCK};

/// How far before its anchor a finding can start: an e-mail address's local
/// part and the byte before it (key prefixes, IBAN country codes and IPv6
/// groups reach back less).
const LOOKBEHIND: usize = MAX_EMAIL_LOCAL_PART + 2;

/// Bytes kept before the held text for validators that look back (the local
/// part of an address, the run of hex digits and colons before an IPv4
/// address, a word a key prefix must not be glued to).
const CONTEXT: usize = 160;

/// Longest a match may stay open before the stream stops waiting for it: a
/// PEM block's limit plus room for its header.
pub const MAX_HOLD: usize = MAX_PEM_BLOCK + 1024;

/// Released text is dropped from the buffer once this much has accumulated,
/// so that a long stream keeps only its held part in memory.
const TRIM_AFTER: usize = 8 * 1024;

/// Capacity of the anchored automaton's transition cache, per stream.
const OPEN_MATCH_CACHE_CAPACITY: usize = 256 * 1024;

/// Scans text that arrives in pieces. Feed it with [`StreamScan::push`] and
/// end with [`StreamScan::finish`]; each returns the text that is now safe
/// to hand on, with the findings in it. Concatenating every piece gives the
/// text pushed, and their findings are those [`Detectors::scan`] finds in it.
pub struct StreamScan {
    detectors: Detectors,
    /// Text from absolute offset `cursor.base` on.
    buffer: String,
    cursor: Cursor,
    /// Settled findings not yet handed on, buffer-relative.
    findings: Vec<Finding>,
    liveness: Liveness,
    /// Buffer-relative end of the text handed on.
    released: usize,
}

/// A stretch of a stream that is safe to hand on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamPiece {
    /// Byte offset of `text` in the whole stream.
    pub offset: usize,
    pub text: String,
    /// Findings in `text`, with spans counted from the start of the stream.
    pub findings: Vec<Finding>,
}

impl StreamScan {
    pub(super) fn new(detectors: Detectors) -> StreamScan {
        let liveness = Liveness::new(&detectors.inner);
        StreamScan {
            detectors,
            buffer: String::new(),
            cursor: Cursor::default(),
            findings: Vec::new(),
            liveness,
            released: 0,
        }
    }

    /// Adds the next piece of text and returns what is now settled.
    pub fn push(&mut self, piece: &str) -> StreamPiece {
        self.buffer.push_str(piece);
        let compiled = &*self.detectors.inner;
        let unsettled = compiled.advance(
            &self.buffer,
            &mut self.cursor,
            &mut self.findings,
            Some(&mut self.liveness),
        );
        let mut until = floor_char_boundary(&self.buffer, unsettled.saturating_sub(LOOKBEHIND));
        // Never split a finding: hand on all of it or none.
        if let Some(straddling) = self
            .findings
            .iter()
            .find(|f| f.start < until && f.end > until)
        {
            until = straddling.start;
        }
        let piece = self.release(until);
        self.trim();
        piece
    }

    /// Ends the stream: everything not yet handed on is settled now.
    pub fn finish(&mut self) -> StreamPiece {
        let compiled = &*self.detectors.inner;
        compiled.advance(&self.buffer, &mut self.cursor, &mut self.findings, None);
        self.release(self.buffer.len())
    }

    /// Bytes received but not yet handed on.
    pub fn held(&self) -> usize {
        self.buffer.len() - self.released
    }

    /// Bytes kept in memory (held text plus context and released text not
    /// yet dropped).
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    fn release(&mut self, until: usize) -> StreamPiece {
        let from = self.released;
        if until <= from {
            return StreamPiece {
                offset: self.cursor.base + from,
                ..StreamPiece::default()
            };
        }
        let settled = self.findings.partition_point(|f| f.end <= until);
        let base = self.cursor.base;
        let findings: Vec<Finding> = self
            .findings
            .drain(..settled)
            .map(|f| Finding {
                // Only a match open longer than MAX_HOLD can start in text
                // already handed on; what is left of it is reported.
                start: base + f.start.max(from),
                end: base + f.end,
                ..f
            })
            .collect();
        if let Some(last) = findings.last() {
            self.cursor.floor = last.end - base;
        }
        self.released = until;
        StreamPiece {
            offset: base + from,
            text: self.buffer[from..until].to_owned(),
            findings,
        }
    }

    /// Drops released text the validators no longer look back over.
    fn trim(&mut self) {
        if self.released < TRIM_AFTER + CONTEXT {
            return;
        }
        let drop = floor_char_boundary(&self.buffer, self.released - CONTEXT);
        self.buffer.drain(..drop);
        self.released -= drop;
        self.cursor.base += drop;
        self.cursor.at = self.cursor.at.saturating_sub(drop);
        self.cursor.floor = self.cursor.floor.saturating_sub(drop);
        self.liveness.checked = self.liveness.checked.saturating_sub(drop);
        for finding in &mut self.findings {
            finding.start -= drop;
            finding.end -= drop;
        }
    }
}

impl std::fmt::Debug for StreamScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScan")
            .field("offset", &self.cursor.base)
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Finds, in a stream's buffer, the first place a match may still begin
/// when more text arrives.
pub(super) struct Liveness {
    cache: Option<regex_automata::hybrid::dfa::Cache>,
    /// Positions before this were found to hold no open match.
    pub(super) checked: usize,
}

impl Liveness {
    fn new(compiled: &Compiled) -> Liveness {
        Liveness {
            cache: compiled.open_match_dfa().map(|dfa| dfa.create_cache()),
            checked: 0,
        }
    }

    /// The first position at or after `from` where some pattern, run
    /// anchored there over the bytes of `text`, has not failed yet (so more
    /// text could still make it match, or match longer); `text.len()` if
    /// there is none.
    pub(super) fn first_open(&mut self, compiled: &Compiled, text: &str, from: usize) -> usize {
        let bytes = text.as_bytes();
        let mut at = from.max(self.checked);
        while at < bytes.len() {
            let may_start = compiled
                .anchors
                .as_ref()
                .is_none_or(|anchors| anchors.contains(bytes[at]));
            if may_start && text.is_char_boundary(at) && self.open_at(compiled, text, at) {
                self.checked = at;
                return at;
            }
            at += 1;
        }
        self.checked = bytes.len();
        bytes.len()
    }

    fn open_at(&mut self, compiled: &Compiled, text: &str, at: usize) -> bool {
        let (Some(dfa), Some(cache)) = (compiled.open_match_dfa(), self.cache.as_mut()) else {
            // No automaton: assume every anchor may still match, up to MAX_HOLD.
            return text.len() - at < MAX_HOLD;
        };
        let input = Input::new(text).range(at..).anchored(Anchored::Yes);
        let Ok(mut state) = dfa.start_state_forward(cache, &input) else {
            return text.len() - at < MAX_HOLD;
        };
        for (read, &byte) in text.as_bytes()[at..].iter().enumerate() {
            if read >= MAX_HOLD {
                return false;
            }
            match dfa.next_state(cache, state, byte) {
                Ok(next) => state = next,
                Err(_) => return true,
            }
            if state.is_dead() {
                return false;
            }
            if state.is_quit() {
                // The automaton gave up on this byte (a Unicode word boundary
                // in a custom pattern); the match may still go on.
                return text.len() - at < MAX_HOLD;
            }
        }
        true
    }
}

impl Compiled {
    /// The anchored automaton of every pattern, built on first use.
    fn open_match_dfa(&self) -> Option<&regex_automata::hybrid::dfa::DFA> {
        self.open_matches
            .get_or_init(|| {
                use regex_automata::MatchKind;
                use regex_automata::hybrid::dfa::DFA;
                use regex_automata::nfa::thompson::{Compiler, Config, WhichCaptures};
                let nfa = Compiler::new()
                    .configure(
                        Config::new()
                            .which_captures(WhichCaptures::None)
                            .nfa_size_limit(None),
                    )
                    .build_many_from_hir(&self.hirs)
                    .ok()?;
                DFA::builder()
                    .configure(
                        DFA::config()
                            .match_kind(MatchKind::LeftmostFirst)
                            .unicode_word_boundary(true)
                            .cache_capacity(OPEN_MATCH_CACHE_CAPACITY)
                            .skip_cache_capacity_check(true),
                    )
                    .build_from_nfa(nfa)
                    .ok()
            })
            .as_ref()
    }
}
