//! Cost of counting one decision in a summary (`DecisionTally::record`), which
//! every request of a sidecar and every admission of the webhook pays: a key
//! already counted (the common case), and a full tally where a new key goes to
//! the overflow entry. Also the cost of a snapshot, which the reporter takes
//! once per report interval.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use policybind_crds::summary::{DecisionTally, Example, MAX_ENTRIES, ReportResult, SummaryKey};

fn key(rule: usize) -> SummaryKey {
    SummaryKey::local(
        "team-a/guardrails",
        format!("rule-{rule}"),
        ReportResult::Fail,
    )
}

fn example() -> Example {
    Example {
        time: Utc::now(),
        code: "DENY_PII".into(),
        model: Some("gpt-4o".into()),
        subject: Some("0123456789abcdef".into()),
        object: None,
    }
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("summary/record");
    let warm = DecisionTally::new(Utc::now());
    for rule in 0..10 {
        warm.record(key(rule), example());
    }
    group.bench_function("known_key", |b| {
        b.iter(|| warm.record(black_box(key(3)), black_box(example())))
    });
    let full = DecisionTally::new(Utc::now());
    for rule in 0..MAX_ENTRIES + 10 {
        full.record(key(rule), example());
    }
    group.bench_function("full_tally_overflow", |b| {
        b.iter(|| full.record(black_box(key(MAX_ENTRIES + 5_000)), black_box(example())))
    });
    group.bench_function("snapshot_json_full", |b| {
        b.iter(|| serde_json::to_string(&full.snapshot()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
