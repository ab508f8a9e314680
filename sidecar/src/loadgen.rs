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
    if options.rate == 0 {
        return Err(LoadError::Rate);
    }
    let uri: http::Uri = options
        .url
        .parse()
        .map_err(|_| LoadError::Url(options.url.clone()))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let client = Arc::new(client);
    let body = Bytes::from(options.body.clone());
    let period = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    let total = options.warmup + options.duration;
    let begin = Instant::now();
    let measure_from = begin + options.warmup;
    let (tx, mut rx) = mpsc::unbounded_channel::<(bool, u64)>();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    loop {
        let scheduled = ticker.tick().await.into_std();
        if scheduled.duration_since(begin) >= total {
            break;
        }
        let measured = scheduled >= measure_from;
        sent += u64::from(measured);
        let client = client.clone();
        let tx = tx.clone();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header("content-type", "application/json");
        if let Some(token) = &options.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(body.clone()))
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
                let _ = tx.send((ok, micros));
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(sent as usize);
    let mut failed = 0;
    while let Some((ok, micros)) = rx.recv().await {
        if ok {
            latencies.push(micros);
        } else {
            failed += 1;
        }
    }
    latencies.sort_unstable();
    Ok(LoadReport {
        sent,
        ok: latencies.len() as u64,
        failed,
        achieved_rate: sent as f64 / options.duration.as_secs_f64(),
        p50_us: percentile(&latencies, 0.50),
        p90_us: percentile(&latencies, 0.90),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        max_us: latencies.last().copied().unwrap_or(0),
    })
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
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.5), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&samples, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.999), 7);
    }
}
