//! `policybind bench`: measure what the enforcement point adds to a request, or
//! (`policybind bench audit`) what the audit writer sustains against a real store.
//!
//! Two modes (see `policybind_sidecar::loadgen`):
//! - rates (default): the same fixed-rate, open-loop load against the upstream
//!   directly and through the sidecar, for each rate; latency percentiles and
//!   their difference, plus the sidecar's memory when its process id is given;
//! - `--connections 1,16`: closed loops on that many kept-alive connections,
//!   the upstream directly, the sidecar, (with `--nginx`) nginx as a plain
//!   reverse proxy and (with `--floor`) a policy-free proxy on the sidecar's
//!   own stack taking turns in slices for `--duration-secs` each; latency
//!   percentiles, the latency each proxy adds, and each proxy's CPU time per
//!   request (`--sidecar-pid`, `--nginx-pid`, `--floor-pid`).
//!
//! Start the upstream (for example the repository's `fake-upstream`) and
//! `policybind serve` first; see docs/sidecar.md.
use std::process::ExitCode;
use std::time::Duration;

use policybind_sidecar::loadgen::{
    ClosedOptions, ClosedReport, ClosedTarget, LoadOptions, LoadReport, histogram_buckets,
    histogram_quantile, memory_kib, run_closed, run_interleaved, run_load,
};

mod audit;
mod flood;

/// Arguments of `policybind bench`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    /// Another measurement instead of the proxy's added latency.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Base URL of the upstream, called directly for the baseline.
    #[arg(
        long,
        env = "POLICYBIND_BENCH_UPSTREAM",
        default_value = "http://127.0.0.1:8000"
    )]
    pub upstream: String,
    /// Base URL of the sidecar (or `policybind serve`) in front of that upstream.
    #[arg(
        long,
        env = "POLICYBIND_BENCH_SIDECAR",
        default_value = "http://127.0.0.1:8080"
    )]
    pub sidecar: String,
    /// Bearer token for the sidecar (an allowed AccessToken value).
    #[arg(
        long,
        env = "POLICYBIND_BENCH_TOKEN",
        hide_env_values = true,
        required = true
    )]
    pub token: Option<String>,
    /// Model named in the requests.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Prompt text of every request.
    #[arg(long, default_value = "Summarise the plot of Hamlet in one sentence.")]
    pub prompt: String,
    /// Request rates to measure, per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "500,1000")]
    pub rates: Vec<u32>,
    /// Seconds measured per rate and target.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Seconds of warm-up at the same rate before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Run the direct and the sidecar load one after the other instead of
    /// interleaved (interleaved is the default: both see the same conditions).
    #[arg(long)]
    pub sequential: bool,
    /// The sidecar's metrics URL (health port), to report its own measure of the
    /// time it adds (`policybind_sidecar_overhead_seconds`), free of client noise.
    #[arg(long, default_value = "http://127.0.0.1:8081/metrics")]
    pub sidecar_metrics: String,
    /// Process id of the sidecar, to report its resident memory and (with
    /// `--connections`) its CPU time per request.
    #[arg(long)]
    pub sidecar_pid: Option<u32>,
    /// Closed-loop mode: numbers of connections to measure, comma-separated
    /// (e.g. `1,16`), instead of fixed rates.
    #[arg(long, value_delimiter = ',')]
    pub connections: Vec<usize>,
    /// Base URL of nginx (or another reverse proxy) in front of the same upstream,
    /// measured side by side in closed-loop mode.
    #[arg(long)]
    pub nginx: Option<String>,
    /// Process id of the nginx master; its workers' CPU time is charged to it.
    #[arg(long)]
    pub nginx_pid: Option<u32>,
    /// Base URL of a policy-free proxy on the sidecar's own stack (the
    /// `bare_proxy` example of policybind-sidecar) in front of the same
    /// upstream, measured side by side in closed-loop mode: what the stack
    /// costs before any policy work.
    #[arg(long)]
    pub floor: Option<String>,
    /// Process id of that floor proxy.
    #[arg(long)]
    pub floor_pid: Option<u32>,
    /// Seconds of each turn in closed-loop mode.
    #[arg(long, default_value_t = 5)]
    pub slice_secs: u64,
}

/// Measurements other than the proxy's.
#[derive(clap::Subcommand, Debug)]
pub enum BenchMode {
    /// The audit writer under sustained load against a real store: decisions/s
    /// recorded and refused, store (API) writes/s, bytes/s, object sizes, queue
    /// and memory. Example against a cluster: `policybind bench audit --store
    /// configmap --namespace bench --rate 5000 --duration-secs 60 --verify`.
    Audit(audit::AuditBenchArgs),
    /// An unauthenticated flood (no token, unknown token) against `policybind
    /// serve` while a valid token keeps being served: the valid requests' success
    /// rate and latency, and the server's memory. Example: `policybind bench flood
    /// --target http://127.0.0.1:8080 --token pb-bench-0000-DEMO-ONLY --flood-rate
    /// 5000 --pid $SERVE_PID`.
    Flood(flood::FloodArgs),
}

fn row(label: &str, rate: u32, r: &LoadReport) {
    println!(
        "{label:<8} {rate:>6} {:>9.1} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        r.achieved_rate, r.ok, r.failed, r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us
    );
}

fn request_body(args: &BenchArgs) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "model": args.model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": args.prompt}],
    }))?)
}

/// The sidecar's bearer token (required unless a subcommand runs).
fn token(args: &BenchArgs) -> anyhow::Result<String> {
    args.token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--token is required"))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.mode {
        Some(BenchMode::Audit(audit)) => return audit::run(audit).await,
        Some(BenchMode::Flood(flood)) => return flood::run(flood).await,
        None => {}
    }
    if !args.connections.is_empty() {
        return run_connections(&args).await;
    }
    run_rates(&args).await
}

/// One rate: the direct and the sidecar report, and the sidecar's own overhead
/// histogram (p50 and p99 bucket bounds with the count), read from its metrics.
async fn measure_rate(
    args: &BenchArgs,
    body: &[u8],
    rate: u32,
) -> anyhow::Result<(LoadReport, LoadReport, Option<((f64, u64), (f64, u64))>)> {
    let path = "/v1/chat/completions";
    let sidecar_token = token(args)?;
    let options = |base: &str, token: Option<String>| LoadOptions {
        url: format!("{}{path}", base.trim_end_matches('/')),
        token,
        body: body.to_vec(),
        rate,
        duration: Duration::from_secs(args.duration_secs),
        warmup: Duration::from_secs(args.warmup_secs),
    };
    let before = scrape(&args.sidecar_metrics).await;
    let (direct, via) = if args.sequential {
        let direct = run_load(&options(&args.upstream, None)).await?;
        let via = run_load(&options(&args.sidecar, Some(sidecar_token.clone()))).await?;
        (direct, via)
    } else {
        let mut reports = run_interleaved(&[
            options(&args.upstream, None),
            options(&args.sidecar, Some(sidecar_token.clone())),
        ])
        .await?;
        let via = reports.pop().unwrap_or_default();
        let direct = reports.pop().unwrap_or_default();
        (direct, via)
    };
    let after = scrape(&args.sidecar_metrics).await;
    let name = "policybind_sidecar_overhead_seconds";
    let (b, a) = (
        histogram_buckets(&before, name),
        histogram_buckets(&after, name),
    );
    let internal = histogram_quantile(&b, &a, 0.5).zip(histogram_quantile(&b, &a, 0.99));
    Ok((direct, via, internal))
}

/// Rate mode: open-loop fixed rates, direct and through the sidecar.
async fn run_rates(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let body = request_body(args)?;
    println!(
        "{:<8} {:>6} {:>9} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "target",
        "rate",
        "achieved",
        "ok",
        "failed",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us"
    );
    let mut summary = vec![];
    let mut internals = vec![];
    for &rate in &args.rates {
        let (direct, via, internal) = measure_rate(args, &body, rate).await?;
        row("direct", rate, &direct);
        row("sidecar", rate, &via);
        internals.push((rate, internal));
        summary.push((
            rate,
            via.p50_us as i64 - direct.p50_us as i64,
            via.p99_us as i64 - direct.p99_us as i64,
            via.failed,
        ));
    }
    println!();
    for (rate, p50, p99, failed) in summary {
        println!(
            "added latency at {rate} req/s: p50 {p50} us, p99 {p99} us ({failed} failed through the sidecar)"
        );
    }
    for (rate, internal) in internals {
        match internal {
            Some(((p50, n), (p99, _))) => println!(
                "sidecar's own overhead at {rate} req/s ({n} forwarded, warm-up included): p50 <= {:.0} us, p99 <= {:.0} us (histogram bucket bounds)",
                p50 * 1e6,
                p99 * 1e6
            ),
            None => println!(
                "sidecar's own overhead at {rate} req/s: no metrics at {}",
                args.sidecar_metrics
            ),
        }
    }
    if let Some(pid) = args.sidecar_pid {
        match memory_kib(pid) {
            Some((rss, peak)) => println!(
                "sidecar memory: RSS {:.1} MiB, peak RSS {:.1} MiB",
                rss as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            None => println!("sidecar memory: cannot read /proc/{pid}/status"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of a metrics endpoint, or an empty string.
async fn scrape(url: &str) -> String {
    policybind_sidecar::loadgen::get_text(url)
        .await
        .unwrap_or_default()
}

fn closed_row(connections: usize, r: &ClosedReport) {
    println!(
        "{:<8} {connections:>5} {:>9.0} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10.1}",
        r.name,
        r.throughput,
        r.requests,
        r.failed,
        r.p50_us,
        r.p90_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.cpu_us_per_request
    );
}

/// Closed-loop mode: direct, sidecar, nginx and the floor proxy side by side
/// per connection count.
async fn run_connections(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let body = request_body(args)?;
    let sidecar_token = token(args)?;
    let path = "/v1/chat/completions";
    let target = |name: &str, base: &str, token: Option<String>, pid: Option<u32>| ClosedTarget {
        name: name.to_string(),
        url: format!("{}{path}", base.trim_end_matches('/')),
        token,
        body: body.clone(),
        pids: pid.into_iter().collect(),
    };
    let mut targets = vec![
        target("direct", &args.upstream, None, None),
        target(
            "sidecar",
            &args.sidecar,
            Some(sidecar_token.clone()),
            args.sidecar_pid,
        ),
    ];
    if let Some(nginx) = &args.nginx {
        targets.push(target("nginx", nginx, None, args.nginx_pid));
    }
    if let Some(floor) = &args.floor {
        targets.push(target("floor", floor, None, args.floor_pid));
    }
    println!(
        "{:<8} {:>5} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "target",
        "conns",
        "req/s",
        "ok",
        "failed",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "cpu_us/req"
    );
    let mut summary = vec![];
    for &connections in &args.connections {
        let options = ClosedOptions {
            connections,
            duration: Duration::from_secs(args.duration_secs),
            slice: Duration::from_secs(args.slice_secs.max(1)),
            warmup: Duration::from_secs(args.warmup_secs),
        };
        let reports = run_closed(&targets, options).await?;
        reports.iter().for_each(|r| closed_row(connections, r));
        summary.push((connections, reports));
    }
    println!();
    for (connections, reports) in &summary {
        let direct = &reports[0];
        for proxy in &reports[1..] {
            println!(
                "{} at {connections} connection(s): added p50 {} us, added p99 {} us, CPU {:.1} us per request",
                proxy.name,
                proxy.p50_us as i64 - direct.p50_us as i64,
                proxy.p99_us as i64 - direct.p99_us as i64,
                proxy.cpu_us_per_request
            );
        }
        let named = |name: &str| reports.iter().find(|r| r.name == name);
        let added = |r: &ClosedReport| (r.p50_us as f64 - direct.p50_us as f64).max(1.0);
        let pairs = [
            ("sidecar", "nginx"),
            ("floor", "nginx"),
            ("sidecar", "floor"),
        ];
        for (a, b) in pairs {
            if let (Some(a), Some(b)) = (named(a), named(b)) {
                println!(
                    "{} / {} at {connections} connection(s): added p50 {:.2}x, CPU per request {:.2}x",
                    a.name,
                    b.name,
                    added(a) / added(b),
                    a.cpu_us_per_request / b.cpu_us_per_request.max(f64::MIN_POSITIVE)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
