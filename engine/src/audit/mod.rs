//! The tamper-evident audit trail, pure part (DESIGN.md section 6).
//!
//! Every writer (sidecar, webhook, operator) turns what it decided into an
//! [`AuditRecord`] through its own [`Chain`]: records carry consecutive sequence
//! numbers and `hash = SHA-256(prev_hash || canonical record)`. Records are batched
//! into [`Segment`]s whose sealed header carries the predecessor's chain head, the
//! last hash, a Merkle root and an Ed25519 signature. [`verify_segments`] proves a
//! set of segments complete and unmodified, or names the first broken record or
//! segment with a [`ProblemKind`].
//!
//! Nothing here does I/O or reads the clock: times are inputs. Queues, stores
//! (ConfigMaps, directories), retention and key loading live in the
//! `policybind-audit` crate; the `policybind audit` tools sit on both.
//! The byte layouts are specified in `docs/audit.md`.
mod chain;
mod export;
mod hash;
mod keys;
mod merkle;
mod record;
mod segment;
mod verify;

pub use chain::Chain;
pub use export::{EXPORT_FORMAT, ExportBundle, SegmentEvidence, verify_export};
pub use hash::{Hash256, InvalidHash};
pub use keys::{AuditSigningKey, AuditVerifyingKey, KeyError};
pub use merkle::{leaf_hash, merkle_root, node_hash};
pub use record::{
    AuditEvent, AuditRecord, CostUsd, InvalidCost, RECORD_MAGIC, RecordKind, RecordTime, Usage,
};
pub use segment::{SEGMENT_FORMAT, SEGMENT_MAGIC, Segment, SegmentHeader};
pub use verify::{
    Anchor, NamedSegment, Problem, ProblemKind, VerifyOptions, VerifyReport, WriterSummary,
    verify_segments,
};

#[cfg(test)]
mod tests;
