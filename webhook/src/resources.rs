//! Validating PolicyBind's own resources: the checks that need the engine or
//! other objects, which CEL rules in the schema cannot do.
//!
//! - AIPolicy / ClusterAIPolicy: compiled with the engine together with the
//!   policies already in the cluster that share its scope, so invalid regexes,
//!   CEL, time zones and conflicts at equal priority are refused with the exact
//!   resource, rule, field and reason the engine reports.
//! - ModelDeployment: compiled against the registry for duplicate model names.
//! - AccessToken: scope sanity (time zones, model globs, classifications,
//!   use cases), plus warnings that help (already expired, no model matches).
//! - ApprovalRequest: a decision must carry the deciding user's own name, cannot
//!   come from the requester, and needs the `approve` verb (SubjectAccessReview).
//!
//! Nothing here mutates these resources: GitOps tools must see no drift.

use k8s_openapi::api::authentication::v1::UserInfo;
use policybind_crds::approval_request::{ApprovalDecision, ApprovalTargetKind, DecisionState};
use policybind_crds::{AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, ModelDeployment};
use policybind_engine::bundle::{Bundle, BundleModel, BundlePolicy, BundleToken};
use policybind_engine::{CompileErrors, PolicySet, codes};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::authz::{self, Access, Authorizer};
use crate::verdict::Verdict;
use crate::view::ClusterView;
use policybind_crds::model_deployment::ModelScope;
use policybind_crds::wire::verbs;
use policybind_engine::ident;

pub use crate::codes as admission_codes;
use crate::codes::*;

fn parse<T: DeserializeOwned>(kind: &str, object: &Value) -> Result<T, Verdict> {
    serde_json::from_value(object.clone()).map_err(|e| {
        Verdict::deny(
            RESOURCE_INVALID,
            format!("{kind} does not match the policybind.io/v1alpha1 schema: {e}"),
        )
    })
}

fn name_of(object: &Value) -> (String, String) {
    let meta = object.get("metadata");
    let get = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (get("namespace"), get("name"))
}

/// Errors about `resource` only: existing objects may have problems of their own,
/// which are theirs to fix and must not block this one.
fn errors_for(errors: &CompileErrors, resource: &str) -> Vec<String> {
    errors
        .0
        .iter()
        .filter(|e| e.resource == resource)
        .map(ToString::to_string)
        .collect()
}

/// Verdicts of recent compiles, keyed by a hash of exactly what was compiled.
///
/// Compiling builds the detector automaton and CEL programs (milliseconds), and
/// GitOps tools re-apply unchanged objects all day: the same bundle gives the same
/// verdict, so it is answered from here. The hash is keyed per process
/// (`RandomState`), so nobody can craft a collision ahead of time. Bounded: the map
/// is cleared when full.
pub struct CompileCache {
    state: std::collections::hash_map::RandomState,
    verdicts: std::sync::Mutex<std::collections::HashMap<u64, Verdict>>,
    capacity: usize,
}

impl CompileCache {
    pub fn new(capacity: usize) -> Self {
        CompileCache {
            state: Default::default(),
            verdicts: Default::default(),
            capacity,
        }
    }

    fn key(&self, bundle: &Bundle, resource: &str) -> Option<u64> {
        use std::hash::{BuildHasher, Hasher};
        let bytes = serde_json::to_vec(bundle).ok()?;
        let mut hasher = self.state.build_hasher();
        hasher.write(resource.as_bytes());
        hasher.write(&bytes);
        Some(hasher.finish())
    }
}

impl Default for CompileCache {
    fn default() -> Self {
        CompileCache::new(1024)
    }
}

fn compile_verdict(cache: &CompileCache, bundle: &Bundle, resource: &str) -> Verdict {
    let key = cache.key(bundle, resource);
    if let Some(key) = key
        && let Some(verdict) = cache.verdicts.lock().expect("cache lock").get(&key)
    {
        return verdict.clone();
    }
    let verdict = compile_uncached(bundle, resource);
    if let Some(key) = key {
        let mut verdicts = cache.verdicts.lock().expect("cache lock");
        if verdicts.len() >= cache.capacity {
            verdicts.clear();
        }
        verdicts.insert(key, verdict.clone());
    }
    verdict
}

fn compile_uncached(bundle: &Bundle, resource: &str) -> Verdict {
    match PolicySet::compile(bundle) {
        Ok(_) => Verdict::allow(codes::POLICY_ALLOW),
        Err(errors) => {
            let mine = errors_for(&errors, resource);
            if mine.is_empty() {
                Verdict::allow(codes::POLICY_ALLOW)
            } else {
                Verdict::deny(RESOURCE_INVALID, mine.join("; "))
            }
        }
    }
}

/// An AIPolicy, compiled with the other AIPolicies of its namespace and every
/// ClusterAIPolicy (the set a namespace bundle would hold).
pub fn validate_ai_policy(view: &dyn ClusterView, cache: &CompileCache, object: &Value) -> Verdict {
    let policy: AIPolicy = match parse("AIPolicy", object) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let (namespace, name) = name_of(object);
    let mut bundle = Bundle {
        namespace: Some(namespace.clone()),
        ..Bundle::default()
    };
    bundle.policies.extend(
        view.cluster_policies()
            .iter()
            .map(|p| BundlePolicy::from_cluster_policy(p)),
    );
    bundle.policies.extend(
        view.ai_policies(&namespace)
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(name.as_str()))
            .map(|p| BundlePolicy::from_ai_policy(p)),
    );
    // Last, so that conflicts are reported against the incoming policy.
    bundle.policies.push(BundlePolicy::from_ai_policy(&policy));
    compile_verdict(cache, &bundle, &format!("AIPolicy {namespace}/{name}"))
}

/// A ClusterAIPolicy, compiled with every other ClusterAIPolicy.
pub fn validate_cluster_policy(
    view: &dyn ClusterView,
    cache: &CompileCache,
    object: &Value,
) -> Verdict {
    let policy: ClusterAIPolicy = match parse("ClusterAIPolicy", object) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let (_, name) = name_of(object);
    let mut bundle = Bundle::default();
    bundle.policies.extend(
        view.cluster_policies()
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(name.as_str()))
            .map(|p| BundlePolicy::from_cluster_policy(p)),
    );
    bundle
        .policies
        .push(BundlePolicy::from_cluster_policy(&policy));
    compile_verdict(cache, &bundle, &format!("ClusterAIPolicy {name}"))
}

/// A ModelDeployment, compiled with the registry: a model name or alias may be
/// registered once.
pub fn validate_model(view: &dyn ClusterView, cache: &CompileCache, object: &Value) -> Verdict {
    let model: ModelDeployment = match parse("ModelDeployment", object) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let (namespace, name) = name_of(object);
    let mut bundle = Bundle::default();
    bundle.models.extend(
        view.models()
            .iter()
            .filter(|m| {
                !(m.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && m.metadata.name.as_deref() == Some(name.as_str()))
            })
            .map(|m| BundleModel::from_model(m, None)),
    );
    let incoming = BundleModel::from_model(&model, None);
    if let Some(message) = duplicate_registration(&bundle.models, &incoming) {
        return Verdict::deny(RESOURCE_INVALID, message);
    }
    bundle.models.push(incoming);
    compile_verdict(
        cache,
        &bundle,
        &format!("ModelDeployment {namespace}/{name}"),
    )
}

/// A model name (or alias) is unique within a namespace and among registrations
/// shared cluster-wide (engine `scope`): the clash, said so a user knows what to
/// change. The engine's compile enforces the same rule.
fn duplicate_registration(existing: &[BundleModel], incoming: &BundleModel) -> Option<String> {
    let shared = incoming.spec.scope == ModelScope::Cluster;
    for name in policybind_engine::scope::model_names(incoming) {
        let clash = existing.iter().find(|other| {
            policybind_engine::scope::model_names(other).any(|n| n == name)
                && (other.namespace == incoming.namespace
                    || (shared && other.spec.scope == ModelScope::Cluster))
        });
        let Some(other) = clash else { continue };
        let place = if other.namespace == incoming.namespace {
            format!(
                "in namespace {}: a name is registered once per namespace",
                other.namespace
            )
        } else {
            "cluster-wide (both have spec.scope: Cluster): a shared name is registered once in the cluster"
                .to_string()
        };
        return Some(format!(
            "ModelDeployment {}: spec.model: model name {name:?} is already registered by ModelDeployment {} {place}; \
             choose another model name or alias{}",
            incoming.id(),
            other.id(),
            if shared {
                ", or register it with spec.scope: Namespace"
            } else {
                ""
            }
        ));
    }
    None
}

/// `spec.scope: Cluster` decides where other teams' requests for the name go: it
/// needs verb `share` on modeldeployments cluster-wide, checked when the scope
/// becomes Cluster (create, or an update from Namespace). `None`: nothing to deny.
pub async fn authorize_model_scope(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    object: &Value,
    old_object: Option<&Value>,
) -> Option<Verdict> {
    let is_cluster =
        |o: &Value| o.pointer("/spec/scope").and_then(Value::as_str) == Some("Cluster");
    if !is_cluster(object) || old_object.is_some_and(is_cluster) {
        return None;
    }
    let (namespace, name) = name_of(object);
    let access = Access::new(verbs::SHARE, "modeldeployments").named(&name);
    let username = user.username.clone().unwrap_or_default();
    match authz::check(authorizer, user, &access).await {
        Ok(true) => None,
        Ok(false) => Some(Verdict::deny(
            SHARE_NOT_PERMITTED,
            format!(
                "ModelDeployment {namespace}/{name}: spec.scope: Cluster shares the model name with every namespace, \
                 and {username} may not share models; keep spec.scope: Namespace, or ask an administrator to grant \
                 {} (the ClusterRole policybind-admin has it, bound with a ClusterRoleBinding)",
                access.describe()
            ),
        )),
        Err(error) => {
            tracing::warn!(%error, "SubjectAccessReview for sharing failed");
            Some(Verdict::deny(
                AUTHORIZATION_UNAVAILABLE,
                format!(
                    "ModelDeployment {namespace}/{name}: the right to share models could not be checked right now; try again"
                ),
            ))
        }
    }
}

/// An AccessToken valid in other namespaces (`spec.additionalNamespaces`): its
/// author must be allowed to create AccessTokens in each newly named namespace
/// (all of them on create). One SubjectAccessReview per namespace, in parallel.
/// `None`: nothing to deny.
pub async fn authorize_token_namespaces(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    object: &Value,
    old_object: Option<&Value>,
) -> Option<Verdict> {
    let (own, name) = name_of(object);
    let listed = |o: &Value| -> Vec<String> {
        o.pointer("/spec/additionalNamespaces")
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
            .unwrap_or_default()
    };
    let before = old_object.map(listed).unwrap_or_default();
    let mut added: Vec<String> = listed(object)
        .into_iter()
        .filter(|n| *n != own && !before.contains(n))
        .collect();
    added.sort();
    added.dedup();
    for (i, namespace) in added.iter().enumerate() {
        let field = format!("spec.additionalNamespaces[{i}]");
        if let Err(error) = ident::check_max(&field, namespace, ident::MAX_NAMESPACE) {
            return Some(
                Verdict::deny(codes::REQUEST_INVALID, error.to_string())
                    .with_detail("invalidField", error.field()),
            );
        }
    }
    let checks = added.iter().map(|namespace| async move {
        let access = Access::new("create", "accesstokens").in_namespace(namespace);
        (namespace, authz::check(authorizer, user, &access).await)
    });
    let answers = futures::future::join_all(checks).await;
    let username = user.username.clone().unwrap_or_default();
    let resource = format!("AccessToken {own}/{name}");
    if let Some((namespace, _)) = answers.iter().find(|(_, a)| a.is_err()) {
        tracing::warn!(namespace = %namespace, "SubjectAccessReview for a token namespace failed");
        return Some(Verdict::deny(
            AUTHORIZATION_UNAVAILABLE,
            format!(
                "{resource}: spec.additionalNamespaces: the right to create AccessTokens in namespace {namespace} \
                 could not be checked right now; try again"
            ),
        ));
    }
    let refused: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Ok(false)))
        .map(|(n, _)| n.as_str())
        .collect();
    if refused.is_empty() {
        return None;
    }
    Some(
        Verdict::deny(
            NAMESPACE_NOT_PERMITTED,
            format!(
                "{resource}: spec.additionalNamespaces names {} where {username} may not create AccessTokens; \
                 a token is valid in another namespace only if its author could have created it there: remove {}, \
                 or ask an administrator of {} to grant verb \"create\" on accesstokens.policybind.io (the ClusterRole \
                 policybind-developer, bound there)",
                refused.iter().map(|n| format!("namespace {n}")).collect::<Vec<_>>().join(", "),
                if refused.len() == 1 { "it" } else { "them" },
                refused.join(", ")
            ),
        )
        .with_detail("refusedNamespaces", refused.join(",")),
    )
}

/// An AIBudget: what the engine checks when compiling it (time zones, selector
/// operators, one budget per period), which the CRD schema cannot.
pub fn validate_budget(object: &Value) -> Verdict {
    let budget: policybind_crds::AIBudget = match parse("AIBudget", object) {
        Ok(b) => b,
        Err(v) => return v,
    };
    let (namespace, name) = name_of(object);
    let resource = format!("AIBudget {namespace}/{name}");
    let bundle = Bundle {
        budgets: vec![policybind_engine::bundle::BundleBudget::from_budget(
            &budget,
        )],
        ..Bundle::default()
    };
    match PolicySet::compile(&bundle) {
        Ok(_) => Verdict::allow(codes::POLICY_ALLOW),
        Err(errors) => Verdict::deny(RESOURCE_INVALID, errors_for(&errors, &resource).join("; ")),
    }
}

/// An AccessToken: what the engine checks when compiling it, and the scope rules
/// that span fields.
pub fn validate_token(
    view: &dyn ClusterView,
    object: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Verdict {
    let token: AccessToken = match parse("AccessToken", object) {
        Ok(t) => t,
        Err(v) => return v,
    };
    let (namespace, name) = name_of(object);
    let resource = format!("AccessToken {namespace}/{name}");
    let spec = &token.spec;
    let mut problems = vec![];
    if let Some(default) = &spec.default_use_case
        && !spec.allowed_use_cases.is_empty()
        && !spec.allowed_use_cases.contains(default)
    {
        problems.push(format!(
            "{resource}: spec.defaultUseCase: {default:?} is not in spec.allowedUseCases"
        ));
    }
    if spec.allowed_models.iter().any(|m| m.trim().is_empty()) {
        problems.push(format!(
            "{resource}: spec.allowedModels: an entry is empty; use \"*\" for every registered model"
        ));
    }
    if let Some(rate) = &spec.rate_limit
        && rate.requests_per_minute == Some(0)
    {
        problems.push(format!(
            "{resource}: spec.rateLimit.requestsPerMinute: must be at least 1 (revoke the token to stop it)"
        ));
    }
    let bundle = Bundle {
        tokens: vec![BundleToken::from_token(&token, vec![])],
        ..Bundle::default()
    };
    if let Err(errors) = PolicySet::compile(&bundle) {
        problems.extend(errors_for(&errors, &resource));
    }
    if !problems.is_empty() {
        return Verdict::deny(RESOURCE_INVALID, problems.join("; "));
    }
    let mut verdict = Verdict::allow(codes::POLICY_ALLOW);
    if spec.expires_at.is_some_and(|t| t <= now) {
        verdict.warnings.push(format!(
            "{resource}: spec.expiresAt is in the past; every request with it will be denied TOKEN_EXPIRED"
        ));
    }
    if let Ok(globs) = policybind_engine::selector::glob_set(&spec.allowed_models) {
        let registered = view.models();
        let any = registered.iter().any(|m| {
            std::iter::once(&m.spec.model)
                .chain(&m.spec.aliases)
                .any(|n| globs.is_match(n))
        });
        if !registered.is_empty() && !any {
            verdict.warnings.push(format!(
                "{resource}: spec.allowedModels matches no registered ModelDeployment yet"
            ));
        }
    }
    verdict
}

/// An ApprovalRequest create or update. Only a new decision is judged; the
/// schema's CEL rules keep target and requester immutable.
/// An approval of a ModelDeployment is granted only while every EvidenceGate
/// that applies to it passes (`policybind_compliance::gates`); the denial names
/// the failing gate, threshold and value.
fn failing_evidence_gate(
    view: &dyn ClusterView,
    request: &ApprovalRequest,
    namespace: &str,
) -> Option<Verdict> {
    if request.spec.target.kind != ApprovalTargetKind::ModelDeployment {
        return None;
    }
    let model = view.model(namespace, request.spec.target.name.as_deref()?)?;
    let gates: Vec<_> = view
        .evidence_gates()
        .iter()
        .map(|g| g.as_ref().clone())
        .collect();
    let results = policybind_compliance::gates::evaluate(&model, &gates, chrono::Utc::now());
    let message = policybind_compliance::gates::denial_message(&model, &results)?;
    Some(Verdict::deny(
        policybind_compliance::gates::DENIAL_CODE,
        message,
    ))
}

pub async fn validate_approval(
    authorizer: &dyn Authorizer,
    view: &dyn ClusterView,
    user: &UserInfo,
    object: &Value,
    old_object: Option<&Value>,
) -> Verdict {
    let request: ApprovalRequest = match parse("ApprovalRequest", object) {
        Ok(r) => r,
        Err(v) => return v,
    };
    let (namespace, name) = name_of(object);
    let recorded = [
        Some(("spec.requester", request.spec.requester.as_str())),
        request
            .spec
            .decision
            .as_ref()
            .map(|d| ("spec.decision.approver", d.approver.as_str())),
    ];
    for (field, value) in recorded.into_iter().flatten() {
        if let Err(error) = ident::check_max(field, value, ident::MAX_USER) {
            return Verdict::deny(codes::REQUEST_INVALID, error.to_string())
                .with_detail("invalidField", error.field());
        }
    }
    let old_decision: Option<ApprovalDecision> = old_object
        .and_then(|o| o.pointer("/spec/decision"))
        .and_then(|d| serde_json::from_value(d.clone()).ok());
    let Some(decision) = &request.spec.decision else {
        if old_decision.is_some() {
            return Verdict::deny(
                DECISION_IMMUTABLE,
                format!(
                    "ApprovalRequest {namespace}/{name}: spec.decision: a decision cannot be withdrawn; create a new ApprovalRequest"
                ),
            );
        }
        return Verdict::allow(codes::APPROVAL_REQUIRED);
    };
    if let Some(old) = &old_decision {
        if old == decision {
            // Unchanged decision: labels, annotations or other edits.
            return Verdict::allow(codes::POLICY_ALLOW);
        }
        return Verdict::deny(
            DECISION_IMMUTABLE,
            format!(
                "ApprovalRequest {namespace}/{name}: spec.decision: a decision cannot be changed once made (was {:?} by {})",
                old.state, old.approver
            ),
        );
    }

    let username = user.username.clone().unwrap_or_default();
    let approval = |v: Verdict| {
        let mut v = v
            .with_detail("approver", decision.approver.clone())
            .with_detail("user", username.clone())
            .with_detail("decision", format!("{:?}", decision.state))
            .with_detail("requester", request.spec.requester.clone());
        v.record_kind = policybind_engine::audit::RecordKind::Approval;
        v
    };
    if decision.approver != username {
        return approval(Verdict::deny(
            APPROVER_MISMATCH,
            format!(
                "ApprovalRequest {namespace}/{name}: spec.decision.approver is {:?} but you are authenticated as {username:?}; \
                 write your own user name",
                decision.approver
            ),
        ));
    }
    if username == request.spec.requester {
        return approval(Verdict::deny(
            SELF_APPROVAL,
            format!(
                "ApprovalRequest {namespace}/{name}: {username} requested this and cannot decide it; another approver must"
            ),
        ));
    }
    if decision.state == DecisionState::Approved
        && let Some(denial) = failing_evidence_gate(view, &request, &namespace)
    {
        return approval(denial);
    }
    let access = Access::new(verbs::APPROVE, "approvalrequests")
        .in_namespace(&namespace)
        .named(&name);
    let answer = authz::check(authorizer, user, &access).await;
    match answer {
        Ok(true) => approval(Verdict::allow(match decision.state {
            DecisionState::Approved => codes::APPROVAL_GRANTED,
            DecisionState::Rejected => APPROVAL_REJECTED,
        })),
        Ok(false) => approval(Verdict::deny(
            APPROVAL_NOT_PERMITTED,
            format!(
                "ApprovalRequest {namespace}/{name}: {username} may not decide approval requests in namespace {namespace}; \
                 an administrator must grant {}",
                access.describe()
            ),
        )),
        Err(error) => {
            tracing::warn!(%error, "SubjectAccessReview failed");
            approval(Verdict::deny(
                AUTHORIZATION_UNAVAILABLE,
                format!(
                    "ApprovalRequest {namespace}/{name}: the approver's rights could not be checked right now; try again"
                ),
            ))
        }
    }
}
