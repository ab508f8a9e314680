//! `POST /v1/decide`: the decision point for services that enforce themselves
//! (the PDP/PEP split).
//!
//! A service that is not an OpenAI-compatible proxy target (a batch job, an agent
//! framework, a gateway of its own) sends the facts and gets the decision, made by
//! the same policy set and recorded in the same audit trail as proxied requests.
//! The caller enforces it: nothing is forwarded, reserved or redacted here.
//!
//! Request body: the engine's `Request` in JSON (camelCase; only `model` is
//! required). If the call carries `Authorization: Bearer <end-user token>`, the
//! token is authenticated here and its id replaces any `token` in the body;
//! without it, `token` in the body is trusted as given (the decision API is meant
//! for callers inside the pod or namespace). `time` defaults to now, `namespace`
//! to the sidecar's, and `usage` to what this sidecar has counted for the token.
//!
//! Response: `200` with the decision JSON (`effect`, `codes`, `message`, `policy`,
//! `rule`, `stage`, `obligations`, `findings`, `wouldHave`, `facts`,
//! `fingerprint`) plus `requestId`, for every decision including denials; `400`
//! with an OpenAI-style error when the body is not a valid request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use chrono::Utc;
use http::{HeaderValue, Request, Response, StatusCode, header};
use policybind_crds::Effect;
use policybind_engine::codes;
use policybind_engine::request::{Decision, Request as Facts, ResolvedFacts, Stage};
use serde_json::json;
use tracing::{Instrument, info_span, warn};

use crate::proxy::{AppState, CODES_HEADER, DECISION_HEADER, REQUEST_ID_HEADER, bearer};

fn json_response(status: StatusCode, body: serde_json::Value, request_id: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(
        serde_json::to_vec(&body).expect("JSON always serializes"),
    ));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    response
}

fn invalid(message: String, request_id: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"message": message, "type": "invalid_request_error", "code": codes::REQUEST_INVALID, "param": null}}),
        request_id,
    )
}

fn refusal(facts: &Facts, code: &str, message: &str, fingerprint: &str) -> Decision {
    Decision {
        effect: Effect::Deny,
        codes: vec![code.to_string()],
        message: message.to_string(),
        policy: None,
        rule: None,
        stage: Stage::Token,
        obligations: Default::default(),
        findings: vec![],
        would_have: None,
        facts: ResolvedFacts {
            token: facts.token.clone(),
            model: facts.model.clone(),
            namespace: facts.namespace.clone(),
            ..Default::default()
        },
        fingerprint: fingerprint.to_string(),
    }
}

/// Handler of `POST /v1/decide`.
pub async fn decide(State(state): State<Arc<AppState>>, request: Request<Body>) -> Response<Body> {
    let request_id = state.next_request_id(request.headers());
    let span = info_span!("decide", request_id = %request_id);
    decide_inner(state, request, request_id)
        .instrument(span)
        .await
}

async fn decide_inner(
    state: Arc<AppState>,
    request: Request<Body>,
    request_id: String,
) -> Response<Body> {
    let bearer_value = bearer(request.headers()).map(str::to_string);
    let bytes =
        match axum::body::to_bytes(request.into_body(), state.settings.limits.max_body_bytes).await
        {
            Ok(b) => b,
            Err(_) => return invalid("the request body is too large".into(), &request_id),
        };
    let mut facts: Facts = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => return invalid(format!("not a valid decision request: {e}"), &request_id),
    };
    let now = Utc::now();
    if facts.time == chrono::DateTime::<Utc>::UNIX_EPOCH {
        facts.time = now;
    }
    facts.request_id.get_or_insert_with(|| request_id.clone());
    facts
        .namespace
        .get_or_insert_with(|| state.settings.namespace.clone());

    let started = std::time::Instant::now();
    let mut decision = match state.holder.current() {
        None => refusal(
            &facts,
            codes::NO_POLICY_SET,
            "no valid policy set is loaded; every request is denied",
            "",
        ),
        Some(loaded) => {
            let set = &loaded.set;
            let auth = match bearer_value.as_deref() {
                Some(value) => set
                    .authenticate(Some(value), now)
                    .map(|id| Some(id.to_string())),
                None => Ok(facts.token.clone()),
            };
            match auth {
                Err(e) => refusal(&facts, e.code(), &e.to_string(), set.fingerprint()),
                Ok(token) => {
                    facts.token = token;
                    if let Some(token) = &facts.token
                        && facts.usage.is_empty()
                    {
                        facts.usage = state.ledger.usage(token, set.budgets(token), now);
                    }
                    set.decide(&facts)
                }
            }
        }
    };
    state
        .metrics
        .decide_seconds
        .observe(started.elapsed().as_secs_f64());

    let event = crate::proxy::decision_event(
        &decision,
        facts.request_id.as_deref().unwrap_or_default(),
        facts.prompt.as_deref().unwrap_or_default(),
        now,
        "decide",
    );
    if let Err(e) = state.audit.append(event) {
        warn!("decision not recorded: {e}");
        decision.effect = Effect::Deny;
        decision
            .codes
            .insert(0, codes::AUDIT_UNAVAILABLE.to_string());
        decision.message = "the audit trail cannot record this decision; denied".into();
        decision.obligations = Default::default();
    }
    state.metrics.decision(
        decision.effect.as_str(),
        decision.code(),
        decision.policy.as_deref(),
    );

    let mut body = serde_json::to_value(&decision).expect("a decision always serializes");
    body["requestId"] = json!(facts.request_id);
    let mut response = json_response(StatusCode::OK, body, &request_id);
    let headers = response.headers_mut();
    headers.insert(
        DECISION_HEADER,
        HeaderValue::from_static(decision.effect.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&decision.codes.join(",")) {
        headers.insert(CODES_HEADER, v);
    }
    response
}
