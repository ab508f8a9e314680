//! The one trait both stores implement, and the forms a segment takes in them.
//!
//! A store holds whole segment documents under their [names](crate::naming).
//! The writer calls `put` (the open segment is rewritten until it is sealed) and,
//! at start, `names` and `get` to find where its chain ends; retention and the
//! `policybind audit` tools call `list` and `delete`. Stores do not interpret
//! documents: reading one back yields its JSON ([`RawSegment`]), which the
//! verifier parses straight from the bytes.
use futures::future::BoxFuture;
use policybind_engine::audit::{NamedSegment, Segment};

use crate::Error;
use crate::encoding::Encoding;

/// A segment document as written: its name, whose it is, and the encoded body.
#[derive(Clone, Debug)]
pub struct SegmentObject {
    /// Object or file name.
    pub name: String,
    /// Writer identity (for labels and logs).
    pub writer: String,
    /// Whether the segment is sealed (the store then makes it durable or
    /// immutable before `put` returns).
    pub sealed: bool,
    /// The document, encoded as the store's [`StoreProfile::encoding`] says.
    /// Shared, not copied, when a store hands it to a blocking write: the
    /// open segment is written whole at every flush, so a copy per write
    /// was a tenth of the sidecar's instructions per request (callgrind).
    pub body: bytes::Bytes,
}

/// What a store wants from the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreProfile {
    /// How bodies are encoded.
    pub encoding: Encoding,
    /// Largest body the store accepts.
    pub max_object_bytes: usize,
    /// Store writes one flush may make: 1 for the API server (about one write
    /// per second per writer), unlimited (`None`) for a local directory.
    pub writes_per_flush: Option<usize>,
}

/// A stored document read back, decoded to JSON but not parsed.
#[derive(Clone, Debug)]
pub struct RawSegment {
    /// Object name or file path.
    pub name: String,
    /// Size as stored (what counts against the retention budget).
    pub size_bytes: u64,
    /// The document JSON, or why it could not be read (not gzip, too large, no
    /// data key, ...).
    pub json: Result<Vec<u8>, String>,
}

impl RawSegment {
    /// Parse the document.
    pub fn parse(self) -> StoredSegment {
        StoredSegment {
            content: self
                .json
                .and_then(|json| serde_json::from_slice(&json).map_err(|e| e.to_string())),
            name: self.name,
            size_bytes: self.size_bytes,
        }
    }
}

/// A segment as found in a store, parsed. Unreadable segments are kept (with the
/// reason) so they are reported instead of silently skipped.
#[derive(Clone, Debug)]
pub struct StoredSegment {
    /// Object name or file path.
    pub name: String,
    /// Size as stored.
    pub size_bytes: u64,
    /// The parsed segment, or why it could not be parsed.
    pub content: Result<Segment, String>,
}

impl StoredSegment {
    /// Parse stored JSON bytes.
    pub fn parse(name: impl Into<String>, bytes: &[u8]) -> Self {
        RawSegment {
            name: name.into(),
            size_bytes: bytes.len() as u64,
            json: Ok(bytes.to_vec()),
        }
        .parse()
    }

    /// Parse many raw segments, on all cores when there is enough to gain.
    pub fn parse_many(raw: Vec<RawSegment>) -> Vec<StoredSegment> {
        const PARALLEL_THRESHOLD_BYTES: u64 = 8 << 20;
        let bytes: u64 = raw.iter().map(|r| r.size_bytes).sum();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || bytes < PARALLEL_THRESHOLD_BYTES {
            return raw.into_iter().map(RawSegment::parse).collect();
        }
        let chunk = raw.len().div_ceil(threads);
        let mut parts: Vec<Vec<RawSegment>> = Vec::new();
        let mut raw = raw.into_iter().peekable();
        while raw.peek().is_some() {
            parts.push(raw.by_ref().take(chunk).collect());
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    scope.spawn(move || part.into_iter().map(RawSegment::parse).collect::<Vec<_>>())
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

/// A parsed segment's JSON: compact, fields in declaration order.
pub fn encode_segment(segment: &Segment) -> Vec<u8> {
    // Serializing plain structs with string keys cannot fail.
    serde_json::to_vec(segment).expect("segment serializes to JSON")
}

/// Where segments live. Object safe, so the writer and tools can hold
/// `Arc<dyn SegmentStore>` chosen at run time.
pub trait SegmentStore: Send + Sync + 'static {
    /// Create or replace one segment object, in one write. Sealed segments are
    /// made durable (fsync) or immutable before this returns.
    fn put<'a>(&'a self, object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>>;

    /// Every segment document in the store (all writers), sorted by name.
    fn list(&self) -> BoxFuture<'_, Result<Vec<RawSegment>, Error>>;

    /// Names of the writer's segments, sorted (which is sequence order). Cheap:
    /// no document is read.
    fn names<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>>;

    /// One segment document by name, if it exists.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<RawSegment>, Error>>;

    /// Remove a segment by name (used by retention after the sink has it).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// How the writer should encode and pace writes to this store.
    fn profile(&self) -> StoreProfile;

    /// Where the store is, for logs and reports.
    fn describe(&self) -> String;
}

/// Verify segments read from stores, straight from their JSON, on all cores.
/// Unreadable documents become
/// [`Malformed`](policybind_engine::audit::ProblemKind::Malformed) problems.
pub fn verify_stored(
    segments: Vec<RawSegment>,
    options: &policybind_engine::audit::VerifyOptions,
) -> policybind_engine::audit::VerifyReport {
    let segments: Vec<std::sync::Mutex<Option<RawSegment>>> = segments
        .into_iter()
        .map(|s| std::sync::Mutex::new(Some(s)))
        .collect();
    policybind_engine::audit::verify_documents(
        segments.len(),
        |i| {
            // Taken out, so each document is freed once checked.
            let raw = segments[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("each document is fetched once");
            (raw.name, raw.json)
        },
        options,
    )
}
