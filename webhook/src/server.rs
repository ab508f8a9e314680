//! Serving: the TLS accept loop, the plain health port, and [`run`], which wires
//! caches, certificate, audit and both servers together for `policybind webhook`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use policybind_crds::{AIPolicy, ClusterAIPolicy, EvidenceGate, ModelDeployment};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::admission::{App, router};
use crate::audit::{AuditSink, LogSink, WriterSink};
use crate::authz::SubjectAccessReviewer;
use crate::config::{AdmissionConfig, SidecarStyle, supports_native_sidecars};
use crate::configs::Registration;
use crate::metrics::Metrics;
use crate::tls::{self, CertResolver};
use crate::view::KubeView;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, polled for changes.
    Files { cert: PathBuf, key: PathBuf },
    /// A `kubernetes.io/tls` Secret, watched.
    Secret { namespace: String, name: String },
    /// Generated at start-up for these names and addresses.
    SelfSigned {
        dns_names: Vec<String>,
        ips: Vec<IpAddr>,
    },
}

/// Where admission records go.
#[derive(Debug, Clone, Default)]
pub struct AuditSettings {
    /// Signing key Secret: `name` in the webhook's namespace, or `namespace/name`
    /// (data key `signing-key`). The operator generates it.
    pub key_secret: Option<String>,
    /// Signing key file, instead of a Secret.
    pub key_file: Option<PathBuf>,
    /// Write segments to this directory instead of ConfigMaps.
    pub directory: Option<PathBuf>,
    /// Writer identity suffix, unique per process: the pod name.
    pub identity: String,
    /// How often the admission summary ([`crate::summary`]) is published in
    /// PolicyBind's namespace; `None`: not published.
    pub summary_interval: Option<Duration>,
}

/// Everything `policybind webhook` configures.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub health_listen: SocketAddr,
    pub tls: TlsSource,
    pub admission: AdmissionConfig,
    pub max_body_bytes: usize,
    /// Longest time one connection may take for its TLS handshake.
    pub handshake_timeout: Duration,
    /// Concurrent connections served; more wait in the accept queue.
    pub max_connections: usize,
    /// How often certificate files are checked for changes.
    pub reload_every: Duration,
    /// The webhook configurations to keep the caBundle of (self-signed), or to
    /// create (`register`).
    pub registration: Registration,
    /// Create or update both configurations by server-side apply at start-up
    /// (registration by URL for out-of-cluster runs).
    pub register: bool,
    /// Admission records: with no signing key they are logged as JSON lines only.
    pub audit: AuditSettings,
    /// A separate plain address for `/metrics` (it is on the health port too).
    pub metrics_listen: Option<SocketAddr>,
}

/// What readiness waits for: a serving certificate, synced caches, and the
/// HTTPS listener bound. The health port comes up first, so without the last
/// one a pod could be marked ready (and a URL registration called) while
/// admission requests would still be refused at the TCP level.
#[derive(Debug, Default)]
pub struct Readiness {
    pub certificate: AtomicBool,
    pub caches: AtomicBool,
    pub listening: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.waiting_for().is_none()
    }

    /// Why the webhook is not ready yet, the first missing condition.
    pub fn waiting_for(&self) -> Option<&'static str> {
        if !self.certificate.load(Ordering::Acquire) {
            Some("no serving certificate yet")
        } else if !self.caches.load(Ordering::Acquire) {
            Some("caches not synced yet")
        } else if !self.listening.load(Ordering::Acquire) {
            Some("admission listener not bound yet")
        } else {
            None
        }
    }
}

/// Accepts TLS connections and serves `router` on each, HTTP/1.1 or HTTP/2,
/// until `shutdown` completes.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            () = &mut shutdown => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
}

/// Liveness, readiness and metrics on the plain port.
pub fn health_router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    #[derive(Clone)]
    struct Health {
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    }
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                match h.readiness.waiting_for() {
                    None => (StatusCode::OK, "ready"),
                    Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics.encode(),
                )
            }),
        )
        .with_state(Health { readiness, metrics })
}

fn reflect<K>(api: Api<K>) -> (reflector::Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, kind = K::kind(&()).as_ref(), "watch error");
            }
        });
    (reader, tokio::spawn(stream))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Writes both webhook configurations: each is read, then replaced with ours
/// (labels and annotations others set, such as Helm's ownership, are kept), or
/// created when missing. Get and update on the two configurations by name are
/// what the chart grants the webhook in self-signed mode; `create` (which RBAC
/// cannot narrow by name) is needed only when they do not exist yet.
pub async fn register(client: Client, registration: &Registration) -> Result<(), Error> {
    ensure(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        registration.validating(),
    )
    .await?;
    ensure(
        Api::<MutatingWebhookConfiguration>::all(client),
        registration.mutating(),
    )
    .await
}

/// Replace-or-create of one cluster-scoped object, retried on conflicts.
async fn ensure<K>(api: Api<K>, desired: K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&()).to_string();
    for _ in 0..5 {
        let Some(existing) = api.get_opt(&name).await.map_err(Error::Kube)? else {
            return match api.create(&PostParams::default(), &desired).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 403 => Err(Error::Config(format!(
                    "{kind} {name} does not exist and this webhook may not create it ({}); create it first \
                     (helm install, or `policybind webhook configs --url ... | kubectl apply -f -`), \
                     or grant create on {}",
                    s.message,
                    K::plural(&()),
                ))),
                Err(e) => Err(Error::Kube(e)),
            };
        };
        let mut object = desired.clone();
        let meta = object.meta_mut();
        let mut merged = existing.meta().clone();
        merged
            .labels
            .get_or_insert_with(Default::default)
            .extend(meta.labels.take().unwrap_or_default());
        merged
            .annotations
            .get_or_insert_with(Default::default)
            .extend(meta.annotations.take().unwrap_or_default());
        *meta = merged;
        match api.replace(&name, &PostParams::default(), &object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Err(Error::Config(format!(
        "{kind} {name}: kept changing while being written; try again"
    )))
}

/// Runs the webhook until SIGTERM or Ctrl-C.
pub async fn run(mut settings: Settings) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Kube)?;
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());

    let version = client.apiserver_version().await;
    let server_version = match &version {
        Ok(info) => info.git_version.clone(),
        Err(error) => format!("unknown ({error})"),
    };
    settings.admission.native_sidecars = match settings.admission.sidecar.style {
        SidecarStyle::Native => true,
        SidecarStyle::Regular => false,
        SidecarStyle::Auto => match &version {
            Ok(info) => supports_native_sidecars(&info.major, &info.minor),
            Err(_) => {
                tracing::warn!("API server version unknown; injecting regular sidecars");
                false
            }
        },
    };
    tracing::info!(
        native = settings.admission.native_sidecars,
        style = ?settings.admission.sidecar.style,
        server_version,
        "sidecar style decided"
    );

    // Caches first: the health port reports "not ready" until they are synced.
    let (models, _m) = reflect(Api::<ModelDeployment>::all(client.clone()));
    let (namespaces, _n) = reflect(Api::<Namespace>::all(client.clone()));
    let (ai_policies, _a) = reflect(Api::<AIPolicy>::all(client.clone()));
    let (cluster_policies, _c) = reflect(Api::<ClusterAIPolicy>::all(client.clone()));
    let (evidence_gates, _g) = reflect(Api::<EvidenceGate>::all(client.clone()));
    let view = KubeView {
        models: models.clone(),
        namespaces: namespaces.clone(),
        ai_policies: ai_policies.clone(),
        cluster_policies: cluster_policies.clone(),
        evidence_gates: evidence_gates.clone(),
    };
    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            // Approvals are judged against the evidence gates: until every cache
            // has synced the webhook is not ready (and a Fail policy holds writes).
            let synced = futures::future::join5(
                models.wait_until_ready(),
                namespaces.wait_until_ready(),
                ai_policies.wait_until_ready(),
                cluster_policies.wait_until_ready(),
                evidence_gates.wait_until_ready(),
            )
            .await;
            if synced.0.is_ok()
                && synced.1.is_ok()
                && synced.2.is_ok()
                && synced.3.is_ok()
                && synced.4.is_ok()
            {
                readiness.caches.store(true, Ordering::Release);
                tracing::info!("caches synced");
            }
        });
    }

    let health = TcpListener::bind(settings.health_listen).await?;
    tracing::info!(address = %settings.health_listen, "health, readiness and metrics (plain HTTP)");
    {
        let app = health_router(readiness.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(health, app).await {
                tracing::error!(%error, "health server stopped");
            }
        });
    }

    let resolver = CertResolver::new();
    match &settings.tls {
        TlsSource::Files { cert, key } => {
            tls::watch_files(
                cert.clone(),
                key.clone(),
                resolver.clone(),
                metrics.clone(),
                settings.reload_every,
            )
            .await?;
        }
        TlsSource::Secret { namespace, name } => {
            tls::watch_secret(
                client.clone(),
                namespace,
                name,
                resolver.clone(),
                metrics.clone(),
            );
        }
        TlsSource::SelfSigned { dns_names, ips } => {
            let generated = tls::generate_self_signed(dns_names, ips)?;
            resolver.set(tls::certified_key(
                generated.cert_pem.as_bytes(),
                generated.key_pem.as_bytes(),
            )?);
            metrics.certificate_reloads.inc();
            settings.registration.ca_bundle = Some(generated.ca_pem.clone());
            if !settings.register {
                tls::patch_ca_bundle(
                    client.clone(),
                    Some(&settings.registration.name),
                    Some(&settings.registration.name),
                    &generated.ca_pem,
                )
                .await?;
            }
        }
    }
    {
        // Certificates from a Secret arrive asynchronously.
        let readiness = readiness.clone();
        let resolver = resolver.clone();
        tokio::spawn(async move {
            while !resolver.is_loaded() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            readiness.certificate.store(true, Ordering::Release);
        });
    }

    let writer = start_audit(&client, &settings).await?;
    let audit: Arc<dyn AuditSink> = match &writer {
        Some(writer) => Arc::new(WriterSink::new(writer.clone())),
        None => {
            tracing::warn!("no audit signing key configured: admission records are logged only");
            Arc::new(LogSink)
        }
    };
    if let Some(address) = settings.metrics_listen {
        let listener = TcpListener::bind(address).await?;
        let app = health_router(readiness.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        });
    }
    let app = App::new(
        settings.admission.clone(),
        Arc::new(view),
        Arc::new(SubjectAccessReviewer::new(client.clone())),
        audit,
        metrics.clone(),
    )?;
    let listener = TcpListener::bind(settings.listen).await?;
    readiness.listening.store(true, Ordering::Release);
    tracing::info!(address = %settings.listen, "admission webhook (HTTPS)");
    let server = tokio::spawn(serve_tls(
        listener,
        router(app, settings.max_body_bytes),
        tls::server_config(resolver)?,
        settings.handshake_timeout,
        settings.max_connections,
        shutdown_signal(),
    ));
    if settings.register {
        // Registered by URL, the API server calls at once: only register once the
        // server is listening and the caches are synced, or the first reviews would
        // fail (Fail policy) or see an empty registry (MODEL_NOT_REGISTERED).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !readiness.ready() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(
                    "caches not synced within 120 s; not registering".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        register(client.clone(), &settings.registration).await?;
        tracing::info!(name = %settings.registration.name, "webhook configurations applied");
    }
    let summary = settings.audit.summary_interval.map(|interval| {
        let stop = CancellationToken::new();
        let publisher = crate::summary::SummaryPublisher::new(
            client.clone(),
            &settings.admission.own_namespace,
            &settings.audit.identity,
            metrics.summary.clone(),
        );
        (stop.clone(), tokio::spawn(publisher.run(interval, stop)))
    });
    let served = server
        .await
        .map_err(|e| Error::Config(format!("server task: {e}")));
    if let Some((stop, handle)) = summary {
        // The last counts go out before the pod does.
        stop.cancel();
        let _ = handle.await;
    }
    served??;
    if let Some(writer) = writer {
        match writer.shutdown().await {
            Ok(report) => tracing::info!(
                last_seq = report.last_seq,
                persisted_seq = report.persisted_seq,
                "audit trail flushed"
            ),
            Err(error) => tracing::error!(%error, "audit trail not fully flushed"),
        }
    }
    Ok(())
}

/// Starts the audit writer when a signing key is configured. The operator
/// generates the key Secret, so a missing one is waited for (up to a minute).
async fn start_audit(
    client: &Client,
    settings: &Settings,
) -> Result<Option<policybind_audit::AuditWriter>, Error> {
    let audit = &settings.audit;
    let key = if let Some(path) = &audit.key_file {
        policybind_audit::keys::signing_key_from_file(path)
            .map_err(|e| Error::Config(e.to_string()))?
    } else if let Some(secret) = &audit.key_secret {
        let own = settings.admission.own_namespace.as_str();
        let (namespace, name) = secret.split_once('/').unwrap_or((own, secret.as_str()));
        let mut attempts = 0;
        loop {
            match policybind_audit::keys::signing_key_from_secret(client.clone(), namespace, name)
                .await
            {
                Ok(key) => break key,
                Err(error) if attempts < 30 => {
                    attempts += 1;
                    tracing::info!(%error, "waiting for the audit signing key");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(error) => return Err(Error::Config(error.to_string())),
            }
        }
    } else {
        return Ok(None);
    };
    let config = policybind_audit::AuditConfig::new(
        policybind_crds::wire::writers::webhook(&audit.identity),
        key,
    );
    let store: Arc<dyn policybind_audit::SegmentStore> = match &audit.directory {
        Some(dir) => Arc::new(
            policybind_audit::DirectoryStore::open(dir.clone())
                .map_err(|e| Error::Config(e.to_string()))?,
        ),
        None => Arc::new(policybind_audit::ConfigMapStore::new(
            client.clone(),
            settings.admission.own_namespace.clone(),
        )),
    };
    let writer = policybind_audit::AuditWriter::start(config, store)
        .await
        .map_err(|e| Error::Config(format!("audit writer: {e}")))?;
    tracing::info!(writer = %writer.writer(), "admission records go to the audit trail");
    Ok(Some(writer))
}
