//! The rights checks as they reach the API server: the real
//! `SubjectAccessReviewer` (kube client) against an HTTP test double of the
//! API server's `subjectaccessreviews` endpoint, behind the real webhook over
//! HTTPS. Asserts the exact reviews sent (the user as authenticated, with groups,
//! uid and extra) and what the webhook does with each answer, including none.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use common::{Reply, default_view, fixture, start_with_authorizer};
use policybind_webhook::authz::SubjectAccessReviewer;
use policybind_webhook::config::AdmissionConfig;
use serde_json::{Value, json};

/// How the double answers.
#[derive(Clone, Copy)]
enum Mode {
    /// `allowed` when the user is alice.
    AliceOnly,
    /// HTTP 500.
    Broken,
}

#[derive(Clone)]
struct Double {
    mode: Mode,
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn subject_access_review(
    State(double): State<Double>,
    Json(review): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    double.seen.lock().unwrap().push(review.clone());
    match double.mode {
        Mode::Broken => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "etcd is away",
        )
            .into_response(),
        Mode::AliceOnly => {
            let allowed = review["spec"]["user"] == "alice@example.com";
            let mut answer = review;
            answer["status"] = json!({"allowed": allowed});
            Json(answer).into_response()
        }
    }
}

async fn api_server_double(mode: Mode) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(vec![]));
    let app = axum::Router::new()
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(subject_access_review),
        )
        .with_state(Double {
            mode,
            seen: seen.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

async fn harness(mode: Mode) -> (common::Harness, Arc<Mutex<Vec<Value>>>) {
    let (address, seen) = api_server_double(mode).await;
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let harness = start_with_authorizer(
        default_view(),
        AdmissionConfig::default(),
        Arc::new(SubjectAccessReviewer::new(client)),
        1 << 22,
    )
    .await;
    (harness, seen)
}

fn opted_out_pod_by(user: &str) -> Value {
    let mut review = fixture("pod-create.json");
    review["request"]["userInfo"] = json!({
        "username": user, "uid": "uid-42",
        "groups": ["team-a-devs", "system:authenticated"],
        "extra": {"authentication.kubernetes.io/credential-id": ["JTI=abc"]}
    });
    let metadata = &mut review["request"]["object"]["metadata"];
    metadata.as_object_mut().unwrap().remove("ownerReferences");
    metadata["annotations"]["policybind.io/inject"] = json!("false");
    review
}

fn code(reply: &Reply) -> String {
    reply.response()["status"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn the_exemption_check_sends_the_authenticated_user_and_the_model_to_the_api_server() {
    let (harness, seen) = harness(Mode::AliceOnly).await;
    let allowed = harness.admit(&opted_out_pod_by("alice@example.com")).await;
    assert!(allowed.allowed(), "{}", allowed.message());
    let denied = harness.admit(&opted_out_pod_by("bob@example.com")).await;
    assert_eq!(code(&denied), "EXEMPTION_NOT_PERMITTED");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one review per decision: {seen:?}");
    assert_eq!(seen[0]["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(seen[0]["kind"], "SubjectAccessReview");
    assert_eq!(
        seen[0]["spec"],
        json!({
            "user": "alice@example.com",
            "uid": "uid-42",
            "groups": ["team-a-devs", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": ["JTI=abc"]},
            "resourceAttributes": {
                "group": "policybind.io",
                "resource": "modeldeployments",
                "verb": "exempt",
                "namespace": "team-a",
                "name": "chat"
            }
        })
    );
    assert_eq!(seen[1]["spec"]["user"], "bob@example.com");
}

#[tokio::test]
async fn token_namespaces_are_checked_one_review_each() {
    let (harness, seen) = harness(Mode::AliceOnly).await;
    let mut review = fixture("accesstoken-create.json");
    review["request"]["userInfo"] =
        json!({"username": "alice@example.com", "groups": ["system:authenticated"]});
    review["request"]["object"]["spec"]["additionalNamespaces"] =
        json!(["team-b", "team-c", "team-a"]);
    assert!(harness.validate(&review).await.allowed());
    let seen = seen.lock().unwrap().clone();
    let mut asked: Vec<(String, String)> = seen
        .iter()
        .map(|r| {
            let a = &r["spec"]["resourceAttributes"];
            (
                a["verb"].as_str().unwrap().into(),
                a["namespace"].as_str().unwrap().into(),
            )
        })
        .collect();
    asked.sort();
    // Its own namespace needs no review.
    assert_eq!(
        asked,
        [
            ("create".to_string(), "team-b".to_string()),
            ("create".into(), "team-c".into())
        ]
    );
    assert!(
        seen.iter()
            .all(|r| r["spec"]["resourceAttributes"]["resource"] == "accesstokens")
    );
}

#[tokio::test]
async fn sharing_is_asked_cluster_wide() {
    let (harness, seen) = harness(Mode::AliceOnly).await;
    let review = json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "0b7c6a55-8a42-4f0a-9d41-7d7b1e0c2a10",
            "kind": {"group": "policybind.io", "version": "v1alpha1", "kind": "ModelDeployment"},
            "resource": {"group": "policybind.io", "version": "v1alpha1", "resource": "modeldeployments"},
            "name": "gpt", "namespace": "platform", "operation": "CREATE",
            "userInfo": {"username": "bob@example.com"},
            "object": {"apiVersion": "policybind.io/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "gpt", "namespace": "platform"},
                "spec": {"provider": "openai", "model": "gpt-4o", "owner": "o", "team": "t", "scope": "Cluster"}},
            "dryRun": false
        }
    });
    let reply = harness.validate(&review).await;
    assert_eq!(code(&reply), "SHARE_NOT_PERMITTED");
    let attributes = seen.lock().unwrap()[0]["spec"]["resourceAttributes"].clone();
    assert_eq!(
        attributes,
        json!({"group": "policybind.io", "resource": "modeldeployments", "verb": "share", "name": "gpt"})
    );
}

#[tokio::test]
async fn when_the_api_server_cannot_answer_the_opt_out_is_denied_with_try_again() {
    let (harness, _) = harness(Mode::Broken).await;
    let reply = harness.admit(&opted_out_pod_by("alice@example.com")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "AUTHORIZATION_UNAVAILABLE");
    assert!(reply.message().contains("try again"), "{}", reply.message());
}
