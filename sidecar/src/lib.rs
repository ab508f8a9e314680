//! The PolicyBind enforcement point: a sidecar in front of an OpenAI-compatible
//! inference server (vLLM, TGI, Ollama, KServe), the same server run
//! standalone by `policybind serve`, and the central gateway in front of
//! external providers (OpenAI, Anthropic, Azure OpenAI) that any OpenAI or
//! Anthropic SDK can point at (DESIGN.md sections 3, 4, 5, 8 and 12).
//!
//! Every model request is authenticated, decided by the engine
//! (`policybind-engine`), enforced (deny, redact, degrade, hold for approval),
//! accounted against rate limits and budgets, recorded in the audit trail, and
//! only then forwarded; the answer is judged by the output policy on its way
//! back. Services that enforce decisions themselves ask the decision API.
//!
//! - [`config`] holds the settings.
//! - [`source`] holds the policy set in force and swaps it atomically; it also
//!   reads the directory of standalone mode. [`cluster`] watches the bundle ConfigMap
//!   in PolicyBind's own namespace.
//! - [`handler`] is the HTTP handling of the main port; [`pipeline`] the
//!   decision pipeline (decide, reserve, hold, audit) the handler and the
//!   [`decide_api`] share; [`forward`] sends admitted requests through the
//!   [`upstream`] client and reads the answers; [`refusal`] answers refusals
//!   in each API's error shape; [`models`] lists the models a token may call.
//! - [`providers`] are the adapters of each model API and provider;
//!   [`credentials`] reads provider keys; [`output`] judges answers; [`sse`]
//!   and [`compress`] read streams and compressed bodies.
//! - [`accounting`] keeps rate limits and budgets behind the [`accounting::UsageLedger`] trait.
//! - [`usage`] reports the ledger's settled usage to the operator (cluster mode).
//! - [`approvals`] holds requests for a human decision.
//! - [`audit`] is the audit trail as the request path sees it; [`rejections`]
//!   summarises unauthenticated refusals; [`ingress`] checks identifiers;
//!   [`metrics`] has the Prometheus metrics.
//! - [`fake_upstream`] is a small model server: the tests' upstream and the
//!   demo upstream `policybind serve` starts when given none.
//!
//! [`start`] binds every port and returns at once (tests use it on ephemeral
//! ports); [`run`] also waits for Ctrl-C or SIGTERM and shuts down gracefully.
#![forbid(unsafe_code)]

pub mod accounting;
pub mod approvals;
pub mod audit;
pub mod cluster;
pub mod compress;
pub mod config;
pub mod credentials;
pub mod decide_api;
pub mod decisions;
pub mod fake_upstream;
pub mod forward;
pub mod handler;
pub mod ingress;
pub mod lease;
pub mod loadgen;
pub mod metrics;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod providers;
pub mod redis_ledger;
pub mod refusal;
pub mod rejections;
pub mod rounds;
pub mod source;
pub mod sse;
pub mod state;
pub mod upstream;
pub mod usage;
pub mod usage_file;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
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
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::rejections::Rejections;
use crate::source::DirectoryWatcher;
use crate::state::{AppState, Parts};
use crate::upstream::Upstream;

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
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("upstream client: {0}")]
    Upstream(#[from] upstream::UpstreamError),
    #[error(transparent)]
    UsageFile(#[from] usage_file::UsageFileError),
    #[error(transparent)]
    BudgetStore(#[from] redis_ledger::StoreError),
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
    /// Address of the model APIs.
    pub addr: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub health_addr: SocketAddr,
    /// Address of the decision API, when served.
    pub decide_addr: Option<SocketAddr>,
    pub holder: Arc<PolicyHolder>,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: JoinSet<Result<(), Error>>,
    /// The usage reporter and the usage file's writer, stopped only after
    /// the servers have drained.
    after_drain: Vec<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Running {
    /// Stops accepting connections, lets requests in progress finish, stops the
    /// policy source, then writes the last usage report and usage file.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.cancel();
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                result = Err(e);
            }
        }
        for (stop, task) in self.after_drain.drain(..) {
            stop.cancel();
            let _ = task.await;
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

/// The main port's listeners: one on the caller's runtime, or one per worker
/// thread, all the same listening socket (each worker accepts from it when it
/// is free). One socket rather than one per worker with `SO_REUSEPORT`: that
/// would let any other process of the same user in the pod's network
/// namespace join the port and take a share of the callers' connections.
enum MainPort {
    Here(tokio::net::TcpListener),
    Workers(Vec<std::net::TcpListener>),
}

impl MainPort {
    async fn bind(addr: SocketAddr, workers: usize) -> Result<MainPort, Error> {
        let listener = bind(addr).await?;
        if workers == 0 {
            return Ok(MainPort::Here(listener));
        }
        let bind_error = |source| Error::Bind { addr, source };
        let first = listener.into_std().map_err(bind_error)?;
        let mut listeners = Vec::with_capacity(workers);
        for _ in 1..workers {
            listeners.push(first.try_clone().map_err(bind_error)?);
        }
        listeners.push(first);
        Ok(MainPort::Workers(listeners))
    }

    fn local_addr(&self) -> Result<SocketAddr, Error> {
        match self {
            MainPort::Here(listener) => listener.local_addr(),
            MainPort::Workers(listeners) => listeners[0].local_addr(),
        }
        .map_err(Error::Serve)
    }

    fn serve(
        self,
        tasks: &mut JoinSet<Result<(), Error>>,
        app: Router,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        match self {
            MainPort::Here(listener) => serve(tasks, listener, app, stop),
            MainPort::Workers(listeners) => {
                for (index, listener) in listeners.into_iter().enumerate() {
                    serve_on_worker(tasks, index, listener, app.clone(), stop)?;
                }
            }
        }
        Ok(())
    }
}

/// Accepted connections send at once (`TCP_NODELAY`): an answer written in
/// two pieces must not wait for the caller's delayed acknowledgement.
fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// Serves `listener` on a thread of its own running a single-threaded
/// runtime, so that everything a request does (the caller's connection, the
/// pipeline, the upstream connection) runs on that thread, as in nginx's
/// worker processes. Stops like the other servers: no new connections once
/// `stop` is cancelled, then waits for the requests in progress.
fn serve_on_worker(
    tasks: &mut JoinSet<Result<(), Error>>,
    index: usize,
    listener: std::net::TcpListener,
    app: Router,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let stop = stop.clone();
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("policybind-worker-{index}"))
        .spawn(move || {
            upstream::Upstream::enter_worker(index);
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Serve)
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener =
                            tokio::net::TcpListener::from_std(listener).map_err(Error::Serve)?;
                        axum::serve(without_nagle(listener), app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                            .map_err(Error::Serve)
                    })
                });
            let _ = done.send(served);
        })
        .map_err(Error::Serve)?;
    tasks.spawn(async move {
        finished.await.unwrap_or_else(|_| {
            Err(Error::Serve(std::io::Error::other(
                "worker thread panicked",
            )))
        })
    });
    Ok(())
}

fn approvals(settings: &Settings, kube: Option<&kube::Client>) -> Approvals {
    match &settings.approvals {
        ApprovalSettings::Directory(dir) => Approvals::Directory(dir.clone()),
        ApprovalSettings::Cluster {
            namespace,
            requester,
        } => match kube {
            Some(client) => Approvals::Cluster {
                api: Box::new(kube::Api::namespaced(client.clone(), namespace)),
                requester: requester.clone(),
            },
            None => Approvals::Disabled,
        },
        ApprovalSettings::Disabled => Approvals::Disabled,
    }
}

/// Loads the first policy set before serving (so a good configuration never
/// answers a first request with NO_POLICY_SET) and starts watching the source.
async fn start_source(
    settings: &Settings,
    kube: Option<&kube::Client>,
    holder: &Arc<PolicyHolder>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<Result<(), Error>>,
) -> Result<(), Error> {
    let (holder, metrics, stop) = (holder.clone(), metrics.clone(), stop.clone());
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
            tasks.spawn(async move {
                watcher.run(interval, holder, metrics, stop).await;
                Ok(())
            });
        }
        SourceSettings::ConfigMap(source) => {
            let client = match kube {
                Some(c) => c.clone(),
                None => kube::Client::try_default().await?,
            };
            let source = source.clone();
            tasks.spawn(async move {
                cluster::watch_bundle(client, source, holder, metrics, stop).await;
                Ok(())
            });
        }
    }
    Ok(())
}

/// The usage reporter, started once the ports are bound (so a failed start
/// leaves no task behind).
fn start_reporter(
    settings: &Settings,
    kube: Option<&kube::Client>,
    ledger: &Arc<dyn UsageLedger>,
    holder: &Arc<PolicyHolder>,
    metrics: &Metrics,
    leases: Option<Arc<lease::LeasedLedger>>,
) -> Option<(CancellationToken, tokio::task::JoinHandle<()>)> {
    match (&settings.usage_report, kube) {
        (Some(report), Some(client)) => {
            let mut reporter = usage::UsageReporter::new(client.clone(), report, ledger.clone())
                .with_bundle(holder.clone())
                .with_decisions(metrics.summary.clone());
            let stop = CancellationToken::new();
            let mut interval = report.interval;
            if let (Some(leases), Some(home)) = (leases, &report.ledger_home) {
                reporter = reporter.with_leases(leases.clone());
                interval = interval.min(std::time::Duration::from_secs(1));
                let lease_settings = lease::LeaseSettings {
                    home: home.clone(),
                    namespace: report.namespace.clone(),
                    pod: report.pod.clone(),
                };
                tokio::spawn(lease::watch_ledger(
                    client.clone(),
                    lease_settings,
                    leases,
                    stop.clone(),
                ));
            }
            let handle = tokio::spawn(reporter.run(interval, stop.clone()));
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
    }
}

/// Reads the usage file into the ledger before anything is served (a file
/// that does not read stops the start: spend must not restart at zero) and
/// returns its writer.
fn restore_usage_file(
    settings: &Settings,
    ledger: &Arc<dyn UsageLedger>,
) -> Result<Option<usage_file::UsagePersister>, Error> {
    let Some(path) = &settings.usage_file else {
        return Ok(None);
    };
    let file = usage_file::UsageFile::open(path)?;
    let restored = file.load()?;
    ledger.restore(&restored);
    info!(path = %path.display(), entries = restored.len(), "settled usage restored");
    Ok(Some(usage_file::UsagePersister::new(
        file,
        ledger.clone(),
        &restored,
    )))
}

fn serve(
    tasks: &mut JoinSet<Result<(), Error>>,
    listener: tokio::net::TcpListener,
    app: Router,
    stop: &CancellationToken,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        axum::serve(without_nagle(listener), app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(Error::Serve)
    });
}

/// Builds the tokenizer each model this process serves needs before a
/// request does (an `o200k_base` encoder takes 0.1-0.6 s to build): checks
/// the set in force every second and prepares the encoders of models it has
/// not seen. A sidecar that fronts one ModelDeployment prepares only that
/// model's names, so the encoders of models its namespace reaches elsewhere
/// (through a gateway) take no memory here.
async fn prepare_tokenizers(
    holder: Arc<PolicyHolder>,
    settings: Arc<Settings>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let namespace = settings.namespace.as_str();
    let mut prepared = std::collections::HashSet::new();
    let mut fingerprint = None;
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let Some(loaded) = holder.current() else {
            continue;
        };
        let current = loaded.set.fingerprint().to_string();
        if fingerprint.as_ref() == Some(&current) {
            continue;
        }
        fingerprint = Some(current);
        let new: Vec<String> = loaded
            .set
            .model_names(namespace)
            .into_iter()
            .filter(|name| match settings.own_model_deployment.as_deref() {
                Some(own) => loaded
                    .set
                    .model_route(name, namespace)
                    .is_some_and(|route| route.deployment == own),
                None => true,
            })
            .filter(|name| prepared.insert(name.to_string()))
            .map(str::to_string)
            .collect();
        if !new.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                new.iter()
                    .for_each(|model| policybind_engine::tokens::prepare(model))
            })
            .await;
        }
    }
}

/// Binds the ports, starts the policy source and the servers, and returns.
pub async fn start(settings: Settings, deps: Dependencies) -> Result<Running, Error> {
    settings.validate()?;
    let upstream = Upstream::new(&settings)?;
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    metrics.set_token_labels(settings.metrics_token_labels);
    let holder = PolicyHolder::new();
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let kube = deps.kube.as_ref();
    start_source(&settings, kube, &holder, &metrics, &stop, &mut tasks).await?;
    if settings.token_estimates == providers::TokenEstimates::Exact {
        tasks.spawn(prepare_tokenizers(
            holder.clone(),
            settings.clone(),
            stop.clone(),
        ));
    }

    // Budgets shared with other replicas through Redis when one is given,
    // else through the operator's ledger when this pod reports usage in a
    // cluster; one process's own ledger otherwise.
    let redis = match (&deps.ledger, &settings.budget_store) {
        (None, Some(store)) => Some(Arc::new(redis_ledger::RedisLedger::connect(store)?)),
        _ => None,
    };
    let leases = match (&deps.ledger, &redis, &settings.usage_report, kube) {
        (None, None, Some(report), Some(_)) if report.ledger_home.is_some() => {
            Some(Arc::new(lease::LeasedLedger::new(&report.pod)))
        }
        _ => None,
    };
    let ledger = match (deps.ledger, redis, &leases) {
        (Some(ledger), _, _) => ledger,
        (None, Some(redis), _) => redis as Arc<dyn UsageLedger>,
        (None, None, Some(leases)) => leases.clone() as Arc<dyn UsageLedger>,
        (None, None, None) => Arc::new(InProcessLedger::new()) as Arc<dyn UsageLedger>,
    };
    let persister = restore_usage_file(&settings, &ledger)?;
    let audit = deps.audit;
    let rejections = Rejections::new(metrics.unauthenticated.clone());
    let state = AppState::new(Parts {
        approvals: approvals(&settings, kube),
        credentials: Arc::new(Credentials::new(settings.credentials.clone())),
        settings: settings.clone(),
        holder: holder.clone(),
        ledger: ledger.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        upstream,
        rejections: rejections.clone(),
    });
    let app = label_responses(
        Router::new()
            .fallback(handler::handle)
            .with_state(state.clone()),
        settings.upstream_label.as_deref(),
    );
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_handler))
        .with_state((holder.clone(), metrics.clone(), audit.clone()));

    let main_port = MainPort::bind(settings.listen, settings.workers).await?;
    let health_listener = bind(settings.health_listen).await?;
    let decide_listener = match settings.decide_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let addr = main_port.local_addr()?;
    let health_addr = health_listener.local_addr().map_err(Error::Serve)?;
    let decide_addr = match &decide_listener {
        Some(l) => Some(l.local_addr().map_err(Error::Serve)?),
        None => None,
    };
    let decide_shown = decide_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    info!(%addr, %health_addr, decide_addr = %decide_shown, upstream = %settings.upstream,
        workers = settings.workers, "policybind enforcement point listening");

    let mut after_drain: Vec<_> =
        start_reporter(&settings, kube, &ledger, &holder, &metrics, leases)
            .into_iter()
            .collect();
    if let Some(persister) = persister {
        let stop = CancellationToken::new();
        let every = std::time::Duration::from_secs(1);
        let handle = tokio::spawn(persister.run(every, stop.clone()));
        after_drain.push((stop, handle));
    }
    let interval = settings.rejection_summary_interval;
    let (namespace, summary_stop) = (settings.namespace.clone(), stop.clone());
    tasks.spawn(async move {
        rejections
            .run(audit, namespace, interval, summary_stop)
            .await;
        Ok(())
    });
    if let Err(e) = main_port.serve(&mut tasks, app, &stop) {
        stop.cancel();
        return Err(e);
    }
    serve(&mut tasks, health_listener, health, &stop);
    if let Some(listener) = decide_listener {
        serve(&mut tasks, listener, decide_api::router(state), &stop);
    }
    Ok(Running {
        addr,
        health_addr,
        decide_addr,
        holder,
        metrics,
        stop,
        tasks,
        after_drain,
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
                // An answer from a provider's endpoint already names it (see `forward`).
                let headers = response.headers_mut();
                if !headers.contains_key(refusal::UPSTREAM_HEADER) {
                    headers.insert(refusal::UPSTREAM_HEADER, value);
                }
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
