//! Retention: keep a store within a byte budget without losing a record.
//!
//! One pass:
//!
//! 1. **Quarantine what is not a real segment.** A document that cannot be read,
//!    whose name does not match its header, or (with a keyring) whose signature
//!    does not verify with a key bound to its writer is handed to the sink's
//!    quarantine and, once the sink has it, deleted. It never counts against
//!    the budget, so planting junk cannot push real segments out. A sink that
//!    cannot keep quarantined documents leaves them in the store (reported,
//!    still not counted).
//! 2. **Export, then delete, the oldest real segments** while the rest exceed
//!    [`RetentionPolicy::max_bytes`]: per writer strictly in chain order
//!    (sequence numbers from the signed headers, never times a writer stated),
//!    taking first from the writer that holds the most bytes, so a writer that
//!    floods the store loses its own oldest segments first. Each writer's newest
//!    sealed segment and all open segments stay (a restarting writer resumes from
//!    them). Nothing is deleted before the sink has made it durable.
//!
//! The first kept segment of a writer carries its predecessor's head and writer
//! tree, so `policybind audit verify` over the store alone verifies from that
//! anchor on, and over sink plus store verifies the whole chain.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_engine::audit::{
    Keyring, NamedSegment, ProblemKind, Segment, VerifyOptions, verify_segments,
};

use crate::Error;
use crate::directory::write_atomically;
use crate::naming::{SEGMENT_NAME_PREFIX, first_seq_of, segment_name, writer_key};
use crate::store::{RawSegment, SegmentStore, StoredSegment, encode_segment};

/// The budget, and how to tell real segments from foreign ones.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    /// Bytes of real segments the store may hold.
    pub max_bytes: u64,
    /// Keys and the writers they may sign for. Without it only unreadable or
    /// misnamed documents are recognised as foreign.
    pub keyring: Option<Keyring>,
}

impl RetentionPolicy {
    /// A budget of `max_bytes`, without a keyring.
    pub fn new(max_bytes: u64) -> Self {
        RetentionPolicy {
            max_bytes,
            keyring: None,
        }
    }

    /// Recognise foreign segments by their signatures too.
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Bytes of real segments held before the pass.
    pub bytes_before: u64,
    /// Bytes of real segments held after it.
    pub bytes_after: u64,
    /// Names of the segments exported and deleted, in order.
    pub removed: Vec<String>,
    /// Foreign documents found, with why they are not real segments.
    pub quarantined: Vec<(String, String)>,
    /// Their stored bytes.
    pub quarantined_bytes: u64,
    /// Whether the sink kept them (and they were deleted from the store).
    pub quarantine_deleted: bool,
}

/// A document retention found not to be a real segment.
#[derive(Clone, Debug)]
pub struct Quarantined {
    /// Object name or file path.
    pub name: String,
    /// Why it is not a real segment.
    pub reason: String,
    /// Its JSON, when it could be decoded.
    pub json: Option<Vec<u8>>,
}

/// Where retention sends segments before deleting them. The sink must have made
/// them durable when `export` (or `quarantine`) returns.
pub trait AuditSink: Send + Sync {
    /// Take these sealed segments.
    fn export<'a>(&'a self, segments: &'a [StoredSegment]) -> BoxFuture<'a, Result<(), Error>>;
    /// Keep these foreign documents apart from real segments. Returns whether
    /// they were kept (only then are they deleted from the store); the default
    /// keeps nothing.
    fn quarantine<'a>(
        &'a self,
        documents: &'a [Quarantined],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = documents;
        async { Ok(false) }.boxed()
    }
    /// For logs.
    fn describe(&self) -> String;
}

/// A directory of segment files in the directory store's format, so
/// `policybind audit verify --dir <sink> --dir <store>` verifies across the cut.
/// Quarantined documents go to its `quarantine/` subdirectory with a
/// `.reason.txt` file each. Everything is fsynced.
#[derive(Clone, Debug)]
pub struct DirectorySink {
    dir: PathBuf,
}

impl DirectorySink {
    /// A sink writing into `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(DirectorySink { dir })
    }
}

/// A file name for an object name that may hold anything.
fn file_safe(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}

impl AuditSink for DirectorySink {
    fn export<'a>(&'a self, segments: &'a [StoredSegment]) -> BoxFuture<'a, Result<(), Error>> {
        let dir = self.dir.clone();
        let segments: Vec<_> = segments
            .iter()
            .filter_map(|s| s.content.as_ref().ok().cloned())
            .collect();
        async move {
            tokio::task::spawn_blocking(move || {
                for segment in &segments {
                    let name = segment_name(&segment.header.writer, segment.header.first_seq);
                    let path = dir.join(format!("{name}.json"));
                    write_atomically(&path, &encode_segment(segment), true)?;
                }
                Ok(())
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn quarantine<'a>(
        &'a self,
        documents: &'a [Quarantined],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let dir = self.dir.join("quarantine");
        let documents = documents.to_vec();
        async move {
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                    action: "create directory",
                    path: dir.clone(),
                    source,
                })?;
                for document in &documents {
                    let base = dir.join(file_safe(&document.name));
                    if let Some(json) = &document.json {
                        write_atomically(&base.with_extension("json"), json, true)?;
                    }
                    let reason = base.with_extension("reason");
                    write_atomically(&reason, document.reason.as_bytes(), true)?;
                }
                Ok(true)
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// One JSON line per segment on stdout (the segment document, compact), for a log
/// pipeline; quarantined documents as `{"quarantined":NAME,"reason":..,"document":..}`.
/// `policybind audit verify --file <lines.jsonl>` reads segment lines back. Use
/// only where stdout is collected durably: retention deletes once the lines
/// are flushed.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutJsonLinesSink;

fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        action: "write",
        path: PathBuf::from("<stdout>"),
        source,
    }
}

impl AuditSink for StdoutJsonLinesSink {
    fn export<'a>(&'a self, segments: &'a [StoredSegment]) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let mut out = std::io::stdout().lock();
            for segment in segments {
                if let Ok(segment) = &segment.content {
                    out.write_all(&encode_segment(segment))
                        .map_err(stdout_error)?;
                    out.write_all(b"\n").map_err(stdout_error)?;
                }
            }
            out.flush().map_err(stdout_error)
        }
        .boxed()
    }

    fn quarantine<'a>(
        &'a self,
        documents: &'a [Quarantined],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        async move {
            let mut out = std::io::stdout().lock();
            for document in documents {
                let line = serde_json::json!({
                    "quarantined": document.name,
                    "reason": document.reason,
                    "document": document.json.as_ref().map(|j| String::from_utf8_lossy(j).into_owned()),
                });
                writeln!(out, "{line}").map_err(stdout_error)?;
            }
            out.flush().map_err(stdout_error)?;
            Ok(true)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "stdout (JSON lines)".to_string()
    }
}

/// Why a parsed document is not a real segment, if it is not.
fn foreign(name: &str, segment: &Segment, keyring: Option<&Keyring>) -> Option<String> {
    let header = &segment.header;
    let expected_prefix = format!("{SEGMENT_NAME_PREFIX}{}-", writer_key(&header.writer));
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    if !base.starts_with(&expected_prefix) || first_seq_of(base) != Some(header.first_seq) {
        return Some(format!(
            "its name does not match its header (writer {:?}, first seq {})",
            header.writer, header.first_seq
        ));
    }
    let keyring = keyring?;
    let named = [NamedSegment {
        name: name.to_string(),
        segment: segment.clone(),
    }];
    let options = VerifyOptions {
        keyring: Some(keyring.clone()),
        allow_open_tail: true,
        ..VerifyOptions::default()
    };
    verify_segments(&named, &options)
        .problems
        .into_iter()
        .find(|p| {
            matches!(
                p.kind,
                ProblemKind::BadSignature | ProblemKind::UntrustedKey | ProblemKind::Malformed
            )
        })
        .map(|p| format!("{}: {}", p.kind, p.message))
}

/// Split a listing into real segments and foreign documents.
pub fn classify(
    raw: Vec<RawSegment>,
    keyring: Option<&Keyring>,
) -> (Vec<StoredSegment>, Vec<(Quarantined, u64)>) {
    let mut real = Vec::new();
    let mut quarantined = Vec::new();
    for raw in raw {
        let json = raw.json.as_ref().ok().cloned();
        let stored = raw.parse();
        let reason = match &stored.content {
            Err(message) => Some(format!("unreadable: {message}")),
            Ok(segment) => foreign(&stored.name, segment, keyring),
        };
        match reason {
            None => real.push(stored),
            Some(reason) => quarantined.push((
                Quarantined {
                    name: stored.name,
                    reason,
                    json,
                },
                stored.size_bytes,
            )),
        }
    }
    (real, quarantined)
}

/// Which real segments a pass removes, in order: a pure choice over a listing.
pub fn plan_retention(segments: &[StoredSegment], max_bytes: u64) -> Vec<usize> {
    let mut remaining: u64 = segments.iter().map(|s| s.size_bytes).sum();
    if remaining <= max_bytes {
        return Vec::new();
    }
    // Per writer: sealed segments in chain order, minus the newest sealed one.
    let mut per_writer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut writer_bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for (index, stored) in segments.iter().enumerate() {
        if let Ok(segment) = &stored.content {
            let writer = segment.header.writer.as_str();
            *writer_bytes.entry(writer).or_default() += stored.size_bytes;
            if segment.is_sealed() {
                per_writer.entry(writer).or_default().push(index);
            }
        }
    }
    let first_seq = |i: usize| {
        segments[i]
            .content
            .as_ref()
            .map_or(0, |s| s.header.first_seq)
    };
    let mut queues: BTreeMap<&str, std::collections::VecDeque<usize>> = per_writer
        .into_iter()
        .map(|(writer, mut indexes)| {
            indexes.sort_by_key(|&i| (first_seq(i), segments[i].name.clone()));
            indexes.pop();
            (writer, indexes.into())
        })
        .collect();
    let mut removed = Vec::new();
    while remaining > max_bytes {
        // The writer holding the most bytes gives up its oldest segment.
        let Some((&writer, queue)) = queues
            .iter_mut()
            .filter(|(_, queue)| !queue.is_empty())
            .max_by_key(|(writer, _)| (writer_bytes[**writer], std::cmp::Reverse(**writer)))
        else {
            break;
        };
        let index = queue.pop_front().expect("queue is not empty");
        let size = segments[index].size_bytes;
        remaining -= size;
        *writer_bytes.get_mut(writer).expect("counted") -= size;
        removed.push(index);
    }
    removed
}

/// Run one retention pass: quarantine, plan, export to the sink, then delete.
pub async fn enforce_retention(
    store: &dyn SegmentStore,
    sink: &dyn AuditSink,
    policy: &RetentionPolicy,
) -> Result<RetentionReport, Error> {
    let (real, quarantined) = classify(store.list().await?, policy.keyring.as_ref());
    let mut report = RetentionReport {
        quarantined_bytes: quarantined.iter().map(|(_, size)| size).sum(),
        quarantined: quarantined
            .iter()
            .map(|(q, _)| (q.name.clone(), q.reason.clone()))
            .collect(),
        ..RetentionReport::default()
    };
    if !quarantined.is_empty() {
        let documents: Vec<Quarantined> = quarantined.into_iter().map(|(q, _)| q).collect();
        report.quarantine_deleted = sink.quarantine(&documents).await?;
        if report.quarantine_deleted {
            for document in &documents {
                store.delete(&document.name).await?;
            }
        }
        tracing::warn!(
            store = %store.describe(),
            sink = %sink.describe(),
            count = documents.len(),
            bytes = report.quarantined_bytes,
            deleted = report.quarantine_deleted,
            first = %documents[0].name,
            reason = %documents[0].reason,
            "audit retention found documents that are not real segments; quarantined, not counted against the budget"
        );
    }
    report.bytes_before = real.iter().map(|s| s.size_bytes).sum();
    report.bytes_after = report.bytes_before;
    let chosen: Vec<StoredSegment> = plan_retention(&real, policy.max_bytes)
        .into_iter()
        .map(|i| real[i].clone())
        .collect();
    if chosen.is_empty() {
        return Ok(report);
    }
    // Nothing is deleted unless the sink accepted everything.
    sink.export(&chosen).await?;
    for stored in &chosen {
        store.delete(&stored.name).await?;
        report.bytes_after -= stored.size_bytes;
        report.removed.push(stored.name.clone());
    }
    tracing::info!(
        store = %store.describe(),
        sink = %sink.describe(),
        removed = report.removed.len(),
        bytes_after = report.bytes_after,
        "audit retention exported and removed sealed segments"
    );
    Ok(report)
}
