//! Evidence gates: thresholds a model's evaluation results must meet before it may
//! be approved.
//!
//! [`evaluate`] is the one function the webhook (deny an approval while a gate
//! fails), the operator (the `Compliant` condition) and reports call. It fails
//! closed: a threshold with no matching result, a stale result or a value that is
//! not a number fails, and a model classified as an EU AI Act prohibited practice
//! fails a built-in gate that no EvidenceGate can lift.
//!
//! Messages have one documented shape (`docs/compliance.md`, "Evidence gates"):
//! `gate <gate>/<threshold> failed: <metric> = <value> is above the maximum <max>
//! (dataset <d>, <date>, source <s>)`, and [`denial_message`] joins the failures
//! into the admission message.
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use policybind_crds::evidence_gate::GateThreshold;
use policybind_crds::model_deployment::{EuAiActCategory, EvaluationResult};
use policybind_crds::{EvidenceGate, ModelDeployment, RiskLevel};
use serde::Serialize;

/// Admission code of a denial because a gate fails (the webhook's response and its
/// audit record carry it).
pub const DENIAL_CODE: &str = "EVIDENCE_GATE_FAILED";
/// Gate name of the built-in EU AI Act prohibited-practice gate.
pub const PROHIBITED_GATE: &str = "eu-ai-act";
/// Threshold name of the built-in EU AI Act prohibited-practice gate.
pub const PROHIBITED_THRESHOLD: &str = "prohibited-practice";

/// The outcome of one threshold for one model.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// EvidenceGate name, or [`PROHIBITED_GATE`] for the built-in gate.
    pub gate: String,
    /// Threshold name within the gate.
    pub threshold: String,
    /// Metric the threshold reads (none for the built-in gate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// What was found.
    pub outcome: Outcome,
}

/// What a threshold found.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Outcome {
    /// The newest result lies within the bounds.
    Passed {
        evaluation: EvaluationResult,
        bounds: Bounds,
    },
    /// The newest result is below `min`.
    BelowMinimum {
        evaluation: EvaluationResult,
        min: f64,
    },
    /// The newest result is above `max`.
    AboveMaximum {
        evaluation: EvaluationResult,
        max: f64,
    },
    /// The newest result's value is not a number.
    NotANumber { evaluation: EvaluationResult },
    /// The newest result is older than the threshold accepts.
    Stale {
        evaluation: EvaluationResult,
        age_days: i64,
        max_age_days: u32,
    },
    /// No result of the metric (on the dataset, if the threshold names one).
    Missing { dataset: Option<String> },
    /// The model is classified as a prohibited practice.
    Prohibited,
}

/// A threshold's bounds, for reports.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl GateResult {
    /// Whether the threshold passes.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Passed { .. })
    }

    /// `<gate>/<threshold>`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.gate, self.threshold)
    }
}

fn provenance(e: &EvaluationResult) -> String {
    format!("dataset {}, {}, source {}", e.dataset, e.date, e.source)
}

impl fmt::Display for GateResult {
    /// The exact message format documented in `docs/compliance.md`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id();
        let metric = self.metric.as_deref().unwrap_or("-");
        match &self.outcome {
            Outcome::Passed { evaluation, bounds } => {
                let limits = match (bounds.min, bounds.max) {
                    (Some(min), Some(max)) => format!("{min}..={max}"),
                    (Some(min), None) => format!("minimum {min}"),
                    (None, Some(max)) => format!("maximum {max}"),
                    (None, None) => "no bound".to_string(),
                };
                write!(
                    f,
                    "gate {id} passed: {metric} = {} within {limits} ({})",
                    evaluation.value,
                    provenance(evaluation)
                )
            }
            Outcome::BelowMinimum { evaluation, min } => write!(
                f,
                "gate {id} failed: {metric} = {} is below the minimum {min} ({})",
                evaluation.value,
                provenance(evaluation)
            ),
            Outcome::AboveMaximum { evaluation, max } => write!(
                f,
                "gate {id} failed: {metric} = {} is above the maximum {max} ({})",
                evaluation.value,
                provenance(evaluation)
            ),
            Outcome::NotANumber { evaluation } => write!(
                f,
                "gate {id} failed: {metric} is not a number ({})",
                provenance(evaluation)
            ),
            Outcome::Stale {
                evaluation,
                age_days,
                max_age_days,
            } => write!(
                f,
                "gate {id} failed: the newest {metric} result ({} on {}) is {age_days} days old; the gate accepts at most {max_age_days}",
                evaluation.value, evaluation.date
            ),
            Outcome::Missing { dataset: None } => {
                write!(
                    f,
                    "gate {id} failed: no evaluation result for metric {metric}"
                )
            }
            Outcome::Missing {
                dataset: Some(dataset),
            } => write!(
                f,
                "gate {id} failed: no evaluation result for metric {metric} on dataset {dataset}"
            ),
            Outcome::Prohibited => write!(
                f,
                "gate {id} failed: EU AI Act category Prohibited; a prohibited practice can never be approved"
            ),
        }
    }
}

/// The risk level a gate selects on: the operator's status when present, else the
/// level computed from the spec (the manual level wins, as the operator does it).
pub fn risk_level(model: &ModelDeployment) -> RiskLevel {
    model
        .status
        .as_ref()
        .and_then(|s| s.risk_level)
        .unwrap_or_else(|| policybind_engine::risk::assess(&model.spec.risk).level)
}

/// The model's EU AI Act category, if recorded.
pub fn eu_category(model: &ModelDeployment) -> Option<EuAiActCategory> {
    model
        .spec
        .governance
        .as_ref()
        .and_then(|g| g.eu_ai_act_category)
}

/// Whether `gate` applies to `model`.
pub fn applies(gate: &EvidenceGate, model: &ModelDeployment) -> bool {
    let selector = &gate.spec.applies_to;
    let level = risk_level(model);
    let level_ok = (selector.risk_levels.is_empty() || selector.risk_levels.contains(&level))
        && selector.min_risk_level.is_none_or(|min| level >= min);
    let category_ok = selector.eu_ai_act_categories.is_empty()
        || eu_category(model).is_some_and(|c| selector.eu_ai_act_categories.contains(&c));
    let namespace = model.metadata.namespace.as_deref().unwrap_or("default");
    // An invalid glob matches nothing rather than everything: the gate is then
    // reported as not applying, which reports show, instead of silently widening.
    let namespace_ok = selector.namespaces.is_empty()
        || policybind_engine::selector::glob_set(&selector.namespaces)
            .is_ok_and(|set| set.is_match(namespace));
    level_ok && category_ok && namespace_ok
}

/// Every threshold of every gate that applies to `model`, in gate-name order, plus
/// the built-in prohibited-practice gate when the model is classified Prohibited.
/// `now` ages results for `maxAgeDays` (the function never reads a clock).
pub fn evaluate(
    model: &ModelDeployment,
    gates: &[EvidenceGate],
    now: DateTime<Utc>,
) -> Vec<GateResult> {
    let mut results = Vec::new();
    if eu_category(model) == Some(EuAiActCategory::Prohibited) {
        results.push(GateResult {
            gate: PROHIBITED_GATE.to_string(),
            threshold: PROHIBITED_THRESHOLD.to_string(),
            metric: None,
            outcome: Outcome::Prohibited,
        });
    }
    let mut applicable: Vec<&EvidenceGate> = gates.iter().filter(|g| applies(g, model)).collect();
    applicable.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for gate in applicable {
        let gate_name = gate.metadata.name.clone().unwrap_or_default();
        for threshold in &gate.spec.thresholds {
            results.push(GateResult {
                gate: gate_name.clone(),
                threshold: threshold.name.clone(),
                metric: Some(threshold.metric.clone()),
                outcome: check(threshold, &model.spec.evaluations, now.date_naive()),
            });
        }
    }
    results
}

/// The newest result for the threshold's metric (and dataset); the later entry wins
/// a tie on the date, as a later line in the spec records a later measurement.
fn newest<'a>(
    threshold: &GateThreshold,
    evaluations: &'a [EvaluationResult],
) -> Option<&'a EvaluationResult> {
    evaluations
        .iter()
        .filter(|e| e.metric == threshold.metric)
        .filter(|e| threshold.dataset.as_ref().is_none_or(|d| &e.dataset == d))
        .fold(None, |best: Option<&EvaluationResult>, e| match best {
            Some(b) if b.date > e.date => Some(b),
            _ => Some(e),
        })
}

fn check(threshold: &GateThreshold, evaluations: &[EvaluationResult], today: NaiveDate) -> Outcome {
    let Some(evaluation) = newest(threshold, evaluations) else {
        return Outcome::Missing {
            dataset: threshold.dataset.clone(),
        };
    };
    let evaluation = evaluation.clone();
    let age_days = (today - evaluation.date).num_days();
    if let Some(max_age_days) = threshold.max_age_days
        && age_days > i64::from(max_age_days)
    {
        return Outcome::Stale {
            evaluation,
            age_days,
            max_age_days,
        };
    }
    let value = evaluation.value;
    if !value.is_finite() {
        return Outcome::NotANumber { evaluation };
    }
    if let Some(min) = threshold.min
        && value < min
    {
        return Outcome::BelowMinimum { evaluation, min };
    }
    if let Some(max) = threshold.max
        && value > max
    {
        return Outcome::AboveMaximum { evaluation, max };
    }
    Outcome::Passed {
        evaluation,
        bounds: Bounds {
            min: threshold.min,
            max: threshold.max,
        },
    }
}

/// The admission message when an approval must be denied, or `None` when every
/// gate passes. Shape: `ModelDeployment <ns>/<name> cannot be approved: <n> evidence
/// gate threshold(s) fail: <result>; <result>`.
pub fn denial_message(model: &ModelDeployment, results: &[GateResult]) -> Option<String> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(ToString::to_string)
        .collect();
    if failed.is_empty() {
        return None;
    }
    Some(format!(
        "ModelDeployment {}/{} cannot be approved: {} evidence gate threshold{} fail{}: {}",
        model.metadata.namespace.as_deref().unwrap_or("default"),
        model.metadata.name.as_deref().unwrap_or(""),
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        if failed.len() == 1 { "s" } else { "" },
        failed.join("; ")
    ))
}
