//! The PolicyBind enforcement point: a sidecar in front of an OpenAI-compatible
//! inference server (vLLM, TGI, Ollama, KServe), and the same server run
//! standalone by `policybind serve` (DESIGN.md sections 3, 4, 5 and 8).
//!
//! Every model request is authenticated, decided by the engine
//! (`policybind-engine`), enforced (deny, redact, degrade, hold for approval),
//! accounted against rate limits and budgets, recorded in the audit trail, and
//! only then forwarded. Services that enforce decisions themselves ask
//! `POST /v1/decide`.
//!
//! - [`config`] holds the settings.
//! - [`source`] holds the policy set in force and swaps it atomically; it also
//!   reads the directory of standalone mode. [`cluster`] watches the bundle ConfigMap
//!   in PolicyBind's own namespace.
//! - [`proxy`] is the request path; [`facts`] reads and rewrites bodies.
//! - [`accounting`] keeps rate limits and budgets behind the [`accounting::UsageLedger`] trait.
//! - [`usage`] reports the ledger's settled usage to the operator (cluster mode).
//! - [`approvals`] holds requests for a human decision.
//! - [`decide_api`] is the decision API; [`audit`] is the audit trail as the request
//!   path sees it; [`metrics`] has the Prometheus metrics.
//! - [`fake_upstream`] is a small OpenAI-compatible server: the tests' upstream
//!   and the demo upstream `policybind serve` starts when given none.
//!
//! [`start`] binds both ports and returns at once (tests use it on ephemeral
//! ports); [`run`] also waits for Ctrl-C or SIGTERM and shuts down gracefully.
#![forbid(unsafe_code)]

pub mod accounting;
pub mod approvals;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod decide_api;
pub mod facts;
pub mod fake_upstream;
pub mod loadgen;
pub mod metrics;
pub mod proxy;
pub mod source;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::Utc;
use http::StatusCode;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use accounting::{InProcessLedger, UsageLedger};
pub use audit::{AuditSink, AuditUnavailable, MemoryAudit};
pub use config::{ApprovalSettings, Limits, Settings, SourceSettings};
pub use source::PolicyHolder;

use crate::approvals::Approvals;
use crate::metrics::Metrics;
use crate::proxy::AppState;
use crate::source::DirectoryWatcher;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the server is built from besides its settings.
pub struct Dependencies {
    pub audit: Arc<dyn AuditSink>,
    /// Usage accounting; an [`InProcessLedger`] when `None`.
    pub ledger: Option<Arc<dyn UsageLedger>>,
    /// Kubernetes client, needed for the ConfigMap source and cluster approvals.
    pub kube: Option<kube::Client>,
}

/// A running server.
pub struct Running {
    /// Address of the OpenAI-compatible API and `/v1/decide`.
    pub addr: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub health_addr: SocketAddr,
    pub holder: Arc<PolicyHolder>,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: JoinSet<Result<(), Error>>,
    /// The usage reporter, stopped only after the servers have drained.
    reporter: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Running {
    /// Stops accepting connections, lets requests in progress finish, stops the
    /// policy source, then writes the last usage report.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.cancel();
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                result = Err(e);
            }
        }
        if let Some((stop, reporter)) = self.reporter.take() {
            stop.cancel();
            let _ = reporter.await;
        }
        result
    }

    /// Waits until a task fails or `shutdown` is requested through the token.
    pub async fn wait(&mut self) -> Result<(), Error> {
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                self.stop.cancel();
                return Err(e);
            }
        }
        Ok(())
    }

    /// A token that stops the server when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Binds the ports, starts the policy source and the servers, and returns.
pub async fn start(settings: Settings, deps: Dependencies) -> Result<Running, Error> {
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let holder = PolicyHolder::new();
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let approvals = match &settings.approvals {
        ApprovalSettings::Directory(dir) => Approvals::Directory(dir.clone()),
        ApprovalSettings::Cluster {
            namespace,
            requester,
        } => match &deps.kube {
            Some(client) => Approvals::Cluster {
                api: Box::new(kube::Api::namespaced(client.clone(), namespace)),
                requester: requester.clone(),
            },
            None => Approvals::Disabled,
        },
        ApprovalSettings::Disabled => Approvals::Disabled,
    };

    // Load the first set before serving, so a good configuration never answers
    // a first request with NO_POLICY_SET.
    match &settings.source {
        SourceSettings::Directory {
            path,
            poll_interval,
        } => {
            let exclude = match &settings.approvals {
                ApprovalSettings::Directory(dir) => Some(dir.clone()),
                _ => None,
            };
            let mut watcher =
                DirectoryWatcher::new(path.clone(), exclude, settings.namespace.clone());
            watcher.poll(&holder, &metrics);
            let interval = *poll_interval;
            let (holder, metrics, stop) = (holder.clone(), metrics.clone(), stop.clone());
            tasks.spawn(async move {
                watcher.run(interval, holder, metrics, stop).await;
                Ok(())
            });
        }
        SourceSettings::ConfigMap(source) => {
            let client = match &deps.kube {
                Some(c) => c.clone(),
                None => kube::Client::try_default().await?,
            };
            let source = source.clone();
            let (holder, metrics, stop) = (holder.clone(), metrics.clone(), stop.clone());
            tasks.spawn(async move {
                cluster::watch_bundle(client, source, holder, metrics, stop).await;
                Ok(())
            });
        }
    }

    let ledger = deps
        .ledger
        .unwrap_or_else(|| Arc::new(InProcessLedger::new()) as Arc<dyn UsageLedger>);
    let audit = deps.audit;
    let state = AppState::new(
        settings.clone(),
        holder.clone(),
        ledger.clone(),
        audit.clone(),
        approvals,
        metrics.clone(),
    );
    let mut app = Router::new();
    if settings.decide_api {
        app = app.route("/v1/decide", post(decide_api::decide));
    }
    let app = label_responses(
        app.fallback(proxy::handle).with_state(state),
        settings.upstream_label.as_deref(),
    );

    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_handler))
        .with_state((holder.clone(), metrics.clone(), audit.clone()));

    let listener = bind(settings.listen).await?;
    let health_listener = bind(settings.health_listen).await?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let health_addr = health_listener.local_addr().map_err(Error::Serve)?;
    info!(%addr, %health_addr, upstream = %settings.upstream, "policybind enforcement point listening");

    // Started once the ports are bound, so a failed start leaves no task behind.
    let reporter = match (&settings.usage_report, &deps.kube) {
        (Some(report), Some(client)) => {
            let reporter = usage::UsageReporter::new(client.clone(), report, ledger.clone());
            let stop = CancellationToken::new();
            let handle = tokio::spawn(reporter.run(report.interval, stop.clone()));
            Some((stop, handle))
        }
        (Some(report), None) => {
            tracing::warn!(
                pod = %report.pod,
                "no Kubernetes client: usage is not reported to the operator"
            );
            None
        }
        (None, _) => None,
    };

    let stop_main = stop.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop_main.cancelled().await })
            .await
            .map_err(Error::Serve)
    });
    let stop_health = stop.clone();
    tasks.spawn(async move {
        axum::serve(health_listener, health)
            .with_graceful_shutdown(async move { stop_health.cancelled().await })
            .await
            .map_err(Error::Serve)
    });

    Ok(Running {
        addr,
        health_addr,
        holder,
        metrics,
        stop,
        tasks,
        reporter,
    })
}

/// Adds `x-policybind-upstream: <label>` to every response, when a label is set.
fn label_responses(app: Router, label: Option<&str>) -> Router {
    let Some(value) = label.and_then(|l| http::HeaderValue::from_str(l).ok()) else {
        return app;
    };
    app.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            let value = value.clone();
            async move {
                response.headers_mut().insert(proxy::UPSTREAM_HEADER, value);
                response
            }
        },
    ))
}

type HealthState = (Arc<PolicyHolder>, Arc<Metrics>, Arc<dyn AuditSink>);

async fn ready(State((holder, _, _)): State<HealthState>) -> impl IntoResponse {
    match holder.current() {
        Some(loaded) => (
            StatusCode::OK,
            format!("ready: policy set {}\n", loaded.set.fingerprint()),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no valid policy set loaded (every request is denied)\n".to_string(),
        ),
    }
}

async fn metrics_handler(State((_, metrics, audit)): State<HealthState>) -> impl IntoResponse {
    if let Some(backlog) = audit.backlog() {
        metrics.audit_backlog.set(backlog as i64);
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(Utc::now()),
    )
}

/// Runs until Ctrl-C or SIGTERM, then shuts down gracefully.
pub async fn run(settings: Settings, deps: Dependencies) -> Result<(), Error> {
    let mut running = start(settings, deps).await?;
    let failed = tokio::select! {
        result = running.wait() => Some(result),
        _ = shutdown_signal() => {
            info!("shutting down");
            None
        }
    };
    // Also after a failure: the usage settled so far is still reported.
    let shutdown = running.shutdown().await;
    match failed {
        Some(Err(e)) => Err(e),
        _ => shutdown,
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
