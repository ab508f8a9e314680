//! The writer's background task: turns queued records into signed segments and
//! writes them at the store's pace.
//!
//! Every flush it moves the queued records into the open segment, sealing it
//! when its stored size would pass `max_segment_bytes` (exactly for JSON, from
//! the observed compression ratio for gzip, and checked exactly before any
//! write) or its age passes `max_segment_age`. Then it writes: sealed segments
//! first, then the open segment (signed as it stands), at most
//! `writes_per_flush` objects (one for the API server). At low load that is the
//! open segment rewritten once per flush; at high load each write is a full
//! sealed segment, so batches grow with load.
//!
//! A write the store refuses for good is never retried as it is: too large, the
//! segment is split in two; its name taken, it is renamed; refused again, it is
//! quarantined (its whole document goes to the log at error level). Each of
//! these is counted and recorded as a lifecycle record. Transient failures are
//! retried with exponential backoff, the records staying queued.
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use policybind_engine::audit::{AuditEvent, Hash256, RecordTime, Segment, TreeFrontier};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::encoding::Encoding;
use crate::naming::segment_name_with_suffix;
use crate::open_segment::{DOCUMENT_OVERHEAD_BYTES, OpenSegment, SealedSegment};
use crate::resume::Resumed;
use crate::store::{SegmentObject, SegmentStore, StoreProfile};
use crate::writer::{AuditConfig, Command, REFUSAL_NAMES, Shared, ShutdownReport};
use crate::{Error, Refusal};

/// Times a segment is written under a new name after the store refused its
/// name, before it is quarantined.
const MAX_RENAMES: u32 = 2;
/// Rounds `shutdown` makes over records its own refusal handling added.
const MAX_FINAL_ROUNDS: usize = 8;
/// Compression ratio assumed before any segment was compressed (typical
/// decisions compress to about 0.15).
const INITIAL_GZIP_RATIO: f64 = 0.35;

pub(crate) struct BatchTask {
    shared: Arc<Shared>,
    store: Arc<dyn SegmentStore>,
    config: AuditConfig,
    profile: StoreProfile,
    writer: Arc<str>,
    /// Last hash and writer tree of the last sealed segment.
    prev_segment_hash: Hash256,
    next_tree: Option<TreeFrontier>,
    open: Option<OpenSegment>,
    /// Sealed segments not yet written, oldest first.
    sealed: VecDeque<SealedSegment>,
    /// After a failed write: when to try again, and the current delay.
    backoff: Option<(Instant, Duration)>,
    /// Names not to write to (refused at start, or refused by the store).
    taken: BTreeSet<String>,
    ratio: f64,
    last_summary: Instant,
    reported_refusals: [u64; 3],
}

impl BatchTask {
    pub fn new(
        shared: Arc<Shared>,
        store: Arc<dyn SegmentStore>,
        config: AuditConfig,
        profile: StoreProfile,
        resumed: Resumed,
    ) -> Self {
        let writer: Arc<str> = config.writer.clone().into();
        let mut task = BatchTask {
            shared,
            store,
            profile,
            writer,
            prev_segment_hash: resumed.prev_segment_hash,
            next_tree: resumed.tree,
            open: None,
            sealed: VecDeque::new(),
            backoff: None,
            taken: resumed.taken,
            ratio: INITIAL_GZIP_RATIO,
            last_summary: Instant::now(),
            reported_refusals: [0; 3],
            config,
        };
        if let Some((name, segment)) = resumed.adopted_open {
            // Its records are this writer's (it signed them): seal them now.
            let open = task.open_of(name, &segment);
            let sealed = task.sealed_of(open, RecordTime::new(Utc::now()));
            // Held like any queued record until written: `release` takes
            // exactly this off again (without it the count wraps below zero
            // and the queue reads as full for ever).
            task.shared
                .held_bytes
                .fetch_add(sealed.record_bytes(), Ordering::Relaxed);
            task.sealed.push_back(sealed);
        }
        task
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<ShutdownReport, Error> {
        let mut ticks = tokio::time::interval(self.config.flush_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    self.summarize(false);
                    self.absorb();
                    let ready = self.backoff.is_none_or(|(at, _)| Instant::now() >= at);
                    if ready {
                        let result = self.write_some(self.profile.writes_per_flush).await;
                        self.note(result);
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Flush(reply)) => {
                        self.absorb();
                        let result = self.write_all(false).await;
                        let _ = reply.send(result);
                    }
                    // Shutdown asked, or every handle dropped.
                    Some(Command::Shutdown) | None => return self.finish().await,
                },
            }
        }
    }

    fn encoding(&self) -> Encoding {
        self.profile.encoding
    }

    /// The object name of a segment starting with record `first_seq` whose hash
    /// is `first_hash`: the plain name unless it is taken or was refused.
    fn name_for(&self, first_seq: u64, first_hash: &Hash256, attempt: u32) -> String {
        let plain = segment_name_with_suffix(&self.writer, first_seq, None);
        if attempt == 0 && !self.taken.contains(&plain) {
            return plain;
        }
        let mut hasher = Sha256::new();
        hasher.update(first_hash.as_bytes());
        hasher.update(attempt.to_be_bytes());
        let suffix = hex::encode(&hasher.finalize()[..4]);
        segment_name_with_suffix(&self.writer, first_seq, Some(&suffix))
    }

    fn open_of(&self, name: String, segment: &Segment) -> OpenSegment {
        let header = &segment.header;
        let tree_before = segment.frontier_before().and_then(Result::ok);
        let mut open = OpenSegment::new(
            self.writer.clone(),
            name,
            header.first_seq,
            header.prev_segment_hash,
            tree_before,
        );
        for record in &segment.records {
            open.push(
                &serde_json::to_vec(record).expect("a record serializes"),
                record.hash,
            );
        }
        open
    }

    fn new_open(&self, first_seq: u64, first_hash: &Hash256) -> OpenSegment {
        OpenSegment::new(
            self.writer.clone(),
            self.name_for(first_seq, first_hash, 0),
            first_seq,
            self.prev_segment_hash,
            self.next_tree.clone(),
        )
    }

    fn learn(&mut self, ratio: Option<f64>) {
        if let Some(ratio) = ratio {
            // Weighted towards the new value: records change with traffic.
            self.ratio = (0.3 * self.ratio + 0.7 * ratio).clamp(0.02, 1.2);
        }
    }

    /// Move queued records into the open segment, sealing on size and age.
    fn absorb(&mut self) {
        let pending = std::mem::take(&mut self.shared.lock().pending);
        let mut queued = pending.json_bytes();
        // Chunk by chunk, each freed once copied.
        for chunk in pending.chunks {
            let mut start = 0;
            for (index, &end) in chunk.ends.iter().enumerate() {
                let json = &chunk.json[start..end];
                start = end;
                let (seq, hash) = (chunk.first_seq + index as u64, chunk.hashes[index]);
                self.absorb_record(json, seq, hash, queued);
                queued -= json.len();
            }
        }
        let old = self.open.as_ref().is_some_and(|open| {
            !open.is_empty() && open.opened_at.elapsed() >= self.config.max_segment_age
        });
        if old {
            self.seal_all_open();
        }
    }

    /// Put one record in the open segment, sealing it first if the record
    /// would not fit; `queued` bytes (this record's included) wait.
    fn absorb_record(&mut self, json: &[u8], seq: u64, hash: Hash256, queued: usize) {
        let full = self.open.as_ref().is_some_and(|open| {
            !open.is_empty()
                && open.estimate(self.encoding(), self.ratio, json.len() + 1)
                    > self.config.max_segment_bytes
        });
        if full {
            let open = self.open.take().expect("checked above");
            self.open = self.seal(open);
        }
        if self.open.is_none() {
            let mut open = self.new_open(seq, &hash);
            // Room for what is queued, up to a full segment and its head: the
            // records are copied once, not again each time the buffer
            // doubles, and sealing puts the head in front in place.
            open.json
                .reserve(queued.min(self.config.max_segment_bytes) + DOCUMENT_OVERHEAD_BYTES);
            self.open = Some(open);
        }
        self.open.as_mut().expect("just ensured").push(json, hash);
    }

    fn seal_all_open(&mut self) {
        let mut next = self.open.take().filter(|open| !open.is_empty());
        while let Some(open) = next {
            next = self.seal(open);
        }
    }

    /// The signed, encoded sealed form of `open`, whatever its size.
    fn sealed_of(&mut self, mut open: OpenSegment, sealed_at: RecordTime) -> SealedSegment {
        let (head, _) = open.signed_head(&self.config.signing_key, Some(sealed_at));
        let record_bytes = open.record_bytes();
        let (body, records_in_body) = match self.encoding() {
            Encoding::Json => {
                let records = head.len()..head.len() + open.json.len();
                (open.take_json_body(&head), Some(records))
            }
            Encoding::Gzip => {
                let (body, ratio) = open.encode(Encoding::Gzip, &head);
                self.learn(ratio);
                (body, None)
            }
        };
        open.drop_members();
        let object = SegmentObject {
            name: open.name.clone(),
            writer: self.writer.to_string(),
            sealed: true,
            body: body.into(),
        };
        SealedSegment::new(open, object, record_bytes, records_in_body)
    }

    /// Seal `open` (in several segments if its exact size demands) and queue it;
    /// returns records that did not fit, as the next open segment.
    fn seal(&mut self, mut open: OpenSegment) -> Option<OpenSegment> {
        let sealed_at = RecordTime::new(Utc::now());
        let mut rest: Option<OpenSegment> = None;
        let sealed = loop {
            let sealed = self.sealed_of(open, sealed_at);
            let size = sealed.object.body.len();
            if size <= self.config.max_segment_bytes || sealed.segment.len() == 1 {
                break sealed;
            }
            open = sealed.into_open();
            let fits = self.config.max_segment_bytes as f64 * 0.9 / size as f64;
            let keep = ((open.len() as f64 * fits) as usize).clamp(1, open.len() - 1);
            let name = self.name_for(open.first_seq + keep as u64, &open.hashes[keep], 0);
            let mut tail = open.split_off(keep, name);
            if let Some(later) = rest.take() {
                tail.join(later);
            }
            rest = Some(tail);
        };
        self.prev_segment_hash = sealed.segment.last_hash();
        if let Some(after) = sealed.segment.tree_after() {
            self.next_tree = Some(after.clone());
        }
        self.sealed.push_back(sealed);
        rest
    }

    /// Write up to `limit` objects: sealed segments first, then the open one.
    /// Returns whether anything was written.
    async fn write_some(&mut self, limit: Option<usize>) -> Result<bool, Error> {
        let mut writes = 0;
        while limit.is_none_or(|limit| writes < limit) {
            if !self.sealed.is_empty() {
                writes += 1;
                self.write_sealed().await?;
            } else if self.open.as_ref().is_some_and(|open| open.dirty) {
                writes += 1;
                self.write_open().await?;
                break;
            } else {
                break;
            }
        }
        Ok(writes > 0)
    }

    async fn write_sealed(&mut self) -> Result<(), Error> {
        let front = self.sealed.front().expect("called with a sealed segment");
        match self.store.put(&front.object).await {
            Ok(()) => {
                let written = self.sealed.pop_front().expect("still there");
                self.release(&written);
                Ok(())
            }
            Err(error) => match error.refusal() {
                Some(refusal) => {
                    self.sealed_refused(refusal);
                    Ok(())
                }
                None => Err(error),
            },
        }
    }

    /// A written (or quarantined) segment no longer counts against the queue.
    fn release(&self, sealed: &SealedSegment) {
        self.shared
            .held_bytes
            .fetch_sub(sealed.record_bytes(), Ordering::Relaxed);
        self.shared
            .persisted_seq
            .fetch_max(sealed.segment.last_seq(), Ordering::AcqRel);
    }

    async fn write_open(&mut self) -> Result<(), Error> {
        let encoding = self.encoding();
        let open = self.open.as_mut().expect("called with an open segment");
        let (head, _) = open.signed_head(&self.config.signing_key, None);
        let (body, ratio) = open.encode(encoding, &head);
        self.learn(ratio);
        let open = self.open.as_mut().expect("still there");
        if body.len() > self.config.max_segment_bytes && open.len() > 1 {
            // The estimate was off: seal what fits instead of writing too much.
            let open = self.open.take().expect("still there");
            self.open = self.seal(open);
            return Ok(());
        }
        let object = SegmentObject {
            name: open.name.clone(),
            writer: self.writer.to_string(),
            sealed: false,
            body: body.into(),
        };
        match self.store.put(&object).await {
            Ok(()) => {
                let open = self.open.as_mut().expect("still there");
                open.dirty = false;
                self.shared
                    .persisted_seq
                    .fetch_max(open.last_seq(), Ordering::AcqRel);
                Ok(())
            }
            Err(error) => match error.refusal() {
                Some(refusal) => {
                    self.open_refused(refusal);
                    Ok(())
                }
                None => Err(error),
            },
        }
    }

    fn sealed_refused(&mut self, refusal: Refusal) {
        let mut front = self.sealed.pop_front().expect("the refused segment");
        match refusal {
            Refusal::TooLarge(reason) if front.segment.len() > 1 => {
                let mut first = front.into_open();
                let keep = first.len() / 2;
                let name = self.name_for(first.first_seq + keep as u64, &first.hashes[keep], 0);
                let second = first.split_off(keep, name);
                self.record_store_refusal("segment-split", &first, &reason, None);
                self.shared.counters.split.fetch_add(1, Ordering::Relaxed);
                let sealed_at = RecordTime::new(Utc::now());
                let (first, second) = (
                    self.sealed_of(first, sealed_at),
                    self.sealed_of(second, sealed_at),
                );
                self.sealed.push_front(second);
                self.sealed.push_front(first);
            }
            Refusal::Conflict(reason) | Refusal::Invalid(reason)
                if front.segment.renames < MAX_RENAMES =>
            {
                let refused = front.segment.name.clone();
                self.rename(&mut front.segment, &reason);
                front.object.name = front.segment.name.clone();
                tracing::warn!(writer = %self.writer, %refused, renamed = %front.object.name, %reason, "audit store refused a segment's name; writing it under another");
                self.sealed.push_front(front);
            }
            Refusal::TooLarge(reason) | Refusal::Conflict(reason) | Refusal::Invalid(reason) => {
                self.quarantine(front, &reason);
            }
        }
    }

    fn open_refused(&mut self, refusal: Refusal) {
        let open = self.open.as_mut().expect("the refused segment");
        match refusal {
            Refusal::Conflict(reason) | Refusal::Invalid(reason) if open.renames < MAX_RENAMES => {
                let mut open = self.open.take().expect("still there");
                self.rename(&mut open, &reason);
                self.open = Some(open);
            }
            // Too large, or refused under every name: seal it; the sealed path
            // splits or quarantines it.
            _ => {
                if let Some(open) = self.open.as_mut() {
                    open.renames = MAX_RENAMES;
                }
                self.seal_all_open();
            }
        }
    }

    fn rename(&mut self, segment: &mut OpenSegment, reason: &str) {
        let refused = std::mem::take(&mut segment.name);
        self.taken.insert(refused.clone());
        segment.renames += 1;
        segment.name = self.name_for(segment.first_seq, &segment.hashes[0], segment.renames);
        segment.dirty = true;
        self.shared.counters.renamed.fetch_add(1, Ordering::Relaxed);
        self.record_store_refusal("segment-renamed", segment, reason, Some(&refused));
    }

    /// The store will not take this segment: its whole document goes to the
    /// log, so a log pipeline keeps it, and the trail records the gap.
    fn quarantine(&mut self, sealed: SealedSegment, reason: &str) {
        let segment = &sealed.segment;
        let document = match self.encoding() {
            Encoding::Json => Ok(sealed.object.body.to_vec()),
            Encoding::Gzip => crate::encoding::gunzip(&sealed.object.body),
        };
        tracing::error!(
            target: "policybind::audit::quarantine",
            writer = %self.writer,
            segment = %segment.name,
            first_seq = segment.first_seq,
            last_seq = segment.last_seq(),
            last_hash = %segment.last_hash(),
            %reason,
            document = %String::from_utf8_lossy(&document.unwrap_or_default()),
            "the audit store refused this segment for good; its document is in this log line"
        );
        self.shared
            .counters
            .quarantined
            .fetch_add(1, Ordering::Relaxed);
        self.record_store_refusal("segment-quarantined", segment, reason, None);
        self.release(&sealed);
    }

    /// A lifecycle record of what the store refused and what the writer did.
    fn record_store_refusal(
        &self,
        transition: &str,
        segment: &OpenSegment,
        reason: &str,
        refused_name: Option<&str>,
    ) {
        let mut event = AuditEvent::lifecycle(transition)
            .detail("segment", segment.name.clone())
            .detail("first_seq", segment.first_seq.to_string())
            .detail("last_seq", segment.last_seq().to_string())
            .detail("last_hash", segment.last_hash().to_string())
            .detail("reason", reason.chars().take(1024).collect::<String>());
        if let Some(name) = refused_name {
            event = event.detail("refused_name", name);
        }
        // The writer's own records bypass the queue budget.
        let _ = self.shared.append(event, false);
    }

    /// Every `summary_interval` (or when `force`d): one record of the counted
    /// rejections, one record and one log line of the refused appends.
    fn summarize(&mut self, force: bool) {
        let interval = self.last_summary.elapsed();
        if !force && interval < self.config.summary_interval {
            return;
        }
        self.last_summary = Instant::now();
        let seconds = format!("{:.1}", interval.as_secs_f64());
        let rejections = std::mem::take(
            &mut *self
                .shared
                .rejections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !rejections.is_empty() {
            let total: u64 = rejections.values().sum();
            let mut event = AuditEvent::lifecycle("rejections-summary")
                .detail("total", total.to_string())
                .detail("interval_seconds", seconds.clone());
            for (kind, count) in rejections {
                event = event.detail(format!("count.{kind}"), count.to_string());
            }
            let _ = self.shared.append(event, false);
        }
        let refused: [u64; 3] =
            std::array::from_fn(|i| self.shared.counters.refused[i].load(Ordering::Relaxed));
        let delta: [u64; 3] = std::array::from_fn(|i| refused[i] - self.reported_refusals[i]);
        if delta.iter().any(|&d| d > 0) {
            self.reported_refusals = refused;
            tracing::warn!(
                writer = %self.writer,
                queue_full = delta[0],
                too_large = delta[1],
                closed = delta[2],
                interval_seconds = %seconds,
                "audit appends refused; those requests were denied with AUDIT_UNAVAILABLE"
            );
            let mut event =
                AuditEvent::lifecycle("appends-refused").detail("interval_seconds", seconds);
            for (name, count) in REFUSAL_NAMES.iter().zip(delta) {
                event = event.detail(format!("count.{name}"), count.to_string());
            }
            let _ = self.shared.append(event, false);
        }
    }

    /// Record the outcome of a write for backoff and metrics.
    fn note(&mut self, result: Result<bool, Error>) {
        match result {
            Ok(_) => self.backoff = None,
            Err(error) => {
                self.shared
                    .counters
                    .store_failures
                    .fetch_add(1, Ordering::Relaxed);
                let delay = match self.backoff {
                    None => self.config.flush_interval,
                    Some((_, delay)) => (delay * 2).min(self.config.max_retry_backoff),
                };
                tracing::warn!(
                    writer = %self.writer,
                    store = %self.store.describe(),
                    retry_in = ?delay,
                    %error,
                    "audit segment write failed; records stay queued"
                );
                self.backoff = Some((Instant::now() + delay, delay));
            }
        }
    }

    /// Write until nothing is left (flush and shutdown), optionally retrying.
    async fn write_all(&mut self, retry: bool) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.write_some(None).await {
                Ok(true) => continue,
                Ok(false) => {
                    self.backoff = None;
                    return Ok(());
                }
                Err(error) => {
                    self.shared
                        .counters
                        .store_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if !retry || Instant::now() + delay > deadline {
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
        self.summarize(true);
        let mut result = Ok(());
        // Refusal handling may add lifecycle records while writing: seal and
        // write those too, a bounded number of times.
        for _ in 0..MAX_FINAL_ROUNDS {
            self.absorb();
            self.seal_all_open();
            result = self.write_all(true).await;
            if result.is_err() || self.shared.lock().pending.is_empty() {
                break;
            }
        }
        let state = self.shared.lock();
        let report = ShutdownReport {
            last_seq: state.chain.last_seq(),
            persisted_seq: self.shared.persisted_seq.load(Ordering::Acquire),
            head: state.chain.head(),
        };
        drop(state);
        match result {
            Ok(()) if report.persisted_seq >= report.last_seq => Ok(report),
            Ok(()) => Err(Error::ShutdownIncomplete {
                unwritten: report.last_seq - report.persisted_seq,
                last_error: "the store kept refusing the writer's own records".into(),
            }),
            Err(error) => Err(Error::ShutdownIncomplete {
                unwritten: report.last_seq - report.persisted_seq,
                last_error: error.to_string(),
            }),
        }
    }
}
