//! Types shared by several kinds: classification and risk levels, effects,
//! schedules, budgets, rate limits and pricing.
//!
//! Ordered enums (`DataClassification`, `RiskLevel`) derive `Ord` in declaration
//! order, so `Public < Internal < Confidential < Restricted` and
//! `Low < Medium < High < Critical` hold in code exactly as documented.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How sensitive the data in a request is. Levels are ordered:
/// Public < Internal < Confidential < Restricted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum DataClassification {
    /// Data that may be published.
    Public,
    /// Internal business data; the default when nothing is declared.
    Internal,
    /// Confidential data: customer data, contracts, unreleased plans.
    Confidential,
    /// Restricted data: regulated personal data, secrets, health or payment data.
    Restricted,
}

impl DataClassification {
    pub const ALL: [DataClassification; 4] = [
        DataClassification::Public,
        DataClassification::Internal,
        DataClassification::Confidential,
        DataClassification::Restricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClassification::Public => "Public",
            DataClassification::Internal => "Internal",
            DataClassification::Confidential => "Confidential",
            DataClassification::Restricted => "Restricted",
        }
    }

    /// Parses a level case-insensitively (headers and CLI flags are typed by people).
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(value.trim()))
    }
}

/// Risk level of a model deployment. Ordered: Low < Medium < High < Critical.
/// High and Critical deployments need an approved ApprovalRequest before use.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum RiskLevel {
    /// Score 0-24.
    Low,
    /// Score 25-49.
    Medium,
    /// Score 50-74; requires approval.
    High,
    /// Score 75-100; requires approval.
    Critical,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 4] = [
        RiskLevel::Low,
        RiskLevel::Medium,
        RiskLevel::High,
        RiskLevel::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "Low",
            RiskLevel::Medium => "Medium",
            RiskLevel::High => "High",
            RiskLevel::Critical => "Critical",
        }
    }

    /// Whether a deployment at this level needs an approved ApprovalRequest.
    pub fn requires_approval(self) -> bool {
        self >= RiskLevel::High
    }
}

/// What a rule does to a request that it matches. At equal priority the most
/// restrictive effect wins: Deny > RequireApproval > Degrade > Redact > Allow.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Effect {
    /// Forward the request unchanged.
    Allow,
    /// Refuse the request.
    Deny,
    /// Forward the request after rewriting detected entities in the prompt.
    Redact,
    /// Hold the request until a human approves it (an ApprovalRequest).
    RequireApproval,
    /// Forward the request to a cheaper model and/or with fewer output tokens.
    Degrade,
}

impl Effect {
    pub const ALL: [Effect; 5] = [
        Effect::Allow,
        Effect::Deny,
        Effect::Redact,
        Effect::RequireApproval,
        Effect::Degrade,
    ];

    /// Restrictiveness rank used to break ties at equal priority (higher wins).
    pub fn restrictiveness(self) -> u8 {
        match self {
            Effect::Allow => 0,
            Effect::Redact => 1,
            Effect::Degrade => 2,
            Effect::RequireApproval => 3,
            Effect::Deny => 4,
        }
    }

    /// Whether the request is forwarded to the model under this effect.
    pub fn forwards(self) -> bool {
        matches!(self, Effect::Allow | Effect::Redact | Effect::Degrade)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "Allow",
            Effect::Deny => "Deny",
            Effect::Redact => "Redact",
            Effect::RequireApproval => "RequireApproval",
            Effect::Degrade => "Degrade",
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a policy blocks (Enforce) or only records what it would have done (Audit).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Enforcement {
    /// Decisions of this policy are enforced.
    #[default]
    Enforce,
    /// Decisions of this policy are recorded as "would have" and never block.
    Audit,
}

/// Day of the week, in the schedule's time zone.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday = 0 .. Sunday = 6, as `chrono::Weekday::num_days_from_monday`.
    pub fn index(self) -> u32 {
        self as u32
    }
}

/// A weekly time window in an IANA time zone, for example Mon-Fri 08:00-18:00
/// Europe/Berlin. When `startHour` is greater than `endHour` the window runs over
/// midnight (22 to 6 means 22:00 to 06:00 the next day, counted from the start day).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.startHour != self.endHour", "message": "startHour and endHour must differ (use 0 and 24 for the whole day)"},
]))]
pub struct Schedule {
    /// Days on which the window opens. Empty means every day.
    #[serde(default)]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,
    /// Hour the window opens, 0-23, in `timeZone`.
    #[schemars(range(min = 0, max = 23))]
    pub start_hour: u8,
    /// Hour the window closes (exclusive), 1-24, in `timeZone`.
    #[schemars(range(min = 1, max = 24))]
    pub end_hour: u8,
    /// IANA time zone name, for example `Europe/Berlin` or `America/New_York`. Default `UTC`.
    #[serde(default = "utc")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

pub(crate) fn utc() -> String {
    "UTC".to_string()
}

/// Calendar period a budget resets on, in the budget's time zone. Weeks start on Monday.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum BudgetPeriod {
    Day,
    Week,
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "Day",
            BudgetPeriod::Week => "Week",
            BudgetPeriod::Month => "Month",
        }
    }
}

/// How a budget's period is counted.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum BudgetWindow {
    /// The calendar period in the budget's time zone (today, this week from
    /// Monday, this month): spend starts again at zero when it ends.
    #[default]
    Calendar,
    /// The last 24 hours (Day), 7 days (Week) or 30 days (Month), ending now,
    /// counted in UTC buckets of 1 hour (Day), 6 hours (Week) or 1 day (Month):
    /// spend leaves the window between one period and one period plus one
    /// bucket after it was made, never sooner. `timeZone` does not apply.
    Rolling,
}

impl BudgetWindow {
    pub fn is_calendar(&self) -> bool {
        *self == BudgetWindow::Calendar
    }
}

/// A spending cap per period. At least one of `maxCostUsd` and `maxTokens`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.maxCostUsd) || has(self.maxTokens)", "message": "a budget needs maxCostUsd or maxTokens"},
    {"rule": "!has(self.maxCostUsd) || self.maxCostUsd > 0.0", "message": "maxCostUsd must be positive"},
]))]
pub struct Budget {
    /// Period the cap applies to: Day, Week (from Monday) or Month; with
    /// `window: Rolling`, the last 24 hours, 7 days or 30 days.
    pub period: BudgetPeriod,
    /// `Calendar` (default): the cap resets when the calendar period ends, in
    /// `timeZone`. `Rolling`: the cap applies to the spend of the last period,
    /// ending now, and spend leaves the window as it ages (counted in UTC
    /// buckets of 1 h for Day, 6 h for Week, 1 day for Month; spend leaves up to
    /// one bucket late, never early).
    #[serde(default, skip_serializing_if = "BudgetWindow::is_calendar")]
    pub window: BudgetWindow,
    /// Maximum spend in US dollars per period, estimated before and settled after each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Maximum input plus output tokens per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u64>,
    /// IANA time zone in which calendar periods start. Default `UTC`. Not used
    /// by rolling windows.
    #[serde(default = "utc")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

/// Per-minute limits, enforced by every sidecar that serves the token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Maximum requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Maximum input plus output tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}

/// Price of a model in US dollars per 1,000 tokens.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.inputPer1kTokensUsd >= 0.0 && self.outputPer1kTokensUsd >= 0.0", "message": "prices cannot be negative"},
]))]
pub struct Pricing {
    /// US dollars per 1,000 input (prompt) tokens.
    pub input_per1k_tokens_usd: f64,
    /// US dollars per 1,000 output (completion) tokens.
    pub output_per1k_tokens_usd: f64,
}

impl Pricing {
    /// Cost in US dollars of a call with these token counts, clamped by
    /// [`clamp_usd`] (a price of NaN or infinity cannot make it unusable).
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        clamp_usd(
            (input_tokens as f64 * self.input_per1k_tokens_usd
                + output_tokens as f64 * self.output_per1k_tokens_usd)
                / 1000.0,
        )
    }
}

/// The largest dollar amount PolicyBind counts: one trillion US dollars. Far
/// above any budget; an `f64` of this size still resolves a ten-thousandth of
/// a dollar.
pub const MAX_USD: f64 = 1e12;

/// A dollar amount made safe to add and compare. Every amount charged,
/// reserved, restored or summed goes through it, so that no input (a hostile
/// usage report, a price of `.nan` in a hand-written manifest, an overflowing
/// product) can poison a budget: NaN counts as [`MAX_USD`] (fail closed: an
/// amount that cannot be known exhausts any cost budget rather than passing
/// every comparison), amounts above [`MAX_USD`] (infinity too) as [`MAX_USD`],
/// negative amounts as zero (nothing is ever refunded below zero).
pub fn clamp_usd(usd: f64) -> f64 {
    if usd.is_nan() {
        MAX_USD
    } else {
        usd.clamp(0.0, MAX_USD)
    }
}

/// `a + b` of two dollar amounts, clamped by [`clamp_usd`].
pub fn add_usd(a: f64, b: f64) -> f64 {
    clamp_usd(clamp_usd(a) + clamp_usd(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_are_clamped_to_a_finite_non_negative_range() {
        for (input, expected) in [
            (0.25, 0.25),
            (-1.0, 0.0),
            (-0.0, 0.0),
            (f64::NAN, MAX_USD),
            (f64::INFINITY, MAX_USD),
            (f64::NEG_INFINITY, 0.0),
            (1e300, MAX_USD),
        ] {
            assert_eq!(clamp_usd(input), expected, "{input}");
        }
        assert_eq!(add_usd(MAX_USD, MAX_USD), MAX_USD);
        assert_eq!(
            add_usd(1.5, f64::NAN),
            MAX_USD,
            "an unknown amount fails closed"
        );
        assert_eq!(add_usd(1.5, -3.0), 1.5, "nothing is refunded below zero");
        let huge = Pricing {
            input_per1k_tokens_usd: f64::MAX,
            output_per1k_tokens_usd: 1.0,
        };
        assert_eq!(huge.cost(u64::MAX, u64::MAX), MAX_USD);
    }
}
