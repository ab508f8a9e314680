//! Contracts between PolicyBind's processes (DESIGN.md section 12).
//!
//! The operator, the webhook, the sidecar, the gateway and the CLI agree on a
//! handful of strings: labels and annotations they read off each other's
//! objects, the names and data keys of the ConfigMaps and Secrets they hand each
//! other, the environment the webhook gives an injected sidecar, and the field
//! managers of their server-side applies. Each is defined here, once; no crate
//! re-declares a string another crate owns, and no crate depends on another only
//! to compare constants. Formats (the bundle codec, the usage report, the audit
//! segment) live in `policybind-engine`, next to the code that encodes them.

/// Labels, on namespaces, pods and the objects PolicyBind writes.
pub mod labels {
    /// Namespace (or pod) label: `"true"` turns enforcement and sidecar injection on.
    pub const ENFORCE: &str = "policybind.io/enforce";
    /// Pod label (also read as an annotation, as Istio and Linkerd users write it):
    /// `"true"`/`"enabled"` opts a pod into injection, `"false"`/`"disabled"` out.
    pub const INJECT: &str = "policybind.io/inject";
    /// Label the webhook puts on every pod it injected (value `"true"`), for
    /// selectors: the NetworkPolicy, PodMonitors, `kubectl get pods -l`.
    pub const INJECTED: &str = "policybind.io/injected";
    /// Namespace label: the highest data classification allowed in the namespace.
    pub const NAMESPACE_CLASSIFICATION: &str = "policybind.io/max-data-classification";
    /// `app.kubernetes.io/managed-by`: on every object the operator creates that
    /// has no owner reference to hold it.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "policybind";
    /// ConfigMaps holding a namespace's policy bundle (value `"true"`).
    pub const BUNDLE: &str = "policybind.io/bundle";
    /// ConfigMaps holding audit segments; the value is the writer key.
    pub const AUDIT_SEGMENT: &str = "policybind.io/audit-segment";
    /// ConfigMaps holding a sidecar's usage report (value `"true"`).
    pub const USAGE: &str = "policybind.io/usage";
    /// Name of the pod that wrote an audit segment or usage report. Admission
    /// (the chart's ValidatingAdmissionPolicy) lets a service account write only
    /// objects carrying its own pod's name here.
    pub const WRITER_POD: &str = "policybind.io/pod";
    /// Secrets holding an AccessToken's value; the value is the token's name.
    pub const TOKEN: &str = "policybind.io/token";
    /// Secrets holding a namespace's audit signing key (value `"true"`).
    pub const AUDIT_KEY: &str = "policybind.io/audit-key";
    /// ApprovalRequests opened for a ModelDeployment; the value is its name.
    pub const MODEL_DEPLOYMENT: &str = "policybind.io/model-deployment";
    /// Incidents: the violation pattern that raised them.
    pub const INCIDENT_PATTERN: &str = "policybind.io/pattern";
    /// Incidents: a hash of the subject they concern.
    pub const INCIDENT_SUBJECT_HASH: &str = "policybind.io/subject-hash";
}

/// Annotations.
pub mod annotations {
    /// Pod annotation (or label) naming the ModelDeployment a workload serves.
    pub const MODEL: &str = "policybind.io/model";
    /// Pod annotation, same values as [`super::labels::INJECT`].
    pub const INJECT: &str = "policybind.io/inject";
    /// Annotation the webhook puts on a pod it injected (value `"true"`).
    pub const INJECTED: &str = "policybind.io/injected";
    /// Port move recorded on an injected pod, `<original>:<model>`.
    pub const PORTS: &str = "policybind.io/ports";
    /// Pod annotation naming the container that serves the model.
    pub const MODEL_CONTAINER: &str = "policybind.io/model-container";
    /// Pod annotation: the highest data classification the workload handles.
    pub const DATA_CLASSIFICATION: &str = "policybind.io/data-classification";
    /// Bundle ConfigMaps: the bundle fingerprint, on every part.
    pub const FINGERPRINT: &str = "policybind.io/fingerprint";
    /// Bundle ConfigMaps: `index/count` of a part, e.g. `0/3`.
    pub const BUNDLE_PART: &str = "policybind.io/bundle-part";
    /// AccessToken: any new value asks the operator to rotate the secret.
    pub const ROTATE: &str = "policybind.io/rotate";
    /// Token Secrets: when the current value was issued.
    pub const ISSUED_AT: &str = "policybind.io/issued-at";
    /// Token Secrets: the last rotation handled.
    pub const ROTATION: &str = "policybind.io/rotation";
    /// Token Secrets: until when the previous value stays valid.
    pub const PREVIOUS_VALID_UNTIL: &str = "policybind.io/previous-valid-until";
}

/// Names of objects and containers.
pub mod names {
    /// The injected container.
    pub const SIDECAR_CONTAINER: &str = "policybind-sidecar";
    /// The model container's moved port (port names are at most 15 characters).
    pub const MODEL_PORT: &str = "pb-model";
    /// The sidecar's health and metrics port.
    pub const HEALTH_PORT: &str = "pb-health";
    /// RoleBinding (in each enforced namespace) of the sidecars' writes.
    pub const SIDECAR_BINDING: &str = "policybind-sidecar";
    /// Secret (in each enforced namespace) with that namespace's audit signing key.
    pub const AUDIT_KEY_SECRET: &str = "policybind-audit-key";
    /// ConfigMap (in PolicyBind's namespace) publishing the audit keyring: every
    /// verification key and the writers it may sign for (data key
    /// [`super::keys::AUDIT_KEYRING`]).
    pub const AUDIT_KEYRING: &str = "policybind-audit-keys";
    /// Prefix of a pod's usage report ConfigMap (`policybind-usage-<pod>`).
    pub const USAGE_REPORT_PREFIX: &str = "policybind-usage-";
    /// NetworkPolicy (in each enforced namespace) that closes the model ports.
    pub const MODEL_NETWORK_POLICY: &str = "policybind-model-ports";
}

/// Data keys of ConfigMaps and Secrets.
pub mod keys {
    /// A token Secret's value.
    pub const TOKEN: &str = "token";
    /// An audit key Secret's PKCS#8 PEM Ed25519 private key.
    pub const SIGNING_KEY: &str = "signing-key";
    /// A usage report's JSON.
    pub const USAGE: &str = "usage.json";
    /// An audit segment's JSON (plain, as versions before gzip segments wrote it;
    /// still read).
    pub const SEGMENT: &str = "segment.json";
    /// An audit segment's JSON, gzip (binary data key of segment ConfigMaps).
    pub const SEGMENT_GZ: &str = "segment.json.gz";
    /// The audit keyring's JSON (ConfigMap [`super::names::AUDIT_KEYRING`]).
    pub const AUDIT_KEYRING: &str = "keys.json";
    /// A plain bundle part.
    pub const BUNDLE_JSON: &str = "bundle.json";
    /// A gzip bundle part.
    pub const BUNDLE_GZ: &str = "bundle.json.gz";
}

/// Field managers of server-side apply, one per writer.
pub mod field_managers {
    pub const OPERATOR: &str = "policybind-operator";
    pub const WEBHOOK: &str = "policybind-webhook";
    pub const SIDECAR: &str = "policybind-sidecar";
    pub const AUDIT: &str = "policybind-audit";
}

/// Environment variables: what the webhook gives an injected sidecar, and the
/// settings every `policybind` role reads.
pub mod env {
    /// Namespace of the pod (downward API).
    pub const NAMESPACE: &str = "POLICYBIND_NAMESPACE";
    /// Name of the pod (downward API).
    pub const POD_NAME: &str = "POLICYBIND_POD_NAME";
    /// Where the sidecar forwards to (the model's moved port).
    pub const UPSTREAM: &str = "POLICYBIND_UPSTREAM";
    /// The sidecar's proxy listener.
    pub const LISTEN: &str = "POLICYBIND_LISTEN";
    /// Health, readiness and metrics listener.
    pub const HEALTH_LISTEN: &str = "POLICYBIND_HEALTH_LISTEN";
    /// The ModelDeployment the pod serves (`namespace/name`).
    pub const MODEL_DEPLOYMENT: &str = "POLICYBIND_MODEL_DEPLOYMENT";
    /// Name of the first bundle ConfigMap the sidecar reads.
    pub const BUNDLE_CONFIGMAP: &str = "POLICYBIND_BUNDLE_CONFIGMAP";
    /// Namespace holding the sidecar's bundle (PolicyBind's own).
    pub const BUNDLE_NAMESPACE: &str = "POLICYBIND_BUNDLE_NAMESPACE";
    /// A directory with a bundle (tests, standalone tools).
    pub const BUNDLE_DIR: &str = "POLICYBIND_BUNDLE_DIR";
    /// Path of the PEM audit signing key.
    pub const AUDIT_KEY: &str = "POLICYBIND_AUDIT_KEY";
    /// `namespace/name` of a Secret holding the audit signing key.
    pub const AUDIT_KEY_SECRET: &str = "POLICYBIND_AUDIT_KEY_SECRET";
    /// Log format: `json` or `text`.
    pub const LOG_FORMAT: &str = "POLICYBIND_LOG_FORMAT";
    /// Poll interval of directory sources, milliseconds.
    pub const RELOAD_INTERVAL_MS: &str = "POLICYBIND_RELOAD_INTERVAL_MS";
}
