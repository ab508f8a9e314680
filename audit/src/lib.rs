//! PolicyBind audit trail, I/O part: the writer every enforcement point uses, the
//! stores segments live in, retention and key loading (DESIGN.md section 6).
//!
//! The pure part (record type, canonical form, hash chain, Merkle root, signed
//! segment header, verifier) is `policybind_engine::audit`. This crate puts it to
//! work:
//!
//! - [`AuditWriter`]: a cheap cloneable handle. [`AuditWriter::append`] hashes the
//!   record into the writer's chain and queues it without awaiting any I/O; a
//!   background task batches records into segments, seals them (size or age) and
//!   writes them to a [`SegmentStore`] at most once per flush interval.
//! - [`SegmentStore`]: [`ConfigMapStore`] (one ConfigMap per segment, label
//!   `policybind.io/audit-segment`) and [`DirectoryStore`] (one file per segment,
//!   standalone mode). Both hold the same JSON document per segment.
//! - [`retention`]: keeps a namespace's segments within a byte budget, handing the
//!   oldest sealed segments to an [`AuditSink`] before deleting them.
//! - [`keys`]: the signing key from a file or a Kubernetes Secret.
//!
//! `docs/audit.md` specifies formats, guarantees and what a hard kill can lose.
#![forbid(unsafe_code)]

pub mod configmap;
pub mod directory;
pub mod keys;
pub mod naming;
pub mod retention;
pub mod store;
pub mod writer;

pub use configmap::ConfigMapStore;
pub use directory::DirectoryStore;
pub use retention::{
    AuditSink, DirectorySink, RetentionPolicy, RetentionReport, StdoutJsonLinesSink,
    enforce_retention,
};
pub use store::{SegmentStore, StoredSegment, verify_stored};
pub use writer::{
    AppendError, AppendReceipt, AuditConfig, AuditWriter, ShutdownReport, WriterStats,
};

/// Rationale code an enforcement point uses when it refuses a request because the
/// audit trail cannot take the record (see [`AppendError`]).
pub const AUDIT_UNAVAILABLE: &str = "AUDIT_UNAVAILABLE";

/// Errors of stores, sinks, key loading and writer lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes API refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A stored segment is not valid segment JSON.
    #[error("segment {name} is unreadable: {source}")]
    Format {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    /// Key material could not be parsed.
    #[error("signing key from {origin}: {source}")]
    Key {
        origin: String,
        #[source]
        source: policybind_engine::audit::KeyError,
    },
    /// A Secret lacks the expected data key.
    #[error("Secret {namespace}/{name} has no data key {key:?}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    /// The configuration cannot work (for example a segment limit above what a
    /// ConfigMap can hold).
    #[error("invalid audit configuration: {0}")]
    Config(String),
    /// Shutdown ran out of time with records still unwritten.
    #[error("audit shutdown incomplete: {unwritten} record(s) could not be written: {last_error}")]
    ShutdownIncomplete { unwritten: u64, last_error: String },
    /// The writer's background task is gone (panicked or already shut down).
    #[error("audit writer task is not running")]
    TaskGone,
}

impl Error {
    /// A short label per variant, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Kube(_) => "kube",
            Error::Format { .. } => "format",
            Error::Key { .. } => "key",
            Error::SecretKeyMissing { .. } => "secret_key_missing",
            Error::Config(_) => "config",
            Error::ShutdownIncomplete { .. } => "shutdown_incomplete",
            Error::TaskGone => "task_gone",
        }
    }
}
