//! One scenario: a temporary namespace, a client, and the helpers every
//! scenario needs (apply, wait, sidecar, CLI).
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, pinned_kind};
use kube::{Api, Client};
use policybind_crds::wire::{env, names};
use serde_json::{Value, json};

use crate::http::{self, Response};
use crate::kubelet::{self, PodRef};
use crate::process::Process;
use crate::settings::Settings;
use crate::system::{E2E_LABEL, FIELD_MANAGER, System};
use crate::upstream::Upstream;

/// Run `body` as a scenario named `name` in its own temporary namespace.
///
/// Builds a runtime, makes sure the control plane is there, creates the
/// namespace, runs the body, deletes the namespace (unless
/// `POLICYBIND_E2E_KEEP=1`) and panics with the error chain if the body failed.
pub fn scenario<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Scenario) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let settings = Settings::get();
    let system = System::ensure();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let client = Client::try_default()
            .await
            .context("connect to the cluster")?;
        let namespace = create_namespace(&client, name).await?;
        let scenario = Scenario {
            client: client.clone(),
            namespace: namespace.clone(),
            settings,
            system,
        };
        let result = body(scenario).await;
        let result = match (result, system.check_processes()) {
            (Err(error), Err(died)) => Err(error.context(format!("{died:#}"))),
            (Ok(()), Err(died)) => Err(died),
            (result, Ok(())) => result,
        };
        if settings.keep_namespaces {
            eprintln!("keeping namespace {namespace} (POLICYBIND_E2E_KEEP=1)");
        } else {
            let api: Api<Namespace> = Api::all(client);
            let _ = api.delete(&namespace, &DeleteParams::background()).await;
        }
        result.with_context(|| format!("in namespace {namespace}"))
    });
    if let Err(error) = outcome {
        panic!("scenario {name} failed: {error:#}");
    }
}

async fn create_namespace(client: &Client, scenario: &str) -> Result<String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let suffix = format!(
        "{:06x}",
        (nanos ^ u128::from(std::process::id())) & 0xff_ffff
    );
    let slug: String = scenario
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug.trim_matches('-');
    let slug = &slug[..slug.len().min(40)];
    let name = format!("pb-e2e-{}-{suffix}", slug.trim_end_matches('-'));
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}
    }))?;
    api.create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    // Pods need the namespace's `default` ServiceAccount. A bare control plane
    // without kube-controller-manager never creates it, so the harness does.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error).context("create ServiceAccount default"),
    }
    Ok(name)
}

/// A scenario's namespace and client.
#[derive(Clone)]
pub struct Scenario {
    /// A client for this scenario's runtime.
    pub client: Client,
    /// The temporary namespace.
    pub namespace: String,
    /// Suite settings.
    pub settings: &'static Settings,
    /// The control plane.
    pub system: &'static System,
}

impl Scenario {
    /// A typed API in the scenario namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Set a label on the scenario namespace (`policybind.io/enforce=true`...).
    pub async fn label_namespace(&self, key: &str, value: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"labels": {key: value}}});
        api.patch(
            &self.namespace,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }

    /// Bind `cluster_role` to the user `user` in the scenario namespace.
    pub async fn grant(&self, user: &str, cluster_role: &str) -> Result<()> {
        let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{user}-{cluster_role}").replace(['@', '.'], "-")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }))?;
        let api: Api<k8s_openapi::api::rbac::v1::RoleBinding> = self.api();
        match api.create(&PostParams::default(), &binding).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error).with_context(|| format!("bind {cluster_role} to {user}")),
        }
    }

    /// This scenario as seen by the user `user` (impersonated, in the group
    /// `system:authenticated`): what they apply is admitted or refused on
    /// their rights.
    pub async fn as_user(&self, user: &str) -> Result<Scenario> {
        Ok(Scenario {
            client: crate::identity::client_as_user(user, &["system:authenticated"]).await?,
            ..self.clone()
        })
    }

    /// Opt the namespace into enforcement and injection.
    pub async fn enforce(&self) -> Result<()> {
        self.label_namespace("policybind.io/enforce", "true").await
    }

    /// Where a manifest goes: its API resource and whether it is namespaced.
    pub async fn resource_of(&self, manifest: &Value) -> Result<(ApiResource, ApiCapabilities)> {
        let api_version = manifest["apiVersion"]
            .as_str()
            .context("manifest without apiVersion")?;
        let kind = manifest["kind"].as_str().context("manifest without kind")?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        pinned_kind(&self.client, &gvk)
            .await
            .with_context(|| format!("the API server does not serve {api_version} {kind}"))
    }

    fn dynamic_api(&self, resource: &ApiResource, caps: &ApiCapabilities) -> Api<DynamicObject> {
        match caps.scope {
            Scope::Namespaced => {
                Api::namespaced_with(self.client.clone(), &self.namespace, resource)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Server-side apply `manifest` (namespaced objects land in the scenario
    /// namespace whatever the manifest says); the API's error is kept intact so
    /// a scenario can look at an admission denial.
    pub async fn try_apply(&self, manifest: &Value) -> Result<DynamicObject, ApplyError> {
        self.apply_with(manifest, false).await
    }

    /// [`Scenario::try_apply`] with `dryRun=All`: admission runs, nothing is stored.
    pub async fn try_apply_dry_run(&self, manifest: &Value) -> Result<DynamicObject, ApplyError> {
        self.apply_with(manifest, true).await
    }

    async fn apply_with(
        &self,
        manifest: &Value,
        dry_run: bool,
    ) -> Result<DynamicObject, ApplyError> {
        let (resource, caps) = self
            .resource_of(manifest)
            .await
            .map_err(ApplyError::Other)?;
        let mut manifest = manifest.clone();
        if caps.scope == Scope::Namespaced {
            manifest["metadata"]["namespace"] = json!(self.namespace);
        }
        let name = manifest["metadata"]["name"]
            .as_str()
            .ok_or_else(|| ApplyError::Other(anyhow!("manifest without metadata.name")))?
            .to_string();
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = dry_run;
        self.dynamic_api(&resource, &caps)
            .patch(&name, &params, &Patch::Apply(&manifest))
            .await
            .map_err(|error| match error {
                kube::Error::Api(status) => ApplyError::Refused {
                    code: status.code,
                    message: status.message.clone(),
                },
                other => ApplyError::Other(other.into()),
            })
    }

    /// Delete the object `manifest` names (namespaced ones in the scenario namespace).
    pub async fn delete(&self, manifest: &Value) -> Result<()> {
        let (resource, caps) = self.resource_of(manifest).await?;
        let name = manifest["metadata"]["name"]
            .as_str()
            .context("manifest without metadata.name")?;
        self.dynamic_api(&resource, &caps)
            .delete(name, &DeleteParams::default())
            .await?;
        Ok(())
    }

    /// Apply and require success.
    pub async fn apply(&self, manifest: &Value) -> Result<DynamicObject> {
        self.try_apply(manifest).await.map_err(|error| {
            anyhow!(
                "apply {} {}: {error}",
                manifest["kind"].as_str().unwrap_or("?"),
                manifest["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
    }

    /// Read an object of `manifest`'s kind by name as JSON (None if absent).
    pub async fn get_json(
        &self,
        api_version: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        let probe = json!({"apiVersion": api_version, "kind": kind});
        let (resource, caps) = self.resource_of(&probe).await?;
        let object = self.dynamic_api(&resource, &caps).get_opt(name).await?;
        Ok(object.map(|o| serde_json::to_value(o).unwrap_or_default()))
    }

    /// Poll `check` every 100 ms until it yields a value or `timeout` passes.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            match check().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(error) => last_error = Some(format!("{error:#}")),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}{}",
                    last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                );
            }
            self.system.check_processes()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run the sidecar the webhook injected into the stored pod `pod_name`, as
    /// the kubelet would: the injected container's arguments, environment and
    /// mounts, under a token of the pod's ServiceAccount bound to the pod. Only
    /// its upstream (the model container, which does not run here) is replaced
    /// by `upstream`.
    pub async fn start_sidecar(&self, upstream: &Upstream, pod_name: &str) -> Result<Sidecar> {
        self.start_sidecar_logged(upstream, pod_name, "sidecar")
            .await
    }

    /// [`Scenario::start_sidecar`] with its log in `<namespace>-<pod>-<log>.log`:
    /// a container restarted under the same pod name keeps the first log.
    pub async fn start_sidecar_logged(
        &self,
        upstream: &Upstream,
        pod_name: &str,
        log: &str,
    ) -> Result<Sidecar> {
        let pod: Pod = self
            .api::<Pod>()
            .get(pod_name)
            .await
            .with_context(|| format!("read pod {pod_name}"))?;
        let uid = pod.metadata.uid.clone().context("stored pod without uid")?;
        let pod_json = serde_json::to_value(&pod)?;
        let dir = self
            .system
            .work_dir
            .join("pods")
            .join(&self.namespace)
            .join(pod_name);
        let pod_ref = PodRef {
            namespace: &self.namespace,
            name: pod_name,
            uid: Some(&uid),
            spec: &pod_json["spec"],
        };
        // Like a kubelet, wait for what the pod mounts (the namespace's audit key
        // Secret appears once the operator has seen the namespace enforced).
        let mut launch = self
            .wait_for(
                &format!("the volumes of pod {pod_name}'s sidecar"),
                Duration::from_secs(30),
                || async {
                    Ok(Some(
                        kubelet::prepare(&self.client, &pod_ref, names::SIDECAR_CONTAINER, &dir)
                            .await?,
                    ))
                },
            )
            .await?;
        launch.set_env(env::UPSTREAM, upstream.url());
        launch.set_env(env::LOG_FORMAT, "text");
        launch.set_env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let listen = launch
            .env
            .iter()
            .find(|(k, _)| k == env::LISTEN)
            .map(|(_, v)| v.clone())
            .context("the injected sidecar has no POLICYBIND_LISTEN")?;
        let process = Process::start(
            "policybind sidecar",
            &self.settings.binary,
            &launch.args,
            &launch.env,
            self.settings
                .log_dir
                .join(format!("{}-{pod_name}-{log}.log", self.namespace)),
        )?;
        let mut sidecar = Sidecar { listen, process };
        // Listening is enough here; a scenario waits for the decisions it needs.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&sidecar.listen)
                .await
                .is_ok()
            {
                return Ok(sidecar);
            }
            sidecar.process.check_running()?;
            if Instant::now() >= deadline {
                bail!("sidecar not listening on {} after 30s", sidecar.listen);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Create a pod (admitted, and injected, by the webhook) and return it as stored.
    pub async fn create_pod(&self, manifest: &Value) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(manifest.clone())?;
        Ok(self
            .api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await?)
    }

    /// Run the `policybind` CLI (inherits KUBECONFIG).
    pub async fn policybind(&self, args: &[&str]) -> Result<std::process::Output> {
        tokio::process::Command::new(&self.settings.binary)
            .args(args)
            .output()
            .await
            .with_context(|| format!("run policybind {}", args.join(" ")))
    }

    /// `policybind audit verify` over the audit segment ConfigMaps of this
    /// namespace, trusting the namespace's own sidecar key (read as an auditor
    /// with Secret access would).
    pub async fn audit_verify(&self) -> Result<std::process::Output> {
        // The auditor's path: trust the keyring the operator publishes, after it
        // holds this namespace's key (published within about a second of the key's
        // creation).
        let key = self.namespace_audit_key().await?;
        let published: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), &self.settings.system_namespace);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let keyring = published
                .get_opt(names::AUDIT_KEYRING)
                .await?
                .and_then(|cm| cm.data)
                .and_then(|d| d.get(policybind_crds::wire::keys::AUDIT_KEYRING).cloned())
                .unwrap_or_default();
            if keyring.contains(key.key_id()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the published keyring {}/{} does not hold namespace {}'s key {} after 10 s",
                    self.settings.system_namespace,
                    names::AUDIT_KEYRING,
                    self.namespace,
                    key.key_id()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let cluster_keyring = format!("--cluster-keyring={}", self.settings.system_namespace);
        self.policybind(&[
            "audit",
            "verify",
            "--namespace",
            &self.namespace,
            &cluster_keyring,
        ])
        .await
    }

    /// The public half of this namespace's audit key (Secret `policybind-audit-key`).
    async fn namespace_audit_key(&self) -> Result<policybind_engine::audit::AuditVerifyingKey> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = self.api();
        let secret = secrets
            .get(names::AUDIT_KEY_SECRET)
            .await
            .context("the namespace's audit key Secret")?;
        let pem = secret
            .data
            .and_then(|d| d.get(policybind_crds::wire::keys::SIGNING_KEY).cloned())
            .context("the audit key Secret has no signing-key")?;
        Ok(
            policybind_engine::audit::AuditSigningKey::from_key_material(&pem.0)
                .context("the namespace's audit key")?
                .verifying_key(),
        )
    }
}

/// Why an apply failed: refused by the API server (validation or admission),
/// or anything else.
#[derive(Debug)]
pub enum ApplyError {
    /// The API server answered with an error status.
    Refused { code: u16, message: String },
    /// Discovery, transport or serialization.
    Other(anyhow::Error),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Refused { code, message } => write!(f, "refused ({code}): {message}"),
            ApplyError::Other(error) => write!(f, "{error:#}"),
        }
    }
}

impl std::error::Error for ApplyError {}

/// A local `policybind sidecar`; dropping it stops it (SIGTERM: it flushes its
/// audit trail first).
pub struct Sidecar {
    /// host:port it serves the OpenAI-compatible API on.
    pub listen: String,
    process: Process,
}

impl Sidecar {
    /// `POST /v1/chat/completions` for `model`, with `token` as bearer if given.
    pub async fn chat(&self, token: Option<&str>, model: &str) -> Result<Response> {
        self.chat_with(token, &chat_body(model), Duration::from_secs(10))
            .await
    }

    /// `POST /v1/chat/completions` with `body`, waiting up to `timeout` for the
    /// whole answer (a stream ends with the connection).
    pub async fn chat_with(
        &self,
        token: Option<&str>,
        body: &Value,
        timeout: Duration,
    ) -> Result<Response> {
        let body = body.to_string();
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = bearer.as_deref() {
            headers.push(("Authorization", bearer));
        }
        http::request(
            &self.listen,
            "POST",
            "/v1/chat/completions",
            &headers,
            Some(body.as_bytes()),
            timeout,
        )
        .await
    }

    /// SIGKILL the sidecar process, as `kill -9` would (nothing flushed).
    pub fn kill_hard(&self) -> Result<()> {
        self.process.kill_hard()
    }

    /// The end of the sidecar's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }
}

/// The chat request [`Sidecar::chat`] sends for `model`: one short prompt,
/// at most 16 output tokens.
pub fn chat_body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the e2e suite."}],
        "max_tokens": 16
    })
}
