//! Sidecar injection, as a pure function: a Pod and the configuration in, the
//! injected Pod and the JSON patch that produces it out.
//!
//! Only pods that declare a model (`policybind.io/model`, annotation or label) are
//! touched: an ordinary web service in an enforced namespace keeps its port.
//! Whether a pod wants the sidecar follows Istio and Linkerd habits:
//! `policybind.io/inject` is read as a label and as an annotation, `true` or
//! `enabled` opt in, `false` or `disabled` opt out (any case), and an opt-out in
//! either place wins. Injected pods carry the label and the annotation
//! `policybind.io/injected=true`, so NetworkPolicies and PodMonitors can select them.
//!
//! The sidecar takes over the model server's named port (`http` by default): the
//! model container's port moves to a new number (original + offset, or a fixed
//! one) and is renamed `pb-model`, the model is told its new port (`PORT` env,
//! `--port` arguments, `OLLAMA_HOST`), probes that pointed at the old port follow
//! it, and the sidecar listens on the original number under the original name,
//! forwarding to `127.0.0.1:<new port>`. Services that target the port by name or
//! number now reach the sidecar without any change.
//!
//! The sidecar's wiring ([`expected_sidecar`]) is what the validating side checks a
//! pod's `policybind-sidecar` container against: the bundle is ConfigMap
//! `policybind-bundle.<namespace>` in PolicyBind's own namespace (where workloads
//! cannot write), the audit signing key is the namespace's Secret
//! `policybind-audit-key` mounted read-only into the sidecar container only, and
//! the sidecar has its own ServiceAccount token volume (containers a webhook adds
//! get no token mount from the API server).
//!
//! Injection is idempotent: a pod carrying `policybind.io/injected: "true"` or a
//! container named `policybind-sidecar` is left exactly as it is, which also makes
//! the mutating webhook safe with `reinvocationPolicy: IfNeeded`. The patch is the
//! JSON diff between the typed pod before and after, so fields unknown to our
//! Kubernetes types are never touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use policybind_crds::wire::{annotations, env, keys, labels, names, paths};

use crate::config::AdmissionConfig;

/// Why a pod was not injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// kube-system, kube-public, PolicyBind's own or a configured namespace.
    ExcludedNamespace,
    /// The pod declares no model; `opted_in` when it asked for the sidecar anyway.
    NoModel { opted_in: bool },
    /// `policybind.io/inject` says `false` or `disabled`.
    OptedOut,
    /// Neither the namespace nor the pod opted in.
    NotOptedIn,
    /// Already carries the sidecar.
    AlreadyInjected,
    /// Opted in, but there is no port to take over (or a name the sidecar needs is
    /// taken); the message says what to fix.
    NoModelPort(String),
}

impl Skip {
    /// Short label for metrics and audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Skip::ExcludedNamespace => "excluded-namespace",
            Skip::NoModel { .. } => "no-model",
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

/// What `policybind.io/inject` says, read the way Istio and Linkerd users write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectChoice {
    /// `true` or `enabled` (label or annotation).
    In,
    /// `false` or `disabled` (label or annotation); wins over an opt-in.
    Out,
    /// Not set, or set to a value that means neither.
    Unset,
}

/// `Some(true)` for `true`/`enabled`, `Some(false)` for `false`/`disabled` (any
/// case, surrounding spaces ignored), `None` for anything else.
pub fn parse_inject_value(value: &str) -> Option<bool> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("enabled") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") || value.eq_ignore_ascii_case("disabled") {
        Some(false)
    } else {
        None
    }
}

/// The pod's (or template's) injection choice from its labels and annotations.
pub fn inject_choice(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> InjectChoice {
    let said: Vec<Option<bool>> = [
        labels.get(labels::INJECT),
        annotations.get(annotations::INJECT),
    ]
    .into_iter()
    .flatten()
    .map(|v| parse_inject_value(v))
    .collect();
    if said.contains(&Some(false)) {
        InjectChoice::Out
    } else if said.contains(&Some(true)) {
        InjectChoice::In
    } else {
        InjectChoice::Unset
    }
}

/// Values of `policybind.io/inject` that mean neither yes nor no, for a warning.
pub fn unrecognised_inject_values(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Vec<String> {
    [
        ("label", labels.get(labels::INJECT)),
        ("annotation", annotations.get(annotations::INJECT)),
    ]
    .into_iter()
    .filter_map(|(place, value)| {
        let value = value?;
        parse_inject_value(value).is_none().then(|| {
            format!(
                "{place} {}={value:?} is not understood; use \"true\"/\"enabled\" or \"false\"/\"disabled\"",
                labels::INJECT
            )
        })
    })
    .collect()
}

/// The model reference a pod or template declares: the annotation, else the label.
pub fn declared_model<'a>(
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    annotations
        .get(annotations::MODEL)
        .or_else(|| labels.get(annotations::MODEL))
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// Whether the namespace labels turn enforcement (and injection) on.
pub fn namespace_enforced(namespace_labels: Option<&BTreeMap<String, String>>) -> bool {
    namespace_labels
        .and_then(|l| l.get(labels::ENFORCE))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Whether the pod is already injected (annotation or container present).
pub fn is_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::INJECTED))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
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
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let choice = inject_choice(pod_labels, pod_annotations);
    let Some(model) = declared_model(pod_labels, pod_annotations) else {
        return Ok(Outcome::Skipped(Skip::NoModel {
            opted_in: choice == InjectChoice::In,
        }));
    };
    match choice {
        InjectChoice::Out => return Ok(Outcome::Skipped(Skip::OptedOut)),
        InjectChoice::Unset if !namespace_enforced(namespace_labels) => {
            return Ok(Outcome::Skipped(Skip::NotOptedIn));
        }
        _ => {}
    }
    if is_injected(pod) {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    let plan = match plan_takeover(pod, config) {
        Ok(plan) => plan,
        Err(message) => return Ok(Outcome::Skipped(Skip::NoModelPort(message))),
    };
    let wiring = SidecarWiring {
        namespace,
        port: &plan.original,
        model_port: plan.model_port,
        model,
    };
    let mut injected = pod.clone();
    apply_takeover(&mut injected, &plan, &wiring, config);
    let before = serde_json::to_value(pod)?;
    let after = serde_json::to_value(&injected)?;
    let patch = json_patch::diff(&before, &after);
    Ok(Outcome::Injected {
        pod: Box::new(injected),
        patch,
        port: plan.original.container_port,
        model_port: plan.model_port,
    })
}

/// Why the sidecar could not be injected into `pod`, if it could not: what a user
/// must fix (no port to take over, a port or volume name in the way).
pub fn injection_problem(pod: &Pod, config: &AdmissionConfig) -> Option<String> {
    plan_takeover(pod, config).err()
}

/// Which port of which container the sidecar takes over, and where the model goes.
struct Takeover {
    container_index: usize,
    port_index: usize,
    original: ContainerPort,
    model_port: i32,
}

/// Finds the model container's named port and checks the move is possible; the
/// error says what to fix.
fn plan_takeover(pod: &Pod, config: &AdmissionConfig) -> Result<Takeover, String> {
    let sidecar = &config.sidecar;
    let Some(spec) = pod.spec.as_ref() else {
        return Err("the pod has no spec".into());
    };
    let wanted = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::MODEL_CONTAINER));
    // The model container: named by annotation, else the first with the named port.
    let found = spec.containers.iter().enumerate().find_map(|(ci, c)| {
        if wanted.is_some_and(|w| w != &c.name) {
            return None;
        }
        let pi = c
            .ports
            .iter()
            .flatten()
            .position(|p| p.name.as_deref() == Some(sidecar.port_name.as_str()))?;
        Some((ci, pi))
    });
    let Some((container_index, port_index)) = found else {
        let which = wanted
            .map(|w| format!("container {w:?}"))
            .unwrap_or_else(|| "no container".into());
        return Err(format!(
            "{which} has a port named {:?} for the PolicyBind sidecar to take over; name the model server's port {:?} \
             (or set the annotation {}), or opt out with {}: \"false\" (which needs the right to exempt the model)",
            sidecar.port_name,
            sidecar.port_name,
            annotations::MODEL_CONTAINER,
            annotations::INJECT
        ));
    };
    let original = spec.containers[container_index]
        .ports
        .as_ref()
        .expect("found above")[port_index]
        .clone();
    let port = original.container_port;
    let model_port = sidecar.model_port.unwrap_or(port + sidecar.port_offset);
    let used: Vec<i32> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
        .collect();
    if !(1..=65535).contains(&model_port)
        || used.contains(&model_port)
        || used.contains(&sidecar.health_port)
        || model_port == sidecar.health_port
    {
        return Err(format!(
            "cannot move port {port} to {model_port} (health port {}): out of range or already used in the pod; \
             configure another model port",
            sidecar.health_port
        ));
    }
    let taken: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .filter(|n| [names::AUDIT_KEY_VOLUME, names::API_ACCESS_VOLUME].contains(n))
        .collect();
    if !taken.is_empty() {
        return Err(format!(
            "the pod already has a volume named {}, which the PolicyBind sidecar needs; rename it",
            taken.join(" and ")
        ));
    }
    Ok(Takeover {
        container_index,
        port_index,
        original,
        model_port,
    })
}

/// Moves the model's port, adds the sidecar, its volumes, the label and annotations.
fn apply_takeover(
    injected: &mut Pod,
    plan: &Takeover,
    wiring: &SidecarWiring<'_>,
    config: &AdmissionConfig,
) {
    let spec = injected.spec.as_mut().expect("checked by plan_takeover");
    let model = &mut spec.containers[plan.container_index];
    move_model_port(
        model,
        plan.port_index,
        plan.original.container_port,
        plan.model_port,
        &config.sidecar.port_name,
    );
    let model_container_name = model.name.clone();
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(sidecar_volumes());
    let sidecar = expected_sidecar(config, wiring);
    if config.native_sidecars {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(sidecar);
    } else {
        spec.containers.push(sidecar);
    }
    injected
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(labels::INJECTED.into(), "true".into());
    let meta_annotations = injected
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    meta_annotations.insert(annotations::INJECTED.into(), "true".into());
    meta_annotations.insert(
        annotations::PORTS.into(),
        format!("{}:{}", plan.original.container_port, plan.model_port),
    );
    meta_annotations
        .entry("kubectl.kubernetes.io/default-container".into())
        .or_insert(model_container_name);
}

/// Reads `policybind.io/ports` (`<original>:<model>`) back.
pub fn parse_ports_annotation(value: &str) -> Option<(i32, i32)> {
    let (port, model_port) = value.split_once(':')?;
    Some((port.trim().parse().ok()?, model_port.trim().parse().ok()?))
}

/// The two volumes injection adds: the namespace's audit key (mounted into the
/// sidecar only) and a projected ServiceAccount token for the sidecar.
pub fn sidecar_volumes() -> [Volume; 2] {
    let audit_key = Volume {
        name: names::AUDIT_KEY_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::AUDIT_KEY_SECRET.into()),
            items: Some(vec![KeyToPath {
                key: keys::SIGNING_KEY.into(),
                path: keys::SIGNING_KEY.into(),
                mode: None,
            }]),
            // Readable by the sidecar's non-root user; only the sidecar mounts it.
            default_mode: Some(0o444),
            // The operator creates the Secret in every enforced namespace; until it
            // exists the pod waits rather than running without a signing key.
            optional: Some(false),
        }),
        ..Default::default()
    };
    let api_access = Volume {
        name: names::API_ACCESS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    };
    [audit_key, api_access]
}

/// What a pod's sidecar is wired to; everything [`expected_sidecar`] needs.
pub struct SidecarWiring<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The model's original port, which the sidecar now serves.
    pub port: &'a ContainerPort,
    /// Where the model listens now.
    pub model_port: i32,
    /// The pod's `policybind.io/model` reference.
    pub model: &'a str,
}

/// The sidecar's environment: the wiring the webhook owns, then the extra
/// environment of the configuration.
pub fn sidecar_env(config: &AdmissionConfig, wiring: &SidecarWiring<'_>) -> Vec<EnvVar> {
    let s = &config.sidecar;
    let mut env = vec![
        field_env(env::NAMESPACE, "metadata.namespace"),
        field_env(env::POD_NAME, "metadata.name"),
        plain_env(
            env::UPSTREAM,
            format!("http://127.0.0.1:{}", wiring.model_port),
        ),
        plain_env(
            env::LISTEN,
            format!("0.0.0.0:{}", wiring.port.container_port),
        ),
        plain_env(env::HEALTH_LISTEN, format!("0.0.0.0:{}", s.health_port)),
        plain_env(env::MODEL_DEPLOYMENT, wiring.model),
        plain_env(env::BUNDLE_NAMESPACE, config.own_namespace.clone()),
        plain_env(
            env::BUNDLE_CONFIGMAP,
            names::bundle_config_map(wiring.namespace),
        ),
        plain_env(env::AUDIT_KEY, paths::AUDIT_KEY_FILE),
    ];
    // Memory stays bounded whatever image runs the sidecar, unless
    // sidecar.extraEnv sets its own value.
    if !s
        .extra_env
        .iter()
        .any(|(k, _)| k == env::MALLOC_MMAP_THRESHOLD)
    {
        env.push(plain_env(
            env::MALLOC_MMAP_THRESHOLD,
            env::MALLOC_MMAP_THRESHOLD_VALUE,
        ));
    }
    env.extend(s.extra_env.iter().map(|(k, v)| plain_env(k, v.clone())));
    env
}

/// The sidecar's mounts: the audit key and its own API token, both read-only.
pub fn sidecar_mounts() -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: names::AUDIT_KEY_VOLUME.into(),
            mount_path: paths::AUDIT_KEY_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: names::API_ACCESS_VOLUME.into(),
            mount_path: paths::SERVICE_ACCOUNT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]
}

/// The sidecar container the webhook injects for `wiring` (native or regular per
/// the configuration). Validation compares a pod's sidecar against this.
pub fn expected_sidecar(config: &AdmissionConfig, wiring: &SidecarWiring<'_>) -> Container {
    let s = &config.sidecar;
    let quantity = |v: &String| Quantity(v.clone());
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_string(), quantity(&s.cpu_request));
    requests.insert("memory".to_string(), quantity(&s.memory_request));
    let mut limits = BTreeMap::new();
    limits.insert("memory".to_string(), quantity(&s.memory_limit));
    if let Some(cpu) = &s.cpu_limit {
        limits.insert("cpu".to_string(), quantity(cpu));
    }
    let mut container = Container {
        name: names::SIDECAR_CONTAINER.into(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        command: Some(sidecar_command()),
        env: Some(sidecar_env(config, wiring)),
        ports: Some(vec![
            ContainerPort {
                name: wiring.port.name.clone(),
                container_port: wiring.port.container_port,
                host_port: wiring.port.host_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(names::HEALTH_PORT.into()),
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
        security_context: Some(sidecar_security_context(s.run_as_user)),
        volume_mounts: Some(sidecar_mounts()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    if config.native_sidecars {
        container.restart_policy = Some("Always".into());
        // The kubelet starts the main containers once this probe passes, so the
        // model port is never served without enforcement.
        container.startup_probe = Some(http_probe("/readyz", s.health_port, 1, 30));
    }
    container
}

/// The sidecar's command line.
pub fn sidecar_command() -> Vec<String> {
    vec!["policybind".into(), "sidecar".into()]
}

fn sidecar_security_context(run_as_user: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(run_as_user),
        run_as_group: Some(run_as_user),
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
    }
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
            // Written as the API server defaults it, so the stored pod equals what
            // validation expects.
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
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
