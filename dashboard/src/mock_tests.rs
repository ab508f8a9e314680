//! The server against a mocked API server (tower-test): authentication by
//! TokenReview, authorization by SubjectAccessReview, pages filtered by it.
//! The fake API answers by method and path and records every request, so the
//! tests assert exactly what the dashboard asked.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as AxumBody;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::server::{Options, State, router};

/// Requests the fake API saw: method, path with query, JSON body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// Users the fake API knows: token → user name; what each may list where.
struct FakeCluster {
    /// Namespaces where `alice` may list each kind (she may list nothing cluster-wide).
    alice_namespaces: Vec<&'static str>,
}

impl FakeCluster {
    fn answer(&self, method: &str, path: &str, body: &Value) -> Value {
        let list = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items});
        if path.starts_with("/apis/authentication.k8s.io/v1/tokenreviews") && method == "POST" {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let status = if token == "alice-token" {
                json!({"authenticated": true, "user": {"username": "alice", "groups": ["team-a"]}})
            } else {
                json!({"authenticated": false, "error": "invalid bearer token"})
            };
            let mut answer = body.clone();
            answer["status"] = status;
            return answer;
        }
        if path.starts_with("/apis/authorization.k8s.io/v1/subjectaccessreviews") {
            let namespace = body["spec"]["resourceAttributes"]["namespace"].as_str();
            let allowed = body["spec"]["user"] == "alice"
                && namespace.is_some_and(|n| self.alice_namespaces.contains(&n));
            let mut answer = body.clone();
            answer["status"] = json!({"allowed": allowed});
            return answer;
        }
        if path.starts_with("/apis/policybind.io/v1alpha1/incidents") {
            return list(vec![
                incident("team-a", "seen-by-alice"),
                incident("team-b", "hidden-from-alice"),
            ]);
        }
        if path.starts_with("/api/v1/namespaces/policybind/configmaps/policybind-audit-keys") {
            return json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"});
        }
        list(vec![])
    }
}

fn incident(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1", "kind": "Incident",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"pattern": "repeated-denials", "subject": "user:dana", "severity": "High",
                 "state": "Open", "summary": format!("summary of {name}")}
    })
}

/// A dashboard whose API server is the fake cluster.
fn dashboard(cluster: FakeCluster) -> (axum::Router, Seen) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let answer = cluster.answer(&method, &path, &body);
            recorded.lock().unwrap().push((method, path, body));
            let status = answer["code"].as_u64().unwrap_or(200) as u16;
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = Client::new(service, "default");
    let options = Options {
        system_namespace: "policybind".into(),
        refresh: Duration::from_secs(60),
        session_ttl: Duration::from_secs(600),
        max_sessions: 100,
        secure_cookie: false,
    };
    (router(State::new(client, options)), seen)
}

async fn send(
    app: &axum::Router,
    request: Request<AxumBody>,
) -> (StatusCode, http::HeaderMap, String) {
    let response = tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(request))
        .await
        .expect("the dashboard answers in time")
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(path: &str) -> http::request::Builder {
    Request::builder().uri(path).header("host", "dash.local")
}

fn login_request(token: &str, origin: &str) -> Request<AxumBody> {
    Request::builder()
        .method("POST")
        .uri("/login")
        .header("host", "dash.local")
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(AxumBody::from(format!("token={token}")))
        .unwrap()
}

fn alice_only_in_team_a() -> FakeCluster {
    FakeCluster {
        alice_namespaces: vec!["team-a"],
    }
}

#[tokio::test]
async fn without_a_session_every_page_sends_to_the_login_page() {
    let (app, seen) = dashboard(alice_only_in_team_a());
    for view in crate::views::View::ALL {
        let (status, headers, _) =
            send(&app, get(view.path()).body(AxumBody::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{}", view.path());
        assert_eq!(headers["location"], "/login");
    }
    let (status, headers, body) = send(&app, get("/login").body(AxumBody::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("name=\"token\""));
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "no API call without credentials"
    );
}

#[tokio::test]
async fn a_bad_token_is_refused_and_gets_no_session() {
    let (app, _) = dashboard(alice_only_in_team_a());
    let (status, headers, body) = send(
        &app,
        login_request("stolen-or-expired", "http://dash.local"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("set-cookie").is_none());
    assert!(body.contains("did not accept this token"));
    assert!(
        !body.contains("stolen-or-expired"),
        "the token is never echoed"
    );

    let bearer = get("/models")
        .header("authorization", "Bearer stolen-or-expired")
        .body(AxumBody::empty())
        .unwrap();
    let (status, _, _) = send(&app, bearer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_from_another_site_is_refused_before_the_token_is_checked() {
    let (app, seen) = dashboard(alice_only_in_team_a());
    let (status, headers, _) =
        send(&app, login_request("alice-token", "http://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("set-cookie").is_none());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_subject_access_review_denial_hides_the_namespace() {
    let (app, seen) = dashboard(alice_only_in_team_a());
    let (status, headers, _) = send(&app, login_request("alice-token", "http://dash.local")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains("alice-token"));
    let session = cookie.split(';').next().unwrap().to_string();

    let request = get("/incidents")
        .header("cookie", &session)
        .body(AxumBody::empty())
        .unwrap();
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("summary of seen-by-alice"), "{body}");
    assert!(!body.contains("hidden-from-alice"));
    assert!(
        body.contains("Showing namespaces team-a (where you may list incidents.policybind.io)")
    );

    let reviews: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, path, _)| path.contains("subjectaccessreviews"))
        .map(|(_, _, body)| body["spec"].clone())
        .collect();
    let attributes: Vec<(Option<&str>, &str, &str, &str)> = reviews
        .iter()
        .map(|spec| {
            let a = &spec["resourceAttributes"];
            (
                a["namespace"].as_str(),
                a["verb"].as_str().unwrap(),
                a["group"].as_str().unwrap(),
                a["resource"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        attributes[0],
        (None, "list", "policybind.io", "incidents"),
        "cluster-wide first"
    );
    let mut namespaces: Vec<_> = attributes[1..].iter().map(|a| a.0).collect();
    namespaces.sort();
    assert_eq!(namespaces, vec![Some("team-a"), Some("team-b")]);
    assert!(
        reviews
            .iter()
            .all(|spec| spec["user"] == "alice" && spec["groups"] == json!(["team-a"]))
    );

    // Logging out ends the session.
    let logout = Request::builder()
        .method("POST")
        .uri("/logout")
        .header("host", "dash.local")
        .header("origin", "http://dash.local")
        .header("cookie", &session)
        .body(AxumBody::empty())
        .unwrap();
    let (status, _, _) = send(&app, logout).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let again = get("/incidents")
        .header("cookie", &session)
        .body(AxumBody::empty())
        .unwrap();
    let (status, headers, _) = send(&app, again).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/login");
}
