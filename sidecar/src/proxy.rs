//! The request path: authenticate, build the facts, decide, enforce, account,
//! audit, forward (DESIGN.md sections 3 and 5).
//!
//! For each call to a model endpoint, in this order:
//! 1. the path must be a model endpoint (or a configured extra path), and a policy
//!    set must be in force (otherwise `NO_POLICY_SET`: fail closed);
//! 2. `Authorization: Bearer` is looked up by SHA-256 among the bundle's token
//!    hashes (`TOKEN_MISSING`, `TOKEN_UNKNOWN`; expired, revoked and not-yet-valid
//!    tokens are refused by the engine with their own codes);
//! 3. the body gives model, text and token estimates ([`crate::facts`]); the
//!    headers give use case, data classification and an approval reference;
//! 4. the engine decides, with the token's current usage from the ledger;
//! 5. a forwarding decision gets its obligations applied (redaction, degrade),
//!    then its estimated cost reserved (rate limits and budgets, atomically);
//! 6. the decision is appended to the audit trail; if it cannot be, the request
//!    is denied with `AUDIT_UNAVAILABLE`;
//! 7. denials answer with an OpenAI-style JSON error; forwarded requests stream
//!    the upstream's answer back and settle the reservation with the reported
//!    `usage` (released if the upstream failed).
//!
//! Every response carries `x-policybind-decision`, `x-policybind-codes` and
//! `x-policybind-request-id`. Nothing here logs a token value or prompt text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use policybind_crds::{DataClassification, Effect};
use policybind_engine::audit::{AuditEvent, CostUsd, Usage};
use policybind_engine::request::{Decision, Request as Facts, Stage};
use policybind_engine::{codes, detect};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::{Instrument, info, info_span, warn};

use crate::accounting::{Amount, Refusal, ReservationId, TokenLimits, UsageLedger};
use crate::approvals::{ApprovalStatus, Approvals, HeldRequest};
use crate::audit::AuditSink;
use crate::config::Settings;
use crate::facts::{Endpoint, RequestBody, StreamUsage, response_usage};
use crate::metrics::{BudgetLabels, Metrics, TokenLabels};
use crate::source::{Loaded, PolicyHolder};

/// Use case of the request (e.g. `support-chat`); default: the token's `defaultUseCase`.
pub const USE_CASE_HEADER: &str = "x-policybind-use-case";
/// Data classification of the request: Public, Internal, Confidential or Restricted
/// (case-insensitive); default: the token's `defaultDataClassification`, else Internal.
pub const CLASSIFICATION_HEADER: &str = "x-policybind-data-classification";
/// Reference of an approved ApprovalRequest, to repeat a request that needed approval.
pub const APPROVAL_HEADER: &str = "x-policybind-approval";
/// Response: the effect (Allow, Deny, Redact, RequireApproval, Degrade).
pub const DECISION_HEADER: &str = "x-policybind-decision";
/// Response: the rationale codes, comma-separated, deciding code first.
pub const CODES_HEADER: &str = "x-policybind-codes";
/// Response: the request id (also in logs and the audit record).
pub const REQUEST_ID_HEADER: &str = "x-policybind-request-id";
/// Response: which upstream answers (`demo` for the built-in demo upstream of
/// `policybind serve`); set only when [`crate::Settings::upstream_label`] is.
pub const UPSTREAM_HEADER: &str = "x-policybind-upstream";

type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

tokio::task_local! {
    /// Microseconds this request spent waiting for the upstream, so the time the
    /// sidecar itself adds can be measured (`overhead_seconds`).
    static UPSTREAM_WAIT_MICROS: Arc<AtomicU64>;
}

fn add_upstream_wait(since: Instant) {
    let micros = since.elapsed().as_micros() as u64;
    let _ = UPSTREAM_WAIT_MICROS.try_with(|w| w.fetch_add(micros.max(1), Ordering::Relaxed));
}

/// Everything the request path shares.
pub struct AppState {
    pub holder: Arc<PolicyHolder>,
    pub ledger: Arc<dyn UsageLedger>,
    pub audit: Arc<dyn AuditSink>,
    pub approvals: Approvals,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    client: UpstreamClient,
    upstream_base: String,
    concurrency: Arc<Semaphore>,
    ids: RequestIds,
}

impl AppState {
    pub fn new(
        settings: Arc<Settings>,
        holder: Arc<PolicyHolder>,
        ledger: Arc<dyn UsageLedger>,
        audit: Arc<dyn AuditSink>,
        approvals: Approvals,
        metrics: Arc<Metrics>,
    ) -> Arc<AppState> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.limits.upstream_connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(settings.limits.max_concurrency.min(512))
            .build(connector);
        Arc::new(AppState {
            upstream_base: settings.upstream.trim_end_matches('/').to_string(),
            concurrency: Arc::new(Semaphore::new(settings.limits.max_concurrency)),
            holder,
            ledger,
            audit,
            approvals,
            metrics,
            settings,
            client,
            ids: RequestIds::new(),
        })
    }

    pub(crate) fn next_request_id(&self, headers: &HeaderMap) -> String {
        self.ids.next(headers)
    }
}

/// Request ids: the caller's `x-request-id` when it is a sane token, otherwise
/// a random per-process prefix and a counter (unique without a syscall per request).
struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut seed = [0u8; 6];
        // Without OS randomness, fall back to the clock: ids need only be unique.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            seed.copy_from_slice(&nanos.to_le_bytes()[..6]);
        }
        RequestIds {
            prefix: hex::encode(seed),
            counter: AtomicU64::new(0),
        }
    }

    /// A new id, whatever the caller sent.
    fn fresh(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{:010x}", self.prefix, n)
    }

    fn next(&self, headers: &HeaderMap) -> String {
        if let Some(given) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
            && !given.is_empty()
            && given.len() <= 64
            && given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return given.to_string();
        }
        self.fresh()
    }
}

/// An answer that is not the upstream's: what the caller sees and why.
struct Refused {
    status: StatusCode,
    error_type: &'static str,
    code: String,
    message: String,
    effect: Effect,
    codes: Vec<String>,
    approval: Option<String>,
    retry_after: Option<Duration>,
}

/// HTTP status and OpenAI `error.type` for a denial code.
pub fn status_for(code: &str) -> (StatusCode, &'static str) {
    match code {
        codes::TOKEN_MISSING
        | codes::TOKEN_UNKNOWN
        | codes::TOKEN_EXPIRED
        | codes::TOKEN_REVOKED
        | codes::TOKEN_NOT_YET_VALID => (StatusCode::UNAUTHORIZED, "authentication_error"),
        codes::RATE_LIMITED => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        codes::BUDGET_EXCEEDED => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        codes::REQUEST_INVALID => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        codes::PATH_NOT_ALLOWED => (StatusCode::NOT_FOUND, "invalid_request_error"),
        codes::NO_POLICY_SET | codes::AUDIT_UNAVAILABLE => {
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        }
        codes::APPROVAL_REQUIRED => (StatusCode::FORBIDDEN, "approval_required"),
        _ => (StatusCode::FORBIDDEN, "permission_error"),
    }
}

impl Refused {
    fn deny(code: &str, message: impl Into<String>) -> Self {
        let (status, error_type) = status_for(code);
        Refused {
            status,
            error_type,
            code: code.to_string(),
            message: message.into(),
            effect: Effect::Deny,
            codes: vec![code.to_string()],
            approval: None,
            retry_after: None,
        }
    }

    fn from_decision(decision: &Decision) -> Self {
        let mut refused = Refused::deny(decision.code(), decision.message.clone());
        refused.effect = decision.effect;
        refused.codes = decision.codes.clone();
        if decision.effect == Effect::RequireApproval {
            refused.status = StatusCode::FORBIDDEN;
            refused.error_type = "approval_required";
        }
        refused
    }

    /// An error of the sidecar itself, not a decision (overload, upstream failure).
    fn failure(status: StatusCode, error_type: &'static str, code: &str, message: &str) -> Self {
        Refused {
            status,
            error_type,
            code: code.to_string(),
            message: message.to_string(),
            effect: Effect::Allow,
            codes: vec![],
            approval: None,
            retry_after: None,
        }
    }

    fn into_response(self, request_id: &str, with_decision: bool) -> Response<Body> {
        let mut error = json!({
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "param": null,
        });
        if let Some(reference) = &self.approval {
            error["approval"] = json!({
                "reference": reference,
                "header": APPROVAL_HEADER,
            });
        }
        let body = json!({ "error": error });
        let mut response = Response::new(Body::from(
            serde_json::to_vec(&body).expect("JSON always serializes"),
        ));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if with_decision {
            decision_headers(headers, self.effect, &self.codes, request_id);
        } else {
            set_header(headers, REQUEST_ID_HEADER, request_id);
        }
        if let Some(reference) = &self.approval {
            set_header(headers, APPROVAL_HEADER, reference);
        }
        if let Some(after) = self.retry_after {
            set_header(
                headers,
                "retry-after",
                &after.as_secs_f64().ceil().max(1.0).to_string(),
            );
        }
        response
    }
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn decision_headers(headers: &mut HeaderMap, effect: Effect, codes: &[String], request_id: &str) {
    headers.insert(
        HeaderName::from_static(DECISION_HEADER),
        HeaderValue::from_static(effect.as_str()),
    );
    set_header(headers, CODES_HEADER, &codes.join(","));
    set_header(headers, REQUEST_ID_HEADER, request_id);
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The bearer value of `Authorization`, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Entry point for every path of the main port except `/v1/decide`.
pub async fn handle(State(state): State<Arc<AppState>>, request: Request<Body>) -> Response<Body> {
    let request_id = state.next_request_id(request.headers());
    let span = info_span!(
        "request",
        request_id = %request_id,
        path = %request.uri().path(),
        effect = tracing::field::Empty,
        code = tracing::field::Empty,
    );
    let started = Instant::now();
    let permit = match state.concurrency.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            warn!(parent: &span, "too many concurrent requests; refused");
            return Refused::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "overloaded",
                "too many concurrent requests; retry shortly",
            )
            .into_response(&request_id, false);
        }
    };
    state.metrics.in_flight.inc();
    let upstream_wait = Arc::new(AtomicU64::new(0));
    let response = UPSTREAM_WAIT_MICROS
        .scope(
            upstream_wait.clone(),
            serve(&state, request, &request_id).instrument(span.clone()),
        )
        .await;
    state.metrics.in_flight.dec();
    drop(permit);
    let waited = upstream_wait.load(Ordering::Relaxed);
    if waited > 0 {
        // Only forwarded requests: what the sidecar added on top of the upstream.
        let total = started.elapsed().as_micros() as u64;
        state
            .metrics
            .overhead_seconds
            .observe(total.saturating_sub(waited) as f64 / 1e6);
    }
    info!(
        parent: &span,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request done"
    );
    response
}

async fn serve(state: &Arc<AppState>, request: Request<Body>, request_id: &str) -> Response<Body> {
    let path = request.uri().path().to_string();
    let Some(endpoint) = Endpoint::from_path(&path) else {
        if state
            .settings
            .extra_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            return passthrough(state, request, request_id).await;
        }
        let refused = Refused::deny(
            codes::PATH_NOT_ALLOWED,
            format!("{path} is not forwarded by policybind"),
        );
        record_simple(state, request_id, &refused, None, None, None);
        return refused.into_response(request_id, true);
    };
    let Some(loaded) = state.holder.current() else {
        let refused = Refused::deny(
            codes::NO_POLICY_SET,
            "no valid policy set is loaded; every request is denied",
        );
        record_simple(state, request_id, &refused, None, None, None);
        return refused.into_response(request_id, true);
    };
    let now = Utc::now();
    let token_id = match loaded.set.authenticate(bearer(request.headers()), now) {
        Ok(id) => id.to_string(),
        Err(e) => {
            let refused = Refused::deny(e.code(), format!("{e}"));
            record_simple(state, request_id, &refused, Some(&loaded), None, None);
            return refused.into_response(request_id, true);
        }
    };
    if endpoint == Endpoint::Models {
        return list_models(state, &loaded, request, request_id, &token_id, now).await;
    }
    if request.method() != Method::POST {
        let refused = Refused::deny(
            codes::REQUEST_INVALID,
            format!("{path} takes POST, not {}", request.method()),
        );
        record_simple(
            state,
            request_id,
            &refused,
            Some(&loaded),
            Some(&token_id),
            None,
        );
        return refused.into_response(request_id, true);
    }
    match decide_and_forward(state, &loaded, request, request_id, endpoint, token_id, now).await {
        Ok(response) | Err(response) => response,
    }
}

/// Appends a decision made before any facts were read (path, token, body problems).
fn record_simple(
    state: &AppState,
    request_id: &str,
    refused: &Refused,
    loaded: Option<&Loaded>,
    token: Option<&str>,
    model: Option<&str>,
) {
    state
        .metrics
        .decision(refused.effect.as_str(), &refused.code, None);
    tracing::Span::current().record("effect", refused.effect.as_str());
    tracing::Span::current().record("code", refused.code.as_str());
    let mut event = AuditEvent::decision(refused.effect)
        .time(Utc::now())
        .request_id(request_id)
        .namespace(state.settings.namespace.clone());
    for code in &refused.codes {
        event = event.code(code.clone());
    }
    if let Some(l) = loaded {
        event = event.fingerprint(l.set.fingerprint());
    }
    if let Some(t) = token {
        event = event.token_id(t);
    }
    if let Some(m) = model {
        event = event.model(m);
    }
    // A refusal is already the safe answer; a failed append is logged, not escalated.
    if let Err(e) = state.audit.append(event) {
        warn!("denial not recorded: {e}");
    }
}

#[allow(clippy::result_large_err)]
async fn decide_and_forward(
    state: &Arc<AppState>,
    loaded: &Arc<Loaded>,
    request: Request<Body>,
    request_id: &str,
    endpoint: Endpoint,
    token_id: String,
    now: DateTime<Utc>,
) -> Result<Response<Body>, Response<Body>> {
    let set = &loaded.set;
    let (parts, body) = request.into_parts();
    let invalid = |message: String, model: Option<&str>| {
        let refused = Refused::deny(codes::REQUEST_INVALID, message);
        record_simple(
            state,
            request_id,
            &refused,
            Some(loaded),
            Some(&token_id),
            model,
        );
        refused.into_response(request_id, true)
    };
    let bytes = match axum::body::to_bytes(body, state.settings.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            let mut response = invalid(
                format!(
                    "the request body is larger than {} bytes or could not be read",
                    state.settings.limits.max_body_bytes
                ),
                None,
            );
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Err(response);
        }
    };
    let decide_started = Instant::now();
    let mut body = RequestBody::parse(endpoint, &bytes, state.settings.default_output_tokens)
        .map_err(|e| invalid(e.to_string(), None))?;
    let use_case = header_str(&parts.headers, USE_CASE_HEADER).map(str::to_string);
    let classification = match header_str(&parts.headers, CLASSIFICATION_HEADER) {
        None => None,
        Some(v) => Some(DataClassification::parse(v).ok_or_else(|| {
            invalid(
                format!(
                    "{CLASSIFICATION_HEADER} must be Public, Internal, Confidential or Restricted"
                ),
                Some(&body.model),
            )
        })?),
    };
    let approval_ref = header_str(&parts.headers, APPROVAL_HEADER).map(str::to_string);
    let approved = match &approval_ref {
        Some(reference) => match state
            .approvals
            .status(reference, &token_id, &body.model, now)
            .await
        {
            Ok(ApprovalStatus::Approved) => true,
            Ok(_) => false,
            Err(e) => {
                warn!("approval {reference} could not be read: {e}");
                false
            }
        },
        None => false,
    };

    let budgets = set.budgets(&token_id);
    let usage = state.ledger.usage(&token_id, budgets, now);
    let mut facts = Facts {
        request_id: Some(request_id.to_string()),
        token: Some(token_id.clone()),
        model: body.model.clone(),
        use_case,
        data_classification: classification,
        namespace: Some(state.settings.namespace.clone()),
        time: now,
        estimated_input_tokens: body.estimated_input_tokens,
        estimated_output_tokens: body.estimated_output_tokens,
        prompt: Some(std::mem::take(&mut body.prompt)),
        usage,
        approved,
        ..Default::default()
    };
    facts
        .labels
        .insert("endpoint".into(), endpoint.as_str().into());
    facts
        .labels
        .insert("stream".into(), body.stream.to_string());
    let mut decision = set.decide(&facts);
    let prompt = facts.prompt.take().unwrap_or_default();

    // Obligations first, so the reservation is for the request actually sent.
    let mut reservation = None;
    if decision.effect.forwards() {
        if let Some(redact) = &decision.obligations.redact {
            let detectors = set.detectors();
            body.rewrite_texts(|text| {
                let findings = detectors.scan(text);
                if findings.is_empty() {
                    text.to_string()
                } else {
                    detect::redact(text, &findings, &redact.entities, &redact.replacement)
                }
            });
        }
        if decision.effect == Effect::Degrade {
            body.degrade(
                decision.obligations.model.as_deref(),
                decision.obligations.max_tokens,
            );
        }
        if state.settings.request_stream_usage {
            body.request_stream_usage();
        }
        let estimate_cost = set
            .pricing(&body.model, &state.settings.namespace)
            .map(|p| p.cost(body.estimated_input_tokens, body.estimated_output_tokens))
            .unwrap_or(decision.facts.estimated_cost_usd);
        let estimate = Amount {
            cost_usd: estimate_cost,
            tokens: body.estimated_input_tokens + body.estimated_output_tokens,
        };
        let limits = TokenLimits {
            rate: set.rate_limit(&token_id),
            budgets,
        };
        match state.ledger.reserve(&token_id, limits, estimate, now) {
            Ok(id) => {
                reservation = Some(Reservation {
                    state: state.clone(),
                    loaded: loaded.clone(),
                    token: token_id.clone(),
                    id: Some(id),
                    estimated_input: body.estimated_input_tokens,
                    model: body.model.clone(),
                })
            }
            Err(refusal) => {
                let (code, retry_after) = match &refusal {
                    Refusal::RateLimited { retry_after, .. } => {
                        state
                            .metrics
                            .rate_limited
                            .get_or_create(&TokenLabels {
                                token: token_id.clone(),
                            })
                            .inc();
                        (codes::RATE_LIMITED, Some(*retry_after))
                    }
                    Refusal::BudgetExceeded { .. } => (codes::BUDGET_EXCEEDED, None),
                };
                override_deny(&mut decision, code, format!("token {token_id}: {refusal}"));
                state
                    .metrics
                    .decide_seconds
                    .observe(decide_started.elapsed().as_secs_f64());
                if record_decision(
                    state,
                    &decision,
                    request_id,
                    &prompt,
                    None,
                    endpoint,
                    approval_ref.as_deref(),
                )
                .is_err()
                {
                    // Refused either way; counted here as the trail could not take it.
                    state.metrics.decision("Deny", code, None);
                }
                let mut refused = Refused::from_decision(&decision);
                refused.retry_after = retry_after;
                return Err(refused.into_response(request_id, true));
            }
        }
    }

    // Hold a request that needs approval.
    let mut held_reference = None;
    if decision.effect == Effect::RequireApproval && state.approvals.enabled() {
        let held = HeldRequest {
            request_id: request_id.to_string(),
            // Never derived from caller input (x-request-id), so one caller cannot
            // overwrite another's held request.
            reference_id: state.ids.fresh(),
            token: token_id.clone(),
            subject: decision.facts.subject.clone(),
            model: body.model.clone(),
            policy_rule: match (&decision.policy, &decision.rule) {
                (Some(p), Some(r)) => Some(format!("{p}/{r}")),
                _ => None,
            },
            reason: decision.message.clone(),
            namespace: state.settings.namespace.clone(),
        };
        // A repeat of a request whose approval is still pending keeps its reference.
        let pending = match &approval_ref {
            Some(r) => matches!(
                state.approvals.status(r, &token_id, &body.model, now).await,
                Ok(ApprovalStatus::Pending)
            ),
            None => false,
        };
        if pending {
            held_reference = approval_ref.clone();
        } else {
            match state.approvals.hold(&held, now).await {
                Ok(reference) => held_reference = Some(reference),
                Err(e) => warn!("request could not be held for approval: {e}"),
            }
        }
    }

    state
        .metrics
        .decide_seconds
        .observe(decide_started.elapsed().as_secs_f64());
    let audited = record_decision(
        state,
        &decision,
        request_id,
        &prompt,
        reservation.as_ref().map(|_| Usage {
            input_tokens: body.estimated_input_tokens,
            output_tokens: body.estimated_output_tokens,
            cost_usd: CostUsd::from_usd(decision.facts.estimated_cost_usd),
        }),
        endpoint,
        held_reference.as_deref().or(approval_ref.as_deref()),
    );
    if let Err(e) = audited {
        warn!("decision not recorded, request denied: {e}");
        // Dropping the reservation releases it.
        drop(reservation);
        override_deny(
            &mut decision,
            codes::AUDIT_UNAVAILABLE,
            "the audit trail cannot record this decision; request denied".into(),
        );
        state
            .metrics
            .decision("Deny", codes::AUDIT_UNAVAILABLE, None);
        return Err(Refused::from_decision(&decision).into_response(request_id, true));
    }

    if !decision.effect.forwards() {
        let mut refused = Refused::from_decision(&decision);
        refused.approval = held_reference;
        return Err(refused.into_response(request_id, true));
    }
    let reservation = reservation.expect("a forwarded request always has a reservation");
    Ok(forward(
        state,
        &parts.headers,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        body.to_bytes(),
        body.stream,
        endpoint,
        reservation,
        (decision.effect, &decision.codes, request_id),
    )
    .await)
}

fn override_deny(decision: &mut Decision, code: &str, message: String) {
    decision.effect = Effect::Deny;
    decision.codes.insert(0, code.to_string());
    decision.message = message;
    decision.stage = Stage::Token;
    decision.obligations = Default::default();
    decision.policy = None;
    decision.rule = None;
}

/// The audit event of a decision, as both the proxy and `POST /v1/decide` record it:
/// who, what, which policy and rule, codes, fingerprint, the prompt's hash (and the
/// redacted prompt when a rule asks), degrade obligations and the audit-mode result.
pub(crate) fn decision_event(
    decision: &Decision,
    request_id: &str,
    prompt: &str,
    now: DateTime<Utc>,
    endpoint: &str,
) -> AuditEvent {
    let facts = &decision.facts;
    let mut event = AuditEvent::decision(decision.effect)
        .time(now)
        .request_id(request_id)
        .model(facts.model.clone())
        .namespace(facts.namespace.clone().unwrap_or_default())
        .fingerprint(decision.fingerprint.clone())
        .detail("endpoint", endpoint)
        .detail("stage", format!("{:?}", decision.stage).to_lowercase());
    if let Some(s) = &facts.subject {
        event = event.subject(s.clone());
    }
    if let Some(t) = &facts.token {
        event = event.token_id(t.clone());
    }
    if let (Some(p), Some(r)) = (&decision.policy, &decision.rule) {
        event = event.policy_rule(p.clone(), r.clone());
    }
    for code in &decision.codes {
        event = event.code(code.clone());
    }
    if !prompt.is_empty() {
        event = event.prompt(prompt);
    }
    if decision.obligations.record_redacted_prompt
        && let Some(redact) = &decision.obligations.redact
    {
        event = event.redacted_prompt(detect::redact(
            prompt,
            &decision.findings,
            &redact.entities,
            &redact.replacement,
        ));
    }
    if let Some(model) = &decision.obligations.model {
        event = event.detail("degradedModel", model.clone());
    }
    if let Some(cap) = decision.obligations.max_tokens {
        event = event.detail("maxTokens", cap.to_string());
    }
    if let Some(would) = &decision.would_have {
        event = event
            .detail("wouldHaveEffect", would.effect.as_str())
            .detail(
                "wouldHavePolicy",
                format!("{}/{}", would.policy, would.rule),
            );
    }
    event
}

fn record_decision(
    state: &AppState,
    decision: &Decision,
    request_id: &str,
    prompt: &str,
    estimated: Option<Usage>,
    endpoint: Endpoint,
    approval: Option<&str>,
) -> Result<(), crate::audit::AuditUnavailable> {
    tracing::Span::current().record("effect", decision.effect.as_str());
    tracing::Span::current().record("code", decision.code());
    let mut event = decision_event(decision, request_id, prompt, Utc::now(), endpoint.as_str());
    if let Some(r) = approval {
        event = event.detail("approval", r);
    }
    if let Some(usage) = estimated {
        event = event.usage(usage).detail("usage", "estimated");
    }
    state.audit.append(event)?;
    // Counted once recorded: a decision the trail refused is counted as the
    // AUDIT_UNAVAILABLE denial it becomes.
    state.metrics.decision(
        decision.effect.as_str(),
        decision.code(),
        decision.policy.as_deref(),
    );
    Ok(())
}

/// A reservation in the ledger for one forwarded request. Released when dropped
/// unless settled: every path out of the request path (upstream error, timeout,
/// panic, client gone before the headers) gives the budget back.
struct Reservation {
    state: Arc<AppState>,
    loaded: Arc<Loaded>,
    token: String,
    id: Option<ReservationId>,
    estimated_input: u64,
    /// Model actually called (after degrade), for pricing.
    model: String,
}

impl Reservation {
    fn settle(&mut self, input_tokens: u64, output_tokens: u64) {
        let Some(id) = self.id.take() else {
            return;
        };
        let cost = self
            .loaded
            .set
            .pricing(&self.model, &self.state.settings.namespace)
            .map(|p| p.cost(input_tokens, output_tokens))
            .unwrap_or(0.0);
        let now = Utc::now();
        self.state.ledger.settle(
            id,
            Amount {
                cost_usd: cost,
                tokens: input_tokens + output_tokens,
            },
            now,
        );
        self.publish_spend(now);
    }

    fn publish_spend(&self, now: DateTime<Utc>) {
        let budgets = self.loaded.set.budgets(&self.token);
        if budgets.is_empty() {
            return;
        }
        for usage in self.state.ledger.usage(&self.token, budgets, now) {
            let labels = BudgetLabels {
                token: self.token.clone(),
                period: usage.period.as_str().to_string(),
            };
            self.state
                .metrics
                .budget_spent_usd
                .get_or_create(&labels)
                .set(usage.cost_usd);
            self.state
                .metrics
                .budget_spent_tokens
                .get_or_create(&labels)
                .set(usage.tokens as i64);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.state.ledger.release(id, Utc::now());
        }
    }
}

/// Headers passed to the upstream. The caller's `Authorization` is a PolicyBind
/// token and never leaves the sidecar; hop-by-hop headers are dropped.
fn upstream_headers(
    from: &HeaderMap,
    settings: &Settings,
    request_id: &str,
    len: usize,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    for name in [header::ACCEPT, header::USER_AGENT, header::ACCEPT_ENCODING] {
        if let Some(v) = from.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Some(key) = &settings.upstream_api_key
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    headers
}

/// Response headers passed back to the caller (hop-by-hop ones dropped).
fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "upgrade"
                | "proxy-connection"
                | "te"
                | "trailer"
        ) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

enum UpstreamFailure {
    Timeout,
    Unavailable(String),
}

async fn send_upstream(
    state: &AppState,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<hyper::body::Incoming>, UpstreamFailure> {
    let uri: Uri = format!("{}{}", state.upstream_base, path_and_query)
        .parse()
        .map_err(|e| UpstreamFailure::Unavailable(format!("bad upstream URL: {e}")))?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    match tokio::time::timeout(
        state.settings.limits.upstream_timeout,
        state.client.request(request),
    )
    .await
    {
        Err(_) => Err(UpstreamFailure::Timeout),
        Ok(Err(e)) => Err(UpstreamFailure::Unavailable(e.to_string())),
        Ok(Ok(response)) => Ok(response),
    }
}

fn upstream_failure_response(
    state: &AppState,
    failure: UpstreamFailure,
    endpoint: &str,
    started: Instant,
    decision: (Effect, &[String], &str),
) -> Response<Body> {
    let (effect, codes, request_id) = decision;
    let (refused, outcome) = match failure {
        UpstreamFailure::Timeout => {
            warn!("upstream timed out");
            (
                Refused::failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_error",
                    "upstream_timeout",
                    "the model server did not answer in time",
                ),
                "timeout",
            )
        }
        UpstreamFailure::Unavailable(detail) => {
            warn!(%detail, "upstream unavailable");
            (
                Refused::failure(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "upstream_unavailable",
                    "the model server could not be reached",
                ),
                "unavailable",
            )
        }
    };
    state
        .metrics
        .upstream(endpoint, outcome, started.elapsed().as_secs_f64());
    let mut response = refused.into_response(request_id, false);
    decision_headers(response.headers_mut(), effect, codes, request_id);
    response
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &Arc<AppState>,
    caller_headers: &HeaderMap,
    path_and_query: &str,
    body: Vec<u8>,
    stream: bool,
    endpoint: Endpoint,
    mut reservation: Reservation,
    decision: (Effect, &[String], &str),
) -> Response<Body> {
    let (effect, codes, request_id) = decision;
    let headers = upstream_headers(caller_headers, &state.settings, request_id, body.len());
    let started = Instant::now();
    let upstream = match send_upstream(
        state,
        Method::POST,
        path_and_query,
        headers,
        Bytes::from(body),
    )
    .await
    {
        Ok(r) => r,
        Err(failure) => {
            // The reservation is released as it drops.
            return upstream_failure_response(state, failure, endpoint.as_str(), started, decision);
        }
    };
    add_upstream_wait(started);
    let (parts, incoming) = upstream.into_parts();
    let outcome = if parts.status.is_server_error() {
        "error"
    } else {
        "ok"
    };
    state
        .metrics
        .upstream(endpoint.as_str(), outcome, started.elapsed().as_secs_f64());
    let is_event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    let mut response = Response::new(Body::empty());
    *response.status_mut() = parts.status;
    copy_response_headers(&parts.headers, response.headers_mut());
    decision_headers(response.headers_mut(), effect, codes, request_id);

    if !parts.status.is_success() {
        // The model refused or failed: nothing was consumed; release and pass
        // the upstream's own error through.
        drop(reservation);
        *response.body_mut() = Body::new(incoming);
        return response;
    }
    if stream || is_event_stream {
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = stream_body(
            incoming,
            StreamSettle {
                reservation: Some(reservation),
                usage: StreamUsage::default(),
            },
            state.settings.limits.stream_idle_timeout,
        );
        return response;
    }
    let limit = state.settings.limits.max_response_bytes;
    let read_started = Instant::now();
    let read = tokio::time::timeout(
        state.settings.limits.upstream_timeout,
        Limited::new(incoming, limit).collect(),
    )
    .await;
    add_upstream_wait(read_started);
    match read {
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            match response_usage(&bytes) {
                Some(usage) => reservation.settle(usage.prompt_tokens, usage.completion_tokens),
                // No usage reported (embeddings of some servers): charge the estimate.
                None => {
                    let input = reservation.estimated_input;
                    reservation.settle(input, 0)
                }
            }
            *response.body_mut() = Body::from(bytes);
            response
        }
        Ok(Err(e)) => upstream_failure_response(
            state,
            UpstreamFailure::Unavailable(format!("reading the response: {e}")),
            endpoint.as_str(),
            started,
            decision,
        ),
        Err(_) => upstream_failure_response(
            state,
            UpstreamFailure::Timeout,
            endpoint.as_str(),
            started,
            decision,
        ),
    }
}

/// Settles a streamed response when the stream ends or the caller goes away.
struct StreamSettle {
    reservation: Option<Reservation>,
    usage: StreamUsage,
}

impl Drop for StreamSettle {
    fn drop(&mut self) {
        if let Some(mut reservation) = self.reservation.take() {
            // The model generated what was streamed, whether or not the caller
            // read to the end: settle rather than release.
            let (input, output) = match self.usage.reported {
                Some(u) => (u.prompt_tokens, u.completion_tokens),
                None => (
                    reservation.estimated_input,
                    self.usage.counted_output_tokens(),
                ),
            };
            reservation.settle(input, output);
        }
    }
}

/// Passes an SSE body through chunk by chunk, watching for the usage chunk and
/// bounding the silence between chunks.
fn stream_body(incoming: hyper::body::Incoming, settle: StreamSettle, idle: Duration) -> Body {
    let data = incoming.into_data_stream();
    let stream = futures::stream::unfold(
        (data, settle, false),
        move |(mut data, mut settle, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout(idle, data.next()).await {
                Ok(Some(Ok(bytes))) => {
                    settle.usage.feed(&bytes);
                    Some((Ok(bytes), (data, settle, false)))
                }
                Ok(Some(Err(e))) => {
                    warn!("upstream stream failed: {e}");
                    Some((Err(std::io::Error::other(e)), (data, settle, true)))
                }
                Ok(None) => None,
                Err(_) => {
                    warn!("upstream stream idle for too long; closing");
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "upstream stream idle",
                        )),
                        (data, settle, true),
                    ))
                }
            }
        },
    );
    Body::from_stream(stream)
}

/// `GET /v1/models`: the upstream's list, filtered to the models the caller's
/// token may call and that are not refused for it by the registry.
async fn list_models(
    state: &Arc<AppState>,
    loaded: &Arc<Loaded>,
    request: Request<Body>,
    request_id: &str,
    token_id: &str,
    now: DateTime<Utc>,
) -> Response<Body> {
    let set = &loaded.set;
    let probe = |model: &str| {
        set.decide(&Facts {
            request_id: Some(request_id.to_string()),
            token: Some(token_id.to_string()),
            model: model.to_string(),
            namespace: Some(state.settings.namespace.clone()),
            time: now,
            ..Default::default()
        })
    };
    // Token validity (revoked, expired, not yet valid) does not depend on the model.
    let token_check = probe("");
    if token_check.stage == Stage::Token
        && matches!(
            token_check.code(),
            codes::TOKEN_REVOKED | codes::TOKEN_EXPIRED | codes::TOKEN_NOT_YET_VALID
        )
    {
        let refused = Refused::from_decision(&token_check);
        record_simple(
            state,
            request_id,
            &refused,
            Some(loaded),
            Some(token_id),
            None,
        );
        return refused.into_response(request_id, true);
    }
    let headers = upstream_headers(request.headers(), &state.settings, request_id, 0);
    let started = Instant::now();
    let allowed = vec![codes::POLICY_ALLOW.to_string()];
    let upstream =
        match send_upstream(state, Method::GET, "/v1/models", headers, Bytes::new()).await {
            Ok(r) => r,
            Err(f) => {
                return upstream_failure_response(
                    state,
                    f,
                    "models",
                    started,
                    (Effect::Allow, &allowed, request_id),
                );
            }
        };
    state
        .metrics
        .upstream("models", "ok", started.elapsed().as_secs_f64());
    let (parts, incoming) = upstream.into_parts();
    let bytes = match Limited::new(incoming, state.settings.limits.max_response_bytes)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return upstream_failure_response(
                state,
                UpstreamFailure::Unavailable(e.to_string()),
                "models",
                started,
                (Effect::Allow, &allowed, request_id),
            );
        }
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut list) if parts.status.is_success() => {
            if let Some(Value::Array(data)) = list.get_mut("data") {
                data.retain(|m| {
                    m.get("id").and_then(Value::as_str).is_some_and(|id| {
                        let d = probe(id);
                        !(d.effect == Effect::Deny
                            && matches!(d.stage, Stage::Token | Stage::Registry))
                    })
                });
            }
            Bytes::from(serde_json::to_vec(&list).expect("JSON always serializes"))
        }
        _ => bytes,
    };
    let refused = Refused {
        effect: Effect::Allow,
        codes: vec![],
        ..Refused::deny(codes::POLICY_ALLOW, "model list")
    };
    record_simple(
        state,
        request_id,
        &refused,
        Some(loaded),
        Some(token_id),
        None,
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = parts.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    decision_headers(response.headers_mut(), Effect::Allow, &[], request_id);
    response
}

/// A configured extra path: authenticated and recorded, not decided.
async fn passthrough(
    state: &Arc<AppState>,
    request: Request<Body>,
    request_id: &str,
) -> Response<Body> {
    let Some(loaded) = state.holder.current() else {
        let refused = Refused::deny(codes::NO_POLICY_SET, "no valid policy set is loaded");
        record_simple(state, request_id, &refused, None, None, None);
        return refused.into_response(request_id, true);
    };
    let token_id = match loaded
        .set
        .authenticate(bearer(request.headers()), Utc::now())
    {
        Ok(id) => id.to_string(),
        Err(e) => {
            let refused = Refused::deny(e.code(), e.to_string());
            record_simple(state, request_id, &refused, Some(&loaded), None, None);
            return refused.into_response(request_id, true);
        }
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, state.settings.limits.max_body_bytes).await else {
        let mut refused = Refused::deny(codes::REQUEST_INVALID, "request body too large");
        refused.status = StatusCode::PAYLOAD_TOO_LARGE;
        return refused.into_response(request_id, true);
    };
    let allow = Refused {
        effect: Effect::Allow,
        codes: vec![],
        ..Refused::deny(codes::POLICY_ALLOW, "extra path")
    };
    record_simple(
        state,
        request_id,
        &allow,
        Some(&loaded),
        Some(&token_id),
        None,
    );
    let headers = upstream_headers(&parts.headers, &state.settings, request_id, bytes.len());
    let started = Instant::now();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match send_upstream(state, parts.method.clone(), path, headers, bytes).await {
        Ok(upstream) => {
            let (up, incoming) = upstream.into_parts();
            let mut response = Response::new(Body::new(incoming));
            *response.status_mut() = up.status;
            copy_response_headers(&up.headers, response.headers_mut());
            decision_headers(response.headers_mut(), Effect::Allow, &[], request_id);
            response
        }
        Err(f) => {
            upstream_failure_response(state, f, "extra", started, (Effect::Allow, &[], request_id))
        }
    }
}
