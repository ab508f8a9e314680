//! Every admission decision becomes an audit record (DESIGN.md section 6).
//!
//! Handlers build an [`AuditEvent`] and hand it to an [`AuditSink`], which must
//! not block: a review is answered in well under a millisecond and the record is
//! chained, batched and stored behind it. In a cluster the sink is the
//! `policybind-audit` writer (records chained under the webhook's writer id and
//! batched into ConfigMap segments); [`LogSink`] writes JSON lines for a log
//! pipeline when no store is configured; [`MemorySink`] keeps records for tests.
//!
//! A sink says when it could not take a record. The caller decides what that
//! means: in enforced namespaces the admission is denied (`AUDIT_UNAVAILABLE`),
//! elsewhere it proceeds; either way the failure is counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use policybind_engine::audit::AuditEvent;

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuditFailure {
    /// Short metric label: `queue_full`, `closed`, `too_large`.
    pub reason: &'static str,
    pub message: String,
}

/// Where admission records go. `record` is called on the request path: it must
/// only enqueue, and say when it could not.
pub trait AuditSink: Send + Sync {
    fn record(&self, event: AuditEvent) -> Result<(), AuditFailure>;
}

/// Writes each record as one structured log line (target `policybind::audit`).
#[derive(Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn record(&self, event: AuditEvent) -> Result<(), AuditFailure> {
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
        Ok(())
    }
}

/// Keeps records in memory (tests, benchmarks); can be told to refuse, as a full
/// writer queue would.
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<AuditEvent>>,
    refusing: AtomicBool,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, refuse every record (`true`) or take them again (`false`).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<AuditEvent> {
        self.records.lock().expect("audit lock").clone()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: AuditEvent) -> Result<(), AuditFailure> {
        if self.refusing.load(Ordering::Relaxed) {
            return Err(AuditFailure {
                reason: "queue_full",
                message: "audit queue is full (test)".into(),
            });
        }
        self.records.lock().expect("audit lock").push(event);
        Ok(())
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
    fn record(&self, event: AuditEvent) -> Result<(), AuditFailure> {
        // The chain has no hole when this fails: the record was never appended.
        // Whether the admission proceeds is the caller's decision.
        self.writer.append(event).map(|_| ()).map_err(|error| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let reason = match error {
                policybind_audit::AppendError::QueueFull { .. } => "queue_full",
                policybind_audit::AppendError::Closed => "closed",
                policybind_audit::AppendError::RecordTooLarge { .. } => "too_large",
            };
            AuditFailure {
                reason,
                message: error.to_string(),
            }
        })
    }
}
