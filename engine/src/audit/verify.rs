//! The verifier: proves a set of segments is a complete, unmodified trail, or names
//! the first record or segment where it is not.
//!
//! It works per writer, because each writer keeps its own chain. Within a writer it
//! walks segments in sequence order and checks, in this order (so a mutation gets
//! the most specific diagnosis): the header signature, the link to the previous
//! segment, every record's sequence number and hash, and finally that the header
//! agrees with the records (count, last sequence, last hash, Merkle root). The
//! first problem ends that writer's walk; other writers are still checked.
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::hash::Hash256;
use super::keys::AuditVerifyingKey;
use super::merkle::merkle_root;
use super::segment::{SEGMENT_FORMAT, Segment};

/// A segment and the name it was found under (file path or ConfigMap name), so a
/// report can point at it.
#[derive(Clone, Debug)]
pub struct NamedSegment {
    /// File path or ConfigMap name.
    pub name: String,
    /// The parsed segment.
    pub segment: Segment,
}

/// What the verifier requires.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Keys whose signatures are trusted. Empty means signatures are not checked
    /// (the report says so); callers should treat that as a weaker result.
    pub trusted_keys: Vec<AuditVerifyingKey>,
    /// Require every writer's chain to start at seq 1. Without it, a chain may start
    /// later (retention handed older segments to a sink) and is anchored at the
    /// first kept segment's `prev_segment_hash`, which the report shows.
    pub require_genesis: bool,
    /// Heads recorded earlier (for example by an auditor at the last review, or
    /// from `policybind audit tail`): the trail must still reach each one, with the
    /// same hash. Without an anchor, deleting a writer's newest segments is
    /// indistinguishable from the writer not having written them yet.
    pub anchors: Vec<Anchor>,
}

/// A known point of a writer's chain: record `seq` had hash `hash`.
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Writer identity.
    pub writer: String,
    /// Sequence of the anchored record.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash256,
}

/// The kinds of problem, each a distinct diagnosis.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A record's content, hash or link, or a header field, does not match.
    Modified,
    /// Records or whole segments are absent (a sequence gap).
    Missing,
    /// Records or segments are out of order or duplicated.
    Reordered,
    /// A segment ends before the sequence its header promises, or is empty.
    Truncated,
    /// The header signature is missing, malformed or does not verify.
    BadSignature,
    /// The header is signed by a key that is not trusted.
    UntrustedKey,
    /// A segment other than a writer's last is not sealed.
    Unsealed,
    /// A segment could not be read or parsed at all.
    Malformed,
}

impl ProblemKind {
    /// Short stable name, used in reports and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Modified => "modified",
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::BadSignature => "bad-signature",
            ProblemKind::UntrustedKey => "untrusted-key",
            ProblemKind::Unsealed => "unsealed",
            ProblemKind::Malformed => "malformed",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first problem in one writer's trail.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The diagnosis.
    pub kind: ProblemKind,
    /// Writer whose chain is broken (empty if unknown, e.g. an unreadable file).
    pub writer: String,
    /// The segment where it was found (name as given to the verifier).
    pub segment: Option<String>,
    /// The record sequence concerned, when it is about a record.
    pub seq: Option<u64>,
    /// What exactly is wrong, for a human.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: writer {:?}",
            self.kind.as_str().to_uppercase(),
            self.writer
        )?;
        if let Some(segment) = &self.segment {
            write!(f, ", segment {segment}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, ", seq {seq}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What was verified for one writer.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WriterSummary {
    /// Writer identity.
    pub writer: String,
    /// Segments seen.
    pub segments: usize,
    /// Of which sealed.
    pub sealed_segments: usize,
    /// Records verified (up to the first problem, if any).
    pub records: u64,
    /// First sequence present.
    pub first_seq: u64,
    /// Last sequence verified.
    pub last_seq: u64,
    /// Hash of the last verified record.
    pub head: Hash256,
    /// When the chain does not start at 1: the predecessor head it is anchored at.
    pub anchored_at: Option<Hash256>,
    /// Records in the writer's last, still open segment (chained but not signed).
    pub unsealed_records: u64,
}

/// The verifier's result.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// One entry per writer, ordered by writer identity.
    pub writers: Vec<WriterSummary>,
    /// At most one problem per writer: the first one in its chain.
    pub problems: Vec<Problem>,
    /// Whether signatures were checked against trusted keys.
    pub signatures_checked: bool,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first problem, in writer order.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    /// Total records verified.
    pub fn total_records(&self) -> u64 {
        self.writers.iter().map(|w| w.records).sum()
    }

    /// Total segments seen.
    pub fn total_segments(&self) -> usize {
        self.writers.iter().map(|w| w.segments).sum()
    }
}

/// Verify segments of any number of writers, in any order.
///
/// The expensive, independent work (recomputing every record hash from its stored
/// `prev_hash`, Merkle roots, signatures) runs on all available cores first; the
/// walk that links records and decides diagnoses is then a cheap sequential pass.
pub fn verify_segments(segments: &[NamedSegment], options: &VerifyOptions) -> VerifyReport {
    let precomputed = precompute_all(segments, options);
    let mut by_writer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, named) in segments.iter().enumerate() {
        by_writer
            .entry(named.segment.header.writer.as_str())
            .or_default()
            .push(index);
    }
    let mut report = VerifyReport {
        signatures_checked: !options.trusted_keys.is_empty(),
        ..VerifyReport::default()
    };
    for (writer, mut indexes) in by_writer {
        // Stable sort: two segments claiming the same first_seq stay in input order
        // and the walk reports the second as a duplicate.
        indexes.sort_by_key(|&i| segments[i].segment.header.first_seq);
        let chain: Vec<(&NamedSegment, &Precomputed)> = indexes
            .iter()
            .map(|&i| (&segments[i], &precomputed[i]))
            .collect();
        let (summary, problem) = verify_writer(writer, &chain, options);
        report.writers.push(summary);
        report.problems.extend(problem);
    }
    for anchor in &options.anchors {
        if report.problems.iter().any(|p| p.writer == anchor.writer) {
            continue;
        }
        match report.writers.iter().find(|w| w.writer == anchor.writer) {
            None => report.problems.push(Problem {
                kind: ProblemKind::Missing,
                writer: anchor.writer.clone(),
                segment: None,
                seq: Some(anchor.seq),
                message: format!(
                    "no segment of this writer was found, but an anchor says seq {} existed",
                    anchor.seq
                ),
            }),
            Some(summary) if summary.last_seq < anchor.seq => report.problems.push(Problem {
                kind: ProblemKind::Truncated,
                writer: anchor.writer.clone(),
                segment: None,
                seq: Some(summary.last_seq + 1),
                message: format!(
                    "trail ends at seq {} but an anchor says seq {} existed",
                    summary.last_seq, anchor.seq
                ),
            }),
            Some(_) => {}
        }
    }
    report
}

/// Per-segment results that do not depend on other segments.
struct Precomputed {
    /// `compute_hash(stored prev_hash)` of every record.
    hashes: Vec<Hash256>,
    /// Merkle root over `hashes`.
    merkle_root: Hash256,
    /// Why the signature fails, if it does (checked only for sealed segments).
    signature_problem: Option<(ProblemKind, String)>,
}

/// Below this many records threads cost more than they save.
const PARALLEL_THRESHOLD_RECORDS: usize = 20_000;

fn precompute_all(segments: &[NamedSegment], options: &VerifyOptions) -> Vec<Precomputed> {
    let records: usize = segments.iter().map(|s| s.segment.records.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || records < PARALLEL_THRESHOLD_RECORDS {
        return segments.iter().map(|s| precompute(s, options)).collect();
    }
    let chunk = segments.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = segments
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| precompute(s, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("verifier thread panicked"))
            .collect()
    })
}

fn precompute(named: &NamedSegment, options: &VerifyOptions) -> Precomputed {
    let hashes: Vec<Hash256> = named
        .segment
        .records
        .iter()
        .map(|r| r.compute_hash(&r.prev_hash))
        .collect();
    Precomputed {
        merkle_root: merkle_root(&hashes),
        hashes,
        signature_problem: if named.segment.is_sealed() {
            signature_problem(&named.segment, options)
        } else {
            None
        },
    }
}

struct Walk<'a> {
    writer: &'a str,
    summary: WriterSummary,
}

impl Walk<'_> {
    fn problem(
        &self,
        kind: ProblemKind,
        segment: &NamedSegment,
        seq: Option<u64>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            kind,
            writer: self.writer.to_string(),
            segment: Some(segment.name.clone()),
            seq,
            message: message.into(),
        }
    }
}

fn verify_writer(
    writer: &str,
    chain: &[(&NamedSegment, &Precomputed)],
    options: &VerifyOptions,
) -> (WriterSummary, Option<Problem>) {
    let first_seq = chain.first().map_or(0, |(s, _)| s.segment.header.first_seq);
    let mut walk = Walk {
        writer,
        summary: WriterSummary {
            writer: writer.to_string(),
            segments: chain.len(),
            sealed_segments: chain.iter().filter(|(s, _)| s.segment.is_sealed()).count(),
            records: 0,
            first_seq,
            last_seq: first_seq.saturating_sub(1),
            head: Hash256::ZERO,
            anchored_at: None,
            unsealed_records: 0,
        },
    };
    let problem = walk_chain(&mut walk, chain, options).err();
    (walk.summary, problem)
}

fn walk_chain(
    walk: &mut Walk<'_>,
    chain: &[(&NamedSegment, &Precomputed)],
    options: &VerifyOptions,
) -> Result<(), Problem> {
    let Some(&(first, _)) = chain.first() else {
        return Ok(());
    };
    let mut expected_seq = first.segment.header.first_seq;
    let mut head = first.segment.header.prev_segment_hash;
    if expected_seq == 0 {
        return Err(walk.problem(
            ProblemKind::Modified,
            first,
            None,
            "header claims first_seq 0; sequences start at 1",
        ));
    }
    if expected_seq == 1 && head != Hash256::ZERO {
        return Err(walk.problem(
            ProblemKind::Modified,
            first,
            Some(1),
            "first segment of the chain has a non-zero predecessor hash",
        ));
    }
    if expected_seq > 1 {
        if options.require_genesis {
            return Err(walk.problem(
                ProblemKind::Missing,
                first,
                Some(1),
                format!(
                    "chain starts at seq {expected_seq}: records 1..={} are missing",
                    expected_seq - 1
                ),
            ));
        }
        walk.summary.anchored_at = Some(head);
    }
    walk.summary.head = head;

    for (index, &(named, pre)) in chain.iter().enumerate() {
        let segment = &named.segment;
        let header = &segment.header;
        let is_last = index + 1 == chain.len();

        if header.format != SEGMENT_FORMAT {
            return Err(walk.problem(
                ProblemKind::Malformed,
                named,
                None,
                format!("unknown segment format {}", header.format),
            ));
        }
        if index > 0 {
            if header.first_seq > expected_seq {
                return Err(walk.problem(
                    ProblemKind::Missing,
                    named,
                    Some(expected_seq),
                    format!(
                        "segment(s) missing: records {expected_seq}..={} are absent before this segment",
                        header.first_seq - 1
                    ),
                ));
            }
            if header.first_seq < expected_seq {
                return Err(walk.problem(
                    ProblemKind::Reordered,
                    named,
                    Some(header.first_seq),
                    format!(
                        "segment starts at seq {} but the previous segment already reached seq {}",
                        header.first_seq,
                        expected_seq - 1
                    ),
                ));
            }
            if header.prev_segment_hash != head {
                return Err(walk.problem(
                    ProblemKind::Modified,
                    named,
                    Some(header.first_seq),
                    format!(
                        "segment does not link to its predecessor: prev_segment_hash {} but the previous segment ends with {}",
                        header.prev_segment_hash.short(),
                        head.short()
                    ),
                ));
            }
        }

        if segment.is_sealed() {
            if let Some((kind, message)) = &pre.signature_problem {
                return Err(walk.problem(*kind, named, None, message.clone()));
            }
        } else if segment.signature.is_some() || header.sealed_at.is_some() {
            return Err(walk.problem(
                ProblemKind::BadSignature,
                named,
                None,
                "segment is half sealed: signature without seal time or seal time without signature",
            ));
        } else if !is_last {
            return Err(walk.problem(
                ProblemKind::Unsealed,
                named,
                None,
                "segment is not sealed but later segments follow it",
            ));
        }

        if segment.records.is_empty() {
            return Err(walk.problem(
                ProblemKind::Truncated,
                named,
                Some(header.first_seq),
                "segment holds no records",
            ));
        }

        for (position, record) in segment.records.iter().enumerate() {
            if record.seq != expected_seq {
                let later = segment.records[position + 1..]
                    .iter()
                    .any(|r| r.seq == expected_seq);
                return Err(if later || record.seq < expected_seq {
                    walk.problem(
                        ProblemKind::Reordered,
                        named,
                        Some(expected_seq),
                        format!(
                            "record at position {position} has seq {} where seq {expected_seq} belongs",
                            record.seq
                        ),
                    )
                } else {
                    walk.problem(
                        ProblemKind::Missing,
                        named,
                        Some(expected_seq),
                        format!(
                            "records {expected_seq}..={} are missing (next present record is seq {})",
                            record.seq - 1,
                            record.seq
                        ),
                    )
                });
            }
            if record.writer != walk.writer {
                return Err(walk.problem(
                    ProblemKind::Modified,
                    named,
                    Some(record.seq),
                    format!("record names writer {:?}", record.writer),
                ));
            }
            // The stored link is almost always right, and then the hash computed in
            // parallel from it is the one the chain needs.
            let computed = if record.prev_hash == head {
                pre.hashes[position]
            } else {
                record.compute_hash(&head)
            };
            if computed != record.hash || record.prev_hash != head {
                let message = if record.prev_hash != head {
                    format!(
                        "record does not link to its predecessor: prev_hash {} but the previous record's hash is {}",
                        record.prev_hash.short(),
                        head.short()
                    )
                } else {
                    format!(
                        "record content does not match its hash (stored {}, computed {})",
                        record.hash.short(),
                        computed.short()
                    )
                };
                return Err(walk.problem(ProblemKind::Modified, named, Some(record.seq), message));
            }
            if let Some(anchor) = options
                .anchors
                .iter()
                .find(|a| a.seq == record.seq && a.writer == walk.writer)
                && anchor.hash != computed
            {
                return Err(walk.problem(
                    ProblemKind::Modified,
                    named,
                    Some(record.seq),
                    format!(
                        "record hash {} differs from the anchored hash {}: the chain was rewritten",
                        computed.short(),
                        anchor.hash.short()
                    ),
                ));
            }
            head = computed;
            expected_seq += 1;
            walk.summary.records += 1;
            walk.summary.last_seq = record.seq;
            walk.summary.head = head;
        }

        let actual_last = expected_seq - 1;
        if actual_last < header.last_seq {
            return Err(walk.problem(
                ProblemKind::Truncated,
                named,
                Some(actual_last + 1),
                format!(
                    "segment ends at seq {actual_last} but its header says it ends at seq {}",
                    header.last_seq
                ),
            ));
        }
        if actual_last > header.last_seq
            || header.first_seq != segment.records[0].seq
            || header.record_count != segment.records.len() as u64
        {
            return Err(walk.problem(
                ProblemKind::Modified,
                named,
                None,
                format!(
                    "header (seq {}..={}, {} records) does not describe the records (seq {}..={}, {} records)",
                    header.first_seq,
                    header.last_seq,
                    header.record_count,
                    segment.records[0].seq,
                    actual_last,
                    segment.records.len()
                ),
            ));
        }
        if header.last_hash != head {
            return Err(walk.problem(
                ProblemKind::Modified,
                named,
                Some(actual_last),
                "header last_hash does not match the last record",
            ));
        }
        // Every record matched its precomputed hash, so the precomputed root is the
        // root of the walked hashes.
        if header.merkle_root != pre.merkle_root {
            return Err(walk.problem(
                ProblemKind::Modified,
                named,
                None,
                "records do not match the header's Merkle root",
            ));
        }
        if !segment.is_sealed() {
            walk.summary.unsealed_records = segment.records.len() as u64;
        }
    }
    Ok(())
}

pub(crate) fn signature_problem(
    segment: &Segment,
    options: &VerifyOptions,
) -> Option<(ProblemKind, String)> {
    let Some(signature) = segment.signature_bytes() else {
        return Some((
            ProblemKind::BadSignature,
            "signature is not 64 bytes of base64".into(),
        ));
    };
    if options.trusted_keys.is_empty() {
        return None;
    }
    let key_id = segment.header.key_id.as_deref().unwrap_or("");
    let Some(key) = options.trusted_keys.iter().find(|k| k.key_id() == key_id) else {
        return Some((
            ProblemKind::UntrustedKey,
            format!("header is signed by key {key_id:?}, which is not a trusted key"),
        ));
    };
    if !key.verify(&segment.header.canonical_bytes(), &signature) {
        return Some((
            ProblemKind::BadSignature,
            format!("signature does not verify with trusted key {key_id}"),
        ));
    }
    None
}
