//! The verifier: proves a set of segments is a complete, unmodified trail, or names
//! the first record or segment where it is not.
//!
//! It works in three steps:
//!
//! 1. **Each segment on its own**, on every core ([`super::check`]): who signed
//!    it and whether the keyring binds that key to the segment's writer; then
//!    its records, hashes, Merkle root, writer tree and checkpoint.
//! 2. **Set aside what is not the writer's.** A segment whose signature does not
//!    verify with a key bound to its writer (forged, planted, re-signed with
//!    another writer's key) is reported and left out, so it can neither hide
//!    nor break the writer's real chain.
//! 3. **Walk each writer's chain** in sequence order: the link to the previous
//!    segment (sequence continuity, `prev_segment_hash`, tree frontier), then
//!    what step 1 found inside the segment. The first problem ends that
//!    writer's walk; other writers are still checked. Order comes from the
//!    chain (sequence numbers and hashes), never from times a writer stated.
//!
//! Records of a writer's last, still open segment are chained but not sealed:
//! they are **unproven**, and verification fails on them unless the caller
//! accepts an open tail ([`VerifyOptions::allow_open_tail`]), in which case the
//! report lists exactly which records it does not prove.
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::check::{Checked, LocalProblem, Trust, check, check_document, parallel_map};
use super::checkpoint::{SignedNote, origin_of};
use super::hash::Hash256;
use super::keyring::Keyring;
use super::segment::Segment;

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
    /// Keys and the writers each may sign for. `None`: signatures are not
    /// checked (the report says so); only for diagnosis.
    pub keyring: Option<Keyring>,
    /// Require every writer's chain to start at seq 1. Without it, a chain may start
    /// later (retention handed older segments to a sink) and is anchored at the
    /// first kept segment's `prev_segment_hash`, which the report shows.
    pub require_genesis: bool,
    /// Heads recorded earlier: the trail must still reach each one, with the
    /// same hash.
    pub anchors: Vec<Anchor>,
    /// Accept the records of a writer's open last segment as unproven (listed in
    /// the report) instead of failing on them.
    pub allow_open_tail: bool,
    /// Signed checkpoints from an earlier review: the trail must extend each.
    pub checkpoints: Vec<SignedNote>,
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
    /// A segment ends before the sequence its header promises, or the trail ends
    /// before an anchor or checkpoint.
    Truncated,
    /// The header signature is missing, malformed or does not verify.
    BadSignature,
    /// Signed by a key that is unknown, not bound to the segment's writer, or
    /// used outside its validity.
    UntrustedKey,
    /// A segment other than a writer's last is not sealed.
    Unsealed,
    /// Records of an open segment, or a checkpoint, that nothing proves.
    Unproven,
    /// A segment or checkpoint could not be read or parsed at all.
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
            ProblemKind::Unproven => "unproven",
            ProblemKind::Malformed => "malformed",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The diagnosis.
    pub kind: ProblemKind,
    /// Writer concerned (empty if unknown, e.g. an unreadable file).
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

/// Records a verification accepted without proof: a writer's open last segment.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct UnprovenTail {
    /// The open segment.
    pub segment: String,
    /// Its first record.
    pub first_seq: u64,
    /// Its last record.
    pub last_seq: u64,
    /// The key whose signature of the last flush verified (format 2), if any.
    /// Even then the records are unproven: an open segment can still be
    /// replaced by an earlier signed flush, and no checkpoint covers it.
    pub flush_signed_by: Option<String>,
}

/// What was verified for one writer.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WriterSummary {
    /// Writer identity.
    pub writer: String,
    /// Segments in the writer's chain.
    pub segments: usize,
    /// Of which sealed.
    pub sealed_segments: usize,
    /// Records whose chain verified (up to the first problem, if any), the
    /// unproven tail included.
    pub records: u64,
    /// First sequence present.
    pub first_seq: u64,
    /// Last sequence verified.
    pub last_seq: u64,
    /// Hash of the last verified record.
    pub head: Hash256,
    /// When the chain does not start at 1: the predecessor head it is anchored at.
    pub anchored_at: Option<Hash256>,
    /// The open last segment's records, which nothing proves yet.
    pub unproven: Option<UnprovenTail>,
    /// The writer's newest signed checkpoint (C2SP note) in the verified chain.
    pub checkpoint: Option<String>,
    /// Names of the segments of the chain, in order.
    #[serde(skip)]
    pub chain: Vec<String>,
}

impl WriterSummary {
    /// How many records sit in the open last segment, which nothing proves yet.
    pub fn unproven_records(&self) -> u64 {
        self.unproven
            .as_ref()
            .map_or(0, |tail| tail.last_seq + 1 - tail.first_seq)
    }
}

/// The verifier's result.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// One entry per writer, ordered by writer identity.
    pub writers: Vec<WriterSummary>,
    /// Segments set aside (unreadable, or not signed by a key bound to their
    /// writer) first, then at most one problem per writer's chain, then
    /// checkpoint problems.
    pub problems: Vec<Problem>,
    /// Whether signatures were checked against a keyring.
    pub signatures_checked: bool,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first problem.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    /// Total records verified.
    pub fn total_records(&self) -> u64 {
        self.writers.iter().map(|w| w.records).sum()
    }

    /// Total segments in the writers' chains.
    pub fn total_segments(&self) -> usize {
        self.writers.iter().map(|w| w.segments).sum()
    }

    /// Records accepted without proof (open tails).
    pub fn unproven_records(&self) -> u64 {
        self.writers
            .iter()
            .filter_map(|w| w.unproven.as_ref())
            .map(|t| t.last_seq - t.first_seq + 1)
            .sum()
    }
}

/// Below this many records threads cost more than they save.
const PARALLEL_THRESHOLD_RECORDS: usize = 20_000;

/// Verify parsed segments of any number of writers, in any order.
pub fn verify_segments(segments: &[NamedSegment], options: &VerifyOptions) -> VerifyReport {
    let records: usize = segments.iter().map(|s| s.segment.records.len()).sum();
    let keyring = options.keyring.as_ref();
    let checks = parallel_map(segments.len(), records >= PARALLEL_THRESHOLD_RECORDS, |i| {
        let named = &segments[i];
        let segment = &named.segment;
        Ok(check(
            &super::check::SegmentView {
                name: &named.name,
                header: &segment.header,
                signature: segment.signature.as_deref(),
                frontier: segment.frontier.as_deref(),
                checkpoint: segment.checkpoint.as_deref(),
                records: &segment.records,
            },
            keyring,
        ))
    });
    report(checks, options)
}

/// Verify stored segment documents straight from their JSON, `count` of them,
/// each fetched by `fetch(i)` as a name and its bytes (or why they could not be
/// read). Documents are fetched, parsed and checked on every core, one at a
/// time per core, and dropped once checked: memory stays at a few segments
/// whatever the size of the trail.
pub fn verify_documents(
    count: usize,
    fetch: impl Fn(usize) -> (String, Result<Vec<u8>, String>) + Sync,
    options: &VerifyOptions,
) -> VerifyReport {
    let keyring = options.keyring.as_ref();
    let checks = parallel_map(count, true, |i| {
        let (name, bytes) = fetch(i);
        match bytes.and_then(|bytes| check_document(&name, &bytes, keyring)) {
            Ok(checked) => Ok(checked),
            Err(message) => Err((name, message)),
        }
    });
    report(checks, options)
}

/// Steps 2 and 3: set aside, walk, anchors, checkpoints.
fn report(checks: Vec<Result<Checked, (String, String)>>, options: &VerifyOptions) -> VerifyReport {
    let mut report = VerifyReport {
        signatures_checked: options.keyring.is_some(),
        ..VerifyReport::default()
    };
    let mut by_writer: BTreeMap<String, Vec<Checked>> = BTreeMap::new();
    let mut set_aside: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    for checked in checks {
        match checked {
            Err((name, message)) => report.problems.push(Problem {
                kind: ProblemKind::Malformed,
                writer: String::new(),
                segment: Some(name),
                seq: None,
                message: format!("segment cannot be parsed: {message}"),
            }),
            Ok(checked) => match &checked.trust {
                Trust::Refused { kind, message } => {
                    let header = &checked.header;
                    report.problems.push(Problem {
                        kind: *kind,
                        writer: header.writer.clone(),
                        segment: Some(checked.name.clone()),
                        seq: None,
                        message: format!(
                            "{message}; set aside, the writer's chain is verified without it"
                        ),
                    });
                    set_aside.entry(header.writer.clone()).or_default().push((
                        header.first_seq,
                        header.last_seq,
                        checked.name.clone(),
                    ));
                }
                _ => by_writer
                    .entry(checked.header.writer.clone())
                    .or_default()
                    .push(checked),
            },
        }
    }
    let mut chains: BTreeMap<String, Vec<Checked>> = BTreeMap::new();
    for (writer, mut segments) in by_writer {
        // Stable: two segments claiming one first_seq keep their input order and
        // the walk reports the second as a duplicate.
        segments.sort_by_key(|c| c.header.first_seq);
        let aside = set_aside.get(&writer).map_or(&[][..], Vec::as_slice);
        let (summary, problem) = walk(&writer, &segments, aside, options);
        report.writers.push(summary);
        report.problems.extend(problem);
        chains.insert(writer, segments);
    }
    check_anchors(&mut report, options);
    check_checkpoints(&mut report, &chains, options);
    report
}

/// Walk one writer's chain.
fn walk(
    writer: &str,
    chain: &[Checked],
    set_aside: &[(u64, u64, String)],
    options: &VerifyOptions,
) -> (WriterSummary, Option<Problem>) {
    let first = &chain[0].header;
    let mut summary = WriterSummary {
        writer: writer.to_string(),
        segments: chain.len(),
        sealed_segments: chain.iter().filter(|c| c.sealed).count(),
        records: 0,
        first_seq: first.first_seq,
        last_seq: first.first_seq.saturating_sub(1),
        head: first.prev_segment_hash,
        anchored_at: None,
        unproven: None,
        checkpoint: None,
        chain: chain.iter().map(|c| c.name.clone()).collect(),
    };
    let problem = walk_chain(&mut summary, chain, set_aside, options).err();
    (summary, problem)
}

fn chain_problem(
    summary: &WriterSummary,
    segment: &Checked,
    kind: ProblemKind,
    seq: Option<u64>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        kind,
        writer: summary.writer.clone(),
        segment: Some(segment.name.clone()),
        seq,
        message: message.into(),
    }
}

/// Where the chain starts: seq 1 from zeros, or (unless genesis is required)
/// later, anchored at the first segment's predecessor head.
fn check_start(
    summary: &mut WriterSummary,
    first: &Checked,
    options: &VerifyOptions,
) -> Result<(), Problem> {
    let header = &first.header;
    let problem =
        |kind, seq, message: String| Err(chain_problem(summary, first, kind, seq, message));
    if header.first_seq == 1 && header.prev_segment_hash != Hash256::ZERO {
        return problem(
            ProblemKind::Modified,
            Some(1),
            "first segment of the chain has a non-zero predecessor hash".into(),
        );
    }
    if header.first_seq > 1 {
        if options.require_genesis {
            return problem(
                ProblemKind::Missing,
                Some(1),
                format!(
                    "chain starts at seq {}: records 1..={} are missing",
                    header.first_seq,
                    header.first_seq - 1
                ),
            );
        }
        summary.anchored_at = Some(header.prev_segment_hash);
    }
    Ok(())
}

fn walk_chain(
    summary: &mut WriterSummary,
    chain: &[Checked],
    set_aside: &[(u64, u64, String)],
    options: &VerifyOptions,
) -> Result<(), Problem> {
    check_start(summary, &chain[0], options)?;
    let mut expected = chain[0].header.first_seq;
    let mut head = chain[0].header.prev_segment_hash;
    let mut tree = chain[0].frontier_before.clone();
    for (index, segment) in chain.iter().enumerate() {
        let header = &segment.header;
        if index > 0 {
            check_link(summary, segment, expected, head, &tree, set_aside)?;
        }
        if !segment.sealed && index + 1 < chain.len() {
            return Err(chain_problem(
                summary,
                segment,
                ProblemKind::Unsealed,
                None,
                "segment is not sealed but later segments follow it",
            ));
        }
        if let Some(LocalProblem { kind, seq, message }) = &segment.problem {
            count_verified(summary, segment, segment.hashes.len());
            return Err(chain_problem(
                summary,
                segment,
                *kind,
                *seq,
                message.clone(),
            ));
        }
        check_anchor_hashes(summary, segment, options)?;
        count_verified(summary, segment, segment.hashes.len());
        expected = header.last_seq + 1;
        head = header.last_hash;
        tree = segment.frontier_after.clone();
        if segment.checkpoint.is_some() {
            summary.checkpoint = segment.checkpoint.clone();
        }
    }
    let last = chain.last().expect("a chain has a segment");
    if !last.sealed {
        open_tail(summary, last, options)?;
    }
    Ok(())
}

/// The link from the previous segment (ending before `expected` with `head`).
fn check_link(
    summary: &WriterSummary,
    segment: &Checked,
    expected: u64,
    head: Hash256,
    tree: &Option<super::merkle::TreeFrontier>,
    set_aside: &[(u64, u64, String)],
) -> Result<(), Problem> {
    let header = &segment.header;
    let fail =
        |kind, seq, message: String| Err(chain_problem(summary, segment, kind, Some(seq), message));
    if header.first_seq > expected {
        let claimed: Vec<&str> = set_aside
            .iter()
            .filter(|(first, last, _)| *first < header.first_seq && *last >= expected)
            .map(|(_, _, name)| name.as_str())
            .collect();
        let note = if claimed.is_empty() {
            String::new()
        } else {
            format!(
                " (claimed only by set-aside segment(s) {})",
                claimed.join(", ")
            )
        };
        return fail(
            ProblemKind::Missing,
            expected,
            format!(
                "segment(s) missing: records {expected}..={} are absent before this segment{note}",
                header.first_seq - 1
            ),
        );
    }
    if header.first_seq < expected {
        return fail(
            ProblemKind::Reordered,
            header.first_seq,
            format!(
                "segment starts at seq {} but the previous segment already reached seq {}",
                header.first_seq,
                expected - 1
            ),
        );
    }
    if header.prev_segment_hash != head {
        return fail(
            ProblemKind::Modified,
            header.first_seq,
            format!(
                "segment does not link to its predecessor: prev_segment_hash {} but the previous segment ends with {}",
                header.prev_segment_hash.short(),
                head.short()
            ),
        );
    }
    if let (Some(after), Some(before)) = (tree, &segment.frontier_before)
        && after != before
    {
        return fail(
            ProblemKind::Modified,
            header.first_seq,
            "segment does not continue its predecessor's writer tree".into(),
        );
    }
    Ok(())
}

fn count_verified(summary: &mut WriterSummary, segment: &Checked, verified: usize) {
    if verified == 0 {
        return;
    }
    summary.records += verified as u64;
    summary.last_seq = segment.header.first_seq + verified as u64 - 1;
    summary.head = segment.hashes[verified - 1];
}

/// Anchors that fall inside the segment must have their hash.
fn check_anchor_hashes(
    summary: &WriterSummary,
    segment: &Checked,
    options: &VerifyOptions,
) -> Result<(), Problem> {
    let header = &segment.header;
    for anchor in options.anchors.iter().filter(|a| {
        a.writer == summary.writer && (header.first_seq..=header.last_seq).contains(&a.seq)
    }) {
        let hash = segment.hashes[(anchor.seq - header.first_seq) as usize];
        if hash != anchor.hash {
            return Err(chain_problem(
                summary,
                segment,
                ProblemKind::Modified,
                Some(anchor.seq),
                format!(
                    "record hash {} differs from the anchored hash {}: the chain was rewritten",
                    hash.short(),
                    anchor.hash.short()
                ),
            ));
        }
    }
    Ok(())
}

/// The writer's open last segment: unproven, accepted only when asked.
fn open_tail(
    summary: &mut WriterSummary,
    last: &Checked,
    options: &VerifyOptions,
) -> Result<(), Problem> {
    let header = &last.header;
    let tail = UnprovenTail {
        segment: last.name.clone(),
        first_seq: header.first_seq,
        last_seq: header.last_seq,
        flush_signed_by: match &last.trust {
            Trust::Signed { key_id } => Some(key_id.clone()),
            _ => None,
        },
    };
    summary.unproven = Some(tail);
    if options.allow_open_tail {
        return Ok(());
    }
    Err(chain_problem(
        summary,
        last,
        ProblemKind::Unproven,
        Some(header.first_seq),
        format!(
            "records {}..={} are in an open segment: chained but not sealed, so nothing proves them yet (accept them as unproven with --allow-open-tail)",
            header.first_seq, header.last_seq
        ),
    ))
}

/// Writers and heads named by anchors must still be reached.
fn check_anchors(report: &mut VerifyReport, options: &VerifyOptions) {
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
}

/// Every earlier checkpoint must be signed by a key bound to its writer and be
/// a prefix of the writer's tree as the trail holds it now.
fn check_checkpoints(
    report: &mut VerifyReport,
    chains: &BTreeMap<String, Vec<Checked>>,
    options: &VerifyOptions,
) {
    for (index, note) in options.checkpoints.iter().enumerate() {
        let label = format!("checkpoint #{}", index + 1);
        let problem = |kind, writer: &str, seq, message: String| Problem {
            kind,
            writer: writer.to_string(),
            segment: Some(label.clone()),
            seq,
            message,
        };
        let checkpoint = match note.checkpoint() {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                report
                    .problems
                    .push(problem(ProblemKind::Malformed, "", None, error.to_string()));
                continue;
            }
        };
        let Some(writer) = checkpoint.writer().map(str::to_string) else {
            report.problems.push(problem(
                ProblemKind::Malformed,
                "",
                None,
                format!(
                    "origin {:?} is not a PolicyBind audit log",
                    checkpoint.origin
                ),
            ));
            continue;
        };
        if let Some((kind, message)) = checkpoint_signature(note, &writer, options.keyring.as_ref())
        {
            report.problems.push(problem(kind, &writer, None, message));
            continue;
        }
        if report.problems.iter().any(|p| p.writer == writer) {
            continue;
        }
        let summary = report.writers.iter().find(|w| w.writer == writer);
        let chain = chains.get(&writer).map_or(&[][..], Vec::as_slice);
        if let Err((kind, seq, message)) =
            extends(summary, chain, checkpoint.size, &checkpoint.root)
        {
            report.problems.push(problem(kind, &writer, seq, message));
        }
    }
}

/// Why a checkpoint is not signed by a key bound to its writer, if it is not
/// (`None` keyring: not checked).
pub(crate) fn checkpoint_signature(
    note: &SignedNote,
    writer: &str,
    keyring: Option<&Keyring>,
) -> Option<(ProblemKind, String)> {
    let keyring = keyring?;
    let origin = origin_of(writer);
    let mut failed = false;
    for trusted in keyring.keys_for_writer(writer) {
        match note.verify(&origin, &trusted.key) {
            Some(true) => return None,
            Some(false) => failed = true,
            None => {}
        }
    }
    Some(if failed {
        (
            ProblemKind::BadSignature,
            "checkpoint signature does not verify".into(),
        )
    } else {
        (
            ProblemKind::UntrustedKey,
            format!("checkpoint is not signed by any key bound to writer {writer:?}"),
        )
    })
}

/// Whether the writer's verified tree at `size` leaves has root `root`.
fn extends(
    summary: Option<&WriterSummary>,
    chain: &[Checked],
    size: u64,
    root: &Hash256,
) -> Result<(), (ProblemKind, Option<u64>, String)> {
    if size == 0 {
        return Ok(());
    }
    let Some(summary) = summary else {
        return Err((
            ProblemKind::Missing,
            Some(1),
            format!("the trail holds no segment of this writer, but it had {size} records"),
        ));
    };
    if summary.last_seq < size {
        return Err((
            ProblemKind::Truncated,
            Some(summary.last_seq + 1),
            format!(
                "trail ends at seq {} but the writer's checkpoint says it held {size} records",
                summary.last_seq
            ),
        ));
    }
    let holding = chain.iter().find(|c| {
        c.header.first_seq <= size + 1 && size <= c.header.last_seq && c.frontier_before.is_some()
    });
    let Some(segment) = holding else {
        return Err((
            ProblemKind::Unproven,
            Some(size),
            format!(
                "the trail cannot prove the checkpoint at {size} records: those records were moved out by retention or are in format-1 segments (verify with the sink too)"
            ),
        ));
    };
    let mut tree = segment
        .frontier_before
        .clone()
        .expect("found with a frontier");
    for hash in &segment.hashes[..(size + 1 - segment.header.first_seq) as usize] {
        tree.push_record(hash);
    }
    if tree.root() != *root {
        return Err((
            ProblemKind::Modified,
            Some(size),
            format!(
                "the writer's tree at {size} records has root {} but the checkpoint says {}: the trail was rewritten",
                tree.root().short(),
                root.short()
            ),
        ));
    }
    Ok(())
}
