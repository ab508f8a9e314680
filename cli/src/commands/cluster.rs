//! How a command reaches the cluster: `--kubeconfig` and `--context`, then
//! `$KUBECONFIG` / `~/.kube/config`, then the in-cluster service account.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `--kubeconfig` and `--context`, for commands that only read the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, else the in-cluster
    /// service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context. Default: the current one.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client(self.kubeconfig.as_deref(), self.context.as_deref()).await
    }
}

/// A client for `kubeconfig` (or the default one, or the in-cluster service
/// account) at `context` (or the current one).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(_) => kube::Config::incluster().context("no kubeconfig and not in a cluster")?,
        },
    };
    Ok(kube::Client::try_from(config)?)
}
