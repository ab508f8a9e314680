//! `policybind bench audit`: the audit writer under sustained load against a
//! real store (a directory, or ConfigMaps on a real API server).
//!
//! Producer threads append realistic decision records at a fixed total rate
//! (open loop: a producer that falls behind appends at once to catch up, it
//! never skips); the writer runs exactly as in the sidecar. A counting wrapper
//! around the store sees every write. Reported: decisions recorded per second
//! and refused, store (API) writes per second, bytes per second, the largest
//! object, records per write, the writer's largest queue, the process's peak
//! resident memory, and optionally the time to verify what was written.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_audit::sample::decision;
use policybind_audit::{
    AuditConfig, AuditWriter, ConfigMapStore, DirectoryStore, Error, RawSegment, SegmentObject,
    SegmentStore, StoreProfile, verify_stored,
};
use policybind_engine::audit::{AuditSigningKey, Keyring, VerifyOptions};

/// Which store to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// ConfigMaps in --namespace, through the API server of the kubeconfig.
    Configmap,
    /// Segment files in --dir.
    Dir,
}

/// Arguments of `policybind bench audit`.
#[derive(clap::Args, Debug)]
pub struct AuditBenchArgs {
    /// The store to write to.
    #[arg(long, value_enum)]
    pub store: StoreKind,
    /// Namespace of the ConfigMap store.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Kubeconfig for the ConfigMap store (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Directory of the directory store (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Decisions per second to append, in total.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds of sustained load.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Threads appending (as request handlers do).
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// The writer's queue budget, MiB (default: the writer's own default).
    #[arg(long, default_value_t = policybind_audit::DEFAULT_QUEUE_CAPACITY_BYTES >> 20)]
    pub queue_mib: usize,
    /// Writer identity (unique per run: a new pod name).
    #[arg(long)]
    pub writer: Option<String>,
    /// After shutdown, verify what was written and time it.
    #[arg(long)]
    pub verify: bool,
}

/// Counts what reaches the store.
struct Counting {
    inner: Arc<dyn SegmentStore>,
    writes: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicUsize,
    failures: AtomicU64,
}

impl SegmentStore for Counting {
    fn put<'a>(&'a self, object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let result = self.inner.put(object).await;
            match &result {
                Ok(()) => {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    self.bytes
                        .fetch_add(object.body.len() as u64, Ordering::Relaxed);
                    self.largest.fetch_max(object.body.len(), Ordering::Relaxed);
                }
                Err(_) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            result
        }
        .boxed()
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<RawSegment>, Error>> {
        self.inner.list()
    }
    fn names<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>> {
        self.inner.names(writer)
    }
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<RawSegment>, Error>> {
        self.inner.get(name)
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.delete(name)
    }
    fn profile(&self) -> StoreProfile {
        self.inner.profile()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn peak_rss_kib() -> Option<(u64, u64)> {
    policybind_sidecar::loadgen::memory_kib(std::process::id())
}

async fn store_for(args: &AuditBenchArgs) -> anyhow::Result<Arc<dyn SegmentStore>> {
    Ok(match args.store {
        StoreKind::Dir => {
            let dir = args.dir.as_ref().context("--store dir needs --dir")?;
            Arc::new(DirectoryStore::open(dir)?)
        }
        StoreKind::Configmap => {
            let options = kube::config::KubeConfigOptions::default();
            let config = match &args.kubeconfig {
                Some(path) => {
                    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
                    kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
                }
                None => kube::Config::from_kubeconfig(&options).await?,
            };
            let client = kube::Client::try_from(config)?;
            Arc::new(ConfigMapStore::new(client, &args.namespace).with_pod("bench"))
        }
    })
}

/// What the producers did.
#[derive(Default)]
struct Produced {
    accepted: AtomicU64,
    refused: AtomicU64,
    next: AtomicU64,
}

/// Append at `rate` per second from `producers` threads for `duration`.
fn produce(
    writer: &AuditWriter,
    rate: u64,
    producers: usize,
    duration: Duration,
    produced: &Arc<Produced>,
) {
    let start = Instant::now();
    let per_thread = rate as f64 / producers as f64;
    std::thread::scope(|scope| {
        for _ in 0..producers {
            let (writer, produced) = (writer.clone(), produced.clone());
            scope.spawn(move || {
                let mut done = 0u64;
                loop {
                    let elapsed = start.elapsed();
                    if elapsed >= duration {
                        return;
                    }
                    let due = (elapsed.as_secs_f64() * per_thread) as u64;
                    while done < due {
                        let n = produced.next.fetch_add(1, Ordering::Relaxed);
                        match writer.append(decision(n)) {
                            Ok(_) => produced.accepted.fetch_add(1, Ordering::Relaxed),
                            Err(_) => produced.refused.fetch_add(1, Ordering::Relaxed),
                        };
                        done += 1;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
        }
    });
}

pub async fn run(args: AuditBenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.producers == 0 || args.rate == 0 {
        bail!("--producers and --rate must be positive");
    }
    let store = Arc::new(Counting {
        inner: store_for(&args).await?,
        writes: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        largest: AtomicUsize::new(0),
        failures: AtomicU64::new(0),
    });
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = AuditSigningKey::from_seed(&seed);
    let writer_id = args.writer.clone().unwrap_or_else(|| {
        format!(
            "sidecar/{}/bench-{}",
            args.namespace,
            &hex::encode(seed)[..8]
        )
    });
    let mut config = AuditConfig::new(writer_id.clone(), key.clone());
    config.queue_capacity_bytes = args.queue_mib << 20;
    if args.store == StoreKind::Dir {
        config.flush_interval = Duration::from_millis(200);
        config.max_segment_bytes = policybind_sidecar::audit::DIRECTORY_SEGMENT_BYTES;
    }
    let writer = AuditWriter::start(config, store.clone()).await?;
    let produced = Arc::new(Produced::default());
    let duration = Duration::from_secs(args.duration_secs);
    let sampling = Arc::new(AtomicBool::new(true));
    let max_queue = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (writer, sampling, max_queue) = (writer.clone(), sampling.clone(), max_queue.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                max_queue.fetch_max(writer.stats().queued_bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let load = {
        let (writer, produced) = (writer.clone(), produced.clone());
        tokio::task::spawn_blocking(move || {
            produce(&writer, args.rate, args.producers, duration, &produced)
        })
    };
    load.await?;
    let loaded_for = started.elapsed();
    let writes_during_load = store.writes.load(Ordering::Relaxed);
    let bytes_during_load = store.bytes.load(Ordering::Relaxed);
    let shutdown_started = Instant::now();
    let report = writer.shutdown().await?;
    let shutdown_took = shutdown_started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let stats = writer.stats();
    print_results(
        &args,
        &produced,
        &store,
        loaded_for,
        writes_during_load,
        bytes_during_load,
        &max_queue,
    );
    println!(
        "shutdown: {:.2} s; last seq {}, in the store {}; store failures {}, refusals by the store: split {}, renamed {}, quarantined {}",
        shutdown_took.as_secs_f64(),
        report.last_seq,
        report.persisted_seq,
        stats.store_failures,
        stats.segments_split,
        stats.segments_renamed,
        stats.segments_quarantined
    );
    if args.verify {
        verify_written(store.as_ref(), &writer_id, &key).await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_results(
    args: &AuditBenchArgs,
    produced: &Produced,
    store: &Counting,
    loaded_for: Duration,
    writes: u64,
    bytes: u64,
    max_queue: &AtomicU64,
) {
    let seconds = loaded_for.as_secs_f64();
    let accepted = produced.accepted.load(Ordering::Relaxed);
    let refused = produced.refused.load(Ordering::Relaxed);
    println!(
        "store: {} | target {} decisions/s for {} s, {} producer thread(s)",
        store.describe(),
        args.rate,
        args.duration_secs,
        args.producers
    );
    println!(
        "decisions: {accepted} recorded ({:.0}/s), {refused} refused",
        accepted as f64 / seconds
    );
    println!(
        "store writes during load: {writes} ({:.2}/s), {:.1} KiB/s, {:.0} records per write, largest object {} bytes",
        writes as f64 / seconds,
        bytes as f64 / seconds / 1024.0,
        accepted as f64 / writes.max(1) as f64,
        store.largest.load(Ordering::Relaxed)
    );
    let (rss, peak) = peak_rss_kib().unwrap_or_default();
    println!(
        "writer queue: largest {:.1} MiB; process memory: RSS {:.1} MiB, peak {:.1} MiB",
        max_queue.load(Ordering::Relaxed) as f64 / 1048576.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    // The memory figures depend on it (docs/audit.md, "Performance").
    println!(
        "malloc: MALLOC_MMAP_THRESHOLD_={}",
        std::env::var("MALLOC_MMAP_THRESHOLD_")
            .as_deref()
            .unwrap_or("unset (glibc's dynamic threshold)")
    );
}

async fn verify_written(
    store: &dyn SegmentStore,
    writer: &str,
    key: &AuditSigningKey,
) -> anyhow::Result<()> {
    let own_prefix = format!(
        "{}{}-",
        policybind_audit::naming::SEGMENT_NAME_PREFIX,
        policybind_audit::naming::writer_key(writer)
    );
    let listed = Instant::now();
    let segments: Vec<RawSegment> = store
        .list()
        .await?
        .into_iter()
        .filter(|s| s.name.contains(&own_prefix))
        .collect();
    let listing = listed.elapsed();
    let options = VerifyOptions {
        keyring: Some(Keyring::single(
            key.verifying_key(),
            vec![writer.to_string()],
        )?),
        require_genesis: true,
        ..VerifyOptions::default()
    };
    let started = Instant::now();
    let report = verify_stored(segments, &options);
    println!(
        "verify: {} ({} records in {} segments) in {:.2} s after listing in {:.2} s",
        match report.first_problem() {
            None => "OK".to_string(),
            Some(problem) => format!("BROKEN: {problem}"),
        },
        report.total_records(),
        report.total_segments(),
        started.elapsed().as_secs_f64(),
        listing.as_secs_f64()
    );
    Ok(())
}
