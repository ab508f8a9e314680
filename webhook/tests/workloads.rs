//! AI workloads over real HTTPS: pods and every workload kind's pod template that
//! declare `policybind.io/model`, and model servers that declare nothing.

mod common;

use common::{Reply, default_view, fixture, model, start};
use policybind_webhook::config::{AdmissionConfig, UndeclaredMode};
use serde_json::{Value, json};

fn pod_with_model(reference: &str) -> Value {
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["metadata"]["annotations"]["policybind.io/model"] =
        json!(reference);
    review
}

fn code(reply: &Reply) -> String {
    reply.response()["status"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn pod_with_registered_usable_model_is_admitted_and_recorded() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.admit(&fixture("pod-create.json")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.allowed(), "{}", reply.message());
    assert_eq!(
        reply.response()["uid"],
        "7f0b2d4c-3a52-4f0e-9d0e-2b6f6f0c9a11"
    );
    let records = harness.validation_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].model.as_deref(), Some("team-a/chat"));
    assert_eq!(records[0].effect, Some(policybind_crds::Effect::Allow));
    assert_eq!(
        records[0].request_id.as_deref(),
        Some("7f0b2d4c-3a52-4f0e-9d0e-2b6f6f0c9a11")
    );
}

#[tokio::test]
async fn pod_naming_an_unregistered_model_is_denied_with_how_to_register_it() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.validate(&pod_with_model("llama-70b")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "MODEL_NOT_REGISTERED");
    let message = reply.message();
    assert!(
        message.contains("ModelDeployment team-a/llama-70b is not registered"),
        "{message}"
    );
    assert!(
        message.contains("kubectl apply a ModelDeployment"),
        "{message}"
    );
    let records = harness.audit.records();
    assert_eq!(records[0].effect, Some(policybind_crds::Effect::Deny));
    assert_eq!(records[0].codes, ["MODEL_NOT_REGISTERED"]);
}

#[tokio::test]
async fn pod_naming_a_model_awaiting_approval_is_denied_and_told_whom_to_ask() {
    let view = default_view();
    view.add_model(model(
        "team-a",
        "risky",
        json!({"risk": {"factors": {"customerFacing": true, "automatedDecisions": true, "processesPersonalData": true}}}),
        json!({"approval": "Pending", "riskLevel": "High", "approvalRequest": "risky-review"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.validate(&pod_with_model("risky")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "MODEL_NOT_APPROVED");
    assert!(
        reply.message().contains("ApprovalRequest risky-review"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn pod_naming_a_rejected_model_is_denied() {
    let view = default_view();
    view.add_model(model(
        "team-a",
        "rejected",
        json!({}),
        json!({"approval": "Rejected", "riskLevel": "Critical"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.validate(&pod_with_model("rejected")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "MODEL_NOT_APPROVED");
    assert!(
        reply.message().contains("was rejected"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn pod_naming_a_suspended_model_is_denied() {
    let view = default_view();
    view.add_model(model(
        "team-a",
        "paused",
        json!({"suspended": true}),
        json!({"approval": "NotRequired", "riskLevel": "Low"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.validate(&pod_with_model("paused")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "MODEL_SUSPENDED");
    assert!(reply.message().contains("is suspended"));
}

#[tokio::test]
async fn a_shared_model_of_another_namespace_is_found_by_namespace_slash_name() {
    let view = default_view();
    view.add_model(model(
        "ml-registry",
        "shared",
        json!({"scope": "Cluster"}),
        json!({"approval": "Approved", "riskLevel": "High"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.admit(&pod_with_model("ml-registry/shared")).await;
    assert!(reply.allowed(), "{}", reply.message());
}

#[tokio::test]
async fn a_model_registered_for_another_namespace_only_is_denied_saying_how_to_share_it() {
    let view = default_view();
    view.add_model(model(
        "team-b",
        "private",
        json!({}),
        json!({"approval": "NotRequired", "riskLevel": "Low"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.admit(&pod_with_model("team-b/private")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "MODEL_NOT_SHARED");
    assert!(
        reply.message().contains(
            "ModelDeployment team-b/private is registered for namespace team-b only (spec.scope: Namespace)"
        ),
        "{}",
        reply.message()
    );
    assert!(
        reply.message().contains("spec.scope: Cluster"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn confidential_model_in_a_namespace_allowing_internal_is_denied_with_both_fixes() {
    let view = default_view();
    view.add_model(model(
        "team-a",
        "contracts",
        json!({"maxDataClassification": "Confidential"}),
        json!({"approval": "NotRequired", "riskLevel": "Medium"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let reply = harness.admit(&pod_with_model("contracts")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "DATA_CLASSIFICATION_EXCEEDED");
    let message = reply.message();
    assert!(
        message.contains("policybind.io/data-classification: Internal"),
        "{message}"
    );
    assert!(
        message.contains("policybind.io/max-data-classification=Confidential"),
        "{message}"
    );

    // Declaring that the workload only handles Internal data admits it.
    let mut review = pod_with_model("contracts");
    review["request"]["object"]["metadata"]["annotations"]["policybind.io/data-classification"] =
        json!("Internal");
    assert!(harness.admit(&review).await.allowed());
}

#[tokio::test]
async fn namespace_label_raises_the_allowed_classification() {
    let view = default_view();
    view.add_namespace(
        "team-a",
        &[
            ("policybind.io/enforce", "true"),
            ("policybind.io/max-data-classification", "Restricted"),
        ],
    );
    view.add_model(model(
        "team-a",
        "contracts",
        json!({"maxDataClassification": "Confidential"}),
        json!({"approval": "NotRequired", "riskLevel": "Medium"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    assert!(harness.admit(&pod_with_model("contracts")).await.allowed());
}

#[tokio::test]
async fn workload_declaring_more_sensitive_data_than_its_model_may_see_is_denied() {
    let view = default_view();
    view.add_namespace(
        "team-a",
        &[
            ("policybind.io/enforce", "true"),
            ("policybind.io/max-data-classification", "Restricted"),
        ],
    );
    let harness = start(view, AdmissionConfig::default()).await;
    let mut review = pod_with_model("chat");
    review["request"]["object"]["metadata"]["annotations"]["policybind.io/data-classification"] =
        json!("Restricted");
    let reply = harness.validate(&review).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "MODEL_DATA_CLASSIFICATION_EXCEEDED");
    assert!(
        reply.message().contains("may only see Internal data"),
        "{}",
        reply.message()
    );
}

/// Wraps the pod template of the Deployment fixture into another workload kind.
fn workload(group: &str, kind: &str, resource: &str, model: &str) -> Value {
    let mut review = fixture("deployment-create.json");
    let mut template = review["request"]["object"]["spec"]["template"].clone();
    template["metadata"]["annotations"]["policybind.io/model"] = json!(model);
    let spec = match kind {
        "CronJob" => {
            json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}})
        }
        _ => json!({"selector": {"matchLabels": {"app": "chat"}}, "template": template}),
    };
    let api_version = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    review["request"]["kind"] = json!({"group": group, "version": "v1", "kind": kind});
    review["request"]["resource"] = json!({"group": group, "version": "v1", "resource": resource});
    review["request"]["object"]["kind"] = json!(kind);
    review["request"]["object"]["apiVersion"] = json!(api_version);
    review["request"]["object"]["spec"] = spec;
    review
}

#[tokio::test]
async fn every_workload_kind_is_judged_by_its_pod_template() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    assert!(
        harness
            .validate(&fixture("deployment-create.json"))
            .await
            .allowed()
    );
    // The CronJob's batch pods declare the model but have no port for the sidecar:
    // in an enforced namespace they could never run behind it, so the workload is
    // refused when it is written, with what to fix.
    let cronjob = harness.validate(&fixture("cronjob-create.json")).await;
    assert_eq!(code(&cronjob), "SIDECAR_MISSING");
    assert!(
        cronjob
            .message()
            .contains("no container has a port named \"http\""),
        "{}",
        cronjob.message()
    );
    for (group, kind, resource) in [
        ("apps", "Deployment", "deployments"),
        ("apps", "StatefulSet", "statefulsets"),
        ("apps", "ReplicaSet", "replicasets"),
        ("apps", "DaemonSet", "daemonsets"),
        ("batch", "Job", "jobs"),
        ("batch", "CronJob", "cronjobs"),
    ] {
        let allowed = harness
            .validate(&workload(group, kind, resource, "chat"))
            .await;
        assert!(allowed.allowed(), "{kind}: {}", allowed.message());
        let denied = harness
            .validate(&workload(group, kind, resource, "missing"))
            .await;
        assert!(
            !denied.allowed(),
            "{kind} with an unregistered model was admitted"
        );
        let expected_field = if kind == "CronJob" {
            "spec.jobTemplate.spec.template.metadata.annotations[policybind.io/model]"
        } else {
            "spec.template.metadata.annotations[policybind.io/model]"
        };
        assert!(
            denied.message().contains(expected_field),
            "{kind}: {}",
            denied.message()
        );
    }
}

#[tokio::test]
async fn scaling_a_workload_of_a_suspended_model_is_not_blocked() {
    let view = default_view();
    view.add_model(model(
        "team-a",
        "paused",
        json!({"suspended": true}),
        json!({"approval": "NotRequired"}),
    ));
    let harness = start(view, AdmissionConfig::default()).await;
    let mut review = workload("apps", "Deployment", "deployments", "paused");
    review["request"]["operation"] = json!("UPDATE");
    let mut old = review["request"]["object"].clone();
    old["spec"]["replicas"] = json!(3);
    review["request"]["oldObject"] = old;
    review["request"]["object"]["spec"]["replicas"] = json!(0);
    assert!(harness.validate(&review).await.allowed());

    // Changing the template is judged again.
    review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("vllm/vllm-openai:v0.7.0");
    assert!(!harness.validate(&review).await.allowed());
}

fn undeclared_vllm_pod() -> Value {
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["metadata"]["annotations"] = json!({});
    review
}

#[tokio::test]
async fn undeclared_model_server_is_admitted_with_a_warning_by_default() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.validate(&undeclared_vllm_pod()).await;
    assert!(reply.allowed());
    let warnings = reply.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("vllm/vllm-openai"), "{warnings:?}");
    assert!(warnings[0].contains("policybind.io/model"), "{warnings:?}");
    assert_eq!(harness.audit.records().len(), 1);
}

#[tokio::test]
async fn undeclared_model_server_is_denied_when_configured() {
    let config = AdmissionConfig {
        undeclared: UndeclaredMode::Deny,
        ..AdmissionConfig::default()
    };
    let harness = start(default_view(), config).await;
    let reply = harness.validate(&undeclared_vllm_pod()).await;
    assert!(!reply.allowed());
    assert!(reply.message().contains("looks like a model server"));
}

#[tokio::test]
async fn configured_image_patterns_extend_the_heuristics() {
    let config = AdmissionConfig {
        undeclared: UndeclaredMode::Deny,
        extra_model_server_images: vec!["registry.example.com/ml/*".into()],
        ..AdmissionConfig::default()
    };
    let harness = start(default_view(), config).await;
    let mut review = undeclared_vllm_pod();
    review["request"]["object"]["spec"]["containers"][0]["image"] =
        json!("registry.example.com/ml/inhouse-llm:3");
    review["request"]["object"]["spec"]["containers"][0]["args"] = json!([]);
    assert!(!harness.validate(&review).await.allowed());
}

#[tokio::test]
async fn ordinary_pods_are_admitted_without_warnings_or_records() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = undeclared_vllm_pod();
    review["request"]["object"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    review["request"]["object"]["spec"]["containers"][0]["args"] = json!([]);
    let reply = harness.validate(&review).await;
    assert!(reply.allowed());
    assert!(reply.warnings().is_empty());
    assert!(harness.audit.records().is_empty());
}

#[tokio::test]
async fn system_namespaces_are_never_gated() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    for namespace in ["kube-system", "kube-public", "policybind-system"] {
        let mut review = pod_with_model("missing");
        review["request"]["namespace"] = json!(namespace);
        assert!(harness.validate(&review).await.allowed(), "{namespace}");
    }
}

#[tokio::test]
async fn outside_enforced_namespaces_a_denial_is_only_a_warning_and_a_record() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = pod_with_model("missing");
    review["request"]["namespace"] = json!("team-b");
    let reply = harness.validate(&review).await;
    assert!(reply.allowed());
    assert!(
        reply.warnings()[0]
            .contains("would deny this in an enforced namespace: MODEL_NOT_REGISTERED"),
        "{:?}",
        reply.warnings()
    );
    let records = harness.audit.records();
    assert_eq!(records[0].detail["wouldHave"], "Deny");
    assert_eq!(records[0].codes, ["MODEL_NOT_REGISTERED"]);

    // The pod's own opt-in label enforces.
    review["request"]["object"]["metadata"]["labels"]["policybind.io/inject"] = json!("true");
    let reply = harness.validate(&review).await;
    assert!(!reply.allowed());
    assert!(
        reply.message().starts_with("MODEL_NOT_REGISTERED: "),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn a_workload_opting_its_pods_in_is_enforced_outside_enforced_namespaces() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = workload("apps", "Deployment", "deployments", "missing");
    review["request"]["namespace"] = json!("team-b");
    assert!(
        harness.validate(&review).await.allowed(),
        "audit mode without opt-in"
    );
    review["request"]["object"]["spec"]["template"]["metadata"]["labels"]["policybind.io/inject"] =
        json!("true");
    let reply = harness.validate(&review).await;
    assert!(!reply.allowed());
    assert!(
        reply.message().starts_with("MODEL_NOT_REGISTERED: "),
        "{}",
        reply.message()
    );
}
