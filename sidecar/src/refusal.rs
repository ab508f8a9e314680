//! Answers that are not the upstream's: refusals and failures, in the error
//! shape of the API the caller used, so its SDK raises them as it would any
//! API error.
//!
//! OpenAI shape: `{"error": {"message", "type", "code", "param"}}`.
//! Anthropic shape: `{"type": "error", "error": {"type", "message", "code"}}`.
//! `code` is the rationale code (upper case) for refusals, a lower-case code
//! for failures that are not decisions (`upstream_unavailable`, ...).

use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use policybind_crds::Effect;
use policybind_engine::codes;
use serde_json::json;

use crate::providers::Api;

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

/// Which step of the request path refused a request. Each is its own outcome:
/// a budget refusal is not the engine's decision rewritten, it is a refusal
/// after an Allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The path is not served.
    Path,
    /// No policy set is in force.
    PolicySet,
    /// The caller's token is missing or unknown.
    Authentication,
    /// The request cannot be read (body, headers, identifiers).
    Request,
    /// The engine's decision (Deny, RequireApproval).
    Decision,
    /// The model cannot be reached from here (no endpoint, provider, key).
    Route,
    /// A rate limit of the token.
    Rate,
    /// A budget of the token.
    Budget,
    /// The audit trail could not record the decision.
    Audit,
    /// The output policy blocked the answer.
    Output,
    /// The enforcement point itself (overload) or the upstream failed.
    Failure,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Path => "path",
            Stage::PolicySet => "policy_set",
            Stage::Authentication => "authentication",
            Stage::Request => "request",
            Stage::Decision => "decision",
            Stage::Route => "route",
            Stage::Rate => "rate",
            Stage::Budget => "budget",
            Stage::Audit => "audit",
            Stage::Output => "output",
            Stage::Failure => "failure",
        }
    }
}

/// A request that is answered here, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub stage: Stage,
    pub status: StatusCode,
    pub error_type: &'static str,
    /// The deciding code.
    pub code: String,
    pub message: String,
    /// Effect for `x-policybind-decision`: Deny for refusals, RequireApproval
    /// for held requests, the decided effect for failures after a decision.
    pub effect: Effect,
    /// Every code, deciding one first.
    pub codes: Vec<String>,
    /// What the caller can do about it (boxed: most refusals have none).
    pub hint: Option<Box<Hint>>,
}

/// How a caller can get past a refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum Hint {
    /// Repeat the request with this approval reference once it is approved.
    Approval(String),
    /// Try again after this long (rate limits).
    RetryAfter(Duration),
}

/// HTTP status and OpenAI `error.type` for a refusal code.
pub fn status_for(code: &str) -> (StatusCode, &'static str) {
    match code {
        codes::TOKEN_MISSING
        | codes::TOKEN_UNKNOWN
        | codes::TOKEN_EXPIRED
        | codes::TOKEN_REVOKED
        | codes::TOKEN_NOT_YET_VALID => (StatusCode::UNAUTHORIZED, "authentication_error"),
        codes::RATE_LIMITED
        | codes::NAMESPACE_RATE_LIMITED
        | codes::TEAM_RATE_LIMITED
        | codes::APPLICATION_RATE_LIMITED
        | codes::GROUP_RATE_LIMITED => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        codes::BUDGET_EXCEEDED
        | codes::NAMESPACE_BUDGET_EXCEEDED
        | codes::TEAM_BUDGET_EXCEEDED
        | codes::APPLICATION_BUDGET_EXCEEDED
        | codes::GROUP_BUDGET_EXCEEDED => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        codes::REQUEST_INVALID => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        codes::PATH_NOT_ALLOWED => (StatusCode::NOT_FOUND, "invalid_request_error"),
        // Transient and fail closed: the replica cannot learn its share of a
        // budget right now (it says when to retry), not a lack of permission.
        codes::NO_POLICY_SET
        | codes::AUDIT_UNAVAILABLE
        | codes::ROUTE_UNAVAILABLE
        | codes::BUDGET_LEASE_UNAVAILABLE
        | codes::BUDGET_STORE_UNAVAILABLE => {
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        }
        codes::APPROVAL_REQUIRED => (StatusCode::FORBIDDEN, "approval_required"),
        _ => (StatusCode::FORBIDDEN, "permission_error"),
    }
}

impl Refusal {
    /// A refusal with one code.
    pub fn new(stage: Stage, code: &str, message: impl Into<String>) -> Refusal {
        let (status, error_type) = status_for(code);
        Refusal {
            stage,
            status,
            error_type,
            code: code.to_string(),
            message: message.into(),
            effect: Effect::Deny,
            codes: vec![code.to_string()],
            hint: None,
        }
    }

    /// `400 REQUEST_INVALID`.
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Stage::Request, codes::REQUEST_INVALID, message)
    }

    /// A failure of the enforcement point or upstream: not a decision, lower-case code.
    pub fn failure(
        status: StatusCode,
        error_type: &'static str,
        code: &str,
        message: &str,
    ) -> Self {
        Refusal {
            stage: Stage::Failure,
            status,
            error_type,
            code: code.to_string(),
            message: message.to_string(),
            effect: Effect::Deny,
            codes: vec![],
            hint: None,
        }
    }

    /// The reference of a held request, if this refusal has one.
    pub fn approval(&self) -> Option<&str> {
        match self.hint.as_deref() {
            Some(Hint::Approval(reference)) => Some(reference),
            _ => None,
        }
    }

    /// The answer, in `api`'s error shape.
    pub fn into_response(self, api: Option<Api>, request_id: &str) -> Response<Body> {
        let body = if api.is_some_and(Api::is_anthropic) {
            json!({"type": "error", "error": {
                "type": anthropic_type(self.status), "message": self.message, "code": self.code}})
        } else {
            let mut error = json!({
                "message": self.message, "type": self.error_type, "code": self.code, "param": null});
            if let Some(reference) = self.approval() {
                error["approval"] = json!({"reference": reference, "header": APPROVAL_HEADER});
            }
            json!({ "error": error })
        };
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if self.stage == Stage::Failure && self.codes.is_empty() {
            set_header(headers, REQUEST_ID_HEADER, request_id);
        } else {
            decision_headers(headers, self.effect, &self.codes, request_id);
        }
        match self.hint.as_deref() {
            Some(Hint::Approval(reference)) => set_header(headers, APPROVAL_HEADER, reference),
            Some(Hint::RetryAfter(after)) => {
                let seconds = after.as_secs_f64().ceil().max(1.0).to_string();
                set_header(headers, "retry-after", &seconds);
            }
            None => {}
        }
        response
    }
}

/// Anthropic's `error.type` for a status.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(
        serde_json::to_vec(body).expect("JSON always serializes"),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// `x-policybind-decision`, `x-policybind-codes`, `x-policybind-request-id`.
pub fn decision_headers(
    headers: &mut HeaderMap,
    effect: Effect,
    codes: &[String],
    request_id: &str,
) {
    headers.insert(
        HeaderName::from_static(DECISION_HEADER),
        HeaderValue::from_static(effect.as_str()),
    );
    set_header(headers, CODES_HEADER, &codes.join(","));
    set_header(headers, REQUEST_ID_HEADER, request_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refusals_of_every_scope_are_429_and_a_missing_lease_is_503() {
        for code in [
            codes::BUDGET_EXCEEDED,
            codes::NAMESPACE_BUDGET_EXCEEDED,
            codes::TEAM_BUDGET_EXCEEDED,
            codes::APPLICATION_BUDGET_EXCEEDED,
            codes::GROUP_BUDGET_EXCEEDED,
        ] {
            assert_eq!(
                status_for(code),
                (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
                "{code}"
            );
        }
        for code in [
            codes::RATE_LIMITED,
            codes::NAMESPACE_RATE_LIMITED,
            codes::TEAM_RATE_LIMITED,
            codes::APPLICATION_RATE_LIMITED,
            codes::GROUP_RATE_LIMITED,
        ] {
            assert_eq!(
                status_for(code),
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
                "{code}"
            );
        }
        // Transient: a client retries after `retry-after`, not a permission problem.
        assert_eq!(
            status_for(codes::BUDGET_LEASE_UNAVAILABLE),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        );
    }
}
