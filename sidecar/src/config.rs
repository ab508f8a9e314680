//! Settings of one sidecar or standalone server, built by the CLI
//! (`policybind serve`, `policybind sidecar`) and by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address callers use (the OpenAI-compatible API and `/v1/decide`).
    pub listen: SocketAddr,
    /// Plain port for `/healthz`, `/readyz` and `/metrics`.
    pub health_listen: SocketAddr,
    /// Base URL of the inference server, e.g. `http://127.0.0.1:8000`.
    pub upstream: String,
    /// API key the upstream itself requires, sent as `Authorization: Bearer`. The
    /// caller's PolicyBind token is never forwarded.
    pub upstream_api_key: Option<String>,
    pub source: SourceSettings,
    pub approvals: ApprovalSettings,
    /// Namespace requests are decided in.
    pub namespace: String,
    /// Identity of this writer in the audit trail and in logs.
    pub writer: String,
    /// Further path prefixes forwarded (authenticated, undecided) besides the
    /// model endpoints, e.g. `/v1/tokenize`. Empty by default: other paths are refused.
    pub extra_paths: Vec<String>,
    /// Output tokens assumed when a request sets no `max_tokens`.
    pub default_output_tokens: u64,
    /// Ask streaming upstreams for a final usage chunk (`stream_options.include_usage`).
    pub request_stream_usage: bool,
    /// Serve `POST /v1/decide` on the main port.
    pub decide_api: bool,
    pub limits: Limits,
    /// Where settled usage is reported for the operator (cluster mode only;
    /// needs a Kubernetes client). `None`: no report.
    pub usage_report: Option<crate::usage::UsageReportSettings>,
    /// Sent with every response of the main port as `x-policybind-upstream`, so
    /// that no caller mistakes the built-in demo upstream (`demo`) for a model.
    pub upstream_label: Option<String>,
}

impl Settings {
    /// Settings for standalone mode with defaults for everything else.
    pub fn standalone(config_dir: PathBuf, upstream: impl Into<String>) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            upstream: upstream.into(),
            upstream_api_key: None,
            approvals: ApprovalSettings::Directory(config_dir.join("approvals")),
            source: SourceSettings::Directory {
                path: config_dir,
                poll_interval: Duration::from_secs(1),
            },
            namespace: "default".into(),
            writer: "standalone".into(),
            extra_paths: vec![],
            default_output_tokens: 512,
            request_stream_usage: true,
            decide_api: true,
            limits: Limits::default(),
            usage_report: None,
            upstream_label: None,
        }
    }
}
