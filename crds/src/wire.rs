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
    /// Bundle ConfigMaps and the reader Role and RoleBinding of a bundle, all in
    /// PolicyBind's own namespace: the namespace the bundle is for.
    pub const BUNDLE_NAMESPACE: &str = "policybind.io/bundle-namespace";
    /// ConfigMaps holding audit segments; the value is the writer key.
    pub const AUDIT_SEGMENT: &str = "policybind.io/audit-segment";
    /// A budget ledger ConfigMap; the value is the namespace it grants for.
    pub const LEDGER: &str = "policybind.io/ledger";
    /// ConfigMaps holding a sidecar's usage report (value `"true"`).
    pub const USAGE: &str = "policybind.io/usage";
    /// ConfigMaps (in PolicyBind's namespace) holding a webhook replica's
    /// admission decision summary (value `"true"`).
    pub const ADMISSION_SUMMARY: &str = "policybind.io/admission-summary";
    /// Name of the pod that wrote an audit segment or usage report. Admission
    /// (the chart's ValidatingAdmissionPolicy) lets a service account write only
    /// objects carrying its own pod's name here.
    pub const WRITER_POD: &str = "policybind.io/pod";
    /// Secrets holding an AccessToken's value; the value is the token's name.
    pub const TOKEN: &str = "policybind.io/token";
    /// Secrets holding a token value for the offline tools only (`policybind serve`,
    /// `test`, `eval`); the value is the AccessToken's name. The operator neither
    /// reads nor owns such Secrets: a demo value published in a README is never
    /// valid in a cluster, and such a Secret never collides with the one the
    /// operator issues (`<token>-token`).
    pub const STANDALONE_TOKEN: &str = "policybind.io/standalone-token";
    /// Secrets holding a namespace's audit signing key (value `"true"`).
    pub const AUDIT_KEY: &str = "policybind.io/audit-key";
    /// ApprovalRequests opened for a ModelDeployment; the value is its name.
    pub const MODEL_DEPLOYMENT: &str = "policybind.io/model-deployment";
    /// AccessToken label naming the application the token belongs to: AIBudgets of
    /// scope Application select tokens by it.
    pub const APPLICATION: &str = "policybind.io/application";
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
    /// Audit key Secrets the operator generates: the key id (first 16 hex of the
    /// SHA-256 of the public key), so the key can be named without reading it.
    pub const AUDIT_KEY_ID: &str = "policybind.io/audit-key-id";
    /// AccessToken: any new value asks the operator to rotate the secret.
    pub const ROTATE: &str = "policybind.io/rotate";
    /// Token Secrets: when the current value was issued.
    pub const ISSUED_AT: &str = "policybind.io/issued-at";
    /// Token Secrets: the last rotation handled.
    pub const ROTATION: &str = "policybind.io/rotation";
    /// Token Secrets: until when the previous value stays valid.
    pub const PREVIOUS_VALID_UNTIL: &str = "policybind.io/previous-valid-until";
    /// AccessToken written by `policybind token create --from-text`: the sentence it
    /// was made from, for the people who review it.
    pub const CREATED_FROM_TEXT: &str = "policybind.io/created-from-text";
}

/// Names of objects and containers.
pub mod names {
    /// The injected container.
    pub const SIDECAR_CONTAINER: &str = "policybind-sidecar";
    /// The model container's moved port (port names are at most 15 characters).
    pub const MODEL_PORT: &str = "pb-model";
    /// The sidecar's health and metrics port.
    pub const HEALTH_PORT: &str = "pb-health";
    /// RoleBinding (in each enforced namespace) of the sidecars' writes: it binds
    /// the chart's `<fullname>-sidecar` ClusterRole to the namespace's service
    /// accounts. Before bundles moved to PolicyBind's namespace it bound a Role
    /// of the same name, which the operator removes.
    pub const SIDECAR_BINDING: &str = "policybind-sidecar";
    /// Before bundles moved to PolicyBind's namespace: the bundle ConfigMap in
    /// each enforced namespace (`policybind-bundle`, parts `policybind-bundle-<n>`),
    /// and the prefix of every bundle name since.
    pub const BUNDLE_PREFIX: &str = "policybind-bundle";
    /// Prefix of the Role and RoleBinding (in PolicyBind's namespace) that let
    /// one enforced namespace's service accounts read that namespace's bundle.
    pub const BUNDLE_READER_PREFIX: &str = "policybind-bundle-reader.";
    /// Secret (in each enforced namespace) with that namespace's audit signing key.
    pub const AUDIT_KEY_SECRET: &str = "policybind-audit-key";
    /// ConfigMap (in PolicyBind's namespace) publishing the audit keyring: every
    /// verification key and the writers it may sign for (data key
    /// [`super::keys::AUDIT_KEYRING`]).
    pub const AUDIT_KEYRING: &str = "policybind-audit-keys";
    /// Prefix of a pod's usage report ConfigMap (`policybind-usage-<pod>`).
    pub const USAGE_REPORT_PREFIX: &str = "policybind-usage-";
    /// Prefix of a webhook replica's admission summary ConfigMap
    /// (`policybind-admission-<pod>`, in PolicyBind's own namespace).
    pub const ADMISSION_SUMMARY_PREFIX: &str = "policybind-admission-";
    /// The OpenReports `Report` (and `wgpolicyk8s.io` PolicyReport) in each
    /// enforced namespace summarising its request decisions.
    pub const REQUESTS_REPORT: &str = "policybind-requests";
    /// The Report in each namespace summarising the webhook's admission decisions
    /// on its objects.
    pub const ADMISSION_REPORT: &str = "policybind-admission";
    /// Prefix of a namespace's budget ledger ConfigMap
    /// (`policybind-ledger.<namespace>`, in PolicyBind's own namespace): the
    /// slices of each budget the operator granted to each pod.
    pub const LEDGER_PREFIX: &str = "policybind-ledger";
    /// NetworkPolicy (in each enforced namespace) that closes the model ports.
    pub const MODEL_NETWORK_POLICY: &str = "policybind-model-ports";
    /// The operator's leader Lease, in PolicyBind's namespace (`policybind check`
    /// reads it).
    pub const OPERATOR_LEASE: &str = "policybind-operator";
    /// Pod volume (added by injection) holding the namespace's audit signing key;
    /// mounted into the sidecar container only.
    pub const AUDIT_KEY_VOLUME: &str = "policybind-audit-key";
    /// Pod volume (added by injection) with a projected ServiceAccount token for the
    /// sidecar: containers added by a webhook get no token mount from the API server.
    pub const API_ACCESS_VOLUME: &str = "policybind-api-access";

    /// ConfigMap holding the policy bundle of `namespace`'s enforcement points. It
    /// lives in PolicyBind's own namespace, where workloads cannot write.
    pub fn bundle_config_map(namespace: &str) -> String {
        format!("policybind-bundle.{namespace}")
    }
}

/// Paths inside the injected sidecar container.
pub mod paths {
    /// Directory the audit key Secret is mounted at (read-only).
    pub const AUDIT_KEY_DIR: &str = "/var/run/secrets/policybind/audit";
    /// The PEM signing key file, [`super::env::AUDIT_KEY`]'s value.
    pub const AUDIT_KEY_FILE: &str = "/var/run/secrets/policybind/audit/signing-key";
    /// Where Kubernetes clients look for the ServiceAccount token, CA and namespace.
    pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
}

/// RBAC verbs PolicyBind checks with SubjectAccessReviews. Kubernetes does not use
/// them itself; RBAC accepts any verb, so each is granted explicitly (the chart's
/// `policybind-admin` and `policybind-approver` ClusterRoles) and editing rights
/// alone do not confer it.
pub mod verbs {
    /// On `approvalrequests`: decide an ApprovalRequest.
    pub const APPROVE: &str = "approve";
    /// On `modeldeployments` (name = the model, in the pod's namespace): run a pod
    /// that declares the model without the sidecar in an enforced namespace.
    pub const EXEMPT: &str = "exempt";
    /// On `modeldeployments`, cluster-wide: register a model with `scope: Cluster`.
    pub const SHARE: &str = "share";
}

/// Most parts one bundle may have. The reader Role names exactly this many
/// ConfigMaps, and the sidecar refuses a bundle announcing more: 16 parts of
/// 700 KiB of gzip are far beyond any realistic bundle.
pub const MAX_BUNDLE_PARTS: usize = 16;

/// Name of the bundle ConfigMap of `namespace`, in PolicyBind's own namespace:
/// `policybind-bundle.<namespace>`. A namespace name has no dots, so the names of
/// two namespaces' bundles (and their parts) never collide.
pub fn bundle_config_map(namespace: &str) -> String {
    format!("{}.{namespace}", names::BUNDLE_PREFIX)
}

/// Name of part `index` of `namespace`'s bundle: part 0 is
/// [`bundle_config_map`], part `n` is `policybind-bundle.<namespace>.<n>`.
pub fn bundle_part(namespace: &str, index: usize) -> String {
    if index == 0 {
        bundle_config_map(namespace)
    } else {
        format!("{}.{index}", bundle_config_map(namespace))
    }
}

/// Every name a bundle of `namespace` may use, part 0 first
/// ([`MAX_BUNDLE_PARTS`] of them): what its reader Role names.
pub fn bundle_parts(namespace: &str) -> Vec<String> {
    (0..MAX_BUNDLE_PARTS)
        .map(|index| bundle_part(namespace, index))
        .collect()
}

/// Name of the Role and RoleBinding that let `namespace` read its bundle.
pub fn bundle_reader(namespace: &str) -> String {
    format!("{}{namespace}", names::BUNDLE_READER_PREFIX)
}

/// Name of the budget ledger of `namespace` (in PolicyBind's own namespace,
/// beside the bundle): `policybind-ledger.<namespace>`.
pub fn ledger_config_map(namespace: &str) -> String {
    format!("{}.{namespace}", names::LEDGER_PREFIX)
}

/// Object names are DNS subdomains of at most 253 characters.
const MAX_OBJECT_NAME: usize = 253;

/// Name of a pod's usage report: `policybind-usage-<pod>`. Pod names may be 253
/// characters, so a name that would be too long keeps a prefix of the pod name
/// and ends with a hash of the whole, which keeps names of distinct pods
/// distinct. The operator counts a report only under the name its
/// [`labels::WRITER_POD`] label gives here.
pub fn usage_report_name(pod: &str) -> String {
    name_for_pod(names::USAGE_REPORT_PREFIX, pod)
}

/// Name of a webhook replica's admission summary: `policybind-admission-<pod>`,
/// shortened as [`usage_report_name`] is.
pub fn admission_summary_name(pod: &str) -> String {
    name_for_pod(names::ADMISSION_SUMMARY_PREFIX, pod)
}

/// `<prefix><pod>`, or when too long a prefix of it and a hash of the pod name.
fn name_for_pod(prefix: &str, pod: &str) -> String {
    use sha2::Digest;
    let name = format!("{prefix}{pod}");
    if name.len() <= MAX_OBJECT_NAME {
        return name;
    }
    let hash = hex::encode(&sha2::Sha256::digest(pod.as_bytes())[..8]);
    let mut keep = MAX_OBJECT_NAME - hash.len() - 1;
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let prefix = name[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}")
}

/// Data keys of ConfigMaps and Secrets.
pub mod keys {
    /// A token Secret's value.
    pub const TOKEN: &str = "token";
    /// An audit key Secret's PKCS#8 PEM Ed25519 private key.
    pub const SIGNING_KEY: &str = "signing-key";
    /// A usage report's JSON.
    pub const USAGE: &str = "usage.json";
    /// A decision summary's JSON (`policybind_crds::summary::DecisionSummary`):
    /// in a usage report, the pod's request decisions; in an admission summary,
    /// the webhook replica's admission decisions.
    pub const DECISIONS: &str = "decisions.json";
    /// A usage report's lease demand JSON (`policybind_crds::lease::Demands`):
    /// per budget key what the pod settled, holds in flight and wants granted.
    pub const LEASE_DEMAND: &str = "leases.json";
    /// A budget ledger's JSON (`policybind_crds::lease::Ledger`).
    pub const LEDGER: &str = "ledger.json";
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
    /// Default data key of a provider credentials Secret
    /// (`ModelDeployment.spec.credentials.secretRef.key`).
    pub const PROVIDER_API_KEY: &str = "api-key";
}

/// `ModelDeployment.spec.provider` values the enforcement point routes to, each with
/// its own API shape and credential header.
pub mod providers {
    /// OpenAI: `Authorization: Bearer <key>`.
    pub const OPENAI: &str = "openai";
    /// Anthropic: `x-api-key: <key>` and `anthropic-version`.
    pub const ANTHROPIC: &str = "anthropic";
    /// Azure OpenAI (the v1 API, `https://<resource>.openai.azure.com/openai/v1`): `api-key: <key>`.
    pub const AZURE_OPENAI: &str = "azure-openai";
    /// An OpenAI-compatible server run by the organisation (vLLM, TGI, Ollama, KServe):
    /// `Authorization: Bearer <key>` when a key is configured.
    pub const SELF_HOSTED: &str = "self-hosted";
    /// AWS Bedrock: registered for the record; requests are not routed (SigV4 signing).
    pub const BEDROCK: &str = "bedrock";
    /// Google Vertex AI: registered for the record; requests are not routed (OAuth).
    pub const VERTEX: &str = "vertex";
}

/// Field managers of server-side apply, one per writer.
pub mod field_managers {
    pub const OPERATOR: &str = "policybind-operator";
    pub const WEBHOOK: &str = "policybind-webhook";
    pub const SIDECAR: &str = "policybind-sidecar";
    pub const AUDIT: &str = "policybind-audit";
    /// The operator's writes of OpenReports and PolicyReports.
    pub const REPORTS: &str = "policybind-reports";
}

/// `transition` details of `Lifecycle` audit records that readers act on.
pub mod transitions {
    /// A sidecar's summary of the requests it refused before anyone was
    /// identified (no token, an unknown token, ...): one detail per code with
    /// its count (`TOKEN_MISSING=12`) plus `windowSeconds`. The dashboard's
    /// Denials page adds them up.
    pub const UNAUTHENTICATED_REJECTIONS: &str = "unauthenticated-rejections";
}

/// Audit writer identities (every record and segment names its writer) and the
/// keyring patterns that bind a signing key to them. `*` in a pattern stays
/// within one `/`-separated part.
pub mod writers {
    /// A sidecar: `sidecar/<namespace>/<pod>`.
    pub fn sidecar(namespace: &str, pod: &str) -> String {
        format!("sidecar/{namespace}/{pod}")
    }
    /// Every sidecar of a namespace.
    pub fn sidecars_of(namespace: &str) -> String {
        format!("sidecar/{namespace}/*")
    }
    /// A central gateway replica: `gateway/<namespace>/<pod>`.
    pub fn gateway(namespace: &str, pod: &str) -> String {
        format!("gateway/{namespace}/{pod}")
    }
    /// What a namespace's key may sign for: its sidecars and the gateway replicas
    /// running there (both mount the namespace's `policybind-audit-key`).
    pub fn enforcement_points_of(namespace: &str) -> Vec<String> {
        vec![sidecars_of(namespace), format!("gateway/{namespace}/*")]
    }
    /// A webhook replica: `webhook/<pod>`.
    pub fn webhook(pod: &str) -> String {
        format!("webhook/{pod}")
    }
    /// Every webhook replica: what the webhook's key may sign for.
    pub const WEBHOOKS: &str = "webhook/*";
    /// An operator replica: `operator/<identity>`.
    pub fn operator(identity: &str) -> String {
        format!("operator/{identity}")
    }
    /// Every operator replica: what the operator's key may sign for.
    pub const OPERATORS: &str = "operator/*";
    /// The standalone server: `standalone/<host>`.
    pub fn standalone(host: &str) -> String {
        format!("standalone/{host}")
    }
}

/// Prefix of every Redis key of the Redis budget store: each owner's keys are
/// `policybind:{<owner>}:...` (one hash tag per owner, so one Redis Cluster
/// slot); a Redis ACL for enforcement points may allow `~policybind:*` only.
pub const BUDGET_STORE_KEY_PREFIX: &str = "policybind:";

/// Environment variables: what the webhook gives an injected sidecar, and the
/// settings every `policybind` role reads.
pub mod env {
    /// glibc's fixed mmap threshold: buffers above it are mapped and given back
    /// when freed, instead of staying in per-thread arenas (docs/audit.md: an
    /// audit writer under overload peaks near 63 MiB with it, 122 MiB without).
    /// Set on every PolicyBind container the chart and the webhook create.
    pub const MALLOC_MMAP_THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";
    /// Value of [`MALLOC_MMAP_THRESHOLD`]: 128 KiB.
    pub const MALLOC_MMAP_THRESHOLD_VALUE: &str = "131072";
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
    /// Name of the sidecar's bundle ConfigMap (part 0):
    /// [`super::bundle_config_map`] of the pod's namespace.
    pub const BUNDLE_CONFIGMAP: &str = "POLICYBIND_BUNDLE_CONFIGMAP";
    /// Namespace holding the sidecar's bundle: PolicyBind's own (the chart's
    /// release namespace), where workloads cannot write.
    pub const BUNDLE_NAMESPACE: &str = "POLICYBIND_BUNDLE_NAMESPACE";
    /// Largest bundle JSON a sidecar accepts once decompressed, in bytes.
    pub const BUNDLE_MAX_BYTES: &str = "POLICYBIND_BUNDLE_MAX_BYTES";
    /// Path of the PEM audit signing key.
    pub const AUDIT_KEY: &str = "POLICYBIND_AUDIT_KEY";
    /// `namespace/name` of a Secret holding the audit signing key (read through the
    /// API). Injected sidecars no longer get it: their key is a mounted file.
    pub const AUDIT_KEY_SECRET: &str = "POLICYBIND_AUDIT_KEY_SECRET";
    /// Name of the Secret (in the operator's namespace) with the webhook's audit
    /// signing key: the operator publishes its public half in the keyring.
    pub const WEBHOOK_AUDIT_KEY_SECRET: &str = "POLICYBIND_WEBHOOK_AUDIT_KEY_SECRET";
    /// Log format: `json` or `text`.
    pub const LOG_FORMAT: &str = "POLICYBIND_LOG_FORMAT";
    /// How enforcement points estimate prompt tokens (`exact` or `heuristic`,
    /// `policybind sidecar --token-estimates`); the chart sets it for injected
    /// sidecars from `sidecar.tokenEstimates`.
    pub const TOKEN_ESTIMATES: &str = "POLICYBIND_TOKEN_ESTIMATES";
    /// `true`: enforcement points label their per-token metrics with the token
    /// (`policybind sidecar --metrics-token-labels`); the chart sets it from
    /// `sidecar.metricsTokenLabels` (injected sidecars) and passes the flag
    /// from `gateway.metricsTokenLabels`.
    pub const METRICS_TOKEN_LABELS: &str = "POLICYBIND_METRICS_TOKEN_LABELS";
    /// Poll interval of directory sources, milliseconds.
    pub const RELOAD_INTERVAL_MS: &str = "POLICYBIND_RELOAD_INTERVAL_MS";
    /// Directory where provider credential Secrets are mounted, one directory per
    /// Secret (`<dir>/<secret>/<key>`), as Kubernetes mounts Secret volumes.
    pub const CREDENTIALS_DIR: &str = "POLICYBIND_CREDENTIALS_DIR";
    /// PEM file of extra CA certificates trusted for HTTPS upstreams.
    pub const UPSTREAM_CA_FILE: &str = "POLICYBIND_UPSTREAM_CA_FILE";
    /// Listener of the decision API (`POST /v1/decide`, PolicyGate's `/evaluate`); unset: off.
    pub const DECIDE_LISTEN: &str = "POLICYBIND_DECIDE_LISTEN";
    /// `true`: run `policybind sidecar` as the central gateway (no model container).
    pub const GATEWAY: &str = "POLICYBIND_GATEWAY";
    /// Where enforcement points keep budgets and rate limits shared by
    /// replicas (`policybind sidecar|serve --budget-store`): `leases` (the
    /// operator's ledger, cluster default), `memory` (this process only,
    /// `serve`'s default) or `redis://[user[:password]@]host:port[/db]`
    /// (`rediss://` for TLS).
    pub const BUDGET_STORE: &str = "POLICYBIND_BUDGET_STORE";
    /// Password of the Redis budget store, when its URL carries none (the
    /// chart fills it from `budgets.redis.passwordSecret`). Never logged.
    pub const BUDGET_STORE_PASSWORD: &str = "POLICYBIND_BUDGET_STORE_PASSWORD";
    /// PEM file of the CA certificates trusted for a `rediss://` budget store
    /// instead of the platform's (for a Redis with a private CA).
    pub const BUDGET_STORE_CA_FILE: &str = "POLICYBIND_BUDGET_STORE_CA_FILE";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names_of_two_namespaces_never_collide() {
        assert_eq!(bundle_config_map("team-a"), "policybind-bundle.team-a");
        assert_eq!(bundle_part("team-a", 0), "policybind-bundle.team-a");
        assert_eq!(bundle_part("team-a", 3), "policybind-bundle.team-a.3");
        // "team-a" part 1 and a namespace called "team-a.1" cannot both exist:
        // namespace names are DNS labels, without dots.
        let parts = bundle_parts("team-a");
        assert_eq!(parts.len(), MAX_BUNDLE_PARTS);
        assert!(!parts.iter().any(|p| bundle_parts("team-a-1").contains(p)));
        assert_eq!(bundle_reader("team-a"), "policybind-bundle-reader.team-a");
    }

    #[test]
    fn usage_report_names_stay_valid_object_names_for_long_pod_names() {
        assert_eq!(
            usage_report_name("bot-7d9f-x2"),
            "policybind-usage-bot-7d9f-x2"
        );
        let long_a = format!("{}a", "p".repeat(252));
        let long_b = format!("{}b", "p".repeat(252));
        let (a, b) = (usage_report_name(&long_a), usage_report_name(&long_b));
        assert!(a.len() <= MAX_OBJECT_NAME && b.len() <= MAX_OBJECT_NAME);
        assert!(a.starts_with("policybind-usage-ppp"));
        assert_ne!(a, b);
    }
}
