//! What the webhook decides with, apart from cluster state: which namespaces it
//! never touches, how strict it is about undeclared model servers, and the shape
//! of the injected sidecar.
//!
//! Everything here is plain data with defaults a production install can start
//! with; `policybind webhook` fills it from flags, tests build it directly.

use std::collections::BTreeMap;

use policybind_crds::wire::{env, names};
use serde::{Deserialize, Serialize};

/// Namespaces the webhook never injects into nor gates, whatever their labels say.
pub const ALWAYS_EXCLUDED: [&str; 2] = ["kube-system", "kube-public"];

/// What to do with a workload that looks like a model server but declares no model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UndeclaredMode {
    /// Admit, with nothing but an audit record.
    Ignore,
    /// Admit with a warning shown to the client (`kubectl` prints it).
    #[default]
    Warn,
    /// Deny until the workload declares `policybind.io/model`.
    Deny,
}

impl UndeclaredMode {
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "ignore" => Some(Self::Ignore),
            "warn" => Some(Self::Warn),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// Whether the injected sidecar is a native sidecar (restartable init container,
/// Kubernetes 1.29+) or a regular container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SidecarStyle {
    /// Decided from the API server version at start-up.
    #[default]
    Auto,
    Native,
    Regular,
}

/// The injected container's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SidecarConfig {
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// Native or regular container.
    pub style: SidecarStyle,
    /// Name of the model container's port that the sidecar takes over.
    pub port_name: String,
    /// Fixed port the model moves to; `None` means original + `port_offset`.
    pub model_port: Option<i32>,
    /// Added to the original port number when `model_port` is not set.
    pub port_offset: i32,
    /// Port of the sidecar's health, readiness and metrics endpoints.
    pub health_port: i32,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: String,
    /// User id the sidecar runs as (non-root).
    pub run_as_user: i64,
    /// Extra environment for the sidecar (log settings, audit batching). May not
    /// set the wiring the webhook owns (see [`RESERVED_SIDECAR_ENV`]).
    pub extra_env: BTreeMap<String, String>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            image: "ghcr.io/policybind/policybind:latest".into(),
            image_pull_policy: None,
            style: SidecarStyle::Auto,
            port_name: "http".into(),
            model_port: None,
            port_offset: 10000,
            health_port: 9090,
            cpu_request: "50m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: None,
            memory_limit: "128Mi".into(),
            run_as_user: 65532,
            extra_env: BTreeMap::new(),
        }
    }
}

/// Everything the admission handlers decide with besides cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionConfig {
    /// PolicyBind's own namespace: never injected, never gated.
    pub own_namespace: String,
    /// Further namespaces to leave alone.
    pub excluded_namespaces: Vec<String>,
    /// Undeclared model servers.
    pub undeclared: UndeclaredMode,
    /// Extra image globs recognised as model servers, on top of the built-in list.
    pub extra_model_server_images: Vec<String>,
    /// Classification allowed in a namespace without the
    /// `policybind.io/max-data-classification` label.
    pub default_namespace_classification: policybind_crds::DataClassification,
    /// The injected sidecar.
    pub sidecar: SidecarConfig,
    /// Whether the cluster supports native sidecars (resolved from `sidecar.style`
    /// and the API server version before serving).
    pub native_sidecars: bool,
    /// In enforced namespaces, deny an admission whose audit record cannot be
    /// written (the trail's queue is full or closed). Elsewhere the admission
    /// proceeds and the failure is counted. Default on.
    pub require_audit_record: bool,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            own_namespace: "policybind-system".into(),
            excluded_namespaces: vec![],
            undeclared: UndeclaredMode::Warn,
            extra_model_server_images: vec![],
            default_namespace_classification: policybind_crds::DataClassification::Internal,
            sidecar: SidecarConfig::default(),
            native_sidecars: true,
            require_audit_record: true,
        }
    }
}

/// Environment variables of the injected sidecar that only the webhook sets: they
/// say where the policy comes from, which key signs the trail and what is
/// forwarded where. Extra environment may not override them, and a pod whose
/// sidecar carries other values is a forged sidecar.
pub const RESERVED_SIDECAR_ENV: [&str; 10] = [
    env::NAMESPACE,
    env::POD_NAME,
    env::UPSTREAM,
    env::LISTEN,
    env::HEALTH_LISTEN,
    env::MODEL_DEPLOYMENT,
    env::BUNDLE_CONFIGMAP,
    env::BUNDLE_NAMESPACE,
    env::AUDIT_KEY,
    env::AUDIT_KEY_SECRET,
];

/// Whether an environment variable name belongs to the wiring the webhook owns:
/// every `POLICYBIND_BUNDLE_*` and `POLICYBIND_AUDIT_KEY*` variable and the ones in
/// [`RESERVED_SIDECAR_ENV`].
pub fn is_reserved_sidecar_env(name: &str) -> bool {
    RESERVED_SIDECAR_ENV.contains(&name)
        || name.starts_with("POLICYBIND_BUNDLE_")
        || name.starts_with(env::AUDIT_KEY)
}

impl SidecarConfig {
    /// Refuses a configuration that would let extra environment rewire the sidecar.
    pub fn validate(&self) -> Result<(), String> {
        let reserved: Vec<&str> = self
            .extra_env
            .keys()
            .map(String::as_str)
            .filter(|name| is_reserved_sidecar_env(name))
            .collect();
        if reserved.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "sidecar environment {} is set by the webhook itself and cannot be overridden \
                 (the bundle is always ConfigMap {} in PolicyBind's namespace, the audit key the \
                 namespace's Secret {})",
                reserved.join(", "),
                names::bundle_config_map("<namespace>"),
                names::AUDIT_KEY_SECRET
            ))
        }
    }
}

impl AdmissionConfig {
    /// Namespaces the webhook leaves alone entirely (kube-system, kube-public, its own).
    pub fn is_excluded(&self, namespace: &str) -> bool {
        ALWAYS_EXCLUDED.contains(&namespace)
            || namespace == self.own_namespace
            || self.excluded_namespaces.iter().any(|n| n == namespace)
    }
}

/// Native sidecars (restartable init containers) are on by default from
/// Kubernetes 1.29 (beta) and GA in 1.33.
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let major: u32 = major.trim_end_matches('+').parse().unwrap_or(0);
    let minor: u32 = minor.trim_end_matches('+').parse().unwrap_or(0);
    major > 1 || (major == 1 && minor >= 29)
}

/// The sidecar shape as a YAML file (`--injection-config`, a ConfigMap in the
/// chart), overlaid on the flags. Every key is optional; keys the webhook does not
/// own (`listenPort`, `upstream`: they follow from the port takeover) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectionFile {
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    /// `true`: native sidecar; `false`: regular container; unset: by cluster version.
    pub native_sidecar: Option<bool>,
    pub port_name: Option<String>,
    pub model_port: Option<i32>,
    pub port_offset: Option<i32>,
    pub health_port: Option<i32>,
    pub run_as_user: Option<i64>,
    pub resources: Option<InjectionResources>,
    /// No longer supported (an error): the bundle is ConfigMap
    /// `policybind-bundle.<namespace>` in PolicyBind's own namespace.
    pub bundle_config_map: Option<serde_json::Value>,
    /// No longer supported (an error): a ConfigMap a workload can write is not a
    /// trustworthy policy source, so bundles are never mounted.
    pub bundle_mount_path: Option<serde_json::Value>,
    /// Sets `POLICYBIND_LOG_FORMAT` in the sidecar.
    pub log_format: Option<String>,
    /// Sets `RUST_LOG` in the sidecar.
    pub log_level: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Accepted for compatibility, not used: the webhook always sets the sidecar's
    /// security context to non-root, read-only root filesystem, no escalation.
    pub security_context: Option<serde_json::Value>,
    /// Not used: the sidecar listens on the model's original port.
    pub listen_port: Option<i32>,
    /// Not used: the upstream is the model's moved port on 127.0.0.1.
    pub upstream: Option<String>,
}

/// Requests and limits of the sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InjectionResources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl InjectionFile {
    /// Parses the file; keys that used to move the bundle are refused with what
    /// to do instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: InjectionFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (key, set) in [
            ("bundleConfigMap", file.bundle_config_map.is_some()),
            ("bundleMountPath", file.bundle_mount_path.is_some()),
        ] {
            if set {
                return Err(format!(
                    "{key} is no longer supported: sidecars read ConfigMap {} in PolicyBind's own \
                     namespace, where workloads cannot write; remove the key",
                    names::bundle_config_map("<namespace>")
                ));
            }
        }
        Ok(file)
    }

    /// Overlays the file on `sidecar`.
    pub fn apply(self, sidecar: &mut SidecarConfig) {
        if let Some(v) = self.image {
            sidecar.image = v;
        }
        if let Some(v) = self.image_pull_policy {
            sidecar.image_pull_policy = Some(v);
        }
        if let Some(native) = self.native_sidecar {
            sidecar.style = if native {
                SidecarStyle::Native
            } else {
                SidecarStyle::Regular
            };
        }
        if let Some(v) = self.port_name {
            sidecar.port_name = v;
        }
        if let Some(v) = self.model_port {
            sidecar.model_port = Some(v);
        }
        if let Some(v) = self.port_offset {
            sidecar.port_offset = v;
        }
        if let Some(v) = self.health_port {
            sidecar.health_port = v;
        }
        if let Some(v) = self.run_as_user {
            sidecar.run_as_user = v;
        }
        if let Some(resources) = self.resources {
            if let Some(v) = resources.requests.get("cpu") {
                sidecar.cpu_request = v.clone();
            }
            if let Some(v) = resources.requests.get("memory") {
                sidecar.memory_request = v.clone();
            }
            if let Some(v) = resources.limits.get("cpu") {
                sidecar.cpu_limit = Some(v.clone());
            }
            if let Some(v) = resources.limits.get("memory") {
                sidecar.memory_limit = v.clone();
            }
        }
        if let Some(v) = self.log_format {
            sidecar.extra_env.insert(env::LOG_FORMAT.into(), v);
        }
        if let Some(v) = self.log_level {
            sidecar.extra_env.insert("RUST_LOG".into(), v);
        }
        sidecar.extra_env.extend(self.env);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_start_at_1_29_and_tolerate_vendor_suffixes() {
        assert!(!supports_native_sidecars("1", "28"));
        assert!(supports_native_sidecars("1", "29"));
        assert!(supports_native_sidecars("1", "31+"));
        assert!(!supports_native_sidecars("1", "27+"));
    }

    #[test]
    fn injection_file_overlays_the_sidecar_shape_and_ignores_keys_it_does_not_own() {
        let file = InjectionFile::parse(
            "image: registry.example.com/policybind:1.0\nnativeSidecar: false\nlistenPort: 8480\n\
             resources:\n  requests:\n    cpu: 10m\n  limits:\n    memory: 64Mi\nlogLevel: debug\n",
        )
        .unwrap();
        let mut sidecar = SidecarConfig::default();
        file.apply(&mut sidecar);
        assert_eq!(sidecar.image, "registry.example.com/policybind:1.0");
        assert_eq!(sidecar.style, SidecarStyle::Regular);
        assert_eq!(sidecar.cpu_request, "10m");
        assert_eq!(sidecar.memory_limit, "64Mi");
        assert_eq!(sidecar.extra_env["RUST_LOG"], "debug");
    }

    #[test]
    fn injection_file_refuses_the_old_bundle_keys_with_what_to_do() {
        let error = InjectionFile::parse("bundleMountPath: /etc/policybind/bundle\n").unwrap_err();
        assert!(
            error.contains("bundleMountPath is no longer supported"),
            "{error}"
        );
        assert!(error.contains("policybind-bundle.<namespace>"), "{error}");
        assert!(InjectionFile::parse("bundleConfigMap: x\n").is_err());
    }

    #[test]
    fn extra_environment_cannot_rewire_the_sidecar() {
        let mut sidecar = SidecarConfig::default();
        sidecar.extra_env.insert("RUST_LOG".into(), "debug".into());
        assert!(sidecar.validate().is_ok());
        for name in [
            "POLICYBIND_BUNDLE_NAMESPACE",
            "POLICYBIND_BUNDLE_DIR",
            "POLICYBIND_AUDIT_KEY_SECRET",
            "POLICYBIND_UPSTREAM",
        ] {
            let mut sidecar = SidecarConfig::default();
            sidecar.extra_env.insert(name.into(), "x".into());
            let error = sidecar.validate().unwrap_err();
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn system_and_own_namespaces_are_always_excluded() {
        let config = AdmissionConfig::default();
        assert!(config.is_excluded("kube-system"));
        assert!(config.is_excluded("kube-public"));
        assert!(config.is_excluded("policybind-system"));
        assert!(!config.is_excluded("team-a"));
    }
}
