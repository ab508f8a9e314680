//! The tamper suite: real trails written by `AuditWriter` into a `DirectoryStore`,
//! damaged on disk the way an intruder or a broken disk would, and verified. Each
//! kind of damage must be caught with its own diagnosis and location.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use policybind_audit::{AuditConfig, AuditWriter, DirectoryStore, SegmentStore, verify_stored};
use policybind_crds::Effect;
use policybind_engine::audit::{
    Anchor, AuditEvent, AuditSigningKey, Chain, CostUsd, Keyring, ProblemKind, Segment, Usage,
    VerifyOptions, VerifyReport,
};
use serde_json::Value;

const WRITER: &str = "sidecar/team-a/pod-1";

/// Segments of a few records each, so a short trail has several.
const SMALL_SEGMENT_BYTES: usize = 12 * 1024;

fn key() -> AuditSigningKey {
    AuditSigningKey::from_seed(&[3; 32])
}

/// The writer's key, bound to the writers of its namespace only.
fn keyring() -> Keyring {
    Keyring::single(key().verifying_key(), vec!["sidecar/team-a/*".into()]).unwrap()
}

fn event(i: u64) -> AuditEvent {
    AuditEvent::decision(if i.is_multiple_of(5) {
        Effect::Deny
    } else {
        Effect::Allow
    })
    .request_id(format!("req-{i:05}"))
    .subject("team-a")
    .token_id("team-a/ci")
    .model("gpt-4o")
    .namespace("team-a")
    .policy_rule("team-a/default", "allow-approved")
    .code(if i.is_multiple_of(5) {
        "BUDGET_EXCEEDED"
    } else {
        "ALLOWED"
    })
    .fingerprint("9f86d081884c7d65")
    .prompt("hello there")
    .usage(Usage {
        input_tokens: 120,
        output_tokens: 80,
        cost_usd: CostUsd::from_nanos(4_200 * i),
    })
}

/// A trail of `records` records in segments of about 4 KiB (several records each),
/// written and sealed by a real writer. Returns the directory and the head anchor.
async fn written_trail(records: u64) -> (tempfile::TempDir, Anchor) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let mut config = AuditConfig::new(WRITER, key());
    config.max_segment_bytes = SMALL_SEGMENT_BYTES;
    config.flush_interval = Duration::from_millis(10);
    let writer = AuditWriter::start(config, store).await.unwrap();
    for i in 1..=records {
        writer.append(event(i)).unwrap();
    }
    let report = writer.shutdown().await.unwrap();
    let anchor = Anchor {
        writer: WRITER.into(),
        seq: report.last_seq,
        hash: report.head,
    };
    (dir, anchor)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

fn first_seq(path: &Path) -> u64 {
    read_json(path)["header"]["first_seq"].as_u64().unwrap()
}

async fn verify(dir: &Path, anchor: &Anchor) -> VerifyReport {
    let store = DirectoryStore::open(dir).unwrap();
    let options = VerifyOptions {
        keyring: Some(keyring()),
        require_genesis: true,
        anchors: vec![anchor.clone()],
        ..VerifyOptions::default()
    };
    verify_stored(store.list().await.unwrap(), &options)
}

/// The first problem as (kind, seq, file name of the segment).
async fn diagnosis(dir: &Path, anchor: &Anchor) -> (ProblemKind, Option<u64>, Option<String>) {
    let report = verify(dir, anchor).await;
    let problem = report
        .first_problem()
        .expect("damage was not detected")
        .clone();
    let file = problem.segment.map(|s| {
        Path::new(&s)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    });
    (problem.kind, problem.seq, file)
}

fn name(path: &Path) -> Option<String> {
    Some(path.file_name().unwrap().to_string_lossy().into_owned())
}

#[tokio::test]
async fn untouched_trail_verifies_with_counts() {
    let (dir, anchor) = written_trail(60).await;
    let report = verify(dir.path(), &anchor).await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.total_records(), 60);
    assert!(report.total_segments() > 3, "small segments expected");
    assert_eq!(report.writers[0].sealed_segments, report.total_segments());
}

#[tokio::test]
async fn flipped_byte_in_a_record_is_modified_at_that_record() {
    let (dir, anchor) = written_trail(60).await;
    let target = files(dir.path())[2].clone();
    let seq = first_seq(&target) + 1;
    let text = std::fs::read_to_string(&target).unwrap();
    let needle = format!("req-{seq:05}");
    let flipped = format!("req-{seq:05}").replacen('r', "R", 1);
    std::fs::write(&target, text.replacen(&needle, &flipped, 1)).unwrap();
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Modified, Some(seq), name(&target))
    );
}

#[tokio::test]
async fn flipped_byte_in_a_stored_hash_is_modified() {
    let (dir, anchor) = written_trail(30).await;
    let target = files(dir.path())[1].clone();
    let mut segment = read_json(&target);
    let hash = segment["records"][0]["hash"].as_str().unwrap().to_string();
    let flipped = if hash.starts_with('0') { "1" } else { "0" }.to_string() + &hash[1..];
    segment["records"][0]["hash"] = Value::String(flipped);
    write_json(&target, &segment);
    let seq = first_seq(&target);
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Modified, Some(seq), name(&target))
    );
}

#[tokio::test]
async fn deleted_record_is_missing_at_its_sequence() {
    let (dir, anchor) = written_trail(60).await;
    let target = files(dir.path())[1].clone();
    let mut segment = read_json(&target);
    segment["records"].as_array_mut().unwrap().remove(1);
    write_json(&target, &segment);
    let seq = first_seq(&target) + 1;
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Missing, Some(seq), name(&target))
    );
}

#[tokio::test]
async fn deleted_segment_is_missing_at_its_first_sequence() {
    let (dir, anchor) = written_trail(60).await;
    let all = files(dir.path());
    let seq = first_seq(&all[2]);
    std::fs::remove_file(&all[2]).unwrap();
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Missing, Some(seq), name(&all[3]))
    );
}

#[tokio::test]
async fn swapped_records_are_reordered() {
    let (dir, anchor) = written_trail(60).await;
    let target = files(dir.path())[0].clone();
    let mut segment = read_json(&target);
    segment["records"].as_array_mut().unwrap().swap(1, 2);
    write_json(&target, &segment);
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Reordered, Some(2), name(&target))
    );
}

#[tokio::test]
async fn truncated_tail_records_are_truncated() {
    let (dir, anchor) = written_trail(60).await;
    let target = files(dir.path()).last().unwrap().clone();
    let mut segment = read_json(&target);
    let records = segment["records"].as_array_mut().unwrap();
    assert!(records.len() >= 2);
    records.pop();
    write_json(&target, &segment);
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Truncated, Some(60), name(&target))
    );
}

#[tokio::test]
async fn truncated_file_is_malformed() {
    let (dir, anchor) = written_trail(30).await;
    let target = files(dir.path()).last().unwrap().clone();
    let bytes = std::fs::read(&target).unwrap();
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    let report = verify(dir.path(), &anchor).await;
    let problem = report.first_problem().unwrap();
    assert_eq!(problem.kind, ProblemKind::Malformed);
    assert_eq!(problem.segment.as_deref(), Some(target.to_str().unwrap()));
}

#[tokio::test]
async fn deleted_newest_segment_is_truncated_against_the_anchor() {
    let (dir, anchor) = written_trail(60).await;
    let last = files(dir.path()).last().unwrap().clone();
    let seq = first_seq(&last);
    std::fs::remove_file(&last).unwrap();
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::Truncated, Some(seq), None)
    );
}

#[tokio::test]
async fn replaced_signature_is_a_bad_signature() {
    let (dir, anchor) = written_trail(60).await;
    let all = files(dir.path());
    let donor = read_json(&all[3])["signature"].clone();
    let mut segment = read_json(&all[1]);
    segment["signature"] = donor;
    write_json(&all[1], &segment);
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::BadSignature, None, name(&all[1]))
    );
}

#[tokio::test]
async fn segment_rewritten_and_resigned_with_another_key_is_untrusted() {
    let (dir, anchor) = written_trail(60).await;
    let all = files(dir.path());
    let original: Segment = serde_json::from_slice(&std::fs::read(&all[1]).unwrap()).unwrap();
    // The forger changes one record's subject and rebuilds a consistent segment.
    let prev = original.header.prev_segment_hash;
    let mut chain = Chain::resume(WRITER, original.header.first_seq - 1, prev);
    let records = original
        .records
        .iter()
        .map(|r| {
            let mut event = event(r.seq).time(r.time.get());
            event.subject = Some("someone-else".into());
            chain.append(event, r.time)
        })
        .collect();
    let mut forged = Segment::open(prev, records);
    forged.seal(
        original.header.sealed_at.unwrap(),
        &AuditSigningKey::from_seed(&[4; 32]),
    );
    std::fs::write(&all[1], serde_json::to_vec(&forged).unwrap()).unwrap();
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::UntrustedKey, None, name(&all[1]))
    );
}

#[tokio::test]
async fn forged_segment_claiming_the_trusted_key_id_is_a_bad_signature() {
    let (dir, anchor) = written_trail(30).await;
    let all = files(dir.path());
    let mut segment: Segment = serde_json::from_slice(&std::fs::read(&all[0]).unwrap()).unwrap();
    segment.seal(
        segment.header.sealed_at.unwrap(),
        &AuditSigningKey::from_seed(&[4; 32]),
    );
    segment.header.key_id = Some(key().key_id().to_string());
    std::fs::write(&all[0], serde_json::to_vec(&segment).unwrap()).unwrap();
    assert_eq!(
        diagnosis(dir.path(), &anchor).await,
        (ProblemKind::BadSignature, None, name(&all[0]))
    );
}

#[tokio::test]
async fn restarted_writer_continues_the_chain_and_the_trail_still_verifies() {
    let (dir, _) = written_trail(20).await;
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let writer = AuditWriter::start(AuditConfig::new(WRITER, key()), store)
        .await
        .unwrap();
    assert_eq!(writer.append(event(21)).unwrap().seq, 21);
    let report = writer.shutdown().await.unwrap();
    let anchor = Anchor {
        writer: WRITER.into(),
        seq: 21,
        hash: report.head,
    };
    let verified = verify(dir.path(), &anchor).await;
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.total_records(), 21);
}

// ---------------------------------------------------------------------------
// Hostile cases: what someone who can write segments (or flood a writer) can
// and cannot do. Each asserts a row of the threat-model table in docs/audit.md.
// ---------------------------------------------------------------------------

use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_audit::naming::segment_name;
use policybind_audit::{
    DirectorySink, Error, RawSegment, RetentionPolicy, SegmentObject, StoreProfile,
    enforce_retention,
};
use policybind_engine::audit::{AuditRecord, TreeFrontier};

fn options_with(keyring: Keyring, allow_open_tail: bool) -> VerifyOptions {
    VerifyOptions {
        keyring: Some(keyring),
        allow_open_tail,
        ..VerifyOptions::default()
    }
}

async fn verify_with(dir: &Path, options: &VerifyOptions) -> VerifyReport {
    verify_stored(
        DirectoryStore::open(dir).unwrap().list().await.unwrap(),
        options,
    )
}

async fn all_records(dir: &Path) -> Vec<(String, AuditRecord)> {
    let mut out = Vec::new();
    for raw in DirectoryStore::open(dir).unwrap().list().await.unwrap() {
        let stored = raw.parse();
        if let Ok(segment) = stored.content {
            out.extend(
                segment
                    .records
                    .into_iter()
                    .map(|r| (stored.name.clone(), r)),
            );
        }
    }
    out
}

/// What a keyless attacker can build: a segment continuing the writer's newest
/// sealed segment, records hashed and chained correctly, but not signed.
fn planted_after(dir: &Path, writer: &str, count: u64) -> Segment {
    let last: Segment =
        serde_json::from_slice(&std::fs::read(files(dir).last().unwrap()).unwrap()).unwrap();
    let mut tree: TreeFrontier = last.frontier_before().unwrap().unwrap();
    for record in &last.records {
        tree.push_record(&record.hash);
    }
    let mut chain = Chain::resume(writer, last.header.last_seq, last.header.last_hash);
    let records = (0..count)
        .map(|i| chain.append(event(900 + i).subject("planted"), RecordTimeNow::now()))
        .collect();
    Segment::open_in_tree(last.header.last_hash, &tree, records)
}

struct RecordTimeNow;
impl RecordTimeNow {
    fn now() -> policybind_engine::audit::RecordTime {
        policybind_engine::audit::RecordTime::new(chrono::Utc::now())
    }
}

#[tokio::test]
async fn keyless_forgery_of_an_open_segment_is_refused_even_when_open_tails_are_accepted() {
    let (dir, _) = written_trail(30).await;
    // A forger without the key adds an open segment after the last sealed one.
    let planted = planted_after(dir.path(), WRITER, 3);
    let path = dir
        .path()
        .join(format!("{}.json", segment_name(WRITER, 31)));
    std::fs::write(&path, serde_json::to_vec(&planted).unwrap()).unwrap();
    for allow in [false, true] {
        let report = verify_with(dir.path(), &options_with(keyring(), allow)).await;
        let problem = report.first_problem().expect("forgery detected");
        assert_eq!(problem.kind, ProblemKind::BadSignature, "{problem}");
        assert_eq!(problem.segment.as_deref(), Some(path.to_str().unwrap()));
        // The real chain is unaffected.
        assert_eq!(report.writers[0].last_seq, 30);
        assert!(report.writers[0].unproven.is_none());
    }
    // An old-format (unsigned by design) open segment for an invented writer is
    // never proven: it fails by default and is listed when accepted.
    let mut ghost_chain = Chain::new("sidecar/team-a/ghost");
    let ghost = Segment::open(
        policybind_engine::audit::Hash256::ZERO,
        vec![ghost_chain.append(event(1), RecordTimeNow::now())],
    );
    std::fs::write(
        dir.path()
            .join(format!("{}.json", segment_name("sidecar/team-a/ghost", 1))),
        serde_json::to_vec(&ghost).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let report = verify_with(dir.path(), &options_with(keyring(), false)).await;
    let problem = report.first_problem().unwrap();
    assert_eq!(
        (problem.kind, problem.writer.as_str()),
        (ProblemKind::Unproven, "sidecar/team-a/ghost")
    );
    let report = verify_with(dir.path(), &options_with(keyring(), true)).await;
    assert!(report.is_ok(), "{:?}", report.problems);
    let ghost = report
        .writers
        .iter()
        .find(|w| w.writer == "sidecar/team-a/ghost")
        .unwrap();
    let tail = ghost.unproven.as_ref().unwrap();
    assert_eq!(
        (
            tail.first_seq,
            tail.last_seq,
            tail.flush_signed_by.as_deref()
        ),
        (1, 1, None)
    );
}

#[tokio::test]
async fn a_segment_planted_before_a_restart_is_refused_kept_and_recorded_never_signed() {
    let (dir, _) = written_trail(20).await;
    let planted = planted_after(dir.path(), WRITER, 4);
    let planted_path = dir
        .path()
        .join(format!("{}.json", segment_name(WRITER, 21)));
    let planted_bytes = serde_json::to_vec(&planted).unwrap();
    std::fs::write(&planted_path, &planted_bytes).unwrap();

    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let writer = AuditWriter::start(AuditConfig::new(WRITER, key()), store)
        .await
        .unwrap();
    for i in 0..5 {
        writer.append(event(100 + i)).unwrap();
    }
    writer.shutdown().await.unwrap();

    // The planted segment is still there, untouched: evidence.
    assert_eq!(std::fs::read(&planted_path).unwrap(), planted_bytes);
    let records = all_records(dir.path()).await;
    let planted_name = planted_path.to_str().unwrap();
    // Not one planted record is in a segment the writer signed.
    assert!(
        records
            .iter()
            .filter(|(_, r)| r.subject.as_deref() == Some("planted"))
            .all(|(segment, _)| segment == planted_name)
    );
    // The writer recorded what it refused, and continued after seq 20.
    let refused = records
        .iter()
        .map(|(_, r)| r)
        .find(|r| r.detail.get("transition").map(String::as_str) == Some("segment-refused"))
        .expect("a segment-refused record");
    assert_eq!(refused.seq, 21);
    assert!(refused.detail["segment"].ends_with(&segment_name(WRITER, 21)));
    assert_eq!(refused.detail["claimed_first_seq"], "21");
    assert_eq!(refused.detail["claimed_last_seq"], "24");
    // Verification sets the planted segment aside and proves the real chain.
    let report = verify_with(dir.path(), &options_with(keyring(), false)).await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].kind, ProblemKind::BadSignature);
    assert_eq!(report.problems[0].segment.as_deref(), Some(planted_name));
    assert_eq!(report.writers[0].last_seq, 26);
    assert_eq!(report.writers[0].records, 26);
}

#[tokio::test]
async fn a_segment_signed_with_another_writers_key_is_an_untrusted_key() {
    let (dir, _) = written_trail(20).await;
    // team-b's key, which the keyring binds to team-b's writers only.
    let team_b = AuditSigningKey::from_seed(&[77; 32]);
    let keyring = keyring()
        .merge(Keyring::single(team_b.verifying_key(), vec!["sidecar/team-b/*".into()]).unwrap());
    let mut forged = planted_after(dir.path(), WRITER, 3);
    forged.seal(RecordTimeNow::now(), &team_b);
    let path = dir
        .path()
        .join(format!("{}.json", segment_name(WRITER, 21)));
    std::fs::write(&path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let report = verify_with(dir.path(), &options_with(keyring, false)).await;
    let problem = report.first_problem().unwrap();
    assert_eq!(problem.kind, ProblemKind::UntrustedKey, "{problem}");
    assert!(problem.message.contains("not bound to writer"), "{problem}");
    assert_eq!(report.writers[0].last_seq, 20);
}

#[tokio::test]
async fn the_poison_record_is_recorded_sanitized_and_the_trail_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let writer = AuditWriter::start(AuditConfig::new(WRITER, key()), store)
        .await
        .unwrap();
    // About 250k control characters: 1.5 MB once JSON escapes them.
    let poison = "\u{1}".repeat(250_000);
    let receipt = writer
        .append(event(1).model(poison.clone()).request_id(poison.clone()))
        .unwrap();
    // Free text is not an identifier, but its exact stored size is checked.
    let refused = writer
        .append(event(2).redacted_prompt(poison.clone()))
        .unwrap_err();
    assert!(
        matches!(refused, policybind_audit::AppendError::RecordTooLarge { bytes, .. } if bytes > 1_000_000)
    );
    for i in 3..=50 {
        writer.append(event(i)).unwrap();
    }
    writer.shutdown().await.unwrap();
    let stats = writer.stats();
    assert_eq!(stats.sanitized_fields, 2);
    assert_eq!(stats.refused_too_large, 1);
    let records = all_records(dir.path()).await;
    let poisoned = &records
        .iter()
        .find(|(_, r)| r.seq == receipt.seq)
        .unwrap()
        .1;
    assert!(poisoned.model.as_deref().unwrap().starts_with("invalid:"));
    assert_eq!(poisoned.detail["invalid_fields"], "request_id,model");
    for file in files(dir.path()) {
        assert!(std::fs::metadata(&file).unwrap().len() < 900 * 1024);
    }
    let report = verify_with(dir.path(), &options_with(keyring(), false)).await;
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A directory store that refuses like an API server: bodies over `limit` with
/// 413, names in `squatted` (or, with `squat_prefix`, starting with one) with
/// 422 (an immutable object already there).
struct Refusing {
    inner: DirectoryStore,
    limit: usize,
    squatted: Vec<String>,
    squat_prefix: bool,
    refusals: std::sync::atomic::AtomicU64,
}

fn api_error(code: u16, message: &str) -> Error {
    Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
        code,
        message: message.into(),
        ..kube::core::Status::default()
    })))
}

impl policybind_audit::SegmentStore for Refusing {
    fn put<'a>(&'a self, object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let refusal = if object.body.len() > self.limit {
                Some(api_error(413, "Request entity too large: limit is 1048576"))
            } else if self.squatted.iter().any(|squatted| {
                *squatted == object.name || (self.squat_prefix && object.name.starts_with(squatted))
            }) {
                Some(api_error(422, "field is immutable when `immutable` is set"))
            } else {
                None
            };
            if let Some(error) = refusal {
                self.refusals
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Err(error);
            }
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
        "refusing".into()
    }
}

#[tokio::test]
async fn segments_the_store_refuses_are_split_or_renamed_never_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    // The store accepts less than the writer was told it could write.
    let store = Arc::new(Refusing {
        inner: DirectoryStore::open(dir.path()).unwrap(),
        limit: 16 * 1024,
        // Exactly the plain name of the first segment: its first rename works.
        squatted: vec![segment_name(WRITER, 1)],
        squat_prefix: false,
        refusals: Default::default(),
    });
    let mut config = AuditConfig::new(WRITER, key());
    config.max_segment_bytes = 64 * 1024;
    config.flush_interval = Duration::from_millis(10);
    let writer = AuditWriter::start(config, store.clone()).await.unwrap();
    for i in 1..=300 {
        writer.append(event(i)).unwrap();
    }
    let report = writer.shutdown().await.unwrap();
    assert_eq!(report.persisted_seq, report.last_seq);
    let stats = writer.stats();
    assert!(stats.segments_split > 0, "{stats:?}");
    assert!(stats.segments_renamed > 0, "{stats:?}");
    assert_eq!(stats.segments_quarantined, 0);
    // The squatted name was never overwritten, and nothing written exceeds the
    // store's limit.
    assert!(
        !dir.path()
            .join(format!("{}.json", segment_name(WRITER, 1)))
            .exists()
    );
    for file in files(dir.path()) {
        assert!(std::fs::metadata(&file).unwrap().len() <= 16 * 1024);
    }
    let records: Vec<AuditRecord> = all_records(dir.path())
        .await
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let transitions: Vec<&str> = records
        .iter()
        .filter_map(|r| r.detail.get("transition").map(String::as_str))
        .collect();
    assert!(transitions.contains(&"segment-split"), "{transitions:?}");
    assert!(transitions.contains(&"segment-renamed"), "{transitions:?}");
    let verified = verify_with(dir.path(), &options_with(keyring(), false)).await;
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.total_records(), report.last_seq);
}

#[tokio::test]
async fn a_segment_refused_under_every_name_is_quarantined_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Every name the writer could give its first segment is refused.
    let store = Arc::new(Refusing {
        inner: DirectoryStore::open(dir.path()).unwrap(),
        limit: usize::MAX,
        squatted: vec![segment_name(WRITER, 1)],
        squat_prefix: true,
        refusals: Default::default(),
    });
    let mut config = AuditConfig::new(WRITER, key());
    config.flush_interval = Duration::from_millis(10);
    let writer = AuditWriter::start(config, store.clone()).await.unwrap();
    for i in 1..=10 {
        writer.append(event(i)).unwrap();
    }
    let report = writer.shutdown().await.unwrap();
    assert_eq!(writer.stats().segments_quarantined, 1);
    assert!(
        store.refusals.load(std::sync::atomic::Ordering::SeqCst) <= 4,
        "retried too often"
    );
    // The trail records the gap: seq 1..=n went to the log, not the store.
    let records: Vec<AuditRecord> = all_records(dir.path())
        .await
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let quarantined = records
        .iter()
        .find(|r| r.detail.get("transition").map(String::as_str) == Some("segment-quarantined"))
        .expect("a segment-quarantined record");
    assert_eq!(quarantined.detail["first_seq"], "1");
    // The store's trail starts after the gap; only the genesis check sees it.
    let verified = verify_with(dir.path(), &options_with(keyring(), false)).await;
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert!(verified.writers[0].anchored_at.is_some());
    let options = VerifyOptions {
        require_genesis: true,
        ..options_with(keyring(), false)
    };
    let problem = verify_with(dir.path(), &options)
        .await
        .first_problem()
        .unwrap()
        .clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Missing, Some(1)),
        "{problem}"
    );
    assert!(report.last_seq > 10);
}

#[tokio::test]
async fn an_unauthenticated_flood_becomes_counters_and_one_summary_while_decisions_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let mut config = AuditConfig::new(WRITER, key());
    // A small queue: one record per rejection would overflow it at once.
    config.queue_capacity_bytes = 900 * 1024;
    let writer = AuditWriter::start(config, store).await.unwrap();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..25_000 {
                    writer.count_rejection(if i % 5 == 0 {
                        "unknown-token"
                    } else {
                        "missing-token"
                    });
                }
            })
        })
        .collect();
    for i in 1..=200 {
        writer
            .append(event(i))
            .expect("valid decisions are never refused by the flood");
    }
    for flooder in flooders {
        flooder.join().unwrap();
    }
    writer.shutdown().await.unwrap();
    let stats = writer.stats();
    assert_eq!(stats.rejections, 100_000);
    assert_eq!(stats.refused_queue_full, 0);
    let records: Vec<AuditRecord> = all_records(dir.path())
        .await
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let summaries: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.detail.get("transition").map(String::as_str) == Some("rejections-summary"))
        .collect();
    assert!(!summaries.is_empty());
    let count = |kind: &str| -> u64 {
        summaries
            .iter()
            .filter_map(|r| r.detail.get(&format!("count.{kind}")))
            .map(|c| c.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        (count("missing-token"), count("unknown-token")),
        (80_000, 20_000)
    );
    assert!(records.len() < 210, "{} records", records.len());
    let verified = verify_with(dir.path(), &options_with(keyring(), false)).await;
    assert!(verified.is_ok(), "{:?}", verified.problems);
}

#[tokio::test]
async fn sixty_mib_of_planted_segments_before_retention_push_out_no_real_segment() {
    let (dir, _) = written_trail(200).await;
    let real: Vec<PathBuf> = files(dir.path());
    let real_bytes: u64 = real
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    // 60 MiB of junk named like segments of this writer: unreadable JSON, and
    // well-formed segments not signed by any key of the keyring.
    let mut forged = planted_after(dir.path(), WRITER, 2_000);
    forged.seal(RecordTimeNow::now(), &AuditSigningKey::from_seed(&[66; 32]));
    let forged_json = serde_json::to_vec(&forged).unwrap();
    let junk = vec![b'x'; 1 << 20];
    for i in 0..60 {
        let name = format!("{}-junk{i:02}.json", segment_name(WRITER, 1_000_000 + i));
        std::fs::write(dir.path().join(name), &junk).unwrap();
    }

    let mut forged_bytes = 0;
    for i in 0..2 {
        let name = format!(
            "{}-f{i}.json",
            segment_name(WRITER, forged.header.first_seq)
        );
        std::fs::write(dir.path().join(name), &forged_json).unwrap();
        forged_bytes += forged_json.len();
    }
    assert!(forged_bytes > 0);
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = DirectorySink::new(sink_dir.path()).unwrap();
    // The budget holds every real segment, nothing more.
    let policy = RetentionPolicy::new(real_bytes).with_keyring(keyring());
    let store = DirectoryStore::open(dir.path()).unwrap();
    let report = enforce_retention(&store, &sink, &policy).await.unwrap();
    assert!(
        report.removed.is_empty(),
        "real segments removed: {:?}",
        report.removed
    );
    assert_eq!(report.quarantined.len(), 62);
    assert!(report.quarantined_bytes >= 60 << 20);
    let untrusted = report
        .quarantined
        .iter()
        .filter(|(_, reason)| reason.starts_with("untrusted-key"))
        .count();
    assert_eq!(untrusted, 2, "{:?}", report.quarantined);
    assert!(report.quarantine_deleted);
    // Every real segment is still there; the junk is in the sink's quarantine.
    assert_eq!(files(dir.path()), real);
    let quarantine = std::fs::read_dir(sink_dir.path().join("quarantine"))
        .unwrap()
        .count();
    assert!(quarantine >= 60, "{quarantine}");
    let verified = verify_with(dir.path(), &options_with(keyring(), false)).await;
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.total_records(), 200);
}

/// A hard kill leaves the open segment written but unsealed; the restarted
/// writer adopts and seals it. Its records must count against the queue until
/// written exactly as they are taken off after, or the queue reads as full for
/// ever and every later decision is refused with AUDIT_UNAVAILABLE.
#[test]
fn a_writer_that_adopts_an_open_segment_keeps_its_whole_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirectoryStore::open(dir.path()).unwrap());
    let killed = tokio::runtime::Runtime::new().unwrap();
    let first = killed.block_on(async {
        let writer = AuditWriter::start(AuditConfig::new(WRITER, key()), store.clone())
            .await
            .unwrap();
        for i in 1..=5 {
            writer.append(event(i)).unwrap();
        }
        writer.flush().await.unwrap();
        writer
    });
    // kill -9: the runtime goes, its writer task with it, nothing is sealed.
    drop(killed);
    drop(first);
    let restarted = tokio::runtime::Runtime::new().unwrap();
    restarted.block_on(async {
        let writer = AuditWriter::start(AuditConfig::new(WRITER, key()), store)
            .await
            .unwrap();
        writer.flush().await.unwrap();
        // What is left is the restart's own lifecycle record, in the open segment.
        let stats = writer.stats();
        assert!(stats.queued_bytes < 4096, "{stats:?}");
        writer.append(event(6)).unwrap();
        writer.shutdown().await.unwrap();
    });
}
