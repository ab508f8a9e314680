//! One module per kind, each exposing what it watches and its reconcile
//! (DESIGN.md section 12, "Operator wiring out").
//!
//! Every module has a `run` that starts its watches (each filling its cache in
//! [`crate::stores`] and telling the others what they care about through
//! [`Triggers`]) and its controller, and returns them as [`Tasks`]:
//!
//! - [`ai_policy`]: AIPolicies and ClusterAIPolicies.
//! - [`model_deployment`]: ModelDeployments; pod metadata (matched workloads).
//! - [`access_token`]: AccessTokens; their Secrets and the usage reports.
//! - [`approval_request`]: ApprovalRequests (which also wake their models).
//! - [`namespace`]: Namespaces and what the operator keeps for them (bundles,
//!   reader Roles, sidecar RoleBindings, NetworkPolicies, audit keys).
//! - [`incident`]: a periodic scan of audit segments; Incidents.
//!
//! Modules never call each other's reconcilers: a change one controller sees
//! that another must act on goes through a trigger channel, and shared memory
//! lives in [`crate::state`], which the context owns.
pub mod access_token;
pub mod ai_budget;
pub mod ai_policy;
pub mod approval_request;
pub mod incident;
pub mod model_deployment;
pub mod namespace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::reflector::ObjectRef;
use policybind_crds::{AccessToken, ModelDeployment};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::stores::Reflectors;

/// A watch or a controller, run until shutdown.
pub type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What one module starts. `main` ends at shutdown (controllers drain their
/// in-flight reconciles first); `side` watches only feed caches and triggers,
/// and are dropped once every `main` has ended.
#[derive(Default)]
pub struct Tasks {
    pub main: Vec<Run>,
    pub side: Vec<Run>,
}

impl Tasks {
    fn add(&mut self, other: Tasks) {
        self.main.extend(other.main);
        self.side.extend(other.side);
    }
}

/// How one controller asks another to look at an object.
#[derive(Clone)]
pub struct Triggers {
    pub tokens: UnboundedSender<ObjectRef<AccessToken>>,
    pub models: UnboundedSender<ObjectRef<ModelDeployment>>,
    pub namespaces: UnboundedSender<ObjectRef<Namespace>>,
    /// Audit segments changed: scan for incidents.
    pub audit: UnboundedSender<()>,
}

/// The receiving ends of [`Triggers`], plus the context's bundle trigger.
pub struct Receivers {
    pub tokens: UnboundedReceiver<ObjectRef<AccessToken>>,
    pub models: UnboundedReceiver<ObjectRef<ModelDeployment>>,
    pub namespaces: UnboundedReceiver<ObjectRef<Namespace>>,
    pub audit: UnboundedReceiver<()>,
    /// Fed by [`Context::bundles_changed`]: every namespace's bundle may change.
    pub bundles: UnboundedReceiver<()>,
}

/// The trigger channels; the last value is the bundle trigger the context sends on.
pub fn channels() -> (Triggers, Receivers, UnboundedSender<()>) {
    let (tokens_tx, tokens) = mpsc::unbounded();
    let (models_tx, models) = mpsc::unbounded();
    let (namespaces_tx, namespaces) = mpsc::unbounded();
    let (audit_tx, audit) = mpsc::unbounded();
    let (bundles_tx, bundles) = mpsc::unbounded();
    let triggers = Triggers {
        tokens: tokens_tx,
        models: models_tx,
        namespaces: namespaces_tx,
        audit: audit_tx,
    };
    let receivers = Receivers {
        tokens,
        models,
        namespaces,
        audit,
        bundles,
    };
    (triggers, receivers, bundles_tx)
}

/// What every module is started with.
pub struct Wiring {
    pub client: Client,
    pub ctx: Arc<Context>,
    pub triggers: Triggers,
    pub shutdown: CancellationToken,
}

impl Wiring {
    /// Resolves at shutdown: controllers stop taking work, in-flight reconciles finish.
    pub fn graceful(&self) -> impl Future<Output = ()> + Send + 'static {
        let stop = self.shutdown.clone();
        async move { stop.cancelled().await }
    }

    /// Concurrency of a kind's controller, with an optional debounce.
    fn config(&self, debounce: Option<Duration>) -> ControllerConfig {
        let config = ControllerConfig::default().concurrency(8);
        match debounce {
            Some(quiet) => config.debounce(quiet),
            None => config,
        }
    }
}

/// A reconcile in progress, as [`once_listed`] hands it to the controller.
pub(crate) type Reconciling = Pin<Box<dyn Future<Output = crate::Result<Action>> + Send>>;

/// `reconcile`, run only once every watch cache has listed
/// ([`Context::caches_filled`]; after `cache_timeout` the reconcile fails with
/// `caches_not_ready` and is retried). Reconcilers read other kinds from the
/// caches, and from half-filled ones they act on a cluster that is not there
/// after every restart or failover: an approved model without its
/// ApprovalRequests looks unapproved, a broken policy recovers its last good
/// version from no bundles and its rules leave the next ones, a token's
/// status shows no spend. Every controller's reconciler goes through this.
pub(crate) fn once_listed<K, F, Fut>(
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Context>) -> Reconciling
where
    K: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = crate::Result<Action>> + Send + 'static,
{
    move |object, ctx| {
        Box::pin(async move {
            ctx.caches_filled().await?;
            reconcile(object, ctx).await
        })
    }
}

/// Drains a controller's results (errors are handled by its error policy).
pub(crate) fn drain<S: futures::Stream + Send + 'static>(stream: S) -> Run {
    Box::pin(stream.for_each(|_| futures::future::ready(())))
}

/// Starts every module and runs until shutdown: returns once every controller
/// has stopped.
pub async fn run_all(w: &Wiring, caches: Reflectors, rx: Receivers) {
    let Reflectors {
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
        network_policies,
        audit_keys,
        pods,
        evidence_gates,
        budgets,
    } = caches;
    let mut tasks = Tasks::default();
    tasks.add(ai_policy::run(w, policies, cluster_policies));
    tasks.add(model_deployment::run(
        w,
        models,
        pods,
        evidence_gates,
        rx.models,
    ));
    tasks.add(access_token::run(
        w,
        tokens,
        token_secrets,
        usage_reports,
        rx.tokens,
    ));
    tasks.add(approval_request::run(w, approvals));
    tasks.add(ai_budget::run(w, budgets));
    tasks.add(namespace::run(
        w,
        namespaces,
        namespace::Children {
            bundles,
            roles,
            role_bindings,
            network_policies,
            audit_keys,
        },
        rx.namespaces,
        rx.bundles,
    ));
    tasks.add(incident::run(w, incidents, audit_segments, rx.audit));
    tasks.main.push(Box::pin(crate::ledger::run(
        w.ctx.clone(),
        w.shutdown.clone(),
        w.triggers.tokens.clone(),
    )));
    tokio::select! {
        _ = futures::future::join_all(tasks.main) => {}
        _ = futures::future::join_all(tasks.side) => {}
    }
}
