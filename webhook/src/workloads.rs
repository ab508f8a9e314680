//! Gating AI workloads: Pods and the pod templates of every workload kind that
//! declare a model with `policybind.io/model`.
//!
//! A workload that names a ModelDeployment is admitted only when that model is
//! registered, usable (approved or not needing approval), not suspended, and the
//! data the workload declares it handles is allowed both by the model and by the
//! namespace. A workload that looks like a model server (known images, launcher
//! commands) but declares nothing gets a warning or a denial, per configuration.
//!
//! Checks read the pod template as JSON (`serde_json::Value`) rather than typed
//! structs: the same code then serves every workload kind, and fields newer than
//! our Kubernetes types are never lost or rejected.

use policybind_crds::wire::{annotations, labels};
use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use policybind_crds::model_deployment::{ApprovalState, ModelScope};
use policybind_crds::{DataClassification, ModelDeployment};
use policybind_engine::bundle::BundleModel;
use policybind_engine::codes;
use serde_json::Value;

use crate::config::{AdmissionConfig, UndeclaredMode};
use crate::inject::{self, InjectChoice};
use crate::verdict::Verdict;
use crate::view::ClusterView;
use policybind_engine::ident::{self, IdentError};

/// Image repositories (after dropping registry defaults, tag and digest) that are
/// treated as model servers when a workload declares no model.
pub const MODEL_SERVER_IMAGES: &[&str] = &[
    "vllm/vllm-openai",
    "*/vllm-openai",
    "vllm/vllm-*",
    "ghcr.io/huggingface/text-generation-inference",
    "*/text-generation-inference",
    "ghcr.io/huggingface/text-embeddings-inference",
    "ollama/ollama",
    "*/ollama",
    "kserve/*",
    "*/kserve/*",
    "nvcr.io/nvidia/tritonserver",
    "*/tritonserver",
    "nvcr.io/nim/*",
    "lmsysorg/sglang",
    "*/sglang",
    "ghcr.io/ggerganov/llama.cpp",
    "ghcr.io/ggml-org/llama.cpp",
    "localai/localai",
    "*/localai",
    "seldonio/mlserver",
];

/// Substrings of a container's command line that mark a model server.
pub const MODEL_SERVER_COMMANDS: &[&str] = &[
    "vllm serve",
    "vllm.entrypoints",
    "text-generation-launcher",
    "ollama serve",
    "sglang.launch_server",
    "llama-server",
    "tritonserver",
];

/// A pod template: labels, annotations and the pod spec, wherever the workload
/// kind keeps them.
pub struct PodTemplate<'a> {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: &'a Value,
    /// Where the template sits, for messages (`spec.template`).
    pub path: &'static str,
}

/// The workload kinds checked, with where their pod template lives.
pub fn template_path(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        ("", "Pod") => Some(""),
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet") => {
            Some("spec.template")
        }
        ("batch", "Job") => Some("spec.template"),
        ("batch", "CronJob") => Some("spec.jobTemplate.spec.template"),
        _ => None,
    }
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Finds the pod template in a workload object (given as JSON).
pub fn pod_template<'a>(group: &str, kind: &str, object: &'a Value) -> Option<PodTemplate<'a>> {
    let path = template_path(group, kind)?;
    let mut node = object;
    if !path.is_empty() {
        for part in path.split('.') {
            node = node.get(part)?;
        }
    }
    let metadata = node.get("metadata");
    Some(PodTemplate {
        labels: string_map(metadata.and_then(|m| m.get("labels"))),
        annotations: string_map(metadata.and_then(|m| m.get("annotations"))),
        spec: node.get("spec")?,
        path,
    })
}

impl PodTemplate<'_> {
    /// The declared model reference: the annotation, else the label.
    pub fn model_reference(&self) -> Option<&str> {
        inject::declared_model(&self.labels, &self.annotations)
    }

    /// The annotation and label values the webhook reads and records, checked
    /// like every identifier of a review (`policybind_engine::ident`).
    pub fn check_identifiers(&self) -> Result<(), IdentError> {
        let annotations_path = self.field("metadata.annotations");
        let labels_path = self.field("metadata.labels");
        for (key, max) in [
            (annotations::MODEL, ident::MAX_MODEL_REFERENCE),
            (annotations::INJECT, ident::MAX_KEYWORD),
            (annotations::DATA_CLASSIFICATION, ident::MAX_KEYWORD),
            (annotations::MODEL_CONTAINER, ident::MAX_NAME),
            (annotations::PORTS, ident::MAX_KEYWORD),
        ] {
            if let Some(value) = self.annotations.get(key) {
                ident::check_max(&format!("{annotations_path}[{key}]"), value, max)?;
            }
            if let Some(value) = self.labels.get(key) {
                ident::check_max(&format!("{labels_path}[{key}]"), value, max)?;
            }
        }
        Ok(())
    }

    /// The template as a typed Pod (metadata and spec), for the checks that
    /// compare containers and volumes.
    pub fn to_pod(&self) -> Result<Pod, String> {
        use serde::Deserialize;
        // By reference: no copy of the JSON tree.
        let spec = k8s_openapi::api::core::v1::PodSpec::deserialize(self.spec)
            .map_err(|e| format!("{} is not a valid pod spec: {e}", self.field("spec")))?;
        Ok(Pod {
            metadata: ObjectMeta {
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        })
    }

    /// A field path under the template, for messages (`spec.template.metadata...`).
    pub fn field(&self, rest: &str) -> String {
        if self.path.is_empty() {
            rest.to_string()
        } else {
            format!("{}.{rest}", self.path)
        }
    }

    fn containers(&self) -> impl Iterator<Item = &Value> {
        ["containers", "initContainers"]
            .into_iter()
            .filter_map(|key| self.spec.get(key).and_then(Value::as_array))
            .flatten()
    }
}

/// Recognises model servers that declare no model.
pub struct Heuristics {
    images: GlobSet,
}

impl Heuristics {
    /// The built-in image list plus `extra` globs.
    pub fn new(extra: &[String]) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for pattern in MODEL_SERVER_IMAGES
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            builder.add(GlobBuilder::new(pattern).build()?);
        }
        Ok(Heuristics {
            images: builder.build()?,
        })
    }

    /// Why the template looks like a model server, if it does.
    pub fn model_server_evidence(&self, template: &PodTemplate<'_>) -> Option<String> {
        for container in template.containers() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(image) = container.get("image").and_then(Value::as_str) {
                let repository = image_repository(image);
                if self.images.is_match(repository) {
                    return Some(format!("container {name:?} runs image {image}"));
                }
            }
            let command_line = ["command", "args"]
                .into_iter()
                .filter_map(|key| container.get(key).and_then(Value::as_array))
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(hit) = MODEL_SERVER_COMMANDS
                .iter()
                .find(|pattern| command_line.contains(**pattern))
            {
                return Some(format!("container {name:?} runs {hit:?}"));
            }
        }
        None
    }
}

/// `registry/path/name` of an image reference without tag or digest, with Docker
/// Hub's implicit parts dropped (`docker.io/library/x:1` -> `x`).
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag is after the last ':' that follows the last '/' (a registry port is before it).
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let without_tag = match without_digest[last_slash..].find(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    let mut repository = without_tag;
    for prefix in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = repository.strip_prefix(prefix) {
            repository = rest;
        }
    }
    repository.strip_prefix("library/").unwrap_or(repository)
}

/// Splits `namespace/name` or `name` (in the workload's namespace).
pub fn parse_reference<'a>(reference: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    match reference.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (namespace, reference),
    }
}

/// The highest classification a namespace allows: its label, or the configured default.
pub fn namespace_classification(
    labels: Option<&BTreeMap<String, String>>,
    default: DataClassification,
) -> Result<DataClassification, String> {
    match labels.and_then(|l| l.get(labels::NAMESPACE_CLASSIFICATION)) {
        None => Ok(default),
        Some(value) => DataClassification::parse(value).ok_or_else(|| {
            format!(
                "namespace label {labels_namespace_classification}={value:?} is not one of Public, Internal, Confidential, Restricted", labels_namespace_classification = labels::NAMESPACE_CLASSIFICATION
            )
        }),
    }
}

/// Checks a workload's pod template. `operation` and the old template decide
/// whether there is anything to check: updates that leave the template alone
/// (scaling, labels on the workload itself) are not re-judged, so a suspended
/// model never blocks scaling down or deleting finalizers.
pub fn check(
    config: &AdmissionConfig,
    heuristics: &Heuristics,
    view: &dyn ClusterView,
    namespace: &str,
    template: &PodTemplate<'_>,
) -> Verdict {
    let Some(reference) = template.model_reference() else {
        return check_undeclared(config, heuristics, template);
    };
    let (model_namespace, model_name) = parse_reference(reference, namespace);
    let field = template.field(&format!(
        "metadata.annotations[{annotations_model}]",
        annotations_model = annotations::MODEL
    ));
    let Some(model) = view.model(model_namespace, model_name) else {
        return Verdict::deny(
            codes::MODEL_NOT_REGISTERED,
            format!(
                "{field}: ModelDeployment {model_namespace}/{model_name} is not registered; \
                 register the model first (kubectl apply a ModelDeployment named {model_name} in namespace {model_namespace}) \
                 or fix the {annotations_model} annotation", annotations_model = annotations::MODEL
            ),
        )
        .with_model(format!("{model_namespace}/{model_name}"));
    };
    if model_namespace != namespace && model.spec.scope != ModelScope::Cluster {
        return Verdict::deny(
            crate::codes::MODEL_NOT_SHARED,
            format!(
                "{field}: ModelDeployment {model_namespace}/{model_name} is registered for namespace {model_namespace} \
                 only (spec.scope: Namespace), so workloads in {namespace} cannot serve it; register the model in \
                 {namespace}, or ask its owner to share it with spec.scope: Cluster"
            ),
        )
        .with_model(format!("{model_namespace}/{model_name}"));
    }
    check_model(config, view, namespace, template, &model, &field)
        .with_model(format!("{model_namespace}/{model_name}"))
}

fn check_model(
    config: &AdmissionConfig,
    view: &dyn ClusterView,
    namespace: &str,
    template: &PodTemplate<'_>,
    model: &ModelDeployment,
    field: &str,
) -> Verdict {
    let id = format!(
        "{}/{}",
        model.metadata.namespace.as_deref().unwrap_or(""),
        model.metadata.name.as_deref().unwrap_or("")
    );
    let state = BundleModel::from_model(model, None);
    if state.spec.suspended {
        return Verdict::deny(
            codes::MODEL_SUSPENDED,
            format!(
                "{field}: ModelDeployment {id} is suspended (spec.suspended: true); \
                 no workload may serve it until its owner ({}) lifts the suspension",
                state.spec.owner
            ),
        );
    }
    if !state.approval.usable() {
        let approval_request = model
            .status
            .as_ref()
            .and_then(|s| s.approval_request.clone())
            .map(|name| format!("ApprovalRequest {name}"))
            .unwrap_or_else(|| "an ApprovalRequest for it".to_string());
        let what = match state.approval {
            ApprovalState::Rejected => format!(
                "was rejected; a new review is needed before it can run (see {approval_request})"
            ),
            _ => format!(
                "is {} risk and awaits approval; ask an approver to decide {approval_request} in namespace {}",
                state.risk_level.as_str(),
                model.metadata.namespace.as_deref().unwrap_or("")
            ),
        };
        return Verdict::deny(
            codes::MODEL_NOT_APPROVED,
            format!(
                "{field}: ModelDeployment {id} is not approved (approval {}): it {what}",
                state.approval.as_str()
            ),
        );
    }

    let model_max = state.spec.max_data_classification;
    let declared = match template.annotations.get(annotations::DATA_CLASSIFICATION) {
        Some(value) => match DataClassification::parse(value) {
            Some(level) => level,
            None => {
                return Verdict::deny(
                    codes::REQUEST_INVALID,
                    format!(
                        "{}: {value:?} is not one of Public, Internal, Confidential, Restricted",
                        template.field(&format!(
                            "metadata.annotations[{annotations_data_classification}]",
                            annotations_data_classification = annotations::DATA_CLASSIFICATION
                        ))
                    ),
                );
            }
        },
        // Undeclared: the workload is taken to handle what its model may see.
        None => model_max,
    };
    if declared > model_max {
        return Verdict::deny(
            codes::MODEL_DATA_CLASSIFICATION_EXCEEDED,
            format!(
                "the workload declares {annotations_data_classification}={} but ModelDeployment {id} may only see {} data; \
                 lower the annotation or raise the model's spec.maxDataClassification (which may need a new review)",
                declared.as_str(),
                model_max.as_str(),
                annotations_data_classification = annotations::DATA_CLASSIFICATION
            ),
        );
    }
    let labels = view.namespace_labels(namespace);
    let namespace_max =
        match namespace_classification(labels.as_ref(), config.default_namespace_classification) {
            Ok(level) => level,
            Err(message) => return Verdict::deny(codes::REQUEST_INVALID, message),
        };
    if declared > namespace_max {
        return Verdict::deny(
            codes::DATA_CLASSIFICATION_EXCEEDED,
            format!(
                "namespace {namespace} allows data up to {} ({labels_namespace_classification}) but this workload handles {} data \
                 (from {}); declare {annotations_data_classification}: {} on the pod template if it only handles that, \
                 or ask a cluster admin to label the namespace {labels_namespace_classification}={}",
                namespace_max.as_str(),
                declared.as_str(),
                if template
                    .annotations
                    .contains_key(annotations::DATA_CLASSIFICATION)
                {
                    "its annotation"
                } else {
                    "the model's maxDataClassification"
                },
                namespace_max.as_str(),
                declared.as_str(),
                labels_namespace_classification = labels::NAMESPACE_CLASSIFICATION,
                annotations_data_classification = annotations::DATA_CLASSIFICATION
            ),
        );
    }
    let mut verdict = Verdict::allow(codes::POLICY_ALLOW);
    if state.review_overdue {
        verdict
            .warnings
            .push(format!("ModelDeployment {id} is overdue for review"));
    }
    verdict
}

fn check_undeclared(
    config: &AdmissionConfig,
    heuristics: &Heuristics,
    template: &PodTemplate<'_>,
) -> Verdict {
    let Some(evidence) = heuristics.model_server_evidence(template) else {
        return Verdict::allow_quietly();
    };
    let advice = format!(
        "this looks like a model server ({evidence}) but declares no model; \
         add the annotation {annotations_model}: <ModelDeployment name> to {} and register the model",
        template.field("metadata.annotations"),
        annotations_model = annotations::MODEL
    );
    match config.undeclared {
        UndeclaredMode::Ignore => {
            let mut v = Verdict::allow(codes::MODEL_NOT_REGISTERED);
            v.detail.insert("undeclared".into(), evidence);
            v
        }
        UndeclaredMode::Warn => {
            let mut v = Verdict::allow(codes::MODEL_NOT_REGISTERED);
            v.warnings.push(advice);
            v.detail.insert("undeclared".into(), evidence);
            v
        }
        UndeclaredMode::Deny => {
            let mut v = Verdict::deny(codes::MODEL_NOT_REGISTERED, advice);
            v.detail.insert("undeclared".into(), evidence);
            v
        }
    }
}

/// Whether denials are enforced for this workload: its namespace carries
/// `policybind.io/enforce=true`, or the workload or its pod template opts in with
/// `policybind.io/inject` (`true`/`enabled`, label or annotation). Elsewhere
/// checks run in audit mode.
pub fn is_enforced(
    namespace_labels: Option<&BTreeMap<String, String>>,
    object: &Value,
    template: &PodTemplate<'_>,
) -> bool {
    let object_labels = string_map(object.pointer("/metadata/labels"));
    let object_annotations = string_map(object.pointer("/metadata/annotations"));
    inject::namespace_enforced(namespace_labels)
        || inject::inject_choice(&object_labels, &object_annotations) == InjectChoice::In
        || inject::inject_choice(&template.labels, &template.annotations) == InjectChoice::In
}

/// Whether an update changed anything the checks look at.
pub fn template_changed(new: &PodTemplate<'_>, old: Option<&PodTemplate<'_>>) -> bool {
    match old {
        None => true,
        Some(old) => {
            old.spec != new.spec
                || old.model_reference() != new.model_reference()
                || old.annotations.get(annotations::DATA_CLASSIFICATION)
                    != new.annotations.get(annotations::DATA_CLASSIFICATION)
                || inject::inject_choice(&old.labels, &old.annotations)
                    != inject::inject_choice(&new.labels, &new.annotations)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repository_drops_tag_digest_and_docker_hub_defaults() {
        assert_eq!(
            image_repository("vllm/vllm-openai:v0.6.3"),
            "vllm/vllm-openai"
        );
        assert_eq!(image_repository("docker.io/ollama/ollama"), "ollama/ollama");
        assert_eq!(image_repository("docker.io/library/nginx:1.27"), "nginx");
        assert_eq!(
            image_repository("registry.local:5000/ml/tritonserver:24.08-py3@sha256:abc"),
            "registry.local:5000/ml/tritonserver"
        );
    }

    #[test]
    fn known_model_server_images_and_commands_are_recognised() {
        let heuristics = Heuristics::new(&[]).unwrap();
        let spec = serde_json::json!({"containers": [{"name": "m", "image": "ghcr.io/huggingface/text-generation-inference:2.4"}]});
        let template = PodTemplate {
            labels: Default::default(),
            annotations: Default::default(),
            spec: &spec,
            path: "",
        };
        assert!(heuristics.model_server_evidence(&template).is_some());
        let spec = serde_json::json!({"containers": [{"name": "m", "image": "python:3.12", "command": ["python", "-m", "vllm.entrypoints.openai.api_server"]}]});
        let template = PodTemplate {
            spec: &spec,
            ..template
        };
        assert!(heuristics.model_server_evidence(&template).is_some());
        let spec = serde_json::json!({"containers": [{"name": "web", "image": "nginx:1.27"}]});
        let template = PodTemplate {
            spec: &spec,
            ..template
        };
        assert!(heuristics.model_server_evidence(&template).is_none());
    }

    #[test]
    fn model_reference_may_name_another_namespace() {
        assert_eq!(parse_reference("chat", "team-a"), ("team-a", "chat"));
        assert_eq!(
            parse_reference("registry/chat", "team-a"),
            ("registry", "chat")
        );
    }
}
