//! The PolicyBind operator (`policybind controller`): keeps the cluster true.
//!
//! Controllers (kube-rs runtime), one module per kind:
//!
//! - [`ai_policy`]: AIPolicy and ClusterAIPolicy compile results, last good version.
//! - [`model_deployment`]: risk, approval, review schedule, suspension, workloads.
//! - [`access_token`]: secret issue and rotation, phase, expiry, usage ([`usage`]).
//! - [`approval_request`]: decisions and expiry.
//! - [`incident`]: violation patterns in the audit trail.
//! - [`namespace`]: the per-namespace policy bundle ([`bundle`] computes it) and
//!   the sidecars' Role and RoleBinding.
//!
//! Besides the controllers, [`audit_retention`] keeps every namespace's audit
//! segments within a byte budget, periodically.
//!
//! Every kind is watched once; the watch feeds both its controller and the
//! caches ([`context::Stores`]) the others read, so reconcilers never read from
//! the API server and an unchanged object costs no call. Writes are server-side
//! apply with one field manager, `policybind-operator`. With leader election
//! ([`leader`]) only the Lease holder runs controllers. Metrics and health are
//! served on a plain port ([`metrics`]).
#![forbid(unsafe_code)]

pub mod access_token;
pub mod ai_policy;
pub mod approval_request;
pub mod audit_retention;
pub mod bundle;
pub mod context;
pub mod error;
pub mod incident;
pub mod leader;
pub mod metrics;
pub mod model_deployment;
pub mod namespace;
#[doc(hidden)]
pub mod testing;
pub mod usage;

#[cfg(test)]
mod mock_tests;

use policybind_crds::wire::labels;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, ObjectMeta, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use policybind_crds::{
    AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, Incident, ModelDeployment,
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use context::{Context, Settings, Stores};
pub use error::{Error, Result};
pub use usage::UsageReport;

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

/// Tracks which objects changed in a way that matters to bundles: a new
/// generation (spec) for kinds that have one, any new version otherwise. Our own
/// status writes therefore do not rebuild every bundle.
#[derive(Default)]
struct ChangeFilter {
    seen: HashMap<String, (Option<i64>, Option<String>)>,
}

impl ChangeFilter {
    fn changed<K: Resource>(&mut self, event: &Event<K>) -> bool {
        let key = |meta: &ObjectMeta| meta.uid.clone().unwrap_or_default();
        let version = |meta: &ObjectMeta| match meta.generation {
            Some(g) => (Some(g), None),
            None => (None, meta.resource_version.clone()),
        };
        match event {
            Event::Apply(obj) | Event::InitApply(obj) => {
                let meta = obj.meta();
                let now = version(meta);
                let before = self.seen.insert(key(meta), now.clone());
                matches!(event, Event::Apply(_)) && before != Some(now)
            }
            Event::Delete(obj) => {
                self.seen.remove(&key(obj.meta()));
                true
            }
            Event::Init => false,
            Event::InitDone => true,
        }
    }
}

/// A watch of `api` that fills `writer` and calls `on_event` for every event.
fn watch<K, F>(
    stream: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    writer: reflector::store::Writer<K>,
    mut on_event: F,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: FnMut(&Event<K>) + Send + 'static,
{
    stream
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(event) => on_event(event),
            Err(error) => tracing::warn!(%error, kind = %K::kind(&()), "watch error; retrying"),
        })
}

/// A watch hook that bumps the bundle epoch on changes that matter.
fn bump<K: Resource>(ctx: &Arc<Context>) -> impl FnMut(&Event<K>) + Send + 'static {
    let ctx = ctx.clone();
    let mut filter = ChangeFilter::default();
    move |event: &Event<K>| {
        if filter.changed(event) {
            ctx.bundles_changed();
        }
    }
}

/// Drives a side watch (one without its own controller) to completion.
async fn drive<K>(stream: impl Stream<Item = watcher::Result<Event<K>>> + Send) {
    stream.for_each(|_| futures::future::ready(())).await
}

fn labelled(label: &str) -> watcher::Config {
    watcher::Config::default().labels(label)
}

fn touched<K: Clone>(event: &Event<K>) -> Vec<K> {
    match event {
        Event::Apply(obj) | Event::Delete(obj) => vec![obj.clone()],
        _ => vec![],
    }
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

async fn wait_for_signal() {
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

/// Runs the operator with a given client until `shutdown` is cancelled.
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
    let (policies, policies_w) = reflector::store::<AIPolicy>();
    let (cluster_policies, cluster_policies_w) = reflector::store::<ClusterAIPolicy>();
    let (models, models_w) = reflector::store::<ModelDeployment>();
    let (tokens, tokens_w) = reflector::store::<AccessToken>();
    let (approvals, approvals_w) = reflector::store::<ApprovalRequest>();
    let (incidents, incidents_w) = reflector::store::<Incident>();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let (token_secrets, token_secrets_w) = reflector::store::<Secret>();
    let (usage_reports, usage_reports_w) = reflector::store::<ConfigMap>();
    let (bundles, bundles_w) = reflector::store::<ConfigMap>();
    let (audit_segments, audit_segments_w) = reflector::store::<ConfigMap>();
    let (roles, roles_w) = reflector::store::<Role>();
    let (role_bindings, role_bindings_w) = reflector::store::<RoleBinding>();
    let (pods, pods_w) = reflector::store::<PartialObjectMeta<Pod>>();
    let stores = Stores {
        policies,
        cluster_policies,
        models,
        tokens,
        approvals,
        incidents,
        namespaces,
        token_secrets,
        usage_reports,
        bundles,
        audit_segments,
        roles,
        role_bindings,
        pods,
    };

    let server = tokio::spawn(serve_metrics(
        settings.metrics_listen,
        metrics.clone(),
        stores.clone(),
        ready.clone(),
        settings.approval_ttl,
        shutdown.clone(),
    ));

    let mut lease_task = None;
    let lease_release = CancellationToken::new();
    if settings.leader_election {
        let api: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
        let lease = leader::LeaseSettings::new(
            &settings.lease_namespace,
            &settings.lease_name,
            &settings.identity,
        );
        ready.store(true, Ordering::SeqCst); // a standby is healthy
        tracing::info!(lease = %settings.lease_name, identity = %settings.identity, "waiting for leadership");
        if !leader::acquire(&api, &lease, &shutdown).await? {
            return finish(server, None).await;
        }
        tracing::info!("leadership acquired");
        metrics.is_leader.set(1);
        let shutdown_on_loss = shutdown.clone();
        // The Lease is released only after the controllers stopped, so a standby
        // never acts while an in-flight reconcile of ours still runs.
        let release = lease_release.clone();
        lease_task = Some(tokio::spawn(async move {
            let result = leader::hold(api, lease, release).await;
            if result.is_err() {
                shutdown_on_loss.cancel();
            }
            result
        }));
    } else {
        metrics.is_leader.set(1);
    }

    let (bundle_tx, bundle_rx) = mpsc::unbounded::<()>();
    let (token_tx, token_rx) = mpsc::unbounded::<ObjectRef<AccessToken>>();
    let (model_tx, model_rx) = mpsc::unbounded::<ObjectRef<ModelDeployment>>();
    let (namespace_tx, namespace_rx) = mpsc::unbounded::<ObjectRef<Namespace>>();
    let (audit_tx, audit_rx) = mpsc::unbounded::<()>();
    let audit = start_audit(&client, &settings).await?;
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            stores.clone(),
            settings.clone(),
            metrics.clone(),
            Arc::new(chrono::Utc::now),
            Some(bundle_tx),
        )
        .with_audit(audit),
    );

    // Main watches: each feeds its controller, its cache and the bundle epoch.
    let policy_stream = watch(
        watcher::watcher(Api::<AIPolicy>::all(client.clone()), Default::default()),
        policies_w,
        bump(&ctx),
    )
    .applied_objects();
    let cluster_policy_stream = watch(
        watcher::watcher(
            Api::<ClusterAIPolicy>::all(client.clone()),
            Default::default(),
        ),
        cluster_policies_w,
        bump(&ctx),
    )
    .applied_objects();
    let model_stream = watch(
        watcher::watcher(
            Api::<ModelDeployment>::all(client.clone()),
            Default::default(),
        ),
        models_w,
        bump(&ctx),
    )
    .applied_objects();
    let token_stream = watch(
        watcher::watcher(Api::<AccessToken>::all(client.clone()), Default::default()),
        tokens_w,
        bump(&ctx),
    )
    .applied_objects();
    let approval_stream = {
        let mut filter = ChangeFilter::default();
        let ctx = ctx.clone();
        let model_tx = model_tx.clone();
        watch(
            watcher::watcher(
                Api::<ApprovalRequest>::all(client.clone()),
                Default::default(),
            ),
            approvals_w,
            move |event: &Event<ApprovalRequest>| {
                // Phase lives in status, so any version counts for approvals.
                let _ = filter.changed(event);
                ctx.bundles_changed();
                for request in touched(event) {
                    if let (Some(ns), Some(target)) =
                        (request.namespace(), request.spec.target.name.clone())
                    {
                        let _ = model_tx.unbounded_send(ObjectRef::new(&target).within(&ns));
                    }
                }
            },
        )
        .applied_objects()
    };
    let namespace_stream = watch(
        watcher::watcher(Api::<Namespace>::all(client.clone()), Default::default()),
        namespaces_w,
        bump(&ctx),
    )
    .applied_objects();

    // Side watches: caches plus triggers for the controllers that care.
    let mut side: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![];
    {
        let ctx = ctx.clone();
        let token_tx = token_tx.clone();
        side.push(Box::pin(drive(watch(
            watcher::watcher(Api::<Secret>::all(client.clone()), labelled(labels::TOKEN)),
            token_secrets_w,
            move |event: &Event<Secret>| {
                ctx.bundles_changed();
                for secret in touched(event) {
                    if let (Some(ns), Some(token)) =
                        (secret.namespace(), secret.labels().get(labels::TOKEN))
                    {
                        let _ = token_tx.unbounded_send(ObjectRef::new(token).within(&ns));
                    }
                }
            },
        ))));
    }
    {
        let ctx = ctx.clone();
        let token_tx = token_tx.clone();
        side.push(Box::pin(drive(watch(
            watcher::watcher(
                Api::<ConfigMap>::all(client.clone()),
                labelled(&format!("{}=true", labels::USAGE)),
            ),
            usage_reports_w,
            move |event: &Event<ConfigMap>| {
                let cms = touched(event);
                if !cms.is_empty() {
                    ctx.bundles_changed();
                }
                for cm in cms {
                    for id in UsageReport::from_config_map(&cm)
                        .unwrap_or_default()
                        .0
                        .keys()
                    {
                        if let Some((ns, name)) = id.split_once('/') {
                            let _ = token_tx.unbounded_send(ObjectRef::new(name).within(ns));
                        }
                    }
                }
            },
        ))));
    }
    let child_trigger = |namespace_tx: &mpsc::UnboundedSender<ObjectRef<Namespace>>| {
        let namespace_tx = namespace_tx.clone();
        move |namespace: Option<String>| {
            if let Some(ns) = namespace {
                let _ = namespace_tx.unbounded_send(ObjectRef::new(&ns));
            }
        }
    };
    {
        let trigger = child_trigger(&namespace_tx);
        side.push(Box::pin(drive(watch(
            watcher::watcher(
                Api::<ConfigMap>::all(client.clone()),
                labelled(&format!(
                    "{labels_bundle}=true",
                    labels_bundle = labels::BUNDLE
                )),
            ),
            bundles_w,
            move |event: &Event<ConfigMap>| {
                touched(event)
                    .into_iter()
                    .for_each(|c| trigger(c.namespace()))
            },
        ))));
    }
    let managed = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    {
        let trigger = child_trigger(&namespace_tx);
        side.push(Box::pin(drive(watch(
            watcher::watcher(Api::<Role>::all(client.clone()), labelled(&managed)),
            roles_w,
            move |event: &Event<Role>| {
                touched(event)
                    .into_iter()
                    .for_each(|r| trigger(r.namespace()))
            },
        ))));
    }
    {
        let trigger = child_trigger(&namespace_tx);
        side.push(Box::pin(drive(watch(
            watcher::watcher(Api::<RoleBinding>::all(client.clone()), labelled(&managed)),
            role_bindings_w,
            move |event: &Event<RoleBinding>| {
                touched(event)
                    .into_iter()
                    .for_each(|r| trigger(r.namespace()))
            },
        ))));
    }
    {
        let models_store = stores.models.clone();
        let model_tx = model_tx.clone();
        let trigger = child_trigger(&namespace_tx);
        side.push(Box::pin(drive(watch(
            watcher::watcher(
                Api::<PartialObjectMeta<Pod>>::all(client.clone()),
                Default::default(),
            ),
            pods_w,
            move |event: &Event<PartialObjectMeta<Pod>>| {
                for pod in touched(event) {
                    let ns = pod.namespace();
                    for model in models_store.state() {
                        if model.namespace() == ns {
                            let _ = model_tx.unbounded_send(ObjectRef::from_obj(model.as_ref()));
                        }
                    }
                    // A pod may opt its namespace into enforcement.
                    trigger(ns);
                }
            },
        ))));
    }
    side.push(Box::pin(drive(watch(
        watcher::watcher(Api::<Incident>::all(client.clone()), Default::default()),
        incidents_w,
        |_: &Event<Incident>| {},
    ))));
    {
        let window = settings.incidents.window;
        side.push(Box::pin(drive(watch(
            watcher::watcher(
                Api::<ConfigMap>::all(client.clone()),
                labelled(labels::AUDIT_SEGMENT),
            )
            .modify(move |cm| trim_segment(cm, window)),
            audit_segments_w,
            move |event: &Event<ConfigMap>| {
                if !touched(event).is_empty() {
                    let _ = audit_tx.unbounded_send(());
                }
            },
        ))));
    }

    let stop = shutdown.clone();
    let graceful = move || {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let concurrency = ControllerConfig::default().concurrency(8);
    let policies_ctl = Controller::for_stream(policy_stream, stores.policies.clone())
        .with_config(concurrency.clone())
        .graceful_shutdown_on(graceful())
        .run(ai_policy::reconcile, ai_policy::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let cluster_policies_ctl =
        Controller::for_stream(cluster_policy_stream, stores.cluster_policies.clone())
            .with_config(concurrency.clone())
            .graceful_shutdown_on(graceful())
            .run(
                ai_policy::reconcile_cluster,
                ai_policy::error_policy_cluster,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));
    let models_ctl = Controller::for_stream(model_stream, stores.models.clone())
        .with_config(concurrency.clone().debounce(Duration::from_millis(100)))
        .reconcile_on(model_rx)
        .graceful_shutdown_on(graceful())
        .run(
            model_deployment::reconcile,
            model_deployment::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let tokens_ctl = Controller::for_stream(token_stream, stores.tokens.clone())
        .with_config(concurrency.clone().debounce(Duration::from_millis(100)))
        .reconcile_on(token_rx)
        .graceful_shutdown_on(graceful())
        .run(
            access_token::reconcile,
            access_token::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let approvals_ctl = Controller::for_stream(approval_stream, stores.approvals.clone())
        .with_config(concurrency.clone())
        .graceful_shutdown_on(graceful())
        .run(
            approval_request::reconcile,
            approval_request::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let namespaces_ctl = Controller::for_stream(namespace_stream, stores.namespaces.clone())
        .with_config(
            ControllerConfig::default()
                .concurrency(
                    std::thread::available_parallelism()
                        .map(|n| n.get().min(8) as u16)
                        .unwrap_or(2),
                )
                .debounce(settings.bundle_debounce),
        )
        .reconcile_all_on(bundle_rx)
        .reconcile_on(namespace_rx)
        .graceful_shutdown_on(graceful())
        .run(namespace::reconcile, namespace::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let incident_loop = incident_loop(ctx.clone(), audit_rx, shutdown.clone());
    let retention_loop = {
        let client = client.clone();
        let retention = settings.audit_retention.clone().zip(retention_sink);
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        async move {
            match retention {
                Some((retention, sink)) => {
                    audit_retention::retention_loop(client, retention, sink, metrics, shutdown)
                        .await
                }
                None => tracing::info!("audit retention is off"),
            }
        }
    };

    let caches = {
        let stores = stores.clone();
        let ready = ready.clone();
        let timeout = settings.cache_timeout;
        async move {
            if tokio::time::timeout(timeout, stores.wait_until_ready())
                .await
                .ok()
                == Some(true)
            {
                ready.store(true, Ordering::SeqCst);
                tracing::info!("watch caches filled; controllers running");
            } else {
                tracing::error!(?timeout, "watch caches did not fill in time");
            }
        }
    };

    let sides = futures::future::join_all(side);
    tokio::select! {
        _ = async {
            tokio::join!(
                policies_ctl,
                cluster_policies_ctl,
                models_ctl,
                tokens_ctl,
                approvals_ctl,
                namespaces_ctl,
                incident_loop,
                retention_loop,
                caches,
            )
        } => {}
        _ = sides => {}
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
    lease_release.cancel();
    finish(server, lease_task).await
}

/// Starts the lifecycle audit writer when a signing key is configured.
async fn start_audit(
    client: &Client,
    settings: &Settings,
) -> Result<Option<policybind_audit::AuditWriter>> {
    let key = match (&settings.audit_key_file, &settings.audit_key_secret) {
        (Some(path), _) => {
            policybind_audit::keys::signing_key_from_file(path).map_err(Error::Audit)?
        }
        (None, Some(secret)) => {
            let (namespace, name) = secret
                .split_once('/')
                .unwrap_or((settings.lease_namespace.as_str(), secret.as_str()));
            policybind_audit::keys::signing_key_from_secret(client.clone(), namespace, name)
                .await
                .map_err(Error::Audit)?
        }
        (None, None) => return Ok(None),
    };
    let config = policybind_audit::AuditConfig::new(format!("operator/{}", settings.identity), key);
    let store = Arc::new(policybind_audit::ConfigMapStore::new(
        client.clone(),
        settings.lease_namespace.clone(),
    ));
    let writer = policybind_audit::AuditWriter::start(config, store)
        .await
        .map_err(Error::Audit)?;
    tracing::info!(writer = %writer.writer(), namespace = %settings.lease_namespace, "lifecycle records go to the audit trail");
    Ok(Some(writer))
}

async fn finish(
    server: tokio::task::JoinHandle<Result<()>>,
    lease_task: Option<tokio::task::JoinHandle<Result<()>>>,
) -> Result<()> {
    if let Some(task) = lease_task
        && let Ok(Err(error)) = task.await
    {
        return Err(error);
    }
    match server.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Keeps only the decision records of the last two incident windows in the
/// cached copy of an audit segment: the scan needs no more, and segments are
/// large.
fn trim_segment(cm: &mut ConfigMap, window: Duration) {
    // Segments are gzip (or plain JSON from earlier versions); the trimmed copy
    // is kept as plain JSON, which `incident::records_of` reads too.
    let Ok(json) = policybind_audit::ConfigMapStore::document_of(cm).1 else {
        return;
    };
    let Ok(mut segment) = serde_json::from_slice::<policybind_engine::audit::Segment>(&json) else {
        return;
    };
    let horizon = chrono::Utc::now()
        - chrono::Duration::from_std(window * 2).unwrap_or(chrono::Duration::hours(1));
    segment.records.retain(|r| {
        r.kind == policybind_engine::audit::RecordKind::Decision && r.time.get() > horizon
    });
    if let Ok(trimmed) = serde_json::to_string(&segment) {
        cm.binary_data = None;
        cm.data = Some([(incident::SEGMENT_DATA_KEY.to_string(), trimmed)].into());
    }
}

/// Scans for incidents after audit segments change (debounced) and every minute.
async fn incident_loop(
    ctx: Arc<Context>,
    mut changes: mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
) {
    if tokio::time::timeout(ctx.settings.cache_timeout, ctx.stores.wait_until_ready())
        .await
        .ok()
        != Some(true)
    {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.next() => {
                // Segments are flushed about once per second per writer; coalesce.
                tokio::time::sleep(Duration::from_secs(2)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(error) = incident::scan(&ctx).await {
            ctx.metrics.failed("incident", &error);
            tracing::warn!(%error, "incident scan failed");
        }
    }
}

fn count_phases(metrics: &Metrics, stores: &Stores, approval_ttl: Duration) {
    use metrics::PhaseLabels;
    let now = chrono::Utc::now();
    let mut counts: HashMap<(&'static str, String), i64> = HashMap::new();
    for t in stores.tokens.state() {
        let phase = t
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("Unknown", |p| p.as_str());
        *counts.entry(("AccessToken", phase.into())).or_default() += 1;
    }
    for m in stores.models.state() {
        let approval = m
            .status
            .as_ref()
            .and_then(|s| s.approval)
            .map_or("Unknown", |a| a.as_str());
        *counts
            .entry(("ModelDeployment", approval.into()))
            .or_default() += 1;
    }
    for a in stores.approvals.state() {
        let phase = approval_request::phase(&a, now, approval_ttl);
        *counts
            .entry(("ApprovalRequest", phase.as_str().into()))
            .or_default() += 1;
    }
    for i in stores.incidents.state() {
        *counts
            .entry(("Incident", format!("{:?}", i.spec.state)))
            .or_default() += 1;
    }
    let ready = |c: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>| {
        if c.is_some_and(|c| policybind_crds::conditions::is_true(c, "Ready")) {
            "Ready"
        } else {
            "NotReady"
        }
    };
    for p in stores.policies.state() {
        let phase = ready(p.status.as_ref().map(|s| &s.conditions));
        *counts.entry(("AIPolicy", phase.into())).or_default() += 1;
    }
    for p in stores.cluster_policies.state() {
        let phase = ready(p.status.as_ref().map(|s| &s.conditions));
        *counts.entry(("ClusterAIPolicy", phase.into())).or_default() += 1;
    }
    metrics.objects.clear();
    for ((kind, phase), n) in counts {
        metrics
            .objects
            .get_or_create(&PhaseLabels { kind, phase })
            .set(n);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a plain port.
async fn serve_metrics(
    address: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stores: Stores,
    ready: Arc<AtomicBool>,
    approval_ttl: Duration,
    shutdown: CancellationToken,
) -> Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let stores = stores.clone();
                async move {
                    count_phases(&metrics, &stores, approval_ttl);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "caches filling",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::MetricsServer { address, source })?;
    tracing::info!(%address, "serving metrics and health");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| Error::MetricsServer { address, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::token;

    #[test]
    fn status_only_updates_do_not_count_as_bundle_changes_but_spec_changes_and_deletes_do() {
        let mut filter = ChangeFilter::default();
        let t = token("team-a", "bot").build();
        assert!(!filter.changed(&Event::InitApply(t.clone())));
        assert!(filter.changed(&Event::<AccessToken>::InitDone));
        let mut status_only = t.clone();
        status_only.metadata.resource_version = Some("2".into());
        status_only.status = Some(Default::default());
        assert!(!filter.changed(&Event::Apply(status_only.clone())));
        let mut new_spec = status_only.clone();
        new_spec.metadata.generation = Some(2);
        new_spec.spec.revoked = true;
        assert!(filter.changed(&Event::Apply(new_spec.clone())));
        assert!(filter.changed(&Event::Delete(new_spec)));
    }

    #[test]
    fn objects_without_generation_change_with_every_version() {
        let mut filter = ChangeFilter::default();
        let mut ns = crate::testing::namespace("team-a", true);
        ns.metadata.generation = None;
        assert!(filter.changed(&Event::Apply(ns.clone())));
        assert!(!filter.changed(&Event::Apply(ns.clone())));
        ns.metadata.resource_version = Some("2".into());
        assert!(filter.changed(&Event::Apply(ns)));
    }
}
