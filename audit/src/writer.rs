//! The audit writer: what every enforcement point holds to record decisions.
//!
//! [`AuditWriter::append`] runs on the request path. It stamps the time if the
//! event has none, hashes the record into this writer's chain under a short lock
//! and queues it; it never awaits I/O. A background task owns everything slow: every
//! `flush_interval` it moves queued records into the open segment, seals segments
//! that reached `max_segment_bytes` or `max_segment_age`, and makes at most one
//! store write (the oldest sealed segment not yet written, else the open segment).
//! On the ConfigMap store that is about one API write per second per writer.
//!
//! ## When the queue is full
//! Records that are appended but not yet written count against `queue_capacity`.
//! When the store is away long enough for that to fill, `append` returns
//! [`AppendError::QueueFull`] rather than dropping records: an enforcement point
//! must then refuse the request with the code [`AUDIT_UNAVAILABLE`](crate::AUDIT_UNAVAILABLE),
//! because deciding without a record is exactly what the trail exists to prevent.
//!
//! ## Shutdown and hard kills
//! [`AuditWriter::shutdown`] refuses further appends, seals the open segment and
//! writes everything (retrying until `shutdown_timeout`): every record `append`
//! acknowledged is then in the store. A hard kill (SIGKILL, OOM, node loss) loses
//! the records appended since the last successful store write: normally those of
//! the last `flush_interval` (one second), never more than `queue_capacity`. The
//! open segment already written stays; a restarted writer with the same identity
//! seals it, continues the chain after it and records a `writer-recovered`
//! lifecycle event, so the restart is visible in the trail.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use policybind_engine::audit::{AuditEvent, AuditSigningKey, Chain, Hash256, RecordTime, Segment};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Error;
use crate::store::SegmentStore;

/// Largest segment the writer will build: ConfigMaps are limited to 1 MiB in
/// total, and the object's metadata and JSON escaping need room too.
pub const MAX_SEGMENT_BYTES_LIMIT: usize = 900 * 1024;
/// Room kept for the header, signature and JSON framing of a segment.
const SEGMENT_OVERHEAD_BYTES: usize = 1024;

/// How a writer batches, seals and retries.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Writer identity: `sidecar/<namespace>/<pod>`, `webhook/<pod>`,
    /// `operator/<pod>`, `standalone/<host>`. Must be unique per running process:
    /// two processes sharing one identity fork the chain, which verify reports.
    pub writer: String,
    /// Key that signs sealed segment headers.
    pub signing_key: AuditSigningKey,
    /// Time between store writes (and the bound on what a hard kill loses).
    /// Default 1 s.
    pub flush_interval: Duration,
    /// Seal a segment before its JSON would exceed this. Default 512 KiB, at most
    /// [`MAX_SEGMENT_BYTES_LIMIT`].
    pub max_segment_bytes: usize,
    /// Seal a segment this long after its first record. Default 60 s.
    pub max_segment_age: Duration,
    /// Records appended but not yet written that the writer holds before `append`
    /// refuses. Default 100,000.
    pub queue_capacity: u64,
    /// Longest wait between retries when the store fails. Default 30 s.
    pub max_retry_backoff: Duration,
    /// How long `shutdown` keeps retrying the final writes. Default 20 s, inside
    /// Kubernetes' default 30 s termination grace period.
    pub shutdown_timeout: Duration,
}

impl AuditConfig {
    /// Defaults for the ConfigMap store (see the field docs).
    pub fn new(writer: impl Into<String>, signing_key: AuditSigningKey) -> Self {
        AuditConfig {
            writer: writer.into(),
            signing_key,
            flush_interval: Duration::from_secs(1),
            max_segment_bytes: 512 * 1024,
            max_segment_age: Duration::from_secs(60),
            queue_capacity: 100_000,
            max_retry_backoff: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(20),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.writer.is_empty() {
            return Err(Error::Config("writer identity is empty".into()));
        }
        if !(4 * 1024..=MAX_SEGMENT_BYTES_LIMIT).contains(&self.max_segment_bytes) {
            return Err(Error::Config(format!(
                "max_segment_bytes {} is outside 4 KiB..={MAX_SEGMENT_BYTES_LIMIT}",
                self.max_segment_bytes
            )));
        }
        if self.flush_interval.is_zero() || self.queue_capacity == 0 {
            return Err(Error::Config(
                "flush_interval and queue_capacity must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Why `append` refused a record. Every variant means "this decision cannot be
/// recorded": an enforcement point denies the request with
/// [`AUDIT_UNAVAILABLE`](crate::AUDIT_UNAVAILABLE).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// Too many records are waiting for the store (it is failing or slow).
    #[error("audit queue is full ({capacity} records not yet written)")]
    QueueFull { capacity: u64 },
    /// The writer is shutting down or shut down.
    #[error("audit writer is closed")]
    Closed,
    /// The record alone would not fit in a segment (e.g. a huge redacted prompt).
    #[error("audit record of about {bytes} bytes exceeds the segment limit of {limit}")]
    RecordTooLarge { bytes: usize, limit: usize },
}

impl AppendError {
    /// The denial code to answer the caller with.
    pub fn denial_code(&self) -> &'static str {
        crate::AUDIT_UNAVAILABLE
    }
}

/// What `append` returns: where the record sits in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash.
    pub hash: Hash256,
}

/// A snapshot of the writer's progress, for metrics and readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterStats {
    /// Last sequence appended.
    pub last_seq: u64,
    /// Last sequence known to be in the store.
    pub persisted_seq: u64,
    /// Store writes that failed (and were retried) since start.
    pub store_failures: u64,
}

/// What `shutdown` achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Last sequence appended.
    pub last_seq: u64,
    /// Last sequence in the store (equal to `last_seq` after a clean shutdown).
    pub persisted_seq: u64,
    /// Hash of the last record.
    pub head: Hash256,
}

struct State {
    chain: Chain,
    pending: Vec<policybind_engine::audit::AuditRecord>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    persisted_seq: AtomicU64,
    store_failures: AtomicU64,
    capacity: u64,
    max_record_bytes: usize,
    task: Mutex<Option<JoinHandle<Result<ShutdownReport, Error>>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the chain half updated (the
        // append is a few assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Command {
    Flush(oneshot::Sender<Result<(), Error>>),
    Shutdown,
}

/// Handle to one writer's audit chain. Cheap to clone; all clones append to the
/// same chain.
#[derive(Clone)]
pub struct AuditWriter {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    writer: Arc<str>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Start a writer on `store`: resume the chain from the writer's latest stored
    /// segment (sealing it if a hard kill left it open) and spawn the background
    /// task. Must be called inside a Tokio runtime.
    pub async fn start(config: AuditConfig, store: Arc<dyn SegmentStore>) -> Result<Self, Error> {
        config.validate()?;
        let latest = store.latest(&config.writer).await?;
        let mut sealed = VecDeque::new();
        let mut recovered_from = None;
        let (chain, prev_segment_hash) = match latest {
            None => (Chain::new(config.writer.clone()), Hash256::ZERO),
            Some(mut segment) => {
                let last_seq = segment.header.last_seq;
                let head = segment.header.last_hash;
                if !segment.is_sealed() {
                    segment.seal(RecordTime::new(Utc::now()), &config.signing_key);
                    sealed.push_back(segment);
                    recovered_from = Some(last_seq);
                }
                (Chain::resume(config.writer.clone(), last_seq, head), head)
            }
        };
        let persisted = chain.last_seq();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                chain,
                pending: Vec::new(),
                closed: false,
            }),
            persisted_seq: AtomicU64::new(persisted),
            store_failures: AtomicU64::new(0),
            capacity: config.queue_capacity,
            max_record_bytes: config.max_segment_bytes - SEGMENT_OVERHEAD_BYTES,
            task: Mutex::new(None),
        });
        let (commands, receiver) = mpsc::channel(16);
        let writer = AuditWriter {
            shared: shared.clone(),
            commands,
            writer: config.writer.clone().into(),
        };
        if let Some(last_seq) = recovered_from {
            let event = AuditEvent::lifecycle("writer-recovered")
                .detail("previous_shutdown", "unclean")
                .detail("resumed_after_seq", last_seq.to_string());
            // Cannot fail: the queue is empty and the writer is open.
            let _ = writer.append(event);
        }
        let task = BatchTask {
            shared: shared.clone(),
            store,
            config,
            open: None,
            prev_segment_hash,
            sealed,
            backoff: None,
        };
        let handle = tokio::spawn(task.run(receiver));
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(writer)
    }

    /// The writer identity.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Record an event: hash it into the chain and queue it. Never awaits I/O.
    ///
    /// On error the event is not in the chain; the caller must not act as if it
    /// were recorded (deny with [`AppendError::denial_code`]).
    pub fn append(&self, event: AuditEvent) -> Result<AppendReceipt, AppendError> {
        let bytes = approx_event_bytes(&event, &self.writer);
        if bytes > self.shared.max_record_bytes {
            return Err(AppendError::RecordTooLarge {
                bytes,
                limit: self.shared.max_record_bytes,
            });
        }
        let now = RecordTime::new(Utc::now());
        let mut state = self.shared.lock();
        if state.closed {
            return Err(AppendError::Closed);
        }
        let persisted = self.shared.persisted_seq.load(Ordering::Acquire);
        if state.chain.last_seq().saturating_sub(persisted) >= self.shared.capacity {
            return Err(AppendError::QueueFull {
                capacity: self.shared.capacity,
            });
        }
        let record = state.chain.append(event, now);
        let receipt = AppendReceipt {
            seq: record.seq,
            hash: record.hash,
        };
        state.pending.push(record);
        Ok(receipt)
    }

    /// Progress counters.
    pub fn stats(&self) -> WriterStats {
        let last_seq = self.shared.lock().chain.last_seq();
        WriterStats {
            last_seq,
            persisted_seq: self.shared.persisted_seq.load(Ordering::Acquire),
            store_failures: self.shared.store_failures.load(Ordering::Relaxed),
        }
    }

    /// Write everything appended so far now (without sealing), ignoring the write
    /// rate limit, and wait for it. For tests and for callers that need a record
    /// durable before they answer.
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Flush(reply))
            .await
            .map_err(|_| Error::TaskGone)?;
        answer.await.map_err(|_| Error::TaskGone)?
    }

    /// Refuse further appends, seal the open segment and write everything. Call on
    /// SIGTERM. Returns an error if records remain unwritten after
    /// `shutdown_timeout`. Calling it again after it finished returns the same
    /// counters without doing anything.
    pub async fn shutdown(&self) -> Result<ShutdownReport, Error> {
        self.shared.lock().closed = true;
        let handle = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(handle) = handle else {
            let state = self.shared.lock();
            return Ok(ShutdownReport {
                last_seq: state.chain.last_seq(),
                persisted_seq: self.shared.persisted_seq.load(Ordering::Acquire),
                head: state.chain.head(),
            });
        };
        // The task may already be gone if every other handle was dropped; then the
        // join below still returns its result.
        let _ = self.commands.send(Command::Shutdown).await;
        handle.await.map_err(|_| Error::TaskGone)?
    }
}

/// A cheap upper estimate of a record's JSON size, checked before the record
/// enters the chain.
fn approx_event_bytes(event: &AuditEvent, writer: &str) -> usize {
    let opt = |o: &Option<String>| o.as_ref().map_or(0, |s| 2 * s.len() + 24);
    400 + 2 * writer.len()
        + opt(&event.request_id)
        + opt(&event.subject)
        + opt(&event.token_id)
        + opt(&event.model)
        + opt(&event.namespace)
        + opt(&event.policy)
        + opt(&event.rule)
        + opt(&event.fingerprint)
        + opt(&event.prompt_hash)
        + opt(&event.redacted_prompt)
        + event.codes.iter().map(|c| 2 * c.len() + 4).sum::<usize>()
        + event
            .detail
            .iter()
            .map(|(k, v)| 2 * (k.len() + v.len()) + 8)
            .sum::<usize>()
}

struct OpenSegment {
    segment: Segment,
    bytes: usize,
    opened_at: Instant,
    dirty: bool,
}

struct BatchTask {
    shared: Arc<Shared>,
    store: Arc<dyn SegmentStore>,
    config: AuditConfig,
    open: Option<OpenSegment>,
    prev_segment_hash: Hash256,
    /// Sealed segments not yet written, oldest first.
    sealed: VecDeque<Segment>,
    /// After a failed write: when to try again, and the current delay.
    backoff: Option<(Instant, Duration)>,
}

impl BatchTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<ShutdownReport, Error> {
        let mut ticks = tokio::time::interval(self.config.flush_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    self.absorb_pending();
                    let ready = self.backoff.is_none_or(|(at, _)| Instant::now() >= at);
                    if ready {
                        let result = self.write_next().await;
                        self.note(result);
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Flush(reply)) => {
                        self.absorb_pending();
                        let result = self.write_all(false).await;
                        let _ = reply.send(result);
                    }
                    // Shutdown asked, or every handle dropped.
                    Some(Command::Shutdown) | None => return self.finish().await,
                },
            }
        }
    }

    /// Record the outcome of a write for backoff and metrics.
    fn note(&mut self, result: Result<bool, Error>) {
        match result {
            Ok(_) => self.backoff = None,
            Err(error) => {
                self.shared.store_failures.fetch_add(1, Ordering::Relaxed);
                let delay = match self.backoff {
                    None => self.config.flush_interval,
                    Some((_, delay)) => (delay * 2).min(self.config.max_retry_backoff),
                };
                tracing::warn!(
                    writer = %self.config.writer,
                    store = %self.store.describe(),
                    retry_in = ?delay,
                    %error,
                    "audit segment write failed; records stay queued"
                );
                self.backoff = Some((Instant::now() + delay, delay));
            }
        }
    }

    /// Move queued records into the open segment, sealing segments that reach
    /// their size or age limit.
    fn absorb_pending(&mut self) {
        let records = std::mem::take(&mut self.shared.lock().pending);
        for record in records {
            let bytes = record.approx_json_len();
            if let Some(open) = &self.open
                && open.bytes + bytes > self.config.max_segment_bytes
            {
                self.seal_open();
            }
            match &mut self.open {
                Some(open) => {
                    open.segment.records.push(record);
                    open.bytes += bytes;
                    open.dirty = true;
                }
                None => {
                    self.open = Some(OpenSegment {
                        segment: Segment::open(self.prev_segment_hash, vec![record]),
                        bytes: SEGMENT_OVERHEAD_BYTES + bytes,
                        opened_at: Instant::now(),
                        dirty: true,
                    });
                }
            }
        }
        if let Some(open) = &self.open
            && open.opened_at.elapsed() >= self.config.max_segment_age
        {
            self.seal_open();
        }
    }

    fn seal_open(&mut self) {
        if let Some(open) = self.open.take() {
            let mut segment = open.segment;
            segment.seal(RecordTime::new(Utc::now()), &self.config.signing_key);
            self.prev_segment_hash = segment.header.last_hash;
            self.sealed.push_back(segment);
        }
    }

    /// One store write: the oldest sealed segment, else the open one if it
    /// changed. Returns whether anything was written.
    async fn write_next(&mut self) -> Result<bool, Error> {
        if let Some(segment) = self.sealed.front() {
            self.store.put(segment).await?;
            let last_seq = segment.header.last_seq;
            self.sealed.pop_front();
            self.shared.persisted_seq.store(last_seq, Ordering::Release);
            return Ok(true);
        }
        if let Some(open) = &mut self.open
            && open.dirty
        {
            open.segment.refresh_header();
            self.store.put(&open.segment).await?;
            open.dirty = false;
            self.shared
                .persisted_seq
                .store(open.segment.header.last_seq, Ordering::Release);
            return Ok(true);
        }
        Ok(false)
    }

    /// Write until nothing is left (flush and shutdown), optionally retrying.
    async fn write_all(&mut self, retry_until: bool) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.write_next().await {
                Ok(true) => continue,
                Ok(false) => {
                    self.backoff = None;
                    return Ok(());
                }
                Err(error) => {
                    self.shared.store_failures.fetch_add(1, Ordering::Relaxed);
                    if !retry_until || Instant::now() + delay > deadline {
                        return Err(error);
                    }
                    tracing::warn!(%error, retry_in = ?delay, "audit write failed during shutdown");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.max_retry_backoff);
                }
            }
        }
    }

    async fn finish(mut self) -> Result<ShutdownReport, Error> {
        self.shared.lock().closed = true;
        self.absorb_pending();
        self.seal_open();
        let result = self.write_all(true).await;
        let state = self.shared.lock();
        let report = ShutdownReport {
            last_seq: state.chain.last_seq(),
            persisted_seq: self.shared.persisted_seq.load(Ordering::Acquire),
            head: state.chain.head(),
        };
        drop(state);
        match result {
            Ok(()) => Ok(report),
            Err(error) => Err(Error::ShutdownIncomplete {
                unwritten: report.last_seq - report.persisted_seq,
                last_error: error.to_string(),
            }),
        }
    }
}
