//! Builders for engine test fixtures.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use policybind_crds::access_token::{SubjectKind, TokenSubject};
use policybind_crds::ai_policy::{RuleConditions, RuleMatch};
use policybind_crds::model_deployment::ApprovalState;
use policybind_crds::*;
use policybind_engine::bundle::{Bundle, BundleModel, BundlePolicy, BundleToken, PolicyKind};
use policybind_engine::request::Request;

pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub fn rule(name: &str, action: Effect) -> PolicyRule {
    PolicyRule {
        name: name.into(),
        phase: Default::default(),
        match_: RuleMatch::default(),
        exclude: None,
        when: None,
        conditions: RuleConditions::default(),
        action,
        redact: None,
        degrade: None,
        code: None,
        message: None,
        record_redacted_prompt: false,
    }
}

pub fn cluster_policy(name: &str, priority: i32, rules: Vec<PolicyRule>) -> BundlePolicy {
    BundlePolicy {
        kind: PolicyKind::ClusterAIPolicy,
        namespace: None,
        name: name.into(),
        enforcement: Enforcement::Enforce,
        priority,
        namespaces: vec![],
        namespace_selector: None,
        custom_detectors: vec![],
        rules,
    }
}

pub fn model(name: &str, provider: &str) -> BundleModel {
    BundleModel {
        namespace: "ai".into(),
        name: name.into(),
        spec: ModelDeploymentSpec {
            provider: provider.into(),
            model: name.into(),
            aliases: vec![],
            version: None,
            endpoint: None,
            credentials: None,
            region: None,
            owner: "o".into(),
            team: "t".into(),
            use_cases: vec![],
            max_data_classification: DataClassification::Restricted,
            pricing: Some(Pricing {
                input_per1k_tokens_usd: 0.001,
                output_per1k_tokens_usd: 0.002,
            }),
            risk: Default::default(),
            review_interval_days: 90,
            last_reviewed_at: None,
            suspend_when_review_overdue: false,
            workload_selector: None,
            suspended: false,
            scope: policybind_crds::model_deployment::ModelScope::Cluster,
            governance: None,
            evaluations: vec![],
        },
        risk_level: RiskLevel::Low,
        approval: ApprovalState::NotRequired,
        review_overdue: false,
    }
}

pub fn token(name: &str, team: &str) -> BundleToken {
    BundleToken {
        namespace: "ns".into(),
        name: name.into(),
        labels: Default::default(),
        spec: AccessTokenSpec {
            subject: TokenSubject {
                kind: SubjectKind::User,
                name: format!("{name}-user"),
            },
            team: team.into(),
            allowed_models: vec!["*".into()],
            allowed_use_cases: vec![],
            default_use_case: None,
            max_data_classification: DataClassification::Restricted,
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
        },
        hashes: vec![],
        exhausted: false,
        exhausted_cost_only: false,
    }
}

pub fn bundle(policies: Vec<BundlePolicy>) -> Bundle {
    Bundle {
        policies,
        models: vec![model("gpt-4o", "openai"), model("llama", "self-hosted")],
        tokens: vec![token("alice", "marketing"), token("bob", "research")],
        ..Default::default()
    }
}

pub fn request(token: &str, model: &str) -> Request {
    Request {
        token: Some(format!("ns/{token}")),
        model: model.into(),
        time: at("2026-11-23T10:00:00Z"),
        estimated_input_tokens: 100,
        estimated_output_tokens: 100,
        ..Default::default()
    }
}
