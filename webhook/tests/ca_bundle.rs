//! `--self-signed`: the generated CA is written into every webhook of both
//! configurations, and `--register` applies the configurations themselves.
//! Against a mocked API server that checks the exact requests.

use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::client::Body;
use policybind_webhook::configs::{Endpoint, Registration};
use policybind_webhook::tls;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn registration() -> Registration {
    Registration::new(
        Endpoint::Service {
            namespace: "policybind-system".into(),
            name: "policybind-webhook".into(),
            port: 443,
        },
        "policybind-system",
    )
}

async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (Vec<u8>, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5 s")
        .expect("service not dropped");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().path(), path);
    let body = request.into_body().collect_bytes().await.unwrap().to_vec();
    (body, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, body: Vec<u8>) {
    send.send_response(Response::builder().body(Body::from(body)).unwrap());
}

#[tokio::test]
async fn self_signed_ca_is_patched_into_every_webhook_of_both_configurations() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let verifier = tokio::spawn(async move {
        let base = "/apis/admissionregistration.k8s.io/v1";
        let mut validating = registration().validating();
        validating.metadata.resource_version = Some("41".into());
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{base}/validatingwebhookconfigurations/policybind-webhook"),
        )
        .await;
        reply(send, serde_json::to_vec(&validating).unwrap());
        let (body, send) = expect(
            &mut handle,
            Method::PUT,
            &format!("{base}/validatingwebhookconfigurations/policybind-webhook"),
        )
        .await;
        let updated: ValidatingWebhookConfiguration = serde_json::from_slice(&body).unwrap();
        let hooks = updated.webhooks.clone().unwrap();
        assert_eq!(hooks.len(), 3);
        for hook in &hooks {
            assert_eq!(
                hook.client_config.ca_bundle.as_ref().unwrap().0,
                ca.as_bytes()
            );
        }
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("41"));
        reply(send, body);

        let mutating = registration().mutating();
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{base}/mutatingwebhookconfigurations/policybind-webhook"),
        )
        .await;
        reply(send, serde_json::to_vec(&mutating).unwrap());
        let (body, send) = expect(
            &mut handle,
            Method::PUT,
            &format!("{base}/mutatingwebhookconfigurations/policybind-webhook"),
        )
        .await;
        let updated: MutatingWebhookConfiguration = serde_json::from_slice(&body).unwrap();
        for hook in updated.webhooks.clone().unwrap() {
            assert_eq!(hook.client_config.ca_bundle.unwrap().0, ca.as_bytes());
        }
        reply(send, body);
    });
    tls::patch_ca_bundle(
        client,
        Some("policybind-webhook"),
        Some("policybind-webhook"),
        ca,
    )
    .await
    .unwrap();
    verifier.await.unwrap();
}

fn not_found(send: tower_test::mock::SendResponse<Response<Body>>) {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    send.send_response(
        Response::builder()
            .status(404)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
}

fn check_by_url(object: &serde_json::Value) {
    for hook in object["webhooks"].as_array().unwrap() {
        let url = hook["clientConfig"]["url"].as_str().unwrap();
        assert!(url.starts_with("https://172.18.0.1:8443/"), "{url}");
        assert_eq!(hook["clientConfig"]["caBundle"], "Q0EgUEVN");
        assert_eq!(hook["timeoutSeconds"], 3);
        assert_eq!(hook["sideEffects"], "NoneOnDryRun");
    }
}

/// `--register` reads each configuration, then creates the missing one and
/// replaces the existing one, keeping labels and annotations others set (Helm's
/// ownership): get and update by name are all the chart grants.
#[tokio::test]
async fn register_creates_a_missing_configuration_and_replaces_an_existing_one() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut registration = Registration::new(
        Endpoint::Url("https://172.18.0.1:8443".into()),
        "policybind-system",
    );
    registration.ca_bundle = Some("CA PEM".into());
    let verifier = tokio::spawn(async move {
        let base = "/apis/admissionregistration.k8s.io/v1";
        let validating = format!("{base}/validatingwebhookconfigurations");
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{validating}/policybind-webhook"),
        )
        .await;
        not_found(send);
        let (body, send) = expect(&mut handle, Method::POST, &validating).await;
        let object: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(object["metadata"]["name"], "policybind-webhook");
        check_by_url(&object);
        reply(send, body);

        let mutating = format!("{base}/mutatingwebhookconfigurations/policybind-webhook");
        let existing = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "policybind-webhook", "resourceVersion": "42",
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "policybind"}},
            "webhooks": []
        });
        let (_, send) = expect(&mut handle, Method::GET, &mutating).await;
        reply(send, serde_json::to_vec(&existing).unwrap());
        let (body, send) = expect(&mut handle, Method::PUT, &mutating).await;
        let object: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(object["metadata"]["resourceVersion"], "42");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/component"],
            "webhook"
        );
        assert_eq!(
            object["metadata"]["annotations"]["meta.helm.sh/release-name"],
            "policybind"
        );
        assert_eq!(object["webhooks"].as_array().unwrap().len(), 2);
        check_by_url(&object);
        reply(send, body);
    });
    policybind_webhook::server::register(client, &registration)
        .await
        .unwrap();
    verifier.await.unwrap();
}
