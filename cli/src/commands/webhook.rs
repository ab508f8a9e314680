//! `policybind webhook`: the admission webhook server, and `policybind webhook
//! configs`, which prints the webhook configurations for registration by URL or
//! Service. Flags become `policybind_webhook::Settings`; the library does the rest.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use policybind_crds::DataClassification;
use policybind_webhook::config::{AdmissionConfig, SidecarConfig, SidecarStyle, UndeclaredMode};
use policybind_webhook::configs::{Endpoint, FailurePolicy, Registration};
use policybind_webhook::{AuditSettings, Settings, TlsSource};

#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_long_help = "Enforcement: in namespaces labelled policybind.io/enforce=true, a pod that declares a model \
(policybind.io/model) runs behind the injected sidecar. Without it the pod is denied, unless it opts out \
(policybind.io/inject: \"false\") and its creator holds verb \"exempt\" on modeldeployments.policybind.io named \
after the model (pods of Kubernetes' own controllers inherit the check their template passed). A \
policybind-sidecar container that differs from the injected one is denied, and in every namespace no other \
container may read Secret policybind-audit-key.\n\n\
Injection: only pods that declare a model; policybind.io/inject works as a label and as an annotation, \
true/enabled opt in, false/disabled opt out (any case). Injected pods carry the label \
policybind.io/injected=true. The sidecar reads ConfigMap policybind-bundle.<namespace> in --namespace and \
signs with its namespace's Secret policybind-audit-key, mounted into the sidecar only.\n\n\
Rights checked with SubjectAccessReviews for the requesting user: approve (approvalrequests), exempt and \
share (modeldeployments), create (accesstokens, in each namespace of spec.additionalNamespaces).\n\n\
Every identifier of a review is capped in length and may hold no control characters (REQUEST_INVALID). \
Dry runs are not recorded. See docs/webhook.md."
)]
pub struct WebhookArgs {
    #[command(subcommand)]
    command: Option<WebhookCommand>,
    // Boxed: the server has many flags, and `Command` stays small.
    #[command(flatten)]
    serve: Box<ServeArgs>,
}

#[derive(clap::Subcommand, Debug)]
enum WebhookCommand {
    /// Print the ValidatingWebhookConfiguration and MutatingWebhookConfiguration
    /// as YAML (for `kubectl apply -f -`), pointing at --url or the Service.
    Configs(ConfigsArgs),
}

/// Where the API server reaches the webhook, and how it fails.
#[derive(clap::Args, Debug, Clone)]
struct RegistrationArgs {
    /// Register by URL (out-of-cluster runs, e2e): e.g. https://172.18.0.1:8443.
    /// Without it, the configurations point at the Service.
    #[arg(
        long,
        visible_alias = "url",
        value_name = "URL",
        env = "POLICYBIND_WEBHOOK_URL"
    )]
    webhook_url: Option<String>,
    /// Name of both webhook configuration objects.
    #[arg(long, default_value = policybind_webhook::configs::DEFAULT_NAME)]
    configuration_name: String,
    /// PolicyBind's own namespace: never gated nor injected; holds the Service and Secret.
    #[arg(
        long,
        env = "POLICYBIND_NAMESPACE",
        default_value = "policybind-system"
    )]
    namespace: String,
    /// Name of the webhook's Service (in --namespace).
    #[arg(long, default_value = "policybind-webhook")]
    service_name: String,
    /// Port of the webhook's Service.
    #[arg(long, default_value_t = 443)]
    service_port: i32,
    /// failurePolicy for namespaces labelled policybind.io/enforce=true: Fail or Ignore.
    #[arg(long, default_value = "Fail", value_parser = parse_failure)]
    enforced_failure_policy: FailurePolicy,
    /// failurePolicy for all other namespaces (audit only): Fail or Ignore.
    #[arg(long, default_value = "Ignore", value_parser = parse_failure)]
    audit_failure_policy: FailurePolicy,
    /// failurePolicy for PolicyBind's own resources (policies, tokens, approvals).
    #[arg(long, default_value = "Fail", value_parser = parse_failure)]
    resources_failure_policy: FailurePolicy,
    /// timeoutSeconds of every webhook (1-30).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=30))]
    timeout_seconds: i32,
    /// cert-manager Certificate (`namespace/name`) whose CA the ca-injector writes into the
    /// caBundle; adds the `cert-manager.io/inject-ca-from` annotation.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    cert_manager_certificate: Option<String>,
}

fn parse_failure(value: &str) -> Result<FailurePolicy, String> {
    FailurePolicy::parse(value).ok_or_else(|| format!("{value:?} is not Fail or Ignore"))
}

impl RegistrationArgs {
    fn registration(&self) -> Registration {
        let endpoint = match &self.webhook_url {
            Some(url) => Endpoint::Url(url.clone()),
            None => Endpoint::Service {
                namespace: self.namespace.clone(),
                name: self.service_name.clone(),
                port: self.service_port,
            },
        };
        let mut registration = Registration::new(endpoint, self.namespace.clone());
        registration.name = self.configuration_name.clone();
        registration.enforced_failure = self.enforced_failure_policy;
        registration.audit_failure = self.audit_failure_policy;
        registration.resources_failure = self.resources_failure_policy;
        registration.timeout_seconds = self.timeout_seconds;
        registration.cert_manager_certificate = self.cert_manager_certificate.clone();
        registration
    }
}

#[derive(clap::Args, Debug)]
struct ConfigsArgs {
    #[command(flatten)]
    registration: RegistrationArgs,
    /// PEM file of the CA that signed the serving certificate, written into caBundle.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// HTTPS address for admission reviews.
    #[arg(
        long,
        env = "POLICYBIND_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,
    /// Plain HTTP address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        visible_alias = "health-addr",
        env = "POLICYBIND_HEALTH_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    health_listen: SocketAddr,
    /// Extra plain HTTP address for /metrics alone (it is served on --health-listen too).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Serving certificate chain (PEM); reloaded when the file changes.
    #[arg(long, visible_alias = "tls-cert-file", value_name = "FILE", requires = "tls_key", conflicts_with_all = ["tls_secret", "self_signed"])]
    tls_cert: Option<PathBuf>,
    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        visible_alias = "tls-key-file",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// kubernetes.io/tls Secret with the serving certificate (`name` in --namespace, or
    /// `namespace/name`); watched and reloaded (cert-manager writes it).
    #[arg(long, value_name = "SECRET", conflicts_with = "self_signed")]
    tls_secret: Option<String>,
    /// Generate a CA and serving certificate at start-up and patch the CA into the caBundle
    /// of the webhook configurations (or into the ones --register creates).
    #[arg(long)]
    self_signed: bool,
    /// Extra DNS names for the generated certificate (Service names are always included).
    #[arg(long, value_name = "NAME")]
    self_signed_dns: Vec<String>,
    /// Extra IP addresses for the generated certificate.
    #[arg(long, value_name = "IP")]
    self_signed_ip: Vec<IpAddr>,
    /// Write both webhook configurations at start-up, pointing at --webhook-url or the Service:
    /// each is replaced when it exists (needs get and update on it, which the chart grants in
    /// self-signed mode) or created when it does not (needs create).
    #[arg(long)]
    register: bool,
    #[command(flatten)]
    registration: RegistrationArgs,
    /// Workloads that look like model servers but declare no policybind.io/model:
    /// ignore, warn (admit with a warning) or deny.
    #[arg(long, default_value = "warn", value_parser = parse_undeclared)]
    undeclared_model_servers: UndeclaredMode,
    /// Extra image globs recognised as model servers (repeatable), e.g. `registry.example.com/llm/*`.
    #[arg(long, value_name = "GLOB")]
    model_server_image: Vec<String>,
    /// Highest data classification allowed in a namespace without the
    /// policybind.io/max-data-classification label.
    #[arg(long, default_value = "Internal", value_parser = parse_classification)]
    default_namespace_classification: DataClassification,
    /// More namespaces never gated nor injected (kube-system, kube-public and --namespace always are).
    #[arg(long, value_name = "NAMESPACE")]
    exclude_namespace: Vec<String>,
    /// Image of the injected sidecar.
    #[arg(
        long,
        env = "POLICYBIND_SIDECAR_IMAGE",
        default_value = "ghcr.io/policybind/policybind:latest"
    )]
    sidecar_image: String,
    /// imagePullPolicy of the sidecar (Always, IfNotPresent, Never); unset leaves the default.
    #[arg(long)]
    sidecar_image_pull_policy: Option<String>,
    /// native (restartable init container, Kubernetes 1.29+), regular, or auto (by API server version).
    #[arg(long, default_value = "auto", value_parser = parse_style)]
    sidecar_style: SidecarStyle,
    /// Name of the model container's port the sidecar takes over.
    #[arg(long, default_value = "http")]
    sidecar_port_name: String,
    /// Fixed port the model moves to (default: original port + --sidecar-port-offset).
    #[arg(long)]
    sidecar_model_port: Option<i32>,
    /// Added to the original port to get the model's new port.
    #[arg(long, default_value_t = 10000)]
    sidecar_port_offset: i32,
    /// Port of the sidecar's /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = 9090)]
    sidecar_health_port: i32,
    /// CPU request of the sidecar.
    #[arg(long, default_value = "50m")]
    sidecar_cpu_request: String,
    /// Memory request of the sidecar.
    #[arg(long, default_value = "32Mi")]
    sidecar_memory_request: String,
    /// CPU limit of the sidecar (unset: none, to avoid throttling added latency).
    #[arg(long)]
    sidecar_cpu_limit: Option<String>,
    /// Memory limit of the sidecar.
    #[arg(long, default_value = "128Mi")]
    sidecar_memory_limit: String,
    /// Non-root user id the sidecar runs as.
    #[arg(long, default_value_t = 65532)]
    sidecar_run_as_user: i64,
    /// Extra environment for the sidecar, KEY=VALUE (repeatable). The wiring the webhook
    /// owns (POLICYBIND_BUNDLE_*, POLICYBIND_AUDIT_KEY*, the listeners, the upstream) cannot be
    /// overridden: sidecars always read ConfigMap policybind-bundle.<namespace> in --namespace
    /// and sign with their namespace's Secret policybind-audit-key, mounted into the sidecar only.
    #[arg(long, value_name = "KEY=VALUE")]
    sidecar_env: Vec<String>,
    /// Largest AdmissionReview body accepted, in bytes; larger gets 413.
    #[arg(long, default_value_t = policybind_webhook::admission::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds between checks of --tls-cert/--tls-key for a rotated certificate.
    #[arg(long, default_value_t = 10)]
    reload_interval_seconds: u64,
    /// YAML file with the sidecar shape (image, nativeSidecar, resources, healthPort, ...),
    /// overlaid on the --sidecar-* flags; see docs/webhook.md.
    #[arg(long, value_name = "FILE")]
    injection_config: Option<PathBuf>,
    /// Audit signing key Secret (`name` in --namespace or `namespace/name`, key `signing-key`);
    /// admission records then go to the audit trail. Without a key they are only logged.
    #[arg(long, value_name = "SECRET", env = "POLICYBIND_AUDIT_KEY_SECRET")]
    audit_key_secret: Option<String>,
    /// Audit signing key file, instead of a Secret.
    #[arg(
        long,
        value_name = "FILE",
        env = "POLICYBIND_AUDIT_KEY",
        conflicts_with = "audit_key_secret"
    )]
    audit_key_file: Option<PathBuf>,
    /// In namespaces labelled policybind.io/enforce=true, deny an admission whose audit record
    /// cannot be written (the trail's queue is full or closed) rather than admit it unrecorded.
    /// Elsewhere the admission proceeds; every failure counts in
    /// policybind_webhook_audit_records_total{result="failed"}.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    require_audit_record: bool,
    /// Write audit segments to this directory instead of ConfigMaps in --namespace.
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Seconds between two publications of this replica's admission summary
    /// (ConfigMap `policybind-admission-<pod>` in --namespace), which the operator
    /// turns into the `policybind-admission` Report of each namespace; 0: off.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        env = "POLICYBIND_ADMISSION_SUMMARY_INTERVAL"
    )]
    admission_summary_interval: u64,
    /// This process's name in the audit trail (writer `webhook/<name>`); the pod name.
    #[arg(long, env = "POLICYBIND_POD_NAME", default_value = "webhook")]
    pod_name: String,
}

fn parse_undeclared(value: &str) -> Result<UndeclaredMode, String> {
    UndeclaredMode::parse(value).ok_or_else(|| format!("{value:?} is not ignore, warn or deny"))
}

fn parse_classification(value: &str) -> Result<DataClassification, String> {
    DataClassification::parse(value)
        .ok_or_else(|| format!("{value:?} is not Public, Internal, Confidential or Restricted"))
}

fn parse_style(value: &str) -> Result<SidecarStyle, String> {
    match value.to_ascii_lowercase().as_str() {
        "auto" => Ok(SidecarStyle::Auto),
        "native" => Ok(SidecarStyle::Native),
        "regular" => Ok(SidecarStyle::Regular),
        _ => Err(format!("{value:?} is not auto, native or regular")),
    }
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(WebhookCommand::Configs(configs)) => print_configs(configs),
        None => serve(*args.serve).await,
    }
}

fn print_configs(args: ConfigsArgs) -> anyhow::Result<ExitCode> {
    let mut registration = args.registration.registration();
    if let Some(path) = &args.ca_file {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        registration.ca_bundle = Some(pem);
    }
    print!("{}", registration.yaml()?);
    Ok(ExitCode::SUCCESS)
}

/// The host of a URL, as the certificate must name it.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().map(str::to_string);
    }
    Some(
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
            .to_string(),
    )
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Before anything opens a TLS connection (kube client, our server).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registration = args.registration.registration();
    let namespace = args.registration.namespace.clone();

    let tls = if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }
    } else if let Some(secret) = &args.tls_secret {
        let (ns, name) = secret
            .split_once('/')
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .unwrap_or((namespace.clone(), secret.clone()));
        TlsSource::Secret {
            namespace: ns,
            name,
        }
    } else if args.self_signed {
        let service = &args.registration.service_name;
        let mut dns_names = vec![
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            "localhost".to_string(),
        ];
        let mut ips = args.self_signed_ip.clone();
        if let Some(host) = args.registration.webhook_url.as_deref().and_then(url_host) {
            match host.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns_names.push(host),
            }
        }
        dns_names.extend(args.self_signed_dns.iter().cloned());
        TlsSource::SelfSigned { dns_names, ips }
    } else {
        bail!("choose a serving certificate: --tls-cert/--tls-key, --tls-secret or --self-signed");
    };

    let mut extra_env = std::collections::BTreeMap::new();
    for pair in &args.sidecar_env {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--sidecar-env {pair:?} is not KEY=VALUE"))?;
        extra_env.insert(k.to_string(), v.to_string());
    }
    let mut sidecar_overlay = None;
    if let Some(path) = &args.injection_config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sidecar_overlay = Some(
            policybind_webhook::config::InjectionFile::parse(&text)
                .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?,
        );
    }
    let mut admission = AdmissionConfig {
        own_namespace: namespace,
        excluded_namespaces: args.exclude_namespace,
        undeclared: args.undeclared_model_servers,
        extra_model_server_images: args.model_server_image,
        default_namespace_classification: args.default_namespace_classification,
        sidecar: SidecarConfig {
            image: args.sidecar_image,
            image_pull_policy: args.sidecar_image_pull_policy,
            style: args.sidecar_style,
            port_name: args.sidecar_port_name,
            model_port: args.sidecar_model_port,
            port_offset: args.sidecar_port_offset,
            health_port: args.sidecar_health_port,
            cpu_request: args.sidecar_cpu_request,
            memory_request: args.sidecar_memory_request,
            cpu_limit: args.sidecar_cpu_limit,
            memory_limit: args.sidecar_memory_limit,
            run_as_user: args.sidecar_run_as_user,
            extra_env,
        },
        native_sidecars: true,
        require_audit_record: args.require_audit_record,
    };
    if let Some(overlay) = sidecar_overlay {
        overlay.apply(&mut admission.sidecar);
    }
    admission
        .sidecar
        .validate()
        .map_err(|e| anyhow::anyhow!("--sidecar-env / --injection-config: {e}"))?;
    let settings = Settings {
        listen: args.listen,
        health_listen: args.health_listen,
        tls,
        admission,
        max_body_bytes: args.max_body_bytes,
        handshake_timeout: Duration::from_secs(10),
        max_connections: args.max_connections,
        reload_every: Duration::from_secs(args.reload_interval_seconds.max(1)),
        registration,
        register: args.register,
        audit: AuditSettings {
            key_secret: args.audit_key_secret,
            key_file: args.audit_key_file,
            directory: args.audit_dir,
            identity: args.pod_name,
            summary_interval: (args.admission_summary_interval > 0)
                .then(|| Duration::from_secs(args.admission_summary_interval)),
        },
        metrics_listen: args.metrics_addr,
    };
    policybind_webhook::run(settings).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn url_host_handles_ip_v6_and_names() {
        assert_eq!(
            url_host("https://127.0.0.1:8443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            url_host("https://[::1]:8443/validate").as_deref(),
            Some("::1")
        );
        assert_eq!(
            url_host("https://host.docker.internal:8443").as_deref(),
            Some("host.docker.internal")
        );
    }
}
