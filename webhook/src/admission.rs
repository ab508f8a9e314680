//! The admission router: `POST /validate` and `POST /mutate`, each taking an
//! AdmissionReview (`admission.k8s.io/v1`) and answering one.
//!
//! A business decision (deny, warn, patch) is always a `200` with the answer in
//! the review; a body that is not an AdmissionReview gets a `400` with a JSON
//! message, an oversized one a `413`. Every review that concerns something
//! PolicyBind governs produces one audit record.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use policybind_crds::Effect;
use policybind_engine::audit::AuditEvent;
use serde_json::Value;

use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::config::AdmissionConfig;
use crate::inject::{self, Outcome, Skip};
use crate::metrics::{InjectionLabels, Metrics, ReviewLabels, WebhookLabel};
use crate::resources;
use crate::verdict::Verdict;
use crate::view::ClusterView;
use crate::workloads::{self, Heuristics};

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

/// Turns a verdict into the response, counts it and records it.
fn finish(
    app: &App,
    webhook: &'static str,
    request: &AdmissionRequest<DynamicObject>,
    verdict: Verdict,
    mut response: AdmissionResponse,
    started: Instant,
) -> Response {
    if !verdict.allowed {
        // The code leads the message: it is what `kubectl` shows, and what scripts grep.
        let code = verdict.code.unwrap_or("DENIED");
        response = response.deny(format!("{code}: {}", verdict.message));
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
        record(app, webhook, request, &verdict);
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

fn record(
    app: &App,
    webhook: &'static str,
    request: &AdmissionRequest<DynamicObject>,
    verdict: &Verdict,
) {
    let mut event = AuditEvent::new(verdict.record_kind)
        .request_id(request.uid.clone())
        .effect(if verdict.allowed {
            Effect::Allow
        } else {
            Effect::Deny
        })
        .detail("webhook", webhook)
        .detail("operation", operation_str(&request.operation))
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
    if let Some(code) = verdict.code {
        event = event.code(code);
    }
    if let Some(model) = &verdict.model {
        event = event.model(model.clone());
    }
    if request.dry_run {
        event = event.detail("dryRun", "true");
    }
    if !verdict.allowed {
        event = event.detail("message", verdict.message.clone());
    }
    for warning in &verdict.warnings {
        event = event.detail("warning", warning.clone());
    }
    for (key, value) in &verdict.detail {
        event = event.detail(key.clone(), value.clone());
    }
    app.audit.record(event);
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
    let verdict = validate_request(&app, &request).await;
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
        return match kind {
            "AIPolicy" | "ClusterAIPolicy" | "ModelDeployment" | "AccessToken" => {
                // Compiling is CPU work of milliseconds (more for large policy sets):
                // off the async workers, so pod reviews never queue behind it.
                let view = app.view.clone();
                let cache = app.compile_cache.clone();
                let kind = kind.to_string();
                tokio::task::spawn_blocking(move || {
                    let view = view.as_ref();
                    match kind.as_str() {
                        "AIPolicy" => resources::validate_ai_policy(view, &cache, &object),
                        "ClusterAIPolicy" => {
                            resources::validate_cluster_policy(view, &cache, &object)
                        }
                        "ModelDeployment" => resources::validate_model(view, &cache, &object),
                        _ => resources::validate_token(view, &object, chrono::Utc::now()),
                    }
                })
                .await
                .unwrap_or_else(|error| {
                    tracing::error!(%error, "resource validation task failed");
                    Verdict::deny(
                        resources::admission_codes::RESOURCE_INVALID,
                        "internal error while validating; try again",
                    )
                })
            }
            "ApprovalRequest" => {
                let old = object_json(request.old_object.as_ref());
                resources::validate_approval(
                    app.authorizer.as_ref(),
                    &request.user_info,
                    &object,
                    old.as_ref(),
                )
                .await
            }
            _ => Verdict::allow_quietly(),
        };
    }
    let namespace = request.namespace.as_deref().unwrap_or("");
    if app.config.is_excluded(namespace) {
        return Verdict::allow_quietly();
    }
    let Some(template) = workloads::pod_template(group, kind, &object) else {
        return Verdict::allow_quietly();
    };
    if matches!(request.operation, Operation::Update) {
        // Pods are judged when created; a workload when its template changes.
        if kind == "Pod" {
            return Verdict::allow_quietly();
        }
        let old = object_json(request.old_object.as_ref());
        let old_template = old
            .as_ref()
            .and_then(|o| workloads::pod_template(group, kind, o));
        if !workloads::template_changed(&template, old_template.as_ref()) {
            return Verdict::allow_quietly();
        }
    }
    let verdict = workloads::check(
        &app.config,
        &app.heuristics,
        app.view.as_ref(),
        namespace,
        &template,
    );
    let labels = app.view.namespace_labels(namespace);
    let enforced = workloads::is_enforced(labels.as_ref(), &object, &template);
    if verdict.allowed || enforced {
        return verdict;
    }
    // Audit mode: outside enforced namespaces (and without the pod's own opt-in)
    // a denial is recorded as what would have happened and shown as a warning.
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

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let started = Instant::now();
    let request = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(&app, message),
    };
    let response = AdmissionResponse::from(&request);
    // Only pods are mutated; PolicyBind's own resources never are (GitOps drift).
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || !matches!(request.operation, Operation::Create) {
        return finish(
            &app,
            "mutate",
            &request,
            Verdict::allow_quietly(),
            response,
            started,
        );
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let pod: Option<Pod> = request
        .object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| serde_json::from_value(v).ok());
    let Some(pod) = pod else {
        return bad_request(&app, "request.object is not a Pod".into());
    };
    let labels = app.view.namespace_labels(&namespace);
    let outcome = match inject::inject(&pod, &namespace, labels.as_ref(), &app.config) {
        Ok(outcome) => outcome,
        Err(error) => {
            // Never block a pod on our own bug: admit unchanged, say so in the log.
            tracing::error!(%error, "injection patch failed");
            return finish(
                &app,
                "mutate",
                &request,
                Verdict::allow_quietly(),
                response,
                started,
            );
        }
    };
    let (verdict, response) = match outcome {
        Outcome::Injected {
            patch,
            port,
            model_port,
            ..
        } => {
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
                    (Verdict::allow_quietly(), AdmissionResponse::from(&request))
                }
            }
        }
        Outcome::Skipped(skip) => {
            app.metrics
                .injections
                .get_or_create(&InjectionLabels {
                    result: skip.as_str(),
                })
                .inc();
            let verdict = match skip {
                // Opted in but nothing to take over: admit, and tell the user why.
                Skip::NoModelPort(message) => {
                    let mut v = Verdict::allow(policybind_engine::codes::POLICY_ALLOW)
                        .with_detail("injected", "false")
                        .with_detail("skip", "no-model-port");
                    v.warnings
                        .push(format!("PolicyBind sidecar not injected: {message}"));
                    v
                }
                _ => Verdict::allow_quietly(),
            };
            (verdict, response)
        }
    };
    finish(&app, "mutate", &request, verdict, response, started)
}
