//! Manifests the scenarios apply, built in code so each scenario says only what
//! matters to it. They are plain JSON so the API server's schema validation
//! (and the webhook) see exactly what a user's YAML would give them.
use serde_json::{Value, json};

/// The model id every scenario's ModelDeployment serves.
pub const MODEL: &str = "e2e-model";
/// Team of the scenario tokens.
pub const TEAM: &str = "e2e";

/// A time zone whose midnight is at least four hours away, for the Day
/// budgets of scenarios that measure spend against the limit: a new day
/// starts a new period with the whole limit again, so a run across midnight
/// would measure two days against one limit. Named zones rather than UTC, so
/// that period starts in a token's own zone are exercised as well.
pub fn zone_far_from_midnight() -> &'static str {
    use chrono::Timelike;
    // Asia/Kolkata (UTC+5:30) turns a day at 18:30 UTC, America/New_York at
    // 04:00 or 05:00 UTC.
    if chrono::Utc::now().hour() < 12 {
        "Asia/Kolkata"
    } else {
        "America/New_York"
    }
}

/// A ModelDeployment builder.
#[derive(Clone, Debug)]
pub struct ModelDeployment {
    name: String,
    model: String,
    risk_level: &'static str,
    suspended: bool,
}

impl ModelDeployment {
    /// A low-risk model (no approval needed) named `name`, serving [`MODEL`].
    pub fn new(name: &str) -> Self {
        ModelDeployment {
            name: name.into(),
            model: MODEL.into(),
            risk_level: "Low",
            suspended: false,
        }
    }

    /// Serve another model id.
    pub fn serving(mut self, model: &str) -> Self {
        self.model = model.into();
        self
    }

    /// High risk: needs an approved ApprovalRequest before use.
    pub fn high_risk(mut self) -> Self {
        self.risk_level = "High";
        self
    }

    /// Suspended by spec.
    pub fn suspended(mut self) -> Self {
        self.suspended = true;
        self
    }

    /// The manifest.
    pub fn build(&self) -> Value {
        json!({
            "apiVersion": "policybind.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": self.name},
            "spec": {
                "provider": "self-hosted",
                "model": self.model,
                "owner": "e2e@example.com",
                "team": TEAM,
                "maxDataClassification": "Internal",
                "pricing": {"inputPer1kTokensUsd": 0.001, "outputPer1kTokensUsd": 0.002},
                "risk": {"level": self.risk_level},
                "suspended": self.suspended
            }
        })
    }
}

/// An AIPolicy with one rule for `models`: `action` is Allow or Deny.
pub fn policy(name: &str, priority: i32, action: &str, models: &[&str], code: &str) -> Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": name},
        "spec": {
            "priority": priority,
            "description": "e2e",
            "rules": [{
                "name": format!("{}-rule", action.to_ascii_lowercase()),
                "match": {"models": models},
                "action": action,
                "code": code,
                "message": format!("e2e {action} rule")
            }]
        }
    })
}

/// An AIPolicy whose rule has a CEL `when` that does not compile.
pub fn invalid_policy(name: &str) -> Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": name},
        "spec": {
            "rules": [{
                "name": "broken",
                "match": {"models": [MODEL]},
                "when": "request.model == ",
                "action": "Allow"
            }]
        }
    })
}

/// An AccessToken for team [`TEAM`] allowed to call `models`.
pub fn access_token(name: &str, models: &[&str]) -> Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AccessToken",
        "metadata": {"name": name},
        "spec": {
            "subject": {"kind": "Team", "name": TEAM},
            "team": TEAM,
            "allowedModels": models,
            "maxDataClassification": "Internal",
            "rateLimit": {"requestsPerMinute": 100000}
        }
    })
}

/// A model-server pod that declares the ModelDeployment `model_deployment`.
pub fn model_pod(name: &str, model_deployment: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": name},
            "annotations": {"policybind.io/model": model_deployment}
        },
        "spec": {
            "containers": [{
                "name": "model-server",
                "image": "registry.example/model-server:1.0",
                "ports": [{"name": "http", "containerPort": 8000}]
            }]
        }
    })
}

/// Count the injected sidecars in a pod spec (containers and init containers).
pub fn sidecar_count(pod: &Value) -> usize {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| pod["spec"][key].as_array().cloned().unwrap_or_default())
        .filter(|container| {
            container["name"].as_str() == Some("policybind-sidecar")
                || container["args"][0].as_str() == Some("sidecar")
        })
        .count()
}
