//! Sidecar injection, as a pure function: a Pod and the configuration in, the
//! injected Pod and the JSON patch that produces it out.
//!
//! The sidecar takes over the model server's named port (`http` by default): the
//! model container's port moves to a new number (original + offset, or a fixed
//! one) and is renamed `pb-model`, the model is told its new port (`PORT` env,
//! `--port` arguments, `OLLAMA_HOST`), probes that pointed at the old port follow
//! it, and the sidecar listens on the original number under the original name,
//! forwarding to `127.0.0.1:<new port>`. Services that target the port by name or
//! number now reach the sidecar without any change.
//!
//! Injection is idempotent: a pod carrying `policybind.io/injected: "true"` or a
//! container named `policybind-sidecar` is left exactly as it is, which also makes
//! the mutating webhook safe with `reinvocationPolicy: IfNeeded`. The patch is the
//! JSON diff between the typed pod before and after, so fields unknown to our
//! Kubernetes types are never touched.

use policybind_crds::wire::{annotations, labels, names};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{AdmissionConfig, BundleWiring};

/// Why a pod was not injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// kube-system, kube-public, PolicyBind's own or a configured namespace.
    ExcludedNamespace,
    /// `policybind.io/inject: "false"`.
    OptedOut,
    /// Neither the namespace nor the pod opted in.
    NotOptedIn,
    /// Already carries the sidecar.
    AlreadyInjected,
    /// Opted in, but there is no port to take over; the message says what to fix.
    NoModelPort(String),
}

impl Skip {
    /// Short label for metrics and audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Skip::ExcludedNamespace => "excluded-namespace",
            Skip::OptedOut => "opted-out",
            Skip::NotOptedIn => "not-opted-in",
            Skip::AlreadyInjected => "already-injected",
            Skip::NoModelPort(_) => "no-model-port",
        }
    }
}

/// What injection did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Skipped(Skip),
    Injected {
        pod: Box<Pod>,
        patch: json_patch::Patch,
        /// The port the sidecar took over and the one the model moved to.
        port: i32,
        model_port: i32,
    },
}

/// Errors that make the patch impossible (they are bugs, not user errors).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize the pod for patching: {0}")]
pub struct PatchError(#[from] serde_json::Error);

fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Whether the pod is already injected (annotation or container present).
pub fn is_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| is_true(a.get(annotations::INJECTED)));
    let spec = pod.spec.as_ref();
    let has_container = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == names::SIDECAR_CONTAINER)
    });
    annotated || has_container
}

/// Decides whether to inject and, if so, builds the injected pod and its patch.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    config: &AdmissionConfig,
) -> Result<Outcome, PatchError> {
    if config.is_excluded(namespace) {
        return Ok(Outcome::Skipped(Skip::ExcludedNamespace));
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if annotations
        .get(annotations::INJECT)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    {
        return Ok(Outcome::Skipped(Skip::OptedOut));
    }
    let namespace_opted_in = namespace_labels.is_some_and(|l| is_true(l.get(labels::ENFORCE)));
    if !namespace_opted_in && !is_true(labels.get(labels::INJECT)) {
        return Ok(Outcome::Skipped(Skip::NotOptedIn));
    }
    if is_injected(pod) {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Outcome::Skipped(Skip::NoModelPort(
            "the pod has no spec".into(),
        )));
    };
    let sidecar_config = &config.sidecar;

    // The model container: named by annotation, else the first with the named port.
    let wanted = annotations.get(annotations::MODEL_CONTAINER);
    let found = spec.containers.iter().enumerate().find_map(|(ci, c)| {
        if wanted.is_some_and(|w| w != &c.name) {
            return None;
        }
        let pi = c
            .ports
            .iter()
            .flatten()
            .position(|p| p.name.as_deref() == Some(sidecar_config.port_name.as_str()))?;
        Some((ci, pi))
    });
    let Some((container_index, port_index)) = found else {
        let which = wanted
            .map(|w| format!("container {w:?}"))
            .unwrap_or_else(|| "no container".into());
        return Ok(Outcome::Skipped(Skip::NoModelPort(format!(
            "{which} has a port named {:?} for the PolicyBind sidecar to take over; name the model server's port {:?} \
             (or set {annotations_model_container}), or opt out with {annotations_inject}: \"false\"",
            sidecar_config.port_name,
            sidecar_config.port_name,
            annotations_model_container = annotations::MODEL_CONTAINER,
            annotations_inject = annotations::INJECT
        ))));
    };
    let original = spec.containers[container_index]
        .ports
        .as_ref()
        .expect("found above")[port_index]
        .clone();
    let port = original.container_port;
    let model_port = sidecar_config
        .model_port
        .unwrap_or(port + sidecar_config.port_offset);
    let used: Vec<i32> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
        .collect();
    if !(1..=65535).contains(&model_port)
        || used.contains(&model_port)
        || used.contains(&sidecar_config.health_port)
        || model_port == sidecar_config.health_port
    {
        return Ok(Outcome::Skipped(Skip::NoModelPort(format!(
            "cannot move port {port} to {model_port} (health port {}): out of range or already used in the pod; \
             configure another model port",
            sidecar_config.health_port
        ))));
    }

    let mut injected = pod.clone();
    let spec = injected.spec.as_mut().expect("checked above");
    let model = &mut spec.containers[container_index];
    move_model_port(
        model,
        port_index,
        port,
        model_port,
        &sidecar_config.port_name,
    );
    let model_container_name = model.name.clone();

    let sidecar = sidecar_container(
        config,
        &original,
        model_port,
        annotations
            .get(annotations::MODEL)
            .or(labels.get(annotations::MODEL)),
    );
    if let BundleWiring::Volume { config_map, .. } = &sidecar_config.bundle {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "policybind-bundle".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.clone(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if config.native_sidecars {
        let mut sidecar = sidecar;
        sidecar.restart_policy = Some("Always".into());
        // The kubelet starts the main containers once this probe passes, so the
        // model port is never served without enforcement.
        sidecar.startup_probe = Some(http_probe("/readyz", sidecar_config.health_port, 1, 30));
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(sidecar);
    } else {
        spec.containers.push(sidecar);
    }

    let meta_annotations = injected
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    meta_annotations.insert(annotations::INJECTED.into(), "true".into());
    meta_annotations.insert(annotations::PORTS.into(), format!("{port}:{model_port}"));
    meta_annotations
        .entry("kubectl.kubernetes.io/default-container".into())
        .or_insert(model_container_name);

    let before = serde_json::to_value(pod)?;
    let after = serde_json::to_value(&injected)?;
    let patch = json_patch::diff(&before, &after);
    Ok(Outcome::Injected {
        pod: Box::new(injected),
        patch,
        port,
        model_port,
    })
}

/// Moves the model's port and tells the model about it.
fn move_model_port(
    model: &mut Container,
    port_index: usize,
    port: i32,
    model_port: i32,
    port_name: &str,
) {
    let ports = model.ports.as_mut().expect("model container has ports");
    ports[port_index].container_port = model_port;
    ports[port_index].name = Some(names::MODEL_PORT.into());
    // A hostPort stays with the port number callers use, which is now the sidecar's.
    ports[port_index].host_port = None;

    let env = model.env.get_or_insert_with(Vec::new);
    set_env(env, "PORT", model_port.to_string());
    for var in env.iter_mut() {
        if var.name == "OLLAMA_HOST"
            && let Some(value) = &mut var.value
        {
            let host = value.rsplit_once(':').map(|(h, _)| h).unwrap_or(value);
            *value = format!("{host}:{model_port}");
        }
    }
    for list in [&mut model.command, &mut model.args].into_iter().flatten() {
        rewrite_port_arguments(list, port, model_port);
    }
    for probe in [
        &mut model.liveness_probe,
        &mut model.readiness_probe,
        &mut model.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        let targets = |p: &IntOrString| match p {
            IntOrString::Int(n) => *n == port,
            IntOrString::String(s) => s == port_name,
        };
        if let Some(http) = &mut probe.http_get
            && targets(&http.port)
        {
            http.port = IntOrString::Int(model_port);
        }
        if let Some(tcp) = &mut probe.tcp_socket
            && targets(&tcp.port)
        {
            tcp.port = IntOrString::Int(model_port);
        }
        if let Some(grpc) = &mut probe.grpc
            && grpc.port == port
        {
            grpc.port = model_port;
        }
    }
}

fn set_env(env: &mut Vec<EnvVar>, name: &str, value: String) {
    match env.iter_mut().find(|v| v.name == name) {
        Some(var) => {
            var.value = Some(value);
            var.value_from = None;
        }
        None => env.push(EnvVar {
            name: name.into(),
            value: Some(value),
            value_from: None,
        }),
    }
}

/// `--port 8000` and `--port=8000` become the model's new port; other mentions of
/// the number are left alone (they may be anything).
fn rewrite_port_arguments(arguments: &mut [String], port: i32, model_port: i32) {
    let old = port.to_string();
    let mut after_flag = false;
    for argument in arguments.iter_mut() {
        if after_flag && *argument == old {
            *argument = model_port.to_string();
        } else if let Some(value) = argument.strip_prefix("--port=")
            && value == old
        {
            *argument = format!("--port={model_port}");
        } else if argument.contains(&format!("--port {old}")) {
            // A shell command line in one string (`sh -c "vllm serve --port 8000"`).
            *argument = argument.replace(&format!("--port {old}"), &format!("--port {model_port}"));
        }
        after_flag = argument == "--port";
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn sidecar_container(
    config: &AdmissionConfig,
    original: &ContainerPort,
    model_port: i32,
    model: Option<&String>,
) -> Container {
    let s = &config.sidecar;
    let port = original.container_port;
    let mut env = vec![
        field_env("POLICYBIND_NAMESPACE", "metadata.namespace"),
        field_env("POLICYBIND_POD_NAME", "metadata.name"),
        plain_env(
            "POLICYBIND_UPSTREAM",
            format!("http://127.0.0.1:{model_port}"),
        ),
        plain_env("POLICYBIND_LISTEN", format!("0.0.0.0:{port}")),
        plain_env(
            "POLICYBIND_HEALTH_LISTEN",
            format!("0.0.0.0:{}", s.health_port),
        ),
    ];
    if let Some(model) = model {
        env.push(plain_env("POLICYBIND_MODEL_DEPLOYMENT", model.clone()));
    }
    let mut mounts = vec![];
    match &s.bundle {
        BundleWiring::ConfigMap { name } => {
            env.push(plain_env("POLICYBIND_BUNDLE_CONFIGMAP", name))
        }
        BundleWiring::Volume { mount_path, .. } => {
            env.push(plain_env("POLICYBIND_BUNDLE_DIR", mount_path));
            mounts.push(VolumeMount {
                name: "policybind-bundle".into(),
                mount_path: mount_path.clone(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    env.extend(s.extra_env.iter().map(|(k, v)| plain_env(k, v.clone())));

    let quantity = |v: &String| Quantity(v.clone());
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_string(), quantity(&s.cpu_request));
    requests.insert("memory".to_string(), quantity(&s.memory_request));
    let mut limits = BTreeMap::new();
    limits.insert("memory".to_string(), quantity(&s.memory_limit));
    if let Some(cpu) = &s.cpu_limit {
        limits.insert("cpu".to_string(), quantity(cpu));
    }

    Container {
        name: names::SIDECAR_CONTAINER.into(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        command: Some(vec!["policybind".into(), "sidecar".into()]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: original.name.clone(),
                container_port: port,
                host_port: original.host_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("pb-health".into()),
                container_port: s.health_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", s.health_port, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", s.health_port, 10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(s.run_as_user),
            run_as_group: Some(s.run_as_user),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: if mounts.is_empty() {
            None
        } else {
            Some(mounts)
        },
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_arguments_are_rewritten_in_every_spelling() {
        let mut args = vec![
            "--port".to_string(),
            "8000".to_string(),
            "--port=8000".to_string(),
            "--max-model-len".to_string(),
            "8000".to_string(),
        ];
        rewrite_port_arguments(&mut args, 8000, 18000);
        assert_eq!(
            args,
            ["--port", "18000", "--port=18000", "--max-model-len", "8000"]
        );
        let mut shell = vec!["vllm serve m --port 8000".to_string()];
        rewrite_port_arguments(&mut shell, 8000, 18000);
        assert_eq!(shell, ["vllm serve m --port 18000"]);
    }
}
