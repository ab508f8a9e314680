//! ApprovalRequest controller: turns the approver's decision (or the lack of
//! one by the deadline) into `status.phase`, and lets the target react.
//!
//! The webhook checks who may decide; this controller only records the outcome.
//! The first outcome wins: once Approved, Rejected or Expired, the phase never
//! changes again (a late decision on an expired request is ignored; ask again
//! with a new request). ModelDeployments watch their requests, so a decision
//! flows to the model's `Approved` condition and into every bundle at once.
//! Requests for held model calls (target kind `Request`) are created by sidecars,
//! which read the phase back.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use policybind_crds::approval_request::{ApprovalPhase, DecisionState};
use policybind_crds::conditions::{self, types};
use policybind_crds::{API_VERSION, ApprovalRequest, ApprovalRequestStatus};
use policybind_engine::audit::{AuditEvent, RecordKind};
use serde_json::json;

use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};

use crate::context::{Context, from_jiff, key_of, reasons, requeue_at, to_jiff};
use crate::controllers::{Tasks, Wiring, drain};
use crate::error::{Error, Result};
use crate::stores::{touched, watch};

const CONTROLLER: &str = "approval_request";

/// When an undecided request expires: `spec.expiresAt`, else creation plus `ttl`.
pub fn expires_at(request: &ApprovalRequest, ttl: Duration) -> Option<DateTime<Utc>> {
    request.spec.expires_at.or_else(|| {
        let created = from_jiff(request.metadata.creation_timestamp.as_ref()?.0);
        Some(created + chrono::Duration::from_std(ttl).ok()?)
    })
}

/// The phase of a request at `now`. A phase already recorded as final is kept.
pub fn phase(request: &ApprovalRequest, now: DateTime<Utc>, ttl: Duration) -> ApprovalPhase {
    let recorded = request.status.as_ref().and_then(|s| s.phase);
    if let Some(
        final_phase @ (ApprovalPhase::Approved | ApprovalPhase::Rejected | ApprovalPhase::Expired),
    ) = recorded
    {
        return final_phase;
    }
    match &request.spec.decision {
        Some(d) if d.state == DecisionState::Approved => ApprovalPhase::Approved,
        Some(_) => ApprovalPhase::Rejected,
        None if expires_at(request, ttl).is_some_and(|at| now >= at) => ApprovalPhase::Expired,
        None => ApprovalPhase::Pending,
    }
}

/// The status the request should have at `now`.
pub fn desired_status(
    request: &ApprovalRequest,
    now: DateTime<Utc>,
    ttl: Duration,
) -> ApprovalRequestStatus {
    let old = request.status.clone().unwrap_or_default();
    let phase = phase(request, now, ttl);
    let decided_at = match phase {
        ApprovalPhase::Pending => None,
        _ => old.decided_at.or(Some(now)),
    };
    let (ready, reason, message) = match phase {
        ApprovalPhase::Pending => (
            false,
            reasons::AWAITING_DECISION,
            match expires_at(request, ttl) {
                Some(at) => format!("waiting for a decision until {}", at.to_rfc3339()),
                None => "waiting for a decision".to_string(),
            },
        ),
        ApprovalPhase::Expired => (
            true,
            reasons::APPROVAL_EXPIRED,
            "expired without a decision; create a new request to ask again".to_string(),
        ),
        decided => (
            true,
            reasons::DECIDED,
            format!(
                "{} by {}",
                decided.as_str(),
                request
                    .spec
                    .decision
                    .as_ref()
                    .map(|d| d.approver.as_str())
                    .unwrap_or("unknown")
            ),
        ),
    };
    let mut conditions_list = old.conditions.clone();
    conditions::set_condition(
        &mut conditions_list,
        conditions::condition(
            types::READY,
            ready,
            reason,
            message,
            request.metadata.generation,
            to_jiff(now),
        ),
    );
    ApprovalRequestStatus {
        observed_generation: request.metadata.generation,
        conditions: conditions_list,
        phase: Some(phase),
        decided_at,
    }
}

/// Reconciles one ApprovalRequest.
pub async fn reconcile(request: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = ctx.now();
    let ttl = ctx.settings.approval_ttl;
    let namespace = request
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let status = desired_status(&request, now, ttl);
    let old_phase = request.status.as_ref().and_then(|s| s.phase);
    if request.status.as_ref() != Some(&status) {
        let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": ApprovalRequest::kind(&()),
            "status": status,
        });
        api.patch_status(
            &request.name_any(),
            &Context::apply_params(),
            &Patch::Apply(&patch),
        )
        .await?;
        if old_phase != status.phase {
            let phase = status.phase.unwrap_or(ApprovalPhase::Pending);
            if phase != ApprovalPhase::Pending {
                let target = &request.spec.target;
                let mut event = AuditEvent::new(RecordKind::Approval)
                    .namespace(namespace.clone())
                    .detail("approvalRequest", request.name_any())
                    .detail("phase", phase.as_str())
                    .detail("requester", request.spec.requester.clone());
                if let Some(decision) = &request.spec.decision {
                    event = event.detail("approver", decision.approver.clone());
                }
                if let Some(name) = &target.name {
                    event = event.detail("modelDeployment", name.clone());
                }
                if let Some(id) = &target.request_id {
                    event = event.request_id(id.clone());
                }
                if let Some(token) = &target.token {
                    event = event.token_id(token.clone());
                }
                ctx.record(event);
                ctx.event(
                    request.as_ref(),
                    phase != ApprovalPhase::Approved,
                    phase.as_str(),
                    format!("approval request is {}", phase.as_str()),
                )
                .await;
            }
        }
    }
    ctx.succeeded(&key_of(request.as_ref()));
    let next = match status.phase {
        Some(ApprovalPhase::Pending) => expires_at(&request, ttl),
        _ => None,
    };
    Ok(requeue_at(now, next))
}

pub fn error_policy(request: Arc<ApprovalRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &key_of(request.as_ref()), error)
}

/// Watches ApprovalRequests in every namespace. Phase lives in status, so any
/// new version may change a bundle (a model's approval) and wakes the
/// ModelDeployment the request is about.
pub fn run(w: &Wiring, approvals: Writer<ApprovalRequest>) -> Tasks {
    let ctx = w.ctx.clone();
    let models = w.triggers.models.clone();
    let stream = watch(
        watcher::watcher(
            Api::<ApprovalRequest>::all(w.client.clone()),
            Default::default(),
        ),
        approvals,
        move |event: &Event<ApprovalRequest>| {
            ctx.bundles_changed();
            for request in touched(event) {
                if let (Some(ns), Some(target)) =
                    (request.namespace(), request.spec.target.name.clone())
                {
                    let _ = models.unbounded_send(ObjectRef::new(&target).within(&ns));
                }
            }
        },
    )
    .applied_objects();
    let controller = Controller::for_stream(stream, w.ctx.stores.approvals.clone())
        .with_config(w.config(None))
        .graceful_shutdown_on(w.graceful())
        .run(super::once_listed(reconcile), error_policy, w.ctx.clone());
    Tasks {
        main: vec![drain(controller)],
        side: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_crds::ApprovalRequestSpec;
    use policybind_crds::approval_request::{ApprovalDecision, ApprovalTarget, ApprovalTargetKind};

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn request(decision: Option<DecisionState>) -> ApprovalRequest {
        let mut r = ApprovalRequest::new(
            "gpt-risk-1234",
            ApprovalRequestSpec {
                target: ApprovalTarget {
                    kind: ApprovalTargetKind::ModelDeployment,
                    name: Some("gpt".into()),
                    request_id: None,
                    model: None,
                    subject: None,
                    token: None,
                    policy_rule: None,
                },
                requester: "operator".into(),
                reason: None,
                expires_at: None,
                decision: decision.map(|state| ApprovalDecision {
                    state,
                    approver: "alice".into(),
                    comment: None,
                }),
            },
        );
        r.metadata = crate::testing::model("team-a", "x").build().metadata;
        r.metadata.name = Some("gpt-risk-1234".into());
        r
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn undecided_request_is_pending_until_its_deadline_then_expired() {
        let r = request(None);
        assert_eq!(
            phase(&r, at("2026-11-07T23:59:59Z"), WEEK),
            ApprovalPhase::Pending
        );
        assert_eq!(
            phase(&r, at("2026-11-08T00:00:00Z"), WEEK),
            ApprovalPhase::Expired
        );
    }

    #[test]
    fn decision_sets_the_phase_and_decision_time() {
        let now = at("2026-11-02T00:00:00Z");
        let status = desired_status(&request(Some(DecisionState::Approved)), now, WEEK);
        assert_eq!(status.phase, Some(ApprovalPhase::Approved));
        assert_eq!(status.decided_at, Some(now));
        assert!(conditions::is_true(&status.conditions, types::READY));
        let rejected = desired_status(&request(Some(DecisionState::Rejected)), now, WEEK);
        assert_eq!(rejected.phase, Some(ApprovalPhase::Rejected));
    }

    #[test]
    fn late_decision_on_an_expired_request_is_ignored() {
        let mut r = request(Some(DecisionState::Approved));
        r.status = Some(ApprovalRequestStatus {
            phase: Some(ApprovalPhase::Expired),
            ..Default::default()
        });
        assert_eq!(
            phase(&r, at("2026-12-01T00:00:00Z"), WEEK),
            ApprovalPhase::Expired
        );
    }

    #[test]
    fn recomputing_a_decided_status_changes_nothing() {
        let mut r = request(Some(DecisionState::Approved));
        let first = desired_status(&r, at("2026-11-02T00:00:00Z"), WEEK);
        r.status = Some(first.clone());
        assert_eq!(desired_status(&r, at("2026-11-05T00:00:00Z"), WEEK), first);
    }
}
