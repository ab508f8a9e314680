//! HTTP handling of the main port: every path, authenticated, read, decided
//! through the [`crate::pipeline`], then forwarded ([`crate::forward`]) or
//! answered with a refusal ([`crate::refusal`]).
//!
//! For each request, in this order:
//! 1. at most `--max-concurrency` in progress (`503 overloaded` otherwise);
//! 2. the path is a model API or a configured extra path (`404 PATH_NOT_ALLOWED`);
//! 3. a policy set is in force (`503 NO_POLICY_SET`: fail closed);
//! 4. the caller's PolicyBind token, from `Authorization: Bearer`, `x-api-key`
//!    (the Anthropic SDK) or `api-key` (the Azure OpenAI SDK), is looked up by
//!    SHA-256 (`TOKEN_MISSING`, `TOKEN_UNKNOWN`); refusals up to here are
//!    counted and summarised, not recorded one by one;
//! 5. `GET /v1/models` is answered from the registry ([`crate::models`]);
//! 6. the body (POST, at most `--max-body-bytes`) and headers give the facts
//!    the caller may give; malformed ones are `400 REQUEST_INVALID`, recorded;
//! 7. the pipeline decides, reserves, holds, audits;
//! 8. the request is forwarded, or refused in the API's error shape.
//!
//! Every response carries `x-policybind-decision`, `x-policybind-codes` and
//! `x-policybind-request-id`. One log line per request names the outcome:
//! `effect` and `code` of what the caller got, the refusing `stage`, and the
//! engine's `decided` effect, except refusals before anyone was identified:
//! those are logged at DEBUG and summarised once per interval
//! ([`crate::rejections`]), so an unauthenticated flood cannot flood the log.
//! Nothing here logs a token value or prompt text.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use policybind_crds::{DataClassification, Effect};
use policybind_engine::codes;
use policybind_engine::detect::{self, Finding};
use policybind_engine::request::Decision;
use policybind_engine::{AuthError, PolicySet};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::forward::{self, Forward};
use crate::ingress;
use crate::pipeline::{Asked, Call, Estimate, Plan};
use crate::providers::{Api, ModelRequest};
use crate::refusal::{APPROVAL_HEADER, CLASSIFICATION_HEADER, Refusal, Stage, USE_CASE_HEADER};
use crate::source::Loaded;
use crate::state::AppState;
use crate::upstream::{Route, RouteContext};

tokio::task_local! {
    /// Microseconds this request spent waiting for the upstream, so the time the
    /// sidecar itself adds can be measured (`overhead_seconds`).
    pub(crate) static UPSTREAM_WAIT_MICROS: Arc<AtomicU64>;
}

/// Adds the time since `since` to the request's upstream wait.
pub(crate) fn add_upstream_wait(since: Instant) {
    let micros = since.elapsed().as_micros() as u64;
    let _ = UPSTREAM_WAIT_MICROS.try_with(|w| w.fetch_add(micros.max(1), Ordering::Relaxed));
}

/// Entry point for every path of the main port.
pub async fn handle(State(state): State<Arc<AppState>>, request: Request<Body>) -> Response<Body> {
    let request_id = state.next_request_id(request.headers());
    let span = info_span!(
        "request",
        request_id = %request_id,
        path = %request.uri().path(),
        effect = tracing::field::Empty,
        code = tracing::field::Empty,
        stage = tracing::field::Empty,
        decided = tracing::field::Empty,
    );
    let started = Instant::now();
    let Ok(permit) = state.concurrency.clone().try_acquire_owned() else {
        span.record("stage", Stage::Failure.as_str());
        span.record("code", "overloaded");
        warn!(parent: &span, "too many concurrent requests; refused");
        return Refusal::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            "too many concurrent requests; retry shortly",
        )
        .into_response(Api::from_path(request.uri().path()), &request_id);
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
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if response.extensions().get::<Unauthenticated>().is_some() {
        debug!(parent: &span, status, micros, "request done");
    } else {
        info!(parent: &span, status, micros, "request done");
    }
    response
}

/// Marks a response refused before anyone was identified, so its log line
/// is DEBUG (the refusal is counted and summarised instead).
#[derive(Debug, Clone, Copy)]
struct Unauthenticated;

async fn serve(state: &Arc<AppState>, request: Request<Body>, request_id: &str) -> Response<Body> {
    let path = request.uri().path();
    let api = match Api::from_path(path) {
        Some(api) => api,
        _ if state.settings.is_extra_path(path) => Api::Extra,
        _ => {
            let message = format!("{path} is not served by policybind");
            return state.unauthenticated(None, codes::PATH_NOT_ALLOWED, message, request_id);
        }
    };
    let Some(loaded) = state.holder.current() else {
        let message = "no valid policy set is loaded; every request is refused";
        return state.unauthenticated(Some(api), codes::NO_POLICY_SET, message, request_id);
    };
    let token = match authenticate(&loaded.set, request.headers()) {
        Ok(token) => token,
        Err(e) => {
            return state.unauthenticated(Some(api), e.code(), e.to_string(), request_id);
        }
    };
    if api == Api::Models {
        return crate::models::list(state, &loaded, &request, request_id, &token);
    }
    match read_call(state, request, api).await {
        Ok((asked, plan, head)) => {
            let call = Call {
                loaded: loaded.clone(),
                request_id,
                token: &token,
                asked,
                endpoint: api.as_str(),
            };
            let verdict = state.run(call, plan).await;
            match verdict.outcome {
                Err(refusal) => refusal.into_response(Some(api), request_id),
                Ok(admitted) => {
                    let forward = Forward {
                        api,
                        head,
                        request_id,
                        loaded,
                        decision: verdict.decision,
                        facts: verdict.facts,
                        ready: admitted.ready,
                        reservation: admitted.reservation,
                    };
                    forward::forward(state, forward).await
                }
            }
        }
        Err((refusal, model)) => {
            state.record_refusal(
                &loaded,
                &token,
                request_id,
                &refusal,
                model.as_deref(),
                api.as_str(),
            );
            refusal.into_response(Some(api), request_id)
        }
    }
}

/// What the forwarder needs of the caller's request.
pub struct Head {
    pub headers: HeaderMap,
    pub path_and_query: String,
}

/// Reads the body and headers of a model call into what the caller asked and
/// the plan that applies the decision to it. `Err` carries the model, when known.
async fn read_call(
    state: &Arc<AppState>,
    request: Request<Body>,
    api: Api,
) -> Result<(Asked, ProxyPlan, Head), (Refusal, Option<String>)> {
    if request.method() != Method::POST {
        let message = format!(
            "{} takes POST, not {}",
            request.uri().path(),
            request.method()
        );
        return Err((Refusal::invalid(message), None));
    }
    let (parts, body) = request.into_parts();
    let limit = state.settings.limits.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let mut refusal = Refusal::invalid(format!(
            "the request body is larger than {limit} bytes or could not be read"
        ));
        refusal.status = StatusCode::PAYLOAD_TOO_LARGE;
        return Err((refusal, None));
    };
    let mut request = ModelRequest::parse(
        api,
        &bytes,
        state.settings.default_output_tokens,
        state.settings.token_estimates,
    )
    .map_err(|e| (Refusal::invalid(e.to_string()), None))?;
    let model = request.model.clone();
    let with_model = |r: Refusal| (r, Some(model.clone()));
    ingress::identifier("model", &request.model, ingress::MAX_IDENTIFIER).map_err(with_model)?;
    let asked = Asked {
        model: request.model.clone(),
        use_case: ingress::header(&parts.headers, USE_CASE_HEADER)
            .map_err(with_model)?
            .map(str::to_string),
        data_classification: classification(&parts.headers).map_err(with_model)?,
        prompt: std::mem::take(&mut request.prompt),
        estimated_input_tokens: request.estimated_input_tokens,
        estimated_output_tokens: request.estimated_output_tokens,
        labels: [
            ("endpoint".to_string(), api.as_str().to_string()),
            ("stream".to_string(), request.stream.to_string()),
        ]
        .into_iter()
        .collect(),
        approval_ref: approval_ref(&parts.headers).map_err(with_model)?,
    };
    let head = Head {
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers: parts.headers,
    };
    let plan = ProxyPlan {
        request,
        original: bytes,
        state: state.clone(),
    };
    Ok((asked, plan, head))
}

fn classification(headers: &HeaderMap) -> Result<Option<DataClassification>, Refusal> {
    match ingress::header(headers, CLASSIFICATION_HEADER)? {
        None => Ok(None),
        Some(v) => DataClassification::parse(v).map(Some).ok_or_else(|| {
            Refusal::invalid(format!(
                "{CLASSIFICATION_HEADER} must be Public, Internal, Confidential or Restricted"
            ))
        }),
    }
}

fn approval_ref(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    match ingress::header(headers, APPROVAL_HEADER)? {
        None => Ok(None),
        Some(r) if crate::approvals::valid_reference(r) => Ok(Some(r.to_string())),
        Some(_) => Err(Refusal::invalid(format!(
            "{APPROVAL_HEADER} must be an approval reference (lower-case letters, digits, '-')"
        ))),
    }
}

/// The caller's PolicyBind token, from `Authorization: Bearer`, `x-api-key` or
/// `api-key`, looked up once.
pub(crate) fn authenticate(set: &PolicySet, headers: &HeaderMap) -> Result<String, AuthError> {
    let now = Utc::now();
    set.authenticate(presented_token(headers), now)
        .map(str::to_string)
}

/// The token value a caller presented, if any.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

impl AppState {
    /// A refusal before anyone was identified: counted and logged, summarised
    /// in the audit trail later ([`crate::rejections`]).
    fn unauthenticated(
        &self,
        api: Option<Api>,
        code: &str,
        message: impl Into<String>,
        request_id: &str,
    ) -> Response<Body> {
        let stage = match code {
            codes::PATH_NOT_ALLOWED => Stage::Path,
            codes::NO_POLICY_SET => Stage::PolicySet,
            _ => Stage::Authentication,
        };
        let refusal = Refusal::new(stage, code, message);
        self.rejections.count(code);
        self.metrics.decision(Effect::Deny.as_str(), code, None);
        crate::decisions::record_early_refusal(
            &self.metrics.summary,
            stage,
            code,
            None,
            Utc::now(),
        );
        let span = tracing::Span::current();
        span.record("effect", Effect::Deny.as_str());
        span.record("code", code);
        span.record("stage", stage.as_str());
        let mut response = refusal.into_response(api, request_id);
        response.extensions_mut().insert(Unauthenticated);
        response
    }

    /// Records a refusal of an identified caller made before the pipeline
    /// (an unreadable request).
    pub(crate) fn record_refusal(
        &self,
        loaded: &Loaded,
        token: &str,
        request_id: &str,
        refusal: &Refusal,
        model: Option<&str>,
        endpoint: &str,
    ) {
        self.metrics
            .decision(refusal.effect.as_str(), &refusal.code, None);
        crate::decisions::record_early_refusal(
            &self.metrics.summary,
            refusal.stage,
            &refusal.code,
            model,
            Utc::now(),
        );
        let span = tracing::Span::current();
        span.record("effect", refusal.effect.as_str());
        span.record("code", refusal.code.as_str());
        span.record("stage", refusal.stage.as_str());
        let mut event = policybind_engine::audit::AuditEvent::decision(refusal.effect)
            .time(Utc::now())
            .request_id(request_id)
            .namespace(self.settings.namespace.clone())
            .fingerprint(loaded.set.fingerprint())
            .token_id(token)
            .detail("endpoint", endpoint)
            .detail("stage", refusal.stage.as_str());
        for code in &refusal.codes {
            event = event.code(code.clone());
        }
        if let Some(m) = model {
            event = event.model(m);
        }
        // A refusal is already the safe answer; a failed append is logged, not escalated.
        if let Err(e) = self.audit.append(event) {
            warn!("refusal not recorded: {e}");
        }
    }
}

/// The proxy's [`Plan`]: applies the decision's obligations to the body and
/// resolves the route of the model finally called.
pub struct ProxyPlan {
    request: ModelRequest,
    original: Bytes,
    state: Arc<AppState>,
}

/// A request ready to send.
pub struct Ready {
    pub body: Bytes,
    pub route: Route,
    pub stream: bool,
    /// Model actually called (after degrade).
    pub model: String,
}

impl Plan for ProxyPlan {
    type Ready = Ready;

    fn prepare(
        self,
        decision: &Decision,
        set: &PolicySet,
    ) -> Result<(Ready, Option<Estimate>), Refusal> {
        let mut request = self.request;
        if let Some(redact) = &decision.obligations.redact {
            request.rewrite_texts(|text, span| {
                let local = findings_in(&decision.findings, span);
                (!local.is_empty())
                    .then(|| detect::redact(text, &local, &redact.entities, &redact.replacement))
            });
        }
        let mut repriced = false;
        if decision.effect == Effect::Degrade {
            request.degrade(
                decision.obligations.model.as_deref(),
                decision.obligations.max_tokens,
            );
            repriced = true;
        }
        let settings = &self.state.settings;
        if settings.request_stream_usage {
            request.request_stream_usage();
        }
        let context = RouteContext {
            settings,
            credentials: &self.state.credentials,
            set,
        };
        let route = context.resolve(&request.model, request.api)?;
        // Priced once by the engine; again only when degrade changed the call.
        let cost_usd = match (repriced, set.pricing(&request.model, &settings.namespace)) {
            (true, Some(p)) => p.cost(
                request.estimated_input_tokens,
                request.estimated_output_tokens,
            ),
            _ => decision.facts.estimated_cost_usd,
        };
        let estimate = Estimate {
            model: request.model.clone(),
            input_tokens: request.estimated_input_tokens,
            output_tokens: request.estimated_output_tokens,
            cost_usd,
        };
        let ready = Ready {
            stream: request.stream,
            model: request.model.clone(),
            route,
            body: request.into_body(self.original),
        };
        Ok((ready, Some(estimate)))
    }
}

/// The findings of a scan of the joined prompt that fall in `span`, moved to
/// offsets within that text (an entity across two texts is cut at the border).
fn findings_in(findings: &[Finding], span: Range<usize>) -> Vec<Finding> {
    findings
        .iter()
        .filter(|f| f.start < span.end && f.end > span.start)
        .map(|f| Finding {
            start: f.start.max(span.start) - span.start,
            end: f.end.min(span.end) - span.start,
            ..f.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_token_is_read_from_each_sdks_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert("x-api-key", HeaderValue::from_static(" pb-anthropic "));
        assert_eq!(presented_token(&headers), Some("pb-anthropic"));
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer pb-openai"),
        );
        assert_eq!(presented_token(&headers), Some("pb-openai"));
        headers.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_token(&headers), None);
        let mut azure = HeaderMap::new();
        azure.insert("api-key", HeaderValue::from_static("pb-azure"));
        assert_eq!(presented_token(&azure), Some("pb-azure"));
    }

    #[test]
    fn findings_are_moved_into_each_text_and_cut_at_borders() {
        let finding = |start, end| Finding {
            entity: "EMAIL".into(),
            detector: "email".into(),
            start,
            end,
        };
        // Texts "abc" (0..3) and "defgh" (4..9) joined by a newline.
        let findings = vec![finding(1, 2), finding(2, 6), finding(7, 9)];
        assert_eq!(
            findings_in(&findings, 0..3),
            vec![finding(1, 2), finding(2, 3)]
        );
        assert_eq!(
            findings_in(&findings, 4..9),
            vec![finding(0, 2), finding(3, 5)]
        );
    }
}
