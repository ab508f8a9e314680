//! ApprovalRequest: a human decision on something that needs one, a high-risk
//! ModelDeployment or a request decided `RequireApproval`.
//!
//! The approver writes `spec.decision` with their own user name in `approver`;
//! the admission webhook checks that the name is the one Kubernetes authenticated,
//! that it is not the requester, and that the user may `approve`
//! `approvalrequests.policybind.io` (a SubjectAccessReview). Nothing here is
//! mutated by the webhook, so GitOps tools see no drift.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request for a human decision.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    doc = "ApprovalRequest: a human decision on a high-risk ModelDeployment or on a request decided RequireApproval.",
    plural = "approvalrequests",
    shortname = "aiapproval",
    shortname = "apr",
    category = "policybind",
    namespaced,
    status = "ApprovalRequestStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.kind"}"#,
    printcolumn = r#"{"name":"Name","type":"string","jsonPath":".spec.target.name"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".spec.requester"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Approver","type":"string","jsonPath":".spec.decision.approver"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.decision) || self.decision.approver != self.requester", "message": "the requester cannot decide their own request"},
    {"rule": "!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)", "message": "a decision cannot be changed or withdrawn once made"},
    {"rule": "self.target == oldSelf.target && self.requester == oldSelf.requester", "message": "target and requester are immutable"},
]))]
pub struct ApprovalRequestSpec {
    /// What needs approval.
    pub target: ApprovalTarget,
    /// Who asked (user name, or `system:serviceaccount:...` for the operator or a sidecar).
    #[schemars(length(min = 1, max = 253))]
    pub requester: String,
    /// Why approval is needed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub reason: Option<String>,
    /// After this time an undecided request becomes Expired. Default: 7 days after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The decision, written by the approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalDecision>,
}

/// What an approval is for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalTarget {
    /// ModelDeployment or Request.
    pub kind: ApprovalTargetKind,
    /// Name of the ModelDeployment (kind ModelDeployment) in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Request id of the held request (kind Request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Model of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Subject of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// AccessToken (`namespace/name`) of the held request; an approval applies only to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Policy and rule that required approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_rule: Option<String>,
}

/// Kinds of approval target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ApprovalTargetKind {
    ModelDeployment,
    Request,
}

/// A decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecision {
    /// Approved or Rejected.
    pub state: DecisionState,
    /// The deciding user's Kubernetes user name; must equal the user who writes it.
    #[schemars(length(min = 1, max = 253))]
    pub approver: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub comment: Option<String>,
}

/// Outcome of a decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DecisionState {
    Approved,
    Rejected,
}

/// Phase of an ApprovalRequest.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ApprovalPhase {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalPhase::Pending => "Pending",
            ApprovalPhase::Approved => "Approved",
            ApprovalPhase::Rejected => "Rejected",
            ApprovalPhase::Expired => "Expired",
        }
    }
}

/// Status of an ApprovalRequest, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` once the decision has been applied to the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pending, Approved, Rejected or Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    /// When the decision was first seen by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
}
