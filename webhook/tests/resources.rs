//! PolicyBind's own resources over real HTTPS: compile errors with precise
//! locations, conflicts, token scope, and approval decisions.

mod common;

use common::{Reply, default_view, fixture, model, start, start_with};
use policybind_engine::audit::RecordKind;
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
    assert!(
        reply.message().contains(
            "model name \"chat\" is already registered in namespace team-a by team-a/chat"
        ),
        "{}",
        reply.message()
    );
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
        vec!["bob@example.com".into()],
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
    let harness = start_with(default_view(), AdmissionConfig::default(), vec![], 1 << 20).await;
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
