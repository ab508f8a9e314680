//! Incident: raised by the operator when decisions show a violation pattern, one
//! per pattern and subject while open, then worked through by people.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A violation pattern seen in decisions, for people to investigate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "Incident",
    doc = "Incident: a violation pattern seen in decisions (for example repeated denials for one subject), worked Open -> Investigating -> Mitigated -> Resolved.",
    plural = "incidents",
    shortname = "aiinc",
    category = "policybind",
    namespaced,
    status = "IncidentStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Pattern","type":"string","jsonPath":".spec.pattern"}"#,
    printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject"}"#,
    printcolumn = r#"{"name":"Severity","type":"string","jsonPath":".spec.severity"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Count","type":"integer","jsonPath":".status.occurrences"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.pattern == oldSelf.pattern && self.subject == oldSelf.subject", "message": "pattern and subject are immutable"},
    {"rule": "oldSelf.state != 'Resolved' || self.state == 'Resolved'", "message": "a resolved incident stays resolved; a new one is raised if the pattern recurs"},
]))]
pub struct IncidentSpec {
    /// The pattern that raised it: RepeatedDenials, SensitiveDataToRestrictedToken, BudgetExhausted, ...
    #[schemars(length(min = 1, max = 63))]
    pub pattern: String,
    /// Subject (token subject) the pattern was seen for.
    #[schemars(length(min = 1, max = 253))]
    pub subject: String,
    /// Low, Medium, High or Critical.
    pub severity: Severity,
    /// Workflow state, moved by people: Open -> Investigating -> Mitigated -> Resolved.
    #[serde(default)]
    pub state: IncidentState,
    /// What was seen, in words.
    #[schemars(length(max = 4096))]
    pub summary: String,
    /// Person working on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// Audit record ids (`writer:sequence`) that show the pattern (the first 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub audit_records: Vec<String>,
    /// The ModelDeployment (in this namespace) the incident concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub model: Option<String>,
    /// Harm that occurred or may have occurred. Set when the incident is serious in the EU AI
    /// Act's sense; its category sets the reporting deadline in `policybind report incident`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm: Option<IncidentHarm>,
    /// Why it happened, once established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub root_cause: Option<String>,
    /// What was done to contain it and prevent a recurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub remediation: Option<String>,
    /// What happened when, in order: detection, awareness, containment, notification, fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub timeline: Vec<TimelineEntry>,
    /// Notification of a market surveillance authority (EU AI Act Art. 73), once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_notification: Option<AuthorityNotification>,
}

/// Harm caused by an incident.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentHarm {
    /// Kind of harm, as the EU AI Act's definition of a serious incident (Art. 3(49)) sorts it.
    pub category: HarmCategory,
    /// What harm, to whom, how many people or systems.
    #[schemars(length(min = 1, max = 4096))]
    pub description: String,
    /// When the organisation learned of the incident; reporting deadlines run from here.
    pub aware_at: DateTime<Utc>,
    /// Whether the harm is widespread (many people or several Member States); shortens the
    /// reporting deadline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub widespread: bool,
}

/// Categories of serious harm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum HarmCategory {
    /// A person died.
    Death,
    /// Serious harm to a person's health.
    SeriousHealthHarm,
    /// Serious and irreversible disruption of the management or operation of critical
    /// infrastructure.
    CriticalInfrastructureDisruption,
    /// Infringement of obligations under Union law that protect fundamental rights.
    FundamentalRightsInfringement,
    /// Serious harm to property or the environment.
    PropertyOrEnvironmentHarm,
}

impl HarmCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            HarmCategory::Death => "Death",
            HarmCategory::SeriousHealthHarm => "SeriousHealthHarm",
            HarmCategory::CriticalInfrastructureDisruption => "CriticalInfrastructureDisruption",
            HarmCategory::FundamentalRightsInfringement => "FundamentalRightsInfringement",
            HarmCategory::PropertyOrEnvironmentHarm => "PropertyOrEnvironmentHarm",
        }
    }
}

/// One event of an incident's timeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[schemars(length(min = 1, max = 2048))]
    pub event: String,
    /// Who acted or reported, if a person or team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub actor: Option<String>,
}

/// A notification made to an authority.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityNotification {
    /// The authority notified, e.g. the market surveillance authority of a Member State.
    #[schemars(length(min = 1, max = 253))]
    pub authority: String,
    /// When it was notified.
    pub notified_at: DateTime<Utc>,
    /// The authority's or our reference for the notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub reference: Option<String>,
}

/// Incident severity.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// Incident workflow states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum IncidentState {
    #[default]
    Open,
    Investigating,
    Mitigated,
    Resolved,
}

impl IncidentState {
    /// Whether the incident still absorbs new occurrences of its pattern.
    pub fn is_open(self) -> bool {
        !matches!(self, IncidentState::Resolved)
    }
}

/// Status of an Incident, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Times the pattern was seen while this incident was open.
    #[serde(default)]
    pub occurrences: u64,
    /// First occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_at: Option<DateTime<Utc>>,
    /// Latest occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<DateTime<Utc>>,
}
