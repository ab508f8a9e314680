//! Checks over the model registry: inventory, purpose, classification, parties,
//! data, evaluations, gates, approvals, reviews, suspension.
use policybind_crds::ModelDeployment;
use policybind_crds::approval_request::{ApprovalPhase, ApprovalTargetKind};
use policybind_crds::model_deployment::{ApprovalState, EuAiActCategory, OperatorRole};
use policybind_engine::audit::RecordKind;

use super::{ApproverRef, EvidenceKind, Finding, FindingStatus, Snapshot, id_of, ranges};
use crate::assess::{approval_of, next_review};
use crate::gates::{self, eu_category, risk_level};

const MODEL: &str = "ModelDeployment";

fn ns(model: &ModelDeployment) -> Option<&str> {
    Some(model.metadata.namespace.as_deref().unwrap_or("default"))
}

fn name(model: &ModelDeployment) -> &str {
    model.metadata.name.as_deref().unwrap_or_default()
}

/// High or Critical in PolicyBind, or High-risk under the EU AI Act.
pub(crate) fn high_risk(model: &ModelDeployment) -> bool {
    risk_level(model).requires_approval() || eu_category(model) == Some(EuAiActCategory::High)
}

/// Whether the model can be used now: not suspended and approved or not needing it.
pub(crate) fn in_use(model: &ModelDeployment, snapshot: &Snapshot) -> bool {
    !model.spec.suspended && approval_of(model, &snapshot.approvals).state.usable()
}

pub fn model_inventory(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::ModelInventory);
    for m in s.sorted_models() {
        let detail = format!(
            "{} {}{}; owner {}, team {}{}",
            m.spec.provider,
            m.spec.model,
            m.spec
                .version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            m.spec.owner,
            m.spec.team,
            if m.spec.suspended { "; suspended" } else { "" }
        );
        f.object(MODEL, ns(m), name(m), detail);
    }
    f.summary = format!("{} model(s) registered in scope.", f.objects.len());
    if f.objects.is_empty() {
        f.issues.push("no ModelDeployment in scope".into());
    }
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::Gap)
}

/// A per-model check: `describe` returns the detail when the model has the evidence,
/// or the issue when it does not.
fn per_model(
    s: &Snapshot,
    kind: EvidenceKind,
    noun: &str,
    describe: impl Fn(&ModelDeployment) -> Result<String, String>,
) -> Finding {
    let mut f = Finding::new(kind);
    let mut missing = 0;
    for m in s.sorted_models() {
        match describe(m) {
            Ok(detail) => f.object(MODEL, ns(m), name(m), detail),
            Err(issue) => {
                missing += 1;
                f.issues.push(format!("{}: {issue}", id_of(&m.metadata)));
            }
        }
    }
    f.summary = format!(
        "{} of {} model(s) record {noun}.",
        s.models.len() - missing,
        s.models.len()
    );
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::NotApplicable)
}

pub fn intended_purpose(s: &Snapshot) -> Finding {
    per_model(
        s,
        EvidenceKind::IntendedPurpose,
        "an intended purpose",
        |m| {
            m.spec
                .governance
                .as_ref()
                .and_then(|g| g.intended_purpose.clone())
                .ok_or_else(|| "spec.governance.intendedPurpose is not set".to_string())
        },
    )
}

pub fn risk_classification(s: &Snapshot) -> Finding {
    let mut f = per_model(
        s,
        EvidenceKind::RiskClassification,
        "an EU AI Act category",
        |m| match eu_category(m) {
            None => Err("spec.governance.euAiActCategory is not set".into()),
            Some(EuAiActCategory::High) if !risk_level(m).requires_approval() => Err(format!(
                "EU AI Act High-risk, but PolicyBind risk level {} needs no approval; set spec.risk.level to High",
                risk_level(m).as_str()
            )),
            Some(c) => Ok(format!("EU AI Act category {}", c.as_str())),
        },
    );
    let prohibited_in_use: Vec<String> = s
        .sorted_models()
        .into_iter()
        .filter(|m| eu_category(m) == Some(EuAiActCategory::Prohibited) && !m.spec.suspended)
        .map(|m| id_of(&m.metadata))
        .collect();
    for model in &prohibited_in_use {
        f.issues.push(format!(
            "{model}: classified Prohibited but not suspended; set spec.suspended: true"
        ));
    }
    if !prohibited_in_use.is_empty() {
        f.status = FindingStatus::Failed;
    }
    f
}

pub fn risk_assessment(s: &Snapshot) -> Finding {
    per_model(s, EvidenceKind::RiskAssessment, "a risk assessment", |m| {
        let assessment = policybind_engine::risk::assess(&m.spec.risk);
        let f = &m.spec.risk.factors;
        let factors: Vec<&str> = [
            (f.automated_decisions, "automatedDecisions"),
            (f.customer_facing, "customerFacing"),
            (f.processes_personal_data, "processesPersonalData"),
            (f.tool_use, "toolUse"),
            (f.fine_tuned_on_internal_data, "fineTunedOnInternalData"),
            (f.code_execution, "codeExecution"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        Ok(format!(
            "score {} ({}), level {}{}",
            assessment.score,
            if factors.is_empty() {
                "no factors".to_string()
            } else {
                factors.join(", ")
            },
            risk_level(m).as_str(),
            if m.spec.risk.level.is_some() {
                " set by hand"
            } else {
                ""
            }
        ))
    })
}

pub fn roles(s: &Snapshot) -> Finding {
    per_model(s, EvidenceKind::Roles, "a provider and a deployer", |m| {
        let roles = m
            .spec
            .governance
            .as_ref()
            .map(|g| g.roles.as_slice())
            .unwrap_or(&[]);
        let has = |r: OperatorRole| roles.iter().any(|p| p.role == r);
        if !has(OperatorRole::Provider) || !has(OperatorRole::Deployer) {
            return Err("spec.governance.roles needs a Provider and a Deployer".into());
        }
        Ok(roles
            .iter()
            .map(|p| {
                let role = match p.role {
                    OperatorRole::Provider => "provider",
                    OperatorRole::Deployer => "deployer",
                };
                match &p.contact {
                    Some(c) => format!("{role} {} ({c})", p.party),
                    None => format!("{role} {}", p.party),
                }
            })
            .collect::<Vec<_>>()
            .join("; "))
    })
}

pub fn data_sources(s: &Snapshot) -> Finding {
    per_model(s, EvidenceKind::DataSources, "data sources", |m| {
        let sources = m
            .spec
            .governance
            .as_ref()
            .map(|g| g.data_sources.as_slice())
            .unwrap_or(&[]);
        if sources.is_empty() {
            return Err("spec.governance.dataSources is empty".into());
        }
        Ok(sources
            .iter()
            .map(|d| {
                let mut text = format!("{} ({}", d.name, d.purpose.as_str());
                if let Some(c) = d.classification {
                    text.push_str(&format!(", {}", c.as_str()));
                }
                if d.personal_data {
                    text.push_str(", personal data");
                }
                if let Some(origin) = &d.origin {
                    text.push_str(&format!(", from {origin}"));
                }
                text.push(')');
                text
            })
            .collect::<Vec<_>>()
            .join("; "))
    })
}

pub fn data_classification_limits(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::DataClassificationLimits);
    for m in s.sorted_models() {
        let detail = format!(
            "may receive data up to {}",
            m.spec.max_data_classification.as_str()
        );
        f.object(MODEL, ns(m), name(m), detail);
    }
    for t in &s.tokens {
        let detail = format!(
            "may send data up to {}",
            t.spec.max_data_classification.as_str()
        );
        f.object(
            "AccessToken",
            t.metadata.namespace.as_deref(),
            t.metadata.name.as_deref().unwrap_or_default(),
            detail,
        );
    }
    for (namespace, labels) in &s.namespace_labels {
        if let Some(max) = labels.get(policybind_crds::wire::labels::NAMESPACE_CLASSIFICATION) {
            f.notes
                .push(format!("namespace {namespace} allows data up to {max}"));
        }
    }
    f.summary = format!("{} model and token limit(s) in force.", f.objects.len());
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::NotApplicable)
}

pub fn evaluations(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::Evaluations);
    for m in s.sorted_models() {
        let results = &m.spec.evaluations;
        if results.is_empty() {
            if high_risk(m) {
                f.issues.push(format!(
                    "{}: high-risk model without evaluation results",
                    id_of(&m.metadata)
                ));
            }
            continue;
        }
        let detail = results
            .iter()
            .map(|e| {
                format!(
                    "{} = {} on {} ({}, {})",
                    e.metric, e.value, e.dataset, e.date, e.source
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        f.object(MODEL, ns(m), name(m), detail);
    }
    f.summary = format!("{} model(s) carry evaluation results.", f.objects.len());
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::NotApplicable)
}

pub fn evidence_gates(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::EvidenceGates);
    let mut gate_names: Vec<&policybind_crds::EvidenceGate> = s.gates.iter().collect();
    gate_names.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for gate in gate_names {
        let thresholds: Vec<String> = gate
            .spec
            .thresholds
            .iter()
            .map(|t| {
                let bound = match (t.min, t.max) {
                    (Some(min), Some(max)) => format!("{min}..={max}"),
                    (Some(min), None) => format!(">= {min}"),
                    (None, Some(max)) => format!("<= {max}"),
                    (None, None) => "-".into(),
                };
                format!("{} {} {bound}", t.name, t.metric)
            })
            .collect();
        f.object(
            "EvidenceGate",
            None,
            gate.metadata.name.as_deref().unwrap_or_default(),
            thresholds.join("; "),
        );
    }
    let mut failed = false;
    for m in s.sorted_models() {
        let results = gates::evaluate(m, &s.gates, s.now);
        let id = id_of(&m.metadata);
        if results.is_empty() {
            if high_risk(m) {
                f.issues.push(format!(
                    "{id}: high-risk model and no evidence gate applies to it"
                ));
            }
            continue;
        }
        let failing: Vec<String> = results
            .iter()
            .filter(|r| !r.passed())
            .map(ToString::to_string)
            .collect();
        if failing.is_empty() {
            f.notes
                .push(format!("{id}: all {} threshold(s) pass", results.len()));
        } else if in_use(m, s) {
            failed = true;
            f.issues
                .push(format!("{id} is in use while {}", failing.join("; ")));
        } else {
            f.notes
                .push(format!("{id}: approval blocked: {}", failing.join("; ")));
        }
    }
    f.summary = format!("{} evidence gate(s) defined.", s.gates.len());
    let evidenced = !s.gates.is_empty();
    f.settle(failed, evidenced, FindingStatus::NotApplicable)
}

/// Metrics that measure drift.
fn is_drift_metric(metric: &str) -> bool {
    metric == "psi" || metric.starts_with("drift")
}

pub fn drift_monitoring(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::DriftMonitoring);
    for m in s.sorted_models().into_iter().filter(|m| high_risk(m)) {
        let newest = m
            .spec
            .evaluations
            .iter()
            .filter(|e| is_drift_metric(&e.metric))
            .max_by_key(|e| e.date);
        match newest {
            Some(e) => {
                let age = (s.now.date_naive() - e.date).num_days();
                f.object(
                    MODEL,
                    ns(m),
                    name(m),
                    format!(
                        "{} = {} on {} ({}, {age} days before the report)",
                        e.metric, e.value, e.dataset, e.date
                    ),
                );
            }
            None => f.issues.push(format!(
                "{}: high-risk model without a drift measurement (metric psi or drift-*)",
                id_of(&m.metadata)
            )),
        }
    }
    f.summary = format!(
        "{} high-risk model(s) with drift measurements.",
        f.objects.len()
    );
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::NotApplicable)
}

pub fn approvals(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::Approvals);
    let mut failed = false;
    for m in s.sorted_models() {
        let approval = approval_of(m, &s.approvals);
        let id = id_of(&m.metadata);
        match approval.state {
            ApprovalState::NotRequired => continue,
            ApprovalState::Pending | ApprovalState::Rejected => {
                f.object(
                    MODEL,
                    ns(m),
                    name(m),
                    format!(
                        "risk {}: approval {}, so the model cannot be used",
                        risk_level(m).as_str(),
                        approval.state.as_str()
                    ),
                );
            }
            ApprovalState::Approved => match (&approval.approver, &approval.request) {
                (Some(approver), Some(request)) => {
                    if approval.requester.as_ref() == Some(approver) {
                        failed = true;
                        f.issues
                            .push(format!("{id}: approved by its own requester {approver}"));
                    }
                    let namespace = m.metadata.namespace.as_deref().unwrap_or("default");
                    f.approvers.push(ApproverRef {
                        target: format!("ModelDeployment {id}"),
                        request: format!("{namespace}/{request}"),
                        decision: "Approved".into(),
                        approver: approver.clone(),
                        requester: approval.requester.clone().unwrap_or_else(|| "-".into()),
                        record: approval_record(s, request),
                    });
                }
                _ => f.issues.push(format!(
                    "{id}: approved, but no ApprovalRequest with its approver is in the evidence"
                )),
            },
        }
    }
    held_request_approvals(s, &mut f);
    f.records = ranges(s.records(), "approval records", |r| {
        r.kind == RecordKind::Approval
    });
    f.summary = format!(
        "{} approval decision(s) with named approvers.",
        f.approvers.len()
    );
    let evidenced = !f.approvers.is_empty() || !f.objects.is_empty();
    f.settle(failed, evidenced, FindingStatus::NotApplicable)
}

/// Decisions on requests held by a RequireApproval rule.
fn held_request_approvals(s: &Snapshot, f: &mut Finding) {
    for a in &s.approvals {
        if a.spec.target.kind != ApprovalTargetKind::Request {
            continue;
        }
        let Some(decision) = &a.spec.decision else {
            continue;
        };
        let request = a.metadata.name.clone().unwrap_or_default();
        let phase = a.status.as_ref().and_then(|st| st.phase);
        f.approvers.push(ApproverRef {
            target: format!(
                "request {}",
                a.spec.target.request_id.as_deref().unwrap_or("-")
            ),
            request: id_of(&a.metadata),
            decision: phase
                .map(ApprovalPhase::as_str)
                .unwrap_or(match decision.state {
                    policybind_crds::approval_request::DecisionState::Approved => "Approved",
                    policybind_crds::approval_request::DecisionState::Rejected => "Rejected",
                })
                .to_string(),
            approver: decision.approver.clone(),
            requester: a.spec.requester.clone(),
            record: approval_record(s, &request),
        });
    }
}

/// `writer:seq` of the first Approval record about an ApprovalRequest, if the trail
/// has one: the webhook's (it names the ApprovalRequest as the admitted object) or the
/// operator's (detail `approvalRequest`).
fn approval_record(s: &Snapshot, request: &str) -> Option<String> {
    let about = |r: &&policybind_engine::audit::AuditRecord| {
        let detail = |key: &str| r.detail.get(key).map(String::as_str);
        r.kind == RecordKind::Approval
            && (detail("approvalRequest") == Some(request)
                || (detail("kind") == Some("ApprovalRequest") && detail("name") == Some(request)))
    };
    s.trail
        .iter()
        .flat_map(|t| t.records.iter())
        .filter(about)
        .min_by_key(|r| r.time)
        .map(|r| format!("{}:{}", r.writer, r.seq))
}

pub fn reviews(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::Reviews);
    let mut failed = false;
    let mut current = 0;
    for m in s.sorted_models() {
        let id = id_of(&m.metadata);
        let Some(due) = next_review(m) else {
            f.issues.push(format!(
                "{id}: no review date known (set spec.lastReviewedAt)"
            ));
            continue;
        };
        let due_day = due.format("%Y-%m-%d");
        if due >= s.now {
            current += 1;
            let auto = if m.spec.suspend_when_review_overdue {
                "; suspended automatically when overdue"
            } else {
                ""
            };
            let detail = format!(
                "reviewed every {} days; next review due {due_day}{auto}",
                m.spec.review_interval_days
            );
            f.object(MODEL, ns(m), name(m), detail);
        } else if m.spec.suspended {
            let detail = format!("review overdue since {due_day}; suspended, so not in use");
            f.object(MODEL, ns(m), name(m), detail);
        } else {
            failed = true;
            f.issues.push(format!(
                "{id}: review overdue since {due_day} and the model is in use"
            ));
        }
    }
    f.summary = format!(
        "{current} of {} model(s) within their review schedule.",
        s.models.len()
    );
    let evidenced = !f.objects.is_empty();
    f.settle(failed, evidenced, FindingStatus::NotApplicable)
}

pub fn suspension(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::Suspension);
    let mut automatic = 0;
    for m in s.sorted_models() {
        if m.spec.suspended {
            f.object(
                MODEL,
                ns(m),
                name(m),
                "suspended: every request is denied with MODEL_SUSPENDED".into(),
            );
        }
        automatic += usize::from(m.spec.suspend_when_review_overdue);
    }
    f.notes.push(format!(
        "every model can be stopped at once with spec.suspended; {automatic} model(s) are suspended automatically when their review is overdue"
    ));
    f.records = ranges(s.records(), "requests denied MODEL_SUSPENDED", |r| {
        r.kind == RecordKind::Decision
            && r.codes.first().map(String::as_str) == Some("MODEL_SUSPENDED")
    });
    f.records.extend(ranges(
        s.records(),
        "model suspension lifecycle records",
        |r| {
            r.kind == RecordKind::Lifecycle
                && r.detail
                    .get("transition")
                    .is_some_and(|t| t.starts_with("model-suspended"))
        },
    ));
    f.summary = format!("{} model(s) suspended now.", f.objects.len());
    let evidenced = !s.models.is_empty();
    f.settle(false, evidenced, FindingStatus::NotApplicable)
}
