//! The decision API, for services that enforce decisions themselves (the
//! PDP/PEP split): `POST /v1/decide`, and PolicyGate's contract (`POST
//! /evaluate`, `GET /health`, `GET /version`) so a service written against
//! PolicyGate works unchanged.
//!
//! It listens on its own port (`--decide-listen`), off by default in injected
//! sidecars, and every decision needs the caller's PolicyBind token (as
//! `Authorization: Bearer`, `x-api-key` or `api-key`). The caller may say what
//! it wants to do (model, use case, classification, text, estimates, labels,
//! an approval reference); the facts only PolicyBind can know come from the
//! pipeline ([`crate::pipeline`]): subject and team from the token, the
//! namespace, the time, the usage from the ledger, the approval state. A body
//! that tries to set them is refused with `400` naming the field. Decisions are
//! made and audited by the same pipeline as proxied requests; nothing is
//! reserved here, since nothing is forwarded.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use http::{HeaderValue, Request, Response, StatusCode};
use policybind_crds::DataClassification;
use policybind_engine::PolicySet;
use policybind_engine::codes;
use policybind_engine::request::Decision;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::{Instrument, info_span};

use crate::handler::authenticate;
use crate::ingress;
use crate::pipeline::{Asked, Call, Estimate, Plan, Verdict};
use crate::providers::TokenEstimates;
use crate::refusal::{
    CODES_HEADER, DECISION_HEADER, REQUEST_ID_HEADER, Refusal, Stage, json_response, set_header,
};
use crate::source::Loaded;
use crate::state::AppState;

pub mod policygate;

/// The decision API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/decide", post(decide))
        .route("/evaluate", post(policygate::evaluate))
        .route("/health", get(policygate::health))
        .route("/version", get(policygate::version))
        .with_state(state)
}

/// Facts a body must not set: PolicyBind knows them, the caller does not.
const SET_BY_POLICYBIND: &[(&str, &str)] = &[
    ("token", "the token comes from the caller's credentials"),
    ("subject", "the subject comes from the caller's token"),
    ("team", "the team comes from the caller's token"),
    ("namespace", "the namespace is the decision point's"),
    ("time", "the time is the decision point's clock"),
    ("usage", "usage comes from the decision point's ledger"),
    (
        "approved",
        "approval comes from the ApprovalRequest named by `approval`",
    ),
    (
        "provider",
        "the provider comes from the model's registration",
    ),
    ("region", "the region comes from the model's registration"),
    (
        "estimatedCostUsd",
        "cost is priced from the model's registration",
    ),
    (
        "requestId",
        "the request id comes from the x-request-id header",
    ),
];

/// Body of `POST /v1/decide`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DecideBody {
    model: String,
    #[serde(default)]
    use_case: Option<String>,
    #[serde(default)]
    data_classification: Option<DataClassification>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    estimated_input_tokens: Option<u64>,
    #[serde(default)]
    estimated_output_tokens: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Reference of an ApprovalRequest (as the `x-policybind-approval` header).
    #[serde(default)]
    approval: Option<String>,
}

/// Checks the identifiers of what a caller asked.
pub(crate) fn check_asked(asked: &Asked) -> Result<(), Refusal> {
    ingress::identifier("model", &asked.model, ingress::MAX_IDENTIFIER)?;
    if let Some(u) = &asked.use_case {
        ingress::identifier("useCase", u, ingress::MAX_IDENTIFIER)?;
    }
    if let Some(r) = &asked.approval_ref
        && !crate::approvals::valid_reference(r)
    {
        return Err(Refusal::invalid("approval must be an approval reference"));
    }
    ingress::labels(&asked.labels)
}

fn parse_decide_body(bytes: &[u8], estimates: TokenEstimates) -> Result<Asked, Refusal> {
    let map: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::invalid(format!("not a JSON object: {e}")))?;
    for (field, why) in SET_BY_POLICYBIND {
        if map.contains_key(*field) {
            return Err(Refusal::invalid(format!(
                "field {field} cannot be given: {why}"
            )));
        }
    }
    let body: DecideBody = serde_json::from_value(Value::Object(map))
        .map_err(|e| Refusal::invalid(format!("not a valid decision request: {e}")))?;
    let prompt = body.prompt.unwrap_or_default();
    let text_tokens = estimates.count(&body.model, &prompt);
    let asked = Asked {
        model: body.model,
        use_case: body.use_case,
        data_classification: body.data_classification,
        // A caller may raise the estimate, never lower it below the text's.
        estimated_input_tokens: body.estimated_input_tokens.unwrap_or(0).max(text_tokens),
        estimated_output_tokens: body.estimated_output_tokens.unwrap_or(0),
        prompt,
        labels: body.labels,
        approval_ref: body.approval,
    };
    check_asked(&asked)?;
    Ok(asked)
}

/// The decision API's [`Plan`]: nothing to rewrite, nothing reserved.
pub(crate) struct DecisionOnly;

impl Plan for DecisionOnly {
    type Ready = ();

    fn prepare(self, _: &Decision, _: &PolicySet) -> Result<((), Option<Estimate>), Refusal> {
        Ok(((), None))
    }
}

/// The set in force and the caller's token, or the refusal.
pub(crate) fn identify(
    state: &AppState,
    headers: &http::HeaderMap,
) -> Result<(Arc<Loaded>, String), Refusal> {
    let Some(loaded) = state.holder.current() else {
        state.rejections.count(codes::NO_POLICY_SET);
        return Err(Refusal::new(
            Stage::PolicySet,
            codes::NO_POLICY_SET,
            "no valid policy set is loaded; every request is refused",
        ));
    };
    match authenticate(&loaded.set, headers) {
        Ok(token) => Ok((loaded, token)),
        Err(e) => {
            state.rejections.count(e.code());
            Err(Refusal::new(Stage::Authentication, e.code(), e.to_string()))
        }
    }
}

/// Runs a decision-only call, reading the body first.
pub(crate) async fn decide_only(
    state: &Arc<AppState>,
    request: Request<Body>,
    request_id: &str,
    endpoint: &'static str,
    parse: impl FnOnce(&[u8]) -> Result<Asked, Refusal>,
) -> Result<(Verdict<()>, Arc<Loaded>, String), Refusal> {
    let (loaded, token) = identify(state, request.headers())?;
    let limit = state.settings.limits.max_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            let mut r = Refusal::invalid(format!("the body is larger than {limit} bytes"));
            r.status = StatusCode::PAYLOAD_TOO_LARGE;
            r
        });
    let asked = match bytes.and_then(|b| parse(&b)) {
        Ok(asked) => asked,
        Err(refusal) => {
            state.record_refusal(&loaded, &token, request_id, &refusal, None, endpoint);
            return Err(refusal);
        }
    };
    let call = Call {
        loaded: loaded.clone(),
        request_id,
        token: &token,
        asked,
        endpoint,
    };
    let verdict = state.run(call, DecisionOnly).await;
    Ok((verdict, loaded, token))
}

/// Handler of `POST /v1/decide`.
async fn decide(State(state): State<Arc<AppState>>, request: Request<Body>) -> Response<Body> {
    let request_id = state.next_request_id(request.headers());
    let span = info_span!("decide", request_id = %request_id, effect = tracing::field::Empty,
        code = tracing::field::Empty, stage = tracing::field::Empty, decided = tracing::field::Empty);
    async {
        let verdict = match decide_only(&state, request, &request_id, "decide", |bytes| {
            parse_decide_body(bytes, state.settings.token_estimates)
        })
        .await
        {
            Ok((verdict, _, _)) => verdict,
            Err(refusal) => return refusal.into_response(None, &request_id),
        };
        let refusal = verdict.outcome.err();
        if let Some(r) = refusal.as_ref().filter(|r| r.stage != Stage::Decision) {
            return r.clone().into_response(None, &request_id);
        }
        decision_response(
            &verdict.decision,
            refusal
                .as_ref()
                .and_then(|r| r.approval().map(str::to_string)),
            &request_id,
        )
    }
    .instrument(span)
    .await
}

/// `200` with the decision, for every decision including denials.
fn decision_response(
    decision: &Decision,
    approval: Option<String>,
    request_id: &str,
) -> Response<Body> {
    let mut body = serde_json::to_value(decision).expect("a decision always serializes");
    body["requestId"] = json!(request_id);
    if let Some(reference) = approval {
        body["approval"] = json!(reference);
    }
    let mut response = json_response(StatusCode::OK, &body);
    let headers = response.headers_mut();
    headers.insert(
        DECISION_HEADER,
        HeaderValue::from_static(decision.effect.as_str()),
    );
    set_header(headers, CODES_HEADER, &decision.codes.join(","));
    set_header(headers, REQUEST_ID_HEADER, request_id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_only_policybind_knows_are_refused_in_the_body_naming_the_field() {
        for field in [
            "subject",
            "team",
            "namespace",
            "time",
            "usage",
            "approved",
            "token",
        ] {
            let body = json!({"model": "m", field: "x"}).to_string();
            let refusal =
                parse_decide_body(body.as_bytes(), TokenEstimates::Heuristic).unwrap_err();
            assert_eq!(refusal.code, "REQUEST_INVALID");
            assert!(refusal.message.contains(field), "{}", refusal.message);
        }
        let unknown = parse_decide_body(
            br#"{"model":"m","colour":"red"}"#,
            TokenEstimates::Heuristic,
        )
        .unwrap_err();
        assert!(unknown.message.contains("colour"), "{}", unknown.message);
    }

    #[test]
    fn the_input_estimate_is_never_below_the_texts() {
        let asked = parse_decide_body(br#"{"model":"m","prompt":"twelve chars","estimatedInputTokens":1,"estimatedOutputTokens":5}"#, TokenEstimates::Heuristic)
        .unwrap();
        assert_eq!(asked.estimated_input_tokens, 3);
        assert_eq!(asked.estimated_output_tokens, 5);
        let raised = parse_decide_body(
            br#"{"model":"m","estimatedInputTokens":900}"#,
            TokenEstimates::Heuristic,
        )
        .unwrap();
        assert_eq!(raised.estimated_input_tokens, 900);
    }

    #[test]
    fn identifiers_are_checked() {
        let long = "m".repeat(300);
        let body = json!({"model": long}).to_string();
        assert!(parse_decide_body(body.as_bytes(), TokenEstimates::Heuristic).is_err());
        let control = json!({"model": "m", "labels": {"k": "a\u{7}b"}}).to_string();
        assert!(parse_decide_body(control.as_bytes(), TokenEstimates::Heuristic).is_err());
    }
}
