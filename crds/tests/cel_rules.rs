//! The CEL validation rules do what their messages say, evaluated the way the API
//! server evaluates them (kube-cel's validator over the generated schemas): good
//! objects pass, each bad one is refused with the rule's message, and transition
//! rules hold on update.

use kube::CustomResourceExt;
use policybind_crds::*;
use serde_json::{Value, json};

fn schema<K: CustomResourceExt>() -> Value {
    serde_json::to_value(K::crd()).unwrap()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        .clone()
}

fn errors(schema: &Value, object: Value, old: Option<Value>) -> Vec<String> {
    match kube_cel::validate(schema, &object, old.as_ref()) {
        Ok(()) => vec![],
        Err(e) => e.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn token(spec: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AccessToken", "metadata": {"name": "t"}, "spec": spec})
}

#[test]
fn access_token_expiry_must_follow_not_before() {
    let s = schema::<AccessToken>();
    let base =
        json!({"subject": {"kind": "User", "name": "u"}, "team": "a", "allowedModels": ["*"]});
    assert!(errors(&s, token(base.clone()), None).is_empty());
    let mut bad = base.clone();
    bad["notBefore"] = json!("2026-12-01T00:00:00Z");
    bad["expiresAt"] = json!("2026-11-01T00:00:00Z");
    let e = errors(&s, token(bad), None);
    assert!(
        e.iter()
            .any(|m| m.contains("expiresAt must be after notBefore")),
        "{e:?}"
    );
}

#[test]
fn budgets_need_a_positive_limit_and_one_per_period() {
    let s = schema::<AccessToken>();
    let with = |budgets: Value| {
        token(
            json!({"subject": {"kind": "User", "name": "u"}, "team": "a", "allowedModels": ["*"], "budgets": budgets}),
        )
    };
    assert!(
        errors(
            &s,
            with(json!([{"period": "Month", "maxCostUsd": 10.0}])),
            None
        )
        .is_empty()
    );
    let e = errors(
        &s,
        with(json!([{"period": "Month", "maxCostUsd": -1.0}])),
        None,
    );
    assert!(
        e.iter().any(|m| m.contains("maxCostUsd must be positive")),
        "{e:?}"
    );
    let e = errors(&s, with(json!([{"period": "Day"}])), None);
    assert!(
        e.iter()
            .any(|m| m.contains("needs maxCostUsd or maxTokens")),
        "{e:?}"
    );
    let e = errors(
        &s,
        with(json!([{"period": "Day", "maxTokens": 5}, {"period": "Day", "maxTokens": 9}])),
        None,
    );
    assert!(
        e.iter().any(|m| m.contains("one budget per period")),
        "{e:?}"
    );
}

#[test]
fn schedule_hours_must_differ() {
    let s = schema::<AIPolicy>();
    let policy = |schedule: Value| {
        json!({"apiVersion": API_VERSION, "kind": "AIPolicy", "metadata": {"name": "p"},
               "spec": {"rules": [{"name": "r", "action": "Deny", "conditions": {"schedule": schedule}}]}})
    };
    assert!(
        errors(
            &s,
            policy(json!({"startHour": 9, "endHour": 17, "timeZone": "UTC"})),
            None
        )
        .is_empty()
    );
    let e = errors(
        &s,
        policy(json!({"startHour": 9, "endHour": 9, "timeZone": "UTC"})),
        None,
    );
    assert!(
        e.iter()
            .any(|m| m.contains("startHour and endHour must differ")),
        "{e:?}"
    );
}

#[test]
fn degrade_needs_parameters_and_redact_only_with_redact() {
    let s = schema::<ClusterAIPolicy>();
    let policy = |rule: Value| json!({"apiVersion": API_VERSION, "kind": "ClusterAIPolicy", "metadata": {"name": "p"}, "spec": {"rules": [rule]}});
    assert!(
        errors(
            &s,
            policy(json!({"name": "r", "action": "Degrade", "degrade": {"model": "mini"}})),
            None
        )
        .is_empty()
    );
    let e = errors(&s, policy(json!({"name": "r", "action": "Degrade"})), None);
    assert!(
        e.iter()
            .any(|m| m.contains("needs degrade.model or degrade.maxTokens")),
        "{e:?}"
    );
    let e = errors(
        &s,
        policy(json!({"name": "r", "action": "Allow", "redact": {}})),
        None,
    );
    assert!(
        e.iter().any(|m| m.contains("redact is only valid")),
        "{e:?}"
    );
}

#[test]
fn rules_on_responses_may_only_redact_or_deny_on_listed_entities() {
    let s = schema::<AIPolicy>();
    let policy = |rule: Value| json!({"apiVersion": API_VERSION, "kind": "AIPolicy", "metadata": {"name": "p", "namespace": "n"}, "spec": {"rules": [rule]}});
    let refused = |rule: Value, message: &str| {
        let e = errors(&s, policy(rule), None);
        assert!(e.iter().any(|m| m.contains(message)), "{message}: {e:?}");
    };
    for good in [
        json!({"name": "r", "phase": "Response", "action": "Deny", "conditions": {"detected": ["SECRET"]}}),
        json!({"name": "r", "phase": "Response", "action": "Redact", "redact": {"entities": ["EMAIL"]}}),
        json!({"name": "r", "phase": "Request", "action": "Allow", "recordRedactedPrompt": true}),
    ] {
        assert_eq!(
            errors(&s, policy(good.clone()), None),
            Vec::<String>::new(),
            "{good}"
        );
    }
    refused(
        json!({"name": "r", "phase": "Response", "action": "Allow"}),
        "may only Redact or Deny",
    );
    refused(
        json!({"name": "r", "phase": "Response", "action": "Deny"}),
        "needs conditions.detected",
    );
    refused(
        json!({"name": "r", "phase": "Response", "action": "Redact", "recordRedactedPrompt": true}),
        "recordRedactedPrompt is only valid",
    );
    refused(
        json!({"name": "r", "action": "Redact", "redact": {"entities": ["PROMPT_INJECTION"]}}),
        "PROMPT_INJECTION cannot be redacted",
    );
    refused(json!({"name": "r", "phase": "Later", "action": "Deny"}), "");
}

#[test]
fn a_rule_exclude_must_name_something() {
    let s = schema::<AIPolicy>();
    let policy = |exclude: Value| json!({"apiVersion": API_VERSION, "kind": "AIPolicy", "metadata": {"name": "p", "namespace": "n"}, "spec": {"rules": [{"name": "r", "action": "Deny", "exclude": exclude}]}});
    for good in [
        json!({"subjects": ["ci-bot"]}),
        json!({"namespaces": ["ci-*"], "teams": ["sre"]}),
        json!({"labels": {"matchLabels": {"endpoint": "embeddings"}}}),
        json!({"labels": {"matchExpressions": [{"key": "stream", "operator": "Exists"}]}}),
    ] {
        let e = errors(&s, policy(good.clone()), None);
        assert!(e.is_empty(), "{good}: {e:?}");
    }
    for empty in [
        json!({}),
        json!({"teams": []}),
        json!({"labels": {}}),
        json!({"labels": {"matchLabels": {}}}),
    ] {
        let e = errors(&s, policy(empty.clone()), None);
        assert!(
            e.iter()
                .any(|m| m.contains("exclude needs at least one team, subject, namespace or label")),
            "{empty}: {e:?}"
        );
    }
}

#[test]
fn approval_cannot_be_self_approved_or_changed_once_decided() {
    let s = schema::<ApprovalRequest>();
    let approval = |decision: Option<Value>| {
        let mut spec =
            json!({"target": {"kind": "ModelDeployment", "name": "m"}, "requester": "alice"});
        if let Some(d) = decision {
            spec["decision"] = d;
        }
        json!({"apiVersion": API_VERSION, "kind": "ApprovalRequest", "metadata": {"name": "a"}, "spec": spec})
    };
    let pending = approval(None);
    let approved = approval(Some(json!({"state": "Approved", "approver": "bob"})));
    assert!(errors(&s, approved.clone(), Some(pending.clone())).is_empty());
    let e = errors(
        &s,
        approval(Some(json!({"state": "Approved", "approver": "alice"}))),
        Some(pending),
    );
    assert!(
        e.iter()
            .any(|m| m.contains("cannot decide their own request")),
        "{e:?}"
    );
    let flipped = approval(Some(json!({"state": "Rejected", "approver": "bob"})));
    let e = errors(&s, flipped, Some(approved));
    assert!(
        e.iter()
            .any(|m| m.contains("cannot be changed or withdrawn")),
        "{e:?}"
    );
}

#[test]
fn resolved_incidents_stay_resolved() {
    let s = schema::<Incident>();
    let incident = |state: &str| {
        json!({"apiVersion": API_VERSION, "kind": "Incident", "metadata": {"name": "i"},
               "spec": {"pattern": "RepeatedDenials", "subject": "bob", "severity": "High", "state": state, "summary": "x"}})
    };
    assert!(errors(&s, incident("Investigating"), Some(incident("Open"))).is_empty());
    let e = errors(&s, incident("Open"), Some(incident("Resolved")));
    assert!(e.iter().any(|m| m.contains("stays resolved")), "{e:?}");
}

fn gate(thresholds: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "EvidenceGate", "metadata": {"name": "g"}, "spec": {"thresholds": thresholds}})
}

#[test]
fn evidence_gate_thresholds_need_a_bound_a_sane_range_and_unique_names() {
    let s = schema::<EvidenceGate>();
    assert!(errors(&s, gate(json!([{"name": "drift", "metric": "psi", "max": 0.2}, {"name": "quality", "metric": "accuracy", "min": 0.9}])), None).is_empty());
    let e = errors(&s, gate(json!([{"name": "a", "metric": "psi"}])), None);
    assert!(
        e.iter().any(|m| m.contains("a threshold needs min or max")),
        "{e:?}"
    );
    let e = errors(
        &s,
        gate(json!([{"name": "a", "metric": "psi", "min": 0.9, "max": 0.1}])),
        None,
    );
    assert!(
        e.iter().any(|m| m.contains("min must not exceed max")),
        "{e:?}"
    );
    let e = errors(
        &s,
        gate(
            json!([{"name": "a", "metric": "psi", "max": 0.2}, {"name": "a", "metric": "accuracy", "min": 0.5}]),
        ),
        None,
    );
    assert!(
        e.iter()
            .any(|m| m.contains("threshold names must be unique")),
        "{e:?}"
    );
}
