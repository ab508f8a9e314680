//! Enforced namespaces are enforced (issue 10 point 6): in a namespace labelled
//! `policybind.io/enforce=true` (or for a pod that opted in itself), a pod that
//! declares a model runs behind the genuine sidecar, or an authorized person
//! exempted it.
//!
//! - **Missing sidecar.** A model pod without `policybind-sidecar` is denied,
//!   unless it opts out (`policybind.io/inject: "false"`) and the opt-out is
//!   authorized: the requesting user holds verb `exempt` on
//!   `modeldeployments.policybind.io` named after the model, in the pod's namespace
//!   (SubjectAccessReview). Pods that Kubernetes' own controllers create from a
//!   template (a `kube-system` service account, or the controller manager itself,
//!   with a controller owner reference) inherit the check their template passed
//!   when a person created or changed the workload; any other creator (KServe, an
//!   operator) needs the right itself.
//! - **Forged sidecar.** A `policybind-sidecar` container that differs from what the
//!   webhook injects (image, command, arguments, the wiring environment, its
//!   mounts) is not enforcement, and is denied.
//! - **The audit key.** In every namespace the webhook sees, no container but the
//!   genuine sidecar may read Secret `policybind-audit-key` (volume, projected
//!   volume, `secretKeyRef`, `envFrom`): it is the one way someone who can create
//!   pods could sign as the namespace's sidecars.
//!
//! Everything here but [`exemption`] is a pure function of the pod and the
//! configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use policybind_crds::wire::{annotations, names, paths, verbs};

use crate::authz::{self, Access, Authorizer};
use crate::codes;
use crate::config::{AdmissionConfig, is_reserved_sidecar_env};
use crate::inject::{self, SidecarWiring};
use crate::verdict::Verdict;

/// Service accounts of Kubernetes' own controllers (`kube-controller-manager`
/// with `--use-service-account-credentials`).
const KUBERNETES_CONTROLLER_PREFIX: &str = "system:serviceaccount:kube-system:";
/// The controller manager's own identity (without per-controller credentials).
const KUBERNETES_CONTROLLER_MANAGER: &str = "system:kube-controller-manager";

/// The sidecar container of a pod spec, and whether it is an init container.
pub fn find_sidecar(spec: &PodSpec) -> Option<(&Container, bool)> {
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (c, true))
        .chain(spec.containers.iter().map(|c| (c, false)))
        .find(|(c, _)| c.name == names::SIDECAR_CONTAINER)
}

/// Why the pod's `policybind-sidecar` is not the one the webhook injects, if it is
/// not. `None` when the pod has no such container, or it is genuine.
pub fn sidecar_problem(pod: &Pod, namespace: &str, config: &AdmissionConfig) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let (sidecar, in_init) = find_sidecar(spec)?;
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let Some(model) = inject::declared_model(pod_labels, pod_annotations) else {
        return Some(format!(
            "it declares no model ({}), so PolicyBind never injects a sidecar into it",
            annotations::MODEL
        ));
    };
    let Some((port, model_port)) = pod_annotations
        .get(annotations::PORTS)
        .and_then(|v| inject::parse_ports_annotation(v))
    else {
        return Some(format!(
            "the annotation {} that injection writes is missing or malformed",
            annotations::PORTS
        ));
    };
    if in_init && sidecar.restart_policy.as_deref() != Some("Always") {
        return Some("as an init container it must have restartPolicy: Always".into());
    }
    if sidecar.image.as_deref() != Some(config.sidecar.image.as_str()) {
        return Some(format!(
            "its image is {:?}, not {:?}",
            sidecar.image.as_deref().unwrap_or(""),
            config.sidecar.image
        ));
    }
    if sidecar.command.as_ref() != Some(&inject::sidecar_command())
        || sidecar.args.as_ref().is_some_and(|a| !a.is_empty())
    {
        return Some("its command or arguments differ from `policybind sidecar`".into());
    }
    let original = k8s_openapi::api::core::v1::ContainerPort {
        container_port: port,
        ..Default::default()
    };
    let wiring = SidecarWiring {
        namespace,
        port: &original,
        model_port,
        model,
    };
    env_problem(sidecar, &inject::sidecar_env(config, &wiring))
        .or_else(|| mount_problem(sidecar, spec.volumes.as_deref().unwrap_or_default()))
}

/// The wiring environment must be exactly what injection sets, with nothing added
/// that could rewire the sidecar.
fn env_problem(
    sidecar: &Container,
    expected: &[k8s_openapi::api::core::v1::EnvVar],
) -> Option<String> {
    if sidecar.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Some("it takes environment from envFrom, which could rewire it".into());
    }
    let actual = sidecar.env.as_deref().unwrap_or_default();
    for want in expected {
        if !actual.iter().any(|have| same_env(have, want)) {
            return Some(format!(
                "its environment variable {} differs from what injection sets",
                want.name
            ));
        }
    }
    actual
        .iter()
        .find(|have| {
            (is_reserved_sidecar_env(&have.name) || have.name.starts_with("POLICYBIND_"))
                && !expected.iter().any(|want| want.name == have.name)
        })
        .map(|extra| format!("it sets {}, which injection does not", extra.name))
}

/// Equal as the API server stores them: a `fieldRef` without `apiVersion` is
/// defaulted to `v1`.
fn same_env(a: &EnvVar, b: &EnvVar) -> bool {
    let normalized = |e: &EnvVar| {
        let mut e = e.clone();
        if let Some(field) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            field.api_version.get_or_insert_with(|| "v1".into());
        }
        e
    };
    normalized(a) == normalized(b)
}

/// The sidecar mounts its audit key and token from the volumes injection added,
/// and nothing else over the paths it reads them from.
fn mount_problem(sidecar: &Container, volumes: &[Volume]) -> Option<String> {
    let mounts = sidecar.volume_mounts.as_deref().unwrap_or_default();
    for want in inject::sidecar_mounts() {
        let present = mounts.iter().any(|have| {
            have.name == want.name
                && have.mount_path == want.mount_path
                && have.read_only == Some(true)
                && have.sub_path.is_none()
        });
        if !present {
            return Some(format!(
                "it does not mount volume {} read-only at {}",
                want.name, want.mount_path
            ));
        }
    }
    let owned = [paths::AUDIT_KEY_DIR, paths::SERVICE_ACCOUNT_DIR];
    if let Some(extra) = mounts.iter().find(|m| {
        owned.iter().any(|p| m.mount_path.starts_with(p))
            && !inject::sidecar_mounts()
                .iter()
                .any(|w| w.name == m.name && w.mount_path == m.mount_path)
    }) {
        return Some(format!(
            "it mounts {} over {}",
            extra.name, extra.mount_path
        ));
    }
    let volume = |name: &str| volumes.iter().find(|v| v.name == name);
    let key_ok = volume(names::AUDIT_KEY_VOLUME)
        .and_then(|v| v.secret.as_ref())
        .is_some_and(|s| s.secret_name.as_deref() == Some(names::AUDIT_KEY_SECRET));
    if !key_ok {
        return Some(format!(
            "volume {} is not Secret {}",
            names::AUDIT_KEY_VOLUME,
            names::AUDIT_KEY_SECRET
        ));
    }
    let token_ok = volume(names::API_ACCESS_VOLUME)
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .is_some_and(|sources| {
            sources.iter().any(|s| {
                s.service_account_token
                    .as_ref()
                    .is_some_and(|t| t.audience.is_none())
            }) && sources.iter().all(|s| s.secret.is_none())
        });
    if !token_ok {
        return Some(format!(
            "volume {} is not the pod's ServiceAccount token",
            names::API_ACCESS_VOLUME
        ));
    }
    None
}

/// Whether a volume's source is the audit key Secret (directly or projected).
fn is_audit_key_volume(volume: &Volume) -> bool {
    let direct = volume
        .secret
        .as_ref()
        .is_some_and(|s| s.secret_name.as_deref() == Some(names::AUDIT_KEY_SECRET));
    let projected = volume
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .is_some_and(|sources| {
            sources
                .iter()
                .filter_map(|s| s.secret.as_ref())
                .any(|s| s.name == names::AUDIT_KEY_SECRET)
        });
    direct || projected
}

/// How a container reads the audit key, if it does.
fn reads_audit_key(container: &Container, key_volumes: &[&str]) -> Option<String> {
    if let Some(mount) = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| key_volumes.contains(&m.name.as_str()))
    {
        return Some(format!("mounts volume {}", mount.name));
    }
    let by_env = container.env.iter().flatten().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some_and(|r| r.name == names::AUDIT_KEY_SECRET)
    });
    let by_env_from = container.env_from.iter().flatten().any(|e| {
        e.secret_ref
            .as_ref()
            .is_some_and(|r| r.name == names::AUDIT_KEY_SECRET)
    });
    (by_env || by_env_from).then(|| "reads it into its environment".to_string())
}

/// Containers other than the genuine sidecar that read Secret
/// `policybind-audit-key`: the denial message, if any. Applies in every namespace.
/// `sidecar_genuine` is whether [`sidecar_problem`] found nothing (computed once
/// by the caller).
pub fn audit_key_exposure(pod: &Pod, sidecar_genuine: bool) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let key_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| is_audit_key_volume(v))
        .map(|v| v.name.as_str())
        .collect();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in containers {
        let Some(how) = reads_audit_key(container, &key_volumes) else {
            continue;
        };
        if container.name == names::SIDECAR_CONTAINER && sidecar_genuine {
            continue;
        }
        return Some(key_exposure_message(&container.name, &how));
    }
    ephemeral_key_exposure(spec, &key_volumes)
}

/// Ephemeral containers (`kubectl debug`) may mount the pod's volumes too.
pub fn ephemeral_key_exposure(spec: &PodSpec, key_volumes: &[&str]) -> Option<String> {
    spec.ephemeral_containers.iter().flatten().find_map(|e| {
        let container = Container {
            name: e.name.clone(),
            env: e.env.clone(),
            env_from: e.env_from.clone(),
            volume_mounts: e.volume_mounts.clone(),
            ..Default::default()
        };
        reads_audit_key(&container, key_volumes)
            .map(|how| key_exposure_message(&format!("{} (ephemeral)", e.name), &how))
    })
}

/// The same check for a pod's ephemeral containers alone (`pods/ephemeralcontainers`).
pub fn ephemeral_audit_key_exposure(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let key_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| is_audit_key_volume(v))
        .map(|v| v.name.as_str())
        .collect();
    ephemeral_key_exposure(spec, &key_volumes)
}

fn key_exposure_message(container: &str, how: &str) -> String {
    format!(
        "container {container:?} {how} from Secret {}: only the PolicyBind sidecar may read the namespace's \
         audit signing key (anyone holding it could sign audit records as the namespace's sidecars); \
         remove the mount or the reference",
        names::AUDIT_KEY_SECRET
    )
}

/// Whether the object was created by one of Kubernetes' own controllers from a
/// template it owns (ReplicaSet -> Pod, Deployment -> ReplicaSet, CronJob -> Job,
/// ...): such objects inherit the check their template passed.
pub fn created_by_kubernetes_controller(
    user: &UserInfo,
    owners: Option<&[OwnerReference]>,
) -> bool {
    let name = user.username.as_deref().unwrap_or("");
    let kubernetes =
        name.starts_with(KUBERNETES_CONTROLLER_PREFIX) || name == KUBERNETES_CONTROLLER_MANAGER;
    let controlled = owners
        .unwrap_or_default()
        .iter()
        .any(|o| o.controller == Some(true));
    kubernetes && controlled
}

/// An opt-out in an enforced namespace: admitted when inherited from a checked
/// template or when the user may `exempt` the model there; denied otherwise.
pub async fn exemption(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    owners: Option<&[OwnerReference]>,
    namespace: &str,
    model_name: &str,
    what: &str,
) -> Verdict {
    let username = user.username.clone().unwrap_or_default();
    if created_by_kubernetes_controller(user, owners) {
        return Verdict::allow(codes::SIDECAR_EXEMPTED)
            .with_detail("exemption", "inherited")
            .with_detail("creator", username);
    }
    let access = Access::new(verbs::EXEMPT, "modeldeployments")
        .in_namespace(namespace)
        .named(model_name);
    match authz::check(authorizer, user, &access).await {
        Ok(true) => Verdict::allow(codes::SIDECAR_EXEMPTED)
            .with_detail("exemption", "authorized")
            .with_detail("creator", username),
        Ok(false) => Verdict::deny(
            codes::EXEMPTION_NOT_PERMITTED,
            format!(
                "{what} opts out of the PolicyBind sidecar ({}) in enforced namespace {namespace}, \
                 but {username} may not exempt model {model_name:?}: remove the opt-out so the sidecar is injected, \
                 or ask an administrator to grant {} (the ClusterRole policybind-admin has it; controllers that \
                 create opted-out pods, such as KServe, need it too)",
                annotations::INJECT,
                access.describe()
            ),
        ),
        Err(error) => {
            tracing::warn!(%error, "SubjectAccessReview for an exemption failed");
            Verdict::deny(
                codes::AUTHORIZATION_UNAVAILABLE,
                format!(
                    "{what} opts out of the PolicyBind sidecar in enforced namespace {namespace}, and the right to \
                     exempt model {model_name:?} could not be checked right now; try again"
                ),
            )
        }
    }
}

/// The denial for a model pod in an enforced namespace that carries no sidecar:
/// why injection did not happen when known, else what to do.
pub fn missing_sidecar(namespace: &str, model: &str, why: Option<&str>) -> Verdict {
    let advice = match why {
        Some(why) => format!(": {why}"),
        None => format!(
            "; let the webhook inject it (is the mutating webhook registered?), or opt out with {}: \"false\" \
             if you hold the right to exempt the model",
            annotations::INJECT
        ),
    };
    Verdict::deny(
        codes::SIDECAR_MISSING,
        format!(
            "the pod declares model {model:?} in enforced namespace {namespace} but carries no PolicyBind sidecar{advice}"
        ),
    )
}

/// The denial for a forged sidecar.
pub fn forged_sidecar(problem: &str) -> Verdict {
    Verdict::deny(
        codes::SIDECAR_FORGED,
        format!(
            "container {} is not the sidecar PolicyBind injects: {problem}; remove the container and the \
             {} annotation and label so the webhook injects the genuine one",
            names::SIDECAR_CONTAINER,
            annotations::INJECTED
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(controller: bool) -> Vec<OwnerReference> {
        vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "chat-1".into(),
            uid: "u".into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }]
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_kubernetes_controllers_with_a_controller_owner_inherit() {
        let rs = user("system:serviceaccount:kube-system:replicaset-controller");
        assert!(created_by_kubernetes_controller(&rs, Some(&owner(true))));
        assert!(!created_by_kubernetes_controller(&rs, Some(&owner(false))));
        assert!(!created_by_kubernetes_controller(&rs, None));
        let kcm = user("system:kube-controller-manager");
        assert!(created_by_kubernetes_controller(&kcm, Some(&owner(true))));
        for other in [
            "alice@example.com",
            "system:serviceaccount:kserve:kserve-controller-manager",
            "system:serviceaccount:team-a:kube-system:x",
        ] {
            assert!(
                !created_by_kubernetes_controller(&user(other), Some(&owner(true))),
                "{other}"
            );
        }
    }
}
