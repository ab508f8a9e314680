//! The pod's decision summary: every request decision counted by policy, rule
//! and OpenReports result, with the latest examples
//! ([`policybind_crds::summary`]). The usage reporter publishes it in the pod's
//! usage report (data key [`policybind_crds::wire::keys::DECISIONS`]), and the
//! operator turns the summaries of a namespace into its `policybind-requests`
//! Report (docs/operator.md, "Reports").
//!
//! Mapping: Allow is `pass`; Deny, and every refusal by PolicyBind's own checks
//! (unknown token, rate, budget, route, output), is `fail`; Redact, Degrade and
//! RequireApproval are `warn`; a request that could not be decided or honoured
//! (no policy set in force, the audit trail down, the enforcement point
//! overloaded or the upstream failing) is `error`. A decision no AIPolicy made
//! counts under [`BUILT_IN_POLICY`] with the stage as its rule.

use chrono::{DateTime, Utc};
use policybind_crds::Effect;
use policybind_crds::summary::{
    BUILT_IN_POLICY, DecisionTally, Example, ReportResult, SummaryKey, subject_hash,
};
use policybind_engine::request::{Decision, Stage as DecisionStage};

use crate::refusal::{Refusal, Stage};

/// The OpenReports result of an effect the engine decided.
pub fn result_of_effect(effect: Effect) -> ReportResult {
    match effect {
        Effect::Allow => ReportResult::Pass,
        Effect::Deny => ReportResult::Fail,
        Effect::Redact | Effect::Degrade | Effect::RequireApproval => ReportResult::Warn,
    }
}

/// The OpenReports result of a refusal at `stage` (not the engine's decision).
pub fn result_of_refusal(stage: Stage) -> ReportResult {
    match stage {
        Stage::PolicySet | Stage::Audit | Stage::Failure => ReportResult::Error,
        _ => ReportResult::Fail,
    }
}

fn decision_stage(stage: DecisionStage) -> &'static str {
    match stage {
        DecisionStage::Token => "token",
        DecisionStage::Registry => "registry",
        DecisionStage::Policy => "policy",
        DecisionStage::Default => "default",
    }
}

/// Counts a request the pipeline finished: the engine's decision, or the
/// refusal that came after it.
pub fn record(
    tally: &DecisionTally,
    decision: &Decision,
    refusal: Option<&Refusal>,
    now: DateTime<Utc>,
) {
    let example = |code: &str| Example {
        time: now,
        code: code.to_string(),
        model: Some(decision.facts.model.clone()).filter(|m| !m.is_empty()),
        subject: decision.facts.subject.as_deref().map(subject_hash),
        object: None,
    };
    match refusal {
        Some(refusal) if refusal.stage != Stage::Decision => tally.record(
            built_in(refusal.stage.as_str(), result_of_refusal(refusal.stage)),
            example(&refusal.code),
        ),
        _ => {
            let key = match (&decision.policy, &decision.rule) {
                (Some(policy), rule) => SummaryKey::local(
                    policy.clone(),
                    rule.clone().unwrap_or_default(),
                    result_of_effect(decision.effect),
                ),
                (None, _) => built_in(
                    decision_stage(decision.stage),
                    result_of_effect(decision.effect),
                ),
            };
            tally.record(key, example(decision.code()));
        }
    }
}

/// Counts a request refused before the pipeline: before anyone was
/// identified, or because it could not be read.
pub fn record_early_refusal(
    tally: &DecisionTally,
    stage: Stage,
    code: &str,
    model: Option<&str>,
    now: DateTime<Utc>,
) {
    tally.record(
        built_in(stage.as_str(), result_of_refusal(stage)),
        Example {
            time: now,
            code: code.to_string(),
            model: model.map(str::to_string),
            subject: None,
            object: None,
        },
    );
}

fn built_in(rule: &str, result: ReportResult) -> SummaryKey {
    SummaryKey::local(BUILT_IN_POLICY, rule, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_and_refusals_map_to_openreports_results() {
        assert_eq!(result_of_effect(Effect::Allow), ReportResult::Pass);
        assert_eq!(result_of_effect(Effect::Deny), ReportResult::Fail);
        for effect in [Effect::Redact, Effect::Degrade, Effect::RequireApproval] {
            assert_eq!(result_of_effect(effect), ReportResult::Warn);
        }
        assert_eq!(result_of_refusal(Stage::Budget), ReportResult::Fail);
        assert_eq!(result_of_refusal(Stage::Authentication), ReportResult::Fail);
        for stage in [Stage::PolicySet, Stage::Audit, Stage::Failure] {
            assert_eq!(result_of_refusal(stage), ReportResult::Error);
        }
    }

    #[test]
    fn an_unidentified_refusal_counts_under_the_built_in_policy() {
        let tally = DecisionTally::new(Utc::now());
        record_early_refusal(
            &tally,
            Stage::Authentication,
            "TOKEN_UNKNOWN",
            None,
            Utc::now(),
        );
        let entry = &tally.snapshot().entries[0];
        assert_eq!(entry.policy, BUILT_IN_POLICY);
        assert_eq!(entry.rule, "authentication");
        assert_eq!(entry.result, ReportResult::Fail);
        assert_eq!(entry.codes["TOKEN_UNKNOWN"], 1);
    }
}
