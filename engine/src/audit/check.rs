//! What the verifier can say about one segment on its own: who signed it (and
//! whether the keyring lets that key sign for its writer), and whether its
//! records, hashes, Merkle root, writer tree and checkpoint agree.
//!
//! These checks need nothing from other segments, so they run in parallel, and
//! straight from the stored JSON: [`check_document`] parses a segment into
//! borrowed [`RecordRef`]s and keeps only what the per-writer walk needs (the
//! record hashes and the tree frontiers), so verifying a million records never
//! holds a million parsed records.
use chrono::{DateTime, Utc};

use super::checkpoint::{SignedNote, origin_of};
use super::hash::Hash256;
use super::keyring::Keyring;
use super::merkle::{TreeFrontier, leaf_hash, root_of_leaves};
use super::record::{AuditRecord, RecordRef, Str};
use super::segment::{LEGACY_SEGMENT_FORMAT, SEGMENT_FORMAT, SegmentHeader, decode_signature};
use super::verify::ProblemKind;

/// A record as the checks see it, parsed owned or borrowed.
pub(crate) trait StoredRecord {
    fn seq(&self) -> u64;
    fn writer(&self) -> &str;
    fn time(&self) -> DateTime<Utc>;
    fn prev_hash(&self) -> Hash256;
    fn stored_hash(&self) -> Hash256;
    /// The hash recomputed from the content and the stored `prev_hash`.
    fn recompute(&self) -> Hash256;
}

impl StoredRecord for AuditRecord {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn writer(&self) -> &str {
        &self.writer
    }
    fn time(&self) -> DateTime<Utc> {
        self.time.get()
    }
    fn prev_hash(&self) -> Hash256 {
        self.prev_hash
    }
    fn stored_hash(&self) -> Hash256 {
        self.hash
    }
    fn recompute(&self) -> Hash256 {
        self.compute_hash(&self.prev_hash)
    }
}

impl StoredRecord for RecordRef<'_> {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn writer(&self) -> &str {
        &self.writer
    }
    fn time(&self) -> DateTime<Utc> {
        self.time.get()
    }
    fn prev_hash(&self) -> Hash256 {
        self.prev_hash
    }
    fn stored_hash(&self) -> Hash256 {
        self.hash
    }
    fn recompute(&self) -> Hash256 {
        self.compute_hash()
    }
}

/// One segment's parts, however it was parsed.
pub(crate) struct SegmentView<'s, R> {
    pub name: &'s str,
    pub header: &'s SegmentHeader,
    pub signature: Option<&'s str>,
    pub frontier: Option<&'s [Hash256]>,
    pub checkpoint: Option<&'s str>,
    pub records: &'s [R],
}

/// Who stands behind a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Signed by a key the keyring binds to the segment's writer.
    Signed { key_id: String },
    /// No keyring given: signatures not checked.
    NotChecked,
    /// An open format-1 segment: unsigned by design, its records unproven.
    Unsigned,
    /// Not the writer's: bad or missing signature, or a key not bound to it.
    Refused { kind: ProblemKind, message: String },
}

/// The first thing wrong inside a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalProblem {
    pub kind: ProblemKind,
    pub seq: Option<u64>,
    pub message: String,
}

fn local(kind: ProblemKind, seq: Option<u64>, message: impl Into<String>) -> LocalProblem {
    LocalProblem {
        kind,
        seq,
        message: message.into(),
    }
}

/// Everything the walk needs of one segment.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    pub name: String,
    pub header: SegmentHeader,
    pub sealed: bool,
    pub trust: Trust,
    pub problem: Option<LocalProblem>,
    /// Stored record hashes, verified up to the problem if there is one.
    pub hashes: Vec<Hash256>,
    /// The writer's tree before and after the segment (format 2).
    pub frontier_before: Option<TreeFrontier>,
    pub frontier_after: Option<TreeFrontier>,
    /// The segment's signed checkpoint note (format 2, sealed, verified).
    pub checkpoint: Option<String>,
}

/// Parse and check one stored document; `Err` holds why it cannot be parsed.
///
/// Records are checked as they are parsed (when the header comes first, as
/// every writer writes it) and never held, so a segment costs one pass over
/// its bytes and no per-record allocation beyond what escapes need.
pub(crate) fn check_document(
    name: &str,
    bytes: &[u8],
    keyring: Option<&Keyring>,
) -> Result<Checked, String> {
    // One UTF-8 check of the whole document is cheaper than one per string.
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = serde::Deserializer::deserialize_map(&mut deserializer, DocumentVisitor)
        .and_then(|parsed| deserializer.end().map(|()| parsed))
        .map_err(|e| e.to_string())?;
    let parts = SegmentParts {
        name,
        header: &parsed.header,
        signature: parsed.signature.as_deref(),
        frontier: parsed.frontier.as_deref(),
        checkpoint: parsed.checkpoint.as_deref(),
    };
    Ok(check_parts(&parts, parsed.records, keyring))
}

/// A segment document read by [`DocumentVisitor`].
struct ParsedDocument {
    header: SegmentHeader,
    signature: Option<String>,
    frontier: Option<Vec<Hash256>>,
    checkpoint: Option<String>,
    records: RecordOutcome,
}

/// Reads a segment document field by field, as strictly as `Segment` does
/// (no unknown or repeated field), checking records while it reads them.
struct DocumentVisitor;

impl<'de> serde::de::Visitor<'de> for DocumentVisitor {
    type Value = ParsedDocument;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a segment document")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<ParsedDocument, A::Error> {
        use serde::de::Error;
        const FIELDS: &[&str] = &["header", "signature", "frontier", "checkpoint", "records"];
        let mut header: Option<SegmentHeader> = None;
        let (mut signature, mut frontier, mut checkpoint) = (None, None, None);
        let mut records: Option<RecordOutcome> = None;
        let mut buffered: Option<Vec<RecordRef<'de>>> = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let duplicate = || {
                A::Error::duplicate_field(
                    FIELDS[FIELDS.iter().position(|f| **f == *key).unwrap_or(0)],
                )
            };
            match &*key {
                "header" if header.is_none() => header = Some(map.next_value()?),
                "signature" if signature.is_none() => {
                    signature = Some(map.next_value::<Option<String>>()?)
                }
                "frontier" if frontier.is_none() => {
                    frontier = Some(map.next_value::<Option<Vec<Hash256>>>()?)
                }
                "checkpoint" if checkpoint.is_none() => {
                    checkpoint = Some(map.next_value::<Option<String>>()?)
                }
                "records" if records.is_none() && buffered.is_none() => match &header {
                    Some(header) => records = Some(map.next_value_seed(RecordsSeed { header })?),
                    None => buffered = Some(map.next_value()?),
                },
                "header" | "signature" | "frontier" | "checkpoint" | "records" => {
                    return Err(duplicate());
                }
                other => return Err(A::Error::unknown_field(other, FIELDS)),
            }
        }
        let header = header.ok_or_else(|| A::Error::missing_field("header"))?;
        let records = match (records, buffered) {
            (Some(outcome), _) => outcome,
            (None, Some(buffered)) => {
                let mut checker = RecordChecker::new(&header);
                buffered.iter().for_each(|record| checker.push(record));
                checker.finish()
            }
            (None, None) => return Err(A::Error::missing_field("records")),
        };
        Ok(ParsedDocument {
            header,
            signature: signature.flatten(),
            frontier: frontier.flatten(),
            checkpoint: checkpoint.flatten(),
            records,
        })
    }
}

/// The `records` array, checked element by element against the header.
struct RecordsSeed<'h> {
    header: &'h SegmentHeader,
}

impl<'de> serde::de::DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = RecordOutcome;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<RecordOutcome, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RecordsSeed<'_> {
    type Value = RecordOutcome;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<RecordOutcome, A::Error> {
        let mut checker = RecordChecker::new(self.header);
        while let Some(record) = seq.next_element::<RecordRef<'de>>()? {
            checker.push(&record);
        }
        Ok(checker.finish())
    }
}

/// What the records of one segment showed.
pub(crate) struct RecordOutcome {
    /// Stored hashes, verified up to the problem if there is one.
    hashes: Vec<Hash256>,
    problem: Option<LocalProblem>,
    /// Time of the last record (an open segment's signing time).
    last_time: Option<DateTime<Utc>>,
}

/// Checks records one at a time, in stored order: sequence, writer, hash and
/// link. After the first problem it only watches sequence numbers, to tell a
/// reordering from a gap.
struct RecordChecker<'h> {
    header: &'h SegmentHeader,
    position: usize,
    head: Hash256,
    hashes: Vec<Hash256>,
    problem: Option<LocalProblem>,
    /// The first sequence mismatch: position and the seq found there.
    mismatch: Option<(usize, u64)>,
    expected_later: bool,
    last_time: Option<DateTime<Utc>>,
}

impl<'h> RecordChecker<'h> {
    fn new(header: &'h SegmentHeader) -> Self {
        let problem = (header.first_seq == 0).then(|| {
            local(
                ProblemKind::Modified,
                None,
                "header claims first_seq 0; sequences start at 1",
            )
        });
        RecordChecker {
            header,
            position: 0,
            head: header.prev_segment_hash,
            hashes: Vec::with_capacity(header.record_count.min(1 << 16) as usize),
            problem,
            mismatch: None,
            expected_later: false,
            last_time: None,
        }
    }

    fn expected(&self) -> u64 {
        self.header.first_seq + self.hashes.len() as u64
    }

    fn push<R: StoredRecord>(&mut self, record: &R) {
        self.last_time = Some(record.time());
        let position = self.position;
        self.position += 1;
        if self.mismatch.is_some() {
            self.expected_later |= record.seq() == self.expected();
            return;
        }
        if self.problem.is_some() {
            return;
        }
        let expected = self.expected();
        if record.seq() != expected {
            self.mismatch = Some((position, record.seq()));
            return;
        }
        if let Err(problem) = self.check_record(record, expected) {
            self.problem = Some(problem);
            return;
        }
        self.head = record.stored_hash();
        self.hashes.push(self.head);
    }

    fn check_record<R: StoredRecord>(&self, record: &R, expected: u64) -> Result<(), LocalProblem> {
        if record.writer() != self.header.writer {
            return Err(local(
                ProblemKind::Modified,
                Some(expected),
                format!("record names writer {:?}", record.writer()),
            ));
        }
        let stored = record.stored_hash();
        let computed = record.recompute();
        if computed != stored {
            return Err(local(
                ProblemKind::Modified,
                Some(expected),
                format!(
                    "record content does not match its hash (stored {}, computed {})",
                    stored.short(),
                    computed.short()
                ),
            ));
        }
        if record.prev_hash() != self.head {
            return Err(local(
                ProblemKind::Modified,
                Some(expected),
                format!(
                    "record does not link to its predecessor: prev_hash {} but the previous record's hash is {}",
                    record.prev_hash().short(),
                    self.head.short()
                ),
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> RecordOutcome {
        if let Some((position, found)) = self.mismatch {
            let expected = self.expected();
            self.problem = Some(if self.expected_later || found < expected {
                local(
                    ProblemKind::Reordered,
                    Some(expected),
                    format!(
                        "record at position {position} has seq {found} where seq {expected} belongs"
                    ),
                )
            } else {
                local(
                    ProblemKind::Missing,
                    Some(expected),
                    format!(
                        "records {expected}..={} are missing (next present record is seq {found})",
                        found - 1
                    ),
                )
            });
        }
        if self.position == 0 && self.problem.is_none() {
            self.problem = Some(local(
                ProblemKind::Truncated,
                Some(self.header.first_seq),
                "segment holds no records",
            ));
        }
        RecordOutcome {
            hashes: self.hashes,
            problem: self.problem,
            last_time: self.last_time,
        }
    }
}

/// One segment's parts besides its records.
pub(crate) struct SegmentParts<'s> {
    pub name: &'s str,
    pub header: &'s SegmentHeader,
    pub signature: Option<&'s str>,
    pub frontier: Option<&'s [Hash256]>,
    pub checkpoint: Option<&'s str>,
}

/// All checks of one parsed segment.
pub(crate) fn check<R: StoredRecord>(
    view: &SegmentView<'_, R>,
    keyring: Option<&Keyring>,
) -> Checked {
    let mut checker = RecordChecker::new(view.header);
    view.records.iter().for_each(|record| checker.push(record));
    let parts = SegmentParts {
        name: view.name,
        header: view.header,
        signature: view.signature,
        frontier: view.frontier,
        checkpoint: view.checkpoint,
    };
    check_parts(&parts, checker.finish(), keyring)
}

fn check_parts(
    parts: &SegmentParts<'_>,
    records: RecordOutcome,
    keyring: Option<&Keyring>,
) -> Checked {
    let header = parts.header;
    let signed_at = header.sealed_at.map(|t| t.get()).or(records.last_time);
    let (trust, key) = trust(header, parts.signature, signed_at, keyring);
    let mut checked = Checked {
        name: parts.name.to_string(),
        header: header.clone(),
        sealed: header.sealed_at.is_some() && parts.signature.is_some(),
        trust,
        problem: None,
        hashes: Vec::new(),
        frontier_before: None,
        frontier_after: None,
        checkpoint: None,
    };
    checked.problem = check_contents(parts, records, key, &mut checked).err();
    checked
}

/// Why a header's signature is not acceptable, if it is not (for export
/// evidence, which has the header but not the records).
pub(crate) fn signature_problem(
    header: &SegmentHeader,
    signature: Option<&str>,
    keyring: Option<&Keyring>,
) -> Option<(ProblemKind, String)> {
    match trust(
        header,
        signature,
        header.sealed_at.map(|t| t.get()),
        keyring,
    )
    .0
    {
        Trust::Refused { kind, message } => Some((kind, message)),
        _ => None,
    }
}

/// Format, records, header, tree and checkpoint, stopping at the first problem.
fn check_contents(
    parts: &SegmentParts<'_>,
    records: RecordOutcome,
    key: Option<&super::keys::AuditVerifyingKey>,
    checked: &mut Checked,
) -> Result<(), LocalProblem> {
    let header = parts.header;
    checked.frontier_before = check_format(header, parts.frontier)?;
    checked.hashes = records.hashes;
    if let Some(problem) = records.problem {
        return Err(problem);
    }
    // Leaf hashes serve both the segment's tree and the writer's.
    let leaves: Vec<Hash256> = checked.hashes.iter().map(leaf_hash).collect();
    check_header(header, &checked.hashes, &leaves)?;
    checked.frontier_after = tree_after(header, &checked.frontier_before, &leaves)?;
    if checked.sealed && header.format >= SEGMENT_FORMAT {
        checked.checkpoint = Some(check_checkpoint(header, parts.checkpoint, key)?);
    }
    Ok(())
}

/// The signature and key binding of a header. Also returns the key that
/// verified it, for the checkpoint.
fn trust<'k>(
    header: &SegmentHeader,
    signature: Option<&str>,
    signed_at: Option<DateTime<Utc>>,
    keyring: Option<&'k Keyring>,
) -> (Trust, Option<&'k super::keys::AuditVerifyingKey>) {
    let refused = |kind, message: String| (Trust::Refused { kind, message }, None);
    let Some(signature) = signature else {
        return if header.sealed_at.is_some() {
            refused(
                ProblemKind::BadSignature,
                "segment has a seal time but no signature".into(),
            )
        } else if header.format >= SEGMENT_FORMAT {
            refused(
                ProblemKind::BadSignature,
                "open segment is not signed, but a format-2 writer signs every flush".into(),
            )
        } else {
            (Trust::Unsigned, None)
        };
    };
    if header.format <= LEGACY_SEGMENT_FORMAT && header.sealed_at.is_none() {
        return refused(
            ProblemKind::BadSignature,
            "segment is half sealed: a signature without a seal time".into(),
        );
    }
    let Some(bytes) = decode_signature(signature) else {
        return refused(
            ProblemKind::BadSignature,
            "signature is not 64 bytes of base64".into(),
        );
    };
    let Some(keyring) = keyring else {
        return (Trust::NotChecked, None);
    };
    let key_id = header.key_id.as_deref().unwrap_or("");
    let key = match keyring.key_for(key_id, &header.writer, signed_at) {
        Ok(key) => key,
        Err(refusal) => {
            let at = signed_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
            return refused(
                ProblemKind::UntrustedKey,
                refusal.describe(key_id, &header.writer, at),
            );
        }
    };
    if !key.verify(&header.canonical_bytes(), &bytes) {
        return refused(
            ProblemKind::BadSignature,
            format!("signature does not verify with key {key_id}"),
        );
    }
    (
        Trust::Signed {
            key_id: key_id.to_string(),
        },
        Some(key),
    )
}

/// The format, and for format 2 the stored frontier before the first record.
fn check_format(
    header: &SegmentHeader,
    frontier: Option<&[Hash256]>,
) -> Result<Option<TreeFrontier>, LocalProblem> {
    match header.format {
        LEGACY_SEGMENT_FORMAT => Ok(None),
        SEGMENT_FORMAT => {
            let (Some(roots), Some(_)) = (frontier, header.tree_root) else {
                return Err(local(
                    ProblemKind::Malformed,
                    None,
                    "format-2 segment lacks its tree root or frontier",
                ));
            };
            TreeFrontier::from_parts(header.first_seq.saturating_sub(1), roots.to_vec())
                .map(Some)
                .map_err(|e| {
                    local(
                        ProblemKind::Malformed,
                        None,
                        format!("stored frontier: {e}"),
                    )
                })
        }
        other => Err(local(
            ProblemKind::Malformed,
            None,
            format!("unknown segment format {other}"),
        )),
    }
}

/// That the header describes the records: count, last sequence, last hash, root.
fn check_header(
    header: &SegmentHeader,
    hashes: &[Hash256],
    leaves: &[Hash256],
) -> Result<(), LocalProblem> {
    let count = hashes.len() as u64;
    let actual_last = header.first_seq + count - 1;
    if actual_last < header.last_seq {
        return Err(local(
            ProblemKind::Truncated,
            Some(actual_last + 1),
            format!(
                "segment ends at seq {actual_last} but its header says it ends at seq {}",
                header.last_seq
            ),
        ));
    }
    if actual_last > header.last_seq || header.record_count != count {
        return Err(local(
            ProblemKind::Modified,
            None,
            format!(
                "header (seq {}..={}, {} records) does not describe the records (seq {}..={actual_last}, {count} records)",
                header.first_seq, header.last_seq, header.record_count, header.first_seq
            ),
        ));
    }
    if hashes.last() != Some(&header.last_hash) {
        return Err(local(
            ProblemKind::Modified,
            Some(actual_last),
            "header last_hash does not match the last record",
        ));
    }
    if root_of_leaves(leaves) != header.merkle_root {
        return Err(local(
            ProblemKind::Modified,
            None,
            "records do not match the header's Merkle root",
        ));
    }
    Ok(())
}

/// The writer's tree after the records; its root must be the signed one.
fn tree_after(
    header: &SegmentHeader,
    before: &Option<TreeFrontier>,
    leaves: &[Hash256],
) -> Result<Option<TreeFrontier>, LocalProblem> {
    let (Some(before), Some(root)) = (before, header.tree_root) else {
        return Ok(None);
    };
    let mut after = before.clone();
    for leaf in leaves {
        after.push_leaf(*leaf);
    }
    if after.root() != root {
        return Err(local(
            ProblemKind::Modified,
            None,
            "the stored frontier and the records do not give the header's tree root",
        ));
    }
    Ok(Some(after))
}

/// A sealed format-2 segment's checkpoint: present, about this segment, and
/// signed by the key that signed the header.
fn check_checkpoint(
    header: &SegmentHeader,
    checkpoint: Option<&str>,
    key: Option<&super::keys::AuditVerifyingKey>,
) -> Result<String, LocalProblem> {
    let text = checkpoint.ok_or_else(|| {
        local(
            ProblemKind::Modified,
            None,
            "sealed segment has no checkpoint",
        )
    })?;
    let note = SignedNote::parse(text)
        .map_err(|e| local(ProblemKind::Malformed, None, format!("checkpoint: {e}")))?;
    let stated = note
        .checkpoint()
        .map_err(|e| local(ProblemKind::Malformed, None, format!("checkpoint: {e}")))?;
    if Some(stated) != header.checkpoint() {
        return Err(local(
            ProblemKind::Modified,
            None,
            "checkpoint does not state the header's writer, last sequence and tree root",
        ));
    }
    if let Some(key) = key
        && note.verify(&origin_of(&header.writer), key) != Some(true)
    {
        return Err(local(
            ProblemKind::BadSignature,
            None,
            "checkpoint is not signed by the key that signed the header",
        ));
    }
    Ok(text.to_string())
}

/// Run `work` over `0..count` on every core, keeping the input order.
pub(crate) fn parallel_map<T: Send>(
    count: usize,
    parallel: bool,
    work: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !parallel || threads == 1 || count < 2 {
        return (0..count).map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(count))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if index >= count {
                            return done;
                        }
                        done.push((index, work(index)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("verifier thread panicked"))
            .collect()
    });
    results.sort_unstable_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, value)| value).collect()
}
