//! Profiling aid: verify one million stored records from JSON, repeatedly.
//! `cargo run --release -p policybind-audit --example verify_million -- 5 [DIR]`
//! With DIR, the trail is written there once (segment files, key in
//! `DIR/../verify-key.pem`) and read back from it on later runs, so a profile
//! or `policybind audit verify --dir DIR` sees only verification.
use std::time::Instant;

use policybind_audit::store::encode_segment;
use policybind_audit::{RawSegment, verify_stored};
use policybind_crds::Effect;
use policybind_engine::audit::{
    AuditEvent, AuditSigningKey, Chain, CostUsd, Hash256, Keyring, RecordTime, Segment,
    TreeFrontier, Usage, VerifyOptions,
};

fn event(i: u64) -> AuditEvent {
    AuditEvent::decision(Effect::Allow)
        .request_id(format!("0193a4f2-7c1e-7b3a-9d2e-{i:012}"))
        .subject("team-payments")
        .token_id("team-payments/ci-token")
        .model("gpt-4o-mini")
        .namespace("team-payments")
        .policy_rule("team-payments/default", "allow-approved-models")
        .code("ALLOWED")
        .fingerprint("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        .prompt(&format!("Summarise report {i} in three bullet points."))
        .usage(Usage {
            input_tokens: 812,
            output_tokens: 96,
            cost_usd: CostUsd::from_nanos(151_400),
        })
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let dir = std::env::args().nth(2).map(std::path::PathBuf::from);
    let key = AuditSigningKey::from_seed(&[11; 32]);
    let documents = match &dir {
        Some(dir) if dir.is_dir() => policybind_audit::DirectoryStore::open(dir)
            .unwrap()
            .segment_paths()
            .unwrap()
            .iter()
            .map(|p| policybind_audit::DirectoryStore::read(p))
            .collect(),
        _ => generate(&key, dir.as_deref()),
    };
    if std::env::var_os("VERIFY_MILLION_PARSE").is_some() {
        parse_only(&documents);
    }
    verify(documents, &key, rounds);
}

fn generate(key: &AuditSigningKey, dir: Option<&std::path::Path>) -> Vec<RawSegment> {
    let mut chain = Chain::new("sidecar/team-payments/pod-1");
    let time = RecordTime::new(chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap());
    let mut prev = Hash256::ZERO;
    let mut tree = TreeFrontier::new();
    let documents: Vec<RawSegment> = (0..1_000u64)
        .map(|s| {
            let records = (0..1_000u64)
                .map(|i| chain.append(event(s * 1_000 + i), time))
                .collect();
            let mut segment = Segment::open_in_tree(prev, &tree, records);
            segment.seal(time, key);
            for record in &segment.records {
                tree.push_record(&record.hash);
            }
            prev = segment.header.last_hash;
            let json = encode_segment(&segment);
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir).unwrap();
                let name = policybind_audit::naming::segment_name(
                    &segment.header.writer,
                    segment.header.first_seq,
                );
                std::fs::write(dir.join(format!("{name}.json")), &json).unwrap();
            }
            RawSegment {
                name: format!("segment-{s}"),
                size_bytes: json.len() as u64,
                json: Ok(json),
            }
        })
        .collect::<Vec<_>>();
    if let Some(dir) = dir {
        let pem = key.verifying_key().to_public_key_pem().unwrap();
        std::fs::write(dir.join("../verify-key.pem"), pem).unwrap();
    }
    documents.into_iter().collect()
}

fn verify(documents: Vec<RawSegment>, key: &AuditSigningKey, rounds: usize) {
    let bytes: u64 = documents.iter().map(|d| d.size_bytes).sum();
    eprintln!("{} MB of segment JSON", bytes / 1_000_000);
    let options = VerifyOptions {
        keyring: Some(
            Keyring::single(key.verifying_key(), vec!["sidecar/team-payments/*".into()]).unwrap(),
        ),
        require_genesis: true,
        ..VerifyOptions::default()
    };
    for _ in 0..rounds {
        let copy = documents.clone();
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let report = verify_stored(copy, &options);
        assert!(report.is_ok(), "{:?}", report.problems);
        eprintln!(
            "verified {} records in {:.3} s ({:.2} s of CPU)",
            report.total_records(),
            started.elapsed().as_secs_f64(),
            cpu_seconds() - cpu
        );
    }
}

/// User plus system CPU time of this process so far (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// How long JSON parsing alone takes (`VERIFY_MILLION_PARSE=1`).
#[allow(dead_code)]
pub fn parse_only(documents: &[RawSegment]) {
    let cpu = cpu_seconds();
    for d in documents {
        let text = std::str::from_utf8(d.json.as_ref().unwrap()).unwrap();
        let _: serde::de::IgnoredAny = serde_json::from_str(text).unwrap();
    }
    eprintln!("IgnoredAny scan: {:.2} s of CPU", cpu_seconds() - cpu);
}
