//! `policybind sidecar`: the enforcement point injected next to a model server
//! (DESIGN.md sections 3-5). Configured from the environment the admission
//! webhook sets on the injected container: namespace and pod from the downward
//! API, upstream `http://127.0.0.1:<model port>`, the bundle ConfigMap (watched)
//! or its mounted directory, and audit segments as ConfigMaps in the namespace.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use policybind_sidecar::Dependencies;
use policybind_sidecar::audit::config_map_writer;
use policybind_sidecar::config::{ApprovalSettings, Settings, SourceSettings};
use policybind_sidecar::usage::{UsageReportSettings, report_name};

use super::serve::ProxyArgs;

/// Arguments of `policybind sidecar`.
#[derive(clap::Args, Debug)]
pub struct SidecarArgs {
    /// Namespace of the pod (downward API `metadata.namespace`): the bundle, approvals
    /// and audit segments live there.
    #[arg(long, env = "POLICYBIND_NAMESPACE")]
    pub namespace: String,
    /// Name of the pod (downward API `metadata.name`), for the audit writer identity.
    #[arg(long, env = "POLICYBIND_POD_NAME", default_value = "unknown-pod")]
    pub pod_name: String,
    /// Base URL of the model server in the same pod.
    #[arg(
        long,
        env = "POLICYBIND_UPSTREAM",
        default_value = "http://127.0.0.1:8000"
    )]
    pub upstream: String,
    /// Address callers reach (the port taken over from the model server).
    #[arg(long, env = "POLICYBIND_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "POLICYBIND_HEALTH_LISTEN", default_value = "0.0.0.0:9090")]
    pub health_listen: SocketAddr,
    /// Bundle ConfigMap to watch (with its parts `<name>-<n>`).
    #[arg(
        long,
        env = "POLICYBIND_BUNDLE_CONFIGMAP",
        default_value = "policybind-bundle"
    )]
    pub bundle_config_map: String,
    /// Read the bundle from this mounted ConfigMap directory instead of watching the API.
    #[arg(
        long,
        env = "POLICYBIND_BUNDLE_DIR",
        conflicts_with = "bundle_config_map"
    )]
    pub bundle_dir: Option<PathBuf>,
    /// ModelDeployment this pod serves (informational, logged).
    #[arg(long, env = "POLICYBIND_MODEL_DEPLOYMENT")]
    pub model_deployment: Option<String>,
    /// Audit signing key file (PEM or 32 raw bytes).
    #[arg(
        long,
        env = "POLICYBIND_AUDIT_KEY",
        conflicts_with = "audit_key_secret"
    )]
    pub audit_key: Option<PathBuf>,
    /// Audit signing key Secret as `namespace/name` (data key `signing-key`).
    #[arg(long, env = "POLICYBIND_AUDIT_KEY_SECRET")]
    pub audit_key_secret: Option<String>,
    /// How often a mounted bundle directory is checked for changes, in milliseconds.
    #[arg(long, env = "POLICYBIND_RELOAD_INTERVAL_MS", default_value_t = 1000)]
    pub reload_interval_ms: u64,
    /// How often the settled usage of each token is written to this pod's usage
    /// report (ConfigMap `policybind-usage-<pod>`), in seconds; also written once
    /// at shutdown, and only when it changed. The operator sums the reports into
    /// `AccessToken.status.usage` and enforces budgets across pods with them.
    #[arg(
        long,
        env = "POLICYBIND_USAGE_REPORT_INTERVAL_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub usage_report_interval_secs: u64,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

pub async fn run(args: SidecarArgs) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client (in-cluster configuration or KUBECONFIG)")?;
    let key = match (&args.audit_key, &args.audit_key_secret) {
        (Some(path), _) => policybind_audit::keys::signing_key_from_file(path)?,
        (None, Some(secret)) => {
            let (namespace, name) = secret
                .split_once('/')
                .context("--audit-key-secret takes namespace/name")?;
            policybind_audit::keys::signing_key_from_secret(client.clone(), namespace, name).await?
        }
        (None, None) => anyhow::bail!(
            "the audit trail needs a signing key: set POLICYBIND_AUDIT_KEY (file) or POLICYBIND_AUDIT_KEY_SECRET (namespace/name)"
        ),
    };
    let writer_id = format!("sidecar/{}/{}", args.namespace, args.pod_name);
    let writer = config_map_writer(
        client.clone(),
        &args.namespace,
        &args.pod_name,
        key,
        &writer_id,
    )
    .await?;
    tracing::info!(
        namespace = %args.namespace,
        model_deployment = args.model_deployment.as_deref().unwrap_or("-"),
        "starting the enforcement sidecar"
    );

    let mut settings = Settings::standalone(PathBuf::new(), args.upstream.clone());
    settings.listen = args.listen;
    settings.health_listen = args.health_listen;
    settings.namespace = args.namespace.clone();
    settings.writer = writer_id.clone();
    settings.source = match &args.bundle_dir {
        Some(dir) => SourceSettings::BundleDirectory {
            path: dir.clone(),
            poll_interval: Duration::from_millis(args.reload_interval_ms.max(50)),
        },
        None => SourceSettings::ConfigMap {
            namespace: args.namespace.clone(),
            name: args.bundle_config_map.clone(),
        },
    };
    settings.approvals = ApprovalSettings::Cluster {
        namespace: args.namespace.clone(),
        requester: format!("policybind:{writer_id}"),
    };
    if args.pod_name == "unknown-pod" {
        // Every pod without a name would overwrite the same report.
        tracing::warn!(
            "POLICYBIND_POD_NAME is not set: pods sharing the default name share one usage report"
        );
    }
    settings.usage_report = Some(UsageReportSettings {
        namespace: args.namespace.clone(),
        name: report_name(&args.pod_name),
        interval: Duration::from_secs(args.usage_report_interval_secs),
    });
    args.proxy.apply(&mut settings);

    let result = policybind_sidecar::run(
        settings,
        Dependencies {
            audit: Arc::new(writer.clone()),
            ledger: None,
            kube: Some(client),
        },
    )
    .await;
    let flushed = writer.shutdown().await;
    result.context("policybind sidecar")?;
    flushed.context("writing the last audit records")?;
    Ok(ExitCode::SUCCESS)
}
