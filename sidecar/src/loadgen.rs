//! A fixed-rate load generator, to measure what the sidecar adds to a request
//! (DESIGN.md section 10: added p50 under 150 µs, p99 under 1 ms at 1,000
//! requests/s on loopback). `policybind bench` drives it.
//!
//! The load is open-loop: requests are sent on a fixed schedule whatever the
//! answers do, and each latency is measured from the request's scheduled time,
//! not from when it was actually sent. A closed loop (send, wait, send) would
//! slow down with the server and hide exactly the queueing a slow sidecar
//! causes ("coordinated omission").
//!
//! Added latency is measured by running the same schedule against the upstream
//! directly and through the sidecar, and comparing percentiles.
//!
//! [`run_closed`] is the other mode: a fixed number of connections, each
//! sending its next request as soon as the last answer is read (at one
//! connection, the latency of a lone caller; at sixteen, a busy one), with the
//! targets (the upstream directly, the sidecar, nginx as a plain reverse proxy)
//! taking turns in short slices for as long as asked, and the CPU time of each
//! proxy's processes charged per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// One run: where, what, how fast, how long.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Full URL to POST to, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
    pub url: String,
    /// Bearer token, if the target needs one.
    pub token: Option<String>,
    /// JSON body sent with every request.
    pub body: Vec<u8>,
    /// Requests per second.
    pub rate: u32,
    /// Measured duration (after warm-up).
    pub duration: Duration,
    /// Time at the same rate before measuring (connection pools, caches).
    pub warmup: Duration,
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub achieved_rate: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("rate must be positive")]
    Rate,
}

/// Runs one fixed-rate load and reports its latencies.
pub async fn run_load(options: &LoadOptions) -> Result<LoadReport, LoadError> {
    let mut reports = run_interleaved(std::slice::from_ref(options)).await?;
    Ok(reports.remove(0))
}

/// Runs several targets at once, interleaved: tick `i` goes to target
/// `i % n`, each target at its own `rate` (the `rate`, `duration` and `warmup` of
/// the first options apply to all). Interleaving makes the targets share the
/// same moment-to-moment conditions (CPU contention, scheduler noise), so their
/// difference is a fairer measure than two runs one after the other.
pub async fn run_interleaved(targets: &[LoadOptions]) -> Result<Vec<LoadReport>, LoadError> {
    let Some(first) = targets.first() else {
        return Ok(vec![]);
    };
    if first.rate == 0 {
        return Err(LoadError::Rate);
    }
    let n = targets.len();
    let mut uris = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for t in targets {
        let uri: http::Uri = t.url.parse().map_err(|_| LoadError::Url(t.url.clone()))?;
        uris.push(uri);
        bodies.push(Bytes::from(t.body.clone()));
    }
    let client = Arc::new(plain_client());
    let period = Duration::from_secs_f64(1.0 / (f64::from(first.rate) * n as f64));
    let total = first.warmup + first.duration;
    let begin = Instant::now();
    let measure_from = begin + first.warmup;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, bool, u64)>();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = vec![0u64; n];
    let mut tick = 0usize;
    loop {
        let scheduled = ticker.tick().await.into_std();
        if scheduled.duration_since(begin) >= total {
            break;
        }
        let target = tick % n;
        tick += 1;
        let measured = scheduled >= measure_from;
        sent[target] += u64::from(measured);
        let client = client.clone();
        let tx = tx.clone();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uris[target].clone())
            .header("content-type", "application/json");
        if let Some(token) = &targets[target].token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(bodies[target].clone()))
            .expect("a valid request");
        tokio::spawn(async move {
            let ok = match client.request(request).await {
                Ok(response) => {
                    let success = response.status().is_success();
                    success && response.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            if measured {
                let micros = scheduled.elapsed().as_micros() as u64;
                let _ = tx.send((target, ok, micros));
            }
        });
    }
    drop(tx);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut failed = vec![0u64; n];
    while let Some((target, ok, micros)) = rx.recv().await {
        if ok {
            latencies[target].push(micros);
        } else {
            failed[target] += 1;
        }
    }
    Ok(latencies
        .into_iter()
        .enumerate()
        .map(|(i, l)| report(sent[i], failed[i], l, first.duration))
        .collect())
}

/// A pooled HTTP/1.1 client with `TCP_NODELAY`, as load generators use.
fn plain_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// The report of one target from its latencies (microseconds) over `duration`.
fn report(sent: u64, failed: u64, mut latencies: Vec<u64>, duration: Duration) -> LoadReport {
    latencies.sort_unstable();
    LoadReport {
        sent,
        ok: latencies.len() as u64,
        failed,
        achieved_rate: sent as f64 / duration.as_secs_f64(),
        p50_us: percentile(&latencies, 0.50),
        p90_us: percentile(&latencies, 0.90),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        max_us: latencies.last().copied().unwrap_or(0),
    }
}

/// One target of a closed-loop run: where, what, and the processes whose CPU
/// time is charged to it (empty for the upstream called directly).
#[derive(Debug, Clone)]
pub struct ClosedTarget {
    pub name: String,
    /// Full URL to POST to.
    pub url: String,
    pub token: Option<String>,
    pub body: Vec<u8>,
    /// Processes to charge CPU time to (their children too: nginx's workers).
    pub pids: Vec<u32>,
}

/// How a closed-loop run is paced.
#[derive(Debug, Clone, Copy)]
pub struct ClosedOptions {
    /// Connections, each sending its next request as soon as the last answer is read.
    pub connections: usize,
    /// Measured time per target, in total.
    pub duration: Duration,
    /// The targets take turns in slices this long, so each sees the same
    /// moment-to-moment conditions (other builds, the load generator itself).
    pub slice: Duration,
    /// Unmeasured time per target before the first slice.
    pub warmup: Duration,
}

/// Latencies and CPU time of one target in a closed-loop run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClosedReport {
    pub name: String,
    pub requests: u64,
    pub failed: u64,
    pub throughput: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU time of the target's processes while it was measured, in seconds.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per successful request, in microseconds (0 without pids).
    pub cpu_us_per_request: f64,
}

/// Runs every target with `connections` closed loops, in alternating slices.
pub async fn run_closed(
    targets: &[ClosedTarget],
    options: ClosedOptions,
) -> Result<Vec<ClosedReport>, LoadError> {
    let mut uris = Vec::with_capacity(targets.len());
    for t in targets {
        uris.push(
            t.url
                .parse::<http::Uri>()
                .map_err(|_| LoadError::Url(t.url.clone()))?,
        );
    }
    for (target, uri) in targets.iter().zip(&uris) {
        slice(target, uri, options.connections, options.warmup).await;
    }
    let mut latencies: Vec<Vec<u64>> = vec![vec![]; targets.len()];
    let mut failed = vec![0u64; targets.len()];
    let mut cpu = vec![0f64; targets.len()];
    let mut measured = vec![Duration::ZERO; targets.len()];
    let mut round = 0usize;
    while measured.iter().any(|m| *m < options.duration) {
        for k in 0..targets.len() {
            // Rotate who goes first, so no target always follows the same one.
            let i = (k + round) % targets.len();
            let before = cpu_seconds(&targets[i].pids);
            let started = Instant::now();
            let (ok, bad) = slice(&targets[i], &uris[i], options.connections, options.slice).await;
            measured[i] += started.elapsed();
            cpu[i] += cpu_seconds(&targets[i].pids) - before;
            latencies[i].extend(ok);
            failed[i] += bad;
        }
        round += 1;
    }
    Ok(targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let l = &mut latencies[i];
            l.sort_unstable();
            let requests = l.len() as u64;
            ClosedReport {
                name: t.name.clone(),
                requests,
                failed: failed[i],
                throughput: requests as f64 / measured[i].as_secs_f64(),
                p50_us: percentile(l, 0.50),
                p90_us: percentile(l, 0.90),
                p99_us: percentile(l, 0.99),
                p999_us: percentile(l, 0.999),
                max_us: l.last().copied().unwrap_or(0),
                cpu_seconds: cpu[i],
                cpu_us_per_request: if t.pids.is_empty() || requests == 0 {
                    0.0
                } else {
                    cpu[i] * 1e6 / requests as f64
                },
            }
        })
        .collect())
}

/// One slice: `connections` loops of back-to-back requests on kept-alive
/// connections until `length` has passed. Returns the latencies of the
/// successful requests and the number that failed.
async fn slice(
    target: &ClosedTarget,
    uri: &http::Uri,
    connections: usize,
    length: Duration,
) -> (Vec<u64>, u64) {
    let deadline = Instant::now() + length;
    let body = Bytes::from(target.body.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (uri, body, token) = (uri.clone(), body.clone(), target.token.clone());
        tasks.spawn(async move {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector);
            let (mut ok, mut failed) = (Vec::with_capacity(4096), 0u64);
            while Instant::now() < deadline {
                let mut builder = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .header("content-type", "application/json");
                if let Some(token) = &token {
                    builder = builder.header("authorization", format!("Bearer {token}"));
                }
                let request = builder
                    .body(Full::new(body.clone()))
                    .expect("a valid request");
                let sent = Instant::now();
                let success = match client.request(request).await {
                    Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if success {
                    ok.push(sent.elapsed().as_micros() as u64);
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (vec![], 0);
    while let Some(Ok((o, f))) = tasks.join_next().await {
        ok.extend(o);
        failed += f;
    }
    (ok, failed)
}

/// User plus system CPU time of processes and their children, in seconds
/// (Linux `/proc`, clock ticks of 1/100 s).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let mut all: Vec<u32> = pids.to_vec();
    if !pids.is_empty()
        && let Ok(entries) = std::fs::read_dir("/proc")
    {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat_of(pid)
                && pids.contains(&ppid)
                && !all.contains(&pid)
            {
                all.push(pid);
            }
        }
    }
    all.iter()
        .filter_map(|pid| stat_of(*pid).map(|(_, ticks)| ticks))
        .sum::<u64>() as f64
        / 100.0
}

/// Parent pid and utime + stime ticks of a process.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `GET` a URL and return its body as text (for scraping metrics).
pub async fn get_text(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(bytes.to_vec()).ok()
}

/// Cumulative bucket counts (`le` bound in seconds, count) of a histogram in
/// Prometheus text output.
pub fn histogram_buckets(metrics: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Upper bucket bounds (seconds) holding quantile `q` of the observations made
/// between two snapshots of the same histogram, and how many there were.
pub fn histogram_quantile(
    before: &[(f64, u64)],
    after: &[(f64, u64)],
    q: f64,
) -> Option<(f64, u64)> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map(|(_, c)| *c)
                .unwrap_or(0);
            (*le, count.saturating_sub(earlier))
        })
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let wanted = (q * total as f64).ceil() as u64;
    delta
        .iter()
        .find(|(_, count)| *count >= wanted)
        .map(|(le, _)| (*le, total))
}

/// Resident and peak resident memory of a process, in KiB, from `/proc` (Linux).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_come_from_bucket_differences() {
        let before =
            "x_bucket{le=\"0.001\"} 5\nx_bucket{le=\"0.002\"} 10\nx_bucket{le=\"+Inf\"} 10\n";
        let after =
            "x_bucket{le=\"0.001\"} 95\nx_bucket{le=\"0.002\"} 109\nx_bucket{le=\"+Inf\"} 110\n";
        let (b, a) = (
            histogram_buckets(before, "x"),
            histogram_buckets(after, "x"),
        );
        assert_eq!(a.len(), 3);
        assert_eq!(histogram_quantile(&b, &a, 0.5), Some((0.001, 100)));
        assert_eq!(histogram_quantile(&b, &a, 0.99), Some((0.002, 100)));
        assert_eq!(histogram_quantile(&b, &a, 1.0), Some((f64::INFINITY, 100)));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.5), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&samples, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.999), 7);
    }
}
