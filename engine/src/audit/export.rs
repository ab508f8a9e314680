//! Exported slices of the trail, with the evidence an auditor needs to check them
//! without the rest of the trail.
//!
//! An export holds the selected records and, for every segment that contributed
//! one, that segment's signed header and the list of all its record hashes (not
//! the records). [`verify_export`] then proves each exported record is exactly as
//! its writer chained and signed it: the record's own hash recomputes, it sits at
//! its position in the hash list, its `prev_hash` is the preceding entry (or the
//! segment's predecessor head), the list's Merkle root and last hash are the ones
//! in the header, and the header's signature verifies with a trusted key.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::check::signature_problem;
use super::hash::Hash256;
use super::merkle::merkle_root;
use super::record::AuditRecord;
use super::segment::SegmentHeader;
use super::verify::{NamedSegment, Problem, ProblemKind, VerifyOptions, VerifyReport};

/// Value of [`ExportBundle::format`].
pub const EXPORT_FORMAT: &str = "policybind-audit-export/v1";

/// Proof material for one segment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SegmentEvidence {
    /// Where the segment was found.
    pub segment: String,
    /// Its header, as signed.
    pub header: SegmentHeader,
    /// Its signature (base64), absent for an open segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Hash of every record in the segment, in order.
    pub record_hashes: Vec<Hash256>,
}

/// An exported slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportBundle {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// When the export was made (informational, not covered by any signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
    /// The selection that produced it (informational).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// The selected records, ordered by writer then sequence.
    pub records: Vec<AuditRecord>,
    /// Evidence for every segment a record came from.
    pub evidence: Vec<SegmentEvidence>,
}

impl ExportBundle {
    /// Select records from verified segments with `keep`, gathering the evidence.
    pub fn build(
        segments: &[NamedSegment],
        mut keep: impl FnMut(&AuditRecord) -> bool,
        generated_at: Option<String>,
        filter: BTreeMap<String, String>,
    ) -> Self {
        let mut ordered: Vec<&NamedSegment> = segments.iter().collect();
        ordered.sort_by(|a, b| {
            (&a.segment.header.writer, a.segment.header.first_seq)
                .cmp(&(&b.segment.header.writer, b.segment.header.first_seq))
        });
        let mut records = Vec::new();
        let mut evidence = Vec::new();
        for named in ordered {
            let before = records.len();
            records.extend(named.segment.records.iter().filter(|r| keep(r)).cloned());
            if records.len() > before {
                evidence.push(evidence_for(named));
            }
        }
        ExportBundle {
            format: EXPORT_FORMAT.to_string(),
            generated_at,
            filter,
            records,
            evidence,
        }
    }
}

fn evidence_for(named: &NamedSegment) -> SegmentEvidence {
    SegmentEvidence {
        segment: named.name.clone(),
        header: named.segment.header.clone(),
        signature: named.segment.signature.clone(),
        record_hashes: named.segment.records.iter().map(|r| r.hash).collect(),
    }
}

/// Check an export: every record proven against its segment's signed evidence.
/// The report counts exported records per writer; `problems` holds the first
/// failure per writer.
pub fn verify_export(bundle: &ExportBundle, options: &VerifyOptions) -> VerifyReport {
    let mut report = VerifyReport {
        signatures_checked: options.keyring.is_some(),
        ..VerifyReport::default()
    };
    let problem =
        |kind, evidence: Option<&SegmentEvidence>, writer: &str, seq, message: String| Problem {
            kind,
            writer: writer.to_string(),
            segment: evidence.map(|e| e.segment.clone()),
            seq,
            message,
        };
    if bundle.format != EXPORT_FORMAT {
        report.problems.push(problem(
            ProblemKind::Malformed,
            None,
            "",
            None,
            format!("unknown export format {:?}", bundle.format),
        ));
        return report;
    }
    // Check each segment's evidence once: signature, Merkle root, last hash, count.
    let mut broken_writers: BTreeMap<String, ()> = BTreeMap::new();
    for evidence in &bundle.evidence {
        let header = &evidence.header;
        let sealed = header.sealed_at.is_some() && evidence.signature.is_some();
        let failure = if sealed {
            signature_problem(
                header,
                evidence.signature.as_deref(),
                options.keyring.as_ref(),
            )
        } else {
            Some((
                ProblemKind::Unsealed,
                "segment was not sealed when exported".to_string(),
            ))
        }
        .or_else(|| {
            let count_ok = evidence.record_hashes.len() as u64 == header.record_count
                && header.last_seq + 1 == header.first_seq + header.record_count;
            if !count_ok {
                Some((
                    ProblemKind::Truncated,
                    "hash list does not cover the header's records".into(),
                ))
            } else if evidence.record_hashes.last() != Some(&header.last_hash)
                || merkle_root(&evidence.record_hashes) != header.merkle_root
            {
                Some((
                    ProblemKind::Modified,
                    "hash list does not match the signed Merkle root".into(),
                ))
            } else {
                None
            }
        });
        if let Some((kind, message)) = failure
            && broken_writers.insert(header.writer.clone(), ()).is_none()
        {
            report
                .problems
                .push(problem(kind, Some(evidence), &header.writer, None, message));
        }
    }
    // Then every record against the evidence of its segment.
    let mut summaries: BTreeMap<&str, (u64, u64, u64, Hash256)> = BTreeMap::new();
    for record in &bundle.records {
        if broken_writers.contains_key(&record.writer) {
            continue;
        }
        let evidence = bundle.evidence.iter().find(|e| {
            e.header.writer == record.writer
                && (e.header.first_seq..=e.header.last_seq).contains(&record.seq)
        });
        let failure = match evidence {
            None => Some((
                ProblemKind::Missing,
                "no segment evidence covers this record".to_string(),
            )),
            Some(evidence) => {
                let position = (record.seq - evidence.header.first_seq) as usize;
                let expected_prev = if position == 0 {
                    evidence.header.prev_segment_hash
                } else {
                    evidence.record_hashes[position - 1]
                };
                if record.compute_hash(&record.prev_hash) != record.hash {
                    Some((
                        ProblemKind::Modified,
                        "record content does not match its hash".to_string(),
                    ))
                } else if evidence.record_hashes[position] != record.hash
                    || record.prev_hash != expected_prev
                {
                    Some((
                        ProblemKind::Modified,
                        "record is not the one the signed segment holds at this sequence"
                            .to_string(),
                    ))
                } else {
                    None
                }
            }
        };
        if let Some((kind, message)) = failure {
            broken_writers.insert(record.writer.clone(), ());
            report.problems.push(problem(
                kind,
                evidence,
                &record.writer,
                Some(record.seq),
                message,
            ));
            continue;
        }
        let entry = summaries.entry(record.writer.as_str()).or_insert((
            0,
            record.seq,
            record.seq,
            record.hash,
        ));
        entry.0 += 1;
        entry.1 = entry.1.min(record.seq);
        if record.seq >= entry.2 {
            entry.2 = record.seq;
            entry.3 = record.hash;
        }
    }
    for (writer, (records, first_seq, last_seq, head)) in summaries {
        let segments = bundle
            .evidence
            .iter()
            .filter(|e| e.header.writer == writer)
            .count();
        report.writers.push(super::verify::WriterSummary {
            writer: writer.to_string(),
            segments,
            sealed_segments: segments,
            records,
            first_seq,
            last_seq,
            head,
            anchored_at: None,
            unproven: None,
            checkpoint: None,
            chain: Vec::new(),
        });
    }
    report
}
