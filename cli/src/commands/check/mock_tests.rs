//! `check` against a mocked API server (tower-test): the requests it makes, and
//! the verdicts from what they return. Each route answers as the API server
//! would; anything else is a 404, so an unexpected read shows as a missing object.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use policybind_crds::wire;
use serde_json::{Value, json};

use super::*;

const HOME: &str = "policybind-system";

fn args() -> CheckArgs {
    CheckArgs {
        cluster: crate::commands::cluster::ClusterArgs {
            kubeconfig: None,
            context: None,
        },
        namespace: HOME.into(),
        lease_name: wire::names::OPERATOR_LEASE.into(),
        output: Output::Text,
        ascii: false,
        fail_on_warning: false,
        timeout: Duration::from_secs(2),
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": "1" }, "items": items })
}

fn established_crds() -> Vec<Value> {
    policybind_crds::crds()
        .into_iter()
        .map(|crd| {
            let mut value = serde_json::to_value(crd).unwrap();
            value["status"] =
                json!({ "conditions": [{ "type": "Established", "status": "True" }] });
            value
        })
        .collect()
}

fn lease() -> Value {
    let renewed = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": wire::names::OPERATOR_LEASE, "namespace": HOME },
        "spec": { "holderIdentity": "operator-0", "leaseDurationSeconds": 15, "renewTime": renewed }
    })
}

/// The healthy cluster's answer to `path` (with its query), or `None` for 404.
/// `forbidden` names a path prefix answered 403.
fn route(path: &str) -> Option<Value> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if let Some(name) =
        path.strip_prefix("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/")
    {
        return established_crds()
            .into_iter()
            .find(|c| c["metadata"]["name"] == name);
    }
    let empty = |kind: &str| Some(list(kind, vec![]));
    match path {
        "/apis/coordination.k8s.io/v1/namespaces/policybind-system/leases/policybind-operator" => {
            Some(lease())
        }
        "/api/v1/namespaces" => {
            assert!(
                query.contains("labelSelector=policybind.io%2Fenforce%3Dtrue"),
                "{query}"
            );
            Some(list(
                "PartialObjectMetadataList",
                vec![json!({ "metadata": { "name": "team-a" } })],
            ))
        }
        "/api/v1/pods" => empty("PartialObjectMetadataList"),
        "/api/v1/namespaces/policybind-system/configmaps"
        | "/api/v1/namespaces/team-a/configmaps" => empty("ConfigMapList"),
        "/apis/policybind.io/v1alpha1/aipolicies"
        | "/apis/policybind.io/v1alpha1/clusteraipolicies" => empty("List"),
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
        | "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations" => empty("List"),
        _ => None,
    }
}

fn not_found() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" })
}

/// Runs `check` against the mocked routes; `forbidden` paths answer 403.
async fn run_against(forbidden: &'static str) -> (anyhow::Result<Vec<CheckLine>>, Vec<String>) {
    let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = api.next_request().await {
            let path = request.uri().path_and_query().unwrap().to_string();
            assert_eq!(
                request.method(),
                http::Method::GET,
                "check only reads: {path}"
            );
            seen.push(path.clone());
            let (status, body) = match route(&path) {
                _ if !forbidden.is_empty() && path.starts_with(forbidden) => (
                    403,
                    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden" }),
                ),
                Some(body) => (200, body),
                None => (404, not_found()),
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        seen
    });
    let result = gather_and_decide(&client, &args()).await;
    drop(client);
    (result, server.await.unwrap())
}

#[tokio::test]
async fn a_missing_bundle_keyring_and_webhook_are_reported_and_only_reads_are_made() {
    let (result, seen) = run_against("").await;
    let lines = result.unwrap();
    let find = |check: &str| {
        lines
            .iter()
            .find(|l| l.check.starts_with(check))
            .unwrap_or_else(|| panic!("{check}: {lines:#?}"))
    };
    assert!(
        lines
            .iter()
            .filter(|l| l.group == "crds")
            .all(|l| l.verdict == report::Verdict::Pass)
    );
    assert_eq!(
        find("the operator holds the leader Lease").verdict,
        report::Verdict::Pass
    );
    let bundle = find("bundle of team-a");
    assert_eq!(bundle.verdict, report::Verdict::Fail);
    assert!(
        bundle
            .problem
            .as_deref()
            .unwrap()
            .contains("ConfigMap policybind-bundle.team-a is missing")
    );
    assert_eq!(
        find("keyring policybind-system/policybind-audit-keys").verdict,
        report::Verdict::Fail
    );
    assert_eq!(
        find("a ValidatingWebhookConfiguration registers").verdict,
        report::Verdict::Fail
    );
    assert!(
        seen.iter()
            .any(|p| p.starts_with("/api/v1/namespaces/team-a/configmaps?")
                && p.contains("policybind.io%2Fusage")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|p| p.contains("/secrets")),
        "check never reads Secrets: {seen:#?}"
    );
}

#[tokio::test]
async fn a_forbidden_read_stops_the_run_with_what_it_could_not_read() {
    let (result, _) = run_against("/apis/coordination.k8s.io").await;
    let error = format!("{:#}", result.unwrap_err());
    assert!(error.starts_with("reading the leader Lease"), "{error}");
}
