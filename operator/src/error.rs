//! The operator's one error type. Every variant has a short, stable label for the
//! `policybind_operator_reconcile_errors_total{error=...}` metric.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed (network, conflict, forbidden, ...).
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    /// A CustomResourceDefinition the operator serves is not installed.
    #[error(
        "the CustomResourceDefinition {0} is not installed; install the CRDs first \
         (`policybind crds | kubectl apply --server-side -f -`, or the Helm chart) and start again"
    )]
    CrdMissing(String),
    /// Loading the kubeconfig or in-cluster configuration failed.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The operating system could not supply random bytes for a token.
    #[error("cannot generate a random token value: {0}")]
    Random(String),
    /// A Secret named by a token exists and was not created by PolicyBind; it is
    /// left alone rather than overwritten.
    #[error("Secret {0} exists and is not managed by PolicyBind; choose another spec.secretName")]
    SecretConflict(String),
    /// An object lacks a field that the API server always sets.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Encoding an object we write failed.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A namespace's bundle exceeds what sidecars accept (part count or size);
    /// the bundle in place stays.
    #[error("the bundle of namespace {namespace} is not written: {reason}")]
    BundleRefused { namespace: String, reason: String },
    /// The caches of watched objects did not fill in time after start.
    #[error("the watch caches did not fill within {0:?}; is the API server reachable?")]
    CachesNotReady(std::time::Duration),
    /// A call to the API server did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// This replica no longer holds the leader Lease.
    #[error("lost the leader Lease {0}; stopping so that only one replica acts")]
    LostLeadership(String),
    /// The audit writer for lifecycle records could not start or stop cleanly.
    #[error("audit trail: {0}")]
    Audit(#[source] policybind_audit::Error),
    /// The metrics and health server could not start.
    #[error("cannot serve metrics on {address}: {source}")]
    MetricsServer {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::CrdMissing(_) => "crd_missing",
            Error::Config(_) => "config",
            Error::Random(_) => "random",
            Error::SecretConflict(_) => "secret_conflict",
            Error::MissingField(_) => "missing_field",
            Error::Encode { .. } => "encode",
            Error::BundleRefused { .. } => "bundle_refused",
            Error::CachesNotReady(_) => "caches_not_ready",
            Error::Timeout(_) => "timeout",
            Error::LostLeadership(_) => "lost_leadership",
            Error::Audit(_) => "audit",
            Error::MetricsServer { .. } => "metrics_server",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Error::Kube(error)
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
