//! Condition types and reasons, in one place, and the merge rule every controller
//! uses: a condition whose status did not change keeps its `lastTransitionTime`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types.
pub mod types {
    /// The object was accepted and is in force (policies compiled, token issued).
    pub const READY: &str = "Ready";
    /// A ModelDeployment may be used (risk low enough, or an approval granted).
    pub const APPROVED: &str = "Approved";
    /// A ModelDeployment is within its review schedule and meets what each compliance
    /// framework asks of its registration (`status.compliance` holds one entry per
    /// framework; the condition's reason is the first failing one's).
    pub const COMPLIANT: &str = "Compliant";
    /// An AccessToken or ModelDeployment is suspended or revoked.
    pub const SUSPENDED: &str = "Suspended";
}

/// Condition reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    pub const COMPILED: &str = "Compiled";
    pub const COMPILE_FAILED: &str = "CompileFailed";
    pub const APPROVAL_NOT_REQUIRED: &str = "ApprovalNotRequired";
    pub const APPROVAL_PENDING: &str = "ApprovalPending";
    pub const APPROVAL_GRANTED: &str = "ApprovalGranted";
    pub const APPROVAL_REJECTED: &str = "ApprovalRejected";
    pub const REVIEW_CURRENT: &str = "ReviewCurrent";
    pub const REVIEW_OVERDUE: &str = "ReviewOverdue";
    pub const SUSPENDED_BY_SPEC: &str = "SuspendedBySpec";
    pub const SUSPENDED_REVIEW_OVERDUE: &str = "SuspendedReviewOverdue";
    pub const ISSUED: &str = "Issued";
    pub const EXPIRED: &str = "Expired";
    pub const REVOKED: &str = "Revoked";
    pub const EXHAUSTED: &str = "Exhausted";
    pub const NOT_YET_VALID: &str = "NotYetValid";
    // Compliance of a ModelDeployment, per framework (`status.compliance[].reason`) and
    // summed up in the `Compliant` condition.
    /// Every framework's checks pass.
    pub const ALL_FRAMEWORKS_COMPLIANT: &str = "AllFrameworksCompliant";
    /// One framework's checks pass.
    pub const FRAMEWORK_COMPLIANT: &str = "Compliant";
    /// EU AI Act category Prohibited: the model may never be used.
    pub const PROHIBITED_PRACTICE: &str = "ProhibitedPractice";
    /// `spec.governance.euAiActCategory` is not set.
    pub const RISK_CATEGORY_MISSING: &str = "RiskCategoryMissing";
    /// `spec.governance.intendedPurpose` is not set.
    pub const INTENDED_PURPOSE_MISSING: &str = "IntendedPurposeMissing";
    /// No Provider or no Deployer in `spec.governance.roles`.
    pub const ROLES_MISSING: &str = "RolesMissing";
    /// `spec.governance.dataSources` is empty.
    pub const DATA_SOURCES_MISSING: &str = "DataSourcesMissing";
    /// `spec.evaluations` is empty.
    pub const EVALUATIONS_MISSING: &str = "EvaluationsMissing";
    /// A threshold of an EvidenceGate that applies to the model fails.
    pub const EVIDENCE_GATE_FAILED: &str = "EvidenceGateFailed";
    /// Risk High or Critical and no approval granted.
    pub const APPROVAL_MISSING: &str = "ApprovalMissing";
}

/// Builds a condition with the given fields; `lastTransitionTime` is `now`.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(now),
    }
}

/// Puts `new` into `conditions`, replacing the condition of the same type. When the
/// status is unchanged the old `lastTransitionTime` is kept, so a reconcile that
/// changes nothing produces an identical list (and therefore no write).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type exists and is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut list = vec![condition(
            types::READY,
            true,
            reasons::COMPILED,
            "ok",
            Some(1),
            at(10),
        )];
        set_condition(
            &mut list,
            condition(types::READY, true, reasons::COMPILED, "ok", Some(2), at(99)),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, Time(at(10)));
        assert_eq!(list[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let mut list = vec![condition(
            types::READY,
            true,
            reasons::COMPILED,
            "ok",
            Some(1),
            at(10),
        )];
        set_condition(
            &mut list,
            condition(
                types::READY,
                false,
                reasons::COMPILE_FAILED,
                "bad",
                Some(2),
                at(99),
            ),
        );
        assert_eq!(list[0].last_transition_time, Time(at(99)));
        assert!(!is_true(&list, types::READY));
    }

    #[test]
    fn new_type_is_appended() {
        let mut list = vec![];
        set_condition(
            &mut list,
            condition(types::APPROVED, true, "X", "", None, at(1)),
        );
        set_condition(
            &mut list,
            condition(types::READY, true, "X", "", None, at(1)),
        );
        assert_eq!(list.len(), 2);
        assert!(is_true(&list, types::APPROVED));
    }
}
