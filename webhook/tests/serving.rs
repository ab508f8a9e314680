//! Serving: the certificate is reloaded from files when they change, and
//! readiness waits for a certificate and synced caches.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use policybind_webhook::metrics::Metrics;
use policybind_webhook::server::health_router;
use policybind_webhook::tls::{self, CertResolver};
use policybind_webhook::{Readiness, serve_tls};
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tower::ServiceExt;

fn client_trusting(cas: &[&str]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn served_certificate(
    connector: &tokio_rustls::TlsConnector,
    address: std::net::SocketAddr,
) -> Vec<u8> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, connection) = tls.get_ref();
    connection.peer_certificates().unwrap()[0].to_vec()
}

fn generate() -> tls::SelfSigned {
    tls::generate_self_signed(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap()
}

#[tokio::test]
async fn certificate_files_are_reloaded_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = generate();
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    std::fs::write(&key_path, &first.key_pem).unwrap();

    let resolver = CertResolver::new();
    let metrics = Metrics::new();
    tls::watch_files(
        cert_path.clone(),
        key_path.clone(),
        resolver.clone(),
        metrics.clone(),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    assert!(resolver.is_loaded());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_tls(
        listener,
        axum::Router::new(),
        tls::server_config(resolver).unwrap(),
        Duration::from_secs(5),
        16,
        futures::future::pending(),
    ));

    let second = generate();
    let connector = client_trusting(&[&first.ca_pem, &second.ca_pem]);
    let before = served_certificate(&connector, address).await;

    std::fs::write(&key_path, &second.key_pem).unwrap();
    std::fs::write(&cert_path, &second.cert_pem).unwrap();
    let mut after = before.clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = served_certificate(&connector, address).await;
        if after != before {
            break;
        }
    }
    assert_ne!(after, before, "the rotated certificate is served");
    let expected = CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap();
    assert_eq!(after, expected.to_vec());
    assert_eq!(metrics.certificate_reloads.get(), 2);
}

#[tokio::test]
async fn a_half_written_rotation_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = generate();
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    std::fs::write(&key_path, &first.key_pem).unwrap();
    let resolver = CertResolver::new();
    let metrics = Metrics::new();
    tls::watch_files(
        cert_path.clone(),
        key_path,
        resolver.clone(),
        metrics.clone(),
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(resolver.is_loaded());
    assert_eq!(metrics.certificate_reloads.get(), 1);
}

async fn get(app: axum::Router, path: &str) -> (u16, String) {
    let response = app
        .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readiness_waits_for_certificate_caches_and_listener_and_health_does_not() {
    let readiness = Arc::new(Readiness::default());
    let metrics = Metrics::new();
    let app = health_router(readiness.clone(), metrics);
    assert_eq!(get(app.clone(), "/healthz").await.0, 200);
    assert_eq!(
        get(app.clone(), "/readyz").await,
        (503, "no serving certificate yet".into())
    );
    readiness.certificate.store(true, Ordering::Release);
    assert_eq!(
        get(app.clone(), "/readyz").await,
        (503, "caches not synced yet".into())
    );
    readiness.caches.store(true, Ordering::Release);
    // Health comes up before the HTTPS listener: until it is bound, a ready
    // pod would have its admission calls refused.
    assert_eq!(
        get(app.clone(), "/readyz").await,
        (503, "admission listener not bound yet".into())
    );
    readiness.listening.store(true, Ordering::Release);
    assert_eq!(get(app.clone(), "/readyz").await.0, 200);
    let (status, metrics) = get(app, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("policybind_webhook_certificate_reloads_total 0"),
        "{metrics}"
    );
}

#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
    let (first, second) = (generate(), generate());
    let error = tls::certified_key(first.cert_pem.as_bytes(), second.key_pem.as_bytes())
        .expect_err("mismatched pair refused");
    assert!(error.to_string().contains("certificate and key"), "{error}");
    assert!(tls::certified_key(first.cert_pem.as_bytes(), first.key_pem.as_bytes()).is_ok());
}
