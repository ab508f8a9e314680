//! Sidecar injection over real HTTPS: the returned JSON patch is applied to the
//! pod from the fixture and the result checked; injecting twice changes nothing.

mod common;

use common::{Harness, default_view, fixture, start};
use policybind_webhook::config::{AdmissionConfig, SidecarConfig};
use serde_json::{Value, json};

/// Sends the review to /mutate and returns the pod with the patch applied (or
/// unchanged when no patch came back), and whether a patch came back.
async fn mutate_pod(harness: &Harness, review: &Value) -> (Value, bool, Vec<String>) {
    let reply = harness.mutate(review).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.allowed(),
        "mutation never denies: {}",
        reply.message()
    );
    let mut pod = review["request"]["object"].clone();
    let patched = match reply.patch() {
        Some(patch) => {
            json_patch::patch(&mut pod, &patch).expect("patch applies to the original pod");
            true
        }
        None => false,
    };
    (pod, patched, reply.warnings())
}

fn review_of(pod: &Value) -> Value {
    let mut review = fixture("pod-create.json");
    review["request"]["object"] = pod.clone();
    review
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[tokio::test]
async fn pod_in_enforced_namespace_gets_a_native_sidecar_that_takes_over_the_port() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let (pod, patched, _) = mutate_pod(&harness, &fixture("pod-create.json")).await;
    assert!(patched);

    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["policybind.io/injected"], "true");
    assert_eq!(annotations["policybind.io/ports"], "8000:18000");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "vllm"
    );

    let sidecar = container(&pod["spec"]["initContainers"], "policybind-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["command"], json!(["policybind", "sidecar"]));
    assert_eq!(
        sidecar["ports"][0],
        json!({"name": "http", "containerPort": 8000, "protocol": "TCP"})
    );
    assert_eq!(
        env(sidecar, "POLICYBIND_UPSTREAM")["value"],
        "http://127.0.0.1:18000"
    );
    assert_eq!(env(sidecar, "POLICYBIND_LISTEN")["value"], "0.0.0.0:8000");
    assert_eq!(
        env(sidecar, "POLICYBIND_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env(sidecar, "POLICYBIND_POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env(sidecar, "POLICYBIND_MODEL_DEPLOYMENT")["value"], "chat");
    // The bundle lives in PolicyBind's namespace, one ConfigMap per namespace.
    assert_eq!(
        env(sidecar, "POLICYBIND_BUNDLE_NAMESPACE")["value"],
        "policybind-system"
    );
    assert_eq!(
        env(sidecar, "POLICYBIND_BUNDLE_CONFIGMAP")["value"],
        "policybind-bundle.team-a"
    );
    // The audit key is a file mounted into the sidecar only; no Secret reference.
    assert_eq!(
        env(sidecar, "POLICYBIND_AUDIT_KEY")["value"],
        "/var/run/secrets/policybind/audit/signing-key"
    );
    let names: Vec<&str> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"POLICYBIND_AUDIT_KEY_SECRET"), "{names:?}");
    // glibc gives freed audit buffers back (docs/audit.md), whatever the image.
    assert_eq!(env(sidecar, "MALLOC_MMAP_THRESHOLD_")["value"], "131072");
    assert!(!names.contains(&"POLICYBIND_BUNDLE_DIR"), "{names:?}");
    assert_eq!(
        sidecar["volumeMounts"],
        json!([
            {"name": "policybind-audit-key", "mountPath": "/var/run/secrets/policybind/audit", "readOnly": true},
            {"name": "policybind-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ])
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let key_volume = volumes
        .iter()
        .find(|v| v["name"] == "policybind-audit-key")
        .expect("audit key volume");
    assert_eq!(key_volume["secret"]["secretName"], "policybind-audit-key");
    assert_eq!(key_volume["secret"]["optional"], false);
    let token_volume = volumes
        .iter()
        .find(|v| v["name"] == "policybind-api-access")
        .expect("token volume");
    assert_eq!(
        token_volume["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(pod["metadata"]["labels"]["policybind.io/injected"], "true");
    let security = &sidecar["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sidecar["resources"]["limits"]["memory"], "128Mi");
    assert!(sidecar["startupProbe"].is_object());
    assert!(sidecar["readinessProbe"].is_object());

    let model = container(&pod["spec"]["containers"], "vllm");
    assert_eq!(
        model["ports"][0],
        json!({"name": "pb-model", "containerPort": 18000, "protocol": "TCP"})
    );
    assert_eq!(env(model, "PORT")["value"], "18000");
    assert_eq!(
        env(model, "HF_HOME")["value"],
        "/cache",
        "existing env is kept"
    );
    assert_eq!(
        model["args"],
        json!([
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--port",
            "18000"
        ])
    );
    assert_eq!(model["readinessProbe"]["httpGet"]["port"], 18000);
    // Fields the webhook does not own survive untouched.
    assert_eq!(model["resources"]["limits"]["nvidia.com/gpu"], "1");
    // The model container never sees the audit key.
    assert!(
        model["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "policybind-audit-key"),
        "{}",
        model["volumeMounts"]
    );
    assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);

    let records = harness.audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].detail["injected"], "true");
}

#[tokio::test]
async fn injecting_twice_gives_the_same_pod() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let (once, patched, _) = mutate_pod(&harness, &fixture("pod-create.json")).await;
    assert!(patched);
    // Reinvocation (IfNeeded) sends the already injected pod again.
    let (twice, patched_again, _) = mutate_pod(&harness, &review_of(&once)).await;
    assert!(!patched_again, "an injected pod gets no patch");
    assert_eq!(once, twice);

    // Even when another webhook dropped our annotation, the container is recognised.
    let mut stripped = once.clone();
    stripped["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("policybind.io/injected");
    let (thrice, patched_third, _) = mutate_pod(&harness, &review_of(&stripped)).await;
    assert!(!patched_third);
    assert_eq!(thrice, stripped);
}

#[tokio::test]
async fn regular_sidecar_is_a_container_when_native_sidecars_are_unsupported() {
    let config = AdmissionConfig {
        native_sidecars: false,
        ..AdmissionConfig::default()
    };
    let harness = start(default_view(), config).await;
    let (pod, patched, _) = mutate_pod(&harness, &fixture("pod-create.json")).await;
    assert!(patched);
    assert!(pod["spec"]["initContainers"].is_null());
    let sidecar = container(&pod["spec"]["containers"], "policybind-sidecar");
    assert!(sidecar["restartPolicy"].is_null());
    assert!(sidecar["startupProbe"].is_null());
}

#[tokio::test]
async fn opt_out_as_label_or_annotation_in_any_spelling_wins_over_the_namespace_label() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    for place in ["labels", "annotations"] {
        for value in ["false", "disabled", "False", "DISABLED", " false "] {
            let mut review = fixture("pod-create.json");
            review["request"]["object"]["metadata"][place]["policybind.io/inject"] = json!(value);
            let (pod, patched, _) = mutate_pod(&harness, &review).await;
            assert!(!patched, "{place} {value:?}");
            assert_eq!(pod, review["request"]["object"]);
        }
    }
    // An opt-out wins over an opt-in written in the other place.
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["metadata"]["labels"]["policybind.io/inject"] = json!("true");
    review["request"]["object"]["metadata"]["annotations"]["policybind.io/inject"] =
        json!("disabled");
    let (_, patched, _) = mutate_pod(&harness, &review).await;
    assert!(!patched);
}

#[tokio::test]
async fn pod_opts_in_outside_enforced_namespaces_as_label_or_annotation_in_any_spelling() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    review["request"]["namespace"] = json!("team-b");
    review["request"]["object"]["metadata"]["namespace"] = json!("team-b");
    let (_, patched, _) = mutate_pod(&harness, &review).await;
    assert!(
        !patched,
        "team-b is not enforced and the pod did not opt in"
    );
    for place in ["labels", "annotations"] {
        for value in ["true", "enabled", "TRUE", "Enabled"] {
            let mut opted = review.clone();
            opted["request"]["object"]["metadata"][place]["policybind.io/inject"] = json!(value);
            let (pod, patched, _) = mutate_pod(&harness, &opted).await;
            assert!(patched, "{place} {value:?}");
            assert_eq!(pod["metadata"]["labels"]["policybind.io/injected"], "true");
            assert_eq!(
                pod["metadata"]["annotations"]["policybind.io/injected"],
                "true"
            );
            // The bundle is the pod's own namespace's.
            let sidecar = container(&pod["spec"]["initContainers"], "policybind-sidecar");
            assert_eq!(
                env(sidecar, "POLICYBIND_BUNDLE_CONFIGMAP")["value"],
                "policybind-bundle.team-b"
            );
        }
    }
    // A value that means neither is not an opt-in.
    let mut unclear = review.clone();
    unclear["request"]["object"]["metadata"]["labels"]["policybind.io/inject"] = json!("yes");
    let (_, patched, _) = mutate_pod(&harness, &unclear).await;
    assert!(!patched);
}

#[tokio::test]
async fn an_ordinary_web_pod_in_an_enforced_namespace_is_untouched_and_unrecorded() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    let object = &mut review["request"]["object"];
    object["metadata"]["annotations"] = json!({});
    object["metadata"]["labels"] = json!({"app": "shop"});
    object["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    object["spec"]["containers"][0]["args"] = json!([]);
    // It even has a port named `http`: that alone is no reason to inject.
    assert_eq!(object["spec"]["containers"][0]["ports"][0]["name"], "http");
    let (pod, patched, warnings) = mutate_pod(&harness, &review).await;
    assert!(!patched);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(pod, review["request"]["object"]);
    let validated = harness.validate(&review).await;
    assert!(validated.allowed(), "{}", validated.message());
    assert!(harness.audit.records().is_empty());
}

#[tokio::test]
async fn a_pod_asking_for_the_sidecar_without_declaring_a_model_is_told_so() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"policybind.io/inject": "true"});
    let (_, patched, warnings) = mutate_pod(&harness, &review).await;
    assert!(!patched);
    assert!(warnings[0].contains("declares no model"), "{warnings:?}");
}

#[tokio::test]
async fn the_injected_pod_passes_validation_and_so_does_its_re_creation() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let (injected, patched, _) = mutate_pod(&harness, &fixture("pod-create.json")).await;
    assert!(patched);
    // The API server calls the validating webhooks with the mutated pod.
    let reply = harness.validate(&review_of(&injected)).await;
    assert!(reply.allowed(), "{}", reply.message());
    // Re-created from the exported spec: no second patch, still valid.
    let (again, patched_again, _) = mutate_pod(&harness, &review_of(&injected)).await;
    assert!(!patched_again);
    assert_eq!(again, injected);
    assert!(harness.validate(&review_of(&again)).await.allowed());
}

#[tokio::test]
async fn system_and_own_namespaces_are_never_injected() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    for namespace in ["kube-system", "kube-public", "policybind-system"] {
        let mut review = fixture("pod-create.json");
        review["request"]["namespace"] = json!(namespace);
        review["request"]["object"]["metadata"]["labels"]["policybind.io/inject"] = json!("true");
        let (_, patched, _) = mutate_pod(&harness, &review).await;
        assert!(!patched, "{namespace}");
    }
}

#[tokio::test]
async fn opted_in_pod_without_a_named_port_is_admitted_unchanged_with_a_warning() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["spec"]["containers"][0]["ports"][0]["name"] = json!("api");
    let (pod, patched, warnings) = mutate_pod(&harness, &review).await;
    assert!(!patched);
    assert_eq!(pod, review["request"]["object"]);
    assert!(warnings[0].contains("port named \"http\""), "{warnings:?}");
}

#[tokio::test]
async fn sidecar_shape_follows_configuration() {
    let config = AdmissionConfig {
        sidecar: SidecarConfig {
            image: "registry.example.com/policybind:1.0.0".into(),
            model_port: Some(9000),
            memory_limit: "256Mi".into(),
            cpu_limit: Some("500m".into()),
            extra_env: [("RUST_LOG".to_string(), "debug".to_string())].into(),
            ..SidecarConfig::default()
        },
        ..AdmissionConfig::default()
    };
    let harness = start(default_view(), config).await;
    let (pod, patched, _) = mutate_pod(&harness, &fixture("pod-create.json")).await;
    assert!(patched);
    let sidecar = container(&pod["spec"]["initContainers"], "policybind-sidecar");
    assert_eq!(sidecar["image"], "registry.example.com/policybind:1.0.0");
    assert_eq!(
        sidecar["resources"]["limits"],
        json!({"cpu": "500m", "memory": "256Mi"})
    );
    assert_eq!(
        env(sidecar, "POLICYBIND_UPSTREAM")["value"],
        "http://127.0.0.1:9000"
    );
    assert_eq!(env(sidecar, "RUST_LOG")["value"], "debug");
    let model = container(&pod["spec"]["containers"], "vllm");
    assert_eq!(model["ports"][0]["containerPort"], 9000);
}

#[tokio::test]
async fn deployments_are_not_mutated_only_their_pods() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let reply = harness.mutate(&fixture("deployment-create.json")).await;
    assert!(reply.allowed());
    assert!(reply.patch().is_none());
}
