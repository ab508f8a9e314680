//! Load test: AdmissionReviews sent directly to the webhook over HTTPS at a fixed
//! rate, latency measured from each request's scheduled send time (so a slow
//! answer delays the ones behind it and shows up, no coordinated omission).
//!
//! The server is the real one (router, TLS, audit writer with a directory store
//! and a signing key) on 127.0.0.1; the mix is what a busy cluster sends: pod
//! validation and injection, workload validation, denials, policy compiles.
//!
//! ```text
//! cargo bench -p policybind-webhook --bench load
//! LOAD_RATE=1000 LOAD_SECONDS=20 LOAD_CONNECTIONS=8 cargo bench -p policybind-webhook --bench load
//! ```
//!
//! With `LOAD_TARGET=127.0.0.1:8443` and `LOAD_CA=<CA PEM file>` the same load goes
//! to a running `policybind webhook` process instead (its certificate must name
//! `localhost`); the cluster must hold what the mix refers to (namespace `team-a`
//! labelled `policybind.io/enforce=true`, ModelDeployment `team-a/chat`). With
//! `LOAD_METRICS=http://127.0.0.1:8081/metrics` the webhook's own count of audit
//! records written and failed is read before and after. docs/audit.md
//! "Performance" has the whole procedure.
//! A measurement, not a test: it prints figures and asserts nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use policybind_webhook::audit::{AuditSink, WriterSink};
use policybind_webhook::authz::StaticAuthorizer;
use policybind_webhook::config::AdmissionConfig;
use policybind_webhook::metrics::Metrics;
use policybind_webhook::tls::{self, CertResolver};
use policybind_webhook::view::StaticView;
use policybind_webhook::{App, router, serve_tls};
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

/// The review the validating webhook gets after injection: the pod with the
/// sidecar, which validation compares against what it would inject.
fn injected(review: &Value) -> Value {
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(review["request"]["object"].clone()).expect("pod");
    let labels = std::collections::BTreeMap::from([(
        "policybind.io/enforce".to_string(),
        "true".to_string(),
    )]);
    let outcome = policybind_webhook::inject::inject(
        &pod,
        "team-a",
        Some(&labels),
        &AdmissionConfig::default(),
    )
    .expect("inject");
    let policybind_webhook::inject::Outcome::Injected { pod, .. } = outcome else {
        panic!("the fixture pod is injected");
    };
    let mut out = review.clone();
    out["request"]["object"] = serde_json::to_value(pod).expect("json");
    out
}

/// (path, body, label) in the proportions of the mix.
fn mix() -> Vec<(&'static str, Bytes, &'static str)> {
    let pod = fixture("pod-create.json");
    let injected_pod = injected(&pod);
    let mut denied = pod.clone();
    denied["request"]["object"]["metadata"]["annotations"]["policybind.io/model"] =
        json!("unregistered");
    let deployment = fixture("deployment-create.json");
    let policy = fixture("aipolicy-create.json");
    let body = |v: &Value| Bytes::from(serde_json::to_vec(v).expect("json"));
    let mut out = vec![];
    for _ in 0..4 {
        out.push(("/validate", body(&injected_pod), "validate injected pod"));
        out.push(("/mutate", body(&pod), "mutate pod (inject)"));
    }
    out.push(("/validate", body(&deployment), "validate deployment"));
    out.push(("/validate", body(&denied), "validate pod (deny)"));
    out.push(("/validate", body(&policy), "validate AIPolicy"));
    out
}

fn view() -> StaticView {
    let view = StaticView::new();
    view.add_namespace("team-a", &[("policybind.io/enforce", "true")]);
    let model: policybind_crds::ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "policybind.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "team-a"},
        "spec": {"provider": "self-hosted", "model": "llama-3.1-8b", "owner": "ml@example.com", "team": "ml"},
        "status": {"approval": "NotRequired", "riskLevel": "Low"}
    }))
    .expect("model");
    view.add_model(model);
    view
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("ca");
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let rate: u64 = env_or("LOAD_RATE", 1000);
    let seconds: u64 = env_or("LOAD_SECONDS", 20);
    let connections: u64 = env_or("LOAD_CONNECTIONS", 8);
    let threads: usize = env_or("LOAD_THREADS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rate, seconds, connections));
}

/// The in-process server: the production router, TLS and audit writer.
struct InProcess {
    writer: policybind_audit::AuditWriter,
    sink: Arc<WriterSink>,
}

/// Where the load goes: the address, the CA that signed its certificate, and
/// the in-process server when there is one.
async fn target() -> (std::net::SocketAddr, String, Option<InProcess>) {
    if let Ok(address) = std::env::var("LOAD_TARGET") {
        let address = address.parse().expect("LOAD_TARGET is HOST:PORT");
        let ca_file = std::env::var("LOAD_CA").expect("LOAD_CA names the CA PEM file");
        let ca_pem = std::fs::read_to_string(ca_file).expect("LOAD_CA is readable");
        return (address, ca_pem, None);
    }
    start_in_process().await
}

async fn start_in_process() -> (std::net::SocketAddr, String, Option<InProcess>) {
    let generated =
        tls::generate_self_signed(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .expect("certificate");
    let resolver = CertResolver::new();
    resolver.set(
        tls::certified_key(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())
            .expect("key"),
    );

    // The production audit path: chained, signed segments written by the writer task.
    let audit_dir = tempfile::tempdir().expect("tempdir");
    let key = policybind_engine::audit::AuditSigningKey::from_seed(&[7; 32]);
    let store = Arc::new(policybind_audit::DirectoryStore::open(audit_dir.path()).expect("store"));
    let writer = policybind_audit::AuditWriter::start(
        policybind_audit::AuditConfig::new("webhook/load-test", key),
        store,
    )
    .await
    .expect("audit writer");
    let sink = Arc::new(WriterSink::new(writer.clone()));
    let audit: Arc<dyn AuditSink> = sink.clone();

    let app = App::new(
        AdmissionConfig::default(),
        Arc::new(view()),
        Arc::new(StaticAuthorizer::default()),
        audit,
        Metrics::new(),
    )
    .expect("app");
    // Phase 1: the router alone, in-process and sequential (no TLS, no network, no
    // scheduling between threads): the CPU cost of one review.
    {
        use tower::ServiceExt;
        let app = router(app.clone(), 4 << 20);
        let mix = mix();
        let mut per_shape: Vec<Vec<Duration>> = vec![vec![]; mix.len()];
        for round in 0..2000 {
            for (i, (path, body, _)) in mix.iter().enumerate() {
                let request = http::Request::post(*path)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.clone()))
                    .expect("request");
                let started = Instant::now();
                let response = app.clone().oneshot(request).await.expect("response");
                let _ = response.into_body().collect().await.expect("body");
                if round >= 200 {
                    per_shape[i].push(started.elapsed());
                }
            }
        }
        println!("in-process router, sequential, 1,800 rounds of the mix:");
        let mut seen = std::collections::BTreeSet::new();
        for (i, (_, _, label)) in mix.iter().enumerate() {
            if !seen.insert(*label) {
                continue;
            }
            let mut samples: Vec<Duration> = mix
                .iter()
                .enumerate()
                .filter(|(_, (_, _, l))| l == label)
                .flat_map(|(j, _)| per_shape[j].clone())
                .collect();
            samples.sort();
            let _ = i;
            println!(
                "  {label:<24} p50={:>8.1?}  p99={:>8.1?}",
                percentile(&samples, 50.0),
                percentile(&samples, 99.0)
            );
        }
    }

    // The server for phase 2 (load over HTTPS at a fixed rate).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(serve_tls(
        listener,
        router(app, 4 << 20),
        tls::server_config(resolver).expect("tls"),
        Duration::from_secs(5),
        1024,
        futures::future::pending(),
    ));

    (address, generated.ca_pem, Some(InProcess { writer, sink }))
}

/// The webhook's audit record counters (written, failed) from its metrics.
async fn audit_counts(url: Option<&str>) -> Option<(f64, f64)> {
    let text = http_get_text(url?).await?;
    let sum = |result: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("policybind_webhook_audit_records_total{"))
            .filter(|l| l.contains(&format!("result=\"{result}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((sum("written"), sum("failed")))
}

/// GET over plain HTTP (the webhook's health port), body as text.
async fn http_get_text(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let authority = uri.authority()?.to_string();
    let tcp = TcpStream::connect(&authority).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = http::Request::get(uri.path())
        .header("host", authority)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

async fn run(rate: u64, seconds: u64, connections: u64) {
    let (address, ca_pem, in_process) = target().await;
    let metrics_url = std::env::var("LOAD_METRICS").ok();
    let counts_before = audit_counts(metrics_url.as_deref()).await;
    let connector = connector(&ca_pem);
    let mix = Arc::new(mix());
    let per_connection = Duration::from_nanos(1_000_000_000 * connections / rate);
    let total_per_connection = rate * seconds / connections;
    let warmup = 200 / connections.max(1);
    println!(
        "load: {rate} reviews/s for {seconds} s over {connections} HTTPS keep-alive connections \
         (one request every {per_connection:?} each), mix of {} review shapes",
        mix.len()
    );

    let started = Instant::now();
    let mut tasks = vec![];
    for c in 0..connections {
        let connector = connector.clone();
        let mix = mix.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(address).await.expect("connect");
            tcp.set_nodelay(true).expect("nodelay");
            let tls = connector
                .connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await
                .expect("tls");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            // Stagger connections across the interval so the rate is even.
            tokio::time::sleep(per_connection * c as u32 / connections as u32).await;
            let mut ticker = tokio::time::interval(per_connection);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut samples: Vec<(usize, Duration, Duration)> =
                Vec::with_capacity(total_per_connection as usize);
            let mut errors = 0u64;
            for i in 0..(total_per_connection + warmup) {
                let scheduled = ticker.tick().await;
                let (path, body, _) = &mix[(i as usize + c as usize) % mix.len()];
                let request = http::Request::post(*path)
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .expect("request");
                let sent = Instant::now();
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.into_body().collect().await;
                        status.is_success() && body.is_ok()
                    }
                    Err(_) => false,
                };
                let latency = scheduled.elapsed();
                let service = sent.elapsed();
                if !ok {
                    errors += 1;
                }
                if i >= warmup {
                    samples.push(((i as usize + c as usize) % mix.len(), latency, service));
                }
            }
            (samples, errors)
        }));
    }
    let mut all = vec![];
    let mut errors = 0;
    for task in tasks {
        let (samples, e) = task.await.expect("worker");
        all.extend(samples);
        errors += e;
    }
    let elapsed = started.elapsed();
    let report = |label: &str, latencies: &mut Vec<Duration>| {
        latencies.sort();
        println!(
            "{label:<24} n={:>6}  p50={:>9.1?}  p90={:>9.1?}  p99={:>9.1?}  p99.9={:>9.1?}  max={:>9.1?}",
            latencies.len(),
            percentile(latencies, 50.0),
            percentile(latencies, 90.0),
            percentile(latencies, 99.0),
            percentile(latencies, 99.9),
            latencies.last().copied().unwrap_or_default(),
        );
    };
    let mut overall: Vec<Duration> = all.iter().map(|(_, d, _)| *d).collect();
    let mut overall_sent: Vec<Duration> = all.iter().map(|(_, _, d)| *d).collect();
    println!(
        "sent {} reviews in {elapsed:.1?} ({:.0}/s achieved), {errors} errors",
        overall.len(),
        overall.len() as f64 / elapsed.as_secs_f64(),
    );
    if let Some(server) = &in_process {
        println!("{} audit records refused", server.sink.failures());
    }
    // The webhook's writer flushes about once a second: let it catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let (Some((w0, f0)), Some((w1, f1))) =
        (counts_before, audit_counts(metrics_url.as_deref()).await)
    {
        println!(
            "webhook metrics: {} audit records written, {} failed during the run",
            w1 - w0,
            f1 - f0
        );
    }
    println!(
        "latency from each review's scheduled time (includes tokio timer granularity of ~1 ms and any queueing):"
    );
    report("all", &mut overall);
    let mut labels: Vec<&str> = mix.iter().map(|(_, _, l)| *l).collect();
    labels.sort();
    labels.dedup();
    for label in labels {
        let mut subset: Vec<Duration> = all
            .iter()
            .filter(|(i, _, _)| mix[*i].2 == label)
            .map(|(_, d, _)| *d)
            .collect();
        report(label, &mut subset);
    }
    println!(
        "latency from the moment each review was written to the connection (what the API server sees):"
    );
    report("all", &mut overall_sent);
    for label in labels_again(&mix) {
        let mut subset: Vec<Duration> = all
            .iter()
            .filter(|(i, _, _)| mix[*i].2 == label)
            .map(|(_, _, d)| *d)
            .collect();
        report(label, &mut subset);
    }
    if let Some(server) = in_process {
        let report = server.writer.shutdown().await.expect("audit shutdown");
        println!(
            "audit: {} records chained, {} persisted",
            report.last_seq, report.persisted_seq
        );
    }
}

fn labels_again(mix: &[(&'static str, Bytes, &'static str)]) -> Vec<&'static str> {
    let mut labels: Vec<&str> = mix.iter().map(|(_, _, l)| *l).collect();
    labels.sort();
    labels.dedup();
    labels
}
