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

use crate::process::{Process, free_port};
use crate::settings::{Mode, Settings};

/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "policybind-e2e";
/// Label on every object the harness itself creates outside scenario namespaces.
pub const E2E_LABEL: &str = "policybind.io/e2e";

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
    /// trusts: generated (out-of-cluster) or read from the chart's Secret.
    pub audit_key: PathBuf,
    processes: Mutex<Vec<Process>>,
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
            .unwrap_or_else(|_| format!("{fullname}-audit-signing-key"));
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
            processes: Mutex::new(Vec::new()),
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

        let fullname = "policybind-e2e".to_string();
        let audit_key = generate_audit_key(&settings.binary, &work_dir()?)?;
        let listen_host = if settings.webhook_host == "127.0.0.1" {
            "127.0.0.1"
        } else {
            "0.0.0.0"
        };
        let webhook_port = free_port()?;
        let webhook_url = format!("https://{}:{webhook_port}", settings.webhook_host);
        let webhook_health = format!("127.0.0.1:{}", free_port()?);
        let controller_health = format!("127.0.0.1:{}", free_port()?);
        let common_env = vec![
            ("POLICYBIND_LOG_FORMAT".to_string(), "text".to_string()),
            (
                "POLICYBIND_AUDIT_KEY".to_string(),
                audit_key.display().to_string(),
            ),
            (
                "RUST_LOG".to_string(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];

        // What the chart passes (charts/policybind/templates), with local
        // addresses; the webhook registers itself by URL with a certificate it
        // generates for that address (`--self-signed --register`).
        let controller = Process::start(
            "policybind controller",
            &settings.binary,
            &[
                "controller".into(),
                format!("--metrics-listen={controller_health}"),
                "--leader-election".into(),
                format!("--lease-namespace={}", settings.system_namespace),
                format!("--lease-name={fullname}-operator"),
                "--identity=e2e-controller".into(),
            ],
            &common_env,
            settings
                .log_dir
                .join(format!("{}-controller.log", test_binary_name())),
        )?;
        let sidecar_image = std::env::var("POLICYBIND_E2E_SIDECAR_IMAGE")
            .unwrap_or_else(|_| "ghcr.io/policybind/policybind:0.1.0".into());
        let webhook = Process::start(
            "policybind webhook",
            &settings.binary,
            &[
                "webhook".into(),
                format!("--listen={listen_host}:{webhook_port}"),
                format!("--health-listen={webhook_health}"),
                format!("--namespace={}", settings.system_namespace),
                "--self-signed".into(),
                "--register".into(),
                format!("--webhook-url={webhook_url}"),
                format!(
                    "--configuration-name={}",
                    settings.webhook_configuration_name()
                ),
                format!("--sidecar-image={sidecar_image}"),
            ],
            &common_env,
            settings
                .log_dir
                .join(format!("{}-webhook.log", test_binary_name())),
        )?;
        let system = System {
            webhook_addr: Some(format!("{}:{webhook_port}", settings.webhook_host)),
            controller_health: Some(controller_health.clone()),
            fullname,
            audit_key,
            processes: Mutex::new(vec![controller, webhook]),
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

/// A directory for this test process's files (keys), under the system temp dir.
fn work_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("policybind-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// `policybind audit keygen` into `dir`; returns the signing key file.
fn generate_audit_key(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let output = std::process::Command::new(binary)
        .args(["audit", "keygen", "--force", "--out"])
        .arg(dir)
        .output()
        .context("run policybind audit keygen")?;
    if !output.status.success() {
        bail!(
            "policybind audit keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(dir.join("audit-signing-key.pem"))
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

/// Apply the CRDs (from charts/policybind/crds/, else from the API types) and
/// wait until the API server serves them.
pub async fn install_crds(client: &Client, settings: &Settings) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crds = Vec::new();
    let dir = settings.repo_root.join("charts/policybind/crds");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
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
    if crds.is_empty() {
        crds = policybind_crds::crds();
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in &crds {
        let name = crd.name_any();
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("apply CRD {name}"))?;
    }
    for crd in &crds {
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
