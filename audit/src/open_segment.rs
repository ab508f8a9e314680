//! The segment a writer is filling, and the sealed segments waiting for the
//! store: records kept as their exact stored JSON, so a segment's size is known
//! to the byte before it is written.
use std::sync::Arc;

use policybind_engine::audit::{
    AuditSigningKey, Hash256, LEGACY_SEGMENT_FORMAT, RecordTime, SEGMENT_DOCUMENT_END,
    SEGMENT_FORMAT, SegmentHeader, TreeFrontier, leaf_hash, segment_document_start,
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
    /// The Merkle trees over `hashes`, kept up to date record by record so that
    /// a flush costs O(log n) hashes instead of rehashing the whole segment
    /// (which made a flush of a long open segment the sidecar's main cost at
    /// low request rates).
    trees: Trees,
}

/// The segment's own tree (its `merkle_root`) and the writer's tree after its
/// records (its `tree_root`, format 2), as frontiers.
#[derive(Debug, Clone)]
struct Trees {
    segment: TreeFrontier,
    after: Option<TreeFrontier>,
}

impl Trees {
    fn new(before: Option<&TreeFrontier>) -> Self {
        Trees {
            segment: TreeFrontier::new(),
            after: before.cloned(),
        }
    }

    fn push(&mut self, record_hash: &Hash256) {
        let leaf = leaf_hash(record_hash);
        self.segment.push_leaf(leaf);
        if let Some(after) = &mut self.after {
            after.push_leaf(leaf);
        }
    }

    fn of(before: Option<&TreeFrontier>, hashes: &[Hash256]) -> Self {
        let mut trees = Trees::new(before);
        hashes.iter().for_each(|hash| trees.push(hash));
        trees
    }
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
            hashes: Vec::new(),
            json: Vec::new(),
            ends: Vec::new(),
            members: Vec::new(),
            compressed: 0,
            opened_at: Instant::now(),
            dirty: false,
            renames: 0,
            trees: Trees::new(tree_before.as_ref()),
            tree_before,
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
        self.trees.push(&hash);
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
        let mut header = self.header();
        let after = self.trees.after.clone();
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

    /// The writer's tree after this segment's records (format 2).
    pub fn tree_after(&self) -> Option<&TreeFrontier> {
        self.trees.after.as_ref()
    }

    /// The unsigned header of the records so far: what
    /// `SegmentHeader::describe` (format 2) or `describe_v1` (a resumed format-1
    /// chain) gives, from the trees kept up to date by [`OpenSegment::push`].
    fn header(&self) -> SegmentHeader {
        let count = self.hashes.len() as u64;
        let (format, first_seq) = match &self.tree_before {
            Some(before) => (SEGMENT_FORMAT, before.size() + 1),
            None => (LEGACY_SEGMENT_FORMAT, self.first_seq),
        };
        SegmentHeader {
            format,
            writer: self.writer.to_string(),
            first_seq,
            last_seq: first_seq + count.saturating_sub(1),
            record_count: count,
            prev_segment_hash: self.prev_segment_hash,
            last_hash: self.hashes.last().copied().unwrap_or(Hash256::ZERO),
            merkle_root: self.trees.segment.root(),
            tree_root: self.trees.after.as_ref().map(TreeFrontier::root),
            sealed_at: None,
            key_id: None,
        }
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
        for hash in &next.hashes {
            self.trees.push(hash);
        }
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
        rest.trees = Trees::of(rest.tree_before.as_ref(), &rest.hashes);
        self.trees = Trees::of(self.tree_before.as_ref(), &self.hashes);
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
            body: body.into(),
        };
        let records = head.len()..head.len() + json.len();
        let sealed = SealedSegment::new(open, object, record_bytes, Some(records));
        assert_eq!(sealed.record_bytes(), record_bytes);
        let open = sealed.into_open();
        assert_eq!((open.len(), open.json), (2, json));
    }

    fn hash(n: u8) -> Hash256 {
        Hash256::from_bytes([n; 32])
    }

    /// The header kept up to date record by record is the header computed
    /// from scratch, through pushes, splits and joins, in both formats.
    #[test]
    fn the_incremental_header_is_the_header_described_from_scratch() {
        let mut before = TreeFrontier::new();
        (0..5).for_each(|n| before.push_record(&hash(200 + n)));
        for tree_before in [Some(before), None] {
            let describe = |open: &OpenSegment| match &open.tree_before {
                Some(before) => {
                    SegmentHeader::describe(
                        &open.writer,
                        open.prev_segment_hash,
                        before,
                        &open.hashes,
                    )
                    .0
                }
                None => SegmentHeader::describe_v1(
                    &open.writer,
                    open.prev_segment_hash,
                    open.first_seq,
                    &open.hashes,
                ),
            };
            let mut open = OpenSegment::new("w".into(), "a".into(), 6, hash(9), tree_before);
            assert_eq!(open.header(), describe(&open), "empty");
            for n in 0..37 {
                open.push(br#"{}"#, hash(n));
                assert_eq!(open.header(), describe(&open), "{n} records");
            }
            let rest = open.split_off(20, "b".into());
            assert_eq!(open.header(), describe(&open), "first half");
            assert_eq!(rest.header(), describe(&rest), "second half");
            open.join(rest);
            assert_eq!(open.header(), describe(&open), "joined");
            assert_eq!(open.signed_head(&key(), None).1, {
                let mut after = open.tree_before.clone();
                if let Some(tree) = &mut after {
                    open.hashes.iter().for_each(|h| tree.push_record(h));
                }
                after
            });
        }
    }

    fn key() -> AuditSigningKey {
        AuditSigningKey::from_seed(&[7; 32])
    }
}
