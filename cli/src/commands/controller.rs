//! `policybind controller`: run the operator (`policybind_operator::run`). Parses
//! arguments into `Settings`; everything else lives in the operator crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use policybind_operator::audit_retention::{self, AuditRetentionSettings, AuditSinkSetting};
use policybind_operator::controllers::incident::IncidentSettings;
use policybind_operator::{Error, Settings};

/// Run the PolicyBind controllers: compile policies, assess and approve models,
/// issue and rotate tokens, raise incidents, and publish a policy bundle into
/// every enforced namespace (label `policybind.io/enforce=true`).
///
/// Works in the cluster (service account) and outside it (kubeconfig), so the
/// e2e suite and development need no image. Refuses to start when the CRDs are
/// not installed.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    policybind controller --kubeconfig ~/.kube/config --metrics-listen 127.0.0.1:8080\n  \
    policybind controller --leader-election --lease-namespace policybind-system\n  \
    policybind controller --audit-retention-bytes 104857600 --audit-sink dir:/var/lib/policybind/audit\n\n\
    Metrics: GET /metrics (Prometheus). Probes: GET /healthz, GET /readyz.\n\
    Logs: RUST_LOG=policybind_operator=debug for detail.")]
pub struct ControllerArgs {
    /// Kubeconfig file. Default: in-cluster configuration, then $KUBECONFIG, then ~/.kube/config.
    #[arg(long, value_name = "PATH", env = "POLICYBIND_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Address of the metrics and health server (plain HTTP).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8080",
        env = "POLICYBIND_METRICS_LISTEN"
    )]
    metrics_listen: SocketAddr,
    /// Take a coordination.k8s.io Lease before acting, so several replicas are safe
    /// (one acts, the others stand by and take over within ~15 s).
    #[arg(long, env = "POLICYBIND_LEADER_ELECTION")]
    leader_election: bool,
    /// The operator's own namespace (the chart's release namespace). The leader
    /// Lease and the lifecycle audit trail live there, and so does every enforced
    /// namespace's policy bundle (`policybind-bundle.<namespace>`) with the Role
    /// that lets that namespace's service accounts read it: workloads cannot
    /// write here.
    #[arg(
        long,
        visible_alias = "lease-namespace",
        value_name = "NS",
        default_value = "policybind-system",
        env = "POD_NAMESPACE"
    )]
    namespace: String,
    /// Name of the leader Lease.
    #[arg(long, value_name = "NAME", default_value = policybind_crds::wire::names::OPERATOR_LEASE)]
    lease_name: String,
    /// This replica's identity in the Lease and in events. Default: $POD_NAME, else the host name.
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    identity: Option<String>,
    /// Quiet time after a change before bundles are rebuilt, so bursts coalesce.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    bundle_debounce_ms: u64,
    /// User name written as requester of the ApprovalRequests the operator raises.
    /// Default: system:serviceaccount:<namespace>:policybind-operator.
    #[arg(long, value_name = "USER")]
    requester: Option<String>,
    /// Hours an ApprovalRequest without `expiresAt` stays open before it expires.
    #[arg(long, value_name = "HOURS", default_value_t = 168)]
    approval_ttl_hours: u64,
    /// Denials of one subject within the window that raise a RepeatedDenials incident.
    #[arg(long, value_name = "N", default_value_t = 10)]
    incident_denials: usize,
    /// Window of the incident patterns, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    incident_window_secs: u64,
    /// Do not raise SensitiveDataToRestrictedToken incidents.
    #[arg(long)]
    no_pii_incidents: bool,
    /// Do not raise BudgetExhausted incidents.
    #[arg(long)]
    no_budget_incidents: bool,
    /// File with the audit signing key (the chart mounts it from a Secret). Set,
    /// lifecycle changes are appended to the audit trail (see --audit-key-secret).
    #[arg(long, value_name = "PATH", env = "POLICYBIND_AUDIT_KEY")]
    audit_key: Option<PathBuf>,
    /// Secret with the audit signing key (key `signing-key`), as `name` in the operator's
    /// namespace or `namespace/name`. Set, every lifecycle change (token issued,
    /// rotated, expired; model approved, suspended; policy failed; approval decided;
    /// incident raised) is appended to the audit trail in --namespace.
    #[arg(long, value_name = "SECRET", env = "POLICYBIND_AUDIT_KEY_SECRET")]
    audit_key_secret: Option<String>,
    /// Secret in --namespace holding the webhook's audit signing key (data key
    /// `signing-key`; the chart's `<fullname>-webhook-key`). Its public half is
    /// published in the keyring ConfigMap policybind-audit-keys, bound to
    /// `webhook/*`, beside the operator's key (`operator/*`) and every enforced
    /// namespace's key (`sidecar/<namespace>/*`). Unset, the webhook's segments
    /// do not verify with the published keyring.
    #[arg(
        long,
        value_name = "SECRET",
        env = policybind_crds::wire::env::WEBHOOK_AUDIT_KEY_SECRET
    )]
    webhook_audit_key_secret: Option<String>,
    /// Bytes of audit segment ConfigMaps (label policybind.io/audit-segment) each
    /// namespace may keep; beyond it the oldest sealed segments go to --audit-sink
    /// and are then deleted. Default 52428800 (50 MiB); 0 turns retention off.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = audit_retention::DEFAULT_MAX_BYTES,
        env = "POLICYBIND_AUDIT_RETENTION_BYTES"
    )]
    audit_retention_bytes: u64,
    /// Seconds between audit retention passes (the leader only).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = audit_retention::DEFAULT_INTERVAL_SECS,
        value_parser = clap::value_parser!(u64).range(1..),
        env = "POLICYBIND_AUDIT_RETENTION_INTERVAL"
    )]
    audit_retention_interval: u64,
    /// Where audit retention sends segments before deleting them: `dir:<path>`
    /// (segment files, fsynced; verifiable with `policybind audit verify --dir`)
    /// or `stdout` (one JSON line per segment, only for a log pipeline that keeps
    /// stdout durably; logs go to stderr). No default: without a sink nothing is
    /// ever deleted and retention does not run.
    #[arg(long, value_name = "SINK", env = "POLICYBIND_AUDIT_SINK")]
    audit_sink: Option<AuditSinkSetting>,
    /// ClusterRole bound (RoleBinding `policybind-sidecar`) to the service
    /// accounts of every enforced namespace: what sidecars may write there (usage
    /// reports, audit segments, held-request ApprovalRequests). The chart renders
    /// it as `<fullname>-sidecar` and grants the operator `bind` on it.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "policybind-sidecar",
        env = "POLICYBIND_SIDECAR_CLUSTER_ROLE"
    )]
    sidecar_cluster_role: String,
    /// Name of the model container's port the sidecar takes over (the webhook's
    /// --sidecar-port-name). The NetworkPolicy `policybind-model-ports` of every
    /// enforced namespace admits ingress to injected pods on it and on `pb-health`
    /// only, so the model's moved port is reachable from inside the pod alone.
    #[arg(long, value_name = "NAME", default_value = "http")]
    sidecar_port_name: String,
    /// Reports summarising request and admission decisions in every enforced
    /// namespace (`policybind-requests`, `policybind-admission`): `openreports`
    /// (`openreports.io/v1alpha1` Report, what Policy Reporter reads), `wgpolicyk8s`
    /// (`wgpolicyk8s.io/v1alpha2` PolicyReport), `both` or `off`. A kind whose CRD
    /// is not installed is skipped (logged once, asked again every 5 minutes).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "openreports",
        env = "POLICYBIND_REPORTS"
    )]
    reports: policybind_operator::reports::ReportFormat,
    /// Seconds between two report passes: each report is written at most once
    /// per pass, and only when it changed.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..),
        env = "POLICYBIND_REPORTS_INTERVAL"
    )]
    reports_interval: u64,
    /// Seconds to wait for the watch caches to fill at start.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    cache_timeout_secs: u64,
}

impl ControllerArgs {
    fn settings(self) -> Settings {
        let identity = self
            .identity
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "policybind-operator".into());
        let requester = self.requester.unwrap_or_else(|| {
            format!(
                "system:serviceaccount:{}:policybind-operator",
                self.namespace
            )
        });
        Settings {
            kubeconfig: self.kubeconfig,
            kube_context: self.context,
            metrics_listen: self.metrics_listen,
            leader_election: self.leader_election,
            namespace: self.namespace,
            lease_name: self.lease_name,
            identity,
            bundle_debounce: Duration::from_millis(self.bundle_debounce_ms),
            requester,
            approval_ttl: Duration::from_secs(self.approval_ttl_hours * 3600),
            incidents: IncidentSettings {
                denials: self.incident_denials,
                window: Duration::from_secs(self.incident_window_secs),
                pii_on_restricted_tokens: !self.no_pii_incidents,
                budget_exhausted: !self.no_budget_incidents,
            },
            cache_timeout: Duration::from_secs(self.cache_timeout_secs),
            audit_key_secret: self.audit_key_secret,
            webhook_audit_key_secret: self.webhook_audit_key_secret,
            audit_key_file: self.audit_key,
            // Nothing is deleted before a durable sink has it: no sink chosen, no
            // retention.
            audit_retention: self
                .audit_sink
                .filter(|_| self.audit_retention_bytes > 0)
                .map(|sink| AuditRetentionSettings {
                    max_bytes: self.audit_retention_bytes,
                    interval: Duration::from_secs(self.audit_retention_interval),
                    sink,
                }),
            sidecar_cluster_role: self.sidecar_cluster_role,
            sidecar_port_name: self.sidecar_port_name,
            bundle_limits: Default::default(),
            reports: policybind_operator::reports::ReportsSettings {
                format: self.reports,
                interval: Duration::from_secs(self.reports_interval),
            },
        }
    }
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    if args.audit_sink.is_none() && args.audit_retention_bytes > 0 {
        tracing::warn!(
            "audit retention is off: no --audit-sink chosen, so no segment is ever deleted (choose dir:<path> on a volume, or stdout for a durable log pipeline)"
        );
    }
    match policybind_operator::run(args.settings()).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // Not installed is a setup problem, not a crash: say so and exit 2.
        Err(error @ Error::CrdMissing(_)) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(2))
        }
        Err(error) => Err(error.into()),
    }
}
