//! EvidenceGate (cluster-wide): thresholds a model's evaluation results must meet
//! before it may be approved.
//!
//! A gate is a release criterion set by whoever owns AI risk, not by the teams whose
//! models it gates. That is why it is its own cluster-scoped kind rather than a
//! section of AIPolicy/ClusterAIPolicy: a namespace admin cannot create, loosen or
//! delete one (a RoleBinding cannot grant a cluster-scoped resource); gates are
//! evaluated when an approval is decided and by the operator's `Compliant`
//! condition, never per request, so they stay out of the sidecars' policy bundles
//! and changing one does not change every bundle's fingerprint; and a gate needs no
//! request rules. Every gate that applies to a model must pass (gates only add up),
//! and a missing or stale result fails its threshold: no evidence, no approval.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::RiskLevel;
use crate::model_deployment::EuAiActCategory;

/// Thresholds on evaluation results that models must meet before approval.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "EvidenceGate",
    doc = "EvidenceGate: thresholds on evaluation results (quality, fairness, harmful output, drift) that a ModelDeployment must meet before an approval can be granted.",
    plural = "evidencegates",
    shortname = "aigate",
    category = "policybind",
    status = "EvidenceGateStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Min-Risk","type":"string","jsonPath":".spec.appliesTo.minRiskLevel"}"#,
    printcolumn = r#"{"name":"Thresholds","type":"integer","jsonPath":".status.thresholdCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.thresholds.all(t, self.thresholds.exists_one(u, u.name == t.name))", "message": "threshold names must be unique within a gate"},
]))]
pub struct EvidenceGateSpec {
    /// What this gate protects, shown to people reading it and in denial messages' context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Which ModelDeployments the gate applies to. All given fields must match (AND); a list
    /// matches when any entry does (OR). Empty: every ModelDeployment.
    #[serde(default, skip_serializing_if = "GateSelector::is_empty")]
    pub applies_to: GateSelector,
    /// Thresholds, each on one metric. All must pass.
    #[schemars(length(min = 1, max = 32))]
    pub thresholds: Vec<GateThreshold>,
}

/// Which models a gate applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateSelector {
    /// Exact PolicyBind risk levels (the manual `risk.level`, else the computed one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub risk_levels: Vec<RiskLevel>,
    /// Models at or above this risk level (Low < Medium < High < Critical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_risk_level: Option<RiskLevel>,
    /// EU AI Act categories (`spec.governance.euAiActCategory`); a model without one never
    /// matches a gate that lists categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub eu_ai_act_categories: Vec<EuAiActCategory>,
    /// Namespaces (names or globs such as `team-*`) of the ModelDeployments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
}

impl GateSelector {
    pub fn is_empty(&self) -> bool {
        self == &GateSelector::default()
    }
}

/// One threshold: the newest result of `metric` must lie within `min`..=`max`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.min) || has(self.max)", "message": "a threshold needs min or max"},
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max"},
]))]
pub struct GateThreshold {
    /// Name, unique within the gate; denial messages say `<gate>/<name>`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// Metric as evaluation results name it (`spec.evaluations[].metric`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?$")
    )]
    pub metric: String,
    /// Lowest passing value (inclusive), for metrics where higher is better (accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest passing value (inclusive), for metrics where lower is better (fairness
    /// delta, harmful-output rate, drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Only results measured on this data set count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub dataset: Option<String>,
    /// A newest result older than this many days fails the threshold (evidence goes stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub max_age_days: Option<u32>,
}

/// Status of an EvidenceGate, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceGateStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the gate was read and is applied to approvals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_count: Option<u32>,
}
