//! `policybind dashboard`: the read-only dashboard in the browser
//! (policybind-dashboard), under this process's own Kubernetes identity.
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use policybind_dashboard::{Options, State, serve};

/// Serve the read-only dashboard: decisions, denials, approvals, models,
/// budgets, incidents, audit trail verification.
#[derive(Args, Debug)]
#[command(
    after_help = "Viewers sign in with a Kubernetes bearer token (checked with a \
                        TokenReview, never stored) and see a namespace on a page only when \
                        a SubjectAccessReview says they may list what that page shows there. \
                        The process itself needs the rights of the chart's dashboard \
                        ClusterRole (docs/dashboard.md)."
)]
pub struct DashboardArgs {
    /// Address to serve on. Loopback by default: reach it with `kubectl port-forward`
    /// or put it behind a TLS proxy (then pass --secure-cookie).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    cluster: super::cluster::ClusterArgs,
    /// PolicyBind's namespace (the chart's release namespace), where the audit
    /// keyring `policybind-audit-keys` is published.
    #[arg(
        long,
        short = 'n',
        value_name = "NS",
        env = "POLICYBIND_NAMESPACE",
        default_value = "policybind-system"
    )]
    namespace: String,
    /// How old the shared view of the cluster may get before a page reads it again.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    refresh: Duration,
    /// How long a sign-in lasts (sessions are kept in this process's memory).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Sessions kept at most; the oldest ends first.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_sessions: usize,
    /// Mark the session cookie `Secure` (when a TLS proxy serves the dashboard).
    #[arg(long)]
    secure_cookie: bool,
}

pub async fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = args.cluster.client().await?;
    let state = State::new(
        client,
        Options {
            system_namespace: args.namespace,
            refresh: args.refresh,
            session_ttl: args.session_ttl,
            max_sessions: args.max_sessions.max(1),
            secure_cookie: args.secure_cookie,
        },
    );
    serve(args.listen, state, policybind_operator::wait_for_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
