//! Test harness: the real router behind the real TLS server on 127.0.0.1 with a
//! generated certificate, and a client that trusts only the generated CA.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use policybind_crds::ModelDeployment;
use policybind_webhook::audit::{AuditSink, MemorySink};
use policybind_webhook::authz::{Authorizer, StaticAuthorizer};
use policybind_webhook::config::AdmissionConfig;
use policybind_webhook::metrics::Metrics;
use policybind_webhook::tls::{self, CertResolver};
use policybind_webhook::view::StaticView;
use policybind_webhook::{App, router, serve_tls};
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub struct Harness {
    pub address: SocketAddr,
    pub connector: TlsConnector,
    pub audit: Arc<MemorySink>,
    pub metrics: Arc<Metrics>,
}

/// A reply: HTTP status and the JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn response(&self) -> &Value {
        &self.body["response"]
    }
    pub fn allowed(&self) -> bool {
        self.response()["allowed"]
            .as_bool()
            .expect("allowed is a bool")
    }
    pub fn message(&self) -> String {
        self.response()["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn warnings(&self) -> Vec<String> {
        self.response()["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// The JSON patch, decoded from base64.
    pub fn patch(&self) -> Option<json_patch::Patch> {
        use base64::Engine;
        let encoded = self.response()["patch"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("patch is base64");
        Some(serde_json::from_slice(&bytes).expect("patch is a JSON patch"))
    }
}

pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A ModelDeployment as the operator leaves it (status written).
pub fn model(namespace: &str, name: &str, extra_spec: Value, status: Value) -> ModelDeployment {
    let mut spec = serde_json::json!({
        "provider": "self-hosted",
        "model": name,
        "owner": "ml-platform@example.com",
        "team": "ml-platform",
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": status,
    }))
    .expect("valid ModelDeployment")
}

/// A view with the usual cluster: team-a enforced, team-b not, and model `chat`
/// registered, low risk, usable.
pub fn default_view() -> StaticView {
    let view = StaticView::new();
    view.add_namespace("team-a", &[("policybind.io/enforce", "true")]);
    view.add_namespace("team-b", &[]);
    view.add_namespace("kube-system", &[]);
    view.add_model(model(
        "team-a",
        "chat",
        serde_json::json!({}),
        serde_json::json!({"approval": "NotRequired", "riskLevel": "Low", "riskScore": 10}),
    ));
    view
}

/// The rights of the usual cluster: carol may approve everywhere.
pub fn default_rights() -> StaticAuthorizer {
    StaticAuthorizer::default().grant("carol@example.com", "approve", "approvalrequests", None)
}

pub async fn start(view: StaticView, config: AdmissionConfig) -> Harness {
    start_with(view, config, default_rights(), 4 * 1024 * 1024).await
}

pub async fn start_with(
    view: StaticView,
    config: AdmissionConfig,
    rights: StaticAuthorizer,
    max_body: usize,
) -> Harness {
    start_with_authorizer(view, config, Arc::new(rights), max_body).await
}

pub async fn start_with_authorizer(
    view: StaticView,
    config: AdmissionConfig,
    authorizer: Arc<dyn Authorizer>,
    max_body: usize,
) -> Harness {
    let audit = Arc::new(MemorySink::new());
    let mut harness = start_full(view, config, authorizer, audit.clone(), max_body).await;
    harness.audit = audit;
    harness
}

/// A harness whose records go to `sink` (`Harness::audit` then stays empty).
pub async fn start_with_sink(
    view: StaticView,
    config: AdmissionConfig,
    sink: Arc<dyn AuditSink>,
) -> Harness {
    start_full(
        view,
        config,
        Arc::new(default_rights()),
        sink,
        4 * 1024 * 1024,
    )
    .await
}

async fn start_full(
    view: StaticView,
    config: AdmissionConfig,
    authorizer: Arc<dyn Authorizer>,
    sink: Arc<dyn AuditSink>,
    max_body: usize,
) -> Harness {
    let generated = tls::generate_self_signed(
        &["localhost".to_string()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )
    .expect("certificate");
    let resolver = CertResolver::new();
    resolver.set(
        tls::certified_key(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())
            .expect("key"),
    );
    let metrics = Metrics::new();
    let app = App::new(config, Arc::new(view), authorizer, sink, metrics.clone()).expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server_config = tls::server_config(resolver).expect("tls config");
    tokio::spawn(serve_tls(
        listener,
        router(app, max_body),
        server_config,
        Duration::from_secs(5),
        64,
        futures::future::pending(),
    ));
    Harness {
        address,
        connector: connector(&generated.ca_pem),
        audit: Arc::new(MemorySink::new()),
        metrics,
    }
}

pub fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

impl Harness {
    /// POSTs raw bytes over a fresh HTTPS connection.
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Reply {
        let tcp = TcpStream::connect(self.address).await.expect("connect");
        let tls = self
            .connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake with the generated CA");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("http handshake");
        tokio::spawn(connection);
        let request = http::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    pub async fn validate(&self, review: &Value) -> Reply {
        self.post_bytes("/validate", serde_json::to_vec(review).expect("json"))
            .await
    }

    pub async fn mutate(&self, review: &Value) -> Reply {
        self.post_bytes("/mutate", serde_json::to_vec(review).expect("json"))
            .await
    }

    /// What the API server does with a pod: call the mutating webhook, apply its
    /// patch, then call the validating webhook with the result.
    pub async fn admit(&self, review: &Value) -> Reply {
        let mutated = self.mutate(review).await;
        if !mutated.allowed() {
            return mutated;
        }
        let mut review = review.clone();
        if let Some(patch) = mutated.patch() {
            json_patch::patch(&mut review["request"]["object"], &patch).expect("patch applies");
        }
        self.validate(&review).await
    }

    /// Records written by the validating webhook.
    pub fn validation_records(&self) -> Vec<policybind_engine::audit::AuditEvent> {
        self.audit
            .records()
            .into_iter()
            .filter(|r| r.detail.get("webhook").map(String::as_str) == Some("validate"))
            .collect()
    }
}
