//! The audit trail as the request path sees it: append one event per decision,
//! synchronously, or learn that it cannot be recorded.
//!
//! A request whose decision cannot be recorded is denied with
//! `AUDIT_UNAVAILABLE`: an unrecorded decision is worse than a refused request.
//! The trait keeps the request path independent of the store; the
//! `policybind-audit` crate's [`AuditWriter`] (directory store in standalone
//! mode, ConfigMaps in a cluster) is the implementation in production, and
//! [`MemoryAudit`] serves tests.

use std::sync::Mutex;

use policybind_audit::AuditWriter;
use policybind_engine::audit::AuditEvent;

/// The audit trail cannot take a record now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit trail unavailable: {0}")]
pub struct AuditUnavailable(pub String);

/// Where decisions are recorded.
pub trait AuditSink: Send + Sync + 'static {
    /// Appends one event without waiting for I/O, or refuses it.
    fn append(&self, event: AuditEvent) -> Result<(), AuditUnavailable>;
}

impl AuditSink for AuditWriter {
    fn append(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        AuditWriter::append(self, event)
            .map(|_| ())
            .map_err(|e| AuditUnavailable(e.to_string()))
    }
}

/// Keeps events in memory; can be told to refuse (a full queue), for tests.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<AuditEvent>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl MemoryAudit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later append fail (or succeed again).
    pub fn set_refusing(&self, refuse: bool) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// A copy of every event appended so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn append(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditUnavailable("queue full (test)".into()));
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(())
    }
}
