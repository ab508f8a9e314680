//! The facts a decision is made from ([`Request`]) and what comes out ([`Decision`]).
//!
//! Both are plain serde types: the sidecar builds a `Request` from an HTTP call,
//! `POST /v1/decide` accepts one as JSON, and `policybind eval` / `test` read
//! them from YAML. Field names are camelCase on the wire.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use policybind_crds::{BudgetPeriod, DataClassification, Effect, RiskLevel};
use serde::{Deserialize, Serialize};

use crate::detect::Finding;

/// Facts about one model request. Only `model` and `time` are required; missing
/// facts are filled from the token (subject, team, defaults) and the registry
/// (provider, region, risk, pricing) before policies are evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    /// Correlates the decision with logs and the audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// AccessToken id (`namespace/name`) the caller authenticated with. When set, the
    /// token's scope, schedule, expiry and budgets are checked first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Subject; defaults to the token's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Team; defaults to the token's team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Model as named in the request body.
    pub model: String,
    /// Provider; defaults to the registered model's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Declared use case; defaults to the token's default use case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
    /// Declared data classification; defaults to the token's default, else Internal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_classification: Option<DataClassification>,
    /// Region; defaults to the registered model's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Namespace the request is served in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// When the request is made. Time is an input: the engine never reads a clock.
    #[serde(default = "epoch")]
    pub time: DateTime<Utc>,
    /// Estimated prompt tokens.
    #[serde(default)]
    pub estimated_input_tokens: u64,
    /// Estimated completion tokens (usually `max_tokens`).
    #[serde(default)]
    pub estimated_output_tokens: u64,
    /// Estimated cost in US dollars; defaults to the model's pricing times the estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_usd: Option<f64>,
    /// Prompt text for the detectors. Scanned, never stored by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Usage already settled against each budget period of the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<UsageSoFar>,
    /// The request carries a reference to an approved ApprovalRequest for this token and model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    /// Free-form labels, visible to CEL as `request.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

pub(crate) fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// Usage settled so far in one budget period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageSoFar {
    pub period: BudgetPeriod,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub tokens: u64,
}

/// The outcome of deciding a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Allow, Deny, Redact, RequireApproval or Degrade.
    pub effect: Effect,
    /// Rationale codes, the deciding one first (see the codes table).
    pub codes: Vec<String>,
    /// Human-readable reason.
    pub message: String,
    /// `namespace/name` (AIPolicy) or `name` (ClusterAIPolicy) of the deciding policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Name of the deciding rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Which stage decided: token, registry, policy or default.
    pub stage: Stage,
    /// What the enforcement point must do besides the effect.
    #[serde(default, skip_serializing_if = "Obligations::is_empty")]
    pub obligations: Obligations,
    /// Entities the detectors found in the prompt (spans only, never the text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// What an Audit-mode policy would have decided, when that differs from the effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_have: Option<WouldHave>,
    /// Facts after defaults were filled in (subject, team, provider, cost, ...).
    pub facts: ResolvedFacts,
    /// Fingerprint of the policy set the decision was made under.
    pub fingerprint: String,
}

impl Decision {
    /// The deciding code.
    pub fn code(&self) -> &str {
        self.codes.first().map(String::as_str).unwrap_or("")
    }
}

/// The stage of the evaluation order that produced a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Token,
    Registry,
    Policy,
    Default,
}

/// Obligations attached to a decision.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Obligations {
    /// Entities to redact (empty with `redact` set: every entity found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<RedactObligation>,
    /// Model to call instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Cap on output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Keep the redacted prompt in the audit record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_redacted_prompt: bool,
}

impl Obligations {
    pub fn is_empty(&self) -> bool {
        self == &Obligations::default()
    }
}

/// Redaction to apply before forwarding.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedactObligation {
    pub entities: Vec<String>,
    pub replacement: String,
}

/// The shadow decision of Audit-mode policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WouldHave {
    pub effect: Effect,
    pub codes: Vec<String>,
    pub policy: String,
    pub rule: String,
}

/// Facts after defaults from token and registry were applied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub model: String,
    /// `namespace/name` of the ModelDeployment the model resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
    pub data_classification: Option<DataClassification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_level: Option<RiskLevel>,
    pub estimated_tokens: u64,
    pub estimated_cost_usd: f64,
}

/// Why one rule did or did not match, for `policybind eval --explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTrace {
    pub policy: String,
    pub rule: String,
    pub priority: i32,
    pub enforcement: policybind_crds::Enforcement,
    pub action: Effect,
    pub matched: bool,
    /// The first selector or condition that failed, or "matched".
    pub reason: String,
    /// Whether this rule made the decision.
    pub decided: bool,
    /// The rule's `match` selected the request but its `exclude` skipped it
    /// (`reason` says what excluded it); evaluation went on with lower rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
}
