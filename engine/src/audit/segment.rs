//! Segments: batches of consecutive records of one writer, sealed with a signed
//! header.
//!
//! A segment is the unit a store writes (one ConfigMap or one file). While open it
//! is rewritten on every flush with an unsigned header; when it reaches its size or
//! age limit the writer seals it: the header then states the first and last
//! sequence, the chain head of the previous segment, its own last hash, the Merkle
//! root of its record hashes and the sealing time, and an Ed25519 signature covers
//! the header's canonical bytes. Records are already chained one to the next, so
//! the signature over the last hash and Merkle root vouches for every record.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::hash::Hash256;
use super::keys::AuditSigningKey;
use super::merkle::merkle_root;
use super::record::{AuditRecord, CanonicalSink, RecordTime, put_opt_str, put_str};

/// Magic prefix of the canonical header bytes (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"PBASEG01";
/// The segment format this code writes.
pub const SEGMENT_FORMAT: u32 = 1;

/// The header of a segment. Signed once sealed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    /// Segment format version, currently 1.
    pub format: u32,
    /// Writer identity of every record in the segment.
    pub writer: String,
    /// Sequence of the first record.
    pub first_seq: u64,
    /// Sequence of the last record.
    pub last_seq: u64,
    /// Number of records (`last_seq - first_seq + 1`).
    pub record_count: u64,
    /// Last record hash of the previous segment of this writer (zeros for the
    /// first). Kept when retention removes the predecessor, so the cut is verifiable.
    pub prev_segment_hash: Hash256,
    /// Hash of the last record.
    pub last_hash: Hash256,
    /// RFC 6962 Merkle root of the record hashes.
    pub merkle_root: Hash256,
    /// When the segment was sealed; absent while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<RecordTime>,
    /// Id of the key that signed the header; absent while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl SegmentHeader {
    /// The bytes the signature covers. Layout in `docs/audit.md`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        out.put(SEGMENT_MAGIC);
        out.put(&self.format.to_be_bytes());
        put_str(&mut out, &self.writer);
        out.put(&self.first_seq.to_be_bytes());
        out.put(&self.last_seq.to_be_bytes());
        out.put(&self.record_count.to_be_bytes());
        out.put(self.prev_segment_hash.as_bytes());
        out.put(self.last_hash.as_bytes());
        out.put(self.merkle_root.as_bytes());
        match self.sealed_at {
            None => out.put(&[0]),
            Some(time) => {
                out.put(&[1]);
                time.put_canonical(&mut out);
            }
        }
        put_opt_str(&mut out, self.key_id.as_deref());
        out
    }
}

/// A segment as stored: header, signature once sealed, and the records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// The header.
    pub header: SegmentHeader,
    /// Base64 (standard alphabet, padded) of the 64-byte Ed25519 signature over
    /// the header's canonical bytes; absent while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The records, in sequence order.
    pub records: Vec<AuditRecord>,
}

impl Segment {
    /// An open (unsigned) segment over `records`, which must be non-empty,
    /// consecutive records of one writer.
    ///
    /// # Panics
    /// If `records` is empty: a segment always holds at least one record.
    pub fn open(prev_segment_hash: Hash256, records: Vec<AuditRecord>) -> Self {
        let header = Self::header_for(prev_segment_hash, &records);
        Segment {
            header,
            signature: None,
            records,
        }
    }

    fn header_for(prev_segment_hash: Hash256, records: &[AuditRecord]) -> SegmentHeader {
        let first = records
            .first()
            .expect("a segment holds at least one record");
        let last = records.last().expect("a segment holds at least one record");
        let hashes: Vec<Hash256> = records.iter().map(|r| r.hash).collect();
        SegmentHeader {
            format: SEGMENT_FORMAT,
            writer: first.writer.clone(),
            first_seq: first.seq,
            last_seq: last.seq,
            record_count: records.len() as u64,
            prev_segment_hash,
            last_hash: last.hash,
            merkle_root: merkle_root(&hashes),
            sealed_at: None,
            key_id: None,
        }
    }

    /// Recompute the header from the records (after more were added while open).
    pub fn refresh_header(&mut self) {
        self.header = Self::header_for(self.header.prev_segment_hash, &self.records);
        self.signature = None;
    }

    /// Seal: fix the header, stamp `sealed_at`, sign it.
    pub fn seal(&mut self, sealed_at: RecordTime, key: &AuditSigningKey) {
        self.refresh_header();
        self.header.sealed_at = Some(sealed_at);
        self.header.key_id = Some(key.key_id().to_string());
        let signature = key.sign(&self.header.canonical_bytes());
        self.signature = Some(BASE64.encode(signature));
    }

    /// Whether the segment was sealed (has a seal time and a signature).
    pub fn is_sealed(&self) -> bool {
        self.header.sealed_at.is_some() && self.signature.is_some()
    }

    /// The signature bytes, if present and well-formed.
    pub fn signature_bytes(&self) -> Option<[u8; 64]> {
        let decoded = BASE64.decode(self.signature.as_ref()?).ok()?;
        <[u8; 64]>::try_from(decoded.as_slice()).ok()
    }
}
