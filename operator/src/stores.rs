//! The watch caches: one watch per kind, shared by the kind's controller, the
//! bundle builder and the metrics. [`Stores`] is the read side every reconciler
//! sees; [`Reflectors`] holds the writers, which the controllers' watches fill
//! ([`crate::controllers`] hands each controller its own).
//!
//! Reconcilers read only from these caches, never from the API server, so a
//! second reconcile of an unchanged object makes no call at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use policybind_crds::{
    AIBudget, AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, EvidenceGate, Incident,
    ModelDeployment,
};

use crate::context::Context;

/// Read-only views of the watch caches.
#[derive(Clone)]
pub struct Stores {
    pub policies: Store<AIPolicy>,
    pub cluster_policies: Store<ClusterAIPolicy>,
    pub models: Store<ModelDeployment>,
    pub tokens: Store<AccessToken>,
    pub approvals: Store<ApprovalRequest>,
    pub incidents: Store<Incident>,
    pub namespaces: Store<Namespace>,
    /// Secrets labelled [`labels::TOKEN`] (only ours are cached).
    pub token_secrets: Store<Secret>,
    /// ConfigMaps labelled [`labels::USAGE`].
    pub usage_reports: Store<ConfigMap>,
    /// ConfigMaps labelled `policybind.io/bundle`: the bundles in the operator's
    /// namespace, and those of the layout before in workload namespaces (to delete).
    pub bundles: Store<ConfigMap>,
    /// ConfigMaps labelled `policybind.io/audit-segment`.
    pub audit_segments: Store<ConfigMap>,
    /// Roles and RoleBindings labelled managed-by policybind.
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    /// NetworkPolicies labelled managed-by policybind.
    pub network_policies: Store<NetworkPolicy>,
    /// Secrets named `policybind-audit-key` in any namespace (ours, or brought
    /// by an administrator: either way never overwritten).
    pub audit_keys: Store<Secret>,
    /// Pod metadata only: enough to count matched workloads without caching pod specs.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// EvidenceGates: a model's `Compliant` condition is judged against them.
    pub evidence_gates: Store<EvidenceGate>,
    /// AIBudgets: in the bundles of their namespace, with spend in status.
    pub budgets: Store<AIBudget>,
}

impl Stores {
    /// Waits until every cache has been filled once. The bundle builder must not
    /// run before: an empty token cache would publish bundles without tokens.
    /// `false` if a cache's writer was dropped first (shutdown).
    ///
    /// Call it from one task only ([`Context::caches_filled`] does, for all).
    pub async fn wait_until_ready(&self) -> bool {
        listed(&self.policies).await
            && listed(&self.cluster_policies).await
            && listed(&self.models).await
            && listed(&self.tokens).await
            && listed(&self.approvals).await
            && listed(&self.incidents).await
            && listed(&self.namespaces).await
            && listed(&self.token_secrets).await
            && listed(&self.usage_reports).await
            && listed(&self.bundles).await
            && listed(&self.audit_segments).await
            && listed(&self.roles).await
            && listed(&self.role_bindings).await
            && listed(&self.network_policies).await
            && listed(&self.audit_keys).await
            && listed(&self.pods).await
            && listed(&self.evidence_gates).await
            && listed(&self.budgets).await
    }
}

/// How often [`listed`] looks again.
const LISTED_POLL: Duration = Duration::from_millis(100);

/// Whether `store` has listed once; `false` if its writer was dropped first.
///
/// Written by hand around `Store::wait_until_ready` because that one wakes
/// only the task that polled it last (kube-runtime keeps one waker per
/// store), and each controller's own runner waits on its store too: a wake
/// taken by the runner would leave this wait asleep until a timeout. So it
/// looks again every [`LISTED_POLL`] instead of counting on the wake.
async fn listed<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(LISTED_POLL, store.wait_until_ready()).await {
            return ready.is_ok();
        }
    }
}

/// The writing side of every cache in [`Stores`].
pub struct Reflectors {
    pub policies: Writer<AIPolicy>,
    pub cluster_policies: Writer<ClusterAIPolicy>,
    pub models: Writer<ModelDeployment>,
    pub tokens: Writer<AccessToken>,
    pub approvals: Writer<ApprovalRequest>,
    pub incidents: Writer<Incident>,
    pub namespaces: Writer<Namespace>,
    pub token_secrets: Writer<Secret>,
    pub usage_reports: Writer<ConfigMap>,
    pub bundles: Writer<ConfigMap>,
    pub audit_segments: Writer<ConfigMap>,
    pub roles: Writer<Role>,
    pub role_bindings: Writer<RoleBinding>,
    pub network_policies: Writer<NetworkPolicy>,
    pub audit_keys: Writer<Secret>,
    pub pods: Writer<PartialObjectMeta<Pod>>,
    pub evidence_gates: Writer<EvidenceGate>,
    pub budgets: Writer<AIBudget>,
}

impl Stores {
    /// Empty caches, with the writers that fill them.
    pub fn new() -> (Stores, Reflectors) {
        let (policies, policies_w) = reflector::store();
        let (cluster_policies, cluster_policies_w) = reflector::store();
        let (models, models_w) = reflector::store();
        let (tokens, tokens_w) = reflector::store();
        let (approvals, approvals_w) = reflector::store();
        let (incidents, incidents_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (token_secrets, token_secrets_w) = reflector::store();
        let (usage_reports, usage_reports_w) = reflector::store();
        let (bundles, bundles_w) = reflector::store();
        let (audit_segments, audit_segments_w) = reflector::store();
        let (roles, roles_w) = reflector::store();
        let (role_bindings, role_bindings_w) = reflector::store();
        let (network_policies, network_policies_w) = reflector::store();
        let (audit_keys, audit_keys_w) = reflector::store();
        let (pods, pods_w) = reflector::store();
        let (evidence_gates, evidence_gates_w) = reflector::store();
        let (budgets, budgets_w) = reflector::store();
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
            network_policies,
            audit_keys,
            pods,
            evidence_gates,
            budgets,
        };
        let reflectors = Reflectors {
            policies: policies_w,
            cluster_policies: cluster_policies_w,
            models: models_w,
            tokens: tokens_w,
            approvals: approvals_w,
            incidents: incidents_w,
            namespaces: namespaces_w,
            token_secrets: token_secrets_w,
            usage_reports: usage_reports_w,
            bundles: bundles_w,
            audit_segments: audit_segments_w,
            roles: roles_w,
            role_bindings: role_bindings_w,
            network_policies: network_policies_w,
            audit_keys: audit_keys_w,
            pods: pods_w,
            evidence_gates: evidence_gates_w,
            budgets: budgets_w,
        };
        (stores, reflectors)
    }
}

/// Tracks which objects changed in a way that matters to bundles: a new
/// generation (spec) for kinds that have one, any new version otherwise. Our own
/// status writes therefore do not rebuild every bundle.
#[derive(Default)]
pub struct ChangeFilter {
    seen: HashMap<String, (Option<i64>, Option<String>)>,
}

impl ChangeFilter {
    pub fn changed<K: Resource>(&mut self, event: &Event<K>) -> bool {
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

/// A watch stream that fills `writer` and calls `on_event` for every event.
pub fn watch<K, F>(
    stream: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    writer: Writer<K>,
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
pub fn bump<K: Resource>(ctx: &Arc<Context>) -> impl FnMut(&Event<K>) + Send + 'static {
    let ctx = ctx.clone();
    let mut filter = ChangeFilter::default();
    move |event: &Event<K>| {
        if filter.changed(event) {
            ctx.bundles_changed();
        }
    }
}

/// Drives a side watch (one without its own controller) to completion.
pub async fn drive<K>(stream: impl Stream<Item = watcher::Result<Event<K>>> + Send) {
    stream.for_each(|_| futures::future::ready(())).await
}

/// A watch of objects carrying `label` (a label selector).
pub fn labelled(label: &str) -> watcher::Config {
    watcher::Config::default().labels(label)
}

/// The objects an event applies or deletes.
pub fn touched<K: Clone>(event: &Event<K>) -> Vec<K> {
    match event {
        Event::Apply(obj) | Event::Delete(obj) => vec![obj.clone()],
        _ => vec![],
    }
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
