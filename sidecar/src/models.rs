//! `GET /v1/models`: the models the caller's token may call, answered from the
//! registry in the bundle, not forwarded.
//!
//! A model is listed when it is registered (name or alias) and the engine does
//! not refuse it to this token at the token or registry stage (not allowed for
//! the token, unapproved, suspended). A revoked, expired or not yet valid token
//! gets its refusal instead. The listing is decided and audited like any
//! request: one record, and `503 AUDIT_UNAVAILABLE` when the trail refuses it.
//!
//! The answer takes the caller's SDK's shape: Anthropic's (`type: model`,
//! `has_more`) when the request carries `anthropic-version`, OpenAI's otherwise.

use std::sync::Arc;

use axum::body::Body;
use chrono::Utc;
use http::{Request, Response, StatusCode};
use policybind_crds::Effect;
use policybind_engine::audit::AuditEvent;
use policybind_engine::codes;
use policybind_engine::request::{Request as Facts, Stage as EngineStage};
use serde_json::{Value, json};

use crate::providers::Api;
use crate::refusal::{Refusal, Stage, decision_headers, json_response};
use crate::source::Loaded;
use crate::state::AppState;

/// Answers `GET /v1/models` for an authenticated token.
pub fn list(
    state: &Arc<AppState>,
    loaded: &Arc<Loaded>,
    request: &Request<Body>,
    request_id: &str,
    token: &str,
) -> Response<Body> {
    let now = Utc::now();
    let set = &loaded.set;
    let probe = |model: &str| {
        set.decide(&Facts {
            request_id: Some(request_id.to_string()),
            token: Some(token.to_string()),
            model: model.to_string(),
            namespace: Some(state.settings.namespace.clone()),
            time: now,
            ..Default::default()
        })
    };
    // Token validity (revoked, expired, not yet valid) does not depend on the model.
    let token_check = probe("");
    let refused_token = token_check.stage == EngineStage::Token
        && matches!(
            token_check.code(),
            codes::TOKEN_REVOKED | codes::TOKEN_EXPIRED | codes::TOKEN_NOT_YET_VALID
        );
    let anthropic = request.headers().contains_key("anthropic-version");
    let api = anthropic.then_some(Api::Messages);
    if refused_token {
        let refusal = Refusal::new(Stage::Decision, token_check.code(), &token_check.message);
        state.record_refusal(
            loaded,
            token,
            request_id,
            &refusal,
            None,
            Api::Models.as_str(),
        );
        return refusal.into_response(api, request_id);
    }
    let models = callable_models(set, &state.settings.namespace, &probe);
    let event = AuditEvent::decision(Effect::Allow)
        .time(now)
        .request_id(request_id)
        .namespace(state.settings.namespace.clone())
        .fingerprint(set.fingerprint())
        .token_id(token)
        .detail("endpoint", Api::Models.as_str())
        .detail("models", models.len().to_string());
    if let Err(e) = state.audit.append(event) {
        tracing::warn!("model list not recorded, refused: {e}");
        let refusal = Refusal::new(
            Stage::Audit,
            codes::AUDIT_UNAVAILABLE,
            "the audit trail cannot record this request; refused",
        );
        state
            .metrics
            .decision("Deny", codes::AUDIT_UNAVAILABLE, None);
        return refusal.into_response(api, request_id);
    }
    state.metrics.decision("Allow", "", None);
    let span = tracing::Span::current();
    span.record("effect", "Allow");
    let body = if anthropic {
        anthropic_list(&models)
    } else {
        openai_list(&models)
    };
    let mut response = json_response(StatusCode::OK, &body);
    decision_headers(response.headers_mut(), Effect::Allow, &[], request_id);
    response
}

/// Registered names the token is not refused at the token or registry stage,
/// with their providers.
fn callable_models<'a>(
    set: &'a policybind_engine::PolicySet,
    namespace: &str,
    probe: &dyn Fn(&str) -> policybind_engine::Decision,
) -> Vec<(&'a str, &'a str)> {
    set.model_names(namespace)
        .into_iter()
        .filter(|name| {
            let d = probe(name);
            !(d.effect == Effect::Deny
                && matches!(d.stage, EngineStage::Token | EngineStage::Registry))
        })
        .map(|name| {
            (
                name,
                set.model_route(name, namespace).map_or("", |r| r.provider),
            )
        })
        .collect()
}

fn openai_list(models: &[(&str, &str)]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|(id, provider)| json!({"id": id, "object": "model", "created": 0, "owned_by": provider}))
        .collect();
    json!({"object": "list", "data": data})
}

fn anthropic_list(models: &[(&str, &str)]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|(id, _)| {
            json!({"id": id, "type": "model", "display_name": id,
                "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": models.first().map(|m| m.0),
        "last_id": models.last().map(|m| m.0),
    })
}
