//! Fixture builders for tests and the bundle benchmark: `token("ns", "name")
//! .expires(t).build()` instead of copied YAML. Not part of the operator's API.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use policybind_crds::access_token::{SubjectKind, TokenSubject};
use policybind_crds::model_deployment::RiskFactors;
use policybind_crds::wire::{annotations, labels};
use policybind_crds::{
    AIPolicy, AccessToken, AccessTokenSpec, Budget, ClusterAIPolicy, DataClassification,
    ModelDeployment, ModelDeploymentSpec, PolicyRule, RiskLevel,
};

use crate::context::to_jiff;

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        uid: Some(format!("uid-{}-{name}", namespace.unwrap_or("cluster"))),
        generation: Some(1),
        resource_version: Some("1".into()),
        creation_timestamp: Some(Time(to_jiff(
            "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap(),
        ))),
        ..Default::default()
    }
}

/// Builder of an AccessToken.
pub struct TokenBuilder(AccessToken);

/// A token for user `<name>-user`, team `team`, any model.
pub fn token(namespace: &str, name: &str) -> TokenBuilder {
    let spec = AccessTokenSpec {
        subject: TokenSubject {
            kind: SubjectKind::User,
            name: format!("{name}-user"),
        },
        team: "team".into(),
        allowed_models: vec!["*".into()],
        allowed_use_cases: vec![],
        default_use_case: None,
        max_data_classification: DataClassification::Internal,
        default_data_classification: None,
        budgets: vec![],
        rate_limit: None,
        schedule: None,
        not_before: None,
        expires_at: None,
        revoked: false,
        secret_name: None,
        rotation_grace_seconds: None,
        additional_namespaces: vec![],
    };
    let mut token = AccessToken::new(name, spec);
    token.metadata = meta(Some(namespace), name);
    TokenBuilder(token)
}

impl TokenBuilder {
    pub fn budget(mut self, budget: Budget) -> Self {
        self.0.spec.budgets.push(budget);
        self
    }
    pub fn expires(mut self, at: &str) -> Self {
        self.0.spec.expires_at = Some(at.parse().unwrap());
        self
    }
    pub fn revoked(mut self) -> Self {
        self.0.spec.revoked = true;
        self
    }
    pub fn restricted(mut self) -> Self {
        self.0.spec.max_data_classification = DataClassification::Restricted;
        self
    }
    pub fn rotate(mut self, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(annotations::ROTATE.into(), value.into());
        self
    }
    pub fn spec(self) -> AccessTokenSpec {
        self.0.spec
    }
    pub fn build(self) -> AccessToken {
        self.0
    }
}

/// Builder of a ModelDeployment.
pub struct ModelBuilder(ModelDeployment);

/// A model `name` served as `name`, no risk factors, created 2026-11-01.
pub fn model(namespace: &str, name: &str) -> ModelBuilder {
    let spec: ModelDeploymentSpec = serde_json::from_value(serde_json::json!({
        "provider": "openai",
        "model": name,
        "owner": "owner@example.com",
        "team": "team",
    }))
    .unwrap();
    let mut model = ModelDeployment::new(name, spec);
    model.metadata = meta(Some(namespace), name);
    ModelBuilder(model)
}

impl ModelBuilder {
    pub fn factors(mut self, factors: RiskFactors) -> Self {
        self.0.spec.risk.factors = factors;
        self
    }
    pub fn level(mut self, level: RiskLevel) -> Self {
        self.0.spec.risk.level = Some(level);
        self
    }
    pub fn suspended(mut self) -> Self {
        self.0.spec.suspended = true;
        self
    }
    /// `scope: Cluster`: every namespace without its own registration resolves to it.
    pub fn shared(mut self) -> Self {
        self.0.spec.scope = policybind_crds::model_deployment::ModelScope::Cluster;
        self
    }
    pub fn review_every(mut self, days: u32, suspend_when_overdue: bool) -> Self {
        self.0.spec.review_interval_days = days;
        self.0.spec.suspend_when_review_overdue = suspend_when_overdue;
        self
    }
    pub fn build(self) -> ModelDeployment {
        self.0
    }
}

/// A rule `name` with `action` matching `models`.
pub fn rule(name: &str, action: &str, models: &[&str]) -> PolicyRule {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "action": action,
        "match": { "models": models },
    }))
    .unwrap()
}

/// An AIPolicy with the given rules.
pub fn policy(namespace: &str, name: &str, rules: Vec<PolicyRule>) -> AIPolicy {
    let mut policy = AIPolicy::new(
        name,
        serde_json::from_value(serde_json::json!({ "rules": rules })).unwrap(),
    );
    policy.metadata = meta(Some(namespace), name);
    policy
}

/// A ClusterAIPolicy with the given rules, for namespaces matching `namespaces`
/// (globs; empty means all).
pub fn cluster_policy(name: &str, namespaces: &[&str], rules: Vec<PolicyRule>) -> ClusterAIPolicy {
    let mut policy = ClusterAIPolicy::new(
        name,
        serde_json::from_value(serde_json::json!({ "rules": rules, "namespaces": namespaces }))
            .unwrap(),
    );
    policy.metadata = meta(None, name);
    policy
}

/// A namespace, labelled for enforcement or not.
pub fn namespace(name: &str, enforced: bool) -> Namespace {
    let mut metadata = meta(None, name);
    if enforced {
        metadata.labels = Some([(labels::ENFORCE.to_string(), "true".to_string())].into());
    }
    Namespace {
        metadata,
        ..Default::default()
    }
}
