//! How long a report takes to build as the trail grows: the example organisation's
//! objects with N request records from 4 writers, verified (segments of 1,000
//! records, sealed and signed), then `report::build` for the EU AI Act catalog and
//! the HTML rendering. Verification is measured apart, as `audit verify` measures it.
use chrono::{DateTime, Duration, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use policybind_compliance::evidence::{Scope, Snapshot, Trail};
use policybind_compliance::{canonical, catalog, html, report, signing};
use policybind_crds::Effect;
use policybind_engine::audit::{
    AuditEvent, AuditSigningKey, Chain, Keyring, NamedSegment, RecordTime, Segment, VerifyOptions,
};
use policybind_engine::manifest::{manifest_files, parse_documents};

fn objects() -> Vec<policybind_engine::manifest::Object> {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    for file in manifest_files(&examples, None).unwrap().files {
        let text = std::fs::read_to_string(&file).unwrap();
        out.extend(
            parse_documents(&file.display().to_string(), &text)
                .unwrap()
                .into_iter()
                .map(|(_, o)| o),
        );
    }
    out
}

fn segments(records: usize, key: &AuditSigningKey) -> Vec<NamedSegment> {
    let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    let effects = [
        Effect::Allow,
        Effect::Allow,
        Effect::Deny,
        Effect::Redact,
        Effect::RequireApproval,
    ];
    let mut out = Vec::new();
    for writer in 0..4 {
        let name = format!("sidecar/team-{writer}/pod-{writer}");
        let mut chain = Chain::new(&name);
        let mut batch = Vec::new();
        let mut prev = policybind_engine::audit::Hash256::ZERO;
        for i in 0..records / 4 {
            let time = start + Duration::milliseconds((i * 40 + writer) as i64);
            let event = AuditEvent::decision(effects[i % effects.len()])
                .time(time)
                .request_id(format!("r-{writer}-{i}"))
                .subject(format!("team-{writer}"))
                .token_id(format!("team-{writer}/token"))
                .model("gpt-4o-mini")
                .namespace(format!("team-{writer}"))
                .policy_rule("default-allow", "allow-within-token-scope")
                .code(if i % 7 == 0 {
                    "PII_DETECTED"
                } else {
                    "WITHIN_TOKEN_SCOPE"
                })
                .fingerprint(if i < records / 8 {
                    "sha256:aaaa"
                } else {
                    "sha256:bbbb"
                });
            batch.push(chain.append(event, RecordTime::new(time)));
            if batch.len() == 1000 || i + 1 == records / 4 {
                let mut segment = Segment::open(prev, std::mem::take(&mut batch));
                segment.seal(RecordTime::new(time), key);
                prev = segment.header.last_hash;
                out.push(NamedSegment {
                    name: format!("{name}-{}", segment.header.first_seq),
                    segment,
                });
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let key = AuditSigningKey::from_seed(&[9; 32]);
    let options = VerifyOptions {
        keyring: Some(Keyring::single(key.verifying_key(), vec!["**".into()]).unwrap()),
        ..Default::default()
    };
    let eu = catalog::built_in("eu-ai-act").unwrap();
    let mut group = c.benchmark_group("report");
    group.sample_size(10);
    for records in [10_000, 100_000] {
        let segments = segments(records, &key);
        let trail = Trail::from_segments("bench".into(), &segments, &options);
        assert!(trail.verification.is_ok());
        let mut snapshot = Snapshot::from_objects(
            objects(),
            Scope::default(),
            "2026-12-01T00:00:00Z".parse().unwrap(),
        );
        snapshot.trail = Some(trail);
        group.bench_with_input(
            BenchmarkId::new("build_eu_ai_act", records),
            &snapshot,
            |b, s| b.iter(|| report::build(&eu, s, vec![], "bench")),
        );
        let built = report::build(&eu, &snapshot, vec![], "bench");
        group.bench_with_input(
            BenchmarkId::new("canonical_sign_render", records),
            &built,
            |b, r| {
                b.iter(|| {
                    let bytes = canonical::to_bytes(r).unwrap();
                    let signature = signing::sign(&bytes, "r.json", &key);
                    html::render_report(r, &signature.sha256)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
