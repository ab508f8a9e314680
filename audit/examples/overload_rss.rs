//! Profiling aid: a directory-store writer under sustained overload, and the
//! process's resident memory while it lasts.
//! `cargo run --release -p policybind-audit --example overload_rss -- DIR [SECONDS] [QUEUE_MIB]`
//! Two threads append as fast as they can (far beyond what the store takes),
//! as `policybind bench audit --store dir --rate 150000` does; every second
//! prints RSS, the writer's queue and records accepted and refused. Run it
//! with and without `MALLOC_MMAP_THRESHOLD_=131072` to see what glibc's
//! dynamic mmap threshold costs (docs/audit.md, "Performance"). It writes
//! gigabytes to DIR: remove it afterwards.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use policybind_audit::sample::decision;
use policybind_audit::{AuditConfig, AuditWriter, DirectoryStore};
use policybind_engine::audit::AuditSigningKey;

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let queue_mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let key = AuditSigningKey::from_seed(&[7; 32]);
    let writer_id = format!("sidecar/bench/rss-{}", std::process::id());
    let mut config = AuditConfig::new(writer_id, key);
    config.queue_capacity_bytes = queue_mib << 20;
    config.flush_interval = Duration::from_millis(200);
    config.max_segment_bytes = 4 << 20;
    let store = Arc::new(DirectoryStore::open(&dir).unwrap());
    let writer = AuditWriter::start(config, store).await.unwrap();
    let (accepted, refused, next) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let (writer, accepted, refused, next, stop) = (
                writer.clone(),
                accepted.clone(),
                refused.clone(),
                next.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    match writer.append(decision(n)) {
                        Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, peak) = rss_kib();
        println!(
            "{:>3.0} s RSS {:.1} MiB peak {:.1} MiB queue {:.1} MiB accepted {} refused {}",
            started.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            peak as f64 / 1024.0,
            writer.stats().queued_bytes as f64 / 1048576.0,
            accepted.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.join().unwrap();
    }
    writer.shutdown().await.unwrap();
}
