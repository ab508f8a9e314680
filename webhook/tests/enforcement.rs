//! Enforced namespaces are enforced, over real HTTPS with AdmissionReview
//! fixtures: a model pod runs behind the genuine sidecar or an authorized
//! exemption, a forged sidecar is refused, and nothing but the sidecar reads the
//! namespace's audit key. Each hostile case asserts the safe outcome and the record.

mod common;

use common::{Harness, Reply, default_rights, default_view, fixture, start, start_with};
use policybind_crds::Effect;
use policybind_webhook::authz::StaticAuthorizer;
use policybind_webhook::config::AdmissionConfig;
use serde_json::{Value, json};

fn code(reply: &Reply) -> String {
    reply.response()["status"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The fixture pod as a person creates it directly (no owner, their own name).
fn pod_by(user: &str) -> Value {
    let mut review = fixture("pod-create.json");
    review["request"]["userInfo"] =
        json!({"username": user, "uid": "u-1", "groups": ["team-a-devs", "system:authenticated"]});
    let metadata = &mut review["request"]["object"]["metadata"];
    metadata.as_object_mut().unwrap().remove("ownerReferences");
    metadata["name"] = json!("chat-manual");
    review
}

fn opted_out(mut review: Value) -> Value {
    review["request"]["object"]["metadata"]["annotations"]["policybind.io/inject"] = json!("false");
    review
}

fn rights_with_exempt(user: &str, namespace: &str) -> StaticAuthorizer {
    default_rights().grant(user, "exempt", "modeldeployments", Some(namespace))
}

/// The fixture pod after the mutating webhook: what the validating webhook sees.
async fn injected(harness: &Harness) -> Value {
    let review = fixture("pod-create.json");
    let reply = harness.mutate(&review).await;
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &reply.patch().expect("injected")).unwrap();
    let mut out = review;
    out["request"]["object"] = pod;
    out
}

fn sidecar(review: &mut Value) -> &mut Value {
    review["request"]["object"]["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "policybind-sidecar")
        .unwrap()
}

#[tokio::test]
async fn a_model_pod_without_the_sidecar_in_an_enforced_namespace_is_denied_and_recorded() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    // As if the mutating webhook had been skipped: validation alone sees the pod.
    let reply = harness.validate(&fixture("pod-create.json")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "SIDECAR_MISSING");
    assert!(
        reply.message().starts_with(
            "SIDECAR_MISSING: the pod declares model \"chat\" in enforced namespace team-a but carries no PolicyBind sidecar"
        ),
        "{}",
        reply.message()
    );
    let records = harness.audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].effect, Some(Effect::Deny));
    assert_eq!(records[0].codes, ["SIDECAR_MISSING"]);

    // Outside enforced namespaces the same pod is audit mode: admitted.
    let mut elsewhere = fixture("pod-create.json");
    elsewhere["request"]["namespace"] = json!("team-b");
    assert!(harness.validate(&elsewhere).await.allowed());
}

#[tokio::test]
async fn a_model_pod_whose_port_cannot_be_taken_over_is_denied_saying_why() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["spec"]["containers"][0]["ports"][0]["name"] = json!("api");
    let reply = harness.admit(&review).await;
    assert_eq!(code(&reply), "SIDECAR_MISSING");
    assert!(
        reply
            .message()
            .contains("no container has a port named \"http\""),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn an_opted_out_model_pod_by_a_user_without_the_right_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness
        .admit(&opted_out(pod_by("mallory@example.com")))
        .await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "EXEMPTION_NOT_PERMITTED");
    let message = reply.message();
    assert!(
        message.contains(
            "mallory@example.com may not exempt model \"chat\": remove the opt-out so the sidecar is injected, or \
             ask an administrator to grant verb \"exempt\" on modeldeployments.policybind.io \"chat\" in namespace team-a"
        ),
        "{message}"
    );
    let denial = harness.validation_records().pop().unwrap();
    assert_eq!(denial.effect, Some(Effect::Deny));
    assert_eq!(denial.subject.as_deref(), Some("mallory@example.com"));
    assert_eq!(denial.codes, ["EXEMPTION_NOT_PERMITTED"]);
}

#[tokio::test]
async fn an_opted_out_model_pod_by_a_user_with_the_right_is_admitted_and_recorded() {
    let rights = rights_with_exempt("alice@example.com", "team-a");
    let harness = start_with(default_view(), AdmissionConfig::default(), rights, 1 << 22).await;
    for spelling in [("annotations", "false"), ("labels", "disabled")] {
        let mut review = pod_by("alice@example.com");
        review["request"]["object"]["metadata"][spelling.0]["policybind.io/inject"] =
            json!(spelling.1);
        let reply = harness.admit(&review).await;
        assert!(reply.allowed(), "{spelling:?}: {}", reply.message());
        assert!(reply.patch().is_none(), "opted out: nothing injected");
    }
    let records = harness.validation_records();
    let exempted = records.last().unwrap();
    assert_eq!(exempted.effect, Some(Effect::Allow));
    assert_eq!(exempted.codes, ["SIDECAR_EXEMPTED"]);
    assert_eq!(exempted.detail["exemption"], "authorized");
    assert_eq!(exempted.detail["creator"], "alice@example.com");
    assert_eq!(exempted.model.as_deref(), Some("team-a/chat"));

    // The right is per namespace: the same user elsewhere is refused.
    let view = default_view();
    view.add_namespace("team-c", &[("policybind.io/enforce", "true")]);
    view.add_model(common::model(
        "team-c",
        "chat",
        json!({}),
        json!({"approval": "NotRequired", "riskLevel": "Low"}),
    ));
    let harness = start_with(
        view,
        AdmissionConfig::default(),
        rights_with_exempt("alice@example.com", "team-a"),
        1 << 22,
    )
    .await;
    let mut review = opted_out(pod_by("alice@example.com"));
    review["request"]["namespace"] = json!("team-c");
    assert_eq!(
        code(&harness.admit(&review).await),
        "EXEMPTION_NOT_PERMITTED"
    );
}

#[tokio::test]
async fn pods_from_kubernetes_controllers_inherit_the_check_their_template_passed() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    // The fixture pod: created by the ReplicaSet controller, owned by its ReplicaSet.
    let reply = harness.admit(&opted_out(fixture("pod-create.json"))).await;
    assert!(reply.allowed(), "{}", reply.message());
    let record = harness.validation_records().pop().unwrap();
    assert_eq!(record.detail["exemption"], "inherited");

    // A third-party controller (KServe) needs the right itself, owner or not.
    let mut kserve = opted_out(fixture("pod-create.json"));
    kserve["request"]["userInfo"]["username"] =
        json!("system:serviceaccount:kserve:kserve-controller-manager");
    assert_eq!(
        code(&harness.admit(&kserve).await),
        "EXEMPTION_NOT_PERMITTED"
    );
    // A kube-system controller without a controller owner reference does too.
    let mut orphan = opted_out(fixture("pod-create.json"));
    orphan["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    assert_eq!(
        code(&harness.admit(&orphan).await),
        "EXEMPTION_NOT_PERMITTED"
    );
}

#[tokio::test]
async fn an_opted_out_workload_template_needs_the_right_of_the_person_writing_it() {
    let mut review = fixture("deployment-create.json");
    review["request"]["object"]["spec"]["template"]["metadata"]["annotations"]["policybind.io/inject"] =
        json!("disabled");
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let denied = harness.validate(&review).await;
    assert_eq!(code(&denied), "EXEMPTION_NOT_PERMITTED");
    assert!(
        denied
            .message()
            .contains("the pod template of Deployment opts out"),
        "{}",
        denied.message()
    );
    let rights = rights_with_exempt("alice@example.com", "team-a");
    let harness = start_with(default_view(), AdmissionConfig::default(), rights, 1 << 22).await;
    assert!(harness.validate(&review).await.allowed());
}

#[tokio::test]
async fn the_injected_sidecar_is_genuine_as_the_api_server_stores_it() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut stored = injected(&harness).await;
    // What the API server's defaulting adds to (or older webhooks left out of) the
    // sidecar: it must not make our own sidecar look forged.
    let sidecar = sidecar(&mut stored);
    sidecar["terminationMessagePath"] = json!("/dev/termination-log");
    sidecar["imagePullPolicy"] = json!("IfNotPresent");
    for var in sidecar["env"].as_array_mut().unwrap() {
        if let Some(field) = var.pointer_mut("/valueFrom/fieldRef") {
            assert_eq!(
                field["apiVersion"], "v1",
                "injected as the API server defaults it"
            );
            field.as_object_mut().unwrap().remove("apiVersion");
        }
    }
    let reply = harness.validate(&stored).await;
    assert!(reply.allowed(), "{}", reply.message());
}

#[tokio::test]
async fn a_forged_sidecar_is_denied_whatever_it_changes() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let genuine = injected(&harness).await;
    assert!(harness.validate(&genuine).await.allowed());

    type Tamper = fn(&mut Value);
    let cases: [(&str, Tamper, &str); 8] = [
        (
            "image",
            |r| sidecar(r)["image"] = json!("evil.example.com/allow-all:1"),
            "its image is \"evil.example.com/allow-all:1\"",
        ),
        (
            "command",
            |r| sidecar(r)["command"] = json!(["sh", "-c", "sleep infinity"]),
            "its command or arguments differ",
        ),
        (
            "arguments",
            |r| sidecar(r)["args"] = json!(["--default-effect=Allow"]),
            "its command or arguments differ",
        ),
        (
            "bundle from a namespace the workload can write",
            |r| {
                let env = sidecar(r)["env"].as_array_mut().unwrap();
                let bundle = env
                    .iter_mut()
                    .find(|e| e["name"] == "POLICYBIND_BUNDLE_NAMESPACE")
                    .unwrap();
                bundle["value"] = json!("team-a");
            },
            "POLICYBIND_BUNDLE_NAMESPACE differs",
        ),
        (
            "an extra wiring variable",
            |r| {
                sidecar(r)["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "POLICYBIND_BUNDLE_DIR", "value": "/tmp/mine"}))
            },
            "it sets POLICYBIND_BUNDLE_DIR",
        ),
        (
            "envFrom",
            |r| sidecar(r)["envFrom"] = json!([{"configMapRef": {"name": "mine"}}]),
            "envFrom",
        ),
        (
            "a signing key of its own",
            |r| {
                r["request"]["object"]["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|v| v["name"] == "policybind-audit-key")
                    .unwrap()["secret"]["secretName"] = json!("my-own-key")
            },
            "volume policybind-audit-key is not Secret policybind-audit-key",
        ),
        (
            "not restartable",
            |r| {
                sidecar(r).as_object_mut().unwrap().remove("restartPolicy");
            },
            "restartPolicy: Always",
        ),
    ];
    for (what, tamper, expected) in cases {
        let mut review = genuine.clone();
        tamper(&mut review);
        let reply = harness.validate(&review).await;
        assert!(!reply.allowed(), "{what}: admitted");
        assert_eq!(code(&reply), "SIDECAR_FORGED", "{what}");
        assert!(
            reply.message().contains(expected),
            "{what}: {}",
            reply.message()
        );
    }

    // A pod that brings its own `policybind-sidecar`: the webhook leaves it alone
    // (idempotence), and validation refuses it.
    let mut brought = fixture("pod-create.json");
    brought["request"]["object"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"name": "policybind-sidecar", "image": "ghcr.io/policybind/policybind:latest",
                     "command": ["policybind", "sidecar"]}),
        );
    let reply = harness.admit(&brought).await;
    assert_eq!(code(&reply), "SIDECAR_FORGED");
    assert!(
        reply
            .message()
            .contains("the annotation policybind.io/ports"),
        "{}",
        reply.message()
    );
}

/// Adds a container reading the audit key to the pod of `review`.
fn with_key_reader(mut review: Value, how: &str) -> Value {
    let object = &mut review["request"]["object"];
    let volumes = object["spec"]["volumes"].as_array_mut().unwrap();
    match how {
        "volume" => {
            volumes.push(json!({"name": "k", "secret": {"secretName": "policybind-audit-key"}}))
        }
        "projected" => volumes.push(json!({"name": "k", "projected": {"sources": [
            {"configMap": {"name": "x"}}, {"secret": {"name": "policybind-audit-key"}}]}})),
        _ => {}
    }
    let model = &mut object["spec"]["containers"][0];
    match how {
        "volume" | "projected" => model["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "k", "mountPath": "/keys"})),
        "env" => model["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "K", "valueFrom":
                {"secretKeyRef": {"name": "policybind-audit-key", "key": "signing-key"}}})),
        _ => model["envFrom"] = json!([{"secretRef": {"name": "policybind-audit-key"}}]),
    }
    review
}

#[tokio::test]
async fn a_pod_reading_the_audit_key_in_its_model_container_is_denied_in_every_namespace() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    for namespace in ["team-a", "team-b"] {
        for how in ["volume", "projected", "env", "envFrom"] {
            let mut review = with_key_reader(fixture("pod-create.json"), how);
            review["request"]["namespace"] = json!(namespace);
            let reply = harness.admit(&review).await;
            assert!(!reply.allowed(), "{namespace} {how}: admitted");
            assert_eq!(code(&reply), "AUDIT_KEY_EXPOSED", "{namespace} {how}");
            assert!(
                reply.message().contains("container \"vllm\""),
                "{}",
                reply.message()
            );
        }
    }
    // The injected pod's own key volume, mounted by the model container as well.
    let mut review = injected(&harness).await;
    review["request"]["object"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "policybind-audit-key", "mountPath": "/stolen"}));
    let reply = harness.validate(&review).await;
    assert_eq!(code(&reply), "AUDIT_KEY_EXPOSED");
    // Ordinary pods reading it are refused too: the key is not theirs either.
    let mut ordinary = with_key_reader(fixture("pod-create.json"), "volume");
    ordinary["request"]["object"]["metadata"]["annotations"] = json!({});
    ordinary["request"]["object"]["spec"]["containers"][0]["image"] = json!("busybox");
    assert_eq!(
        code(&harness.validate(&ordinary).await),
        "AUDIT_KEY_EXPOSED"
    );
}

#[tokio::test]
async fn an_ephemeral_debug_container_may_not_mount_the_audit_key() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = injected(&harness).await;
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["subResource"] = json!("ephemeralcontainers");
    review["request"]["oldObject"] = review["request"]["object"].clone();
    review["request"]["object"]["spec"]["ephemeralContainers"] = json!([{"name": "debugger",
        "image": "busybox", "volumeMounts": [{"name": "policybind-audit-key", "mountPath": "/k"}]}]);
    let reply = harness.validate(&review).await;
    assert_eq!(code(&reply), "AUDIT_KEY_EXPOSED");
    assert!(
        reply.message().contains("debugger (ephemeral)"),
        "{}",
        reply.message()
    );
    // A debug container without the mount is fine.
    review["request"]["object"]["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": "busybox"}]);
    assert!(harness.validate(&review).await.allowed());
}
