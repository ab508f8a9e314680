//! Evidence gates: what passes, what fails, and the exact messages admission shows.
mod support;

use policybind_compliance::gates::{self, Outcome};
use policybind_crds::RiskLevel;
use policybind_crds::model_deployment::EuAiActCategory;
use support::*;

fn now() -> chrono::DateTime<chrono::Utc> {
    at("2026-12-01T00:00:00Z")
}

fn release_gate() -> policybind_crds::EvidenceGate {
    gate("high-risk-release")
        .min_risk(RiskLevel::High)
        .max("fairness", "subgroup-fairness-delta", 0.05)
        .aged(180)
}

#[test]
fn a_result_within_the_threshold_passes() {
    let m = model("finance", "credit").risk(RiskLevel::High).eval(
        "subgroup-fairness-delta",
        0.03,
        "holdout",
        "2026-11-01",
    );
    let results = gates::evaluate(&m, &[release_gate()], now());
    assert_eq!(results.len(), 1);
    assert!(results[0].passed(), "{}", results[0]);
    assert_eq!(gates::denial_message(&m, &results), None);
}

#[test]
fn a_value_above_the_maximum_fails_naming_the_gate_and_its_value() {
    let m = model("finance", "credit").risk(RiskLevel::High).eval(
        "subgroup-fairness-delta",
        0.07,
        "holdout",
        "2026-11-03",
    );
    let results = gates::evaluate(&m, &[release_gate()], now());
    assert_eq!(
        results[0].to_string(),
        "gate high-risk-release/fairness failed: subgroup-fairness-delta = 0.07 is above the maximum 0.05 (dataset holdout, 2026-11-03, source eval run 1)"
    );
    assert_eq!(
        gates::denial_message(&m, &results).unwrap(),
        "ModelDeployment finance/credit cannot be approved: 1 evidence gate threshold fails: gate high-risk-release/fairness failed: subgroup-fairness-delta = 0.07 is above the maximum 0.05 (dataset holdout, 2026-11-03, source eval run 1)"
    );
}

#[test]
fn a_value_below_the_minimum_fails() {
    let g = gate("quality").min("accuracy", "accuracy", 0.9);
    let m = model("a", "m").eval("accuracy", 0.87, "holdout", "2026-11-03");
    let r = &gates::evaluate(&m, &[g], now())[0];
    assert!(matches!(r.outcome, Outcome::BelowMinimum { min, .. } if min == 0.9));
    assert!(
        r.to_string()
            .contains("accuracy = 0.87 is below the minimum 0.9"),
        "{r}"
    );
}

#[test]
fn no_result_for_the_metric_fails_closed() {
    let m = model("finance", "credit").risk(RiskLevel::High);
    let r = &gates::evaluate(&m, &[release_gate()], now())[0];
    assert_eq!(
        r.to_string(),
        "gate high-risk-release/fairness failed: no evaluation result for metric subgroup-fairness-delta"
    );
}

#[test]
fn a_threshold_on_a_dataset_ignores_results_on_other_datasets() {
    let g = gate("g")
        .max("drift", "psi", 0.2)
        .on_dataset("prod-traffic");
    let m = model("a", "m").eval("psi", 0.01, "synthetic", "2026-11-20");
    let r = &gates::evaluate(&m, &[g], now())[0];
    assert_eq!(
        r.to_string(),
        "gate g/drift failed: no evaluation result for metric psi on dataset prod-traffic"
    );
}

#[test]
fn a_stale_result_fails_even_when_its_value_passes() {
    let m = model("finance", "credit").risk(RiskLevel::High).eval(
        "subgroup-fairness-delta",
        0.01,
        "holdout",
        "2026-01-02",
    );
    let r = &gates::evaluate(&m, &[release_gate()], now())[0];
    assert!(
        matches!(
            r.outcome,
            Outcome::Stale {
                age_days: 333,
                max_age_days: 180,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        r.to_string()
            .contains("is 333 days old; the gate accepts at most 180"),
        "{r}"
    );
}

#[test]
fn the_newest_result_decides_not_the_best() {
    let m = model("finance", "credit")
        .risk(RiskLevel::High)
        .eval("subgroup-fairness-delta", 0.01, "holdout", "2026-10-01")
        .eval("subgroup-fairness-delta", 0.09, "holdout", "2026-11-01");
    assert!(!gates::evaluate(&m, &[release_gate()], now())[0].passed());
    let m = model("finance", "credit")
        .risk(RiskLevel::High)
        .eval("subgroup-fairness-delta", 0.09, "holdout", "2026-10-01")
        .eval("subgroup-fairness-delta", 0.01, "holdout", "2026-11-01");
    assert!(gates::evaluate(&m, &[release_gate()], now())[0].passed());
}

#[test]
fn of_two_results_on_one_day_the_later_entry_decides() {
    let m = model("finance", "credit")
        .risk(RiskLevel::High)
        .eval("subgroup-fairness-delta", 0.01, "holdout", "2026-11-01")
        .eval("subgroup-fairness-delta", 0.09, "holdout", "2026-11-01");
    assert!(!gates::evaluate(&m, &[release_gate()], now())[0].passed());
}

#[test]
fn a_value_that_is_not_a_number_fails() {
    let m = model("finance", "credit").risk(RiskLevel::High).eval(
        "subgroup-fairness-delta",
        f64::NAN,
        "holdout",
        "2026-11-01",
    );
    let r = &gates::evaluate(&m, &[release_gate()], now())[0];
    assert!(matches!(r.outcome, Outcome::NotANumber { .. }));
}

#[test]
fn a_gate_applies_only_to_the_models_it_selects() {
    let low = model("finance", "chat").risk(RiskLevel::Low);
    assert!(gates::evaluate(&low, &[release_gate()], now()).is_empty());
    let by_category = gate("eu")
        .categories(&[EuAiActCategory::High])
        .min("accuracy", "accuracy", 0.8);
    assert!(
        gates::evaluate(&model("a", "m"), std::slice::from_ref(&by_category), now()).is_empty(),
        "no category: a category gate does not apply"
    );
    assert_eq!(
        gates::evaluate(
            &model("a", "m").eu(EuAiActCategory::High),
            &[by_category],
            now()
        )
        .len(),
        1
    );
    let by_namespace = gate("ns")
        .namespaces(&["team-*"])
        .min("accuracy", "accuracy", 0.8);
    assert_eq!(
        gates::evaluate(
            &model("team-a", "m"),
            std::slice::from_ref(&by_namespace),
            now()
        )
        .len(),
        1
    );
    assert!(gates::evaluate(&model("finance", "m"), &[by_namespace], now()).is_empty());
}

#[test]
fn a_gate_with_an_invalid_namespace_glob_applies_to_nothing() {
    let broken = gate("broken")
        .namespaces(&["team-[a"])
        .min("accuracy", "accuracy", 0.8);
    assert!(gates::evaluate(&model("team-a", "m"), &[broken], now()).is_empty());
}

#[test]
fn a_prohibited_practice_fails_the_built_in_gate_without_any_evidence_gate() {
    let m = model("hr", "emotion-reader")
        .eu(EuAiActCategory::Prohibited)
        .eval("accuracy", 0.99, "x", "2026-11-01");
    let results = gates::evaluate(&m, &[], now());
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].id(), "eu-ai-act/prohibited-practice");
    assert!(
        gates::denial_message(&m, &results)
            .unwrap()
            .contains("a prohibited practice can never be approved")
    );
}

#[test]
fn results_come_in_gate_name_order_and_every_failure_is_in_the_message() {
    let gates_ = [
        gate("zeta").max("drift", "psi", 0.2),
        gate("alpha")
            .max("fairness", "subgroup-fairness-delta", 0.05)
            .min("quality", "accuracy", 0.9),
    ];
    let m = model("a", "m").eval("psi", 0.5, "d", "2026-11-01").eval(
        "accuracy",
        0.95,
        "d",
        "2026-11-01",
    );
    let results = gates::evaluate(&m, &gates_, now());
    let ids: Vec<String> = results.iter().map(|r| r.id()).collect();
    assert_eq!(ids, ["alpha/fairness", "alpha/quality", "zeta/drift"]);
    let message = gates::denial_message(&m, &results).unwrap();
    assert!(
        message.contains(": 2 evidence gate thresholds fail: gate alpha/fairness failed"),
        "{message}"
    );
    assert!(
        message.contains("; gate zeta/drift failed: psi = 0.5 is above the maximum 0.2"),
        "{message}"
    );
}
