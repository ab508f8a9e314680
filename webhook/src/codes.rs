//! Rationale codes of admission decisions that only the webhook makes. A denial
//! message starts with its code (`kubectl` shows it, scripts grep it) and the audit
//! record carries it. Codes shared with request decisions (`MODEL_NOT_REGISTERED`,
//! `REQUEST_INVALID`, `AUDIT_UNAVAILABLE`, ...) come from `policybind_engine::codes`.

/// A policy, model or token does not compile, or breaks a rule spanning fields.
pub const RESOURCE_INVALID: &str = "RESOURCE_INVALID";
/// `spec.decision.approver` is not the user writing the decision.
pub const APPROVER_MISMATCH: &str = "APPROVER_MISMATCH";
/// The requester tried to decide their own request.
pub const SELF_APPROVAL: &str = "SELF_APPROVAL";
/// The user lacks the `approve` verb on approvalrequests.
pub const APPROVAL_NOT_PERMITTED: &str = "APPROVAL_NOT_PERMITTED";
/// A decision was changed or withdrawn.
pub const DECISION_IMMUTABLE: &str = "DECISION_IMMUTABLE";
/// An approver rejected.
pub const APPROVAL_REJECTED: &str = "APPROVAL_REJECTED";
/// A right could not be checked (SubjectAccessReview failed or timed out).
pub const AUTHORIZATION_UNAVAILABLE: &str = "AUTHORIZATION_UNAVAILABLE";
/// An AccessToken names a namespace (`spec.additionalNamespaces`) where its
/// author may not create AccessTokens.
pub const NAMESPACE_NOT_PERMITTED: &str = "NAMESPACE_NOT_PERMITTED";
/// A ModelDeployment with `scope: Cluster` from a user without the `share` verb.
pub const SHARE_NOT_PERMITTED: &str = "SHARE_NOT_PERMITTED";
/// A workload names a ModelDeployment of another namespace that is not shared.
pub const MODEL_NOT_SHARED: &str = "MODEL_NOT_SHARED";
/// In an enforced namespace, a pod declares a model but carries no sidecar.
pub const SIDECAR_MISSING: &str = "SIDECAR_MISSING";
/// A `policybind-sidecar` container differs from what the webhook injects.
pub const SIDECAR_FORGED: &str = "SIDECAR_FORGED";
/// An opt-out (`policybind.io/inject: "false"`) in an enforced namespace by a user
/// without the `exempt` verb on the model.
pub const EXEMPTION_NOT_PERMITTED: &str = "EXEMPTION_NOT_PERMITTED";
/// An authorized opt-out: admitted without the sidecar, recorded.
pub const SIDECAR_EXEMPTED: &str = "SIDECAR_EXEMPTED";
/// A container other than the sidecar reads the namespace's audit signing key.
pub const AUDIT_KEY_EXPOSED: &str = "AUDIT_KEY_EXPOSED";
