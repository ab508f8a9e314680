//! The policy bundle: everything an enforcement point needs, in one serializable
//! value (DESIGN.md section 4).
//!
//! The operator builds one bundle per namespace from the cluster and writes it to a
//! ConfigMap; standalone mode and `policybind test` build one from a directory of
//! manifests ([`crate::manifest`]). Either way, [`crate::PolicySet::compile`] turns it
//! into the indexed, immutable set that decides requests. A bundle holds token
//! hashes, never token values.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use policybind_crds::ai_policy::CustomDetectorSpec;
use policybind_crds::model_deployment::ApprovalState;
use policybind_crds::{
    AIBudget, AIBudgetSpec, AIPolicy, AccessToken, AccessTokenSpec, ClusterAIPolicy, Effect,
    Enforcement, ModelDeployment, ModelDeploymentSpec, PolicyRule, RiskLevel,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version of the bundle, bumped on incompatible changes.
pub const BUNDLE_FORMAT: u32 = 1;

/// Everything one enforcement point decides with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// Bundle format version ([`BUNDLE_FORMAT`]).
    pub format: u32,
    /// Namespace the bundle is for; `None` covers every namespace (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Effect when no rule matches. Deny unless configured.
    #[serde(default = "default_effect")]
    pub default_effect: Effect,
    /// Deny requests for models that no ModelDeployment registers.
    #[serde(default = "yes")]
    pub require_registered_models: bool,
    pub policies: Vec<BundlePolicy>,
    pub models: Vec<BundleModel>,
    pub tokens: Vec<BundleToken>,
    /// AIBudgets: limits of namespaces, teams, applications and token groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BundleBudget>,
    /// Labels of namespaces, for ClusterAIPolicy namespace selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

fn default_effect() -> Effect {
    Effect::Deny
}

fn yes() -> bool {
    true
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle {
            format: BUNDLE_FORMAT,
            namespace: None,
            default_effect: Effect::Deny,
            require_registered_models: true,
            policies: vec![],
            models: vec![],
            tokens: vec![],
            budgets: vec![],
            namespace_labels: BTreeMap::new(),
        }
    }
}

/// Which kind a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    AIPolicy,
    ClusterAIPolicy,
}

/// A policy of either kind, normalized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundlePolicy {
    pub kind: PolicyKind,
    /// Namespace of an AIPolicy; `None` for a ClusterAIPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub enforcement: Enforcement,
    pub priority: i32,
    /// Namespaces (names or globs) a ClusterAIPolicy applies to; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_detectors: Vec<CustomDetectorSpec>,
    pub rules: Vec<PolicyRule>,
}

impl BundlePolicy {
    /// `namespace/name` for an AIPolicy, `name` for a ClusterAIPolicy.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn from_ai_policy(policy: &AIPolicy) -> Self {
        let spec = &policy.spec;
        BundlePolicy {
            kind: PolicyKind::AIPolicy,
            namespace: Some(policy.metadata.namespace.clone().unwrap_or_default()),
            name: policy.metadata.name.clone().unwrap_or_default(),
            enforcement: spec.enforcement,
            priority: spec.priority,
            namespaces: vec![],
            namespace_selector: None,
            custom_detectors: spec.custom_detectors.clone(),
            rules: spec.rules.clone(),
        }
    }

    pub fn from_cluster_policy(policy: &ClusterAIPolicy) -> Self {
        let spec = &policy.spec;
        BundlePolicy {
            kind: PolicyKind::ClusterAIPolicy,
            namespace: None,
            name: policy.metadata.name.clone().unwrap_or_default(),
            enforcement: spec.enforcement,
            priority: spec.priority,
            namespaces: spec.namespaces.clone(),
            namespace_selector: spec.namespace_selector.clone(),
            custom_detectors: spec.custom_detectors.clone(),
            rules: spec.rules.clone(),
        }
    }
}

/// A registered model with the state the operator computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleModel {
    pub namespace: String,
    pub name: String,
    pub spec: ModelDeploymentSpec,
    pub risk_level: RiskLevel,
    pub approval: ApprovalState,
    /// Review overdue (informational; suspension, if configured, shows in `spec.suspended`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review_overdue: bool,
}

impl BundleModel {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// State of a ModelDeployment: from its status when the operator wrote one, otherwise
    /// computed here from its risk factors, with `approved` telling whether an approved
    /// ApprovalRequest exists for it (offline and standalone use).
    pub fn from_model(model: &ModelDeployment, approved: Option<bool>) -> Self {
        let assessment = crate::risk::assess(&model.spec.risk);
        let status = model.status.as_ref();
        let risk_level = status
            .and_then(|s| s.risk_level)
            .unwrap_or(assessment.level);
        let approval = status.and_then(|s| s.approval).unwrap_or_else(|| {
            if !risk_level.requires_approval() {
                ApprovalState::NotRequired
            } else {
                match approved {
                    Some(true) => ApprovalState::Approved,
                    Some(false) => ApprovalState::Rejected,
                    None => ApprovalState::Pending,
                }
            }
        });
        BundleModel {
            namespace: model.metadata.namespace.clone().unwrap_or_default(),
            name: model.metadata.name.clone().unwrap_or_default(),
            spec: model.spec.decision_fields(),
            risk_level,
            approval,
            review_overdue: false,
        }
    }
}

/// A token's limits and the hashes of its valid values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleToken {
    pub namespace: String,
    pub name: String,
    pub spec: AccessTokenSpec,
    /// The AccessToken's labels, for AIBudget scopes (application, token selectors).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// SHA-256 (hex) of each value that is accepted: the current one, and during a
    /// rotation grace period the previous one.
    pub hashes: Vec<TokenHash>,
    /// The current budget period is used up (from the operator's usage tally).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exhausted: bool,
    /// Only cost limits are used up (no token limit is): requests to models
    /// priced at zero (estimated cost 0) stay allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exhausted_cost_only: bool,
}

impl BundleToken {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn from_token(token: &AccessToken, hashes: Vec<TokenHash>) -> Self {
        BundleToken {
            namespace: token.metadata.namespace.clone().unwrap_or_default(),
            name: token.metadata.name.clone().unwrap_or_default(),
            spec: token.spec.clone(),
            labels: token.metadata.labels.clone().unwrap_or_default(),
            hashes,
            exhausted: false,
            exhausted_cost_only: false,
        }
    }
}

/// An AIBudget as enforcement points see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleBudget {
    pub namespace: String,
    pub name: String,
    pub spec: AIBudgetSpec,
}

impl BundleBudget {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn from_budget(budget: &AIBudget) -> Self {
        BundleBudget {
            namespace: budget.metadata.namespace.clone().unwrap_or_default(),
            name: budget.metadata.name.clone().unwrap_or_default(),
            spec: budget.spec.clone(),
        }
    }
}

/// SHA-256 of a token value, with an optional end of validity (rotation grace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenHash {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
}

/// Hex SHA-256 of a token value. The only form in which a value leaves its Secret.
pub fn hash_token(value: &str) -> String {
    hex::encode(Sha256::digest(value.trim().as_bytes()))
}

impl Bundle {
    /// Puts every list in a canonical order so that equal content gives equal bytes
    /// (and so an equal fingerprint), whatever order the objects were listed in.
    pub fn normalize(&mut self) {
        self.policies
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        self.models
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.tokens
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.budgets
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for token in &mut self.tokens {
            token.hashes.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        }
    }

    /// SHA-256 over the canonical JSON of the normalized bundle: the fingerprint every
    /// decision and audit record carries.
    pub fn fingerprint(&self) -> String {
        let mut copy = self.clone();
        copy.normalize();
        let bytes = serde_json::to_vec(&copy).expect("a bundle always serializes");
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }
}
