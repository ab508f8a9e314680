//! AccessToken: a scoped credential for calling models. The operator generates
//! the secret value into a Secret owned by the token; only its SHA-256 travels
//! further (bundles, audit records). The value never appears in spec or status.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Budget, BudgetPeriod, DataClassification, RateLimit, Schedule};

/// A scoped credential: who may call which models, with what data, at what cost and rate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "AccessToken",
    doc = "AccessToken: a scoped credential for calling AI models; the secret value lives in a Secret owned by the token, only its SHA-256 anywhere else.",
    plural = "accesstokens",
    shortname = "aitoken",
    shortname = "at",
    category = "policybind",
    namespaced,
    status = "AccessTokenStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject.name"}"#,
    printcolumn = r#"{"name":"Team","type":"string","jsonPath":".spec.team"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".status.hashPrefix","priority":1}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.expiresAt) || !has(self.notBefore) || self.expiresAt > self.notBefore", "message": "expiresAt must be after notBefore"},
    {"rule": "!has(self.budgets) || self.budgets.all(b, self.budgets.exists_one(c, c.period == b.period))", "message": "at most one budget per period"},
    {"rule": "!has(self.additionalNamespaces) || self.additionalNamespaces.all(n, self.additionalNamespaces.exists_one(m, m == n))", "message": "additionalNamespaces must not repeat a namespace"},
]))]
pub struct AccessTokenSpec {
    /// Who uses the token.
    pub subject: TokenSubject,
    /// Team the subject belongs to; policies match on it.
    #[schemars(length(min = 1, max = 63))]
    pub team: String,
    /// Model names or globs this token may call (`*` for any registered model).
    #[schemars(length(min = 1, max = 64))]
    pub allowed_models: Vec<String>,
    /// Use cases this token may declare. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_use_cases: Vec<String>,
    /// Use case assumed when a request declares none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_use_case: Option<String>,
    /// Highest data classification this token may send. Default Internal.
    #[serde(default = "default_max_classification")]
    pub max_data_classification: DataClassification,
    /// Classification assumed when a request declares none. Default Internal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_data_classification: Option<DataClassification>,
    /// Spending caps per calendar period (at most one per period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub budgets: Vec<Budget>,
    /// Requests and tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// When the token may be used. Unset means any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// The token is not valid before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The token is not valid from this time on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoke the token: every sidecar denies it with TOKEN_REVOKED once the bundle arrives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Name of the Secret holding the token value (key `token`). Default `<name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// After a rotation (annotation `policybind.io/rotate`), how long the previous value keeps
    /// working, in seconds. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2592000))]
    pub rotation_grace_seconds: Option<u32>,
    /// Namespaces besides the token's own whose sidecars and gateways accept it. A token is
    /// valid in its own namespace and in these only; naming a namespace here needs the right
    /// to create AccessTokens there (checked at admission with a SubjectAccessReview).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub additional_namespaces: Vec<String>,
}

fn default_max_classification() -> DataClassification {
    DataClassification::Internal
}

impl AccessTokenSpec {
    /// Budget for a period, if one is set.
    pub fn budget(&self, period: BudgetPeriod) -> Option<&Budget> {
        self.budgets.iter().find(|b| b.period == period)
    }
}

/// The subject a token acts for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSubject {
    /// User, Team or ServiceAccount.
    pub kind: SubjectKind,
    /// Name of the user, team or service account (`namespace/name` for service accounts).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kinds of subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    User,
    Team,
    ServiceAccount,
}

/// Lifecycle phase of a token.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TokenPhase {
    /// Secret not yet issued, or `notBefore` in the future.
    Pending,
    /// Usable.
    Active,
    /// Past `expiresAt`.
    Expired,
    /// `revoked` is set.
    Revoked,
    /// A budget of the current period is used up.
    Exhausted,
}

impl TokenPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPhase::Pending => "Pending",
            TokenPhase::Active => "Active",
            TokenPhase::Expired => "Expired",
            TokenPhase::Revoked => "Revoked",
            TokenPhase::Exhausted => "Exhausted",
        }
    }
}

/// Status of an AccessToken, written by the operator. Holds no secret material.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (issued and usable) with the reason when not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pending, Active, Expired, Revoked or Exhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TokenPhase>,
    /// Secret that holds the token value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// First 12 hex characters of the SHA-256 of the current value, to tell values apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_prefix: Option<String>,
    /// When the current value was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// Copy of `spec.expiresAt` in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Last rotation handled (value of the rotate annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
    /// Until when the previous value is still accepted after a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// Usage per budget period, reported by the sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub usage: Vec<PeriodUsage>,
}

/// Usage of a token within one budget period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodUsage {
    /// Day, Week or Month.
    pub period: BudgetPeriod,
    /// Start of the current period. For a rolling window: the start of the
    /// oldest bucket counted (in a sidecar's usage report, each bucket's own
    /// start).
    pub period_start: DateTime<Utc>,
    /// Settled spend in US dollars.
    pub cost_usd: f64,
    /// Settled input plus output tokens.
    pub tokens: u64,
    /// Requests forwarded.
    pub requests: u64,
    /// When the period ends and its spend starts again at zero (in the
    /// budget's time zone). For a rolling window: the end of the current
    /// bucket, when the oldest spend counted next leaves the window. Set by
    /// the operator in the token's status; absent in the sidecars' usage
    /// reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<DateTime<Utc>>,
    /// US dollars of the cost budget the operator has granted to replicas in
    /// this period (a rolling window: its buckets in the window), summed over
    /// every namespace and pod: what replicas may
    /// spend without asking again, including what they already spent of it
    /// (grants are never handed back within a period). Absent when no replica
    /// holds a grant of the cost budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_usd: Option<f64>,
    /// Tokens of the token budget granted to replicas in this period, as
    /// `heldUsd` for the cost budget. Absent when no replica holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_tokens: Option<u64>,
    /// Replicas (pods) holding a grant of this period's budget. Absent when
    /// none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<u32>,
}

impl PeriodUsage {
    /// Usage settled in one period, with none of the status-only fields.
    pub fn settled(
        period: BudgetPeriod,
        period_start: DateTime<Utc>,
        cost_usd: f64,
        tokens: u64,
        requests: u64,
    ) -> PeriodUsage {
        PeriodUsage {
            period,
            period_start,
            cost_usd,
            tokens,
            requests,
            resets_at: None,
            held_usd: None,
            held_tokens: None,
            holders: None,
        }
    }
}
