//! Test harness: a real fake-upstream process on loopback, the sidecar started
//! in-process on ephemeral ports, and a small HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use policybind_sidecar::config::{ApprovalSettings, Settings, SourceSettings};
use policybind_sidecar::{AuditSink, Dependencies, MemoryAudit, Running};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ALICE: &str = "test-alice-value";
pub const BOB: &str = "test-bob-value";
pub const EXPIRED: &str = "test-expired-value";
pub const REVOKED: &str = "test-revoked-value";
pub const TINY_BUDGET: &str = "test-tiny-budget-value";
pub const LIMITED: &str = "test-limited-value";

/// The fake model server, as a separate process.
pub struct Upstream {
    pub url: String,
    child: Child,
    /// With TLS: the directory holding `ca.pem`, the CA that signed its certificate.
    pub tls: Option<tempfile::TempDir>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::spawn(None).await
    }

    /// An HTTPS upstream whose certificate is signed by a CA of its own.
    pub async fn start_tls() -> Upstream {
        Self::spawn(Some(tempfile::tempdir().expect("temp dir"))).await
    }

    /// The CA file of a TLS upstream.
    pub fn ca_file(&self) -> PathBuf {
        self.tls
            .as_ref()
            .expect("a TLS upstream")
            .path()
            .join("ca.pem")
    }

    async fn spawn(tls: Option<tempfile::TempDir>) -> Upstream {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fake-upstream"));
        command.args(["--listen", "127.0.0.1:0"]);
        if let Some(dir) = &tls {
            command.arg("--tls-dir").arg(dir.path());
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("fake-upstream starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("fake-upstream prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line");
        let scheme = if tls.is_some() { "https" } else { "http" };
        Upstream {
            url: format!("{scheme}://{addr}"),
            child,
            tls,
        }
    }

    /// The same server reached by plain HTTP control calls (TLS upstreams are
    /// controlled through the sidecar-free client below).
    fn control_url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// What the upstream received, oldest first.
    pub async fn received(&self) -> Vec<Value> {
        let (_, _, body) = self.control(Method::GET, "/__received", None).await;
        body.as_array().cloned().unwrap_or_default()
    }

    pub async fn behave(&self, behaviour: Value) {
        self.control(Method::POST, "/__behaviour", Some(behaviour))
            .await;
    }

    pub async fn forget(&self) {
        self.control(Method::DELETE, "/__received", None).await;
    }

    async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let url = self.control_url(path);
        match &self.tls {
            None => send(method, &url, None, &[], body).await,
            Some(_) => {
                let client = tls_client(&self.ca_file());
                let response = client
                    .request(request(method, &url, None, &[], body))
                    .await
                    .expect("control request sent");
                read(response).await
            }
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Manifests every test starts from: two models, tokens for every case, one policy.
pub fn base_manifests() -> String {
    let token = |name: &str, value: &str, extra: &str| {
        format!(
            r#"---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {{name: {name}, namespace: default}}
spec:
  subject: {{kind: User, name: {name}}}
  team: support
  allowedModels: [gpt-4o-mini, gpt-4o]
  maxDataClassification: Confidential
{extra}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-token, namespace: default}}
stringData: {{token: {value}}}
"#
        )
    };
    let mut out = String::from(
        r#"apiVersion: policybind.io/v1alpha1
kind: ModelDeployment
metadata: {name: gpt-4o-mini, namespace: default}
spec:
  provider: self-hosted
  model: gpt-4o-mini
  owner: platform
  team: platform
  maxDataClassification: Confidential
  pricing: {inputPer1kTokensUsd: 0.001, outputPer1kTokensUsd: 0.002}
---
apiVersion: policybind.io/v1alpha1
kind: ModelDeployment
metadata: {name: gpt-4o, namespace: default}
spec:
  provider: self-hosted
  model: gpt-4o
  owner: platform
  team: platform
  maxDataClassification: Confidential
  pricing: {inputPer1kTokensUsd: 0.01, outputPer1kTokensUsd: 0.03}
"#,
    );
    out += &token("alice", ALICE, "");
    out += &token("expired", EXPIRED, "  expiresAt: \"2020-01-01T00:00:00Z\"");
    out += &token("revoked", REVOKED, "  revoked: true");
    out += &token(
        "tiny",
        TINY_BUDGET,
        "  budgets:\n    - {period: Day, maxTokens: 300, timeZone: Europe/Berlin}",
    );
    out += &token("limited", LIMITED, "  rateLimit: {requestsPerMinute: 2}");
    out += r#"---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {name: bob, namespace: default}
spec:
  subject: {kind: User, name: bob}
  team: research
  allowedModels: [gpt-4o-mini]
---
apiVersion: v1
kind: Secret
metadata: {name: bob-token, namespace: default}
stringData: {token: test-bob-value}
"#;
    out
}

pub const POLICY: &str = r#"apiVersion: policybind.io/v1alpha1
kind: AIPolicy
metadata: {name: test-policy, namespace: default}
spec:
  customDetectors:
    - {name: FORBIDDEN_TOPIC, pattern: "forbidden-topic"}
  rules:
    - name: no-secrets
      conditions: {detected: [SECRET]}
      action: Deny
      code: SECRET_IN_PROMPT
      message: secrets must not be sent to a model
    - name: topic-forbidden
      conditions: {detected: [FORBIDDEN_TOPIC]}
      action: Deny
      message: that topic is off limits
    - name: confidential-needs-approval
      match: {minDataClassification: Confidential}
      action: RequireApproval
    - name: big-gpt-4o-calls-use-mini
      match: {models: [gpt-4o]}
      conditions: {estimatedTokensAbove: 1000}
      action: Degrade
      degrade: {model: gpt-4o-mini, maxTokens: 64}
    - name: redact-personal-data
      conditions: {detected: [EMAIL, PHONE]}
      action: Redact
    - name: allow-support
      match: {teams: [support]}
      action: Allow
"#;

/// A sidecar on ephemeral ports with a config directory of its own.
pub struct Harness {
    pub running: Option<Running>,
    pub config: tempfile::TempDir,
    pub approvals: PathBuf,
    pub audit: Arc<MemoryAudit>,
    pub base: String,
    pub health: String,
    /// The decision API, when served.
    pub decide: Option<String>,
}

impl Harness {
    pub async fn start(upstream: &str, files: &[(&str, &str)]) -> Harness {
        Self::start_with(upstream, files, |_| {}).await
    }

    pub async fn start_with(
        upstream: &str,
        files: &[(&str, &str)],
        tweak: impl FnOnce(&mut Settings),
    ) -> Harness {
        Self::start_full(upstream, files, tweak, None).await
    }

    /// As `start_with`, with another audit sink than the in-memory one.
    pub async fn start_full(
        upstream: &str,
        files: &[(&str, &str)],
        tweak: impl FnOnce(&mut Settings),
        audit_sink: Option<Arc<dyn AuditSink>>,
    ) -> Harness {
        let config = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(config.path().join(name), text).expect("write manifest");
        }
        let approvals = config.path().join("approvals");
        let mut settings = Settings::standalone(config.path().to_path_buf(), upstream);
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings.health_listen = "127.0.0.1:0".parse().unwrap();
        settings.source = SourceSettings::Directory {
            path: config.path().to_path_buf(),
            poll_interval: Duration::from_millis(100),
        };
        settings.approvals = ApprovalSettings::Directory(approvals.clone());
        settings.default_output_tokens = 100;
        settings.decide_listen = Some("127.0.0.1:0".parse().unwrap());
        // The tests read spend from the per-token budget gauges.
        settings.metrics_token_labels = true;
        tweak(&mut settings);
        let audit = Arc::new(MemoryAudit::new());
        let running = policybind_sidecar::start(
            settings,
            Dependencies {
                audit: audit_sink.unwrap_or_else(|| audit.clone()),
                ledger: None,
                kube: None,
            },
        )
        .await
        .expect("sidecar starts");
        Harness {
            base: format!("http://{}", running.addr),
            health: format!("http://{}", running.health_addr),
            decide: running.decide_addr.map(|a| format!("http://{a}")),
            running: Some(running),
            config,
            approvals,
            audit,
        }
    }

    pub fn config_dir(&self) -> &Path {
        self.config.path()
    }

    /// `POST /v1/chat/completions` with one user message.
    pub async fn chat(
        &self,
        token: Option<&str>,
        model: &str,
        text: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
        send(
            Method::POST,
            &format!("{}/v1/chat/completions", self.base),
            token,
            headers,
            Some(body),
        )
        .await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, HeaderMap, Value) {
        send(
            Method::POST,
            &format!("{}{path}", self.base),
            token,
            &[],
            Some(body),
        )
        .await
    }

    /// `POST` to the decision API's port.
    pub async fn decide_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, HeaderMap, Value) {
        let base = self.decide.as_ref().expect("the decision API is served");
        send(
            Method::POST,
            &format!("{base}{path}"),
            token,
            &[],
            Some(body),
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = get_text(&format!("{}/metrics", self.health)).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Waits until the policy set in force has a fingerprint other than `old`.
    pub async fn wait_for_new_set(&self, old: &str) -> String {
        for _ in 0..100 {
            let current = self.fingerprint();
            if current.as_deref().is_some_and(|f| f != old) {
                return current.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the policy set was not reloaded");
    }

    pub fn fingerprint(&self) -> Option<String> {
        self.running
            .as_ref()
            .and_then(|r| r.holder.current())
            .map(|l| l.set.fingerprint().to_string())
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client trusting only the CA in `ca_file`.
pub fn tls_client(
    ca_file: &Path,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

pub fn request(
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let bytes = match body {
        Some(b) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&b).unwrap())
        }
        None => Bytes::new(),
    };
    builder.body(Full::new(bytes)).unwrap()
}

pub async fn send(
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let response = client()
        .request(request(method, url, token, headers, body))
        .await
        .expect("request sent");
    read(response).await
}

/// Status, headers and JSON (or text as a JSON string) of a response.
pub async fn read(
    response: http::Response<hyper::body::Incoming>,
) -> (StatusCode, HeaderMap, Value) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body read").to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

pub async fn send_raw(req: Request<Full<Bytes>>) -> http::Response<hyper::body::Incoming> {
    client().request(req).await.expect("request sent")
}

pub async fn get_text(url: &str) -> (StatusCode, String) {
    let response = client()
        .request(request(Method::GET, url, None, &[], None))
        .await
        .expect("request sent");
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
