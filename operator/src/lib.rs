//! The PolicyBind operator (`policybind controller`): keeps the cluster true.
//!
//! Controllers (kube-rs runtime), one module per kind under [`controllers`]:
//!
//! - [`controllers::ai_policy`]: AIPolicy and ClusterAIPolicy compile results,
//!   last good version.
//! - [`controllers::model_deployment`]: risk, approval, review schedule,
//!   suspension, workloads.
//! - [`controllers::access_token`]: secret issue and rotation, phase, expiry,
//!   usage ([`usage`]).
//! - [`controllers::approval_request`]: decisions and expiry.
//! - [`controllers::incident`]: violation patterns in the audit trail.
//! - [`controllers::namespace`]: for every enforced namespace, the policy bundle
//!   ([`bundle`] computes it) and its reader Role in the operator's own
//!   namespace, the sidecars' RoleBinding, the NetworkPolicy and the audit key.
//!
//! Besides the controllers, [`audit_retention`] keeps every namespace's audit
//! segments within a byte budget, periodically, and [`audit_keyring`] publishes
//! which verification key may sign for which writers, and [`reports`] writes
//! OpenReports summarising request and admission decisions.
//!
//! Every kind is watched once; the watch feeds both its controller and the
//! caches ([`stores::Stores`]) the others read, so reconcilers never read from
//! the API server and an unchanged object costs no call. What controllers
//! remember between reconciles lives in [`state`], owned by the [`Context`].
//! Writes are server-side apply with one field manager, `policybind-operator`.
//! With leader election ([`leader`]) only the Lease holder runs controllers.
//! Metrics and health are served on a plain port ([`metrics`]).
#![forbid(unsafe_code)]

pub mod audit_keyring;
pub mod audit_retention;
pub mod bundle;
pub mod context;
pub mod controllers;
pub mod error;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod reports;
pub mod state;
pub mod stores;
#[doc(hidden)]
pub mod testing;
pub mod usage;

#[cfg(test)]
mod mock_tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::ListParams;
use kube::{Api, Client, Resource};
use policybind_crds::{
    AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, Incident, ModelDeployment,
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use context::{Context, Settings};
pub use error::{Error, Result};
pub use stores::Stores;
pub use usage::UsageReport;

use crate::controllers::Wiring;
use crate::leader::Leadership;
use crate::metrics::Metrics;

/// Builds a client: the given kubeconfig (and context), else in-cluster
/// configuration, else `KUBECONFIG` / `~/.kube/config`.
pub async fn client(settings: &Settings) -> Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: settings.kube_context.clone(),
        ..Default::default()
    };
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        None if settings.kube_context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::Config(e.to_string()))
}

async fn require_crd<K>(client: &Client) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::CrdMissing(format!(
            "{}.{}",
            K::plural(&()),
            K::group(&())
        ))),
        Err(error) => Err(error.into()),
    }
}

/// Fails with a clear message when any PolicyBind CRD is missing.
pub async fn check_crds(client: &Client) -> Result<()> {
    require_crd::<AIPolicy>(client).await?;
    require_crd::<ClusterAIPolicy>(client).await?;
    require_crd::<ModelDeployment>(client).await?;
    require_crd::<AccessToken>(client).await?;
    require_crd::<ApprovalRequest>(client).await?;
    require_crd::<Incident>(client).await?;
    Ok(())
}

/// Runs the operator until shutdown (SIGTERM / Ctrl-C) or a fatal error.
pub async fn run(settings: Settings) -> Result<()> {
    let client = client(&settings).await?;
    check_crds(&client).await?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            shutdown.cancel();
        });
    }
    run_with(client, settings, shutdown).await
}

/// Waits for Ctrl-C or SIGTERM: the one shutdown signal every long-running
/// command (controller, dashboard) stops on.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => futures::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long in-flight work may run on after shutdown is requested; well
/// inside the Lease's 15 s, so a replica that lost it stops acting before
/// another can take it over.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the operator with a given client until `shutdown` is cancelled: the
/// metrics server at once, then (once leading) every controller, the incident
/// scan and audit retention, until shutdown or a lost Lease.
pub async fn run_with(
    client: Client,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    // Opened before waiting for the Lease, so a misconfigured sink stops a
    // standby too, at once, rather than at its first failover.
    let retention_sink = match &settings.audit_retention {
        Some(retention) => Some(retention.sink.open()?),
        None => None,
    };
    // Caches first: the metrics server reports objects by phase from them.
    let (stores, reflectors) = Stores::new();
    let server = tokio::spawn(metrics::serve(
        settings.metrics_listen,
        metrics.clone(),
        stores.clone(),
        ready.clone(),
        settings.approval_ttl,
        shutdown.clone(),
    ));
    let Some(leadership) = take_lead(&client, &settings, &ready, &shutdown).await? else {
        return finish(server, Leadership::alone()).await;
    };
    metrics.is_leader.set(1);

    let (triggers, receivers, bundles_changed) = controllers::channels();
    let (audit, operator_key) = start_audit(&client, &settings).await?.unzip();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            stores,
            settings.clone(),
            metrics.clone(),
            Arc::new(chrono::Utc::now),
            Some(bundles_changed),
        )
        .with_audit(audit),
    );
    let wiring = Wiring {
        client: client.clone(),
        ctx: ctx.clone(),
        triggers,
        shutdown: shutdown.clone(),
    };
    let retention = retention(&wiring, retention_sink, metrics);
    let keyring = audit_keyring::keyring_loop(
        ctx.clone(),
        audit_keyring::FixedKeys {
            operator: operator_key,
            webhook_secret: settings.webhook_audit_key_secret.clone(),
        },
        audit_keyring::DEFAULT_INTERVAL,
        shutdown.clone(),
    );
    let reports = reports::reports_loop(ctx.clone(), shutdown.clone());
    let work = async {
        tokio::join!(
            controllers::run_all(&wiring, reflectors, receivers),
            retention,
            keyring,
            reports,
            report_ready(&ctx, &ready, &shutdown),
        )
    };
    // Shutdown (a signal, or the Lease lost) gives in-flight work
    // SHUTDOWN_GRACE to finish, then drops it: a replica that lost the Lease
    // must not act on while another takes over, and a stuck call must not
    // keep a terminated pod alive. Every reconcile is idempotent; the next
    // leader does again what was cut short.
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = work => {}
        () = grace => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "work still running after the shutdown grace period; dropped"
        ),
    }
    // Shutdown (signal or lost Lease) stops each controller gracefully: no new
    // work, in-flight reconciles finish. The side watches are dropped here.
    shutdown.cancel();
    tracing::info!("controllers stopped");
    if let Some(writer) = ctx.audit() {
        // Seal and write what is queued before the Lease goes to a standby.
        if let Err(error) = writer.shutdown().await {
            tracing::error!(%error, "audit trail not fully written at shutdown");
        }
    }
    finish(server, leadership).await
}

/// Leadership: the Lease with leader election (`None` when shutdown came
/// first), else this replica alone.
async fn take_lead(
    client: &Client,
    settings: &Settings,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>> {
    if !settings.leader_election {
        return Ok(Some(Leadership::alone()));
    }
    ready.store(true, Ordering::SeqCst); // a standby is healthy
    leader::lead(client, settings, shutdown).await
}

/// Audit retention (the leader only), when configured.
async fn retention(
    w: &Wiring,
    sink: Option<Arc<dyn policybind_audit::AuditSink>>,
    metrics: Arc<Metrics>,
) {
    match w.ctx.settings.audit_retention.clone().zip(sink) {
        Some((retention, sink)) => {
            audit_retention::retention_loop(
                w.client.clone(),
                retention,
                sink,
                metrics,
                w.shutdown.clone(),
            )
            .await
        }
        None => tracing::info!("audit retention is off"),
    }
}

/// Marks the operator ready once every cache has filled.
async fn report_ready(ctx: &Context, ready: &AtomicBool, shutdown: &CancellationToken) {
    if ctx.until_caches_filled(shutdown, "readiness").await {
        ready.store(true, Ordering::SeqCst);
        tracing::info!("watch caches filled; controllers running");
    }
}

/// Starts the lifecycle audit writer when a signing key is configured, and
/// returns it with the key's public half for the keyring.
async fn start_audit(
    client: &Client,
    settings: &Settings,
) -> Result<Option<(policybind_audit::AuditWriter, audit_keyring::CurrentKey)>> {
    let (key, since) = match (&settings.audit_key_file, &settings.audit_key_secret) {
        (Some(path), _) => (
            policybind_audit::keys::signing_key_from_file(path).map_err(Error::Audit)?,
            None,
        ),
        (None, Some(secret)) => {
            let (namespace, name) = secret
                .split_once('/')
                .unwrap_or((settings.namespace.as_str(), secret.as_str()));
            policybind_audit::keys::signing_key_secret(client.clone(), namespace, name)
                .await
                .map_err(Error::Audit)?
        }
        (None, None) => return Ok(None),
    };
    let public = audit_keyring::CurrentKey::operator(key.verifying_key(), since);
    let config = policybind_audit::AuditConfig::new(
        policybind_crds::wire::writers::operator(&settings.identity),
        key,
    );
    let store = Arc::new(policybind_audit::ConfigMapStore::new(
        client.clone(),
        settings.namespace.clone(),
    ));
    let writer = policybind_audit::AuditWriter::start(config, store)
        .await
        .map_err(Error::Audit)?;
    tracing::info!(writer = %writer.writer(), namespace = %settings.namespace, "lifecycle records go to the audit trail");
    Ok(Some((writer, public)))
}

/// Releases the Lease, then waits for the metrics server to stop.
async fn finish(server: tokio::task::JoinHandle<Result<()>>, leadership: Leadership) -> Result<()> {
    leadership.release().await?;
    match server.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
