//! The upstream client and routes: where a model's request goes, over plain
//! HTTP (the model container next to an injected sidecar) or HTTPS (providers).
//!
//! TLS is rustls with the ring provider, as everywhere in the workspace. Server
//! certificates are checked against the platform's roots (the
//! `rustls-native-certs` crate: the image's `/etc/ssl/certs`, or `SSL_CERT_FILE`,
//! so a corporate root added to the image or the node works without a rebuild)
//! plus an optional PEM bundle (`--upstream-ca-file`, for private CAs such as a
//! self-hosted server's). HTTP/2 is negotiated by ALPN where the server offers
//! it; connections are pooled per host (hyper's pooling client).
//!
//! A model's route comes from its ModelDeployment (provider, endpoint, key
//! Secret reference); models without an endpoint, and in an injected sidecar
//! the pod's own model, go to `--upstream`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use policybind_engine::PolicySet;
use policybind_engine::codes;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Settings;
use crate::credentials::{Credentials, ProviderKey};
use crate::providers::{Api, Provider, anthropic};
use crate::refusal::{Refusal, Stage};

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("--upstream {0:?} is not an http:// or https:// URL")]
    BadUpstream(String),
}

/// The pooled clients every upstream call goes through: one for the runtime
/// that started the server and one per worker thread ([`Settings::workers`]),
/// so that a worker's requests use connections whose tasks run on that
/// worker (a shared pool would hand requests to connections driven by
/// another thread, and lose them when that thread stops first).
#[derive(Clone)]
pub struct Upstream {
    clients: Arc<[HttpsClient]>,
}

thread_local! {
    /// The worker this thread is (1-based), set by [`Upstream::enter_worker`];
    /// 0 on other threads.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Why an upstream call failed.
#[derive(Debug)]
pub enum UpstreamFailure {
    Timeout,
    Unavailable(String),
}

impl Upstream {
    pub fn new(settings: &Settings) -> Result<Upstream, UpstreamError> {
        let base = settings.upstream.trim_end_matches('/');
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UpstreamError::BadUpstream(settings.upstream.clone()));
        }
        let tls = tls_config(settings.upstream_ca_file.as_deref())?;
        let clients = (0..=settings.workers)
            .map(|_| client(settings, tls.clone()))
            .collect();
        Ok(Upstream { clients })
    }

    /// Marks the calling thread as worker `index` (0-based) of the server:
    /// its upstream calls use that worker's own client.
    pub(crate) fn enter_worker(index: usize) {
        WORKER.with(|w| w.set(index + 1));
    }

    fn client(&self) -> &HttpsClient {
        let worker = WORKER.with(std::cell::Cell::get);
        self.clients.get(worker).unwrap_or(&self.clients[0])
    }

    /// Sends a request, bounded by `timeout` until the response headers.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamFailure> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout(timeout, self.client().request(request)).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(Err(e)) => Err(UpstreamFailure::Unavailable(error_chain(&e))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// A pooled client over plain HTTP and HTTPS, with Nagle's algorithm off.
fn client(settings: &Settings, tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(settings.limits.upstream_connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(settings.limits.max_concurrency.min(512))
        .build(connector)
}

/// An error with its sources (a TLS failure hides behind "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!("platform CA certificates: {error}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |reason: String| UpstreamError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    } else if added == 0 {
        tracing::warn!(
            "no platform CA certificates found: HTTPS upstreams will fail unless --upstream-ca-file is set"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where one request goes and how it authenticates there.
#[derive(Debug, Clone)]
pub struct Route {
    pub provider: Provider,
    /// Base URL, without a trailing slash.
    pub base: String,
    pub key: Option<ProviderKey>,
    /// `namespace/name` of the ModelDeployment, when registered.
    pub deployment: Option<String>,
    /// The registered provider name when the request goes to the
    /// ModelDeployment's endpoint rather than the default upstream.
    pub endpoint_provider: Option<String>,
}

impl Route {
    /// The full URL of `path_and_query` at this route. A base ending in `/v1`
    /// takes the path without its own `/v1` (SDK users write base URLs both ways).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, String> {
        let path = match (
            self.base.ends_with("/v1"),
            path_and_query.strip_prefix("/v1"),
        ) {
            (true, Some(rest)) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            _ => path_and_query,
        };
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("bad upstream URL: {e}"))
    }

    /// Headers for the upstream: the caller's content negotiation and API
    /// version headers, the provider key in the provider's form, the request
    /// id. The caller's own credentials (`authorization`, `x-api-key`,
    /// `api-key`) never leave.
    pub fn headers(&self, api: Api, from: &HeaderMap, request_id: &str, len: usize) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(8);
        for name in ["accept", "user-agent", "anthropic-beta", "openai-beta"] {
            if let Some(v) = from.get(name) {
                headers.insert(name, v.clone());
            }
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if len > 0 || api != Api::Models {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if self.provider == Provider::Anthropic || api == Api::Messages {
            let version = from
                .get("anthropic-version")
                .cloned()
                .unwrap_or(HeaderValue::from_static(anthropic::DEFAULT_VERSION));
            headers.insert("anthropic-version", version);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", v);
        }
        if let Some(key) = &self.key {
            for (name, value) in self.provider.key_headers(key.expose()) {
                if let Ok(mut v) = HeaderValue::from_str(&value) {
                    v.set_sensitive(true);
                    headers.insert(name, v);
                }
            }
        }
        headers
    }
}

/// What a route is resolved from.
pub struct RouteContext<'a> {
    pub settings: &'a Settings,
    pub credentials: &'a Credentials,
    pub set: &'a PolicySet,
}

impl RouteContext<'_> {
    /// The route of `model` for a request of `api`.
    pub fn resolve(&self, model: &str, api: Api) -> Result<Route, Refusal> {
        let settings = self.settings;
        let registered = self.set.model_route(model, &settings.namespace);
        let own = registered
            .is_some_and(|r| settings.own_model_deployment.as_deref() == Some(r.deployment));
        let provider = registered.map_or(Provider::SelfHosted, |r| Provider::parse(r.provider));
        let unavailable =
            |message: String| Refusal::new(Stage::Route, codes::ROUTE_UNAVAILABLE, message);
        if provider == Provider::NotRoutable {
            return Err(unavailable(format!(
                "model {model} is registered with provider {}, which policybind does not route to",
                registered.map_or("", |r| r.provider)
            )));
        }
        if !provider.accepts(api) {
            let mut refusal = Refusal::invalid(format!(
                "model {model} is served by provider {}, which does not take this API",
                registered.map_or("", |r| r.provider)
            ));
            refusal.stage = Stage::Route;
            return Err(refusal);
        }
        let endpoint = registered.and_then(|r| r.endpoint).filter(|_| !own);
        let base = match endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None if !settings.upstream.is_empty() => {
                settings.upstream.trim_end_matches('/').to_string()
            }
            None => {
                return Err(unavailable(format!(
                    "model {model} has no endpoint in its ModelDeployment and this gateway has no --upstream"
                )));
            }
        };
        let key = match registered.and_then(|r| r.credentials) {
            Some(secret) => Some(
                self.credentials
                    .key(secret)
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
            None if endpoint.is_none() => settings.upstream_api_key.clone(),
            None => None,
        };
        Ok(Route {
            provider,
            base,
            key,
            deployment: registered.map(|r| r.deployment.to_string()),
            endpoint_provider: endpoint.and(registered).map(|r| r.provider.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(base: &str) -> Route {
        Route {
            provider: Provider::OpenAi,
            base: base.into(),
            key: Some(ProviderKey::new("sk-test")),
            deployment: None,
            endpoint_provider: None,
        }
    }

    #[test]
    fn paths_join_bases_with_and_without_v1() {
        let with = route("https://api.openai.com/v1");
        let without = route("https://api.openai.com");
        for r in [&with, &without] {
            assert_eq!(
                r.uri("/v1/chat/completions").unwrap().to_string(),
                "https://api.openai.com/v1/chat/completions"
            );
        }
        assert_eq!(
            route("https://r.openai.azure.com/openai/v1")
                .uri("/v1/responses?api-version=preview")
                .unwrap()
                .to_string(),
            "https://r.openai.azure.com/openai/v1/responses?api-version=preview"
        );
        assert_eq!(
            with.uri("/v1xyz").unwrap().to_string(),
            "https://api.openai.com/v1/v1xyz"
        );
    }

    #[test]
    fn the_callers_credentials_never_go_upstream_and_the_key_goes_in_the_providers_form() {
        let mut from = HeaderMap::new();
        from.insert(
            "authorization",
            HeaderValue::from_static("Bearer pb-caller"),
        );
        from.insert("x-api-key", HeaderValue::from_static("pb-caller"));
        from.insert("api-key", HeaderValue::from_static("pb-caller"));
        from.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        from.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
        let mut anthropic = route("https://api.anthropic.com");
        anthropic.provider = Provider::Anthropic;
        let headers = anthropic.headers(Api::Messages, &from, "req-1", 10);
        assert_eq!(headers["x-api-key"], "sk-test");
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("api-key").is_none());
        assert_eq!(headers["anthropic-version"], "2023-06-01");
        assert_eq!(headers["accept-encoding"], "identity");
        let openai = route("https://api.openai.com").headers(Api::ChatCompletions, &from, "r", 1);
        assert_eq!(openai["authorization"], "Bearer sk-test");
        assert!(openai.get("x-api-key").is_none());
        let mut azure = route("https://r.openai.azure.com/openai/v1");
        azure.provider = Provider::AzureOpenAi;
        let azure = azure.headers(Api::ChatCompletions, &from, "r", 1);
        assert_eq!(azure["api-key"], "sk-test");
        assert!(azure.get("authorization").is_none());
        let mut keyless = route("http://127.0.0.1:8000");
        keyless.key = None;
        let keyless = keyless.headers(Api::ChatCompletions, &from, "r", 1);
        for name in ["authorization", "x-api-key", "api-key"] {
            assert!(keyless.get(name).is_none(), "{name} forwarded");
        }
    }
}
