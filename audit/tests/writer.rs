//! Writer behaviour around the store: queue bound, recovery after a hard kill,
//! graceful shutdown, and retention handing segments to a sink before deleting.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_audit::{
    AppendError, AuditConfig, AuditWriter, DirectorySink, DirectoryStore, Error, RawSegment,
    RetentionPolicy, SegmentObject, SegmentStore, StoreProfile, enforce_retention, verify_stored,
};
use policybind_crds::Effect;
use policybind_engine::audit::{AuditEvent, AuditSigningKey, Keyring, RecordKind, VerifyOptions};

const WRITER: &str = "standalone/host-1";

fn key() -> AuditSigningKey {
    AuditSigningKey::from_seed(&[5; 32])
}

fn options(require_genesis: bool) -> VerifyOptions {
    VerifyOptions {
        keyring: Some(Keyring::single(key().verifying_key(), vec!["**".into()]).unwrap()),
        require_genesis,
        ..VerifyOptions::default()
    }
}

/// Segments of a few records each.
const SMALL_SEGMENT_BYTES: usize = 12 * 1024;

fn records_of(segments: &[RawSegment]) -> Vec<policybind_engine::audit::AuditRecord> {
    segments
        .iter()
        .flat_map(|s| s.clone().parse().content.unwrap().records)
        .collect()
}

fn event(i: u64) -> AuditEvent {
    AuditEvent::decision(Effect::Allow)
        .request_id(format!("req-{i}"))
        .subject("team-a")
        .model("gpt-4o")
}

/// A directory store that can be switched to fail every call, like an API server
/// that went away.
struct Flaky {
    inner: DirectoryStore,
    failing: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), Error> {
        if self.failing.load(Ordering::SeqCst) {
            Err(Error::Config("store is away".into()))
        } else {
            Ok(())
        }
    }
}

impl SegmentStore for Flaky {
    fn put<'a>(&'a self, object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.check()?;
            self.inner.put(object).await
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
        "flaky".into()
    }
}

#[tokio::test]
async fn full_queue_refuses_appends_with_audit_unavailable_and_recovers_when_the_store_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky {
        inner: DirectoryStore::open(dir.path()).unwrap(),
        failing: AtomicBool::new(true),
    });
    let mut config = AuditConfig::new(WRITER, key());
    config.max_segment_bytes = SMALL_SEGMENT_BYTES;
    config.queue_capacity_bytes = SMALL_SEGMENT_BYTES;
    config.flush_interval = Duration::from_millis(10);
    config.max_retry_backoff = Duration::from_millis(20);
    let writer = AuditWriter::start(config, store.clone()).await.unwrap();
    let mut accepted = 0;
    let refused = loop {
        match writer.append(event(accepted + 1)) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 1_000, "the byte budget never filled");
    };
    assert_eq!(
        refused,
        AppendError::QueueFull {
            capacity_bytes: SMALL_SEGMENT_BYTES
        }
    );
    assert_eq!(refused.denial_code(), "AUDIT_UNAVAILABLE");
    assert!(accepted > 10, "only {accepted} records fit in 12 KiB");
    assert!(writer.stats().queued_bytes <= SMALL_SEGMENT_BYTES as u64);
    assert!(writer.flush().await.is_err());

    store.failing.store(false, Ordering::SeqCst);
    writer.flush().await.unwrap();
    let next = writer.append(event(accepted + 1)).unwrap();
    assert_eq!(next.seq, accepted + 1);
    let report = writer.shutdown().await.unwrap();
    assert_eq!(report.persisted_seq, report.last_seq);
    let stats = writer.stats();
    assert!(stats.store_failures > 0);
    assert_eq!(stats.refused_queue_full, 1);
    let segments = store.list().await.unwrap();
    // The refusal is summarised in the trail when the writer stops.
    let summary = records_of(&segments)
        .into_iter()
        .find(|r| r.detail.get("transition").map(String::as_str) == Some("appends-refused"))
        .expect("a summary of refused appends");
    assert_eq!(summary.detail["count.queue_full"], "1");
    let verified = verify_stored(segments, &options(true));
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.total_records(), report.last_seq);
}

#[tokio::test]
async fn appends_after_shutdown_are_refused_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    // Long intervals: only shutdown can have written these records.
    let mut config = AuditConfig::new(WRITER, key());
    config.flush_interval = Duration::from_secs(3600);
    let writer = AuditWriter::start(config, store.clone()).await.unwrap();
    let clone = writer.clone();
    for i in 1..=500 {
        clone.append(event(i)).unwrap();
    }
    let report = writer.shutdown().await.unwrap();
    assert_eq!((report.last_seq, report.persisted_seq), (500, 500));
    assert_eq!(clone.append(event(501)), Err(AppendError::Closed));
    let segments = store.list().await.unwrap();
    assert!(
        segments
            .iter()
            .all(|s| s.clone().parse().content.unwrap().is_sealed())
    );
    let verified = verify_stored(segments, &options(true));
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.total_records(), 500);
}

#[test]
fn writer_after_a_hard_kill_seals_the_open_segment_and_records_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
        let mut config = AuditConfig::new(WRITER, key());
        config.flush_interval = Duration::from_secs(3600);
        let writer = AuditWriter::start(config, store).await.unwrap();
        for i in 1..=5 {
            writer.append(event(i)).unwrap();
        }
        writer.flush().await.unwrap();
        // Appended after the last flush: a hard kill may lose these (or not,
        // if the writer got to them first: what was written is what counts).
        writer.append(event(6)).unwrap();
        writer.append(event(7)).unwrap();
        std::mem::forget(writer);
    });
    // The hard kill: the runtime goes away without the writer shutting down.
    runtime.shutdown_background();
    // A blocking write already under way may still land; then nothing more can.
    std::thread::sleep(Duration::from_millis(300));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
        let kept = records_of(&store.list().await.unwrap()).len() as u64;
        assert!((5..=7).contains(&kept), "{kept} records survived the kill");
        let writer = AuditWriter::start(AuditConfig::new(WRITER, key()), store.clone())
            .await
            .unwrap();
        assert_eq!(writer.append(event(100)).unwrap().seq, kept + 2);
        writer.shutdown().await.unwrap();

        let segments = store.list().await.unwrap();
        let records = records_of(&segments);
        let recovery = &records[kept as usize];
        assert_eq!(recovery.kind, RecordKind::Lifecycle);
        assert_eq!(recovery.detail["transition"], "writer-recovered");
        assert_eq!(recovery.detail["resumed_after_seq"], kept.to_string());
        let verified = verify_stored(segments, &options(true));
        assert!(verified.is_ok(), "{:?}", verified.problems);
        assert_eq!(verified.total_records(), kept + 2);
    });
}

#[tokio::test]
async fn oversized_record_is_refused_before_it_enters_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let mut config = AuditConfig::new(WRITER, key());
    config.max_segment_bytes = 16 * 1024;
    let writer = AuditWriter::start(config, store).await.unwrap();
    let huge = event(1).redacted_prompt("x".repeat(10_000));
    assert!(matches!(
        writer.append(huge),
        Err(AppendError::RecordTooLarge { .. })
    ));
    assert_eq!(writer.append(event(1)).unwrap().seq, 1);
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_exports_oldest_segments_to_the_sink_then_deletes_and_both_halves_verify() {
    let store_dir = tempfile::tempdir().unwrap();
    let sink_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(store_dir.path()).unwrap());
    let mut config = AuditConfig::new(WRITER, key());
    config.max_segment_bytes = SMALL_SEGMENT_BYTES;
    let writer = AuditWriter::start(config, store.clone()).await.unwrap();
    for i in 1..=200 {
        writer.append(event(i)).unwrap();
    }
    writer.shutdown().await.unwrap();
    let before = store.list().await.unwrap();
    assert!(before.len() > 4);
    assert!(
        before
            .iter()
            .all(|s| s.size_bytes <= SMALL_SEGMENT_BYTES as u64),
        "a segment exceeds its limit"
    );
    let total: u64 = before.iter().map(|s| s.size_bytes).sum();

    let sink = DirectorySink::new(sink_dir.path()).unwrap();
    let policy = RetentionPolicy::new(total / 2);
    let report = enforce_retention(store.as_ref(), &sink, &policy)
        .await
        .unwrap();
    assert!(!report.removed.is_empty());
    assert!(report.bytes_after <= policy.max_bytes);

    // The kept half verifies from the anchor its first segment carries...
    let kept = store.list().await.unwrap();
    let verified = verify_stored(kept.clone(), &options(false));
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert!(verified.writers[0].anchored_at.is_some());
    // ...but not as a complete trail...
    assert!(!verify_stored(kept.clone(), &options(true)).is_ok());
    // ...and sink plus store is the complete trail again.
    let mut all = DirectoryStore::open(sink_dir.path())
        .unwrap()
        .list()
        .await
        .unwrap();
    all.extend(kept);
    let verified = verify_stored(all, &options(true));
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.total_records(), 200);
}

#[tokio::test]
async fn retention_keeps_each_writers_newest_segment_even_over_budget() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    for writer_name in ["a", "b"] {
        let mut config = AuditConfig::new(writer_name, key());
        config.max_segment_bytes = SMALL_SEGMENT_BYTES;
        let writer = AuditWriter::start(config, store.clone()).await.unwrap();
        for i in 1..=50 {
            writer.append(event(i)).unwrap();
        }
        writer.shutdown().await.unwrap();
    }
    let sink = DirectorySink::new(sink_dir.path()).unwrap();
    enforce_retention(store.as_ref(), &sink, &RetentionPolicy::new(0))
        .await
        .unwrap();
    let kept = store.list().await.unwrap();
    assert_eq!(kept.len(), 2);
    let verified = verify_stored(kept, &options(false));
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(
        verified
            .writers
            .iter()
            .map(|w| w.last_seq)
            .collect::<Vec<_>>(),
        [50, 50]
    );
}

/// The queue holds records in chunks of 256 KiB: several megabytes of records
/// queued at once (the store away, then back) cross many chunks and segments,
/// and come out in order, each once, and verify.
#[tokio::test]
async fn records_queued_across_many_chunks_are_written_in_order_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky {
        inner: DirectoryStore::open(dir.path()).unwrap(),
        failing: AtomicBool::new(true),
    });
    let mut config = AuditConfig::new(WRITER, key());
    config.flush_interval = Duration::from_millis(20);
    config.max_segment_bytes = 64 * 1024;
    let writer = AuditWriter::start(config, store.clone()).await.unwrap();
    let padding = "p".repeat(900);
    for i in 0..4_000 {
        writer
            .append(event(i).detail("padding", padding.clone()))
            .unwrap();
    }
    assert!(writer.stats().queued_bytes > 3 << 20);
    store.failing.store(false, Ordering::SeqCst);
    writer.shutdown().await.unwrap();
    let segments = store.list().await.unwrap();
    assert!(segments.len() > 50, "{} segments", segments.len());
    let report = verify_stored(segments.clone(), &options(true));
    assert!(report.is_ok(), "{:?}", report.problems);
    let requests: Vec<String> = records_of(&segments)
        .into_iter()
        .filter(|r| r.kind == RecordKind::Decision)
        .map(|r| r.request_id.unwrap())
        .collect();
    let expected: Vec<String> = (0..4_000).map(|i| format!("req-{i}")).collect();
    assert_eq!(requests, expected);
}
