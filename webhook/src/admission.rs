//! The admission router: `POST /validate` and `POST /mutate`, each taking an
//! AdmissionReview (`admission.k8s.io/v1`) and answering one.
//!
//! A business decision (deny, warn, patch) is always a `200` with the answer in
//! the review; a body that is not an AdmissionReview gets a `400` with a JSON
//! message, an oversized one a `413`. Every review that concerns something
//! PolicyBind governs produces one audit record, except dry-run reviews, which
//! are decided and not recorded (the configurations say `sideEffects:
//! NoneOnDryRun`). In an enforced namespace an admission whose record cannot be
//! written is denied (`AUDIT_UNAVAILABLE`, configurable).
//!
//! Before anything is decided, every identifier the review carries and the
//! webhook records is checked ([`crate::ident`]): a forged review with a huge or
//! control-character identifier is denied and never reaches the trail.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use policybind_crds::Effect;
use policybind_engine::audit::AuditEvent;
use serde_json::Value;

use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::config::AdmissionConfig;
use crate::inject::{self, InjectChoice, Outcome, Skip};
use crate::metrics::{AuditLabels, InjectionLabels, Metrics, ReviewLabels, WebhookLabel};
use crate::resources;
use crate::verdict::Verdict;
use crate::view::ClusterView;
use crate::workloads::{self, Heuristics, PodTemplate};
use crate::{codes, enforcement};
use policybind_engine::ident::{self, IdentError};

/// Default cap on an AdmissionReview body. The API server limits objects to
/// about 1.5 MiB and a review may carry the old object too.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Everything the handlers need, shared by all requests.
pub struct App {
    pub config: AdmissionConfig,
    pub view: Arc<dyn ClusterView>,
    pub authorizer: Arc<dyn Authorizer>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    pub heuristics: Heuristics,
    pub compile_cache: Arc<resources::CompileCache>,
}

impl App {
    pub fn new(
        config: AdmissionConfig,
        view: Arc<dyn ClusterView>,
        authorizer: Arc<dyn Authorizer>,
        audit: Arc<dyn AuditSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, crate::Error> {
        let heuristics = Heuristics::new(&config.extra_model_server_images)
            .map_err(|e| crate::Error::Config(format!("model server image pattern: {e}")))?;
        config.sidecar.validate().map_err(crate::Error::Config)?;
        Ok(Arc::new(App {
            config,
            view,
            authorizer,
            audit,
            metrics,
            heuristics,
            compile_cache: Arc::new(resources::CompileCache::default()),
        }))
    }
}

/// The HTTPS router (admission paths only; health and metrics are on the plain port).
pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/validate", post(validate))
        // Per-kind paths route to the same handlers (the handler dispatches on the
        // review's kind), so configurations may split webhooks by path.
        .route("/validate/resources", post(validate))
        .route("/validate/workloads", post(validate))
        .route("/mutate", post(mutate))
        .route("/mutate/pods", post(mutate))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

fn bad_request(app: &App, message: String) -> Response {
    app.metrics.rejected_bodies.inc();
    let body = serde_json::json!({ "error": message });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// Parses the body into a review with a request, or says precisely why not.
fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("body is not an admission.k8s.io/v1 AdmissionReview: {e}"))?;
    if review.types.kind != "AdmissionReview" {
        return Err(format!(
            "kind is {:?}, expected \"AdmissionReview\"",
            review.types.kind
        ));
    }
    if review.types.api_version != "admission.k8s.io/v1" {
        return Err(format!(
            "apiVersion is {:?}; only admission.k8s.io/v1 is served (set admissionReviewVersions: [v1])",
            review.types.api_version
        ));
    }
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_string())
}

/// The review answer. The patch is sent base64-encoded, the form Go's
/// `[]byte` marshals to and every webhook client expects (kube-core would
/// otherwise write an array of numbers).
fn respond(response: AdmissionResponse) -> Response {
    use base64::Engine;
    let patch = response.patch.clone();
    let mut review = match serde_json::to_value(response.into_review()) {
        Ok(v) => v,
        Err(error) => {
            tracing::error!(%error, "serializing an admission response");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if let Some(patch) = patch {
        review["response"]["patch"] =
            Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    (StatusCode::OK, axum::Json(review)).into_response()
}

fn operation_str(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Longest message, warning or detail value put into a record. Identifiers are
/// refused beforehand; this bounds the text the webhook composes around them
/// (engine messages may quote a policy).
const MAX_RECORDED_TEXT: usize = 4096;

/// Every identifier of the review itself that the webhook records or acts on.
pub fn check_review_identifiers(
    request: &AdmissionRequest<DynamicObject>,
) -> Result<(), IdentError> {
    use ident::{
        MAX_NAME, MAX_NAMESPACE, MAX_UID, MAX_USER, check_max as check, check_opt_max as check_opt,
    };
    check("request.uid", &request.uid, MAX_UID)?;
    for (field, value) in [
        ("request.kind.group", &request.kind.group),
        ("request.kind.version", &request.kind.version),
        ("request.kind.kind", &request.kind.kind),
        ("request.resource.group", &request.resource.group),
        ("request.resource.version", &request.resource.version),
        ("request.resource.resource", &request.resource.resource),
    ] {
        check(field, value, MAX_NAME)?;
    }
    check_opt(
        "request.subResource",
        request.sub_resource.as_deref(),
        MAX_NAME,
    )?;
    check("request.name", &request.name, MAX_NAME)?;
    check_opt(
        "request.namespace",
        request.namespace.as_deref(),
        MAX_NAMESPACE,
    )?;
    check_opt(
        "request.userInfo.username",
        request.user_info.username.as_deref(),
        MAX_USER,
    )?;
    check_opt(
        "request.userInfo.uid",
        request.user_info.uid.as_deref(),
        MAX_USER,
    )?;
    for (i, group) in request.user_info.groups.iter().flatten().enumerate() {
        check(&format!("request.userInfo.groups[{i}]"), group, MAX_USER)?;
    }
    if let Some(object) = &request.object {
        let meta = &object.metadata;
        check_opt(
            "request.object.metadata.name",
            meta.name.as_deref(),
            MAX_NAME,
        )?;
        check_opt(
            "request.object.metadata.generateName",
            meta.generate_name.as_deref(),
            MAX_NAME,
        )?;
        check_opt(
            "request.object.metadata.namespace",
            meta.namespace.as_deref(),
            MAX_NAMESPACE,
        )?;
    }
    Ok(())
}

/// The denial for a refused identifier: names the field, never the value.
fn invalid_identifier(app: &App, error: &IdentError) -> Verdict {
    app.metrics.invalid_identifiers.inc();
    Verdict::deny(policybind_engine::codes::REQUEST_INVALID, error.to_string())
        .with_detail("invalidField", error.field())
}

/// Records the verdict (unless dry-run) and counts the outcome. In an enforced
/// namespace an allowed admission whose record cannot be written turns into a
/// denial when the configuration requires records.
fn record_outcome(
    app: &App,
    webhook: &'static str,
    request: &AdmissionRequest<DynamicObject>,
    verdict: Verdict,
) -> Verdict {
    if verdict.code.is_none() {
        return verdict;
    }
    let count = |result: &'static str, reason: &'static str| {
        app.metrics
            .audit_records
            .get_or_create(&AuditLabels { result, reason })
            .inc();
    };
    if request.dry_run {
        // No side effects on dry runs (sideEffects: NoneOnDryRun): decided, not recorded.
        count("dry_run", "");
        return verdict;
    }
    let Err(failure) = app.audit.record(event_for(webhook, request, &verdict)) else {
        count("written", "");
        return verdict;
    };
    count("failed", failure.reason);
    let namespace = request.namespace.as_deref().unwrap_or("");
    let enforced = !namespace.is_empty()
        && inject::namespace_enforced(app.view.namespace_labels(namespace).as_ref());
    tracing::warn!(
        error = %failure,
        namespace,
        enforced,
        "admission record not written"
    );
    if !(verdict.allowed && enforced && app.config.require_audit_record) {
        return verdict;
    }
    Verdict::deny(
        policybind_engine::codes::AUDIT_UNAVAILABLE,
        format!(
            "the audit trail cannot take the record of this admission right now ({failure}); namespace {namespace} \
             is enforced, so nothing is admitted unrecorded; try again shortly"
        ),
    )
}

/// Turns a verdict into the response, records and counts it.
fn finish(
    app: &App,
    webhook: &'static str,
    request: &AdmissionRequest<DynamicObject>,
    verdict: Verdict,
    mut response: AdmissionResponse,
    started: Instant,
) -> Response {
    let verdict = record_outcome(app, webhook, request, verdict);
    if !request.dry_run {
        crate::summary::record(&app.metrics.summary, webhook, request, &verdict);
    }
    if !verdict.allowed {
        // The code leads the message: it is what `kubectl` shows, and what scripts grep.
        let code = verdict.code.unwrap_or("DENIED");
        // Built afresh: a denial never carries a patch.
        response = AdmissionResponse::from(request).deny(format!("{code}: {}", verdict.message));
        response.result.code = 403;
        response.result.reason = verdict.code.unwrap_or("Forbidden").to_string();
    }
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings.clone());
    }
    if let Some(code) = verdict.code {
        response
            .audit_annotations
            .insert("code".into(), code.to_string());
    }
    app.metrics
        .reviews
        .get_or_create(&ReviewLabels {
            webhook,
            kind: request.kind.kind.clone(),
            operation: operation_str(&request.operation).to_string(),
            allowed: if verdict.allowed { "true" } else { "false" },
        })
        .inc();
    app.metrics
        .duration
        .get_or_create(&WebhookLabel { webhook })
        .observe(started.elapsed().as_secs_f64());
    respond(response)
}

/// The audit record of a verdict. Identifiers come from the review after
/// [`check_review_identifiers`]; when one failed, none of the review's own
/// identifiers is recorded (the verdict names the field), so a forged value never
/// reaches the trail.
fn event_for(
    webhook: &'static str,
    request: &AdmissionRequest<DynamicObject>,
    verdict: &Verdict,
) -> AuditEvent {
    let invalid = verdict.detail.contains_key("invalidField");
    let mut event = AuditEvent::new(verdict.record_kind)
        .effect(if verdict.allowed {
            Effect::Allow
        } else {
            Effect::Deny
        })
        .detail("webhook", webhook)
        .detail("operation", operation_str(&request.operation));
    if !invalid {
        // Every identifier passed the checks.
        event = event
            .request_id(request.uid.clone())
            .detail(
                "resource",
                format!(
                    "{}/{}/{}",
                    request.resource.group, request.resource.version, request.resource.resource
                ),
            )
            .detail("kind", request.kind.kind.clone())
            .detail("name", request.name.clone());
        if let Some(user) = &request.user_info.username {
            event = event.subject(user.clone());
        }
        if let Some(namespace) = &request.namespace {
            event = event.namespace(namespace.clone());
        }
    }

    if let Some(code) = verdict.code {
        event = event.code(code);
    }
    if let Some(model) = &verdict.model {
        event = event.model(ident::bounded(model, ident::MAX_MODEL_REFERENCE));
    }
    if !verdict.allowed {
        event = event.detail(
            "message",
            ident::bounded(&verdict.message, MAX_RECORDED_TEXT),
        );
    }
    for warning in &verdict.warnings {
        event = event.detail("warning", ident::bounded(warning, MAX_RECORDED_TEXT));
    }
    for (key, value) in &verdict.detail {
        event = event.detail(key.clone(), ident::bounded(value, MAX_RECORDED_TEXT));
    }
    event
}

fn object_json(object: Option<&DynamicObject>) -> Option<Value> {
    object.and_then(|o| serde_json::to_value(o).ok())
}

async fn validate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let started = Instant::now();
    let request = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(&app, message),
    };
    let response = AdmissionResponse::from(&request);
    let verdict = match check_review_identifiers(&request) {
        Ok(()) => validate_request(&app, &request).await,
        Err(error) => invalid_identifier(&app, &error),
    };
    finish(&app, "validate", &request, verdict, response, started)
}

/// The validating decision for one request.
pub async fn validate_request(app: &App, request: &AdmissionRequest<DynamicObject>) -> Verdict {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Verdict::allow_quietly();
    }
    let group = request.kind.group.as_str();
    let kind = request.kind.kind.as_str();
    let Some(object) = object_json(request.object.as_ref()) else {
        return Verdict::allow_quietly();
    };
    if group == policybind_crds::GROUP {
        return validate_resource(app, request, kind, object).await;
    }
    let namespace = request.namespace.as_deref().unwrap_or("");
    if app.config.is_excluded(namespace) {
        return Verdict::allow_quietly();
    }
    let is_pod = group.is_empty() && kind == "Pod";
    if is_pod && matches!(request.operation, Operation::Update) {
        // Pods are judged when created; afterwards only ephemeral containers
        // (`kubectl debug`) can add what reads the audit key.
        return validate_ephemeral_containers(request, &object);
    }
    let Some(template) = workloads::pod_template(group, kind, &object) else {
        return Verdict::allow_quietly();
    };
    if matches!(request.operation, Operation::Update) {
        // A workload is judged again when its template changes.
        let old = object_json(request.old_object.as_ref());
        let old_template = old
            .as_ref()
            .and_then(|o| workloads::pod_template(group, kind, o));
        if !workloads::template_changed(&template, old_template.as_ref()) {
            return Verdict::allow_quietly();
        }
    }
    validate_workload(app, request, namespace, &object, &template).await
}

/// PolicyBind's own kinds: compiled off the async workers, then the rights that
/// need a SubjectAccessReview.
async fn validate_resource(
    app: &App,
    request: &AdmissionRequest<DynamicObject>,
    kind: &str,
    object: Value,
) -> Verdict {
    let old = object_json(request.old_object.as_ref());
    let user = &request.user_info;
    let authorizer = app.authorizer.as_ref();
    match kind {
        "AIBudget" => resources::validate_budget(&object),
        "AIPolicy" | "ClusterAIPolicy" | "ModelDeployment" | "AccessToken" => {
            let compiled = compile_resource(app, kind, object.clone()).await;
            if !compiled.allowed {
                return compiled;
            }
            let rights = match kind {
                "ModelDeployment" => {
                    resources::authorize_model_scope(authorizer, user, &object, old.as_ref()).await
                }
                "AccessToken" => {
                    resources::authorize_token_namespaces(authorizer, user, &object, old.as_ref())
                        .await
                }
                _ => None,
            };
            match rights {
                Some(denied) => denied,
                None => compiled,
            }
        }
        "ApprovalRequest" => {
            resources::validate_approval(authorizer, app.view.as_ref(), user, &object, old.as_ref())
                .await
        }
        _ => Verdict::allow_quietly(),
    }
}

/// Compiling is CPU work of milliseconds (more for large policy sets): off the
/// async workers, so pod reviews never queue behind it.
async fn compile_resource(app: &App, kind: &str, object: Value) -> Verdict {
    let view = app.view.clone();
    let cache = app.compile_cache.clone();
    let kind = kind.to_string();
    tokio::task::spawn_blocking(move || {
        let view = view.as_ref();
        match kind.as_str() {
            "AIPolicy" => resources::validate_ai_policy(view, &cache, &object),
            "ClusterAIPolicy" => resources::validate_cluster_policy(view, &cache, &object),
            "ModelDeployment" => resources::validate_model(view, &cache, &object),
            _ => resources::validate_token(view, &object, chrono::Utc::now()),
        }
    })
    .await
    .unwrap_or_else(|error| {
        tracing::error!(%error, "resource validation task failed");
        Verdict::deny(
            codes::RESOURCE_INVALID,
            "internal error while validating; try again",
        )
    })
}

/// `pods/ephemeralcontainers` updates: no ephemeral container may read the key.
fn validate_ephemeral_containers(
    request: &AdmissionRequest<DynamicObject>,
    object: &Value,
) -> Verdict {
    if request.sub_resource.as_deref() != Some("ephemeralcontainers") {
        return Verdict::allow_quietly();
    }
    let Ok(pod) = serde_json::from_value::<Pod>(object.clone()) else {
        return Verdict::deny(
            policybind_engine::codes::REQUEST_INVALID,
            "request.object is not a Pod",
        );
    };
    match enforcement::ephemeral_audit_key_exposure(&pod) {
        Some(message) => Verdict::deny(codes::AUDIT_KEY_EXPOSED, message),
        None => Verdict::allow_quietly(),
    }
}

/// How long a review waits for a referenced ModelDeployment the watch cache has not
/// seen yet (applied together with the workload, as `kubectl apply -f dir/` does).
const MODEL_CACHE_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Waits, up to [`MODEL_CACHE_GRACE`], until the model a template names is in the
/// cache. The watch lags the API server by a few hundred milliseconds; without this
/// a model created just before its pods is refused MODEL_NOT_REGISTERED. A model
/// that does not exist still is, after the wait (fail closed).
async fn await_model_in_cache(view: &dyn ClusterView, namespace: &str, template: &PodTemplate<'_>) {
    let Some(reference) = template.model_reference() else {
        return;
    };
    let (model_namespace, model_name) = workloads::parse_reference(reference, namespace);
    let deadline = tokio::time::Instant::now() + MODEL_CACHE_GRACE;
    while view.model(model_namespace, model_name).is_none()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A pod or a workload's pod template: the audit key, the sidecar, the registry,
/// and in enforced namespaces the sidecar requirement and opt-out rights.
async fn validate_workload(
    app: &App,
    request: &AdmissionRequest<DynamicObject>,
    namespace: &str,
    object: &Value,
    template: &PodTemplate<'_>,
) -> Verdict {
    if let Err(error) = template.check_identifiers() {
        return invalid_identifier(app, &error);
    }
    let pod = match template.to_pod() {
        Ok(pod) => pod,
        Err(message) => return Verdict::deny(policybind_engine::codes::REQUEST_INVALID, message),
    };
    let config = &app.config;
    let labels = app.view.namespace_labels(namespace);
    let enforced = workloads::is_enforced(labels.as_ref(), object, template);
    let sidecar_problem = enforcement::sidecar_problem(&pod, namespace, config);
    // A forged sidecar first: it usually mounts the key too, and this says why.
    if enforced && let Some(problem) = &sidecar_problem {
        return enforcement::forged_sidecar(problem);
    }
    if let Some(message) = enforcement::audit_key_exposure(&pod, sidecar_problem.is_none()) {
        return Verdict::deny(codes::AUDIT_KEY_EXPOSED, message);
    }
    await_model_in_cache(app.view.as_ref(), namespace, template).await;
    let mut verdict = workloads::check(
        config,
        &app.heuristics,
        app.view.as_ref(),
        namespace,
        template,
    );
    verdict.warnings.extend(inject::unrecognised_inject_values(
        &template.labels,
        &template.annotations,
    ));
    if !verdict.allowed && !enforced {
        return audit_mode(verdict);
    }
    if !verdict.allowed || !enforced {
        return verdict;
    }
    match enforce_sidecar(app, request, namespace, object, template, &pod).await {
        None => verdict,
        Some(mut enforcement) => {
            enforcement.warnings.extend(verdict.warnings);
            enforcement.model = enforcement.model.or(verdict.model);
            enforcement
        }
    }
}

/// Outside enforced namespaces (and without the pod's own opt-in) a denial is
/// recorded as what would have happened and shown as a warning.
fn audit_mode(verdict: Verdict) -> Verdict {
    let mut audited = Verdict {
        allowed: true,
        ..verdict.clone()
    };
    audited.warnings.push(format!(
        "PolicyBind would deny this in an enforced namespace: {}: {}",
        verdict.code.unwrap_or("DENIED"),
        verdict.message
    ));
    audited.detail.insert("wouldHave".into(), "Deny".into());
    audited.detail.insert("enforcement".into(), "Audit".into());
    audited
}

/// In an enforced scope, a model pod without the sidecar needs an authorized
/// opt-out; a template that opts out needs the same right from whoever writes it,
/// and one that does not must be injectable. `None`: nothing to add.
async fn enforce_sidecar(
    app: &App,
    request: &AdmissionRequest<DynamicObject>,
    namespace: &str,
    object: &Value,
    template: &PodTemplate<'_>,
    pod: &Pod,
) -> Option<Verdict> {
    let model = template.model_reference()?;
    if pod
        .spec
        .as_ref()
        .and_then(enforcement::find_sidecar)
        .is_some()
    {
        return None; // genuine: checked before the registry
    }
    let (_, model_name) = workloads::parse_reference(model, namespace);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if inject::inject_choice(&template.labels, &template.annotations) == InjectChoice::Out {
        let owners: Option<Vec<OwnerReference>> = object
            .pointer("/metadata/ownerReferences")
            .and_then(|o| serde_json::from_value(o.clone()).ok());
        let what = if is_pod {
            "the pod".to_string()
        } else {
            format!("the pod template of {}", request.kind.kind)
        };
        let verdict = enforcement::exemption(
            app.authorizer.as_ref(),
            &request.user_info,
            owners.as_deref(),
            namespace,
            model_name,
            &what,
        )
        .await;
        return Some(verdict);
    }
    let problem = inject::injection_problem(pod, &app.config);
    if is_pod || problem.is_some() {
        return Some(enforcement::missing_sidecar(
            namespace,
            model,
            problem.as_deref(),
        ));
    }
    None
}

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let started = Instant::now();
    let request = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(&app, message),
    };
    let response = AdmissionResponse::from(&request);
    let (verdict, response) = mutate_request(&app, &request, response);
    finish(&app, "mutate", &request, verdict, response, started)
}

/// The mutating decision: the injection patch, or why there is none.
fn mutate_request(
    app: &App,
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
) -> (Verdict, AdmissionResponse) {
    if let Err(error) = check_review_identifiers(request) {
        return (invalid_identifier(app, &error), response);
    }
    // Only pods are mutated; PolicyBind's own resources never are (GitOps drift).
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || !matches!(request.operation, Operation::Create) {
        return (Verdict::allow_quietly(), response);
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let object = object_json(request.object.as_ref());
    if let Some(template) = object
        .as_ref()
        .and_then(|o| workloads::pod_template("", "Pod", o))
        && let Err(error) = template.check_identifiers()
    {
        return (invalid_identifier(app, &error), response);
    }
    let Some(pod) = object.and_then(|v| serde_json::from_value::<Pod>(v).ok()) else {
        return (
            Verdict::deny(
                policybind_engine::codes::REQUEST_INVALID,
                "request.object is not a Pod",
            ),
            response,
        );
    };
    let labels = app.view.namespace_labels(&namespace);
    match inject::inject(&pod, &namespace, labels.as_ref(), &app.config) {
        Ok(Outcome::Injected {
            patch,
            port,
            model_port,
            ..
        }) => injected(app, request, response, patch, port, model_port),
        Ok(Outcome::Skipped(skip)) => (skipped(app, skip), response),
        Err(error) => {
            // Never block a pod on our own bug: admit unchanged, say so in the log.
            // In enforced namespaces validation then denies the uninjected model pod.
            tracing::error!(%error, "injection patch failed");
            (Verdict::allow_quietly(), response)
        }
    }
}

fn injected(
    app: &App,
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
    patch: json_patch::Patch,
    port: i32,
    model_port: i32,
) -> (Verdict, AdmissionResponse) {
    app.metrics
        .injections
        .get_or_create(&InjectionLabels { result: "injected" })
        .inc();
    let verdict = Verdict::allow(policybind_engine::codes::POLICY_ALLOW)
        .with_detail("injected", "true")
        .with_detail("ports", format!("{port}:{model_port}"));
    match response.with_patch(patch) {
        Ok(r) => (verdict, r),
        Err(error) => {
            tracing::error!(%error, "serializing the injection patch");
            (Verdict::allow_quietly(), AdmissionResponse::from(request))
        }
    }
}

fn skipped(app: &App, skip: Skip) -> Verdict {
    app.metrics
        .injections
        .get_or_create(&InjectionLabels {
            result: skip.as_str(),
        })
        .inc();
    let allow_with_warning = |skip_label: &str, warning: String| {
        let mut verdict = Verdict::allow(policybind_engine::codes::POLICY_ALLOW)
            .with_detail("injected", "false")
            .with_detail("skip", skip_label);
        verdict.warnings.push(warning);
        verdict
    };
    match skip {
        // Opted in but nothing to take over: admit, and tell the user why.
        Skip::NoModelPort(message) => allow_with_warning(
            "no-model-port",
            format!("PolicyBind sidecar not injected: {message}"),
        ),
        Skip::NoModel { opted_in: true } => allow_with_warning(
            "no-model",
            format!(
                "PolicyBind sidecar not injected: the pod asks for it ({}) but declares no model; \
                 add the annotation {}: <ModelDeployment name>",
                policybind_crds::wire::labels::INJECT,
                policybind_crds::wire::annotations::MODEL
            ),
        ),
        _ => Verdict::allow_quietly(),
    }
}
