//! Audit trail throughput (DESIGN.md section 10): at least 200,000 records per
//! second appended and hashed per core, and one million records verified in under
//! two seconds.
//!
//! `cargo bench -p policybind-audit --bench audit`
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_audit::store::encode_segment;
use policybind_audit::{
    AuditConfig, AuditWriter, Encoding, Error, RawSegment, SegmentObject, SegmentStore,
    StoreProfile, verify_stored,
};
use policybind_crds::Effect;
use policybind_engine::audit::{
    AuditEvent, AuditSigningKey, Chain, CostUsd, Hash256, Keyring, NamedSegment, RecordTime,
    Segment, TreeFrontier, Usage, VerifyOptions, verify_segments,
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
        .prompt("Summarise the attached quarterly report in three bullet points.")
        .usage(Usage {
            input_tokens: 812,
            output_tokens: 96,
            cost_usd: CostUsd::from_nanos(151_400),
        })
}

fn key() -> AuditSigningKey {
    AuditSigningKey::from_seed(&[11; 32])
}

/// A store that accepts and forgets: measures the writer, not the disk.
struct NullStore;

impl SegmentStore for NullStore {
    fn put<'a>(&'a self, _object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<RawSegment>, Error>> {
        async { Ok(Vec::new()) }.boxed()
    }
    fn names<'a>(&'a self, _writer: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>> {
        async { Ok(Vec::new()) }.boxed()
    }
    fn get<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Option<RawSegment>, Error>> {
        async { Ok(None) }.boxed()
    }
    fn delete<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }
    fn profile(&self) -> StoreProfile {
        StoreProfile {
            encoding: Encoding::Json,
            max_object_bytes: 64 << 20,
            writes_per_flush: None,
        }
    }
    fn describe(&self) -> String {
        "null".into()
    }
}

/// One million records in sealed segments of 1,000.
fn million_records() -> Vec<NamedSegment> {
    let key = key();
    let mut chain = Chain::new("sidecar/team-payments/pod-1");
    let time = RecordTime::new(chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap());
    let mut prev = Hash256::ZERO;
    let mut tree = TreeFrontier::new();
    (0..1_000)
        .map(|s| {
            let records = (0..1_000u64)
                .map(|i| chain.append(event(s * 1_000 + i), time))
                .collect();
            let mut segment = Segment::open_in_tree(prev, &tree, records);
            segment.seal(time, &key);
            for record in &segment.records {
                tree.push_record(&record.hash);
            }
            prev = segment.header.last_hash;
            NamedSegment {
                name: format!("segment-{s}"),
                segment,
            }
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(1));
    let now = RecordTime::new(chrono::Utc::now());

    // The pure cost: canonical encoding plus SHA-256 per record.
    let mut chain = Chain::new("sidecar/team-payments/pod-1");
    group.bench_function("chain_append_and_hash", |b| {
        b.iter_batched(|| event(7), |e| chain.append(e, now), BatchSize::SmallInput)
    });

    // What the sidecar pays: clock, lock, hash, queue (the batching task runs on
    // another thread and discards segments).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let writer = runtime.block_on(async {
        let mut config = AuditConfig::new("sidecar/team-payments/pod-1", key());
        config.flush_interval = Duration::from_millis(20);
        config.queue_capacity_bytes = usize::MAX / 2;
        AuditWriter::start(config, Arc::new(NullStore))
            .await
            .unwrap()
    });
    group.bench_function("writer_append", |b| {
        b.iter_batched(
            || event(7),
            |e| writer.append(e).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    runtime.block_on(writer.shutdown()).unwrap();
}

fn verify(c: &mut Criterion) {
    let segments = million_records();
    let options = VerifyOptions {
        keyring: Some(
            Keyring::single(
                key().verifying_key(),
                vec!["sidecar/team-payments/*".into()],
            )
            .unwrap(),
        ),
        require_genesis: true,
        ..VerifyOptions::default()
    };
    let mut group = c.benchmark_group("verify_1m_records");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(1_000_000));

    // Hashes, chain, Merkle roots and 1,000 signatures over parsed segments.
    group.bench_function("parsed", |b| {
        b.iter(|| {
            let report = verify_segments(&segments, &options);
            assert!(report.is_ok());
            report
        })
    });

    // The whole `policybind audit verify` path after reading files: JSON parse too.
    let stored_bytes: Vec<RawSegment> = segments
        .iter()
        .map(|s| {
            let json = encode_segment(&s.segment);
            RawSegment {
                name: s.name.clone(),
                size_bytes: json.len() as u64,
                json: Ok(json),
            }
        })
        .collect();
    group.bench_function("from_json", |b| {
        b.iter_batched(
            || stored_bytes.clone(),
            |documents| {
                let report = verify_stored(documents, &options);
                assert!(report.is_ok());
                report
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, append, verify);
criterion_main!(benches);
