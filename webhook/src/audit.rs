//! Every admission decision becomes an audit record (DESIGN.md section 6).
//!
//! Handlers build an [`AuditEvent`] and hand it to an [`AuditSink`], which must
//! not block: a review is answered in well under a millisecond and the record is
//! chained, batched and stored behind it. In a cluster the sink is the
//! `policybind-audit` writer (records chained under the webhook's writer id and
//! batched into ConfigMap segments); [`LogSink`] writes JSON lines for a log
//! pipeline when no store is configured; [`MemorySink`] keeps records for tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use policybind_engine::audit::AuditEvent;

/// Where admission records go. `record` is called on the request path: it must
/// only enqueue.
pub trait AuditSink: Send + Sync {
    fn record(&self, event: AuditEvent);
}

/// Writes each record as one structured log line (target `policybind::audit`).
#[derive(Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn record(&self, event: AuditEvent) {
        tracing::info!(
            target: "policybind::audit",
            kind = event.kind.as_str(),
            request_id = event.request_id.as_deref().unwrap_or(""),
            subject = event.subject.as_deref().unwrap_or(""),
            namespace = event.namespace.as_deref().unwrap_or(""),
            model = event.model.as_deref().unwrap_or(""),
            effect = event.effect.map(|e| e.as_str()).unwrap_or(""),
            codes = %event.codes.join(","),
            detail = ?event.detail,
            "admission"
        );
    }
}

/// Keeps records in memory (tests, benchmarks).
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<AuditEvent>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<AuditEvent> {
        self.records.lock().expect("audit lock").clone()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: AuditEvent) {
        self.records.lock().expect("audit lock").push(event);
    }
}

/// The audit trail proper: records chained under the webhook's writer identity
/// (`webhook/<pod>`) and batched into signed segments by `policybind-audit`.
pub struct WriterSink {
    writer: policybind_audit::AuditWriter,
    failures: AtomicU64,
}

impl WriterSink {
    pub fn new(writer: policybind_audit::AuditWriter) -> Self {
        WriterSink {
            writer,
            failures: AtomicU64::new(0),
        }
    }

    /// The writer, for flushing on shutdown.
    pub fn writer(&self) -> &policybind_audit::AuditWriter {
        &self.writer
    }

    /// Records the writer refused (queue full, closed).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl AuditSink for WriterSink {
    fn record(&self, event: AuditEvent) {
        // Admission keeps answering when the trail is congested: blocking every pod
        // creation on a slow store would hurt more than a missing admission record.
        // The refusal is logged and counted; the chain has no hole, the record was
        // simply never appended.
        if let Err(error) = self.writer.append(event) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, code = error.denial_code(), "admission record not written");
        }
    }
}
