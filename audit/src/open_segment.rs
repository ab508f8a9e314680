//! The segment a writer is filling, and the sealed segments waiting for the
//! store: records kept as their exact stored JSON, so a segment's size is known
//! to the byte before it is written.
use std::sync::Arc;

use policybind_engine::audit::{
    AuditSigningKey, Hash256, RecordTime, SEGMENT_DOCUMENT_END, SegmentHeader, TreeFrontier,
    segment_document_start,
};
use tokio::time::Instant;

use crate::encoding::Encoding;

/// Room kept for a document's head (header, signature, a frontier of up to 64
/// hashes, the checkpoint) and its end.
pub(crate) const DOCUMENT_OVERHEAD_BYTES: usize = 8 * 1024;

/// The records of one segment being built.
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub writer: Arc<str>,
    /// Object name in the store.
    pub name: String,
    pub first_seq: u64,
    pub prev_segment_hash: Hash256,
    /// The writer's tree before the first record; `None` for a writer that
    /// resumed a format-1 chain.
    pub tree_before: Option<TreeFrontier>,
    pub hashes: Vec<Hash256>,
    /// The records' JSON, comma-separated.
    pub json: Vec<u8>,
    /// Where each record's JSON ends in `json`.
    pub ends: Vec<usize>,
    /// Gzip members covering the first `compressed` records.
    members: Vec<u8>,
    compressed: usize,
    pub opened_at: Instant,
    /// Changed since last written.
    pub dirty: bool,
    /// Times the store refused the name.
    pub renames: u32,
}

impl OpenSegment {
    pub fn new(
        writer: Arc<str>,
        name: String,
        first_seq: u64,
        prev_segment_hash: Hash256,
        tree_before: Option<TreeFrontier>,
    ) -> Self {
        OpenSegment {
            writer,
            name,
            first_seq,
            prev_segment_hash,
            tree_before,
            hashes: Vec::new(),
            json: Vec::new(),
            ends: Vec::new(),
            members: Vec::new(),
            compressed: 0,
            opened_at: Instant::now(),
            dirty: false,
            renames: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.len() as u64 - 1
    }

    pub fn last_hash(&self) -> Hash256 {
        self.hashes
            .last()
            .copied()
            .unwrap_or(self.prev_segment_hash)
    }

    /// Add one record (its exact stored JSON).
    pub fn push(&mut self, record_json: &[u8], hash: Hash256) {
        if !self.json.is_empty() {
            self.json.push(b',');
        }
        self.json.extend_from_slice(record_json);
        self.ends.push(self.json.len());
        self.hashes.push(hash);
        self.dirty = true;
    }

    /// The stored size of the segment with `extra` more bytes of records, for
    /// gzip estimated with `ratio` (compressed / plain) for what is not yet
    /// compressed.
    pub fn estimate(&self, encoding: Encoding, ratio: f64, extra: usize) -> usize {
        let body = match encoding {
            Encoding::Json => self.json.len() + extra,
            Encoding::Gzip => {
                let plain = self.json.len() - self.compressed_bytes() + extra;
                self.members.len() + (plain as f64 * ratio).ceil() as usize
            }
        };
        body + DOCUMENT_OVERHEAD_BYTES
    }

    fn compressed_bytes(&self) -> usize {
        match self.compressed {
            0 => 0,
            n => self.ends[n - 1],
        }
    }

    /// The header for the records so far, signed (sealed when `sealed_at` is
    /// given), and the document head; the writer's tree after the records.
    /// A format-1 open segment stays unsigned.
    pub fn signed_head(
        &self,
        key: &AuditSigningKey,
        sealed_at: Option<RecordTime>,
    ) -> (Vec<u8>, Option<TreeFrontier>) {
        let (mut header, after) = match &self.tree_before {
            Some(before) => {
                let (header, after) = SegmentHeader::describe(
                    &self.writer,
                    self.prev_segment_hash,
                    before,
                    &self.hashes,
                );
                (header, Some(after))
            }
            None => (
                SegmentHeader::describe_v1(
                    &self.writer,
                    self.prev_segment_hash,
                    self.first_seq,
                    &self.hashes,
                ),
                None,
            ),
        };
        let signature =
            (after.is_some() || sealed_at.is_some()).then(|| header.sign(sealed_at, key));
        let checkpoint = sealed_at
            .and_then(|_| header.checkpoint())
            .map(|checkpoint| checkpoint.sign(key).encode());
        let frontier = self.tree_before.as_ref().map(|t| t.roots());
        let head = segment_document_start(
            &header,
            signature.as_deref(),
            frontier,
            checkpoint.as_deref(),
        );
        (head, after)
    }

    /// The stored body: the head, the records and the end, encoded. For gzip the
    /// records not yet compressed become one more member, kept for later
    /// writes. Returns the body and, for gzip, the compression ratio seen.
    pub fn encode(&mut self, encoding: Encoding, head: &[u8]) -> (Vec<u8>, Option<f64>) {
        match encoding {
            Encoding::Json => {
                let mut body = Vec::with_capacity(head.len() + self.json.len() + 2);
                body.extend_from_slice(head);
                body.extend_from_slice(&self.json);
                body.extend_from_slice(SEGMENT_DOCUMENT_END);
                (body, None)
            }
            Encoding::Gzip => {
                let mut ratio = None;
                let from = self.compressed_bytes();
                if from < self.json.len() {
                    let member = encoding.encode(&self.json[from..]);
                    ratio = Some(member.len() as f64 / (self.json.len() - from) as f64);
                    self.members.extend_from_slice(&member);
                    self.compressed = self.len();
                }
                let mut body = encoding.encode(head);
                body.extend_from_slice(&self.members);
                body.extend(encoding.encode(SEGMENT_DOCUMENT_END));
                (body, ratio)
            }
        }
    }

    /// The stored JSON body of the segment, built in the records' own buffer
    /// (the head moved in front of them), which the segment gives up: a
    /// sealed segment's records are then held once, in its body.
    pub fn take_json_body(&mut self, head: &[u8]) -> Vec<u8> {
        let mut body = std::mem::take(&mut self.json);
        body.reserve_exact(head.len() + SEGMENT_DOCUMENT_END.len());
        body.splice(0..0, head.iter().copied());
        body.extend_from_slice(SEGMENT_DOCUMENT_END);
        body
    }

    /// Forget compressed members (after a split, or once sealed and encoded).
    pub fn drop_members(&mut self) {
        self.members = Vec::new();
        self.compressed = 0;
    }

    /// Bytes of the records' own JSON (without separators): what they count
    /// against the queue's budget.
    pub fn record_bytes(&self) -> usize {
        self.json.len().saturating_sub(self.len().saturating_sub(1))
    }

    /// Append the segment that directly follows this one (undoing a split).
    pub fn join(&mut self, next: OpenSegment) {
        debug_assert_eq!(next.first_seq, self.first_seq + self.len() as u64);
        let offset = if self.json.is_empty() {
            0
        } else {
            self.json.push(b',');
            self.json.len()
        };
        self.json.extend_from_slice(&next.json);
        self.ends.extend(next.ends.iter().map(|end| end + offset));
        self.hashes.extend(next.hashes);
        self.drop_members();
        self.dirty = true;
    }

    /// Keep the first `keep` records and return the others as the next segment
    /// (named `name`), which continues this one's chain and tree.
    pub fn split_off(&mut self, keep: usize, name: String) -> OpenSegment {
        assert!(keep > 0 && keep < self.len(), "split inside the segment");
        let cut = self.ends[keep - 1];
        let mut rest = OpenSegment::new(
            self.writer.clone(),
            name,
            self.first_seq + keep as u64,
            self.hashes[keep - 1],
            self.tree_before.as_ref().map(|before| {
                let mut tree = before.clone();
                for hash in &self.hashes[..keep] {
                    tree.push_record(hash);
                }
                tree
            }),
        );
        rest.json = self.json[cut + 1..].to_vec();
        rest.ends = self.ends[keep..].iter().map(|end| end - cut - 1).collect();
        rest.hashes = self.hashes.split_off(keep);
        rest.opened_at = self.opened_at;
        rest.dirty = true;
        self.json.truncate(cut);
        self.ends.truncate(keep);
        self.drop_members();
        self.dirty = true;
        rest
    }
}

/// A sealed segment waiting for the store.
///
/// Its records are held once. For JSON the body holds their stored bytes
/// verbatim, so the segment's own copy is released when it is sealed and
/// taken back from the body only if the store refuses the segment as too
/// large. For gzip the plain records are kept (the compressed body is a
/// fraction of them) to split without decompressing.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    /// The records' hashes and offsets (and for gzip their JSON).
    pub segment: OpenSegment,
    /// The signed, encoded document as it is written.
    pub object: crate::store::SegmentObject,
    /// Bytes of the records' own JSON, as counted against the queue.
    record_bytes: usize,
    /// Where the records' JSON sits in a JSON body, when the segment's copy was
    /// released.
    records_in_body: Option<std::ops::Range<usize>>,
}

impl SealedSegment {
    /// A sealed segment written as `object`; `records_in_body` is where its
    /// records' JSON is in a JSON body, when the segment's own copy was given
    /// up for it.
    pub fn new(
        segment: OpenSegment,
        object: crate::store::SegmentObject,
        record_bytes: usize,
        records_in_body: Option<std::ops::Range<usize>>,
    ) -> Self {
        SealedSegment {
            segment,
            object,
            record_bytes,
            records_in_body,
        }
    }

    /// Bytes of the records' own JSON, as counted against the queue.
    pub fn record_bytes(&self) -> usize {
        self.record_bytes
    }

    /// The segment with its records' JSON, to split or re-seal it.
    pub fn into_open(self) -> OpenSegment {
        let mut segment = self.segment;
        if let Some(range) = self.records_in_body {
            segment.json = self.object.body[range].to_vec();
        }
        segment
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SegmentObject;

    #[test]
    fn a_sealed_json_segment_holds_its_records_once_in_its_body_and_gives_them_back() {
        let mut open = OpenSegment::new("w".into(), "seg".into(), 1, Hash256::ZERO, None);
        open.push(br#"{"seq":1}"#, Hash256::ZERO);
        open.push(br#"{"seq":2}"#, Hash256::ZERO);
        let (json, record_bytes) = (open.json.clone(), open.record_bytes());
        let head = br#"{"header":{},"records":["#;
        let body = open.take_json_body(head);
        assert_eq!(body, [&head[..], &json, SEGMENT_DOCUMENT_END].concat());
        assert!(open.json.is_empty(), "the segment gave its copy up");
        let object = SegmentObject {
            name: "seg".into(),
            writer: "w".into(),
            sealed: true,
            body,
        };
        let records = head.len()..head.len() + json.len();
        let sealed = SealedSegment::new(open, object, record_bytes, Some(records));
        assert_eq!(sealed.record_bytes(), record_bytes);
        let open = sealed.into_open();
        assert_eq!((open.len(), open.json), (2, json));
    }
}
