//! The HTTP contract: malformed reviews get a clear 400, oversized bodies a 413,
//! and every answer echoes the request uid.

mod common;

use common::{default_view, fixture, start, start_with};
use policybind_webhook::authz::StaticAuthorizer;
use policybind_webhook::config::AdmissionConfig;
use serde_json::json;

#[tokio::test]
async fn body_that_is_not_json_gets_400_with_a_message() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.post_bytes("/validate", b"{not json".to_vec()).await;
    assert_eq!(reply.status, 400);
    let error = reply.body["error"].as_str().unwrap();
    assert!(
        error.contains("body is not an admission.k8s.io/v1 AdmissionReview"),
        "{error}"
    );
    assert_eq!(harness.metrics.rejected_bodies.get(), 1);
}

#[tokio::test]
async fn review_without_request_gets_400() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let body = json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"});
    let reply = harness.mutate(&body).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"], "the AdmissionReview has no request");
}

#[tokio::test]
async fn v1beta1_review_gets_400_naming_the_supported_version() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let reply = harness.validate(&review).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .contains("admissionReviewVersions: [v1]")
    );
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let harness = start_with(
        default_view(),
        AdmissionConfig::default(),
        StaticAuthorizer::default(),
        64 * 1024,
    )
    .await;
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["metadata"]["annotations"]["padding"] = json!("x".repeat(100_000));
    let reply = harness.validate(&review).await;
    assert_eq!(reply.status, 413);
}

#[tokio::test]
async fn answer_is_an_admission_review_echoing_the_uid() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.validate(&fixture("deployment-create.json")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["kind"], "AdmissionReview");
    assert_eq!(reply.body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        reply.response()["uid"],
        "1d3f5a7c-9b2e-4d6f-8a1c-3e5b7d9f1a2c"
    );
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.post_bytes("/admit", b"{}".to_vec()).await;
    assert_eq!(reply.status, 404);
}
