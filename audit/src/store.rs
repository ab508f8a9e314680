//! The one trait both stores implement, and the stored form of a segment.
//!
//! A store holds whole segments under their [names](crate::naming). The writer
//! calls `put` once per batch (the open segment is rewritten until it is sealed),
//! `latest` once at start to resume its chain; retention and the `policybind audit`
//! tools call `list` and `delete`.
use futures::future::BoxFuture;
use policybind_engine::audit::{NamedSegment, Segment};

use crate::Error;

/// A segment as found in a store. Unreadable segments are returned too (with the
/// parse error) so the verifier can report them instead of silently skipping them.
#[derive(Clone, Debug)]
pub struct StoredSegment {
    /// Object name or file path.
    pub name: String,
    /// Size of the stored JSON in bytes (what counts against the retention budget).
    pub size_bytes: u64,
    /// The parsed segment, or why it could not be parsed.
    pub content: Result<Segment, String>,
}

impl StoredSegment {
    /// Parse stored bytes.
    pub fn parse(name: impl Into<String>, bytes: &[u8]) -> Self {
        StoredSegment {
            name: name.into(),
            size_bytes: bytes.len() as u64,
            content: serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }

    /// Parse many stored documents, on all cores when there is enough to gain:
    /// verification of a large trail is dominated by JSON parsing otherwise.
    pub fn parse_many(documents: Vec<(String, Vec<u8>)>) -> Vec<StoredSegment> {
        const PARALLEL_THRESHOLD_BYTES: usize = 8 << 20;
        let bytes: usize = documents.iter().map(|(_, d)| d.len()).sum();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || bytes < PARALLEL_THRESHOLD_BYTES {
            return documents
                .iter()
                .map(|(name, document)| StoredSegment::parse(name.clone(), document))
                .collect();
        }
        let chunk = documents.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = documents
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(name, document)| StoredSegment::parse(name.clone(), document))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("parser thread panicked"))
                .collect()
        })
    }

    /// The segment with its name, if it parsed.
    pub fn named(&self) -> Option<NamedSegment> {
        self.content.as_ref().ok().map(|segment| NamedSegment {
            name: self.name.clone(),
            segment: segment.clone(),
        })
    }
}

/// The stored JSON of a segment: compact, fields in declaration order.
pub fn encode_segment(segment: &Segment) -> Vec<u8> {
    // Serializing plain structs with string keys cannot fail.
    serde_json::to_vec(segment).expect("segment serializes to JSON")
}

/// Where segments live. Object safe, so the writer and tools can hold
/// `Arc<dyn SegmentStore>` chosen at run time.
pub trait SegmentStore: Send + Sync + 'static {
    /// Create or replace the segment named after its writer and first sequence,
    /// in one write. Sealed segments are made durable (fsync, or an immutable
    /// ConfigMap) before this returns.
    fn put<'a>(&'a self, segment: &'a Segment) -> BoxFuture<'a, Result<(), Error>>;

    /// Every segment in the store (all writers), sorted by name.
    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredSegment>, Error>>;

    /// The writer's segment with the highest first sequence, if any.
    fn latest<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Option<Segment>, Error>>;

    /// Remove a segment by name (used by retention after the sink has it).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Where the store is, for logs and reports.
    fn describe(&self) -> String;
}

/// Verify segments read from stores: unreadable ones become
/// [`ProblemKind::Malformed`](policybind_engine::audit::ProblemKind::Malformed)
/// problems, the rest go to the engine's verifier. Consumes the listing so a large
/// trail is not copied.
pub fn verify_stored(
    segments: Vec<StoredSegment>,
    options: &policybind_engine::audit::VerifyOptions,
) -> policybind_engine::audit::VerifyReport {
    use policybind_engine::audit::{Problem, ProblemKind, verify_segments};
    let mut named = Vec::with_capacity(segments.len());
    let mut malformed = Vec::new();
    for stored in segments {
        match stored.content {
            Ok(segment) => named.push(NamedSegment {
                name: stored.name,
                segment,
            }),
            Err(message) => malformed.push(Problem {
                kind: ProblemKind::Malformed,
                writer: String::new(),
                segment: Some(stored.name),
                seq: None,
                message: format!("segment cannot be parsed: {message}"),
            }),
        }
    }
    let mut report = verify_segments(&named, options);
    // Unreadable segments come first: they may hide the records a writer's chain
    // reports as missing.
    malformed.append(&mut report.problems);
    report.problems = malformed;
    report
}
