//! PolicyBind's control plane for the suite: started here (out-of-cluster) or
//! checked (in-cluster). One per test process, shared by its scenarios.
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
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
    processes: Mutex<Vec<Process>>,
    /// Certificates and the injection configuration (out-of-cluster only).
    pub work_dir: Option<PathBuf>,
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
        Ok(System {
            webhook_addr: None,
            controller_health: None,
            fullname,
            processes: Mutex::new(Vec::new()),
            work_dir: None,
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
        let work_dir = tempfile::Builder::new()
            .prefix("policybind-e2e-")
            .tempdir()?
            .keep();
        let tls = WebhookTls::generate(&settings.webhook_host)?;
        let cert_file = work_dir.join("tls.crt");
        let key_file = work_dir.join("tls.key");
        std::fs::write(&cert_file, &tls.cert_pem)?;
        std::fs::write(&key_file, &tls.key_pem)?;
        let injection_file = work_dir.join("injection.yaml");
        std::fs::write(&injection_file, injection_config(settings))?;

        let listen_host = if settings.webhook_host == "127.0.0.1" {
            "127.0.0.1"
        } else {
            "0.0.0.0"
        };
        let webhook_port = free_port()?;
        let webhook_health = format!("127.0.0.1:{}", free_port()?);
        let controller_health = format!("127.0.0.1:{}", free_port()?);
        let common_env = vec![
            (
                "POLICYBIND_NAMESPACE".to_string(),
                settings.system_namespace.clone(),
            ),
            ("POLICYBIND_LOG_FORMAT".to_string(), "text".to_string()),
            (
                "RUST_LOG".to_string(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let audit_key = format!("--audit-key-secret={fullname}-audit-signing-key");

        // The same arguments the chart passes (charts/policybind/templates).
        let mut controller_env = common_env.clone();
        controller_env.push(("POLICYBIND_POD_NAME".into(), "e2e-controller".into()));
        let controller = Process::start(
            "policybind controller",
            &settings.binary,
            &[
                "controller".into(),
                format!("--metrics-addr=127.0.0.1:{}", free_port()?),
                format!("--health-addr={controller_health}"),
                "--leader-election=true".into(),
                format!("--leader-election-lease={fullname}-operator"),
                audit_key.clone(),
                "--audit-key-generate=true".into(),
                "--audit-retention-bytes=52428800".into(),
                "--audit-sink=stdout".into(),
                "--sidecar-network-policy=false".into(),
            ],
            &controller_env,
            settings
                .log_dir
                .join(format!("{}-controller.log", test_binary_name())),
        )?;
        let mut webhook_env = common_env.clone();
        webhook_env.push(("POLICYBIND_POD_NAME".into(), "e2e-webhook".into()));
        let webhook = Process::start(
            "policybind webhook",
            &settings.binary,
            &[
                "webhook".into(),
                format!("--listen={listen_host}:{webhook_port}"),
                format!("--metrics-addr=127.0.0.1:{}", free_port()?),
                format!("--health-addr={webhook_health}"),
                format!("--tls-cert-file={}", cert_file.display()),
                format!("--tls-key-file={}", key_file.display()),
                format!("--injection-config={}", injection_file.display()),
                audit_key,
            ],
            &webhook_env,
            settings
                .log_dir
                .join(format!("{}-webhook.log", test_binary_name())),
        )?;
        let system = System {
            webhook_addr: Some(format!("{}:{webhook_port}", settings.webhook_host)),
            controller_health: Some(controller_health.clone()),
            fullname,
            processes: Mutex::new(vec![controller, webhook]),
            work_dir: Some(work_dir),
        };
        for addr in [&controller_health, &webhook_health] {
            if let Err(error) = crate::http::wait_ok(addr, "/readyz", Duration::from_secs(60)).await
            {
                let mut processes = system.processes.lock().expect("not poisoned");
                for process in processes.iter_mut() {
                    process.check_running()?;
                }
                return Err(error);
            }
        }
        register_webhooks(
            client,
            settings,
            system.webhook_addr.as_deref().unwrap_or_default(),
            &tls.ca_pem,
        )
        .await?;
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

/// The sidecar injection settings the chart renders (injection-configmap.yaml).
fn injection_config(settings: &Settings) -> String {
    let image = std::env::var("POLICYBIND_E2E_SIDECAR_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/policybind/policybind:0.1.0".into());
    let _ = settings;
    format!(
        "image: {image:?}\nimagePullPolicy: IfNotPresent\nlistenPort: 8480\nhealthPort: 8481\n\
         upstream: \"http://127.0.0.1:8000\"\nnativeSidecar: true\nlogFormat: \"text\"\n\
         logLevel: \"info\"\nresources:\n  requests:\n    cpu: 50m\n    memory: 32Mi\n  \
         limits:\n    memory: 64Mi\nsecurityContext:\n  allowPrivilegeEscalation: false\n  \
         readOnlyRootFilesystem: true\n  runAsNonRoot: true\n  capabilities:\n    drop:\n    \
         - ALL\n"
    )
}

/// A CA and a serving certificate for the out-of-cluster webhook.
struct WebhookTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl WebhookTls {
    fn generate(host: &str) -> Result<WebhookTls> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "policybind-e2e-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        if !names.iter().any(|n| n == host) {
            names.push(host.to_string());
        }
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
        Ok(WebhookTls {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Register the local webhook by URL, with the same rules, selectors and
/// failure policies the chart renders (webhook-configurations.yaml).
async fn register_webhooks(
    client: &Client,
    settings: &Settings,
    addr: &str,
    ca_pem: &str,
) -> Result<()> {
    use base64::Engine as _;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let name = settings.webhook_configuration_name();
    let excluded = json!({
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["kube-system", settings.system_namespace]
    });
    let client_config =
        |path: &str| json!({"url": format!("https://{addr}{path}"), "caBundle": ca_bundle});
    let enforced = json!({"key": "policybind.io/enforce", "operator": "In", "values": ["true"]});
    let not_enforced =
        json!({"key": "policybind.io/enforce", "operator": "NotIn", "values": ["true"]});
    let opted_in = json!({"matchExpressions": [{"key": "policybind.io/inject", "operator": "In", "values": ["true"]}]});
    let declares_model = json!([{
        "name": "declares-model",
        "expression": "(request.kind.kind == 'Pod' && has(object.metadata.annotations) && 'policybind.io/model' in object.metadata.annotations) || (request.kind.kind == 'CronJob' && has(object.spec.jobTemplate.spec.template.metadata) && has(object.spec.jobTemplate.spec.template.metadata.annotations) && 'policybind.io/model' in object.spec.jobTemplate.spec.template.metadata.annotations) || (request.kind.kind != 'Pod' && request.kind.kind != 'CronJob' && has(object.spec.template.metadata) && has(object.spec.template.metadata.annotations) && 'policybind.io/model' in object.spec.template.metadata.annotations)"
    }]);
    let not_opted_out = json!([{
        "name": "not-opted-out",
        "expression": "!has(object.metadata.annotations) || !('policybind.io/inject' in object.metadata.annotations) || object.metadata.annotations['policybind.io/inject'] != 'false'"
    }]);
    let workload_rules = json!([
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"], "scope": "Namespaced"},
        {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"], "scope": "Namespaced"},
        {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs", "cronjobs"], "scope": "Namespaced"}
    ]);
    let pod_create = json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]);
    let common = |hook: Value| -> Value {
        let mut hook = hook;
        hook["admissionReviewVersions"] = json!(["v1"]);
        hook["matchPolicy"] = json!("Equivalent");
        hook["sideEffects"] = json!("NoneOnDryRun");
        hook["timeoutSeconds"] = json!(10);
        hook
    };
    let metadata = json!({"name": name, "labels": {E2E_LABEL: "true", "app.kubernetes.io/part-of": "policybind"}});
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            common(json!({
                "name": "resources.policybind.io",
                "clientConfig": client_config("/validate/resources"),
                "rules": [{"apiGroups": ["policybind.io"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"],
                           "resources": ["aipolicies", "clusteraipolicies", "modeldeployments", "accesstokens", "approvalrequests", "incidents"], "scope": "*"}],
                "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]},
                "failurePolicy": "Fail"
            })),
            common(json!({
                "name": "workloads-enforced.policybind.io",
                "clientConfig": client_config("/validate/workloads"),
                "rules": workload_rules,
                "namespaceSelector": {"matchExpressions": [enforced, excluded]},
                "matchConditions": declares_model,
                "failurePolicy": "Fail"
            })),
            common(json!({
                "name": "workloads-optin.policybind.io",
                "clientConfig": client_config("/validate/workloads"),
                "rules": workload_rules,
                "namespaceSelector": {"matchExpressions": [not_enforced, excluded]},
                "objectSelector": opted_in,
                "matchConditions": declares_model,
                "failurePolicy": "Ignore"
            })),
        ]
    });
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            common(json!({
                "name": "inject-enforced.policybind.io",
                "clientConfig": client_config("/mutate/pods"),
                "rules": pod_create,
                "namespaceSelector": {"matchExpressions": [enforced, excluded]},
                "matchConditions": not_opted_out,
                "reinvocationPolicy": "IfNeeded",
                "failurePolicy": "Fail"
            })),
            common(json!({
                "name": "inject-optin.policybind.io",
                "clientConfig": client_config("/mutate/pods"),
                "rules": pod_create,
                "namespaceSelector": {"matchExpressions": [not_enforced, excluded]},
                "objectSelector": opted_in,
                "matchConditions": not_opted_out,
                "reinvocationPolicy": "IfNeeded",
                "failurePolicy": "Ignore"
            })),
        ]
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(validating)?;
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(mutating)?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(&name, &params, &Patch::Apply(&validating))
        .await
        .context("register validating webhook")?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&name, &params, &Patch::Apply(&mutating))
        .await
        .context("register mutating webhook")?;
    Ok(())
}
