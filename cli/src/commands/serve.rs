//! `policybind serve`: the enforcement point without a cluster (DESIGN.md section 8).
//!
//! Reads the same YAML manifests users apply (policies, models, tokens with their
//! Secrets) from a directory, re-reads it when it changes, serves OpenAI's and
//! Anthropic's model APIs in front of an OpenAI-compatible server and the
//! providers the ModelDeployments name, and writes the audit trail to a
//! directory. The request path is the sidecar's, from `policybind-sidecar`.
//!
//! So that the first command a new user runs works on its own, `serve` without
//! `--upstream` starts a built-in demo upstream on loopback (clearly labelled in
//! its first log lines and in every response header), and keeps its state (audit
//! trail, key, approvals) in the XDG state directory, outside any source tree.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use policybind_crds::wire;
use policybind_sidecar::Dependencies;
use policybind_sidecar::audit::{directory_writer, load_or_create_signing_key};
use policybind_sidecar::config::{
    ApprovalSettings, Limits, OutputSettings, Settings, SourceSettings,
};
use policybind_sidecar::credentials::{CredentialSettings, ProviderKey};
use policybind_sidecar::providers::TokenEstimates;
use policybind_sidecar::redis_ledger::{RedisStoreSettings, redact_url};

/// Options shared by `serve` and `sidecar`: upstreams, provider keys, limits
/// and request handling.
/// `--token-estimates`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEstimatesArg {
    /// The model family's tokenizer where public, the heuristic otherwise.
    Exact,
    /// Characters per token for every family.
    Heuristic,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// API key the default upstream (`--upstream`) itself requires, sent to it as
    /// `Authorization: Bearer`. The caller's PolicyBind token is never forwarded.
    #[arg(long, env = "POLICYBIND_UPSTREAM_API_KEY", hide_env_values = true)]
    pub upstream_api_key: Option<String>,
    /// PEM file of extra CA certificates trusted for HTTPS upstreams, besides the
    /// platform's (`/etc/ssl/certs`, or `SSL_CERT_FILE`).
    #[arg(long, env = wire::env::UPSTREAM_CA_FILE)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Directory of mounted provider key Secrets: a ModelDeployment's
    /// `spec.credentials.secretRef {name, key}` is read from `<dir>/<name>/<key>`
    /// and re-read when it changes.
    #[arg(long, env = wire::env::CREDENTIALS_DIR)]
    pub credentials_dir: Option<PathBuf>,
    /// Read a provider key Secret reference from an environment variable instead,
    /// as `<secret>/<key>=<ENV_VAR>`. Repeat for several.
    #[arg(long = "credential-env", value_parser = parse_credential_env)]
    pub credential_env: Vec<((String, String), String)>,
    /// How often a provider key file is read again, in milliseconds.
    #[arg(
        long,
        env = "POLICYBIND_CREDENTIALS_REFRESH_MS",
        default_value_t = 1000
    )]
    pub credentials_refresh_ms: u64,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "POLICYBIND_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Threads serving the model APIs, each accepting connections from the
    /// port when it is free and keeping its own upstream connections, so a
    /// request stays on one thread from accept to answer. Default: one per
    /// available CPU (the container's CPU limit counts). 0: on the process's
    /// main runtime instead, shared with the health port and background work.
    /// `--max-concurrency` applies to all of them together.
    #[arg(long, env = "POLICYBIND_WORKERS", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: Option<u16>,
    /// Requests handled at once; more are answered 503 at once.
    #[arg(long, env = "POLICYBIND_MAX_CONCURRENCY", default_value_t = 1024)]
    pub max_concurrency: usize,
    /// Milliseconds to connect to the upstream (then 502).
    #[arg(
        long,
        env = "POLICYBIND_UPSTREAM_CONNECT_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub upstream_connect_timeout_ms: u64,
    /// Seconds until the upstream's response headers, and a whole non-streaming response (then 504).
    #[arg(long, env = "POLICYBIND_UPSTREAM_TIMEOUT_SECS", default_value_t = 120)]
    pub upstream_timeout_secs: u64,
    /// Longest silence between two chunks of a streaming response, in seconds.
    #[arg(
        long,
        env = "POLICYBIND_STREAM_IDLE_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub stream_idle_timeout_secs: u64,
    /// Output tokens assumed for budgets when a request sets no `max_tokens`.
    #[arg(long, env = "POLICYBIND_DEFAULT_OUTPUT_TOKENS", default_value_t = 512)]
    pub default_output_tokens: u64,
    /// How prompt tokens are estimated before a call (they size budget
    /// reservations, token rate limits and token thresholds; budgets are then
    /// settled with the usage the provider reports). `exact`: the model
    /// family's own tokenizer where it is public (tiktoken o200k_base /
    /// cl100k_base for OpenAI models; about 46 MiB of memory per encoding in
    /// use and ~30 µs per KiB of prompt), a characters-per-token heuristic for
    /// other families. `heuristic`: the heuristic for every family, no encoder
    /// in memory.
    #[arg(long, env = wire::env::TOKEN_ESTIMATES, value_enum, default_value_t = TokenEstimatesArg::Exact)]
    pub token_estimates: TokenEstimatesArg,
    /// Further exact path to serve besides the model APIs, e.g. vLLM's `/tokenize`:
    /// POST JSON bodies with a `model`, every string in them scanned, decided and
    /// audited like a model call. Repeat for several. Paths that cannot be decided
    /// (wildcards, files, batches, fine-tuning, assistants...) are refused at start-up.
    #[arg(
        long = "allow-path",
        env = "POLICYBIND_ALLOW_PATHS",
        value_delimiter = ','
    )]
    pub allow_paths: Vec<String>,
    /// Address of the decision API (`POST /v1/decide`, PolicyGate's `POST /evaluate`,
    /// `GET /health`, `GET /version`), a port of its own. Every decision needs a
    /// PolicyBind token.
    #[arg(long, env = wire::env::DECIDE_LISTEN)]
    pub decide_listen: Option<SocketAddr>,
    /// Do not serve the decision API (`serve` serves it on 127.0.0.1:8082 by default).
    #[arg(
        long,
        env = "POLICYBIND_NO_DECIDE_API",
        conflicts_with = "decide_listen"
    )]
    pub no_decide_api: bool,
    /// Do not ask streaming upstreams for a final usage chunk
    /// (`stream_options.include_usage`); streamed usage is then counted (chars/4).
    #[arg(long, env = "POLICYBIND_NO_STREAM_USAGE")]
    pub no_stream_usage: bool,
    /// Pass model answers on unread by the detectors and output rules (usage is still read).
    #[arg(long, env = "POLICYBIND_NO_OUTPUT_SCAN")]
    pub no_output_scan: bool,
    /// Bytes of streamed answer text held back per choice or block, so an entity
    /// split across chunks is judged whole before any of it is released.
    #[arg(long, env = "POLICYBIND_OUTPUT_HOLD_BACK_BYTES", default_value_t = 256)]
    pub output_hold_back_bytes: usize,
    /// Label the per-token metrics with the token: `budget_spent_usd{token,period}`,
    /// `budget_spent_tokens{token,period}` and `rate_limited_total{token}`. Off by
    /// default so that series stay bounded whatever the number of tokens (one
    /// per token and period per process when on).
    #[arg(long, env = wire::env::METRICS_TOKEN_LABELS)]
    pub metrics_token_labels: bool,
    /// Where budgets and rate limits are counted: `leases` (shared with the
    /// other replicas through the operator's ledger; the sidecar's and
    /// gateway's default), `memory` (this process only; `serve`'s default) or
    /// `redis://[user[:password]@]host:port[/db]` (every replica using that
    /// Redis shares them exactly; see docs/sidecar.md, "With Redis"), or
    /// `rediss://...` for Redis over TLS. Requests
    /// with limits are refused with BUDGET_STORE_UNAVAILABLE while Redis is away.
    #[arg(long, env = wire::env::BUDGET_STORE, value_parser = parse_budget_store, hide_env_values = true)]
    pub budget_store: Option<BudgetStoreArg>,
    /// Password of the Redis budget store when its URL has none.
    #[arg(long, env = wire::env::BUDGET_STORE_PASSWORD, hide_env_values = true)]
    pub budget_store_password: Option<Password>,
    /// PEM file of the CA certificates trusted for a `rediss://` budget store,
    /// instead of the platform's roots (for a Redis with a private CA).
    #[arg(long, env = wire::env::BUDGET_STORE_CA_FILE)]
    pub budget_store_ca_file: Option<PathBuf>,
    /// Seconds between audit records summarising refused unauthenticated requests.
    #[arg(
        long,
        env = "POLICYBIND_REJECTION_SUMMARY_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub rejection_summary_secs: u64,
}

/// A password given on the command line or in the environment: never shown
/// (Debug prints `***`).
#[derive(Clone)]
pub struct Password(String);

impl std::str::FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Password(text.to_string()))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `--budget-store`.
#[derive(Clone, PartialEq, Eq)]
pub enum BudgetStoreArg {
    Memory,
    Leases,
    Redis(String),
}

impl std::fmt::Debug for BudgetStoreArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetStoreArg::Memory => f.write_str("Memory"),
            BudgetStoreArg::Leases => f.write_str("Leases"),
            BudgetStoreArg::Redis(url) => write!(f, "Redis({})", redact_url(url)),
        }
    }
}

fn parse_budget_store(text: &str) -> Result<BudgetStoreArg, String> {
    match text {
        "memory" => Ok(BudgetStoreArg::Memory),
        "leases" => Ok(BudgetStoreArg::Leases),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Ok(BudgetStoreArg::Redis(url.to_string()))
        }
        other => Err(format!(
            "{:?} is none of `memory`, `leases`, `redis://host:port[/db]`, `rediss://host:port[/db]`",
            redact_url(other)
        )),
    }
}

fn parse_credential_env(text: &str) -> Result<((String, String), String), String> {
    policybind_sidecar::credentials::parse_env_mapping(text)
}

impl ProxyArgs {
    /// Applies the options; `default_decide` is where the decision API listens
    /// when no `--decide-listen` is given (`None`: off).
    pub fn apply(&self, settings: &mut Settings, default_decide: Option<SocketAddr>) {
        settings.upstream_api_key = self.upstream_api_key.as_deref().map(ProviderKey::new);
        settings.upstream_ca_file = self.upstream_ca_file.clone();
        settings.credentials = CredentialSettings {
            dir: self.credentials_dir.clone(),
            env: self.credential_env.iter().cloned().collect(),
            refresh: Duration::from_millis(self.credentials_refresh_ms),
        };
        settings.limits = Limits {
            max_body_bytes: self.max_body_bytes,
            max_concurrency: self.max_concurrency.max(1),
            upstream_connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            upstream_timeout: Duration::from_secs(self.upstream_timeout_secs),
            stream_idle_timeout: Duration::from_secs(self.stream_idle_timeout_secs),
            ..Limits::default()
        };
        settings.default_output_tokens = self.default_output_tokens;
        settings.token_estimates = match self.token_estimates {
            TokenEstimatesArg::Exact => TokenEstimates::Exact,
            TokenEstimatesArg::Heuristic => TokenEstimates::Heuristic,
        };
        settings.extra_paths = self.allow_paths.clone();
        settings.decide_listen = match (self.no_decide_api, self.decide_listen) {
            (true, _) => None,
            (false, Some(addr)) => Some(addr),
            (false, None) => default_decide,
        };
        settings.request_stream_usage = !self.no_stream_usage;
        settings.output = OutputSettings {
            scan: !self.no_output_scan,
            hold_back_bytes: self.output_hold_back_bytes,
        };
        settings.rejection_summary_interval = Duration::from_secs(self.rejection_summary_secs);
        settings.metrics_token_labels = self.metrics_token_labels;
        settings.workers = match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        settings.budget_store = match &self.budget_store {
            Some(BudgetStoreArg::Redis(url)) => Some(RedisStoreSettings {
                url: url.clone(),
                password: self.budget_store_password.clone().map(|p| p.0),
                ca_file: self.budget_store_ca_file.clone(),
            }),
            _ => None,
        };
    }
}

/// Arguments of `policybind serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Directory of YAML manifests (AIPolicy, ClusterAIPolicy, ModelDeployment,
    /// AccessToken and their Secrets), read recursively and re-read on change.
    #[arg(long, env = "POLICYBIND_CONFIG")]
    pub config: PathBuf,
    /// Base URL of the default upstream, e.g. `http://127.0.0.1:11434` (Ollama): where
    /// models whose ModelDeployment has no `endpoint` go (models with one go to
    /// their provider). Without it, a built-in DEMO upstream starts on loopback
    /// that answers "You said: <your last message>" and calls no model; its
    /// responses, and refusals, then carry `x-policybind-upstream: demo`.
    #[arg(long, env = wire::env::UPSTREAM)]
    pub upstream: Option<String>,
    /// Where standalone state lives: the audit trail (`audit/`), its signing key,
    /// held approvals (`approvals/`) and settled usage (`usage.json`). Default: `$XDG_STATE_HOME/policybind`,
    /// else `~/.local/state/policybind`: outside any source tree.
    #[arg(long, env = "POLICYBIND_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory the audit trail is written to (one JSON file per segment).
    /// Default: `<state-dir>/audit`.
    #[arg(long, env = "POLICYBIND_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Ed25519 signing key for audit segments (PEM or 32 raw bytes). Default:
    /// `<audit-dir>/signing-key.pem`, created if missing.
    #[arg(long, env = "POLICYBIND_AUDIT_KEY")]
    pub audit_key: Option<PathBuf>,
    /// File the budgets' settled spend is kept in, so a restart never resets it:
    /// read before serving (a file that does not read stops the start; delete it,
    /// with the server stopped, to reset spend), written at most once a second and
    /// at shutdown. Default: `<state-dir>/usage.json`.
    #[arg(long, env = "POLICYBIND_USAGE_FILE")]
    pub usage_file: Option<PathBuf>,
    /// Address of the model APIs (OpenAI's and Anthropic's paths).
    #[arg(long, env = "POLICYBIND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(
        long,
        env = "POLICYBIND_HEALTH_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub health_listen: SocketAddr,
    /// Namespace this proxy serves, as a sidecar there would: only tokens valid in it,
    /// models it can resolve (its own, then shared ones) and policies that apply in it
    /// are in force. The directory is read as `policybind test` reads it.
    #[arg(long, env = "POLICYBIND_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Where requests needing approval are held as ApprovalRequest manifests.
    /// Default: `<state-dir>/approvals`.
    #[arg(long, env = "POLICYBIND_APPROVALS_DIR")]
    pub approvals_dir: Option<PathBuf>,
    /// How often the config directory is checked for changes, in milliseconds.
    #[arg(long, env = "POLICYBIND_RELOAD_INTERVAL_MS", default_value_t = 1000)]
    pub reload_interval_ms: u64,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// The writer identity of this process in the audit trail.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// The value of `x-policybind-upstream` while the demo upstream answers.
const DEMO_UPSTREAM_LABEL: &str = "demo";

/// The default state directory: `$XDG_STATE_HOME/policybind` when that is an
/// absolute path (the XDG Base Directory rule), else `$HOME/.local/state/policybind`.
fn default_state_dir(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    let non_empty = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(xdg) = non_empty("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("policybind"));
    }
    match non_empty("HOME") {
        Some(home) => Ok(home.join(".local/state/policybind")),
        None => anyhow::bail!(
            "no state directory: neither XDG_STATE_HOME nor HOME is set; pass --state-dir"
        ),
    }
}

/// Where this run keeps its state.
struct StatePaths {
    audit_dir: PathBuf,
    audit_key: PathBuf,
    approvals_dir: PathBuf,
    usage_file: PathBuf,
}

impl StatePaths {
    fn resolve(args: &ServeArgs) -> anyhow::Result<StatePaths> {
        let state_dir = || match &args.state_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_state_dir(|name| std::env::var(name).ok()),
        };
        let audit_dir = match &args.audit_dir {
            Some(dir) => dir.clone(),
            None => state_dir()?.join("audit"),
        };
        let approvals_dir = match &args.approvals_dir {
            Some(dir) => dir.clone(),
            None => state_dir()?.join("approvals"),
        };
        let usage_file = match &args.usage_file {
            Some(file) => file.clone(),
            None => state_dir()?.join("usage.json"),
        };
        let audit_key = args
            .audit_key
            .clone()
            .unwrap_or_else(|| audit_dir.join("signing-key.pem"));
        Ok(StatePaths {
            audit_dir,
            audit_key,
            approvals_dir,
            usage_file,
        })
    }
}

/// The upstream to forward to, starting the demo upstream when none is given.
/// Returns the URL and the label responses carry.
async fn upstream(args: &ServeArgs) -> anyhow::Result<(String, Option<String>)> {
    if let Some(url) = &args.upstream {
        return Ok((url.clone(), None));
    }
    let addr = policybind_sidecar::fake_upstream::spawn_demo(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("starting the demo upstream")?;
    tracing::warn!(
        upstream = %addr,
        "no --upstream given: using the built-in DEMO upstream, which calls no model and \
         answers \"You said: <your last message>\"; every response carries \
         x-policybind-upstream: demo. Pass --upstream URL for a real server"
    );
    Ok((
        format!("http://{addr}"),
        Some(DEMO_UPSTREAM_LABEL.to_string()),
    ))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.config.is_dir(),
        "--config {} is not a directory",
        args.config.display()
    );
    anyhow::ensure!(
        args.proxy.budget_store != Some(BudgetStoreArg::Leases),
        "--budget-store leases needs the operator's ledger in a cluster; `policybind serve` takes `memory` or `redis://...`"
    );
    let (upstream_url, upstream_label) = upstream(&args).await?;
    let state = StatePaths::resolve(&args)?;
    tracing::info!(
        audit_dir = %state.audit_dir.display(),
        audit_key = %state.audit_key.display(),
        approvals_dir = %state.approvals_dir.display(),
        usage_file = %state.usage_file.display(),
        "standalone state (--state-dir, --audit-dir, --audit-key, --approvals-dir, --usage-file change it)"
    );
    let (key, created) = load_or_create_signing_key(&state.audit_key)
        .with_context(|| format!("audit signing key {}", state.audit_key.display()))?;
    if created {
        tracing::warn!(
            path = %state.audit_key.display(),
            "generated an audit signing key; keep it apart from the trail (--audit-key) if others must trust the trail"
        );
    }
    let writer_id = policybind_crds::wire::writers::standalone(&host_name());
    let writer = directory_writer(&state.audit_dir, key, &writer_id)
        .await
        .with_context(|| format!("audit directory {}", state.audit_dir.display()))?;

    let mut settings = Settings::standalone(args.config.clone(), upstream_url);
    settings.upstream_label = upstream_label;
    settings.listen = args.listen;
    settings.health_listen = args.health_listen;
    settings.namespace = args.namespace.clone();
    settings.writer = writer_id;
    settings.source = SourceSettings::Directory {
        path: args.config.clone(),
        poll_interval: Duration::from_millis(args.reload_interval_ms.max(50)),
    };
    settings.approvals = ApprovalSettings::Directory(state.approvals_dir);
    settings.usage_file = Some(state.usage_file);
    args.proxy.apply(
        &mut settings,
        Some(SocketAddr::from(([127, 0, 0, 1], 8082))),
    );

    let result = policybind_sidecar::run(
        settings,
        Dependencies {
            audit: Arc::new(writer.clone()),
            ledger: None,
            kube: None,
        },
    )
    .await;
    // Every acknowledged record reaches the directory before exiting.
    let flushed = writer.shutdown().await;
    result.context("policybind serve")?;
    flushed.context("writing the last audit records")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_stores_parse_and_never_show_credentials() {
        assert_eq!(parse_budget_store("memory"), Ok(BudgetStoreArg::Memory));
        assert_eq!(parse_budget_store("leases"), Ok(BudgetStoreArg::Leases));
        let redis = parse_budget_store("redis://u:s3cret@h:6379/1").unwrap();
        assert_eq!(format!("{redis:?}"), "Redis(redis://***@h:6379/1)");
        let tls = parse_budget_store("rediss://u:s3cret@h:6379").unwrap();
        assert_eq!(format!("{tls:?}"), "Redis(rediss://***@h:6379)");
        let error = parse_budget_store("redsi://u:s3cret@h:6379").unwrap_err();
        assert!(
            !error.contains("s3cret") && error.contains("redsi://***@h:6379"),
            "{error}"
        );
        let password: Password = "s3cret".parse().unwrap();
        assert_eq!(format!("{:?}", Some(password)), "Some(***)");
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn state_goes_to_the_xdg_state_home_else_under_home() {
        assert_eq!(
            default_state_dir(env(&[("XDG_STATE_HOME", "/x/state"), ("HOME", "/home/u")])).unwrap(),
            PathBuf::from("/x/state/policybind")
        );
        // A relative XDG_STATE_HOME is ignored, as the XDG rules say.
        assert_eq!(
            default_state_dir(env(&[("XDG_STATE_HOME", "state"), ("HOME", "/home/u")])).unwrap(),
            PathBuf::from("/home/u/.local/state/policybind")
        );
        assert!(default_state_dir(env(&[])).is_err());
    }
}
