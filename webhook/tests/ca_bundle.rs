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

#[tokio::test]
async fn register_applies_both_configurations_by_url_with_the_ca() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut registration = Registration::new(
        Endpoint::Url("https://172.18.0.1:8443".into()),
        "policybind-system",
    );
    registration.ca_bundle = Some("CA PEM".into());
    let verifier = tokio::spawn(async move {
        let base = "/apis/admissionregistration.k8s.io/v1";
        for kind in [
            "validatingwebhookconfigurations",
            "mutatingwebhookconfigurations",
        ] {
            let (request, send) = handle.next_request().await.expect("request");
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(
                request.uri().path(),
                format!("{base}/{kind}/policybind-webhook")
            );
            let query = request.uri().query().unwrap_or("");
            assert!(query.contains("fieldManager=policybind-webhook"), "{query}");
            assert!(query.contains("force=true"), "{query}");
            let body = request.into_body().collect_bytes().await.unwrap().to_vec();
            let object: serde_json::Value = serde_json::from_slice(&body).unwrap();
            for hook in object["webhooks"].as_array().unwrap() {
                let url = hook["clientConfig"]["url"].as_str().unwrap();
                assert!(url.starts_with("https://172.18.0.1:8443/"), "{url}");
                assert_eq!(hook["clientConfig"]["caBundle"], "Q0EgUEVN");
                assert_eq!(hook["timeoutSeconds"], 3);
            }
            send.send_response(Response::builder().body(Body::from(body)).unwrap());
        }
    });
    policybind_webhook::server::register(client, &registration)
        .await
        .unwrap();
    verifier.await.unwrap();
}
