//! The serving certificate: loaded from files, from a Secret, or generated, and
//! swapped in place when it changes, without dropping connections.
//!
//! The API server only talks to a webhook over TLS and checks the certificate
//! against the `caBundle` of the webhook configuration. Three ways to get there:
//!
//! - files (`--tls-cert`/`--tls-key`, e.g. a mounted cert-manager Secret): polled,
//!   reloaded when the bytes change (kubelet updates mounted Secrets atomically);
//! - a Secret (`--tls-secret`): watched through the API, reloaded on every change;
//!   cert-manager's `ca-injector` fills the `caBundle`;
//! - `--self-signed`: a CA and a serving certificate generated at start-up (kept
//!   in memory only), and the CA patched into the caBundle of the named webhook
//!   configurations.
//!
//! Readiness waits for a certificate ([`CertResolver::is_loaded`]).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;
use crate::metrics::Metrics;

/// Holds the current certificate; rustls asks it on every handshake.
#[derive(Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertResolver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replace the certificate; new handshakes use it at once.
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().expect("certificate lock") = Some(Arc::new(key));
    }

    /// Whether a certificate has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.read().expect("certificate lock").is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("certificate lock").clone()
    }
}

/// A certificate chain and private key from PEM text.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, Error> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate in the PEM text".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("private key PEM: {e}")))?;
    // `from_der` also checks that the key belongs to the certificate: during a
    // rotation the two files can briefly disagree, and that pair must not be served.
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| Error::Tls(format!("certificate and key: {e}")))
}

/// The server's TLS configuration: TLS 1.2 and 1.3 with ring, HTTP/2 preferred
/// (the API server uses it when offered), certificate from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Polls certificate files and reloads when their bytes change. Returns after the
/// first successful load has been attempted; keeps polling in the background.
pub async fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    every: Duration,
) -> Result<(), Error> {
    let read = |cert: &PathBuf, key: &PathBuf| -> Result<(Vec<u8>, Vec<u8>), Error> {
        let c = std::fs::read(cert)
            .map_err(|e| Error::Tls(format!("reading {}: {e}", cert.display())))?;
        let k = std::fs::read(key)
            .map_err(|e| Error::Tls(format!("reading {}: {e}", key.display())))?;
        Ok((c, k))
    };
    let (c, k) = read(&cert, &key)?;
    resolver.set(certified_key(&c, &k)?);
    metrics.certificate_reloads.inc();
    let mut last = (c, k);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match read(&cert, &key) {
                Ok(now) if now != last => match certified_key(&now.0, &now.1) {
                    Ok(loaded) => {
                        resolver.set(loaded);
                        metrics.certificate_reloads.inc();
                        tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                        last = now;
                    }
                    // Half-written files during a rotation: keep the old one, retry.
                    Err(error) => tracing::warn!(%error, "new certificate not usable yet"),
                },
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "certificate files unreadable"),
            }
        }
    });
    Ok(())
}

/// Watches a `kubernetes.io/tls` Secret and loads every version of it.
pub fn watch_secret(
    client: Client,
    namespace: &str,
    name: &str,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_string();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).applied_objects().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(secret) => {
                    let data = secret.data.unwrap_or_default();
                    let (Some(cert), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
                        tracing::warn!(secret = %name, "secret has no tls.crt/tls.key");
                        continue;
                    };
                    match certified_key(&cert.0, &key.0) {
                        Ok(loaded) => {
                            resolver.set(loaded);
                            metrics.certificate_reloads.inc();
                            tracing::info!(secret = %name, "serving certificate loaded from secret");
                        }
                        Err(error) => {
                            tracing::warn!(%error, secret = %name, "certificate not usable")
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "watching the certificate secret"),
            }
        }
    })
}

/// A generated CA and a serving certificate signed by it.
pub struct SelfSigned {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a CA and a serving certificate for the given DNS names and IPs.
pub fn generate_self_signed(dns_names: &[String], ips: &[IpAddr]) -> Result<SelfSigned, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let tls = |e: rcgen::Error| Error::Tls(format!("generating certificate: {e}"));
    // Valid from yesterday (clock skew) for a year; a restart renews it.
    use chrono::Datelike;
    let ymd = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let today = chrono::Utc::now().date_naive();
    let now = (
        ymd(today - chrono::Days::new(1)),
        ymd(today + chrono::Days::new(365)),
    );

    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "policybind-webhook-ca");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now.0;
    ca_params.not_after = now.1;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(tls)?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut leaf_name = DistinguishedName::new();
    leaf_name.push(DnType::CommonName, "policybind-webhook");
    params.distinguished_name = leaf_name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now.0;
    params.not_after = now.1;
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(tls)?;
    Ok(SelfSigned {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// Writes `ca_pem` into every webhook's `clientConfig.caBundle` of the named
/// configurations. A missing configuration is reported, not fatal: it may be
/// created later (then re-run, or use `--register`).
pub async fn patch_ca_bundle(
    client: Client,
    validating: Option<&str>,
    mutating: Option<&str>,
    ca_pem: &str,
) -> Result<(), Error> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    if let Some(name) = validating {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        for attempt in 0..5 {
            let Some(mut config) = api.get_opt(name).await.map_err(Error::Kube)? else {
                tracing::warn!(
                    name,
                    "ValidatingWebhookConfiguration not found; caBundle not patched"
                );
                break;
            };
            for webhook in config.webhooks.iter_mut().flatten() {
                webhook.client_config.ca_bundle = Some(bundle.clone());
            }
            match api.replace(name, &PostParams::default(), &config).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => continue,
                Err(e) => return Err(Error::Kube(e)),
            }
        }
    }
    if let Some(name) = mutating {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client);
        for attempt in 0..5 {
            let Some(mut config) = api.get_opt(name).await.map_err(Error::Kube)? else {
                tracing::warn!(
                    name,
                    "MutatingWebhookConfiguration not found; caBundle not patched"
                );
                break;
            };
            for webhook in config.webhooks.iter_mut().flatten() {
                webhook.client_config.ca_bundle = Some(bundle.clone());
            }
            match api.replace(name, &PostParams::default(), &config).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => continue,
                Err(e) => return Err(Error::Kube(e)),
            }
        }
    }
    Ok(())
}
