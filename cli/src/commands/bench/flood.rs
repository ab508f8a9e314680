//! `policybind bench flood`: an unauthenticated flood against `policybind serve`
//! (or a sidecar) while one valid token keeps being served.
//!
//! Two open-loop loads run at once for the same duration: the flood, half its
//! requests without a token and half with a token the server does not know, and
//! the valid load, with a real token. Reported: the valid requests' success
//! rate and latency, what the flood got answered, and (with `--pid`) the
//! server's resident memory sampled every second. The audit records and log
//! lines the flood caused are counted outside, from the server's trail and log
//! (see docs/audit.md "Performance").
use std::process::ExitCode;
use std::time::Duration;

use policybind_sidecar::loadgen::{LoadOptions, LoadReport, memory_kib, run_interleaved, run_load};

/// Arguments of `policybind bench flood`.
#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    /// Base URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// A valid bearer token (an allowed AccessToken value), served throughout.
    #[arg(long, env = "POLICYBIND_BENCH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Unauthenticated requests per second, in total (half without a token, half
    /// with an unknown one).
    #[arg(long, default_value_t = 5_000)]
    pub flood_rate: u32,
    /// Valid requests per second.
    #[arg(long, default_value_t = 100)]
    pub valid_rate: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Seconds of warm-up at the same rates before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Model named in the requests.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Process id of the server, to sample its resident memory.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// A token the server cannot know: the right shape, random content.
const UNKNOWN_TOKEN: &str = "pb-flood-0000-not-a-real-token-0000000000";

pub async fn run(args: FloodArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.flood_rate >= 2 && args.valid_rate >= 1,
        "--flood-rate must be at least 2 and --valid-rate at least 1"
    );
    let body = serde_json::to_vec(&serde_json::json!({
        "model": args.model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello."}],
    }))?;
    let url = format!("{}/v1/chat/completions", args.target.trim_end_matches('/'));
    let options = |token: Option<&str>, rate: u32| LoadOptions {
        url: url.clone(),
        token: token.map(str::to_string),
        body: body.clone(),
        rate,
        duration: Duration::from_secs(args.duration_secs),
        warmup: Duration::from_secs(args.warmup_secs),
    };
    let flood = [
        options(None, args.flood_rate / 2),
        options(Some(UNKNOWN_TOKEN), args.flood_rate / 2),
    ];
    let valid = options(Some(&args.token), args.valid_rate);
    let total = Duration::from_secs(args.warmup_secs + args.duration_secs);
    let sampler = tokio::spawn(sample_memory(args.pid, total));
    let (flood, valid) = tokio::join!(run_interleaved(&flood), run_load(&valid));
    let (flood, valid) = (flood?, valid?);
    let memory = sampler.await?;
    print_report(&args, &flood, &valid, memory);
    Ok(if valid.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Resident memory of `pid` every second for `total`: (first, last, peak) KiB.
async fn sample_memory(pid: Option<u32>, total: Duration) -> Option<(u64, u64, u64)> {
    let pid = pid?;
    let (first, _) = memory_kib(pid)?;
    let (mut last, mut peak) = (first, first);
    let deadline = tokio::time::Instant::now() + total;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((rss, _)) = memory_kib(pid) {
            last = rss;
            peak = peak.max(rss);
        }
    }
    Some((first, last, peak))
}

fn print_report(
    args: &FloodArgs,
    flood: &[LoadReport],
    valid: &LoadReport,
    memory: Option<(u64, u64, u64)>,
) {
    let sent: u64 = flood.iter().map(|r| r.sent).sum();
    let accepted: u64 = flood.iter().map(|r| r.ok).sum();
    println!(
        "flood: {sent} unauthenticated requests in {} s ({:.0}/s; half without a token, half \
         with an unknown one), {accepted} of them answered 2xx (must be 0)",
        args.duration_secs,
        sent as f64 / args.duration_secs as f64
    );
    let served = if valid.sent == 0 {
        0.0
    } else {
        100.0 * valid.ok as f64 / valid.sent as f64
    };
    println!(
        "valid: {} sent ({:.0}/s), {} served ({served:.2} %), {} failed; latency from the \
         scheduled time p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        valid.sent,
        valid.achieved_rate,
        valid.ok,
        valid.failed,
        valid.p50_us,
        valid.p90_us,
        valid.p99_us,
        valid.p999_us,
        valid.max_us
    );
    if let Some((first, last, peak)) = memory {
        println!(
            "server resident memory: {:.1} MiB before, {:.1} MiB after, peak {:.1} MiB",
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}
