//! The compliance report: per-control status with the evidence behind it, the
//! trail's verification result for the period, and model cards.
//!
//! [`build`] is a pure function of a catalog and a [`Snapshot`]; the same inputs give
//! byte-identical JSON, HTML and OSCAL, which is what lets `report verify` re-render
//! the HTML and OSCAL files from the signed JSON and compare them.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Coverage};
use crate::evidence::{self, EvidenceKind, Finding, FindingStatus, Scope, Snapshot};
use crate::model_card::{self, ModelCard};

/// Value of [`Report::format`].
pub const REPORT_FORMAT: &str = "policybind-compliance-report/v1";
/// Version of the HTML and OSCAL renderers. `report verify` re-renders and compares
/// only when a report was written by the same renderer version.
pub const RENDERER_VERSION: u32 = 1;

/// A control's status in a report.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlStatus {
    /// Fully covered by PolicyBind evidence, and every finding holds.
    Satisfied,
    /// PolicyBind's part holds; the rest (`outsidePolicyBind`) must be shown elsewhere.
    PartiallyEvidenced,
    /// A finding behind the control shows a gap or a failure.
    NotSatisfied,
    /// PolicyBind cannot evidence this control.
    NotEvidenced,
    /// Nothing in scope that the control's evidence concerns.
    NotApplicable,
}

impl ControlStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlStatus::Satisfied => "Satisfied",
            ControlStatus::PartiallyEvidenced => "PartiallyEvidenced",
            ControlStatus::NotSatisfied => "NotSatisfied",
            ControlStatus::NotEvidenced => "NotEvidenced",
            ControlStatus::NotApplicable => "NotApplicable",
        }
    }

    /// Words for people.
    pub fn label(self) -> &'static str {
        match self {
            ControlStatus::Satisfied => "satisfied",
            ControlStatus::PartiallyEvidenced => "partially evidenced",
            ControlStatus::NotSatisfied => "not satisfied",
            ControlStatus::NotEvidenced => "not evidenced by PolicyBind",
            ControlStatus::NotApplicable => "not applicable",
        }
    }
}

/// One control's result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlResult {
    pub id: String,
    pub title: String,
    pub references: Vec<String>,
    pub description: String,
    pub coverage: Coverage,
    pub status: ControlStatus,
    /// The evidence kinds behind it; their findings are in [`Report::evidence`].
    pub evidence: Vec<EvidenceKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_policy_bind: Option<String>,
    /// Why it is not satisfied: the issues of the findings that fail, prefixed by
    /// the evidence kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// Counts of control statuses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub controls: usize,
    pub satisfied: usize,
    pub partially_evidenced: usize,
    pub not_satisfied: usize,
    pub not_evidenced: usize,
    pub not_applicable: usize,
}

/// One writer of the trail, as verified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrailWriter {
    pub writer: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub segments: usize,
    pub head: String,
    pub unsealed_records: u64,
    /// Records of this writer in the report's period and namespace.
    pub records_in_scope: u64,
}

/// The trail verification result for the period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrailSummary {
    /// Whether a trail was given at all.
    pub examined: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Complete and unmodified, with signatures checked against trusted keys.
    pub verified: bool,
    pub signatures_checked: bool,
    pub records_verified: u64,
    pub records_in_scope: u64,
    #[serde(default)]
    pub writers: Vec<TrailWriter>,
    /// The first problem per broken writer.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Catalog identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CatalogInfo {
    pub framework: String,
    pub title: String,
    pub version: String,
}

/// A compliance report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// [`RENDERER_VERSION`] of the code that wrote it.
    pub renderer: u32,
    /// `policybind <version>`.
    pub generator: String,
    pub catalog: CatalogInfo,
    pub generated_at: DateTime<Utc>,
    pub scope: Scope,
    /// Where the objects and the trail were read from.
    pub sources: Vec<String>,
    pub summary: Summary,
    pub trail: TrailSummary,
    pub controls: Vec<ControlResult>,
    /// Findings of every evidence kind a control refers to, in evidence order.
    pub evidence: Vec<Finding>,
    pub model_cards: Vec<ModelCard>,
}

impl Report {
    /// The finding of an evidence kind.
    pub fn finding(&self, kind: EvidenceKind) -> Option<&Finding> {
        self.evidence.iter().find(|f| f.kind == kind)
    }

    /// Controls PolicyBind cannot evidence.
    pub fn not_evidenced(&self) -> impl Iterator<Item = &ControlResult> {
        self.controls
            .iter()
            .filter(|c| c.status == ControlStatus::NotEvidenced)
    }
}

fn status_of(coverage: Coverage, findings: &[&Finding]) -> ControlStatus {
    if coverage == Coverage::None {
        return ControlStatus::NotEvidenced;
    }
    let failing = findings
        .iter()
        .any(|f| matches!(f.status, FindingStatus::Gap | FindingStatus::Failed));
    if failing {
        return ControlStatus::NotSatisfied;
    }
    if findings
        .iter()
        .all(|f| f.status == FindingStatus::NotApplicable)
    {
        return ControlStatus::NotApplicable;
    }
    match coverage {
        Coverage::Full => ControlStatus::Satisfied,
        _ => ControlStatus::PartiallyEvidenced,
    }
}

/// The trail verification result for the snapshot's period and namespace.
pub fn trail_summary_of(snapshot: &Snapshot) -> TrailSummary {
    let Some(trail) = &snapshot.trail else {
        return TrailSummary {
            examined: false,
            source: None,
            verified: false,
            signatures_checked: false,
            records_verified: 0,
            records_in_scope: 0,
            writers: Vec::new(),
            problems: Vec::new(),
        };
    };
    let report = &trail.verification;
    let in_scope = |writer: &str| snapshot.records().filter(|r| r.writer == writer).count() as u64;
    TrailSummary {
        examined: true,
        source: Some(trail.source.clone()),
        verified: report.is_ok() && report.signatures_checked && !report.writers.is_empty(),
        signatures_checked: report.signatures_checked,
        records_verified: report.total_records(),
        records_in_scope: snapshot.records().count() as u64,
        writers: report
            .writers
            .iter()
            .map(|w| TrailWriter {
                writer: w.writer.clone(),
                first_seq: w.first_seq,
                last_seq: w.last_seq,
                records: w.records,
                segments: w.segments,
                head: w.head.to_hex(),
                unsealed_records: w.unproven_records(),
                records_in_scope: in_scope(&w.writer),
            })
            .collect(),
        problems: report.problems.iter().map(ToString::to_string).collect(),
    }
}

/// Builds the report of `catalog` over `snapshot`. `sources` describes where the
/// objects and the trail came from; `generator` names the program.
pub fn build(
    catalog: &Catalog,
    snapshot: &Snapshot,
    sources: Vec<String>,
    generator: &str,
) -> Report {
    let findings = evidence::collect(snapshot);
    let mut used: Vec<EvidenceKind> = catalog
        .controls
        .iter()
        .flat_map(|c| c.evidence.iter().copied())
        .collect();
    used.sort();
    used.dedup();
    let controls: Vec<ControlResult> = catalog
        .controls
        .iter()
        .map(|control| {
            let behind: Vec<&Finding> = control.evidence.iter().map(|k| &findings[k]).collect();
            let reasons = behind
                .iter()
                .filter(|f| matches!(f.status, FindingStatus::Gap | FindingStatus::Failed))
                .flat_map(|f| {
                    f.issues
                        .iter()
                        .map(move |i| format!("{}: {i}", f.kind.id()))
                })
                .collect();
            ControlResult {
                id: control.id.clone(),
                title: control.title.clone(),
                references: control.references.clone(),
                description: control.description.clone(),
                coverage: control.coverage,
                status: status_of(control.coverage, &behind),
                evidence: control.evidence.clone(),
                outside_policy_bind: control.outside_policy_bind.clone(),
                reasons,
            }
        })
        .collect();
    let count = |status| controls.iter().filter(|c| c.status == status).count();
    let summary = Summary {
        controls: controls.len(),
        satisfied: count(ControlStatus::Satisfied),
        partially_evidenced: count(ControlStatus::PartiallyEvidenced),
        not_satisfied: count(ControlStatus::NotSatisfied),
        not_evidenced: count(ControlStatus::NotEvidenced),
        not_applicable: count(ControlStatus::NotApplicable),
    };
    Report {
        format: REPORT_FORMAT.to_string(),
        renderer: RENDERER_VERSION,
        generator: generator.to_string(),
        catalog: CatalogInfo {
            framework: catalog.framework.clone(),
            title: catalog.title.clone(),
            version: catalog.version.clone(),
        },
        generated_at: snapshot.now,
        scope: snapshot.scope.clone(),
        sources,
        summary,
        trail: trail_summary_of(snapshot),
        controls,
        evidence: used.into_iter().map(|k| findings[&k].clone()).collect(),
        model_cards: model_card::cards(snapshot),
    }
}
