//! Identities as the cluster gives them (DESIGN.md section 11).
//!
//! The harness connects as a cluster admin only to do what `helm install` and
//! the kubelet would do: install what the chart renders, and hand each process
//! the credentials of its ServiceAccount. Every PolicyBind process then runs with
//! a kubeconfig holding a TokenRequest token of its own ServiceAccount (bound to
//! its Pod for sidecars, as a kubelet-mounted token is), so a scenario that needs
//! a right the chart does not grant fails.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::settings::Settings;
use crate::system::FIELD_MANAGER;

/// Every document `helm install` of the chart would create, rendered by real
/// Helm (`e2e/render-chart.py`).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub documents: Vec<Value>,
    /// The rendered NOTES.txt: what `helm install` prints.
    pub notes: String,
}

/// Kinds that make up PolicyBind's identities: who its processes are and what
/// they may do. The harness installs exactly these from the chart.
pub const IDENTITY_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

impl Rendered {
    /// Render the chart for `release` in `namespace` with `values`.
    pub fn render(
        settings: &Settings,
        release: &str,
        namespace: &str,
        values: &Value,
    ) -> Result<Self> {
        let script = settings.repo_root.join("e2e/render-chart.py");
        let output = std::process::Command::new(&settings.python)
            .arg(&script)
            .args(["--release", release, "--namespace", namespace])
            .arg("--values-json")
            .arg(values.to_string())
            .output()
            .with_context(|| format!("run {} {}", settings.python, script.display()))?;
        if !output.status.success() {
            bail!(
                "rendering the chart failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        #[derive(serde::Deserialize)]
        struct Output {
            documents: Vec<Value>,
            notes: String,
        }
        let Output { documents, notes } =
            serde_json::from_slice(&output.stdout).context("parse the rendered chart")?;
        Ok(Rendered { documents, notes })
    }

    /// The documents of `kinds`, in rendering order.
    pub fn of_kinds<'a>(&'a self, kinds: &'a [&'a str]) -> impl Iterator<Item = &'a Value> + 'a {
        self.documents
            .iter()
            .filter(move |d| kinds.contains(&d["kind"].as_str().unwrap_or("")))
    }

    /// The document of `kind` named `name`.
    pub fn find(&self, kind: &str, name: &str) -> Result<&Value> {
        self.documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("the chart renders no {kind} {name}"))
    }
}

/// Server-side apply `documents` as an administrator (what `helm install` does).
/// Cluster-scoped kinds are applied cluster-wide, namespaced ones where their
/// metadata says.
pub async fn apply_documents<'a>(
    client: &Client,
    documents: impl IntoIterator<Item = &'a Value>,
) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for document in documents {
        let api_version = document["apiVersion"].as_str().context("apiVersion")?;
        let kind = document["kind"].as_str().context("kind")?;
        let name = document["metadata"]["name"].as_str().context("name")?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let (resource, caps) = pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .with_context(|| format!("the API server does not serve {api_version} {kind}"))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let namespace = document["metadata"]["namespace"]
                    .as_str()
                    .with_context(|| format!("{kind} {name} has no namespace"))?;
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
        };
        api.patch(name, &params, &Patch::Apply(document))
            .await
            .with_context(|| format!("apply {kind} {name}"))?;
    }
    Ok(())
}

/// A token of `namespace/service_account` from the TokenRequest API, bound to
/// the pod `bound_pod` (name, uid) when given, as the kubelet mounts one.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    service_account: &str,
    bound_pod: Option<(&str, &str)>,
    lifetime: Duration,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let mut spec = json!({
        "audiences": [],
        "expirationSeconds": lifetime.as_secs(),
    });
    if let Some((name, uid)) = bound_pod {
        spec["boundObjectRef"] =
            json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid});
    }
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": spec,
    }))?;
    let issued: TokenRequest = api
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .with_context(|| {
            format!("TokenRequest for ServiceAccount {namespace}/{service_account}")
        })?;
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    if token.is_empty() {
        bail!("TokenRequest for {namespace}/{service_account} returned no token");
    }
    Ok(token)
}

/// Write a kubeconfig for the cluster the harness talks to (its current
/// context's cluster entry) with `token` as the only credential.
pub fn kubeconfig_with_token(token: &str, path: &Path) -> Result<PathBuf> {
    let admin = Kubeconfig::read().context("read the harness's kubeconfig")?;
    let context_name = admin
        .current_context
        .clone()
        .context("the harness's kubeconfig has no current-context")?;
    let context = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .context("current context not found")?;
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .context("cluster of the current context not found")?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [serde_json::to_value(cluster)?],
        "users": [{"name": "service-account", "user": {"token": token}}],
        "contexts": [{"name": "service-account", "context": {"cluster": context.cluster, "user": "service-account"}}],
        "current-context": "service-account",
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// A client that acts as `namespace/service_account` (bound to `bound_pod`), for
/// scenarios that try what a workload could do with its own token.
pub async fn client_as_service_account(
    admin: &Client,
    namespace: &str,
    service_account: &str,
    bound_pod: Option<(&str, &str)>,
    dir: &Path,
) -> Result<Client> {
    let token = service_account_token(
        admin,
        namespace,
        service_account,
        bound_pod,
        Duration::from_secs(3600),
    )
    .await?;
    let file = dir.join(format!(
        "kubeconfig-{namespace}-{service_account}-{}",
        bound_pod.map(|(name, _)| name).unwrap_or("unbound")
    ));
    kubeconfig_with_token(&token, &file)?;
    let kubeconfig = Kubeconfig::read_from(&file)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// A client that acts as the user `user` in `groups` (impersonation by the
/// harness's admin credentials), for scenarios about who may do what.
pub async fn client_as_user(user: &str, groups: &[&str]) -> Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Ok(Client::try_from(config)?)
}
