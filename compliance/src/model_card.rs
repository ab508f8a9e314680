//! Model cards: one page per registered model, generated from the registry and its
//! evidence (purpose, parties, data, risk, approval, review, evaluations, gates,
//! compliance per framework, incidents).
use chrono::{DateTime, Utc};
use policybind_crds::model_deployment::{EvaluationResult, FrameworkCompliance, OperatorRole};
use policybind_crds::{DataClassification, ModelDeployment, RiskLevel};
use serde::{Deserialize, Serialize};

use crate::assess::{self, Approval, ModelFacts};
use crate::evidence::Snapshot;
use crate::gates;

/// One model's card.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelCard {
    pub namespace: String,
    pub name: String,
    pub provider: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub owner: String,
    pub team: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eu_ai_act_category: Option<String>,
    /// `Provider: party (contact)` lines.
    #[serde(default)]
    pub parties: Vec<String>,
    /// Use cases it is approved for (empty: any).
    #[serde(default)]
    pub use_cases: Vec<String>,
    pub max_data_classification: DataClassification,
    /// `name (purpose, classification, personal data, origin)` lines.
    #[serde(default)]
    pub data_sources: Vec<String>,
    pub risk_score: u32,
    pub risk_level: RiskLevel,
    /// Declared risk factors.
    #[serde(default)]
    pub risk_factors: Vec<String>,
    pub approval: CardApproval,
    pub review_interval_days: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_review_at: Option<DateTime<Utc>>,
    pub suspended: bool,
    #[serde(default)]
    pub evaluations: Vec<EvaluationResult>,
    /// Evidence gate results, one line each.
    #[serde(default)]
    pub gates: Vec<CardGate>,
    pub compliance: Vec<FrameworkCompliance>,
    /// Incidents concerning the model, `namespace/name: state`.
    #[serde(default)]
    pub incidents: Vec<String>,
}

/// The approval part of a card.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CardApproval {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One gate threshold on a card.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CardGate {
    pub id: String,
    pub passed: bool,
    pub message: String,
}

impl From<Approval> for CardApproval {
    fn from(a: Approval) -> Self {
        CardApproval {
            state: a.state.as_str().to_string(),
            request: a.request,
            approver: a.approver,
            requester: a.requester,
            comment: a.comment,
        }
    }
}

fn factors(model: &ModelDeployment) -> Vec<String> {
    let f = &model.spec.risk.factors;
    [
        (f.automated_decisions, "automatedDecisions"),
        (f.customer_facing, "customerFacing"),
        (f.processes_personal_data, "processesPersonalData"),
        (f.tool_use, "toolUse"),
        (f.fine_tuned_on_internal_data, "fineTunedOnInternalData"),
        (f.code_execution, "codeExecution"),
    ]
    .into_iter()
    .filter(|&(set, _)| set)
    .map(|(_, name)| name.to_string())
    .collect()
}

fn parties(model: &ModelDeployment) -> Vec<String> {
    let Some(governance) = &model.spec.governance else {
        return Vec::new();
    };
    governance
        .roles
        .iter()
        .map(|p| {
            let role = match p.role {
                OperatorRole::Provider => "Provider",
                OperatorRole::Deployer => "Deployer",
            };
            match &p.contact {
                Some(contact) => format!("{role}: {} ({contact})", p.party),
                None => format!("{role}: {}", p.party),
            }
        })
        .collect()
}

fn data_sources(model: &ModelDeployment) -> Vec<String> {
    let Some(governance) = &model.spec.governance else {
        return Vec::new();
    };
    governance
        .data_sources
        .iter()
        .map(|d| {
            let mut facts = vec![d.purpose.as_str().to_string()];
            facts.extend(d.classification.map(|c| c.as_str().to_string()));
            if d.personal_data {
                facts.push("personal data".into());
            }
            facts.extend(d.origin.clone());
            format!("{} ({})", d.name, facts.join(", "))
        })
        .collect()
}

/// The card of one model, as of `snapshot.now`.
pub fn card(model: &ModelDeployment, snapshot: &Snapshot) -> ModelCard {
    let approval = assess::approval_of(model, &snapshot.approvals);
    let gate_results = gates::evaluate(model, &snapshot.gates, snapshot.now);
    let next_review_at = assess::next_review(model);
    let compliance = assess::model_compliance(&ModelFacts {
        model,
        approval: approval.state,
        gate_results: &gate_results,
        next_review_at,
        now: snapshot.now,
    });
    let namespace = model
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = model.metadata.name.clone().unwrap_or_default();
    let spec = &model.spec;
    let governance = spec.governance.as_ref();
    ModelCard {
        incidents: snapshot
            .incidents
            .iter()
            .filter(|i| i.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|i| i.spec.model.as_deref() == Some(name.as_str()))
            .map(|i| {
                format!(
                    "{}/{}: {:?}",
                    namespace,
                    i.metadata.name.as_deref().unwrap_or_default(),
                    i.spec.state
                )
            })
            .collect(),
        namespace,
        name,
        provider: spec.provider.clone(),
        model: spec.model.clone(),
        version: spec.version.clone(),
        region: spec.region.clone(),
        owner: spec.owner.clone(),
        team: spec.team.clone(),
        intended_purpose: governance.and_then(|g| g.intended_purpose.clone()),
        eu_ai_act_category: gates::eu_category(model).map(|c| c.as_str().to_string()),
        parties: parties(model),
        use_cases: spec.use_cases.clone(),
        max_data_classification: spec.max_data_classification,
        data_sources: data_sources(model),
        risk_score: policybind_engine::risk::assess(&spec.risk).score,
        risk_level: gates::risk_level(model),
        risk_factors: factors(model),
        approval: approval.into(),
        review_interval_days: spec.review_interval_days,
        next_review_at,
        suspended: spec.suspended,
        evaluations: spec.evaluations.clone(),
        gates: gate_results
            .iter()
            .map(|r| CardGate {
                id: r.id(),
                passed: r.passed(),
                message: r.to_string(),
            })
            .collect(),
        compliance,
    }
}

/// Cards of every model in the snapshot, ordered by namespace and name.
pub fn cards(snapshot: &Snapshot) -> Vec<ModelCard> {
    snapshot
        .sorted_models()
        .into_iter()
        .map(|m| card(m, snapshot))
        .collect()
}
