//! `policybind sidecar`: the enforcement point injected next to a model server
//! (DESIGN.md sections 3-5), or with `--gateway` the central gateway the chart
//! runs for teams calling external providers. Configured from the environment
//! the admission webhook (or the chart) sets: namespace and pod from the
//! downward API, upstream `http://127.0.0.1:<model port>` (none for the
//! gateway), where the bundle is (watched in PolicyBind's own namespace),
//! provider key Secrets mounted under `--credentials-dir`, and audit segments
//! as ConfigMaps in the namespace.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use policybind_crds::wire;
use policybind_engine::bundle_codec::{DEFAULT_MAX_JSON_BYTES, DecodeLimits};
use policybind_sidecar::Dependencies;
use policybind_sidecar::audit::config_map_writer;
use policybind_sidecar::cluster::BundleSource;
use policybind_sidecar::config::{ApprovalSettings, Settings, SourceSettings};
use policybind_sidecar::usage::UsageReportSettings;

use super::serve::{BudgetStoreArg, ProxyArgs};

/// Arguments of `policybind sidecar`.
#[derive(clap::Args, Debug)]
pub struct SidecarArgs {
    /// Namespace of the pod (downward API `metadata.namespace`): requests are decided
    /// for it, and its approvals, audit segments and usage report live there.
    #[arg(long, env = wire::env::NAMESPACE)]
    pub namespace: String,
    /// Name of the pod (downward API `metadata.name`): the audit writer identity, and
    /// the `policybind.io/pod` label of the audit segments and usage report (the
    /// chart's admission policy requires it to be the pod the token is bound to).
    #[arg(long, env = wire::env::POD_NAME, default_value = "unknown-pod")]
    pub pod_name: String,
    /// Base URL of the model server in the same pod (default
    /// `http://127.0.0.1:8000`; none with `--gateway`): where the pod's own model
    /// and models without an endpoint go.
    #[arg(long, env = wire::env::UPSTREAM)]
    pub upstream: Option<String>,
    /// Run as the central gateway: no model container next to it, every model is
    /// routed by its ModelDeployment's provider and endpoint, with the provider key
    /// from `--credentials-dir`.
    #[arg(long, env = wire::env::GATEWAY)]
    pub gateway: bool,
    /// Address callers reach (the port taken over from the model server).
    #[arg(long, env = wire::env::LISTEN, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = wire::env::HEALTH_LISTEN, default_value = "0.0.0.0:9090")]
    pub health_listen: SocketAddr,
    /// PolicyBind's own namespace, where the operator keeps every namespace's bundle
    /// and workloads cannot write (the chart's release namespace; the webhook sets it).
    #[arg(long, env = wire::env::BUNDLE_NAMESPACE, value_name = "NS")]
    pub bundle_namespace: Option<String>,
    /// The bundle ConfigMap (part 0) to watch there; parts are `<name>.<n>`.
    /// Default: `policybind-bundle.<namespace>`.
    #[arg(long, env = wire::env::BUNDLE_CONFIGMAP, value_name = "NAME")]
    pub bundle_config_map: Option<String>,
    /// Largest bundle JSON accepted once decompressed, in bytes; a larger one (a
    /// gzip bomb, say) is refused and the last good set stays in force.
    #[arg(
        long,
        env = wire::env::BUNDLE_MAX_BYTES,
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_JSON_BYTES
    )]
    pub bundle_max_bytes: usize,
    /// ModelDeployment this pod serves (`namespace/name`): its requests always go to
    /// `--upstream`, whatever its endpoint says.
    #[arg(long, env = wire::env::MODEL_DEPLOYMENT)]
    pub model_deployment: Option<String>,
    /// Audit signing key file (PEM or 32 raw bytes).
    #[arg(
        long,
        env = wire::env::AUDIT_KEY,
        conflicts_with = "audit_key_secret"
    )]
    pub audit_key: Option<PathBuf>,
    /// Audit signing key Secret as `namespace/name` (data key `signing-key`).
    #[arg(long, env = wire::env::AUDIT_KEY_SECRET)]
    pub audit_key_secret: Option<String>,
    /// How often the settled usage of each token is written to this pod's usage
    /// report (ConfigMap `policybind-usage-<pod>`), in seconds; also written once
    /// at shutdown, and only when it changed. The operator sums the reports into
    /// `AccessToken.status.usage` and enforces budgets across pods with them.
    /// Budgets are shared with the other replicas through the operator's ledger
    /// (`policybind-ledger.<namespace>`): then the report is written at most
    /// every second, whatever this says, to carry this pod's lease demands.
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

/// The audit signing key: a mounted file, else a Secret read through the API.
async fn signing_key(
    args: &SidecarArgs,
    client: &kube::Client,
) -> anyhow::Result<policybind_engine::audit::AuditSigningKey> {
    Ok(match (&args.audit_key, &args.audit_key_secret) {
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
    })
}

/// The settings of the enforcement point, `writer_id` being its audit identity.
fn settings(args: &SidecarArgs, bundle_namespace: String, writer_id: &str) -> Settings {
    let upstream = match (&args.upstream, args.gateway) {
        (Some(upstream), _) => upstream.clone(),
        (None, true) => String::new(),
        (None, false) => "http://127.0.0.1:8000".to_string(),
    };
    let mut settings = Settings::standalone(PathBuf::new(), upstream);
    settings.own_model_deployment = args.model_deployment.clone().filter(|_| !args.gateway);
    settings.listen = args.listen;
    settings.health_listen = args.health_listen;
    settings.namespace = args.namespace.clone();
    settings.writer = writer_id.to_string();
    let home = bundle_namespace.clone();
    settings.source = SourceSettings::ConfigMap(BundleSource {
        namespace: bundle_namespace,
        name: args
            .bundle_config_map
            .clone()
            .unwrap_or_else(|| wire::bundle_config_map(&args.namespace)),
        limits: DecodeLimits {
            max_json_bytes: args.bundle_max_bytes,
            ..DecodeLimits::default()
        },
    });
    settings.approvals = ApprovalSettings::Cluster {
        namespace: args.namespace.clone(),
        requester: format!("policybind:{writer_id}"),
    };
    settings.usage_report = Some(UsageReportSettings {
        namespace: args.namespace.clone(),
        pod: args.pod_name.clone(),
        interval: Duration::from_secs(args.usage_report_interval_secs),
        // `memory`: each process counts alone (no leases); Redis takes the
        // leases' place when given.
        ledger_home: (args.proxy.budget_store != Some(BudgetStoreArg::Memory)).then_some(home),
    });
    args.proxy.apply(&mut settings, None);
    settings
}

pub async fn run(args: SidecarArgs) -> anyhow::Result<ExitCode> {
    let bundle_namespace = args.bundle_namespace.clone().with_context(|| {
        format!(
            "{} is not set: the sidecar reads its bundle from PolicyBind's own namespace, \
             which the webhook names when it injects the sidecar (a pod injected by an \
             older webhook needs a restart)",
            wire::env::BUNDLE_NAMESPACE
        )
    })?;
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client (in-cluster configuration or KUBECONFIG)")?;
    let key = signing_key(&args, &client).await?;
    let role = if args.gateway { "gateway" } else { "sidecar" };
    let writer_id = if args.gateway {
        policybind_crds::wire::writers::gateway(&args.namespace, &args.pod_name)
    } else {
        policybind_crds::wire::writers::sidecar(&args.namespace, &args.pod_name)
    };
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
        role,
        "starting the enforcement point"
    );
    if args.pod_name == "unknown-pod" {
        // Every pod without a name would overwrite the same report.
        tracing::warn!(
            "POLICYBIND_POD_NAME is not set: pods sharing the default name share one usage report"
        );
    }
    let settings = settings(&args, bundle_namespace, &writer_id);
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
