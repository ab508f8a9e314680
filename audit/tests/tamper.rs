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
