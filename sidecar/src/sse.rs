//! Server-sent events, as model APIs stream them: split a byte stream into
//! events without holding more than one incomplete event, and write events
//! back.
//!
//! An event is the lines up to a blank line; the enforcement point reads its
//! `event:` name and its `data:` (several `data:` lines join with newlines)
//! and keeps its raw bytes, so an event nobody changed is passed on exactly as
//! it came.

use bytes::{Bytes, BytesMut};

/// Longest event kept while waiting for its end. A longer one is passed on
/// uninspected in pieces (usage and output text in it are not seen).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The bytes as received, blank line included.
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub name: Option<String>,
    /// The `data:` lines joined by newlines; empty when there were none.
    pub data: String,
}

impl Event {
    /// A new event with the given name and data, as bytes on the wire.
    pub fn encode(name: Option<&str>, data: &str) -> Bytes {
        let mut out = String::with_capacity(data.len() + 32);
        if let Some(name) = name {
            out.push_str("event: ");
            out.push_str(name);
            out.push('\n');
        }
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// What [`EventSplitter::push`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Event(Event),
    /// Bytes of an over-long event, passed on as they are.
    Opaque(Bytes),
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct EventSplitter {
    buffer: BytesMut,
    /// Inside an over-long event: pass bytes on until its blank line.
    skipping: bool,
    /// Bytes of `buffer` already searched for an event end (minus the two a
    /// separator may still complete), so a slow stream is not searched again.
    searched: usize,
}

impl EventSplitter {
    /// Adds bytes and returns every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Piece> {
        self.buffer.extend_from_slice(bytes);
        let mut out = vec![];
        while let Some(end) = event_end(&self.buffer, self.searched) {
            self.searched = 0;
            let raw = self.buffer.split_to(end).freeze();
            if self.skipping {
                self.skipping = false;
                out.push(Piece::Opaque(raw));
            } else {
                out.push(Piece::Event(parse(raw)));
            }
        }
        self.searched = self.buffer.len().saturating_sub(2);
        if self.buffer.len() > MAX_EVENT_BYTES {
            self.skipping = true;
            self.searched = 0;
            out.push(Piece::Opaque(self.buffer.split().freeze()));
        }
        out
    }

    /// The bytes of an event the stream never finished.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// The end (exclusive) of the first complete event: after `\n\n`, `\r\n\r\n`
/// or `\r\r`.
fn event_end(buffer: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buffer.len() {
        match buffer[i] {
            b'\n' => {
                if buffer.get(i + 1) == Some(&b'\n') {
                    return Some(i + 2);
                }
                if buffer.get(i + 1) == Some(&b'\r') && buffer.get(i + 2) == Some(&b'\n') {
                    return Some(i + 3);
                }
            }
            b'\r' if buffer.get(i + 1) == Some(&b'\r') => return Some(i + 2),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse(raw: Bytes) -> Event {
    let text = String::from_utf8_lossy(&raw);
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n']) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    Event {
        raw,
        name,
        data: data.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(pieces: Vec<Piece>) -> Vec<Event> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Event(e) => e,
                Piece::Opaque(_) => panic!("unexpected opaque piece"),
            })
            .collect()
    }

    #[test]
    fn events_split_across_chunks_keep_their_raw_bytes_and_fields() {
        let mut splitter = EventSplitter::default();
        assert!(
            splitter
                .push(b"event: message_start\ndata: {\"a\":")
                .is_empty()
        );
        let got = events(splitter.push(b"1}\n\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n"));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name.as_deref(), Some("message_start"));
        assert_eq!(got[0].data, "{\"a\":1}");
        assert_eq!(
            &got[0].raw[..],
            b"event: message_start\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(got[1].data, "x\ny");
        assert_eq!(got[2].data, "[DONE]");
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn an_unfinished_event_is_returned_at_the_end() {
        let mut splitter = EventSplitter::default();
        assert!(splitter.push(b"data: partial").is_empty());
        assert_eq!(splitter.finish().as_deref(), Some(&b"data: partial"[..]));
    }

    #[test]
    fn an_over_long_event_is_passed_on_uninspected() {
        let mut splitter = EventSplitter::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        let pieces = splitter.push(&big);
        assert!(matches!(&pieces[..], [Piece::Opaque(b)] if b.len() == big.len()));
        let pieces = splitter.push(b"tail\n\ndata: ok\n\n");
        assert!(matches!(&pieces[0], Piece::Opaque(b) if &b[..] == b"tail\n\n"));
        assert!(matches!(&pieces[1], Piece::Event(e) if e.data == "ok"));
    }

    #[test]
    fn encoded_events_split_back_into_the_same_fields() {
        let bytes = Event::encode(Some("error"), "{\"a\":\n1}");
        let got = events(EventSplitter::default().push(&bytes));
        assert_eq!(got[0].name.as_deref(), Some("error"));
        assert_eq!(got[0].data, "{\"a\":\n1}");
    }
}
