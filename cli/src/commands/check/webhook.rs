//! The admission webhook: registered, reachable, and serving a certificate that
//! its caBundle trusts, valid for its DNS name and not about to expire.
//!
//! `check` does not go through the API server's service proxy (that needs
//! `services/proxy`, a right to talk to any Service). It connects directly:
//! to the registered URL, or to the Service's DNS name, which resolves inside
//! the cluster (the `helm test` pod). Outside the cluster a Service name does
//! not resolve; the Service's ready endpoints and the caBundle are checked
//! instead, and the line says the served certificate was not seen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use rustls_pki_types::{CertificateDer, ServerName};

use super::report::CheckLine;

/// A certificate expiring sooner than this is a warning.
pub const EXPIRY_MARGIN: Duration = Duration::days(30);
/// Suffix of every webhook name PolicyBind registers.
const WEBHOOK_SUFFIX: &str = ".policybind.io";

/// Where one registered webhook sends its reviews.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Url {
        host: String,
        port: u16,
    },
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl Target {
    /// Host name the certificate must carry, and the port to dial.
    pub fn host_port(&self) -> (String, u16) {
        match self {
            Target::Url { host, port } => (host.clone(), *port),
            Target::Service {
                namespace,
                name,
                port,
            } => (format!("{name}.{namespace}.svc"), *port),
        }
    }
}

/// One registered PolicyBind webhook.
#[derive(Debug, Clone)]
pub struct Registered {
    /// `ValidatingWebhookConfiguration/<name>` or `MutatingWebhookConfiguration/<name>`.
    pub config: String,
    pub webhook: String,
    pub target: Result<Target, String>,
    pub ca_bundle: Vec<u8>,
}

fn target_of(client: &WebhookClientConfig) -> Result<Target, String> {
    if let Some(service) = &client.service {
        return Ok(Target::Service {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port: service.port.map_or(443, |p| p as u16),
        });
    }
    let url = client
        .url
        .as_deref()
        .ok_or("neither url nor service is set")?;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("url {url} is not https"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (
            host.to_string(),
            port.parse::<u16>()
                .map_err(|_| format!("url {url} has an invalid port"))?,
        ),
        _ => (authority.to_string(), 443),
    };
    Ok(Target::Url {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
    })
}

/// PolicyBind's webhooks (named `*.policybind.io`) in both kinds of configuration.
pub fn registered(
    validating: &[ValidatingWebhookConfiguration],
    mutating: &[MutatingWebhookConfiguration],
) -> Vec<Registered> {
    let mut found = Vec::new();
    for config in validating {
        for hook in config
            .webhooks
            .iter()
            .flatten()
            .filter(|w| w.name.ends_with(WEBHOOK_SUFFIX))
        {
            found.push(entry(
                "ValidatingWebhookConfiguration",
                &config.name_any(),
                &hook.name,
                &hook.client_config,
            ));
        }
    }
    for config in mutating {
        for hook in config
            .webhooks
            .iter()
            .flatten()
            .filter(|w| w.name.ends_with(WEBHOOK_SUFFIX))
        {
            found.push(entry(
                "MutatingWebhookConfiguration",
                &config.name_any(),
                &hook.name,
                &hook.client_config,
            ));
        }
    }
    found
}

fn entry(kind: &str, config: &str, webhook: &str, client: &WebhookClientConfig) -> Registered {
    Registered {
        config: format!("{kind}/{config}"),
        webhook: webhook.to_string(),
        target: target_of(client),
        ca_bundle: client
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default(),
    }
}

/// Validity of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

fn facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0).unwrap_or_default()
    };
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// Every certificate in a PEM bundle, in DER.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("caBundle is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    Ok(certs)
}

/// The verdict on one certificate's dates.
fn dates_line(
    check: String,
    what: &str,
    cert: &CertFacts,
    now: DateTime<Utc>,
    run: &str,
) -> CheckLine {
    let expires = cert.not_after.format("%Y-%m-%d %H:%M UTC");
    if now < cert.not_before {
        return CheckLine::fail(
            "webhook",
            check,
            format!(
                "{what} ({}) is not valid before {}",
                cert.subject, cert.not_before
            ),
            run,
        );
    }
    if now >= cert.not_after {
        return CheckLine::fail(
            "webhook",
            check,
            format!(
                "{what} ({}) expired at {expires}: the API server refuses the webhook",
                cert.subject
            ),
            run,
        );
    }
    if cert.not_after - now < EXPIRY_MARGIN {
        let days = (cert.not_after - now).num_days();
        return CheckLine::warn(
            "webhook",
            check,
            format!(
                "{what} ({}) expires in {days} day(s), at {expires}",
                cert.subject
            ),
            run,
        );
    }
    CheckLine::pass("webhook", format!("{check} (until {expires})"))
}

/// What dialling a webhook found.
#[derive(Debug, Clone)]
pub enum Probe {
    /// The TLS handshake succeeded against the caBundle, for the host name: the
    /// first certificate served.
    Served(CertFacts),
    /// The host name does not resolve here (a Service name outside the cluster).
    Unresolved(String),
    /// Connection or handshake failed.
    Failed(String),
}

/// Dials `target` and completes a TLS handshake trusting only `ca_bundle` and
/// requiring a certificate for the target's DNS name.
pub async fn probe(target: &Target, ca_bundle: &[u8], timeout: StdDuration) -> Probe {
    let (host, port) = target.host_port();
    let addrs =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
            Ok(Err(e)) => return Probe::Unresolved(format!("{host} does not resolve here: {e}")),
            Err(_) => return Probe::Unresolved(format!("resolving {host} timed out")),
        };
    let Some(addr) = addrs.first() else {
        return Probe::Unresolved(format!("{host} resolves to no address"));
    };
    let mut roots = rustls::RootCertStore::empty();
    match pem_certificates(ca_bundle) {
        Ok(certs) => roots.add_parsable_certificates(certs),
        Err(e) => return Probe::Failed(e),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return Probe::Failed(format!("{host} is not a valid server name"));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {host}:{port} ({addr}): {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no certificate served")?;
        facts(&served)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(cert)) => Probe::Served(cert),
        Ok(Err(e)) => Probe::Failed(e),
        Err(_) => Probe::Failed(format!(
            "no TLS handshake with {host}:{port} within {timeout:?}"
        )),
    }
}

/// Ready endpoints per Service (`namespace/name`), from EndpointSlices.
pub fn ready_endpoints(slices: &[EndpointSlice]) -> BTreeMap<String, usize> {
    let mut ready = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get("kubernetes.io/service-name").cloned() else {
            continue;
        };
        let key = format!("{}/{service}", slice.namespace().unwrap_or_default());
        let count = slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().is_none_or(|c| c.ready != Some(false)))
            .count();
        *ready.entry(key).or_default() += count;
    }
    ready
}

/// Everything the webhook lines are decided from.
#[derive(Debug, Clone, Default)]
pub struct WebhookState {
    pub now: DateTime<Utc>,
    pub home: String,
    pub registered: Vec<Registered>,
    /// Ready endpoints per `namespace/service`.
    pub ready: BTreeMap<String, usize>,
    pub probes: BTreeMap<Target, Probe>,
}

/// The webhook lines: both configurations registered, then per target its
/// caBundle, its endpoints and the certificate it serves.
pub fn webhook_lines(state: &WebhookState) -> Vec<CheckLine> {
    let home = &state.home;
    let install = format!(
        "helm upgrade --install policybind charts/policybind -n {home}, or: policybind webhook configs | kubectl apply -f -"
    );
    let mut lines = Vec::new();
    for (kind, example) in [
        ("ValidatingWebhookConfiguration", "resources.policybind.io"),
        ("MutatingWebhookConfiguration", "inject.policybind.io"),
    ] {
        let hooks: Vec<&Registered> = state
            .registered
            .iter()
            .filter(|r| r.config.starts_with(kind))
            .collect();
        let check = format!("a {kind} registers PolicyBind's webhooks");
        lines.push(match hooks.is_empty() {
            true => CheckLine::fail("webhook", check, format!("no {kind} holds a webhook named *{WEBHOOK_SUFFIX} (such as {example}): nothing is validated or injected"), install.clone()),
            false => CheckLine::pass("webhook", format!("{check} ({})", hooks.iter().map(|h| h.webhook.as_str()).collect::<Vec<_>>().join(", "))),
        });
    }
    let mut targets: BTreeMap<Target, &Registered> = BTreeMap::new();
    for hook in &state.registered {
        match &hook.target {
            Ok(target) => {
                targets.entry(target.clone()).or_insert(hook);
            }
            Err(problem) => lines.push(CheckLine::fail(
                "webhook",
                format!(
                    "{} of {} has a usable client config",
                    hook.webhook, hook.config
                ),
                problem.clone(),
                format!("kubectl get {} -o yaml", hook.config.to_lowercase()),
            )),
        }
    }
    for (target, hook) in targets {
        lines.extend(target_lines(state, &target, hook));
    }
    lines
}

fn target_lines(state: &WebhookState, target: &Target, hook: &Registered) -> Vec<CheckLine> {
    let (host, port) = target.host_port();
    let mut lines = Vec::new();
    let get_config = format!("kubectl get {} -o yaml", hook.config.to_lowercase());
    let ca_check = format!("the caBundle for {host} holds a valid CA certificate");
    match pem_certificates(&hook.ca_bundle).and_then(|certs| facts(&certs[0])) {
        Ok(ca) => lines.push(dates_line(
            ca_check,
            "the CA certificate",
            &ca,
            state.now,
            &get_config,
        )),
        Err(problem) => lines.push(CheckLine::fail(
            "webhook",
            ca_check,
            format!("{} of {}: {problem}", hook.webhook, hook.config),
            get_config.clone(),
        )),
    }
    if let Target::Service {
        namespace, name, ..
    } = target
    {
        let ready = state
            .ready
            .get(&format!("{namespace}/{name}"))
            .copied()
            .unwrap_or(0);
        let check = format!("Service {namespace}/{name} has ready endpoints");
        lines.push(match ready {
            0 => CheckLine::fail("webhook", check, "no ready endpoint: the API server cannot reach the webhook, and its failurePolicy decides every admission", format!("kubectl -n {namespace} get endpointslices -l kubernetes.io/service-name={name}; kubectl -n {namespace} get pods -l app.kubernetes.io/component=webhook")),
            n => CheckLine::pass("webhook", format!("{check} ({n})")),
        });
    }
    let served_check =
        format!("{host}:{port} serves a certificate for its name that the caBundle trusts");
    let run = format!(
        "kubectl -n {} logs -l app.kubernetes.io/component=webhook --tail=100",
        state.home
    );
    lines.push(match state.probes.get(target) {
        Some(Probe::Served(cert)) => dates_line(served_check, "the serving certificate", cert, state.now, &run),
        Some(Probe::Unresolved(why)) if matches!(target, Target::Service { .. }) => CheckLine::warn("webhook", served_check, format!("not dialled: {why}; run `policybind check` inside the cluster (helm test) to see it"), format!("helm test <release> -n {}", state.home)),
        Some(Probe::Unresolved(why) | Probe::Failed(why)) => CheckLine::fail("webhook", served_check, why.clone(), run),
        None => CheckLine::warn("webhook", served_check, "not dialled", run),
    });
    lines
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
