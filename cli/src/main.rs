//! `policybind`: one binary for every role and tool.
//!
//! A thin main: parse arguments, set up logging, hand over to the subcommand's
//! module. Logic lives in the library crates.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod load;

/// PolicyBind governs how an organisation uses AI models: policies, model
/// registry, scoped tokens, enforcement and a tamper-evident audit trail.
#[derive(Parser, Debug)]
#[command(name = "policybind", version, about, long_about = None)]
struct Cli {
    /// Log format: `text` (default; coloured only when stderr is a terminal and
    /// NO_COLOR is unset) or `json` (structured, one object per line; the Helm
    /// chart sets it for the operator and webhook).
    #[arg(
        long,
        global = true,
        env = "POLICYBIND_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CustomResourceDefinition as YAML, or write them to a directory.
    Crds(commands::crds::CrdsArgs),
    /// Run policy tests (kind PolicyTest) found in files and directories.
    #[command(
        after_help = "Exit status: 0 every selected case passed; 1 a case failed; 2 the run could not \
                      be made (inputs unreadable, policies not compiling, no PolicyTest, no case \
                      selected, a case whose request is invalid, a report that cannot be written)."
    )]
    Test(commands::test::TestArgs),
    /// Decide one request against the manifests given and explain the decision.
    #[command(
        after_help = "Exit status: 0 decided (whatever the effect); 1 the effect is one that \
                      --fail-on (or --fail-on-deny) names; 2 the inputs could not be read or the \
                      policies do not compile."
    )]
    Eval(commands::eval::EvalArgs),
    /// Check, export and follow the audit trail.
    Audit(commands::audit::AuditArgs),
    /// Run the operator: controllers for every PolicyBind kind and the per-namespace policy bundles.
    Controller(commands::controller::ControllerArgs),
    /// Run the admission webhook (validate resources, gate AI workloads, inject the
    /// sidecar), or print its webhook configurations (`webhook configs`).
    Webhook(commands::webhook::WebhookArgs),
    /// Run the enforcement point standalone: manifests from a directory (reloaded on
    /// change), an OpenAI-compatible upstream, the audit trail in a directory.
    Serve(commands::serve::ServeArgs),
    /// Run the enforcement sidecar in a pod (configured by the injecting webhook's
    /// environment): the namespace's policy bundle, ConfigMap audit trail.
    Sidecar(commands::sidecar::SidecarArgs),
    /// Measure the latency the enforcement point adds, at fixed request rates.
    Bench(commands::bench::BenchArgs),
    /// List the Prometheus metrics every role exports (for dashboard and alert checks).
    #[command(hide = true)]
    Metrics(commands::metrics::MetricsArgs),
    /// Signed compliance reports (EU AI Act, NIST AI RMF, ISO/IEC 42001, SOC 2) and
    /// serious-incident reports; `report verify` checks them.
    Report(Box<commands::report::ReportArgs>),
    /// Check PolicyBind's health in the cluster: CRDs, webhook, operator leader,
    /// bundles, sidecars, audit keys; one line per check, with what to run.
    Check(commands::check::CheckArgs),
    /// Serve the read-only dashboard in the browser, behind Kubernetes authentication.
    Dashboard(commands::dashboard::DashboardArgs),
    /// Access tokens: `token create --from-text "<sentence>"` writes a manifest from plain words.
    Token(commands::token::TokenArgs),
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: `kubectl logs`, files and log
    // collectors get plain text (NO_COLOR turns them off everywhere).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Crds(args) => commands::crds::run(args),
        Command::Test(args) => commands::test::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Audit(args) => commands::audit::run(args).await,
        Command::Controller(args) => commands::controller::run(args).await,
        Command::Webhook(args) => commands::webhook::run(args).await,
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Sidecar(args) => commands::sidecar::run(args).await,
        Command::Bench(args) => commands::bench::run(args).await,
        Command::Metrics(args) => commands::metrics::run(args),
        Command::Report(args) => commands::report::run(*args).await,
        Command::Token(args) => commands::token::run(args).await,
        Command::Check(args) => commands::check::run(args).await,
        Command::Dashboard(args) => commands::dashboard::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
