//! A model's compliance per framework: what `status.compliance` holds and what the
//! `Compliant` condition sums up.
//!
//! Each framework asks a few things of a model's registration. The checks run in a
//! fixed order and the first failing one gives the framework's reason; the message
//! names every failing check. The operator calls [`model_compliance`] and
//! [`compliant_condition`] with the gate results of [`crate::gates::evaluate`] and the
//! approval state it already computes; reports call them with state computed offline
//! ([`approval_of`], [`next_review`]).
use chrono::{DateTime, Duration, Utc};
use policybind_crds::approval_request::{ApprovalPhase, ApprovalTargetKind, DecisionState};
use policybind_crds::conditions::reasons;
use policybind_crds::model_deployment::{
    ApprovalState, EuAiActCategory, Framework, FrameworkCompliance, OperatorRole,
};
use policybind_crds::{ApprovalRequest, ModelDeployment};
use serde::Serialize;

use crate::gates::{self, GateResult};

/// A model's approval as the registry and its ApprovalRequests show it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// NotRequired, Pending, Approved or Rejected.
    pub state: ApprovalState,
    /// The ApprovalRequest that decided it, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Who decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// Who asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// The approver's comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When the operator saw the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
}

/// The approval of `model`: the operator's status when it wrote one, else the newest
/// decided ApprovalRequest targeting it (in its namespace), else Pending or
/// NotRequired by risk level.
pub fn approval_of(model: &ModelDeployment, approvals: &[ApprovalRequest]) -> Approval {
    let namespace = model.metadata.namespace.as_deref().unwrap_or("default");
    let name = model.metadata.name.as_deref().unwrap_or_default();
    let request = approvals
        .iter()
        .filter(|a| a.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|a| a.spec.target.kind == ApprovalTargetKind::ModelDeployment)
        .filter(|a| a.spec.target.name.as_deref() == Some(name))
        .filter(|a| decided(a).is_some())
        .max_by_key(|a| a.status.as_ref().and_then(|s| s.decided_at));
    let status = model.status.as_ref();
    let requires = gates::risk_level(model).requires_approval();
    let state = status.and_then(|s| s.approval).unwrap_or(match request {
        _ if !requires => ApprovalState::NotRequired,
        Some(r) if decided(r) == Some(true) => ApprovalState::Approved,
        Some(_) => ApprovalState::Rejected,
        None => ApprovalState::Pending,
    });
    let decision = request.and_then(|r| r.spec.decision.as_ref());
    Approval {
        state,
        request: request
            .and_then(|r| r.metadata.name.clone())
            .or_else(|| status.and_then(|s| s.approval_request.clone())),
        approver: decision
            .map(|d| d.approver.clone())
            .or_else(|| status.and_then(|s| s.approved_by.clone())),
        requester: request.map(|r| r.spec.requester.clone()),
        comment: decision.and_then(|d| d.comment.clone()),
        decided_at: request.and_then(|r| r.status.as_ref().and_then(|s| s.decided_at)),
    }
}

/// Whether an ApprovalRequest was decided, and how: the operator's phase when set,
/// else the decision written by the approver.
fn decided(request: &ApprovalRequest) -> Option<bool> {
    match (
        request.status.as_ref().and_then(|s| s.phase),
        &request.spec.decision,
    ) {
        (Some(ApprovalPhase::Approved), _) => Some(true),
        (Some(ApprovalPhase::Rejected | ApprovalPhase::Expired), _) => Some(false),
        (_, Some(d)) => Some(d.state == DecisionState::Approved),
        _ => None,
    }
}

/// When the next review is due: the operator's status, else `lastReviewedAt` (or
/// the creation time) plus the review interval. `None` when neither is known (a
/// manifest never applied).
pub fn next_review(model: &ModelDeployment) -> Option<DateTime<Utc>> {
    if let Some(at) = model.status.as_ref().and_then(|s| s.next_review_at) {
        return Some(at);
    }
    let since = model.spec.last_reviewed_at.or_else(|| {
        model
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| to_chrono(&t.0))
    })?;
    Some(since + Duration::days(i64::from(model.spec.review_interval_days)))
}

fn to_chrono(time: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(time.as_second(), time.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// One failing check: its reason and what exactly fails.
struct Failure {
    reason: &'static str,
    message: String,
}

/// What the checks read, computed once per model.
pub struct ModelFacts<'a> {
    pub model: &'a ModelDeployment,
    pub approval: ApprovalState,
    pub gate_results: &'a [GateResult],
    pub next_review_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

impl ModelFacts<'_> {
    fn governance(&self) -> Option<&policybind_crds::model_deployment::Governance> {
        self.model.spec.governance.as_ref()
    }

    fn category(&self) -> Option<EuAiActCategory> {
        gates::eu_category(self.model)
    }

    /// High or Critical in PolicyBind, or High-risk under the EU AI Act.
    fn high_risk(&self) -> bool {
        gates::risk_level(self.model).requires_approval()
            || self.category() == Some(EuAiActCategory::High)
    }

    fn purpose(&self, out: &mut Vec<Failure>) {
        if self
            .governance()
            .and_then(|g| g.intended_purpose.as_ref())
            .is_none()
        {
            out.push(Failure {
                reason: reasons::INTENDED_PURPOSE_MISSING,
                message: "spec.governance.intendedPurpose is not set".into(),
            });
        }
    }

    fn data_sources(&self, out: &mut Vec<Failure>) {
        if self.governance().is_none_or(|g| g.data_sources.is_empty()) {
            out.push(Failure {
                reason: reasons::DATA_SOURCES_MISSING,
                message: "spec.governance.dataSources is empty".into(),
            });
        }
    }

    fn roles(&self, out: &mut Vec<Failure>, needed: &[OperatorRole]) {
        let present: Vec<OperatorRole> = self
            .governance()
            .map(|g| g.roles.iter().map(|r| r.role).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = needed
            .iter()
            .filter(|r| !present.contains(r))
            .map(|r| match r {
                OperatorRole::Provider => "Provider",
                OperatorRole::Deployer => "Deployer",
            })
            .collect();
        if !missing.is_empty() {
            out.push(Failure {
                reason: reasons::ROLES_MISSING,
                message: format!(
                    "spec.governance.roles names no {}",
                    missing.join(" and no ")
                ),
            });
        }
    }

    fn evaluations(&self, out: &mut Vec<Failure>) {
        if self.high_risk() && self.model.spec.evaluations.is_empty() {
            out.push(Failure {
                reason: reasons::EVALUATIONS_MISSING,
                message: "a high-risk model has no spec.evaluations".into(),
            });
        }
    }

    fn gates(&self, out: &mut Vec<Failure>) {
        let failed: Vec<&GateResult> = self.gate_results.iter().filter(|r| !r.passed()).collect();
        if let Some(first) = failed.first() {
            let more = match failed.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            out.push(Failure {
                reason: reasons::EVIDENCE_GATE_FAILED,
                message: format!("{first}{more}"),
            });
        }
    }

    fn approval(&self, out: &mut Vec<Failure>) {
        let level = gates::risk_level(self.model);
        if level.requires_approval() && self.approval != ApprovalState::Approved {
            out.push(Failure {
                reason: reasons::APPROVAL_MISSING,
                message: format!(
                    "risk level {} needs an approved ApprovalRequest; approval is {}",
                    level.as_str(),
                    self.approval.as_str()
                ),
            });
        }
    }

    fn review(&self, out: &mut Vec<Failure>) {
        if let Some(due) = self.next_review_at
            && due < self.now
        {
            out.push(Failure {
                reason: reasons::REVIEW_OVERDUE,
                message: format!("review was due {}", due.format("%Y-%m-%d")),
            });
        }
    }

    fn eu_ai_act(&self, out: &mut Vec<Failure>) {
        match self.category() {
            Some(EuAiActCategory::Prohibited) => out.push(Failure {
                reason: reasons::PROHIBITED_PRACTICE,
                message: "EU AI Act category Prohibited: the model may not be used".into(),
            }),
            None => out.push(Failure {
                reason: reasons::RISK_CATEGORY_MISSING,
                message: "spec.governance.euAiActCategory is not set".into(),
            }),
            Some(EuAiActCategory::High) => {
                self.purpose(out);
                self.roles(out, &[OperatorRole::Provider, OperatorRole::Deployer]);
                self.data_sources(out);
                self.evaluations(out);
                self.gates(out);
                if !gates::risk_level(self.model).requires_approval() {
                    out.push(Failure {
                        reason: reasons::APPROVAL_MISSING,
                        message: format!(
                            "EU AI Act High-risk, but risk level {} needs no approval; set spec.risk.level to High",
                            gates::risk_level(self.model).as_str()
                        ),
                    });
                }
                self.approval(out);
            }
            Some(EuAiActCategory::Limited | EuAiActCategory::Minimal) => {
                self.purpose(out);
                self.gates(out);
                self.approval(out);
            }
        }
        self.review(out);
    }

    fn failures(&self, framework: Framework) -> Vec<Failure> {
        let mut out = Vec::new();
        match framework {
            Framework::EuAiAct => self.eu_ai_act(&mut out),
            Framework::NistAiRmf => {
                self.purpose(&mut out);
                self.evaluations(&mut out);
                self.gates(&mut out);
                self.approval(&mut out);
                self.review(&mut out);
            }
            Framework::Iso42001 => {
                self.purpose(&mut out);
                self.data_sources(&mut out);
                self.roles(&mut out, &[OperatorRole::Provider]);
                self.evaluations(&mut out);
                self.gates(&mut out);
                self.approval(&mut out);
                self.review(&mut out);
            }
            Framework::Soc2 => {
                self.approval(&mut out);
                self.review(&mut out);
            }
        }
        out
    }
}

/// One entry per framework, in [`Framework::ALL`] order.
pub fn model_compliance(facts: &ModelFacts<'_>) -> Vec<FrameworkCompliance> {
    Framework::ALL
        .into_iter()
        .map(|framework| {
            let failures = facts.failures(framework);
            match failures.first() {
                None => FrameworkCompliance {
                    framework,
                    compliant: true,
                    reason: reasons::FRAMEWORK_COMPLIANT.to_string(),
                    message: String::new(),
                },
                Some(first) => FrameworkCompliance {
                    framework,
                    compliant: false,
                    reason: first.reason.to_string(),
                    message: failures
                        .iter()
                        .map(|f| f.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                },
            }
        })
        .collect()
}

/// The `Compliant` condition: status, reason and message. True with
/// `AllFrameworksCompliant` when every framework passes; otherwise False with the
/// first failing framework's reason and, in the message, `<framework>: <reason>
/// (<message>)` for each failing framework, separated by `; `.
pub fn compliant_condition(compliance: &[FrameworkCompliance]) -> (bool, String, String) {
    let failing: Vec<&FrameworkCompliance> = compliance.iter().filter(|c| !c.compliant).collect();
    match failing.first() {
        None => (
            true,
            reasons::ALL_FRAMEWORKS_COMPLIANT.to_string(),
            format!(
                "compliant with {}",
                compliance
                    .iter()
                    .map(|c| c.framework.id())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(first) => (
            false,
            first.reason.clone(),
            failing
                .iter()
                .map(|c| format!("{}: {} ({})", c.framework, c.reason, c.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}
