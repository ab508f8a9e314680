//! PolicyBind admission webhook (DESIGN.md section 7): keeps bad policy and
//! unapproved AI out of the cluster before it runs, and puts the enforcement
//! sidecar in front of model servers.
//!
//! - [`admission`]: the HTTPS router, `/validate` and `/mutate`.
//! - [`resources`]: our own kinds, compiled with the engine; approval rights.
//! - [`workloads`]: pods and pod templates that declare (or look like) a model server.
//! - [`inject`]: the pure pod -> injected pod + JSON patch function.
//! - [`tls`]: serving certificate from files, a Secret or generated; hot reload;
//!   caBundle patching. [`configs`]: the webhook configurations themselves.
//! - [`enforcement`]: in enforced namespaces, model pods run behind the genuine
//!   sidecar or an authorized exemption; nobody but the sidecar reads the audit key.
//! - [`view`], [`authz`], [`audit`]: what a decision reads (cached cluster state),
//!   asks (SubjectAccessReview) and writes (one audit record per decision).
//! - Every identifier taken from a review is capped and free of control
//!   characters before it is decided on or recorded (the shared check,
//!   `policybind_engine::ident`).
//!
//! The decision logic never waits on the API server except for the rights it
//! checks (approvals, exemptions, shared models, token namespaces); everything else reads reflector caches, which is what keeps an
//! answer under a millisecond. `policybind webhook` calls [`run`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod authz;
pub mod codes;
pub mod config;
pub mod configs;
pub mod enforcement;
pub mod inject;
pub mod metrics;
pub mod resources;
pub mod server;
pub mod summary;
pub mod tls;
pub mod verdict;
pub mod view;
pub mod workloads;

pub use admission::{App, router};
pub use server::{AuditSettings, Readiness, Settings, TlsSource, run, serve_tls};

/// Errors of the webhook library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message carries kube's own (already nested) error text; it is not
    /// repeated as a source, so `{:#}` chains print it once.
    #[error("kubernetes API: {0}")]
    Kube(kube::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Tls(_) => "tls",
            Error::Config(_) => "config",
            Error::Io(_) => "io",
            Error::Timeout(_) => "timeout",
        }
    }
}
