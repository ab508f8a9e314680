//! Chain, segment and verifier behaviour, including property tests of the chain
//! invariants: an untouched trail always verifies, and any single mutation of a
//! sealed trail is always caught.
use chrono::{TimeZone, Utc};
use policybind_crds::Effect;
use proptest::prelude::*;

use super::checkpoint::SignedNote;
use super::*;

fn at(second: i64) -> RecordTime {
    RecordTime::new(
        Utc.timestamp_opt(1_780_000_000 + second, 123_456_789)
            .unwrap(),
    )
}

fn key() -> AuditSigningKey {
    AuditSigningKey::from_seed(&[42; 32])
}

fn event(i: u64) -> AuditEvent {
    AuditEvent::decision(if i.is_multiple_of(3) {
        Effect::Deny
    } else {
        Effect::Allow
    })
    .request_id(format!("req-{i}"))
    .subject("team-a")
    .token_id("team-a/ci-token")
    .model("gpt-4o")
    .namespace("team-a")
    .policy_rule("team-a/default", "allow-approved")
    .code("OK")
    .fingerprint("f00d")
    .prompt("hello")
    .usage(Usage {
        input_tokens: 10 + i,
        output_tokens: 20,
        cost_usd: CostUsd::from_nanos(1_500 * i),
    })
}

/// A sealed trail: `segments` segments of `per_segment` records for one writer,
/// in the current format (writer tree, checkpoints).
fn trail(writer: &str, segments: usize, per_segment: usize) -> Vec<NamedSegment> {
    build_trail(writer, segments, per_segment, true)
}

/// The same in format 1, as writers before the writer tree wrote it.
fn legacy_trail(writer: &str, segments: usize, per_segment: usize) -> Vec<NamedSegment> {
    build_trail(writer, segments, per_segment, false)
}

fn build_trail(writer: &str, segments: usize, per_segment: usize, v2: bool) -> Vec<NamedSegment> {
    let mut chain = Chain::new(writer);
    let mut tree = TreeFrontier::new();
    let mut out = Vec::new();
    let mut prev = Hash256::ZERO;
    for s in 0..segments {
        let records: Vec<_> = (0..per_segment)
            .map(|_| {
                let seq = chain.last_seq() + 1;
                chain.append(event(seq), at(seq as i64))
            })
            .collect();
        let mut segment = if v2 {
            Segment::open_in_tree(prev, &tree, records)
        } else {
            Segment::open(prev, records)
        };
        segment.seal(at(10_000 + s as i64), &key());
        for record in &segment.records {
            tree.push_record(&record.hash);
        }
        prev = segment.header.last_hash;
        out.push(NamedSegment {
            name: format!("seg-{s}"),
            segment,
        });
    }
    out
}

/// The test key bound to every writer.
fn keyring() -> Keyring {
    Keyring::single(key().verifying_key(), vec!["**".into()]).unwrap()
}

fn trusted() -> VerifyOptions {
    VerifyOptions {
        keyring: Some(keyring()),
        require_genesis: true,
        ..VerifyOptions::default()
    }
}

/// The head of a trail, as an auditor would have noted it.
fn head_anchor(segments: &[NamedSegment]) -> Anchor {
    let last = &segments.last().unwrap().segment.header;
    Anchor {
        writer: last.writer.clone(),
        seq: last.last_seq,
        hash: last.last_hash,
    }
}

fn diagnosis(segments: &[NamedSegment]) -> Option<(ProblemKind, Option<u64>)> {
    verify_segments(segments, &trusted())
        .first_problem()
        .map(|p| (p.kind, p.seq))
}

#[test]
fn chain_assigns_consecutive_seqs_and_links_each_hash_to_the_previous() {
    let mut chain = Chain::new("sidecar/team-a/pod-1");
    let first = chain.append(event(1), at(1));
    let second = chain.append(event(2), at(2));
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(first.prev_hash, Hash256::ZERO);
    assert_eq!(second.prev_hash, first.hash);
    assert!(first.hash_is_consistent() && second.hash_is_consistent());
    assert_eq!(chain.head(), second.hash);
}

#[test]
fn event_time_wins_over_the_stamp_and_is_truncated_to_microseconds() {
    let mut chain = Chain::new("w");
    let record = chain.append(event(1).time(at(5).get()), at(99));
    assert_eq!(record.time, at(5));
    assert_eq!(
        record.time.to_canonical_string(),
        "2026-05-28T20:26:45.123456Z"
    );
}

#[test]
fn prompt_is_stored_only_as_its_sha256() {
    let event = AuditEvent::decision(Effect::Allow).prompt("my secret prompt");
    let record = Chain::new("w").append(event, at(0));
    let json = serde_json::to_string(&record).unwrap();
    assert!(!json.contains("my secret prompt"));
    use sha2::{Digest, Sha256};
    let expected = hex::encode(Sha256::digest(b"my secret prompt"));
    assert_eq!(record.prompt_hash.as_deref(), Some(expected.as_str()));
}

#[test]
fn canonical_bytes_follow_the_documented_layout() {
    let record = Chain::new("w").append(
        AuditEvent::new(RecordKind::Lifecycle)
            .detail("transition", "started")
            .time(at(0).get()),
        at(0),
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(b"PBAREC01");
    expected.extend_from_slice(&1u64.to_be_bytes());
    let time = b"2026-05-28T20:26:40.123456Z";
    expected.extend_from_slice(&(time.len() as u32).to_be_bytes());
    expected.extend_from_slice(time);
    expected.extend_from_slice(&1u32.to_be_bytes());
    expected.extend_from_slice(b"w");
    expected.extend_from_slice(&9u32.to_be_bytes());
    expected.extend_from_slice(b"Lifecycle");
    // request_id, subject, token_id, model, namespace, effect, policy, rule absent
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&0u32.to_be_bytes()); // no codes
    expected.extend_from_slice(&[0, 0, 0]); // fingerprint, prompt_hash, redacted_prompt
    expected.push(0); // no usage
    expected.extend_from_slice(&1u32.to_be_bytes());
    expected.extend_from_slice(&10u32.to_be_bytes());
    expected.extend_from_slice(b"transition");
    expected.extend_from_slice(&7u32.to_be_bytes());
    expected.extend_from_slice(b"started");
    assert_eq!(record.canonical_bytes(), expected);

    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update([0u8; 32]);
    hasher.update(&expected);
    assert_eq!(record.hash.as_bytes()[..], hasher.finalize()[..]);
}

#[test]
fn json_round_trip_keeps_the_hash_valid() {
    let record = Chain::new("w").append(event(7), at(7));
    let json = serde_json::to_string(&record).unwrap();
    let back: AuditRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, record);
    assert!(back.hash_is_consistent());
}

#[test]
fn non_canonical_time_text_is_rejected_when_parsing() {
    let record = Chain::new("w").append(event(1), at(1));
    let json = serde_json::to_string(&record)
        .unwrap()
        .replace(".123456Z", ".123456000Z");
    assert!(serde_json::from_str::<AuditRecord>(&json).is_err());
}

#[test]
fn cost_text_round_trips_exactly() {
    for (text, nanos) in [
        ("0", 0),
        ("0.0005", 500_000),
        ("12", 12_000_000_000),
        ("1.5", 1_500_000_000),
    ] {
        let cost: CostUsd = text.parse().unwrap();
        assert_eq!(cost.nanos(), nanos);
        assert_eq!(cost.to_string(), text);
    }
    for bad in ["", "-1", "1.", ".5", "1.0000000001", "1e3"] {
        assert!(bad.parse::<CostUsd>().is_err(), "{bad:?}");
    }
    assert_eq!(CostUsd::from_usd(0.0000015).nanos(), 1_500);
}

#[test]
fn untouched_sealed_trail_verifies_with_counts() {
    let segments = trail("sidecar/team-a/pod-1", 3, 5);
    let report = verify_segments(&segments, &trusted());
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.total_records(), 15);
    assert_eq!(report.writers[0].sealed_segments, 3);
    assert_eq!(report.writers[0].last_seq, 15);
    assert!(report.signatures_checked);
}

#[test]
fn segments_given_in_any_order_verify() {
    let mut segments = trail("w", 4, 3);
    segments.reverse();
    assert!(verify_segments(&segments, &trusted()).is_ok());
}

#[test]
fn writers_are_verified_independently() {
    let mut segments = trail("a", 2, 3);
    let mut other = trail("b", 2, 3);
    other[1].segment.records[1].subject = Some("evil".into());
    segments.append(&mut other);
    let report = verify_segments(&segments, &trusted());
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].writer, "b");
    assert_eq!(report.writers.len(), 2);
}

#[test]
fn changed_record_field_is_modified_at_its_seq() {
    let mut segments = trail("w", 2, 4);
    segments[1].segment.records[2].model = Some("other".into());
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Modified, Some(7))));
}

#[test]
fn deleted_record_is_missing_at_its_seq() {
    let mut segments = trail("w", 2, 4);
    segments[0].segment.records.remove(1);
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Missing, Some(2))));
}

#[test]
fn swapped_records_are_reordered() {
    let mut segments = trail("w", 2, 4);
    segments[1].segment.records.swap(0, 1);
    assert_eq!(
        diagnosis(&segments),
        Some((ProblemKind::Reordered, Some(5)))
    );
}

#[test]
fn deleted_middle_segment_is_missing() {
    let mut segments = trail("w", 3, 4);
    segments.remove(1);
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Missing, Some(5))));
}

#[test]
fn deleted_first_segment_is_missing_when_genesis_is_required_and_anchored_otherwise() {
    let mut segments = trail("w", 3, 4);
    let removed = segments.remove(0);
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Missing, Some(1))));
    let options = VerifyOptions {
        require_genesis: false,
        ..trusted()
    };
    let report = verify_segments(&segments, &options);
    assert!(report.is_ok());
    assert_eq!(report.writers[0].first_seq, 5);
    assert_eq!(
        report.writers[0].anchored_at,
        Some(removed.segment.header.last_hash)
    );
}

#[test]
fn truncated_tail_is_truncated() {
    let mut segments = trail("w", 2, 4);
    segments[1].segment.records.truncate(2);
    assert_eq!(
        diagnosis(&segments),
        Some((ProblemKind::Truncated, Some(7)))
    );
}

#[test]
fn deleted_newest_segment_is_caught_only_with_an_anchor() {
    let mut segments = trail("w", 3, 4);
    let anchor = head_anchor(&segments);
    segments.pop();
    assert_eq!(diagnosis(&segments), None);
    let options = VerifyOptions {
        anchors: vec![anchor],
        ..trusted()
    };
    let problem = verify_segments(&segments, &options).problems[0].clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Truncated, Some(9))
    );
}

#[test]
fn rewritten_chain_is_caught_by_an_anchor_hash() {
    let segments = trail("w", 2, 4);
    let mut anchor = head_anchor(&segments);
    anchor.hash = Hash256::ZERO;
    let options = VerifyOptions {
        anchors: vec![anchor],
        ..trusted()
    };
    let problem = verify_segments(&segments, &options).problems[0].clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Modified, Some(8))
    );
}

#[test]
fn replaced_signature_is_bad_signature() {
    let mut segments = trail("w", 2, 4);
    let other = trail("w", 2, 5);
    segments[0].segment.signature = other[0].segment.signature.clone();
    assert_eq!(
        diagnosis(&segments),
        Some((ProblemKind::BadSignature, None))
    );
}

#[test]
fn segment_resigned_with_another_key_is_untrusted() {
    let mut segments = trail("w", 2, 4);
    segments[1].segment.records[0].subject = Some("forged".into());
    // The forger recomputes the whole segment consistently and signs it.
    let mut chain = Chain::resume("w", 4, segments[0].segment.header.last_hash);
    let records: Vec<_> = segments[1]
        .segment
        .records
        .iter()
        .map(|r| {
            let mut event = AuditEvent::new(r.kind).time(r.time.get());
            event.subject = r.subject.clone();
            chain.append(event, r.time)
        })
        .collect();
    let mut forged = Segment::open(segments[0].segment.header.last_hash, records);
    forged.seal(at(1), &AuditSigningKey::from_seed(&[1; 32]));
    segments[1].segment = forged;
    assert_eq!(
        diagnosis(&segments),
        Some((ProblemKind::UntrustedKey, None))
    );
}

/// `segments` followed by an open segment of `records` more records, signed
/// as a writer signs each flush.
fn with_open_tail(mut segments: Vec<NamedSegment>, records: u64) -> Vec<NamedSegment> {
    let last = segments.last().unwrap().segment.clone();
    let mut chain = Chain::resume("w", last.header.last_seq, last.header.last_hash);
    let mut tree = last.frontier_before().unwrap().unwrap();
    for record in &last.records {
        tree.push_record(&record.hash);
    }
    let records = (0..records)
        .map(|i| chain.append(event(100 + i), at(100 + i as i64)))
        .collect();
    let mut open = Segment::open_in_tree(last.header.last_hash, &tree, records);
    open.sign_open(&key());
    segments.push(NamedSegment {
        name: "open".into(),
        segment: open,
    });
    segments
}

#[test]
fn records_of_an_open_last_segment_are_unproven_and_fail_by_default() {
    let segments = with_open_tail(trail("w", 2, 4), 3);
    let report = verify_segments(&segments, &trusted());
    let problem = report.first_problem().unwrap();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Unproven, Some(9))
    );
    assert!(problem.message.contains("9..=11"), "{problem}");
}

#[test]
fn an_accepted_open_tail_is_listed_exactly() {
    let segments = with_open_tail(trail("w", 2, 4), 3);
    let options = VerifyOptions {
        allow_open_tail: true,
        ..trusted()
    };
    let report = verify_segments(&segments, &options);
    assert!(report.is_ok(), "{:?}", report.problems);
    let tail = report.writers[0].unproven.clone().unwrap();
    assert_eq!(
        (tail.segment.as_str(), tail.first_seq, tail.last_seq),
        ("open", 9, 11)
    );
    assert_eq!(tail.flush_signed_by.as_deref(), Some(key().key_id()));
    assert_eq!(report.unproven_records(), 3);
}

#[test]
fn a_keyless_forgery_of_an_open_segment_is_set_aside() {
    let mut segments = with_open_tail(trail("w", 2, 4), 2);
    let open = &mut segments.last_mut().unwrap().segment;
    // No key: the forger appends a record and rehashes, but cannot sign.
    let mut chain = Chain::resume("w", open.header.last_seq, open.header.last_hash);
    open.records.push(chain.append(event(500), at(500)));
    open.refresh_header();
    let options = VerifyOptions {
        allow_open_tail: true,
        ..trusted()
    };
    let report = verify_segments(&segments, &options);
    let problem = report.first_problem().unwrap();
    assert_eq!(problem.kind, ProblemKind::BadSignature);
    assert_eq!(problem.segment.as_deref(), Some("open"));
    // The real chain still verifies up to the forged segment.
    assert_eq!(report.writers[0].last_seq, 8);
}

#[test]
fn unsealed_segment_followed_by_others_is_unsealed() {
    let mut segments = trail("w", 3, 2);
    segments[1].segment.sign_open(&key());
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Unsealed, None)));
}

#[test]
fn format_1_trails_still_verify_and_their_open_tail_is_unproven() {
    let mut segments = legacy_trail("w", 3, 4);
    assert!(verify_segments(&segments, &trusted()).is_ok());
    let mut changed = segments.clone();
    changed[1].segment.records[0].model = Some("x".into());
    assert_eq!(diagnosis(&changed), Some((ProblemKind::Modified, Some(5))));
    let last = &mut segments.last_mut().unwrap().segment;
    last.signature = None;
    last.header.sealed_at = None;
    last.header.key_id = None;
    let report = verify_segments(
        &segments,
        &VerifyOptions {
            allow_open_tail: true,
            ..trusted()
        },
    );
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        report.writers[0].unproven.as_ref().unwrap().flush_signed_by,
        None
    );
}

#[test]
fn a_key_not_bound_to_the_writer_is_an_untrusted_key() {
    let segments = trail("sidecar/team-b/pod-1", 2, 3);
    let options = VerifyOptions {
        keyring: Some(
            Keyring::single(key().verifying_key(), vec!["sidecar/team-a/*".into()]).unwrap(),
        ),
        ..trusted()
    };
    let report = verify_segments(&segments, &options);
    let problem = report.first_problem().unwrap();
    assert_eq!(problem.kind, ProblemKind::UntrustedKey);
    assert!(problem.message.contains("not bound to writer"), "{problem}");
}

#[test]
fn a_planted_duplicate_is_set_aside_and_the_real_chain_verifies() {
    let mut segments = trail("w", 3, 3);
    // Someone without the key plants a segment claiming seq 4..=6.
    let mut planted = segments[1].clone();
    planted.name = "planted".into();
    planted.segment.records[0].subject = Some("planted".into());
    planted.segment.signature = Some(other_signature());
    segments.push(planted);
    let report = verify_segments(&segments, &trusted());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].segment.as_deref(), Some("planted"));
    assert_eq!(report.writers[0].last_seq, 9);
}

fn other_signature() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([7u8; 64])
}

#[test]
fn a_changed_frontier_or_checkpoint_is_caught() {
    let mut segments = trail("w", 3, 3);
    segments[1].segment.frontier = Some(vec![Hash256::ZERO, Hash256::ZERO]);
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Modified, Some(4))));
    // The first segment has no predecessor to compare with: the signed tree root
    // catches it.
    let mut segments = trail("w", 3, 3);
    segments.remove(0);
    segments[0].segment.frontier = Some(vec![Hash256::ZERO, Hash256::ZERO]);
    let options = VerifyOptions {
        require_genesis: false,
        ..trusted()
    };
    let problem = verify_segments(&segments, &options).problems[0].clone();
    assert_eq!((problem.kind, problem.seq), (ProblemKind::Modified, None));
    let mut segments = trail("w", 3, 3);
    let other = trail("w", 3, 4);
    segments[1].segment.checkpoint = other[1].segment.checkpoint.clone();
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Modified, None)));
    let mut segments = trail("w", 3, 3);
    segments[2].segment.checkpoint = None;
    assert_eq!(diagnosis(&segments), Some((ProblemKind::Modified, None)));
}

#[test]
fn a_later_trail_extends_an_earlier_checkpoint_and_a_rewritten_or_shortened_one_does_not() {
    let segments = trail("w", 4, 3);
    let old = SignedNote::parse(segments[1].segment.checkpoint.as_ref().unwrap()).unwrap();
    let options = VerifyOptions {
        checkpoints: vec![old.clone()],
        ..trusted()
    };
    assert!(verify_segments(&segments, &options).is_ok());
    // Newest segments deleted: the writer's own checkpoint says it had more.
    let newest = SignedNote::parse(segments[3].segment.checkpoint.as_ref().unwrap()).unwrap();
    let options = VerifyOptions {
        checkpoints: vec![newest],
        ..trusted()
    };
    let problem = verify_segments(&segments[..2], &options).problems[0].clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Truncated, Some(7))
    );
    // A checkpoint of another history (same writer, other records).
    let other = trail("w", 4, 3);
    let mut forked = other[1].segment.clone();
    forked.records[0].subject = Some("other".into());
    let mut chain = Chain::resume("w", 3, forked.header.prev_segment_hash);
    let records: Vec<_> = (0..3)
        .map(|i| chain.append(event(900 + i), at(900 + i as i64)))
        .collect();
    let before = other[1].segment.frontier_before().unwrap().unwrap();
    let mut fork = Segment::open_in_tree(forked.header.prev_segment_hash, &before, records);
    fork.seal(at(1), &key());
    let fork_note = SignedNote::parse(fork.checkpoint.as_ref().unwrap()).unwrap();
    let options = VerifyOptions {
        checkpoints: vec![fork_note],
        ..trusted()
    };
    let problem = verify_segments(&segments, &options).problems[0].clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Modified, Some(6))
    );
    // A checkpoint signed by a key not bound to the writer proves nothing.
    let foreign = old
        .checkpoint()
        .unwrap()
        .sign(&AuditSigningKey::from_seed(&[1; 32]));
    let options = VerifyOptions {
        checkpoints: vec![foreign],
        ..trusted()
    };
    assert_eq!(
        verify_segments(&segments, &options).problems[0].kind,
        ProblemKind::UntrustedKey
    );
}

#[test]
fn inclusion_and_consistency_proofs_verify_offline_and_fail_when_changed() {
    use super::merkle::PartialTree;
    use super::proof::{ConsistencyProof, InclusionProof, ProofDocument};
    let segments = trail("w", 4, 5);
    let leaves: Vec<Hash256> = segments
        .iter()
        .flat_map(|s| s.segment.records.iter().map(|r| leaf_hash(&r.hash)))
        .collect();
    let empty = TreeFrontier::new();
    let tree = PartialTree {
        before: &empty,
        leaves: &leaves,
    };
    let proof = InclusionProof::build("seg-2", &segments[2].segment, 13, Some(&tree)).unwrap();
    assert!(proof.checkpoint_path.is_some());
    let document = ProofDocument::Inclusion(Box::new(proof.clone()));
    let json = serde_json::to_string(&document).unwrap();
    let parsed: ProofDocument = serde_json::from_str(&json).unwrap();
    let proven = parsed.verify(Some(&keyring())).unwrap();
    assert!(proven.contains("record 13"), "{proven}");
    let mut changed = proof.clone();
    changed.record.model = Some("other".into());
    assert!(
        ProofDocument::Inclusion(Box::new(changed))
            .verify(Some(&keyring()))
            .is_err()
    );
    let mut changed = proof;
    changed.segment_path[0] = Hash256::ZERO;
    assert!(
        ProofDocument::Inclusion(Box::new(changed))
            .verify(Some(&keyring()))
            .is_err()
    );

    let note =
        |i: usize| SignedNote::parse(segments[i].segment.checkpoint.as_ref().unwrap()).unwrap();
    let consistency = ConsistencyProof::build(&note(0), &note(3), &tree).unwrap();
    assert!(
        ProofDocument::Consistency(consistency.clone())
            .verify(Some(&keyring()))
            .is_ok()
    );
    let mut changed = consistency;
    changed.proof.pop();
    assert!(
        ProofDocument::Consistency(changed)
            .verify(Some(&keyring()))
            .is_err()
    );
}

#[test]
fn without_a_keyring_the_report_says_signatures_were_not_checked() {
    let segments = trail("w", 1, 2);
    let report = verify_segments(&segments, &VerifyOptions::default());
    assert!(report.is_ok());
    assert!(!report.signatures_checked);
}

#[test]
fn segment_json_round_trip_verifies() {
    let segments = trail("w", 2, 3);
    let parsed: Vec<NamedSegment> = segments
        .iter()
        .map(|s| NamedSegment {
            name: s.name.clone(),
            segment: serde_json::from_str(&serde_json::to_string(&s.segment).unwrap()).unwrap(),
        })
        .collect();
    assert!(verify_segments(&parsed, &trusted()).is_ok());
}

/// One way to damage a sealed trail.
#[derive(Clone, Debug)]
enum Mutation {
    ChangeSubject { segment: usize, record: usize },
    DeleteRecord { segment: usize, record: usize },
    SwapRecords { segment: usize, record: usize },
    DeleteSegment { segment: usize },
    TruncateTail { keep: usize },
    FlipSignatureBit { segment: usize, bit: usize },
}

fn mutation(segments: usize, per_segment: usize) -> impl Strategy<Value = Mutation> {
    let s = 0..segments;
    let r = 0..per_segment;
    prop_oneof![
        (s.clone(), r.clone())
            .prop_map(|(segment, record)| Mutation::ChangeSubject { segment, record }),
        (s.clone(), r.clone())
            .prop_map(|(segment, record)| Mutation::DeleteRecord { segment, record }),
        (s.clone(), 0..per_segment - 1)
            .prop_map(|(segment, record)| Mutation::SwapRecords { segment, record }),
        s.clone()
            .prop_map(|segment| Mutation::DeleteSegment { segment }),
        (0..per_segment).prop_map(|keep| Mutation::TruncateTail { keep }),
        (s, 0..512usize).prop_map(|(segment, bit)| Mutation::FlipSignatureBit { segment, bit }),
    ]
}

fn apply(segments: &mut Vec<NamedSegment>, mutation: &Mutation) -> ProblemKind {
    match *mutation {
        Mutation::ChangeSubject { segment, record } => {
            segments[segment].segment.records[record].subject = Some("intruder".into());
            ProblemKind::Modified
        }
        Mutation::DeleteRecord { segment, record } => {
            let records = &mut segments[segment].segment.records;
            let last = record + 1 == records.len();
            records.remove(record);
            if records.is_empty() || last {
                ProblemKind::Truncated
            } else {
                ProblemKind::Missing
            }
        }
        Mutation::SwapRecords { segment, record } => {
            segments[segment].segment.records.swap(record, record + 1);
            ProblemKind::Reordered
        }
        Mutation::DeleteSegment { segment } => {
            let last = segment + 1 == segments.len();
            segments.remove(segment);
            if last && !segments.is_empty() {
                // Caught only through the anchor: the trail ends too early.
                ProblemKind::Truncated
            } else {
                ProblemKind::Missing
            }
        }
        Mutation::TruncateTail { keep } => {
            segments.last_mut().unwrap().segment.records.truncate(keep);
            ProblemKind::Truncated
        }
        Mutation::FlipSignatureBit { segment, bit } => {
            use base64::Engine;
            let target = &mut segments[segment].segment;
            let mut bytes = target.signature_bytes().unwrap();
            bytes[bit / 8] ^= 1 << (bit % 8);
            target.signature = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            ProblemKind::BadSignature
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_untouched_trail_verifies(segments in 1usize..5, per_segment in 1usize..6) {
        let trail = trail("w", segments, per_segment);
        let report = verify_segments(&trail, &trusted());
        prop_assert!(report.is_ok());
        prop_assert_eq!(report.total_records(), (segments * per_segment) as u64);
    }

    #[test]
    fn every_single_mutation_is_caught_with_its_diagnosis(
        (segments, per_segment, mutation) in (1usize..5, 2usize..6)
            .prop_flat_map(|(s, p)| (Just(s), Just(p), mutation(s, p)))
    ) {
        let mut trail = trail("w", segments, per_segment);
        let options = VerifyOptions { anchors: vec![head_anchor(&trail)], ..trusted() };
        let expected = apply(&mut trail, &mutation);
        let report = verify_segments(&trail, &options);
        let problem = report.first_problem();
        prop_assert!(problem.is_some(), "{:?} not detected", mutation);
        prop_assert_eq!(problem.unwrap().kind, expected, "{:?}: {}", mutation, problem.unwrap());
    }
}

fn export_of(segments: &[NamedSegment]) -> ExportBundle {
    ExportBundle::build(segments, |r| r.seq % 3 == 0, None, Default::default())
}

#[test]
fn exported_slice_verifies_on_its_own() {
    let segments = trail("w", 3, 4);
    let bundle = export_of(&segments);
    assert_eq!(bundle.records.len(), 4);
    let json = serde_json::to_string(&bundle).unwrap();
    let parsed: ExportBundle = serde_json::from_str(&json).unwrap();
    let report = verify_export(&parsed, &trusted());
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.total_records(), 4);
}

#[test]
fn changed_record_in_an_export_is_modified() {
    let mut bundle = export_of(&trail("w", 3, 4));
    bundle.records[1].subject = Some("someone".into());
    let report = verify_export(&bundle, &trusted());
    let problem = report.first_problem().unwrap();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Modified, Some(6))
    );
}

#[test]
fn consistently_rehashed_record_in_an_export_is_still_caught_by_the_signed_evidence() {
    let mut bundle = export_of(&trail("w", 3, 4));
    let record = &mut bundle.records[1];
    record.subject = Some("someone".into());
    record.hash = record.compute_hash(&record.prev_hash);
    let problem = verify_export(&bundle, &trusted()).problems[0].clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Modified, Some(6))
    );
}

#[test]
fn tampered_evidence_hash_list_is_caught() {
    let mut bundle = export_of(&trail("w", 3, 4));
    bundle.evidence[0].record_hashes[0] = Hash256::ZERO;
    let problem = verify_export(&bundle, &trusted()).problems[0].clone();
    assert_eq!(problem.kind, ProblemKind::Modified);
}

proptest! {
    #[test]
    fn fast_time_text_matches_chrono_and_parses_back(
        seconds in -62_000_000_000i64..253_402_300_799i64,
        nanos in 0u32..1_000_000_000,
    ) {
        let time = RecordTime::new(Utc.timestamp_opt(seconds, nanos).unwrap());
        let text = time.to_canonical_string();
        prop_assert_eq!(&text, &time.get().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        prop_assert_eq!(RecordTime::parse_canonical(&text), Some(time));
    }
}

#[test]
fn non_canonical_time_texts_are_rejected() {
    for bad in [
        "2026-05-28T20:26:40Z",
        "2026-05-28T20:26:40.123Z",
        "2026-05-28T20:26:40.123456+00:00",
        "2026-05-28t20:26:40.123456Z",
        "2026-13-28T20:26:40.123456Z",
        "2026-05-28T20:26:60.123456Z",
    ] {
        assert_eq!(RecordTime::parse_canonical(bad), None, "{bad}");
    }
}

#[test]
fn large_trail_verified_in_parallel_reports_the_same_first_problem() {
    let mut segments = trail("w", 60, 400);
    assert!(verify_segments(&segments, &trusted()).is_ok());
    segments[37].segment.records[11].model = Some("changed".into());
    let problem = verify_segments(&segments, &trusted()).problems[0].clone();
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Modified, Some(37 * 400 + 12))
    );
}

/// A record with every field set, as stored. Its hash is pinned: if this test
/// fails, the canonical form changed and old trails would no longer verify. The
/// same JSON and hash are checked by the Python re-computation in docs/audit.md.
const GOLDEN_RECORD: &str = r#"{"seq":42,"time":"2026-11-22T11:00:00.123456Z","writer":"sidecar/team-a/pod-1","kind":"Decision","request_id":"req-42","subject":"team-a","token_id":"team-a/ci","model":"gpt-4o","namespace":"team-a","effect":"Redact","policy":"team-a/default","rule":"redact-pii","codes":["PII_DETECTED","ALLOWED"],"fingerprint":"f00d","prompt_hash":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","redacted_prompt":"call me at [PHONE]","usage":{"input_tokens":812,"output_tokens":96,"cost_usd":"0.0001514"},"detail":{"b":"2","a":"1","é":"x"},"prev_hash":"0101010101010101010101010101010101010101010101010101010101010101","hash":"b564beb1233230096a29d6a6dc6aa2b64d71c3332278dcf5edccdf5d70256cd4"}"#;

#[test]
fn golden_record_hash_is_stable() {
    let record: AuditRecord = serde_json::from_str(GOLDEN_RECORD).unwrap();
    assert!(record.hash_is_consistent());
    assert_eq!(
        record.hash.to_hex(),
        "b564beb1233230096a29d6a6dc6aa2b64d71c3332278dcf5edccdf5d70256cd4"
    );
}

#[test]
fn hostile_identifiers_are_replaced_by_a_hash_and_listed() {
    let mut event = event(1).model("\u{1}".repeat(250_000));
    event.codes.push("A\nB".into());
    let errors = event.sanitize();
    assert_eq!(errors.len(), 2);
    assert!(event.model.as_ref().unwrap().starts_with("invalid:"));
    assert_eq!(event.detail[INVALID_FIELDS_DETAIL], "model,codes");
    let record = Chain::new("w").append(event.clone(), at(1));
    assert!(serde_json::to_vec(&record).unwrap().len() < 2_000);
    // A clean event is left as it is.
    let clean = event.clone();
    assert!(event.sanitize().is_empty());
    assert_eq!(event, clean);
}

#[test]
fn the_chain_sanitizes_what_it_appends() {
    let record = Chain::new("w").append(event(1).subject("a\u{202e}b"), at(1));
    assert!(record.subject.unwrap().starts_with("invalid:"));
    assert_eq!(record.detail[INVALID_FIELDS_DETAIL], "subject");
}

#[test]
fn a_document_streamed_by_a_writer_parses_as_the_segment() {
    let segment = trail("w", 2, 3).pop().unwrap().segment;
    let mut document = segment_document_start(
        &segment.header,
        segment.signature.as_deref(),
        segment.frontier.as_deref(),
        segment.checkpoint.as_deref(),
    );
    for (i, record) in segment.records.iter().enumerate() {
        if i > 0 {
            document.push(b',');
        }
        document.extend(serde_json::to_vec(record).unwrap());
    }
    document.extend_from_slice(SEGMENT_DOCUMENT_END);
    assert_eq!(document, serde_json::to_vec(&segment).unwrap());
    let parsed: Segment = serde_json::from_slice(&document).unwrap();
    assert_eq!(parsed, segment);
}

#[test]
fn documents_verify_like_parsed_segments() {
    let mut segments = trail("w", 5, 20);
    segments[3].segment.records[4].subject = Some("changed".into());
    let documents: Vec<(String, Vec<u8>)> = segments
        .iter()
        .map(|s| (s.name.clone(), serde_json::to_vec(&s.segment).unwrap()))
        .chain([("junk".to_string(), b"{not json".to_vec())])
        .collect();
    let from_documents = verify_documents(
        documents.len(),
        |i| (documents[i].0.clone(), Ok(documents[i].1.clone())),
        &trusted(),
    );
    let parsed = verify_segments(&segments, &trusted());
    assert_eq!(from_documents.problems[0].kind, ProblemKind::Malformed);
    assert_eq!(&from_documents.problems[1..], &parsed.problems[..]);
    assert_eq!(from_documents.writers, parsed.writers);
}
