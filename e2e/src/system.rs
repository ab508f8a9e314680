//! PolicyBind's control plane for the suite: started here (out-of-cluster) or
//! checked (in-cluster). One per test process, shared by its scenarios.
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::identity::{IDENTITY_KINDS, Rendered, apply_documents};
use crate::kubelet::{self, Launch, PodRef};
use crate::process::Process;
use crate::settings::{Mode, Settings};

/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "policybind-e2e";
/// Label on every object the harness itself creates outside scenario namespaces.
pub const E2E_LABEL: &str = "policybind.io/e2e";

/// The chart values the harness installs with out of the cluster: the webhook
/// generates its own CA (self-signed mode, as with one replica in-cluster), and
/// reports come every 5 s, so the reports scenario need not wait 30.
pub fn chart_values() -> Value {
    json!({"webhook": {"replicas": 1, "certificate": {"mode": "self-signed"}},
           "reports": {"intervalSeconds": 5}})
}

/// The running control plane.
#[derive(Debug)]
pub struct System {
    /// host:port of the webhook's HTTPS listener (out-of-cluster only).
    pub webhook_addr: Option<String>,
    /// host:port of the controller's health listener (out-of-cluster only).
    pub controller_health: Option<String>,
    /// Name prefix of the control plane's objects (`<fullname>` of the chart).
    pub fullname: String,
    /// The audit signing key (PEM file) sidecars seal with and `audit verify`
    /// trusts: read from the chart's Secret.
    pub audit_key: PathBuf,
    /// What the chart renders (out-of-cluster; empty in-cluster).
    pub rendered: Rendered,
    /// Files of this test process (keys, kubeconfigs, mounted volumes).
    pub work_dir: PathBuf,
    processes: Mutex<Vec<Process>>,
    /// How each local process was started, in the order of `processes`, so it
    /// can be started again ([`System::restart_exited`]).
    launches: Vec<LocalStart>,
}

/// What a local control-plane process was started with.
#[derive(Debug, Clone)]
struct LocalStart {
    name: String,
    binary: PathBuf,
    launch: Launch,
    log: PathBuf,
}

static SYSTEM: OnceLock<Result<System, String>> = OnceLock::new();

impl System {
    /// Start or check the control plane once per test process. Panics with the
    /// reason when it cannot be had: no scenario can run without it.
    pub fn ensure() -> &'static System {
        let outcome = SYSTEM.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime
                .block_on(System::start(Settings::get()))
                .map_err(|error| format!("{error:#}"))
        });
        match outcome {
            Ok(system) => system,
            Err(error) => panic!("PolicyBind control plane unavailable: {error}"),
        }
    }

    async fn start(settings: &Settings) -> Result<System> {
        let client = Client::try_default()
            .await
            .context("no cluster: set KUBECONFIG (see e2e/README.md)")?;
        match settings.mode {
            Mode::InCluster => System::check_installed(&client, settings).await,
            Mode::OutOfCluster => System::start_local(&client, settings).await,
        }
    }

    async fn check_installed(client: &Client, settings: &Settings) -> Result<System> {
        let fullname = settings.fullname();
        let deployments: Api<Deployment> =
            Api::namespaced(client.clone(), &settings.system_namespace);
        for name in [
            format!("{fullname}-operator"),
            format!("{fullname}-webhook"),
        ] {
            let deployment = deployments.get(&name).await.with_context(|| {
                format!(
                    "in-cluster mode: Deployment {}/{name} not found; install the chart first \
                     (e2e/run.sh does)",
                    settings.system_namespace
                )
            })?;
            let available = deployment
                .status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if available < 1 {
                bail!("Deployment {name} has no available replica");
            }
        }
        let key_secret = std::env::var("POLICYBIND_E2E_AUDIT_KEY_SECRET")
            .unwrap_or_else(|_| format!("{fullname}-operator-key"));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.system_namespace);
        let secret = secrets.get(&key_secret).await.with_context(|| {
            format!(
                "audit signing key Secret {}/{key_secret}",
                settings.system_namespace
            )
        })?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get("signing-key"))
            .with_context(|| format!("Secret {key_secret} has no data key signing-key"))?;
        let audit_key = work_dir()?.join("audit-signing-key.pem");
        std::fs::write(&audit_key, &pem.0)?;
        Ok(System {
            webhook_addr: None,
            controller_health: None,
            fullname,
            audit_key,
            rendered: Rendered {
                documents: vec![],
                notes: String::new(),
            },
            work_dir: work_dir()?,
            processes: Mutex::new(Vec::new()),
            launches: Vec::new(),
        })
    }

    async fn start_local(client: &Client, settings: &Settings) -> Result<System> {
        if !settings.binary.is_file() {
            bail!(
                "{} not found: build it (`cargo build -p policybind`) or set POLICYBIND_BIN",
                settings.binary.display()
            );
        }
        install_crds(client, settings).await?;
        ensure_namespace(client, &settings.system_namespace).await?;

        // What `helm install` would create, rendered by real Helm.
        let fullname = settings.fullname();
        let namespace = settings.system_namespace.as_str();
        let rendered = Rendered::render(settings, &settings.release, namespace, &chart_values())?;
        // Identities (ServiceAccounts, RBAC, admission policies) and the key
        // Secrets the chart generates, exactly as rendered.
        apply_documents(client, rendered.of_kinds(IDENTITY_KINDS)).await?;
        apply_documents(client, rendered.of_kinds(&["Secret"])).await?;

        let work = work_dir()?;
        let controller_launch = local_launch(
            client,
            &rendered,
            &format!("{fullname}-operator"),
            "controller",
            namespace,
            &work.join("operator"),
        )
        .await?;
        let mut webhook_launch = local_launch(
            client,
            &rendered,
            &format!("{fullname}-webhook"),
            "webhook",
            namespace,
            &work.join("webhook"),
        )
        .await?;
        // The API server must reach the webhook: on loopback for a local control
        // plane, on the docker network's gateway for kind (POLICYBIND_E2E_WEBHOOK_HOST).
        let webhook_listen = webhook_launch
            .listen(&format!("0.0.0.0:{}", webhook_port(&rendered, &fullname)?))?
            .to_string();
        let port = webhook_listen
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        if settings.webhook_host != "127.0.0.1" {
            let wide = format!("0.0.0.0:{port}");
            for arg in &mut webhook_launch.args {
                if arg.starts_with("--listen=") {
                    *arg = format!("--listen={wide}");
                }
            }
        }
        let webhook_url = format!("https://{}:{port}", settings.webhook_host);
        webhook_launch
            .args
            .push(format!("--webhook-url={webhook_url}"));
        // The chart's webhook configurations, pointed at the local webhook by URL
        // (in a cluster they name the Service); everything else as rendered.
        let configurations: Vec<Value> = rendered
            .of_kinds(&[
                "ValidatingWebhookConfiguration",
                "MutatingWebhookConfiguration",
            ])
            .map(|c| by_url(c, &webhook_url))
            .collect();
        apply_documents(client, &configurations).await?;

        let logs = &settings.log_dir;
        // One log per test process: run.sh runs the suite in several, and a
        // process still shutting down must not write into the next one's log.
        let binary_name = format!("{}-{}", test_binary_name(), std::process::id());
        let launches = vec![
            LocalStart {
                name: "policybind controller".into(),
                binary: settings.binary.clone(),
                launch: controller_launch.clone(),
                log: logs.join(format!("{binary_name}-controller.log")),
            },
            LocalStart {
                name: "policybind webhook".into(),
                binary: settings.binary.clone(),
                launch: webhook_launch.clone(),
                log: logs.join(format!("{binary_name}-webhook.log")),
            },
        ];
        let processes = launches
            .iter()
            .map(|start| start.run(&start.log))
            .collect::<Result<Vec<_>>>()?;
        let controller_health = controller_launch.listen("0.0.0.0:8080")?.to_string();
        let webhook_health = webhook_launch.listen("0.0.0.0:8080")?.to_string();
        let audit_key = chart_audit_key(&rendered, &fullname, &work)?;
        let system = System {
            webhook_addr: Some(format!("{}:{port}", settings.webhook_host)),
            controller_health: Some(controller_health.clone()),
            fullname,
            audit_key,
            rendered,
            work_dir: work,
            processes: Mutex::new(processes),
            launches,
        };
        for addr in [&controller_health, &webhook_health] {
            if let Err(error) = crate::http::wait_ok(addr, "/readyz", Duration::from_secs(60)).await
            {
                system.check_processes()?;
                return Err(error);
            }
        }
        Ok(system)
    }

    /// Fail if a local process died, with its log tail.
    pub fn check_processes(&self) -> Result<()> {
        let mut processes = self.processes.lock().expect("not poisoned");
        for process in processes.iter_mut() {
            process.check_running()?;
        }
        Ok(())
    }

    /// Start again every local process that exited, with the same arguments,
    /// environment and credentials, as a kubelet restarts a container
    /// (`restartPolicy: Always`); its log continues in `<log>.restarts.log`.
    /// Returns the names of those restarted. The operator exits on purpose
    /// when it could not renew its leader Lease in time (an API server outage
    /// longer than the Lease), counting on exactly this.
    pub fn restart_exited(&self) -> Result<Vec<String>> {
        let mut processes = self.processes.lock().expect("not poisoned");
        let mut restarted = Vec::new();
        for (process, start) in processes.iter_mut().zip(&self.launches) {
            if process.check_running().is_ok() {
                continue;
            }
            let log = start.log.with_extension("restarts.log");
            *process = start.run(&log)?;
            restarted.push(start.name.clone());
        }
        Ok(restarted)
    }

    /// Out-of-cluster "uninstall": stop the local processes and remove the
    /// webhook registrations, as `helm uninstall` removes the chart's objects.
    pub async fn uninstall_local(&self, client: &Client, settings: &Settings) -> Result<()> {
        let name = settings.webhook_configuration_name();
        let dp = DeleteParams::default();
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let _ = validating.delete(&name, &dp).await;
        let _ = mutating.delete(&name, &dp).await;
        let stopped: Vec<Process> = self
            .processes
            .lock()
            .expect("not poisoned")
            .drain(..)
            .collect();
        drop(stopped);
        Ok(())
    }
}

/// The container `container` of the chart's Deployment `deployment`, prepared
/// to run locally under the Deployment's ServiceAccount.
async fn local_launch(
    client: &Client,
    rendered: &Rendered,
    deployment: &str,
    container: &str,
    namespace: &str,
    dir: &Path,
) -> Result<Launch> {
    let document = rendered.find("Deployment", deployment)?;
    let spec = &document["spec"]["template"]["spec"];
    let pod = PodRef {
        namespace,
        name: deployment,
        uid: None,
        spec,
    };
    let mut launch = kubelet::prepare(client, &pod, container, dir).await?;
    launch.set_env("POLICYBIND_LOG_FORMAT", "text");
    launch.set_env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    Ok(launch)
}

impl LocalStart {
    fn run(&self, log: &Path) -> Result<Process> {
        Process::start(
            &self.name,
            &self.binary,
            &self.launch.args,
            &self.launch.env,
            log.to_path_buf(),
        )
    }
}

/// The webhook's HTTPS container port in the chart.
fn webhook_port(rendered: &Rendered, fullname: &str) -> Result<u16> {
    let deployment = rendered.find("Deployment", &format!("{fullname}-webhook"))?;
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "https")
        .and_then(|p| p["containerPort"].as_u64())
        .map(|p| p as u16)
        .context("the webhook Deployment has no port named https")
}

/// A webhook configuration with every webhook's Service reference replaced by
/// `url` plus the Service's path.
fn by_url(configuration: &Value, url: &str) -> Value {
    let mut configuration = configuration.clone();
    if let Some(webhooks) = configuration["webhooks"].as_array_mut() {
        for webhook in webhooks {
            let path = webhook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap_or("/")
                .to_string();
            webhook["clientConfig"] = json!({"url": format!("{url}{path}")});
        }
    }
    configuration
}

/// The operator's audit signing key the chart generated (PEM), written to a
/// file for `policybind audit verify`.
fn chart_audit_key(rendered: &Rendered, fullname: &str, work: &Path) -> Result<PathBuf> {
    let secret = rendered.find("Secret", &format!("{fullname}-operator-key"))?;
    let encoded = secret["data"]["signing-key"]
        .as_str()
        .context("the audit key Secret has no data key signing-key")?;
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    let path = work.join("audit-signing-key.pem");
    std::fs::write(&path, pem)?;
    Ok(path)
}

/// A directory for this test process's files (keys), under the system temp dir.
fn work_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("policybind-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Name of the running test binary (`admission-0123abcd` -> `admission`).
fn test_binary_name() -> String {
    std::env::args()
        .next()
        .and_then(|path| {
            std::path::Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .map(|name| {
            name.rsplit_once('-')
                .map_or(name.clone(), |(head, _)| head.to_string())
        })
        .unwrap_or_else(|| "e2e".into())
}

/// Apply the CRDs (from charts/policybind/crds/, else from the API types), and
/// the foreign CRDs the suite tests against (`e2e/fixtures/*-crd.yaml`: the
/// OpenReports Report), and wait until the API server serves them. The foreign
/// ones go first, before the operator starts, or it would find them absent and
/// not ask again for minutes.
pub async fn install_crds(client: &Client, settings: &Settings) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crds = read_crds(&settings.repo_root.join("charts/policybind/crds"), "")?;
    if crds.is_empty() {
        crds = policybind_crds::crds();
    }
    crds.extend(read_crds(&settings.repo_root.join("e2e/fixtures"), "-crd")?);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    apply_crds(&api, &params, &crds).await
}

/// The CRDs in the YAML files of `dir` whose stem ends with `suffix`.
fn read_crds(dir: &std::path::Path, suffix: &str) -> Result<Vec<CustomResourceDefinition>> {
    let mut crds = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) || !stem.ends_with(suffix)
            {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = <Value as serde::Deserialize>::deserialize(document)
                    .with_context(|| format!("parse {}", path.display()))?;
                if value.is_null() {
                    continue;
                }
                crds.push(serde_json::from_value::<CustomResourceDefinition>(value)?);
            }
        }
    }
    Ok(crds)
}

/// Apply `crds` and wait until each is established.
async fn apply_crds(
    api: &Api<CustomResourceDefinition>,
    params: &PatchParams,
    crds: &[CustomResourceDefinition],
) -> Result<()> {
    for crd in crds {
        let name = crd.name_any();
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        api.patch(&name, params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("apply CRD {name}"))?;
    }
    for crd in crds {
        let name = crd.name_any();
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established after 30s"))??;
    }
    Ok(())
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&namespace),
    )
    .await
    .with_context(|| format!("create namespace {name}"))?;
    Ok(())
}
