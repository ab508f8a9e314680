//! The audit writer: what every enforcement point holds to record decisions.
//!
//! [`AuditWriter::append`] runs on the request path. It stamps the time if the
//! event has none, sanitizes identifiers, hashes the record into this writer's
//! chain and serializes it, under a short lock, and never awaits I/O. It
//! refuses the record, leaving the chain untouched, when its **exact** stored
//! JSON would not fit a segment or when the queue's byte budget is spent. A
//! background task ([`crate::batch`]) owns everything slow: it moves queued
//! records into the open segment, seals segments that reach their size or age,
//! signs every write, and writes at the store's pace (one write per flush for the
//! API server, everything for a directory), so batches grow with load.
//!
//! ## When the queue is full
//! Records appended but not yet in a written, sealed segment count against
//! `queue_capacity_bytes`. When the store is away long enough for that to fill,
//! `append` returns [`AppendError::QueueFull`] rather than dropping records: an
//! enforcement point must then refuse the request with the code
//! [`AUDIT_UNAVAILABLE`](crate::AUDIT_UNAVAILABLE), because deciding without a
//! record is exactly what the trail exists to prevent. Refusals are counted and
//! summarised (one log line and one lifecycle record per `summary_interval`),
//! never logged one by one.
//!
//! ## Memory
//! What the budget counts is what the writer holds, once: queued records sit
//! in chunks of 256 KiB (never one buffer doubling past the
//! budget), each freed as soon as its records are copied into a segment, and a
//! sealed segment keeps its records only inside its encoded body. Beyond the
//! budget a writer holds about three segments' worth of buffers while it seals
//! and writes (the open segment, a body, the store's copy of it). With the
//! directory store's 4 MiB segments and the default 24 MiB budget the whole
//! process peaked at 53.1 MiB under sustained overload (docs/audit.md), provided freed buffers go back to the system: with
//! glibc, set `MALLOC_MMAP_THRESHOLD_=131072` (the container image does).
//!
//! ## Unauthenticated floods
//! A request refused before anyone is known (no token, unknown token, a path
//! that is not served) is not worth a record each: a flood of them would fill
//! the queue and deny real traffic. [`AuditWriter::count_rejection`] counts
//! them by kind; the writer records one summary per `summary_interval`.
//!
//! ## Shutdown and hard kills
//! [`AuditWriter::shutdown`] refuses further appends, seals the open segment and
//! writes everything (retrying until `shutdown_timeout`): every record `append`
//! acknowledged is then in the store. A hard kill loses the records appended
//! since the open segment was last written (on the API server, one or two
//! flush intervals). A restarted writer with the same identity adopts only a
//! segment it can prove it wrote ([`crate::resume`]).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use policybind_engine::audit::{AuditEvent, AuditSigningKey, Chain, Hash256, Keyring, RecordTime};
use policybind_engine::ident;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Error;
use crate::batch::BatchTask;
use crate::open_segment::DOCUMENT_OVERHEAD_BYTES;
use crate::store::{SegmentStore, StoreProfile};

/// Longest writer identity: it is part of every record, of object names (as a
/// hash) and of checkpoint origins.
pub const MAX_WRITER_BYTES: usize = 253;

/// The default queue budget. Measured with the directory store at 150,000
/// appends/s offered for 60 s on a quiet 2-core machine: 32 MiB peaked at
/// 65.4 MiB RSS, over the 64 MiB a writer under overload may use; 24 MiB
/// still holds several seconds of a 5,000/s ConfigMap writer's records
/// (that writer's queue peaked at 15.7 MiB).
pub const DEFAULT_QUEUE_CAPACITY_BYTES: usize = 24 << 20;

/// How a writer batches, seals and retries.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Writer identity: `sidecar/<namespace>/<pod>`, `webhook/<pod>`,
    /// `operator/<identity>`, `gateway/<namespace>/<pod>`, `standalone/<host>`.
    /// Must be unique per running process: two processes sharing one identity
    /// fork the chain, which verify reports.
    pub writer: String,
    /// Key that signs segment headers and checkpoints.
    pub signing_key: AuditSigningKey,
    /// Other keys this writer's segments may carry (earlier keys of a rotation),
    /// accepted when a restarted writer adopts its latest segment.
    pub keyring: Option<Keyring>,
    /// Time between flushes. Default 1 s.
    pub flush_interval: Duration,
    /// Seal a segment before its stored body would exceed this. Default 900 KiB,
    /// at most what the store accepts.
    pub max_segment_bytes: usize,
    /// Seal a segment this long after its first record. Default 60 s.
    pub max_segment_age: Duration,
    /// Bytes of record JSON appended but not yet in a written, sealed segment
    /// that the writer holds before `append` refuses. Default
    /// [`DEFAULT_QUEUE_CAPACITY_BYTES`] (24 MiB). The
    /// writer's memory is about this plus three segments (see the module
    /// docs, "Memory").
    pub queue_capacity_bytes: usize,
    /// Longest wait between retries when the store fails. Default 30 s.
    pub max_retry_backoff: Duration,
    /// How long `shutdown` keeps retrying the final writes. Default 20 s, inside
    /// Kubernetes' default 30 s termination grace period.
    pub shutdown_timeout: Duration,
    /// How often counted rejections and refused appends are summarised in one
    /// lifecycle record (and refusals in one log line). Default 10 s.
    pub summary_interval: Duration,
}

impl AuditConfig {
    /// Defaults suited to the ConfigMap store (see the field docs).
    pub fn new(writer: impl Into<String>, signing_key: AuditSigningKey) -> Self {
        AuditConfig {
            writer: writer.into(),
            signing_key,
            keyring: None,
            flush_interval: Duration::from_secs(1),
            max_segment_bytes: 900 * 1024,
            max_segment_age: Duration::from_secs(60),
            queue_capacity_bytes: DEFAULT_QUEUE_CAPACITY_BYTES,
            max_retry_backoff: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(20),
            summary_interval: Duration::from_secs(10),
        }
    }

    pub(crate) fn validate(&self, profile: &StoreProfile) -> Result<(), Error> {
        ident::check_max("writer identity", &self.writer, MAX_WRITER_BYTES)
            .map_err(|e| Error::Config(e.to_string()))?;
        if self.writer.is_empty()
            || self.writer.contains(char::is_whitespace)
            || self.writer.contains('+')
        {
            return Err(Error::Config(format!(
                "writer identity {:?} must be non-empty, without spaces or '+' (it names the writer's checkpoints)",
                self.writer
            )));
        }
        let limit = profile.max_object_bytes;
        if !(4 * 1024 + DOCUMENT_OVERHEAD_BYTES..=limit).contains(&self.max_segment_bytes) {
            return Err(Error::Config(format!(
                "max_segment_bytes {} is outside {}..={limit} for this store",
                self.max_segment_bytes,
                4 * 1024 + DOCUMENT_OVERHEAD_BYTES
            )));
        }
        if self.flush_interval.is_zero() || self.summary_interval.is_zero() {
            return Err(Error::Config(
                "flush_interval and summary_interval must be positive".into(),
            ));
        }
        if self.queue_capacity_bytes < self.max_segment_bytes {
            return Err(Error::Config(
                "queue_capacity_bytes must hold at least one segment".into(),
            ));
        }
        Ok(())
    }

    /// The largest record `append` accepts: one that alone fills a segment.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.max_segment_bytes - DOCUMENT_OVERHEAD_BYTES
    }
}

/// Why `append` refused a record. Every variant means "this decision cannot be
/// recorded": an enforcement point denies the request with
/// [`AUDIT_UNAVAILABLE`](crate::AUDIT_UNAVAILABLE).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The records waiting for the store fill the queue (it is failing or slow).
    #[error("audit queue is full ({capacity_bytes} bytes of records not yet written)")]
    QueueFull { capacity_bytes: usize },
    /// The writer is shutting down or shut down.
    #[error("audit writer is closed")]
    Closed,
    /// The record's stored JSON alone would not fit in a segment (a huge
    /// redacted prompt or detail).
    #[error("audit record of {bytes} bytes exceeds the limit of {limit}")]
    RecordTooLarge { bytes: usize, limit: usize },
}

impl AppendError {
    /// The denial code to answer the caller with.
    pub fn denial_code(&self) -> &'static str {
        crate::AUDIT_UNAVAILABLE
    }

    fn kind(&self) -> RefusalKind {
        match self {
            AppendError::QueueFull { .. } => RefusalKind::QueueFull,
            AppendError::Closed => RefusalKind::Closed,
            AppendError::RecordTooLarge { .. } => RefusalKind::TooLarge,
        }
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Last sequence appended.
    pub last_seq: u64,
    /// Last sequence written to the store (or quarantined, see
    /// `segments_quarantined`).
    pub persisted_seq: u64,
    /// Bytes of record JSON held, waiting for the store.
    pub queued_bytes: u64,
    /// Store writes that failed (and were retried) since start.
    pub store_failures: u64,
    /// Appends refused, by reason, since start.
    pub refused_queue_full: u64,
    pub refused_too_large: u64,
    pub refused_closed: u64,
    /// Identifier fields replaced by the last-line sanitizer.
    pub sanitized_fields: u64,
    /// Rejections counted with `count_rejection`.
    pub rejections: u64,
    /// Segments the store refused as too large, split in two.
    pub segments_split: u64,
    /// Segments whose name the store refused, written under another name.
    pub segments_renamed: u64,
    /// Segments the store refused for good, written to the log instead.
    pub segments_quarantined: u64,
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

/// Size of one buffer of queued records. The queue is a list of these rather
/// than one buffer, so it never doubles past the byte budget, and the batch
/// task frees each as soon as its records are in a segment: a full queue is
/// never held twice while it is moved.
pub(crate) const PENDING_CHUNK_BYTES: usize = 256 * 1024;

/// Records appended and not yet taken by the batch task, in order.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub chunks: Vec<PendingChunk>,
}

/// Consecutive records: their exact stored JSON, back to back.
#[derive(Debug, Default)]
pub(crate) struct PendingChunk {
    pub json: Vec<u8>,
    /// Where each record's JSON ends in `json`.
    pub ends: Vec<usize>,
    pub hashes: Vec<Hash256>,
    pub first_seq: u64,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(|chunk| chunk.ends.is_empty())
    }

    /// Bytes of queued JSON.
    pub fn json_bytes(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.json.len()).sum()
    }

    /// The chunk the next record goes to: the last one, or a new one once the
    /// last is (nearly) full.
    fn chunk_for_append(&mut self) -> &mut PendingChunk {
        let full = self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.json.len() + PENDING_CHUNK_BYTES / 16 > PENDING_CHUNK_BYTES);
        if full {
            self.chunks.push(PendingChunk {
                json: Vec::with_capacity(PENDING_CHUNK_BYTES),
                ..PendingChunk::default()
            });
        }
        self.chunks.last_mut().expect("just ensured")
    }
}

pub(crate) struct State {
    pub chain: Chain,
    pub pending: Pending,
    pub closed: bool,
}

#[derive(Clone, Copy)]
pub(crate) enum RefusalKind {
    QueueFull,
    TooLarge,
    Closed,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub store_failures: AtomicU64,
    pub refused: [AtomicU64; 3],
    pub sanitized: AtomicU64,
    pub rejections: AtomicU64,
    pub split: AtomicU64,
    pub renamed: AtomicU64,
    pub quarantined: AtomicU64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub held_bytes: AtomicUsize,
    pub persisted_seq: AtomicU64,
    pub counters: Counters,
    /// Rejections by kind since the last summary.
    pub rejections: Mutex<BTreeMap<&'static str, u64>>,
    capacity: usize,
    max_record_bytes: usize,
    task: Mutex<Option<JoinHandle<Result<ShutdownReport, Error>>>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the chain half updated
        // (the record is committed in one step), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append with or without the byte budget (the writer's own lifecycle and
    /// summary records bypass it, so a full queue is still explained).
    pub fn append(
        &self,
        mut event: AuditEvent,
        budgeted: bool,
    ) -> Result<AppendReceipt, AppendError> {
        let sanitized = event.sanitize();
        if !sanitized.is_empty() {
            self.counters
                .sanitized
                .fetch_add(sanitized.len() as u64, Ordering::Relaxed);
        }
        let now = RecordTime::new(Utc::now());
        let mut state = self.lock();
        // The writer's own closing summaries still go in after shutdown began.
        if state.closed && budgeted {
            return Err(self.refuse(AppendError::Closed));
        }
        let record = state.chain.next_record(event, now);
        let pending = state.pending.chunk_for_append();
        let start = pending.json.len();
        serde_json::to_writer(&mut pending.json, &record).expect("a record serializes");
        let bytes = pending.json.len() - start;
        let refusal = if bytes > self.max_record_bytes {
            Some(AppendError::RecordTooLarge {
                bytes,
                limit: self.max_record_bytes,
            })
        } else if budgeted && self.held_bytes.load(Ordering::Relaxed) + bytes > self.capacity {
            Some(AppendError::QueueFull {
                capacity_bytes: self.capacity,
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            pending.json.truncate(start);
            return Err(self.refuse(refusal));
        }
        if pending.ends.is_empty() {
            pending.first_seq = record.seq;
        }
        pending.ends.push(pending.json.len());
        pending.hashes.push(record.hash);
        state.chain.advance(&record);
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(AppendReceipt {
            seq: record.seq,
            hash: record.hash,
        })
    }

    fn refuse(&self, error: AppendError) -> AppendError {
        self.counters.refused[error.kind() as usize].fetch_add(1, Ordering::Relaxed);
        error
    }

    pub fn stats(&self) -> WriterStats {
        let last_seq = self.lock().chain.last_seq();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        WriterStats {
            last_seq,
            persisted_seq: self.persisted_seq.load(Ordering::Acquire),
            queued_bytes: self.held_bytes.load(Ordering::Relaxed) as u64,
            store_failures: load(&c.store_failures),
            refused_queue_full: load(&c.refused[RefusalKind::QueueFull as usize]),
            refused_too_large: load(&c.refused[RefusalKind::TooLarge as usize]),
            refused_closed: load(&c.refused[RefusalKind::Closed as usize]),
            sanitized_fields: load(&c.sanitized),
            rejections: load(&c.rejections),
            segments_split: load(&c.split),
            segments_renamed: load(&c.renamed),
            segments_quarantined: load(&c.quarantined),
        }
    }
}

pub(crate) enum Command {
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
    /// Start a writer on `store`: find where its chain ends, adopting only a
    /// segment it can prove it wrote (see [`crate::resume`]), record what it
    /// refused, and spawn the background task. Must be called inside a Tokio
    /// runtime.
    pub async fn start(config: AuditConfig, store: Arc<dyn SegmentStore>) -> Result<Self, Error> {
        let profile = store.profile();
        config.validate(&profile)?;
        let resumed = crate::resume::resume(store.as_ref(), &config).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                chain: resumed.chain.clone(),
                pending: Pending::default(),
                closed: false,
            }),
            held_bytes: AtomicUsize::new(0),
            persisted_seq: AtomicU64::new(resumed.chain.last_seq()),
            counters: Counters::default(),
            rejections: Mutex::new(BTreeMap::new()),
            capacity: config.queue_capacity_bytes,
            max_record_bytes: config.max_record_bytes(),
            task: Mutex::new(None),
        });
        for event in resumed.lifecycle_events() {
            // Cannot be refused: the writer is open and these bypass the budget.
            let _ = shared.append(event, false);
        }
        let (commands, receiver) = mpsc::channel(16);
        let writer: Arc<str> = config.writer.clone().into();
        let task = BatchTask::new(shared.clone(), store, config, profile, resumed);
        let handle = tokio::spawn(task.run(receiver));
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(AuditWriter {
            shared,
            commands,
            writer,
        })
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
        self.shared.append(event, true)
    }

    /// Count a request refused before anyone was identified (`kind` names why,
    /// e.g. `missing-token`, `unknown-token`, `path-not-served`). Nothing is
    /// queued per call: every `summary_interval` the writer records one
    /// `rejections-summary` lifecycle record with the counts by kind, so a flood
    /// cannot fill the queue. `kind` should come from a fixed set in the caller's
    /// code, never from the request.
    pub fn count_rejection(&self, kind: &'static str) {
        self.shared
            .counters
            .rejections
            .fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// Progress counters.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// Write everything appended so far now (without sealing), ignoring the write
    /// pace, and wait for it. For tests and for callers that need a record
    /// durable before they answer.
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Flush(reply))
            .await
            .map_err(|_| Error::TaskGone)?;
        answer.await.map_err(|_| Error::TaskGone)?
    }

    /// Refuse further appends, record the last summaries, seal the open segment
    /// and write everything. Call on SIGTERM. Returns an error if records remain
    /// unwritten after `shutdown_timeout`. Calling it again after it finished
    /// returns the same counters without doing anything.
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

/// Every `AppendError` reason, for summaries.
pub(crate) const REFUSAL_NAMES: [&str; 3] = ["queue_full", "too_large", "closed"];
