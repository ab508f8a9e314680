//! PolicyGate's contract, answered by PolicyBind's decisions.
//!
//! PolicyGate (a small PDP service, `keithataylor/policygate-api`) takes
//! `POST /evaluate` with `{request_id?, timestamp?, action, env: {name},
//! resource: {type, id?, sensitivity}, subject?: {type?, id?}, signals?}` and
//! answers `{correlation_id, decision, rationale_codes, obligations?, policy:
//! {policy_id, policy_version, policy_sha256}, matched_rule_id?}`, with
//! decisions `ALLOW | BLOCK | REQUIRE_REVIEW | DEGRADE` and obligations only on
//! DEGRADE (`OUTPUT_CAP` with `max_tokens`). Its schema rejects unknown fields,
//! and a body that does not fit is a `422` with FastAPI's `{"detail": [...]}`.
//!
//! The mapping, read as faithfully as the two models allow:
//! - `action: infer:run` is a model call; `resource.id` names the model and is
//!   required; `resource.sensitivity` public/internal/restricted is the data
//!   classification. Other actions are not model calls: `BLOCK` with
//!   `REQUEST_INVALID`.
//! - `subject` and `timestamp` are accepted for compatibility and ignored:
//!   the subject comes from the caller's PolicyBind token, the time from the
//!   clock.
//! - `env.name` becomes the label `env`; each signal the label
//!   `signal.<key>`; signals `use_case` (string), `estimated_input_tokens` and
//!   `estimated_output_tokens` (numbers) are read as those facts.
//! - Allow is `ALLOW`; Deny is `BLOCK`; RequireApproval is `REQUIRE_REVIEW`;
//!   Degrade with a token cap is `DEGRADE` with `OUTPUT_CAP {max_tokens}`.
//!   Degrade to another model, and Redact, cannot be expressed in PolicyGate's
//!   vocabulary: a PolicyGate client would call the original model with the
//!   original text, so both are `BLOCK` (fail closed), with PolicyBind's codes.
//! - `rationale_codes` are PolicyBind's rationale codes, deciding code first;
//!   `matched_rule_id` is `policy/rule`; `policy` is `policybind:<namespace>`,
//!   the bundle fingerprint as version and as `policy_sha256`.
//! - `GET /health` is `{"status": "healthy"}` while a policy set is in force
//!   (`503` and `unhealthy` otherwise); `GET /version` names the build and the
//!   policy set.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use http::{Request, Response, StatusCode};
use policybind_crds::{DataClassification, Effect};
use policybind_engine::codes;
use policybind_engine::request::Decision;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{Instrument, info_span};

use super::{check_asked, decide_only};
use crate::pipeline::Asked;
use crate::refusal::{Refusal, Stage, json_response};
use crate::state::AppState;

/// PolicyGate's actions.
const ACTIONS: &[&str] = &[
    "infer:run",
    "data:read",
    "data:write",
    "tool:invoke",
    "policy:admin",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateRequest {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    timestamp: Option<String>,
    action: String,
    env: EvaluateEnv,
    resource: EvaluateResource,
    #[serde(default)]
    #[allow(dead_code)]
    subject: Option<Value>,
    #[serde(default)]
    signals: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateEnv {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateResource {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    sensitivity: String,
}

/// A body that does not fit PolicyGate's schema: FastAPI's 422.
fn unprocessable(location: &[&str], message: &str) -> Refusal {
    let mut refusal = Refusal::invalid(message.to_string());
    refusal.status = StatusCode::UNPROCESSABLE_ENTITY;
    refusal.error_type = "value_error";
    refusal.code = json!([{"loc": location, "msg": message, "type": "value_error"}]).to_string();
    refusal
}

fn unprocessable_response(refusal: &Refusal) -> Response<Body> {
    let detail: Value = serde_json::from_str(&refusal.code).unwrap_or(json!([]));
    json_response(refusal.status, &json!({ "detail": detail }))
}

/// What the request asks, or why it cannot be read. `Ok(None)`: not a model call.
fn read(request: &EvaluateRequest) -> Result<Option<Asked>, Refusal> {
    if !ACTIONS.contains(&request.action.as_str()) {
        return Err(unprocessable(
            &["body", "action"],
            "action is not one of PolicyGate's actions",
        ));
    }
    let classification = match request.resource.sensitivity.as_str() {
        "public" => DataClassification::Public,
        "internal" => DataClassification::Internal,
        "restricted" => DataClassification::Restricted,
        _ => {
            return Err(unprocessable(
                &["body", "resource", "sensitivity"],
                "sensitivity must be public, internal or restricted",
            ));
        }
    };
    if request.signals.len() > 50 {
        return Err(unprocessable(&["body", "signals"], "at most 50 signals"));
    }
    if request.action != "infer:run" {
        return Ok(None);
    }
    let Some(model) = request.resource.id.clone() else {
        return Err(unprocessable(
            &["body", "resource", "id"],
            "resource.id must name the model for action infer:run",
        ));
    };
    let mut asked = Asked {
        model,
        data_classification: Some(classification),
        ..Default::default()
    };
    asked.labels.insert("env".into(), request.env.name.clone());
    asked
        .labels
        .insert("resourceType".into(), request.resource.kind.clone());
    read_signals(&request.signals, &mut asked)?;
    check_asked(&asked)?;
    Ok(Some(asked))
}

fn read_signals(signals: &BTreeMap<String, Value>, asked: &mut Asked) -> Result<(), Refusal> {
    for (key, value) in signals {
        let key_ok = key.len() <= 41
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !key_ok {
            return Err(unprocessable(
                &["body", "signals"],
                "signal keys must match ^[a-z][a-z0-9_]{0,40}$",
            ));
        }
        let text = match value {
            Value::String(s) if s.len() <= 256 => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            _ => {
                return Err(unprocessable(
                    &["body", "signals", key],
                    "signals are scalars (strings up to 256 characters)",
                ));
            }
        };
        match key.as_str() {
            "use_case" => asked.use_case = Some(text.clone()),
            "estimated_input_tokens" => asked.estimated_input_tokens = value.as_u64().unwrap_or(0),
            "estimated_output_tokens" => {
                asked.estimated_output_tokens = value.as_u64().unwrap_or(0)
            }
            _ => {}
        }
        asked.labels.insert(format!("signal.{key}"), text);
    }
    Ok(())
}

/// PolicyGate's decision and obligations for a PolicyBind decision.
pub fn map_decision(decision: &Decision) -> (&'static str, Option<Value>) {
    match decision.effect {
        Effect::Allow => ("ALLOW", None),
        Effect::RequireApproval => ("REQUIRE_REVIEW", None),
        Effect::Degrade if decision.obligations.model.is_none() => {
            match decision.obligations.max_tokens {
                Some(cap) => (
                    "DEGRADE",
                    Some(json!([{"type": "OUTPUT_CAP", "params": {"max_tokens": cap}}])),
                ),
                None => ("BLOCK", None),
            }
        }
        // Deny; Redact and a model substitution cannot be expressed (fail closed).
        _ => ("BLOCK", None),
    }
}

/// Handler of `POST /evaluate`.
pub async fn evaluate(
    State(state): State<Arc<AppState>>,
    request: Request<Body>,
) -> Response<Body> {
    let request_id = state.next_request_id(request.headers());
    let span = info_span!("evaluate", request_id = %request_id, effect = tracing::field::Empty,
        code = tracing::field::Empty, stage = tracing::field::Empty, decided = tracing::field::Empty);
    async {
        let mut correlation = request_id.clone();
        let mut not_a_model_call = false;
        let parse = |bytes: &[u8]| -> Result<Asked, Refusal> {
            let body: EvaluateRequest = serde_json::from_slice(bytes)
                .map_err(|e| unprocessable(&["body"], &e.to_string()))?;
            if let Some(id) = body.request_id.as_deref() {
                crate::ingress::identifier("request_id", id, 128)?;
                correlation = id.to_string();
            }
            match read(&body)? {
                Some(asked) => Ok(asked),
                None => {
                    not_a_model_call = true;
                    Err(Refusal::invalid(format!(
                        "action {} is not a model call; policybind decides infer:run only",
                        body.action
                    )))
                }
            }
        };
        let result = decide_only(&state, request, &request_id, "evaluate", parse).await;
        let (verdict, loaded) = match result {
            Ok((verdict, loaded, _)) => (verdict, loaded),
            Err(refusal) if not_a_model_call => {
                return block_invalid(&state, &correlation, &refusal);
            }
            Err(refusal) if refusal.status == StatusCode::UNPROCESSABLE_ENTITY => {
                return unprocessable_response(&refusal);
            }
            Err(refusal) => return refusal.into_response(None, &request_id),
        };
        if let Err(refusal) = &verdict.outcome
            && refusal.stage != Stage::Decision
        {
            return refusal.clone().into_response(None, &request_id);
        }
        let namespace = &state.settings.namespace;
        json_response(
            StatusCode::OK,
            &evaluate_response(
                &verdict.decision,
                &correlation,
                namespace,
                loaded.set.fingerprint(),
            ),
        )
    }
    .instrument(span)
    .await
}

/// `BLOCK` for an action that is not a model call.
fn block_invalid(state: &AppState, correlation: &str, refusal: &Refusal) -> Response<Body> {
    let fingerprint = state
        .holder
        .current()
        .map(|l| l.set.fingerprint().to_string())
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "correlation_id": correlation,
            "decision": "BLOCK",
            "rationale_codes": [refusal.code],
            "policy": policy_ref(&state.settings.namespace, &fingerprint),
        }),
    )
}

fn policy_ref(namespace: &str, fingerprint: &str) -> Value {
    json!({
        "policy_id": format!("policybind:{namespace}"),
        "policy_version": fingerprint,
        "policy_sha256": fingerprint.strip_prefix("sha256:").unwrap_or(fingerprint),
    })
}

fn evaluate_response(
    decision: &Decision,
    correlation: &str,
    namespace: &str,
    fingerprint: &str,
) -> Value {
    let (verdict, obligations) = map_decision(decision);
    let mut codes = decision.codes.clone();
    if codes.is_empty() {
        codes.push(codes::NO_MATCHING_POLICY.to_string());
    }
    let mut body = json!({
        "correlation_id": correlation,
        "decision": verdict,
        "rationale_codes": codes,
        "policy": policy_ref(namespace, fingerprint),
    });
    if let Some(o) = obligations {
        body["obligations"] = o;
    }
    if let (Some(p), Some(r)) = (&decision.policy, &decision.rule) {
        let mut rule = format!("{p}/{r}");
        rule.truncate(128);
        body["matched_rule_id"] = json!(rule);
    }
    body
}

/// Handler of `GET /health`.
pub async fn health(State(state): State<Arc<AppState>>) -> Response<Body> {
    match state.holder.current() {
        Some(_) => json_response(StatusCode::OK, &json!({"status": "healthy"})),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unhealthy", "reason": "no valid policy set is loaded"}),
        ),
    }
}

/// Handler of `GET /version`.
pub async fn version(State(state): State<Arc<AppState>>) -> Response<Body> {
    let fingerprint = state
        .holder
        .current()
        .map(|l| l.set.fingerprint().to_string());
    json_response(
        StatusCode::OK,
        &json!({
            "service": "policybind",
            "version": env!("CARGO_PKG_VERSION"),
            "policy_version": fingerprint,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_engine::request::{Obligations, ResolvedFacts, Stage as EngineStage};

    fn decision(effect: Effect, obligations: Obligations) -> Decision {
        Decision {
            effect,
            codes: vec!["X".into()],
            message: String::new(),
            policy: None,
            rule: None,
            stage: EngineStage::Policy,
            obligations,
            findings: vec![],
            would_have: None,
            facts: ResolvedFacts::default(),
            fingerprint: String::new(),
        }
    }

    #[test]
    fn effects_map_to_policygate_decisions_and_what_cannot_be_expressed_blocks() {
        let cap = Obligations {
            max_tokens: Some(200),
            ..Default::default()
        };
        let swap = Obligations {
            model: Some("small".into()),
            max_tokens: Some(200),
            ..Default::default()
        };
        assert_eq!(
            map_decision(&decision(Effect::Allow, Default::default())).0,
            "ALLOW"
        );
        assert_eq!(
            map_decision(&decision(Effect::Deny, Default::default())).0,
            "BLOCK"
        );
        assert_eq!(
            map_decision(&decision(Effect::RequireApproval, Default::default())).0,
            "REQUIRE_REVIEW"
        );
        let (verdict, obligations) = map_decision(&decision(Effect::Degrade, cap));
        assert_eq!(verdict, "DEGRADE");
        assert_eq!(obligations.unwrap()[0]["params"]["max_tokens"], 200);
        assert_eq!(map_decision(&decision(Effect::Degrade, swap)).0, "BLOCK");
        assert_eq!(
            map_decision(&decision(Effect::Redact, Default::default())).0,
            "BLOCK"
        );
    }

    #[test]
    fn requests_map_to_what_the_caller_may_ask() {
        let body: EvaluateRequest = serde_json::from_value(json!({
            "request_id": "r-1", "action": "infer:run", "env": {"name": "prod"},
            "resource": {"type": "model_endpoint", "id": "gpt-4o", "sensitivity": "restricted"},
            "subject": {"type": "user", "id": "mallory"},
            "signals": {"use_case": "support-chat", "estimated_output_tokens": 64, "tier": "gold"}
        }))
        .unwrap();
        let asked = read(&body).unwrap().unwrap();
        assert_eq!(asked.model, "gpt-4o");
        assert_eq!(
            asked.data_classification,
            Some(DataClassification::Restricted)
        );
        assert_eq!(asked.use_case.as_deref(), Some("support-chat"));
        assert_eq!(asked.estimated_output_tokens, 64);
        assert_eq!(asked.labels["env"], "prod");
        assert_eq!(asked.labels["signal.tier"], "gold");
        assert!(
            !asked.labels.values().any(|v| v == "mallory"),
            "the subject is never taken"
        );

        let mut other = body;
        other.action = "tool:invoke".into();
        assert!(read(&other).unwrap().is_none());
        other.action = "rm -rf".into();
        assert_eq!(
            read(&other).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
