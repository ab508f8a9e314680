//! Settings of one sidecar or standalone server, built by the CLI
//! (`policybind serve`, `policybind sidecar`) and by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::{CredentialSettings, ProviderKey};

/// Where the policy set comes from.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// A directory of YAML manifests (standalone mode), re-read when it changes.
    Directory {
        path: PathBuf,
        poll_interval: Duration,
    },
    /// The namespace's bundle, watched through the API server in PolicyBind's
    /// own namespace (see [`crate::cluster`]).
    ConfigMap(crate::cluster::BundleSource),
}

/// Where RequireApproval decisions are held for a human.
#[derive(Debug, Clone)]
pub enum ApprovalSettings {
    /// One ApprovalRequest manifest per held request, `<dir>/<ref>.yaml`.
    Directory(PathBuf),
    /// ApprovalRequest objects in the sidecar's namespace.
    Cluster {
        namespace: String,
        requester: String,
    },
    /// RequireApproval is a plain denial: nowhere to hold requests.
    Disabled,
}

/// Bounds on what one request may cost the sidecar.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest non-streaming upstream response read for its `usage`.
    pub max_response_bytes: usize,
    /// Requests handled at once; more get 503 at once rather than queueing.
    pub max_concurrency: usize,
    /// Time to open a connection to the upstream.
    pub upstream_connect_timeout: Duration,
    /// Time until the upstream's response headers (and a non-streaming body).
    pub upstream_timeout: Duration,
    /// Longest gap between two chunks of a streaming response.
    pub stream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_concurrency: 1024,
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(120),
            stream_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What is done with model answers (see [`crate::output`]).
#[derive(Debug, Clone)]
pub struct OutputSettings {
    /// Run the detectors and rules on answers. Off: answers are passed on unread
    /// (usage is still read).
    pub scan: bool,
    /// Bytes of streamed text held back per channel, so an entity split across
    /// chunks is seen whole before any of it is released.
    pub hold_back_bytes: usize,
}

impl Default for OutputSettings {
    fn default() -> Self {
        OutputSettings {
            scan: true,
            hold_back_bytes: 256,
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address callers use (the model APIs).
    pub listen: SocketAddr,
    /// Plain port for `/healthz`, `/readyz` and `/metrics`.
    pub health_listen: SocketAddr,
    /// Port of the decision API (`POST /v1/decide`, PolicyGate's `/evaluate`,
    /// `/health`, `/version`); `None`: not served.
    pub decide_listen: Option<SocketAddr>,
    /// Base URL of the default upstream, e.g. `http://127.0.0.1:8000`: where
    /// models without an endpoint go. Empty: such models are refused
    /// (`ROUTE_UNAVAILABLE`), as in a gateway that only fronts providers.
    pub upstream: String,
    /// API key the default upstream itself requires, sent as `Authorization: Bearer`.
    /// The caller's PolicyBind token is never forwarded.
    pub upstream_api_key: Option<ProviderKey>,
    /// PEM bundle of CA certificates trusted for HTTPS upstreams, besides the platform's.
    pub upstream_ca_file: Option<PathBuf>,
    /// Where provider keys are read from.
    pub credentials: CredentialSettings,
    /// `namespace/name` of the ModelDeployment an injected sidecar's pod serves:
    /// its requests always go to `upstream`, whatever its endpoint says.
    pub own_model_deployment: Option<String>,
    pub source: SourceSettings,
    pub approvals: ApprovalSettings,
    /// Namespace requests are decided in.
    pub namespace: String,
    /// Identity of this writer in the audit trail and in logs.
    pub writer: String,
    /// Further exact paths served besides the model APIs (e.g. vLLM's `/tokenize`):
    /// POST bodies with a `model`, every string in them scanned, decided like any
    /// model call. Checked at start-up ([`Settings::validate`]).
    pub extra_paths: Vec<String>,
    /// Output tokens assumed when a request sets no `max_tokens`.
    pub default_output_tokens: u64,
    /// How prompt tokens are estimated before a call.
    pub token_estimates: crate::providers::TokenEstimates,
    /// Ask streaming upstreams for a final usage chunk (`stream_options.include_usage`).
    pub request_stream_usage: bool,
    pub output: OutputSettings,
    pub limits: Limits,
    /// Where settled usage is reported for the operator (cluster mode only;
    /// needs a Kubernetes client). `None`: no report.
    pub usage_report: Option<crate::usage::UsageReportSettings>,
    /// File the settled usage is kept in across restarts (standalone mode, see
    /// [`crate::usage_file`]): read before serving, written at most every
    /// second and at shutdown. `None`: spend is kept in memory only.
    pub usage_file: Option<PathBuf>,
    /// Budgets and rate limits kept in Redis, shared by every replica using
    /// the same Redis (`crate::redis_ledger`); takes the place of the
    /// operator's leases. `None`: leases in a cluster, this process otherwise.
    pub budget_store: Option<crate::redis_ledger::RedisStoreSettings>,
    /// Label per-token metrics with the token (one series per token and
    /// period per process); off: bounded series, see [`crate::metrics`].
    pub metrics_token_labels: bool,
    /// How often refused unauthenticated requests are summarised in one audit record.
    pub rejection_summary_interval: Duration,
    /// Sent with every response of the main port as `x-policybind-upstream`, so
    /// that no caller mistakes the built-in demo upstream (`demo`) for a model.
    pub upstream_label: Option<String>,
    /// Threads serving the main port, each a single-threaded runtime
    /// accepting from the port's listening socket, with its own upstream
    /// connections, so that a request stays on one thread from accept to
    /// answer (no hand-offs between threads). 0: the main port is served on
    /// the runtime that called [`crate::start`].
    pub workers: usize,
}

/// A setting that cannot work, found at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "extra path {0:?} cannot be decided: give an exact absolute path (no wildcards, query, `..` or `//`)"
    )]
    PathShape(String),
    #[error("extra path {0:?} is already served by policybind")]
    PathBuiltIn(String),
    #[error(
        "extra path {0:?} cannot be decided: its requests name no model to decide on (files, batches, fine-tuning, assistants, threads, vector stores, uploads, model details)"
    )]
    PathUndecidable(String),
    #[error("extra path {0:?} is given twice")]
    PathTwice(String),
}

/// Path prefixes whose requests carry no model: refused as extra paths.
const UNDECIDABLE_PREFIXES: &[&str] = &[
    "/v1/models",
    "/v1/files",
    "/v1/batches",
    "/v1/fine_tuning",
    "/v1/fine-tunes",
    "/v1/assistants",
    "/v1/threads",
    "/v1/vector_stores",
    "/v1/uploads",
    "/v1/organization",
];

impl Settings {
    /// Settings for standalone mode with defaults for everything else.
    pub fn standalone(config_dir: PathBuf, upstream: impl Into<String>) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            decide_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8082))),
            upstream: upstream.into(),
            upstream_api_key: None,
            upstream_ca_file: None,
            credentials: CredentialSettings {
                refresh: Duration::from_secs(1),
                ..Default::default()
            },
            own_model_deployment: None,
            approvals: ApprovalSettings::Directory(config_dir.join("approvals")),
            source: SourceSettings::Directory {
                path: config_dir,
                poll_interval: Duration::from_secs(1),
            },
            namespace: "default".into(),
            writer: "standalone".into(),
            extra_paths: vec![],
            default_output_tokens: 512,
            token_estimates: crate::providers::TokenEstimates::Exact,
            request_stream_usage: true,
            output: OutputSettings::default(),
            limits: Limits::default(),
            usage_report: None,
            usage_file: None,
            budget_store: None,
            metrics_token_labels: false,
            rejection_summary_interval: Duration::from_secs(60),
            upstream_label: None,
            workers: 0,
        }
    }

    /// Refuses settings that cannot work, before anything listens.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for path in &self.extra_paths {
            let normal = path.strip_suffix('/').unwrap_or(path);
            let shape_ok = normal.starts_with('/')
                && normal.len() > 1
                && !normal.contains(['*', '?', '#', '%', ' '])
                && !normal.contains("//")
                && !normal.split('/').any(|s| s == ".." || s == ".");
            if !shape_ok {
                return Err(ConfigError::PathShape(path.clone()));
            }
            if crate::providers::Api::from_path(normal).is_some()
                || normal == "/v1/decide"
                || normal == "/evaluate"
            {
                return Err(ConfigError::PathBuiltIn(path.clone()));
            }
            if UNDECIDABLE_PREFIXES
                .iter()
                .any(|p| normal == *p || normal.starts_with(&format!("{p}/")))
            {
                return Err(ConfigError::PathUndecidable(path.clone()));
            }
            if !seen.insert(normal.to_string()) {
                return Err(ConfigError::PathTwice(path.clone()));
            }
        }
        Ok(())
    }

    /// Whether `path` is a configured extra path.
    pub fn is_extra_path(&self, path: &str) -> bool {
        let path = path.strip_suffix('/').unwrap_or(path);
        self.extra_paths
            .iter()
            .any(|p| p.strip_suffix('/').unwrap_or(p) == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_paths_that_cannot_be_decided_are_refused_at_start_up() {
        let mut settings = Settings::standalone(PathBuf::from("/tmp"), "http://127.0.0.1:1");
        settings.extra_paths = vec!["/tokenize".into(), "/v1/rerank/".into()];
        assert_eq!(settings.validate(), Ok(()));
        assert!(settings.is_extra_path("/v1/rerank"));
        assert!(!settings.is_extra_path("/v1/rerank/x"));
        for (path, expected) in [
            ("/v1/*", ConfigError::PathShape("/v1/*".into())),
            ("tokenize", ConfigError::PathShape("tokenize".into())),
            ("/a/../b", ConfigError::PathShape("/a/../b".into())),
            (
                "/v1/chat/completions",
                ConfigError::PathBuiltIn("/v1/chat/completions".into()),
            ),
            (
                "/v1/files",
                ConfigError::PathUndecidable("/v1/files".into()),
            ),
            (
                "/v1/models/gpt-4o",
                ConfigError::PathUndecidable("/v1/models/gpt-4o".into()),
            ),
            ("/tokenize", ConfigError::PathTwice("/tokenize".into())),
        ] {
            let mut s = settings.clone();
            s.extra_paths.push(path.into());
            assert_eq!(s.validate(), Err(expected), "{path}");
        }
    }
}
