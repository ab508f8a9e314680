//! The tamper-evident audit trail, pure part (DESIGN.md section 6).
//!
//! Every writer (sidecar, webhook, operator) turns what it decided into an
//! [`AuditRecord`] through its own [`Chain`]: records carry consecutive sequence
//! numbers and `hash = SHA-256(prev_hash || canonical record)`. Records are batched
//! into [`Segment`]s whose sealed header carries the predecessor's chain head, the
//! last hash, a Merkle root and an Ed25519 signature. [`verify_segments`] proves a
//! set of segments complete and unmodified, or names the first broken record or
//! segment with a [`ProblemKind`]. A [`Keyring`] says which writers each key may
//! sign for; [`checkpoint`]s (C2SP signed notes) and [`proof`]s (RFC 6962
//! inclusion and consistency) let auditors check the trail with tools they
//! already have.
//!
//! Nothing here does I/O or reads the clock: times are inputs. Queues, stores
//! (ConfigMaps, directories), retention and key loading live in the
//! `policybind-audit` crate; the `policybind audit` tools sit on both.
//! The byte layouts are specified in `docs/audit.md`.
mod chain;
mod check;
pub mod checkpoint;
mod export;
mod hash;
mod keyring;
mod keys;
pub mod merkle;
pub mod proof;
mod record;
mod segment;
mod verify;

pub use chain::Chain;
pub use checkpoint::{CHECKPOINT_ORIGIN_PREFIX, Checkpoint, NoteError, SignedNote};
pub use export::{EXPORT_FORMAT, ExportBundle, SegmentEvidence, verify_export};
pub use hash::{Hash256, InvalidHash};
pub use keyring::{
    KEYRING_FORMAT, KeyRefusal, Keyring, KeyringDocument, KeyringEntry, KeyringError, TrustedKey,
};
pub use keys::{AuditSigningKey, AuditVerifyingKey, KeyError};
pub use merkle::{TreeFrontier, leaf_hash, merkle_root, node_hash};
pub use record::{
    AuditEvent, AuditRecord, CostUsd, INVALID_FIELDS_DETAIL, InvalidCost, MAX_DETAIL_VALUE_BYTES,
    RECORD_MAGIC, RecordKind, RecordTime, Usage,
};
pub use segment::{
    LEGACY_SEGMENT_FORMAT, SEGMENT_DOCUMENT_END, SEGMENT_FORMAT, SEGMENT_MAGIC, SEGMENT_MAGIC_V2,
    Segment, SegmentHeader, segment_document_start,
};
pub use verify::{
    Anchor, NamedSegment, Problem, ProblemKind, UnprovenTail, VerifyOptions, VerifyReport,
    WriterSummary, verify_documents, verify_segments,
};

#[cfg(test)]
mod tests;
