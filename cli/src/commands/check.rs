//! `policybind check`: is PolicyBind healthy in this cluster? Like `linkerd
//! check`, one line per check, and for each failure what is wrong and what to
//! run (docs/install.md, "Checking an installation").
//!
//! It reads only: the exact rights are the chart's `<release>-check`
//! ClusterRole and Role (docs/install.md lists them). Secrets are never read:
//! the audit keys are checked through the keyring the operator publishes from
//! them.

mod cluster;
mod report;
mod webhook;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use policybind_crds::wire::{labels, names};
use policybind_crds::{AIPolicy, ClusterAIPolicy};

use cluster::ClusterState;
use report::{CheckLine, counts, render_json, render_text};
use webhook::{Target, WebhookState};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 every check passed (warnings allowed unless \
                        --fail-on-warning); 1 a check failed; 2 the checks could not run \
                        (no cluster, or reading was forbidden: see docs/install.md for the \
                        rights `check` needs)."
)]
pub struct CheckArgs {
    #[command(flatten)]
    cluster: super::cluster::ClusterArgs,
    /// PolicyBind's namespace (the chart's release namespace): the leader Lease,
    /// the bundles and the audit keyring live there.
    #[arg(
        long,
        short = 'n',
        value_name = "NS",
        default_value = "policybind-system"
    )]
    namespace: String,
    /// Name of the operator's leader Lease (the chart's `<release>-operator`).
    #[arg(long, value_name = "NAME", default_value = names::OPERATOR_LEASE)]
    lease_name: String,
    /// `text` (one line per check) or `json` (`{"passed", "failures",
    /// "warnings", "checks": [{"group", "verdict", "check", "problem", "run"}]}`).
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Output,
    /// Plain ASCII marks ([ok], [warn], [FAIL]) instead of ✓, ‼ and ×.
    #[arg(long)]
    ascii: bool,
    /// Exit 1 on a warning too (a certificate expiring within 30 days, a sidecar
    /// not yet reporting its bundle, a policy not yet compiled).
    #[arg(long)]
    fail_on_warning: bool,
    /// Longest wait for one API call or one TLS handshake with the webhook.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let client = args.cluster.client().await?;
    let lines = tokio::time::timeout(args.timeout * 6, gather_and_decide(&client, &args))
        .await
        .context("the checks did not finish in time")??;
    match args.output {
        Output::Text => print!("{}", render_text(&lines, args.ascii)),
        Output::Json => println!("{}", render_json(&lines)),
    }
    Ok(exit_code(&lines, args.fail_on_warning))
}

/// 0 all passed, 1 a failure (or a warning with `--fail-on-warning`).
fn exit_code(lines: &[CheckLine], fail_on_warning: bool) -> ExitCode {
    match counts(lines) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) if !fail_on_warning => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// Reads the cluster and decides every check.
pub async fn gather_and_decide(
    client: &Client,
    args: &CheckArgs,
) -> anyhow::Result<Vec<CheckLine>> {
    let now = chrono::Utc::now();
    let state = read_cluster(client, args, now).await?;
    let webhooks = read_webhooks(client, &args.namespace, now, args.timeout).await?;
    let mut lines = cluster::crd_lines(&state.crds);
    lines.extend(webhook::webhook_lines(&webhooks));
    lines.push(cluster::lease_line(
        state.lease.as_ref(),
        &state.home,
        &args.lease_name,
        now,
    ));
    lines.extend(cluster::bundle_lines(&state));
    lines.extend(cluster::sidecar_lines(&state));
    lines.extend(cluster::audit_lines(&state));
    Ok(lines)
}

fn labelled(selector: &str) -> ListParams {
    ListParams::default().labels(selector)
}

/// Everything but the webhook, read with the rights docs/install.md lists.
async fn read_cluster(
    client: &Client,
    args: &CheckArgs,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<ClusterState> {
    let home = args.namespace.as_str();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crds = Vec::new();
    for expected in policybind_crds::crds() {
        let name = expected.name_any();
        if let Some(crd) = crd_api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading CRD {name}"))?
        {
            crds.push(crd);
        }
    }
    let home_config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), home);
    let lease = Api::<Lease>::namespaced(client.clone(), home)
        .get_opt(&args.lease_name)
        .await
        .context("reading the leader Lease")?;
    let bundles = home_config_maps
        .list(&labelled(&format!("{}=true", labels::BUNDLE)))
        .await
        .context("listing bundle ConfigMaps")?
        .items;
    let keyring = home_config_maps
        .get_opt(names::AUDIT_KEYRING)
        .await
        .context("reading the audit keyring")?;
    let pods = Api::<Pod>::all(client.clone())
        .list_metadata(&labelled(&format!("{}=true", labels::INJECTED)))
        .await
        .context("listing injected pods")?
        .items;
    let enforced = enforced_namespaces(client, home, &bundles).await?;
    let (policies, cluster_policies, usage_reports) = if crds.len() == policybind_crds::crds().len()
    {
        let policies = Api::<AIPolicy>::all(client.clone())
            .list(&ListParams::default())
            .await
            .context("listing AIPolicies")?
            .items;
        let cluster_policies = Api::<ClusterAIPolicy>::all(client.clone())
            .list(&ListParams::default())
            .await
            .context("listing ClusterAIPolicies")?
            .items;
        (
            policies,
            cluster_policies,
            usage_reports(client, &enforced).await?,
        )
    } else {
        (
            Vec::new(),
            Vec::new(),
            usage_reports(client, &enforced).await?,
        )
    };
    Ok(ClusterState {
        now,
        home: home.to_string(),
        crds,
        lease,
        enforced,
        bundles,
        policies,
        cluster_policies,
        pods,
        usage_reports,
        keyring,
    })
}

/// Namespaces the operator keeps a bundle for: labelled `policybind.io/enforce=true`,
/// running a pod so labelled, or served by an existing bundle (a pod that opts in
/// by annotation only is seen through its bundle). Never PolicyBind's own.
async fn enforced_namespaces(
    client: &Client,
    home: &str,
    bundles: &[ConfigMap],
) -> anyhow::Result<BTreeSet<String>> {
    let opted = format!("{}=true", labels::ENFORCE);
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&labelled(&opted))
        .await
        .context("listing enforced namespaces")?;
    let pods = Api::<Pod>::all(client.clone())
        .list_metadata(&labelled(&opted))
        .await
        .context("listing pods that opt in")?;
    let mut enforced: BTreeSet<String> = namespaces
        .items
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| n.name_any())
        .collect();
    enforced.extend(
        pods.items
            .iter()
            .filter_map(|p| p.metadata.namespace.clone()),
    );
    enforced.extend(
        bundles
            .iter()
            .filter_map(|cm| cm.labels().get(labels::BUNDLE_NAMESPACE).cloned()),
    );
    enforced.remove(home);
    Ok(enforced)
}

async fn usage_reports(
    client: &Client,
    enforced: &BTreeSet<String>,
) -> anyhow::Result<Vec<ConfigMap>> {
    let mut reports = Vec::new();
    for namespace in enforced {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let found = api
            .list(&labelled(&format!("{}=true", labels::USAGE)))
            .await
            .with_context(|| format!("listing usage reports in {namespace}"))?;
        reports.extend(found.items);
    }
    Ok(reports)
}

/// The webhook configurations, the endpoints of the Services they name, and a
/// TLS handshake with each distinct target.
async fn read_webhooks(
    client: &Client,
    home: &str,
    now: chrono::DateTime<chrono::Utc>,
    timeout: Duration,
) -> anyhow::Result<WebhookState> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing ValidatingWebhookConfigurations")?
        .items;
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing MutatingWebhookConfigurations")?
        .items;
    let registered = webhook::registered(&validating, &mutating);
    let mut state = WebhookState {
        now,
        home: home.to_string(),
        registered,
        ..Default::default()
    };
    let mut slices = Vec::new();
    let mut listed = BTreeSet::new();
    for hook in &state.registered {
        let Ok(target) = &hook.target else { continue };
        if state.probes.contains_key(target) {
            continue;
        }
        if let Target::Service {
            namespace, name, ..
        } = target
            && listed.insert(format!("{namespace}/{name}"))
        {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
            let selector = format!("kubernetes.io/service-name={name}");
            slices.extend(
                api.list(&labelled(&selector))
                    .await
                    .with_context(|| {
                        format!("listing the endpoints of Service {namespace}/{name}")
                    })?
                    .items,
            );
        }
        let probe = webhook::probe(target, &hook.ca_bundle, timeout).await;
        state.probes.insert(target.clone(), probe);
    }
    state.ready = webhook::ready_endpoints(&slices);
    Ok(state)
}

#[cfg(test)]
#[path = "check/mock_tests.rs"]
mod mock_tests;
