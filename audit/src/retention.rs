//! Retention: keep a store within a byte budget without breaking verifiability.
//!
//! When the stored segments of a namespace (or directory) exceed
//! [`RetentionPolicy::max_bytes`], the oldest sealed segments are handed to an
//! [`AuditSink`] and only once the sink has accepted them are they deleted. Per
//! writer, segments go strictly oldest first, and each writer's newest sealed
//! segment always stays (a restarting writer resumes its chain from it), as do open
//! segments. The first kept segment of a writer carries its predecessor's head
//! (`prev_segment_hash`), so `policybind audit verify` over the store alone verifies
//! from that anchor on, and over sink plus store verifies the whole chain.
//!
//! The operator runs this periodically per namespace; standalone mode runs it over
//! its directory store.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::Error;
use crate::directory::write_atomically;
use crate::naming::segment_name;
use crate::store::{SegmentStore, StoredSegment, encode_segment};

/// The budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Bytes of segment JSON the store may hold.
    pub max_bytes: u64,
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Bytes held before the pass.
    pub bytes_before: u64,
    /// Bytes held after it.
    pub bytes_after: u64,
    /// Names of the segments exported and deleted, in order.
    pub removed: Vec<String>,
}

/// Where retention sends segments before deleting them. The sink must have made
/// them durable when `export` returns.
pub trait AuditSink: Send + Sync {
    /// Take these sealed segments (stored JSON as read from the store).
    fn export<'a>(&'a self, segments: &'a [StoredSegment]) -> BoxFuture<'a, Result<(), Error>>;
    /// For logs.
    fn describe(&self) -> String;
}

/// A directory of segment files in the directory store's format, so
/// `policybind audit verify --dir <sink> --dir <store>` verifies across the cut.
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

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// One JSON line per segment on stdout (the segment document, compact), for a log
/// pipeline. `policybind audit verify --file <lines.jsonl>` reads such lines back.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutJsonLinesSink;

impl AuditSink for StdoutJsonLinesSink {
    fn export<'a>(&'a self, segments: &'a [StoredSegment]) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let mut out = std::io::stdout().lock();
            let io_error = |source| Error::Io {
                action: "write",
                path: PathBuf::from("<stdout>"),
                source,
            };
            for segment in segments {
                if let Ok(segment) = &segment.content {
                    out.write_all(&encode_segment(segment)).map_err(io_error)?;
                    out.write_all(b"\n").map_err(io_error)?;
                }
            }
            out.flush().map_err(io_error)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "stdout (JSON lines)".to_string()
    }
}

/// Which segments a pass removes, oldest first: a pure choice over a listing.
pub fn plan_retention(segments: &[StoredSegment], policy: &RetentionPolicy) -> Vec<usize> {
    let total: u64 = segments.iter().map(|s| s.size_bytes).sum();
    if total <= policy.max_bytes {
        return Vec::new();
    }
    // Per writer: sealed segments in sequence order, minus the newest sealed one.
    let mut per_writer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, stored) in segments.iter().enumerate() {
        if let Ok(segment) = &stored.content
            && segment.is_sealed()
        {
            per_writer
                .entry(segment.header.writer.as_str())
                .or_default()
                .push(index);
        }
    }
    let first_seq = |i: usize| {
        segments[i]
            .content
            .as_ref()
            .map(|s| s.header.first_seq)
            .unwrap_or(0)
    };
    let sealed_at = |i: usize| {
        segments[i]
            .content
            .as_ref()
            .ok()
            .and_then(|s| s.header.sealed_at)
    };
    let mut queues: Vec<std::collections::VecDeque<usize>> = per_writer
        .into_values()
        .map(|mut indexes| {
            indexes.sort_by_key(|&i| first_seq(i));
            indexes.pop();
            indexes.into()
        })
        .collect();
    let mut removed = Vec::new();
    let mut remaining = total;
    while remaining > policy.max_bytes {
        // The globally oldest head among the writers' queues goes next.
        let Some(queue) = queues
            .iter_mut()
            .filter(|q| !q.is_empty())
            .min_by_key(|q| (sealed_at(q[0]), segments[q[0]].name.clone()))
        else {
            break;
        };
        let index = queue.pop_front().expect("queue is not empty");
        remaining -= segments[index].size_bytes;
        removed.push(index);
    }
    removed
}

/// Run one retention pass: plan, export to the sink, then delete.
pub async fn enforce_retention(
    store: &dyn SegmentStore,
    sink: &dyn AuditSink,
    policy: &RetentionPolicy,
) -> Result<RetentionReport, Error> {
    let segments = store.list().await?;
    let bytes_before: u64 = segments.iter().map(|s| s.size_bytes).sum();
    let plan = plan_retention(&segments, policy);
    let chosen: Vec<StoredSegment> = plan.iter().map(|&i| segments[i].clone()).collect();
    if chosen.is_empty() {
        return Ok(RetentionReport {
            bytes_before,
            bytes_after: bytes_before,
            removed: Vec::new(),
        });
    }
    // Nothing is deleted unless the sink accepted everything.
    sink.export(&chosen).await?;
    let mut report = RetentionReport {
        bytes_before,
        bytes_after: bytes_before,
        removed: Vec::new(),
    };
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
