//! In-cluster approvals against a mocked API server that checks the exact calls
//! (kube-rs' `ApiServerVerifier` pattern): a held request becomes one
//! ApprovalRequest object, and a reference is looked up with one GET.

use std::time::Duration;

use chrono::Utc;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use policybind_sidecar::approvals::{ApprovalStatus, Approvals, HeldRequest};
use serde_json::{Value, json};

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mocked() -> (kube::Client, ApiServerHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

async fn expect(
    handle: &mut ApiServerHandle,
    method: Method,
    path: &str,
    respond_with: impl FnOnce(Value) -> (StatusCode, Value),
) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("timed out waiting for an API request")
        .expect("service dropped");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().path(), path);
    let body = request.into_body().collect_bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, reply) = respond_with(sent);
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
}

const PATH: &str = "/apis/policybind.io/v1alpha1/namespaces/team-a/approvalrequests";

#[tokio::test]
async fn a_held_request_becomes_one_approval_request_and_is_approved_through_its_decision() {
    let (client, mut handle) = mocked();
    let approvals = Approvals::Cluster {
        api: Box::new(kube::Api::namespaced(client, "team-a")),
        requester: "policybind:sidecar/team-a/pod-1".into(),
    };
    let held = HeldRequest {
        request_id: "req-1".into(),
        reference_id: "abc123".into(),
        token: "team-a/alice".into(),
        subject: Some("alice".into()),
        model: "gpt-4o".into(),
        policy_rule: Some("team-a/p/r".into()),
        reason: "needs approval".into(),
        namespace: "team-a".into(),
    };
    let now = Utc::now();
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::POST, PATH, |sent| {
            assert_eq!(sent["metadata"]["name"], "apr-abc123");
            assert_eq!(sent["spec"]["target"]["kind"], "Request");
            assert_eq!(sent["spec"]["target"]["token"], "team-a/alice");
            assert_eq!(sent["spec"]["target"]["model"], "gpt-4o");
            assert_eq!(sent["spec"]["requester"], "policybind:sidecar/team-a/pod-1");
            assert!(sent["spec"].get("decision").is_none());
            (StatusCode::CREATED, sent)
        })
        .await;
        let approved = json!({
            "apiVersion": "policybind.io/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": "apr-abc123", "namespace": "team-a"},
            "spec": {
                "target": {"kind": "Request", "token": "team-a/alice", "model": "gpt-4o"},
                "requester": "policybind:sidecar/team-a/pod-1",
                "decision": {"state": "Approved", "approver": "carol"}
            }
        });
        expect(
            &mut handle,
            Method::GET,
            &format!("{PATH}/apr-abc123"),
            |_| (StatusCode::OK, approved.clone()),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            &format!("{PATH}/apr-abc123"),
            |_| (StatusCode::OK, approved),
        )
        .await;
        expect(&mut handle, Method::GET, &format!("{PATH}/apr-gone"), |_| {
            (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            )
        })
        .await;
    });
    let reference = approvals.hold(&held, now).await.unwrap();
    assert_eq!(reference, "apr-abc123");
    assert_eq!(
        approvals
            .status(&reference, "team-a/alice", "gpt-4o", now)
            .await
            .unwrap(),
        ApprovalStatus::Approved
    );
    assert_eq!(
        approvals
            .status(&reference, "team-a/mallory", "gpt-4o", now)
            .await
            .unwrap(),
        ApprovalStatus::NotFound,
        "an approval is for its own token only"
    );
    assert_eq!(
        approvals
            .status("apr-gone", "team-a/alice", "gpt-4o", now)
            .await
            .unwrap(),
        ApprovalStatus::NotFound
    );
    server.await.unwrap();
}
