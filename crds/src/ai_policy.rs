//! AIPolicy (namespaced) and ClusterAIPolicy (cluster-wide): ordered rules that
//! decide model requests. Both kinds share [`PolicyRule`] and compile to the same
//! engine representation; a ClusterAIPolicy may in addition select namespaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DataClassification, Effect, Enforcement, RiskLevel, Schedule};

/// Rules that decide which requests to AI models are allowed, denied, redacted,
/// degraded or held for approval in this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "AIPolicy",
    doc = "AIPolicy: ordered rules that decide AI model requests in one namespace (allow, deny, redact, require approval, degrade).",
    plural = "aipolicies",
    shortname = "aipol",
    category = "policybind",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Enforcement","type":"string","jsonPath":".spec.enforcement"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.ruleCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AIPolicySpec {
    /// Enforce (default) applies decisions; Audit only records what the policy would have decided.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Rules of higher-priority policies are considered first. 0-1000, default 100.
    /// At equal priority the most restrictive effect wins, then policy name order.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// What this policy is for, shown to people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Named regular expressions that rules can list under `conditions.detected`
    /// next to the built-in entities (EMAIL, PHONE, US_SSN, CREDIT_CARD, IBAN, IP_ADDRESS,
    /// SECRET, PROMPT_INJECTION).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub custom_detectors: Vec<CustomDetectorSpec>,
    /// Ordered rules. Within a policy, earlier rules win ties.
    #[schemars(length(min = 1, max = 256))]
    pub rules: Vec<PolicyRule>,
}

/// Rules that apply to every namespace, or to the namespaces selected.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "ClusterAIPolicy",
    doc = "ClusterAIPolicy: ordered rules that decide AI model requests in every namespace, or in the namespaces selected.",
    plural = "clusteraipolicies",
    shortname = "caipol",
    category = "policybind",
    status = "PolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Enforcement","type":"string","jsonPath":".spec.enforcement"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.ruleCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAIPolicySpec {
    /// Enforce (default) applies decisions; Audit only records what the policy would have decided.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Rules of higher-priority policies are considered first. 0-1000, default 100.
    /// At equal priority the most restrictive effect wins, then policy name order.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// What this policy is for, shown to people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Namespaces (names or globs such as `team-*`) this policy applies to. Empty, with no
    /// `namespaceSelector`, means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    /// Label selector over namespaces this policy applies to, in addition to `namespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Named regular expressions that rules can list under `conditions.detected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub custom_detectors: Vec<CustomDetectorSpec>,
    /// Ordered rules. Within a policy, earlier rules win ties.
    #[schemars(length(min = 1, max = 256))]
    pub rules: Vec<PolicyRule>,
}

fn default_priority() -> i32 {
    100
}

/// A named regular expression used as a content detector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomDetectorSpec {
    /// Entity name reported in findings and listed in `conditions.detected`, e.g. PROJECT_CODE.
    #[schemars(regex(pattern = r"^[A-Z][A-Z0-9_]{0,62}$"))]
    pub name: String,
    /// Regular expression (Rust `regex` syntax, no look-around or back-references).
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
}

/// One rule: which requests it matches and what happens to them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.action != 'Degrade' || (has(self.degrade) && (has(self.degrade.model) || has(self.degrade.maxTokens)))", "message": "action Degrade needs degrade.model or degrade.maxTokens"},
    {"rule": "!has(self.degrade) || self.action == 'Degrade'", "message": "degrade is only valid with action Degrade"},
    {"rule": "!has(self.redact) || self.action == 'Redact'", "message": "redact is only valid with action Redact"},
    {"rule": "!has(self.phase) || self.phase == 'Request' || self.action == 'Redact' || self.action == 'Deny'", "message": "a rule on Response may only Redact or Deny"},
    {"rule": "!has(self.phase) || self.phase == 'Request' || self.action != 'Deny' || (has(self.conditions) && has(self.conditions.detected) && size(self.conditions.detected) > 0)", "message": "a rule on Response with action Deny needs conditions.detected: the entities that block the response"},
    {"rule": "!has(self.phase) || self.phase == 'Request' || !has(self.recordRedactedPrompt) || !self.recordRedactedPrompt", "message": "recordRedactedPrompt is only valid on rules on Request"},
    {"rule": "!has(self.redact) || !has(self.redact.entities) || !('PROMPT_INJECTION' in self.redact.entities)", "message": "PROMPT_INJECTION cannot be redacted, only denied"},
]))]
pub struct PolicyRule {
    /// Rule name, unique within the policy; shown in decisions and audit records.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// What the rule acts on (not named `on`, which YAML 1.1 parsers such as
    /// kubectl's read as `true`). `Request` (default): the call, before it is sent.
    /// `Response`: the model's answer, buffered or streamed; such a rule may only
    /// `Redact` the entities it lists, or `Deny` (withhold the response, or cut the
    /// stream before the entity) when the response holds one of `conditions.detected`.
    /// It matches on the request's facts and on what the response contains.
    #[serde(default, skip_serializing_if = "RuleTarget::is_request")]
    pub phase: RuleTarget,
    /// Typed selectors. All given fields must match (AND); a list matches when any entry does (OR).
    /// An empty match matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "RuleMatch::is_empty")]
    pub match_: RuleMatch,
    /// Requests this rule skips although `match` selects them, as Kyverno's
    /// match/exclude: an exception for one rule. Evaluation goes on with the rules
    /// below it (a lower Redact rule still redacts), unlike a higher-priority Allow,
    /// which would decide and skip every lower rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<RuleExclude>,
    /// Optional CEL expression over `request` (see the request fields in the README) that must
    /// be true for the rule to match, for what typed selectors cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub when: Option<String>,
    /// Further conditions on time, cost, size and content. All given must hold.
    #[serde(default, skip_serializing_if = "RuleConditions::is_empty")]
    pub conditions: RuleConditions,
    /// Effect on a matching request: Allow, Deny, Redact, RequireApproval or Degrade.
    pub action: Effect,
    /// Redaction parameters (action Redact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<RedactAction>,
    /// Degrade parameters (action Degrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade: Option<DegradeAction>,
    /// Stable rationale code reported with the decision (UPPER_SNAKE_CASE). Defaults to
    /// POLICY_ALLOW, POLICY_DENY, PII_REDACTED, APPROVAL_REQUIRED or POLICY_DEGRADE; on
    /// rules on Response, RESPONSE_BLOCKED or RESPONSE_REDACTED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z][A-Z0-9_]{0,63}$"))]
    pub code: Option<String>,
    /// Message shown to the caller and in the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// Keep the redacted prompt in the audit record of requests this rule decides.
    /// Off by default: records hold only a hash of the prompt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_redacted_prompt: bool,
}

/// What a rule acts on: the request before it is sent, or the model's response.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RuleTarget {
    /// The request, before it is sent (every action).
    #[default]
    Request,
    /// The model's response, buffered or streamed (Redact or Deny only).
    Response,
}

impl RuleTarget {
    pub fn is_request(&self) -> bool {
        *self == RuleTarget::Request
    }
}

/// Typed selectors over request facts. Values are compared exactly (models accept globs).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatch {
    /// Teams of the calling subject (from its AccessToken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub teams: Vec<String>,
    /// Subjects (user, team or service account names from AccessTokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub subjects: Vec<String>,
    /// Model names or globs (`gpt-4*`, `*-mini`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub models: Vec<String>,
    /// Providers as declared on ModelDeployments (openai, anthropic, self-hosted, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub providers: Vec<String>,
    /// Declared use cases (from the `x-policybind-use-case` header or token default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub use_cases: Vec<String>,
    /// Exact data classifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub data_classifications: Vec<DataClassification>,
    /// Matches requests at or above this classification (Public < Internal < Confidential < Restricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_data_classification: Option<DataClassification>,
    /// Exact model risk levels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub risk_levels: Vec<RiskLevel>,
    /// Matches models at or above this risk level (Low < Medium < High < Critical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_risk_level: Option<RiskLevel>,
    /// Regions of the model deployment (e.g. eu-west-1, us).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub regions: Vec<String>,
    /// Namespaces the request comes from (ClusterAIPolicy only narrows further).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
}

impl RuleMatch {
    pub fn is_empty(&self) -> bool {
        self == &RuleMatch::default()
    }
}

/// Requests a rule skips. The shape of `match`: all given fields must hold (AND),
/// a list holds when any entry does (OR); at least one field must be given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.teams) && size(self.teams) > 0) || (has(self.subjects) && size(self.subjects) > 0) || (has(self.namespaces) && size(self.namespaces) > 0) || (has(self.labels) && ((has(self.labels.matchLabels) && size(self.labels.matchLabels) > 0) || (has(self.labels.matchExpressions) && size(self.labels.matchExpressions) > 0)))",
     "message": "exclude needs at least one team, subject, namespace or label requirement (an empty exclude would skip the rule for every request)"},
]))]
pub struct RuleExclude {
    /// Teams (from the caller's AccessToken) whose requests the rule skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub teams: Vec<String>,
    /// Subjects (user, team or service account names from AccessTokens) whose requests
    /// the rule skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub subjects: Vec<String>,
    /// Namespaces (names or globs such as `ci-*`) whose requests the rule skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    /// Label selector over the request's labels (`request.labels`: `endpoint` and
    /// `stream` from the sidecar, any from `POST /v1/decide` callers): requests it
    /// selects are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelSelector>,
}

/// Conditions beyond the request's identity. All that are set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleConditions {
    /// Holds when the request time is inside this weekly window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Holds when the request time is outside this weekly window (for example outside business hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_schedule: Option<Schedule>,
    /// Holds when the estimated cost of the call exceeds this many US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_above_usd: Option<f64>,
    /// Holds when the estimated input plus output tokens exceed this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_tokens_above: Option<u64>,
    /// Holds when the prompt (the response, for rules on Response) contains any of these
    /// entities: built-in (EMAIL, PHONE, US_SSN, CREDIT_CARD, IBAN, IP_ADDRESS, SECRET,
    /// PROMPT_INJECTION) or custom detector names of this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub detected: Vec<String>,
    /// Holds when the model's approval state equals this (true: approved or not requiring approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_approved: Option<bool>,
}

impl RuleConditions {
    pub fn is_empty(&self) -> bool {
        self == &RuleConditions::default()
    }
}

/// How to redact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedactAction {
    /// Entities to rewrite. Empty means those the rule's `conditions.detected` lists, or
    /// every entity found. PROMPT_INJECTION cannot be redacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub entities: Vec<String>,
    /// Replacement text; `{entity}` is replaced by the entity name. Default `[REDACTED:{entity}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub replacement: Option<String>,
}

/// How to degrade.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DegradeAction {
    /// Model to call instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Cap on output tokens (`max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u32>,
}

/// Status of an AIPolicy or ClusterAIPolicy, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: compiled and in force. When False, the message holds the exact compile error
    /// and the previous good version stays in the bundles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of rules compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_count: Option<u32>,
    /// SHA-256 fingerprint of the compiled policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}
