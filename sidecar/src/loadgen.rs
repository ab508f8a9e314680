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
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let client = Arc::new(client);
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
        .map(|(i, mut l)| {
            l.sort_unstable();
            LoadReport {
                sent: sent[i],
                ok: l.len() as u64,
                failed: failed[i],
                achieved_rate: sent[i] as f64 / first.duration.as_secs_f64(),
                p50_us: percentile(&l, 0.50),
                p90_us: percentile(&l, 0.90),
                p99_us: percentile(&l, 0.99),
                p999_us: percentile(&l, 0.999),
                max_us: l.last().copied().unwrap_or(0),
            }
        })
        .collect())
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
