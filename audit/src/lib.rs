//! PolicyBind audit trail, I/O part: the writer every enforcement point uses, the
//! stores segments live in, retention and key loading (DESIGN.md section 6).
//!
//! The pure part (record type, canonical form, hash chain, Merkle trees and
//! proofs, checkpoints, signed segment header, keyring, verifier) is
//! `policybind_engine::audit`. This crate puts it to work:
//!
//! - [`AuditWriter`]: a cheap cloneable handle. [`AuditWriter::append`] hashes the
//!   record into the writer's chain and queues its JSON without awaiting any
//!   I/O, refusing it if its exact size does not fit a segment or the queue's
//!   byte budget is spent; a background task batches records into segments,
//!   signs every write and seals segments (size or age), and writes them to a
//!   [`SegmentStore`] at the store's pace. A restarting writer adopts only what
//!   it can prove it wrote. [`AuditWriter::count_rejection`] turns floods of
//!   unauthenticated rejections into one summary record per interval.
//! - [`SegmentStore`]: [`ConfigMapStore`] (one gzip ConfigMap per segment, label
//!   `policybind.io/audit-segment`) and [`DirectoryStore`] (one JSON file per
//!   segment, standalone mode).
//! - [`retention`]: keeps a namespace's segments within a byte budget, handing the
//!   oldest sealed segments to a durable [`AuditSink`] before deleting them, and
//!   quarantining what is not a real segment.
//! - [`keys`]: the signing key from a file or a Kubernetes Secret, and the
//!   keyring from a file or ConfigMap.
//!
//! `docs/audit.md` specifies formats, guarantees and what a hard kill can lose.
#![forbid(unsafe_code)]

mod batch;
pub mod configmap;
pub mod directory;
pub mod encoding;
pub mod keys;
pub mod naming;
mod open_segment;
mod resume;
pub mod retention;
pub mod sample;
pub mod store;
pub mod writer;

pub use configmap::ConfigMapStore;
pub use directory::DirectoryStore;
pub use encoding::Encoding;
pub use retention::{
    AuditSink, DirectorySink, RetentionPolicy, RetentionReport, StdoutJsonLinesSink,
    enforce_retention,
};
pub use store::{
    RawSegment, SegmentObject, SegmentStore, StoreProfile, StoredSegment, verify_stored,
};
pub use writer::{
    AppendError, AppendReceipt, AuditConfig, AuditWriter, DEFAULT_QUEUE_CAPACITY_BYTES,
    ShutdownReport, WriterStats,
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
    #[error("segment {name} is unreadable: {message}")]
    Format { name: String, message: String },
    /// Key material could not be parsed.
    #[error("signing key from {origin}: {source}")]
    Key {
        origin: String,
        #[source]
        source: policybind_engine::audit::KeyError,
    },
    /// The keyring could not be read or is inconsistent.
    #[error("keyring from {origin}: {source}")]
    Keyring {
        origin: String,
        #[source]
        source: policybind_engine::audit::KeyringError,
    },
    /// A Secret or ConfigMap lacks the expected data key.
    #[error("{kind} {namespace}/{name} has no data key {key:?}")]
    DataKeyMissing {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    /// The configuration cannot work (for example a segment limit above what the
    /// store can hold).
    #[error("invalid audit configuration: {0}")]
    Config(String),
    /// Shutdown ran out of time with records still unwritten.
    #[error("audit shutdown incomplete: {unwritten} record(s) could not be written: {last_error}")]
    ShutdownIncomplete { unwritten: u64, last_error: String },
    /// The writer's background task is gone (panicked or already shut down).
    #[error("audit writer task is not running")]
    TaskGone,
}

/// How a store refused an object for good: writing the same object again
/// would fail again, so the writer splits, renames or quarantines it instead of
/// retrying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The object is too large (HTTP 413, or 422 "Too long").
    TooLarge(String),
    /// The name is taken by an object the writer may not replace (409, or 422
    /// on an immutable object).
    Conflict(String),
    /// Any other validation or admission refusal (400, 422).
    Invalid(String),
}

impl Error {
    /// A short label per variant, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Kube(_) => "kube",
            Error::Format { .. } => "format",
            Error::Key { .. } => "key",
            Error::Keyring { .. } => "keyring",
            Error::DataKeyMissing { .. } => "data_key_missing",
            Error::Config(_) => "config",
            Error::ShutdownIncomplete { .. } => "shutdown_incomplete",
            Error::TaskGone => "task_gone",
        }
    }

    /// Whether (and how) the store refused an object for good. Everything else
    /// (5xx, 429, timeouts, connection errors, 401/403 while RBAC settles) is
    /// transient and retried with backoff.
    pub fn refusal(&self) -> Option<Refusal> {
        let Error::Kube(kube::Error::Api(status)) = self else {
            return None;
        };
        let message = status.message.clone();
        let lower = message.to_ascii_lowercase();
        let too_large = ["too long", "too large", "exceeds", "must have at most"]
            .iter()
            .any(|phrase| lower.contains(phrase));
        match status.code {
            413 => Some(Refusal::TooLarge(message)),
            _ if too_large && matches!(status.code, 400 | 422 | 500) => {
                Some(Refusal::TooLarge(message))
            }
            409 => Some(Refusal::Conflict(message)),
            422 if lower.contains("immutable") => Some(Refusal::Conflict(message)),
            400 | 422 => Some(Refusal::Invalid(message)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..kube::core::Status::default()
        })))
    }

    #[test]
    fn refusals_are_told_apart_from_transient_failures() {
        assert!(matches!(
            api_error(413, "Request entity too large").refusal(),
            Some(Refusal::TooLarge(_))
        ));
        assert!(matches!(
            api_error(
                422,
                "ConfigMap \"x\" is invalid: []: Too long: must have at most 1048576 bytes"
            )
            .refusal(),
            Some(Refusal::TooLarge(_))
        ));
        assert!(matches!(
            api_error(422, "field is immutable when `immutable` is set").refusal(),
            Some(Refusal::Conflict(_))
        ));
        assert!(matches!(
            api_error(422, "denied by policy").refusal(),
            Some(Refusal::Invalid(_))
        ));
        for transient in [500, 503, 429, 403, 401, 404] {
            assert_eq!(api_error(transient, "x").refusal(), None, "{transient}");
        }
        assert_eq!(Error::TaskGone.refusal(), None);
    }
}
