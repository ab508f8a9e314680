//! ModelDeployment controller: risk, approval, review schedule, suspension and
//! matched workloads.
//!
//! Risk score and level come from the declared factors ([`policybind_engine::risk`],
//! table in `docs/operator.md`). High and Critical deployments need an approved
//! ApprovalRequest: the controller raises one, named after the deployment and a
//! short hash of what was assessed ([`approval_request_name`]), so that a material
//! change of the spec (provider, model, data limits, risk) asks again instead of
//! riding on an old approval. Reviews are due `reviewIntervalDays` after
//! `lastReviewedAt` (or creation); an overdue review makes `Compliant` false and,
//! with `suspendWhenReviewOverdue`, suspends the deployment. The requeue is set to
//! the due time, so nothing polls.
//!
//! The same [`evaluate`] feeds the bundles directly (see [`bundle_model`]), so a
//! suspension or approval reaches every namespace in the next bundle build, not
//! after a status round trip.

use policybind_crds::wire::{annotations, labels};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PartialObjectMeta, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use policybind_crds::approval_request::{ApprovalPhase, ApprovalTarget, ApprovalTargetKind};
use policybind_crds::conditions::{self, reasons as crd_reasons, types};
use policybind_crds::model_deployment::ApprovalState;
use policybind_crds::{
    API_VERSION, ApprovalRequest, ApprovalRequestSpec, EvidenceGate, ModelDeployment,
    ModelDeploymentStatus, RiskLevel,
};
use policybind_engine::audit::AuditEvent;
use policybind_engine::bundle::BundleModel;
use serde_json::json;
use sha2::{Digest, Sha256};

use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};

use crate::context::{Context, from_jiff, key_of, reasons, requeue_at, to_jiff};
use crate::controllers::{Tasks, Wiring, drain};
use crate::error::{Error, Result};
use crate::stores::{bump, drive, touched, watch};

const CONTROLLER: &str = "model_deployment";

/// Everything the operator concludes about a deployment at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    pub score: u32,
    pub level: RiskLevel,
    pub approval: ApprovalState,
    /// The ApprovalRequest that decides approval (set when approval is required).
    pub approval_request: Option<String>,
    pub approved_by: Option<String>,
    /// The request expired unanswered (approval is then Rejected).
    pub approval_expired: bool,
    pub next_review_at: DateTime<Utc>,
    pub review_overdue: bool,
    /// In force: `spec.suspended`, or an overdue review with `suspendWhenReviewOverdue`.
    pub suspended: bool,
}

/// Name of the ApprovalRequest for the deployment as currently specified:
/// `<name>-risk-<8 hex>` over the assessed fields.
pub fn approval_request_name(model: &ModelDeployment) -> String {
    let spec = &model.spec;
    let assessed = json!({
        "provider": spec.provider,
        "model": spec.model,
        "aliases": spec.aliases,
        "version": spec.version,
        "endpoint": spec.endpoint,
        "region": spec.region,
        "useCases": spec.use_cases,
        "maxDataClassification": spec.max_data_classification,
        "risk": spec.risk,
    });
    let digest = Sha256::digest(assessed.to_string().as_bytes());
    let mut name = model.name_any();
    // Names are at most 253 characters; keep room for the suffix.
    name.truncate(240);
    format!("{name}-risk-{}", &hex::encode(digest)[..8])
}

/// Evaluates a deployment against its approval requests (any in its namespace;
/// only the one named by [`approval_request_name`] counts).
pub fn evaluate<'a>(
    model: &ModelDeployment,
    approvals: impl IntoIterator<Item = &'a ApprovalRequest>,
    now: DateTime<Utc>,
    approval_ttl: Duration,
) -> ModelState {
    let assessment = policybind_engine::risk::assess(&model.spec.risk);
    let level = assessment.level;
    let (approval, approval_request, approved_by, approval_expired) = if level.requires_approval() {
        let name = approval_request_name(model);
        let request = approvals
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some(name.as_str()));
        let approver = request
            .and_then(|r| r.spec.decision.as_ref())
            .map(|d| d.approver.clone());
        match request.map(|r| crate::controllers::approval_request::phase(r, now, approval_ttl)) {
            Some(ApprovalPhase::Approved) => (ApprovalState::Approved, Some(name), approver, false),
            Some(ApprovalPhase::Rejected) => (ApprovalState::Rejected, Some(name), approver, false),
            Some(ApprovalPhase::Expired) => (ApprovalState::Rejected, Some(name), None, true),
            Some(ApprovalPhase::Pending) | None => {
                (ApprovalState::Pending, Some(name), None, false)
            }
        }
    } else {
        (ApprovalState::NotRequired, None, None, false)
    };
    let reviewed = model.spec.last_reviewed_at.unwrap_or_else(|| {
        model
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| from_jiff(t.0))
            .unwrap_or(now)
    });
    let next_review_at =
        reviewed + chrono::Duration::days(i64::from(model.spec.review_interval_days));
    let review_overdue = now >= next_review_at;
    let suspended =
        model.spec.suspended || (review_overdue && model.spec.suspend_when_review_overdue);
    ModelState {
        score: assessment.score,
        level,
        approval,
        approval_request,
        approved_by,
        approval_expired,
        next_review_at,
        review_overdue,
        suspended,
    }
}

/// Pods in the deployment's namespace that serve it: matched by
/// `workloadSelector`, or, without one, naming it in the `policybind.io/model`
/// label or annotation.
pub fn matched_workloads<'a>(
    model: &ModelDeployment,
    pods: impl IntoIterator<Item = &'a PartialObjectMeta<Pod>>,
) -> u32 {
    let namespace = model.metadata.namespace.as_deref();
    let name = model.name_any();
    let empty = Default::default();
    pods.into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == namespace)
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
            match &model.spec.workload_selector {
                Some(selector) => policybind_engine::selector::matches(selector, labels),
                None => {
                    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
                    labels.get(annotations::MODEL) == Some(&name)
                        || annotations.get(annotations::MODEL) == Some(&name)
                }
            }
        })
        .count() as u32
}

/// The status the deployment should have.
pub fn desired_status(
    model: &ModelDeployment,
    state: &ModelState,
    gates: &[EvidenceGate],
    matched: u32,
    now: DateTime<Utc>,
) -> ModelDeploymentStatus {
    let old = model.status.clone().unwrap_or_default();
    let generation = model.metadata.generation;
    let at = to_jiff(now);
    let mut list = old.conditions.clone();
    let (approved, reason, message) = match state.approval {
        ApprovalState::NotRequired => (
            true,
            crd_reasons::APPROVAL_NOT_REQUIRED,
            format!(
                "risk {} (score {}) needs no approval",
                state.level.as_str(),
                state.score
            ),
        ),
        ApprovalState::Approved => (
            true,
            crd_reasons::APPROVAL_GRANTED,
            format!(
                "approved by {} in {}",
                state.approved_by.as_deref().unwrap_or("unknown"),
                state.approval_request.as_deref().unwrap_or("")
            ),
        ),
        ApprovalState::Pending => (
            false,
            crd_reasons::APPROVAL_PENDING,
            format!(
                "risk {} (score {}) needs an approved ApprovalRequest {}",
                state.level.as_str(),
                state.score,
                state.approval_request.as_deref().unwrap_or("")
            ),
        ),
        ApprovalState::Rejected if state.approval_expired => (
            false,
            reasons::APPROVAL_EXPIRED,
            format!(
                "ApprovalRequest {} expired unanswered; delete it to ask again",
                state.approval_request.as_deref().unwrap_or("")
            ),
        ),
        ApprovalState::Rejected => (
            false,
            crd_reasons::APPROVAL_REJECTED,
            format!(
                "rejected by {} in {}",
                state.approved_by.as_deref().unwrap_or("unknown"),
                state.approval_request.as_deref().unwrap_or("")
            ),
        ),
    };
    conditions::set_condition(
        &mut list,
        conditions::condition(types::APPROVED, approved, reason, message, generation, at),
    );
    // Compliant: per framework (EU AI Act, NIST AI RMF, ISO/IEC 42001, SOC 2),
    // from the registry fields, the evidence gates, the approval and the review
    // schedule (policybind_compliance::assess); the reason names the first failure.
    let gate_results = policybind_compliance::gates::evaluate(model, gates, now);
    let compliance = policybind_compliance::assess::model_compliance(
        &policybind_compliance::assess::ModelFacts {
            model,
            approval: state.approval,
            gate_results: &gate_results,
            next_review_at: Some(state.next_review_at),
            now,
        },
    );
    let (compliant, reason, message) =
        policybind_compliance::assess::compliant_condition(&compliance);
    conditions::set_condition(
        &mut list,
        conditions::condition(
            types::COMPLIANT,
            compliant,
            &reason,
            message,
            generation,
            at,
        ),
    );
    let (reason, message) = if model.spec.suspended {
        (crd_reasons::SUSPENDED_BY_SPEC, "spec.suspended is set")
    } else if state.suspended {
        (
            crd_reasons::SUSPENDED_REVIEW_OVERDUE,
            "review overdue and suspendWhenReviewOverdue is set",
        )
    } else {
        (reasons::NOT_SUSPENDED, "in use")
    };
    conditions::set_condition(
        &mut list,
        conditions::condition(
            types::SUSPENDED,
            state.suspended,
            reason,
            message,
            generation,
            at,
        ),
    );
    ModelDeploymentStatus {
        observed_generation: generation,
        conditions: list,
        risk_score: Some(state.score),
        risk_level: Some(state.level),
        approval: Some(state.approval),
        approval_request: state.approval_request.clone(),
        approved_by: state.approved_by.clone(),
        next_review_at: Some(state.next_review_at),
        matched_workloads: Some(matched),
        compliance,
    }
}

/// The ApprovalRequest to raise for a deployment that needs one.
pub fn desired_approval_request(
    model: &ModelDeployment,
    state: &ModelState,
    requester: &str,
) -> Option<ApprovalRequest> {
    let name = state.approval_request.clone()?;
    let mut request = ApprovalRequest::new(
        &name,
        ApprovalRequestSpec {
            target: ApprovalTarget {
                kind: ApprovalTargetKind::ModelDeployment,
                name: Some(model.name_any()),
                request_id: None,
                model: Some(model.spec.model.clone()),
                subject: None,
                token: None,
                policy_rule: None,
            },
            requester: requester.to_string(),
            reason: Some(format!(
                "ModelDeployment {} ({} {}) has risk {} (score {}); High and Critical need approval",
                model.name_any(),
                model.spec.provider,
                model.spec.model,
                state.level.as_str(),
                state.score
            )),
            expires_at: None,
            decision: None,
        },
    );
    request.metadata.namespace = model.namespace();
    request.metadata.labels = Some(
        [
            (labels::MODEL_DEPLOYMENT.to_string(), model.name_any()),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
        ]
        .into(),
    );
    // Owned by the deployment: deleting it removes its requests.
    request.metadata.owner_references = model.controller_owner_ref(&()).map(|o| vec![o]);
    Some(request)
}

/// The deployment as it goes into bundles, with the state in force.
pub fn bundle_model(model: &ModelDeployment, state: &ModelState) -> BundleModel {
    // Governance and evaluation results stay out of bundles: recording an
    // evaluation must not change what every sidecar enforces.
    let mut spec = model.spec.decision_fields();
    spec.suspended = state.suspended;
    BundleModel {
        namespace: model.namespace().unwrap_or_default(),
        name: model.name_any(),
        spec,
        risk_level: state.level,
        approval: state.approval,
        review_overdue: state.review_overdue,
    }
}

/// Reconciles one ModelDeployment.
pub async fn reconcile(model: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = ctx.now();
    let namespace = model
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let approvals = ctx.stores.approvals.state();
    let in_namespace = approvals
        .iter()
        .filter(|a| a.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .map(|a| a.as_ref());
    let state = evaluate(&model, in_namespace, now, ctx.settings.approval_ttl);
    let pods = ctx.stores.pods.state();
    let matched = matched_workloads(&model, pods.iter().map(|p| p.as_ref()));

    if let Some(request) = desired_approval_request(&model, &state, &ctx.settings.requester) {
        let name = request.name_any();
        let exists = approvals.iter().any(|a| {
            a.metadata.namespace.as_deref() == Some(namespace.as_str())
                && a.metadata.name.as_deref() == Some(name.as_str())
        });
        if !exists {
            let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), &namespace);
            api.patch(&name, &Context::apply_params(), &Patch::Apply(&request))
                .await?;
            ctx.event(
                model.as_ref(),
                false,
                "ApprovalRequested",
                format!(
                    "risk {} (score {}) needs approval: ApprovalRequest {name}",
                    state.level.as_str(),
                    state.score
                ),
            )
            .await;
        }
    }

    let gates: Vec<EvidenceGate> = ctx
        .stores
        .evidence_gates
        .state()
        .iter()
        .map(|g| g.as_ref().clone())
        .collect();
    let status = desired_status(&model, &state, &gates, matched, now);
    let old = model.status.clone().unwrap_or_default();
    if model.status.as_ref() != Some(&status) {
        let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": ModelDeployment::kind(&()),
            "status": status,
        });
        api.patch_status(
            &model.name_any(),
            &Context::apply_params(),
            &Patch::Apply(&patch),
        )
        .await?;
        for type_ in [types::APPROVED, types::COMPLIANT, types::SUSPENDED] {
            let before = conditions::find(&old.conditions, type_).map(|c| c.status.clone());
            let Some(after) = conditions::find(&status.conditions, type_) else {
                continue;
            };
            // Events only for transitions people act on; a first Approved=True
            // for a low-risk model is not news.
            let is_true = after.status == "True";
            let bad = is_true == (type_ == types::SUSPENDED);
            let news = match before {
                Some(before) => before != after.status,
                None => bad,
            };
            if news {
                ctx.record(
                    AuditEvent::lifecycle(format!(
                        "model-{}-{}",
                        type_.to_lowercase(),
                        after.status.to_lowercase()
                    ))
                    .namespace(namespace.clone())
                    .model(model.spec.model.clone())
                    .detail("modelDeployment", model.name_any())
                    .detail("reason", after.reason.clone()),
                );
                ctx.event(model.as_ref(), bad, &after.reason, after.message.clone())
                    .await;
            }
        }
    }
    ctx.succeeded(&key_of(model.as_ref()));
    // Evidence gates may age results (`maxAgeDays`): judge again at least hourly.
    let next = (!state.review_overdue)
        .then_some(state.next_review_at)
        .map(|t| t.min(now + chrono::Duration::hours(1)))
        .or(Some(now + chrono::Duration::hours(1)));
    Ok(requeue_at(now, next))
}

pub fn error_policy(model: Arc<ModelDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &key_of(model.as_ref()), error)
}

/// Watches ModelDeployments, and pod metadata in every namespace: a pod that
/// comes or goes changes the matched workloads of its namespace's models, and
/// may opt its namespace into enforcement.
pub fn run(
    w: &Wiring,
    models: Writer<ModelDeployment>,
    pods: Writer<PartialObjectMeta<Pod>>,
    gates: Writer<EvidenceGate>,
    wake: UnboundedReceiver<ObjectRef<ModelDeployment>>,
) -> Tasks {
    let ctx = &w.ctx;
    let stream = watch(
        watcher::watcher(
            Api::<ModelDeployment>::all(w.client.clone()),
            Default::default(),
        ),
        models,
        bump(ctx),
    )
    .applied_objects();
    let controller = Controller::for_stream(stream, ctx.stores.models.clone())
        .with_config(w.config(Some(Duration::from_millis(100))))
        .reconcile_on(wake)
        .graceful_shutdown_on(w.graceful())
        .run(super::once_listed(reconcile), error_policy, ctx.clone());
    let models_store = ctx.stores.models.clone();
    let triggers = w.triggers.clone();
    let pods = drive(watch(
        watcher::watcher(
            Api::<PartialObjectMeta<Pod>>::all(w.client.clone()),
            Default::default(),
        ),
        pods,
        move |event: &Event<PartialObjectMeta<Pod>>| {
            for pod in touched(event) {
                let ns = pod.namespace();
                for model in models_store.state() {
                    if model.namespace() == ns {
                        let _ = triggers
                            .models
                            .unbounded_send(ObjectRef::from_obj(model.as_ref()));
                    }
                }
                if let Some(ns) = ns {
                    let _ = triggers.namespaces.unbounded_send(ObjectRef::new(&ns));
                }
            }
        },
    ));
    // A gate that changes re-judges every model's Compliant condition.
    let models_store = ctx.stores.models.clone();
    let triggers = w.triggers.clone();
    let gates = drive(watch(
        watcher::watcher(
            Api::<EvidenceGate>::all(w.client.clone()),
            Default::default(),
        ),
        gates,
        move |event: &Event<EvidenceGate>| {
            if !touched(event).is_empty() || matches!(event, Event::InitDone) {
                for model in models_store.state() {
                    let _ = triggers
                        .models
                        .unbounded_send(ObjectRef::from_obj(model.as_ref()));
                }
            }
        },
    ));
    Tasks {
        main: vec![drain(controller)],
        side: vec![Box::pin(pods), Box::pin(gates)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::model;
    use policybind_crds::approval_request::{ApprovalDecision, DecisionState};
    use policybind_crds::model_deployment::RiskFactors;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn high_risk() -> ModelDeployment {
        model("team-a", "support-bot")
            .factors(RiskFactors {
                customer_facing: true,
                automated_decisions: true,
                tool_use: true,
                ..Default::default()
            })
            .build()
    }

    fn decided(model: &ModelDeployment, state: DecisionState) -> ApprovalRequest {
        let now = at("2026-11-02T00:00:00Z");
        let s = evaluate(model, [], now, WEEK);
        let mut request = desired_approval_request(model, &s, "operator").unwrap();
        request.metadata.creation_timestamp = model.metadata.creation_timestamp.clone();
        request.spec.decision = Some(ApprovalDecision {
            state,
            approver: "alice".into(),
            comment: None,
        });
        request
    }

    #[test]
    fn low_risk_model_is_approved_without_a_request() {
        let m = model("team-a", "gpt").build();
        let state = evaluate(&m, [], at("2026-11-02T00:00:00Z"), WEEK);
        assert_eq!(state.level, RiskLevel::Low);
        assert_eq!(state.approval, ApprovalState::NotRequired);
        assert!(desired_approval_request(&m, &state, "operator").is_none());
        let status = desired_status(&m, &state, &[], 0, at("2026-11-02T00:00:00Z"));
        assert!(conditions::is_true(&status.conditions, types::APPROVED));
    }

    #[test]
    fn high_risk_model_is_pending_and_raises_an_owned_request() {
        let m = high_risk();
        let state = evaluate(&m, [], at("2026-11-02T00:00:00Z"), WEEK);
        assert_eq!((state.score, state.level), (60, RiskLevel::High));
        assert_eq!(state.approval, ApprovalState::Pending);
        let request = desired_approval_request(&m, &state, "operator").unwrap();
        assert!(request.name_any().starts_with("support-bot-risk-"));
        assert_eq!(request.spec.target.name.as_deref(), Some("support-bot"));
        assert_eq!(request.owner_references()[0].uid, "uid-team-a-support-bot");
        let status = desired_status(&m, &state, &[], 0, at("2026-11-02T00:00:00Z"));
        assert!(!conditions::is_true(&status.conditions, types::APPROVED));
        assert_eq!(
            conditions::find(&status.conditions, types::APPROVED)
                .unwrap()
                .reason,
            "ApprovalPending"
        );
    }

    #[test]
    fn approval_and_rejection_flow_back_from_the_request() {
        let m = high_risk();
        let now = at("2026-11-02T00:00:00Z");
        let approved = evaluate(&m, [&decided(&m, DecisionState::Approved)], now, WEEK);
        assert_eq!(approved.approval, ApprovalState::Approved);
        assert_eq!(approved.approved_by.as_deref(), Some("alice"));
        let rejected = evaluate(&m, [&decided(&m, DecisionState::Rejected)], now, WEEK);
        assert_eq!(rejected.approval, ApprovalState::Rejected);
    }

    #[test]
    fn material_spec_change_needs_a_new_approval() {
        let m = high_risk();
        let approval = decided(&m, DecisionState::Approved);
        let mut changed = m.clone();
        changed.spec.provider = "anthropic".into();
        let state = evaluate(&changed, [&approval], at("2026-11-02T00:00:00Z"), WEEK);
        assert_eq!(state.approval, ApprovalState::Pending);
        assert_ne!(approval_request_name(&changed), approval_request_name(&m));
    }

    #[test]
    fn unanswered_request_past_its_deadline_rejects() {
        let m = high_risk();
        let s = evaluate(&m, [], at("2026-11-02T00:00:00Z"), WEEK);
        let mut request = desired_approval_request(&m, &s, "operator").unwrap();
        request.metadata.creation_timestamp = m.metadata.creation_timestamp.clone();
        let state = evaluate(&m, [&request], at("2026-11-09T00:00:00Z"), WEEK);
        assert_eq!(state.approval, ApprovalState::Rejected);
        assert!(state.approval_expired);
    }

    #[test]
    fn overdue_review_flips_compliant_and_suspends_only_when_configured() {
        let now = at("2026-11-12T00:00:00Z");
        let plain = model("team-a", "gpt").review_every(10, false).build();
        let state = evaluate(&plain, [], now, WEEK);
        assert!(state.review_overdue);
        assert!(!state.suspended);
        let status = desired_status(&plain, &state, &[], 0, now);
        assert!(!conditions::is_true(&status.conditions, types::COMPLIANT));
        assert!(!conditions::is_true(&status.conditions, types::SUSPENDED));
        let strict = model("team-a", "gpt").review_every(10, true).build();
        let state = evaluate(&strict, [], now, WEEK);
        assert!(state.suspended);
        let status = desired_status(&strict, &state, &[], 0, now);
        assert_eq!(
            conditions::find(&status.conditions, types::SUSPENDED)
                .unwrap()
                .reason,
            "SuspendedReviewOverdue"
        );
        assert!(bundle_model(&strict, &state).spec.suspended);
    }

    #[test]
    fn review_due_date_is_the_requeue_moment() {
        let m = model("team-a", "gpt").review_every(30, false).build();
        let now = at("2026-11-30T23:59:00Z");
        let state = evaluate(&m, [], now, WEEK);
        assert_eq!(state.next_review_at, at("2026-12-01T00:00:00Z"));
        assert_eq!(
            requeue_at(now, Some(state.next_review_at)),
            Action::requeue(Duration::from_secs(60))
        );
    }

    #[test]
    fn workloads_are_counted_by_selector_or_model_label() {
        let mut m = model("team-a", "gpt").build();
        let pod = |ns: &str, labels: &[(&str, &str)]| {
            let mut p: PartialObjectMeta<Pod> = PartialObjectMeta::default();
            p.metadata.namespace = Some(ns.into());
            p.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            p
        };
        let pods = [
            pod("team-a", &[(annotations::MODEL, "gpt")]),
            pod("team-a", &[("app", "vllm")]),
            pod("team-b", &[(annotations::MODEL, "gpt")]),
        ];
        assert_eq!(matched_workloads(&m, &pods), 1);
        m.spec.workload_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("app".to_string(), "vllm".to_string())].into()),
                ..Default::default()
            },
        );
        assert_eq!(matched_workloads(&m, &pods), 1);
    }

    #[test]
    fn unchanged_model_gives_an_identical_status() {
        let mut m = high_risk();
        let state = evaluate(&m, [], at("2026-11-02T00:00:00Z"), WEEK);
        let first = desired_status(&m, &state, &[], 2, at("2026-11-02T00:00:00Z"));
        m.status = Some(first.clone());
        let state = evaluate(&m, [], at("2026-11-03T00:00:00Z"), WEEK);
        assert_eq!(
            desired_status(&m, &state, &[], 2, at("2026-11-03T00:00:00Z")),
            first
        );
    }
}
