//! The cluster state admission decisions read: ModelDeployments (is the model
//! registered, approved, suspended), policies (conflicts with what already exists)
//! and namespace labels (enforcement, allowed data classification).
//!
//! Handlers see it through [`ClusterView`], a synchronous read of local caches:
//! an admission review never waits on the API server for these. In a cluster the
//! caches are kube reflector stores ([`KubeView`]); tests and the load test use
//! [`StaticView`].

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use policybind_crds::{AIPolicy, ClusterAIPolicy, EvidenceGate, ModelDeployment};

/// Read access to the cached cluster state.
pub trait ClusterView: Send + Sync {
    /// A ModelDeployment by namespace and name.
    fn model(&self, namespace: &str, name: &str) -> Option<Arc<ModelDeployment>>;
    /// Every ModelDeployment (for duplicate model names).
    fn models(&self) -> Vec<Arc<ModelDeployment>>;
    /// Labels of a namespace; `None` when the namespace is unknown.
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
    /// AIPolicies of one namespace.
    fn ai_policies(&self, namespace: &str) -> Vec<Arc<AIPolicy>>;
    /// Every ClusterAIPolicy.
    fn cluster_policies(&self) -> Vec<Arc<ClusterAIPolicy>>;
    /// Every EvidenceGate (approvals of models must pass them).
    fn evidence_gates(&self) -> Vec<Arc<EvidenceGate>>;
}

/// An in-memory view, filled by hand.
#[derive(Default)]
pub struct StaticView {
    inner: RwLock<StaticState>,
}

#[derive(Default)]
struct StaticState {
    models: Vec<Arc<ModelDeployment>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    ai_policies: Vec<Arc<AIPolicy>>,
    cluster_policies: Vec<Arc<ClusterAIPolicy>>,
    evidence_gates: Vec<Arc<EvidenceGate>>,
}

impl StaticView {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_model(&self, model: ModelDeployment) -> &Self {
        self.inner
            .write()
            .expect("view lock")
            .models
            .push(Arc::new(model));
        self
    }

    pub fn add_namespace(&self, name: &str, labels: &[(&str, &str)]) -> &Self {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.inner
            .write()
            .expect("view lock")
            .namespaces
            .insert(name.to_string(), labels);
        self
    }

    pub fn add_ai_policy(&self, policy: AIPolicy) -> &Self {
        self.inner
            .write()
            .expect("view lock")
            .ai_policies
            .push(Arc::new(policy));
        self
    }

    pub fn add_evidence_gate(&self, gate: EvidenceGate) -> &Self {
        self.inner
            .write()
            .expect("view lock")
            .evidence_gates
            .push(Arc::new(gate));
        self
    }

    pub fn add_cluster_policy(&self, policy: ClusterAIPolicy) -> &Self {
        self.inner
            .write()
            .expect("view lock")
            .cluster_policies
            .push(Arc::new(policy));
        self
    }
}

impl ClusterView for StaticView {
    fn model(&self, namespace: &str, name: &str) -> Option<Arc<ModelDeployment>> {
        let state = self.inner.read().expect("view lock");
        state
            .models
            .iter()
            .find(|m| {
                m.metadata.namespace.as_deref() == Some(namespace)
                    && m.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    fn models(&self) -> Vec<Arc<ModelDeployment>> {
        self.inner.read().expect("view lock").models.clone()
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.inner
            .read()
            .expect("view lock")
            .namespaces
            .get(namespace)
            .cloned()
    }

    fn ai_policies(&self, namespace: &str) -> Vec<Arc<AIPolicy>> {
        let state = self.inner.read().expect("view lock");
        state
            .ai_policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }

    fn cluster_policies(&self) -> Vec<Arc<ClusterAIPolicy>> {
        self.inner
            .read()
            .expect("view lock")
            .cluster_policies
            .clone()
    }

    fn evidence_gates(&self) -> Vec<Arc<EvidenceGate>> {
        self.inner.read().expect("view lock").evidence_gates.clone()
    }
}

/// The view over kube reflector stores, kept current by watches started in
/// [`crate::run`].
#[derive(Clone)]
pub struct KubeView {
    pub models: Store<ModelDeployment>,
    pub namespaces: Store<Namespace>,
    pub ai_policies: Store<AIPolicy>,
    pub cluster_policies: Store<ClusterAIPolicy>,
    pub evidence_gates: Store<EvidenceGate>,
}

impl ClusterView for KubeView {
    fn model(&self, namespace: &str, name: &str) -> Option<Arc<ModelDeployment>> {
        self.models.get(&ObjectRef::new(name).within(namespace))
    }

    fn models(&self) -> Vec<Arc<ModelDeployment>> {
        self.models.state()
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }

    fn ai_policies(&self, namespace: &str) -> Vec<Arc<AIPolicy>> {
        self.ai_policies
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    fn cluster_policies(&self) -> Vec<Arc<ClusterAIPolicy>> {
        self.cluster_policies.state()
    }

    fn evidence_gates(&self) -> Vec<Arc<EvidenceGate>> {
        self.evidence_gates.state()
    }
}
