//! Proof documents an auditor can hand on and check offline, with only the
//! keyring:
//!
//! - an **inclusion proof**: one record, the signed header of its sealed
//!   segment and the RFC 6962 audit path from the record to the header's
//!   Merkle root; for a format-2 segment also the segment's signed checkpoint and
//!   the audit path from the record to the writer's tree root at that
//!   checkpoint;
//! - a **consistency proof**: two signed checkpoints of one writer and the RFC
//!   6962 consistency proof that the later log extends the earlier one.
//!
//! Both are JSON with `"format": "policybind-audit-proof/v1"` and a `kind`.
//! `policybind audit prove` writes them and `policybind audit verify --file`
//! checks them; the hashes and proofs follow RFC 9162, so other tools can too.
use serde::{Deserialize, Serialize};

use super::check::signature_problem;
use super::checkpoint::{SignedNote, origin_of};
use super::hash::Hash256;
use super::keyring::Keyring;
use super::merkle::{
    PartialTree, TreeFrontier, consistency_proof, inclusion_proof, leaf_hash, verify_consistency,
    verify_inclusion,
};
use super::record::AuditRecord;
use super::segment::{Segment, SegmentHeader};
use super::verify::{ProblemKind, checkpoint_signature};

/// Value of every proof document's `format`.
pub const PROOF_FORMAT: &str = "policybind-audit-proof/v1";

/// A proof document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ProofDocument {
    /// A record is in a sealed segment (and in its writer's log).
    Inclusion(Box<InclusionProof>),
    /// A later checkpoint of a writer extends an earlier one.
    Consistency(ConsistencyProof),
}

/// See the [module docs](self).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InclusionProof {
    /// Always [`PROOF_FORMAT`].
    pub format: String,
    /// The record.
    pub record: AuditRecord,
    /// Where its segment was found.
    pub segment: String,
    /// The segment's signed header.
    pub header: SegmentHeader,
    /// The header's signature (base64).
    pub signature: String,
    /// Audit path of leaf `seq - first_seq` in the segment's tree of
    /// `record_count` leaves, leaf to root.
    pub segment_path: Vec<Hash256>,
    /// The segment's signed checkpoint (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Audit path of leaf `seq - 1` in the writer's tree of `last_seq` leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_path: Option<Vec<Hash256>>,
}

/// See the [module docs](self).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistencyProof {
    /// Always [`PROOF_FORMAT`].
    pub format: String,
    /// The earlier checkpoint (signed note).
    pub old: String,
    /// The later checkpoint (signed note).
    pub new: String,
    /// RFC 6962 consistency proof from the old tree size to the new one.
    pub proof: Vec<Hash256>,
}

/// What a proof established, or why it fails.
pub type ProofResult = Result<String, (ProblemKind, String)>;

impl InclusionProof {
    /// The proof for record `seq` of a sealed segment. `writer_tree` is the
    /// writer's tree around the segment (for the checkpoint path); without it,
    /// or for a format-1 segment, only the segment path is included.
    pub fn build(
        name: &str,
        segment: &Segment,
        seq: u64,
        writer_tree: Option<&PartialTree<'_>>,
    ) -> Option<Self> {
        let header = &segment.header;
        if !segment.is_sealed() || seq < header.first_seq || seq > header.last_seq {
            return None;
        }
        let leaves: Vec<Hash256> = segment.records.iter().map(|r| leaf_hash(&r.hash)).collect();
        let empty = TreeFrontier::new();
        let own = PartialTree {
            before: &empty,
            leaves: &leaves,
        };
        let segment_path = inclusion_proof(&own, seq - header.first_seq, header.record_count)?;
        let checkpoint_path = match (&segment.checkpoint, writer_tree) {
            (Some(_), Some(tree)) => Some(inclusion_proof(tree, seq - 1, header.last_seq)?),
            _ => None,
        };
        Some(InclusionProof {
            format: PROOF_FORMAT.to_string(),
            record: segment.records[(seq - header.first_seq) as usize].clone(),
            segment: name.to_string(),
            header: header.clone(),
            signature: segment.signature.clone()?,
            segment_path,
            checkpoint: checkpoint_path.as_ref().and(segment.checkpoint.clone()),
            checkpoint_path,
        })
    }

    /// Check the proof against the keyring (`None`: signatures not checked).
    pub fn verify(&self, keyring: Option<&Keyring>) -> ProofResult {
        let (record, header) = (&self.record, &self.header);
        if record.compute_hash(&record.prev_hash) != record.hash {
            return Err((
                ProblemKind::Modified,
                "record content does not match its hash".into(),
            ));
        }
        if record.writer != header.writer
            || !(header.first_seq..=header.last_seq).contains(&record.seq)
        {
            return Err((
                ProblemKind::Modified,
                "record is not one of the segment's".into(),
            ));
        }
        if header.sealed_at.is_none() {
            return Err((ProblemKind::Unsealed, "segment was not sealed".into()));
        }
        if let Some(problem) = signature_problem(header, Some(&self.signature), keyring) {
            return Err(problem);
        }
        let leaf = leaf_hash(&record.hash);
        let index = record.seq - header.first_seq;
        if !verify_inclusion(
            index,
            header.record_count,
            &leaf,
            &self.segment_path,
            &header.merkle_root,
        ) {
            return Err((
                ProblemKind::Modified,
                "audit path does not lead to the segment's signed Merkle root".into(),
            ));
        }
        let mut proven = format!(
            "record {} of {:?} is in sealed segment {} (seq {}..={})",
            record.seq, record.writer, self.segment, header.first_seq, header.last_seq
        );
        if let (Some(note), Some(path)) = (&self.checkpoint, &self.checkpoint_path) {
            self.verify_in_checkpoint(note, path, keyring)?;
            proven.push_str(&format!(
                " and in the writer's log at its signed checkpoint of {} records",
                header.last_seq
            ));
        }
        Ok(proven)
    }

    fn verify_in_checkpoint(
        &self,
        note: &str,
        path: &[Hash256],
        keyring: Option<&Keyring>,
    ) -> Result<(), (ProblemKind, String)> {
        let header = &self.header;
        let note = SignedNote::parse(note).map_err(|e| (ProblemKind::Malformed, e.to_string()))?;
        let checkpoint = note
            .checkpoint()
            .map_err(|e| (ProblemKind::Malformed, e.to_string()))?;
        if Some(&checkpoint) != header.checkpoint().as_ref() {
            return Err((
                ProblemKind::Modified,
                "checkpoint does not match the segment header".into(),
            ));
        }
        if let Some(problem) = checkpoint_signature(&note, &header.writer, keyring) {
            return Err(problem);
        }
        let leaf = leaf_hash(&self.record.hash);
        if !verify_inclusion(
            self.record.seq - 1,
            checkpoint.size,
            &leaf,
            path,
            &checkpoint.root,
        ) {
            return Err((
                ProblemKind::Modified,
                "audit path does not lead to the checkpoint's root".into(),
            ));
        }
        Ok(())
    }
}

impl ConsistencyProof {
    /// The proof that the log at `new` extends the log at `old`, from the
    /// writer's tree; `None` if the tree does not hold what it needs.
    pub fn build(old: &SignedNote, new: &SignedNote, tree: &PartialTree<'_>) -> Option<Self> {
        let (old_checkpoint, new_checkpoint) = (old.checkpoint().ok()?, new.checkpoint().ok()?);
        let proof = consistency_proof(tree, old_checkpoint.size, new_checkpoint.size)?;
        Some(ConsistencyProof {
            format: PROOF_FORMAT.to_string(),
            old: old.encode(),
            new: new.encode(),
            proof,
        })
    }

    /// Check both signatures and the proof.
    pub fn verify(&self, keyring: Option<&Keyring>) -> ProofResult {
        let parse = |text: &str| {
            let note =
                SignedNote::parse(text).map_err(|e| (ProblemKind::Malformed, e.to_string()))?;
            let checkpoint = note
                .checkpoint()
                .map_err(|e| (ProblemKind::Malformed, e.to_string()))?;
            Ok::<_, (ProblemKind, String)>((note, checkpoint))
        };
        let (old_note, old) = parse(&self.old)?;
        let (new_note, new) = parse(&self.new)?;
        let Some(writer) = old.writer().filter(|_| old.origin == new.origin) else {
            return Err((
                ProblemKind::Malformed,
                "the checkpoints are not of one PolicyBind writer".into(),
            ));
        };
        for note in [&old_note, &new_note] {
            if let Some(problem) = checkpoint_signature(note, writer, keyring) {
                return Err(problem);
            }
        }
        if !verify_consistency(old.size, new.size, &old.root, &new.root, &self.proof) {
            return Err((
                ProblemKind::Modified,
                format!(
                    "the log at {} records does not extend the log at {} records",
                    new.size, old.size
                ),
            ));
        }
        Ok(format!(
            "the log of {writer:?} at {} records extends its log at {} records ({})",
            new.size,
            old.size,
            origin_of(writer)
        ))
    }
}

impl ProofDocument {
    /// Check whichever proof this is.
    pub fn verify(&self, keyring: Option<&Keyring>) -> ProofResult {
        let format = match self {
            ProofDocument::Inclusion(proof) => &proof.format,
            ProofDocument::Consistency(proof) => &proof.format,
        };
        if format != PROOF_FORMAT {
            return Err((
                ProblemKind::Malformed,
                format!("unknown proof format {format:?}"),
            ));
        }
        match self {
            ProofDocument::Inclusion(proof) => proof.as_ref().verify(keyring),
            ProofDocument::Consistency(proof) => proof.verify(keyring),
        }
    }
}
