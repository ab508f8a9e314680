//! Segments: batches of consecutive records of one writer, signed.
//!
//! A segment is the unit a store writes (one ConfigMap or one file). Its header
//! states the first and last sequence, the chain head of the previous segment,
//! its own last hash, the Merkle root of its record hashes and (format 2) the
//! root of the writer's whole tree at its last record; an Ed25519 signature
//! covers the header's canonical bytes. Records are chained one to the next, so
//! the signature over the last hash and the roots vouches for every record.
//!
//! While **open** a segment is rewritten on every flush; a format-2 writer signs
//! each flush (the header then has a `key_id` but no `sealed_at`), so a record
//! nobody with the key wrote is refused even before the segment is sealed. Once
//! **sealed** (`sealed_at` set and signed) it never changes, and a format-2
//! segment also carries the writer's C2SP [checkpoint](super::checkpoint) at its
//! last record and the [frontier](super::TreeFrontier) of the writer's tree
//! before its first record, from which a verifier recomputes the tree root.
//!
//! Format 1 (no tree, open segments unsigned) is still read and verified; this
//! code writes format 2.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::hash::Hash256;
use super::keys::AuditSigningKey;
use super::merkle::{InvalidFrontier, TreeFrontier, merkle_root};
use super::record::{AuditRecord, CanonicalSink, RecordTime, put_opt_str, put_str};

/// Magic prefix of the canonical header bytes of format 1.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PBASEG01";
/// Magic prefix of the canonical header bytes of format 2.
pub const SEGMENT_MAGIC_V2: &[u8; 8] = b"PBASEG02";
/// The segment format this code writes.
pub const SEGMENT_FORMAT: u32 = 2;
/// The first format: no writer tree, open segments unsigned. Read, not written.
pub const LEGACY_SEGMENT_FORMAT: u32 = 1;

/// The header of a segment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    /// Segment format version: 1 or 2.
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
    /// Format 2: RFC 6962 root of the writer's tree of all its records up to
    /// `last_seq` (the root of its checkpoint at `last_seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_root: Option<Hash256>,
    /// When the segment was sealed; absent while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<RecordTime>,
    /// Id of the key that signed the header; absent while unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl SegmentHeader {
    /// The bytes the signature covers. Layout in `docs/audit.md`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(224);
        let v2 = self.format >= SEGMENT_FORMAT;
        out.put(if v2 { SEGMENT_MAGIC_V2 } else { SEGMENT_MAGIC });
        out.put(&self.format.to_be_bytes());
        put_str(&mut out, &self.writer);
        out.put(&self.first_seq.to_be_bytes());
        out.put(&self.last_seq.to_be_bytes());
        out.put(&self.record_count.to_be_bytes());
        out.put(self.prev_segment_hash.as_bytes());
        out.put(self.last_hash.as_bytes());
        out.put(self.merkle_root.as_bytes());
        if v2 {
            out.put(self.tree_root.unwrap_or(Hash256::ZERO).as_bytes());
        }
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

    /// The unsigned format-2 header of records `first_seq..` with these hashes,
    /// and the writer's tree after them. `before` is the tree before `first_seq`.
    pub fn describe(
        writer: &str,
        prev_segment_hash: Hash256,
        before: &TreeFrontier,
        record_hashes: &[Hash256],
    ) -> (SegmentHeader, TreeFrontier) {
        let mut after = before.clone();
        for hash in record_hashes {
            after.push_record(hash);
        }
        let mut header =
            Self::describe_v1(writer, prev_segment_hash, before.size() + 1, record_hashes);
        header.format = SEGMENT_FORMAT;
        header.tree_root = Some(after.root());
        (header, after)
    }

    /// The unsigned format-1 header of records `first_seq..` with these hashes
    /// (a writer that resumed a format-1 chain keeps writing format 1).
    pub fn describe_v1(
        writer: &str,
        prev_segment_hash: Hash256,
        first_seq: u64,
        record_hashes: &[Hash256],
    ) -> SegmentHeader {
        let count = record_hashes.len() as u64;
        SegmentHeader {
            format: LEGACY_SEGMENT_FORMAT,
            writer: writer.to_string(),
            first_seq,
            last_seq: first_seq + count.saturating_sub(1),
            record_count: count,
            prev_segment_hash,
            last_hash: record_hashes.last().copied().unwrap_or(Hash256::ZERO),
            merkle_root: merkle_root(record_hashes),
            tree_root: None,
            sealed_at: None,
            key_id: None,
        }
    }

    /// Sign the header (sealed when `sealed_at` is given, an open flush
    /// otherwise) and return the base64 signature.
    pub fn sign(&mut self, sealed_at: Option<RecordTime>, key: &AuditSigningKey) -> String {
        self.sealed_at = sealed_at;
        self.key_id = Some(key.key_id().to_string());
        BASE64.encode(key.sign(&self.canonical_bytes()))
    }

    /// The writer's checkpoint this header states (format 2).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let root = self.tree_root?;
        Some(Checkpoint::for_writer(&self.writer, self.last_seq, root))
    }
}

/// A segment as stored: header, signature, tree data and the records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// The header.
    pub header: SegmentHeader,
    /// Base64 (standard alphabet, padded) of the 64-byte Ed25519 signature over
    /// the header's canonical bytes; absent while unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Format 2: the writer's tree before the first record, as the roots of its
    /// perfect subtrees, largest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontier: Option<Vec<Hash256>>,
    /// Format 2, sealed: the writer's signed C2SP checkpoint at `last_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The records, in sequence order.
    pub records: Vec<AuditRecord>,
}

impl Segment {
    /// An open, unsigned format-1 segment over `records` (non-empty, consecutive
    /// records of one writer). Kept for reading and for tests of old trails.
    ///
    /// # Panics
    /// If `records` is empty: a segment always holds at least one record.
    pub fn open(prev_segment_hash: Hash256, records: Vec<AuditRecord>) -> Self {
        let first = records
            .first()
            .expect("a segment holds at least one record");
        let hashes: Vec<Hash256> = records.iter().map(|r| r.hash).collect();
        let header =
            SegmentHeader::describe_v1(&first.writer, prev_segment_hash, first.seq, &hashes);
        Segment {
            header,
            signature: None,
            frontier: None,
            checkpoint: None,
            records,
        }
    }

    /// An open format-2 segment over `records`, in a writer tree that held
    /// `before` before them.
    ///
    /// # Panics
    /// If `records` is empty or does not start right after `before`.
    pub fn open_in_tree(
        prev_segment_hash: Hash256,
        before: &TreeFrontier,
        records: Vec<AuditRecord>,
    ) -> Self {
        let first = records
            .first()
            .expect("a segment holds at least one record");
        assert_eq!(first.seq, before.size() + 1, "records must follow the tree");
        let mut segment = Segment {
            header: SegmentHeader::describe_v1(&first.writer, prev_segment_hash, first.seq, &[]),
            signature: None,
            frontier: Some(before.roots().to_vec()),
            checkpoint: None,
            records,
        };
        segment.header.format = SEGMENT_FORMAT;
        segment.refresh_header();
        segment
    }

    /// The writer's tree before the first record (format 2), if stored.
    pub fn frontier_before(&self) -> Option<Result<TreeFrontier, InvalidFrontier>> {
        let roots = self.frontier.clone()?;
        Some(TreeFrontier::from_parts(
            self.header.first_seq.saturating_sub(1),
            roots,
        ))
    }

    /// Recompute the header from the records (after more were added while open);
    /// drops any signature.
    pub fn refresh_header(&mut self) {
        let hashes: Vec<Hash256> = self.records.iter().map(|r| r.hash).collect();
        let writer = self
            .records
            .first()
            .map_or(self.header.writer.clone(), |r| r.writer.clone());
        let prev = self.header.prev_segment_hash;
        let first_seq = self
            .records
            .first()
            .map_or(self.header.first_seq, |r| r.seq);
        self.header = match self.frontier_before() {
            Some(Ok(before)) if self.header.format >= SEGMENT_FORMAT => {
                SegmentHeader::describe(&writer, prev, &before, &hashes).0
            }
            _ => SegmentHeader::describe_v1(&writer, prev, first_seq, &hashes),
        };
        self.signature = None;
        self.checkpoint = None;
    }

    /// Seal: fix the header, stamp `sealed_at`, sign it and (format 2) sign the
    /// checkpoint at the last record.
    pub fn seal(&mut self, sealed_at: RecordTime, key: &AuditSigningKey) {
        self.refresh_header();
        self.signature = Some(self.header.sign(Some(sealed_at), key));
        self.checkpoint = self
            .header
            .checkpoint()
            .map(|checkpoint| checkpoint.sign(key).encode());
    }

    /// Sign an open format-2 segment as it stands (what a writer does on every
    /// flush). Format-1 segments stay unsigned while open.
    pub fn sign_open(&mut self, key: &AuditSigningKey) {
        self.refresh_header();
        if self.header.format >= SEGMENT_FORMAT {
            self.signature = Some(self.header.sign(None, key));
        }
    }

    /// Whether the segment was sealed (has a seal time and a signature).
    pub fn is_sealed(&self) -> bool {
        self.header.sealed_at.is_some() && self.signature.is_some()
    }

    /// The signature bytes, if present and well-formed.
    pub fn signature_bytes(&self) -> Option<[u8; 64]> {
        decode_signature(self.signature.as_deref()?)
    }
}

/// The 64 signature bytes of a base64 signature, if well-formed.
pub fn decode_signature(signature: &str) -> Option<[u8; 64]> {
    let decoded = BASE64.decode(signature).ok()?;
    <[u8; 64]>::try_from(decoded.as_slice()).ok()
}

/// The start of a segment document up to the opening of the records array:
/// `{"header":{..},"signature":"..","frontier":[..],"checkpoint":"..","records":[`.
/// A writer appends the records' JSON (comma-separated) and [`SEGMENT_DOCUMENT_END`];
/// the result parses as a [`Segment`] with the same field order `serde` writes.
pub fn segment_document_start(
    header: &SegmentHeader,
    signature: Option<&str>,
    frontier: Option<&[Hash256]>,
    checkpoint: Option<&str>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Head<'a> {
        header: &'a SegmentHeader,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        frontier: Option<&'a [Hash256]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        checkpoint: Option<&'a str>,
    }
    let mut out = serde_json::to_vec(&Head {
        header,
        signature,
        frontier,
        checkpoint,
    })
    .expect("a header serializes");
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"records\":[");
    out
}

/// What closes a segment document after its records.
pub const SEGMENT_DOCUMENT_END: &[u8] = b"]}";
