//! What applies in one namespace (DESIGN.md section 4, "Scopes that match Kubernetes").
//!
//! One set of rules, used wherever a bundle is cut for a namespace: by the operator
//! for every enforced namespace, and by `policybind serve --namespace` and
//! [`crate::manifest::Manifests::bundle`] in standalone mode, so a directory of
//! manifests means the same thing on a laptop as in a cluster.
//!
//! - **Tokens**: an AccessToken is valid in its own namespace and in the namespaces
//!   its `spec.additionalNamespaces` names (admission checked that whoever named them
//!   may create tokens there). Nowhere else.
//! - **Models**: a name resolves to the registration in the request's own namespace
//!   first, then to the one registration of that name shared cluster-wide
//!   (`spec.scope: Cluster`). Two teams can self-host the same model under the same
//!   name; a namespace-scoped registration elsewhere is invisible.
//! - **Policies**: an AIPolicy applies in its own namespace; a ClusterAIPolicy in
//!   the namespaces its `namespaces` globs and `namespaceSelector` select.

use std::collections::{BTreeMap, HashSet};

use policybind_crds::AccessTokenSpec;
use policybind_crds::model_deployment::ModelScope;

use crate::bundle::{Bundle, BundleModel, BundlePolicy, BundleToken};

/// Whether a token is accepted by enforcement points of `namespace`.
pub fn token_valid_in(token: &BundleToken, namespace: &str) -> bool {
    spec_valid_in(&token.namespace, &token.spec, namespace)
}

/// The rule of [`token_valid_in`] for a token of `token_namespace` with `spec`,
/// for callers that hold the AccessToken rather than its bundle entry (the
/// operator counting usage reports).
pub fn spec_valid_in(token_namespace: &str, spec: &AccessTokenSpec, namespace: &str) -> bool {
    token_namespace == namespace || spec.additional_namespaces.iter().any(|n| n == namespace)
}

/// Whether `model` can be resolved from `namespace` at all (it may still be
/// shadowed by a registration of the same name in `namespace`).
pub fn model_visible_in(model: &BundleModel, namespace: &str) -> bool {
    model.namespace == namespace || model.spec.scope == ModelScope::Cluster
}

/// Every name (model id and aliases) a registration answers to.
pub fn model_names(model: &BundleModel) -> impl Iterator<Item = &str> {
    std::iter::once(model.spec.model.as_str()).chain(model.spec.aliases.iter().map(String::as_str))
}

/// Whether a policy applies in `namespace`, whose labels are `labels`.
pub fn policy_applies(
    policy: &BundlePolicy,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if let Some(own) = &policy.namespace {
        return own == namespace;
    }
    let by_name = policy.namespaces.is_empty()
        || crate::selector::glob_set(&policy.namespaces)
            .map(|globs| globs.is_match(namespace))
            // A ClusterAIPolicy with a bad glob never compiles, so it is never in
            // force; staying out is the safe reading.
            .unwrap_or(false);
    let by_selector = policy
        .namespace_selector
        .as_ref()
        .is_none_or(|s| crate::selector::matches(s, labels));
    by_name && by_selector
}

/// The models `namespace` can resolve: its own registrations, then the shared
/// ones whose names none of its own registrations claims. Input order is kept.
pub fn visible_models<'a>(
    models: impl IntoIterator<Item = &'a BundleModel> + Clone,
    namespace: &str,
) -> Vec<&'a BundleModel> {
    let own_names: HashSet<&str> = models
        .clone()
        .into_iter()
        .filter(|m| m.namespace == namespace)
        .flat_map(model_names)
        .collect();
    models
        .into_iter()
        .filter(|m| {
            m.namespace == namespace
                || (m.spec.scope == ModelScope::Cluster
                    && !model_names(m).any(|n| own_names.contains(n)))
        })
        .collect()
}

/// The bundle an enforcement point of `namespace` decides with, cut from
/// cluster-wide lists. Only what applies is cloned.
pub fn bundle_for(
    namespace: &str,
    policies: &[BundlePolicy],
    models: &[BundleModel],
    tokens: &[BundleToken],
    budgets: &[crate::bundle::BundleBudget],
    all_namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Bundle {
    let empty = BTreeMap::new();
    let labels = all_namespace_labels.get(namespace).unwrap_or(&empty);
    let mut namespace_labels = BTreeMap::new();
    if !labels.is_empty() {
        namespace_labels.insert(namespace.to_string(), labels.clone());
    }
    let mut bundle = Bundle {
        namespace: Some(namespace.to_string()),
        policies: policies
            .iter()
            .filter(|p| policy_applies(p, namespace, labels))
            .cloned()
            .collect(),
        models: visible_models(models, namespace)
            .into_iter()
            .cloned()
            .collect(),
        tokens: tokens
            .iter()
            .filter(|t| token_valid_in(t, namespace))
            .cloned()
            .collect(),
        // An AIBudget covers requests decided in its own namespace only.
        budgets: budgets
            .iter()
            .filter(|b| b.namespace == namespace)
            .cloned()
            .collect(),
        namespace_labels,
        ..Default::default()
    };
    bundle.normalize();
    bundle
}

impl Bundle {
    /// The part of this bundle that applies in `namespace`: what an enforcement
    /// point there decides with.
    pub fn scoped_to(&self, namespace: &str) -> Bundle {
        Bundle {
            format: self.format,
            default_effect: self.default_effect,
            require_registered_models: self.require_registered_models,
            ..bundle_for(
                namespace,
                &self.policies,
                &self.models,
                &self.tokens,
                &self.budgets,
                &self.namespace_labels,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleModel, BundleToken};
    use policybind_crds::RiskLevel;
    use policybind_crds::model_deployment::{ApprovalState, ModelDeploymentSpec};

    fn model(namespace: &str, name: &str, model: &str, scope: ModelScope) -> BundleModel {
        let spec: ModelDeploymentSpec = serde_json::from_value(serde_json::json!({
            "provider": "self-hosted", "model": model, "owner": "o", "team": "t",
        }))
        .unwrap();
        BundleModel {
            namespace: namespace.into(),
            name: name.into(),
            spec: ModelDeploymentSpec { scope, ..spec },
            risk_level: RiskLevel::Low,
            approval: ApprovalState::NotRequired,
            review_overdue: false,
        }
    }

    fn token(namespace: &str, additional: &[&str]) -> BundleToken {
        let spec: AccessTokenSpec = serde_json::from_value(serde_json::json!({
            "subject": {"kind": "User", "name": "u"}, "team": "t", "allowedModels": ["*"],
        }))
        .unwrap();
        BundleToken {
            namespace: namespace.into(),
            name: "t".into(),
            labels: Default::default(),
            spec: AccessTokenSpec {
                additional_namespaces: additional.iter().map(|s| s.to_string()).collect(),
                ..spec
            },
            hashes: vec![],
            exhausted: false,
            exhausted_cost_only: false,
        }
    }

    #[test]
    fn a_token_is_valid_in_its_own_namespace_and_the_ones_it_names_only() {
        let t = token("team-a", &["team-b"]);
        assert!(token_valid_in(&t, "team-a"));
        assert!(token_valid_in(&t, "team-b"));
        assert!(!token_valid_in(&t, "team-c"));
    }

    #[test]
    fn own_registration_shadows_a_shared_one_and_other_namespaces_stay_invisible() {
        let models = [
            model("platform", "gpt", "gpt-4o", ModelScope::Cluster),
            model("team-a", "gpt", "gpt-4o", ModelScope::Namespace),
            model("team-b", "llama", "llama-3", ModelScope::Namespace),
            model("platform", "mini", "gpt-4o-mini", ModelScope::Cluster),
        ];
        let ids = |ns: &str| -> Vec<String> {
            visible_models(&models, ns).iter().map(|m| m.id()).collect()
        };
        assert_eq!(ids("team-a"), vec!["team-a/gpt", "platform/mini"]);
        assert_eq!(
            ids("team-b"),
            vec!["platform/gpt", "team-b/llama", "platform/mini"]
        );
        assert_eq!(ids("team-c"), vec!["platform/gpt", "platform/mini"]);
    }

    #[test]
    fn scoped_bundle_keeps_only_what_applies_in_the_namespace() {
        let bundle = Bundle {
            models: vec![
                model("team-a", "m", "x", ModelScope::Namespace),
                model("team-b", "m", "x", ModelScope::Namespace),
            ],
            tokens: vec![token("team-a", &[]), token("team-b", &["team-a"])],
            ..Default::default()
        };
        let scoped = bundle.scoped_to("team-a");
        assert_eq!(scoped.namespace.as_deref(), Some("team-a"));
        assert_eq!(scoped.models.len(), 1);
        assert_eq!(scoped.models[0].namespace, "team-a");
        assert_eq!(scoped.tokens.len(), 2);
        assert_eq!(bundle.scoped_to("team-c").tokens.len(), 0);
    }
}
