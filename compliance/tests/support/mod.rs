//! Fixture builders for the compliance tests.
#![allow(dead_code)]

use chrono::{DateTime, NaiveDate, Utc};
use policybind_crds::approval_request::{
    ApprovalDecision, ApprovalTarget, ApprovalTargetKind, DecisionState,
};
use policybind_crds::evidence_gate::{GateSelector, GateThreshold};
use policybind_crds::model_deployment::{
    DataPurpose, DataSource, EuAiActCategory, EvaluationResult, Governance, OperatorRole, PartyRole,
};
use policybind_crds::{
    ApprovalRequest, ApprovalRequestSpec, EvidenceGate, EvidenceGateSpec, ModelDeployment,
    ModelDeploymentSpec, RiskLevel,
};

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

/// A ModelDeployment with nothing but the required fields.
pub fn model(namespace: &str, name: &str) -> ModelDeployment {
    let spec: ModelDeploymentSpec = serde_json::from_value(serde_json::json!({
        "provider": "self-hosted", "model": format!("{name}-v1"), "owner": "owner@example.com", "team": "team-a",
    }))
    .unwrap();
    let mut m = ModelDeployment::new(name, spec);
    m.metadata.namespace = Some(namespace.to_string());
    m
}

pub trait ModelExt {
    fn risk(self, level: RiskLevel) -> Self;
    fn eu(self, category: EuAiActCategory) -> Self;
    fn documented(self) -> Self;
    fn eval(self, metric: &str, value: f64, dataset: &str, date: &str) -> Self;
    fn reviewed(self, date: &str) -> Self;
    fn suspended(self) -> Self;
}

impl ModelExt for ModelDeployment {
    fn risk(mut self, level: RiskLevel) -> Self {
        self.spec.risk.level = Some(level);
        self
    }

    fn eu(mut self, category: EuAiActCategory) -> Self {
        self.spec
            .governance
            .get_or_insert_with(Governance::default)
            .eu_ai_act_category = Some(category);
        self
    }

    /// Purpose, both roles and a data source.
    fn documented(mut self) -> Self {
        let g = self.spec.governance.get_or_insert_with(Governance::default);
        g.intended_purpose = Some("Scores things for people who review them.".into());
        g.roles = vec![
            PartyRole {
                role: OperatorRole::Provider,
                party: "Acme models".into(),
                contact: None,
            },
            PartyRole {
                role: OperatorRole::Deployer,
                party: "Acme ops".into(),
                contact: Some("ops@example.com".into()),
            },
        ];
        g.data_sources = vec![DataSource {
            name: "loans".into(),
            purpose: DataPurpose::Training,
            origin: None,
            classification: None,
            personal_data: true,
        }];
        self
    }

    fn eval(mut self, metric: &str, value: f64, dataset: &str, date: &str) -> Self {
        self.spec.evaluations.push(EvaluationResult {
            metric: metric.into(),
            value,
            dataset: dataset.into(),
            date: day(date),
            source: "eval run 1".into(),
        });
        self
    }

    fn reviewed(mut self, date: &str) -> Self {
        self.spec.last_reviewed_at = Some(at(date));
        self
    }

    fn suspended(mut self) -> Self {
        self.spec.suspended = true;
        self
    }
}

pub fn gate(name: &str) -> EvidenceGate {
    EvidenceGate::new(
        name,
        EvidenceGateSpec {
            description: None,
            applies_to: GateSelector::default(),
            thresholds: Vec::new(),
        },
    )
}

pub trait GateExt {
    fn min_risk(self, level: RiskLevel) -> Self;
    fn categories(self, categories: &[EuAiActCategory]) -> Self;
    fn namespaces(self, namespaces: &[&str]) -> Self;
    fn max(self, name: &str, metric: &str, max: f64) -> Self;
    fn min(self, name: &str, metric: &str, min: f64) -> Self;
    fn aged(self, days: u32) -> Self;
    fn on_dataset(self, dataset: &str) -> Self;
}

impl GateExt for EvidenceGate {
    fn min_risk(mut self, level: RiskLevel) -> Self {
        self.spec.applies_to.min_risk_level = Some(level);
        self
    }

    fn categories(mut self, categories: &[EuAiActCategory]) -> Self {
        self.spec.applies_to.eu_ai_act_categories = categories.to_vec();
        self
    }

    fn namespaces(mut self, namespaces: &[&str]) -> Self {
        self.spec.applies_to.namespaces = namespaces.iter().map(|s| s.to_string()).collect();
        self
    }

    fn max(mut self, name: &str, metric: &str, max: f64) -> Self {
        self.spec.thresholds.push(GateThreshold {
            name: name.into(),
            metric: metric.into(),
            min: None,
            max: Some(max),
            dataset: None,
            max_age_days: None,
        });
        self
    }

    fn min(mut self, name: &str, metric: &str, min: f64) -> Self {
        self.spec.thresholds.push(GateThreshold {
            name: name.into(),
            metric: metric.into(),
            min: Some(min),
            max: None,
            dataset: None,
            max_age_days: None,
        });
        self
    }

    /// Sets `maxAgeDays` on the last threshold.
    fn aged(mut self, days: u32) -> Self {
        self.spec.thresholds.last_mut().unwrap().max_age_days = Some(days);
        self
    }

    /// Sets `dataset` on the last threshold.
    fn on_dataset(mut self, dataset: &str) -> Self {
        self.spec.thresholds.last_mut().unwrap().dataset = Some(dataset.into());
        self
    }
}

/// An ApprovalRequest for a model, decided by `approver`.
pub fn approval(
    namespace: &str,
    model: &str,
    approver: &str,
    state: DecisionState,
) -> ApprovalRequest {
    let mut a = ApprovalRequest::new(
        &format!("{model}-approval"),
        ApprovalRequestSpec {
            target: ApprovalTarget {
                kind: ApprovalTargetKind::ModelDeployment,
                name: Some(model.into()),
                request_id: None,
                model: None,
                subject: None,
                token: None,
                policy_rule: None,
            },
            requester: "requester@example.com".into(),
            reason: None,
            expires_at: None,
            decision: Some(ApprovalDecision {
                state,
                approver: approver.into(),
                comment: None,
            }),
        },
    );
    a.metadata.namespace = Some(namespace.into());
    a
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every object of the example organisation (examples/), parsed as the tools parse it.
pub fn example_objects() -> Vec<policybind_engine::manifest::Object> {
    let mut out = Vec::new();
    for file in policybind_engine::manifest::manifest_files(&repo().join("examples"), None)
        .unwrap()
        .files
    {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed =
            policybind_engine::manifest::parse_documents(&file.display().to_string(), &text)
                .unwrap();
        out.extend(parsed.into_iter().map(|(_, o)| o));
    }
    out
}

/// The example audit trail's segments (examples/compliance/audit/).
pub fn example_segments() -> Vec<policybind_engine::audit::NamedSegment> {
    let mut paths: Vec<_> = std::fs::read_dir(repo().join("examples/compliance/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| policybind_engine::audit::NamedSegment {
            name: p.display().to_string(),
            segment: serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
        })
        .collect()
}

pub fn example_audit_key() -> policybind_engine::audit::AuditVerifyingKey {
    let pem = std::fs::read(repo().join("examples/compliance/audit-verify-key.pem")).unwrap();
    policybind_engine::audit::AuditVerifyingKey::from_key_material(&pem).unwrap()
}

/// The example organisation with its verified trail, as of 2026-12-01.
pub fn example_snapshot(
    scope: policybind_compliance::evidence::Scope,
) -> policybind_compliance::evidence::Snapshot {
    use policybind_compliance::evidence::{Snapshot, Trail};
    let mut snapshot = Snapshot::from_objects(example_objects(), scope, at("2026-12-01T00:00:00Z"));
    let options = policybind_engine::audit::VerifyOptions {
        keyring: Some(
            policybind_engine::audit::Keyring::single(example_audit_key(), vec!["**".into()])
                .unwrap(),
        ),
        ..Default::default()
    };
    snapshot.trail = Some(Trail::from_segments(
        "examples/compliance/audit".into(),
        &example_segments(),
        &options,
    ));
    snapshot
}
