//! A writer's hash chain: turns events into records with consecutive sequence
//! numbers, each hash covering its predecessor.
//!
//! The chain is pure state; the `policybind-audit` crate's writer holds one behind a
//! lock and stamps times from the clock. A restarted writer resumes with
//! [`Chain::resume`] from the last record it finds in its store.
use super::hash::Hash256;
use super::record::{AuditEvent, AuditRecord, RecordTime};

/// The head of one writer's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    writer: String,
    next_seq: u64,
    head: Hash256,
}

impl Chain {
    /// A new chain whose first record will have `seq` 1 and a zero `prev_hash`.
    pub fn new(writer: impl Into<String>) -> Self {
        Chain::resume(writer, 0, Hash256::ZERO)
    }

    /// Continue after the record `last_seq` whose hash is `head`.
    pub fn resume(writer: impl Into<String>, last_seq: u64, head: Hash256) -> Self {
        Chain {
            writer: writer.into(),
            next_seq: last_seq + 1,
            head,
        }
    }

    /// The writer identity.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Sequence number of the last appended record (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Hash of the last appended record (zeros before the first).
    pub fn head(&self) -> Hash256 {
        self.head
    }

    /// The record `event` would become if appended now, without appending it: a
    /// writer checks it (its exact stored size) before committing it with
    /// [`Chain::advance`]. Identifiers are [sanitized](AuditEvent::sanitize) here,
    /// the last line of defence against hostile input.
    pub fn next_record(&self, mut event: AuditEvent, now: RecordTime) -> AuditRecord {
        event.sanitize();
        let mut record = AuditRecord {
            seq: self.next_seq,
            time: event.time.unwrap_or(now),
            writer: self.writer.clone(),
            kind: event.kind,
            request_id: event.request_id,
            subject: event.subject,
            token_id: event.token_id,
            model: event.model,
            namespace: event.namespace,
            effect: event.effect,
            policy: event.policy,
            rule: event.rule,
            codes: event.codes,
            fingerprint: event.fingerprint,
            prompt_hash: event.prompt_hash,
            redacted_prompt: event.redacted_prompt,
            usage: event.usage,
            detail: event.detail,
            prev_hash: self.head,
            hash: Hash256::ZERO,
        };
        record.hash = record.compute_hash(&self.head);
        record
    }

    /// Commit a record made by [`Chain::next_record`] on this chain's current head.
    ///
    /// # Panics
    /// If the record is not the next one of this chain.
    pub fn advance(&mut self, record: &AuditRecord) {
        assert!(
            record.seq == self.next_seq && record.prev_hash == self.head,
            "record {} is not the next record of the chain",
            record.seq
        );
        self.head = record.hash;
        self.next_seq += 1;
    }

    /// Append an event. `now` is used when the event carries no time of its own.
    pub fn append(&mut self, event: AuditEvent, now: RecordTime) -> AuditRecord {
        let record = self.next_record(event, now);
        self.advance(&record);
        record
    }
}
