//! Where an enforcement point sends a model's requests: the registered
//! provider, endpoint and the reference to the Secret with the provider's key.
//!
//! Only the Secret's name and key travel in bundles; the enforcement point reads
//! the value itself (see the sidecar's `credentials` module).

use policybind_crds::SecretKeyRef;

use crate::compile::PolicySet;

/// How requests for one registered model leave the enforcement point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRoute<'a> {
    /// `namespace/name` of the ModelDeployment.
    pub deployment: &'a str,
    /// `spec.provider`, e.g. `openai`.
    pub provider: &'a str,
    /// `spec.endpoint`, the base URL, when set.
    pub endpoint: Option<&'a str>,
    /// `spec.credentials.secretRef`, when set.
    pub credentials: Option<&'a SecretKeyRef>,
}

impl PolicySet {
    /// The route of a model name or alias as a request in `namespace` resolves
    /// it (the namespace's own registration first, then a shared one).
    pub fn model_route(&self, model: &str, namespace: &str) -> Option<ModelRoute<'_>> {
        let model = self.resolve_model(model, namespace)?;
        Some(ModelRoute {
            deployment: &model.id,
            provider: &model.provider,
            endpoint: model.endpoint.as_deref(),
            credentials: model.credentials.as_ref(),
        })
    }
}
