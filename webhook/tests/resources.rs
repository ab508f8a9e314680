//! PolicyBind's own resources over real HTTPS: compile errors with precise
//! locations, conflicts, token scope, and approval decisions.

mod common;

use common::{Reply, default_view, fixture, model, start, start_with};
use policybind_engine::audit::RecordKind;
use policybind_webhook::authz::StaticAuthorizer;
use policybind_webhook::config::AdmissionConfig;
use serde_json::{Value, json};

fn code(reply: &Reply) -> String {
    reply.response()["status"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn policy_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut review = fixture("aipolicy-create.json");
    edit(&mut review["request"]["object"]["spec"]);
    review
}

#[tokio::test]
async fn valid_policy_is_admitted_and_never_mutated() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let review = fixture("aipolicy-create.json");
    let reply = harness.validate(&review).await;
    assert!(reply.allowed(), "{}", reply.message());
    let mutated = harness.mutate(&review).await;
    assert!(mutated.allowed());
    assert!(mutated.patch().is_none(), "our resources are never patched");
}

#[tokio::test]
async fn invalid_custom_detector_regex_is_denied_naming_resource_and_field() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&policy_with(|spec| {
            spec["customDetectors"][0]["pattern"] = json!("PRJ-([0-9]{4}");
        }))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "RESOURCE_INVALID");
    let message = reply.message();
    assert!(
        message.contains("AIPolicy team-a/chat-rules: spec.customDetectors[0].pattern:"),
        "{message}"
    );
}

#[tokio::test]
async fn invalid_cel_is_denied_naming_the_rule_and_field() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&policy_with(|spec| {
            spec["rules"][1]["when"] = json!("request.useCase == ");
        }))
        .await;
    assert!(!reply.allowed());
    let message = reply.message();
    assert!(
        message.contains("AIPolicy team-a/chat-rules rule \"office-hours\": spec.rules[1].when:"),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_cel_field_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&policy_with(|spec| {
            spec["rules"][1]["when"] = json!("request.department == 'x'");
        }))
        .await;
    assert!(!reply.allowed());
    assert!(
        reply.message().contains("unknown field request.department"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn invalid_time_zone_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&policy_with(|spec| {
            spec["rules"][1]["conditions"]["schedule"]["timeZone"] = json!("Europe/Atlantis");
        }))
        .await;
    assert!(!reply.allowed());
    let message = reply.message();
    assert!(
        message.contains("spec.rules[1].conditions.schedule"),
        "{message}"
    );
    assert!(message.contains("Europe/Atlantis"), "{message}");
}

#[tokio::test]
async fn rule_conflicting_with_an_existing_policy_at_the_same_priority_is_denied() {
    let view = default_view();
    let existing: policybind_crds::AIPolicy = serde_json::from_value(json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "support-allow", "namespace": "team-a"},
        "spec": {"priority": 100, "rules": [
            {"name": "allow-support", "match": {"teams": ["support"]}, "conditions": {"detected": ["EMAIL"]}, "action": "Allow"}
        ]}
    }))
    .unwrap();
    view.add_ai_policy(existing);
    let harness = start(view, AdmissionConfig::default()).await;
    let review = policy_with(|spec| {
        spec["rules"] = json!([
            {"name": "deny-support", "match": {"teams": ["support"]}, "conditions": {"detected": ["EMAIL"]}, "action": "Deny"}
        ]);
    });
    let reply = harness.validate(&review).await;
    assert!(!reply.allowed());
    let message = reply.message();
    assert!(
        message.contains("conflicts with AIPolicy team-a/support-allow rule \"allow-support\""),
        "{message}"
    );

    // At another priority the order is explicit: admitted.
    let mut review = review;
    review["request"]["object"]["spec"]["priority"] = json!(200);
    assert!(harness.validate(&review).await.allowed());
}

#[tokio::test]
async fn an_existing_broken_policy_does_not_block_a_valid_one() {
    let view = default_view();
    let broken: policybind_crds::AIPolicy = serde_json::from_value(json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "broken", "namespace": "team-a"},
        "spec": {"rules": [{"name": "bad", "when": "((", "action": "Deny"}]}
    }))
    .unwrap();
    view.add_ai_policy(broken);
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.validate(&fixture("aipolicy-create.json")).await;
    assert!(reply.allowed(), "{}", reply.message());
}

#[tokio::test]
async fn cluster_policy_with_invalid_namespace_glob_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("aipolicy-create.json");
    review["request"]["kind"]["kind"] = json!("ClusterAIPolicy");
    review["request"]["resource"]["resource"] = json!("clusteraipolicies");
    review["request"]["namespace"] = Value::Null;
    let object = &mut review["request"]["object"];
    object["kind"] = json!("ClusterAIPolicy");
    object["metadata"] = json!({"name": "org-baseline"});
    object["spec"]["namespaces"] = json!(["team-[a"]);
    let reply = harness.validate(&review).await;
    assert!(!reply.allowed());
    assert!(
        reply
            .message()
            .contains("ClusterAIPolicy org-baseline: spec.namespaces:"),
        "{}",
        reply.message()
    );
}

fn model_review(namespace: &str, name: &str, object: impl serde::Serialize) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "11111111-2222-4333-8444-555555555555",
            "kind": {"group": "policybind.io", "version": "v1alpha1", "kind": "ModelDeployment"},
            "resource": {"group": "policybind.io", "version": "v1alpha1", "resource": "modeldeployments"},
            "name": name, "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "dave@example.com"},
            "object": object,
            "dryRun": false
        }
    })
}

#[tokio::test]
async fn duplicate_model_name_in_the_same_namespace_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let duplicate = model("team-a", "chat-copy", json!({"model": "chat"}), json!({}));
    let reply = harness
        .validate(&model_review("team-a", "chat-copy", duplicate))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "RESOURCE_INVALID");
    assert!(
        reply.message().contains(
            "model name \"chat\" is already registered by ModelDeployment team-a/chat in namespace team-a: \
             a name is registered once per namespace; choose another model name or alias"
        ),
        "{}",
        reply.message()
    );
}

fn shared_model_review(namespace: &str, name: &str, model_name: &str, user: &str) -> Value {
    let object = model(
        namespace,
        name,
        json!({"model": model_name, "scope": "Cluster"}),
        json!({}),
    );
    let mut review = model_review(namespace, name, object);
    review["request"]["userInfo"] = json!({"username": user, "groups": ["system:authenticated"]});
    review
}

#[tokio::test]
async fn sharing_a_model_cluster_wide_needs_the_share_verb() {
    let rights = StaticAuthorizer::default()
        .grant("pat@example.com", "share", "modeldeployments", None)
        // A namespaced grant is not enough: sharing concerns every namespace.
        .grant(
            "dave@example.com",
            "share",
            "modeldeployments",
            Some("platform"),
        );
    let harness = start_with(default_view(), AdmissionConfig::default(), rights, 1 << 20).await;
    let denied = harness
        .validate(&shared_model_review(
            "platform",
            "gpt",
            "gpt-4o",
            "dave@example.com",
        ))
        .await;
    assert!(!denied.allowed());
    assert_eq!(code(&denied), "SHARE_NOT_PERMITTED");
    assert!(
        denied.message().contains(
            "dave@example.com may not share models; keep spec.scope: Namespace, or ask an administrator to grant \
             verb \"share\" on modeldeployments.policybind.io \"gpt\" cluster-wide"
        ),
        "{}",
        denied.message()
    );
    let allowed = harness
        .validate(&shared_model_review(
            "platform",
            "gpt",
            "gpt-4o",
            "pat@example.com",
        ))
        .await;
    assert!(allowed.allowed(), "{}", allowed.message());

    // Updates that keep the scope are not asked again (dave edits pat's shared model).
    let mut update = shared_model_review("platform", "gpt", "gpt-4o", "dave@example.com");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    assert!(harness.validate(&update).await.allowed());
    // Turning a namespace registration into a shared one is.
    update["request"]["oldObject"]["spec"]["scope"] = json!("Namespace");
    assert_eq!(
        code(&harness.validate(&update).await),
        "SHARE_NOT_PERMITTED"
    );
}

#[tokio::test]
async fn a_shared_name_is_unique_cluster_wide_and_the_message_says_what_to_change() {
    let view = default_view();
    view.add_model(model(
        "platform",
        "gpt",
        json!({"model": "gpt-4o", "scope": "Cluster"}),
        json!({}),
    ));
    let rights =
        StaticAuthorizer::default().grant("pat@example.com", "share", "modeldeployments", None);
    let harness = start_with(view, AdmissionConfig::default(), rights, 1 << 20).await;
    let reply = harness
        .validate(&shared_model_review(
            "research",
            "gpt",
            "gpt-4o",
            "pat@example.com",
        ))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "RESOURCE_INVALID");
    assert!(
        reply.message().contains(
            "model name \"gpt-4o\" is already registered by ModelDeployment platform/gpt cluster-wide (both have \
             spec.scope: Cluster): a shared name is registered once in the cluster; choose another model name or \
             alias, or register it with spec.scope: Namespace"
        ),
        "{}",
        reply.message()
    );
    // The same name, kept to its own namespace, shadows the shared one there: allowed.
    let own = model("research", "gpt", json!({"model": "gpt-4o"}), json!({}));
    let reply = harness
        .validate(&model_review("research", "gpt", own))
        .await;
    assert!(reply.allowed(), "{}", reply.message());
}

fn token_naming(namespaces: &[&str], user: &str) -> Value {
    let mut review = fixture("accesstoken-create.json");
    review["request"]["object"]["spec"]["additionalNamespaces"] = json!(namespaces);
    review["request"]["userInfo"] =
        json!({"username": user, "uid": "u-7", "groups": ["developers", "system:authenticated"]});
    review
}

#[tokio::test]
async fn a_token_naming_a_namespace_its_author_cannot_create_tokens_in_is_denied_naming_it() {
    let rights = StaticAuthorizer::default()
        .grant("group:developers", "create", "accesstokens", Some("team-b"))
        .grant("erin@example.com", "create", "accesstokens", Some("team-c"));
    let harness = start_with(default_view(), AdmissionConfig::default(), rights, 1 << 20).await;
    // Group-based grants count: erin is in `developers`, which may create in team-b.
    let allowed = harness
        .validate(&token_naming(&["team-b", "team-c"], "erin@example.com"))
        .await;
    assert!(allowed.allowed(), "{}", allowed.message());

    let denied = harness
        .validate(&token_naming(
            &["team-b", "team-d", "team-e"],
            "erin@example.com",
        ))
        .await;
    assert!(!denied.allowed());
    assert_eq!(code(&denied), "NAMESPACE_NOT_PERMITTED");
    let message = denied.message();
    assert!(
        message.contains(
            "spec.additionalNamespaces names namespace team-d, namespace team-e where erin@example.com may not \
             create AccessTokens"
        ),
        "{message}"
    );
    assert!(!message.contains("team-b where"), "{message}");
    let records = harness.audit.records();
    let last = records.last().unwrap();
    assert_eq!(last.codes, ["NAMESPACE_NOT_PERMITTED"]);
    assert_eq!(last.detail["refusedNamespaces"], "team-d,team-e");
}

#[tokio::test]
async fn a_token_update_is_checked_only_for_newly_named_namespaces() {
    let rights = StaticAuthorizer::default().grant(
        "erin@example.com",
        "create",
        "accesstokens",
        Some("team-b"),
    );
    let harness = start_with(default_view(), AdmissionConfig::default(), rights, 1 << 20).await;
    // team-z was named by someone with the right; erin edits the budget.
    let mut review = token_naming(&["team-z"], "erin@example.com");
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["oldObject"] = review["request"]["object"].clone();
    assert!(harness.validate(&review).await.allowed());
    // Adding team-b is fine for erin; adding team-y is not.
    review["request"]["object"]["spec"]["additionalNamespaces"] = json!(["team-z", "team-b"]);
    assert!(harness.validate(&review).await.allowed());
    review["request"]["object"]["spec"]["additionalNamespaces"] = json!(["team-z", "team-y"]);
    let denied = harness.validate(&review).await;
    assert_eq!(code(&denied), "NAMESPACE_NOT_PERMITTED");
    assert!(
        denied.message().contains("namespace team-y"),
        "{}",
        denied.message()
    );
    // Its own namespace needs no extra right.
    let own = token_naming(&["team-a"], "erin@example.com");
    assert!(harness.validate(&own).await.allowed());
}

#[tokio::test]
async fn the_same_model_name_in_another_namespace_is_admitted() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let own = model("team-b", "chat", json!({"model": "chat"}), json!({}));
    let reply = harness.validate(&model_review("team-b", "chat", own)).await;
    assert!(reply.allowed(), "{}", reply.message());
}

fn token_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut review = fixture("accesstoken-create.json");
    edit(&mut review["request"]["object"]["spec"]);
    review
}

#[tokio::test]
async fn sane_token_is_admitted() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.validate(&fixture("accesstoken-create.json")).await;
    assert!(reply.allowed(), "{}", reply.message());
}

#[tokio::test]
async fn token_default_use_case_outside_its_allowed_use_cases_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&token_with(|spec| {
            spec["defaultUseCase"] = json!("marketing")
        }))
        .await;
    assert!(!reply.allowed());
    assert!(
        reply.message().contains("spec.defaultUseCase"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn token_budget_with_unknown_time_zone_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&token_with(|spec| {
            spec["budgets"][0]["timeZone"] = json!("Mars/Olympus_Mons")
        }))
        .await;
    assert!(!reply.allowed());
    assert!(
        reply.message().contains("spec.budgets[0].timeZone"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn token_default_classification_above_its_maximum_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&token_with(|spec| {
            spec["maxDataClassification"] = json!("Internal");
            spec["defaultDataClassification"] = json!("Restricted");
        }))
        .await;
    assert!(!reply.allowed());
    assert!(reply.message().contains("spec.defaultDataClassification"));
}

#[tokio::test]
async fn expired_token_is_admitted_with_a_warning() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&token_with(|spec| {
            spec["expiresAt"] = json!("2020-01-01T00:00:00Z")
        }))
        .await;
    assert!(reply.allowed());
    assert!(
        reply
            .warnings()
            .iter()
            .any(|w| w.contains("expiresAt is in the past"))
    );
}

fn approval_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut review = fixture("approvalrequest-decide.json");
    edit(&mut review["request"]);
    review
}

#[tokio::test]
async fn approval_by_an_authorized_other_user_is_admitted_and_recorded_with_the_approver() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&fixture("approvalrequest-decide.json"))
        .await;
    assert!(reply.allowed(), "{}", reply.message());
    let records = harness.audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, RecordKind::Approval);
    assert_eq!(records[0].subject.as_deref(), Some("carol@example.com"));
    assert_eq!(records[0].detail["approver"], "carol@example.com");
    assert_eq!(records[0].detail["decision"], "Approved");
    assert_eq!(records[0].codes, ["APPROVAL_GRANTED"]);
}

#[tokio::test]
async fn approver_name_other_than_the_authenticated_user_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&approval_with(|r| {
            r["object"]["spec"]["decision"]["approver"] = json!("ceo@example.com")
        }))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "APPROVER_MISMATCH");
    assert!(
        reply
            .message()
            .contains("authenticated as \"carol@example.com\"")
    );
}

#[tokio::test]
async fn self_approval_is_denied() {
    let harness = start_with(
        default_view(),
        AdmissionConfig::default(),
        StaticAuthorizer::default().grant("bob@example.com", "approve", "approvalrequests", None),
        1 << 20,
    )
    .await;
    let reply = harness
        .validate(&approval_with(|r| {
            r["userInfo"]["username"] = json!("bob@example.com");
            r["object"]["spec"]["decision"]["approver"] = json!("bob@example.com");
        }))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "SELF_APPROVAL");
}

#[tokio::test]
async fn approval_without_the_approve_verb_is_denied_naming_the_rbac_grant() {
    let harness = start_with(
        default_view(),
        AdmissionConfig::default(),
        StaticAuthorizer::default(),
        1 << 20,
    )
    .await;
    let reply = harness
        .validate(&fixture("approvalrequest-decide.json"))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "APPROVAL_NOT_PERMITTED");
    assert!(
        reply
            .message()
            .contains("verb \"approve\" on approvalrequests.policybind.io")
    );
    assert_eq!(harness.audit.records()[0].kind, RecordKind::Approval);
}

#[tokio::test]
async fn changing_a_decision_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&approval_with(|r| {
            r["oldObject"]["spec"]["decision"] =
                json!({"state": "Rejected", "approver": "dave@example.com"});
        }))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "DECISION_IMMUTABLE");
}

#[tokio::test]
async fn edits_that_keep_the_decision_are_admitted() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&approval_with(|r| {
            r["oldObject"] = r["object"].clone();
            r["userInfo"]["username"] = json!("someone-else@example.com");
            r["object"]["metadata"]["labels"] = json!({"reviewed": "yes"});
        }))
        .await;
    assert!(reply.allowed(), "{}", reply.message());
}

/// A view where `team-a/chat` is High risk with the given fairness result, and a
/// gate asks High-risk models for a fairness delta of at most 0.05.
fn gated_view(fairness: f64) -> policybind_webhook::view::StaticView {
    let view = policybind_webhook::view::StaticView::new();
    view.add_namespace("team-a", &[("policybind.io/enforce", "true")]);
    view.add_model(model(
        "team-a",
        "chat",
        json!({
            "risk": {"level": "High"},
            "evaluations": [{"metric": "subgroup-fairness-delta", "value": fairness,
                "dataset": "holdout", "date": "2026-11-01", "source": "fairness suite"}]
        }),
        json!({"approval": "Pending", "riskLevel": "High", "riskScore": 60}),
    ));
    let gate: policybind_crds::EvidenceGate = serde_json::from_value(json!({
        "apiVersion": "policybind.io/v1alpha1", "kind": "EvidenceGate",
        "metadata": {"name": "high-risk-release"},
        "spec": {"appliesTo": {"minRiskLevel": "High"},
                 "thresholds": [{"name": "fairness", "metric": "subgroup-fairness-delta", "max": 0.05}]}
    }))
    .unwrap();
    view.add_evidence_gate(gate);
    view
}

#[tokio::test]
async fn approval_of_a_model_that_fails_an_evidence_gate_is_denied_naming_the_gate_and_value() {
    let harness = start(gated_view(0.09), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&fixture("approvalrequest-decide.json"))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "EVIDENCE_GATE_FAILED");
    let message = reply.message();
    assert!(message.contains("high-risk-release"), "{message}");
    assert!(message.contains("0.09"), "{message}");
    // The refusal is recorded as an approval decision that did not happen.
    let records = harness.audit.records();
    assert_eq!(records[0].kind, RecordKind::Approval);
    assert_eq!(records[0].codes, ["EVIDENCE_GATE_FAILED"]);
}

#[tokio::test]
async fn approval_of_a_model_that_passes_its_evidence_gates_is_admitted() {
    let harness = start(gated_view(0.02), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&fixture("approvalrequest-decide.json"))
        .await;
    assert!(reply.allowed(), "{}", reply.message());
}

#[tokio::test]
async fn a_rejection_is_never_blocked_by_evidence_gates() {
    let harness = start(gated_view(0.09), AdmissionConfig::default()).await;
    let reply = harness
        .validate(&approval_with(|r| {
            r["object"]["spec"]["decision"]["state"] = json!("Rejected")
        }))
        .await;
    assert!(reply.allowed(), "{}", reply.message());
}

fn budget_review(spec: Value) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "11111111-2222-4333-8444-555555555556",
            "kind": {"group": "policybind.io", "version": "v1alpha1", "kind": "AIBudget"},
            "resource": {"group": "policybind.io", "version": "v1alpha1", "resource": "aibudgets"},
            "name": "eng", "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "dave@example.com"},
            "object": {"apiVersion": "policybind.io/v1alpha1", "kind": "AIBudget",
                "metadata": {"name": "eng", "namespace": "team-a"}, "spec": spec},
            "dryRun": false
        }
    })
}

#[tokio::test]
async fn an_aibudget_that_cannot_be_enforced_is_denied_naming_the_field() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let good = json!({"scope": "Team", "team": "eng",
        "budgets": [{"period": "Month", "maxCostUsd": 500.0, "timeZone": "Europe/Berlin"}]});
    let reply = harness.validate(&budget_review(good)).await;
    assert!(reply.allowed(), "{}", reply.message());
    let bad_zone = json!({"scope": "Namespace",
        "budgets": [{"period": "Day", "maxTokens": 5, "timeZone": "Mars/Olympus"}]});
    let reply = harness.validate(&budget_review(bad_zone)).await;
    assert_eq!(code(&reply), "RESOURCE_INVALID");
    assert!(
        reply.message().contains("AIBudget team-a/eng"),
        "{}",
        reply.message()
    );
    assert!(reply.message().contains("timeZone"), "{}", reply.message());
    let bad_selector = json!({"scope": "Tokens", "rateLimit": {"requestsPerMinute": 5},
        "tokenSelector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}});
    let reply = harness.validate(&budget_review(bad_selector)).await;
    assert!(
        reply.message().contains("spec.tokenSelector"),
        "{}",
        reply.message()
    );
}
