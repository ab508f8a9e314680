//! A model's compliance per framework and the `Compliant` condition.
mod support;

use policybind_compliance::assess::{self, ModelFacts};
use policybind_compliance::gates;
use policybind_crds::approval_request::DecisionState;
use policybind_crds::model_deployment::{
    ApprovalState, EuAiActCategory, Framework, FrameworkCompliance,
};
use policybind_crds::{ModelDeployment, RiskLevel};
use support::*;

fn now() -> chrono::DateTime<chrono::Utc> {
    at("2026-12-01T00:00:00Z")
}

fn compliance(
    m: &ModelDeployment,
    approval: ApprovalState,
    gate_list: &[policybind_crds::EvidenceGate],
) -> Vec<FrameworkCompliance> {
    let results = gates::evaluate(m, gate_list, now());
    assess::model_compliance(&ModelFacts {
        model: m,
        approval,
        gate_results: &results,
        next_review_at: assess::next_review(m),
        now: now(),
    })
}

fn of(list: &[FrameworkCompliance], framework: Framework) -> &FrameworkCompliance {
    list.iter().find(|c| c.framework == framework).unwrap()
}

fn fairness_gate() -> policybind_crds::EvidenceGate {
    gate("high-risk-release").min_risk(RiskLevel::High).max(
        "fairness",
        "subgroup-fairness-delta",
        0.05,
    )
}

#[test]
fn a_documented_approved_high_risk_model_with_passing_gates_is_compliant_everywhere() {
    let m = model("finance", "credit")
        .risk(RiskLevel::High)
        .eu(EuAiActCategory::High)
        .documented()
        .eval("subgroup-fairness-delta", 0.02, "holdout", "2026-11-01")
        .reviewed("2026-11-01T00:00:00Z");
    let list = compliance(&m, ApprovalState::Approved, &[fairness_gate()]);
    assert!(list.iter().all(|c| c.compliant), "{list:?}");
    let (status, reason, message) = assess::compliant_condition(&list);
    assert!(status);
    assert_eq!(reason, "AllFrameworksCompliant");
    assert_eq!(
        message,
        "compliant with eu-ai-act, nist-ai-rmf, iso-42001, soc2"
    );
}

#[test]
fn a_failing_gate_is_the_reason_with_the_gate_and_its_value() {
    let m = model("finance", "credit")
        .risk(RiskLevel::High)
        .eu(EuAiActCategory::High)
        .documented()
        .eval("subgroup-fairness-delta", 0.07, "holdout", "2026-11-01")
        .reviewed("2026-11-01T00:00:00Z");
    let list = compliance(&m, ApprovalState::Pending, &[fairness_gate()]);
    let eu = of(&list, Framework::EuAiAct);
    assert_eq!(eu.reason, "EvidenceGateFailed");
    assert!(
        eu.message
            .contains("gate high-risk-release/fairness failed: subgroup-fairness-delta = 0.07"),
        "{}",
        eu.message
    );
    assert!(
        eu.message
            .contains("risk level High needs an approved ApprovalRequest; approval is Pending"),
        "{}",
        eu.message
    );
    let soc2 = of(&list, Framework::Soc2);
    assert_eq!(
        soc2.reason, "ApprovalMissing",
        "SOC 2 asks for the approval, not for the gates"
    );
    let (status, reason, message) = assess::compliant_condition(&list);
    assert!(!status);
    assert_eq!(reason, "EvidenceGateFailed");
    assert!(
        message
            .starts_with("eu-ai-act: EvidenceGateFailed (gate high-risk-release/fairness failed"),
        "{message}"
    );
    assert!(message.contains("; soc2: ApprovalMissing ("), "{message}");
}

#[test]
fn the_eu_ai_act_needs_a_category_and_refuses_prohibited_practices() {
    let m = model("a", "m").reviewed("2026-11-01T00:00:00Z");
    assert_eq!(
        of(
            &compliance(&m, ApprovalState::NotRequired, &[]),
            Framework::EuAiAct
        )
        .reason,
        "RiskCategoryMissing"
    );
    let m = model("a", "m")
        .eu(EuAiActCategory::Prohibited)
        .documented()
        .reviewed("2026-11-01T00:00:00Z");
    assert_eq!(
        of(
            &compliance(&m, ApprovalState::NotRequired, &[]),
            Framework::EuAiAct
        )
        .reason,
        "ProhibitedPractice"
    );
}

#[test]
fn an_eu_high_risk_model_that_needs_no_approval_in_policybind_is_flagged() {
    let m = model("a", "m")
        .eu(EuAiActCategory::High)
        .documented()
        .eval("accuracy", 0.9, "d", "2026-11-01")
        .reviewed("2026-11-01T00:00:00Z");
    let eu = of(
        &compliance(&m, ApprovalState::NotRequired, &[]),
        Framework::EuAiAct,
    )
    .clone();
    assert_eq!(eu.reason, "ApprovalMissing");
    assert!(
        eu.message.contains("set spec.risk.level to High"),
        "{}",
        eu.message
    );
}

#[test]
fn missing_governance_fields_are_named_in_order() {
    let m = model("a", "m")
        .risk(RiskLevel::High)
        .eu(EuAiActCategory::High)
        .reviewed("2026-11-01T00:00:00Z");
    let eu = of(
        &compliance(&m, ApprovalState::Approved, &[]),
        Framework::EuAiAct,
    )
    .clone();
    assert_eq!(eu.reason, "IntendedPurposeMissing");
    for missing in [
        "intendedPurpose is not set",
        "roles names no Provider and no Deployer",
        "dataSources is empty",
        "no spec.evaluations",
    ] {
        assert!(eu.message.contains(missing), "{missing}: {}", eu.message);
    }
}

#[test]
fn an_overdue_review_makes_every_framework_non_compliant() {
    let m = model("a", "m")
        .eu(EuAiActCategory::Minimal)
        .documented()
        .reviewed("2026-06-01T00:00:00Z");
    let list = compliance(&m, ApprovalState::NotRequired, &[]);
    for c in &list {
        assert!(!c.compliant, "{c:?}");
        assert!(c.message.contains("review was due 2026-08-30"), "{c:?}");
    }
    assert_eq!(of(&list, Framework::Soc2).reason, "ReviewOverdue");
}

#[test]
fn approval_comes_from_the_decided_approval_request_when_no_status_exists() {
    let m = model("support", "agent").risk(RiskLevel::Critical);
    let approved = approval(
        "support",
        "agent",
        "board@example.com",
        DecisionState::Approved,
    );
    let a = assess::approval_of(&m, &[approved]);
    assert_eq!(a.state, ApprovalState::Approved);
    assert_eq!(a.approver.as_deref(), Some("board@example.com"));
    assert_eq!(a.requester.as_deref(), Some("requester@example.com"));
    let elsewhere = approval(
        "other-namespace",
        "agent",
        "board@example.com",
        DecisionState::Approved,
    );
    assert_eq!(
        assess::approval_of(&m, &[elsewhere]).state,
        ApprovalState::Pending,
        "an approval in another namespace does not count"
    );
    let rejected = approval(
        "support",
        "agent",
        "board@example.com",
        DecisionState::Rejected,
    );
    assert_eq!(
        assess::approval_of(&m, &[rejected]).state,
        ApprovalState::Rejected
    );
    assert_eq!(
        assess::approval_of(&model("a", "low"), &[]).state,
        ApprovalState::NotRequired
    );
}
