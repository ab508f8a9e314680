//! How a segment document is stored: plain JSON (directory store) or gzip
//! (ConfigMaps).
//!
//! Records are repetitive (the same writer, subject, model, policy and codes
//! over and over; each `prev_hash` repeats the previous `hash`), so gzip stores
//! a typical decision in about 125 bytes instead of about 800 and one ConfigMap
//! of under 1 MiB holds 7,000 of them: that is what lets one writer record
//! 5,000 decisions per second with about one API write per second.
//!
//! A gzip body is a sequence of gzip *members* (RFC 1952 section 2.2) whose
//! decompressed concatenation is the segment JSON: the writer compresses each
//! flush's new records once, as a member, instead of recompressing the whole
//! segment. `gzip -d`, Python's `gzip` and Go's `compress/gzip` read
//! multi-member files as one stream. Decoding stops at [`MAX_DOCUMENT_BYTES`], so
//! a planted gzip bomb is reported as malformed, not inflated.
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

/// Largest decompressed segment document read back. A writer never produces
/// more than a few MiB; anything larger is not a segment.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// How a store keeps segment documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The JSON document as it is.
    Json,
    /// Gzip members whose concatenation is the JSON document.
    Gzip,
}

impl Encoding {
    /// Encode one piece of a document (a whole document for JSON, one member
    /// for gzip).
    pub fn encode(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Encoding::Json => bytes.to_vec(),
            Encoding::Gzip => gzip_member(bytes),
        }
    }

    /// The document JSON of a stored body.
    pub fn decode(self, body: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Json => Ok(body.to_vec()),
            Encoding::Gzip => gunzip(body),
        }
    }
}

/// One gzip member of `bytes`.
pub fn gzip_member(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 5 + 64),
        Compression::default(),
    );
    // Writing to a Vec cannot fail.
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Decompress every member of `body`, refusing more than [`MAX_DOCUMENT_BYTES`].
pub fn gunzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(body.len() * 6);
    MultiGzDecoder::new(body)
        .take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    if out.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "decompresses to more than {MAX_DOCUMENT_BYTES} bytes; not a segment"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_concatenate_into_one_document() {
        let mut body = gzip_member(b"{\"records\":[1");
        body.extend(gzip_member(b",2,3"));
        body.extend(gzip_member(b"]}"));
        assert_eq!(gunzip(&body).unwrap(), b"{\"records\":[1,2,3]}");
    }

    #[test]
    fn garbage_and_bombs_are_refused() {
        assert!(gunzip(b"not gzip").is_err());
        let bomb = gzip_member(&vec![b'a'; MAX_DOCUMENT_BYTES + 10]);
        assert!(bomb.len() < 200_000);
        let error = gunzip(&bomb).unwrap_err();
        assert!(error.contains("not a segment"), "{error}");
    }
}
