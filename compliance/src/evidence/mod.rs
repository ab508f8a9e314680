//! The evidence a report is built from, and one check per kind of evidence.
//!
//! A [`Snapshot`] holds what PolicyBind knows at one moment: the registry, the
//! approvals, the policies, the tokens, the incidents, the evidence gates, and the
//! audit trail with its verification result. [`collect`] runs one check per
//! [`EvidenceKind`]; each returns a [`Finding`] that names the objects, the audit
//! record ranges and the approvers behind it, what is missing or failing
//! (`issues`), and observations that do not change the status (`notes`). Controls
//! in a catalog point at evidence kinds, so an auditor follows a control to its
//! findings and a finding to the objects and records it rests on.
mod operations;
mod registry;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use policybind_crds::{
    AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, EvidenceGate, Incident,
    ModelDeployment,
};
use policybind_engine::audit::{
    AuditRecord, ExportBundle, NamedSegment, VerifyOptions, VerifyReport, verify_export,
    verify_segments,
};
use policybind_engine::manifest::Object;
use serde::{Deserialize, Serialize};

/// The kinds of evidence PolicyBind can produce. Catalogs name them in kebab case.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceKind {
    ModelInventory,
    IntendedPurpose,
    RiskClassification,
    RiskAssessment,
    Roles,
    DataSources,
    DataClassificationLimits,
    Evaluations,
    EvidenceGates,
    DriftMonitoring,
    Approvals,
    Reviews,
    PoliciesInForce,
    HumanOversight,
    ContentSafeguards,
    AccessTokens,
    TokenLifecycle,
    AuditTrail,
    DecisionRecords,
    ChangeRecords,
    Incidents,
    SeriousIncidentReporting,
    Suspension,
}

impl EvidenceKind {
    /// Every kind, in report order.
    pub const ALL: [EvidenceKind; 23] = [
        EvidenceKind::ModelInventory,
        EvidenceKind::IntendedPurpose,
        EvidenceKind::RiskClassification,
        EvidenceKind::RiskAssessment,
        EvidenceKind::Roles,
        EvidenceKind::DataSources,
        EvidenceKind::DataClassificationLimits,
        EvidenceKind::Evaluations,
        EvidenceKind::EvidenceGates,
        EvidenceKind::DriftMonitoring,
        EvidenceKind::Approvals,
        EvidenceKind::Reviews,
        EvidenceKind::PoliciesInForce,
        EvidenceKind::HumanOversight,
        EvidenceKind::ContentSafeguards,
        EvidenceKind::AccessTokens,
        EvidenceKind::TokenLifecycle,
        EvidenceKind::AuditTrail,
        EvidenceKind::DecisionRecords,
        EvidenceKind::ChangeRecords,
        EvidenceKind::Incidents,
        EvidenceKind::SeriousIncidentReporting,
        EvidenceKind::Suspension,
    ];

    /// The kebab-case id catalogs and reports use.
    pub fn id(self) -> &'static str {
        match self {
            EvidenceKind::ModelInventory => "model-inventory",
            EvidenceKind::IntendedPurpose => "intended-purpose",
            EvidenceKind::RiskClassification => "risk-classification",
            EvidenceKind::RiskAssessment => "risk-assessment",
            EvidenceKind::Roles => "roles",
            EvidenceKind::DataSources => "data-sources",
            EvidenceKind::DataClassificationLimits => "data-classification-limits",
            EvidenceKind::Evaluations => "evaluations",
            EvidenceKind::EvidenceGates => "evidence-gates",
            EvidenceKind::DriftMonitoring => "drift-monitoring",
            EvidenceKind::Approvals => "approvals",
            EvidenceKind::Reviews => "reviews",
            EvidenceKind::PoliciesInForce => "policies-in-force",
            EvidenceKind::HumanOversight => "human-oversight",
            EvidenceKind::ContentSafeguards => "content-safeguards",
            EvidenceKind::AccessTokens => "access-tokens",
            EvidenceKind::TokenLifecycle => "token-lifecycle",
            EvidenceKind::AuditTrail => "audit-trail",
            EvidenceKind::DecisionRecords => "decision-records",
            EvidenceKind::ChangeRecords => "change-records",
            EvidenceKind::Incidents => "incidents",
            EvidenceKind::SeriousIncidentReporting => "serious-incident-reporting",
            EvidenceKind::Suspension => "suspension",
        }
    }

    /// What the evidence shows, as a heading.
    pub fn title(self) -> &'static str {
        match self {
            EvidenceKind::ModelInventory => "Model inventory (ModelDeployment registry)",
            EvidenceKind::IntendedPurpose => "Intended purpose of each model",
            EvidenceKind::RiskClassification => "EU AI Act risk category of each model",
            EvidenceKind::RiskAssessment => "Risk score and level of each model",
            EvidenceKind::Roles => "Provider and deployer of each model",
            EvidenceKind::DataSources => "Data sources of each model",
            EvidenceKind::DataClassificationLimits => "Data classification limits",
            EvidenceKind::Evaluations => "Evaluation results",
            EvidenceKind::EvidenceGates => "Evidence gates and their results",
            EvidenceKind::DriftMonitoring => "Drift measurements of high-risk models",
            EvidenceKind::Approvals => "Approvals and their approvers",
            EvidenceKind::Reviews => "Review schedule",
            EvidenceKind::PoliciesInForce => "Policies in force and their history",
            EvidenceKind::HumanOversight => "Human decisions required by policy",
            EvidenceKind::ContentSafeguards => "Content detectors and redaction",
            EvidenceKind::AccessTokens => "Access tokens and their scopes",
            EvidenceKind::TokenLifecycle => "Token expiry and revocation",
            EvidenceKind::AuditTrail => "Audit trail verification",
            EvidenceKind::DecisionRecords => "Decision records of the period",
            EvidenceKind::ChangeRecords => "Admission, approval and lifecycle records",
            EvidenceKind::Incidents => "Incidents and their resolution",
            EvidenceKind::SeriousIncidentReporting => "Serious-incident notifications",
            EvidenceKind::Suspension => "Suspension of models",
        }
    }
}

/// What a check concluded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingStatus {
    /// The evidence is there and shows what it should.
    Satisfied,
    /// Part of the evidence is missing (an unset field, no record of something).
    Gap,
    /// The evidence shows a violation (a failing gate on a model in use, a broken
    /// trail, an overdue review, a missed deadline).
    Failed,
    /// Nothing in scope that this evidence concerns.
    NotApplicable,
}

impl FindingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingStatus::Satisfied => "Satisfied",
            FindingStatus::Gap => "Gap",
            FindingStatus::Failed => "Failed",
            FindingStatus::NotApplicable => "NotApplicable",
        }
    }
}

/// An object a finding rests on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// What about it matters here.
    pub detail: String,
}

/// A range of audit records of one writer that a finding rests on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordRange {
    pub writer: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Records in the range that matched (the range may hold others in between).
    pub count: u64,
    /// Which records.
    pub what: String,
}

/// A human decision a finding rests on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApproverRef {
    /// What was decided: `ModelDeployment ns/name` or `request <id>`.
    pub target: String,
    /// The ApprovalRequest, `namespace/name`.
    pub request: String,
    pub decision: String,
    pub approver: String,
    pub requester: String,
    /// The audit record of the decision, `writer:seq`, when the trail holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// The result of one evidence check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: EvidenceKind,
    pub title: String,
    pub status: FindingStatus,
    /// One sentence.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RecordRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<ApproverRef>,
    /// What is missing or failing, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    /// Observations that do not change the status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Finding {
    pub(crate) fn new(kind: EvidenceKind) -> Self {
        Finding {
            kind,
            title: kind.title().to_string(),
            status: FindingStatus::NotApplicable,
            summary: String::new(),
            objects: Vec::new(),
            records: Vec::new(),
            approvers: Vec::new(),
            issues: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Status from what was found: Failed beats Gap beats Satisfied; with no issue
    /// and nothing evidenced, `empty` decides (NotApplicable or Gap).
    pub(crate) fn settle(mut self, failed: bool, evidenced: bool, empty: FindingStatus) -> Self {
        self.status = if failed {
            FindingStatus::Failed
        } else if !self.issues.is_empty() {
            FindingStatus::Gap
        } else if evidenced {
            FindingStatus::Satisfied
        } else {
            empty
        };
        self
    }

    pub(crate) fn object(
        &mut self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        detail: String,
    ) {
        self.objects.push(ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            detail,
        });
    }
}

/// What the report covers: one namespace or all, and a period of the trail.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

impl Scope {
    /// Whether a record falls in the period and namespace.
    pub fn covers(&self, record: &AuditRecord) -> bool {
        let time = record.time.get();
        self.since.is_none_or(|s| time >= s)
            && self.until.is_none_or(|u| time < u)
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| record.namespace.as_ref() == Some(ns))
    }
}

/// The audit trail and what verifying it found.
#[derive(Clone, Debug)]
pub struct Trail {
    /// Where it was read from, for the report.
    pub source: String,
    /// The verifier's report over the whole trail given.
    pub verification: VerifyReport,
    /// Records of writers whose chain verified, ordered by writer and sequence.
    pub records: Vec<AuditRecord>,
}

impl Trail {
    /// Verifies segments and keeps the records of writers without a problem.
    pub fn from_segments(
        source: String,
        segments: &[NamedSegment],
        options: &VerifyOptions,
    ) -> Trail {
        let verification = verify_segments(segments, options);
        let records = segments
            .iter()
            .flat_map(|s| s.segment.records.iter())
            .cloned()
            .collect();
        Trail::new(source, verification, records)
    }

    /// Verifies an export bundle and keeps the records of writers without a problem.
    pub fn from_export(source: String, bundle: &ExportBundle, options: &VerifyOptions) -> Trail {
        let verification = verify_export(bundle, options);
        Trail::new(source, verification, bundle.records.clone())
    }

    /// A trail verified elsewhere (for example by `policybind_audit::verify_stored`,
    /// which also reports segments that could not be parsed). Records of writers
    /// with a problem are dropped: nothing unproven is used as evidence.
    pub fn new(source: String, verification: VerifyReport, mut records: Vec<AuditRecord>) -> Trail {
        records.retain(|r| !verification.problems.iter().any(|p| p.writer == r.writer));
        records.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
        records.dedup_by(|a, b| a.writer == b.writer && a.seq == b.seq);
        Trail {
            source,
            verification,
            records,
        }
    }
}

/// Everything a report is built from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub scope: Scope,
    /// The report's "now": ages evaluation results, decides overdue reviews and
    /// missed deadlines. Never read from a clock inside this crate.
    pub now: DateTime<Utc>,
    pub models: Vec<ModelDeployment>,
    pub approvals: Vec<ApprovalRequest>,
    pub policies: Vec<AIPolicy>,
    pub cluster_policies: Vec<ClusterAIPolicy>,
    pub tokens: Vec<AccessToken>,
    pub incidents: Vec<Incident>,
    pub gates: Vec<EvidenceGate>,
    /// Labels of namespaces (ClusterAIPolicy selectors).
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub trail: Option<Trail>,
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl Snapshot {
    /// A snapshot of parsed manifests (or objects listed from a cluster), cut to the
    /// scope's namespace: namespaced objects of that namespace, models shared
    /// cluster-wide, tokens valid there, and every cluster-scoped object.
    pub fn from_objects(
        objects: impl IntoIterator<Item = Object>,
        scope: Scope,
        now: DateTime<Utc>,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            scope,
            now,
            ..Snapshot::default()
        };
        for object in objects {
            snapshot.add(object);
        }
        snapshot
    }

    fn add(&mut self, object: Object) {
        let wanted = |ns: &str| self.scope.namespace.as_deref().is_none_or(|s| s == ns);
        match object {
            Object::ModelDeployment(m) => {
                let shared = m.spec.scope == policybind_crds::model_deployment::ModelScope::Cluster;
                if wanted(namespace_of(&m.metadata)) || shared {
                    self.models.push(m);
                }
            }
            Object::AccessToken(t) => {
                let extra = self
                    .scope
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| t.spec.additional_namespaces.contains(ns));
                if wanted(namespace_of(&t.metadata)) || extra {
                    self.tokens.push(t);
                }
            }
            Object::ApprovalRequest(a) if wanted(namespace_of(&a.metadata)) => {
                self.approvals.push(a)
            }
            Object::AIPolicy(p) if wanted(namespace_of(&p.metadata)) => self.policies.push(p),
            Object::Incident(i) if wanted(namespace_of(&i.metadata)) => self.incidents.push(i),
            Object::ClusterAIPolicy(p) => self.cluster_policies.push(p),
            Object::EvidenceGate(g) => self.gates.push(g),
            Object::Namespace(name, labels) => {
                self.namespace_labels.insert(name, labels);
            }
            _ => {}
        }
    }

    /// Verified records in the scope's period and namespace.
    pub fn records(&self) -> impl Iterator<Item = &AuditRecord> {
        self.trail
            .iter()
            .flat_map(|t| t.records.iter())
            .filter(|r| self.scope.covers(r))
    }

    /// Models sorted by namespace and name, as reports list them.
    pub fn sorted_models(&self) -> Vec<&ModelDeployment> {
        let mut models: Vec<&ModelDeployment> = self.models.iter().collect();
        models.sort_by_key(|m| {
            (
                namespace_of(&m.metadata).to_string(),
                m.metadata.name.clone(),
            )
        });
        models
    }
}

/// `namespace/name` of an object.
pub(crate) fn id_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Ranges per writer of the records that match `keep`, described by `what`.
pub(crate) fn ranges<'a>(
    records: impl Iterator<Item = &'a AuditRecord>,
    what: &str,
    mut keep: impl FnMut(&AuditRecord) -> bool,
) -> Vec<RecordRange> {
    let mut by_writer: BTreeMap<&str, RecordRange> = BTreeMap::new();
    for record in records.filter(|r| keep(r)) {
        let range = by_writer
            .entry(record.writer.as_str())
            .or_insert_with(|| RecordRange {
                writer: record.writer.clone(),
                first_seq: record.seq,
                last_seq: record.seq,
                count: 0,
                what: what.to_string(),
            });
        range.first_seq = range.first_seq.min(record.seq);
        range.last_seq = range.last_seq.max(record.seq);
        range.count += 1;
    }
    by_writer.into_values().collect()
}

/// One finding per evidence kind, in [`EvidenceKind::ALL`] order.
pub fn collect(snapshot: &Snapshot) -> BTreeMap<EvidenceKind, Finding> {
    EvidenceKind::ALL
        .into_iter()
        .map(|kind| (kind, check(kind, snapshot)))
        .collect()
}

/// Runs the check of one evidence kind.
pub fn check(kind: EvidenceKind, snapshot: &Snapshot) -> Finding {
    use EvidenceKind as K;
    match kind {
        K::ModelInventory => registry::model_inventory(snapshot),
        K::IntendedPurpose => registry::intended_purpose(snapshot),
        K::RiskClassification => registry::risk_classification(snapshot),
        K::RiskAssessment => registry::risk_assessment(snapshot),
        K::Roles => registry::roles(snapshot),
        K::DataSources => registry::data_sources(snapshot),
        K::DataClassificationLimits => registry::data_classification_limits(snapshot),
        K::Evaluations => registry::evaluations(snapshot),
        K::EvidenceGates => registry::evidence_gates(snapshot),
        K::DriftMonitoring => registry::drift_monitoring(snapshot),
        K::Approvals => registry::approvals(snapshot),
        K::Reviews => registry::reviews(snapshot),
        K::Suspension => registry::suspension(snapshot),
        K::PoliciesInForce => operations::policies_in_force(snapshot),
        K::HumanOversight => operations::human_oversight(snapshot),
        K::ContentSafeguards => operations::content_safeguards(snapshot),
        K::AccessTokens => operations::access_tokens(snapshot),
        K::TokenLifecycle => operations::token_lifecycle(snapshot),
        K::AuditTrail => operations::audit_trail(snapshot),
        K::DecisionRecords => operations::decision_records(snapshot),
        K::ChangeRecords => operations::change_records(snapshot),
        K::Incidents => operations::incidents(snapshot),
        K::SeriousIncidentReporting => operations::serious_incident_reporting(snapshot),
    }
}
